"""Pieces of knowledge written once and shared: how a long list is shortened in a message, the size an image
is resized to at a scale (inference and the memory estimate)."""

from __future__ import annotations

import pytest
import torch

from fcnseg.errors import ConfigError, listing
from fcnseg.inference import InferenceOptions, predict_probs, scaled_size
from fcnseg.outputs import Outputs


def test_listing_names_the_first_ones_and_counts_the_rest():
    assert listing(["a", "b"], 2) == "a, b"
    assert listing(["a", "b", "c", "d"], 2) == "a, b and 2 more"
    assert listing([1, 2, 3], 1, sep="\n  ") == "1\n  ... and 2 more"
    assert listing(list(range(11))) == "0, 1, 2, 3, 4, 5, 6, 7, 8, 9 and 1 more"  # ten by default


def test_a_folder_of_foreign_files_is_refused_with_how_many_more(tmp_path):
    for index in range(12):
        (tmp_path / f"user{index:02d}.txt").write_text("x")
    with pytest.raises(ConfigError, match=r"user07.txt and 4 more\): move them"):
        Outputs(tmp_path, "demo").clear()


def test_inference_runs_each_scale_at_the_size_the_memory_estimate_counts():
    seen = []

    def forward(x):
        seen.append(tuple(x.shape[2:]))
        return torch.zeros(x.shape[0], 2, *x.shape[2:])

    predict_probs(forward, torch.zeros(1, 3, 37, 50), InferenceOptions(scales=(0.5, 0.013, 1.5)))
    assert seen == [scaled_size(37, 50, s) for s in (0.5, 0.013, 1.5)] == [(18, 25), (1, 1), (56, 75)]


def test_a_new_run_checks_its_folder_once(tmp_path, monkeypatch):
    import fcnseg.train.folder as folder
    import fcnseg.train.loop as loop
    from fcnseg.train.config import TrainConfig

    calls = []
    check = folder.check_new_run

    def counted(config):
        calls.append(config.out)
        return check(config)

    def stop(*args):
        raise RuntimeError("stop before building the run")

    monkeypatch.setattr(folder, "check_new_run", counted)
    monkeypatch.setattr(loop, "check_new_run", counted)
    monkeypatch.setattr(loop, "build_run", stop)
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.csv").write_text("left by a killed start\n")
    with pytest.raises(RuntimeError, match="stop before"):
        loop.train(TrainConfig(out=str(out), device="cpu", threads=1, overwrite=True))
    assert calls == [str(out)]
    # What a new run replaces is cleared only once its checks have passed: a run stopped before is no reason to lose it.
    assert (out / "metrics.csv").read_text() == "left by a killed start\n"
