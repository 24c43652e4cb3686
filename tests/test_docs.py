"""docs/language.md never drifts from the tool.

Convention of the page:

- a fenced block tagged ``hy`` is a complete source file; tagged ``hy latin-1`` it is written
  to disk in Latin-1 (to show a file that is not UTF-8);
- a ``text`` block right after it whose first line is ``$ hyctas validate example.hy`` holds
  the exact output of that command on the file (in a folder where the file is
  ``example.hy``); a ``hy`` block without one must be valid;
- every front-end rule id (below HY400) has a ``### HYxxx`` section with an example that
  produces it; every later rule id (HY4xx, other stages) is at least listed.

``python tests/test_docs.py --update`` rewrites the expected outputs after a deliberate
change to the messages (then read the diff).
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python tests/test_docs.py --update`
    sys.path.insert(0, str(ROOT))

import hyctas_dsl as hy  # noqa: E402
from hyctas_dsl.cli import app  # noqa: E402
from hyctas_dsl.language.validate import RULES  # noqa: E402

DOC = ROOT / "docs" / "language.md"
COMMAND = "$ hyctas validate example.hy"
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```\n", re.S | re.M)


@dataclass
class Example:
    source: str
    encoding: str
    line: int  # line of the ```hy fence in the page
    expected: str | None  # the documented output, None when the file must be valid
    span: tuple[int, int] | None  # where the expected output's text block sits in the page
    section: str


def examples(page: str) -> list[Example]:
    out: list[Example] = []
    blocks = list(FENCE.finditer(page))
    for i, m in enumerate(blocks):
        info = m[1].split()
        if not info or info[0] != "hy":
            continue
        encoding = info[1] if len(info) > 1 else "utf-8"
        line = page.count("\n", 0, m.start()) + 1
        heads = re.findall(r"^#+ (.*)$", page[: m.start()], re.M)
        expected = span = None
        nxt = blocks[i + 1] if i + 1 < len(blocks) else None
        if nxt is not None and nxt[1].strip() == "text" and page[m.end() : nxt.start()].strip() == "":
            body = nxt[2]
            if body.startswith(COMMAND + "\n"):
                expected, span = body[len(COMMAND) + 1 :], (nxt.start(2), nxt.end(2))
        out.append(Example(m[2], encoding, line, expected, span, heads[-1] if heads else ""))
    return out


def run_validate(ex: Example, tmp: Path) -> tuple[int, str]:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "example.hy").write_bytes(ex.source.encode(ex.encoding))
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        r = CliRunner().invoke(app, ["validate", "example.hy"])
    finally:
        os.chdir(cwd)
    return r.exit_code, r.stdout


PAGE = DOC.read_text(encoding="utf-8")
EXAMPLES = examples(PAGE)


def test_page_has_examples():
    assert len(EXAMPLES) > 30
    assert sum(ex.expected is not None for ex in EXAMPLES) >= len([c for c in RULES if int(c[2:]) < 400])


@pytest.mark.parametrize("ex", EXAMPLES, ids=lambda ex: f"line{ex.line}")
def test_documented_output_is_what_the_tool_prints(ex, tmp_path):
    code, out = run_validate(ex, tmp_path)
    if ex.expected is None:
        assert code == 0, f"docs/language.md:{ex.line}: example should be valid:\n{out}"
        assert out == "example.hy: ok (" + out.split("(", 1)[1]
    else:
        assert out == ex.expected, f"docs/language.md:{ex.line}: output differs (python tests/test_docs.py --update)"
        assert code == (0 if out.startswith("example.hy: ok") else 1)


def _sections(page: str) -> dict[str, str]:
    parts = re.split(r"^### (HY\d{3})\b.*$", page, flags=re.M)
    return {parts[i]: parts[i + 1].split("\n## ", 1)[0] for i in range(1, len(parts), 2)}


def test_every_front_end_rule_has_a_section_with_an_example():
    sections = _sections(PAGE)
    for code in sorted(RULES):
        if int(code[2:]) >= 400:
            assert re.search(rf"\b{code}\b", PAGE), f"{code} ({RULES[code]}) is not listed in docs/language.md"
            continue
        assert code in sections, f"docs/language.md has no `### {code}` section"
        section_examples = [ex for ex in EXAMPLES if ex.section.startswith(code)]
        assert any(ex.expected and f": {code} " in ex.expected for ex in section_examples), (
            f"the {code} section has no example that produces {code}"
        )
    assert set(sections) <= set(RULES), "a section documents a rule the tool does not have"


def test_rule_table_lists_every_rule():
    table = PAGE.split("## Rules", 1)[1].split("\n### ", 1)[0]
    for code in RULES:
        if int(code[2:]) < 400:
            assert f"[{code}]" in table, f"{code} missing from the rule table"


def test_valid_examples_are_canonical_or_say_so():
    """Construct examples are written in canonical form, so what readers copy is what
    `hyctas fmt` writes (examples meant to show free layout are marked with a comment)."""
    for ex in EXAMPLES:
        if ex.expected is None and "# layout is free" not in ex.source:
            assert hy.dumps(hy.parse(ex.source)) == ex.source, f"docs/language.md:{ex.line} is not canonical"


def test_documented_key_is_what_the_tool_prints():
    block = PAGE.split("$ hyctas key archs/hyctas_s.hy\n", 1)[1].split("```", 1)[0]
    r = CliRunner().invoke(app, ["key", str(ROOT / "archs" / "hyctas_s.hy")])
    assert r.exit_code == 0 and r.stdout == block


def update(tmp: Path) -> None:
    page = PAGE
    for ex in sorted((e for e in EXAMPLES if e.span), key=lambda e: e.span[0], reverse=True):
        _code, out = run_validate(ex, tmp)
        page = page[: ex.span[0]] + COMMAND + "\n" + out + page[ex.span[1] :]
    DOC.write_text(page, encoding="utf-8")


if __name__ == "__main__":
    if sys.argv[1:] == ["--update"]:
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            update(Path(d))
        print(f"updated {DOC}")
    else:
        print(__doc__)
