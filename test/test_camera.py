"""CameraModel: CameraInfo semantics, projection round trips, distortion, depth -> points."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from n3d_ros.core.camera import CameraModel

K = [500.0, 0.0, 320.5, 0.0, 520.0, 240.2, 0.0, 0.0, 1.0]
PLUMB = [-0.28, 0.09, 0.001, -0.002, 0.01]
RATIONAL = [0.4, -0.1, 0.001, -0.002, 0.01, 0.6, 0.05, 0.01]

finite = st.floats(-1.5, 1.5)


@pytest.mark.parametrize("model,d", [("plumb_bob", []), ("plumb_bob", PLUMB), ("rational_polynomial", RATIONAL)])
@settings(max_examples=100, deadline=None)
@given(x=finite, y=finite, z=st.floats(0.2, 30.0))
def test_project_unproject_is_identity(model, d, x, y, z):
    cam = CameraModel.from_camera_info(width=640, height=480, k=K, d=d, distortion_model=model)
    p = np.array([x * z * 0.5, y * z * 0.4, z])  # within ~55 deg of the axis: where the lens model is valid
    uv = cam.project(p)
    np.testing.assert_allclose(cam.unproject(uv, z), p, atol=1e-6 * z)


def test_undistort_points_matches_pinhole_projection():
    cam = CameraModel.from_camera_info(width=640, height=480, k=K, d=PLUMB, distortion_model="plumb_bob")
    p = np.array([[0.4, -0.3, 2.0], [-0.5, 0.2, 1.5]])
    np.testing.assert_allclose(cam.undistort_points(cam.project(p)), cam.undistorted().project(p), atol=1e-6)


def test_behind_camera_projects_to_nan():
    cam = CameraModel.from_intrinsics(500, 500, 320, 240, 640, 480)
    assert np.all(np.isnan(cam.project(np.array([0.0, 0.0, -1.0]))))


def test_binning_and_roi_follow_image_geometry():
    full = CameraModel.from_camera_info(width=640, height=480, k=K)
    roi = CameraModel.from_camera_info(width=640, height=480, k=K, roi=(100, 50, 320, 240))
    binned = CameraModel.from_camera_info(width=640, height=480, k=K, binning_x=2, binning_y=2)
    p = np.array([0.1, -0.05, 2.0])
    u, v = full.project(p)
    np.testing.assert_allclose(roi.project(p), [u - 100, v - 50])
    # a binned pixel i covers full pixels 2i and 2i+1: centre at (u - 0.5) / 2
    np.testing.assert_allclose(binned.project(p), [(u - 0.5) / 2, (v - 0.5) / 2])
    assert (roi.width, roi.height, binned.width, binned.height) == (320, 240, 320, 240)


@pytest.mark.parametrize("kwargs", [dict(k=[0.0] * 9), dict(k=[np.nan] + K[1:]), dict(k=K[:8]),
                                    dict(k=K, distortion_model="fisheye_magic", d=[0.1])])
def test_invalid_camera_info_raises_clear_error(kwargs):
    with pytest.raises(ValueError):
        CameraModel.from_camera_info(width=640, height=480, **kwargs)


def test_depth_to_points_and_mask():
    cam = CameraModel.from_intrinsics(100.0, 100.0, 1.5, 1.0, 4, 3)
    depth = np.full((3, 4), 2.0)
    depth[0, 0] = np.nan
    depth[1, 1] = 0.0
    pts, mask = cam.depth_to_points(depth)
    assert not mask[0, 0] and not mask[1, 1] and mask.sum() == 10
    np.testing.assert_allclose(pts[2, 3], [(3 - 1.5) / 100 * 2, (2 - 1.0) / 100 * 2, 2.0])
    with pytest.raises(ValueError, match="camera is 4x3"):
        cam.depth_to_points(np.ones((4, 4)))


def test_normalized_intrinsics_round_trip():
    cam = CameraModel.from_camera_info(width=640, height=480, k=K)
    back = CameraModel.from_normalized_intrinsics(cam.normalized_intrinsics(), 640, 480)
    np.testing.assert_allclose(back.K, cam.K)
