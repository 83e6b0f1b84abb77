"""fcnseg against the real pytorch-fcn (torchfcn 1.9.7) on the CPU, side by side, on the same weights.

The peer is the package itself, installed for the benchmark only (`pip install --no-deps torchfcn==1.9.7`;
`make bench` does it). Its package ``__init__`` imports chainer-era dependencies, so its ``models/fcn8s.py``
and ``fcn32s.py`` are loaded from their files, with a stand-in for the ``fcn`` package they import at
module level (used only by their download helpers). Its FCN8s gets random weights (Kaiming convolutions,
bilinear upsampling as its own initialisation sets them); fcnseg's nets get those weights through fcnseg's
pytorch-fcn import. The input is a real photo (../shared/data/voc-sample, Caffe-normalised) cut to SIZE.

Every path runs once to warm up, then in rounds (A B C ... A B C ...): the table gives each path's median
time and the median over rounds of its speed-up on pytorch-fcn's FCN8s in the same round, the largest
logit difference to pytorch-fcn's FCN8s (relative to its largest logit) and the share of pixels whose label
agrees with it. The fast geometry is another function near the borders (no padding of 100), so its logits
differ there; on random weights, whose labels flip on small differences, the labels agree less than a
trained net's would. The last line names the fastest path that computes pytorch-fcn's function: logits
within 1e-4 of the peak (float32) or labels agreeing on at least 99% of the pixels (int8, bf16).

Usage: .venv/bin/python benchmarks/side_by_side.py [--threads 1 2] [--rounds 5] [--size 500] [--width 1.0]
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import statistics
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from fcnseg import build_model
from fcnseg.commands.options import positive_int
from fcnseg.data.info import VOC
from fcnseg.export import export_onnx, load_onnx
from fcnseg.models.weights import fcn_from_pytorch_fcn
from fcnseg.normalization import normalize
from fcnseg.quantize import Calibration, export_int8
from fcnseg.runtime import cpu_model, native_bf16

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
Path_ = Callable[[torch.Tensor], torch.Tensor]


def load_torchfcn() -> types.ModuleType:
    """torchfcn's ``models`` folder as a package of its own, without torchfcn's ``__init__``."""
    spec = importlib.util.find_spec("torchfcn")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("the peer is not installed: .venv/bin/pip install --no-deps torchfcn==1.9.7 (make bench does)")
    sys.modules.setdefault("fcn", types.ModuleType("fcn"))  # only its download helpers use it
    package = types.ModuleType("torchfcn_models")
    package.__path__ = [str(Path(spec.submodule_search_locations[0]) / "models")]
    sys.modules["torchfcn_models"] = package
    package.FCN8s = importlib.import_module("torchfcn_models.fcn8s").FCN8s
    package.FCN32s = importlib.import_module("torchfcn_models.fcn32s").FCN32s
    return package


def peers(torchfcn: types.ModuleType, seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    """pytorch-fcn's FCN8s with random weights, and its FCN32s sharing every layer the two have in common."""
    torch.manual_seed(seed)
    fcn8s = torchfcn.FCN8s(n_class=21).eval()
    with torch.no_grad():
        for module in fcn8s.modules():
            if type(module) is torch.nn.Conv2d:  # transposed convolutions keep their bilinear kernels
                torch.nn.init.kaiming_normal_(module.weight)
                torch.nn.init.normal_(module.bias, std=0.01)
    fcn32s = torchfcn.FCN32s(n_class=21).eval()
    shared = {k: v for k, v in fcn8s.state_dict().items() if k in fcn32s.state_dict() and not k.startswith("up")}
    fcn32s.load_state_dict(shared, strict=False)
    return fcn8s, fcn32s


def photo(size: int) -> torch.Tensor:
    """A VOC photo (Caffe-normalised, 1 x 3 x size x size), tiled if smaller; noise if the sample is absent."""
    files = sorted((SHARED / "voc-sample" / "JPEGImages").glob("*.jpg"))
    if not files:
        return torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0)) * 50
    from PIL import Image

    image = np.asarray(Image.open(files[0]).convert("RGB"))
    reps = (-(-size // image.shape[0]), -(-size // image.shape[1]), 1)
    # contiguous(): normalize gives a view in the image's HxWxC order, whose batch stride (3) no loader gives;
    # oneDNN then takes it for neither layout and copies every activation of a contiguous net (issue 23's slow
    # reference bf16 row). fcnseg.load and a DataLoader both stack images into a plain N x C x H x W batch.
    return normalize(np.ascontiguousarray(np.tile(image, reps)[:size, :size]), "caffe")[None].contiguous()


def onnx_paths(model: torch.nn.Module, label: str, threads: int, work: Path, images: int) -> dict[str, Path_]:
    """ONNX Runtime fp32 and int8 (calibrated on CamVid train images when ../shared has them) runs of ``model``."""
    export_onnx(model, work / f"{label}.onnx", info=VOC)
    paths = {f"fcnseg {label}, ONNX Runtime fp32": load_onnx(work / f"{label}.onnx", threads)[0]}
    camvid = SHARED / "camvid"
    calibration = (Calibration("camvid", str(camvid), "train", images=images) if camvid.is_dir()
                   else Calibration("synthetic", None, "train", images=images))
    export_int8(model, work / f"{label}-int8.onnx", calibration, info=VOC)
    paths[f"fcnseg {label}, ONNX Runtime int8 ({calibration.dataset} calibration)"] = load_onnx(
        work / f"{label}-int8.onnx", threads)[0]
    return paths


def fcnseg_paths(fcn8s: torch.nn.Module, x: torch.Tensor, threads: int, work: Path,
                 images: int) -> dict[str, Path_]:
    """fcnseg's paths on pytorch-fcn's FCN8s weights."""
    reference = fcn_from_pytorch_fcn(fcn8s.state_dict(), name="fcn8s").eval()
    fast = build_model(reference.spec, geometry="fast").eval()  # the same weights and Caffe input, fast geometry
    fast.load_state_dict(reference.state_dict())
    last = build_model("fcn8s", num_classes=21, geometry="fast").eval().to(memory_format=torch.channels_last)
    last.load_state_dict(reference.state_dict())
    # The reference net channels-last too, as fcnseg.load runs every checkpoint, for its bf16 row
    reference_last = fcn_from_pytorch_fcn(fcn8s.state_dict(), name="fcn8s").eval().to(memory_format=torch.channels_last)
    with torch.no_grad():
        frozen = torch.jit.freeze(torch.jit.trace(last, x.contiguous(memory_format=torch.channels_last)))
    paths: dict[str, Path_] = {
        "fcnseg reference": reference,
        "fcnseg fast": fast,
        "fcnseg fast, channels_last": lambda t: last(t.contiguous(memory_format=torch.channels_last)),
        "fcnseg fast, channels_last, jit.freeze": lambda t: frozen(t.contiguous(memory_format=torch.channels_last)),
    }
    if native_bf16():
        paths["fcnseg fast, channels_last, bf16 autocast"] = lambda t: _bf16(last, t)
        paths["fcnseg reference, channels_last, bf16 autocast"] = lambda t: _bf16(reference_last, t)
    paths.update(onnx_paths(reference, "reference", threads, work, images))
    paths.update(onnx_paths(fast, "fast", threads, work, images))
    return paths


def _bf16(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return model(x.contiguous(memory_format=torch.channels_last)).float()


def run_rounds(paths: dict[str, Path_], x: torch.Tensor, rounds: int) -> dict[str, list[float]]:
    """Seconds per call of every path: one warm-up each, then ``rounds`` rounds in turn."""
    times: dict[str, list[float]] = {name: [] for name in paths}
    with torch.inference_mode():
        for forward in paths.values():
            forward(x)
        for _ in range(rounds):
            for name, forward in paths.items():
                start = time.perf_counter()
                forward(x)
                times[name].append(time.perf_counter() - start)
    return times


def compare(paths: dict[str, Path_], x: torch.Tensor, baseline: str) -> dict[str, tuple[float, float] | None]:
    """Per path: (largest logit difference to ``baseline`` / its peak, share of labels agreeing), or None for
    another net."""
    with torch.inference_mode():
        expected = paths[baseline](x).float()
        peak = float(expected.abs().max())
        result: dict[str, tuple[float, float] | None] = {}
        for name, forward in paths.items():
            if "FCN32s" in name:
                result[name] = None
                continue
            got = forward(x).float()
            result[name] = (float((got - expected).abs().max()) / peak,
                            float((got.argmax(1) == expected.argmax(1)).float().mean()))
    return result


def speedup(times: dict[str, list[float]], name: str, baseline: str) -> float:
    return statistics.median(b / t for b, t in zip(times[baseline], times[name], strict=True))


def table(times: dict[str, list[float]], fidelity: dict[str, tuple[float, float] | None], baseline: str) -> list[str]:
    lines = ["| path | ms (median) | speed-up on pytorch-fcn FCN8s | max logit diff / peak | labels agreeing |",
             "|---|---:|---:|---:|---:|"]
    for name, values in times.items():
        diff, agree = ("(another net)", "-") if fidelity[name] is None else (
            f"{fidelity[name][0]:.1e}", f"{100 * fidelity[name][1]:.2f}%")
        lines.append(f"| {name} | {1000 * statistics.median(values):.0f} | {speedup(times, name, baseline):.2f}x | "
                     f"{diff} | {agree} |")
    return lines


def faithful(fidelity: tuple[float, float] | None) -> bool:
    """Computes pytorch-fcn's function: logits within 1e-4 of the peak (float32), or labels agreeing on >= 99%
    of the pixels (int8, bf16)."""
    return fidelity is not None and (fidelity[0] <= 1e-4 or fidelity[1] >= 0.99)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=positive_int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=positive_int, default=5)
    parser.add_argument("--size", type=positive_int, default=500)
    parser.add_argument("--calibration-images", type=positive_int, default=16,
                        help="int8 calibration images (CamVid train)")
    args = parser.parse_args()
    torchfcn = load_torchfcn()
    fcn8s, fcn32s = peers(torchfcn)
    x = photo(args.size)
    cpu = cpu_model()
    fastest: dict[str, tuple[float, str]] = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        with tempfile.TemporaryDirectory() as work:
            paths = {"pytorch-fcn FCN8s": fcn8s, "pytorch-fcn FCN32s": fcn32s,
                     **fcnseg_paths(fcn8s, x, threads, Path(work), args.calibration_images)}
            times = run_rounds(paths, x, args.rounds)
            fidelity = compare(paths, x, "pytorch-fcn FCN8s")
            print(f"\nFCN-8s VGG16, full width, 21 classes, {args.size}x{args.size}, batch 1, {threads} thread(s), "
                  f"{args.rounds} rounds; {cpu}; torch {torch.__version__}")
            print("\n".join(table(times, fidelity, "pytorch-fcn FCN8s")), flush=True)
            if threads == args.threads[0]:
                for name in (n for n in paths if n.startswith("fcnseg")):
                    ratio = (speedup(times, name, "pytorch-fcn FCN8s"), name)
                    fastest["any"] = max(fastest.get("any", (0.0, "")), ratio)
                    if faithful(fidelity[name]):
                        fastest["same"] = max(fastest.get("same", (0.0, "")), ratio)
    ratio, name = fastest["any"]
    print(f"\nfastest of all paths: {ratio:.2f}x ({name}; the fast geometry differs from pytorch-fcn's near the "
          "borders)")
    ratio, name = fastest["same"]
    print(f"fastest fcnseg path vs pytorch-fcn FCN8s: {ratio:.2f}x ({name}, {args.threads[0]} thread(s))")


if __name__ == "__main__":
    main()
