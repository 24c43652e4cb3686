"""Panoptic data: one id map per image, and readers for the real panoptic layouts (no torch).

The panoptic label of a pixel is one integer, ``semantic + 256 * instance`` (int32):

- ``semantic`` (the low byte) is the train id, 255 = void (no part in loss or metric), so
  ``pan % 256`` is the semantic label every other part of the project uses and a padding
  value of 255 (the loader's) is void;
- ``instance`` is 0 for stuff and for crowd regions of a thing class (a thing pixel with no
  instance, as Cityscapes' ``instanceIds`` below 1000 and COCO's ``iscrowd`` segments), and
  1, 2, ... for the thing instances of the image.

A panoptic source is a :class:`~hyctas_dsl.data.base.Source` whose ``load`` gives the usual
``(image, semantic)`` pair, plus ``load_panoptic(i) -> (image uint8 [H, W, 3], pan int32
[H, W])`` and ``things``, the train ids that are thing classes.

Layouts (``{split}`` is the split name on disk):

- COCO panoptic: ``root/annotations/panoptic_{split}2017.json`` (``images``, ``annotations``
  with ``file_name`` and ``segments_info`` [``id``, ``category_id``, ``iscrowd``],
  ``categories`` with ``isthing``), the PNGs in ``root/annotations/panoptic_{split}2017/``
  whose RGB encodes the segment id ``R + 256 G + 256^2 B`` (0 = void), images in
  ``root/{split}2017/``. Train ids are the categories in increasing id order.
- Cityscapes panoptic as cityscapesScripts' ``createPanopticImgs`` writes it (read when
  ``root/gtFine/cityscapes_panoptic_{split}.json`` exists): COCO's format with Cityscapes label
  ids as category ids, PNGs in ``root/gtFine/cityscapes_panoptic_{split}/``, images in
  ``root/leftImg8bit/{split}/{city}/``.
- Cityscapes panoptic from ``gtFine`` otherwise: ``root/leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png``
  with ``root/gtFine/{split}/{city}/{stem}_gtFine_instanceIds.png``; ``id // 1000`` is the
  label id of ids >= 1000 (thing instances), ids below 1000 are label ids (a thing label
  there is a crowd region); label ids map to the 19 train ids, things are person, rider,
  car, truck, bus, train, motorcycle, bicycle.
- digits: the embedded scenes (``hyctas_dsl.data.digits``), digits are things, background
  is stuff.

Every fault is a :class:`DataError` naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from hyctas_dsl.data.base import DataError, DatasetInfo, Source, make_palette
from hyctas_dsl.data.formats import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_ID_TO_TRAINID,
    CITYSCAPES_PALETTE,
    _open,
    _require_dir,
    cityscapes_pairs,
    read_image,
    read_mask,
)

__all__ = [
    "CITYSCAPES_THINGS",
    "INSTANCE_STRIDE",
    "VOID",
    "PanopticSource",
    "decode_pan",
    "encode_pan",
    "open_cityscapes_panoptic",
    "open_cityscapes_panoptic_json",
    "open_coco_panoptic",
    "open_digits_panoptic",
    "open_panoptic_dataset",
    "panoptic_train_transform",
    "rgb_to_id",
]

INSTANCE_STRIDE = 256  # pan = semantic + INSTANCE_STRIDE * instance
VOID = 255
# Cityscapes' thing classes (hasInstances in cityscapesScripts' labels.py), as train ids.
CITYSCAPES_THINGS: tuple[int, ...] = tuple(CITYSCAPES_CLASSES.index(n) for n in
                                           ("person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"))


def encode_pan(semantic: np.ndarray, instance: np.ndarray) -> np.ndarray:
    """(train ids, instance ids) -> the panoptic id map (int32); void pixels keep instance 0."""
    sem = np.asarray(semantic).astype(np.int64)
    inst = np.where(sem == VOID, 0, np.asarray(instance).astype(np.int64))
    return (sem + INSTANCE_STRIDE * inst).astype(np.int32)


def decode_pan(pan: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The panoptic id map -> (semantic, instance)."""
    pan = np.asarray(pan)
    return pan % INSTANCE_STRIDE, pan // INSTANCE_STRIDE


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """COCO panoptic PNG colours -> segment ids, ``R + 256 G + 256^2 B`` (panopticapi's)."""
    rgb = np.asarray(rgb).astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


class PanopticSource(Source):
    """Base of the panoptic sources (module docstring): ``load`` is derived from
    ``load_panoptic``; subclasses set ``info``, ``split``, ``things``."""

    things: tuple[int, ...] = ()

    def load_panoptic(self, index: int) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image, pan = self.load_panoptic(index)
        return image, (pan % INSTANCE_STRIDE).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# digits


class _DigitsPanoptic(PanopticSource):
    def __init__(self, source):
        self.source, self.info, self.split = source, source.info, source.split
        self.things = tuple(range(1, source.info.num_classes))  # background (0) is stuff

    def __len__(self) -> int:
        return len(self.source)

    def name(self, index: int) -> str:
        return self.source.name(index)

    def load_panoptic(self, index: int):
        i = self._check_index(index)
        image, label = self.source.load(i)
        return image, encode_pan(label, self.source.scenes.instances[i])


def open_digits_panoptic(split: str, spec: str = "digits", **kw) -> PanopticSource:
    """The digit scenes with their instance ids (``spec`` as ``--data digits[:options]``)."""
    from hyctas_dsl.data.formats import open_dataset

    return _DigitsPanoptic(open_dataset(spec, split, **kw))


# ---------------------------------------------------------------------------------------------
# Cityscapes (gtFine instanceIds)


class _CityscapesPanoptic(PanopticSource):
    def __init__(self, pairs, info, split):
        self.pairs, self.info, self.split = pairs, info, split
        self.things = CITYSCAPES_THINGS
        lut = np.full(65536, VOID, np.int64)  # every id outside the 19 classes is void
        for label_id, train_id in CITYSCAPES_ID_TO_TRAINID.items():
            lut[label_id] = train_id
        self.lut = lut
        self.is_thing = np.zeros(256, bool)
        self.is_thing[list(CITYSCAPES_THINGS)] = True

    def __len__(self) -> int:
        return len(self.pairs)

    def name(self, index: int) -> str:
        return str(self.pairs[self._check_index(index)][0])

    def load_panoptic(self, index: int):
        img_path, ids_path = self.pairs[self._check_index(index)]
        image = read_image(img_path)
        raw = read_mask(ids_path)
        if raw.shape != image.shape[:2]:
            raise DataError(f"instance ids are {raw.shape[1]}x{raw.shape[0]} but the image is "
                            f"{image.shape[1]}x{image.shape[0]} (WxH)", ids_path)
        if raw.size and raw.min() < 0:
            raise DataError(f"negative instance id {int(raw.min())}", ids_path)
        label_id = np.where(raw >= 1000, raw // 1000, raw)
        if raw.size and label_id.max() >= 65536:
            raise DataError(f"label id {int(label_id.max())} out of range", ids_path)
        sem = self.lut[label_id]
        inst = np.where((raw >= 1000) & self.is_thing[sem], raw % 1000 + 1, 0)
        return image, encode_pan(sem, inst)


def open_cityscapes_panoptic(root: str | Path, split: str) -> PanopticSource:
    """Cityscapes panoptic from gtFine ``*_instanceIds.png``; ``split`` is train or val."""
    pairs = cityscapes_pairs(Path(root), split, "instanceIds", "instance")
    info = DatasetInfo("cityscapes", CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, crop=(512, 1024), scale_range=(0.5, 2.0))
    return _CityscapesPanoptic(pairs, info, split)


# ---------------------------------------------------------------------------------------------
# COCO panoptic


def _json_error(path: Path, what: str) -> DataError:
    return DataError(f"not a COCO panoptic annotation file: {what}", path)


class _CocoPanoptic(PanopticSource):
    def __init__(self, items, cat_to_train, info, split, things, json_path):
        self.items, self.cat_to_train, self.info, self.split = items, cat_to_train, info, split
        self.things, self.json_path = things, json_path

    def __len__(self) -> int:
        return len(self.items)

    def name(self, index: int) -> str:
        return str(self.items[self._check_index(index)][0])

    def load_panoptic(self, index: int):
        img_path, png_path, segments = self.items[self._check_index(index)]
        image = read_image(img_path)
        im = _open(png_path)
        if im.mode != "RGB":
            raise DataError(f"panoptic PNG must be RGB (segment id = R + 256 G + 256^2 B), got mode {im.mode}", png_path)
        ids = rgb_to_id(np.asarray(im))
        if ids.shape != image.shape[:2]:
            raise DataError(f"panoptic PNG is {ids.shape[1]}x{ids.shape[0]} but its image {img_path} is "
                            f"{image.shape[1]}x{image.shape[0]} (WxH)", png_path)
        present = np.unique(ids)
        known = {int(s["id"]) for s in segments}
        stray = [int(v) for v in present if v != 0 and int(v) not in known]
        if stray:
            raise DataError(f"segment id(s) {', '.join(map(str, stray[:5]))} are not in the image's segments_info "
                            f"of {self.json_path.name}", png_path)
        # Segment id -> pan value through a sorted look-up (ids reach 256^3).
        seg_ids = np.array([0] + [int(s["id"]) for s in segments], np.int64)
        values = [VOID]
        n_inst = 0
        for s in segments:
            train = self.cat_to_train[int(s["category_id"])]
            if train in self.things and not s.get("iscrowd", 0):
                n_inst += 1
                values.append(train + INSTANCE_STRIDE * n_inst)
            else:
                values.append(train)  # stuff, or a crowd region (a thing class with no instance)
        order = np.argsort(seg_ids)
        pos = np.searchsorted(seg_ids[order], ids)
        return image, np.asarray(values, np.int64)[order][pos].astype(np.int32)


def _read_json(json_path: Path, what: str) -> dict:
    if not json_path.is_file():
        raise DataError(f"{what} panoptic annotation file not found", json_path)
    try:
        data = json.loads(json_path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read annotation file: {e}", json_path) from None
    if not isinstance(data, dict):
        raise _json_error(json_path, "the top level is not an object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise _json_error(json_path, f"no `{key}` list")
    return data


def _panoptic_items(data: dict, json_path: Path, png_dir: Path, image_path, cat_to_train: dict[int, int]) -> list:
    """(image, PNG, segments_info) per annotation, every reference checked."""
    try:
        images = {str(im["id"]): str(im["file_name"]) for im in data["images"]}
    except (KeyError, TypeError, ValueError) as e:
        raise _json_error(json_path, f"an image lacks {e}") from None
    items = []
    for k, ann in enumerate(data["annotations"]):
        try:
            image_id, png_name, segments = str(ann["image_id"]), str(ann["file_name"]), list(ann["segments_info"])
            for seg in segments:
                int(seg["id"])
                if int(seg["category_id"]) not in cat_to_train:
                    raise DataError(f"annotation {k} ({png_name}): category {int(seg['category_id'])} is not in `categories`",
                                    json_path)
        except (KeyError, TypeError, ValueError) as e:
            raise _json_error(json_path, f"annotation {k} lacks {e}") from None
        if image_id not in images:
            raise DataError(f"annotation {k} ({png_name}): image id {image_id} is not in `images`", json_path)
        img, png = image_path(images[image_id]), png_dir / png_name
        if not img.is_file():
            raise DataError(f"image of annotation {png_name} not found", img)
        if not png.is_file():
            raise DataError(f"panoptic PNG of image {images[image_id]} not found", png)
        items.append((img, png, segments))
    if not items:
        raise DataError("no annotations", json_path)
    return items


def open_coco_panoptic(root: str | Path, split: str) -> PanopticSource:
    """COCO panoptic (``split`` train or val, read as ``panoptic_{split}2017``)."""
    root = Path(root)
    _require_dir(root, "COCO root")
    json_path = root / "annotations" / f"panoptic_{split}2017.json"
    data = _read_json(json_path, "COCO")
    try:
        cats = sorted(data["categories"], key=lambda c: int(c["id"]))
        cat_to_train = {int(c["id"]): i for i, c in enumerate(cats)}
        classes = tuple(str(c["name"]) for c in cats)
        things = tuple(i for i, c in enumerate(cats) if int(c["isthing"]))
    except (KeyError, TypeError, ValueError) as e:
        raise _json_error(json_path, f"a category lacks {e}") from None
    if not 0 < len(classes) < VOID:
        raise DataError(f"{len(classes)} categories; between 1 and {VOID - 1} are supported", json_path)
    if len(set(classes)) != len(classes):
        raise DataError("duplicate category names", json_path)
    img_dir = root / f"{split}2017"
    items = _panoptic_items(data, json_path, root / "annotations" / f"panoptic_{split}2017", lambda name: img_dir / name,
                            cat_to_train)
    info = DatasetInfo("coco_panoptic", classes, make_palette(len(classes)), crop=(640, 640), scale_range=(0.5, 1.5))
    return _CocoPanoptic(items, cat_to_train, info, split, things, json_path)


def open_cityscapes_panoptic_json(root: str | Path, split: str) -> PanopticSource:
    """Cityscapes panoptic as cityscapesScripts' ``createPanopticImgs`` writes it:
    ``gtFine/cityscapes_panoptic_{split}.json`` (COCO's format; category ids are Cityscapes
    label ids) with the PNGs in ``gtFine/cityscapes_panoptic_{split}/`` and the images in
    ``leftImg8bit/{split}/{city}/``."""
    root = Path(root)
    _require_dir(root, "Cityscapes root")
    json_path = root / "gtFine" / f"cityscapes_panoptic_{split}.json"
    data = _read_json(json_path, "Cityscapes")
    img_dir = root / "leftImg8bit" / split
    items = _panoptic_items(data, json_path, root / "gtFine" / f"cityscapes_panoptic_{split}",
                            lambda name: img_dir / name.split("_", 1)[0] / name, CITYSCAPES_ID_TO_TRAINID)
    info = DatasetInfo("cityscapes", CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, crop=(512, 1024), scale_range=(0.5, 2.0))
    return _CocoPanoptic(items, dict(CITYSCAPES_ID_TO_TRAINID), info, split, CITYSCAPES_THINGS, json_path)


# ---------------------------------------------------------------------------------------------
# specs and training augmentation

PANOPTIC_KINDS = ("digits", "cityscapes", "coco")


def open_panoptic_dataset(spec: str, split: str, **kw) -> PanopticSource:
    """The ``split`` of a panoptic ``--data`` spec: ``digits[:options]`` (the default),
    ``cityscapes:PATH`` (gtFine instanceIds) or ``coco:PATH`` (COCO panoptic)."""
    spec = (spec or "digits").strip()
    kind, _, rest = spec.partition(":")
    kind = kind.strip().lower()
    if kind not in PANOPTIC_KINDS:
        raise DataError(f"no panoptic reader for data kind {kind!r} in --data {spec!r}; "
                        "use digits[:options], cityscapes:PATH or coco:PATH")
    if kind == "digits":
        return open_digits_panoptic(split, spec, **kw)
    if kw:
        raise DataError(f"--data {kind} takes no options, got {', '.join(sorted(kw))}")
    if not rest.strip():
        raise DataError(f"--data {kind} needs a path: {kind}:/path/to/{kind}")
    path = Path(rest.strip()).expanduser()
    if not path.exists():
        raise DataError(f"{kind} data not found", path)
    if kind == "coco":
        return open_coco_panoptic(path, split)
    # cityscapesScripts' panoptic JSON when it was created, else the gtFine instance ids
    if (path / "gtFine" / f"cityscapes_panoptic_{split}.json").is_file():
        return open_cityscapes_panoptic_json(path, split)
    return open_cityscapes_panoptic(path, split)


def panoptic_train_transform(transform):
    """The semantic :class:`~hyctas_dsl.data.transforms.TrainTransform` applied to the
    panoptic id map: the same random draws, nearest-neighbour resampling of the ids, padding
    with void. Returns a callable (image, pan, rng) -> (image float32 [3, H, W], pan int64)."""

    def resize_ids(pan: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        # nearest neighbour as PIL picks it, on the index grid (ids are never blended, and
        # exceed PIL's 8-bit label images)
        (h, w), (sh, sw) = pan.shape[:2], size
        ys = np.minimum(((np.arange(sh) + 0.5) * h / sh).astype(np.int64), h - 1)
        xs = np.minimum(((np.arange(sw) + 0.5) * w / sw).astype(np.int64), w - 1)
        return np.asarray(pan)[ys[:, None], xs[None, :]]

    def apply(image: np.ndarray, pan: np.ndarray, rng: np.random.Generator):
        return transform.apply(image, np.asarray(pan), rng, resize_ids, VOID)

    return apply
