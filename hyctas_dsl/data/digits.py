"""The embedded default data set: multi-digit scenes from scikit-learn's handwritten digits.

scikit-learn ships the UCI optical-recognition digits (1,797 grey 8x8 images, values 0..16)
inside the package, so this data set needs no download. In the spirit of M2NIST, a *scene* is
an H x W RGB image with several digits composited on a textured background:

- background: a smooth random colour field (a 3x3 grid of colours, bilinearly upsampled)
  plus per-pixel grey noise, and up to ``clutter`` thin axis-aligned bars in random colours
  (distractor strokes, labelled background, so that colour or edges alone do not solve it);
- each digit: an 8x8 source image bilinearly upscaled to a random square size
  (``digit_size``, default 1/4 to 1/2 of the shorter scene side), a random colour that
  contrasts with the local background (dark on light or light on dark), alpha-blended with
  the stroke intensity as alpha; its pixels with alpha >= 0.5 get the digit's class and
  instance id;
- placement: uniform at random; a digit whose box would overlap an earlier box by more than
  ``max_overlap`` of the smaller box is re-drawn (10 tries, then dropped), so digits may
  touch and partly occlude each other (later digits paint over earlier ones) but stay
  readable.

Labels: 0 = background, 1..10 = digits 0..9 (class = digit + 1); 255 is never produced.
Instance ids: 0 = none, 1..k in painting order; ``sources[i, j]`` is the index (into
``sklearn.datasets.load_digits()``) of scene i's instance j+1, -1 where unused.

Split: the 1,797 source images are split once, stratified by digit, into train and val
(``val_fraction``, ``split_seed``); train scenes only use train sources and val scenes only
val sources, so no 8x8 image appears in both. Everything is deterministic from ``seed``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import numpy as np

from hyctas_dsl.data.base import ArraySource, DataError, DatasetInfo

__all__ = [
    "DIGIT_CLASSES",
    "DIGIT_PALETTE",
    "DigitScenes",
    "digit_split",
    "digits_info",
    "load_source_digits",
    "make_digit_scenes",
    "open_digits",
]

DIGIT_CLASSES: tuple[str, ...] = ("background",) + tuple(str(d) for d in range(10))
# Background black, digits in matplotlib's tab10 colours.
DIGIT_PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0),
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)
_SPLIT_CODE = {"train": 0, "val": 1}


def digits_info(size: tuple[int, int] = (64, 64)) -> DatasetInfo:
    """DatasetInfo of the digit scenes. Horizontal flips are off by default: a mirrored
    digit is not that digit (a mirrored 2 looks like a 5), so the flip of section 4.2 would
    teach wrong labels here; random scale and crop stay on."""
    return DatasetInfo(
        name="digits",
        classes=DIGIT_CLASSES,
        palette=DIGIT_PALETTE,
        crop=(int(size[0]), int(size[1])),
        scale_range=(0.75, 1.5),
        hflip=False,
    )


@lru_cache(maxsize=1)
def load_source_digits() -> tuple[np.ndarray, np.ndarray]:
    """(images float32 [1797, 8, 8] in [0, 1], digits int64 [1797]) from scikit-learn."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = (np.asarray(d.images, np.float32) / 16.0).clip(0.0, 1.0)
    images.setflags(write=False)
    target = np.asarray(d.target, np.int64)
    target.setflags(write=False)
    return images, target


@lru_cache(maxsize=8)
def _split_cached(val_fraction: float, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    _, target = load_source_digits()
    rng = np.random.default_rng(np.random.SeedSequence([split_seed, 0x5EED]))
    train, val = [], []
    for d in range(10):
        idx = np.flatnonzero(target == d)
        idx = idx[rng.permutation(len(idx))]
        k = int(round(val_fraction * len(idx)))
        val.append(idx[:k])
        train.append(idx[k:])
    tr, va = np.sort(np.concatenate(train)), np.sort(np.concatenate(val))
    tr.setflags(write=False)
    va.setflags(write=False)
    return tr, va


def digit_split(val_fraction: float = 0.2, split_seed: int = 0) -> dict[str, np.ndarray]:
    """Source-image indices of each split, stratified by digit and disjoint."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}")
    tr, va = _split_cached(float(val_fraction), int(split_seed))
    return {"train": tr, "val": va}


class DigitScenes(NamedTuple):
    images: np.ndarray     # uint8 [n, H, W, 3]
    labels: np.ndarray     # uint8 [n, H, W]: 0 background, 1 + digit
    instances: np.ndarray  # uint8 [n, H, W]: 0 none, 1..k
    sources: np.ndarray    # int32 [n, max_digits]: source index of instance j+1, -1 unused


def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """Bilinear resampling matrix [n_out, n_in] (half-pixel centres, edge clamped)."""
    pos = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    pos = pos.clip(0, n_in - 1)
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, n_in - 1)
    w = pos - lo
    m = np.zeros((n_out, n_in), np.float32)
    m[np.arange(n_out), lo] += (1 - w).astype(np.float32)
    m[np.arange(n_out), hi] += w.astype(np.float32)
    return m


def _backgrounds(rng: np.random.Generator, n: int, h: int, w: int, clutter: int) -> np.ndarray:
    grid = rng.uniform(30.0, 225.0, size=(n, 3, 3, 3)).astype(np.float32)  # [n, c, 3, 3]
    ah, aw = _interp_matrix(h, 3), _interp_matrix(w, 3)
    field = np.matmul(np.matmul(ah, grid), aw.T)  # [n, c, h, w]; matmul, not einsum: 10x faster
    field += rng.integers(-18, 19, size=(n, 1, h, w), dtype=np.int8)
    np.clip(field, 0, 255, out=field)
    bg = np.ascontiguousarray(field.astype(np.uint8).transpose(0, 2, 3, 1))
    if clutter > 0:
        counts = rng.integers(0, clutter + 1, size=n)
        total = int(counts.sum())
        vertical = rng.random(total) < 0.5
        thick = rng.integers(1, 3, size=total)
        length = rng.uniform(0.15, 0.45, size=total)
        pos = rng.random((total, 2))
        colour = rng.integers(0, 256, size=(total, 3), dtype=np.uint8)
        owner = np.repeat(np.arange(n), counts)
        for k in range(total):
            i = owner[k]
            if vertical[k]:
                bh, bw = max(int(length[k] * h), 2), int(thick[k])
            else:
                bh, bw = int(thick[k]), max(int(length[k] * w), 2)
            y, x = int(pos[k, 0] * (h - bh + 1)), int(pos[k, 1] * (w - bw + 1))
            bg[i, y : y + bh, x : x + bw] = colour[k]
    return bg


def make_digit_scenes(
    split: str,
    n: int,
    size: tuple[int, int] | int = (64, 64),
    seed: int = 0,
    *,
    digits_per_scene: tuple[int, int] = (1, 4),
    digit_size: tuple[int, int] | None = None,
    max_overlap: float = 0.2,
    clutter: int = 2,
    val_fraction: float = 0.2,
    split_seed: int = 0,
) -> DigitScenes:
    """Generate ``n`` scenes of ``split`` ("train" or "val"); see the module docstring.

    The same arguments always give the same arrays. ``seed`` seeds the scenes; ``split_seed``
    and ``val_fraction`` fix which source digits belong to which split (keep them equal for
    the train and val sets of one experiment)."""
    if split not in _SPLIT_CODE:
        raise DataError(f"digits has splits 'train' and 'val', not {split!r}")
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if h < 8 or w < 8:
        raise DataError(f"scene size must be at least 8x8, got {h}x{w}")
    if n < 0:
        raise DataError(f"number of scenes must be >= 0, got {n}")
    lo, hi = int(digits_per_scene[0]), int(digits_per_scene[1])
    if not 0 <= lo <= hi or hi > 255:
        raise DataError(f"digits per scene must be 0 <= min <= max <= 255, got {lo}-{hi}")
    short = min(h, w)
    if digit_size is None:
        digit_size = (max(short // 4, 8), max(short // 2, 8))
    smin, smax = int(digit_size[0]), min(int(digit_size[1]), short)
    if not 4 <= smin <= smax:
        raise DataError(f"digit size must be 4 <= min <= max <= {short}, got {digit_size[0]}-{digit_size[1]}")

    source_images, source_digits = load_source_digits()
    pool = digit_split(val_fraction, split_seed)[split]
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _SPLIT_CODE[split], h, w]))

    counts = rng.integers(lo, hi + 1, size=n)
    m = int(counts.sum())
    src = rng.choice(pool, size=m)
    sizes = rng.integers(smin, smax + 1, size=m)
    tries = rng.random((m, 10, 2))
    dark = rng.uniform(0.0, 100.0, size=(m, 3)).astype(np.float32)

    # Upscale all digits of one size at once: A @ img @ A.T.
    alphas: list[np.ndarray | None] = [None] * m
    for s in np.unique(sizes):
        sel = np.flatnonzero(sizes == s)
        a = _interp_matrix(int(s), 8)
        up = np.matmul(np.matmul(a, source_images[src[sel]]), a.T)
        up = ((up - 0.25) / 0.35).clip(0.0, 1.0)  # stroke intensity -> alpha, soft edges
        for k, j in enumerate(sel):
            alphas[j] = up[k]

    images = _backgrounds(rng, n, h, w, clutter)
    labels = np.zeros((n, h, w), np.uint8)
    instances = np.zeros((n, h, w), np.uint8)
    sources = np.full((n, max(hi, 1)), -1, np.int32)
    start = 0
    for i in range(n):
        boxes: list[tuple[int, int, int]] = []
        for j in range(start, start + int(counts[i])):
            s = int(sizes[j])
            for t in range(10):
                y, x = int(tries[j, t, 0] * (h - s + 1)), int(tries[j, t, 1] * (w - s + 1))
                if all(_overlap(y, x, s, by, bx, bs) <= max_overlap * min(s, bs) ** 2 for by, bx, bs in boxes):
                    break
            else:
                continue  # no room: drop this digit
            boxes.append((y, x, s))
            region = images[i, y : y + s, x : x + s]
            bgf = region.astype(np.float32)
            # Contrast with the local background: light digits on dark ground and vice versa.
            colour = dark[j] if bgf.mean() > 128 else 255.0 - dark[j]
            a = alphas[j][..., None]
            region[...] = (bgf * (1 - a) + colour * a + 0.5).astype(np.uint8)
            mask = alphas[j] >= 0.5
            labels[i, y : y + s, x : x + s][mask] = source_digits[src[j]] + 1
            inst = len(boxes)
            instances[i, y : y + s, x : x + s][mask] = inst
            sources[i, inst - 1] = src[j]
        start += int(counts[i])
    return DigitScenes(images, labels, instances, sources)


def _overlap(y: int, x: int, s: int, by: int, bx: int, bs: int) -> int:
    dy = min(y + s, by + bs) - max(y, by)
    dx = min(x + s, bx + bs) - max(x, bx)
    return max(dy, 0) * max(dx, 0)


def open_digits(
    split: str,
    *,
    size: tuple[int, int] | int = (64, 64),
    train: int = 2000,
    val: int = 500,
    seed: int = 0,
    **kw,
) -> ArraySource:
    """The digits data set as a source: ``train`` scenes for split "train", ``val`` for "val"."""
    if split not in _SPLIT_CODE:
        raise DataError(f"digits has splits 'train' and 'val', not {split!r}")
    hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    scenes = make_digit_scenes(split, train if split == "train" else val, hw, seed, **kw)
    src = ArraySource(scenes.images, scenes.labels, digits_info(hw), split)
    src.scenes = scenes  # instances and source indices, for panoptic use and for tests
    return src
