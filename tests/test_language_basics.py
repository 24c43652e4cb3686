"""Parse, print and validate the zoo; the error type for a few typical mistakes."""

import pytest

import hyctas_dsl as hy
from hyctas_dsl.language.errors import HyctasError
from tests.conftest import ARCHS

ZOO = sorted(ARCHS.glob("*.hy"))


@pytest.mark.parametrize("path", ZOO, ids=lambda p: p.name)
def test_zoo_is_valid_and_canonical(path):
    text = path.read_text()
    module = hy.load(path)
    assert hy.dumps(module) == text
    assert hy.parse(hy.dumps(module)) == module


def test_released_models_transcribed():
    s = hy.load(ARCHS / "hyctas_s.hy").archs[0]
    assert [c.op.name for c in s.branches[0].cells] == [
        "zconv2", "zconv", "zconv", "conv", "zconv", "attn", "conv", "zconv2", "zconv2", "zconv", "zconv2"
    ]
    assert s.branches[0].down_positions() == {2, 4}
    assert [c.width for c in s.branches[0].cells] == [8, 8, 8, 4, 8, 10, 4, 10, 4, 8, 12]
    l = hy.load(ARCHS / "hyctas_l.hy").archs[0]
    assert [b.down_positions() for b in l.branches] == [set(), {10}, {6, 12}]
    assert l.head.strides == (8, 16, 32) and l.head.output_stride == 4


def test_equality_ignores_location_and_comments():
    a = hy.parse("hyctas 1\narch x { filters 12 layers 1 head (8) branch b { 1 conv w12 } }")
    b = hy.parse("hyctas 1\n# hi\narch x {\n  filters 12\n  layers 1\n  head (8)\n  branch b {\n    1 conv w12\n  }\n}\n")
    assert a == b and hash(a) == hash(b)


def test_all_violations_reported_with_locations():
    text = (ARCHS / "hyctas_s.hy").read_text().replace("2 zconv w8 down", "2 skip w7 down")
    with pytest.raises(HyctasError) as e:
        hy.loads(text, "s.hy")
    assert e.value.codes == ["HY103", "HY202"]
    d = e.value.diagnostics[0]
    assert (d.line, d.column) == (text.splitlines().index("    2 skip w7 down") + 1, 7)
    assert "^^^^" in d.render()


def test_comments_survive_fmt():
    text = "hyctas 1\n# lead\narch x { # after brace\n filters 12 layers 1\n head (8)\n branch b { 1 conv w12 # why conv\n }\n}\n# tail\n"
    out = hy.dumps(hy.parse(text))
    for c in ("# lead", "# after brace", "# why conv", "# tail"):
        assert c in out
    assert hy.dumps(hy.parse(out)) == out


def test_canonical_key_ignores_names_order_and_meta():
    a = hy.parse(
        "hyctas 1\narch x { filters 12 layers 2 head (8, 16)\n branch p { 1 conv w12 2 conv w12 }\n"
        " branch q { 1 conv w12 2 conv w8 down }\n fuse q -> p after 1\n meta { miou 0.5 } }"
    ).archs[0]
    b = hy.parse(
        "hyctas 1\narch y { filters 12 layers 2 head (8, 16)\n branch lo { 1 conv w12 2 conv w8 down }\n"
        " branch hi { 1 conv w12 2 conv w12 }\n fuse lo -> hi after 1 }"
    ).archs[0]
    assert hy.canonical_key(a) == hy.canonical_key(b)
    c = b.model_copy(update={"fusions": ()})
    assert hy.canonical_key(c) != hy.canonical_key(b)
