"""AdamW's state in a training checkpoint: how many of its numbers are denormal (below float32's smallest normal
number, about 1.2e-38), and what an AdamW-like update of that state costs with and without flushing them to 0
(``fcnseg.runtime.flush_denormals``, which ``fcnseg train`` now runs under), one thread, on the CPU.

The update is AdamW's arithmetic on the checkpoint's own averages (``exp_avg``, ``exp_avg_sq``), with gradients
half the averaged ones: it shows the cost of the numbers the run made, not of a real step. Median of 5,
alternating off / on twice.

Usage: .venv/bin/python benchmarks/denormals.py RUN/last.pth
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from fcnseg.checkpoint import read_checkpoint
from fcnseg.errors import FcnsegError
from fcnseg.runtime import cpu_model

TINY = torch.finfo(torch.float32).tiny


def denormal_count(tensors: list[torch.Tensor]) -> int:
    return sum(int(((tensor != 0) & (tensor.abs() < TINY)).sum()) for tensor in tensors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    args = parser.parse_args()
    torch.set_num_threads(1)
    try:
        checkpoint = read_checkpoint(args.checkpoint)
    except FcnsegError as error:
        _refuse(f"denormals.py: error: {error}")
    if "optimizer" not in checkpoint:
        _refuse(f"denormals.py: error: {args.checkpoint} holds no optimizer state: give a training run's last.pth")
    state = checkpoint["optimizer"]["state"].values()
    averages = [entry["exp_avg"].clone() for entry in state]
    squares = [entry["exp_avg_sq"].clone() for entry in state]
    weights = [torch.randn(average.shape, generator=torch.Generator().manual_seed(0)) * 0.05 for average in averages]
    gradients = [average * 0.5 for average in averages]
    total = sum(average.numel() for average in averages)
    print(f"{cpu_model()}, torch {torch.__version__}; {args.checkpoint}: {denormal_count(averages)} of {total} "
          f"exp_avg and {denormal_count(squares)} of {total} exp_avg_sq denormal")

    def update() -> float:
        start = time.perf_counter()
        torch._foreach_mul_(squares, 0.999)
        torch._foreach_addcmul_(squares, gradients, gradients, 0.001)
        torch._foreach_mul_(averages, 0.9)
        torch._foreach_add_(averages, gradients, alpha=0.1)
        denominators = torch._foreach_sqrt(squares)
        torch._foreach_add_(denominators, 1e-8)
        torch._foreach_addcdiv_(weights, averages, denominators, -1e-4)
        return time.perf_counter() - start

    for flushed in (False, True, False, True):
        torch.set_flush_denormal(flushed)
        median = statistics.median(update() for _ in range(5))
        print(f"| denormals {'flushed to 0' if flushed else 'as they are'} | {1000 * median:.1f} ms per update |")
    torch.set_flush_denormal(False)


def _refuse(message: str) -> None:
    print(message, file=sys.stderr)
    raise SystemExit(2)  # a usage error, as fcnseg's commands exit


if __name__ == "__main__":
    main()
