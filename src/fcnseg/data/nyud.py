"""NYUDv2 (Silberman et al. 2012) in the 40-class task of Gupta, Arbelaez and Malik (CVPR 2013), as the
FCN paper uses it: 1,449 indoor RGB-D frames, the authors' 795 training (their train + val lists) and 654
test images, read as the authors' data layer reads their ``nyud.tar.gz``:

    root/data/images/img_<id>.png     colour (560 x 425, the authors' crop of the 640 x 480 frames)
    root/data/hha/img_<id>.png        HHA encoding of the depth (optional: computed from the depth if absent)
    root/data/depth/img_<id>.png      depth, 16-bit millimetres (needed only without data/hha)
    root/segmentation/img_<id>.mat    "segmentation": 0 void, 1..40 the classes

``inputs`` says what a sample's image holds: ``rgb`` (colour), ``hha``, or ``rgb+hha`` (both stacked, 6
channels, for the colour-HHA late-fusion net). Split lists ship with fcnseg: ``train`` (381), ``val`` (414),
``trainval`` (the 795 the paper trains on) and ``test`` (654); ``split_file`` reads ids from a file instead.
Labels shift down by one, void to 255. HHA images computed from depth (no ``data/hha`` folder) use
``intrinsics`` (fx, fy, cx, cy), by default NYUDv2's camera for its frame sizes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Unpack

import numpy as np

from fcnseg.data.base import FilePairDataset, PipelineOptions, listed_ids, raise_if_missing, require_dir, shift_labels
from fcnseg.data.hha import hha_from_depth, intrinsics_for
from fcnseg.data.info import NYUD, DatasetInfo
from fcnseg.data.io import PathLike, check_pair, read_depth, read_image, read_mat_array
from fcnseg.errors import DataError

NYUD_LAYOUT = ("<root>/data/images/img_<id>.png, <root>/data/hha/img_<id>.png (or <root>/data/depth/img_<id>.png) "
               "and <root>/segmentation/img_<id>.mat (the authors' nyud.tar.gz unpacked)")
NYUD_INPUTS = {"rgb": ("rgb",), "hha": ("hha",), "rgb+hha": ("rgb", "hha")}
SPLITS = {"train": ["train"], "val": ["val"], "trainval": ["train", "val"], "test": ["test"]}


def read_nyud_label(path: Path, info: DatasetInfo = NYUD) -> np.ndarray:
    """A ``segmentation/img_<id>.mat`` file: 1..40 become classes 0..39, 0 (void) becomes 255."""
    return shift_labels(read_mat_array(path, "segmentation"), info.num_classes, path, (0,))


class NYUDv2(FilePairDataset):
    """NYUDv2, 40 classes; see the module docstring for the layout, splits and ``inputs``."""

    def __init__(self, root: PathLike, split: str = "trainval", inputs: str = "rgb", split_file: PathLike | None = None,
                 intrinsics: Sequence[float] | None = None, **pipeline: Unpack[PipelineOptions]) -> None:
        root = require_dir(Path(root), NYUD_LAYOUT)
        if inputs not in NYUD_INPUTS:
            raise DataError(f"NYUDv2 inputs are {', '.join(NYUD_INPUTS)}, not {inputs!r}")
        ids, listed = listed_ids("nyud", split, SPLITS, split_file)
        self.intrinsics = tuple(intrinsics) if intrinsics is not None else None
        self.hha_from_png = (root / "data" / "hha").is_dir()
        pairs = [(root / "data" / "images" / f"img_{i}.png", root / "segmentation" / f"img_{i}.mat") for i in ids]
        raise_if_missing((label for _, label in pairs), "labels", listed)
        if "rgb" in NYUD_INPUTS[inputs]:
            raise_if_missing((image for image, _ in pairs), "colour images", listed)
        if "hha" in NYUD_INPUTS[inputs]:
            raise_if_missing((self._depth_file(image) for image, _ in pairs),
                             "HHA images" if self.hha_from_png else "depth maps (and no data/hha folder)", listed)
        self.root, self.split = root, split
        super().__init__(pairs, info=NYUD, inputs=NYUD_INPUTS[inputs], decode_label=read_nyud_label, **pipeline)

    def _depth_file(self, image: Path) -> Path:
        """The HHA image of a colour image's frame, or its depth map where the dataset has no HHA images."""
        return image.parents[1] / ("hha" if self.hha_from_png else "depth") / image.name

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The channels ``inputs`` names, side by side (colour, then HHA), and the label."""
        image_path, label_path = self.pairs[index]
        label = self.decode_label(label_path, self.source_info)
        parts = []
        for name in self.inputs:
            path = image_path if name == "rgb" else self._depth_file(image_path)
            if name == "hha" and not self.hha_from_png:
                depth = read_depth(path)
                part = hha_from_depth(depth, intrinsics_for(*depth.shape, self.intrinsics))
            else:
                part = read_image(path)
            check_pair(part, label, path, label_path)
            parts.append(part)
        return np.concatenate(parts, axis=2), label
