"""Supernet training (paper eq. 1, section 4.2 "Search"): one subnet sampled per step with
the branch prior of eq. 2, so a step holds only that subnet's activations (Table 1,
"Memory Cost: One subnet").

SGD (momentum 0.9, weight decay 5e-4), lr 0.02 with exponential decay 0.992 every
``decay_every`` steps (on the embedded digits the default is AdamW at 0.003: see
``SupernetConfig.resolved``). A run directory holds:

- ``checkpoint.safetensors``: supernet weights, optimizer momentum and the step, in one file
  written atomically every ``checkpoint_every`` steps when every tensor is finite (the state
  ``--resume`` continues from; see ``jobs/rundir.py``);
- ``supernet.safetensors``: the supernet alone, for ``hyctas search`` (hyctas_dsl.compiler),
  written from the last checkpoint's weights when the run finishes;
- ``config.json``: the effective config, seed, package versions and device;
- ``log.jsonl``: loss, lr and throughput per logged step.

Resuming is exact: the subnet of step k is sampled from (seed, k) and the batch of step k is a
pure function of (seed, k) (``common.step_batch``), so an interrupted and resumed run ends
with the same weights as an uninterrupted one.

Several processes (``--procs N``, started here through torch elastic, or torchrun around the
command): each rank takes every world-th sample of the step's global batch. With
``subnet_per_rank`` (the default on the embedded digits) each rank trains its own sampled
subnet, so a step trains N subnets; otherwise every rank trains the same one, as
DistributedDataParallel would. Gradients are summed over ranks (``dist.sum_gradients``: one
flat all_reduce of the parameters some rank touched, each rank's loss its mean over its
labelled pixels divided by the world size), written out because each rank runs a different
graph.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from hyctas_dsl.jobs import dist
from hyctas_dsl.jobs.common import (
    Progress,
    make_optimizer,
    resolve_space,
    step_loader,
)
from hyctas_dsl.jobs.config import SupernetConfig
from hyctas_dsl.jobs.errors import ConfigError, ResumeMismatch, TrainingDiverged
from hyctas_dsl.jobs.rundir import CHECKPOINT, RunDir
from hyctas_dsl.jobs.schemes import step_subnets, train_step

__all__ = ["train_supernet", "TrainingDiverged", "ResumeMismatch", "SupernetResult", "CHECKPOINT", "SUPERNET"]

SUPERNET = "supernet.safetensors"
FORMAT = "hyctas-supernet-train-1"
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


def train_supernet(cfg: SupernetConfig, resume: bool = False, progress: bool = True) -> SupernetResult | None:
    """Train a supernet as configured; returns where it was written (None on a torchrun rank
    other than 0). With ``procs`` > 1 and no torchrun around it, the training runs in that
    many processes started here (``dist.launch``)."""
    world = os.environ.get("WORLD_SIZE")
    cfg = _run_options(cfg, int(world) if world is not None else None, resume)
    if world is None and cfg.procs > 1:
        return dist.launch(cfg.procs, _train_in_process, cfg, resume, progress)
    return _train_in_process(cfg, resume, progress)


def _run_options(cfg: SupernetConfig, world: int | None, resume: bool) -> SupernetConfig:
    """``cfg`` resolved for this run and checked, before any process starts or the run
    directory is touched. Its process count: torchrun's world size when it started this one;
    else ``--procs``; else, on ``--resume``, what the run used; else two on the embedded
    digits on a CPU (a step of its tiny networks does not get faster with a second thread, so
    the second core trains a second subnet: docs/search_quality.md), one elsewhere. Its stem
    drop: ``--stem-drop``; else, on ``--resume``, what the run used; else the data's default
    where the space has a stride-4 feature to drop."""
    if world is not None and cfg.procs not in (None, world):
        raise ConfigError(f"--procs {cfg.procs}: torchrun started {world} processes; leave --procs out under torchrun")
    per_rank_given, stem_drop_given = cfg.subnet_per_rank is not None, cfg.stem_drop is not None
    cfg = cfg.resolved()
    space = resolve_space(cfg.space)
    if not stem_drop_given:
        cfg = cfg.model_copy(update={"stem_drop": _default_stem_drop(cfg, space, resume)})
    if cfg.output_stride_aux > 0 and len(space.output_strides) < 2:
        raise ConfigError(f"--output-stride-aux trains the head at a second output stride, but space `{space.name}` "
                          f"offers one ({space.output_strides[0]})")
    if cfg.stem_drop > 0 and 4 not in space.output_strides:
        raise ConfigError(f"--stem-drop drops the stem's stride-4 feature from output-stride-4 heads, but space "
                          f"`{space.name}` has no output stride 4 ({', '.join(map(str, space.output_strides))})")
    dev = dist.resolve_device(cfg.device)
    digits = cfg.data.split(":")[0] == "digits"
    procs = world or cfg.procs or (_saved_procs(cfg) if resume else None) or (
        min(2, dist.cores()) if digits and dev.type == "cpu" else 1)
    cfg = cfg.model_copy(update={"procs": procs})
    if procs == 1 and not per_rank_given:  # one process has no ranks to differ: recorded as runs before the option
        cfg = cfg.model_copy(update={"subnet_per_rank": False})
    if procs > 1 and cfg.batch < 2 * procs:  # BatchNorm on a 1x1 map needs 2 images
        raise ConfigError(f"--batch {cfg.batch} over {procs} processes leaves fewer than 2 images per process; "
                          f"use --batch {2 * procs} or more, or --procs 1")
    devices = torch.cuda.device_count() if dev.type == "cuda" else 1
    if world is None and dev.type != "cpu" and procs > devices:
        raise ConfigError(f"--procs {procs} on {dev.type}: one process per device, and this machine has {devices}")
    return cfg


def _saved_record(cfg: SupernetConfig) -> dict | None:
    """The run directory's config.json, or None where there is no readable one (the run
    directory's own checks report that)."""
    import json

    try:
        saved = json.loads((Path(cfg.out) / "config.json").read_text(encoding="utf-8"))
        return saved if isinstance(saved.get("config"), dict) else None
    except (OSError, ValueError, AttributeError):
        return None


def _saved_procs(cfg: SupernetConfig) -> int | None:
    """The processes a run being resumed used (its saved world size: runs from before
    ``--procs`` record only that), so that it continues as it trained on any machine."""
    saved = _saved_record(cfg)
    try:
        return int(saved["config"].get("procs") or saved["world_size"]) if saved else None
    except (ValueError, KeyError, TypeError):
        return None


def _default_stem_drop(cfg: SupernetConfig, space, resume: bool) -> float:
    """``stem_drop`` when ``--stem-drop`` is not given (see :func:`_run_options`; 0 for runs
    from before the option)."""
    saved = _saved_record(cfg) if resume else None
    if saved is not None:
        try:
            return float(saved["config"].get("stem_drop", SupernetConfig.LEGACY["stem_drop"]))
        except (TypeError, ValueError):
            pass  # not a value this program wrote: the run directory's checks report the mismatch
    return cfg.stem_drop if 4 in space.output_strides else 0.0


def _train_in_process(cfg: SupernetConfig, resume: bool, progress: bool) -> SupernetResult | None:
    info = dist.init(cfg.device)
    with RunDir(cfg.out, "train-supernet", FORMAT, finals=(SUPERNET,), main=info.is_main) as run:
        return _train(cfg, run, info, resume, progress)


def _train(cfg: SupernetConfig, run: RunDir, info: dist.DistInfo, resume: bool, progress: bool) -> SupernetResult | None:
    from hyctas_dsl.compiler import Supernet
    from hyctas_dsl.compiler.checkpoint import save_supernet
    from hyctas_dsl.data import make_datasets
    from hyctas_dsl.language.printer import dumps

    out = run.out
    space = resolve_space(cfg.space)
    identity = {"space": dumps(space)}
    torch.manual_seed(cfg.seed)
    panoptic = space.task == "panoptic"  # labels are panoptic id maps; sampled archs are panoptic
    if panoptic:
        from hyctas_dsl.jobs.panoptic import panoptic_targets
        from hyctas_dsl.jobs.panoptic_eval import make_panoptic_datasets

        train_set, _val = make_panoptic_datasets(cfg.data, seed=cfg.seed, crop=cfg.crop)
    else:
        train_set, _val = make_datasets(cfg.data, seed=cfg.seed, crop=cfg.crop)
    classes = train_set.info.num_classes
    supernet = Supernet(space, classes=classes, shared_classifier=cfg.shared_classifier).to(info.device)
    params = list(supernet.parameters())
    optimizer = make_optimizer(cfg, params)

    start, last_loss = run.begin(cfg, supernet, optimizer, resume, _RESUMABLE, identity)
    run.record_config({"config": cfg.model_dump(mode="json"), "classes": classes, "space": space.name,
                       "world_size": info.world}, info.device)

    loader = step_loader(train_set, cfg.batch, cfg.seed, start, cfg.steps, info.rank, info.world, default_workers(cfg))
    meter = Progress(cfg.steps, start, "supernet", progress and info.is_main)
    step = start
    loss_value = last_loss
    supernet.train()
    for step, (x, y) in enumerate(loader, start=start):
        subnets = step_subnets(space, cfg, step, info.rank, info.world)
        x, y = x.to(info.device), y.to(info.device)
        if panoptic:
            targets = panoptic_targets(y, train_set.source.things)
            y = targets.semantic
        # each rank's loss is its own mean over labelled pixels, divided by the world size, so
        # that the summed gradients are the mean over ranks (what DistributedDataParallel does)
        labelled = float((y != 255).sum()) * info.world
        for group in optimizer.param_groups:
            group["lr"] = _lr(cfg, step)
        optimizer.zero_grad(set_to_none=True)
        loss_sum = train_step(supernet, subnets, x, y, labelled, cfg.distill,
                              targets if panoptic else None, info.world, cfg.output_stride_aux)
        loss_sum = dist.sum_gradients(params, info, loss_sum)  # and the loss, in the same message
        loss_value = float(loss_sum.item())
        run.check_loss(loss_value, step, cfg.lr)
        optimizer.step()
        done = step + 1
        if info.is_main:
            rate = meter.step(cfg.batch, loss_value, f"{_lr(cfg, step):.4f}")
            if done % LOG_EVERY == 0 or done == cfg.steps:
                run.log({"step": done, "loss": loss_value, "lr": _lr(cfg, step), "img_per_s": rate})
        # every rank checks the weights it holds, so a divergence stops them all (only rank 0 writes)
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            run.save(supernet, optimizer, done, cfg, loss_value, identity,
                     any_rank=(lambda bad: dist.any_rank(bad, info)) if info.enabled else None)
    meter.close()
    dist.barrier(info)
    # The final artefact, derived from the last checkpoint's weights (also when resuming a
    # finished run, so a crash between the two never leaves a stale one).
    if not info.is_main:
        return None
    save_supernet(supernet, out / SUPERNET)
    return SupernetResult(out, cfg.steps, loss_value, time.perf_counter() - meter.t0)


def default_workers(cfg) -> int:
    """In-memory digit scenes cost less to make than to send between processes."""
    if cfg.workers is not None:
        return cfg.workers
    return 0 if cfg.data.split(":")[0] == "digits" else 2
