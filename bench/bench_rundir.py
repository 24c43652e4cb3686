"""What the run directory's finite check costs beside the checkpoint it guards: for the
supernet of a space, the check as written (``rundir.is_finite``: min/max in one pass), the
obvious ``torch.isfinite(t).all()``, and a whole ``RunDir.save`` (check + safetensors write),
measured in turns in one process. Prints a table; asserts nothing.

    .venv/bin/python bench/bench_rundir.py                  # digits and paper spaces, 5 rounds
    .venv/bin/python bench/bench_rundir.py --spaces digits --rounds 9
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time

import torch

from hyctas_dsl.compiler import Supernet
from hyctas_dsl.jobs.common import make_optimizer, resolve_space
from hyctas_dsl.jobs.config import SupernetConfig
from hyctas_dsl.jobs.rundir import RunDir, is_finite


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spaces", default="digits,paper")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread; median over {args.rounds} rounds, (min..max)")
    print(f"{'space':8s} {'values':>9s} {'is_finite':>22s} {'isfinite().all()':>22s} {'RunDir.save':>24s}")
    for name in args.spaces.split(","):
        sn = Supernet(resolve_space(name), classes=19)
        cfg = SupernetConfig(out=tempfile.mkdtemp(prefix="bench_rundir_"), lr=0.01, optimizer="sgd")
        opt = make_optimizer(cfg, sn.parameters())
        state = list(sn.state_dict().values())
        times: dict[str, list[float]] = {"ours": [], "isfinite": [], "save": []}
        with RunDir(cfg.out, "train-supernet", "bench") as run:
            for _ in range(args.rounds):  # in turns, so the machine's load hits all alike
                t = time.perf_counter()
                assert all(is_finite(v) for v in state)
                times["ours"].append(time.perf_counter() - t)
                t = time.perf_counter()
                assert all(bool(torch.isfinite(v).all()) for v in state if v.is_floating_point())
                times["isfinite"].append(time.perf_counter() - t)
                t = time.perf_counter()
                run.save(sn, opt, 1, cfg, 0.0, {})
                times["save"].append(time.perf_counter() - t)

        def cell(xs: list[float]) -> str:
            return f"{1e3 * statistics.median(xs):.1f} ms ({1e3 * min(xs):.0f}..{1e3 * max(xs):.0f})"

        shutil.rmtree(cfg.out)  # the paper space's checkpoint is 3.5 GB
        n = sum(v.numel() for v in state)
        print(f"{name:8s} {n / 1e6:7.1f} M {cell(times['ours']):>22s} {cell(times['isfinite']):>22s} {cell(times['save']):>24s}")


if __name__ == "__main__":
    main()
