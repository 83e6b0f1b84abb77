"""Input normalisation: the one place that holds the mean/std constants.

A model records which convention its weights expect, as a short string:

* ``"imagenet"``: RGB in [0, 1], minus mean, divided by std (torchvision weights).
* ``"caffe"``: RGB -> BGR, range 0-255, minus the per-channel mean of the authors' VOC nets (their Caffe
  weights and the pytorch-fcn conversions of them).
* ``"caffe:B,G,R"``: the same with another BGR mean (the authors' SIFT Flow and NYUDv2 nets use their
  datasets' own).
* ``"hha:A,B,C"``: an HHA depth encoding (:mod:`fcnseg.data.hha`), channels kept in order, minus a mean
  (the authors' NYUDv2 HHA nets).

A net that reads several inputs (NYUDv2's colour and HHA, stacked as 3 + 3 channels) joins one string
per input with ``+``, e.g. ``"caffe:116.19,97.203,92.318+hha:132.431,94.076,118.477"``; a single
string applies to every input.
"""

from __future__ import annotations

import numpy as np
import torch

from fcnseg.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_BGR_MEAN = (104.00698793, 116.66876762, 122.67891434)


def caffe_normalization(bgr_mean: tuple[float, float, float]) -> str:
    """The normalisation string of Caffe-style input with the BGR mean ``bgr_mean``."""
    return "caffe:" + ",".join(f"{v:g}" for v in bgr_mean)


def split_normalization(kind: str) -> tuple[str, ...]:
    """The per-input parts of a normalisation string (``"caffe+hha:1,2,3"`` -> two)."""
    return tuple(kind.split("+")) if isinstance(kind, str) else (kind,)


def check_normalization(kind: str, inputs: int | None = None) -> str:
    """``kind`` if it is a normalisation fcnseg knows (for a net of ``inputs`` inputs, when given), else a
    ConfigError saying which are."""
    kinds = split_normalization(kind)
    for single in kinds:
        _parse(single)
    if inputs is not None:
        _groups(kind, 3 * inputs)
    return kind


def same_normalization(first: str, second: str, inputs: int) -> bool:
    """Whether two normalisation strings normalise the ``inputs`` inputs of a net alike (``"imagenet"`` is
    ``"imagenet+imagenet"`` for two)."""
    def parsed(kind: str) -> list[tuple[str, tuple[float, ...], tuple[float, ...] | None]]:
        return [_parse(single) for single in _groups(kind, 3 * inputs)]

    return parsed(first) == parsed(second)


def _parse(kind: str) -> tuple[str, tuple[float, ...], tuple[float, ...] | None]:
    """(convention, mean, std or None) of one input's normalisation string."""
    if kind == "imagenet":
        return "imagenet", IMAGENET_MEAN, IMAGENET_STD
    if kind == "caffe":
        return "caffe", CAFFE_BGR_MEAN, None
    convention, _, values = kind.partition(":") if isinstance(kind, str) else ("", "", "")
    if convention in ("caffe", "hha"):
        try:
            mean = tuple(float(v) for v in values.split(","))
        except ValueError:
            mean = ()
        # float() reads "nan" and "inf" too: such a mean (or one no 8-bit pixel reaches) makes every input NaN
        # or saturated, a net that outputs one class without a word.
        if len(mean) == 3 and all(0 <= v <= 255 for v in mean):
            return convention, mean, None
    raise ConfigError(f"unknown normalization {kind!r}; use imagenet, caffe, caffe:B,G,R (a BGR mean), hha:A,B,C "
                      "(an HHA mean; means from 0 to 255), or one of these per input joined by +")


def _groups(kind: str, channels: int) -> list[str]:
    """One normalisation per 3-channel input of a ``channels``-channel image."""
    kinds = list(split_normalization(kind))
    for single in kinds:
        _parse(single)
    if channels % 3:
        raise ValueError(f"expected 3 channels per input, got {channels}")
    if len(kinds) == 1:
        return kinds * (channels // 3)
    if len(kinds) != channels // 3:
        raise ConfigError(f"normalization {kind!r} names {len(kinds)} inputs, but the image has {channels // 3}")
    return kinds


def normalize(image: torch.Tensor | np.ndarray, kind: str = "imagenet") -> torch.Tensor:
    """Turn uint8 images (HxWxC, or a tensor BxCxHxW / CxHxW of 0-255 values; C = 3 per input) into
    network input. Returns a float32 tensor in CHW (or BCHW) layout."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] % 3 or not image.shape[2]:
            raise ValueError(f"expected an HxWx3 RGB array (3 channels per input), got shape {image.shape}")
        # A read-only array (np.asarray of a PIL image) is copied: torch warns about sharing its memory.
        image = torch.from_numpy(np.ascontiguousarray(image) if image.flags.writeable else image.copy())
        image = image.permute(2, 0, 1)
    x = image.float()
    axis = x.dim() - 3
    kinds = _groups(kind, x.shape[axis])
    if len(kinds) > 1:
        return torch.cat([normalize(part, k) for part, k in zip(x.split(3, axis), kinds, strict=True)], axis)
    convention = _parse(kinds[0])[0]
    mean, std = _constants(kinds[0], x)
    if convention == "imagenet":
        return (x / 255.0 - mean) / std
    if convention == "hha":
        return x - mean
    return x.flip(axis) - mean


def _constants(kind: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mean (and std) shaped to broadcast over the channel axis of ``x`` (CHW or BCHW)."""
    _, mean, std = _parse(kind)
    shape = [1] * x.dim()
    shape[x.dim() - 3] = 3
    as_tensor = lambda values: torch.tensor(values, dtype=torch.float32, device=x.device).view(shape)  # noqa: E731
    return as_tensor(mean), (as_tensor(std) if std is not None else None)


def mean_color(kind: str = "imagenet", channels: int = 3) -> tuple[int, ...]:
    """The 0-255 values that normalise to (about) zero, for each of ``channels``: the fill for padded pixels."""
    values: list[int] = []
    for single in _groups(kind, channels):
        convention, mean, _ = _parse(single)
        if convention == "imagenet":
            values += [round(255 * m) for m in mean]
        else:
            values += [round(m) for m in (reversed(mean) if convention == "caffe" else mean)]
    return tuple(values)


def denormalize(x: torch.Tensor, kind: str = "imagenet") -> torch.Tensor:
    """Inverse of :func:`normalize`: float network input back to 0-255 values (float)."""
    axis = x.dim() - 3
    kinds = _groups(kind, x.shape[axis])
    if len(kinds) > 1:
        return torch.cat([denormalize(part, k) for part, k in zip(x.split(3, axis), kinds, strict=True)], axis)
    mean, std = _constants(kinds[0], x)
    convention = _parse(kinds[0])[0]
    if convention == "imagenet":
        return (x * std + mean) * 255.0
    return x + mean if convention == "hha" else (x + mean).flip(axis)
