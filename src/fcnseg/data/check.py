"""Checking a dataset before training: every sample of a split read once, every problem reported at once.

Unreadable or truncated images, label values that are not classes, image/label size mismatches (with
their EXIF orientation) are found before iteration 1, in the loader's worker processes, and listed
together. A split without a labelled pixel is refused, and one whose labelled pixels are all class 0 while
others hold the ignore value as well: that is what masks saved as 0/255 look like (255 = ignore swallows
every foreground pixel), and training or scoring them gives meaningless numbers (mean IU 100).
"""

from __future__ import annotations

import logging

import numpy as np
from torch.utils.data import DataLoader, Dataset, Subset

from fcnseg.data.balance import ClassPixels, label_value_counts
from fcnseg.data.base import DatasetContract
from fcnseg.data.info import DatasetInfo, masks_saved_as_zero_ignore
from fcnseg.errors import DataError, user_message
from fcnseg.progress import bar as progress_bar
from fcnseg.runtime import worker_init
from fcnseg.signals import loader_batches

_SHOWN = 20
log = logging.getLogger(__name__)


def only_class_zero_message(info: DatasetInfo, what: str, ignored_pixels: int | None = None) -> str:
    """The explanation for a split whose labelled pixels are all class 0 and the rest ignored."""
    count = f" ({ignored_pixels:,} pixels)" if ignored_pixels is not None else ""
    return (f"every labelled pixel of {what} is class 0 ({info.class_names[0]}) and the others{count} hold the "
            f"ignore value {info.ignore_index}: {masks_saved_as_zero_ignore(info.ignore_index, info.num_classes)}")


class _Scan(Dataset):
    """Sample ``index`` of ``dataset`` read without transforms: (index, problem or None, label values present
    in any head, pixels of each value in the first head)."""

    def __init__(self, dataset: DatasetContract) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[int, str | None, np.ndarray | None, np.ndarray | None]:
        try:
            _, label = self.dataset.load(index)
        except DataError as error:
            return index, user_message(error), None, None
        first_head = label_value_counts(label)
        every_head = first_head if label.ndim == 2 else np.bincount(label.ravel(), minlength=256)
        return index, None, every_head > 0, first_head


def check_dataset(dataset: DatasetContract, what: str, workers: int = 0, limit: int | None = None,
                  accept_only_class_zero: bool = False) -> ClassPixels | None:
    """Read every sample of ``dataset`` (the first ``limit``) and raise one DataError listing every problem.

    Returns the pixels of each class counted on the way (for class balancing, so the split is read once),
    or None for datasets correct by construction (``dataset.generated``), which are not scanned. ``what``
    names the split in messages ("the training split"); ``accept_only_class_zero`` lets a split of only
    class 0 and ignored pixels through (for masks where 255 really means ignore).
    """
    if dataset.generated:
        return None
    info: DatasetInfo = dataset.info
    count = len(dataset) if limit is None else min(limit, len(dataset))
    scan = _Scan(dataset)
    loader = DataLoader(scan if count == len(dataset) else Subset(scan, range(count)), batch_size=None,
                        num_workers=workers, worker_init_fn=worker_init)
    problems, present, counted = [], np.zeros(256, dtype=bool), ClassPixels.zeros(info.num_classes)
    with progress_bar(total=count, desc=f"check {what}", unit="img") as bar:
        for _, problem, values, value_counts in loader_batches(loader):
            if problem is not None:
                problems.append(problem)
            else:
                present |= np.asarray(values, dtype=bool)
                counted.add(np.asarray(value_counts))
            bar.update(1)
    if problems:
        listed = "\n  ".join(problems[:_SHOWN]) + (f"\n  ... and {len(problems) - _SHOWN} more"
                                                   if len(problems) > _SHOWN else "")
        raise DataError(f"{len(problems)} of {count} samples of {what} cannot be used:\n  {listed}")
    classes = [v for v in np.flatnonzero(present) if v != info.ignore_index]
    if not classes:  # a loss or a score over no pixel is 0/0
        raise DataError(f"no pixel of {what} is labelled: every label pixel holds the ignore value "
                        f"{info.ignore_index}; check the masks (class-index PNGs: pixel value = class index)")
    if not accept_only_class_zero and classes == [0] and present[info.ignore_index]:
        raise DataError(only_class_zero_message(info, what) + "; if the ignore value really is meant, set "
                        "accept_only_class_zero: true")
    return counted


def warn_if_one_class(counted: ClassPixels | None, info: DatasetInfo, what: str) -> None:
    """A warning when every labelled pixel that ``counted`` holds is one class of several: a net trained on such
    a split learns to say that class everywhere, and mean IU over the classes present then reads 100."""
    present = np.flatnonzero(counted.pixels) if counted is not None else []
    if info.num_classes > 1 and len(present) == 1:
        only = int(present[0])
        log.warning(f"every labelled pixel of {what} is class {only} ({info.class_names[only]}) of "
                    f"{info.num_classes}: a net trained on it says {info.class_names[only]} everywhere (mean IU "
                    "100 on such labels); check the masks (class-index PNGs: pixel value = class index)")
