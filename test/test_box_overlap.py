"""Exact oriented-box IoU: closed forms, symmetry, rigid invariance, Monte Carlo agreement."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from n3d_ros.core.box import Box3D
from n3d_ros.core.box_overlap import intersection_volume, iou_3d, iou_matrix
from n3d_ros.core.frames import Frame, rotation_from_euler_xyz

angles = st.tuples(*[st.floats(-np.pi, np.pi)] * 3)
vec = st.tuples(*[st.floats(-0.6, 0.6)] * 3)
sizes = st.tuples(*[st.floats(0.2, 2.0)] * 3)


def _box(c, s, a, frame=Frame.OPTICAL):
    return Box3D(np.array(c), np.array(s), rotation_from_euler_xyz(*a), frame)


def _aabb_inter(c1, s1, c2, s2):
    lo = np.maximum(np.array(c1) - np.array(s1) / 2, np.array(c2) - np.array(s2) / 2)
    hi = np.minimum(np.array(c1) + np.array(s1) / 2, np.array(c2) + np.array(s2) / 2)
    return float(np.prod(np.clip(hi - lo, 0, None)))


def test_known_values():
    a = Box3D([0, 0, 0], [1, 2, 3])
    assert iou_3d(a, a) == pytest.approx(1.0)
    assert iou_3d(a, Box3D([0.5, 0, 0], [1, 2, 3])) == pytest.approx(1 / 3)
    assert iou_3d(a, Box3D([5, 0, 0], [1, 2, 3])) == 0.0
    # unit cube vs the same cube turned 45 deg about z: octagon prism, area 2(sqrt2-1)*... exact
    cube = Box3D([0, 0, 0], [1, 1, 1])
    turned = Box3D.from_yaw([0, 0, 0], [1, 1, 1], np.pi / 4, frame=Frame.BODY)
    octagon = 2 * (np.sqrt(2) - 1)  # area of the intersection of two unit squares at 45 deg
    assert intersection_volume(cube.to_frame(Frame.BODY), turned) == pytest.approx(octagon)
    # a box fully inside another
    assert iou_3d(Box3D([0, 0, 0], [2, 2, 2]), Box3D([0.2, 0.1, 0], [1, 1, 1],
                                                     rotation_from_euler_xyz(0.3, 0.2, 0.1))) \
        == pytest.approx(1 / 8)


def test_degenerate_and_frames():
    a = Box3D([0, 0, 0], [1, 1, 1])
    assert iou_3d(a, Box3D([0, 0, 0], [0, 1, 1])) == 0.0
    # the same physical box described in another frame overlaps fully
    assert iou_3d(a, a.to_frame(Frame.BODY)) == pytest.approx(1.0)
    b = Box3D([0.3, -0.2, 0.4], [1, 1, 1], frame=Frame.N3D)
    expected = iou_3d(a, b.to_frame(Frame.OPTICAL))
    assert iou_3d(a, b) == pytest.approx(expected)
    assert expected > 0


@settings(max_examples=150, deadline=None)
@given(vec, sizes, angles, vec, sizes, angles)
def test_symmetric_and_bounded(c1, s1, a1, c2, s2, a2):
    A, B = _box(c1, s1, a1), _box(c2, s2, a2)
    v = iou_3d(A, B)
    assert 0.0 <= v <= 1.0
    assert v == pytest.approx(iou_3d(B, A), abs=1e-9)
    assert iou_3d(A, A) == pytest.approx(1.0, abs=1e-9)


@settings(max_examples=150, deadline=None)
@given(vec, sizes, vec, sizes)
def test_axis_aligned_closed_form(c1, s1, c2, s2):
    A, B = Box3D(c1, s1), Box3D(c2, s2)
    inter = _aabb_inter(c1, s1, c2, s2)
    assert intersection_volume(A, B) == pytest.approx(inter, abs=1e-9)
    assert iou_3d(A, B) == pytest.approx(inter / (A.volume + B.volume - inter), abs=1e-9)


@settings(max_examples=100, deadline=None)
@given(vec, sizes, angles, vec, sizes, angles, angles, vec)
def test_rigid_motion_invariance(c1, s1, a1, c2, s2, a2, motion_r, motion_t):
    A, B = _box(c1, s1, a1), _box(c2, s2, a2)
    R, t = rotation_from_euler_xyz(*motion_r), 3 * np.array(motion_t)
    assert iou_3d(A.transformed(R, t), B.transformed(R, t)) == pytest.approx(iou_3d(A, B), abs=1e-7)


def test_monte_carlo_agreement():
    rng = np.random.default_rng(7)
    for _ in range(12):
        A = _box(rng.normal(size=3) * 0.3, rng.uniform(0.3, 1.5, 3), rng.uniform(-3, 3, 3))
        B = _box(rng.normal(size=3) * 0.3, rng.uniform(0.3, 1.5, 3), rng.uniform(-3, 3, 3))
        n = 100_000
        pts = A.center + (rng.uniform(-0.5, 0.5, (n, 3)) * A.size) @ A.rotation.T  # uniform in A
        frac = B.contains(pts).mean()
        mc = frac * A.volume
        sigma = A.volume * np.sqrt(max(frac * (1 - frac), 1e-6) / n)
        assert intersection_volume(A, B) == pytest.approx(mc, abs=5 * sigma + 1e-4)


def test_iou_matrix_matches_pairwise():
    rng = np.random.default_rng(3)
    boxes_a = [_box(rng.normal(size=3), rng.uniform(0.3, 1.5, 3), rng.uniform(-3, 3, 3))
               for _ in range(4)]
    boxes_b = [_box(rng.normal(size=3), rng.uniform(0.3, 1.5, 3), rng.uniform(-3, 3, 3))
               for _ in range(3)] + [Box3D([50, 0, 0], [1, 1, 1])]
    M = iou_matrix(boxes_a, boxes_b)
    assert M.shape == (4, 4)
    for i, a in enumerate(boxes_a):
        for j, b in enumerate(boxes_b):
            assert M[i, j] == pytest.approx(iou_3d(a, b))
    assert np.all(M[:, 3] == 0)
    assert iou_matrix([], boxes_b).shape == (0, 4)


def _aabb(centre, size):
    return Box3D(np.array(centre, float), np.array(size, float), np.eye(3), Frame.OPTICAL)


def test_suppress_overlaps_drops_twins_of_comparable_size_only():
    from n3d_ros.core.box_overlap import suppress_overlaps

    desk = _aabb([0, 0, 3], [1.2, 0.75, 0.6])
    cabinet_twin = _aabb([0.05, 0, 3], [0.8, 0.7, 0.5])     # the same object read as another kind
    mug_inside = _aabb([0.3, 0.1, 3], [0.12, 0.1, 0.1])     # a small thing within the desk's box
    elsewhere = _aabb([2, 0, 3], [1.0, 0.7, 0.5])
    boxes = [desk, cabinet_twin, mug_inside, elsewhere]
    assert suppress_overlaps(boxes, 0.5) == [0, 2, 3]
    assert suppress_overlaps(boxes, 1.0) == [0, 1, 2, 3]          # 1 = off
    assert suppress_overlaps(boxes, 0.5, max_volume_ratio=1000.0) == [0, 3]
    assert suppress_overlaps([], 0.5) == []


@settings(max_examples=150, deadline=None)
@given(tilt=angles, c1=vec, s1=sizes, y1=st.floats(-np.pi, np.pi), c2=vec, s2=sizes, y2=st.floats(-np.pi, np.pi),
       turn=st.sampled_from([0, 1, 2]))
def test_shared_axis_shortcut_equals_clipping(tilt, c1, s1, y1, c2, s2, y2, turn):
    from n3d_ros.core.box_overlap import _clipped_volume, _shared_axis_volume
    level = rotation_from_euler_xyz(*tilt)          # a tilted camera's gravity frame
    # b's shared axis may be any of its own axes, pointing either way (a half turn about another axis)
    swap = [np.eye(3), rotation_from_euler_xyz(np.pi / 2, 0, 0), rotation_from_euler_xyz(np.pi, 0, np.pi / 2)][turn]
    a = Box3D(np.array(c1), np.array(s1), level @ rotation_from_euler_xyz(0, y1, 0))
    b = Box3D(np.array(c2), np.array(s2), level @ rotation_from_euler_xyz(0, y2, 0) @ swap)
    fast = _shared_axis_volume(a, b)
    assert fast is not None
    assert fast == pytest.approx(_clipped_volume(a, b), rel=1e-7, abs=1e-10)


def test_shared_axis_shortcut_declines_general_rotations():
    from n3d_ros.core.box_overlap import _shared_axis_volume
    a = _box((0, 0, 0), (1, 1, 1), (0, 0.3, 0))
    b = _box((0.1, 0, 0), (1, 1, 1), (0.2, 0.5, 0.1))
    assert _shared_axis_volume(a, b) is None
