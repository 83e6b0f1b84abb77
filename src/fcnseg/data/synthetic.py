"""Procedurally generated road scenes: the built-in dataset that needs no download.

Every scene is drawn by numpy from one integer seed, so the same seed always gives the same image and
label. The image and the label map are painted together, object by object in painter's order, so the
label is exactly what is visible.

The scenes are built to make the FCN-32s / FCN-8s difference visible: every image holds thin
structures (poles and dashed lane markings, 1-3 px wide) that a stride-32 output cannot resolve. Colours
are jittered per scene and per object and overlap between classes (grey poles, grey buildings, grey
cars; bright windows and bright lane paint), and a brightness gradient plus pixel noise keep the task
from being solvable by looking at a single pixel's colour.

Classes follow :data:`fcnseg.data.info.SYNTHETIC_ROADS`.
"""

from __future__ import annotations

from typing import Unpack

import numpy as np

from fcnseg.data.base import RGB, PipelineOptions, SegmentationDataset
from fcnseg.data.info import SYNTHETIC_ROADS
from fcnseg.errors import ConfigError

SKY, BUILDING, ROAD, LANE_MARKING, POLE, CAR, TREE, SIDEWALK = range(8)

# Seed ranges per split: far apart so that val/test scenes are never training scenes.
SPLIT_SEED_OFFSETS = {"train": 0, "val": 1_000_000, "test": 2_000_000}
MAX_IMAGES_PER_SPLIT = 1_000_000

MIN_SIZE = 32  # below this the scene layout (horizon, road, poles) no longer fits


class _Canvas:
    """An RGB float image and its label map, always painted together."""

    def __init__(self, height: int, width: int) -> None:
        self.image = np.zeros((height, width, 3), dtype=np.float32)
        self.label = np.zeros((height, width), dtype=np.uint8)
        self.height = height
        self.width = width

    def fill_rect(self, top: int, bottom: int, left: int, right: int, cls: int, colour: np.ndarray) -> None:
        """Paint rows [top, bottom) x columns [left, right), clipped to the canvas."""
        top, bottom = max(top, 0), min(bottom, self.height)
        left, right = max(left, 0), min(right, self.width)
        if top >= bottom or left >= right:
            return
        self.image[top:bottom, left:right] = colour
        self.label[top:bottom, left:right] = cls

    def fill_mask(self, mask: np.ndarray, cls: int, colour: np.ndarray, top: int = 0, left: int = 0) -> None:
        """Paint where ``mask`` is true; ``mask`` covers the window starting at (top, left)."""
        h, w = mask.shape
        self.image[top : top + h, left : left + w][mask] = colour
        self.label[top : top + h, left : left + w][mask] = cls


def _jitter(rng: np.random.Generator, colour: tuple[int, int, int], amount: float) -> np.ndarray:
    """``colour`` shifted by a common brightness offset and a smaller per-channel offset."""
    base = np.asarray(colour, dtype=np.float32)
    shift = rng.uniform(-amount, amount) + rng.uniform(-amount / 3, amount / 3, size=3)
    return np.clip(base + shift, 0, 255).astype(np.float32)


def _grey(rng: np.random.Generator, low: float, high: float) -> np.ndarray:
    """A near-neutral grey: the colour several classes share."""
    value = rng.uniform(low, high)
    return np.clip(value + rng.uniform(-8, 8, size=3), 0, 255).astype(np.float32)


def render_scene(seed: int, height: int = 128, width: int = 160) -> tuple[np.ndarray, np.ndarray]:
    """Draw one road scene.

    Returns ``(image, label)``: an HxWx3 uint8 RGB image and an HxW uint8 label map with the
    :data:`SYNTHETIC_ROADS` class indices 0-7. The same ``seed`` and size always give the same arrays.
    """
    if height < MIN_SIZE or width < MIN_SIZE:
        raise ConfigError(f"scenes need at least {MIN_SIZE}x{MIN_SIZE} pixels, got {height}x{width}")
    rng = np.random.default_rng(seed)
    canvas = _Canvas(height, width)
    rows = np.arange(height, dtype=np.float32)
    cols = np.arange(width, dtype=np.float32)

    horizon = int(rng.uniform(0.36, 0.52) * height)
    _draw_sky(rng, canvas, horizon, rows)
    _draw_buildings(rng, canvas, horizon)
    road = _Road(rng, height, width, horizon)
    _draw_ground(rng, canvas, road, cols)
    _draw_lane_markings(rng, canvas, road, cols)

    # Cars, poles and trees are painted far to near (by the row they stand on) so nearer objects occlude.
    objects = _place_cars(rng, road) + _place_poles(rng, road) + _place_trees(rng, road)
    objects.sort(key=lambda item: item[0])
    for _, draw in objects:
        draw(rng, canvas)

    image = _finish(rng, canvas.image, rows, cols)
    return image, canvas.label


def _draw_sky(rng: np.random.Generator, canvas: _Canvas, horizon: int, rows: np.ndarray) -> None:
    # Clear blue or overcast grey: overcast sky overlaps building greys.
    if rng.random() < 0.7:
        top = _jitter(rng, (90, 140, 210), 30)
    else:
        top = _grey(rng, 150, 215)
    bottom = np.clip(top + rng.uniform(20, 50), 0, 255)
    t = np.clip(rows[: max(horizon, 1)] / max(horizon, 1), 0, 1)[:, None]
    canvas.image[: max(horizon, 1)] = (top * (1 - t) + bottom * t)[:, None, :]
    canvas.label[:] = SKY


_BUILDING_COLOURS = ((120, 120, 120), (170, 160, 140), (150, 80, 60), (100, 110, 130), (190, 185, 175))


def _draw_buildings(rng: np.random.Generator, canvas: _Canvas, horizon: int) -> None:
    """A skyline of rectangles standing on the horizon, with window grids and occasional gaps."""
    width = canvas.width
    x = int(rng.integers(-10, 0))
    while x < width:
        bw = int(rng.uniform(0.08, 0.25) * width) + 3
        if rng.random() < 0.15:  # a gap shows the sky down to the horizon
            x += bw
            continue
        bh = int(rng.uniform(0.15, 0.85) * horizon) + 2
        top = horizon - bh
        colour = _jitter(rng, _BUILDING_COLOURS[rng.integers(len(_BUILDING_COLOURS))], 25)
        canvas.fill_rect(top, horizon, x, x + bw, BUILDING, colour)
        _draw_windows(rng, canvas, top, horizon, x, x + bw, colour)
        x += bw


def _draw_windows(rng: np.random.Generator, canvas: _Canvas, top: int, bottom: int, left: int, right: int,
                  wall: np.ndarray) -> None:
    """A regular grid of window rectangles: darker glass, or bright reflections (lane-paint bright)."""
    if rng.random() < 0.15:
        return
    period_y, period_x = int(rng.integers(4, 8)), int(rng.integers(4, 8))
    win_h, win_w = int(rng.integers(2, period_y)), int(rng.integers(2, period_x))
    top_c, left_c = max(top + 2, 0), max(left + 2, 0)
    bottom_c, right_c = min(bottom - 2, canvas.height), min(right - 2, canvas.width)
    if bottom_c <= top_c or right_c <= left_c:
        return
    yy = np.arange(top_c, bottom_c)[:, None] - top_c
    xx = np.arange(left_c, right_c)[None, :] - left_c
    mask = (yy % period_y < win_h) & (xx % period_x < win_w)
    glass = _grey(rng, 190, 245) if rng.random() < 0.3 else np.clip(wall * rng.uniform(0.3, 0.7), 0, 255)
    canvas.fill_mask(mask, BUILDING, glass, top_c, left_c)


class _Road:
    """Perspective road geometry: a trapezoid from the bottom edge narrowing to a vanishing point."""

    def __init__(self, rng: np.random.Generator, height: int, width: int, horizon: int) -> None:
        self.height, self.width, self.horizon = height, width, horizon
        self.vanish_x = rng.uniform(0.35, 0.65) * width
        self.bottom_x = self.vanish_x + rng.uniform(-0.15, 0.15) * width
        self.bottom_half_width = rng.uniform(0.28, 0.45) * width

    def depth(self, y: np.ndarray | float) -> np.ndarray | float:
        """0 at the horizon, 1 at the bottom row: the perspective scale of row ``y``."""
        return (np.asarray(y, dtype=np.float32) - self.horizon) / (self.height - 1 - self.horizon)

    def centre(self, y: np.ndarray | float) -> np.ndarray | float:
        return self.vanish_x + (self.bottom_x - self.vanish_x) * self.depth(y)

    def half_width(self, y: np.ndarray | float) -> np.ndarray | float:
        return self.bottom_half_width * self.depth(y)


def _draw_ground(rng: np.random.Generator, canvas: _Canvas, road: _Road, cols: np.ndarray) -> None:
    """Sidewalk everywhere below the horizon, then the road trapezoid on top of it."""
    sidewalk = _grey(rng, 125, 185) if rng.random() < 0.6 else _jitter(rng, (170, 130, 115), 20)
    canvas.fill_rect(road.horizon, canvas.height, 0, canvas.width, SIDEWALK, sidewalk)
    ys = np.arange(road.horizon, canvas.height, dtype=np.float32)
    centre, half = road.centre(ys), road.half_width(ys)
    mask = (cols[None, :] >= (centre - half)[:, None]) & (cols[None, :] < (centre + half)[:, None])
    canvas.fill_mask(mask, ROAD, _grey(rng, 60, 115), road.horizon, 0)


def _draw_lane_markings(rng: np.random.Generator, canvas: _Canvas, road: _Road, cols: np.ndarray) -> None:
    """Dashed lines along the road, 1-3 px wide, with dash lengths shrinking towards the horizon."""
    offsets = [0.0] if rng.random() < 0.5 else [-1 / 3, 1 / 3]
    paint = _jitter(rng, (235, 235, 230), 20) if rng.random() < 0.7 else _jitter(rng, (230, 200, 60), 20)
    # Dashes are periodic in 1/depth, i.e. equally spaced on the ground plane.
    frequency, phase, duty = rng.uniform(0.7, 1.4), rng.random(), rng.uniform(0.4, 0.6)
    top = road.horizon + 1
    ys = np.arange(top, canvas.height, dtype=np.float32)
    depth = road.depth(ys)
    centre, half = road.centre(ys), road.half_width(ys)
    line_width = np.minimum(1 + (depth * 3).astype(np.int64), 3)
    # Near the vanishing point dashes would be unrecognisable specks.
    drawn = (depth >= 0.12) & ((frequency / np.maximum(depth, 1e-3) + phase) % 1.0 < duty)
    if len(offsets) > 1:  # keep neighbouring lines from touching, so each stays a thin run
        drawn &= (offsets[-1] - offsets[0]) * half >= line_width + 3
    mask = np.zeros((len(ys), canvas.width), dtype=bool)
    for offset in offsets:
        left = np.round(centre + offset * half - line_width / 2).astype(np.int64)
        mask |= (cols[None, :] >= left[:, None]) & (cols[None, :] < (left + line_width)[:, None])
    mask &= drawn[:, None]
    canvas.fill_mask(mask, LANE_MARKING, paint, top, 0)


def _place_cars(rng: np.random.Generator, road: _Road) -> list:
    """Cars standing on the road: (bottom row, drawing function) pairs."""
    placed = []
    count = int(rng.choice([0, 1, 2, 3], p=[0.1, 0.35, 0.35, 0.2]))
    for _ in range(count):
        depth = rng.uniform(0.25, 1.0)
        bottom = int(road.horizon + depth * (road.height - 1 - road.horizon))
        car_w = max(int(0.32 * road.width * depth * rng.uniform(0.8, 1.2)), 5)
        car_h = max(int(car_w * rng.uniform(0.55, 0.8)), 4)
        centre = float(road.centre(bottom)) + rng.uniform(-0.6, 0.6) * float(road.half_width(bottom))
        left = int(round(centre - car_w / 2))
        if rng.random() < 0.3:
            body = _grey(rng, 60, 210)  # grey/white/black cars share colours with road and buildings
        else:
            body = rng.uniform(20, 230, size=3).astype(np.float32)
        placed.append((bottom, _car_painter(bottom, left, car_w, car_h, body)))
    return placed


def _car_painter(bottom: int, left: int, car_w: int, car_h: int, body: np.ndarray):
    def draw(rng: np.random.Generator, canvas: _Canvas) -> None:
        top = bottom - car_h
        cabin_h = max(car_h * 2 // 5, 1)
        inset = max(car_w // 6, 1)
        canvas.fill_rect(top + cabin_h, bottom, left, left + car_w, CAR, body)  # lower body
        canvas.fill_rect(top, top + cabin_h, left + inset, left + car_w - inset, CAR, body * 0.9)  # cabin
        glass = np.clip(body * rng.uniform(0.2, 0.45), 0, 255)
        canvas.fill_rect(top + 1, top + cabin_h, left + inset + 1, left + car_w - inset - 1, CAR, glass)
        wheel_w, wheel_h = max(car_w // 5, 1), max(car_h // 5, 1)
        tyre = _grey(rng, 15, 40)
        canvas.fill_rect(bottom - wheel_h, bottom, left + 1, left + 1 + wheel_w, CAR, tyre)
        canvas.fill_rect(bottom - wheel_h, bottom, left + car_w - 1 - wheel_w, left + car_w - 1, CAR, tyre)

    return draw


def _sidewalk_spot(rng: np.random.Generator, road: _Road, depth: float, width: int) -> tuple[int, int]:
    """A (row, left column) at ``depth`` where an object ``width`` px wide stands on the sidewalk.

    Returns (-1, -1) when no sidewalk fits at that depth (near the bottom the road can fill the view).
    """
    y = int(road.horizon + depth * (road.height - 1 - road.horizon))
    for _ in range(4):
        edge_gap = rng.uniform(2, 4 + 0.25 * road.width * depth)
        if rng.random() < 0.5:
            left = int(float(road.centre(y)) - float(road.half_width(y)) - edge_gap) - width
        else:
            left = int(float(road.centre(y)) + float(road.half_width(y)) + edge_gap)
        if 0 <= left and left + width <= road.width:
            return y, left
    return -1, -1


def _place_poles(rng: np.random.Generator, road: _Road) -> list:
    """2-5 thin poles on the sidewalks, tall enough to reach above the horizon."""
    placed = []
    taken: list[tuple[int, int]] = []  # column spans, padded so that two poles never touch
    wanted = int(rng.integers(2, 6))
    colour = _grey(rng, 80, 170) if rng.random() < 0.7 else _jitter(rng, (60, 80, 60), 20)
    for _ in range(wanted * 4):
        if len(placed) == wanted:
            break
        depth = rng.uniform(0.15, 1.0)
        pole_w = 1 + int(depth > 0.4) + int(depth > 0.75)  # nearer poles are wider, never above 3 px
        bottom, left = _sidewalk_spot(rng, road, depth, pole_w)
        if bottom < 0 or any(left < end + 2 and start < left + pole_w + 2 for start, end in taken):
            continue
        taken.append((left, left + pole_w))
        # Longer than the distance to the horizon, so every pole reaches into the sky or the buildings.
        height = int((bottom - road.horizon) * rng.uniform(1.6, 3.2)) + 3
        pole_colour = np.clip(colour + rng.uniform(-15, 15), 0, 255)
        placed.append((bottom, _rect_painter(bottom - height, bottom + 1, left, left + pole_w, POLE, pole_colour)))
    return placed


def _rect_painter(top: int, bottom: int, left: int, right: int, cls: int, colour: np.ndarray):
    def draw(rng: np.random.Generator, canvas: _Canvas) -> None:
        canvas.fill_rect(top, bottom, left, right, cls, colour)

    return draw


def _place_trees(rng: np.random.Generator, road: _Road) -> list:
    """0-3 trees on the sidewalks: a trunk and a crown of overlapping discs, often over buildings."""
    placed = []
    for _ in range(int(rng.choice([0, 1, 2, 3], p=[0.15, 0.35, 0.3, 0.2]))):
        depth = rng.uniform(0.2, 1.0)
        trunk_w = max(int(4 * depth), 2)
        bottom, left = _sidewalk_spot(rng, road, depth, trunk_w)
        if bottom < 0:
            continue
        trunk_h = int((bottom - road.horizon) * rng.uniform(0.8, 1.5)) + 3
        radius = 3 + 0.12 * road.width * float(road.depth(bottom)) * rng.uniform(0.7, 1.3)
        discs = [(bottom - trunk_h + rng.uniform(-0.6, 0.4) * radius,
                  left + trunk_w / 2 + rng.uniform(-0.7, 0.7) * radius,
                  radius * rng.uniform(0.6, 1.0)) for _ in range(int(rng.integers(2, 5)))]
        leaves = _jitter(rng, (70, 120, 45), 25)
        trunk = _jitter(rng, (90, 65, 40), 15)
        placed.append((bottom, _tree_painter(bottom, left, trunk_w, trunk_h, discs, leaves, trunk)))
    return placed


def _tree_painter(bottom: int, left: int, trunk_w: int, trunk_h: int, discs: list, leaves: np.ndarray,
                  trunk: np.ndarray):
    def draw(rng: np.random.Generator, canvas: _Canvas) -> None:
        canvas.fill_rect(bottom - trunk_h, bottom + 1, left, left + trunk_w, TREE, trunk)
        for cy, cx, r in discs:
            top, bot = max(int(cy - r), 0), min(int(cy + r) + 1, canvas.height)
            lft, rgt = max(int(cx - r), 0), min(int(cx + r) + 1, canvas.width)
            if top >= bot or lft >= rgt:
                continue
            yy = np.arange(top, bot, dtype=np.float32)[:, None] - cy
            xx = np.arange(lft, rgt, dtype=np.float32)[None, :] - cx
            shade = np.clip(leaves * rng.uniform(0.8, 1.15), 0, 255)  # each disc a slightly different green
            canvas.fill_mask(yy * yy + xx * xx <= r * r, TREE, shade, top, lft)

    return draw


def _finish(rng: np.random.Generator, image: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Scene-wide lighting (a linear brightness gradient in a random direction) and pixel noise."""
    angle = rng.uniform(0, 2 * np.pi)
    strength = rng.uniform(0.1, 0.35)
    ramp = np.cos(angle) * (cols[None, :] / cols[-1] - 0.5) + np.sin(angle) * (rows[:, None] / rows[-1] - 0.5)
    gain = rng.uniform(0.8, 1.15) * (1 + strength * ramp)
    image *= gain[:, :, None]
    # Triangular noise (sum of two uniform integers): Gaussian-like, but several times cheaper to draw.
    spread = int(rng.integers(3, 9))
    image += rng.integers(-spread, spread + 1, size=image.shape, dtype=np.int16)
    image += rng.integers(-spread, spread + 1, size=image.shape, dtype=np.int16)
    image += 0.5  # round to nearest in the uint8 cast below
    np.clip(image, 0, 255, out=image)
    return image.astype(np.uint8)


class SyntheticRoads(SegmentationDataset):
    """Road scenes rendered on the fly from seeds: no files, deterministic, any size.

    Sample ``i`` of a split is :func:`render_scene` with seed ``offset + i``; the train, val and test
    splits use seed ranges a million apart, so they never share a scene.
    """

    def __init__(self, num_images: int = 200, split: str = "train", height: int = 128, width: int = 160,
                 **pipeline: Unpack[PipelineOptions]) -> None:
        # generated: correct by construction, so fcnseg.data.check need not read it.
        super().__init__(info=SYNTHETIC_ROADS, inputs=RGB, generated=True, **pipeline)
        if split not in SPLIT_SEED_OFFSETS:
            raise ConfigError(f"unknown split {split!r}; choose one of {tuple(SPLIT_SEED_OFFSETS)}")
        if not 0 < num_images <= MAX_IMAGES_PER_SPLIT:
            raise ConfigError(f"num_images must be between 1 and {MAX_IMAGES_PER_SPLIT}, got {num_images}")
        if height < MIN_SIZE or width < MIN_SIZE:
            raise ConfigError(f"scenes need at least {MIN_SIZE}x{MIN_SIZE} pixels, got {height}x{width}")
        self.num_images = num_images
        self.split = split
        self.height = height
        self.width = width

    def __len__(self) -> int:
        return self.num_images

    def scene_seed(self, index: int) -> int:
        """The render seed of sample ``index``."""
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} {self.split} images")
        return SPLIT_SEED_OFFSETS[self.split] + index

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return render_scene(self.scene_seed(index), self.height, self.width)

    def known_size(self) -> tuple[int, int]:
        return self.height, self.width

    def sample_name(self, index: int) -> str:
        return f"{self.split}_{index:06d}"
