"""PASCAL-Context (Mottaghi et al. 2014) in the 59-class task of the FCN paper: the 59 most frequent
classes of the full label set, everything else background (class 0), as the authors' data layer maps it.

Layout::

    root/VOC2010/JPEGImages/<id>.jpg
    root/VOC2010/ImageSets/Main/<split>.txt        (the authors train on train, score val)
    root/pascal-context/labels.txt                 the full label set, "<index>: <name>" per line
    root/pascal-context/59_labels.txt              the task's classes, "<k>: <name>", k = 1..59
    root/pascal-context/trainval/<id>.mat          "LabelMap": indices into labels.txt

Three names differ between the two lists (diningtable/table, bedcloth/bedclothes, clothes/cloth); names
are compared without spaces, as the reference does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io
from scipy.io.matlab import MatReadError

from fcnseg.data.base import FilePairDataset, JointTransform, raise_if_missing, read_list_file, require_dir
from fcnseg.data.info import PASCAL_CONTEXT, DatasetInfo
from fcnseg.data.io import PathLike, validate_label
from fcnseg.errors import DataError

CONTEXT_LAYOUT = ("<root>/VOC2010/JPEGImages/<id>.jpg, <root>/VOC2010/ImageSets/Main/<split>.txt and "
                  "<root>/pascal-context/{labels.txt, 59_labels.txt, trainval/<id>.mat}")
# The task's name -> the full label set's name, where they differ.
RENAMED = {"diningtable": "table", "bedcloth": "bedclothes", "clothes": "cloth"}


def _numbered(path: Path) -> dict[int, str]:
    """``{index: name}`` of a "<index>: <name>" list, names without spaces."""
    entries = {}
    for line in read_list_file(path):
        number, sep, name = line.partition(":")
        if not sep or not number.strip().isdigit():
            raise DataError(f"{path}: expected lines '<index>: <name>', got {line!r}")
        entries[int(number)] = name.strip().replace(" ", "")
    return entries


def context_lut(full_labels: Path, task_labels: Path) -> np.ndarray:
    """A lookup table from the full label set's indices to the 59-class task (0 = background)."""
    full, task = _numbered(full_labels), _numbered(task_labels)
    by_name = {name: index for index, name in full.items()}
    lut = np.zeros(max(full, default=0) + 1, dtype=np.uint8)
    for k, name in sorted(task.items()):
        source = RENAMED.get(name, name)
        if source not in by_name:
            raise DataError(f"{task_labels}: class {name!r} is not in {full_labels}")
        lut[by_name[source]] = k
    return lut


class PascalContext(FilePairDataset):
    """PASCAL-Context, 59 classes + background (see the module docstring for the layout)."""

    info: DatasetInfo = PASCAL_CONTEXT

    def __init__(self, root: PathLike, split: str = "val", transform: JointTransform | None = None,
                 normalization: str = "imagenet", seed: int | None = None) -> None:
        root = require_dir(Path(root), CONTEXT_LAYOUT)
        voc, context = root / "VOC2010", require_dir(root / "pascal-context", CONTEXT_LAYOUT)
        list_file = voc / "ImageSets" / "Main" / f"{split}.txt"
        if not list_file.is_file():
            raise DataError(f"no split list {list_file}. Expected layout: {CONTEXT_LAYOUT}")
        ids = [line.split()[0] for line in read_list_file(list_file)]
        pairs = [(voc / "JPEGImages" / f"{i}.jpg", context / "trainval" / f"{i}.mat") for i in ids]
        raise_if_missing((p for p, _ in pairs), "images", str(list_file))
        raise_if_missing((p for _, p in pairs), "labels", str(list_file))
        self.lut = context_lut(context / "labels.txt", context / "59_labels.txt")
        self.root, self.split = root, split
        super().__init__(pairs, transform=transform, normalization=normalization, seed=seed)

    def read_label_file(self, path: Path) -> np.ndarray:
        try:
            label_map = np.asarray(scipy.io.loadmat(str(path))["LabelMap"])
        except (MatReadError, ValueError, OSError, TypeError, KeyError) as exc:
            raise DataError(f"cannot read the LabelMap of {path}: {exc}") from None
        if label_map.ndim != 2 or label_map.size and (label_map.min() < 0 or label_map.max() >= len(self.lut)):
            raise DataError(f"{path}: LabelMap values must be indices of labels.txt (0..{len(self.lut) - 1})")
        return validate_label(self.lut[label_map.astype(np.int64)], self.info, path)
