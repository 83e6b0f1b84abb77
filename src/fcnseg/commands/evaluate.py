"""``fcnseg eval``: score a checkpoint on a labelled dataset split (the paper's Table 2 and per-class IoU)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import logging
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset, Subset

from fcnseg import __version__
from fcnseg.api import Segmenter, load
from fcnseg.commands.options import (
    SHIPPED_NETS,
    add_inference,
    add_max_memory,
    add_runtime,
    inference_options,
    number,
    output_path,
    positive_int,
    yaml_flag,
)
from fcnseg.data.info import DatasetInfo, count_text
from fcnseg.data.registry import DATASETS, build_dataset, dataset_options
from fcnseg.errors import ConfigError, DataError, printable
from fcnseg.evaluate import REPORT_FILES, evaluate, report_text, write_report
from fcnseg.inference import InferenceOptions
from fcnseg.outputs import RECORD, Outputs, folder_lock, refuse_if_held
from fcnseg.pretrained import resolve
from fcnseg.ranges import NON_NEGATIVE_COUNT
from fcnseg.runtime import Runtime, start

log = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval", help="score a checkpoint on a labelled dataset (pixel acc., mean acc., mean IU, f.w. IU)",
        description="Score a checkpoint on a dataset split; prints the paper's Table 2 line and per-class "
                    "IoU. With --out also writes metrics.json and confusion.png.")
    parser.add_argument("checkpoint", type=Path, help="fcnseg checkpoint (.pth), its ONNX or TorchScript export, "
                                                   f"or the name of a net shipped with fcnseg ({SHIPPED_NETS})")
    parser.add_argument("--dataset", required=True, choices=sorted(DATASETS), help="dataset reader")
    parser.add_argument("--root", type=Path, help="dataset folder (not needed for synthetic)")
    parser.add_argument("--split", default="val", help="split to score (default: val)")
    parser.add_argument("--workers", type=number(NON_NEGATIVE_COUNT), default=2,
                        help="data loading processes (default: 2)")
    parser.add_argument("--out", type=output_path, help="folder for metrics.json and confusion.png")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace files in --out that an earlier fcnseg eval did not write")
    parser.add_argument("--limit", type=positive_int, help="score only the first N images")
    parser.add_argument("--class-map", type=yaml_flag, metavar="YAML",
                        help="merge or rename the dataset's classes as the net was trained, e.g. "
                             "'{road: road, \"*\": not road}'")
    parser.add_argument("--accept-only-class-zero", action="store_true",
                        help="score labels whose only class is 0 beside ignored pixels (refused by default: that is "
                             "how masks saved as 0/255 look)")
    add_inference(parser)
    add_max_memory(parser)
    add_runtime(parser)
    parser.set_defaults(func=run)


def positive_class(info: DatasetInfo) -> int | None:
    """The class a two-class task is about, scored also by its maximum F-measure (KITTI road): the one named
    road, else class 1 (0 being background, not road, ...); None for other tasks."""
    if info.num_classes != 2 or info.extra_heads:
        return None
    names = [name.lower() for name in info.class_names]
    return names.index("road") if "road" in names else 1


def _say_if_the_names_differ(net: DatasetInfo, data: DatasetInfo, dataset: str) -> None:
    """Warn when the net's classes and the dataset's have the same counts but other names: classes are scored by
    index, so a net evaluated on another dataset of as many classes gets numbers without a word otherwise."""
    pairs = [(ours, theirs) for net_head, data_head in zip(net.heads, data.heads, strict=True)
             for ours, theirs in zip(net_head.class_names, data_head.class_names, strict=True)
             if ours.lower() != theirs.lower()]
    if pairs:
        shown = ", ".join(f"{ours} / {theirs}" for ours, theirs in pairs[:3]) + (", ..." if len(pairs) > 3 else "")
        log.warning(f"the net's classes are not named as dataset {dataset}'s ({len(pairs)} differ: {shown}): "
                    "class k of the net is scored against class k of the dataset, and the report uses the net's "
                    "names; is this the dataset (and --class-map) the net was trained for?")


def run(args: argparse.Namespace) -> int:
    """Load the checkpoint, score the split, print (and with --out write) the report."""
    options = inference_options(args)
    args.checkpoint = resolve(args.checkpoint)  # a shipped net's name: its file (an input --out must not replace)
    outputs = None
    if args.out is not None:  # refused now, not after the evaluation
        if args.out.is_dir():
            refuse_if_held(args.out)
        outputs = Outputs(args.out, "eval", args.overwrite)
        outputs.claim([args.out / REPORT_FILES[0], args.out / REPORT_FILES[1]], inputs=[args.checkpoint])
    runtime = start(args.device, args.threads)  # under torchrun: one shard per process, counts summed
    segmenter = load(args.checkpoint, device=runtime.device, options=options, max_memory=args.max_memory)
    info = segmenter.info
    # Synthetic scenes are rendered from seeds: only as many as will be scored.
    extra = {"num_images": args.limit} if args.dataset == "synthetic" and args.limit else {}
    if "inputs" in dataset_options(args.dataset):  # NYUDv2: the images the net reads (colour, HHA or both)
        extra["inputs"] = "+".join(segmenter.inputs)
    if args.class_map is not None:
        extra["class_map"] = args.class_map
    dataset = build_dataset(args.dataset, args.root, args.split, normalization=segmenter.normalization, **extra)
    if dataset.info.head_classes != info.head_classes:
        raise DataError(f"{args.checkpoint} predicts {count_text(info.head_classes)} classes ({info.name}) but dataset "
                        f"{args.dataset} has {count_text(dataset.info.head_classes)}; evaluate on the dataset it was "
                        "trained for, with the --class-map it was trained with")
    if args.out is not None:
        _refuse_out_among_the_data(Path(args.out), dataset, args.root)
    if runtime.is_main:  # said once, not by every process of a torchrun
        _say_if_the_names_differ(info, dataset.info, args.dataset)
    data_info = dataset.info  # a Subset (--limit) has no info
    if args.limit is not None and args.limit < len(dataset):
        dataset = Subset(dataset, range(args.limit))
    with contextlib.ExitStack() as held:
        if outputs is not None and runtime.is_main:  # one run at a time per folder, from here to the report
            held.enter_context(folder_lock(args.out, "fcnseg eval", stale=(RECORD, *REPORT_FILES)))
            outputs.claim([args.out / name for name in REPORT_FILES], inputs=[args.checkpoint])  # ours alone now
        return _score(args, segmenter, dataset, data_info, options, runtime, outputs)


def _refuse_out_among_the_data(out: Path, dataset: Dataset, root: Path | None) -> None:
    """A ConfigError for an ``--out`` where the report would be read as data by later runs (a metrics.json among
    the masks failed every one): one of the split's folders or a folder inside one, or a folder under the
    dataset's root that already holds files of its own (another split's labels, say)."""
    out = out.resolve()
    for folder in getattr(dataset, "folders", set)():
        if out == folder or folder in out.parents:
            raise ConfigError(f"--out {out} is inside {folder}, a folder of the dataset's own files: a report there "
                              "would be read as data by every later run; choose a folder outside it")
    if root is not None and Path(root).resolve() in out.parents and out.is_dir():
        # Hidden files (fcnseg's records, .gitkeep, .DS_Store) are no data a reader takes.
        theirs = [p.name for p in out.iterdir() if not p.name.startswith(".") and p.name not in REPORT_FILES]
        if theirs:
            raise ConfigError(f"--out {out} is a folder of the dataset's root ({root}) holding files of its own "
                              f"({', '.join(sorted(theirs)[:3])}{', ...' if len(theirs) > 3 else ''}): a report there "
                              "could be read as data; choose a new folder")


def _score(args: argparse.Namespace, segmenter: Segmenter, dataset: Dataset, data_info: DatasetInfo,
           options: InferenceOptions, runtime: Runtime, outputs: Outputs | None) -> int:
    """Score the split, print (and with --out write) the report."""
    info = segmenter.info
    scores = evaluate(segmenter.scores, dataset, info.num_classes, data_info.ignore_index, options,
                      device=runtime.device, num_workers=args.workers, distributed=runtime.distributed,
                      planner=functools.partial(segmenter.plan, name=f"an image of {args.dataset} {args.split}"),
                      exclude_absent=data_info.exclude_absent,
                      strict_labels=not args.accept_only_class_zero,
                      extra_heads=data_info.extra_heads, positive_class=positive_class(data_info))
    if not runtime.is_main:
        return 0
    title = segmenter.title
    if outputs is not None:
        text = write_report(scores, info.class_names, args.out, title, info.extra_heads, outputs,
                            evaluated=_what_was_scored(args, options))
        outputs.flush()
        text += f"\n\nwrote {args.out / 'metrics.json'} and {args.out / 'confusion.png'}"
    else:
        text = report_text(scores, info.class_names, title, info.extra_heads)
    print(printable(f"{args.dataset} {args.split}: {scores['num_images']} images"))
    print(printable(text, newlines=True))  # the tables escaped each name already; the title and paths too
    return 0


def _what_was_scored(args: argparse.Namespace, options: InferenceOptions) -> dict[str, Any]:
    """metrics.json's record of the run: a report left by an earlier run (one since interrupted, or refused)
    looked like this one's."""
    return {"checkpoint": str(Path(args.checkpoint).resolve()), "dataset": args.dataset,
            "root": None if args.root is None else str(Path(args.root).resolve()), "split": args.split,
            "limit": args.limit, "class_map": args.class_map, "accept_only_class_zero": args.accept_only_class_zero,
            # the options asked for; an image that did not fit max_memory ran in sliding windows (said in a note)
            "inference": dataclasses.asdict(options), "max_memory": args.max_memory, "fcnseg": __version__,
            "at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
