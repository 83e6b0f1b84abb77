"""Generalising to another drive (issue #23): CamVid splits selected by drive (``train[-0006R0]``), the
drive-held-out configs and script part, and the photometric augmentation for another day's light."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from fcnseg.checkpoint import save_model, write_checkpoint
from fcnseg.data.balance import balancing_weights
from fcnseg.data.base import to_tensors
from fcnseg.data.camvid import CamVid, drive_of
from fcnseg.data.check import check_dataset
from fcnseg.data.collate import PadCollate
from fcnseg.data.info import CAMVID
from fcnseg.data.mix import cut_mix
from fcnseg.data.registry import build_dataset
from fcnseg.data.transforms import (
    ColorJitter,
    Compose,
    RandomCrop,
    RandomHorizontalFlip,
    RandomScale,
    hue_matrix,
    train_transforms,
)
from fcnseg.errors import ConfigError, DataError
from fcnseg.normalization import mean_color
from fcnseg.train import TrainConfig
from fcnseg.train.data import build_datasets

from .helpers import error_names, folder_dataset, load_script, nyud_folder, random_fcn, refused

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


@pytest.mark.parametrize("split", ["train[", "train]", "train[]", "train[0006R0][x]", "train[-]", "[0006R0]"])
def test_a_selection_that_does_not_say_which_drives_is_refused(camvid, split):
    with pytest.raises(ConfigError) as caught:
        CamVid(camvid, split)
    error_names(caught, repr(split), "SPLIT[DRIVE]", "SPLIT[-DRIVE]")


def test_a_selection_that_keeps_some_drives_and_leaves_out_others_is_refused(camvid):
    with pytest.raises(ConfigError) as caught:
        CamVid(camvid, "train[0006R0, -0001TP,0016E5]")
    error_names(caught, "'train[0006R0, -0001TP,0016E5]'", "mixes", "train[0006R0,0016E5]", "train[-0001TP]")


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


# ---- the drive-held-out configs and script -----------------------------------------------------------------


def test_the_held_out_configs_are_the_best_recipe_without_the_drive_they_validate_on():
    best = TrainConfig.from_yaml(REPO / "configs" / "camvid" / "fcn8s_il12_ema_w8_16k.yaml").to_dict()
    script = (REPO / "scripts" / "camvid.sh").read_text()
    drive = re.search(r"^HELDOUT=(\w+)", script, re.MULTILINE).group(1)
    table = re.search(r"^HELDOUT_PARTS=\((.*?)^\)", script, re.MULTILINE | re.DOTALL).group(1)
    parts = re.findall(r'^\s*"(heldout[\w-]*) (\w+)"$', table, re.MULTILINE)  # "PART CONFIG"
    # every line of the table (after the comment on its first) is one part, and no part is named twice
    assert len({part for part, _ in parts}) == len(parts) == len(table.splitlines()[1:]) >= 10
    named = [config for _, config in parts]
    configs = sorted((REPO / "configs" / "camvid" / "heldout").glob("*.yaml"))
    assert "fcn8s_il12_ema_w8_16k" in named and set(named) <= {path.stem for path in configs}
    photometric = {"color_jitter", "brightness", "contrast", "saturation", "hue", "gamma", "blur", "noise"}
    changes = {}
    for path in configs:  # the script's parts, the one-change ablations and the combinations of them
        config = TrainConfig.from_yaml(path).to_dict()
        assert (config["train_split"], config["val_split"]) == (f"train[-{drive}]", f"train[{drive}]")
        assert config["out"] == f"runs/heldout/{path.stem}"
        unchanged = {"train_split", "val_split", "out"}
        if config["class_weights"] != "inverse_log":  # its constant goes with it (no class weights: one change)
            unchanged.add("inverse_log_c")
        changes[path.stem] = {(key, repr(value)) for key, value in config.items()
                              if value != best[key] and key not in unchanged}
    singles = {change for changed in changes.values() if len(changed) == 1 for change in changed}
    # what a step costs traded for iterations at the same CPU time, one change each: a wider net, a smaller
    # batch, larger crops at about the same pixels a batch; another backbone at the width that costs what the
    # kept one does a step
    equal_time = [{"width", "iterations"}, {"batch_size", "iterations"}, {"crop_size", "batch_size", "iterations"},
                  {"backbone", "width"}]

    def one_change_from(kept: str, changed: set) -> bool:
        """An ablation of a kept recipe: one setting other than the kept recipe's (a trade for iterations
        counting as one); a setting missing from a set of changes is the baseline's."""
        theirs, ours = dict(changes[kept]), dict(changed)
        differing = {key for key in theirs.keys() | ours.keys() if theirs.get(key) != ours.get(key)}
        return differing in equal_time or len(differing) == 1

    # the changes kept, in the order they were kept: later ablations start from one; the last is the best recipe
    kept = ["fcn8s_il12_ema_w8_16k_cutmix", "fcn8s_il12_ema_w4_10k_cutmix", "fcn8s_il12_ema_w4_11k_b4_crop336_cutmix",
            re.search(r"^BEST=(\w+)", script, re.MULTILINE).group(1)]
    assert all(one_change_from(before, changes[after]) for before, after in itertools.pairwise(kept))
    for name, changed in changes.items():  # a combination only of changes each run alone first
        assert {key for key, _ in changed} <= photometric or changed <= singles or \
            any(one_change_from(recipe, changed) for recipe in kept), (name, changed)


def test_the_best_recipe_is_the_held_out_choice_trained_on_all_of_train():
    """``scripts/camvid.sh best`` trains what the held-out drive chose (CutMix), on every training frame and
    validated on val; the one other difference is ``amp: auto`` (bf16 only where the CPU computes it natively)."""
    script = (REPO / "scripts" / "camvid.sh").read_text()
    best_name = re.search(r"^BEST=(\w+)", script, re.MULTILINE).group(1)
    assert re.search(r"^\s*best\) train \$BEST ", script, re.MULTILINE)
    best = TrainConfig.from_yaml(REPO / "configs" / "camvid" / f"{best_name}.yaml").to_dict()
    chosen = TrainConfig.from_yaml(REPO / "configs" / "camvid" / "heldout" / f"{best_name}.yaml").to_dict()
    differing = {key: (best[key], chosen[key]) for key in best if best[key] != chosen[key]}
    assert differing == {"train_split": ("train", "train[-0006R0]"), "val_split": ("val", "train[0006R0]"),
                         "out": (f"runs/camvid/{best_name}", f"runs/heldout/{best_name}"), "amp": ("auto", "none")}
    assert best["cutmix"] == 0.5


def run_camvid_script(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, Path]:
    """``scripts/camvid.sh ARGS`` run with a stub fcnseg that only logs its command lines, and that log."""
    log = tmp_path / "calls"
    stub = tmp_path / "fcnseg"
    stub.write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
    stub.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "FCNSEG": str(stub), "CAMVID_ROOT": "/data/camvid"}
    done = subprocess.run(["bash", "scripts/camvid.sh", *args], cwd=REPO, env=env, capture_output=True, text=True)
    return done, log


def camvid_script_calls(tmp_path: Path, *args: str) -> list[str]:
    """The fcnseg command lines ``scripts/camvid.sh ARGS`` runs, through a stub fcnseg that only logs them."""
    done, log = run_camvid_script(tmp_path, *args)
    assert done.returncode == 0, done.stderr
    return log.read_text().splitlines()


@pytest.mark.parametrize(("part", "config"), [("best", "fcn8s_il12_ema_w4_15k_b4_crop336_cutmix"),
                                              ("w4-cutmix", "fcn8s_il12_ema_w4_10k_cutmix"),
                                              ("cutmix", "fcn8s_il12_ema_w8_16k_cutmix")])
def test_the_best_and_former_best_parts_train_their_configs(tmp_path, part, config):
    assert camvid_script_calls(tmp_path, part, "--threads", "1") == [
        f"train --config configs/camvid/{config}.yaml --root /data/camvid --threads 1"]


@pytest.mark.parametrize(("part", "run", "more"), [
    (["heldout"], "fcn8s_il12_ema_w8_16k", ""),
    (["heldout-cutmix"], "fcn8s_il12_ema_w8_16k_cutmix", ""),
    (["heldout-w4"], "fcn8s_il12_ema_w4_10k_cutmix", ""),
    (["heldout-w3of8"], "fcn8s_il12_ema_w3of8_5500_cutmix", ""),
    (["heldout-w4-wd05"], "fcn8s_il12_ema_w4_10k_cutmix_wd05", ""),
    (["heldout-w4-b4"], "fcn8s_il12_ema_w4_19k_b4_cutmix", ""),
    (["heldout-w4-crop336"], "fcn8s_il12_ema_w4_11k_b4_crop336_cutmix", ""),
    (["heldout-crop336-15k"], "fcn8s_il12_ema_w4_15k_b4_crop336_cutmix", ""),
    (["heldout-crop336-b2"], "fcn8s_il12_ema_w4_18k_b2_crop336_cutmix", ""),
    (["screen", "fcn8s_il12_ema_w8_16k_photo", "3"], "fcn8s_il12_ema_w8_16k_photo_3k_s3",
     " --iterations 3000 --seed 3"),
    (["screen", "fcn8s_plain_ema_w8_16k", "0", "--amp", "bf16"], "fcn8s_plain_ema_w8_16k_3k_s0_bf16",
     " --iterations 3000 --seed 0 --amp bf16"),
    (["screen", "fcn8s_il12_w8_16k", "1", "--amp=none"], "fcn8s_il12_w8_16k_3k_s1",
     " --iterations 3000 --seed 1 --amp=none"),
    (["seed", "fcn8s_il12_ema_w4_15k_b4_crop336_cutmix", "1"], "fcn8s_il12_ema_w4_15k_b4_crop336_cutmix_s1",
     " --seed 1"),
], ids=["heldout", "heldout-cutmix", "heldout-w4", "heldout-w3of8", "heldout-w4-wd05", "heldout-w4-b4",
        "heldout-w4-crop336", "heldout-crop336-15k", "heldout-crop336-b2", "screen", "screen-bf16", "screen-float32",
        "seed"])
def test_the_heldout_parts_train_then_score_the_held_out_drive_and_val(tmp_path, part, run, more):
    train_call, drive_call, val_call = camvid_script_calls(tmp_path, *part, "--threads", "1", "--iterations", "20")
    config = re.sub(r"(_3k)?_s\d(_bf16)?$", "", run)
    assert train_call == (f"train --config configs/camvid/heldout/{config}.yaml --root /data/camvid "
                          f"--out runs/heldout/{run}{more} --threads 1 --iterations 20")  # the last --iterations wins
    weights = f"runs/heldout/{run}/last.pth"
    assert drive_call == (f"eval {weights} --dataset camvid --root /data/camvid --split train[0006R0] --threads 1 "
                          f"--out docs/camvid/heldout/{run} --overwrite")
    assert val_call == (f"eval {weights} --dataset camvid --root /data/camvid --split val --threads 1 "
                        f"--out docs/camvid/heldout/{run}_val --overwrite")


@pytest.mark.parametrize("args", [["screen"], ["screen", "no_such_config", "1"],
                                  ["seed", "fcn8s_il12_ema_w8_16k"], ["seed", "fcn8s_il12_ema_w8_16k", "one"],
                                  ["no-such-part"]])
def test_a_part_given_bad_arguments_prints_its_usage_and_trains_nothing(tmp_path, args):
    done, log = run_camvid_script(tmp_path, *args)
    usage = f"usage: scripts/camvid.sh {args[0]} CONFIG SEED" if args[0] in ("screen", "seed") else "seed CONFIG SEED|"
    assert done.returncode == 2 and usage in done.stderr.splitlines()[0], done.stderr
    assert not log.exists()


def test_the_script_finishes_its_part_when_its_file_changes_during_a_run(tmp_path):
    # bash reads a script as it runs it: an edit saved in place during a two-hour training shifted the lines
    # under the running part, which failed after the training with a syntax error instead of scoring the run.
    script = tmp_path / "camvid.sh"
    script.write_text((REPO / "scripts" / "camvid.sh").read_text())
    log = tmp_path / "calls"
    stub = tmp_path / "fcnseg"  # the training call rewrites the script in place, as an editor may
    stub.write_text(f'#!/bin/sh\necho "$*" >> {log}\ncase "$1" in train) {{ printf "#!/usr/bin/env bash\\n'
                    f'# a longer header than before, line after line of it\\n%.0s" 1 2 3 4 5 6; '
                    f'tail -n +2 {script}; }} > {script}.new && cat {script}.new > {script} ;; esac\n')
    stub.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "FCNSEG": str(stub), "CAMVID_ROOT": "/data/camvid"}
    done = subprocess.run(["bash", str(script), "heldout", "--threads", "1"], cwd=REPO, env=env,
                          capture_output=True, text=True)
    assert "a longer header" in script.read_text()  # the file did change under the run
    assert done.returncode == 0, done.stderr
    assert [call.split()[0] for call in log.read_text().splitlines()] == ["train", "eval", "eval"]


# ---- photometric augmentation ------------------------------------------------------------------------------


def _image(seed=0, size=(48, 64)):
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8), np.zeros(size, np.uint8)


def test_gamma_keeps_black_and_white_and_moves_the_mid_tones():
    image = np.array([[[0, 128, 255], [255, 128, 0]]], dtype=np.uint8)
    label = np.zeros((1, 2), np.uint8)
    mids = set()
    for seed in range(8):
        out, out_label = ColorJitter(gamma=1.0)(image, label, rng=np.random.default_rng(seed))
        assert (out[image == 0] == 0).all() and (out[image == 255] == 255).all() and out_label is label
        mids.add(int(out[0, 0, 1]))
        # gamma in [1/2, 2]: 128 -> 255 * (128 / 255) ** g, from 64 to 181
        assert 64 <= out[0, 0, 1] <= 181
    assert min(mids) < 128 < max(mids)  # darker and lighter both happen


def test_noise_has_mean_zero_and_the_spread_asked_for():
    image = np.full((64, 64, 3), 128, np.uint8)
    label = np.zeros((64, 64), np.uint8)
    out, _ = ColorJitter(noise=16.0)(image, label, rng=np.random.default_rng(3))
    difference = out.astype(np.float64) - 128
    assert abs(difference.mean()) < 0.25 and 1 < difference.std() <= 16.5


def test_blur_keeps_the_image_mean_and_smooths():
    image, label = _image()
    out, _ = ColorJitter(blur=3.0)(image, label, rng=np.random.default_rng(1))
    assert abs(out.mean() - image.mean()) < 0.5
    assert out.std() < 0.8 * image.std()


def test_hue_keeps_greys_and_luma_and_turns_colours():
    image = np.array([[[128, 128, 128], [200, 60, 60], [60, 60, 200]]], dtype=np.uint8)
    label = np.zeros((1, 3), np.uint8)
    out, _ = ColorJitter(hue=0.5)(image, label, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(out[0, 0], [128, 128, 128])
    luma = np.array([0.299, 0.587, 0.114])
    assert np.abs(out.astype(float) @ luma - image.astype(float) @ luma).max() < 1.5  # where nothing clips
    assert not np.array_equal(out[0, 1:], image[0, 1:])
    np.testing.assert_allclose(hue_matrix(1.0), np.eye(3), atol=1e-6)  # a whole turn is no turn


def test_only_the_colour_channels_of_a_stacked_image_change():
    colour, label = _image(0, (16, 16))
    stacked = np.concatenate([colour, _image(1, (16, 16))[0]], axis=2)
    out, _ = ColorJitter(0.3, 0.3, 0.3, hue=0.2, gamma=0.5, blur=1.0, noise=4.0)(
        stacked, label, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(out[..., 3:], stacked[..., 3:])
    assert not np.array_equal(out[..., :3], colour)


def test_the_photometric_options_are_refused_on_hha_images(tmp_path):
    root = nyud_folder(tmp_path / "nyud")
    config = {"dataset": "nyud", "root": str(root), "dataset_options": {"split_file": str(root / "ids.txt"),
                                                                        "inputs": "hha"}, "out": str(tmp_path / "r")}
    for option, value in (("gamma", 0.5), ("blur", 1.0), ("noise", 4.0), ("hue", 0.1), ("brightness", 0.2)):
        with pytest.raises(ConfigError) as caught:
            build_datasets(TrainConfig.from_dict({**config, option: value}), "imagenet")
        error_names(caught, option, "hha", "to 0")


def test_each_amount_is_checked_against_its_range():
    for option, value in (("hue", 0.6), ("gamma", -0.1), ("blur", 11), ("noise", float("nan")), ("brightness", 1.5)):
        with pytest.raises(ConfigError) as caught:
            TrainConfig.from_dict({option: value})
        error_names(caught, option)


def _old_color_jitter(image, rng, amount):
    """ColorJitter(amount, amount, amount) as it was before the photometric options (commit 1cb5908)."""
    x = image.astype(np.float32)
    luma = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    x = np.clip(x * float(rng.uniform(max(0.0, 1.0 - amount), 1.0 + amount)), 0.0, 255.0)
    mean = float((x @ luma).mean())
    x = np.clip((x - mean) * float(rng.uniform(max(0.0, 1.0 - amount), 1.0 + amount)) + mean, 0.0, 255.0)
    grey = (x @ luma)[..., None]
    x = np.clip((x - grey) * float(rng.uniform(max(0.0, 1.0 - amount), 1.0 + amount)) + grey, 0.0, 255.0)
    return np.rint(x).astype(np.uint8)


def test_a_recipe_without_the_new_options_computes_the_batches_it_did_before(tmp_path):
    # The best recipe's augmentation (scale, crop, flip, colour jitter 0.1) on synthetic scenes, against the
    # pipeline as it was, drawn from the same (seed, epoch, index).
    options = {"dataset_options": {"num_images": 4, "height": 40, "width": 48}, "crop_size": [24, 32],
               "scale_range": [0.75, 1.5], "color_jitter": 0.1, "seed": 7, "out": str(tmp_path / "r")}
    train, _ = build_datasets(TrainConfig.from_dict(options), "imagenet")
    explicit, _ = build_datasets(TrainConfig.from_dict({**options, "brightness": 0.1, "contrast": 0.1,
                                                        "saturation": 0.1, "hue": 0, "gamma": 0, "blur": 0,
                                                        "noise": 0}), "imagenet")
    before = Compose([RandomScale(0.75, 1.5), RandomCrop(24, 32, fill=mean_color("imagenet")),
                      RandomHorizontalFlip()])
    for epoch in (0, 3):
        train.set_epoch(epoch)
        explicit.set_epoch(epoch)
        for index in range(len(train)):
            rng = np.random.default_rng((7, epoch, index))
            image, label = before(*train.load(index), rng=rng)
            expected = to_tensors(_old_color_jitter(image, rng, 0.1), label, "imagenet")
            for dataset in (train, explicit):
                got = dataset[index]
                assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1]), (epoch, index)


def _augmented(seed=5):
    config = TrainConfig.from_dict({"dataset_options": {"num_images": 4, "height": 40, "width": 48}, "seed": seed,
                                    "crop_size": [32, 40], "color_jitter": 0.2, "hue": 0.1, "gamma": 0.5,
                                    "blur": 1.5, "noise": 6.0, "out": "unused"})
    return build_datasets(config, "imagenet")[0]


def test_augmentation_is_a_function_of_seed_epoch_and_index_whatever_the_workers():
    first, again = _augmented(), _augmented()
    first.set_epoch(2)
    again.set_epoch(2)
    samples = [first[i][0] for i in range(4)]
    assert all(torch.equal(again[i][0], samples[i]) for i in (3, 1, 0, 2))  # any order, a fresh dataset
    assert not torch.equal(samples[0], samples[1])
    again.set_epoch(1)
    assert not torch.equal(again[0][0], samples[0])  # another epoch, other draws
    assert not torch.equal(_augmented(seed=6)[0][0], _augmented()[0][0])  # another seed, other draws
    # Two loader workers, each with its own torch seed, give the same samples.
    loader = DataLoader(first, batch_size=2, num_workers=2, collate_fn=PadCollate(first.info.ignore_index))
    loaded = torch.cat([images for images, _ in loader])
    assert all(torch.equal(loaded[i], samples[i]) for i in range(4))


def test_train_transforms_gives_each_amount_to_colour_jitter():
    jitter = train_transforms(None, None, False, color_jitter=0.1, brightness=0.5, hue=0.2, noise=3.0).transforms
    assert [type(t).__name__ for t in jitter] == ["ColorJitter"]
    assert (jitter[0].brightness, jitter[0].contrast, jitter[0].saturation) == (0.5, 0.1, 0.1)
    assert (jitter[0].hue, jitter[0].gamma, jitter[0].blur, jitter[0].noise) == (0.2, 0, 0, 3.0)
    assert train_transforms(None, None, False, color_jitter=0.3, brightness=0, contrast=0, saturation=0).transforms \
        == []


def test_cut_mix_pastes_a_box_of_the_next_image_of_the_batch_with_its_labels():
    # Sample i is the constant i (image and labels): every pixel shows where it came from.
    count, height, width = 5, 12, 16
    images = torch.arange(count, dtype=torch.float32).view(count, 1, 1, 1).expand(count, 3, height, width).clone()
    labels = torch.arange(count).view(count, 1, 1).expand(count, height, width).clone()
    before = images.clone(), labels.clone()
    mixed_images, mixed_labels = cut_mix(images, labels, 1.0, np.random.default_rng(3))
    assert torch.equal(images, before[0]) and torch.equal(labels, before[1])  # the inputs are left alone
    assert torch.equal(mixed_images, mixed_labels.unsqueeze(1).expand_as(images).float())  # pixels keep their labels
    pasted = 0
    for index in range(count):
        source = (index + 1) % count
        assert set(mixed_labels[index].unique().tolist()) <= {index, source}
        rows, columns = torch.nonzero(mixed_labels[index] == source, as_tuple=True)
        if len(rows):  # one filled rectangle
            pasted += 1
            box = mixed_labels[index, rows.min():rows.max() + 1, columns.min():columns.max() + 1]
            assert bool((box == source).all())
    assert pasted >= 3
    # Two heads: the same box in each.
    heads = torch.stack([labels, labels + 10], 1)
    _, mixed_heads = cut_mix(images, heads, 1.0, np.random.default_rng(3))
    assert torch.equal(mixed_heads[:, 0], mixed_labels) and torch.equal(mixed_heads[:, 1], mixed_labels + 10)


def test_cut_mix_mixes_the_share_of_images_asked_and_leaves_single_images_and_zero_alone():
    count = 400
    images, labels = torch.zeros(count, 3, 20, 20), torch.arange(count).view(count, 1, 1).expand(count, 20, 20)
    _, mixed = cut_mix(images, labels, 0.25, np.random.default_rng(0))
    changed = (mixed != labels).flatten(1).any(1).float().mean().item()
    assert 0.18 < changed < 0.3  # a few boxes round to nothing
    assert cut_mix(images, labels, 0.0, np.random.default_rng(0))[1] is labels
    single = labels[:1].clone()
    assert torch.equal(cut_mix(images[:1], single, 1.0, np.random.default_rng(0))[1], single)
    with pytest.raises(ConfigError, match="cutmix pastes boxes between the images of a batch, and batch_size is 1"):
        TrainConfig.from_dict({"cutmix": 0.5, "batch_size": 1})


def test_a_run_with_every_augmentation_option_resumes_to_the_uninterrupted_weights(tmp_path, monkeypatch):
    # One loader worker: the augmentation must not hang on a worker's own random state, which a resumed loader,
    # starting mid-epoch, does not share with the uninterrupted one.
    import fcnseg.train.loop as loop
    from fcnseg.checkpoint import read_checkpoint
    from fcnseg.train import train

    options = {"width": 1 / 16, "geometry": "fast", "dataset_options": {"num_images": 12, "height": 40, "width": 48},
               "batch_size": 4, "workers": 1, "iterations": 3, "val_interval": 3, "checkpoint_interval": 1,
               "crop_size": [32, 40], "color_jitter": 0.2, "hue": 0.1, "gamma": 0.5, "blur": 1.0, "noise": 6.0,
               "cutmix": 0.5, "threads": 1, "val_limit": 1}
    train(TrainConfig.from_dict({**options, "out": str(tmp_path / "straight")}))
    original = loop.micro_batches

    def dying(*args, **kwargs):  # killed mid-epoch, reading the third step's batch, after the second's checkpoint
        for count, batch in enumerate(original(*args, **kwargs)):
            if count == 2:
                raise KeyboardInterrupt("killed")
            yield batch

    monkeypatch.setattr(loop, "micro_batches", dying)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig.from_dict({**options, "out": str(tmp_path / "killed")}))
    assert read_checkpoint(tmp_path / "killed" / "last.pth")["iteration"] == 2
    monkeypatch.setattr(loop, "micro_batches", original)
    train(TrainConfig.from_dict({**options, "out": str(tmp_path / "killed"), "resume": True}))
    straight, resumed = (read_checkpoint(tmp_path / name / "last.pth")["model_state_dict"]
                         for name in ("straight", "killed"))
    assert all(torch.equal(value, resumed[key]) for key, value in straight.items())


# --- scripts/heldout_probe.py: the two test-time probes --------------------------------------------------------

@pytest.fixture(scope="module")
def probe():
    return load_script(REPO / "scripts" / "heldout_probe.py")


def test_colour_matching_moves_each_channel_to_the_target_mean_and_deviation(probe):
    # Channel 0 holds 10 and 30 (mean 20, deviation 10), channel 1 holds 50 and 90 (70, 20), channel 2 is flat.
    image = np.array([[[10, 50, 7], [30, 90, 7]]], dtype=np.uint8)
    source = probe.colour_stats([image])
    np.testing.assert_allclose(source[0], [20, 70, 7])
    np.testing.assert_allclose(source[1], [10, 20, 0])
    matched = probe.match_colours(image, source, (np.array([100.0, 100, 100]), np.array([20.0, 5, 30])))
    # (10 - 20) / 10 * 20 + 100 = 80; (50 - 70) / 20 * 5 + 100 = 95; a flat channel lands on the target mean.
    np.testing.assert_array_equal(matched, [[[80, 95, 100], [120, 105, 100]]])
    bright = probe.match_colours(image, source, (np.array([250.0, 0, 0]), np.array([20.0, 20, 20])))
    assert bright.dtype == np.uint8 and bright[0, 1, 0] == 255 and bright[0, 0, 1] == 0  # clipped, not wrapped


def test_taking_class_weights_back_flips_a_pixel_where_the_weights_decided_it(probe):
    # p = (0.6, 0.4), w = (2, 1): log 0.6 - tau ln 2 < log 0.4 once tau > ln 1.5 / ln 2 = 0.585.
    probs = torch.tensor([0.6, 0.4]).view(2, 1, 1).expand(2, 2, 3)
    weights = torch.tensor([2.0, 1.0])
    assert [int(probe.adjusted_labels(probs, weights, tau).max()) for tau in (0.0, 0.5, 0.75, 1.0)] == [0, 0, 1, 1]
    assert probe.adjusted_labels(probs, torch.ones(2), 1.0).shape == (2, 3)


def test_probe_refuses_a_checkpoint_of_another_dataset_in_one_line(probe, tmp_path, monkeypatch):
    path = write_checkpoint({"format": "fcnseg-checkpoint", "version": 2, "config": {"dataset": "voc"}},
                            tmp_path / "last.pth")
    monkeypatch.setattr(sys, "argv", ["heldout_probe.py", str(path)])
    with pytest.raises(SystemExit) as exit_info:
        probe.main()
    message = f"heldout_probe: error: {path} is not the last.pth of a CamVid training run (no such config)"
    assert str(exit_info.value) == message


def test_adabn_sets_batchnorm_statistics_to_the_plain_mean_over_the_frames_with_dropout_off(probe):
    # One channel through dropout (p = 0.9, which would zero most inputs if it were on) into BatchNorm.
    # Frame 1 holds 1 and 3 (mean 2, unbiased variance 2), frame 2 holds 10, 10 (mean 10, variance 0):
    # the plain means are 6 and 1, whatever the momentum was and whatever the statistics held before.
    net = torch.nn.Sequential(torch.nn.Dropout(0.9), torch.nn.BatchNorm2d(1, momentum=0.3))
    net[1].running_mean.fill_(-5.0)
    net[1].num_batches_tracked.fill_(700)
    frames = [torch.tensor([1.0, 3.0]).view(1, 1, 1, 2), torch.full((1, 1, 1, 2), 10.0)]
    torch.manual_seed(0)
    assert probe.adapt_batchnorm(net, iter(frames)) == 2
    assert net[1].running_mean.item() == pytest.approx(6.0)
    assert net[1].running_var.item() == pytest.approx(1.0)
    assert net[1].momentum == 0.3 and not net.training and not net[0].training


def test_probe_refuses_a_thread_count_of_zero_as_a_usage_error(probe, monkeypatch, capsys):
    # torch.set_num_threads(0) raised a RuntimeError with a traceback; the CLI's own type says it in one line.
    monkeypatch.setattr(sys, "argv", ["heldout_probe.py", "last.pth", "--threads", "0"])
    with pytest.raises(SystemExit) as exit_info:
        probe.main()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "heldout_probe.py: error: argument --threads: expected a whole number of at least 1, got '0'")


@pytest.mark.parametrize("argv, said", [
    (["heldout", "--threads", "1", "--out", "mine"], "leave out --out"),  # trained there, scored runs/heldout/NAME
    (["seed", "fcn8s_il12_ema_w8_16k", "1", "--out=mine"], "leave out --out"),
    (["eval", "--threads", "1", "--flip"], "usage: scripts/camvid.sh eval [--threads N]"),  # flags were dropped
])
def test_camvid_sh_refuses_flags_it_would_not_honour(argv, said):
    """Found by a hostile review: a held-out part given --out trained into it, then scored the older run in
    runs/heldout and wrote that over the tracked reports; eval accepted and dropped its flags."""
    # FCNSEG=false: a part that went on would fail at its first fcnseg command, with another exit code
    result = subprocess.run(["bash", "scripts/camvid.sh", *argv], cwd=REPO, capture_output=True, text=True,
                            timeout=60, env={**os.environ, "FCNSEG": "false", "PYTHON": "false"})
    assert result.returncode == 2 and said in result.stderr, result.stderr
