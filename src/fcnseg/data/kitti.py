"""The KITTI road benchmark (Fritsch et al. 2013): road / not-road, from colour ground-truth masks."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Unpack

from fcnseg.data.base import RGB, FilePairDataset, PipelineOptions, pair_by_key, require_dir
from fcnseg.data.info import IGNORE_INDEX, KITTI_ROAD
from fcnseg.data.io import PathLike, read_label
from fcnseg.errors import DataError

KITTI_LAYOUT = "<root>/training/image_2/um_000000.png with <root>/training/gt_image_2/um_road_000000.png"

# The ground truth is an RGB image: magenta = road, red = not road, black = outside the region of
# interest (not evaluated, so ignored in training too).
KITTI_COLORS: dict[tuple[int, int, int], int] = {
    (255, 0, 255): 1,
    (255, 0, 0): 0,
    (0, 0, 0): IGNORE_INDEX,
}

VAL_EVERY = 5
KITTI_SPLITS = ("train", "val", "trainval")


def _category(stem: str) -> str:
    return stem.split("_", 1)[0]


class KittiRoad(FilePairDataset):
    """KITTI road: ``training/image_2`` images with ``training/gt_image_2/*_road_*.png`` masks.

    Only the training set has public ground truth, so the splits are a deterministic holdout of it:
    within each category (um, umm, uu), in sorted order, every 5th image (positions 4, 9, ...) is
    ``val``, the rest ``train``; ``trainval`` is all of them. Lane masks (``*_lane_*``) are not used.
    """

    def __init__(
        self,
        root: PathLike,
        split: str = "train",
        **pipeline: Unpack[PipelineOptions],
    ) -> None:
        if split not in KITTI_SPLITS:
            raise DataError(f"unknown KITTI road split {split!r}; choose one of {KITTI_SPLITS}")
        root = require_dir(Path(root), KITTI_LAYOUT)
        if not (root / "training").is_dir() and (root / "data_road" / "training").is_dir():
            root = root / "data_road"
        self.root = root
        self.split = split
        images_dir = require_dir(root / "training" / "image_2", KITTI_LAYOUT)
        labels_dir = require_dir(root / "training" / "gt_image_2", KITTI_LAYOUT)
        images = {p.name: p for p in images_dir.glob("*.png")}
        if not images:
            raise DataError(f"no PNG images in {images_dir}. Expected layout: {KITTI_LAYOUT}")
        # um_000000.png is paired with um_road_000000.png (its lane mask, um_lane_000000.png, is not used).
        masks = {p.name.replace("_road_", "_", 1): p for p in labels_dir.glob("*_road_*.png")}
        every = pair_by_key(images, masks, (images_dir, labels_dir), "a road mask", "road masks")
        position: dict[str, int] = {}
        pairs = []
        for image, mask in every:  # in name order, so the holdout is the same on any machine
            category = _category(image.name)
            is_val = position.get(category, 0) % VAL_EVERY == VAL_EVERY - 1
            position[category] = position.get(category, 0) + 1
            if split == "trainval" or (split == "val") == is_val:
                pairs.append((image, mask))
        if not pairs:
            raise DataError(
                f"KITTI road split {split!r} of {images_dir} is empty (too few images for a holdout)"
            )
        super().__init__(pairs, info=KITTI_ROAD, inputs=RGB, decode_label=partial(read_label, color_map=KITTI_COLORS),
                         **pipeline)
