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

import numpy as np

from fcnseg.data.base import FilePairDataset, JointTransform, listed_ids, raise_if_missing, require_dir, shift_labels
from fcnseg.data.info import SIFTFLOW, SIFTFLOW_GEOMETRIC, DatasetInfo
from fcnseg.data.io import PathLike, check_pair, read_image, read_mat_array

CATEGORY = "spatial_envelope_256x256_static_8outdoorcategories"
SIFTFLOW_LAYOUT = (f"<root>/Images/{CATEGORY}/<id>.jpg, <root>/SemanticLabels/{CATEGORY}/<id>.mat and "
                   f"<root>/GeoLabels/{CATEGORY}/<id>.mat (SiftFlowDataset.zip unpacked)")
SPLITS = {"train": ["train"], "trainval": ["train"], "test": ["test"]}  # the authors call their training list trainval


class SiftFlow(FilePairDataset):
    """SIFT Flow with both label sets: ``load`` gives a 256x256x3 image and a 256x256x2 label (semantic,
    geometric). ``split``: train (also trainval) or test; see the module docstring for the layout.
    ``split_file``: a file of image ids (one per line) to read instead of the authors' list."""

    info: DatasetInfo = SIFTFLOW

    def __init__(self, root: PathLike, split: str = "train", transform: JointTransform | None = None,
                 normalization: str = "imagenet", seed: int | None = None, split_file: PathLike | None = None) -> None:
        root = require_dir(Path(root), SIFTFLOW_LAYOUT)
        ids, listed = listed_ids("siftflow", split, SPLITS, split_file)
        pairs = [(root / "Images" / CATEGORY / f"{i}.jpg", root / "SemanticLabels" / CATEGORY / f"{i}.mat")
                 for i in ids]
        raise_if_missing((image for image, _ in pairs), "images", listed)
        raise_if_missing((label for _, label in pairs), "semantic labels", listed)
        raise_if_missing((self._geometric(label) for _, label in pairs), "geometric labels", listed)
        self.root, self.split = root, split
        super().__init__(pairs, transform=transform, normalization=normalization, seed=seed)

    @staticmethod
    def _geometric(semantic: Path) -> Path:
        return semantic.parents[1].parent / "GeoLabels" / CATEGORY / semantic.name

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image_path, semantic_path = self.pairs[index]
        image = read_image(image_path)
        geometric_path = self._geometric(semantic_path)
        semantic = shift_labels(read_mat_array(semantic_path, "S"), SIFTFLOW.num_classes, semantic_path, (0,))
        geometric = shift_labels(read_mat_array(geometric_path, "S"), SIFTFLOW_GEOMETRIC.num_classes,
                                 geometric_path, (-1, 0))
        check_pair(image, semantic, image_path, semantic_path)
        check_pair(image, geometric, image_path, geometric_path)
        return image, np.stack([semantic, geometric], axis=2)
