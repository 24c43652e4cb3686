"""The cost report as a readable table (``hyctas compile``); torch-free."""

from __future__ import annotations

from hyctas_dsl.model.cost import Cost, CostReport

__all__ = ["format_report", "human"]


def human(n: float) -> str:
    """1234567 -> '1.23M'."""
    for unit, k in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= k:
            return f"{n / k:.2f}{unit}"
    return f"{n:.0f}"


def _mb(elements: int) -> str:
    return f"{elements * 4 / 2**20:.1f}"


def _line(cols, widths) -> str:
    return "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(cols, widths)))


def _table(header: list[str], rows: list[list]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    out = [_line(header, widths), _line(["-" * w for w in widths], widths)]
    return out + [_line(r, widths) for r in rows]


def format_report(rep: CostReport, cells: bool = True) -> str:
    """Per part, per branch and per cell: params, GMACs and activation MB (float32, one
    image, training forward). MACs count every conv and both attention matmuls."""
    t = rep.total
    h, w = rep.input
    out = [f"arch {rep.arch}: input 1x3x{h}x{w}, {rep.classes} classes",
           f"total: {t.params:,} params ({human(t.params)}), {t.macs / 1e9:.3f} GMACs, {_mb(t.act)} MB activations", ""]

    def row(name: str, c: Cost) -> list:
        return [name, f"{c.params:,}", f"{c.macs / 1e9:.3f}", _mb(c.act)]

    head = ["part", "params", "GMACs", "act MB"]
    parts = rep.by_part()
    out += _table(head, [row(k, parts[k]) for k in ("stem", "cell", "fusion", "head") if k in parts] + [row("total", t)])
    out.append("")
    out += _table(["branch (shared cells counted in each)", "params", "GMACs", "act MB"],
                  [row(b, c) for b, c in rep.by_branch().items()])
    if cells:
        out.append("")
        rows = []
        for r in rep.rows:
            rows.append([
                r.node,
                "" if r.layer is None else r.layer,
                r.op,
                f"{r.stride_in}->{r.stride_out}",
                f"{r.c_in}->{r.c_out}",
                f"{r.cost.params:,}",
                f"{r.cost.macs / 1e9:.3f}",
                _mb(r.cost.act),
                ",".join(r.branches) if r.part == "cell" else "",
            ])
        out += _table(["node", "layer", "op", "stride", "channels", "params", "GMACs", "act MB", "branches"], rows)
    return "\n".join(out)
