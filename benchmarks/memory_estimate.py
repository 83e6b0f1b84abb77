"""Estimated vs measured peak memory of inference (fcnseg.memory), each case in a fresh process.

    .venv/bin/python benchmarks/memory_estimate.py CHECKPOINT [--threads 2] [--cases 1000x1000:whole ...]
    (a case HxW:MODE, or HxW:slide:S1,S2,... to average over those input scales)
    .venv/bin/python benchmarks/memory_estimate.py full-width-vgg16   # a random full-width VGG16 FCN-8s, 21 classes

Measured: the process's peak resident memory (VmHWM) during one ``Segmenter.predict``, minus its
resident memory just before (model loaded, image decoded). Estimated: fcnseg.memory.inference_bytes.
"""

import argparse
import json
import subprocess
import sys
import tempfile

from fcnseg.commands.options import positive_int

CHILD = r"""
import json, sys, numpy as np, torch
from fcnseg.api import load
from fcnseg.memory import inference_bytes
from fcnseg.inference import InferenceOptions
path, h, w, mode, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
scales = tuple(float(s) for s in sys.argv[6].split(","))
torch.set_num_threads(threads)
seg = load(path, device="cpu", max_memory=2**62)  # no guard: measure what the plan really takes
image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
options = InferenceOptions(mode=mode, scales=scales)
before = status("VmRSS:")
seg.predict(image, mode=mode, scales=scales)
peak = status("VmHWM:")
print(json.dumps({"measured": peak - before,
                  "estimate": inference_bytes(seg.spec, 1, h, w, options, channels_last=seg.channels_last)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--cases", nargs="+", default=["500x500:whole", "1000x1000:whole", "2000x1500:whole",
                                                       "1x200000:whole", "2000x1500:slide"])
    args = parser.parse_args()
    if args.checkpoint == "full-width-vgg16":
        args.checkpoint = _random_full_width(tempfile.mkdtemp())
    print("| input | mode | measured | estimated | estimate / measured |\n|---|---|---:|---:|---:|")
    for case in args.cases:
        size, mode, scales = (case + ":1").split(":")[:3]
        h, w = (int(v) for v in size.split("x"))
        out = subprocess.run([sys.executable, "-c", CHILD, args.checkpoint, str(h), str(w), mode, str(args.threads),
                              scales], capture_output=True, text=True, check=True).stdout
        result = json.loads(out.strip().splitlines()[-1])
        shown = mode if scales == "1" else f"{mode}, scales {scales.replace(',', ' ')}"
        print(f"| {h}x{w} | {shown} | {result['measured'] / 2**20:.0f} MB | {result['estimate'] / 2**20:.0f} MB | "
              f"{result['estimate'] / max(result['measured'], 1):.2f} |")


def _random_full_width(folder: str) -> str:
    from fcnseg import build_model
    from fcnseg.checkpoint import save_model
    from fcnseg.data.info import VOC

    model = build_model("fcn8s", backbone="vgg16", num_classes=21, geometry="fast")
    return str(save_model(model, VOC, f"{folder}/fcn8s_vgg16_random.pth"))


if __name__ == "__main__":
    main()
