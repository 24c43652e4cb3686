"""Bad input never escapes as anything but HyctasError with a location.

Thousands of inputs: seeded random mutations of the zoo (delete, insert, duplicate, swap
characters and tokens; numbers made huge, negative, fractional or infinite), hypothesis text
and bytes, deep nesting, 10 MB files, a missing brace at the end, non-UTF-8 bytes, odd
indentation and unknown ops. For every input, the front end either

- raises HyctasError whose every diagnostic has a line and column inside the text, and
  renders without error, or
- parses; then validation returns located diagnostics (never raises), and the printer's
  output parses back to the same AST and is stable.

`hyctas validate` on such files never prints a traceback and exits 0 or 1.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

import hyctas_dsl as hy
from hyctas_dsl.language.api import decode
from hyctas_dsl.cli import app
from hyctas_dsl.language.errors import HyctasError
from hyctas_dsl.language.op_table import OPS
from hyctas_dsl.language.parser import MAX_LAYER
from hyctas_dsl.language.validate import check_module
from tests.conftest import ARCHS, IN_CI, ROOT

ZOO = {p.name: p.read_text(encoding="utf-8") for p in sorted(ARCHS.glob("*.hy"))}
# One file that exercises everything the zoo does not: a space and archs in one file, op
# arguments, fusion nodes, meta of every type, comments in odd places.
RICH = """\
hyctas 1
# a space and two archs in one file
space small {
  filters 8 12
  layers 6
  strides 8 16 32
  ops skip conv zconv zconv2 attn
  widths 4 8 12
  branch_prior 0.5 0.5
  heads (8) (8, 16) (16)
  output_strides 8 4
  memory 2 GiB batch 2 crop 64x128
}

arch two {  # two branches
  filters 8
  layers 6
  head (8, 16) output_stride 4
  branch hi {
    1..6 conv w8
  }
  branch lo {
    1 conv w8
    2 attn(heads=2, ratio=0.25) w12 down
    3..5 zconv w4
    6 zconv2 w8
  }
  fuse lo -> hi after 3
  fuse hi -> lo after 2
  meta {
    miou 0.5
    note "a \\"quoted\\" \\\\ path\\n"
    ok true
    epochs 300
  }
}

arch one {
  filters 12
  layers 2
  head (8) output_stride 8
  branch main {
    1 skip w4
    2 conv w12
  }
}
"""
SOURCES = {**ZOO, "rich.hy": RICH, "space+arch.hy": ZOO["paper_space.hy"] + ZOO["hyctas_m.hy"].split("\n", 1)[1]}

N_MUTANTS = 4000 if IN_CI else 20000
TOKEN_RE = re.compile(r'"(?:[^"\\\n]|\\.)*"|#[^\n]*|\s+|[A-Za-z_][A-Za-z0-9_]*|-?[0-9][0-9.eE+x-]*|->|\.\.|.', re.S)
JUNK = ["{", "}", "(", ")", ",", "=", "->", "..", "#", '"', "\\", "\n", "\t", " ", "\r", "\x00", "\x0c",
        "\u2028", "\x85", "é", "中", "\U0001f600", "\ufeff", "0", "-1", "1e999", "99999999999999999999",
        "0.5", "w0", "w-1", "1x1", "0x0", "down", "arch", "branch", "space", "meta", "fuse", "after", "head",
        "hyctas", "attn(heads=0)", "attn(", "x=", "ratio", "true", "1..", "..2", "layers", "filters"]
NUMBERS = ["0", "-3", "1e999", "-1e999", "1.5", "99999999999999999999999", "1e308", "2.0", "007", "1001"]


def assert_located(err: HyctasError, text: str) -> None:
    lines = text.split("\n")
    assert err.diagnostics
    for d in err.diagnostics:
        assert d.code.startswith("HY") and d.message
        assert d.span is not None, d
        assert 1 <= d.line <= len(lines), (d, len(lines))
        assert 1 <= d.column <= len(lines[d.line - 1]) + 1, (d, lines[d.line - 1][:80])
    rendered = err.render()
    assert rendered.startswith("f.hy:")
    assert len(rendered) < 2000 * len(err.diagnostics)  # long lines are cut


def check_any_text(text: str) -> str:
    """The front end's contract on arbitrary text; returns what happened."""
    try:
        module = hy.parse(text, "f.hy")
    except HyctasError as e:
        assert_located(e, text)
        return "syntax"
    diags = check_module(module)
    if diags:
        assert_located(HyctasError(diags).with_source(text, "f.hy"), text)
    out = hy.dumps(module)
    again = hy.parse(out)
    assert again == module
    assert hy.dumps(again) == out
    for arch in module.archs:
        hy.canonical_key(arch)
    return "invalid" if diags else "valid"


# ----------------------------------------------------------------------------- mutants


def mutate(text: str, rng: random.Random) -> str:
    """One to three random edits, at the character or the token level."""
    for _ in range(rng.randint(1, 3)):
        kind = rng.randrange(9)
        if kind < 4:  # character level
            if not text:
                text = rng.choice(JUNK)
                continue
            i = rng.randrange(len(text))
            j = min(len(text), i + rng.randint(1, 8))
            if kind == 0:
                text = text[:i] + text[j:]
            elif kind == 1:
                text = text[:i] + rng.choice(JUNK) + text[i:]
            elif kind == 2:
                text = text[:i] + text[i:j] * 2 + text[j:]
            else:
                k = rng.randrange(len(text))
                a, b = sorted((i, k))
                text = text[:a] + text[b] + text[a + 1 : b] + text[a] + text[b + 1 :] if a != b else text
        else:  # token level
            toks = TOKEN_RE.findall(text)
            if not toks:
                continue
            i = rng.randrange(len(toks))
            if kind == 4:
                del toks[i]
            elif kind == 5:
                toks.insert(i, toks[i])
            elif kind == 6:
                k = rng.randrange(len(toks))
                toks[i], toks[k] = toks[k], toks[i]
            elif kind == 7:
                toks.insert(i, rng.choice(JUNK + [" ", " "]) + " ")
            else:
                nums = [n for n, t in enumerate(toks) if t[:1].isdigit()]
                if nums:
                    toks[rng.choice(nums)] = rng.choice(NUMBERS)
            text = "".join(toks)
    return text


def test_thousands_of_mutants_of_the_zoo():
    # Every mutant starts from a valid file, so small edits reach validation and the printer.
    assert all(check_any_text(text) == "valid" for text in SOURCES.values())
    rng = random.Random(20260501)
    names = sorted(SOURCES)
    outcomes: dict[str, int] = {}
    for n in range(N_MUTANTS):
        text = mutate(SOURCES[names[n % len(names)]], rng)
        try:
            what = check_any_text(text)
        except AssertionError:
            raise
        except Exception as e:  # pragma: no cover - the failure message is the point
            raise AssertionError(f"mutant {n} raised {type(e).__name__}: {e}\n---\n{text}") from e
        outcomes[what] = outcomes.get(what, 0) + 1
    # The mutants reach every stage: syntax errors, rule violations and valid files.
    assert set(outcomes) == {"syntax", "invalid", "valid"}, outcomes


@given(st.text(max_size=300))
def test_arbitrary_text(text):
    check_any_text(text)


@given(st.lists(st.sampled_from(sorted(set(JUNK) | set("abw0123456789 \n{}()"))), max_size=80))
def test_text_made_of_language_fragments(parts):
    check_any_text("hyctas 1\n" + "".join(parts))


@given(st.binary(max_size=300))
def test_arbitrary_bytes(data):
    try:
        text = decode(data, "f.hy")
    except HyctasError as e:
        assert e.codes == ["HY005"]
        d = e.diagnostics[0]
        assert d.line == data[: _bad_offset(data)].count(b"\n") + 1
        e.render()
        return
    check_any_text(text)


def _bad_offset(data: bytes) -> int:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        return e.start
    raise AssertionError("data is valid UTF-8")


def test_non_utf8_bytes_located():
    base = ZOO["hyctas_s.hy"].encode()
    rng = random.Random(7)
    for _ in range(200):
        i = rng.randrange(len(base))
        data = base[:i] + bytes([rng.choice([0x80, 0xC3, 0xFF, 0xFE, 0xE2])]) + base[i:]
        try:
            hy.load(io.BytesIO(data))
        except HyctasError as e:
            d = e.diagnostics[0]
            if d.code == "HY005":
                off = _bad_offset(data)
                line_start = data.rfind(b"\n", 0, off) + 1
                assert (d.line, d.column) == (data[:off].count(b"\n") + 1, len(data[line_start:off].decode()) + 1)
                assert "not UTF-8" in e.render()
            continue
        raise AssertionError("a stray byte went unnoticed")


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    "text",
    [
        "(" * 100_000,
        "{" * 100_000,
        "hyctas 1\narch a {" + " branch b {" * 50_000,
        "hyctas 1\narch a { filters 12 layers 1 head " + "(" * 50_000 + "8" + ")" * 50_000,
        "hyctas 1\narch a { filters 12 layers 1 head (8) branch b { 1 attn" + "(heads=4" * 20_000,
        "hyctas 1\narch a { meta { x " + '"' * 100_001,
        "hyctas 1\n" + "\n" * 100_000 + "}",
        "",
        "\n\n\n",
        "hyctas",
        "hyctas 2\n",
        "\ufeffhyctas 1\n",
    ],
    ids=["parens", "braces", "branches", "head", "args", "quotes", "newlines", "empty", "blank", "word", "v2", "bom"],
)
def test_deep_nesting_and_degenerate_shapes(text):
    assert check_any_text(text) in ("syntax", "valid")


def test_ten_megabyte_files():
    junk_line = "hyctas 1\narch a {" + "x" * 10_000_000
    assert check_any_text(junk_line) == "syntax"
    comments = ZOO["hyctas_l.hy"] + ("# " + "x" * 60 + "\n") * 160_000
    assert len(comments) > 10_000_000
    assert check_any_text(comments) == "valid"
    data = random.Random(3).randbytes(10_000_000)
    with pytest.raises(HyctasError) as e:
        hy.load(io.BytesIO(data))
    assert e.value.codes == ["HY005"]


def test_many_statements_and_comments_stay_linear():
    """A regression test: attaching comments was quadratic (minutes for 20k commented lines)."""
    n = 5_000 if IN_CI else 20_000
    body = "".join(f"  branch b{i} {{ 1 conv w12 }}  # c{i}\n" for i in range(n))
    text = "hyctas 1\narch a {\n  filters 12\n  layers 1\n  head (8)\n" + body + "}\n"
    module = hy.parse(text)
    out = hy.dumps(module)
    assert f"  branch b{n - 1} {{  # c{n - 1}\n" in out


@pytest.mark.parametrize("name", sorted(ZOO))
def test_missing_brace_at_the_end(name):
    text = ZOO[name].rstrip()
    assert text.endswith("}")
    cut = text[:-1]
    with pytest.raises(HyctasError) as e:
        hy.parse(cut, "f.hy")
    d = e.value.diagnostics[0]
    assert d.code == "HY001" and d.message == "unexpected end of file"
    assert "`}`" in d.hint
    assert d.line == len(cut.rstrip("\n").split("\n"))
    assert_located(e.value, cut)


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_wrong_indentation_is_fine(name):
    rng = random.Random(name)
    text = SOURCES[name]
    ragged = "\n".join(rng.choice(["", " ", "\t", "        ", " \t "]) + ln.strip() for ln in text.split("\n"))
    assert hy.parse(ragged) == hy.parse(text)


def test_unknown_ops_are_located():
    text = ZOO["hyctas_s.hy"]
    rng = random.Random(11)
    lines = text.split("\n")
    for _ in range(50):
        i = rng.choice([n for n, ln in enumerate(lines) if re.match(r"\s+\d+ \w+ w", ln)])
        op = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz_") for _ in range(rng.randint(1, 9)))
        if op in OPS:
            continue
        new = lines[:]
        new[i] = re.sub(r"(\d+ )\w+", rf"\g<1>{op}", lines[i], count=1)
        with pytest.raises(HyctasError) as e:
            hy.loads("\n".join(new), "f.hy")
        d = e.value.diagnostics[0]
        assert d.code == "HY201" and (d.line, d.column) == (i + 1, new[i].index(op) + 1)


# ----------------------------------------------------------------------------- regressions


@pytest.mark.parametrize(
    "snippet, code",
    [
        ("meta { x 1e999 }", "HY003"),  # was: ValueError from the printer in `hyctas fmt`
        ("meta { x -1e999 }", "HY003"),
        ("branch c { 1 attn(ratio=1e999) w12 }", "HY003"),
        ("branch c { 1..99999999999 conv w12 }", "HY004"),  # was: billions of cells
        (f"branch c {{ 1..{MAX_LAYER + 1} conv w12 }}", "HY004"),
    ],
)
def test_regression_numbers_out_of_range(snippet, code):
    text = f"hyctas 1\narch a {{ filters 12 layers 1 head (8) branch b {{ 1 conv w12 }} {snippet} }}\n"
    with pytest.raises(HyctasError) as e:
        hy.parse(text, "f.hy")
    assert e.value.codes == [code]
    assert_located(e.value, text)


SPACE = "hyctas 1\nspace p {{ filters 8 layers 2 strides 8 ops conv widths 4 branch_prior {prior} heads (8) output_strides 8 memory {mem} batch 1 crop 1x1 }}\n"


def test_regression_memory_limits():
    # was: OverflowError (float infinity to int) in the parser
    with pytest.raises(HyctasError) as e:
        hy.parse(SPACE.format(prior="1", mem="1e308 TiB"), "f.hy")
    assert e.value.codes == ["HY003"]
    with pytest.raises(HyctasError) as e:
        hy.parse(SPACE.format(prior="1e999", mem="1 GiB"), "f.hy")
    assert e.value.codes == ["HY003"]
    # was: OverflowError (integer division too large for a float) in the printer
    huge = SPACE.format(prior="1", mem="1" + "0" * 400 + " B")
    out = hy.dumps(hy.parse(huge))
    assert hy.parse(out) == hy.parse(huge)
    for mem in ("1.5 GiB", "3 KiB", "1023 B", "12345678901 B", "0.001 KiB"):
        m = hy.parse(SPACE.format(prior="1", mem=mem))
        assert hy.parse(hy.dumps(m)) == m


def test_regression_line_breaks_other_than_newline():
    """The lexer counts lines by \\n only; the diagnostic must show that same line (it used
    str.splitlines, which also breaks at form feeds, U+2028, ...)."""
    text = "hyctas 1\n# a\x0cb\u2028c\x85d\rz\narch a { filters 12 layers 1 head (8) branch b { 1 cnv w12 } }\n"
    with pytest.raises(HyctasError) as e:
        hy.loads(text, "f.hy")
    d = e.value.diagnostics[0]
    assert (d.code, d.line) == ("HY201", 3)
    assert "3 | arch a { filters 12" in e.value.render()


def test_regression_long_junk_line_renders_short():
    text = "hyctas 1\narch a {" + "x" * 1_000_000
    with pytest.raises(HyctasError) as e:
        hy.parse(text, "f.hy")
    out = e.value.render()
    assert len(out) < 600 and "^" in out


def test_regression_carriage_return_in_strings_is_escaped():
    text = 'hyctas 1\narch a { filters 12 layers 1 head (8) branch b { 1 conv w12 } meta { x "a\rb" } }\n'
    out = hy.dumps(hy.parse(text))
    assert "\r" not in out and 'x "a\\rb"' in out
    assert hy.parse(out).archs[0].meta[0].value == "a\rb"


# ----------------------------------------------------------------------------- the CLI

runner = CliRunner()


def _mutant_files(tmp_path, n: int) -> list[str]:
    rng = random.Random(99)
    names = sorted(SOURCES)
    paths = []
    for i in range(n):
        p = tmp_path / f"m{i}.hy"
        if i % 10 == 9:
            p.write_bytes(rng.randbytes(rng.randint(0, 400)))
        else:
            p.write_text(mutate(SOURCES[names[i % len(names)]], rng), encoding="utf-8", newline="")
        paths.append(str(p))
    return paths


def test_cli_validate_on_mutants(tmp_path):
    paths = _mutant_files(tmp_path, 150 if IN_CI else 600)
    for chunk in (paths[: len(paths) // 2], paths[len(paths) // 2 :]):
        r = runner.invoke(app, ["validate", *chunk])
        assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
        assert r.exit_code in (0, 1)
        assert "Traceback" not in r.output
    r = runner.invoke(app, ["validate", "--json", *paths[:40]])
    assert r.exit_code in (0, 1)
    report = json.loads(r.output)
    assert len(report["files"]) == 40
    for f in report["files"]:
        for d in f["diagnostics"]:
            assert d["line"] >= 1 and d["column"] >= 1


def test_cli_validate_subprocess_never_tracebacks(tmp_path):
    paths = _mutant_files(tmp_path, 60)
    exe = ROOT / ".venv" / "bin" / "hyctas"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "hyctas_dsl.cli"]
    r = subprocess.run([*cmd, "validate", *paths], capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert r.returncode in (0, 1), r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    r = subprocess.run([*cmd, "fmt", "--check", *paths], capture_output=True, text=True)
    assert r.returncode in (0, 1), r.stderr
    assert "Traceback" not in r.stdout + r.stderr


# ----------------------------------------------------------------------------- structure-aware

# Every number of a file, wherever it stands (widths `w12`, runs `1..4`, crops `64x128`,
# arguments `heads=2`, meta values), replaced by each of these; and every line dropped or
# duplicated. Each mutant meets the front end's contract, and each one that validates must
# compile and run a forward pass: validation promises the compiler can build it.
HOSTILE = ["0", "-1", "-7", "1" + "0" * 400, "99999999999999999999", "1e999", "-1e999", "nan", "inf", "0.5", "1e-300"]
NUMBER_RE = re.compile(r"(?<![A-Za-z_])\d+(?:\.\d+)?(?:[eE][+-]?\d+)?|(?<=w)\d+")


def structural_mutants(text: str) -> list[str]:
    out = []
    for m in NUMBER_RE.finditer(text):
        for v in HOSTILE:
            out.append(text[: m.start()] + v + text[m.end() :])
    lines = text.split("\n")
    for i in range(1, len(lines)):
        out.append("\n".join(lines[:i] + lines[i + 1 :]))
        out.append("\n".join(lines[: i + 1] + lines[i:]))
    return out


STRUCTURAL = {name: structural_mutants(SOURCES[name]) for name in ("rich.hy", "hyctas_s.hy", "paper_space.hy")}


@pytest.mark.parametrize("name", sorted(STRUCTURAL))
def test_structure_aware_mutants_meet_the_contract(name):
    outcomes = [check_any_text(t) for t in STRUCTURAL[name]]
    assert "valid" in outcomes and "invalid" in outcomes


def test_every_structural_mutant_that_validates_compiles_and_runs():
    torch = pytest.importorskip("torch", reason="compiling needs the [train] extra (torch)")
    from hyctas_dsl.compiler import export

    valid: dict[str, object] = {}
    for name in ("rich.hy", "hyctas_s.hy"):
        for text in STRUCTURAL[name]:
            try:
                module = hy.loads(text, "f.hy")
            except HyctasError:
                continue
            for arch in module.archs:
                valid.setdefault(hy.canonical_key(arch), arch)
    archs = list(valid.values())
    assert len(archs) >= 5  # distinct networks (meta and names do not count)
    if IN_CI:  # the short form: an evenly spread share
        archs = archs[:: max(1, len(archs) // 12)]
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for arch in archs:
            torch.manual_seed(0)
            model = export(arch, classes=3).eval()
            with torch.no_grad():
                y = model(torch.randn(1, 3, 32, 64))
            assert y.shape == (1, 3, 32, 64) and bool(torch.isfinite(y).all()), hy.canonical_key(arch)
    finally:
        torch.set_num_threads(n)


def test_huge_branch_prior_is_located_and_the_other_files_are_still_reported(tmp_path):
    bad = tmp_path / "bad.hy"
    bad.write_text(ZOO["paper_space.hy"].replace("branch_prior", "branch_prior 1" + "0" * 400 + " #"), encoding="utf-8")
    r = runner.invoke(app, ["validate", str(bad), str(ARCHS / "hyctas_s.hy")])
    assert r.exit_code == 1 and not isinstance(r.exception, OverflowError)
    assert "out of range for a branch probability" in r.output and "hyctas_s.hy: ok" in r.output
