"""The printer's round-trip properties and `hyctas fmt`.

- ``parse(dumps(m)) == m`` for any valid module (and for any parseable AST),
- ``dumps(parse(text)) == text`` for every file in archs/,
- stability: ``dumps(parse(dumps(m))) == dumps(m)``,
- ``fmt`` keeps every comment, wherever it was written; ``fmt --check`` exit codes.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import hyctas_dsl as hy
from hyctas_dsl.cli import app
from hyctas_dsl.language.printer import RUN_MIN
from hyctas_dsl.language.validate import check_module
from tests.conftest import ARCHS, IN_CI
from tests.strategies import any_archs, any_modules, comment_texts, valid_archs, valid_modules

ZOO = sorted(ARCHS.glob("*.hy"))
# Generating valid archs runs the validator (and its memory estimate) on each: keep CI short.
FEW = 60 if IN_CI else 300


@settings(max_examples=FEW)
@given(valid_modules(max_layers=12))
def test_valid_module_round_trips(module):
    text = hy.dumps(module)
    again = hy.parse(text)
    assert again == module
    assert check_module(again) == []
    assert hy.dumps(again) == text  # stable


@settings(max_examples=FEW)
@given(valid_archs())
def test_valid_arch_round_trips_and_key_is_stable(arch):
    text = hy.dumps(arch)
    back = hy.parse(text).archs[0]
    assert back == arch
    assert hy.canonical_key(back) == hy.canonical_key(arch)
    assert "\n" not in hy.canonical_key(arch)


@settings(max_examples=FEW)
@given(any_modules())
def test_any_parseable_module_round_trips(module):
    text = hy.dumps(module)
    again = hy.parse(text)
    assert again == module
    assert hy.dumps(again) == text


@settings(max_examples=FEW)
@given(valid_archs(max_layers=20))
def test_runs_are_canonical(arch):
    """Maximal runs of RUN_MIN or more identical cells print as one `a..b` line, shorter
    ones cell by cell: equal neighbouring lines only occur below RUN_MIN."""
    cell_lines = [ln.strip() for ln in hy.dumps(arch).splitlines() if re.match(r"\s+\d", ln)]
    groups: list[list[str]] = []  # consecutive lines of one branch with the same cell
    prev_last = 0
    for ln in cell_lines:
        label, body = ln.split(" ", 1)
        first, _, last = label.partition("..")
        first, last = int(first), int(last or first)
        assert last - first + 1 == 1 or last - first + 1 >= RUN_MIN
        if groups and first == prev_last + 1 and groups[-1][0] == body:
            groups[-1].append(label)
        else:
            groups.append([body, label])
        prev_last = last
    for body, *labels in groups:
        assert len(labels) == 1 or (len(labels) < RUN_MIN and all(".." not in x for x in labels))


@pytest.mark.parametrize("path", ZOO, ids=lambda p: p.name)
def test_zoo_files_are_canonical(path):
    text = path.read_text(encoding="utf-8")
    assert hy.dumps(hy.parse(text)) == text


@pytest.mark.parametrize("path", ZOO, ids=lambda p: p.name)
def test_zoo_layout_does_not_matter(path):
    """Layout is free: squeezing a zoo file onto one line (comments dropped) or indenting it
    oddly gives the same AST, and fmt restores the canonical text minus the comments."""
    text = path.read_text(encoding="utf-8")
    bare = "\n".join(ln.split("#", 1)[0] for ln in text.splitlines())
    squeezed = " ".join(bare.split())
    ragged = "\n".join(("\t" * (i % 3)) + ln.strip() + (" " * (i % 2)) for i, ln in enumerate(bare.splitlines()))
    for variant in (squeezed, ragged):
        m = hy.parse(variant)
        assert m == hy.parse(text)
        assert hy.dumps(m) == hy.dumps(hy.parse(text), comments=False)


# ------------------------------------------------------------------ comments survive fmt


@st.composite
def commented_sources(draw):
    """Canonical text of a valid module with comments inserted at random line ends and
    between random lines (before the header and after the last line too)."""
    module = draw(valid_modules(max_archs=2, max_layers=8))
    lines = hy.dumps(module).split("\n")[:-1]
    comments: list[str] = []
    out: list[str] = []
    for i in range(len(lines) + 1):
        if draw(st.integers(0, 5)) == 0:
            c = "#" + draw(comment_texts)
            comments.append(c)
            out.append(" " * draw(st.integers(0, 4)) + c)
        if i < len(lines):
            line = lines[i]
            if draw(st.integers(0, 4)) == 0:
                c = "#" + draw(comment_texts)
                comments.append(c)
                line += " " * draw(st.integers(0, 3)) + c
            out.append(line)
    return module, "\n".join(out) + "\n", comments


@settings(max_examples=FEW)
@given(commented_sources())
def test_fmt_keeps_every_comment(case):
    module, text, comments = case
    parsed = hy.parse(text)
    assert parsed == module
    out = hy.dumps(parsed)
    # Every comment appears in the output, in the order it was written (fmt strips only
    # trailing whitespace), and as many times as it was written.
    pos = 0
    for c in comments:
        c = c.rstrip()
        found = out.find(c, pos)
        assert found >= 0, (c, out)
        pos = found + len(c)
    assert hy.parse(out) == module
    assert hy.dumps(hy.parse(out)) == out  # fmt is idempotent with comments too


def test_comment_positions_in_zoo_kept_and_ordered():
    for path in ZOO:
        text = path.read_text(encoding="utf-8")
        out = hy.dumps(hy.parse(text))
        ours = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("#")]
        theirs = [ln.strip() for ln in out.splitlines() if ln.strip().startswith("#")]
        assert ours == theirs


def test_comment_of_a_merged_run_is_kept():
    text = (
        "hyctas 1\narch a {\n  filters 12\n  layers 3\n  head (8) output_stride 8\n  branch b {\n"
        "    1 conv w12  # one\n    2 conv w12\n    3 conv w12  # three\n  }\n}\n"
    )
    out = hy.dumps(hy.parse(text))
    assert "    1..3 conv w12  # one # three\n" in out


def test_comments_in_odd_places_are_kept():
    text = (
        "# before the header\nhyctas 1 # on the header\narch a { # brace\n filters # mid-statement\n 12\n"
        " layers 1 head (8,\n # inside a head\n 16) branch b { 1 conv w12 } }\n# the very end\n# more\n"
    )
    out = hy.dumps(hy.parse(text))
    for c in ("# before the header", "# on the header", "# brace", "# mid-statement", "# inside a head",
              "# the very end", "# more"):
        assert c in out
    assert out.index("# the very end") < out.index("# more")
    assert hy.dumps(hy.parse(out)) == out


# ------------------------------------------------------------------ fmt on files

runner = CliRunner()


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_fmt_check_exit_codes(tmp_path):
    canonical = (ARCHS / "hyctas_s.hy").read_text(encoding="utf-8")
    messy = canonical.replace("  filters 12\n", "filters    12 # twelve\n")
    good = _write(tmp_path, "good.hy", canonical)
    bad = _write(tmp_path, "bad.hy", messy)
    broken = _write(tmp_path, "broken.hy", canonical.replace("{", "", 1))

    r = runner.invoke(app, ["fmt", "--check", str(good)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["fmt", "--check", str(good), str(bad)])
    assert r.exit_code == 1 and f"would reformat {bad}" in r.output
    assert bad.read_text(encoding="utf-8") == messy  # --check changes nothing
    r = runner.invoke(app, ["fmt", "--check", str(broken)])
    assert r.exit_code == 1 and "HY001" in r.output
    r = runner.invoke(app, ["fmt", "--check", str(tmp_path / "missing.hy")])
    assert r.exit_code == 2

    r = runner.invoke(app, ["fmt", "--diff", str(bad)])
    assert r.exit_code == 0 and "-filters    12 # twelve" in r.output and "+  filters 12  # twelve" in r.output

    r = runner.invoke(app, ["fmt", str(bad)])
    assert r.exit_code == 0
    assert bad.read_text(encoding="utf-8") == canonical.replace("  filters 12\n", "  filters 12  # twelve\n")
    r = runner.invoke(app, ["fmt", "--check", str(bad)])
    assert r.exit_code == 0
    assert not list(tmp_path.glob(".*.tmp-*"))  # atomic write leaves no temporary file


def test_fmt_stdin_to_stdout():
    text = "hyctas 1 arch a { filters 12 layers 3 head (8) branch b { 1 conv w12 2 conv w12 3 conv w12 } }"
    r = runner.invoke(app, ["fmt", "-"], input=text)
    assert r.exit_code == 0
    assert r.output == hy.dumps(hy.parse(text))
    assert "1..3 conv w12" in r.output


# ------------------------------------------------------------------ the canonical key


def _reference_key(arch) -> str:
    """canonical_key as first written (before it was optimised for the search's hot loop)."""
    from hyctas_dsl.language.op_table import OPS
    from hyctas_dsl.language.printer import format_op

    order = sorted(arch.branches, key=lambda b: (b.final_stride(), [str(c) for c in b.cells]))
    index = {b.name: i for i, b in enumerate(order)}
    parts = [f"F{arch.filters} L{arch.layers} ({','.join(str(s) for s in arch.head.strides)})/{arch.head.output_stride}"]
    for b in order:
        cells = []
        for c in b.cells:
            spec = OPS.get(c.op.name)
            args = tuple((k, v) for k, v in c.op.args if spec is None or k not in spec.args or spec.args[k].default != v)
            cells.append(f"{format_op(c.op.model_copy(update={'args': args}))}.{c.width}{'v' if c.down else ''}")
        parts.append(" ".join(cells))
    fusions = sorted(f"{index.get(f.src, f.src)}>{index.get(f.dst, f.dst)}@{f.after}" for f in arch.fusions)
    if fusions:
        parts.append("fuse " + " ".join(fusions))
    return " | ".join(parts)


@settings(max_examples=FEW)
@given(st.one_of(valid_archs(max_layers=10), any_archs()))
def test_canonical_key_matches_reference(arch):
    assert hy.canonical_key(arch) == _reference_key(arch)


def test_comment_on_a_fusion_written_with_leading_zeros_stays_in_place():
    text = (
        "hyctas 1\narch a { filters 12 layers 3 head (8, 16)\n branch p { 1..3 conv w12 }\n"
        " branch q { 1 conv w12 down 2 conv w12 3 conv w12 }\n # why fuse\n fuse q -> p after 01  # late\n}\n"
    )
    out = hy.dumps(hy.parse(text))
    assert "  # why fuse\n  fuse q -> p after 1  # late\n}\n" in out


@st.composite
def canonical_with_comments(draw):
    """Canonical text with comments on their own lines (before any line or at the end) and
    at line ends; returns the text and the output fmt must give, built by hand: a comment
    on its own line goes before the next statement, with its indentation (so a comment before
    a blank line moves after it), a comment at a line end stays there after two spaces, and
    comments after the last line come after one blank line."""
    module = draw(valid_modules(max_archs=2, max_layers=6))
    lines = hy.dumps(module).split("\n")[:-1]
    text: list[str] = []
    expected: list[str] = []
    pending: list[str] = []  # own-line comments waiting for the next statement
    for line in lines + [None]:
        for _ in range(draw(st.integers(0, 2)) if draw(st.integers(0, 3)) == 0 else 0):
            c = "#" + draw(comment_texts)
            text.append(" " * draw(st.integers(0, 3)) + c)
            pending.append(c.rstrip())
        if line is None:
            break
        trailing = "#" + draw(comment_texts) if draw(st.integers(0, 3)) == 0 else None
        text.append(line + (" " * draw(st.integers(0, 2)) + trailing if trailing else ""))
        if line == "":
            if trailing:
                pending.append(trailing.rstrip())
            expected.append("")
            continue
        indent = line[: len(line) - len(line.lstrip())]
        expected.extend(indent + c for c in pending)
        pending = []
        expected.append(line + ("  " + trailing.rstrip() if trailing else ""))
    if pending:
        expected.extend([""] + pending)
    return "\n".join(text) + "\n", "\n".join(expected) + "\n"


@settings(max_examples=FEW)
@given(canonical_with_comments())
def test_fmt_puts_each_comment_where_it_belongs(case):
    text, expected = case
    assert hy.dumps(hy.parse(text)) == expected


@pytest.mark.parametrize("bad", ["my arch", "1st", "a-b", "", "é"])
def test_printer_refuses_names_the_grammar_cannot_read(bad):
    arch = hy.parse((ARCHS / "hyctas_s.hy").read_text(encoding="utf-8")).archs[0]
    for broken in (
        arch.model_copy(update={"name": bad}),
        arch.model_copy(update={"branches": (arch.branches[0].model_copy(update={"name": bad}),)}),
        arch.model_copy(update={"meta": (hy.MetaEntry(key=bad, value=1),)}),
    ):
        with pytest.raises(ValueError, match="is not a hyctas name"):
            hy.dumps(broken)


def test_printer_refuses_non_finite_numbers():
    arch = hy.parse((ARCHS / "hyctas_s.hy").read_text(encoding="utf-8")).archs[0]
    with pytest.raises(ValueError, match="non-finite"):
        hy.dumps(arch.model_copy(update={"meta": (hy.MetaEntry(key="x", value=float("nan")),)}))
