"""N3D-VLM point-cloud conventions: the `pcd` array layout and the per-image normalization.

`pcd` (H, W, 4) float16 = xyz in the N3D frame (x left, y up, z forward, metres) + a validity
channel (> 0 valid). Before the model, valid points are shifted by their per-axis minimum and
scaled so their mean distance from that corner is 1; box depths and sizes in the model's token
stream live in this normalized space (see codec_n3d).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .frames import Frame, convert_points


@dataclass(frozen=True)
class PointCloudNorm:
    """p_norm = (p - shift) * scale, for N3D-frame points.

    shift: (3,) metres, N3D frame (per-axis minimum of the valid points).
    scale: 1/metres (1 / mean distance of the shifted valid points from the origin).
    """

    shift: np.ndarray
    scale: float

    def __post_init__(self) -> None:
        shift = np.asarray(self.shift, dtype=np.float64).reshape(-1)
        if shift.shape != (3,) or not np.all(np.isfinite(shift)):
            raise ValueError(f"shift must be 3 finite values, got {self.shift!r}")
        scale = float(self.scale)
        if not np.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale must be finite and positive, got {self.scale!r}")
        object.__setattr__(self, "shift", shift)
        object.__setattr__(self, "scale", scale)

    @classmethod
    def from_points(cls, points: np.ndarray, mask: np.ndarray | None = None) -> "PointCloudNorm":
        """Normalization of (..., 3) N3D-frame points; `mask` (...) bool selects the valid ones
        (default: all finite points)."""
        pts = np.asarray(points, dtype=np.float64)
        if pts.shape[-1] != 3:
            raise ValueError(f"expected (..., 3) points, got shape {pts.shape}")
        valid = np.all(np.isfinite(pts), axis=-1)
        if mask is not None:
            m = np.asarray(mask, dtype=bool)
            if m.shape != pts.shape[:-1]:
                raise ValueError(f"mask shape {m.shape} does not match points {pts.shape[:-1]}")
            valid &= m
        p = pts[valid]  # (N, 3)
        if len(p) == 0:
            raise ValueError("no valid points to normalize")
        shift = p.min(axis=0)
        mean_dist = float(np.linalg.norm(p - shift, axis=1).mean())
        if mean_dist <= 0:
            raise ValueError("all valid points coincide; the normalization scale is undefined")
        return cls(shift, 1.0 / mean_dist)

    def apply(self, points: np.ndarray) -> np.ndarray:
        """(..., 3) N3D-frame metres -> normalized."""
        return (np.asarray(points, dtype=np.float64) - self.shift) * self.scale

    def invert(self, points: np.ndarray) -> np.ndarray:
        """(..., 3) normalized -> N3D-frame metres."""
        return np.asarray(points, dtype=np.float64) / self.scale + self.shift


def n3d_pcd_to_optical(pcd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 4) N3D `pcd` -> ((H, W, 3) float64 optical-frame metres, (H, W) bool mask).

    Invalid points (validity <= 0 or non-finite) come back as NaN with mask False.
    """
    arr = np.asarray(pcd)
    if arr.ndim != 3 or arr.shape[-1] != 4:
        raise ValueError(f"expected an (H, W, 4) pcd array, got shape {arr.shape}")
    xyz = arr[..., :3].astype(np.float64)
    mask = (arr[..., 3].astype(np.float64) > 0) & np.all(np.isfinite(xyz), axis=-1)
    points = convert_points(xyz, Frame.N3D, Frame.OPTICAL)
    points[~mask] = np.nan
    return points, mask


def optical_to_n3d_pcd(points: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) optical-frame metres (+ (H, W) bool mask) -> (H, W, 4) float16 N3D `pcd`.

    Invalid points are written as zeros with validity 0 (the model replaces them anyway).
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 3 or pts.shape[-1] != 3:
        raise ValueError(f"expected (H, W, 3) points, got shape {pts.shape}")
    valid = np.all(np.isfinite(pts), axis=-1)
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.shape != pts.shape[:2]:
            raise ValueError(f"mask shape {m.shape} does not match points {pts.shape[:2]}")
        valid &= m
    out = np.zeros(pts.shape[:2] + (4,), dtype=np.float16)
    out[..., :3] = np.where(valid[..., None], convert_points(pts, Frame.OPTICAL, Frame.N3D), 0.0)
    out[..., 3] = valid
    return out
