"""Training data: the datasets with their augmentation, a resumable sample order, and the batches.

Augmentation draws from ``(seed, epoch, sample index)`` (see :mod:`fcnseg.data.base`), CutMix's boxes from
``(seed, epoch, batch index, rank)`` (:mod:`fcnseg.data.mix`) and the sample order from ``(seed, epoch)`` (see
:class:`EpochSampler`), so a resumed run sees exactly the batches the uninterrupted run would have seen,
whatever the number of loader workers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from fcnseg.data.base import SegmentationDataset
from fcnseg.data.collate import PadCollate
from fcnseg.data.mix import cut_mix
from fcnseg.data.registry import build_dataset
from fcnseg.data.transforms import PHOTOMETRIC, train_transforms
from fcnseg.errors import ConfigError
from fcnseg.runtime import Runtime, worker_init
from fcnseg.train.config import TrainConfig


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The random generator of one epoch of a run seeded ``seed`` (the sample order and the loader's own
    draws), the same in every process and on every resume."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


class EpochSampler(Sampler[int]):
    """Shuffled order from ``(seed, epoch)``, sharded over ranks (padded by repeating, as training
    needs equal shard sizes), starting ``start`` samples into this rank's shard (for resuming)."""

    def __init__(self, size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size
        self.epoch, self.start = 0, 0
        self.per_rank = math.ceil(size / world_size)

    def set_position(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[int]:
        generator = epoch_generator(self.seed, self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        order += order[: self.per_rank * self.world_size - self.size]
        return iter(order[self.rank::self.world_size][self.start:])

    def __len__(self) -> int:
        return self.per_rank - self.start


def build_datasets(config: TrainConfig, normalization: str) -> tuple[SegmentationDataset, SegmentationDataset]:
    """The training split, with its augmentation and seed, and the validation split, as it is.

    The validation split is built first: its label space (the ignore index that crops are padded with)
    is the training split's, and the training split is then built complete, transform and all.
    """
    options = dict(config.dataset_options)
    val = build_dataset(config.dataset, config.root, config.val_split, normalization=normalization, **options)
    photometric = {name: getattr(config, name) for name in PHOTOMETRIC}
    changes = [name for name in ("color_jitter", *PHOTOMETRIC) if getattr(config, name)]  # None and 0: none
    if changes and val.inputs[0] != "rgb":
        raise ConfigError(f"{', '.join(changes)} change{'s' if len(changes) == 1 else ''} colour images only, but "
                          f"this dataset's images are {'+'.join(val.inputs)} (depth encoded as HHA): set "
                          f"{', '.join(changes)} to 0")
    transform = None
    if config.crop_size or config.scale_range or config.flip or changes:
        transform = train_transforms(tuple(config.crop_size) if config.crop_size else None,
                                     scale_range=tuple(config.scale_range) if config.scale_range else None,
                                     flip=config.flip, color_jitter=config.color_jitter,
                                     ignore_index=val.info.ignore_index, normalization=normalization, **photometric)
    train = build_dataset(config.dataset, config.root, config.train_split, transform=transform,
                          normalization=normalization, seed=config.seed, **options)
    return train, val


def micro_batches(dataset: SegmentationDataset, sampler: EpochSampler, config: TrainConfig, runtime: Runtime,
                  first: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """``(epoch, images, labels)`` forever, starting at micro-batch ``first`` of the run."""
    per_epoch = math.ceil(sampler.per_rank / config.batch_size)
    epoch, position = divmod(first, per_epoch)
    while True:
        dataset.set_epoch(epoch)
        sampler.set_position(epoch, position * config.batch_size)
        # Its own generator: creating a loader must not draw from the global RNG that dropout uses, or a
        # resumed run (which creates one more loader, mid-epoch) would drift from the uninterrupted one.
        generator = epoch_generator(config.seed, epoch)
        loader = DataLoader(dataset, batch_size=config.batch_size, sampler=sampler, num_workers=config.workers,
                            collate_fn=PadCollate(dataset.info.ignore_index), pin_memory=runtime.device.type == "cuda",
                            worker_init_fn=worker_init, generator=generator)
        for batch, (images, labels) in enumerate(loader, start=position):
            if config.cutmix:  # boxes from (seed, epoch, batch, rank): a resumed run draws the same ones
                rng = np.random.default_rng((config.seed, epoch, batch, runtime.rank))
                images, labels = cut_mix(images, labels, config.cutmix, rng)
            yield epoch, images, labels
        epoch, position = epoch + 1, 0
