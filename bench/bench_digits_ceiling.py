"""How much of the digit scenes' labels a prediction at a given output stride can recover.

A segmentation head predicts at some stride s (8, or 4 with the stem's stride-4 feature in
HyCTAS, section 3.2) and is upsampled bilinearly to the input. The best such a prediction can
do is the label map itself, average-pooled by s, resized back and arg-maxed: this script
measures that oracle mIoU per stride on the validation scenes for several scene settings.
A stride whose ceiling is near the background floor cannot be learned at all; a ranking of
subnets is then a ranking of their output strides. Seconds on a CPU.

    .venv/bin/python bench/bench_digits_ceiling.py
    .venv/bin/python bench/bench_digits_ceiling.py --data digits:digit_size=24-40,digits=1-3
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT = [
    "digits:digit_size=16-32,digits=1-4",
    "digits:digit_size=24-40,digits=1-3",
    "digits:size=96,digit_size=24-48,digits=1-4",
    "digits:size=128,digit_size=32-64,digits=1-4",
]


def ceiling(labels: torch.Tensor, classes: int, stride: int) -> float:
    from hyctas_dsl.data.metrics import miou_of

    h, w = labels.shape[-2:]
    onehot = F.one_hot(labels.long(), classes).permute(0, 3, 1, 2).float()
    pooled = F.avg_pool2d(onehot, stride) if stride > 1 else onehot
    pred = F.interpolate(pooled, size=(h, w), mode="bilinear", align_corners=False).argmax(1)
    cm = np.bincount((labels.long() * classes + pred).reshape(-1).numpy(), minlength=classes * classes)
    return miou_of(cm.reshape(classes, classes))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", action="append", help="digits spec (repeatable); default: a set of scene settings")
    ap.add_argument("--images", type=int, default=500, help="validation scenes")
    args = ap.parse_args()
    from hyctas_dsl.data.formats import open_dataset
    from hyctas_dsl.data.metrics import miou_of

    strides = (4, 8, 16, 32)
    print(f"# oracle mIoU (%) of a prediction at each output stride, {args.images} validation scenes\n")
    print("| data | foreground | floor | " + " | ".join(f"stride {s}" for s in strides) + " |")
    print("|---|---:|---:|" + "---:|" * len(strides))
    for spec in args.data or DEFAULT:
        src = open_dataset(f"{spec},val={args.images}" if "val=" not in spec else spec, "val")
        labels = torch.from_numpy(np.stack([src.labels[i] for i in range(len(src))]).astype(np.int64))
        k = src.info.num_classes
        fg = float((labels > 0).float().mean())
        bg_cm = np.zeros((k, k), np.int64)
        bg_cm[:, 0] = np.bincount(labels.reshape(-1).numpy(), minlength=k)
        floor = miou_of(bg_cm)  # background on every pixel
        row = [f"{100 * ceiling(labels, k, s):.1f}" for s in strides]
        print(f"| `{spec}` | {100 * fg:.1f}% | {100 * floor:.1f} | " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
