import pytest
import torch
from torch import nn

from fcnseg.models.geometry import CoordMap, coord_map, crop_offset, output_size


def test_conv_pool_and_deconv_maps():
    assert coord_map(nn.Conv2d(1, 1, 3, padding=100)) == CoordMap(1.0, -99.0)
    assert coord_map(nn.MaxPool2d(2, 2)) == CoordMap(2.0, 0.5)
    assert coord_map(nn.Conv2d(1, 1, 7)) == CoordMap(1.0, 3.0)
    assert coord_map(nn.ConvTranspose2d(1, 1, 64, stride=32)) == CoordMap(1 / 32, -31.5 / 32)


def test_composition_gives_the_reference_fcn32s_crop():
    # VGG16 with pad 100: pool5 -> fc6 (7x7) -> x32 deconv sits 19 pixels before the input's origin.
    layers = [nn.Conv2d(1, 1, 3, padding=100)]
    for _ in range(5):
        layers += [nn.Conv2d(1, 1, 3, padding=1), nn.MaxPool2d(2, 2, ceil_mode=True)]
    layers += [nn.Conv2d(1, 1, 7), nn.Conv2d(1, 1, 1), nn.ConvTranspose2d(1, 1, 64, stride=32)]
    final = coord_map(nn.Sequential(*layers))
    assert final == CoordMap(1.0, -19.0)
    assert crop_offset(CoordMap(), final) == 19


def test_crop_offset_requires_equal_scales():
    with pytest.raises(ValueError):
        crop_offset(CoordMap(2.0, 0.0), CoordMap(4.0, 0.0))


@pytest.mark.parametrize("layer", [
    nn.Conv2d(1, 1, 3, padding=1), nn.Conv2d(1, 1, 7), nn.Conv2d(1, 1, 11, stride=4, padding=2),
    nn.MaxPool2d(2, 2, ceil_mode=True), nn.MaxPool2d(3, 2, ceil_mode=True), nn.MaxPool2d(3, 2, padding=1),
    nn.ConvTranspose2d(1, 1, 4, stride=2), nn.ConvTranspose2d(1, 1, 64, stride=32, padding=16),
])
def test_size_rule_matches_pytorch(layer):
    for size in range(11, 60):
        assert output_size(layer, size) == layer(torch.zeros(1, 1, size, size)).shape[-1], size


@pytest.mark.parametrize("kernel, stride", [(3, 1), (11, 4), (7, 2)])
def test_a_padding_of_100_done_as_an_explicit_pad_is_the_same_convolution(kernel, stride):
    """The reference geometry's first layers pad 100 by hand (PyTorch is slow on such paddings at large
    sizes): the same function as the convolution's own padding, and the same derived geometry."""
    import torch.nn.functional as F

    from fcnseg.models.backbones import PaddedConv2d
    from fcnseg.models.geometry import coord_map, output_size

    torch.manual_seed(0)
    padded = PaddedConv2d(3, 8, kernel, stride=stride, padding=100)
    plain = torch.nn.Conv2d(3, 8, kernel, stride=stride, padding=100)
    plain.load_state_dict(padded.state_dict())
    for size in [(1, 1), (17, 23), (64, 50)]:
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            expected = F.conv2d(x, plain.weight, plain.bias, stride=stride, padding=100)
            torch.testing.assert_close(padded(x), expected, rtol=0, atol=1e-5)
        assert output_size(padded, size[0]) == expected.shape[2]
    assert coord_map(padded) == coord_map(plain) and padded.padding == (100, 100)
