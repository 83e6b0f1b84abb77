import numpy as np
import pytest
import torch

from fcnseg.data.info import SYNTHETIC_ROADS
from fcnseg.data.synthetic import BUILDING, LANE_MARKING, POLE, SIDEWALK, SyntheticRoads, render_scene

NUM_SCENES = 40


@pytest.fixture(scope="module")
def scenes() -> list[tuple[np.ndarray, np.ndarray]]:
    return [render_scene(seed) for seed in range(NUM_SCENES)]


def run_lengths(mask_row: np.ndarray) -> list[int]:
    """Lengths of the runs of True in a 1-D boolean array."""
    padded = np.concatenate([[False], mask_row, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return list(edges[1::2] - edges[0::2])


def test_same_seed_gives_same_arrays():
    image_a, label_a = render_scene(7)
    image_b, label_b = render_scene(7)
    np.testing.assert_array_equal(image_a, image_b)
    np.testing.assert_array_equal(label_a, label_b)


def test_different_seeds_differ(scenes):
    (image_0, label_0), (image_1, label_1) = scenes[0], scenes[1]
    assert not np.array_equal(image_0, image_1)
    assert not np.array_equal(label_0, label_1)


def test_shapes_dtypes_and_label_values(scenes):
    for image, label in scenes:
        assert image.shape == (128, 160, 3) and image.dtype == np.uint8
        assert label.shape == (128, 160) and label.dtype == np.uint8
        assert label.max() < SYNTHETIC_ROADS.num_classes


def test_every_class_appears_in_twenty_images(scenes):
    present = set()
    for _, label in scenes[:20]:
        present |= set(np.unique(label).tolist())
    assert present == set(range(SYNTHETIC_ROADS.num_classes))


def test_thin_structures_appear_in_nearly_every_image(scenes):
    with_poles = sum((label == POLE).any() for _, label in scenes)
    with_lanes = sum((label == LANE_MARKING).any() for _, label in scenes)
    assert with_poles >= 0.9 * NUM_SCENES
    assert with_lanes >= 0.9 * NUM_SCENES


@pytest.mark.parametrize("cls", [POLE, LANE_MARKING], ids=["pole", "lane_marking"])
def test_thin_structures_are_thin(scenes, cls):
    longest = 0
    for _, label in scenes:
        for row in label == cls:
            if row.any():
                longest = max(longest, *run_lengths(row))
    assert 1 <= longest <= 3


def test_poles_are_tall_and_reach_above_the_horizon(scenes):
    # Poles stand on the ground and reach into sky/buildings: their columns span many rows.
    for _, label in scenes[:10]:
        rows = np.flatnonzero((label == POLE).any(axis=1))
        sidewalk_rows = np.flatnonzero((label == SIDEWALK).any(axis=1))
        if rows.size:
            assert rows.min() < sidewalk_rows.min()  # above the horizon
            assert rows.max() > sidewalk_rows.min()  # standing below it


def test_colour_alone_does_not_separate_classes(scenes):
    # Overlapping colours: some pole pixel and some building pixel are within a few grey levels.
    poles = np.concatenate([image[label == POLE] for image, label in scenes[:10]]).astype(np.int16)
    buildings = np.concatenate([image[label == BUILDING] for image, label in scenes[:10]]).astype(np.int16)
    pole_colours = set(map(tuple, poles[::7] // 8))
    building_colours = set(map(tuple, buildings[::7] // 8))
    assert len(pole_colours & building_colours) > 10


def test_odd_sizes_work():
    image, label = render_scene(3, height=97, width=131)
    assert image.shape == (97, 131, 3)
    assert label.shape == (97, 131)
    assert label.max() < SYNTHETIC_ROADS.num_classes


def test_too_small_size_is_refused():
    with pytest.raises(ValueError, match="at least"):
        render_scene(0, height=16, width=160)


def test_train_and_val_are_disjoint():
    train = SyntheticRoads(num_images=5, split="train")
    val = SyntheticRoads(num_images=5, split="val")
    assert not {train.scene_seed(i) for i in range(5)} & {val.scene_seed(i) for i in range(5)}
    for i in range(3):
        assert not np.array_equal(train.load(i)[1], val.load(i)[1])


def test_dataset_basics():
    dataset = SyntheticRoads(num_images=4, split="val", height=64, width=96)
    assert len(dataset) == 4
    assert dataset.info is SYNTHETIC_ROADS
    assert dataset.sample_name(2) == "val_000002"
    np.testing.assert_array_equal(dataset.load(2)[1], render_scene(1_000_002, 64, 96)[1])
    with pytest.raises(IndexError):
        dataset.load(4)


def test_getitem_returns_tensors():
    image, label = SyntheticRoads(num_images=2, height=97, width=131)[1]
    assert image.shape == (3, 97, 131) and image.dtype == torch.float32
    assert label.shape == (97, 131) and label.dtype == torch.int64


def test_getitem_applies_the_joint_transform():
    def flip(image, label):
        return image[:, ::-1], label[:, ::-1]

    dataset = SyntheticRoads(num_images=1, transform=flip)
    _, label = dataset[0]
    np.testing.assert_array_equal(label.numpy(), dataset.load(0)[1][:, ::-1])


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="split"):
        SyntheticRoads(split="training")
    with pytest.raises(ValueError, match="num_images"):
        SyntheticRoads(num_images=0)
