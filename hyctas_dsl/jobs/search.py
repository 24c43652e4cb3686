"""The search driver (paper section 3.4, 4.2 and Algorithm 1): NSGA-II over the AST genome
(hyctas_dsl.search.nsga), one search per branch count, each candidate scored on the supernet's
weights after BatchNorm recalibration, and the Pareto front written back as .hy source.

Output directory:

- ``searched_b{branches}_{rank}.hy``: every member of each search's Pareto front, with what
  was measured in ``meta`` (mIoU, GMACs, params, latency and its protocol, generation); the
  latency there is always a measurement, never a prediction;
- ``candidates.csv``: every candidate considered (evaluated or filtered out), with its
  predicted and, where measured, its measured latency;
- ``latency_model.json``: the latency model calibrated on this device (``--latency predict``);
- ``pareto.png``: the Figure-3 plot;
- ``summary.json``: config, seed, package versions, device, time split, latency-predictor error;
- ``state_b{n}.json``: per-search checkpoints, written every generation (``--resume``).

Latency (``--latency``): ``measure`` times every candidate (batch 1, 1 thread, warm-up, timed
runs until the fastest is stable; hyctas_dsl.jobs.latency). ``predict`` ranks by the latency
model (``--latency-predictor``: kernel records plus a fitted correction,
hyctas_dsl.jobs.latency_lut, or per-op features, hyctas_dsl.jobs.latency_model), calibrated
here on random subnets of the space unless a model for this device and protocol is given, and
after the searches measures for real the Pareto members and every candidate within the
model's error of the front; the written front is the Pareto front of those measurements.

Under torchrun the candidates of each offspring round (and their latency measurements) are
split across ranks and the results gathered, so every rank runs the same search.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from hyctas_dsl.language.ast import Arch
from hyctas_dsl.jobs import dist
from hyctas_dsl.jobs.config import SearchConfig, SupernetConfig
from hyctas_dsl.jobs.errors import ConfigError
from hyctas_dsl.jobs.io import environment, write_json

__all__ = ["search", "SearchSummary"]


@dataclass
class SearchSummary:
    out: Path
    files: list[Path]
    evaluated: int
    seconds: float
    lut_error: float | None


def _gathered(info: dist.DistInfo, items: list, fn) -> list:
    """``fn`` over this rank's share of ``items``, results gathered back in order."""
    idx = list(range(len(items)))
    mine = dist.split(idx, info)
    local = [(i, fn(items[i])) for i in mine]
    merged: dict[int, object] = {}
    for part in dist.all_gather_objects(info, local):
        merged.update(dict(part))
    return [merged[i] for i in idx]


def search(cfg: SearchConfig, resume: bool = False, progress: bool = True, supernet_cfg: SupernetConfig | None = None) -> SearchSummary:
    """Run the search as configured and write the Pareto front into ``cfg.out`` (locked for
    the search's life). Without ``cfg.supernet`` a supernet is trained first into
    OUT/supernet (a run directory of its own), configured by ``supernet_cfg`` (the config
    file's ``[supernet]`` table; its ``out``, ``data``, ``seed`` and ``device`` default to the
    search's)."""
    from hyctas_dsl.jobs.rundir import RunDir

    info = dist.init(cfg.device)
    with RunDir(cfg.out, "search", "hyctas-search-1", main=info.is_main, option="--emit-dsl"):
        return _search(cfg, resume, progress, supernet_cfg)


def _search(cfg: SearchConfig, resume: bool, progress: bool, supernet_cfg: SupernetConfig | None) -> SearchSummary:
    from hyctas_dsl.compiler import export
    from hyctas_dsl.compiler.checkpoint import load_supernet
    from hyctas_dsl.model.cost import arch_cost
    from hyctas_dsl.data import make_datasets
    from hyctas_dsl.search.nsga import NSGAConfig, run_search
    from hyctas_dsl.jobs.emit import OBJECTIVES
    from hyctas_dsl.jobs.candidate_eval import CandidateEvaluator
    from hyctas_dsl.jobs.latency import measure_latency

    t_start = time.perf_counter()
    info = dist.init(cfg.device)
    out = Path(cfg.out)
    say = print if (progress and info.is_main) else (lambda *a, **k: None)

    # Without --supernet, the demo trains one first with the defaults (into OUT/supernet).
    t_train = 0.0
    sn_dir = Path(cfg.supernet) if cfg.supernet else out / "supernet"
    if cfg.supernet is None:
        from hyctas_dsl.jobs.supernet_training import train_supernet

        given = (supernet_cfg or SupernetConfig()).model_dump(exclude_unset=True)
        sn_cfg = SupernetConfig(**{"out": str(sn_dir), "data": cfg.data, "seed": cfg.seed, "device": cfg.device, **given})
        sn_dir = Path(sn_cfg.out)
        # A finished run resumes as a no-op; an interrupted one continues.
        started = (sn_dir / "checkpoint.safetensors").exists()
        say(f"no --supernet given: {'continuing' if started else 'training'} one in {sn_dir}")
        t0 = time.perf_counter()
        train_supernet(sn_cfg, resume=started, progress=progress)
        t_train = time.perf_counter() - t0
    sn_file = sn_dir / "supernet.safetensors" if sn_dir.is_dir() else sn_dir
    if not sn_file.exists():
        raise FileNotFoundError(f"{sn_dir}: no supernet.safetensors (train one with `hyctas train-supernet --out {sn_dir}`)")

    if cfg.metric == "pq":  # PQ as the accuracy objective: panoptic labels and supernet
        from hyctas_dsl.jobs.panoptic_eval import make_panoptic_datasets

        train_set, val_set = make_panoptic_datasets(cfg.data, seed=cfg.seed)
    else:
        train_set, val_set = make_datasets(cfg.data, seed=cfg.seed)
    supernet = load_supernet(sn_file, classes=train_set.info.num_classes)
    space = supernet.space
    if cfg.metric == "pq" and space.task != "panoptic":
        raise ConfigError(f"--metric pq needs a panoptic supernet, but {sn_file} was trained on space `{space.name}` "
                          "without `task panoptic`")
    data_size = tuple(val_set.get(0, 0)[0].shape[-2:])
    lat_input = tuple(cfg.latency_input or data_size)
    evaluator = CandidateEvaluator(supernet, train_set, val_set, cfg.bn_images, cfg.val_images, cfg.seed, info.device,
                                   metric=cfg.metric, things=getattr(train_set.source, "things", ()))
    t_latency = 0.0
    t_genome_start = time.perf_counter()
    n_evaluated = 0

    def measure(arch: Arch) -> dict:
        model = export(arch, supernet, supernet.classes)
        lat = measure_latency(model, lat_input, info.device, timed_s=cfg.latency_seconds,
                              warmup_s=min(0.2, cfg.latency_seconds), threads=1, stop_when_stable=True)
        return {"latency_ms": lat.median_ms, "latency_fastest_ms": lat.min_ms, "latency_cv": round(lat.cv, 4),
                "latency_protocol": lat.protocol}

    predictor = None
    lat_split = {"calibration": 0.0, "prediction": 0.0, "measurement": 0.0}
    if cfg.objective == "latency" and cfg.latency == "predict":
        t0 = time.perf_counter()
        predictor = _latency_model(cfg, info, space, supernet.classes, lat_input, measure, say)
        lat_split["calibration"] = time.perf_counter() - t0
        t_latency += lat_split["calibration"]

    latency_facts: dict[str, dict] = {}

    def cost(archs: list[Arch]) -> list[float]:
        nonlocal t_latency
        from hyctas_dsl.language.api import canonical_key

        if cfg.objective == "latency":
            t0 = time.perf_counter()
            if predictor is not None:
                # split across ranks and gathered: records timed on one rank give every rank
                # the same prediction
                facts = _gathered(info, archs, lambda a: {
                    "latency_predicted_fastest_ms": predictor.predict_arch(a, supernet.classes)})
            else:
                facts = _gathered(info, archs, measure)
            lat_split["prediction" if predictor is not None else "measurement"] += time.perf_counter() - t0
            t_latency += time.perf_counter() - t0
            for a, f in zip(archs, facts):
                latency_facts[canonical_key(a)] = f
            return [f.get("latency_ms", f.get("latency_predicted_fastest_ms")) for f in facts]
        totals = [arch_cost(a, data_size, supernet.classes).total for a in archs]
        return [float(t.macs if cfg.objective == "flops" else t.params) for t in totals]

    def score(archs: list[Arch]) -> list[dict]:
        nonlocal n_evaluated
        results = _gathered(info, archs, lambda a: evaluator(a))
        n_evaluated += len(archs)
        for r in results:
            r.update(latency_facts.get(r["key"], {}))
        return results

    results = {}
    for nb in cfg.branches:
        ncfg = NSGAConfig(
            n_branches=nb, pop_size=cfg.population, n_gen=cfg.generations, crossover_prob=cfg.crossover,
            mutation_prob=cfg.mutation, miou_min=cfg.miou_min, seed=cfg.seed * 1000 + nb,
            # the label makes --resume refuse to mix predicted and measured costs
            objective=cfg.objective + (f" (predicted, {cfg.latency_predictor})" if predictor is not None else ""),
        )
        state = out / f"state_b{nb}.json"
        if info.is_main:
            out.mkdir(parents=True, exist_ok=True)

        def report(res, nb=nb):
            best = max((r.miou for r in res.front), default=float("nan"))
            say(f"  {nb} branch{'es' * (nb > 1)}: generation {res.generation + 1}/{cfg.generations}, "
                f"front {len(res.front)}, best {'PQ' if cfg.metric == 'pq' else 'mIoU'} {best:.3f}, evaluated {res.evaluations}")

        say(f"search: {nb} branch{'es' * (nb > 1)}, population {cfg.population}, {cfg.generations} generations")
        results[nb] = run_search(space, score, cost, ncfg, state_path=state, resume=resume and state.exists(),
                                 save_state=info.is_main, on_generation=report)
    if predictor is not None:
        t0 = time.perf_counter()
        results = {nb: _measure_near_front(res, predictor, info, measure, say) for nb, res in results.items()}
        lat_split["measurement"] += time.perf_counter() - t0
        t_latency += time.perf_counter() - t0
        records = getattr(predictor, "records", None)
        if records is not None:
            lat_split["records_timed"] = records.seconds  # part of calibration and prediction
            if info.is_main and records.misses:  # keep the records the candidates added
                predictor.save(_model_path(cfg))
    t_search = time.perf_counter() - t_genome_start
    dist.barrier(info)

    records, members = _collect(results, OBJECTIVES[cfg.objective][0], predicted=predictor is not None)
    files: list[Path] = []
    lut_error = None
    if info.is_main:
        timings = evaluator.timings.to_json()
        timings.update({"supernet_training": t_train, "latency_measurement": t_latency, "search_total": t_search})
        files, lut_error = _write_outputs(cfg, info, records, members, supernet, sn_file, predictor, lat_split,
                                          timings, n_evaluated, say)
    return SearchSummary(out, files, n_evaluated, time.perf_counter() - t_start, lut_error)


def _collect(results: dict, field: str, predicted: bool = False) -> tuple[list[dict], list[tuple[Arch, dict]]]:
    """Every candidate as a candidates.csv row, and the Pareto members (arch, facts).
    ``predicted``: the searches ranked by the latency model, whose predictions never go in
    the measured ``latency_ms`` column."""
    records, members = [], []
    for nb, res in results.items():
        front_keys = {r.key for r in res.front}
        for r in res.history:
            row = {"search": f"b{nb}", "generation": r.generation, "branches": nb, "key": r.key, "status": r.status,
                   "on_front": r.key in front_keys and r.status == "accepted"}
            row.update(r.facts)
            if field not in row and not (predicted and field == "latency_ms"):
                row[field] = r.cost  # a predicted latency never goes in the measured column
            if r.miou is not None:
                row["miou"] = r.miou
            records.append(row)
        seen = set()
        for r in res.front:
            if r.key in seen:
                continue
            seen.add(r.key)
            facts = dict(r.facts, generation=r.generation, miou=r.miou)
            facts.setdefault(field, r.cost)
            members.append((r.arch, facts))
    return records, members


def _write_outputs(cfg: SearchConfig, info: dist.DistInfo, records: list[dict], members: list[tuple[Arch, dict]],
                   supernet, sn_file: Path, predictor, lat_split: dict, timings: dict, n_evaluated: int,
                   say) -> tuple[list[Path], float | None]:
    """The front as .hy files, candidates.csv, pareto.png and summary.json (rank 0)."""
    from hyctas_dsl.jobs.emit import plot_pareto, write_candidates, write_front

    out = Path(cfg.out)
    files = write_front(out, members, {"search_seed": cfg.seed, "objective": cfg.objective,
                                       **({"metric": "pq"} if cfg.metric == "pq" else {})}, space=supernet.space)
    by_key = {m[1]["key"]: m[1].get("file") for m in members}
    for row in records:
        if row.get("on_front"):
            row["file"] = by_key.get(row["key"], "")
    evaluated = [r for r in records if "miou" in r and r.get("status") != "over_cost"]
    write_candidates(out / "candidates.csv", records)
    title = f"hyctas search on {cfg.data}: {len(evaluated)} candidates, objective {cfg.objective}"
    if predictor is not None:
        evaluated = [dict(r, latency_ms=r.get("latency_ms", r.get("latency_predicted_fastest_ms"))) for r in evaluated]
        title += "\n(latency measured near the front, predicted elsewhere)"
    plot_pareto(out / "pareto.png", evaluated, cfg.objective, title)
    # The predictor against measurement on what was measured (the front and its margin).
    checked = list({r["key"]: r for r in records
                    if "latency_fastest_ms" in r and "latency_predicted_fastest_ms" in r}.values())
    errors = [abs(r["latency_predicted_fastest_ms"] - r["latency_fastest_ms"]) / r["latency_fastest_ms"] for r in checked]
    lut_error = statistics.mean(errors) if errors else None
    if errors:
        say(f"latency model vs measurement (fastest run) on the {len(errors)} measured candidates: mean absolute error "
            f"{100 * lut_error:.1f}%, {sum(e <= 0.1 for e in errors)} of {len(errors)} within 10%")
    t_search = timings["search_total"]
    timings["genome_and_nsga"] = max(t_search - sum(v for k, v in timings.items() if k not in ("supernet_training", "search_total")), 0.0)
    write_json(out / "summary.json", {
        "command": "search", "config": cfg.model_dump(mode="json"), "supernet": str(sn_file),
        "space": supernet.space.name, "world_size": info.world, "evaluated": n_evaluated,
        "front": [str(p.name) for p in files], "timings_s": timings,
        "latency": cfg.latency if cfg.objective == "latency" else None,
        "latency_time_split_s": lat_split if cfg.objective == "latency" else None,
        "latency_model": None if predictor is None else {
            "file": str(_model_path(cfg)), "predictor": cfg.latency_predictor, "device": predictor.device,
            "protocol": predictor.protocol,
            **({"records": len(predictor.records.table), "records_timed_here": predictor.records.misses,
                "records_reused": predictor.records.hits} if getattr(predictor, "records", None) else {}),
            "calibration_error_p90": predictor.error_p90, "calibration_error_max": predictor.error_max},
        "latency_model_mean_abs_error": lut_error,
        "latency_checked": [{"key": r["key"], "file": r.get("file") or None, "measured_ms": r["latency_ms"],
                             "measured_fastest_ms": r["latency_fastest_ms"], "measured_cv": r.get("latency_cv"),
                             "predicted_fastest_ms": r["latency_predicted_fastest_ms"]}
                            for r in checked],
        "environment": environment(info.device),
    })
    return files, lut_error


def _model_path(cfg: SearchConfig) -> Path:
    return Path(cfg.latency_model) if cfg.latency_model else Path(cfg.out) / "latency_model.json"


def _latency_model(cfg: SearchConfig, info: dist.DistInfo, space, classes: int, size, measure, say):
    """The latency model for this device and protocol: the file's when it exists (refused,
    with a one-line error, when made on another device or with another protocol), else
    calibrated on random subnets of the space (their measurements split across ranks)."""
    import numpy as np

    from hyctas_dsl.language.api import canonical_key
    from hyctas_dsl.search.genome import sample_population
    from hyctas_dsl.jobs.latency_lut import LatencyLUT, RecordsLatencyModel
    from hyctas_dsl.jobs.latency_model import LatencyModel, LatencyModelError, arch_features, device_fingerprint

    device = device_fingerprint(str(info.device))
    # The model predicts the fastest timed run: on a shared machine the median also measures
    # how often the scheduler interrupted a forward (a 2.5 ms subnet measured 23 ms median on a
    # 2-core machine running 6 jobs), the fastest run what the network costs.
    protocol = {"input": f"1x3x{size[0]}x{size[1]}", "dtype": "fp32", "threads": 1, "layout": "contiguous",
                "backend": "eager", "timed_s": cfg.latency_seconds, "warmup_s": min(0.2, cfg.latency_seconds),
                "stop": "stable", "statistic": "fastest run"}
    kind = RecordsLatencyModel if cfg.latency_predictor == "records" else LatencyModel
    path = _model_path(cfg)
    if path.exists():
        try:
            model = kind.load(path, device, protocol)
        except LatencyModelError as e:
            raise ConfigError(f"{e} (--latency-predictor {cfg.latency_predictor})") from None
        say(f"latency model: {path} ({cfg.latency_predictor}; calibrated on {len(model.calibration)} subnets, "
            f"leave-one-out error p90 {model.error_p90:.1%})")
        return model
    rng = np.random.default_rng(cfg.seed + 7919)
    # 12 subnets hold the records' correction (4 inputs; digits at 64x64: fitted on 12, 98% or
    # more of 48 others within 10% in each of 20 draws); the features model (30) wants 24
    per = -(-cfg.latency_calibration // len(cfg.branches))
    archs = [a for nb in cfg.branches for a in sample_population(space, rng, per, n_branches=nb)]
    say(f"latency model ({cfg.latency_predictor}): calibrating on {len(archs)} random subnets (timed until the "
        f"fastest run is stable, at most {cfg.latency_seconds:g} s each)")
    records = LatencyLUT(protocol, device=str(info.device)) if kind is RecordsLatencyModel else None
    if records is not None:  # first pass of the calibration subnets' records
        for a in archs:
            records.record_sum(a, classes)
    facts = _gathered(info, archs, measure)
    fit = dict(device=device, protocol=protocol, keys=[canonical_key(a) for a in archs],
               cvs=[f["latency_cv"] for f in facts])
    measured = [f["latency_fastest_ms"] for f in facts]
    if records is not None:
        # second pass, keeping the faster: the two passes bracket the measurements, so a busy
        # phase of a shared machine during one pass does not skew the fit (at 512x1024, 95%
        # of 60 subnets within 10% with two passes, 80% with one; docs/latency.md)
        records.retime(archs, classes)
        model = RecordsLatencyModel.fit([records.features(a, classes) for a in archs], measured, records=records, **fit)
    else:
        model = LatencyModel.fit([arch_features(a, size, classes) for a in archs], measured, **fit)
    if info.is_main:
        model.save(path)
    say(f"latency model: leave-one-out error p90 {model.error_p90:.1%}, max {model.error_max:.1%}; saved to {path}")
    return model


def _measure_near_front(res, predictor, info: dist.DistInfo, measure, say):
    """Measure the Pareto members of the predicted front and every candidate that the
    predictor's error could put on it (its predicted latency, lowered by the error, not
    dominated by a front member's, raised by the error); the front is then recomputed from
    the measurements (the protocol's median), so every written latency is measured."""
    import dataclasses
    import math

    from hyctas_dsl.search.nsga import pareto_front

    e = predictor.error_p90 if math.isfinite(predictor.error_p90) else 0.1
    front = res.front
    pool = {}
    for r in res.history:
        if r.miou is None or r.status != "accepted" or r.key in pool:
            continue
        dominated = any(f.miou >= r.miou and f.cost * (1 + e) < r.cost * (1 - e) for f in front if f.key != r.key)
        if not dominated:
            pool[r.key] = r
    recs = list(pool.values())
    facts = dict(zip(pool, _gathered(info, [r.arch for r in recs], measure)))

    def measured(r):
        f = facts[r.key]
        return dataclasses.replace(r, cost=f["latency_ms"], facts={**r.facts, **f})

    new_front = pareto_front(measured(r) for r in recs)
    say(f"  {res.config.n_branches} branch{'es' * (res.config.n_branches > 1)}: measured {len(recs)} "
        f"candidates near the predicted front ({len(front)} members, margin +-{e:.1%}); front of the measurements: "
        f"{len(new_front)}")
    history = [measured(r) if r.key in facts else r for r in res.history]
    return dataclasses.replace(res, front=new_front, history=history)
