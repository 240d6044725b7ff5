"""The geometry encoder contract: RGB image + intrinsics -> metric point map, mask, features.

Every geometry source (the compact built-in encoder, a user-supplied MoGe-2 ONNX graph, a
registered depth image) returns a `GeometryOutput` on its MODEL grid, together with the
`PixelTransform` that maps each source image onto that grid, so callers can go back to source
pixels exactly.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from ..core.camera import CameraModel, check_image
from ..core.focal import PixelTransform

LOG = logging.getLogger("n3d_ros.geometry")

BACKENDS = ("tensorrt", "onnxruntime", "torch", "torch_compiled")
PRECISIONS = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class GeometryOutput:
    """Batch output of a geometry encoder, on the model grid.

    points:     (B, h, w, 3) float32 metres, optical frame of the source camera (NaN where invalid).
    mask:       (B, h, w) bool validity of `points`.
    features:   (B, C, h/16, w/16) float32 feature tokens, or None when the source has none.
    transforms: one PixelTransform per item, source pixels -> model-grid pixels.
    backend:    what produced it, e.g. "onnxruntime(CPUExecutionProvider)", "torch(cpu, fp32)", "depth".
    """

    points: np.ndarray
    mask: np.ndarray
    features: np.ndarray | None
    transforms: list[PixelTransform]
    backend: str
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        pts = np.asarray(self.points)
        if pts.ndim != 4 or pts.shape[-1] != 3:
            raise ValueError(f"points must be (B, h, w, 3), got {pts.shape}")
        if self.mask.shape != pts.shape[:3] or self.mask.dtype != np.bool_:
            raise ValueError(f"mask must be bool {pts.shape[:3]}, got {self.mask.dtype} {self.mask.shape}")
        if len(self.transforms) != pts.shape[0]:
            raise ValueError(f"need one transform per item: {pts.shape[0]} items, "
                             f"{len(self.transforms)} transforms")
        for t in self.transforms:
            if (t.out_width, t.out_height) != (pts.shape[2], pts.shape[1]):
                raise ValueError(f"transform targets {t.out_width}x{t.out_height} but the point map "
                                 f"is {pts.shape[2]}x{pts.shape[1]}")
        if self.features is not None and (self.features.ndim != 4 or self.features.shape[0] != pts.shape[0]):
            raise ValueError(f"features must be (B, C, h', w') with B={pts.shape[0]}, got {self.features.shape}")

    @property
    def batch_size(self) -> int:
        return int(self.points.shape[0])

    def points_on_source(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Item i on its source pixel grid: ((H, W, 3) float32 metres optical, (H, W) bool).

        Nearest resampling through the inverse transform, so points of two surfaces never blend
        into one floating between them; 3D values are unchanged (same optical frame).
        """
        inv = self.transforms[i].inverse()
        pts = inv.apply_image(np.asarray(self.points[i], dtype=np.float32), interpolation="nearest",
                              fill=np.nan)
        m = inv.apply_image(self.mask[i].astype(np.uint8), interpolation="nearest").astype(bool)
        return pts, m & np.all(np.isfinite(pts), axis=-1)


@runtime_checkable
class GeometryEncoder(Protocol):
    """What every geometry source offers. `backend` names the runtime, `device` where it runs."""

    backend: str
    device: str

    def encode(self, images: Sequence[np.ndarray], cameras: Sequence[CameraModel]) -> GeometryOutput:
        """images: (H, W, 3) uint8 RGB each; cameras: the intrinsics of each image."""
        ...

    def close(self) -> None:
        ...


def check_batch(images: Sequence[np.ndarray], cameras: Sequence[CameraModel]) -> None:
    """Raise ValueError unless images and cameras pair up as (H, W, 3) uint8 of the camera's size."""
    if len(images) == 0:
        raise ValueError("encode() needs at least one image")
    if len(images) != len(cameras):
        raise ValueError(f"got {len(images)} images but {len(cameras)} cameras")
    for i, (img, cam) in enumerate(zip(images, cameras)):
        check_image(img, cam, name=f"image {i}")
