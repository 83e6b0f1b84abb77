"""Layer geometry: coordinate maps and output sizes, from which crop offsets and input padding follow.

A coordinate map ``(scale, offset)`` says where output index ``y`` of a layer sits in its input's
coordinates: ``x = scale * y + offset``, taking the centre of the receptive field. Composing the maps of a
chain of layers gives, for every feature map of a net, its position in the image. This is the reference
implementation's ``coord_map`` idea: the FCN crop offsets (19 for FCN-32s; 5 and 27 for FCN-16s; 5, 9 and 31
for FCN-8s on VGG16 with pad 100) are differences of these offsets, so they are derived, not pasted in, and
hold for any backbone. Only one spatial axis is tracked: every layer here is square.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

# Layers that do not move or resize a feature map.
_POINTWISE = (nn.ReLU, nn.ReLU6, nn.Dropout, nn.Dropout2d, nn.BatchNorm2d, nn.SyncBatchNorm, nn.Identity,
              nn.LocalResponseNorm, nn.GroupNorm)


@dataclass(frozen=True)
class CoordMap:
    """``x_in = scale * y_out + offset`` for one axis."""

    scale: float = 1.0
    offset: float = 0.0

    def then(self, inner: CoordMap) -> CoordMap:
        """The map of ``inner`` applied after this one (inner's output -> this map's input)."""
        return CoordMap(self.scale * inner.scale, self.scale * inner.offset + self.offset)


def _square(value) -> int:
    if isinstance(value, tuple):
        if len(set(value)) != 1:
            raise ValueError(f"geometry assumes square layers, got {value}")
        return value[0]
    return value


def coord_map(module: nn.Module | Iterable[nn.Module]) -> CoordMap:
    """The coordinate map of a layer, a block with a ``coord_map()`` method, or a sequence of them."""
    if hasattr(module, "coord_map") and isinstance(module, nn.Module):
        return module.coord_map()
    if isinstance(module, nn.ConvTranspose2d):
        k, s, p = _square(module.kernel_size), _square(module.stride), _square(module.padding)
        return CoordMap(1.0 / s, (p - (k - 1) / 2) / s)
    if isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
        k, s, p = _square(module.kernel_size), _square(module.stride), _square(module.padding)
        d = _square(getattr(module, "dilation", 1))
        return CoordMap(float(s), d * (k - 1) / 2 - p)
    if isinstance(module, _POINTWISE):
        return CoordMap()
    if isinstance(module, (nn.Sequential, nn.ModuleList, list, tuple)):
        result = CoordMap()
        for child in module:
            result = result.then(coord_map(child))
        return result
    raise TypeError(f"no coordinate map for {type(module).__name__}; give it a coord_map() method")


def output_size(module: nn.Module | Iterable[nn.Module], size: int) -> int:
    """The output length along one axis for an input of length ``size`` (PyTorch's own formulas)."""
    if hasattr(module, "output_size") and isinstance(module, nn.Module) and callable(module.output_size):
        return module.output_size(size)
    if isinstance(module, nn.ConvTranspose2d):
        k, s, p = _square(module.kernel_size), _square(module.stride), _square(module.padding)
        return (size - 1) * s - 2 * p + (k - 1) + _square(module.output_padding) + 1
    if isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
        k, s, p = _square(module.kernel_size), _square(module.stride), _square(module.padding)
        d = _square(getattr(module, "dilation", 1))
        span = size + 2 * p - d * (k - 1) - 1
        if getattr(module, "ceil_mode", False):
            out = math.ceil(span / s) + 1
            if (out - 1) * s >= size + p:  # PyTorch: the last window must start inside the input or left pad
                out -= 1
            return out
        return span // s + 1
    if isinstance(module, _POINTWISE):
        return size
    if isinstance(module, (nn.Sequential, nn.ModuleList, list, tuple)):
        for child in module:
            size = output_size(child, size)
        return size
    raise TypeError(f"no size rule for {type(module).__name__}; give it an output_size() method")


def crop_offset(target: CoordMap, source: CoordMap) -> int:
    """Where ``target``'s index 0 falls in ``source``'s indices: the offset at which to crop ``source`` so
    that it lines up with ``target``. Both must have the same scale; half-pixel misalignments (from
    even-sized kernels in some backbones) round half up."""
    if not math.isclose(target.scale, source.scale):
        raise ValueError(f"cannot align maps of scale {source.scale} and {target.scale}")
    return math.floor((target.offset - source.offset) / source.scale + 0.5)
