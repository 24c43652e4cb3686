"""Readers for real segmentation data sets, and the ``--data`` spec parser.

Layouts (``{split}`` is the split name on disk):

- Cityscapes: ``root/leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png`` with
  ``root/gtFine/{split}/{city}/{stem}_gtFine_labelIds.png``; label ids mapped to the 19 train
  ids by the official table (:data:`CITYSCAPES_ID_TO_TRAINID`), every other id -> 255.
- ADE20K SceneParsing: ``root/images/{training,validation}/{stem}.jpg`` with
  ``root/annotations/{training,validation}/{stem}.png``; 0 ("other") -> 255, 1..150 -> 0..149,
  anything above 150 is an error.
- folder: ``root/classes.txt`` (one class name per line, at most 255), images
  ``*.png|*.jpg|*.jpeg`` in ``root/{split}/images`` with masks ``root/{split}/masks/{stem}.png``
  or, flat, ``root/images`` + ``root/masks`` (optionally restricted by ``root/{split}.txt``, one
  stem per line; without it the flat folder serves every split). Mask value i is class i,
  255 is ignored, any other value is an error.

Pairs are listed when a source is opened (an image without its mask is an error then); files
are decoded on ``load`` (an unreadable file, a size mismatch or a bad label value is an error
then, naming the file). All errors are :class:`DataError`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hyctas_dsl.data.base import DataError, DatasetInfo, Source, make_palette

__all__ = [
    "ADE20K_CLASSES",
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_ID_TO_TRAINID",
    "CITYSCAPES_PALETTE",
    "DATA_KINDS",
    "FileSource",
    "open_ade20k",
    "open_cityscapes",
    "open_dataset",
    "open_folder",
    "parse_spec",
    "read_image",
    "read_mask",
]

IMAGE_EXTS = (".png", ".jpg", ".jpeg")

# The official Cityscapes labels (cityscapesscripts/helpers/labels.py): label id -> train id.
CITYSCAPES_ID_TO_TRAINID: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}
CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)
CITYSCAPES_PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32),
)
# objectInfo150 of the ADE20K SceneParsing benchmark, in train-id order (id 1..150 -> 0..149).
ADE20K_CLASSES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane",
    "grass", "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant",
    "curtain", "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror",
    "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp",
    "bathtub", "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers",
    "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway",
    "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower", "book",
    "hill", "bench", "countertop", "stove", "palm", "kitchen island", "computer",
    "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman",
    "bottle", "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt",
    "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket",
    "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen",
    "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan",
    "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator",
    "glass", "clock", "flag",
)
assert len(ADE20K_CLASSES) == 150 and len(CITYSCAPES_CLASSES) == len(CITYSCAPES_PALETTE) == 19


# ---------------------------------------------------------------------------------------------
# decoding


def _pil():
    from PIL import Image

    return Image


def _open(path: Path):
    Image = _pil()
    try:
        im = Image.open(path)
        im.load()  # decode now: a truncated file fails here, not later in a worker
        return im
    except FileNotFoundError:
        raise DataError("file not found", path) from None
    except (OSError, ValueError, SyntaxError) as e:  # PIL's UnidentifiedImageError is an OSError
        raise DataError(f"cannot read image: {e}", path) from None


def read_image(path: str | Path) -> np.ndarray:
    """An image file as RGB uint8 [H, W, 3]; DataError naming the file when it cannot be read."""
    im = _open(Path(path))
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def read_mask(path: str | Path) -> np.ndarray:
    """A label PNG as its raw integer values [H, W] (modes L, P (palette indices), I;16, I).
    A colour (RGB) mask is an error: masks must hold class indices."""
    path = Path(path)
    im = _open(path)
    if im.mode not in ("L", "P", "I;16", "I;16B", "I;16L", "I", "1"):
        raise DataError(f"mask must be a single-channel PNG of class indices, got mode {im.mode}", path)
    arr = np.asarray(im)
    if arr.ndim != 2:
        raise DataError(f"mask must be 2-D, got shape {arr.shape}", path)
    return arr.astype(np.int64)


def _identity_lut(num_classes: int, ignore_index: int = 255) -> np.ndarray:
    lut = np.full(65536, -1, np.int32)
    lut[:num_classes] = np.arange(num_classes)
    lut[ignore_index] = ignore_index
    return lut


class FileSource(Source):
    """Image/mask file pairs; masks are mapped to train ids by a look-up table where -1
    marks a value outside the class list (an error naming the file and the value)."""

    def __init__(self, pairs: list[tuple[Path, Path]], lut: np.ndarray, info: DatasetInfo, split: str, root: Path):
        self.pairs, self.lut, self.info, self.split, self.root = pairs, lut, info, split, root

    def __len__(self) -> int:
        return len(self.pairs)

    def name(self, index: int) -> str:
        return str(self.pairs[self._check_index(index)][0])

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        img_path, mask_path = self.pairs[self._check_index(index)]
        image = read_image(img_path)
        raw = read_mask(mask_path)
        if raw.shape != image.shape[:2]:
            raise DataError(
                f"mask is {raw.shape[1]}x{raw.shape[0]} but its image {img_path} is {image.shape[1]}x{image.shape[0]} (WxH)",
                mask_path,
            )
        if raw.size and (raw.min() < 0 or raw.max() >= len(self.lut)):
            raise DataError(f"label value {int(raw.max())} is outside the class list", mask_path)
        label = self.lut[raw]
        bad = label < 0
        if bad.any():
            values = np.unique(raw[bad])
            shown = ", ".join(str(int(v)) for v in values[:5]) + (" ..." if len(values) > 5 else "")
            raise DataError(
                f"label value(s) {shown} outside the class list of {self.info.name} "
                f"({self.info.num_classes} classes: 0..{self.info.num_classes - 1}, 255 ignored)",
                mask_path,
            )
        return image, label.astype(np.uint8)


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{what} not found (expected a directory)", path)
    return path


def _no_pairs(root: Path, where: Path) -> DataError:
    return DataError(f"no images found under {where}", root)


# ---------------------------------------------------------------------------------------------
# Cityscapes


def _cityscapes_info() -> DatasetInfo:
    return DatasetInfo("cityscapes", CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, crop=(512, 1024), scale_range=(0.5, 2.0))


def cityscapes_pairs(root: Path, split: str, gt_kind: str, what: str) -> list[tuple[Path, Path]]:
    """(leftImg8bit image, gtFine ``*_gtFine_{gt_kind}.png``) of every image of ``split``;
    an image without its ground-truth file is an error naming both."""
    _require_dir(root, "Cityscapes root")
    img_dir = _require_dir(root / "leftImg8bit" / split, f"Cityscapes split {split!r}")
    gt_dir = root / "gtFine" / split
    pairs = []
    for img in sorted(img_dir.glob("*/*_leftImg8bit.png")):
        stem = img.name[: -len("_leftImg8bit.png")]
        gt = gt_dir / img.parent.name / f"{stem}_gtFine_{gt_kind}.png"
        if not gt.is_file():
            raise DataError(f"image has no {what} file {gt}", img)
        pairs.append((img, gt))
    if not pairs:
        raise _no_pairs(root, img_dir)
    return pairs


def open_cityscapes(root: str | Path, split: str) -> FileSource:
    """Cityscapes gtFine; ``split`` is train, val or test."""
    root = Path(root)
    pairs = cityscapes_pairs(root, split, "labelIds", "label")
    lut = np.full(65536, 255, np.int32)  # every id outside the 19 classes is ignored
    for label_id, train_id in CITYSCAPES_ID_TO_TRAINID.items():
        lut[label_id] = train_id
    return FileSource(pairs, lut, _cityscapes_info(), split, root)


# ---------------------------------------------------------------------------------------------
# ADE20K

_ADE_SPLITS = {"train": "training", "val": "validation", "training": "training", "validation": "validation"}


def _ade_info() -> DatasetInfo:
    return DatasetInfo("ade20k", ADE20K_CLASSES, make_palette(150), crop=(512, 512), scale_range=(0.5, 2.0))


def open_ade20k(root: str | Path, split: str) -> FileSource:
    """ADE20K SceneParsing (ADEChallengeData2016); ``split`` is train/training or val/validation."""
    root = Path(root)
    _require_dir(root, "ADE20K root")
    if split not in _ADE_SPLITS:
        raise DataError(f"ADE20K has splits 'train' (training) and 'val' (validation), not {split!r}", root)
    disk = _ADE_SPLITS[split]
    img_dir = _require_dir(root / "images" / disk, f"ADE20K split {disk!r}")
    ann_dir = root / "annotations" / disk
    pairs = []
    for img in sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS):
        mask = ann_dir / f"{img.stem}.png"
        if not mask.is_file():
            raise DataError(f"image has no annotation {mask}", img)
        pairs.append((img, mask))
    if not pairs:
        raise _no_pairs(root, img_dir)
    lut = np.full(65536, -1, np.int32)
    lut[0] = 255  # "other"
    lut[1:151] = np.arange(150)
    return FileSource(pairs, lut, _ade_info(), split, root)


# ---------------------------------------------------------------------------------------------
# plain folder


def _read_classes(path: Path) -> tuple[str, ...]:
    if not path.is_file():
        raise DataError("class list not found (one class name per line)", path)
    try:
        names = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read class list: {e}", path) from None
    if not names:
        raise DataError("class list is empty", path)
    if len(names) > 255:
        raise DataError(f"at most 255 classes (value 255 means ignore), got {len(names)}", path)
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise DataError(f"duplicate class names: {', '.join(dup)}", path)
    return names


def open_folder(root: str | Path, split: str) -> FileSource:
    """The plain folder layout (see the module docstring)."""
    root = Path(root)
    _require_dir(root, "data folder")
    classes = _read_classes(root / "classes.txt")
    if (root / split / "images").is_dir():
        img_dir, mask_dir, stems = root / split / "images", root / split / "masks", None
    else:
        img_dir = _require_dir(root / "images", f"images folder (or {root / split / 'images'})")
        mask_dir = root / "masks"
        listing = root / f"{split}.txt"
        stems = None
        if listing.is_file():
            stems = [s.strip() for s in listing.read_text(encoding="utf-8").splitlines() if s.strip()]
    images = {p.stem: p for p in sorted(img_dir.iterdir()) if p.suffix.lower() in IMAGE_EXTS}
    if stems is not None:
        missing = [s for s in stems if s not in images]
        if missing:
            raise DataError(f"{len(missing)} listed image(s) not in {img_dir}, first {missing[0]!r}", root / f"{split}.txt")
        images = {s: images[s] for s in stems}
    pairs = []
    for stem, img in images.items():
        mask = mask_dir / f"{stem}.png"
        if not mask.is_file():
            raise DataError(f"image has no mask {mask}", img)
        pairs.append((img, mask))
    if not pairs:
        raise _no_pairs(root, img_dir)
    info = DatasetInfo(
        f"folder:{root.name}", classes, make_palette(len(classes)), crop=(512, 512), scale_range=(0.5, 2.0)
    )
    return FileSource(pairs, _identity_lut(len(classes)), info, split, root)


# ---------------------------------------------------------------------------------------------
# --data specs

DATA_KINDS = ("digits", "cityscapes", "ade20k", "folder")
_DIGIT_KEYS = {
    "size": "scene size, N or HxW",
    "train": "number of train scenes",
    "val": "number of val scenes",
    "seed": "scene seed",
    "digits": "digits per scene, N or MIN-MAX",
    "digit_size": "digit size in pixels, N or MIN-MAX",
    "clutter": "max distractor bars per scene",
    "max_overlap": "max overlap of two digit boxes (fraction of the smaller)",
    "val_fraction": "fraction of source digits held out for val",
    "split_seed": "seed of the source-digit split",
}


def _pair(value: str, sep: str, key: str, spec: str) -> tuple[int, int]:
    parts = value.lower().split(sep)
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        raise DataError(f"bad value {value!r} for {key} in --data {spec!r}") from None
    if len(nums) == 1:
        return nums[0], nums[0]
    if len(nums) == 2:
        return nums[0], nums[1]
    raise DataError(f"bad value {value!r} for {key} in --data {spec!r}")


def _digit_options(opts: str, spec: str, overrides: dict) -> dict:
    kw: dict = {}
    for item in filter(None, (s.strip() for s in opts.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or key not in _DIGIT_KEYS:
            known = ", ".join(f"{k} ({v})" for k, v in _DIGIT_KEYS.items())
            raise DataError(f"unknown digits option {item!r} in --data {spec!r}; known: {known}")
        value = value.strip()
        if key == "size":
            kw["size"] = _pair(value, "x", key, spec)
        elif key == "digits":
            kw["digits_per_scene"] = _pair(value, "-", key, spec)
        elif key == "digit_size":
            kw["digit_size"] = _pair(value, "-", key, spec)
        elif key in ("max_overlap", "val_fraction"):
            try:
                kw[key] = float(value)
            except ValueError:
                raise DataError(f"bad value {value!r} for {key} in --data {spec!r}") from None
        else:
            try:
                kw[key] = int(value)
            except ValueError:
                raise DataError(f"bad value {value!r} for {key} in --data {spec!r}") from None
    kw.update(overrides)
    return kw


def parse_spec(spec: str) -> tuple[str, str]:
    """``"kind[:rest]"`` -> (kind, rest); DataError for an unknown kind."""
    spec = (spec or "digits").strip()
    kind, _, rest = spec.partition(":")
    kind = kind.strip().lower()
    if kind not in DATA_KINDS:
        raise DataError(
            f"unknown data kind {kind!r} in --data {spec!r}; use digits[:options], cityscapes:PATH, ade20k:PATH or folder:PATH"
        )
    if kind != "digits" and not rest.strip():
        raise DataError(f"--data {kind} needs a path: {kind}:/path/to/{kind}")
    return kind, rest.strip()


def open_dataset(spec: str, split: str, **kw) -> Source:
    """Open the ``split`` of the data set named by a ``--data`` spec.

    Specs: ``digits`` (the default; options as ``digits:size=64,train=2000,val=500,seed=0``,
    also ``digits=1-4``, ``digit_size=16-32``, ``clutter``, ``max_overlap``, ``val_fraction``,
    ``split_seed``), ``cityscapes:/path``, ``ade20k:/path``, ``folder:/path``. Keyword
    arguments override digits options (e.g. ``size=(32, 32)``, ``train=100``); for file
    data sets none are accepted."""
    kind, rest = parse_spec(spec)
    if kind == "digits":
        from hyctas_dsl.data.digits import open_digits

        allowed = {"size", "train", "val", "seed", "digits_per_scene", "digit_size", "clutter",
                   "max_overlap", "val_fraction", "split_seed"}
        bad = sorted(set(kw) - allowed)
        if bad:
            raise DataError(f"unknown digits option(s): {', '.join(bad)}")
        return open_digits(split, **_digit_options(rest, spec, kw))
    if kw:
        raise DataError(f"--data {kind} takes no options, got {', '.join(sorted(kw))}")
    path = Path(rest).expanduser()
    if not path.exists():
        raise DataError(f"{kind} data not found", path)
    opener = {"cityscapes": open_cityscapes, "ade20k": open_ade20k, "folder": open_folder}[kind]
    return opener(path, split)
