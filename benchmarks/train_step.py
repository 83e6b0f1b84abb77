"""One training step (forward, backward, optimizer) side by side with the real pytorch-fcn, and the data loader
alone, on the CPU.

Full width: pytorch-fcn's FCN8s (torchfcn 1.9.7, loaded as in side_by_side.py, random weights) against
fcnseg's FCN-8s on the same weights, 500x500, batch 1, the paper's SGD (momentum 0.99, summed loss).
CPU width: the CamVid recipe's net (VGG16-BN at 1/8 width, fast geometry, batch 8 of 240x320 crops, AdamW),
which pytorch-fcn cannot build (it has neither widths nor batch norm), so fcnseg's settings are compared
among themselves (``--widths`` times it at other widths too: what a wider net costs per step). Loader: the
CamVid recipe's training loader alone (read, augment, normalise, collate), in images per second, to show it
keeps ahead of the steps. Rounds alternate A B A B after a warm-up step.

Usage: .venv/bin/python benchmarks/train_step.py [--threads 1] [--rounds 3] [--skip-full-width] [--widths 0.125 0.25]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from side_by_side import SHARED, load_torchfcn, peers

from fcnseg import build_model
from fcnseg.commands.options import positive_int
from fcnseg.models.weights import fcn_from_pytorch_fcn
from fcnseg.runtime import native_bf16

Step = Callable[[], None]
RECIPE_WIDTH = 0.125  # configs/camvid/fcn8s_il12_ema_w8_16k.yaml


def step_of(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, optimizer: torch.optim.Optimizer,
            channels_last: bool = False, bf16: bool = False, reduction: str = "sum") -> Step:
    """One optimizer step of ``model`` on (x, target)."""
    if channels_last:
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        F.cross_entropy(logits.float(), target, reduction=reduction).backward()
        optimizer.step()

    return step


def paper_sgd(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-10, momentum=0.99)


def full_width_steps(size: int) -> dict[str, Step]:
    fcn8s, _ = peers(load_torchfcn())
    fcn8s.train()
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0)) * 50
    target = torch.randint(0, 21, (1, size, size), generator=torch.Generator().manual_seed(1))
    steps = {"pytorch-fcn FCN8s": step_of(fcn8s, x, target, paper_sgd(fcn8s))}
    for label, geometry, channels_last, bf16 in (("fcnseg reference", "reference", False, False),
                                                 ("fcnseg fast", "fast", False, False),
                                                 ("fcnseg fast, channels_last", "fast", True, False),
                                                 ("fcnseg fast, channels_last, bf16", "fast", True, True)):
        if bf16 and not native_bf16("cpu"):
            continue
        reference = fcn_from_pytorch_fcn(fcn8s.state_dict(), name="fcn8s")
        model = build_model("fcn8s", num_classes=21, geometry=geometry)
        model.load_state_dict(reference.state_dict())
        model.train()
        steps[label] = step_of(model, x, target, paper_sgd(model), channels_last, bf16)
    return steps


def cpu_width_steps(widths: list[float]) -> dict[str, Step]:
    x = torch.randn(8, 3, 240, 320, generator=torch.Generator().manual_seed(0))
    target = torch.randint(0, 11, (8, 240, 320), generator=torch.Generator().manual_seed(1))
    steps = {}
    for width in widths:
        named = f"width {width}, " if widths != [RECIPE_WIDTH] else ""
        for label, channels_last, bf16 in (("fcnseg fast", False, False),
                                           ("fcnseg fast, channels_last", True, False),
                                           ("fcnseg fast, channels_last, bf16", True, True)):
            if bf16 and not native_bf16("cpu"):
                continue
            torch.manual_seed(0)
            model = build_model("fcn8s", backbone="vgg16_bn", width=width, num_classes=11, geometry="fast").train()
            optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=1e-4)
            steps[named + label] = step_of(model, x, target, optimizer, channels_last, bf16, reduction="mean")
    return steps


def rounds(steps: dict[str, Step], count: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in steps}
    for step in steps.values():
        step()
    for _ in range(count):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return times


def print_table(title: str, times: dict[str, list[float]], images: int) -> None:
    baseline = next(iter(times))
    print(f"\n{title}\n| path | s per step (median) | images/s | speed-up on {baseline} |\n|---|---:|---:|---:|")
    for name, values in times.items():
        ratio = statistics.median(b / t for b, t in zip(times[baseline], values, strict=True))
        median = statistics.median(values)
        print(f"| {name} | {median:.2f} | {images / median:.1f} | {ratio:.2f}x |", flush=True)


def loader_rate(workers: int, batches: int = 20) -> float:
    """Images per second of the CamVid recipe's training loader alone."""
    from torch.utils.data import DataLoader

    from fcnseg.data.collate import PadCollate
    from fcnseg.data.registry import build_dataset
    from fcnseg.data.transforms import train_transforms
    from fcnseg.runtime import worker_init

    transform = train_transforms((240, 320), scale_range=(0.75, 1.25), flip=True, ignore_index=11)
    dataset = build_dataset("camvid", SHARED / "camvid", "train", transform=transform, seed=0)
    loader = DataLoader(dataset, batch_size=8, shuffle=True, num_workers=workers, collate_fn=PadCollate(11),
                        worker_init_fn=worker_init, generator=torch.Generator().manual_seed(0))
    iterator = iter(loader)
    next(iterator)  # workers started, first batch ready
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return 8 * batches / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=positive_int, default=1)
    parser.add_argument("--rounds", type=positive_int, default=3)
    parser.add_argument("--size", type=positive_int, default=500)
    parser.add_argument("--skip-full-width", action="store_true")
    parser.add_argument("--widths", type=float, nargs="+", default=[RECIPE_WIDTH],
                        help="widths of the CamVid recipe's net to time (what a wider net costs per step)")
    args = parser.parse_args()
    if min(args.widths) <= 0:
        parser.error(f"--widths must be above 0, got {min(args.widths):g}")
    torch.set_num_threads(args.threads)
    print(f"{args.threads} thread(s), torch {torch.__version__}, native bf16: {native_bf16('cpu')}")
    if not args.skip_full_width:
        print_table(f"Full width FCN-8s, {args.size}x{args.size}, batch 1, SGD (the paper's)",
                    rounds(full_width_steps(args.size), args.rounds), 1)
    print_table("CamVid recipe net (VGG16-BN, fast; 1/8 width unless named), batch 8 of 240x320, AdamW",
                rounds(cpu_width_steps(args.widths), args.rounds), 8)
    if (SHARED / "camvid").is_dir():
        for workers in (0, 1):
            print(f"CamVid training loader alone, {workers} worker(s): {loader_rate(workers):.0f} images/s")


if __name__ == "__main__":
    main()
