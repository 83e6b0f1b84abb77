"""Score a model on a labelled dataset: the paper's four metrics from one dataset-wide confusion matrix.

    scores = evaluate(model, dataset, num_classes=21, ignore_index=255)
    print(write_report(scores, VOC.class_names, "eval_out", "FCN-8s"))

Counts are summed over every pixel of the dataset before any division (never averaged per image), and
with ``distributed=True`` every rank scores a disjoint shard of the images and the counts are summed
across ranks, so each image counts exactly once. ``fcnseg eval`` is the command-line front end.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from fcnseg.atomic import atomic_open
from fcnseg.checkpoint import unwrap
from fcnseg.data.collate import SizeGroups
from fcnseg.data.info import DatasetInfo
from fcnseg.errors import ConfigError, DataError, printable
from fcnseg.inference import Forward, InferenceOptions, class_argmax, predict_labels, predict_probs
from fcnseg.metrics import SCORE_KEYS, BinaryCurve, ConfusionMatrix, format_per_class, format_table
from fcnseg.normalization import same_normalization
from fcnseg.outputs import Outputs
from fcnseg.progress import bar as progress_bar
from fcnseg.runtime import all_reduce_sum, in_eval_mode, resolve_device, worker_init
from fcnseg.signals import loader_batches
from fcnseg.viz import confusion_picture

REPORT_FILES = ("metrics.json", "confusion.png")  # what write_report writes


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


def _refuse_other_normalization(forward: Forward, module: nn.Module | None, dataset: Dataset) -> None:
    """A ConfigError where ``dataset`` normalises its images otherwise than the net expects (the spec of
    ``module``, or of the Segmenter whose method ``forward`` is: ``seg.scores``, an export's too): the net then
    scores other inputs than it learnt (36.8 mean IU fell to 9.4 without a word)."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    owner = module if module is not None else getattr(forward, "__self__", None)
    spec, used = getattr(owner, "spec", None), getattr(dataset, "normalization", None)
    if spec is None or used is None or same_normalization(used, spec.normalization_text, len(spec.inputs)):
        return
    expected = spec.normalization_text
    raise ConfigError(f"the dataset normalises its images as {used!r}, but the net expects {expected!r}: build the "
                      f"dataset with normalization={expected!r}")


def evaluate(forward: Forward, dataset: Dataset, num_classes: int, ignore_index: int,
             options: InferenceOptions | None = None, device: str | torch.device = "auto", num_workers: int = 0,
             progress: bool = True, distributed: bool = False, strict_labels: bool = True,
             planner: Callable[[int, int, int, InferenceOptions], InferenceOptions] | None = None,
             exclude_absent: bool = False, extra_heads: Sequence[DatasetInfo] = (),
             positive_class: int | None = None) -> dict:
    """Predict every image of ``dataset`` and score the predictions against its labels.

    Args:
        forward: a model (put in eval mode and moved to ``device`` for the run; DDP/compile wrappers are
            unwrapped) or any callable mapping normalised input to logits.
        dataset: yields ``(3 x H x W normalised image, H x W label)``; sizes may differ between images.
        num_classes, ignore_index: the label space; pixels equal to ``ignore_index`` are not scored.
        options: how to run the net (:class:`fcnseg.inference.InferenceOptions`). ``batch_size`` images are
            read per batch and run together where they have one size (and windows per forward call in slide
            mode); images of other sizes run apart, never padded, so every batch size gives batch size 1's
            scores.
        distributed: torch.distributed is initialised; each rank scores its shard and the counts are summed.
        strict_labels: refuse labels whose only class is 0 besides ignored pixels (0/255 masks, see
            :meth:`fcnseg.metrics.ConfusionMatrix.compute`).
        planner: ``(batch, height, width, options) -> options`` fitting each batch to a memory budget
            (:meth:`fcnseg.api.Segmenter.plan`).
        exclude_absent: leave classes without ground-truth pixels out of the means (SIFT Flow's scoring).
        extra_heads: the further label sets of a net with several heads (``DatasetInfo.extra_heads``); the
            dataset's labels are then K x H x W, one map per head, and each head is scored on its own.
        positive_class: for a two-class net, the class (road) whose probability is also scored at every
            threshold, as KITTI's road benchmark does (:class:`fcnseg.metrics.BinaryCurve`).

    Returns:
        The scores of :func:`fcnseg.metrics.scores_from_confusion` plus ``confusion`` (the C x C count
        matrix as nested lists, rows = ground truth) and ``num_images`` (images scored over all ranks);
        with ``extra_heads``, ``extra_heads`` maps each one's task to its own scores and confusion; with
        ``positive_class``, ``binary`` holds that class, its maximum F-measure, precision, recall, threshold.
    """
    options = options or InferenceOptions()
    rank, world_size = _shard(distributed)
    device = resolve_device(device)
    module = unwrap(forward) if isinstance(forward, nn.Module) else None
    _refuse_other_normalization(forward, module, dataset)
    if module is not None:
        # DDP's own forward may synchronise buffers; ranks run different numbers of images here.
        forward = module.to(device)
    sampler = ShardSampler(len(dataset), rank, world_size)
    loader = DataLoader(dataset, batch_size=options.batch_size, sampler=sampler, num_workers=num_workers,
                        collate_fn=SizeGroups(), pin_memory=device.type == "cuda", worker_init_fn=worker_init)
    heads = (num_classes, *(head.num_classes for head in extra_heads))
    forward = _with_classes(forward, sum(heads))
    confusions = [ConfusionMatrix(classes, ignore_index, device=device) for classes in heads]
    curve = None if positive_class is None else BinaryCurve(positive_class, ignore_index, device=device)
    done = 0
    bar = progress_bar(total=len(sampler), desc="eval", unit="img", enabled=progress and rank == 0)
    with in_eval_mode(module), bar:
        for images, labels in (group for groups in loader_batches(loader) for group in groups):
            images = images.to(device, non_blocking=True)
            planned = planner(images.shape[0], *images.shape[2:], options) if planner else options
            _predict_and_count(forward, images, labels.to(device, non_blocking=True), planned, heads,
                               confusions, curve)
            done += images.shape[0]
            bar.update(images.shape[0])
    count = torch.tensor([done], dtype=torch.int64, device=device)
    if distributed:
        all_reduce_sum(count)
    scores, *extra = [_scores(confusion, distributed, strict_labels, exclude)
                      for confusion, exclude in zip(confusions, (exclude_absent, *(h.exclude_absent for h in
                                                                                   extra_heads)), strict=True)]
    if extra_heads:
        scores["extra_heads"] = {head.task: head_scores for head, head_scores in zip(extra_heads, extra, strict=True)}
    if curve is not None:
        if distributed:
            curve.all_reduce()
        scores["binary"] = {"class": positive_class, **curve.compute()}
    scores["num_images"] = int(count.item())
    return scores


def _with_classes(forward: Forward, classes: int) -> Forward:
    """``forward``, refusing scores of another number of channels than ``classes``: 4 for a ``num_classes`` of 3
    was blamed on the predictions ("predicted values {3} are not classes 0..2"), and 4 for 5 scored without a
    word (class 4 never predicted)."""
    def checked(x: torch.Tensor) -> torch.Tensor:
        logits = forward(x)
        if logits.dim() != 4 or logits.shape[1] != classes:
            raise ConfigError(f"the net gives scores of shape {tuple(logits.shape)} for input {tuple(x.shape)}, "
                              f"but {classes} classes (num_classes, with extra_heads' classes) are to be scored: "
                              "give evaluate the classes of the net's dataset")
        return logits

    return checked


def _predict_and_count(forward: Forward, images: torch.Tensor, labels: torch.Tensor, options: InferenceOptions,
                       heads: tuple[int, ...], confusions: list[ConfusionMatrix], curve: BinaryCurve | None) -> None:
    """Predict a batch and add it to the confusion matrices (and to ``curve``: its class's probabilities)."""
    if curve is None:
        predicted = predict_labels(forward, images, options, heads=heads)
    else:
        probs = predict_probs(forward, images, options)
        predicted = class_argmax(probs)
        curve.update(probs[:, curve.positive], labels)
    _count(confusions, predicted, labels)


def _count(confusions: list[ConfusionMatrix], predicted: torch.Tensor, labels: torch.Tensor) -> None:
    """Add a batch to each head's confusion matrix (labels N x H x W for one head, N x K x H x W for K)."""
    if len(confusions) == 1:
        confusions[0].update(predicted, labels)
        return
    if labels.dim() != 4 or labels.shape[1] != len(confusions):
        raise DataError(f"the net has {len(confusions)} heads but the dataset gives labels of shape "
                        f"{tuple(labels.shape)}, not one map per head: is it the dataset the net was made for?")
    for head, confusion in enumerate(confusions):
        confusion.update(predicted[:, head], labels[:, head])


def _scores(confusion: ConfusionMatrix, distributed: bool, strict: bool, exclude_absent: bool) -> dict:
    if distributed:
        confusion.all_reduce()
    scores = confusion.compute(strict, exclude_absent)
    scores["confusion"] = confusion.matrix.cpu().tolist()
    return scores


def _shard(distributed: bool) -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) unless ``distributed``."""
    if not distributed:
        return 0, 1
    if not (dist.is_available() and dist.is_initialized()):
        raise ConfigError("distributed=True needs torch.distributed to be initialised first (e.g. under torchrun)")
    return dist.get_rank(), dist.get_world_size()


# --- reports --------------------------------------------------------------------------------------------

def _json_number(value: float) -> float | None:
    return None if math.isnan(value) else value  # JSON has no NaN: undefined scores become null


def report_text(scores: dict, class_names: Sequence[str], title: str,
                extra_heads: Sequence[DatasetInfo] = ()) -> str:
    """The paper's Table 2 line for ``title`` followed by the per-class IoU / accuracy table (and the same
    for each of ``extra_heads``, scored by :func:`evaluate` under ``scores["extra_heads"]``)."""
    text = format_table({title: scores}) + "\n\n" + format_per_class(scores, class_names)
    if "binary" in scores:
        curve, positive = scores["binary"], scores["binary"]["class"]
        text += (f"\n\n{printable(class_names[positive])}: max F {100 * curve['max_f']:.1f} (precision "
                 f"{100 * curve['precision']:.1f}, recall {100 * curve['recall']:.1f}, at probability "
                 f"{curve['threshold']:.3f}); IoU {100 * scores['per_class_iou'][positive]:.1f}")
    for head in extra_heads:
        head_scores = scores["extra_heads"][head.task]
        text += (f"\n\n{head.task} head:\n\n" + format_table({title: head_scores}) + "\n\n"
                 + format_per_class(head_scores, head.class_names))
    return text


def _metrics(scores: dict, class_names: Sequence[str]) -> dict:
    """The JSON form of one head's scores."""
    metrics = {key: _json_number(scores[key]) for key in SCORE_KEYS}
    metrics["per_class"] = {
        name: {"iou": _json_number(iou), "acc": _json_number(acc)}
        for name, iou, acc in zip(class_names, scores["per_class_iou"], scores["per_class_acc"], strict=True)
    }
    metrics["class_names"] = list(class_names)
    metrics["confusion"] = [[int(v) for v in row] for row in scores["confusion"]]
    return metrics


def write_report(scores: dict, class_names: Sequence[str], out_dir: str | os.PathLike, title: str,
                 extra_heads: Sequence[DatasetInfo] = (), outputs: Outputs | None = None,
                 evaluated: dict[str, Any] | None = None) -> str:
    """Write ``metrics.json`` and ``confusion.png`` to ``out_dir``; returns the text of :func:`report_text`.

    ``metrics.json`` holds the title, ``evaluated`` when given (what was scored and how: ``fcnseg eval`` writes
    the checkpoint, dataset, split, limit, inference options and the time, so a report is never taken for
    another run's), the four scores (fractions; null where undefined), per-class IoU and
    accuracy by class name, and the confusion matrix (rows = ground truth, columns = prediction); the
    scores of ``extra_heads`` in the same form under ``extra_heads``, by task. ``confusion.png`` shows
    the first head's matrix. With ``outputs`` (the :class:`fcnseg.outputs.Outputs` of ``out_dir``) each file
    is claimed in the folder's journal before it lands, so a run killed just after is not refused its own
    files by the next one.
    """
    if "confusion" not in scores:
        raise ConfigError("scores lack 'confusion'; pass the dict returned by evaluate()")
    out_dir = Path(out_dir)
    text = report_text(scores, class_names, title, extra_heads)  # checks the class names before any write
    metrics = {"title": title, **({"evaluated": evaluated} if evaluated else {}), **_metrics(scores, class_names)}
    if "num_images" in scores:
        metrics["num_images"] = scores["num_images"]
    if "binary" in scores:
        metrics["binary"] = {"class_name": class_names[scores["binary"]["class"]],
                             **{key: _json_number(value) for key, value in scores["binary"].items()}}
    if extra_heads:
        metrics["extra_heads"] = {head.task: _metrics(scores["extra_heads"][head.task], head.class_names)
                                  for head in extra_heads}
    files = {REPORT_FILES[0]: (json.dumps(metrics, indent=2, allow_nan=False) + "\n").encode(),
             REPORT_FILES[1]: _png(confusion_picture(scores["confusion"], class_names))}
    for name, data in files.items():
        if outputs is None:
            with atomic_open(out_dir / name) as handle:
                handle.write(data)
        else:
            outputs.write(out_dir / name, data)
    return text


def read_report(folder: str | os.PathLike) -> dict:
    """The ``metrics.json`` that :func:`write_report` wrote to ``folder``, with its undefined scores (null: a class
    absent from the frames scored) as nan: the four scores, and each class's ``iou`` and ``acc`` under
    ``per_class``. Anything else is refused in one line naming the file."""
    path = Path(folder) / REPORT_FILES[0]
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
        for key in SCORE_KEYS:
            metrics[key] = _number_or_nan(metrics[key])
        for entry in metrics["per_class"].values():
            entry["iou"], entry["acc"] = _number_or_nan(entry["iou"]), _number_or_nan(entry["acc"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else f"{type(error).__name__}: {error}"
        raise ConfigError(f"{printable(path)} is not a report of fcnseg eval ({reason}): give a folder that "
                          "`fcnseg eval --out` wrote") from None
    return metrics


def _number_or_nan(value: object) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{value!r} is not a number")
    return float(value)


def _png(picture: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    return buffer.getvalue()
