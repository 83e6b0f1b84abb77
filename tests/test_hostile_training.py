"""Hostile use of ``fcnseg train``: a disk that fills while a checkpoint is written, a crop size no memory
holds, and starting points or class weights that can only give a NaN loss.

Each case checks the exit code, the one line printed (no traceback) and, where something could be lost,
the files' hashes before and after.
"""

import errno
import importlib.util
import io
import os
import re
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fcnseg.atomic
import fcnseg.data.synthetic
import fcnseg.outputs
import fcnseg.train.log
from fcnseg.checkpoint import read_checkpoint, save_model, write_checkpoint
from fcnseg.cli import main
from fcnseg.data.info import SYNTHETIC_ROADS
from fcnseg.memory import saved_activations, training_bytes
from fcnseg.models import ModelSpec
from fcnseg.train.run import segmentation_loss

from .helpers import TINY_TRAIN, digests, folder_dataset, mentions, one_line_error, random_fcn, refused

# --- a full disk while a checkpoint is written --------------------------------------------------------------


class _FillingDisk(io.FileIO):
    """A file on a disk with ``room`` bytes left: the write that reaches the end goes through in part, the next
    fails with ENOSPC, as a real full disk behaves."""

    def __init__(self, file, mode: str, room: int) -> None:
        super().__init__(file, mode)
        self.end = self.tell() + room

    def write(self, data) -> int:
        left = self.end - self.tell()
        if left <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(bytes(data)[:left])


class _StoppedMidWrite(_FillingDisk):
    """A file whose writer is stopped by Ctrl+C or SIGTERM after ``room`` bytes, in the middle of a write."""

    def write(self, data) -> int:
        left = self.end - self.tell()
        if left < len(data):
            io.FileIO.write(self, bytes(data)[:max(left, 0)])
            raise KeyboardInterrupt
        return io.FileIO.write(self, data)


def fill_the_disk(monkeypatch, module, pattern: str, room: int = 4096, disk: type = _FillingDisk) -> None:
    """Make the files ``module`` opens whose names match ``pattern`` sit on a disk with ``room`` bytes left (or
    another ``disk``)."""
    real_open = open

    def opened(file, mode="r", *args, **kwargs):
        if mode[0] in "wa" and re.fullmatch(pattern, Path(file).name):
            raw = io.BufferedWriter(disk(file, mode.replace("b", ""), room))
            return raw if "b" in mode else io.TextIOWrapper(raw, newline=kwargs.get("newline"))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(module, "open", opened, raising=False)


def fill_the_disk_for_checkpoints(monkeypatch) -> None:
    """Make checkpoint writes (the atomic writer's ``.last.pth.*.tmp`` / ``.best.pth.*.tmp``) hit a full disk;
    torch.save then ends in "[enforce fail at inline_container.cc] unexpected pos", the ENOSPC chained inside."""
    fill_the_disk(monkeypatch, fcnseg.atomic, r"\.(last|best)\.pth\..*\.tmp")


def test_ctrl_c_or_sigterm_while_a_checkpoint_is_written_is_a_stop_not_a_traceback(tmp_path, monkeypatch):
    # torch.save's clean-up (writing the zip's end) reported an interrupt mid-write as its own RuntimeError
    # ("unexpected pos ..."): fcnseg train printed a traceback and exited 1 instead of stopping (seen with SIGTERM).
    path, data = tmp_path / "last.pth", {"weights": torch.zeros(4000), "iteration": 7}
    write_checkpoint({"iteration": 6}, path)
    before = path.read_bytes()
    buffer = io.BytesIO()
    torch.save(data, buffer)
    for room in range(0, len(buffer.getvalue()), 1000):
        with monkeypatch.context() as patch:
            fill_the_disk(patch, fcnseg.atomic, r"\.last\.pth\..*\.tmp", room, disk=_StoppedMidWrite)
            with pytest.raises(KeyboardInterrupt):
                write_checkpoint(data, path)
        assert path.read_bytes() == before and os.listdir(tmp_path) == ["last.pth"], room


@pytest.mark.parametrize("records", [0, 3], ids=["at-start", "later"])
def test_a_full_disk_under_tensorboard_is_one_line_without_its_threads_traceback(tmp_path, capsys, monkeypatch,
                                                                                 records):
    # TensorBoard writes from a thread of its own: a full disk printed that thread's traceback, then the main
    # thread's (the error handed over at the next call).
    record_writer = pytest.importorskip("tensorboard.summary.writer.record_writer")
    real_write, written = record_writer.RecordWriter.write, []

    def write(self, data):
        if len(written) >= records:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written.append(data)
        return real_write(self, data)

    monkeypatch.setattr(record_writer.RecordWriter, "write", write)
    out = tmp_path / "run"
    argv = ["train", *TINY_TRAIN, "--iterations", "8", "--log-interval", "1", "--out", out]
    code = main([str(arg) for arg in argv])
    for thread in threading.enumerate():  # the writing thread reports (or not) before it ends
        if type(thread).__module__.startswith("tensorboard."):
            thread.join(10)
    assert code == 2
    one_line_error(capsys.readouterr().err, str(out / "tensorboard"), os.strerror(errno.ENOSPC), command="train")


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


def test_a_full_disk_while_the_log_is_written_is_one_line_and_keeps_the_rows(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    argv = ["train", *TINY_TRAIN, "--crop-size", "32", "32", "--schedule", "constant", "--log-interval", "1",
            "--out", str(out)]
    with monkeypatch.context() as patch:  # appending a row
        fill_the_disk(patch, fcnseg.train.log, r"metrics\.csv", room=0)
        line = refused(capsys, [*argv, "--iterations", "1"], out / "metrics.csv", "no checkpoint")
    assert "no space left on device" in line.lower(), line
    assert main([*argv, "--iterations", "2", "--overwrite"]) == 0
    kept = ("metrics.csv", "last.pth", "best.pth")  # config.yaml is written again, with --iterations 3
    before = {name: digest for name, digest in digests(out).items() if name in kept}
    with monkeypatch.context() as patch:  # rewriting the log on --resume (rows after the checkpoint dropped)
        fill_the_disk(patch, fcnseg.atomic, r"\.metrics\.csv\..*\.tmp", room=0)
        line = refused(capsys, [*argv, "--iterations", "3", "--resume"], out / "metrics.csv")
    assert "no space left on device" in line.lower(), line
    assert {name: digest for name, digest in digests(out).items() if name in kept} == before  # rows, checkpoints


def test_a_full_disk_when_the_run_folder_is_taken_is_one_line(tmp_path, capsys, monkeypatch):
    fill_the_disk(monkeypatch, fcnseg.outputs, r"\.fcnseg\.lock", room=0)  # the lock file names its holder
    out = tmp_path / "run"
    line = refused(capsys, ["train", *TINY_TRAIN, "--crop-size", "32", "32", "--iterations", "1", "--out", out],
                   out / ".fcnseg.lock")
    assert "no space left on device" in line.lower(), line


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
    (["1", "1", "-2", "1", "1", "1", "1", "1"], ("class_weights", "-2")),  # the range of every number
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
    capsys.readouterr()
    code = main([str(arg) for arg in ["train", "--dataset", "folder", "--root", root, "--train-split", "all",
                                      "--val-split", "all", *TINY_TRAIN[:-3], "--quiet", "--crop-size", "32", "32",
                                      "--iterations", "1", "--class-weights", "0", "1", "--out", out]])
    err = capsys.readouterr().err
    warning, line = [line for line in err.splitlines() if line.startswith("fcnseg")]  # fcnseg's own two lines
    assert "Traceback" not in err, err  # (one class in the masks: said before training)
    assert code == 2 and "every labelled pixel of the training split is class 0" in warning, warning
    one_line_error(line, "class_weights", "class0", command="train")
    assert "learning rate" not in line
    assert not (out / "last.pth").exists()


# --- memory bounded by an estimate -------------------------------------------------------------------------


def test_a_crop_size_no_memory_holds_is_one_line_before_any_data_is_read(tmp_path, capsys):
    out = tmp_path / "run"
    line = refused(capsys, ["train", *TINY_TRAIN, "--crop-size", "100000", "100000", "--iterations", "1",
                            "--out", out], "100000x100000", "--crop-size", "--batch-size", "--max-memory", "TB")
    assert "memory budget of" in line
    assert not out.exists()  # nothing was written: the folder it made is gone again


def test_the_memory_budget_is_max_memory_and_a_small_run_fits_the_default(tmp_path, capsys):
    argv = ["train", *TINY_TRAIN, "--iterations", "1", "--schedule", "constant"]
    crops = refused(capsys, [*argv, "--crop-size", "32", "32", "--max-memory", "50M", "--out", tmp_path / "a"],
                    "--crop-size 32 32", "50 MB")
    assert "4 crop(s) of 32x32" in crops
    # Whole images: checked as the first batch arrives, before the net runs on it.
    whole = refused(capsys, [*argv, "--max-memory", "50M", "--out", tmp_path / "b"], "40x48", "50 MB", "--crop-size")
    assert "whole image(s)" in whole
    assert not (tmp_path / "b" / "last.pth").exists()
    refused(capsys, [*argv, "--max-memory", "lots", "--out", tmp_path / "c"], "max_memory", "'lots'")
    assert not (tmp_path / "c").exists()  # refused before the run folder is made
    assert main([*argv, "--crop-size", "32", "32", "--out", str(tmp_path / "d")]) == 0  # the default budget
    assert main([*argv, "--max-memory", "2G", "--out", str(tmp_path / "e")]) == 0


def test_validation_keeps_to_max_memory_in_sliding_windows_and_says_so_once(tmp_path, capsys):
    # Crops of 32x32 fitted --max-memory, but each validation ran whole 512x640 images beside the training state
    # without an estimate (141 MB by fcnseg.memory against a budget of 128 MB here).
    argv = ["train", *TINY_TRAIN[:-3], "--set", "dataset_options={num_images: 4, height: 512, width: 640}",
            "--crop-size", "32", "32", "--iterations", "2", "--set", "val_interval=1", "--set", "val_limit=1"]
    assert main([*argv, "--max-memory", "128M", "--out", str(tmp_path / "held")]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "validation image" in line]
    assert len(notes) == 1, notes  # two validations, said once
    assert all(name in notes[0] for name in ("640x512", "sliding windows", "--max-memory")), notes
    assert main([*argv, "--out", str(tmp_path / "free")]) == 0  # the default budget: whole images, no note
    assert "validation image" not in capsys.readouterr().err


def test_a_step_whose_data_pipeline_weighs_most_names_fewer_workers_first(tmp_path, capsys):
    # With 16 workers the loaders' buffers outweighed the net, and the fix named was only crop and batch size.
    argv = ["train", *TINY_TRAIN, "--workers", "16", "--crop-size", "240", "320", "--max-memory", "60M",
            "--iterations", "1", "--out", tmp_path / "run"]
    line = refused(capsys, argv, "data pipeline", "fewer --workers (now 16)", "--crop-size")
    assert line.split(": use ", 1)[1].startswith("fewer --workers (now 16), a smaller --crop-size"), line


def test_generated_scenes_no_memory_holds_are_refused_before_they_are_made(tmp_path, capsys, monkeypatch):
    # The check came with the first batch: two 6000x6000 scenes were rendered first (a 5 GB peak with
    # --max-memory 200M). Scenes of a known size are checked before the loader starts, at the rescaling's low end.
    def rendered(*args, **kwargs):
        raise AssertionError("a scene was rendered before the refusal")

    monkeypatch.setattr(fcnseg.data.synthetic, "render_scene", rendered)
    argv = ["train", *TINY_TRAIN, "--iterations", "1", "--max-memory", "200M",
            "--set", "dataset_options={num_images: 2, height: 6000, width: 6000}"]
    line = refused(capsys, [*argv, "--out", tmp_path / "a"], "6000x6000", "200 MB", "whole image(s)")
    assert "--crop-size" in line
    refused(capsys, [*argv, "--scale-range", "0.5", "1", "--out", tmp_path / "b"], "3000x3000")


def test_the_training_estimate_grows_with_the_crop_as_the_net_does():
    spec = ModelSpec("fcn8s", "vgg16", num_classes=8, width=1 / 16, geometry="fast")
    small, large = (sum(training_bytes(spec, 2, size, size)) for size in (256, 512))
    activations = saved_activations(spec, 2, 512, 512)[0] - saved_activations(spec, 2, 256, 256)[0]
    assert large - small > activations > 0  # four times the pixels: every kept activation grows with them
    sgd, adamw = (training_bytes(ModelSpec("fcn8s", "vgg16", num_classes=21), 1, 64, 64, optimizer_slots=slots)[0]
                  for slots in (1, 2))
    assert adamw - sgd > 400 * 2**20  # a full-width VGG16's 134M weights: a second moment of 537 MB, with margin


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="measures peak memory through Linux's /proc")
def test_the_training_estimate_is_within_a_sane_factor_of_the_measured_peak():
    # benchmarks/train_memory_estimate.py: one fresh process per crop size, its peak resident memory over two
    # training steps (data loaded in the process) against training_bytes.
    benchmark = importlib.util.spec_from_file_location(
        "train_memory_estimate", Path(__file__).parents[1] / "benchmarks" / "train_memory_estimate.py")
    module = importlib.util.module_from_spec(benchmark)
    benchmark.loader.exec_module(module)
    small, large = (module.measure(f"vgg16:0.0625:2:{size}x{size}", threads=1) for size in (256, 512))
    for result in (small, large):
        assert 0.7 < result["estimate"] / result["measured"] < 1.6, result
    growth = (large["estimate"] - small["estimate"]) / (large["measured"] - small["measured"])
    assert 0.5 < growth < 2.5, (small, large)


def test_a_refused_overwrite_leaves_the_earlier_run_as_it_was(tmp_path, capsys):
    """--overwrite deleted last.pth, best.pth, config.yaml and metrics.csv before the new run's checks: a refusal
    (here 3 class weights for 8 classes) left a folder without the earlier run (found by a hostile review)."""
    out = tmp_path / "run"
    argv = ["train", *TINY_TRAIN, "--crop-size", "32", "32", "--iterations", "1", "--out", str(out)]
    assert main(argv) == 0
    before = digests(out)
    refused(capsys, [*argv, "--overwrite", "--class-weights", "1", "2", "3"], "class_weights")
    assert {name: digest for name, digest in digests(out).items() if name in before} == before
    # Starting from its own last checkpoint, which the deletion had made "not found":
    assert main([*argv, "--overwrite", "--init-from", str(out / "last.pth"), "--iterations", "2"]) == 0
    assert read_checkpoint(out / "last.pth")["iteration"] == 2


@pytest.mark.parametrize("config_too", [True, False], ids=["run-folder", "bare-folder"])
def test_resume_from_a_checkpoint_that_is_not_a_run_s_is_one_line(tmp_path, capsys, config_too):
    """best.pth (or a converted net) copied to last.pth: --resume failed with KeyError: 'optimizer' / 'iteration'."""
    run, other = tmp_path / "run", tmp_path / "other"
    argv = ["train", *TINY_TRAIN, "--crop-size", "32", "32", "--iterations", "1"]
    assert main([*argv, "--out", str(run)]) == 0
    other.mkdir()
    (other / "last.pth").write_bytes((run / "best.pth").read_bytes())
    if config_too:
        (other / "config.yaml").write_text((run / "config.yaml").read_text().replace(str(run), str(other)))
    refused(capsys, ["train", "--out", str(other), "--resume", "--threads", "1"], other / "last.pth",
            "not a checkpoint fcnseg train saves", "--init-from")


# --- labels with nothing to learn --------------------------------------------------------------------------


def test_a_batch_without_a_labelled_pixel_adds_nothing_instead_of_stopping_the_run(tmp_path, capsys):
    # An image whose mask is all ignore, alone in a batch: the mean loss over no pixel was NaN, and the run
    # stopped as diverged ("the loss became nan ... try a lower learning rate").
    root = folder_dataset(tmp_path / "data", classes=3)
    Image.fromarray(np.full((40, 48), 255, np.uint8)).save(root / "masks" / "2.png")
    argv = ["train", "--dataset", "folder", "--root", str(root), "--train-split", "all", "--val-split", "all",
            *TINY_TRAIN[:-3], "--batch-size", "1", "--iterations", "8", "--quiet", "--out", str(tmp_path / "run")]
    assert main(argv) == 0, capsys.readouterr().err
    logits = torch.randn(2, 3, 4, 5, requires_grad=True)
    loss = segmentation_loss(logits, torch.full((2, 4, 5), 255), 255, "mean", None)
    loss.backward()
    assert loss.item() == 0 and torch.equal(logits.grad, torch.zeros_like(logits))


def test_splits_without_a_labelled_pixel_are_refused_with_the_other_splits_problems(tmp_path, capsys):
    root = folder_dataset(tmp_path / "data", classes=3, broken=["0"], splits={"train": "01", "val": "23"})
    for index in range(4):
        Image.fromarray(np.full((40, 48), 255, np.uint8)).save(root / "masks" / f"{index}.png")
    argv = ["train", "--dataset", "folder", "--root", str(root), *TINY_TRAIN[:-3], "--quiet", "--iterations", "2",
            "--out", str(tmp_path / "run")]
    assert main(argv) == 2  # the training split's broken image and the validation split's masks, in one message
    lines = capsys.readouterr().err.splitlines()
    assert "1 of 2 samples of the training split" in lines[0] and mentions(lines[1], "images/0.png"), lines
    assert lines[2:] == ["no pixel of the validation split is labelled: every label pixel holds the ignore value 255; "
                         "check the masks (class-index PNGs: pixel value = class index)"]
    (root / "images" / "0.png").unlink()
    (root / "images" / "0.png").write_bytes((root / "images" / "1.png").read_bytes())
    refused(capsys, argv, "no pixel of the training split is labelled")  # the same problem in both: said once


def test_resume_from_data_of_other_classes_is_refused_data_moved_is_not(tmp_path, capsys):
    # --root may change on resume (the data moved), but data of other classes went on training with other labels
    # (or, for another count, ended in a load_state_dict traceback).
    first = folder_dataset(tmp_path / "a", classes=3)
    argv = ["train", "--dataset", "folder", "--root", str(first), "--train-split", "all", "--val-split", "all",
            *TINY_TRAIN[:-3], "--schedule", "constant", "--iterations", "2", "--quiet", "--out", str(tmp_path / "run")]
    assert main(argv) == 0
    resume = ["train", "--out", str(tmp_path / "run"), "--resume", "--iterations", "3", "--quiet", "--root"]
    for classes in (4, 3):
        other = folder_dataset(tmp_path / f"other{classes}", classes=classes)
        (other / "classes.txt").write_text("".join(f"kind{i}\n" for i in range(classes)))
        refused(capsys, [*resume, other], "--resume", "trained on 3 classes", f"holds {classes}", str(first))
    moved = tmp_path / "moved"
    first.rename(moved)
    assert main([*resume, str(moved)]) == 0
