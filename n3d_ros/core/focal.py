"""Focal-length normalization (GR3D) and the exact pixel maps behind it.

A `PixelTransform` is an axis-aligned affine map between two images' pixel grids,
u' = sx * u + tx, v' = sy * v + ty (pixel centres at integers), plus the output size. Focal
normalization, resizes and letterboxing are all such maps, they compose, and every quantity that
lives in pixels (images, intrinsics, 2D boxes, per-pixel point maps) maps through them exactly.
3D points and 3D boxes do not change: the rays of the camera are the same.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .camera import CameraModel


@dataclass(frozen=True)
class PixelTransform:
    sx: float
    sy: float
    tx: float
    ty: float
    out_width: int
    out_height: int
    in_width: int
    in_height: int

    @classmethod
    def scale(cls, sx: float, sy: float, in_width: int, in_height: int,
              out_width: int | None = None, out_height: int | None = None) -> "PixelTransform":
        """Resize with pixel *areas* scaled by (sx, sy): u' = (u + 0.5) * sx - 0.5."""
        ow = max(1, int(round(in_width * sx))) if out_width is None else int(out_width)
        oh = max(1, int(round(in_height * sy))) if out_height is None else int(out_height)
        return cls(sx, sy, 0.5 * sx - 0.5, 0.5 * sy - 0.5, ow, oh, in_width, in_height)

    @classmethod
    def resize_to(cls, in_width: int, in_height: int, out_width: int, out_height: int) -> "PixelTransform":
        return cls.scale(out_width / in_width, out_height / in_height, in_width, in_height,
                         out_width, out_height)

    @property
    def identity(self) -> bool:
        return (self.sx == 1.0 and self.sy == 1.0 and self.tx == 0.0 and self.ty == 0.0
                and self.out_width == self.in_width and self.out_height == self.in_height)

    def then(self, other: "PixelTransform") -> "PixelTransform":
        """Apply self, then other."""
        if (other.in_width, other.in_height) != (self.out_width, self.out_height):
            raise ValueError("transforms do not chain: sizes differ")
        return PixelTransform(self.sx * other.sx, self.sy * other.sy,
                              other.sx * self.tx + other.tx, other.sy * self.ty + other.ty,
                              other.out_width, other.out_height, self.in_width, self.in_height)

    def inverse(self) -> "PixelTransform":
        return PixelTransform(1.0 / self.sx, 1.0 / self.sy, -self.tx / self.sx, -self.ty / self.sy,
                              self.in_width, self.in_height, self.out_width, self.out_height)

    def apply_points(self, uv: np.ndarray) -> np.ndarray:
        """(..., 2) pixels of the input image -> (..., 2) pixels of the output image."""
        uv = np.asarray(uv, dtype=np.float64)
        return np.stack([uv[..., 0] * self.sx + self.tx, uv[..., 1] * self.sy + self.ty], axis=-1)

    def apply_box_2d(self, box: np.ndarray) -> np.ndarray:
        """(..., 4) boxes (u_min, v_min, u_max, v_max) given as pixel-edge extents -> output image.

        Box extents are edges, not centres: an edge at u maps like the point u (edges at -0.5 and
        W-0.5 bound the image), so the same affine map applies.
        """
        b = np.asarray(box, dtype=np.float64)
        out = b.copy()
        out[..., 0] = b[..., 0] * self.sx + self.tx
        out[..., 2] = b[..., 2] * self.sx + self.tx
        out[..., 1] = b[..., 1] * self.sy + self.ty
        out[..., 3] = b[..., 3] * self.sy + self.ty
        return out

    def apply_camera(self, camera: CameraModel) -> CameraModel:
        """Intrinsics of the output image. Exact for pinhole cameras; for distorted cameras the map
        is applied to the pixel coordinates after distortion, so K scales and D is kept."""
        if (camera.width, camera.height) != (self.in_width, self.in_height):
            raise ValueError(f"camera is {camera.width}x{camera.height}, transform expects "
                             f"{self.in_width}x{self.in_height}")
        A = np.array([[self.sx, 0.0, self.tx], [0.0, self.sy, self.ty], [0.0, 0.0, 1.0]])
        return camera.with_intrinsics(A @ camera.K, self.out_width, self.out_height)

    def apply_image(self, image: np.ndarray, *, interpolation: str = "linear",
                    fill: float = 0.0) -> np.ndarray:
        """Resample an (H, W[, C]) array onto the output grid.

        interpolation: "linear" (area pre-filter when shrinking by 2x or more) or "nearest"
        (for masks, label maps and point maps that must not blend across edges).
        Output pixels whose source falls outside the input get `fill`.
        """
        return resample(image, self.inverse(), self.out_width, self.out_height,
                        interpolation=interpolation, fill=fill)


@dataclass(frozen=True)
class ResampleTaps:
    """Where each output pixel of a resampling reads the input, one axis at a time: output row i is
    sum_t row_weights[i, t] * input row rows[i, t] (columns likewise). Output pixels whose source
    falls outside the input are not `valid` and get the fill value. The same tables drive the NumPy
    resampling here and the GPU one of `geometry.preprocess`, so both compute one map."""
    rows: np.ndarray          # (out_height, taps) int64 input row indices
    row_weights: np.ndarray   # (out_height, taps) float64, summing to 1 per row
    cols: np.ndarray          # (out_width, taps) int64 input column indices
    col_weights: np.ndarray   # (out_width, taps) float64
    valid: np.ndarray         # (out_height, out_width) bool


def resample_taps(out_to_in: PixelTransform, out_width: int, out_height: int, *,
                  interpolation: str = "linear") -> ResampleTaps:
    """The taps of resampling an image of `out_to_in`'s output size (the input) onto an
    (out_width, out_height) grid whose pixel centres map through `out_to_in`.

    "linear": shrinking by 2x or more first averages k input pixels (a box filter, edges replicated)
    so that it does not alias; box filter and bilinear weights are folded into a few taps per output
    row and column. "nearest": one tap, the nearest input pixel (for masks, label maps and point maps
    that must not blend across edges)."""
    W, H = out_to_in.out_width, out_to_in.out_height
    u = np.arange(out_width, dtype=np.float64) * out_to_in.sx + out_to_in.tx
    v = np.arange(out_height, dtype=np.float64) * out_to_in.sy + out_to_in.ty
    if interpolation == "nearest":
        ui, vi = np.rint(u).astype(np.int64), np.rint(v).astype(np.int64)
        okx, oky = (ui >= 0) & (ui < W), (vi >= 0) & (vi < H)
        ix, iy = np.clip(ui, 0, W - 1)[:, None], np.clip(vi, 0, H - 1)[:, None]
        wx, wy = np.ones(ix.shape), np.ones(iy.shape)
    elif interpolation == "linear":
        blur = out_to_in.sx >= 2.0 or out_to_in.sy >= 2.0
        kx = max(1, int(out_to_in.sx)) if blur else 1
        ky = max(1, int(out_to_in.sy)) if blur else 1
        okx = (u >= -0.5) & (u <= W - 0.5)
        oky = (v >= -0.5) & (v <= H - 0.5)
        ix, wx = _linear_taps(u, W, kx)
        iy, wy = _linear_taps(v, H, ky)
    else:
        raise ValueError(f"interpolation must be 'linear' or 'nearest', got {interpolation!r}")
    return ResampleTaps(iy, wy, ix, wx, oky[:, None] & okx[None, :])


def resample(image: np.ndarray, out_to_in: PixelTransform, out_width: int, out_height: int, *,
             interpolation: str = "linear", fill: float = 0.0) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim not in (2, 3):
        raise ValueError(f"expected an (H, W) or (H, W, C) array, got shape {img.shape}")
    H, W = img.shape[:2]
    if (W, H) != (out_to_in.out_width, out_to_in.out_height):
        raise ValueError(f"image is {W}x{H}, transform expects {out_to_in.out_width}x{out_to_in.out_height}")
    taps = resample_taps(out_to_in, out_width, out_height, interpolation=interpolation)
    if interpolation == "nearest":
        out = img[taps.rows[:, 0]][:, taps.cols[:, 0]]
    else:
        # Rows first (the image is taller than the output, so the second pass is small). Arithmetic
        # is float32 unless the input is float64: weights sum to one, so float32 is exact to ~1e-7
        # of the value range, and it halves the memory traffic that bounds this function.
        work = np.float64 if img.dtype == np.float64 else np.float32
        s = img if img.ndim == 3 else img[..., None]
        rows = np.einsum("htwc,ht->hwc", s[taps.rows].astype(work, copy=False), taps.row_weights.astype(work))
        out = np.einsum("hwtc,wt->hwc", rows[:, taps.cols], taps.col_weights.astype(work))
        if img.ndim == 2:
            out = out[..., 0]
    out = np.where(taps.valid[..., None] if out.ndim == 3 else taps.valid, out, fill)
    if np.issubdtype(img.dtype, np.integer) and interpolation == "linear":
        info = np.iinfo(img.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(img.dtype)


def _linear_taps(coords: np.ndarray, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Input indices and weights, (m, 2k) each, of bilinear sampling at `coords` (clamped to the
    image) of the input after a k-wide moving average with replicated edges (k = 1: none)."""
    c = np.clip(coords, 0, n - 1)
    i0 = np.floor(c).astype(np.int64)
    i1 = np.minimum(i0 + 1, n - 1)
    f = c - i0
    offsets = np.arange(k) - k // 2
    idx = np.clip(np.concatenate([i0[:, None] + offsets, i1[:, None] + offsets], axis=1), 0, n - 1)
    w = np.concatenate([np.repeat(((1 - f) / k)[:, None], k, axis=1), np.repeat((f / k)[:, None], k, axis=1)], axis=1)
    return idx, w


@dataclass(frozen=True)
class FocalNormalization:
    """Result of normalizing a camera to the canonical focal length f0 (GR3D).

    `transform` maps source pixels to normalized pixels, `camera` is the normalized camera
    (fx = fy = f0 exactly, principal point moved with the pixels, distortion unchanged).
    """

    f0: float
    source: CameraModel
    camera: CameraModel
    transform: PixelTransform

    def image(self, image: np.ndarray, *, interpolation: str = "linear") -> np.ndarray:
        return self.transform.apply_image(image, interpolation=interpolation)

    def pixels_to_source(self, uv: np.ndarray) -> np.ndarray:
        return self.transform.inverse().apply_points(uv)

    def pixels_from_source(self, uv: np.ndarray) -> np.ndarray:
        return self.transform.apply_points(uv)

    def box_2d_to_source(self, box: np.ndarray) -> np.ndarray:
        return self.transform.inverse().apply_box_2d(box)

    def point_map_to_source(self, points: np.ndarray, mask: np.ndarray | None = None
                            ) -> tuple[np.ndarray, np.ndarray]:
        """(H', W', 3) point map on the normalized grid -> (H, W, 3) on the source grid.

        3D values are unchanged (same optical frame); only the grid is resampled, by nearest
        neighbour so that points from two surfaces never blend into one floating in between.
        """
        inv = self.transform.inverse()
        pts = inv.apply_image(np.asarray(points, dtype=np.float64), interpolation="nearest",
                              fill=np.nan)
        if mask is None:
            mask = np.all(np.isfinite(points), axis=-1)
        m = inv.apply_image(np.asarray(mask, dtype=np.uint8), interpolation="nearest").astype(bool)
        return pts, m & np.all(np.isfinite(pts), axis=-1)


def normalize_focal(camera: CameraModel, f0: float, *, max_long_side: int | None = None) -> FocalNormalization:
    """Rescale so that fx and fy both become f0 (anisotropic cameras become square-pixel).

    With `max_long_side`, an image that would come out larger is normalized to a smaller
    focal instead (f0 * max_long_side / long_side) so memory stays bounded; `camera` then
    reports the focal actually used.
    """
    if not np.isfinite(f0) or f0 <= 0:
        raise ValueError(f"f0 must be a positive focal length in pixels, got {f0}")
    sx = f0 / camera.fx
    sy = f0 / camera.fy
    if max_long_side is not None:
        long_side = max(camera.width * sx, camera.height * sy)
        if long_side > max_long_side:
            shrink = max_long_side / long_side
            sx, sy = sx * shrink, sy * shrink
            f0 = f0 * shrink
    transform = PixelTransform.scale(sx, sy, camera.width, camera.height)
    normalized = transform.apply_camera(camera)
    return FocalNormalization(f0=float(f0), source=camera, camera=normalized, transform=transform)


def letterbox(width: int, height: int, out_width: int, out_height: int) -> PixelTransform:
    """Fit an image inside (out_width, out_height) keeping its aspect ratio, centred, padded."""
    s = min(out_width / width, out_height / height)
    base = PixelTransform.scale(s, s, width, height)
    pad_x = (out_width - base.out_width) // 2
    pad_y = (out_height - base.out_height) // 2
    return PixelTransform(base.sx, base.sy, base.tx + pad_x, base.ty + pad_y,
                          out_width, out_height, width, height)
