import os

import numpy as np
import pytest
from PIL import Image

from fcnseg.data.info import SYNTHETIC_ROADS, VOC
from fcnseg.viz import colorize, legend, overlay, present_classes, save_index_png, save_png, side_by_side

INFO = SYNTHETIC_ROADS  # 0 sky (70,130,180), 2 road (128,64,128), 3 lane_marking (255,220,0)
IMAGE = np.array([[[10, 20, 30], [200, 100, 50]],
                  [[0, 0, 0], [255, 255, 255]]], dtype=np.uint8)
LABEL = np.array([[0, 2],
                  [3, 255]], dtype=np.uint8)


def test_colorize_exact_pixels():
    expected = np.array([[[70, 130, 180], [128, 64, 128]],
                         [[255, 220, 0], [255, 255, 255]]], dtype=np.uint8)  # ignore index is white
    out = colorize(LABEL, INFO)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)


def test_colorize_accepts_int64_labels():
    np.testing.assert_array_equal(colorize(LABEL.astype(np.int64), INFO), colorize(LABEL, INFO))


def test_colorize_refuses_bad_labels():
    with pytest.raises(ValueError, match="HxW"):
        colorize(np.zeros((2, 2, 1), dtype=np.uint8), INFO)
    with pytest.raises(ValueError, match="integer"):
        colorize(np.zeros((2, 2), dtype=np.float32), INFO)


def test_overlay_exact_pixels():
    # 0.75 * image + 0.25 * colour, rounded half up:
    # (10,20,30) & sky (70,130,180)  -> (25, 47.5, 67.5) -> (25, 48, 68)
    # (200,100,50) & road (128,64,128) -> (182, 91, 69.5) -> (182, 91, 70)
    # (0,0,0) & lane (255,220,0)     -> (63.75, 55, 0)  -> (64, 55, 0)
    # ignore pixel keeps (255,255,255)
    expected = np.array([[[25, 48, 68], [182, 91, 70]],
                         [[64, 55, 0], [255, 255, 255]]], dtype=np.uint8)
    np.testing.assert_array_equal(overlay(IMAGE, LABEL, INFO, opacity=0.25), expected)


def test_overlay_opacity_edges():
    np.testing.assert_array_equal(overlay(IMAGE, LABEL, INFO, opacity=0.0), IMAGE)
    full = overlay(IMAGE, LABEL, INFO, opacity=1.0)
    np.testing.assert_array_equal(full[LABEL != 255], colorize(LABEL, INFO)[LABEL != 255])


def test_overlay_leaves_ignore_pixels_unchanged():
    image = np.full((2, 2, 3), 37, dtype=np.uint8)
    label = np.full((2, 2), INFO.ignore_index, dtype=np.uint8)
    label[0, 0] = 1
    out = overlay(image, label, INFO, opacity=1.0)
    np.testing.assert_array_equal(out[label == INFO.ignore_index], image[label == INFO.ignore_index])
    assert tuple(out[0, 0]) == INFO.palette[1]


def test_overlay_refuses_bad_input():
    with pytest.raises(ValueError, match="opacity"):
        overlay(IMAGE, LABEL, INFO, opacity=1.5)
    with pytest.raises(ValueError, match="label is"):
        overlay(IMAGE, LABEL[:1], INFO)


def test_side_by_side_shape_and_padding():
    a = np.zeros((5, 3, 3), dtype=np.uint8)
    b = np.zeros((2, 4), dtype=np.uint8)  # grey panel, shorter
    out = side_by_side([a, b], gap=2)
    assert out.shape == (5, 3 + 2 + 4, 3)
    assert (out[:, 3:5] == 255).all()  # the gap
    assert (out[2:, 5:] == 255).all()  # padding under the short panel
    assert (out[:2, 5:] == 0).all() and (out[:, :3] == 0).all()


def test_side_by_side_refuses_nothing():
    with pytest.raises(ValueError, match="at least one"):
        side_by_side([])


def test_legend_grows_with_classes():
    one = legend([0], INFO)
    three = legend([0, 3, 4], INFO)
    assert one.dtype == np.uint8 and one.ndim == 3 and one.shape[2] == 3
    assert three.shape[0] > one.shape[0]
    assert (three != 255).any()  # something was drawn
    # The swatch colours are there.
    for class_id in (0, 3, 4):
        assert (three == np.array(INFO.palette[class_id], dtype=np.uint8)).all(axis=2).any()


def test_legend_text_width_follows_names():
    short = legend([8], VOC)  # "cat"
    longer = legend([11], VOC)  # "diningtable"
    assert longer.shape[1] > short.shape[1]
    with pytest.raises(ValueError, match="class id"):
        legend([21], VOC)


def test_present_classes_excludes_ignore():
    assert present_classes(LABEL, INFO) == [0, 2, 3]
    assert present_classes(np.full((3, 3), 255, dtype=np.uint8), INFO) == []


def test_index_png_round_trip(tmp_path):
    label = np.array([[0, 1, 2, 3], [4, 5, 6, 7], [255, 7, 0, 0]], dtype=np.uint8)
    path = tmp_path / "deep" / "folder" / "pred.png"
    save_index_png(path, label, INFO)
    with Image.open(path) as picture:
        assert picture.mode == "P"
        np.testing.assert_array_equal(np.asarray(picture), label)
        palette = np.array(picture.getpalette(), dtype=np.uint8).reshape(-1, 3)
    np.testing.assert_array_equal(palette[: INFO.num_classes], np.array(INFO.palette, dtype=np.uint8))
    np.testing.assert_array_equal(palette[255], [255, 255, 255])


def test_save_png_round_trip_and_no_temp_files(tmp_path):
    array = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    path = tmp_path / "out" / "picture.png"
    save_png(path, array)
    save_png(path, array[::-1])  # overwrite in place
    with Image.open(path) as picture:
        np.testing.assert_array_equal(np.asarray(picture), array[::-1])
    assert os.listdir(path.parent) == ["picture.png"]


def test_failed_save_leaves_no_temp_file(tmp_path):
    with pytest.raises(ValueError):
        save_png(tmp_path / "bad.png", np.zeros((2, 2), dtype=np.float32))
    target = tmp_path / "target.png"
    target.mkdir()  # os.replace onto a folder fails after the temp file is written
    with pytest.raises(OSError):
        save_png(target, np.zeros((2, 2), dtype=np.uint8))
    assert sorted(os.listdir(tmp_path)) == ["target.png"]


def test_saved_files_get_the_usual_permissions(tmp_path):
    import stat

    save_png(tmp_path / "a.png", np.zeros((2, 2, 3), np.uint8))
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "a.png").stat().st_mode) == 0o666 & ~mask


def test_overlay_in_blocks_of_rows_equals_the_formula_on_the_whole_image(monkeypatch):
    # Blended in blocks of rows (float64 copies of an 8000x6000 photo took 1.9 GB): the same values as the formula
    # on the whole image, ignored pixels included, across the blocks' edges.
    import fcnseg.viz as viz

    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (37, 11, 3), dtype=np.uint8)
    label = rng.integers(0, 8, (37, 11)).astype(np.uint8)
    label[5:9] = 255
    monkeypatch.setattr(viz, "_BLEND_PIXELS", 50)  # four rows a block
    colours = np.asarray(SYNTHETIC_ROADS.palette, dtype=np.float64)[np.minimum(label, 7)]
    expected = np.floor(0.5 * image + 0.5 * colours + 0.5).astype(np.uint8)  # 0.5: exact in binary
    expected[label == 255] = image[label == 255]
    np.testing.assert_array_equal(overlay(image, label, SYNTHETIC_ROADS), expected)


def test_overlay_of_a_large_photo_allocates_about_its_output_not_float_copies_of_it():
    # 6000x2000 (36 MB of pixels): float64 copies of the whole image and its colours peaked at 12x the image.
    import tracemalloc

    image = np.zeros((6000, 2000, 3), dtype=np.uint8)
    label = np.zeros((6000, 2000), dtype=np.uint8)
    tracemalloc.start()
    try:
        overlay(image, label, SYNTHETIC_ROADS)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < image.nbytes + 120 * 2**20, peak / 2**20  # the output, and a block's temporaries
