"""Training data, evaluation and pictures of panoptic networks (``task panoptic``).

- :func:`make_panoptic_datasets`: (train, val) datasets whose labels are panoptic id maps
  (:mod:`hyctas_dsl.data.panoptic`), train with the data set's augmentation;
- :func:`evaluate_panoptic`: PQ / SQ / RQ (things, stuff, per class) of the post-processed
  output and the mIoU of the semantic output, on the validation split;
- :func:`panoptic_grid`: image / ground truth / prediction with every instance in its own
  colour (Figure 5 for the panoptic task).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from hyctas_dsl.data.base import Source
from hyctas_dsl.data.panoptic import INSTANCE_STRIDE, VOID
from hyctas_dsl.jobs.common import image_batches
from hyctas_dsl.jobs.io import write_json
from hyctas_dsl.jobs.panoptic import PanopticQuality, PostProcess, PQResult, as_outputs, post_process

__all__ = ["PanopticEval", "make_panoptic_datasets", "evaluate_panoptic", "format_pq_table", "panoptic_grid",
           "save_panoptic_eval", "colorize_panoptic"]


class _PanLabels(Source):
    """A panoptic source seen as a plain source whose labels are the panoptic id maps."""

    def __init__(self, source):
        self.source, self.info, self.split, self.things = source, source.info, source.split, source.things

    def __len__(self) -> int:
        return len(self.source)

    def load(self, index: int):
        return self.source.load_panoptic(index)

    def name(self, index: int) -> str:
        return self.source.name(index)


def make_panoptic_datasets(spec: str = "digits", *, seed: int = 0, crop: tuple[int, int] | None = None, **kw):
    """(train, val) :class:`~hyctas_dsl.data.loader.SegmentationDataset` of a panoptic
    ``--data`` spec; items are (image, panoptic id map int64); ``dataset.source.things``."""
    from hyctas_dsl.data.loader import SegmentationDataset
    from hyctas_dsl.data.panoptic import open_panoptic_dataset, panoptic_train_transform
    from hyctas_dsl.data.transforms import TrainTransform

    train_src = _PanLabels(open_panoptic_dataset(spec, "train", **kw))
    val_src = _PanLabels(open_panoptic_dataset(spec, "val", **kw))
    tt = panoptic_train_transform(TrainTransform.for_dataset(train_src.info, crop))
    return SegmentationDataset(train_src, tt, seed), SegmentationDataset(val_src, None, seed)


@dataclass
class PanopticEval:
    pq: PQResult
    cm: "object"  # ConfusionMatrix of the semantic output
    classes: tuple[str, ...]
    images: int
    params: PostProcess
    net_seconds: float = 0.0
    post_seconds: float = 0.0
    samples: list = field(default_factory=list)  # (image CHW, gt pan HW, predicted pan HW)

    @property
    def miou(self) -> float:
        return float(self.cm.miou())

    def to_json(self) -> dict:
        d = self.pq.to_json()
        d.update({"miou": self.miou, "images": self.images, "post_process": vars(self.params),
                  "network_seconds": self.net_seconds, "post_process_seconds": self.post_seconds})
        return d


@torch.inference_mode()
def evaluate_panoptic(model: nn.Module, dataset, things: Sequence[int], indices: Optional[list[int]] = None,
                      device="cpu", batch: int = 16, params: PostProcess | None = None, samples: int = 0,
                      progress: bool = False, post: Optional[dict] = None, channels_last: bool = False) -> PanopticEval:
    """PQ and mIoU of a panoptic ``model`` on ``dataset`` (labels: panoptic id maps).
    ``params``: the post-processing; else ``PostProcess.for_size(h, w, **post)`` per batch.
    ``channels_last`` converts the model (in place) and the batches to that memory layout."""
    import time

    from hyctas_dsl.data import ConfusionMatrix

    info = dataset.info
    device = torch.device(device)
    indices = list(range(len(dataset))) if indices is None else list(indices)
    was_training = model.training
    model.eval()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    cm = ConfusionMatrix(info.num_classes, info.ignore_index)
    pq = PanopticQuality(info.num_classes, things)
    kept: list = []
    t_net = t_post = 0.0
    used = params
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(indices), desc="eval", unit="img", dynamic_ncols=True)
    for x_cpu, y_cpu in image_batches(dataset, indices, batch):
        x, gt = x_cpu.to(device), y_cpu.to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        p = params or PostProcess.for_size(x.shape[2], x.shape[3], **(post or {}))
        used = used or p
        t0 = time.perf_counter()
        logits, center, offset = as_outputs(model(x))
        t1 = time.perf_counter()
        pred = post_process(logits.float(), center.float(), offset.float(), things, p)
        t_post += time.perf_counter() - t1
        t_net += t1 - t0
        cm.update(logits.argmax(1), gt % INSTANCE_STRIDE)
        pq.update(gt, pred)
        for j in range(len(x)):
            if len(kept) < samples:
                kept.append((x_cpu[j].numpy(), gt[j].cpu().numpy(), pred[j].cpu().numpy()))
        if bar is not None:
            bar.update(len(x))
    if bar is not None:
        bar.close()
    model.train(was_training)
    return PanopticEval(pq.result(info.classes), cm, tuple(info.classes), len(indices), used, t_net, t_post, kept)


def _pct(v: float) -> str:
    return "  n/a" if math.isnan(v) else f"{100 * v:5.1f}"


def format_pq_table(res: PanopticEval) -> str:
    """PQ / SQ / RQ per class, then for things, stuff and all, and the mIoU."""
    width = max(len(c) for c in res.classes + ("class", "things"))
    lines = [f"{'class':<{width}}  kind     PQ    SQ    RQ   IoU"]
    iou = res.cm.iou()
    for c, row in enumerate(res.pq.per_class):
        kind = "thing" if row["thing"] else "stuff"
        lines.append(f"{row['class']:<{width}}  {kind}  {_pct(row['pq'])} {_pct(row['sq'])} {_pct(row['rq'])} {_pct(float(iou[c]))}")
    for name, d in (("things", res.pq.things), ("stuff", res.pq.stuff), ("all", res.pq.all)):
        lines.append(f"{name:<{width}}  {d['n']:>2} cl  {_pct(d['pq'])} {_pct(d['sq'])} {_pct(d['rq'])}")
    lines.append(f"PQ {100 * res.pq.all['pq']:.1f}  (things {_pct(res.pq.things['pq']).strip()}, stuff "
                 f"{_pct(res.pq.stuff['pq']).strip()}), mIoU {100 * res.miou:.1f}   ({res.images} images, single-scale)")
    return "\n".join(lines)


def colorize_panoptic(pan: np.ndarray, info) -> np.ndarray:
    """RGB of a panoptic id map: stuff in its class colour, each thing instance in a colour of
    its own (the class colour shifted per instance), void black."""
    pan = np.asarray(pan).astype(np.int64)
    sem, inst = pan % INSTANCE_STRIDE, pan // INSTANCE_STRIDE
    rgb = info.colorize(np.where(sem == VOID, 255, sem)).astype(np.int64)
    if (inst > 0).any():
        ids = np.unique(inst[inst > 0])
        rng = np.random.default_rng(0)
        shift = rng.integers(-90, 91, size=(int(ids.max()) + 1, 3))
        m = inst > 0
        rgb[m] = np.clip(rgb[m] + shift[inst[m]], 0, 255)
        # a dark outline between instances, so touching ones stay apart
        edge = np.zeros_like(m)
        edge[1:, :] |= pan[1:, :] != pan[:-1, :]
        edge[:, 1:] |= pan[:, 1:] != pan[:, :-1]
        rgb[edge & m] = rgb[edge & m] // 3
    return rgb.astype(np.uint8)


def panoptic_grid(samples: list, info, path: str | Path, title: str = "") -> None:
    """Rows of image / ground truth / prediction, instances coloured apart, as a PNG."""
    from hyctas_dsl.jobs.dataset_eval import picture_grid

    picture_grid(samples, info, path, title, colorize=lambda pan: colorize_panoptic(pan, info))


def save_panoptic_eval(res: PanopticEval, info, out: str | Path, title: str) -> dict:
    """eval.json and predictions.png in ``out``; returns the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "eval.json", res.to_json())
    grid = out / "predictions.png"
    panoptic_grid(res.samples, info, grid, title)
    return {"json": out / "eval.json", "grid": grid}


def final_eval_panoptic(cfg, net: nn.Module, val_set, info, out: Path, step: int) -> tuple[Optional[float], Optional[float]]:
    """(mIoU, PQ) of a finished panoptic training run on the first ``cfg.eval_images``
    validation images (main process), appended to log.jsonl."""
    import json

    if cfg.eval_images == 0 or not info.is_main:
        return None, None
    n = min(cfg.eval_images, len(val_set))
    res = evaluate_panoptic(net, val_set, val_set.source.things, list(range(n)), info.device)
    with open(out / "log.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"step": step, "val_miou": res.miou, "val_pq": res.pq.all["pq"],
                            "val_pq_things": res.pq.things["pq"], "val_pq_stuff": res.pq.stuff["pq"], "val_images": n}) + "\n")
    return res.miou, res.pq.all["pq"]


def eval_command(arch, weights: str, data: str, images: Optional[int], out: Optional[str], samples: int,
                 device: str, quiet: bool, load_weights, post: Optional[dict] = None) -> None:
    """``hyctas eval`` of a panoptic arch: the PQ table, and with ``out`` eval.json and the grid."""
    import typer

    from hyctas_dsl.jobs import dist

    info = dist.init(device)
    _train, val = make_panoptic_datasets(data)
    model, _n = load_weights(weights, arch, val.info.num_classes)
    model = model.to(info.device)
    n = len(val) if images is None else min(images, len(val))
    from hyctas_dsl.jobs.fps import default_channels_last

    cl = default_channels_last(info.device)
    res = evaluate_panoptic(model, val, val.source.things, list(range(n)), info.device, samples=samples if out else 0,
                            progress=not quiet, post=post, channels_last=cl)
    typer.echo(f"layout: {'channels-last' if cl else 'contiguous'}")
    typer.echo(format_pq_table(res))
    if out:
        paths = save_panoptic_eval(res, val.info, out, f"{arch.name}: PQ {100 * res.pq.all['pq']:.1f}%")
        typer.echo(f"wrote {paths['json']}, {paths['grid']}")


def default_things(classes: int) -> tuple[int, ...]:
    """Thing classes when no data set says: Cityscapes' eight for 19 classes, else every
    class but 0 (the digits' layout: class 0 background stuff)."""
    from hyctas_dsl.data.panoptic import CITYSCAPES_THINGS

    return CITYSCAPES_THINGS if classes == 19 else tuple(range(1, classes))


class _FullInference(nn.Module):
    """Network + post-processing: what a panoptic prediction costs end to end."""

    def __init__(self, net: nn.Module, things, params: PostProcess):
        super().__init__()
        self.net, self.things, self.params = net, tuple(things), params

    def forward(self, x):
        logits, center, offset = as_outputs(self.net(x))
        return post_process(logits.float(), center.float(), offset.float(), self.things, self.params)


class _PostOnly(nn.Module):
    """Post-processing of fixed network outputs (the input is ignored)."""

    def __init__(self, outputs, things, params: PostProcess):
        super().__init__()
        self.outputs, self.things, self.params = [o.float() for o in outputs], tuple(things), params

    def forward(self, x):
        return post_process(*self.outputs, self.things, self.params)


def bench_panoptic(model: nn.Module, size: tuple[int, int], device, things, seconds: float = 6.0, warmup: float = 1.0,
                   params: PostProcess | None = None, channels_last: bool = False):
    """Latencies (network, post-processing, network + post-processing) at batch 1, each
    measured as :func:`hyctas_dsl.jobs.latency.measure_latency` does, in turns; the network
    in the memory layout ``channels_last`` says (the protocol line names it)."""
    from hyctas_dsl.jobs.latency import measure_latency

    model = model.eval().to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    p = params or PostProcess.for_size(*size)
    with torch.inference_mode():
        x = torch.randn(1, 3, *size, device=device, generator=None)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        outs = as_outputs(model(x))
    parts = [(model, channels_last), (_PostOnly(outs, things, p), False), (_FullInference(model, things, p), channels_last)]
    return [measure_latency(m, size, device, torch.float32, warmup, seconds, channels_last=cl) for m, cl in parts]


@torch.no_grad()
def evaluate_pq_batches(model: nn.Module, batches, classes: int, things) -> tuple[float, float]:
    """(PQ, mIoU) of a panoptic ``model`` on pre-loaded (image, panoptic id map) batches: the
    search's accuracy objective with ``--metric pq``."""
    from hyctas_dsl.data import ConfusionMatrix

    model.eval()
    cm = ConfusionMatrix(classes)
    pq = PanopticQuality(classes, things)
    for x, y in batches:
        logits, center, offset = as_outputs(model(x))
        pred = post_process(logits.float(), center.float(), offset.float(), things, PostProcess.for_size(*x.shape[2:]))
        cm.update(logits.argmax(1), y % INSTANCE_STRIDE)
        pq.update(y, pred)
    all_pq = pq.result().all["pq"]
    return (0.0 if math.isnan(all_pq) else all_pq), float(cm.miou())
