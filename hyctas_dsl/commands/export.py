"""``hyctas export``: a deployable artifact of trained weights, checked against PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from hyctas_dsl.cli_support import TASK_HELP, fail_usage, load_arch, run_cli_job, size_option, with_task

FORMATS = {"onnx": ".onnx", "torchscript": ".pt", "safetensors": ".safetensors", "python": ".py"}


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export_cmd(
        file: str = typer.Argument(..., help="Source file (.hy) holding the arch."),
        weights: str = typer.Option(..., "--weights", "-w", help="model.safetensors (or a `hyctas train` run directory)."),
        fmt: str = typer.Option(..., "--format", "-f", help="onnx | torchscript | safetensors | python."),
        output: Optional[str] = typer.Option(None, "--output", "-o", help="Output file [default: ARCH_NAME + the format's suffix]."),
        arch_name: Optional[str] = typer.Option(None, "--arch", help="Which arch of the file (default: the only one)."),
        space: Optional[str] = typer.Option(None, "--space", help="Validate against this space file."),
        input_size: str = typer.Option("512x1024", "--input", help="Input HEIGHTxWIDTH of the check (and of the ONNX graph)."),
        task: Optional[str] = typer.Option(None, "--task", help=TASK_HELP),
    ) -> None:
        """Write trained weights as a deployable artifact: ONNX, TorchScript, standalone
        safetensors (arch text as metadata) or a self-contained model.py (torch only) with
        its weights beside it. The artifact is loaded back and run on a random input, and
        the largest absolute difference to PyTorch's output is reported; a mismatch above
        1e-3 fails (exit 1). Exit 2 for bad options and weights of another arch.
        """
        if fmt not in FORMATS:
            raise fail_usage(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
        size = size_option(input_size, "--input")
        arch, _ = load_arch(file, arch_name, space)
        arch = with_task(arch, task)
        path = Path(output) if output else Path(arch.name + FORMATS[fmt])
        if path.suffix.lower() != FORMATS[fmt]:
            raise fail_usage(f"--output {path}: a {fmt} export must end in {FORMATS[fmt]}")
        if not path.parent.is_dir():
            raise fail_usage(f"--output {path}: directory {path.parent} does not exist")

        def job():
            import torch

            from hyctas_dsl.compiler.artifacts import max_abs_diff, run_artifact, write_artifact
            from hyctas_dsl.jobs.weights import load_weights

            model, classes = load_weights(weights, arch)
            line = write_artifact(path, arch, model, None, size, classes)
            typer.echo(f"wrote {line}")
            torch.manual_seed(0)
            x = torch.randn(1, 3, *size)
            with torch.no_grad():
                want = model.eval()(x)
                got = run_artifact(path, fmt, x)
            if got is None:
                typer.echo("check: onnxruntime is not installed; outputs not compared")
                return
            diff = max_abs_diff(got, want)
            typer.echo(f"check: {fmt} output vs PyTorch on a 1x3x{size[0]}x{size[1]} input: max abs diff {diff:.2e}")
            if not diff <= 1e-3:
                typer.echo(f"hyctas: error: the exported {fmt} model disagrees with PyTorch (max abs diff {diff:.2e})", err=True)
                raise typer.Exit(1)

        run_cli_job(job, memory=f"at {size[0]}x{size[1]} (try a smaller --input)")
