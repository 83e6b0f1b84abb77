"""Where one training step of a CamVid recipe's net goes, op by op and shape by shape, on the CPU.

``--net il12`` (the default): the net of configs/camvid/fcn8s_il12_ema_w8_16k.yaml (FCN-8s, VGG16-BN at 1/8
width, fast geometry, channels-last), a batch of 8 random 240x320 crops and labels: the step
``benchmarks/train_step.py`` times (``step_of``). ``--net best``: the best recipe's
(configs/camvid/fcn8s_il12_ema_w4_15k_b4_crop336_cutmix.yaml), 1/4 width, a batch of 4 crops of 336x448. Mean
cross-entropy, AdamW; bf16 autocast where the CPU computes bf16 natively, else float32 (or as ``--amp`` says).
``torch.profiler`` over ``--steps`` steps after two warm-up steps; the table lists the ops with the most time of
their own, per step, with their input shapes, after the share of all convolution ops.

Usage: .venv/bin/python benchmarks/step_profile.py [--net il12|best] [--threads 1] [--steps 4]
       [--amp auto|bf16|none] [--rows 15]
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile
from train_step import step_of

from fcnseg import build_model
from fcnseg.commands.options import positive_int
from fcnseg.runtime import cpu_model, native_bf16

NETS = {"il12": (0.125, 8, (240, 320)), "best": (0.25, 4, (336, 448))}  # width, batch, crop of each recipe


def recipe_step(bf16: bool, net: str = "il12"):
    """One optimizer step of the recipe's net on a fixed random batch, as train_step.py times it."""
    width, batch, crop = NETS[net]
    torch.manual_seed(0)
    model = build_model("fcn8s", backbone="vgg16_bn", num_classes=11, width=width, geometry="fast").train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, *crop, generator=generator)
    labels = torch.randint(0, 11, (batch, *crop), generator=generator)
    return step_of(model, images, labels, optimizer, channels_last=True, bf16=bf16, reduction="mean")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--net", choices=tuple(NETS), default="il12")
    parser.add_argument("--threads", type=positive_int, default=1)
    parser.add_argument("--steps", type=positive_int, default=4)
    parser.add_argument("--amp", choices=("auto", "bf16", "none"), default="auto")
    parser.add_argument("--rows", type=positive_int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bf16 = args.amp == "bf16" or (args.amp == "auto" and native_bf16("cpu"))
    step = recipe_step(bf16, args.net)
    for _ in range(2):
        step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as profiler:
        for _ in range(args.steps):
            step()
    events = sorted(profiler.key_averages(group_by_input_shape=True), key=lambda event: -event.self_cpu_time_total)
    total = sum(event.self_cpu_time_total for event in events) / args.steps / 1000
    convolutions = sum(event.self_cpu_time_total for event in events if "conv" in event.key) / args.steps / 1000
    print(f"{cpu_model()}, {args.threads} thread(s), torch {torch.__version__}, {'bf16' if bf16 else 'float32'}, "
          f"net {args.net}: {total:.0f} ms of ops per step (mean of {args.steps}), {100 * convolutions / total:.0f}% "
          f"in convolutions")
    print("| op | ms per step | calls per step | first input shape |\n|---|---:|---:|---|")
    for event in events[:args.rows]:
        shape = next((shape for shape in event.input_shapes if shape), [])
        print(f"| {event.key} | {event.self_cpu_time_total / args.steps / 1000:.1f} | {event.count / args.steps:g} | "
              f"{'x'.join(map(str, shape))} |")


if __name__ == "__main__":
    main()
