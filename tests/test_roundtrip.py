"""The invariant of issue 18, for every way of making a net: ``fcnseg.load(saved).predict_probs`` equals the
in-memory net's softmax before saving, through a checkpoint, an ONNX export and a TorchScript export; and a
training run's last validation is what ``fcnseg eval last.pth`` scores (fresh and fine-tuned here; started
from ImageNet weights in tests/test_spec.py).

The oracle is written here, apart from fcnseg's inference: normalise each input by the spec's rule, run the
net, softmax each head's channels. (The authors' .caffemodel nets: tests/models/test_caffe.py; the
GoogLeNet ImageNet run: tests/test_spec.py.)
"""

import csv
import json

import numpy as np
import pytest
import torch

import fcnseg
from fcnseg.checkpoint import save_model
from fcnseg.cli import main
from fcnseg.data.info import NYUD, SIFTFLOW, SYNTHETIC_ROADS, VOC
from fcnseg.models import ModelSpec, build_model
from fcnseg.models.weights import fcn_from_imagenet, fcn_from_pytorch_fcn, init_from_coarser
from fcnseg.normalization import normalize

from .helpers import nyud_folder, randomize_scores, siftflow_folder, torchvision_file
from .models.torchfcn_oracle import TorchFCN

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = {"width": 1 / 16, "geometry": "fast"}


def imagenet(backbone):
    def make(tmp_path):
        spec = ModelSpec("fcn16s", backbone, SYNTHETIC_ROADS.num_classes, classes=SYNTHETIC_ROADS, **SMALL)
        return fcn_from_imagenet(spec, torchvision_file(tmp_path / f"{backbone}.pth", backbone))
    return make


def pytorch_fcn(tmp_path):
    torch.manual_seed(0)
    state = TorchFCN("fcn8s", n_class=21, width=1 / 16).state_dict()
    for name in ("upscore2.weight", "upscore8.weight", "upscore_pool4.weight"):  # per-class kernels, as trained
        state[name] = state[name] * torch.eye(21)[:, :, None, None]
    return fcn_from_pytorch_fcn(state, name="fcn8s")


def surgery(tmp_path):  # fine-tuning to another class set: the shared classes' score rows carry over
    start = randomize_scores(build_model("fcn32s", num_classes=VOC.num_classes, classes=VOC, **SMALL))
    net = build_model("fcn32s", num_classes=SYNTHETIC_ROADS.num_classes, classes=SYNTHETIC_ROADS, **SMALL)
    init_from_coarser(net, start, classes=(VOC.class_names, SYNTHETIC_ROADS.class_names))
    return net


WAYS = {
    "fresh": lambda tmp_path: build_model("fcn8s", num_classes=8, classes=SYNTHETIC_ROADS, **SMALL),
    **{f"imagenet-{b}": imagenet(b) for b in ("vgg16", "vgg16_bn", "alexnet", "googlenet", "resnet50", "resnet101")},
    "pytorch-fcn": pytorch_fcn,
    "surgery": surgery,
    "colour-hha": lambda tmp_path: build_model("fcn32s", num_classes=NYUD.num_classes, inputs=("rgb", "hha"),
                                               normalization="caffe:116,97,92+hha:132,94,118", classes=NYUD, **SMALL),
    "extra-heads": lambda tmp_path: build_model("fcn16s", num_classes=33, extra_heads=(3,), classes=SIFTFLOW, **SMALL),
}


def oracle_probs(net, image: np.ndarray) -> np.ndarray:
    """Softmax of each head's scores of the in-memory net, its input normalised by the spec's rule."""
    with torch.no_grad():
        logits = net.eval()(normalize(image, net.spec.normalization_text)[None])[0]
    return torch.cat([part.softmax(0) for part in logits.split(net.spec.head_classes)]).numpy()


@pytest.mark.parametrize("way", list(WAYS))
def test_every_format_predicts_what_the_net_in_memory_did(tmp_path, way):
    net = randomize_scores(WAYS[way](tmp_path))
    assert net.spec.classes is not None
    image = np.random.default_rng(0).integers(0, 256, (37, 45, net.spec.channels), dtype=np.uint8)
    expected = oracle_probs(net, image)
    checkpoint = save_model(net, None, tmp_path / "net.pth")
    paths = {"checkpoint": checkpoint}
    if way in ("fresh", "imagenet-googlenet", "colour-hha", "extra-heads"):  # exports: the spec's fields vary most
        pytest.importorskip("onnxruntime")
        from fcnseg.export import export_onnx, export_torchscript

        paths["onnx"] = export_onnx(checkpoint, tmp_path / "net.onnx")
        paths["torchscript"] = export_torchscript(checkpoint, tmp_path / "net.pt")
    for kind, path in paths.items():
        segmenter = fcnseg.load(path, device="cpu")
        assert segmenter.spec == net.spec, kind
        colour, hha = (image[..., :3], image[..., 3:]) if net.spec.inputs == ("rgb", "hha") else (image, None)
        probs = segmenter.predict_probs(colour, hha=hha)
        np.testing.assert_allclose(probs, expected, atol=2e-5, err_msg=kind)


@pytest.mark.parametrize("way", ["fresh", "surgery"])
def test_a_runs_last_validation_is_what_eval_of_last_pth_scores(tmp_path, way, tiny_checkpoint):
    run, report = tmp_path / "run", tmp_path / "report"
    start = ["--init-from", str(tiny_checkpoint)] if way == "surgery" else []
    common = ["--dataset", "synthetic", "--threads", "1", "--workers", "0", "--quiet"]
    assert main(["train", "--model", "fcn8s", "--width", "0.0625", "--geometry", "fast", "--iterations", "6",
                 "--val-interval", "6", "--val-limit", "4", "--batch-size", "2", "--lr", "0.01", "--out", str(run),
                 *start, *common]) == 0
    assert main(["eval", str(run / "last.pth"), "--limit", "4", "--out", str(report), *common]) == 0
    last = list(csv.DictReader((run / "metrics.csv").open()))[-1]
    scores = json.loads((report / "metrics.json").read_text())
    for key in ("pixel_acc", "mean_acc", "mean_iu", "fw_iu"):
        assert float(last[key]) == pytest.approx(scores[key], abs=1e-6), key


@pytest.mark.parametrize("way", ["colour-hha", "extra-heads"])
def test_a_runs_last_validation_is_what_the_reloaded_net_scores(tmp_path, way):
    # fcnseg eval takes no dataset options (the split files these folders need): scored through the library.
    from fcnseg.evaluate import evaluate
    from fcnseg.train import TrainConfig, train
    from fcnseg.train.data import build_datasets

    root = nyud_folder(tmp_path / "nyud") if way == "colour-hha" else siftflow_folder(tmp_path / "sift")
    options = {"split_file": str(root / "ids.txt"), **({"inputs": "rgb+hha"} if way == "colour-hha" else {})}
    config = TrainConfig.from_dict({
        "model": "fcn16s", "width": 1 / 16, "geometry": "fast", "root": str(root),
        "dataset": "nyud" if way == "colour-hha" else "siftflow", "dataset_options": options, "batch_size": 2,
        "workers": 0, "lr": 0.01, "iterations": 4, "val_interval": 4, "checkpoint_interval": 4,
        "crop_size": [24, 24], "threads": 1, "out": str(tmp_path / "run")})
    train(config)
    segmenter = fcnseg.load(tmp_path / "run" / "last.pth", device="cpu")
    _, val = build_datasets(config, segmenter.normalization)
    info = segmenter.info
    scores = evaluate(segmenter.model, val, info.num_classes, info.ignore_index, device="cpu", progress=False,
                      exclude_absent=info.exclude_absent, extra_heads=info.extra_heads)
    last = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))[-1]
    for key in ("pixel_acc", "mean_acc", "mean_iu", "fw_iu"):
        assert float(last[key]) == pytest.approx(scores[key], abs=1e-6), key
