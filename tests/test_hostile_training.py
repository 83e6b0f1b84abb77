"""Hostile use of ``fcnseg train``: a disk that fills while a checkpoint is written, a crop size no memory
holds, and starting points or class weights that can only give a NaN loss.

Each case checks the exit code, the one line printed (no traceback) and, where something could be lost,
the files' hashes before and after.
"""

import errno
import io
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fcnseg.atomic
from fcnseg.checkpoint import read_checkpoint, save_model
from fcnseg.cli import main
from fcnseg.data.info import SYNTHETIC_ROADS

from .helpers import TINY_TRAIN, digests, folder_dataset, random_fcn, refused

# --- a full disk while a checkpoint is written --------------------------------------------------------------


class _FillingDisk(io.FileIO):
    """A file on a disk with ``room`` bytes left: the write that reaches the end goes through in part, the
    next fails with ENOSPC, as a real full disk behaves."""

    room = 4096

    def write(self, data) -> int:
        left = self.room - self.tell()
        if left <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(bytes(data)[:left])


def fill_the_disk_for_checkpoints(monkeypatch) -> None:
    """Make checkpoint writes (the atomic writer's ``.last.pth.*.tmp`` / ``.best.pth.*.tmp``) hit a full disk;
    torch.save then ends in "[enforce fail at inline_container.cc] unexpected pos", the ENOSPC chained inside."""
    real_open = open

    def opened(file, mode="r", *args, **kwargs):
        if mode == "wb" and re.fullmatch(r"\.(last|best)\.pth\..*\.tmp", Path(file).name):
            return io.BufferedWriter(_FillingDisk(file, "wb"))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(fcnseg.atomic, "open", opened, raising=False)


def test_a_full_disk_while_a_checkpoint_is_written_is_one_line_and_keeps_the_last_one(tmp_path, capsys,
                                                                                     monkeypatch):
    out = tmp_path / "run"
    argv = ["train", *TINY_TRAIN, "--crop-size", "32", "32", "--schedule", "constant", "--out", str(out)]
    assert main([*argv, "--iterations", "1"]) == 0
    checkpoints = {name: digest for name, digest in digests(out).items() if name.endswith(".pth")}
    assert set(checkpoints) == {"last.pth", "best.pth"}

    with monkeypatch.context() as patch:
        fill_the_disk_for_checkpoints(patch)
        line = refused(capsys, [*argv, "--iterations", "2", "--resume"])
    assert "no space left on device" in line.lower(), line
    written = re.search(rf"{re.escape(str(out))}/(last|best)\.pth", line)
    assert written, line  # the file that could not be written
    assert "--resume" in line  # and what to do about it
    after = digests(out)
    assert {name: after[name] for name in checkpoints} == checkpoints  # the previous checkpoints, intact
    assert not [name for name in after if name.endswith(".tmp")]  # no half-written temporary left behind

    assert main([*argv, "--iterations", "2", "--resume"]) == 0  # space again: the run goes on from last.pth
    assert read_checkpoint(out / "last.pth")["iteration"] == 2


def test_a_full_disk_on_the_first_checkpoint_says_none_was_written(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    fill_the_disk_for_checkpoints(monkeypatch)
    line = refused(capsys, ["train", *TINY_TRAIN, "--crop-size", "32", "32", "--iterations", "1", "--out", out], out)
    assert "no space left on device" in line.lower() and "no checkpoint" in line, line
    assert not (out / "last.pth").exists() and not (out / "best.pth").exists()
    assert not [path for path in out.iterdir() if path.name.endswith(".tmp")], line


# --- a NaN loss that is not the learning rate's fault --------------------------------------------------------


def test_init_from_a_checkpoint_with_nan_weights_names_the_file_and_the_weight(tmp_path, capsys):
    model = random_fcn(width=1 / 16)
    with torch.no_grad():
        model.score_fr.weight[0, 0] = float("nan")
    damaged = save_model(model, SYNTHETIC_ROADS, tmp_path / "diverged.pth")
    out = tmp_path / "run"
    line = refused(capsys, ["train", *TINY_TRAIN, "--crop-size", "32", "32", "--iterations", "1",
                            "--init-from", damaged, "--out", out], damaged, "score_fr.weight", "NaN")
    assert "learning rate" not in line
    assert not (out / "last.pth").exists()


@pytest.mark.parametrize(("weights", "named"), [
    (["0"] * 8, ("class_weights", "all 0")),
    (["1", "1", "-2", "1", "1", "1", "1", "1"], ("class_weights", "-2", "road")),
    (["1", "nan", "1", "1", "1", "1", "1", "1"], ("class_weights", "nan")),
    (["1", "inf", "1", "1", "1", "1", "1", "1"], ("class_weights", "inf")),
])
def test_class_weights_that_can_only_give_a_nan_loss_are_refused_before_training(tmp_path, capsys, weights, named):
    out = tmp_path / "run"
    line = refused(capsys, ["train", *TINY_TRAIN, "--crop-size", "32", "32", "--iterations", "1",
                            "--class-weights", *weights, "--out", out], *named)
    assert "learning rate" not in line
    assert not (out / "last.pth").exists() and not (out / "metrics.csv").exists()


def test_a_batch_of_only_zero_weighted_classes_names_the_weights_not_the_learning_rate(tmp_path, capsys):
    # Every mask is class 0 ('class0') and class_weights weigh it 0: the mean loss of any batch is 0 / 0.
    root = folder_dataset(tmp_path / "data", classes=2)
    for mask in (root / "masks").iterdir():
        Image.fromarray(np.zeros((40, 48), np.uint8)).save(mask)
    out = tmp_path / "run"
    line = refused(capsys, ["train", "--dataset", "folder", "--root", root, "--train-split", "all", "--val-split",
                            "all", *TINY_TRAIN[:-3], "--quiet", "--crop-size", "32", "32", "--iterations", "1",
                            "--class-weights", "0", "1", "--out", out], "class_weights", "class0")
    assert "learning rate" not in line
    assert not (out / "last.pth").exists()
