"""Input normalisation: the one place that holds the mean/std constants.

Two conventions exist and a model records which one its weights expect:

* ``"imagenet"``: RGB in [0, 1], minus mean, divided by std (torchvision weights).
* ``"caffe"``: RGB -> BGR, range 0-255, minus the per-channel mean (the authors' Caffe
  weights and the pytorch-fcn conversions of them).
"""

from __future__ import annotations

import numpy as np
import torch

from fcnseg.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_BGR_MEAN = (104.00698793, 116.66876762, 122.67891434)

NORMALIZATIONS = ("imagenet", "caffe")


def normalize(image: torch.Tensor | np.ndarray, kind: str = "imagenet") -> torch.Tensor:
    """Turn uint8 RGB images (HxWx3, or a tensor Bx3xHxW / 3xHxW of 0-255 values) into network input.

    Returns a float32 tensor in CHW (or BCHW) layout.
    """
    if kind not in NORMALIZATIONS:
        raise ConfigError(f"unknown normalization {kind!r}; choose one of {NORMALIZATIONS}")
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 RGB array, got shape {image.shape}")
        image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    x = image.float()
    mean, std = _constants(kind, x)
    if kind == "imagenet":
        return (x / 255.0 - mean) / std
    return x.flip(x.dim() - 3) - mean


def _constants(kind: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mean (and std) shaped to broadcast over the channel axis of ``x`` (CHW or BCHW)."""
    shape = [1] * x.dim()
    shape[x.dim() - 3] = 3
    if kind == "imagenet":
        return (torch.tensor(IMAGENET_MEAN, device=x.device).view(shape),
                torch.tensor(IMAGENET_STD, device=x.device).view(shape))
    if kind == "caffe":
        return torch.tensor(CAFFE_BGR_MEAN, device=x.device).view(shape), None
    raise ConfigError(f"unknown normalization {kind!r}; choose one of {NORMALIZATIONS}")


def mean_color(kind: str = "imagenet") -> tuple[int, int, int]:
    """The 0-255 RGB colour that normalises to (about) zero: the fill for padded image pixels."""
    if kind == "imagenet":
        return tuple(round(255 * m) for m in IMAGENET_MEAN)
    if kind == "caffe":
        return tuple(round(m) for m in reversed(CAFFE_BGR_MEAN))
    raise ConfigError(f"unknown normalization {kind!r}; choose one of {NORMALIZATIONS}")


def denormalize(x: torch.Tensor, kind: str = "imagenet") -> torch.Tensor:
    """Inverse of :func:`normalize`: float network input back to 0-255 RGB values (float)."""
    mean, std = _constants(kind, x)
    if kind == "imagenet":
        return (x * std + mean) * 255.0
    return (x + mean).flip(x.dim() - 3)
