"""torchrun support: one process per device, gloo on CPU, nccl on GPU (DESIGN.md "Scale").

Every function works unchanged in a plain single process (world size 1). :func:`launch` starts
the processes itself (what ``torchrun --standalone`` does, through the same torch elastic
launcher), so that a command can use a machine's cores without a launcher in front of it.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist

from hyctas_dsl.jobs.errors import JobError

__all__ = ["DistInfo", "cores", "launch", "any_rank", "init", "resolve_device", "shutdown", "all_gather_objects", "barrier", "split", "sum_gradients"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def resolve_device(device: str) -> torch.device:
    """``auto``, ``cpu``, ``cuda[:N]`` or ``mps`` as a device this machine has; anything else
    is a one-line JobError naming the option."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise JobError(f"--device {device}: not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise JobError(f"--device {device}: torch {torch.__version__} finds no CUDA GPU on this machine; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise JobError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise JobError(f"--device {device}: MPS is not available on this machine; use --device cpu")
    return dev


def init(device: str = "auto") -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank, world, local, dev)


def cores() -> int:
    """The CPU cores this process may run on (its affinity, where the OS says)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def launch(procs: int, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in ``procs`` processes on this machine, joined as one gloo process group
    (torch elastic, as ``torchrun --standalone --nproc-per-node procs`` would), each with an
    equal share of the cores; returns rank 0's result.

    When a process raises, it leaves the exception for this one and exits, and the launcher
    stops the others (which would otherwise wait in their next collective for a rank that
    is gone). The exception is raised here as it was (the lowest rank's, preferring one that
    is not a broken connection), its traceback attached as a note, so a user's mistake is
    reported as one line whether or not it happened in several processes.
    """
    import logging
    import signal

    # the launcher's own records of a failed process: the exception is reported here instead
    loggers = [logging.getLogger(name) for name in ("torch.distributed.elastic", "torch.multiprocessing")]
    levels = [lg.level for lg in loggers]
    # the launcher installs its own handlers (they raise its SignalException) and leaves them
    signals = [s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None), getattr(signal, "SIGQUIT", None)) if s]
    handlers = [signal.getsignal(s) for s in signals]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        return _launch(procs, fn, args)
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        for s, h in zip(signals, handlers):
            signal.signal(s, h)


def _launch(procs: int, fn: Callable[..., Any], args: tuple) -> Any:
    import pickle
    import tempfile
    import uuid
    from pathlib import Path

    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    threads = max(1, cores() // procs)
    with tempfile.TemporaryDirectory(prefix="hyctas-launch-") as errors_dir:
        config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=procs, run_id=str(uuid.uuid4()),
                              rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0,
                              monitor_interval=0.1, start_method="spawn",
                              logs_specs=DefaultLogsSpecs(log_dir=os.path.join(errors_dir, "logs")))  # removed with it
        try:
            return elastic_launch(config, _launched)(fn, threads, errors_dir, args)[0]
        except SignalException:
            raise KeyboardInterrupt from None  # Ctrl-C reached every process
        except ChildFailedError as failed:
            found = []
            for f in sorted(Path(errors_dir).glob("*.pickle"), key=lambda f: int(f.stem)):
                try:  # written by this call's own processes a moment ago
                    found.append(pickle.loads(f.read_bytes()))
                except Exception:  # noqa: BLE001 - one that could not finish writing
                    continue
            if not found:  # a process died without raising: killed, or out of memory
                rank, why = next(iter(failed.failures.items()))
                raise JobError(f"training process {rank} stopped with exit code {why.exitcode} without an error "
                               "(killed, or out of memory?); the last checkpoint is kept (use --resume)") from None
            found.sort(key=_is_connection_error)  # stable: lowest rank first within each kind
            raise found[0] from None


def _launched(fn: Callable[..., Any], threads: int, errors_dir: str, args: tuple) -> Any:
    import pickle
    import signal
    import traceback

    torch.set_num_threads(threads)
    # Ctrl-C reaches every process, and the launcher passes it on once more: the first one
    # stops the work (the run directory unwinds as in one process; torch's process wrapper
    # takes the KeyboardInterrupt quietly), the second is ignored instead of interrupting
    # that unwinding; the launching process says what happened
    def interrupted(_sig, _frame):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupted)
    # stopped by the launcher because another process failed: unwind (the run directory
    # removes what it made) instead of dying where it stands
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(143))
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 - carried to the launching process, which raises it
        e.add_note("in a launched process:\n" + "".join(traceback.format_exception(e)))
        rank = os.environ.get("RANK", "0")
        try:
            data = pickle.dumps(e)
            pickle.loads(data)  # some exceptions pickle but do not rebuild
        except Exception:  # noqa: BLE001 - such an exception arrives as its text
            data = pickle.dumps(RuntimeError("".join(traceback.format_exception(e))))
        tmp = os.path.join(errors_dir, f".{rank}.part")
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, os.path.join(errors_dir, f"{rank}.pickle"))  # whole, or not there
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)  # a failed process: the launcher stops the others
    finally:
        shutdown()


def _is_connection_error(e: BaseException) -> bool:
    return isinstance(e, dist.DistError) or (isinstance(e, RuntimeError) and "connection" in str(e).lower())


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_gather_objects(info: DistInfo, obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (a list of one item without torchrun)."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world
    dist.all_gather_object(out, obj)
    return out


def split(items: list, info: DistInfo) -> list:
    """This rank's share of ``items`` (round-robin, so costs spread evenly)."""
    return items[info.rank :: info.world]


def any_rank(flag: bool, info: DistInfo) -> bool:
    """Whether ``flag`` holds on any rank (every rank must call it)."""
    if not info.enabled:
        return flag
    t = torch.tensor([int(flag)], dtype=torch.uint8, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def sum_gradients(params: list[torch.Tensor], info: DistInfo, loss: torch.Tensor) -> torch.Tensor:
    """Sum the gradients of ``params`` over the ranks, in place, and return the sum of the
    ranks' ``loss`` (a scalar, carried in the same message).

    A supernet step touches a few percent of the supernet's weights (the sampled subnets'
    cells), and under ``subnet_per_rank`` each rank touches different ones. A parameter no
    rank touched keeps no gradient, so the optimizer skips it as it would in one process (a
    zero gradient would still move it through AdamW's moments); one touched on some ranks
    gets the sum, zeros standing in for the others. Which ones were touched is agreed first
    (one byte each), then their gradients travel as one flat tensor: DistributedDataParallel
    cannot do this, as it needs every rank to run the same graph.
    """
    if not info.enabled:
        return loss
    touched = torch.tensor([p.grad is not None for p in params], dtype=torch.uint8, device=info.device)
    dist.all_reduce(touched, op=dist.ReduceOp.MAX)
    used = [p for p, t in zip(params, touched.tolist()) if t]
    flat = torch.cat([loss.detach().reshape(1).to(torch.float32)]
                     + [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in used])
    dist.all_reduce(flat)
    for p, g in zip(used, flat[1:].split([p.numel() for p in used])):
        p.grad = g.view_as(p)
    return flat[0]
