"""``hyctas bench``: FPS of an architecture as the paper measures it (section 4.2)."""

from __future__ import annotations

import json
from typing import Optional

import typer

from hyctas_dsl.cli_support import MAX_CLASSES, TASK_HELP, fail_usage, load_arch, run_cli_job, size_option, with_task


def register(app: typer.Typer) -> None:
    @app.command("bench")
    def bench_cmd(
        file: str = typer.Argument(..., help="Source file (.hy) holding the arch."),
        arch_name: Optional[str] = typer.Option(None, "--arch", help="Which arch of the file (default: the only one)."),
        space: Optional[str] = typer.Option(None, "--space", help="Validate against this space file."),
        input_size: str = typer.Option("1024x2048", "--input", help="Input HEIGHTxWIDTH (the paper: 1024x2048)."),
        device: str = typer.Option("auto", "--device", help="auto | cpu | cuda."),
        dtype: str = typer.Option("fp32", "--dtype", help="fp32 | bf16 | fp16."),
        channels_last: Optional[bool] = typer.Option(None, "--channels-last/--contiguous", help="Memory layout [default: channels-last on the CPU, where it is faster; contiguous on a GPU]; the protocol line says which was used."),
        compile_: bool = typer.Option(False, "--compile", help="torch.compile the network first."),
        seconds: float = typer.Option(6.0, "--seconds", help="Timed seconds (the paper: 6)."),
        warmup: float = typer.Option(1.0, "--warmup", help="Warm-up seconds before timing."),
        compare: Optional[str] = typer.Option(None, "--compare", help="A second arch file, timed in turns in the same process."),
        weights: Optional[str] = typer.Option(None, "--weights", help="Weights to load (latency does not depend on them)."),
        classes: int = typer.Option(19, "--classes", help="Output classes with random weights (Cityscapes: 19)."),
        as_json: bool = typer.Option(False, "--json", help="Print the measurements as JSON."),
        task: Optional[str] = typer.Option(None, "--task", help=TASK_HELP),
    ) -> None:
        """Frames per second at batch 1 with the image already on the device, after a
        warm-up, timed for --seconds (6, as the paper); prints the median, the p10..p90
        spread and the protocol. Random weights unless --weights (latency does not depend
        on them). --compare B.hy times a second arch in turns with the first and prints the
        ratio. Exit 2 for bad options or a device this machine lacks, 1 when the network does
        not fit in memory at that input size. A panoptic arch (`task panoptic` or --task
        panoptic) is timed three ways: the network, the post-processing (centre NMS, pixel
        grouping, merge) and both together.
        """
        size = size_option(input_size, "--input")
        if dtype not in ("fp32", "bf16", "fp16"):
            raise fail_usage(f"--dtype must be fp32, bf16 or fp16, not {dtype!r}")
        if not (0 < seconds <= 3600 and 0 <= warmup <= 3600):  # NaN fails too; inf would time forever
            raise fail_usage("--seconds must lie in (0, 3600] and --warmup in [0, 3600]")
        if not 1 <= classes <= MAX_CLASSES:
            raise fail_usage(f"--classes must lie in 1..{MAX_CLASSES}, not {classes}")
        arch, _ = load_arch(file, arch_name, space)
        arch = with_task(arch, task)
        other = load_arch(compare, None, space)[0] if compare else None
        if arch.task == "panoptic" and (other is not None or compile_ or dtype != "fp32"):
            raise fail_usage("a panoptic bench times fp32 eager inference: no --compare, --compile, --dtype")

        def job():
            import torch

            from hyctas_dsl.jobs.weights import load_weights
            from hyctas_dsl.compiler import export
            from hyctas_dsl.jobs.dist import resolve_device
            from hyctas_dsl.jobs.fps import bench, bench_interleaved, default_channels_last, format_rows

            dev = resolve_device(device)
            torch.manual_seed(0)
            cl = default_channels_last(dev) if channels_last is None else channels_last
            model = load_weights(weights, arch)[0] if weights else export(arch, classes=classes)
            if arch.task == "panoptic":
                from hyctas_dsl.jobs.panoptic_eval import bench_panoptic, default_things

                n_classes = model.head.out.out_channels
                lats = bench_panoptic(model, size, dev, default_things(n_classes), seconds, warmup, channels_last=cl)
                names = ["network", "post-processing", "network + post-processing"]
                if as_json:
                    typer.echo(json.dumps({"arch": arch.name, "results": [dict(l.to_json(), part=n, fps=l.fps)
                                                                          for n, l in zip(names, lats)]}, indent=2))
                    return
                typer.echo(format_rows(names, lats))
                typer.echo(f"post-processing is {lats[1].median_ms / lats[0].median_ms:.1%} of the network's time")
                typer.echo(f"protocol: {lats[0].protocol}")
                return
            if other is None:
                lats = [bench(model, size, dev, dtype, seconds, warmup, cl, compile_)]
                names = [arch.name]
            else:
                names = [arch.name, other.name if other.name != arch.name else f"{other.name} ({compare})"]
                lats = bench_interleaved([model, export(other, classes=classes)], size, dev, dtype, seconds, warmup,
                                         cl, compile_)
            if as_json:
                typer.echo(json.dumps({"results": [dict(l.to_json(), arch=n, fps=l.fps) for n, l in zip(names, lats)],
                                       **({"ratio": lats[1].median_ms / lats[0].median_ms} if other else {})}, indent=2))
                return
            typer.echo(format_rows(names, lats))
            if other is not None:
                typer.echo(f"ratio: {names[0]} is {lats[1].median_ms / lats[0].median_ms:.2f}x the FPS of {names[1]} "
                           f"(interleaved, 3 rounds)")
            typer.echo(f"protocol: {lats[0].protocol}")

        run_cli_job(job, memory=f"at {size[0]}x{size[1]} on {device} (try a smaller --input)")
