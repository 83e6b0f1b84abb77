"""SIFT Flow (Liu, Yuen, Torralba 2011): 2,688 outdoor scenes of 256x256 pixels, each labelled twice, with 33
semantic classes and with 3 geometric ones (sky, horizontal, vertical). The FCN paper trains one net with a
head for each; so does fcnseg: a sample's label is 256 x 256 x 2, semantic map first.

Layout (``SiftFlowDataset.zip`` unpacked; ``<cat>`` is ``spatial_envelope_256x256_static_8outdoorcategories``):

    root/Images/<cat>/<id>.jpg
    root/SemanticLabels/<cat>/<id>.mat     "S": 0 void, 1..33 the classes
    root/GeoLabels/<cat>/<id>.mat          "S": -1 (and 0) void, 1..3 the classes

Splits are the authors' lists (fcn.berkeleyvision.org, ``data/sift-flow``), shipped with fcnseg: ``train``
(their ``trainval.txt``: 2,486 images, the paper's 2,488 less two without annotations) and ``test`` (200).
Both label sets shift down by one (class 1 becomes 0) and void becomes 255, as in the authors' data layer.
Three semantic classes (cow, desert, moon) never occur in the test images; the scores leave classes
without ground truth out of the means, as the paper does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Unpack

import numpy as np

from fcnseg.data.base import (
    RGB,
    FilePairDataset,
    PipelineOptions,
    listed_ids,
    listed_pairs,
    raise_if_missing,
    require_dir,
    shift_labels,
)
from fcnseg.data.info import SIFTFLOW, SIFTFLOW_GEOMETRIC, DatasetInfo
from fcnseg.data.io import PathLike, read_mat_array
from fcnseg.errors import DataError

CATEGORY = "spatial_envelope_256x256_static_8outdoorcategories"
SIFTFLOW_LAYOUT = (f"<root>/Images/{CATEGORY}/<id>.jpg, <root>/SemanticLabels/{CATEGORY}/<id>.mat and "
                   f"<root>/GeoLabels/{CATEGORY}/<id>.mat (SiftFlowDataset.zip unpacked)")
SPLITS = {"train": ["train"], "trainval": ["train"], "test": ["test"]}  # the authors call their training list trainval


def geometric_path(semantic: Path) -> Path:
    """The GeoLabels file of a SemanticLabels file: the same name in the sibling folder."""
    return semantic.parents[1].parent / "GeoLabels" / CATEGORY / semantic.name


def read_siftflow_labels(semantic_path: Path, info: DatasetInfo = SIFTFLOW) -> np.ndarray:
    """An image's semantic and geometric labels (the GeoLabels file next to ``semantic_path``) as HxWx2 uint8."""
    semantic = shift_labels(read_mat_array(semantic_path, "S"), info.num_classes, semantic_path, (0,))
    other = geometric_path(semantic_path)
    geometric = shift_labels(read_mat_array(other, "S"), SIFTFLOW_GEOMETRIC.num_classes, other, (-1, 0))
    if semantic.shape != geometric.shape:
        raise DataError(f"{semantic_path} is {semantic.shape[1]}x{semantic.shape[0]} (WxH) but {other} is "
                        f"{geometric.shape[1]}x{geometric.shape[0]}: an image's two label maps must match")
    return np.stack([semantic, geometric], axis=2)


class SiftFlow(FilePairDataset):
    """SIFT Flow with both label sets: ``load`` gives a 256x256x3 image and a 256x256x2 label (semantic,
    geometric). ``split``: train (also trainval) or test; see the module docstring for the layout.
    ``split_file``: a file of image ids (one per line) to read instead of the authors' list."""

    def __init__(self, root: PathLike, split: str = "train", split_file: PathLike | None = None,
                 **pipeline: Unpack[PipelineOptions]) -> None:
        root = require_dir(Path(root), SIFTFLOW_LAYOUT)
        ids, listed = listed_ids("siftflow", split, SPLITS, split_file)
        pairs = listed_pairs(ids, root / "Images" / CATEGORY / "{}.jpg", root / "SemanticLabels" / CATEGORY / "{}.mat",
                             listed, "semantic labels")
        raise_if_missing((geometric_path(label) for _, label in pairs), "geometric labels", listed)
        self.root, self.split = root, split
        super().__init__(pairs, info=SIFTFLOW, inputs=RGB, decode_label=read_siftflow_labels, **pipeline)
