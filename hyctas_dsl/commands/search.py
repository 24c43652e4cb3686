"""``hyctas search``: NSGA-II over the supernet, the Pareto front emitted as .hy source."""

from __future__ import annotations

from typing import List, Optional

import typer

from hyctas_dsl.commands.train_supernet import run_cli_job, size_option

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
        emit_dsl: Optional[str] = typer.Option(None, "--emit-dsl", help="Output directory for the Pareto front [default: runs/search]."),
        supernet: Optional[str] = typer.Option(None, "--supernet", help="Supernet run directory or .safetensors (default: train one into OUT/supernet)."),
        data: Optional[str] = typer.Option(None, "--data", help="digits | cityscapes:DIR | ade20k:DIR | folder:DIR [default: digits]."),
        objective: Optional[str] = typer.Option(None, "--objective", help="latency | flops | params [default: latency]."),
        branches: Optional[str] = typer.Option(None, "--branches", help="Branch counts to search, e.g. 1,2,3 [default: 1,2,3]."),
        population: Optional[int] = typer.Option(None, "--population", help="Population size [default: 8; the paper: 40]."),
        generations: Optional[int] = typer.Option(None, "--generations", help="Generations [default: 4; the paper: 20]."),
        crossover: Optional[float] = typer.Option(None, "--crossover", help="Crossover probability [default: 0.9]."),
        mutation: Optional[float] = typer.Option(None, "--mutation", help="Per-gene mutation probability [default: 0.02]."),
        miou_min: Optional[float] = typer.Option(None, "--miou-min", help="Algorithm 1: keep offspring above this mIoU [default: 0]."),
        bn_images: Optional[int] = typer.Option(None, "--bn-images", help="Images for BN recalibration [default: 128; the paper: 1000]."),
        val_images: Optional[int] = typer.Option(None, "--val-images", help="Validation images per candidate [default: 256]."),
        latency_seconds: Optional[float] = typer.Option(None, "--latency-seconds", help="Timed seconds per latency measurement [default: 0.3; the paper: 6]."),
        latency_input: Optional[str] = typer.Option(None, "--latency-input", help="HxW for latency [default: the data's size]."),
        latency: Optional[str] = typer.Option(None, "--latency", help="measure | predict: time every candidate, or rank by a latency model calibrated on this device and measure only what is written out [default: predict]."),
        latency_model: Optional[str] = typer.Option(None, "--latency-model", help="Latency model JSON to reuse (refused if made on another device or protocol) or to write [default: OUT/latency_model.json]."),
        latency_calibration: Optional[int] = typer.Option(None, "--latency-calibration", help="Random subnets measured to calibrate the latency model [default: 24]."),
        seed: Optional[int] = typer.Option(None, "--seed", help="Seed [default: 0]."),
        device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda [default: auto]."),
        config: Optional[str] = typer.Option(None, "--config", help="TOML file with a [search] table (and [supernet] for the demo's supernet)."),
        resume: bool = typer.Option(False, "--resume", help="Continue the searches checkpointed in OUT."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
    ) -> None:
        def job():
            from hyctas_dsl.run.config import ConfigError, SearchConfig, load_config, merge
            from hyctas_dsl.run.search import search

            nbs: Optional[List[int]] = None
            if branches is not None:
                try:
                    nbs = [int(x) for x in branches.split(",") if x.strip()]
                except ValueError:
                    raise ConfigError(f"--branches takes numbers like 1,2,3, not {branches!r}") from None
            tables = load_config(config)
            cfg = merge(SearchConfig, config, tables.get("search", {}), dict(
                out=emit_dsl, supernet=supernet, data=data, objective=objective, branches=nbs,
                population=population, generations=generations, crossover=crossover, mutation=mutation,
                miou_min=miou_min, bn_images=bn_images, val_images=val_images, latency_seconds=latency_seconds,
                latency_input=size_option(latency_input, "--latency-input"), latency=latency,
                latency_model=latency_model, latency_calibration=latency_calibration, seed=seed, device=device,
            ))
            res = search(cfg, resume=resume, progress=not quiet)
            typer.echo(f"search: {res.evaluated} candidates evaluated in {res.seconds:.0f} s; "
                       f"{len(res.files)} Pareto members written to {res.out}/ (candidates.csv, pareto.png, summary.json)")

        run_cli_job(job)
