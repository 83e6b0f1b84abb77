"""Input normalisation: the one place that holds the mean/std constants.

A model records which convention its weights expect, as a short string:

* ``"imagenet"``: RGB in [0, 1], minus mean, divided by std (torchvision weights).
* ``"caffe"``: RGB -> BGR, range 0-255, minus the per-channel mean of the authors' VOC nets (their Caffe
  weights and the pytorch-fcn conversions of them).
* ``"caffe:B,G,R"``: the same with another BGR mean (the authors' SIFT Flow and NYUDv2 nets use their
  datasets' own).
"""

from __future__ import annotations

import numpy as np
import torch

from fcnseg.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_BGR_MEAN = (104.00698793, 116.66876762, 122.67891434)

NORMALIZATIONS = ("imagenet", "caffe", "caffe:B,G,R")


def caffe_normalization(bgr_mean: tuple[float, float, float]) -> str:
    """The normalisation string of Caffe-style input with the BGR mean ``bgr_mean``."""
    return "caffe:" + ",".join(f"{v:g}" for v in bgr_mean)


def check_normalization(kind: str) -> str:
    """``kind`` if it is a normalisation fcnseg knows, else a ConfigError saying which are."""
    _parse(kind)
    return kind


def _parse(kind: str) -> tuple[str, tuple[float, ...], tuple[float, ...] | None]:
    """(convention, mean, std or None) of a normalisation string."""
    if kind == "imagenet":
        return "imagenet", IMAGENET_MEAN, IMAGENET_STD
    if kind == "caffe":
        return "caffe", CAFFE_BGR_MEAN, None
    if isinstance(kind, str) and kind.startswith("caffe:"):
        try:
            mean = tuple(float(v) for v in kind[len("caffe:"):].split(","))
        except ValueError:
            mean = ()
        if len(mean) == 3:
            return "caffe", mean, None
    raise ConfigError(f"unknown normalization {kind!r}; use imagenet, caffe, or caffe:B,G,R (a BGR mean)")


def normalize(image: torch.Tensor | np.ndarray, kind: str = "imagenet") -> torch.Tensor:
    """Turn uint8 RGB images (HxWx3, or a tensor Bx3xHxW / 3xHxW of 0-255 values) into network input.

    Returns a float32 tensor in CHW (or BCHW) layout.
    """
    convention = _parse(kind)[0]
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 RGB array, got shape {image.shape}")
        # A read-only array (np.asarray of a PIL image) is copied: torch warns about sharing its memory.
        image = torch.from_numpy(np.ascontiguousarray(image) if image.flags.writeable else image.copy())
        image = image.permute(2, 0, 1)
    x = image.float()
    mean, std = _constants(kind, x)
    if convention == "imagenet":
        return (x / 255.0 - mean) / std
    return x.flip(x.dim() - 3) - mean


def _constants(kind: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mean (and std) shaped to broadcast over the channel axis of ``x`` (CHW or BCHW)."""
    _, mean, std = _parse(kind)
    shape = [1] * x.dim()
    shape[x.dim() - 3] = 3
    as_tensor = lambda values: torch.tensor(values, dtype=torch.float32, device=x.device).view(shape)  # noqa: E731
    return as_tensor(mean), (as_tensor(std) if std is not None else None)


def mean_color(kind: str = "imagenet") -> tuple[int, int, int]:
    """The 0-255 RGB colour that normalises to (about) zero: the fill for padded image pixels."""
    convention, mean, _ = _parse(kind)
    if convention == "imagenet":
        return tuple(round(255 * m) for m in mean)
    return tuple(round(m) for m in reversed(mean))


def denormalize(x: torch.Tensor, kind: str = "imagenet") -> torch.Tensor:
    """Inverse of :func:`normalize`: float network input back to 0-255 RGB values (float)."""
    mean, std = _constants(kind, x)
    if _parse(kind)[0] == "imagenet":
        return (x * std + mean) * 255.0
    return (x + mean).flip(x.dim() - 3)
