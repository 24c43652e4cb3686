"""Arch -> computation DAG (networkx), with shared prefixes computed once.

Branches start from the same stem and share the supernet's weights, so two branches whose
cells (and incoming fusion nodes) agree up to layer l compute identical features up to l
(DESIGN.md "The model"). The DAG gives each distinct computation one node; the compiler runs
it, the cost model counts it and ``draw`` renders it, so all three agree on what is shared.

Nodes (attribute ``kind``):
- ``stem``: stride-8 output with ``c_out`` = 8F channels, and a stride-4 feature of 4F.
- ``cell``: ``layer`` (1-based), ``op`` (OpCall), ``width``, ``down``, ``stride_in``,
  ``stride_out``, ``c_in``, ``c_out``, ``branches`` (names that share it). Its ``main``
  predecessor is the previous cell (or the stem); ``fusion`` predecessors are added to that
  input first.
- ``fusion``: ``after`` (layer), ``src``/``dst`` branch, ``stride_in``/``stride_out``,
  ``c_in``/``c_out``: the paper's binary gate N_s^l, a resample and 1x1 projection.
- ``head``: ``strides`` (theta), ``output_stride``; predecessors are the branches' last cells
  (edge attribute ``stride``) and, for output stride 4, the stem (role ``stem4``).

Node names are readable (``main.3``, ``fuse.a->b.5``) and, for cells, name the first branch
(in declaration order) that computes the cell.
"""

from __future__ import annotations

import math
from typing import Any

import networkx as nx

from hyctas_dsl.language.ast import Arch

__all__ = ["channels", "build_graph", "topo_cells", "STEM", "HEAD"]

STEM = "stem"
HEAD = "head"


def channels(stride: int, filters: int, width: int) -> int:
    """Channels of a cell of ``width`` twelfths at ``stride``: round(s * F * w / 12)."""
    return int(math.floor(stride * filters * width / 12 + 0.5))


def build_graph(arch: Arch) -> nx.DiGraph:
    """The computation DAG of a (validated) architecture."""
    F = arch.filters
    g = nx.DiGraph(name=arch.name, filters=F)
    g.add_node(STEM, kind="stem", stride_out=8, c_out=channels(8, F, 12), c4=4 * F)

    # Per branch: the node feeding its next cell, that node's identity signature, and the
    # fusion nodes to add to it.
    cur = {b.name: STEM for b in arch.branches}
    sig_of: dict[str, Any] = {STEM: ("stem",)}
    by_sig: dict[Any, str] = {}
    pending: dict[str, list[str]] = {b.name: [] for b in arch.branches}

    for layer in range(1, arch.layers + 1):
        produced: dict[str, str] = {}
        for b in arch.branches:
            cell = b.cells[layer - 1]
            main = cur[b.name]
            fused = sorted(pending[b.name])
            # Inputs enter the signature by node name: a name stands for exactly one signature
            # (by_sig interns them), and nesting whole signatures makes hashing exponential in
            # the number of fusion nodes.
            sig = (layer, cell.op, cell.width, cell.down, main, tuple(fused))
            name = by_sig.get(sig)
            if name is None:
                name = f"{b.name}.{layer}"
                s_in = g.nodes[main]["stride_out"]
                s_out = s_in * 2 if cell.down else s_in
                g.add_node(
                    name,
                    kind="cell",
                    layer=layer,
                    op=cell.op,
                    width=cell.width,
                    down=cell.down,
                    stride_in=s_in,
                    stride_out=s_out,
                    c_in=g.nodes[main]["c_out"],
                    c_out=channels(s_out, F, cell.width),
                    branches=[b.name],
                )
                g.add_edge(main, name, role="main")
                for f in fused:
                    g.add_edge(f, name, role="fusion")
                by_sig[sig] = name
                sig_of[name] = sig
            else:
                g.nodes[name]["branches"].append(b.name)
            produced[b.name] = name
        cur = produced
        pending = {b.name: [] for b in arch.branches}
        for fu in arch.fusions:
            if fu.after != layer:
                continue
            src, dst = produced[fu.src], produced[fu.dst]
            s_in, s_out = g.nodes[src]["stride_out"], g.nodes[dst]["stride_out"]
            c_in, c_out = g.nodes[src]["c_out"], g.nodes[dst]["c_out"]
            sig = ("fuse", src, s_out, c_out)
            name = by_sig.get(sig)
            if name is None:
                name = f"fuse.{fu.src}->{fu.dst}.{layer}"
                g.add_node(
                    name,
                    kind="fusion",
                    after=layer,
                    src=fu.src,
                    dst=fu.dst,
                    stride_in=s_in,
                    stride_out=s_out,
                    c_in=c_in,
                    c_out=c_out,
                )
                g.add_edge(src, name, role="main")
                by_sig[sig] = name
                sig_of[name] = sig
            pending[fu.dst].append(name)

    g.add_node(HEAD, kind="head", strides=tuple(arch.head.strides), output_stride=arch.head.output_stride)
    for b in arch.branches:
        last = cur[b.name]
        g.add_edge(last, HEAD, role="branch", branch=b.name, stride=g.nodes[last]["stride_out"])
    if arch.head.output_stride == 4:
        g.add_edge(STEM, HEAD, role="stem4")
    return g


def topo_cells(g: nx.DiGraph) -> list[str]:
    """Cell and fusion nodes in a deterministic execution order (by layer, then name)."""
    def order(n: str) -> tuple:
        d = g.nodes[n]
        if d["kind"] == "cell":
            return (d["layer"], 0, n)
        return (d["after"], 1, n)

    return sorted((n for n, d in g.nodes(data=True) if d["kind"] in ("cell", "fusion")), key=order)
