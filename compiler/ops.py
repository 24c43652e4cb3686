"""The op library: every module the compiler builds, on torch alone.

This file is the executable form of the op specification in ``hyctas_dsl.model.cost`` (its module
docstring), paper sections 3.2-3.3 and Table 2. Everything between the ``begin ops`` and
``end ops`` markers is copied verbatim into the self-contained ``model.py`` files that
``hyctas compile --export model.py`` writes, so it imports nothing but torch and must stay
TorchScript-, trace-, torch.compile- and ONNX-friendly (static structure, no Python data
structures in ``forward`` beyond lists of tensors).

The same classes serve three roles: a standalone network (exact channel counts), the
supernet (every op at its maximum width; see ``hyctas_dsl.compiler.supernet``) and the
weightless skeleton that a subnet view runs with sliced supernet tensors.
"""

from __future__ import annotations

# --- begin ops ---
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def resize(x: Tensor, h: int, w: int) -> Tensor:
    """Bilinear resampling to h x w (half-pixel centres, no corner alignment)."""
    return F.interpolate(x, size=[h, w], mode="bilinear", align_corners=False)


def pad32(x: Tensor) -> Tensor:
    """Zero-pad the bottom and right to a multiple of 32, so every stride (up to 32) divides
    the size and each downsampling halves it exactly; the logits are cropped back."""
    h, w = x.shape[2], x.shape[3]
    return F.pad(x, [0, (32 - w % 32) % 32, 0, (32 - h % 32) % 32])


def stochastic_depth(x: Tensor, p: float, training: bool) -> Tensor:
    """Drop path (stochastic depth): zero ``x`` per sample with probability p in training
    and rescale by 1/(1-p); the identity in eval (paper Table 9, scheduled drop path)."""
    if not training or p <= 0.0:
        return x
    keep = 1.0 - p
    mask = (torch.rand([x.shape[0], 1, 1, 1], dtype=x.dtype, device=x.device) < keep).to(x.dtype)
    return x * mask / keep


class ConvBN(nn.Module):
    """k x k convolution (no bias) -> BatchNorm -> optional ReLU."""

    def __init__(self, c_in: int, c_out: int, k: int = 1, stride: int = 1, relu: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, stride, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.relu = relu

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn(self.conv(x))
        if self.relu:
            x = F.relu(x)
        return x


class Skip(nn.Module):
    """``skip``: the identity; a 1x1 conv + BN where the channel count changes. The
    supernet always holds the projection (``proj=True``) for subnets that change width."""

    def __init__(self, c_in: int, c_out: int, proj: Optional[bool] = None):
        super().__init__()
        use = (c_in != c_out) if proj is None else proj
        self.proj = ConvBN(c_in, c_out, 1) if use else None

    def forward(self, x: Tensor) -> Tensor:
        if self.proj is not None:
            return self.proj(x)
        return x


class Conv(nn.Module):
    """``conv``: 3x3 conv (stride 2 when the cell downsamples) -> BN -> ReLU."""

    def __init__(self, c_in: int, c_out: int, down: bool = False):
        super().__init__()
        self.conv = ConvBN(c_in, c_out, 3, 2 if down else 1, relu=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class ZConv(nn.Module):
    """``zconv``, the lightweight convolution (section 3.3, Figure 2): bilinear x0.5, 3x3
    conv + BN, bilinear back to H x W, plus the high-resolution bypass (1x1 conv + BN on the
    input), sum, ReLU. Downsampling: bilinear x0.5, 3x3 conv + BN + ReLU (no x2, no bypass).
    ``drop_path`` drops the zoomed path per sample in training, keeping the bypass."""

    def __init__(self, c_in: int, c_out: int, down: bool = False, double: bool = False):
        super().__init__()
        self.conv1 = ConvBN(c_in, c_out, 3, relu=double or down)
        self.conv2 = ConvBN(c_out, c_out, 3, relu=down) if double else None
        self.bypass = None if down else ConvBN(c_in, c_out, 1)
        self.drop_path = 0.0

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[2], x.shape[3]
        # a 1-pixel side (stride 32 of a <= 32 px input) stays 1 pixel
        y = self.conv1(resize(x, max(h // 2, 1), max(w // 2, 1)))
        if self.conv2 is not None:
            y = self.conv2(y)
        if self.bypass is None:
            return y
        y = stochastic_depth(resize(y, h, w), self.drop_path, self.training)
        return F.relu(y + self.bypass(x))


class ZConv2(ZConv):
    """``zconv2``: as ``zconv`` with two 3x3 convs (conv + BN + ReLU, conv + BN)."""

    def __init__(self, c_in: int, c_out: int, down: bool = False):
        super().__init__(c_in, c_out, down, double=True)


class Attn(nn.Module):
    """``attn``, the memory-efficient self-attention (section 3.3, Table 2): 1x1 conv + BN +
    ReLU down to a bottleneck of ``d`` channels, multi-head self-attention over all positions
    without FFN (``scaled_dot_product_attention``: no N x N matrix where a fused kernel
    exists), 1x1 conv + BN back to C_out, plus the bypassed 1x1 conv + BN (the "uncompressed
    residue"), sum, ReLU. Downsampling pools by 2 first. ``drop_path`` drops the attention
    path per sample in training, keeping the bypass."""

    def __init__(self, c_in: int, c_out: int, down: bool, heads: int, d: int):
        super().__init__()
        if d <= 0 or d % heads:
            raise ValueError(f"attention width {d} is not a multiple of {heads} heads")
        self.down = down
        self.heads = heads
        self.d = d
        self.reduce = ConvBN(c_in, d, 1, relu=True)
        self.qkv = nn.Conv2d(d, 3 * d, 1, bias=False)
        self.proj = ConvBN(d, c_out, 1)
        self.bypass = ConvBN(c_in, c_out, 1)
        self.drop_path = 0.0

    def forward(self, x: Tensor) -> Tensor:
        if self.down:
            x = F.avg_pool2d(x, 2)
        n, h, w = x.shape[0], x.shape[2], x.shape[3]
        t = self.qkv(self.reduce(x))
        # [n, 3d, h, w] -> q, k, v of [n, heads, h*w, d/heads], each contiguous (a copy of 3d*N
        # floats). The fused (flash) kernels need that: with q, k, v as views of t (last-dim
        # stride h*w) the CPU dispatch takes the math path, which builds the heads x N x N score
        # matrix (16 GiB for HyCTAS-L's stride-8 cell at 1024x2048).
        t = t.reshape(n, 3, self.heads, self.d // self.heads, h * w).permute(1, 0, 2, 4, 3).contiguous()
        y = F.scaled_dot_product_attention(t[0], t[1], t[2])
        # back to [n, d, h, w] in the input's memory format: a channels-last network stays
        # channels-last (mixing layouts makes every following op reorder)
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            y = y.transpose(1, 2).reshape(n, h, w, self.d).permute(0, 3, 1, 2)
        else:
            y = y.transpose(2, 3).reshape(n, self.d, h, w)
        y = stochastic_depth(self.proj(y), self.drop_path, self.training)
        return F.relu(y + self.bypass(x))


class Stem(nn.Module):
    """Three 3x3 stride-2 conv + BN + ReLU: 3 -> 2F -> 4F (the stride-4 feature) -> 8F."""

    def __init__(self, filters: int):
        super().__init__()
        self.conv1 = ConvBN(3, 2 * filters, 3, 2, relu=True)
        self.conv2 = ConvBN(2 * filters, 4 * filters, 3, 2, relu=True)
        self.conv3 = ConvBN(4 * filters, 8 * filters, 3, 2, relu=True)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        x4 = self.conv2(self.conv1(x))
        return self.conv3(x4), x4


class Fusion(nn.Module):
    """A fusion node (the paper's binary gate N_s^l, section 3.2): bilinear resampling to the
    target stream's resolution (when the strides differ), 1x1 conv + BN."""

    def __init__(self, c_in: int, c_out: int, resample: bool):
        super().__init__()
        self.resample = resample
        self.proj = ConvBN(c_in, c_out, 1)

    def forward(self, x: Tensor, ref: Tensor) -> Tensor:
        if self.resample:
            x = resize(x, ref.shape[2], ref.shape[3])
        return self.proj(x)


class Head(nn.Module):
    """The aggregation head F_theta (section 3.2) and the classifier.

    Every branch output (finest stride first in ``feats``) -> slimmable 1x1 conv + BN + ReLU
    to C_s; from the coarsest: bilinear to the next finer stride, concat [upsampled, that
    stride's projection], 3x3 conv 2C_s -> C_s + BN + ReLU; bilinear to stride 8 when theta's
    finest stride is coarser (``up8``). Output stride 4 (``c4`` > 0): the stem's stride-4
    feature -> 1x1 conv + BN + ReLU, concat, 3x3 fuse. Classifier: 3x3 conv + BN + ReLU,
    1x1 conv to the classes (with bias), bilinear to the padded input size.
    """

    def __init__(self, c_ins: List[int], c_s: int, classes: int, up8: bool, c4: int = 0):
        super().__init__()
        self.proj = nn.ModuleList([ConvBN(c, c_s, 1, relu=True) for c in c_ins])
        self.fuse = nn.ModuleList([ConvBN(2 * c_s, c_s, 3, relu=True) for _ in c_ins[1:]])
        self.up8 = up8
        self.proj4 = ConvBN(c4, c_s, 1, relu=True) if c4 > 0 else None
        self.fuse4 = ConvBN(2 * c_s, c_s, 3, relu=True) if c4 > 0 else None
        self.cls = ConvBN(c_s, c_s, 3, relu=True)
        self.out = nn.Conv2d(c_s, classes, 1)

    def forward(self, feats: List[Tensor], x4: Tensor) -> Tensor:
        y = self.features(feats, x4)
        y = self.out(self.cls(y))
        return resize(y, x4.shape[2] * 4, x4.shape[3] * 4)

    def features(self, feats: List[Tensor], x4: Tensor) -> Tensor:
        """The aggregated C_s feature at the output stride, before the classifier."""
        ys: List[Tensor] = []
        for i, proj in enumerate(self.proj):
            ys.append(proj(feats[i]))
        y = ys[len(ys) - 1]
        k = len(ys) - 2
        for fuse in self.fuse:
            t = ys[k]
            y = fuse(torch.cat([resize(y, t.shape[2], t.shape[3]), t], 1))
            k -= 1
        if self.up8:
            y = resize(y, x4.shape[2] // 2, x4.shape[3] // 2)
        if self.proj4 is not None and self.fuse4 is not None:
            t = self.proj4(x4)
            y = self.fuse4(torch.cat([resize(y, t.shape[2], t.shape[3]), t], 1))
        return y


class PanopticHead(Head):
    """The head theta plus Panoptic-DeepLab's two light instance branches on its feature:
    centre heatmap (3x3 conv C_s -> c_inst + BN + ReLU, 1x1 conv -> 1, bias) and centre
    offset (the same, -> 2 channels (dy, dx)), at the output stride, bilinear to the padded
    input; the offsets, predicted in output-stride pixels, are multiplied by the output
    stride so that they are in input pixels. Returns (logits, center, offset)."""

    def __init__(self, c_ins: List[int], c_s: int, classes: int, up8: bool, c4: int = 0, c_inst: int = 32):
        super().__init__(c_ins, c_s, classes, up8, c4)
        self.center = nn.Sequential(ConvBN(c_s, c_inst, 3, relu=True), nn.Conv2d(c_inst, 1, 1))
        self.offset = nn.Sequential(ConvBN(c_s, c_inst, 3, relu=True), nn.Conv2d(c_inst, 2, 1))
        self.scale = 4.0 if c4 > 0 else 8.0

    def forward(self, feats: List[Tensor], x4: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        y = self.features(feats, x4)
        h, w = x4.shape[2] * 4, x4.shape[3] * 4
        logits = resize(self.out(self.cls(y)), h, w)
        center = resize(self.center(y), h, w)
        offset = resize(self.offset(y), h, w) * self.scale
        return logits, center, offset


def set_drop_path(model: nn.Module, p: float) -> int:
    """Set the drop-path probability of every cell that has a bypass (zconv and zconv2
    that keep the stride, attn); returns how many cells it set."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"drop-path probability must lie in [0, 1), not {p}")
    # A subnet view runs an unregistered skeleton (``view.net``): its cells hold the rates.
    inner = model.__dict__.get("net")
    root = inner if isinstance(inner, nn.Module) else model
    n = 0
    for m in root.modules():
        if hasattr(m, "drop_path") and getattr(m, "bypass", None) is not None:
            m.drop_path = float(p)
            n += 1
    return n


CELL_OPS = {"skip": Skip, "conv": Conv, "zconv": ZConv, "zconv2": ZConv2, "attn": Attn}
# --- end ops ---

__all__ = [
    "resize",
    "pad32",
    "stochastic_depth",
    "ConvBN",
    "Skip",
    "Conv",
    "ZConv",
    "ZConv2",
    "Attn",
    "Stem",
    "Fusion",
    "Head",
    "PanopticHead",
    "set_drop_path",
    "CELL_OPS",
    "ops_source",
]


def ops_source() -> str:
    """The torch-only part of this file, as embedded in generated ``model.py`` files."""
    global _OPS_SOURCE
    if _OPS_SOURCE is None:
        import inspect
        import sys

        _OPS_SOURCE = _ops_region(inspect.getsource(sys.modules[__name__]))
    return _OPS_SOURCE


_OPS_SOURCE: str | None = None


def _ops_region(text: str) -> str:
    start = text.index("# --- begin ops ---")
    end = text.index("# --- end ops ---")
    return text[start:end].replace("# --- begin ops ---\n", "", 1)
