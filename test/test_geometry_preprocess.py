"""preprocess: focal normalization + padding onto the model grid, rays of the grid camera."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from n3d_ros.core.camera import CameraModel
from n3d_ros.geometry.compact_encoder import CompactEncoderConfig
from n3d_ros.geometry.preprocess import model_grid_transform, prepare_input

CFG = CompactEncoderConfig()


@settings(max_examples=60, deadline=None)
@given(fx=st.floats(150, 1500), aspect=st.floats(0.8, 1.25), w=st.integers(64, 1280),
       h=st.integers(64, 1024), px=st.floats(0.3, 0.7), py=st.floats(0.3, 0.7),
       pts=st.lists(st.tuples(st.floats(-2, 2), st.floats(-2, 2), st.floats(0.5, 10)), min_size=1, max_size=5))
def test_point_projects_to_transformed_pixel(fx, aspect, w, h, px, py, pts):
    cam = CameraModel.from_intrinsics(fx, fx * aspect, px * w, py * h, w, h)
    t = model_grid_transform(cam, CFG)
    assert (t.out_width, t.out_height) == (CFG.in_width, CFG.in_height)
    grid = t.apply_camera(cam)
    P = np.array(pts)
    np.testing.assert_allclose(t.apply_points(cam.project(P)), grid.project(P), atol=1e-6)
    # focal is f0 unless the image had to shrink to fit; never above f0
    assert grid.fx <= CFG.f0 + 1e-6 and abs(grid.fx - grid.fy) < 1e-6
    # the whole source image lands inside the grid
    corners = t.apply_points(np.array([[-0.5, -0.5], [w - 0.5, h - 0.5]]))
    assert corners.min() >= -0.5 - 1e-6
    assert corners[1, 0] <= CFG.in_width - 0.5 + 1e-6 and corners[1, 1] <= CFG.in_height - 0.5 + 1e-6


def test_prepare_input_shapes_values_and_padding():
    cam = CameraModel.from_intrinsics(240.0, 240.0, 99.5, 74.5, 200, 150)  # already at f0: no scaling
    img = np.full((150, 200, 3), 255, np.uint8)
    m = prepare_input(img, cam, CFG)
    assert m.image.shape == (3, 240, 320) and m.image.dtype == np.float32
    assert m.rays.shape == (2, 240, 320) and m.rays.dtype == np.float32
    assert m.transform.sx == 1.0 and m.transform.tx == 60 and m.transform.ty == 45
    assert m.image[:, 45:195, 60:260].min() == pytest.approx(1.0)
    assert m.image[:, :45].max() == 0.0 and m.image[:, :, :60].max() == 0.0
    # rays valid everywhere, padding included, and consistent with the grid camera
    assert np.all(np.isfinite(m.rays))
    np.testing.assert_allclose(m.rays[0, 100, 10], (10 - m.camera.cx) / m.camera.fx, atol=1e-6)
    np.testing.assert_allclose(m.rays[1, 7, 100], (7 - m.camera.cy) / m.camera.fy, atol=1e-6)


def test_prepare_input_rejects_wrong_image():
    cam = CameraModel.from_intrinsics(240.0, 240.0, 99.5, 74.5, 200, 150)
    with pytest.raises(ValueError, match="uint8"):
        prepare_input(np.zeros((150, 200, 3), np.float32), cam, CFG)
    with pytest.raises(ValueError, match="camera is 200x150"):
        prepare_input(np.zeros((100, 200, 3), np.uint8), cam, CFG)


def test_grid_rays_are_cached_read_only_and_match_the_camera():
    from n3d_ros.geometry.preprocess import grid_rays
    def distorted():
        K = np.array([[240.0, 0, 159.5], [0, 240.0, 119.5], [0, 0, 1]])
        return CameraModel(width=320, height=240, K=K, D=np.array([0.1, -0.05, 0, 0, 0]),
                           distortion_model="plumb_bob")
    cam = distorted()
    a = grid_rays(cam)
    assert grid_rays(distorted()) is a                         # the same camera as a new object: cached
    assert not a.flags.writeable
    np.testing.assert_allclose(a, cam.ray_directions()[..., :2].transpose(2, 0, 1), atol=1e-6)
    assert grid_rays(CameraModel.from_intrinsics(250.0, 240.0, 159.5, 119.5, 320, 240)) is not a


def test_grid_depth_to_points_equals_the_camera_unprojection():
    from n3d_ros.geometry.preprocess import grid_depth_to_points
    cam = CameraModel.from_intrinsics(200.0, 210.0, 40.0, 30.0, 80, 60)
    depth = np.random.default_rng(0).uniform(0.5, 4.0, (60, 80)).astype(np.float32)
    depth[5, 7] = 0.0
    depth[9, 9] = np.nan
    pts, mask = grid_depth_to_points(depth, cam)
    ref, ref_mask = cam.depth_to_points(depth)
    np.testing.assert_array_equal(mask, ref_mask)
    np.testing.assert_allclose(pts[mask], ref[mask], rtol=1e-5)
    assert pts.dtype == np.float32 and np.isnan(pts[5, 7]).all() and np.isnan(pts[9, 9]).all()
