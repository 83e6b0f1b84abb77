"""Training data: the datasets with their augmentation, a resumable sample order, and the batches.

Augmentation draws from ``(seed, epoch, sample index)`` (see :mod:`fcnseg.data.base`), CutMix's boxes from
``(seed, epoch, batch index, rank)`` (:mod:`fcnseg.data.mix`) and the sample order from ``(seed, epoch)`` (see
:class:`EpochSampler`), so a resumed run sees exactly the batches the uninterrupted run would have seen,
whatever the number of loader workers.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from fcnseg.data.base import SegmentationDataset
from fcnseg.data.collate import PadCollate
from fcnseg.data.mix import cut_mix
from fcnseg.data.registry import build_dataset
from fcnseg.data.transforms import PHOTOMETRIC, Compose, train_transforms
from fcnseg.errors import ConfigError, DataError
from fcnseg.memory import available_bytes, format_bytes
from fcnseg.progress import track
from fcnseg.runtime import Runtime, local_processes, worker_init
from fcnseg.signals import loader_batches
from fcnseg.train.config import TrainConfig

log = logging.getLogger(__name__)
# The decoded training set is kept in memory where it takes at most this share of the free memory, divided
# between the run's processes on the machine (each keeps its own copy).
KEEP_SHARE = 0.25


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
    changes = colour_changes(config)
    if changes and val.inputs[0] != "rgb":
        raise ConfigError(f"{', '.join(changes)} change{'s' if len(changes) == 1 else ''} colour images only, but "
                          f"this dataset's images are {'+'.join(val.inputs)} (depth encoded as HHA): set "
                          f"{', '.join(changes)} to 0")
    transform = training_transform(config, val.info.ignore_index, normalization)
    train = build_dataset(config.dataset, config.root, config.train_split, transform=transform,
                          normalization=normalization, seed=config.seed, **options)
    if config.train_split != config.val_split and _names(train) == _names(val):
        log.warning(f"the training split {config.train_split!r} and the validation split {config.val_split!r} hold "
                    f"the same {len(train)} images (a split_file option gives its list to both): validation scores, "
                    "and best.pth chosen on them, measure the images the net trains on")
    return train, val


def _names(dataset: SegmentationDataset) -> set[str]:
    return {dataset.sample_name(index) for index in range(len(dataset))}


def colour_changes(config: TrainConfig) -> list[str]:
    """The photometric options ``config`` turns on (None and 0: off)."""
    return [name for name in ("color_jitter", *PHOTOMETRIC) if getattr(config, name)]


def training_transform(config: TrainConfig, ignore_index: int, normalization: str) -> Compose | None:
    """The augmentation of ``config``'s training samples (rescaling, crop, flip, colour); None where it asks
    for none. Crops are padded with ``ignore_index``, the dataset's, in labels."""
    if not (config.crop_size or config.scale_range or config.flip or colour_changes(config)):
        return None
    photometric = {name: getattr(config, name) for name in PHOTOMETRIC}
    return train_transforms(tuple(config.crop_size) if config.crop_size else None,
                            scale_range=tuple(config.scale_range) if config.scale_range else None,
                            flip=config.flip, color_jitter=config.color_jitter,
                            ignore_index=ignore_index, normalization=normalization, **photometric)


def keep_decoded(dataset: SegmentationDataset, workers: int, max_memory: int | None = None) -> bool:
    """Decode the training set once and keep it in memory (:meth:`SegmentationDataset.keep_loaded`) where it
    takes at most :data:`KEEP_SHARE` of the free memory (divided between the run's processes on this machine),
    or of ``max_memory`` where that is less; whether it was kept.

    Workers forked from this process share the kept samples; workers started otherwise (spawn, forkserver)
    would each get a pickled copy, so then nothing is kept. The estimate is the first sample's
    size times the number of samples, plus a quarter for samples larger than the first.
    """
    if not len(dataset):
        return False
    start_method = multiprocessing.get_start_method(allow_none=True) or multiprocessing.get_all_start_methods()[0]
    if workers and start_method != "fork":
        log.info("reading the training images every epoch: loader workers started by %s would each get a copy of "
                 "images kept in memory", start_method)
        return False
    try:  # a sample that cannot be read: nothing kept, and the dataset check lists every such sample
        samples = [dataset.load(0)]
        estimate = 1.25 * len(dataset) * sum(array.nbytes for array in samples[0])
        free, processes = available_bytes(), local_processes()
        if max_memory is not None and max_memory * processes < free:  # a budget per process
            free, room = max_memory * processes, "max_memory"
        else:
            room = "the free memory"
        if estimate > KEEP_SHARE * free / processes:
            each = f", shared by the {processes} processes of this run on this machine" if processes > 1 else ""
            log.info("reading the training images every epoch: decoded, they would take about %s, more than a "
                     "quarter of %s (%s%s)", format_bytes(estimate), room, format_bytes(free), each)
            return False
        rest = (dataset.load(index) for index in range(1, len(dataset)))
        samples += track(rest, total=len(dataset) - 1, desc="decoding the training images", unit="image")
    except DataError:
        return False
    dataset.keep_loaded(samples)
    kept = sum(image.nbytes + label.nbytes for image, label in samples)
    log.info("kept the %d decoded training images in memory (%s)", len(samples), format_bytes(kept))
    return True


class EpochBatches(Sampler[list[tuple[int, int]]]):
    """The batches of a run from micro-batch ``first`` on, endlessly: lists of ``(epoch, sample index)``, each
    epoch in ``sampler``'s order and ending with a short batch where the shard does not divide, as one
    DataLoader per epoch would give them. The epoch travels with each index, so one set of loader workers
    serves the whole run (starting workers every epoch cost CPU time and left the net waiting for the
    first batches of each epoch)."""

    def __init__(self, sampler: EpochSampler, batch_size: int, first: int) -> None:
        self.sampler, self.batch_size = sampler, batch_size
        self.per_epoch = math.ceil(sampler.per_rank / batch_size)
        self.first = first

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, position = divmod(self.first, self.per_epoch)
        while True:
            self.sampler.set_position(epoch, position * self.batch_size)
            order = list(self.sampler)
            for start in range(0, len(order), self.batch_size):
                yield [(epoch, index) for index in order[start:start + self.batch_size]]
            epoch, position = epoch + 1, 0


class EpochSamples(Dataset):
    """``dataset``'s samples addressed by ``(epoch, index)``: as that epoch augments them."""

    def __init__(self, dataset: SegmentationDataset) -> None:
        self.dataset = dataset

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = key
        return self.dataset.sample(index, epoch)


def micro_batches(dataset: SegmentationDataset, sampler: EpochSampler, config: TrainConfig, runtime: Runtime,
                  first: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """``(epoch, images, labels)`` forever, starting at micro-batch ``first`` of the run."""
    batches = EpochBatches(sampler, config.batch_size, first)
    # Its own generator: creating a loader must not draw from the global RNG that dropout uses, or a
    # resumed run (which creates one more loader) would drift from the uninterrupted one.
    loader = DataLoader(EpochSamples(dataset), batch_sampler=batches, num_workers=config.workers,
                        collate_fn=PadCollate(dataset.info.ignore_index), pin_memory=runtime.device.type == "cuda",
                        worker_init_fn=worker_init, generator=epoch_generator(config.seed, 0))
    for count, (images, labels) in enumerate(loader_batches(loader), start=first):
        epoch, batch = divmod(count, batches.per_epoch)
        if config.cutmix:  # boxes from (seed, epoch, batch, rank): a resumed run draws the same ones
            rng = np.random.default_rng((config.seed, epoch, batch, runtime.rank))
            images, labels = cut_mix(images, labels, config.cutmix, rng)
        yield epoch, images, labels
