"""Forward time of FCN-8s (VGG16) at 500x500: the pytorch-fcn graph vs fcnseg's reference and fast geometry.

pytorch-fcn's graph is restated in tests/models/torchfcn_oracle.py (the test oracle for weight import):
full class x class transposed convolutions and 1x1 score layers applied before cropping. fcnseg's reference
geometry computes the same function; its frozen upsampling is depthwise and it crops before scoring.
Usage: .venv/bin/python benchmarks/forward_speed.py [--width 0.25] [--threads 2] [--runs 5] [--size 500]
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "models"))
from torchfcn_oracle import TorchFCN  # noqa: E402

from fcnseg import build_model  # noqa: E402


def median_ms(model: torch.nn.Module, x: torch.Tensor, runs: int) -> float:
    times = []
    with torch.inference_mode():
        model(x)  # warm-up
        for _ in range(runs):
            start = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--size", type=int, default=500)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x = torch.randn(1, 3, args.size, args.size)
    nets = {
        "pytorch-fcn graph (FCN8s)": TorchFCN("8s", n_class=21, width=args.width).eval(),
        "fcnseg reference": build_model("fcn8s", num_classes=21, width=args.width, geometry="reference").eval(),
        "fcnseg reference, learnable upsampling": build_model(
            "fcn8s", num_classes=21, width=args.width, geometry="reference", learnable_upsampling=True).eval(),
        "fcnseg fast": build_model("fcn8s", num_classes=21, width=args.width, geometry="fast").eval(),
    }
    print(f"FCN-8s VGG16 width {args.width}, {args.size}x{args.size}, 21 classes, {args.threads} threads, "
          f"median of {args.runs}; torch {torch.__version__}")
    print("| net | ms | vs pytorch-fcn graph |\n|---|---:|---:|")
    baseline = None
    for name, net in nets.items():
        ms = median_ms(net, x, args.runs)
        baseline = baseline or ms
        print(f"| {name} | {ms:.0f} | {baseline / ms:.2f}x |")


if __name__ == "__main__":
    main()
