"""Class weights from training labels (median frequency, inverse log) and class maps (merge / rename)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fcnseg.data.balance import ClassPixels, balancing_weights, class_pixel_counts
from fcnseg.data.check import check_dataset
from fcnseg.data.registry import build_dataset
from fcnseg.errors import ConfigError
from fcnseg.train.config import TrainConfig

# Two 2x3 masks over classes a, b, c (255: void). Counted by hand:
#   image 1: a a b / 255 a b  -> 5 labelled pixels: a 3, b 2
#   image 2: a c c / c c c    -> 6 labelled pixels: a 1, c 5
# pixels a 4, b 2, c 5; labelled pixels of the images holding them: a 5 + 6 = 11, b 5, c 6.
MASKS = (np.array([[0, 0, 1], [255, 0, 1]], np.uint8), np.array([[0, 2, 2], [2, 2, 2]], np.uint8))


def write_folder(root: Path, masks=MASKS, classes=("a", "b", "c")) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for index, mask in enumerate(masks):
        Image.fromarray(np.full((*mask.shape, 3), 40 * index, np.uint8)).save(root / "images" / f"{index}.png")
        Image.fromarray(mask).save(root / "masks" / f"{index}.png")
    (root / "classes.txt").write_text("".join(f"{name}\n" for name in classes))
    return root


def test_pixel_counts_by_hand(tmp_path):
    data = build_dataset("folder", write_folder(tmp_path), None)
    counted = class_pixel_counts(data)
    assert counted.pixels.tolist() == [4, 2, 5]
    assert counted.image_pixels.tolist() == [11, 5, 6]
    # the dataset check counts the same while it reads the split, in its worker too
    for workers in (0, 1):
        scanned = check_dataset(data, "the folder", workers)
        assert scanned.pixels.tolist() == [4, 2, 5] and scanned.image_pixels.tolist() == [11, 5, 6]


def test_median_frequency_by_hand(tmp_path):
    # frequencies a 4/11, b 2/5, c 5/6; median 2/5 (b); weight = median / frequency
    weights = balancing_weights("median_frequency", class_pixel_counts(build_dataset("folder", write_folder(tmp_path),
                                                                                     None)))
    assert weights == pytest.approx([(2 / 5) / (4 / 11), 1.0, (2 / 5) / (5 / 6)], rel=1e-12)
    assert weights.tolist() == pytest.approx([1.1, 1.0, 0.48], rel=1e-12)


def test_inverse_log_by_hand():
    weights = balancing_weights("inverse_log", ClassPixels(np.array([4, 2, 5]), np.array([11, 5, 6])))
    assert weights.tolist() == pytest.approx([1 / math.log(1.02 + p) for p in (4 / 11, 2 / 11, 5 / 11)], rel=1e-12)


def test_inverse_log_constant_flattens_the_weights():
    counted = ClassPixels(np.array([4, 2, 5]), np.array([11, 5, 6]))
    gentle = balancing_weights("inverse_log", counted, inverse_log_c=1.2)
    # 1 / ln(1.2 + 4/11) = 1 / ln(1.5636) = 2.2371, and so on, worked out apart from fcnseg (math.log)
    assert gentle.tolist() == pytest.approx([2.2371, 3.0921, 1.9860], abs=1e-4)
    enet = balancing_weights("inverse_log", counted)
    assert gentle.max() / gentle.min() < enet.max() / enet.min()  # rarest over commonest: 1.56 rather than 2.11


def test_absent_class_weighs_nothing():
    # classes 0 and 2 of frequency 1/2 and 1/4; class 1 absent: left out of the median, weight 0
    weights = balancing_weights("median_frequency", ClassPixels(np.array([2, 0, 1]), np.array([4, 0, 4])))
    assert weights.tolist() == pytest.approx([0.75, 0.0, 1.5])


def test_train_config_takes_a_method_or_numbers():
    assert TrainConfig.from_dict({"class_weights": "median_frequency"}).class_weights == "median_frequency"
    assert TrainConfig.from_dict({"class_weights": [1, 2.5]}).class_weights == [1.0, 2.5]
    with pytest.raises(ConfigError, match="median_frequency, inverse_log; got 'median'"):
        TrainConfig.from_dict({"class_weights": "median"})
    with pytest.raises(ConfigError, match="class_weights expects a list of numbers or a string, got 3"):
        TrainConfig.from_dict({"class_weights": 3})
    assert TrainConfig.from_dict({"class_weights": "inverse_log", "inverse_log_c": 1.1}).inverse_log_c == 1.1
    with pytest.raises(ConfigError, match="inverse_log_c applies to class_weights: inverse_log only; "
                                         "class_weights is 'median_frequency'"):
        TrainConfig.from_dict({"class_weights": "median_frequency", "inverse_log_c": 1.1})
    with pytest.raises(ConfigError, match="inverse_log_c applies to class_weights: inverse_log only; "
                                         "class_weights is not set$"):
        TrainConfig.from_dict({"inverse_log_c": 1.1})
    with pytest.raises(ConfigError, match="inverse_log_c must be a number above 1, got 1"):
        TrainConfig.from_dict({"class_weights": "inverse_log", "inverse_log_c": 1.0})


def test_class_map_merges_and_renames(tmp_path):
    data = build_dataset("folder", write_folder(tmp_path), None, class_map={"C": "road", "*": "not road"})
    assert data.info.class_names == ("road", "not road") and data.info.ignore_index == 255
    assert data.load(0)[1].tolist() == [[1, 1, 1], [255, 1, 1]]
    assert data.load(1)[1].tolist() == [[1, 0, 0], [0, 0, 0]]
    image, label = data[1]
    assert label.dtype == torch.int64 and label.tolist() == [[1, 0, 0], [0, 0, 0]]


def test_class_map_ignores_and_keeps_colours(tmp_path):
    raw = build_dataset("folder", write_folder(tmp_path), None)
    data = build_dataset("folder", tmp_path, None, class_map={"a": "a", "b": None, "c": "cee"})
    assert data.info.class_names == ("a", "cee")
    assert data.load(0)[1].tolist() == [[0, 0, 255], [255, 0, 255]]
    assert data.info.palette[0] == raw.info.palette[0] and data.info.palette[1] not in raw.info.palette[:1]


def test_class_map_weights_follow_the_new_classes(tmp_path):
    data = build_dataset("folder", write_folder(tmp_path), None, class_map={"c": "road", "*": "not road"})
    counted = class_pixel_counts(data)
    assert counted.pixels.tolist() == [5, 6] and counted.image_pixels.tolist() == [6, 11]


@pytest.mark.parametrize(("class_map", "message"), [
    ({"road": "road", "*": "other"}, r"class_map names road, not classes of \S+; its classes: a, b, c"),
    ({"a": "x"}, r"does not say where b, c go"),
    ({"*": None}, "ignores every class"),
    ({"a": "x", "A": "y", "*": "z"}, "names a more than once"),
    (["a"], "must be a mapping"),
])
def test_class_map_refuses(tmp_path, class_map, message):
    with pytest.raises(ConfigError, match=message):
        build_dataset("folder", write_folder(tmp_path), None, class_map=class_map)


def test_camvid_road_not_road(tmp_path):
    camvid = Path(__file__).resolve().parents[3] / "shared" / "data" / "camvid"
    if not camvid.is_dir():
        pytest.skip("../shared/data/camvid is absent")
    raw = build_dataset("camvid", camvid, "val")
    data = build_dataset("camvid", camvid, "val", class_map={"road": "road", "*": "not road"})
    _, label = raw.load(0)
    mapped = data.load(0)[1]
    assert data.info.ignore_index == 11 and data.info.palette[0] == raw.info.palette[3]
    assert np.array_equal(mapped == 0, label == 3) and np.array_equal(mapped == 11, label == 11)
    assert np.array_equal(mapped == 1, (label != 3) & (label != 11))


def test_training_and_eval_with_a_class_map_and_median_frequency(tmp_path, capsys, caplog):
    from fcnseg.api import load
    from fcnseg.cli import main
    from fcnseg.train import TrainConfig, train

    synthetic = {"num_images": 6, "height": 48, "width": 64, "class_map": {"road": "road", "*": "not road"}}
    config = TrainConfig.from_dict({
        "backbone": "vgg16", "width": 1 / 16, "dataset": "synthetic", "dataset_options": synthetic,
        "batch_size": 2, "workers": 1, "lr": 0.01, "iterations": 2, "val_interval": 2, "threads": 1,
        "class_weights": "median_frequency", "out": str(tmp_path / "run")})
    caplog.set_level("INFO", logger="fcnseg")
    train(config)  # workers 1: the mapped dataset travels to a loader process
    assert "class weights (median_frequency): road " in caplog.text  # a note logged on fcnseg.train.run
    assert load(tmp_path / "run" / "last.pth", device="cpu").info.class_names == ("road", "not road")
    common = ["eval", str(tmp_path / "run" / "last.pth"), "--dataset", "synthetic", "--limit", "2", "--threads", "1"]
    assert main(common) == 2
    assert "with the --class-map it was trained with" in capsys.readouterr().err
    assert main([*common, "--class-map", '{road: road, "*": not road}', "--out", str(tmp_path / "eval")]) == 0
    assert "\nroad: max F " in capsys.readouterr().out  # a two-class task is also scored as KITTI scores road
    binary = json.loads((tmp_path / "eval" / "metrics.json").read_text())["binary"]
    assert binary["class_name"] == "road" and 0 <= binary["max_f"] <= 1


@pytest.mark.parametrize(("balancing", "printed"), [
    ({"class_weights": "median_frequency"}, "class weights (median_frequency): a 1.1, b 1, c 0.48"),
    ({"class_weights": "inverse_log", "inverse_log_c": 1.2}, "class weights (inverse_log): a 2.24, b 3.09, c 1.99"),
])
def test_training_reads_the_split_once_for_its_weights(tmp_path, monkeypatch, caplog, balancing, printed):
    # The weights come from the dataset check's scan: each training label is loaded once before
    # training starts, not once by the check and again to count classes.
    from fcnseg.data.folder import FolderDataset
    from fcnseg.train import TrainConfig, loop, train

    (write_folder(tmp_path / "data") / "splits").mkdir()
    for split in ("train", "val"):
        (tmp_path / "data" / "splits" / f"{split}.txt").write_text("0\n1\n")
    caplog.set_level("INFO", logger="fcnseg")
    loads = []  # the files read: training keeps the decoded training images and checks them from memory
    original = FolderDataset.read
    monkeypatch.setattr(FolderDataset, "read", lambda self, index: loads.append(index) or original(self, index))
    monkeypatch.setattr(loop, "run_iterations", lambda run, *rest: {})  # stop before the first iteration
    train(TrainConfig.from_dict({
        "backbone": "vgg16", "width": 1 / 16, "geometry": "fast", "dataset": "folder",
        "root": str(tmp_path / "data"), "crop_size": None, "batch_size": 2, "workers": 0, "iterations": 1,
        "threads": 1, **balancing, "out": str(tmp_path / "run")}))
    assert printed in caplog.text
    assert sorted(loads) == [0, 0, 1, 1]  # the training split (2 images) and the validation split (the same 2)


def test_listed_weights_must_match_the_classes(tmp_path):
    from fcnseg.train import TrainConfig, train

    config = TrainConfig.from_dict({"width": 1 / 16, "dataset_options": {"num_images": 2, "height": 40, "width": 48},
                                    "class_weights": [1, 2, 3], "iterations": 1, "threads": 1, "workers": 0,
                                    "out": str(tmp_path / "run")})
    with pytest.raises(ConfigError, match="class_weights has 3 entries for 8 classes"):
        train(config)
    assert not (tmp_path / "run" / "last.pth").exists()
