"""Cost of building a subnet view (``supernet.subnet(arch)``) and of one supernet training
step, this checkout against the commit before views were built from cached pieces, side by
side in one run, one thread, on the embedded digits space (classes 11).

    .venv/bin/python bench/bench_view_build.py                 # 3 rounds, ~3 minutes on 2 shared cores
    .venv/bin/python bench/bench_view_build.py --rounds 1 --warm 200 --steps 50

The old code is not kept in the package: the baseline is extracted from git (``--baseline``,
by default the parent of the commit that added ``view_skeleton`` to compiler/build.py) into a
temporary directory and run in its own process. Each round runs a fresh process per side,
old then new, so machine load hits both alike; every process samples the same archs (the
training scheme's ``step_subnets``, seed 0):

* view, cold: the first ``--archs`` archs of a fresh process (caches empty);
* view, warm: the ``--archs`` archs after ``--warm`` more were built (caches as in training);
* training step: sample + build + forward + backward + AdamW of one subnet on a batch of
  ``--batch`` random 64x64 images (the digits' crop; same cost as real ones), measured
  after the view measurements, with its parts;
* memory held: what ``--memory`` more views (of new archs) leave allocated, per view
  (``tracemalloc``; the views themselves are dropped): caches and generated modules.

Printed: median and p90 per side (of all rounds' samples), the spread of the per-round
medians in brackets, and old / new of the medians.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def worker(args) -> None:
    import torch

    torch.set_num_threads(1)
    import hyctas_dsl.compiler as compiler
    from hyctas_dsl.compiler import Supernet
    from hyctas_dsl.jobs.common import resolve_space, seg_loss
    from hyctas_dsl.jobs.config import SupernetConfig
    from hyctas_dsl.jobs.schemes import step_subnets

    torch.manual_seed(0)
    space = resolve_space("digits")
    supernet = Supernet(space, classes=11).train()
    cfg = SupernetConfig().resolved()
    builds = []
    for step in range(args.archs + args.warm + args.archs):
        arch = step_subnets(space, cfg, step)[0].arch
        t = time.perf_counter()
        supernet.subnet(arch)
        builds.append(time.perf_counter() - t)
    opt = torch.optim.AdamW(supernet.parameters(), lr=cfg.lr)
    x = torch.randn(args.batch, 3, 64, 64)
    y = torch.randint(0, 11, (args.batch, 64, 64))
    parts: dict[str, list[float]] = {k: [] for k in ("sample", "build", "forward+backward", "optimizer", "step")}
    first = 10_000  # archs no view phase built
    for step in range(first, first + args.steps):
        t0 = time.perf_counter()
        arch = step_subnets(space, cfg, step)[0].arch
        t1 = time.perf_counter()
        view = supernet.subnet(arch)
        t2 = time.perf_counter()
        seg_loss(view(x), y, float(y.numel())).backward()
        t3 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t4 = time.perf_counter()
        for k, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0)):
            parts[k].append(v)
    out = {"cold": builds[: args.archs], "warm": builds[-args.archs:], **parts}
    out = {k: [1e3 * v for v in vs] for k, vs in out.items()}
    # memory that building views leaves behind (caches, generated modules), per view
    gc.collect()
    tracemalloc.start()
    for step in range(2 * first, 2 * first + args.memory):
        supernet.subnet(step_subnets(space, cfg, step)[0].arch)
    gc.collect()
    out["memory"] = [tracemalloc.get_traced_memory()[0] / args.memory / 1e3]
    json.dump({"compiler": compiler.__file__, **out}, sys.stdout)


def baseline_rev() -> str:
    out = subprocess.run(["git", "log", "-1", "--format=%H", "-S", "def view_skeleton", "--", "compiler/build.py"],
                         cwd=ROOT, capture_output=True, text=True).stdout.strip()
    if not out:
        raise SystemExit("bench_view_build: needs a git checkout with the commit that added view_skeleton to compiler/build.py, or --baseline REV")
    return out + "^"


def extract(rev: str, into: Path) -> Path:
    """The package of ``rev`` laid out as installed (compiler/, grammar/, archs/ inside hyctas_dsl/)."""
    src = into / "src"
    src.mkdir()
    archive = subprocess.run(["git", "archive", rev, "hyctas_dsl", "compiler", "grammar", "archs"], cwd=ROOT,
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    pkg = into / "pkg"
    pkg.mkdir()
    shutil.move(str(src / "hyctas_dsl"), str(pkg / "hyctas_dsl"))
    for sub in ("compiler", "grammar", "archs"):
        shutil.move(str(src / sub), str(pkg / "hyctas_dsl" / sub))
    return pkg


def run_side(args, pythonpath: Path | None) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    cmd = [sys.executable, __file__, "--worker", "--archs", str(args.archs), "--warm", str(args.warm),
           "--steps", str(args.steps), "--batch", str(args.batch), "--memory", str(args.memory)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"bench_view_build: worker failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout)


def p90(xs: list[float]) -> float:
    return statistics.quantiles(xs, n=10)[-1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", default=None, help="git revision of the old code (default: see above)")
    ap.add_argument("--archs", type=int, default=200, help="views timed per phase (cold, warm)")
    ap.add_argument("--warm", type=int, default=600, help="views built between the cold and the warm phase")
    ap.add_argument("--steps", type=int, default=100, help="training steps timed")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--memory", type=int, default=300, help="views built to measure the memory they leave behind")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return 0
    rev = args.baseline or baseline_rev()
    short = subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    if not short:
        raise SystemExit(f"bench_view_build: unknown git revision {rev!r}")
    rows = ("cold", "warm", "step", "sample", "build", "forward+backward", "optimizer", "memory")
    got: dict[str, list[dict]] = {"old": [], "new": []}
    with tempfile.TemporaryDirectory(prefix="hyctas-viewbuild-") as tmp:
        old_pkg = extract(rev, Path(tmp))
        for r in range(args.rounds):
            t = time.perf_counter()
            got["old"].append(run_side(args, old_pkg))
            got["new"].append(run_side(args, None))
            assert got["old"][-1]["compiler"].startswith(str(old_pkg)), got["old"][-1]["compiler"]
            assert not got["new"][-1]["compiler"].startswith(str(old_pkg))
            print(f"round {r + 1}/{args.rounds}: {time.perf_counter() - t:.0f} s", file=sys.stderr)
    label = {"cold": f"view, cold (first {args.archs} archs)", "warm": f"view, warm ({args.archs} after {args.warm} more)",
             "step": f"training step, batch {args.batch}", "sample": "  of which: sample", "build": "            build",
             "forward+backward": "            forward + backward", "optimizer": "            AdamW step",
             "memory": f"KB held per view built ({args.memory} views)"}
    print(f"ms, one thread; old = {short}, new = this checkout; {args.rounds} round(s), median / p90 [spread of round medians]")
    print(f"{'':40} {'old':>28} {'new':>28} {'old/new':>8}")
    for k in rows:
        cells, medians = [], {}
        for side in ("old", "new"):
            pooled = [v for run in got[side] for v in run[k]]
            per_round = [statistics.median(run[k]) for run in got[side]]
            medians[side] = statistics.median(pooled)
            tail = f"{p90(pooled):6.2f}" if len(pooled) > 1 else "     -"
            cells.append(f"{medians[side]:6.2f} / {tail} [{min(per_round):5.2f}-{max(per_round):5.2f}]")
        print(f"{label[k]:40} {cells[0]:>28} {cells[1]:>28} {medians['old'] / medians['new']:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
