"""GR3D focal normalization and pixel transforms: exact maps both ways."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from n3d_ros.core.camera import CameraModel
from n3d_ros.core.focal import PixelTransform, letterbox, normalize_focal


@settings(max_examples=100, deadline=None)
@given(fx=st.floats(250, 1000), aniso=st.floats(0.9, 1.1), cx_off=st.floats(-40, 40), cy_off=st.floats(-30, 30),
       f0=st.floats(200, 1000), x=st.floats(-0.5, 0.5), y=st.floats(-0.4, 0.4), z=st.floats(0.5, 10))
def test_focal_normalization_round_trips(fx, aniso, cx_off, cy_off, f0, x, y, z):
    cam = CameraModel.from_intrinsics(fx, fx * aniso, 319.5 + cx_off, 239.5 + cy_off, 640, 480)
    norm = normalize_focal(cam, f0)
    assert norm.camera.fx == pytest.approx(f0) and norm.camera.fy == pytest.approx(f0)
    p = np.array([x * z, y * z, z])
    uv_src = cam.project(p)
    uv_norm = norm.camera.project(p)
    np.testing.assert_allclose(norm.pixels_from_source(uv_src), uv_norm, atol=1e-8)
    np.testing.assert_allclose(norm.pixels_to_source(uv_norm), uv_src, atol=1e-8)
    box = np.array([uv_src[0] - 5, uv_src[1] - 3, uv_src[0] + 7, uv_src[1] + 2])
    np.testing.assert_allclose(norm.box_2d_to_source(norm.transform.apply_box_2d(box)), box, atol=1e-8)


def test_normalized_image_content_lines_up():
    cam = CameraModel.from_intrinsics(400.0, 440.0, 300.0, 250.0, 640, 480)
    img = np.zeros((480, 640), np.float64)
    img[200:260, 300:360] = 1.0
    norm = normalize_focal(cam, 200.0)
    out = norm.image(img)
    ys, xs = np.nonzero(out > 0.5)
    centre = norm.pixels_from_source(np.array([329.5, 229.5]))
    assert abs(xs.mean() - centre[0]) < 1.0 and abs(ys.mean() - centre[1]) < 1.0


def test_point_map_back_to_source_keeps_values():
    cam = CameraModel.from_intrinsics(500.0, 500.0, 319.5, 239.5, 640, 480)
    norm = normalize_focal(cam, 250.0)
    depth = np.full((norm.camera.height, norm.camera.width), 3.0)
    pts, mask = norm.camera.depth_to_points(depth)
    back, back_mask = norm.point_map_to_source(pts, mask)
    assert back.shape == (480, 640, 3) and back_mask.mean() > 0.99
    # every source pixel got a point of the same surface, on the ray of a nearby pixel
    src_pts, _ = cam.depth_to_points(np.full((480, 640), 3.0))
    assert np.nanmax(np.abs(back[..., 2] - 3.0)) < 1e-12
    assert np.nanmax(np.abs(back - src_pts)) < 3.0 * 2 / 500 + 1e-9


def test_transforms_compose_and_invert():
    a = PixelTransform.scale(0.5, 0.5, 640, 480)
    b = letterbox(a.out_width, a.out_height, 400, 400)
    ab = a.then(b)
    uv = np.array([[10.0, 20.0], [600.0, 400.0]])
    np.testing.assert_allclose(ab.apply_points(uv), b.apply_points(a.apply_points(uv)))
    np.testing.assert_allclose(ab.inverse().apply_points(ab.apply_points(uv)), uv)
    with pytest.raises(ValueError):
        b.then(a)


def test_max_long_side_bounds_size():
    cam = CameraModel.from_intrinsics(250.0, 250.0, 639.5, 359.5, 1280, 720)
    norm = normalize_focal(cam, 1000.0, max_long_side=640)
    assert max(norm.camera.width, norm.camera.height) <= 640
    assert norm.f0 == pytest.approx(norm.camera.fx)


def test_bad_f0_rejected():
    cam = CameraModel.from_intrinsics(250.0, 250.0, 10, 10, 20, 20)
    with pytest.raises(ValueError):
        normalize_focal(cam, -1.0)


def _reference_resample(img, out_to_in, out_w, out_h, fill=0.0):
    """Box-filter the whole image (edge-replicated moving average), then sample bilinearly: the
    plain form of what resample computes with folded per-axis taps."""
    src = img.astype(np.float64)
    if out_to_in.sx >= 2.0 or out_to_in.sy >= 2.0:
        for axis, k in ((1, max(1, int(out_to_in.sx))), (0, max(1, int(out_to_in.sy)))):
            if k > 1:
                pad = [(0, 0)] * src.ndim
                pad[axis] = (k // 2, k - 1 - k // 2)
                p = np.pad(src, pad, mode="edge")
                src = sum(np.take(p, np.arange(i, i + src.shape[axis]), axis=axis) for i in range(k)) / k
    H, W = img.shape[:2]
    u = np.arange(out_w) * out_to_in.sx + out_to_in.tx
    v = np.arange(out_h) * out_to_in.sy + out_to_in.ty
    uc, vc = np.clip(u, 0, W - 1), np.clip(v, 0, H - 1)
    u0, v0 = np.floor(uc).astype(int), np.floor(vc).astype(int)
    u1, v1 = np.minimum(u0 + 1, W - 1), np.minimum(v0 + 1, H - 1)
    wu, wv = uc - u0, vc - v0
    extra = (None,) * (src.ndim - 2)
    wu, wv = wu[(None, slice(None)) + extra], wv[(slice(None), None) + extra]
    top = src[v0][:, u0] * (1 - wu) + src[v0][:, u1] * wu
    bot = src[v1][:, u0] * (1 - wu) + src[v1][:, u1] * wu
    out = top * (1 - wv) + bot * wv
    valid = ((v >= -0.5) & (v <= H - 0.5))[:, None] & ((u >= -0.5) & (u <= W - 0.5))[None, :]
    return np.where(valid[(...,) + extra], out, fill)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
@pytest.mark.parametrize("channels", [0, 3])
def test_linear_resample_equals_blur_then_bilinear(dtype, channels):
    from n3d_ros.core.focal import PixelTransform, resample
    rng = np.random.default_rng(7)
    for _ in range(12):
        H, W = int(rng.integers(5, 90)), int(rng.integers(5, 90))
        out_w, out_h = int(rng.integers(3, 60)), int(rng.integers(3, 60))
        sx, sy = rng.uniform(0.3, 4.5, 2)
        t = PixelTransform(sx, sy, rng.uniform(-3, 3), rng.uniform(-3, 3), W, H, out_w, out_h)  # output -> input
        shape = (H, W) if channels == 0 else (H, W, channels)
        img = (rng.integers(0, 256, shape) if dtype == np.uint8 else rng.uniform(-5, 5, shape)).astype(dtype)
        out = resample(img, t, out_w, out_h, fill=0.0)
        ref = _reference_resample(img, t, out_w, out_h)
        assert out.dtype == dtype and out.shape == ref.shape
        if dtype == np.uint8:   # rounded: float32 arithmetic may only flip an exact .5 tie
            assert np.abs(out.astype(int) - np.clip(np.rint(ref), 0, 255)).max() <= 1
        else:
            tol = 1e-12 if dtype == np.float64 else 1e-5
            np.testing.assert_allclose(out, ref, atol=tol * 5, rtol=tol)
