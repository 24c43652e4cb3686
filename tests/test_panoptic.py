"""Panoptic segmentation: targets, post-processing, PQ on hand-computed cases, readers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from hyctas_dsl.data import DataError
from hyctas_dsl.data.panoptic import (
    CITYSCAPES_THINGS,
    INSTANCE_STRIDE,
    VOID,
    decode_pan,
    encode_pan,
    open_cityscapes_panoptic,
    open_coco_panoptic,
    open_digits_panoptic,
    open_panoptic_dataset,
)
from hyctas_dsl.jobs.panoptic import (
    PanopticQuality,
    PostProcess,
    find_centers,
    merge_semantic_and_instance,
    panoptic_loss,
    panoptic_targets,
    post_process,
)


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


def pan_of(sem, inst=None) -> torch.Tensor:
    sem = np.asarray(sem)
    inst = np.zeros_like(sem) if inst is None else np.asarray(inst)
    return torch.from_numpy(encode_pan(sem, inst)).long()


# ------------------------------------------------------------------------------ targets


def test_targets_from_synthetic_instances():
    sem = np.zeros((40, 50), np.int64)
    inst = np.zeros_like(sem)
    sem[4:10, 6:12], inst[4:10, 6:12] = 1, 1  # 6x6, centre (6.5, 8.5)
    sem[20:30, 30:40], inst[20:30, 30:40] = 2, 2  # 10x10, centre (24.5, 34.5)
    sem[0:2, :] = VOID
    t = panoptic_targets(pan_of(sem, inst), things=(1, 2), sigma=3.0, small_area=50, small_weight=3.0)
    # offsets point from every instance pixel to its centre of mass
    assert t.offset[0, 0, 4, 6] == pytest.approx(2.5) and t.offset[0, 1, 4, 6] == pytest.approx(2.5)
    assert t.offset[0, 0, 29, 39] == pytest.approx(-4.5) and t.offset[0, 1, 29, 39] == pytest.approx(-4.5)
    assert t.offset[0, :, 15, 15].abs().sum() == 0
    assert t.offset_weight[0, 0].sum() == 36 + 100
    # the heatmap peaks (1) at the rounded centres and is a Gaussian of sigma 3 around them
    c = t.center[0, 0]
    assert c.max() == 1.0
    assert c[24, 34] == 1.0 and c[6, 8] == 1.0
    assert c[24, 37] == pytest.approx(math.exp(-9 / 18))
    assert c[39, 0] == 0
    # void pixels take no part in the centre loss; small instances weigh more
    assert t.center_weight[0, 0, 0:2].sum() == 0 and t.center_weight[0, 0, 2:].min() == 1
    assert t.semantic_weight[0, 5, 7] == 3.0 and t.semantic_weight[0, 25, 35] == 1.0
    assert t.semantic_weight[0, 15, 15] == 1.0
    assert t.semantic[0, 0, 0] == VOID and t.semantic[0, 25, 35] == 2


def test_crowd_and_stuff_get_no_centre():
    sem = np.zeros((20, 20), np.int64)
    sem[2:8, 2:8] = 1  # a thing class without instance: crowd
    t = panoptic_targets(pan_of(sem), things=(1,))
    assert t.center.sum() == 0 and t.offset_weight.sum() == 0


def test_loss_is_zero_for_perfect_heads_and_weights_its_parts():
    sem = np.zeros((16, 16), np.int64)
    inst = np.zeros_like(sem)
    sem[3:9, 3:9], inst[3:9, 3:9] = 1, 1
    t = panoptic_targets(pan_of(sem, inst), things=(1,), sigma=2.0)
    logits = torch.nn.functional.one_hot(t.semantic, 2).permute(0, 3, 1, 2).float() * 50
    loss, parts = panoptic_loss((logits, t.center, t.offset), t)
    assert float(loss) < 1e-6
    loss2, parts2 = panoptic_loss((logits, t.center + 0.1, t.offset + 1.0), t, center_weight=200, offset_weight=0.01)
    assert parts2["center"] == pytest.approx(0.01, rel=1e-4) and parts2["offset"] == pytest.approx(2.0)
    assert float(loss2) == pytest.approx(200 * 0.01 + 0.01 * 2.0 + parts2["semantic"], rel=1e-4)


# ------------------------------------------------------------------------------ post-processing


def test_centres_by_max_pool_nms_threshold_and_top_k():
    heat = torch.zeros(1, 30, 30)
    heat[0, 5, 5], heat[0, 6, 6] = 0.9, 0.8  # the weaker one is suppressed by NMS (kernel 7)
    heat[0, 20, 20] = 0.5
    heat[0, 25, 5] = 0.05  # below the threshold
    assert find_centers(heat).tolist() == [[5, 5], [20, 20]]
    assert find_centers(heat, nms_kernel=1).tolist() == [[5, 5], [6, 6], [20, 20]]
    assert find_centers(heat, top_k=1).tolist() == [[5, 5]]
    assert find_centers(heat, threshold=0.95).shape == (0, 2)


def test_post_processing_recovers_known_instances():
    # three instances: two of class 1 that touch, one of class 2; class 0 stuff
    sem = np.zeros((48, 64), np.int64)
    inst = np.zeros_like(sem)
    sem[5:20, 5:20], inst[5:20, 5:20] = 1, 1
    sem[5:20, 20:35], inst[5:20, 20:35] = 1, 2
    sem[30:45, 40:60], inst[30:45, 40:60] = 2, 3
    gt = pan_of(sem, inst)
    t = panoptic_targets(gt, things=(1, 2), sigma=4.0)
    logits = torch.nn.functional.one_hot(t.semantic, 3).permute(0, 3, 1, 2).float()
    pred = post_process(logits, t.center, t.offset, things=(1, 2), params=PostProcess(stuff_area=10))
    # the same segments up to renumbering of instances
    ps, pi = decode_pan(pred[0].numpy())
    assert (ps == sem).all()
    for k in (1, 2, 3):
        ids = np.unique(pi[inst == k])
        assert len(ids) == 1 and ids[0] > 0
    assert len(np.unique(pi[inst > 0])) == 3
    pq = PanopticQuality(3, (1, 2)).update(gt[None], pred).result()
    assert pq.all["pq"] == pytest.approx(1.0)
    # noisy semantics inside an instance: the majority vote decides its class
    logits2 = logits.clone()
    logits2[0, :, 32:34, 42:44] = torch.tensor([0.0, 1.0, 0.0])[:, None, None]
    pred2 = post_process(logits2, t.center, t.offset, things=(1, 2), params=PostProcess(stuff_area=10))
    assert (pred2[0][30:45, 40:60] % INSTANCE_STRIDE == 2).all()


def test_merge_area_thresholds_and_no_centres():
    sem = torch.zeros(10, 10, dtype=torch.long)
    sem[0:2, 0:2] = 2  # a small stuff region of class 2 (4 px)
    sem[5:10, 5:10] = 1  # thing pixels
    ins = torch.zeros_like(sem)
    pan = merge_semantic_and_instance(sem, ins, things=(1,), num_classes=3, stuff_area=5)
    assert (pan[0:2, 0:2] == VOID).all()  # below the stuff area
    assert (pan[5:10, 5:10] == VOID).all()  # thing pixels with no instance are void
    assert (pan[3, :] == 0).all()
    ins[5:10, 5:10] = 1
    ins[9, 9] = 2  # a one-pixel instance, dropped by thing_area
    pan = merge_semantic_and_instance(sem, ins, things=(1,), num_classes=3, stuff_area=4, thing_area=2)
    assert (pan[0:2, 0:2] == 2).all()
    assert pan[5, 5] == 1 + INSTANCE_STRIDE and pan[9, 9] == VOID


# ------------------------------------------------------------------------------ PQ


def _pq(gt, pred, things=(1, 2), n=4):
    return PanopticQuality(n, things).update(gt, pred).result()


def test_pq_unmatched_prediction_and_absent_classes():
    sem = np.zeros((4, 4), np.int64)
    inst = np.zeros_like(sem)
    sem[0:2, 0:2], inst[0:2, 0:2] = 1, 1
    gt = pan_of(sem, inst)
    psem, pinst = sem.copy(), inst.copy()
    psem[2:4, 2:4], pinst[2:4, 2:4] = 1, 2  # an extra instance: a false positive
    r = _pq(gt, pan_of(psem, pinst))
    one = r.per_class[1]
    assert (one["tp"], one["fp"], one["fn"]) == (1, 1, 0)
    assert one["pq"] == pytest.approx(2 / 3) and one["sq"] == pytest.approx(1) and one["rq"] == pytest.approx(2 / 3)
    bg = r.per_class[0]  # 12 px vs 8 px, IoU 2/3: a match
    assert bg["tp"] == 1 and bg["pq"] == pytest.approx(2 / 3)
    assert r.all["pq"] == pytest.approx(2 / 3) and r.all["n"] == 2
    assert r.things["pq"] == pytest.approx(2 / 3) and r.stuff["pq"] == pytest.approx(2 / 3)
    # classes 2 (thing) and 3 (stuff) are absent from both: no PQ, not averaged
    assert math.isnan(r.per_class[2]["pq"]) and math.isnan(r.per_class[3]["pq"])
    assert r.things["n"] == 1 and r.stuff["n"] == 1


def test_pq_void_pixels_leave_the_union():
    sem = np.zeros((4, 4), np.int64)
    inst = np.zeros_like(sem)
    sem[0:2, 0:2], inst[0:2, 0:2] = 1, 1
    sem[0:2, 2:4] = VOID
    psem, pinst = np.zeros_like(sem), np.zeros_like(sem)
    psem[0:2, :], pinst[0:2, :] = 1, 1  # covers the instance and the void next to it
    r = _pq(pan_of(sem, inst), pan_of(psem, pinst))
    # without the void rule the IoU would be 4/8 = 0.5 (no match); with it, 4/4
    assert r.per_class[1]["tp"] == 1 and r.per_class[1]["sq"] == pytest.approx(1.0)
    assert r.all["pq"] == pytest.approx(1.0)


def test_pq_prediction_mostly_on_void_or_crowd_is_no_false_positive():
    sem = np.zeros((4, 4), np.int64)
    sem[2:4, 2:4] = VOID
    psem, pinst = np.zeros_like(sem), np.zeros_like(sem)
    psem[2:4, 2:4], pinst[2:4, 2:4] = 1, 1
    r = _pq(pan_of(sem), pan_of(psem, pinst))
    assert (r.per_class[1]["tp"], r.per_class[1]["fp"], r.per_class[1]["fn"]) == (0, 0, 0)
    assert r.all["pq"] == pytest.approx(1.0) and r.all["n"] == 1
    # a crowd region (class 1, no instance): not a false negative; a prediction on it is not a false positive
    sem2 = np.zeros((4, 4), np.int64)
    sem2[0:2, 0:2] = 1
    r = _pq(pan_of(sem2), pan_of(psem[::-1, ::-1].copy(), pinst[::-1, ::-1].copy()))
    assert (r.per_class[1]["tp"], r.per_class[1]["fp"], r.per_class[1]["fn"]) == (0, 0, 0)
    # but a prediction of another class on the crowd region is a false positive
    r = _pq(pan_of(sem2), pan_of(np.where(sem2 == 1, 2, 0), pinst[::-1, ::-1].copy()))
    assert r.per_class[2]["fp"] == 1 and r.per_class[0]["tp"] == 1


def test_pq_iou_of_exactly_one_half_is_no_match():
    sem = np.zeros((4, 4), np.int64)
    inst = np.zeros_like(sem)
    sem[0:2, 0:2], inst[0:2, 0:2] = 1, 1
    psem, pinst = np.zeros_like(sem), np.zeros_like(sem)
    psem[0:2, 0:1], pinst[0:2, 0:1] = 1, 1  # 2 of the 4 pixels
    r = _pq(pan_of(sem, inst), pan_of(psem, pinst))
    assert (r.per_class[1]["tp"], r.per_class[1]["fp"], r.per_class[1]["fn"]) == (0, 1, 1)
    assert r.per_class[1]["pq"] == 0.0
    # accumulation over images: the counts add up
    q = PanopticQuality(4, (1, 2))
    q.update(pan_of(sem, inst), pan_of(psem, pinst)).update(pan_of(sem, inst), pan_of(sem, inst))
    assert (int(q.tp[1]), int(q.fp[1]), int(q.fn[1])) == (1, 1, 1)
    assert q.result().per_class[1]["pq"] == pytest.approx(1 / 2)


# ------------------------------------------------------------------------------ readers


def test_digits_panoptic_source():
    src = open_digits_panoptic("val", "digits:size=32,val=4")
    image, pan = src.load_panoptic(0)
    sem, inst = decode_pan(pan)
    scenes = src.source.scenes
    assert (sem == scenes.labels[0]).all() and (inst == scenes.instances[0]).all()
    assert src.things == tuple(range(1, 11))
    assert (src.load(0)[1] == scenes.labels[0]).all()
    with pytest.raises(DataError, match="no panoptic reader"):
        open_panoptic_dataset("ade20k:/x", "val")


def _write_cityscapes(root, ids: np.ndarray):
    (root / "leftImg8bit/val/aachen").mkdir(parents=True)
    (root / "gtFine/val/aachen").mkdir(parents=True)
    Image.fromarray(np.zeros(ids.shape + (3,), np.uint8)).save(root / "leftImg8bit/val/aachen/a_000000_000019_leftImg8bit.png")
    Image.fromarray(ids.astype(np.uint16)).save(root / "gtFine/val/aachen/a_000000_000019_gtFine_instanceIds.png")


def test_cityscapes_instance_ids(tmp_path):
    ids = np.full((8, 12), 7, np.int64)  # road
    ids[0:4, 0:4] = 26000  # car instance 0
    ids[0:4, 4:8] = 26001  # car instance 1
    ids[4:8, 0:4] = 24  # person, no instance id: a crowd region
    ids[4:8, 8:12] = 0  # unlabeled: void
    _write_cityscapes(tmp_path, ids)
    src = open_panoptic_dataset(f"cityscapes:{tmp_path}", "val")
    _, pan = src.load_panoptic(0)
    sem, inst = decode_pan(pan)
    car, person, road = 13, 11, 0
    assert (sem[0:4, 0:8] == car).all() and (inst[0:4, 0:4] == 1).all() and (inst[0:4, 4:8] == 2).all()
    assert (sem[4:8, 0:4] == person).all() and (inst[4:8, 0:4] == 0).all()
    assert (sem[4:8, 4:8] == road).all() and (sem[4:8, 8:12] == VOID).all()
    assert set(CITYSCAPES_THINGS) == set(range(11, 19))
    # a fault names the file
    (tmp_path / "gtFine/val/aachen/a_000000_000019_gtFine_instanceIds.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="instanceIds.png"):
        src.load_panoptic(0)


def _write_coco(root, ids: np.ndarray, segments, categories=None):
    (root / "annotations/panoptic_val2017").mkdir(parents=True)
    (root / "val2017").mkdir()
    Image.fromarray(np.zeros(ids.shape + (3,), np.uint8)).save(root / "val2017/000000000001.jpg")
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
    Image.fromarray(rgb).save(root / "annotations/panoptic_val2017/000000000001.png")
    cats = categories or [{"id": 1, "name": "person", "isthing": 1}, {"id": 92, "name": "banner", "isthing": 0}]
    data = {"images": [{"id": 1, "file_name": "000000000001.jpg"}],
            "annotations": [{"image_id": 1, "file_name": "000000000001.png", "segments_info": segments}],
            "categories": cats}
    (root / "annotations/panoptic_val2017.json").write_text(json.dumps(data))


def test_coco_panoptic_rgb_ids_segments_and_crowd(tmp_path):
    ids = np.zeros((6, 6), np.int64)  # 0: void
    ids[0:3, 0:3] = 300  # person (R=44, G=1)
    ids[0:3, 3:6] = 70000  # person, crowd (uses the B channel)
    ids[3:6, :] = 5  # banner (stuff)
    segs = [{"id": 300, "category_id": 1, "iscrowd": 0}, {"id": 70000, "category_id": 1, "iscrowd": 1},
            {"id": 5, "category_id": 92, "iscrowd": 0}]
    _write_coco(tmp_path, ids, segs)
    src = open_coco_panoptic(tmp_path, "val")
    assert src.info.classes == ("person", "banner") and src.things == (0,)
    _, pan = src.load_panoptic(0)
    sem, inst = decode_pan(pan)
    assert (sem[0:3, 0:3] == 0).all() and (inst[0:3, 0:3] == 1).all()
    assert (sem[0:3, 3:6] == 0).all() and (inst[0:3, 3:6] == 0).all()  # crowd: no instance
    assert (sem[3:6] == 1).all() and (inst[3:6] == 0).all()


def test_coco_panoptic_faults_name_the_file(tmp_path):
    ids = np.zeros((4, 4), np.int64)
    ids[0:2] = 7
    _write_coco(tmp_path, ids, [])  # segment 7 is not in segments_info
    src = open_coco_panoptic(tmp_path, "val")
    with pytest.raises(DataError, match=r"000000000001\.png.*segment id\(s\) 7"):
        src.load_panoptic(0)
    (tmp_path / "annotations/panoptic_val2017.json").write_text("{not json")
    with pytest.raises(DataError, match="panoptic_val2017.json"):
        open_coco_panoptic(tmp_path, "val")
    (tmp_path / "annotations/panoptic_val2017.json").write_text(json.dumps(
        {"images": [{"id": 1, "file_name": "000000000001.jpg"}], "categories": [{"id": 1, "name": "a", "isthing": 1}],
         "annotations": [{"image_id": 1, "file_name": "000000000001.png",
                          "segments_info": [{"id": 7, "category_id": 3, "iscrowd": 0}]}]}))
    with pytest.raises(DataError, match="panoptic_val2017.json.*category 3"):
        open_coco_panoptic(tmp_path, "val")
    (tmp_path / "annotations/panoptic_val2017/000000000001.png").unlink()
    (tmp_path / "annotations/panoptic_val2017.json").write_text(json.dumps(
        {"images": [{"id": 1, "file_name": "000000000001.jpg"}], "categories": [{"id": 1, "name": "a", "isthing": 1}],
         "annotations": [{"image_id": 1, "file_name": "000000000001.png", "segments_info": []}]}))
    with pytest.raises(DataError, match="000000000001.png"):
        open_coco_panoptic(tmp_path, "val")


# ------------------------------------------------------------------------------ compiler


@pytest.fixture(scope="module")
def panoptic_parts():
    from hyctas_dsl.compiler import Supernet, export
    from tests.test_compiler_ops import random_arch, small_space

    for seed in range(100):  # two branches, output stride 4: the head's every path
        a = random_arch(seed)
        if len(a.branches) >= 2 and a.head.output_stride == 4:
            break
    arch = a.model_copy(update={"task": "panoptic"})
    torch.manual_seed(0)
    sn = Supernet(small_space().model_copy(update={"task": "panoptic"}), classes=4)
    for mod in sn.modules():  # non-trivial BN statistics, so that a lost buffer shows
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 1.5)
    sn.eval()
    return arch, sn, export(arch, sn).eval()


X = torch.randn(1, 3, 40, 72, generator=torch.Generator().manual_seed(0))


def _close(a, b, tol=1e-5):
    assert len(a) == len(b) == 3
    for p, q in zip(a, b):
        assert p.shape == q.shape and float((p - q).abs().max()) < tol


def test_panoptic_view_equals_standalone_export_and_torchscript(panoptic_parts):
    arch, sn, model = panoptic_parts
    view = sn.subnet(arch).eval()
    with torch.no_grad():
        ref = model(X)
        _close(view(X), ref)
        _close(torch.jit.script(model)(X), ref)
    logits, center, offset = ref
    assert logits.shape == (1, 4, 40, 72) and center.shape == (1, 1, 40, 72) and offset.shape == (1, 2, 40, 72)
    # the view trains the supernet's own instance branches (shared weights)
    view.train()
    sum(t.sum() for t in view(torch.randn(2, 3, 32, 32))).backward()
    from hyctas_dsl.compiler.lower import head_key

    key = head_key(tuple(arch.head.strides), arch.head.output_stride)
    assert sn.module_for("head", key).center[1].weight.grad is not None


def test_panoptic_exports_onnx_model_py_safetensors(tmp_path):
    from hyctas_dsl.language.api import loads
    from hyctas_dsl.compiler.artifacts import run_artifact, write_artifact
    from hyctas_dsl.compiler import export

    # the smallest panoptic net (one cell): the exporters' cost grows with the graph, and the
    # head is what is new here (the bigger arch is checked against its view above)
    arch = loads(TINY_PANOPTIC.replace("layers 2\n  head (8, 16)", "layers 2\n  head (8)").split("  branch lo")[0] + "}\n"
                 ).archs[0].model_copy(update={"task": "panoptic"})
    torch.manual_seed(0)
    model = export(arch, classes=4)
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 1.5)
    model.eval()
    with torch.no_grad():
        ref = model(X)
    for name, fmt in (("m.pt", "torchscript"), ("m.safetensors", "safetensors"), ("model.py", "python"), ("m.onnx", "onnx")):
        write_artifact(tmp_path / name, arch, model, None, (40, 72), 4)
        with torch.no_grad():
            _close(run_artifact(tmp_path / name, fmt, X), ref, 1e-4)
    import onnxruntime as ort

    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["logits", "center", "offset"]


def test_panoptic_cost_counts_the_branches_and_semantic_supernet_refuses(panoptic_parts):
    from hyctas_dsl.compiler import Supernet, lower
    from hyctas_dsl.model.cost import arch_cost
    from hyctas_dsl.language.errors import HyctasError
    from tests.test_compiler_ops import small_space

    arch, sn, model = panoptic_parts
    rows = {r.node: r.cost.params for r in arch_cost(arch, (64, 64), 4).rows}
    for n in lower(arch, 4).nodes:
        assert sum(p.numel() for p in getattr(model, n.attr).parameters()) == rows[n.node], n.node
    semantic = arch.model_copy(update={"task": "semantic"})
    extra = arch_cost(arch, (64, 64), 4).total.params - arch_cost(semantic, (64, 64), 4).total.params
    c_s = 8 * arch.filters
    assert extra == 2 * (9 * c_s * 32 + 64) + (32 + 1) + (64 + 2)
    with pytest.raises(HyctasError, match="HY410"):
        Supernet(small_space(), classes=4).subnet(arch)
    # a semantic arch runs on a panoptic supernet: its semantic part
    with torch.no_grad():
        out = sn.subnet(semantic).eval()(X)
    assert isinstance(out, torch.Tensor) and out.shape == (1, 4, 40, 72)


# ------------------------------------------------------------------------------ train / eval / bench

TINY_PANOPTIC = """hyctas 1

space tiny_space {
  filters 4
  layers 2
  strides 8 16
  ops conv zconv
  widths 12
  branch_prior 0.5 0.5
  heads (8) (8, 16)
  output_strides 4
}

arch tiny {
  filters 4
  layers 2
  head (8, 16) output_stride 4
  branch hi {
    1 conv w12
    2 conv w12
  }
  branch lo {
    1 conv w12
    2 zconv w12 down
  }
}
"""


def _cli():
    import typer

    from hyctas_dsl.commands import bench as bench_cmd
    from hyctas_dsl.commands import eval as eval_cmd
    from hyctas_dsl.commands import train as train_cmd

    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        pass

    for m in (train_cmd, eval_cmd, bench_cmd):
        m.register(app)
    return app


def test_train_eval_bench_a_panoptic_model(tmp_path):
    from typer.testing import CliRunner

    arch = tmp_path / "tiny.hy"
    arch.write_text(TINY_PANOPTIC)
    app = _cli()
    data = "digits:size=32,train=16,val=8"
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        r = CliRunner().invoke(app, ["train", str(arch), "--task", "panoptic", "--data", data, "--steps", "3", "--batch", "4",
                                     "--out", str(tmp_path / "run"), "--eval-images", "8", "-q"])
        assert r.exit_code == 0, r.output
        assert "val PQ" in r.output
        log = [json.loads(line) for line in (tmp_path / "run/log.jsonl").read_text().splitlines()]
        assert "instance_loss" in log[0] and 0 <= log[-1]["val_pq"] <= 1
        # the weights are a panoptic network: eval with --task panoptic prints the PQ table
        r = CliRunner().invoke(app, ["eval", str(arch), "--task", "panoptic", "--weights", str(tmp_path / "run"),
                                     "--data", data, "--out", str(tmp_path / "ev"), "--samples", "2", "-q"])
        assert r.exit_code == 0, r.output
        assert "things" in r.output and "stuff" in r.output and "mIoU" in r.output
        assert "layout: channels-last" in r.output  # the CPU default, where it is faster
        saved = json.loads((tmp_path / "ev/eval.json").read_text())
        assert len(saved["per_class"]) == 11 and saved["images"] == 8
        # post-processing options: a stuff area beyond the image leaves no stuff segment
        r = CliRunner().invoke(app, ["eval", str(arch), "--task", "panoptic", "--weights", str(tmp_path / "run"),
                                     "--data", data, "--stuff-area", "5000", "--center-threshold", "0.2", "--out",
                                     str(tmp_path / "ev2"), "--samples", "0", "-q"])
        assert r.exit_code == 0, r.output
        saved2 = json.loads((tmp_path / "ev2/eval.json").read_text())
        assert saved2["post_process"]["stuff_area"] == 5000 and saved2["post_process"]["threshold"] == 0.2
        assert saved2["per_class"][0]["tp"] == 0
        assert (tmp_path / "ev/predictions.png").stat().st_size > 0
        # without --task the semantic arch does not match the panoptic weights: one line, exit 2
        r = CliRunner().invoke(app, ["eval", str(arch), "--weights", str(tmp_path / "run"), "--data", data, "-q"])
        assert r.exit_code == 2 and "belong to arch" in r.output
        r = CliRunner().invoke(app, ["bench", str(arch), "--task", "panoptic", "--input", "64x64", "--seconds", "0.2",
                                     "--warmup", "0"])
        assert r.exit_code == 0, r.output
        assert "post-processing" in r.output and "network + post-processing" in r.output
        assert "channels-last" in r.output
        r = CliRunner().invoke(app, ["bench", str(arch), "--task", "panoptic", "--input", "64x64", "--seconds", "0.2",
                                     "--warmup", "0", "--contiguous"])
        assert r.exit_code == 0 and "channels-last" not in r.output, r.output
        r = CliRunner().invoke(app, ["train", str(arch), "--task", "instance", "--steps", "1"])
        assert r.exit_code == 2 and "--task must be one of" in r.output
    finally:
        torch.set_num_threads(n)


def test_supernet_and_search_optimise_pq(tmp_path):
    from hyctas_dsl.jobs.config import ConfigError, SearchConfig, SupernetConfig
    from hyctas_dsl.jobs.search import search
    from hyctas_dsl.jobs.supernet_training import train_supernet

    space = TINY_PANOPTIC.split("arch tiny")[0].replace("output_strides 4\n", "output_strides 4\n  task panoptic\n")
    (tmp_path / "space.hy").write_text(space)
    data = "digits:size=32,train=16,val=8"
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_supernet(SupernetConfig(space=str(tmp_path / "space.hy"), data=data, steps=2, batch=4, procs=1, out=str(tmp_path / "sn")),
                       progress=False)
        cfg = SearchConfig(supernet=str(tmp_path / "sn"), data=data, metric="pq", branches=[1], population=2, generations=1,
                           bn_images=4, val_images=8, objective="params", out=str(tmp_path / "search"))
        res = search(cfg, progress=False)
        assert res.evaluated == 2 and res.files
        text = res.files[0].read_text()
        assert "task panoptic" in text and "    pq " in text and 'metric "pq"' in text
        header = (tmp_path / "search/candidates.csv").read_text().splitlines()[0].split(",")
        assert "pq" in header and "miou" in header
        # PQ needs a panoptic supernet
        (tmp_path / "semantic.hy").write_text(space.replace("  task panoptic\n", ""))
        train_supernet(SupernetConfig(space=str(tmp_path / "semantic.hy"), data=data, steps=1, batch=4, procs=1,
                                      out=str(tmp_path / "sn2")), progress=False)
        with pytest.raises(ConfigError, match="needs a panoptic supernet"):
            search(cfg.model_copy(update={"supernet": str(tmp_path / "sn2"), "out": str(tmp_path / "s2")}), progress=False)
    finally:
        torch.set_num_threads(n)


# ------------------------------------------------------------------------------ language


def test_task_round_trips_and_is_canonical():
    import hyctas_dsl as hy
    from hyctas_dsl.language.api import canonical_key
    from hyctas_dsl.language.validate import check_module

    text = TINY_PANOPTIC.replace("output_strides 4\n", "output_strides 4\n  task panoptic\n").replace(
        "output_stride 4\n", "output_stride 4\n  task panoptic\n")
    module = hy.loads(text)
    space, arch = module.spaces[0], module.archs[0]
    assert space.task == arch.task == "panoptic"
    assert hy.dumps(module) == text  # canonical as written: `task` right after the head / output strides
    assert canonical_key(arch).endswith("| panoptic")
    # `task semantic` is the default: accepted, not written back
    sem = hy.loads(TINY_PANOPTIC.replace("output_stride 4\n", "output_stride 4\n  task semantic\n"))
    assert sem.archs[0].task == "semantic" and hy.dumps(sem) == TINY_PANOPTIC
    # an unknown task in a space is HY301 (in an arch HY215, tests/test_language_rules.py)
    bad = hy.parse(TINY_PANOPTIC.replace("output_strides 4\n", "output_strides 4\n  task instance\n"))
    assert [d.code for d in check_module(bad)] == ["HY301"]
    # the search's genome keeps the space's task
    from hyctas_dsl.search.genome import sample_arch
    import numpy as np

    assert sample_arch(space, np.random.default_rng(0)).task == "panoptic"


def test_cityscapes_panoptic_json_of_cityscapes_scripts(tmp_path):
    name = "frankfurt_000000_000294"
    (tmp_path / "leftImg8bit/val/frankfurt").mkdir(parents=True)
    (tmp_path / "gtFine/cityscapes_panoptic_val").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(tmp_path / f"leftImg8bit/val/frankfurt/{name}_leftImg8bit.png")
    ids = np.zeros((4, 6), np.int64)
    ids[:, :3] = 7  # road (label id 7), stuff
    ids[:, 3:] = 26003  # a car instance
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / f"gtFine/cityscapes_panoptic_val/{name}_gtFine_panoptic.png")
    data = {"images": [{"id": name, "file_name": f"{name}_leftImg8bit.png"}],
            "annotations": [{"image_id": name, "file_name": f"{name}_gtFine_panoptic.png",
                             "segments_info": [{"id": 7, "category_id": 7, "iscrowd": 0},
                                               {"id": 26003, "category_id": 26, "iscrowd": 0}]}],
            "categories": [{"id": 7, "name": "road", "isthing": 0}, {"id": 26, "name": "car", "isthing": 1}]}
    (tmp_path / "gtFine/cityscapes_panoptic_val.json").write_text(json.dumps(data))
    src = open_panoptic_dataset(f"cityscapes:{tmp_path}", "val")
    assert src.info.classes[13] == "car" and len(src.info.classes) == 19
    sem, inst = decode_pan(src.load_panoptic(0)[1])
    assert (sem[:, :3] == 0).all() and (inst[:, :3] == 0).all()
    assert (sem[:, 3:] == 13).all() and (inst[:, 3:] == 1).all()


def test_panoptic_eval_in_either_layout_scores_the_same():
    from hyctas_dsl.compiler import export
    from hyctas_dsl.jobs.panoptic_eval import evaluate_panoptic, make_panoptic_datasets
    import hyctas_dsl as hy

    torch.manual_seed(0)
    from hyctas_dsl.cli_support import with_task

    arch = with_task(hy.parse(TINY_PANOPTIC).archs[0], "panoptic")
    _train, val = make_panoptic_datasets("digits:size=32,train=8,val=8")
    model = export(arch, classes=val.info.num_classes)
    a = evaluate_panoptic(model, val, val.source.things, channels_last=False)
    b = evaluate_panoptic(model, val, val.source.things, channels_last=True)
    assert next(model.parameters()).is_contiguous(memory_format=torch.channels_last) or \
        all(p.dim() != 4 for p in model.parameters())
    # the same network: at most a pixel's arg-max may flip where two logits tie within the
    # layouts' float rounding
    assert np.abs(a.cm.matrix - b.cm.matrix).sum() <= 0.002 * a.cm.matrix.sum()
    assert abs(a.pq.all["pq"] - b.pq.all["pq"]) < 0.01
