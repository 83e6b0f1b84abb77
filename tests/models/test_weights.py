import dataclasses

import pytest
import torch

from fcnseg import build_model
from fcnseg.models.weights import (
    WeightsError,
    fcn_from_pytorch_fcn,
    init_from_coarser,
    load_imagenet_weights,
    load_state_dict_file,
)

from .classifier_oracles import AlexNetClassifier, VGGClassifier
from .torchfcn_oracle import TorchFCN


def imagenet_classifier_layer(state_dict, backbone) -> torch.nn.Conv2d:
    """The 1000-way ImageNet layer (classifier.6) as a 1x1 convolution over the stride-32 output."""
    weight, bias = state_dict["classifier.6.weight"], state_dict["classifier.6.bias"]
    layer = torch.nn.Conv2d(weight.shape[1], weight.shape[0], 1)
    with torch.no_grad():
        layer.weight.copy_(weight.reshape(layer.weight.shape))
        layer.bias.copy_(bias)
    return layer


@pytest.mark.parametrize(("backbone", "oracle"), [("vgg16", VGGClassifier), ("alexnet", AlexNetClassifier)])
def test_convolutionalized_classifier_reproduces_imagenet_logits(tmp_path, backbone, oracle):
    torch.manual_seed(0)
    classifier = oracle().eval()
    path = tmp_path / f"{backbone}.pth"
    torch.save(classifier.state_dict(), path)
    # Fast geometry keeps the classifier's own conv1 padding: on 224x224 the fc6 window at the centre
    # of the 7x7 map (index 3) covers exactly the image the classifier sees.
    fcn = build_model("fcn32s", backbone=backbone, geometry="fast").eval()
    load_imagenet_weights(fcn, path)
    scores = imagenet_classifier_layer(torch.load(path, weights_only=True), fcn.backbone)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected = classifier(x)[0]
        feature = fcn.backbone(x)[2]
        assert feature.shape[-2:] == (7, 7)
        logits = scores(feature)[0, :, 3, 3]
    assert logits.abs().max() > 1e-3  # the comparison below is not between zeros
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)


def test_vgg16_bn_and_resnet_load_torchvision_names(tmp_path):
    oracle = VGGClassifier(width=1 / 16, batch_norm=True)
    torch.save(oracle.state_dict(), tmp_path / "vgg_bn.pth")
    model = build_model("fcn8s", backbone="vgg16_bn", width=1 / 16)
    load_imagenet_weights(model, tmp_path / "vgg_bn.pth")
    assert torch.equal(model.backbone.features[1].running_var, oracle.features[1].running_var)
    assert torch.equal(model.backbone.fc7.weight[:, :, 0, 0], oracle.classifier[3].weight)

    resnet = build_model("fcn8s", backbone="resnet50", width=1 / 16)
    state = {k: torch.randn_like(v.float()).to(v.dtype) for k, v in resnet.backbone.state_dict().items()}
    state["fc.weight"], state["fc.bias"] = torch.randn(1000, 128), torch.randn(1000)
    torch.save(state, tmp_path / "resnet.pth")
    load_imagenet_weights(resnet, tmp_path / "resnet.pth")
    assert torch.equal(resnet.backbone.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])


def test_wrong_backbone_weights_are_named(tmp_path):
    torch.save(VGGClassifier(width=1 / 16).state_dict(), tmp_path / "vgg.pth")
    model = build_model("fcn32s", backbone="vgg16", width=1 / 8)
    with pytest.raises(WeightsError, match="wrong shape|cannot become"):
        load_imagenet_weights(model, tmp_path / "vgg.pth")


@dataclasses.dataclass
class _Pickled:
    weights: torch.Tensor


def test_files_needing_pickled_code_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": _Pickled(torch.zeros(1))}, path)
    with pytest.raises(WeightsError, match="pickled Python code"):
        load_state_dict_file(path)
    with pytest.raises(WeightsError, match="not found"):
        load_state_dict_file(tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="not a readable PyTorch weights file; is it truncated"):
        load_state_dict_file(tmp_path / "junk.pth")


def _random_torchfcn(kind, width, n_class=21):
    torch.manual_seed(1)
    net = TorchFCN(kind, n_class=n_class, width=width).eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.startswith("upscore"):  # the authors' kernels: bilinear, here perturbed on the diagonal
                idx = torch.arange(p.shape[0])
                p.zero_()
                p[idx, idx] = torch.rand(p.shape[0], *p.shape[2:])
            else:
                p.copy_(torch.randn_like(p) * (2.0 / p[0].numel()) ** 0.5)
    return net


@pytest.mark.parametrize("kind", ["32s", "16s", "8s", "8s_atonce"])
def test_pytorch_fcn_weights_reproduce_its_outputs(tmp_path, kind):
    reference = _random_torchfcn(kind, width=1 / 8)
    path = tmp_path / "torchfcn.pth"
    arch = {"32s": "FCN32s", "16s": "FCN16s", "8s": "FCN8s", "8s_atonce": "FCN8sAtOnce"}[kind]
    # A pytorch-fcn training checkpoint: its trainer records the class name, which tells FCN8sAtOnce apart.
    torch.save({"model_state_dict": reference.state_dict(), "epoch": 3, "arch": arch}, path)
    name = "fcn" + kind
    model = fcn_from_pytorch_fcn(path).eval()
    assert model.spec.normalization == ("caffe",)
    assert model.config["name"] == name
    for size in [(1, 1), (64, 64), (97, 75)]:
        x = torch.randn(1, 3, *size) * 50
        with torch.no_grad():
            expected, actual = reference(x), model(x)
        scale = max(1.0, expected.abs().max().item())
        torch.testing.assert_close(actual, expected, atol=1e-4 * scale, rtol=1e-4)


def test_full_width_pytorch_fcn8s_loads_exactly():
    reference = _random_torchfcn("8s", width=1.0)
    model = fcn_from_pytorch_fcn(reference.state_dict(), name="fcn8s").eval()
    x = torch.randn(1, 3, 40, 48) * 50
    with torch.no_grad():
        expected = reference(x)
        # Random full-width weights give scores in the thousands: compare at 1e-4 of the peak.
        torch.testing.assert_close(model(x), expected, atol=1e-4 * expected.abs().max().item(), rtol=1e-4)


def test_a_pytorch_fcn_net_with_learned_upsampling_converts_with_it():
    """Kernels that mix classes were refused with "build the model with learnable_upsampling=True", which fcnseg
    convert has no flag for (found by a hostile review): such a net is built with its upsampling learnable."""
    reference = _random_torchfcn("8s", width=1 / 16)
    with torch.no_grad():
        for name, p in reference.named_parameters():
            if name.startswith("upscore"):
                p.add_(torch.rand_like(p) * 0.01)  # every class draws a little on every other
    model = fcn_from_pytorch_fcn(reference.state_dict(), name="fcn8s").eval()
    assert model.spec.learnable_upsampling
    x = torch.randn(1, 3, 64, 64) * 50
    with torch.no_grad():
        expected = reference(x)
        torch.testing.assert_close(model(x), expected, atol=1e-4 * expected.abs().max().item(), rtol=1e-4)
    assert not fcn_from_pytorch_fcn(_random_torchfcn("8s", 1 / 16).state_dict(), name="fcn8s").spec.learnable_upsampling


def test_pytorch_fcn_head_mismatch_is_refused():
    state = _random_torchfcn("16s", width=1 / 16).state_dict()
    with pytest.raises(WeightsError, match="fcn16s but fcn8s"):
        fcn_from_pytorch_fcn(state, name="fcn8s")


def _trained(name, width=1 / 16):
    torch.manual_seed(2)
    model = build_model(name, backbone="vgg16", num_classes=5, width=width, geometry="fast")
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn_like(p) * (2.0 / p[0].numel()) ** 0.5)
    return model.eval()


def test_staged_init_keeps_the_coarser_scores():
    coarse = _trained("fcn32s")
    fine = build_model("fcn16s", backbone="vgg16", num_classes=5, width=1 / 16, geometry="fast").eval()
    copied = init_from_coarser(fine, coarse)
    assert "score_fr.weight" in copied and "score_pool4.weight" not in copied
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        # Exactly: the new skip adds zero, so FCN-16s = x16(x2(the 32s's scores)).
        scores = coarse.score_fr(coarse.backbone(x)[2])
        torch.testing.assert_close(fine(x), fine.upscore16(fine.upscore2(scores)), atol=1e-6, rtol=0)
        # And the same maps as the coarse net, up to interpolating x2 then x16 instead of x32 at once
        # (linear interpolation twice cuts the corners of the piecewise-linear x32 result).
        coarse_out, fine_out = coarse(x), fine(x)
    # Random weights make rough score maps, the worst case for that difference.
    assert (coarse_out.argmax(1) == fine_out.argmax(1)).float().mean() > 0.95
    assert (coarse_out - fine_out).abs().mean() < 0.15 * coarse_out.abs().mean()


def test_staged_init_16s_to_8s_and_mismatch():
    coarse = _trained("fcn16s")
    fine = build_model("fcn8s", backbone="vgg16", num_classes=5, width=1 / 16, geometry="fast").eval()
    assert "score_pool4.weight" in init_from_coarser(fine, coarse)
    assert not fine.score_pool3.weight.any()
    other = build_model("fcn8s", backbone="vgg16", num_classes=6, width=1 / 16, geometry="fast")
    with pytest.raises(WeightsError, match="scores 5 classes, this one 6; give both class lists"):
        init_from_coarser(other, coarse)
    wider = build_model("fcn8s", backbone="vgg16", num_classes=5, width=1 / 8, geometry="fast")
    with pytest.raises(WeightsError, match="backbone and width"):
        init_from_coarser(wider, coarse)


def test_fine_tuning_to_another_class_set_carries_over_matching_classes():
    coarse = _trained("fcn16s")  # 5 classes
    old = ("background", "Road", "car", "sky", "tree")
    new = ("sky", "lane", "road", "pole", "Background", "car")
    fine = build_model("fcn8s", backbone="vgg16", num_classes=6, width=1 / 16, geometry="fast")
    init_from_coarser(fine, coarse, classes=(old, new))
    for layer in ("score_fr", "score_pool4"):
        weight, bias = getattr(fine, layer).weight, getattr(fine, layer).bias
        source = getattr(coarse, layer)
        for old_index, new_index in ((3, 0), (1, 2), (0, 4), (2, 5)):  # sky, road, background, car
            assert torch.equal(weight[new_index], source.weight[old_index])
            assert torch.equal(bias[new_index], source.bias[old_index])
        for unmatched in (1, 3):  # lane, pole: new classes start at zero (the paper's score layers)
            assert not weight[unmatched].any() and not bias[unmatched].any()
    assert not fine.score_pool3.weight.any()
    assert torch.equal(fine.backbone.fc6.weight, coarse.backbone.fc6.weight)


def test_as_many_classes_in_another_order_are_carried_over_by_name():
    # The same count was copied by shape: row for row, so the starting net's c0 scores drove c3 (a class_map
    # or classes.txt written in another order), while the message named the classes "both share".
    coarse = _trained("fcn16s")  # 5 classes
    old = ("c0", "c1", "c2", "c3", "c4")
    fine = build_model("fcn8s", backbone="vgg16", num_classes=5, width=1 / 16, geometry="fast")
    init_from_coarser(fine, coarse, classes=(old, old[::-1]))
    for layer in ("score_fr", "score_pool4"):
        for old_index in range(5):
            assert torch.equal(getattr(fine, layer).weight[4 - old_index], getattr(coarse, layer).weight[old_index])
    init_from_coarser(fine, coarse, classes=(old, ("a", "b", "c", "d", "e")))  # none shared: all start at zero
    assert not any(layer.weight.any() or layer.bias.any() for layer in fine.score_layers())
    init_from_coarser(fine, coarse, classes=(old, ("C0", "c_1", "c2", "c3", "c4")))  # the same, spelled otherwise
    assert torch.equal(fine.score_fr.weight, coarse.score_fr.weight)


def test_imagenet_weights_from_a_url_are_cached_in_torch_hub(tmp_path, monkeypatch, http_server):
    import hashlib

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    server = http_server()
    served = server.folder
    torch.save(VGGClassifier(width=1 / 16).state_dict(), served / "weights.pth")
    digest = hashlib.sha256((served / "weights.pth").read_bytes()).hexdigest()
    name = f"vgg16-{digest[:8]}.pth"  # torchvision's naming: the file name carries its hash prefix
    (served / "weights.pth").rename(served / name)
    url = f"{server.url}/{name}"
    model = build_model("fcn32s", backbone="vgg16", width=1 / 16)
    load_imagenet_weights(model, url)
    server.stop()
    cached = tmp_path / "hub" / "hub" / "checkpoints" / name  # torch.hub.get_dir() is $TORCH_HOME/hub
    assert cached.is_file()
    load_imagenet_weights(model, url)  # the server is gone: the cached copy is used
    with pytest.raises(Exception, match="offline"):
        load_imagenet_weights(model, f"{server.url}/vgg16-00000000.pth")
