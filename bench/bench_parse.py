"""Front-end speed: parse + validate + print of archs/hyctas_l.hy (3 branches x 20 layers).

The search does this for thousands of candidates; the target is a median of at most 2 ms and
a p90 of at most 3 ms for the whole pipeline. Each stage is timed on its own, many times, interleaved in one
loop so that the machine's load affects every row alike; the table gives median and p90.

    .venv/bin/python bench/bench_parse.py [--runs 500] [--file archs/hyctas_l.hy]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

from hyctas_dsl.language.api import canonical_key
from hyctas_dsl.model.cost import training_memory
from hyctas_dsl.language.parser import parse
from hyctas_dsl.language.printer import dumps
from hyctas_dsl.language.spaces import paper_space
from hyctas_dsl.language.validate import check_module

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=500)
    ap.add_argument("--file", default=str(ROOT / "archs" / "hyctas_l.hy"))
    args = ap.parse_args()

    text = Path(args.file).read_text(encoding="utf-8")
    space = paper_space()
    module = parse(text, args.file)
    assert check_module(module, space) == [], "the benchmark file must be valid"
    arch = module.archs[0]
    mem = space.memory

    stages = {
        "parse": lambda: parse(text, args.file),
        "validate (all rules)": lambda: check_module(module, space),
        "  of which memory estimate": lambda: training_memory(arch, mem.batch, mem.crop),
        "print (dumps)": lambda: dumps(module),
        "canonical_key": lambda: canonical_key(arch),
    }

    def pipeline() -> None:
        m = parse(text, args.file)
        check_module(m, space)
        dumps(m)
        for a in m.archs:
            canonical_key(a)

    stages["total: parse+validate+print+key"] = pipeline

    for f in stages.values():  # warm up: the cached parser, imports, pydantic schemas
        for _ in range(10):
            f()
    times: dict[str, list[float]] = {name: [] for name in stages}
    for _ in range(args.runs):
        for name, f in stages.items():
            t0 = time.perf_counter_ns()
            f()
            times[name].append((time.perf_counter_ns() - t0) / 1e6)

    n_cells = sum(len(b.cells) for b in arch.branches)
    print(f"file: {os.path.relpath(args.file)} ({len(arch.branches)} branches x {arch.layers} layers, "
          f"{n_cells} cells, {len(text)} bytes); {args.runs} runs per stage")
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cpus, "
          f"load average {os.getloadavg()[0]:.2f}")
    print()
    width = max(len(n) for n in stages)
    print(f"| {'stage':<{width}} | median ms | p90 ms |")
    print(f"|{'-' * (width + 2)}|----------:|-------:|")
    for name, ts in times.items():
        ts = sorted(ts)
        p90 = ts[min(len(ts) - 1, int(0.9 * len(ts)))]
        print(f"| {name:<{width}} | {statistics.median(ts):9.3f} | {p90:6.3f} |")
    total = sorted(times["total: parse+validate+print+key"])
    med, p90 = statistics.median(total), total[min(len(total) - 1, int(0.9 * len(total)))]
    print()
    print(f"target: median <= 2 ms: {'met' if med <= 2 else 'NOT met'} ({med:.2f} ms); "
          f"p90 <= 3 ms: {'met' if p90 <= 3 else 'NOT met'} ({p90:.2f} ms)")


if __name__ == "__main__":
    main()
