"""Reading images and label maps from disk, with errors that name the file and say how to fix it.

Every reader in ``fcnseg.data`` goes through these functions, so the rules live in one place:

* ``read_image`` always returns an HxWx3 uint8 RGB array, whatever the file's mode, with the EXIF
  orientation applied (so the array is the picture as a viewer shows it).
* ``read_label`` returns an HxW uint8 array of class indices (or the dataset's ignore index). Palette
  PNGs are read as their indices, never through their colours; RGB label images are refused unless a
  colour->class mapping is given, because guessing classes from colours silently corrupts labels.
* Anything wrong raises ``DataError`` with one message naming the file; nothing is skipped silently.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fcnseg.data.base import JointTransform, SegmentationDataset
from fcnseg.data.info import DatasetInfo

PathLike = str | Path

# Modes holding an alpha channel next to colour/grey values.
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


class DataError(ValueError):
    """Bad input data: the message names the file (or folder) and says what was expected."""


def _open_decoded(path: PathLike, what: str) -> Image.Image:
    """Open ``path`` and decode every pixel, turning PIL's many failure modes into one DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} file not found: {path}")
    try:
        with Image.open(path) as img:
            # load() forces the full decode: without it a truncated file opens fine and fails (or
            # returns grey rows) only later, far from here.
            img.load()
            # exif_transpose returns a new, independent image, so closing the file is safe.
            return ImageOps.exif_transpose(img)
    except UnidentifiedImageError:
        raise DataError(
            f"cannot read {what} {path}: not an image format PIL recognises (is it really an image file?)"
        ) from None
    except Image.DecompressionBombError as exc:
        raise DataError(f"cannot read {what} {path}: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise DataError(
            f"truncated or corrupt image {path}: {exc}. Re-download or re-export the file."
        ) from None


def read_image(path: PathLike) -> np.ndarray:
    """Read an image file as an HxWx3 uint8 RGB array (EXIF orientation applied; see :func:`image_to_rgb`)."""
    return image_to_rgb(_open_decoded(path, "image"), str(path))


def image_to_rgb(img: Image.Image, source: str = "the image") -> np.ndarray:
    """A decoded PIL image as an HxWx3 uint8 RGB array; ``source`` names it in error messages.

    Conversions: greyscale (``1``, ``L``) is replicated to three channels;
    palette images go through their palette; CMYK and YCbCr use PIL's conversion; 16-bit images
    (``I;16``, ``I``) are scaled by 1/257 with rounding, so 65535 -> 255 and the full range is kept
    rather than clipped. The alpha channel of RGBA/LA/PA images is *dropped*, not composited: the stored
    colour values are kept exactly (photos saved with a meaningless alpha would otherwise be darkened
    wherever alpha < 255).
    """
    path = source
    mode = img.mode
    if mode == "RGB":
        rgb = np.asarray(img)
    elif mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(img).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise DataError(
                f"cannot read image {path}: mode {mode} holds values outside 0..65535 "
                f"({values.min()}..{values.max()}), so it is not a 16-bit picture; convert it to 8-bit RGB"
            )
        grey = ((values + 128) // 257).astype(np.uint8)  # rounded 65535/255 = 257 scaling
        rgb = np.repeat(grey[:, :, None], 3, axis=2)
    elif mode in _ALPHA_MODES:
        rgb = np.asarray(img.convert("RGBA"))[:, :, :3]
    elif mode == "P":
        # Through RGBA so palettes with transparency convert without PIL's warning; alpha is dropped.
        rgb = np.asarray(img.convert("RGBA"))[:, :, :3]
    else:
        try:
            rgb = np.asarray(img.convert("RGB"))
        except (ValueError, OSError) as exc:
            raise DataError(
                f"cannot read image {path}: PIL mode {mode!r} cannot be converted to RGB ({exc}); "
                "save it as an 8-bit RGB PNG or JPEG"
            ) from None
    # A fresh, writable, contiguous copy: PIL-backed arrays are read-only, which torch warns about.
    return np.array(rgb, dtype=np.uint8, order="C")


def _format_values(values: Iterable[int], limit: int = 12) -> str:
    values = [int(v) for v in values]
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f", ... ({len(values)} values)" if len(values) > limit else "")


def validate_label(
    label: np.ndarray, info: DatasetInfo, path: PathLike, check_binary_mask: bool = True
) -> np.ndarray:
    """Check that every value of ``label`` is a class of ``info`` or its ignore index; return it as uint8.

    With ``check_binary_mask``, a label of a 2-class dataset holding exactly the values {0, 255} is
    refused even when 255 is the ignore index: that is almost always a binary mask saved as 0/255, and
    accepting it would silently ignore all of its foreground.
    """
    values = np.unique(label)
    valid = (values >= 0) & (values < info.num_classes)
    valid |= values == info.ignore_index
    if check_binary_mask and info.num_classes == 2 and values.tolist() == [0, 255]:
        raise DataError(
            f"label {path} holds only the values 0 and 255: it looks like a 0/255 binary mask. "
            f"{info.name} has 2 classes, so labels must hold 0 (background) and 1 (foreground)"
            f"{'; 255 means ignore' if info.ignore_index == 255 else ''}. Fix: re-save the masks "
            "with foreground = 1, e.g. Image.fromarray((np.array(Image.open(p)) > 127).astype(np.uint8))"
            ".save(p)"
        )
    if not valid.all():
        bad = values[~valid]
        raise DataError(
            f"label {path} has values {_format_values(bad)} that are neither classes of {info.name} "
            f"(0..{info.num_classes - 1}) nor its ignore index {info.ignore_index}. Check that the labels "
            "belong to this dataset (class-index PNGs: pixel value = class index)."
        )
    return label.astype(np.uint8, copy=False)


def palette_color_map(info: DatasetInfo) -> dict[tuple[int, int, int], int]:
    """A colour->class mapping from ``info``'s palette, for ``read_label(..., color_map=...)``."""
    return {tuple(int(c) for c in color): index for index, color in enumerate(info.palette)}


def map_colors(rgb: np.ndarray, color_map: Mapping[tuple[int, int, int], int], path: PathLike) -> np.ndarray:
    """Map an HxWx3 colour label image to class indices; unknown colours raise DataError naming them."""
    rgb = rgb.astype(np.int64)
    keys = (rgb[:, :, 0] << 16) | (rgb[:, :, 1] << 8) | rgb[:, :, 2]
    unique, inverse = np.unique(keys, return_inverse=True)
    lut = {(int(r) << 16) | (int(g) << 8) | int(b): index for (r, g, b), index in color_map.items()}
    unknown = [int(k) for k in unique if int(k) not in lut]
    if unknown:
        colors = ", ".join(str(((k >> 16) & 255, (k >> 8) & 255, k & 255)) for k in unknown[:8])
        more = f" and {len(unknown) - 8} more" if len(unknown) > 8 else ""
        raise DataError(
            f"label {path} has colours {colors}{more} that the colour->class mapping does not cover "
            f"(it knows {sorted(color_map)}); was the mask saved as JPEG or resized with interpolation?"
        )
    classes = np.array([lut[int(k)] for k in unique], dtype=np.int64)
    return classes[inverse.reshape(keys.shape)]


def read_remapped_label(path: PathLike, lut: np.ndarray, raw_ids: Iterable[int], info: DatasetInfo,
                        what: str) -> np.ndarray:
    """Read raw label ids, refuse any outside ``raw_ids`` (``what`` explains them in the message), and map
    the rest through the 256-entry lookup table ``lut`` to class indices or the ignore index."""
    ids = read_label_indices(path)
    values = np.unique(ids)
    bad = np.setdiff1d(values, np.fromiter(raw_ids, dtype=np.int64))
    if bad.size:
        raise DataError(f"label {path} has values {bad.tolist()[:12]} that are not {what}")
    return validate_label(lut[ids], info, path, check_binary_mask=False)


def read_label_indices(path: PathLike) -> np.ndarray:
    """Read a class-index label image as an HxW integer array, without checking the values.

    For readers that remap raw ids themselves (Cityscapes label ids, ADE20K's 0 = other). Palette PNGs
    give their indices, ``L`` its values, 16-bit images their values; colour images raise DataError.
    """
    img = _open_decoded(path, "label")
    if img.mode in ("P", "L", "1") or img.mode in _SIXTEEN_BIT_MODES:
        return np.asarray(img).astype(np.int64)
    raise DataError(
        f"label {path} is a {img.mode} colour image, but class-index PNGs (mode L, pixel value = class) "
        "or palette PNGs (mode P, palette index = class) are expected. Convert the colours to class "
        "indices first."
    )


def read_label(
    path: PathLike, info: DatasetInfo, color_map: Mapping[tuple[int, int, int], int] | None = None
) -> np.ndarray:
    """Read a label image as an HxW uint8 array of class indices (or ``info.ignore_index``).

    Palette PNGs (mode ``P``) are read as their palette INDICES, never converted to colours; greyscale
    (``L``) and 16-bit images are read as values. RGB(A) label images are refused with an explanation,
    unless ``color_map`` (``{(r, g, b): class}``) says how colours map to classes. Values must be
    classes in ``[0, num_classes)`` or the ignore index; see ``validate_label``. An EXIF orientation
    tag is applied as in ``read_image``, so a label stays aligned with its image.
    """
    img = _open_decoded(path, "label")
    mode = img.mode
    if mode in ("P", "L", "1") or mode in _SIXTEEN_BIT_MODES:
        return validate_label(np.asarray(img).astype(np.int64), info, path)
    if mode in ("RGB", "RGBA"):
        rgb = np.asarray(img)[:, :, :3]
        if color_map is not None:
            # The mapping is explicit, so a {0, 255} result is meant (e.g. class 0 + ignore).
            return validate_label(map_colors(rgb, color_map, path), info, path, check_binary_mask=False)
        hint = ""
        if np.array_equal(rgb[:, :, 0], rgb[:, :, 1]) and np.array_equal(rgb[:, :, 0], rgb[:, :, 2]):
            hint = (
                " Its three channels are equal: it is probably an index image saved as RGB; "
                "re-save it as mode L."
            )
        else:
            known = palette_color_map(info)
            colors = {tuple(int(v) for v in c) for c in np.unique(rgb.reshape(-1, 3), axis=0)}
            if colors <= set(known) | {(255, 255, 255), (0, 0, 0)}:
                hint = (
                    f" Its colours are {info.name} palette colours: pass "
                    "color_map=palette_color_map(info) to map them, or convert the files to palette PNGs."
                )
        raise DataError(
            f"label {path} is an {mode} colour image, but class-index PNGs (mode L, pixel value = class) or "
            f"palette PNGs (mode P, palette index = class) are expected.{hint}"
        )
    raise DataError(
        f"label {path} has PIL mode {mode!r}; expected a class-index PNG (mode L) or a palette PNG (mode P)"
    )


def check_pair(image: np.ndarray, label: np.ndarray, image_path: PathLike, label_path: PathLike) -> None:
    """Raise DataError if the image and its label do not have the same height and width."""
    if image.shape[:2] != label.shape[:2]:
        raise DataError(
            f"image {image_path} is {image.shape[1]}x{image.shape[0]} (WxH) but its label {label_path} is "
            f"{label.shape[1]}x{label.shape[0]}: they must match pixel for pixel. Is it the right label file?"
        )


# --- helpers shared by the dataset readers ------------------------------------------------------------


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

    def __init__(
        self,
        pairs: Sequence[tuple[Path, Path]],
        transform: JointTransform | None = None,
        normalization: str = "imagenet",
    ) -> None:
        super().__init__(transform=transform, normalization=normalization)
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
