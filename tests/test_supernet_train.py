"""Supernet training: exact resume, divergence handling, torchrun with 2 CPU processes."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from hyctas_dsl.run.config import SupernetConfig
from hyctas_dsl.run.supernet import ResumeMismatch, TrainingDiverged, train_supernet
from tests.conftest import free_port

TINY_SPACE = """hyctas 1
space tiny {
  filters 2
  layers 3
  strides 8 16
  ops skip conv zconv zconv2 attn
  widths 6 12
  branch_prior 0.4 0.6
  heads (8) (16) (8, 16)
  output_strides 8 4
  memory 1 GiB batch 4 crop 32x32
}
"""
DATA = "digits:size=32,train=48,val=16"


@pytest.fixture()
def space_file(tmp_path):
    p = tmp_path / "tiny.hy"
    p.write_text(TINY_SPACE)
    return str(p)


def cfg(space_file, out, **kw):
    base = dict(space=space_file, data=DATA, out=str(out), steps=6, batch=4, checkpoint_every=3, seed=3, lr=0.01)
    base.update(kw)
    return SupernetConfig(**base)


def weights(out):
    return load_file(str(out / "supernet.safetensors"))


def test_resume_is_exact(space_file, tmp_path):
    torch.set_num_threads(1)
    straight = tmp_path / "straight"
    train_supernet(cfg(space_file, straight), progress=False)
    split = tmp_path / "split"
    train_supernet(cfg(space_file, split, steps=3), progress=False)
    train_supernet(cfg(space_file, split, steps=6), resume=True, progress=False)
    a, b = weights(straight), weights(split)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    log = [json.loads(line) for line in (split / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [3, 6]  # each run logs its last step
    cfg_json = json.loads((split / "config.json").read_text())
    assert cfg_json["config"]["seed"] == 3 and "torch" in cfg_json["environment"]["packages"]


def test_training_changes_weights_and_refuses_to_overwrite(space_file, tmp_path):
    out = tmp_path / "run"
    train_supernet(cfg(space_file, out, steps=2, checkpoint_every=1), progress=False)
    with pytest.raises(ResumeMismatch, match="--resume"):
        train_supernet(cfg(space_file, out, steps=2), progress=False)
    with pytest.raises(ResumeMismatch, match="seed"):
        train_supernet(cfg(space_file, out, steps=4, seed=4), resume=True, progress=False)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(space_file, tmp_path):
    from safetensors import safe_open

    out = tmp_path / "run"
    # an absurd learning rate makes the loss overflow within a few steps
    with pytest.raises(TrainingDiverged, match="last good checkpoint") as e:
        train_supernet(cfg(space_file, out, steps=40, checkpoint_every=1, lr=1e12), progress=False)
    bad_step = int(re.search(r"at step (\d+)", str(e.value)).group(1))
    with safe_open(str(out / "checkpoint.safetensors"), framework="pt") as f:
        assert int(f.metadata()["step"]) == bad_step  # the steps before the bad one, no more
    # after a divergence --resume takes a lower learning rate (a higher one is refused),
    # and the log records the change
    with pytest.raises(ResumeMismatch, match="lower --lr"):
        train_supernet(cfg(space_file, out, steps=40, lr=1e13), resume=True, progress=False)
    try:
        train_supernet(cfg(space_file, out, steps=bad_step + 1, lr=1e-6), resume=True, progress=False)
    except TrainingDiverged:
        pass  # weights from lr 1e12 may be past saving; what is tested is that resume took the lower lr
    events = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert any(e.get("event") == "diverged" for e in events)
    assert {"event": "lr_lowered", "from": 1e12, "to": 1e-6, "step": bad_step} in events


def test_cli_runs_under_torchrun_with_two_processes(space_file, tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
        "-m", "hyctas_dsl.cli", "train-supernet", "--space", space_file, "--data", DATA,
        "--out", str(out), "--steps", "3", "--batch", "4", "--quiet",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    cfg_json = json.loads((out / "config.json").read_text())
    assert cfg_json["world_size"] == 2
    assert (out / "supernet.safetensors").exists()
