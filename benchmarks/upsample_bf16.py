"""The frozen bilinear upsampling of FCN-8s and FCN-32s in float32 and in bf16, on the CPU, one thread.

Issue 23 asked why bf16 autocast was slow in places on an AMX Xeon. The CPU's bf16 transposed convolution has
no fast kernel (depthwise or dense), so ``Upsample`` computes in float32 when it is given bf16 scores or runs
under CPU autocast. This times the layer both ways: "float32" is the layer as it now runs under autocast,
"bf16 kernel" is the bf16 transposed convolution it used to run (``nn.ConvTranspose2d.forward`` on bf16
scores and weights). Median of 5 after a warm-up, channels-last, alternating.

Usage: .venv/bin/python benchmarks/upsample_bf16.py
"""

from __future__ import annotations

import functools
import statistics

import torch
from torch import nn
from train_step import rounds

from fcnseg.models.upsample import Upsample
from fcnseg.runtime import cpu_model, native_bf16

# (what, scores N x C x H x W, stride, padding): the reference FCN-8s' x8 and FCN-32s' x32 at 500x500 (70 x 70
# and 16 x 16 scores), and the CamVid recipe's x8 (batch 8 of 240x320 crops, 11 classes, fast geometry).
CASES = (("FCN-8s x8, 500x500 reference", (1, 21, 70, 70), 8, 0),
         ("FCN-32s x32, 500x500 reference", (1, 21, 16, 16), 32, 0),
         ("CamVid recipe x8, batch 8", (8, 11, 32, 40), 8, 4))


def autocast_forward(layer: Upsample, scores: torch.Tensor) -> torch.Tensor:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return layer(scores)


def main() -> None:
    torch.set_num_threads(1)
    print(f"{cpu_model()}; native bf16: {native_bf16('cpu')}; torch {torch.__version__}; one thread, channels-last")
    print("| upsampling | float32 (as run under autocast), ms | bf16 kernel, ms |\n|---|---:|---:|")
    for what, shape, stride, padding in CASES:
        layer = Upsample(shape[1], stride, padding=padding)
        half = Upsample(shape[1], stride, padding=padding).bfloat16()
        scores = torch.randn(shape).bfloat16().contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            times = rounds({"float32": functools.partial(autocast_forward, layer, scores),
                            "bf16": functools.partial(nn.ConvTranspose2d.forward, half, scores)}, 5)
        ms = {name: 1000 * statistics.median(values) for name, values in times.items()}
        print(f"| {what} | {ms['float32']:.1f} | {ms['bf16']:.1f} |")


if __name__ == "__main__":
    main()
