"""PASCAL VOC segmentation and the Semantic Boundaries Dataset (SBD), the FCN paper's training data.

* ``VOCSegmentation`` reads ``VOCdevkit/VOC2012`` (or ``VOC2011``...): JPEG images, palette-PNG labels
  (index = class, 255 = void boundary) and the split lists in ``ImageSets/Segmentation``.
* ``SBDSegmentation`` reads Hariharan et al.'s ``benchmark_RELEASE/dataset`` (.mat labels, no void).
* ``seg11valid`` is the paper's validation set: the 736 VOC2011 val images that are not in SBD train
  (FCN trains on SBD train, so the rest of VOC2011 val would be seen in training).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Unpack

import numpy as np

from fcnseg.data.base import (
    RGB,
    FilePairDataset,
    PipelineOptions,
    listed_pairs,
    read_list_file,
    require_dir,
    unmatched_error,
)
from fcnseg.data.info import VOC, DatasetInfo
from fcnseg.data.io import PathLike, read_mat_array, validate_label
from fcnseg.errors import DataError

log = logging.getLogger(__name__)

VOC_LAYOUT = (
    "<root>/VOCdevkit/VOC<year>/ (or a folder directly containing) JPEGImages/*.jpg, "
    "SegmentationClass/*.png and optionally ImageSets/Segmentation/<split>.txt"
)
SBD_LAYOUT = "<root>/benchmark_RELEASE/dataset/ with img/*.jpg, cls/*.mat and train.txt / val.txt"


def find_voc_dir(root: PathLike, year: str = "2012") -> Path:
    """The folder holding ``JPEGImages`` and ``SegmentationClass``: ``root/VOCdevkit/VOC<year>``,
    ``root/VOC<year>`` or ``root`` itself."""
    root = require_dir(Path(root), VOC_LAYOUT)
    for candidate in (root / "VOCdevkit" / f"VOC{year}", root / f"VOC{year}", root):
        if (candidate / "JPEGImages").is_dir() and (candidate / "SegmentationClass").is_dir():
            return candidate
    raise DataError(f"no PASCAL VOC {year} data found in {root}. Expected layout: {VOC_LAYOUT}")


def find_sbd_dir(root: PathLike) -> Path:
    """The SBD folder holding ``img/`` and ``cls/``: ``root/benchmark_RELEASE/dataset``, ``root/dataset``
    or ``root`` itself."""
    root = require_dir(Path(root), SBD_LAYOUT)
    for candidate in (root / "benchmark_RELEASE" / "dataset", root / "dataset", root):
        if (candidate / "img").is_dir() and (candidate / "cls").is_dir():
            return candidate
    raise DataError(f"no SBD data found in {root}. Expected layout: {SBD_LAYOUT}")


def _split_ids(list_file: Path) -> list[str]:
    # First token only: some list files carry a second column (e.g. " 1" flags in VOC's per-class lists).
    ids = [line.split()[0] for line in read_list_file(list_file)]
    if not ids:
        raise DataError(f"split list {list_file} is empty; it should hold one image id per line")
    return ids


def _available_splits(folder: Path) -> str:
    names = sorted(p.stem for p in folder.glob("*.txt")) if folder.is_dir() else []
    return ", ".join(names) if names else "none"


def seg11valid_ids(voc_val_ids: list[str], sbd_train_ids: list[str]) -> list[str]:
    """The VOC val ids that are not in SBD train, in the VOC list's order.

    With VOC2011's val list (1111 ids) and SBD's train list (8498 ids) this is the FCN paper's
    ``seg11valid`` set of 736 images. With VOC2012's larger val list the result is a bigger set that
    does not match the paper's numbers.
    """
    exclude = set(sbd_train_ids)
    return [i for i in voc_val_ids if i not in exclude]


class VOCSegmentation(FilePairDataset):
    """PASCAL VOC semantic segmentation (21 classes, 255 = void).

    Split ids come from, in order: ``split_file`` if given; ``ImageSets/Segmentation/<split>.txt``;
    for ``split="seg11valid"``, the val list minus SBD train ids read from ``sbd_root`` (see
    ``seg11valid_ids``; pass ``year="2011"`` for the paper's 736 images). When the dataset has no
    ``ImageSets/Segmentation`` folder at all (e.g. a small sample), every image in ``JPEGImages`` that has
    a label in ``SegmentationClass`` is used, for any split name: train and val are then the SAME images.
    """

    def __init__(
        self,
        root: PathLike,
        split: str = "train",
        year: str = "2012",
        sbd_root: PathLike | None = None,
        split_file: PathLike | None = None,
        **pipeline: Unpack[PipelineOptions],
    ) -> None:
        base = find_voc_dir(root, year)
        self.root = base
        self.split = split
        images, labels = base / "JPEGImages", base / "SegmentationClass"
        lists = base / "ImageSets" / "Segmentation"
        if split_file is not None:
            ids = _split_ids(Path(split_file))
            source = str(split_file)
        elif (lists / f"{split}.txt").is_file():
            ids = _split_ids(lists / f"{split}.txt")
            source = str(lists / f"{split}.txt")
        elif split == "seg11valid":
            ids = self._seg11valid(lists, sbd_root)
            source = f"{lists / 'val.txt'} minus SBD train"
        elif lists.is_dir():
            raise DataError(
                f"no split list {lists / (split + '.txt')}; available splits: {_available_splits(lists)}"
            )
        else:
            ids = self._labelled_ids(images, labels)
            source = str(labels)
            if split != "all":  # any name reads them all: a misspelt split would go unnoticed
                log.warning("%s has no split lists (ImageSets/Segmentation): split %r is every labelled image (%d)",
                            base, split, len(ids))
        pairs = listed_pairs(ids, images / "{}.jpg", labels / "{}.png", source)
        super().__init__(pairs, info=VOC, inputs=RGB, **pipeline)

    @staticmethod
    def _seg11valid(lists: Path, sbd_root: PathLike | None) -> list[str]:
        val_list = lists / "val.txt"
        if sbd_root is None or not val_list.is_file():
            raise DataError(
                "split 'seg11valid' needs either a list file "
                f"(split_file=..., or {lists / 'seg11valid.txt'}) or both the VOC val list {val_list} "
                "and SBD's train list (sbd_root=...)"
            )
        sbd_train = find_sbd_dir(sbd_root) / "train.txt"
        if not sbd_train.is_file():
            raise DataError(f"SBD train list not found: {sbd_train}. Expected layout: {SBD_LAYOUT}")
        ids = seg11valid_ids(_split_ids(val_list), _split_ids(sbd_train))
        if not ids:
            raise DataError(f"every id of {val_list} is in {sbd_train}: seg11valid would be empty")
        return ids

    @staticmethod
    def _labelled_ids(images: Path, labels: Path) -> list[str]:
        label_ids = sorted(p.stem for p in labels.glob("*.png"))
        if not label_ids:
            raise DataError(f"no label PNGs in {labels}. Expected layout: {VOC_LAYOUT}")
        # Images without labels are normal in VOC (only a subset is segmented); labels without images not.
        orphans = [i for i in label_ids if not (images / f"{i}.jpg").is_file()]
        if orphans:
            raise unmatched_error(labels, f"labels without an image in {images} (as <id>.jpg)", orphans)
        return label_ids


def read_sbd_label(path: PathLike, info: DatasetInfo = VOC) -> np.ndarray:
    """Read an SBD ``cls/*.mat`` file's ``GTcls.Segmentation`` as an HxW uint8 class array.

    SBD labels have no void (255) band at object boundaries, unlike VOC's PNGs.
    """
    segmentation = read_mat_array(path, "GTcls.Segmentation",
                                  "SBD class labels are the cls/*.mat files (inst/*.mat hold instance labels)")
    return validate_label(segmentation, info, path)


class SBDSegmentation(FilePairDataset):
    """The Semantic Boundaries Dataset (Hariharan et al. 2011): VOC's 21 classes, ``train`` (8498) and
    ``val`` (2857) lists, labels in ``cls/<id>.mat``."""

    def __init__(
        self,
        root: PathLike,
        split: str = "train",
        **pipeline: Unpack[PipelineOptions],
    ) -> None:
        base = find_sbd_dir(root)
        self.root = base
        self.split = split
        list_file = base / f"{split}.txt"
        if not list_file.is_file():
            raise DataError(f"no split list {list_file}; available splits: {_available_splits(base)}")
        ids = _split_ids(list_file)
        pairs = listed_pairs(ids, base / "img" / "{}.jpg", base / "cls" / "{}.mat", str(list_file))
        super().__init__(pairs, info=VOC, inputs=RGB, decode_label=read_sbd_label, **pipeline)
