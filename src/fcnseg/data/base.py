"""The dataset contract every reader states, the one pipeline every sample goes through, and the helpers the
file-based readers share.

The contract (:class:`DatasetContract`) is all that training, evaluation and the dataset check rely on:
``info`` (the label set of the labels ``load`` gives), ``inputs`` (what the image channels hold, 3 each),
``generated`` (made by code, correct by construction: nothing to check), ``len`` and ``load(index)``, the raw
pair: HxWx3 uint8 image (HxWx6 for ``rgb+hha``), HxW uint8 labels holding class indices or the ignore index
(HxWxK for a dataset labelled for K heads, such as SIFT Flow's semantic and geometric classes).

:class:`SegmentationDataset` is the one pipeline: a reader subclasses it, states its ``info``, ``inputs`` and
``generated`` in its constructor and implements ``read`` (the pair as its files hold it). The pipeline applies
the class map (a lookup table on the label values, :mod:`fcnseg.data.class_map`) in ``load``, then in
``__getitem__`` the joint transform and the normalisation, all fixed when the dataset is built.

Random transforms draw from ``np.random.default_rng((seed, epoch, index))`` when the dataset has a
``seed``: the same sample in the same epoch is augmented the same way in any DataLoader worker, before
or after a resume (:meth:`SegmentationDataset.set_epoch` moves to the next epoch).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Protocol, TypedDict, Unpack, runtime_checkable

import numpy as np
import torch
from torch.utils.data import Dataset

from fcnseg.data.class_map import mapped_info
from fcnseg.data.info import IGNORE_INDEX, DatasetInfo
from fcnseg.data.io import check_pair, read_image, read_label
from fcnseg.errors import DataError, listing
from fcnseg.normalization import normalize

JointTransform = Callable[..., tuple[np.ndarray, np.ndarray]]
# A label file -> HxW (or HxWxK) uint8 class indices of ``info`` (or its ignore index); DataError naming the file.
LabelDecoder = Callable[[Path, DatasetInfo], np.ndarray]
RGB: tuple[str, ...] = ("rgb",)


def to_tensors(image: np.ndarray, label: np.ndarray, normalization: str) -> tuple[torch.Tensor, torch.Tensor]:
    """HxWx3 uint8 image and HxW label array -> normalised float 3xHxW tensor and int64 HxW tensor.

    A dataset labelled for several heads gives HxWxK labels (one map per head, channels last like the
    image); they become a K x H x W tensor.
    """
    labels = torch.from_numpy(np.array(label, dtype=np.int64, order="C"))  # a copy: the label may be read-only
    return normalize(image, normalization), labels.permute(2, 0, 1).contiguous() if labels.dim() == 3 else labels


@runtime_checkable
class DatasetContract(Protocol):
    """What every dataset states and gives; training, evaluation and the dataset check rely on nothing else.

    ``info``: the label set of the labels ``load`` gives. ``inputs``: what a sample's image holds, 3 channels
    each (``("rgb",)``; NYUDv2 also ``("hha",)`` or ``("rgb", "hha")``). ``generated``: made by code and correct
    by construction, so :mod:`fcnseg.data.check` does not read it. ``load``: sample ``index`` untransformed.
    """

    info: DatasetInfo
    inputs: tuple[str, ...]
    generated: bool

    def __len__(self) -> int: ...

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]: ...

    def sample_name(self, index: int) -> str: ...


class PipelineOptions(TypedDict, total=False):
    """The options every reader passes on to :class:`SegmentationDataset` unchanged."""

    transform: JointTransform | None
    normalization: str
    seed: int | None
    class_map: Mapping[str, str | None] | None


PIPELINE_OPTIONS = frozenset(PipelineOptions.__annotations__)


class SegmentationDataset(Dataset, ABC):
    """The one pipeline: a reader's samples, class-mapped, transformed and normalised (see the module docstring).

    A reader subclasses it, states ``info`` (its files' label set), ``inputs`` and ``generated`` in its
    constructor and implements ``__len__``, ``read`` and ``sample_name``. ``transform``: a joint transform
    ``(image, label) -> (image, label)``; with ``seed`` it is called with ``rng=`` a generator of
    ``(seed, epoch, index)``. ``normalization``: ``"imagenet"`` or ``"caffe"``, whichever the model's weights
    expect. ``class_map``: merge, rename or drop classes by name; ``info`` is then the new label set and
    ``source_info`` the reader's own.
    """

    def __init__(self, *, info: DatasetInfo, inputs: Sequence[str], generated: bool,
                 transform: JointTransform | None = None, normalization: str = "imagenet", seed: int | None = None,
                 class_map: Mapping[str, str | None] | None = None) -> None:
        self.source_info = info
        # A class map is a lookup on label values; None keeps the reader's labels as they are.
        self.info, self.class_lut = (info, None) if class_map is None else mapped_info(info, class_map)
        self.inputs = tuple(inputs)
        self.generated = generated
        self.transform = transform
        self.normalization = normalization
        self.seed = seed
        self.epoch = 0
        self.kept: list[tuple[np.ndarray, np.ndarray]] | None = None  # see keep_loaded

    @abstractmethod
    def __len__(self) -> int:
        """The number of samples."""

    @abstractmethod
    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``index`` as the reader's files hold it: labels in ``source_info``'s classes."""

    @abstractmethod
    def sample_name(self, index: int) -> str:
        """A short name for sample ``index`` (file stem), used for output files."""

    def known_size(self) -> tuple[int, int] | None:
        """Every sample's (height, width) as read, where it is known without reading one (generated data); else
        None."""
        return None

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose augmentations ``__getitem__`` draws (with a ``seed``)."""
        self.epoch = epoch

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The untransformed (image, label) pair, labels in ``info``'s classes (the class map applied)."""
        if self.kept is not None:
            return self.kept[index]
        image, label = self.read(index)
        return image, label if self.class_lut is None else self.class_lut[label]

    def keep_loaded(self, samples: Iterable[tuple[np.ndarray, np.ndarray]]) -> None:
        """Have ``load`` give these pairs, sample ``i`` the ``i``-th, instead of reading the files again.

        Training reads every file once an epoch; decoding them (PNG, the label check) cost more CPU than
        augmenting them. The pairs are made read-only: a transform that changed its input in place would
        otherwise change the sample for every later epoch, so it fails instead.
        """
        kept = []
        for image, label in samples:
            image.flags.writeable = label.flags.writeable = False
            kept.append((image, label))
        if len(kept) != len(self):
            raise ValueError(f"expected {len(self)} samples to keep, got {len(kept)}")
        self.kept = kept

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.sample(index, self.epoch)

    def sample(self, index: int, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample ``index`` as epoch ``epoch`` augments it (with a ``seed``): the network's input and labels."""
        image, label = self.load(index)
        if self.transform is not None:
            if self.seed is None:
                image, label = self.transform(image, label)
            else:
                rng = np.random.default_rng((self.seed, epoch, index))
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
        problem = f"{path} is a file, not a folder" if path.exists() else f"not found: {path}"
        raise DataError(f"dataset folder {problem}. Expected layout: {layout}")
    return path


def read_list_file(path: Path) -> list[str]:
    """Non-empty, stripped lines of a list file (``#`` comments skipped). Lines end at a newline only, not at
    the other separators ``str.splitlines`` knows (U+2028 and the like, which made one class name two, and the
    class count wrong, silently); what a name holds is kept as written (messages escape it when they print it)."""
    try:
        lines = path.read_text(encoding="utf-8-sig").split("\n")  # -sig: a BOM (Notepad) is not part of a name
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


def refuse_subfolders(folder: Path, what: str) -> None:
    """A DataError when ``folder``, a flat folder of ``what``, holds subfolders (hidden ones are not data): their
    files would be passed over without a word."""
    subfolders = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if subfolders:
        raise DataError(f"{folder} holds subfolders ({listing(subfolders, 5)}), which would be passed over: the "
                        f"layout is flat, with the {what} directly in {folder.name}/; move their files up, or the "
                        "folders out")


def unmatched_error(where: Path, what: str, names: Sequence[str]) -> DataError:
    """A DataError listing the file names in ``where`` that have no partner."""
    shown = ", ".join(names[:20]) + (f", ... ({len(names)} in all)" if len(names) > 20 else "")
    return DataError(f"{len(names)} {what} in {where}: {shown}")


def listed_pairs(ids: Iterable[str], image: Path, label: Path, listed: str,
                 labels_named: str = "labels") -> list[tuple[Path, Path]]:
    """The (image, label) files of ``ids`` by the pairing rule ``image`` and ``label``: paths whose file name
    holds ``{}`` for the id (only the name is formatted: a folder may hold braces). A DataError lists the files
    that do not exist (``listed``: who listed the ids; ``labels_named``: what the labels are called there)."""
    pairs = [(image.parent / image.name.format(i), label.parent / label.name.format(i)) for i in ids]
    raise_if_missing((p for p, _ in pairs), "images", listed)
    raise_if_missing((p for _, p in pairs), labels_named, listed)
    return pairs


def pair_by_key(images: Mapping[str, Path], labels: Mapping[str, Path], folders: tuple[Path, Path],
                label: str = "a label", labels_named: str = "labels") -> list[tuple[Path, Path]]:
    """(image, label) pairs of the files that share a key (the pairing rule: file name, stem...), in key order.

    A DataError lists the images without ``label`` and the ``labels_named`` without an image, each file named by
    its path below its folder (``folders``: the images' and the labels'): nothing is skipped silently.
    """
    images_dir, labels_dir = folders
    if unlabelled := sorted(images.keys() - labels.keys()):
        raise unmatched_error(images_dir, f"images without {label} in {labels_dir}",
                              [str(images[k].relative_to(images_dir)) for k in unlabelled])
    if orphans := sorted(labels.keys() - images.keys()):
        raise unmatched_error(labels_dir, f"{labels_named} without an image in {images_dir}",
                              [str(labels[k].relative_to(labels_dir)) for k in orphans])
    return [(images[key], labels[key]) for key in sorted(images)]


def _refuse_repeats(pairs: Sequence[tuple[Path, Path]]) -> None:
    """A split list naming an image twice ("0" and "0.png") would score it twice and weigh it double in training:
    a DataError names the images listed more than once."""
    counts = Counter(os.path.normpath(image) for image, _ in pairs)
    repeated = [f"{image} ({count} times)" for image, count in counts.items() if count > 1]
    if repeated:
        raise DataError(f"{len(repeated)} image(s) listed more than once: {listing(repeated, 3)}; a split names each "
                        "image once: remove the repeats from its list")


class FilePairDataset(SegmentationDataset):
    """A reader given as a list of (image file, label file) pairs: ``read`` reads the image, decodes the label
    with ``decode_label`` (:func:`fcnseg.data.io.read_label` for class-index PNGs; a module-level function or
    ``functools.partial`` of one, so the dataset pickles into loader workers) and checks that the sizes match.
    """

    def __init__(self, pairs: Sequence[tuple[Path, Path]], *, info: DatasetInfo, inputs: Sequence[str],
                 decode_label: LabelDecoder = read_label, **pipeline: Unpack[PipelineOptions]) -> None:
        super().__init__(info=info, inputs=inputs, generated=False, **pipeline)
        self.pairs = list(pairs)
        self.decode_label = decode_label
        _refuse_repeats(self.pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def folders(self) -> set[Path]:
        """The folders its files lie in (resolved): a command's outputs written there would become data."""
        return {folder.resolve() for folder in {path.parent for pair in self.pairs for path in pair}}

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image_path, label_path = self.pairs[index]
        image = read_image(image_path)
        label = self.decode_label(label_path, self.source_info)
        check_pair(image, label, image_path, label_path)
        return image, label

    def sample_name(self, index: int) -> str:
        return self.pairs[index][0].stem
