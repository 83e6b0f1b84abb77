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
