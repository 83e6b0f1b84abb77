"""Segmentation scores from a confusion matrix accumulated over a whole dataset.

The four scores of the FCN paper (section 5), with rows = ground truth i, columns = prediction j,
``n_ij`` pixels of class i predicted as j and ``t_i = sum_j n_ij``:

* pixel accuracy: ``sum_i n_ii / sum_i t_i``
* mean accuracy: ``mean_i n_ii / t_i``
* mean IU: ``mean_i n_ii / (t_i + sum_j n_ji - n_ii)``
* frequency weighted IU: ``(sum_k t_k)^-1 sum_i t_i n_ii / (t_i + sum_j n_ji - n_ii)``

Counts are summed over every pixel of the dataset before dividing (not averaged per image), and
classes whose denominator is empty are left out of the means, as in the authors' reference scorer.
The matrix is a torch tensor so it can live on the GPU and be summed across processes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from fcnseg.data.info import IGNORE_INDEX, masks_saved_as_zero_ignore
from fcnseg.errors import DataError, printable
from fcnseg.inference import class_argmax
from fcnseg.runtime import all_reduce_sum

# The four scores' names, in the paper's order: keys of every scores dict, metrics.csv's and the tables' columns.
SCORE_KEYS = ("pixel_acc", "mean_acc", "mean_iu", "fw_iu")
TABLE_COLUMNS = ("pixel acc.", "mean acc.", "mean IU", "f.w. IU")

_MAX_LISTED_VALUES = 10


def _describe_values(values: Tensor) -> str:
    """``{3, 7}`` for a set of label values, cut short when there are many (e.g. an RGB mask)."""
    unique = torch.unique(values).tolist()
    shown = ", ".join(str(v) for v in unique[:_MAX_LISTED_VALUES])
    if len(unique) > _MAX_LISTED_VALUES:
        shown += f", ... ({len(unique)} distinct values)"
    return "{" + shown + "}"


def confusion_matrix(
    pred: Tensor, target: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> Tensor:
    """Count pixels per (ground truth, prediction) pair.

    Args:
        pred: integer label map of predicted classes, same shape as ``target`` (a tensor or a numpy array).
        target: integer label map of ground-truth classes; pixels equal to ``ignore_index`` are skipped.
        num_classes: number of classes C.
        ignore_index: the void label.

    Returns:
        An int64 ``[C, C]`` tensor on the inputs' device; entry ``[i, j]`` counts pixels of
        ground-truth class i predicted as class j.

    Raises:
        ValueError: if the shapes differ, if ``pred`` is not an integer tensor or holds values outside
            ``[0, C)``, or if ``target`` holds values that are neither a class nor ``ignore_index``.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    pred, target = torch.as_tensor(pred), torch.as_tensor(target)  # numpy label maps (what predict returns) too
    if pred.shape != target.shape:
        raise ValueError(
            f"pred has shape {tuple(pred.shape)} but target has shape {tuple(target.shape)}; "
            "they must match (pass class indices, or logits N x C x H x W to ConfusionMatrix.update)"
        )
    if pred.is_floating_point() or pred.is_complex():
        raise ValueError(
            f"pred must hold integer class indices, got dtype {pred.dtype}; take logits.argmax(dim=1) first"
        )
    if target.is_floating_point() or target.is_complex():  # a resized mask's 1.9 was counted as class 1
        raise ValueError(f"target must hold integer class indices, got dtype {target.dtype}; resize masks with "
                         "nearest-neighbour interpolation and keep them integers")
    pred = pred.long()
    target = target.long()  # uint8 masks would overflow in target * C

    bad_pred = (pred < 0) | (pred >= num_classes)
    if bad_pred.any():
        raise ValueError(
            f"predicted values {_describe_values(pred[bad_pred])} are not classes 0..{num_classes - 1}; "
            "pred must be class indices (the argmax of the logits over the class dimension)"
        )
    is_class = (target >= 0) & (target < num_classes)
    is_ignored = target == ignore_index
    bad_target = ~is_class & ~is_ignored
    if bad_target.any():
        raise DataError(
            f"label values {_describe_values(target[bad_target])} are not classes 0..{num_classes - 1} "
            f"nor the ignore index {ignore_index}; check num_classes, the ignore index and the label "
            "encoding (e.g. colour masks that were not converted to class indices)"
        )

    valid = is_class & ~is_ignored  # the ignore index may itself lie in [0, C)
    counts = torch.bincount(target[valid] * num_classes + pred[valid], minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def scores_from_confusion(matrix: Tensor, exclude_absent: bool = False) -> dict:
    """The paper's four scores and the per-class values from a confusion matrix (rows = ground truth).

    Returns a dict with ``pixel_acc``, ``mean_acc``, ``mean_iu`` and ``fw_iu`` (Python floats, fractions
    in [0, 1]) and ``per_class_iou`` and ``per_class_acc`` (lists of floats). A class absent from the
    ground truth has nan accuracy; a class absent from both ground truth and prediction has nan IU (with
    ``exclude_absent``, every class absent from the ground truth has nan IU, however often it was
    predicted: SIFT Flow's reference scoring); nan entries are left out of the means. A matrix with no
    pixels at all gives nan everywhere.
    """
    if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"confusion matrix must be square [C, C], got shape {tuple(matrix.shape)}")
    if (matrix < 0).any():  # counts: a negative one gave a pixel accuracy of 1.14
        raise ValueError("confusion matrix must hold pixel counts (none negative)")
    hist = matrix.double()  # float64: exact for counts up to 2**53 pixels
    correct = hist.diagonal()
    gt_total = hist.sum(dim=1)
    pred_total = hist.sum(dim=0)
    total = gt_total.sum()

    # 0/0 gives nan, which is how an empty denominator is marked.
    per_class_acc = correct / gt_total
    per_class_iou = correct / (gt_total + pred_total - correct)
    if exclude_absent:
        per_class_iou[gt_total == 0] = math.nan
    # Classes absent from the ground truth weigh 0; masking them avoids 0 * nan.
    present = gt_total > 0
    fw_iu = (gt_total[present] * per_class_iou[present]).sum() / total

    return {
        "pixel_acc": (correct.sum() / total).item(),
        "mean_acc": torch.nanmean(per_class_acc).item(),
        "mean_iu": torch.nanmean(per_class_iou).item(),
        "fw_iu": fw_iu.item(),
        "per_class_iou": per_class_iou.tolist(),
        "per_class_acc": per_class_acc.tolist(),
    }


class ConfusionMatrix:
    """A confusion matrix accumulated over many batches, scored once at the end.

    With ``device=None`` the counts follow the inputs: they move to the device of the first batch
    after construction or ``reset()``, so GPU evaluation never copies each batch back to the CPU.
    """

    def __init__(
        self, num_classes: int, ignore_index: int = IGNORE_INDEX, device: torch.device | str | None = None
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self._device = None if device is None else torch.device(device)
        self.reset()

    def reset(self) -> None:
        """Forget every count."""
        device = self._device or torch.device("cpu")
        self.matrix = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64, device=device)
        # Pixels equal to the ignore index; kept to detect binary masks saved as 0/255.
        self.ignored = torch.zeros((), dtype=torch.int64, device=device)
        self._seen_batch = False

    def update(self, pred_or_logits: Tensor, target: Tensor) -> None:
        """Add one batch: class indices shaped like ``target``, or logits with a class dimension at dim 1 (tensors,
        or numpy arrays such as :meth:`fcnseg.api.Segmenter.predict` returns)."""
        pred_or_logits, target = torch.as_tensor(pred_or_logits), torch.as_tensor(target)
        if pred_or_logits.dim() == target.dim() + 1:
            if pred_or_logits.shape[1] != self.num_classes:
                raise ValueError(
                    f"logits have {pred_or_logits.shape[1]} channels at dim 1 but num_classes is "
                    f"{self.num_classes}"
                )
            pred = class_argmax(pred_or_logits)
        else:
            pred = pred_or_logits
        counts = confusion_matrix(pred, target, self.num_classes, self.ignore_index)
        ignored = (target == self.ignore_index).sum()
        if self._device is None and not self._seen_batch:
            self.matrix = self.matrix.to(counts.device)
            self.ignored = self.ignored.to(counts.device)
        self._seen_batch = True
        self.matrix += counts.to(self.matrix.device)
        self.ignored += ignored.to(self.ignored.device)

    def all_reduce(self) -> None:
        """Sum the counts over all processes when torch.distributed is initialised; no-op otherwise."""
        # One collective for matrix and counter together.
        flat = all_reduce_sum(torch.cat([self.matrix.flatten(), self.ignored.reshape(1)]))
        self.matrix = flat[:-1].reshape(self.num_classes, self.num_classes)
        self.ignored = flat[-1].clone()

    def compute(self, strict: bool = True, exclude_absent: bool = False) -> dict:
        """Scores of everything accumulated so far (see ``scores_from_confusion``).

        Raises (with ``strict``):
            DataError: when no ground-truth pixel of any class but 0 was seen while ignored pixels were:
                the signature of masks saved as 0/255 (every foreground pixel equal to the ignore value),
                whose scores would be meaningless (mean IU 100).
        """
        if strict and self.num_classes >= 2 and int(self.matrix[1:].sum()) == 0 and int(self.ignored) > 0:
            raise DataError(
                f"no ground-truth pixel of a class other than 0 was seen, but {int(self.ignored):,} pixels equal "
                f"to the ignore index {self.ignore_index} were: "
                f"{masks_saved_as_zero_ignore(self.ignore_index, self.num_classes)}; if the ignore value really "
                "is meant, score with fcnseg eval --accept-only-class-zero (strict_labels=False in Python)")
        return scores_from_confusion(self.matrix, exclude_absent)


def _percent(value: float) -> str:
    return "-" if math.isnan(value) else f"{100 * value:.1f}"


def format_table(results: dict[str, dict]) -> str:
    """A Markdown table in the layout of the paper's Table 2: one row per net, scores in percent (names made
    safe for a terminal: :func:`~fcnseg.errors.printable`).

    ``results`` maps a net's name to a scores dict as returned by ``scores_from_confusion``.
    """
    lines = [
        "| net | " + " | ".join(TABLE_COLUMNS) + " |",
        "|---|" + "---:|" * len(TABLE_COLUMNS),
    ]
    for name, scores in results.items():
        missing = [key for key in SCORE_KEYS if key not in scores]
        if missing:
            raise ValueError(
                f"results for {name!r} lack {missing}; pass the dict returned by scores_from_confusion"
            )
        lines.append(f"| {printable(name)} | " + " | ".join(_percent(scores[key]) for key in SCORE_KEYS) + " |")
    return "\n".join(lines)


def format_per_class(scores: dict, class_names: Sequence[str]) -> str:
    """A Markdown table of per-class IoU and accuracy in percent, ``-`` where undefined (names made safe for a
    terminal: :func:`~fcnseg.errors.printable`; metrics.json keeps them as they are)."""
    iou, acc = scores["per_class_iou"], scores["per_class_acc"]
    if not len(class_names) == len(iou) == len(acc):
        raise ValueError(
            f"{len(class_names)} class names for {len(iou)} classes in the scores; "
            "pass the class names of the dataset that was scored"
        )
    lines = ["| class | IoU | acc. |", "|---|---:|---:|"]
    for name, class_iou, class_acc in zip(class_names, iou, acc, strict=True):
        lines.append(f"| {printable(name)} | {_percent(class_iou)} | {_percent(class_acc)} |")
    return "\n".join(lines)


class BinaryCurve:
    """Precision and recall of one class at every threshold of its probability: the KITTI road benchmark's
    maximum F-measure (MaxF), for two-class tasks such as road / not road.

    Probabilities are counted in ``bins`` equal bins, separately for pixels whose truth is the class and
    for the others (ignored pixels are not counted); a threshold t takes the pixels of the bins >= t.
    """

    def __init__(self, positive: int, ignore_index: int, bins: int = 1000,
                 device: str | torch.device = "cpu") -> None:
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
            raise ValueError(f"bins must be a whole number of at least 1, got {bins!r}")
        self.positive, self.ignore_index, self.bins = positive, ignore_index, bins
        self.counts = torch.zeros(2, bins, dtype=torch.int64, device=device)  # row 0: truth other, 1: truth class

    def update(self, probability: Tensor, target: Tensor) -> None:
        """``probability``: N x H x W of the class; ``target``: N x H x W labels."""
        keep = target != self.ignore_index
        values = probability[keep].float()
        if values.numel() and not ((values >= 0) & (values <= 1)).all():  # logits were clamped, NaN filed under 0
            raise ValueError("probability must hold probabilities in [0, 1] (a softmax), not logits or NaN")
        index = (values * self.bins).long().clamp_(0, self.bins - 1)
        truth = (target[keep] == self.positive).long()
        self.counts += torch.bincount(truth * self.bins + index, minlength=2 * self.bins).reshape(2, self.bins)

    def all_reduce(self) -> None:
        """Sum the counts over all processes when torch.distributed is initialised; no-op otherwise."""
        self.counts = all_reduce_sum(self.counts.flatten()).reshape(2, self.bins)

    def compute(self) -> dict:
        """``max_f`` with its ``precision``, ``recall`` and ``threshold`` (the highest bin edge that reaches
        it); NaN without pixels of the class."""
        above = self.counts.flip(1).cumsum(1).flip(1).double()  # pixels with probability >= each bin's edge
        true_positive, false_positive = above[1], above[0]
        positives = true_positive[0]
        if positives == 0:
            return {"max_f": math.nan, "precision": math.nan, "recall": math.nan, "threshold": math.nan}
        precision = true_positive / (true_positive + false_positive).clamp(min=1)
        recall = true_positive / positives
        f = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
        best = self.bins - 1 - int(f.flip(0).argmax())  # the highest threshold of the maximum
        return {"max_f": float(f[best]), "precision": float(precision[best]), "recall": float(recall[best]),
                "threshold": best / self.bins}
