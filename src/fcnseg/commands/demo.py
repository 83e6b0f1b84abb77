"""``fcnseg demo`` (``make demo``): the shipped CamVid net on a street scene, then FCN-32s -> FCN-16s -> FCN-8s
trained in stages on synthetic road scenes.

The first part takes a second: the net that ships inside fcnseg (``camvid-fcn8s``) segments the web page's
sample scene, as the README's quick start does. Then each trained net's four-metric table and per-class IoU
are printed (the thin classes, poles and lane markings, are where the skip layers matter), and overlay
images compare the three nets.
"""

from __future__ import annotations

import argparse
import time
from importlib import resources
from pathlib import Path

import numpy as np

from fcnseg.api import load
from fcnseg.commands.options import add_quiet, output_path, positive_int
from fcnseg.data.info import SYNTHETIC_ROADS
from fcnseg.data.io import decode_image
from fcnseg.data.synthetic import SyntheticRoads
from fcnseg.errors import ConfigError, printable
from fcnseg.metrics import format_per_class, format_table
from fcnseg.outputs import LOCK, RECORD, Outputs, folder_lock, refuse_if_held
from fcnseg.runtime import set_threads
from fcnseg.train import TrainConfig, train
from fcnseg.viz import colorize, legend_strip, overlay, prediction_picture, save_png, stacked, titled

STAGES = ("fcn32s", "fcn16s", "fcn8s")
# A CPU-sized net: VGG16 with batch norm at 1/8 width (2.1M parameters), fast geometry, channels-last (faster
# training steps at this width: docs/performance.md).
DEMO_CONFIG = {
    "backbone": "vgg16_bn", "width": 0.125, "geometry": "fast", "channels_last": True, "dataset": "synthetic",
    "dataset_options": {"num_images": 600}, "batch_size": 8, "workers": 2, "optimizer": "adamw", "lr": 2e-3,
    "weight_decay": 1e-4, "schedule": "poly", "iterations": 500, "val_interval": 500, "checkpoint_interval": 500,
    "log_interval": 25, "flip": True,
}
VAL_IMAGES = 100
OVERLAY_IMAGES = 4
NAMES = {"fcn32s": "FCN-32s", "fcn16s": "FCN-16s", "fcn8s": "FCN-8s"}
SHIPPED_NET = "camvid-fcn8s"  # fcnseg.pretrained
SHIPPED_FOLDER = "shipped"  # out/shipped: the shipped net's picture


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="the shipped CamVid net on a street scene, then FCN-32s/16s/8s "
                                   "trained on built-in synthetic road scenes")
    parser.add_argument("--out", default="demo_out", type=output_path,
                        help="folder for the three runs and the overlays")
    parser.add_argument("--iterations", type=positive_int, default=None,
                        help="per stage (default: the demo's setting, 500)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch threads (default: the usable cores; data workers use one each)")
    add_quiet(parser)
    parser.set_defaults(func=run)


def _owners(out: Path) -> dict[str, Outputs]:
    return {**{stage: Outputs(out / stage, "train") for stage in STAGES}, "overlays": Outputs(out / "overlays", "demo"),
            SHIPPED_FOLDER: Outputs(out / SHIPPED_FOLDER, "demo")}


def check_earlier_demo(out: Path) -> None:
    """Refuse ``out`` when it holds anything but what an earlier demo wrote.

    The stage folders hold fcnseg train's runs and ``overlays`` the demo's pictures, each with its folder's
    record of what fcnseg wrote (:mod:`fcnseg.outputs`).
    """
    owners = _owners(out)
    others = [p.name for p in sorted(out.iterdir())
              if p.name not in (RECORD, LOCK) and not (p.name in owners and p.is_dir())]
    foreign = others + [str(p) for name, owner in owners.items() if (out / name).is_dir() for p in owner.foreign()]
    if foreign:
        raise ConfigError(f"{out} holds files the demo did not write ({', '.join(foreign[:8])}"
                          f"{' ...' if len(foreign) > 8 else ''}): choose a new or empty --out (default demo_out)")


def clear_earlier_demo(out: Path) -> None:
    """Remove what an earlier demo wrote into ``out``; refuse, deleting nothing, if ``out`` holds anything else."""
    check_earlier_demo(out)
    for name, owner in _owners(out).items():
        if (out / name).is_dir():
            owner.clear()


def show_shipped_net(out: Path, threads: int | None = None) -> Path:
    """The shipped CamVid net on the web page's sample street scene: image | overlay | classes, with the legend,
    into ``out/shipped/street.png``; prints the share of the picture each class takes."""
    outputs = Outputs(out / SHIPPED_FOLDER, "demo")
    set_threads(threads)
    segmenter = load(SHIPPED_NET, device="cpu")
    image = decode_image((resources.files("fcnseg") / "web" / "sample.png").read_bytes())
    labels = segmenter.predict(image)
    path = out / SHIPPED_FOLDER / "street.png"
    with outputs.landing([path], flush=True):
        save_png(path, prediction_picture(image, labels, segmenter.info))
    counts = np.bincount(labels.ravel(), minlength=segmenter.info.num_classes)
    shares = ", ".join(f"{segmenter.info.class_names[k]} {100 * counts[k] / labels.size:.0f}%"
                       for k in np.argsort(-counts) if counts[k] > 0.005 * labels.size)
    print(printable(f"== the shipped net {SHIPPED_NET} on the sample scene, a drawing (the net was trained on "
                    f"photos: try one with fcnseg predict {SHIPPED_NET} PHOTO --out DIR): {shares}"), flush=True)
    print(printable(f"   picture: {path}"), flush=True)
    return path


def run_demo(out: Path, iterations: int | None = None, threads: int | None = None) -> dict[str, dict]:
    """Train the three stages into ``out/<stage>``; return each stage's validation scores."""
    results = {}
    previous = None
    for stage in STAGES:
        run_dir = out / stage
        options = dict(DEMO_CONFIG, model=stage, out=str(run_dir), init_from=previous, threads=threads)
        options["val_limit"] = VAL_IMAGES
        if iterations:
            options.update(iterations=iterations, val_interval=iterations, checkpoint_interval=iterations)
        started = time.perf_counter()
        print(printable(f"== {stage}" + (f" (initialised from {previous})" if previous else " (from scratch)")),
              flush=True)
        result = train(TrainConfig.from_dict(options), save_on_interrupt=False)  # a rerun starts the demo anew
        print(f"   {stage}: mean IU {100 * result['scores']['mean_iu']:.1f} in {time.perf_counter() - started:.0f} s")
        results[stage] = result["scores"]
        previous = str(run_dir / "last.pth")
    return results


def write_overlays(out: Path, count: int = OVERLAY_IMAGES) -> list[Path]:
    """image | ground truth | FCN-32s | FCN-16s | FCN-8s, titled, above the legend of every class; one PNG
    per validation image."""
    outputs = Outputs(out / "overlays", "demo")
    segmenters = [load(out / stage / "last.pth", device="cpu") for stage in STAGES]
    dataset = SyntheticRoads(num_images=count, split="val")
    titles = ["image", "ground truth", *(f"{NAMES[stage]} overlay" for stage in STAGES)]
    paths = [out / "overlays" / f"{dataset.sample_name(index)}.png" for index in range(count)]
    with outputs.landing(paths, flush=True):
        for index, path in enumerate(paths):
            image, label = dataset.load(index)
            panels = [image, colorize(label, dataset.info)]
            panels += [overlay(image, segmenter.predict(image), dataset.info, opacity=0.7)
                       for segmenter in segmenters]
            body = titled(panels, titles)
            key = legend_strip(range(dataset.info.num_classes), dataset.info, body.shape[1])
            save_png(path, stacked([body, key]))
    return paths


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.is_dir():  # refused before the lock file is made: nothing changes in a folder that is not the demo's
        refuse_if_held(out)
        check_earlier_demo(out)
    with folder_lock(out, "fcnseg demo"):
        clear_earlier_demo(out)
        show_shipped_net(out, args.threads)
        results = run_demo(out, args.iterations, args.threads)
        _report(results)
        paths = write_overlays(out)
    print(printable(f"overlays (image | truth | FCN-32s | FCN-16s | FCN-8s): {paths[0].parent}"))
    return 0


def _report(results: dict[str, dict]) -> None:
    print("\nSynthetic road scenes, validation (100 images, 128x160):\n")
    print(format_table({NAMES[k]: v for k, v in results.items()}))
    class_names = SYNTHETIC_ROADS.class_names  # the data set's own record, not a reader's attribute
    print()
    for stage, scores in results.items():
        print(f"{NAMES[stage]} per-class IoU:")
        print(format_per_class(scores, class_names))
        print()
