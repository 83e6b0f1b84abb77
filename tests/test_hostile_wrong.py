"""Hostile use, "nothing silently wrong": 0/255 masks, EXIF-turned images, the authors' weight files,
FCN8s vs FCN8sAtOnce, configuration values, batches larger than the dataset."""

import hashlib

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import fcnseg.models.weights as weights
from fcnseg.cli import main
from fcnseg.data.folder import FolderDataset
from fcnseg.errors import DataError, WeightsError
from fcnseg.models.weights import fcn_from_pytorch_fcn

from .helpers import TINY_TRAIN, digests, error_names, folder_dataset, random_fcn, refused
from .models.torchfcn_oracle import TorchFCN


def zero_255_dataset(root, classes=3):
    """A folder dataset of ``classes`` classes whose masks were saved as 0/255."""
    root = folder_dataset(root, classes=classes)
    rng = np.random.default_rng(1)
    for mask in (root / "masks").iterdir():
        Image.fromarray(np.where(rng.random((40, 48)) < 0.4, 255, 0).astype(np.uint8)).save(mask)
    return root


# --- 7. 0/255 masks, for any number of classes ---------------------------------------------------------------


@pytest.mark.parametrize("classes", [2, 3, 21])
def test_0_255_masks_are_refused_before_training(tmp_path, capsys, classes):
    root = zero_255_dataset(tmp_path / "data", classes)
    argv = ["train", "--dataset", "folder", "--root", str(root), "--set", "train_split=all", "--set", "val_split=all",
            *TINY_TRAIN[:-3], "--iterations", "2", "--out", str(tmp_path / "run"), "--quiet"]
    # What is wrong (0/255 masks: all labelled pixels class 0), with the fix and the option for who means it.
    refused(capsys, argv, "training", "class 0", "0/255", "accept_only_class_zero")
    assert not (tmp_path / "run" / "metrics.csv").exists()
    # A user who really means 255 = ignore says so and goes on.
    assert main([*argv, "--set", "accept_only_class_zero=true"]) == 0


def test_eval_refuses_to_score_0_255_masks(tmp_path, capsys):
    from fcnseg.checkpoint import save_model

    root = zero_255_dataset(tmp_path / "data", classes=3)
    checkpoint = save_model(random_fcn(num_classes=3), FolderDataset(root).info, tmp_path / "three.pth")
    argv = ["eval", checkpoint, "--dataset", "folder", "--root", root, "--split", "all", "--workers", "0",
            "--threads", "1", "--quiet"]
    refused(capsys, argv, "0/255", "--accept-only-class-zero")
    # A split that really is background and ignored pixels only: eval had no way to score it (training has
    # accept_only_class_zero).
    assert main([str(arg) for arg in [*argv, "--accept-only-class-zero"]]) == 0
    assert "4 images" in capsys.readouterr().out


def test_a_training_split_of_one_class_is_warned_about(tmp_path, capsys):
    # Masks of class 2 only (no ignore value): the run trained a net that says class 2 everywhere and its
    # validation read mean IU 100, without a word.
    root = folder_dataset(tmp_path / "data", classes=3)
    for mask in (root / "masks").iterdir():
        Image.fromarray(np.full((40, 48), 2, np.uint8)).save(mask)
    argv = ["train", "--dataset", "folder", "--root", str(root), "--set", "train_split=all", "--set", "val_split=all",
            *TINY_TRAIN[:-3], "--iterations", "2", "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "every labelled" in line]
    assert warned == ["fcnseg train: every labelled pixel of the training split is class 2 (class2) of 3: a net "
                      "trained on it says class2 everywhere (mean IU 100 on such labels); check the masks "
                      "(class-index PNGs: pixel value = class index)"], warned
    # Two classes present: no warning.
    Image.fromarray(np.eye(40, 48, dtype=np.uint8)).save(root / "masks" / "0.png")
    assert main([*argv, "--out", str(tmp_path / "run2")]) == 0
    assert "every labelled" not in capsys.readouterr().err


def test_eval_refuses_to_write_its_report_among_the_datasets_files(tmp_path, capsys):
    # --out DATA/masks wrote metrics.json and confusion.png among the masks: every later run on the dataset
    # then failed on "files that are not PNG masks".
    from fcnseg.checkpoint import save_model

    root = folder_dataset(tmp_path / "data", classes=3)
    checkpoint = save_model(random_fcn(num_classes=3), FolderDataset(root).info, tmp_path / "three.pth")
    argv = ["eval", checkpoint, "--dataset", "folder", "--root", root, "--split", "all", "--workers", "0",
            "--threads", "1", "--quiet", "--out"]
    (root / "labels_v2").mkdir()
    (root / "labels_v2" / "0.png").write_bytes(b"another split's labels, say")
    before = digests(root)
    # The split's folders, one inside them (masks/report: "holds subfolders" failed every later run), and a
    # folder of the root holding files of its own (CamVid's trainannot when scoring val).
    for folder in (root / "masks", root / "images", root / "masks" / ".." / "masks", root / "masks" / "report"):
        refused(capsys, [*argv, folder], "--out", folder.resolve(), "dataset's own files")
    refused(capsys, [*argv, root / "labels_v2"], root / "labels_v2", "holding files of its own", "0.png")
    assert digests(root) == before
    for _ in range(2):  # a new folder beside them, and its own report again
        assert main([str(a) for a in [*argv, root / "report"]]) == 0
    (root / "report" / ".gitkeep").write_text("")  # a hidden file is no data
    assert main([str(a) for a in [*argv, root / "report"]]) == 0


def test_a_class_named_twice_is_refused_not_dropped_from_the_report(tmp_path, capsys):
    # classes.txt "road, road, sky": eval's metrics.json keyed its per-class scores by name, so one road's IoU
    # was silently dropped (the printed table showed both).
    from fcnseg.checkpoint import save_model

    root = folder_dataset(tmp_path / "data", classes=3)
    checkpoint = save_model(random_fcn(num_classes=3), FolderDataset(root).info, tmp_path / "three.pth")
    (root / "classes.txt").write_text("road\nsky\nRoad\n")
    line = refused(capsys, ["eval", checkpoint, "--dataset", "folder", "--root", root, "--split", "all",
                            "--out", tmp_path / "report", "--threads", "1", "--quiet"],
                   root / "classes.txt", "class 0 'road'", "class 2 'Road'")
    assert not (tmp_path / "report").exists(), line
    (root / "classes.txt").write_text("road\nsky\ncar\n")
    with pytest.raises(DataError, match="class 0 'a' and class 2 'a'"):  # names given in code: the same
        FolderDataset(root, class_names=["a", "b", "a"])


# --- 8. one orientation rule for images and masks -------------------------------------------------------------


def test_an_exif_turned_image_with_an_upright_mask_is_explained(tmp_path):
    root = folder_dataset(tmp_path / "data", classes=3)
    image = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 48 wide, shown turned by 90 degrees: 40 wide, 48 high
    Image.fromarray(image).save(root / "images" / "0.png", exif=exif)
    dataset = FolderDataset(root, split="all")
    with pytest.raises(DataError) as caught:
        dataset.load(0)
    error_names(caught, "0.png", "40x48", "48x40", "EXIF orientation 6")  # the file, both sizes, and why
    upright, _ = FolderDataset(root, split="all").load(1)
    assert upright.shape == (40, 48, 3)


# --- 9. the authors' weights: each file cached under its own name, checked on every load -----------------------


def _pytorch_fcn_file(path, kind, seed=0):
    """A pytorch-fcn state dict of ``kind`` with the authors' kind of upsampling (diagonal kernels)."""
    torch.manual_seed(seed)
    net = TorchFCN(kind, n_class=21, width=1 / 16)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.startswith("upscore"):
                p.copy_(torch.eye(p.shape[0])[:, :, None, None] * torch.rand(p.shape[0], 1, *p.shape[2:]))
    torch.save(net.state_dict(), path)
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_pytorch_fcn_files_are_cached_apart_and_checked(tmp_path, monkeypatch, http_server):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    server = http_server()
    table = {}
    for name, kind in (("fcn32s", "32s"), ("fcn8s", "8s")):
        # Both served at ".../uc?id=...": the URL's last part is "uc" for every Google Drive file.
        (server.folder / name).mkdir()
        md5 = _pytorch_fcn_file(server.folder / name / "uc", kind)
        table[name] = (f"{server.url}/{name}/uc?id={name}", md5, weights.PYTORCH_FCN_FILES[name][2])
    monkeypatch.setattr(weights, "PYTORCH_FCN_FILES", table)
    assert fcn_from_pytorch_fcn("fcn32s").config["name"] == "fcn32s"
    assert fcn_from_pytorch_fcn("fcn8s").config["name"] == "fcn8s"
    cache = tmp_path / "hub" / "hub" / "checkpoints"
    assert sorted(p.name for p in cache.iterdir()) == ["fcn32s_from_caffe.pth", "fcn8s_from_caffe.pth"]
    (cache / "fcn8s_from_caffe.pth").write_bytes(b"damaged")
    assert fcn_from_pytorch_fcn("fcn8s").config["name"] == "fcn8s"  # the md5 caught it: downloaded again
    assert hashlib.md5((cache / "fcn8s_from_caffe.pth").read_bytes()).hexdigest() == table["fcn8s"][1]


# --- 10. FCN8s or FCN8sAtOnce: never guessed -----------------------------------------------------------------------


def test_a_bare_fcn8s_state_dict_needs_its_name(tmp_path, capsys):
    _pytorch_fcn_file(tmp_path / "model.pth", "8s_atonce")
    out = tmp_path / "voc.pth"
    refused(capsys, ["convert", tmp_path / "model.pth", "--out", out], "model.pth", "--name fcn8s_atonce")
    assert not out.exists()
    assert main(["convert", str(tmp_path / "model.pth"), "--name", "fcn8s_atonce", "--out", str(out)]) == 0
    named = tmp_path / "fcn8s-atonce_from_caffe.pth"  # pytorch-fcn's own file name tells
    _pytorch_fcn_file(named, "8s_atonce")
    assert fcn_from_pytorch_fcn(named).config["name"] == "fcn8s_atonce"
    with pytest.raises(WeightsError, match="fcn8s_atonce"):
        fcn_from_pytorch_fcn(torch.load(named, weights_only=True))


# --- 11. configuration values: one line naming the key, the type and the value; nulls honoured ----------------


@pytest.mark.parametrize("setting, names", [  # the key, the value given, and what the key takes
    ("iterations=ten", ("iterations", "'ten'", "whole number")),
    ("iterations=2.7", ("iterations", "2.7", "whole number")),
    ("lr=abc", ("lr", "'abc'", "number")),
    ("crop_size=5", ("crop_size", "5", "list")),
    ("width=half", ("width", "'half'", "number")),
    ("dataset_options={num_images:16}", ("num_images:16", "space after a colon")),  # the YAML slip, named
    ("=1", ("--set", "KEY=VALUE", "'=1'")),  # no key: was "unknown option(s) ;"
    ("itterations=3", ("unknown option", "itterations", "did you mean iterations for itterations?")),  # a typo
    ("dataset_options={class_mapp: {}}", ("class_mapp", "did you mean class_map for class_mapp?")),
])
def test_bad_config_values_are_one_line(tmp_path, capsys, setting, names):
    refused(capsys, ["train", "--set", setting, "--out", tmp_path / "run", "--quiet"], *names)


def test_a_null_in_set_is_honoured(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"init_from": str(tmp_path / "no_such_run"), "model": "fcn32s"}))
    argv = ["train", "--config", str(config), *TINY_TRAIN, "--iterations", "1", "--out", str(tmp_path / "run")]
    assert main(argv) == 2  # the config's init_from does not exist
    assert main([*argv, "--set", "init_from=null"]) == 0
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["init_from"] is None


# --- 12. a batch larger than the dataset ----------------------------------------------------------------------------


def test_a_batch_larger_than_the_dataset_is_said_once(tmp_path, capsys):
    argv = ["train", *TINY_TRAIN[:-1], "--set", "dataset_options={num_images: 3, height: 40, width: 48}",
            "--batch-size", "8", "--iterations", "3", "--val-interval", "3", "--out", str(tmp_path / "run")]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert err.count("batch_size 8 is larger than the 3 training images") == 1


def test_a_warm_up_as_long_as_the_run_is_said_even_when_quiet(tmp_path, capsys):
    # --warmup-iterations 50 with --iterations 2: the rate rose for the whole run (to 2/50 of lr), silently.
    argv = ["train", *TINY_TRAIN, "--iterations", "2", "--val-interval", "2", "--out", str(tmp_path / "run")]
    assert main([*argv, "--warmup-iterations", "50"]) == 0
    assert "warmup_iterations 50 is not shorter than the run's 2 iterations" in capsys.readouterr().err
    assert main([*argv, "--warmup-iterations", "1", "--overwrite"]) == 0
    assert "warmup_iterations" not in capsys.readouterr().err


def test_a_folder_without_split_lists_says_how_to_use_every_image_from_the_command_line(tmp_path, capsys):
    # The message once said "use split=None", which no flag accepts: a newcomer's folder (images, masks,
    # classes.txt) had no way out from the command line.
    root = folder_dataset(tmp_path / "my_data", classes=2)
    err = refused(capsys, ["train", "--dataset", "folder", "--root", str(root), "--out", str(tmp_path / "run"),
                           "--width", "0.0625", "--iterations", "1"], "splits")
    assert "--val-split all" in err
    assert not (tmp_path / "run" / "last.pth").exists()
