"""target_frame support: tf2_ros where it imports, a clear refusal where it does not.

The PyPI ROS wheels have no tf2_ros; full ROS 2 installs do. Results are transformed with the
transform at the IMAGE stamp (not "latest"), so boxes stay right while the robot moves.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np

from ..core.objects import GroundedObject
from ..core.frames import quaternion_to_rotation
from .conversions import ns_to_stamp

try:  # guarded: absent from the pip-wheel installation
    import tf2_ros
    from rclpy.duration import Duration
    from rclpy.time import Time
    TF_AVAILABLE = True
except ImportError:
    tf2_ros = None
    TF_AVAILABLE = False


def needs_transform(target_frame: str, image_frame: str) -> bool:
    return bool(target_frame) and target_frame != image_frame


def unavailable_message(image_frame: str) -> str:
    return ("TF is unavailable in this installation (tf2_ros not importable); request target_frame '' "
            f"or the image frame '{image_frame}'")


def transform_objects(objects: Sequence[GroundedObject], R: np.ndarray, t: np.ndarray) -> list[GroundedObject]:
    """Apply p_target = R p_source + t to every box (box_2d stays in source pixels)."""
    return [replace(o, box=o.box.transformed(R, t)) for o in objects]


class TfTransformer:
    """Buffer + TransformListener owned by a node; `lookup` at a stamp with a timeout."""

    def __init__(self, node, *, cache_sec: float = 10.0) -> None:
        if not TF_AVAILABLE:
            raise RuntimeError("tf2_ros is not importable in this installation")
        self._buffer = tf2_ros.Buffer(cache_time=Duration(seconds=cache_sec))
        self._listener = tf2_ros.TransformListener(self._buffer, node, spin_thread=False)

    def lookup(self, target_frame: str, source_frame: str, stamp_ns: int,
               timeout_sec: float) -> tuple[np.ndarray, np.ndarray]:
        """(R (3,3), t (3,) metres) taking source-frame points into target_frame at stamp_ns.

        Raises LookupError with tf2's reason (unknown frame, extrapolation, timeout).
        """
        try:
            tf = self._buffer.lookup_transform(target_frame, source_frame,
                                               Time.from_msg(ns_to_stamp(stamp_ns)),
                                               timeout=Duration(seconds=timeout_sec))
        except (tf2_ros.LookupException, tf2_ros.ConnectivityException,
                tf2_ros.ExtrapolationException, tf2_ros.TransformException) as exc:
            raise LookupError(f"no transform from '{source_frame}' to '{target_frame}' at the image "
                              f"stamp: {exc}") from exc
        q = tf.transform.rotation
        v = tf.transform.translation
        return quaternion_to_rotation(q.x, q.y, q.z, q.w), np.array([v.x, v.y, v.z])

    def close(self) -> None:
        self._listener.unregister()
