"""Dataset readers by name, so configs and the command line can say ``dataset: camvid``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fcnseg.data.ade20k import ADE20K
from fcnseg.data.base import JointTransform, SegmentationDataset
from fcnseg.data.camvid import CamVid
from fcnseg.data.cityscapes import Cityscapes
from fcnseg.data.folder import FolderDataset
from fcnseg.data.io import DataError, PathLike
from fcnseg.data.kitti import KittiRoad
from fcnseg.data.synthetic import SyntheticRoads
from fcnseg.data.voc import SBDSegmentation, VOCSegmentation


def synthetic(root: PathLike | None = None, split: str = "train", transform: JointTransform | None = None,
              normalization: str = "imagenet", **options: Any) -> SyntheticRoads:
    """The built-in road scenes (generated, so ``root`` is not used); options: num_images, height, width."""
    return SyntheticRoads(split=split, transform=transform, normalization=normalization, **options)


# name -> reader; every reader takes (root, split=..., transform=..., normalization=..., **options).
DATASETS: dict[str, Callable[..., SegmentationDataset]] = {
    "synthetic": synthetic,
    "voc": VOCSegmentation,
    "sbd": SBDSegmentation,
    "camvid": CamVid,
    "kitti_road": KittiRoad,
    "cityscapes": Cityscapes,
    "ade20k": ADE20K,
    "folder": FolderDataset,
}


def build_dataset(
    name: str,
    root: PathLike,
    split: str,
    transform: JointTransform | None = None,
    normalization: str = "imagenet",
    **kwargs: Any,
) -> SegmentationDataset:
    """Construct the dataset reader registered as ``name``; extra keyword arguments go to its constructor."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(DATASETS))}")
    return DATASETS[name](root, split=split, transform=transform, normalization=normalization, **kwargs)
