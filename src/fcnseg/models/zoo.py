"""The authors' 14 released FCNs (fcn.berkeleyvision.org): where each .caffemodel lives, and how it becomes
an fcnseg net with exactly the authors' function.

The VOC and PASCAL-Context nets are VGG16 FCNs in the reference geometry; their Caffe layer names are the
names pytorch-fcn kept, so the weights go through the same renaming. The at-once FCN-8s carries its fixed
skip scaling as two Scale layers (0.01 on pool4, 0.0001 on pool3), checked here against fcnseg's constants.
FCN-AlexNet is CaffeNet (grouped convolutions, LRN) with a 63-wide x32 upsampling, fcnseg's ``caffenet``
backbone. The SIFT Flow nets score two tasks from one trunk: their ``*_sem`` layers become the net's first
head (33 semantic classes) and their ``*_geo`` layers its second (3 geometric classes); their input is
Caffe-normalised with SIFT Flow's own mean. The NYUDv2 nets read a colour image (their own BGR mean), the
HHA encoding of a depth map (``hha:`` normalisation), or both: the colour-HHA net's two VGG16s become a
:class:`~fcnseg.models.backbones.LateFusion` backbone whose one score layer holds both streams' 0.5-weighted
score layers side by side.

The authors published no checksums for these files, and they could not be fetched on the machine fcnseg
is developed on (no network), so the entries below carry no md5: ``fcnseg download`` says so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fcnseg.data.info import NYUD, PASCAL_CONTEXT, SIFTFLOW, VOC, DatasetInfo, count_text
from fcnseg.errors import ConfigError, WeightsError
from fcnseg.models.caffe import open_caffemodel
from fcnseg.models.fcn import ATONCE_SCALES, FCN
from fcnseg.models.spec import ModelSpec
from fcnseg.models.weights import build_on_meta, load_authors_state
from fcnseg.normalization import caffe_normalization

_HOST = "http://dl.caffe.berkeleyvision.org"
# SIFT Flow: the BGR mean of its images (the authors' data layer) and where each head's layers go.
_SIFTFLOW = {"info": SIFTFLOW, "normalization": caffe_normalization((114.578, 115.294, 108.353)),
             "heads": {"_sem": "", "_geo": "extra_heads.0."}}
# NYUDv2: the colour images' BGR mean and the HHA images' mean (the authors' data layer). The colour-HHA net
# runs one VGG16 per input (layers named conv1_1color, ..., conv1_1hha, ...) and sums their score_fr layers,
# each weighted 0.5 (its Eltwise layer), before the x32 upsampling.
_NYUD_COLOR, _NYUD_HHA = caffe_normalization((116.190, 97.203, 92.318)), "hha:132.431,94.076,118.477"
_LATE_FUSION = {"streams": {"color": "trunks.rgb.", "hha": "trunks.hha."},
                "fused": {"score_fr": (("score_frcolor", 0.5), ("score_frhha", 0.5))}}
# name -> file URL, the fcnseg net it becomes (None: not convertible yet) and its classes.
CAFFE_NETS: dict[str, dict] = {
    "voc-fcn32s": {"url": f"{_HOST}/fcn32s-heavy-pascal.caffemodel", "model": "fcn32s", "info": VOC},
    "voc-fcn16s": {"url": f"{_HOST}/fcn16s-heavy-pascal.caffemodel", "model": "fcn16s", "info": VOC},
    "voc-fcn8s": {"url": f"{_HOST}/fcn8s-heavy-pascal.caffemodel", "model": "fcn8s", "info": VOC},
    "voc-fcn8s-atonce": {"url": f"{_HOST}/fcn8s-atonce-pascal.caffemodel", "model": "fcn8s_atonce", "info": VOC},
    "voc-fcn-alexnet": {"url": f"{_HOST}/fcn-alexnet-pascal.caffemodel", "model": "fcn32s", "backbone": "caffenet",
                        "info": VOC},
    "nyud-fcn32s-color": {"url": f"{_HOST}/nyud-fcn32s-color-heavy.caffemodel", "model": "fcn32s", "info": NYUD,
                          "normalization": _NYUD_COLOR},
    "nyud-fcn32s-hha": {"url": f"{_HOST}/nyud-fcn32s-hha-heavy.caffemodel", "model": "fcn32s", "info": NYUD,
                        "inputs": ("hha",), "normalization": _NYUD_HHA},
    "nyud-fcn32s-color-hha": {"url": f"{_HOST}/nyud-fcn32s-color-hha-heavy.caffemodel", "model": "fcn32s",
                              "info": NYUD, "inputs": ("rgb", "hha"), "normalization": f"{_NYUD_COLOR}+{_NYUD_HHA}",
                              **_LATE_FUSION},
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
    info: DatasetInfo = entry["info"]
    state, scales = _read_state(path, entry)
    if entry["model"] == "fcn8s_atonce" and scales != set(_SKIP_SCALES):
        raise WeightsError(f"{path} lacks the at-once net's {', '.join(sorted(set(_SKIP_SCALES) - scales))} layer(s): "
                           "is it voc-fcn8s (staged) rather than voc-fcn8s-atonce?")
    _check_stride(state, name, path)
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
    first = next((k for k in state if k.endswith(f"{first}.weight")), "")  # a trunk's first layer in a fused net
    width = state[first].shape[0] / channels if first else 1.0  # 1.0: the authors' nets
    spec = ModelSpec(entry["model"], backbone, info.num_classes, width, extra_heads=info.head_classes[1:],
                     inputs=entry.get("inputs", ("rgb",)), normalization=entry.get("normalization", "caffe"),
                     classes=info)
    model = build_on_meta(spec)
    try:
        load_authors_state(model, state)
    except WeightsError as error:
        raise WeightsError(f"{path} does not hold {name}: {error}") from None
    return model.eval(), info


def _read_state(path: str | Path, entry: dict) -> tuple[dict[str, torch.Tensor], set[str]]:
    """The file's blobs by fcnseg-side name (each head's layers renamed, see ``heads``), and the names of the
    at-once net's Scale layers it holds (checked)."""
    state: dict[str, torch.Tensor] = {}
    scales = set()
    fused = {part: target for target, parts in entry.get("fused", {}).items() for part, _ in parts}
    renames = {**entry.get("heads", {}), **entry.get("streams", {})}  # layer name suffix -> fcnseg prefix
    with open_caffemodel(path) as (_, layers):
        for layer in layers:
            if layer.name in _SKIP_SCALES:
                _check_scale(layer.name, layer.blobs, entry["model"], path)
                scales.add(layer.name)
            elif layer.blobs:
                suffix = next((s for s in renames if layer.name.endswith(s)), None)
                name = layer.name if suffix is None or layer.name in fused else (
                    renames[suffix] + layer.name.removesuffix(suffix))
                state[f"{name}.weight"] = torch.from_numpy(np.array(layer.blobs[0], dtype=np.float32))
                if len(layer.blobs) > 1:  # Caffe biases are 1-d (legacy files store them as 1 x 1 x 1 x N)
                    state[f"{name}.bias"] = torch.from_numpy(np.array(layer.blobs[1], np.float32).ravel())
    for target, parts in entry.get("fused", {}).items():
        _fuse(state, target, parts, path)
    return state, scales


def _fuse(state: dict[str, torch.Tensor], target: str, parts: tuple[tuple[str, float], ...], path: str | Path) -> None:
    """Replace score layers whose weighted outputs the authors' net sums (one per input stream) by the one
    layer over the stacked streams that computes that sum: weights side by side, biases summed."""
    missing = [name for name, _ in parts if f"{name}.weight" not in state or f"{name}.bias" not in state]
    if missing:
        raise WeightsError(f"{path} has no {', '.join(missing)} layer: is it the right file?")
    weights = [state.pop(f"{name}.weight") * coefficient for name, coefficient in parts]
    biases = [state.pop(f"{name}.bias") * coefficient for name, coefficient in parts]
    if len({w.shape[0] for w in weights}) != 1:
        raise WeightsError(f"{path}: {', '.join(n for n, _ in parts)} score different numbers of classes")
    state[f"{target}.weight"] = torch.cat(weights, 1)
    state[f"{target}.bias"] = torch.stack(biases).sum(0)


def _check_stride(state: dict[str, torch.Tensor], name: str, path: str | Path) -> None:
    """The file's final upsampling (upscore8 / upscore16 / upscore) must be the net's: say which net it is."""
    found = next((model for layer, model in (("upscore8", "fcn8s"), ("upscore16", "fcn16s"), ("upscore", "fcn32s"))
                  if f"{layer}.weight" in state), None)
    wanted = CAFFE_NETS[name]["model"].removesuffix("_atonce")
    if found is not None and found != wanted:
        family = name.rsplit("-", 1)[0] if name.startswith(("siftflow", "pascalcontext")) else None
        guess = f": is it {family}-{found}?" if family else ""
        title = lambda model: "FCN-" + model.removeprefix("fcn")  # noqa: E731
        raise WeightsError(f"{path} holds an {title(found)} net, but {name} is an {title(wanted)}{guess}")


def _check_scale(layer: str, blobs: list[np.ndarray], model: str, path: str | Path) -> None:
    """The at-once net's Scale layers must hold its fixed skip scaling, which fcnseg builds in."""
    expected = _SKIP_SCALES[layer]
    if model != "fcn8s_atonce":
        raise WeightsError(f"{path} has a {layer} layer, which only the at-once FCN-8s has: is it voc-fcn8s-atonce?")
    if len(blobs) != 1 or not np.allclose(blobs[0], expected, rtol=1e-6, atol=0):
        raise WeightsError(f"{path}: {layer} should scale by the fixed {expected}, but holds other values")
