"""Figures and Markdown tables for docs/camvid.md from whatever CamVid runs exist so far.

Writes ``<docs>/curves.png`` (training loss and validation mean IU by iteration, PIL only),
``<docs>/curves_time.png`` (the same against minutes of training, staged recipes end to end) and
``<docs>/overlays/{val,road}_<k>.png`` (last.pth of each run: no checkpoint is chosen on val), then prints
Markdown (Table 2 layout, per-class IoU, road / not road, training cost) to stdout. What is missing (runs not
started, no checkpoint, no metrics.json) is reported on stderr, so stdout can be pasted as it is.

Each run is plotted against its own iteration count: the staged FCN-16s and FCN-8s start from the previous
stage's weights but restart their iteration (and learning-rate schedule) at 0, so the axis reads
"iterations of this run", not cumulative training. Run from the repo root: .venv/bin/python scripts/camvid_report.py
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw, ImageFont

from fcnseg import viz
from fcnseg.api import load
from fcnseg.data.registry import build_dataset
from fcnseg.errors import DataError, WeightsError
from fcnseg.metrics import SCORE_KEYS, format_table

# The one-stage 11-class runs, each its own recipe on the time axis.
ONE_STAGE = ("fcn8s_mf_w8", "fcn8s_mf_w4", "fcn8s_plain_w8", "fcn8s_il_w8", "fcn8s_plain_ema_w8_16k",
             "fcn8s_il_ema_w8_16k", "fcn8s_il11_ema_w8_16k", "fcn8s_il12_ema_w8_16k")
STAGED = ("fcn32s", "fcn16s", "fcn8s")
STAGES = (*STAGED, "fcn8s_atonce", *ONE_STAGE, "road_fcn8s")
PALETTE = ((214, 39, 40), (255, 127, 14), (44, 160, 44), (31, 119, 180), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (0, 0, 128), (0, 0, 0))
# Recipes drawn against training time: runs one after the other (a staged recipe) share one time axis.
RECIPES = {"before: staged fcn32s > fcn16s > fcn8s": STAGED, **{name: (name,) for name in ONE_STAGE}}
FONT = ImageFont.load_default(size=13)
SMOOTH = 5  # logged points in the loss moving average


def note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


def read_log(path: Path) -> tuple[list[dict], list[dict]]:
    """Training rows (with loss) and validation rows (with mean_iu) of a metrics.csv, values as floats."""
    train, val = [], []
    with path.open(newline="") as handle:
        for number, row in enumerate(csv.DictReader(handle), start=2):
            try:
                if None in row.values():  # csv fills the fields of a short line with None
                    raise ValueError
                values = {key: float(value) for key, value in row.items() if value}
            except ValueError:  # a line cut short while training is still writing it
                note(f"{path} line {number} is incomplete; left out")
                continue
            (train if "loss" in values else val if "mean_iu" in values else []).append(values)
    return train, val


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten apart) covering lo..hi."""
    if hi <= lo:
        hi = lo + 1.0
    power = 10 ** math.floor(math.log10((hi - lo) / count))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= (hi - lo) / count)
    return [i * step for i in range(math.floor(lo / step), math.ceil(hi / step) + 1)]


def draw_panel(title: str, xlabel: str, series: dict[str, tuple[list[float], list[float]]], markers: bool,
               size: tuple[int, int] = (520, 380)) -> Image.Image:
    """One line chart with axes, ticks and grid lines; ``series`` maps a run name to (xs, ys)."""
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = 60, 30, size[0] - 15, size[1] - 45
    draw.text((size[0] // 2, 8), title, fill="black", font=FONT, anchor="mt")
    draw.text(((left + right) // 2, size[1] - 8), xlabel, fill="black", font=FONT, anchor="mb")
    points = [(x, y) for xs, ys in series.values() for x, y in zip(xs, ys, strict=True)]
    if not points:
        draw.text((size[0] // 2, size[1] // 2), "no data yet", fill="gray", font=FONT, anchor="mm")
        return image
    xticks = nice_ticks(0, max(x for x, _ in points))
    yticks = nice_ticks(min(y for _, y in points), max(y for _, y in points))
    (x0, x1), (y0, y1) = (xticks[0], xticks[-1]), (yticks[0], yticks[-1])

    def to_px(x: float, y: float) -> tuple[float, float]:
        return left + (x - x0) / (x1 - x0) * (right - left), bottom - (y - y0) / (y1 - y0) * (bottom - top)

    for x in xticks:
        px, _ = to_px(x, y0)
        draw.line([(px, top), (px, bottom)], fill=(230, 230, 230))
        draw.text((px, bottom + 4), f"{x:g}", fill="black", font=FONT, anchor="mt")
    for y in yticks:
        _, py = to_px(x0, y)
        draw.line([(left, py), (right, py)], fill=(230, 230, 230))
        draw.text((left - 4, py), f"{y:g}", fill="black", font=FONT, anchor="rm")
    draw.rectangle([left, top, right, bottom], outline="black")
    for name, (xs, ys) in series.items():
        pixels = [to_px(x, y) for x, y in zip(xs, ys, strict=True)]
        if len(pixels) > 1:
            draw.line(pixels, fill=colour(series, name), width=2)
        for px, py in pixels if markers else []:
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour(series, name))
    return image


def colour(series: dict, name: str) -> tuple[int, int, int]:
    return PALETTE[list(series).index(name) % len(PALETTE)]


def legend_row(names: list[str], width: int, height: int = 24) -> np.ndarray:
    """White rows with a coloured line and the name of each run, below the panels so they hide no data;
    a name that would run past ``width`` starts a new row."""
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    places, x, y = [], 60, 0
    for name in names:
        entry = 30 + int(measure.textlength(name, font=FONT))
        if x > 60 and x + entry > width:
            x, y = 60, y + height
        places.append((x, y + height // 2))
        x += entry + 30
    strip = Image.new("RGB", (width, y + height), "white")
    draw = ImageDraw.Draw(strip)
    for i, (name, (x, middle)) in enumerate(zip(names, places, strict=True)):
        draw.line([(x, middle), (x + 24, middle)], fill=PALETTE[i % len(PALETTE)], width=3)
        draw.text((x + 30, middle), name, fill="black", font=FONT, anchor="lm")
    return np.asarray(strip)


def write_curves(logs: dict[str, tuple[list[dict], list[dict]]], path: Path) -> None:
    loss, miou = {}, {}
    for name, (train, val) in logs.items():
        losses = [row["loss"] for row in train]
        # Trailing moving average: the first points average over what has been logged so far.
        smooth = [statistics.fmean(losses[max(0, i - SMOOTH + 1):i + 1]) for i in range(len(losses))]
        loss[name] = ([row["iteration"] for row in train], smooth)
        miou[name] = ([row["iteration"] for row in val], [100 * row["mean_iu"] for row in val])
    xlabel = "iteration of each run (staged runs restart at 0 from the previous stage)"
    panels = [draw_panel(f"training loss (moving average of {SMOOTH} logged points)", xlabel, loss, False),
              draw_panel("validation mean IU (%)", xlabel, miou, True)]
    body = viz.side_by_side([np.asarray(p) for p in panels], gap=10)
    viz.save_png(path, np.concatenate([body, legend_row(list(logs), body.shape[1])]))


def minutes_of(train: list[dict], val: list[dict], per_iteration: int, start: float) -> tuple[dict, dict]:
    """Minutes of training (validation included: each logged images/s covers everything since the previous
    row) at each training row and each validation row of one run, counted from ``start``."""
    at, previous, clock = {}, 0.0, start
    for row in train:
        clock += (row["iteration"] - previous) * per_iteration / row["images_per_s"] / 60
        at[row["iteration"]], previous = clock, row["iteration"]
    return at, {row["iteration"]: at.get(row["iteration"], clock) for row in val}


def write_time_curves(runs: Path, logs: dict[str, tuple[list[dict], list[dict]]], path: Path) -> None:
    """Loss and validation mean IU of each recipe against minutes of training on one core."""
    loss, miou = {}, {}
    for recipe, names in RECIPES.items():
        if not all(name in logs for name in names):
            note(f"{recipe}: not every run of {', '.join(names)} has a log; not in {path.name}")
            continue
        clock, loss[recipe], miou[recipe] = 0.0, ([], []), ([], [])
        for name in names:
            train, val = logs[name]
            config = yaml.safe_load((runs / name / "config.yaml").read_text()) or {}
            at, val_at = minutes_of(train, val, config.get("batch_size", 0) * config.get("grad_accum", 1), clock)
            losses = [row["loss"] for row in train]
            loss[recipe][0].extend(at.values())
            loss[recipe][1].extend(statistics.fmean(losses[max(0, i - SMOOTH + 1):i + 1]) for i in range(len(losses)))
            miou[recipe][0].extend(val_at.values())
            miou[recipe][1].extend(100 * row["mean_iu"] for row in val)
            clock = max(at.values(), default=clock)
    xlabel = "minutes of training, validation included (one thread)"
    panels = [draw_panel(f"training loss (moving average of {SMOOTH} logged points)", xlabel, loss, False),
              draw_panel("validation mean IU (%)", xlabel, miou, True)]
    body = viz.side_by_side([np.asarray(p) for p in panels], gap=10)
    viz.save_png(path, np.concatenate([body, legend_row(list(loss), body.shape[1])]))


def captioned(panels: list[np.ndarray], captions: list[str], gap: int = 4, height: int = 18) -> np.ndarray:
    """``viz.side_by_side`` of the panels with a white caption row naming each one above it."""
    body = viz.side_by_side(panels, gap=gap)
    strip = Image.new("RGB", (body.shape[1], height), "white")
    draw, x = ImageDraw.Draw(strip), 0
    for panel, caption in zip(panels, captions, strict=True):
        draw.text((x + panel.shape[1] // 2, height // 2), caption, fill="black", font=FONT, anchor="mm")
        x += panel.shape[1] + gap
    return np.concatenate([np.asarray(strip), body])


def write_overlays(runs: Path, root: Path, out: Path, count: int, nets: list[str], prefix: str = "val",
                   class_map: dict | None = None) -> None:
    segmenters = {}
    for name in nets:
        weights = runs / name / "last.pth"  # the last iteration: no checkpoint is chosen on val
        if not weights.is_file():
            note(f"{name}: no last.pth in {runs / name}; not in the overlays")
        else:
            segmenters[name] = load(weights)
    dataset = build_dataset("camvid", root, "val", **({"class_map": class_map} if class_map else {}))
    for k, index in enumerate(np.linspace(0, len(dataset) - 1, count).round().astype(int)):
        image, label = dataset.load(int(index))
        panels = [image, viz.colorize(label, dataset.info)]
        panels += [viz.overlay(image, s.predict(image), s.info, 0.7) for s in segmenters.values()]
        captions = [f"val #{index}: {dataset.sample_name(int(index))}", "ground truth", *segmenters]
        viz.save_png(out / f"{prefix}_{k}.png", captioned(panels, captions))
        print(f"wrote {out / f'{prefix}_{k}.png'}", file=sys.stderr)


def markdown_tables(runs: Path, docs: Path, logs: dict[str, tuple[list[dict], list[dict]]]) -> str:
    scores, road = {}, []
    for name in logs:
        path = docs / name / "metrics.json"
        if not path.is_file():
            note(f"{name}: no {path} (run scripts/camvid.sh eval); not in the score tables")
            continue
        metrics = json.loads(path.read_text())
        # metrics.json stores undefined scores as null; format_table shows NaN as "-".
        if "binary" in metrics:  # road / not road: its own table
            curve = metrics["binary"]
            cells = (curve["max_f"], curve["precision"], curve["recall"], metrics["per_class"]["road"]["iou"],
                     metrics["pixel_acc"], metrics["mean_iu"])
            road.append(f"| {name} | " + " | ".join(f"{100 * v:.1f}" for v in cells) + " |")
            continue
        scores[name] = {key: math.nan if metrics[key] is None else metrics[key] for key in SCORE_KEYS}
        scores[name]["per_class"] = {c: v["iou"] for c, v in metrics["per_class"].items()}
    parts = []
    if road:
        parts += ["Road / not road (val):", "",
                  "| run | max F | precision | recall | road IoU | pixel acc. | mean IU |",
                  "|---|---:|---:|---:|---:|---:|---:|", *road, ""]
    if scores:
        parts += ["Scores on the CamVid val split (percent, the layout of the paper's Table 2):", "",
                  format_table(scores), ""]
        classes = list(next(iter(scores.values()))["per_class"])
        lines = ["| class | " + " | ".join(scores) + " |", "|---|" + "---:|" * len(scores)]
        for c in classes:
            cells = [s["per_class"].get(c) for s in scores.values()]
            lines.append(f"| {c} | " + " | ".join("-" if v is None else f"{100 * v:.1f}" for v in cells) + " |")
        parts += ["Per-class IoU (percent):", "", *lines, ""]
    lines = ["| run | iterations | images seen | median images/s | training time |", "|---|---:|---:|---:|---:|"]
    for name, (train, _) in logs.items():
        config = yaml.safe_load((runs / name / "config.yaml").read_text()) or {}
        per_iteration = config.get("batch_size", 0) * config.get("grad_accum", 1)
        done, planned = (int(train[-1]["iteration"]) if train else 0), config.get("iterations", "?")
        # Each logged images/s covers the images since the previous log row (validation and checkpoints
        # included), so summing images / rate gives the wall time of the training loop.
        seconds, previous = 0.0, 0.0
        for row in train:
            seconds += (row["iteration"] - previous) * per_iteration / row["images_per_s"]
            previous = row["iteration"]
        rate = statistics.median(row["images_per_s"] for row in train) if train else math.nan
        progress = f"{done}" if done == planned else f"{done} of {planned}"
        lines.append(f"| {name} | {progress} | {done * per_iteration} | {rate:.1f} | "
                     f"{seconds / 60:.0f} min |")
    parts += ["Training cost (training time = sum over log rows of images / logged images/s):", "", *lines]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/camvid"))
    parser.add_argument("--docs", type=Path, default=Path("docs/camvid"))
    parser.add_argument("--root", type=Path, default=Path("../shared/data/camvid"))
    parser.add_argument("--overlays", type=int, default=3, help="number of val images to show (0: none)")
    parser.add_argument("--nets", nargs="+", default=list(STAGES), help="runs under --runs to report")
    parser.add_argument("--overlay-nets", nargs="+", default=["fcn8s", "fcn8s_il_ema_w8_16k", "fcn8s_il12_ema_w8_16k"],
                        help="11-class runs shown in the val overlays")
    args = parser.parse_args(argv)
    try:
        return report(args)
    except (DataError, WeightsError, FileNotFoundError, ValueError) as error:
        print(f"camvid_report: error: {error}", file=sys.stderr)
        return 2


def report(args: argparse.Namespace) -> int:
    logs = {}
    for name in args.nets:
        if not (args.runs / name / "metrics.csv").is_file() or not (args.runs / name / "config.yaml").is_file():
            note(f"{name}: no metrics.csv and config.yaml in {args.runs / name}; run not started")
        else:
            logs[name] = read_log(args.runs / name / "metrics.csv")
            if not logs[name][1]:
                note(f"{name}: no validation rows in metrics.csv yet")
    write_curves(logs, args.docs / "curves.png")
    write_time_curves(args.runs, logs, args.docs / "curves_time.png")
    print(f"wrote {args.docs / 'curves.png'} and {args.docs / 'curves_time.png'}", file=sys.stderr)
    if args.overlays > 0:
        write_overlays(args.runs, args.root, args.docs / "overlays", args.overlays, args.overlay_nets)
        write_overlays(args.runs, args.root, args.docs / "overlays", args.overlays, ["road_fcn8s"], "road",
                       yaml.safe_load((Path("configs/camvid/road_fcn8s.yaml")).read_text())["dataset_options"]
                       ["class_map"])
    print(markdown_tables(args.runs, args.docs, logs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
