"""``hyctas bench``: FPS of an architecture as the paper measures it (section 4.2)."""

from __future__ import annotations

import json
from typing import Optional

import typer

from hyctas_dsl.commands.train import load_arch
from hyctas_dsl.commands.train_supernet import run_cli_job


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
    ) -> None:
        """Frames per second at batch 1 with the image already on the device, after a
        warm-up, timed for --seconds (6, as the paper); prints the median, the p10..p90
        spread and the protocol. Random weights unless --weights (latency does not depend
        on them). --compare B.hy times a second arch in turns with the first and prints the
        ratio. Exit 2 for bad options or a device this machine lacks, 1 when the network does
        not fit in memory at that input size.
        """
        from hyctas_dsl.cli import fail_usage
        from hyctas_dsl.commands.compile import parse_size

        try:
            size = parse_size(input_size)
        except ValueError as e:
            raise fail_usage(str(e)) from None
        if dtype not in ("fp32", "bf16", "fp16"):
            raise fail_usage(f"--dtype must be fp32, bf16 or fp16, not {dtype!r}")
        if seconds <= 0 or warmup < 0:
            raise fail_usage("--seconds must be positive and --warmup not negative")
        if classes < 1:
            raise fail_usage(f"--classes must be positive, not {classes}")
        arch, _ = load_arch(file, arch_name, space)
        other = load_arch(compare, None, space)[0] if compare else None

        def job():
            import torch

            from hyctas_dsl.commands.eval import load_weights
            from hyctas_dsl.compiler import export
            from hyctas_dsl.run.bench import bench, bench_interleaved, default_channels_last, format_rows, resolve_device
            from hyctas_dsl.run.config import ConfigError

            try:
                dev = resolve_device(device)
            except ValueError as e:
                raise ConfigError(str(e)) from None
            torch.manual_seed(0)
            cl = default_channels_last(dev) if channels_last is None else channels_last
            model = load_weights(weights, arch)[0] if weights else export(arch, classes=classes)
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

        def guarded():
            try:
                return job()
            except (MemoryError, RuntimeError) as e:  # torch.OutOfMemoryError is a RuntimeError
                msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                if not isinstance(e, MemoryError) and "alloc" not in msg.lower() and "out of memory" not in msg.lower():
                    raise
                typer.echo(f"hyctas: error: out of memory at {size[0]}x{size[1]} on {device}: {msg[:200]} "
                           "(try a smaller --input)", err=True)
                raise typer.Exit(1) from None

        run_cli_job(guarded)
