"""Validated AST: every rule of the model and the paper's four search constraints.

Each rule has a stable id (docs/language.md lists them with a failing example). Every
violation is reported, not just the first. Rules:

  HY101  constraint 1: an arch has at least one branch
  HY102  constraint 2: no two branches downsample at the same set of layers
  HY103  constraint 3: a downsampling cell is never ``skip``
  HY104  constraint 4: estimated training memory within the space's limit
  HY201  unknown op, or an op the space does not search
  HY202  width not in the space
  HY203  stride leaves the space's strides (too many ``down`` cells)
  HY204  more layers than the space allows
  HY205  a branch's cell count differs from the arch's ``layers``
  HY206  the head does not match the branches' final strides
  HY207  the head (or output stride) is not one the space offers
  HY208  two branches end at the same stride
  HY209  fusion node names an unknown branch, or fuses a branch into itself
  HY210  fusion node after a layer that does not exist (1 .. layers-1)
  HY211  duplicate names (declarations, branches) or a duplicate fusion node
  HY212  more branches than the space's branch prior allows
  HY213  filter multiplier not in the space
  HY214  bad op argument (unknown name, wrong type, out of range)
  HY215  unknown task (an arch is ``semantic``, the default, or ``panoptic``)
  HY301  a space that is not well formed (strides, ops, widths, prior, heads)
"""

from __future__ import annotations

import difflib
import math
from typing import Iterable

from hyctas_dsl.language.ast import Arch, Module, Space, Span
from hyctas_dsl.language.errors import Diagnostic
from hyctas_dsl.language.op_table import OPS

__all__ = ["check_arch", "check_space", "check_module", "RULES", "TASKS"]

# What a network predicts: semantic labels, or also Panoptic-DeepLab's instance centres and
# offsets (paper section 4.3).
TASKS = ("semantic", "panoptic")

RULES = {
    "HY001": "syntax error",
    "HY002": "unsupported language version",
    "HY003": "bad literal (whole number, unit, positive value)",
    "HY004": "layer numbering",
    "HY005": "file is not UTF-8 text",
    "HY006": "statement given twice",
    "HY007": "required statement missing",
    "HY101": "constraint 1: at least one branch",
    "HY102": "constraint 2: distinct downsampling positions",
    "HY103": "constraint 3: no skip at a downsampling cell",
    "HY104": "constraint 4: training memory within the limit",
    "HY201": "op unknown or not in the space",
    "HY202": "width not in the space",
    "HY203": "stride outside the space",
    "HY204": "too many layers",
    "HY205": "branch length differs from layers",
    "HY206": "head does not match final strides",
    "HY207": "head or output stride not in the space",
    "HY208": "two branches end at one stride",
    "HY209": "fusion node names a wrong branch",
    "HY210": "fusion node at a wrong layer",
    "HY211": "duplicate name or fusion node",
    "HY212": "too many branches",
    "HY213": "filter multiplier not in the space",
    "HY214": "bad op argument",
    "HY215": "unknown task",
    "HY301": "malformed space",
    "HY401": "arch has more layers than the supernet",
    "HY402": "op not in the supernet",
    "HY403": "width not in the supernet, or channels beyond its maximum",
    "HY404": "stride not in the supernet",
    "HY405": "head or output stride not in the supernet",
    "HY406": "filter multiplier not in the supernet",
    "HY407": "attention bottleneck wider than the supernet's",
    "HY408": "class count does not match",
    "HY409": "not a readable hyctas checkpoint",
    "HY410": "panoptic arch on a semantic supernet",
    "HY601": "not a readable search checkpoint",
    "HY602": "search checkpoint made with other settings",
}


def _suggest(word: str, choices: Iterable[str]) -> str | None:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f"did you mean `{close[0]}`?" if close else None


def _fmt_set(xs: Iterable) -> str:
    return ", ".join(str(x) for x in xs)


def check_space(space: Space) -> list[Diagnostic]:
    out: list[Diagnostic] = []

    def err(msg: str, part: str, hint: str | None = None) -> None:
        out.append(Diagnostic("HY301", msg, space.where(part), hint))

    if not space.strides or space.strides[0] != 8 or any(
        b != a * 2 for a, b in zip(space.strides, space.strides[1:])
    ):
        err(f"strides must start at 8 and double (8 16 32), not {_fmt_set(space.strides)}", "strides")
    for op in space.ops:
        if op not in OPS:
            err(f"unknown op `{op}` in space `{space.name}`", "ops", _suggest(op, OPS) or f"ops are {_fmt_set(OPS)}")
    if len(set(space.ops)) != len(space.ops):
        err("an op is listed twice", "ops")
    for w in space.widths:
        if not 1 <= w <= 12:
            err(f"width {w} is not between 1 and 12 twelfths", "widths")
    if not 1 <= len(space.branch_prior) <= 3:
        err("the branch prior gives the probability of 1, 2 or 3 branches: 1 to 3 numbers", "branch_prior")
    if any(p < 0 for p in space.branch_prior) or not math.isclose(sum(space.branch_prior), 1.0, abs_tol=1e-6):
        err(
            f"branch prior must be non-negative and sum to 1, not {_fmt_set(space.branch_prior)}",
            "branch_prior",
            "the paper uses 0.2 0.3 0.5 (eq. 2)",
        )
    for h in space.heads:
        if not h or list(h) != sorted(set(h)) or any(s not in space.strides for s in h):
            err(f"head ({_fmt_set(h)}) must list distinct strides of the space in increasing order", "heads")
    for os_ in space.output_strides:
        if os_ not in (4, 8):
            err(f"output stride {os_} is not 4 or 8", "output_strides")
    if space.task not in TASKS:
        err(f"unknown task `{space.task}`", "task", f"tasks are {_fmt_set(TASKS)}")
    return out


def check_arch(arch: Arch, space: Space) -> list[Diagnostic]:
    """Every violation of ``arch`` against ``space``."""
    out: list[Diagnostic] = []

    def err(code: str, msg: str, span: Span | None, hint: str | None = None) -> None:
        out.append(Diagnostic(code, msg, span, hint))

    if arch.filters not in space.filters:
        err("HY213", f"filter multiplier {arch.filters} is not in the space ({_fmt_set(space.filters)})", arch.where("filters"))
    if arch.layers > space.layers:
        err("HY204", f"{arch.layers} layers, but space `{space.name}` has at most {space.layers}", arch.where("layers"))

    # Constraint 1 (section 3.4): the number of paths is greater than 0.
    if not arch.branches:
        err("HY101", f"arch `{arch.name}` has no branch", arch.where("name"), "constraint 1: add at least one `branch`")
    if len(arch.branches) > space.max_branches:
        err(
            "HY212",
            f"{len(arch.branches)} branches, but space `{space.name}` allows at most {space.max_branches}",
            arch.branches[space.max_branches].where("name"),
        )

    seen: dict[str, Span | None] = {}
    for b in arch.branches:
        if b.name in seen:
            err("HY211", f"branch name `{b.name}` is used twice", b.where("name"), "give each branch its own name")
        seen[b.name] = b.span

    max_stride = max(space.strides) if space.strides else 32
    finals: dict[int, str] = {}
    for b in arch.branches:
        if len(b.cells) != arch.layers:
            err(
                "HY205",
                f"branch `{b.name}` has {len(b.cells)} cells, but the arch has {arch.layers} layers",
                b.where("name"),
                "every branch is a chain of exactly `layers` cells",
            )
        stride = 8
        for i, cell in enumerate(b.cells, start=1):
            if cell.op.name not in OPS:
                err("HY201", f"unknown op `{cell.op.name}`", cell.where("op"), _suggest(cell.op.name, OPS) or f"ops are {_fmt_set(OPS)}")
            elif cell.op.name not in space.ops:
                err("HY201", f"op `{cell.op.name}` is not searched in space `{space.name}`", cell.where("op"), f"the space offers {_fmt_set(space.ops)}")
            else:
                out.extend(_check_args(cell))
            if cell.width not in space.widths:
                close = min(space.widths, key=lambda w: abs(w - cell.width)) if space.widths else None
                err(
                    "HY202",
                    f"width w{cell.width} is not in the space ({_fmt_set('w' + str(w) for w in space.widths)})",
                    cell.where("width"),
                    f"did you mean `w{close}`?" if close is not None else None,
                )
            if cell.down:
                # Constraint 3 (section 3.4): no skip connection at a downsampling position.
                if cell.op.name == "skip":
                    err("HY103", f"branch `{b.name}` layer {i}: a downsampling cell cannot be `skip`", cell.where("op"), "constraint 3: use `conv` or another op here, or drop `down`")
                stride *= 2
                if stride > max_stride:
                    err("HY203", f"branch `{b.name}` layer {i} downsamples to stride {stride}, beyond the space's largest stride {max_stride}", cell.where("down"), "remove this `down`")
        if stride in finals:
            err("HY208", f"branches `{finals[stride]}` and `{b.name}` both end at stride {stride}", b.where("name"), "each branch feeds the head at its own stride")
        else:
            finals[stride] = b.name

    # Constraint 2: in a multi-branch sub-network the down-sampling locations differ.
    downs: dict[frozenset, str] = {}
    for b in arch.branches:
        pos = b.down_positions()
        if pos in downs:
            where = "no layer" if not pos else ("layer " if len(pos) == 1 else "layers ") + _fmt_set(sorted(pos))
            err("HY102", f"branches `{downs[pos]}` and `{b.name}` both downsample at {where}", b.where("name"), "constraint 2: branches must differ in where they downsample")
        else:
            downs[pos] = b.name

    head = arch.head
    expected = tuple(sorted(finals))
    if arch.branches and tuple(head.strides) != expected:
        err("HY206", f"head ({_fmt_set(head.strides)}) does not match the branches' final strides ({_fmt_set(expected)})", head.where("strides"), f"write `head ({_fmt_set(expected)})`")
    elif tuple(head.strides) not in space.heads:
        err("HY207", f"head ({_fmt_set(head.strides)}) is not one of the space's heads", head.where("strides"), "heads: " + " ".join("(" + _fmt_set(h) + ")" for h in space.heads))
    if head.output_stride not in space.output_strides:
        err("HY207", f"output stride {head.output_stride} is not offered by the space ({_fmt_set(space.output_strides)})", head.where("output_stride") or head.span)

    if arch.task not in TASKS:
        err("HY215", f"unknown task `{arch.task}`", arch.where("task"), f"tasks are {_fmt_set(TASKS)}")

    names = {b.name for b in arch.branches}
    fusion_seen: set[tuple] = set()
    for f in arch.fusions:
        for part in ("src", "dst"):
            name = getattr(f, part)
            if name not in names:
                err("HY209", f"fusion node names unknown branch `{name}`", f.where(part), _suggest(name, names) or f"branches are {_fmt_set(sorted(names))}")
        if f.src == f.dst:
            err("HY209", f"fusion node fuses branch `{f.src}` into itself", f.where("dst"), "a fusion node joins two different branches")
        if not 1 <= f.after <= arch.layers - 1:
            err("HY210", f"fusion node after layer {f.after}, but it must sit between layers (1 .. {arch.layers - 1})", f.where("after"))
        key = (f.src, f.dst, f.after)
        if key in fusion_seen:
            err("HY211", f"fusion node `{f.src} -> {f.dst} after {f.after}` is given twice", f.span)
        fusion_seen.add(key)

    # Constraint 4: memory of a training step within the hardware limit. Only meaningful
    # (and only computable) when the structure is sound.
    if not out and space.memory is not None:
        from hyctas_dsl.model.cost import training_memory

        mem = training_memory(arch, space.memory.batch, space.memory.crop)
        if mem > space.memory.bytes:
            err(
                "HY104",
                f"estimated training memory {_gib(mem)} GiB exceeds the space's limit {_gib(space.memory.bytes)} GiB "
                f"(batch {space.memory.batch}, crop {space.memory.crop[0]}x{space.memory.crop[1]})",
                arch.where("name"),
                "constraint 4: use fewer or narrower cells, fewer high-resolution attention cells, or fewer branches",
            )
    return out


def _gib(n: int) -> str:
    """Bytes as GiB for a message; a batch of 10**400 gives an integer no float can hold."""
    try:
        return f"{n / 2**30:.1f}"
    except OverflowError:
        return f"about 10^{len(str(n >> 30)) - 1}"


def _check_args(cell) -> list[Diagnostic]:
    out = []
    spec = OPS[cell.op.name]
    for key, value in cell.op.args:
        if key not in spec.args:
            allowed = _fmt_set(spec.args) if spec.args else "none"
            out.append(Diagnostic("HY214", f"op `{cell.op.name}` has no argument `{key}`", cell.where("op"), f"its arguments: {allowed}"))
            continue
        a = spec.args[key]
        if a.kind is int and not isinstance(value, int):
            out.append(Diagnostic("HY214", f"`{key}` of `{cell.op.name}` must be a whole number, not {value}", cell.where("op")))
        elif not a.low <= value <= a.high:
            out.append(Diagnostic("HY214", f"`{key}` of `{cell.op.name}` must lie in [{a.low:g}, {a.high:g}], not {value}", cell.where("op")))
    return out


def check_module(module: Module, space: Space | None = None) -> list[Diagnostic]:
    """All problems of a module. Archs are checked against ``space`` when given, else the
    file's only space when it declares exactly one, else the paper's space."""
    out: list[Diagnostic] = []
    names: dict[str, object] = {}
    for d in module.decls:
        if d.name in names:
            out.append(Diagnostic("HY211", f"`{d.name}` is declared twice in this file", d.where("name"), "rename one of them"))
        names[d.name] = d
    for s in module.spaces:
        out.extend(check_space(s))
    if space is None:
        if len(module.spaces) == 1:
            space = module.spaces[0]
        elif module.archs:
            from hyctas_dsl.language.spaces import paper_space

            space = paper_space()
    for a in module.archs:
        out.extend(check_arch(a, space))
    # Report in source order, as a reader meets the problems.
    return sorted(out, key=lambda d: (d.span.line, d.span.column) if d.span else (0, 0))
