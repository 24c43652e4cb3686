"""``hyctas bench``: FPS as the paper measures it (section 4.2, "Evaluation": batch 1, the
image already on the device, warm-up, timed for six seconds), through ``latency.py``.

Comparisons run in one process and interleave: the timed seconds are cut into rounds and the
models take turns, so a slow phase of a shared machine hits all of them alike. The combined
figure and its spread (p10, p90, CV) are those of all timed runs of all rounds pooled.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch
from torch import nn

from hyctas_dsl.jobs.latency import Latency, measure_latency, summarize

__all__ = ["DTYPES", "prepare", "bench", "bench_interleaved", "format_rows", "default_channels_last"]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def default_channels_last(device) -> bool:
    """The memory layout for inference when the user names none: channels-last on the CPU,
    where oneDNN's convolutions run it without reorders (the zoo, 1 thread: 1.05x to 1.16x
    the FPS of the default layout at 512x1024 and for S at 1024x2048, docs/retrain.md); the
    default layout on a GPU, where it was not measured to be faster."""
    return torch.device(device).type == "cpu"


def prepare(model: nn.Module, compile: bool) -> tuple[nn.Module, str]:
    """The model to time and its backend name (torch.compile compiles on the first call,
    which ``measure_latency`` makes before its warm-up clock starts)."""
    model = model.eval()
    if compile:
        return torch.compile(model), "torch.compile"
    return model, "eager"


def bench(model: nn.Module, input_size: tuple[int, int], device, dtype: str = "fp32", seconds: float = 6.0,
          warmup: float = 1.0, channels_last: bool = False, compile: bool = False) -> Latency:
    m, backend = prepare(model, compile)
    return measure_latency(m, input_size, device, DTYPES[dtype], warmup, seconds, backend=backend, channels_last=channels_last)


def bench_interleaved(models: Sequence[nn.Module], input_size: tuple[int, int], device, dtype: str = "fp32",
                      seconds: float = 6.0, warmup: float = 1.0, channels_last: bool = False, compile: bool = False,
                      rounds: int = 3, settings: Sequence[dict] | None = None) -> list[Latency]:
    """Latency of several models (or of one model in several ``settings``: dicts of
    channels_last / compile) measured in turns; ``seconds`` is each one's total timed time."""
    settings = list(settings) if settings is not None else [{} for _ in models]
    prepared = []
    for m, s in zip(models, settings):
        prepared.append((*prepare(m, s.get("compile", compile)), s.get("channels_last", channels_last)))
    per: list[list[Latency]] = [[] for _ in prepared]
    for r in range(rounds):
        for i, (m, backend, cl) in enumerate(prepared):
            per[i].append(measure_latency(m, input_size, device, DTYPES[dtype], warmup if r == 0 else min(warmup, 0.2),
                                          seconds / rounds, backend=backend, channels_last=cl))
    out = []
    for lats in per:
        pooled = [t for l in lats for t in l.samples]
        out.append(dataclasses.replace(lats[0], **summarize(pooled), timed_s=sum(l.timed_s for l in lats),
                                       samples=tuple(pooled)))
    return out


def format_rows(names: Sequence[str], lats: Sequence[Latency]) -> str:
    width = max(len(n) for n in list(names) + ["arch"])
    lines = [f"{'arch':<{width}}  {'FPS':>8}  {'median ms':>10}  {'p10..p90 ms':>17}  {'CV':>6}  runs"]
    for n, l in zip(names, lats):
        lines.append(f"{n:<{width}}  {l.fps:8.2f}  {l.median_ms:10.2f}  {l.p10_ms:8.2f}..{l.p90_ms:<8.2f}  "
                     f"{l.cv:6.1%}  {l.runs}")
    return "\n".join(lines)
