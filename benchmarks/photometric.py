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
from pathlib import Path

import numpy as np

from fcnseg.commands.options import positive_int
from fcnseg.data.info import CAMVID
from fcnseg.data.transforms import ColorJitter
from fcnseg.runtime import cpu_model
from fcnseg.train.config import TrainConfig
from fcnseg.train.data import training_transform

REPO = Path(__file__).resolve().parent.parent

# Each step alone at the amount of configs/camvid/heldout/fcn8s_il12_ema_w8_16k_photo.yaml, then all of them.
STEPS = {"brightness 0.5": {"brightness": 0.5}, "contrast 0.3": {"contrast": 0.3},
         "saturation 0.3": {"saturation": 0.3}, "hue 0.02": {"hue": 0.02}, "gamma 0.5": {"gamma": 0.5},
         "blur 1.0": {"blur": 1.0}, "noise 4.0": {"noise": 4.0},
         "color_jitter 0.1 (the best recipe)": {"brightness": 0.1, "contrast": 0.1, "saturation": 0.1},
         "all (the _photo config)": {"brightness": 0.5, "contrast": 0.3, "saturation": 0.3, "hue": 0.02,
                                     "gamma": 0.5, "blur": 1.0, "noise": 4.0}}
# Whole pipelines, built as training builds them from a config: the kept held-out recipe's and its candidate's
# with rescaling over [0.5, 2.0]; each draws its factor, crop and flip anew per repetition.
CONFIGS = [REPO / "configs" / "camvid" / "heldout" / f"fcn8s_il12_ema_w4_15k_b4_crop336_cutmix{suffix}.yaml"
           for suffix in ("", "_scale05to2")]


def measure(transforms: dict[str, object], image: np.ndarray, label: np.ndarray, repeats: int) -> None:
    """Print the median (CPU ms, wall ms) of one call of each transform. The transforms take turns within each
    repetition, so a machine that slows down or speeds up meanwhile slows them alike; each call has its own
    generator, as training draws them, and repetition r draws the same for every transform."""
    for transform in transforms.values():
        transform(image, label, rng=np.random.default_rng(0))  # warm-up
    cpu = {name: [] for name in transforms}
    wall = {name: [] for name in transforms}
    for repeat in range(repeats):
        for name, transform in transforms.items():
            rng = np.random.default_rng((0, 0, repeat))
            start_cpu, start_wall = time.thread_time(), time.perf_counter()
            transform(image, label, rng=rng)
            cpu[name].append(time.thread_time() - start_cpu)
            wall[name].append(time.perf_counter() - start_wall)
    for name in transforms:
        print(f"| {name} | {1000 * statistics.median(cpu[name]):.1f} | {1000 * statistics.median(wall[name]):.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=positive_int, default=7)
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (360, 480, 3), dtype=np.uint8)
    label = np.zeros((360, 480), np.uint8)
    print(f"CPU: {cpu_model()}; numpy {np.__version__}; {args.repeats} repetitions, medians, taking turns")
    print("| step | CPU ms | wall ms |\n|---|---:|---:|")
    measure({name: ColorJitter(**amounts) for name, amounts in STEPS.items()}, image, label, args.repeats)
    measure({f"the training transform of {path.name}":
             training_transform(TrainConfig.from_yaml(path), CAMVID.ignore_index, "imagenet") for path in CONFIGS},
            image, label, args.repeats)


if __name__ == "__main__":
    main()
