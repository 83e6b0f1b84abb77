"""Estimated vs measured peak memory of training steps (fcnseg.memory.training_bytes), each case in a fresh
process on the CPU, the data loaded in the process itself (workers 0) so that one process holds it all.

    .venv/bin/python benchmarks/train_memory_estimate.py [--threads 1] [--cases vgg16:0.0625:4:128x128 ...]

A case is BACKBONE:WIDTH:BATCH:HxW (crop size; the synthetic scenes are rendered at that size). Measured: the
process's peak resident memory (VmHWM) during two training steps (data, forward, backward, optimizer),
minus its resident memory just before the run was built. Estimated: device + data pipeline bytes of
training_bytes.
"""

import argparse
import json
import subprocess
import sys

from fcnseg.commands.options import positive_int

CHILD = r"""
import json, sys, torch
from fcnseg.memory import training_bytes
from fcnseg.models import ModelSpec
from fcnseg.runtime import keep_freed_memory, start
from fcnseg.train import TrainConfig
from fcnseg.train.data import micro_batches
from fcnseg.train.loop import forward_backward, optimizer_step
from fcnseg.train.run import build_run
backbone, width, batch, height, wide, threads, out = sys.argv[1:8]
width, batch, height, wide, threads = float(width), int(batch), int(height), int(wide), int(threads)
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
config = TrainConfig.from_dict({"backbone": backbone, "width": width, "batch_size": batch, "workers": 0,
    "crop_size": [height, wide], "dataset_options": {"num_images": 2 * batch, "height": height, "width": wide},
    "threads": threads, "iterations": 2, "out": out, "max_memory": 2**62})
keep_freed_memory()  # as fcnseg train does
runtime = start("cpu", threads)
open("/proc/self/clear_refs", "w").write("5")  # the peak so far (imports) is not this run's
before = status("VmRSS:")
run = build_run(config, runtime)
run.train_model.train()
for count, (_, images, labels) in enumerate(micro_batches(run.train_set, run.sampler, config, runtime, 0)):
    forward_backward(run, images, labels)
    optimizer_step(run)
    if count == 1:
        break
peak = status("VmHWM:")
spec = run.model.spec
device, data = training_bytes(spec, batch, height, wide, optimizer_slots=1, workers=0)
print(json.dumps({"measured": peak - before, "estimate": device + data}))
"""

DEFAULT_CASES = ["vgg16:0.0625:2:128x128", "vgg16:0.0625:2:256x256", "vgg16:0.0625:4:256x256",
                 "vgg16:0.0625:2:512x512", "vgg16_bn:0.125:2:256x256", "vgg16:0.25:1:320x320"]


def measure(case: str, threads: int) -> dict:
    """{measured, estimate} of one case, in a fresh process."""
    import tempfile

    backbone, width, batch, size = case.split(":")
    height, width_px = size.split("x")
    with tempfile.TemporaryDirectory() as out:
        done = subprocess.run([sys.executable, "-c", CHILD, backbone, width, batch, height, width_px, str(threads),
                               out], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=positive_int, default=1)
    parser.add_argument("--cases", nargs="+", default=DEFAULT_CASES)
    args = parser.parse_args()
    print("| backbone:width:batch:crop | measured | estimated | estimate / measured |\n|---|---:|---:|---:|")
    for case in args.cases:
        result = measure(case, args.threads)
        print(f"| {case} | {result['measured'] / 2**20:.0f} MB | {result['estimate'] / 2**20:.0f} MB | "
              f"{result['estimate'] / max(result['measured'], 1):.2f} |")


if __name__ == "__main__":
    main()
