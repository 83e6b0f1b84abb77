"""Parameters and FLOPs of every backbone x head, both geometries, at 500x500 (the paper's Table 1 size).

FLOPs are counted on the meta device (no arithmetic is done, so this runs in seconds on any machine);
a multiply-add counts as 2 FLOPs. Usage: .venv/bin/python benchmarks/model_zoo.py [--size 500]
"""

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from fcnseg import BACKBONES, MODELS, build_model
from fcnseg.commands.options import positive_int


def measure(name: str, backbone: str, geometry: str, size: int, num_classes: int = 21) -> tuple[float, float]:
    with torch.device("meta"):
        model = build_model(name, backbone=backbone, num_classes=num_classes, geometry=geometry).eval()
        x = torch.empty(1, 3, size, size)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return params, counter.get_total_flops() / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=positive_int, default=500)
    args = parser.parse_args()
    print("| backbone | head | params (M) | GFLOPs reference | GFLOPs fast | fast / reference |")
    print("|---|---|---:|---:|---:|---:|")
    for backbone in BACKBONES:
        for name in MODELS:
            params, reference = measure(name, backbone, "reference", args.size)
            _, fast = measure(name, backbone, "fast", args.size)
            print(f"| {backbone} | {name} | {params:.1f} | {reference:.1f} | {fast:.1f} | {fast / reference:.2f} |")


if __name__ == "__main__":
    main()
