"""The front end's command line: `hyctas validate`, `fmt`, `key`.

Exit codes: 0 valid, 1 invalid, 2 a file that cannot be read or a bad option (one line on
stderr, never a traceback). `--json` for tools, `--space FILE`, `--help` that teaches the
language, and a front end that works without torch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import hyctas_dsl as hy
from hyctas_dsl.cli import LANGUAGE_TOUR, app
from tests.conftest import ARCHS, ROOT

runner = CliRunner()
ZOO = sorted(str(p) for p in ARCHS.glob("*.hy"))
S = str(ARCHS / "hyctas_s.hy")
EXE = ROOT / ".venv" / "bin" / "hyctas"
HYCTAS = [str(EXE)] if EXE.exists() else [sys.executable, "-c", "from hyctas_dsl.cli import main; main()"]

BAD = """\
hyctas 1
arch bad {
  filters 12
  layers 2
  head (8) output_stride 8
  branch b {
    1 cnv w12
    2 conv w7
  }
}
"""


def invoke(*args, input=None):
    return runner.invoke(app, list(args), input=input)


@pytest.fixture
def bad_file(tmp_path):
    p = tmp_path / "bad.hy"
    p.write_text(BAD, encoding="utf-8")
    return str(p)


# ----------------------------------------------------------------------------- validate


def test_validate_zoo_ok():
    r = invoke("validate", *ZOO)
    assert r.exit_code == 0, r.output
    assert f"{S}: ok (arch hyctas_s)" in r.stdout
    assert r.stderr == ""


def test_validate_reports_every_error_with_source_and_caret(bad_file):
    r = invoke("validate", S, bad_file)
    assert r.exit_code == 1
    out = r.stdout
    assert f"{bad_file}:7:7: HY201 unknown op `cnv`\n  |\n7 |     1 cnv w12\n  |       ^^^\n  = hint: did you mean `conv`?" in out
    assert f"{bad_file}:8:12: HY202 width w7 is not in the space (w4, w6, w8, w10, w12)" in out
    assert out.rstrip().endswith("Found 2 errors in 1 file.")
    assert "Traceback" not in r.output


def test_validate_quiet(bad_file):
    r = invoke("validate", "-q", S)
    assert r.exit_code == 0 and r.stdout == ""
    r = invoke("validate", "-q", S, bad_file)
    assert r.exit_code == 1 and "ok (" not in r.stdout and "HY201" in r.stdout


def test_validate_stdin():
    r = invoke("validate", "-", input=BAD)
    assert r.exit_code == 1 and "<stdin>:7:7: HY201" in r.stdout
    r = invoke("validate", "-", input=Path(S).read_text(encoding="utf-8"))
    assert r.exit_code == 0


def test_validate_json_shape(bad_file):
    r = invoke("validate", "--json", S, bad_file)
    assert r.exit_code == 1
    report = json.loads(r.stdout)
    assert set(report) == {"files", "valid"} and report["valid"] is False
    good, bad = report["files"]
    assert good == {
        "path": S,
        "valid": True,
        "diagnostics": [],
        "archs": [{"name": "hyctas_s", "key": hy.canonical_key(hy.load(S).archs[0])}],
        "spaces": [],
    }
    assert bad["valid"] is False and bad["path"] == bad_file and "archs" not in bad
    assert bad["diagnostics"][0] == {
        "code": "HY201",
        "message": "unknown op `cnv`",
        "path": bad_file,
        "line": 7,
        "column": 7,
        "end_line": 7,
        "end_column": 10,
        "hint": "did you mean `conv`?",
    }
    r = invoke("validate", "--json", *ZOO)
    assert r.exit_code == 0 and json.loads(r.stdout)["valid"] is True


def test_validate_json_syntax_error():
    r = invoke("validate", "--json", "-", input="hyctas 1\narch {")
    assert r.exit_code == 1
    (entry,) = json.loads(r.stdout)["files"]
    (d,) = entry["diagnostics"]
    assert (d["code"], d["line"], d["column"]) == ("HY001", 2, 6)


# ----------------------------------------------------------------------------- --space


SPACE = """\
hyctas 1
space wide_only {
  filters 12
  layers 11
  strides 8 16 32
  ops conv zconv zconv2 attn
  widths 12
  branch_prior 1
  heads (32)
  output_strides 8
}
"""


def test_space_option(tmp_path):
    sp = tmp_path / "space.hy"
    sp.write_text(SPACE, encoding="utf-8")
    r = invoke("validate", "--space", str(sp), S)
    assert r.exit_code == 1
    assert "HY202 width w8 is not in the space (w12)" in r.stdout
    assert r.stdout.count("HY202") == 10  # every narrow cell of hyctas_s
    r = invoke("validate", "--space", str(ARCHS / "paper_space.hy"), S)
    assert r.exit_code == 0


def test_space_option_problems(tmp_path):
    r = invoke("validate", "--space", str(tmp_path / "none.hy"), S)
    assert r.exit_code == 2 and r.stderr.strip() == f"hyctas: error: {tmp_path / 'none.hy'}: no such file"
    two = tmp_path / "two.hy"
    two.write_text(SPACE + SPACE.split("\n", 1)[1].replace("wide_only", "other"), encoding="utf-8")
    r = invoke("validate", "--space", str(two), S)
    assert r.exit_code == 2 and "expected exactly one `space`, found 2" in r.stderr
    broken = tmp_path / "broken.hy"
    broken.write_text(SPACE.replace("{", ""), encoding="utf-8")
    r = invoke("validate", "--space", str(broken), S)
    assert r.exit_code == 2 and "the space file does not parse" in r.stderr and "HY001" in r.stderr
    latin1 = tmp_path / "latin1.hy"
    latin1.write_bytes(SPACE.replace("wide_only", "caf\xe9").encode("latin-1"))
    r = invoke("validate", "--space", str(latin1), S)
    assert r.exit_code == 2 and "the space file does not parse" in r.stderr and "HY005" in r.stderr
    wrong = tmp_path / "wrong.hy"
    wrong.write_text(SPACE.replace("strides 8 16 32", "strides 8 12"), encoding="utf-8")
    r = invoke("validate", "--space", str(wrong), S)
    assert r.exit_code == 2 and "the space is not valid" in r.stderr and "HY301" in r.stderr


# ----------------------------------------------------------------------------- unreadable


def _one_line_error(r, needle: str) -> None:
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hyctas: error: ") and needle in lines[0], r.stderr
    assert "Traceback" not in r.output


@pytest.mark.parametrize("command", [["validate"], ["fmt"], ["fmt", "--check"], ["key"]])
def test_missing_file_and_directory(tmp_path, command):
    _one_line_error(invoke(*command, str(tmp_path / "missing.hy")), "missing.hy: no such file")
    _one_line_error(invoke(*command, str(tmp_path)), "is a directory")


def test_unreadable_file(tmp_path, monkeypatch):
    # Tests run as root, for whom chmod 000 changes nothing: make the read itself fail.
    p = tmp_path / "secret.hy"
    p.write_text(Path(S).read_text(encoding="utf-8"), encoding="utf-8")
    real = Path.read_bytes

    def read_bytes(self):
        if self.name == "secret.hy":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    for command in (["validate"], ["fmt", "--check"], ["key"]):
        _one_line_error(invoke(*command, S, str(p)), "secret.hy: permission denied")


def test_unreadable_subprocess(tmp_path):
    """The installed command: a missing file, a directory and a path through a file."""
    f = tmp_path / "f.hy"
    f.write_text("hyctas 1\n", encoding="utf-8")
    for path, needle in (
        (tmp_path / "missing.hy", "no such file"),
        (tmp_path, "is a directory, not a .hy file"),
        (f / "x.hy", "cannot read (Not a directory)"),
    ):
        r = subprocess.run([*HYCTAS, "validate", str(path)], capture_output=True, text=True)
        assert r.returncode == 2, r
        assert r.stdout == ""
        assert r.stderr.strip().splitlines() == [f"hyctas: error: {path}: {needle}"]


def test_non_utf8_is_invalid_not_unreadable(tmp_path):
    p = tmp_path / "latin1.hy"
    p.write_bytes(b"hyctas 1\n# caf\xe9\n")
    r = invoke("validate", S, str(p))
    assert r.exit_code == 1
    assert f"{p}:2:6: HY005 byte 0xe9 is not UTF-8" in r.stdout
    assert f"{S}: ok" in r.stdout  # the other file was still checked


# ----------------------------------------------------------------------------- key, help


def test_key_command(bad_file):
    r = invoke("key", *ZOO)
    assert r.exit_code == 0
    lines = dict(line.split("\t") for line in r.stdout.splitlines())
    assert lines["hyctas_s"] == hy.canonical_key(hy.load(S).archs[0])
    assert lines["hyctas_s"].startswith("F12 L11 (32)/8 | zconv2.8 zconv.8v zconv.8 conv.4v")
    r = invoke("key", bad_file)
    assert r.exit_code == 1 and "HY201" in r.stdout


def _help_example() -> str:
    # The example is the indented block after the first "\b" (click's no-rewrap marker).
    block = LANGUAGE_TOUR.split("\b\n", 1)[1].split("\n\n", 1)[0].replace("\b\n", "")
    return "\n".join(line[4:] for line in block.split("\n")) + "\n"


def test_help_teaches_the_language_with_a_valid_example():
    r = invoke("--help")
    assert r.exit_code == 0
    for piece in ("hyctas 1", "arch tiny {", "head (8, 16) output_stride 8", "1..4 conv w12",
                  "3 attn(heads=4) w8", "2 zconv w8 down", "fuse lo -> hi after 3", "docs/language.md"):
        assert piece in r.stdout
    example = _help_example()
    assert example.startswith("hyctas 1") and "fuse lo -> hi after 3" in example
    module = hy.loads(example)  # the example in --help is itself a valid file
    assert [a.name for a in module.archs] == ["tiny"]
    r = invoke("validate", "--help")
    assert r.exit_code == 0 and "Exit 0 when every file is valid" in r.stdout


# ----------------------------------------------------------------------------- no torch

NO_TORCH = (
    "import sys; sys.modules['torch'] = None\n"  # `import torch` now raises ImportError
    "import hyctas_dsl\n"
    "m = hyctas_dsl.load({path!r})\n"
    "print(m.archs[0].name, hyctas_dsl.canonical_key(m.archs[0])[:3])\n"
    "from hyctas_dsl.cli import main\n"
    "sys.argv = ['hyctas'] + {argv!r}\n"
    "main()\n"
)


@pytest.mark.parametrize("argv", [["validate", *ZOO], ["fmt", "--check", *ZOO], ["key", *ZOO], ["--help"]],
                         ids=["validate", "fmt", "key", "help"])
def test_front_end_works_without_torch(argv):
    code = NO_TORCH.format(path=str(ARCHS / "hyctas_l.hy"), argv=argv)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("hyctas_l F16")
    assert "Traceback" not in r.stderr


# Every module of the front end: the language, validation, formatting, drawing, the genome,
# NSGA-II, the CLI and its plumbing, every command module (registered, as `hyctas` does) and
# the job configs. Importing them must not import torch.
FRONT_END = [
    "hyctas_dsl", "hyctas_dsl.language.api", "hyctas_dsl.language.ast", "hyctas_dsl.language.parser", "hyctas_dsl.language.printer",
    "hyctas_dsl.language.validate", "hyctas_dsl.language.errors", "hyctas_dsl.fileio", "hyctas_dsl.language.op_table", "hyctas_dsl.model.cost",
    "hyctas_dsl.model.graph", "hyctas_dsl.draw", "hyctas_dsl.search.genome", "hyctas_dsl.search.nsga", "hyctas_dsl.language.spaces",
    "hyctas_dsl.cli", "hyctas_dsl.cli_support", "hyctas_dsl.jobs.config", "hyctas_dsl.jobs.errors",
    "hyctas_dsl.data.base", "hyctas_dsl.data.metrics",
]


def test_importing_the_front_end_does_not_import_torch():
    code = (
        "import importlib, sys\n"
        f"for m in {FRONT_END!r}: importlib.import_module(m)\n"
        "import hyctas_dsl, hyctas_dsl.cli as cli\n"
        "cli._register_commands()\n"
        "hyctas_dsl.load('archs/hyctas_l.hy')\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_byte_order_mark_is_accepted(tmp_path):
    """A UTF-8 byte-order mark (some Windows editors write one) is not part of the text."""
    p = tmp_path / "bom.hy"
    text = Path(S).read_text(encoding="utf-8")
    p.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    r = invoke("validate", str(p))
    assert r.exit_code == 0, r.output
    assert invoke("fmt", "--check", str(p)).exit_code == 0  # the text is canonical
    p.write_bytes(b"\xef\xbb\xbf" + text.replace("  filters 12", "filters 12").encode("utf-8"))
    assert invoke("fmt", str(p)).exit_code == 0
    assert p.read_bytes() == text.encode("utf-8")  # written back as plain UTF-8


def test_fmt_stdin_errors_go_to_stderr():
    r = invoke("fmt", "-", input="hyctas 1\narch {")
    assert r.exit_code == 1
    assert r.stdout == "" and "<stdin>:2:6: HY001" in r.stderr
