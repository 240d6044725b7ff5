"""Pinhole camera with ROS CameraInfo semantics (K, D, P, binning, ROI).

Conventions: pixel centres sit at integer coordinates (OpenCV/ROS), points are in the camera
optical frame (x right, y down, z forward, metres).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

DISTORTION_MODELS = ("plumb_bob", "rational_polynomial", "none")
_UNDISTORT_ITERATIONS = 30


def _as_matrix(values: Sequence[float] | np.ndarray, shape: tuple[int, int], name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.size != shape[0] * shape[1]:
        raise ValueError(f"{name} must have {shape[0] * shape[1]} values, got {arr.size}")
    return arr.reshape(shape)


@dataclass(frozen=True)
class CameraModel:
    """Intrinsics of the image as delivered (binning and ROI already applied).

    `K` (3,3) maps optical-frame rays to pixels of the distorted image; `D` are the distortion
    coefficients of `distortion_model` (plumb_bob: k1 k2 p1 p2 k3; rational_polynomial:
    k1 k2 p1 p2 k3 k4 k5 k6). `P` (3,4) is the rectified projection, kept for reference.
    """

    width: int
    height: int
    K: np.ndarray
    D: np.ndarray = field(default_factory=lambda: np.zeros(0))
    distortion_model: str = "none"
    P: np.ndarray | None = None
    frame_id: str = ""

    def __post_init__(self) -> None:
        K = _as_matrix(self.K, (3, 3), "K")
        object.__setattr__(self, "K", K)
        D = np.asarray(self.D, dtype=np.float64).reshape(-1)
        object.__setattr__(self, "D", D)
        if self.P is not None:
            object.__setattr__(self, "P", _as_matrix(self.P, (3, 4), "P"))
        model = self.distortion_model or "none"
        if not np.any(D):
            model = "none"
        if model not in DISTORTION_MODELS:
            raise ValueError(f"unsupported distortion model {self.distortion_model!r}; "
                             f"expected one of {DISTORTION_MODELS}")
        object.__setattr__(self, "distortion_model", model)
        if int(self.width) <= 0 or int(self.height) <= 0:
            raise ValueError(f"image size must be positive, got {self.width}x{self.height}")
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "height", int(self.height))
        if not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
            raise ValueError(f"K must be finite with positive focal lengths, got fx={K[0, 0]}, fy={K[1, 1]}")

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_intrinsics(cls, fx: float, fy: float, cx: float, cy: float, width: int, height: int,
                        *, frame_id: str = "") -> "CameraModel":
        K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
        return cls(width=width, height=height, K=K, frame_id=frame_id)

    @classmethod
    def from_camera_info(cls, *, width: int, height: int, k: Sequence[float], d: Sequence[float] = (),
                         distortion_model: str = "plumb_bob", p: Sequence[float] | None = None,
                         binning_x: int = 0, binning_y: int = 0,
                         roi: tuple[int, int, int, int] = (0, 0, 0, 0), frame_id: str = "") -> "CameraModel":
        """Build the model of the delivered image from sensor_msgs/CameraInfo fields.

        `roi` is (x_offset, y_offset, width, height) in full-resolution pixels; a zero-size ROI means
        the full image. Binning 0 and 1 both mean none. As in image_geometry, the ROI is cut first and
        binning divides the result.
        """
        K = _as_matrix(k, (3, 3), "K").copy()
        P = None if p is None or not np.any(np.asarray(p)) else _as_matrix(p, (3, 4), "P").copy()
        x_off, y_off, roi_w, roi_h = (int(v) for v in roi)
        full_w, full_h = int(width), int(height)
        if roi_w > 0 and roi_h > 0:
            if x_off < 0 or y_off < 0 or x_off + roi_w > full_w or y_off + roi_h > full_h:
                raise ValueError(f"ROI {roi} does not fit in a {full_w}x{full_h} image")
            K[0, 2] -= x_off
            K[1, 2] -= y_off
            if P is not None:
                P[0, 2] -= x_off
                P[1, 2] -= y_off
            full_w, full_h = roi_w, roi_h
        bx = max(int(binning_x), 1)
        by = max(int(binning_y), 1)
        if bx > 1 or by > 1:
            # Binned pixel i covers full-res pixels [i*b, (i+1)*b): centre at i*b + (b-1)/2.
            for M in (K, P):
                if M is None:
                    continue
                M[0, :] /= bx
                M[1, :] /= by
                M[0, 2] -= (bx - 1) / (2.0 * bx)
                M[1, 2] -= (by - 1) / (2.0 * by)
            full_w, full_h = full_w // bx, full_h // by
        return cls(width=full_w, height=full_h, K=K, D=np.asarray(d, dtype=np.float64),
                   distortion_model=distortion_model or "none", P=P, frame_id=frame_id)

    # ------------------------------------------------------------------ accessors
    @property
    def fx(self) -> float:
        return float(self.K[0, 0])

    @property
    def fy(self) -> float:
        return float(self.K[1, 1])

    @property
    def cx(self) -> float:
        return float(self.K[0, 2])

    @property
    def cy(self) -> float:
        return float(self.K[1, 2])

    @property
    def skew(self) -> float:
        return float(self.K[0, 1])

    @property
    def has_distortion(self) -> bool:
        return self.distortion_model != "none"

    def normalized_intrinsics(self) -> np.ndarray:
        """(3,3) intrinsics in image-size units (MoGe / N3D-VLM `intr`).

        Those count pixels from the image EDGE (a pixel centre at u = (col + 0.5) / W), while this
        model puts centres at integers: hence the half-pixel shift of the principal point.
        """
        Kn = self.K.copy()
        Kn[0, 2] += 0.5
        Kn[1, 2] += 0.5
        Kn[0, :] /= self.width
        Kn[1, :] /= self.height
        Kn[2] = (0.0, 0.0, 1.0)
        return Kn

    @classmethod
    def from_normalized_intrinsics(cls, intr: np.ndarray, width: int, height: int,
                                   *, frame_id: str = "") -> "CameraModel":
        K = np.asarray(intr, dtype=np.float64).reshape(3, 3).copy()
        K[0, :] *= width
        K[1, :] *= height
        K[0, 2] -= 0.5
        K[1, 2] -= 0.5
        K[2] = (0.0, 0.0, 1.0)
        return cls(width=width, height=height, K=K, frame_id=frame_id)

    def with_intrinsics(self, K: np.ndarray, width: int, height: int) -> "CameraModel":
        """Same distortion and frame, new pinhole part (used by image resampling)."""
        return CameraModel(width=width, height=height, K=K, D=self.D,
                           distortion_model=self.distortion_model, frame_id=self.frame_id)

    def undistorted(self) -> "CameraModel":
        """The pinhole camera of an undistorted image with the same K."""
        return CameraModel(width=self.width, height=self.height, K=self.K, frame_id=self.frame_id)

    # ------------------------------------------------------------------ distortion
    def _distort_normalized(self, xy: np.ndarray) -> np.ndarray:
        if not self.has_distortion:
            return xy
        d = np.zeros(8)
        d[: min(8, self.D.size)] = self.D[:8]
        k1, k2, p1, p2, k3, k4, k5, k6 = d
        if self.distortion_model == "plumb_bob":
            k4 = k5 = k6 = 0.0
        x, y = xy[..., 0], xy[..., 1]
        r2 = x * x + y * y
        radial = (1 + r2 * (k1 + r2 * (k2 + r2 * k3))) / (1 + r2 * (k4 + r2 * (k5 + r2 * k6)))
        xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
        yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
        return np.stack([xd, yd], axis=-1)

    def _undistort_normalized(self, xy_d: np.ndarray) -> np.ndarray:
        if not self.has_distortion:
            return xy_d
        # Gauss-Newton on distort(x) = x_d with a numeric Jacobian: converges where the simple
        # fixed-point iteration of OpenCV stalls for strong rational_polynomial lenses.
        xy = xy_d.copy()
        eps = 1e-7
        for _ in range(_UNDISTORT_ITERATIONS):
            f = self._distort_normalized(xy) - xy_d
            jx = (self._distort_normalized(xy + [eps, 0.0]) - self._distort_normalized(xy)) / eps
            jy = (self._distort_normalized(xy + [0.0, eps]) - self._distort_normalized(xy)) / eps
            a, c = jx[..., 0], jx[..., 1]
            b, d = jy[..., 0], jy[..., 1]
            det = a * d - b * c
            det = np.where(np.abs(det) < 1e-12, 1e-12, det)
            dx = (d * f[..., 0] - b * f[..., 1]) / det
            dy = (-c * f[..., 0] + a * f[..., 1]) / det
            xy = xy - np.stack([dx, dy], axis=-1)
            if np.all(np.abs(f) < 1e-12):
                break
        return xy

    # ------------------------------------------------------------------ projection
    def project(self, points: np.ndarray) -> np.ndarray:
        """(..., 3) optical-frame points -> (..., 2) pixels; points with z <= 0 give NaN."""
        p = np.asarray(points, dtype=np.float64)
        z = p[..., 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            xy = p[..., :2] / z[..., None]
        xy = np.where((z > 0)[..., None], xy, np.nan)
        xy = self._distort_normalized(xy)
        u = self.fx * xy[..., 0] + self.skew * xy[..., 1] + self.cx
        v = self.fy * xy[..., 1] + self.cy
        return np.stack([u, v], axis=-1)

    def pixel_to_normalized(self, uv: np.ndarray) -> np.ndarray:
        """(..., 2) distorted pixels -> (..., 2) undistorted normalized coordinates (x/z, y/z)."""
        uv = np.asarray(uv, dtype=np.float64)
        y = (uv[..., 1] - self.cy) / self.fy
        x = (uv[..., 0] - self.cx - self.skew * y) / self.fx
        return self._undistort_normalized(np.stack([x, y], axis=-1))

    def unproject(self, uv: np.ndarray, depth: np.ndarray | float) -> np.ndarray:
        """(..., 2) pixels and z-depth (metres along the optical axis) -> (..., 3) points."""
        xy = self.pixel_to_normalized(uv)
        z = np.asarray(depth, dtype=np.float64)
        z = np.broadcast_to(z, xy.shape[:-1])
        return np.stack([xy[..., 0] * z, xy[..., 1] * z, z], axis=-1)

    def undistort_points(self, uv: np.ndarray) -> np.ndarray:
        """(..., 2) distorted pixels -> (..., 2) pixels of the ideal pinhole camera with the same K."""
        xy = self.pixel_to_normalized(uv)
        u = self.fx * xy[..., 0] + self.skew * xy[..., 1] + self.cx
        v = self.fy * xy[..., 1] + self.cy
        return np.stack([u, v], axis=-1)

    def pixel_grid(self) -> np.ndarray:
        """(H, W, 2) pixel coordinates (u, v) of every pixel centre."""
        v, u = np.mgrid[0:self.height, 0:self.width].astype(np.float64)
        return np.stack([u, v], axis=-1)

    def ray_directions(self) -> np.ndarray:
        """(H, W, 3) per-pixel rays (x/z, y/z, 1), distortion removed."""
        xy = self.pixel_to_normalized(self.pixel_grid())
        return np.concatenate([xy, np.ones(xy.shape[:-1] + (1,))], axis=-1)

    def depth_to_points(self, depth: np.ndarray, *, min_depth: float = 1e-3,
                        max_depth: float = np.inf) -> tuple[np.ndarray, np.ndarray]:
        """(H, W) z-depth in metres -> ((H, W, 3) point map, (H, W) bool validity mask).

        Invalid pixels (non-finite, <= min_depth, > max_depth) get NaN points and mask False.
        """
        depth = np.asarray(depth, dtype=np.float64)
        if depth.shape != (self.height, self.width):
            raise ValueError(f"depth is {depth.shape[1]}x{depth.shape[0]} but the camera is "
                             f"{self.width}x{self.height}")
        mask = valid_depth(depth, min_depth=min_depth, max_depth=max_depth)
        points = self.ray_directions() * np.where(mask, depth, np.nan)[..., None]
        return points, mask

    def in_image(self, uv: np.ndarray) -> np.ndarray:
        uv = np.asarray(uv)
        return ((uv[..., 0] >= -0.5) & (uv[..., 0] <= self.width - 0.5)
                & (uv[..., 1] >= -0.5) & (uv[..., 1] <= self.height - 0.5))


def valid_depth(depth: np.ndarray, *, min_depth: float = 1e-3, max_depth: float = np.inf) -> np.ndarray:
    """Where a z-depth map holds a measurement: finite, beyond `min_depth` (0 is a depth camera's
    "no return"), at most `max_depth`."""
    return np.isfinite(depth) & (depth > min_depth) & (depth <= max_depth)


def check_image(image: np.ndarray, camera: CameraModel, *, name: str = "image") -> np.ndarray:
    """The image as an array; ValueError unless it is (H, W, 3) uint8 RGB of the camera's size."""
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"{name} must be (H, W, 3) uint8 RGB, got {img.shape} {img.dtype}")
    if img.shape[:2] != (camera.height, camera.width):
        raise ValueError(f"{name} is {img.shape[1]}x{img.shape[0]} but the camera is "
                         f"{camera.width}x{camera.height}")
    return img
