"""A per-device lookup table of module latencies: a fast latency predictor for the search.

Each top-level module of a standalone network (the stem, one module per cell or fusion node,
the head) is timed once on its own, at batch 1 with the input shapes it sees in the network,
and stored under a key of its class, constructor arguments and input shapes. A network's
predicted latency is the sum over its modules. What the sum leaves out (the sums of fusion
nodes, the final resize, Python overhead between modules) is the predictor's error, which
the search reports against measurement for the final front.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from hyctas_dsl.jobs.io import write_json

__all__ = ["LatencyLUT"]


def _time(module: nn.Module, args: tuple, runs: int, warmup: int) -> float:
    with torch.inference_mode():
        for _ in range(warmup):
            module(*args)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            module(*args)
            times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def _shapes(args) -> list:
    out = []
    for a in args:
        if isinstance(a, torch.Tensor):
            out.append(list(a.shape))
        elif isinstance(a, (list, tuple)):
            out.append(_shapes(a))
        else:
            out.append(repr(a))
    return out


class LatencyLUT:
    """Module latencies in ms, keyed by what determines them; one table per device."""

    def __init__(self, device: str = "cpu", runs: int = 10, warmup: int = 2, threads: int | None = 1):
        # threads: as in the measurement it predicts (run.latency.measure_latency).
        self.device, self.runs, self.warmup, self.threads = device, runs, warmup, threads
        self.table: dict[str, float] = {}
        self.hits = self.misses = 0

    def _key(self, module: nn.Module, args) -> str:
        desc = getattr(module, "_hyctas_key", None) or module.extra_repr() or type(module).__name__
        params = [list(p.shape) for p in module.parameters()]
        return json.dumps([type(module).__name__, desc, params, _shapes(args)], separators=(",", ":"))

    def predict(self, model: nn.Module, input_size: tuple[int, int]) -> float:
        """Predicted batch-1 latency of ``model`` (ms), timing only modules not seen before."""
        saved = torch.get_num_threads()
        if self.threads is not None and torch.device(self.device).type == "cpu":
            torch.set_num_threads(self.threads)
        try:
            return self._predict(model, input_size)
        finally:
            torch.set_num_threads(saved)

    @torch.inference_mode()
    def _predict(self, model: nn.Module, input_size: tuple[int, int]) -> float:
        model = model.eval()
        captured: list[tuple[nn.Module, tuple]] = []
        hooks = [
            child.register_forward_pre_hook(lambda m, args: captured.append((m, args)))
            for _name, child in model.named_children()
        ]
        try:
            model(torch.randn(1, 3, *input_size, device=self.device))
        finally:
            for h in hooks:
                h.remove()
        total = 0.0
        for module, args in captured:
            key = self._key(module, args)
            if key not in self.table:
                self.misses += 1
                self.table[key] = _time(module, args, self.runs, self.warmup)
            else:
                self.hits += 1
            total += self.table[key]
        return total

    def save(self, path: Path, device_info: dict) -> None:
        write_json(path, {"device": device_info, "runs": self.runs, "table": self.table})

    @classmethod
    def load(cls, path: Path, device: str = "cpu") -> "LatencyLUT":
        lut = cls(device)
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        lut.table = {k: float(v) for k, v in data.get("table", {}).items()}
        return lut
