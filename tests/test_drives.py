"""Generalising to another drive (issue #23): CamVid splits selected by drive (``train[-0006R0]``), the
drive-held-out configs and script part, and the photometric augmentation for another day's light."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fcnseg.checkpoint import save_model
from fcnseg.data.balance import balancing_weights
from fcnseg.data.camvid import CamVid, drive_of
from fcnseg.data.check import check_dataset
from fcnseg.data.info import CAMVID
from fcnseg.data.registry import build_dataset
from fcnseg.errors import ConfigError, DataError
from fcnseg.train import TrainConfig
from fcnseg.train.data import build_datasets

from .helpers import error_names, folder_dataset, random_fcn, refused

REPO = Path(__file__).resolve().parents[1]
# A tiny CamVid: three drives in train (as SegNet's: 0001TP, 0006R0, 0016E5), one in val.
DRIVES = {"0001TP": 2, "0006R0": 3, "0016E5": 1}
# The classes each drive's labels hold (besides void 11): 0006R0 alone has class 3, so class statistics show
# whether its frames were read.
CLASSES = {"0001TP": (0, 1), "0006R0": (3,), "0016E5": (1, 2)}
SIZE = (32, 48)


def camvid_folder(root: Path) -> Path:
    """train/ listed by train.txt with SegNet's foreign absolute paths (drives interleaved), val/ unlisted."""
    lines, number = [], 0
    frames = [(drive, k) for k in range(3) for drive, count in DRIVES.items() if k < count]
    for split, split_frames in (("train", frames), ("val", [("0016E5", 0), ("0016E5", 1)])):
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        for drive, k in split_frames:
            name = f"{drive}_{split}{k:05d}.png"
            rng = np.random.default_rng(number)
            number += 1
            Image.fromarray(rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8)).save(root / split / name)
            label = rng.choice(np.array([*CLASSES[drive], 11], dtype=np.uint8), SIZE)
            Image.fromarray(label, mode="L").save(root / f"{split}annot" / name)
            if split == "train":
                lines.append(f"/SegNet/CamVid/train/{name} /SegNet/CamVid/trainannot/{name}\n")
    (root / "train.txt").write_text("".join(lines))
    return root


@pytest.fixture
def camvid(tmp_path):
    return camvid_folder(tmp_path / "camvid")


def drives(dataset) -> list[str]:
    return [drive_of(Path(dataset.sample_name(i))) for i in range(len(dataset))]


# ---- splits selected by drive ----------------------------------------------------------------------------


def test_a_split_selects_the_frames_of_drives_or_leaves_them_out(camvid):
    everything = drives(CamVid(camvid, "train"))
    assert sorted(everything) == sorted(d for d, n in DRIVES.items() for _ in range(n))
    assert drives(CamVid(camvid, "train[0006R0]")) == ["0006R0"] * 3
    without = CamVid(camvid, "train[-0006R0]")
    assert drives(without) == [d for d in everything if d != "0006R0"]  # in the list file's order
    assert without.split == "train[-0006R0]"
    assert drives(CamVid(camvid, "train[0001TP, 0016E5]")) == drives(without)
    assert drives(CamVid(camvid, "train[-0001TP,-0016E5]")) == ["0006R0"] * 3
    # A split without a list file (paired by folder) and the registry, as configs and fcnseg eval reach it.
    assert drives(build_dataset("camvid", camvid, "val[0016E5]")) == ["0016E5"] * 2


def test_an_unknown_drive_or_an_empty_selection_is_one_line_naming_the_drives(camvid):
    with pytest.raises(DataError) as caught:
        CamVid(camvid, "train[0006R1]")
    message = error_names(caught, "'train[0006R1]'", "0006R1", str(camvid / "train.txt"), "0001TP (2 frames)",
                          "0006R0 (3 frames)", "0016E5 (1 frame)", "train[-0001TP]")
    assert "\n" not in message
    with pytest.raises(DataError) as caught:
        CamVid(camvid, "train[-0001TP,-0006R0,-0016E5]")
    assert "\n" not in error_names(caught, "train[-0001TP,-0006R0,-0016E5]", "leaves none", "0006R0 (3 frames)")
    with pytest.raises(DataError) as caught:
        CamVid(camvid, "val[0006R0]")
    error_names(caught, "val[0006R0]", str(camvid / "val"), "0016E5 (2 frames)")


@pytest.mark.parametrize("split", ["train[", "train]", "train[]", "train[0006R0,-0001TP]", "train[0006R0][x]",
                                   "train[-]", "[0006R0]"])
def test_a_selection_that_does_not_say_which_drives_is_refused(camvid, split):
    with pytest.raises(ConfigError) as caught:
        CamVid(camvid, split)
    error_names(caught, repr(split), "SPLIT[DRIVE]", "SPLIT[-DRIVE]")


def test_other_datasets_refuse_a_drive_selection(tmp_path):
    root = folder_dataset(tmp_path / "folder")
    with pytest.raises(ConfigError) as caught:
        build_dataset("folder", root, "all[x]")
    error_names(caught, "'all[x]'", "camvid", "folder")
    assert len(build_dataset("folder", root, None)) == 4  # a folder's split may be None: still read


def _config(camvid, tmp_path, **changes):
    return TrainConfig.from_dict({"dataset": "camvid", "root": str(camvid), "train_split": "train[-0006R0]",
                                  "val_split": "train[0006R0]", "width": 1 / 16, "geometry": "fast",
                                  "batch_size": 2, "workers": 0, "iterations": 1, "val_interval": 1,
                                  "checkpoint_interval": 1, "threads": 1, "out": str(tmp_path / "run"), **changes})


def test_the_check_and_the_class_weights_read_the_selected_frames_only(camvid, tmp_path):
    train, val = build_datasets(_config(camvid, tmp_path), "imagenet")
    assert drives(train) == ["0001TP", "0016E5", "0001TP"] and drives(val) == ["0006R0"] * 3
    counted = check_dataset(train, "the training split")
    assert counted.pixels[3] == 0 and counted.pixels[[0, 1, 2]].all()  # 0006R0's class 3: not read
    weights = balancing_weights("median_frequency", counted)
    assert weights[3] == 0 and weights[[0, 1, 2]].all()
    everything = check_dataset(CamVid(camvid, "train"), "the training split")
    assert everything.pixels[3] > 0  # the same split without a selection reads it


def test_training_takes_a_drive_selection_and_weighs_classes_by_its_frames(camvid, tmp_path, capsys):
    from fcnseg.cli import main

    run = tmp_path / "run"
    assert main(["train", "--dataset", "camvid", "--root", str(camvid), "--set", "train_split=train[-0006R0]",
                 "--set", "val_split=train[0006R0]", "--width", "0.0625", "--geometry", "fast", "--iterations", "1",
                 "--batch-size", "2", "--workers", "0", "--threads", "1", "--class-weights", "median_frequency",
                 "--out", str(run)]) == 0
    err = capsys.readouterr().err
    assert re.search(r"class weights \(median_frequency\): .*road 0,", err), err  # road: 0006R0's frames only
    assert (run / "last.pth").is_file()
    refused(capsys, ["train", "--dataset", "camvid", "--root", camvid, "--set", "val_split=train[0006R1]",
                     "--out", tmp_path / "refused"], "train[0006R1]", "0006R0 (3 frames)")


def test_eval_takes_a_drive_selection(camvid, tmp_path, capsys):
    from fcnseg.cli import main

    checkpoint = save_model(random_fcn(num_classes=11), CAMVID, tmp_path / "net.pth")
    assert main(["eval", str(checkpoint), "--dataset", "camvid", "--root", str(camvid), "--split", "train[0006R0]",
                 "--workers", "0", "--threads", "1"]) == 0
    assert "camvid train[0006R0]: 3 images" in capsys.readouterr().out
    refused(capsys, ["eval", checkpoint, "--dataset", "camvid", "--root", camvid, "--split", "train[0006R1]",
                     "--workers", "0"], "train[0006R1]", "0006R0 (3 frames)")
