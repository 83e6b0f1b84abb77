"""Model zoo: ``build_model(name, backbone=..., num_classes=...)`` over plain dicts."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from fcnseg.errors import ConfigError
from fcnseg.models.backbones import BACKBONES, LateFusion
from fcnseg.models.fcn import FCN, GEOMETRIES, HEADS

# What a net can read: a colour image, and the HHA encoding of a depth map (fcnseg.data.hha).
INPUTS = ("rgb", "hha")

# Model name -> head. The at-once FCN-8s is the same graph with scaled skip inputs.
MODELS = {
    "fcn32s": "32s",
    "fcn16s": "16s",
    "fcn8s": "8s",
    "fcn8s_atonce": "8s_atonce",
}


def build_model(name: str = "fcn8s", backbone: str = "vgg16", num_classes: int = 21, width: float = 1.0,
                geometry: str = "reference", learnable_upsampling: bool = False, dropout: float = 0.5,
                extra_heads: Sequence[int] = (), inputs: Sequence[str] = ("rgb",)) -> FCN:
    """Build an FCN, e.g. ``build_model("fcn8s", backbone="vgg16", num_classes=21)``.

    Args:
        name: one of ``MODELS`` (fcn32s, fcn16s, fcn8s, fcn8s_atonce).
        backbone: one of ``BACKBONES`` (vgg16, vgg16_bn, alexnet, googlenet, resnet50, resnet101).
        num_classes: output channels (2 for road / not road, 21 for PASCAL VOC, 11 for CamVid).
        width: channel multiplier of the backbone (0.25 trains on a CPU).
        geometry: ``"reference"`` (the authors' pad-100-and-crop nets) or ``"fast"`` (minimal padding).
        learnable_upsampling: train the upsampling kernels (full class x class) instead of keeping them
            frozen at bilinear interpolation (stored depthwise, cheaper).
        dropout: probability of the fc6/fc7 dropout layers (VGG16, AlexNet); the paper keeps 0.5.
        extra_heads: class counts of further tasks scored from the same trunk (SIFT Flow's 3 geometric
            classes beside its 33 semantic ones); their scores follow the first task's in the output's
            channels, so the output has ``num_classes + sum(extra_heads)`` channels.
        inputs: what the net reads, from ``INPUTS``: ``("rgb",)`` a colour image; ``("hha",)`` the HHA encoding
            of a depth map; ``("rgb", "hha")`` both, stacked as 6 channels, one backbone each, fused before the
            score layers (:class:`~fcnseg.models.backbones.LateFusion`, the NYUDv2 colour-HHA net).
    """
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    if backbone not in BACKBONES:
        raise ConfigError(f"unknown backbone {backbone!r}; choose one of {sorted(BACKBONES)}")
    if geometry not in GEOMETRIES:
        raise ConfigError(f"unknown geometry {geometry!r}; choose one of {GEOMETRIES}")
    if width <= 0:
        raise ConfigError(f"width must be positive, got {width}")
    if not 0 <= dropout < 1:
        raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
    extra_heads = tuple(int(c) for c in extra_heads)
    if min((num_classes, *extra_heads)) < 1:
        raise ConfigError(f"every head needs at least one class, got {(num_classes, *extra_heads)}")
    inputs = tuple(inputs)
    if not inputs or len(set(inputs)) != len(inputs) or not set(inputs) <= set(INPUTS):
        raise ConfigError(f"inputs must be distinct names from {INPUTS}, got {inputs}")
    make = lambda: BACKBONES[backbone](width, reference=geometry == "reference")  # noqa: E731
    net = make() if len(inputs) == 1 else LateFusion({name: make() for name in inputs})
    model = FCN(net, num_classes, head=MODELS[name], geometry=geometry,
                learnable_upsampling=learnable_upsampling, extra_heads=extra_heads)
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = dropout
    model.config = {"name": name, "backbone": backbone, "num_classes": num_classes, "width": width,
                    "geometry": geometry, "learnable_upsampling": learnable_upsampling, "dropout": dropout}
    if extra_heads:  # recorded only when present, so single-task configs stay as they were
        model.config["extra_heads"] = extra_heads
    if inputs != ("rgb",):
        model.config["inputs"] = inputs
    return model


__all__ = ["BACKBONES", "FCN", "HEADS", "INPUTS", "MODELS", "build_model"]
