"""The dataset interface every reader implements, and the helpers the file-based readers share.

A dataset returns ``(image, label)`` pairs. ``load`` gives the raw pair (HxWx3 uint8 RGB array, HxW
uint8 label array holding class indices or the ignore index; HxWxK for a dataset labelled for K heads,
such as SIFT Flow's semantic and geometric classes); the dataset's joint transform runs on
those arrays; ``__getitem__`` finally converts to tensors with the normalisation the model expects.
Transform and normalisation are fixed when the dataset is built.

Random transforms draw from ``np.random.default_rng((seed, epoch, index))`` when the dataset has a
``seed``: the same sample in the same epoch is augmented the same way in any DataLoader worker, before
or after a resume (:meth:`SegmentationDataset.set_epoch` moves to the next epoch).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from fcnseg.data.info import IGNORE_INDEX, DatasetInfo
from fcnseg.data.io import check_pair, read_image, read_label
from fcnseg.errors import DataError
from fcnseg.normalization import normalize

JointTransform = Callable[..., tuple[np.ndarray, np.ndarray]]


def to_tensors(image: np.ndarray, label: np.ndarray, normalization: str) -> tuple[torch.Tensor, torch.Tensor]:
    """HxWx3 uint8 image and HxW label array -> normalised float 3xHxW tensor and int64 HxW tensor.

    A dataset labelled for several heads gives HxWxK labels (one map per head, channels last like the
    image); they become a K x H x W tensor.
    """
    labels = torch.from_numpy(np.ascontiguousarray(label)).long()
    return normalize(image, normalization), labels.permute(2, 0, 1).contiguous() if labels.dim() == 3 else labels


class SegmentationDataset(Dataset):
    """Base class: subclasses set ``info`` and implement ``__len__``, ``load`` and ``sample_name``.

    ``transform``: a joint transform ``(image, label) -> (image, label)``; with ``seed`` it is called
    with ``rng=`` a generator of ``(seed, epoch, index)`` (see the module docstring). ``normalization``:
    ``"imagenet"`` or ``"caffe"``, whichever the model's weights expect.
    """

    info: DatasetInfo
    generated = False  # True for datasets made by code, correct by construction (no files to check)
    inputs: tuple[str, ...] = ("rgb",)  # what a sample's image holds, 3 channels each (NYUDv2 adds "hha")

    def __init__(self, transform: JointTransform | None = None, normalization: str = "imagenet",
                 seed: int | None = None) -> None:
        self.transform = transform
        self.normalization = normalization
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose augmentations ``__getitem__`` draws (with a ``seed``)."""
        self.epoch = epoch

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
            if self.seed is None:
                image, label = self.transform(image, label)
            else:
                rng = np.random.default_rng((self.seed, self.epoch, index))
                image, label = self.transform(image, label, rng=rng)
        return to_tensors(image, label, self.normalization)




def split_ids(dataset: str, split: str) -> list[str]:
    """The image ids of one of the authors' split lists shipped with fcnseg (``dataset``: siftflow, nyud)."""
    text = resources.files("fcnseg.data").joinpath("splits", dataset, f"{split}.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def listed_ids(dataset: str, split: str, splits: dict[str, list[str]],
               split_file: str | Path | None) -> tuple[list[str], str]:
    """(image ids, what listed them) of ``split``: the ids of ``split_file`` if given, else those of the shipped
    lists ``splits[split]`` names (one split may join several lists); DataError for an unknown split."""
    if split_file is not None:
        return [line.split()[0] for line in read_list_file(Path(split_file))], str(split_file)
    if split not in splits:
        raise DataError(f"{dataset} has the splits {', '.join(splits)}, not {split!r}")
    return [i for part in splits[split] for i in split_ids(dataset, part)], f"the authors' {split} list"


def shift_labels(raw: np.ndarray, num_classes: int, path: Path, void: tuple[int, ...]) -> np.ndarray:
    """Labels numbered 1..num_classes (``void`` values: unlabelled) as 0..num_classes-1 and 255 for void."""
    values = np.unique(raw)
    bad = [int(v) for v in values if v not in void and not 1 <= v <= num_classes]
    if bad:
        raise DataError(f"{path} has label values {bad[:12]} that are neither classes 1..{num_classes} nor void "
                        f"({', '.join(map(str, void))})")
    shifted = np.full(raw.shape, IGNORE_INDEX, dtype=np.uint8)
    labelled = (raw >= 1) & (raw <= num_classes)
    shifted[labelled] = raw[labelled] - 1
    return shifted


def require_dir(path: Path, layout: str) -> Path:
    """Return ``path`` if it is a folder, else raise DataError naming it and the expected ``layout``."""
    if not path.is_dir():
        raise DataError(f"dataset folder not found: {path}. Expected layout: {layout}")
    return path


def read_list_file(path: Path) -> list[str]:
    """Non-empty, stripped lines of a list file (``#`` comments skipped)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read list file {path}: {exc}") from None
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def raise_if_missing(paths: Iterable[Path], what: str, source: str) -> None:
    """Raise DataError listing the files of ``paths`` that do not exist (``source`` says who listed them)."""
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        shown = "\n  ".join(missing[:10])
        more = f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise DataError(f"{len(missing)} {what} listed by {source} do not exist:\n  {shown}{more}")


def unmatched_error(where: Path, what: str, names: Sequence[str]) -> DataError:
    """A DataError listing the file names in ``where`` that have no partner."""
    shown = ", ".join(names[:20]) + (f", ... ({len(names)} in all)" if len(names) > 20 else "")
    return DataError(f"{len(names)} {what} in {where}: {shown}")


class FilePairDataset(SegmentationDataset):
    """A dataset given as a list of (image file, label file) pairs; subclasses set ``info``.

    ``load`` reads both files, converts the label with ``read_label_file`` (override it for datasets
    whose raw ids need remapping) and checks that the sizes match.
    """

    def __init__(self, pairs: Sequence[tuple[Path, Path]], transform: JointTransform | None = None,
                 normalization: str = "imagenet", seed: int | None = None) -> None:
        super().__init__(transform=transform, normalization=normalization, seed=seed)
        self.pairs = list(pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def read_label_file(self, path: Path) -> np.ndarray:
        return read_label(path, self.info)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image_path, label_path = self.pairs[index]
        image = read_image(image_path)
        label = self.read_label_file(label_path)
        check_pair(image, label, image_path, label_path)
        return image, label

    def sample_name(self, index: int) -> str:
        return self.pairs[index][0].stem
