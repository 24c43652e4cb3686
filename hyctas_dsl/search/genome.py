"""The search genome: sampling, mutation, crossover and de-duplication on the AST itself.

An individual of the search *is* an :class:`hyctas_dsl.language.ast.Arch` (DESIGN.md: no integer
arrays, no one-hot vectors). Every function here returns an architecture that passes
``check_arch(arch, space) == []``, including constraint 4 (memory, HY104): operators repair
what they can by construction and resample (a bounded number of times) what they cannot.
Torch-free: numpy only.

Sampling (paper section 3.4, eq. 2 and section 4.2)
  * branch count from the space's prior (0.2, 0.3, 0.5 in the paper space); everything else
    uniform:
  * the head, i.e. the set of the branches' final strides, uniformly among the space's heads
    with that many strides (and reachable in ``layers`` cells). Each branch then gets one of
    the head's strides, so final strides are distinct (HY208) and, because a branch's final
    stride fixes how many cells downsample, the down-position sets differ (constraint 2);
  * a branch ending at stride 8 * 2**k downsamples at k layers chosen uniformly among the
    C(layers, k) sets. So "uniform" means: final stride uniform (via the head), then
    positions uniform given the stride. (Drawing each cell's ``down`` independently instead
    would make stride 32 branches vanishingly rare with late downsampling.);
  * each cell's op uniform over the space's ops, except that a downsampling cell draws from
    the ops that may downsample (never ``skip``, constraint 3); width uniform; op arguments at
    their defaults;
  * fusion nodes, the paper's binary gates N_s^l: each possible gate ``src -> dst after l``
    (src != dst, 1 <= l < layers) is on independently with probability ``fusion_p``, 1/2 by
    default (a uniformly random binary gate);
  * output stride uniform over the space's; ``layers`` uniform over the depths where the head
    is reachable (<= the space's) and ``filters`` uniform over the space's, unless given.

Mutation (per gene, probability ``p`` each; a mutated categorical gene takes a *different*
value, uniform over the alternatives): every cell's op and width; every downsampling cell's
position (moved to a uniformly chosen layer of the same branch that does not downsample); every
branch's final stride (a ``down`` added or removed at a uniform position, only towards heads
the space offers); every possible fusion gate (flipped); the output stride; and, only when
asked (``vary_layers`` / ``vary_filters``), the depth and the filter multiplier.

Crossover: uniform crossover of two parents with the same branch count (the paper searches
each branch count separately), branches matched by final-stride rank (finest with finest).
Per branch the down positions come as one block from one parent (a block keeps the stride
pattern valid); per cell op and width come from either parent; each fusion gate from either
parent; the output stride from either. The second child takes the other parent's gene wherever
the first took one parent's.

Repair and names: a ``skip`` that lands on a downsampling cell is redrawn among the ops that
may downsample; a crossover child whose strides give a head the space lacks takes its stride
pattern from its first parent. A child over the memory limit is redrawn (``max_tries``); if
all tries fail the operator returns its (valid) parent unchanged. Offspring are normalised:
branches ordered by final stride and named ``s8``, ``s16``, ``s32``, fusion nodes sorted, no
meta (measured facts belong to the parent), and the name ``arch_<hash>`` from the canonical
key unless the caller names it. When no gene changes the input object itself is returned.
"""

from __future__ import annotations

import hashlib
import math
import weakref
from functools import lru_cache
from typing import Iterable, Sequence

import numpy as np

from hyctas_dsl.language.api import canonical_key
from hyctas_dsl.language.ast import Arch, Branch, Cell, Fusion, Head, OpCall, Space
from hyctas_dsl.language.errors import Diagnostic, HyctasError
from hyctas_dsl.language.op_table import OPS
from hyctas_dsl.language.validate import check_arch

__all__ = [
    "DEFAULT_FUSION_P",
    "MAX_TRIES",
    "sample_arch",
    "sample_population",
    "sample_extreme",
    "mutate",
    "crossover",
    "arch_name",
    "normalize",
    "dedup",
    "feasible_heads",
    "stride_downs",
    "check",
    "key_of",
    "training_memory_cached",
    "without_memory",
]

DEFAULT_FUSION_P = 0.5  # a binary gate drawn uniformly (section 3.4: "uniform distribution")
MAX_TRIES = 50  # redraws of one sample / offspring before giving up (memory, HY104)


# ---------------------------------------------------------------- helpers


def _fail(code: str, message: str, hint: str | None = None) -> HyctasError:
    return HyctasError([Diagnostic(code, message, None, hint)])


def stride_downs(space: Space, stride: int) -> int:
    """How many downsampling cells a branch needs to end at ``stride`` (from the stem's 8)."""
    return int(round(math.log2(stride / 8)))


def feasible_heads(space: Space, n_branches: int, layers: int) -> list[tuple[int, ...]]:
    """The space's heads with ``n_branches`` strides that ``layers`` cells can reach."""
    return [
        tuple(h)
        for h in space.heads
        if len(h) == n_branches and all(s in space.strides and stride_downs(space, s) <= layers for s in h)
    ]


def _min_layers(space: Space, n_branches: int) -> int | None:
    for layers in range(1, space.layers + 1):
        if feasible_heads(space, n_branches, layers):
            return layers
    return None


_KEYS: dict[int, tuple[weakref.ref, str]] = {}


def key_of(arch: Arch) -> str:
    """:func:`hyctas_dsl.canonical_key`, remembered per object while it lives: the search
    asks for the key of the same individual many times (dedup against the population every
    generation, caches, records)."""
    i = id(arch)
    hit = _KEYS.get(i)
    if hit is not None and hit[0]() is arch:
        return hit[1]
    k = canonical_key(arch)
    _KEYS[i] = (weakref.ref(arch, lambda _r, i=i: _KEYS.pop(i, None)), k)
    return k


def arch_name(arch: Arch) -> str:
    """The deterministic name of an offspring: ``arch_`` + 10 hex digits of its canonical key."""
    return "arch_" + hashlib.sha1(key_of(arch).encode()).hexdigest()[:10]


def _down_ops(space: Space) -> list[str]:
    return [o for o in space.ops if OPS[o].can_down]


def _pick(rng: np.random.Generator, choices: Sequence):
    return choices[int(rng.integers(len(choices)))]


def _pick_other(rng: np.random.Generator, choices: Sequence, current):
    """A uniformly chosen value of ``choices`` other than ``current`` (``current`` when it is
    the only choice)."""
    others = [c for c in choices if c != current]
    return _pick(rng, others) if others else current


@lru_cache(maxsize=64)
def without_memory(space: Space) -> Space:
    """``space`` without its memory limit: check_arch against it checks every rule but 4."""
    return space.model_copy(update={"memory": None})


_MEMORY: dict[tuple, int] = {}  # (canonical key, batch, crop) -> estimated bytes


def training_memory_cached(arch: Arch, space: Space) -> int:
    """Constraint 4's estimate (hyctas_dsl.model.cost.training_memory) at the space's batch and crop,
    memoised by canonical key: the search asks for it again for the same architecture (the
    operator's check, then the constraint value handed to pymoo)."""
    from hyctas_dsl.model.cost import training_memory

    assert space.memory is not None
    k = (key_of(arch), space.memory.batch, space.memory.crop)
    mem = _MEMORY.get(k)
    if mem is None:
        if len(_MEMORY) >= 100_000:
            _MEMORY.clear()
        mem = _MEMORY[k] = training_memory(arch, space.memory.batch, space.memory.crop)
    return mem


def check(arch: Arch, space: Space) -> list[Diagnostic]:
    """``check_arch(arch, space)`` with the memory estimate memoised (same rules, same codes)."""
    diags = check_arch(arch, without_memory(space))
    if diags or space.memory is None:
        return diags
    if training_memory_cached(arch, space) > space.memory.bytes:
        return check_arch(arch, space)  # the validator's own HY104 diagnostic
    return []


def _problem(arch: Arch, space: Space) -> None:
    """Parents must be well formed. Their memory (constraint 4) is not re-estimated: it costs
    as much as the rest of an operator, and the offspring are checked in full anyway."""
    diags = check_arch(arch, without_memory(space))
    if diags:
        raise HyctasError(diags)


# A working copy of an arch while an operator edits it: the branches' cells (AST Cell nodes)
# in mutable lists and fusion gates as (src slot, dst slot, after). Slots are the branch's
# position in final-stride order when the operator started; _build renames by final stride.
class _Draft:
    __slots__ = ("filters", "layers", "cells", "gates", "output_stride", "task")

    def __init__(self, filters: int, layers: int, cells: list[list[Cell]], gates: set, output_stride: int,
                 task: str = "semantic"):
        self.filters = filters
        self.layers = layers
        self.cells = cells
        self.gates = gates
        self.output_stride = output_stride
        self.task = task  # the space's: a panoptic space's archs are panoptic

    @classmethod
    def of(cls, arch: Arch) -> "_Draft":
        order = sorted(arch.branches, key=lambda b: b.final_stride())
        slot = {b.name: i for i, b in enumerate(order)}
        gates = {(slot[f.src], slot[f.dst], f.after) for f in arch.fusions}
        return cls(arch.filters, arch.layers, [list(b.cells) for b in order], gates, arch.head.output_stride, arch.task)

    def final_stride(self, i: int) -> int:
        return 8 * 2 ** sum(1 for c in self.cells[i] if c.down)

    def build(self, name: str | None = None) -> Arch:
        strides = [self.final_stride(i) for i in range(len(self.cells))]
        order = sorted(range(len(self.cells)), key=lambda i: strides[i])
        names = {i: f"s{strides[i]}" for i in order}
        branches = tuple(Branch(name=names[i], cells=tuple(self.cells[i])) for i in order)
        rank = {slot: r for r, slot in enumerate(order)}
        fusions = tuple(
            Fusion(src=names[s], dst=names[d], after=a)
            for s, d, a in sorted(self.gates, key=lambda g: (g[2], rank[g[0]], rank[g[1]]))
        )
        arch = Arch(
            name="x",
            filters=self.filters,
            layers=self.layers,
            branches=branches,
            fusions=fusions,
            head=Head(strides=tuple(sorted(strides)), output_stride=self.output_stride),
            task=self.task,
        )
        return arch.model_copy(update={"name": name or arch_name(arch)})


def _repair_down_op(cell: Cell, space: Space, rng: np.random.Generator) -> Cell:
    """Constraint 3: a downsampling cell may not be ``skip``; redraw its op."""
    if cell.down and not OPS[cell.op.name].can_down:
        return cell.model_copy(update={"op": OpCall(name=_pick(rng, _down_ops(space)))})
    return cell


def normalize(arch: Arch, name: str | None = None) -> Arch:
    """The canonical form operators return: branches by final stride named ``s8``/``s16``/
    ``s32``, fusion nodes sorted, no meta, name ``name`` or ``arch_<hash>``."""
    return _Draft.of(arch).build(name)


# ---------------------------------------------------------------- sampling


def _sample_once(space, rng, n_branches, layers, filters, fusion_p) -> _Draft:
    head = _pick(rng, feasible_heads(space, n_branches, layers))
    ops = list(space.ops)
    down_ops = _down_ops(space)
    widths = list(space.widths)
    cells: list[list[Cell]] = []
    for stride in head:
        k = stride_downs(space, stride)
        downs = set((rng.choice(layers, size=k, replace=False) + 1).tolist()) if k else set()
        op_idx = rng.integers(len(ops), size=layers)
        down_idx = rng.integers(len(down_ops), size=layers)
        w_idx = rng.integers(len(widths), size=layers)
        branch = []
        for layer in range(1, layers + 1):
            down = layer in downs
            op = down_ops[down_idx[layer - 1]] if down else ops[op_idx[layer - 1]]
            branch.append(Cell(op=OpCall(name=op), width=widths[w_idx[layer - 1]], down=down))
        cells.append(branch)
    gates = _all_gates(n_branches, layers)
    on = rng.random(len(gates)) < fusion_p
    return _Draft(filters, layers, cells, {g for g, o in zip(gates, on) if o}, _pick(rng, list(space.output_strides)),
                  space.task)


def _all_gates(n_branches: int, layers: int) -> list[tuple[int, int, int]]:
    return [
        (s, d, a)
        for a in range(1, layers)
        for s in range(n_branches)
        for d in range(n_branches)
        if s != d
    ]


def sample_arch(
    space: Space,
    rng: np.random.Generator,
    n_branches: int | None = None,
    layers: int | None = None,
    filters: int | None = None,
    name: str | None = None,
    *,
    fusion_p: float = DEFAULT_FUSION_P,
    max_tries: int = MAX_TRIES,
) -> Arch:
    """A uniformly random architecture of ``space`` (see the module doc for the distribution).

    ``n_branches`` None draws from the space's branch prior (eq. 2); ``layers`` None is
    uniform over the depths that can hold that many branches; ``filters`` None is uniform
    over the space's. A sample over the memory limit (constraint 4) is redrawn up to
    ``max_tries`` times; then HyctasError (HY104). Impossible requests raise HyctasError.
    """
    if n_branches is None:
        prior = np.asarray(space.branch_prior, dtype=float)
        n_branches = int(rng.choice(len(prior), p=prior / prior.sum())) + 1
    if not 1 <= n_branches <= space.max_branches:
        raise _fail("HY212", f"{n_branches} branches, but space `{space.name}` allows 1 to {space.max_branches}")
    if layers is not None and not 1 <= layers <= space.layers:
        raise _fail("HY204", f"{layers} layers, but space `{space.name}` has 1 to {space.layers}")
    if filters is not None and filters not in space.filters:
        raise _fail("HY213", f"filter multiplier {filters} is not in the space ({', '.join(map(str, space.filters))})")
    if not 0.0 <= fusion_p <= 1.0:
        raise ValueError(f"fusion_p must lie in [0, 1], not {fusion_p}")
    lo = _min_layers(space, n_branches)
    if lo is None or (layers is not None and not feasible_heads(space, n_branches, layers)):
        raise _fail(
            "HY207",
            f"space `{space.name}` has no head for {n_branches} branches"
            + (f" reachable in {layers} layers" if layers is not None else ""),
            "heads: " + " ".join("(" + ", ".join(map(str, h)) + ")" for h in space.heads),
        )
    for _ in range(max_tries):
        n_layers = layers if layers is not None else int(rng.integers(lo, space.layers + 1))
        n_filters = filters if filters is not None else _pick(rng, list(space.filters))
        arch = _sample_once(space, rng, n_branches, n_layers, n_filters, fusion_p).build(name)
        if not check(arch, space):
            return arch
    raise _fail(
        "HY104",
        f"no sample of {max_tries} with {n_branches} branches fits space `{space.name}`'s memory limit",
        "raise the space's `memory` limit, or fix fewer layers or a smaller filter multiplier",
    )


def sample_extreme(space: Space, rng: np.random.Generator, largest: bool, name: str | None = None) -> Arch:
    """The largest or the smallest subnet of the sandwich rule (BigNAS, section 3.1; Yu and
    Huang's universally slimmable networks). Ops, down positions and the head among those
    that fit stay random, so every op's weights take part; what is extreme is the size:

    * largest: the most branches the space allows, every layer, the widest width in every
      cell, every fusion gate on, the finest output stride;
    * smallest: one branch, the fewest layers that reach a one-branch head, the narrowest
      width in every cell, the coarsest output stride.

    Constraint 4 (memory) is not checked: the extremes exist to be trained, and the largest
    may be over a limit meant for searched architectures."""
    n_branches = space.max_branches if largest else 1
    layers = space.layers if largest else _min_layers(space, n_branches)
    if layers is None:
        raise _fail("HY207", f"space `{space.name}` has no head for {n_branches} branches")
    filters = max(space.filters) if largest else min(space.filters)
    draft = _sample_once(space, rng, n_branches, layers, filters, 1.0 if largest else 0.0)
    width = max(space.widths) if largest else min(space.widths)
    draft.cells = [[c.model_copy(update={"width": width}) for c in branch] for branch in draft.cells]
    draft.output_stride = min(space.output_strides) if largest else max(space.output_strides)
    return draft.build(name)


def sample_population(
    space: Space,
    rng: np.random.Generator,
    n: int,
    n_branches: int | None = None,
    layers: int | None = None,
    filters: int | None = None,
    *,
    fusion_p: float = DEFAULT_FUSION_P,
    max_tries: int = MAX_TRIES,
) -> list[Arch]:
    """``n`` samples with distinct canonical keys (fewer only if the space is that small:
    the draws stop after ``max_tries * n`` attempts)."""
    out: list[Arch] = []
    seen: set[str] = set()
    for _ in range(max_tries * n):
        if len(out) == n:
            break
        a = sample_arch(space, rng, n_branches, layers, filters, fusion_p=fusion_p, max_tries=max_tries)
        k = key_of(a)
        if k not in seen:
            seen.add(k)
            out.append(a)
    return out


# ---------------------------------------------------------------- mutation


def _mutate_once(arch: Arch, space: Space, rng: np.random.Generator, p: float, vary_layers: bool, vary_filters: bool) -> _Draft | None:
    """One mutation attempt; None when no gene changed."""
    d = _Draft.of(arch)
    changed = False
    ops, widths = list(space.ops), list(space.widths)
    down_ops = _down_ops(space)

    # Depth first (only when asked), so that the cell genes below act on the new depth.
    if vary_layers and rng.random() < p:
        lo = _min_layers(space, len(d.cells)) or 1
        need = max(stride_downs(space, d.final_stride(i)) for i in range(len(d.cells)))
        choices = [L for L in range(max(lo, need, 1), space.layers + 1)]
        new = _pick_other(rng, choices, d.layers)
        if new != d.layers:
            _set_depth(d, new, space, rng)
            changed = True
    if vary_filters and rng.random() < p:
        new = _pick_other(rng, list(space.filters), d.filters)
        changed |= new != d.filters
        d.filters = new

    for i, cells in enumerate(d.cells):
        u = rng.random((len(cells), 2))
        for j, cell in enumerate(cells):
            if u[j, 0] < p:
                allowed = down_ops if cell.down else ops
                op = _pick_other(rng, allowed, cell.op.name)
                if op != cell.op.name:
                    cell = cell.model_copy(update={"op": OpCall(name=op)})
                    changed = True
            if u[j, 1] < p:
                w = _pick_other(rng, widths, cell.width)
                if w != cell.width:
                    cell = cell.model_copy(update={"width": w})
                    changed = True
            cells[j] = cell
        # Move each downsampling cell's `down` to another layer of this branch.
        for j in [j for j, c in enumerate(cells) if c.down]:
            if rng.random() < p:
                free = [t for t, c in enumerate(cells) if not c.down]
                if free:
                    t = _pick(rng, free)
                    cells[j] = cells[j].model_copy(update={"down": False})
                    cells[t] = _repair_down_op(cells[t].model_copy(update={"down": True}), space, rng)
                    changed = True

    # Final strides: move one branch to another stride when the head stays one of the space's.
    for i in range(len(d.cells)):
        if rng.random() < p:
            strides = [d.final_stride(k) for k in range(len(d.cells))]
            options = []
            for s in space.strides:
                if s == strides[i] or stride_downs(space, s) > d.layers:
                    continue
                head = tuple(sorted(strides[:i] + [s] + strides[i + 1 :]))
                if len(set(head)) == len(head) and head in space.heads:
                    options.append(s)
            if options:
                _set_stride(d, i, _pick(rng, options), space, rng)
                changed = True

    gates = _all_gates(len(d.cells), d.layers)
    flips = rng.random(len(gates)) < p
    for g, f in zip(gates, flips):
        if f:
            d.gates ^= {g}
            changed = True

    if rng.random() < p:
        os_ = _pick_other(rng, list(space.output_strides), d.output_stride)
        changed |= os_ != d.output_stride
        d.output_stride = os_
    return d if changed else None


def _set_stride(d: _Draft, i: int, stride: int, space: Space, rng: np.random.Generator) -> None:
    """Add or remove ``down`` cells of branch ``i`` at uniform positions to reach ``stride``."""
    cells = d.cells[i]
    have = [j for j, c in enumerate(cells) if c.down]
    want = stride_downs(space, stride)
    if want < len(have):
        for j in rng.choice(have, size=len(have) - want, replace=False).tolist():
            cells[j] = cells[j].model_copy(update={"down": False})
    elif want > len(have):
        free = [j for j, c in enumerate(cells) if not c.down]
        for j in rng.choice(free, size=want - len(have), replace=False).tolist():
            cells[j] = _repair_down_op(cells[j].model_copy(update={"down": True}), space, rng)


def _set_depth(d: _Draft, layers: int, space: Space, rng: np.random.Generator) -> None:
    """Truncate or extend every branch to ``layers`` cells keeping its final stride: downs cut
    off are re-placed at uniform free positions; new cells are uniform non-downsampling cells."""
    for i, cells in enumerate(d.cells):
        if layers < len(cells):
            lost = sum(1 for c in cells[layers:] if c.down)
            del cells[layers:]
            if lost:
                free = [j for j, c in enumerate(cells) if not c.down]
                for j in rng.choice(free, size=lost, replace=False).tolist():
                    cells[j] = _repair_down_op(cells[j].model_copy(update={"down": True}), space, rng)
        else:
            for _ in range(layers - len(cells)):
                cells.append(Cell(op=OpCall(name=_pick(rng, list(space.ops))), width=_pick(rng, list(space.widths))))
    d.layers = layers
    d.gates = {g for g in d.gates if g[2] < layers}


def mutate(
    arch: Arch,
    space: Space,
    rng: np.random.Generator,
    p: float = 0.02,
    *,
    vary_layers: bool = False,
    vary_filters: bool = False,
    name: str | None = None,
    max_tries: int = MAX_TRIES,
) -> Arch:
    """Per-gene mutation of a valid ``arch`` (module doc). Returns ``arch`` itself when no gene
    changed; otherwise a valid, normalised offspring. An offspring over the memory limit is
    redrawn up to ``max_tries`` times, then ``arch`` is returned unchanged."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"mutation probability must lie in [0, 1], not {p}")
    _problem(arch, space)
    for _ in range(max_tries):
        d = _mutate_once(arch, space, rng, p, vary_layers, vary_filters)
        if d is None:
            return arch
        child = d.build(name)
        diags = check(child, space)
        if not diags:
            return child
        _expect_memory_only(diags)
    return arch


def _expect_memory_only(diags: list[Diagnostic]) -> None:
    # Every structural rule holds by construction; only constraint 4 may fail and be redrawn.
    if any(x.code != "HY104" for x in diags):
        raise RuntimeError("genome produced an invalid architecture: " + "; ".join(f"{x.code} {x.message}" for x in diags))


# ---------------------------------------------------------------- crossover


def _cross_once(a: Arch, b: Arch, space: Space, rng: np.random.Generator) -> tuple[_Draft, _Draft]:
    da, db = _Draft.of(a), _Draft.of(b)
    n = len(da.cells)
    common = min(da.layers, db.layers)
    # Child 1 has a's depth and child 2 b's; downs of the other parent fit only at equal depth.
    same_depth = da.layers == db.layers
    c1 = _Draft(da.filters, da.layers, [list(c) for c in da.cells], set(), da.output_stride, da.task)
    c2 = _Draft(db.filters, db.layers, [list(c) for c in db.cells], set(), db.output_stride, db.task)
    if rng.random() < 0.5:
        c1.filters, c2.filters = db.filters, da.filters
    if rng.random() < 0.5:
        c1.output_stride, c2.output_stride = db.output_stride, da.output_stride

    take_b_downs = rng.random(n) < 0.5 if same_depth else np.zeros(n, dtype=bool)
    for i in range(n):
        # Which parent gives child 1 its down pattern (child 2 gets the other).
        down1 = [c.down for c in (db.cells[i] if take_b_downs[i] else da.cells[i])]
        down2 = [c.down for c in (da.cells[i] if take_b_downs[i] else db.cells[i])]
        swap = rng.random(common) < 0.5  # child 1 takes b's op/width at these layers
        ca, cb = da.cells[i], db.cells[i]
        for j in range(common):
            x, y = (cb[j], ca[j]) if swap[j] else (ca[j], cb[j])
            c1.cells[i][j] = x
            c2.cells[i][j] = y
        for child, downs in ((c1, down1), (c2, down2)):
            row = child.cells[i]
            for j, dn in enumerate(downs):
                if row[j].down != dn:
                    row[j] = row[j].model_copy(update={"down": dn})
                row[j] = _repair_down_op(row[j], space, rng)

    gates = sorted(da.gates | db.gates)
    pick = rng.random(len(gates)) < 0.5  # child 1 takes b's state of this gate
    for g, from_b in zip(gates, pick):
        in1 = (g in db.gates) if from_b else (g in da.gates)
        in2 = (g in da.gates) if from_b else (g in db.gates)
        if in1 and g[2] < c1.layers:
            c1.gates.add(g)
        if in2 and g[2] < c2.layers:
            c2.gates.add(g)

    # A mix of stride patterns whose head the space lacks (possible in spaces without all
    # heads): fall back to the depth parent's pattern.
    for child, parent in ((c1, da), (c2, db)):
        head = sorted(child.final_stride(i) for i in range(n))
        if len(set(head)) != n or tuple(head) not in space.heads:
            for i in range(n):
                for j, pc in enumerate(parent.cells[i]):
                    row = child.cells[i]
                    if row[j].down != pc.down:
                        row[j] = _repair_down_op(row[j].model_copy(update={"down": pc.down}), space, rng)
    return c1, c2


def crossover(
    a: Arch,
    b: Arch,
    space: Space,
    rng: np.random.Generator,
    *,
    names: tuple[str | None, str | None] = (None, None),
    max_tries: int = MAX_TRIES,
) -> tuple[Arch, Arch]:
    """Uniform crossover of two valid parents with the same branch count (module doc).
    Returns two valid, normalised children; a child that stays over the memory limit after
    ``max_tries`` redraws is replaced by its parent (child 1 by ``a``, child 2 by ``b``)."""
    _problem(a, space)
    _problem(b, space)
    if len(a.branches) != len(b.branches):
        raise ValueError(
            f"crossover needs parents with the same branch count ({len(a.branches)} != {len(b.branches)}); "
            "the search runs one population per branch count"
        )
    out: list[Arch | None] = [None, None]
    for _ in range(max_tries):
        c1, c2 = _cross_once(a, b, space, rng)
        for k, d in enumerate((c1, c2)):
            if out[k] is not None:
                continue
            child = d.build(names[k])
            diags = check(child, space)
            if not diags:
                out[k] = child
            else:
                _expect_memory_only(diags)
        if out[0] is not None and out[1] is not None:
            break
    return (out[0] if out[0] is not None else a, out[1] if out[1] is not None else b)


# ---------------------------------------------------------------- de-duplication


def dedup(archs: Iterable[Arch], seen: Iterable[str] = ()) -> list[Arch]:
    """``archs`` without repeats by :func:`hyctas_dsl.canonical_key` (first kept, order kept),
    and without any whose key is in ``seen``."""
    keys = set(seen)
    out = []
    for a in archs:
        k = key_of(a)
        if k not in keys:
            keys.add(k)
            out.append(a)
    return out
