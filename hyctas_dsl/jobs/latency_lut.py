"""Kernel-level latency records and the latency model built on them (the nn-Meter approach:
time each kernel once on the device, predict a network as the sum of its kernels' records plus
a fitted correction for what the records leave out).

A record is one top-level module of a standalone network (the stem, a cell, a fusion node,
the head) timed on its own at batch 1, at the exact input shapes it sees in the network, with
the measurement protocol's threads, dtype and layout. Its key is the module's full structure
(every layer with its channels, kernel and stride) and its input and output shapes, so a cell
met again in another network, at the same place in the resolution pyramid, is not timed again.
The shapes and keys come from one forward pass on torch's ``meta`` device (no arithmetic), so
predicting a network whose modules all have records times nothing.

What the records leave out is the glue between modules: the sums that feed fusion nodes'
outputs into the next cell, the input's padding, the crop of the logits, the per-call cost of
dispatching each module. The same meta pass counts it (calls and MB moved, as in
``latency_model``), and a non-negative linear regression (scikit-learn) on
[record sum, modules, glue calls, glue MB] fitted on measured networks maps it to the
measured latency; its leave-one-out error says how far to trust a prediction.

Records and correction are saved together as JSON (atomically) with the device and the
protocol; ``RecordsLatencyModel.load`` refuses a file made for another.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from hyctas_dsl.jobs.io import write_json
from hyctas_dsl.jobs.latency_model import FORMAT as FEATURES_FORMAT, LatencyModelError, _shape_only, _Tracer, meta_network, refuse_other
from hyctas_dsl.language.ast import Arch

__all__ = ["LatencyLUT", "RecordsLatencyModel", "CORRECTION_FEATURES", "RECORDS_FORMAT", "module_calls"]

RECORDS_FORMAT = "hyctas-latency-records/1"

# The correction's inputs, in this order (the record sum first).
CORRECTION_FEATURES = ("record_sum_ms", "modules", "glue_calls", "glue_mb")


def _shapes(args):
    """Nested shapes of a call's arguments (tensors as lists, other values as their repr)."""
    out = []
    for a in args:
        if isinstance(a, torch.Tensor):
            out.append(list(a.shape))
        elif isinstance(a, (list, tuple)):
            out.append(_shapes(a))
        else:
            out.append(repr(a))
    return out


def _tensors_like(shapes, device, dtype, channels_last: bool, gen: torch.Generator):
    """Random inputs of the nested ``shapes`` (inverse of ``_shapes``)."""
    out = []
    for s in shapes:
        if isinstance(s, list) and all(isinstance(v, int) for v in s):
            t = torch.randn(*s, generator=gen, dtype=dtype).to(device)
            if channels_last and t.dim() == 4:
                t = t.contiguous(memory_format=torch.channels_last)
            out.append(t)
        elif isinstance(s, list):
            out.append(_tensors_like(s, device, dtype, channels_last, gen))
        else:
            raise LatencyModelError(f"cannot rebuild a module input from {s!r}")
    return out


class _GlueTracer(_Tracer):
    """Counts the calls made between the top-level modules (``depth`` 0) only; the calls inside
    a module are in its record."""

    depth = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if self.depth:
            kwargs = kwargs or {}
            out = _shape_only(getattr(func, "__name__", str(func)), args, kwargs)
            return func(*args, **kwargs) if out is None else out
        return super().__torch_function__(func, types, args, kwargs)


@dataclass(frozen=True)
class ModuleCall:
    name: str  # attribute of the network (``s8_3``, ``fuse_s16_to_s8_4``, ``head``)
    key: str
    inputs: list  # nested input shapes


def module_calls(arch: Arch, input_size: tuple[int, int], classes: int = 19,
                 channels_last: bool = False) -> tuple[list[ModuleCall], list[float]]:
    """The top-level modules ``arch``'s standalone network calls at batch 1 and ``input_size``
    (in call order, with their record keys) and its glue: [calls, MB moved] of everything
    called between them. One forward pass on the ``meta`` device; nothing is computed."""
    model, x = meta_network(arch, input_size, classes, channels_last)
    tracer = _GlueTracer()
    calls: list[ModuleCall] = []
    top = {id(child): name for name, child in model.named_children()}
    pending: dict[int, list] = {}

    def pre(m, args):
        if id(m) in top:
            tracer.depth += 1
            pending[id(m)] = _shapes(args)

    def post(m, args, output):
        if id(m) not in top:
            return
        tracer.depth -= 1
        name, ins = top[id(m)], pending.pop(id(m))
        outs = _shapes(output if isinstance(output, (list, tuple)) else [output])
        structure = repr(m)  # every layer's channels, kernel, stride: what the record depends on
        digest = hashlib.sha1(structure.encode()).hexdigest()[:16]
        layout = "cl" if channels_last else "c"
        key = f"{type(m).__name__} {json.dumps(ins, separators=(',', ':'))}->" \
              f"{json.dumps(outs, separators=(',', ':'))} {layout} {digest}"
        calls.append(ModuleCall(name, key, ins))

    # two global hooks, not two per module: registering hooks on every child cost more than
    # the forward pass itself
    hooks = [nn.modules.module.register_module_forward_pre_hook(pre),
             nn.modules.module.register_module_forward_hook(post)]
    try:
        with torch.no_grad(), tracer:
            model(x)
    finally:
        for h in hooks:
            h.remove()
    glue_calls = sum(row[0] for k, row in tracer.f.items() if k != "view")
    glue_mb = sum(row[2] for row in tracer.f.values()) / 1e6
    return calls, [float(glue_calls), glue_mb]


def _flat(args):
    for a in args:
        if isinstance(a, torch.Tensor):
            yield a
        elif isinstance(a, (list, tuple)):
            yield from _flat(a)


def _time_module(module: nn.Module, args: list, stat: str, min_runs: int, min_s: float, warmup: int) -> float:
    """One record: ``warmup`` untimed calls, then at least ``min_runs`` timed calls and
    ``min_s`` seconds; the fastest or the median timed call (ms)."""
    from hyctas_dsl.jobs.latency import _sync

    device = next((a.device for a in _flat(args)), torch.device("cpu"))
    with torch.inference_mode():
        for _ in range(warmup):
            module(*args)
        _sync(device)
        times: list[float] = []
        t_stop = time.perf_counter() + min_s
        while len(times) < min_runs or time.perf_counter() < t_stop:
            t0 = time.perf_counter()
            module(*args)
            _sync(device)  # a GPU runs asynchronously: time the kernels, not their launch
            times.append((time.perf_counter() - t0) * 1000.0)
            if len(times) >= 1000:
                break
    return min(times) if stat == "fastest run" else statistics.median(times)


class LatencyLUT:
    """Kernel records (ms) of one device and protocol, keyed by module structure and shapes."""

    def __init__(self, protocol: dict, device: str = "cpu", min_runs: int = 5, min_s: float = 0.0, warmup: int = 2):
        # protocol: the measurement's (input, dtype, threads, layout, statistic), which the
        # records follow: batch 1, its threads, its layout, its statistic of the timed runs
        self.protocol, self.device = dict(protocol), device
        self.min_runs, self.min_s, self.warmup = min_runs, min_s, warmup
        self.table: dict[str, float] = {}
        self.hits = self.misses = 0
        self.seconds = 0.0  # spent timing records

    @property
    def size(self) -> tuple[int, int]:
        return tuple(int(v) for v in self.protocol["input"].split("x")[-2:])

    @property
    def channels_last(self) -> bool:
        return self.protocol.get("layout") == "channels-last"

    def calls(self, arch: Arch, classes: int = 19) -> tuple[list[ModuleCall], list[float]]:
        return module_calls(arch, self.size, classes, self.channels_last)

    def record_sum(self, arch: Arch, classes: int = 19, calls=None) -> float:
        """Sum of the records of ``arch``'s modules (ms), timing those not recorded yet."""
        calls = calls if calls is not None else self.calls(arch, classes)[0]
        missing = [c for c in calls if c.key not in self.table]
        self.hits += len(calls) - len(missing)
        if missing:
            self._record(arch, classes, missing)
        return sum(self.table[c.key] for c in calls)

    def retime(self, archs: Sequence[Arch], classes: int = 19) -> int:
        """Time the records of ``archs``' modules again and keep the faster of the two (the
        fastest-run statistic): a record timed once, in a busy phase of a shared machine, is
        slow for every network that uses it; a second pass at another time bounds that.
        Returns the number of records timed again."""
        done: set[str] = set()
        for arch in archs:
            calls = [c for c in self.calls(arch, classes)[0] if c.key not in done]
            if calls:
                self._record(arch, classes, calls, again=True)
                done.update(c.key for c in calls)
        return len(done)

    def _record(self, arch: Arch, classes: int, missing: list[ModuleCall], again: bool = False) -> None:
        from hyctas_dsl.compiler import export

        t0 = time.perf_counter()
        saved = torch.get_num_threads()
        threads = self.protocol.get("threads")
        if threads and torch.device(self.device).type == "cpu":
            torch.set_num_threads(int(threads))
        try:
            model = export(arch, classes=classes).eval().to(self.device)
            if self.channels_last:
                model = model.to(memory_format=torch.channels_last)
            gen = torch.Generator().manual_seed(0)
            stat = self.protocol.get("statistic", "fastest run")
            timed: set[str] = set()
            for c in missing:
                if c.key in timed or (c.key in self.table and not again):  # the same module twice in one network
                    continue
                timed.add(c.key)
                self.misses += not again
                args = _tensors_like(c.inputs, self.device, torch.float32, self.channels_last, gen)
                ms = _time_module(getattr(model, c.name), args, stat, self.min_runs, self.min_s, self.warmup)
                old = self.table.get(c.key)
                self.table[c.key] = ms if old is None else (min(old, ms) if stat == "fastest run" else (old + ms) / 2)
        finally:
            torch.set_num_threads(saved)
            self.seconds += time.perf_counter() - t0

    def features(self, arch: Arch, classes: int = 19) -> list[float]:
        """The correction's inputs (``CORRECTION_FEATURES``) for ``arch``."""
        calls, glue = self.calls(arch, classes)
        return [self.record_sum(arch, classes, calls), float(len(calls)), *glue]


@dataclass
class RecordsLatencyModel:
    """Predicted batch-1 latency (ms) = intercept + coef . [record sum, modules, glue calls,
    glue MB], coef >= 0; the records are timed on first use and kept."""

    device: dict
    protocol: dict
    coef: list[float] = field(default_factory=list)
    intercept: float = 0.0
    error_p90: float = math.nan
    error_max: float = math.nan
    calibration: list[dict] = field(default_factory=list)
    records: LatencyLUT | None = None

    kind = "records"

    @classmethod
    def fit(cls, features: Sequence[Sequence[float]], measured_ms: Sequence[float], device: dict, protocol: dict,
            records: LatencyLUT, keys: Sequence[str] | None = None,
            cvs: Sequence[float] | None = None) -> "RecordsLatencyModel":
        """The correction, fitted on measured networks (``features`` from ``records.features``);
        its relative error is estimated by leave-one-out."""
        from hyctas_dsl.jobs.latency_model import LatencyModel

        lm = LatencyModel.fit(features, measured_ms, device, protocol, keys=keys, cvs=cvs)
        return cls(device=lm.device, protocol=lm.protocol, coef=lm.coef, intercept=lm.intercept,
                   error_p90=lm.error_p90, error_max=lm.error_max, calibration=lm.calibration, records=records)

    def predict(self, features: Sequence[float]) -> float:
        return self.intercept + sum(c * f for c, f in zip(self.coef, features))

    def predict_arch(self, arch: Arch, classes: int = 19) -> float:
        return self.predict(self.records.features(arch, classes))

    # ---- persistence
    def to_json(self) -> dict:
        r = self.records
        return {"format": RECORDS_FORMAT, "predictor": "records", "device": self.device, "protocol": self.protocol,
                "features": list(CORRECTION_FEATURES), "coef": self.coef, "intercept": self.intercept,
                "error_p90": self.error_p90, "error_max": self.error_max, "calibration": self.calibration,
                "record_timing": {"warmup_calls": r.warmup, "min_runs": r.min_runs, "min_s": r.min_s},
                "records": dict(sorted(r.table.items()))}

    def save(self, path: str | Path) -> None:
        write_json(Path(path), self.to_json())

    @classmethod
    def load(cls, path: str | Path, device: dict | None = None, protocol: dict | None = None) -> "RecordsLatencyModel":
        """Read saved records and correction; with ``device``/``protocol``, refuse a file made
        for others (one-line ``LatencyModelError``)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise LatencyModelError(f"{path}: not a readable latency model ({type(e).__name__}: {e})") from None
        if isinstance(data, dict) and data.get("format") == FEATURES_FORMAT:
            raise LatencyModelError(f"{path}: a per-op features latency model, not a latency-records model; "
                                    "use it with the features predictor or calibrate a records one")
        if not isinstance(data, dict) or data.get("format") != RECORDS_FORMAT:
            raise LatencyModelError(f"{path}: not a latency-records model of format {RECORDS_FORMAT}")
        if data.get("features") != list(CORRECTION_FEATURES):
            raise LatencyModelError(f"{path}: made with other features; calibrate a new one")
        refuse_other(path, data, device, protocol)
        try:
            timing = data["record_timing"]
            lut = LatencyLUT(data["protocol"], device=(device or data["device"]).get("type", "cpu"),
                             min_runs=int(timing["min_runs"]), min_s=float(timing["min_s"]),
                             warmup=int(timing["warmup_calls"]))
            lut.table = {str(k): float(v) for k, v in data["records"].items()}
            return cls(device=data["device"], protocol=data["protocol"], coef=[float(c) for c in data["coef"]],
                       intercept=float(data["intercept"]), error_p90=float(data["error_p90"]),
                       error_max=float(data["error_max"]), calibration=list(data.get("calibration", [])), records=lut)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise LatencyModelError(f"{path}: a damaged latency-records model ({type(e).__name__}: {e})") from None
