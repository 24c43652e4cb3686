"""Latency as the paper measures it (section 4.2, "Evaluation"): batch 1, the input already
on the device, a warm-up until steady, then timed runs for a fixed time; we report the median
and the measurement's own noise (p10 and p90 of the timed runs, and their coefficient of
variation, std / mean), always with the protocol that produced them."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch

__all__ = ["Latency", "measure_latency", "stable", "summarize"]


@dataclass(frozen=True)
class Latency:
    median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int
    device: str
    dtype: str
    input: str
    backend: str
    threads: int
    warmup_s: float
    timed_s: float
    cv: float = 0.0  # std / mean of the timed runs: the measurement's repeat noise
    # the fastest timed run: on a machine shared with other jobs, the runs the scheduler did not
    # interrupt; what the network itself costs, and the statistic the latency model predicts
    min_ms: float = 0.0
    # every timed run (ms), so that rounds can be pooled; not written out
    samples: tuple = field(default=(), repr=False, compare=False)
    # "stable": timing stopped once the fastest run had stopped improving (at most timed_s)
    stop: str = "time"

    @property
    def fps(self) -> float:
        return 1000.0 / self.median_ms

    @property
    def protocol(self) -> str:
        return (
            f"batch 1, {self.input}, {self.device}"
            + (f" ({self.threads} thread{'s' * (self.threads > 1)})" if self.device == "cpu" else "")
            + f", {self.dtype}, {self.backend}, "
            + (f"warm-up {self.warmup_s:g} s, median of {self.runs} runs in {self.timed_s:g} s " if self.stop != "stable"
               else f"warm-up {WARMUP_RUNS} runs (at most {self.warmup_s:g} s), median of {self.runs} runs until "
                    f"the fastest was stable (at most {self.timed_s:g} s) ")
            + f"(fastest {self.min_ms:.3g}, p10..p90 {self.p10_ms:.3g}..{self.p90_ms:.3g} ms, CV {self.cv:.1%})"
        )

    def to_json(self) -> dict:
        d = asdict(self)
        del d["samples"]
        d["protocol"] = self.protocol
        return d


def summarize(times_ms: Sequence[float]) -> dict:
    """median, fastest, p10, p90, CV and run count of timed runs (ms)."""
    times = sorted(times_ms)
    # inclusive: stays within the observed range with few runs (exclusive can go below 0)
    q = statistics.quantiles(times, n=10, method="inclusive") if len(times) >= 2 else [times[0]] * 9
    mean = statistics.fmean(times)
    cv = statistics.pstdev(times) / mean if len(times) >= 2 and mean > 0 else 0.0
    return {"median_ms": statistics.median(times), "p10_ms": q[0], "p90_ms": q[-1], "cv": cv, "runs": len(times),
            "min_ms": times[0]}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def measure_latency(
    model: torch.nn.Module,
    input_size: tuple[int, int],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    warmup_s: float = 0.5,
    timed_s: float = 6.0,
    min_runs: int = 3,
    backend: str = "eager",
    channels_last: bool = False,
    threads: int | None = None,
    stop_when_stable: bool = False,
) -> Latency:
    """Time ``model`` on one ``3 x H x W`` image already on ``device``. On the CPU,
    ``threads`` fixes torch's thread count for the measurement (1 gives stable numbers on a
    shared machine, where spinning OpenMP threads make timings jump by 100x).

    ``stop_when_stable``: warm up for at most ``WARMUP_RUNS`` runs (or ``warmup_s``), and stop
    timing once the fastest run has stopped improving (``stable``), or after ``timed_s``: at
    about 1 ms a run, the fastest run settles within tens of runs, so a 0.3 s budget mostly
    measured the same minimum again (the search measures hundreds of such networks)."""
    device = torch.device(device)
    saved_threads = torch.get_num_threads()
    if threads is not None and device.type == "cpu":
        torch.set_num_threads(threads)
    try:
        return _measure(model, input_size, device, dtype, warmup_s, timed_s, min_runs, backend, channels_last,
                        stop_when_stable)
    finally:
        torch.set_num_threads(saved_threads)


# stop_when_stable: warm-up runs (at most), the fewest timed runs, and "stable" = no new fastest
# run (by more than STABLE_REL) in the last half of the runs
WARMUP_RUNS = 10
STABLE_MIN_RUNS = 20
STABLE_REL = 0.01


def stable(times: Sequence[float]) -> bool:
    """Whether the fastest of ``times`` has stopped improving: at least ``STABLE_MIN_RUNS``
    runs, and none in the later half faster by more than ``STABLE_REL`` than the earlier half's
    fastest."""
    n = len(times)
    if n < STABLE_MIN_RUNS:
        return False
    first = min(times[: n // 2])
    return min(times[n // 2:]) >= first * (1 - STABLE_REL)


def _measure(model, input_size, device, dtype, warmup_s, timed_s, min_runs, backend, channels_last,
             stop_when_stable=False) -> Latency:
    model = model.eval().to(device=device, dtype=dtype)
    x = torch.randn(1, 3, *input_size, device=device, dtype=dtype)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    t_end = time.perf_counter() + warmup_s
    model(x)  # at least one warm-up run, whatever warmup_s says
    warm = 1
    while time.perf_counter() < t_end and not (stop_when_stable and warm >= WARMUP_RUNS):
        model(x)
        warm += 1
    _sync(device)
    times: list[float] = []
    t_stop = time.perf_counter() + timed_s
    while time.perf_counter() < t_stop or len(times) < min_runs:
        t0 = time.perf_counter()
        model(x)
        _sync(device)
        times.append((time.perf_counter() - t0) * 1000.0)
        if stop_when_stable and len(times) >= min_runs and stable(times):
            break
    name = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))
    return Latency(
        **summarize(times),
        device=str(device.type) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        dtype=name,
        input=f"1x3x{input_size[0]}x{input_size[1]}",
        backend=backend + (", channels-last" if channels_last else ", contiguous"),
        threads=torch.get_num_threads(),
        warmup_s=warmup_s,
        timed_s=timed_s,
        samples=tuple(times),
        stop="stable" if stop_when_stable else "time",
    )
