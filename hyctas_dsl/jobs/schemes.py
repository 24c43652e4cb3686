"""Supernet training schemes: which subnets a step trains, and with which loss.

* ``paper`` (section 4.2 "Search", eq. 1-2): one subnet per step, its branch count drawn from
  the space's prior (0.2 / 0.3 / 0.5 in the paper), everything else uniform. The default on
  real data sets.
* ``sandwich`` (BigNAS, Yu et al. 2020, section 3.1; the sandwich rule of universally
  slimmable networks): every step trains the largest subnet, the smallest subnet and
  ``random_subnets`` random ones on the same batch, gradients summed into one optimizer step.
  With ``distill`` > 0 the smaller subnets also learn from the largest one's soft predictions
  (in-place distillation): their loss is ``(1 - distill) * CE(labels) + distill *
  CE(teacher's probabilities)``, the teacher's output detached so that no gradient flows
  back into it through a student.

``branch_balance`` replaces the branch prior for the random subnets by a fixed cycle
1, 2, 3, 1, 2, ... over the steps, so every branch count gets the same number of steps
(with the paper's prior, one-branch subnets get a fifth of them, spread over three heads).

``output_stride_aux`` > 0 also trains each subnet's head at the space's other output stride on
the same forward of its cells (deep supervision of the stride-8 path, which the stem's
stride-4 feature otherwise lets the classifier ignore; measured in docs/search_quality.md).

``stem_drop`` > 0: with that probability per subnet and step, the head is given zeros in place
of the stem's stride-4 feature (a drop-path on the stem's shortcut to the head), so the shared
stride-4 merge cannot score output-stride-4 subnets by the stem alone and has to use what the
cells give it (measured in docs/search_quality.md, item 8). Drawn from its own stream of
(seed, step, rank), so the subnets a step trains are the same with and without it.

``subnet_per_rank`` (with several processes): each rank draws its own subnets from (seed,
step, rank), so a step trains one subnet per rank, each on that rank's share of the batch,
their gradients averaged into one optimizer step (as DistributedDataParallel averages).
Under the weight sharing, a cell's weights learn only in the steps whose subnet uses that
cell; W subnets per step give every cell W times the updates for the cost of one step on each of W cores (measured in
docs/search_quality.md). Under branch balance every rank of a step draws the same branch
count: the ranks' subnets then cost about the same, and neither waits long for the other at
the gradient sum (with counts cycling over (step, rank) the waits were a sixth of a step).

Everything a step trains is a pure function of (seed, step, rank), so resuming stays exact.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from hyctas_dsl.language.ast import Arch, Space
from hyctas_dsl.jobs.common import IGNORE, seg_loss

__all__ = ["StepSubnet", "step_subnets", "train_step", "distill_loss"]


class StepSubnet(NamedTuple):
    role: str  # "largest", "smallest" or "random"
    arch: Arch
    drop_stem: bool = False  # the head gets zeros for the stem's stride-4 feature (``stem_drop``)


def step_subnets(space: Space, cfg, step: int, rank: int = 0, world: int = 1) -> list[StepSubnet]:
    """The subnets step ``step`` trains on rank ``rank`` of ``world``, in training order (the
    teacher first). Every rank trains the same ones unless ``cfg.subnet_per_rank``."""
    own = bool(cfg.subnet_per_rank) and world > 1
    out = _step_archs(space, cfg, step, rank, own)
    p = cfg.stem_drop or 0.0
    if p > 0:  # its own stream: the archs stay what they are without it
        drops = np.random.default_rng([cfg.seed, step, rank if own else 0, _STEM_DROP_STREAM]).random(len(out)) < p
        out = [s._replace(drop_stem=bool(d)) for s, d in zip(out, drops)]
    return out


_STEM_DROP_STREAM = 5_000_011


def _step_archs(space: Space, cfg, step: int, rank: int, own: bool) -> list[StepSubnet]:
    from hyctas_dsl.search.genome import sample_arch, sample_extreme

    rng = np.random.default_rng([cfg.seed, step, rank] if own else [cfg.seed, step])
    if cfg.scheme == "paper":
        n = _balanced(space, step, 0, 1) if cfg.branch_balance else None
        return [StepSubnet("random", sample_arch(space, rng, n_branches=n, name=f"step{step}" + (f"_rank{rank}" if own else "")))]
    out = [
        StepSubnet("largest", sample_extreme(space, rng, largest=True, name=f"step{step}_largest")),
        StepSubnet("smallest", sample_extreme(space, rng, largest=False, name=f"step{step}_smallest")),
    ]
    for i in range(cfg.random_subnets):
        n = _balanced(space, step, i, cfg.random_subnets) if cfg.branch_balance else None
        out.append(StepSubnet("random", sample_arch(space, rng, n_branches=n, name=f"step{step}_random{i}")))
    return out


def _balanced(space: Space, step: int, i: int, per_step: int) -> int:
    return 1 + (step * per_step + i) % space.max_branches


def _zero_stem(_head, args):
    """Forward pre-hook of a head (``feats, x4``): zeros in place of the stem's stride-4 feature."""
    feats, x4 = args
    return feats, torch.zeros_like(x4)


def distill_loss(logits: torch.Tensor, teacher_probs: torch.Tensor, labels: torch.Tensor, normalizer: float) -> torch.Tensor:
    """Cross-entropy against the teacher's per-pixel class probabilities (soft labels), summed
    over the labelled pixels and divided by ``normalizer`` like :func:`seg_loss`."""
    per_pixel = F.cross_entropy(logits, teacher_probs, reduction="none")
    return (per_pixel * (labels != IGNORE)).sum() / max(normalizer, 1.0)


def train_step(supernet, subnets: list[StepSubnet], x: torch.Tensor, y: torch.Tensor, labelled: float, distill: float,
               targets=None, world: int = 1, output_stride_aux: float = 0.0) -> torch.Tensor:
    """Forward and backward every subnet of the step on the same batch; gradients accumulate
    in the shared weights (one subnet's activations alive at a time). With
    ``output_stride_aux`` > 0 each subnet's head is also trained at the space's other output
    stride, on the same forward of its body, that loss weighted by ``output_stride_aux``.
    Returns the mean loss of the sampled subnets (detached); the caller steps the optimizer."""

    def task_loss(out) -> torch.Tensor:
        if targets is not None:  # panoptic: + Panoptic-DeepLab's instance losses (local means, summed over ranks)
            from hyctas_dsl.jobs.panoptic import instance_loss

            logits, center, offset = out
            return seg_loss(logits, y, labelled) + instance_loss(center, offset, targets) / world
        return seg_loss(out, y, labelled)

    teacher = None
    total = torch.zeros((), device=x.device)
    strides = tuple(supernet.space.output_strides)
    for sub in subnets:
        view = supernet.subnet(sub.arch)
        if sub.drop_stem:  # the view is this step's own module: the hook goes with it
            view.net.head.register_forward_pre_hook(_zero_stem)
        own = sub.arch.head.output_stride
        if output_stride_aux > 0 and len(strides) > 1:
            outs = view.forward_output_strides(x, strides)
            out = outs.pop(own)
            aux = sum(task_loss(o) for o in outs.values()) * output_stride_aux
        else:
            out, aux = view(x), None
        loss = task_loss(out)
        if teacher is not None and distill > 0:
            logits = out[0] if isinstance(out, tuple) else out
            loss = (1.0 - distill) * loss + distill * distill_loss(logits, teacher, y, labelled)
        if sub.role == "largest":
            teacher = (out[0] if isinstance(out, tuple) else out).detach().softmax(1)
        (loss if aux is None else loss + aux).backward()
        total = total + loss.detach()
    return total / len(subnets)
