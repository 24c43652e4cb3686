"""``hyctas train``: retrain an architecture from scratch (paper section 4.2, Table 9)."""

from __future__ import annotations

from typing import Optional

import typer

from hyctas_dsl.commands.train_supernet import run_cli_job, size_option

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

The run directory gets model.safetensors (for eval/export/bench), checkpoint.safetensors (for
--resume), config.json, log.jsonl and curve.png.
"""


def load_arch(file: str, arch_name: Optional[str], space: Optional[str]):
    """The arch of ``file`` (validated as `hyctas validate` does; located errors, exit 1)."""
    from hyctas_dsl.cli import load_checked, load_space
    from hyctas_dsl.commands.draw import pick

    sp = load_space(space)
    text, module = load_checked(file, sp)
    return pick(module, file, arch_name, want_arch=True), text


def with_task(arch, task: Optional[str]):
    """``arch`` with its task replaced by ``--task`` (None keeps the arch's own)."""
    from hyctas_dsl.cli import fail_usage
    from hyctas_dsl.validate import TASKS

    if task is None or task == arch.task:
        return arch
    if task not in TASKS:
        raise fail_usage(f"--task must be one of {', '.join(TASKS)}, not {task!r}")
    return arch.model_copy(update={"task": task})


TASK_HELP = "semantic | panoptic [default: the arch's `task`]; panoptic adds the centre heatmap and offset branches."


def register(app: typer.Typer) -> None:
    @app.command("train", help=TRAIN_HELP)
    def train_cmd(
        file: str = typer.Argument(..., help="Source file (.hy) holding the arch."),
        arch_name: Optional[str] = typer.Option(None, "--arch", help="Which arch of the file (default: the only one)."),
        space: Optional[str] = typer.Option(None, "--space", help="Validate against this space file (default: as `hyctas validate`)."),
        data: str = typer.Option("digits", "--data", help="digits | cityscapes:DIR | ade20k:DIR | folder:DIR."),
        out: str = typer.Option("runs/train", "--out", help="Run directory."),
        steps: int = typer.Option(300, "--steps", help="Training steps (the paper: 186k)."),
        batch: int = typer.Option(8, "--batch", help="Global batch (the paper: 32)."),
        crop: Optional[str] = typer.Option(None, "--crop", help="Training crop HxW [default: the data's]."),
        optimizer: str = typer.Option("sgd", "--optimizer", help="sgd (the paper) or adamw (learns short CPU budgets faster)."),
        lr: float = typer.Option(0.005, "--lr", help="Initial learning rate of the poly schedule."),
        drop_path: float = typer.Option(0.2, "--drop-path", help="Final scheduled drop-path probability (Table 9)."),
        aux: bool = typer.Option(False, "--aux/--no-aux", help="Auxiliary losses on the stride-16/32 branch outputs."),
        ohem: bool = typer.Option(False, "--ohem/--no-ohem", help="Online hard-pixel mining."),
        amp: str = typer.Option("none", "--amp", help="none | bf16 (autocast)."),
        seed: int = typer.Option(0, "--seed", help="Seed of initialisation, data order and drop path."),
        checkpoint_every: int = typer.Option(100, "--checkpoint-every", help="Steps between checkpoints."),
        eval_images: int = typer.Option(256, "--eval-images", help="Validation images for the final mIoU (0: skip)."),
        workers: Optional[int] = typer.Option(None, "--workers", help="DataLoader workers [default: 0 for digits, else 2]."),
        device: str = typer.Option("auto", "--device", help="auto | cpu | cuda."),
        resume: bool = typer.Option(False, "--resume", help="Continue the run in --out exactly."),
        stop_after: Optional[int] = typer.Option(None, "--stop-after", hidden=True, help="Stop after this step (as an interruption would)."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
        task: Optional[str] = typer.Option(None, "--task", help=TASK_HELP),
        center_weight: float = typer.Option(200.0, "--center-weight", help="Panoptic: weight of the centre heatmap MSE."),
        offset_weight: float = typer.Option(0.01, "--offset-weight", help="Panoptic: weight of the offset L1."),
    ) -> None:
        arch, _text = load_arch(file, arch_name, space)
        arch = with_task(arch, task)

        def job():
            from pydantic import ValidationError

            from hyctas_dsl.run.config import ConfigError
            from hyctas_dsl.run.retrain import TrainConfig, train

            try:
                cfg = TrainConfig(
                    data=data, out=out, steps=steps, batch=batch, crop=size_option(crop, "--crop"), optimizer=optimizer, lr=lr,
                    drop_path=drop_path, aux=aux, ohem=ohem, amp=amp, seed=seed, checkpoint_every=checkpoint_every,
                    eval_images=eval_images, workers=workers, device=device, center_weight=center_weight,
                    offset_weight=offset_weight,
                )
            except ValidationError as e:
                err = e.errors()[0]
                raise ConfigError(f"option `--{str(err['loc'][0]).replace('_', '-')}`: {err['msg']}") from None
            res = train(cfg, arch, resume=resume, progress=not quiet, stop_after=stop_after)
            if res.steps < cfg.steps:
                typer.echo(f"{arch.name}: stopped after {res.steps} of {cfg.steps} steps; continue with --resume")
                return
            miou = "" if res.miou is None else f", val mIoU {100 * res.miou:.1f}%"
            if res.pq is not None:
                miou += f", val PQ {100 * res.pq:.1f}%"
            typer.echo(f"{arch.name}: {res.steps} steps, final loss {res.final_loss:.3f}{miou}, "
                       f"{res.seconds:.0f} s -> {res.out}/model.safetensors")

        run_cli_job(job)
        from hyctas_dsl.run import dist

        dist.shutdown()
