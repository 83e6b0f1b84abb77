"""Pictures of labels and predictions: colour maps, overlays, panels, legends and PNG output.

Everything works on numpy arrays: images are HxWx3 uint8 RGB, labels HxW integer class maps that may
hold the dataset's ignore index. Colours come from :meth:`DatasetInfo.palette_array`, so every picture
of one dataset uses the same colours.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fcnseg.atomic import atomic_open
from fcnseg.data.info import DatasetInfo

WHITE = 255
TEXT_SIZE = 15  # pixels: titles and legends readable at 100% zoom
MIN_PICTURE_WIDTH = 960  # prediction pictures of small inputs are enlarged to at least this width
# ... and those of large ones shown shrunk to at most this (8K UHD): an 8000x6000 photo's took 40 s and most of
# 4 GB, a 1x40000 strip's a 660-megapixel PNG. The mask and overlay files keep the input's size.
MAX_PICTURE_WIDTH, MAX_PICTURE_HEIGHT = 7680, 4320


def readable_font(size: int = TEXT_SIZE) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """PIL's built-in font at ``size`` pixels: no font file to ship.

    Pillow before 10.1 (or without FreeType) only has its small bitmap font, which is used then.
    """
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: load_default takes no size
        return ImageFont.load_default()


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


_BLEND_PIXELS = 2**20


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
    out = np.empty_like(image)
    # In blocks of rows: float64 copies of a whole 8000x6000 photo took 1.9 GB beyond the image (twice the
    # prediction's own peak); a block of about a million pixels takes some 100 MB, with the same arithmetic.
    rows = max(1, _BLEND_PIXELS // max(1, image.shape[1]))
    for top in range(0, image.shape[0], rows):
        part, labels = image[top:top + rows], label[top:top + rows]
        colours = colorize(labels, info).astype(np.float64)
        blended = np.floor((1.0 - opacity) * part.astype(np.float64) + opacity * colours + 0.5)
        block = np.clip(blended, 0, 255).astype(np.uint8)
        ignored = labels == info.ignore_index
        block[ignored] = part[ignored]
        out[top:top + rows] = block
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


def _check_class_ids(class_ids: Iterable[int], info: DatasetInfo) -> list[int]:
    ids = [int(i) for i in class_ids]
    for class_id in ids:
        if not 0 <= class_id < info.num_classes:
            raise ValueError(f"class id {class_id} is not one of the {info.num_classes} {info.name} classes")
    return ids


def legend(class_ids: Iterable[int], info: DatasetInfo, swatch: int = 14, padding: int = 4,
           font_size: int = TEXT_SIZE) -> np.ndarray:
    """A white HxWx3 uint8 image with one row per class: its colour swatch and its name."""
    ids = _check_class_ids(class_ids, info)
    font = readable_font(font_size)
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


def upscale(picture: np.ndarray, factor: int) -> np.ndarray:
    """``picture`` (HxW or HxWxC) enlarged ``factor`` times by repeating pixels: nearest neighbour, so a
    label colour picture gains no new colours."""
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    return np.repeat(np.repeat(np.asarray(picture), factor, axis=0), factor, axis=1)


def stacked(parts: Sequence[np.ndarray]) -> np.ndarray:
    """HxWx3 uint8 pictures placed top to bottom, narrower ones padded with white on the right."""
    if not parts:
        raise ValueError("stacked needs at least one picture")
    width = max(part.shape[1] for part in parts)
    padded = [np.pad(part, ((0, 0), (0, width - part.shape[1]), (0, 0)), constant_values=WHITE) for part in parts]
    return np.concatenate(padded, axis=0)


def _fit(draw: ImageDraw.ImageDraw, text: str, width: float, font) -> str:
    """``text``, shortened with "..." until it is at most ``width`` pixels wide."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..." if text else ""


def titled(panels: Sequence[np.ndarray], titles: Sequence[str], gap: int = 4,
           font_size: int = TEXT_SIZE) -> np.ndarray:
    """:func:`side_by_side` of ``panels`` under a white band naming each one (centred above it; a title
    wider than its panel is shortened)."""
    if len(titles) != len(panels):
        raise ValueError(f"{len(panels)} panels but {len(titles)} titles")
    body = side_by_side(panels, gap)
    font = readable_font(font_size)
    pad = max(3, font_size // 3)
    band = Image.new("RGB", (body.shape[1], font_size + 2 * pad), (WHITE, WHITE, WHITE))
    draw = ImageDraw.Draw(band)
    x = 0
    for panel, title in zip(panels, titles, strict=True):
        width = np.asarray(panel).shape[1]
        text = _fit(draw, title, width, font)
        draw.text((x + (width - draw.textlength(text, font=font)) / 2, pad), text, fill=(0, 0, 0), font=font)
        x += width + gap
    return stacked([np.asarray(band), body])


def legend_strip(class_ids: Iterable[int], info: DatasetInfo, width: int, font_size: int = TEXT_SIZE,
                 label: str = "") -> np.ndarray:
    """A white band ``width`` pixels wide with each class's colour swatch and name left to right, wrapped
    into more rows when they do not fit (the legend drawn into a picture); ``label`` comes first."""
    ids = _check_class_ids(class_ids, info)
    font = readable_font(font_size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    swatch, pad = font_size, max(4, font_size // 3)
    row_h = swatch + pad
    entries = ([(None, label)] if label else []) + [(i, info.class_names[i]) for i in ids]
    places, x, y = [], pad, pad
    for class_id, name in entries:
        entry_w = (0 if class_id is None else swatch + pad) + int(probe.textlength(name, font=font))
        if x > pad and x + entry_w > width - pad:  # start a new row
            x, y = pad, y + row_h
        places.append((x, y))
        x += entry_w + 2 * pad
    canvas = Image.new("RGB", (width, y + row_h + pad), (WHITE, WHITE, WHITE))
    draw = ImageDraw.Draw(canvas)
    palette = info.palette_array()
    for (class_id, name), (x, y) in zip(entries, places, strict=True):
        if class_id is not None:
            # A thin grey outline keeps white or very light class colours visible on the white background.
            draw.rectangle([x, y, x + swatch - 1, y + swatch - 1], fill=tuple(int(c) for c in palette[class_id]),
                           outline=(128, 128, 128))
            x += swatch + pad
        top, bottom = probe.textbbox((0, 0), name, font=font)[1::2]
        draw.text((x, y + (swatch - top - bottom) // 2), name, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


def prediction_picture(image: np.ndarray, labels: np.ndarray, info: DatasetInfo, opacity: float = 0.5,
                       min_width: int = MIN_PICTURE_WIDTH) -> np.ndarray:
    """image | overlay | predicted classes, titled, with the legend of the classes present below.

    Inputs too small for the picture to be ``min_width`` pixels wide are enlarged an integer number of times
    by repeating pixels (no new colours, the label edges stay sharp); inputs too large for its panels to fit
    :data:`MAX_PICTURE_WIDTH` x :data:`MAX_PICTURE_HEIGHT` are shown by every n-th pixel (structures thinner than n
    pixels may not show; the legend lists every class of the full map). Text grows with wide pictures, not past a
    quarter of the panels' height (a 1-pixel strip got 1500-pixel letters).
    """
    image, labels = _check_image(image), _check_label(labels)
    gap = 4
    present = present_classes(labels, info)  # of the full map: a thin class can fall between the pixels shown
    shrink = max(1, math.ceil((3 * image.shape[1] + 2 * gap) / MAX_PICTURE_WIDTH),
                 math.ceil(image.shape[0] / MAX_PICTURE_HEIGHT))
    image, labels = image[::shrink, ::shrink], labels[::shrink, ::shrink]
    height, width = max(1, image.shape[0]), max(1, image.shape[1])
    factor = max(1, math.ceil((min_width - 2 * gap) / (3 * width)))
    factor = min(factor, max(1, 1024 // height))  # a tall narrow input is not blown up past 1024 pixels
    panels = [upscale(panel, factor) for panel in (image, overlay(image, labels, info, opacity),
                                                   colorize(labels, info))]
    font_size = max(TEXT_SIZE, min((3 * width * factor) // 80, (height * factor) // 4))
    body = titled(panels, ["image", "overlay", "predicted classes"], gap, font_size)
    # The legend may be wider than the panels of a narrow input, so that its names are not cut.
    key = legend_strip(present, info, max(body.shape[1], MIN_PICTURE_WIDTH // 2), font_size,
                       "classes in the prediction:")
    return stacked([body, key])


def _write_png(path: str | os.PathLike, picture: Image.Image) -> None:
    """Write a PNG atomically: readers never see half a file."""
    with atomic_open(path) as handle:
        picture.save(handle, format="PNG")


def save_png(path: str | os.PathLike, array: np.ndarray) -> None:
    """Save an HxW (grey), HxWx3 (RGB) or HxWx4 (RGBA) uint8 array as PNG, creating parent folders."""
    array = np.asarray(array)
    if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ValueError(f"expected an HxW, HxWx3 or HxWx4 uint8 array, got shape {array.shape} "
                         f"dtype {array.dtype}")
    _write_png(path, Image.fromarray(np.ascontiguousarray(array)))


def index_image(label: np.ndarray, info: DatasetInfo) -> Image.Image:
    """A label map as a palette ("P") image: pixel values are class indices, the palette is the dataset's.

    Image viewers show the colours; ``np.asarray(image)`` gives back the indices.
    """
    label = _check_label(label)
    picture = Image.fromarray(np.ascontiguousarray(label, dtype=np.uint8))
    picture.putpalette(info.palette_array().tobytes())  # turns the "L" image into a "P" image
    return picture


def save_index_png(path: str | os.PathLike, label: np.ndarray, info: DatasetInfo) -> None:
    """Save a label map as a palette PNG (:func:`index_image`); ``PIL.Image.open(path)`` gives the indices."""
    _write_png(path, index_image(label, info))


# --- confusion matrix picture --------------------------------------------------------------------------

CELL_MAX, CELL_MIN, CELL_TEXT = 36, 6, 26  # cell size in pixels; values are written in cells >= CELL_TEXT
_INK, _GREY, _WHITE = (0, 0, 0), (150, 150, 150), (255, 255, 255)


def _text_size(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int]:
    box = draw.textbbox((0, 0), text, font=font)
    return box[2], box[3]


def confusion_figure(matrix: Sequence[Sequence[int]] | np.ndarray, class_names: Sequence[str],
                     path: str | os.PathLike) -> Path:
    """Draw the row-normalised confusion matrix (rows = ground truth) as a PNG; returns ``path``.

    Each cell is shaded from white (0) to dark blue (all of the class's pixels); rows of classes absent
    from the ground truth are grey. Percentages are written into the cells when they are large enough, and
    a few lines under the grid say how to read it.
    """
    save_png(path, confusion_picture(matrix, class_names))
    return Path(path)


def confusion_picture(matrix: Sequence[Sequence[int]] | np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    """The picture :func:`confusion_figure` saves, as an HxWx3 uint8 array."""
    counts = np.asarray(matrix, dtype=np.float64)
    n = len(class_names)
    if counts.shape != (n, n):
        raise ValueError(f"confusion matrix has shape {counts.shape} but there are {n} class names")
    totals = counts.sum(axis=1, keepdims=True)
    fractions = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)

    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    cell = int(min(CELL_MAX, max(CELL_MIN, 1200 // max(n, 1))))
    name_w = max(_text_size(probe, name, font)[0] for name in class_names)
    text_h = max(_text_size(probe, name, font)[1] for name in class_names)
    pad = 6
    left = pad + text_h + pad + name_w + pad  # "ground truth" (rotated) | row names | grid
    top = pad + text_h + pad + name_w + pad  # "predicted" | column names (rotated) | grid
    width, height = left + n * cell + pad, top + n * cell + pad
    canvas = Image.new("RGB", (width, height), _WHITE)
    draw = ImageDraw.Draw(canvas)

    for i in range(n):
        for j in range(n):
            x0, y0 = left + j * cell, top + i * cell
            if totals[i, 0] == 0:
                fill = (220, 220, 220)
            else:
                v = fractions[i, j]  # white -> dark blue
                fill = (round(255 - 247 * v), round(255 - 207 * v), round(255 - 148 * v))
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=fill, outline=(235, 235, 235))
            if cell >= CELL_TEXT and totals[i, 0] > 0 and counts[i, j] > 0:
                label = f"{100 * fractions[i, j]:.0f}"
                tw, th = _text_size(draw, label, font)
                ink = _WHITE if fractions[i, j] > 0.5 else _INK
                draw.text((x0 + (cell - tw) // 2, y0 + (cell - th) // 2), label, fill=ink, font=font)
        # Row names right-aligned next to the grid.
        tw, th = _text_size(draw, class_names[i], font)
        draw.text((left - pad - tw, top + i * cell + (cell - th) // 2), class_names[i], fill=_INK, font=font)
    for j, name in enumerate(class_names):
        # Column names: drawn horizontally, then turned to read bottom-up.
        tw, th = _text_size(draw, name, font)
        label = Image.new("RGB", (tw, th), _WHITE)
        ImageDraw.Draw(label).text((0, 0), name, fill=_INK, font=font)
        label = label.rotate(90, expand=True)
        canvas.paste(label, (left + j * cell + (cell - th) // 2, top - pad - tw))
    draw.rectangle([left - 1, top - 1, left + n * cell, top + n * cell], outline=_GREY)
    draw.text((left, pad), "predicted", fill=_INK, font=font)
    axis = Image.new("RGB", _text_size(draw, "ground truth", font), _WHITE)
    ImageDraw.Draw(axis).text((0, 0), "ground truth", fill=_INK, font=font)
    canvas.paste(axis.rotate(90, expand=True), (pad, top))
    key = _confusion_key(max(width, 400), numbers=cell >= CELL_TEXT, absent=bool((totals == 0).any()))
    return stacked([np.asarray(canvas), key])


def _wrap(draw: ImageDraw.ImageDraw, text: str, width: float, font) -> list[str]:
    """``text`` cut at spaces into lines at most ``width`` pixels wide (a longer word keeps its own line)."""
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def confusion_notes(numbers: bool, absent: bool) -> list[str]:
    """What the confusion picture's notes say: how to read its rows, shades, numbers (when ``numbers``: cells
    large enough to hold them) and, when ``absent``, its grey rows."""
    notes = ["Rows are the true classes, columns the predicted ones. Each row is normalised: a cell is the share "
             "of that true class's pixels predicted as the column's class, so a row sums to 100%; darker blue = "
             "a larger share."]
    if numbers:
        notes.append("Numbers are percent of the row. A blank cell: no pixel of that true class was predicted as "
                     "that class; 0: some were, under 0.5%.")
    else:
        notes.append("A white cell: no pixel of that true class was predicted as that class.")
    if absent:
        notes.append("A grey row: that class has no pixels in the ground truth of the scored images, so it has "
                     "no shares.")
    return notes


def _confusion_key(width: int, numbers: bool, absent: bool) -> np.ndarray:
    """The notes (:func:`confusion_notes`) drawn as a white band ``width`` pixels wide."""
    texts = confusion_notes(numbers, absent)
    font, pad = readable_font(12), 6
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines = [line for text in texts for line in _wrap(probe, text, width - 2 * pad, font)]
    line_h = 16
    canvas = Image.new("RGB", (width, pad + line_h * len(lines) + pad), _WHITE)
    draw = ImageDraw.Draw(canvas)
    for row, line in enumerate(lines):
        draw.text((pad, pad + row * line_h), line, fill=_INK, font=font)
    return np.asarray(canvas)
