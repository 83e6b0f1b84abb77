"""Where the time of one forward pass goes: every layer of a full-width FCN-8s at 500x500, its GFLOPs and
its share of the time (median of a few runs, one thread, the net as fcnseg runs it: channels-last).

A multiply-add counts as 2 FLOPs; GFLOP/s says how close each layer gets to the core's peak.
Usage: .venv/bin/python benchmarks/layer_times.py [--geometry fast] [--size 500] [--runs 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import torch
from torch import nn

from fcnseg import build_model
from fcnseg.models.weights import VGG16_CONV_NAMES


def conv_flops(module: nn.Module, output: torch.Tensor) -> float:
    if isinstance(module, nn.Conv2d):
        per_output = 2 * module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        return per_output * output.numel()
    if isinstance(module, nn.ConvTranspose2d):
        inputs = output.numel() / (module.stride[0] * module.stride[1])  # each input pixel spreads a kernel
        per_input = 2 * module.out_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        return per_input * inputs / module.out_channels * module.in_channels
    return 0.0


def profile(model: nn.Module, x: torch.Tensor, runs: int) -> tuple[dict[str, list[float]], dict[str, float], float]:
    times: dict[str, list[float]] = defaultdict(list)
    flops: dict[str, float] = {}
    started: dict[str, float] = {}
    handles = []
    def before(name: str):
        return lambda module, inputs: started.__setitem__(name, time.perf_counter())

    def after(name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            times[name].append(time.perf_counter() - started[name])
            flops[name] = conv_flops(module, output)
        return hook

    for name, module in model.named_modules():
        if name and not list(module.children()):
            handles.append(module.register_forward_pre_hook(before(name)))
            handles.append(module.register_forward_hook(after(name)))
    totals = []
    with torch.inference_mode():
        model(x)
        times.clear()
        for _ in range(runs):
            start = time.perf_counter()
            model(x)
            totals.append(time.perf_counter() - start)
    for handle in handles:
        handle.remove()
    return times, flops, statistics.median(totals)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--geometry", default="fast", choices=("fast", "reference"))
    parser.add_argument("--size", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = build_model("fcn8s", num_classes=21, geometry=args.geometry).eval().to(memory_format=torch.channels_last)
    x = torch.randn(1, 3, args.size, args.size).contiguous(memory_format=torch.channels_last)
    times, flops, total = profile(model, x, args.runs)
    convs = [i for i, layer in enumerate(model.backbone.features) if isinstance(layer, nn.Conv2d)]
    caffe = {f"backbone.features.{i}": name for i, name in zip(convs, VGG16_CONV_NAMES, strict=True)}
    median = {caffe.get(name, name.removeprefix("backbone.")): statistics.median(values)
              for name, values in times.items()}
    flops = {caffe.get(name, name.removeprefix("backbone.")): value for name, value in flops.items()}
    layers = sum(median.values())
    print(f"FCN-8s VGG16 full width, {args.geometry} geometry, {args.size}x{args.size}, {args.threads} thread(s): "
          f"{1000 * total:.0f} ms, {sum(flops.values()) / 1e9:.1f} GFLOP")
    print("| layer | GFLOP | ms | share of the time | GFLOP/s |\n|---|---:|---:|---:|---:|")
    for name, seconds in sorted(median.items(), key=lambda item: -item[1]):
        if seconds < 0.01 * layers:
            continue
        gflop = flops.get(name, 0.0) / 1e9
        rate = f"{gflop / seconds:.0f}" if gflop else "-"
        print(f"| {name} | {gflop:.1f} | {1000 * seconds:.0f} | {100 * seconds / layers:.1f}% | {rate} |")
    rest = sum(s for s in median.values() if s < 0.01 * layers)
    print(f"| (layers under 1% each) | | {1000 * rest:.0f} | {100 * rest / layers:.1f}% | |")


if __name__ == "__main__":
    main()
