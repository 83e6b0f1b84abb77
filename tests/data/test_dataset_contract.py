"""The dataset contract: what a dataset says it holds (info, inputs, generated) is what it gives, class map or not."""

from __future__ import annotations

import numpy as np
import pytest

from fcnseg.data.base import DatasetContract, SegmentationDataset
from fcnseg.data.check import check_dataset
from fcnseg.data.registry import DATASETS, build_dataset
from fcnseg.errors import ConfigError

from ..helpers import folder_dataset, nyud_folder, siftflow_folder

WALLS = {"wall": "wall", "floor": "floor", "*": "other"}


def test_a_class_map_keeps_the_inputs_of_colour_and_hha(tmp_path):
    root = nyud_folder(tmp_path / "nyud")
    data = build_dataset("nyud", root, "train", inputs="rgb+hha", split_file=root / "ids.txt", class_map=WALLS)
    assert data.inputs == ("rgb", "hha")
    assert data.info.class_names == ("wall", "floor", "other")
    image, _ = data[0]
    assert image.shape[0] == 3 * len(data.inputs)


def test_training_colour_and_hha_behind_a_class_map(tmp_path, capsys):
    from fcnseg.cli import main

    root = nyud_folder(tmp_path / "nyud")
    options = f"dataset_options={{inputs: rgb+hha, split_file: {root / 'ids.txt'}, class_map: {WALLS}}}"
    code = main(["train", "--dataset", "nyud", "--root", str(root), "--set", options, "--width", "0.0625",
                 "--geometry", "fast", "--batch-size", "2", "--iterations", "2", "--val-interval", "2",
                 "--workers", "0", "--threads", "1", "--quiet", "--out", str(tmp_path / "run")])
    assert code == 0, capsys.readouterr().err
    from fcnseg.api import load

    trained = load(tmp_path / "run" / "last.pth", device="cpu")
    assert trained.inputs == ("rgb", "hha") and trained.info.class_names == ("wall", "floor", "other")


def test_generated_data_behind_a_class_map_is_still_generated(monkeypatch):
    data = build_dataset("synthetic", None, "val", num_images=3, height=40, width=48,
                         class_map={"road": "road", "*": "not road"})
    assert data.generated is True
    loads = []
    original = type(data).load
    monkeypatch.setattr(type(data), "load", lambda self, index: loads.append(index) or original(self, index))
    assert check_dataset(data, "the synthetic split") is None
    assert loads == []  # correct by construction: nothing read to check it
    assert set(np.unique(data.load(0)[1])) <= {0, 1}


def test_every_reader_states_its_contract(tmp_path):
    # Nothing to inherit: a reader that forgot to say what it holds cannot be built.
    for reader in {SegmentationDataset, *(r for r in DATASETS.values() if isinstance(r, type))}:
        assert not {"info", "inputs", "generated"} & set(vars(reader)), reader
    built = [build_dataset("synthetic", None, "val", num_images=2, height=40, width=48),
             build_dataset("folder", folder_dataset(tmp_path / "folder"), "all"),
             build_dataset("siftflow", siftflow_folder(tmp_path / "sf"), "train",
                           split_file=tmp_path / "sf" / "ids.txt"),
             build_dataset("nyud", nyud_folder(tmp_path / "nyud"), "train", inputs="hha",
                           split_file=tmp_path / "nyud" / "ids.txt")]
    for data in built:
        assert isinstance(data, DatasetContract)
        assert {"info", "inputs", "generated"} <= set(vars(data)), type(data)
    assert [d.inputs for d in built] == [("rgb",), ("rgb",), ("rgb",), ("hha",)]
    assert [d.generated for d in built] == [True, False, False, False]


def test_a_class_map_is_a_lookup_on_the_labels_the_reader_gives(tmp_path):
    root = nyud_folder(tmp_path / "nyud")
    raw = build_dataset("nyud", root, "train", split_file=root / "ids.txt")
    mapped = build_dataset("nyud", root, "train", split_file=root / "ids.txt", class_map={"wall": "wall", "*": None})
    assert mapped.source_info == raw.info and mapped.info.class_names == ("wall",)
    image, label = mapped.load(1)
    np.testing.assert_array_equal(image, raw.load(1)[0])
    np.testing.assert_array_equal(label, np.where(raw.load(1)[1] == 0, 0, 255))
    with pytest.raises(ConfigError, match="class_map works on datasets with one label set; siftflow has 2"):
        build_dataset("siftflow", siftflow_folder(tmp_path / "sf"), "train", split_file=tmp_path / "sf" / "ids.txt",
                      class_map={"sky": "sky", "*": None})
