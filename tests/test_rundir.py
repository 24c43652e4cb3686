"""Fault injection on the run directory of the long jobs (jobs/rundir.py): a crash at chosen
points of the write sequence, a killed process, a read-only and a full output directory,
concurrent runs, divergence, damaged and foreign checkpoints. Each test asserts what the user
is left with: a loadable, finite last checkpoint, an exact resume, one clear line."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from hyctas_dsl import fileio
from hyctas_dsl.cli import _register_commands, app
from hyctas_dsl.jobs.config import SupernetConfig
from hyctas_dsl.jobs.errors import ResumeMismatch, RunDirError, TrainingDiverged
from hyctas_dsl.jobs.rundir import RunDir
from hyctas_dsl.jobs.supernet_training import train_supernet
from tests.conftest import IN_CI, ROOT
from tests.test_supernet_train import TINY_SPACE, space_file  # noqa: F401 - the fixture

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning"),
              pytest.mark.usefixtures("one_thread")]

DATA = "digits:size=32,train=24,val=8"



def cfg(space_file, out, **kw):
    base = dict(space=space_file, data=DATA, out=str(out), steps=4, batch=4, checkpoint_every=2, seed=5, lr=0.01, procs=1)
    base.update(kw)
    return SupernetConfig(**base)


def finite_checkpoint(out: Path) -> int:
    """The step of the checkpoint in ``out``, after checking every tensor loads and is finite."""
    from safetensors import safe_open

    tensors = load_file(str(out / "checkpoint.safetensors"))
    assert tensors and all(bool(torch.isfinite(t).all()) for t in tensors.values() if t.is_floating_point())
    with safe_open(str(out / "checkpoint.safetensors"), framework="pt") as f:
        return int(f.metadata()["step"])


def litter(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if fileio.is_temporary(p.name))


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The supernet of an uninterrupted 4-step run, to compare resumed runs with."""
    d = tmp_path_factory.mktemp("straight")
    space = d / "tiny.hy"
    space.write_text(TINY_SPACE)
    train_supernet(cfg(str(space), d / "run"), progress=False)
    return str(space), load_file(str(d / "run" / "supernet.safetensors"))


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class Crash(Exception):
    """Stands for the process dying at a chosen point."""


# CI's short form: a crash at the second checkpoint and at the final artefact.
@pytest.mark.parametrize("crash_at", [3, 4] if IN_CI else [1, 2, 3, 4])
def test_crash_at_each_replace_of_the_write_sequence_resumes_exactly(straight, tmp_path, monkeypatch, crash_at):
    # The write sequence of a 4-step run: config.json, checkpoint@2, checkpoint@4, supernet.
    # Crash at the n-th rename (the temporary is written, the rename never happens).
    space, want = straight
    out = tmp_path / "run"
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == crash_at:
            raise Crash(f"killed before renaming onto {dst}")
        return real(src, dst)

    monkeypatch.setattr(fileio.os, "replace", replace)
    with pytest.raises(Crash):
        train_supernet(cfg(space, out), progress=False)
    monkeypatch.setattr(fileio.os, "replace", real)
    assert not (out / "supernet.safetensors").exists()  # never a final artefact of an unfinished run
    resume = (out / "checkpoint.safetensors").exists()
    if resume:
        assert finite_checkpoint(out) in (2, 4)
    if crash_at == 1:  # killed before its first file: a run leaves nothing, not even its directory
        assert not out.exists()
    else:
        # what a writer killed mid-write leaves (a crash here removes its own temporary)
        for name in (".checkpoint.safetensors.k1l2.tmp", ".supernet.safetensors.x9.tmp", ".pareto.png.ab.tmp.png"):
            (out / name).write_bytes(b"half a file")
    train_supernet(cfg(space, out), resume=resume, progress=False)
    assert same_weights(load_file(str(out / "supernet.safetensors")), want)
    assert litter(out) == []


@pytest.mark.slow
@pytest.mark.skipif(IN_CI, reason="CI's short form: a child process importing torch takes seconds; "
                    "the crash tests above plant the same litter by hand")
def test_kill_9_mid_write_leaves_litter_that_resume_removes(straight, tmp_path):
    # A real process killed (SIGKILL) right after writing the temporary of its second
    # checkpoint, before the rename: the first checkpoint and a temporary stay behind.
    space, want = straight
    out = tmp_path / "run"
    child = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        import torch; torch.set_num_threads(1)
        from hyctas_dsl import fileio
        from hyctas_dsl.jobs.supernet_training import train_supernet
        from tests.test_rundir import cfg
        real = os.replace
        def replace(src, dst):
            if str(dst).endswith("checkpoint.safetensors") and os.path.exists(dst):
                os.kill(os.getpid(), signal.SIGKILL)
            return real(src, dst)
        fileio.os.replace = replace
        train_supernet(cfg({space!r}, {str(out)!r}), progress=False)
    """)
    r = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == -9, r.stderr[-2000:]
    assert any(n.startswith(".checkpoint.safetensors.") for n in litter(out))
    assert finite_checkpoint(out) == 2
    train_supernet(cfg(space, out), resume=True, progress=False)
    assert litter(out) == []
    assert same_weights(load_file(str(out / "supernet.safetensors")), want)


def test_crash_between_checkpoint_and_final_artefact_is_never_stale(straight, tmp_path, monkeypatch):
    space, want = straight
    out = tmp_path / "run"
    train_supernet(cfg(space, out, steps=2), progress=False)  # a finished 2-step run
    old = load_file(str(out / "supernet.safetensors"))
    from hyctas_dsl.compiler import checkpoint

    def crash(*a, **k):
        raise Crash("killed before writing supernet.safetensors")

    monkeypatch.setattr(checkpoint, "save_supernet", crash)
    with pytest.raises(Crash):
        train_supernet(cfg(space, out, steps=4), resume=True, progress=False)
    monkeypatch.undo()
    assert finite_checkpoint(out) == 4
    # the 2-step supernet is gone: a search cannot pick up stale weights
    assert not (out / "supernet.safetensors").exists()
    train_supernet(cfg(space, out, steps=4), resume=True, progress=False)  # re-derived, no training
    got = load_file(str(out / "supernet.safetensors"))
    assert same_weights(got, want) and not same_weights(got, old)


def poison_batchnorm_at(monkeypatch, call: int):
    """Make a BatchNorm variance infinite while the supernet samples its ``call``-th subnet:
    the loss stays finite (training uses batch statistics), only the buffer is spoilt."""
    from hyctas_dsl.compiler import Supernet

    real, n = Supernet.subnet, [0]

    def subnet(self, arch):
        n[0] += 1
        if n[0] == call:
            bn = next(m for m in self.modules() if isinstance(m, torch.nn.BatchNorm2d))
            bn.running_var.fill_(float("inf"))
        return real(self, arch)

    monkeypatch.setattr(Supernet, "subnet", subnet)


def test_divergence_in_a_buffer_keeps_the_last_good_checkpoint_and_resume_lowers_lr(straight, tmp_path, monkeypatch):
    space, _want = straight
    out = tmp_path / "run"
    poison_batchnorm_at(monkeypatch, call=3)  # during step 2 (0-based), after checkpoint@2
    with pytest.raises(TrainingDiverged, match=r"running_var.*NaN or infinite by step 3.*checkpoint \(step 2\)") as e:
        train_supernet(cfg(space, out), progress=False)
    assert "--resume" in str(e.value)
    monkeypatch.undo()
    assert finite_checkpoint(out) == 2  # the spoilt state of step 4 was never written
    with pytest.raises(ResumeMismatch, match="lower --lr"):
        train_supernet(cfg(space, out, lr=0.02), resume=True, progress=False)
    train_supernet(cfg(space, out, lr=0.005), resume=True, progress=False)
    assert finite_checkpoint(out) == 4
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert {"step": 2, "event": "lr_lowered", "from": 0.01, "to": 0.005} in log
    assert any(r.get("event") == "diverged" and r["at_step"] == 3 for r in log), log


def test_a_second_run_on_the_same_directory_is_refused_naming_the_holder(space_file, tmp_path):
    out = tmp_path / "run"
    with RunDir(out, "train-supernet", "hyctas-supernet-train-1"):
        with pytest.raises(RunDirError, match=rf"in use by another run \(pid {os.getpid()}"):
            train_supernet(cfg(space_file, out), progress=False)
        # another process too (an OS lock, not a file that says so); CI's short form relies
        # on the check above, which is the same OS lock taken through another descriptor
        if not IN_CI:
            r = subprocess.run([sys.executable, "-m", "hyctas_dsl.cli", "train-supernet", "--space", space_file,
                                "--data", DATA, "--out", str(out), "--steps", "1", "-q"],
                               capture_output=True, text=True, timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"))
            assert r.returncode == 2 and "in use by another run" in r.stderr
            assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not (out / "checkpoint.safetensors").exists()
    train_supernet(cfg(space_file, out, steps=1), progress=False)  # the lock went with its holder


def test_damaged_and_foreign_checkpoints_are_resume_errors_before_loading(space_file, tmp_path):
    out = tmp_path / "run"
    train_supernet(cfg(space_file, out, steps=2), progress=False)
    ck = out / "checkpoint.safetensors"
    data = ck.read_bytes()
    # another space: found from the metadata, before any weight is loaded
    other = tmp_path / "other.hy"
    other.write_text(TINY_SPACE.replace("widths 6 12", "widths 6 9 12"))
    with pytest.raises(ResumeMismatch, match="another space"):
        train_supernet(cfg(str(other), out, steps=4), resume=True, progress=False)
    Path(space_file).write_text(TINY_SPACE.replace("widths 6 12", "widths 6 9 12"))  # same path, new content
    with pytest.raises(ResumeMismatch, match="another space"):
        train_supernet(cfg(space_file, out, steps=4), resume=True, progress=False)
    Path(space_file).write_text(TINY_SPACE)
    for damaged in (data[: len(data) // 2], data[:5], b"\x00" * 64):
        ck.write_bytes(damaged)
        with pytest.raises(ResumeMismatch, match="damaged checkpoint"):
            train_supernet(cfg(space_file, out, steps=4), resume=True, progress=False)
    r = CliRunner().invoke(_cli(), ["train-supernet", "--space", space_file, "--data", DATA, "--out", str(out),
                                    "--steps", "4", "--batch", "4", "--seed", "5", "--lr", "0.01",
                                    "--checkpoint-every", "2", "--resume", "-q"])
    assert r.exit_code == 2 and "damaged checkpoint" in r.output and "Traceback" not in r.output


def _cli():
    _register_commands()
    return app


@pytest.mark.parametrize("where", ["file", "below a file"])
def test_out_that_is_a_file_is_one_line(space_file, tmp_path, where):
    f = tmp_path / "f"
    f.write_text("")
    out = f if where == "file" else f / "run"
    r = CliRunner().invoke(_cli(), ["train-supernet", "--space", space_file, "--data", DATA, "--out", str(out), "-q"])
    assert r.exit_code == 2 and f"--out {out}" in r.output and len(r.output.strip().splitlines()) == 1


@pytest.fixture()
def tmpfs(tmp_path):
    """A tiny file system of our own (root may mount one); skipped with the reason where not."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()

    def mount(opts: str) -> Path:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(mnt)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or 'mount failed'}); needs root")
        return mnt

    yield mount
    subprocess.run(["umount", str(mnt)], capture_output=True)


def test_read_only_output_directory_is_one_line(space_file, tmpfs):
    mnt = tmpfs("ro,size=64k")
    r = CliRunner().invoke(_cli(), ["train-supernet", "--space", space_file, "--data", DATA, "--out", str(mnt / "run"), "-q"])
    assert r.exit_code == 2 and "read-only" in r.output and len(r.output.strip().splitlines()) == 1


def test_full_disk_is_one_line_and_leaves_no_half_file(space_file, tmpfs):
    mnt = tmpfs("size=48k")  # room for the records, not for a checkpoint
    out = mnt / "run"
    r = CliRunner().invoke(_cli(), ["train-supernet", "--space", space_file, "--data", DATA, "--out", str(out),
                                    "--steps", "2", "--batch", "4", "-q"])
    assert r.exit_code == 2, r.output
    assert "no space left" in r.output and len(r.output.strip().splitlines()) == 1
    assert litter(out) == [] and not (out / "checkpoint.safetensors").exists()


def test_eval_refuses_non_finite_weights(tmp_path):
    from hyctas_dsl.language.api import load
    from hyctas_dsl.compiler import export
    from hyctas_dsl.compiler.checkpoint import save_model

    arch = load(ROOT / "archs" / "hyctas_s.hy").archs[0]
    model = export(arch, classes=11)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    save_model(model, arch, tmp_path / "nan.safetensors", 11)
    r = CliRunner().invoke(_cli(), ["eval", str(ROOT / "archs" / "hyctas_s.hy"), "--weights", str(tmp_path / "nan.safetensors"),
                                    "--data", "digits:size=32,train=8,val=4", "-q"])
    assert r.exit_code == 2 and "NaN or infinite" in r.output and "mIoU" not in r.output


def test_unexpected_exception_is_a_bug_report_with_exit_123(space_file, tmp_path, monkeypatch):
    from hyctas_dsl.jobs import supernet_training as supernet

    def boom(*a, **k):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(supernet, "train_supernet", boom)
    r = CliRunner().invoke(_cli(), ["train-supernet", "--space", space_file, "--data", DATA, "--out", str(tmp_path / "r"), "-q"])
    assert r.exit_code == 123
    line = r.output.strip()
    assert len(line.splitlines()) == 1 and "internal error" in line and "ZeroDivisionError" in line
    trace = Path(line.rsplit(" ", 1)[-1])
    assert "Traceback" in trace.read_text() and "boom" in trace.read_text()
    trace.unlink()


def test_missing_optional_package_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if the [train] extra were not installed
    r = CliRunner().invoke(_cli(), ["compile", str(ROOT / "archs" / "hyctas_s.hy"), "--input", "64x64",
                                    "--export", str(tmp_path / "m.onnx")])
    assert r.exit_code == 2 and "install hyctas[train]" in r.output and "Traceback" not in r.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, message", [
    (["train-supernet", "--space", "nonexistent", "--data", DATA], "no space file `nonexistent`"),
    (["search", "--supernet", "EMPTY", "--data", DATA], "no supernet.safetensors"),
    (["train", str(ROOT / "archs" / "hyctas_s.hy"), "--data", DATA, "--resume"], "no checkpoint.safetensors to resume from"),
])
def test_missing_inputs_of_a_job_are_one_line(tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    args = [str(tmp_path / "empty") if a == "EMPTY" else a for a in args]
    out = ["--emit-dsl" if args[0] == "search" else "--out", str(tmp_path / "out")]
    r = CliRunner().invoke(_cli(), [*args, *out, "-q"])
    assert r.exit_code == 2 and message in r.output and len(r.output.strip().splitlines()) == 1, r.output


def test_a_run_that_fails_before_writing_leaves_nothing_it_made(space_file, tmp_path):
    """Bad data fails before the first checkpoint: no directory, no lock file left behind
    (a directory the user made stays, empty)."""
    from hyctas_dsl.data import DataError

    fresh = tmp_path / "fresh"
    with pytest.raises(DataError):
        train_supernet(cfg(space_file, fresh, data="cityscapes:" + str(tmp_path / "missing")), progress=False)
    assert not fresh.exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    with pytest.raises(DataError):
        train_supernet(cfg(space_file, mine, data="cityscapes:" + str(tmp_path / "missing")), progress=False)
    assert mine.is_dir() and not any(mine.iterdir())


def test_a_bad_tensor_on_another_process_stops_this_one_too(tmp_path):
    """Processes training different subnets hold different BatchNorm buffers: when one finds
    a bad tensor at a checkpoint, every one stops there, and the writer keeps the last good
    checkpoint and logs the divergence (so that --resume with a lower --lr is accepted)."""
    out = tmp_path / "run"
    model = torch.nn.BatchNorm2d(2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    c = SupernetConfig(out=str(out)).resolved()
    with pytest.raises(TrainingDiverged, match=r"`a tensor of another process` became NaN or infinite by step 7.*checkpoint \(step 4\)"):
        with RunDir(out, "train-supernet", "hyctas-test-1") as run:
            run.begin(c, model, opt, False, set(), {})
            run.save(model, opt, 4, c, 0.5, {}, any_rank=lambda bad: bad)  # nobody's bad: written
            run.save(model, opt, 8, c, 0.5, {}, any_rank=lambda bad: True)  # another process's is
    assert finite_checkpoint(out) == 4
    assert any(r.get("event") == "diverged" for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()))
