"""``fcnseg predict``: segment image files and write masks, overlays, legends (and probabilities).

Failure policy: mistakes on the command line (a missing input path, a pattern matching nothing, two
inputs that would write the same output names, bad options) stop the run with exit code 2 before
anything is written. An input file that turns out to be unreadable (a symbolic link that leads nowhere
included) does not stop the run: the other images are processed, every failure is reported with its
file name at the end, and the exit code is 1.

One run at a time per output folder (:func:`fcnseg.outputs.folder_lock`); every file is claimed in the
folder's journal before it lands (:meth:`fcnseg.outputs.Outputs.write`), so a run stopped in any way is
continued by the next one without ``--overwrite``: inputs whose outputs an earlier run of the same job (the
same checkpoint file, options and input file) wrote, and that are unchanged since, are not segmented again.

One run may be spread over processes: ``--shard I/N`` (processes a scheduler starts, a SLURM array), or the
ranks torchrun starts. Each process segments the inputs ``I, I + N, ...`` of the sorted list and they write
into one folder together (:func:`fcnseg.outputs.shard_lock`); under torchrun rank 0 prints the summary.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import hashlib
import io
import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from fcnseg import viz
from fcnseg.api import BACKENDS, Segmenter, check_same_frame, load
from fcnseg.commands.options import (
    SHIPPED_NETS,
    add_inference,
    add_max_memory,
    add_max_pixels,
    add_runtime,
    fraction,
    inference_options,
    output_path,
    positive_float,
)
from fcnseg.data.hha import check_intrinsics
from fcnseg.data.info import DatasetInfo
from fcnseg.data.io import IMAGE_SUFFIXES, decode_image, leads_nowhere
from fcnseg.errors import ConfigError, DataError, WriteError, listing, printable
from fcnseg.outputs import RECORD, Outputs, Shard, folder_lock, keeps_a_record, refuse_if_held, shard_lock
from fcnseg.pretrained import resolve
from fcnseg.progress import bar as progress_bar
from fcnseg.progress import is_quiet
from fcnseg.runtime import Runtime, gather_objects, start

log = logging.getLogger(__name__)

OUTPUT_SUFFIXES = ("_mask.png", "_overlay.png", "_side_by_side.png", "_legend.png", "_probs.npy")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict", help="segment images with a trained model",
        description="Segment images and write, per input STEM: STEM_mask.png (palette PNG of class indices), "
                    "STEM_overlay.png, STEM_side_by_side.png (image | overlay | mask, titled, with the legend of "
                    "the classes present; small inputs enlarged, large ones shown within 7680x4320), "
                    "STEM_legend.png and with --probs STEM_probs.npy "
                    "(C x H x W float16). Nets with several heads (SIFT Flow's) write the others' maps as "
                    "STEM_TASK_mask.png and so on (STEM_geometric_mask.png). "
                    "Unreadable images are reported at the end (exit code 1) after the others are processed.")
    parser.add_argument("checkpoint", help="fcnseg checkpoint (.pth), its ONNX or TorchScript export, "
                                        f"or the name of a net shipped with fcnseg ({SHIPPED_NETS})")
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image files, folders (their images, sorted, not recursive) or glob patterns")
    parser.add_argument("--out", required=True, type=output_path, help="output folder")
    parser.add_argument("--opacity", type=fraction, default=0.5, help="overlay opacity of the class colours (0-1)")
    parser.add_argument("--probs", action="store_true", help="also write STEM_probs.npy (C x H x W float16)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace files in --out that an earlier fcnseg predict did not write")
    parser.add_argument("--shard", type=shard_spec, metavar="I/N",
                        help="segment only the inputs I, I+N, I+2N, ... of the sorted list (I from 0 to N-1), as one "
                             "of N processes writing into one --out: e.g. a SLURM array, --array=0-<N-1> and --shard "
                             "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT (under torchrun the processes share the "
                             "inputs without it)")
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


def shard_spec(text: str) -> Shard:
    """argparse type of ``--shard``: ``I/N``, shard I (from 0) of N."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"expected I/N (shard I of N, counted from 0), got {text!r}")
    try:
        return Shard(int(match[1]), int(match[2]))
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def expand_inputs(inputs: Sequence[str]) -> list[Path]:
    """Files, folders (images inside, sorted, non-recursive) and glob patterns -> a list of files.

    Raises DataError for a path that does not exist, a folder without images or a pattern matching nothing.
    A symbolic link that leads nowhere (a loop, a missing target) is listed like a file: reading it fails,
    and the failure is reported with the others, never skipped silently.
    """
    files: list[Path] = []
    folders: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = _folder_images(path)
            if not found:
                raise DataError(_only_own_outputs(f"folder {path}", _folder_images(path, own=True)) or
                                f"folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)})"
                                f"{_unsearched(path, set(), '; ')}")
            folders.append(path)
            files.extend(found)
        elif path.is_file() or leads_nowhere(path):
            files.append(path)
        elif any(char in item for char in "*?["):
            matched = map(Path, glob.glob(item, recursive=True))  # "**": every depth, as a shell's globstar
            every = sorted(p for p in matched if p.is_file() or leads_nowhere(p))
            found = _without_own_outputs(every)
            if not found:
                raise DataError(_only_own_outputs(f"the pattern {item!r}", every) or
                                f"no files match the pattern {item!r}")
            files.extend(found)
        elif path.exists():  # /dev/zero, a FIFO, a socket: "input not found" was untrue
            raise DataError(f"input {path} is not a regular file (a device, a pipe or a socket): give image files")
        else:
            raise DataError(f"input not found: {path}")
    for folder in folders:  # images one level down that no other input names: said, not skipped silently
        hint = _unsearched(folder, set(files), ": ")
        if hint:
            log.warning("folder %s%s", folder, hint)
    # The same file named twice (say, by a folder and a pattern) is segmented once.
    unique = list(dict.fromkeys(files))
    _refuse_shared_outputs({file: [Path(f"{file.stem}_*.png")] for file in unique})  # before the net loads
    return unique


def _unsearched(folder: Path, named: set[Path], lead: str) -> str:
    """What to say of ``folder``'s subfolders holding images that are not all in ``named`` (nothing if none)."""
    subfolders = [sub for sub in sorted(folder.iterdir()) if sub.is_dir()]
    skipped = [sub for sub in subfolders if not named.issuperset(_folder_images(sub))]
    if not skipped:
        return ""
    return (f"{lead}its subfolders are not searched ({listing(skipped, 3)} "
            f"{'holds' if len(skipped) == 1 else 'hold'} images): name them, or give a pattern such as "
            f"'{folder / '*' / '*.png'}'")


def _folder_images(folder: Path, own: bool = False) -> list[Path]:
    """The images directly in ``folder``, sorted (a link that leads nowhere counts: reading it fails, reported),
    but for the outputs fcnseg predict wrote there (:func:`_without_own_outputs`; with ``own``, those too)."""
    try:
        images = sorted(p for p in folder.iterdir()
                        if p.suffix.lower() in IMAGE_SUFFIXES and (p.is_file() or leads_nowhere(p)))
    except OSError:  # a subfolder that cannot be read is no folder of images
        return []
    return images if own else _without_own_outputs(images)


def _only_own_outputs(where: str, images: list[Path]) -> str | None:
    """Why ``where`` gives nothing to segment when its ``images`` are all an earlier fcnseg predict's outputs
    ("no files match" and "holds no images" were untrue); None when it holds none."""
    if not images:
        return None
    return (f"{where} gives only outputs of an earlier fcnseg predict ({listing([p.name for p in images], 3)}), "
            "which are never taken as inputs: copy them to another folder to segment them")


def _without_own_outputs(paths: list[Path]) -> list[Path]:
    """``paths`` but for the files an earlier fcnseg predict recorded as its outputs in their folder: with --out the
    folder of the images, a rerun took its own masks for images and refused to write over them, so a stopped run
    there could never finish."""
    own: dict[Path, set[str]] = {}
    for folder in {path.parent for path in paths}:
        if keeps_a_record(folder):  # else no earlier run wrote here
            entries = Outputs(folder, "predict").entries()
            own[folder] = {name for name, entry in entries.items()
                           if entry.get("command") == "predict" and name.endswith(OUTPUT_SUFFIXES)}
    return [path for path in paths if path.name not in own.get(path.parent, ())]


def write_outputs(outputs: Outputs, stem: str, image: np.ndarray, labels: np.ndarray, info: DatasetInfo,
                  opacity: float = 0.5, probs: np.ndarray | None = None, source: str | None = None) -> list[Path]:
    """Write the mask, overlay, side-by-side, legend (and probabilities) of one image into ``outputs``' folder,
    each claimed before it lands (:meth:`Outputs.write`; ``source``: what they are made from, see
    :meth:`Outputs.written`); returns the paths."""
    overlaid = viz.overlay(image, labels, info, opacity)
    pictures = [viz.index_image(labels, info), overlaid, viz.prediction_picture(image, labels, info, opacity),
                viz.legend(viz.present_classes(labels, info), info)]
    paths = [outputs.folder / f"{stem}{suffix}" for suffix in OUTPUT_SUFFIXES]
    for path, picture in zip(paths[:4], pictures, strict=True):
        outputs.write(path, _png_bytes(picture), source)
    if probs is None:
        return paths[:4]
    buffer = io.BytesIO()
    np.save(buffer, probs.astype(np.float16))
    outputs.write(paths[4], buffer.getvalue(), source)
    return paths


def _png_bytes(picture: np.ndarray | Image.Image) -> bytes:
    """A picture (an array as :func:`fcnseg.viz.save_png` takes, or a PIL image) encoded as PNG, in memory:
    its hash is claimed before the file is written."""
    if isinstance(picture, np.ndarray):
        picture = Image.fromarray(np.ascontiguousarray(picture))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def run(args: argparse.Namespace) -> int:
    """0 when every image was segmented, 1 when some could not be read."""
    files = expand_inputs(args.inputs)
    options = inference_options(args)
    runtime = start(args.device, args.threads)
    shard = _shard_of(args.shard, runtime)
    if shard is not None:  # every shard splits one list, whatever order its inputs were given in
        files = sorted(files, key=lambda file: str(file.absolute()))
    mine = files if shard is None else shard.take(files)
    args.checkpoint = resolve(args.checkpoint)  # a shipped net's name: its file, fingerprinted in _job
    segmenter = load(args.checkpoint, device=runtime.device, backend=args.backend, options=options,
                     max_pixels=args.max_pixels, max_memory=args.max_memory)
    segmenter.intrinsics, segmenter.depth_scale = args.intrinsics, args.depth_scale
    companions = depth_files(args, mine, segmenter.inputs, total=len(files))
    if max(segmenter.info.head_classes) > 256:
        raise ConfigError(f"{segmenter.info.name} has {segmenter.info.num_classes} classes; mask PNGs and "
                          "overlays hold at most 256. Use the Python API (fcnseg.load) instead.")
    every_input = {file: output_paths(args.out, file.stem, segmenter.info, args.probs) for file in files}
    _refuse_shared_outputs(every_input)  # over every shard's inputs: this shard's alone could miss a clash
    planned = {file: every_input[file] for file in mine}
    every = [path for paths in planned.values() for path in paths]
    outputs = Outputs(args.out, "predict", args.overwrite, shard)
    if shard is None and args.out.is_dir():  # refused before anything is made in a folder another run is writing
        refuse_if_held(args.out)
    outputs.claim(every, inputs=[*files, args.checkpoint])  # before the lock file is made, too
    with _holding(args, outputs, files, every, segmenter.info):
        if shard is None:  # alone in the folder: what killed runs claimed, into the record (for shards: shard_lock)
            outputs.settle()
        outputs.claim(every, inputs=[*files, args.checkpoint])  # again: these outputs are ours alone now
        job, entries = _job(args), outputs.entries()
        sources = {file: _source(job, file, companions[file]) for file in mine}
        todo = [file for file in mine if not outputs.written(planned[file], sources[file], entries)]
        if not args.probs:  # an earlier run's probabilities would stay beside masks of another net or options
            _remove_earlier_probs(args.out, todo, outputs, entries)
        try:
            failures = _predict_all(args, todo, segmenter, companions, outputs, sources, runtime.is_main)
        except KeyboardInterrupt:  # "fcnseg: interrupted" alone did not say that a rerun continues
            log.warning("stopped: the images finished so far are kept; run the same command again to continue")
            raise
    return _report(failures, len(mine), len(mine) - len(todo), len(files), args.out, shard, runtime)


def _refuse_shared_outputs(planned: dict[Path, list[Path]]) -> None:
    """One DataError naming every output that several inputs would write (``a.png`` and ``a.jpg``; ``a.png`` and
    ``a_geometric.png`` for a net of a second head named geometric: the last one won, without a word)."""
    writers: dict[Path, list[Path]] = {}
    for file, paths in planned.items():
        for path in paths:
            writers.setdefault(path, []).append(file)
    shared = {}  # by the inputs that clash: each pair once, with the first output they share
    for path, files in writers.items():
        if len(files) > 1:
            shared.setdefault(tuple(files), path)
    if shared:
        clashes = [f"{' and '.join(map(str, files))} would all write {path.name}" for files, path in shared.items()]
        more = f"; and {len(clashes) - 5} more" if len(clashes) > 5 else ""
        raise DataError(f"inputs {'; '.join(clashes[:5])}{more}: rename them, or segment them into separate --out "
                        "folders")


def _remove_earlier_probs(out: Path, todo: list[Path], outputs: Outputs, entries: dict[str, dict]) -> None:
    """Remove the ``_probs.npy`` an earlier fcnseg predict wrote (the record says so, and it is unchanged) for each
    input segmented again without --probs: it was left beside the new masks, from another net (2.9% of its argmax
    agreed with them). A file of the user's of that name is not fcnseg's, and stays. Said, even with --quiet."""
    removed = []
    for file in todo:
        earlier = out / f"{file.stem}{OUTPUT_SUFFIXES[-1]}"
        if earlier.is_file() and outputs.owned(earlier, entries):
            earlier.unlink()
            removed.append(earlier.name)
    if removed:
        log.warning(f"removed {listing(removed, 3)}, written by an earlier fcnseg predict for images segmented again "
                    "now: they would no longer go with the new masks (--probs writes them anew)")


def _shard_of(given: Shard | None, runtime: Runtime) -> Shard | None:
    """This process's shard: ``--shard``'s, or its rank's under torchrun; None for a run in one process."""
    if not runtime.distributed:
        return given
    if given is not None:
        raise ConfigError(f"--shard {given} under torchrun, whose {runtime.world_size} processes share the inputs "
                          "already: leave out --shard")
    return Shard(runtime.rank, runtime.world_size)


def _holding(args: argparse.Namespace, outputs: Outputs, files: list[Path], every: list[Path],
             info: DatasetInfo) -> contextlib.AbstractContextManager:
    """The hold on ``--out`` for this process: the whole folder, or a shard's part in it."""
    # Temporaries a killed run left: of its outputs, and of the record (killed while saving it).
    if outputs.shard is None:
        return folder_lock(args.out, "fcnseg predict", stale=[RECORD, *(path.name for path in every)])
    others = [path.name for file in files for path in output_paths(args.out, file.stem, info, args.probs)]
    run = _digest([_job(args), outputs.shard.count, [str(file.absolute()) for file in files]])
    return shard_lock(outputs, "fcnseg predict", run, stale=[path.name for path in every],
                      stale_alone=[RECORD, *others])


# Options that change nothing in the outputs: a run that differs only in these is the same job.
_NOT_IN_OUTPUTS = ("func", "command", "inputs", "out", "overwrite", "shard", "threads", "quiet")


def _job(args: argparse.Namespace) -> str:
    """A fingerprint of what makes the outputs what they are, but the inputs: the checkpoint file (path, size,
    modification time) and every option."""
    stat = os.stat(args.checkpoint)
    options = {key: str(value) for key, value in vars(args).items() if key not in _NOT_IN_OUTPUTS}
    return _digest({**options, "checkpoint": [os.path.realpath(args.checkpoint), stat.st_size, stat.st_mtime_ns]})


def _source(job: str, file: Path, companions: dict[str, Path]) -> str:
    """A fingerprint of what one input's outputs are made from: ``job``, the input and its depth or HHA image
    (path, size, modification time)."""
    files = []
    for path in (file, *companions.values()):
        try:
            stat = os.stat(path)
            files.append([os.path.realpath(path), stat.st_size, stat.st_mtime_ns])
        except OSError:  # unreadable: it fails, and writes nothing
            files.append([str(path)])
    return _digest([job, files])


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:32]


def _predict_all(args: argparse.Namespace, files: list[Path], segmenter: Segmenter,
                 companions: dict[Path, dict[str, Path]], outputs: Outputs, sources: dict[Path, str],
                 show_bar: bool = True) -> list[tuple[Path, str]]:
    """Segment ``files`` into ``outputs``; returns the inputs that could not be read, with the reason."""
    failures: list[tuple[Path, str]] = []
    shard = f"shard {outputs.shard}: " if outputs.shard else ""
    with progress_bar(total=len(files), desc="predict", unit="img", enabled=show_bar) as bar, _flushing(outputs):
        for done, path in enumerate(files, start=1):
            began = time.perf_counter()
            try:  # an unreadable file, or one no memory plan fits, fails alone
                image = decode_image(path, args.max_pixels)
                maps, probs = _segment(segmenter, image, str(path), args.probs, **companions[path])
            except DataError as exc:
                failures.append((path, str(exc)))
                bar.write(printable(f"{shard}[{done}/{len(files)}] {path.name} FAILED: {exc}"), file=sys.stderr)
                bar.update(1)
                continue
            for head, labels in zip(segmenter.info.heads, maps, strict=True):
                stem = path.stem if head is segmenter.info else f"{path.stem}_{head.task}"
                write_outputs(outputs, stem, image, labels, head, args.opacity,
                              probs if head is segmenter.info else None, sources[path])
            if not is_quiet():
                bar.write(printable(f"{shard}[{done}/{len(files)}] {path.name} {image.shape[1]}x{image.shape[0]} "
                                    f"{time.perf_counter() - began:.2f} s"), file=sys.stderr)
            bar.update(1)
    return failures


def output_paths(out: Path, stem: str, info: DatasetInfo, probs: bool) -> list[Path]:
    """The files one input gives: the first head's under STEM_*, each further head's under STEM_TASK_*."""
    paths = [out / f"{stem}{suffix}" for suffix in (OUTPUT_SUFFIXES if probs else OUTPUT_SUFFIXES[:4])]
    return paths + [out / f"{stem}_{head.task}{suffix}" for head in info.extra_heads for suffix in OUTPUT_SUFFIXES[:4]]


def depth_files(args: argparse.Namespace, files: list[Path], inputs: tuple[str, ...],
                total: int | None = None) -> dict[Path, dict[str, Path]]:
    """Each input's depth map or HHA image (``{"depth": path}``, ``{"hha": path}`` or nothing), found before
    anything runs: a net that reads depth needs one per input, a colour net none. ``total``: how many inputs
    the run has, when ``files`` are one shard's."""
    total = len(files) if total is None else total
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
        if total > 1:
            raise ConfigError(f"--{kind} {where} is one file for {total} inputs: give a folder of files named as "
                              "the inputs")
        return {file: {kind: where} for file in files}  # one input, or none in this shard
    if not where.is_dir():
        raise DataError(f"--{kind} {where} does not exist")
    # By exact stem: "img.*" also matched img.backup.png, which sorted first and was used without a word.
    by_stem: dict[str, list[Path]] = {}
    for candidate in sorted(where.iterdir()):
        if candidate.suffix.lower() in IMAGE_SUFFIXES:
            by_stem.setdefault(candidate.stem, []).append(candidate)
    found = {path: by_stem.get(path.stem, []) for path in files}
    missing = [path.stem for path, matches in found.items() if not matches]
    if missing:
        raise DataError(f"{where} holds no {kind} image for {len(missing)} of the inputs: "
                        f"{listing(missing)} (expected STEM.png)")
    several = [matches for matches in found.values() if len(matches) > 1]
    if several:
        raise DataError(f"{where} holds {len(several[0])} {kind} images named {several[0][0].stem}.* "
                        f"({listing(several[0])}): keep one per input")
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
    """The record saved on the way out, also when interrupted (the journal's claims stand in for it where
    that is impossible: kill -9, or a full disk)."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(WriteError):  # a full disk: the first file that failed is the news
            outputs.flush()
        raise
    outputs.flush()


def _report(failures: list[tuple[Path, str]], total: int, kept: int, inputs: int, out: Path, shard: Shard | None,
            runtime: Runtime) -> int:
    """Print what was done (under torchrun: rank 0, for every rank); 1 when an input could not be segmented.
    ``total``: this process's inputs, ``kept`` of them written by an earlier run; ``inputs``: the run's."""
    gathered = gather_objects((failures, total, kept), runtime)
    failures = [failure for rank_failures, _, _ in gathered for failure in rank_failures]
    total, kept = sum(count for _, count, _ in gathered), sum(count for _, _, count in gathered)
    if not runtime.is_main:
        return 1 if failures else 0
    who = f"{runtime.world_size} processes" if runtime.distributed else f"shard {shard}" if shard else ""
    if failures:
        print(f"fcnseg predict: {who + ': ' if who else ''}{len(failures)} of {total} inputs could not be "
              "segmented:", file=sys.stderr)
        for path, message in failures:
            print(printable(f"  {path}: {message}"), file=sys.stderr)
        return 1
    if total == 0:  # more shards than inputs
        print(f"fcnseg predict: shard {shard} has none of the {inputs} inputs (shard I of N takes the inputs I, I+N, "
              "...): nothing to do", file=sys.stderr)
        return 0
    earlier = f" ({kept} of them written by an earlier run, and kept)" if kept else ""
    print(printable(f"fcnseg predict: {who + ' ' if who else ''}wrote results for {total} images to {out}{earlier}"),
          file=sys.stderr)
    return 0
