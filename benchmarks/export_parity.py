"""ONNX Runtime vs PyTorch on the CPU: output parity and latency of an exported FCN-8s at several sizes.

    .venv/bin/python benchmarks/export_parity.py [--width 0.25] [--runs 3] [--threads N]

Exports a randomly initialised (score layers randomised, so outputs are not constant) width-``--width``
VGG16 FCN-8s in both geometries, traced at 64 x 64, then for each input size prints the max abs difference
of the logits and the median latency of ``--runs`` forward passes (after one warm-up) of each runtime with the
same number of threads (default 1). Takes about 30 s with the defaults.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from fcnseg.commands.options import positive_int
from fcnseg.data.info import DatasetInfo
from fcnseg.export import export_onnx, load_onnx, parity
from fcnseg.models import build_model

SIZES = ((1, 1), (97, 131), (224, 224), (375, 500), (512, 512))
INFO = DatasetInfo("random", tuple(f"class{i}" for i in range(21)), tuple((i, i, i) for i in range(21)))


def median_ms(forward, x: torch.Tensor, runs: int) -> float:
    forward(x)  # warm-up: first-call allocations and graph optimisations
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        forward(x)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--runs", type=positive_int, default=3)
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="intra-op threads of both runtimes (1: reproducible on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"fcn8s vgg16 width={args.width}, 21 classes, CPU, {args.threads} threads, median of {args.runs} runs; "
          f"torch {torch.__version__}, onnxruntime {__import__('onnxruntime').__version__}")
    print(f"{'geometry':<10} {'size':>9} {'max abs diff':>13} {'torch ms':>9} {'ORT ms':>8} {'ORT speedup':>11}")
    with tempfile.TemporaryDirectory() as tmp:
        for geometry in ("fast", "reference"):
            torch.manual_seed(0)
            model = build_model("fcn8s", num_classes=INFO.num_classes, width=args.width, geometry=geometry).eval()
            for layer in model.score_layers():
                torch.nn.init.normal_(layer.weight)
                torch.nn.init.normal_(layer.bias)
            start = time.perf_counter()
            path = export_onnx(model, Path(tmp) / f"{geometry}.onnx", info=INFO)
            print(f"{geometry:<10} export + verification {time.perf_counter() - start:.1f} s, "
                  f"{path.stat().st_size / 2**20:.1f} MiB")
            forward, _ = load_onnx(path, threads=args.threads)
            for height, width in SIZES:
                diff, _ = parity(forward, model, (1, 3, height, width))
                x = torch.randn(1, 3, height, width)
                with torch.no_grad():
                    torch_ms = median_ms(model, x, args.runs)
                ort_ms = median_ms(forward, x, args.runs)
                print(f"{geometry:<10} {height:>4}x{width:<4} {diff:>13.2e} {torch_ms:>9.1f} {ort_ms:>8.1f} "
                      f"{torch_ms / ort_ms:>10.2f}x")


if __name__ == "__main__":
    main()
