"""Box3D: corners, frames, gravity alignment, projection."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from n3d_ros.core.box import BOX_EDGES, Box3D
from n3d_ros.core.camera import CameraModel
from n3d_ros.core.frames import (Frame, axis_rotation, convert_points, gravity_rotation, mirror_image_vectors,
                                 rotation_between)

CAM = CameraModel.from_intrinsics(500.0, 500.0, 319.5, 239.5, 640, 480)


def test_frame_conversions_match_conventions():
    p = np.array([1.0, 2.0, 3.0])  # optical: right, down, forward
    np.testing.assert_allclose(convert_points(p, Frame.OPTICAL, Frame.N3D), [-1, -2, 3])
    np.testing.assert_allclose(convert_points(p, Frame.OPTICAL, Frame.BODY), [3, -1, -2])
    for a in Frame:
        for b in Frame:
            R = rotation_between(a, b)
            assert np.isclose(np.linalg.det(R), 1.0)
            np.testing.assert_allclose(rotation_between(b, a) @ R, np.eye(3), atol=1e-12)


def test_mirror_image_vectors_reflect_the_scene_in_both_layouts():
    # The mirror image of a camera's points: the pixel at column c shows what column w-1-c showed, at
    # the reflected position (x negated); rays alike. Its own inverse.
    cam = CameraModel.from_intrinsics(100.0, 100.0, 3.5, 2.5, 8, 6)
    rays = cam.ray_directions()                                  # (h, w, 3), z = 1
    points = rays * np.linspace(1.0, 3.0, 48).reshape(6, 8, 1)   # channel-last
    m = mirror_image_vectors(points, channel_axis=-1)
    np.testing.assert_allclose(m[2, 1], points[2, 6] * [-1, 1, 1])
    np.testing.assert_allclose(mirror_image_vectors(m, channel_axis=-1), points)
    # Rays of a centred camera are their own mirror; channel-first (B, 2, h, w) as the encoder takes them.
    chw = rays[..., :2].transpose(2, 0, 1)[None].astype(np.float32)
    mc = mirror_image_vectors(chw, channel_axis=1)
    assert mc.dtype == np.float32
    np.testing.assert_allclose(mc, chw, atol=1e-6)
    np.testing.assert_allclose(mc[0, :, 3, 2], chw[0, :, 3, 5] * [-1, 1], atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(yaw=st.floats(-3.1, 3.1), cx=st.floats(-2, 2), cz=st.floats(1, 8))
def test_corners_volume_and_frames(yaw, cx, cz):
    b = Box3D.from_yaw([cx, 0.3, cz], [0.4, 0.8, 1.2], yaw)
    assert b.volume == pytest.approx(0.4 * 0.8 * 1.2)
    assert b.yaw == pytest.approx(yaw, abs=1e-9)
    c = b.corners()
    assert c.shape == (8, 3) and len(BOX_EDGES) == 12
    np.testing.assert_allclose(c.mean(0), b.center, atol=1e-12)
    for f in Frame:
        back = b.to_frame(f).to_frame(Frame.OPTICAL)
        np.testing.assert_allclose(back.corners(), c, atol=1e-9)
    assert b.contains(b.center[None])[0] and not b.contains((b.center + [5, 0, 0])[None])[0]


def test_extent_along_is_the_width_of_the_corners_projection():
    rng = np.random.default_rng(3)
    for _ in range(20):
        q = np.linalg.qr(rng.normal(size=(3, 3)))[0]
        box = Box3D(rng.normal(size=3), rng.uniform(0.1, 2.0, 3), q * np.sign(np.linalg.det(q)))
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
        proj = box.corners() @ d
        assert box.extent_along(d) == pytest.approx(proj.max() - proj.min())
    assert Box3D([0, 0, 3], [1, 2, 4], np.eye(3)).extent_along([0, -1, 0]) == pytest.approx(2.0)


def test_invalid_boxes_raise():
    with pytest.raises(ValueError):
        Box3D([0, 0, np.nan], [1, 1, 1])
    with pytest.raises(ValueError):
        Box3D([0, 0, 1], [1, -1, 1])
    with pytest.raises(ValueError):
        Box3D([0, 0, 1], [1, 1, 1], np.diag([1.0, 1.0, -1.0]))


def test_gravity_aligned_undoes_camera_tilt():
    up = axis_rotation(0, -0.3) @ np.array([0.0, -1.0, 0.0])  # camera pitched
    R_tilted = gravity_rotation(up).T @ axis_rotation(1, 0.7)
    b = Box3D([0.1, 0.2, 3.0], [0.5, 1.0, 0.3], R_tilted)
    g = Box3D([0.1, 0.2, 3.0], [0.5, 1.0, 0.3], R_tilted @ axis_rotation(0, 0.05)).gravity_aligned(up)
    np.testing.assert_allclose(g.rotation[:, 1], -up, atol=1e-12)  # box y axis is exactly "down"
    np.testing.assert_allclose(g.size, b.size)


def test_project_2d_tight_and_clipped():
    b = Box3D([0.0, 0.0, 4.0], [1.0, 1.0, 1.0])
    u0, v0, u1, v1 = b.project_2d(CAM)
    assert u0 == pytest.approx(319.5 - 500 * 0.5 / 3.5) and u1 == pytest.approx(319.5 + 500 * 0.5 / 3.5)
    assert v0 < 239.5 < v1
    straddling = Box3D([0.0, 0.0, 0.2], [1.0, 1.0, 2.0])
    assert straddling.project_2d(CAM) is not None
    assert Box3D([0.0, 0.0, -5.0], [1.0, 1.0, 1.0]).project_2d(CAM) is None
    assert Box3D([50.0, 0.0, 2.0], [1.0, 1.0, 1.0]).project_2d(CAM) is None
    edge = Box3D([1.2, 0.0, 2.0], [1.0, 1.0, 1.0]).project_2d(CAM)
    assert edge[2] == CAM.width - 1
