"""The data layer: digit scenes, real-format readers, augmentation, loaders, mIoU."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from hyctas_dsl.data import (
    CITYSCAPES_CLASSES,
    ConfusionMatrix,
    DataError,
    EvalTransform,
    TrainTransform,
    denormalize,
    digit_split,
    digits_info,
    load_source_digits,
    make_digit_scenes,
    open_dataset,
    sample_rng,
)

# ------------------------------------------------------------------------------ digit scenes


def test_scenes_are_deterministic_from_the_seed():
    a = make_digit_scenes("train", 20, (32, 48), seed=5)
    b = make_digit_scenes("train", 20, (32, 48), seed=5)
    c = make_digit_scenes("train", 20, (32, 48), seed=6)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.images, c.images)
    assert a.images.shape == (20, 32, 48, 3) and a.images.dtype == np.uint8
    assert a.labels.shape == a.instances.shape == (20, 32, 48)


def test_split_is_by_source_digit_and_disjoint():
    split = digit_split()
    _, digits = load_source_digits()
    train, val = set(split["train"].tolist()), set(split["val"].tolist())
    assert not train & val
    assert train | val == set(range(len(digits)))
    # Stratified: every digit is in both splits.
    assert set(digits[split["val"]].tolist()) == set(range(10))
    tr = make_digit_scenes("train", 200, (48, 48), seed=1).sources
    va = make_digit_scenes("val", 200, (48, 48), seed=1).sources
    used_tr, used_va = set(tr[tr >= 0].tolist()), set(va[va >= 0].tolist())
    assert used_tr <= train and used_va <= val and not used_tr & used_va
    # Another split seed gives another partition.
    assert not np.array_equal(digit_split(split_seed=1)["val"], split["val"])


def test_labels_match_instances_and_sources():
    s = make_digit_scenes("val", 50, (64, 64), seed=2)
    _, digits = load_source_digits()
    assert s.labels.max() <= 10 and s.instances.max() <= 4
    assert ((s.labels == 0) == (s.instances == 0)).all()
    seen = set()
    for i in range(len(s.images)):
        for j, src in enumerate(s.sources[i]):
            mask = s.instances[i] == j + 1
            if src < 0:
                assert not mask.any()
                continue
            assert mask.any(), "every placed digit keeps visible pixels"
            assert (s.labels[i][mask] == digits[src] + 1).all()
            seen.add(int(digits[src]))
    assert seen == set(range(10))
    info = digits_info((64, 64))
    assert info.classes[0] == "background" and info.classes[1:] == tuple("0123456789")
    assert info.colorize(s.labels[0]).shape == (64, 64, 3)


def test_digits_spec_options():
    src = open_dataset("digits:size=32x40,train=7,val=3,seed=4,digits=2-2", "train")
    assert len(src) == 7
    image, label = src.load(0)
    assert image.shape == (32, 40, 3) and label.shape == (32, 40)
    assert len(open_dataset("digits", "val", val=5, size=(16, 16))) == 5
    for bad in ("digits:size=big", "digits:colour=3", "digits:train"):
        with pytest.raises(DataError, match="digits"):
            open_dataset(bad, "train")
    with pytest.raises(DataError, match="splits"):
        open_dataset("digits", "test")


# ------------------------------------------------------------------------------ real formats


def _png(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array), mode=mode).save(path)


def _rgb(h=16, w=32, value=0):
    rng = np.random.default_rng(value)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_cityscapes_label_ids_map_to_train_ids(tmp_path):
    ids = np.zeros((16, 32), np.uint8)
    ids[0, :8] = [7, 8, 26, 33, 0, 1, 30, 34]  # road sidewalk car bicycle unlabeled ego caravan ?
    for city, n in (("aachen", 2), ("bonn", 1)):
        for k in range(n):
            stem = f"{city}_00000{k}_000019"
            _png(tmp_path / "leftImg8bit" / "train" / city / f"{stem}_leftImg8bit.png", _rgb(value=k))
            _png(tmp_path / "gtFine" / "train" / city / f"{stem}_gtFine_labelIds.png", ids)
    src = open_dataset(f"cityscapes:{tmp_path}", "train")
    assert len(src) == 3 and src.info.num_classes == 19
    assert src.info.classes[13] == "car" and src.info.palette[0] == (128, 64, 128)
    image, label = src.load(0)
    assert image.shape == (16, 32, 3) and label.dtype == np.uint8
    assert label[0, :8].tolist() == [0, 1, 13, 18, 255, 255, 255, 255]
    assert (label[1:] == 255).all()  # id 0 everywhere else
    assert "aachen_000000_000019_leftImg8bit.png" in src.name(0)
    assert CITYSCAPES_CLASSES == src.info.classes


def test_cityscapes_missing_label_file_names_the_image(tmp_path):
    img = tmp_path / "leftImg8bit" / "val" / "lindau" / "lindau_000000_000019_leftImg8bit.png"
    _png(img, _rgb())
    with pytest.raises(DataError) as err:
        open_dataset(f"cityscapes:{tmp_path}", "val")
    assert err.value.path == str(img) and "lindau_000000_000019_gtFine_labelIds.png" in str(err.value)


def test_ade20k_maps_other_to_ignore_and_rejects_values_above_150(tmp_path):
    ann = np.zeros((16, 32), np.uint8)
    ann[0, :4] = [0, 1, 2, 150]
    for stem in ("ADE_train_00000001", "ADE_train_00000002"):
        p = tmp_path / "images" / "training" / f"{stem}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_rgb()).save(p, quality=90)
        _png(tmp_path / "annotations" / "training" / f"{stem}.png", ann)
    src = open_dataset(f"ade20k:{tmp_path}", "train")
    assert len(src) == 2 and src.info.num_classes == 150 and src.info.classes[0] == "wall"
    image, label = src.load(1)
    assert image.shape == (16, 32, 3)
    assert label[0, :4].tolist() == [255, 0, 1, 149]
    bad = ann.copy()
    bad[3, 3] = 151
    _png(tmp_path / "annotations" / "training" / "ADE_train_00000002.png", bad)
    with pytest.raises(DataError) as err:
        src.load(1)
    assert err.value.path.endswith("ADE_train_00000002.png") and "151" in str(err.value)
    with pytest.raises(DataError, match="validation"):
        open_dataset(f"ade20k:{tmp_path}", "val")  # no validation folder here


def _folder(root, masks, split=None, classes=("sky", "road", "car")):
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    base = root / split if split else root
    for i, m in enumerate(masks):
        _png(base / "images" / f"img{i}.png", _rgb(*m.shape, value=i))
        _png(base / "masks" / f"img{i}.png", m)
    return root


def test_folder_format_reads_classes_and_masks(tmp_path):
    m = np.zeros((16, 32), np.uint8)
    m[:, 10:] = 1
    m[:, 20:] = 2
    m[0, 0] = 255
    root = _folder(tmp_path / "flat", [m, m])
    src = open_dataset(f"folder:{root}", "train")
    assert src.info.classes == ("sky", "road", "car") and len(src) == 2
    _, label = src.load(0)
    np.testing.assert_array_equal(label, m)
    # The per-split layout, and a palette-mode (P) mask read as its indices.
    root2 = _folder(tmp_path / "split", [m], split="val")
    p = Image.fromarray(m, mode="L").convert("P")
    p.save(root2 / "val" / "masks" / "img0.png")
    assert Image.open(root2 / "val" / "masks" / "img0.png").mode == "P"
    np.testing.assert_array_equal(open_dataset(f"folder:{root2}", "val").load(0)[1], m)
    with pytest.raises(DataError, match="images"):
        open_dataset(f"folder:{root2}", "train")


def test_folder_label_outside_class_list_is_an_error_not_a_clamp(tmp_path):
    m = np.zeros((16, 32), np.uint8)
    m[5, 5] = 3  # three classes: 0..2
    root = _folder(tmp_path, [m])
    src = open_dataset(f"folder:{root}", "train")
    with pytest.raises(DataError) as err:
        src.load(0)
    assert err.value.path == str(root / "masks" / "img0.png")
    assert "3" in str(err.value) and "class list" in str(err.value)


def test_missing_mask_corrupt_png_and_size_mismatch_name_the_file(tmp_path):
    m = np.zeros((16, 32), np.uint8)
    root = _folder(tmp_path / "a", [m, m])
    (root / "masks" / "img1.png").unlink()
    with pytest.raises(DataError) as err:
        open_dataset(f"folder:{root}", "train")
    assert err.value.path == str(root / "images" / "img1.png") and "mask" in str(err.value)

    root = _folder(tmp_path / "b", [m])
    (root / "images" / "img0.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    with pytest.raises(DataError) as err:
        open_dataset(f"folder:{root}", "train").load(0)
    assert err.value.path == str(root / "images" / "img0.png") and "cannot read" in str(err.value)

    root = _folder(tmp_path / "c", [m])
    good = (root / "masks" / "img0.png").read_bytes()
    (root / "masks" / "img0.png").write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(DataError) as err:
        open_dataset(f"folder:{root}", "train").load(0)
    assert err.value.path == str(root / "masks" / "img0.png")

    root = _folder(tmp_path / "d", [m])
    _png(root / "masks" / "img0.png", np.zeros((16, 30), np.uint8))
    with pytest.raises(DataError) as err:
        open_dataset(f"folder:{root}", "train").load(0)
    assert err.value.path == str(root / "masks" / "img0.png") and "30x16" in str(err.value)

    root = _folder(tmp_path / "e", [m])
    _png(root / "masks" / "img0.png", np.zeros((16, 32, 3), np.uint8))
    with pytest.raises(DataError, match="mode RGB"):
        open_dataset(f"folder:{root}", "train").load(0)

    (tmp_path / "f").mkdir()
    with pytest.raises(DataError, match="classes.txt"):
        open_dataset(f"folder:{tmp_path / 'f'}", "train")


def test_bad_specs_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="unknown data kind 'coco'"):
        open_dataset("coco:/x", "train")
    with pytest.raises(DataError, match="needs a path"):
        open_dataset("cityscapes", "train")
    with pytest.raises(DataError) as err:
        open_dataset(f"ade20k:{tmp_path / 'nope'}", "train")
    assert err.value.path == str(tmp_path / "nope") and "not found" in str(err.value)
    with pytest.raises(DataError, match="takes no options"):
        open_dataset(f"folder:{tmp_path}", "train", size=3)
    assert isinstance(DataError("x"), ValueError)


# ------------------------------------------------------------------------------ transforms


def _encoded_sample(h=40, w=56):
    # 8x8 blocks of classes 0..4, and the image's red channel encodes the class (x50).
    yy, xx = np.mgrid[:h, :w]
    label = (((yy // 8) * 3 + (xx // 8)) % 5).astype(np.uint8)
    label[:3, :3] = 255
    image = np.stack([label.astype(np.int64) * 50 % 256, 255 - label, np.full_like(label, 100)], -1).astype(np.uint8)
    return image, label


def test_train_augmentation_keeps_image_and_label_aligned():
    image, label = _encoded_sample()
    t = TrainTransform(crop=(32, 48), scale_range=(0.5, 2.0), hflip=True)
    flips = pads = 0
    for k in range(30):
        img, lab = t(image, label, sample_rng(0, 0, k))
        assert img.shape == (3, 32, 48) and img.dtype == np.float32
        assert lab.shape == (32, 48) and lab.dtype == np.int64
        rgb = denormalize(img).astype(np.int64)
        valid = (lab != 255) & (lab >= 0)
        # Interior pixels (whole 3x3 neighbourhood one class) keep their encoded colour.
        pad = np.pad(lab, 1, constant_values=-1)
        interior = valid.copy()
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                interior &= pad[1 + dy : 33 + dy, 1 + dx : 49 + dx] == lab
        assert interior.sum() > 50
        assert np.abs(rgb[..., 0][interior] - lab[interior] * 50 % 256).max() <= 2
        assert set(np.unique(lab)) <= {0, 1, 2, 3, 4, 255}
        # Padding: ignored labels, mean colour (zero after normalisation).
        padded = (img == 0).all(0)
        pads += int(padded.any())
        assert (lab[padded] == 255).all()
        # With the same draws, the flipping transform gives the plain one or its mirror.
        plain_img, plain_lab = TrainTransform(crop=(32, 48), scale_range=(0.5, 2.0), hflip=False)(
            image, label, sample_rng(0, 0, k)
        )
        if np.array_equal(lab, plain_lab):
            np.testing.assert_array_equal(img, plain_img)
        else:
            np.testing.assert_array_equal(lab, plain_lab[:, ::-1])
            np.testing.assert_array_equal(img, plain_img[:, :, ::-1])
            flips += 1
    assert 5 < flips < 25 and pads > 0
    # The same rng seed, the same sample.
    a = t(image, label, sample_rng(3, 1, 7))
    b = t(image, label, sample_rng(3, 1, 7))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_eval_transform_only_normalises():
    image, label = _encoded_sample()
    img, lab = EvalTransform()(image, label)
    assert img.shape == (3, 40, 56) and lab.dtype == np.int64
    np.testing.assert_array_equal(denormalize(img), image)
    np.testing.assert_array_equal(lab, label)


# ------------------------------------------------------------------------------ loaders


def _dataset(n=10, size=24, seed=0):
    from hyctas_dsl.data import SegmentationDataset

    src = open_dataset("digits", "train", train=n, size=(size, size), seed=1)
    return SegmentationDataset(src, TrainTransform.for_dataset(src.info, crop=(16, 20)), seed=seed)


def test_loader_batches_shapes_and_reproducible_order():
    import torch

    from hyctas_dsl.data import make_loader

    ds = _dataset()
    batches = list(make_loader(ds, 4, shuffle=True, seed=3, epoch=0, num_workers=0))
    assert len(batches) == 2  # 10 samples, drop_last in training
    images, labels = batches[0]
    assert images.shape == (4, 3, 16, 20) and images.dtype == torch.float32
    assert labels.shape == (4, 16, 20) and labels.dtype == torch.int64
    assert set(labels.unique().tolist()) <= set(range(11)) | {255}
    # Worker processes give the same batches as the main process.
    with_workers = list(make_loader(ds, 4, shuffle=True, seed=3, epoch=0, num_workers=2))
    for (a, b), (c, d) in zip(batches, with_workers):
        assert torch.equal(a, c) and torch.equal(b, d)
    other_epoch = list(make_loader(ds, 4, shuffle=True, seed=3, epoch=1, num_workers=0))
    assert not torch.equal(other_epoch[0][0], batches[0][0])
    evals = list(make_loader(ds, 4, shuffle=False, num_workers=0))
    assert [len(b[0]) for b in evals] == [4, 4, 2]


def test_distributed_ranks_split_the_global_batch():
    import torch

    from hyctas_dsl.data import make_loader

    ds = _dataset(n=12)
    single = list(make_loader(ds, 4, shuffle=True, seed=0, epoch=2, num_workers=0))
    ranks = [list(make_loader(ds, 2, shuffle=True, seed=0, epoch=2, num_workers=0, distributed=True, rank=r, world=2)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == len(single) == 3
    for k, (img, lab) in enumerate(single):
        r0, r1 = ranks[0][k], ranks[1][k]
        # DistributedSampler deals the permutation round-robin: rank r takes r, r + 2, ...
        assert torch.equal(img, torch.stack([r0[0][0], r1[0][0], r0[0][1], r1[0][1]]))
        assert torch.equal(lab, torch.stack([r0[1][0], r1[1][0], r0[1][1], r1[1][1]]))
    # Evaluation: every sample exactly once over the ranks, no padding.
    ev = [sum(len(b[0]) for b in make_loader(ds, 5, distributed=True, rank=r, world=2, num_workers=0)) for r in (0, 1)]
    assert ev == [6, 6]
    ds7 = _dataset(n=7)
    assert sum(sum(len(b[0]) for b in make_loader(ds7, 5, distributed=True, rank=r, world=2, num_workers=0)) for r in (0, 1)) == 7


def test_variable_size_batches_are_padded_with_ignore(tmp_path):
    from hyctas_dsl.data import SegmentationDataset, make_loader

    root = _folder(tmp_path, [np.ones((16, 32), np.uint8), np.ones((20, 24), np.uint8)])
    ds = SegmentationDataset(open_dataset(f"folder:{root}", "val"))
    ((images, labels),) = list(make_loader(ds, 2, num_workers=0))
    assert images.shape == (2, 3, 20, 32) and labels.shape == (2, 20, 32)
    assert (labels[0, 16:] == 255).all() and (labels[0, :16] == 1).all()
    assert (labels[1, :, 24:] == 255).all() and (images[1, :, :, 24:] == 0).all()


# ------------------------------------------------------------------------------ metrics


def test_miou_on_a_hand_computed_example():
    import torch

    target = np.array([0, 0, 1, 1, 2, 255, 1])
    pred = np.array([0, 1, 1, 1, 0, 2, 2])
    cm = ConfusionMatrix(4).update(pred, target)
    # rows = ground truth, columns = prediction; the ignored pixel is not counted.
    assert cm.matrix.tolist() == [[1, 1, 0, 0], [0, 2, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    iou = cm.iou()
    # class 0: 1 / (2 + 2 - 1); class 1: 2 / (3 + 3 - 2); class 2: 0 / (1 + 1 - 0); class 3 absent.
    np.testing.assert_allclose(iou[:3], [1 / 3, 1 / 2, 0.0])
    assert np.isnan(iou[3])
    assert cm.miou() == pytest.approx((1 / 3 + 1 / 2 + 0) / 3)
    assert cm.pixel_accuracy() == pytest.approx(3 / 6)
    t = ConfusionMatrix(4).update(torch.tensor(pred).view(1, 7), torch.tensor(target).view(1, 7))
    assert t.matrix.tolist() == cm.matrix.tolist()
    assert ConfusionMatrix(4).merge(cm).merge(t).matrix.sum() == 12
    s = cm.summary(["a", "b", "c", "d"])
    assert s["iou"]["d"] is None and s["iou"]["b"] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        cm.update(np.array([4]), np.array([0]))


def test_front_end_imports_without_torch_or_the_data_package():
    code = (
        "import sys, hyctas_dsl; assert 'hyctas_dsl.data' not in sys.modules;"
        "import hyctas_dsl.data; assert 'torch' not in sys.modules and 'sklearn' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bootstrap_miou_sd_measures_validation_noise():
    import numpy as np

    from hyctas_dsl.data.metrics import bootstrap_miou_sd, miou_of

    rng = np.random.default_rng(0)
    # identical images: resampling cannot move the score
    same = np.tile(np.array([[50, 5], [5, 40]]), (30, 1, 1))
    assert bootstrap_miou_sd(same) < 1e-12
    # images that disagree: noise, and it shrinks like 1/sqrt(n) with more images
    def varied(n):
        good = rng.integers(0, 20, size=n)
        m = np.zeros((n, 2, 2), np.int64)
        m[:, 0, 0], m[:, 1, 1], m[:, 0, 1] = 50, good, 20 - good
        return m
    small, large = bootstrap_miou_sd(varied(25)), bootstrap_miou_sd(varied(400))
    assert small > 0 and 2.5 < small / large < 6.5
    assert miou_of(np.array([[3, 1], [0, 0]])) == (3 / 4 + 0 / 1) / 2
