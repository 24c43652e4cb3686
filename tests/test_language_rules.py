"""Every rule id has a file that breaks it, with the code, line and column checked.

Expected locations are given by the offending token in the text (``at(text, "w7")``), not
taken from the tool. Rules added later by other stages (HY4xx, compile-stage) are not
produced by the front end and are not required here.
"""

from __future__ import annotations

import io

import pytest

import hyctas_dsl as hy
from hyctas_dsl.language.errors import HyctasError
from hyctas_dsl.language.validate import RULES

BASE = """\
hyctas 1
arch a {
  filters 12
  layers 2
  head (8) output_stride 8
  branch b {
    1 conv w12
    2 conv w12
  }
}
"""
TWO = """\
hyctas 1
arch a {
  filters 12
  layers 2
  head HEAD output_stride 8
  branch p {
    1 conv w12 PDOWN
    2 conv w12
  }
  branch q {
    1 conv w8
    2 conv w8 QDOWN
  }
  FUSE
}
"""


def two(head="(8)", pdown="", qdown="", fuse=""):
    return TWO.replace("HEAD", head).replace("PDOWN", pdown).replace("QDOWN", qdown).replace("FUSE", fuse)


SMALL_SPACE = """\
hyctas 1
space tight {
  filters 12
  layers 4
  strides 8 16 32
  ops conv zconv
  widths 12
  branch_prior 0.5 0.5
  heads (8) (8, 16) (8, 16, 32)
  output_strides 8
  MEMORY
}

arch a {
  filters 12
  layers 2
  head HEAD output_stride 8
BRANCHES}
"""


def at(text: str, needle: str, skip: int = 0, nth: int = 0) -> tuple[int, int]:
    """1-based line and column of ``needle`` (its ``nth`` occurrence), ``skip`` characters in."""
    i = -1
    for _ in range(nth + 1):
        i = text.index(needle, i + 1)
    i += skip
    line = text.count("\n", 0, i) + 1
    return line, i - (text.rfind("\n", 0, i) + 1) + 1


def diagnostics(text: str) -> list[tuple[str, int, int]]:
    try:
        hy.loads(text, "f.hy")
    except HyctasError as e:
        return [(d.code, d.line, d.column) for d in e.diagnostics]
    return []


t_hy001 = BASE.replace("2 conv w12", "2 conv w12 w8")
t_hy002 = BASE.replace("hyctas 1", "hyctas 2")
t_hy003 = BASE.replace("filters 12", "filters 12.5")
t_hy004 = BASE.replace("2 conv w12", "3 conv w12")
t_hy006 = BASE.replace("  layers 2\n", "  layers 2\n  layers 2\n")
t_hy007 = BASE.replace("  head (8) output_stride 8\n", "")
t_hy101 = "hyctas 1\narch a {\n  filters 12\n  layers 2\n  head (8)\n}\n"
t_hy102 = two()
t_hy103 = BASE.replace("2 conv w12", "2 skip w12 down").replace("head (8)", "head (16)")
t_hy104 = SMALL_SPACE.replace("MEMORY", "memory 1 MiB batch 16 crop 512x1024").replace("HEAD", "(8)").replace(
    "BRANCHES", "  branch b {\n    1..2 conv w12\n  }\n"
)
t_hy201 = BASE.replace("2 conv w12", "2 cnv w12")
t_hy202 = BASE.replace("2 conv w12", "2 conv w7")
t_hy203 = BASE.replace("layers 2", "layers 3").replace("head (8)", "head (32)").replace(
    "    2 conv w12\n", "    2 conv w12 down\n    3 conv w12 down\n"
).replace("1 conv w12", "1 conv w12 down")
t_hy204 = BASE.replace("layers 2", "layers 21").replace("    1 conv w12\n    2 conv w12\n", "    1..21 conv w12\n")
t_hy205 = BASE.replace("layers 2", "layers 3")
t_hy206 = BASE.replace("head (8)", "head (16)")
t_hy207 = BASE.replace("output_stride 8", "output_stride 2")
t_hy208 = two(head="(16)", pdown="down", qdown="down")
t_hy209 = two(head="(8, 16)", qdown="down", fuse="fuse p -> x after 1")
t_hy210 = two(head="(8, 16)", qdown="down", fuse="fuse q -> p after 2")
t_hy211 = BASE + BASE.split("\n", 1)[1]
t_hy212 = SMALL_SPACE.replace("MEMORY", "").replace("HEAD", "(8, 16, 32)").replace(
    "BRANCHES",
    "  branch s8 {\n    1..2 conv w12\n  }\n  branch s16 {\n    1 conv w12 down\n    2 conv w12\n  }\n"
    "  branch s32 {\n    1 conv w12 down\n    2 conv w12 down\n  }\n",
)
t_hy213 = BASE.replace("filters 12", "filters 10")
t_hy214 = BASE.replace("2 conv w12", "2 attn(heads=0) w12")
t_hy215 = BASE.replace("output_stride 8\n", "output_stride 8\n  task panoptik\n")
t_hy301 = SMALL_SPACE.replace("strides 8 16 32", "strides 8 12").replace("heads (8) (8, 16) (8, 16, 32)", "heads (8)").replace(
    "MEMORY", "").replace("HEAD", "(8)").replace("BRANCHES", "  branch b {\n    1..2 conv w12\n  }\n")

CASES = {
    "HY001": (t_hy001, [("HY001", *at(t_hy001, "w8"))]),
    "HY002": (t_hy002, [("HY002", *at(t_hy002, "2"))]),
    "HY003": (t_hy003, [("HY003", *at(t_hy003, "12.5"))]),
    "HY004": (t_hy004, [("HY004", *at(t_hy004, "3 conv"))]),
    "HY006": (t_hy006, [("HY006", *at(t_hy006, "layers", nth=1))]),
    "HY007": (t_hy007, [("HY007", *at(t_hy007, "a {"))]),
    "HY101": (t_hy101, [("HY101", *at(t_hy101, "a {"))]),
    # Equal down positions imply equal final strides: HY208 comes with HY102.
    "HY102": (t_hy102, [("HY208", *at(t_hy102, "q {")), ("HY102", *at(t_hy102, "q {"))]),
    "HY103": (t_hy103, [("HY103", *at(t_hy103, "skip"))]),
    "HY104": (t_hy104, [("HY104", *at(t_hy104, "a {"))]),
    "HY201": (t_hy201, [("HY201", *at(t_hy201, "cnv"))]),
    "HY202": (t_hy202, [("HY202", *at(t_hy202, "w7"))]),
    # The third `down` leaves the space; the head then cannot match either.
    "HY203": (t_hy203, [("HY206", *at(t_hy203, "(32)")), ("HY203", *at(t_hy203, "down", nth=2))]),
    "HY204": (t_hy204, [("HY204", *at(t_hy204, "layers 21"))]),
    "HY205": (t_hy205, [("HY205", *at(t_hy205, "b {"))]),
    "HY206": (t_hy206, [("HY206", *at(t_hy206, "(16)"))]),
    "HY207": (t_hy207, [("HY207", *at(t_hy207, "stride 2", skip=7))]),
    "HY208": (t_hy208, [("HY208", *at(t_hy208, "q {"))]),
    "HY209": (t_hy209, [("HY209", *at(t_hy209, "x after"))]),
    "HY210": (t_hy210, [("HY210", *at(t_hy210, "2", skip=0, nth=t_hy210.count("2") - 1))]),
    "HY211": (t_hy211, [("HY211", *at(t_hy211, "a {", nth=1))]),
    "HY212": (t_hy212, [("HY212", *at(t_hy212, "s32"))]),
    "HY213": (t_hy213, [("HY213", *at(t_hy213, "filters 10"))]),
    "HY214": (t_hy214, [("HY214", *at(t_hy214, "attn"))]),
    "HY215": (t_hy215, [("HY215", *at(t_hy215, "task panoptik"))]),
    "HY301": (t_hy301, [("HY301", *at(t_hy301, "strides 8 12"))]),
}


def test_every_front_end_rule_has_a_case():
    front_end = {code for code in RULES if int(code[2:]) < 400}
    assert front_end == set(CASES) | {"HY005"}  # HY005 is about bytes: tested below


@pytest.mark.parametrize("code", sorted(CASES))
def test_rule(code):
    text, expected = CASES[code]
    got = diagnostics(text)
    assert got == expected, "\n" + text
    assert code in [c for c, _l, _c in got]


def test_hy005_not_utf8():
    data = BASE.replace("2 conv w12", "2 conv w12 \xff").encode("utf-8").replace(b"\xc3\xbf", b"\xff")
    with pytest.raises(HyctasError) as e:
        hy.load(io.BytesIO(data))
    assert [(d.code, d.line, d.column) for d in e.value.diagnostics] == [("HY005", 8, 16)]
    assert "byte 0xff is not UTF-8" in e.value.render()


def test_hints():
    def hint(text):
        with pytest.raises(HyctasError) as e:
            hy.loads(text, "f.hy")
        return e.value.diagnostics[0].hint

    assert hint(t_hy201) == "did you mean `conv`?"
    assert hint(t_hy202) == "did you mean `w6`?" or hint(t_hy202) == "did you mean `w8`?"
    assert hint(t_hy206) == "write `head (8)`"
    assert hint(BASE.replace("1 conv w12", "1 zconvv w12")) == "did you mean `zconv`?"
    assert "expected" in hint(t_hy001)


def test_all_violations_reported_at_once():
    text = """\
hyctas 1
arch a {
  filters 10
  layers 3
  head (16) output_stride 2
  branch p {
    1 cnv w12
    2 skip w7 down
    3 attn(heads=3, ratio=2) w12
  }
  branch q {
    1 conv w8
  }
  fuse p -> x after 3
}
"""
    with pytest.raises(HyctasError) as e:
        hy.loads(text, "f.hy")
    got = [(d.code, d.line, d.column) for d in e.value.diagnostics]
    assert got == [
        ("HY213", *at(text, "filters 10")),
        ("HY206", *at(text, "(16)")),
        ("HY207", *at(text, "stride 2", skip=7)),
        ("HY201", *at(text, "cnv")),
        ("HY103", *at(text, "skip")),
        ("HY202", *at(text, "w7")),
        ("HY214", *at(text, "attn")),
        ("HY205", *at(text, "q {")),
        ("HY209", *at(text, "x after")),
        ("HY210", *at(text, "3\n}")),
    ]
    rendered = e.value.render()
    assert rendered.count("f.hy:") == len(got)
    # Each diagnostic shows its line and a caret under the token.
    assert "8 |     2 skip w7 down\n  |       ^^^^" in rendered


def test_parse_stage_reports_all_its_problems_at_once():
    text = BASE.replace("filters 12", "filters 1.5").replace("  layers 2\n", "  layers 2\n  layers 3\n").replace(
        "2 conv w12", "4 conv w12"
    )
    assert [c for c, _l, _c in diagnostics(text)] == ["HY003", "HY006", "HY004"]


def test_valid_files_have_no_diagnostics():
    assert diagnostics(BASE) == []
    assert diagnostics(two(head="(8, 16)", qdown="down", fuse="fuse q -> p after 1")) == []
