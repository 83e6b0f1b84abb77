"""The Python API (fcnseg.load / Segmenter) and ``fcnseg predict``."""

import argparse

import numpy as np
import pytest
import torch
from PIL import Image

from fcnseg import viz
from fcnseg.api import Segmenter, load
from fcnseg.commands.predict import add_parser
from fcnseg.data.info import SYNTHETIC_ROADS
from fcnseg.data.io import decode_image
from fcnseg.data.synthetic import render_scene
from fcnseg.errors import ConfigError, DataError, LimitError, WeightsError

from .helpers import error_names, refused

H, W = 64, 80


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    return tiny_checkpoint


@pytest.fixture(scope="module")
def segmenter(checkpoint):
    return load(checkpoint, device="cpu")


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
    for source in (path, str(path), path.read_bytes(), Image.fromarray(image), Image.fromarray(rgba, "RGBA"),
                   Image.open(path)):
        np.testing.assert_array_equal(segmenter.predict(source), expected)


def test_wrong_inputs_are_refused_with_what_is_accepted(segmenter):
    with pytest.raises(TypeError) as caught:
        segmenter.predict(42)
    error_names(caught, "int", "path", "bytes", "PIL", "uint8")  # what it got, and each kind it takes
    with pytest.raises(TypeError, match="predict_batch"):
        segmenter.predict([scene(1)])
    with pytest.raises(TypeError, match="list"):
        segmenter.predict_batch(scene(1))
    with pytest.raises(DataError) as caught:
        segmenter.predict(scene(1).astype(np.float32))
    error_names(caught, "float32", "HxWx3 uint8")  # the dtype given, and the array it takes
    with pytest.raises(DataError) as caught:
        segmenter.predict(scene(1)[:, :, 0])
    error_names(caught, f"({H}, {W})", "HxWx3 uint8")  # the shape given
    with pytest.raises(DataError) as caught:
        segmenter.predict("/nonexistent/image.png")
    error_names(caught, "/nonexistent/image.png", "not found")


def test_probabilities_sum_to_one_and_argmax_matches_labels(segmenter):
    image = scene(2)
    probs = segmenter.predict_probs(image)
    assert probs.shape == (8, H, W) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    # The label-only path (which never holds all probabilities at once) agrees.
    np.testing.assert_array_equal(segmenter.predict(image), probs.argmax(0))
    slide_probs = segmenter.predict_probs(image, mode="slide", window=(48, 64), flip=True)
    np.testing.assert_allclose(slide_probs.sum(0), 1.0, atol=1e-5)
    assert np.abs(slide_probs - probs).max() > 1e-3  # the options took effect
    np.testing.assert_array_equal(segmenter.predict(image, mode="slide", window=(48, 64), flip=True),
                                  slide_probs.argmax(0))


def test_default_options_come_from_load_and_calls_override_them(checkpoint, segmenter):
    image = scene(2)
    sliding = load(checkpoint, device="cpu", options=segmenter.options.replace(mode="slide", window=(48, 64)))
    np.testing.assert_array_equal(sliding.predict(image), segmenter.predict(image, mode="slide", window=(48, 64)))
    np.testing.assert_array_equal(sliding.predict(image, mode="whole"), segmenter.predict(image))
    with pytest.raises(ConfigError) as caught:
        segmenter.predict(image, overlap=1.5)
    error_names(caught, "overlap", "1.5")
    # Options as a plain mapping of their fields (it was an AttributeError: 'dict' has no 'replace').
    as_dict = load(checkpoint, device="cpu", options={"mode": "slide", "window": (48, 64)})
    np.testing.assert_array_equal(as_dict.predict(image), sliding.predict(image))
    with pytest.raises(ConfigError) as caught:  # -5 bytes was taken, then every image refused as too large
        load(checkpoint, device="cpu", max_memory=-5)
    error_names(caught, "max_memory", "-5")
    # Found by a hostile review: each was a TypeError or AttributeError from deep inside, or taken (nan).
    assert load(checkpoint, device="cpu", max_memory="4G").max_memory == 4 * 2**30  # as --max-memory takes it
    for arguments, names in (({"max_memory": "lots"}, ["max_memory", "'lots'"]),
                             ({"max_memory": float("nan")}, ["nan"]),
                             ({"max_pixels": 2.5}, ["max_pixels", "2.5"]),
                             ({"options": [("flip", True)]}, ["options", "mapping", "list"])):
        with pytest.raises(ConfigError) as caught:
            load(checkpoint, device="cpu", **arguments)
        error_names(caught, *names)
    assert load(checkpoint, device="cpu", max_pixels=None).predict(image).shape == image.shape[:2]  # no limit
    with pytest.raises(TypeError, match="unknown option.*flp .*did you mean flip"):
        segmenter.predict(image, flp=True)
    with pytest.raises(DataError, match="the image path is empty"):  # was "image . is not a file but a folder"
        segmenter.predict("")


def test_api_calls_with_mismatched_arguments_say_what_to_give(segmenter):
    with pytest.raises(ConfigError) as caught:  # was zip()'s "argument 4 is longer than arguments 1-3"
        segmenter.predict_batch([scene(1)], names=["a", "b"])
    error_names(caught, "1 images", "2 names")
    probs = segmenter.predict_probs(scene(1))
    assert [labels.shape for labels in segmenter.labels_from_probs(probs)] == [probs.shape[1:]]
    np.testing.assert_array_equal(segmenter.labels_from_probs(torch.from_numpy(probs))[0],  # a tensor too
                                  segmenter.labels_from_probs(probs)[0])
    with pytest.raises(ConfigError) as caught:  # 2 channels for an 8-class net: argmax over the wrong scores
        segmenter.labels_from_probs(probs[:2])
    error_names(caught, "C = 8", "(2, 64, 80)")


def test_predict_batch_groups_equal_sizes_and_matches_single_predictions(checkpoint):
    seg = load(checkpoint)
    batch_sizes = []

    def counting_forward(x):
        batch_sizes.append(x.shape[0])
        return seg.model(x)

    counted = Segmenter(None, seg.spec, device="cpu", forward=counting_forward)
    images = [scene(3), scene(4, 48, 64), scene(5), scene(6)]
    results = counted.predict_batch(images, batch_size=2)
    assert sorted(batch_sizes) == [1, 1, 2]  # the three 64x80 images as 2 + 1, the 48x64 one alone
    for image, labels in zip(images, results, strict=True):
        assert labels.shape == image.shape[:2] and labels.dtype == np.uint8
        np.testing.assert_array_equal(labels, seg.predict(image))


def test_predict_batch_decodes_batch_size_images_at_a_time(segmenter, monkeypatch):
    # Every image of the list was decoded before the first forward pass: a list of a thousand photos was in
    # memory at once.
    events = []
    decode = Segmenter._decode

    def counted_decode(self, *args, **kwargs):
        events.append("decode")
        return decode(self, *args, **kwargs)

    monkeypatch.setattr(Segmenter, "_decode", counted_decode)
    images = [scene(seed) for seed in range(5)]
    results = segmenter.predict_batch(images, batch_size=2, on_forward=lambda: events.append("forward"))
    assert events == ["decode", "decode", "forward", "decode", "decode", "forward", "decode", "forward"]
    for image, labels in zip(images, results, strict=True):
        np.testing.assert_array_equal(labels, segmenter.predict(image))


def test_a_net_handed_in_by_the_code_that_trains_it_keeps_its_mode(checkpoint, segmenter):
    # Segmenter(net) switched the caller's net to eval mode for good: its training went on with BatchNorm frozen
    # and dropout off, without a word.
    from fcnseg.checkpoint import model_from_checkpoint

    net, _ = model_from_checkpoint(checkpoint)
    net.train()
    dropouts = [m for m in net.modules() if isinstance(m, torch.nn.Dropout2d | torch.nn.Dropout)]
    assert len(dropouts) == 2  # the net of fc6 and fc7: in training mode each pass would drop other scores
    dropouts[0].eval()  # a submodule the caller keeps in eval mode stays there
    wrapped = Segmenter(net, net.spec, device="cpu")
    for _ in range(2):
        np.testing.assert_array_equal(wrapped.predict_probs(scene(1)), segmenter.predict_probs(scene(1)))
    assert [m.training for m in net.modules()] == [m is not dropouts[0] for m in net.modules()]


def test_class_count_mismatch_is_a_clear_error(segmenter):
    five = Segmenter(None, segmenter.spec, device="cpu", forward=lambda x: segmenter.model(x)[:, :5])
    with pytest.raises(WeightsError) as caught:
        five.predict(scene(1))
    error_names(caught, "5", "8 classes", "synthetic_roads")  # the scores' classes, and the metadata's


def test_bf16_autocast(segmenter):
    probs = segmenter.predict_probs(scene(1), bf16=True)
    assert probs.shape == (8, H, W) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-2)
    # bfloat16 keeps ~3 significant digits: most pixels keep their class, not all probabilities.
    assert (segmenter.predict(scene(1), bf16=True) == segmenter.predict(scene(1))).mean() > 0.9
    assert np.abs(probs - segmenter.predict_probs(scene(1))).max() > 1e-4
    onnx_like = Segmenter(None, segmenter.spec, device="cpu", forward=segmenter.model)
    with pytest.raises(ConfigError, match="bf16"):
        onnx_like.predict(scene(1), bf16=True)


def test_bf16_on_a_cpu_without_native_bf16_says_so_once(tiny_checkpoint, monkeypatch, caplog):
    import fcnseg.runtime as runtime
    from fcnseg.api import load

    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert not runtime.native_bf16("cpu")
    caplog.set_level("INFO", logger="fcnseg.api")
    segmenter = load(tiny_checkpoint, device="cpu")
    segmenter.predict(scene(1), bf16=True)
    segmenter.predict(scene(1), bf16=True)
    notes = [r.getMessage() for r in caplog.records if r.name == "fcnseg.api"]
    assert len(notes) == 1 and "bf16" in notes[0]  # one note, about bf16
    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    assert runtime.native_bf16("cpu")
    load(tiny_checkpoint, device="cpu").predict(scene(1), bf16=True)
    assert len([r for r in caplog.records if r.name == "fcnseg.api"]) == 1


def test_checkpoints_run_channels_last_with_the_same_labels(tiny_checkpoint):
    from fcnseg.api import load

    segmenter = load(tiny_checkpoint, device="cpu")
    assert segmenter.channels_last
    assert segmenter.model.score_fr.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(1, 3, 37, 45)
    with torch.no_grad():
        fast = segmenter.scores(x)
        plain = segmenter.model.to(memory_format=torch.contiguous_format)(x)
    torch.testing.assert_close(fast, plain, rtol=0, atol=1e-4 * float(plain.abs().max()))


def test_pixel_limit_refuses_before_decoding_and_restores_pil(segmenter, tmp_path):
    path = write_png(tmp_path / "big.png", scene(1))
    before = Image.MAX_IMAGE_PIXELS
    # Just over the limit (PIL only warns there) and far over it (PIL raises): the same clear message.
    for limit in (H * W - 1, 100):
        # The file (or bytes), its pixel count, the limit, and the option that raises it.
        with pytest.raises(LimitError) as caught:
            decode_image(path, max_pixels=limit)
        error_names(caught, path, f"{H * W:,}", f"{limit:,}", "--max-pixels")
        with pytest.raises(LimitError) as caught:
            decode_image(path.read_bytes(), max_pixels=limit)
        error_names(caught, "bytes", f"{H * W:,}", f"{limit:,}", "--max-pixels")
        assert Image.MAX_IMAGE_PIXELS == before
    np.testing.assert_array_equal(decode_image(path, max_pixels=H * W), scene(1))
    small = Segmenter(segmenter.model, segmenter.spec, device="cpu", max_pixels=100)
    with pytest.raises(LimitError) as caught:
        small.predict(Image.open(path))
    error_names(caught, "PIL", f"{W}x{H}", f"{H * W:,}", "100")


def test_a_bomb_header_that_does_not_open_twice_is_refused_by_the_limit(tmp_path):
    """A 30-byte WebP header claiming 8000x6000 and no data: PIL's bomb error came first, then reading the header
    again for the message failed (OSError: could not create decoder object): a 500 in serve, a traceback in predict."""
    size = (8000 - 1).to_bytes(3, "little") + (6000 - 1).to_bytes(3, "little")
    chunk = b"WEBP" + b"VP8X" + (10).to_bytes(4, "little") + bytes(4) + size
    webp = b"RIFF" + len(chunk).to_bytes(4, "little") + chunk
    (tmp_path / "bomb.webp").write_bytes(webp)
    for source in (webp, tmp_path / "bomb.webp"):
        with pytest.raises(LimitError) as caught:
            decode_image(source, max_pixels=16_000_000)
        error_names(caught, "more pixels than that by its header", "16,000,000", "--max-pixels")


def test_non_fcnseg_file_gets_the_checkpoint_error(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"a": torch.zeros(1)}, path)
    with pytest.raises(WeightsError) as caught:
        load(path)
    error_names(caught, path, "fcnseg checkpoint")
    with pytest.raises(WeightsError) as caught:
        cli([path, write_png(tmp_path / "a.png", scene(1)), "--out", tmp_path / "out"])
    error_names(caught, path, "fcnseg checkpoint")


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
        expected_probs = segmenter.predict_probs(folder / f"{stem}.png")
        expected = segmenter.predict(folder / f"{stem}.png")
        mask = Image.open(out / f"{stem}_mask.png")
        assert mask.mode == "P"
        np.testing.assert_array_equal(np.asarray(mask), expected)
        assert Image.open(out / f"{stem}_overlay.png").size == (width, height)
        side_by_side = np.asarray(Image.open(out / f"{stem}_side_by_side.png").convert("RGB"))
        image = np.asarray(Image.open(folder / f"{stem}.png").convert("RGB"))
        np.testing.assert_array_equal(side_by_side, viz.prediction_picture(image, expected, SYNTHETIC_ROADS, 0.3))
        legend = Image.open(out / f"{stem}_legend.png")
        assert legend.size[1] > 10 * len(np.unique(expected))  # one row per class present
        probs = np.load(out / f"{stem}_probs.npy")
        assert probs.shape == (8, height, width) and probs.dtype == np.float16
        np.testing.assert_allclose(probs, expected_probs, atol=1e-3)
    expected_overlay = viz.overlay(scene(8), segmenter.predict(scene(8)), SYNTHETIC_ROADS, 0.3)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "b_overlay.png")), expected_overlay)
    assert not list(out.glob(".*.tmp"))  # no temporary files left behind


def test_cli_glob_input_and_no_probs_by_default(checkpoint, tmp_path):
    for name, seed in (("x1.png", 1), ("x2.png", 2), ("y.png", 3)):
        write_png(tmp_path / name, scene(seed))
    out = tmp_path / "out"
    assert cli([checkpoint, str(tmp_path / "x*.png"), "--out", out, "--batch-size", "2"]) == 0
    assert sorted(p.name for p in out.iterdir() if p.name not in (".fcnseg-outputs.json", ".fcnseg.lock")) == sorted(
        f"{stem}_{kind}.png" for stem in ("x1", "x2") for kind in ("mask", "overlay", "side_by_side", "legend"))


def test_cli_unreadable_file_is_named_and_others_still_processed(checkpoint, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    write_png(folder / "good.png", scene(1))
    (folder / "broken.png").write_bytes(np.random.default_rng(0).bytes(500))
    out = tmp_path / "out"
    assert cli([checkpoint, folder, "--out", out]) == 1
    stderr = capsys.readouterr().err  # the failed file named in one line (with why), the good one written
    failed = [line for line in stderr.splitlines() if line.strip().startswith(f"{folder / 'broken.png'}: ")]
    assert len(failed) == 1 and "image" in failed[0] and "Traceback" not in stderr, stderr
    assert "1 of 2" in stderr
    assert (out / "good_mask.png").is_file() and not (out / "broken_mask.png").exists()


def test_cli_pixel_limit(checkpoint, tmp_path, capsys):
    path = write_png(tmp_path / "huge.png", scene(1))
    assert cli([checkpoint, path, "--out", tmp_path / "out", "--max-pixels", "1000"]) == 1
    stderr = capsys.readouterr().err  # one line for the image: its pixel count and the limit
    failed = [line for line in stderr.splitlines() if line.strip().startswith(f"{path}: ")]
    assert len(failed) == 1 and "5,120" in failed[0] and "1,000" in failed[0], stderr
    assert not (tmp_path / "out" / "huge_mask.png").exists()


def test_cli_command_line_mistakes_stop_before_writing(checkpoint, tmp_path):
    write_png(tmp_path / "a.png", scene(1))
    (tmp_path / "sub").mkdir()
    write_png(tmp_path / "sub" / "a.jpg", scene(2))
    out = tmp_path / "out"
    with pytest.raises(DataError) as caught:
        cli([checkpoint, tmp_path / "a.png", tmp_path / "missing.png", "--out", out])
    error_names(caught, tmp_path / "missing.png", "not found")
    with pytest.raises(DataError) as caught:
        cli([checkpoint, str(tmp_path / "*.jpeg"), "--out", out])
    error_names(caught, tmp_path / "*.jpeg")
    with pytest.raises(DataError) as caught:  # two inputs, one stem: both named, and the clashing output
        cli([checkpoint, tmp_path / "a.png", tmp_path / "sub" / "a.jpg", "--out", out])
    error_names(caught, tmp_path / "a.png", tmp_path / "sub" / "a.jpg", "a_", "separate --out folders")
    write_png(tmp_path / "b.png", scene(3))
    write_png(tmp_path / "sub" / "b.jpg", scene(4))
    with pytest.raises(DataError) as caught:  # every clash in one refusal (it named the first, one run at a time)
        cli([checkpoint, tmp_path / "a.png", tmp_path / "b.png", tmp_path / "sub", "--out", out])
    error_names(caught, "a_*.png", "b_*.png", tmp_path / "sub" / "b.jpg")
    with pytest.raises(ConfigError) as caught:
        cli([checkpoint, tmp_path / "a.png", "--out", out, "--overlap", "2"])
    error_names(caught, "overlap", "[0, 1)")  # the option, and the values it takes
    with pytest.raises(SystemExit):  # argparse: "--opacity: expected a number from 0 to 1"
        cli([checkpoint, tmp_path / "a.png", "--out", out, "--opacity", "2"])
    assert not out.exists()


@pytest.mark.parametrize("fmt, suffix", [("onnx", "onnx"), ("torchscript", "pt")])
def test_cli_reads_exports_by_their_content(checkpoint, segmenter, tmp_path, fmt, suffix):
    pytest.importorskip("onnxruntime")
    from fcnseg.cli import main

    exported = tmp_path / f"model.{suffix}"
    assert main(["export", str(checkpoint), "--format", fmt, "--out", str(exported), "--quiet"]) == 0
    path = write_png(tmp_path / "a.png", scene(1))
    out = tmp_path / "out"
    assert cli([exported, path, "--out", out, "--threads", "1"]) == 0
    agreement = (np.asarray(Image.open(out / "a_mask.png")) == segmenter.predict(path)).mean()
    assert agreement > 0.999  # the export matches PyTorch to 1e-4: only near-ties could differ
    loaded = load(exported, device="cpu")
    assert loaded.info == SYNTHETIC_ROADS and loaded.config == segmenter.config and loaded.model is None
    with pytest.raises(ConfigError, match="bf16"):
        cli([exported, path, "--out", out, "--bf16"])
    wrong = "torch" if fmt == "onnx" else "onnxruntime"
    with pytest.raises(ConfigError) as caught:
        cli([exported, path, "--out", out, "--backend", wrong])
    error_names(caught, wrong, "--backend")  # the backend asked for, and the option to leave out


def test_fcnseg_main_runs_predict_and_turns_user_errors_into_exit_code_2(checkpoint, tmp_path, capsys):
    from fcnseg.cli import main

    path = write_png(tmp_path / "a.png", scene(1))
    assert main(["predict", str(checkpoint), str(path), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "a_mask.png").is_file()
    refused(capsys, ["predict", checkpoint, tmp_path / "missing.png", "--out", tmp_path / "out"],
            tmp_path / "missing.png", "not found")


def test_a_folder_s_subfolders_of_images_are_named_not_skipped_silently(tmp_path, caplog):
    """predict reads a folder's own images only; images one level down were passed over without a word."""
    from fcnseg.commands.predict import expand_inputs

    top, nested = tmp_path / "drive", tmp_path / "drive" / "day2"
    nested.mkdir(parents=True)
    write_png(top / "a.png", scene(0))
    write_png(nested / "b.png", scene(1))
    (top / "empty").mkdir()  # a subfolder without images is not worth a word
    with caplog.at_level("WARNING", logger="fcnseg.commands.predict"):
        assert expand_inputs([str(top)]) == [top / "a.png"]
    assert [record.getMessage() for record in caplog.records] == [
        f"folder {top}: its subfolders are not searched ({nested} holds images): name them, or give a pattern "
        f"such as '{top / '*' / '*.png'}'"]
    caplog.clear()
    with caplog.at_level("WARNING", logger="fcnseg.commands.predict"):  # named as well: nothing left out
        assert expand_inputs([str(top), str(nested)]) == [top / "a.png", nested / "b.png"]
    assert not caplog.records
    (top / "a.png").unlink()
    with pytest.raises(DataError) as caught:  # nothing at the top: the refusal says where the images are
        expand_inputs([str(top)])
    error_names(caught, f"folder {top} holds no images", str(nested), "*.png")
    assert expand_inputs([str(top / "*" / "*.png")]) == [nested / "b.png"]
    # "**" is every depth, as in a shell with globstar (it matched one level only, dropping the others silently)
    write_png(top / "a.png", scene(0))
    (nested / "deeper").mkdir()
    write_png(nested / "deeper" / "c.png", scene(2))
    assert expand_inputs([str(top / "**" / "*.png")]) == [top / "a.png", nested / "b.png", nested / "deeper" / "c.png"]


def test_predict_into_the_folder_of_its_images_can_be_run_again(checkpoint, tmp_path, caplog):
    """With --out the images' folder, the rerun took its own masks for images and refused to write over "its own
    input": a stopped run there could never finish. A folder of its outputs one level down is not worth a warning."""
    folder = tmp_path / "same"
    folder.mkdir()
    for seed in (0, 1):
        write_png(folder / f"im{seed}.png", scene(seed))
    assert cli([checkpoint, folder, "--out", folder, "--threads", "1"]) == 0
    shown = lambda: {path.name: path.read_bytes() for path in folder.iterdir() if not path.name.startswith(".")}  # noqa: E731
    before = shown()
    (folder / "im1_mask.png").unlink()  # as if stopped before the second image's mask
    assert cli([checkpoint, folder, "--out", folder, "--threads", "1"]) == 0
    assert shown() == before
    assert cli([checkpoint, tmp_path / "same" / "*.png", "--out", folder, "--threads", "1"]) == 0  # a pattern too
    caplog.clear()
    assert cli([checkpoint, folder, "--out", folder / "preds", "--threads", "1"]) == 0
    assert cli([checkpoint, folder, "--out", folder / "preds", "--threads", "1"]) == 0
    assert "not searched" not in caplog.text  # preds/ holds fcnseg's outputs, not images to segment


@pytest.mark.parametrize("damage", ["record", "journal"])
def test_a_damaged_record_is_no_record_not_a_traceback(checkpoint, tmp_path, damage):
    """{"files": {"a_mask.png": "x"}} in the record (AttributeError) or a journal line naming 5 (TypeError) crashed
    every later run into the folder, --overwrite included."""
    image = write_png(tmp_path / "a.png", scene(0))
    out = tmp_path / "out"
    assert cli([checkpoint, image, "--out", out, "--threads", "1"]) == 0
    if damage == "record":
        (out / ".fcnseg-outputs.json").write_text('{"files": {"a_mask.png": "x"}}')
        with pytest.raises(ConfigError, match="not written by an earlier fcnseg predict"):  # no record: not its own
            cli([checkpoint, image, "--out", out, "--threads", "1"])
    else:
        (out / ".fcnseg-outputs.pending").write_text('{"name": 5, "command": "predict", "size": 1, "sha256": "x"}\n')
        assert cli([checkpoint, image, "--out", out, "--threads", "1"]) == 0
    assert cli([checkpoint, image, "--out", out, "--threads", "1", "--overwrite"]) == 0


def test_a_rerun_without_probs_removes_the_earlier_runs_probabilities(checkpoint, tmp_path, caplog):
    """An earlier run's _probs.npy stayed beside the masks of a rerun with another net or options, without --probs:
    an output that belongs to another run. A user's file of that name is not fcnseg's and stays."""
    image = write_png(tmp_path / "a.png", scene(0))
    other = write_png(tmp_path / "b.png", scene(1))
    out = tmp_path / "out"
    assert cli([checkpoint, image, other, "--out", out, "--threads", "1", "--probs"]) == 0
    (out / "b_probs.npy").write_bytes(b"the user's own")  # no longer fcnseg's
    assert cli([checkpoint, image, other, "--out", out, "--threads", "1", "--flip"]) == 0
    assert not (out / "a_probs.npy").exists() and (out / "a_mask.png").is_file()
    # said as a warning, which --quiet keeps (it was removed without a word)
    assert [r.getMessage()[:23] for r in caplog.records if r.levelname == "WARNING"] == ["removed a_probs.npy, wr"]
    assert (out / "b_probs.npy").read_bytes() == b"the user's own"


def test_inputs_that_are_only_earlier_outputs_or_not_files_are_said_to_be_so(checkpoint, tmp_path):
    # "no files match the pattern" when six did (all earlier outputs, left out), "folder holds no images" when it
    # held 30 PNGs of them, and "input not found" for /dev/zero or a FIFO, which exist.
    import os

    out = tmp_path / "out"
    assert cli([checkpoint, write_png(tmp_path / "a.png", scene(0)), "--out", out, "--threads", "1"]) == 0
    for given, names in ((str(out / "*_overlay.png"), ("*_overlay.png", "a_overlay.png", "earlier fcnseg predict")),
                         (out, (str(out), "a_mask.png", "copy them"))):
        with pytest.raises(DataError) as caught:
            cli([checkpoint, given, "--out", tmp_path / "again", "--threads", "1"])
        error_names(caught, *names)
    os.mkfifo(tmp_path / "fifo.png")
    for special in (tmp_path / "fifo.png", "/dev/zero"):
        with pytest.raises(DataError) as caught:
            cli([checkpoint, special, "--out", tmp_path / "again", "--threads", "1"])
        error_names(caught, special, "not a regular file")
