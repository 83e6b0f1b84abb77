"""FCN geometry and heads: the authors' offsets, the fast geometry's cost, skip fusion, at-once scaling."""


import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from fcnseg import build_model
from fcnseg.models.fcn import ATONCE_SCALES


@pytest.mark.parametrize(("name", "crops", "final"), [
    ("fcn32s", [], 19), ("fcn16s", [(0, 5)], 27), ("fcn8s", [(0, 5), (0, 9)], 31),
    ("fcn8s_atonce", [(0, 5), (0, 9)], 31),
])
def test_reference_vgg16_offsets_are_the_authors(name, crops, final):
    model = build_model(name, backbone="vgg16", width=1 / 16)
    assert model.skip_crops == crops
    assert model.final_crop == final
    assert model.pad_top_left == 0 and model.pad_extra == 0


def test_reference_alexnet_offsets():
    # The authors' FCN-AlexNet crops 18 with a 63-wide kernel; kernel 2 * stride = 64 puts the centre
    # half a pixel further, which rounds to 19.
    assert build_model("fcn32s", backbone="alexnet", width=1 / 16).final_crop == 19


def test_fast_vgg16_lines_up_without_crops_and_pads_to_32():
    model = build_model("fcn8s", backbone="vgg16", width=1 / 16, geometry="fast")
    assert model.skip_crops == [(0, 0), (0, 0)] and model.final_crop == 0
    assert [model._pad_bottom_right(n) for n in (500, 512, 1, 33)] == [12, 0, 31, 31]


def _flops(module, x):
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(x)
    return counter.get_total_flops()


def test_fast_geometry_cost_at_500():
    # The convolutions run on 512x512 instead of 698x698: (512 / 698)^2 = 0.54 of their work. fc6 sees
    # a 16x16 output in both modes, so the whole net lands near 0.6.
    x = torch.randn(1, 3, 500, 500)
    models = {g: build_model("fcn8s", backbone="vgg16", width=1 / 8, geometry=g).eval() for g in ("reference", "fast")}
    total = {g: _flops(m, x) for g, m in models.items()}
    convs = {"reference": _flops(models["reference"].backbone.features, x),
             "fast": _flops(models["fast"].backbone.features, torch.randn(1, 3, 512, 512))}
    assert convs["fast"] / convs["reference"] == pytest.approx((512 / 698) ** 2, rel=0.02)
    assert 0.55 < total["fast"] / total["reference"] < 0.65


def _randomize(model):
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "upscore" not in name:
                p.copy_(torch.randn_like(p) * (2.0 / max(1, p[0].numel())) ** 0.5)
    return model.eval()


def test_fcn8s_equals_three_separately_upsampled_score_maps():
    # Upsampling is linear: summing at stride 8 then one x8 equals upsampling each score map to full
    # size (pool5 x32 via 2*2*8, pool4 x16 via 2*8, pool3 x8) and summing there.
    model = _randomize(build_model("fcn8s", backbone="vgg16", num_classes=4, width=1 / 16))
    x = torch.randn(1, 3, 45, 61)
    f8, f16, f32 = model.backbone(x)

    def full(score8):
        return model.upscore8(score8)[:, :, 31:31 + 45, 31:31 + 61]

    up2 = model.upscore2(model.score_fr(f32))
    pool5 = full(model.upscore_pool4(up2))
    size2 = up2.shape[-2:]
    pool4 = full(model.upscore_pool4(model.score_pool4(f16[:, :, 5:5 + size2[0], 5:5 + size2[1]])))
    size4 = model.upscore_pool4(up2).shape[-2:]
    pool3 = full(model.score_pool3(f8[:, :, 9:9 + size4[0], 9:9 + size4[1]]))
    with torch.no_grad():
        torch.testing.assert_close(model(x), pool5 + pool4 + pool3, atol=1e-4, rtol=1e-4)


def test_atonce_scales_the_skip_inputs():
    plain = _randomize(build_model("fcn8s", backbone="vgg16", num_classes=3, width=1 / 16))
    atonce = build_model("fcn8s_atonce", backbone="vgg16", num_classes=3, width=1 / 16).eval()
    state = plain.state_dict()
    atonce.load_state_dict(state)
    # Scaling the inputs of a 1x1 conv equals scaling its weights (biases untouched).
    plain.score_pool4.weight.data *= ATONCE_SCALES[0]
    plain.score_pool3.weight.data *= ATONCE_SCALES[1]
    x = torch.randn(1, 3, 40, 50)
    with torch.no_grad():
        torch.testing.assert_close(atonce(x), plain(x), atol=1e-5, rtol=1e-4)


def test_learnable_upsampling_trains_and_frozen_does_not():
    frozen = build_model("fcn8s", backbone="vgg16", num_classes=3, width=1 / 16)
    learnable = build_model("fcn8s", backbone="vgg16", num_classes=3, width=1 / 16, learnable_upsampling=True)
    assert all(not u.weight.requires_grad for u in frozen.upsamplers())
    assert all(u.weight.requires_grad and u.weight.shape[:2] == (3, 3) for u in learnable.upsamplers())


def test_new_score_layers_start_at_zero():
    model = build_model("fcn8s", backbone="vgg16", num_classes=3, width=1 / 16)
    for layer in model.score_layers():
        assert not layer.weight.any() and not layer.bias.any()


@pytest.mark.parametrize("kwargs", [{"name": "fcn4s"}, {"backbone": "vgg19"}, {"geometry": "tiny"}, {"width": 0}])
def test_bad_arguments_say_what_is_allowed(kwargs):
    with pytest.raises(ValueError, match="choose one of|must be positive"):
        build_model(**{"name": "fcn8s", **kwargs})
