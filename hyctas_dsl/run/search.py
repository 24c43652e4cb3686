"""The search driver (paper section 3.4, 4.2 and Algorithm 1): NSGA-II over the AST genome
(hyctas_dsl.nsga), one search per branch count, each candidate scored on the supernet's
weights after BatchNorm recalibration, and the Pareto front written back as .hy source.

Output directory:

- ``searched_b{branches}_{rank}.hy``: every member of each search's Pareto front, with what
  was measured in ``meta`` (mIoU, GMACs, params, latency and its protocol, generation);
- ``candidates.csv``: every candidate considered (evaluated or filtered out);
- ``pareto.png``: the Figure-3 plot;
- ``summary.json``: config, seed, package versions, device, time split, latency-predictor error;
- ``state_b{n}.json``: per-search checkpoints, written every generation (``--resume``).

Under torchrun the candidates of each offspring round (and their latency measurements) are
split across ranks and the results gathered, so every rank runs the same search.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from hyctas_dsl.ast import Arch
from hyctas_dsl.run import dist
from hyctas_dsl.run.config import SearchConfig, SupernetConfig
from hyctas_dsl.run.errors import ConfigError
from hyctas_dsl.run.io import environment, write_json

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
    from hyctas_dsl.run.rundir import RunDir

    info = dist.init(cfg.device)
    with RunDir(cfg.out, "search", "hyctas-search-1", main=info.is_main, option="--emit-dsl"):
        return _search(cfg, resume, progress, supernet_cfg)


def _search(cfg: SearchConfig, resume: bool, progress: bool, supernet_cfg: SupernetConfig | None) -> SearchSummary:
    from hyctas_dsl.compiler import export
    from hyctas_dsl.compiler.checkpoint import load_supernet
    from hyctas_dsl.cost import arch_cost
    from hyctas_dsl.data import make_datasets
    from hyctas_dsl.nsga import NSGAConfig, run_search
    from hyctas_dsl.run.emit import OBJECTIVES
    from hyctas_dsl.run.candidate_eval import CandidateEvaluator
    from hyctas_dsl.run.latency import measure_latency
    from hyctas_dsl.run.latency_lut import LatencyLUT

    t_start = time.perf_counter()
    info = dist.init(cfg.device)
    out = Path(cfg.out)
    say = print if (progress and info.is_main) else (lambda *a, **k: None)

    # Without --supernet, the demo trains one first with the defaults (into OUT/supernet).
    t_train = 0.0
    sn_dir = Path(cfg.supernet) if cfg.supernet else out / "supernet"
    if cfg.supernet is None:
        from hyctas_dsl.run.supernet import train_supernet

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
        from hyctas_dsl.run.panoptic_eval import make_panoptic_datasets

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
    lut = LatencyLUT(str(info.device))
    t_latency = 0.0
    t_genome_start = time.perf_counter()
    n_evaluated = 0

    def measure(arch: Arch) -> dict:
        model = export(arch, supernet, supernet.classes)
        lat = measure_latency(model, lat_input, info.device, timed_s=cfg.latency_seconds,
                              warmup_s=min(0.2, cfg.latency_seconds), threads=1)
        return {"latency_ms": lat.median_ms, "latency_protocol": lat.protocol}

    latency_facts: dict[str, dict] = {}

    def cost(archs: list[Arch]) -> list[float]:
        nonlocal t_latency
        from hyctas_dsl.api import canonical_key

        if cfg.objective == "latency":
            t0 = time.perf_counter()
            facts = _gathered(info, archs, measure)
            t_latency += time.perf_counter() - t0
            for a, f in zip(archs, facts):
                latency_facts[canonical_key(a)] = f
            return [f["latency_ms"] for f in facts]
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
            mutation_prob=cfg.mutation, miou_min=cfg.miou_min, seed=cfg.seed * 1000 + nb, objective=cfg.objective,
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
    t_search = time.perf_counter() - t_genome_start
    dist.barrier(info)

    records, members = _collect(results, OBJECTIVES[cfg.objective][0])
    files: list[Path] = []
    lut_error = None
    if info.is_main:
        timings = evaluator.timings.to_json()
        timings.update({"supernet_training": t_train, "latency_measurement": t_latency, "search_total": t_search})
        files, lut_error = _write_outputs(cfg, info, records, members, supernet, sn_file, lut, lat_input,
                                          timings, n_evaluated, say)
    return SearchSummary(out, files, n_evaluated, time.perf_counter() - t_start, lut_error)


def _collect(results: dict, field: str) -> tuple[list[dict], list[tuple[Arch, dict]]]:
    """Every candidate as a candidates.csv row, and the Pareto members (arch, facts)."""
    records, members = [], []
    for nb, res in results.items():
        front_keys = {r.key for r in res.front}
        for r in res.history:
            row = {"search": f"b{nb}", "generation": r.generation, "branches": nb, "key": r.key, "status": r.status,
                   "on_front": r.key in front_keys and r.status == "accepted"}
            row.update(r.facts)
            if field not in row:
                row[field] = r.cost
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
                   supernet, sn_file: Path, lut, lat_input: tuple, timings: dict, n_evaluated: int,
                   say) -> tuple[list[Path], float | None]:
    """The front as .hy files, candidates.csv, pareto.png and summary.json (rank 0)."""
    from hyctas_dsl.compiler import export
    from hyctas_dsl.run.emit import plot_pareto, write_candidates, write_front

    out = Path(cfg.out)
    files = write_front(out, members, {"search_seed": cfg.seed, "objective": cfg.objective,
                                       **({"metric": "pq"} if cfg.metric == "pq" else {})}, space=supernet.space)
    by_key = {m[1]["key"]: m[1].get("file") for m in members}
    for row in records:
        if row.get("on_front"):
            row["file"] = by_key.get(row["key"], "")
    evaluated = [r for r in records if "miou" in r and r.get("status") != "over_cost"]
    write_candidates(out / "candidates.csv", records)
    plot_pareto(out / "pareto.png", evaluated, cfg.objective,
                f"hyctas search on {cfg.data}: {len(evaluated)} candidates, objective {cfg.objective}")
    # The lookup-table predictor, checked against measurement on the final front.
    if cfg.objective == "latency":
        for a, f in members:
            f["latency_lut_ms"] = lut.predict(export(a, supernet, supernet.classes), lat_input)
    errors = [abs(f["latency_lut_ms"] - f["latency_ms"]) / f["latency_ms"] for _a, f in members
              if "latency_lut_ms" in f and f["latency_ms"] > 0]
    lut_error = statistics.mean(errors) if errors else None
    if errors:
        say("latency predictor (lookup table) vs measurement on the final front:")
        for a, f in members:
            say(f"  {f.get('file', '?'):24s} measured {f['latency_ms']:8.2f} ms   predicted {f['latency_lut_ms']:8.2f} ms")
        say(f"  mean absolute error {100 * lut_error:.1f}%")
    t_search = timings["search_total"]
    timings["genome_and_nsga"] = max(t_search - sum(v for k, v in timings.items() if k not in ("supernet_training", "search_total")), 0.0)
    write_json(out / "summary.json", {
        "command": "search", "config": cfg.model_dump(mode="json"), "supernet": str(sn_file),
        "space": supernet.space.name, "world_size": info.world, "evaluated": n_evaluated,
        "front": [str(p.name) for p in files], "timings_s": timings,
        "latency_lut_mean_abs_error": lut_error,
        "latency_lut": [{"file": f.get("file"), "measured_ms": f["latency_ms"], "predicted_ms": f["latency_lut_ms"]}
                        for _a, f in members if "latency_lut_ms" in f],
        "environment": environment(info.device),
    })
    return files, lut_error
