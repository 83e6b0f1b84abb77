"""HHA encoding: synthetic rooms rendered analytically from known geometry, checked channel by channel."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from fcnseg.data.hha import (
    HHA_MEAN,
    NYUD_CROPPED_INTRINSICS,
    NYUD_INTRINSICS,
    CameraIntrinsics,
    estimate_gravity,
    hha_from_depth,
    point_cloud_from_depth,
    surface_normals,
)
from fcnseg.errors import DataError

# A small, wide camera so that a 120 x 160 image sees floor and wall; principal point at the image
# centre in 1-based pixel coordinates.
HEIGHT, WIDTH = 120, 160
CAMERA = CameraIntrinsics(fx=130.0, fy=130.0, cx=80.5, cy=60.5)
FLOOR, WALL, CEILING = 0, 1, 2


def gravity_for(pitch_deg: float, roll_deg: float = 0.0) -> np.ndarray:
    """Gravity in camera coordinates (x right, y down, z forward) for a camera pitched down and rolled."""
    pitch, roll = np.radians(pitch_deg), np.radians(roll_deg)
    level = np.array([0.0, np.cos(pitch), np.sin(pitch)])
    about_z = np.array([[np.cos(roll), -np.sin(roll), 0.0], [np.sin(roll), np.cos(roll), 0.0], [0.0, 0.0, 1.0]])
    return about_z @ level


def render(gravity, camera_height, wall_distance=None, ceiling_height=None, camera=CAMERA, shape=(HEIGHT, WIDTH)):
    """Depth (metres), surface labels and 3-D points of a room, by intersecting each pixel's ray with planes."""
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    rays = np.stack([(cols + 1 - camera.cx) / camera.fx, (rows + 1 - camera.cy) / camera.fy, np.ones(shape)], -1)
    forward = np.array([0.0, 0.0, 1.0]) - gravity[2] * gravity
    forward /= np.linalg.norm(forward)
    # plane: normal . P = distance, with the normal pointing away from the camera
    planes = [(gravity, camera_height)]
    planes.append((forward, wall_distance if wall_distance is not None else np.inf))
    planes.append((-gravity, ceiling_height if ceiling_height is not None else np.inf))
    hits = []
    for normal, distance in planes:
        along = rays @ normal
        with np.errstate(divide="ignore", invalid="ignore"):
            hits.append(np.where(along > 1e-9, distance / along, np.inf))
    hits = np.stack(hits, -1)
    label = hits.argmin(-1)
    depth = hits.min(-1)  # rays have z = 1, so the ray parameter is the depth
    assert np.isfinite(depth).all()
    return depth, label, depth[..., None] * rays


def interior(mask: np.ndarray, margin: int = 3) -> np.ndarray:
    """Pixels of ``mask`` whose (2 margin + 1)^2 window lies within ``mask`` (or the image border)."""
    return ndimage.binary_erosion(mask, np.ones((2 * margin + 1,) * 2, dtype=bool), border_value=1)


def angle_between_deg(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip(a @ b / np.linalg.norm(a) / np.linalg.norm(b), -1, 1))))


def plane_determined(valid: np.ndarray, row: int, col: int, radius: int = 3) -> bool:
    """Brute force: do the valid pixels of the window around (row, col) span a plane (3+, not on a line)?"""
    window = valid[max(row - radius, 0) : row + radius + 1, max(col - radius, 0) : col + radius + 1]
    coords = np.argwhere(window).astype(np.float64)
    return len(coords) >= 3 and np.linalg.matrix_rank(coords - coords.mean(0)) == 2


def test_constants_come_from_the_reference():
    assert NYUD_INTRINSICS == pytest.approx((518.857901, 519.469611, 325.582449, 253.736166))
    assert NYUD_CROPPED_INTRINSICS == pytest.approx((518.857901, 519.469611, 285.582449, 208.736166))
    assert HHA_MEAN == (132.431, 94.076, 118.477)


def test_point_cloud_uses_one_based_pixel_coordinates():
    depth = np.full((4, 5), 2.0)
    points = point_cloud_from_depth(depth, CameraIntrinsics(100.0, 50.0, 3.0, 2.0))
    assert points.shape == (4, 5, 3)
    # column index 2 is pixel x = 3 = cx, row index 1 is y = 2 = cy: on the optical axis
    np.testing.assert_allclose(points[1, 2], [0.0, 0.0, 2.0])
    np.testing.assert_allclose(points[3, 4], [(5 - 3) * 2.0 / 100.0, (4 - 2) * 2.0 / 50.0, 2.0])


def test_floor_and_wall_channels_match_the_geometry():
    gravity = gravity_for(pitch_deg=20.0)
    camera_height = 1.4
    depth, label, points = render(gravity, camera_height, wall_distance=3.0)
    assert (label == FLOOR).sum() > 2000 and (label == WALL).sum() > 2000
    hha = hha_from_depth(depth, CAMERA)
    assert hha.shape == (HEIGHT, WIDTH, 3) and hha.dtype == np.uint8

    # channel 0: 310 / depth[m], depth clamped to >= 1 m
    expected_disparity = np.clip(np.floor(310.0 / np.maximum(depth, 1.0) + 0.5), 0, 255)
    assert np.abs(hha[..., 0].astype(int) - expected_disparity).max() <= 1
    # channel 1: centimetres above the floor (the lowest point), from the known camera height
    expected_height = np.clip(100.0 * (camera_height - points @ gravity), 0, 255)
    assert np.abs(hha[..., 1].astype(int) - np.rint(expected_height)).max() <= 1
    floor = interior(label == FLOOR)
    assert hha[..., 1][label == FLOOR].max() <= 1
    # channel 2: angle with gravity + 38: floor normals along gravity, wall normals perpendicular
    assert np.all(np.abs(hha[..., 2][floor].astype(int) - 38) <= 1)
    assert np.all(np.abs(hha[..., 2][interior(label == WALL)].astype(int) - 128) <= 1)


def test_ceiling_is_180_degrees_and_heights_saturate():
    gravity = gravity_for(pitch_deg=0.0)
    depth, label, _ = render(gravity, camera_height=1.4, wall_distance=6.0, ceiling_height=1.2)
    assert (label == CEILING).sum() > 500 and (label == FLOOR).sum() > 500
    hha = hha_from_depth(depth, CAMERA)
    assert np.all(np.abs(hha[..., 2][interior(label == CEILING)].astype(int) - 218) <= 1)
    assert np.all(hha[..., 1][label == CEILING] == 255)  # 260 cm above the floor saturates


def test_height_assumes_floor_130_cm_down_when_the_lowest_point_is_near():
    # The lowest visible point is 50 cm below the camera (< 90 cm): the reference puts the floor at 130 cm.
    depth, label, _ = render(gravity_for(pitch_deg=30.0), camera_height=0.5, wall_distance=2.0)
    hha = hha_from_depth(depth, CAMERA)
    assert np.all(np.abs(hha[..., 1][label == FLOOR].astype(int) - 80) <= 1)


@pytest.mark.parametrize(("pitch", "roll"), [(0.0, 0.0), (15.0, 0.0), (25.0, 10.0), (35.0, -8.0)])
def test_gravity_estimation_recovers_the_camera_pose(pitch, roll):
    gravity = gravity_for(pitch, roll)
    depth, _, _ = render(gravity, camera_height=1.3, wall_distance=3.5)
    noisy = depth + np.random.default_rng(0).normal(0.0, 0.003, depth.shape)  # ~Kinect noise at 1-3 m
    points = point_cloud_from_depth(noisy, CAMERA)
    estimate = estimate_gravity(surface_normals(points, noisy > 0, radius=10))
    assert angle_between_deg(estimate, gravity) < 2.0
    assert np.degrees(np.arcsin(estimate[2])) == pytest.approx(pitch, abs=2.0)


def test_surface_normals_point_away_from_the_camera_and_are_nan_without_support():
    gravity = gravity_for(pitch_deg=20.0)
    depth, label, points = render(gravity, camera_height=1.4, wall_distance=3.0)
    valid = np.ones_like(depth, dtype=bool)
    valid[:, :40] = False
    normals = surface_normals(points, valid, radius=3)
    floor = interior(label == FLOOR) & interior(valid)
    np.testing.assert_allclose(normals[floor], np.broadcast_to(gravity, normals[floor].shape), atol=1e-6)
    # windows reaching column 40 at most see no valid point or one column of them (a line): no plane
    assert np.isnan(normals[:, :38]).all()
    assert not np.isnan(normals[:, 38:]).any()


def test_missing_depth_is_handled_like_the_reference():
    gravity = gravity_for(pitch_deg=25.0)
    camera_height = 1.4
    depth, label, _ = render(gravity, camera_height)
    assert (label == FLOOR).all()
    holes = depth.copy()
    holes[40:70, 60:100] = 0.0  # a large hole
    holes[100, 20] = np.nan  # a single missing pixel
    hha = hha_from_depth(holes, CAMERA)
    full = hha_from_depth(depth, CAMERA)

    hole = np.zeros(depth.shape, dtype=bool)
    hole[40:70, 60:100] = True
    # disparity saturates (depth 0 -> clamped to 1 m -> 310), the point sits at the camera centre
    assert np.all(hha[..., 0][hole] == 255) and hha[100, 20, 0] == 255
    assert np.all(hha[..., 1][hole] == round(100 * camera_height)) and hha[100, 20, 1] == 140
    # the angle comes from the 7 x 7 window's valid neighbours (floor: 38) where they span a plane,
    # else the normal is undetermined -> 180 degrees -> 218
    checked = 0
    for row, col in np.argwhere(ndimage.binary_dilation(hole, np.ones((7, 7), dtype=bool))):
        expected = 38 if plane_determined(~hole, row, col) else 218
        assert abs(int(hha[row, col, 2]) - expected) <= 1, (row, col)
        checked += expected == 218
    assert checked > 700
    assert abs(int(hha[100, 20, 2]) - 38) <= 1
    # elsewhere nothing changes
    elsewhere = ~hole
    elsewhere[100, 20] = False
    np.testing.assert_array_equal(hha[elsewhere], full[elsewhere])


def test_raw_depth_masks_the_normals_but_filled_depth_gives_disparity_and_height():
    gravity = gravity_for(pitch_deg=25.0)
    depth, _, _ = render(gravity, camera_height=1.4)
    raw = np.round(depth * 1000).astype(np.uint16)  # raw sensor depth in mm: units do not matter
    raw[40:70, 60:100] = 0
    hha = hha_from_depth(depth, CAMERA, raw_depth=raw)
    full = hha_from_depth(depth, CAMERA)
    hole = raw == 0
    np.testing.assert_array_equal(hha[..., :2], full[..., :2])
    undetermined = np.zeros_like(hole)
    for row, col in np.argwhere(hole):
        undetermined[row, col] = not plane_determined(~hole, row, col)
    assert undetermined.sum() > 700
    assert np.all(hha[..., 2][undetermined] == 218)
    assert np.all(np.abs(hha[..., 2][~undetermined].astype(int) - 38) <= 1)


def test_nan_and_zero_mark_the_same_missing_depth():
    depth, _, _ = render(gravity_for(pitch_deg=25.0), camera_height=1.4)
    zeros, nans = depth.copy(), depth.copy()
    zeros[10:30, 10:50] = 0.0
    nans[10:30, 10:50] = np.nan
    np.testing.assert_array_equal(hha_from_depth(zeros, CAMERA), hha_from_depth(nans, CAMERA))


@pytest.mark.parametrize(
    ("depth", "message"),
    [
        (np.ones((4, 5, 3)), "2-D"),
        (np.ones(7), "2-D"),
        (np.zeros((8, 8)), "no valid depth"),
        (np.full((8, 8), np.nan), "no valid depth"),
        (np.full((8, 8), -1.0), "negative"),
        (np.full((8, 8), np.inf), "infinite"),
        (np.full((8, 8), "a"), "real numbers"),
    ],
)
def test_bad_depth_raises_data_error(depth, message):
    with pytest.raises(DataError, match=message):
        hha_from_depth(depth, CAMERA)


@pytest.mark.parametrize(
    "intrinsics", [(500.0, 500.0, 80.0), (500.0, -500.0, 80.0, 60.0), (0, 1, 1, 1), ("a", 1, 2, 3), (np.nan, 1, 1, 1)]
)
def test_bad_intrinsics_raise_data_error(intrinsics):
    with pytest.raises(DataError, match="intrinsics must be 4 positive numbers"):
        hha_from_depth(np.ones((8, 8)), intrinsics)


def test_raw_depth_of_another_shape_raises_data_error():
    with pytest.raises(DataError, match="raw depth map has shape"):
        hha_from_depth(np.ones((8, 8)), CAMERA, raw_depth=np.ones((8, 9)))
