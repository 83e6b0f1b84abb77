"""Joint transforms (fcnseg.data.transforms) and padded batching (fcnseg.data.collate)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from fcnseg.data.base import SegmentationDataset
from fcnseg.data.collate import PadCollate, pad_collate
from fcnseg.data.info import DatasetInfo, voc_colormap
from fcnseg.data.transforms import (
    ColorJitter,
    Compose,
    RandomCrop,
    RandomHorizontalFlip,
    RandomScale,
    Resize,
    crop_offsets,
    pad_to_size,
    train_transforms,
)
from fcnseg.errors import LimitError


def arange_pair(h: int = 4, w: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Image whose three channels all hold the pixel's index (r * w + c); the label holds the same index."""
    index = np.arange(h * w, dtype=np.uint8).reshape(h, w)
    return np.repeat(index[..., None], 3, axis=2), index.copy()


class FixedRng:
    """A Generator-compatible stand-in that always returns the same value."""

    def __init__(self, value: float) -> None:
        self.value = value

    def uniform(self, low: float, high: float) -> float:
        return self.value

    def random(self) -> float:
        return self.value


# ---- crops and padding -------------------------------------------------------------------------------


def test_crop_offsets_center_and_bounds() -> None:
    assert crop_offsets((4, 5), (2, 3)) == (1, 1)
    assert crop_offsets((4, 5), (3, 2)) == (0, 1)  # rounds towards top-left
    assert crop_offsets((4, 5), (4, 5)) == (0, 0)
    with pytest.raises(ValueError):
        crop_offsets((4, 5), (5, 5))


def test_random_crop_windows_match_source_and_cover_all_offsets() -> None:
    image, label = arange_pair()
    crop = RandomCrop(2, 3)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(200):
        out_image, out_label = crop(image, label, rng=rng)
        top, left = divmod(int(out_label[0, 0]), 5)  # the arange value gives back the offset
        np.testing.assert_array_equal(out_label, label[top:top + 2, left:left + 3])
        np.testing.assert_array_equal(out_image, image[top:top + 2, left:left + 3])
        seen.add((top, left))
    assert seen == {(t, l) for t in range(3) for l in range(3)}


def test_pad_to_size_fills_bottom_right() -> None:
    image, label = arange_pair(2, 2)
    out_image, out_label = pad_to_size(image, label, 3, 4, fill=(1, 2, 3), ignore_index=255)
    assert out_image.shape == (3, 4, 3) and out_label.shape == (3, 4)
    np.testing.assert_array_equal(out_label, [[0, 1, 255, 255], [2, 3, 255, 255], [255, 255, 255, 255]])
    np.testing.assert_array_equal(out_image[:2, :2], image)
    np.testing.assert_array_equal(out_image[2, :], [[1, 2, 3]] * 4)
    np.testing.assert_array_equal(out_image[:, 2:].reshape(-1, 3), [[1, 2, 3]] * 6)
    # already large enough: unchanged, never cropped
    same_image, same_label = pad_to_size(image, label, 1, 1)
    assert same_image is image and same_label is label


def test_random_crop_pads_small_image_with_fill_and_ignore() -> None:
    image, label = arange_pair(2, 3)
    out_image, out_label = RandomCrop(4, 5, ignore_index=250, fill=(7, 8, 9))(image, label)
    # the padded array is exactly the crop size, so the only offset is (0, 0)
    expected_label = np.full((4, 5), 250, dtype=np.uint8)
    expected_label[:2, :3] = label
    np.testing.assert_array_equal(out_label, expected_label)
    np.testing.assert_array_equal(out_image[:2, :3], image)
    np.testing.assert_array_equal(out_image[expected_label == 250], np.tile([7, 8, 9], (20 - 6, 1)))


def test_random_crop_pads_one_dimension_only() -> None:
    image, label = arange_pair(2, 6)
    out_image, out_label = RandomCrop(3, 4)(image, label, rng=np.random.default_rng(1))
    assert out_image.shape == (3, 4, 3)
    np.testing.assert_array_equal(out_label[2], [255] * 4)
    np.testing.assert_array_equal(out_image[2], [[124, 116, 104]] * 4)
    left = int(out_label[0, 0])
    np.testing.assert_array_equal(out_label[:2], label[:, left:left + 4])


# ---- flip, scale, resize -----------------------------------------------------------------------------


def test_flip_flips_image_and_label_together() -> None:
    image, label = arange_pair()
    out_image, out_label = RandomHorizontalFlip(p=1.0)(image, label)
    np.testing.assert_array_equal(out_label, label[:, ::-1])
    np.testing.assert_array_equal(out_image, image[:, ::-1])
    assert out_image.flags.c_contiguous and out_label.flags.c_contiguous
    kept_image, kept_label = RandomHorizontalFlip(p=0.0)(image, label)
    np.testing.assert_array_equal(kept_image, image)
    np.testing.assert_array_equal(kept_label, label)
    # the decision is rng.random() < p
    assert RandomHorizontalFlip(0.5)(image, label, rng=FixedRng(0.49))[1][0, 0] == 4
    assert RandomHorizontalFlip(0.5)(image, label, rng=FixedRng(0.5))[1][0, 0] == 0


def test_random_scale_labels_nearest_only() -> None:
    rng = np.random.default_rng(0)
    values = np.array([0, 3, 7, 255], dtype=np.uint8)
    label = values[rng.integers(0, 4, size=(13, 17))]
    image = rng.integers(0, 256, size=(13, 17, 3), dtype=np.uint8)
    scale = RandomScale(0.5, 2.0)
    for _ in range(10):
        out_image, out_label = scale(image, label, rng=rng)
        assert out_image.dtype == np.uint8 and out_label.dtype == np.uint8
        assert out_image.shape[:2] == out_label.shape
        assert set(np.unique(out_label)) <= set(values.tolist())


def test_a_rescale_past_the_pixel_limit_is_refused_before_it_is_made() -> None:
    """scale_range 300 took a run to a MemoryError from the resize (9 GB against a 500 MB budget)."""
    image, label = np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64), np.uint8)
    with pytest.raises(LimitError, match=r"a 64x64 image rescaled by 300 would be 19200x19200 .* scale_range \(300\)"):
        RandomScale(300, 300)(image, label)


def test_random_scale_size_range() -> None:
    image, label = np.zeros((40, 60, 3), np.uint8), np.zeros((40, 60), np.uint8)
    assert RandomScale(2.0, 2.0)(image, label)[1].shape == (80, 120)
    assert RandomScale(0.5, 2.0)(image, label, rng=FixedRng(0.75))[1].shape == (30, 45)
    rng = np.random.default_rng(3)
    heights = []
    for _ in range(30):
        h, w = RandomScale(0.5, 1.5)(image, label, rng=rng)[1].shape
        assert 20 <= h <= 60 and 30 <= w <= 90
        assert abs(w / h - 1.5) < 0.05  # one factor for both axes
        heights.append(h)
    assert len(set(heights)) > 5
    with pytest.raises(ValueError):
        RandomScale(2.0, 1.0)


def test_resize_deterministic_sizes_and_nearest_labels() -> None:
    image, label = arange_pair()
    out_image, out_label = Resize(8, 10)(image, label)
    assert out_image.shape == (8, 10, 3) and out_label.shape == (8, 10)
    # exact 2x nearest upsampling repeats every class id in a 2x2 block
    np.testing.assert_array_equal(out_label, np.repeat(np.repeat(label, 2, axis=0), 2, axis=1))
    np.testing.assert_array_equal(Resize(8, 10)(image, label)[0], out_image)


# ---- colour jitter -----------------------------------------------------------------------------------


def test_color_jitter_uint8_and_label_untouched() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(6, 7, 3), dtype=np.uint8)
    label = rng.integers(0, 21, size=(6, 7), dtype=np.uint8)
    label_before = label.copy()
    out_image, out_label = ColorJitter(0.4, 0.4, 0.4)(image, label, rng=rng)
    assert out_image.dtype == np.uint8 and out_image.shape == image.shape
    assert out_label is label
    np.testing.assert_array_equal(label, label_before)
    same_image, _ = ColorJitter(0.0, 0.0, 0.0)(image, label)
    np.testing.assert_array_equal(same_image, image)


def test_color_jitter_exact_brightness_and_clipping() -> None:
    image = np.array([[[10, 100, 200], [0, 50, 255]]], dtype=np.uint8)
    label = np.zeros((1, 2), dtype=np.uint8)
    out, _ = ColorJitter(brightness=0.5)(image, label, rng=FixedRng(1.5))
    np.testing.assert_array_equal(out, [[[15, 150, 255], [0, 75, 255]]])


def test_color_jitter_zero_saturation_is_grey_and_zero_contrast_is_flat() -> None:
    image = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]]], dtype=np.uint8)
    label = np.zeros((1, 3), dtype=np.uint8)
    grey, _ = ColorJitter(saturation=1.0)(image, label, rng=FixedRng(0.0))
    np.testing.assert_array_equal(grey[0, :, 0], [76, 150, 29])  # 255 * (0.299, 0.587, 0.114), rounded
    assert (grey == grey[..., :1]).all()
    flat, _ = ColorJitter(contrast=1.0)(image, label, rng=FixedRng(0.0))
    assert (flat == 85).all()  # mean luma = 255 / 3


# ---- pipelines and determinism -----------------------------------------------------------------------


def test_train_transforms_pipeline() -> None:
    pipeline = train_transforms((8, 9), color_jitter=0.2)
    names = [type(t).__name__ for t in pipeline.transforms]
    assert names == ["RandomScale", "RandomCrop", "RandomHorizontalFlip", "ColorJitter"]
    assert pipeline.transforms[1].ignore_index == 255
    image, label = arange_pair(5, 6)
    out_image, out_label = pipeline(image, label)
    assert out_image.shape == (8, 9, 3) and out_label.shape == (8, 9)
    assert [type(t).__name__ for t in train_transforms(None, scale_range=None, flip=False).transforms] == []


def test_determinism_under_torch_manual_seed() -> None:
    image = np.random.default_rng(0).integers(0, 256, size=(20, 24, 3), dtype=np.uint8)
    label = np.random.default_rng(1).integers(0, 21, size=(20, 24), dtype=np.uint8)
    pipeline = train_transforms((10, 10), color_jitter=0.3)

    def run(seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
        torch.manual_seed(seed)
        return [pipeline(image, label) for _ in range(3)]

    first, again, other = run(0), run(0), run(1)
    for (a_img, a_lbl), (b_img, b_lbl) in zip(first, again, strict=True):
        np.testing.assert_array_equal(a_img, b_img)
        np.testing.assert_array_equal(a_lbl, b_lbl)
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(first, other, strict=True))
    # successive calls draw fresh randomness
    assert not all(np.array_equal(first[0][0], x[0]) for x in first[1:])


def test_compose_passes_explicit_rng() -> None:
    image, label = arange_pair(6, 7)
    pipeline = Compose([RandomScale(0.8, 1.5), RandomCrop(3, 3), RandomHorizontalFlip()])
    a = pipeline(image, label, rng=np.random.default_rng(5))
    b = pipeline(image, label, rng=np.random.default_rng(5))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


# ---- collate -----------------------------------------------------------------------------------------


def test_pad_collate_shapes_and_padded_values() -> None:
    a = (torch.rand(3, 2, 5) + 1.0, torch.ones(2, 5, dtype=torch.int64))
    b = (torch.rand(3, 4, 3) + 1.0, torch.full((4, 3), 2, dtype=torch.int64))
    images, labels = pad_collate([a, b], ignore_index=250)
    assert images.shape == (2, 3, 4, 5) and images.dtype == torch.float32
    assert labels.shape == (2, 4, 5) and labels.dtype == torch.int64
    torch.testing.assert_close(images[0, :, :2, :5], a[0], rtol=0, atol=0)
    torch.testing.assert_close(images[1, :, :4, :3], b[0], rtol=0, atol=0)
    assert (images[0, :, 2:, :] == 0).all() and (images[1, :, :, 3:] == 0).all()
    assert (labels[0, 2:, :] == 250).all() and (labels[1, :, 3:] == 250).all()
    assert (labels[0, :2] == 1).all() and (labels[1, :, :3] == 2).all()
    # exactly the padded area holds the ignore index (real pixels hold 1 or 2)
    assert int((labels == 250).sum()) == 2 * 20 - 10 - 12


def test_pad_collate_batch_of_one_unchanged() -> None:
    image, label = torch.rand(3, 7, 9), torch.randint(0, 5, (7, 9))
    images, labels = pad_collate([(image, label)])
    assert images.shape == (1, 3, 7, 9) and labels.shape == (1, 7, 9)
    assert torch.equal(images[0], image) and torch.equal(labels[0], label)


def test_pad_collate_class_is_picklable() -> None:
    collate = pickle.loads(pickle.dumps(PadCollate(ignore_index=11)))
    assert collate.ignore_index == 11
    batch = [(torch.zeros(3, 1, 1), torch.zeros(1, 1, dtype=torch.int64)),
             (torch.zeros(3, 2, 1), torch.zeros(2, 1, dtype=torch.int64))]
    assert collate(batch)[1][0, 1, 0] == 11


class TinyDataset(SegmentationDataset):
    """Eight identical arange images of different sizes, so any difference comes from augmentation."""

    def __init__(self, transform) -> None:
        info = DatasetInfo("tiny", tuple(map(str, range(200))), tuple(voc_colormap(200)))
        super().__init__(info=info, inputs=("rgb",), generated=True, transform=transform)

    def __len__(self) -> int:
        return 8

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        h, w = 12 + index % 2, 14
        index_map = (np.arange(h * w) % 200).astype(np.uint8).reshape(h, w)
        return np.repeat(index_map[..., None], 3, axis=2), index_map

    def sample_name(self, index: int) -> str:
        return str(index)


def _batches(num_workers: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    dataset = TinyDataset(transform=train_transforms((6, 6), scale_range=(0.75, 1.25)))
    torch.manual_seed(seed)
    loader = DataLoader(dataset, batch_size=2, num_workers=num_workers, collate_fn=PadCollate())
    return list(loader)


def test_dataloader_reproducible_per_num_workers_and_workers_differ() -> None:
    # Transforms draw from torch's RNG, which the DataLoader seeds per worker: runs are reproducible for a
    # given num_workers, but num_workers=0 and 2 use different streams (so their batches differ).
    for workers in (0, 2):
        first, again = _batches(workers, seed=0), _batches(workers, seed=0)
        for (ia, la), (ib, lb) in zip(first, again, strict=True):
            assert torch.equal(ia, ib) and torch.equal(la, lb)
    # with 2 workers, worker 0 makes batches 0 and 2, worker 1 batches 1 and 3, from distinct streams
    # (the samples are identical pairwise, so any difference comes from augmentation)
    parallel = _batches(2, seed=0)
    assert not torch.equal(parallel[0][1], _batches(0, seed=0)[0][1])
    assert not torch.equal(parallel[0][1], parallel[1][1])
    assert not torch.equal(parallel[2][1], parallel[3][1])
