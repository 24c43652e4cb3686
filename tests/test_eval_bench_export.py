"""`hyctas eval`, `hyctas bench`, `hyctas export`: mIoU against an independent count, flip
and multi-scale averaging, confusion matrix and picture grid files, clear errors for weights
of another arch or class count, interleaved FPS with the protocol, exports that match."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from hyctas_dsl.language.api import loads
from hyctas_dsl.commands import bench as bench_cmd
from hyctas_dsl.commands import eval as eval_cmd
from hyctas_dsl.commands import export as export_cmd
from hyctas_dsl.compiler import export
from hyctas_dsl.compiler.checkpoint import save_model
from hyctas_dsl.data import make_datasets
from hyctas_dsl.jobs.dataset_eval import evaluate, predict

from tests.test_retrain import DATA, TINY

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning"),
              pytest.mark.usefixtures("one_thread")]

OTHER = TINY.replace("arch tiny {", "arch other {").replace("    3 zconv2 w12\n", "    3 conv w12\n")



def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        pass

    for m in (eval_cmd, bench_cmd, export_cmd):
        m.register(app)
    return app


APP = _app()


def run(*args):
    return CliRunner().invoke(APP, [str(a) for a in args])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("ebe")
    (d / "tiny.hy").write_text(TINY)
    (d / "other.hy").write_text(OTHER)
    arch = loads(TINY).archs[0]
    torch.manual_seed(0)
    model = export(arch, classes=11)
    # Give BatchNorm non-trivial statistics so predictions vary across classes.
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 32, 32))
        model.head.out.weight.mul_(100.0)  # a fresh classifier is near-uniform; make it decide
    save_model(model.eval(), arch, d / "model.safetensors", 11)
    save_model(export(arch, classes=5), arch, d / "five.safetensors", 5)
    return d


def test_evaluate_counts_every_labelled_pixel_once(files):
    from hyctas_dsl.compiler.checkpoint import load_model

    model = load_model(files / "model.safetensors").eval()
    _train, val = make_datasets(DATA)
    res = evaluate(model, val, batch=5, samples=3)
    want = np.zeros((11, 11), np.int64)
    labelled = 0
    for i in range(len(val)):
        x, y = val.get(i)
        with torch.no_grad():
            p = model(x[None]).argmax(1)[0]
        keep = y != 255
        labelled += int(keep.sum())
        np.add.at(want, (y[keep].numpy(), p[keep].numpy()), 1)
    assert np.array_equal(res.cm.matrix, want) and res.cm.matrix.sum() == labelled
    assert len(res.samples) == 3 and res.images == len(val)


def test_flip_and_scales_average_probabilities(files):
    from hyctas_dsl.compiler.checkpoint import load_model

    model = load_model(files / "model.safetensors").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a = model(x).softmax(1)
        b = model(x.flip(3)).softmax(1).flip(3)
        assert torch.allclose(predict(model, x, flip=True), a + b, atol=1e-6)
        assert not torch.allclose(a, b, atol=1e-3)  # the flipped pass really is another pass
        p = predict(model, x, scales=(0.75, 1.25), flip=True)
    assert p.shape == (2, 11, 32, 32) and torch.allclose(p.sum(1), torch.full((2, 32, 32), 4.0), atol=1e-4)


def test_eval_cli_writes_matrix_grid_and_json(files, tmp_path):
    out = tmp_path / "ev"
    r = run("eval", files / "tiny.hy", "--weights", files / "model.safetensors", "--data", DATA, "--out", out, "-q",
            "--flip", "--scales", "0.75,1")
    assert r.exit_code == 0, r.output
    m = re.search(r"mIoU\s+([\d.]+)", r.output)
    summary = json.loads((out / "eval.json").read_text())
    assert m and float(m.group(1)) == pytest.approx(100 * summary["miou"], abs=0.06)
    assert summary["flip"] is True and summary["scales"] == [0.75, 1.0] and "background" in summary["iou"]
    assert summary["layout"] == "channels-last" and "channels-last" in r.output  # the CPU default, stated
    cm = np.load(out / "confusion.npy")
    assert cm.shape == (11, 11) and cm.sum() > 0
    csv = (out / "confusion.csv").read_text().splitlines()
    assert len(csv) == 12 and csv[1].split(",")[1:] == [str(v) for v in cm[0]]
    assert (out / "predictions.png").read_bytes()[:4] == b"\x89PNG"


def test_eval_refuses_weights_of_another_arch_or_class_count(files):
    r = run("eval", files / "other.hy", "--weights", files / "model.safetensors", "--data", DATA)
    assert r.exit_code == 2 and "belong to arch `tiny`" in r.output and "Traceback" not in r.output
    r = run("eval", files / "tiny.hy", "--weights", files / "five.safetensors", "--data", DATA)
    assert r.exit_code == 2 and "predicts 5 classes, but the data has 11" in r.output
    r = run("eval", files / "tiny.hy", "--weights", files / "nope.safetensors", "--data", DATA)
    assert r.exit_code == 2 and "no such file" in r.output
    (files / "junk.safetensors").write_bytes(b"not a checkpoint")
    r = run("eval", files / "tiny.hy", "--weights", files / "junk.safetensors", "--data", DATA)
    assert r.exit_code == 2 and "Traceback" not in r.output
    r = run("eval", files / "tiny.hy", "--weights", files / "model.safetensors", "--scales", "1,x")
    assert r.exit_code == 2 and "--scales" in r.output


def test_bench_compare_prints_fps_ratio_and_protocol(files):
    r = run("bench", files / "tiny.hy", "--device", "cpu", "--input", "64x64", "--seconds", "0.15", "--warmup", "0.05",
            "--compare", files / "other.hy", "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    a, b = rep["results"]
    assert (a["arch"], b["arch"]) == ("tiny", "other")
    assert a["input"] == "1x3x64x64" and a["runs"] >= 9 and a["p10_ms"] <= a["median_ms"] <= a["p90_ms"]
    assert rep["ratio"] == pytest.approx(b["median_ms"] / a["median_ms"])
    r = run("bench", files / "tiny.hy", "--device", "cpu", "--input", "64x64", "--seconds", "0.1", "--warmup", "0",
            "--channels-last", "--weights", files / "model.safetensors")
    assert r.exit_code == 0 and re.search(r"protocol: batch 1, 1x3x64x64, cpu[^,]*, fp32, eager, channels-last", r.output), r.output
    # the CPU default is channels-last, and the protocol says so; --contiguous overrides it
    assert a["backend"] == "eager, channels-last" and "CV" in a["protocol"] and 0 <= a["cv"]
    r = run("bench", files / "tiny.hy", "--device", "cpu", "--input", "64x64", "--seconds", "0.1", "--warmup", "0",
            "--contiguous")
    assert r.exit_code == 0 and re.search(r"protocol: .*, fp32, eager, contiguous, warm-up 0 s, median of \d+ runs "
                                          r"in 0.1 s \(fastest [\d.e+-]+, p10..p90 [\d.e+-]+..[\d.e+-]+ ms, CV [\d.]+%\)", r.output), r.output


def test_bench_usage_errors(files):
    assert run("bench", files / "tiny.hy", "--dtype", "int4").exit_code == 2
    assert run("bench", files / "tiny.hy", "--input", "big").exit_code == 2
    if not torch.cuda.is_available():
        r = run("bench", files / "tiny.hy", "--device", "cuda", "--seconds", "0.1")
        assert r.exit_code == 2 and "no CUDA GPU" in r.output


@pytest.mark.parametrize("fmt,suffix", [("torchscript", ".pt"), ("safetensors", ".safetensors"), ("python", ".py"), ("onnx", ".onnx")])
def test_export_matches_pytorch(files, tmp_path, fmt, suffix):
    out = tmp_path / f"net{suffix}"
    r = run("export", files / "tiny.hy", "--weights", files / "model.safetensors", "--format", fmt, "-o", out, "--input", "32x64")
    assert r.exit_code == 0, r.output
    m = re.search(r"max abs diff ([\d.e+-]+)", r.output)
    assert out.exists() and m and float(m.group(1)) <= 1e-4, r.output


def test_export_errors(files, tmp_path):
    r = run("export", files / "tiny.hy", "--weights", files / "model.safetensors", "--format", "tflite")
    assert r.exit_code == 2 and "--format" in r.output
    r = run("export", files / "tiny.hy", "--weights", files / "model.safetensors", "--format", "onnx", "-o", tmp_path / "x.pt")
    assert r.exit_code == 2 and ".onnx" in r.output
    r = run("export", files / "other.hy", "--weights", files / "model.safetensors", "--format", "onnx", "-o", tmp_path / "x.onnx")
    assert r.exit_code == 2 and not (tmp_path / "x.onnx").exists()


def test_bench_out_of_memory_is_one_line(files, monkeypatch):
    import hyctas_dsl.jobs.fps as bench_mod

    def too_big(*_a, **_k):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(bench_mod, "bench", too_big)
    r = run("bench", files / "tiny.hy", "--device", "cpu", "--input", "64x64", "--seconds", "0.1")
    assert r.exit_code == 1 and "out of memory at 64x64" in r.output and "Traceback" not in r.output
