"""Scoring search candidates on the supernet's weights (paper section 4.2, "Search"):
recompute BatchNorm statistics on a fixed random subset of training images, then measure
mIoU on the validation split (PQ when the search's metric is PQ), with the bootstrap sd of
the mIoU; MACs and params come from the analytic model. (Latency is the
search's cost objective, measured in ``search.py`` before this expensive step runs.) Evaluating trained weights on a
data set is :mod:`hyctas_dsl.jobs.dataset_eval`."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from hyctas_dsl.language.api import canonical_key
from hyctas_dsl.language.ast import Arch
from hyctas_dsl.model.cost import arch_cost
from hyctas_dsl.data.metrics import bootstrap_miou_sd
from hyctas_dsl.jobs.common import image_batches

__all__ = ["CandidateEvaluator", "recalibrate_bn", "evaluate_miou", "per_image_confusion", "Timings"]


def _batchnorms(module: nn.Module):
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recalibrate_bn(view: nn.Module, batches: list[torch.Tensor]) -> None:
    """Reset the BatchNorm statistics a subnet uses and recompute them as a plain average
    over ``batches`` (momentum None), in training mode without gradients. ``view`` is a
    supernet's SubnetView (its statistics live in the supernet) or a standalone network."""
    from hyctas_dsl.compiler import SubnetView

    stores, layers = view.batchnorms() if isinstance(view, SubnetView) else (_batchnorms(view), _batchnorms(view))
    for m in stores:
        m.reset_running_stats()
    saved = [(m, m.momentum) for m in layers]
    for m, _ in saved:
        m.momentum = None
    view.train()
    try:
        for x in batches:
            view(x)
    finally:
        for m, mom in saved:
            m.momentum = mom
        view.eval()


@torch.no_grad()
def evaluate_miou(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], classes: int) -> float:
    return per_image_confusion(model, batches, classes)[1]


@torch.no_grad()
def per_image_confusion(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], classes: int) -> tuple[np.ndarray, float]:
    """([N, K, K] confusion matrix of every image, mIoU of their sum); the per-image matrices
    let :func:`hyctas_dsl.data.metrics.bootstrap_miou_sd` say how noisy the mIoU is."""
    from hyctas_dsl.data.metrics import miou_of

    model.eval()
    k = classes
    parts = []
    for x, y in batches:
        p = model(x).argmax(1).reshape(len(x), -1).long()
        t = y.reshape(len(y), -1).long()
        keep = t != 255
        img = torch.arange(len(x), device=t.device)[:, None].expand_as(t)
        idx = (img * k * k + t.clamp(0, k - 1) * k + p)[keep]
        parts.append(torch.bincount(idx, minlength=len(x) * k * k).reshape(len(x), k, k).cpu().numpy())
    per_image = np.concatenate(parts) if parts else np.zeros((0, k, k), np.int64)
    return per_image, miou_of(per_image.sum(0))


@dataclass
class Timings:
    """Where the search's time goes, per stage, reported in summary.json."""

    bn: float = 0.0
    eval: float = 0.0
    cost: float = 0.0
    compile: float = 0.0

    def to_json(self) -> dict:
        return {"bn_recalibration": self.bn, "evaluation": self.eval, "cost_model": self.cost, "compile": self.compile}


class CandidateEvaluator:
    """Evaluates architectures on one supernet: mIoU after BN recalibration, MACs, params."""

    def __init__(
        self,
        supernet,
        train_set,
        val_set,
        bn_images: int,
        val_images: int,
        seed: int,
        device: torch.device,
        batch: int = 32,
        noise: bool = True,
        metric: str = "miou",
        things: tuple[int, ...] = (),
    ):
        self.noise = noise  # the bootstrap sd of each mIoU over resampled validation sets
        self.supernet = supernet.to(device).eval()
        self.device = device
        self.classes = supernet.classes
        self.metric, self.things = metric, tuple(things)  # "pq": labels are panoptic id maps
        self.timings = Timings()
        rng = np.random.default_rng([seed, 1000])
        bn_idx = sorted(rng.choice(len(train_set), size=min(bn_images, len(train_set)), replace=False).tolist())
        val_idx = list(range(min(val_images, len(val_set))))
        # The same images for every candidate, loaded once: comparisons are fair and cheap.
        self.bn_batches = [x.to(device) for x, _y in image_batches(train_set, bn_idx, batch)]
        self.val_batches = [(x.to(device), y.to(device)) for x, y in image_batches(val_set, val_idx, batch)]
        self.data_size = tuple(self.val_batches[0][0].shape[-2:])

    def __call__(self, arch: Arch) -> dict:
        t = time.perf_counter()
        view = self.supernet.subnet(arch)
        t_view = time.perf_counter()
        recalibrate_bn(view, self.bn_batches)
        t_bn = time.perf_counter()
        extra = {}
        miou_sd = None
        if self.metric == "pq":
            from hyctas_dsl.jobs.panoptic_eval import evaluate_pq_batches

            # PQ is the accuracy objective (the search calls it `miou` throughout)
            pq, extra["semantic_miou"] = evaluate_pq_batches(view, self.val_batches, self.classes, self.things)
            miou = extra["pq"] = pq
        else:
            per_image, miou = per_image_confusion(view, self.val_batches, self.classes)
            miou_sd = bootstrap_miou_sd(per_image, seed=0) if self.noise else None
        t_eval = time.perf_counter()
        rep = arch_cost(arch, self.data_size, self.classes)
        t_cost = time.perf_counter()
        self.timings.compile += t_view - t
        self.timings.bn += t_bn - t_view
        self.timings.eval += t_eval - t_bn
        self.timings.cost += t_cost - t_eval
        out = {
            "key": canonical_key(arch),
            "miou": miou,
            **({"miou_sd": miou_sd} if miou_sd is not None else {}),
            "macs": rep.total.macs,
            "params": rep.total.params,
            "branches": len(arch.branches),
            **extra,
        }
        return out
