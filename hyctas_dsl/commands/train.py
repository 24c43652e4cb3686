"""``hyctas train``: retrain an architecture from scratch (paper section 4.2, Table 9)."""

from __future__ import annotations

from typing import Optional

import typer

from hyctas_dsl.cli_support import TASK_HELP, default_help, job_config, load_arch, out_dir_option, run_cli_job, size_option, with_task
from hyctas_dsl.jobs.config import TrainConfig

TRAIN_HELP = """Retrain an architecture from scratch (paper section 4.2 "Retrain"): SGD (momentum
0.9, weight decay 5e-4), poly learning rate from 0.005, scheduled drop path rising to 0.2
(Table 9), random scale/crop/flip; optional auxiliary losses on the stride-16/32 branch
outputs (--aux) and online hard-pixel mining (--ohem).

\b
  hyctas train archs/hyctas_s.hy --steps 300 --out runs/s     # embedded digits, minutes
  hyctas train my.hy --data cityscapes:/data/cs --steps 186000 --batch 32 --crop 512x1024
  hyctas train my.hy --out runs/s --resume                     # continue exactly
  hyctas train my.hy --task panoptic --data cityscapes:/data/cs # + centre/offset heads, PQ
  torchrun --nproc-per-node 2 -m hyctas_dsl.cli train my.hy ...

Every option can also come from a TOML file (--config), table [train]; options given on the
command line win. The run directory gets model.safetensors (for eval/export/bench), checkpoint.safetensors (for
--resume), config.json, log.jsonl and curve.png.
"""


def register(app: typer.Typer) -> None:
    @app.command("train", help=TRAIN_HELP)
    def train_cmd(
        file: str = typer.Argument(..., help="Source file (.hy) holding the arch."),
        arch_name: Optional[str] = typer.Option(None, "--arch", help="Which arch of the file (default: the only one)."),
        space: Optional[str] = typer.Option(None, "--space", help="Validate against this space file (default: as `hyctas validate`)."),
        data: Optional[str] = typer.Option(None, "--data", help=f"digits | cityscapes:DIR | ade20k:DIR | folder:DIR {default_help(TrainConfig, 'data')}."),
        out: Optional[str] = typer.Option(None, "--out", help=f"Run directory {default_help(TrainConfig, 'out')}."),
        steps: Optional[int] = typer.Option(None, "--steps", help=f"Training steps (the paper: 186k) {default_help(TrainConfig, 'steps')}."),
        batch: Optional[int] = typer.Option(None, "--batch", help=f"Global batch (the paper: 32) {default_help(TrainConfig, 'batch')}."),
        crop: Optional[str] = typer.Option(None, "--crop", help="Training crop HxW [default: the data's]."),
        optimizer: Optional[str] = typer.Option(None, "--optimizer", help=f"sgd (the paper) or adamw (learns short CPU budgets faster) {default_help(TrainConfig, 'optimizer')}."),
        lr: Optional[float] = typer.Option(None, "--lr", help=f"Initial learning rate of the poly schedule {default_help(TrainConfig, 'lr')}."),
        drop_path: Optional[float] = typer.Option(None, "--drop-path", help=f"Final scheduled drop-path probability (Table 9) {default_help(TrainConfig, 'drop_path')}."),
        aux: Optional[bool] = typer.Option(None, "--aux/--no-aux", help=f"Auxiliary losses on the stride-16/32 branch outputs {default_help(TrainConfig, 'aux')}.", show_default=False),
        ohem: Optional[bool] = typer.Option(None, "--ohem/--no-ohem", help=f"Online hard-pixel mining {default_help(TrainConfig, 'ohem')}.", show_default=False),
        amp: Optional[str] = typer.Option(None, "--amp", help=f"none | bf16 (autocast) {default_help(TrainConfig, 'amp')}."),
        seed: Optional[int] = typer.Option(None, "--seed", help=f"Seed of initialisation, data order and drop path {default_help(TrainConfig, 'seed')}."),
        checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every", help=f"Steps between checkpoints {default_help(TrainConfig, 'checkpoint_every')}."),
        eval_images: Optional[int] = typer.Option(None, "--eval-images", help=f"Validation images for the final mIoU (0: skip) {default_help(TrainConfig, 'eval_images')}."),
        workers: Optional[int] = typer.Option(None, "--workers", help="DataLoader workers [default: 0 for digits, else 2]."),
        device: Optional[str] = typer.Option(None, "--device", help=f"auto | cpu | cuda {default_help(TrainConfig, 'device')}."),
        task: Optional[str] = typer.Option(None, "--task", help=TASK_HELP),
        center_weight: Optional[float] = typer.Option(None, "--center-weight", help=f"Panoptic: weight of the centre heatmap MSE {default_help(TrainConfig, 'center_weight')}."),
        offset_weight: Optional[float] = typer.Option(None, "--offset-weight", help=f"Panoptic: weight of the offset L1 {default_help(TrainConfig, 'offset_weight')}."),
        config: Optional[str] = typer.Option(None, "--config", help="TOML file with a [train] table."),
        resume: bool = typer.Option(False, "--resume", help="Continue the run in --out exactly."),
        stop_after: Optional[int] = typer.Option(None, "--stop-after", hidden=True, help="Stop after this step (as an interruption would)."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    ) -> None:
        # Every option is checked before any work starts.
        cfg = job_config(TrainConfig, "train", config, dict(
            data=data, out=out, steps=steps, batch=batch, crop=size_option(crop, "--crop"), optimizer=optimizer, lr=lr,
            drop_path=drop_path, aux=aux, ohem=ohem, amp=amp, seed=seed, checkpoint_every=checkpoint_every,
            eval_images=eval_images, workers=workers, device=device, center_weight=center_weight,
            offset_weight=offset_weight,
        ))
        out_dir_option(cfg.out)
        arch, _text = load_arch(file, arch_name, space)
        arch = with_task(arch, task)

        def job():
            from hyctas_dsl.jobs.retrain import train

            res = train(cfg, arch, resume=resume, progress=not quiet, stop_after=stop_after)
            if res.steps < cfg.steps:
                typer.echo(f"{arch.name}: stopped after {res.steps} of {cfg.steps} steps; continue with --resume")
                return
            miou = "" if res.miou is None else f", val mIoU {100 * res.miou:.1f}%"
            if res.pq is not None:
                miou += f", val PQ {100 * res.pq:.1f}%"
            typer.echo(f"{arch.name}: {res.steps} steps, final loss {res.final_loss:.3f}{miou}, "
                       f"{res.seconds:.0f} s -> {res.out}/model.safetensors")

        try:
            run_cli_job(job, memory="(try a smaller --batch or --crop)")
        finally:
            from hyctas_dsl.jobs import dist

            dist.shutdown()
