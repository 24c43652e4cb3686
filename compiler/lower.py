"""Arch -> a plan of modules over the computation DAG, and the Python source that builds it.

The plan follows ``hyctas_dsl.model.graph.build_graph`` (shared prefixes computed once), gives every
DAG node a Python name derived from its graph name (``main.3`` -> ``main_3``,
``fuse.lo->hi.3`` -> ``fuse_lo_to_hi_3``), the op class and constructor arguments of
``hyctas_dsl.compiler.ops`` with exact channel counts, and the key of the supernet module
whose weights it slices. ``python_source`` turns a plan into a readable, torch-only module:
the one definition of the network that standalone export, ``model.py`` files and subnet views
(its weightless skeleton) all run.
"""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass, field

import networkx as nx

from hyctas_dsl.language.ast import Arch
from hyctas_dsl.model.cost import head_channels
from hyctas_dsl.model.graph import HEAD, STEM, build_graph, topo_cells
from hyctas_dsl.language.op_table import attn_bottleneck, resolved_args
from hyctas_dsl.language.printer import dumps

__all__ = ["NodePlan", "Plan", "lower", "python_source", "forward_source", "cell_key", "fusion_key", "head_key", "OP_CLASS"]

OP_CLASS = {"skip": "Skip", "conv": "Conv", "zconv": "ZConv", "zconv2": "ZConv2", "attn": "Attn"}


def cell_key(layer: int, stride_in: int, down: bool, op: str) -> str:
    """Supernet position of a cell: (layer, input stride, keep|down, op)."""
    return f"l{layer}_s{stride_in}_{'down' if down else 'keep'}_{op}"


def fusion_key(after: int, s_in: int, s_out: int) -> str:
    """Supernet position of a fusion projection: (layer, source stride, target stride)."""
    return f"l{after}_s{s_in}_to_s{s_out}"


def head_key(strides: tuple[int, ...], output_stride: int | None = None) -> str:
    """``h8_16`` names theta's aggregation; ``h8_16@4`` the whole head at an output stride."""
    return "h" + "_".join(str(s) for s in strides) + (f"@{output_stride}" if output_stride is not None else "")


@dataclass
class NodePlan:
    attr: str  # Python attribute / variable name in the generated network
    node: str  # graph node name
    kind: str  # stem | cell | fusion | head
    cls: str  # op class in hyctas_dsl.compiler.ops
    args: list  # positional constructor arguments (Python literals or names)
    kwargs: dict  # keyword constructor arguments
    key: str  # supernet module key
    comment: str = ""
    inputs: list = field(default_factory=list)  # forward-expression pieces

    def ctor(self) -> str:
        parts = [_lit(a) for a in self.args] + [f"{k}={_lit(v)}" for k, v in self.kwargs.items()]
        return f"{self.cls}({', '.join(parts)})"


class _Name(str):
    """A bare name in generated code (printed without quotes)."""


def _lit(v) -> str:
    if isinstance(v, _Name):
        return str(v)
    return repr(v)


@dataclass
class Plan:
    arch: Arch
    classes: int
    graph: nx.DiGraph
    nodes: list[NodePlan]  # execution order: stem, cells and fusions, head
    forward: list[str]  # body lines of Net.forward

    def by_attr(self) -> dict[str, NodePlan]:
        return {n.attr: n for n in self.nodes}


def _py_name(node: str, taken: set[str]) -> str:
    base = node.replace("->", "_to_")
    base = re.sub(r"[^A-Za-z0-9_]", "_", base)
    if not base or base[0].isdigit() or keyword.iskeyword(base):
        base = "n_" + base
    name, i = base, 2
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    taken.add(name)
    return name


def lower(arch: Arch, classes: int = 19) -> Plan:
    """The module plan of a (structurally valid) architecture."""
    g = build_graph(arch)
    F = arch.filters
    taken = {"x", "h", "w", "stem", "stem4", "logits", "head", "self"}
    names = {STEM: "stem", HEAD: "head"}
    order = topo_cells(g)
    for n in order:
        names[n] = _py_name(n, taken)

    nodes = [NodePlan("stem", STEM, "stem", "Stem", [F], {}, "stem", "3 -> 2F -> 4F (stride 4) -> 8F (stride 8)")]
    fwd = ["h, w = x.shape[2], x.shape[3]", "stem, stem4 = self.stem(pad32(x))"]
    for n in order:
        d = g.nodes[n]
        attr = names[n]
        if d["kind"] == "cell":
            op = d["op"]
            kwargs: dict = {}
            if op.name != "skip":
                kwargs["down"] = bool(d["down"])
            if op.name == "attn":
                a = resolved_args("attn", tuple(op.args))
                heads = int(a["heads"])
                kwargs["heads"] = heads
                kwargs["d"] = attn_bottleneck(d["c_out"], heads, float(a["ratio"]))
            main = [u for u, _v, e in g.in_edges(n, data=True) if e["role"] == "main"][0]
            fused = sorted(u for u, _v, e in g.in_edges(n, data=True) if e["role"] == "fusion")
            expr = " + ".join([names[main]] + [names[f] for f in fused])
            shared = d["branches"]
            comment = f"layer {d['layer']}, stride {d['stride_in']}" + (f" -> {d['stride_out']}" if d["down"] else "")
            comment += f", {op.name} w{d['width']}"
            if len(shared) > 1:
                comment += f" (shared by branches {', '.join(shared)})"
            nodes.append(
                NodePlan(attr, n, "cell", OP_CLASS[op.name], [d["c_in"], d["c_out"]], kwargs,
                         cell_key(d["layer"], d["stride_in"], d["down"], op.name), comment)
            )
            fwd.append(f"{attr} = self.{attr}({expr})")
        else:
            src = [u for u, _v in g.in_edges(n)][0]
            consumer = sorted(g.successors(n))[0]
            ref = [u for u, _v, e in g.in_edges(consumer, data=True) if e["role"] == "main"][0]
            resample = d["stride_in"] != d["stride_out"]
            nodes.append(
                NodePlan(attr, n, "fusion", "Fusion", [d["c_in"], d["c_out"]], {"resample": resample},
                         fusion_key(d["after"], d["stride_in"], d["stride_out"]),
                         f"fusion node {d['src']} -> {d['dst']} after layer {d['after']}, stride {d['stride_in']} -> {d['stride_out']}")
            )
            fwd.append(f"{attr} = self.{attr}({names[src]}, {names[ref]})")
    hd = g.nodes[HEAD]
    feeds = sorted(((e["stride"], u) for u, _v, e in g.in_edges(HEAD, data=True) if e["role"] == "branch"))
    strides = tuple(s for s, _u in feeds)
    c_ins = [g.nodes[u]["c_out"] for _s, u in feeds]
    os4 = hd["output_stride"] == 4
    panoptic = arch.task == "panoptic"
    nodes.append(
        NodePlan("head", HEAD, "head", "PanopticHead" if panoptic else "Head", [c_ins, head_channels(F), _Name("classes")],
                 {"up8": strides[0] > 8, "c4": 4 * F if os4 else 0}, head_key(strides, hd["output_stride"]),
                 f"head ({', '.join(map(str, strides))}), output stride {hd['output_stride']}"
                 + (", with the centre heatmap and offset branches" if panoptic else ""))
    )
    feats = ", ".join(names[u] for _s, u in feeds)
    if panoptic:
        fwd.append(f"logits, center, offset = self.head([{feats}], stem4)")
        fwd.append("return logits[:, :, :h, :w], center[:, :, :h, :w], offset[:, :, :h, :w]")
    else:
        fwd.append(f"logits = self.head([{feats}], stem4)")
        fwd.append("return logits[:, :, :h, :w]")
    return Plan(arch, classes, g, nodes, fwd)


def forward_source(plan: Plan) -> list[str]:
    """The lines of ``Net.forward`` (indented as in the class). It names the nodes and their
    wiring, not widths or ops, so archs of the same shape share it (subnet views compile it
    once per text)."""
    ret = "Tuple[Tensor, Tensor, Tensor]" if plan.arch.task == "panoptic" else "Tensor"
    return [f"    def forward(self, x: Tensor) -> {ret}:", *("        " + ln for ln in plan.forward)]


def python_source(plan: Plan, ops_src: str, header: str = "") -> str:
    """A self-contained Python module defining ``Net`` (torch only) for ``plan``."""
    arch = plan.arch
    text = dumps(arch.model_copy(update={"meta": ()}))
    lines = [f'"""{arch.name}: a HyCTAS segmentation network generated by hyctas.', ""]
    lines += [
        "Self-contained: it needs torch (and safetensors to read weights), not hyctas.",
        "",
        "    import model                   # this file",
        "    net = model.load()             # weights from the .safetensors file beside it",
        *(["    logits, center, offset = net(images)  # [N, 3, H, W] -> [N, classes | 1 | 2, H, W]"]
          if arch.task == "panoptic" else
          ["    logits = net(images)           # [N, 3, H, W] -> [N, classes, H, W]"]),
        '"""',
        "",
    ]
    if header:
        lines += [header.rstrip(), ""]
    lines += ["# The architecture, in the hyctas language:"]
    lines += [("# " + ln).rstrip() for ln in text.rstrip().splitlines()]
    lines += ["", "import os", ""]
    lines.append(ops_src.rstrip())
    lines += ["", "", "class Net(nn.Module):"]
    lines.append(f'    """{arch.name}: filters {arch.filters}, {arch.layers} layers, '
                 f'{len(arch.branches)} branch(es); one module per DAG node, named after it."""')
    lines += ["", f"    def __init__(self, classes: int = {plan.classes}):", "        super().__init__()"]
    for n in plan.nodes:
        lines.append(f"        # {n.comment}" if n.comment else "")
        lines.append(f"        self.{n.attr} = {n.ctor()}")
    lines += ["", *forward_source(plan)]
    lines += [
        "",
        "",
        "def load(weights: Optional[str] = None, classes: int = %d, channels_last: bool = True) -> Net:" % plan.classes,
        '    """The network with its weights (default: the .safetensors file beside this one), in',
        "    eval mode and, unless ``channels_last=False``, in the channels-last memory layout, which",
        "    CPU convolutions run without reorders (1.05x to 1.16x faster for the HyCTAS zoo on a CPU);",
        "    ``net.layout`` says which. Inputs may be in either layout; the outputs are the same.",
        '    """',
        "    from safetensors.torch import load_file",
        "",
        "    net = Net(classes)",
        "    if weights is None:",
        "        weights = os.path.splitext(os.path.abspath(__file__))[0] + '.safetensors'",
        "    net.load_state_dict(load_file(weights))",
        "    if channels_last:",
        "        net = net.to(memory_format=torch.channels_last)",
        "    net.layout = 'channels-last' if channels_last else 'contiguous'",
        "    return net.eval()",
        "",
    ]
    return "\n".join(lines)
