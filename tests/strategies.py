"""Hypothesis strategies for the hyctas AST.

- ``valid_archs(space)``: architectures that satisfy every rule of ``space``
  (``check_arch(arch, space) == []``), with runs of identical cells, op arguments, fusion
  nodes and meta of every type (strings with quotes, backslashes, newlines, tabs, unicode).
- ``valid_modules()``: whole files of valid archs, sometimes with the paper's space.
- ``any_modules()``: anything the printer can write and the parser can read back, valid or
  not (unknown ops, odd numbers, unsorted heads...), for the printer's round trip.

Comments are not part of the AST; tests that need them sprinkle them into the text.
"""

from __future__ import annotations

import math

from hypothesis import strategies as st

from hyctas_dsl.language.ast import Arch, Branch, Cell, Fusion, Head, MemoryLimit, MetaEntry, Module, OpCall, Space
from hyctas_dsl.language.op_table import OPS
from hyctas_dsl.language.spaces import paper_space
from hyctas_dsl.language.validate import check_arch, check_module

__all__ = [
    "names",
    "meta_values",
    "metas",
    "valid_archs",
    "valid_modules",
    "any_archs",
    "any_spaces",
    "any_modules",
    "comment_texts",
]

# Statement keywords of a space: a name right after `ops a b` would be read as the next
# statement, so space op lists avoid them (everywhere else the lexer is contextual and a
# keyword is a fine name: `arch filters`, `branch w8`, meta key `down`).
SPACE_KEYWORDS = frozenset(
    {"filters", "layers", "strides", "ops", "widths", "branch_prior", "heads", "output_strides", "memory"}
)
KEYWORDS = sorted(SPACE_KEYWORDS | {"hyctas", "space", "arch", "head", "output_stride", "fuse", "after",
                                    "branch", "down", "meta", "batch", "crop", "true", "false", "w8"})

names = st.one_of(
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,11}", fullmatch=True),
    st.sampled_from(KEYWORDS),
)

finite_floats = st.floats(allow_nan=False, allow_infinity=False)
# Strings exercise the printer's escapes: quotes, backslashes, newlines, tabs, CR, unicode.
meta_strings = st.one_of(
    st.text(max_size=20),
    st.lists(st.sampled_from(['"', "\\", "\n", "\t", "\r", "#", "}", "é", "中", "\U0001f600", "\\n", " ", "x"]),
             max_size=8).map("".join),
)
meta_values = st.one_of(st.booleans(), st.integers(), finite_floats, meta_strings)


@st.composite
def metas(draw) -> tuple[MetaEntry, ...]:
    keys = draw(st.lists(names, max_size=4, unique=True))
    return tuple(MetaEntry(key=k, value=draw(meta_values)) for k in keys)


def _attn_args() -> st.SearchStrategy:
    heads = st.integers(1, 64)
    ratio = st.floats(0.0625, 1.0)
    return st.one_of(
        st.just(()),
        heads.map(lambda h: (("heads", h),)),
        ratio.map(lambda r: (("ratio", r),)),
        st.tuples(heads, ratio).map(lambda hr: (("heads", hr[0]), ("ratio", hr[1]))),
    )


def _valid_ops(space: Space) -> st.SearchStrategy[OpCall]:
    plain = [OpCall(name=o) for o in space.ops if o != "attn"]
    choices = [st.sampled_from(plain)] if plain else []
    if "attn" in space.ops:
        choices.append(_attn_args().map(lambda a: OpCall(name="attn", args=a)))
    return st.one_of(choices)


@st.composite
def _valid_cells(draw, space: Space, layers: int, n_down: int) -> tuple[Cell, ...]:
    """``layers`` cells built from runs of identical cells, ``n_down`` of them downsampling."""
    ops, widths = _valid_ops(space), st.sampled_from(space.widths)
    cells: list[Cell] = []
    while len(cells) < layers:
        cell = Cell(op=draw(ops), width=draw(widths))
        cells.extend([cell] * draw(st.integers(1, 6)))
    cells = cells[:layers]
    downs = draw(st.lists(st.integers(0, layers - 1), min_size=n_down, max_size=n_down, unique=True))
    for i in downs:
        op = cells[i].op
        if op.name == "skip":  # constraint 3: a downsampling cell is never skip
            op = draw(_valid_ops(space).filter(lambda o: o.name != "skip"))
        cells[i] = Cell(op=op, width=cells[i].width, down=True)
    return tuple(cells)


@st.composite
def valid_archs(draw, space: Space | None = None, max_layers: int | None = None) -> Arch:
    """An architecture with no violation of ``space`` (the paper's by default)."""
    space = space or paper_space()
    # The head fixes the number of branches and their final strides (HY206-HY208); a
    # branch ending at stride 8 * 2**d downsamples d times (HY102 then holds by itself).
    head_strides = draw(st.sampled_from([h for h in space.heads if len(h) <= space.max_branches]))
    downs = [int(math.log2(s // 8)) for s in head_strides]
    top = min(space.layers, max_layers or space.layers)
    layers = draw(st.integers(max(1, max(downs)), top))
    branch_names = draw(st.lists(names, min_size=len(downs), max_size=len(downs), unique=True))
    branches = [
        Branch(name=n, cells=draw(_valid_cells(space, layers, d))) for n, d in zip(branch_names, downs)
    ]
    branches = draw(st.permutations(branches))
    fusions: list[Fusion] = []
    if len(branches) > 1 and layers > 1:
        triples = draw(
            st.lists(
                st.tuples(st.sampled_from(branch_names), st.sampled_from(branch_names), st.integers(1, layers - 1))
                .filter(lambda t: t[0] != t[1]),
                max_size=4,
                unique=True,
            )
        )
        fusions = [Fusion(src=s, dst=d, after=a) for s, d, a in triples]
    arch = Arch(
        name=draw(names),
        filters=draw(st.sampled_from(space.filters)),
        layers=layers,
        branches=tuple(branches),
        fusions=tuple(fusions),
        head=Head(strides=tuple(head_strides), output_stride=draw(st.sampled_from(space.output_strides))),
        meta=draw(metas()),
    )
    # Constraint 4 (memory) is the one rule not built in by construction; it rarely bites.
    return draw(st.just(arch).filter(lambda a: check_arch(a, space) == []))


@st.composite
def valid_modules(draw, max_archs: int = 3, max_layers: int | None = None) -> Module:
    """A file of valid archs with distinct names, sometimes declaring the paper's space."""
    archs = draw(st.lists(valid_archs(max_layers=max_layers), min_size=1, max_size=max_archs,
                          unique_by=lambda a: a.name))
    decls: list = list(archs)
    if draw(st.booleans()) and all(a.name != "paper" for a in archs):
        decls.insert(draw(st.integers(0, len(decls))), paper_space())
    module = Module(decls=tuple(decls))
    assert check_module(module) == []
    return module


# ----------------------------------------------------------------------------- any AST

positive = st.integers(1, 10**6)
numbers = st.one_of(st.integers(), finite_floats)


@st.composite
def _any_ops(draw) -> OpCall:
    name = draw(st.one_of(st.sampled_from(sorted(OPS)), names))
    args = draw(st.dictionaries(names, numbers, max_size=3))
    return OpCall(name=name, args=tuple(sorted(args.items())))


@st.composite
def _any_branch(draw) -> Branch:
    cells: list[Cell] = []
    for _ in range(draw(st.integers(0, 5))):
        cell = Cell(op=draw(_any_ops()), width=draw(st.integers(0, 99)), down=draw(st.booleans()))
        cells.extend([cell] * draw(st.integers(1, 5)))
    return Branch(name=draw(names), cells=tuple(cells))


@st.composite
def any_archs(draw) -> Arch:
    """Anything the parser accepts as an arch, valid or not (unknown ops, bad widths,
    branches of any length, fusion nodes naming any branch...)."""
    return Arch(
        name=draw(names),
        filters=draw(positive),
        layers=draw(positive),
        branches=tuple(draw(st.lists(_any_branch(), max_size=4))),
        fusions=tuple(
            Fusion(src=s, dst=d, after=a)
            for s, d, a in draw(st.lists(st.tuples(names, names, positive), max_size=3))
        ),
        head=Head(strides=tuple(draw(st.lists(positive, min_size=1, max_size=4))), output_stride=draw(positive)),
        meta=draw(metas()),
    )


@st.composite
def any_spaces(draw) -> Space:
    space_op = st.one_of(st.sampled_from(sorted(OPS)), names.filter(lambda n: n not in SPACE_KEYWORDS))
    memory = draw(
        st.none()
        | st.builds(
            MemoryLimit,
            bytes=st.one_of(positive, st.integers(1, 2**70), st.integers(1, 10**6).map(lambda k: k * 2**30)),
            batch=positive,
            crop=st.tuples(positive, positive),
        )
    )
    nums = st.lists(positive, min_size=1, max_size=5).map(tuple)
    return Space(
        name=draw(names),
        filters=draw(nums),
        layers=draw(positive),
        strides=draw(nums),
        ops=tuple(draw(st.lists(space_op, min_size=1, max_size=6))),
        widths=draw(nums),
        branch_prior=tuple(draw(st.lists(finite_floats, min_size=1, max_size=4))),
        heads=tuple(draw(st.lists(nums, min_size=1, max_size=4))),
        output_strides=draw(nums),
        memory=memory,
    )


def any_modules(max_decls: int = 3) -> st.SearchStrategy[Module]:
    return st.lists(st.one_of(any_archs(), any_spaces()), max_size=max_decls).map(
        lambda ds: Module(decls=tuple(ds))
    )


# A comment's text after `#`: anything but a line break.
comment_texts = st.text(
    alphabet=st.characters(blacklist_characters="\n", blacklist_categories=("Cs",)), max_size=30
)
