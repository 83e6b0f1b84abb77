"""Class weights for the loss, computed from a training split's labels.

``median_frequency`` (Eigen & Fergus 2015, as SegNet trains CamVid): the frequency of class c is its
pixels divided by the labelled pixels of the images in which c appears; its weight is the median of
those frequencies divided by its own, so a class of median frequency weighs 1 and rarer ones more.
``inverse_log`` (ENet): 1 / ln(1.02 + p) with p the class's share of all labelled pixels, a gentler
boost bounded by 1 / ln(1.02) = 50.5. Void pixels count nowhere; classes absent from the split get 0.
"""

from __future__ import annotations

import numpy as np

from fcnseg.data.base import SegmentationDataset
from fcnseg.errors import DataError
from fcnseg.progress import bar as progress_bar

BALANCING = ("median_frequency", "inverse_log")
ENET_C = 1.02


def class_pixel_counts(dataset: SegmentationDataset) -> tuple[np.ndarray, np.ndarray]:
    """(pixels of each class, labelled pixels of the images that contain each class) over ``dataset``.

    Labels are read without transforms (``load``); for a dataset labelled for several
    heads, the first head's map.
    """
    info = dataset.info
    pixels = np.zeros(info.num_classes, dtype=np.int64)
    image_pixels = np.zeros(info.num_classes, dtype=np.int64)
    with progress_bar(total=len(dataset), desc="count class pixels", unit="img") as bar:
        for index in range(len(dataset)):
            label = dataset.load(index)[1]
            label = label[..., 0] if label.ndim == 3 else label
            counts = np.bincount(label.ravel(), minlength=256)[: info.num_classes]
            pixels += counts
            image_pixels[counts > 0] += counts.sum()
            bar.update(1)
    return pixels, image_pixels


def balancing_weights(method: str, pixels: np.ndarray, image_pixels: np.ndarray) -> np.ndarray:
    """Per-class loss weights by ``method`` (see the module docstring) from :func:`class_pixel_counts`."""
    present = pixels > 0
    if not present.any():
        raise DataError("the training split has no labelled pixels to compute class weights from")
    weights = np.zeros(len(pixels), dtype=np.float64)
    if method == "median_frequency":
        frequency = pixels[present] / image_pixels[present]
        weights[present] = np.median(frequency) / frequency
    elif method == "inverse_log":
        weights[present] = 1.0 / np.log(ENET_C + pixels[present] / pixels.sum())
    else:
        raise ValueError(f"unknown class balancing {method!r}; known: {', '.join(BALANCING)}")
    return weights
