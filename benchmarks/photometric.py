"""The cost of each photometric augmentation (fcnseg.data.transforms.ColorJitter) on one 360x480 CamVid-sized
image: the median over a few repetitions of the CPU time of this thread (so a machine busy with other work
counts less than in wall-clock time; both are printed), one torch/numpy thread. Then the whole training
pipeline (rescaling, crop, flip, colour) of the kept held-out recipe and of its rescaling candidate.

Usage: OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python benchmarks/photometric.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from fcnseg.data.transforms import ColorJitter, train_transforms
from fcnseg.runtime import cpu_model

# Each step alone at the amount of configs/camvid/heldout/fcn8s_il12_ema_w8_16k_photo.yaml, then all of them.
STEPS = {"brightness 0.5": {"brightness": 0.5}, "contrast 0.3": {"contrast": 0.3},
         "saturation 0.3": {"saturation": 0.3}, "hue 0.02": {"hue": 0.02}, "gamma 0.5": {"gamma": 0.5},
         "blur 1.0": {"blur": 1.0}, "noise 4.0": {"noise": 4.0},
         "color_jitter 0.1 (the best recipe)": {"brightness": 0.1, "contrast": 0.1, "saturation": 0.1},
         "all (the _photo config)": {"brightness": 0.5, "contrast": 0.3, "saturation": 0.3, "hue": 0.02,
                                     "gamma": 0.5, "blur": 1.0, "noise": 4.0}}
# Whole pipelines: the kept held-out recipe's (fcn8s_il12_ema_w4_15k_b4_crop336_cutmix) and its candidate's
# with rescaling over [0.5, 2.0] (_scale05to2); each draws its factor, crop and flip anew per repetition.
PIPELINES = {f"crops 336x448, scale {low}-{high}, flip, color_jitter 0.1": (low, high)
             for low, high in ((0.75, 1.5), (0.5, 2.0))}


def measure(transform, image: np.ndarray, label: np.ndarray, repeats: int) -> tuple[float, float]:
    """Median (CPU ms, wall ms) of one call, each call with its own generator as training draws them."""
    transform(image, label, rng=np.random.default_rng(0))  # warm-up
    cpu, wall = [], []
    for repeat in range(repeats):
        rng = np.random.default_rng((0, 0, repeat))
        start_cpu, start_wall = time.thread_time(), time.perf_counter()
        transform(image, label, rng=rng)
        cpu.append(time.thread_time() - start_cpu)
        wall.append(time.perf_counter() - start_wall)
    return 1000 * statistics.median(cpu), 1000 * statistics.median(wall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (360, 480, 3), dtype=np.uint8)
    label = np.zeros((360, 480), np.uint8)
    print(f"CPU: {cpu_model()}; numpy {np.__version__}; {args.repeats} repetitions, medians")
    print("| step | CPU ms | wall ms |\n|---|---:|---:|")
    for name, amounts in STEPS.items():
        cpu, wall = measure(ColorJitter(**amounts), image, label, args.repeats)
        print(f"| {name} | {cpu:.1f} | {wall:.1f} |")
    for name, scale_range in PIPELINES.items():
        pipeline = train_transforms((336, 448), scale_range=scale_range, flip=True, color_jitter=0.1, ignore_index=11)
        cpu, wall = measure(pipeline, image, label, args.repeats)
        print(f"| {name} | {cpu:.1f} | {wall:.1f} |")


if __name__ == "__main__":
    main()
