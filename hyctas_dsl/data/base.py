"""What every data source shares: the one error type for data problems, and DatasetInfo.

A *source* is the numpy-level view of a data set split: ``len(source)``, ``source.load(i)``
returning ``(image uint8 [H, W, 3], label uint8 [H, W])`` with labels already mapped to train
ids (``info.ignore_index`` = 255 for pixels that take no part in the loss or the metric), and
``source.name(i)`` naming the sample (a file path for files) for error messages. The torch
Dataset in :mod:`hyctas_dsl.data.loader` wraps a source with a transform.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["DataError", "DatasetInfo", "IMAGENET_MEAN", "IMAGENET_STD", "Source", "ArraySource", "make_palette"]

# Normalisation for every data set (ImageNet statistics on [0, 1] pixels, as the DeepLab
# family the paper follows, section 4.2 / [35]); the networks are trained from scratch, so the
# exact values matter little, but one convention everywhere keeps checkpoints interchangeable.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DataError(ValueError):
    """A problem with a data set: a missing or unreadable file, a label outside the class
    list, a bad ``--data`` spec. ``path`` names the file (or spec) at fault; ``str(err)`` is
    one line the CLI can print as is."""

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = None if path is None else str(path)
        self.message = message
        super().__init__(f"{self.path}: {message}" if self.path else message)


def make_palette(n: int, seed: int = 0) -> tuple[tuple[int, int, int], ...]:
    """``n`` distinct-looking colours, deterministic: evenly spaced hues with alternating
    value/saturation (used where a data set has no official palette)."""
    import colorsys

    cols = []
    for i in range(n):
        h = (i * 0.618033988749895 + seed * 0.1) % 1.0  # golden-ratio hue steps
        s = 0.55 + 0.45 * ((i // 2) % 2)
        v = 0.65 + 0.35 * (i % 2)
        r, g, b = colorsys.hsv_to_rgb(h, s, v)
        cols.append((int(r * 255), int(g * 255), int(b * 255)))
    return tuple(cols)


@dataclass(frozen=True)
class DatasetInfo:
    """Facts about a data set that training, search, evaluation and drawing need.

    ``classes[i]`` names train id ``i``; ``palette[i]`` is its RGB colour. ``crop``,
    ``scale_range`` and ``hflip`` are the default training augmentation for this data set
    (paper section 4.2: random scale, crop and flip, as in Panoptic-DeepLab [35])."""

    name: str
    classes: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    ignore_index: int = 255
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop: tuple[int, int] = (512, 1024)
    scale_range: tuple[float, float] = (0.5, 2.0)
    hflip: bool = True

    def __post_init__(self) -> None:
        if len(self.palette) != len(self.classes):
            raise ValueError(f"{self.name}: {len(self.classes)} classes but {len(self.palette)} palette colours")
        if not 0 < len(self.classes) <= 255 or self.ignore_index < len(self.classes):
            raise ValueError(f"{self.name}: ignore index {self.ignore_index} collides with {len(self.classes)} classes")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def colorize(self, label: np.ndarray) -> np.ndarray:
        """Label map [H, W] (train ids, ignore allowed) -> RGB uint8 [H, W, 3]; ignored and
        out-of-range pixels are black. Accepts numpy arrays (call ``.cpu().numpy()`` first on
        tensors)."""
        lut = np.zeros((256, 3), np.uint8)
        lut[: self.num_classes] = np.asarray(self.palette, np.uint8)
        lab = np.asarray(label)
        lab = np.where((lab >= 0) & (lab < 256), lab, 255).astype(np.intp)
        return lut[lab]


class Source:
    """Base of the numpy-level sources (see the module docstring)."""

    info: DatasetInfo
    split: str

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError

    def name(self, index: int) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def subset(self, indices: Sequence[int]) -> "Source":
        """A view of some samples (e.g. the BN-recalibration subset of the search)."""
        return _SubsetSource(self, [int(i) for i in indices])

    def _check_index(self, index: int) -> int:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} samples")
        return index % n


class _SubsetSource(Source):
    def __init__(self, parent: Source, indices: list[int]):
        self.parent, self.indices = parent, indices
        self.info, self.split = parent.info, parent.split

    def __len__(self) -> int:
        return len(self.indices)

    def load(self, index: int):
        return self.parent.load(self.indices[self._check_index(index)])

    def name(self, index: int) -> str:
        return self.parent.name(self.indices[self._check_index(index)])


class ArraySource(Source):
    """Samples held in memory: images uint8 [N, H, W, 3], labels uint8 [N, H, W]."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, info: DatasetInfo, split: str, prefix: str = ""):
        if images.ndim != 4 or images.shape[-1] != 3 or labels.shape != images.shape[:3]:
            raise ValueError(f"images {images.shape} and labels {labels.shape} do not match")
        self.images, self.labels, self.info, self.split = images, labels, info, split
        self.prefix = prefix or f"{info.name}/{split}"

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int):
        i = self._check_index(index)
        return self.images[i], self.labels[i]

    def name(self, index: int) -> str:
        return f"{self.prefix}/{self._check_index(index)}"
