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
import itertools
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
from fcnseg.evaluate import read_report
from fcnseg.metrics import SCORE_KEYS, format_table

# The one-stage 11-class runs, each its own recipe on the time axis.
ONE_STAGE = ("fcn8s_mf_w8", "fcn8s_mf_w4", "fcn8s_plain_w8", "fcn8s_il_w8", "fcn8s_plain_ema_w8_16k",
             "fcn8s_il_ema_w8_16k", "fcn8s_il11_ema_w8_16k", "fcn8s_il12_ema_w8_16k")
STAGED = ("fcn32s", "fcn16s", "fcn8s")
STAGES = (*STAGED, "fcn8s_atonce", *ONE_STAGE, "road_fcn8s")
# Recipes drawn against training time: runs one after the other (a staged recipe) share one time axis.
RECIPES = {"staged": STAGED, **{name: (name,) for name in ONE_STAGE}}
# Colour-blind-safe colours (Okabe and Ito), line styles (pixels on, off; None: solid) and marker shapes: run i
# of a chart gets colour i % 7, dash i % 3 and marker i % 4, so no two of its first 84 runs look alike.
COLOURS = ((0, 0, 0), (230, 159, 0), (86, 180, 233), (0, 158, 115), (0, 114, 178), (213, 94, 0), (204, 121, 167))
DASHES = (None, (10, 5), (2, 4))
MARKERS = ("circle", "square", "triangle", "diamond")
MODEL_WORDS = {"fcn32s": "FCN-32s", "fcn16s": "FCN-16s", "fcn8s": "FCN-8s", "fcn8s_atonce": "FCN-8s at once"}
WEIGHT_WORDS = {None: "no class weights", "median_frequency": "median-frequency weights"}
MAIN_TASK = "CamVid's 11 classes"  # runs whose config maps no classes
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


def x_axis(series: dict[str, tuple[list[float], list[float]]]) -> tuple[float, float, list[float]]:
    """The x range of a chart, from 0 to the last x of its data (no empty stretch after it), and its ticks."""
    end = max((x for xs, _ in series.values() for x in xs), default=1.0) or 1.0
    return 0.0, end, [x for x in nice_ticks(0, end) if x <= end]


def style(index: int) -> tuple[tuple[int, int, int], tuple[int, int] | None, str]:
    """Colour, dash pattern and marker shape of the chart's ``index``-th run."""
    return COLOURS[index % len(COLOURS)], DASHES[index % len(DASHES)], MARKERS[index % len(MARKERS)]


def draw_line(draw: ImageDraw.ImageDraw, points: list[tuple[float, float]], fill: tuple[int, int, int],
              dash: tuple[int, int] | None, width: int = 2) -> None:
    """A polyline, solid or dashed; the dash pattern runs on across the corners."""
    if dash is None:
        draw.line(points, fill=fill, width=width)
        return
    on, period, travelled = dash[0], sum(dash), 0.0
    for (xa, ya), (xb, yb) in itertools.pairwise(points):
        length, start = math.hypot(xb - xa, yb - ya), 0.0
        while start < length:
            phase = (travelled + start) % period
            end = min(length, start + (on - phase if phase < on else period - phase))
            if phase < on:
                a, b = start / length, end / length
                draw.line([(xa + a * (xb - xa), ya + a * (yb - ya)), (xa + b * (xb - xa), ya + b * (yb - ya))],
                          fill=fill, width=width)
            start = end
        travelled += length


def draw_marker(draw: ImageDraw.ImageDraw, x: float, y: float, shape: str, fill: tuple[int, int, int]) -> None:
    r = 4
    if shape == "circle":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
    elif shape == "square":
        draw.rectangle([x - r + 1, y - r + 1, x + r - 1, y + r - 1], fill=fill)
    elif shape == "triangle":
        draw.polygon([(x, y - r), (x - r, y + r - 1), (x + r, y + r - 1)], fill=fill)
    else:
        draw.polygon([(x, y - r), (x + r, y), (x, y + r), (x - r, y)], fill=fill)


def draw_panel(title: str, xlabel: str, series: dict[str, tuple[list[float], list[float]]], markers: bool,
               size: tuple[int, int] = (520, 380)) -> Image.Image:
    """One line chart with axes, ticks and grid lines; ``series`` maps a run name to (xs, ys), drawn in the
    run's :func:`style` by its place in ``series``. The x axis ends where the data ends (:func:`x_axis`)."""
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = 60, 30, size[0] - 25, size[1] - 45
    draw.text((size[0] // 2, 8), title, fill="black", font=FONT, anchor="mt")
    draw.text(((left + right) // 2, size[1] - 8), xlabel, fill="black", font=FONT, anchor="mb")
    points = [(x, y) for xs, ys in series.values() for x, y in zip(xs, ys, strict=True)]
    if not points:
        draw.text((size[0] // 2, size[1] // 2), "no data yet", fill="gray", font=FONT, anchor="mm")
        return image
    x0, x1, xticks = x_axis(series)
    yticks = nice_ticks(min(y for _, y in points), max(y for _, y in points))
    y0, y1 = yticks[0], yticks[-1]

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
    for index, (xs, ys) in enumerate(series.values()):
        fill, dash, shape = style(index)
        pixels = [to_px(x, y) for x, y in zip(xs, ys, strict=True)]
        if len(pixels) > 1:
            draw_line(draw, pixels, fill, dash)
        for px, py in pixels if markers else []:
            draw_marker(draw, px, py, shape, fill)
    return image


def legend_row(names: list[str], width: int, height: int = 24) -> np.ndarray:
    """White rows with the line style (and marker) and the name of each run, in the order of the chart's
    series, below the panels so they hide no data; a name that would run past ``width`` starts a new row."""
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    places, x, y = [], 60, 0
    for name in names:
        entry = 44 + int(measure.textlength(name, font=FONT))
        if x > 60 and x + entry > width:
            x, y = 60, y + height
        places.append((x, y + height // 2))
        x += entry + 30
    strip = Image.new("RGB", (width, y + height), "white")
    draw = ImageDraw.Draw(strip)
    for index, (name, (x, middle)) in enumerate(zip(names, places, strict=True)):
        fill, dash, shape = style(index)
        draw_line(draw, [(x, middle), (x + 36, middle)], fill, dash, width=3)
        draw_marker(draw, x + 18, middle, shape, fill)
        draw.text((x + 44, middle), name, fill="black", font=FONT, anchor="lm")
    return np.asarray(strip)


def recipe_words(configs: list[dict]) -> str:
    """What a run (or runs trained one after the other) did, in words, from their config.yaml: for legends."""
    models = " > ".join(MODEL_WORDS.get(c.get("model"), str(c.get("model"))) for c in configs)
    config = configs[-1]
    if len(configs) > 1:
        models = f"staged {models}"
    elif config.get("init_from"):  # a stage of a staged recipe, trained on from the named run's weights
        models = f"{models} from run {Path(config['init_from']).parent.name}"
    words = [models, f"1/{round(1 / config.get('width', 1))} width"]
    weights = config.get("class_weights")
    words.append(f"inverse-log weights 1/ln({config.get('inverse_log_c', 1.02):g} + share)" if weights == "inverse_log"
                 else WEIGHT_WORDS.get(weights, f"{weights} weights"))
    if config.get("ema_decay"):
        words.append("EMA")
    words.append(" + ".join(str(c.get("iterations", "?")) for c in configs) + " it.")
    return ", ".join(words)


def task_of(config: dict) -> str:
    """The classes a run learns, in words: runs of different tasks get different charts."""
    class_map = (config.get("dataset_options") or {}).get("class_map")
    if not class_map:
        return MAIN_TASK
    targets = list(dict.fromkeys(class_map.values()))
    return f"{' / '.join(targets)} ({len(targets)} classes)"


def curve_rows(configs: dict[str, dict]) -> dict[str, list[str]]:
    """The runs of each task, the main task (CamVid's 11 classes) first: each task gets its own row of charts,
    so that a 2-class run's mean IU is never drawn on the 11-class axis."""
    rows: dict[str, list[str]] = {MAIN_TASK: []}
    for name, config in configs.items():
        rows.setdefault(task_of(config), []).append(name)
    return {task: names for task, names in rows.items() if names}


def smoothed_loss(train: list[dict]) -> list[float]:
    """Trailing moving average of the logged loss: the first points average over what has been logged so far."""
    losses = [row["loss"] for row in train]
    return [statistics.fmean(losses[max(0, i - SMOOTH + 1):i + 1]) for i in range(len(losses))]


def chart_row(task: str, xlabel: str, loss: dict, miou: dict, names: list[str]) -> np.ndarray:
    """Training loss and validation mean IU of one task side by side, with the legend below."""
    panels = [draw_panel(f"{task}: training loss (moving average of {SMOOTH})", xlabel, loss, False),
              draw_panel(f"{task}: validation mean IU (%)", xlabel, miou, True)]
    body = viz.side_by_side([np.asarray(p) for p in panels], gap=10)
    return np.concatenate([body, legend_row(names, body.shape[1])])


def write_curves(logs: dict[str, tuple[list[dict], list[dict]]], configs: dict[str, dict], path: Path) -> None:
    """Loss and validation mean IU of each run by iteration, one row of charts per task."""
    xlabel = "iteration of each run (staged runs restart at 0 from the previous stage)"
    rows = []
    for task, names in curve_rows({name: configs[name] for name in logs}).items():
        loss = {name: ([row["iteration"] for row in logs[name][0]], smoothed_loss(logs[name][0])) for name in names}
        miou = {name: ([row["iteration"] for row in logs[name][1]], [100 * row["mean_iu"] for row in logs[name][1]])
                for name in names}
        rows.append(chart_row(task, xlabel, loss, miou, [recipe_words([configs[name]]) for name in names]))
    viz.save_png(path, viz.stacked(rows or [chart_row(MAIN_TASK, xlabel, {}, {}, [])]))


def minutes_of(train: list[dict], val: list[dict], per_iteration: int, start: float) -> tuple[dict, dict]:
    """Minutes of training (validation included: each logged images/s covers everything since the previous
    row) at each training row and each validation row of one run, counted from ``start``."""
    at, previous, clock = {}, 0.0, start
    for row in train:
        clock += (row["iteration"] - previous) * per_iteration / row["images_per_s"] / 60
        at[row["iteration"]], previous = clock, row["iteration"]
    return at, {row["iteration"]: at.get(row["iteration"], clock) for row in val}


def write_time_curves(logs: dict[str, tuple[list[dict], list[dict]]], configs: dict[str, dict], path: Path) -> None:
    """Loss and validation mean IU of each recipe against minutes of training on one core."""
    loss, miou, words = {}, {}, []
    for recipe, names in RECIPES.items():
        if not all(name in logs for name in names):
            note(f"{recipe}: not every run of {', '.join(names)} has a log; not in {path.name}")
            continue
        clock, loss[recipe], miou[recipe] = 0.0, ([], []), ([], [])
        for name in names:
            train, val = logs[name]
            config = configs[name]
            at, val_at = minutes_of(train, val, config.get("batch_size", 0) * config.get("grad_accum", 1), clock)
            loss[recipe][0].extend(at.values())
            loss[recipe][1].extend(smoothed_loss(train))
            miou[recipe][0].extend(val_at.values())
            miou[recipe][1].extend(100 * row["mean_iu"] for row in val)
            clock = max(at.values(), default=clock)
        words.append(recipe_words([configs[name] for name in names]))
    xlabel = "minutes of training, validation included (one thread)"
    viz.save_png(path, chart_row(MAIN_TASK, xlabel, loss, miou, words))


def write_overlays(runs: Path, root: Path, out: Path, count: int, nets: list[str], prefix: str = "val",
                   class_map: dict | None = None) -> None:
    segmenters = {}
    for name in nets:
        weights = runs / name / "last.pth"  # the last iteration: no checkpoint is chosen on val
        if not weights.is_file():
            note(f"{name}: no last.pth in {runs / name}; not in the overlays")
        else:
            segmenter = load(weights)
            if segmenter.info.num_classes != (2 if class_map else 11):  # another dataset's net under CamVid's key
                note(f"{name}: its net scores {segmenter.info.num_classes} classes ({segmenter.info.name}), not "
                     "CamVid's; not in the overlays")
                continue
            segmenters[name] = segmenter
    dataset = build_dataset("camvid", root, "val", **({"class_map": class_map} if class_map else {}))
    for k, index in enumerate(np.linspace(0, len(dataset) - 1, count).round().astype(int)):
        image, label = dataset.load(int(index))
        panels = [image, viz.colorize(label, dataset.info)]
        panels += [viz.overlay(image, s.predict(image), s.info, 0.7) for s in segmenters.values()]
        captions = [f"val #{index}: {dataset.sample_name(int(index))}", "ground truth", *segmenters]
        body = viz.titled(panels, captions, font_size=13)
        key = viz.legend_strip(range(dataset.info.num_classes), dataset.info, body.shape[1], font_size=13)
        viz.save_png(out / f"{prefix}_{k}.png", viz.stacked([body, key]))
        print(f"wrote {out / f'{prefix}_{k}.png'}", file=sys.stderr)


def markdown_tables(runs: Path, docs: Path, logs: dict[str, tuple[list[dict], list[dict]]]) -> str:
    scores, road = {}, []
    for name in logs:
        path = docs / name / "metrics.json"
        if not path.is_file():
            note(f"{name}: no {path} (run scripts/camvid.sh eval); not in the score tables")
            continue
        metrics = read_report(path.parent)  # undefined scores are nan, which format_table shows as "-"
        if "binary" in metrics:  # road / not road: its own table
            curve = metrics["binary"]
            cells = (curve["max_f"], curve["precision"], curve["recall"], metrics["per_class"]["road"]["iou"],
                     metrics["pixel_acc"], metrics["mean_iu"])
            road.append(f"| {name} | " + " | ".join(f"{100 * v:.1f}" for v in cells) + " |")
            continue
        scores[name] = {key: metrics[key] for key in SCORE_KEYS}
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
            cells = [s["per_class"].get(c, math.nan) for s in scores.values()]
            lines.append(f"| {c} | " + " | ".join("-" if math.isnan(v) else f"{100 * v:.1f}" for v in cells) + " |")
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
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the figures already in --docs (the committed ones, when --docs is the default)")
    parser.add_argument("--overlay-nets", nargs="+", default=["fcn8s", "fcn8s_il_ema_w8_16k", "fcn8s_il12_ema_w8_16k"],
                        help="11-class runs shown in the val overlays")
    args = parser.parse_args(argv)
    try:
        return report(args)
    except (DataError, WeightsError, FileNotFoundError, ValueError) as error:
        print(f"camvid_report: error: {error}", file=sys.stderr)
        return 2


def report(args: argparse.Namespace) -> int:
    logs, configs = {}, {}
    for name in args.nets:
        if not (args.runs / name / "metrics.csv").is_file() or not (args.runs / name / "config.yaml").is_file():
            note(f"{name}: no metrics.csv and config.yaml in {args.runs / name}; run not started")
        else:
            config = yaml.safe_load((args.runs / name / "config.yaml").read_text()) or {}
            if config.get("dataset", "camvid") != "camvid":  # drawn as a CamVid run, under CamVid's legend
                note(f"{name}: a run on {config.get('dataset')}, not camvid; not reported")
                continue
            logs[name], configs[name] = read_log(args.runs / name / "metrics.csv"), config
            if not logs[name][1]:
                note(f"{name}: no validation rows in metrics.csv yet")
    figures = [args.docs / "curves.png", args.docs / "curves_time.png"]
    if args.overlays > 0:
        figures += [args.docs / "overlays" / f"{prefix}_{k}.png" for prefix in ("val", "road")
                    for k in range(args.overlays)]
    if not logs:  # a clone without runs: empty charts replaced the committed figures
        note(f"no run under {args.runs} to report: no figure written")
        return 0
    existing = [path for path in figures if path.exists()]
    if existing and not args.overwrite:
        more = f" and {len(existing) - 1} more figure(s)" if len(existing) > 1 else ""
        raise ValueError(f"{existing[0]}{more} already exist: pass --overwrite to replace them, or give another "
                         "--docs")
    write_curves(logs, configs, args.docs / "curves.png")
    write_time_curves(logs, configs, args.docs / "curves_time.png")
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
