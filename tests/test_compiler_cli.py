"""`hyctas compile`: the cost table, JSON, exports, supernet weights and exit codes."""

from __future__ import annotations

import json

import pytest
import torch
import typer
from typer.testing import CliRunner

from hyctas_dsl.language.api import loads
from hyctas_dsl.commands import compile as compile_cmd
from hyctas_dsl.compiler import Supernet, export
from hyctas_dsl.compiler.checkpoint import load_model, save_supernet
from hyctas_dsl.model.cost import arch_cost

from tests.conftest import ARCHS

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

SPACE = """hyctas 1
space small {
  filters 2 4
  layers 3
  strides 8 16 32
  ops skip conv zconv zconv2 attn
  widths 4 6 8 10 12
  branch_prior 0.2 0.3 0.5
  heads (8) (16) (32) (8, 16) (8, 32) (8, 16, 32)
  output_strides 8 4
}
"""

ARCH = """hyctas 1
arch tiny {
  filters 4
  layers 3
  head (8, 16) output_stride 8
  branch hi {
    1 conv w12
    2 attn w8
    3 zconv w10
  }
  branch lo {
    1 conv w12
    2 zconv2 w8 down
    3 skip w6
  }
  fuse lo -> hi after 2
}
"""


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        pass

    compile_cmd.register(app)
    return app


APP = _app()


def run(args):
    return CliRunner().invoke(APP, ["compile"] + [str(a) for a in args])


@pytest.fixture
def files(tmp_path):
    (tmp_path / "space.hy").write_text(SPACE)
    (tmp_path / "tiny.hy").write_text(ARCH)
    return tmp_path


def test_table_for_the_zoo():
    r = run([ARCHS / "hyctas_l.hy", "--input", "64x128"])
    assert r.exit_code == 0, r.output
    out = r.output
    for word in ("part", "stem", "head", "s8", "s16", "s32", "s16.10", "matches the cost model", "GMACs", "act MB"):
        assert word in out
    assert "shared by" not in out  # the table lists branches per cell instead
    assert "s8,s16,s32" in out  # the shared first layers name all three branches


def test_json_report(files):
    r = run([files / "tiny.hy", "--space", files / "space.hy", "--input", "64x64", "--classes", "7", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    arch = loads(ARCH, check_rules=False).archs[0]
    assert data["total"]["params"] == arch_cost(arch, (64, 64), 7).total.params == data["module_params"]
    assert data["classes"] == 7 and data["written"] == []
    assert {row["node"] for row in data["rows"]} >= {"stem", "hi.1", "hi.2", "lo.2", "fuse.lo->hi.2", "head"}


def test_exports_from_a_supernet(files):
    torch.manual_seed(0)
    sn = Supernet(loads(SPACE).spaces[0], classes=5)
    save_supernet(sn, files / "sn.safetensors")
    out = [files / "m.safetensors", files / "m.pt", files / "net.py"]
    r = run([files / "tiny.hy", "--space", files / "space.hy", "--supernet", files / "sn.safetensors", "--input", "64x64"]
            + sum([["--export", p] for p in out], []))
    assert r.exit_code == 0, r.output
    assert all(p.exists() for p in out) and (files / "net.safetensors").exists()
    arch = loads(ARCH, check_rules=False).archs[0]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = export(arch, sn).eval()(x)
        assert torch.equal(load_model(files / "m.safetensors").eval()(x), ref)
        assert (torch.jit.load(str(files / "m.pt"))(x) - ref).abs().max() < 1e-5
    assert "wrote" in r.output and "TorchScript" in r.output
    assert not list(files.glob(".*tmp*"))


def test_onnx_export(files):
    text = ARCH.replace("layers 3", "layers 1").replace("    2 attn w8\n    3 zconv w10\n", "").replace(
        "    2 zconv2 w8 down\n    3 skip w6\n", "").replace("head (8, 16)", "head (8)").replace("  fuse lo -> hi after 2\n", "")
    text = text.replace("  branch lo {\n    1 conv w12\n  }\n", "")
    (files / "one.hy").write_text(text)
    r = run([files / "one.hy", "--space", files / "space.hy", "--input", "32x64", "-o", files / "one.onnx", "--no-cells"])
    assert r.exit_code == 0, r.output
    assert (files / "one.onnx").exists() and "onnxruntime max abs diff" in r.output


def test_arch_that_does_not_fit_the_supernet_exits_1(files):
    sn = Supernet(loads(SPACE).spaces[0].model_copy(update={"ops": ("conv", "zconv", "zconv2", "skip")}), classes=3)
    save_supernet(sn, files / "sn.safetensors")
    r = run([files / "tiny.hy", "--supernet", files / "sn.safetensors", "--space", files / "space.hy"])
    assert r.exit_code == 1
    assert "HY402" in r.output and "tiny.hy:8:" in r.output and "attn" in r.output


def test_invalid_arch_exits_1_with_located_diagnostics(files):
    (files / "bad.hy").write_text(ARCH.replace("2 zconv2 w8 down", "2 skip w8 down"))
    r = run([files / "bad.hy", "--space", files / "space.hy"])
    assert r.exit_code == 1
    assert "HY103" in r.output and "bad.hy:13:" in r.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--input", "12x"], "HEIGHTxWIDTH"),
        (["--input", "0x64"], "HEIGHTxWIDTH"),
        (["--export", "out.h5"], "unknown format"),
        (["--export", "/nonexistent/dir/m.onnx"], "does not exist"),
        (["--classes", "0"], "1..10000"),
        (["--classes", "99999999999999999999999"], "1..10000"),
        (["--supernet", "missing.safetensors"], "no such file"),
    ],
)
def test_bad_options_exit_2(files, args, message, monkeypatch):
    monkeypatch.chdir(files)
    r = run([files / "tiny.hy", "--space", files / "space.hy"] + args)
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert "Traceback" not in r.output


def test_unreadable_files_exit_2(files):
    assert run([files / "nope.hy"]).exit_code == 2
    (files / "sn.safetensors").write_bytes(b"garbage")
    r = run([files / "tiny.hy", "--space", files / "space.hy", "--supernet", files / "sn.safetensors"])
    assert r.exit_code == 2 and "not a readable safetensors file" in r.output


def test_class_count_mismatch_with_the_supernet(files):
    sn = Supernet(loads(SPACE).spaces[0], classes=5)
    save_supernet(sn, files / "sn.safetensors")
    r = run([files / "tiny.hy", "--space", files / "space.hy", "--supernet", files / "sn.safetensors", "--classes", "19"])
    assert r.exit_code == 2 and "trained for 5 classes" in r.output
