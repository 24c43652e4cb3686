"""Diagrams of architectures and search spaces with Graphviz: the paper's Figures 1 and 4.

- :func:`draw` (Figure 4): rows are the strides 8, 16, 32 (high resolution on top), columns
  are layers. Each cell is a box coloured by its op and labelled with its width; each branch
  is a path of edges through the grid (a downsampling cell sits one row lower, reached by a
  diagonal edge, and is marked ``↓2``); cells that several branches compute once (shared
  prefixes, :func:`hyctas_dsl.model.graph.build_graph`) are one box, and the edges into them grow
  thicker with the number of branches they carry. Fusion nodes (section 3.2's binary gates
  N_s^l) are small black diamonds on dashed edges. The stem is on the left, the aggregation
  head theta on the right; a legend and a caption with the arch's meta facts sit below.
- :func:`draw_space` (Figure 1): the supernet's grid of candidate cells C_s^l, each showing
  the ops it may choose as a colour strip, and the nodes N_s^l between layers; the space's
  choices (ops, widths, filters, heads, prior, memory limit) in a table underneath.
- :func:`draw_diff`: two architectures on one grid; cells, branches, fusion nodes and heads
  that differ are drawn in A's or B's colour and line style, with an ``A``/``B`` tag.

Nodes get explicit pinned positions (``pos="x,y!"``) and the graph asks for the ``neato``
layout, which keeps them: a regular grid that Graphviz's ranking would not give. ``dot
-Tsvg file.dot`` honours the ``layout`` attribute, so the written DOT renders the same way.
Output is deterministic: names come from branch names and layers, never from ``id()``, and
every loop runs in declaration or sorted order, so the same input gives byte-identical DOT.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from html import escape

import graphviz

from hyctas_dsl.language.ast import Arch, Space
from hyctas_dsl.model.graph import build_graph
from hyctas_dsl.language.op_table import OPS
from hyctas_dsl.language.printer import format_op

__all__ = ["draw", "draw_space", "draw_diff", "OP_COLORS", "op_color", "SIDE_COLORS"]

# One colour per op, the same in every figure: the Okabe-Ito palette (colour-blind safe).
OP_COLORS: dict[str, str] = {
    "skip": "#F0E442",  # yellow: identity, the "empty" choice
    "conv": "#0072B2",  # blue
    "zconv": "#56B4E9",  # sky blue: the lightweight conv ...
    "zconv2": "#009E73",  # bluish green: ... and its two-conv variant
    "attn": "#E69F00",  # orange: self-attention stands out
}
_UNKNOWN_OP = "#BBBBBB"
_DARK_FILLS = {"#0072B2", "#009E73"}  # white text on these
# The two sides of a diff: Okabe-Ito colours no op uses, plus a line style each, so the
# difference survives grey-scale printing.
SIDE_COLORS = {"A": "#D55E00", "B": "#CC79A7"}
_SIDE_STYLE = {"A": "dashed", "B": "solid"}

_FONT = "Helvetica"
_EDGE = "#444444"
_GRID_STRIDES = (8, 16, 32)

# Geometry in inches.
_COL = 0.96  # between layer columns
_LANE = 0.58  # between the lanes of one stride row
_ROW_GAP = 0.5  # extra space between stride rows
_BOX_W, _BOX_H = 0.74, 0.44


def op_color(name: str) -> str:
    return OP_COLORS.get(name, _UNKNOWN_OP)


def _f(x: float) -> str:
    """Fixed-precision numbers keep the DOT source byte-identical across runs."""
    s = f"{x:.3f}".rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def _pos(x: float, y: float) -> str:
    return f"{_f(x)},{_f(y)}!"


def _html(text: str) -> str:
    return escape(text, quote=True)


def _fmt_value(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


# ---------------------------------------------------------------------------------------
# The grid model shared by draw() and draw_diff()


@dataclass
class _Box:
    """A cell as drawn: a position on the grid and what it shows."""

    id: str
    layer: int
    stride: int
    branches: tuple[str, ...]
    op: str
    op_text: str
    width: int
    down: bool
    side: str = ""  # "", "A", "B" or "AB" (a diff cell both sides agree on)
    x: float = 0.0
    y: float = 0.0


@dataclass
class _Edge:
    branches: list[str] = field(default_factory=list)
    sides: set[str] = field(default_factory=set)
    kind: str = "main"  # main | head | fuse-in | fuse-out | stem4
    label: str = ""


def _cell_map(arch: Arch) -> tuple[dict[tuple[str, int], str], dict[str, dict]]:
    """(branch, layer) -> node of build_graph computing it, and the nodes' data."""
    g = build_graph(arch)
    where: dict[tuple[str, int], str] = {}
    for n, d in g.nodes(data=True):
        if d["kind"] == "cell":
            for b in d["branches"]:
                where[(b, d["layer"])] = n
    return where, dict(g.nodes(data=True))


def _descriptor(d: dict) -> tuple:
    return (d["stride_in"], d["stride_out"], d["op"], d["width"], d["down"])


class _Grid:
    """Boxes, gates and edges of one figure, then positions, then a Digraph."""

    def __init__(self, layers: int, branch_order: list[str]):
        self.layers = layers
        self.branch_order = branch_order
        self.boxes: dict[str, _Box] = {}
        self.edges: dict[tuple[str, str], _Edge] = {}
        self.gates: dict[str, dict] = {}
        self.heads: dict[str, dict] = {}

    def box(self, box: _Box) -> str:
        old = self.boxes.get(box.id)
        if old is None:
            self.boxes[box.id] = box
        else:
            old.branches = tuple(b for b in self.branch_order if b in set(old.branches) | set(box.branches))
        return box.id

    def edge(self, u: str, v: str, *, branch: str | None, side: str, kind: str = "main", label: str = "") -> None:
        e = self.edges.setdefault((u, v), _Edge(kind=kind, label=label))
        if branch is not None and branch not in e.branches:
            e.branches.append(branch)
        e.sides.add(side)

    # -- layout ---------------------------------------------------------------------------
    def place(self) -> None:
        """Give every box a position: x by layer; y by stride row and, inside a row, a lane
        per branch (shared cells sit between their branches' lanes, like a metro map)."""
        rows = [s for s in _GRID_STRIDES]
        extra = sorted({b.stride for b in self.boxes.values()} - set(rows))
        rows += extra  # strides outside the paper's grid (never valid, but still drawable)
        lanes: dict[int, dict[str, int]] = {}
        for s in rows:
            present = {b for box in self.boxes.values() if box.stride == s for b in box.branches}
            lanes[s] = {b: i for i, b in enumerate(x for x in self.branch_order if x in present)}
        groups: dict[tuple[int, int], list[_Box]] = defaultdict(list)
        for box in self.boxes.values():
            groups[(box.layer, box.stride)].append(box)
        n_lanes = {s: max(1, len(lanes[s])) for s in rows}
        for (_layer, s), members in groups.items():
            n_lanes[s] = max(n_lanes[s], len(members))
        lane_of: dict[str, float] = {}
        for (_layer, s), members in sorted(groups.items()):
            want = []
            for box in members:
                idx = [lanes[s][b] for b in box.branches if b in lanes[s]]
                want.append((sum(idx) / len(idx) if idx else 0.0, box.side, box.id, box))
            want.sort(key=lambda t: t[:3])
            pos = [w[0] for w in want]
            if any(b - a < 1 for a, b in zip(pos, pos[1:])):
                # Boxes would overlap: spread them one lane apart around their mean.
                k, mid = len(pos), sum(pos) / len(pos)
                start = min(max(mid - (k - 1) / 2, 0.0), n_lanes[s] - k)
                pos = [start + i for i in range(k)]
            for p, w in zip(pos, want):
                lane_of[w[3].id] = p
        # Rows from the top, each as tall as its lanes need.
        self.row_y: dict[int, tuple[float, float]] = {}  # stride -> (y of lane 0, y of last lane)
        y = 0.0
        for s in rows:
            last = y - (n_lanes[s] - 1) * _LANE
            self.row_y[s] = (y, last)
            y = last - _BOX_H - _ROW_GAP
        self.rows = rows
        for box in self.boxes.values():
            box.x = box.layer * _COL
            box.y = self.row_y[box.stride][0] - lane_of[box.id] * _LANE


def _box_label(title: str, sub: str, tag: str = "") -> str:
    """An HTML label: an optional small tag (A/B in diffs), a bold title, a small subtitle."""
    parts = []
    if tag:
        parts.append(f'<FONT POINT-SIZE="8"><B>{_html(tag)}</B></FONT>')
    parts.append(f"<B>{_html(title)}</B>")
    parts.append(f'<FONT POINT-SIZE="9">{_html(sub)}</FONT>')
    return "<" + "<BR/>".join(parts) + ">"


def _cell_label(op_text: str, width: int, down: bool, tag: str = "") -> str:
    return _box_label(op_text, f"w{width}" + (" ↓2" if down else ""), tag)


def _short_op(op_text: str) -> str:
    # attn(heads=4, ratio=0.5) does not fit a box; h4 r0.5 does.
    return op_text.replace("heads=", "h").replace("ratio=", "r").replace(", ", " ")


def _new_digraph(name: str) -> graphviz.Digraph:
    g = graphviz.Digraph(name=name, engine="neato")
    g.attr(
        "graph",
        layout="neato",
        splines="line",
        outputorder="nodesfirst",
        bgcolor="white",
        fontname=_FONT,
        pad="0.25",
    )
    g.attr("node", fontname=_FONT, fontsize="11", margin="0.02,0.02")
    g.attr("edge", fontname=_FONT, fontsize="9", arrowsize="0.5", color=_EDGE)
    return g


def _band(g: graphviz.Digraph, name: str, x0: float, x1: float, y0: float, y1: float, color: str) -> None:
    """A background rectangle (a pinned, label-less node drawn first)."""
    g.node(
        name,
        label="",
        shape="box",
        style="filled,rounded",
        fillcolor=color,
        color=color,
        fixedsize="true",
        width=_f(x1 - x0),
        height=_f(y0 - y1),
        pos=_pos((x0 + x1) / 2, (y0 + y1) / 2),
    )


def _op_swatches(ops: list[str]) -> str:
    """Inline colour squares with op names, for legends."""
    return "   ".join(f'<FONT COLOR="{op_color(o)}">■</FONT> {_html(o)}' for o in ops)


def _legend_html(ops: list[str], extra: list[tuple[str, str]]) -> str:
    parts = [_op_swatches(ops)] + [f"{sym} {_html(text)}" for sym, text in extra]
    return "<" + "     ".join(parts) + ">"


def _grid_frame(g: graphviz.Digraph, grid: _Grid, layers: int, right: float) -> None:
    """Row bands, row names and layer numbers."""
    x0, x1 = 0.5 * _COL - 0.08, right
    for i, s in enumerate(grid.rows):
        top, last = grid.row_y[s]
        _band(g, f"row{s}", x0, x1, top + _BOX_H / 2 + 0.16, last - _BOX_H / 2 - 0.16, "#F3F3F3" if i % 2 == 0 else "#E9E9E9")
        g.node(
            f"row{s}_name",
            label=f"<<B>stride {s}</B><BR/><FONT POINT-SIZE=\"9\">1/{s} resolution</FONT>>",
            shape="plaintext",
            pos=_pos(-1.3, (top + last) / 2),
        )
    top = grid.row_y[grid.rows[0]][0] + _BOX_H / 2 + 0.3
    for layer in range(1, layers + 1):
        g.node(f"L{layer}", label=str(layer), shape="plaintext", fontsize="9", fontcolor="#555555", width="0.2", height="0.2", pos=_pos(layer * _COL, top))
    g.node("layers_title", label="layer", shape="plaintext", fontsize="9", fontcolor="#555555", pos=_pos(-1.3, top))


def _render_grid(g: graphviz.Digraph, grid: _Grid, *, diff: bool) -> None:
    for box in grid.boxes.values():
        fill = op_color(box.op)
        font = "white" if fill in _DARK_FILLS else "black"
        attrs = dict(
            shape="box",
            style="filled,rounded",
            fillcolor=fill,
            fontcolor=font,
            color="#333333",
            penwidth="1",
            width=_f(_BOX_W),
            height=_f(_BOX_H),
            fixedsize="true",
            pos=_pos(box.x, box.y),
        )
        tag = ""
        if diff and box.side == "AB":
            # Unchanged in the diff: pale, so the changes stand out.
            attrs.update(fillcolor=fill + "55", fontcolor="#555555", color="#AAAAAA")
        elif box.side in ("A", "B"):
            tag = box.side
            attrs.update(color=SIDE_COLORS[box.side], penwidth="3", style=f"filled,rounded,{_SIDE_STYLE[box.side]}")
        if tag:
            attrs["height"] = _f(_BOX_H + 0.08)
        tip = f"layer {box.layer}, stride {box.stride}: {box.op_text} w{box.width}" + (" down" if box.down else "")
        if box.branches:
            tip += f" (branch{'es' if len(box.branches) > 1 else ''} {', '.join(box.branches)})"
        if tag:
            tip = f"{tag}: {tip}"
        g.node(box.id, label=_cell_label(_short_op(box.op_text), box.width, box.down, tag), tooltip=tip, **attrs)

    n_branches = max(1, len(grid.branch_order))
    for (u, v), e in grid.edges.items():
        attrs: dict[str, str] = {}
        if e.kind in ("main", "head"):
            attrs["penwidth"] = _f(1.2 + 1.3 * (len(e.branches) - 1)) if n_branches > 1 else "1.4"
        if e.kind == "head" and e.label:
            attrs.update(label=e.label, fontcolor="#333333")
        if e.kind in ("fuse-in", "fuse-out"):
            attrs.update(style="dashed", penwidth="1.3", color="#000000")
            if e.kind == "fuse-in":
                attrs["arrowhead"] = "none"
        if e.kind == "stem4":
            attrs.update(style="dotted", penwidth="1.4", arrowhead="none" if not v.startswith("head") else "normal")
            if e.label:
                attrs.update(label=e.label, fontcolor="#333333")
        if diff and e.sides != {"A", "B"}:
            side = next(iter(sorted(e.sides)))
            attrs.update(color=SIDE_COLORS[side], style=_SIDE_STYLE[side] if e.kind != "stem4" else "dotted")
            attrs["penwidth"] = _f(max(2.2, float(attrs.get("penwidth", "1.4"))))
        elif diff:
            attrs.setdefault("color", "#888888")
        if e.branches:
            attrs["tooltip"] = "branch" + ("es " if len(e.branches) > 1 else " ") + ", ".join(e.branches)
        g.edge(u, v, **attrs)


def _arch_facts(arch: Arch) -> str:
    n = len(arch.branches)
    head = ", ".join(str(s) for s in arch.head.strides)
    return (
        f"F={arch.filters} · {arch.layers} layers · {n} branch{'es' if n != 1 else ''} · "
        f"head ({head}) · output stride {arch.head.output_stride}"
    )


def _meta_line(arch: Arch) -> str:
    return " · ".join(f"{m.key} {_fmt_value(m.value)}" for m in arch.meta)


def _head_label(arch: Arch, tag: str = "") -> str:
    head = ", ".join(str(s) for s in arch.head.strides)
    return _box_label(f"head ({head})", f"output stride {arch.head.output_stride}", tag)


# ---------------------------------------------------------------------------------------
# Architectures


def _build(sides: list[tuple[str, Arch]]) -> _Grid:
    """The grid of one arch (one side, tag "") or of a diff (sides "A" and "B")."""
    order: list[str] = []
    for _tag, arch in sides:
        order += [b.name for b in arch.branches if b.name not in order]
    grid = _Grid(max(a.layers for _t, a in sides), order)
    maps = {tag: _cell_map(arch) for tag, arch in sides}
    diff = len(sides) == 2
    key: dict[tuple[str, str, int], str] = {}  # (side, branch, layer) -> box id

    # Each (side, branch, layer) is "common" (the other side has the same cell there: op,
    # width, down and input stride), "changed", or "only" (branch or layer missing there).
    entries = []
    for tag, arch in sides:
        where, data = maps[tag]
        for b in arch.branches:
            for layer in range(1, arch.layers + 1):
                n = where[(b.name, layer)]
                status, box_id = "", n
                if diff:
                    o_where, o_data = maps["B" if tag == "A" else "A"]
                    m = o_where.get((b.name, layer))
                    if m is None:
                        status, box_id = "only", f"{tag}/{n}"
                    elif _descriptor(o_data[m]) == _descriptor(data[n]):
                        a_n, b_n = (n, m) if tag == "A" else (m, n)
                        status, box_id = "common", f"{a_n}~{b_n}" if a_n != b_n else f"{a_n}~"
                    else:
                        status, box_id = "changed", f"{tag}/{n}"
                entries.append((tag, b.name, layer, n, status, box_id))
    # Common cells first, so that a branch only one side has still runs through the cells it
    # shares with common branches there (a shared prefix stays one box).
    common_box: dict[tuple[str, str], str] = {}
    for tag, _b, _l, n, status, box_id in entries:
        if status == "common":
            common_box.setdefault((tag, n), box_id)
    for tag, b, layer, n, status, box_id in sorted(entries, key=lambda e: e[4] != "common"):
        if status == "only" and (tag, n) in common_box:
            box_id = common_box[(tag, n)]
        d = maps[tag][1][n]
        key[(tag, b, layer)] = grid.box(
            _Box(
                id=box_id,
                layer=layer,
                stride=d["stride_out"],
                branches=(b,),
                op=d["op"].name,
                op_text=format_op(d["op"]),
                width=d["width"],
                down=d["down"],
                side="AB" if status == "common" else tag,
            )
        )

    heads_same = diff and sides[0][1].head == sides[1][1].head
    for tag, arch in sides:
        head_id = "head" if not diff or heads_same else f"head/{tag}"
        grid.heads.setdefault(head_id, {"arch": arch, "tag": "" if not diff or heads_same else tag})
        for b in arch.branches:
            path = ["stem"] + [key[(tag, b.name, layer)] for layer in range(1, arch.layers + 1)]
            for u, v in zip(path, path[1:]):
                grid.edge(u, v, branch=b.name, side=tag)
            grid.edge(path[-1], head_id, branch=b.name, side=tag, kind="head", label=b.name if len(order) > 1 else "")
        for fu in arch.fusions:
            gate = f"fuse/{fu.src}->{fu.dst}@{fu.after}"
            grid.gates.setdefault(gate, {"fusion": fu, "sides": set()})["sides"].add(tag)
            grid.edge(key[(tag, fu.src, fu.after)], gate, branch=None, side=tag, kind="fuse-in")
            grid.edge(gate, key[(tag, fu.dst, fu.after + 1)], branch=None, side=tag, kind="fuse-out")
        if arch.head.output_stride == 4:
            grid.edge("stem", "s4/a", branch=None, side=tag, kind="stem4")
            grid.edge("s4/a", "s4/b", branch=None, side=tag, kind="stem4", label="stride-4 features")
            grid.edge("s4/b", head_id, branch=None, side=tag, kind="stem4")
    return grid


def _render_arch(sides: list[tuple[str, Arch]], title: str, caption: list[str]) -> graphviz.Digraph:
    diff = len(sides) == 2
    grid = _build(sides)
    grid.place()
    L = grid.layers
    g = _new_digraph(title)
    head_x = (L + 1) * _COL + 0.9
    right = L * _COL + 0.5 + 0.08
    _grid_frame(g, grid, L, right)

    top8, last8 = grid.row_y[8]
    stem_boxes = [v for (u, v) in grid.edges if u == "stem" and v in grid.boxes]
    stem_y = sum(grid.boxes[v].y for v in stem_boxes) / len(stem_boxes) if stem_boxes else top8
    _render_grid(g, grid, diff=diff)
    g.node(
        "stem",
        label='<<B>stem</B><BR/><FONT POINT-SIZE="9">to stride 8</FONT>>',
        shape="box",
        style="filled,rounded",
        fillcolor="#DDDDDD",
        color="#333333",
        width="0.8",
        height=_f(_BOX_H),
        fixedsize="true",
        pos=_pos(0, stem_y),
    )

    # Heads: centred on the cells that feed them; a diff's two heads one above the other.
    heads = list(grid.heads.items())
    centres = []
    for head_id, _info in heads:
        ys = [grid.boxes[u].y for (u, v) in grid.edges if v == head_id and u in grid.boxes]
        centres.append(sum(ys) / len(ys) if ys else 0.0)
    if len(heads) == 2:
        mid = sum(centres) / 2
        centres = [mid + 0.45, mid - 0.45]
    for (head_id, info), hy in zip(heads, centres):
        tag = info["tag"]
        attrs = dict(shape="box", style="filled,rounded", fillcolor="#DDDDDD", color="#333333", penwidth="1")
        if tag:
            attrs.update(color=SIDE_COLORS[tag], penwidth="3", style=f"filled,rounded,{_SIDE_STYLE[tag]}")
        g.node(head_id, label=_head_label(info["arch"], tag), width="1.45", height="0.55" if not tag else "0.66", fixedsize="true", pos=_pos(head_x, hy), **attrs)
        info["y"] = hy

    # Fusion gates: half-way between the layers they join.
    for gate, info in grid.gates.items():
        fu = info["fusion"]
        ins = [u for (u, v) in grid.edges if v == gate]
        outs = [v for (u, v) in grid.edges if u == gate]
        ys = [grid.boxes[n].y for n in ins + outs]
        gy = sum(ys) / len(ys)
        if max(ys) - min(ys) < 0.3:  # same lane: lift the gate off the main edge
            gy += _LANE * 0.45
        gate_sides = info["sides"]
        color = "#000000"
        if diff and gate_sides != {"A", "B"}:
            color = SIDE_COLORS[min(gate_sides)]
        g.node(
            gate,
            label="",
            shape="diamond",
            style="filled",
            fillcolor=color,
            color=color,
            width="0.17",
            height="0.22",
            fixedsize="true",
            tooltip=f"fusion node: {fu.src} -> {fu.dst} after layer {fu.after}",
            pos=_pos((fu.after + 0.5) * _COL, gy),
        )

    # The stride-4 path of output stride 4 runs above the grid.
    if any(u == "stem" and v == "s4/a" for (u, v) in grid.edges):
        y4 = top8 + _BOX_H / 2 + 0.62
        g.node("s4/a", label="", shape="point", width="0.01", style="invis", pos=_pos(0, y4))
        g.node("s4/b", label="", shape="point", width="0.01", style="invis", pos=_pos(head_x, y4))

    ops = [o for o in OPS] + sorted({b.op for b in grid.boxes.values()} - set(OPS))
    extra = [
        ("↓2", "downsampling cell"),
        ("w8", "width 8/12"),
    ]
    if grid.gates:
        extra.append(("◆", "fusion node (gate, dashed)"))
    if len(grid.branch_order) > 1:
        extra.append(("━", "thicker: shared by more branches"))
    if any(e.kind == "stem4" for e in grid.edges.values()):
        extra.append(("┈", "stride-4 features"))
    if diff:
        extra = [
            (f'<FONT COLOR="{SIDE_COLORS["A"]}"><B>A</B></FONT>', f"only in A ({sides[0][1].name}), dashed"),
            (f'<FONT COLOR="{SIDE_COLORS["B"]}"><B>B</B></FONT>', f"only in B ({sides[1][1].name}), solid"),
            ("▢", "pale: the same in both"),
        ] + extra
    bottom = grid.row_y[grid.rows[-1]][1] - _BOX_H / 2 - 0.55
    g.node("legend", label=_legend_html(ops, extra), shape="plaintext", fontsize="10", pos=_pos((L + 1) * _COL / 2, bottom))
    g.attr("graph", label="<" + "<BR/>".join(caption) + ">", labelloc="b", labeljust="c", fontsize="13")
    return g


def draw(arch: Arch) -> graphviz.Digraph:
    """The Figure-4 diagram of one (validated) architecture."""
    caption = [f"<B>{_html(arch.name)}</B>  {_html(_arch_facts(arch))}"]
    meta = _meta_line(arch)
    if meta:
        caption.append(f'<FONT POINT-SIZE="11">{_html(meta)}</FONT>')
    return _render_arch([("", arch)], arch.name, caption)


def draw_diff(a: Arch, b: Arch) -> graphviz.Digraph:
    """Architectures ``a`` (A) and ``b`` (B) on one grid, differences highlighted.

    Branches are matched by name and cells by (branch, layer): a cell is unchanged when its
    op, width, ``down`` and input stride agree; fusion nodes by (src, dst, after); heads by
    their strides and output stride. Everything else is drawn once per side, in that side's
    colour and line style (A dashed, B solid) with an A/B tag.
    """
    caption = []
    for tag, arch in (("A", a), ("B", b)):
        meta = _meta_line(arch)
        caption.append(
            f'<FONT COLOR="{SIDE_COLORS[tag]}"><B>{tag}</B></FONT> <B>{_html(arch.name)}</B>  {_html(_arch_facts(arch))}'
            + (f'<FONT POINT-SIZE="11">  ({_html(meta)})</FONT>' if meta else "")
        )
    return _render_arch([("A", a), ("B", b)], f"{a.name}_vs_{b.name}", caption)


def diff_cells(a: Arch, b: Arch) -> list[tuple[str, str, int]]:
    """The (side, branch, layer) of every cell :func:`draw_diff` highlights."""
    grid = _build([("A", a), ("B", b)])
    out = []
    for box in grid.boxes.values():
        if box.side in ("A", "B"):
            out += [(box.side, br, box.layer) for br in box.branches]
    return sorted(out)


# ---------------------------------------------------------------------------------------
# Search spaces


def draw_space(space: Space) -> graphviz.Digraph:
    """The Figure-1 view of a search space: every candidate cell C_s^l on the grid, the
    nodes N_s^l between layers (the binary fusion gates), stem and heads, and the space's
    choices listed underneath."""
    L = space.layers
    strides = sorted(space.strides)
    col = 0.72
    g = _new_digraph(space.name)
    row_gap = 1.0
    row_y = {s: -i * row_gap for i, s in enumerate(strides)}
    first = {s: int(round(math.log2(s / strides[0]))) for s in strides}  # earliest layer a stride is reachable
    first = {s: max(1, v) for s, v in first.items()}
    right = L * col + 0.4
    for i, s in enumerate(strides):
        y = row_y[s]
        x0 = first[s] * col - 0.4
        _band(g, f"row{s}", x0, right, y + 0.36, y - 0.36, "#F3F3F3" if i % 2 == 0 else "#E9E9E9")
        g.node(f"row{s}_name", label=f"<<B>stride {s}</B><BR/><FONT POINT-SIZE=\"9\">1/{s} resolution</FONT>>", shape="plaintext", pos=_pos(-1.3, y))
    top = row_y[strides[0]] + 0.6
    for layer in range(1, L + 1):
        g.node(f"L{layer}", label=str(layer), shape="plaintext", fontsize="9", fontcolor="#555555", width="0.2", height="0.2", pos=_pos(layer * col, top))
    g.node("layers_title", label="layer", shape="plaintext", fontsize="9", fontcolor="#555555", pos=_pos(-1.3, top))

    strip = "".join(f'<TD BGCOLOR="{op_color(o)}" WIDTH="5" HEIGHT="16" FIXEDSIZE="TRUE"></TD>' for o in space.ops)
    cell_label = f'<<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="0"><TR>{strip}</TR></TABLE>>'
    g.node(
        "stem",
        label='<<B>stem</B><BR/><FONT POINT-SIZE="9">to stride 8</FONT>>',
        shape="box",
        style="filled,rounded",
        fillcolor="#DDDDDD",
        width="0.7",
        height="0.44",
        fixedsize="true",
        pos=_pos(0, row_y[strides[0]]),
    )
    for layer in range(1, L + 1):
        for s in strides:
            if layer < first[s]:
                continue
            g.node(
                f"C{s}_{layer}",
                label=cell_label,
                shape="box",
                style="filled,rounded",
                fillcolor="white",
                color="#333333",
                width="0.42",
                height="0.34",
                fixedsize="true",
                margin="0",
                tooltip=f"cell C_{s}^{layer}: layer {layer}, stride {s}; ops {' '.join(space.ops)}; widths {' '.join('w' + str(w) for w in space.widths)}",
                pos=_pos(layer * col, row_y[s]),
            )
    for layer in range(1, L):
        for s in strides:
            if layer < first[s]:
                continue
            g.node(
                f"N{s}_{layer}",
                label="",
                shape="diamond",
                style="filled",
                fillcolor="#000000",
                width="0.13",
                height="0.17",
                fixedsize="true",
                tooltip=f"node N_{s}^{layer}: fusion gate after layer {layer} at stride {s}",
                pos=_pos((layer + 0.5) * col, row_y[s]),
            )
    heads = " ".join("(" + ",".join(str(s) for s in h) + ")" for h in space.heads)
    head_lines = [" ".join("(" + ",".join(str(s) for s in h) + ")" for h in space.heads[i : i + 3]) for i in range(0, len(space.heads), 3)]
    g.node(
        "head",
        label=f'<<B>head θ</B><BR/><FONT POINT-SIZE="9">{"<BR/>".join(_html(h) for h in head_lines)}</FONT><BR/><FONT POINT-SIZE="9">output stride {" or ".join(str(o) for o in space.output_strides)}</FONT>>',
        shape="box",
        style="filled,rounded",
        fillcolor="#DDDDDD",
        width="1.55",
        height="0.8",
        fixedsize="true",
        pos=_pos((L + 1) * col + 0.75, sum(row_y.values()) / len(row_y)),
    )

    # Cells and nodes alternate (section 3.2); from a node the next cell keeps the stride or
    # downsamples by 2; nodes of one layer may fuse any rows (dashed verticals).
    def keep_or_down(src: str, layer: int, s: int) -> None:
        g.edge(src, f"C{s}_{layer}", penwidth="1.1")
        if 2 * s in row_y:
            g.edge(src, f"C{2 * s}_{layer}", penwidth="1.1")

    keep_or_down("stem", 1, strides[0])
    for layer in range(1, L):
        for s in strides:
            if layer < first[s]:
                continue
            g.edge(f"C{s}_{layer}", f"N{s}_{layer}", arrowhead="none", penwidth="1.1")
            keep_or_down(f"N{s}_{layer}", layer + 1, s)
        live = [s for s in strides if layer >= first[s]]
        for s1, s2 in zip(live, live[1:]):
            g.edge(f"N{s1}_{layer}", f"N{s2}_{layer}", dir="none", style="dashed", penwidth="1.1", color="#000000")
    for s in strides:
        g.edge(f"C{s}_{L}", "head", penwidth="1.1")

    # The choices, listed once.
    def row(k: str, v: str) -> str:
        return f'<TR><TD ALIGN="RIGHT"><B>{_html(k)}</B></TD><TD ALIGN="LEFT">{v}</TD></TR>'

    op_row = _op_swatches(list(space.ops)) + "   (left to right in each strip)"
    prior = ", ".join(f"{i + 1}: {p:g}" for i, p in enumerate(space.branch_prior))
    rows = [
        row("cell C", "one op per cell (the colour strip), a width, keep the stride or downsample ×2 (never skip)"),
        row("ops", op_row),
        row("widths", _html(" ".join(f"w{w}" for w in space.widths) + "  (twelfths: round(s·F·w/12) channels)")),
        row("node N", "◆ binary gate after each layer: fuses another branch's features (dashed)"),
        row("filters F", _html(" ".join(str(f) for f in space.filters))),
        row("branches", _html(f"1 to {space.max_branches}, sampled with prior {prior} (eq. 2)")),
        row("heads θ", _html(heads)),
    ]
    if space.memory is not None:
        m = space.memory
        rows.append(row("memory", _html(f"≤ {_bytes(m.bytes)} at batch {m.batch}, crop {m.crop[0]}x{m.crop[1]} (constraint 4)")))
    table = '<<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="2">' + "".join(rows) + "</TABLE>>"
    bottom = row_y[strides[-1]] - 0.45
    g.node("choices", label=table, shape="plaintext", fontsize="10", pos=_pos(L * col / 2, bottom - 1.0))
    g.attr(
        "graph",
        label=f"<<B>space {_html(space.name)}</B>  {L} layers · strides {_html(' '.join(str(s) for s in strides))} · {len(space.ops)} ops · {len(space.widths)} widths>",
        labelloc="b",
        fontsize="13",
    )
    return g


def _bytes(n: int) -> str:
    for unit, k in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= k and n % k == 0:
            return f"{n // k} {unit}"
    return f"{n} B"
