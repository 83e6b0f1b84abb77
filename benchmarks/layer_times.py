"""Where the time of one forward pass goes: every layer of a full-width FCN-8s at 500x500, its GFLOPs and
its share of the time (median of a few runs, one thread, the net as fcnseg runs it: channels-last).

A multiply-add counts as 2 FLOPs; GFLOP/s says how close each layer gets to the core's peak. ``--bf16`` runs
under bf16 autocast, and ``--kernels`` adds the ATen kernel that took most of each layer's time (one extra
profiled pass): oneDNN's (``aten::mkldnn_convolution``) or PyTorch's own fallback
(``aten::_slow_conv2d_forward``, ``aten::slow_conv_transpose2d``), which is how a layer that leaves the fast
path shows itself (issue 23: the reference geometry 3.4x slower than the fast one in bf16 on an AMX Xeon).
Usage: .venv/bin/python benchmarks/layer_times.py [--geometry fast] [--size 500] [--runs 3] [--threads 1]
       [--bf16] [--kernels]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections import defaultdict

import torch
from torch import nn

from fcnseg import build_model
from fcnseg.commands.options import positive_int
from fcnseg.models.weights import VGG16_CONV_NAMES
from fcnseg.runtime import cpu_flags, cpu_model, native_bf16


def conv_flops(module: nn.Module, output: torch.Tensor) -> float:
    if isinstance(module, nn.Conv2d):
        per_output = 2 * module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        return per_output * output.numel()
    if isinstance(module, nn.ConvTranspose2d):
        inputs = output.numel() / (module.stride[0] * module.stride[1])  # each input pixel spreads a kernel
        per_input = 2 * module.out_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        return per_input * inputs / module.out_channels * module.in_channels
    return 0.0


@contextlib.contextmanager
def leaf_hooks(model: nn.Module, before, after):
    """Hooks on every layer without children, for the time of the ``with``: ``before(name)`` and ``after(name)``
    make its forward pre-hook and forward hook."""
    handles = []
    for name, module in model.named_modules():
        if name and not list(module.children()):
            handles += [module.register_forward_pre_hook(before(name)), module.register_forward_hook(after(name))]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def profile(model: nn.Module, x: torch.Tensor, runs: int,
            precision=contextlib.nullcontext) -> tuple[dict[str, list[float]], dict[str, float], float]:
    times: dict[str, list[float]] = defaultdict(list)
    flops: dict[str, float] = {}
    started: dict[str, float] = {}

    def before(name: str):
        return lambda module, inputs: started.__setitem__(name, time.perf_counter())

    def after(name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            times[name].append(time.perf_counter() - started[name])
            flops[name] = conv_flops(module, output)
        return hook

    totals = []
    with leaf_hooks(model, before, after), torch.inference_mode(), precision():
        model(x)
        times.clear()
        for _ in range(runs):
            start = time.perf_counter()
            model(x)
            totals.append(time.perf_counter() - start)
    return times, flops, statistics.median(totals)


def layer_kernels(model: nn.Module, x: torch.Tensor, precision) -> dict[str, str]:
    """Layer name -> the ATen kernel with the most self time inside it, and that time, from one profiled pass."""
    scopes = []

    def enter(name: str):
        def hook(module, inputs):
            scope = torch.profiler.record_function(f"layer:{name}")
            scope.__enter__()
            scopes.append(scope)
        return hook

    def leave(module, inputs, output):
        scopes.pop().__exit__(None, None, None)

    cpu = [torch.profiler.ProfilerActivity.CPU]
    with leaf_hooks(model, enter, lambda name: leave), torch.inference_mode(), precision(), \
            torch.profiler.profile(activities=cpu) as prof:
        model(x)
    found = {}
    for event in prof.events():
        if event.name.startswith("layer:"):
            kernels = defaultdict(float)
            stack = list(event.cpu_children)
            while stack:
                child = stack.pop()
                kernels[child.name] += child.self_cpu_time_total
                stack += child.cpu_children
            if kernels:
                name, micros = max(kernels.items(), key=lambda item: item[1])
                found[event.name.removeprefix("layer:")] = f"{name} ({micros / 1000:.0f} ms)"
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--geometry", default="fast", choices=("fast", "reference"))
    parser.add_argument("--size", type=positive_int, default=500)
    parser.add_argument("--runs", type=positive_int, default=3)
    parser.add_argument("--threads", type=positive_int, default=1)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast, as fcnseg predict --bf16 runs")
    parser.add_argument("--kernels", action="store_true", help="name the ATen kernel that took each layer's time")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = build_model("fcn8s", num_classes=21, geometry=args.geometry).eval().to(memory_format=torch.channels_last)
    x = torch.randn(1, 3, args.size, args.size).contiguous(memory_format=torch.channels_last)
    precision = ((lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if args.bf16 else contextlib.nullcontext)
    times, flops, total = profile(model, x, args.runs, precision)
    kernels = layer_kernels(model, x, precision) if args.kernels else {}
    convs = [i for i, layer in enumerate(model.backbone.features) if isinstance(layer, nn.Conv2d)]
    caffe = {f"backbone.features.{i}": name for i, name in zip(convs, VGG16_CONV_NAMES, strict=True)}
    short = {name: caffe.get(name, name.removeprefix("backbone.")) for name in times}
    median = {short[name]: statistics.median(values) for name, values in times.items()}
    flops = {short[name]: value for name, value in flops.items()}
    kernels = {short.get(name, name): kernel for name, kernel in kernels.items()}
    layers = sum(median.values())
    flags = sorted({"avx512_bf16", "amx_bf16", "avx512f", "avx2"} & cpu_flags())
    print(f"FCN-8s VGG16 full width, {args.geometry} geometry, {args.size}x{args.size}, {args.threads} thread(s), "
          f"{'bf16 autocast' if args.bf16 else 'float32'}: {1000 * total:.0f} ms, {sum(flops.values()) / 1e9:.1f} "
          f"GFLOP; {cpu_model()} ({', '.join(flags) or 'no listed flags'}; native "
          f"bf16: {native_bf16()}), torch {torch.__version__}")
    print(f"| layer | GFLOP | ms | share of the time | GFLOP/s |{' kernel |' if kernels else ''}")
    print(f"|---|---:|---:|---:|---:|{'---|' if kernels else ''}")
    for name, seconds in sorted(median.items(), key=lambda item: -item[1]):
        if seconds < 0.01 * layers:
            continue
        gflop = flops.get(name, 0.0) / 1e9
        rate = f"{gflop / seconds:.0f}" if gflop else "-"
        kernel = f" {kernels.get(name, '-')} |" if kernels else ""
        print(f"| {name} | {gflop:.1f} | {1000 * seconds:.0f} | {100 * seconds / layers:.1f}% | {rate} |{kernel}")
    rest = sum(s for s in median.values() if s < 0.01 * layers)
    print(f"| (layers under 1% each) | | {1000 * rest:.0f} | {100 * rest / layers:.1f}% | |{' |' if kernels else ''}")


if __name__ == "__main__":
    main()
