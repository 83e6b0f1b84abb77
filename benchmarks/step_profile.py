"""Where one training step of the best CamVid recipe's net goes, op by op and shape by shape, on the CPU.

The net of configs/camvid/fcn8s_il12_ema_w8_16k.yaml (FCN-8s, VGG16-BN at 1/8 width, fast geometry,
channels-last), a batch of 8 random 240x320 crops and labels, mean cross-entropy, AdamW: the step
``benchmarks/train_step.py`` times (``step_of``); bf16 autocast where the CPU computes bf16 natively, else
float32 (or as ``--amp`` says). ``torch.profiler`` over ``--steps`` steps after two warm-up steps; the table
lists the ops with the most time of their own, per step, with their input shapes.

Usage: .venv/bin/python benchmarks/step_profile.py [--threads 1] [--steps 4] [--amp auto|bf16|none] [--rows 15]
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile
from train_step import step_of

from fcnseg import build_model
from fcnseg.runtime import cpu_model, native_bf16


def recipe_step(bf16: bool):
    """One optimizer step of the recipe's net on a fixed random batch, as train_step.py times it."""
    torch.manual_seed(0)
    model = build_model("fcn8s", backbone="vgg16_bn", num_classes=11, width=0.125, geometry="fast").train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(8, 3, 240, 320, generator=generator)
    labels = torch.randint(0, 11, (8, 240, 320), generator=generator)
    return step_of(model, images, labels, optimizer, channels_last=True, bf16=bf16, reduction="mean")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--amp", choices=("auto", "bf16", "none"), default="auto")
    parser.add_argument("--rows", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bf16 = args.amp == "bf16" or (args.amp == "auto" and native_bf16("cpu"))
    step = recipe_step(bf16)
    for _ in range(2):
        step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as profiler:
        for _ in range(args.steps):
            step()
    events = sorted(profiler.key_averages(group_by_input_shape=True), key=lambda event: -event.self_cpu_time_total)
    total = sum(event.self_cpu_time_total for event in events) / args.steps / 1000
    print(f"{cpu_model()}, {args.threads} thread(s), torch {torch.__version__}, {'bf16' if bf16 else 'float32'}: "
          f"{total:.0f} ms of ops per step (mean of {args.steps})")
    print("| op | ms per step | calls per step | first input shape |\n|---|---:|---:|---|")
    for event in events[:args.rows]:
        shape = next((shape for shape in event.input_shapes if shape), [])
        print(f"| {event.key} | {event.self_cpu_time_total / args.steps / 1000:.1f} | {event.count / args.steps:g} | "
              f"{'x'.join(map(str, shape))} |")


if __name__ == "__main__":
    main()
