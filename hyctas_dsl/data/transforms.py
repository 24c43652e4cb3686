"""Training augmentation and evaluation transforms (numpy + PIL; no torch).

Training (paper section 4.2, "consistent with [35]", Panoptic-DeepLab): random scale of the
whole image, pad to at least the crop (image with the mean colour, i.e. 0 after
normalisation; labels with the ignore index), random crop, random horizontal flip. Every
random choice comes from the ``rng`` passed in, which the Dataset derives from
(base seed, epoch, sample index), so the batches do not depend on workers or on resuming.

Both transforms return ``(image float32 [3, H, W] normalised, label int64 [H, W])``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hyctas_dsl.data.base import IMAGENET_MEAN, IMAGENET_STD, DatasetInfo

__all__ = ["EvalTransform", "TrainTransform", "normalize", "denormalize", "sample_rng", "resize_pair"]


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator for one sample's augmentation: a pure function of its arguments."""
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), int(index)]))


def normalize(image: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """uint8 [H, W, 3] -> float32 [3, H, W], ``(x / 255 - mean) / std``."""
    m = np.asarray(mean, np.float32) * 255.0
    s = np.asarray(std, np.float32) * 255.0
    out = (image.astype(np.float32) - m) / s
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def denormalize(image: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """Inverse of :func:`normalize` (float32 [3, H, W] -> uint8 [H, W, 3]), for drawing."""
    m = np.asarray(mean, np.float32)[:, None, None] * 255.0
    s = np.asarray(std, np.float32)[:, None, None] * 255.0
    return (np.asarray(image, np.float32) * s + m).clip(0, 255).round().astype(np.uint8).transpose(1, 2, 0)


def resize_pair(image: np.ndarray, label: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Resize to ``size`` (H, W): image bilinear, label nearest (labels are never blended)."""
    from PIL import Image

    h, w = size
    if (h, w) == image.shape[:2]:
        return image, label
    img = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
    return img, _resize_nearest(label, size)


def _resize_nearest(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A class-id map (uint8 range) resized to ``size`` (H, W), nearest neighbour."""
    from PIL import Image

    h, w = size
    return np.asarray(Image.fromarray(np.ascontiguousarray(label, dtype=np.uint8)).resize((w, h), Image.NEAREST))


@dataclass(frozen=True)
class TrainTransform:
    """Random scale in ``scale_range`` (uniform; snapped to ``scale_step`` if given), pad,
    random ``crop`` (H, W), horizontal flip with probability 0.5 if ``hflip``."""

    crop: tuple[int, int]
    scale_range: tuple[float, float] = (0.5, 2.0)
    scale_step: float | None = None
    hflip: bool = True
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    ignore_index: int = 255

    @classmethod
    def for_dataset(cls, info: DatasetInfo, crop: tuple[int, int] | None = None, **kw) -> "TrainTransform":
        """The data set's default augmentation (its crop, scale range and flip rule)."""
        kw.setdefault("scale_range", info.scale_range)
        kw.setdefault("hflip", info.hflip)
        return cls(crop=tuple(crop or info.crop), mean=info.mean, std=info.std, ignore_index=info.ignore_index, **kw)

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return self.apply(image, label, rng, _resize_nearest, self.ignore_index)

    def apply(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator, resize_label,
              fill: int) -> tuple[np.ndarray, np.ndarray]:
        """The augmentation with the label's own resampling (``resize_label(label, (H, W))``)
        and padding value: the random draws are the same whatever the label is (class ids
        here, panoptic ids in ``data.panoptic``)."""
        from PIL import Image

        lo, hi = self.scale_range
        s = float(rng.uniform(lo, hi))
        if self.scale_step:
            s = min(lo + round((s - lo) / self.scale_step) * self.scale_step, hi)
        h, w = image.shape[:2]
        sh, sw = max(int(round(h * s)), 1), max(int(round(w * s)), 1)
        if (sh, sw) != (h, w):
            image = np.asarray(Image.fromarray(image).resize((sw, sh), Image.BILINEAR))
            label = resize_label(label, (sh, sw))

        ch, cw = self.crop
        # Pad bottom/right to at least the crop, then crop uniformly in the padded frame.
        y0 = int(rng.integers(0, max(sh, ch) - ch + 1))
        x0 = int(rng.integers(0, max(sw, cw) - cw + 1))
        flip = bool(self.hflip and rng.random() < 0.5)
        img_out = np.zeros((3, ch, cw), np.float32)
        lab_out = np.full((ch, cw), fill, np.int64)
        part_img = image[y0 : y0 + ch, x0 : x0 + cw]
        ph, pw = part_img.shape[:2]
        img_out[:, :ph, :pw] = normalize(part_img, self.mean, self.std)
        lab_out[:ph, :pw] = np.asarray(label)[y0 : y0 + ch, x0 : x0 + cw]
        if flip:
            img_out = np.ascontiguousarray(img_out[:, :, ::-1])
            lab_out = np.ascontiguousarray(lab_out[:, ::-1])
        return img_out, lab_out


@dataclass(frozen=True)
class EvalTransform:
    """Normalisation only: evaluation runs at the full image size (single scale, paper
    section 4.2); multi-scale and flip are the evaluator's business."""

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @classmethod
    def for_dataset(cls, info: DatasetInfo) -> "EvalTransform":
        return cls(mean=info.mean, std=info.std)

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator | None = None):
        return normalize(image, self.mean, self.std), label.astype(np.int64)
