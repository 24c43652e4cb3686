"""``hyctas train-supernet``: train a weight-sharing supernet (paper eq. 1, section 4.2)."""

from __future__ import annotations

from typing import Optional

import typer

from hyctas_dsl.commands.compile import parse_size

SUPERNET_HELP = """Train a weight-sharing supernet: one subnet sampled per step with the branch
prior of eq. 2, SGD (momentum 0.9, weight decay 5e-4), lr 0.02 decaying by 0.992 (the paper);
on the embedded digits the default is AdamW at lr 0.003, which learns in a CPU demo's minutes.

\b
  hyctas train-supernet                          # the embedded digits demo (a few minutes)
  hyctas train-supernet --steps 2000 --out runs/sn
  hyctas train-supernet --out runs/sn --resume   # continue exactly where it stopped
  torchrun --nproc-per-node 2 -m hyctas_dsl.cli train-supernet ...

Every option can also come from a TOML file (--config), table [supernet]; options given on
the command line win. The run directory gets supernet.safetensors (for `hyctas search`),
checkpoint.safetensors (for --resume), config.json and log.jsonl.
"""


def run_cli_job(job):
    """Run a long job, turning the user's mistakes into one-line errors (exit 2), located
    language errors (exit 1) and divergence (exit 1) without tracebacks."""
    from hyctas_dsl.data import DataError
    from hyctas_dsl.errors import HyctasError
    from hyctas_dsl.run.config import ConfigError
    from hyctas_dsl.run.supernet import ResumeMismatch, TrainingDiverged

    try:
        return job()
    except HyctasError as e:
        if all(d.code == "HY409" for d in e.diagnostics):
            typer.echo(f"hyctas: error: {e.diagnostics[0].headline()}", err=True)
            raise typer.Exit(2) from None
        typer.echo(e.render(), err=True)
        raise typer.Exit(1) from None
    except (ConfigError, ResumeMismatch, DataError, FileNotFoundError, IsADirectoryError, PermissionError) as e:
        typer.echo(f"hyctas: error: {e}", err=True)
        raise typer.Exit(2) from None
    except TrainingDiverged as e:
        typer.echo(f"hyctas: training diverged: {e}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        typer.echo("hyctas: interrupted; the last checkpoint is kept (use --resume)", err=True)
        raise typer.Exit(130) from None


def size_option(text: Optional[str], name: str) -> Optional[tuple[int, int]]:
    if text is None:
        return None
    try:
        return parse_size(text)
    except ValueError:
        typer.echo(f"hyctas: error: {name} must be HEIGHTxWIDTH, like 64x64, not {text!r}", err=True)
        raise typer.Exit(2) from None


def supernet_config(config: Optional[str], overrides: dict):
    from hyctas_dsl.run.config import SupernetConfig, load_config, merge

    tables = load_config(config)
    return merge(SupernetConfig, config, tables.get("supernet", {}), overrides)


def register(app: typer.Typer) -> None:
    @app.command("train-supernet", help=SUPERNET_HELP)
    def train_supernet_cmd(
        space: Optional[str] = typer.Option(None, "--space", help="Space file, or `digits` / `paper` from archs/ [default: digits]."),
        data: Optional[str] = typer.Option(None, "--data", help="digits | cityscapes:DIR | ade20k:DIR | folder:DIR [default: digits]."),
        out: Optional[str] = typer.Option(None, "--out", help="Run directory [default: runs/supernet]."),
        steps: Optional[int] = typer.Option(None, "--steps", help="Training steps [default: 3000]."),
        batch: Optional[int] = typer.Option(None, "--batch", help="Global batch [default: 16]."),
        crop: Optional[str] = typer.Option(None, "--crop", help="Training crop HxW [default: the data's]."),
        optimizer: Optional[str] = typer.Option(None, "--optimizer", help="sgd (the paper) | adamw [default: sgd; adamw on the embedded digits]."),
        lr: Optional[float] = typer.Option(None, "--lr", help="Initial learning rate [default: 0.02 for sgd, 0.003 for adamw]."),
        lr_decay: Optional[float] = typer.Option(None, "--lr-decay", help="Exponential decay [default: 0.992]."),
        decay_every: Optional[int] = typer.Option(None, "--decay-every", help="Steps per decay [default: 30]."),
        seed: Optional[int] = typer.Option(None, "--seed", help="Seed of subnets, data order and init [default: 0]."),
        checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every", help="Steps between checkpoints [default: 100]."),
        workers: Optional[int] = typer.Option(None, "--workers", help="DataLoader workers [default: 0 for digits, else 2]."),
        device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda [default: auto]."),
        scheme: Optional[str] = typer.Option(None, "--scheme", help="paper (one subnet per step) | sandwich (largest + smallest + random, BigNAS) [default: paper]."),
        random_subnets: Optional[int] = typer.Option(None, "--random-subnets", help="sandwich: random subnets per step [default: 2]."),
        distill: Optional[float] = typer.Option(None, "--distill", help="sandwich: in-place distillation weight, 0..1 [default: 0]."),
        branch_balance: Optional[bool] = typer.Option(None, "--branch-balance/--branch-prior", help="Branch counts in turn, or drawn from the space's prior [default: balance on the embedded digits, else the prior]."),
        shared_classifier: Optional[bool] = typer.Option(None, "--shared-classifier/--per-head-classifier", help="One classifier for every head, or one per head [default: shared]."),
        config: Optional[str] = typer.Option(None, "--config", help="TOML file with a [supernet] table."),
        resume: bool = typer.Option(False, "--resume", help="Continue the run in --out exactly."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    ) -> None:
        def job():
            from hyctas_dsl.run.supernet import train_supernet

            cfg = supernet_config(config, dict(
                space=space, data=data, out=out, steps=steps, batch=batch, crop=size_option(crop, "--crop"),
                optimizer=optimizer, lr=lr, lr_decay=lr_decay, decay_every=decay_every, seed=seed,
                checkpoint_every=checkpoint_every, workers=workers, device=device, scheme=scheme,
                random_subnets=random_subnets, distill=distill, branch_balance=branch_balance,
                shared_classifier=shared_classifier,
            ))
            res = train_supernet(cfg, resume=resume, progress=not quiet)
            typer.echo(f"supernet: {res.steps} steps, final loss {res.final_loss:.3f}, {res.seconds:.0f} s -> {res.out}/supernet.safetensors")

        run_cli_job(job)
