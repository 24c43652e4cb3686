"""Is the from-scratch ground truth trained long enough? The learning curve of the ranking
benchmark's subnets (bench_search_quality.py, section 2) over from-scratch budgets.

A ranking is only as good as what it is compared with. The paper (HyCTAS, section 4.5,
"Correlation Analysis") trains each sampled subnet 40,000 iterations from scratch, a fifth of
its final schedule, which its Table 9 shows is close to converged. Here a budget is long
enough when doubling it moves the median subnet by less than the seed-to-seed sd: then the
ground truth ranks what an architecture can reach, not how fast it starts to learn.

    .venv/bin/python bench/bench_scratch_budget.py --budgets 1800,3600,7200 \\
        --subnets b1_0,b1_4,b2_2,b2_4,b3_1,b3_4 --seeds 1

Every run is kept in the same cache as bench_search_quality.py (same key), so a budget
adopted there reuses what this trained. Trainings run ``--jobs`` at a time, one CPU thread
each.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_search_quality import fmt, ranking_subnets, scratch_miou  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="digits")
    ap.add_argument("--space", default="digits", help="space file, or the name of a shipped one")
    ap.add_argument("--budgets", default="1800,3600,7200", help="comma list of from-scratch steps (batch 8)")
    ap.add_argument("--subnets", default="", help="comma list of ranking subnets (b1_0, ...); default: all of them")
    ap.add_argument("--per-branch", type=int, default=6, help="ranking subnets per branch count (as bench_search_quality)")
    ap.add_argument("--seeds", type=int, default=2, help="from-scratch seeds per subnet and budget")
    ap.add_argument("--optimizer", default="adamw")
    ap.add_argument("--lr", type=float, default=0.003)
    ap.add_argument("--val-images", type=int, default=500)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default="runs/bench-scratch-cache")
    args = ap.parse_args()

    import hyctas_dsl as hy
    from hyctas_dsl.jobs.common import resolve_space

    t0 = time.perf_counter()
    budgets = [int(b) for b in args.budgets.split(",")]
    subnets = ranking_subnets(resolve_space(args.space), args.per_branch, args.seed)
    if args.subnets:
        want = args.subnets.split(",")
        unknown = sorted(set(want) - {a.name for a in subnets})
        if unknown:
            print(f"bench_scratch_budget: no ranking subnet {', '.join(unknown)} (have b1_0 .. "
                  f"b3_{args.per_branch - 1})", file=sys.stderr)
            return 2
        subnets = [a for a in subnets if a.name in want]
    tmp = Path(tempfile.mkdtemp(prefix="hyctas-budget-"))
    pool = ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn"))
    futs = {}
    for steps in budgets:  # the shortest budget first: its column fills first
        for a in subnets:
            text = hy.dumps(a.model_copy(update={"meta": ()}))
            for s in range(args.seeds):
                futs[a.name, steps, s] = pool.submit(scratch_miou, (
                    text, args.data, str(tmp / f"{a.name}_{steps}_s{s}"), steps, args.optimizer, args.lr, s,
                    args.val_images, args.cache))

    print(f"# from-scratch budget on `{args.data}`: batch 8, {args.optimizer} lr {args.lr}, "
          f"{args.val_images} validation images; mIoU (%)"
          + (f", mean ± sd over {args.seeds} seeds\n" if args.seeds > 1 else ", one seed\n"))
    print("| subnet | head / output stride | " + " | ".join(f"{b} steps" for b in budgets) + " |")
    print("|---|---|" + "---:|" * len(budgets))
    res: dict[tuple[str, int], list[float]] = {}
    for a in subnets:
        cells = []
        for steps in budgets:
            vals = res[a.name, steps] = [futs[a.name, steps, s].result() for s in range(args.seeds)]
            cells.append(fmt(statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else None))
        head = "(" + ", ".join(map(str, a.head.strides)) + f") / {a.head.output_stride}"
        print(f"| {a.name} | {head} | " + " | ".join(cells) + " |", flush=True)
    pool.shutdown()

    med = {b: statistics.median(statistics.mean(res[a.name, b]) for a in subnets) for b in budgets}
    print("| median | | " + " | ".join(fmt(med[b]) for b in budgets) + " |")
    if args.seeds > 1:
        sds = {b: statistics.median(statistics.stdev(res[a.name, b]) for a in subnets) for b in budgets}
        print("| median seed sd | | " + " | ".join(fmt(sds[b]) for b in budgets) + " |")
    print()
    for lo, hi in zip(budgets, budgets[1:]):
        gains = [statistics.mean(res[a.name, hi]) - statistics.mean(res[a.name, lo]) for a in subnets]
        print(f"- {lo} -> {hi} steps: median subnet gain {fmt(statistics.median(gains))} pt "
              f"(min {fmt(min(gains))}, max {fmt(max(gains))})")
    print(f"\n(bench wall time {time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
