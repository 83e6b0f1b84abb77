"""fcnseg against the real pytorch-fcn (torchfcn 1.9.7) on a CUDA GPU, side by side, on the same weights.

The GPU twin of side_by_side.py (whose peer loading, weights and input it reuses): FCN-8s VGG16 at full width,
21 classes, SIZE x SIZE, at each batch size. Every path runs a few times to warm up (cuDNN picks its
algorithms), then in rounds (A B C ... A B C ...), each call timed with CUDA events; the table gives each
path's median milliseconds per batch, its median speed-up over pytorch-fcn's FCN8s in float32 in the same
round, the largest logit difference to that baseline (relative to its largest logit) and the share of labels
agreeing. cuDNN's default is kept on both sides (TF32 convolutions on Ampere and newer GPUs), so "float32"
means what a PyTorch user gets by default. The fast geometry computes another function near the borders (no
padding of 100); autocast paths compute in float16 / bfloat16.

Usage: python benchmarks/gpu_side_by_side.py [--batch 1 8] [--rounds 20] [--size 500]
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch
from side_by_side import compare, load_torchfcn, peers, photo, speedup

from fcnseg import build_model
from fcnseg.commands.options import positive_int
from fcnseg.models.weights import fcn_from_pytorch_fcn

Path_ = Callable[[torch.Tensor], torch.Tensor]
BASELINE = "pytorch-fcn FCN8s"


def autocast(model: torch.nn.Module, dtype: torch.dtype, channels_last: bool = False) -> Path_:
    def forward(x: torch.Tensor) -> torch.Tensor:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=dtype):
            return model(x).float()
    return forward


def gpu_paths(peer: torch.nn.Module) -> dict[str, Path_]:
    """pytorch-fcn's FCN8s and fcnseg's paths on its weights, all on the GPU."""
    reference = fcn_from_pytorch_fcn(peer.state_dict(), name="fcn8s").eval().cuda()
    fast = build_model(reference.spec, geometry="fast").eval().cuda()
    fast.load_state_dict(reference.state_dict())
    last = build_model(reference.spec, geometry="fast").eval().cuda().to(memory_format=torch.channels_last)
    last.load_state_dict(reference.state_dict())
    peer = peer.cuda()
    return {
        BASELINE: peer,
        "pytorch-fcn FCN8s, fp16 autocast": autocast(peer, torch.float16),
        "fcnseg reference": reference,
        "fcnseg reference, fp16 autocast": autocast(reference, torch.float16),
        "fcnseg fast": fast,
        "fcnseg fast, channels_last": lambda t: last(t.contiguous(memory_format=torch.channels_last)),
        "fcnseg fast, channels_last, fp16 autocast": autocast(last, torch.float16, channels_last=True),
        "fcnseg fast, channels_last, bf16 autocast": autocast(last, torch.bfloat16, channels_last=True),
    }


def run_rounds(paths: dict[str, Path_], x: torch.Tensor, rounds: int) -> dict[str, list[float]]:
    """Seconds per call of every path (CUDA events): three warm-ups each, then ``rounds`` rounds in turn."""
    times: dict[str, list[float]] = {name: [] for name in paths}
    with torch.inference_mode():
        for forward in paths.values():
            for _ in range(3):
                forward(x)
        torch.cuda.synchronize()
        for _ in range(rounds):
            for name, forward in paths.items():
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                forward(x)
                end.record()
                end.synchronize()
                times[name].append(start.elapsed_time(end) / 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=positive_int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=positive_int, default=20)
    parser.add_argument("--size", type=positive_int, default=500)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU: benchmarks/side_by_side.py compares on the CPU")
    peer, _ = peers(load_torchfcn())
    paths = gpu_paths(peer.eval())
    for batch in args.batch:
        x = photo(args.size).repeat(batch, 1, 1, 1).cuda()
        times = run_rounds(paths, x, args.rounds)
        fidelity = compare(paths, x, BASELINE)
        print(f"\nFCN-8s VGG16, full width, 21 classes, {args.size}x{args.size}, batch {batch}, {args.rounds} "
              f"rounds; {torch.cuda.get_device_name()}; torch {torch.__version__}, cuDNN "
              f"{torch.backends.cudnn.version()}, cuDNN TF32 {torch.backends.cudnn.allow_tf32}")
        print("| path | ms per batch (median) | speed-up on pytorch-fcn FCN8s | max logit diff / peak | "
              "labels agreeing |\n|---|---:|---:|---:|---:|")
        for name, values in times.items():
            diff, agree = fidelity[name]
            print(f"| {name} | {1000 * statistics.median(values):.2f} | {speedup(times, name, BASELINE):.2f}x | "
                  f"{diff:.1e} | {100 * agree:.2f}% |", flush=True)
        print(f"peak GPU memory so far: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
