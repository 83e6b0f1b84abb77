import argparse
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from fcnseg import viz
from fcnseg.checkpoint import save_model
from fcnseg.data.info import SYNTHETIC_ROADS
from fcnseg.data.io import DataError
from fcnseg.data.synthetic import render_scene
from fcnseg.models import build_model
from fcnseg.models.weights import WeightsError
from fcnseg.predict import Segmenter, add_parser, load, read_image_limited

H, W = 64, 80


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("fcn8s", backbone="vgg16", num_classes=8, width=1 / 16, geometry="fast")
    # Score layers start at zero (every pixel would tie at class 0); random ones give varied labels.
    for layer in model.score_layers():
        torch.nn.init.normal_(layer.weight)
    return save_model(model, SYNTHETIC_ROADS, tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture(scope="module")
def segmenter(checkpoint):
    return load(checkpoint)


def scene(seed, height=H, width=W):
    return render_scene(seed, height, width)[0]


def write_png(path, array):
    Image.fromarray(array).save(path)
    return path


def cli(argv):
    """Run ``fcnseg predict`` through its own parser; user errors propagate as exceptions."""
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["predict", *map(str, argv)])
    return args.func(args)


def test_load_carries_metadata(segmenter):
    assert segmenter.info == SYNTHETIC_ROADS
    assert segmenter.normalization == "imagenet"
    assert not segmenter.model.training
    assert segmenter.device == torch.device("cpu")


def test_path_pil_and_array_give_the_same_labels(segmenter, tmp_path):
    image = scene(1)
    path = write_png(tmp_path / "scene.png", image)
    rgba = np.concatenate([image, np.linspace(0, 255, H * W).reshape(H, W, 1).astype(np.uint8)], axis=2)
    expected = segmenter.predict(image)
    assert expected.shape == (H, W) and expected.dtype == np.uint8
    assert len(np.unique(expected)) > 1  # a model predicting one class everywhere would prove nothing
    for source in (path, str(path), Image.fromarray(image), Image.fromarray(rgba, "RGBA"), Image.open(path)):
        np.testing.assert_array_equal(segmenter.predict(source), expected)


def test_wrong_inputs_are_refused_with_what_is_accepted(segmenter):
    with pytest.raises(TypeError, match="file path.*PIL image.*uint8"):
        segmenter.predict(42)
    with pytest.raises(TypeError, match="list"):
        segmenter.predict([scene(1)])
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        segmenter.predict(scene(1).astype(np.float32))
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        segmenter.predict(scene(1)[:, :, 0])
    with pytest.raises(DataError, match="not found"):
        segmenter.predict("/nonexistent/image.png")


def test_probabilities_sum_to_one_and_argmax_matches_labels(segmenter):
    image = scene(2)
    labels, probs = segmenter.predict(image, return_probs=True)
    assert probs.shape == (8, H, W) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(probs.argmax(0), labels)
    # The label-only path (which never holds all probabilities at once) agrees too.
    np.testing.assert_array_equal(segmenter.predict(image), labels)
    slide_labels, slide_probs = segmenter.predict(image, return_probs=True, mode="slide", window=(48, 64), flip=True)
    np.testing.assert_allclose(slide_probs.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(segmenter.predict(image, mode="slide", window=(48, 64), flip=True), slide_labels)


def test_predict_batch_groups_equal_sizes_and_matches_single_predictions(checkpoint):
    seg = load(checkpoint)
    batch_sizes = []

    def counting_forward(x):
        batch_sizes.append(x.shape[0])
        return seg.model(x)

    counted = Segmenter.from_forward(counting_forward, seg.info, seg.normalization)
    images = [scene(3), scene(4, 48, 64), scene(5), scene(6)]
    results = counted.predict_batch(images, batch_size=2, return_probs=True)
    assert sorted(batch_sizes) == [1, 1, 2]  # the three 64x80 images as 2 + 1, the 48x64 one alone
    for image, (labels, probs) in zip(images, results, strict=True):
        single_labels, single_probs = seg.predict(image, return_probs=True)
        assert labels.shape == image.shape[:2]
        np.testing.assert_allclose(probs, single_probs, atol=1e-5)
        np.testing.assert_array_equal(labels, single_labels)
    plain = seg.predict_batch(images, batch_size=3)
    for image, labels in zip(images, plain, strict=True):
        np.testing.assert_array_equal(labels, seg.predict(image))


def test_class_count_mismatch_is_a_clear_error(segmenter):
    five = Segmenter.from_forward(lambda x: segmenter.model(x)[:, :5], SYNTHETIC_ROADS, "imagenet")
    with pytest.raises(ValueError, match="8 classes .*synthetic_roads.* do not match"):
        five.predict(scene(1))


def test_bf16_autocast(segmenter):
    labels, probs = segmenter.predict(scene(1), return_probs=True, autocast="bf16")
    assert labels.shape == (H, W) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-2)
    # bfloat16 keeps ~3 significant digits: most pixels keep their class.
    assert (labels == segmenter.predict(scene(1))).mean() > 0.9
    with pytest.raises(ValueError, match="autocast"):
        segmenter.predict(scene(1), autocast="fp8")


def test_pixel_limit_refuses_before_decoding_and_restores_pil(segmenter, tmp_path):
    path = write_png(tmp_path / "big.png", scene(1))
    before = Image.MAX_IMAGE_PIXELS
    # Just over the limit (PIL only warns there) and far over it (PIL raises): the same clear message.
    for limit in (H * W - 1, 100):
        with pytest.raises(DataError, match=f"refusing to decode .*big.png.*{H * W:,} pixels.*--max-pixels"):
            read_image_limited(path, max_pixels=limit)
        assert Image.MAX_IMAGE_PIXELS == before
    np.testing.assert_array_equal(read_image_limited(path, max_pixels=H * W), scene(1))
    small = Segmenter(segmenter.model, segmenter.info, segmenter.normalization, max_pixels=100)
    with pytest.raises(ValueError, match="refusing to decode the 80x64 PIL image"):
        small.predict(Image.open(path))


def test_non_fcnseg_file_gets_the_checkpoint_error(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"a": torch.zeros(1)}, path)
    with pytest.raises(WeightsError, match="not an fcnseg checkpoint"):
        load(path)
    with pytest.raises(WeightsError, match="not an fcnseg checkpoint"):
        cli([path, write_png(tmp_path / "a.png", scene(1)), "--out", tmp_path / "out"])


def test_cli_writes_every_output(checkpoint, segmenter, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    write_png(folder / "b.png", scene(8))
    write_png(folder / "a.png", scene(7, 48, 64))
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    assert cli([checkpoint, folder, "--out", out, "--probs", "--opacity", "0.3"]) == 0
    stderr = capsys.readouterr().err
    assert "[1/2] a.png 64x48" in stderr and "[2/2] b.png 80x64" in stderr  # sorted, .txt not taken
    for stem, (height, width) in (("a", (48, 64)), ("b", (H, W))):
        expected, expected_probs = segmenter.predict(folder / f"{stem}.png", return_probs=True)
        mask = Image.open(out / f"{stem}_mask.png")
        assert mask.mode == "P"
        np.testing.assert_array_equal(np.asarray(mask), expected)
        assert Image.open(out / f"{stem}_overlay.png").size == (width, height)
        assert Image.open(out / f"{stem}_side_by_side.png").size == (3 * width + 2 * 4, height)
        legend = Image.open(out / f"{stem}_legend.png")
        assert legend.size[1] > 10 * len(np.unique(expected))  # one row per class present
        probs = np.load(out / f"{stem}_probs.npy")
        assert probs.shape == (8, height, width) and probs.dtype == np.float16
        np.testing.assert_allclose(probs, expected_probs, atol=1e-3)
    expected_overlay = viz.overlay(scene(8), segmenter.predict(scene(8)), SYNTHETIC_ROADS, 0.3)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "b_overlay.png")), expected_overlay)
    assert not list(out.glob(".*"))  # no temporary files left behind


def test_cli_glob_input_and_no_probs_by_default(checkpoint, tmp_path):
    for name, seed in (("x1.png", 1), ("x2.png", 2), ("y.png", 3)):
        write_png(tmp_path / name, scene(seed))
    out = tmp_path / "out"
    assert cli([checkpoint, str(tmp_path / "x*.png"), "--out", out, "--batch-size", "2"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{stem}_{kind}.png" for stem in ("x1", "x2") for kind in ("mask", "overlay", "side_by_side", "legend"))


def test_cli_unreadable_file_is_named_and_others_still_processed(checkpoint, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    write_png(folder / "good.png", scene(1))
    (folder / "broken.png").write_bytes(np.random.default_rng(0).bytes(500))
    out = tmp_path / "out"
    assert cli([checkpoint, folder, "--out", out]) == 1
    stderr = capsys.readouterr().err
    assert "1 of 2 inputs could not be segmented" in stderr
    assert "broken.png: cannot read image" in stderr
    assert (out / "good_mask.png").is_file() and not (out / "broken_mask.png").exists()


def test_cli_pixel_limit(checkpoint, tmp_path, capsys):
    path = write_png(tmp_path / "huge.png", scene(1))
    assert cli([checkpoint, path, "--out", tmp_path / "out", "--max-pixels", "1000"]) == 1
    assert f"huge.png: refusing to decode {path}: it has 5,120 pixels, more than the limit of 1,000" in (
        capsys.readouterr().err)
    assert not (tmp_path / "out" / "huge_mask.png").exists()


def test_cli_command_line_mistakes_stop_before_writing(checkpoint, tmp_path):
    write_png(tmp_path / "a.png", scene(1))
    (tmp_path / "sub").mkdir()
    write_png(tmp_path / "sub" / "a.jpg", scene(2))
    out = tmp_path / "out"
    with pytest.raises(DataError, match="input not found: .*missing.png"):
        cli([checkpoint, tmp_path / "a.png", tmp_path / "missing.png", "--out", out])
    with pytest.raises(DataError, match="no files match the pattern"):
        cli([checkpoint, str(tmp_path / "*.jpeg"), "--out", out])
    with pytest.raises(DataError, match="would both write a_"):
        cli([checkpoint, tmp_path / "a.png", tmp_path / "sub" / "a.jpg", "--out", out])
    with pytest.raises(ValueError, match="--opacity"):
        cli([checkpoint, tmp_path / "a.png", "--out", out, "--opacity", "2"])
    assert not out.exists()


def test_cli_onnxruntime_backend_uses_load_onnx(checkpoint, segmenter, tmp_path, monkeypatch):
    calls = []

    def load_onnx(path):
        calls.append(path)
        return segmenter.model, SYNTHETIC_ROADS, "imagenet"

    monkeypatch.setitem(sys.modules, "fcnseg.export", types.SimpleNamespace(load_onnx=load_onnx))
    path = write_png(tmp_path / "a.png", scene(1))
    out = tmp_path / "out"
    assert cli([tmp_path / "model.onnx", path, "--out", out, "--backend", "onnxruntime"]) == 0
    assert calls == [str(tmp_path / "model.onnx")]
    np.testing.assert_array_equal(np.asarray(Image.open(out / "a_mask.png")), segmenter.predict(path))
    with pytest.raises(ValueError, match="--bf16 applies to the torch backend"):
        cli([tmp_path / "model.onnx", path, "--out", out, "--backend", "onnxruntime", "--bf16"])


def test_fcnseg_main_runs_predict_and_turns_user_errors_into_exit_code_2(checkpoint, tmp_path, capsys):
    try:
        from fcnseg.cli import build_parser, main

        build_parser()
    except ModuleNotFoundError as error:  # another subcommand's module has not landed yet
        pytest.skip(f"fcnseg.cli cannot build its parser yet: {error}")
    path = write_png(tmp_path / "a.png", scene(1))
    assert main(["predict", str(checkpoint), str(path), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "a_mask.png").is_file()
    assert main(["predict", str(checkpoint), str(tmp_path / "missing.png"), "--out", str(tmp_path / "out")]) == 2
    assert "fcnseg: error: input not found:" in capsys.readouterr().err
