"""torch.hub entry points of fcnseg: its FCN builders, and the trained CamVid net by name (``camvid_fcn8s``: the
net shipped in fcnseg.pretrained, checked against its SHA-256).

    net = torch.hub.load("OWNER/fcnseg", "camvid_fcn8s")                     # trained, in eval mode
    net = torch.hub.load("path/to/fcnseg", "camvid_fcn8s", source="local")   # from a clone
    net = torch.hub.load("path/to/fcnseg", "fcn8s", source="local", backbone="vgg16_bn", num_classes=2)

Each returns an :class:`fcnseg.models.fcn.FCN` (a torch module; ``net.spec`` says what it is); its input is
an N x 3 x H x W batch normalised as ``net.spec.normalization`` says (ImageNet's for the CamVid net), its
output N x classes x H x W logits. ``fcnseg.load("camvid-fcn8s")`` wraps the same net with image reading,
sliding windows and memory planning.
"""

import importlib.util as _importlib_util
import sys as _sys
from pathlib import Path as _Path

dependencies = ["torch"]

# torch.hub puts only the repository's root on sys.path; fcnseg's code is under src/. An installed fcnseg is
# used as it is.
_SOURCE = _Path(__file__).resolve().parent / "src"
if _importlib_util.find_spec("fcnseg") is None and (_SOURCE / "fcnseg").is_dir():
    _sys.path.insert(0, str(_SOURCE))

import fcnseg as _fcnseg  # noqa: E402 - after src/ is on the path


def camvid_fcn8s(pretrained: bool = True):
    """FCN-8s on CamVid's 11 classes (VGG16-BN at width 0.125, fast geometry), in eval mode: trained (the net
    shipped with fcnseg, checked against its SHA-256) or, with ``pretrained=False``, the same architecture and
    classes with fresh weights (ImageNet-normalised input, as the trained one)."""
    from fcnseg.checkpoint import model_from_checkpoint
    from fcnseg.data.info import CAMVID
    from fcnseg.pretrained import path_of

    if not isinstance(pretrained, bool):  # "no" is a true string: it gave the trained net
        raise TypeError(f"pretrained must be True or False, got {pretrained!r}")
    if pretrained:
        return model_from_checkpoint(path_of("camvid-fcn8s"))[0]
    return _fcnseg.build_model("fcn8s", backbone="vgg16_bn", width=0.125, geometry="fast", num_classes=11,
                               normalization="imagenet", classes=CAMVID).eval()


def fcn32s(**fields):
    """An FCN-32s with fresh weights: ``fields`` as :func:`fcnseg.build_model`'s (backbone, num_classes, width,
    geometry, ...)."""
    return _fcnseg.build_model("fcn32s", **fields)


def fcn16s(**fields):
    """An FCN-16s with fresh weights: ``fields`` as :func:`fcnseg.build_model`'s."""
    return _fcnseg.build_model("fcn16s", **fields)


def fcn8s(**fields):
    """An FCN-8s with fresh weights: ``fields`` as :func:`fcnseg.build_model`'s."""
    return _fcnseg.build_model("fcn8s", **fields)
