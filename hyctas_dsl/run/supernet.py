"""Supernet training (paper eq. 1, section 4.2 "Search"): one subnet sampled per step with
the branch prior of eq. 2, so a step holds only that subnet's activations (Table 1,
"Memory Cost: One subnet").

SGD (momentum 0.9, weight decay 5e-4), lr 0.02 with exponential decay 0.992 every
``decay_every`` steps (on the embedded digits the default is AdamW at 0.003: see
``SupernetConfig.resolved``). A run directory holds:

- ``checkpoint.safetensors``: supernet weights, optimizer momentum and the step, in one file
  written atomically every ``checkpoint_every`` steps (the state ``--resume`` continues from);
- ``supernet.safetensors``: the supernet alone, for ``hyctas search`` (hyctas_dsl.compiler);
- ``config.json``: the effective config, seed, package versions and device;
- ``log.jsonl``: loss, lr and throughput per logged step.

Resuming is exact: the subnet of step k is sampled from (seed, k) and the batch of step k is a
pure function of (seed, k) (``common.step_batch``), so an interrupted and resumed run ends
with the same weights as an uninterrupted one.

Under torchrun every rank samples the same subnet and takes every world-th sample of the
step's global batch; gradients are summed over ranks with all_reduce (the loss is normalised
by the global count of labelled pixels), which is what DistributedDataParallel does, written
out because each step runs a different subnet of the shared weights.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as torch_dist

from hyctas_dsl.run import dist
from hyctas_dsl.run.common import (  # noqa: F401 - the errors are re-exported for callers
    ResumeMismatch,
    TrainingDiverged,
    append_log,
    check_finite,
    Progress,
    check_resumable,
    load_optimizer_tensors,
    make_optimizer,
    optimizer_tensors,
    resolve_space,
    seg_loss,
    step_loader,
)
from hyctas_dsl.run.config import SupernetConfig
from hyctas_dsl.run.schemes import step_subnets, train_step
from hyctas_dsl.run.io import atomic_path, environment, read_json, write_json

__all__ = ["train_supernet", "TrainingDiverged", "ResumeMismatch", "SupernetResult"]

CHECKPOINT = "checkpoint.safetensors"
SUPERNET = "supernet.safetensors"
LOG_EVERY = 10

# Options that may change between a run and its resumption (more steps, other workers).
_RESUMABLE = {"steps", "workers", "checkpoint_every", "device", "out"}


@dataclass
class SupernetResult:
    out: Path
    steps: int
    final_loss: float
    seconds: float


def _lr(cfg: SupernetConfig, step: int) -> float:
    return cfg.lr * cfg.lr_decay ** (step // cfg.decay_every)


def _save_checkpoint(path: Path, supernet, optimizer, step: int, cfg: SupernetConfig, loss: float) -> None:
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().contiguous() for k, v in supernet.state_dict().items()}
    tensors.update(optimizer_tensors(supernet, optimizer))
    meta = {"format": "hyctas-supernet-train-1", "step": str(step), "config": cfg.model_dump_json(), "loss": repr(loss)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def _load_checkpoint(path: Path, supernet, optimizer) -> tuple[int, dict, float]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != "hyctas-supernet-train-1":
            raise ResumeMismatch(f"{path}: not a hyctas supernet training checkpoint")
        model_state = {k[len("model.") :]: f.get_tensor(k) for k in f.keys() if k.startswith("model.")}
        opt_state = {k[len("optim.") :]: f.get_tensor(k) for k in f.keys() if k.startswith("optim.")}
    supernet.load_state_dict(model_state, strict=True)
    load_optimizer_tensors(supernet, optimizer, opt_state)
    return int(meta["step"]), json.loads(meta["config"]), float(meta.get("loss", "nan"))


def train_supernet(cfg: SupernetConfig, resume: bool = False, progress: bool = True) -> SupernetResult:
    """Train a supernet as configured; returns where it was written."""
    from hyctas_dsl.compiler import Supernet
    from hyctas_dsl.compiler.checkpoint import save_supernet
    from hyctas_dsl.data import make_datasets

    cfg = cfg.resolved()
    info = dist.init(cfg.device)
    out = Path(cfg.out)
    space = resolve_space(cfg.space)
    torch.manual_seed(cfg.seed)
    panoptic = space.task == "panoptic"  # labels are panoptic id maps; sampled archs are panoptic
    if panoptic:
        from hyctas_dsl.run.panoptic import panoptic_targets
        from hyctas_dsl.run.panoptic_eval import make_panoptic_datasets

        train_set, _val = make_panoptic_datasets(cfg.data, seed=cfg.seed, crop=cfg.crop)
    else:
        train_set, _val = make_datasets(cfg.data, seed=cfg.seed, crop=cfg.crop)
    classes = train_set.info.num_classes
    supernet = Supernet(space, classes=classes, shared_classifier=cfg.shared_classifier).to(info.device)
    optimizer = make_optimizer(cfg, supernet.parameters())

    start, last_loss = 0, float("nan")
    ckpt = out / CHECKPOINT
    if resume:
        if not ckpt.exists():
            raise ResumeMismatch(f"{out}: no {CHECKPOINT} to resume from")
        start, saved, last_loss = _load_checkpoint(ckpt, supernet, optimizer)
        check_resumable(cfg, saved, _RESUMABLE, out)
    elif ckpt.exists():
        raise ResumeMismatch(f"{out} already holds a training run; pass --resume to continue it or choose another --out")

    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(
            out / "config.json",
            {"command": "train-supernet", "config": cfg.model_dump(mode="json"), "classes": classes,
             "space": space.name, "world_size": info.world, "environment": environment(info.device)},
        )
        _trim_log(out / "log.jsonl", start)

    loader = step_loader(train_set, cfg.batch, cfg.seed, start, cfg.steps, info.rank, info.world, default_workers(cfg))
    meter = Progress(cfg.steps, start, "supernet", progress and info.is_main)
    step = start
    loss_value = last_loss
    supernet.train()
    for step, (x, y) in enumerate(loader, start=start):
        subnets = step_subnets(space, cfg, step)
        x, y = x.to(info.device), y.to(info.device)
        if panoptic:
            targets = panoptic_targets(y, train_set.source.things)
            y = targets.semantic
        labelled = float((y != 255).sum())
        if info.enabled:
            t = torch.tensor([labelled], device=info.device)
            torch_dist.all_reduce(t)
            labelled = float(t.item())
        for group in optimizer.param_groups:
            group["lr"] = _lr(cfg, step)
        optimizer.zero_grad(set_to_none=True)
        loss_sum = train_step(supernet, subnets, x, y, labelled, cfg.distill,
                              targets if panoptic else None, info.world)
        if info.enabled:
            torch_dist.all_reduce(loss_sum)
            for p in supernet.parameters():
                if p.grad is not None:
                    torch_dist.all_reduce(p.grad)
        loss_value = float(loss_sum.item())
        check_finite(loss_value, step, ckpt, cfg.lr)
        optimizer.step()
        done = step + 1
        if info.is_main:
            rate = meter.step(cfg.batch, loss_value, f"{_lr(cfg, step):.4f}")
            if done % LOG_EVERY == 0 or done == cfg.steps:
                append_log(out / "log.jsonl", {"step": done, "loss": loss_value, "lr": _lr(cfg, step), "img_per_s": rate})
            if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                _save_checkpoint(ckpt, supernet, optimizer, done, cfg, loss_value)
                save_supernet(supernet, out / SUPERNET)
    meter.close()
    dist.barrier(info)
    if info.is_main and start >= cfg.steps and not (out / SUPERNET).exists():
        save_supernet(supernet, out / SUPERNET)
    return SupernetResult(out, cfg.steps, loss_value, time.perf_counter() - meter.t0)


def default_workers(cfg) -> int:
    """In-memory digit scenes cost less to make than to send between processes."""
    if cfg.workers is not None:
        return cfg.workers
    return 0 if cfg.data.split(":")[0] == "digits" else 2


def _trim_log(path: Path, step: int) -> None:
    """On resume, drop log lines past the checkpoint, so the log reads as one run."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (ValueError, KeyError):
            continue
    with atomic_path(path) as tmp:
        tmp.write_text("".join(k + "\n" for k in keep), encoding="utf-8")


def load_run_config(out: Path) -> dict:
    return read_json(Path(out) / "config.json")
