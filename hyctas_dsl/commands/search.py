"""``hyctas search``: NSGA-II over the supernet, the Pareto front emitted as .hy source."""

from __future__ import annotations

from typing import List, Optional

import typer

from hyctas_dsl.cli_support import default_help, fail_usage, job_config, out_dir_option, run_cli_job, size_option
from hyctas_dsl.jobs.config import SearchConfig

SEARCH_HELP = """Search a trained supernet with NSGA-II (paper section 3.4, Algorithm 1) and write
the Pareto front back as .hy files, with what was measured in their `meta`.

\b
  hyctas search --emit-dsl out/                  # the demo: trains a supernet first
  hyctas search --supernet runs/sn --emit-dsl out/ --objective flops
  hyctas search --emit-dsl out/ --resume         # continue an interrupted search
  torchrun --nproc-per-node 2 -m hyctas_dsl.cli search ...   # candidates split over ranks

One search per branch count (--branches 1,2,3). Each candidate: BatchNorm statistics
recomputed on a fixed subset of training images, mIoU on the validation split with the
supernet's weights, latency predicted by a model calibrated here by measurement
(--latency predict, the default) or measured for every candidate (--latency measure). Latency
written into the .hy files is always measured as the paper does (batch 1, warm-up, timed
runs, median, with the p10..p90 spread, CV and protocol recorded). Every option can also come
from a TOML file (--config, table [search]). OUT gets searched_b*_*.hy, candidates.csv,
pareto.png, summary.json and latency_model.json.
"""


def register(app: typer.Typer) -> None:
    @app.command("search", help=SEARCH_HELP)
    def search_cmd(
        emit_dsl: Optional[str] = typer.Option(None, "--emit-dsl", help=f"Output directory for the Pareto front {default_help(SearchConfig, 'out')}."),
        supernet: Optional[str] = typer.Option(None, "--supernet", help="Supernet run directory or .safetensors (default: train one into OUT/supernet)."),
        data: Optional[str] = typer.Option(None, "--data", help=f"digits | cityscapes:DIR | ade20k:DIR | folder:DIR {default_help(SearchConfig, 'data')}."),
        objective: Optional[str] = typer.Option(None, "--objective", help=f"latency | flops | params {default_help(SearchConfig, 'objective')}."),
        branches: Optional[str] = typer.Option(None, "--branches", help=f"Branch counts to search, e.g. 1,2,3 {default_help(SearchConfig, 'branches')}."),
        population: Optional[int] = typer.Option(None, "--population", help=f"Population size {default_help(SearchConfig, 'population', 'the paper: 40')}."),
        generations: Optional[int] = typer.Option(None, "--generations", help=f"Generations {default_help(SearchConfig, 'generations', 'the paper: 20')}."),
        crossover: Optional[float] = typer.Option(None, "--crossover", help=f"Crossover probability {default_help(SearchConfig, 'crossover')}."),
        mutation: Optional[float] = typer.Option(None, "--mutation", help=f"Per-gene mutation probability {default_help(SearchConfig, 'mutation')}."),
        miou_min: Optional[float] = typer.Option(None, "--miou-min", help=f"Algorithm 1: keep offspring above this mIoU {default_help(SearchConfig, 'miou_min')}."),
        metric: Optional[str] = typer.Option(None, "--metric", help=f"Accuracy objective: miou | pq (a supernet of a `task panoptic` space) {default_help(SearchConfig, 'metric')}."),
        bn_images: Optional[int] = typer.Option(None, "--bn-images", help=f"Images for BN recalibration {default_help(SearchConfig, 'bn_images', 'the paper: 1000')}."),
        val_images: Optional[int] = typer.Option(None, "--val-images", help=f"Validation images per candidate {default_help(SearchConfig, 'val_images')}."),
        latency_seconds: Optional[float] = typer.Option(None, "--latency-seconds", help=f"Timed seconds per latency measurement {default_help(SearchConfig, 'latency_seconds', 'the paper: 6')}."),
        latency_input: Optional[str] = typer.Option(None, "--latency-input", help="HxW for latency [default: the data's size]."),
        latency: Optional[str] = typer.Option(None, "--latency", help=f"measure | predict: time every candidate, or rank by a latency model calibrated on this device and measure only what is written out {default_help(SearchConfig, 'latency')}."),
        latency_model: Optional[str] = typer.Option(None, "--latency-model", help="Latency model JSON to reuse (refused if made on another device or protocol) or to write [default: OUT/latency_model.json]."),
        latency_calibration: Optional[int] = typer.Option(None, "--latency-calibration", help=f"Random subnets measured to calibrate the latency model {default_help(SearchConfig, 'latency_calibration', 'give 24 with --latency-predictor features')}."),
        latency_predictor: Optional[str] = typer.Option(None, "--latency-predictor", help=f"records | features: the latency model, module records timed here plus a fitted correction, or a regression on per-op features {default_help(SearchConfig, 'latency_predictor')}."),
        seed: Optional[int] = typer.Option(None, "--seed", help=f"Seed {default_help(SearchConfig, 'seed')}."),
        device: Optional[str] = typer.Option(None, "--device", help=f"auto | cpu | cuda {default_help(SearchConfig, 'device')}."),
        config: Optional[str] = typer.Option(None, "--config", help="TOML file with a [search] table (and [supernet] for the demo's supernet)."),
        resume: bool = typer.Option(False, "--resume", help="Continue the searches checkpointed in OUT."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
    ) -> None:
        nbs: Optional[List[int]] = None
        if branches is not None:
            try:
                nbs = [int(x) for x in branches.split(",") if x.strip()]
            except ValueError:
                raise fail_usage(f"--branches takes numbers like 1,2,3, not {branches!r}") from None
        cfg = job_config(SearchConfig, "search", config, dict(
            out=emit_dsl, supernet=supernet, data=data, objective=objective, branches=nbs,
            population=population, generations=generations, crossover=crossover, mutation=mutation,
            miou_min=miou_min, metric=metric, bn_images=bn_images, val_images=val_images, latency_seconds=latency_seconds,
            latency_input=size_option(latency_input, "--latency-input"), latency=latency,
            latency_model=latency_model, latency_calibration=latency_calibration,
            latency_predictor=latency_predictor, seed=seed, device=device,
        ))

        sn_cfg = _supernet_table(config, cfg)
        out_dir_option(cfg.out, "--emit-dsl")

        def job():
            from hyctas_dsl.jobs.search import search

            res = search(cfg, resume=resume, progress=not quiet, supernet_cfg=sn_cfg)
            typer.echo(f"search: {res.evaluated} candidates evaluated in {res.seconds:.0f} s; "
                       f"{len(res.files)} Pareto members written to {res.out}/ (candidates.csv, pareto.png, summary.json)")

        run_cli_job(job, memory="(try a smaller --latency-input or fewer --bn-images)")


def _supernet_table(config: Optional[str], cfg):
    """The config file's [supernet] table: how the supernet a search trains first (without
    --supernet) is configured; beside --supernet it would be ignored, so it is an error."""
    from hyctas_dsl.jobs.config import ConfigError, SupernetConfig, load_config, merge

    try:
        sn_table = load_config(config).get("supernet")
        if sn_table is not None and cfg.supernet is not None:
            raise ConfigError(f"{config}: the [supernet] table configures the supernet a search trains when no "
                              "--supernet is given; with a supernet given it would be ignored, so remove one of them")
        return merge(SupernetConfig, config, sn_table, {}) if sn_table is not None else None
    except ConfigError as e:
        raise fail_usage(str(e)) from None
