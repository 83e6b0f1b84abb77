"""Input normalisation: the one place that holds the mean/std constants.

Two conventions exist and a model records which one its weights expect:

* ``"imagenet"``: RGB in [0, 1], minus mean, divided by std (torchvision weights).
* ``"caffe"``: RGB -> BGR, range 0-255, minus the per-channel mean (the authors' Caffe
  weights and the pytorch-fcn conversions of them).
"""

from __future__ import annotations

import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_BGR_MEAN = (104.00698793, 116.66876762, 122.67891434)

NORMALIZATIONS = ("imagenet", "caffe")


def normalize(image: torch.Tensor | np.ndarray, kind: str = "imagenet") -> torch.Tensor:
    """Turn uint8 RGB images (HxWx3, or a tensor Bx3xHxW / 3xHxW of 0-255 values) into network input.

    Returns a float32 tensor in CHW (or BCHW) layout.
    """
    if kind not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {kind!r}; choose one of {NORMALIZATIONS}")
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 RGB array, got shape {image.shape}")
        image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    x = image.float()
    channel_axis = x.dim() - 3
    shape = [1] * x.dim()
    shape[channel_axis] = 3
    if kind == "imagenet":
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(shape)
        std = torch.tensor(IMAGENET_STD, device=x.device).view(shape)
        return (x / 255.0 - mean) / std
    mean = torch.tensor(CAFFE_BGR_MEAN, device=x.device).view(shape)
    return x.flip(channel_axis) - mean


def denormalize(x: torch.Tensor, kind: str = "imagenet") -> torch.Tensor:
    """Inverse of :func:`normalize`: float network input back to 0-255 RGB values (float)."""
    channel_axis = x.dim() - 3
    shape = [1] * x.dim()
    shape[channel_axis] = 3
    if kind == "imagenet":
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(shape)
        std = torch.tensor(IMAGENET_STD, device=x.device).view(shape)
        return (x * std + mean) * 255.0
    if kind == "caffe":
        mean = torch.tensor(CAFFE_BGR_MEAN, device=x.device).view(shape)
        return (x + mean).flip(channel_axis)
    raise ValueError(f"unknown normalization {kind!r}; choose one of {NORMALIZATIONS}")
