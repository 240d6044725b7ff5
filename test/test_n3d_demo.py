"""The N3D-VLM conventions on the real public demo (MoGe-2 point map + intrinsics), plus the
point-cloud normalization on synthetic data (PointCloudNorm, pcd <-> optical)."""
from pathlib import Path

import numpy as np
import pytest

from n3d_ros.core.box import Box3D
from n3d_ros.core.box_overlap import iou_3d
from n3d_ros.core.camera import CameraModel
from n3d_ros.core.codec_n3d import decode_boxes, encode_boxes
from n3d_ros.core.focal import normalize_focal
from n3d_ros.core.frames import Frame, convert_points
from n3d_ros.core.objects import GroundedObject
from n3d_ros.core.pointcloud_norm import PointCloudNorm, n3d_pcd_to_optical, optical_to_n3d_pcd

DEMO_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "n3d_demo"
NPZ, JPG = DEMO_DIR / "demo2.npz", DEMO_DIR / "demo2.jpg"


# ------------------------------------------------------------------ synthetic (always run)
def test_norm_from_points_apply_invert():
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(20, 30, 3)) + [0, 0, 4]
    mask = rng.random((20, 30)) > 0.2
    pts[~mask] = 1e6  # garbage where invalid must not matter
    norm = PointCloudNorm.from_points(pts, mask)
    np.testing.assert_allclose(norm.shift, pts[mask].min(axis=0))
    p = norm.apply(pts[mask])
    assert np.linalg.norm(p, axis=1).mean() == pytest.approx(1.0)
    assert p.min(axis=0) == pytest.approx(np.zeros(3))
    np.testing.assert_allclose(norm.invert(p), pts[mask])
    with pytest.raises(ValueError, match="no valid points"):
        PointCloudNorm.from_points(pts, np.zeros_like(mask))
    with pytest.raises(ValueError, match="scale"):
        PointCloudNorm(np.zeros(3), 0.0)
    with pytest.raises(ValueError, match="mask shape"):
        PointCloudNorm.from_points(pts, mask[:-1])


def test_pcd_optical_round_trip():
    rng = np.random.default_rng(1)
    opt = rng.normal(size=(4, 5, 3)) + [0, 0, 3]
    mask = np.ones((4, 5), bool)
    mask[0, 0] = False
    pcd = optical_to_n3d_pcd(opt, mask)
    assert pcd.dtype == np.float16 and pcd.shape == (4, 5, 4)
    assert pcd[0, 0, 3] == 0 and np.all(pcd[0, 0, :3] == 0)
    np.testing.assert_allclose(pcd[1, 1, :3], [-opt[1, 1, 0], -opt[1, 1, 1], opt[1, 1, 2]], rtol=1e-3)
    back, m = n3d_pcd_to_optical(pcd)
    assert np.array_equal(m, mask) and np.all(np.isnan(back[0, 0]))
    np.testing.assert_allclose(back[mask], opt[mask], rtol=2e-3, atol=2e-3)
    with pytest.raises(ValueError, match=r"\(H, W, 4\)"):
        n3d_pcd_to_optical(np.zeros((4, 5, 3)))


# ------------------------------------------------------------------ real demo data
@pytest.fixture(scope="module")
def demo():
    if not NPZ.exists():
        pytest.skip(f"demo data not found at {DEMO_DIR}")
    data = np.load(NPZ)
    pcd, intr = data["pcd"], data["intr"]
    H, W = pcd.shape[:2]
    return pcd, CameraModel.from_normalized_intrinsics(intr, W, H), intr


def test_image_and_pcd_agree(demo):
    pcd, cam, _ = demo
    assert pcd.shape == (427, 640, 4) and pcd.dtype == np.float16
    if not JPG.exists():
        pytest.skip("demo2.jpg missing")
    from PIL import Image
    w, h = Image.open(JPG).size
    # the reference resizes the long side to exactly 640 px
    assert max(w, h) * 640 // max(w, h) == cam.width
    assert abs(min(w, h) * 640 / max(w, h) - cam.height) < 1.0


def test_points_match_intrinsics_and_normalize(demo):
    pcd, cam, intr = demo
    pts, mask = n3d_pcd_to_optical(pcd)
    assert mask.mean() > 0.9 and np.all(pts[mask][:, 2] > 0)
    # MoGe point map and its intrinsics agree: every point projects onto its own pixel
    # (CameraModel converts the pixel-EDGE origin of normalized intrinsics to pixel centres).
    uv = cam.project(pts[mask])
    grid = cam.pixel_grid()[mask]
    resid = uv - grid
    np.testing.assert_allclose(np.median(resid, axis=0), [0.0, 0.0], atol=0.02)
    assert np.percentile(np.abs(resid), 99) < 0.25
    # normalization over the N3D-frame points
    n3d = convert_points(pts, Frame.OPTICAL, Frame.N3D)
    norm = PointCloudNorm.from_points(n3d, mask)
    p = norm.apply(n3d[mask])
    assert np.linalg.norm(p, axis=1).mean() == pytest.approx(1.0, abs=1e-9)
    np.testing.assert_allclose(p.min(axis=0), 0.0, atol=1e-12)
    assert 0.1 < norm.scale < 2.0 and intr.shape == (3, 3)


def test_focal_normalized_grid_matches_projection(demo):
    pcd, cam, _ = demo
    pts, mask = n3d_pcd_to_optical(pcd)
    fn = normalize_focal(cam, 500.0)
    assert fn.camera.fx == pytest.approx(500.0) and fn.camera.fy == pytest.approx(500.0)
    resampled = fn.image(pts, interpolation="nearest")  # (H', W', 3) same 3D points, new grid
    m = fn.image(mask.astype(np.uint8), interpolation="nearest").astype(bool)
    m &= np.all(np.isfinite(resampled), axis=-1)
    uv = fn.camera.project(resampled[m])
    grid = fn.camera.pixel_grid()[m]
    err = np.linalg.norm(uv - grid, axis=-1)
    assert m.mean() > 0.9
    assert np.median(err) < 1.0 and np.percentile(err, 99) < 1.5


def test_encode_decode_box_on_real_points(demo):
    pcd, cam, _ = demo
    pts, mask = n3d_pcd_to_optical(pcd)
    n3d = convert_points(pts, Frame.OPTICAL, Frame.N3D)
    norm = PointCloudNorm.from_points(n3d, mask)
    patch = n3d[200:240, 300:350][mask[200:240, 300:350]]  # the points of one image patch
    lo, hi = patch.min(axis=0), patch.max(axis=0)
    box = Box3D((lo + hi) / 2, hi - lo, frame=Frame.N3D)
    obj = GroundedObject(box, "patch", id="bbox_0")
    text = encode_boxes([obj], cam, norm, bins=True)
    res = decode_boxes(text, cam, norm)
    assert res.problems == []
    got = res.objects[0]
    assert got.box.frame == Frame.OPTICAL
    assert np.linalg.norm(got.to_frame(Frame.N3D).box.center - box.center) < 0.02  # metres
    assert iou_3d(got.box, box) > 0.8
    assert np.all(got.box.contains(convert_points(box.center, Frame.N3D, Frame.OPTICAL)[None]))
    # the decoded 2D box covers the patch's pixels
    u0, v0, u1, v1 = got.box_2d
    assert u0 <= 310 and u1 >= 340 and v0 <= 210 and v1 >= 230
