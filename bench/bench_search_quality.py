"""Does the search find architectures better than chance? Measured as the paper does (HyCTAS,
Table 1 and Table 7), with the noise of every number beside it. Run on purpose, not in CI:
about 2 hours of from-scratch training on a 2-core CPU after `make demo` the first time
(57 networks of 7200 steps); every from-scratch result is kept in ``--cache``, so a rerun
against another supernet or search trains only the searched archs it has not seen (about 15
minutes for a new search's three).

The from-scratch budget (7200 steps of batch 8) is what bench_scratch_budget.py measured
this machine could afford: at the earlier 1800 steps most subnets were still learning fast
(doubling the budget lifted the median subnet 14 pt), so the ground truth ranked how fast a
network starts to learn rather than what it reaches (docs/search_quality.md, item 8).

1. Every branch count learns: the supernet's mIoU (after BatchNorm recalibration) of subnets
   sampled per branch count, against the background floor (predicting background on every
   pixel), each with its bootstrap sd over resampled validation sets.
2. Ranking fidelity (Table 1): the same subnets trained from scratch with ``--seeds`` seeds;
   Pearson rho and Kendall tau between the supernet's estimate and the from-scratch mean, over
   all subnets and within each branch count (paper: rho 0.79, tau 0.58).
3. Searched vs random (Table 7): per branch count, the searched front's best member (by the
   supernet's mIoU) against ``--random`` random architectures of that branch count, all
   trained from scratch with the same budget.
4. Search cost: where the demo search's time went (its summary.json).

    .venv/bin/python bench/bench_search_quality.py --search runs/demo

From-scratch trainings run ``--jobs`` at a time, one CPU thread each.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch


def scratch_miou(job: tuple) -> float:
    """Train one arch (given as source text) from scratch; mIoU on the first val images.

    Results are kept in ``cache`` (one JSON file per run, keyed by everything that decides
    the result), so a rerun against another supernet trains only what it has not seen."""
    text, data, out, steps, optimizer, lr, seed, val_images, cache = job
    key = hashlib.sha256(json.dumps([text, data, steps, optimizer, lr, seed, val_images, torch.__version__]).encode()).hexdigest()[:24]
    hit = Path(cache) / f"{key}.json" if cache else None
    if hit is not None and hit.exists():
        return float(json.loads(hit.read_text())["miou"])
    torch.set_num_threads(1)
    import hyctas_dsl as hy
    from hyctas_dsl.jobs.io import write_json
    from hyctas_dsl.jobs.retrain import TrainConfig, train

    arch = hy.loads(text, check_rules=False).archs[0]
    cfg = TrainConfig(data=data, out=out, steps=steps, optimizer=optimizer, lr=lr, seed=seed, eval_images=val_images)
    miou = float(train(cfg, arch, progress=False).miou)
    if hit is not None:
        hit.parent.mkdir(parents=True, exist_ok=True)
        write_json(hit, {"miou": miou, "arch": text, "data": data, "steps": steps, "optimizer": optimizer, "lr": lr,
                         "seed": seed, "val_images": val_images, "torch": torch.__version__})
    return miou


def ranking_subnets(space, per_branch: int, seed: int) -> list:
    """The ranked subnets: ``per_branch`` per branch count, named ``b{branches}_{i}``, drawn
    from one random stream per branch count so that a larger ``per_branch`` extends the
    sample instead of reshuffling it."""
    from hyctas_dsl.search.genome import sample_arch

    out = []
    for nb in range(1, space.max_branches + 1):
        rng = np.random.default_rng([seed, 7, nb])
        out += [sample_arch(space, rng, n_branches=nb, name=f"b{nb}_{i}") for i in range(per_branch)]
    return out


def body_zeroed_miou(ev, supernet, arch) -> float:
    """The subnet's supernet mIoU with its body's outputs replaced by zeros at the head (the
    stem's stride-4 feature kept): how much of its score the stem alone carries."""
    from hyctas_dsl.jobs.candidate_eval import per_image_confusion, recalibrate_bn

    view = supernet.subnet(arch)
    hook = view.net.head.register_forward_pre_hook(lambda _m, args: ([torch.zeros_like(f) for f in args[0]], *args[1:]))
    try:
        recalibrate_bn(view, ev.bn_batches)
        return per_image_confusion(view, ev.val_batches, supernet.classes)[1]
    finally:
        hook.remove()


def fmt(m: float, sd: float | None = None) -> str:
    return f"{100 * m:.1f}" + (f" ± {100 * sd:.1f}" if sd is not None and math.isfinite(sd) else "")


def correlations(est: list[float], true: list[float]) -> tuple[float, float] | None:
    from scipy.stats import kendalltau, pearsonr

    if len(est) < 3 or min(np.ptp(est), np.ptp(true)) < 1e-4:
        return None  # a constant side ranks nothing
    return float(pearsonr(est, true)[0]), float(kendalltau(est, true)[0])


def correlation_sd(est: list[float], true: list[float], seed: int, n: int = 1000) -> tuple[float, float]:
    """The sd of (Pearson, Kendall) over ``n`` resamples of the subnets with replacement: how
    much the coefficients move with which subnets happened to be sampled (resamples with a
    constant side are skipped)."""
    rng = np.random.default_rng([seed, 9])
    e, t = np.asarray(est), np.asarray(true)
    got = [c for c in (correlations(e[i], t[i]) for i in (rng.integers(0, len(e), len(e)) for _ in range(n))) if c]
    return (float(np.std([c[0] for c in got])), float(np.std([c[1] for c in got]))) if len(got) > 1 else (math.nan, math.nan)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--search", default="runs/demo", help="output directory of `hyctas search`")
    ap.add_argument("--supernet", default=None, help="supernet run directory (default: SEARCH/supernet)")
    ap.add_argument("--data", default="digits")
    ap.add_argument("--per-branch", type=int, default=6,
                    help="sampled subnets per branch count (the paper ranks 10 in all; within-branch Kendall tau needs several)")
    ap.add_argument("--seeds", type=int, default=2, help="from-scratch seeds per ranked subnet")
    ap.add_argument("--random", type=int, default=5, help="random archs per branch count (the paper: 5)")
    ap.add_argument("--steps", type=int, default=7200, help="from-scratch training steps per arch (batch 8)")
    ap.add_argument("--optimizer", default="adamw", help="from-scratch optimizer (sgd is the paper's; it needs far more steps)")
    ap.add_argument("--lr", type=float, default=0.003, help="from-scratch poly lr")
    ap.add_argument("--val-images", type=int, default=500, help="validation images for every mIoU")
    ap.add_argument("--bn-images", type=int, default=256, help="BatchNorm recalibration images")
    ap.add_argument("--jobs", type=int, default=2, help="from-scratch trainings at a time (1 thread each)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip", default="", help="comma list of parts to skip: ranking,random")
    ap.add_argument("--cache", default="runs/bench-scratch-cache",
                    help="directory keeping every from-scratch result (keyed by arch, data, budget and seed); '' for none")
    args = ap.parse_args()
    torch.set_num_threads(1)

    import hyctas_dsl as hy
    from hyctas_dsl.compiler.checkpoint import load_supernet
    from hyctas_dsl.model.cost import arch_cost
    from hyctas_dsl.data import make_datasets
    from hyctas_dsl.data.metrics import miou_of
    from hyctas_dsl.search.genome import sample_arch
    from hyctas_dsl.jobs.candidate_eval import CandidateEvaluator

    t_all = time.perf_counter()
    search_dir = Path(args.search)
    sn_path = Path(args.supernet or search_dir / "supernet") / "supernet.safetensors"
    if not sn_path.exists():
        print(f"bench_search_quality: no supernet at {sn_path}; run `make demo` (or pass --supernet)", file=sys.stderr)
        return 2
    supernet = load_supernet(sn_path)
    space = supernet.space
    train_set, val_set = make_datasets(args.data, seed=args.seed)
    size = tuple(val_set.get(0, 0)[0].shape[-2:])
    ev = CandidateEvaluator(supernet, train_set, val_set, args.bn_images, args.val_images, args.seed, torch.device("cpu"))
    n_val = sum(len(y) for _x, y in ev.val_batches)
    # The floor: background on every pixel of the same validation images.
    floor_cm = np.zeros((supernet.classes, supernet.classes), np.int64)
    for _x, y in ev.val_batches:
        t = y[y != 255].long().numpy()
        floor_cm[:, 0] += np.bincount(t, minlength=supernet.classes)
    floor = miou_of(floor_cm)
    tmp = Path(tempfile.mkdtemp(prefix="hyctas-bench-"))
    pool = ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn"))
    skip = set(args.skip.split(","))

    def submit(arch, tag: str, seed: int):
        text = hy.dumps(arch.model_copy(update={"meta": ()}))
        return pool.submit(scratch_miou, (text, args.data, str(tmp / tag), args.steps, args.optimizer, args.lr, seed, args.val_images,
                                            args.cache))

    sn_cfg = json.loads((sn_path.parent / "config.json").read_text()).get("config", {}) if (sn_path.parent / "config.json").exists() else {}
    print(f"# search quality on `{args.data}` ({space.name} space)\n")
    print(f"supernet {sn_path}: {sn_cfg.get('steps', '?')} steps, scheme {sn_cfg.get('scheme', 'paper')}, "
          f"distill {sn_cfg.get('distill', 0)}, branch balance {sn_cfg.get('branch_balance', False)}, "
          f"output stride aux {sn_cfg.get('output_stride_aux', 0)}, stem drop {sn_cfg.get('stem_drop', 0)}; "
          f"from scratch: {args.steps} steps, batch 8, {args.optimizer} lr {args.lr}; {n_val} validation images, "
          f"BN recalibrated on {args.bn_images}; ± is the sd over 200 bootstrap resamples of the validation images "
          f"(supernet) or over {args.seeds} seeds (from scratch)\n")

    # 1 + 2: sampled subnets, supernet estimate now, from-scratch runs in the background.
    subnets = []
    for arch in ranking_subnets(space, args.per_branch, args.seed):
        r = ev(arch)
        futs = [] if "ranking" in skip else [submit(arch, f"rank_{arch.name}_s{s}", s) for s in range(args.seeds)]
        subnets.append({"arch": arch, "est": r["miou"], "est_sd": r["miou_sd"], "futs": futs,
                        "zeroed": body_zeroed_miou(ev, supernet, arch)})

    print("## 1. Every branch count learns (supernet mIoU, background floor "
          f"{100 * floor:.1f})\n")
    print("| branches | subnets | median | min | max | median sd | above floor + 3 sd |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for nb in range(1, space.max_branches + 1):
        rs = [s for s in subnets if len(s["arch"].branches) == nb]
        ms = [s["est"] for s in rs]
        above = sum(s["est"] > floor + 3 * s["est_sd"] for s in rs)
        print(f"| {nb} | {len(rs)} | {fmt(statistics.median(ms))} | {fmt(min(ms))} | {fmt(max(ms))} | "
              f"{fmt(statistics.median(s['est_sd'] for s in rs))} | {above} of {len(rs)} |")
    print()

    if "ranking" not in skip:
        print("## 2. Ranking fidelity (paper Table 1: rho 0.79, tau 0.58)\n")
        print("| subnet | head / output stride | supernet mIoU | body zeroed | from-scratch mIoU |")
        print("|---|---|---:|---:|---:|")
        for s in subnets:
            vals = [f.result() for f in s["futs"]]
            s["true"], s["true_sd"] = statistics.mean(vals), (statistics.stdev(vals) if len(vals) > 1 else float("nan"))
            a = s["arch"]
            head = "(" + ", ".join(map(str, a.head.strides)) + f") / {a.head.output_stride}"
            print(f"| {a.name} | {head} | {fmt(s['est'], s['est_sd'])} | {fmt(s['zeroed'])} | {fmt(s['true'], s['true_sd'])} |",
                  flush=True)
        rows = [("all", subnets)] + [(f"{nb} branch{'es' * (nb > 1)}", [s for s in subnets if len(s["arch"].branches) == nb])
                                     for nb in range(1, space.max_branches + 1)]
        # within one output stride: whether the supernet orders what its cells do, beyond the
        # output stride alone (docs/search_quality.md, item 6)
        rows += [(f"output stride {o}", [s for s in subnets if s["arch"].head.output_stride == o])
                 for o in sorted({s["arch"].head.output_stride for s in subnets}, reverse=True)]
        print("\n| subnets | n | Pearson rho | Kendall tau |")
        print("|---|---:|---:|---:|")
        for label, rs in rows:
            est, true = [s["est"] for s in rs], [s["true"] for s in rs]
            c = correlations(est, true)
            sd = correlation_sd(est, true, args.seed) if c else None
            print(f"| {label} | {len(rs)} | " + (f"{c[0]:.2f} ± {sd[0]:.2f} | {c[1]:.2f} ± {sd[1]:.2f} |" if c
                                                 else "undefined (a constant side) | |"))
        print("\n± on rho and tau: their sd over 1000 resamples of the subnets (with replacement)")
        seed_sd = statistics.median(s["true_sd"] for s in subnets if math.isfinite(s["true_sd"])) if args.seeds > 1 else float("nan")
        gap = [abs(s["est"] - s["zeroed"]) for s in subnets if s["est"] > floor + 3 * s["est_sd"]]
        if gap:
            print(f"\nbody zeroed: the head's inputs from the cells replaced by zeros (the stem's stride-4 feature kept), "
                  f"BN recalibrated; median |supernet - body zeroed| over the {len(gap)} subnets above the floor: "
                  f"{100 * statistics.median(gap):.1f} pt")
        seeds_note = "" if math.isnan(seed_sd) else f"median seed-to-seed sd from scratch: {100 * seed_sd:.1f} pt; "
        print(f"\n{seeds_note}median bootstrap sd of the supernet's estimate: "
              f"{100 * statistics.median(s['est_sd'] for s in subnets):.1f} pt\n")

    if "random" not in skip:
        print("## 3. Searched vs random (paper Table 7)\n")
        print("| branches | arch | GMACs | params (K) | mIoU from scratch |")
        print("|---:|---|---:|---:|---:|")
        rng = np.random.default_rng([args.seed, 8])
        plan = []
        for nb in range(1, space.max_branches + 1):
            files = sorted(search_dir.glob(f"searched_b{nb}_*.hy"))
            searched = None
            if files:
                archs = [hy.load(f).archs[0] for f in files]
                best = max(archs, key=lambda a: a.meta_dict().get("miou", 0.0))
                searched = (best, [submit(best, f"b{nb}_searched_s{s}", s) for s in range(args.seeds)])
            rand = [sample_arch(space, rng, n_branches=nb, name=f"random{k + 1}") for k in range(args.random)]
            plan.append((nb, searched, [(a, submit(a, f"b{nb}_{a.name}", 0)) for a in rand]))
        verdicts = []
        for nb, searched, rand in plan:
            vals = []
            if searched is None:
                print(f"| {nb} | (no searched arch in {search_dir}) | | | |")
            else:
                best, best_f = searched
                vals = [f.result() for f in best_f]
                c = arch_cost(best, size, supernet.classes).total
                sd = statistics.stdev(vals) if len(vals) > 1 else float("nan")
                print(f"| {nb} | searched ({best.name}, {len(vals)} seeds) | {c.macs / 1e9:.4f} | {c.params / 1e3:.1f} | "
                      f"{fmt(statistics.mean(vals), sd)} |")
            rm = []
            for a, f in rand:
                c = arch_cost(a, size, supernet.classes).total
                rm.append((c.macs, c.params, f.result()))
                print(f"| {nb} | {a.name} | {c.macs / 1e9:.4f} | {c.params / 1e3:.1f} | {fmt(rm[-1][2])} |", flush=True)
            mean, sd = statistics.mean(r[2] for r in rm), statistics.stdev(r[2] for r in rm)
            print(f"| {nb} | random, mean ± sd of {len(rm)} | {statistics.mean(r[0] for r in rm) / 1e9:.4f} | "
                  f"{statistics.mean(r[1] for r in rm) / 1e3:.1f} | {fmt(mean, sd)} |")
            if vals:
                verdicts.append((nb, statistics.mean(vals), mean, sd))
        print()
        for nb, s, m, sd in verdicts:
            print(f"- {nb} branch{'es' * (nb > 1)}: searched {fmt(s)} vs random mean + 1 sd {fmt(m + sd)}: "
                  f"{'beats' if s > m + sd else 'does not beat'} it")
        print()
    pool.shutdown()

    summary = search_dir / "summary.json"
    if summary.exists():
        t = json.loads(summary.read_text())["timings_s"]
        total = t.get("supernet_training", 0.0) + t.get("search_total", 0.0)
        print("## 4. Search cost (the demo search's summary.json)\n")
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
