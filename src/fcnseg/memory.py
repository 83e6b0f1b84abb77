"""Memory: the peak a planned inference will need, estimated before it is spent, and a plan that fits.

The estimate follows the net layer by layer on PyTorch's ``meta`` device (shapes only, no memory, no
arithmetic): the input, every layer's input and output while it runs (plus the reordered copy of the
output that oneDNN's convolutions make in PyTorch's default memory format, not in channels-last, which
checkpoints run in), and the stage outputs the FCN keeps for its skip layers; then the
inference engine's own buffers (logits and probabilities, flips, every scale's resized input and
probability maps in whole-image mode, the strip buffer of sliding windows, the label map).

:func:`fit` turns whole-image inference into sliding windows when the whole image would not fit the
budget, shrinks windows that do not fit, and refuses with one line naming the estimate when nothing fits.
The budget defaults to 80% of the memory available when it is computed (``--max-memory`` sets it).
"""

from __future__ import annotations

import functools
import importlib
import re
import sys
import threading

import torch
from torch import nn

from fcnseg.errors import ConfigError, LimitError, format_bytes  # format_bytes: memory's messages' too
from fcnseg.inference import InferenceOptions, scaled_size, tile, tile_step
from fcnseg.models import ModelSpec, build_model
from fcnseg.runtime import available_bytes  # here too: what a memory estimate is held against
from fcnseg.signals import signals_held

BUDGET_FRACTION = 0.8
# Measured peaks (benchmarks/memory_estimate.py, docs/RELIABILITY.md) run up to 1.25x the layer-by-layer sum on
# very wide, short images, and carry about 60 MB of library and thread buffers at any size.
SAFETY = 1.25
OVERHEAD = 64 * 2**20
_MIN_WINDOW = 64
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_size(text: str) -> int:
    """'8G', '500M', '1.5G' or a plain number of bytes -> bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", str(text), re.IGNORECASE)
    if not match:
        raise ConfigError(f"expected a size such as 8G, 500M or 1500000000, got {text!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def default_budget(device: torch.device | str = "cpu") -> int:
    return int(BUDGET_FRACTION * available_bytes(device))


def format_apart(need: float, budget: float) -> tuple[str, str]:
    """``need`` and ``budget`` for a message saying that one exceeds the other, with as many decimals as it takes
    for them to read apart (up to 3): "about 4.02 GB, more than the budget of 4 GB", not "about 4 GB, more than
    the budget of 4 GB"; in bytes where even 3 decimals read alike."""
    for decimals in (1, 2, 3):
        shown = format_bytes(need, decimals), format_bytes(budget, decimals)
        if shown[0] != shown[1] or need == budget:
            return shown
    return f"{need:,.0f} bytes", f"{budget:,.0f} bytes"


# forward_bytes hooks the layers of a shared, cached net: two estimates at once (fcnseg serve plans a request
# while its worker's prediction plans another) would each count the other's layers.
_META_LOCK = threading.Lock()


@functools.lru_cache(maxsize=8)
def _meta_model(architecture: ModelSpec) -> nn.Module:
    if "torch._dynamo" not in sys.modules:
        # torch imports torch._dynamo (about 1 s) on the first pass on the meta device; a Ctrl+C inside that
        # import could end in a RuntimeError traceback (raised inside a class's __set_name__): held until it ends.
        with signals_held():
            importlib.import_module("torch._dynamo")  # not "import torch._dynamo": that makes torch a local
    with torch.device("meta"):
        return build_model(architecture).eval()


@functools.lru_cache(maxsize=256)  # a validation plans every batch (30 ms a pass of a net on the meta device)
def forward_bytes(spec: ModelSpec, batch: int, height: int, width: int, channels_last: bool = False) -> int:
    """Peak bytes of one forward pass of the net ``spec`` on a ``batch x channels x height x width`` float32
    input, without autograd (``channels_last``: in that memory format)."""
    model = _meta_model(spec.replace(classes=None))  # the layers decide: nets of other classes share one
    trunks = getattr(model.backbone, "trunks", {"": model.backbone})  # a late-fusion net keeps every trunk's maps
    stage_ends = {id(stage[-1]) for trunk in trunks.values() for stage in trunk.stages()[:2]}
    kept, peak = 0, 0

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal kept, peak
        size_in = sum(t.numel() for t in inputs if isinstance(t, torch.Tensor)) * 4
        size_out = output.numel() * 4 if isinstance(output, torch.Tensor) else 0
        if isinstance(module, nn.ReLU | nn.Dropout):  # in place, or the input itself in eval mode
            size_out = 0
        # oneDNN convolutions work on a reordered copy of the weights and, in PyTorch's default format, write a
        # blocked-layout output that is then copied back: measured, a convolution's peak is its input + 2 x output
        # + weights, and input + output + weights in channels-last (benchmarks/memory_estimate.py).
        convolution = isinstance(module, nn.Conv2d | nn.ConvTranspose2d)
        reorder = module.weight.numel() * 4 + (0 if channels_last else size_out) if convolution else 0
        peak = max(peak, kept + size_in + size_out + reorder)
        if id(module) in stage_ends:
            kept += size_out  # pool3 / pool4 maps wait for the skip layers

    padded = []
    leaves = [m for m in model.modules() if not list(m.children())]
    with _META_LOCK:
        handles = [m.register_forward_hook(hook) for m in leaves]
        handles.append(model.backbone.register_forward_pre_hook(
            lambda module, inputs: padded.append(inputs[0].numel())))
        try:
            with torch.no_grad():
                output = model(torch.empty(batch, spec.channels, height, width, device="meta"))
        finally:
            for handle in handles:
                handle.remove()
    return peak + padded[0] * 4 + output.numel() * 4


def inference_bytes(spec: ModelSpec, batch: int, height: int, width: int, options: InferenceOptions,
                    probs: bool = False, channels_last: bool = False) -> int:
    """Peak bytes of inference on ``batch`` images of ``height x width`` with ``options``: the image (uint8 and
    normalised), the net, the engine's buffers, and the label map (and probabilities with ``probs``)."""
    pixels, classes, channels = batch * height * width, sum(spec.head_classes), spec.channels
    base = pixels * (channels + channels * 4 + 8) + (pixels * classes * 4 if probs else 0)
    sizes = [scaled_size(height, width, s) for s in options.scales]
    resized = sum(batch * channels * h * w * 4 for h, w in sizes if (h, w) != (height, width))
    flips = 2 if options.flip else 1
    if options.mode == "whole":
        held = sum(batch * classes * h * w * 4 for h, w in sizes) if len(sizes) > 1 else 0
        work = max(forward_bytes(spec, batch, h, w, channels_last) + (1 + flips) * batch * classes * h * w * 4
                   for h, w in sizes)
        return int(OVERHEAD + SAFETY * (base + resized + held + work))
    window_work, buffers = 0, 0
    for h, w in sizes:
        win_h, win_w = tile(h, options.window[0], options.overlap)[0], tile(w, options.window[1], options.overlap)[0]
        window_work = max(window_work, forward_bytes(spec, options.batch_size, win_h, win_w, channels_last)
                          + (1 + flips) * options.batch_size * classes * win_h * win_w * 4)
        step = tile_step(h, options.window[0], options.overlap)
        buffers += classes * (win_h + 2 * step) * w * 4 + win_h * w * 4
    if len(sizes) > 1:  # each scale's rows resampled to the image's width, about a window and a step of them
        window_rows = tile(height, options.window[0], options.overlap)[0]
        rows = window_rows + tile_step(height, options.window[0], options.overlap)
        buffers += len(sizes) * batch * classes * rows * width * 4
    return int(OVERHEAD + SAFETY * (base + resized + buffers + window_work))


def fit(spec: ModelSpec, batch: int, height: int, width: int, options: InferenceOptions,
        budget: int, probs: bool = False, name: str = "the image",
        channels_last: bool = False) -> tuple[InferenceOptions, str | None]:
    """Options whose estimate fits ``budget``, and a note when they differ from ``options``.

    Whole-image inference that does not fit becomes sliding windows (the options' window size, then halves
    of it down to 64 pixels); a sliding window that does not fit is halved the same way. Raises LimitError
    naming the estimate when not even 64-pixel windows fit.
    """
    needed = inference_bytes(spec, batch, height, width, options, probs, channels_last)
    if needed <= budget:
        return options, None
    window = options.window
    while True:
        candidate = options.replace(mode="slide", window=window)
        estimate = inference_bytes(spec, batch, height, width, candidate, probs, channels_last)
        if estimate <= budget:
            over, limit = format_apart(needed, budget)
            return candidate, (f"{options.mode}-image inference of {name} ({width}x{height}) would need about "
                               f"{over}, more than the budget of {limit}: using "
                               f"{window[0]}x{window[1]} sliding windows instead (about {format_bytes(estimate)})"
                               if options.mode == "whole" else
                               f"{options.window[0]}x{options.window[1]} windows on {name} would need about "
                               f"{over}, more than the budget of {limit}: using "
                               f"{window[0]}x{window[1]} windows (about {format_bytes(estimate)})")
        if max(window) <= _MIN_WINDOW:
            over, limit = format_apart(estimate, budget)
            raise LimitError(f"{name} ({width}x{height}, scales {', '.join(f'{s:g}' for s in options.scales)}) "
                             f"needs about {over} even with {window[0]}x{window[1]} sliding "
                             f"windows, more than the memory budget of {limit}; use smaller scales "
                             "or a smaller image, or raise --max-memory if this machine has the memory")
        window = (max(_MIN_WINDOW, window[0] // 2), max(_MIN_WINDOW, window[1] // 2))


def saved_activations(spec: ModelSpec, batch: int, height: int, width: int) -> tuple[int, int]:
    """(bytes autograd keeps from the forward pass for the backward one, bytes of the largest layer input +
    output) of the net ``spec`` on a ``batch x channels x height x width`` float32 input in training mode.

    Every layer's output is kept (a convolution keeps its input, the previous layer's output; an in-place ReLU
    keeps the tensor it overwrote), max pooling also keeps the int64 positions of its maxima, dropout its
    mask; the padded input is kept by the first convolution."""
    model = _meta_model(spec.replace(classes=None))
    kept, largest = 0, 0

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal kept, largest
        size_in = sum(t.numel() for t in inputs if isinstance(t, torch.Tensor)) * 4
        size_out = output.numel() * 4 if isinstance(output, torch.Tensor) else 0
        largest = max(largest, size_in + size_out)
        if isinstance(module, nn.ReLU) and module.inplace:
            return
        kept += size_out + (2 * size_out if isinstance(module, nn.MaxPool2d) else 0) \
            + (size_out // 4 if isinstance(module, nn.Dropout) else 0)

    padded = []
    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    handles.append(model.backbone.register_forward_pre_hook(lambda module, inputs: padded.append(inputs[0].numel())))
    try:
        with torch.no_grad():
            model(torch.empty(batch, spec.channels, height, width, device="meta"))
    finally:
        for handle in handles:
            handle.remove()
    return kept + padded[0] * 4, largest


def parameter_bytes(spec: ModelSpec, optimizer_slots: int = 1, ema: bool = False) -> int:
    """Bytes of the net's weights in training: the weights (and their moving average with ``ema``), and for
    the trained ones their gradients, ``optimizer_slots`` tensors of optimizer state each (SGD's momentum:
    1, AdamW's moments: 2) and the one the optimizer's step makes on the way (SGD adds the weight decay to a
    copy of the gradients, AdamW takes square roots into a new tensor)."""
    model = _meta_model(spec.replace(classes=None))
    weights = sum(p.numel() for p in model.parameters())
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return 4 * (weights * (2 if ema else 1) + trained * (2 + optimizer_slots))


def loader_bytes(channels: int, batch: int, height: int, width: int, workers: int = 0) -> int:
    """Bytes the data pipeline holds for batches of ``batch`` samples of ``height x width``: each sample's
    uint8 image and label with their padded and cropped copies, its float32 image and int64 label, the batch
    they are stacked into, and the batches in flight (the one training, the next one; two per worker
    process, DataLoader's prefetch)."""
    pixels = height * width
    sample = pixels * (2 * (channels + 1) + channels * 4 + 8)  # padded + cropped uint8, then the tensors
    stacked = batch * pixels * (channels * 4 + 8)
    in_flight = 2 + 2 * workers
    return max(workers, 1) * (sample + stacked) + in_flight * stacked


def training_bytes(spec: ModelSpec, batch: int, height: int, width: int, optimizer_slots: int = 1,
                   ema: bool = False, workers: int = 0) -> tuple[int, int]:
    """(bytes of the training device, bytes of the data pipeline) of one training step of the net ``spec`` on
    batches of ``batch`` samples of ``height x width``: the weights with their gradients and optimizer state
    (:func:`parameter_bytes`), the activations kept for the backward pass, the gradients flowing back through
    the largest layer, the logits with their log-softmax and gradient, the batch; and :func:`loader_bytes`.
    Both with the same safety margin as inference's estimate."""
    kept, largest = saved_activations(spec, batch, height, width)
    pixels = batch * height * width
    logits = 3 * pixels * sum(spec.head_classes) * 4
    inputs = pixels * (spec.channels * 4 + 8)
    device = parameter_bytes(spec, optimizer_slots, ema) + kept + 2 * largest + logits + inputs
    return int(OVERHEAD + SAFETY * device), int(SAFETY * loader_bytes(spec.channels, batch, height, width, workers))
