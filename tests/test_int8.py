"""int8 exports: calibrated through fcnseg's dataset readers, carrying their metadata, close to fp32 on a
trained net, and run by predict / eval like any ONNX export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fcnseg.api import load
from fcnseg.cli import main
from fcnseg.errors import ConfigError, DataError
from fcnseg.quantize import Calibration, export_int8, parse_calibration
from fcnseg.train import train

from .helpers import error_names, overfit_config, refused, shapes_dataset

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny FCN-8s trained on four pictures of shapes (labels it gets mostly right)."""
    folder = tmp_path_factory.mktemp("int8")
    root = shapes_dataset(folder / "shapes")
    config = overfit_config(root, folder / "run", iterations=60, log_interval=60)
    train(config)
    return root, folder / "run" / "last.pth"


def test_int8_export_agrees_with_fp32_and_records_how_it_was_made(trained, tmp_path, capsys, one_thread):
    root, checkpoint = trained
    out = tmp_path / "net-int8.onnx"
    # images=500 of a split of 4: the 4 it was calibrated on are said and recorded (it claimed 500)
    assert main(["export", str(checkpoint), "--out", str(out), "--int8", "--calibrate", "dataset=folder",
                 f"root={root}", "split=all", "images=500", "--threads", "1"]) == 0
    printed, err = capsys.readouterr()
    assert "onnx int8" in printed and "calibrated on 4 images of folder all" in printed
    assert "on those images, labels agree with fp32 on" in printed and "other classes" not in err
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    report = json.loads(props["fcnseg.int8"])
    assert report["precision"] == "int8" and report["calibration"]["dataset"] == "folder"
    assert report["calibration"]["root"] == str(root) and report["calibration"]["images"] == 4
    assert "per-channel int8 weights" in report["method"]
    # The weights really are int8 (QDQ: int8 initialisers feeding DequantizeLinear).
    model = onnx.load(str(out))
    assert any(t.data_type == onnx.TensorProto.INT8 for t in model.graph.initializer)
    # Labels agree with the fp32 checkpoint on >= 95% of the pixels (first images of the split)
    fp32, int8 = load(checkpoint, device="cpu"), load(out, device="cpu")
    images = sorted((root / "images").glob("*.png"))
    same = [np.mean(fp32.predict(path) == int8.predict(path)) for path in images]
    assert min(same) >= 0.95, same
    assert report["agreement_with_fp32"] >= 0.95
    # eval and predict run it like any ONNX export; eval's title and serve's page say it is int8 (they said the
    # same of the int8 export and of its checkpoint)
    assert main(["eval", str(out), "--dataset", "folder", "--root", str(root), "--split", "all", "--workers", "0",
                 "--threads", "1", "--out", str(tmp_path / "report")]) == 0
    assert json.loads((tmp_path / "report" / "metrics.json").read_text())["title"].endswith(", int8)")
    from fcnseg.serve import make_server

    server = make_server(int8, quiet=True)
    try:
        assert server.info()["model_name"].endswith(", int8)") and server.info()["precision"] == "int8"
    finally:
        server.server_close()
    assert fp32.precision == "float32"
    assert main(["predict", str(out), str(images[0]), "--out", str(tmp_path / "pred"), "--backend", "onnxruntime"]) == 0


def test_calibration_options_are_checked_before_any_work(trained, tmp_path, capsys):
    root, checkpoint = trained
    out = str(tmp_path / "x.onnx")
    cases = [  # the options at fault, the value not understood, and what is missing or taken instead
        (["--int8"], ("--int8", "--calibrate", "dataset=", "root=")),
        (["--calibrate", "dataset=folder"], ("--calibrate", "--int8")),
        (["--int8", "--format", "torchscript", "--calibrate", "dataset=folder"], ("--int8", "ONNX")),
        (["--int8", "--calibrate", "root=x"], ("--calibrate", "dataset=")),
        (["--int8", "--calibrate", "dataset=folder", "colour=red"], ("folder", "colour")),
        (["--int8", "--calibrate", "dataset=folder", "images=many"], ("images=", "whole number")),  # (not the value)
        (["--int8", "--calibrate", "dataset"], ("'dataset'", "KEY=VALUE")),
        (["--int8", "--calibrate", "dataset=folder"], ("dataset=folder", "root=PATH")),  # it said "(--root)"
        (["--int8", "--calibrate", "dataset=foo", "root=x"], ("unknown dataset", "'foo'")),  # was a KeyError
    ]
    for extra, names in cases:
        assert "--root" not in refused(capsys, ["export", checkpoint, "--out", out, *extra], *names)
    assert not (tmp_path / "x.onnx").exists()
    assert parse_calibration(["dataset=camvid", "root=/d", "images=8"]) == Calibration("camvid", "/d", "train", 8)
    # A reader's options are read as a config gives them: num_images=2 is a number (it reached the reader as "2")
    assert parse_calibration(["dataset=synthetic", "num_images=2", "height=40.5"]).options == \
        {"num_images": 2, "height": 40.5}
    with pytest.raises(ConfigError) as caught:
        Calibration("folder", images=0)
    error_names(caught, "images", "0")
    (tmp_path / "empty" / "images").mkdir(parents=True)
    with pytest.raises(DataError) as caught:  # the reader's own message: the folder it lacks
        export_int8(checkpoint, tmp_path / "y.onnx", Calibration("folder", str(tmp_path / "empty"), "all"))
    error_names(caught, tmp_path / "empty" / "masks", "not found")
    assert not (tmp_path / "y.onnx").exists()


def test_calibrating_on_images_of_other_classes_is_warned_about(trained, tmp_path, capsys, one_thread):
    # camvid-fcn8s calibrated on synthetic scenes: "labels agree with fp32 on 97.09% of their pixels", on CamVid's
    # frames 88-90% and mean IU 67.5 -> 53.9, without a word (a review's reproduction).
    _, checkpoint = trained
    assert main(["export", str(checkpoint), "--out", str(tmp_path / "m.onnx"), "--int8", "--calibrate",
                 "dataset=synthetic", "images=2", "num_images=2", "height=32", "width=32", "--threads", "1"]) == 0
    err = capsys.readouterr().err
    assert "on images of synthetic_roads (other classes)" in err and "calibrate on the net's own" in err, err


def test_what_a_killed_int8_export_left_beside_its_out_is_removed_by_the_next(trained, tmp_path, capsys, one_thread):
    # kill -9 during an int8 export left .fcnseg-int8-*/ (fp32.onnx, prepared.onnx: 17-19 MB a time) in the
    # user's folder, and ONNX Runtime's ort.quant.* in /tmp; no later run removed them.
    import fcntl
    import os
    import time

    root, checkpoint = trained
    left, live = tmp_path / ".fcnseg-int8-killed", tmp_path / ".fcnseg-int8-live"
    for folder in (left, live):
        folder.mkdir()
        (folder / "fp32.onnx").write_bytes(b"x" * 1000)
        os.utime(folder, (time.time() - 60, time.time() - 60))
    held = os.open(live, os.O_RDONLY)  # a running export holds its folder
    fcntl.flock(held, fcntl.LOCK_EX)
    made = []
    real_quantize = __import__("onnxruntime.quantization", fromlist=["quantize_static"]).quantize_static

    def noting_where_temporaries_go(*args, **kwargs):
        import tempfile
        made.append(tempfile.gettempdir())
        return real_quantize(*args, **kwargs)

    import onnxruntime.quantization
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(onnxruntime.quantization, "quantize_static", noting_where_temporaries_go)
            assert main(["export", str(checkpoint), "--out", str(tmp_path / "m.onnx"), "--int8", "--calibrate",
                         "dataset=folder", f"root={root}", "split=all", "images=2", "--threads", "1"]) == 0
    finally:
        os.close(held)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".fcnseg-int8-live", ".fcnseg-outputs.json", "m.onnx"]
    assert len(made) == 1 and Path(made[0]).parent == tmp_path  # ONNX Runtime's temporaries in its work folder
