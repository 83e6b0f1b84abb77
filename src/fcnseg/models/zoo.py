"""The authors' 14 released FCNs (fcn.berkeleyvision.org): where each .caffemodel lives, and how it becomes
an fcnseg net with exactly the authors' function.

The VOC and PASCAL-Context nets are VGG16 FCNs in the reference geometry; their Caffe layer names are the
names pytorch-fcn kept, so the weights go through the same renaming. The at-once FCN-8s carries its fixed
skip scaling as two Scale layers (0.01 on pool4, 0.0001 on pool3), checked here against fcnseg's constants.
FCN-AlexNet is CaffeNet (grouped convolutions, LRN) with a 63-wide x32 upsampling, fcnseg's ``caffenet``
backbone. The NYUDv2 nets (their own input means, HHA input, two-stream late fusion) and the SIFT Flow nets
(two heads) are listed with their files but cannot be converted yet: converting them is refused with that
reason.

The authors published no checksums for these files, and they could not be fetched on the machine fcnseg
is developed on (no network), so the entries below carry no md5: ``fcnseg download`` says so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fcnseg.data.info import PASCAL_CONTEXT, VOC, DatasetInfo
from fcnseg.errors import ConfigError, WeightsError
from fcnseg.models.caffe import open_caffemodel
from fcnseg.models.fcn import ATONCE_SCALES, FCN
from fcnseg.models.weights import build_on_meta, load_authors_state

_HOST = "http://dl.caffe.berkeleyvision.org"
_NOT_YET = {
    "nyud": "the NYUDv2 nets need their own input means, HHA input and two-stream fusion, not built yet",
    "siftflow": "the SIFT Flow nets have two score heads (semantic and geometric), not built yet",
}
# name -> file URL, the fcnseg net it becomes (None: not convertible yet) and its classes.
CAFFE_NETS: dict[str, dict] = {
    "voc-fcn32s": {"url": f"{_HOST}/fcn32s-heavy-pascal.caffemodel", "model": "fcn32s", "info": VOC},
    "voc-fcn16s": {"url": f"{_HOST}/fcn16s-heavy-pascal.caffemodel", "model": "fcn16s", "info": VOC},
    "voc-fcn8s": {"url": f"{_HOST}/fcn8s-heavy-pascal.caffemodel", "model": "fcn8s", "info": VOC},
    "voc-fcn8s-atonce": {"url": f"{_HOST}/fcn8s-atonce-pascal.caffemodel", "model": "fcn8s_atonce", "info": VOC},
    "voc-fcn-alexnet": {"url": f"{_HOST}/fcn-alexnet-pascal.caffemodel", "model": "fcn32s", "backbone": "caffenet",
                        "info": VOC},
    "nyud-fcn32s-color": {"url": f"{_HOST}/nyud-fcn32s-color-heavy.caffemodel", "model": None, "why": _NOT_YET["nyud"]},
    "nyud-fcn32s-hha": {"url": f"{_HOST}/nyud-fcn32s-hha-heavy.caffemodel", "model": None, "why": _NOT_YET["nyud"]},
    "nyud-fcn32s-color-hha": {"url": f"{_HOST}/nyud-fcn32s-color-hha-heavy.caffemodel", "model": None,
                              "why": _NOT_YET["nyud"]},
    "siftflow-fcn32s": {"url": f"{_HOST}/siftflow-fcn32s-heavy.caffemodel", "model": None,
                        "why": _NOT_YET["siftflow"]},
    "siftflow-fcn16s": {"url": f"{_HOST}/siftflow-fcn16s-heavy.caffemodel", "model": None,
                        "why": _NOT_YET["siftflow"]},
    "siftflow-fcn8s": {"url": f"{_HOST}/siftflow-fcn8s-heavy.caffemodel", "model": None, "why": _NOT_YET["siftflow"]},
    "pascalcontext-fcn32s": {"url": f"{_HOST}/pascalcontext-fcn32s-heavy.caffemodel", "model": "fcn32s",
                             "info": PASCAL_CONTEXT},
    "pascalcontext-fcn16s": {"url": f"{_HOST}/pascalcontext-fcn16s-heavy.caffemodel", "model": "fcn16s",
                             "info": PASCAL_CONTEXT},
    "pascalcontext-fcn8s": {"url": f"{_HOST}/pascalcontext-fcn8s-heavy.caffemodel", "model": "fcn8s",
                            "info": PASCAL_CONTEXT},
}
_SKIP_SCALES = {"scale_pool4": ATONCE_SCALES[0], "scale_pool3": ATONCE_SCALES[1]}


def fcn_from_caffemodel(path: str | Path, name: str) -> tuple[FCN, DatasetInfo]:
    """The net ``name`` (a key of :data:`CAFFE_NETS`) with the weights of the .caffemodel at ``path``.

    Every expected layer and shape is checked (one message lists what is missing, extra or of the wrong
    shape); the result computes the authors' function in fcnseg's reference geometry, on Caffe-normalised
    (BGR, mean-subtracted) input.
    """
    if name not in CAFFE_NETS:
        raise ConfigError(f"unknown net {name!r}; the authors' nets are {', '.join(CAFFE_NETS)}")
    entry = CAFFE_NETS[name]
    if entry["model"] is None:
        raise WeightsError(f"{name} cannot be converted yet: {entry['why']}")
    info: DatasetInfo = entry["info"]
    with open_caffemodel(path) as (_, layers):
        state: dict[str, torch.Tensor] = {}
        scales = set()
        for layer in layers:
            if layer.name in _SKIP_SCALES:
                _check_scale(layer.name, layer.blobs, entry["model"], path)
                scales.add(layer.name)
            elif layer.blobs:
                state[f"{layer.name}.weight"] = torch.from_numpy(np.array(layer.blobs[0], dtype=np.float32))
                if len(layer.blobs) > 1:  # Caffe biases are 1-d (legacy files store them as 1 x 1 x 1 x N)
                    state[f"{layer.name}.bias"] = torch.from_numpy(np.array(layer.blobs[1], np.float32).ravel())
    if entry["model"] == "fcn8s_atonce" and scales != set(_SKIP_SCALES):
        raise WeightsError(f"{path} lacks the at-once net's {', '.join(sorted(set(_SKIP_SCALES) - scales))} layer(s): "
                           "is it voc-fcn8s (staged) rather than voc-fcn8s-atonce?")
    classes = state["score_fr.weight"].shape[0] if "score_fr.weight" in state else None
    if classes != info.num_classes:
        raise WeightsError(f"{path} scores {classes} classes, but {name} has {info.num_classes} ({info.name}): "
                           "is it the right file?")
    backbone = entry.get("backbone", "vgg16")
    first, channels = ("conv1", 96) if backbone == "caffenet" else ("conv1_1", 64)
    width = state[f"{first}.weight"].shape[0] / channels if f"{first}.weight" in state else 1.0  # 1.0: the authors'
    model = build_on_meta(entry["model"], info.num_classes, width, backbone)
    try:
        load_authors_state(model, state)
    except WeightsError as error:
        raise WeightsError(f"{path} does not hold {name}: {error}") from None
    return model.eval(), info


def _check_scale(layer: str, blobs: list[np.ndarray], model: str, path: str | Path) -> None:
    """The at-once net's Scale layers must hold its fixed skip scaling, which fcnseg builds in."""
    expected = _SKIP_SCALES[layer]
    if model != "fcn8s_atonce":
        raise WeightsError(f"{path} has a {layer} layer, which only the at-once FCN-8s has: is it voc-fcn8s-atonce?")
    if len(blobs) != 1 or not np.allclose(blobs[0], expected, rtol=1e-6, atol=0):
        raise WeightsError(f"{path}: {layer} should scale by the fixed {expected}, but holds other values")
