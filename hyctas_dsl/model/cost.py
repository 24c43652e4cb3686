"""The analytic, torch-free cost model: params, multiply-accumulates and activation memory.

It is the op specification as arithmetic. ``hyctas_dsl.compiler`` builds exactly these
modules, and the tests check the two against each other (params exact, MACs within 1% of
``torch.utils.flop_counter.FlopCounterMode``). MACs count every convolution and both
attention matmuls (QK^T and AV); BatchNorm, ReLU, resampling and sums cost no MACs, as in the
paper's Table 2 (whose "FLOPs" are multiply-accumulates). All convs are bias-free and followed
by BatchNorm (2C params), except the classifier's last 1x1 conv, which has a bias.

Spatial sizes: the input is padded to a multiple of 32 (so every stride divides it) and the
logits are cropped back, so a feature at stride s is (H'/s) x (W'/s) with H' = ceil32(H).

Activation memory counts the elements of every tensor a module produces in a training
forward pass (what autograd keeps for backward, to first order), per image. Constraint 4's
estimate of training memory is ``4 bytes x (batch x (activations + input) + 3 x params)``
(weights, gradients, SGD momentum).

Op definitions (input C_in x H x W; output C_out, H/2 x W/2 when the cell downsamples):
- conv:  3x3 conv (stride 2 when down) -> BN -> ReLU.
- zconv: keep: bilinear x0.5 (a 1-pixel side stays 1) -> 3x3 conv -> BN -> bilinear to HxW; plus 1x1 conv -> BN on
         the input; sum -> ReLU.  down: bilinear x0.5 -> 3x3 conv -> BN -> ReLU.
- zconv2: as zconv with 3x3 conv -> BN -> ReLU -> 3x3 conv (C_out -> C_out) -> BN.
- attn:  (down: 2x2 average pool first) 1x1 conv C_in->d -> BN -> ReLU; 1x1 conv d->3d
         (q, k, v); scaled_dot_product_attention with ``heads`` heads over all positions;
         1x1 conv d->C_out -> BN; plus 1x1 conv C_in->C_out -> BN on the (pooled) input;
         sum -> ReLU. d = attn_bottleneck(C_out, heads, ratio).
- skip:  identity; 1x1 conv -> BN where C_in != C_out.
- stem:  3x3 s2 conv 3->2F, 3x3 s2 conv 2F->4F (the stride-4 feature), 3x3 s2 conv 4F->8F,
         each -> BN -> ReLU.
- fusion node: bilinear resample to the target stride (when it differs) -> 1x1 conv -> BN;
         added to the target branch's stream.
- head theta, C_s = 8F: every branch output -> 1x1 conv -> BN -> ReLU to C_s; from the
         coarsest stride down: bilinear to the next finer stride in theta, concat with that
         stride's projection, 3x3 conv 2C_s -> C_s -> BN -> ReLU; bilinear to stride 8 when
         theta's finest stride is coarser; output stride 4: the stem's stride-4 feature
         -> 1x1 conv 4F -> C_s -> BN -> ReLU, concat, 3x3 conv 2C_s -> C_s -> BN -> ReLU;
         classifier 3x3 conv C_s -> C_s -> BN -> ReLU, 1x1 conv C_s -> classes (bias);
         bilinear to the (padded) input size.
- panoptic head (``task panoptic``): theta plus two branches on its C_s feature at the output
         stride (Panoptic-DeepLab): centre 3x3 conv C_s -> 32 -> BN -> ReLU, 1x1 conv 32 -> 1
         (bias); offset the same with 2 outputs; both bilinear to the input size, the offsets
         scaled by the output stride.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hyctas_dsl.language.ast import Arch
from hyctas_dsl.model.graph import HEAD, STEM, build_graph, channels, topo_cells
from hyctas_dsl.language.op_table import attn_bottleneck, resolved_args

__all__ = [
    "Cost",
    "CostRow",
    "CostReport",
    "op_cost",
    "arch_cost",
    "total_cost",
    "training_memory",
    "pad32",
    "head_channels",
]


def pad32(n: int) -> int:
    return -(-n // 32) * 32


# channels of Panoptic-DeepLab's instance branches ("light" heads of 32 channels)
PANOPTIC_CHANNELS = 32


def head_channels(filters: int) -> int:
    return 8 * filters


@dataclass(frozen=True)
class Cost:
    params: int = 0
    macs: int = 0
    act: int = 0  # activation elements per image

    def __add__(self, o: "Cost") -> "Cost":
        return Cost(self.params + o.params, self.macs + o.macs, self.act + o.act)


ZERO = Cost()


def _conv(cin: int, cout: int, k: int, n_out: int, bn: bool = True, relu: bool = False, bias: bool = False) -> Cost:
    params = k * k * cin * cout + (cout if bias else 0) + (2 * cout if bn else 0)
    act = cout * n_out * (1 + int(bn) + int(relu))
    return Cost(params, k * k * cin * cout * n_out, act)


def op_cost(op: str, args: dict, c_in: int, c_out: int, h: int, w: int, down: bool) -> Cost:
    """Cost of one cell on a C_in x h x w input."""
    n_in = h * w
    ho, wo = (h // 2, w // 2) if down else (h, w)
    n_out = ho * wo
    hh, wh = max(h // 2, 1), max(w // 2, 1)  # zconv keeps a 1-pixel side at 1 pixel
    n_half = hh * wh
    if op == "skip":
        if down:
            raise ValueError("skip never downsamples (constraint 3)")
        return ZERO if c_in == c_out else _conv(c_in, c_out, 1, n_in)
    if op == "conv":
        return _conv(c_in, c_out, 3, n_out, relu=True)
    if op in ("zconv", "zconv2"):
        c = Cost(act=c_in * n_half)  # bilinear x0.5
        if op == "zconv":
            c += _conv(c_in, c_out, 3, n_half, relu=down)
        else:
            c += _conv(c_in, c_out, 3, n_half, relu=True) + _conv(c_out, c_out, 3, n_half, relu=down)
        if down:
            return c
        c += Cost(act=c_out * n_in)  # bilinear x2
        c += _conv(c_in, c_out, 1, n_in)  # high-resolution bypass
        return c + Cost(act=2 * c_out * n_in)  # sum, ReLU
    if op == "attn":
        a = resolved_args("attn", tuple(args.items()))
        d = attn_bottleneck(c_out, int(a["heads"]), float(a["ratio"]))
        n = n_out
        c = Cost(act=c_in * n) if down else ZERO  # 2x2 average pool
        c += _conv(c_in, d, 1, n, relu=True)  # reduce
        c += _conv(d, 3 * d, 1, n, bn=False)  # q, k, v
        c += Cost(macs=2 * n * n * d, act=d * n)  # QK^T and AV; the N x N matrix is never stored
        c += _conv(d, c_out, 1, n)  # back to C_out
        c += _conv(c_in, c_out, 1, n)  # uncompressed residue
        return c + Cost(act=2 * c_out * n)
    raise KeyError(f"unknown op {op!r}")


@dataclass(frozen=True)
class CostRow:
    part: str  # stem | cell | fusion | head
    node: str
    branches: tuple[str, ...]
    layer: int | None
    op: str
    c_in: int
    c_out: int
    stride_in: int
    stride_out: int
    cost: Cost


@dataclass
class CostReport:
    arch: str
    input: tuple[int, int]
    classes: int
    rows: list[CostRow] = field(default_factory=list)

    @property
    def total(self) -> Cost:
        t = ZERO
        for r in self.rows:
            t += r.cost
        return t

    def by_part(self) -> dict[str, Cost]:
        out: dict[str, Cost] = {}
        for r in self.rows:
            out[r.part] = out.get(r.part, ZERO) + r.cost
        return out

    def by_branch(self) -> dict[str, Cost]:
        """Cells and fusion nodes per branch; a shared cell is counted under each branch."""
        out: dict[str, Cost] = {}
        for r in self.rows:
            for b in r.branches:
                out[b] = out.get(b, ZERO) + r.cost
        return out

    def to_json(self) -> dict:
        t = self.total
        return {
            "arch": self.arch,
            "input": list(self.input),
            "classes": self.classes,
            "total": {"params": t.params, "macs": t.macs, "activations": t.act},
            "parts": {k: {"params": v.params, "macs": v.macs, "activations": v.act} for k, v in self.by_part().items()},
            "rows": [
                {
                    "part": r.part,
                    "node": r.node,
                    "branches": list(r.branches),
                    "layer": r.layer,
                    "op": r.op,
                    "c_in": r.c_in,
                    "c_out": r.c_out,
                    "stride_in": r.stride_in,
                    "stride_out": r.stride_out,
                    "params": r.cost.params,
                    "macs": r.cost.macs,
                    "activations": r.cost.act,
                }
                for r in self.rows
            ],
        }


def arch_cost(arch: Arch, input_size: tuple[int, int] = (1024, 2048), classes: int = 19) -> CostReport:
    """Cost of every part of a (validated) architecture at one image of ``input_size``."""
    H, W = pad32(input_size[0]), pad32(input_size[1])
    F = arch.filters
    g = build_graph(arch)
    rep = CostReport(arch.name, (input_size[0], input_size[1]), classes)

    def n(s: int) -> int:
        return (H // s) * (W // s)

    stem = (
        _conv(3, 2 * F, 3, n(2), relu=True)
        + _conv(2 * F, 4 * F, 3, n(4), relu=True)
        + _conv(4 * F, 8 * F, 3, n(8), relu=True)
    )
    rep.rows.append(CostRow("stem", STEM, (), None, "stem", 3, 8 * F, 1, 8, stem))

    for name in topo_cells(g):
        d = g.nodes[name]
        if d["kind"] == "cell":
            s = d["stride_in"]
            c = op_cost(d["op"].name, dict(d["op"].args), d["c_in"], d["c_out"], H // s, W // s, d["down"])
            n_fused = sum(1 for _u, _v, e in g.in_edges(name, data=True) if e["role"] == "fusion")
            if n_fused:  # the fusion sums happen on this cell's input
                c += Cost(act=n_fused * d["c_in"] * n(s))
            rep.rows.append(
                CostRow("cell", name, tuple(d["branches"]), d["layer"], d["op"].name, d["c_in"], d["c_out"], s, d["stride_out"], c)
            )
        else:
            s_in, s_out = d["stride_in"], d["stride_out"]
            c = Cost(act=d["c_in"] * n(s_out)) if s_in != s_out else ZERO
            c += _conv(d["c_in"], d["c_out"], 1, n(s_out))
            rep.rows.append(
                CostRow("fusion", name, (d["src"], d["dst"]), d["after"], "fuse", d["c_in"], d["c_out"], s_in, s_out, c)
            )

    rep.rows.append(_head_row(g, F, classes, n, H * W, arch.task))
    return rep


def _head_row(g, F: int, classes: int, n, hw: int, task: str = "semantic") -> CostRow:
    hd = g.nodes[HEAD]
    inputs = {e["stride"]: u for u, _v, e in g.in_edges(HEAD, data=True) if e["role"] == "branch"}
    strides = sorted(inputs)
    c_outs = {s: g.nodes[inputs[s]]["c_out"] for s in strides}
    c = _head_cost(c_outs, hd["output_stride"], F, classes, n, hw, task)
    label = "head (" + ", ".join(str(s) for s in strides) + ")" + (" panoptic" if task == "panoptic" else "")
    return CostRow("head", HEAD, (), None, label, sum(c_outs.values()), classes, strides[0], hd["output_stride"], c)


def _head_cost(c_outs: dict[int, int], os_: int, F: int, classes: int, n, hw: int, task: str = "semantic") -> Cost:
    """The head's cost from the channels of the branch output at each stride."""
    cs = head_channels(F)
    strides = sorted(c_outs)
    c = ZERO
    for s in strides:  # slimmable 1x1 projections to C_s
        c += _conv(c_outs[s], cs, 1, n(s), relu=True)
    for s in reversed(strides[:-1]):  # coarse to fine: up, concat, 3x3 fuse
        c += Cost(act=cs * n(s) + 2 * cs * n(s))
        c += _conv(2 * cs, cs, 3, n(s), relu=True)
    if strides[0] > 8:
        c += Cost(act=cs * n(8))
    if os_ == 4:
        c += _conv(4 * F, cs, 1, n(4), relu=True)
        c += Cost(act=cs * n(4) + 2 * cs * n(4))
        c += _conv(2 * cs, cs, 3, n(4), relu=True)
    c += _conv(cs, cs, 3, n(os_), relu=True)
    c += _conv(cs, classes, 1, n(os_), bn=False, bias=True)
    c += Cost(act=classes * hw)
    if task == "panoptic":
        for k in (1, 2):  # centre heatmap and offset branches
            c += _conv(cs, PANOPTIC_CHANNELS, 3, n(os_), relu=True)
            c += _conv(PANOPTIC_CHANNELS, k, 1, n(os_), bn=False, bias=True)
            c += Cost(act=k * hw)
        c += Cost(act=2 * hw)  # the offsets' scaling
    return c


def total_cost(arch: Arch, input_size: tuple[int, int] = (1024, 2048), classes: int = 19) -> Cost:
    """``arch_cost(...).total`` without building the graph or the per-part rows: the same
    walk over layers, with cells shared by several branches (same layer, op, width, input
    and fused inputs) and identical fusion nodes counted once, as ``build_graph`` merges
    them. It is constraint 4's hot path (the validator runs it for every candidate)."""
    H, W = pad32(input_size[0]), pad32(input_size[1])
    F = arch.filters

    def n(s: int) -> int:
        return (H // s) * (W // s)

    total = (_conv(3, 2 * F, 3, n(2), relu=True) + _conv(2 * F, 4 * F, 3, n(4), relu=True)
             + _conv(4 * F, 8 * F, 3, n(8), relu=True))
    # a node is (id, stride_out, c_out); the stem is node 0
    cur = {b.name: (0, 8, channels(8, F, 12)) for b in arch.branches}
    pending: dict[str, list] = {b.name: [] for b in arch.branches}
    seen: dict[tuple, tuple] = {}
    for layer in range(1, arch.layers + 1):
        produced = {}
        for b in arch.branches:
            cell = b.cells[layer - 1]
            main = cur[b.name]
            fused = tuple(sorted(pending[b.name]))
            op = cell.op
            sig = (layer, op.name, op.args, cell.width, cell.down, main[0], tuple(f[0] for f in fused))
            node = seen.get(sig)
            if node is None:
                s_in = main[1]
                s_out = s_in * 2 if cell.down else s_in
                c_out = channels(s_out, F, cell.width)
                total += op_cost(op.name, dict(op.args), main[2], c_out, H // s_in, W // s_in, cell.down)
                if fused:  # a fusion node feeding this cell twice is one edge of the graph: one sum
                    total += Cost(act=len(set(fused)) * main[2] * n(s_in))
                node = seen[sig] = (len(seen) + 1, s_out, c_out)
            produced[b.name] = node
        cur = produced
        pending = {b.name: [] for b in arch.branches}
        for fu in arch.fusions:
            if fu.after != layer:
                continue
            src, dst = produced[fu.src], produced[fu.dst]
            sig = ("fuse", src[0], dst[1], dst[2])
            node = seen.get(sig)
            if node is None:
                c = Cost(act=src[2] * n(dst[1])) if src[1] != dst[1] else ZERO
                total += c + _conv(src[2], dst[2], 1, n(dst[1]))
                node = seen[sig] = (len(seen) + 1, dst[1], dst[2])
            pending[fu.dst].append(node)
    c_outs = {node[1]: node[2] for node in cur.values()}
    return total + _head_cost(c_outs, arch.head.output_stride, F, classes, n, H * W, arch.task)


def training_memory(arch: Arch, batch: int, crop: tuple[int, int], classes: int = 19) -> int:
    """Constraint 4's estimate, in bytes, of one training step of ``arch`` (see module doc)."""
    t = total_cost(arch, crop, classes)
    image = 3 * pad32(crop[0]) * pad32(crop[1])
    return 4 * (batch * (t.act + image) + 3 * t.params)
