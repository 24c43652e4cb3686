"""The zoo's three architectures retrained from scratch on the
embedded digit scenes for one fixed budget, validation mIoU single-scale. Run on purpose:

    .venv/bin/python bench/retrain_zoo.py --steps 150 --out runs/retrain_zoo

Every arch gets the same budget (steps x batch images, same seed, same data order), the
paper's recipe (section 4.2, Table 9: SGD 0.9 / 5e-4, poly lr, scheduled drop path 0.2).
Prints a Markdown table; each run directory keeps its log, curve and weights.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from hyctas_dsl.language.api import load
from hyctas_dsl.model.cost import arch_cost
from hyctas_dsl.jobs.retrain import TrainConfig, train
from hyctas_dsl.language.spaces import zoo_path

ZOO = ("hyctas_s", "hyctas_m", "hyctas_l")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=0.005, help="the paper's 0.005 by default")
    ap.add_argument("--data", default="digits")
    ap.add_argument("--out", default="runs/retrain_zoo")
    ap.add_argument("--eval-images", type=int, default=10_000)
    ap.add_argument("--archs", default=",".join(ZOO))
    args = ap.parse_args()
    rows = []
    for name in args.archs.split(","):
        arch = load(zoo_path(f"{name}.hy")).archs[0]
        cfg = TrainConfig(data=args.data, out=str(Path(args.out) / name), steps=args.steps, batch=args.batch,
                          lr=args.lr, eval_images=args.eval_images, checkpoint_every=args.steps)
        t = time.perf_counter()
        res = train(cfg, arch, progress=False)
        secs = time.perf_counter() - t
        params = arch_cost(arch, (64, 64), 11).total.params
        rows.append((name, params, res.final_loss, res.miou, secs))
        print(f"{name}: loss {res.final_loss:.3f}, mIoU {100 * res.miou:.1f}%, {secs:.0f} s", flush=True)
    print()
    print(f"digits data, {args.steps} steps x batch {args.batch}, lr {args.lr} poly, drop path 0.2, seed 0, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| arch | params | final loss | val mIoU (%) | seconds |")
    print("|---|---:|---:|---:|---:|")
    for name, params, loss, miou, secs in rows:
        print(f"| {name} | {params:,} | {loss:.3f} | {100 * miou:.1f} | {secs:.0f} |")


if __name__ == "__main__":
    main()
