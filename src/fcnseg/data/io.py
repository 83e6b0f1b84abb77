"""The one input path: images from a file, bytes, a PIL image or an array, and label maps from files.

Every reader, ``fcnseg predict``, ``fcnseg eval`` and ``fcnseg serve`` go through these functions, so
the rules live in one place:

* :func:`decode_image` returns an HxWx3 uint8 RGB array, whatever the source and its mode, with the
  EXIF orientation applied (the array is the picture as a viewer shows it). Files and bytes over
  ``max_pixels`` are refused from their header, before a pixel is decoded (decompression bombs: a few
  kilobytes of PNG can claim gigabytes of pixels).
* :func:`read_label` returns an HxW uint8 array of class indices (or the dataset's ignore index). Palette
  PNGs are read as their indices, never through their colours; RGB label images are refused unless a
  colour->class mapping is given, because guessing classes from colours silently corrupts labels.
* Anything wrong raises :class:`~fcnseg.errors.DataError` (:class:`~fcnseg.errors.LimitError` for
  sizes) with one message naming the file; nothing is skipped silently.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import threading
import warnings
from collections.abc import Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fcnseg.data.info import DatasetInfo
from fcnseg.errors import DataError, FcnsegError, LimitError

log = logging.getLogger(__name__)

PathLike = str | os.PathLike
ImageSource = str | os.PathLike | bytes | Image.Image | np.ndarray

# Files the commands treat as images (folders given to ``fcnseg predict``, ``images/`` of a folder dataset).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm")

DEFAULT_MAX_PIXELS = 200_000_000

# Modes holding an alpha channel next to colour/grey values.
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}
# "I": 32-bit integers (a 16-bit PNG in older Pillow, a 32-bit TIFF, Image.fromarray of int32): index values are
# values whatever their width; a picture's scale is known only for a PNG, which holds 16 bits at most.
_INDEX_MODES = {"P", "L", "1", "I"} | _SIXTEEN_BIT_MODES
_LOSSY_FORMATS = {"JPEG", "MPO"}  # MPO: PIL's name for a JPEG with several frames (some cameras)
_ORIENTATION = 0x0112  # the EXIF tag
# PIL's limit is a module global; a lock keeps concurrent callers (the server's threads) from restoring
# each other's value halfway through a decode.
_PIL_LIMIT_LOCK = threading.Lock()


def _bomb_message(name: str, pixels: int | None, max_pixels: int) -> str:
    claimed = f"{pixels:,} pixels" if pixels is not None else "more pixels than that by its header"
    return (f"refusing to decode {name}: it has {claimed}, more than the limit of {max_pixels:,} "
            "(a protection against decompression bombs). If the image is genuine, raise the limit "
            "(--max-pixels / max_pixels=).")


@contextmanager
def _pixel_limit(max_pixels: int | None) -> Iterator[None]:
    """PIL's own decompression-bomb limit set to ``max_pixels`` (None: off), its warning made an error."""
    with _PIL_LIMIT_LOCK, warnings.catch_warnings():
        # PIL only *warns* between 1x and 2x its limit; a warning would let the decode go ahead.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        previous = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = previous


def _header_pixels(source: Path | bytes) -> int | None:
    """The pixel count an image header claims, read with PIL's limit off (the caller holds the lock); None where
    the file does not open a second time (a WebP header without image data fails to make its decoder)."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
            return img.size[0] * img.size[1]
    except (OSError, SyntaxError, ValueError, EOFError):
        return None
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def open_image(source: PathLike | bytes, what: str = "image", max_pixels: int | None = DEFAULT_MAX_PIXELS,
               formats: Collection[str] | Mapping[str, str] | None = None, name: str | None = None,
               lossless: bool = False) -> Image.Image:
    """Decode a file or bytes fully into a PIL image with its EXIF orientation applied.

    ``name`` words the error messages (default: ``what`` and the path, e.g. "label data/a.png");
    ``max_pixels`` is checked against the header before decoding (None: no limit); ``formats`` restricts
    the PIL format names accepted (a mapping gives the names to show, e.g. ``{"MPO": "JPEG"}``); ``lossless``
    refuses JPEG, whose compression changes pixel values (labels and depths, whose values must be exact).
    """
    if max_pixels is not None and max_pixels < 1:
        raise LimitError(f"max_pixels must be positive, got {max_pixels}")
    if isinstance(source, bytes):
        name = name or f"the {what} bytes"
        if not source:
            raise DataError(f"{name} is empty: expected an image file")
        handle: Path | io.BytesIO = io.BytesIO(source)
    else:
        source = Path(source)
        name = name or f"{what} {source}"
        if not is_a_file(source):
            raise DataError(not_a_file(source, what))
        if source.stat().st_size == 0:  # PIL would call it an unknown format
            raise DataError(f"{name} is empty (0 bytes): expected an image file")
        handle = source
    with _pixel_limit(max_pixels):
        try:
            with Image.open(handle) as img:
                _check_format(img, formats, name)
                if getattr(img, "n_frames", 1) > 1:  # an animated GIF or WebP, a multi-page TIFF: said, not hidden
                    log.warning("%s holds %d frames (an animation or several pages): the first is read", name,
                                img.n_frames)
                if lossless and img.format in _LOSSY_FORMATS:
                    raise DataError(f"{name} is a JPEG image (whatever its name): JPEG compression changes pixel "
                                    "values, which must be exact here (classes, depths); save it as PNG from the "
                                    "original")
                # load() forces the full decode: without it a truncated file opens fine and fails (or
                # returns grey rows) only later, far from here.
                img.load()
                # exif_transpose returns a new, independent image, so closing the file is safe. It keeps no
                # format, which tells a 16-bit PNG in mode I (as older Pillow opens it) from 32-bit integers.
                transposed = ImageOps.exif_transpose(img)
                return transposed.convert("I;16") if img.format == "PNG" and transposed.mode == "I" else transposed
        except DataError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise LimitError(_bomb_message(name, _header_pixels(source), max_pixels)) from None
        except UnidentifiedImageError:
            raise DataError(f"cannot read {name}: not an image format PIL recognises "
                            "(is it really an image file?)") from None
        except PermissionError:  # was "truncated or corrupt ... Re-download": the file is fine, its access is not
            raise DataError(f"cannot read {name}: permission denied (give this user read access to it)") from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise DataError(f"{name} is truncated or corrupt ({exc}). Re-download or re-export the file.") from None


def leads_nowhere(path: Path) -> bool:
    """Whether ``path`` is a symbolic link that cannot be followed (a loop, or a missing target): an entry
    a listing of files must not drop silently, since the user meant it as a file."""
    return path.is_symlink() and not path.exists()


def is_a_file(path: Path) -> bool:
    """``path.is_file()``, False for a path the system cannot look up (a name too long: is_file raised)."""
    try:
        return path.is_file()
    except OSError:
        return False


def not_a_file(path: Path, what: str = "image") -> str:
    """Why ``path`` cannot be read as a file, in one sentence naming it."""
    try:
        os.stat(path)
    except OSError as error:
        if error.errno == errno.ELOOP:
            return f"{what} {path} is a symbolic link loop (following it leads back to where it started)"
        if error.errno == errno.ENAMETOOLONG:
            return f"{what} {path} cannot be looked up: its name is too long for the file system"
        if path.is_symlink():
            return f"{what} {path} is a symbolic link to {os.readlink(path)}, which does not exist"
        return f"{what} file not found: {path}"
    return f"{what} {path} is not a file" + (" but a folder" if path.is_dir() else "")


def _check_format(img: Image.Image, formats: Collection[str] | Mapping[str, str] | None, name: str) -> None:
    if formats is None or img.format in formats:
        return
    shown = sorted(set(formats.values()) if isinstance(formats, Mapping) else formats)
    raise DataError(f"{name} is a {img.format} image, which is not accepted here; use {', '.join(shown)}")


def decode_image(source: ImageSource, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 formats: Collection[str] | Mapping[str, str] | None = None, name: str | None = None) -> np.ndarray:
    """Any accepted input as an HxWx3 uint8 RGB array (see :func:`image_to_rgb` for the conversions).

    ``source``: a file path, the bytes of an image file, a PIL image or an HxWx3 uint8 array. Files,
    bytes and unloaded PIL images over ``max_pixels`` are refused before decoding; arrays are already
    decoded and are only checked. ``formats`` and ``name``: see :func:`open_image`. A file's or bytes' EXIF
    orientation is applied (the picture as it is shown); a PIL image is taken as its pixels are stored, as an
    array would be: the labels then line up with the image the caller holds (turning it by its EXIF tag made
    them belong to a turned picture, unnoticed where the size stays the same).
    """
    if isinstance(source, np.ndarray):
        if source.ndim != 3 or source.shape[2] != 3 or source.dtype != np.uint8:
            raise DataError(f"expected an HxWx3 uint8 RGB array, got shape {source.shape} dtype {source.dtype}; "
                            "convert it with e.g. np.asarray(PIL.Image.open(path).convert('RGB'))")
        if source.shape[0] == 0 or source.shape[1] == 0:
            raise DataError(f"the image array is empty (shape {source.shape})")
        return source
    if isinstance(source, Image.Image):
        name = name or f"the {source.size[0]}x{source.size[1]} PIL image"
        pixels = source.size[0] * source.size[1]
        if max_pixels is not None and pixels > max_pixels:  # an Image.open() result is still undecoded
            raise LimitError(_bomb_message(name, pixels, max_pixels))
        return image_to_rgb(source, name)
    if isinstance(source, str) and not source.strip():  # Path("") is ".", a folder: a misleading refusal
        raise DataError(f"the image path is empty ({source!r}): give an image file")
    if isinstance(source, str | os.PathLike | bytes):
        name = name or (f"image {source}" if not isinstance(source, bytes) else "the image bytes")
        return image_to_rgb(open_image(source, "image", max_pixels, formats, name), name)
    raise TypeError(f"cannot read an image from a {type(source).__name__}: pass a file path (str or Path), "
                    "the bytes of an image file, a PIL image or an HxWx3 uint8 RGB numpy array")


def read_image(path: PathLike) -> np.ndarray:
    """Read an image file as an HxWx3 uint8 RGB array (:func:`decode_image` with the default pixel limit)."""
    return decode_image(Path(path))


def image_to_rgb(img: Image.Image, source: str = "the image") -> np.ndarray:
    """A decoded PIL image as an HxWx3 uint8 RGB array; ``source`` names it in error messages
    (e.g. "image photos/a.png").

    Conversions: greyscale (``1``, ``L``) is replicated to three channels;
    palette images go through their palette; CMYK and YCbCr use PIL's conversion; 16-bit images
    (``I;16``, or ``I`` read from a PNG) are scaled by 1/257 with rounding, so 65535 -> 255 and the full range is
    kept rather than clipped. Other 32-bit integer (``I``) and floating-point (``F``) images are refused: whether
    their values run to 1, 255 or 65535 is not known, and a guess would read a picture as black. The alpha channel
    of RGBA/LA/PA images is *dropped*, not composited: the stored colour values are kept exactly (photos saved
    with a meaningless alpha would otherwise be darkened wherever alpha < 255).
    """
    try:
        img.load()  # an image opened lazily decodes here: a truncated file, or one closed since, is the user's
    except (OSError, ValueError, AssertionError) as exc:  # PIL asserts an open file where it was closed
        raise DataError(f"cannot read {source}: its pixels cannot be decoded ({exc or 'the image was closed'}); "
                        "the file is truncated or corrupt, or the image was closed before use") from None
    try:
        rgb = _rgb_values(img, source)
    except FcnsegError:
        raise
    except (ValueError, OSError) as exc:
        raise DataError(f"cannot read {source}: PIL mode {img.mode!r} cannot be converted to RGB ({exc}); "
                        "save it as an 8-bit RGB PNG or JPEG") from None
    # A fresh, writable, contiguous copy: PIL-backed arrays are read-only, which torch warns about.
    return np.array(rgb, dtype=np.uint8, order="C")


def _rgb_values(img: Image.Image, source: str) -> np.ndarray:
    """:func:`image_to_rgb`'s conversions, by mode; PIL's own errors are left to it."""
    mode = img.mode
    if mode == "I" and img.format == "PNG":  # a 16-bit PNG, as older Pillow opens it (open_image converts it)
        mode = "I;16"
    if mode == "RGB":
        rgb = np.asarray(img)
    elif mode in ("I", "F"):
        values = np.asarray(img)
        kind = "32-bit integers" if mode == "I" else "floating-point values"
        span = f" ({values.min():g}..{values.max():g})" if values.size else ""
        raise DataError(f"cannot read {source}: it holds {kind}{span} (PIL mode {mode}), whose scale (to 1, 255 or "
                        "65535?) is not known; save it as an 8-bit image, e.g. Image.fromarray(values.astype("
                        "np.uint8)) for values 0..255")
    elif mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(img).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise DataError(
                f"cannot read {source}: mode {mode} holds values outside 0..65535 "
                f"({values.min()}..{values.max()}), so it is not a 16-bit picture; convert it to 8-bit RGB"
            )
        grey = ((values + 128) // 257).astype(np.uint8)  # rounded 65535/255 = 257 scaling
        rgb = np.repeat(grey[:, :, None], 3, axis=2)
    elif mode in _ALPHA_MODES or mode == "P":
        # Palettes go through RGBA so those with transparency convert without PIL's warning; alpha is dropped.
        rgb = np.asarray(img.convert("RGBA"))[:, :, :3]
    else:
        rgb = np.asarray(img.convert("RGB"))
    return rgb


def _format_values(values: Iterable[int], limit: int = 12) -> str:
    values = [int(v) for v in values]
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f", ... ({len(values)} values)" if len(values) > limit else "")


def validate_label(label: np.ndarray, info: DatasetInfo, path: PathLike) -> np.ndarray:
    """Check that every value of ``label`` is a class of ``info`` or its ignore index; return it as uint8.

    Masks saved as 0/255 (every foreground pixel equal to the ignore value) are a property of a whole
    split, not of one file: :mod:`fcnseg.data.check` and the confusion matrix look for them.
    """
    values = np.unique(label)
    valid = (values >= 0) & (values < info.num_classes)
    valid |= values == info.ignore_index
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
    return validate_label(lut[ids], info, path)


def read_label_indices(path: PathLike) -> np.ndarray:
    """Read a class-index label image as an HxW integer array, without checking the values.

    For readers that remap raw ids themselves (Cityscapes label ids, ADE20K's 0 = other). Palette PNGs
    give their indices, ``L`` its values, 16-bit images their values; colour images raise DataError.
    """
    img = open_image(path, "label", lossless=True)
    if img.mode in _INDEX_MODES:
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
    unless ``color_map`` (``{(r, g, b): class}``) says how colours map to classes: then the labels are
    colours, and a palette PNG is read by its colours too (an optimiser such as optipng, or PIL's ``convert("P")``,
    stores a colour mask that way, with indices in any order). Values must be
    classes in ``[0, num_classes)`` or the ignore index; see ``validate_label``. An EXIF orientation
    tag is applied as in ``read_image``, so a label stays aligned with its image.
    """
    img = open_image(path, "label", lossless=True)
    if color_map is not None and img.mode in ("P", "PA"):  # colour labels stored with a palette
        img = img.convert("RGB")
    mode = img.mode
    if mode in _INDEX_MODES:
        return validate_label(np.asarray(img).astype(np.int64), info, path)
    if mode in ("RGB", "RGBA"):
        rgb = np.asarray(img)[:, :, :3]
        if color_map is not None:
            return validate_label(map_colors(rgb, color_map, path), info, path)
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
                    f" Its colours are {info.name} palette colours: convert the files to class-index or palette "
                    "PNGs (in Python, fcnseg.data.io.read_label(path, info, color_map=palette_color_map(info)) "
                    "gives each file's class indices)."
                )
        raise DataError(
            f"label {path} is an {mode} colour image, but class-index PNGs (mode L, pixel value = class) or "
            f"palette PNGs (mode P, palette index = class) are expected.{hint}"
        )
    raise DataError(
        f"label {path} has PIL mode {mode!r}; expected a class-index PNG (mode L) or a palette PNG (mode P)"
    )


def read_depth(source: PathLike | bytes | np.ndarray, scale: float = 0.001,
               max_pixels: int | None = DEFAULT_MAX_PIXELS, name: str | None = None) -> np.ndarray:
    """A depth map in metres (HxW float32, 0 where unknown) from a single-channel image file of depth values
    (16-bit PNGs in millimetres, as NYUDv2's: ``scale`` metres per unit) or from an HxW array of metres."""
    if isinstance(source, np.ndarray):
        depth = np.asarray(source, dtype=np.float32)
        name = name or "the depth array"
    else:
        img = open_image(source, "depth map", max_pixels, name=name, lossless=True)
        name = name or (f"depth map {source}" if not isinstance(source, bytes) else "the depth map bytes")
        if img.mode not in _SIXTEEN_BIT_MODES | {"L", "F", "I"}:
            raise DataError(f"{name} is a {img.mode} image; a depth map is one channel of depth values (a 16-bit "
                            "PNG in millimetres, as NYUDv2's)")
        depth = np.asarray(img, dtype=np.float32) * scale
    if depth.ndim != 2 or not np.isfinite(depth).all() or (depth < 0).any():
        raise DataError(f"{name} must be an HxW map of finite depths >= 0, got shape {depth.shape}")
    return depth


def read_mat_array(path: PathLike, key: str, hint: str = "is it a label file of this dataset?") -> np.ndarray:
    """The 2-D array ``key`` of a MATLAB .mat file as int64: the one reader of .mat labels (SBD, PASCAL-Context,
    SIFT Flow, NYUDv2). A dotted ``key`` names a struct's field (SBD's ``GTcls.Segmentation``); ``hint`` ends the
    message for a file without it. DataError naming the file when it is missing, cannot be read, lacks ``key``
    or holds there anything but a 2-D array of whole numbers."""
    import scipy.io  # only the .mat datasets need it
    from scipy.io.matlab import MatReadError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"label file not found: {path}")
    try:
        contents = scipy.io.loadmat(str(path), struct_as_record=False)
    except (MatReadError, ValueError, OSError, TypeError) as exc:
        raise DataError(f"truncated or corrupt .mat file {path}: {exc}") from None
    names = key.split(".")
    value = contents.get(names[0])
    for name in names[1:]:
        # A MATLAB struct loads as a 1x1 object array holding it.
        if isinstance(value, np.ndarray) and value.dtype == object and value.size == 1:
            value = value.item()
        value = getattr(value, name, None)
    if value is None:
        raise DataError(f"{path} has no {key} array: {hint}")
    array = np.asarray(value)
    whole = np.issubdtype(array.dtype, np.integer) or (
        np.issubdtype(array.dtype, np.floating) and bool(np.isfinite(array).all())
        and bool((array == np.round(array)).all()))
    if array.ndim != 2 or not whole:
        raise DataError(f"{path}: {key} should be a 2-D array of class numbers, got {array.dtype} {array.shape}")
    return array.astype(np.int64)


def exif_orientation(path: PathLike) -> int:
    """The EXIF orientation tag of an image file (1, upright, when it has none or cannot be read)."""
    try:
        with Image.open(path) as img:
            return int(img.getexif().get(_ORIENTATION, 1))
    except (OSError, ValueError, SyntaxError):
        return 1


def check_pair(image: np.ndarray, label: np.ndarray, image_path: PathLike, label_path: PathLike) -> None:
    """Raise DataError if the image and its label do not have the same height and width.

    Images and labels both have their EXIF orientation applied (one rule for both); when only one of the
    two files carries a rotation, the message says so, since that is the usual cause of a transposed pair.
    """
    if image.shape[:2] == label.shape[:2]:
        return
    message = (f"image {image_path} is {image.shape[1]}x{image.shape[0]} (WxH) but its label {label_path} is "
               f"{label.shape[1]}x{label.shape[0]}: they must match pixel for pixel.")
    tags = exif_orientation(image_path), exif_orientation(label_path)
    if tags[0] != tags[1]:
        raise DataError(f"{message} The image carries EXIF orientation {tags[0]} and the label {tags[1]}: fcnseg "
                        "turns both upright as a viewer shows them, so the label was drawn on differently turned "
                        "pixels. Save the image upright without the orientation tag (or turn the label the same "
                        "way).")
    raise DataError(f"{message} Is it the right label file?")
