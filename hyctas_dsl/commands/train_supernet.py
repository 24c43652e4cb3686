"""``hyctas train-supernet``: train a weight-sharing supernet (paper eq. 1, section 4.2)."""

from __future__ import annotations

from typing import Optional

import typer

from hyctas_dsl.cli_support import default_help, job_config, out_dir_option, run_cli_job, size_option
from hyctas_dsl.jobs.config import SupernetConfig

SUPERNET_HELP = """Train a weight-sharing supernet: one subnet sampled per step with the branch
prior of eq. 2, SGD (momentum 0.9, weight decay 5e-4), lr 0.02 decaying by 0.992 (the paper);
on the embedded digits the default is AdamW at lr 0.003 with the branch counts in turn, in two
processes that each train their own subnet per step (--procs, --subnet-per-rank), which
learns the cells in a CPU demo's minutes. Every head shares one classifier (--per-head-classifier for
one each); --scheme sandwich trains the largest, the smallest and random subnets each step
(BigNAS), --distill teaching the small ones with the largest one's predictions.

\b
  hyctas train-supernet                          # the embedded digits demo (~6 min on 2 cores)
  hyctas train-supernet --steps 2000 --out runs/sn
  hyctas train-supernet --out runs/sn --resume   # continue exactly where it stopped
  hyctas train-supernet --procs 2                # two processes, one subnet each per step
  torchrun --nproc-per-node 2 -m hyctas_dsl.cli train-supernet ...

Every option can also come from a TOML file (--config), table [supernet]; options given on
the command line win. The run directory gets supernet.safetensors (for `hyctas search`),
checkpoint.safetensors (for --resume), config.json and log.jsonl.
"""

# The flag pair's default in words, read from the model (where it is kept).
_SHARED_DEFAULT = "shared" if SupernetConfig.model_fields["shared_classifier"].default else "per head"


def register(app: typer.Typer) -> None:
    @app.command("train-supernet", help=SUPERNET_HELP)
    def train_supernet_cmd(
        space: Optional[str] = typer.Option(None, "--space", help=f"Space file, or `digits` / `paper` from archs/ {default_help(SupernetConfig, 'space')}."),
        data: Optional[str] = typer.Option(None, "--data", help=f"digits | cityscapes:DIR | ade20k:DIR | folder:DIR {default_help(SupernetConfig, 'data')}."),
        out: Optional[str] = typer.Option(None, "--out", help=f"Run directory {default_help(SupernetConfig, 'out')}."),
        steps: Optional[int] = typer.Option(None, "--steps", help=f"Training steps {default_help(SupernetConfig, 'steps')}."),
        batch: Optional[int] = typer.Option(None, "--batch", help=f"Global batch {default_help(SupernetConfig, 'batch')}."),
        crop: Optional[str] = typer.Option(None, "--crop", help="Training crop HxW [default: the data's]."),
        optimizer: Optional[str] = typer.Option(None, "--optimizer", help="sgd (the paper) | adamw [default: sgd; adamw on the embedded digits]."),
        lr: Optional[float] = typer.Option(None, "--lr", help="Initial learning rate [default: 0.02 for sgd, 0.003 for adamw]."),
        lr_decay: Optional[float] = typer.Option(None, "--lr-decay", help=f"Exponential decay {default_help(SupernetConfig, 'lr_decay')}."),
        decay_every: Optional[int] = typer.Option(None, "--decay-every", help="Steps per decay [default: 100 on the embedded digits, else 30]."),
        seed: Optional[int] = typer.Option(None, "--seed", help=f"Seed of subnets, data order and init {default_help(SupernetConfig, 'seed')}."),
        checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every", help=f"Steps between checkpoints {default_help(SupernetConfig, 'checkpoint_every')}."),
        workers: Optional[int] = typer.Option(None, "--workers", help="DataLoader workers [default: 0 for digits, else 2]."),
        device: Optional[str] = typer.Option(None, "--device", help=f"auto | cpu | cuda {default_help(SupernetConfig, 'device')}."),
        scheme: Optional[str] = typer.Option(None, "--scheme", help="paper (one subnet per step) | sandwich (largest + smallest + random, BigNAS) [default: paper]."),
        random_subnets: Optional[int] = typer.Option(None, "--random-subnets", help=f"sandwich: random subnets per step {default_help(SupernetConfig, 'random_subnets')}."),
        distill: Optional[float] = typer.Option(None, "--distill", help="sandwich: in-place distillation weight, 0..1 [default: 0]."),
        branch_balance: Optional[bool] = typer.Option(None, "--branch-balance/--branch-prior", help="Branch counts in turn, or drawn from the space's prior [default: balance on the embedded digits, else the prior].", show_default=False),
        output_stride_aux: Optional[float] = typer.Option(None, "--output-stride-aux", help="Also train each sampled subnet's head at the other output stride, on the same forward of its body, with this loss weight; 0: off [default: 0]."),
        stem_drop: Optional[float] = typer.Option(None, "--stem-drop", help="Probability per subnet and step that the head gets zeros in place of the stem's stride-4 feature (its stride-4 merge must then use the cells), 0..1 [default: 0.5 on the embedded digits, else 0]."),
        procs: Optional[int] = typer.Option(None, "--procs", help="Processes training in parallel on this machine [default: 2 on the embedded digits on a CPU with 2+ cores, else 1]."),
        subnet_per_rank: Optional[bool] = typer.Option(None, "--subnet-per-rank/--same-subnet", help="With several processes, each trains its own sampled subnet per step, or all the same one [default: own on the embedded digits].", show_default=False),
        shared_classifier: Optional[bool] = typer.Option(None, "--shared-classifier/--per-head-classifier", help=f"One classifier for every head, or one per head [default: {_SHARED_DEFAULT}].", show_default=False),
        config: Optional[str] = typer.Option(None, "--config", help="TOML file with a [supernet] table."),
        resume: bool = typer.Option(False, "--resume", help="Continue the run in --out exactly."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    ) -> None:
        # Every option is checked before any work starts.
        cfg = job_config(SupernetConfig, "supernet", config, dict(
            space=space, data=data, out=out, steps=steps, batch=batch, crop=size_option(crop, "--crop"),
            optimizer=optimizer, lr=lr, lr_decay=lr_decay, decay_every=decay_every, seed=seed,
            checkpoint_every=checkpoint_every, workers=workers, device=device, scheme=scheme,
            random_subnets=random_subnets, distill=distill, branch_balance=branch_balance,
            shared_classifier=shared_classifier, output_stride_aux=output_stride_aux, stem_drop=stem_drop, procs=procs,
            subnet_per_rank=subnet_per_rank,
        ))

        out_dir_option(cfg.out)

        def job():
            from hyctas_dsl.jobs.supernet_training import train_supernet

            res = train_supernet(cfg, resume=resume, progress=not quiet)
            if res is None:  # a torchrun rank other than 0
                return
            typer.echo(f"supernet: {res.steps} steps, final loss {res.final_loss:.3f}, {res.seconds:.0f} s -> {res.out}/supernet.safetensors")

        run_cli_job(job, memory="(try a smaller --batch or --crop)")
