"""Confusion matrix and mIoU (mean intersection over union per class, paper section 4.2).

Rows are ground truth, columns predictions; pixels whose target is the ignore index (255)
are not counted. IoU of class c = TP / (TP + FP + FN); a class that appears in neither the
ground truth nor the predictions has no IoU (NaN) and is left out of the mean, as the
Cityscapes and mmsegmentation evaluators do. Accepts numpy arrays or torch tensors (counted
with ``torch.bincount`` on the tensor's device; torch is never imported here otherwise).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["ConfusionMatrix"]


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


class ConfusionMatrix:
    """Accumulates a [K, K] int64 confusion matrix over batches."""

    def __init__(self, num_classes: int, ignore_index: int = 255):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.matrix = np.zeros((self.num_classes, self.num_classes), np.int64)

    def update(self, pred, target) -> "ConfusionMatrix":
        """Add predicted labels and targets of the same shape (any shape, e.g. [N, H, W])."""
        k = self.num_classes
        if tuple(pred.shape) != tuple(target.shape):
            raise ValueError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        if _is_torch(pred) or _is_torch(target):
            import torch

            p = torch.as_tensor(pred).reshape(-1).long()
            t = torch.as_tensor(target, device=p.device).reshape(-1).long()
            keep = t != self.ignore_index
            p, t = p[keep], t[keep]
            if p.numel():
                if int(p.min()) < 0 or int(p.max()) >= k:
                    raise ValueError(f"prediction values must be in 0..{k - 1}")
                if int(t.min()) < 0 or int(t.max()) >= k:
                    raise ValueError(f"target values must be in 0..{k - 1} or {self.ignore_index}")
                counts = torch.bincount(t * k + p, minlength=k * k).cpu().numpy()
                self.matrix += counts.reshape(k, k)
            return self
        p = np.asarray(pred).reshape(-1).astype(np.int64)
        t = np.asarray(target).reshape(-1).astype(np.int64)
        keep = t != self.ignore_index
        p, t = p[keep], t[keep]
        if p.size:
            if p.min() < 0 or p.max() >= k:
                raise ValueError(f"prediction values must be in 0..{k - 1}")
            if t.min() < 0 or t.max() >= k:
                raise ValueError(f"target values must be in 0..{k - 1} or {self.ignore_index}")
            self.matrix += np.bincount(t * k + p, minlength=k * k).reshape(k, k)
        return self

    def merge(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        if other.num_classes != self.num_classes:
            raise ValueError("cannot merge confusion matrices of different class counts")
        self.matrix += other.matrix
        return self

    def all_reduce(self) -> "ConfusionMatrix":
        """Sum the matrix over the ranks of an initialised torch.distributed group (no-op
        otherwise), so every rank ends with the global counts."""
        import torch
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            backend = dist.get_backend()
            device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
            t = torch.from_numpy(self.matrix.copy()).to(device)
            dist.all_reduce(t)
            self.matrix = t.cpu().numpy().astype(np.int64)
        return self

    def iou(self) -> np.ndarray:
        """Per-class IoU, float64 [K]; NaN for classes absent from target and prediction."""
        tp = np.diag(self.matrix).astype(np.float64)
        union = self.matrix.sum(0) + self.matrix.sum(1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, tp / np.maximum(union, 1), np.nan)

    def miou(self) -> float:
        """Mean IoU over the classes that have one (NaN if no pixel was counted)."""
        iou = self.iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    def pixel_accuracy(self) -> float:
        total = self.matrix.sum()
        return float(np.trace(self.matrix) / total) if total else float("nan")

    def summary(self, class_names: Sequence[str] | None = None) -> dict:
        """JSON-ready: mIoU, pixel accuracy, per-class IoU (None where undefined), the matrix."""
        names = list(class_names) if class_names is not None else [str(i) for i in range(self.num_classes)]
        iou = self.iou()
        return {
            "miou": self.miou(),
            "pixel_accuracy": self.pixel_accuracy(),
            "iou": {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, iou)},
            "confusion": self.matrix.tolist(),
        }


def miou_of(matrix: np.ndarray) -> float:
    """Mean IoU of one [K, K] confusion matrix (rows target, columns prediction)."""
    tp = np.diag(matrix).astype(np.float64)
    union = matrix.sum(0) + matrix.sum(1) - tp
    iou = tp[union > 0] / union[union > 0]
    return float(iou.mean()) if iou.size else float("nan")


def bootstrap_miou_sd(per_image: np.ndarray, resamples: int = 200, seed: int = 0) -> float:
    """The standard deviation of mIoU over validation sets resampled with replacement from
    the images (``per_image``: [N, K, K] confusion matrices, one per image): how much a
    score would move on another validation set of the same size, the noise to set against
    the gaps a search ranks."""
    n = len(per_image)
    if n < 2:
        return float("nan")
    rng = np.random.default_rng(seed)
    flat = per_image.reshape(n, -1)
    # Resampling = a multinomial weight per image; matrix sums are weights @ flat.
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples)
    sums = (weights @ flat).reshape(resamples, *per_image.shape[1:])
    return float(np.std([miou_of(m) for m in sums], ddof=1))
