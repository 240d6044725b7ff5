"""preprocess: focal normalization + padding onto the model grid, rays of the grid camera."""
import warnings

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


_CAMERAS = [CameraModel.from_intrinsics(500, 500, 319.5, 239.5, 640, 480),       # shrinks 1.7x
            CameraModel.from_intrinsics(900, 880, 640, 360, 1280, 720),         # shrinks >= 2x: box filter first
            CameraModel.from_intrinsics(200, 200, 80, 60, 160, 120),            # grows, letterboxed
            CameraModel(width=320, height=240, K=np.array([[260.0, 0, 159.5], [0, 260.0, 119.5], [0, 0, 1]]),
                        D=np.array([0.1, -0.05, 0, 0, 0]), distortion_model="plumb_bob")]


@pytest.mark.parametrize("interpolation", ["linear", "nearest"])
@pytest.mark.parametrize("cam", _CAMERAS[:3])
def test_resample_tensor_is_the_host_resampling(cam, interpolation):
    import torch
    from n3d_ros.core.focal import resample, resample_taps
    from n3d_ros.geometry.preprocess import DeviceTaps, resample_tensor
    t = model_grid_transform(cam, CFG)
    img = np.random.default_rng(5).uniform(0, 255, (cam.height, cam.width, 3)).astype(np.float32)
    host = resample(img, t.inverse(), CFG.in_width, CFG.in_height, interpolation=interpolation, fill=-1.0)
    taps = DeviceTaps.of(resample_taps(t.inverse(), CFG.in_width, CFG.in_height, interpolation=interpolation), "cpu")
    dev = resample_tensor(torch.from_numpy(img), taps, fill=-1.0).numpy()
    assert dev.shape == host.shape == (CFG.in_height, CFG.in_width, 3)
    np.testing.assert_allclose(dev, host, rtol=0, atol=1e-3)          # float32 sums in another order
    assert ((dev == -1.0) == (host == -1.0)).all() and (host == -1.0).any()     # the letterbox's padding


def _devices():
    import torch
    return ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


@pytest.mark.parametrize("device", _devices())
@pytest.mark.parametrize("mirrored", [False, True])
def test_device_preprocess_is_prepare_input_on_the_device(mirrored, device):
    import torch
    from n3d_ros.core.frames import mirror_image_vectors
    from n3d_ros.geometry.preprocess import DevicePreprocess, stack_inputs
    rng = np.random.default_rng(6)
    imgs = [rng.integers(0, 255, (c.height, c.width, 3), dtype=np.uint8) for c in _CAMERAS]
    imgs[0].flags.writeable = False            # a ROS message's buffer: torch would warn on each frame
    prep = DevicePreprocess(CFG, device, cache_size=2)
    for _ in range(2):                         # the second time from the caches (two of four entries kept)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            image, rays, transforms = prep(imgs, _CAMERAS, mirrored=mirrored)
        items = [prepare_input(i, c, CFG) for i, c in zip(imgs, _CAMERAS)]
        want_image, want_rays = stack_inputs(items)
        want_t = [m.transform for m in items]
        if mirrored:
            want_image = np.concatenate([want_image, want_image[..., ::-1]])
            want_rays = np.concatenate([want_rays, mirror_image_vectors(want_rays, channel_axis=1)])
            want_t = want_t + want_t
        assert image.dtype == rays.dtype == torch.float32 and image.is_contiguous() and rays.is_contiguous()
        assert image.device.type == rays.device.type == device
        np.testing.assert_allclose(image.cpu().numpy(), want_image, rtol=0, atol=1e-5)
        np.testing.assert_array_equal(rays.cpu().numpy(), want_rays)
        assert transforms == want_t
        assert len(prep._taps) == len(prep._rays) == 2
    with pytest.raises(ValueError, match="uint8"):
        prep([imgs[0].astype(np.float32)], _CAMERAS[:1])
