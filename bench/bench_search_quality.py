"""Search evidence on the embedded digits data (run on purpose, not in CI).

1. Ranking fidelity, the paper's Table 1: sample subnets, train each from scratch, and
   compare with the supernet's estimate (mIoU after BN recalibration): Pearson rho and
   Kendall tau (paper: 0.79 and 0.58).
2. Searched vs random, the paper's Table 7: per branch count, the best architecture of a
   search's Pareto front against random ones of the same branch count, all retrained from
   scratch with the same budget: GMACs, params, mIoU.
3. Search cost: where the demo search's time went (from its summary.json).

    .venv/bin/python bench/bench_search_quality.py --search runs/demo [--subnets 10 --random 5 --steps 300]

``--search`` is the output directory of ``hyctas search`` (its supernet is in
``DIR/supernet`` unless ``--supernet`` says otherwise).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--search", default="runs/demo", help="output directory of `hyctas search`")
    ap.add_argument("--supernet", default=None, help="supernet run directory (default: SEARCH/supernet)")
    ap.add_argument("--data", default="digits")
    ap.add_argument("--subnets", type=int, default=10, help="subnets for the ranking (the paper: 10)")
    ap.add_argument("--random", type=int, default=5, help="random archs per branch count (the paper: 5)")
    ap.add_argument("--steps", type=int, default=600, help="from-scratch training steps per arch")
    ap.add_argument("--optimizer", default="adamw", help="from-scratch optimizer (sgd is the paper's; it needs far more steps)")
    ap.add_argument("--lr", type=float, default=0.003, help="from-scratch poly lr (the paper: SGD 0.005 for 186k steps)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip", default="", help="comma list of parts to skip: ranking,random")
    args = ap.parse_args()
    torch.set_num_threads(2)

    import hyctas_dsl as hy
    from hyctas_dsl.compiler.checkpoint import load_supernet
    from hyctas_dsl.cost import arch_cost
    from hyctas_dsl.data import make_datasets
    from hyctas_dsl.genome import sample_arch
    from hyctas_dsl.run.candidate_eval import CandidateEvaluator
    from hyctas_dsl.run.retrain import TrainConfig, train

    search_dir = Path(args.search)
    sn_path = Path(args.supernet or search_dir / "supernet") / "supernet.safetensors"
    supernet = load_supernet(sn_path)
    space = supernet.space
    train_set, val_set = make_datasets(args.data, seed=args.seed)
    size = tuple(val_set.get(0, 0)[0].shape[-2:])
    evaluator = CandidateEvaluator(supernet, train_set, val_set, 128, 256, args.seed, torch.device("cpu"))
    tmp = Path(tempfile.mkdtemp(prefix="hyctas-bench-"))
    skip = set(args.skip.split(","))
    t_all = time.perf_counter()

    def scratch(arch, tag: str) -> float:
        cfg = TrainConfig(data=args.data, out=str(tmp / tag), steps=args.steps, optimizer=args.optimizer, lr=args.lr, seed=args.seed, eval_images=256)
        return float(train(cfg, arch, progress=False).miou)

    print(f"# search quality on `{args.data}`: supernet {sn_path}, from-scratch budget {args.steps} steps "
          f"(batch {TrainConfig().batch}, {args.optimizer} lr {args.lr}); {torch.get_num_threads()} CPU threads\n")

    if "ranking" not in skip:
        rng = np.random.default_rng([args.seed, 7])
        est, true = [], []
        print("## 1. Ranking fidelity (paper Table 1: rho 0.79, tau 0.58)\n")
        print("| subnet | branches | supernet mIoU | from-scratch mIoU |")
        print("|---|---:|---:|---:|")
        for i in range(args.subnets):
            arch = sample_arch(space, rng, name=f"subnet{i}")
            e = evaluator(arch)["miou"]
            t = scratch(arch, f"rank{i}")
            est.append(e)
            true.append(t)
            print(f"| {i} | {len(arch.branches)} | {100 * e:.1f} | {100 * t:.1f} |", flush=True)
        from scipy.stats import kendalltau, pearsonr

        # A correlation with a (near) constant side is noise, not a ranking: say so.
        if min(np.ptp(est), np.ptp(true)) < 1e-3:
            side = "from-scratch" if np.ptp(true) < 1e-3 else "supernet"
            print(f"\nundefined: every {side} mIoU is the same (no subnet learned beyond background); "
                  "train longer (--steps) or the supernet longer\n")
        else:
            rho = pearsonr(est, true)[0]
            tau = kendalltau(est, true)[0]
            print(f"\nPearson rho = {rho:.2f}, Kendall tau = {tau:.2f} over {args.subnets} subnets\n")

    if "random" not in skip:
        print("## 2. Searched vs random (paper Table 7)\n")
        print("| branches | arch | GMACs | params (K) | mIoU from scratch |")
        print("|---:|---|---:|---:|---:|")
        rng = np.random.default_rng([args.seed, 8])
        for nb in (1, 2, 3):
            files = sorted(search_dir.glob(f"searched_b{nb}_*.hy"))
            if not files:
                print(f"| {nb} | (no searched arch in {search_dir}) | | | |")
                continue
            archs = [hy.load(f, space=space).archs[0] for f in files]
            best = max(archs, key=lambda a: a.meta_dict().get("miou", 0.0))
            rows = [("searched", best)] + [(f"random {k + 1}", sample_arch(space, rng, n_branches=nb)) for k in range(args.random)]
            rand = []
            for label, arch in rows:
                c = arch_cost(arch, size, supernet.classes).total
                m = scratch(arch, f"b{nb}_{label.replace(' ', '')}")
                if label != "searched":
                    rand.append((c.macs, c.params, m))
                print(f"| {nb} | {label} | {c.macs / 1e9:.4f} | {c.params / 1e3:.1f} | {100 * m:.1f} |", flush=True)
            print(f"| {nb} | random, mean of {len(rand)} | {statistics.mean(r[0] for r in rand) / 1e9:.4f} | "
                  f"{statistics.mean(r[1] for r in rand) / 1e3:.1f} | {100 * statistics.mean(r[2] for r in rand):.1f} |")
        print()

    summary = search_dir / "summary.json"
    if summary.exists():
        t = json.loads(summary.read_text())["timings_s"]
        total = t.get("supernet_training", 0.0) + t.get("search_total", 0.0)
        print("## 3. Search cost (the demo search's summary.json)\n")
        print("| part | seconds | share |")
        print("|---|---:|---:|")
        for k in ("supernet_training", "bn_recalibration", "evaluation", "latency_measurement", "compile", "cost_model", "genome_and_nsga"):
            if k in t:
                print(f"| {k.replace('_', ' ')} | {t[k]:.1f} | {100 * t[k] / total:.1f}% |")
        print(f"| total | {total:.1f} | |")
    print(f"\n(bench wall time {time.perf_counter() - t_all:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
