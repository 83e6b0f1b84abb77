"""What a newcomer meets first: progress in a log file (not only on a terminal), help that lists every dataset
and says what each export format is, mismatch messages that name both nets, and ImageNet weights that cannot
fit refused before they are downloaded."""

from __future__ import annotations

import csv
import io
import os
import re
import subprocess
import sys

import pytest
import torch

import fcnseg.progress
import fcnseg.transfer
from fcnseg.cli import build_parser, main
from fcnseg.data.registry import DATASETS
from fcnseg.errors import WeightsError
from fcnseg.models import build_model
from fcnseg.models.spec import ModelSpec
from fcnseg.models.weights import fcn_from_imagenet, init_from_coarser
from fcnseg.train.config import TrainConfig

from .helpers import TINY_TRAIN, error_names, refused

LOUD_TRAIN = [arg for arg in TINY_TRAIN if arg != "--quiet"]
TRAIN_LINE = re.compile(r"fcnseg train: it (\d+)/4, epoch (\d+): loss \d+\.\d{4}, lr \S+, \d+\.\d img/s, "
                        r"elapsed \d\d:\d\d, ETA \d\d:\d\d")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _train_lines(text: str) -> list[re.Match]:
    return [match for line in text.splitlines() if (match := TRAIN_LINE.fullmatch(line))]


def test_training_into_a_log_prints_a_progress_line_with_each_metrics_row(tmp_path):
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "fcnseg.cli", "train", *LOUD_TRAIN, "--iterations", "4",
                           "--log-interval", "2", "--val-interval", "4", "--out", str(out)],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)  # stderr a pipe, as under nohup, SLURM or CI
    assert done.returncode == 0, done.stderr
    lines = _train_lines(done.stderr)
    with (out / "metrics.csv").open() as handle:
        rows = [row for row in csv.DictReader(handle) if row["loss"]]
    assert [int(m[1]) for m in lines] == [int(row["iteration"]) for row in rows] == [2, 4], done.stderr
    assert [m[2] for m in lines] == [row["epoch"] for row in rows]


def test_quiet_training_prints_no_progress_lines(tmp_path, capsys):
    assert main(["train", *TINY_TRAIN, "--iterations", "2", "--log-interval", "1", "--val-interval", "2",
                 "--out", str(tmp_path / "run")]) == 0
    assert not _train_lines(capsys.readouterr().err)


def test_training_on_a_terminal_draws_the_bar_without_progress_lines(tmp_path, monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["train", *LOUD_TRAIN, "--iterations", "2", "--log-interval", "1", "--val-interval", "2",
                 "--out", str(tmp_path / "run")]) == 0
    printed = terminal.getvalue()
    assert "train:" in printed and "it/s" in printed, printed  # tqdm's bar
    assert not _train_lines(printed.replace("\r", "\n")), printed


def test_eval_into_a_log_prints_progress_lines(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(fcnseg.progress, "LINE_SECONDS", 0.0)  # a line at every update, not every 30 s
    assert main(["eval", str(tiny_checkpoint), "--dataset", "synthetic", "--split", "val", "--limit", "3",
                 "--workers", "0", "--threads", "1", "--device", "cpu"]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("fcnseg eval: eval: ")]
    assert [line.split()[3] for line in lines] == ["1/3", "2/3", "3/3"], lines
    assert all(re.search(r"img/s, elapsed \d\d:\d\d, ETA \d\d:\d\d$", line) for line in lines), lines
    assert main(["eval", str(tiny_checkpoint), "--dataset", "synthetic", "--split", "val", "--limit", "3",
                 "--workers", "0", "--threads", "1", "--device", "cpu", "--quiet"]) == 0
    assert "fcnseg eval: eval: " not in capsys.readouterr().err


def _help_of(command: str, option: str) -> str:
    subparsers = next(a for a in build_parser()._actions if a.dest == "command")
    return next(a.help for a in subparsers.choices[command]._actions if option in a.option_strings) or ""


def test_train_help_lists_every_dataset(capsys):
    listed = _help_of("train", "--dataset")
    assert all(re.search(rf"\b{name}\b", listed) for name in DATASETS), listed
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    printed = " ".join(capsys.readouterr().out.split())
    assert all(name in printed for name in DATASETS)


def test_export_help_says_what_each_format_is():
    text = _help_of("export", "--format")
    assert "ONNX Runtime" in text and "torch.jit.load" in text and "LibTorch" in text, text


def test_training_from_a_net_of_another_width_names_both_nets_and_the_fix(tiny_checkpoint, tmp_path, capsys):
    # tiny_checkpoint: an fcn8s on vgg16 of width 0.0625
    wider = [arg if arg != "0.0625" else "0.125" for arg in TINY_TRAIN]
    refused(capsys, ["train", "--init-from", tiny_checkpoint, "--model", "fcn16s", *wider, "--out", tmp_path / "run"],
            tiny_checkpoint, "fcn8s on vgg16 of width 0.0625", "fcn16s is on vgg16 of width 0.125",
            "--backbone vgg16 --width 0.0625")


def test_staged_init_mismatches_name_both_nets():
    coarse = build_model("fcn32s", backbone="vgg16", num_classes=5, width=1 / 16, geometry="fast")
    wider = build_model("fcn8s", backbone="vgg16", num_classes=5, width=1 / 8, geometry="fast")
    with pytest.raises(WeightsError) as caught:
        init_from_coarser(wider, coarse)
    error_names(caught, "fcn32s on vgg16 of width 0.0625", "fcn8s on vgg16 of width 0.125", "backbone and width")
    with pytest.raises(WeightsError) as caught:  # a bare state dict: the entries that differ, with both shapes
        init_from_coarser(wider, coarse.state_dict())
    error_names(caught, "backbone.features.0.weight (4, 3, 3, 3) vs (8, 3, 3, 3)", "fcn8s on vgg16 of width 0.125")
    other = build_model("fcn8s", backbone="vgg16", num_classes=6, width=1 / 16, geometry="fast")
    with pytest.raises(WeightsError) as caught:
        init_from_coarser(other, coarse)
    error_names(caught, "scores 5 classes, this one 6", "classes=")


@pytest.fixture
def no_download(monkeypatch):
    def download(*args, **kwargs):
        pytest.fail(f"downloaded {args} before refusing the weights")

    monkeypatch.setattr(fcnseg.transfer, "cached_download", download)


def test_default_imagenet_weights_for_a_narrow_net_are_refused_before_the_download(tmp_path, capsys, no_download):
    out = tmp_path / "run"
    refused(capsys, ["train", "--imagenet-weights", "default", *TINY_TRAIN, "--out", out],
            "imagenet_weights", "width 1", "0.0625")
    assert not out.exists()
    refused(capsys, ["train", "--imagenet-weights", "default", "--backbone", "caffenet", *TINY_TRAIN, "--out", out],
            "imagenet_weights", "caffenet", "alexnet")
    spec = ModelSpec("fcn32s", "vgg16", 5, 1 / 16, "fast")
    with pytest.raises(WeightsError) as caught:  # the Python API
        fcn_from_imagenet(spec)
    error_names(caught, "width 1", "0.0625")


def test_default_imagenet_weights_stay_allowed_where_they_fit_or_are_not_read(tmp_path):
    from fcnseg.checkpoint import save_model
    from fcnseg.data.info import SYNTHETIC_ROADS

    from .helpers import random_fcn

    TrainConfig.from_dict({"imagenet_weights": "default", "backbone": "resnet50", "width": 1.0})
    # With a starting net they are not read (its backbone replaces them): nothing to refuse.
    start = save_model(random_fcn(), SYNTHETIC_ROADS, tmp_path / "start.pth")
    TrainConfig.from_dict({"imagenet_weights": "default", "width": 0.0625, "init_from": str(start)})


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_run_from_a_starting_net_takes_its_architecture_unless_told_otherwise(tmp_path):
    # `fcnseg train --init-from NET --dataset folder ...` once built a full-width VGG16 (the defaults) and was
    # refused as a mismatch: a newcomer fine-tuning a net had to restate its backbone and width.
    from fcnseg.checkpoint import save_model
    from fcnseg.data.info import SYNTHETIC_ROADS
    from fcnseg.train import TrainConfig

    from .helpers import random_fcn

    start = save_model(random_fcn("fcn16s", backbone="vgg16_bn", geometry="reference"), SYNTHETIC_ROADS,
                       tmp_path / "start.pth")
    inherited = TrainConfig.from_dict({"init_from": str(start), "dataset": "folder"})
    assert (inherited.model, inherited.backbone, inherited.width, inherited.geometry) == \
        ("fcn16s", "vgg16_bn", 1 / 16, "reference")
    staged = TrainConfig.from_dict({"init_from": str(start), "model": "fcn8s", "geometry": "fast"})
    assert (staged.model, staged.backbone, staged.width, staged.geometry) == ("fcn8s", "vgg16_bn", 1 / 16, "fast")
    assert TrainConfig.from_dict({}).backbone == "vgg16"  # without a starting net: the defaults


def test_two_installs_at_once_run_one_after_the_other(tmp_path):
    # `make demo` and `make test` started together on a fresh clone ran two pips in one venv. The Makefile's
    # install runs under scripts/locked.py: the second waits for the first, then (scripts/install.sh) finds
    # the venv made and does nothing.
    import fcntl

    script = os.path.join(os.path.dirname(__file__), "..", "scripts", "locked.py")
    lock, log = tmp_path / "venv.lock", tmp_path / "log"
    with open(lock, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        second = subprocess.Popen([sys.executable, script, str(lock), "sh", "-c", f"echo second >> {log}"],
                                  stderr=subprocess.PIPE, text=True)
        assert "waiting for another install" in second.stderr.readline()
        log.write_text("first\n")  # the holder's work, done while the second waits
    assert second.wait(timeout=60) == 0
    assert log.read_text() == "first\nsecond\n"
