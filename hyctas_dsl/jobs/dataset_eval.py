"""Dataset evaluation of a trained network (paper section 4.2, "Evaluation"): mIoU per class and
mean, single-scale by default; flipping and multi-scale inference optional (the paper
reports neither unless stated); the confusion matrix; a picture grid of image / ground truth
/ prediction in the data set's palette (the paper's Figure 5).

Multi-scale and flip average the softmax probabilities of every (scale, flip) pass after
resizing them back to the image's size. (Scoring search candidates on the supernet is
:mod:`hyctas_dsl.jobs.candidate_eval`; both batch images with ``common.image_batches``.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hyctas_dsl.fileio import atomic_path, write_text_atomic
from hyctas_dsl.jobs.common import image_batches
from hyctas_dsl.jobs.io import write_json

__all__ = ["EvalResult", "evaluate", "predict", "picture_grid", "write_confusion", "format_table"]


@dataclass
class EvalResult:
    cm: "object"  # hyctas_dsl.data.ConfusionMatrix
    classes: tuple[str, ...]
    images: int
    scales: tuple[float, ...]
    flip: bool
    samples: list = field(default_factory=list)  # (image CHW normalised, label HW, prediction HW) for the grid
    layout: str = "contiguous"  # memory layout of the inference: contiguous | channels-last

    @property
    def miou(self) -> float:
        return float(self.cm.miou())

    def to_json(self) -> dict:
        s = self.cm.summary(self.classes)
        s.update({"images": self.images, "scales": list(self.scales), "flip": self.flip, "layout": self.layout})
        return s


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor, scales: Sequence[float] = (1.0,), flip: bool = False) -> torch.Tensor:
    """Class probabilities [N, K, H, W] of a normalised batch, averaged over scales and
    (with ``flip``) horizontal flips; one scale of 1.0 without flip is plain inference."""
    h, w = x.shape[2], x.shape[3]
    total = None
    for s in scales:
        xs = x if s == 1.0 else F.interpolate(x, size=[max(int(round(h * s)), 1), max(int(round(w * s)), 1)],
                                             mode="bilinear", align_corners=False)
        for flipped in ((False, True) if flip else (False,)):
            inp = xs.flip(3) if flipped else xs
            p = model(inp).float().softmax(1)
            if flipped:
                p = p.flip(3)
            if p.shape[2:] != (h, w):
                p = F.interpolate(p, size=[h, w], mode="bilinear", align_corners=False)
            total = p if total is None else total + p
    return total


def evaluate(model: nn.Module, dataset, indices: Optional[list[int]] = None, device="cpu",
             scales: Sequence[float] = (1.0,), flip: bool = False, batch: int = 16,
             samples: int = 0, dist_info=None, progress: bool = False, channels_last: bool = False) -> EvalResult:
    """mIoU of ``model`` on ``dataset`` (its evaluation transform: normalisation only).
    Under torchrun every rank evaluates its share and the confusion matrices are summed.
    ``channels_last`` converts the model (in place) and the batches to that memory layout."""
    from hyctas_dsl.data import ConfusionMatrix

    info = dataset.info
    device = torch.device(device)
    indices = list(range(len(dataset))) if indices is None else list(indices)
    grid_idx = set(indices[:samples])
    mine = indices if dist_info is None or not dist_info.enabled else indices[dist_info.rank :: dist_info.world]
    was_training = model.training
    model.eval()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    cm = ConfusionMatrix(info.num_classes, info.ignore_index)
    kept: list = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(mine), desc="eval", unit="img", dynamic_ncols=True)
    pos = 0
    for x_cpu, y_cpu in image_batches(dataset, mine, batch):
        x, y = x_cpu.to(device), y_cpu.to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        pred = predict(model, x, scales, flip).argmax(1)
        cm.update(pred, y)
        for j in range(len(x)):
            if mine[pos + j] in grid_idx:
                kept.append((x_cpu[j].numpy(), y_cpu[j].numpy(), pred[j].cpu().numpy()))
        pos += len(x)
        if bar is not None:
            bar.update(len(x))
    if bar is not None:
        bar.close()
    if dist_info is not None and dist_info.enabled:
        cm.all_reduce()
    model.train(was_training)
    return EvalResult(cm, tuple(info.classes), len(indices), tuple(scales), flip, kept,
                      "channels-last" if channels_last else "contiguous")


def picture_grid(samples: list, info, path: str | Path, title: str = "", colorize=None) -> None:
    """Rows of image / ground truth / prediction (Figure 5), PNG. ``colorize(label map)``
    turns a map into RGB: the data set's palette by default (panoptic evaluation passes one
    that colours instances apart)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hyctas_dsl.data import denormalize

    colorize = colorize or info.colorize
    n = max(len(samples), 1)
    fig, axes = plt.subplots(n, 3, figsize=(6, 2 * n + 0.4), dpi=100, squeeze=False)
    for r, (img, lab, pred) in enumerate(samples):
        rgb = denormalize(img, info.mean, info.std)
        for c, (pic, name) in enumerate(((rgb, "image"), (colorize(lab), "ground truth"), (colorize(pred), "prediction"))):
            ax = axes[r][c]
            ax.imshow(pic, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def write_confusion(cm, classes: Sequence[str], out: str | Path) -> tuple[Path, Path]:
    """confusion.npy (int64 [K, K], rows = ground truth) and confusion.csv, atomically."""
    out = Path(out)
    npy, csv = out / "confusion.npy", out / "confusion.csv"
    with atomic_path(npy) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, cm.matrix)
    rows = ["truth\\pred," + ",".join(classes)]
    rows += [f"{name}," + ",".join(str(int(v)) for v in row) for name, row in zip(classes, cm.matrix)]
    write_text_atomic(csv, "\n".join(rows) + "\n")
    return npy, csv


def format_table(res: EvalResult) -> str:
    """Per-class IoU and the mean, as a text table."""
    iou = res.cm.iou()
    width = max(len(c) for c in res.classes + ("class",))
    lines = [f"{'class':<{width}}  IoU"]
    for name, v in zip(res.classes, iou):
        lines.append(f"{name:<{width}}  {'  n/a' if np.isnan(v) else f'{100 * v:5.1f}'}")
    mode = "single-scale" if res.scales == (1.0,) and not res.flip else (
        f"scales {','.join(f'{s:g}' for s in res.scales)}" + (" + flip" if res.flip else ""))
    lines.append(f"{'mIoU':<{width}}  {100 * res.miou:5.1f}   ({res.images} images, {mode}, {res.layout}, "
                 f"pixel accuracy {100 * res.cm.pixel_accuracy():.1f}%)")
    return "\n".join(lines)


def save_eval(res: EvalResult, info, out: str | Path, title: str) -> dict:
    """eval.json, confusion.npy/.csv and predictions.png in ``out``; returns the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "eval.json", res.to_json())
    npy, csv = write_confusion(res.cm, res.classes, out)
    grid = out / "predictions.png"
    picture_grid(res.samples, info, grid, title)
    return {"json": out / "eval.json", "npy": npy, "csv": csv, "grid": grid}
