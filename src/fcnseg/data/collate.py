"""Batching samples of different sizes by padding them on the bottom/right.

Images are padded with 0, which after normalisation is the dataset mean (true for both the
``"imagenet"`` and ``"caffe"`` conventions), and labels with the ignore index, so padded pixels never
count in the loss or the metrics.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fcnseg.data.info import IGNORE_INDEX


def pad_collate(
    batch: Sequence[tuple[torch.Tensor, torch.Tensor]], ignore_index: int = IGNORE_INDEX
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``(3xHxW float image, HxW label)`` pairs into ``(Bx3xHmaxxWmax, BxHmaxxWmax int64)``
    (labels of K heads, K x H x W each, into B x K x Hmax x Wmax).

    Smaller samples are padded on the bottom/right (images with 0, labels with ``ignore_index``).
    A batch of one is returned unpadded, as in the paper's whole-image training.
    """
    if len(batch) == 0:
        raise ValueError("cannot collate an empty batch")
    for image, label in batch:
        if image.dim() != 3 or label.dim() not in (2, 3) or image.shape[1:] != label.shape[-2:] \
                or label.shape[:-2] != batch[0][1].shape[:-2]:
            raise ValueError(f"expected 3xHxW image and HxW (or KxHxW) label, got {tuple(image.shape)}, "
                             f"{tuple(label.shape)}")
    if len(batch) == 1:
        image, label = batch[0]
        return image.unsqueeze(0), label.long().unsqueeze(0)
    height = max(image.shape[1] for image, _ in batch)
    width = max(image.shape[2] for image, _ in batch)
    first, heads = batch[0][0], batch[0][1].shape[:-2]
    images = first.new_zeros((len(batch), first.shape[0], height, width))
    labels = torch.full((len(batch), *heads, height, width), ignore_index, dtype=torch.int64)
    for i, (image, label) in enumerate(batch):
        h, w = label.shape[-2:]
        images[i, :, :h, :w] = image
        labels[i, ..., :h, :w] = label
    return images, labels


class PadCollate:
    """Picklable :func:`pad_collate` with a fixed ignore index (DataLoader workers pickle collate_fn)."""

    def __init__(self, ignore_index: int = IGNORE_INDEX) -> None:
        self.ignore_index = ignore_index

    def __call__(self, batch: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        return pad_collate(batch, self.ignore_index)

    def __repr__(self) -> str:
        return f"PadCollate(ignore_index={self.ignore_index})"


class SizeGroups:
    """Picklable collate that stacks the samples of a batch size by size, unpadded: a list of ``(images, labels)``
    batches, one per size, in the order the sizes first come. Scoring (``fcnseg eval``) uses it: a net sees the
    padding near an image's border, so padded batches scored otherwise than one image at a time (1140 pixels of
    8 images of mixed sizes at batch size 4)."""

    def __call__(self, batch: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        groups: dict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = {}
        for image, label in batch:
            groups.setdefault(tuple(label.shape[-2:]), []).append((image, label))
        return [pad_collate(group) for group in groups.values()]  # one size: stacked as they are

    def __repr__(self) -> str:
        return "SizeGroups()"
