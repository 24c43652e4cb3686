"""``hyctas compile``: lower an arch to a torch module, print its cost report, export it.

A thin layer over :mod:`hyctas_dsl.compiler`. torch is imported inside the command only, so
``hyctas --help`` stays fast and works without torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from hyctas_dsl.cli_support import MAX_CLASSES, fail_usage, load_checked, load_space, pick, run_cli_job, size_option, with_task

# The suffixes --export takes (compiler/artifacts.py writes them); kept here so that checking
# the options needs no torch.
EXPORTS = (".onnx", ".pt", ".safetensors", ".py")


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
        size = size_option(input_size, "--input")
        if classes is not None and not 1 <= classes <= MAX_CLASSES:
            raise fail_usage(f"--classes must lie in 1..{MAX_CLASSES}, not {classes}")
        outs = [Path(p) for p in export]
        for p in outs:
            if p.suffix.lower() not in EXPORTS:
                raise fail_usage(f"--export {p}: unknown format `{p.suffix or '(no suffix)'}`; use " + ", ".join(EXPORTS))
            if not p.parent.is_dir():
                raise fail_usage(f"--export {p}: directory {p.parent} does not exist")
        sp = load_space(space)
        text, module = load_checked(file, sp)
        arch = pick(module, file, arch_name, want_arch=True)
        arch = with_task(arch, task)

        def job():
            import torch

            from hyctas_dsl.compiler import export as build
            from hyctas_dsl.compiler.artifacts import write_artifact
            from hyctas_dsl.compiler.checkpoint import load_supernet
            from hyctas_dsl.compiler.report import format_report
            from hyctas_dsl.model.cost import arch_cost
            from hyctas_dsl.language.errors import HyctasError

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
            written = [write_artifact(p, arch, model, sn, size, n_classes) for p in outs]
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

        run_cli_job(job, memory=f"at {size[0]}x{size[1]} (try a smaller --input)")
