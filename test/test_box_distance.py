"""Exact box distances: hand fixtures, and random rotated boxes against an independent solver."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import lsq_linear
from scipy.spatial.transform import Rotation

from n3d_ros.core.box import Box3D
from n3d_ros.core.box_distance import (boxes_overlap, closest_point_on_box, closest_points,
                                       closest_surface_distance, point_box_distance)
from n3d_ros.core.frames import Frame


def reference_distance(a: Box3D, b: Box3D) -> float:
    """Brute force, independent of the feature enumeration: the bounded least-squares problem
    min |c_a + R_a (h_a * s) - c_b - R_b (h_b * t)| over s, t in [-1, 1]^3, solved exactly by BVLS."""
    A = np.hstack([a.rotation * (a.size / 2), -b.rotation * (b.size / 2)])
    rhs = b.center - a.center
    res = lsq_linear(A, rhs, bounds=(-1, 1), method="bvls", tol=1e-15)
    return float(np.linalg.norm(A @ res.x - rhs))


def random_box(rng, spread):
    return Box3D(rng.normal(size=3) * spread, rng.uniform(0.02, 2.0, 3),
                 Rotation.random(random_state=rng).as_matrix())


def test_axis_aligned_face_gap():
    a = Box3D([0, 0, 0], [1, 1, 1])
    b = Box3D([3, 0, 0], [1, 2, 2])
    assert closest_surface_distance(a, b) == pytest.approx(2.0, abs=1e-12)
    pa, pb = closest_points(a, b)
    assert pa[0] == pytest.approx(0.5) and pb[0] == pytest.approx(2.5)


def test_corner_to_corner_gap():
    a = Box3D([0, 0, 0], [2, 2, 2])
    b = Box3D([3, 3, 3], [2, 2, 2])
    assert closest_surface_distance(a, b) == pytest.approx(np.sqrt(3.0), abs=1e-12)


def test_edge_to_edge_gap_rotated():
    # a turned 45 deg about z: a vertical edge at x = sqrt(2). b turned 45 deg about y: an edge
    # along y at x = 4 - sqrt(2). The two edges cross at right angles, 4 - 2 sqrt(2) apart.
    a = Box3D([0, 0, 0], [2, 2, 2], Rotation.from_euler("z", 45, degrees=True).as_matrix())
    b = Box3D([4, 0, 0], [2, 2, 2], Rotation.from_euler("y", 45, degrees=True).as_matrix())
    assert closest_surface_distance(a, b) == pytest.approx(4 - 2 * np.sqrt(2), abs=1e-12)
    pa, pb = closest_points(a, b)
    assert np.allclose(pa, [np.sqrt(2), 0, 0]) and np.allclose(pb, [4 - np.sqrt(2), 0, 0])


def test_touching_and_overlapping_are_zero():
    a = Box3D([0, 0, 0], [1, 1, 1])
    assert closest_surface_distance(a, Box3D([1, 0, 0], [1, 1, 1])) == 0.0     # faces touch
    assert closest_surface_distance(a, Box3D([0.2, 0.1, 0], [1, 1, 1])) == 0.0  # overlap
    assert closest_surface_distance(a, Box3D([0, 0, 0], [0.1, 0.1, 0.1])) == 0.0  # contained


def test_rod_through_plate_overlaps_without_vertex_inside():
    # No vertex of either box is inside the other and no two edges meet: only SAT sees it.
    plate = Box3D([0, 0, 0], [4, 4, 0.1])
    rod = Box3D([0, 0, 0], [0.1, 0.1, 3]).transformed(Rotation.from_euler("x", 0.3).as_matrix())
    assert boxes_overlap(plate, rod)
    assert closest_surface_distance(plate, rod) == 0.0
    pa, pb = closest_points(plate, rod)
    assert np.allclose(pa, pb)
    assert plate.contains(pa[None], margin=1e-9)[0] and rod.contains(pb[None], margin=1e-9)[0]


def test_point_box_distance():
    box = Box3D.from_yaw([1, 0, 2], [2, 1, 2], np.pi / 2)  # turned 90 deg about optical y
    assert point_box_distance([1, 0, 2], box) == 0.0
    # after the turn the 2 m x-extent lies along z: the face is 1 m from the centre along z
    assert point_box_distance([1, 0, 5], box) == pytest.approx(2.0)
    assert point_box_distance([4, 0, 2], box) == pytest.approx(2.0)  # x half-extent is now 1
    with pytest.raises(ValueError):
        point_box_distance([1, 2], box)
    near = closest_point_on_box(np.array([[1, 0, 5], [1, 0, 2]]), box)
    assert np.allclose(near, [[1, 0, 3], [1, 0, 2]])


def test_frames_are_converted_to_a():
    a = Box3D([0, 0, 2], [1, 1, 1])                             # optical
    b_opt = Box3D([3, 0, 2], [1, 1, 1])
    b_n3d = b_opt.to_frame(Frame.N3D)
    assert closest_surface_distance(a, b_n3d) == pytest.approx(2.0)
    pa, pb = closest_points(a, b_n3d)
    assert pb[0] == pytest.approx(2.5)                          # in a's (optical) frame


def test_random_rotated_boxes_match_brute_force():
    rng = np.random.default_rng(7)
    separated = 0
    for _ in range(200):
        a, b = random_box(rng, 1.0), random_box(rng, 2.0)
        d = closest_surface_distance(a, b)
        assert abs(d - reference_distance(a, b)) < 1e-6
        pa, pb = closest_points(a, b)
        assert abs(np.linalg.norm(pb - pa) - d) < 1e-9
        assert a.contains(pa[None], margin=1e-9)[0] and b.contains(pb[None], margin=1e-9)[0]
        separated += d > 0
    assert separated > 100  # the fixture exercises the disjoint path, not only overlaps


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), scale=st.floats(0.05, 5.0))
def test_property_symmetric_and_exact(seed, scale):
    rng = np.random.default_rng(seed)
    a, b = random_box(rng, scale), random_box(rng, 2 * scale)
    d = closest_surface_distance(a, b)
    assert d >= 0
    assert abs(d - closest_surface_distance(b, a)) < 1e-9
    assert abs(d - reference_distance(a, b)) < 1e-6
    assert d <= np.linalg.norm(a.center - b.center) + 1e-12


def test_degenerate_zero_size_boxes():
    p = Box3D([0, 0, 0], [0, 0, 0])
    seg = Box3D([0, 2, 0], [4, 0, 0])  # a segment along x
    assert closest_surface_distance(p, seg) == pytest.approx(2.0)
    assert closest_surface_distance(p, Box3D([3, 4, 0], [0, 0, 0])) == pytest.approx(5.0)
