"""The panoptic task on this CPU: (1) post-processing time per image at 1024x2048 as a share
of the network's time (HyCTAS-S with the panoptic branches, random weights, 19 classes,
Cityscapes' eight thing classes), network and post-processing timed in turns; (2) PQ of the
digits panoptic arch (bench/digits_panoptic.hy) retrained for a few minutes on the embedded
digit scenes, one run per seed. Run on purpose, one torch thread:

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_panoptic.py
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_panoptic.py --steps 300 --seeds 0 --rounds 1   # quick

Prints Markdown tables with the protocol.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from hyctas_dsl.language.api import load
from hyctas_dsl.cli_support import parse_size
from hyctas_dsl.compiler import export
from hyctas_dsl.data.panoptic import CITYSCAPES_THINGS
from hyctas_dsl.jobs.latency import measure_latency
from hyctas_dsl.jobs.panoptic import PostProcess, as_outputs, find_centers
from hyctas_dsl.jobs.panoptic_eval import _PostOnly
from hyctas_dsl.language.spaces import zoo_path

HERE = Path(__file__).resolve().parent


def street_scene(h: int, w: int, instances: int, seed: int = 0):
    """Outputs a good network would give on a Cityscapes-like frame: stuff bands (sky,
    building, vegetation, road), ``instances`` cars and persons of 20..200 px, as one-hot
    logits and the exact centre heatmap and offsets (the training targets)."""
    from hyctas_dsl.data.panoptic import encode_pan
    from hyctas_dsl.jobs.panoptic import panoptic_targets

    g = torch.Generator().manual_seed(seed)
    sem = torch.zeros(h, w, dtype=torch.long)  # road
    sem[: h // 4], sem[h // 4 : h // 2], sem[h // 2 : 5 * h // 8] = 10, 2, 8  # sky, building, vegetation
    inst = torch.zeros_like(sem)
    for k in range(1, instances + 1):
        s = int(torch.randint(20, 200, (1,), generator=g))
        y, x = int(torch.randint(h // 3, h - s, (1,), generator=g)), int(torch.randint(0, w - 2 * s, (1,), generator=g))
        cls, hw = (13, (s, 2 * s)) if k % 3 else (11, (s, s // 2 + 1))  # car, person
        sem[y : y + hw[0], x : x + hw[1]], inst[y : y + hw[0], x : x + hw[1]] = cls, k
    pan = torch.from_numpy(encode_pan(sem.numpy(), inst.numpy())).long()
    t = panoptic_targets(pan, CITYSCAPES_THINGS)
    logits = torch.nn.functional.one_hot(sem, 19).permute(2, 0, 1)[None].float() * 10
    return logits, t.center, t.offset


def timing(args) -> None:
    size = parse_size(args.input)
    arch = load(zoo_path("hyctas_s.hy")).archs[0].model_copy(update={"task": "panoptic"})
    torch.manual_seed(0)
    net = export(arch, classes=19).eval()
    params = PostProcess.for_size(*size)
    with torch.inference_mode():
        outs = as_outputs(net(torch.randn(1, 3, *size)))
    street = street_scene(*size, args.instances)
    parts = {"network": net, "post-processing, street scene": _PostOnly(street, CITYSCAPES_THINGS, params),
             "post-processing, random-weight output": _PostOnly(outs, CITYSCAPES_THINGS, params)}

    def describe(o) -> str:
        k = len(find_centers(o[1][0], params.threshold, params.nms_kernel, params.top_k))
        return f"{k} centres, {100 * float(torch.isin(o[0].argmax(1), torch.tensor(CITYSCAPES_THINGS)).float().mean()):.0f}% thing pixels"

    rows: dict[str, list] = {name: [] for name in parts}
    for r in range(args.rounds):  # in turns, so a busy phase of the shared machine hits all
        for name, m in parts.items():
            lat = measure_latency(m, size, "cpu", torch.float32, args.warmup if r == 0 else 0.2, args.seconds / args.rounds,
                                  threads=1)
            rows[name].append(lat)
            print(f"round {r + 1} {name}: {lat.median_ms:.0f} ms ({lat.runs} runs)", flush=True)
    print()
    print(f"protocol: batch 1, 1x3x{size[0]}x{size[1]}, cpu (1 thread), fp32, eager; {args.rounds} rounds of "
          f"{args.seconds / args.rounds:g} s each per part, parts in turns; post-processing (threshold {params.threshold}, "
          f"NMS {params.nms_kernel}, top-k {params.top_k}, stuff area {params.stuff_area} px) of a street scene with "
          f"{args.instances} instances ({describe(street)}) and of the random-weight network's own output "
          f"({describe(outs)}: the top-k bound)")
    print("| part | median ms per image (per-round medians) | p10..p90 ms |")
    print("|---|---|---|")
    med = {}
    for name, lats in rows.items():
        med[name] = statistics.median(l.median_ms for l in lats)
        per = ", ".join(f"{l.median_ms:.0f}" for l in lats)
        print(f"| {name} | {med[name]:.0f} ({per}) | {min(l.p10_ms for l in lats):.0f}..{max(l.p90_ms for l in lats):.0f} |")
    for name in list(parts)[1:]:
        shares = [p.median_ms / n.median_ms for p, n in zip(rows[name], rows["network"])]
        print(f"| {name} / network | {100 * med[name] / med['network']:.0f}% "
              f"(per round {', '.join(f'{100 * s:.0f}%' for s in shares)}) | |")


def retrain(args) -> None:
    from hyctas_dsl.jobs.retrain import TrainConfig, train

    digits_space = load(zoo_path("digits_space.hy")).spaces[0]
    arch = load(HERE / "digits_panoptic.hy", space=digits_space).archs[0]
    torch.set_num_threads(1)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            cfg = TrainConfig(data="digits", out=f"{tmp}/s{seed}", steps=args.steps, batch=8, optimizer="adamw", lr=0.003,
                              seed=seed, eval_images=500, checkpoint_every=args.steps)
            t0 = time.perf_counter()
            res = train(cfg, arch, progress=False)
            log = [l for l in (Path(tmp) / f"s{seed}" / "log.jsonl").read_text().splitlines() if "val_pq" in l]
            import json

            last = json.loads(log[-1])
            results.append((seed, last, time.perf_counter() - t0))
            print(f"seed {seed}: PQ {100 * last['val_pq']:.1f}, things {100 * last['val_pq_things']:.1f}, "
                  f"stuff {100 * last['val_pq_stuff']:.1f}, mIoU {100 * res.miou:.1f}, {time.perf_counter() - t0:.0f} s", flush=True)
    print()
    print(f"protocol: bench/digits_panoptic.hy retrained from scratch on the embedded digit scenes (64x64, 2000 "
          f"train scenes), {args.steps} steps x batch 8, AdamW lr 0.003 poly, drop path to 0.2, loss weights 200 / 0.01, "
          f"1 thread; PQ single-scale on all 500 validation scenes")
    print("| seed | PQ | PQ things | PQ stuff | mIoU | seconds |")
    print("|---:|---:|---:|---:|---:|---:|")
    for seed, last, s in results:
        print(f"| {seed} | {100 * last['val_pq']:.1f} | {100 * last['val_pq_things']:.1f} | {100 * last['val_pq_stuff']:.1f} "
              f"| {100 * last['val_miou']:.1f} | {s:.0f} |")
    if len(results) > 1:
        pqs = [100 * r[1]["val_pq"] for r in results]
        print(f"| mean (spread) | {statistics.mean(pqs):.1f} ({min(pqs):.1f}..{max(pqs):.1f}) | | | | |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", default="1024x2048")
    ap.add_argument("--seconds", type=float, default=12.0, help="timed seconds per part, over all rounds")
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--instances", type=int, default=30, help="thing instances of the street scene")
    ap.add_argument("--steps", type=int, default=2000, help="retraining steps of the digits model")
    ap.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1])
    ap.add_argument("--skip", choices=("timing", "retrain"), default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.skip != "timing":
        timing(args)
        print()
    if args.skip != "retrain":
        retrain(args)


if __name__ == "__main__":
    main()
