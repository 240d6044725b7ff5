"""Exact distances between oriented boxes (and from points to boxes).

Two boxes are convex polytopes. When they are disjoint, their closest pair of points is realised
by a vertex of one against the other solid box, or by two edges (a face-face or face-edge contact
can always be slid to one of those), so the distance is the minimum over
    8 + 8 vertex-to-box distances (clamping in box coordinates, exact) and
    12 x 12 edge-to-edge distances (closed-form segment-segment, Ericson RTCD 5.1.9).
Whether they touch or overlap is decided first by the separating-axis test (15 axes), because two
boxes can intersect without any vertex inside the other or any two edges meeting (a rod through a
plate). Everything is closed form: no iterations, no tolerances beyond float64 round-off, except
the common point reported by `closest_points` for overlapping boxes (alternating projections).
"""
from __future__ import annotations

import numpy as np

from .box import BOX_EDGES, Box3D

_EDGES = np.array(BOX_EDGES, dtype=np.intp)  # (12, 2) corner indices
_SAT_EPS = 1e-12     # relative: cross products of (near-)parallel axes are skipped
_OVERLAP_ITERATIONS = 200


def _as_point(p: np.ndarray) -> np.ndarray:
    arr = np.asarray(p, dtype=np.float64)
    if arr.shape != (3,) or not np.all(np.isfinite(arr)):
        raise ValueError(f"expected a finite (3,) point, got shape {arr.shape}")
    return arr


def closest_point_on_box(points: np.ndarray, box: Box3D) -> np.ndarray:
    """(..., 3) points -> (..., 3) nearest points of the solid `box` (points in the box's frame)."""
    p = np.asarray(points, dtype=np.float64)
    half = box.size / 2.0
    local = np.clip((p - box.center) @ box.rotation, -half, half)
    return local @ box.rotation.T + box.center


def point_box_distance(p: np.ndarray, box: Box3D) -> float:
    """Metres from point `p` (3,) to the solid `box` (0 inside); `p` in the box's frame."""
    q = _as_point(p)
    return float(np.linalg.norm(q - closest_point_on_box(q, box)))


def boxes_overlap(a: Box3D, b: Box3D) -> bool:
    """True when the solid boxes touch or intersect (separating-axis test); b is taken to a's frame."""
    b = b.to_frame(a.frame)
    Ra, Rb = a.rotation, b.rotation
    axes = [Ra[:, i] for i in range(3)] + [Rb[:, j] for j in range(3)]
    for i in range(3):
        for j in range(3):
            c = np.cross(Ra[:, i], Rb[:, j])
            n = np.linalg.norm(c)
            if n > _SAT_EPS:  # parallel edge pairs add no new axis
                axes.append(c / n)
    ha, hb = a.size / 2.0, b.size / 2.0
    d = b.center - a.center
    for axis in axes:
        ra = float(np.sum(ha * np.abs(Ra.T @ axis)))
        rb = float(np.sum(hb * np.abs(Rb.T @ axis)))
        if abs(float(d @ axis)) > ra + rb:
            return False
    return True


def _segment_pairs_closest(p1: np.ndarray, q1: np.ndarray, p2: np.ndarray,
                           q2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Closest points of segment pairs [p1,q1] x [p2,q2], each (N, 3); returns (c1, c2), each (N, 3)."""
    d1, d2, r = q1 - p1, q2 - p2, p1 - p2
    a = np.einsum("ij,ij->i", d1, d1)
    e = np.einsum("ij,ij->i", d2, d2)
    f = np.einsum("ij,ij->i", d2, r)
    c = np.einsum("ij,ij->i", d1, r)
    b = np.einsum("ij,ij->i", d1, d2)
    tiny = 1e-300
    a_ok, e_ok = a > tiny, e > tiny
    denom = a * e - b * b
    with np.errstate(divide="ignore", invalid="ignore"):
        # Parallel (denom ~ 0): any s works; s = 0 and let t be clamped below.
        s = np.where(denom > 1e-12 * a * e, np.clip((b * f - c * e) / denom, 0.0, 1.0), 0.0)
        t = (b * s + f) / np.where(e_ok, e, 1.0)
        s_lo = np.clip(-c / np.where(a_ok, a, 1.0), 0.0, 1.0)
        s_hi = np.clip((b - c) / np.where(a_ok, a, 1.0), 0.0, 1.0)
    s = np.where(t < 0.0, s_lo, np.where(t > 1.0, s_hi, s))
    t = np.clip(t, 0.0, 1.0)
    # Degenerate segments (zero-size boxes): fall back to point-segment.
    s = np.where(~e_ok, s_lo, s)
    t = np.where(~e_ok, 0.0, t)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_pt = np.clip(f / np.where(e_ok, e, 1.0), 0.0, 1.0)
    t = np.where(~a_ok, np.where(e_ok, t_pt, 0.0), t)
    s = np.where(~a_ok, 0.0, s)
    return p1 + s[:, None] * d1, p2 + t[:, None] * d2


def _disjoint_closest(a: Box3D, b: Box3D) -> tuple[np.ndarray, np.ndarray]:
    """Closest pair by feature enumeration; exact when a and b (same frame) do not overlap."""
    ca, cb = a.corners(), b.corners()
    cands_a, cands_b = [], []
    cands_a.append(ca)                            # vertices of a against box b
    cands_b.append(closest_point_on_box(ca, b))
    cands_a.append(closest_point_on_box(cb, a))   # vertices of b against box a
    cands_b.append(cb)
    ia, ib = np.meshgrid(np.arange(12), np.arange(12), indexing="ij")
    ea, eb = _EDGES[ia.ravel()], _EDGES[ib.ravel()]
    pa, pb = _segment_pairs_closest(ca[ea[:, 0]], ca[ea[:, 1]], cb[eb[:, 0]], cb[eb[:, 1]])
    cands_a.append(pa)
    cands_b.append(pb)
    all_a, all_b = np.concatenate(cands_a), np.concatenate(cands_b)
    k = int(np.argmin(np.einsum("ij,ij->i", all_a - all_b, all_a - all_b)))
    return all_a[k], all_b[k]


def _common_point(a: Box3D, b: Box3D) -> np.ndarray:
    """A point in both (overlapping) boxes: alternating projections, which converge for convex sets
    that intersect; the start is the midpoint of the centres so the answer is symmetric-ish."""
    x = (a.center + b.center) / 2.0
    for _ in range(_OVERLAP_ITERATIONS):
        x = closest_point_on_box(closest_point_on_box(x, a), b)
        if np.linalg.norm(x - closest_point_on_box(x, a)) < 1e-12:
            break
    return x


def closest_points(a: Box3D, b: Box3D) -> tuple[np.ndarray, np.ndarray]:
    """((3,), (3,)): the nearest point of box a and of box b, both in a's frame (metres).

    For touching or overlapping boxes both are the same point, one common to the two boxes.
    """
    b = b.to_frame(a.frame)
    if boxes_overlap(a, b):
        x = _common_point(a, b)
        return x, x.copy()
    return _disjoint_closest(a, b)


def closest_surface_distance(a: Box3D, b: Box3D) -> float:
    """Metres between the solid boxes a and b (0 when they touch or overlap); b is taken to a's frame."""
    b = b.to_frame(a.frame)
    if boxes_overlap(a, b):
        return 0.0
    pa, pb = _disjoint_closest(a, b)
    return float(np.linalg.norm(pa - pb))
