"""Message <-> numpy/core conversions, markers, diagnostics and QoS (pure functions, no node)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from n3d_ros.core.box import BOX_EDGES, Box3D
from n3d_ros.core.frames import quaternion_to_rotation, rotation_from_euler_xyz, rotation_to_quaternion
from n3d_ros.core.objects import GroundedObject
from n3d_ros.ros import conversions as C
from n3d_ros.ros.diagnostics import NodeHealth, health_to_array, level_and_message
from n3d_ros.ros.frame_buffer import BufferStats
from n3d_ros.ros.markers import objects_to_markers
from n3d_ros.ros.qos import sensor_qos

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)  # (H, W, 3)


def make_image(arr: np.ndarray, encoding: str, pad: int = 0, bigendian: int = 0) -> Image:
    h, w = arr.shape[:2]
    row = arr.reshape(h, -1).view(np.uint8)
    row = np.concatenate([row, np.zeros((h, pad), np.uint8)], axis=1)
    return Image(height=h, width=w, encoding=encoding, is_bigendian=bigendian, step=row.shape[1],
                 data=row.tobytes())


def make_info(w=7, h=5, k=(4.0, 0, 3.0, 0, 4.0, 2.0, 0, 0, 1), **kw) -> CameraInfo:
    info = CameraInfo(width=w, height=h, k=list(k), distortion_model="plumb_bob", d=[0.0] * 5, **kw)
    info.header.frame_id = "cam_optical"
    return info


# ------------------------------------------------------------------ colour images
@pytest.mark.parametrize("encoding,make", [
    ("rgb8", lambda a: a),
    ("bgr8", lambda a: a[:, :, ::-1]),
    ("rgba8", lambda a: np.concatenate([a, np.full(a.shape[:2] + (1,), 255, np.uint8)], axis=2)),
    ("bgra8", lambda a: np.concatenate([a[:, :, ::-1], np.zeros(a.shape[:2] + (1,), np.uint8)], axis=2)),
])
@pytest.mark.parametrize("pad", [0, 3])
def test_colour_encodings_give_rgb(encoding, make, pad):
    msg = make_image(np.ascontiguousarray(make(RGB)), encoding, pad=pad)
    out = C.image_to_rgb(msg)
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3)
    np.testing.assert_array_equal(out, RGB)


def test_mono8_replicated():
    grey = RGB[:, :, 0].copy()
    out = C.image_to_rgb(make_image(grey, "mono8", pad=1))
    assert out.shape == (5, 7, 3) and np.all(out == grey[:, :, None])


@pytest.mark.parametrize("mutate,needle", [
    (lambda m: setattr(m, "encoding", "yuv422"), "unsupported image encoding 'yuv422'"),
    (lambda m: setattr(m, "step", 7 * 3 - 1), "step 20 is smaller than width"),
    (lambda m: setattr(m, "data", b""), "image data is empty"),
    (lambda m: setattr(m, "data", bytes(m.data)[:-1]), "expected step*height"),
    (lambda m: setattr(m, "height", 0), "size must be positive"),
])
def test_malformed_images_raise_value_error(mutate, needle):
    msg = make_image(RGB, "rgb8")
    mutate(msg)
    with pytest.raises(ValueError, match=needle.replace("*", r"\*")):
        C.image_to_rgb(msg)


def test_rgb_to_image_roundtrip_keeps_header():
    header = Header(frame_id="cam")
    msg = C.rgb_to_image(RGB, header)
    assert msg.header.frame_id == "cam" and msg.encoding == "rgb8"
    np.testing.assert_array_equal(C.image_to_rgb(msg), RGB)
    with pytest.raises(ValueError, match="uint8 RGB"):
        C.rgb_to_image(RGB.astype(np.float32))


# ------------------------------------------------------------------ depth
@pytest.mark.parametrize("big", [0, 1])
def test_depth_16uc1_millimetres_both_byte_orders(big):
    mm = np.array([[0, 1000], [1500, 65535]], dtype=np.dtype("u2").newbyteorder(">" if big else "<"))
    out = C.depth_to_metres(make_image(mm, "16UC1", pad=2, bigendian=big))
    assert out.dtype == np.float32
    assert np.isnan(out[0, 0])  # 0 = no measurement
    np.testing.assert_allclose(out[[0, 1, 1], [1, 0, 1]], [1.0, 1.5, 65.535], rtol=1e-6)


@pytest.mark.parametrize("big", [0, 1])
def test_depth_32fc1_metres(big):
    m = np.array([[np.nan, 2.5], [-1.0, np.inf]], dtype=np.dtype("f4").newbyteorder(">" if big else "<"))
    out = C.depth_to_metres(make_image(m, "32FC1", bigendian=big))
    assert out[0, 1] == pytest.approx(2.5)
    assert np.isnan(out[0, 0]) and np.isnan(out[1, 0]) and np.isnan(out[1, 1])


def test_depth_bad_encoding():
    with pytest.raises(ValueError, match="16UC1"):
        C.depth_to_metres(make_image(RGB, "rgb8"))


# ------------------------------------------------------------------ camera info
def test_camera_info_to_model_and_binning_roi():
    cam = C.camera_info_to_model(make_info())
    assert (cam.width, cam.height, cam.fx, cam.cx, cam.frame_id) == (7, 5, 4.0, 3.0, "cam_optical")
    info = make_info(w=640, h=480, k=(500.0, 0, 320.0, 0, 500.0, 240.0, 0, 0, 1), binning_x=2, binning_y=2)
    info.roi.x_offset, info.roi.y_offset, info.roi.width, info.roi.height = 100, 40, 400, 300
    cam = C.camera_info_to_model(info)
    assert (cam.width, cam.height) == (200, 150)
    assert cam.fx == pytest.approx(250.0) and cam.cx == pytest.approx((320 - 100) / 2 - 0.25)
    assert C.size_mismatch(make_image(np.zeros((150, 200, 3), np.uint8), "rgb8"), cam) is None
    assert "640x480" in C.size_mismatch(make_image(np.zeros((480, 640, 3), np.uint8), "rgb8"), cam)


@pytest.mark.parametrize("k,needle", [
    ((0.0,) * 9, "positive focal lengths"),
    ((np.nan, 0, 3, 0, 4, 2, 0, 0, 1), "finite"),
    ((np.inf, 0, 3, 0, 4, 2, 0, 0, 1), "finite"),
])
def test_camera_info_bad_k(k, needle):
    with pytest.raises(ValueError, match=needle):
        C.camera_info_to_model(make_info(k=k))


def test_camera_info_zero_size():
    with pytest.raises(ValueError, match="size must be positive"):
        C.camera_info_to_model(make_info(w=0, h=0))


# ------------------------------------------------------------------ stamps, rotations, objects
@given(st.integers(0, 2**62))
@settings(max_examples=100, deadline=None)
def test_stamp_roundtrip(ns):
    assert C.stamp_to_ns(C.ns_to_stamp(ns)) == ns


@given(st.floats(-np.pi, np.pi), st.floats(-1.5, 1.5), st.floats(-np.pi, np.pi))
@settings(max_examples=150, deadline=None)
def test_quaternion_roundtrip(roll, pitch, yaw):
    R = rotation_from_euler_xyz(roll, pitch, yaw)
    q = rotation_to_quaternion(R)
    assert q[3] >= 0 and abs(np.linalg.norm(q) - 1) < 1e-9
    np.testing.assert_allclose(quaternion_to_rotation(*q), R, atol=1e-9)


def test_quaternion_of_180_degree_turns():
    for R in (np.diag([1.0, -1, -1]), np.diag([-1.0, 1, -1]), np.diag([-1.0, -1, 1])):
        np.testing.assert_allclose(quaternion_to_rotation(*rotation_to_quaternion(R)), R, atol=1e-12)
    with pytest.raises(ValueError):
        quaternion_to_rotation(0, 0, 0, 0)


def _obj(i=0, box_2d=(1.0, 2.0, 3.0, 4.0)):
    box = Box3D.from_yaw([0.1 * i, 0.2, 2.0], [0.3, 0.4, 0.5], 0.7)
    return GroundedObject(box=box, label=f"mug{i}", score=0.9, id=f"bbox_{i}", box_2d=box_2d)


def test_object_to_msg():
    obj = _obj()
    msg = C.object_to_msg(obj)
    assert (msg.id, msg.label) == ("bbox_0", "mug0") and msg.score == pytest.approx(0.9)
    assert (msg.pose.position.z, msg.size.x, msg.size.y, msg.size.z) == pytest.approx((2.0, 0.3, 0.4, 0.5))
    q = msg.pose.orientation
    np.testing.assert_allclose(quaternion_to_rotation(q.x, q.y, q.z, q.w), obj.box.rotation, atol=1e-6)
    assert list(msg.box_2d) == [1.0, 2.0, 3.0, 4.0]
    assert list(C.object_to_msg(_obj(box_2d=None)).box_2d) == [-1.0] * 4
    arr = C.objects_to_array([_obj(0), _obj(1)], Header(frame_id="cam"))
    assert arr.header.frame_id == "cam" and [o.id for o in arr.objects] == ["bbox_0", "bbox_1"]


# ------------------------------------------------------------------ markers, diagnostics, qos
def test_markers_deleteall_then_edges_and_label():
    from visualization_msgs.msg import Marker
    header = Header(frame_id="cam")
    arr = objects_to_markers([_obj(0), _obj(1)], header, namespace="front")
    kinds = [(m.action, m.type) for m in arr.markers]
    assert kinds[0][0] == Marker.DELETEALL
    assert kinds[1:] == [(Marker.ADD, Marker.LINE_LIST), (Marker.ADD, Marker.TEXT_VIEW_FACING)] * 2
    box = arr.markers[1]
    assert len(box.points) == 2 * len(BOX_EDGES) == 24 and box.ns == "front" and box.header.frame_id == "cam"
    corners = _obj(0).box.corners()
    pts = np.array([[p.x, p.y, p.z] for p in box.points])
    assert all(np.min(np.linalg.norm(corners - p, axis=1)) < 1e-9 for p in pts)
    assert arr.markers[2].text == "bbox_0: mug0 0.90" and arr.markers[2].pose.position.y < 0.2 - 0.2
    assert arr.markers[1].color != arr.markers[3].color
    assert len({m.id for m in arr.markers[1:]}) == 4
    empty = objects_to_markers([], header)
    assert [m.action for m in empty.markers] == [Marker.DELETEALL]


def test_diagnostics_levels_and_values():
    from diagnostic_msgs.msg import DiagnosticStatus
    ok = NodeHealth(state="active", buffer=BufferStats(images=10, dropped=3, rejected=2), backend="compact",
                    device="cpu", last_latency_sec=0.25, seconds_since_frame=0.1)
    assert level_and_message(ok) == (DiagnosticStatus.OK, "ok")
    arr = health_to_array(ok, Header(), name="/spatial_query_node", hardware_id="cpu")
    values = {kv.key: kv.value for kv in arr.status[0].values}
    assert values["frames_received"] == "10" and values["frames_dropped"] == "3"
    assert values["frames_rejected"] == "2" and values["backend"] == "compact" and values["device"] == "cpu"
    assert values["last_latency_sec"] == "0.250"
    from dataclasses import replace
    assert level_and_message(replace(ok, seconds_since_frame=-1))[0] == DiagnosticStatus.WARN
    assert level_and_message(replace(ok, load_error="no config.json"))[0] == DiagnosticStatus.ERROR


def test_sensor_qos():
    from rclpy.qos import ReliabilityPolicy
    assert sensor_qos().reliability == ReliabilityPolicy.BEST_EFFORT
    assert sensor_qos("reliable", 3).depth == 3
    with pytest.raises(ValueError, match="reliability"):
        sensor_qos("sometimes")
