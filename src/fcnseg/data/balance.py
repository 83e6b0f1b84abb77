"""Class weights for the loss, computed from a training split's labels.

``median_frequency`` (Eigen & Fergus 2015, as SegNet trains CamVid): the frequency of class c is its
pixels divided by the labelled pixels of the images in which c appears; its weight is the median of
those frequencies divided by its own, so a class of median frequency weighs 1 and rarer ones more.
``inverse_log`` (ENet): 1 / ln(c + p) with p the class's share of all labelled pixels and c ENet's 1.02
unless the config's ``inverse_log_c`` says otherwise: a gentler boost bounded by 1 / ln(c) (50.5 for
ENet's c); a larger c flattens the weights further (c = 1.2 puts the rarest CamVid class at 2.3 times the
commonest rather than 13). Void pixels count nowhere; classes absent from the split get 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fcnseg.data.base import DatasetContract
from fcnseg.errors import DataError
from fcnseg.progress import bar as progress_bar

BALANCING = ("median_frequency", "inverse_log")
ENET_C = 1.02


def label_value_counts(label: np.ndarray) -> np.ndarray:
    """Pixels of each label value 0..255 in one label map (the first head's, for a map of several heads)."""
    label = label[..., 0] if label.ndim == 3 else label
    return np.bincount(label.ravel(), minlength=256)


@dataclass
class ClassPixels:
    """Per class: its pixels, and the labelled pixels of the images that contain it (what both
    balancing methods need), summed one label map at a time with :meth:`add`."""

    pixels: np.ndarray
    image_pixels: np.ndarray

    @classmethod
    def zeros(cls, num_classes: int) -> ClassPixels:
        return cls(np.zeros(num_classes, dtype=np.int64), np.zeros(num_classes, dtype=np.int64))

    def add(self, value_counts: np.ndarray) -> None:
        """Count one label map, given as :func:`label_value_counts` (void and other values beyond the classes
        count nowhere)."""
        counts = np.asarray(value_counts)[: len(self.pixels)]
        self.pixels += counts
        self.image_pixels[counts > 0] += counts.sum()


def class_pixel_counts(dataset: DatasetContract) -> ClassPixels:
    """:class:`ClassPixels` of ``dataset``, its labels read without transforms (``load``).

    Training takes these from the dataset check's scan instead (:func:`fcnseg.data.check.check_dataset`);
    this reads the split for datasets that are not scanned (generated ones).
    """
    counted = ClassPixels.zeros(dataset.info.num_classes)
    with progress_bar(total=len(dataset), desc="count class pixels", unit="img") as bar:
        for index in range(len(dataset)):
            counted.add(label_value_counts(dataset.load(index)[1]))
            bar.update(1)
    return counted


def balancing_weights(method: str, counted: ClassPixels, inverse_log_c: float = ENET_C) -> np.ndarray:
    """Per-class loss weights by ``method`` (see the module docstring) from the training split's counts;
    ``inverse_log_c`` is the constant c of ``inverse_log``."""
    pixels, image_pixels = counted.pixels, counted.image_pixels
    present = pixels > 0
    if not present.any():
        raise DataError("the training split has no labelled pixels to compute class weights from")
    weights = np.zeros(len(pixels), dtype=np.float64)
    if method == "median_frequency":
        frequency = pixels[present] / image_pixels[present]
        weights[present] = np.median(frequency) / frequency
    elif method == "inverse_log":
        weights[present] = 1.0 / np.log(inverse_log_c + pixels[present] / pixels.sum())
    else:
        raise ValueError(f"unknown class balancing {method!r}; known: {', '.join(BALANCING)}")
    return weights
