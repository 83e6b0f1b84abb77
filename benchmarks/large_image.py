"""A 4000x3000 photo at full width: time and peak memory of whole-image and sliding-window inference.

Each configuration runs in a process of its own (so its peak resident memory is its own, read from the
kernel's ru_maxrss) on the same random full-width VGG16 FCN-8s, through ``Segmenter.predict`` as
``fcnseg predict`` runs it (labels only). The times are one run each after a small warm-up; the agreement
column is the share of pixels whose label equals the whole-image prediction's.

Usage: .venv/bin/python benchmarks/large_image.py [--threads 2] [--size 3000x4000]
       [--configs whole slide:1024:0.125 ...] [--geometry fast] [--width 1.0]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fcnseg.commands.options import positive_int

CONFIGS = ["whole", "slide:512:0.333", "slide:1024:0.125", "slide:1536:0.0625"]


def child(args: argparse.Namespace) -> None:
    """One configuration: predict, then print a JSON line with seconds, peak MB and where the labels went."""
    from fcnseg.api import Segmenter
    from fcnseg.data.info import VOC
    from fcnseg.inference import InferenceOptions
    from fcnseg.models import build_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model("fcn8s", num_classes=21, width=args.width, geometry=args.geometry).eval()
    with torch.no_grad():
        for weight in model.parameters():
            if weight.dim() == 4 and weight.requires_grad:
                torch.nn.init.kaiming_normal_(weight)
    height, width = args.height, args.width_px
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    mode, *rest = args.config.split(":")
    options = InferenceOptions(mode=mode, window=(int(rest[0]),) * 2 if rest else (512, 512),
                               overlap=float(rest[1]) if rest else 1 / 3)
    segmenter = Segmenter(model, model.spec.with_classes(VOC), device="cpu", options=options, max_memory=2**40)
    segmenter.predict(image[:256, :256])  # warm-up
    start = time.perf_counter()
    labels = segmenter.predict(image)
    seconds = time.perf_counter() - start
    np.save(args.labels, labels)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"config": args.config, "seconds": seconds, "peak_mb": peak_mb}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--size", default="3000x4000", help="HEIGHTxWIDTH")
    parser.add_argument("--configs", nargs="+", default=CONFIGS, help="whole, or slide:WINDOW:OVERLAP")
    parser.add_argument("--geometry", default="fast", choices=("fast", "reference"))
    parser.add_argument("--width", type=float, default=1.0, help="channel width of the net")
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--labels", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.height, args.width_px = (int(v) for v in args.size.lower().split("x"))
    if args.config:
        child(args)
        return
    print(f"FCN-8s VGG16 width {args.width}, {args.geometry} geometry, {args.width_px}x{args.height}, "
          f"{args.threads} thread(s), torch {torch.__version__}")
    print("| inference | seconds | x whole-image time | peak memory | labels equal to whole-image |")
    print("|---|---:|---:|---:|---:|")
    results, whole = [], None
    with tempfile.TemporaryDirectory() as work:
        for config in args.configs:
            labels = Path(work) / f"{len(results)}.npy"
            command = [sys.executable, __file__, "--config", config, "--labels", str(labels), "--threads",
                       str(args.threads), "--size", args.size, "--geometry", args.geometry, "--width", str(args.width)]
            result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
            mine = np.load(labels)
            if config == "whole":
                whole = (result["seconds"], mine)
            ratio = f"{result['seconds'] / whole[0]:.2f}x" if whole else "-"
            agree = f"{100 * float((mine == whole[1]).mean()):.2f}%" if whole else "-"
            print(f"| {config} | {result['seconds']:.1f} | {ratio} | {result['peak_mb'] / 1024:.2f} GB | {agree} |",
                  flush=True)
            results.append(result)


if __name__ == "__main__":
    main()
