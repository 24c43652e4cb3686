"""Data for training, search and evaluation (paper section 4.2).

- the embedded default: multi-digit scenes from scikit-learn's bundled digits
  (:func:`make_digit_scenes`, :func:`digits_info`), split by source image;
- readers for Cityscapes, ADE20K and a plain folder layout, and :func:`open_dataset` for
  ``--data`` specs; every data problem is a :class:`DataError` naming the file;
- the training augmentation (random scale, crop, flip) and evaluation transforms;
- :class:`ConfusionMatrix` for mIoU;
- torch Datasets and :func:`make_loader` (``hyctas_dsl.data.loader``, the only module here
  that imports torch; its names are importable from this package lazily).

``import hyctas_dsl`` does not import this package, and this package imports neither torch
nor scikit-learn nor PIL until they are needed. See docs/data.md.
"""

from __future__ import annotations

from hyctas_dsl.data.base import IMAGENET_MEAN, IMAGENET_STD, ArraySource, DataError, DatasetInfo, Source, make_palette
from hyctas_dsl.data.digits import (
    DIGIT_CLASSES,
    DIGIT_PALETTE,
    DigitScenes,
    digit_split,
    digits_info,
    load_source_digits,
    make_digit_scenes,
    open_digits,
)
from hyctas_dsl.data.formats import (
    ADE20K_CLASSES,
    CITYSCAPES_CLASSES,
    CITYSCAPES_ID_TO_TRAINID,
    CITYSCAPES_PALETTE,
    DATA_KINDS,
    FileSource,
    open_ade20k,
    open_cityscapes,
    open_dataset,
    open_folder,
    parse_spec,
    read_image,
    read_mask,
)
from hyctas_dsl.data.metrics import ConfusionMatrix
from hyctas_dsl.data.transforms import EvalTransform, TrainTransform, denormalize, normalize, resize_pair, sample_rng

_TORCH_NAMES = {"SegmentationDataset", "make_loader", "make_datasets", "pad_collate"}


def __getattr__(name: str):
    # The torch-using names load on first use, so numpy-only users never import torch.
    if name in _TORCH_NAMES:
        from hyctas_dsl.data import loader

        return getattr(loader, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(
    [
        "ADE20K_CLASSES", "ArraySource", "CITYSCAPES_CLASSES", "CITYSCAPES_ID_TO_TRAINID",
        "CITYSCAPES_PALETTE", "ConfusionMatrix", "DATA_KINDS", "DIGIT_CLASSES", "DIGIT_PALETTE",
        "DataError", "DatasetInfo", "DigitScenes", "EvalTransform", "FileSource", "IMAGENET_MEAN",
        "IMAGENET_STD", "Source", "TrainTransform", "denormalize", "digit_split", "digits_info",
        "load_source_digits", "make_digit_scenes", "make_palette", "normalize", "open_ade20k",
        "open_cityscapes", "open_dataset", "open_digits", "open_folder", "parse_spec",
        "read_image", "read_mask", "resize_pair", "sample_rng", *_TORCH_NAMES,
    ]
)
