"""``hyctas eval``: mIoU of trained weights (paper section 4.2, "Evaluation"; Figure 5)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from hyctas_dsl.commands.train import load_arch
from hyctas_dsl.commands.train_supernet import run_cli_job


def weights_path(weights: str) -> Path:
    """A model file, or a `hyctas train` run directory holding model.safetensors."""
    p = Path(weights)
    if p.is_dir():
        if (p / "model.safetensors").is_file():
            return p / "model.safetensors"
        if (p / "checkpoint.safetensors").is_file():
            raise FileNotFoundError(f"{weights}: the run has not finished (no model.safetensors); continue it with --resume")
        raise FileNotFoundError(f"{weights}: no model.safetensors in this directory")
    if not p.exists():
        raise FileNotFoundError(f"{weights}: no such file")
    return p


def load_weights(weights: str, arch, classes: Optional[int] = None):
    """The network of ``arch`` with the weights of ``weights``; a file written for another
    arch or class count is a one-line error (exit 2), never a shape traceback."""
    from hyctas_dsl.api import canonical_key
    from hyctas_dsl.compiler.checkpoint import load_model, load_model_arch
    from hyctas_dsl.run.config import ConfigError

    path = weights_path(weights)
    stored, n = load_model_arch(path)
    if canonical_key(stored) != canonical_key(arch):
        raise ConfigError(f"{weights}: these weights belong to arch `{stored.name}` ({canonical_key(stored)}), "
                          f"not to `{arch.name}` ({canonical_key(arch)})")
    if classes is not None and classes != n:
        raise ConfigError(f"{weights}: the model predicts {n} classes, but the data has {classes}")
    return load_model(path).eval(), n


def parse_scales(text: str) -> tuple[float, ...]:
    try:
        scales = tuple(float(s) for s in text.split(",") if s.strip())
    except ValueError:
        scales = ()
    if not scales or any(not 0.1 <= s <= 4 for s in scales):
        typer.echo(f"hyctas: error: --scales must be a comma-separated list of factors in 0.1..4, like 0.75,1,1.25, not {text!r}", err=True)
        raise typer.Exit(2)
    return scales


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def eval_cmd(
        file: str = typer.Argument(..., help="Source file (.hy) holding the arch."),
        weights: str = typer.Option(..., "--weights", "-w", help="model.safetensors (or a `hyctas train` run directory)."),
        arch_name: Optional[str] = typer.Option(None, "--arch", help="Which arch of the file (default: the only one)."),
        space: Optional[str] = typer.Option(None, "--space", help="Validate against this space file."),
        data: str = typer.Option("digits", "--data", help="digits | cityscapes:DIR | ade20k:DIR | folder:DIR (its val split)."),
        flip: bool = typer.Option(False, "--flip", help="Average with the horizontally flipped image."),
        scales: str = typer.Option("1", "--scales", help="Multi-scale inference, e.g. 0.75,1,1.25 [default: single scale]."),
        images: Optional[int] = typer.Option(None, "--images", help="Evaluate the first N validation images [default: all]."),
        out: Optional[str] = typer.Option(None, "--out", help="Write eval.json, confusion.npy/.csv and predictions.png here."),
        samples: int = typer.Option(6, "--samples", help="Rows of the picture grid."),
        device: str = typer.Option("auto", "--device", help="auto | cpu | cuda."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    ) -> None:
        """Evaluate trained weights on a data set's validation split: IoU per class and mIoU,
        single-scale without flipping by default (as the paper reports), --flip and --scales
        optional. With --out: eval.json, the confusion matrix (.npy, .csv; rows = ground
        truth) and a picture grid of image / ground truth / prediction (Figure 5).

        Exit 0 on success, 1 when the arch is invalid, 2 for unreadable files, weights of
        another arch or class count, and bad options.
        """
        scale_list = parse_scales(scales)
        if images is not None and images < 1:
            typer.echo("hyctas: error: --images must be at least 1", err=True)
            raise typer.Exit(2)
        arch, _text = load_arch(file, arch_name, space)

        def job():
            from hyctas_dsl.data import make_datasets
            from hyctas_dsl.run import dist
            from hyctas_dsl.run.evaluation import evaluate, format_table, save_eval

            info = dist.init(device)
            _train, val = make_datasets(data)
            model, _n = load_weights(weights, arch, val.info.num_classes)
            model = model.to(info.device)
            n = len(val) if images is None else min(images, len(val))
            from hyctas_dsl.run.bench import default_channels_last

            res = evaluate(model, val, list(range(n)), info.device, scale_list, flip, samples=samples if out else 0,
                           dist_info=info, progress=not quiet and info.is_main,
                           channels_last=default_channels_last(info.device))
            if not info.is_main:
                return
            typer.echo(format_table(res))
            if out:
                paths = save_eval(res, val.info, out, f"{arch.name}: mIoU {100 * res.miou:.1f}%")
                typer.echo(f"wrote {paths['json']}, {paths['npy']}, {paths['csv']}, {paths['grid']}")

        run_cli_job(job)
