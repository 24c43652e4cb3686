"""The search's outputs: the Pareto front as .hy source files with their measured facts in
``meta``, a table of every evaluated candidate, and the Figure-3 plot."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Sequence

from hyctas_dsl.language.ast import Arch, MetaEntry, Module, Space
from hyctas_dsl.language.printer import dumps
from hyctas_dsl.fileio import atomic_path, write_text_atomic

__all__ = ["OBJECTIVES", "with_meta", "write_front", "write_candidates", "plot_pareto", "pareto_mask"]

# objective name -> (record field, axis label, scale to the unit shown)
OBJECTIVES = {
    "latency": ("latency_ms", "latency (ms)", 1.0),
    "flops": ("macs", "GMACs", 1e-9),
    "params": ("params", "params (M)", 1e-6),
}

CSV_FIELDS = ["search", "generation", "branches", "status", "miou", "miou_sd", "latency_ms", "latency_fastest_ms", "latency_cv",
              "latency_predicted_fastest_ms", "macs", "params", "on_front", "file", "key", "latency_protocol"]


def pareto_mask(points: Sequence[tuple[float, float]]) -> list[bool]:
    """Non-dominated points for (maximise mIoU, minimise cost); ties keep the first."""
    out = []
    for i, (m, c) in enumerate(points):
        dominated = any(
            (m2 >= m and c2 <= c and (m2 > m or c2 < c)) or (j < i and m2 == m and c2 == c)
            for j, (m2, c2) in enumerate(points)
            if j != i
        )
        out.append(not dominated)
    return out


def with_meta(arch: Arch, record: dict, name: str, extra: dict | None = None) -> Arch:
    """``arch`` renamed, with its measured facts as ``meta`` (not part of its identity)."""
    # with --metric pq the search's accuracy (`miou` in its records) is PQ: write both by name
    miou = record["semantic_miou"] if "pq" in record else record["miou"]
    facts: list[tuple[str, object]] = [
        *([("pq", round(float(record["pq"]), 6))] if "pq" in record else []),
        ("miou", round(float(miou), 6)),
        *([("miou_sd", round(float(record["miou_sd"]), 6))] if record.get("miou_sd") is not None else []),
        ("gmacs", round(record["macs"] / 1e9, 6)),
        ("params", int(record["params"])),
    ]
    if "latency_ms" in record:
        facts.append(("latency_ms", round(float(record["latency_ms"]), 4)))
        facts.append(("latency_protocol", str(record["latency_protocol"])))
    facts.append(("generation", int(record["generation"])))
    for k, v in (extra or {}).items():
        facts.append((k, v))
    return arch.model_copy(update={"name": name, "meta": tuple(MetaEntry(key=k, value=v) for k, v in facts)})


def write_front(out: Path, members: list[tuple[Arch, dict]], extra: dict | None = None, space: Space | None = None) -> list[Path]:
    """One canonical .hy file per Pareto member, named by branch count and rank. With
    ``space``, each file declares that space before the arch, so the file is self-describing:
    ``hyctas validate``/``compile``/``draw``/``train`` check the arch against its own space
    (a file's only space is its archs' space) with no ``--space`` flag."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    counters: dict[int, int] = {}
    for arch, rec in sorted(members, key=lambda m: (len(m[0].branches), -m[1]["miou"])):
        nb = len(arch.branches)
        counters[nb] = counters.get(nb, 0) + 1
        name = f"searched_b{nb}_{counters[nb]:02d}"
        path = out / f"{name}.hy"
        header = "# Found by `hyctas search`; meta holds what was measured on the supernet's weights.\n"
        member = with_meta(arch, rec, name, extra)
        text = dumps(Module(decls=(space, member)) if space is not None else member)
        first, rest = text.split("\n", 1)
        write_text_atomic(path, first + "\n\n" + header + rest.lstrip("\n"))
        rec["file"] = path.name
        paths.append(path)
    return paths


def write_candidates(path: Path, records: list[dict]) -> None:
    buf = io.StringIO()
    fields = list(CSV_FIELDS)
    if any("pq" in r for r in records):  # --metric pq: PQ was the accuracy (`miou` in the records)
        fields.insert(fields.index("miou"), "pq")
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in records:
        row = {k: r.get(k, "") for k in fields}
        if "pq" in r:
            row["miou"] = r.get("semantic_miou", "")
        w.writerow(row)
    write_text_atomic(path, buf.getvalue())


def plot_pareto(path: Path, records: list[dict], objective: str, title: str) -> None:
    """Figure 3: objective vs mIoU, colour from light to dark by generation, the front drawn
    per branch count, markers by branch count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    field, label, scale = OBJECTIVES[objective]
    markers = {1: "o", 2: "s", 3: "^"}
    gens = [r["generation"] for r in records] or [0]
    fig, ax = plt.subplots(figsize=(7, 4.8), dpi=130)
    sc = None
    for nb in sorted({r["branches"] for r in records}):
        rs = [r for r in records if r["branches"] == nb and field in r]
        if not rs:
            continue
        xs = [r[field] * scale for r in rs]
        ys = [r["miou"] * 100 for r in rs]
        sc = ax.scatter(xs, ys, c=[r["generation"] for r in rs], cmap="Blues", vmin=min(gens) - 1, vmax=max(gens),
                        marker=markers.get(nb, "o"), edgecolors="0.3", linewidths=0.4, s=36, label=f"{nb} branch{'es' * (nb > 1)}")
        front = sorted((x, y) for (x, y), on in zip(zip(xs, ys), pareto_mask([(y, x) for x, y in zip(xs, ys)])) if on)
        if front:
            fx, fy = zip(*front)
            ax.step(fx, fy, where="post", color="0.15", linewidth=1.2)
    if sc is not None:
        fig.colorbar(sc, ax=ax, label="generation", ticks=range(min(gens), max(gens) + 1))
    ax.set_xlabel(label)
    ax.set_ylabel("mIoU (%) on the supernet's weights")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
