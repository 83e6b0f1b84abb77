"""The dataset contract: what a dataset says it holds (info, inputs, generated) is what it gives, class map or not."""

from __future__ import annotations

import numpy as np

from fcnseg.data.check import check_dataset
from fcnseg.data.registry import build_dataset

from ..helpers import nyud_folder

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
