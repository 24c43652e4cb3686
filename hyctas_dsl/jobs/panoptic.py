"""Panoptic segmentation the bottom-up way of Panoptic-DeepLab (the framework the paper uses for
its panoptic results, section 4.3, Tables 4 and 6): training targets from instance masks, the
loss, the post-processing that turns (semantic logits, centre heatmap, centre offsets) into a
panoptic id map, and PQ / SQ / RQ.

Panoptic id maps use the encoding of :mod:`hyctas_dsl.data.panoptic`: ``semantic + 256 *
instance``, semantic 255 = void, instance 0 = stuff or a crowd region. All functions are
vectorised torch: loops run over images, instances or classes, never over pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from hyctas_dsl.data.panoptic import INSTANCE_STRIDE, VOID

__all__ = [
    "PanopticTargets",
    "PostProcess",
    "PanopticQuality",
    "PQResult",
    "panoptic_targets",
    "panoptic_loss",
    "instance_loss",
    "find_centers",
    "group_pixels",
    "merge_semantic_and_instance",
    "post_process",
    "as_outputs",
]


# ---------------------------------------------------------------------------------------------
# targets


@dataclass
class PanopticTargets:
    """Per-pixel training targets of a batch (Panoptic-DeepLab's target generator)."""

    semantic: Tensor  # int64 [N, H, W], 255 = void
    semantic_weight: Tensor  # float [N, H, W]: small_weight on pixels of small instances, else 1
    center: Tensor  # float [N, 1, H, W]: Gaussian centre heatmap, max over instances
    center_weight: Tensor  # float [N, 1, H, W]: 0 on void pixels
    offset: Tensor  # float [N, 2, H, W]: (dy, dx) from the pixel to its instance's centre
    offset_weight: Tensor  # float [N, 1, H, W]: 1 on thing-instance pixels


def _thing_lut(things: Sequence[int], device) -> Tensor:
    lut = torch.zeros(256, dtype=torch.bool, device=device)
    if len(things):
        lut[torch.as_tensor(list(things), device=device)] = True
    return lut


def panoptic_targets(pan: Tensor, things: Sequence[int], sigma: float = 8.0, small_area: int = 4096,
                     small_weight: float = 3.0) -> PanopticTargets:
    """Targets from panoptic id maps ``pan`` [N, H, W] (or [H, W]).

    Every thing instance (instance id > 0) gets a centre at the mean of its pixel
    coordinates, drawn as a Gaussian of ``sigma`` pixels (8 in Panoptic-DeepLab, at full
    resolution), and its pixels the offset (dy, dx) to that centre. Pixels of instances
    smaller than ``small_area`` weigh ``small_weight`` in the semantic loss
    (Panoptic-DeepLab: 4096 and 3 at Cityscapes resolution)."""
    if pan.dim() == 2:
        pan = pan[None]
    pan = pan.long()
    n, h, w = pan.shape
    dev = pan.device
    sem = pan % INSTANCE_STRIDE
    inst = pan // INSTANCE_STRIDE
    is_inst = (inst > 0) & _thing_lut(things, dev)[sem] & (sem != VOID)
    center = torch.zeros(n, 1, h, w, device=dev)
    offset = torch.zeros(n, 2, h, w, device=dev)
    sem_w = torch.ones(n, h, w, device=dev)
    ys = torch.arange(h, device=dev, dtype=torch.float32)
    xs = torch.arange(w, device=dev, dtype=torch.float32)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    r = int(3 * sigma + 1)
    for b in range(n):
        ids = torch.where(is_inst[b], inst[b], torch.zeros_like(inst[b]))
        uniq, inv = torch.unique(ids.flatten(), return_inverse=True)
        k = uniq.numel()
        area = torch.bincount(inv, minlength=k).float()
        cy = torch.bincount(inv, weights=yy.flatten(), minlength=k) / area
        cx = torch.bincount(inv, weights=xx.flatten(), minlength=k) / area
        m = is_inst[b]
        inv2 = inv.view(h, w)
        offset[b, 0][m] = (cy[inv2] - yy)[m]
        offset[b, 1][m] = (cx[inv2] - xx)[m]
        small = (area < small_area) & (uniq > 0)
        sem_w[b][m & small[inv2]] = small_weight
        heat = center[b, 0]
        for j in range(k):  # one Gaussian per instance, drawn in a window of +-3 sigma
            if uniq[j] == 0:
                continue
            y0, x0 = int(round(float(cy[j]))), int(round(float(cx[j])))
            ya, yb, xa, xb = max(0, y0 - r), min(h, y0 + r + 1), max(0, x0 - r), min(w, x0 + r + 1)
            if ya >= yb or xa >= xb:
                continue
            g = torch.exp(-((ys[ya:yb, None] - y0) ** 2 + (xs[None, xa:xb] - x0) ** 2) / (2 * sigma * sigma))
            heat[ya:yb, xa:xb] = torch.maximum(heat[ya:yb, xa:xb], g)
    center_w = (sem != VOID).float()[:, None]
    return PanopticTargets(sem, sem_w, center, center_w, offset, is_inst.float()[:, None])


def panoptic_loss(outputs: Sequence[Tensor], t: PanopticTargets, center_weight: float = 200.0,
                  offset_weight: float = 0.01) -> tuple[Tensor, dict[str, float]]:
    """Panoptic-DeepLab's loss: semantic cross-entropy weighted per pixel (small instances),
    + ``center_weight`` x MSE on the heatmap + ``offset_weight`` x L1 on the offsets (each
    averaged over the pixels where it applies). Returns (loss, its parts as floats)."""
    logits, center, offset = outputs[0], outputs[1], outputs[2]
    ce = F.cross_entropy(logits, t.semantic, ignore_index=VOID, reduction="none")
    valid = (t.semantic != VOID).float()
    sem = (ce * t.semantic_weight * valid).sum() / (t.semantic_weight * valid).sum().clamp_min(1.0)
    ctr = ((center - t.center) ** 2 * t.center_weight).sum() / t.center_weight.sum().clamp_min(1.0)
    off = ((offset - t.offset).abs() * t.offset_weight).sum() / t.offset_weight.sum().clamp_min(1.0)
    loss = sem + center_weight * ctr + offset_weight * off
    return loss, {"semantic": float(sem), "center": float(ctr), "offset": float(off)}


def instance_loss(center: Tensor, offset: Tensor, t: PanopticTargets, center_weight: float = 200.0,
                  offset_weight: float = 0.01) -> Tensor:
    """``center_weight`` x MSE of the heatmap (over non-void pixels) + ``offset_weight`` x L1
    of the offsets (over thing-instance pixels): Panoptic-DeepLab's instance losses."""
    ctr = ((center.float() - t.center) ** 2 * t.center_weight).sum() / t.center_weight.sum().clamp_min(1.0)
    off = ((offset.float() - t.offset).abs() * t.offset_weight).sum() / t.offset_weight.sum().clamp_min(1.0)
    return center_weight * ctr + offset_weight * off


def as_outputs(out) -> tuple[Tensor, Tensor, Tensor]:
    """A panoptic network's output as (logits, center, offset); a clear error otherwise."""
    if isinstance(out, (tuple, list)) and len(out) == 3:
        return out[0], out[1], out[2]
    raise ValueError("the network is not panoptic (it returns semantic logits only): declare `task panoptic` in its arch")


# ---------------------------------------------------------------------------------------------
# post-processing


@dataclass(frozen=True)
class PostProcess:
    """Panoptic-DeepLab's post-processing parameters (Cityscapes defaults: threshold 0.1,
    NMS kernel 7, top-k 200, stuff area 2048 pixels)."""

    threshold: float = 0.1
    nms_kernel: int = 7
    top_k: int = 200
    stuff_area: int = 2048
    thing_area: int = 0
    chunk: int = 1 << 16  # pixels grouped at a time (bounds memory at [chunk, K])

    @classmethod
    def for_size(cls, h: int, w: int, **kw) -> "PostProcess":
        """Area thresholds scaled from Cityscapes' 2048 px at 1024 x 2048 to an h x w image."""
        kw.setdefault("stuff_area", max(1, round(2048 * h * w / (1024 * 2048))))
        return cls(**kw)


def find_centers(center: Tensor, threshold: float = 0.1, nms_kernel: int = 7, top_k: int = 200) -> Tensor:
    """Instance centres of a heatmap [1, H, W] or [H, W]: scores above ``threshold`` that are
    the maximum of their ``nms_kernel`` neighbourhood (max-pool NMS), at most ``top_k`` of
    them, best first. Returns [K, 2] (y, x) long."""
    heat = center.reshape(1, 1, center.shape[-2], center.shape[-1]).float()
    heat = torch.where(heat > threshold, heat, torch.full_like(heat, -1.0))
    r = nms_kernel // 2  # a k x k max pool as two separable passes (same result, ~2x faster)
    pooled = F.max_pool2d(F.max_pool2d(heat, (1, nms_kernel), 1, (0, r)), (nms_kernel, 1), 1, (r, 0))
    keep = (heat == pooled) & (heat > 0)
    scores = heat[keep]
    idx = keep.flatten().nonzero().flatten()
    if scores.numel() > top_k:
        scores, order = torch.topk(scores, top_k)
        idx = idx[order]
    else:
        scores, order = torch.sort(scores, descending=True)
        idx = idx[order]
    w = center.shape[-1]
    return torch.stack([idx // w, idx % w], 1)


def group_pixels(thing_mask: Tensor, centers: Tensor, offset: Tensor, chunk: int = 1 << 16) -> Tensor:
    """Instance id (1..K, the centre's rank) of every pixel of ``thing_mask`` [H, W]: the
    centre nearest to the pixel moved by its predicted offset ``offset`` [2, H, W]; 0
    elsewhere and when there are no centres."""
    h, w = thing_mask.shape
    ins = torch.zeros(h * w, dtype=torch.long, device=thing_mask.device)
    if centers.numel() == 0:
        return ins.view(h, w)
    pix = thing_mask.flatten().nonzero().flatten()
    if pix.numel() == 0:
        return ins.view(h, w)
    off = offset.reshape(2, -1)
    ctr = centers.float()
    ctr_sq = ctr.pow(2).sum(1)[None]
    for s in range(0, pix.numel(), chunk):
        p = pix[s : s + chunk]
        loc = torch.stack([(p // w).float() + off[0, p], (p % w).float() + off[1, p]], 1)
        # argmin_k |loc - c_k|^2 = argmin_k (|c_k|^2 - 2 loc . c_k): one matmul, no sqrt
        ins[p] = torch.addmm(ctr_sq, loc, ctr.T, alpha=-2).argmin(1) + 1
    return ins.view(h, w)


def merge_semantic_and_instance(sem: Tensor, ins: Tensor, things: Sequence[int], num_classes: int,
                                stuff_area: int = 2048, thing_area: int = 0) -> Tensor:
    """The panoptic id map [H, W] of a semantic prediction and instance ids: each instance
    takes the majority semantic class of its thing pixels (and is dropped below
    ``thing_area`` pixels); each stuff class's remaining pixels form one segment when they
    cover at least ``stuff_area`` pixels; everything else is void."""
    dev = sem.device
    c = int(num_classes)
    thing_lut = _thing_lut(things, dev)
    is_thing = thing_lut[sem] & (ins > 0)
    # One histogram over (instance, class) with instance 0 collecting the non-thing pixels and
    # an extra column for void: majority votes, instance areas and stuff areas at once, and
    # full-map gathers instead of boolean indexing (faster on large maps).
    col = torch.where(sem == VOID, torch.full_like(sem, c), sem)
    row = torch.where(is_thing, ins, torch.zeros_like(ins))
    k = int(row.max()) + 1
    hist = torch.bincount((row * (c + 1) + col).flatten(), minlength=k * (c + 1)).view(k, c + 1)
    votes = hist[:, :c]
    majority = votes.argmax(1)
    keep = votes.sum(1) >= max(thing_area, 1)
    stuff_ok = torch.zeros(c + 1, dtype=torch.bool, device=dev)
    stuff_ok[:c] = ~thing_lut[:c] & (hist[0, :c] >= stuff_area)
    void = torch.full_like(sem, VOID)
    thing_pan = torch.where(keep[row], majority[row] + INSTANCE_STRIDE * row, void)
    return torch.where(is_thing, thing_pan, torch.where(stuff_ok[col], sem, void))


def post_process(logits: Tensor, center: Tensor, offset: Tensor, things: Sequence[int],
                 params: PostProcess | None = None) -> Tensor:
    """(semantic logits [N, C, H, W], centre heatmap [N, 1, H, W], offsets [N, 2, H, W]) ->
    panoptic id maps [N, H, W] (Panoptic-DeepLab's inference, per image)."""
    p = params or PostProcess()
    sem = logits.max(1).indices  # as argmax(1), ~3x faster over the channel dim on CPU
    n, c = logits.shape[:2]
    thing = _thing_lut(things, logits.device)
    out = []
    for b in range(n):
        centers = find_centers(center[b], p.threshold, p.nms_kernel, p.top_k)
        ins = group_pixels(thing[sem[b]], centers, offset[b], p.chunk)
        out.append(merge_semantic_and_instance(sem[b], ins, things, c, p.stuff_area, p.thing_area))
    return torch.stack(out)


# ---------------------------------------------------------------------------------------------
# PQ


@dataclass
class PQResult:
    """PQ, SQ, RQ (fractions in [0, 1]) overall, for things and for stuff, and per class
    (NaN for a class absent from both ground truth and prediction)."""

    all: dict[str, float]
    things: dict[str, float]
    stuff: dict[str, float]
    per_class: list[dict[str, float]] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"all": self.all, "things": self.things, "stuff": self.stuff, "per_class": self.per_class}


class PanopticQuality:
    """Accumulates the panoptic quality of Kirillov et al. (the COCO panopticapi definition):
    a predicted and a ground-truth segment of the same class match when their IoU > 0.5,
    where the union leaves out the predicted pixels that fall on void ground truth; crowd
    regions (a thing class with no instance) are never matched nor counted as false
    negatives, and a predicted segment more than half of which lies on void or on a crowd
    region of its class is not a false positive. PQ = sum IoU / (TP + FP/2 + FN/2) per class,
    averaged over the classes that occur in the ground truth or the prediction."""

    def __init__(self, num_classes: int, things: Sequence[int]):
        if not 0 < num_classes < VOID:
            raise ValueError(f"num_classes must be in 1..254, got {num_classes}")
        self.num_classes = int(num_classes)
        self.things = tuple(int(t) for t in things)
        self.tp = torch.zeros(num_classes, dtype=torch.long)
        self.fp = torch.zeros(num_classes, dtype=torch.long)
        self.fn = torch.zeros(num_classes, dtype=torch.long)
        self.iou = torch.zeros(num_classes, dtype=torch.float64)

    def _segments(self, pan: Tensor) -> Tensor:
        sem = pan % INSTANCE_STRIDE
        # a stuff class is one segment per image, whatever instance ids it carries
        stuff = ~_thing_lut(self.things, pan.device)[sem]
        return torch.where(stuff, sem, pan)

    def update(self, gt: Tensor, pred: Tensor) -> "PanopticQuality":
        """Add one image or a batch: ground truth and prediction id maps of the same shape."""
        if gt.shape != pred.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} != ground truth shape {tuple(gt.shape)}")
        if gt.dim() == 3:
            for g, p in zip(gt, pred):
                self.update(g, p)
            return self
        g = self._segments(gt.long().cpu().flatten())
        p = self._segments(pred.long().cpu().flatten())
        gu, gi = torch.unique(g, return_inverse=True)
        pu, pi = torch.unique(p, return_inverse=True)
        ng, np_ = gu.numel(), pu.numel()
        inter = torch.bincount(gi * np_ + pi, minlength=ng * np_).view(ng, np_)
        g_area, p_area = inter.sum(1), inter.sum(0)
        g_cat, p_cat = gu % INSTANCE_STRIDE, pu % INSTANCE_STRIDE
        if int(torch.cat([g_cat, p_cat]).masked_fill(torch.cat([g_cat, p_cat]) == VOID, 0).max()) >= self.num_classes:
            raise ValueError(f"a class id beyond the {self.num_classes} classes in a panoptic map")
        g_void, p_void = g_cat == VOID, p_cat == VOID
        thing = _thing_lut(self.things, g.device)
        g_crowd = thing[g_cat] & (gu // INSTANCE_STRIDE == 0) & ~g_void
        void_inter = inter[g_void].sum(0)  # [np]: pixels of each prediction on void ground truth
        # crowd pixels of each prediction's own class
        crowd_inter = (inter * (g_crowd[:, None] & (g_cat[:, None] == p_cat[None, :]))).sum(0)
        union = p_area[None, :] + g_area[:, None] - inter - void_inter[None, :]
        iou = inter.double() / union.clamp_min(1).double()
        candidate = (~g_void & ~g_crowd)[:, None] & ~p_void[None, :] & (g_cat[:, None] == p_cat[None, :])
        match = candidate & (iou > 0.5)  # IoU > 0.5 makes a match unique
        g_matched, p_matched = match.any(1), match.any(0)
        nc = self.num_classes
        m_g = match.nonzero()
        self.tp += torch.bincount(g_cat[m_g[:, 0]], minlength=nc)[:nc]
        self.iou += torch.bincount(g_cat[m_g[:, 0]], weights=iou[m_g[:, 0], m_g[:, 1]], minlength=nc)[:nc]
        fn = ~g_void & ~g_crowd & ~g_matched
        self.fn += torch.bincount(g_cat[fn], minlength=nc)[:nc]
        ignored = (void_inter + crowd_inter).double() / p_area.clamp_min(1).double() > 0.5
        fp = ~p_void & ~p_matched & ~ignored
        self.fp += torch.bincount(p_cat[fp], minlength=nc)[:nc]
        return self

    def merge(self, other: "PanopticQuality") -> "PanopticQuality":
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        self.iou += other.iou
        return self

    def result(self, classes: Sequence[str] | None = None) -> PQResult:
        tp, fp, fn, iou = self.tp.double(), self.fp.double(), self.fn.double(), self.iou
        denom = tp + 0.5 * fp + 0.5 * fn
        present = denom > 0
        nan = torch.full_like(tp, float("nan"))
        pq = torch.where(present, iou / denom.clamp_min(1e-12), nan)
        sq = torch.where(tp > 0, iou / tp.clamp_min(1), torch.where(present, torch.zeros_like(tp), nan))
        rq = torch.where(present, tp / denom.clamp_min(1e-12), nan)
        thing = torch.zeros(self.num_classes, dtype=torch.bool)
        if self.things:
            thing[list(self.things)] = True

        def avg(sel: Tensor) -> dict[str, float]:
            sel = sel & present
            n = int(sel.sum())
            if n == 0:
                return {"pq": float("nan"), "sq": float("nan"), "rq": float("nan"), "n": 0}
            return {"pq": float(pq[sel].mean()), "sq": float(sq[sel].mean()), "rq": float(rq[sel].mean()), "n": n}

        names = list(classes) if classes is not None else [str(i) for i in range(self.num_classes)]
        per = [
            {"class": names[c], "thing": bool(thing[c]), "pq": float(pq[c]), "sq": float(sq[c]), "rq": float(rq[c]),
             "tp": int(self.tp[c]), "fp": int(self.fp[c]), "fn": int(self.fn[c])}
            for c in range(self.num_classes)
        ]
        return PQResult(avg(torch.ones_like(thing)), avg(thing), avg(~thing), per)
