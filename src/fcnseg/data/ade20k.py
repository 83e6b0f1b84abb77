"""ADE20K SceneParsing (MIT Scene Parsing Benchmark 2016): 150 classes, 0 = "other" (ignored)."""

from __future__ import annotations

from pathlib import Path
from typing import Unpack

import numpy as np

from fcnseg.data.base import RGB, FilePairDataset, PipelineOptions, pair_by_key, require_dir
from fcnseg.data.info import IGNORE_INDEX, DatasetInfo, voc_colormap
from fcnseg.data.io import PathLike, read_remapped_label
from fcnseg.errors import DataError

ADE20K_LAYOUT = (
    "<root>/ADEChallengeData2016/images/{training,validation}/*.jpg with "
    "annotations/{training,validation}/*.png"
)

# objectInfo150 short names, in label order (annotation value 1 = "wall" ... 150 = "flag").
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence",
    "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle",
    "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake",
    "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray",
    "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator",
    "glass", "clock", "flag",
)

# Generated, not a pasted table: VOC's bit-spreading colour map from index 1, so all 150 colours are
# distinct and none is black.
ADE20K_INFO = DatasetInfo("ade20k", ADE20K_CLASSES, tuple(voc_colormap(len(ADE20K_CLASSES) + 1)[1:]))

ADE20K_SPLITS = {"training": "training", "validation": "validation", "train": "training", "val": "validation"}


def reduce_zero_label_lut() -> np.ndarray:
    """256-entry uint8 lookup: 0 ("other") -> 255 (ignore), k -> k - 1 for k in 1..150."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    lut[1 : len(ADE20K_CLASSES) + 1] = np.arange(len(ADE20K_CLASSES), dtype=np.uint8)
    return lut


_LUT = reduce_zero_label_lut()


def read_ade20k_label(path: PathLike, info: DatasetInfo = ADE20K_INFO) -> np.ndarray:
    """Read an ADE20K annotation PNG: 0 -> 255 (ignore), 1..150 -> 0..149."""
    return read_remapped_label(path, _LUT, range(len(ADE20K_CLASSES) + 1), info,
                               "in ADE20K's 0..150 (0 = other, 1..150 = classes): is it a SceneParsing "
                               "annotations/*.png file (not the full ADE20K *_seg.png)?")


class ADE20K(FilePairDataset):
    """ADE20K SceneParsing: ``images/<split>/*.jpg`` with ``annotations/<split>/*.png`` of the same stem.

    ``split`` is ``"training"`` or ``"validation"`` (``"train"``/``"val"`` accepted as aliases). Labels
    are reduced by one: 0 ("other") becomes the ignore index 255 and classes 1..150 become 0..149.
    """

    def __init__(
        self,
        root: PathLike,
        split: str = "training",
        **pipeline: Unpack[PipelineOptions],
    ) -> None:
        if split not in ADE20K_SPLITS:
            raise DataError(f"unknown ADE20K split {split!r}; choose one of {sorted(ADE20K_SPLITS)}")
        folder = ADE20K_SPLITS[split]
        root = require_dir(Path(root), ADE20K_LAYOUT)
        if (root / "ADEChallengeData2016").is_dir():
            root = root / "ADEChallengeData2016"
        self.root = root
        self.split = folder
        images_dir = require_dir(root / "images" / folder, ADE20K_LAYOUT)
        labels_dir = require_dir(root / "annotations" / folder, ADE20K_LAYOUT)
        images = {p.stem: p for p in images_dir.glob("*.jpg")}
        labels = {p.stem: p for p in labels_dir.glob("*.png")}
        if not images:
            raise DataError(f"no .jpg images in {images_dir}. Expected layout: {ADE20K_LAYOUT}")
        pairs = pair_by_key(images, labels, (images_dir, labels_dir))  # same stem
        super().__init__(pairs, info=ADE20K_INFO, inputs=RGB, decode_label=read_ade20k_label, **pipeline)
