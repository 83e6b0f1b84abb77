"""The readers on the real data in ../shared/data (skipped where that folder does not exist)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from fcnseg.data.camvid import CamVid
from fcnseg.data.info import VOC
from fcnseg.data.voc import VOCSegmentation

# The repository's parent folder holds shared/: parents[2] of tests/data/<this file> is the repo.
SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"

pytestmark = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"no shared data at {SHARED_DATA}")


def _needs(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} not present")
    return path


@pytest.mark.parametrize(("split", "size"), [("train", 367), ("val", 101)])
def test_camvid_samples(split: str, size: int) -> None:
    data = CamVid(_needs("camvid"), split)
    assert len(data) == size
    for index in range(3):
        image, label = data.load(index)
        assert image.shape == (360, 480, 3) and image.dtype == np.uint8
        assert label.shape == (360, 480) and label.dtype == np.uint8
        assert label.max() <= 11  # 0..10 classes, 11 = void
        assert data.sample_name(index) == Path(data.pairs[index][0]).stem
    assert data.pairs[0][0].parent.name == split  # list paths resolved under the local root


def test_voc_sample() -> None:
    root = _needs("voc-sample")
    data = VOCSegmentation(root, "train")  # no ImageSets: every labelled image
    assert len(data) == 3
    for index in range(len(data)):
        image, label = data.load(index)
        assert image.shape[:2] == label.shape and image.shape[2] == 3
        values = set(np.unique(label).tolist())
        assert values <= set(range(21)) | {255} and len(values - {0, 255}) >= 1

    # The sample's spelling differs ("_background_", "potted plant", "tv/monitor"): compare letters only.
    def simplify(name: str) -> str:
        return re.sub(r"[^a-z]", "", name.lower())

    names = [line.strip() for line in (root / "class_names.txt").read_text().splitlines() if line.strip()]
    assert [simplify(n) for n in names] == [simplify(n) for n in VOC.class_names]
