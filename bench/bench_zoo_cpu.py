"""`hyctas bench` of the zoo on this CPU, fp32, eager vs
channels-last vs torch.compile, measured in one run and interleaved per arch
(hyctas_dsl.jobs.fps.bench_interleaved: the three settings take turns, so a busy phase of a
shared machine hits all of them alike). Run on purpose:

    .venv/bin/python bench/bench_zoo_cpu.py                     # 1024x2048, 6 s each
    .venv/bin/python bench/bench_zoo_cpu.py --seconds 2 --input 512x1024

Prints a Markdown table with the protocol.
"""

from __future__ import annotations

import argparse

import torch

from hyctas_dsl.language.api import load
from hyctas_dsl.cli_support import parse_size
from hyctas_dsl.compiler import export
from hyctas_dsl.jobs.fps import bench_interleaved
from hyctas_dsl.language.spaces import zoo_path

ZOO = ("hyctas_s", "hyctas_m", "hyctas_l")
# "eager" and "torch.compile" in the default (contiguous) layout, to compare layouts
SETTINGS = {"eager": {"channels_last": False}, "channels-last": {"channels_last": True},
            "torch.compile": {"compile": True, "channels_last": False}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", default="1024x2048")
    ap.add_argument("--seconds", type=float, default=6.0, help="timed seconds per setting (the paper: 6)")
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--archs", default=",".join(ZOO))
    ap.add_argument("--settings", default=",".join(SETTINGS))
    args = ap.parse_args()
    size = parse_size(args.input)
    names = args.settings.split(",")
    rows = []
    for name in args.archs.split(","):
        arch = load(zoo_path(f"{name}.hy")).archs[0]
        torch.manual_seed(0)
        # One fresh network per setting: compile and channels-last must not leak into eager.
        models = [export(arch, classes=19) for _ in names]
        lats = bench_interleaved(models, size, "cpu", "fp32", args.seconds, args.warmup, rounds=args.rounds,
                                 settings=[SETTINGS[s] for s in names])
        for s, lat in zip(names, lats):
            rows.append((name, s, lat))
            print(f"{name} {s}: {lat.fps:.3f} FPS, {lat.median_ms:.0f} ms ({lat.p10_ms:.0f}..{lat.p90_ms:.0f}), {lat.runs} runs", flush=True)
    print()
    proto = rows[0][2].protocol.replace(rows[0][2].backend, "SETTING").split(" (fastest")[0]
    print(f"protocol: {proto}, interleaved in {args.rounds} rounds")
    print("| arch | setting | FPS | median ms (p10..p90) | fastest ms | CV | runs | vs eager |")
    print("|---|---|---:|---|---:|---:|---:|---:|")
    eager = {a: l.median_ms for a, s, l in rows if s == "eager"}
    for a, s, l in rows:
        ratio = f"{eager[a] / l.median_ms:.2f}x" if a in eager else "-"
        print(f"| {a} | {s} | {l.fps:.3f} | {l.median_ms:.0f} ({l.p10_ms:.0f}..{l.p90_ms:.0f}) | {l.min_ms:.0f} "
              f"| {l.cv:.1%} | {l.runs} | {ratio} |")


if __name__ == "__main__":
    main()
