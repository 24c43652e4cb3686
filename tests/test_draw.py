"""`hyctas draw` and hyctas_dsl.draw: golden DOT for the zoo, determinism, shared prefixes,
diffs, rendering with Graphviz's `dot`, and the CLI's exit codes and messages.

Regenerate the golden files after an intended change of the drawings with
``HYCTAS_REGEN_GOLDEN=1 .venv/bin/pytest tests/test_draw.py`` and look at the rendered zoo
(`make docs`) before committing them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import hyctas_dsl as hy
from hyctas_dsl.commands import draw as draw_cmd
from hyctas_dsl.draw import _BOX_H, _BOX_W, OP_COLORS, diff_cells, draw, draw_diff, draw_space
from hyctas_dsl.model.graph import build_graph
from tests.conftest import ARCHS, ROOT

GOLDEN = ROOT / "tests" / "golden" / "draw"
REGEN = os.environ.get("HYCTAS_REGEN_GOLDEN", "") not in ("", "0")
HAS_DOT = shutil.which("dot") is not None
needs_dot = pytest.mark.skipif(not HAS_DOT, reason="Graphviz's `dot` program is not installed (apt-get install graphviz)")


def arch(name: str) -> hy.Arch:
    return hy.load(ARCHS / f"{name}.hy").archs[0]


def edited(name: str, *replacements: tuple[str, str]) -> hy.Arch:
    text = (ARCHS / f"{name}.hy").read_text()
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new)
    return hy.loads(text).archs[0]


def diagrams():
    out = {n: (lambda n=n: draw(arch(n))) for n in ("hyctas_s", "hyctas_m", "hyctas_l")}
    out["paper_space"] = lambda: draw_space(hy.load(ARCHS / "paper_space.hy").spaces[0])
    out["diff_hyctas_s_hyctas_m"] = lambda: draw_diff(arch("hyctas_s"), arch("hyctas_m"))
    return out


def nodes(source: str) -> dict[str, str]:
    """Node id -> attribute text of a DOT source written by the graphviz package."""
    out = {}
    for line in source.splitlines():
        m = re.match(r'\t("(?:[^"\\]|\\.)*"|[\w.]+) \[(.*)\]$', line)
        if m and " -> " not in line.split(" [")[0]:
            out[m.group(1).strip('"')] = m.group(2)
    return out


def cell_nodes(source: str) -> dict[str, str]:
    return {k: v for k, v in nodes(source).items() if 'tooltip="' in v and ", stride " in v and "layer " in v}


@pytest.mark.parametrize("name", sorted(diagrams()))
def test_golden_dot(name):
    source = diagrams()[name]().source
    path = GOLDEN / f"{name}.dot"
    if REGEN:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source, encoding="utf-8")
    assert path.exists(), f"missing golden {path}; run with HYCTAS_REGEN_GOLDEN=1"
    assert source == path.read_text(encoding="utf-8"), f"{name}: DOT differs from {path} (HYCTAS_REGEN_GOLDEN=1 to accept)"


def test_deterministic_across_processes_and_torch_free():
    """Same input, byte-identical DOT: in this process, twice, and in fresh interpreters with
    other hash seeds (set and dict order of strings change with PYTHONHASHSEED). Drawing
    never imports torch."""
    here = draw(arch("hyctas_l")).source
    assert draw(arch("hyctas_l")).source == here
    code = (
        "import sys, hyctas_dsl as hy; from hyctas_dsl.draw import draw; import hyctas_dsl.commands.draw;"
        f"sys.stdout.write(draw(hy.load({str(ARCHS / 'hyctas_l.hy')!r}).archs[0]).source);"
        "assert 'torch' not in sys.modules, 'draw imported torch'"
    )
    for seed in ("1", "4242"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, check=True)
        assert out.stdout == here


def test_same_arch_written_differently_draws_the_same():
    text = (ARCHS / "hyctas_s.hy").read_text()
    messy = "hyctas 1\n# other comments\n" + text.split("hyctas 1\n", 1)[1].replace("\n    ", "\n  ")
    assert draw(hy.loads(messy).archs[0]).source == draw(arch("hyctas_s")).source


def test_shared_prefix_drawn_once():
    a = arch("hyctas_l")
    cells = cell_nodes(draw(a).source)
    g = build_graph(a)
    assert len(cells) == sum(1 for _n, d in g.nodes(data=True) if d["kind"] == "cell")
    for layer in range(1, 5):  # layers 1..4 are identical in all three branches
        here = [v for v in cells.values() if f'tooltip="layer {layer}, stride 8:' in v]
        assert len(here) == 1, layer
        assert "branches s8, s16, s32" in here[0]
    # Layer 5: s8 and s16 still agree (conv), s32 has its zconv2.
    five = [v for v in cells.values() if 'tooltip="layer 5, ' in v]
    assert len(five) == 2
    assert sum("branches s8, s16" in v for v in five) == 1
    # 3 branches x 20 layers, 4 + 4 + 4 cells shared
    assert len(cells) == 60 - 2 * 4 - 4


def test_cells_coloured_by_op_and_show_width():
    src = draw(arch("hyctas_s")).source
    cells = cell_nodes(src)
    assert len(cells) == 11
    s = arch("hyctas_s").branches[0]
    for i, c in enumerate(s.cells, start=1):
        [v] = [v for v in cells.values() if f'tooltip="layer {i}, ' in v]
        assert f'fillcolor="{OP_COLORS[c.op.name]}"' in v
        assert f"w{c.width}" in v
        assert ("↓2" in v) == c.down
    # rows: downsampling moves a cell one stride row down (lower y)
    ys = {i: float(re.search(r'pos="[-\d.]+,([-\d.]+)!"', v).group(1)) for i, v in enumerate(cells.values())}
    assert len(set(ys.values())) == 3
    assert "head (32)" in src and "output stride 8" in src and "hyctas_s" in src


def test_meta_in_caption_and_fusion_gates():
    a = edited(
        "hyctas_l",
        ("    20 attn w12\n  }\n}", "    20 attn w12\n  }\n  fuse s32 -> s8 after 14\n  meta { miou 0.71 latency_ms 12.5 }\n}"),
    )
    src = draw(a).source
    assert "miou 0.71 · latency_ms 12.5" in src
    gates = [k for k, v in nodes(src).items() if "shape=diamond" in v]
    assert gates == ["fuse/s32->s8@14"]
    assert re.search(r'"s32\.14" -> "fuse/s32->s8@14" \[.*style=dashed', src)
    assert re.search(r'"fuse/s32->s8@14" -> "s8\.15" \[.*style=dashed', src)


def test_diff_highlights_exactly_the_changed_cells():
    a = arch("hyctas_s")
    b = edited("hyctas_s", ("6 attn w10", "6 conv w10"), ("9 zconv2 w4", "9 zconv2 w6"), ("arch hyctas_s", "arch hyctas_s2"))
    assert diff_cells(a, b) == [("A", "main", 6), ("A", "main", 9), ("B", "main", 6), ("B", "main", 9)]
    src = draw_diff(a, b).source
    highlighted = [v for v in cell_nodes(src).values() if "penwidth=3" in v]
    assert sorted(re.search(r'tooltip="(\w): layer (\d+)', v).groups() for v in highlighted) == [
        ("A", "6"), ("A", "9"), ("B", "6"), ("B", "9")
    ]
    assert len(cell_nodes(src)) == 11 + 2
    assert "hyctas_s" in src and "hyctas_s2" in src
    assert diff_cells(a, a) == []


def test_diff_branch_fusion_and_head_only_on_one_side():
    a = arch("hyctas_l")
    text = (ARCHS / "hyctas_l.hy").read_text()
    two = text[: text.index("  branch s32")].replace("head (8, 16, 32)", "head (8, 16)") + "  fuse s16 -> s8 after 12\n}\n"
    b = hy.loads(two).archs[0]
    cells = diff_cells(a, b)
    # s32's own cells (layers 5..20) are A only; its shared layers 1..4 stay common
    assert cells == [("A", "s32", layer) for layer in range(5, 21)]
    src = draw_diff(a, b).source
    n = nodes(src)
    assert "head/A" in n and "head/B" in n
    assert 'fillcolor="#CC79A7"' in n["fuse/s16->s8@12"]  # B's colour: only B fuses


def test_space_view():
    sp = hy.load(ARCHS / "paper_space.hy").spaces[0]
    src = draw_space(sp).source
    n = nodes(src)
    cells = [k for k in n if re.fullmatch(r"C\d+_\d+", k)]
    # stride 8 from layer 1, 16 from layer 1 (layer 1 may downsample), 32 from layer 2
    assert len(cells) == 20 + 20 + 19
    gates = [k for k in n if re.fullmatch(r"N\d+_\d+", k)]
    assert len(gates) == 19 + 19 + 18
    for op in sp.ops:  # each op listed once in the choices, with its colour in the strip
        assert OP_COLORS[op] in src
    assert "(8,16,32)" in src and "w4 w6 w8 w10 w12" in src and "32 GiB" in src


@st.composite
def archs(draw_, max_layers: int = 20) -> hy.Arch:
    """Valid architectures of the paper's space, with shared prefixes and fusion nodes
    (branches are made from a common trunk so that prefixes really are shared)."""
    head = draw_(st.sampled_from([(8,), (16,), (32,), (8, 16), (8, 32), (8, 16, 32)]))
    layers = draw_(st.integers(len(head) + 1, max_layers))
    ops = st.sampled_from(["skip", "conv", "zconv", "zconv2", "attn"])
    trunk_len = draw_(st.integers(0, layers - 2))
    trunk = [(draw_(ops), draw_(st.sampled_from([4, 8, 12]))) for _ in range(trunk_len)]
    branches = []
    for i, final in enumerate(head):
        n_down = {8: 0, 16: 1, 32: 2}[final]
        downs = set(draw_(st.lists(st.integers(trunk_len + 1, layers), min_size=n_down, max_size=n_down, unique=True)))
        cells = []
        for layer in range(1, layers + 1):
            op, w = trunk[layer - 1] if layer <= trunk_len else (draw_(ops), draw_(st.sampled_from([4, 8, 12])))
            down = layer in downs
            op = "conv" if down and op == "skip" else op
            cells.append(f"{layer} {op} w{w}" + (" down" if down else ""))
        branches.append(f"branch b{i} {{ " + " ".join(cells) + " }")
    fusions = []
    if len(head) > 1:
        for _ in range(draw_(st.integers(0, 3))):
            src, dst = draw_(st.permutations(range(len(head))))[:2]
            fusions.append(f"fuse b{src} -> b{dst} after {draw_(st.integers(1, layers - 1))}")
    text = (
        f"hyctas 1\narch r {{ filters 12 layers {layers} head ({', '.join(map(str, head))})\n"
        + "\n".join(branches + sorted(set(fusions)))
        + "\n}\n"
    )
    module = hy.parse(text)
    if hy.check(module):  # e.g. two branches downsampling at the same layers (constraint 2)
        from hypothesis import reject

        reject()
    return module.archs[0]


def positions(source: str) -> dict[str, tuple[float, float]]:
    out = {}
    for k, v in cell_nodes(source).items():
        x, y = re.search(r'pos="([-\d.]+),([-\d.]+)!"', v).groups()
        out[k] = (float(x), float(y))
    return out


@settings(max_examples=40 if not os.environ.get("CI") else 25)
@given(archs())
def test_layout_never_overlaps_and_draws_every_computation(a):
    src = draw(a).source
    pos = positions(src)
    g = build_graph(a)
    assert len(pos) == sum(1 for _n, d in g.nodes(data=True) if d["kind"] == "cell")
    items = sorted(pos.items())
    for i, (n1, (x1, y1)) in enumerate(items):
        for n2, (x2, y2) in items[i + 1 :]:
            assert abs(x1 - x2) >= _BOX_W or abs(y1 - y2) >= _BOX_H, (n1, n2)
    assert len([k for k, v in nodes(src).items() if "shape=diamond" in v]) == len(a.fusions)
    assert draw(a).source == src


@settings(max_examples=25)
@given(archs(max_layers=8), archs(max_layers=8))
def test_diff_layout_never_overlaps(a, b):
    pos = positions(draw_diff(a, b).source)
    items = sorted(pos.items())
    for i, (n1, (x1, y1)) in enumerate(items):
        for n2, (x2, y2) in items[i + 1 :]:
            assert abs(x1 - x2) >= _BOX_W or abs(y1 - y2) >= _BOX_H + 0.08, (n1, n2)
    assert diff_cells(a, a) == [] and draw_diff(a, b).source == draw_diff(a, b).source


# ------------------------------------------------------------------------------- rendering


@pytest.mark.dot
@needs_dot
@pytest.mark.parametrize("fmt,magic", [("svg", b"<svg"), ("png", b"\x89PNG"), ("pdf", b"%PDF")])
def test_renders(tmp_path, fmt, magic):
    out = tmp_path / f"l.{fmt}"
    r = run(["draw", str(ARCHS / "hyctas_l.hy"), "-o", str(out)])
    assert r.exit_code == 0, r.output
    data = out.read_bytes()
    assert magic in data[:400]
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # no temporary left behind


@pytest.mark.dot
@needs_dot
def test_svg_has_every_cell(tmp_path):
    out = tmp_path / "s.svg"
    assert run(["draw", str(ARCHS / "paper_space.hy"), "-o", str(out)]).exit_code == 0
    svg = out.read_text()
    assert len(re.findall(r"<title>C8_\d+</title>", svg)) == 20 and "head θ" in svg


# ------------------------------------------------------------------------------------- CLI


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:  # a group, so that `draw` is a subcommand as in `hyctas draw`
        pass

    draw_cmd.register(app)
    return app


APP = _app()


def run(args):
    return CliRunner().invoke(APP, args)


def test_cli_dot_without_graphviz(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda *a, **k: None)
    out = tmp_path / "l.dot"
    r = run(["draw", str(ARCHS / "hyctas_l.hy"), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert out.read_text() == draw(arch("hyctas_l")).source
    png = tmp_path / "l.png"
    r = run(["draw", str(ARCHS / "hyctas_l.hy"), "-o", str(png)])
    assert r.exit_code == 2
    assert "apt-get install graphviz" in r.output and "https://graphviz.org/download/" in r.output
    assert not png.exists()


def test_cli_missing_dot_in_a_real_process(tmp_path):
    """The installed entry point, with a PATH that has no `dot`."""
    env = dict(os.environ, PATH=str(Path(sys.executable).parent))
    cmd = [sys.executable, "-m", "hyctas_dsl.cli", "draw", str(ARCHS / "hyctas_s.hy"), "-o"]
    r = subprocess.run(cmd + [str(tmp_path / "s.svg")], capture_output=True, text=True, env=env, cwd=ROOT)
    assert r.returncode == 2 and "apt-get install graphviz" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    r = subprocess.run(cmd + [str(tmp_path / "s.dot")], capture_output=True, text=True, env=env, cwd=ROOT)
    assert r.returncode == 0 and (tmp_path / "s.dot").read_text().startswith("digraph hyctas_s {")


def test_cli_invalid_input_located(tmp_path):
    bad = tmp_path / "bad.hy"
    bad.write_text((ARCHS / "hyctas_s.hy").read_text().replace("2 zconv w8 down", "2 skip w7 down"))
    out = tmp_path / "x.dot"
    out.write_text("old")
    r = run(["draw", str(bad), "-o", str(out)])
    assert r.exit_code == 1
    assert f"{bad}:12:7: HY103" in r.output and "^^^^" in r.output
    assert out.read_text() == "old"  # nothing written over on failure


@pytest.mark.parametrize(
    "args,message",
    [
        (["x.jpg"], "unknown output format `.jpg`"),
        (["x"], "unknown output format `(none)`"),
        (["nodir/x.dot"], "does not exist"),
    ],
)
def test_cli_bad_output(tmp_path, args, message):
    r = run(["draw", str(ARCHS / "hyctas_s.hy"), "-o", str(tmp_path / args[0])])
    assert r.exit_code == 2 and message in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_cli_selection_and_diff(tmp_path):
    multi = tmp_path / "multi.hy"
    body = lambda n: (ARCHS / n).read_text().split("hyctas 1\n", 1)[1]  # noqa: E731
    multi.write_text("hyctas 1\n" + body("paper_space.hy") + body("hyctas_s.hy"))
    out = tmp_path / "x.dot"
    # one space beside one arch is that arch's space (as in the files the search emits)
    assert run(["draw", str(multi), "-o", str(out)]).exit_code == 0
    assert out.read_text() == draw(arch("hyctas_s")).source
    two = tmp_path / "two.hy"
    two.write_text("hyctas 1\n" + body("paper_space.hy") + body("hyctas_s.hy") + body("hyctas_m.hy"))
    r = run(["draw", str(two), "-o", str(out)])
    assert r.exit_code == 2 and "space paper, arch hyctas_s, arch hyctas_m" in r.output and "--arch" in r.output
    r = run(["draw", str(multi), "--arch", "nope", "-o", str(out)])
    assert r.exit_code == 2 and "no arch or space named `nope`" in r.output
    assert run(["draw", str(multi), "--arch", "hyctas_s", "-o", str(out)]).exit_code == 0
    assert out.read_text() == draw(arch("hyctas_s")).source
    assert run(["draw", str(multi), "--arch", "paper", "-o", str(out)]).exit_code == 0
    assert out.read_text() == draw_space(hy.load(ARCHS / "paper_space.hy").spaces[0]).source

    s, m = str(ARCHS / "hyctas_s.hy"), str(ARCHS / "hyctas_m.hy")
    assert run(["draw", s, m, "--diff", "-o", str(out)]).exit_code == 0
    assert out.read_text() == draw_diff(arch("hyctas_s"), arch("hyctas_m")).source
    r = run(["draw", s, m, "-o", str(out)])
    assert r.exit_code == 2 and "--diff" in r.output
    r = run(["draw", s, "--diff", "-o", str(out)])
    assert r.exit_code == 2 and "two files" in r.output
    r = run(["draw", str(ARCHS / "paper_space.hy"), s, "--diff", "-o", str(out)])
    assert r.exit_code == 2 and "no arch in" in r.output
    r = run(["draw", str(tmp_path / "missing.hy"), "-o", str(out)])
    assert r.exit_code == 2 and "no such file" in r.output
