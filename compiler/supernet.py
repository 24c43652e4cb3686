"""The weight-sharing supernet and its subnet views (DESIGN.md "Supernet and weight sharing").

``Supernet(space)`` holds every op at its maximum width (filters = max(space.filters), each
cell at round(s * F_max * 12 / 12) channels) at every reachable (layer, input stride,
keep|down) position, every fusion projection keyed by (layer, source stride, target stride),
one aggregation head per theta, the stride-4 merge and classifier that every theta's head
shares at both output strides (``shared_classifier``; one per theta otherwise) and the stem.

``supernet.subnet(arch)`` is a view (paper Table 1: "Memory Cost: One subnet"): it runs the
arch's own network definition (``hyctas_dsl.compiler.lower``) as a weightless skeleton whose
every parameter and BatchNorm buffer is a slice of the supernet's tensor, as slimmable
networks do (output channels first, then input channels: ``weight[:c_out, :c_in]``).
Slices are views, so gradients flow into the supernet's parameters and running-statistic
updates land in its buffers. Only the chosen ops run; shared prefixes run once.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterable, Iterator

import torch
from torch import Tensor, nn

from hyctas_dsl.language.ast import Arch, Space
from hyctas_dsl.language.errors import Diagnostic, HyctasError
from hyctas_dsl.model.graph import channels
from hyctas_dsl.language.op_table import attn_bottleneck, resolved_args
from hyctas_dsl.language.validate import check_space

from hyctas_dsl.compiler import ops as O
from hyctas_dsl.compiler.lower import Plan, cell_key, fusion_key, head_key, lower

__all__ = ["Supernet", "SubnetView", "check_fit", "slice_to", "slice_groups"]


def slice_groups(cls: str, local: str) -> tuple[int, int] | None:
    """Tensors whose sliced dimension is a concatenation of equal groups: the attention's
    fused q/k/v projection (3 groups of d output channels) and the head's 3x3 fuse convs
    (input = [upsampled C_s, projected C_s]). Each group is sliced to its prefix."""
    if cls == "Attn" and local == "qkv.weight":
        return (0, 3)
    if cls in ("Head", "PanopticHead") and (local.startswith("fuse.") or local.startswith("fuse4.")) and local.endswith("conv.weight"):
        return (1, 2)
    return None


def slice_to(t: Tensor, shape: torch.Size | tuple[int, ...], groups: tuple[int, int] | None = None) -> Tensor:
    """The slimmable slice of supernet tensor ``t`` with ``shape``: the prefix of every
    dimension, or of every group along ``groups = (dim, n)``. A differentiable view (or a
    concatenation of views)."""
    if tuple(t.shape) == tuple(shape):
        return t
    if len(shape) != t.dim() or any(a > b for a, b in zip(shape, t.shape)):
        raise ValueError(f"cannot slice a {tuple(t.shape)} tensor to {tuple(shape)}")
    if groups is None:
        return t[tuple(slice(0, n) for n in shape)]
    dim, n = groups
    full, want = t.shape[dim] // n, shape[dim] // n
    parts = [t.narrow(dim, i * full, want) for i in range(n)]
    t = torch.cat(parts, dim)
    return t[tuple(slice(0, n) for n in shape)]


def _fmt(xs) -> str:
    return ", ".join(str(x) for x in xs)


def check_structure(arch: Arch) -> None:
    """Raise HyctasError when the arch is not structurally sound (any space): branch lengths,
    strides that only double up to 32, head vs final strides, fusion nodes, op arguments."""
    from hyctas_dsl.language.op_table import OPS
    from hyctas_dsl.language.validate import check_arch

    heads = tuple(
        h for r in (1, 2, 3) for h in itertools.combinations((8, 16, 32), r)
    )
    anyspace = Space(
        name="any",
        filters=(arch.filters,),
        layers=max(arch.layers, 1),
        strides=(8, 16, 32),
        ops=tuple(OPS),
        widths=tuple(range(1, 13)),
        branch_prior=(0.2, 0.3, 0.5),
        heads=heads,
        output_strides=(8, 4),
    )
    diags = [d for d in check_arch(arch, anyspace) if d.code != "HY104"]
    if arch.filters < 1:
        diags.append(Diagnostic("HY213", f"filter multiplier {arch.filters} must be positive", arch.where("filters")))
    if diags:
        raise HyctasError(diags)


# after theta's own aggregation; a panoptic head's centre and offset branches are shared too
_CLASSIFIER = ("proj4", "fuse4", "cls", "out", "center", "offset")


def _head_view(own: O.Head, shared: nn.ModuleDict, output_stride: int) -> O.Head:
    """A theta's head at one output stride as one module (what subnet views and exports
    slice): its own aggregation (``proj``, ``fuse``) and the supernet's shared classifier
    (with the stride-4 merge at output stride 4). Not registered in the supernet, so every tensor has one name in its
    state_dict."""
    cls = type(own)
    head = cls.__new__(cls)
    nn.Module.__init__(head)
    head.proj, head.fuse, head.up8 = own.proj, own.fuse, own.up8
    for k in _CLASSIFIER:
        if k in ("center", "offset") and not isinstance(own, O.PanopticHead):
            continue
        merge4 = k in ("proj4", "fuse4")  # only output stride 4 merges the stem's stride-4 feature
        setattr(head, k, shared[k] if k in shared and (output_stride == 4 or not merge4) else None)
    if isinstance(own, O.PanopticHead):
        head.scale = float(output_stride)  # offsets predicted in output-stride pixels
    return head


class Supernet(nn.Module):
    """Every op of ``space`` at maximum width at every reachable position (module doc).

    ``forward(x)`` runs the whole supernet with every op at every position (the sum of all
    ops' outputs per stride stream, every fusion projection, every head: Table 1's "Total
    supernet"); training samples subnets with :meth:`subnet` instead.
    """

    def __init__(self, space: Space, classes: int = 19, attn_heads: int = 4, attn_ratio: float = 0.5,
                 shared_classifier: bool = True):
        super().__init__()
        diags = check_space(space)
        if diags:
            raise HyctasError(diags)
        if classes < 1:
            raise HyctasError([Diagnostic("HY408", f"class count must be positive, not {classes}")])
        self.space = space
        self.classes = int(classes)
        self.attn_heads = int(attn_heads)
        self.attn_ratio = float(attn_ratio)
        F = self.filters = space.max_filters
        strides = tuple(space.strides)
        self.stem = O.Stem(F)
        self.cells = nn.ModuleDict()
        self.fusions = nn.ModuleDict()
        self.heads = nn.ModuleDict()
        for layer in range(1, space.layers + 1):
            # Stride 8 * 2^k is reachable at layer l's input after k downsampling cells.
            for k, s in enumerate(strides):
                if k > layer - 1:
                    break
                for down in (False, True):
                    s_out = s * 2 if down else s
                    if s_out not in strides:
                        continue
                    c_in, c_out = channels(s, F, 12), channels(s_out, F, 12)
                    for op in space.ops:
                        if op == "skip":
                            if not down:
                                self.cells[cell_key(layer, s, down, op)] = O.Skip(c_in, c_out, proj=True)
                        elif op == "attn":
                            d = attn_bottleneck(c_out, self.attn_heads, self.attn_ratio)
                            self.cells[cell_key(layer, s, down, op)] = O.Attn(c_in, c_out, down, self.attn_heads, d)
                        else:
                            self.cells[cell_key(layer, s, down, op)] = O.CELL_OPS[op](c_in, c_out, down)
            if layer < space.layers:
                out_strides = [s for k, s in enumerate(strides) if k <= layer]
                for s_in in out_strides:
                    for s_out in out_strides:
                        self.fusions[fusion_key(layer, s_in, s_out)] = O.Fusion(
                            channels(s_in, F, 12), channels(s_out, F, 12), s_in != s_out
                        )
        head_cls = O.PanopticHead if space.task == "panoptic" else O.Head
        for theta in space.heads:
            self.heads[head_key(tuple(theta))] = head_cls(
                [channels(s, F, 12) for s in theta], 8 * F, self.classes, theta[0] > 8, 4 * F if 4 in space.output_strides else 0
            )
        # What every theta's head does after its own aggregation (the stride-4 merge and the
        # classifier) has the same shapes for all thetas and both output strides. Shared,
        # every step trains it, whichever head the sampled subnet has; one per theta, a
        # one-branch head gets a few percent of the steps and its subnets score the
        # background floor (measured in docs/search_quality.md, with the alternative of one
        # classifier per output stride, which ranked subnets worse).
        self.shared_classifier = bool(shared_classifier)
        self.__dict__["_head_views"] = {}
        if self.shared_classifier:
            c4 = 4 * F if 4 in space.output_strides else 0
            donor = head_cls([8 * F], 8 * F, self.classes, False, c4)
            self.classifier = nn.ModuleDict({k: getattr(donor, k) for k in _CLASSIFIER if getattr(donor, k, None) is not None})
            for key, head in self.heads.items():
                for k in _CLASSIFIER:
                    if k in head._modules:
                        del head._modules[k]
                for os in space.output_strides:
                    self._head_views[f"{key}@{os}"] = _head_view(head, self.classifier, os)

    # -- views -------------------------------------------------------------------------
    def module_for(self, kind: str, key: str) -> nn.Module:
        if kind == "stem":
            return self.stem
        if kind == "head":
            return self._head_views[key] if self.shared_classifier else self.heads[key.partition("@")[0]]
        return {"cell": self.cells, "fusion": self.fusions, "head": self.heads}[kind][key]

    def check(self, arch: Arch, classes: int | None = None) -> None:
        """Raise HyctasError (HY4xx) naming everything of ``arch`` this supernet lacks."""
        check_structure(arch)
        diags = check_fit(arch, self, classes)
        if diags:
            raise HyctasError(diags)

    def subnet(self, arch: Arch) -> "SubnetView":
        """A view of ``arch`` on this supernet's weights (checked before anything is built)."""
        self.check(arch)
        return SubnetView(self, arch)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[2], x.shape[3]
        x8, x4 = self.stem(O.pad32(x))
        streams = {8: x8}
        space = self.space
        for layer in range(1, space.layers + 1):
            new: dict[int, Tensor] = {}
            for s, t in streams.items():
                for down in (False, True):
                    for op in space.ops:
                        key = cell_key(layer, s, down, op)
                        if key in self.cells:
                            y = self.cells[key](t)
                            so = s * 2 if down else s
                            new[so] = new[so] + y if so in new else y
            if layer < space.layers:
                fused = dict(new)
                for s_in, s_out in itertools.product(list(new), list(new)):
                    fused[s_out] = fused[s_out] + self.fusions[fusion_key(layer, s_in, s_out)](new[s_in], new[s_out])
                new = fused
            streams = new
        outs: list[Tensor] = []
        for theta in space.heads:
            if all(s in streams for s in theta):
                # every head module once: per output stride when shared, per theta otherwise
                for os in space.output_strides if self.shared_classifier else (None,):
                    key = head_key(tuple(theta), os) if os else head_key(tuple(theta))
                    y = self.module_for("head", key)([streams[s] for s in theta], x4)
                    ys = list(y) if isinstance(y, tuple) else [y]  # panoptic: (logits, center, offset)
                    outs = ys if not outs else [a + b for a, b in zip(outs, ys)]
        assert outs
        cropped = [t[:, :, :h, :w] for t in outs]
        return tuple(cropped) if len(cropped) > 1 else cropped[0]

    def extra_repr(self) -> str:
        return f"space={self.space.name}, filters={self.filters}, layers={self.space.layers}, classes={self.classes}"


def check_fit(arch: Arch, supernet: Supernet, classes: int | None = None) -> list[Diagnostic]:
    """Everything in a structurally sound ``arch`` that ``supernet`` cannot provide (HY4xx)."""
    space = supernet.space
    out: list[Diagnostic] = []
    if classes is not None and classes != supernet.classes:
        out.append(Diagnostic("HY408", f"{classes} classes asked for, but the supernet was built for {supernet.classes}",
                              None, "use the class count of the supernet's data set, or train a new supernet"))
    if arch.filters not in space.filters:
        out.append(Diagnostic("HY406", f"filters {arch.filters}: the supernet offers filter multipliers {_fmt(space.filters)}",
                              arch.where("filters")))
    if arch.layers > space.layers:
        out.append(Diagnostic("HY401", f"{arch.layers} layers, but the supernet has {space.layers}", arch.where("layers"),
                              f"use at most {space.layers} layers, or a supernet of a deeper space"))
    max_s = max(space.strides)
    for b in arch.branches:
        s = 8
        for i, cell in enumerate(b.cells, start=1):
            s_out = s * 2 if cell.down else s
            where = f"branch `{b.name}` layer {i}"
            if cell.op.name not in space.ops:
                out.append(Diagnostic("HY402", f"{where}: op `{cell.op.name}` is not in the supernet (ops {_fmt(space.ops)})",
                                      cell.where("op")))
            if cell.width not in space.widths:
                out.append(Diagnostic("HY403", f"{where}: width w{cell.width} is not in the supernet (widths {_fmt('w' + str(w) for w in space.widths)})",
                                      cell.where("width")))
            c_out = channels(s_out, arch.filters, cell.width)
            if c_out > channels(s_out, supernet.filters, 12):
                out.append(Diagnostic("HY403", f"{where}: {c_out} channels at stride {s_out}, beyond the supernet's {channels(s_out, supernet.filters, 12)}",
                                      cell.where("width")))
            if s_out not in space.strides or s_out > max_s:
                out.append(Diagnostic("HY404", f"{where}: stride {s_out} is not in the supernet (strides {_fmt(space.strides)})",
                                      cell.where("down")))
            elif i <= space.layers and cell.op.name in space.ops and cell_key(i, s, cell.down, cell.op.name) not in supernet.cells:
                out.append(Diagnostic("HY402", f"{where}: the supernet has no `{cell.op.name}` {'down' if cell.down else 'keep'} cell at stride {s}",
                                      cell.where("op")))
            if cell.op.name == "attn" and cell.op.name in space.ops and c_out <= channels(s_out, supernet.filters, 12):
                a = resolved_args("attn", tuple(cell.op.args))
                d = attn_bottleneck(c_out, int(a["heads"]), float(a["ratio"]))
                d_max = attn_bottleneck(channels(s_out, supernet.filters, 12), supernet.attn_heads, supernet.attn_ratio)
                if d > d_max:
                    out.append(Diagnostic("HY407", f"{where}: attention width {d} exceeds the supernet's {d_max} at stride {s_out}",
                                          cell.where("op"), f"use a smaller `ratio` (the supernet's is {supernet.attn_ratio:g})"))
            s = s_out
    if tuple(arch.head.strides) not in {tuple(h) for h in space.heads}:
        out.append(Diagnostic("HY405", f"head ({_fmt(arch.head.strides)}) is not one of the supernet's heads",
                              arch.head.where("strides"), "heads: " + " ".join("(" + _fmt(h) + ")" for h in space.heads)))
    if arch.task == "panoptic" and space.task != "panoptic":
        out.append(Diagnostic("HY410", "a panoptic arch needs a supernet with the panoptic branches, "
                              f"but space `{space.name}` is semantic", arch.where("task"),
                              "add `task panoptic` to the space and train its supernet"))
    if arch.head.output_stride not in space.output_strides:
        out.append(Diagnostic("HY405", f"output stride {arch.head.output_stride} is not offered by the supernet ({_fmt(space.output_strides)})",
                              arch.head.where("output_stride") or arch.head.span))
    return out


class _Slot:
    """One parameter or buffer of a view's skeleton and the supernet tensor it slices."""

    __slots__ = ("name", "skel", "owner", "leaf", "shape", "groups", "is_param", "index", "store", "base", "version", "cached")

    def __init__(self, name, skel, owner, leaf, shape, groups, is_param):
        self.name, self.skel, self.owner, self.leaf = name, skel, owner, leaf
        self.shape, self.groups, self.is_param = shape, groups, is_param
        self.index = tuple(slice(0, n) for n in shape)
        # the owner's own dict of parameters or buffers: a plain look-up, and it sees
        # tensors replaced by .to(), load_state_dict(assign=True) and the like
        self.store = owner._parameters if leaf in owner._parameters else owner._buffers
        self.base = self.version = self.cached = None

    def cut(self, t: Tensor) -> Tensor:
        if self.groups is None:
            return t if t.shape == self.shape else t[self.index]
        return slice_to(t, self.shape, self.groups)


class SubnetView(nn.Module):
    """One architecture on the supernet's weights. ``parameters()`` are the supernet's own
    (the modules it uses, registered under ``ops``); ``graph`` is the computation DAG;
    ``plan`` maps each DAG node to its supernet module."""

    def __init__(self, supernet: Supernet, arch: Arch):
        super().__init__()
        from hyctas_dsl.compiler.build import view_skeleton

        plan = lower(arch, supernet.classes)
        self.arch = arch
        self.__dict__["supernet_ref"] = supernet  # not a submodule: its weights are registered under ``ops``
        self.plan: Plan = plan
        self.graph = plan.graph
        self.classes = supernet.classes
        owners = {n.attr: supernet.module_for(n.kind, n.key) for n in plan.nodes}
        self.ops = nn.ModuleDict(owners)
        # The skeleton (the arch's generated network without tensors) is not registered: its
        # tensors are not the view's parameters. Each of its parameter and buffer slots is,
        # at every forward, bound in its module's __dict__ to the slice of the supernet
        # tensor at the same place in the node's supernet module: plain attribute look-ups,
        # no per-call re-parametrisation (torch.func.functional_call costs ~5 ms a call).
        net, tensors = view_skeleton(plan)
        self.__dict__["net"] = net
        cls = {n.attr: n.cls for n in plan.nodes}
        self._slots: list[_Slot] = []
        for attr, skel, t in tensors:
            owner = owners[attr]
            for part in t.path:
                owner = owner._modules[part]
            self._slots.append(_Slot(f"{attr}.{t.name}", skel, owner, t.leaf, t.shape, slice_groups(cls[attr], t.name), t.is_param))

    def _bind(self) -> None:
        # Without autograd (evaluation, search) a slice is reused while its supernet tensor is
        # the same object at the same version (in-place updates bump the version).
        cache = not torch.is_grad_enabled()
        for slot in self._slots:
            base = slot.store[slot.leaf]
            if cache and slot.base is base and slot.version == base._version and slot.cached is not None:
                continue  # still bound to the skeleton
            else:
                t = slot.cut(base)
                if cache:
                    if slot.is_param and not t.is_contiguous():
                        # a contiguous copy once, instead of one inside every conv call;
                        # buffers stay views so that BN statistics land in the supernet
                        t = t.contiguous()
                    slot.base, slot.version, slot.cached = base, base._version, t
                else:
                    slot.cached = None
            slot.skel.__dict__[slot.leaf] = t

    def sliced(self) -> dict[str, Tensor]:
        """Every tensor of the skeleton, as a slice of the supernet's."""
        return {slot.name: slot.cut(getattr(slot.owner, slot.leaf)) for slot in self._slots}

    def train(self, mode: bool = True) -> "SubnetView":
        super().train(mode)
        self.net.train(mode)
        return self

    def forward(self, x: Tensor) -> Tensor:
        self._bind()
        return self.net(x)

    def forward_output_strides(self, x: Tensor, output_strides: Iterable[int]) -> dict[int, Any]:
        """The subnet's output at each of ``output_strides`` from one forward of its body.

        The stem, the cells, the fusion nodes and theta's aggregation are the same whatever
        the head's output stride (section 3.2; only the stride-4 merge differs), so the other
        output strides cost their head alone: the head's inputs are taken from this view's
        forward and given to the head of a sibling view (same weights, other output stride).
        """
        wanted = list(dict.fromkeys(int(s) for s in output_strides))
        own = self.arch.head.output_stride
        grabbed: list = []
        hook = self.net.head.register_forward_pre_hook(lambda _m, args: grabbed.append(args))
        try:
            out = {own: self(x)}
        finally:
            hook.remove()
        siblings = self.__dict__.setdefault("_siblings", {})
        for s in wanted:
            if s == own:
                continue
            if s not in siblings:
                head = self.arch.head.model_copy(update={"output_stride": s})
                siblings[s] = self.supernet_ref.subnet(self.arch.model_copy(update={"head": head}))
            sib = siblings[s]
            sib.train(self.training)
            sib._bind()
            out[s] = sib.net.head(*grabbed[0])
        return {s: out[s] for s in wanted}

    def batchnorms(self) -> tuple[list[nn.Module], list[nn.Module]]:
        """For BatchNorm recalibration (section 4.2, "Search"): the supernet's BatchNorm
        modules that hold this subnet's running statistics (what to reset), and the
        BatchNorm layers its forward runs (whose momentum sets how statistics average)."""
        def bns(m: nn.Module) -> list[nn.Module]:
            return [b for b in m.modules() if isinstance(b, nn.modules.batchnorm._BatchNorm)]

        return bns(self.ops), bns(self.net)

    def subnet_parameters(self) -> Iterator[Tensor]:
        """The slices this subnet actually uses (for counting; they are views)."""
        return (slot.cut(getattr(slot.owner, slot.leaf)) for slot in self._slots if slot.is_param)

    def extra_repr(self) -> str:
        return f"arch={self.arch.name}, nodes={len(self.plan.nodes)}"
