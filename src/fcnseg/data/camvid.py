"""CamVid road scenes in the 11-class SegNet layout (label 11 = void, ignored).

A split name may select frames by the drive they were filmed on (the file name up to its first ``_``:
``0001TP_006690.png`` is a frame of drive ``0001TP``): ``train[0006R0]`` is the training split's frames of
drive 0006R0, ``train[-0006R0]`` the training split without them; several drives are separated by commas
(``train[0001TP,0016E5]``, ``train[-0001TP,-0006R0]``). So a recipe can be chosen on a drive that no
training frame comes from (docs/camvid.md, "Drive-held-out protocol").
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Unpack

from fcnseg.data.base import (
    RGB,
    FilePairDataset,
    PipelineOptions,
    pair_by_key,
    raise_if_missing,
    read_list_file,
    refuse_subfolders,
    require_dir,
)
from fcnseg.data.info import CAMVID
from fcnseg.data.io import PathLike, leads_nowhere
from fcnseg.errors import ConfigError, DataError, listing

CAMVID_LAYOUT = (
    "<root>/{train,val,test}/*.png with labels in <root>/{train,val,test}annot/*.png, optional <split>.txt"
)
_SELECTION = re.compile(r"(?P<split>[^\[\]]+)\[(?P<drives>[^\[\]]*)\]")
_SYNTAX = "SPLIT[DRIVE] for a drive's frames, SPLIT[-DRIVE] for the others, several drives separated by commas"


def drive_of(frame: Path) -> str:
    """The drive a CamVid frame was filmed on: its file name up to the first ``_`` (``0001TP_006690.png``:
    ``0001TP``; a name without ``_``: its whole stem)."""
    return frame.stem.split("_", 1)[0]


@dataclass(frozen=True)
class DriveSelection:
    """Frames of ``split`` filmed on ``drives`` (``exclude``: on every other drive), from ``SPLIT[...]``."""

    split: str
    drives: tuple[str, ...]
    exclude: bool

    @classmethod
    def parse(cls, text: str) -> DriveSelection | None:
        """The selection ``text`` writes (``train[0006R0]``, ``train[-0006R0]``), None for a plain split name;
        a ConfigError for brackets that do not say which drives."""
        if "[" not in text and "]" not in text:
            return None
        match = _SELECTION.fullmatch(text.strip())
        items = [item.strip() for item in match.group("drives").split(",")] if match else []
        drives = tuple(item.removeprefix("-").strip() for item in items)
        if not match or not all(drives):
            raise ConfigError(f"split {text!r} does not say which drives to take: write {_SYNTAX} "
                              "(train[0006R0], train[-0006R0], train[0001TP,0016E5]; all kept or all left out)")
        base = match.group("split").strip()
        left_out = [drive for drive, item in zip(drives, items, strict=True) if item.startswith("-")]
        kept = [drive for drive, item in zip(drives, items, strict=True) if not item.startswith("-")]
        if kept and left_out:
            raise ConfigError(f"split {text!r} mixes drives to keep and drives to leave out: name the drives to keep "
                              f"({base}[{','.join(kept)}]) or those to leave out ({base}[-{',-'.join(left_out)}])")
        return cls(base, drives, exclude=bool(left_out))

    def select(self, pairs: list[tuple[Path, Path]], text: str, source: str) -> list[tuple[Path, Path]]:
        """The pairs of the selected drives; a DataError naming the split ``text``, the drives of ``source`` (the
        list file or folder) with their frame counts, and the fix, for an unknown drive or an empty selection."""
        counts = Counter(drive_of(image) for image, _ in pairs)
        unknown = [drive for drive in self.drives if drive not in counts]
        chosen = [(image, label) for image, label in pairs if (drive_of(image) in self.drives) != self.exclude]
        if not unknown and chosen:
            return chosen
        problem, fix = ((f"no drive {', '.join(unknown)} among its frames", "name drives it holds") if unknown
                        else ("the selection leaves none of its frames", "keep at least one of them"))
        shown = listing([f"{drive} ({count} frame{'s' if count != 1 else ''})"
                         for drive, count in sorted(counts.items())], 30)
        example = min(counts) if counts else "DRIVE"
        raise DataError(f"CamVid split {text!r}: {problem}; {source} holds the drives {shown}: {fix} "
                        f"({self.split}[{example}] for a drive's frames, {self.split}[-{example}] for the others, "
                        "several drives separated by commas)")


class CamVid(FilePairDataset):
    """CamVid, SegNet layout: ``<split>/`` images, ``<split>annot/`` mode-L labels (0..10, 11 = void).

    Pairs come from ``<root>/<split>.txt`` when present. Its lines hold absolute paths from the machine
    the dataset was published on (``/SegNet/CamVid/train/x.png /SegNet/CamVid/trainannot/x.png``), so
    each path is resolved relative to ``root`` from its last two components (folder and file name).
    Without a list file, ``<split>/`` and ``<split>annot/`` are paired by file name; a file without a
    partner is an error. ``split`` may select drives (``train[-0006R0]``, see the module docstring): the
    dataset then holds the selected frames only, so whatever reads it (the dataset check, the class weights
    computed from the training labels, evaluation) sees those alone.
    """

    selects_drives = True  # split names may say SPLIT[DRIVE] (fcnseg.data.registry refuses it elsewhere)

    def __init__(
        self,
        root: PathLike,
        split: str = "train",
        **pipeline: Unpack[PipelineOptions],
    ) -> None:
        root = require_dir(Path(root), CAMVID_LAYOUT)
        selection = DriveSelection.parse(split)
        files = selection.split if selection else split  # the split whose list file or folders hold the frames
        if not (root / files).is_dir() and (root / "CamVid" / files).is_dir():
            root = root / "CamVid"  # the parent of SegNet's CamVid folder was given
        self.root = root
        self.split = split
        list_file = root / f"{files}.txt"
        if list_file.is_file():
            pairs, source = self._pairs_from_list(root, list_file), str(list_file)
        else:
            pairs, source = self._pairs_from_folders(root, files), str(root / files)
        if selection is not None:
            pairs = selection.select(pairs, split, source)
        super().__init__(pairs, info=CAMVID, inputs=RGB, **pipeline)

    @staticmethod
    def _pairs_from_list(root: Path, list_file: Path) -> list[tuple[Path, Path]]:
        pairs = []
        for number, line in enumerate(read_list_file(list_file), start=1):
            parts = line.split()
            if len(parts) != 2:
                raise DataError(
                    f"{list_file} line {number}: expected '<image path> <label path>', got {line!r}"
                )
            # Foreign absolute paths: keep only "<folder>/<file>" and look for it under root.
            image, label = (root / Path(p).parent.name / Path(p).name for p in parts)
            if image.stem != label.stem:  # a frame would train on (or be scored against) another frame's labels
                raise DataError(
                    f"{list_file} line {number}: frame {image.name} is paired with labels {label.name}; a frame's "
                    f"labels carry its file name ({image.parent.name}annot/{image.name}): correct the line"
                )
            pairs.append((image, label))
        if not pairs:
            raise DataError(f"list file {list_file} is empty; expected lines '<image path> <label path>'")
        raise_if_missing((p for p, _ in pairs), "images", str(list_file))
        raise_if_missing((p for _, p in pairs), "labels", str(list_file))
        return pairs

    @staticmethod
    def _pairs_from_folders(root: Path, split: str) -> list[tuple[Path, Path]]:
        images_dir, labels_dir = root / split, root / f"{split}annot"
        if not images_dir.is_dir() or not labels_dir.is_dir():
            raise DataError(
                f"CamVid split {split!r} not found in {root}: need {images_dir} and {labels_dir} "
                f"(or {root / (split + '.txt')}). Expected layout: {CAMVID_LAYOUT}"
            )
        for folder, what in ((images_dir, "frames"), (labels_dir, "labels")):
            refuse_subfolders(folder, what)
        # A link that leads nowhere is a file the user meant: paired, then its reading fails, reported.
        images, labels = ({p.name: p for p in folder.iterdir()
                           if (p.is_file() or leads_nowhere(p)) and not p.name.startswith(".")}
                          for folder in (images_dir, labels_dir))
        if not images:
            raise DataError(f"no images in {images_dir}. Expected layout: {CAMVID_LAYOUT}")
        return pair_by_key(images, labels, (images_dir, labels_dir))  # same file name
