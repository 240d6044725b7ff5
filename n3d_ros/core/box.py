"""The one 3D box type: centre, size, full rotation, in a named frame."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .camera import CameraModel
from .frames import (UP, YAW_AXIS, Frame, axis_rotation, orthonormalize,
                     rotation_between)

# Corner order: bit 0 -> +x/-x, bit 1 -> +y/-y, bit 2 -> +z/-z of the box's own axes.
CORNER_SIGNS = np.array([[(1 if i & 1 else -1), (1 if i & 2 else -1), (1 if i & 4 else -1)]
                          for i in range(8)], dtype=np.float64)
# The 12 edges as corner index pairs (corners that differ in exactly one bit).
BOX_EDGES = tuple((i, i | b) for i in range(8) for b in (1, 2, 4) if not i & b)
_EDGE_SAMPLES = 8  # points per edge when projecting, so lens distortion bends edges correctly


@dataclass(frozen=True, eq=False)  # numpy fields: identity equality
class Box3D:
    """Oriented 3D box.

    center:   (3,) metres, in `frame`.
    size:     (3,) metres, full extent along the box's own x, y, z axes.
    rotation: (3,3) box-to-frame rotation; its columns are the box axes expressed in `frame`.
    For a level camera in the optical frame, yaw-only boxes turn about +y (down): size is
    (width along x, height along y, length along z).
    """

    center: np.ndarray
    size: np.ndarray
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    frame: Frame = Frame.OPTICAL

    def __post_init__(self) -> None:
        c = np.asarray(self.center, dtype=np.float64).reshape(3)
        s = np.asarray(self.size, dtype=np.float64).reshape(3)
        R = np.asarray(self.rotation, dtype=np.float64).reshape(3, 3)
        if not (np.all(np.isfinite(c)) and np.all(np.isfinite(s)) and np.all(np.isfinite(R))):
            raise ValueError("box centre, size and rotation must be finite")
        if np.any(s < 0):
            raise ValueError(f"box size must be non-negative, got {s}")
        if not np.allclose(R.T @ R, np.eye(3), atol=1e-5) or np.linalg.det(R) < 0:
            raise ValueError("box rotation must be a proper rotation matrix")
        object.__setattr__(self, "center", c)
        object.__setattr__(self, "size", s)
        object.__setattr__(self, "rotation", R)
        object.__setattr__(self, "frame", Frame(self.frame))

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_yaw(cls, center, size, yaw: float, frame: Frame | str = Frame.OPTICAL) -> "Box3D":
        """Box turned by `yaw` radians (right-handed) about the frame's vertical axis."""
        frame = Frame(frame)
        return cls(center, size, axis_rotation(YAW_AXIS[frame], yaw), frame)

    # ------------------------------------------------------------------ properties
    @property
    def volume(self) -> float:
        return float(np.prod(self.size))

    @property
    def yaw(self) -> float:
        """Angle about the frame's vertical axis (exact for yaw-only boxes, the heading of the
        box's x axis projected on the level plane otherwise)."""
        axis = YAW_AXIS[self.frame]
        x = self.rotation[:, 0]
        if axis == 1:  # rotation about y: x axis goes to (cos, 0, -sin)
            return float(np.arctan2(-x[2], x[0]))
        return float(np.arctan2(x[1], x[0]))

    @property
    def is_yaw_only(self) -> bool:
        axis = YAW_AXIS[self.frame]
        return bool(abs(abs(self.rotation[axis, axis]) - 1.0) < 1e-6)

    def corners(self) -> np.ndarray:
        """(8, 3) corners in `frame` (see CORNER_SIGNS for the order)."""
        local = CORNER_SIGNS * (self.size / 2.0)
        return local @ self.rotation.T + self.center

    def extent_along(self, direction: np.ndarray) -> float:
        """Full extent of the box along a unit `direction` (in the box's frame): the width of its
        projection on that line, e.g. the height of a tilted box along the up vector."""
        return float(np.abs(self.rotation.T @ np.asarray(direction, dtype=np.float64)) @ self.size)

    def contains(self, points: np.ndarray, *, margin: float = 0.0) -> np.ndarray:
        """(N,) bool: which of (N, 3) points lie inside (points in the box's frame)."""
        local = (np.asarray(points, dtype=np.float64) - self.center) @ self.rotation
        return np.all(np.abs(local) <= self.size / 2.0 + margin, axis=-1)

    # ------------------------------------------------------------------ transforms
    def transformed(self, R: np.ndarray, t: np.ndarray | None = None,
                    frame: Frame | str | None = None) -> "Box3D":
        """Apply the rigid motion p -> R p + t (result labelled `frame`, default unchanged)."""
        R = np.asarray(R, dtype=np.float64)
        t = np.zeros(3) if t is None else np.asarray(t, dtype=np.float64)
        return Box3D(R @ self.center + t, self.size, orthonormalize(R @ self.rotation),
                     self.frame if frame is None else Frame(frame))

    def to_frame(self, frame: Frame | str) -> "Box3D":
        frame = Frame(frame)
        if frame == self.frame:
            return self
        return self.transformed(rotation_between(self.frame, frame), frame=frame)

    def gravity_aligned(self, up: np.ndarray | None = None) -> "Box3D":
        """Same box re-oriented so one of its axes is exactly `up` (frame's level up by default),
        keeping its heading about that axis. Sizes are permuted with the axes, so `size[v]`
        stays the extent along the axis that became vertical.
        """
        up_vec = UP[self.frame] if up is None else np.asarray(up, dtype=np.float64)
        up_vec = up_vec / np.linalg.norm(up_vec)
        v_axis = YAW_AXIS[self.frame]
        # Box axis most parallel to up becomes the vertical axis.
        k = int(np.argmax(np.abs(self.rotation.T @ up_vec)))
        others = [i for i in range(3) if i != k]
        # Heading: the lower-index remaining axis keeps its role (so a yaw-only box keeps its
        # sizes in order), unless it is much closer to vertical than the other one.
        cand = [self.rotation[:, i] - np.dot(self.rotation[:, i], up_vec) * up_vec for i in others]
        norms = [float(np.linalg.norm(c)) for c in cand]
        pick = 0 if norms[0] >= 0.5 * norms[1] else 1
        j = others[pick]
        h = cand[pick]
        h = h / np.linalg.norm(h)
        # Target layout follows the frame's yaw convention: vertical axis at index v_axis.
        # The frame's own vertical axis points up (N3D, BODY) or down (OPTICAL): keep that sign.
        vert = float(np.dot(np.eye(3)[v_axis], UP[self.frame])) * up_vec
        heading_index = 0
        third_index = ({0, 1, 2} - {v_axis, heading_index}).pop()
        cols = [None, None, None]
        cols[v_axis] = vert
        cols[heading_index] = h
        cols[third_index] = np.cross(cols[(third_index + 1) % 3], cols[(third_index + 2) % 3])
        R = np.stack(cols, axis=1)
        size = np.empty(3)
        size[v_axis] = self.size[k]
        size[heading_index] = self.size[j]
        size[third_index] = self.size[({0, 1, 2} - {k, j}).pop()]
        return Box3D(self.center, size, orthonormalize(R), self.frame)

    # ------------------------------------------------------------------ image
    def project_2d(self, camera: CameraModel, *, near: float = 1e-3) -> np.ndarray | None:
        """Tight (u_min, v_min, u_max, v_max) of the box's image in pixels, clipped to the image.

        Edges are clipped at the plane z = near before projection, so boxes that straddle the
        camera still give the visible part; None when nothing of the box is in view.
        The box must be in the optical frame of `camera` (converted from N3D/BODY if needed).
        """
        corners = self.to_frame(Frame.OPTICAL).corners()
        t = np.linspace(0.0, 1.0, _EDGE_SAMPLES)[:, None]
        pts = []
        for a, b in BOX_EDGES:
            pa, pb = corners[a], corners[b]
            za, zb = pa[2], pb[2]
            if za < near and zb < near:
                continue
            if za < near or zb < near:  # clip the segment at z = near
                s = (near - za) / (zb - za)
                pc = pa + s * (pb - pa)
                pa, pb = (pc, pb) if za < near else (pa, pc)
            pts.append(pa + t * (pb - pa))
        if not pts:
            return None
        uv = camera.project(np.concatenate(pts))
        uv = uv[np.all(np.isfinite(uv), axis=1)]
        if uv.size == 0:
            return None
        u0, v0 = uv.min(axis=0)
        u1, v1 = uv.max(axis=0)
        W, H = camera.width - 1, camera.height - 1
        if u1 < 0 or v1 < 0 or u0 > W or v0 > H:
            return None
        return np.array([max(u0, 0.0), max(v0, 0.0), min(u1, W), min(v1, H)])

    def __repr__(self) -> str:  # compact: arrays in full are unreadable in logs
        c = ", ".join(f"{v:.3f}" for v in self.center)
        s = ", ".join(f"{v:.3f}" for v in self.size)
        return f"Box3D(center=[{c}], size=[{s}], yaw={self.yaw:.3f}, frame={self.frame.value})"
