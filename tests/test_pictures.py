"""The pictures people look at: the demo's overlays, predict's side by side, eval's confusion picture and the
CamVid report's training curves; each says what it shows (titles, legends, notes) and is large enough to read."""

import argparse
import math
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from fcnseg import viz
from fcnseg.checkpoint import save_model
from fcnseg.commands.demo import STAGES, show_shipped_net, write_overlays
from fcnseg.commands.predict import add_parser
from fcnseg.data.info import SYNTHETIC_ROADS, VOC
from fcnseg.data.synthetic import SyntheticRoads, render_scene

from .helpers import load_script, random_fcn

INFO = SYNTHETIC_ROADS
REPORT_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "camvid_report.py"


def colours_in(picture: np.ndarray) -> set[tuple[int, ...]]:
    return {tuple(int(c) for c in pixel) for pixel in picture.reshape(-1, 3)}


def palette_colours(class_ids) -> set[tuple[int, ...]]:
    return {tuple(INFO.palette[i]) for i in class_ids}


def non_white_rows(picture: np.ndarray) -> np.ndarray:
    return np.flatnonzero((picture != 255).any(axis=(1, 2)))


def panel_rows(picture: np.ndarray, column: int) -> np.ndarray:
    """The rows where ``column`` (inside a panel, outside any legend or title) is not white."""
    return np.flatnonzero((picture[:, column] != 255).any(axis=1))


# --- fcnseg predict's side by side --------------------------------------------------------------------------

def labels_with(classes, height=24, width=30, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.choice(np.asarray(classes, dtype=np.uint8), size=(height, width))


def small_image(height=24, width=30) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_prediction_picture_enlarges_small_inputs_without_new_colours():
    image = small_image()
    labels = labels_with([0, 2, 5])
    picture = viz.prediction_picture(image, labels, INFO)
    assert picture.shape[1] >= viz.MIN_PICTURE_WIDTH
    factor = math.ceil((viz.MIN_PICTURE_WIDTH - 8) / (3 * 30))
    # The mask panel (the last one) is the colour picture with each pixel repeated factor x factor times.
    rows = panel_rows(picture, picture.shape[1] - 1)
    assert len(rows) == 24 * factor and np.all(np.diff(rows) == 1)
    mask_panel = picture[rows[0]:rows[-1] + 1, picture.shape[1] - 30 * factor:]
    np.testing.assert_array_equal(mask_panel, viz.upscale(viz.colorize(labels, INFO), factor))
    assert colours_in(mask_panel) == palette_colours([0, 2, 5])


def test_prediction_picture_titles_and_legend_of_the_classes_present():
    labels = labels_with([0, 2, 5])
    picture = viz.prediction_picture(small_image(), labels, INFO)
    rows = panel_rows(picture, picture.shape[1] - 1)
    title_band, key = picture[:rows[0]], picture[rows[-1] + 1:]
    assert rows[0] > 10 and len(colours_in(title_band)) > 1  # titles drawn above the panels
    assert key.shape[0] > 10
    listed = colours_in(key)
    assert palette_colours([0, 2, 5]) <= listed  # every class present has its swatch
    assert not palette_colours([3, 4, 6, 7]) & listed  # and only those (building, grey, is like anti-aliased text)


def test_prediction_picture_leaves_large_inputs_their_size():
    image = np.zeros((40, 400, 3), dtype=np.uint8)
    picture = viz.prediction_picture(image, np.zeros((40, 400), dtype=np.uint8), INFO)
    assert picture.shape[1] == 3 * 400 + 2 * 4


def test_prediction_picture_of_a_huge_or_strip_input_stays_within_8k_wide_and_readable():
    # An 8000x6000 photo gave a 24008-pixel-wide picture (40 s, most of 4 GB); a 1x40000 strip a 120008x5501 one
    # (660 megapixels, 1500-pixel letters). Shown by every n-th pixel now, the text kept to the panels' height.
    labels = np.tile(np.arange(8, dtype=np.uint8).repeat(1000), (6000 // 1000, 1))[:, :8000]
    labels = np.repeat(labels, 1000, axis=0)[:6000]
    photo = viz.prediction_picture(np.zeros((6000, 8000, 3), dtype=np.uint8), labels, INFO)
    assert photo.shape[1] == 3 * (8000 // 4) + 2 * 4 and photo.shape[0] < 3000  # every 4th pixel
    strip = viz.prediction_picture(np.zeros((1, 40000, 3), dtype=np.uint8), np.zeros((1, 40000), np.uint8), INFO)
    assert strip.shape[1] <= viz.MAX_PICTURE_WIDTH and strip.shape[0] < 400, strip.shape
    tall = viz.prediction_picture(np.zeros((20000, 2560, 3), dtype=np.uint8), np.zeros((20000, 2560), np.uint8), INFO)
    assert tall.shape[0] < viz.MAX_PICTURE_HEIGHT + 400 and tall.shape[1] <= viz.MAX_PICTURE_WIDTH, tall.shape
    edge = viz.prediction_picture(np.zeros((10, 2560, 3), dtype=np.uint8), np.zeros((10, 2560), np.uint8), INFO)
    assert edge.shape[1] <= viz.MAX_PICTURE_WIDTH, edge.shape  # the gaps counted (7688 wide)
    # A class on every other column of a 2561-wide input falls between the pixels shown: the legend still lists it.
    thin = np.zeros((100, 2561), np.uint8)
    thin[:, 1::2] = 2
    legend_only = viz.prediction_picture(np.zeros((100, 2561, 3), dtype=np.uint8), thin, INFO)
    assert palette_colours([2]) <= colours_in(legend_only[-60:])
    # every n-th pixel: the classes' colours are all there, nothing blended (packed: a set of 10M tuples is slow)
    packed = set(np.unique(photo[..., 0].astype(np.int64) << 16 | photo[..., 1].astype(np.int64) << 8 | photo[..., 2]))
    assert {r << 16 | g << 8 | b for r, g, b in palette_colours(range(8))} <= packed


def test_upscale_refuses_a_factor_below_one():
    with pytest.raises(ValueError, match="factor"):
        viz.upscale(np.zeros((2, 2), dtype=np.uint8), 0)


def test_legend_strip_wraps_and_holds_every_listed_colour():
    one_row = viz.legend_strip(range(len(VOC.class_names)), VOC, 4000)
    wrapped = viz.legend_strip(range(len(VOC.class_names)), VOC, 300)
    assert wrapped.shape[1] == 300 and wrapped.shape[0] > 2 * one_row.shape[0]
    assert {tuple(c) for c in VOC.palette} <= colours_in(wrapped)
    with pytest.raises(ValueError, match="class id"):
        viz.legend_strip([21], VOC, 300)


def predict_cli(argv) -> int:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["predict", *map(str, argv)])
    return args.func(args)


def test_cli_side_by_side_is_readable_and_the_mask_stays_class_indices(tiny_checkpoint, tmp_path, one_thread):
    image = render_scene(5, 32, 40)[0]
    Image.fromarray(image).save(tmp_path / "small.png")
    out = tmp_path / "out"
    assert predict_cli([tiny_checkpoint, tmp_path / "small.png", "--out", out]) == 0
    mask = Image.open(out / "small_mask.png")
    assert mask.mode == "P" and mask.size == (40, 32)
    labels = np.asarray(mask)
    assert set(np.unique(labels)) <= set(range(INFO.num_classes))
    side = np.asarray(Image.open(out / "small_side_by_side.png").convert("RGB"))
    assert side.shape[1] >= viz.MIN_PICTURE_WIDTH
    np.testing.assert_array_equal(side, viz.prediction_picture(image, labels, INFO, 0.5))
    assert (out / "small_legend.png").is_file()  # still written for those who use it


# --- fcnseg demo's overlays ---------------------------------------------------------------------------------

def test_demo_overlays_have_titles_and_a_legend_of_every_class(tmp_path, one_thread):
    for seed, stage in enumerate(STAGES):
        save_model(random_fcn(stage, seed=seed), INFO, tmp_path / stage / "last.pth")
    [path] = write_overlays(tmp_path, count=1)
    picture = np.asarray(Image.open(path).convert("RGB"))
    image, label = SyntheticRoads(num_images=1, split="val").load(0)
    height, width = image.shape[:2]
    assert picture.shape[1] == 5 * width + 4 * 4
    rows = panel_rows(picture, 0)  # the image panel
    top = rows[0]
    assert top > 10 and len(colours_in(picture[:top])) > 1  # a title band, not uniform
    np.testing.assert_array_equal(picture[top:top + height, :width], image)
    truth = picture[top:top + height, width + 4:2 * width + 4]
    np.testing.assert_array_equal(truth, viz.colorize(label, INFO))
    key = picture[top + height:]
    assert palette_colours(range(INFO.num_classes)) <= colours_in(key)


# --- fcnseg eval's confusion picture ------------------------------------------------------------------------

def test_confusion_picture_says_how_to_read_it():
    with_absent = viz.confusion_picture([[5, 1, 0], [0, 3, 0], [0, 0, 0]], ["a", "b", "c"])
    all_present = viz.confusion_picture(np.eye(3, dtype=np.int64), ["a", "b", "c"])
    for picture in (with_absent, all_present):
        grid_bottom = np.flatnonzero((picture == 150).all(axis=2).sum(axis=1) > 50)[-1]  # the grid's outline
        notes = picture[grid_bottom + 1:]
        assert (notes.max(axis=2) < 100).sum() > 500  # dark text under the grid
    # The note about grey rows (a class with no pixels in the ground truth) is there only when one is.
    assert non_white_rows(with_absent)[-1] > non_white_rows(all_present)[-1]
    notes = " ".join(viz.confusion_notes(numbers=True, absent=True))
    assert "normalised" in notes and "100%" in notes and "blank cell" in notes.lower()
    assert "grey row" in notes.lower() and "no pixels in the ground truth" in notes
    assert "grey row" not in " ".join(viz.confusion_notes(numbers=True, absent=False)).lower()


# --- scripts/camvid_report.py's training curves -------------------------------------------------------------

@pytest.fixture(scope="module")
def report():
    return load_script(REPORT_SCRIPT)


def synthetic_run(iterations, log_every, val_every, final_iu):
    train = [{"iteration": float(i), "loss": 1.0 / (1 + i / 1000), "images_per_s": 16.0}
             for i in range(log_every, iterations + 1, log_every)]
    val = [{"iteration": float(i), "mean_iu": final_iu * i / iterations}
           for i in range(val_every, iterations + 1, val_every)]
    return train, val


RUN_CONFIGS = {
    "fcn8s_il12_ema_w8_16k": {"model": "fcn8s", "width": 0.125, "class_weights": "inverse_log", "inverse_log_c": 1.2,
                              "ema_decay": 0.999, "iterations": 16000, "batch_size": 8},
    "fcn8s_plain_w8": {"model": "fcn8s", "width": 0.125, "class_weights": None, "iterations": 12000, "batch_size": 8},
    "road_fcn8s": {"model": "fcn8s", "width": 0.125, "iterations": 1500, "batch_size": 8,
                   "dataset_options": {"class_map": {"*": "not_road", "road": "road"}}},
}


def test_curves_keep_the_road_run_off_the_11_class_axis_and_end_at_the_data(report, tmp_path, monkeypatch):
    logs = {"fcn8s_il12_ema_w8_16k": synthetic_run(16000, 50, 1000, 0.67),
            "fcn8s_plain_w8": synthetic_run(12000, 50, 1000, 0.65),
            "road_fcn8s": synthetic_run(1500, 50, 500, 0.97)}
    drawn = []
    draw_panel = report.draw_panel

    def recording(title, xlabel, series, markers, *args, **kwargs):
        drawn.append((title, dict(series)))
        return draw_panel(title, xlabel, series, markers, *args, **kwargs)

    monkeypatch.setattr(report, "draw_panel", recording)
    report.write_curves(logs, RUN_CONFIGS, tmp_path / "curves.png")
    miou = {title: series for title, series in drawn if "mean IU" in title}
    assert len(miou) == 2
    [main] = [series for title, series in miou.items() if "11 classes" in title]
    [road] = [series for title, series in miou.items() if "2 classes" in title]
    assert set(main) == {"fcn8s_il12_ema_w8_16k", "fcn8s_plain_w8"} and set(road) == {"road_fcn8s"}
    for _, series in drawn:  # every chart's x axis ends at its last iteration, with no tick past it
        start, end, ticks = report.x_axis(series)
        assert end == max(max(xs) for xs, _ in series.values()) and max(ticks) <= end
    assert report.x_axis(main)[1] == 16000 and report.x_axis(road)[1] == 1500
    assert Image.open(tmp_path / "curves.png").size[1] > 2 * 380  # two rows of charts


def test_curve_styles_differ_and_legends_say_the_recipe(report):
    styles = [report.style(i) for i in range(13)]
    assert len(set(styles)) == 13
    assert len({dash for _, dash, _ in styles}) > 1  # line styles, not colour alone
    words = report.recipe_words([RUN_CONFIGS["fcn8s_il12_ema_w8_16k"]])
    assert "inverse-log" in words and "1.2" in words and "EMA" in words and "16000" in words
    assert "no class weights" in report.recipe_words([RUN_CONFIGS["fcn8s_plain_w8"]])
    staged = report.recipe_words([{"model": "fcn32s", "width": 0.125, "iterations": 2000},
                                  {"model": "fcn16s", "width": 0.125, "iterations": 600}])
    assert staged.startswith("staged FCN-32s > FCN-16s") and "2000 + 600 it." in staged


def test_the_demo_starts_with_the_shipped_net_on_the_sample_scene(tmp_path, capsys, one_thread):
    path = show_shipped_net(tmp_path)
    picture = np.asarray(Image.open(path))
    assert picture.shape[1] >= viz.MIN_PICTURE_WIDTH  # titled panels and the legend, enlarged from 160 px
    said = capsys.readouterr().out
    assert "camvid-fcn8s" in said and str(path) in said
    shares = [int(share) for share in re.findall(r" (\d+)%", said)]
    assert 90 <= sum(shares) <= 102 and shares == sorted(shares, reverse=True)


def _run_folder(runs, name, config, rows=3):
    folder = runs / name
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    lines = ["iteration,epoch,loss,lr,images_per_s,pixel_acc,mean_acc,mean_iu,fw_iu"]
    lines += [f"{i},0,1.0,0.001,16.0,,,," for i in range(1, rows + 1)] + [f"{rows},0,,,,0.9,0.6,0.5,0.8"]
    (folder / "metrics.csv").write_text("\n".join(lines) + "\n")


def test_the_report_keeps_figures_it_was_not_asked_to_replace(report, tmp_path, capsys):
    """Found by a hostile review: on a clone without runs it replaced the committed curves with empty charts; it
    replaced a figure in --docs without asking; a run on another dataset was drawn as a CamVid run."""
    runs, docs = tmp_path / "runs", tmp_path / "docs"
    docs.mkdir()
    (docs / "curves.png").write_bytes(b"my figure")
    assert report.main(["--runs", str(runs), "--docs", str(docs), "--overlays", "0", "--nets", "fcn8s"]) == 0
    assert (docs / "curves.png").read_bytes() == b"my figure" and "no figure written" in capsys.readouterr().err
    _run_folder(runs, "fcn8s", {"dataset": "camvid", "model": "fcn8s", "iterations": 3})
    _run_folder(runs, "synthetic_net", {"dataset": "synthetic", "model": "fcn8s", "iterations": 3})
    argv = ["--runs", str(runs), "--docs", str(docs), "--overlays", "0", "--nets", "fcn8s", "synthetic_net"]
    assert report.main(argv) == 2
    assert "curves.png already exist: pass --overwrite" in capsys.readouterr().err
    assert (docs / "curves.png").read_bytes() == b"my figure"
    assert report.main([*argv, "--overwrite"]) == 0
    err = capsys.readouterr().err
    assert "synthetic_net: a run on synthetic, not camvid; not reported" in err
    assert (docs / "curves.png").read_bytes().startswith(b"\x89PNG")
