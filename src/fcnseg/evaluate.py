"""Score a model on a labelled dataset: the paper's four metrics from one dataset-wide confusion matrix.

    scores = evaluate(model, dataset, num_classes=21, ignore_index=255)
    print(write_report(scores, VOC.class_names, "eval_out", "FCN-8s"))

Counts are summed over every pixel of the dataset before any division (never averaged per image), and
with ``distributed=True`` every rank scores a disjoint shard of the images and the counts are summed
across ranks, so each image counts exactly once. ``fcnseg eval`` is the command-line front end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image, ImageDraw, ImageFont
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from fcnseg import viz
from fcnseg.atomic import atomic_open
from fcnseg.checkpoint import model_from_checkpoint, unwrap
from fcnseg.data.collate import PadCollate
from fcnseg.data.registry import DATASETS, build_dataset
from fcnseg.inference import Forward, predict_labels, resolve_device
from fcnseg.metrics import SCORE_KEYS, ConfusionMatrix, format_per_class, format_table


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world_size, ...``: disjoint shards that together cover the dataset once.

    Unlike ``DistributedSampler`` it never pads shards with repeated images, so evaluation scores stay
    exact when the dataset size is not a multiple of the number of processes (shards then differ by one).
    """

    def __init__(self, dataset_len: int, rank: int, world_size: int) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank {rank} of {world_size}")
        if dataset_len < 0:
            raise ValueError(f"dataset_len must be >= 0, got {dataset_len}")
        self.indices = range(rank, dataset_len, world_size)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def evaluate(forward: Forward, dataset: Dataset, num_classes: int, ignore_index: int, mode: str = "whole",
             window: Sequence[int] = (512, 512), overlap: float = 1 / 3, flip: bool = False,
             scales: Sequence[float] = (1.0,), device: str | torch.device = "cpu", batch_size: int = 1,
             num_workers: int = 0, progress: bool = True, distributed: bool = False) -> dict:
    """Predict every image of ``dataset`` and score the predictions against its labels.

    Args:
        forward: a model (put in eval mode and moved to ``device`` for the run; DDP/compile wrappers are
            unwrapped) or any callable mapping normalised input to logits.
        dataset: yields ``(3 x H x W normalised image, H x W label)``; sizes may differ between images.
        num_classes, ignore_index: the label space; pixels equal to ``ignore_index`` are not scored.
        mode, window, overlap, flip, scales: inference options of :func:`fcnseg.inference.predict_labels`.
        batch_size: images per batch (and windows per forward call in slide mode); batches of differently
            sized images are padded with ignored pixels (the padding is the mean colour, which nets with
            large receptive fields can see near the border; batch_size 1 scores each image as it is).
        distributed: torch.distributed is initialised; each rank scores its shard and the counts are summed.

    Returns:
        The scores of :func:`fcnseg.metrics.scores_from_confusion` plus ``confusion`` (the C x C count
        matrix as nested lists, rows = ground truth) and ``num_images`` (images scored over all ranks).
    """
    rank, world_size = 0, 1
    if distributed:
        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError("distributed=True needs torch.distributed to be initialised first (e.g. under torchrun)")
        rank, world_size = dist.get_rank(), dist.get_world_size()
    device = torch.device(device)
    module = unwrap(forward) if isinstance(forward, nn.Module) else None
    was_training = module is not None and module.training
    if module is not None:
        # DDP's own forward may synchronise buffers; ranks run different numbers of images here.
        forward = module.to(device).eval()

    sampler = ShardSampler(len(dataset), rank, world_size)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                        collate_fn=PadCollate(ignore_index), pin_memory=device.type == "cuda")
    confusion = ConfusionMatrix(num_classes, ignore_index, device=device)
    show = progress and rank == 0
    interactive = show and sys.stderr.isatty()
    done = 0
    try:
        for images, labels in loader:
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            pred = predict_labels(forward, images, mode=mode, window=window, overlap=overlap, flip=flip,
                                  scales=scales, batch_size=batch_size)
            confusion.update(pred, labels)
            done += images.shape[0]
            if interactive:
                print(f"\reval: {done}/{len(sampler)} images", end="", file=sys.stderr, flush=True)
            elif show and (10 * done) // len(sampler) > (10 * (done - images.shape[0])) // len(sampler):
                print(f"eval: {done}/{len(sampler)} images", file=sys.stderr, flush=True)  # every 10% in logs
    finally:
        if interactive:
            print(file=sys.stderr)
        if was_training:
            module.train()

    count = torch.tensor([done], dtype=torch.int64, device=confusion.matrix.device)
    if distributed:
        confusion.all_reduce()
        dist.all_reduce(count)
    scores = confusion.compute()
    scores["confusion"] = confusion.matrix.cpu().tolist()
    scores["num_images"] = int(count.item())
    return scores


# --- reports --------------------------------------------------------------------------------------------

CELL_MAX, CELL_MIN, CELL_TEXT = 36, 6, 26  # cell size in pixels; values are written in cells >= CELL_TEXT
_INK, _GREY, _WHITE = (0, 0, 0), (150, 150, 150), (255, 255, 255)


def _text_size(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int]:
    box = draw.textbbox((0, 0), text, font=font)
    return box[2], box[3]


def confusion_figure(matrix: Sequence[Sequence[int]] | np.ndarray | torch.Tensor, class_names: Sequence[str],
                     path: str | os.PathLike) -> Path:
    """Draw the row-normalised confusion matrix (rows = ground truth) as a PNG; returns ``path``.

    Each cell is shaded from white (0) to dark blue (all of the class's pixels); rows of classes absent
    from the ground truth are grey. Percentages are written into the cells when they are large enough.
    """
    counts = np.asarray(torch.as_tensor(matrix).cpu(), dtype=np.float64)
    n = len(class_names)
    if counts.shape != (n, n):
        raise ValueError(f"confusion matrix has shape {counts.shape} but there are {n} class names")
    totals = counts.sum(axis=1, keepdims=True)
    fractions = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)

    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    cell = int(min(CELL_MAX, max(CELL_MIN, 1200 // max(n, 1))))
    name_w = max(_text_size(probe, name, font)[0] for name in class_names)
    text_h = max(_text_size(probe, name, font)[1] for name in class_names)
    pad = 6
    left = pad + text_h + pad + name_w + pad  # "ground truth" (rotated) | row names | grid
    top = pad + text_h + pad + name_w + pad  # "predicted" | column names (rotated) | grid
    width, height = left + n * cell + pad, top + n * cell + pad
    canvas = Image.new("RGB", (width, height), _WHITE)
    draw = ImageDraw.Draw(canvas)

    for i in range(n):
        for j in range(n):
            x0, y0 = left + j * cell, top + i * cell
            if totals[i, 0] == 0:
                fill = (220, 220, 220)
            else:
                v = fractions[i, j]  # white -> dark blue
                fill = (round(255 - 247 * v), round(255 - 207 * v), round(255 - 148 * v))
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=fill, outline=(235, 235, 235))
            if cell >= CELL_TEXT and totals[i, 0] > 0 and counts[i, j] > 0:
                label = f"{100 * fractions[i, j]:.0f}"
                tw, th = _text_size(draw, label, font)
                ink = _WHITE if fractions[i, j] > 0.5 else _INK
                draw.text((x0 + (cell - tw) // 2, y0 + (cell - th) // 2), label, fill=ink, font=font)
        # Row names right-aligned next to the grid.
        tw, th = _text_size(draw, class_names[i], font)
        draw.text((left - pad - tw, top + i * cell + (cell - th) // 2), class_names[i], fill=_INK, font=font)
    for j, name in enumerate(class_names):
        # Column names: drawn horizontally, then turned to read bottom-up.
        tw, th = _text_size(draw, name, font)
        label = Image.new("RGB", (tw, th), _WHITE)
        ImageDraw.Draw(label).text((0, 0), name, fill=_INK, font=font)
        label = label.rotate(90, expand=True)
        canvas.paste(label, (left + j * cell + (cell - th) // 2, top - pad - tw))
    draw.rectangle([left - 1, top - 1, left + n * cell, top + n * cell], outline=_GREY)
    draw.text((left, pad), "predicted", fill=_INK, font=font)
    axis = Image.new("RGB", _text_size(draw, "ground truth", font), _WHITE)
    ImageDraw.Draw(axis).text((0, 0), "ground truth", fill=_INK, font=font)
    canvas.paste(axis.rotate(90, expand=True), (pad, top))
    viz.save_png(path, np.asarray(canvas))
    return Path(path)


def _json_number(value: float) -> float | None:
    return None if math.isnan(value) else value  # JSON has no NaN: undefined scores become null


def _write_json(path: Path, data: dict) -> None:
    with atomic_open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, allow_nan=False)
        handle.write("\n")


def report_text(scores: dict, class_names: Sequence[str], title: str) -> str:
    """The paper's Table 2 line for ``title`` followed by the per-class IoU / accuracy table."""
    return format_table({title: scores}) + "\n\n" + format_per_class(scores, class_names)


def write_report(scores: dict, class_names: Sequence[str], out_dir: str | os.PathLike, title: str) -> str:
    """Write ``metrics.json`` and ``confusion.png`` to ``out_dir``; returns the text of :func:`report_text`.

    ``metrics.json`` holds the title, the four scores (fractions; null where undefined), per-class IoU and
    accuracy by class name, and the confusion matrix (rows = ground truth, columns = prediction).
    """
    if "confusion" not in scores:
        raise ValueError("scores lack 'confusion'; pass the dict returned by evaluate()")
    out_dir = Path(out_dir)
    text = report_text(scores, class_names, title)  # checks the class names before anything is written
    metrics = {"title": title, **{key: _json_number(scores[key]) for key in SCORE_KEYS}}
    if "num_images" in scores:
        metrics["num_images"] = scores["num_images"]
    metrics["per_class"] = {
        name: {"iou": _json_number(iou), "acc": _json_number(acc)}
        for name, iou, acc in zip(class_names, scores["per_class_iou"], scores["per_class_acc"], strict=True)
    }
    metrics["class_names"] = list(class_names)
    metrics["confusion"] = [[int(v) for v in row] for row in scores["confusion"]]
    _write_json(out_dir / "metrics.json", metrics)
    confusion_figure(scores["confusion"], class_names, out_dir / "confusion.png")
    return text


# --- command line ---------------------------------------------------------------------------------------


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``fcnseg eval`` to the top-level CLI."""
    parser = subparsers.add_parser(
        "eval", help="score a checkpoint on a labelled dataset (pixel acc., mean acc., mean IU, f.w. IU)",
        description="Score a checkpoint on a dataset split; prints the paper's Table 2 line and per-class "
                    "IoU. With --out also writes metrics.json and confusion.png.")
    parser.add_argument("checkpoint", type=Path, help="fcnseg checkpoint (.pt)")
    parser.add_argument("--dataset", required=True, help=f"one of {', '.join(sorted(DATASETS))}")
    parser.add_argument("--root", type=Path, help="dataset folder (not needed for synthetic)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--mode", choices=("whole", "slide"), default="whole",
                        help="whole image at once, or sliding windows (bounded memory for large images)")
    parser.add_argument("--window", type=int, nargs=2, default=(512, 512), metavar=("H", "W"))
    parser.add_argument("--overlap", type=float, default=1 / 3, help="sliding window overlap fraction")
    parser.add_argument("--flip", action="store_true", help="average with the horizontally flipped image")
    parser.add_argument("--scales", type=float, nargs="+", default=(1.0,), help="average over these scales")
    parser.add_argument("--batch-size", type=int, default=1,
                        help="images per batch, windows per forward pass with --mode slide "
                             "(1 scores every image unpadded, as in the paper)")
    parser.add_argument("--workers", type=int, default=2, help="data loading processes")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--out", type=Path, help="folder for metrics.json and confusion.png")
    parser.add_argument("--limit", type=int, help="score only the first N images")
    parser.set_defaults(func=run)
    return parser


def _build_eval_dataset(name: str, root: Path | None, split: str, normalization: str,
                        limit: int | None) -> Dataset:
    # Synthetic scenes are rendered from seeds: no --root, and only as many as will be scored.
    options = {"num_images": limit} if name == "synthetic" and limit else {}
    if root is None and name != "synthetic":
        raise ValueError(f"--root is required for dataset {name!r} (the folder holding its files)")
    return build_dataset(name, root, split, normalization=normalization, **options)


def run(args: argparse.Namespace) -> int:
    """``fcnseg eval``: load the checkpoint, score the split, print (and with --out write) the report."""
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be at least 1, got {args.limit}")
    if args.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers}")
    device = resolve_device(args.device)

    model, info = model_from_checkpoint(args.checkpoint)
    dataset = _build_eval_dataset(args.dataset, args.root, args.split, model.backbone.input_normalization,
                                  args.limit)
    data_info = getattr(dataset, "info", None)
    if data_info is not None and data_info.num_classes != info.num_classes:
        raise ValueError(f"{args.checkpoint} predicts {info.num_classes} classes ({info.name}) but dataset "
                         f"{args.dataset} has {data_info.num_classes}; evaluate on the dataset it was trained for")
    ignore_index = data_info.ignore_index if data_info is not None else info.ignore_index
    if args.limit is not None and args.limit < len(dataset):
        dataset = Subset(dataset, range(args.limit))

    # Under torchrun each process scores its own shard and the confusion matrices are summed.
    from fcnseg.train import setup_runtime

    runtime = setup_runtime(device.type)
    if runtime.distributed:
        device = runtime.device
    scores = evaluate(model, dataset, info.num_classes, ignore_index, mode=args.mode, window=args.window,
                      overlap=args.overlap, flip=args.flip, scales=args.scales, device=device,
                      batch_size=args.batch_size, num_workers=args.workers, distributed=runtime.distributed)
    if not runtime.is_main:
        return 0
    title = f"{model.config['name']} ({model.config['backbone']})"
    if args.out is not None:
        text = write_report(scores, info.class_names, args.out, title)
        text += f"\n\nwrote {args.out / 'metrics.json'} and {args.out / 'confusion.png'}"
    else:
        text = report_text(scores, info.class_names, title)
    print(f"{args.dataset} {args.split}: {scores['num_images']} images")
    print(text)
    return 0
