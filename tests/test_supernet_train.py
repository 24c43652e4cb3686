"""Supernet training: exact resume, divergence handling, torchrun with 2 CPU processes."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from hyctas_dsl.jobs.config import SupernetConfig
from hyctas_dsl.jobs.supernet_training import ResumeMismatch, TrainingDiverged, train_supernet
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
    base = dict(space=space_file, data=DATA, out=str(out), steps=6, batch=4, checkpoint_every=3, seed=3, lr=0.01, procs=1)
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
    # the training scheme and the classifier layout are fixed for a run's life, too
    balance = cfg(space_file, out).resolved().branch_balance
    for change in ({"scheme": "sandwich"}, {"distill": 0.5}, {"branch_balance": not balance}, {"shared_classifier": False}):
        with pytest.raises(ResumeMismatch, match=next(iter(change))):
            train_supernet(cfg(space_file, out, steps=4, **change), resume=True, progress=False)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(space_file, tmp_path):
    from safetensors import safe_open

    out = tmp_path / "run"
    # an absurd learning rate makes the loss overflow within a few steps
    with pytest.raises(TrainingDiverged, match="last good checkpoint") as e:
        train_supernet(cfg(space_file, out, steps=40, checkpoint_every=1, lr=1e12), progress=False)
    # the first non-finite value is a loss ("at step N") or, when the step that overflowed the
    # weights still had a finite loss, a weight found by the checkpoint's check ("by step N")
    bad_step = int(re.search(r"(?:at|by) step (\d+)", str(e.value)).group(1))
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


# ---------------------------------------------------------------- training schemes


def _space():
    import hyctas_dsl as hy

    return hy.parse(TINY_SPACE).spaces[0]


def test_sandwich_step_trains_largest_smallest_and_random_subnets():
    from hyctas_dsl.jobs.schemes import step_subnets

    space = _space()
    c = SupernetConfig(scheme="sandwich", random_subnets=3, branch_balance=True, seed=5)
    subs = step_subnets(space, c, step=7)
    assert [s.role for s in subs] == ["largest", "smallest", "random", "random", "random"]
    big, small = subs[0].arch, subs[1].arch
    assert len(big.branches) == space.max_branches and big.layers == space.layers
    assert {c.width for b in big.branches for c in b.cells} == {max(space.widths)}
    assert big.head.output_stride == min(space.output_strides)
    assert len(big.fusions) == 2 * (space.layers - 1)  # every gate of two branches is on
    assert len(small.branches) == 1 and small.layers == 1
    assert {c.width for b in small.branches for c in b.cells} == {min(space.widths)}
    assert small.head.output_stride == max(space.output_strides)
    # balance: random subnets cycle through the branch counts, whatever the prior says
    counts = [len(s.arch.branches) for k in range(4) for s in step_subnets(space, c, k) if s.role == "random"]
    assert counts == [1 + i % 2 for i in range(12)]
    # a step's subnets are a pure function of (seed, step): resume samples the same ones
    again = step_subnets(space, c, step=7)
    assert [hy_key(s.arch) for s in again] == [hy_key(s.arch) for s in subs]


def hy_key(arch):
    import hyctas_dsl as hy

    return hy.canonical_key(arch)


def test_paper_scheme_is_one_subnet_from_the_prior():
    from hyctas_dsl.jobs.schemes import step_subnets

    space = _space()
    c = SupernetConfig(scheme="paper", branch_balance=False, seed=0)
    subs = [step_subnets(space, c, k) for k in range(200)]
    assert all(len(s) == 1 and s[0].role == "random" for s in subs)
    share = sum(len(s[0].arch.branches) == 1 for s in subs) / len(subs)
    assert 0.28 < share < 0.52  # prior 0.4 / 0.6


def test_distillation_targets_are_detached():
    """Students learn from the teacher's soft labels; no gradient reaches the teacher's output
    through a student's loss (in-place distillation, BigNAS)."""
    from hyctas_dsl.compiler import Supernet
    from hyctas_dsl.jobs.schemes import StepSubnet, step_subnets, train_step

    torch.manual_seed(0)
    space = _space()
    net = Supernet(space, classes=3)
    c = SupernetConfig(scheme="sandwich", random_subnets=0, seed=1)
    big, small = step_subnets(space, c, 0)
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32))
    # The teacher alone, then teacher + a student with pure distillation: the grads of weights
    # only the teacher uses must be the same, i.e. the student's loss did not flow into them.
    net.zero_grad()
    train_step(net, [big], x, y, float(y.numel()), distill=1.0)
    alone = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    net.zero_grad()
    train_step(net, [big, small], x, y, float(y.numel()), distill=1.0)
    used_by_small = {n for n, p in net.named_parameters() if p.grad is not None and (n not in alone or not torch.equal(p.grad, alone[n]))}
    view_small = {id(p) for p in net.subnet(small.arch).parameters()}
    names_small = {n for n, p in net.named_parameters() if id(p) in view_small}
    assert used_by_small and used_by_small <= names_small
    # and the soft-label loss is what the student is trained on: it moves with the teacher
    from hyctas_dsl.jobs.schemes import distill_loss

    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    teacher = torch.softmax(torch.randn(1, 3, 4, 4), 1)
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    labels[0, 0, 0] = 255  # ignored pixels do not count
    loss = distill_loss(logits, teacher, labels, 15.0)
    expect = -(teacher * torch.log_softmax(logits, 1)).sum(1)[labels != 255].sum() / 15.0
    assert torch.allclose(loss, expect)


def test_sandwich_resume_is_exact(space_file, tmp_path):
    torch.set_num_threads(1)
    kw = dict(scheme="sandwich", random_subnets=1, distill=0.5, branch_balance=True)
    straight = tmp_path / "straight"
    train_supernet(cfg(space_file, straight, **kw), progress=False)
    split = tmp_path / "split"
    train_supernet(cfg(space_file, split, steps=3, **kw), progress=False)
    train_supernet(cfg(space_file, split, steps=6, **kw), resume=True, progress=False)
    a, b = weights(straight), weights(split)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_other_output_stride_shares_one_forward_of_the_body():
    """forward_output_strides gives each output stride's logits exactly as that subnet's own
    view does, and the auxiliary loss trains the head at the other output stride: with the
    loss at output stride 8 alone, the stride-4 merge gets no gradient, with it, the cells
    get the sum of both losses' gradients."""
    from hyctas_dsl.compiler import Supernet
    from hyctas_dsl.jobs.schemes import StepSubnet, train_step
    from hyctas_dsl.search.genome import sample_arch
    import numpy as np

    torch.manual_seed(0)
    space = _space()
    net = Supernet(space, classes=3).eval()
    rng = np.random.default_rng(0)
    arch = next(a for a in (sample_arch(space, rng) for _ in range(50)) if a.head.output_stride == 8)
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32))
    outs = net.subnet(arch).forward_output_strides(x, (8, 4))
    assert list(outs) == [8, 4]
    for s, out in outs.items():
        other = arch.model_copy(update={"head": arch.head.model_copy(update={"output_stride": s})})
        assert torch.equal(out, net.subnet(other)(x))

    def grads(aux):
        net.zero_grad()
        train_step(net, [StepSubnet("random", arch)], x, y, float(y.numel()), distill=0.0, output_stride_aux=aux)
        return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}

    plain, both = grads(0.0), grads(1.0)
    merge4 = {n for n in both if ".proj4." in n or ".fuse4." in n}
    assert merge4 and not merge4 & plain.keys()  # only the output-stride-4 head uses the stride-4 merge
    cells = [n for n in plain if n.startswith("cells.")]
    assert cells and any(not torch.equal(plain[n], both[n]) for n in cells)


def test_output_stride_aux_resume_is_exact(space_file, tmp_path):
    torch.set_num_threads(1)
    straight = tmp_path / "straight"
    train_supernet(cfg(space_file, straight, output_stride_aux=0.5), progress=False)
    split = tmp_path / "split"
    train_supernet(cfg(space_file, split, steps=3, output_stride_aux=0.5), progress=False)
    train_supernet(cfg(space_file, split, steps=6, output_stride_aux=0.5), resume=True, progress=False)
    a, b = weights(straight), weights(split)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    plain = tmp_path / "plain"
    train_supernet(cfg(space_file, plain), progress=False)
    assert any(not torch.equal(a[k], weights(plain)[k]) for k in a)  # the option takes effect


def _forget_option(out, key: str, record: bool = False) -> None:
    """Make ``out`` look like a run from before option ``key`` existed: gone from its
    checkpoint's saved config (and from config.json with ``record``)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    ck = out / "checkpoint.safetensors"
    with safe_open(str(ck), framework="pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    config = json.loads(meta["config"])
    del config[key]
    save_file(tensors, str(ck), metadata={**meta, "config": json.dumps(config)})
    if record:
        saved = json.loads((out / "config.json").read_text())
        del saved["config"][key]
        (out / "config.json").write_text(json.dumps(saved))


def test_a_run_from_before_an_option_existed_resumes_as_it_trained(space_file, tmp_path):
    """A checkpoint whose saved config lacks an option added later resumes when the option
    resolves to what the run did, and is refused when it asks for something else."""
    torch.set_num_threads(1)
    out = tmp_path / "old"
    train_supernet(cfg(space_file, out, steps=3), progress=False)
    _forget_option(out, "output_stride_aux")
    with pytest.raises(ResumeMismatch, match="output_stride_aux"):
        train_supernet(cfg(space_file, out, steps=6, output_stride_aux=0.5), resume=True, progress=False)
    train_supernet(cfg(space_file, out, steps=6), resume=True, progress=False)
    assert weights(out)


def test_stem_drop_draws_its_own_stream_and_leaves_the_archs_alone():
    from hyctas_dsl.jobs.schemes import step_subnets
    from hyctas_dsl.language.api import canonical_key

    space = _space()
    plain = SupernetConfig(data=DATA, seed=3, stem_drop=0.0).resolved()
    half = SupernetConfig(data=DATA, seed=3, stem_drop=0.5).resolved()
    drops = []
    for k in range(200):
        a, b = step_subnets(space, plain, k), step_subnets(space, half, k)
        assert [canonical_key(s.arch) for s in a] == [canonical_key(s.arch) for s in b]  # same subnets
        assert not any(s.drop_stem for s in a)
        drops.append(b[0].drop_stem)
        assert b == step_subnets(space, half, k)  # a pure function of (seed, step): resume stays exact
    assert 70 < sum(drops) < 130


def test_stem_drop_gives_the_head_zeros_for_the_stems_feature():
    from hyctas_dsl.compiler import Supernet
    from hyctas_dsl.jobs.schemes import StepSubnet, train_step
    from hyctas_dsl.search.genome import sample_arch
    import numpy as np

    torch.manual_seed(0)
    space = _space()
    net = Supernet(space, classes=3)
    rng = np.random.default_rng(0)
    arch = next(a for a in (sample_arch(space, rng) for _ in range(50)) if a.head.output_stride == 4)
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32))

    def grads(drop):
        net.zero_grad()
        train_step(net, [StepSubnet("random", arch, drop)], x, y, float(y.numel()), distill=0.0)
        return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}

    kept, dropped = grads(False), grads(True)
    proj4 = [n for n in kept if ".proj4." in n and n.endswith("conv.weight")]
    assert proj4 and all(kept[n].abs().sum() > 0 for n in proj4)
    assert all(dropped[n].abs().sum() == 0 for n in proj4)  # its input was zeros
    assert any(not torch.equal(kept[n], dropped[n]) for n in kept if n.startswith("cells."))
    view = net.subnet(arch)
    assert not view.net.head._forward_pre_hooks  # a fresh view: the step's hook went with its own


def test_stem_drop_resume_is_exact_and_takes_effect(space_file, tmp_path):
    torch.set_num_threads(1)
    straight, split, plain = tmp_path / "straight", tmp_path / "split", tmp_path / "plain"
    train_supernet(cfg(space_file, straight, stem_drop=0.9), progress=False)
    train_supernet(cfg(space_file, split, steps=3, stem_drop=0.9), progress=False)
    train_supernet(cfg(space_file, split, steps=6, stem_drop=0.9), resume=True, progress=False)
    a, b = weights(straight), weights(split)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    train_supernet(cfg(space_file, plain, stem_drop=0.0), progress=False)
    assert any(not torch.equal(a[k], weights(plain)[k]) for k in a)
    with pytest.raises(ResumeMismatch, match="stem_drop"):
        train_supernet(cfg(space_file, straight, steps=8, stem_drop=0.0), resume=True, progress=False)


def test_a_run_from_before_stem_drop_resumes_as_it_trained(space_file, tmp_path):
    """The digits' default is now 0.5; a run that recorded no stem_drop trained without it and
    continues so when resumed without the option (as --procs does)."""
    torch.set_num_threads(1)
    straight, old = tmp_path / "straight", tmp_path / "old"
    train_supernet(cfg(space_file, straight, stem_drop=0.0), progress=False)
    train_supernet(cfg(space_file, old, steps=3, stem_drop=0.0), progress=False)
    _forget_option(old, "stem_drop", record=True)
    train_supernet(cfg(space_file, old, steps=6), resume=True, progress=False)
    a, b = weights(straight), weights(old)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_stem_drop_needs_output_stride_4(tmp_path):
    from hyctas_dsl.jobs.errors import ConfigError

    one = tmp_path / "one.hy"
    one.write_text(TINY_SPACE.replace("output_strides 8 4", "output_strides 8"))
    with pytest.raises(ConfigError, match="no output stride 4"):
        train_supernet(cfg(str(one), tmp_path / "run", stem_drop=0.5), progress=False)
    assert not (tmp_path / "run").exists()
    # the digits' default (0.5) applies where there is a stride-4 feature to drop
    train_supernet(cfg(str(one), tmp_path / "default"), progress=False)
    assert json.loads((tmp_path / "default" / "config.json").read_text())["config"]["stem_drop"] == 0.0
    assert SupernetConfig(data=DATA).resolved().stem_drop == 0.5 and SupernetConfig(data="folder:x").resolved().stem_drop == 0.0


def test_output_stride_aux_needs_two_output_strides(tmp_path):
    from hyctas_dsl.jobs.errors import ConfigError

    one = tmp_path / "one.hy"
    one.write_text(TINY_SPACE.replace("output_strides 8 4", "output_strides 8"))
    with pytest.raises(ConfigError, match="offers one"):
        train_supernet(cfg(str(one), tmp_path / "run", output_stride_aux=1.0), progress=False)
    assert not (tmp_path / "run").exists()  # refused before the run directory is made


# ---------------------------------------------------------------- several processes, one subnet each


def test_each_rank_draws_its_own_subnet_and_balance_runs_over_ranks():
    from hyctas_dsl.jobs.schemes import step_subnets

    space = _space()
    own = SupernetConfig(scheme="paper", branch_balance=True, subnet_per_rank=True, seed=2)
    same = own.model_copy(update={"subnet_per_rank": False})
    keys = {r: [hy_key(step_subnets(space, own, k, r, 2)[0].arch) for k in range(6)] for r in (0, 1)}
    assert all(a != b for a, b in zip(keys[0], keys[1]))
    # the branch counts take turns over the steps, every rank of a step drawing the same count
    counts = [len(step_subnets(space, own, k, r, 2)[0].arch.branches) for k in range(4) for r in (0, 1)]
    assert counts == [1, 1, 2, 2, 1, 1, 2, 2]
    # without it, every rank trains the step's one subnet, the one a single process trains
    for k in range(3):
        one = hy_key(step_subnets(space, same, k)[0].arch)
        assert one == hy_key(step_subnets(space, same, k, 1, 2)[0].arch) == hy_key(step_subnets(space, own, k)[0].arch)
    # resume samples the same ones: a pure function of (seed, step, rank)
    assert keys[1][3] == hy_key(step_subnets(space, own, 3, 1, 2)[0].arch)


def _sum_gradients_in_two_processes():
    from hyctas_dsl.jobs import dist

    info = dist.init("cpu")
    params = [torch.nn.Parameter(torch.zeros(3)) for _ in range(3)]
    params[0].grad = torch.full((3,), 1.0 + info.rank)  # both ranks touch it
    if info.rank == 1:
        params[1].grad = torch.full((3,), 5.0)  # only rank 1 does
    loss = dist.sum_gradients(params, info, torch.tensor(0.5 + info.rank))  # params[2]: nobody
    return [None if p.grad is None else p.grad.tolist() for p in params], info.world, float(loss)


def test_sum_gradients_adds_touched_ones_and_leaves_untouched_ones_without_gradient():
    from hyctas_dsl.jobs import dist

    grads, world, loss = dist.launch(2, _sum_gradients_in_two_processes)
    assert world == 2 and loss == 2.0
    assert grads == [[3.0] * 3, [5.0] * 3, None]  # rank 0's view: rank 1's gradient arrived, p2 stays skipped


def test_procs_trains_one_subnet_per_process_and_resumes_exactly(space_file, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    train_supernet(cfg(space_file, straight, steps=4, checkpoint_every=2, procs=2), progress=False)
    train_supernet(cfg(space_file, split, steps=2, checkpoint_every=2, procs=2), progress=False)
    train_supernet(cfg(space_file, split, steps=4, checkpoint_every=2, procs=2), resume=True, progress=False)
    a, b = weights(straight), weights(split)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    saved = json.loads((straight / "config.json").read_text())
    assert saved["world_size"] == 2 and saved["config"]["procs"] == 2 and saved["config"]["subnet_per_rank"] is True
    # the cells that moved are exactly those of the subnets both ranks drew
    from hyctas_dsl.compiler.lower import lower
    from hyctas_dsl.jobs.schemes import step_subnets

    init = tmp_path / "init"
    train_supernet(cfg(space_file, init, steps=1, procs=1, lr=1e-30), progress=False)
    w0 = weights(init)
    c = cfg(space_file, straight, procs=2).resolved()
    drawn = {r: {n.key for k in range(4) for sub in step_subnets(_space(), c, k, r, 2)
                 for n in lower(sub.arch, 11).nodes if n.kind == "cell"} for r in (0, 1)}
    # skips left out: a skip's projection runs only where its subnet changes the width
    weighted = {k.split(".")[1] for k in weighted_keys(a)}
    moved = {k.split(".")[1] for k in weighted_keys(a) if not torch.allclose(a[k], w0[k])}
    assert moved == (drawn[0] | drawn[1]) & weighted
    assert (drawn[1] - drawn[0]) & weighted  # rank 1's own subnets were trained


def weighted_keys(w):
    return [k for k in w if k.startswith("cells.") and k.endswith("weight") and not k.split(".")[1].endswith("_skip")]


def test_a_mistake_in_a_launched_process_is_raised_as_it_was(space_file, tmp_path, monkeypatch):
    from hyctas_dsl.data.base import DataError
    from hyctas_dsl.jobs.errors import ConfigError

    out = tmp_path / "run"
    with pytest.raises(DataError, match="missing"):
        train_supernet(cfg(space_file, out, data="cityscapes:" + str(tmp_path / "missing"), procs=2), progress=False)
    assert not out.exists()  # nothing half-made
    with pytest.raises(ConfigError, match="fewer than 2 images per process"):  # BatchNorm would fail mid-run
        train_supernet(cfg(space_file, out, batch=2, procs=2), progress=False)
    assert not out.exists()
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="torchrun started 2 processes"):
        train_supernet(cfg(space_file, out, procs=3), progress=False)


def test_resume_keeps_the_processes_the_run_used(space_file, tmp_path):
    """--procs left out on --resume: the run continues with its own number of processes (a
    run from before --procs recorded only its world size), whatever this machine's default."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    train_supernet(cfg(space_file, straight, steps=4, checkpoint_every=2), progress=False)
    train_supernet(cfg(space_file, split, steps=2, checkpoint_every=2), progress=False)
    # as a run from before the options: neither its record nor its checkpoint names them
    from safetensors import safe_open
    from safetensors.torch import save_file

    record = json.loads((split / "config.json").read_text())
    del record["config"]["procs"], record["config"]["subnet_per_rank"]
    (split / "config.json").write_text(json.dumps(record))
    ck = split / "checkpoint.safetensors"
    with safe_open(str(ck), "pt") as f:
        meta = f.metadata()
    saved = json.loads(meta["config"])
    del saved["procs"], saved["subnet_per_rank"]
    save_file(load_file(str(ck)), str(ck), metadata={**meta, "config": json.dumps(saved)})
    train_supernet(cfg(space_file, split, steps=4, checkpoint_every=2, procs=None), resume=True, progress=False)
    a, b = weights(straight), weights(split)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((split / "config.json").read_text())["config"]["procs"] == 1
