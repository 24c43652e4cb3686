"""Retraining a searched architecture from scratch (paper section 4.2, "Retrain"; Table 9).

SGD (momentum 0.9, weight decay 5e-4), the 'poly' learning rate from 0.005 (power 0.9),
scheduled drop path rising linearly from 0 to ``drop_path`` (0.2, Table 9 #3) over training,
random scale/crop/flip (the data set's ``TrainTransform``), optional auxiliary losses on the
stride-16 and stride-32 branch outputs and optional online hard-pixel mining (OHEM).

A run directory holds:

- ``checkpoint.safetensors``: network + auxiliary classifiers, SGD momentum and the step, one
  file written atomically every ``checkpoint_every`` steps (what ``--resume`` continues from);
- ``model.safetensors``: the standalone network (arch text as metadata) for ``hyctas eval``,
  ``hyctas export`` and ``hyctas bench --weights``;
- ``config.json`` (effective config, arch, environment), ``log.jsonl`` (loss, lr, drop path,
  images/s per logged step, validation mIoU at the end), ``curve.png`` (the training curve).

Exact resume: the batch of step k is a pure function of (seed, k) (``common.step_batch``) and
the torch RNG (drop-path masks) is re-seeded from (seed, k, rank) at every step, so an
interrupted and resumed run ends with the same weights as an uninterrupted one.

Under torchrun each rank takes every world-th sample of the step's global batch; the model is
wrapped in DistributedDataParallel and BatchNorm computes its statistics over the global batch
(``torch.nn.SyncBatchNorm`` on GPU; on CPU, where SyncBatchNorm refuses to run, the
``GlobalBatchNorm2d`` below does the same with differentiable all-reduces), and losses are
normalised by the global count of pixels, so one process and N processes at the same global
batch compute the same step up to float rounding. Drop-path masks are drawn per rank and so
differ from a single process's: with drop path on, runs agree in distribution, not bitwise.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import nn

from hyctas_dsl.language.ast import Arch
from hyctas_dsl.jobs import dist
from hyctas_dsl.jobs.common import IGNORE, Progress, make_optimizer, step_loader
from hyctas_dsl.jobs.config import TrainConfig
from hyctas_dsl.jobs.errors import JobError
from hyctas_dsl.fileio import atomic_path
from hyctas_dsl.jobs.rundir import CHECKPOINT, RunDir
from hyctas_dsl.jobs.supernet_training import default_workers

__all__ = ["TrainConfig", "TrainResult", "RetrainNet", "GlobalBatchNorm2d", "train", "poly_lr",
           "drop_path_at", "ohem_loss", "plot_curve", "CHECKPOINT", "MODEL"]

MODEL = "model.safetensors"
FORMAT = "hyctas-train-1"
LOG_EVERY = 10
AUX_STRIDES = (16, 32)

# Options that may change between a run and its resumption.
_RESUMABLE = {"workers", "checkpoint_every", "device", "out", "eval_images"}


@dataclass
class TrainResult:
    out: Path
    steps: int
    final_loss: float
    seconds: float
    miou: Optional[float]
    pq: Optional[float] = None  # panoptic archs


def poly_lr(cfg: TrainConfig, step: int) -> float:
    """The 'poly' policy: lr0 * (1 - step / steps) ** power (section 4.2)."""
    return cfg.lr * (1.0 - step / cfg.steps) ** cfg.power


def drop_path_at(cfg: TrainConfig, step: int) -> float:
    """Scheduled drop path [6]: rises linearly from 0 to ``cfg.drop_path`` over training."""
    return cfg.drop_path * step / cfg.steps


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose training statistics cover the global batch of all ranks, on any
    device: mean and variance from all-reduced sums (differentiable, so the gradient is the
    single-process one). ``torch.nn.SyncBatchNorm`` does this on GPU only."""

    group = None  # a process group of its own, so its collectives never interleave with DDP's

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch_dist.is_initialized()):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        c = x.shape[1]
        xf = x.float()
        count = torch.full([1], float(x.numel() // c), dtype=torch.float32, device=x.device)
        stats = all_reduce(torch.cat([xf.sum((0, 2, 3)), (xf * xf).sum((0, 2, 3)), count]), group=GlobalBatchNorm2d.group)
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c : 2 * c] / n - mean * mean).clamp_min(0.0)
        with torch.no_grad():
            self.num_batches_tracked += 1
            m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1).clamp_min(1.0), alpha=m)
        y = (xf - mean[None, :, None, None]) * torch.rsqrt(var + self.eps)[None, :, None, None]
        return (y * self.weight[None, :, None, None] + self.bias[None, :, None, None]).to(x.dtype)


def _sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if GlobalBatchNorm2d.group is None:
        GlobalBatchNorm2d.group = torch_dist.new_group()
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            new = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            new.load_state_dict(child.state_dict())
            new.to(child.weight.device)
            setattr(module, name, new)
        else:
            _sync_batchnorm(child, device)
    return module


class RetrainNet(nn.Module):
    """The exported network plus what only training needs: 1x1 auxiliary classifiers on the
    branch outputs at stride 16 and 32, read through a forward pre-hook on the head (the
    network itself is unchanged, so its weights export as they are)."""

    def __init__(self, net: nn.Module, arch: Arch, classes: int, aux: bool):
        super().__init__()
        self.net = net
        strides = sorted(arch.head.strides)
        self.aux_index = [i for i, s in enumerate(strides) if aux and s in AUX_STRIDES]
        self.aux_strides = [strides[i] for i in self.aux_index]
        self.aux = nn.ModuleList()
        for i in self.aux_index:
            c = net.head.proj[i].conv.in_channels
            self.aux.append(nn.Sequential(
                nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, classes, 1)
            ))
        self._feats: list[torch.Tensor] = []
        if self.aux_index:
            net.head.register_forward_pre_hook(self._grab)

    def _grab(self, _module, args):
        self._feats = list(args[0])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        logits = self.net(x)
        aux = []
        if self.training and self.aux_index:
            h, w = x.shape[2], x.shape[3]
            for i, head in zip(self.aux_index, self.aux):
                # branch outputs live on the input zero-padded to a multiple of 32 (pad32):
                # upsample to that size and crop, as the head does with the main logits
                y = F.interpolate(head(self._feats[i]), size=[h + (-h) % 32, w + (-w) % 32], mode="bilinear", align_corners=False)
                aux.append(y[:, :, :h, :w])
            self._feats = []
        return logits, aux


def ohem_loss(logits: torch.Tensor, labels: torch.Tensor, thresh: float, min_kept: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Online hard-pixel mining, per image: keep the labelled pixels whose true-class
    probability is below ``thresh`` (loss above -log thresh), and at least the ``min_kept``
    hardest. Per-image selection does not depend on how a batch is split over ranks.
    Returns (sum of kept pixel losses, number kept)."""
    pix = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE, reduction="none")
    total = pix.sum() * 0.0  # stays in the graph when no pixel is labelled
    kept = pix.new_zeros(())
    limit = -math.log(thresh)
    for n in range(pix.shape[0]):
        valid = pix[n][labels[n] != IGNORE]
        if valid.numel() == 0:
            continue
        k = min(min_kept, valid.numel())
        cut = min(limit, float(torch.topk(valid.detach(), k).values[-1]))
        keep = valid >= cut
        total = total + valid[keep].sum()
        kept = kept + keep.sum()
    return total, kept.to(pix.dtype)


def _seed_for(seed: int, step: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])


def _autocast(cfg: TrainConfig, device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp == "bf16")


def train(cfg: TrainConfig, arch: Arch, resume: bool = False, progress: bool = True,
          stop_after: Optional[int] = None) -> TrainResult:
    """Retrain ``arch`` from scratch as configured. ``stop_after``: stop (with a checkpoint)
    after that many steps, as an interruption would; ``resume`` continues exactly."""
    info = dist.init(cfg.device)
    with RunDir(cfg.out, "train", FORMAT, finals=(MODEL,), main=info.is_main) as run:
        return _train(cfg, arch, run, info, resume, progress, stop_after)


def _train(cfg: TrainConfig, arch: Arch, run: RunDir, info: dist.DistInfo, resume: bool, progress: bool,
           stop_after: Optional[int]) -> TrainResult:
    from hyctas_dsl.compiler import export, set_drop_path
    from hyctas_dsl.compiler.checkpoint import save_model
    from hyctas_dsl.data import make_datasets
    from hyctas_dsl.language.printer import dumps

    if cfg.amp == "bf16" and info.device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise JobError("--amp bf16: this GPU does not support bfloat16")
    out = run.out
    arch_text = dumps(arch.model_copy(update={"meta": ()}))
    identity = {"arch": arch_text}
    torch.manual_seed(cfg.seed)
    panoptic = arch.task == "panoptic"
    if panoptic:  # labels are panoptic id maps; the semantic label is their low byte
        from hyctas_dsl.jobs.panoptic import instance_loss, panoptic_targets
        from hyctas_dsl.jobs.panoptic_eval import make_panoptic_datasets

        train_set, val_set = make_panoptic_datasets(cfg.data, seed=cfg.seed, crop=cfg.crop)
    else:
        train_set, val_set = make_datasets(cfg.data, seed=cfg.seed, crop=cfg.crop)
    classes = train_set.info.num_classes
    net = export(arch, classes=classes)
    model = RetrainNet(net, arch, classes, cfg.aux).to(info.device)
    if info.enabled:  # before the optimizer: conversion makes new BatchNorm parameters
        _sync_batchnorm(model, info.device)
    optimizer = make_optimizer(cfg, model.parameters())

    start, last_loss = run.begin(cfg, model, optimizer, resume, _RESUMABLE, identity)
    run.record_config({"config": cfg.model_dump(mode="json"), "arch": arch_text, "classes": classes,
                       "aux_strides": model.aux_strides, "world_size": info.world}, info.device)

    train_model: nn.Module = model
    if info.enabled:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[info.device.index] if info.device.type == "cuda" else None, broadcast_buffers=False
        )

    stop = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    loader = step_loader(train_set, cfg.batch, cfg.seed, start, stop, info.rank, info.world, default_workers(cfg))
    meter = Progress(cfg.steps, start, f"train {arch.name}", progress and info.is_main)
    loss_value, done = last_loss, start
    train_model.train()
    for step, (x, y) in enumerate(loader, start=start):
        torch.manual_seed(_seed_for(cfg.seed, step, info.rank))
        set_drop_path(net, drop_path_at(cfg, step))
        lr = poly_lr(cfg, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = x.to(info.device), y.to(info.device)
        with _autocast(cfg, info.device):
            logits, aux = train_model(x)
        inst_loss = x.new_zeros(())  # panoptic: centre heatmap MSE + offset L1, weighted
        if panoptic:
            t = panoptic_targets(y, train_set.source.things, cfg.center_sigma)
            _logits, center, offset = logits
            logits, y = _logits, t.semantic
            inst_loss = instance_loss(center, offset, t, cfg.center_weight, cfg.offset_weight)
        logits = logits.float()
        if cfg.ohem:
            main_sum, main_n = ohem_loss(logits, y, cfg.ohem_thresh, cfg.ohem_min_kept)
        elif panoptic:  # small instances weigh more (Panoptic-DeepLab)
            w = t.semantic_weight * (y != IGNORE)
            main_sum = (F.cross_entropy(logits, y, ignore_index=IGNORE, reduction="none") * w).sum()
            main_n = w.sum()
        else:
            main_sum = F.cross_entropy(logits, y, ignore_index=IGNORE, reduction="sum")
            main_n = (y != IGNORE).sum().to(logits.dtype)
        aux_sum = sum((F.cross_entropy(a.float(), y, ignore_index=IGNORE, reduction="sum") for a in aux), logits.new_zeros(()))
        counts = torch.stack([main_n.detach(), (y != IGNORE).sum().to(logits.dtype)])
        if info.enabled:
            torch_dist.all_reduce(counts)
        # Sums over the global pixel counts; DDP averages gradients over ranks, hence * world.
        main = main_sum / counts[0].clamp_min(1.0)
        aux_loss = aux_sum / counts[1].clamp_min(1.0)
        # inst_loss is a per-rank mean: DDP's gradient average makes it the global mean
        loss = (main + cfg.aux_weight * aux_loss) * info.world + inst_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        parts = torch.stack([main.detach(), aux_loss.detach(), inst_loss.detach() / info.world])
        if info.enabled:
            torch_dist.all_reduce(parts)
        loss_value = float(parts[0] + cfg.aux_weight * parts[1] + parts[2])
        run.check_loss(loss_value, step, cfg.lr)
        optimizer.step()
        done = step + 1
        if info.is_main:
            rate = meter.step(cfg.batch, loss_value, f"{lr:.5f}")
            if done % LOG_EVERY == 0 or done == stop:
                rec = {"step": done, "loss": loss_value, "main_loss": float(parts[0]), "lr": lr,
                       "drop_path": drop_path_at(cfg, step), "img_per_s": rate}
                if model.aux_strides:
                    rec["aux_loss"] = float(parts[1])
                if panoptic:
                    rec["instance_loss"] = float(parts[2])
                run.log(rec)
        # every rank checks the weights it holds, so a divergence stops them all (only rank 0 writes)
        if done % cfg.checkpoint_every == 0 or done == stop:
            run.save(model, optimizer, done, cfg, loss_value, identity)
            if info.is_main:
                plot_curve(out / "log.jsonl", out / "curve.png", arch.name)
    meter.close()
    dist.barrier(info)
    miou = None
    if done >= cfg.steps:
        # The final artefact, derived from the last checkpoint's weights (also when resuming
        # a finished run, so a crash between the two never leaves a stale one).
        if info.is_main:
            save_model(net, arch, out / MODEL, classes)
        if panoptic:
            from hyctas_dsl.jobs.panoptic_eval import final_eval_panoptic

            miou, pq = final_eval_panoptic(cfg, net, val_set, info, out, done)
            dist.barrier(info)
            return TrainResult(out, done, loss_value, time.perf_counter() - meter.t0, miou, pq)
        miou = _final_eval(cfg, net, val_set, info, out, done)
    dist.barrier(info)
    return TrainResult(out, done, loss_value, time.perf_counter() - meter.t0, miou)


def _final_eval(cfg: TrainConfig, net: nn.Module, val_set, info, out: Path, step: int) -> Optional[float]:
    """Single-scale validation mIoU of the finished network, split over ranks."""
    if cfg.eval_images == 0:
        return None
    from hyctas_dsl.jobs.dataset_eval import evaluate

    n = min(cfg.eval_images, len(val_set))
    res = evaluate(net, val_set, indices=list(range(n)), device=info.device, dist_info=info)
    if info.is_main:
        with open(out / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, "val_miou": res.miou, "val_images": n}) + "\n")
        plot_curve(out / "log.jsonl", out / "curve.png", out.name)
    return res.miou


def plot_curve(log: Path, png: Path, title: str) -> None:
    """The training curve (loss, and lr on a second axis) from log.jsonl, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    for line in Path(log).read_text(encoding="utf-8").splitlines() if Path(log).exists() else []:
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    steps = [r for r in rows if "loss" in r]
    if not steps:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot([r["step"] for r in steps], [r["loss"] for r in steps], color="tab:blue", label="loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot([r["step"] for r in steps], [r["lr"] for r in steps], color="tab:orange", ls="--", label="lr")
    ax2.set_ylabel("lr (poly)", color="tab:orange")
    val = [r for r in rows if "val_miou" in r]
    label = f"{title}" + (f"  (val mIoU {val[-1]['val_miou']:.3f})" if val else "")
    ax.set_title(label)
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
