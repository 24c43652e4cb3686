#!/usr/bin/env bash
# The zoo's FPS on a GPU beside the paper's Table 3 (issue 6, evidence 3). Run from the
# repository on a GPU machine that has PyTorch with CUDA:
#
#     bash bench/gpu_zoo.sh                  # 1024x2048, fp32 + bf16, eager + torch.compile, 6 s each
#     bash bench/gpu_zoo.sh --seconds 3      # any option of bench/gpu_zoo.py
#
# It uses the torch already installed (never installs torch). hyctas itself: used if
# importable; otherwise installed into .gpu-venv (which sees the system's torch) with pip;
# if that is impossible (no package index), the torch-only model files in bench/gpu_models
# (written by `python bench/gpu_zoo.py --emit bench/gpu_models` on any machine with hyctas)
# are timed instead. Results: printed, and JSON in ${OUT:-.}/gpu_zoo.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
command -v "$PY" >/dev/null || { echo "gpu_zoo: error: no $PY on PATH (set PYTHON=...)" >&2; exit 2; }
"$PY" -c "import torch" 2>/dev/null || { echo "gpu_zoo: error: torch is not installed for $PY; install the CUDA build of PyTorch" >&2; exit 2; }
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || \
  echo "gpu_zoo: warning: torch finds no CUDA GPU; pass --device cpu for a dry run" >&2
MODELS=()
if ! "$PY" -c "import hyctas_dsl.compiler" 2>/dev/null; then
  if [ ! -x .gpu-venv/bin/python ]; then "$PY" -m venv --system-site-packages .gpu-venv; fi
  if .gpu-venv/bin/python -m pip install -q --no-build-isolation -e . >/tmp/gpu_zoo_pip.log 2>&1 \
     && .gpu-venv/bin/python -c "import hyctas_dsl.compiler" 2>/dev/null; then
    PY=.gpu-venv/bin/python
  elif [ -f bench/gpu_models/hyctas_s.py ]; then
    echo "gpu_zoo: hyctas could not be installed (see /tmp/gpu_zoo_pip.log); timing bench/gpu_models/*.py" >&2
    MODELS=(--models bench/gpu_models)
  else
    echo "gpu_zoo: error: hyctas could not be installed (see /tmp/gpu_zoo_pip.log) and bench/gpu_models is missing;" >&2
    echo "  run \`python bench/gpu_zoo.py --emit bench/gpu_models\` where hyctas is installed and copy the folder" >&2
    exit 2
  fi
fi
exec "$PY" bench/gpu_zoo.py --json "${OUT:-.}/gpu_zoo.json" "${MODELS[@]}" "$@"
