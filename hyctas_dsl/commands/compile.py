"""``hyctas compile``: lower an arch to a torch module, print its cost report, export it.

A thin layer over :mod:`hyctas_dsl.compiler`. torch is imported inside the command only, so
``hyctas --help`` stays fast and works without torch.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from pathlib import Path
from typing import List, Optional

import typer

EXPORTS = {
    ".onnx": "ONNX (torch.onnx.export, checked against onnxruntime when installed)",
    ".pt": "TorchScript (torch.jit.script)",
    ".safetensors": "standalone weights with the arch text as metadata",
    ".py": "self-contained Python file (torch only) + weights beside it",
}


def parse_size(text: str) -> tuple[int, int]:
    """'1024x2048' -> (1024, 2048); anything else is a usage error."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text or "")
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise ValueError(f"--input must be HEIGHTxWIDTH in pixels, like 1024x2048, not {text!r}")
    return int(m.group(1)), int(m.group(2))


def _atomic_tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}{path.suffix}")


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


def _write_export(path: Path, arch, model, supernet, size: tuple[int, int], classes: int) -> str:
    """Write one export; returns a one-line description."""
    import torch

    from hyctas_dsl.compiler.checkpoint import save_model, write_python

    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        save_model(model, arch, path, classes)
        return f"{path}: weights (safetensors) with the arch as metadata"
    if suffix == ".py":
        py, weights = write_python(arch, path, supernet, model=model, classes=classes)
        return f"{py}: self-contained network (torch only), weights in {weights}"
    model = model.eval()
    tmp = _atomic_tmp(path)
    try:
        if suffix == ".pt":
            torch.jit.script(model).save(str(tmp))
            os.replace(tmp, path)
            return f"{path}: TorchScript (torch.jit.load it; no hyctas needed)"
        x = torch.randn(1, 3, *size)
        # The exporter reports progress on stdout; keep stdout for the report (and --json).
        with contextlib.redirect_stdout(sys.stderr):
            # One self-contained file: external data would be named after the temporary file
            # and lost with it.
            names = {"output_names": onnx_output_names(arch)} if arch.task == "panoptic" else {}
            torch.onnx.export(model, (x,), str(tmp), dynamo=True, verbose=False, external_data=False, **names)
        note = ""
        try:
            import onnxruntime as ort

            sess = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
            got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
            with torch.no_grad():
                want = model(x)
            want = [t.numpy() for t in want] if isinstance(want, tuple) else [want.numpy()]
            note = f", onnxruntime max abs diff {max_abs_diff(got, want):.1e}"
        except ImportError:
            note = " (onnxruntime not installed: not checked)"
        os.replace(tmp, path)
        return f"{path}: ONNX for 1x3x{size[0]}x{size[1]} inputs{note}"
    finally:
        if tmp.exists():
            tmp.unlink()
        data = tmp.with_name(tmp.name + ".data")
        if data.exists():
            data.unlink()


def register(app: typer.Typer) -> None:
    @app.command("compile")
    def compile_cmd(
        file: str = typer.Argument(..., help="Source file (.hy) holding the arch."),
        arch_name: Optional[str] = typer.Option(None, "--arch", help="Which arch of the file (default: the only one)."),
        space: Optional[str] = typer.Option(None, "--space", help="Validate against this space file (default: as `hyctas validate`)."),
        input_size: str = typer.Option("1024x2048", "--input", help="Input HEIGHTxWIDTH for the cost report and ONNX export."),
        classes: Optional[int] = typer.Option(None, "--classes", help="Output classes (default: the supernet's, else 19)."),
        supernet: Optional[str] = typer.Option(None, "--supernet", help="Supernet checkpoint (.safetensors) to take the weights from."),
        export: List[str] = typer.Option([], "--export", "-o", help="Write out.onnx | out.pt (TorchScript) | out.safetensors | model.py; repeatable."),
        seed: int = typer.Option(0, "--seed", help="Seed of the fresh initialisation when no supernet is given."),
        cells: bool = typer.Option(True, "--cells/--no-cells", help="Show the per-cell rows."),
        as_json: bool = typer.Option(False, "--json", help="Print the cost report and what was written as JSON."),
        task: Optional[str] = typer.Option(None, "--task", help="semantic | panoptic [default: the arch's `task`]."),
    ) -> None:
        """Lower an architecture to a PyTorch module and print its cost report: params,
        multiply-accumulates (every conv and both attention matmuls) and training activation
        memory, per part, per branch and per cell. With --supernet the weights are the
        supernet's slices; --export writes standalone files that need no hyctas.

        Exit 0 on success, 1 when the arch is invalid or does not fit the supernet, 2 for
        unreadable files and bad options.
        """
        from hyctas_dsl.cli import fail_usage, load_checked, load_space
        from hyctas_dsl.commands.draw import pick

        try:
            size = parse_size(input_size)
        except ValueError as e:
            raise fail_usage(str(e)) from None
        if classes is not None and classes < 1:
            raise fail_usage(f"--classes must be a positive number, not {classes}")
        outs = [Path(p) for p in export]
        for p in outs:
            if p.suffix.lower() not in EXPORTS:
                raise fail_usage(f"--export {p}: unknown format `{p.suffix or '(no suffix)'}`; use " + ", ".join(EXPORTS))
            if not p.parent.is_dir():
                raise fail_usage(f"--export {p}: directory {p.parent} does not exist")
        sp = load_space(space)
        text, module = load_checked(file, sp)
        arch = pick(module, file, arch_name, want_arch=True)
        from hyctas_dsl.commands.train import with_task

        arch = with_task(arch, task)

        import torch

        from hyctas_dsl.compiler import export as build
        from hyctas_dsl.compiler.checkpoint import load_supernet
        from hyctas_dsl.compiler.report import format_report
        from hyctas_dsl.cost import arch_cost
        from hyctas_dsl.errors import HyctasError

        sn = None
        if supernet is not None:
            try:
                sn = load_supernet(supernet)
            except HyctasError as e:
                d = e.diagnostics[0]
                raise fail_usage(f"{supernet}: {d.message}") from None
            if classes is not None and classes != sn.classes:
                raise fail_usage(f"--classes {classes}, but the supernet {supernet} was trained for {sn.classes} classes")
        n_classes = sn.classes if sn is not None else (classes or 19)
        torch.manual_seed(seed)
        try:
            model = build(arch, sn, n_classes)
        except HyctasError as e:
            typer.echo(e.with_source(text, file).render())
            raise typer.Exit(1) from None
        rep = arch_cost(arch, size, n_classes)
        built = sum(p.numel() for p in model.parameters())
        written = [_write_export(p, arch, model, sn, size, n_classes) for p in outs]
        check = "matches the cost model" if built == rep.total.params else f"cost model says {rep.total.params:,}: MISMATCH"
        if as_json:
            out = rep.to_json()
            out["branches"] = {b: {"params": c.params, "macs": c.macs, "activations": c.act} for b, c in rep.by_branch().items()}
            out["module_params"] = built
            out["weights"] = supernet or f"fresh (seed {seed})"
            out["written"] = [str(p) for p in outs]
            typer.echo(json.dumps(out, indent=2))
            return
        typer.echo(format_report(rep, cells=cells))
        typer.echo("")
        typer.echo(f"built module: {built:,} parameters ({check}); weights: {supernet or f'fresh (seed {seed})'}")
        for line in written:
            typer.echo(f"wrote {line}")
