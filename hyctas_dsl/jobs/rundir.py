"""The run directory of a long job (supernet training, retraining, search): everything
around a training loop that must not lose or corrupt results, in one place.

- **One run at a time**: an OS lock (``fcntl.flock`` on ``.lock``) is held for the run's
  life and released by the OS if the process dies; a second run on the same directory gets
  one line naming the holder.
- **One checkpoint format**: ``checkpoint.safetensors`` holds ``model.*`` tensors (moved to
  the CPU), ``optim.*`` optimizer state and metadata (format, step, config, loss, and what
  the run trains: the arch or space text). It is written atomically, and only when every
  parameter, buffer (BatchNorm statistics too) and optimizer tensor is finite, so the last
  checkpoint is always a good one.
- **Resume checked before loading**: the metadata is read first; a damaged file, another
  format, another arch or space, or changed options are one-line errors before any weight
  is touched. After a divergence the learning rate may be lowered (recorded in the log).
- **Final artefacts** (``supernet.safetensors``, ``model.safetensors``) are derived from the
  last checkpoint when the run finishes; a run that is not finished has none (a stale one
  from an earlier, shorter run is removed when it continues), and resuming a finished run
  writes them again, so a crash between checkpoint and artefact never leaves a stale file.
- **Records**: ``config.json`` (effective config, environment) and ``log.jsonl``, trimmed on
  resume to the checkpoint's step so it reads as one run; temporaries a killed process left
  (``.NAME.*.tmp*``) are removed when a run starts.

Under torchrun only rank 0 locks and writes; every rank reads the checkpoint.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import torch

from hyctas_dsl.fileio import atomic_path, is_temporary
from hyctas_dsl.jobs.errors import ResumeMismatch, RunDirError, TrainingDiverged
from hyctas_dsl.jobs.io import environment, write_json

__all__ = ["RunDir", "Checkpoint", "CHECKPOINT", "LOCK", "is_finite"]

CHECKPOINT = "checkpoint.safetensors"
LOCK = ".lock"
LOG = "log.jsonl"


@dataclass
class Checkpoint:
    """A checkpoint's metadata (read without its tensors)."""

    path: Path
    step: int
    config: dict
    loss: float
    meta: dict = field(default_factory=dict)


def is_finite(t: torch.Tensor) -> bool:
    """Whether every value of ``t`` is finite. The minimum and maximum (NaN propagates to
    both) need one pass and no tensor-sized mask: 20x faster than ``isfinite(t).all()`` on
    50M floats (33 ms vs 632 ms on one CPU thread)."""
    if not t.is_floating_point() or t.numel() == 0:
        return True
    lo, hi = torch.aminmax(t.detach())
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


def _nonfinite(tensors: Iterable[tuple[str, torch.Tensor]]) -> Optional[str]:
    for name, t in tensors:
        if not is_finite(t):
            return name
    return None


class RunDir:
    """A long job's output directory; use as a context manager around the job.

    ``command`` names the job in records and lock messages; ``fmt`` is the checkpoint
    format (a run resumes only from its own kind); ``finals`` are the artefacts written when
    the run finishes; ``main`` is False on torchrun ranks other than 0."""

    def __init__(self, out: str | os.PathLike, command: str, fmt: str, finals: tuple[str, ...] = (), main: bool = True,
                 option: str = "--out"):
        self.out = Path(out)
        self.option = option  # how the user named the directory, for messages
        self.command, self.fmt, self.finals, self.main = command, fmt, finals, main
        self.checkpoint_path = self.out / CHECKPOINT
        self.log_path = self.out / LOG
        self.saved_step: Optional[int] = None
        self._lock_fd: Optional[int] = None
        self._created = self._lock_created = False

    # ---- opening: the path, the lock, litter

    def __enter__(self) -> "RunDir":
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> "RunDir":
        """Check the directory is usable, create it, take the lock, remove litter."""
        self._check_path()
        if not self.main:
            return self
        try:
            self._created = not self.out.exists()
            self._lock_created = not (self.out / LOCK).exists()
            self.out.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise self._path_error(e) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise RunDirError(f"{self.out} is in use by another run ({holder}); wait for it to finish or choose another "
                              f"{self.option}") from None
        self._lock_fd = fd
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, `hyctas {self.command}` since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        self._remove_temporaries()
        return self

    def close(self) -> None:
        if self._lock_fd is not None:
            # A run that failed before writing anything leaves nothing it made behind: its
            # lock file, and its directory if it made that (removed while still locked).
            try:
                if self._lock_created and [p.name for p in self.out.iterdir()] == [LOCK]:
                    (self.out / LOCK).unlink()
                    if self._created:
                        self.out.rmdir()
            except OSError:
                pass  # best effort: the run's own error is what the user needs to see
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def _check_path(self) -> None:
        for p in [self.out, *self.out.parents]:
            if p.exists():
                if not p.is_dir():
                    where = "is a file" if p == self.out else f"is below the file {p}"
                    raise RunDirError(f"{self.option} {self.out}: {where}; choose a directory")
                if not os.access(p, os.W_OK | os.X_OK) and p == self.out:
                    raise RunDirError(f"{self.option} {self.out}: the directory is not writable")
                break

    def _path_error(self, e: OSError) -> RunDirError:
        reason = {errno.EROFS: "on a read-only file system", errno.EACCES: "not writable (permission denied)",
                  errno.EPERM: "not writable (permission denied)", errno.ENOSPC: "no space left on the device",
                  errno.ENOTDIR: "a part of the path is a file"}.get(e.errno, e.strerror or str(e))
        return RunDirError(f"{self.option} {self.out}: {reason}")

    def _remove_temporaries(self) -> None:
        for p in self.out.iterdir():
            if p.is_file() and is_temporary(p.name):
                p.unlink()

    # ---- starting or resuming

    def read_checkpoint(self) -> Checkpoint:
        """The checkpoint's metadata, without loading a tensor; any damage is a resume error."""
        from safetensors import safe_open

        path = self.checkpoint_path
        if not path.is_file():
            raise ResumeMismatch(f"{self.out}: no {CHECKPOINT} to resume from")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
            config = json.loads(meta.get("config", "null"))
            step = int(meta.get("step", "x"))
        except Exception as e:  # noqa: BLE001 - a truncated or damaged file in any way
            raise ResumeMismatch(f"{path}: damaged checkpoint, cannot resume ({str(e).splitlines()[0][:120]}); "
                                 "start a new run in another --out") from None
        if meta.get("format") != self.fmt or not isinstance(config, dict):
            raise ResumeMismatch(f"{path}: not a checkpoint of `hyctas {self.command}`")
        return Checkpoint(path, step, config, float(meta.get("loss", "nan")), meta)

    def begin(self, cfg, model: torch.nn.Module, optimizer, resume: bool, resumable: set[str],
              identity: dict[str, str]) -> tuple[int, float]:
        """Start a fresh run or resume this one; returns (first step, last loss).

        ``identity`` (e.g. ``{"arch": text}``) is what the run trains: resuming with another
        is an error, found before the weights are loaded, as are changed options other than
        ``resumable`` ones (and a lower ``lr`` after a divergence, which is logged)."""
        if not resume:
            if self.checkpoint_path.exists():
                raise ResumeMismatch(f"{self.out} already holds a training run; pass --resume to continue it or choose another --out")
            self._remove_finals()
            if self.main:
                self._trim_log(0)
            self.saved_step = 0
            return 0, float("nan")
        ck = self.read_checkpoint()
        for key, value in identity.items():
            if ck.meta.get(key, value) != value:
                raise ResumeMismatch(f"{self.out}: the run trains another {key}; resume it with the same {key} "
                                     "or choose another --out")
        lowered = self._check_options(cfg, ck.config, resumable)
        self._load_tensors(model, optimizer)
        if ck.step < cfg.steps:
            self._remove_finals()
        if self.main:
            self._trim_log(ck.step)
            if lowered:
                self.log({"step": ck.step, "event": "lr_lowered", "from": lowered[0], "to": lowered[1]})
        self.saved_step = ck.step
        return ck.step, ck.loss

    def _check_options(self, cfg, saved: dict, resumable: set[str]) -> Optional[tuple[float, float]]:
        now = cfg.model_dump(mode="json")
        missing = [k for k in now if k not in saved]
        if missing:
            # Options added to the program after this run started: the run trained as they
            # resolve for its saved config today (a later default that changes training is refused).
            try:
                fields = type(cfg).model_fields
                old = type(cfg).model_validate({k: v for k, v in saved.items() if k in fields})
                old = old.resolved() if hasattr(old, "resolved") else old
                legacy = getattr(type(cfg), "LEGACY", {})
                saved = {**saved, **{k: legacy.get(k, old.model_dump(mode="json")[k]) for k in missing}}
            except ValueError:
                pass  # not a config this program can read: every missing option counts as changed
        changed = sorted(k for k, v in now.items() if k not in resumable and saved.get(k) != v)
        lowered = None
        if changed == ["lr"] and self._diverged() and now["lr"] < saved["lr"]:
            lowered, changed = (saved["lr"], now["lr"]), []
        if changed:
            hint = " (after a divergence, only a lower --lr)" if "lr" in changed and self._diverged() else ""
            raise ResumeMismatch(
                f"{self.out}: cannot resume with changed option(s) {', '.join(changed)}{hint} "
                f"(the run used {', '.join(f'{k}={saved.get(k)!r}' for k in changed)})"
            )
        return lowered

    def _diverged(self) -> bool:
        return any(r.get("event") == "diverged" for r in self.read_log())

    def _load_tensors(self, model: torch.nn.Module, optimizer) -> None:
        from safetensors import safe_open

        from hyctas_dsl.jobs.common import load_optimizer_tensors

        try:
            with safe_open(str(self.checkpoint_path), framework="pt") as f:
                state = {k[len("model.") :]: f.get_tensor(k) for k in f.keys() if k.startswith("model.")}
                optim = {k[len("optim.") :]: f.get_tensor(k) for k in f.keys() if k.startswith("optim.")}
            device = next(model.parameters()).device
            model.load_state_dict({k: v.to(device) for k, v in state.items()}, strict=True)
            load_optimizer_tensors(model, optimizer, optim)
        except Exception as e:  # noqa: BLE001 - damaged tensors, or tensors of another network
            raise ResumeMismatch(f"{self.checkpoint_path}: damaged checkpoint, cannot resume "
                                 f"({str(e).splitlines()[0][:120]}); start a new run in another --out") from None

    def _remove_finals(self) -> None:
        """A final artefact of an earlier, shorter run would be stale once this one goes on."""
        if self.main:
            for name in self.finals:
                (self.out / name).unlink(missing_ok=True)

    # ---- records

    def record_config(self, record: dict[str, Any], device=None) -> None:
        """config.json: the effective config and what is needed to repeat the run."""
        if self.main:
            write_json(self.out / "config.json", {"command": self.command, **record, "environment": environment(device)})

    def log(self, record: dict[str, Any]) -> None:
        """One JSON line of the run's log."""
        if self.main:
            with open(self.log_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def read_log(self) -> list[dict]:
        rows = []
        if self.log_path.exists():
            for line in self.log_path.read_text(encoding="utf-8").splitlines():
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    continue
        return rows

    def _trim_log(self, step: int) -> None:
        """Drop log lines past the checkpoint (and a finished run's final evaluation), so the
        log reads as one run."""
        if not self.log_path.exists():
            return
        keep = [r for r in self.read_log() if isinstance(r.get("step"), int) and r["step"] <= step and "val_miou" not in r]
        with atomic_path(self.log_path) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in keep), encoding="utf-8")

    # ---- checkpoints

    def check_loss(self, loss: float, step: int, lr: float) -> None:
        """Stop at the first non-finite loss, before the optimizer step can spoil the weights."""
        if not math.isfinite(loss):
            raise self._diverged_error(f"the loss became {loss} at step {step}", step, lr)

    def save(self, model: torch.nn.Module, optimizer, step: int, cfg, loss: float, identity: dict[str, str],
             any_rank: Optional[Callable[[bool], bool]] = None) -> None:
        """Write the checkpoint of ``step`` atomically, if every tensor is finite; otherwise
        keep the last good one and raise :class:`TrainingDiverged`. ``any_rank(bad)`` (with
        several processes) says whether any process found a bad tensor: BatchNorm buffers
        differ between processes that train different subnets, and all must stop together."""
        from hyctas_dsl.jobs.common import optimizer_tensors

        state = model.state_dict()
        optim = optimizer_tensors(model, optimizer)
        bad = _nonfinite(state.items()) or _nonfinite(optim.items())
        if any_rank is not None and any_rank(bad is not None) and bad is None:
            bad = "a tensor of another process"
        if bad:
            raise self._diverged_error(f"`{bad}` became NaN or infinite by step {step - 1}", step - 1, cfg.lr)
        if not self.main:  # rank 0 writes what every rank holds
            self.saved_step = step
            return
        from safetensors.torch import save_file

        tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in state.items()}
        tensors.update(optim)
        meta = {"format": self.fmt, "step": str(step), "config": cfg.model_dump_json(), "loss": repr(loss), **identity}
        with atomic_path(self.checkpoint_path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        self.saved_step = step

    def _diverged_error(self, what: str, step: int, lr: float) -> TrainingDiverged:
        kept = self.saved_step is not None and self.saved_step > 0 and self.checkpoint_path.exists()
        self.log({"step": self.saved_step or 0, "event": "diverged", "at_step": step, "lr": lr, "what": what})
        where = (f"the last good checkpoint (step {self.saved_step}) is kept in {self.checkpoint_path}; continue it with "
                 f"--resume and a smaller --lr than {lr}") if kept else f"no checkpoint was written yet (try a smaller --lr than {lr})"
        return TrainingDiverged(f"{what}; {where}")
