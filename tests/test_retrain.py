"""`hyctas train`: Table 9's scheduled drop path really drops paths, poly lr, OHEM, aux
losses, exact resume, torchrun with 2 CPU processes == one process, one-line CLI errors."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
import typer
from safetensors.torch import load_file
from typer.testing import CliRunner

from hyctas_dsl.language.api import loads
from hyctas_dsl.commands import train as train_cmd
from hyctas_dsl.compiler import export, set_drop_path
from hyctas_dsl.jobs.config import TrainConfig
from hyctas_dsl.jobs.errors import ResumeMismatch
from hyctas_dsl.jobs.retrain import RetrainNet, drop_path_at, ohem_loss, poly_lr, train
from tests.conftest import free_port

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning"),
              pytest.mark.usefixtures("one_thread")]

# Strides 8/16 only: at 32x32 inputs a stride-32 zconv would see a 1x1 map.
TINY = """hyctas 1

space tiny_space {
  filters 2 4
  layers 3
  strides 8 16
  ops skip conv zconv zconv2 attn
  widths 6 12
  branch_prior 0.4 0.6
  heads (8) (16) (8, 16)
  output_strides 8 4
}

arch tiny {
  filters 4
  layers 3
  head (8, 16) output_stride 8
  branch hi {
    1 conv w12
    2 zconv w12
    3 zconv2 w12
  }
  branch lo {
    1 conv w12
    2 zconv w6 down
    3 attn(heads=2) w12
  }
  fuse lo -> hi after 2
}
"""
DATA = "digits:size=32,train=32,val=16"



@pytest.fixture(scope="module")
def arch():
    return loads(TINY).archs[0]


@pytest.fixture()
def arch_file(tmp_path):
    p = tmp_path / "tiny.hy"
    p.write_text(TINY)
    return p


def cfg(out, **kw):
    base = dict(data=DATA, out=str(out), steps=4, batch=4, checkpoint_every=2, seed=5, lr=0.01,
                eval_images=8, aux=True, ohem=True, ohem_min_kept=64)
    base.update(kw)
    return TrainConfig(**base)


def test_drop_path_really_drops_in_training_and_never_in_eval(arch):
    torch.manual_seed(0)
    net = export(arch, classes=11)
    assert set_drop_path(net, 0.5) == 3  # hi.2 zconv, hi.3 zconv2, lo.3 attn: the cells with a bypass
    x = torch.randn(4, 3, 32, 32)
    net.train()
    with torch.no_grad():
        a, b = net(x), net(x)
    assert not torch.allclose(a, b)
    net.eval()
    with torch.no_grad():
        c, d = net(x), net(x)
    assert torch.equal(c, d)


def test_schedules_follow_table9_and_the_poly_policy():
    c = TrainConfig(steps=100, lr=0.005, drop_path=0.2)
    assert drop_path_at(c, 0) == 0.0
    assert drop_path_at(c, 50) == pytest.approx(0.1)
    assert drop_path_at(c, 99) == pytest.approx(0.198)
    assert poly_lr(c, 0) == pytest.approx(0.005)
    assert poly_lr(c, 50) == pytest.approx(0.005 * 0.5 ** 0.9)
    assert poly_lr(c, 100) == 0.0


def test_ohem_keeps_hard_pixels_and_at_least_min_kept():
    # 1 image, 2 classes, 4 pixels: true-class probabilities 0.9, 0.6, 0.3, 0.95; one ignored.
    p = torch.tensor([0.9, 0.6, 0.3, 0.95, 0.5])
    logits = torch.stack([torch.log(p), torch.log(1 - p)]).reshape(1, 2, 1, 5)
    labels = torch.tensor([[[0, 0, 0, 0, 255]]])
    total, kept = ohem_loss(logits, labels, thresh=0.7, min_kept=1)
    assert kept == 2 and total.item() == pytest.approx(-math.log(0.6) - math.log(0.3), rel=1e-5)
    total, kept = ohem_loss(logits, labels, thresh=0.7, min_kept=3)
    assert kept == 3 and total.item() == pytest.approx(-math.log(0.6) - math.log(0.3) - math.log(0.9), rel=1e-5)


def test_aux_classifiers_read_the_stride16_branch_output(arch):
    torch.manual_seed(0)
    model = RetrainNet(export(arch, classes=11), arch, 11, aux=True)
    assert model.aux_strides == [16]
    model.train()
    x = torch.randn(2, 3, 40, 36)  # not a multiple of 32: the aux logits are cropped like the main ones
    logits, aux = model(x)
    assert logits.shape == aux[0].shape == (2, 11, 40, 36)
    aux[0].sum().backward()
    assert model.aux[0][0].weight.grad.abs().sum() > 0
    model.eval()
    assert model(x)[1] == []
    assert RetrainNet(export(arch, classes=11), arch, 11, aux=False).aux_strides == []


def test_resume_is_exact_and_runs_write_their_records(arch, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    res = train(cfg(full), arch, progress=False)
    assert res.steps == 4 and res.miou is not None and 0 <= res.miou <= 1
    stopped = train(cfg(part), arch, progress=False, stop_after=2)
    assert stopped.steps == 2 and not (part / "model.safetensors").exists()
    train(cfg(part), arch, resume=True, progress=False)
    a, b = load_file(str(full / "model.safetensors")), load_file(str(part / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    before = load_file(str(full / "checkpoint.safetensors"))
    assert any(k.startswith("optim.") for k in before) and any(k.startswith("model.aux.") for k in before)
    rows = [json.loads(line) for line in (part / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [2, 4] and "val_miou" in rows[-1]
    assert {"lr", "drop_path", "img_per_s", "aux_loss"} <= set(rows[0])
    assert (part / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    conf = json.loads((full / "config.json").read_text())
    assert conf["config"]["drop_path"] == 0.2 and conf["aux_strides"] == [16] and "torch" in conf["environment"]["packages"]
    # different weights than the fresh initialisation: training happened
    torch.manual_seed(5)
    fresh = export(arch, classes=11).state_dict()
    assert any(not torch.equal(fresh[k], a[k]) for k in fresh if fresh[k].is_floating_point())
    with pytest.raises(ResumeMismatch, match="already holds"):
        train(cfg(full), arch, progress=False)
    with pytest.raises(ResumeMismatch, match="lr"):
        train(cfg(part, lr=0.02), arch, resume=True, progress=False)


def test_resume_is_exact_with_adamw(arch, tmp_path):
    """AdamW's moments and step count travel through the checkpoint too."""
    full, part = tmp_path / "full", tmp_path / "part"
    train(cfg(full, optimizer="adamw", lr=0.003), arch, progress=False)
    train(cfg(part, optimizer="adamw", lr=0.003), arch, progress=False, stop_after=2)
    assert any(k.startswith("optim.exp_avg.") for k in load_file(str(part / "checkpoint.safetensors")))
    train(cfg(part, optimizer="adamw", lr=0.003), arch, resume=True, progress=False)
    a, b = load_file(str(full / "model.safetensors")), load_file(str(part / "model.safetensors"))
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_bf16_autocast_trains_on_cpu(arch, tmp_path):
    res = train(cfg(tmp_path / "bf16", steps=2, amp="bf16", eval_images=0, aux=False, ohem=False), arch, progress=False)
    assert math.isfinite(res.final_loss) and res.miou is None


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        pass

    train_cmd.register(app)
    return app


def test_cli_errors_are_one_line(arch_file, tmp_path):
    run = CliRunner().invoke
    app = _app()
    r = run(app, ["train", str(arch_file), "--data", DATA, "--amp", "fp8", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "--amp" in r.output and "Traceback" not in r.output
    r = run(app, ["train", str(arch_file), "--data", "cityscapes:/nonexistent", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "Traceback" not in r.output
    bad = tmp_path / "bad.hy"
    bad.write_text(TINY.replace("filters 4\n  layers 3\n  head", "filters 3\n  layers 3\n  head"))
    r = run(app, ["train", str(bad), "--data", DATA, "--out", str(tmp_path / "y")])
    assert r.exit_code == 1 and "HY213" in r.output
    r = run(app, ["train", str(arch_file), "--data", DATA, "--out", str(tmp_path / "z"), "--resume"])
    assert r.exit_code == 2 and "no checkpoint.safetensors" in r.output


def test_torchrun_two_processes_match_one_process(arch_file, tmp_path):
    """Same global batch, BatchNorm over the global batch (GlobalBatchNorm2d on CPU), losses
    normalised by global pixel counts: the same weights up to float rounding. Drop path is
    off: its masks are drawn per rank (see hyctas_dsl.jobs.retrain)."""
    common = ["--data", DATA, "--steps", "3", "--batch", "4", "--seed", "2", "--drop-path", "0", "--aux",
              "--ohem", "--eval-images", "8", "--quiet", "--lr", "0.02"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    one = subprocess.run([sys.executable, "-m", "hyctas_dsl.cli", "train", str(arch_file), "--out", str(tmp_path / "one")] + common,
                         capture_output=True, text=True, env=env, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
                          "-m", "hyctas_dsl.cli", "train", str(arch_file), "--out", str(tmp_path / "two")] + common,
                         capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "config.json").read_text())["world_size"] == 2
    a = load_file(str(tmp_path / "one" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "model.safetensors"))
    torch.manual_seed(2)  # the seed train() initialises with
    init = export(loads(TINY).archs[0], classes=11).state_dict()
    moved = 0
    for k in a:
        assert torch.allclose(a[k].double(), b[k].double(), rtol=1e-4, atol=1e-5), (k, (a[k] - b[k]).abs().max())
        moved += k.endswith("weight") and not torch.equal(a[k], init[k])
    assert moved > 10
    la = [json.loads(x) for x in (tmp_path / "one" / "log.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (tmp_path / "two" / "log.jsonl").read_text().splitlines()]
    assert la[0]["loss"] == pytest.approx(lb[0]["loss"], rel=1e-4)
    assert la[-1]["val_miou"] == pytest.approx(lb[-1]["val_miou"], abs=1e-9)
