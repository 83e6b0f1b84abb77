"""FCN-32s, FCN-16s, FCN-8s and FCN-8s at-once heads on any backbone.

Scores are predicted at stride 32 (``score_fr``); FCN-16s adds ``score_pool4`` after a x2 upsampling,
FCN-8s also adds ``score_pool3`` after another x2, and only the fused map gets the final x16 or x8
upsampling: enlarging once, after summing, is cheaper than upsampling each score map to full size.

Geometry modes:

``reference``
    The authors' nets: conv1 padded by 100, fc6 unpadded, upsampling without padding, every alignment
    done by cropping at offsets derived from the layer geometry (19 for FCN-32s; 5, 27 for FCN-16s;
    5, 9, 31 for FCN-8s on VGG16). Needed to reproduce the authors' weights exactly.
``fast``
    No padding of 100: the input is padded at the bottom/right only up to a multiple of the net's stride
    (32), fc6 keeps the map size and upsampling is "same"-padded (padding = stride / 2), so every map
    already lines up and the output is cropped back to the input size. At 500x500 the convolutions run
    on 512x512 instead of 700x700, about half the work; border predictions differ slightly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fcnseg.errors import ConfigError
from fcnseg.models.backbones import Backbone
from fcnseg.models.geometry import CoordMap, coord_map, crop_offset, output_size
from fcnseg.models.upsample import Upsample

HEADS = ("32s", "16s", "8s", "8s_atonce")
GEOMETRIES = ("reference", "fast")
ATONCE_SCALES = (0.01, 0.0001)  # pool4 and pool3 scaling of the at-once FCN-8s (fixed constants)
_SIZE_CHECK = tuple(range(1, 100)) + (224, 360, 375, 480, 500, 512, 1024)


def _crop(x: torch.Tensor, offset: int, height, width) -> torch.Tensor:
    return x[:, :, offset:offset + height, offset:offset + width]


class FCN(nn.Module):
    """A fully convolutional network: ``backbone`` features -> class scores at the input's size.

    ``forward(x)`` maps N x 3 x H x W to N x num_classes x H x W logits for any H, W >= 1.
    ``spec``: what the net is (:class:`~fcnseg.models.spec.ModelSpec`), given by
    :func:`fcnseg.models.build_model`, the one way nets are made.
    """

    @property
    def spec(self) -> Any:
        """A ModelSpec (fcnseg.models.spec, which imports this module), set once by build_model: a net whose spec
        said another net was saved as that one, and reloaded as another function without a word."""
        try:
            return self.__dict__["_spec"]
        except KeyError:
            raise AttributeError("spec") from None  # hasattr(net, "spec") is False before build_model sets it

    @spec.setter
    def spec(self, spec: Any) -> None:
        if "_spec" in self.__dict__:
            raise AttributeError("a net's spec is what it was built as, and cannot change: build the net another spec "
                                 "describes with fcnseg.build_model(net.spec.replace(...))")
        self.__dict__["_spec"] = spec

    def __init__(self, backbone: Backbone, num_classes: int, head: str = "8s", geometry: str = "reference",
                 learnable_upsampling: bool = False, extra_heads: Sequence[int] = ()) -> None:
        super().__init__()
        if head not in HEADS:
            raise ConfigError(f"unknown head {head!r}; choose one of {HEADS}")
        if geometry not in GEOMETRIES:
            raise ConfigError(f"unknown geometry {geometry!r}; choose one of {GEOMETRIES}")
        self.backbone = backbone
        self.num_classes = num_classes
        self.head = head
        self.geometry = geometry
        self.learnable_upsampling = learnable_upsampling
        # The first task's layers sit on the net itself (the authors' names); further tasks on one trunk (SIFT
        # Flow's geometric classes) get the same layers in extra_heads, and their scores follow in the output.
        self._add_score_layers(self, num_classes)
        self.extra_heads = nn.ModuleList()
        for classes in extra_heads:
            layers = nn.Module()
            self._add_score_layers(layers, classes)
            self.extra_heads.append(layers)
        self.head_classes = (num_classes, *extra_heads)
        self.skip_scales = ATONCE_SCALES if head == "8s_atonce" else (1.0, 1.0)
        self._plan_geometry()

    def _add_score_layers(self, layers: nn.Module, classes: int) -> None:
        """Give ``layers`` the score and upsampling layers of this head for ``classes`` classes."""
        c8, c16, c32 = self.backbone.out_channels
        same = self.geometry == "fast"  # "same"-padded upsampling; the reference crops instead
        kernels = getattr(self.backbone, "upsample_kernels", {})  # a backbone's own kernel sizes (CaffeNet's 63)
        up = lambda stride: Upsample(classes, stride, self.learnable_upsampling,  # noqa: E731
                                     stride // 2 if same else 0, kernels.get(stride))
        layers.score_fr = nn.Conv2d(c32, classes, 1)
        if self.head == "32s":
            layers.upscore = up(32)
        else:
            layers.score_pool4 = nn.Conv2d(c16, classes, 1)
            layers.upscore2 = up(2)
            if self.head == "16s":
                layers.upscore16 = up(16)
            else:
                layers.score_pool3 = nn.Conv2d(c8, classes, 1)
                layers.upscore_pool4 = up(2)
                layers.upscore8 = up(8)
        # Score layers start at zero (the paper): a net initialised from a coarser one then adds nothing.
        for name in ("score_fr", "score_pool4", "score_pool3"):
            if hasattr(layers, name):
                nn.init.zeros_(getattr(layers, name).weight)
                nn.init.zeros_(getattr(layers, name).bias)

    def score_layers(self) -> list[nn.Conv2d]:
        """The first head's score layers (score_fr, then score_pool4 and score_pool3 where the head has them)."""
        return [getattr(self, n) for n in ("score_fr", "score_pool4", "score_pool3") if hasattr(self, n)]

    def upsamplers(self) -> list[Upsample]:
        return [m for m in self.modules() if isinstance(m, Upsample)]

    # ----------------------------------------------------------------------------------------- geometry
    def _fusion_steps(self, layers: nn.Module | None = None) -> list[tuple[Upsample, int | None]]:
        """The upsampling chain of ``layers`` (this net's first head by default): (upsampler, index of the
        backbone map fused after it, or None)."""
        layers = self if layers is None else layers
        if self.head == "32s":
            return [(layers.upscore, None)]
        if self.head == "16s":
            return [(layers.upscore2, 1), (layers.upscore16, None)]
        return [(layers.upscore2, 1), (layers.upscore_pool4, 0), (layers.upscore8, None)]

    def _plan_geometry(self) -> None:
        """Derive the crop offsets and the input padding from the layers' coordinate maps."""
        maps = self.backbone.stage_maps()
        current = maps[2]
        self.skip_crops: list[tuple[int, int]] = []  # (crop of the upsampled map, crop of the skip map)
        for upsampler, skip in self._fusion_steps():
            current = current.then(coord_map(upsampler))
            if skip is not None:
                offset = crop_offset(current, maps[skip])
                if offset >= 0:
                    self.skip_crops.append((0, offset))
                else:  # the skip map starts later: crop the upsampled map instead, and move its origin
                    self.skip_crops.append((-offset, 0))
                    current = CoordMap(current.scale, current.offset - offset * current.scale)
        # Pad the top/left just enough that output index 0 is at or before input pixel 0.
        offset = crop_offset(CoordMap(), current)
        self.pad_top_left = max(0, -offset)
        self.final_crop = offset + self.pad_top_left
        self.stride = 32
        self.pad_extra = self._search_extra_padding()

    def _pad_bottom_right(self, size):
        """Reference: a constant (0 for the authors' nets). Fast: up to a multiple of the stride."""
        if self.geometry == "reference":
            return self.pad_extra
        return (-(size + self.pad_top_left)) % self.stride + self.pad_extra

    def _fits(self, size: int) -> bool:
        """Whether every crop stays inside its map for an input of length ``size``."""
        padded = size + self.pad_top_left + self._pad_bottom_right(size)
        sizes = self.backbone.stage_sizes(padded)
        if min(sizes) < 1:
            return False
        current = sizes[2]
        for (upsampler, skip), (crop_up, crop_skip), follow in zip(
                self._fusion_steps(), self.skip_crops + [(0, 0)], self.fusion_follow + [None], strict=True):
            current = output_size(upsampler, current)
            if skip is None:
                continue
            lengths = {"up": (current, crop_up), "skip": (sizes[skip], crop_skip)}
            other = "skip" if follow == "up" else "up"
            result = lengths[follow][0] - lengths[follow][1]
            if result < 1 or lengths[other][0] < lengths[other][1] + result:
                return False
            current = result
        return current >= self.final_crop + size

    def _search_extra_padding(self) -> int:
        """The least constant extra padding (and which map leads each fusion) valid for all sizes."""
        skips = len(self.skip_crops)
        choices = [["up" if (i >> k) & 1 == 0 else "skip" for k in range(skips)] for i in range(2 ** skips)]
        for extra in range(0, 4 * self.stride):
            self.pad_extra = extra
            for follow in choices:  # the authors' nets crop the skip map to the upsampled one: tried first
                self.fusion_follow = follow
                if all(self._fits(size) for size in _SIZE_CHECK):
                    return extra
        raise ValueError(f"no input padding makes {type(self.backbone).__name__} fit the {self.head} head")

    # ------------------------------------------------------------------------------------------ forward
    @property
    def config(self) -> dict[str, Any]:
        """build_model's arguments, every key: ``spec.architecture()`` (read-only)."""
        return self.spec.architecture()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = self.spec.channels if hasattr(self, "spec") else x.shape[1]
        if x.dim() != 4 or x.shape[1] != channels or not x.is_floating_point():
            # an unbatched 3 x H x W ran the whole backbone, then failed at the crop with an IndexError; 1 channel
            # was "expected input[1, 1, 238, 238]": the padded size, not the one given
            reads = ", ".join(self.spec.inputs) if hasattr(self, "spec") else "images"
            raise ValueError(f"expected a float N x {channels} x H x W batch ({reads}, normalised), got shape "
                             f"{tuple(x.shape)} of {x.dtype}")
        height, width = x.shape[-2], x.shape[-1]
        top = self.pad_top_left
        bottom, right = self._pad_bottom_right(height), self._pad_bottom_right(width)
        if self.geometry == "fast" or top or self.pad_extra:  # constants only: exports keep the pad op
            x = F.pad(x, (top, right, top, bottom))
        features = self.backbone(x)
        scores = [self._scores(layers, features, height, width) for layers in (self, *self.extra_heads)]
        return scores[0] if len(scores) == 1 else torch.cat(scores, 1)

    def _scores(self, layers: nn.Module, features: list[torch.Tensor], height: int, width: int) -> torch.Tensor:
        """One head's scores at the input's size: score_fr upsampled, with the skips fused on the way."""
        score = layers.score_fr(features[2])
        skip_layers = {1: getattr(layers, "score_pool4", None), 0: getattr(layers, "score_pool3", None)}
        scales = {1: self.skip_scales[0], 0: self.skip_scales[1]}
        step = 0
        for upsampler, skip in self._fusion_steps(layers):
            score = upsampler(score)
            if skip is None:
                continue
            (crop_up, crop_skip), follow = self.skip_crops[step], self.fusion_follow[step]
            step += 1
            skip_map = features[skip]
            if follow == "up":  # the authors' way: crop the skip map to the upsampled scores
                score = _crop(score, crop_up, score.shape[-2] - crop_up, score.shape[-1] - crop_up)
                skip_map = _crop(skip_map, crop_skip, score.shape[-2], score.shape[-1])
            else:
                skip_map = _crop(skip_map, crop_skip, skip_map.shape[-2] - crop_skip, skip_map.shape[-1] - crop_skip)
                score = _crop(score, crop_up, skip_map.shape[-2], skip_map.shape[-1])
            if scales[skip] != 1.0:
                skip_map = skip_map * scales[skip]
            score = score + skip_layers[skip](skip_map)
        return _crop(score, self.final_crop, height, width)

    def extra_repr(self) -> str:
        return (f"head={self.head}, geometry={self.geometry}, classes={self.head_classes}, "
                f"pad_top_left={self.pad_top_left}, final_crop={self.final_crop}, skip_crops={self.skip_crops}, "
                f"fusion_follow={self.fusion_follow}, pad_extra={self.pad_extra}")
