"""Compiler checks and timings on a CUDA GPU (prints tables; asserts only correctness).

    python bench/bench_compiler_gpu.py

1. Correctness on CUDA: subnet view == standalone export (float32, TF32 off) for random archs,
   gradients of a view's training step land in the supernet.
2. Forward latency, batch 1, 1x3x512x1024, view vs standalone, zoo, on the paper's supernet
   (CUDA-synchronised wall clock, warm-up, interleaved runs, median).
3. One training step (fwd + bwd), batch 8, 256x512, hyctas_s: time and peak GPU memory
   (torch.cuda.max_memory_allocated above the memory held before the step) for view,
   standalone and the whole supernet with every op (Table 1's "Total supernet").
"""

from __future__ import annotations

import gc
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_compiler import MEM_LAYERS, MEM_SPACE_FILTERS, build_paper_supernet, section2, table, zoo  # noqa: E402

from hyctas_dsl.compiler import Supernet, export  # noqa: E402
from hyctas_dsl.language.spaces import paper_space  # noqa: E402

DEV = torch.device(os.environ.get("HYCTAS_BENCH_DEVICE", "cuda"))


def sync():
    if DEV.type == "cuda":
        torch.cuda.synchronize()


def correctness():
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from tests.test_compiler_ops import random_arch, small_space

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    rows = []
    for seed in range(8):
        torch.manual_seed(seed)
        sn = Supernet(small_space((2, 4), 4), classes=4).to(DEV)
        arch = random_arch(seed, filters=[2, 4][seed % 2])
        view = sn.subnet(arch).train()
        sn.zero_grad(set_to_none=True)
        view(torch.randn(2, 3, 64, 96, device=DEV)).square().mean().backward()
        grads = sum(1 for p in sn.parameters() if p.grad is not None)
        view.eval()
        model = export(arch, sn).eval().to(DEV)
        x = torch.randn(2, 3, 72, 100, device=DEV)
        with torch.no_grad():
            diff = (view(x) - model(x)).abs().max().item()
        assert diff < 1e-5, diff
        assert grads > 0
        rows.append([arch.name, len(arch.branches), f"{diff:.1e}", grads])
    print("## 1. CUDA: view == export (float32, TF32 off)\n")
    table(["arch", "branches", "max abs diff", "supernet tensors with grad"], rows)
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cuda.matmul.allow_tf32 = True


def latency(reps=int(os.environ.get("HYCTAS_BENCH_REPS", "30"))):
    torch.manual_seed(0)
    sn = Supernet(paper_space()).to(DEV).eval()
    x = torch.randn(1, 3, 512, 1024, device=DEV)
    rows = []
    for name in ("hyctas_s", "hyctas_m", "hyctas_l"):
        arch = zoo(name)
        view = sn.subnet(arch).eval()
        model = export(arch, sn).eval().to(DEV)
        tv, ts = [], []
        with torch.no_grad():
            for _ in range(5):
                view(x), model(x)
            sync()
            for i in range(reps):  # interleaved, order alternating
                for which in ((0, 1) if i % 2 == 0 else (1, 0)):
                    f, out = (model, ts) if which == 0 else (view, tv)
                    t = time.perf_counter(); f(x); sync(); out.append(time.perf_counter() - t)  # noqa: E702
        ms, mv = statistics.median(ts), statistics.median(tv)
        rows.append([name, f"{ms * 1e3:.2f}", f"{mv * 1e3:.2f}", f"{mv / ms:.3f}", reps])
        del view, model
    print(f"## 2. Forward latency, batch 1, 1x3x512x1024, float32 (TF32 allowed), {torch.cuda.get_device_name()}\n")
    table(["arch", "standalone ms", "view ms", "view / standalone", "runs each (median)"], rows)
    del sn
    gc.collect()
    torch.cuda.empty_cache()


def train_step(batch=8, size=(256, 512), reps=5):
    arch = zoo("hyctas_s")
    space = paper_space().model_copy(update={"filters": MEM_SPACE_FILTERS, "layers": MEM_LAYERS})
    torch.manual_seed(0)
    sn = Supernet(space).to(DEV).train()
    x = torch.randn(batch, 3, *size, device=DEV)
    y = torch.randint(0, 19, (batch, *size), device=DEV)
    cases = {
        "standalone": export(arch).to(DEV).train(),
        "view": sn.subnet(arch).train(),
        "supernet (every op)": sn,
    }
    rows = []
    for name, m in cases.items():
        def step():
            loss = torch.nn.functional.cross_entropy(m(x), y)
            loss.backward()

        step()
        sn.zero_grad(set_to_none=True)
        m.zero_grad(set_to_none=True)
        sync()
        gc.collect()
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        sync()
        peak = torch.cuda.max_memory_allocated() - before
        times = []
        for _ in range(reps):
            m.zero_grad(set_to_none=True)
            sn.zero_grad(set_to_none=True)
            sync()
            t = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - t)
        m.zero_grad(set_to_none=True)
        sn.zero_grad(set_to_none=True)
        rows.append([name, f"{peak / 2**20:.0f}", f"{statistics.median(times) * 1e3:.1f}"])
    base = float(rows[0][1])
    for r in rows:
        r.insert(2, f"{float(r[1]) / base:.2f}")
    print(f"## 3. Training step (fwd + bwd), batch {batch}, {size[0]}x{size[1]}, hyctas_s, "
          f"supernet = paper space with filters {MEM_SPACE_FILTERS}, {MEM_LAYERS} layers\n")
    table(["run", "step peak MiB (above held)", "vs standalone", "step ms (median of 5)"], rows)


def cpu_latency(threads=2, reps=3):
    """Section 2 of bench_compiler.py on this machine's otherwise idle CPU, with as many
    threads as the development machine has cores (that one is shared and noisy)."""
    torch.set_num_threads(threads)
    sn, _ = build_paper_supernet()
    section2(sn, reps, reps_l=int(os.environ.get("HYCTAS_BENCH_REPS_L", "2")))


if __name__ == "__main__":
    print(f"# torch {torch.__version__}, {torch.cuda.get_device_name()}\n")
    if not os.environ.get("HYCTAS_BENCH_LATENCY_ONLY"):
        correctness()
    latency()
    if not os.environ.get("HYCTAS_BENCH_LATENCY_ONLY"):
        train_step()
    if os.environ.get("HYCTAS_BENCH_CPU"):
        cpu_latency()
