"""Nets that read depth (the NYUDv2 HHA and colour-HHA nets): the late-fusion net, the NYUDv2 reader, and
depth through the API, ``fcnseg predict --depth``, eval, training and exports."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fcnseg.api import load
from fcnseg.checkpoint import checkpoint_spec, read_checkpoint, save_model
from fcnseg.cli import main
from fcnseg.data.hha import hha_from_depth
from fcnseg.data.info import NYUD
from fcnseg.data.nyud import NYUDv2
from fcnseg.errors import ConfigError, DataError
from fcnseg.models import build_model
from fcnseg.normalization import normalize
from fcnseg.train import TrainConfig, train

from .helpers import error_names, nyud_folder, refused

COLOR_HHA = "caffe:116.19,97.203,92.318+hha:132.431,94.076,118.477"
CAMERA = (30.0, 30.0, 16.5, 12.5)  # a small camera for the 32 x 24 test frames


def random_net(inputs=("rgb", "hha"), name="fcn32s", seed=0):
    torch.manual_seed(seed)
    model = build_model(name, num_classes=40, width=1 / 16, geometry="fast", inputs=inputs)
    with torch.no_grad():
        for weight in model.parameters():
            if weight.dim() == 4 and weight.requires_grad:
                torch.nn.init.kaiming_normal_(weight)
    return model.eval()


@pytest.mark.parametrize("name", ["fcn32s", "fcn8s"])
def test_late_fusion_sums_one_score_layer_per_trunk(name, one_thread):
    """Stacked trunks and one score layer over them = each trunk scored on its own, the scores summed."""
    net = random_net(name=name)
    assert net.config["inputs"] == ("rgb", "hha")
    x = torch.randn(1, 6, 45, 61)
    with torch.no_grad():
        fused = net(x)
        streams = []
        for index, trunk in enumerate(net.backbone.trunks.values()):
            single = build_model(name, num_classes=40, width=1 / 16, geometry="fast").eval()
            single.backbone.load_state_dict(trunk.state_dict())
            for layer in ("score_fr", "score_pool4", "score_pool3"):
                if hasattr(net, layer):
                    weight = getattr(net, layer).weight
                    half = weight.shape[1] // 2
                    getattr(single, layer).weight.copy_(weight[:, index * half:(index + 1) * half])
                    getattr(single, layer).bias.copy_(getattr(net, layer).bias * (index == 0))
            streams.append(single(x[:, 3 * index:3 * index + 3]))
    torch.testing.assert_close(fused, streams[0] + streams[1], rtol=0, atol=1e-4)
    with pytest.raises(ValueError) as caught:
        net(torch.randn(1, 3, 32, 32))
    error_names(caught, "6", "rgb, hha", "3")  # the channels it reads, for which inputs, and those it got
    with pytest.raises(ConfigError) as caught:
        build_model("fcn32s", inputs=("rgb", "depth"))
    error_names(caught, "depth", "hha")  # the unknown input, and the known ones


@pytest.mark.parametrize("inputs", ["rgb", "hha", "rgb+hha"])
def test_nyud_reader_gives_the_inputs_asked_for(tmp_path, inputs):
    root = nyud_folder(tmp_path / "nyud")
    data = NYUDv2(root, split_file=root / "ids.txt", inputs=inputs)
    image, label = data.load(0)
    rgb = np.asarray(Image.open(root / "data" / "images" / "img_5001.png"))
    hha = np.asarray(Image.open(root / "data" / "hha" / "img_5001.png"))
    expected = {"rgb": rgb, "hha": hha, "rgb+hha": np.concatenate([rgb, hha], 2)}[inputs]
    np.testing.assert_array_equal(image, expected)
    raw = __import__("scipy.io").io.loadmat(root / "segmentation" / "img_5001.mat")["segmentation"]
    np.testing.assert_array_equal(label, np.where(raw == 0, 255, raw.astype(np.int64) - 1))
    assert data.inputs == tuple(inputs.split("+"))
    tensor, _ = data[0]
    assert tensor.shape == (3 * len(data.inputs), 24, 32)


def test_nyud_without_hha_images_encodes_the_depth(tmp_path):
    root = nyud_folder(tmp_path / "nyud", ids=("5001",), hha=False)
    data = NYUDv2(root, split_file=root / "ids.txt", inputs="hha", intrinsics=CAMERA)
    image, _ = data.load(0)
    depth = np.asarray(Image.open(root / "data" / "depth" / "img_5001.png"), dtype=np.float32) / 1000
    np.testing.assert_array_equal(image, hha_from_depth(depth, CAMERA))
    with pytest.raises(DataError) as caught:
        NYUDv2(root, split_file=root / "ids.txt", inputs="hha").load(0)
    error_names(caught, "32x24", "intrinsics")  # the frame size that is not NYUDv2's, and what to give
    (root / "data" / "depth" / "img_5001.png").unlink()
    with pytest.raises(DataError) as caught:
        NYUDv2(root, split_file=root / "ids.txt", inputs="hha")
    error_names(caught, "1 depth map", "data/hha", "ids.txt")  # what is missing, and the list that names it
    with pytest.raises(DataError) as caught:
        NYUDv2(root, inputs="depth")
    error_names(caught, "'depth'", "rgb+hha")  # the input asked for, and the ones there are


def test_the_shipped_split_lists_are_the_papers():
    from fcnseg.data.base import split_ids

    train, val, test = (split_ids("nyud", s) for s in ("train", "val", "test"))
    assert (len(train) + len(val), len(test)) == (795, 654)
    assert not (set(train) | set(val)) & set(test)


def test_predict_with_a_depth_map(tmp_path, one_thread):
    root = nyud_folder(tmp_path / "nyud", ids=("5001",))
    checkpoint = save_model(random_net(), NYUD, tmp_path / "rgbd.pth")
    data = read_checkpoint(checkpoint)
    data["spec"]["normalization"] = COLOR_HHA.split("+")
    torch.save(data, checkpoint)
    segmenter = load(checkpoint, device="cpu")
    segmenter.intrinsics = CAMERA
    assert segmenter.inputs == ("rgb", "hha")
    color, depth_file = root / "data" / "images" / "img_5001.png", root / "data" / "depth" / "img_5001.png"
    labels = segmenter.predict(color, depth=depth_file)
    # Oracle: the net on the colour image and the HHA of the depth, stacked, each normalised by its own rule.
    rgb = np.asarray(Image.open(color))
    hha = hha_from_depth(np.asarray(Image.open(depth_file), dtype=np.float32) / 1000, CAMERA)
    x = normalize(np.concatenate([rgb, hha], 2), COLOR_HHA)[None]
    with torch.no_grad():
        expected = segmenter.model(x).argmax(1)[0].numpy()
    np.testing.assert_array_equal(labels, expected)
    # The HHA image itself serves as well, and a metres array as the depth.
    np.testing.assert_array_equal(segmenter.predict(rgb, hha=hha), expected)
    Image.fromarray(hha).save(tmp_path / "hha.png")
    np.testing.assert_array_equal(segmenter.predict(rgb, hha=tmp_path / "hha.png"), expected)
    # A depth map given as the HHA image (--hha DEPTHS) was read as one, grey, without a word.
    for given in (depth_file, Image.open(depth_file)):  # a file, or a PIL image of it
        with pytest.raises(DataError) as caught:
            segmenter.predict(rgb, hha=given)
        error_names(caught, "three 8-bit channels", "depth")
    metres = np.asarray(Image.open(depth_file), dtype=np.float32) / 1000
    np.testing.assert_array_equal(segmenter.predict(rgb, depth=metres), expected)
    with pytest.raises(ConfigError) as caught:
        segmenter.predict(rgb)
    error_names(caught, "depth", "HHA")  # what the net reads and is missing
    with pytest.raises(DataError) as caught:
        segmenter.predict(rgb, depth=metres[:, :16])
    error_names(caught, "32x24", "16x24")  # both sizes
    colour_only = load(save_model(random_net(inputs=("rgb",)), NYUD, tmp_path / "rgb.pth"), device="cpu")
    with pytest.raises(ConfigError) as caught:
        colour_only.predict(rgb, depth=metres)
    error_names(caught, "colour", "depth")  # what the net reads, and what it was given in vain


def test_fcnseg_predict_depth_and_refusals(tmp_path, capsys, one_thread):
    root = nyud_folder(tmp_path / "nyud", ids=("5001", "5002"))
    checkpoint = save_model(random_net(), NYUD, tmp_path / "rgbd.pth")
    images, depths = root / "data" / "images", root / "data" / "depth"
    base = ["predict", str(checkpoint), str(images), "--out", str(tmp_path / "out"), "--threads", "1"]
    camera = ["--intrinsics", *map(str, CAMERA)]
    refused(capsys, base + camera, "rgb+hha", "--depth", "--hha")  # what the net reads, the options to give it
    (depths / "img_5002.png").rename(tmp_path / "elsewhere.png")
    refused(capsys, base + camera + ["--depth", depths], depths, "img_5002")  # the folder, the input it lacks
    # Another file sharing the start of the name is not its depth map: "img_5002.*" took img_5002.backup.png.
    (depths / "img_5002.backup.png").write_bytes((depths / "img_5001.png").read_bytes())
    refused(capsys, base + camera + ["--depth", depths], depths, "img_5002")
    (tmp_path / "elsewhere.png").rename(depths / "img_5002.png")
    (depths / "img_5002.jpg").write_bytes(b"a second depth map of that name")  # two: which one is meant?
    refused(capsys, base + camera + ["--depth", depths], "2 depth images named img_5002.*", "keep one")
    (depths / "img_5002.jpg").unlink()
    assert not (tmp_path / "out").exists()  # refused before anything was written
    assert main(base + camera + ["--depth", str(depths)]) == 0
    assert sorted(p.name for p in (tmp_path / "out").glob("*_mask.png")) == ["img_5001_mask.png", "img_5002_mask.png"]
    segmenter = load(checkpoint, device="cpu")
    segmenter.intrinsics = CAMERA
    expected = segmenter.predict(images / "img_5002.png", depth=depths / "img_5002.png")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "img_5002_mask.png")), expected)
    # Without the camera of a non-NYUDv2 frame size the failure names the fix, per image (exit 1).
    assert main(base + ["--depth", str(depths), "--overwrite"]) == 1
    assert "intrinsics" in capsys.readouterr().err
    colour_only = save_model(random_net(inputs=("rgb",)), NYUD, tmp_path / "rgb.pth")
    refused(capsys, ["predict", colour_only, images, "--out", tmp_path / "o2", "--depth", depths], "--depth")
    refused(capsys, ["serve", checkpoint, "--port", "0"], "depth", "fcnseg predict")  # where depth can be given


def test_train_and_eval_on_rgbd(tmp_path, capsys):
    root = nyud_folder(tmp_path / "nyud", ids=("5001", "5002", "5003", "5004"))
    config = {"model": "fcn16s", "width": 1 / 16, "geometry": "fast", "dataset": "nyud", "root": str(root),
              "dataset_options": {"split_file": str(root / "ids.txt"), "inputs": "rgb+hha"}, "batch_size": 2,
              "workers": 0, "lr": 0.01, "iterations": 2, "val_interval": 2, "checkpoint_interval": 2,
              "log_interval": 1, "crop_size": [24, 24], "threads": 1, "out": str(tmp_path / "run")}
    train(TrainConfig.from_dict(config))
    checkpoint = read_checkpoint(tmp_path / "run" / "best.pth")
    assert checkpoint_spec(checkpoint).inputs == ("rgb", "hha")
    assert {k.split(".")[2] for k in checkpoint["model_state_dict"] if k.startswith("backbone.")} == {"rgb", "hha"}
    with pytest.raises(ConfigError, match="color_jitter.*hha"):  # the option, and the images it cannot change
        train(TrainConfig.from_dict({**config, "dataset_options": {**config["dataset_options"], "inputs": "hha"},
                                     "color_jitter": 0.2, "out": str(tmp_path / "run2")}))


def test_an_onnx_export_of_a_colour_hha_net(tmp_path, one_thread):
    pytest.importorskip("onnxruntime")
    checkpoint = save_model(random_net(), NYUD, tmp_path / "rgbd.pth")
    assert main(["export", str(checkpoint), "--format", "onnx", "--out", str(tmp_path / "rgbd.onnx")]) == 0
    exported, original = load(tmp_path / "rgbd.onnx", device="cpu"), load(checkpoint, device="cpu")
    assert exported.inputs == ("rgb", "hha")
    rng = np.random.default_rng(0)
    rgb, hha = (rng.integers(0, 256, (30, 40, 3), dtype=np.uint8) for _ in range(2))
    assert (exported.predict(rgb, hha=hha) == original.predict(rgb, hha=hha)).mean() > 0.99


def test_fcnseg_eval_reads_the_inputs_the_net_needs(tmp_path, capsys, one_thread):
    from fcnseg.data.base import split_ids

    root = nyud_folder(tmp_path / "nyud", ids=split_ids("nyud", "train"), size=(6, 8))
    checkpoint = save_model(random_net(), NYUD, tmp_path / "rgbd.pth")
    assert main(["eval", str(checkpoint), "--dataset", "nyud", "--root", str(root), "--split", "train",
                 "--workers", "0", "--threads", "1", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("nyud train: 381 images") and "| otherprop |" in out
    # The same scores by hand: the net on colour + HHA images, each normalised as the checkpoint says.
    data = NYUDv2(root, split="train", inputs="rgb+hha")
    segmenter = load(checkpoint, device="cpu")
    from fcnseg.evaluate import evaluate

    scores = evaluate(segmenter.scores, data, 40, 255, progress=False)
    assert f"| {scores['mean_iu'] * 100:.1f} |" in out.splitlines()[3]


def test_a_starting_net_and_the_data_must_read_the_same_inputs(tmp_path):
    root = nyud_folder(tmp_path / "nyud", ids=("5001", "5002"))
    start = save_model(random_net(), NYUD, tmp_path / "rgbd.pth")
    config = {"model": "fcn32s", "width": 1 / 16, "geometry": "fast", "dataset": "nyud", "root": str(root),
              "dataset_options": {"split_file": str(root / "ids.txt")}, "iterations": 1, "workers": 0,
              "threads": 1, "init_from": str(start), "out": str(tmp_path / "run")}
    with pytest.raises(ConfigError) as caught:
        train(TrainConfig.from_dict(config))
    error_names(caught, "rgb+hha", "rgb", "{inputs: rgb+hha}")  # the net's inputs, the data's, and the fix
    config["dataset_options"]["inputs"] = "rgb+hha"
    assert train(TrainConfig.from_dict(config))["iterations"] == 1


def test_a_depth_only_net_draws_on_a_colour_image_of_the_same_frame(tmp_path, capsys, one_thread):
    root = nyud_folder(tmp_path / "nyud", ids=("5001",))
    checkpoint = save_model(random_net(inputs=("hha",)), NYUD, tmp_path / "hha.pth")
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(small)
    hha = root / "data" / "hha" / "img_5001.png"
    assert main(["predict", str(checkpoint), str(small), "--hha", str(hha), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err  # the image, both sizes
    assert all(name in err for name in ("small.png", "16x12", "32x24")) and "Traceback" not in err, err
    colour = root / "data" / "images" / "img_5001.png"
    assert main(["predict", str(checkpoint), str(colour), "--hha", str(hha), "--out", str(tmp_path / "o")]) == 0
    expected = load(checkpoint, device="cpu").predict(None, hha=hha)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "o" / "img_5001_mask.png")), expected)
