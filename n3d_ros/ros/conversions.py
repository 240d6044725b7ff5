"""Pure message <-> numpy/core conversions for the ROS layer (no node, no executor).

Every checker raises ValueError saying what was expected and what arrived; the node catches it,
counts the message as rejected and skips it.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point, Pose, Quaternion, Vector3
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from n3d_ros.msg import Object3D, Object3DArray

from ..core.camera import CameraModel
from ..core.frames import rotation_to_quaternion
from ..core.objects import GroundedObject

# encoding -> (channels, index order that gives RGB); None = grey replicated to RGB
COLOR_ENCODINGS: dict[str, tuple[int, tuple[int, ...] | None]] = {
    "rgb8": (3, (0, 1, 2)),
    "bgr8": (3, (2, 1, 0)),
    "rgba8": (4, (0, 1, 2)),
    "bgra8": (4, (2, 1, 0)),
    "mono8": (1, None),
}
# encoding -> (numpy dtype without byte order, bytes per pixel, scale to metres)
DEPTH_ENCODINGS: dict[str, tuple[str, int, float]] = {
    "16UC1": ("u2", 2, 1e-3),   # millimetres (REP 118)
    "mono16": ("u2", 2, 1e-3),  # some drivers label millimetre depth this way
    "32FC1": ("f4", 4, 1.0),    # metres
}


# ------------------------------------------------------------------ stamps
def stamp_to_ns(stamp: Time) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(ns: int) -> Time:
    if ns < 0:
        raise ValueError(f"stamps before the epoch are not representable, got {ns} ns")
    return Time(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))


# ------------------------------------------------------------------ images
def _check_layout(msg: Image, bytes_per_pixel: int) -> None:
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise ValueError(f"image size must be positive, got {w}x{h}")
    if step < w * bytes_per_pixel:
        raise ValueError(f"step {step} is smaller than width*bytes_per_pixel = {w}*{bytes_per_pixel}")
    n = len(msg.data)
    if n == 0:
        raise ValueError("image data is empty")
    if n != step * h:
        raise ValueError(f"data has {n} bytes, expected step*height = {step}*{h} = {step * h}")


def check_image(msg: Image) -> None:
    """Validate a colour Image's encoding and layout without copying pixels."""
    enc = msg.encoding
    if enc not in COLOR_ENCODINGS:
        raise ValueError(f"unsupported image encoding {enc!r}; expected one of {', '.join(COLOR_ENCODINGS)}")
    _check_layout(msg, COLOR_ENCODINGS[enc][0])


def _rows(msg: Image, bytes_per_pixel: int) -> np.ndarray:
    """(H, W*bytes_per_pixel) uint8 view of the pixel bytes with row padding removed."""
    data = msg.data  # array('B') from rclpy, bytes when built by hand
    buf = np.asarray(data, dtype=np.uint8) if isinstance(data, list) else np.frombuffer(data, dtype=np.uint8)
    return buf.reshape(int(msg.height), int(msg.step))[:, : int(msg.width) * bytes_per_pixel]


def image_to_rgb(msg: Image) -> np.ndarray:
    """sensor_msgs/Image (rgb8, bgr8, rgba8, bgra8, mono8) -> (H, W, 3) uint8 RGB (a copy).

    is_bigendian does not matter for 8-bit channels and is ignored.
    """
    check_image(msg)
    channels, order = COLOR_ENCODINGS[msg.encoding]
    px = _rows(msg, channels).reshape(int(msg.height), int(msg.width), channels)
    if order is None:
        return np.repeat(px, 3, axis=2)
    return np.ascontiguousarray(px[:, :, list(order)])


def check_depth(msg: Image) -> None:
    enc = msg.encoding
    if enc not in DEPTH_ENCODINGS:
        raise ValueError(f"unsupported depth encoding {enc!r}; expected 16UC1 (millimetres) or 32FC1 (metres)")
    _check_layout(msg, DEPTH_ENCODINGS[enc][1])


def depth_to_metres(msg: Image) -> np.ndarray:
    """Depth Image (16UC1 mm / 32FC1 m, either byte order) -> (H, W) float32 metres.

    0 (16UC1) and non-finite or non-positive values (32FC1) become NaN = no measurement.
    """
    check_depth(msg)
    kind, bpp, scale = DEPTH_ENCODINGS[msg.encoding]
    dtype = np.dtype(kind).newbyteorder(">" if msg.is_bigendian else "<")
    rows = np.ascontiguousarray(_rows(msg, bpp))
    raw = rows.view(dtype).reshape(int(msg.height), int(msg.width))
    depth = raw.astype(np.float32) * np.float32(scale)
    depth[~(np.isfinite(depth) & (depth > 0))] = np.nan
    return depth


def depth_to_image(depth: np.ndarray, header: Header) -> Image:
    """(H, W) float32 metres -> 32FC1 Image (little endian; NaN kept = no measurement, REP 118)."""
    arr = np.asarray(depth)
    if arr.ndim != 2:
        raise ValueError(f"expected (H, W) depth in metres, got shape {arr.shape}")
    arr = np.ascontiguousarray(arr, dtype="<f4")
    h, w = arr.shape
    msg = Image(header=header, height=h, width=w, encoding="32FC1", is_bigendian=0, step=w * 4)
    msg.data = arr.tobytes()
    return msg


def rgb_to_image(rgb: np.ndarray, header: Header | None = None) -> Image:
    """(H, W, 3) uint8 RGB -> rgb8 Image (for debug_image)."""
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected (H, W, 3) uint8 RGB, got {arr.shape} {arr.dtype}")
    h, w, _ = arr.shape
    msg = Image(height=h, width=w, encoding="rgb8", is_bigendian=0, step=w * 3)
    msg.data = np.ascontiguousarray(arr).tobytes()
    if header is not None:
        msg.header = header
    return msg


# ------------------------------------------------------------------ camera info
def camera_info_to_model(msg: CameraInfo) -> CameraModel:
    """CameraInfo -> CameraModel of the delivered image (ROI cut, then binning)."""
    k = np.asarray(msg.k, dtype=np.float64)
    if k.size != 9 or not np.all(np.isfinite(k)):
        raise ValueError(f"camera_info K must be 9 finite values, got {k.tolist()}")
    if k[0] <= 0 or k[4] <= 0:
        raise ValueError(f"camera_info K needs positive focal lengths, got fx={k[0]}, fy={k[4]} "
                         "(an all-zero K means the camera is not calibrated)")
    if int(msg.width) <= 0 or int(msg.height) <= 0:
        raise ValueError(f"camera_info size must be positive, got {msg.width}x{msg.height}")
    d = np.asarray(msg.d, dtype=np.float64)
    if not np.all(np.isfinite(d)):
        raise ValueError(f"camera_info D must be finite, got {d.tolist()}")
    roi = msg.roi
    return CameraModel.from_camera_info(
        width=int(msg.width), height=int(msg.height), k=k, d=d,
        distortion_model=msg.distortion_model or "plumb_bob", p=np.asarray(msg.p, dtype=np.float64),
        binning_x=int(msg.binning_x), binning_y=int(msg.binning_y),
        roi=(int(roi.x_offset), int(roi.y_offset), int(roi.width), int(roi.height)),
        frame_id=msg.header.frame_id)


def camera_to_camera_info(camera: CameraModel, header: Header) -> CameraInfo:
    """CameraModel -> CameraInfo of the delivered image (no binning, no ROI; P from K if absent)."""
    msg = CameraInfo(header=header, width=camera.width, height=camera.height)
    msg.distortion_model = "plumb_bob" if camera.distortion_model == "none" else camera.distortion_model
    n_d = 8 if msg.distortion_model == "rational_polynomial" else 5
    d = np.zeros(n_d)
    d[: min(n_d, camera.D.size)] = camera.D[:n_d]
    msg.d = [float(v) for v in d]
    msg.k = [float(v) for v in camera.K.reshape(-1)]
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    P = camera.P if camera.P is not None else np.hstack([camera.K, np.zeros((3, 1))])
    msg.p = [float(v) for v in P.reshape(-1)]
    return msg


def size_mismatch(image: Image, camera: CameraModel) -> str | None:
    """None when `image` has the size `camera` describes, else the reason."""
    if (int(image.width), int(image.height)) != (camera.width, camera.height):
        return (f"image is {image.width}x{image.height} but camera_info describes "
                f"{camera.width}x{camera.height} (after binning/ROI)")
    return None


# ------------------------------------------------------------------ rotations
# ------------------------------------------------------------------ objects
def object_to_msg(obj: GroundedObject) -> Object3D:
    """GroundedObject -> Object3D: pose = box centre + orientation (box axes in the header frame),
    size = full extents along the box axes, box_2d in source pixels or four -1 when unknown."""
    box = obj.box
    qx, qy, qz, qw = rotation_to_quaternion(box.rotation)
    c = box.center
    msg = Object3D()
    msg.id = str(obj.id)
    msg.label = str(obj.label)
    msg.score = float(obj.score)
    msg.pose = Pose(position=Point(x=float(c[0]), y=float(c[1]), z=float(c[2])),
                    orientation=Quaternion(x=qx, y=qy, z=qz, w=qw))
    s = box.size
    msg.size = Vector3(x=float(s[0]), y=float(s[1]), z=float(s[2]))
    msg.box_2d = [float(v) for v in (obj.box_2d if obj.box_2d is not None else (-1.0,) * 4)]
    return msg


def objects_to_msgs(objects: Iterable[GroundedObject]) -> list[Object3D]:
    return [object_to_msg(o) for o in objects]


def objects_to_array(objects: Sequence[GroundedObject], header: Header) -> Object3DArray:
    return Object3DArray(header=header, objects=objects_to_msgs(objects))
