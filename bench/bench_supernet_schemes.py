"""Supernet training schemes side by side on the embedded digits: for each scheme, train a
supernet for the same wall-clock budget, then score the same sampled subnets (4 per branch
count) on its weights after BatchNorm recalibration. Run on purpose, not in CI (each scheme
takes ``--minutes`` plus about a minute of evaluation on a 2-core CPU).

    .venv/bin/python bench/bench_supernet_schemes.py --minutes 4
    .venv/bin/python bench/bench_supernet_schemes.py --schemes paper,paper+balance --minutes 4

Schemes (``hyctas train-supernet --scheme/--distill/--branch-balance``):

* ``paper``: one subnet per step, branch count from the prior 0.2 / 0.3 / 0.5 (section 4.2);
* ``paper+balance``: one subnet per step, branch counts in turn 1, 2, 3, 1, ...;
* ``sandwich``: largest + smallest + 2 random subnets per step (BigNAS), labels only;
* ``sandwich+distill``: the same with in-place distillation from the largest (weight 0.5);
* ``paper+per-head``, ``paper+balance+per-head``: one classifier per head (theta) instead of
  one per output stride shared by every head.

Also printed: how many steps each (head, output stride) got, since a head's own weights
learn only in the steps that sample it.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SCHEMES = {
    "paper": dict(scheme="paper", branch_balance=False),
    "paper+balance": dict(scheme="paper", branch_balance=True),
    "sandwich": dict(scheme="sandwich", branch_balance=True, distill=0.0),
    "sandwich+distill": dict(scheme="sandwich", branch_balance=True, distill=0.5),
    "paper+balance+per-head": dict(scheme="paper", branch_balance=True, shared_classifier=False),
    "paper+per-head": dict(scheme="paper", branch_balance=False, shared_classifier=False),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--schemes", default="paper,paper+balance,sandwich+distill,paper+per-head")
    ap.add_argument("--minutes", type=float, default=4.0, help="training budget per scheme (wall clock)")
    ap.add_argument("--steps", type=int, default=None, help="a fixed number of steps per scheme instead of --minutes")
    ap.add_argument("--data", default="digits")
    ap.add_argument("--per-branch", type=int, default=4)
    ap.add_argument("--val-images", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from hyctas_dsl.compiler.checkpoint import load_supernet
    from hyctas_dsl.data import make_datasets
    from hyctas_dsl.data.metrics import miou_of
    from hyctas_dsl.search.genome import sample_arch
    from hyctas_dsl.jobs.common import resolve_space
    from hyctas_dsl.jobs.config import SupernetConfig
    from hyctas_dsl.jobs.candidate_eval import CandidateEvaluator
    from hyctas_dsl.jobs.schemes import step_subnets
    from hyctas_dsl.jobs.supernet_training import train_supernet

    names = [s for s in args.schemes.split(",") if s]
    unknown = [s for s in names if s not in SCHEMES]
    if unknown:
        print(f"bench_supernet_schemes: unknown scheme {unknown[0]!r}; choose from {', '.join(SCHEMES)}", file=sys.stderr)
        return 2
    train_set, val_set = make_datasets(args.data, seed=args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="hyctas-schemes-"))
    rows = []
    for name in names:
        out = tmp / name
        # one process, so that schemes compare step for step (--threads sets its threads)
        base = SupernetConfig(out=str(out), data=args.data, seed=args.seed, procs=1, **SCHEMES[name]).resolved()
        if args.steps:
            steps = args.steps
        else:  # the budget in steps: time 20 steps of this scheme, then fill the minutes
            probe = train_supernet(base.model_copy(update={"steps": 20, "out": str(tmp / f"{name}-probe")}), progress=False)
            steps = max(20, int(args.minutes * 60 / (probe.seconds / 20)))
        cfg = base.model_copy(update={"steps": steps})
        t0 = time.perf_counter()
        train_supernet(cfg, progress=False)
        seconds = time.perf_counter() - t0
        supernet = load_supernet(out / "supernet.safetensors")
        space = resolve_space(cfg.space)
        ev = CandidateEvaluator(supernet, train_set, val_set, 256, args.val_images, args.seed, torch.device("cpu"))
        rng = np.random.default_rng([args.seed, 7])
        res = collections.defaultdict(list)
        for nb in range(1, space.max_branches + 1):
            for i in range(args.per_branch):
                r = ev(sample_arch(space, rng, n_branches=nb, name=f"b{nb}_{i}"))
                res[nb].append((r["miou"], r["miou_sd"]))
        heads = collections.Counter()
        for k in range(steps):
            for s in step_subnets(space, cfg, k):
                heads[(tuple(s.arch.head.strides), s.arch.head.output_stride)] += 1
        rows.append((name, steps, seconds, res, heads))
        print(f"{name}: {steps} steps in {seconds:.0f} s", file=sys.stderr, flush=True)

    floor_cm = np.zeros((11, 11), np.int64)
    for i in range(min(args.val_images, len(val_set))):
        y = val_set.get(i, 0)[1]
        floor_cm[:, 0] += np.bincount(y[y != 255].numpy().astype(np.int64), minlength=11)[:11]
    budget = f"{args.steps} steps" if args.steps else f"{args.minutes:g} min of training"
    print(f"# supernet schemes on `{args.data}`: {budget} each, {args.threads} threads; "
          f"mIoU (%) on the supernet's weights of {args.per_branch} sampled subnets per branch count "
          f"(the same subnets for every scheme), {args.val_images} validation images; background floor "
          f"{100 * miou_of(floor_cm):.1f}\n")
    nbs = sorted(rows[0][3])
    print("| scheme | steps | " + " | ".join(f"{nb} branch{'es' * (nb > 1)}: median (min-max)" for nb in nbs) + " | bootstrap sd |")
    print("|---|---:|" + "---|" * len(nbs) + "---:|")
    for name, steps, _s, res, _h in rows:
        cells = []
        for nb in nbs:
            ms = [m for m, _ in res[nb]]
            cells.append(f"{100 * statistics.median(ms):.1f} ({100 * min(ms):.1f}-{100 * max(ms):.1f})")
        sd = statistics.median(sd for nb in nbs for _, sd in res[nb])
        print(f"| {name} | {steps} | " + " | ".join(cells) + f" | {100 * sd:.1f} |")
    print("\nSubnets trained per (head, output stride), all subnets of every step counted:\n")
    keys = sorted({k for *_x, h in rows for k in h}, key=lambda k: (len(k[0]), k[0], k[1]))
    print("| scheme | " + " | ".join(f"({', '.join(map(str, k[0]))})/{k[1]}" for k in keys) + " |")
    print("|---|" + "---:|" * len(keys))
    for name, *_x, heads in rows:
        print(f"| {name} | " + " | ".join(str(heads.get(k, 0)) for k in keys) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
