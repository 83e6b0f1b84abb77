"""The training loss (class-weighted cross-entropy with an ignore index, forward and backward) on a channels-last
net's logits as they come, and made contiguous first, on the CPU, one thread.

A channels-last net (the CamVid recipes' ``channels_last: true``) gives channels-last logits, and the CPU's
cross-entropy runs slower on them than on a contiguous copy; ``segmentation_loss`` now makes them contiguous
first, and the copy (forward and backward) is counted in that row. A CamVid recipe batch: 8 x 11 x 240 x 320, a twelfth of the pixels ignored.
Median of 7 after a warm-up, alternating.

Usage: .venv/bin/python benchmarks/loss_layout.py
"""

from __future__ import annotations

import statistics

import torch
import torch.nn.functional as F
from train_step import rounds

from fcnseg.runtime import cpu_model


def loss_step(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, contiguous: bool):
    def step() -> None:
        scores = logits.detach().requires_grad_()
        F.cross_entropy(scores.contiguous() if contiguous else scores, target, weight=weight,
                        ignore_index=255).backward()

    return step


def main() -> None:
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 11, 240, 320, generator=generator).contiguous(memory_format=torch.channels_last)
    target = torch.randint(0, 12, (8, 240, 320), generator=generator)
    target[target == 11] = 255
    weight = torch.rand(11, generator=generator) + 0.5
    times = rounds({"channels-last logits as they come": loss_step(logits, target, weight, False),
                    "made contiguous first (the copy counted)": loss_step(logits, target, weight, True)}, 7)
    print(f"{cpu_model()}, 1 thread, torch {torch.__version__}")
    print("| loss, forward and backward | ms (median) |\n|---|---:|")
    for name, values in times.items():
        print(f"| {name} | {1000 * statistics.median(values):.1f} |")


if __name__ == "__main__":
    main()
