"""HHA encoding of a depth map (Gupta, Girshick, Arbelaez, Malik, ECCV 2014), as fed to FCN's NYUDv2 nets.

Three uint8 channels per pixel, in the order the reference ``rcnn/saveHHA.m`` (s-gupta/rcnn-depth) writes
them to its PNGs, i.e. R, G, B as PIL reads them back and as FCN's NYUD data layer consumes them:

0. horizontal disparity: ``310 / depth`` with depth in metres, clamped to at least 1 m (so at most 255);
1. height above the lowest point of the scene in centimetres (the floor; see :func:`height_above_ground`);
2. angle between the local surface normal and the inferred gravity direction, in degrees, plus 38
   (so a floor, normal along gravity, gives 38, a wall 128, a ceiling 218).

FCN subtracts the per-channel mean :data:`HHA_MEAN` from these (``nyud_layers.py`` of
shelhamer/fcn.berkeleyvision.org, without reordering the channels).

The steps follow the authors' MATLAB code: the point cloud (``getPointCloudFromZ.m``), least-squares
plane normals over square windows (``computeNormalsSquareSupport.m``), gravity from the normals
(``getYDir.m``), the rotation that brings gravity onto the camera's y axis (``getRMatrix.m``,
``rotatePC.m``) and the height offset (``processDepthImage.m``); those live in s-gupta/rgbdutils and
s-gupta/rcnn-depth (``mcg/depth_features/processDepthImage.m``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from fcnseg.errors import DataError

__all__ = [
    "HHA_MEAN",
    "NYUD_CROPPED_INTRINSICS",
    "NYUD_INTRINSICS",
    "CameraIntrinsics",
    "check_intrinsics",
    "estimate_gravity",
    "height_above_ground",
    "hha_from_depth",
    "intrinsics_for",
    "point_cloud_from_depth",
    "surface_normals",
]


class CameraIntrinsics(NamedTuple):
    """Pinhole camera: focal lengths and principal point in pixels.

    The principal point uses the reference's 1-based pixel coordinates (MATLAB ``meshgrid(1:W, 1:H)``):
    the centre of the top-left pixel is (1, 1).
    """

    fx: float
    fy: float
    cx: float
    cy: float


# NYUDv2 Kinect colour camera, 640 x 480 frames: getCameraParam.m ('color') of s-gupta/nyu-hooks, the
# values of the NYU Depth V2 toolbox calibration.
NYUD_INTRINSICS = CameraIntrinsics(
    fx=5.1885790117450188e02, fy=5.1946961112127485e02, cx=3.2558244941119034e02, cy=2.5373616633400465e02
)

# The same camera for the 425 x 560 crop (rows 46-470, columns 41-600, 1-based) that the NYUD data of
# rcnn-depth and FCN use: cropCamera.m of s-gupta/nyu-hooks moves the principal point by (-40, -45).
# rcnn-depth's scripts (scripts/script_detection.m) compute the HHA PNGs on that crop with these.
NYUD_CROPPED_INTRINSICS = CameraIntrinsics(
    fx=NYUD_INTRINSICS.fx, fy=NYUD_INTRINSICS.fy, cx=NYUD_INTRINSICS.cx - 40.0, cy=NYUD_INTRINSICS.cy - 45.0
)

# Per-channel mean FCN subtracts from the HHA PNG (disparity, height, angle): nyud_layers.py of
# shelhamer/fcn.berkeleyvision.org.
HHA_MEAN = (132.431, 94.076, 118.477)

# Constants of processDepthImage.m (s-gupta/rcnn-depth, mcg/depth_features/).
_ANGLE_NORMAL_RADIUS = 3  # normalParam.patchSize(1): 7 x 7 windows for the angle channel
_GRAVITY_NORMAL_RADIUS = 10  # normalParam.patchSize(2): 21 x 21 windows, smoother normals for gravity
_GRAVITY_THRESHOLDS_DEG = (45.0, 15.0)  # yDirParam.angleThresh
_GRAVITY_ITERATIONS = (5, 5)  # yDirParam.iter
_CAMERA_DOWN = np.array([0.0, 1.0, 0.0])  # yDirParam.y0: image rows grow downwards
_MIN_FLOOR_DROP_CM = 90.0  # if the lowest point is less than this below the camera...
_DEFAULT_FLOOR_DROP_CM = 130.0  # ...the floor is assumed this far below it instead
# getRMatrix.m treats rotations of at most 0.1 degree as the identity.
_MIN_ROTATION_DEG = 0.1
_COLLINEAR_TOLERANCE = 1e-8  # see _degenerate_windows
# saveHHA.m: disparity 31000 / depth in cm, depth clamped to at least 100 cm; the angle is offset by
# 128 - 90 "keeping some slack" so that 0..180 degrees fits in a byte.
_DISPARITY_SCALE_M = 310.0
_MIN_DEPTH_M = 1.0
_ANGLE_OFFSET_DEG = 38.0


def _check_depth(depth_m: np.ndarray, name: str = "depth map") -> np.ndarray:
    """The depth map as float64 with NaN replaced by 0 (missing); DataError for anything unusable."""
    array = np.asarray(depth_m)
    if array.ndim != 2:
        raise DataError(f"{name} must be 2-D (H x W), got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise DataError(f"{name} must hold real numbers, got dtype {array.dtype}")
    depth = array.astype(np.float64)
    if np.isinf(depth).any():
        raise DataError(f"{name} has infinite values; mark missing depth with 0 or NaN")
    depth = np.nan_to_num(depth, nan=0.0)
    if (depth < 0).any():
        raise DataError(f"{name} has negative values (min {depth.min():g}); depth must be metres >= 0")
    return depth


def check_intrinsics(intrinsics: object) -> CameraIntrinsics:
    """``intrinsics`` as :class:`CameraIntrinsics`; DataError unless it is 4 positive finite numbers."""
    try:
        values = np.asarray(intrinsics, dtype=np.float64)
    except (TypeError, ValueError):
        values = np.empty(0)
    if values.shape != (4,) or not np.isfinite(values).all() or (values <= 0).any():
        raise DataError(f"intrinsics must be 4 positive numbers (fx, fy, cx, cy), got {intrinsics!r}")
    return CameraIntrinsics(*(float(v) for v in values))


def point_cloud_from_depth(
    depth_m: np.ndarray, intrinsics: CameraIntrinsics | Sequence[float] = NYUD_INTRINSICS
) -> np.ndarray:
    """Back-project a depth map to an H x W x 3 point cloud (X right, Y down, Z forward), in metres.

    Pixel (row i, column j) sits at 1-based coordinates (j + 1, i + 1) as in getPointCloudFromZ.m, so
    the calibrated principal point means the same thing as in the reference. Missing depth (0 or NaN)
    gives the camera centre (0, 0, 0), as a zero depth does in the reference.
    """
    depth = _check_depth(depth_m)
    fx, fy, cx, cy = check_intrinsics(intrinsics)
    height, width = depth.shape
    x_ratio = (np.arange(1, width + 1, dtype=np.float64) - cx) / fx
    y_ratio = (np.arange(1, height + 1, dtype=np.float64) - cy) / fy
    return np.stack([depth * x_ratio[None, :], depth * y_ratio[:, None], depth], axis=-1)


def surface_normals(points: np.ndarray, valid: np.ndarray, radius: int) -> np.ndarray:
    """Unit normals of planes fitted over (2 radius + 1)^2 windows; NaN where no plane is determined.

    Like computeNormalsSquareSupport.m (with one superpixel), each window's valid points are fitted by
    least squares with a plane ``a X + b Y + c Z = 1`` written per point as
    ``a X/Z + b Y/Z + c = 1/Z``, so the normal equations are box sums of per-pixel products; windows
    are cut off (zero padded) at the image border. The 3 x 3 systems are solved with the adjugate, as
    the reference does, since the scale of (a, b, c) is normalised away. Windows whose valid points do
    not determine a plane (see :func:`_degenerate_windows`) get a NaN normal.

    Normals are oriented away from the camera (positive dot product with the pixel's point), so a
    floor below the camera has a normal pointing down, along gravity.
    """
    valid = np.asarray(valid, dtype=bool)
    z = np.where(valid, points[..., 2], 1.0)  # placeholder 1 avoids dividing by 0; masked out below
    q = np.where(valid, points[..., 0] / z, 0.0)
    r = np.where(valid, points[..., 1] / z, 0.0)
    s = np.where(valid, 1.0 / z, 0.0)
    one = valid.astype(np.float64)
    size = 2 * radius + 1

    def box(values: np.ndarray) -> np.ndarray:
        # Window sums, zero padded like MATLAB's filter2. Summed directly along each axis rather than as
        # a running sum (uniform_filter), whose drift is tens of times larger and blurs the collinearity test.
        ones = np.ones(size)
        rows_summed = ndimage.correlate1d(values, ones, axis=0, mode="constant", cval=0.0)
        return ndimage.correlate1d(rows_summed, ones, axis=1, mode="constant", cval=0.0)

    a11, a12, a13, a22, a23, a33 = (box(v) for v in (q * q, q * r, q, r * r, r, one))
    b1, b2, b3 = box(q * s), box(r * s), box(s)
    # Adjugate of the symmetric matrix [[a11 a12 a13] [a12 a22 a23] [a13 a23 a33]] times (b1 b2 b3).
    c11 = a22 * a33 - a23 * a23
    c12 = a13 * a23 - a12 * a33
    c13 = a12 * a23 - a13 * a22
    c22 = a11 * a33 - a13 * a13
    c23 = a12 * a13 - a11 * a23
    c33 = a11 * a22 - a12 * a12
    normals = np.stack(
        [c11 * b1 + c12 * b2 + c13 * b3, c12 * b1 + c22 * b2 + c23 * b3, c13 * b1 + c23 * b2 + c33 * b3], axis=-1
    )
    length = np.linalg.norm(normals, axis=-1, keepdims=True)
    degenerate = _degenerate_windows(a11, a12, a13, a22, a23, a33)
    with np.errstate(invalid="ignore", divide="ignore"):
        normals = np.where(~degenerate[..., None] & (length > 0), normals / length, np.nan)
    # Orientation as in the reference: first towards +Z, then away from the camera; the second flip
    # decides except where the point is the camera centre (missing depth) and the first one stands.
    normals *= np.where(normals[..., 2:] < 0, -1.0, 1.0)
    facing = np.einsum("hwc,hwc->hw", normals, points)
    normals *= np.where(facing < 0, -1.0, 1.0)[..., None]
    return normals


def _degenerate_windows(
    sum_qq: np.ndarray,
    sum_qr: np.ndarray,
    sum_q: np.ndarray,
    sum_rr: np.ndarray,
    sum_r: np.ndarray,
    count: np.ndarray,
) -> np.ndarray:
    """Windows with fewer than 3 valid points, or with all of them on one line: no plane fits them.

    The arguments are window sums of q^2, q r, q, r^2, r and of the valid mask, with (q, r) = (X/Z, Y/Z)
    the image coordinates of the valid points. Their 2 x 2 covariance is singular exactly when the
    points are collinear in the image, hence in space. The reference divides 0 by 0 there (in exact
    arithmetic; in floating point it returns rounding noise as a normal) and ends with an angle of 180
    degrees; flagging them keeps that outcome independent of rounding.
    """
    enough = count >= 2.5  # sums of ones: exact integers
    count = np.where(enough, count, 1.0)  # 1 keeps the divisions finite; masked out anyway
    mean_q, mean_r = sum_q / count, sum_r / count
    var_q = sum_qq / count - mean_q * mean_q
    var_r = sum_rr / count - mean_r * mean_r
    cov_qr = sum_qr / count - mean_q * mean_r
    spread = var_q * var_r - cov_qr * cov_qr
    # Scale-free test of the spread against the squared total variance: points on one line score 0 up
    # to rounding (about 1e-11 on NYUD frames), a 2 x 2 block of pixels 0.25, the flattest
    # triangle of grid points in a 21 x 21 window about 1e-6.
    return ~(enough & (spread > _COLLINEAR_TOLERANCE * (var_q + var_r) ** 2))


def estimate_gravity(
    normals: np.ndarray,
    thresholds_deg: tuple[float, ...] = _GRAVITY_THRESHOLDS_DEG,
    iterations: tuple[int, ...] = _GRAVITY_ITERATIONS,
    initial: np.ndarray = _CAMERA_DOWN,
) -> np.ndarray:
    """The gravity direction (unit 3-vector in camera coordinates, pointing down) from a normal field.

    getYDir.m: starting from the camera's down axis, each round splits the normals into those within
    ``t`` degrees of the current estimate (floors, ceilings, table tops: should be parallel to gravity)
    and those within ``t`` degrees of perpendicular to it (walls), and takes the direction that is most
    parallel to the first set and most perpendicular to the second: the eigenvector of
    ``sum(w w^T over walls) - sum(f f^T over floors)`` with the smallest eigenvalue. It runs 5 rounds
    at 45 degrees, then 5 at 15 degrees. NaN normals are ignored.
    """
    flat = np.asarray(normals, dtype=np.float64).reshape(-1, 3)
    flat = flat[~np.isnan(flat).any(axis=1)]
    direction = np.asarray(initial, dtype=np.float64) / np.linalg.norm(initial)
    for threshold, count in zip(thresholds_deg, iterations, strict=True):
        cos_t, sin_t = np.cos(np.radians(threshold)), np.sin(np.radians(threshold))
        for _ in range(count):
            similarity = np.abs(flat @ direction)
            parallel = flat[similarity > cos_t]
            perpendicular = flat[similarity < sin_t]
            if len(parallel) == 0 and len(perpendicular) == 0:
                break  # nothing to fit: keep the estimate (the reference would return a zero vector)
            matrix = perpendicular.T @ perpendicular - parallel.T @ parallel
            _, vectors = np.linalg.eigh(matrix)  # eigenvalues ascending
            candidate = vectors[:, 0]
            # Keep the sign of the previous estimate so that "down" stays down.
            direction = candidate if candidate @ direction >= 0 else -candidate
    return direction


def height_above_ground(points: np.ndarray, gravity: np.ndarray) -> np.ndarray:
    """Height of every point above the lowest one, in centimetres, along ``-gravity``.

    processDepthImage.m rotates the cloud so that gravity becomes the camera's y axis (getRMatrix.m,
    rotatePC.m) and reads ``-y``; that is the projection on ``-gravity`` computed here directly, with
    rotations under 0.1 degree left out as the reference does. The zero is the lowest point, unless that
    is less than 90 cm below the camera: then the floor is taken to be 130 cm below it (the camera is
    looking at a scene with no floor in view).
    """
    gravity = np.asarray(gravity, dtype=np.float64) / np.linalg.norm(gravity)
    tilt = np.degrees(np.arccos(np.clip(gravity @ _CAMERA_DOWN, -1.0, 1.0)))
    down = gravity if tilt > _MIN_ROTATION_DEG else _CAMERA_DOWN
    height_cm = -100.0 * (points @ down)
    lowest = float(np.nanmin(height_cm))
    if lowest > -_MIN_FLOOR_DROP_CM:
        lowest = -_DEFAULT_FLOOR_DROP_CM
    return height_cm - lowest


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """MATLAB's ``uint8()``: round half away from zero, saturate to 0..255, NaN to 0."""
    rounded = np.floor(np.nan_to_num(values, nan=0.0) + 0.5)  # negatives clip to 0 either way
    return np.clip(rounded, 0, 255).astype(np.uint8)


def hha_from_depth(
    depth_m: np.ndarray,
    intrinsics: CameraIntrinsics | Sequence[float] = NYUD_INTRINSICS,
    raw_depth: np.ndarray | None = None,
) -> np.ndarray:
    """HHA image (H x W x 3 uint8: disparity, height, angle) of a depth map in metres.

    ``depth_m``: float depth in metres, 0 or NaN where missing. ``intrinsics``: (fx, fy, cx, cy) of the
    camera, principal point 1-based (use :data:`NYUD_CROPPED_INTRINSICS` for NYUD's 425 x 560 crop).
    ``raw_depth``: optionally the raw sensor depth when ``depth_m`` has been hole-filled, as in
    saveHHA.m; its zeros (or NaNs) are left out of the normal fits while the filled depth still gives
    disparity and height there. Its units do not matter.

    Missing depth is handled like a zero depth in the reference: disparity 255, the point at the camera
    centre for the height (so the camera's height), and a normal from the neighbouring valid points or,
    where the 7 x 7 window holds fewer than 3 of them or only points on one line, an angle of 180
    degrees (channel value 218).
    """
    depth = _check_depth(depth_m)
    camera = check_intrinsics(intrinsics)
    valid = depth > 0
    if raw_depth is not None:
        raw = _check_depth(raw_depth, name="raw depth map")
        if raw.shape != depth.shape:
            raise DataError(f"raw depth map has shape {raw.shape}, the depth map {depth.shape}")
        valid &= raw > 0
    if not valid.any():
        raise DataError("depth map has no valid depth (all pixels are 0 or NaN)")

    points = point_cloud_from_depth(depth, camera)
    gravity = estimate_gravity(surface_normals(points, valid, _GRAVITY_NORMAL_RADIUS))
    normals = surface_normals(points, valid, _ANGLE_NORMAL_RADIUS)
    # An undetermined normal gives 180 degrees: MATLAB's max(-1, NaN) in saveHHA.m is -1.
    cosine = np.nan_to_num(normals @ gravity, nan=-1.0)
    angle_deg = np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0)))

    disparity = _DISPARITY_SCALE_M / np.maximum(depth, _MIN_DEPTH_M)
    height = height_above_ground(points, gravity)
    return np.stack([_to_uint8(disparity), _to_uint8(height), _to_uint8(angle_deg + _ANGLE_OFFSET_DEG)], axis=-1)


def intrinsics_for(height: int, width: int, intrinsics: Sequence[float] | None = None) -> CameraIntrinsics:
    """The camera of a ``height`` x ``width`` depth map: ``intrinsics`` when given, else NYUDv2's Kinect for its
    two frame sizes (640 x 480 as recorded, 560 x 425 as the authors' NYUD data crops it); other sizes need
    ``intrinsics``, as guessing a camera would silently give wrong heights and angles."""
    if intrinsics is not None:
        return check_intrinsics(intrinsics)
    known = {(480, 640): NYUD_INTRINSICS, (425, 560): NYUD_CROPPED_INTRINSICS}
    if (height, width) not in known:
        raise DataError(f"a {width}x{height} depth map is not a NYUDv2 frame (640x480, or 560x425 cropped): give its "
                        "camera's intrinsics (fx fy cx cy in pixels: fcnseg predict --intrinsics FX FY CX CY, or "
                        "the Segmenter's intrinsics in Python) to compute its HHA encoding")
    return known[(height, width)]
