"""Standalone artefacts of a network, written atomically and run back the way a deployment
would: ONNX, TorchScript, safetensors (arch text as metadata) and a torch-only ``model.py``.
Used by ``hyctas compile --export`` and ``hyctas export``."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import torch

from hyctas_dsl.compiler.checkpoint import load_model, save_model, write_python
from hyctas_dsl.fileio import atomic_path

__all__ = ["EXPORTS", "write_artifact", "run_artifact", "max_abs_diff", "onnx_output_names"]

EXPORTS = {
    ".onnx": "ONNX (torch.onnx.export, checked against onnxruntime when installed)",
    ".pt": "TorchScript (torch.jit.script)",
    ".safetensors": "standalone weights with the arch text as metadata",
    ".py": "self-contained Python file (torch only) + weights beside it",
}


def max_abs_diff(got, want) -> float:
    """Largest absolute difference of two outputs: tensors or arrays, or tuples of them (a
    panoptic network's logits, centre heatmap and offsets)."""
    gs = list(got) if isinstance(got, (tuple, list)) else [got]
    ws = list(want) if isinstance(want, (tuple, list)) else [want]
    if len(gs) != len(ws):
        return float("inf")
    return max(float(abs(g - w).max()) for g, w in zip(gs, ws))


def onnx_output_names(arch) -> list[str]:
    """The ONNX graph's output names: ``logits``, and ``center`` and ``offset`` for a panoptic arch."""
    return ["logits", "center", "offset"] if arch.task == "panoptic" else ["logits"]


def write_artifact(path: Path, arch, model, supernet, size: tuple[int, int], classes: int) -> str:
    """Write one export, chosen by the suffix of ``path``; returns a one-line description."""
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        save_model(model, arch, path, classes)
        return f"{path}: weights (safetensors) with the arch as metadata"
    if suffix == ".py":
        py, weights = write_python(arch, path, supernet, model=model, classes=classes)
        return f"{py}: self-contained network (torch only), weights in {weights}"
    model = model.eval()
    if suffix == ".pt":
        with atomic_path(path, ".pt") as tmp:
            torch.jit.script(model).save(str(tmp))
        return f"{path}: TorchScript (torch.jit.load it; no hyctas needed)"
    import onnx  # noqa: F401 - the exporter needs it; a missing package is named before any work

    x = torch.randn(1, 3, *size)
    with atomic_path(path, ".onnx") as tmp:
        # The exporter reports progress on stdout; keep stdout for the report (and --json).
        with contextlib.redirect_stdout(sys.stderr):
            # One self-contained file: external data would be named after the temporary file
            # and lost with it.
            names = {"output_names": onnx_output_names(arch)} if arch.task == "panoptic" else {}
            torch.onnx.export(model, (x,), str(tmp), dynamo=True, verbose=False, external_data=False, **names)
        try:
            got = _onnxruntime(tmp, x)
            with torch.no_grad():
                want = model(x)
            note = f", onnxruntime max abs diff {max_abs_diff(got, want):.1e}"
        except ImportError:
            note = " (onnxruntime not installed: not checked)"
    return f"{path}: ONNX for 1x3x{size[0]}x{size[1]} inputs{note}"


def _onnxruntime(path: Path, x: torch.Tensor):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outs = [torch.from_numpy(o) for o in sess.run(None, {sess.get_inputs()[0].name: x.numpy()})]
    return tuple(outs) if len(outs) > 1 else outs[0]  # a panoptic network has three outputs


def run_artifact(path: Path, fmt: str, x: torch.Tensor):
    """Run the written artefact on ``x`` (None when the format's runtime is not installed)."""
    if fmt == "torchscript":
        return torch.jit.load(str(path)).eval()(x)
    if fmt == "safetensors":
        return load_model(path).eval()(x)
    if fmt == "python":
        import importlib.util

        spec = importlib.util.spec_from_file_location(f"hyctas_export_{abs(hash(str(path)))}", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod.load()(x)
    try:
        return _onnxruntime(path, x)
    except ImportError:
        return None
