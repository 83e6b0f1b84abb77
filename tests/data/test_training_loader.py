"""The training loader (fcnseg.train.data): one DataLoader for the whole run gives the batches one DataLoader per
epoch gave; the decoded training images kept in memory give the batches the files give, a transform cannot change
a kept sample, and nothing is kept where it would not fit or where loader workers would each get a copy."""

from __future__ import annotations

import dataclasses
import multiprocessing

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from fcnseg.data.collate import PadCollate
from fcnseg.data.mix import cut_mix
from fcnseg.errors import DataError
from fcnseg.runtime import Runtime
from fcnseg.train import TrainConfig, train
from fcnseg.train import data as train_data
from fcnseg.train.data import EpochSampler, build_datasets, epoch_generator, keep_decoded, micro_batches

from ..helpers import error_names, folder_dataset, mentions


def folder_config(root, **options) -> TrainConfig:
    (root / "splits").mkdir(exist_ok=True)
    for split in ("train", "val"):
        (root / "splits" / f"{split}.txt").write_text("0\n1\n2\n3\n")
    return TrainConfig.from_dict({"dataset": "folder", "root": str(root), "crop_size": [24, 32],
                                  "scale_range": [0.75, 1.5], "color_jitter": 0.2, "gamma": 0.5, "noise": 4.0,
                                  "cutmix": 0.5, "batch_size": 2, "threads": 1, **options})


def batches(config: TrainConfig, keep: bool, count: int = 6) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    dataset, _ = build_datasets(config, "imagenet")
    if keep:
        assert keep_decoded(dataset, config.workers) and dataset.kept is not None
    generator = micro_batches(dataset, EpochSampler(len(dataset), config.seed), config,
                              Runtime(torch.device("cpu"), 1), 0)
    return [next(generator) for _ in range(count)]  # 3 epochs of 2 batches


def loader_per_epoch(config: TrainConfig, first: int, count: int) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    """The batches as fcnseg made them before one loader served a run: a new DataLoader every epoch."""
    dataset, _ = build_datasets(config, "imagenet")
    sampler, per_epoch, found = EpochSampler(len(dataset), config.seed), -(-len(dataset) // config.batch_size), []
    for epoch in range(first // per_epoch, (first + count) // per_epoch + 1):
        dataset.set_epoch(epoch)
        position = first % per_epoch if epoch == first // per_epoch else 0
        sampler.set_position(epoch, position * config.batch_size)
        loader = DataLoader(dataset, batch_size=config.batch_size, sampler=sampler, collate_fn=PadCollate(255),
                            generator=epoch_generator(config.seed, epoch))
        for batch, (images, labels) in enumerate(loader, start=position):
            rng = np.random.default_rng((config.seed, epoch, batch, 0))
            found.append((epoch, *cut_mix(images, labels, config.cutmix, rng)))
    return found[:count]


@pytest.mark.parametrize(("workers", "first"), [(0, 0), (2, 0), (2, 3)])
def test_one_loader_gives_the_batches_a_loader_per_epoch_gave(tmp_path, workers, first):
    # 4 images in batches of 3: each epoch is a batch of 3 and a batch of 1; first 3: resumed mid-epoch 1
    config = folder_config(folder_dataset(tmp_path / "data"), workers=workers, batch_size=3, keep_decoded=False)
    dataset, _ = build_datasets(config, "imagenet")
    generator = micro_batches(dataset, EpochSampler(len(dataset), config.seed), config,
                              Runtime(torch.device("cpu"), 1), first)
    found = [next(generator) for _ in range(5)]
    assert [epoch for epoch, _, _ in found] == [0, 0, 1, 1, 2] if first == 0 else [1, 2, 2, 3, 3]
    assert [images.shape[0] for _, images, _ in found] == ([3, 1, 3, 1, 3] if first == 0 else [1, 3, 1, 3, 1])
    for (epoch, images, labels), (old_epoch, old_images, old_labels) in zip(found, loader_per_epoch(config, first, 5),
                                                                           strict=True):
        assert epoch == old_epoch and torch.equal(images, old_images) and torch.equal(labels, old_labels)


@pytest.mark.parametrize("workers", [0, 1])
def test_kept_images_give_the_batches_the_files_give(tmp_path, workers):
    config = folder_config(folder_dataset(tmp_path / "data"), workers=workers)
    from_files, from_memory = batches(config, keep=False), batches(config, keep=True)
    assert [epoch for epoch, _, _ in from_memory] == [0, 0, 1, 1, 2, 2]
    for (_, images, labels), (_, kept_images, kept_labels) in zip(from_files, from_memory, strict=True):
        assert torch.equal(images, kept_images) and torch.equal(labels, kept_labels)


def test_a_transform_cannot_change_a_kept_image(tmp_path):
    dataset, _ = build_datasets(folder_config(folder_dataset(tmp_path / "data")), "imagenet")
    assert keep_decoded(dataset, workers=0)
    image, label = dataset.load(1)
    with pytest.raises(ValueError, match="read-only"):
        image[0, 0] = 0  # a transform that wrote into its input would change the sample for every later epoch
    with pytest.raises(ValueError, match="read-only"):
        label[0, 0] = 0
    assert dataset[1][0].shape == (3, 24, 32)  # the pipeline still runs on them


def test_nothing_is_kept_where_it_would_take_over_a_quarter_of_the_free_memory(tmp_path, monkeypatch, caplog):
    dataset, _ = build_datasets(folder_config(folder_dataset(tmp_path / "data")), "imagenet")
    # 4 images of 40x48x3 and labels of 40x48: 7680 bytes each, 1.25 x 4 x 7680 = 38400 bytes estimated
    monkeypatch.setattr(train_data, "available_bytes", lambda: 4 * 38400 - 4)
    caplog.set_level("INFO", logger="fcnseg")
    assert not keep_decoded(dataset, workers=0) and dataset.kept is None
    assert mentions(caplog.text, "37.5 KB") and "reading the training images every epoch" in caplog.text
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun's second process on this machine keeps a copy too
    monkeypatch.setattr(train_data, "available_bytes", lambda: 8 * 38400 - 8)
    caplog.clear()
    assert not keep_decoded(dataset, workers=0) and "shared by the 2 processes" in caplog.text
    monkeypatch.setattr(train_data, "available_bytes", lambda: 8 * 38400)
    assert keep_decoded(dataset, workers=0) and len(dataset.kept) == 4


def test_nothing_is_kept_beyond_a_quarter_of_max_memory(tmp_path, monkeypatch, caplog):
    # --max-memory 200M kept the 242 MB of CamVid's decoded training images (a 676 MB peak): only the training
    # step was held to it.
    dataset, _ = build_datasets(folder_config(folder_dataset(tmp_path / "data")), "imagenet")
    monkeypatch.setattr(train_data, "available_bytes", lambda: 2**40)
    caplog.set_level("INFO", logger="fcnseg")
    assert not keep_decoded(dataset, workers=0, max_memory=4 * 38400 - 4) and dataset.kept is None
    assert "more than a quarter of max_memory" in caplog.text
    assert keep_decoded(dataset, workers=0, max_memory=4 * 38400) and len(dataset.kept) == 4


def test_nothing_is_kept_where_loader_workers_are_not_forked(tmp_path, monkeypatch, caplog):
    dataset, _ = build_datasets(folder_config(folder_dataset(tmp_path / "data")), "imagenet")
    monkeypatch.setattr(multiprocessing, "get_start_method", lambda allow_none=False: "spawn")
    caplog.set_level("INFO", logger="fcnseg")
    assert not keep_decoded(dataset, workers=2) and dataset.kept is None  # each worker would get a copy
    assert "spawn" in caplog.text
    assert keep_decoded(dataset, workers=0)  # no workers: the one copy is this process's


def test_a_bad_training_image_is_not_kept_and_the_check_lists_every_bad_one(tmp_path):
    config = folder_config(folder_dataset(tmp_path / "data", broken=("1", "3")), iterations=1,
                           out=str(tmp_path / "run"), width=1 / 16, geometry="fast")
    with pytest.raises(DataError) as excinfo:
        train(config)
    error_names(excinfo, "2 of 4 samples of the training split", "1.png", "3.png")


def test_keeping_them_or_not_may_change_on_resume(tmp_path):
    config = folder_config(folder_dataset(tmp_path / "data"), iterations=2, val_interval=2, checkpoint_interval=1,
                           out=str(tmp_path / "run"), width=1 / 16, geometry="fast", schedule="constant",
                           val_limit=1)
    train(config)
    result = train(dataclasses.replace(config, keep_decoded=False, iterations=3, resume=True))
    assert result["iterations"] == 3


def test_labels_of_a_kept_sample_become_a_writable_tensor():
    from fcnseg.data.base import to_tensors

    image, label = np.zeros((4, 6, 3), np.uint8), np.full((4, 6), 3, np.uint8)
    image.flags.writeable = label.flags.writeable = False
    tensor_image, tensor_label = to_tensors(image, label, "imagenet")
    tensor_label[0, 0] = 5  # its own memory: torch warned about (and would have written into) a read-only array
    assert tensor_label.dtype == torch.int64 and label[0, 0] == 3 and tensor_image.shape == (3, 4, 6)
