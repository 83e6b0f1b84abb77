"""Model zoo: ``build_model(name, backbone=..., num_classes=...)`` or ``build_model(spec)``."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fcnseg.data.info import count_text
from fcnseg.errors import LimitError, format_bytes
from fcnseg.models.backbones import BACKBONES, LateFusion
from fcnseg.models.fcn import FCN, HEADS
from fcnseg.models.spec import INPUTS, MODELS, ModelSpec
from fcnseg.runtime import available_bytes


def build_model(name: str | ModelSpec = "fcn8s", **fields: Any) -> FCN:
    """Build an FCN, e.g. ``build_model("fcn8s", backbone="vgg16", num_classes=21)``, or from a spec:
    ``build_model(spec)`` (``fields`` then change it). The net's ``spec`` attribute is the spec it was built
    from (read-only: a changed net is a new spec and a new build).

    Fields (those of :class:`~fcnseg.models.spec.ModelSpec`):
        name: one of ``MODELS`` (fcn32s, fcn16s, fcn8s, fcn8s_atonce).
        backbone: one of ``BACKBONES`` (vgg16, vgg16_bn, alexnet, caffenet, googlenet, resnet50, resnet101).
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
        normalization: how each input is normalised (:mod:`fcnseg.normalization`; default ImageNet's).
        transform_input: GoogLeNet only: torchvision's re-normalisation for its ImageNet weights.
        classes: the :class:`~fcnseg.data.info.DatasetInfo` the net scores (names, palette), if known.
    """
    spec = name.replace(**fields) if isinstance(name, ModelSpec) else ModelSpec(name, **fields)
    # At width 1 and up to 256 classes the largest net holds 134M weights (540 MB; 268M more with a learnable x32
    # upsampling of 256 classes); a wider one, or one of more classes, is weighed first.
    if spec.width > 1 or sum(spec.head_classes) > MANY_CLASSES:
        _refuse_beyond_memory(spec)
    model = _assemble(spec)
    model.spec = spec
    return model


MANY_CLASSES = 256


def _assemble(spec: ModelSpec) -> FCN:
    options = {"transform_input": True} if spec.transform_input else {}
    make = lambda: BACKBONES[spec.backbone](spec.width, reference=spec.geometry == "reference", **options)  # noqa: E731
    net = make() if len(spec.inputs) == 1 else LateFusion({name: make() for name in spec.inputs})
    model = FCN(net, spec.num_classes, head=MODELS[spec.name], geometry=spec.geometry,
                learnable_upsampling=spec.learnable_upsampling, extra_heads=spec.extra_heads)
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = spec.dropout
    return model


def _refuse_beyond_memory(spec: ModelSpec) -> None:
    """A LimitError, before any weight is made, for a net whose weights alone exceed the memory free now (width=100
    asked for 570 billion weights, and failed in torch's allocator with a traceback)."""
    with torch.device("meta"):  # shapes only: nothing allocated
        shapes = _assemble(spec)
    need = 4 * sum(tensor.numel() for tensor in (*shapes.parameters(), *shapes.buffers()))
    free = available_bytes()
    if need > free:
        classes = count_text(spec.head_classes)
        squared = " (a learnable upsampling grows with the square of the classes)" if spec.learnable_upsampling else ""
        raise LimitError(f"a {spec.name} on {spec.backbone} at width {spec.width:g} for {classes} classes holds "
                         f"{format_bytes(need)} of weights, more than the {format_bytes(free)} of memory free: width 1 "
                         f"is the paper's net (0.25 trains on a CPU), VOC has 21 classes{squared}")


__all__ = ["BACKBONES", "FCN", "HEADS", "INPUTS", "MODELS", "ModelSpec", "build_model"]
