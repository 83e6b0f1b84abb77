"""Pictures of labels and predictions: colour maps, overlays, panels, legends and PNG output.

Everything works on numpy arrays: images are HxWx3 uint8 RGB, labels HxW integer class maps that may
hold the dataset's ignore index. Colours come from :meth:`DatasetInfo.palette_array`, so every picture
of one dataset uses the same colours.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fcnseg.atomic import atomic_open
from fcnseg.data.info import DatasetInfo

WHITE = 255


def _check_label(label: np.ndarray) -> np.ndarray:
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"expected an HxW label map, got shape {label.shape}")
    if not np.issubdtype(label.dtype, np.integer):
        raise ValueError(f"expected integer class indices, got dtype {label.dtype}")
    if label.size and (label.min() < 0 or label.max() > 255):
        raise ValueError(f"label values must be 0-255, got {label.min()}..{label.max()}")
    return label


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got shape {image.shape} dtype {image.dtype}")
    return image


def colorize(label: np.ndarray, info: DatasetInfo) -> np.ndarray:
    """The HxWx3 uint8 colour picture of a label map (ignore index white, unknown ids black)."""
    label = _check_label(label)
    return info.palette_array()[label]


def overlay(image: np.ndarray, label: np.ndarray, info: DatasetInfo, opacity: float = 0.5) -> np.ndarray:
    """Blend the colourised ``label`` over ``image``: ``round((1 - opacity) * image + opacity * colour)``.

    Rounding is half up (``floor(x + 0.5)``). Pixels holding the ignore index keep the image unchanged;
    ``opacity`` 0 returns the image, 1 the label colours.
    """
    image = _check_image(image)
    label = _check_label(label)
    if image.shape[:2] != label.shape:
        raise ValueError(f"image is {image.shape[:2]} but label is {label.shape}")
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be between 0 and 1, got {opacity}")
    colours = colorize(label, info).astype(np.float64)
    blended = np.floor((1.0 - opacity) * image.astype(np.float64) + opacity * colours + 0.5)
    out = np.clip(blended, 0, 255).astype(np.uint8)
    ignored = label == info.ignore_index
    out[ignored] = image[ignored]
    return out


def side_by_side(panels: Sequence[np.ndarray], gap: int = 4) -> np.ndarray:
    """Panels placed left to right with ``gap`` white columns between them.

    Panels may be HxWx3 or HxW (grey) uint8 arrays; shorter panels are padded with white at the bottom.
    """
    if not panels:
        raise ValueError("side_by_side needs at least one panel")
    if gap < 0:
        raise ValueError(f"gap must be >= 0, got {gap}")
    rgb = []
    for i, panel in enumerate(panels):
        panel = np.asarray(panel)
        if panel.dtype != np.uint8:
            raise ValueError(f"panel {i} must be uint8, got {panel.dtype}")
        if panel.ndim == 2:
            panel = np.repeat(panel[:, :, None], 3, axis=2)
        if panel.ndim != 3 or panel.shape[2] != 3:
            raise ValueError(f"panel {i} must be HxWx3 or HxW, got shape {panel.shape}")
        rgb.append(panel)
    height = max(panel.shape[0] for panel in rgb)
    width = sum(panel.shape[1] for panel in rgb) + gap * (len(rgb) - 1)
    out = np.full((height, width, 3), WHITE, dtype=np.uint8)
    x = 0
    for panel in rgb:
        out[: panel.shape[0], x : x + panel.shape[1]] = panel
        x += panel.shape[1] + gap
    return out


def legend(class_ids: Iterable[int], info: DatasetInfo, swatch: int = 12, padding: int = 3) -> np.ndarray:
    """A white HxWx3 uint8 image with one row per class: its colour swatch and its name."""
    ids = [int(i) for i in class_ids]
    for class_id in ids:
        if not 0 <= class_id < info.num_classes:
            raise ValueError(f"class id {class_id} is not one of the {info.num_classes} {info.name} classes")
    font = ImageFont.load_default()
    names = [info.class_names[i] for i in ids]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_boxes = [probe.textbbox((0, 0), name, font=font) for name in names]
    text_w = max((box[2] for box in text_boxes), default=0)
    text_h = max((box[3] for box in text_boxes), default=0)
    row_h = max(swatch, text_h) + padding
    width = padding + swatch + padding + text_w + padding
    height = padding + row_h * max(len(ids), 1)
    canvas = Image.new("RGB", (width, height), (WHITE, WHITE, WHITE))
    draw = ImageDraw.Draw(canvas)
    palette = info.palette_array()
    for row, (class_id, name) in enumerate(zip(ids, names, strict=True)):
        y = padding + row * row_h
        # A thin grey outline keeps white or very light class colours visible on the white background.
        draw.rectangle([padding, y, padding + swatch - 1, y + swatch - 1],
                       fill=tuple(int(c) for c in palette[class_id]), outline=(128, 128, 128))
        draw.text((padding * 2 + swatch, y + (swatch - text_h) // 2), name, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


def present_classes(label: np.ndarray, info: DatasetInfo) -> list[int]:
    """Sorted class ids that occur in ``label``, without the ignore index."""
    label = _check_label(label)
    return [int(i) for i in np.unique(label) if i != info.ignore_index]


def _save_atomically(path: str | os.PathLike, picture: Image.Image) -> None:
    """Write a PNG so that readers never see half a file."""
    with atomic_open(path) as handle:
        picture.save(handle, format="PNG")


def save_png(path: str | os.PathLike, array: np.ndarray) -> None:
    """Save an HxW (grey), HxWx3 (RGB) or HxWx4 (RGBA) uint8 array as PNG, creating parent folders."""
    array = np.asarray(array)
    if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ValueError(f"expected an HxW, HxWx3 or HxWx4 uint8 array, got shape {array.shape} "
                         f"dtype {array.dtype}")
    _save_atomically(path, Image.fromarray(np.ascontiguousarray(array)))


def save_index_png(path: str | os.PathLike, label: np.ndarray, info: DatasetInfo) -> None:
    """Save a label map as a palette PNG: pixel values are class indices, the palette is the dataset's.

    Image viewers show the colours; ``np.asarray(PIL.Image.open(path))`` gives back the indices.
    """
    label = _check_label(label)
    picture = Image.fromarray(np.ascontiguousarray(label, dtype=np.uint8))
    picture.putpalette(info.palette_array().tobytes())  # turns the "L" image into a "P" image
    _save_atomically(path, picture)
