"""``fcnseg predict``: segment image files and write masks, overlays, legends (and probabilities).

Failure policy: mistakes on the command line (a missing input path, a pattern matching nothing, two
inputs that would write the same output names, bad options) stop the run with exit code 2 before
anything is written. An input file that turns out to be unreadable does not stop the run: the other
images are processed, every failure is reported with its file name at the end, and the exit code is 1.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from fcnseg import viz
from fcnseg.api import BACKENDS, Segmenter, check_same_frame, load
from fcnseg.atomic import atomic_open
from fcnseg.commands.options import (
    add_inference,
    add_max_memory,
    add_max_pixels,
    add_runtime,
    fraction,
    inference_options,
    positive_float,
)
from fcnseg.data.hha import check_intrinsics
from fcnseg.data.info import DatasetInfo
from fcnseg.data.io import IMAGE_SUFFIXES, decode_image
from fcnseg.errors import ConfigError, DataError, listing, printable
from fcnseg.outputs import Outputs
from fcnseg.progress import bar as progress_bar
from fcnseg.progress import is_quiet
from fcnseg.runtime import start

OUTPUT_SUFFIXES = ("_mask.png", "_overlay.png", "_side_by_side.png", "_legend.png", "_probs.npy")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict", help="segment images with a trained model",
        description="Segment images and write, per input STEM: STEM_mask.png (palette PNG of class indices), "
                    "STEM_overlay.png, STEM_side_by_side.png (image | overlay | mask), STEM_legend.png and "
                    "with --probs STEM_probs.npy (C x H x W float16). Nets with several heads (SIFT Flow's) "
                    "write the others' maps as STEM_TASK_mask.png and so on (STEM_geometric_mask.png). "
                    "Unreadable images are reported at the end (exit code 1) after the others are processed.")
    parser.add_argument("checkpoint", help="fcnseg checkpoint (.pth), or its ONNX or TorchScript export")
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image files, folders (their images, sorted, not recursive) or glob patterns")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--opacity", type=fraction, default=0.5, help="overlay opacity of the class colours (0-1)")
    parser.add_argument("--probs", action="store_true", help="also write STEM_probs.npy (C x H x W float16)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace files in --out that an earlier fcnseg predict did not write")
    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="auto: by the file's content; torch: a checkpoint or TorchScript export; onnxruntime: "
                             "an ONNX export")
    _add_depth_options(parser)
    add_inference(parser, batch_size=4)
    add_max_memory(parser)
    add_max_pixels(parser)
    add_runtime(parser)
    parser.set_defaults(func=run)


def _add_depth_options(parser: argparse.ArgumentParser) -> None:
    depth = parser.add_argument_group("depth (the NYUDv2 HHA and colour-HHA nets)")
    depth.add_argument("--depth", type=Path, help="the depth map of the input (a file), or a folder of depth maps "
                                                  "named as the inputs (STEM.png): one-channel images of depth values")
    depth.add_argument("--hha", type=Path, help="HHA images instead of depth maps (a file, or a folder, as --depth)")
    depth.add_argument("--depth-scale", type=positive_float, default=0.001,
                       help="metres per unit of a depth image (default 0.001: millimetres, as NYUDv2's)")
    depth.add_argument("--intrinsics", type=positive_float, nargs=4, metavar=("FX", "FY", "CX", "CY"),
                       help="the depth camera in pixels (principal point 1-based); default: NYUDv2's Kinect, for its "
                            "640x480 frames and the authors' 560x425 crops")


def expand_inputs(inputs: Sequence[str]) -> list[Path]:
    """Files, folders (images inside, sorted, non-recursive) and glob patterns -> a list of files.

    Raises DataError for a path that does not exist, a folder without images or a pattern matching nothing.
    """
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DataError(f"folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        elif any(char in item for char in "*?["):
            found = sorted(Path(p) for p in glob.glob(item) if Path(p).is_file())
            if not found:
                raise DataError(f"no files match the pattern {item!r}")
            files.extend(found)
        else:
            raise DataError(f"input not found: {path}")
    # The same file named twice (say, by a folder and a pattern) is segmented once.
    unique = list(dict.fromkeys(files))
    stems: dict[str, Path] = {}
    for file in unique:
        if file.stem in stems:
            raise DataError(f"inputs {stems[file.stem]} and {file} would both write {file.stem}_*.png: "
                            "rename one or segment them in separate runs")
        stems[file.stem] = file
    return unique


def write_outputs(out: Path, stem: str, image: np.ndarray, labels: np.ndarray, info: DatasetInfo,
                  opacity: float = 0.5, probs: np.ndarray | None = None) -> list[Path]:
    """Write the mask, overlay, side-by-side, legend (and probabilities) of one image; returns the paths."""
    overlaid = viz.overlay(image, labels, info, opacity)
    paths = [out / f"{stem}{suffix}" for suffix in OUTPUT_SUFFIXES]
    viz.save_index_png(paths[0], labels, info)
    viz.save_png(paths[1], overlaid)
    viz.save_png(paths[2], viz.side_by_side([image, overlaid, viz.colorize(labels, info)]))
    viz.save_png(paths[3], viz.legend(viz.present_classes(labels, info), info))
    if probs is None:
        return paths[:4]
    with atomic_open(paths[4]) as handle:
        np.save(handle, probs.astype(np.float16))
    return paths


def run(args: argparse.Namespace) -> int:
    """0 when every image was segmented, 1 when some could not be read."""
    files = expand_inputs(args.inputs)
    options = inference_options(args)
    runtime = start(args.device, args.threads)
    segmenter = load(args.checkpoint, device=runtime.device, backend=args.backend, options=options,
                     max_pixels=args.max_pixels, max_memory=args.max_memory)
    segmenter.intrinsics, segmenter.depth_scale = args.intrinsics, args.depth_scale
    companions = depth_files(args, files, segmenter.inputs)
    if max(segmenter.info.head_classes) > 256:
        raise ConfigError(f"{segmenter.info.name} has {segmenter.info.num_classes} classes; mask PNGs and "
                          "overlays hold at most 256. Use the Python API (fcnseg.load) instead.")
    outputs = Outputs(args.out, "predict", args.overwrite)
    outputs.claim([path for file in files for path in output_paths(args.out, file.stem, segmenter.info, args.probs)],
                  inputs=[*files, args.checkpoint])
    failures: list[tuple[Path, str]] = []
    with progress_bar(total=len(files), desc="predict", unit="img") as bar, _flushing(outputs):
        for done, path in enumerate(files, start=1):
            began = time.perf_counter()
            try:  # an unreadable file, or one no memory plan fits, fails alone
                image = decode_image(path, args.max_pixels)
                maps, probs = _segment(segmenter, image, str(path), args.probs, **companions[path])
            except DataError as exc:
                failures.append((path, str(exc)))
                bar.write(printable(f"[{done}/{len(files)}] {path.name} FAILED: {exc}"), file=sys.stderr)
                bar.update(1)
                continue
            for head, labels in zip(segmenter.info.heads, maps, strict=True):
                stem = path.stem if head is segmenter.info else f"{path.stem}_{head.task}"
                outputs.record(write_outputs(args.out, stem, image, labels, head, args.opacity,
                                             probs if head is segmenter.info else None))
            if not is_quiet():
                bar.write(printable(f"[{done}/{len(files)}] {path.name} {image.shape[1]}x{image.shape[0]} "
                                    f"{time.perf_counter() - began:.2f} s"), file=sys.stderr)
            bar.update(1)
    return _report(failures, len(files), args.out)


def output_paths(out: Path, stem: str, info: DatasetInfo, probs: bool) -> list[Path]:
    """The files one input gives: the first head's under STEM_*, each further head's under STEM_TASK_*."""
    paths = [out / f"{stem}{suffix}" for suffix in (OUTPUT_SUFFIXES if probs else OUTPUT_SUFFIXES[:4])]
    return paths + [out / f"{stem}_{head.task}{suffix}" for head in info.extra_heads for suffix in OUTPUT_SUFFIXES[:4]]


def depth_files(args: argparse.Namespace, files: list[Path], inputs: tuple[str, ...]) -> dict[Path, dict[str, Path]]:
    """Each input's depth map or HHA image (``{"depth": path}``, ``{"hha": path}`` or nothing), found before
    anything runs: a net that reads depth needs one per input, a colour net none."""
    given = {kind: getattr(args, kind) for kind in ("depth", "hha") if getattr(args, kind) is not None}
    if "hha" not in inputs:
        if given:
            raise ConfigError(f"{args.checkpoint} reads colour images only: leave out --{' and --'.join(given)}")
        return {path: {} for path in files}
    if len(given) != 1:
        raise ConfigError(f"{args.checkpoint} reads depth ({'+'.join(inputs)}): give --depth (depth maps) or --hha "
                          "(HHA images), one of them")
    if args.intrinsics is not None:
        check_intrinsics(args.intrinsics)  # before any image, not once per image
    kind, where = next(iter(given.items()))
    if where.is_file():
        if len(files) > 1:
            raise ConfigError(f"--{kind} {where} is one file for {len(files)} inputs: give a folder of files named as "
                              "the inputs")
        return {files[0]: {kind: where}}
    if not where.is_dir():
        raise DataError(f"--{kind} {where} does not exist")
    found = {path: sorted(p for p in where.glob(f"{glob.escape(path.stem)}.*") if p.suffix.lower() in IMAGE_SUFFIXES)
             for path in files}
    missing = [path.stem for path, matches in found.items() if not matches]
    if missing:
        raise DataError(f"{where} holds no {kind} image for {len(missing)} of the inputs: "
                        f"{listing(missing)} (expected STEM.png)")
    return {path: {kind: matches[0]} for path, matches in found.items()}


def _segment(segmenter: Segmenter, image: np.ndarray, name: str, probs: bool,
             **depth: Path) -> tuple[list[np.ndarray], np.ndarray | None]:
    """(every head's labels, probabilities or None) of one image (with its depth map or HHA image)."""
    shown = image  # in the overlays even when the net reads no colour image
    image = image if "rgb" in segmenter.inputs else None
    if not probs:
        maps = list(segmenter.predict_heads(image, name=name, **depth).values())
        _check_frame(shown, maps[0], name)
        return maps, None
    probabilities = segmenter.predict_probs(image, name=name, **depth)
    _check_frame(shown, probabilities[0], name)
    return segmenter.labels_from_probs(probabilities), probabilities


def _check_frame(image: np.ndarray, labels: np.ndarray, name: str) -> None:
    """A net that reads only depth still draws on the colour image: they must be of one frame."""
    check_same_frame(image.shape, labels.shape, name)


@contextlib.contextmanager
def _flushing(outputs: Outputs) -> Iterator[None]:
    try:
        yield
    finally:  # also when interrupted: what was written is recorded as fcnseg predict's
        outputs.flush()


def _report(failures: list[tuple[Path, str]], total: int, out: Path) -> int:
    if failures:
        print(f"fcnseg predict: {len(failures)} of {total} inputs could not be segmented:", file=sys.stderr)
        for path, message in failures:
            print(printable(f"  {path}: {message}"), file=sys.stderr)
        return 1
    print(printable(f"fcnseg predict: wrote results for {total} images to {out}"), file=sys.stderr)
    return 0
