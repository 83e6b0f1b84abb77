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

import re
from functools import partial
from pathlib import Path
from typing import Unpack

import numpy as np

from fcnseg.data.base import RGB, FilePairDataset, PipelineOptions, listed_pairs, read_list_file, require_dir
from fcnseg.data.info import PASCAL_CONTEXT, DatasetInfo
from fcnseg.data.io import PathLike, read_mat_array, validate_label
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
        if not sep or not re.fullmatch(r"[0-9]+", number.strip()):
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


def read_context_label(path: Path, info: DatasetInfo, lut: np.ndarray) -> np.ndarray:
    """A ``trainval/<id>.mat`` LabelMap (indices into labels.txt) mapped through ``lut`` (:func:`context_lut`)."""
    label_map = read_mat_array(path, "LabelMap")
    if label_map.size and (label_map.min() < 0 or label_map.max() >= len(lut)):
        raise DataError(f"{path}: LabelMap values must be indices of labels.txt (0..{len(lut) - 1})")
    return validate_label(lut[label_map], info, path)


class PascalContext(FilePairDataset):
    """PASCAL-Context, 59 classes + background (see the module docstring for the layout)."""

    def __init__(self, root: PathLike, split: str = "val", **pipeline: Unpack[PipelineOptions]) -> None:
        root = require_dir(Path(root), CONTEXT_LAYOUT)
        voc, context = root / "VOC2010", require_dir(root / "pascal-context", CONTEXT_LAYOUT)
        list_file = voc / "ImageSets" / "Main" / f"{split}.txt"
        if not list_file.is_file():
            raise DataError(f"no split list {list_file}. Expected layout: {CONTEXT_LAYOUT}")
        ids = [line.split()[0] for line in read_list_file(list_file)]
        pairs = listed_pairs(ids, voc / "JPEGImages" / "{}.jpg", context / "trainval" / "{}.mat", str(list_file))
        lut = context_lut(context / "labels.txt", context / "59_labels.txt")
        self.root, self.split = root, split
        super().__init__(pairs, info=PASCAL_CONTEXT, inputs=RGB, decode_label=partial(read_context_label, lut=lut),
                         **pipeline)
