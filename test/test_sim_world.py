"""Scene sampling: determinism, camera ranges, tight boxes, supports, no interpenetration."""
import math

import numpy as np
import pytest

from n3d_ros.core.camera import CameraModel
from n3d_ros.sim.assets import COLOURS, KINDS, tight_bounds
from n3d_ros.sim.world import CAMERA_FRAME_ID, WorldConfig, _Footprint, _overlap, generate_scene

SEEDS = range(12)


@pytest.fixture(scope="module")
def scenes():
    return [generate_scene(s) for s in SEEDS]


def test_same_seed_same_scene_and_different_seeds_differ():
    a, b, c = generate_scene(7), generate_scene(7), generate_scene(8)
    assert a.labels == b.labels
    np.testing.assert_array_equal(a.camera.K, b.camera.K)
    np.testing.assert_array_equal(a.world_from_camera, b.world_from_camera)
    for oa, ob in zip(a.objects, b.objects):
        np.testing.assert_array_equal(oa.box.center, ob.box.center)
    assert a.labels != c.labels or not np.allclose(a.world_from_camera, c.world_from_camera)


def test_object_counts_kinds_and_labels(scenes):
    cfg = WorldConfig()
    kinds = set()
    for s in scenes:
        assert cfg.min_objects <= len(s.objects) <= cfg.max_objects
        for i, o in enumerate(s.objects):
            assert o.index == i and o.label == f"{o.colour} {o.kind}"
            assert o.kind in KINDS and o.colour in COLOURS
            kinds.add(o.kind)
    assert len(KINDS) >= 12
    assert len(kinds) >= 10  # a dozen scenes already show most kinds


def test_camera_intrinsics_and_pose_ranges(scenes):
    cfg = WorldConfig()
    for s in scenes:
        cam = s.camera
        assert (cam.width, cam.height) in cfg.resolutions
        assert cam.frame_id == CAMERA_FRAME_ID and not cam.has_distortion
        assert 250 <= cam.fx <= 1000 and abs(cam.fy / cam.fx - 1) <= cfg.max_anisotropy + 1e-9
        assert abs(cam.cx - (cam.width - 1) / 2) <= cfg.principal_offset * cam.width + 1e-9
        R = s.world_from_camera[:3, :3]
        np.testing.assert_allclose(R.T @ R, np.eye(3), atol=1e-9)
        assert 0.3 <= s.world_from_camera[2, 3] <= 1.8
        pitch = math.degrees(math.asin(R[2, 2]))  # elevation of the optical axis
        assert -35 - 1e-6 <= pitch <= 5 + 1e-6
        np.testing.assert_allclose(s.up, R.T @ np.array([0.0, 0.0, 1.0]), atol=1e-12)
        assert abs(np.linalg.norm(s.up) - 1) < 1e-9
        # roll: the image x axis stays within 8 degrees of horizontal
        assert abs(math.degrees(math.asin(R[2, 0]))) <= 8 + 1e-6


def _extremes(p, axes):
    """Points of a world-placed primitive that reach its extent along each of `axes`' columns."""
    if p.shape == "box":
        return p.extreme_points()
    half = np.array([p.radius, p.size[2] / 2, p.radius])  # axis 1 of the box is vertical
    return np.concatenate([p.center + s * half[k] * axes[:, k] for k in range(3) for s in (-1, 1)])[None].reshape(-1, 3)


def test_boxes_are_tight_and_match_between_frames(scenes):
    for s in scenes:
        T = s.world_from_camera
        for o in s.objects:
            pts = np.concatenate([_extremes(p, o.box_world.rotation) for p in o.primitives])
            assert np.all(o.box_world.contains(pts, margin=1e-6))
            local = (pts - o.box_world.center) @ o.box_world.rotation
            np.testing.assert_allclose(np.abs(local).max(axis=0), o.box_world.size / 2, atol=1e-6)
            # box axis 1 points down in the world, so size[1] is the height
            np.testing.assert_allclose(o.box_world.rotation[:, 1], [0, 0, -1], atol=1e-12)
            corners_from_optical = o.box.corners() @ T[:3, :3].T + T[:3, 3]
            np.testing.assert_allclose(corners_from_optical, o.box_world.corners(), atol=1e-9)


def test_floor_footprints_do_not_overlap_and_stay_in_the_room(scenes):
    for s in scenes:
        Lx, Ly = s.room.size
        fps = []
        for o in s.objects:
            bw = o.box_world
            assert np.all(bw.corners()[:, :2] >= -1e-9) and np.all(bw.corners()[:, 0] <= Lx + 1e-9)
            assert np.all(bw.corners()[:, 1] <= Ly + 1e-9)
            if o.support is None:
                assert abs(bw.center[2] - bw.size[1] / 2) < 1e-9  # stands on the floor
                yaw = math.atan2(bw.rotation[1, 0], bw.rotation[0, 0])
                fps.append(_Footprint(bw.center[:2], np.array([bw.size[0], bw.size[2]]) / 2, yaw))
        for i in range(len(fps)):
            for j in range(i + 1, len(fps)):
                assert not _overlap(fps[i], fps[j], 0.0)


def test_supported_objects_stand_on_their_support(scenes):
    found = 0
    for s in scenes:
        for o in s.objects:
            if o.support is None:
                continue
            found += 1
            parent = s.objects[o.support]
            assert KINDS[o.kind].small
            bottom = o.box_world.center[2] - o.box_world.size[1] / 2
            top_parent = parent.box_world.center[2] + parent.box_world.size[1] / 2
            assert bottom <= top_parent + 1e-9 and bottom > 0.0
            # the object's centre lies over the parent's footprint
            local = (o.box_world.center - parent.box_world.center) @ parent.box_world.rotation
            assert abs(local[0]) <= parent.box_world.size[0] / 2 + 1e-9
            assert abs(local[2]) <= parent.box_world.size[2] / 2 + 1e-9
    assert found > 0


def test_with_camera_keeps_world_and_pose():
    s = generate_scene(3)
    cam = CameraModel.from_intrinsics(200, 200, 159.5, 119.5, 320, 240)
    t = s.with_camera(cam)
    assert t.camera is cam and t.objects is s.objects
    np.testing.assert_array_equal(t.world_from_camera, s.world_from_camera)
    with pytest.raises(TypeError):
        s.with_camera("not a camera")


def test_config_validation_and_custom_kinds():
    with pytest.raises(ValueError):
        WorldConfig(min_objects=5, max_objects=2)
    with pytest.raises(ValueError):
        WorldConfig(kinds=("table", "unicorn"))
    cfg = WorldConfig(kinds=("mug", "table"), min_objects=3, max_objects=4)
    s = generate_scene(1, cfg)
    assert {o.kind for o in s.objects} <= {"mug", "table"} and len(s.objects) >= 3


def test_every_kind_builds_with_sensible_size():
    rng = np.random.default_rng(0)
    from n3d_ros.sim.assets import build_object
    for kind, spec in KINDS.items():
        size, built = build_object(kind, "red", rng)
        lo, hi = tight_bounds(built.primitives)
        assert lo[2] >= -1e-3  # stands on z = 0
        ext = hi - lo
        assert np.all(ext > 0.005) and np.all(ext < 2.5), (kind, ext)
