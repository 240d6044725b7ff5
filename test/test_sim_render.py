"""Ray caster: analytic depths, instance maps vs projected boxes, occlusion, batching, masks."""
import math

import numpy as np
import pytest
import torch

from n3d_ros.core.camera import CameraModel
from n3d_ros.sim.assets import box, cylinder, sphere
from n3d_ros.sim.render import render
from n3d_ros.sim.world import Plane, Room, Scene, camera_rotation, generate_scene, object_from_parts

RED = (0.8, 0.1, 0.1)
CAM = CameraModel.from_intrinsics(100.0, 100.0, 31.0, 23.0, 64, 48)  # principal point on pixel (31, 23)


def _scene(parts_per_object, *, camera=CAM, height=1.0, pitch=0.0):
    """Camera at (0, 0, height) looking along +y; objects given as (parts, origin) in the world."""
    T = np.eye(4)
    T[:3, :3] = camera_rotation(math.pi / 2, pitch, 0.0)
    T[:3, 3] = (0.0, 0.0, height)
    floor = Plane(np.array([0.0, 0, 1]), 0.0, np.array([1.0, 0, 0]), np.array([0.0, 1, 0]), "checker",
                  np.full(3, 0.5), np.full(3, 0.3), 0.5)
    objects = tuple(object_from_parts(i, "box", "red", parts, 0.0, origin, T)
                    for i, (parts, origin) in enumerate(parts_per_object))
    return Scene(seed=0, camera=camera, world_from_camera=T, up=T[:3, :3].T @ np.array([0, 0, 1.0]),
                 objects=objects, room=Room((10.0, 10.0), (floor,)), light_dir=np.array([0.3, -0.2, 0.9]),
                 ambient=0.4)


def _centre(out):
    v = out.numpy(0)
    return v.depth[23, 31], v.instance[23, 31]


def test_depth_of_box_sphere_cylinder_at_the_centre_pixel_is_analytic():
    # Each primitive's nearest surface on the optical axis is 2.5 m from the camera (z-depth).
    for part in (box((0, 0, 0.5), (1.0, 1.0, 1.0), RED), sphere((0, 0, 0.5), 0.5, RED),
                 cylinder(0, 0, 0.0, 1.0, 0.5, RED)):
        s = _scene([([part], (0.0, 3.0, 0.5))])
        d, i = _centre(render([s]))
        assert i == 0, part.shape
        assert d == pytest.approx(2.5, abs=1e-5), part.shape


def test_floor_depth_is_z_depth_not_ray_length():
    s = _scene([])
    out = render([s]).numpy(0)
    # Pixel row v sees the floor at z = f * h / (v - cy) for a level camera at height h.
    for v in (30, 40, 47):
        for u in (0, 31, 63):
            assert out.depth[v, u] == pytest.approx(100.0 * 1.0 / (v - 23.0), rel=1e-5)
    assert np.all(np.isnan(out.depth[:24]))  # at and above the horizon: nothing (no walls)
    assert np.all(out.instance == -1)


def test_occlusion_order_nearer_object_wins():
    near = ([box((0, 0, 0), (0.4, 0.4, 0.4), RED)], (0.0, 2.0, 0.9))
    far = ([box((0, 0, 0), (1.0, 1.0, 1.0), RED)], (0.0, 4.0, 0.9))
    for order in ((near, far), (far, near)):
        s = _scene(list(order))
        d, i = _centre(render([s]))
        assert d == pytest.approx(1.8, abs=1e-5)
        assert s.objects[i].box.center[2] == pytest.approx(2.0, abs=1e-9)


def test_points_from_depth_lie_in_their_objects_boxes():
    s = generate_scene(4).with_camera(CameraModel.from_intrinsics(150, 150, 79.5, 59.5, 160, 120))
    v = render([s]).numpy(0)
    pts, ok = s.camera.depth_to_points(v.depth)
    assert ok.mean() > 0.5
    for o in s.objects:
        m = v.instance == o.index
        if m.any():
            assert np.all(o.box.contains(pts[m], margin=2e-3)), o.label


def test_instance_map_lies_inside_projected_boxes():
    for seed in (1, 2):
        s = generate_scene(seed).with_camera(CameraModel.from_intrinsics(160, 160, 79.5, 59.5, 160, 120))
        inst = render([s]).numpy(0).instance
        for o in s.objects:
            vs, us = np.nonzero(inst == o.index)
            if len(us) == 0:
                continue
            u0, v0, u1, v1 = o.box.project_2d(s.camera)
            assert us.min() >= math.floor(u0) and us.max() <= math.ceil(u1)
            assert vs.min() >= math.floor(v0) and vs.max() <= math.ceil(v1)


def test_unoccluded_box_fills_its_projection():
    s = _scene([([box((0, 0, 0), (0.6, 0.6, 0.6), RED)], (0.2, 3.0, 1.1))])
    inst = render([s]).numpy(0).instance
    vs, us = np.nonzero(inst == 0)
    u0, v0, u1, v1 = s.objects[0].box.project_2d(CAM)
    assert abs(us.min() - u0) <= 1 and abs(us.max() - u1) <= 1
    assert abs(vs.min() - v0) <= 1 and abs(vs.max() - v1) <= 1


def test_deterministic_and_batch_matches_single():
    cam = CameraModel.from_intrinsics(120, 120, 63.5, 47.5, 128, 96)
    scenes = [generate_scene(s).with_camera(cam) for s in (5, 6, 7)]
    batch = render(scenes)
    again = render(scenes)
    assert torch.equal(batch.rgb, again.rgb) and torch.equal(batch.instance, again.instance)
    for i, s in enumerate(scenes):
        one = render([s])
        assert torch.equal(one.instance[0], batch.instance[i])
        np.testing.assert_allclose(one.depth[0].numpy(), batch.depth[i].numpy(), rtol=1e-6, equal_nan=True)
        assert (one.rgb[0].int() - batch.rgb[i].int()).abs().max() <= 1


def test_outputs_types_shapes_and_camera_override():
    s = generate_scene(2)
    cam = CameraModel.from_intrinsics(90, 92, 40.0, 30.0, 80, 60)
    out = render([s], cameras=[cam], normals=True)
    assert out.rgb.shape == (1, 60, 80, 3) and out.rgb.dtype == torch.uint8
    assert out.depth.dtype == torch.float32 and out.instance.dtype == torch.int16
    ref = render([s.with_camera(cam)])
    assert torch.equal(out.instance, ref.instance)
    n = out.numpy(0).normals
    ok = np.isfinite(n[..., 0])
    np.testing.assert_allclose(np.linalg.norm(n[ok], axis=-1), 1.0, atol=1e-4)
    with pytest.raises(ValueError):
        render([s, generate_scene(3)], cameras=[cam, CameraModel.from_intrinsics(90, 90, 40, 30, 64, 48)])
    with pytest.raises(ValueError):
        render([])


def test_floor_normals_point_up_in_the_optical_frame():
    s = _scene([], pitch=math.radians(-20))
    v = render([s], normals=True).numpy(0)
    ok = np.isfinite(v.depth)
    np.testing.assert_allclose(v.normals[ok], np.broadcast_to(s.up, v.normals[ok].shape), atol=1e-5)


def test_valid_rect_blanks_the_padding():
    s = generate_scene(9).with_camera(CameraModel.from_intrinsics(100, 100, 39.5, 29.5, 80, 60))
    full = render([s]).numpy(0)
    out = render([s], valid_rects=[(10, 5, 70, 50)]).numpy(0)
    inside = np.zeros((60, 80), bool)
    inside[5:50, 10:70] = True
    assert np.all(out.rgb[~inside] == 0) and np.all(np.isnan(out.depth[~inside]))
    assert np.all(out.instance[~inside] == -1)
    np.testing.assert_array_equal(out.rgb[inside], full.rgb[inside])
    np.testing.assert_array_equal(out.instance[inside], full.instance[inside])
    clipped = render([s], valid_rects=[(-3, 0, 90, 60)]).numpy(0)  # past the edges: clipped
    np.testing.assert_array_equal(clipped.instance, full.instance)
    with pytest.raises(ValueError):
        render([s], valid_rects=[(80, 0, 95, 60)])  # entirely outside


def test_distorted_camera_renders_through_its_rays():
    K = CAM.K
    cam = CameraModel(64, 48, K, D=np.array([-0.1, 0.01, 0, 0, 0]), distortion_model="plumb_bob")
    s = _scene([([box((0, 0, 0.5), (1.0, 1.0, 1.0), RED)], (0.0, 3.0, 0.5))], camera=cam)
    d, i = _centre(render([s]))
    assert i == 0 and d == pytest.approx(2.5, abs=1e-5)  # no distortion at the principal point


def test_named_map_marks_the_parts_in_the_objects_colour():
    from dataclasses import replace
    # One object: a gray pole (left) and a red part (right), in front of the camera.
    pole = box((-0.15, 0, 0), (0.2, 0.2, 0.4), (0.5, 0.5, 0.52))
    shade = replace(box((0.15, 0, 0), (0.2, 0.2, 0.4), RED), named=True)
    s = _scene([([pole, shade], (0.0, 2.0, 0.9))])
    out = render([s], named=True)
    v = out.numpy(0)
    assert v.named.shape == v.instance.shape and v.named.dtype == bool
    assert not v.named[v.instance < 0].any()                         # the floor is no object's colour
    cols = np.nonzero((v.instance == 0).any(axis=0))[0]
    assert not v.named[23, cols.min()] and v.named[23, cols.max()]  # pole left, named part right
    assert render([s]).named is None                                  # only when asked
    padded = render([s], named=True, valid_rects=[(40, 0, 64, 48)]).numpy(0)
    assert not padded.named[:, :40].any()                             # letterbox padding shows nothing


def test_screen_tiles_only_cull():
    """Tile size (set directly or through the chunk bound) changes which primitives each tile tests,
    not what is seen."""
    cam = CameraModel.from_intrinsics(120, 120, 63.5, 47.5, 128, 96)
    scenes = [generate_scene(s).with_camera(cam) for s in (11, 12)]
    ref = render(scenes, named=True)
    for kw in ({"tile": 8}, {"tile": 256}, {"chunk_elements": 1 << 12}, {"chunk_elements": 1 << 30}):
        out = render(scenes, named=True, **kw)
        assert torch.equal(out.instance, ref.instance) and torch.equal(out.named, ref.named), kw
        assert (out.rgb.int() - ref.rgb.int()).abs().max() <= 1, kw
        # The same hits; batched products over another primitive count may round the last bit differently.
        np.testing.assert_allclose(out.depth.numpy(), ref.depth.numpy(), rtol=1e-6, equal_nan=True)
