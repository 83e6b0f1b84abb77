"""Every dataset reader on tiny layouts made in tmp_path, including the bad-data cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from fcnseg.data.ade20k import ADE20K
from fcnseg.data.camvid import CamVid
from fcnseg.data.check import check_dataset
from fcnseg.data.cityscapes import Cityscapes
from fcnseg.data.folder import FolderDataset
from fcnseg.data.info import voc_colormap
from fcnseg.data.io import DataError
from fcnseg.data.kitti import KittiRoad
from fcnseg.data.registry import DATASETS, build_dataset
from fcnseg.data.voc import SBDSegmentation, VOCSegmentation, seg11valid_ids
from fcnseg.errors import ConfigError

H, W = 6, 8


def save_image(path: Path, seed: int = 0, size: tuple[int, int] = (H, W), fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.RandomState(seed).randint(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


def save_label(path: Path, values: np.ndarray, palette: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(values.astype(np.uint8), mode="P" if palette else "L")
    if palette:
        img.putpalette([c for rgb in voc_colormap(256) for c in rgb])
    img.save(path)
    return path


def pattern(num_values: int, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, num_values, (H, W))


# --- VOC and SBD --------------------------------------------------------------------------------------


def make_voc(root: Path, ids: list[str], splits: dict[str, list[str]] | None, year: str = "2012") -> Path:
    base = root / "VOCdevkit" / f"VOC{year}"
    for n, i in enumerate(ids):
        save_image(base / "JPEGImages" / f"{i}.jpg", seed=n)
        values = pattern(21, n)
        values[0, 0] = 255  # void boundary
        save_label(base / "SegmentationClass" / f"{i}.png", values, palette=True)
    for split, members in (splits or {}).items():
        (base / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
        (base / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(members) + "\n")
    return base


def make_sbd(root: Path, splits: dict[str, list[str]]) -> Path:
    base = root / "benchmark_RELEASE" / "dataset"
    for n, i in enumerate(sorted({i for ids in splits.values() for i in ids})):
        save_image(base / "img" / f"{i}.jpg", seed=n)
        (base / "cls").mkdir(parents=True, exist_ok=True)
        segmentation = pattern(21, n).astype(np.uint8)
        scipy.io.savemat(base / "cls" / f"{i}.mat", {"GTcls": {"Segmentation": segmentation, "Boundaries": 0}})
    for split, ids in splits.items():
        (base / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return base


def test_voc_reads_split_lists(tmp_path: Path) -> None:
    make_voc(tmp_path, ["2007_000001", "2007_000002", "2007_000003"],
             {"train": ["2007_000001", "2007_000002"], "val": ["2007_000003"]})
    train = VOCSegmentation(tmp_path, "train")
    assert len(train) == 2 and train.sample_name(1) == "2007_000002"
    image, label = train.load(0)
    assert image.shape == (H, W, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(label[1:], pattern(21, 0)[1:])  # palette indices, not colours
    assert label[0, 0] == 255
    x, y = train[0]
    assert x.shape == (3, H, W) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert len(VOCSegmentation(tmp_path / "VOCdevkit" / "VOC2012", "val")) == 1  # root given directly
    with pytest.raises(DataError, match=r"no split list .*trainval\.txt; available splits: train, val"):
        VOCSegmentation(tmp_path, "trainval")


def test_voc_without_imagesets_uses_all_labelled_images(tmp_path: Path, caplog) -> None:
    base = make_voc(tmp_path, ["a", "b"], splits=None)
    save_image(base / "JPEGImages" / "unlabelled.jpg")  # normal in VOC: not every image is segmented
    assert [VOCSegmentation(tmp_path, "tarin").sample_name(i) for i in range(2)] == ["a", "b"]
    # Any split name reads them all: said, so that a misspelt one does not go unnoticed.
    assert f"{base} has no split lists (ImageSets/Segmentation): split 'tarin' is every labelled image (2)" in \
        caplog.text
    save_label(base / "SegmentationClass" / "orphan.png", pattern(21))
    with pytest.raises(DataError, match=r"labels without an image .*orphan"):
        VOCSegmentation(tmp_path, "train")


def test_voc_missing_listed_file(tmp_path: Path) -> None:
    make_voc(tmp_path, ["a"], {"train": ["a", "ghost"]})
    with pytest.raises(DataError, match=r"1 images listed by .*train\.txt do not exist:\n  .*ghost\.jpg"):
        VOCSegmentation(tmp_path, "train")


def test_seg11valid_is_voc_val_minus_sbd_train(tmp_path: Path) -> None:
    make_voc(tmp_path / "voc", ["a", "b", "c", "d"], {"val": ["a", "b", "c", "d"]}, year="2011")
    make_sbd(tmp_path / "sbd", {"train": ["b", "d", "x"], "val": ["a"]})
    valid = VOCSegmentation(tmp_path / "voc", "seg11valid", year="2011", sbd_root=tmp_path / "sbd")
    assert [valid.sample_name(i) for i in range(len(valid))] == ["a", "c"]
    assert seg11valid_ids(["c", "a", "b"], ["b"]) == ["c", "a"]
    (tmp_path / "list.txt").write_text("c\n")
    from_file = VOCSegmentation(tmp_path / "voc", "seg11valid", year="2011", split_file=tmp_path / "list.txt")
    assert len(from_file) == 1 and from_file.sample_name(0) == "c"
    with pytest.raises(DataError, match=r"seg11valid.*needs either a list file"):
        VOCSegmentation(tmp_path / "voc", "seg11valid", year="2011")


def test_sbd_reads_mat_labels(tmp_path: Path) -> None:
    base = make_sbd(tmp_path, {"train": ["2008_000002", "2008_000003"], "val": ["2008_000004"]})
    train = SBDSegmentation(tmp_path, "train")
    assert len(train) == 2 and train.sample_name(0) == "2008_000002"
    image, label = train.load(1)
    assert image.shape == (H, W, 3)
    np.testing.assert_array_equal(label, pattern(21, 1))
    assert label.dtype == np.uint8
    assert len(SBDSegmentation(base, "val")) == 1
    scipy.io.savemat(base / "cls" / "2008_000002.mat", {"GTinst": {"Segmentation": np.zeros((H, W))}})
    with pytest.raises(DataError, match=r"2008_000002\.mat has no GTcls\.Segmentation"):
        train.load(0)
    (base / "cls" / "2008_000002.mat").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"corrupt \.mat file .*2008_000002\.mat"):
        train.load(0)


# --- CamVid -------------------------------------------------------------------------------------------


def make_camvid(root: Path, names: list[str], split: str = "train") -> None:
    for n, name in enumerate(names):
        save_image(root / split / name, seed=n)
        save_label(root / f"{split}annot" / name, pattern(12, n))  # includes 11 = void


def test_camvid_resolves_foreign_absolute_paths(tmp_path: Path) -> None:
    names = ["0001TP_006690.png", "0001TP_006720.png"]
    make_camvid(tmp_path, names)
    (tmp_path / "train.txt").write_text(
        "".join(f"/SegNet/CamVid/train/{n} /SegNet/CamVid/trainannot/{n}\n" for n in reversed(names))
    )
    data = CamVid(tmp_path, "train")
    assert [data.sample_name(i) for i in range(2)] == ["0001TP_006720", "0001TP_006690"]  # list order
    image, label = data.load(0)
    assert image.shape == (H, W, 3)
    np.testing.assert_array_equal(label, pattern(12, 1))
    (tmp_path / "train.txt").write_text("/SegNet/CamVid/train/missing.png /SegNet/CamVid/trainannot/missing.png\n")
    with pytest.raises(DataError, match=r"images listed by .*train\.txt do not exist:\n  .*train/missing\.png"):
        CamVid(tmp_path, "train")


def test_camvid_list_refuses_a_frame_paired_with_another_frames_labels(tmp_path: Path) -> None:
    # A swapped list line trained every frame on its neighbour's labels without a word.
    names = ["0001TP_006690.png", "0001TP_006720.png"]
    make_camvid(tmp_path, names)
    (tmp_path / "train.txt").write_text(
        f"/SegNet/CamVid/train/{names[0]} /SegNet/CamVid/trainannot/{names[0]}\n"
        f"/SegNet/CamVid/train/{names[0]} /SegNet/CamVid/trainannot/{names[1]}\n"
    )
    with pytest.raises(DataError, match=r"train\.txt line 2: frame 0001TP_006690\.png is paired with labels "
                                        r"0001TP_006720\.png; .*trainannot/0001TP_006690\.png"):
        CamVid(tmp_path, "train")


def test_camvid_pairs_folders_without_list(tmp_path: Path) -> None:
    make_camvid(tmp_path, ["a.png", "b.png"], split="val")
    assert len(CamVid(tmp_path, "val")) == 2
    save_image(tmp_path / "val" / "c.png")
    with pytest.raises(DataError, match=r"1 images without a label in .*valannot.*: c\.png"):
        CamVid(tmp_path, "val")
    with pytest.raises(DataError, match=r"CamVid split 'test' not found .*test"):
        CamVid(tmp_path, "test")
    (tmp_path / "val" / "c.png").unlink()
    (tmp_path / "val" / "d.png").symlink_to(tmp_path / "gone.png")  # a broken link was left out without a word
    with pytest.raises(DataError, match=r"1 images without a label in .*valannot.*: d\.png"):
        CamVid(tmp_path, "val")
    (tmp_path / "val" / "d.png").unlink()
    (tmp_path / "valannot" / "more").mkdir()  # a subfolder of frames was passed over without a word
    with pytest.raises(DataError, match=r"valannot holds subfolders \(more\), which would be passed over"):
        CamVid(tmp_path, "val")


def test_camvid_rejects_label_12(tmp_path: Path) -> None:
    make_camvid(tmp_path, ["a.png"])
    save_label(tmp_path / "trainannot" / "a.png", np.full((H, W), 12))
    with pytest.raises(DataError, match=r"a\.png has values 12 "):
        CamVid(tmp_path, "train").load(0)


# --- KITTI road ---------------------------------------------------------------------------------------


MAGENTA, RED, BLACK = (255, 0, 255), (255, 0, 0), (0, 0, 0)


def make_kitti(root: Path, counts: dict[str, int]) -> None:
    for category, count in counts.items():
        for k in range(count):
            save_image(root / "training" / "image_2" / f"{category}_{k:06d}.png", seed=k)
            mask = np.zeros((H, W, 3), dtype=np.uint8)
            mask[:2] = BLACK
            mask[2:4] = RED
            mask[4:] = MAGENTA
            (root / "training" / "gt_image_2").mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(root / "training" / "gt_image_2" / f"{category}_road_{k:06d}.png")
    # Lane masks exist for um and are not used.
    save_image(root / "training" / "gt_image_2" / "um_lane_000000.png")


def test_kitti_colours_and_holdout(tmp_path: Path) -> None:
    make_kitti(tmp_path, {"um": 6, "uu": 5})
    train, val, trainval = (KittiRoad(tmp_path, s) for s in ("train", "val", "trainval"))
    val_names = [val.sample_name(i) for i in range(len(val))]
    assert val_names == ["um_000004", "uu_000004"]  # every 5th per category
    assert len(train) == 9 and len(trainval) == 11
    assert not set(val_names) & {train.sample_name(i) for i in range(len(train))}
    image, label = train.load(0)
    assert image.shape == (H, W, 3)
    assert (label[:2] == 255).all() and (label[2:4] == 0).all() and (label[4:] == 1).all()


def test_kitti_masks_saved_as_palette_pngs_are_read_by_colour(tmp_path: Path) -> None:
    """A colour mask re-saved with a palette (optipng, PIL's convert("P")) was read by its palette indices:
    PIL put magenta (road) at index 0, so road read as not road."""
    make_kitti(tmp_path, {"um": 1})
    gt = tmp_path / "training" / "gt_image_2" / "um_road_000000.png"
    Image.open(gt).convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE).save(gt)
    with Image.open(gt) as saved:
        assert saved.mode == "P"
    _, label = KittiRoad(tmp_path, "trainval").load(0)
    assert (label[:2] == 255).all() and (label[2:4] == 0).all() and (label[4:] == 1).all()


def test_kitti_bad_data(tmp_path: Path) -> None:
    make_kitti(tmp_path, {"um": 2})
    gt = tmp_path / "training" / "gt_image_2" / "um_road_000001.png"
    mask = np.array(Image.open(gt))
    mask[0, 0] = (0, 255, 0)
    Image.fromarray(mask).save(gt)
    with pytest.raises(DataError, match=r"um_road_000001\.png has colours \(0, 255, 0\)"):
        KittiRoad(tmp_path, "trainval").load(1)
    gt.unlink()
    with pytest.raises(DataError, match=r"images without a road mask .*: um_000001\.png"):
        KittiRoad(tmp_path, "train")
    with pytest.raises(DataError, match=r"unknown KITTI road split 'test'"):
        KittiRoad(tmp_path, "test")


# --- Cityscapes ---------------------------------------------------------------------------------------


def make_cityscapes(root: Path, split: str, city: str, stems: list[str], label_ids: np.ndarray) -> None:
    for n, stem in enumerate(stems):
        save_image(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", seed=n)
        save_label(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", label_ids)


def test_cityscapes_maps_label_ids_to_train_ids(tmp_path: Path) -> None:
    ids = np.zeros((H, W), dtype=np.uint8)
    ids.flat[:35] = [*range(34), 255]  # every label id, and license plate (-1 stored as 255)
    make_cityscapes(tmp_path, "val", "lindau", ["lindau_000000_000019"], ids)
    data = Cityscapes(tmp_path, "val")
    assert len(data) == 1 and data.sample_name(0) == "lindau_000000_000019"
    _, label = data.load(0)
    expected = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
                25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
    assert label.flat[:35].tolist() == [expected.get(i, 255) for i in range(34)] + [255]


def test_cityscapes_bad_data(tmp_path: Path) -> None:
    make_cityscapes(tmp_path, "train", "aachen", ["aachen_000000_000019"], np.full((H, W), 40))
    with pytest.raises(DataError, match=r"values \[40\] that are not Cityscapes label ids"):
        Cityscapes(tmp_path, "train").load(0)
    save_image(tmp_path / "leftImg8bit" / "train" / "aachen" / "aachen_000001_000019_leftImg8bit.png")
    with pytest.raises(DataError, match=r"without a \*_gtFine_labelIds\.png .*aachen_000001_000019"):
        Cityscapes(tmp_path, "train")
    with pytest.raises(DataError, match=r"dataset folder not found: .*leftImg8bit/val"):
        Cityscapes(tmp_path, "val")


# --- ADE20K -------------------------------------------------------------------------------------------


def test_ade20k_reduces_zero_label(tmp_path: Path) -> None:
    base = tmp_path / "ADEChallengeData2016"
    raw = np.zeros((H, W), dtype=np.uint8)
    raw[0, :4] = (0, 1, 2, 150)
    save_image(base / "images" / "validation" / "ADE_val_00000001.jpg")
    save_label(base / "annotations" / "validation" / "ADE_val_00000001.png", raw)
    data = ADE20K(tmp_path, "val")  # alias of "validation"
    assert data.info.num_classes == 150 and len(set(data.info.palette)) == 150
    assert data.info.class_names[0] == "wall" and data.info.class_names[-1] == "flag"
    _, label = data.load(0)
    assert label[0, :4].tolist() == [255, 0, 1, 149]
    raw[0, 0] = 151
    save_label(base / "annotations" / "validation" / "ADE_val_00000001.png", raw)
    with pytest.raises(DataError, match=r"values \[151\] that are not in ADE20K's 0\.\.150"):
        data.load(0)
    save_label(base / "annotations" / "validation" / "ADE_val_00000002.png", raw)
    with pytest.raises(DataError, match=r"labels without an image .*ADE_val_00000002"):
        ADE20K(base, "validation")


# --- FolderDataset ------------------------------------------------------------------------------------


def make_folder(root: Path, stems: list[str], classes: str = "background\nroad\ncar\n") -> None:
    for n, stem in enumerate(stems):
        save_image(root / "images" / f"{stem}.jpg", seed=n)
        save_label(root / "masks" / f"{stem}.png", pattern(3, n))
    (root / "classes.txt").write_text(classes)


def test_folder_dataset(tmp_path: Path) -> None:
    make_folder(tmp_path, ["x1", "x2", "x3"], classes="# my classes\nbackground\nroad\n\ncar\nignore_index: 9\n")
    (tmp_path / ".DS_Store").write_bytes(b"junk")
    (tmp_path / "images" / ".DS_Store").write_bytes(b"junk")  # hidden files are not data
    data = FolderDataset(tmp_path)
    assert len(data) == 3 and data.sample_name(2) == "x3"
    assert data.info.class_names == ("background", "road", "car") and data.info.ignore_index == 9
    assert data.info.palette == tuple(voc_colormap(3))  # L masks carry no palette
    image, label = data.load(1)
    assert image.shape == (H, W, 3)
    np.testing.assert_array_equal(label, pattern(3, 1))
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "val.txt").write_text("x3\nx1.jpg\n")
    val = FolderDataset(tmp_path, "val")
    assert [val.sample_name(i) for i in range(2)] == ["x3", "x1"]
    with pytest.raises(DataError, match=r"no split list .*train\.txt \(available: val\)"):
        FolderDataset(tmp_path, "train")


# Superscript two and Arabic-Indic three pass str.isdigit; int() refuses the first.
@pytest.mark.parametrize("value", ["\u00b2", "\u0663", "-1", "256"])
def test_an_ignore_index_that_is_not_0_to_255_in_ascii_digits_is_one_line(tmp_path: Path, value: str) -> None:
    make_folder(tmp_path, ["x1"], classes=f"background\nroad\nignore_index: {value}\n")
    with pytest.raises(DataError, match=r"classes.txt: 'ignore_index: .*' should be 'ignore_index: N' with N in 0"):
        FolderDataset(tmp_path)


@pytest.mark.parametrize("value", [256, -1])
def test_an_ignore_index_option_outside_8_bits_is_refused(tmp_path: Path, value: int) -> None:
    # dataset_options={ignore_index: 257}: labels are uint8 in the pipeline, so pixels of 257 became class 1 (or
    # 300 the index 44, an IndexError in the loss; or an OverflowError padding a crop).
    make_folder(tmp_path, ["x1"])
    with pytest.raises(DataError, match=rf"ignore_index {value} of .*must be in 3\.\.255"):
        FolderDataset(tmp_path, ignore_index=value)
    for edge in (3, 255):  # the first value past the classes and the last 8-bit one
        assert FolderDataset(tmp_path, ignore_index=edge).info.ignore_index == edge


@pytest.mark.parametrize("names", ["abc", ["a", 1, "c"]])
def test_class_names_that_are_not_a_list_of_names_are_refused(tmp_path: Path, names) -> None:
    # dataset_options={class_names: abcd} trained four classes named a, b, c and d.
    make_folder(tmp_path, ["x1"])
    with pytest.raises(ConfigError, match="class_names takes a list of names"):
        FolderDataset(tmp_path, class_names=names)


def test_a_split_list_naming_an_image_twice_is_refused(tmp_path: Path) -> None:
    """"0", "0.png" and "0" again in a split list scored image 0 three times (7 images for 4)."""
    make_folder(tmp_path, ["0", "1", "2"])
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "val.txt").write_text("0\n0.jpg\n1\n0\n2\n")
    with pytest.raises(DataError, match=r"1 image\(s\) listed more than once: .*0\.jpg \(3 times\); .*remove"):
        FolderDataset(tmp_path, "val")
    (tmp_path / "splits" / "val.txt").write_text("0\n1\n2\n")
    assert len(FolderDataset(tmp_path, "val")) == 3


def test_a_folder_dataset_passes_over_no_subfolder_or_broken_link(tmp_path: Path) -> None:
    """images/extra/9.jpg, and links that lead nowhere, were left out without a word ("4 images")."""
    make_folder(tmp_path, ["x1", "x2"])
    (tmp_path / "images" / "extra").mkdir()
    with pytest.raises(DataError, match=r"images holds subfolders \(extra\), which would be passed over"):
        FolderDataset(tmp_path)
    (tmp_path / "images" / "extra").rmdir()
    (tmp_path / "images" / ".ipynb_checkpoints").mkdir()  # hidden: not data
    (tmp_path / "images" / "x9.png").symlink_to(tmp_path / "gone" / "x9.png")
    with pytest.raises(DataError, match=r"images without a mask .*: x9\.png"):
        FolderDataset(tmp_path)
    (tmp_path / "masks" / "x9.png").symlink_to("x9.png")  # a loop
    with pytest.raises(DataError, match=r"x9\.png"):
        FolderDataset(tmp_path).load(2)


def test_folder_uses_mask_palette(tmp_path: Path) -> None:
    make_folder(tmp_path, ["a"])
    mask = Image.fromarray(pattern(3).astype(np.uint8), mode="P")
    mask.putpalette([0, 0, 0, 10, 20, 30, 40, 50, 60] + [0] * (768 - 9))
    mask.save(tmp_path / "masks" / "a.png")
    data = FolderDataset(tmp_path)
    assert data.info.palette == ((0, 0, 0), (10, 20, 30), (40, 50, 60))
    np.testing.assert_array_equal(data.load(0)[1], pattern(3))


def test_classes_txt_lines_end_at_newlines_only(tmp_path: Path) -> None:
    # str.splitlines also splits at U+2028 and its kind: one name became two, and the class count was wrong.
    make_folder(tmp_path, ["x1"], classes="\ufeffbackground\r\nroad\r\ncar\r\n")  # BOM and CRLF, as Notepad saves
    assert FolderDataset(tmp_path).info.class_names == ("background", "road", "car")
    (tmp_path / "classes.txt").write_text("background\nroad\u2028side\nca\x1cr\n", encoding="utf-8")
    assert FolderDataset(tmp_path).info.class_names == ("background", "road\u2028side", "ca\x1cr")  # as written


def test_folder_bad_layouts(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    (tmp_path / "classes.txt").write_text("a\nb\nc\n")
    with pytest.raises(DataError, match=r"no images in .*images"):
        FolderDataset(tmp_path)
    make_folder(tmp_path, ["a", "b"])
    save_image(tmp_path / "images" / "lonely.png")
    save_label(tmp_path / "masks" / "orphan.png", pattern(3))
    with pytest.raises(DataError, match=r"1 images without a mask .*: lonely\.png"):
        FolderDataset(tmp_path)
    (tmp_path / "images" / "lonely.png").unlink()
    with pytest.raises(DataError, match=r"1 masks without an image .*: orphan\.png"):
        FolderDataset(tmp_path)
    (tmp_path / "masks" / "orphan.png").unlink()
    save_image(tmp_path / "masks" / "a.jpg")
    with pytest.raises(DataError, match=r"files that are not PNG masks .*: a\.jpg"):
        FolderDataset(tmp_path)
    (tmp_path / "masks" / "a.jpg").unlink()
    (tmp_path / "classes.txt").unlink()
    with pytest.raises(DataError, match=r"no .*classes\.txt: write the class names"):
        FolderDataset(tmp_path)
    assert FolderDataset(tmp_path, class_names=["a", "b", "c"]).info.num_classes == 3


def test_folder_size_mismatch_and_corrupt_files(tmp_path: Path) -> None:
    make_folder(tmp_path, ["a", "b"])
    save_label(tmp_path / "masks" / "a.png", np.zeros((H + 1, W)))
    data = FolderDataset(tmp_path)
    with pytest.raises(DataError, match=r"image .*a\.jpg is 8x6 \(WxH\) but its label .*a\.png is 8x7"):
        data.load(0)
    (tmp_path / "images" / "b.jpg").write_bytes(np.random.RandomState(0).bytes(200))
    with pytest.raises(DataError, match=r"b\.jpg"):
        data.load(1)


def test_folder_binary_mask_message(tmp_path: Path) -> None:
    make_folder(tmp_path, ["a"], classes="background\nforeground\n")
    mask = np.zeros((H, W))
    mask[3:] = 255
    save_label(tmp_path / "masks" / "a.png", mask)
    with pytest.raises(DataError, match=r"every labelled pixel of the folder is class 0 \(background\).*masks saved as "
                                         r"0/255"):
        check_dataset(FolderDataset(tmp_path), "the folder")


# --- registry and missing roots -----------------------------------------------------------------------


def test_build_dataset(tmp_path: Path) -> None:
    make_folder(tmp_path, ["a"])
    data = build_dataset("folder", tmp_path, "all", normalization="caffe")
    assert isinstance(data, FolderDataset) and data.normalization == "caffe"
    with pytest.raises(ConfigError, match=r"unknown dataset 'pascal'; known datasets: ade20k, camvid, "):
        build_dataset("pascal", tmp_path, "train")


@pytest.mark.parametrize("name", sorted(set(DATASETS) - {"synthetic"}))  # synthetic is generated: no folder
def test_missing_root_names_the_folder_and_layout(tmp_path: Path, name: str) -> None:
    split = "training" if name == "ade20k" else "train"
    with pytest.raises(DataError, match=r"dataset folder not found: .*nowhere.*Expected layout: "):
        build_dataset(name, tmp_path / "nowhere", split)
    (tmp_path / "list.txt").write_text("a\n")  # a file given as the root: said so, not "not found"
    with pytest.raises(DataError, match=r"dataset folder .*list\.txt is a file, not a folder\. Expected layout: "):
        build_dataset(name, tmp_path / "list.txt", split)
    # An existing but empty root fails as clearly.
    with pytest.raises(DataError, match=str(tmp_path)):
        build_dataset(name, tmp_path, split)


# --- PASCAL-Context: the 59-class task from the full label set ---------------------------------------


def test_pascal_context_maps_the_full_label_set_to_the_59_classes(tmp_path: Path) -> None:
    import scipy.io

    from fcnseg.data.context import PascalContext

    voc, context = tmp_path / "VOC2010", tmp_path / "pascal-context"
    (voc / "JPEGImages").mkdir(parents=True)
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (context / "trainval").mkdir(parents=True)
    # The full set names "table", "bed clothes" and "cloth"; the task calls them diningtable, bedcloth, clothes.
    (context / "labels.txt").write_text("1: accordion\n2: aeroplane\n3: bed clothes\n4: cloth\n5: dog\n"
                                        "6: table\n7: zebra crossing\n")
    (context / "59_labels.txt").write_text("1: aeroplane\n2: bedcloth\n3: clothes\n4: diningtable\n5: dog\n")
    label_map = np.array([[1, 2, 3, 4], [5, 6, 7, 0]])
    scipy.io.savemat(context / "trainval" / "2008_000001.mat", {"LabelMap": label_map})
    Image.fromarray(np.zeros((2, 4, 3), np.uint8)).save(voc / "JPEGImages" / "2008_000001.jpg")
    (voc / "ImageSets" / "Main" / "val.txt").write_text("2008_000001\n")
    image, label = PascalContext(tmp_path, split="val").load(0)
    # accordion, zebra crossing and 0 are not in the task: background (0).
    np.testing.assert_array_equal(label, [[0, 1, 2, 3], [5, 4, 0, 0]])
    assert image.shape == (2, 4, 3)
    (context / "59_labels.txt").write_text("1: unicorn\n")
    with pytest.raises(DataError, match=r"class 'unicorn' is not in .*labels.txt"):
        PascalContext(tmp_path, split="val")


# --- SIFT Flow: two label sets per image -------------------------------------------------------------


def test_siftflow_reads_both_label_sets_as_the_authors_data_layer(tmp_path: Path) -> None:
    from fcnseg.data.base import split_ids
    from fcnseg.data.siftflow import SiftFlow
    from fcnseg.data.transforms import train_transforms

    from ..helpers import SIFTFLOW_CATEGORY, siftflow_folder

    siftflow_folder(tmp_path, ids=("coast_a",), size=(2, 3))
    # classes 1..33 become 0..32, 0 is void (255); geometric 1..3 become 0..2, -1 and 0 are void
    scipy.io.savemat(tmp_path / "SemanticLabels" / SIFTFLOW_CATEGORY / "coast_a.mat", {"S": [[0, 1, 33], [5, 0, 2]]})
    scipy.io.savemat(tmp_path / "GeoLabels" / SIFTFLOW_CATEGORY / "coast_a.mat", {"S": [[-1, 1, 3], [2, 0, 1]]})
    data = SiftFlow(tmp_path, split_file=tmp_path / "ids.txt")
    image, label = data.load(0)
    assert image.shape == (2, 3, 3) and label.shape == (2, 3, 2) and label.dtype == np.uint8
    np.testing.assert_array_equal(label[..., 0], [[255, 0, 32], [4, 255, 1]])
    np.testing.assert_array_equal(label[..., 1], [[255, 0, 2], [1, 255, 0]])
    _, tensor = data[0]
    assert tensor.shape == (2, 2, 3) and torch.equal(tensor.permute(1, 2, 0), torch.from_numpy(label).long())
    check_dataset(data, "the test split")
    # Augmentation moves both maps with the image: a flipped and cropped sample stays aligned.
    flipped = train_transforms((2, 2), scale_range=None, flip=True)
    for seed in range(4):
        _, crop = flipped(image, label, rng=np.random.default_rng(seed))
        assert crop.shape == (2, 2, 2)
        pairs = {tuple(v) for v in label.reshape(-1, 2)}
        assert {tuple(v) for v in crop.reshape(-1, 2)} <= pairs
    assert (len(split_ids("siftflow", "train")), len(split_ids("siftflow", "test"))) == (2486, 200)
    assert not set(split_ids("siftflow", "train")) & set(split_ids("siftflow", "test"))


def test_siftflow_bad_data(tmp_path: Path) -> None:
    from fcnseg.data.siftflow import SiftFlow

    from ..helpers import SIFTFLOW_CATEGORY, siftflow_folder

    siftflow_folder(tmp_path, ids=("coast_a", "forest_b"), size=(2, 3))
    scipy.io.savemat(tmp_path / "SemanticLabels" / SIFTFLOW_CATEGORY / "coast_a.mat", {"S": [[34, 1, 1], [1, 1, 1]]})
    data = SiftFlow(tmp_path, split_file=tmp_path / "ids.txt")
    with pytest.raises(DataError, match=r"coast_a.mat has label values \[34\] that are neither classes 1..33"):
        data.load(0)
    (tmp_path / "GeoLabels" / SIFTFLOW_CATEGORY / "forest_b.mat").write_bytes(b"not a mat file")
    with pytest.raises(DataError, match=r"truncated or corrupt .mat file .*forest_b.mat"):
        data.load(1)
    (tmp_path / "GeoLabels" / SIFTFLOW_CATEGORY / "forest_b.mat").unlink()
    with pytest.raises(DataError, match=r"1 geometric labels listed by .*ids.txt do not exist:\n  .*forest_b.mat"):
        SiftFlow(tmp_path, split_file=tmp_path / "ids.txt")
    with pytest.raises(DataError, match=r"siftflow has the splits train, trainval, test, not 'val'"):
        SiftFlow(tmp_path, split="val")
    with pytest.raises(DataError, match=r"2486 images listed by the authors' train list do not exist"):
        SiftFlow(tmp_path, split="train")
