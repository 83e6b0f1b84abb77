"""CamVid road scenes in the 11-class SegNet layout (label 11 = void, ignored)."""

from __future__ import annotations

from pathlib import Path
from typing import Unpack

from fcnseg.data.base import (
    RGB,
    FilePairDataset,
    PipelineOptions,
    pair_by_key,
    raise_if_missing,
    read_list_file,
    require_dir,
)
from fcnseg.data.info import CAMVID
from fcnseg.data.io import PathLike
from fcnseg.errors import DataError

CAMVID_LAYOUT = (
    "<root>/{train,val,test}/*.png with labels in <root>/{train,val,test}annot/*.png, optional <split>.txt"
)


class CamVid(FilePairDataset):
    """CamVid, SegNet layout: ``<split>/`` images, ``<split>annot/`` mode-L labels (0..10, 11 = void).

    Pairs come from ``<root>/<split>.txt`` when present. Its lines hold absolute paths from the machine
    the dataset was published on (``/SegNet/CamVid/train/x.png /SegNet/CamVid/trainannot/x.png``), so
    each path is resolved relative to ``root`` from its last two components (folder and file name).
    Without a list file, ``<split>/`` and ``<split>annot/`` are paired by file name; a file without a
    partner is an error.
    """

    def __init__(
        self,
        root: PathLike,
        split: str = "train",
        **pipeline: Unpack[PipelineOptions],
    ) -> None:
        root = require_dir(Path(root), CAMVID_LAYOUT)
        if not (root / split).is_dir() and (root / "CamVid" / split).is_dir():
            root = root / "CamVid"  # the parent of SegNet's CamVid folder was given
        self.root = root
        self.split = split
        list_file = root / f"{split}.txt"
        if list_file.is_file():
            pairs = self._pairs_from_list(root, list_file)
        else:
            pairs = self._pairs_from_folders(root, split)
        super().__init__(pairs, info=CAMVID, inputs=RGB, **pipeline)

    @staticmethod
    def _pairs_from_list(root: Path, list_file: Path) -> list[tuple[Path, Path]]:
        pairs = []
        for number, line in enumerate(read_list_file(list_file), start=1):
            parts = line.split()
            if len(parts) != 2:
                raise DataError(
                    f"{list_file} line {number}: expected '<image path> <label path>', got {line!r}"
                )
            # Foreign absolute paths: keep only "<folder>/<file>" and look for it under root.
            image, label = (root / Path(p).parent.name / Path(p).name for p in parts)
            pairs.append((image, label))
        if not pairs:
            raise DataError(f"list file {list_file} is empty; expected lines '<image path> <label path>'")
        raise_if_missing((p for p, _ in pairs), "images", str(list_file))
        raise_if_missing((p for _, p in pairs), "labels", str(list_file))
        return pairs

    @staticmethod
    def _pairs_from_folders(root: Path, split: str) -> list[tuple[Path, Path]]:
        images_dir, labels_dir = root / split, root / f"{split}annot"
        if not images_dir.is_dir() or not labels_dir.is_dir():
            raise DataError(
                f"CamVid split {split!r} not found in {root}: need {images_dir} and {labels_dir} "
                f"(or {root / (split + '.txt')}). Expected layout: {CAMVID_LAYOUT}"
            )
        images, labels = ({p.name: p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")}
                          for folder in (images_dir, labels_dir))
        if not images:
            raise DataError(f"no images in {images_dir}. Expected layout: {CAMVID_LAYOUT}")
        return pair_by_key(images, labels, (images_dir, labels_dir))  # same file name
