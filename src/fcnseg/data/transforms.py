"""Joint image/label transforms for training and evaluation, on numpy arrays.

Every transform is a callable ``(image, label) -> (image, label)`` on an HxWx3 uint8 RGB image and an
HxW uint8 label array, or HxWxK for K heads (see :mod:`fcnseg.data.base`). Images are resized
bilinearly; labels are always resized with nearest neighbour, because interpolating class ids would
invent classes at boundaries.

Randomness
----------
Random transforms (subclasses of :class:`RandomTransform`) accept an optional ``rng`` argument, any
object with the ``numpy.random.Generator`` methods they use (``uniform``, ``integers``, ``random``,
``standard_normal``).
When it is omitted, each call builds ``np.random.default_rng(seed)`` from a seed drawn from *torch's*
global RNG (:func:`torch_seeded_rng`). Why torch and not numpy's global state: ``torch.manual_seed``
is the one seed a training run sets, and it does not seed numpy; the DataLoader also derives each
worker's torch seed (``base_seed + worker_id``) from the main process's torch RNG, so workers get
distinct streams. So ``torch.manual_seed`` makes a run reproducible for a given ``num_workers``.
Results still depend on ``num_workers``: the samples a worker sees are augmented from that worker's
stream, so ``num_workers=0`` and ``num_workers=2`` draw different (equally valid) augmentations.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from fcnseg.data.base import JointTransform
from fcnseg.data.info import IGNORE_INDEX
from fcnseg.data.io import DEFAULT_MAX_PIXELS
from fcnseg.errors import ConfigError, LimitError
from fcnseg.normalization import mean_color


def torch_seeded_rng() -> np.random.Generator:
    """A fresh numpy Generator seeded from torch's global RNG (so DataLoader worker seeding applies)."""
    seed = int(torch.randint(0, 2**63 - 1, (1,), dtype=torch.int64).item())
    return np.random.default_rng(seed)


def _check_pair(image: np.ndarray, label: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] % 3 or not image.shape[2]:
        raise ValueError(f"expected an HxWx3 image (3 channels per input), got shape {image.shape}")
    if label.shape[:2] != image.shape[:2] or label.ndim not in (2, 3):
        raise ValueError(f"label shape {label.shape} does not match image shape {image.shape[:2]}")


def resize_pair(image: np.ndarray, label: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize the image bilinearly and the label with nearest neighbour to ``height`` x ``width``."""
    _check_pair(image, label)
    if image.shape[:2] == (height, width):
        return image, label
    size = (width, height)  # PIL sizes are (width, height)
    # PIL resizes 3 channels at a time: a colour image, an HHA encoding, or each of them when stacked.
    new_image = np.concatenate([np.asarray(Image.fromarray(np.ascontiguousarray(image[..., k:k + 3], np.uint8)).resize(
        size, Image.Resampling.BILINEAR)) for k in range(0, image.shape[2], 3)], axis=2)
    maps = [label] if label.ndim == 2 else [label[..., k] for k in range(label.shape[2])]
    resized = [np.asarray(Image.fromarray(np.ascontiguousarray(m, dtype=np.uint8)).resize(
        size, Image.Resampling.NEAREST)) for m in maps]
    return new_image, resized[0] if label.ndim == 2 else np.stack(resized, axis=2)


def pad_to_size(
    image: np.ndarray,
    label: np.ndarray,
    height: int,
    width: int,
    fill: Sequence[int] | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[np.ndarray, np.ndarray]:
    """Pad on the bottom/right to at least ``height`` x ``width``: image with ``fill``, label with ignore.

    ``fill`` defaults to the ImageNet mean colour (zero after normalisation); one value per channel, or three
    for every input of a stacked image. Arrays already large enough in a dimension are not padded in it (and
    never cropped).
    """
    if fill is None:
        fill = mean_color("imagenet")
    _check_pair(image, label)
    if len(fill) != image.shape[2]:
        if len(fill) != 3:
            raise ValueError(f"fill has {len(fill)} values for an image of {image.shape[2]} channels")
        fill = tuple(fill) * (image.shape[2] // 3)
    h, w = label.shape[:2]
    out_h, out_w = max(h, height), max(w, width)
    if (out_h, out_w) == (h, w):
        return image, label
    new_image = np.empty((out_h, out_w, image.shape[2]), dtype=image.dtype)
    new_image[:] = np.asarray(fill, dtype=image.dtype)
    new_image[:h, :w] = image
    new_label = np.full((out_h, out_w, *label.shape[2:]), ignore_index, dtype=label.dtype)
    new_label[:h, :w] = label
    return new_image, new_label


def crop_offsets(
    size: tuple[int, int], crop: tuple[int, int], rng: np.random.Generator | None = None
) -> tuple[int, int]:
    """The (top, left) corner of a ``crop`` window inside an array of ``size`` (both as (H, W)).

    With ``rng`` the corner is uniform over all valid positions; without it the window is centred
    (rounding towards the top-left).
    """
    (h, w), (ch, cw) = size, crop
    if ch > h or cw > w:
        raise ValueError(f"crop {crop} is larger than the array {size}; pad first")
    if rng is None:
        return (h - ch) // 2, (w - cw) // 2
    return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))


class RandomTransform:
    """Base of the random transforms: resolves the source of randomness, then calls :meth:`apply`."""

    def __call__(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        _check_pair(image, label)
        return self.apply(image, label, torch_seeded_rng() if rng is None else rng)

    def apply(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError


class Compose:
    """Apply joint transforms in order. An explicit ``rng`` is passed on to the random ones."""

    def __init__(self, transforms: Sequence[JointTransform]) -> None:
        self.transforms = list(transforms)

    def __call__(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        for transform in self.transforms:
            if rng is not None and isinstance(transform, RandomTransform | Compose):
                image, label = transform(image, label, rng=rng)
            else:
                image, label = transform(image, label)
        return image, label

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class RandomScale(RandomTransform):
    """Rescale by one factor drawn uniformly from [min_scale, max_scale] (same factor for both axes)."""

    def __init__(self, min_scale: float, max_scale: float) -> None:
        if not 0 < min_scale <= max_scale:
            raise ConfigError(f"scale range needs 0 < min <= max, got {min_scale}, {max_scale}")
        self.min_scale = min_scale
        self.max_scale = max_scale

    def apply(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        factor = float(rng.uniform(self.min_scale, self.max_scale))
        h, w = label.shape[:2]
        height, width = max(1, round(h * factor)), max(1, round(w * factor))
        # Before any memory is spent: scale_range 300 took a 64x64 crop's run to a MemoryError (9 GB) here.
        if height * width > DEFAULT_MAX_PIXELS:
            raise LimitError(f"a {w}x{h} image rescaled by {factor:.3g} would be {width}x{height} ({height * width:,} "
                             f"pixels), more than the limit of {DEFAULT_MAX_PIXELS:,}: lower the largest scale of "
                             f"scale_range ({self.max_scale:g})")
        return resize_pair(image, label, height, width)

    def __repr__(self) -> str:
        return f"RandomScale({self.min_scale}, {self.max_scale})"


class RandomCrop(RandomTransform):
    """Crop ``height`` x ``width`` at a uniform random position, padding small inputs on the bottom/right
    first (image with ``fill``, label with ``ignore_index``) so padded pixels never count in the loss."""

    def __init__(
        self,
        height: int,
        width: int,
        ignore_index: int = IGNORE_INDEX,
        fill: tuple[int, int, int] | None = None,
    ) -> None:
        if height < 1 or width < 1:
            raise ConfigError(f"crop size must be positive, got {height}x{width}")
        self.height = height
        self.width = width
        self.ignore_index = ignore_index
        self.fill = fill

    def apply(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator | None
    ) -> tuple[np.ndarray, np.ndarray]:
        image, label = pad_to_size(image, label, self.height, self.width, self.fill, self.ignore_index)
        top, left = crop_offsets(label.shape[:2], (self.height, self.width), rng)
        window = (slice(top, top + self.height), slice(left, left + self.width))
        return image[window].copy(), label[window].copy()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.height}, {self.width}, ignore_index={self.ignore_index})"


class RandomHorizontalFlip(RandomTransform):
    """Mirror image and label left-right together with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p = p

    def apply(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        if rng.random() < self.p:
            # copy: negative strides would break torch.from_numpy later
            return image[:, ::-1].copy(), label[:, ::-1].copy()
        return image, label

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


# RGB -> YIQ (NTSC): Y is the luma the other steps use, I and Q the colour; a hue shift turns (I, Q).
_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=np.float64)
# The amounts ColorJitter takes, in the order it applies them (each 0, off, by default).
PHOTOMETRIC = ("brightness", "contrast", "saturation", "hue", "gamma", "blur", "noise")


def hue_matrix(turn: float) -> np.ndarray:
    """The 3x3 matrix (for ``pixels @ matrix``) that turns each pixel's hue by ``turn`` of the colour circle
    in YIQ space: grey pixels and every pixel's luma stay as they are (up to clipping)."""
    angle = 2 * np.pi * turn
    rotate = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    return (np.linalg.inv(_YIQ) @ rotate @ _YIQ).T.astype(np.float32)


class ColorJitter(RandomTransform):
    """Random photometric changes on the image only (another day's light, another camera); the label passes
    through untouched. Of a stacked image (colour + HHA) only the first three channels, the colour image, change.

    In this fixed order, each step skipped when its amount is 0 and drawing nothing then (so adding a step
    leaves the draws of the others as they were), clipping to [0, 255] after each:

    * ``brightness``, ``contrast``, ``saturation`` x: a factor drawn uniformly from ``[max(0, 1 - x), 1 + x]``.
      Contrast blends with the mean grey level of the image, saturation with each pixel's grey value (ITU-R 601
      luma), as torchvision does.
    * ``hue`` x (at most 0.5): the hue turned by a fraction of the colour circle drawn from ``[-x, x]``, in YIQ
      space (a linear map: greys and luma are kept).
    * ``gamma`` x: ``255 * (v / 255) ** g``, ``g`` log-uniform in ``[1 / (1 + x), 1 + x]``: mid-tones darker or
      lighter, black and white kept.
    * ``blur`` x: a Gaussian blur with a standard deviation drawn from ``[0, x]`` pixels (edges reflected).
    * ``noise`` x: Gaussian noise per pixel and channel with a standard deviation drawn from ``[0, x]`` grey
      levels.

    uint8 in, uint8 out (rounded once, at the end).
    """

    def __init__(self, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0, hue: float = 0.0,
                 gamma: float = 0.0, blur: float = 0.0, noise: float = 0.0) -> None:
        amounts = dict(zip(PHOTOMETRIC, (brightness, contrast, saturation, hue, gamma, blur, noise), strict=True))
        for name, value in amounts.items():
            if value < 0:
                raise ConfigError(f"{name} must be >= 0, got {value}")
        if hue > 0.5:
            raise ConfigError(f"hue must be at most 0.5 (half the colour circle), got {hue}")
        self.brightness, self.contrast, self.saturation = brightness, contrast, saturation
        self.hue, self.gamma, self.blur, self.noise = hue, gamma, blur, noise

    @staticmethod
    def _factor(rng: np.random.Generator, amount: float) -> float:
        return float(rng.uniform(max(0.0, 1.0 - amount), 1.0 + amount))

    def apply(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        if not any(getattr(self, name) for name in PHOTOMETRIC):
            return image, label
        if image.shape[2] > 3:
            colour, _ = self.apply(image[..., :3], label, rng)
            return np.concatenate([colour, image[..., 3:]], axis=2), label
        x = image.astype(np.float32)
        luma = np.array([0.299, 0.587, 0.114], dtype=np.float32)
        if self.brightness > 0:
            x = np.clip(x * self._factor(rng, self.brightness), 0.0, 255.0)
        if self.contrast > 0:
            mean = float((x @ luma).mean())
            x = np.clip((x - mean) * self._factor(rng, self.contrast) + mean, 0.0, 255.0)
        if self.saturation > 0:
            grey = (x @ luma)[..., None]
            x = np.clip((x - grey) * self._factor(rng, self.saturation) + grey, 0.0, 255.0)
        return np.rint(self._light_and_sensor(x, rng)).astype(np.uint8), label

    def _light_and_sensor(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The steps after saturation (hue, gamma, blur, noise) on a float image in [0, 255]."""
        if self.hue > 0:
            x = np.clip(x @ hue_matrix(float(rng.uniform(-self.hue, self.hue))), 0.0, 255.0)
        if self.gamma > 0:
            bound = np.log1p(self.gamma)
            x = 255.0 * (x / 255.0) ** np.float32(np.exp(rng.uniform(-bound, bound)))
        if self.blur > 0:
            sigma = float(rng.uniform(0.0, self.blur))
            x = ndimage.gaussian_filter(x, sigma=(sigma, sigma, 0), mode="reflect")
        if self.noise > 0:
            std = float(rng.uniform(0.0, self.noise))
            x = np.clip(x + rng.standard_normal(x.shape, dtype=np.float32) * np.float32(std), 0.0, 255.0)
        return x

    def __repr__(self) -> str:
        if not any((self.hue, self.gamma, self.blur, self.noise)):
            return f"ColorJitter({self.brightness}, {self.contrast}, {self.saturation})"
        shown = ", ".join(f"{name}={getattr(self, name)}" for name in PHOTOMETRIC if getattr(self, name))
        return f"ColorJitter({shown})"


class Resize:
    """Deterministic resize to ``height`` x ``width`` (image bilinear, label nearest), e.g. for evaluation."""

    def __init__(self, height: int, width: int) -> None:
        if height < 1 or width < 1:
            raise ValueError(f"size must be positive, got {height}x{width}")
        self.height = height
        self.width = width

    def __call__(self, image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return resize_pair(image, label, self.height, self.width)

    def __repr__(self) -> str:
        return f"Resize({self.height}, {self.width})"


def train_transforms(
    crop_size: tuple[int, int] | None,
    scale_range: tuple[float, float] | None = (0.5, 2.0),
    flip: bool = True,
    color_jitter: float = 0.0,
    ignore_index: int = IGNORE_INDEX,
    normalization: str = "imagenet",
    *,
    brightness: float | None = None,
    contrast: float | None = None,
    saturation: float | None = None,
    hue: float = 0.0,
    gamma: float = 0.0,
    blur: float = 0.0,
    noise: float = 0.0,
) -> Compose:
    """The default training pipeline: random scale, random crop (padded), horizontal flip, photometric changes.

    ``crop_size=None`` keeps whole images (the paper's batch-size-1 training; batch them with
    :class:`fcnseg.data.collate.PadCollate`). ``scale_range=None`` or ``(1, 1)`` disables scaling;
    ``color_jitter`` is the amount of brightness, contrast and saturation alike (0 disables it) unless
    ``brightness``, ``contrast`` or ``saturation`` give their own; ``hue``, ``gamma``, ``blur`` and ``noise``
    are the other amounts of :class:`ColorJitter` (0: none). Crops are padded with the mean colour of
    ``normalization``, which the network sees as zero.
    """
    jitter = [color_jitter if amount is None else amount for amount in (brightness, contrast, saturation)]
    amounts = dict(zip(PHOTOMETRIC, (*jitter, hue, gamma, blur, noise), strict=True))
    transforms: list[JointTransform] = []
    if scale_range is not None and tuple(scale_range) != (1.0, 1.0):
        transforms.append(RandomScale(*scale_range))
    if crop_size is not None:
        inputs = 3 * len(normalization.split("+"))  # one normalisation per input of a stacked image
        transforms.append(RandomCrop(crop_size[0], crop_size[1], ignore_index=ignore_index,
                                     fill=mean_color(normalization, channels=inputs)))
    if flip:
        transforms.append(RandomHorizontalFlip())
    if any(amounts.values()):
        # last: changing the crop is cheaper than changing the full image
        transforms.append(ColorJitter(**amounts))
    return Compose(transforms)
