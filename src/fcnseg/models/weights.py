"""Weight import: ImageNet classifiers (torchvision layout), the authors' FCNs (pytorch-fcn layout), and
staged initialisation of a finer FCN from a coarser one.

Every file is read with ``torch.load(..., weights_only=True)``: a file that needs pickled code to load is
refused, never executed.
"""

from __future__ import annotations

import pickle
import re
import urllib.parse
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fcnseg.data.info import VOC
from fcnseg.errors import ConfigError, WeightsError, require_model_file
from fcnseg.models.backbones import VGG, AlexNet, Backbone, CaffeNet, GoogLeNet, LateFusion
from fcnseg.models.fcn import FCN
from fcnseg.models.spec import TRANSFORM_INPUT_BACKBONES, ModelSpec
from fcnseg.models.upsample import Upsample

# torchvision's ImageNet weights; the 8 hex digits in each file name are the start of its SHA-256.
TORCHVISION_URLS = {
    "vgg16": "https://download.pytorch.org/models/vgg16-397923af.pth",
    "vgg16_bn": "https://download.pytorch.org/models/vgg16_bn-6c64b313.pth",
    "alexnet": "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    "googlenet": "https://download.pytorch.org/models/googlenet-1378be20.pth",
    "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    "resnet101": "https://download.pytorch.org/models/resnet101-63fe2227.pth",
}

# The authors' Caffe models as converted by pytorch-fcn: Google Drive links and MD5s from its sources, and the
# file names pytorch-fcn caches them under (every link ends in "uc", so the URL cannot name the file).
# Drive may ask for a confirmation on large files: download in a browser and pass the local path then.
PYTORCH_FCN_FILES = {
    "fcn32s": ("https://drive.google.com/uc?id=11k2Q0bvRQgQbT6-jYWeh6nmAsWlSCY3f",
               "d3eb467a80e7da0468a20dfcbc13e6c8", "fcn32s_from_caffe.pth"),
    "fcn16s": ("https://drive.google.com/uc?id=0B9P1L--7Wd2vVGE3TkRMbWlNRms",
               "991ea45d30d632a01e5ec48002cac617", "fcn16s_from_caffe.pth"),
    "fcn8s": ("https://drive.google.com/uc?id=1ieXWyoG68xqoHJPWdyrDyaIaaWlfmUxI",
              "de93e540ec79512f8770033849c8ae89", "fcn8s_from_caffe.pth"),
    "fcn8s_atonce": ("https://drive.google.com/uc?id=0B9P1L--7Wd2vblE1VUIxV1o2d2M",
                     "bfed4437e941fef58932891217fe6464", "fcn8s-atonce_from_caffe.pth"),
}
# pytorch-fcn's class names, as its training checkpoints record them ("arch").
PYTORCH_FCN_ARCHS = {"FCN32s": "fcn32s", "FCN16s": "fcn16s", "FCN8s": "fcn8s", "FCN8sAtOnce": "fcn8s_atonce"}

# Caffe layer names of VGG16's convolutions, in order (pytorch-fcn keeps them).
VGG16_CONV_NAMES = ("conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
                    "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3")


def file_kind(path: str | Path) -> str:
    """What a model file holds, from its bytes: "checkpoint" (a torch.save archive), "torchscript",
    "onnx", "pickle" (a plain or legacy pickle) or "unknown"."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if any(n.endswith("/extra/fcnseg.json") or "/code/" in n for n in names):
            return "torchscript"
        return "checkpoint" if any(n.endswith("/data.pkl") for n in names) else "unknown"
    with open(path, "rb") as handle:
        first = handle.read(1)
    # ONNX files are protobuf ModelProtos, which begin with field 1 (ir_version) as a varint: byte 0x08.
    return {b"\x80": "pickle", b"\x08": "onnx"}.get(first, "unknown")


def _plain(text: str) -> str:
    """``text`` without terminal colour codes (torch puts some in its messages)."""
    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)


_LOAD_ERRORS = (pickle.UnpicklingError, RuntimeError, EOFError, OSError, KeyError, ValueError)


def load_torch_file(path: str | Path, mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; every failure a WeightsError saying what the file is.

    Files that need pickled code are refused, never run. ``mmap``: tensors are mapped, not read, until used
    (for a look at a file's metadata; torch maps only its zip format, so other files are read whole).
    """
    path = require_model_file(path, "weights file", (".pth", ".pt"))
    if path.stat().st_size == 0:
        raise WeightsError(f"{path} is empty (0 bytes): an interrupted download or copy? Fetch it again")
    if not mmap:  # a look at the metadata reads too little to be worth the whole file's checksums
        refuse_damaged_archive(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # e.g. "Detected pickle protocol 4 in the checkpoint"
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except Exception as error:
        kind = file_kind(path)
        # Bytes of no torch format make the unpickler fail in any way (a text file: IndexError); a file of a
        # torch format that fails in an unexpected way is a bug, and keeps its traceback.
        if kind != "unknown" and not isinstance(error, _LOAD_ERRORS):
            raise
        if kind in ("checkpoint", "pickle") and isinstance(error, pickle.UnpicklingError):
            lines = [line.strip() for line in _plain(str(error)).splitlines()]
            detail = next((line for line in lines if "GLOBAL" in line or "Unsupported" in line), lines[0])
            raise WeightsError(
                f"{path} needs pickled Python code (or pickle features) that safe loading refuses, and fcnseg "
                f"never runs code from a weights file ({detail}). If you trust the file, re-save just its "
                "tensors: torch.save(obj.state_dict(), 'clean.pth')") from None
        hint = {"onnx": ": it is an ONNX model (fcnseg predict, eval and serve read ONNX exports; elsewhere "
                        "give the checkpoint it was exported from)",
                "torchscript": ": it is a TorchScript export (fcnseg predict, eval and serve read it; elsewhere "
                               "give the checkpoint it was exported from)"}.get(kind, "; is it truncated or of "
                                                                                   "another format?")
        raise WeightsError(f"{path} is not a readable PyTorch weights file{hint}") from None


def refuse_damaged_archive(path: Path) -> None:
    """A WeightsError naming ``path`` and its first damaged entry where a zip archive (torch's format of
    checkpoints and TorchScript exports) fails its CRC-32 checksums: torch reads the bytes without checking
    them, so flipped bytes in the weights loaded without a word and predicted wrong labels. Other files pass."""
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except zipfile.BadZipFile:
        return  # not an archive (a legacy torch file, another format): its reader says what it is
    except (OSError, EOFError, zipfile.LargeZipFile, NotImplementedError) as error:
        damaged = f"({type(error).__name__}: {error})"
    if damaged is not None:
        raise WeightsError(f"{path} is damaged: {damaged} fails its checksum, so the file changed after it was "
                           "written (a failing disk or copy?); fetch, copy or export it again")


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict safely (``weights_only=True``), unwrapping training checkpoints
    (``{"model_state_dict": ...}``, ``{"state_dict": ...}``, ``{"model": ...}``)."""
    return _state_dict_of(load_torch_file(path), path)


def _state_dict_of(data: Any, path: str | Path) -> dict[str, torch.Tensor]:
    for key in ("model_state_dict", "state_dict", "model"):
        if isinstance(data, Mapping) and key in data and isinstance(data[key], Mapping):
            data = data[key]
            break
    if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise WeightsError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return dict(data)


URL_SCHEMES = ("http", "https")  # the URLs fcnseg downloads weights from


def resolve_weights(source: str | Path, sha256: str | None = None, md5: str | None = None,
                    file_name: str | None = None) -> Path:
    """A local file path as is; an http(s) URL downloaded once into torch hub's cache (as ``file_name``, or
    the URL's last part). A cached file is checked against ``sha256``/``md5`` every time it is used. A URL of
    another scheme (``file://``, ``ftp://``, ...) is refused: as a path it would be mangled ("file:/etc/x")."""
    text = str(source)
    # Two letters at least: "C://x" is a Windows path, not a URL.
    scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]+)://", text) if isinstance(source, str) else None
    if scheme and scheme.group(1).lower() in URL_SCHEMES:
        from fcnseg.transfer import cached_download

        return cached_download(text, sha256=sha256, md5=md5, file_name=file_name)
    if scheme:
        local = urllib.parse.unquote(urllib.parse.urlparse(text).path)
        hint = f"give the file's path instead ({local})" if scheme.group(1).lower() == "file" else \
            "download the file another way and give its path"
        raise ConfigError(f"{text}: {scheme.group(1)}:// URLs are not supported; fcnseg downloads "
                          f"{' and '.join(f'{s}://' for s in URL_SCHEMES)} URLs: {hint}")
    return Path(source)


def _sha_prefix_from_url(url: str) -> str | None:
    stem = url.rsplit("/", 1)[-1].split(".")[0]
    tail = stem.rsplit("-", 1)[-1]
    return tail if len(tail) >= 8 and all(c in "0123456789abcdef" for c in tail) else None


# --------------------------------------------------------------------------------- torchvision / ImageNet
def convolutionalize(state_dict: Mapping[str, torch.Tensor], backbone: Backbone) -> dict[str, torch.Tensor]:
    """Map a torchvision classifier state dict onto ``backbone``'s names.

    Fully connected layers become convolutions by reshaping (same memory order): VGG16's classifier.0
    (4096 x 25088) -> fc6 (4096 x 512 x 7 x 7), classifier.3 -> fc7 (4096 x 4096 x 1 x 1); AlexNet's
    classifier.1/4 likewise (6 x 6 fc6). The 1000-way ImageNet layer, ResNet's ``fc`` and GoogLeNet's
    auxiliary classifiers are not part of a backbone and are left out.
    """
    own = backbone.state_dict()
    fc_sources = {VGG: ("classifier.0", "classifier.3"), AlexNet: ("classifier.1", "classifier.4")}
    converted = {}
    for key, value in state_dict.items():
        if key.startswith(("aux1.", "aux2.", "fc.")) or key.startswith("classifier."):
            continue
        converted[key] = value
    for kind, (fc6, fc7) in fc_sources.items():
        if isinstance(backbone, kind):
            for source, target in ((fc6, "fc6"), (fc7, "fc7")):
                for suffix in ("weight", "bias"):
                    name = f"{source}.{suffix}"
                    if name not in state_dict:
                        raise WeightsError(f"ImageNet weights lack {name}: not a torchvision "
                                           f"{type(backbone).__name__} state dict?")
                    expected = own[f"{target}.{suffix}"].shape
                    value = state_dict[name]
                    if value.numel() != expected.numel():
                        raise WeightsError(f"{name} has shape {tuple(value.shape)}, which cannot become "
                                           f"{target} {tuple(expected)}: wrong backbone or width?")
                    converted[f"{target}.{suffix}"] = value.reshape(expected)
    return converted


def check_fit(own: Mapping[str, torch.Tensor], state_dict: Mapping[str, torch.Tensor], what: str,
              target: str = "this model", hint: str = "Check the backbone and width.") -> None:
    """Raise one readable line listing the missing, unexpected and mis-shaped entries of ``state_dict``
    against ``own`` (BatchNorm's step counters may be missing)."""
    missing = [k for k in own if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [f"{k}: {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}"
                  for k in own if k in state_dict and state_dict[k].shape != own[k].shape]
    parts = [f"{label} ({len(items)}): " + ", ".join(items[:5]) + (" ..." if len(items) > 5 else "")
             for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched))
             if items]
    if parts:
        raise WeightsError(f"{what} do not fit {target}: " + "; ".join(parts) + (f". {hint}" if hint else ""))


def default_imagenet_problem(backbone: str, width: float) -> str | None:
    """Why torchvision's own ImageNet weights (``imagenet_weights: default``) cannot start a ``backbone`` net of
    ``width``, or None when they can: known before anything is downloaded."""
    if backbone not in TORCHVISION_URLS:
        return (f"torchvision has no ImageNet weights for {backbone} (it has them for {', '.join(TORCHVISION_URLS)}): "
                "choose one of those backbones, give a weights file or URL, or train from scratch (no ImageNet "
                "weights)")
    if width != 1:
        return (f"torchvision's ImageNet weights for {backbone} are for the full-width net (width 1), not width "
                f"{width:g}: train at width 1, train from scratch (no ImageNet weights), or give a file or URL of "
                f"weights for a {backbone} of width {width:g}")
    return None


def imagenet_spec(spec: ModelSpec) -> ModelSpec:
    """``spec`` for a net started from torchvision's ImageNet weights: ImageNet normalisation for every input,
    and for GoogLeNet torchvision's re-normalisation of its input (its weights were trained on mean 0.5 /
    std 0.5 inputs), so that the spec, and every checkpoint of the net, says so."""
    return spec.replace(normalization="imagenet", transform_input=spec.backbone in TRANSFORM_INPUT_BACKBONES)


def fcn_from_imagenet(spec: ModelSpec, source: str | Path | None = None) -> FCN:
    """The net of ``imagenet_spec(spec)`` with its backbone's ImageNet classifier weights (the score layers
    as a new net has them). ``source``: a local file, a URL, or None for torchvision's official file of the
    backbone (downloaded once into torch hub's cache; offline machines get a message saying where to put it).
    """
    from fcnseg.models import build_model  # the zoo builds nets; weights only fill them

    model = build_model(imagenet_spec(spec))
    load_imagenet_weights(model, source)
    return model


def load_imagenet_weights(model: FCN | Backbone, source: str | Path | None = None) -> None:
    """Load torchvision ImageNet classifier weights into a backbone (or an FCN's backbone), which must already
    read its input as they expect (an FCN built from :func:`imagenet_spec`; :func:`fcn_from_imagenet` does
    both). ``source`` as :func:`fcn_from_imagenet`'s."""
    backbone = model.backbone if isinstance(model, FCN) else model
    trunks = list(backbone.trunks.values()) if isinstance(backbone, LateFusion) else [backbone]
    if isinstance(model, FCN) and model.spec != imagenet_spec(model.spec) or any(
            isinstance(trunk, GoogLeNet) and not trunk.transform_input for trunk in trunks):
        raise WeightsError("ImageNet weights need the input the classifier was trained on (ImageNet normalisation; "
                           "GoogLeNet's transform_input): build the net with fcn_from_imagenet(spec)")
    if source is None:
        if not isinstance(model, FCN):
            raise WeightsError("pass the ImageNet weights file or URL: the backbone's name is unknown")
        problem = default_imagenet_problem(model.spec.backbone, model.spec.width)
        if problem:  # before the download (hundreds of MB) of weights that cannot fit
            raise WeightsError(problem)
        source = TORCHVISION_URLS[model.spec.backbone]
    sha = _sha_prefix_from_url(str(source)) if str(source).startswith("http") else None
    state_dict = load_state_dict_file(resolve_weights(source, sha256=sha))
    # A late-fusion net starts each input's trunk (colour and HHA alike) from the same ImageNet weights.
    for trunk in trunks:
        converted = convolutionalize(state_dict, trunk)
        check_fit(trunk.state_dict(), converted, f"ImageNet weights from {source}")
        trunk.load_state_dict(converted, strict=False)


# -------------------------------------------------------------------------------- pytorch-fcn (authors')
def _rename_pytorch_fcn_keys(state_dict: Mapping[str, torch.Tensor], backbone: VGG) -> dict[str, torch.Tensor]:
    """Rename a pytorch-fcn (torchfcn) FCN state dict to the names of an fcnseg VGG16 FCN."""
    conv_index = [i for i, layer in enumerate(backbone.features) if isinstance(layer, nn.Conv2d)]
    renamed = {}
    for key, value in state_dict.items():
        layer, _, suffix = key.partition(".")
        if layer in VGG16_CONV_NAMES:
            renamed[f"backbone.features.{conv_index[VGG16_CONV_NAMES.index(layer)]}.{suffix}"] = value
        elif layer in ("fc6", "fc7"):
            renamed[f"backbone.{key}"] = value
        else:
            renamed[key] = value
    return renamed


def infer_pytorch_fcn_head(state_dict: Mapping[str, torch.Tensor]) -> str:
    """fcn32s / fcn16s / fcn8s from the upsampling layers a pytorch-fcn state dict holds.
    (FCN-8s at-once has the same keys as FCN-8s: see :func:`fcn_from_pytorch_fcn`.)"""
    if "upscore8.weight" in state_dict:
        return "fcn8s"
    if "upscore16.weight" in state_dict:
        return "fcn16s"
    if "upscore.weight" in state_dict:
        return "fcn32s"
    raise WeightsError("not a pytorch-fcn FCN state dict: none of upscore, upscore16, upscore8 is present")


def load_authors_state(model: FCN, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Load the authors' weights, named as in their Caffe nets (pytorch-fcn kept the names), into a
    matching fcnseg FCN (VGG16 or CaffeNet, reference geometry, its spec saying the authors' input
    normalisation) so that it computes the same outputs. The tensors are assigned, not copied: build the
    model on the ``meta`` device (:func:`build_on_meta`) and a 500 MB net is held once."""
    renamed = _authors_names_to_fcnseg(model.backbone, state_dict)
    if model.geometry != "reference":
        raise WeightsError("the authors' weights need geometry='reference' to give the authors' outputs")
    upsamplers = {name: m for name, m in model.named_modules() if isinstance(m, Upsample)}
    kernels = {k: renamed.pop(k) for k in list(renamed) if k.rsplit(".", 1)[0] in upsamplers}
    own = {k: v for k, v in model.state_dict().items() if k.rsplit(".", 1)[0] not in upsamplers}
    check_fit(own, renamed, "the weights")
    missing = set(upsamplers) - {k.rsplit(".", 1)[0] for k in kernels}
    if missing:
        raise WeightsError(f"the weights lack the upsampling kernels {sorted(missing)}: another head?")
    model.load_state_dict({k: v.to(torch.float32) for k, v in renamed.items()}, strict=False, assign=True)
    for key, kernel in kernels.items():
        upsamplers[key.rsplit(".", 1)[0]].load_full_weight(kernel, key)
    empty = [name for name, tensor in model.state_dict().items() if tensor.is_meta]
    if empty:
        raise WeightsError(f"the weights left {', '.join(empty[:5])} without values")


def _authors_names_to_fcnseg(backbone: Backbone, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The authors' layer names (conv1_1, fc6, score_fr, ...) as fcnseg's; a late-fusion net's trunk layers come
    as ``trunks.<input>.<layer>``."""
    if isinstance(backbone, LateFusion):
        renamed = {k: v for k, v in state_dict.items() if not k.startswith("trunks.")}
        for name, trunk in backbone.trunks.items():
            prefix = f"trunks.{name}."
            own = {k.removeprefix(prefix): v for k, v in state_dict.items() if k.startswith(prefix)}
            renamed.update({k.replace("backbone.", f"backbone.{prefix}", 1): v
                            for k, v in _authors_names_to_fcnseg(trunk, own).items()})
        return renamed
    if isinstance(backbone, CaffeNet):  # its modules carry the authors' layer names
        return {(f"backbone.features.{k}" if k.startswith("conv") else f"backbone.{k}" if k.startswith("fc")
                 else k): v for k, v in state_dict.items()}
    if isinstance(backbone, VGG) and not any(isinstance(m, nn.BatchNorm2d) for m in backbone.modules()):
        return _rename_pytorch_fcn_keys(state_dict, backbone)
    raise WeightsError("the authors' weights are for the VGG16 (without batch norm) and CaffeNet backbones")


def build_on_meta(spec: ModelSpec) -> FCN:
    """The net of ``spec`` (reference geometry, as the authors' weights need) whose weights take no memory
    until they are assigned."""
    from fcnseg.models import build_model

    with torch.device("meta"):
        return build_model(spec.replace(geometry="reference"))


def fcn_from_pytorch_fcn(source: str | Path | Mapping[str, torch.Tensor], name: str | None = None) -> FCN:
    """Build the matching reference VGG16 FCN and load pytorch-fcn weights into it.

    ``source``: a state dict, a file (a bare state dict or a pytorch-fcn training checkpoint), a URL, or one
    of ``PYTORCH_FCN_FILES``' names (fcn32s, ...). ``name`` says which net; without it the layers tell
    FCN-32s and FCN-16s, and for the FCN-8s layers (shared by FCN8s and FCN8sAtOnce, which differ only in
    their fixed skip scaling) a training checkpoint's ``arch`` or a file name saying "atonce" or "fcn8s"
    decides; a file that cannot tell is refused.
    """

    arch = None
    if isinstance(source, Mapping):
        state_dict = {key: value.clone() for key, value in source.items()}  # the net must not alias the caller's
    else:
        if str(source) in PYTORCH_FCN_FILES:
            name = name or str(source)
            url, md5, file_name = PYTORCH_FCN_FILES[str(source)]
            source = resolve_weights(url, md5=md5, file_name=file_name)
        data = load_torch_file(resolve_weights(source))
        refuse_fcnseg_checkpoint(data, source)
        arch = PYTORCH_FCN_ARCHS.get(data.get("arch")) if isinstance(data, Mapping) else None
        state_dict = _state_dict_of(data, source)
    _check_pytorch_fcn_layers(state_dict, "the state dict" if isinstance(source, Mapping) else source)
    inferred = infer_pytorch_fcn_head(state_dict)
    name = name or arch or _name_from_file(source, inferred)
    if name.replace("_atonce", "") != inferred:
        raise WeightsError(f"the weights are an {inferred} but {name} was asked for")
    num_classes = state_dict["score_fr.weight"].shape[0]
    width = state_dict["conv1_1.weight"].shape[0] / 64  # 1.0 for the authors' nets
    classes = VOC if num_classes == VOC.num_classes else None  # pytorch-fcn's nets are the authors' VOC nets
    # A net trained with its upsampling learned (kernels that mix classes) is built so: a frozen, depthwise layer
    # cannot hold them (it said to pass learnable_upsampling=True, which fcnseg convert has no flag for).
    learned = any(_mixes_classes(value) for key, value in state_dict.items() if key.startswith("upscore"))
    model = build_on_meta(ModelSpec(name, "vgg16", num_classes, width, learnable_upsampling=learned,
                                    normalization="caffe", classes=classes))
    load_authors_state(model, state_dict)
    return model


def _mixes_classes(kernel: torch.Tensor) -> bool:
    """Whether a C x C x k x k upsampling kernel has weights off its diagonal (a class drawing on another's)."""
    if kernel.ndim != 4 or kernel.shape[0] != kernel.shape[1]:
        return False
    off_diagonal = kernel.detach().clone()
    off_diagonal[torch.arange(kernel.shape[0]), torch.arange(kernel.shape[0])] = 0
    return bool(off_diagonal.abs().max() > 0)


def _check_pytorch_fcn_layers(state_dict: Mapping[str, torch.Tensor], source: object) -> None:
    """Refuse, naming ``source``, a state dict without the layers every pytorch-fcn FCN has (and that
    :func:`fcn_from_pytorch_fcn` reads its width and classes from)."""
    lacking = [key.split(".")[0] for key in ("conv1_1.weight", "score_fr.weight") if key not in state_dict]
    if lacking:
        fcnseg = any(key.startswith("backbone.") for key in state_dict)
        raise WeightsError(f"{source} is not a pytorch-fcn FCN: it has no {' or '.join(lacking)} layer"
                           + (" (its layer names are fcnseg's: an fcnseg net's bare state dict?)" if fcnseg else ""))


def refuse_fcnseg_checkpoint(data: Any, source: object) -> None:
    """Refuse, in one line, an fcnseg checkpoint given where the authors' weights are expected."""
    # The format tag of fcnseg.checkpoint.FORMAT (importing it from there would be an import cycle).
    if isinstance(data, Mapping) and data.get("format") == "fcnseg-checkpoint":
        raise WeightsError(f"{source} is already an fcnseg checkpoint: use it directly with fcnseg predict, eval, "
                           "export or serve (convert reads the authors' .caffemodel and pytorch-fcn files)")


def _name_from_file(source: object, inferred: str) -> str:
    """The net a pytorch-fcn file is, where its layers leave FCN8s and FCN8sAtOnce apart only by name."""
    if inferred != "fcn8s":
        return inferred
    text = str(source).lower() if isinstance(source, str | Path) else ""
    file = Path(text).name
    if "atonce" in file.replace("-", "").replace("_", ""):
        return "fcn8s_atonce"
    if "fcn8s" in file:
        return "fcn8s"
    raise WeightsError(f"{'the state dict' if not file else source} has the layers of both FCN8s and FCN8sAtOnce "
                       "(they differ only in the at-once net's fixed 0.01 / 0.0001 skip scaling), and nothing in it "
                       "says which: pass --name fcn8s or --name fcn8s_atonce (name=... in Python)")


# ------------------------------------------------------------------------------------ staged training
def init_from_coarser(fine: FCN, coarse: FCN | Mapping[str, torch.Tensor],
                      classes: tuple[Sequence[str], Sequence[str]] | None = None) -> list[str]:
    """Staged initialisation (the paper): FCN-16s from a trained FCN-32s, FCN-8s from a trained FCN-16s,
    and fine-tuning to another class set.

    Copies every parameter the two nets share by name and shape (backbone, ``score_fr``, ``score_pool4``
    and, for a learnable coarse net, ``upscore2``); the new score layers stay at zero, so the finer net
    starts from the coarser net's scores. With ``classes`` = (the coarse net's class names, this net's) naming
    other classes (another count, or another order), the score layers carry over the rows of classes whose
    names match (the reference's ``surgery.expand_score``); the other rows stay at zero and the upsampling
    starts afresh. Without ``classes``, the class counts must match. Returns the names copied.
    """
    source = coarse.state_dict() if isinstance(coarse, nn.Module) else coarse
    target = fine.state_dict()
    shared = {k: v for k, v in source.items() if k in target and target[k].shape == v.shape}
    backbone_keys = [k for k in target if k.startswith("backbone.")]
    if not all(k in shared for k in backbone_keys):
        raise WeightsError(_backbone_mismatch(fine, coarse, source, target))
    if classes is not None and not _same_classes(*classes):
        # Rows by name, also for as many classes in another order (copied by shape, c0's scores drove c3); the
        # upsampling starts afresh, as it does for another class count.
        shared = {k: v for k, v in shared.items() if not k.startswith(("score_", "upscore"))}
        shared.update(_matching_score_rows(source, target, *classes))
    elif "score_fr.weight" not in shared:
        if classes is None:
            counts = [len(d["score_fr.weight"]) if "score_fr.weight" in d else "?" for d in (source, target)]
            raise WeightsError(f"the starting net scores {counts[0]} classes, this one {counts[1]}; give both class "
                               "lists (classes=(its class names, this net's)) to carry over the classes they share")
        shared.update(_matching_score_rows(source, target, *classes))
    fine.load_state_dict(shared, strict=False)
    return sorted(shared)


def _backbone_mismatch(fine: FCN, coarse: FCN | Mapping[str, torch.Tensor], source: Mapping[str, torch.Tensor],
                       target: Mapping[str, torch.Tensor]) -> str:
    """Why a starting net's backbone cannot be copied into ``fine``: both nets' backbone and width (the entries
    that differ when the starting net is a bare state dict), and the fix."""
    this = f"{fine.spec.name} on {fine.spec.backbone} of width {fine.spec.width:g}"
    if isinstance(coarse, FCN):
        start = f"is an {coarse.spec.name} on {coarse.spec.backbone} of width {coarse.spec.width:g}"
    else:
        differ = [f"{k} {tuple(source[k].shape) if k in source else 'missing'} vs {tuple(v.shape)}"
                  for k, v in target.items()
                  if k.startswith("backbone.") and (k not in source or source[k].shape != v.shape)]
        more = " ..." if len(differ) > 3 else ""
        start = f"differs in {len(differ)} backbone entries (its shape vs this one's: {', '.join(differ[:3])}{more})"
    return (f"the starting net {start}; this one is an {this}: build this net with the starting net's backbone and "
            "width (only the head may differ: fcn32s -> fcn16s -> fcn8s), or start from another net")


def _same_classes(old: Sequence[str], new: Sequence[str]) -> bool:
    """Whether two class lists name the same classes in the same order (as :func:`matching_classes` compares)."""
    return len(old) == len(new) and matching_classes(old, new) == [(i, i) for i in range(len(new))]


def matching_classes(old: Sequence[str], new: Sequence[str]) -> list[tuple[int, int]]:
    """(old index, new index) of the classes two class lists share by name (case and spaces ignored)."""
    index = {name.lower().replace(" ", "").replace("_", ""): i for i, name in enumerate(old)}
    return [(index[key], j) for j, name in enumerate(new)
            if (key := name.lower().replace(" ", "").replace("_", "")) in index]


def _matching_score_rows(source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor],
                         old: Sequence[str], new: Sequence[str]) -> dict[str, torch.Tensor]:
    """The score layers of ``target`` at zero, with the rows of shared classes taken from ``source``."""
    pairs = matching_classes(old, new)
    rows = {}
    for layer in ("score_fr", "score_pool4", "score_pool3"):
        for suffix in ("weight", "bias"):
            key = f"{layer}.{suffix}"
            if key in source and key in target and source[key].shape[1:] == target[key].shape[1:]:
                value = torch.zeros_like(target[key])
                for i, j in pairs:
                    value[j] = source[key][i]
                rows[key] = value
    return rows
