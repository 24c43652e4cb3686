"""Pieces that supernet training, search and retraining share: resolving a space, the
step-indexed batch order that makes ``--resume`` exact, the loss, the optimizer and its
checkpointed state, and the progress meter. The run directory around the loops (lock,
checkpoints, resume, records) is :mod:`hyctas_dsl.jobs.rundir`."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from hyctas_dsl.language.ast import Space
from hyctas_dsl.language.errors import HyctasError

__all__ = ["resolve_space", "StepBatches", "StepDataset", "step_loader", "seg_loss", "IGNORE",
           "make_optimizer", "optimizer_tensors", "load_optimizer_tensors", "Progress", "image_batches"]

IGNORE = 255


def resolve_space(spec: str) -> Space:
    """A space file, or the name of one shipped in archs/ (``digits``, ``paper``)."""
    from hyctas_dsl.language.api import read_text
    from hyctas_dsl.language.parser import parse
    from hyctas_dsl.language.spaces import zoo_files, zoo_path
    from hyctas_dsl.language.validate import check_space

    path = Path(spec)
    if path.is_file():
        text, name = read_text(path), str(path)
    else:
        candidates = [f"{spec}_space.hy", f"{spec}.hy"]
        found = next((c for c in candidates if c in zoo_files()), None)
        if found is None:
            raise FileNotFoundError(
                f"no space file `{spec}`: give a path, or one of "
                + ", ".join(f[: -len('_space.hy')] for f in zoo_files() if f.endswith("_space.hy"))
            )
        text, name = zoo_path(found).read_text(encoding="utf-8"), found
    module = parse(text, name)
    if len(module.spaces) != 1:
        raise FileNotFoundError(f"{name}: expected exactly one `space`, found {len(module.spaces)}")
    diags = check_space(module.spaces[0])
    if diags:
        raise HyctasError(diags).with_source(text, name)
    return module.spaces[0]


def step_batch(step: int, batch: int, n: int, seed: int) -> list[tuple[int, int]]:
    """The global batch of training step ``step``: (epoch, index) pairs read off a sequence of
    per-epoch permutations seeded by (seed, epoch). A pure function of its arguments, so a
    resumed run sees exactly the batches an uninterrupted one would."""
    start = step * batch
    out: list[tuple[int, int]] = []
    epoch, offset = divmod(start, n)
    while len(out) < batch:
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        take = perm[offset : offset + batch - len(out)]
        out.extend((epoch, int(i)) for i in take)
        epoch, offset = epoch + 1, 0
    return out


class StepBatches(Sampler[list]):
    """Batches for steps ``start .. stop-1``; rank r of w takes every w-th sample."""

    def __init__(self, n: int, batch: int, seed: int, start: int, stop: int, rank: int = 0, world: int = 1):
        if batch % world:
            raise ValueError(f"the global batch {batch} must divide evenly over {world} processes")
        self.n, self.batch, self.seed, self.start, self.stop = n, batch, seed, start, stop
        self.rank, self.world = rank, world

    def __iter__(self) -> Iterator[list]:
        for step in range(self.start, self.stop):
            yield step_batch(step, self.batch, self.n, self.seed)[self.rank :: self.world]

    def __len__(self) -> int:
        return max(self.stop - self.start, 0)


class StepDataset(Dataset):
    """Indexes a SegmentationDataset by (epoch, index), so augmentation is seeded per sample."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        return self.dataset.get(index, epoch)


def step_loader(dataset, batch: int, seed: int, start: int, stop: int, rank: int, world: int, workers: int) -> DataLoader:
    from hyctas_dsl.data import pad_collate

    sampler = StepBatches(len(dataset), batch, seed, start, stop, rank, world)
    return DataLoader(
        StepDataset(dataset),
        batch_sampler=sampler,
        num_workers=workers,
        collate_fn=pad_collate,
        worker_init_fn=_one_thread if workers else None,
    )


def _one_thread(_worker: int) -> None:
    torch.set_num_threads(1)


def image_batches(dataset, indices: list[int], batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Evaluation batches (images, labels) of ``dataset`` at ``indices`` in order: up to
    ``batch`` consecutive images of one size, stacked without padding (padding would change
    predictions near the border). Shared by dataset evaluation and candidate scoring."""
    buf: list = []
    for i in indices:
        x, y = dataset.get(i, 0)
        if buf and (x.shape != buf[0][0].shape or len(buf) == batch):
            yield torch.stack([b[0] for b in buf]), torch.stack([b[1] for b in buf])
            buf = []
        buf.append((x, y))
    if buf:
        yield torch.stack([b[0] for b in buf]), torch.stack([b[1] for b in buf])


def seg_loss(logits: torch.Tensor, labels: torch.Tensor, normalizer: float | None = None) -> torch.Tensor:
    """Pixel cross-entropy, ignoring label 255. With ``normalizer`` (the global count of
    labelled pixels over all ranks) the per-rank sums add up to the global mean."""
    if normalizer is None:
        return F.cross_entropy(logits, labels, ignore_index=IGNORE)
    return F.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="sum") / max(normalizer, 1.0)


def make_optimizer(cfg, params):
    """SGD with momentum (the paper) or AdamW, from a config with ``optimizer``, ``lr``,
    ``momentum`` and ``weight_decay``."""
    if getattr(cfg, "optimizer", "sgd") == "adamw":
        params = list(params)
        # one fused kernel instead of a loop over tensors: AdamW was 3.7 of a 36 ms supernet
        # step on the digits, 1.3 fused (CPU, one thread); same update up to rounding
        fused = bool(params) and all(p.device.type == "cpu" for p in params)
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused or None)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


# Per-parameter optimizer state kept in checkpoints (SGD's momentum, AdamW's moments).
_STATE_KEYS = ("momentum_buffer", "exp_avg", "exp_avg_sq", "step")


def optimizer_tensors(model: torch.nn.Module, optimizer) -> dict[str, torch.Tensor]:
    """The optimizer's per-parameter state as ``optim.{key}.{param name}`` tensors."""
    names = {id(p): n for n, p in model.named_parameters()}
    out = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                if key in _STATE_KEYS and isinstance(value, torch.Tensor):
                    out[f"optim.{key}.{names[id(p)]}"] = value.detach().cpu().contiguous()
    return out


def load_optimizer_tensors(model: torch.nn.Module, optimizer, tensors: dict[str, torch.Tensor]) -> None:
    """Inverse of :func:`optimizer_tensors` (keys without the ``optim.`` prefix)."""
    params = dict(model.named_parameters())
    for name, value in tensors.items():
        key, pname = name.split(".", 1)
        device = params[pname].device if key != "step" else value.device
        optimizer.state[params[pname]][key] = value.to(device)


class Progress:
    """A training loop's progress bar (rank 0 only) and images-per-second meter."""

    def __init__(self, total: int, initial: int, desc: str, enabled: bool):
        import time

        self._clock = time.perf_counter
        self.t0, self.seen = self._clock(), 0
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True)

    def step(self, images: int, loss: float, lr: str) -> float:
        """Count one step of ``images``; returns the images per second so far."""
        self.seen += images
        rate = self.seen / max(self._clock() - self.t0, 1e-9)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.3f}", lr=lr, img_s=f"{rate:.1f}")
        return rate

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
