"""Labels from class scores: ``torch.argmax(scores, 1)`` against ``fcnseg.inference.class_argmax``
(``scores.max(1).indices``, the same indices), on one 360x480 frame's scores, one thread, on the CPU.

Both layouts the inference path meets: scores in NCHW (what softmax returns, also for a channels-last net) and
channels-last (a channels-last net's logits). Median of 21 calls each, the two functions alternating.

Usage: .venv/bin/python benchmarks/argmax.py
"""

from __future__ import annotations

import argparse
import statistics

import torch
from train_step import rounds

from fcnseg.inference import class_argmax
from fcnseg.runtime import cpu_model


def main() -> None:
    # No options: the parser refuses a mistyped one (it was ignored, and the whole benchmark ran) and gives --help.
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    torch.set_num_threads(1)
    print(f"{cpu_model()}, torch {torch.__version__}, 1 thread; scores 1 x C x 360 x 480, float32")
    print("| classes | layout | argmax(1) ms | class_argmax ms | speed-up |\n|---:|---|---:|---:|---:|")
    for classes in (11, 21, 150):
        scores = torch.randn(1, classes, 360, 480, generator=torch.Generator().manual_seed(classes))
        for layout, x in (("NCHW", scores), ("channels-last", scores.contiguous(memory_format=torch.channels_last))):
            assert torch.equal(class_argmax(x), x.argmax(1))
            times = {name: 1000 * statistics.median(values) for name, values in rounds(
                {"argmax": lambda x=x: x.argmax(1), "class_argmax": lambda x=x: class_argmax(x)}, 21).items()}
            print(f"| {classes} | {layout} | {times['argmax']:.1f} | {times['class_argmax']:.1f} | "
                  f"{times['argmax'] / times['class_argmax']:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
