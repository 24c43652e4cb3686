"""A latency predictor the search can rank with (paper section 3.4, Alg. 1: latency is one of
the two objectives), calibrated on this device by measurement.

Features come from what the compiled network actually runs: the standalone network of an
architecture is built on torch's ``meta`` device (shapes only, no arithmetic) and one forward
pass is traced at the torch-function level, so every call is seen - each convolution of the
cells, fusion nodes and head, the attention kernel, BatchNorm, ReLU, the sums of fusion nodes
and bypasses, every resize, pool, concat and copy. Each call adds to its kind's three
features: number of calls, multiply-accumulates and bytes moved (inputs + output, fp32).
A non-negative linear regression (scikit-learn) maps them to milliseconds; its intercept is
the per-forward overhead and the per-call coefficients the dispatch cost of each kind. This
is the per-op-feature regression the nn-Meter line of work compares against kernel lookup
tables; it needs no timing per candidate, only a calibration set of measured networks.

A fitted model holds only for the device and the measurement protocol it was calibrated
with (CPU model, torch version, threads, input size, dtype, layout): ``LatencyModel.load``
refuses any other with a one-line error.
"""

from __future__ import annotations

import json
import math
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from hyctas_dsl.language.ast import Arch
from hyctas_dsl.jobs.io import write_json

__all__ = ["KINDS", "LatencyModel", "LatencyModelError", "arch_features", "device_fingerprint", "FORMAT"]

FORMAT = "hyctas-latency-model/1"

# Kinds of torch calls; each contributes (calls, GMACs, MB moved). "view" calls move no data.
KINDS = ("conv3x3", "conv1x1", "attention", "batch_norm", "elementwise", "resize", "pool", "concat", "copy", "view")

_ELEMENTWISE = {"relu", "relu_", "add", "add_", "__add__", "__iadd__", "mul", "__mul__", "div", "__truediv__",
                "dropout", "sigmoid"}
_VIEWS = {"reshape", "view", "permute", "transpose", "flatten", "unbind", "__getitem__", "size", "dim", "chunk",
          "split", "narrow", "squeeze", "unsqueeze", "shape", "contiguous"}


class LatencyModelError(ValueError):
    """A latency model that cannot be used here (another device or protocol, bad file)."""


def _bytes(*ts) -> int:
    n = 0
    for t in ts:
        if isinstance(t, torch.Tensor):
            n += t.numel() * t.element_size()
        elif isinstance(t, (list, tuple)):
            n += _bytes(*t)
    return n


class _Tracer(TorchFunctionMode):
    """Adds every torch call's (calls, MACs, bytes) to its kind."""

    def __init__(self):
        super().__init__()
        self.f = {k: [0, 0.0, 0.0] for k in KINDS}

    def _add(self, kind: str, macs: float, nbytes: float) -> None:
        row = self.f[kind]
        row[0] += 1
        row[1] += macs
        row[2] += nbytes

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        out = _shape_only(name, args, kwargs)
        if out is None:
            out = func(*args, **kwargs)
        if func is F.conv2d or name == "conv2d":
            x, w = args[0], args[1]
            kind = "conv1x1" if w.shape[-1] == 1 and w.shape[-2] == 1 else "conv3x3"
            macs = out.numel() * w.shape[1] * w.shape[2] * w.shape[3]
            self._add(kind, macs, _bytes(x, w, out))
        elif name == "scaled_dot_product_attention":
            q = args[0]
            n_tok, d = q.shape[-2], q.shape[-1]
            macs = 2 * q.shape[0] * q.shape[1] * n_tok * n_tok * d
            self._add("attention", macs, _bytes(args[:3], out))
        elif name == "batch_norm":
            self._add("batch_norm", 0, _bytes(args[0], out))
        elif name in ("interpolate", "upsample_bilinear2d", "upsample"):
            self._add("resize", 0, _bytes(args[0], out))
        elif name in ("avg_pool2d", "max_pool2d", "adaptive_avg_pool2d"):
            self._add("pool", 0, _bytes(args[0], out))
        elif name in ("cat", "concat", "stack"):
            self._add("concat", 0, 2 * _bytes(out))
        elif name in ("pad",):
            self._add("copy", 0, _bytes(args[0], out))
        elif name == "contiguous":
            # a copy only when the layout changes (attention's q, k, v)
            self._add("copy" if out is not args[0] else "view", 0, 2 * _bytes(out) if out is not args[0] else 0)
        elif name in _ELEMENTWISE:
            self._add("elementwise", 0, _bytes(*[a for a in args if isinstance(a, torch.Tensor)], out))
        elif name in _VIEWS or name.startswith("__") or name in ("__get__",):
            if name not in ("__get__", "__repr__", "__format__", "__len__", "__bool__"):
                self._add("view", 0, 0)
        else:
            self._add("elementwise", 0, _bytes(out))
        return out


_SHAPE_ONLY = {"batch_norm", "relu", "relu_"}


def _shape_only(name: str, args, kwargs):
    """The output of the calls whose meta kernels are slow (Python decompositions), as an
    empty meta tensor of the right shape; None for every other call (they run on meta)."""
    if name == "cat" and args and isinstance(args[0], (list, tuple)) and args[0] and args[0][0].device.type == "meta":
        ts = args[0]
        dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
        if dim != 1 or any(t.dim() != 4 for t in ts):
            return None
        return torch.empty(ts[0].shape[0], sum(t.shape[1] for t in ts), *ts[0].shape[2:], device="meta",
                           memory_format=_layout(ts[0]))
    x = args[0] if args else None
    if not isinstance(x, torch.Tensor) or x.device.type != "meta":
        return None
    if name in _SHAPE_ONLY:
        return torch.empty(x.shape, device="meta", memory_format=_layout(x))
    if name in ("add", "__add__", "__iadd__", "add_") and isinstance(args[1], torch.Tensor) and args[1].shape == x.shape:
        return torch.empty(x.shape, device="meta", memory_format=_layout(x))
    if name == "avg_pool2d" and len(args) == 2 and isinstance(args[1], int) and not kwargs:
        k = args[1]
        return torch.empty(*x.shape[:2], x.shape[2] // k, x.shape[3] // k, device="meta", memory_format=_layout(x))
    if name == "conv2d":
        w = args[1]
        stride = args[3] if len(args) > 3 else kwargs.get("stride", 1)
        padding = args[4] if len(args) > 4 else kwargs.get("padding", 0)
        stride = (stride, stride) if isinstance(stride, int) else tuple(stride)
        padding = (padding, padding) if isinstance(padding, int) else tuple(padding)
        if isinstance(padding[0], str) or (len(args) > 5 and args[5] not in (1, (1, 1))):
            return None
        h = (x.shape[2] + 2 * padding[0] - w.shape[2]) // stride[0] + 1
        ww = (x.shape[3] + 2 * padding[1] - w.shape[3]) // stride[1] + 1
        return torch.empty(x.shape[0], w.shape[0], h, ww, device="meta", memory_format=_layout(x))
    if name == "interpolate":
        size = args[1] if len(args) > 1 else kwargs.get("size")
        if size is None:
            return None
        return torch.empty(*x.shape[:2], *size, device="meta", memory_format=_layout(x))
    return None


def _layout(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
        and not x.is_contiguous() else torch.contiguous_format


def meta_network(arch: Arch, input_size: tuple[int, int], classes: int, channels_last: bool):
    """``arch``'s standalone network and a batch-1 input on torch's ``meta`` device (shapes
    only, nothing computed), in the layout to be predicted."""
    from hyctas_dsl.compiler import export

    with torch.device("meta"):
        model = export(arch, classes=classes).eval()
        x = torch.empty(1, 3, *input_size)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    return model, x


def arch_features(arch: Arch, input_size: tuple[int, int], classes: int = 19, channels_last: bool = False) -> list[float]:
    """The feature vector of ``arch``'s standalone network at batch 1 and ``input_size``:
    for each kind in ``KINDS``, (calls, GMACs, MB moved), in that order."""
    model, x = meta_network(arch, input_size, classes, channels_last)
    tracer = _Tracer()
    with torch.no_grad(), tracer:
        model(x)
    out = []
    for k in KINDS:
        calls, macs, nbytes = tracer.f[k]
        out += [float(calls), macs / 1e9, nbytes / 1e6]
    return out


def feature_names() -> list[str]:
    return [f"{k}_{q}" for k in KINDS for q in ("calls", "gmacs", "mb")]


def device_fingerprint(device: str = "cpu") -> dict:
    """What a calibration depends on besides the protocol: the processor and the software."""
    dev = torch.device(device)
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
    else:
        name = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
    return {"type": dev.type, "name": name, "torch": torch.__version__.split("+")[0]}


@dataclass
class LatencyModel:
    """Predicted batch-1 latency (ms) = intercept + coef . features, coef >= 0."""

    device: dict
    protocol: dict  # input, dtype, threads, layout, warm-up and timed seconds of the measurements
    coef: list[float] = field(default_factory=list)
    intercept: float = 0.0
    # relative error on the calibration set (leave-one-out): how far to trust a prediction
    error_p90: float = math.nan
    error_max: float = math.nan
    calibration: list[dict] = field(default_factory=list)  # key, measured_ms, cv, predicted_ms

    @classmethod
    def fit(cls, features: Sequence[Sequence[float]], measured_ms: Sequence[float], device: dict, protocol: dict,
            keys: Sequence[str] | None = None, cvs: Sequence[float] | None = None) -> "LatencyModel":
        """Fit on measured networks; the relative error is estimated by leave-one-out."""
        import numpy as np
        from sklearn.linear_model import LinearRegression
        from sklearn.model_selection import LeaveOneOut, cross_val_predict

        X = np.asarray(features, dtype=float)
        y = np.asarray(measured_ms, dtype=float)
        if len(y) < 4:
            raise LatencyModelError(f"a latency model needs at least 4 measured networks, not {len(y)}")
        # Relative error is what the search cares about: weight each network by 1 / latency^2,
        # i.e. least squares on (prediction - measured) / measured.
        w = 1.0 / np.maximum(y, 1e-6) ** 2
        reg = LinearRegression(positive=True)
        reg.fit(X, y, sample_weight=w)
        loo = cross_val_predict(LinearRegression(positive=True), X, y, cv=LeaveOneOut(), params={"sample_weight": w})
        rel = np.abs(loo - y) / y
        keys = list(keys) if keys is not None else [str(i) for i in range(len(y))]
        cvs = list(cvs) if cvs is not None else [math.nan] * len(y)
        calib = [{"key": k, "measured_ms": float(m), "cv": float(c), "loo_predicted_ms": float(p)}
                 for k, m, c, p in zip(keys, y, cvs, loo)]
        return cls(device=dict(device), protocol=dict(protocol), coef=[float(c) for c in reg.coef_],
                   intercept=float(reg.intercept_), error_p90=float(np.quantile(rel, 0.9)),
                   error_max=float(rel.max()), calibration=calib)

    def predict(self, features: Sequence[float]) -> float:
        return self.intercept + sum(c * f for c, f in zip(self.coef, features))

    def predict_arch(self, arch: Arch, classes: int = 19) -> float:
        size = tuple(int(v) for v in self.protocol["input"].split("x")[-2:])
        return self.predict(arch_features(arch, size, classes, self.protocol.get("layout") == "channels-last"))

    # ---- persistence
    def to_json(self) -> dict:
        return {"format": FORMAT, "device": self.device, "protocol": self.protocol, "features": feature_names(),
                "coef": self.coef, "intercept": self.intercept, "error_p90": self.error_p90,
                "error_max": self.error_max, "calibration": self.calibration}

    def save(self, path: str | Path) -> None:
        write_json(Path(path), self.to_json())

    @classmethod
    def load(cls, path: str | Path, device: dict | None = None, protocol: dict | None = None) -> "LatencyModel":
        """Read a saved model; with ``device``/``protocol``, refuse one calibrated for others."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise LatencyModelError(f"{path}: not a readable latency model ({type(e).__name__}: {e})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise LatencyModelError(f"{path}: not a latency model of format {FORMAT}")
        if data.get("features") != feature_names():
            raise LatencyModelError(f"{path}: made with other features; calibrate a new one")
        refuse_other(path, data, device, protocol)
        return cls(device=data["device"], protocol=data["protocol"], coef=[float(c) for c in data["coef"]],
                   intercept=float(data["intercept"]), error_p90=float(data["error_p90"]),
                   error_max=float(data["error_max"]), calibration=list(data.get("calibration", [])))


def refuse_other(path: Path, data: dict, device: dict | None, protocol: dict | None) -> None:
    """Refuse a saved model (of either kind) calibrated for another device or protocol."""
    for what, want in (("device", device), ("protocol", protocol)):
        if want is None:
            continue
        have = data.get(what, {})
        diff = [f"{k} {have.get(k)!r} (here {v!r})" for k, v in want.items() if have.get(k) != v]
        if diff:
            raise LatencyModelError(f"{path}: calibrated for another {what}: " + ", ".join(diff)
                                    + "; calibrate one here (delete the file or give another path)")
