"""Depth as geometry: 16UC1 / 32FC1 -> metres -> GeometryOutput."""
import numpy as np
import pytest

from n3d_ros.core.camera import CameraModel
from n3d_ros.geometry.compact_encoder import CompactEncoderConfig
from n3d_ros.geometry.depth import DepthGeometry, depth_image_to_meters

CAM = CameraModel.from_intrinsics(200.0, 200.0, 31.5, 23.5, 64, 48)
IMG = np.zeros((48, 64, 3), np.uint8)


def test_16uc1_millimetres_and_zero_is_nan():
    raw = np.array([[0, 1000], [1500, 65535]], np.uint16)
    m = depth_image_to_meters(raw, "16UC1")
    assert m.dtype == np.float32 and np.isnan(m[0, 0])
    np.testing.assert_allclose(m[[0, 1, 1], [1, 0, 1]], [1.0, 1.5, 65.535], rtol=1e-6)


def test_32fc1_nan_inf_zero_negative_are_nan():
    raw = np.array([[0.0, np.nan, np.inf, -1.0, 2.5]], np.float32)
    m = depth_image_to_meters(raw, "32FC1")
    assert np.isnan(m[0, :4]).all() and m[0, 4] == 2.5


@pytest.mark.parametrize("raw,enc", [(np.zeros((2, 2), np.float32), "16UC1"),
                                     (np.zeros((2, 2), np.uint16), "32FC1"),
                                     (np.zeros((2, 2), np.uint16), "mono8"),
                                     (np.zeros((2, 2, 3), np.uint16), "16UC1")])
def test_bad_encoding_or_dtype_raises(raw, enc):
    with pytest.raises(ValueError):
        depth_image_to_meters(raw, enc)


@pytest.mark.parametrize("enc,scale,dtype", [("16UC1", 1000.0, np.uint16), ("32FC1", 1.0, np.float32)])
def test_encode_source_grid_points_match_camera(enc, scale, dtype):
    depth_m = np.full((48, 64), 2.0, np.float32)
    depth_m[0, 0] = 0.0
    raw = (depth_m * scale).astype(dtype)
    out = DepthGeometry().encode([IMG], [CAM], [raw], encoding=enc)
    assert out.points.shape == (1, 48, 64, 3) and out.features is None and out.backend == "depth"
    assert not out.mask[0, 0, 0] and np.isnan(out.points[0, 0, 0]).all()
    np.testing.assert_allclose(out.points[0, 10, 20], CAM.unproject(np.array([20.0, 10.0]), 2.0), rtol=1e-6)
    np.testing.assert_allclose(out.points[0][out.mask[0]][:, 2], 2.0, rtol=1e-6)


def test_encode_on_model_grid_round_trips_to_source():
    cam = CameraModel.from_intrinsics(480.0, 480.0, 319.5, 239.5, 640, 480)
    depth = np.linspace(1.0, 5.0, 640 * 480, dtype=np.float32).reshape(480, 640)
    out = DepthGeometry(CompactEncoderConfig()).encode([np.zeros((480, 640, 3), np.uint8)], [cam], [depth])
    assert out.points.shape == (1, 240, 320, 3)
    pts, mask = out.points_on_source(0)
    assert pts.shape == (480, 640, 3) and mask.mean() > 0.99
    # nearest resampling: every point is an exact source point, so it reprojects near its pixel
    uv = cam.project(pts[mask])
    grid = cam.pixel_grid()[mask]
    assert np.max(np.abs(uv - grid)) <= 1.5


def test_size_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="depth image 0 is 32x24 but the RGB image/camera is 64x48"):
        DepthGeometry().encode([IMG], [CAM], [np.ones((24, 32), np.float32)])
    with pytest.raises(ValueError, match="one depth image per camera"):
        DepthGeometry().encode([IMG], [CAM], [])
