"""Classification convnets turned into feature extractors for FCN heads.

Every backbone returns three feature maps, at strides 8, 16 and 32 (the "pool3", "pool4" and
convolutionalized-classifier maps of the paper's VGG16 FCN), and keeps torchvision's module names so that
ImageNet weights load by name (fully connected layers become ``fc6``/``fc7`` convolutions).

``width`` multiplies every channel count (``width=0.25`` gives a VGG16 that trains on a CPU).
``reference=True`` gives the authors' geometry: the first convolution padded by 100 and ``fc6`` unpadded;
``reference=False`` keeps the classifier's own first-layer padding and pads ``fc6`` to keep the map size
(the "fast" geometry, see ``fcnseg.models.fcn``).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from fcnseg.models.geometry import CoordMap, coord_map, output_size

REFERENCE_PAD = 100  # the authors' conv1 padding: any input size survives fc6 and the crops


class PaddedConv2d(nn.Conv2d):
    """A convolution with a large zero padding (the reference geometry's 100), computed as an explicit pad
    followed by the convolution with a padding of 1: the same function, but PyTorch's CPU convolution
    takes a slow path for paddings this large on big inputs (conv1 on a 3000 x 4000 image: 227 s with
    padding 100, 6.9 s padded first). ``padding`` still says 100, so the geometry derived from it holds."""

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        pad_y, pad_x = (p - 1 for p in self.padding)
        return F.conv2d(F.pad(x, (pad_x, pad_x, pad_y, pad_y)), weight, bias, self.stride, 1, self.dilation,
                        self.groups)


def first_conv(in_channels: int, out_channels: int, kernel: int, stride: int, reference: bool, padding: int,
               bias: bool = True) -> nn.Conv2d:
    """A backbone's first convolution: padded by :data:`REFERENCE_PAD` in the reference geometry, else by the
    classifier's own ``padding``."""
    if reference:
        return PaddedConv2d(in_channels, out_channels, kernel, stride=stride, padding=REFERENCE_PAD, bias=bias)
    return nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=padding, bias=bias)


def _scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


class Backbone(nn.Module):
    """Base class: subclasses build their layers and list them, in order, in three stages."""

    out_channels: tuple[int, int, int]  # channels at strides 8, 16, 32

    def stages(self) -> list[list[nn.Module]]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in self.stages():
            for layer in stage:
                x = layer(x)
            features.append(x)
        return features

    def stage_maps(self) -> list[CoordMap]:
        """Coordinate maps of the three outputs in input coordinates."""
        maps, current = [], CoordMap()
        for stage in self.stages():
            current = current.then(coord_map(stage))
            maps.append(current)
        return maps

    def stage_sizes(self, size: int) -> list[int]:
        """Output lengths of the three stages for an input of length ``size``."""
        sizes = []
        for stage in self.stages():
            size = output_size(stage, size)
            sizes.append(size)
        return sizes


def _fc_layers(in_channels: int, fc_channels: int, kernel: int, reference: bool) -> dict[str, nn.Module]:
    """fc6 (kernel x kernel) and fc7 (1x1) as convolutions, each followed by ReLU and dropout."""
    return {
        "fc6": nn.Conv2d(in_channels, fc_channels, kernel, padding=0 if reference else kernel // 2),
        "relu6": nn.ReLU(inplace=True),
        "drop6": nn.Dropout(0.5),
        "fc7": nn.Conv2d(fc_channels, fc_channels, 1),
        "relu7": nn.ReLU(inplace=True),
        "drop7": nn.Dropout(0.5),
    }


class VGG(Backbone):
    """VGG16 (optionally with batch norm) with ceil-mode pooling, as in the authors' Caffe nets."""

    CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")

    def __init__(self, width: float = 1.0, batch_norm: bool = False, reference: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        pool_indices = []
        in_channels = 3
        for item in self.CONFIG:
            if item == "M":
                pool_indices.append(len(layers))
                layers.append(nn.MaxPool2d(2, stride=2, ceil_mode=True))
                continue
            out = _scaled(item, width)
            layers.append(nn.Conv2d(in_channels, out, 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.ReLU(inplace=True))
            in_channels = out
        if reference:
            layers[0] = first_conv(3, layers[0].out_channels, 3, 1, reference=True, padding=1)
        self.features = nn.Sequential(*layers)
        self._taps = (pool_indices[2] + 1, pool_indices[3] + 1)
        fc = _fc_layers(in_channels, _scaled(4096, width), 7, reference)
        for name, module in fc.items():
            self.add_module(name, module)
        self.out_channels = (_scaled(256, width), _scaled(512, width), _scaled(4096, width))

    def stages(self) -> list[list[nn.Module]]:
        f, (t3, t4) = list(self.features), self._taps
        head = [self.fc6, self.relu6, self.drop6, self.fc7, self.relu7, self.drop7]
        return [f[:t3], f[t3:t4], f[t4:] + head]


class AlexNet(Backbone):
    """AlexNet in torchvision's layout; pooling in ceil mode (Caffe). Strides 8/16/32 = pool1/pool2/fc7."""

    def __init__(self, width: float = 1.0, reference: bool = True) -> None:
        super().__init__()
        c1, c2, c3, c4, c5 = (_scaled(c, width) for c in (64, 192, 384, 256, 256))
        self.features = nn.Sequential(
            first_conv(3, c1, 11, 4, reference, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, ceil_mode=True),
            nn.Conv2d(c1, c2, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, ceil_mode=True),
            nn.Conv2d(c2, c3, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c3, c4, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c4, c5, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, ceil_mode=True),
        )
        for name, module in _fc_layers(c5, _scaled(4096, width), 6, reference).items():
            self.add_module(name, module)
        self.out_channels = (c1, c2, _scaled(4096, width))

    def stages(self) -> list[list[nn.Module]]:
        f = list(self.features)
        head = [self.fc6, self.relu6, self.drop6, self.fc7, self.relu7, self.drop7]
        return [f[:3], f[3:6], f[6:] + head]


class CaffeNet(Backbone):
    """CaffeNet, the authors' AlexNet (FCN-AlexNet): 96-256-384-384-256 channels, grouped convolutions
    (conv2, conv4, conv5 in two groups), LRN after pool1 and pool2, ceil-mode pooling; layers named as in
    the authors' net. Strides 8/16/32 = norm1/norm2/fc7. Its FCN-32s upsamples with a 63-wide kernel.
    """

    upsample_kernels = {32: 63}

    def __init__(self, width: float = 1.0, reference: bool = True) -> None:
        super().__init__()
        c1, c2, c3, c4, c5 = (_scaled(c, width) for c in (96, 256, 384, 384, 256))
        # The grouped layers need even widths in and out (conv3's too: it feeds conv4; width 0.2 gave 77 there)
        c1, c2, c3, c4, c5 = (c + c % 2 for c in (c1, c2, c3, c4, c5))

        def lrn() -> nn.Module:
            return nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)  # Caffe's across-channel LRN

        self.features = nn.Sequential(OrderedDict([
            ("conv1", first_conv(3, c1, 11, 4, reference, padding=2)),
            ("relu1", nn.ReLU(inplace=True)), ("pool1", nn.MaxPool2d(3, stride=2, ceil_mode=True)),
            ("norm1", lrn()),
            ("conv2", nn.Conv2d(c1, c2, 5, padding=2, groups=2)), ("relu2", nn.ReLU(inplace=True)),
            ("pool2", nn.MaxPool2d(3, stride=2, ceil_mode=True)), ("norm2", lrn()),
            ("conv3", nn.Conv2d(c2, c3, 3, padding=1)), ("relu3", nn.ReLU(inplace=True)),
            ("conv4", nn.Conv2d(c3, c4, 3, padding=1, groups=2)), ("relu4", nn.ReLU(inplace=True)),
            ("conv5", nn.Conv2d(c4, c5, 3, padding=1, groups=2)), ("relu5", nn.ReLU(inplace=True)),
            ("pool5", nn.MaxPool2d(3, stride=2, ceil_mode=True)),
        ]))
        for name, module in _fc_layers(c5, _scaled(4096, width), 6, reference).items():
            self.add_module(name, module)
        self.out_channels = (c1, c2, _scaled(4096, width))

    def stages(self) -> list[list[nn.Module]]:
        f = list(self.features)
        head = [self.fc6, self.relu6, self.drop6, self.fc7, self.relu7, self.drop7]
        return [f[:4], f[4:8], f[8:] + head]


class BasicConv2d(nn.Module):
    """Convolution without bias, batch norm, ReLU (torchvision's GoogLeNet building block)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, reference: bool = False) -> None:
        super().__init__()
        self.conv = first_conv(in_channels, out_channels, kernel_size, stride, reference, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x)))

    def coord_map(self) -> CoordMap:
        return coord_map(self.conv)

    def output_size(self, size: int) -> int:
        return output_size(self.conv, size)


class Inception(nn.Module):
    """GoogLeNet's inception module (torchvision's layout: its "5x5" branch uses a 3x3 convolution)."""

    def __init__(self, in_channels: int, ch1x1: int, ch3x3red: int, ch3x3: int, ch5x5red: int, ch5x5: int,
                 pool_proj: int) -> None:
        super().__init__()
        self.branch1 = BasicConv2d(in_channels, ch1x1, 1)
        self.branch2 = nn.Sequential(BasicConv2d(in_channels, ch3x3red, 1), BasicConv2d(ch3x3red, ch3x3, 3, padding=1))
        self.branch3 = nn.Sequential(BasicConv2d(in_channels, ch5x5red, 1), BasicConv2d(ch5x5red, ch5x5, 3, padding=1))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True),
                                     BasicConv2d(in_channels, pool_proj, 1))
        self.out_channels = ch1x1 + ch3x3 + ch5x5 + pool_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)

    def coord_map(self) -> CoordMap:  # all four branches keep size and alignment
        return CoordMap()

    def output_size(self, size: int) -> int:
        return size


class GoogLeNet(Backbone):
    """GoogLeNet (Inception v1) in torchvision's layout, without the auxiliary classifiers.

    Strides 8/16/32 = inception3b / inception4e / inception5b; there is no fc6/fc7 (the paper's
    FCN-GoogLeNet scores the last inception output directly). ``transform_input`` reproduces torchvision's
    re-normalisation for its ImageNet weights, which were trained with mean 0.5 / std 0.5 inputs.
    """

    BLOCKS = {
        "inception3a": (64, 96, 128, 16, 32, 32), "inception3b": (128, 128, 192, 32, 96, 64),
        "inception4a": (192, 96, 208, 16, 48, 64), "inception4b": (160, 112, 224, 24, 64, 64),
        "inception4c": (128, 128, 256, 24, 64, 64), "inception4d": (112, 144, 288, 32, 64, 64),
        "inception4e": (256, 160, 320, 32, 128, 128), "inception5a": (256, 160, 320, 32, 128, 128),
        "inception5b": (384, 192, 384, 48, 128, 128),
    }

    def __init__(self, width: float = 1.0, reference: bool = True, transform_input: bool = False) -> None:
        super().__init__()
        s = lambda c: _scaled(c, width)  # noqa: E731
        self.transform_input = transform_input
        self.conv1 = BasicConv2d(3, s(64), 7, stride=2, padding=3, reference=reference)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = BasicConv2d(s(64), s(64), 1)
        self.conv3 = BasicConv2d(s(64), s(192), 3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        in_channels = s(192)
        for name, channels in self.BLOCKS.items():
            block = Inception(in_channels, *(s(c) for c in channels))
            self.add_module(name, block)
            in_channels = block.out_channels
            if name == "inception3b":
                self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
            elif name == "inception4e":
                self.maxpool4 = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        self.out_channels = (self.inception3b.out_channels, self.inception4e.out_channels,
                             self.inception5b.out_channels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.transform_input:
            from fcnseg.normalization import IMAGENET_MEAN, IMAGENET_STD

            std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
            mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
            x = x * (std / 0.5) + (mean - 0.5) / 0.5
        return super().forward(x)

    def stages(self) -> list[list[nn.Module]]:
        return [
            [self.conv1, self.maxpool1, self.conv2, self.conv3, self.maxpool2, self.inception3a, self.inception3b],
            [self.maxpool3, self.inception4a, self.inception4b, self.inception4c, self.inception4d,
             self.inception4e],
            [self.maxpool4, self.inception5a, self.inception5b],
        ]


class Bottleneck(nn.Module):
    """ResNet bottleneck (torchvision's v1.5: the stride sits in the 3x3 convolution)."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.relu(self.bn3(self.conv3(y)) + identity)

    def coord_map(self) -> CoordMap:
        return coord_map([self.conv1, self.conv2, self.conv3])

    def output_size(self, size: int) -> int:
        return output_size([self.conv1, self.conv2, self.conv3], size)


class ResNet(Backbone):
    """ResNet-50/101 (torchvision layout). Strides 8/16/32 = layer2 / layer3 / layer4."""

    def __init__(self, depths: tuple[int, int, int, int], width: float = 1.0, reference: bool = False) -> None:
        super().__init__()
        stem = _scaled(64, width)
        self.conv1 = first_conv(3, stem, 7, 2, reference, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_channels = stem
        for index, (depth, planes) in enumerate(zip(depths, (64, 128, 256, 512), strict=True)):
            blocks = []
            for block_index in range(depth):
                stride = 2 if block_index == 0 and index > 0 else 1
                blocks.append(Bottleneck(in_channels, _scaled(planes, width), stride))
                in_channels = blocks[-1].conv3.out_channels
            self.add_module(f"layer{index + 1}", nn.Sequential(*blocks))
        self.out_channels = (self.layer2[-1].conv3.out_channels, self.layer3[-1].conv3.out_channels,
                             in_channels)

    def stages(self) -> list[list[nn.Module]]:
        return [[self.conv1, self.bn1, self.relu, self.maxpool, *self.layer1, *self.layer2],
                [*self.layer3], [*self.layer4]]


class LateFusion(Backbone):
    """One trunk per input (NYUDv2's colour image and HHA depth encoding, 3 channels each, stacked), run side by
    side. Their maps are stacked at each stride, so a head's 1x1 score layer over them is the sum of one
    score layer per trunk: the authors' "late fusion" of the colour and HHA nets, which sum the two streams'
    scores before upsampling (their 0.5 / 0.5 weights folded into the score layer's weights)."""

    def __init__(self, trunks: dict[str, Backbone]) -> None:
        super().__init__()
        self.trunks = nn.ModuleDict(trunks)
        first = next(iter(trunks.values()))
        self.out_channels = tuple(sum(t.out_channels[i] for t in trunks.values()) for i in range(3))
        self.upsample_kernels = getattr(first, "upsample_kernels", {})

    def stages(self) -> list[list[nn.Module]]:
        """The first trunk's stages: every trunk has the same geometry."""
        return next(iter(self.trunks.values())).stages()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.shape[1] != 3 * len(self.trunks):
            raise ValueError(f"expected {3 * len(self.trunks)} input channels ({', '.join(self.trunks)}: 3 each), "
                             f"got {x.shape[1]}")
        maps = [trunk(part) for trunk, part in zip(self.trunks.values(), x.split(3, 1), strict=True)]
        return [torch.cat(stage, 1) for stage in zip(*maps, strict=True)]


def vgg16(width: float = 1.0, reference: bool = True) -> VGG:
    return VGG(width, batch_norm=False, reference=reference)


def vgg16_bn(width: float = 1.0, reference: bool = True) -> VGG:
    return VGG(width, batch_norm=True, reference=reference)


def alexnet(width: float = 1.0, reference: bool = True) -> AlexNet:
    return AlexNet(width, reference=reference)


def caffenet(width: float = 1.0, reference: bool = True) -> CaffeNet:
    return CaffeNet(width, reference=reference)


def googlenet(width: float = 1.0, reference: bool = True, transform_input: bool = False) -> GoogLeNet:
    return GoogLeNet(width, reference=reference, transform_input=transform_input)


def resnet50(width: float = 1.0, reference: bool = False) -> ResNet:
    return ResNet((3, 4, 6, 3), width, reference=reference)


def resnet101(width: float = 1.0, reference: bool = False) -> ResNet:
    return ResNet((3, 4, 23, 3), width, reference=reference)


BACKBONES = {
    "vgg16": vgg16,
    "vgg16_bn": vgg16_bn,
    "alexnet": alexnet,
    "caffenet": caffenet,
    "googlenet": googlenet,
    "resnet50": resnet50,
    "resnet101": resnet101,
}
