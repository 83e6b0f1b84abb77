"""Your own data: a folder of images and PNG masks with matching file names.

Layout::

    root/
      images/   a.jpg  b.png  ...      (any of fcnseg.data.io.IMAGE_SUFFIXES)
      masks/    a.png  b.png  ...      (PNG only: class-index (mode L) or palette (mode P) masks)
      classes.txt                      one class name per line, in label order
      splits/train.txt, splits/val.txt optional: one image stem per line

``classes.txt``: blank lines and lines starting with ``#`` are skipped; one optional line
``ignore_index: N`` sets the label value that marks pixels to ignore (default 255; it must not be a
class index). Hidden files (``.DS_Store``...) and ``Thumbs.db``/``desktop.ini`` are ignored; any other
file that is not an image (or not a PNG in ``masks/``) is an error, as are subfolders, images without a mask
and masks without an image: nothing is skipped silently.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Unpack

from PIL import Image

from fcnseg.data.base import (
    RGB,
    FilePairDataset,
    PipelineOptions,
    pair_by_key,
    read_list_file,
    refuse_subfolders,
    require_dir,
    unmatched_error,
)
from fcnseg.data.info import IGNORE_INDEX, DatasetInfo, voc_colormap
from fcnseg.data.io import IMAGE_SUFFIXES, PathLike, leads_nowhere
from fcnseg.errors import ConfigError, DataError

MASK_EXTENSIONS = (".png",)
FOLDER_LAYOUT = (
    "<root>/images/<name>.{png,jpg,jpeg,bmp,tif} with <root>/masks/<name>.png and <root>/classes.txt"
)
_JUNK_FILES = {"thumbs.db", "desktop.ini"}
_IGNORE_PREFIX = "ignore_index:"


def read_classes_file(path: Path) -> tuple[list[str], int | None]:
    """Class names and the optional ``ignore_index: N`` value of a ``classes.txt`` file."""
    names: list[str] = []
    ignore_index = None
    for line in read_list_file(path):
        if line.lower().startswith(_IGNORE_PREFIX):
            value = line[len(_IGNORE_PREFIX) :].strip()
            if not re.fullmatch(r"[0-9]+", value) or int(value) > 255:
                raise DataError(f"{path}: {line!r} should be 'ignore_index: N' with N in 0..255")
            ignore_index = int(value)
        else:
            names.append(line)
    return names, ignore_index


def _refuse_repeated_names(names: Sequence[str], source: str) -> None:
    """A class named twice is refused: reports and metrics.json name classes, and the second would hide the
    first there (its IoU silently dropped). Whatever the case, as class_map matches names."""
    first: dict[str, int] = {}
    for index, name in enumerate(names):
        if name.lower() in first:
            earlier = first[name.lower()]
            raise DataError(f"{source} names class {earlier} {names[earlier]!r} and class {index} {name!r}: give each "
                            "class its own name (label values 0, 1, ... follow the order of the names)")
        first[name.lower()] = index


def _files_by_stem(folder: Path, extensions: tuple[str, ...], what: str) -> dict[str, Path]:
    """The files of ``folder`` by stem; a link that leads nowhere counts as a file (reading it fails, reported);
    a subfolder is refused: the layout is flat, and its files would be passed over without a word."""
    refuse_subfolders(folder, what)
    entries = [p for p in sorted(folder.iterdir()) if not p.name.startswith(".") and p.name.lower() not in _JUNK_FILES]
    files = [p for p in entries if p.is_file() or leads_nowhere(p)]
    wrong = [p.name for p in files if p.suffix.lower() not in extensions]
    if wrong:
        raise unmatched_error(folder, f"files that are not {what} ({', '.join(extensions)})", wrong)
    by_stem: dict[str, Path] = {}
    for path in files:
        if path.stem in by_stem:
            raise DataError(
                f"{folder} has two files named {path.stem!r} ({by_stem[path.stem].name}, {path.name}); "
                "keep one per name"
            )
        by_stem[path.stem] = path
    return by_stem


def _mask_palette(mask: Path, num_classes: int) -> tuple[tuple[int, int, int], ...] | None:
    """The first ``num_classes`` colours of a palette PNG's palette, or None for non-palette masks."""
    try:
        with Image.open(mask) as img:  # header only: the palette is there, no pixel decode needed
            palette = img.getpalette() if img.mode == "P" else None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot read mask {mask}: {exc}") from None
    if palette is None or len(palette) < 3 * num_classes:
        return None
    return tuple(tuple(palette[3 * i : 3 * i + 3]) for i in range(num_classes))


class FolderDataset(FilePairDataset):
    """Images and masks from ``root/images`` and ``root/masks`` paired by file stem (see module doc).

    ``class_names`` (or ``root/classes.txt``) gives the classes; ``ignore_index`` overrides the one in
    ``classes.txt``. ``split=None`` (or ``"all"``) uses every pair; another name reads the stems in
    ``root/splits/<split>.txt``. ``info.palette`` is the masks' own palette when they are palette PNGs,
    else a generated (VOC-style) palette.
    """

    def __init__(
        self,
        root: PathLike,
        split: str | None = None,
        class_names: list[str] | tuple[str, ...] | None = None,
        ignore_index: int | None = None,
        **pipeline: Unpack[PipelineOptions],
    ) -> None:
        root = require_dir(Path(root), FOLDER_LAYOUT)
        self.root = root
        self.split = split
        images_dir = require_dir(root / "images", FOLDER_LAYOUT)
        masks_dir = require_dir(root / "masks", FOLDER_LAYOUT)

        file_ignore = None
        if class_names is None:
            classes_file = root / "classes.txt"
            if not classes_file.is_file():
                raise DataError(
                    f"no {classes_file}: write the class names there, one per line in label order "
                    "(mask value 0 = first line), or pass class_names=[...]"
                )
            class_names, file_ignore = read_classes_file(classes_file)
            if not class_names:
                raise DataError(f"{classes_file} lists no class names")
            _refuse_repeated_names(class_names, str(classes_file))
        else:
            if isinstance(class_names, str) or not all(isinstance(name, str) for name in class_names):
                raise ConfigError(f"class_names takes a list of names in label order, e.g. [background, road], "
                                  f"not {class_names!r} (a string was read as one class per character)")
            _refuse_repeated_names(class_names, f"the class_names given for {root}")
        if ignore_index is None:
            ignore_index = file_ignore if file_ignore is not None else IGNORE_INDEX
        if not 0 <= ignore_index <= 255:  # labels are 8-bit in the pipeline: 257 became class 1
            raise DataError(f"ignore_index {ignore_index} of {root}: labels are 8-bit in fcnseg (0..255), so the "
                            f"ignore value must be in {len(class_names)}..255, e.g. 255; keep the masks' values "
                            "within 0..255 too")
        if ignore_index < len(class_names):
            raise DataError(
                f"ignore_index {ignore_index} of {root} is also a class index (there are {len(class_names)} "
                "classes); use a value >= the number of classes, e.g. 255"
            )

        images = _files_by_stem(images_dir, IMAGE_SUFFIXES, "images")
        masks = _files_by_stem(masks_dir, MASK_EXTENSIONS, "PNG masks")
        if not images:
            raise DataError(f"no images in {images_dir}. Expected layout: {FOLDER_LAYOUT}")
        pairs = pair_by_key(images, masks, (images_dir, masks_dir), "a mask (<name>.png)", "masks")  # same stem
        if split is not None and split != "all":
            listed = self._split_stems(root / "splits", split, images)
            pairs = [(images[s], masks[s]) for s in listed]

        palette = _mask_palette(pairs[0][1], len(class_names)) or tuple(voc_colormap(len(class_names)))
        info = DatasetInfo(root.name or "folder", tuple(class_names), palette, ignore_index=ignore_index)
        super().__init__(pairs, info=info, inputs=RGB, **pipeline)

    @staticmethod
    def _split_stems(splits_dir: Path, split: str, images: dict[str, Path]) -> list[str]:
        list_file = splits_dir / f"{split}.txt"
        if not list_file.is_file():
            available = sorted(p.stem for p in splits_dir.glob("*.txt")) if splits_dir.is_dir() else []
            raise DataError(
                f"no split list {list_file} (available: {', '.join(available) or 'none'}): write one image name "
                "(stem) per line there, or use split 'all' for every image (fcnseg train --val-split all, "
                "fcnseg eval --split all)"
            )
        stems = []
        unknown = []
        for line in read_list_file(list_file):
            # Accept "a" as well as "a.jpg": strip a known extension only when the bare name is unknown.
            if line not in images and Path(line).suffix.lower() in IMAGE_SUFFIXES:
                line = Path(line).stem
            (stems if line in images else unknown).append(line)
        if unknown:
            raise unmatched_error(list_file, "names with no image/mask pair", unknown)
        if not stems:
            raise DataError(f"split list {list_file} is empty; it should hold one image name per line")
        return stems
