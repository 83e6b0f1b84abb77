"""CutMix for segmentation: a box of another image of the batch pasted in, with its labels.

CutMix (Yun et al., 2019) pastes a box of one training image into another and mixes the two labels by the
box's area. A segmentation label is per pixel, so the box's labels come along exactly and no label is blended
(as in French et al., 2020). The net then sees objects away from the streets they were photographed in,
which is what a drive it never saw asks of it (docs/camvid.md, the drive-held-out protocol).

It runs in the training process on collated batches (after the loader and :mod:`fcnseg.data.collate`), so
a sample's own augmentation stays a function of its seed, epoch and index, and the boxes a function of the
batch's position in the run (see :func:`fcnseg.train.data.micro_batches`). Cost: 5 ms per batch of eight
240x320 crops on one CPU thread. On a GPU the mixed batch is a new, unpinned tensor, so its copy to the
device is not asynchronous (untested on a GPU).
"""

from __future__ import annotations

import numpy as np
import torch


def cut_mix(images: torch.Tensor, labels: torch.Tensor, probability: float,
            rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``images`` (N x C x H x W) and ``labels`` (N x H x W, or N x K x H x W for K heads) with, in each sample
    drawn with ``probability``, a box of the next sample of the batch (the last sample takes the first's)
    pasted at the same place: its pixels and their labels. Boxes are drawn as CutMix draws them: a share of
    the image uniform in [0, 1], the image's aspect, a centre uniform over the image, clipped at its borders.

    Returns new tensors (the inputs are left as they were); a batch of one, or ``probability`` 0, unchanged.
    ``rng`` is drawn from the same number of times whatever is chosen (4 values per sample)."""
    count = images.shape[0]
    if probability <= 0 or count < 2:
        return images, labels
    draws = rng.random((count, 4))  # chosen, share, centre row, centre column
    mixed_images, mixed_labels = images.clone(), labels.clone()
    for index, (chosen, share, row, column) in enumerate(draws):
        if chosen >= probability:
            continue
        rows, columns = _span(row, share, images.shape[-2]), _span(column, share, images.shape[-1])
        source = (index + 1) % count
        mixed_images[index, :, rows, columns] = images[source, :, rows, columns]
        mixed_labels[index, ..., rows, columns] = labels[source, ..., rows, columns]
    return mixed_images, mixed_labels


def _span(centre: float, share: float, length: int) -> slice:
    """The box's extent along a side of ``length`` pixels: sqrt(share) of it around ``centre`` (0-1), clipped."""
    half = length * np.sqrt(share) / 2
    middle = centre * length
    return slice(int(np.clip(round(middle - half), 0, length)), int(np.clip(round(middle + half), 0, length)))
