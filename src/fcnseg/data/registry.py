"""Dataset readers by name, so configs and the command line can say ``dataset: camvid``."""

from __future__ import annotations

import inspect
import os
import types
import typing
from collections.abc import Callable
from typing import Any, Unpack

from fcnseg.data.ade20k import ADE20K
from fcnseg.data.base import PIPELINE_OPTIONS, JointTransform, PipelineOptions, SegmentationDataset
from fcnseg.data.camvid import CamVid
from fcnseg.data.cityscapes import Cityscapes
from fcnseg.data.context import PascalContext
from fcnseg.data.folder import FolderDataset
from fcnseg.data.io import PathLike
from fcnseg.data.kitti import KittiRoad
from fcnseg.data.nyud import NYUDv2
from fcnseg.data.siftflow import SiftFlow
from fcnseg.data.synthetic import SyntheticRoads
from fcnseg.data.voc import SBDSegmentation, VOCSegmentation
from fcnseg.errors import ConfigError, did_you_mean
from fcnseg.ranges import check_type


def synthetic(root: PathLike | None = None, split: str = "train", num_images: int = 200, height: int = 128,
              width: int = 160, **pipeline: Unpack[PipelineOptions]) -> SyntheticRoads:
    """The built-in road scenes (generated, so ``root`` is not used); options: num_images, height, width."""
    return SyntheticRoads(num_images=num_images, split=split, height=height, width=width, **pipeline)


# name -> reader; every reader takes (root, split=..., its options..., **pipeline): the pipeline's options
# (transform, normalization, seed, class_map: fcnseg.data.base.PipelineOptions) go to SegmentationDataset.
DATASETS: dict[str, Callable[..., SegmentationDataset]] = {
    "synthetic": synthetic,
    "voc": VOCSegmentation,
    "sbd": SBDSegmentation,
    "camvid": CamVid,
    "kitti_road": KittiRoad,
    "cityscapes": Cityscapes,
    "ade20k": ADE20K,
    "pascal_context": PascalContext,
    "siftflow": SiftFlow,
    "nyud": NYUDv2,
    "folder": FolderDataset,
}
_COMMON = {"self", "root", "split", *PIPELINE_OPTIONS}


def needs_root(name: str) -> bool:
    """Whether dataset ``name`` reads files (a root folder); the synthetic one draws its images."""
    return name != "synthetic"


def require_dataset(name: str) -> None:
    """Refuse a dataset name fcnseg has no reader for, naming the ones it has."""
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(DATASETS))}")


def dataset_options(name: str) -> list[str]:
    """The reader-specific options of dataset ``name`` (``dataset_options`` in a training config)."""
    require_dataset(name)
    parameters = inspect.signature(DATASETS[name]).parameters.values()
    return [p.name for p in parameters if p.name not in _COMMON and p.kind != p.VAR_KEYWORD]


# The plain types a reader's options are checked against here (others, sequences and mappings, the reader checks).
_PLAIN = (bool, int, float, str, os.PathLike, type(None))


def _check_option_types(name: str, options: dict[str, Any]) -> None:
    """A ConfigError for a reader option of the wrong plain type (``num_images: abc`` was a TypeError in the
    reader, ``num_images: true`` one image, ``height: 40.5`` a TypeError traceback too), by the same rule as
    training's options (:func:`fcnseg.ranges.check_type`)."""
    hints = typing.get_type_hints(DATASETS[name])  # a class: its constructor's annotations
    for key, value in options.items():
        hint = hints.get(key)
        members = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        if all(member in _PLAIN for member in members):
            check_type(value, hint, f"dataset {name}: option {key}")


def build_dataset(name: str, root: PathLike | None, split: str, transform: JointTransform | None = None,
                  normalization: str = "imagenet", seed: int | None = None, **options: Any) -> SegmentationDataset:
    """Construct the dataset reader registered as ``name``; ``options`` go to its constructor.

    ``transform`` and ``normalization`` are fixed from construction; ``seed`` makes the random transforms
    a function of (seed, epoch, index) (see :mod:`fcnseg.data.base`). Every reader also takes
    ``class_map`` (merge or rename classes, :mod:`fcnseg.data.class_map`): the pipeline maps the labels it loads,
    and the dataset keeps its ``inputs`` and ``generated``.
    """
    require_dataset(name)
    class_map = options.pop("class_map", None)
    unknown = sorted(set(options) - set(dataset_options(name)))
    if unknown:
        names = [*dataset_options(name), "class_map"]
        hint = " (YAML needs a space after a colon: {num_images: 16})" if any(":" in key for key in unknown) else ""
        raise ConfigError(f"dataset {name} has no option(s) {', '.join(unknown)}{hint}"
                          f"{'' if hint else did_you_mean(unknown, names)}; its options: {', '.join(names)}")
    _check_option_types(name, options)
    selects = isinstance(split, str) and ("[" in split or "]" in split)
    if selects and not getattr(DATASETS[name], "selects_drives", False):
        raise ConfigError(f"split {split!r}: selecting frames by drive (SPLIT[DRIVE]) is for camvid; dataset {name} "
                          "takes a plain split name")
    if root is None and needs_root(name):
        raise ConfigError(f"dataset {name!r} needs a root: the folder holding its files (--root)")
    return DATASETS[name](root, split=split, transform=transform, normalization=normalization, seed=seed,
                          class_map=class_map, **options)
