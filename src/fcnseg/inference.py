"""Dense prediction with an FCN: whole-image or sliding-window, with flip and multi-scale averaging.

``forward`` is any callable mapping a normalised float ``N x 3 x h x w`` tensor to ``N x C x h x w``
logits (an :class:`fcnseg.models.FCN`, a TorchScript module, an ONNX Runtime wrapper). Images are
normalised ``N x 3 x H x W`` tensors (see :mod:`fcnseg.normalization`).

Modes:

``"whole"``
    The net runs once on the full image (FCNs take any size), ``batch_size`` images at a time.
``"slide"``
    Windows of at most ``window`` pixels, as few as cover the image with neighbours sharing at least
    ``overlap`` of a window, all of one size and spread evenly from border to border (:func:`tile`; an
    image no larger than the window runs whole). ``batch_size`` windows run per forward call and the
    softmax probabilities are averaged where windows overlap.

Test-time augmentation: ``flip=True`` averages with the prediction of the horizontally flipped input
flipped back (per window in slide mode); ``scales`` resizes the input bilinearly to each scale, predicts,
resizes the probabilities back to H x W and averages.

Memory (float32, C classes):

* whole mode: the net's activations for ``batch_size`` full images (without autograd only a few feature
  maps live at once, the largest being conv1's 64 x H x W floats: 67 MB at 512 x 512 for VGG16, more
  with the reference geometry's 100-pixel padding), plus the C x H x W probabilities it outputs.
* slide mode: the net's activations for one batch of ``batch_size`` windows, plus a strip buffer of
  C x window_h x W probability sums and a window_h x W count map, plus the finished strip handed out
  (C x at most stride_h x W): at most C x (window_h + stride_h) x W floats for the probabilities, however
  tall the image. :func:`predict_labels` keeps only that (and the int64 H x W labels), while
  :func:`predict_probs` returns the full N x C x H x W result by definition. With several scales each
  scale keeps its own strip buffer (at its own width) and about a window of resampled rows, and the
  resized inputs (3 x sH x sW floats per scale s) are held during the run.

bf16: ``bf16=True`` runs the forward passes under ``torch.autocast`` in bfloat16 (fast only where
the CPU or GPU computes bf16 natively); probabilities are always accumulated in float32.

Both functions share one row-streaming engine, so ``predict_labels(...)`` is exactly
``predict_probs(...).argmax(1)``.

Nets with several heads (``heads``: the class count of each, their scores side by side in the channels)
get one softmax per head from a single forward pass: the engine takes the softmax over every head's
log-softmax side by side, which is each head's own softmax divided by the number of heads K (each sums to
one), and averages stay linear; the probabilities are multiplied by K at the end and the labels are one
argmax per head.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fcnseg.data.info import count_text
from fcnseg.errors import ConfigError, WeightsError
from fcnseg.ranges import BELOW_ONE, COUNT, POSITIVE, check_fields

Forward = Callable[[Tensor], Tensor]
MODES = ("whole", "slide")


@dataclass(frozen=True)
class InferenceOptions:
    """How to run a net over images; shared by the API, ``fcnseg predict``, ``eval`` and ``serve``.

    Each field's ``help`` is the help text of its command-line flag.
    """

    mode: str = field(default="whole", metadata={
        "help": "whole: the image at once; slide: overlapping windows (bounded memory for large images)",
        "choices": MODES})
    # Large windows with a small overlap (docs/performance.md): a 4000x3000 photo at full width in 1.2x the
    # whole-image time and 2.7 GB; the overlap changes little (larger windows, more context, matter more).
    window: tuple[int, int] = field(default=(1536, 1536), metadata={
        "help": "largest sliding-window size in pixels (height width)", "metavar": ("H", "W"), "range": COUNT})
    overlap: float = field(default=0.0625, metadata={
        "help": "least fraction of a window its neighbours share, in [0, 1)", "range": BELOW_ONE})
    flip: bool = field(default=False, metadata={"help": "also predict the mirrored image and average"})
    scales: tuple[float, ...] = field(default=(1.0,), metadata={"help": "average over these input scales",
                                                               "range": POSITIVE})
    batch_size: int = field(default=1, metadata={
        "help": "images per forward pass (whole mode), windows per forward pass (slide mode)", "range": COUNT})
    bf16: bool = field(default=False, metadata={
        "help": "run under bfloat16 autocast (torch backend; slow where the CPU has no native bf16)"})

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"unknown mode {self.mode!r}; choose one of {MODES}")
        try:
            window = tuple(int(v) for v in self.window)
            scales = tuple(float(s) for s in self.scales)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"window must be two sizes and scales numbers; got {self.window!r}, "
                              f"{self.scales!r}") from None
        if len(window) != 2:
            raise ConfigError(f"window must be two sizes (height, width), got {window}")
        if not scales:
            raise ConfigError("scales must be one or more numbers, got none")
        for name in ("flip", "bf16"):  # flip="no" is a true value: it would flip
            value = getattr(self, name)
            if not isinstance(value, bool | np.bool_):  # numpy's bool too (a flag read from an array)
                raise ConfigError(f"{name} must be True or False, got {value!r}")
            object.__setattr__(self, name, bool(value))
        object.__setattr__(self, "window", window)
        object.__setattr__(self, "scales", scales)
        check_fields(self)  # the ranges of the fields: no nan, inf, zero or negative scale, ...
        object.__setattr__(self, "overlap", float(self.overlap))

    def replace(self, **changes) -> InferenceOptions:
        """A copy with ``changes`` applied (and checked)."""
        return dataclasses.replace(self, **changes) if changes else self


def predict_probs(forward: Forward, images: Tensor, options: InferenceOptions | None = None,
                  heads: Sequence[int] | None = None, **changes) -> Tensor:
    """Softmax probabilities ``N x C x H x W`` (float32) averaged over windows, flips and scales.

    Args:
        forward: callable mapping normalised ``n x 3 x h x w`` input to ``n x C x h x w`` logits.
        images: normalised ``N x 3 x H x W`` float tensor; the result lives on its device.
        options: how to run (see :class:`InferenceOptions`); keyword ``changes`` override single fields.
        heads: the class count of each head of a net with several (their sum is C); each head's
            channels then hold its own softmax.
    """
    options = _checked(images, options, changes)
    out = None
    for index, start, strip in _iter_groups(_per_head(forward, heads), images, options):
        if out is None:
            out = images.new_empty((images.shape[0], strip.shape[1], *images.shape[2:]), dtype=torch.float32)
        out[index, :, start:start + strip.shape[2]] = strip
    return out * len(heads) if heads and len(heads) > 1 else out


def predict_labels(forward: Forward, images: Tensor, options: InferenceOptions | None = None,
                   heads: Sequence[int] | None = None, **changes) -> Tensor:
    """Label maps ``N x H x W`` (int64): the argmax of :func:`predict_probs` with the same arguments;
    ``N x K x H x W``, one map per head, for a net of K > 1 ``heads``.

    In slide mode the probabilities are never held for the whole image: rows are finalised (argmax taken)
    as soon as no later window touches them, so memory stays bounded for arbitrarily tall images.
    """
    options = _checked(images, options, changes)
    heads = tuple(heads) if heads and len(heads) > 1 else None
    shape = (images.shape[0], *((len(heads),) if heads else ()), *images.shape[2:])
    labels = torch.empty(shape, dtype=torch.int64, device=images.device)
    for index, start, strip in _iter_groups(_per_head(forward, heads), images, options):
        rows = slice(start, start + strip.shape[2])
        if heads is None:
            labels[index, rows] = class_argmax(strip)
        else:
            labels[index, :, rows] = torch.stack([class_argmax(part) for part in strip.split(heads, 1)], 1)
    return labels


def class_argmax(scores: Tensor, dim: int = 1) -> Tensor:
    """The index of each pixel's largest score over the classes in ``dim``: ``scores.argmax(dim)``, computed
    as ``max(dim).indices``, which gives the same indices (the first of equal maxima, NaN as the maximum) and on
    the CPU runs 1.5 to 4.5 times faster (31 against 7 ms for 11 classes of a 360x480 frame in NCHW, the layout
    softmax returns; benchmarks/argmax.py). Scores that are not all finite are refused: the maximum of a NaN is
    index 0, so a net whose scores overflowed was scored and drawn as class 0 everywhere."""
    largest, labels = scores.max(dim)
    # The maxima only (C times smaller than the scores: no memory the estimates do not count): a NaN anywhere in a
    # pixel's scores is its maximum, and so is +inf; a pixel whose scores are all -inf has -inf.
    if not torch.isfinite(largest).all():
        raise WeightsError("the net's scores hold NaN or infinite values (weights that overflow, a diverged "
                           "training?): there is nothing to label; use an earlier checkpoint")
    return labels


def _per_head(forward: Forward, heads: Sequence[int] | None) -> Forward:
    """``forward``, or for several heads a forward giving every head's log-softmax side by side."""
    if not heads or len(heads) == 1:
        return forward
    heads = tuple(heads)

    def log_probs(x: Tensor) -> Tensor:
        logits = forward(x)
        if logits.dim() != 4 or logits.shape[1] != sum(heads):
            raise ValueError(f"forward returned {tuple(logits.shape)}, not the {count_text(heads)} channels of "
                             "the heads")
        return torch.cat([torch.log_softmax(part.float(), 1) for part in logits.split(heads, 1)], 1)

    return log_probs


def _checked(images: Tensor, options: InferenceOptions | None, changes: dict) -> InferenceOptions:
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] % 3 or not images.shape[1]:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a normalised N x 3 x H x W tensor (3 channels per input), got {shape}")
    if not images.is_floating_point():
        raise ValueError(f"images must be normalised floats (fcnseg.normalization.normalize), got {images.dtype}")
    if images.shape[2] < 1 or images.shape[3] < 1:
        raise ValueError(f"images must have at least one pixel, got {tuple(images.shape)}")
    return (options or InferenceOptions()).replace(**changes)


def _iter_groups(forward: Forward, images: Tensor, options: InferenceOptions) -> Iterator[tuple[slice, int, Tensor]]:
    """(images slice, first row, n x C x rows x W strip) in row order per group of images."""
    # Whole mode batches images; slide mode batches windows of one image at a time.
    group = options.batch_size if options.mode == "whole" else 1
    autocast = torch.autocast(images.device.type, dtype=torch.bfloat16) if options.bf16 else nullcontext()
    with torch.no_grad(), autocast:
        for first in range(0, images.shape[0], group):
            index = slice(first, first + group)
            for start, strip in _iter_strips(forward, images[index], options):
                yield index, start, strip


def _iter_strips(forward: Forward, x: Tensor, options: InferenceOptions) -> Iterator[tuple[int, Tensor]]:
    """Finished probability rows of ``x`` (n x 3 x H x W), top to bottom, averaged over scales."""
    height, width = x.shape[2:]

    def strips_at(scaled: Tensor) -> Iterator[tuple[int, Tensor]]:
        if options.mode == "whole":
            return iter([(0, _probs(forward, scaled, options.flip))])
        return _slide_strips(forward, scaled, options)

    if options.scales == (1.0,):
        yield from strips_at(x)
        return
    streams = []
    for scale in options.scales:
        size = scaled_size(height, width, scale)
        scaled = x if size == (height, width) else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        streams.append(_RowResampler(strips_at(scaled), size[0], height, width))
    # Output rows per step: a window stride keeps every scale's buffers small in slide mode.
    step = height if options.mode == "whole" else tile_step(height, options.window[0], options.overlap)
    for start in range(0, height, step):
        stop = min(start + step, height)
        total = streams[0].rows(start, stop)
        for stream in streams[1:]:
            total += stream.rows(start, stop)
        yield start, total / len(streams)


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """The size an image of ``height x width`` is resized to at ``scale`` (rounded, at least 1 pixel): what
    inference runs the net on, and so what the memory estimate counts."""
    return max(1, round(height * scale)), max(1, round(width * scale))


def _probs(forward: Forward, x: Tensor, flip: bool) -> Tensor:
    """Softmax of the logits, averaged with the flipped input's prediction flipped back."""
    probs = _softmax(forward, x)
    if flip:
        probs = (probs + _softmax(forward, x.flip(-1)).flip(-1)) / 2
    return probs


def _softmax(forward: Forward, x: Tensor) -> Tensor:
    logits = forward(x)
    if not isinstance(logits, Tensor) or logits.dim() != 4 or logits.shape[0] != x.shape[0] \
            or logits.shape[2:] != x.shape[2:]:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"forward returned {shape} for input {tuple(x.shape)}; it must return "
                         "N x C x H x W logits at the input's size")
    return torch.softmax(logits.float(), dim=1)


def tile(length: int, window: int, overlap: float) -> tuple[int, list[int]]:
    """Windows along one axis of ``length`` pixels: ``(size, starts)``.

    As few windows as cover the axis with neighbours sharing at least ``overlap * window`` pixels, all of one
    size (at most ``window``: the windows shrink to tile the axis evenly rather than leave a last window that
    mostly repeats its neighbour), spread evenly from 0 to the far border. An axis no longer than ``window``
    is one window.
    """
    if length <= window:
        return length, [0]
    shared = window - max(1, int(window * (1 - overlap) + 1e-9))  # the epsilon: 3 * (1 - 1/3) is 1.9999...
    count = math.ceil((length - shared) / (window - shared))
    size = min(window, math.ceil((length + (count - 1) * shared) / count))
    return size, [round(k * (length - size) / (count - 1)) for k in range(count)]


def tile_step(length: int, window: int, overlap: float) -> int:
    """Rows between the starts of neighbouring windows (the whole length for one window)."""
    size, starts = tile(length, window, overlap)
    return max(1, starts[1] - starts[0]) if len(starts) > 1 else size


class _StripBuffer:
    """Probability sums and window counts for the rows [top, top + rows) of one image.

    Rows move out at the top once finished, so the buffer never holds more than one window height.
    """

    def __init__(self, classes: int, rows: int, width: int, device: torch.device) -> None:
        self.sums = torch.zeros((1, classes, rows, width), dtype=torch.float32, device=device)
        self.counts = torch.zeros((rows, width), dtype=torch.float32, device=device)

    def add(self, row: int, col: int, probs: Tensor) -> None:
        """Add one window's ``1 x C x h x w`` probabilities at buffer offset (row, col)."""
        h, w = probs.shape[2:]
        self.sums[:, :, row:row + h, col:col + w] += probs
        self.counts[row:row + h, col:col + w] += 1

    def averages(self, start: int, stop: int) -> Tensor:
        """The averaged probabilities of buffer rows [start, stop) (a new tensor)."""
        return self.sums[:, :, start:stop] / self.counts[start:stop]

    def drop(self, rows: int) -> None:
        """Move rows [rows, end) to the top and clear the rest (chunked: never copy overlapping memory)."""
        total = self.sums.shape[2]
        for dst in range(0, total - rows, rows):
            src_stop = min(dst + 2 * rows, total)
            self.sums[:, :, dst:src_stop - rows] = self.sums[:, :, dst + rows:src_stop]
            self.counts[dst:src_stop - rows] = self.counts[dst + rows:src_stop]
        self.sums[:, :, max(total - rows, 0):] = 0
        self.counts[max(total - rows, 0):] = 0


def _slide_strips(forward: Forward, x: Tensor, options: InferenceOptions) -> Iterator[tuple[int, Tensor]]:
    """Sliding-window probabilities of one image (1 x 3 x H x W) as finished strips of at most one step of rows."""
    height, width = x.shape[2:]
    win_h, tops = tile(height, options.window[0], options.overlap)
    win_w, lefts = tile(width, options.window[1], options.overlap)
    step = tile_step(height, options.window[0], options.overlap)
    buffer = None
    for i, top in enumerate(tops):
        # The buffer's row 0 is image row ``top``: rows above are finished and handed out.
        for first in range(0, len(lefts), options.batch_size):
            chunk = lefts[first:first + options.batch_size]
            crops = torch.cat([x[:, :, top:top + win_h, left:left + win_w] for left in chunk])
            probs = _probs(forward, crops, options.flip)
            if buffer is None:
                buffer = _StripBuffer(probs.shape[1], win_h, width, probs.device)
            for j, left in enumerate(chunk):
                buffer.add(0, left, probs[j:j + 1])
        done = (tops[i + 1] if i + 1 < len(tops) else height) - top  # rows no later window touches
        for start in range(0, done, step):
            yield top + start, buffer.averages(start, min(start + step, done))
        if i + 1 < len(tops):
            buffer.drop(done)


class _RowResampler:
    """Bilinear resizing (as ``F.interpolate(..., align_corners=False)``) of a map that arrives in row strips.

    Columns are resized as strips arrive; rows by explicit interpolation weights, keeping only the
    source rows that later output rows still need.
    """

    def __init__(self, strips: Iterator[tuple[int, Tensor]], source_height: int, height: int, width: int) -> None:
        self.strips = strips
        self.width = width
        # Source coordinate of each output row (half-pixel centres, clamped at the top as PyTorch does).
        scale = source_height / height
        coord = ((torch.arange(height, dtype=torch.float64) + 0.5) * scale - 0.5).clamp(min=0)
        self.low = coord.floor().long().clamp(max=source_height - 1)
        self.high = (self.low + 1).clamp(max=source_height - 1)
        self.weight = (coord - self.low).float()
        self.held: Tensor | None = None  # resized source rows [self.first, self.first + len)
        self.first = 0

    def rows(self, start: int, stop: int) -> Tensor:
        """Output rows [start, stop); calls must move down the image."""
        need = int(self.high[stop - 1]) + 1
        while self.held is None or self.first + self.held.shape[2] < need:
            row, strip = next(self.strips)
            if strip.shape[3] != self.width:
                strip = F.interpolate(strip, size=(strip.shape[2], self.width), mode="bilinear", align_corners=False)
            if self.held is None:
                self.held, self.first = strip, row
            else:
                self.held = torch.cat([self.held, strip], dim=2)
        keep = int(self.low[start]) - self.first  # rows above are never needed again
        if keep > 0:
            self.held, self.first = self.held[:, :, keep:], self.first + keep
        device = self.held.device
        low = (self.low[start:stop] - self.first).to(device)
        high = (self.high[start:stop] - self.first).to(device)
        weight = self.weight[start:stop].to(device).view(1, 1, -1, 1)
        return self.held.index_select(2, low) * (1 - weight) + self.held.index_select(2, high) * weight
