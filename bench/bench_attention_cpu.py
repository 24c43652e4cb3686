"""Attention on the CPU: the compiler's `attn` op (q, k, v laid out contiguous, so torch's
CPU dispatch takes its fused flash kernel) against the earlier layout (q, k, v as strided
views of the qkv conv's output, which sends `scaled_dot_product_attention` down the math
path that builds the heads x N x N score matrix). The earlier layout lives here only, as the
reference. Both networks hold the same weights and are timed in turns in one process
(`hyctas_dsl.jobs.fps.bench_interleaved`); then the peak resident set size of one forward
is measured in a fresh subprocess per model (so one model's peak does not hide another's).

    .venv/bin/python bench/bench_attention_cpu.py                 # M at 1024x2048, 2 threads
    .venv/bin/python bench/bench_attention_cpu.py --rss hyctas_m,hyctas_l  # + peak RSS of L

Prints Markdown tables with the protocol.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import types

import torch
import torch.nn.functional as F

from hyctas_dsl.language.api import load
from hyctas_dsl.cli_support import parse_size
from hyctas_dsl.compiler import export
from hyctas_dsl.compiler import ops as O
from hyctas_dsl.jobs.fps import bench_interleaved
from hyctas_dsl.language.spaces import zoo_path


def strided_forward(self: O.Attn, x: torch.Tensor) -> torch.Tensor:
    """The earlier `Attn.forward`, verbatim but for its name: q, k, v as views with last-dim
    stride h*w (the math path on the CPU)."""
    if self.down:
        x = F.avg_pool2d(x, 2)
    n, h, w = x.shape[0], x.shape[2], x.shape[3]
    t = self.qkv(self.reduce(x))
    t = t.reshape(n, 3, self.heads, self.d // self.heads, h * w).permute(1, 0, 2, 4, 3)
    y = F.scaled_dot_product_attention(t[0], t[1], t[2])
    y = y.transpose(2, 3).reshape(n, self.d, h, w)
    y = O.stochastic_depth(self.proj(y), self.drop_path, self.training)
    return F.relu(y + self.bypass(x))


def build(arch_name: str, layout: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = export(load(zoo_path(f"{arch_name}.hy")).archs[0], classes=19).eval()
    if layout == "strided (before)":
        # the exported network holds its own copy of the ops (generated code), not O.Attn
        for m in model.modules():
            if type(m).__name__ == "Attn":
                m.forward = types.MethodType(strided_forward, m)
    return model


def _child(arch_name: str, layout: str, size: str, threads: int) -> None:
    torch.set_num_threads(threads)
    model = build(arch_name, layout)
    h, w = parse_size(size)
    with torch.inference_mode():
        model(torch.randn(1, 3, h, w))
    # VmHWM, this process's peak resident set (ru_maxrss would include the parent's peak at fork)
    hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    print(json.dumps({"peak_rss_gib": int(hwm.split()[1]) / 2**20}))


def peak_rss(arch_name: str, layout: str, size: str, threads: int) -> str:
    cmd = [sys.executable, __file__, "--child", arch_name, layout, size, str(threads)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        last = (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]
        return f"failed ({last[:80]})"
    return f"{json.loads(r.stdout.strip().splitlines()[-1])['peak_rss_gib']:.2f}"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(*sys.argv[2:5], int(sys.argv[5]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="hyctas_m")
    ap.add_argument("--input", default="1024x2048")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=6.0, help="timed seconds per layout, over all rounds")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--rss", default="hyctas_m", help="comma-separated archs whose one-forward peak RSS to measure")
    ap.add_argument("--rss-before", default="hyctas_m", help="archs whose peak RSS to measure with the earlier "
                    "layout too (not L at 1024x2048 by default: the math path asks for 16 GiB there)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    size = parse_size(args.input)
    layouts = ["contiguous (now)", "strided (before)"]
    models = [build(args.arch, lay) for lay in layouts]
    x = torch.randn(1, 3, 64, 128)
    with torch.inference_mode():
        diff = (models[0](x) - models[1](x)).abs().max().item()
    replaced = sum(type(m).__name__ == "Attn" and "forward" in vars(m) for m in models[1].modules())
    if not replaced:
        raise SystemExit(f"{args.arch} has no attention cell: nothing to compare")
    lats = bench_interleaved(models, size, "cpu", "fp32", args.seconds, 0.0, rounds=args.rounds)
    print(f"protocol: {lats[0].protocol}, the two layouts interleaved in {args.rounds} rounds; "
          f"{replaced} attention cells; max |difference| of the logits at 64x128: {diff:.1e}")
    print("| arch | attention layout | median ms (p10..p90) | CV | runs | speed-up |")
    print("|---|---|---|---:|---:|---:|")
    for lay, l in zip(layouts, lats):
        print(f"| {args.arch} | {lay} | {l.median_ms:.0f} ({l.p10_ms:.0f}..{l.p90_ms:.0f}) | {l.cv:.1%} | {l.runs} "
              f"| {lats[1].median_ms / l.median_ms:.2f}x |")
    print()
    print(f"peak RSS of one forward at {args.input}, {args.threads} threads, fresh subprocess, fresh weights, "
          "inference mode (VmHWM, includes the Python interpreter and torch, ~0.3 GiB):")
    print("| arch | attention layout | peak RSS GiB |")
    print("|---|---|---:|")
    for name in [a for a in args.rss.split(",") if a]:
        for lay in layouts if name in args.rss_before.split(",") else layouts[:1]:
            print(f"| {name} | {lay} | {peak_rss(name, lay, args.input, args.threads)} |", flush=True)


if __name__ == "__main__":
    main()
