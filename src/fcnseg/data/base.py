"""The dataset interface every reader implements.

A dataset returns ``(image, label)`` pairs. ``load`` gives the raw pair (HxWx3 uint8 RGB array, HxW
uint8 label array holding class indices or the ignore index); optional joint transforms run on those
arrays; ``__getitem__`` finally converts to tensors with the normalisation the model expects.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from fcnseg.data.info import DatasetInfo
from fcnseg.normalization import normalize

JointTransform = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def to_tensors(image: np.ndarray, label: np.ndarray, normalization: str) -> tuple[torch.Tensor, torch.Tensor]:
    """HxWx3 uint8 image and HxW label array -> normalised float 3xHxW tensor and int64 HxW tensor."""
    return normalize(image, normalization), torch.from_numpy(np.ascontiguousarray(label)).long()


class SegmentationDataset(Dataset):
    """Base class: subclasses set ``info`` and implement ``__len__``, ``load`` and ``sample_name``."""

    info: DatasetInfo

    def __init__(self, transform: JointTransform | None = None, normalization: str = "imagenet") -> None:
        self.transform = transform
        self.normalization = normalization

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The raw (image, label) pair: HxWx3 uint8 RGB and HxW uint8 labels."""
        raise NotImplementedError

    def sample_name(self, index: int) -> str:
        """A short name for sample ``index`` (file stem), used for output files."""
        return f"{index:06d}"

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self.load(index)
        if self.transform is not None:
            image, label = self.transform(image, label)
        return to_tensors(image, label, self.normalization)
