"""Exact overlap of oriented 3D boxes: intersection volume and IoU.

Method: express box b in box a's own axes, where a is the axis-aligned slab set |x_i| <= h_i.
b is a convex polyhedron (6 quadrilateral faces); clipping it by a's 6 half-spaces
(Sutherland-Hodgman per face, plus a cap polygon on each clipping plane) leaves the exact
intersection polyhedron, whose volume is the sum of tetrahedra fanned from an interior point.
Exact for arbitrary rotations (up to floating point); no sampling, no gravity assumption.
Boxes that share an axis (yaw-only boxes about one up vector, as every detector of a frame gives)
take a shortcut with the same result: footprint polygon area times the overlap along that axis.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .box import Box3D

# Faces of a box as corner indices (Box3D corner order: bit0 x, bit1 y, bit2 z), each a
# closed loop around the face; orientation does not matter for the volume computation.
_BOX_FACES = (
    (0, 2, 6, 4), (1, 3, 7, 5),  # -x, +x
    (0, 1, 5, 4), (2, 3, 7, 6),  # -y, +y
    (0, 1, 3, 2), (4, 5, 7, 6),  # -z, +z
)

Polygon = np.ndarray  # (K, 3) vertices in order around a planar convex face


def _box_faces_in(box: Box3D, ref: Box3D) -> list[Polygon]:
    """Faces of `box` in `ref`'s local axes (ref centred at the origin, axis aligned)."""
    corners = (box.corners() - ref.center) @ ref.rotation  # (8, 3)
    return [corners[list(face)] for face in _BOX_FACES]


def _clip_polygon(poly: Polygon, axis: int, sign: float, limit: float, eps: float
                  ) -> tuple[Polygon, list[np.ndarray]]:
    """Keep the part of a convex polygon with sign * p[axis] <= limit.

    Returns the clipped polygon and the new vertices created on the plane (the cap's corners).
    """
    d = sign * poly[:, axis] - limit  # (K,) signed distance, <= eps is inside
    inside = d <= eps
    if inside.all():
        return poly, []
    out: list[np.ndarray] = []
    on_plane: list[np.ndarray] = []
    k = len(poly)
    for i in range(k):
        j = (i + 1) % k
        if inside[i]:
            out.append(poly[i])
        if inside[i] != inside[j]:
            t = d[i] / (d[i] - d[j])
            p = poly[i] + t * (poly[j] - poly[i])
            p[axis] = sign * limit  # land exactly on the plane despite rounding
            out.append(p)
            on_plane.append(p)
    return (np.array(out) if out else np.zeros((0, 3))), on_plane


def _cap(points: list[np.ndarray], axis: int, eps: float) -> Polygon | None:
    """Order the cut points on an axis plane into a convex polygon (None if degenerate)."""
    if len(points) < 3:
        return None
    pts = np.array(points)
    # Drop near duplicates (each cut vertex is produced by the two faces sharing its edge).
    keep = [0]
    for i in range(1, len(pts)):
        if np.min(np.linalg.norm(pts[keep] - pts[i], axis=1)) > eps:
            keep.append(i)
    pts = pts[keep]
    if len(pts) < 3:
        return None
    a, b = [i for i in range(3) if i != axis]
    c = pts.mean(axis=0)
    order = np.argsort(np.arctan2(pts[:, b] - c[b], pts[:, a] - c[a]))
    return pts[order]


def _convex_volume(faces: list[Polygon]) -> float:
    """Volume of a closed convex polyhedron given as planar convex faces."""
    faces = [f for f in faces if len(f) >= 3]
    if len(faces) < 4:
        return 0.0
    centre = np.concatenate(faces).mean(axis=0)  # inside (or on) a convex polyhedron
    vol = 0.0
    for f in faces:
        r = f - centre
        # Fan triangles (0, i, i+1); |det| because the centre is inside, so all tetrahedra
        # of a face have the same orientation and face orientation need not be tracked.
        dets = np.einsum("ij,ij->i", r[0][None, :].repeat(len(f) - 2, 0),
                         np.cross(r[1:-1], r[2:]))
        vol += abs(float(dets.sum())) / 6.0
    return vol


def _clip_to_rectangle(poly: np.ndarray, half: np.ndarray, eps: float) -> np.ndarray:
    """The part of a convex 2D polygon (K, 2) inside |x| <= half[0], |y| <= half[1]
    (`_clip_polygon` works in any dimension)."""
    for axis in range(2):
        for sign in (1.0, -1.0):
            poly, _ = _clip_polygon(poly, axis, sign, half[axis], eps)
            if len(poly) < 3:
                return poly
    return poly


def _shared_axis_volume(a: Box3D, b: Box3D) -> float | None:
    """Intersection volume when an axis of b is parallel to an axis of a (b in a's frame), else None:
    the boxes are then prisms along that axis, so the overlap is the footprint intersection's area
    times the overlap of the two extents along the axis."""
    M = a.rotation.T @ b.rotation                       # b's axes in a's local coordinates
    # Parallel to rounding only (the rest of row i and column k ~1e-16 for boxes built about one
    # up vector): an axis 1e-6 rad off would already move the volume by ~1e-6 of its size. Every
    # candidate is tried: in nearly axis-aligned pairs the largest entry need not be the shared axis.
    for i, k in np.argwhere(np.abs(M) > 0.5):
        off = np.abs(np.concatenate([np.delete(M[i], k), np.delete(M[:, k], i)]))
        if off.max() <= 1e-12:
            break
    else:
        return None
    c = a.rotation.T @ (b.center - a.center)            # b's centre in a's local coordinates
    ha, hb = a.size / 2.0, b.size / 2.0
    along = min(ha[i], c[i] + hb[k]) - max(-ha[i], c[i] - hb[k])
    if along <= 0.0:
        return 0.0
    plane = [ax for ax in range(3) if ax != i]
    k1, k2 = [ax for ax in range(3) if ax != k]
    e1, e2 = M[plane, k1] * hb[k1], M[plane, k2] * hb[k2]
    centre = c[plane]
    footprint = np.array([centre - e1 - e2, centre + e1 - e2, centre + e1 + e2, centre - e1 + e2])
    poly = _clip_to_rectangle(footprint, ha[plane], 1e-12 * max(float(np.max(a.size)), float(np.max(b.size)), 1.0))
    if len(poly) < 3:
        return 0.0
    x, y = poly[:, 0], poly[:, 1]
    area = 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
    return area * along


def intersection_volume(a: Box3D, b: Box3D) -> float:
    """Exact volume (cubic metres) shared by two oriented boxes; b is converted to a's frame."""
    if a.volume <= 0.0 or b.volume <= 0.0:
        return 0.0
    b = b.to_frame(a.frame)
    if np.linalg.norm(a.center - b.center) > (np.linalg.norm(a.size) + np.linalg.norm(b.size)) / 2:
        return 0.0
    shared = _shared_axis_volume(a, b)
    if shared is not None:
        return float(min(shared, a.volume, b.volume))
    return _clipped_volume(a, b)


def _clipped_volume(a: Box3D, b: Box3D) -> float:
    """The general case: b (in a's frame) clipped by a's six half-spaces."""
    half = a.size / 2.0
    scale = float(max(np.max(a.size), np.max(b.size)))
    eps = 1e-12 * max(scale, 1.0)
    faces = _box_faces_in(b, a)
    for axis in range(3):
        for sign in (1.0, -1.0):
            new_faces: list[Polygon] = []
            cut: list[np.ndarray] = []
            for f in faces:
                clipped, on_plane = _clip_polygon(f, axis, sign, half[axis], eps)
                if len(clipped) >= 3:
                    new_faces.append(clipped)
                cut.extend(on_plane)
            cap = _cap(cut, axis, eps * 10)
            if cap is not None:
                new_faces.append(cap)
            faces = new_faces
            if len(faces) < 4:
                return 0.0
    # Clipping can only shrink b; guard against rounding pushing it past either box.
    return float(min(_convex_volume(faces), a.volume, b.volume))


def iou_3d(a: Box3D, b: Box3D) -> float:
    """Intersection over union of two oriented boxes, in [0, 1]; 0 if either has zero volume."""
    inter = intersection_volume(a, b)
    union = a.volume + b.volume - inter
    if inter <= 0.0 or union <= 0.0:
        return 0.0
    return float(min(max(inter / union, 0.0), 1.0))


def iou_matrix(boxes_a: Sequence[Box3D], boxes_b: Sequence[Box3D]) -> np.ndarray:
    """(Na, Nb) IoU of every pair; pairs whose bounding spheres are apart are 0 without clipping."""
    out = np.zeros((len(boxes_a), len(boxes_b)))
    if out.size == 0:
        return out
    frame = boxes_a[0].frame
    bs = [b.to_frame(frame) for b in boxes_b]
    ca = np.array([a.to_frame(frame).center for a in boxes_a])  # (Na, 3)
    cb = np.array([b.center for b in bs])                         # (Nb, 3)
    ra = np.array([np.linalg.norm(a.size) / 2 for a in boxes_a])
    rb = np.array([np.linalg.norm(b.size) / 2 for b in bs])
    dist = np.linalg.norm(ca[:, None, :] - cb[None, :, :], axis=-1)
    near = dist <= ra[:, None] + rb[None, :]
    for i, j in zip(*np.nonzero(near)):
        out[i, j] = iou_3d(boxes_a[i], bs[j])
    return out


def suppress_overlaps(boxes: Sequence[Box3D], max_overlap: float, *, max_volume_ratio: float = 30.0) -> list[int]:
    """Greedy non-maximum suppression: indices of `boxes` (best first, one frame) kept.

    A box is dropped when a kept, better box of comparable volume (within `max_volume_ratio`)
    shares more than `max_overlap` of the smaller one's volume. Measuring against the smaller box
    catches a duplicate squeezed inside a differently shaped twin (a desk read as a cabinet),
    and the volume ratio spares a small object standing inside a large one (a mug on a shelf is
    ~300x smaller; twins of small kinds, a flat box read as a book, differ by up to ~20x).
    max_overlap >= 1 keeps everything. The exact intersection runs only for pairs whose
    axis-aligned bounds could overlap that much (most pairs are far apart).
    """
    if max_overlap >= 1.0 or len(boxes) < 2:
        return list(range(len(boxes)))
    vol = np.array([b.volume for b in boxes])
    corners = [b.corners() for b in boxes]
    lo = np.array([c.min(axis=0) for c in corners])
    hi = np.array([c.max(axis=0) for c in corners])
    kept: list[int] = []
    for i in range(len(boxes)):
        duplicate = False
        for j in kept:
            small, big = min(vol[i], vol[j]), max(vol[i], vol[j])
            if small <= 0.0 or big > max_volume_ratio * small:
                continue
            bound = float(np.prod(np.clip(np.minimum(hi[i], hi[j]) - np.maximum(lo[i], lo[j]), 0.0, None)))
            if bound / small <= max_overlap:
                continue
            if intersection_volume(boxes[i], boxes[j]) / small > max_overlap:
                duplicate = True
                break
        if not duplicate:
            kept.append(i)
    return kept
