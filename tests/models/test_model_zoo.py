"""The shared model tester: every backbone x head x geometry runs through the same checks, and so does a
colour+HHA net with an extra head on every backbone.

Forward at odd sizes (1x1 included), a backward pass with finite gradients on every trainable
parameter, a checkpoint round trip with an equal spec and equal outputs, and ONNX export parity (marked
slow; ``make test`` runs it too). Score layers are randomised (built at zero they would hide every other
layer's gradient). tests/test_roundtrip.py takes every way of making a net through checkpoint, ONNX and
TorchScript to ``fcnseg.load(...).predict_probs``.
"""

import itertools

import pytest
import torch
import torch.nn.functional as F

from fcnseg.checkpoint import model_from_checkpoint, save_model
from fcnseg.data.info import DatasetInfo
from fcnseg.models import BACKBONES, MODELS

from ..helpers import random_fcn

CLASSES = DatasetInfo("three", ("a", "b", "c"), ((0, 0, 0), (255, 0, 0), (0, 255, 0)))
# A second task scored from the same trunk (as SIFT Flow's geometric classes beside its semantic ones).
TWO_TASKS = DatasetInfo("two-tasks", CLASSES.class_names, CLASSES.palette, task="semantic",
                        extra_heads=(DatasetInfo("geo", ("up", "down"), ((9, 9, 9), (99, 99, 99)), task="geometric"),))
ALL = [(*combo, "rgb") for combo in itertools.product(sorted(BACKBONES), sorted(MODELS), ["reference", "fast"])]
ALL += [(backbone, "fcn8s", "fast", "rgb+hha") for backbone in sorted(BACKBONES)]
SIZES = [(1, 1), (7, 13), (33, 31), (65, 97)]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=ALL, ids=["-".join(combo) for combo in ALL])
def net(request):
    backbone, name, geometry, inputs = request.param
    if inputs == "rgb":
        return random_fcn(name, backbone=backbone, num_classes=CLASSES.num_classes, geometry=geometry)
    return random_fcn(name, backbone=backbone, num_classes=CLASSES.num_classes, geometry=geometry,
                      inputs=("rgb", "hha"), extra_heads=TWO_TASKS.head_classes[1:], normalization="caffe+hha:1,2,3")


def classes_of(net) -> DatasetInfo:
    return TWO_TASKS if net.spec.extra_heads else CLASSES


def test_forward_keeps_the_input_size(net):
    with torch.no_grad():
        for height, width in SIZES:
            out = net.eval()(torch.randn(2, net.spec.channels, height, width))
            assert out.shape == (2, sum(net.spec.head_classes), height, width)
            assert torch.isfinite(out).all()


def test_backward_gives_finite_gradients_on_every_trainable_parameter(net):
    net.train()
    net.zero_grad(set_to_none=True)
    x = torch.randn(2, net.spec.channels, 37, 45, generator=torch.Generator().manual_seed(0))
    target = torch.randint(0, 2, (2, 37, 45), generator=torch.Generator().manual_seed(1))
    sum(F.cross_entropy(scores, target) for scores in net(x).split(net.spec.head_classes, 1)).backward()
    trainable = {name: p for name, p in net.named_parameters() if p.requires_grad}
    assert trainable
    missing = [name for name, p in trainable.items() if p.grad is None]
    broken = [name for name, p in trainable.items() if p.grad is not None and not torch.isfinite(p.grad).all()]
    silent = [name for name, p in trainable.items() if p.grad is not None and not p.grad.any()]
    assert (missing, broken, silent) == ([], [], [])
    frozen = [m.weight for m in net.upsamplers()]
    assert all(w.grad is None for w in frozen)  # frozen bilinear upsampling gets no gradient
    net.zero_grad(set_to_none=True)
    net.eval()


def test_checkpoint_round_trip_gives_the_same_spec_and_outputs(net, tmp_path):
    path = save_model(net, classes_of(net), tmp_path / "net.pth")
    loaded, info = model_from_checkpoint(path)
    assert info == classes_of(net) and loaded.spec == net.spec.replace(classes=info)
    x = torch.randn(1, net.spec.channels, 29, 35)
    with torch.no_grad():
        assert torch.equal(loaded(x), net.eval()(x))


@pytest.mark.slow
def test_onnx_export_matches_torch(net, tmp_path):
    pytest.importorskip("onnxruntime")
    from fcnseg.export import export_onnx, load_onnx, parity

    path = export_onnx(net, tmp_path / "net.onnx", info=classes_of(net))  # checked at an untraced size first
    forward, spec = load_onnx(path, threads=1)
    difference, tolerance = parity(forward, net, (1, net.spec.channels, 41, 27))
    assert spec == net.spec.replace(classes=classes_of(net)) and difference <= tolerance
