# One command sets everything up and runs; each target is safe to run again.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-full bench docs clean

setup: $(STAMP)

# torch first, pinned: 2.13.0 is the CPU build this machine has on disk; anything that asks
# for torch before it is installed pulls a multi-GB CUDA build instead.
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[train,dev]'
	@command -v dot >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && apt-get install -y -qq graphviz >/dev/null) || echo "note: could not install graphviz; install the 'dot' binary to render diagrams"; \
	  else echo "note: install graphviz (the 'dot' binary) to render diagrams, e.g. 'sudo apt-get install graphviz'"; fi; }
	touch $(STAMP)

# The main job on the embedded default data: train a supernet, search it, emit the front.
demo: setup
	$(BIN)/hyctas validate -q archs/*.hy
	$(BIN)/hyctas search --emit-dsl runs/demo
	$(BIN)/hyctas validate runs/demo/searched_*.hy

# The test suite (CI runs exactly this, with CI=true for the short form of slow checks).
test: setup
	$(BIN)/python -m pytest -q

bench: setup
	for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

# The zoo as diagrams (docs/images/NAME.svg and .png), regenerated from the code so the
# pictures never drift from it; needs Graphviz's `dot` (setup installs it where it can).
docs: setup
	@mkdir -p docs/images
	for f in archs/*.hy; do n=$$(basename $$f .hy); \
	  for ext in svg png; do $(BIN)/hyctas draw $$f -o docs/images/$$n.$$ext || exit 1; done; done

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
