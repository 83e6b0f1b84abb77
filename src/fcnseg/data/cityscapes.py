"""Cityscapes (Cordts et al. 2016), fine annotations, evaluated on the 19 standard training classes."""

from __future__ import annotations

from pathlib import Path
from typing import Unpack

import numpy as np

from fcnseg.data.base import RGB, FilePairDataset, PipelineOptions, pair_by_key, require_dir
from fcnseg.data.info import CITYSCAPES, IGNORE_INDEX, DatasetInfo
from fcnseg.data.io import PathLike, read_remapped_label
from fcnseg.errors import DataError

CITYSCAPES_LAYOUT = (
    "<root>/leftImg8bit/<split>/<city>/*_leftImg8bit.png with "
    "<root>/gtFine/<split>/<city>/*_gtFine_labelIds.png"
)

IMAGE_SUFFIX, LABEL_SUFFIX = "_leftImg8bit.png", "_gtFine_labelIds.png"
# The official label id -> train id table (cityscapesScripts labels.py); every id not listed -> 255.
LABEL_ID_TO_TRAIN_ID: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}
NUM_LABEL_IDS = 34  # ids 0..33; license plate (-1) is stored as 255 in the uint8 PNGs


def train_id_lut() -> np.ndarray:
    """A 256-entry uint8 lookup table from label ids to train ids (255 = ignore)."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for label_id, train_id in LABEL_ID_TO_TRAIN_ID.items():
        lut[label_id] = train_id
    return lut


_LUT = train_id_lut()


def read_cityscapes_label(path: PathLike, info: DatasetInfo = CITYSCAPES) -> np.ndarray:
    """Read a ``*_gtFine_labelIds.png`` and map its label ids to the 19 train ids (others -> 255)."""
    return read_remapped_label(path, _LUT, [*range(NUM_LABEL_IDS), 255], info,
                               "Cityscapes label ids (0..33): use the *_gtFine_labelIds.png files (not "
                               "*_trainIds, *_color or *_instanceIds)")


def _by_frame(folder: Path, suffix: str) -> dict[str, Path]:
    """``folder``'s ``<city>/*<suffix>`` files by frame, ``<city>/<city>_<seq>_<frame>``: the pairing rule."""
    return {str(p.relative_to(folder))[: -len(suffix)]: p for p in folder.glob(f"*/*{suffix}")}


class Cityscapes(FilePairDataset):
    """Cityscapes fine annotations: ``leftImg8bit/<split>/<city>/`` images with ``gtFine`` label ids,
    mapped to the 19 train ids. ``sample_name`` is the file stem without ``_leftImg8bit``."""

    def __init__(
        self,
        root: PathLike,
        split: str = "train",
        **pipeline: Unpack[PipelineOptions],
    ) -> None:
        root = require_dir(Path(root), CITYSCAPES_LAYOUT)
        self.root = root
        self.split = split
        images_dir = require_dir(root / "leftImg8bit" / split, CITYSCAPES_LAYOUT)
        labels_dir = require_dir(root / "gtFine" / split, CITYSCAPES_LAYOUT)
        images, labels = _by_frame(images_dir, IMAGE_SUFFIX), _by_frame(labels_dir, LABEL_SUFFIX)
        if not images:
            raise DataError(
                f"no *{IMAGE_SUFFIX} images in {images_dir}/<city>/. Expected layout: {CITYSCAPES_LAYOUT}"
            )
        pairs = pair_by_key(images, labels, (images_dir, labels_dir), f"a *{LABEL_SUFFIX}", "label files")
        super().__init__(pairs, info=CITYSCAPES, inputs=RGB, decode_label=read_cityscapes_label, **pipeline)

    def sample_name(self, index: int) -> str:
        return self.pairs[index][0].name[: -len(IMAGE_SUFFIX)]
