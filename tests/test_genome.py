"""The search genome on the AST: everything sample/mutate/crossover produce validates, the
branch prior and the uniform choices hold statistically, seeds reproduce, dedup by key."""

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hyctas_dsl as hy
from hyctas_dsl.language.errors import HyctasError
from hyctas_dsl.search.genome import crossover, dedup, mutate, normalize, sample_arch, sample_population
from hyctas_dsl.language.spaces import paper_space
from hyctas_dsl.language.validate import check_arch
from tests.conftest import ARCHS
from tests.strategies import valid_archs

SMALL_TEXT = """hyctas 1
space small {
  filters 4
  layers 6
  strides 8 16 32
  ops skip conv zconv zconv2 attn
  widths 4 8 12
  branch_prior 0.2 0.3 0.5
  heads (8) (16) (32) (8, 16) (8, 32) (8, 16, 32)
  output_strides 8 4
  memory 5 MiB batch 2 crop 64x64
}
"""
# About a third of this space's samples exceed 5 MiB, so constraint 4 (HY104) is exercised.
SMALL = hy.parse(SMALL_TEXT).spaces[0]
# Without the memory limit: constraint 4 rejects more of the wide stride-32 samples, so the
# distribution checks run on the unconstrained space (rejection = uniform on what fits).
FREE = hy.parse(SMALL_TEXT.replace("  memory 5 MiB batch 2 crop 64x64\n", "")).spaces[0]
PAPER = paper_space()
SPACES = {"small": SMALL, "paper": PAPER}

seeds = st.integers(0, 2**32 - 1)
branch_counts = st.sampled_from([1, 2, 3])


def valid(arch, space):
    return check_arch(arch, space) == []


def rng(seed):
    return np.random.default_rng(seed)


# ---------------------------------------------------------------- validity (hypothesis)


@pytest.mark.parametrize("space_name", ["small", "paper"])
@settings(max_examples=25)
@given(seed=seeds, n=branch_counts, p=st.floats(0.0, 1.0), vary=st.booleans())
def test_sample_mutate_crossover_validate(space_name, seed, n, p, vary):
    space = SPACES[space_name]
    r = rng(seed)
    a = sample_arch(space, r, n_branches=n)
    b = sample_arch(space, r, n_branches=n)
    assert valid(a, space) and valid(b, space)
    assert len(a.branches) == n
    c1, c2 = crossover(a, b, space, r)
    assert valid(c1, space) and valid(c2, space)
    for x in (a, c1, c2):
        m = mutate(x, space, r, p, vary_layers=vary, vary_filters=vary)
        assert valid(m, space), [d.message for d in check_arch(m, space)]
        assert len(m.branches) == n


@settings(max_examples=40)
@given(parent=valid_archs(SMALL), seed=seeds, p=st.floats(0.0, 1.0))
def test_operators_on_hand_written_parents(parent, seed, p):
    """Parents with arbitrary names, meta, op arguments and fusion nodes (not from the
    sampler) still give valid, normalised offspring."""
    r = rng(seed)
    m = mutate(parent, SMALL, r, p, vary_layers=True)
    assert valid(m, SMALL)
    other = sample_arch(SMALL, r, n_branches=len(parent.branches))
    c1, c2 = crossover(parent, other, SMALL, r)
    for c in (c1, c2):
        assert valid(c, SMALL)
        assert [b.name for b in c.branches] == [f"s{b.final_stride()}" for b in c.branches]
        assert c.meta == ()


def test_released_models_mutate_validly():
    for path in ("hyctas_s.hy", "hyctas_m.hy", "hyctas_l.hy"):
        arch = hy.load(ARCHS / path).archs[0]
        r = rng(0)
        for _ in range(5):
            m = mutate(arch, PAPER, r, 0.1)
            assert valid(m, PAPER) and m != arch


# ---------------------------------------------------------------- distributions


def test_branch_prior_is_respected():
    r = rng(7)
    n = 3000
    counts = Counter(len(sample_arch(FREE, r, layers=2, fusion_p=0.0).branches) for _ in range(n))
    for k, p in zip((1, 2, 3), FREE.branch_prior):
        # binomial sd <= 0.0092 at n = 3000; 0.035 is almost 4 sd
        assert abs(counts[k] / n - p) < 0.035, (k, counts)


def test_final_strides_and_down_positions_are_uniform():
    r = rng(11)
    n = 1200
    archs = [sample_arch(FREE, r, n_branches=1, fusion_p=0.0, layers=6) for _ in range(n)]
    heads = Counter(a.head.strides for a in archs)
    for h in ((8,), (16,), (32,)):
        assert abs(heads[h] / n - 1 / 3) < 0.06, heads
    single = Counter(next(iter(a.branches[0].down_positions())) for a in archs if a.head.strides == (16,))
    m = sum(single.values())
    for layer in range(1, 7):
        assert abs(single[layer] / m - 1 / 6) < 0.07, single
    pairs = Counter(tuple(sorted(a.branches[0].down_positions())) for a in archs if a.head.strides == (32,))
    assert len(pairs) == 15  # every 2-subset of 6 layers appears
    # The two-branch heads are (8, 16) and (8, 32): half each.
    two = Counter(sample_arch(FREE, r, n_branches=2, layers=6, fusion_p=0.0).head.strides for _ in range(600))
    assert set(two) == {(8, 16), (8, 32)} and abs(two[(8, 16)] / 600 - 0.5) < 0.08


def test_ops_widths_and_gates():
    r = rng(3)
    archs = [sample_arch(FREE, r, n_branches=3, layers=6, fusion_p=0.25) for _ in range(200)]
    cells = [c for a in archs for b in a.branches for c in b.cells]
    keep = Counter(c.op.name for c in cells if not c.down)
    down = Counter(c.op.name for c in cells if c.down)
    assert "skip" not in down and set(down) == {"conv", "zconv", "zconv2", "attn"}  # constraint 3
    assert min(keep.values()) / max(keep.values()) > 0.7  # uniform over the five ops
    assert set(Counter(c.width for c in cells)) == set(FREE.widths)
    gates = sum(len(a.fusions) for a in archs) / (len(archs) * 6 * 5)  # 6 ordered pairs, 5 gaps
    assert abs(gates - 0.25) < 0.04
    assert all(not c.op.args for c in cells)


def test_constraint_4_is_resampled_not_violated():
    # Every sample fits the memory limit (about a third of raw draws do not).
    r = rng(5)
    from hyctas_dsl.search.genome import _sample_once

    raw = [_sample_once(SMALL, r, 3, 6, 4, 0.5).build() for _ in range(100)]
    assert sum(1 for a in raw if [d.code for d in check_arch(a, SMALL)] == ["HY104"]) > 10
    assert all(valid(sample_arch(SMALL, r, n_branches=3), SMALL) for _ in range(50))


def test_impossible_requests_are_clear_errors():
    r = rng(0)
    tight = hy.parse(SMALL_TEXT.replace("5 MiB", "1 KiB")).spaces[0]
    with pytest.raises(HyctasError) as e:
        sample_arch(tight, r, max_tries=5)
    assert e.value.codes == ["HY104"]
    with pytest.raises(HyctasError) as e:
        sample_arch(SMALL, r, n_branches=4)
    assert e.value.codes == ["HY212"]
    with pytest.raises(HyctasError) as e:
        sample_arch(SMALL, r, n_branches=3, layers=1)  # stride 32 needs two downsampling cells
    assert e.value.codes == ["HY207"]
    with pytest.raises(HyctasError) as e:
        sample_arch(SMALL, r, filters=12)
    assert e.value.codes == ["HY213"]


# ---------------------------------------------------------------- determinism and names


def test_sampling_is_deterministic_from_the_seed():
    a = [hy.dumps(x) for x in sample_population(PAPER, rng(42), 5, n_branches=3)]
    b = [hy.dumps(x) for x in sample_population(PAPER, rng(42), 5, n_branches=3)]
    c = [hy.dumps(x) for x in sample_population(PAPER, rng(43), 5, n_branches=3)]
    assert a == b and a != c
    r1, r2 = rng(9), rng(9)
    x = hy.parse("".join(a[0])).archs[0]
    assert hy.dumps(mutate(x, PAPER, r1, 0.3)) == hy.dumps(mutate(x, PAPER, r2, 0.3))


def test_names_are_deterministic_and_round_trip():
    arch = sample_arch(PAPER, rng(1), n_branches=3, layers=8)
    assert [b.name for b in arch.branches] == ["s8", "s16", "s32"]
    assert arch.name.startswith("arch_") and len(arch.name) == 15
    assert sample_arch(PAPER, rng(1), n_branches=3, layers=8, name="mine").name == "mine"
    back = hy.parse(hy.dumps(arch)).archs[0]
    assert back == arch and valid(back, PAPER)
    released = hy.load(ARCHS / "hyctas_l.hy").archs[0]
    n = normalize(released)
    assert hy.canonical_key(n) == hy.canonical_key(released) and [b.name for b in n.branches] == ["s8", "s16", "s32"]


# ---------------------------------------------------------------- mutation


@settings(max_examples=30)
@given(seed=seeds, n=branch_counts)
def test_mutation_p0_is_identity_and_p1_changes(seed, n):
    r = rng(seed)
    a = sample_arch(SMALL, r, n_branches=n)
    assert mutate(a, SMALL, r, 0.0) is a
    # (FREE: under SMALL's memory limit a p = 1 offspring, e.g. with every fusion gate
    # flipped, may never fit, and then the parent comes back unchanged by design.)
    m = mutate(a, FREE, r, 1.0)
    assert hy.canonical_key(m) != hy.canonical_key(a)
    # p = 1 gives every cell another width and another op (a `down` moved onto a cell may
    # redraw its op once more, constraint 3, so cells that downsample are left out there)
    pairs = [(x, y) for b, c in zip(a.branches, m.branches) for x, y in zip(b.cells, c.cells)]
    assert all(x.width != y.width for x, y in pairs)
    assert all(x.op != y.op for x, y in pairs if not (x.down or y.down))


def test_mutation_rate_scales_with_p():
    r = rng(2)
    a = sample_arch(PAPER, r, n_branches=2, layers=20, filters=8)

    def changed_cells(m):
        return sum(
            1 for b, c in zip(a.branches, m.branches) for x, y in zip(b.cells, c.cells) if (x.op, x.width) != (y.op, y.width)
        )

    lo = np.mean([changed_cells(mutate(a, PAPER, r, 0.02)) for _ in range(60)])
    hi = np.mean([changed_cells(mutate(a, PAPER, r, 0.2)) for _ in range(60)])
    # 40 cells, two genes each: about 1.6 and 14 changed cells (a moved `down` adds a little)
    assert 0.5 < lo < 3.5 and 9 < hi < 20


def test_invalid_parent_is_rejected():
    a = sample_arch(SMALL, rng(0), n_branches=1, layers=6)
    bad = a.model_copy(update={"filters": 99})
    with pytest.raises(HyctasError) as e:
        mutate(bad, SMALL, rng(0))
    assert "HY213" in e.value.codes


# ---------------------------------------------------------------- crossover


@settings(max_examples=30)
@given(seed=seeds, n=branch_counts)
def test_crossover_children_inherit_from_parents(seed, n):
    # FREE: under a memory limit a child that never fits is replaced by its parent
    r = rng(seed)
    a = sample_arch(FREE, r, n_branches=n, layers=6)
    b = sample_arch(FREE, r, n_branches=n, layers=6)
    c1, c2 = crossover(a, b, FREE, r)
    for ba, bb, b1, b2 in zip(a.branches, b.branches, c1.branches, c2.branches):
        # down positions come as one block from one parent, complementary between children
        assert {b1.down_positions(), b2.down_positions()} <= {ba.down_positions(), bb.down_positions()}
        for j, (x, y, u, v) in enumerate(zip(ba.cells, bb.cells, b1.cells, b2.cells)):
            # each cell's op and width from one parent, the other child gets the other's
            # (unless a `skip` landed on a downsampling cell and was redrawn: constraint 3)
            if not (u.down or v.down):
                assert {(u.op, u.width), (v.op, v.width)} == {(x.op, x.width), (y.op, y.width)}
            assert u.width in (x.width, y.width) and v.width in (x.width, y.width)
    ga = {(f.src, f.dst, f.after) for f in a.fusions}
    gb = {(f.src, f.dst, f.after) for f in b.fusions}
    g1 = {(f.src, f.dst, f.after) for f in c1.fusions}
    g2 = {(f.src, f.dst, f.after) for f in c2.fusions}
    if a.head == b.head:  # same stride names: gates map one to one
        assert g1 | g2 == ga | gb and g1 & g2 == ga & gb


def test_crossover_needs_equal_branch_counts():
    r = rng(0)
    with pytest.raises(ValueError, match="same branch count"):
        crossover(sample_arch(SMALL, r, n_branches=1), sample_arch(SMALL, r, n_branches=2), SMALL, r)


def test_crossover_mixes_depths_validly():
    r = rng(4)
    for _ in range(20):
        a = sample_arch(PAPER, r, n_branches=3, layers=int(r.integers(2, 20)))
        b = sample_arch(PAPER, r, n_branches=3, layers=int(r.integers(2, 20)))
        c1, c2 = crossover(a, b, PAPER, r)
        assert (c1.layers, c2.layers) == (a.layers, b.layers)
        assert valid(c1, PAPER) and valid(c2, PAPER)


# ---------------------------------------------------------------- de-duplication


def test_dedup_by_canonical_key():
    r = rng(8)
    a, b = sample_population(SMALL, r, 2, n_branches=2)
    # the same network renamed, branches reordered, with meta: a duplicate
    twin = a.model_copy(
        update={
            "name": "other",
            "branches": tuple(reversed([x.model_copy(update={"name": "q" + x.name}) for x in a.branches])),
            "fusions": tuple(f.model_copy(update={"src": "q" + f.src, "dst": "q" + f.dst}) for f in a.fusions),
            "meta": (hy.MetaEntry(key="miou", value=0.5),),
        }
    )
    assert valid(twin, SMALL)
    assert dedup([a, b, twin, a]) == [a, b]
    assert dedup([twin, b], seen=[hy.canonical_key(a)]) == [b]
    pop = sample_population(SMALL, r, 30, n_branches=1, layers=1)  # 54 one-cell archs in all
    assert len({hy.canonical_key(x) for x in pop}) == len(pop)
