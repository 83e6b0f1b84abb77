"""The authors' 14 released FCNs (fcn.berkeleyvision.org): where each .caffemodel lives, and how it becomes
an fcnseg net with exactly the authors' function.

The VOC and PASCAL-Context nets are VGG16 FCNs in the reference geometry; their Caffe layer names are the
names pytorch-fcn kept, so the weights go through the same renaming. The at-once FCN-8s carries its fixed
skip scaling as two Scale layers (0.01 on pool4, 0.0001 on pool3), checked here against fcnseg's constants.
FCN-AlexNet is CaffeNet (grouped convolutions, LRN) with a 63-wide x32 upsampling, fcnseg's ``caffenet``
backbone. The SIFT Flow nets score two tasks from one trunk: their ``*_sem`` layers become the net's first
head (33 semantic classes) and their ``*_geo`` layers its second (3 geometric classes); their input is
Caffe-normalised with SIFT Flow's own mean. The NYUDv2 nets (their own input means, HHA input, two-stream
late fusion) are listed with their files but cannot be converted yet: converting them is refused with that
reason.

The authors published no checksums for these files, and they could not be fetched on the machine fcnseg
is developed on (no network), so the entries below carry no md5: ``fcnseg download`` says so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fcnseg.data.info import PASCAL_CONTEXT, SIFTFLOW, VOC, DatasetInfo, count_text
from fcnseg.errors import ConfigError, WeightsError
from fcnseg.models.caffe import open_caffemodel
from fcnseg.models.fcn import ATONCE_SCALES, FCN
from fcnseg.models.weights import build_on_meta, load_authors_state
from fcnseg.normalization import caffe_normalization

_HOST = "http://dl.caffe.berkeleyvision.org"
_NOT_YET = {
    "nyud": "the NYUDv2 nets need their own input means, HHA input and two-stream fusion, not built yet",
}
# SIFT Flow: the BGR mean of its images (the authors' data layer) and where each head's layers go.
_SIFTFLOW = {"info": SIFTFLOW, "mean": (114.578, 115.294, 108.353), "heads": {"_sem": "", "_geo": "extra_heads.0."}}
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
    "siftflow-fcn32s": {"url": f"{_HOST}/siftflow-fcn32s-heavy.caffemodel", "model": "fcn32s", **_SIFTFLOW},
    "siftflow-fcn16s": {"url": f"{_HOST}/siftflow-fcn16s-heavy.caffemodel", "model": "fcn16s", **_SIFTFLOW},
    "siftflow-fcn8s": {"url": f"{_HOST}/siftflow-fcn8s-heavy.caffemodel", "model": "fcn8s", **_SIFTFLOW},
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
    state, scales = _read_state(path, entry)
    if entry["model"] == "fcn8s_atonce" and scales != set(_SKIP_SCALES):
        raise WeightsError(f"{path} lacks the at-once net's {', '.join(sorted(set(_SKIP_SCALES) - scales))} layer(s): "
                           "is it voc-fcn8s (staged) rather than voc-fcn8s-atonce?")
    heads = entry.get("heads", {"": ""})
    if any(f"{prefix}score_fr.weight" not in state for prefix in heads.values()):
        raise WeightsError(f"{path} has no {' and no '.join(f'score_fr{suffix}' for suffix in heads)} layer, which "
                           f"{name} has: is it the right file?")
    classes = tuple(state[f"{prefix}score_fr.weight"].shape[0] for prefix in heads.values())
    if classes != info.head_classes:
        raise WeightsError(f"{path} scores {count_text(classes)} classes, but {name} has "
                           f"{count_text(info.head_classes)} ({info.name}): is it the right file?")
    backbone = entry.get("backbone", "vgg16")
    first, channels = ("conv1", 96) if backbone == "caffenet" else ("conv1_1", 64)
    width = state[f"{first}.weight"].shape[0] / channels if f"{first}.weight" in state else 1.0  # 1.0: the authors'
    model = build_on_meta(entry["model"], info.num_classes, width, backbone, extra_heads=info.head_classes[1:])
    try:
        load_authors_state(model, state)
    except WeightsError as error:
        raise WeightsError(f"{path} does not hold {name}: {error}") from None
    if "mean" in entry:
        model.backbone.input_normalization = caffe_normalization(entry["mean"])
    return model.eval(), info


def _read_state(path: str | Path, entry: dict) -> tuple[dict[str, torch.Tensor], set[str]]:
    """The file's blobs by fcnseg-side name (each head's layers renamed, see ``heads``), and the names of the
    at-once net's Scale layers it holds (checked)."""
    state: dict[str, torch.Tensor] = {}
    scales = set()
    heads = entry.get("heads", {})
    with open_caffemodel(path) as (_, layers):
        for layer in layers:
            if layer.name in _SKIP_SCALES:
                _check_scale(layer.name, layer.blobs, entry["model"], path)
                scales.add(layer.name)
            elif layer.blobs:
                suffix = next((s for s in heads if layer.name.endswith(s)), None)
                name = layer.name if suffix is None else heads[suffix] + layer.name.removesuffix(suffix)
                state[f"{name}.weight"] = torch.from_numpy(np.array(layer.blobs[0], dtype=np.float32))
                if len(layer.blobs) > 1:  # Caffe biases are 1-d (legacy files store them as 1 x 1 x 1 x N)
                    state[f"{name}.bias"] = torch.from_numpy(np.array(layer.blobs[1], np.float32).ravel())
    return state, scales


def _check_scale(layer: str, blobs: list[np.ndarray], model: str, path: str | Path) -> None:
    """The at-once net's Scale layers must hold its fixed skip scaling, which fcnseg builds in."""
    expected = _SKIP_SCALES[layer]
    if model != "fcn8s_atonce":
        raise WeightsError(f"{path} has a {layer} layer, which only the at-once FCN-8s has: is it voc-fcn8s-atonce?")
    if len(blobs) != 1 or not np.allclose(blobs[0], expected, rtol=1e-6, atol=0):
        raise WeightsError(f"{path}: {layer} should scale by the fixed {expected}, but holds other values")
