"""read_image / read_label / check_pair: conversions and the error messages for bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fcnseg.data.info import CAMVID, KITTI_ROAD, VOC, DatasetInfo, voc_colormap
from fcnseg.data.io import (
    DataError,
    check_pair,
    decode_image,
    image_to_rgb,
    palette_color_map,
    read_depth,
    read_image,
    read_label,
    read_label_indices,
    read_mat_array,
)

H, W = 6, 8


def rgb_array(seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, (H, W, 3), dtype=np.uint8)


def palette_png(path: Path, indices: np.ndarray, palette: list[tuple[int, int, int]] | None = None) -> Path:
    img = Image.fromarray(indices.astype(np.uint8), mode="P")
    colors = palette or voc_colormap(256)
    img.putpalette([c for rgb in colors for c in rgb])
    img.save(path)
    return path


# --- read_image ---------------------------------------------------------------------------------------


def test_rgb_png_round_trip(tmp_path: Path) -> None:
    rgb = rgb_array()
    Image.fromarray(rgb).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (H, W, 3)
    np.testing.assert_array_equal(out, rgb)
    assert out.flags.writeable  # torch.from_numpy needs a writable array


def test_rgba_alpha_is_dropped_not_composited(tmp_path: Path) -> None:
    rgba = np.zeros((H, W, 4), dtype=np.uint8)
    rgba[..., :3] = rgb_array(1)
    rgba[..., 3] = 0  # fully transparent: compositing on black would give all zeros
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), rgba[..., :3])


def test_greyscale_and_grey_alpha_are_replicated(tmp_path: Path) -> None:
    grey = np.arange(H * W, dtype=np.uint8).reshape(H, W) * 5
    Image.fromarray(grey, mode="L").save(tmp_path / "l.png")
    Image.fromarray(np.stack([grey, np.full_like(grey, 7)], axis=2), mode="LA").save(tmp_path / "la.png")
    for name in ("l.png", "la.png"):
        out = read_image(tmp_path / name)
        assert out.shape == (H, W, 3)
        for channel in range(3):
            np.testing.assert_array_equal(out[..., channel], grey)


def test_palette_image_goes_through_its_palette(tmp_path: Path) -> None:
    indices = np.arange(H * W).reshape(H, W) % 3
    palette = [(10, 20, 30), (200, 100, 50), (0, 255, 7)]
    palette_png(tmp_path / "p.png", indices, palette)
    out = read_image(tmp_path / "p.png")
    np.testing.assert_array_equal(out, np.asarray(palette, dtype=np.uint8)[indices])


def test_cmyk_is_converted(tmp_path: Path) -> None:
    cmyk = np.zeros((H, W, 4), dtype=np.uint8)
    cmyk[0, 0] = (255, 0, 0, 0)  # full cyan -> (0, 255, 255)
    Image.fromarray(cmyk, mode="CMYK").save(tmp_path / "c.tif")
    out = read_image(tmp_path / "c.tif")
    assert tuple(out[0, 0]) == (0, 255, 255)
    assert tuple(out[1, 1]) == (255, 255, 255)  # no ink = white


def test_16_bit_is_scaled_by_1_over_257_not_clipped(tmp_path: Path) -> None:
    values = np.zeros((H, W), dtype=np.uint16)
    values[0, :4] = (65535, 257 * 100, 1000, 128)  # 1000/257 = 3.89 -> 4; 128/257 = 0.498 -> 0
    Image.fromarray(values).save(tmp_path / "a.png")
    assert Image.open(tmp_path / "a.png").mode == "I;16"
    out = read_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (H, W, 3)
    assert out[0, :4, 0].tolist() == [255, 100, 4, 0]
    assert (out[..., 0] == out[..., 2]).all()


def test_32_bit_and_float_pictures_are_refused_not_read_dark(tmp_path: Path) -> None:
    """A 32-bit TIFF of 0..255 was divided by 257 as if 16-bit, and a float TIFF of 0..1 became 0s and 1s: both
    read as a black picture and segmented without a word (found by a hostile review)."""
    values = (np.arange(H * W).reshape(H, W) % 256).astype(np.int32)
    Image.fromarray(values).save(tmp_path / "a.tif")
    Image.fromarray(values.astype(np.float32) / 255).save(tmp_path / "f.tif")
    assert Image.open(tmp_path / "a.tif").mode == "I" and Image.open(tmp_path / "f.tif").mode == "F"
    with pytest.raises(DataError, match=r"a\.tif: it holds 32-bit integers \(0\.\.47\) .*scale .* not known"):
        read_image(tmp_path / "a.tif")
    with pytest.raises(DataError, match=r"f\.tif: it holds floating-point values \(0\.\.0\.18.*\) .*8-bit"):
        read_image(tmp_path / "f.tif")
    with pytest.raises(DataError, match="32-bit integers"):  # a PIL image the caller made: the same
        decode_image(Image.fromarray(values))


def test_mode_i_from_a_png_is_16_bit(tmp_path: Path) -> None:
    # Older Pillow opens a 16-bit grey PNG as mode I: a PNG holds 16 bits at most, so its scale is known.
    values = np.zeros((H, W), dtype=np.int32)
    values[0, 0], values[0, 1] = 65535, 257 * 3
    opened = Image.fromarray(values)
    opened.format = "PNG"  # as Image.open of a 16-bit PNG in older Pillow gives it
    out = image_to_rgb(opened, "a.png")
    assert out[0, :2, 1].tolist() == [255, 3]


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    stored = rgb_array(2)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(stored).save(tmp_path / "a.png", exif=exif.tobytes())
    Image.fromarray(stored).save(tmp_path / "a.jpg", exif=exif.tobytes())
    out = read_image(tmp_path / "a.png")
    assert out.shape == (W, H, 3)
    np.testing.assert_array_equal(out, np.rot90(stored, k=-1))
    assert read_image(tmp_path / "a.jpg").shape == (W, H, 3)
    # A PIL image is taken as stored, as its array would be: the labels line up with the image the caller holds.
    with Image.open(tmp_path / "a.png") as held:
        np.testing.assert_array_equal(decode_image(held), stored)


def test_missing_image_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"not found: .*nope\.png"):
        read_image(tmp_path / "nope.png")


def test_random_bytes_are_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "noise.png"
    path.write_bytes(np.random.RandomState(0).bytes(300))
    with pytest.raises(DataError, match=r"noise\.png.*not an image format"):
        read_image(path)
    path.write_bytes(b"")  # an empty file says so, not "not an image format"
    for read in (read_image, lambda empty: read_label(empty, VOC)):
        with pytest.raises(DataError, match=r"noise\.png is empty \(0 bytes\): expected an image file"):
            read(path)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_files_raise_data_error(tmp_path: Path, suffix: str) -> None:
    full = tmp_path / f"full{suffix}"
    noise = np.random.RandomState(3).randint(0, 256, (64, 64, 3), dtype=np.uint8)  # incompressible
    Image.fromarray(noise).save(full)
    cut = tmp_path / f"cut{suffix}"
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=rf"image .*cut\{suffix} is truncated or corrupt"):
        read_image(cut)
    with pytest.raises(DataError, match="truncated or corrupt" if suffix == ".png" else "is a JPEG image"):
        read_label(cut, VOC)  # a label is never a JPEG, whole or not: said before decoding


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_a_pil_image_of_a_truncated_or_closed_file_is_one_data_error(tmp_path: Path, suffix: str) -> None:
    # An image opened lazily decodes in image_to_rgb: PIL's "image file is truncated" OSError, and a bare
    # AssertionError for an image closed before use, came out of Segmenter.predict as tracebacks.
    full = tmp_path / f"full{suffix}"
    Image.fromarray(np.random.RandomState(3).randint(0, 256, (64, 64, 3), dtype=np.uint8)).save(full)
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with Image.open(cut) as truncated, pytest.raises(DataError, match="cannot be decoded .*truncated or corrupt"):
        decode_image(truncated)
    with Image.open(full) as closed:
        pass
    with pytest.raises(DataError, match="closed before use"):
        decode_image(closed)


def test_a_mode_pil_cannot_convert_is_one_data_error() -> None:
    # Premultiplied "La": PIL's "conversion from La to L not supported" ValueError was a traceback.
    with pytest.raises(DataError, match="PIL mode 'La' cannot be converted to RGB"):
        image_to_rgb(Image.new("LA", (8, 8)).convert("La"))


# --- read_label ---------------------------------------------------------------------------------------


def test_palette_label_is_read_as_indices(tmp_path: Path) -> None:
    indices = np.arange(H * W).reshape(H, W) % 21
    indices[0, 0] = 255
    palette_png(tmp_path / "l.png", indices)
    label = read_label(tmp_path / "l.png", VOC)
    assert label.dtype == np.uint8 and label.shape == (H, W)
    np.testing.assert_array_equal(label, indices)


@pytest.mark.parametrize("name", ["l.png", "l.jpg"])
def test_a_jpeg_label_is_refused_whatever_its_name(tmp_path: Path, name: str) -> None:
    """A JPEG saved under a .png name was read: its compression turned the edges between classes into other
    valid classes (540 / 100 / 640 pixels became 520 / 152 / 608), scored without a word."""
    values = np.zeros((32, 40), np.uint8)
    values[:, 20:], values[10:20, 5:15] = 2, 1
    Image.fromarray(values, mode="L").save(tmp_path / name, format="JPEG", quality=75)
    for read in (lambda path: read_label(path, CAMVID), read_label_indices, read_depth):
        with pytest.raises(DataError, match=rf"{name} is a JPEG image \(whatever its name\).*save it as PNG"):
            read(tmp_path / name)


def test_greyscale_label_is_read_as_values(tmp_path: Path) -> None:
    values = (np.arange(H * W).reshape(H, W) % 12).astype(np.uint8)  # 11 = CamVid void
    Image.fromarray(values, mode="L").save(tmp_path / "l.png")
    np.testing.assert_array_equal(read_label(tmp_path / "l.png", CAMVID), values)


def test_values_outside_classes_name_file_and_values(tmp_path: Path) -> None:
    values = np.zeros((H, W), dtype=np.uint8)
    values[0, :2] = (12, 40)
    Image.fromarray(values, mode="L").save(tmp_path / "bad.png")
    with pytest.raises(DataError, match=r"bad\.png has values 12, 40 .*camvid \(0\.\.10\).*ignore index 11"):
        read_label(tmp_path / "bad.png", CAMVID)


def test_a_0_255_mask_is_read_as_it_is_and_judged_with_its_split(tmp_path: Path) -> None:
    # One mask of background and void is normal (VOC has void borders); a whole split of them is not, and
    # fcnseg.data.check refuses that (tests/test_hostile_data.py).
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[2:, 3:] = 255
    Image.fromarray(mask, mode="L").save(tmp_path / "m.png")
    for info in (KITTI_ROAD, VOC):
        assert set(np.unique(read_label(tmp_path / "m.png", info))) == {0, 255}
    other_ignore = DatasetInfo("fg", ("bg", "fg"), ((0, 0, 0), (1, 1, 1)), ignore_index=2)
    with pytest.raises(DataError, match=r"m\.png has values 255 that are neither classes of fg"):
        read_label(tmp_path / "m.png", other_ignore)


def test_rgb_label_is_refused_with_an_explanation(tmp_path: Path) -> None:
    Image.fromarray(rgb_array()).save(tmp_path / "c.png")
    with pytest.raises(DataError, match=r"c\.png is an RGB colour image.*class-index PNGs.*palette PNGs"):
        read_label(tmp_path / "c.png", VOC)


def test_rgb_label_with_equal_channels_hint(tmp_path: Path) -> None:
    grey = (np.arange(H * W).reshape(H, W) % 3).astype(np.uint8)
    Image.fromarray(np.stack([grey] * 3, axis=2)).save(tmp_path / "g.png")
    with pytest.raises(DataError, match=r"three channels are equal.*mode L"):
        read_label(tmp_path / "g.png", VOC)


def test_rgb_label_with_color_map(tmp_path: Path) -> None:
    indices = np.arange(H * W).reshape(H, W) % 21
    colors = np.asarray(VOC.palette, dtype=np.uint8)[indices]
    Image.fromarray(colors).save(tmp_path / "c.png")
    # The fix a command's user can make first (the hint named only read_label's color_map, which no command takes).
    with pytest.raises(DataError, match=r"voc palette colours: convert the files to class-index or palette PNGs "
                                        r"\(in Python, .*color_map=palette_color_map\(info\)"):
        read_label(tmp_path / "c.png", VOC)
    np.testing.assert_array_equal(read_label(tmp_path / "c.png", VOC, color_map=palette_color_map(VOC)), indices)
    colors[0, 0] = (1, 2, 3)
    Image.fromarray(colors).save(tmp_path / "c.png")
    with pytest.raises(DataError, match=r"c\.png has colours \(1, 2, 3\)"):
        read_label(tmp_path / "c.png", VOC, color_map=palette_color_map(VOC))


def test_16_bit_label_values(tmp_path: Path) -> None:
    values = np.zeros((H, W), dtype=np.uint16)
    values[0, 0] = 300
    Image.fromarray(values).save(tmp_path / "l.png")
    with pytest.raises(DataError, match=r"values 300"):
        read_label(tmp_path / "l.png", VOC)
    assert read_label_indices(tmp_path / "l.png")[0, 0] == 300


def test_missing_and_unreadable_label(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"label file not found: .*x\.png"):
        read_label(tmp_path / "x.png", VOC)
    (tmp_path / "y.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=r"y\.png"):
        read_label(tmp_path / "y.png", VOC)


def test_check_pair_names_both_files() -> None:
    image = np.zeros((H, W, 3), dtype=np.uint8)
    check_pair(image, np.zeros((H, W), dtype=np.uint8), "a.jpg", "a.png")
    with pytest.raises(DataError, match=r"image a\.jpg is 8x6 .*label a\.png is 6x8"):
        check_pair(image, np.zeros((W, H), dtype=np.uint8), "a.jpg", "a.png")


def test_mat_labels_are_read_one_way(tmp_path: Path) -> None:
    import scipy.io

    scipy.io.savemat(tmp_path / "plain.mat", {"S": np.array([[0.0, 1.0], [33.0, 2.0]])})  # MATLAB's doubles
    scipy.io.savemat(tmp_path / "struct.mat", {"GTcls": {"Segmentation": np.array([[3, 4]], np.uint8)}})
    scipy.io.savemat(tmp_path / "half.mat", {"S": np.array([[0.5, 1.0]])})
    assert read_mat_array(tmp_path / "plain.mat", "S").tolist() == [[0, 1], [33, 2]]
    assert read_mat_array(tmp_path / "struct.mat", "GTcls.Segmentation").tolist() == [[3, 4]]  # one row stays 2-D
    with pytest.raises(DataError, match=r"struct\.mat has no GTcls\.Boundaries array: the hint"):
        read_mat_array(tmp_path / "struct.mat", "GTcls.Boundaries", "the hint")
    with pytest.raises(DataError, match=r"half\.mat: S should be a 2-D array of class numbers"):
        read_mat_array(tmp_path / "half.mat", "S")
    with pytest.raises(DataError, match=r"label file not found: .*absent\.mat"):
        read_mat_array(tmp_path / "absent.mat", "S")


def test_a_picture_of_several_frames_says_its_first_is_read(tmp_path: Path, caplog) -> None:
    """An animated GIF or a multi-page TIFF was segmented as its first frame without a word."""
    frames = [Image.fromarray(rgb_array(seed)) for seed in range(3)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "pages.tiff", save_all=True, append_images=frames[1:])
    for name in ("anim.gif", "pages.tiff"):
        caplog.clear()
        assert read_image(tmp_path / name).shape == (H, W, 3)
        assert f"{name} holds 3 frames (an animation or several pages): the first is read" in caplog.text
    caplog.clear()
    read_image(_png(tmp_path / "one.png"))
    assert "frames" not in caplog.text


def _png(path: Path) -> Path:
    Image.fromarray(rgb_array(0)).save(path)
    return path
