"""The three coordinate conventions the package speaks, and the rotations between them.

OPTICAL: camera optical frame, x right, y down, z forward (REP 103 `*_optical_frame`, OpenCV, MoGe).
N3D:     N3D-VLM's point-cloud frame, x left, y up, z forward (optical with x and y negated).
BODY:    REP 103 body frame at the camera, x forward, y left, z up.
All three share the camera centre as origin and are right-handed, so conversions are rotations.
"""
from __future__ import annotations

from enum import Enum

import numpy as np


class Frame(str, Enum):
    OPTICAL = "optical"
    N3D = "n3d"
    BODY = "body"


# R_FROM_OPTICAL[f] @ p_optical = p_f
_FROM_OPTICAL = {
    Frame.OPTICAL: np.eye(3),
    Frame.N3D: np.diag([-1.0, -1.0, 1.0]),
    Frame.BODY: np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]),
}

# Unit "up" vector of each frame when the camera is level (gravity = -up).
UP = {
    Frame.OPTICAL: np.array([0.0, -1.0, 0.0]),
    Frame.N3D: np.array([0.0, 1.0, 0.0]),
    Frame.BODY: np.array([0.0, 0.0, 1.0]),
}

# Index of the axis about which "yaw" turns in each frame (the level camera's vertical axis).
YAW_AXIS = {Frame.OPTICAL: 1, Frame.N3D: 1, Frame.BODY: 2}


def mirror_image_vectors(a: np.ndarray, channel_axis: int) -> np.ndarray:
    """Per-pixel optical-frame vectors (points, or rays as (x/z, y/z)), x first along `channel_axis`,
    of the mirror image: pixel columns reversed and x negated, i.e. the scene reflected in the
    camera's y-z plane, which is how mirrored images are made in training and at inference.
    Channel-first (..., C, h, w) or channel-last (h, w, C) layouts."""
    a = np.asarray(a)
    channel_axis %= a.ndim
    columns = a.ndim - 2 if channel_axis == a.ndim - 1 else a.ndim - 1
    sign = np.ones(a.shape[channel_axis], dtype=a.dtype)
    sign[0] = -1
    shape = [1] * a.ndim
    shape[channel_axis] = -1
    return np.flip(a, axis=columns) * sign.reshape(shape)


def rotation_between(src: Frame | str, dst: Frame | str) -> np.ndarray:
    """(3,3) R such that p_dst = R @ p_src."""
    src, dst = Frame(src), Frame(dst)
    return _FROM_OPTICAL[dst] @ _FROM_OPTICAL[src].T


def convert_points(points: np.ndarray, src: Frame | str, dst: Frame | str) -> np.ndarray:
    """(..., 3) points from frame `src` to frame `dst`."""
    return np.asarray(points, dtype=np.float64) @ rotation_between(src, dst).T


def axis_rotation(axis: int, angle: float) -> np.ndarray:
    """Right-handed rotation by `angle` radians about coordinate axis 0, 1 or 2."""
    c, s = np.cos(angle), np.sin(angle)
    if axis == 0:
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]], dtype=np.float64)
    if axis == 1:
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]], dtype=np.float64)
    if axis == 2:
        return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=np.float64)
    raise ValueError(f"axis must be 0, 1 or 2, got {axis}")


def rotation_from_euler_xyz(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """R = Rz(yaw) @ Ry(pitch) @ Rx(roll) (extrinsic x, then y, then z)."""
    return axis_rotation(2, yaw) @ axis_rotation(1, pitch) @ axis_rotation(0, roll)


def euler_xyz_from_rotation(R: np.ndarray) -> tuple[float, float, float]:
    """Inverse of `rotation_from_euler_xyz` (roll, pitch, yaw); pitch in [-pi/2, pi/2]."""
    R = np.asarray(R, dtype=np.float64)
    pitch = float(np.arcsin(np.clip(-R[2, 0], -1.0, 1.0)))
    if abs(R[2, 0]) < 1 - 1e-9:
        roll = float(np.arctan2(R[2, 1], R[2, 2]))
        yaw = float(np.arctan2(R[1, 0], R[0, 0]))
    else:  # gimbal lock: put everything in yaw
        roll = 0.0
        yaw = float(np.arctan2(-R[0, 1], R[1, 1]))
    return roll, pitch, yaw


def orthonormalize(R: np.ndarray) -> np.ndarray:
    """Nearest proper rotation (SVD), for matrices that picked up numeric drift."""
    U, _, Vt = np.linalg.svd(np.asarray(R, dtype=np.float64))
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    return U @ D @ Vt


def gravity_rotation(up: np.ndarray, frame: Frame | str = Frame.OPTICAL) -> np.ndarray:
    """(3,3) rotation that takes the measured `up` vector (in `frame`) onto the frame's level up.

    Apply it to points of a tilted camera to get a gravity-aligned copy of the same frame.
    """
    a = np.asarray(up, dtype=np.float64)
    n = np.linalg.norm(a)
    if not np.isfinite(n) or n < 1e-9:
        raise ValueError(f"up must be a finite non-zero vector, got {up}")
    a = a / n
    b = UP[Frame(frame)]
    v = np.cross(a, b)
    c = float(np.dot(a, b))
    if c < -1 + 1e-12:  # opposite: rotate 180 degrees about any axis orthogonal to a
        ortho = np.array([1.0, 0.0, 0.0]) if abs(a[0]) < 0.9 else np.array([0.0, 0.0, 1.0])
        axis = np.cross(a, ortho)
        axis /= np.linalg.norm(axis)
        return 2 * np.outer(axis, axis) - np.eye(3)
    vx = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + vx + vx @ vx / (1 + c)


def rotation_to_quaternion(R: np.ndarray) -> np.ndarray:
    """(3,3) rotation -> (4,) unit quaternion (x, y, z, w) with w >= 0 (Shepperd's method)."""
    R = np.asarray(R, dtype=np.float64).reshape(3, 3)
    tr = float(np.trace(R))
    if tr > 0:
        s = 2.0 * np.sqrt(tr + 1.0)
        q = np.array([(R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s, s / 4])
    else:  # divide by the largest diagonal candidate for numerical stability
        i = int(np.argmax(np.diag(R)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * np.sqrt(1.0 + R[i, i] - R[j, j] - R[k, k])
        q = np.empty(4)
        q[i] = s / 4
        q[j] = (R[j, i] + R[i, j]) / s
        q[k] = (R[k, i] + R[i, k]) / s
        q[3] = (R[k, j] - R[j, k]) / s
    q /= np.linalg.norm(q)
    return -q if q[3] < 0 else q


def quaternion_to_rotation(x: float, y: float, z: float, w: float) -> np.ndarray:
    """(x, y, z, w) quaternion (normalised here) -> (3,3) rotation."""
    q = np.array([x, y, z, w], dtype=np.float64)
    n = np.linalg.norm(q)
    if not np.isfinite(n) or n < 1e-12:
        raise ValueError(f"quaternion must be finite and non-zero, got {q.tolist()}")
    x, y, z, w = q / n
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])
