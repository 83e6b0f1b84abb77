"""What sliding windows cost in accuracy: a trained net on large images, whole-image against windows of
several sizes and overlaps.

The CamVid val images are enlarged (``--scale``, bilinear; labels nearest) so that they are larger than the
windows, as a 4000x3000 photo is for 1024-pixel windows; every configuration scores them against the
enlarged labels and against the whole-image prediction (share of pixels with the same label).
Usage: .venv/bin/python benchmarks/slide_quality.py CHECKPOINT [--scale 3] [--images 20]
       [--configs slide:512:0.333 slide:512:0.125 ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from fcnseg.api import load
from fcnseg.commands.options import positive_int
from fcnseg.data.registry import build_dataset
from fcnseg.data.transforms import resize_pair
from fcnseg.errors import FcnsegError
from fcnseg.metrics import ConfusionMatrix

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CONFIGS = ["slide:512:0.333", "slide:512:0.125", "slide:512:0.0625", "slide:768:0.125", "slide:1024:0.0625"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--scale", type=float, default=3.0)
    parser.add_argument("--images", type=positive_int, default=20)
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--configs", nargs="+", default=CONFIGS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    segmenter = load(args.checkpoint, device="cpu", max_memory=2**40)
    data = build_dataset("camvid", SHARED / "camvid", "val")
    indices = np.linspace(0, len(data) - 1, min(args.images, len(data))).round().astype(int)
    configs = ["whole", *args.configs]
    scores = {c: ConfusionMatrix(segmenter.info.num_classes, segmenter.info.ignore_index) for c in configs}
    same = {c: [0, 0] for c in configs}
    for index in indices:
        image, label = data.load(int(index))
        height, width = (round(v * args.scale) for v in label.shape)
        image, label = resize_pair(image, label, height, width)
        whole = None
        for config in configs:
            mode, *rest = config.split(":")
            options = {"mode": mode} if not rest else {"mode": mode, "window": (int(rest[0]),) * 2,
                                                       "overlap": float(rest[1])}
            labels = segmenter.predict(image, **options)
            whole = labels if whole is None else whole
            scores[config].update(torch.from_numpy(labels.astype(np.int64)), torch.from_numpy(label.astype(np.int64)))
            same[config][0] += int((labels == whole).sum())
            same[config][1] += labels.size
    print(f"{args.checkpoint}: {len(indices)} CamVid val images enlarged x{args.scale:g} "
          f"({height}x{width} pixels)")
    print("| inference | mean IU | pixel acc. | labels equal to whole-image |\n|---|---:|---:|---:|")
    for config in configs:
        result = scores[config].compute()
        print(f"| {config} | {100 * result['mean_iu']:.1f} | {100 * result['pixel_acc']:.1f} | "
              f"{100 * same[config][0] / same[config][1]:.2f}% |")


if __name__ == "__main__":
    try:
        main()
    except FcnsegError as error:  # a missing file, another dataset's net: one line, as fcnseg's commands say it
        print(f"slide_quality.py: error: {error}", file=sys.stderr)
        sys.exit(2)
