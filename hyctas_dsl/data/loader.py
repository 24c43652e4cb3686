"""torch Datasets and DataLoaders over the numpy-level sources (the only torch module here).

Reproducibility: sample ``i`` of epoch ``e`` is augmented with a generator seeded from
(seed, e, i) (:func:`hyctas_dsl.data.transforms.sample_rng`), and the order of an epoch is a
permutation seeded from (seed, e) by ``DistributedSampler``. So the batches are the same
with 0, 1 or 2 workers, after ``--resume`` at an epoch boundary, and, under torchrun, the
union of the ranks' batches at step k is the single-process batch at step k for the same
global batch (each rank takes every world-th index of the one permutation).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from hyctas_dsl.data.base import DataError, DatasetInfo, Source
from hyctas_dsl.data.transforms import EvalTransform, TrainTransform, sample_rng

__all__ = ["SegmentationDataset", "make_loader", "pad_collate", "make_datasets"]

Transform = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


class SegmentationDataset(Dataset):
    """A source plus a transform; items are (image float32 [3, H, W], label int64 [H, W]).

    ``get(index, epoch)`` is the reproducible access; ``dataset[i]`` is ``get(i, 0)``."""

    def __init__(self, source: Source, transform: Transform | None = None, seed: int = 0):
        self.source = source
        self.transform = transform if transform is not None else EvalTransform.for_dataset(source.info)
        self.seed = int(seed)

    @property
    def info(self) -> DatasetInfo:
        return self.source.info

    def __len__(self) -> int:
        return len(self.source)

    def get(self, index: int, epoch: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self.source.load(index)
        image, label = self.transform(image, label, sample_rng(self.seed, epoch, index))
        return torch.from_numpy(image), torch.from_numpy(label)

    def __getitem__(self, index: int):
        return self.get(index, 0)

    def subset(self, indices: Sequence[int]) -> "SegmentationDataset":
        """The same transform and seed over some samples (e.g. the BN-recalibration subset)."""
        return SegmentationDataset(self.source.subset(indices), self.transform, self.seed)


class _EpochView(Dataset):
    """Binds a dataset to one epoch, so that worker processes need no shared state."""

    def __init__(self, dataset: Dataset, epoch: int):
        self.dataset, self.epoch = dataset, int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return self.dataset.get(index, self.epoch)


class _StridedSampler(Sampler[int]):
    """Evaluation under torchrun: rank r takes r, r + world, ...; every sample once, no padding."""

    def __init__(self, n: int, rank: int, world: int):
        self.indices = list(range(rank, n, world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def pad_collate(batch):
    """Stack (image, label) pairs; images of different sizes are padded bottom/right with 0
    (the mean colour after normalisation) and labels with 255 (ignored)."""
    images, labels = zip(*batch)
    h = max(im.shape[-2] for im in images)
    w = max(im.shape[-1] for im in images)
    if all(im.shape[-2:] == (h, w) for im in images):
        return torch.stack(images), torch.stack(labels)
    out_img = images[0].new_zeros((len(images), images[0].shape[0], h, w))
    out_lab = labels[0].new_full((len(labels), h, w), 255)
    for i, (im, lab) in enumerate(zip(images, labels)):
        out_img[i, :, : im.shape[-2], : im.shape[-1]] = im
        out_lab[i, : lab.shape[-2], : lab.shape[-1]] = lab
    return out_img, out_lab


def _worker_init(_worker_id: int) -> None:
    # Two cores shared by the main process and the workers: one thread each.
    torch.set_num_threads(1)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    epoch: int = 0,
    num_workers: int = 2,
    distributed: bool = False,
    rank: int | None = None,
    world: int | None = None,
    drop_last: bool | None = None,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader for one epoch of ``dataset``.

    ``batch_size`` is per process. ``shuffle=True`` (training): the epoch's order is a
    permutation seeded from (seed, epoch); with ``distributed`` each rank takes every
    world-th index (``DistributedSampler``, padded so all ranks run the same number of
    steps) and the last incomplete batch is dropped by default. ``shuffle=False``
    (evaluation): the natural order, each sample exactly once over all ranks. ``rank`` and
    ``world`` default to torch.distributed's when ``distributed`` is set."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if distributed:
        import torch.distributed as dist

        if rank is None or world is None:
            if not (dist.is_available() and dist.is_initialized()):
                raise RuntimeError("distributed=True needs rank and world, or an initialised torch.distributed")
            rank = dist.get_rank() if rank is None else rank
            world = dist.get_world_size() if world is None else world
    else:
        rank, world = 0, 1
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} out of range for world size {world}")
    view = _EpochView(dataset, epoch) if hasattr(dataset, "get") else dataset
    if len(view) == 0:
        raise DataError("the data set is empty")
    if shuffle:
        sampler: Sampler[int] = DistributedSampler(view, num_replicas=world, rank=rank, shuffle=True, seed=int(seed))
        sampler.set_epoch(int(epoch))
    else:
        sampler = _StridedSampler(len(view), rank, world)
    if drop_last is None:
        drop_last = shuffle and len(sampler) >= batch_size
    return DataLoader(
        view,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=pad_collate,
        pin_memory=pin_memory,
        drop_last=drop_last,
        worker_init_fn=_worker_init if num_workers > 0 else None,
        generator=torch.Generator().manual_seed(int(seed)),
        persistent_workers=False,
    )


def make_datasets(
    spec: str = "digits",
    *,
    seed: int = 0,
    crop: tuple[int, int] | None = None,
    train_transform: Transform | None = None,
    **kw,
) -> tuple[SegmentationDataset, SegmentationDataset]:
    """(train, val) datasets of a ``--data`` spec with the data set's default transforms
    (training augmentation of section 4.2 on train, normalisation only on val)."""
    from hyctas_dsl.data.formats import open_dataset

    from hyctas_dsl.data.base import DataError

    train_src = open_dataset(spec, "train", **kw)
    val_src = open_dataset(spec, "val", **kw)
    # A job cannot train on, or score against, nothing: say so before it starts.
    for split, src in (("train", train_src), ("val", val_src)):
        if len(src) == 0:
            raise DataError(f"--data {spec}: the {split} split has no images")
    tt = train_transform or TrainTransform.for_dataset(train_src.info, crop)
    return SegmentationDataset(train_src, tt, seed), SegmentationDataset(val_src, None, seed)
