"""Nets with several heads (SIFT Flow's semantic + geometric): one trunk, each head's scores side by side in
the output; inference gives each head its own softmax from one pass; training sums the heads' losses;
evaluation, predict and exports handle every head."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fcnseg.api import load
from fcnseg.checkpoint import checkpoint_spec, read_checkpoint, save_model
from fcnseg.cli import main
from fcnseg.data.info import SIFTFLOW, SIFTFLOW_GEOMETRIC
from fcnseg.inference import predict_labels, predict_probs
from fcnseg.metrics import scores_from_confusion
from fcnseg.models import build_model
from fcnseg.train import TrainConfig, train
from fcnseg.train.run import segmentation_loss

from .helpers import random_fcn, refused, siftflow_folder

HEADS = SIFTFLOW.head_classes  # (33, 3)


def two_head_net(head: str = "fcn8s", seed: int = 3) -> torch.nn.Module:
    """A random two-head net; its score layers random too, so both heads vary over the image."""
    torch.manual_seed(seed)
    model = build_model(head, num_classes=33, width=1 / 16, geometry="fast", extra_heads=(3,))
    with torch.no_grad():
        for weight in model.parameters():
            if weight.dim() == 4 and weight.requires_grad:
                torch.nn.init.kaiming_normal_(weight)
    return model.eval()


@pytest.mark.parametrize("head", ["fcn32s", "fcn16s", "fcn8s"])
def test_each_head_is_an_fcn_on_the_shared_trunk(head, one_thread):
    net = two_head_net(head)
    x = torch.randn(2, 3, 45, 61)
    with torch.no_grad():
        out = net(x)
    assert out.shape == (2, 36, 45, 61) and net.head_classes == HEADS
    # Oracle: a one-head net with the same trunk and, as its only head, the second head's layers.
    geometric = build_model(head, num_classes=3, width=1 / 16, geometry="fast").eval()
    state = {k: v for k, v in net.state_dict().items() if not k.startswith(("extra_heads", "score", "upscore"))}
    state.update({k.removeprefix("extra_heads.0."): v for k, v in net.state_dict().items()
                  if k.startswith("extra_heads.0.")})
    geometric.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(out[:, 33:], geometric(x), rtol=0, atol=1e-5)
    # A net with one head keeps exactly the keys it always had.
    assert not any("extra_heads" in k for k in build_model(head, width=1 / 16).state_dict())


@pytest.mark.parametrize("options", [{}, {"mode": "slide", "window": (24, 32), "flip": True},
                                     {"scales": (0.75, 1.0)}])
def test_one_pass_gives_each_head_its_own_softmax(options, one_thread):
    net = two_head_net()
    x = torch.randn(1, 3, 40, 56)
    probs = predict_probs(net, x, heads=HEADS, **options)
    labels = predict_labels(net, x, heads=HEADS, **options)
    # Oracle: each head alone through the same engine, from a forward that returns only its channels.
    semantic = predict_probs(lambda t: net(t)[:, :33], x, **options)
    geometric = predict_probs(lambda t: net(t)[:, 33:], x, **options)
    torch.testing.assert_close(probs, torch.cat([semantic, geometric], 1), rtol=0, atol=1e-5)
    assert labels.shape == (1, 2, 40, 56)
    assert torch.equal(labels[:, 0], semantic.argmax(1)) and torch.equal(labels[:, 1], geometric.argmax(1))
    assert len(labels[:, 1].unique()) > 1


def test_the_training_loss_is_the_sum_of_the_heads_losses():
    logits = torch.randn(2, 36, 5, 7)
    target = torch.stack([torch.randint(0, 33, (2, 5, 7)), torch.randint(0, 3, (2, 5, 7))], 1)
    target[0, 1, 0, :] = 255  # void in the geometric map only
    loss = segmentation_loss(logits, target, 255, "sum", None, HEADS)
    expected = (F.cross_entropy(logits[:, :33], target[:, 0], reduction="sum")
                + F.cross_entropy(logits[:, 33:], target[:, 1], ignore_index=255, reduction="sum"))
    torch.testing.assert_close(loss, expected)


def test_absent_classes_leave_the_means_when_asked():
    matrix = torch.tensor([[5, 1, 2], [0, 4, 0], [0, 0, 0]])  # class 2: predicted twice, never in the truth
    counted, excluded = scores_from_confusion(matrix), scores_from_confusion(matrix, exclude_absent=True)
    assert counted["per_class_iou"][2] == 0.0 and np.isnan(excluded["per_class_iou"][2])
    assert excluded["mean_iu"] == pytest.approx((5 / 8 + 4 / 5) / 2)
    assert counted["mean_iu"] == pytest.approx((5 / 8 + 4 / 5 + 0) / 3)


def test_training_on_siftflow_sums_both_heads_losses(tmp_path, capsys, caplog):
    root = siftflow_folder(tmp_path / "siftflow")
    config = TrainConfig.from_dict({
        "model": "fcn16s", "width": 1 / 16, "geometry": "fast", "dataset": "siftflow", "root": str(root),
        "dataset_options": {"split_file": str(root / "ids.txt")}, "batch_size": 2, "workers": 0, "lr": 0.01,
        "iterations": 3, "val_interval": 3, "checkpoint_interval": 3, "log_interval": 1, "crop_size": [32, 32],
        "threads": 1, "out": str(tmp_path / "run")})
    result = train(config)
    assert "geometric" in result["scores"]["extra_heads"]
    assert "; geometric mean IU" in capsys.readouterr().err
    # One split_file for both splits: validation measures the training images, which was not said.
    assert "the validation split 'val' hold the same 4 images (a split_file option gives its list to both)" in \
        caplog.text
    checkpoint = read_checkpoint(tmp_path / "run" / "best.pth")
    spec = checkpoint_spec(checkpoint)
    assert spec.extra_heads == (3,) and spec.classes.extra_heads[0].task == "geometric"
    weights = checkpoint["model_state_dict"]  # both heads learnt (they start at zero)
    assert weights["score_fr.weight"].abs().sum() > 0 and weights["extra_heads.0.score_fr.weight"].abs().sum() > 0


def test_eval_and_predict_write_every_head(tmp_path, capsys, one_thread):
    root = siftflow_folder(tmp_path / "siftflow", ids=("coast_a", "forest_b"))
    checkpoint = save_model(two_head_net(), SIFTFLOW, tmp_path / "sf.pth")
    # eval scores both heads; SIFT Flow leaves classes without ground truth out of the means
    from fcnseg.data.siftflow import SiftFlow
    from fcnseg.evaluate import evaluate

    data = SiftFlow(root, split_file=root / "ids.txt")
    segmenter = load(checkpoint, device="cpu")
    scores = evaluate(segmenter.scores, data, 33, 255, extra_heads=SIFTFLOW.extra_heads, exclude_absent=True,
                      progress=False)
    truth = np.stack([data.load(i)[1] for i in range(len(data))])
    absent = [c for c in range(33) if not (truth[..., 0] == c).any()]
    geometric = scores["extra_heads"]["geometric"]
    assert sum(map(sum, scores["confusion"])) == int((truth[..., 0] != 255).sum())
    assert sum(map(sum, geometric["confusion"])) == int((truth[..., 1] != 255).sum())
    assert all(np.isnan(scores["per_class_iou"][c]) for c in absent) and len(absent) < 33
    # predict writes the first head's files as always and the geometric head's next to them
    image = np.asarray(Image.open(root / "Images" / "spatial_envelope_256x256_static_8outdoorcategories"
                                  / "coast_a.jpg"))
    Image.fromarray(image).save(tmp_path / "scene.png")
    assert main(["predict", str(checkpoint), str(tmp_path / "scene.png"), "--out", str(tmp_path / "out"),
                 "--probs", "--threads", "1"]) == 0
    maps = segmenter.predict_heads(image)
    assert list(maps) == ["semantic", "geometric"]
    for stem, expected, info in (("scene", maps["semantic"], SIFTFLOW), ("scene_geometric", maps["geometric"],
                                                                         SIFTFLOW_GEOMETRIC)):
        mask = Image.open(tmp_path / "out" / f"{stem}_mask.png")
        np.testing.assert_array_equal(np.asarray(mask), expected)
        assert mask.getpalette()[:9] == [v for color in info.palette[:3] for v in color]
        assert (tmp_path / "out" / f"{stem}_overlay.png").is_file()
    probs = np.load(tmp_path / "out" / "scene_probs.npy")
    assert probs.shape == (36, *image.shape[:2])
    np.testing.assert_allclose(probs[:33].sum(0), 1, atol=2e-3)
    np.testing.assert_allclose(probs[33:].sum(0), 1, atol=2e-3)
    np.testing.assert_array_equal(segmenter.predict(image), maps["semantic"])
    # Inputs scene.png and scene_geometric.png both wrote scene_geometric_mask.png (the last one won), without a word.
    Image.fromarray(image[:40]).save(tmp_path / "scene_geometric.png")
    capsys.readouterr()
    assert main(["predict", str(checkpoint), str(tmp_path / "scene.png"), str(tmp_path / "scene_geometric.png"),
                 "--out", str(tmp_path / "both"), "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert "scene_geometric_mask.png" in err and "separate --out folders" in err, err
    assert not (tmp_path / "both").exists()


def test_an_onnx_export_keeps_both_heads(tmp_path, one_thread):
    pytest.importorskip("onnxruntime")
    checkpoint = save_model(two_head_net(), SIFTFLOW, tmp_path / "sf.pth")
    assert main(["export", str(checkpoint), "--format", "onnx", "--out", str(tmp_path / "sf.onnx")]) == 0
    image = np.random.default_rng(1).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    exported, original = load(tmp_path / "sf.onnx", device="cpu"), load(checkpoint, device="cpu")
    assert exported.info == original.info
    for task, labels in original.predict_heads(image).items():
        assert (exported.predict_heads(image)[task] == labels).mean() > 0.99


def test_fcnseg_eval_on_the_authors_test_list(tmp_path, capsys, one_thread):
    from fcnseg.data.base import split_ids

    root = siftflow_folder(tmp_path / "siftflow", ids=split_ids("siftflow", "test"), size=(6, 8))
    checkpoint = save_model(two_head_net(), SIFTFLOW, tmp_path / "sf.pth")
    assert main(["eval", str(checkpoint), "--dataset", "siftflow", "--root", str(root), "--split", "test",
                 "--out", str(tmp_path / "report"), "--workers", "0", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("siftflow test: 200 images") and "geometric head:" in out and "| vertical |" in out
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["num_images"] == 200 and metrics["extra_heads"]["geometric"]["class_names"] == [
        "sky", "horizontal", "vertical"]
    one_head = save_model(random_fcn(num_classes=33), SIFTFLOW.__class__("siftflow33", SIFTFLOW.class_names,
                                                                         SIFTFLOW.palette), tmp_path / "one.pth")
    # The checkpoint, its one head of 33 classes, and the dataset's two heads (33 + 3).
    refused(capsys, ["eval", one_head, "--dataset", "siftflow", "--root", root, "--split", "test"], one_head,
            "33 classes", "siftflow", "33 + 3")
