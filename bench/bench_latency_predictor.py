"""The two latency models (per-op features, hyctas_dsl.jobs.latency_model; kernel records plus
a fitted correction, hyctas_dsl.jobs.latency_lut) against measurement, beside the
measurement's own repeat noise.

For each setting (space, input size): random subnets of the space, as many per branch count
(1, 2, 3); each is measured twice with the search's protocol (batch 1, 1 thread, fp32,
warm-up, timed runs; two separate sessions A and B, all subnets' A before any B, so a busy
phase of the shared machine does not hit both of one subnet's sessions). The reference
latency is the statistic over A's and B's runs pooled. The predictor is fitted with k-fold
cross-validation (every subnet is predicted by a model that did not see it). Printed:

- repeat noise: share of subnets whose A and B agree within 10% (|A - B| / mean), and the
  median CV of the timed runs;
- for two statistics of the runs: the median (the protocol's figure) and the fastest run;
- predictor: share within 10% of the reference, p90 and max relative error;
- records: each distinct top-level module (stem, cell, fusion node, head) timed at its input
  shapes, before the sessions and again after them (the faster of the two; in brackets the
  result with the first pass only); the sum of a subnet's records alone, and with the correction fitted by the
  same k-fold cross-validation (record sum, modules, glue calls and MB);
- seconds spent: measuring one subnet, extracting one subnet's features, and the records
  (timing every distinct module in both passes, per subnet).

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_latency_predictor.py                 # all settings
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_latency_predictor.py --settings digits@64x64 --per-branch 4
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from hyctas_dsl.language.api import load
from hyctas_dsl.cli_support import parse_size
from hyctas_dsl.compiler import export
from hyctas_dsl.search.genome import sample_population
from hyctas_dsl.jobs.latency import measure_latency
from hyctas_dsl.jobs.latency_lut import LatencyLUT
from hyctas_dsl.jobs.latency_model import LatencyModel, arch_features, device_fingerprint
from hyctas_dsl.language.printer import dumps
from hyctas_dsl.jobs.io import write_json
from hyctas_dsl.language.spaces import paper_space, zoo_path

SETTINGS = ("digits@64x64", "paper@64x64", "paper@512x1024")


def space_of(name: str):
    return paper_space() if name == "paper" else load(zoo_path(f"{name}_space.hy")).spaces[0]


def run_setting(setting: str, per_branch: int, timed: float, warmup: float, folds: int, seed: int,
                record_runs: int, stop: str = "time", record_s: float = 0.0) -> dict:
    space_name, size_s = setting.split("@")
    size = parse_size(size_s)
    space = space_of(space_name)
    classes = 11 if space_name == "digits" else 19
    rng = np.random.default_rng(seed)
    archs = [a for nb in (1, 2, 3) for a in sample_population(space, rng, per_branch, n_branches=nb)]
    torch.manual_seed(0)
    t0 = time.perf_counter()
    feats = [arch_features(a, size, classes) for a in archs]
    t_feat = (time.perf_counter() - t0) / len(archs)
    records = LatencyLUT({"input": f"1x3x{size[0]}x{size[1]}", "threads": 1, "statistic": "fastest run"},
                         min_runs=record_runs, min_s=record_s)
    t0 = time.perf_counter()
    rec_feats = [records.features(a, classes) for a in archs]
    t_rec = (time.perf_counter() - t0) / len(archs)
    models = [export(a, classes=classes) for a in archs]
    sessions = []
    t0 = time.perf_counter()
    for _ in range(2):
        sessions.append([measure_latency(m, size, "cpu", warmup_s=warmup, timed_s=timed, threads=1,
                                         stop_when_stable=stop == "stable") for m in models])
    t_meas = (time.perf_counter() - t0) / (2 * len(archs))
    # records, second pass (after the sessions, so the two passes bracket them): the faster of two
    t0 = time.perf_counter()
    rec_feats_1 = [list(f) for f in rec_feats]
    records.retime(archs, classes)
    rec_feats = [[sum(records.table[c.key] for c in records.calls(a, classes)[0]), *f[1:]]
                 for a, f in zip(archs, rec_feats)]
    t_rec += (time.perf_counter() - t0) / len(archs)
    fixed = None
    if stop == "stable":  # a third session with the fixed-time protocol, to compare the two
        t0 = time.perf_counter()
        fixed = [measure_latency(m, size, "cpu", warmup_s=warmup, timed_s=timed, threads=1) for m in models]
        t_fixed = (time.perf_counter() - t0) / len(archs)
    cvs = [statistics.median([s.cv for s in sess]) for sess in sessions]
    idx = rng.permutation(len(archs))
    row = {"setting": setting, "subnets": len(archs), "cv_median": statistics.median(cvs), "t_meas": t_meas,
           "t_feat": t_feat, "t_rec": t_rec, "records": len(records.table), "stats": {},
           "archs": [dumps(a) for a in archs], "features": feats, "record_features": rec_feats,
           "record_features_1_pass": rec_feats_1,
           "samples": [[list(s.samples) for s in sess] for sess in sessions], "stop": stop}
    if fixed is not None:
        row["t_fixed"] = t_fixed
        row["runs_median"] = statistics.median([s.runs for sess in sessions for s in sess])
    # Two statistics of the timed runs: the median (the protocol's figure) and the fastest
    # run, which a busy shared machine disturbs less (other jobs only ever add time).
    for stat, pick in (("median", statistics.median), ("fastest", min)):
        ref = np.array([pick(a.samples + b.samples) for a, b in zip(*sessions)])
        a_ms = np.array([pick(s.samples) for s in sessions[0]])
        b_ms = np.array([pick(s.samples) for s in sessions[1]])
        noise = np.abs(a_ms - b_ms) / ((a_ms + b_ms) / 2)
        # k-fold: each subnet predicted by a model fitted on the others' folds
        pred, pred_rec, pred_rec1 = np.zeros(len(archs)), np.zeros(len(archs)), np.zeros(len(archs))
        protocol = {"input": f"1x3x{size[0]}x{size[1]}"}
        for k in range(folds):
            test = idx[k::folds]
            train = np.setdiff1d(idx, test)
            for fs, out in ((feats, pred), (rec_feats, pred_rec), (rec_feats_1, pred_rec1)):
                lm = LatencyModel.fit([fs[i] for i in train], ref[train], device_fingerprint(), protocol)
                out[test] = [lm.predict(fs[i]) for i in test]
        if fixed is not None:  # the stable-stop sessions (A and B pooled) against the fixed-time one
            f_ms = np.array([pick(s.samples) for s in fixed])
            row.setdefault("vs_fixed", {})[stat] = float(np.mean(np.abs(ref - f_ms) / f_ms <= 0.10))
        if stat == "fastest":  # how many calibration subnets each model needs (the search fits on the fastest run)
            row["calibration_sizes"] = calibration_sizes(ref, feats, rec_feats, per_branch, seed)
        err = np.abs(pred - ref) / ref
        rerr = np.abs(pred_rec - ref) / ref
        rerr1 = np.abs(pred_rec1 - ref) / ref
        serr = np.abs(np.array([f[0] for f in rec_feats]) - ref) / ref
        row["stats"][stat] = {
            "ref_min": ref.min(), "ref_med": float(np.median(ref)), "ref_max": ref.max(), "ref": ref,
            "noise_within10": float(np.mean(noise <= 0.10)), "noise_p90": float(np.quantile(noise, 0.9)),
            "pred_within10": float(np.mean(err <= 0.10)), "pred_p90": float(np.quantile(err, 0.9)),
            "pred_max": float(err.max()), "sum_within10": float(np.mean(serr <= 0.10)), "sum_mae": float(serr.mean()),
            "rec_within10": float(np.mean(rerr <= 0.10)), "rec1_within10": float(np.mean(rerr1 <= 0.10)), "rec_p90": float(np.quantile(rerr, 0.9)),
            "rec_max": float(rerr.max())}
    return row


def calibration_sizes(ref, feats, rec_feats, per_branch: int, seed: int, draws: int = 20) -> dict:
    """Each model fitted on n subnets (n/3 per branch count, ``draws`` random draws), checked on
    all the others: {n: {model: (mean share within 10%, worst share within 10%)}}."""
    rng = np.random.default_rng(seed + 1)
    out = {}
    for n in (6, 12, 24):
        if n // 3 >= per_branch:
            continue
        shares = {"features": [], "records": []}
        for _ in range(draws):
            train = np.concatenate([rng.choice(np.arange(b * per_branch, (b + 1) * per_branch), n // 3, replace=False)
                                    for b in range(3)])
            test = np.setdiff1d(np.arange(len(ref)), train)
            for name, fs in (("features", feats), ("records", rec_feats)):
                lm = LatencyModel.fit([fs[i] for i in train], ref[train], {}, {})
                e = np.abs(np.array([lm.predict(fs[i]) for i in test]) - ref[test]) / ref[test]
                shares[name].append(float(np.mean(e <= 0.10)))
        out[n] = {k: (float(np.mean(v)), float(np.min(v))) for k, v in shares.items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", default=",".join(SETTINGS), help="SPACE@HxW, comma-separated")
    ap.add_argument("--per-branch", type=int, default=20, help="random subnets per branch count (1, 2, 3)")
    ap.add_argument("--timed", type=float, default=0.3, help="timed seconds per measurement session (the search's)")
    ap.add_argument("--warmup", type=float, default=0.2)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stop", choices=("time", "stable"), default="time",
                    help="time: every session runs --timed seconds; stable: stops once the fastest run is stable "
                         "(the search's protocol), and a third, fixed-time session is compared with it")
    ap.add_argument("--record-runs", type=int, default=5, help="timed calls per kernel record (at least)")
    ap.add_argument("--record-seconds", type=float, default=0.0, help="timed seconds per kernel record (at least)")
    ap.add_argument("--dump", help="also write every subnet's source, features and timed runs to this JSON file")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for s in args.settings.split(","):
        t0 = time.perf_counter()
        rows.append(run_setting(s, args.per_branch, args.timed, args.warmup, args.folds, args.seed, args.record_runs, args.stop,
                                args.record_seconds))
        print(f"{s}: done in {time.perf_counter() - t0:.0f} s", flush=True)
    if args.dump:
        write_json(Path(args.dump), [{k: v for k, v in r.items() if k != "stats"} for r in rows])
    print()
    print(f"protocol: batch 1, cpu (1 thread), fp32, eager, warm-up {args.warmup:g} s, timed {args.timed:g} s per session, "
          f"2 sessions per subnet; models fitted by {args.folds}-fold cross-validation; records: fastest of "
          f">= {args.record_runs} calls and {args.record_seconds:g} s; device: {device_fingerprint()['name']}")
    print("| space @ input | subnets | statistic | measured ms (min / median / max) | A vs B within 10% | A vs B p90 "
          "| median CV of runs | features model within 10% | its p90 / max error | record sum alone within 10% (MAE) "
          "| records + correction within 10% (records timed once) | its p90 / max error | s per measurement | s per features "
          "| s per subnet's records (distinct records) |")
    print("|---|--:|---|---|--:|--:|--:|--:|---|---|--:|---|--:|--:|---|")
    for r in rows:
        for stat, st in r["stats"].items():
            print(f"| {r['setting']} | {r['subnets']} | {stat} | {st['ref_min']:.1f} / {st['ref_med']:.1f} / "
                  f"{st['ref_max']:.1f} | {st['noise_within10']:.0%} | {st['noise_p90']:.1%} | {r['cv_median']:.1%} "
                  f"| **{st['pred_within10']:.0%}** | {st['pred_p90']:.1%} / {st['pred_max']:.1%} "
                  f"| {st['sum_within10']:.0%} ({st['sum_mae']:.1%}) | **{st['rec_within10']:.0%}** ({st['rec1_within10']:.0%}) "
                  f"| {st['rec_p90']:.1%} / {st['rec_max']:.1%} | {r['t_meas']:.2f} | {r['t_feat']:.3f} "
                  f"| {r['t_rec']:.2f} ({r['records']}) |")
    print()
    print("calibration size (fastest run): fitted on n subnets, share of the others within 10%, mean / worst of 20 draws")
    print("| space @ input | n | features model | records + correction |")
    print("|---|--:|---|---|")
    for r in rows:
        for n, m in r.get("calibration_sizes", {}).items():
            print(f"| {r['setting']} | {n} | {m['features'][0]:.0%} / {m['features'][1]:.0%} "
                  f"| {m['records'][0]:.0%} / {m['records'][1]:.0%} |")
    for r in rows:
        if "vs_fixed" in r:
            print(f"{r['setting']}: stable stop, median {r['runs_median']:.0f} timed runs, {r['t_meas']:.3f} s per "
                  f"measurement (fixed {args.timed:g} s: {r['t_fixed']:.3f} s); pooled A+B within 10% of the fixed-time "
                  "session: " + ", ".join(f"{k} {v:.0%}" for k, v in r["vs_fixed"].items()))


if __name__ == "__main__":
    main()
