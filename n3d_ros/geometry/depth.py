"""Depth as geometry: a registered depth image -> the same GeometryOutput as the encoders.

RGB-D robots skip the learned encoder: the depth image (registered to the RGB image, same size and
intrinsics) becomes a metric point map through the camera model, then is moved to the model grid
with the same transform as the encoders' preprocessing, so downstream code cannot tell them apart.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..core.camera import CameraModel
from ..core.focal import PixelTransform
from .contract import GeometryOutput, check_batch
from .preprocess import GridConfig, model_grid_transform

DEPTH_ENCODINGS = ("16UC1", "32FC1")


def depth_image_to_meters(data: np.ndarray, encoding: str) -> np.ndarray:
    """ROS depth image -> (H, W) float32 metres; 0, NaN and inf become NaN (no measurement).

    16UC1: uint16 millimetres (0 = none). 32FC1: float32 metres.
    """
    arr = np.asarray(data)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise ValueError(f"depth image must be (H, W), got shape {arr.shape}")
    if encoding == "16UC1":
        if arr.dtype != np.uint16:
            raise ValueError(f"16UC1 depth must be uint16 millimetres, got {arr.dtype}")
        metres = arr.astype(np.float32) * np.float32(1e-3)
    elif encoding == "32FC1":
        if arr.dtype != np.float32:
            raise ValueError(f"32FC1 depth must be float32 metres, got {arr.dtype}")
        metres = arr.astype(np.float32, copy=True)
    else:
        raise ValueError(f"depth encoding must be one of {DEPTH_ENCODINGS}, got {encoding!r}")
    metres[~np.isfinite(metres) | (metres <= 0)] = np.nan
    return metres


class DepthGeometry:
    """GeometryEncoder-like source for registered depth.

    grid: the model grid to land on (e.g. the compact encoder's config); None keeps the source grid.
    min_depth / max_depth (m): readings outside are invalid.
    """

    backend = "depth"
    device = "cpu"

    def __init__(self, grid: GridConfig | None = None, *, min_depth: float = 0.05,
                 max_depth: float = 50.0) -> None:
        self.grid = grid
        self.min_depth = float(min_depth)
        self.max_depth = float(max_depth)

    def transform_for(self, camera: CameraModel) -> PixelTransform:
        if self.grid is None:
            return PixelTransform.scale(1.0, 1.0, camera.width, camera.height)
        return model_grid_transform(camera, self.grid)

    def encode(self, images: Sequence[np.ndarray], cameras: Sequence[CameraModel],
               depths: Sequence[np.ndarray] | None = None, *, encoding: str = "32FC1") -> GeometryOutput:
        """depths: one registered depth image per camera, raw in `encoding` (16UC1 mm or 32FC1 m)."""
        check_batch(images, cameras)
        if depths is None or len(depths) != len(cameras):
            raise ValueError(f"need one depth image per camera: {len(cameras)} cameras, "
                             f"{0 if depths is None else len(depths)} depth images")
        pts, masks, transforms = [], [], []
        for i, (cam, raw) in enumerate(zip(cameras, depths)):
            metres = depth_image_to_meters(raw, encoding)
            if metres.shape != (cam.height, cam.width):
                raise ValueError(f"depth image {i} is {metres.shape[1]}x{metres.shape[0]} but the RGB "
                                 f"image/camera is {cam.width}x{cam.height}; register depth to the RGB image")
            points, mask = cam.depth_to_points(metres, min_depth=self.min_depth, max_depth=self.max_depth)
            t = self.transform_for(cam)
            if not t.identity:
                # nearest: a depth edge must not produce points floating between two surfaces
                points = t.apply_image(points.astype(np.float32), interpolation="nearest", fill=np.nan)
                mask = t.apply_image(mask.astype(np.uint8), interpolation="nearest").astype(bool)
            mask &= np.all(np.isfinite(points), axis=-1)
            pts.append(points.astype(np.float32))
            masks.append(mask)
            transforms.append(t)
        sizes = {p.shape for p in pts}
        if len(sizes) != 1:
            raise ValueError(f"items land on different grids {sorted(sizes)}; pass grid= or encode separately")
        return GeometryOutput(points=np.stack(pts), mask=np.stack(masks), features=None,
                              transforms=transforms, backend=self.backend)

    def close(self) -> None:
        """Nothing to free (kept for the GeometryEncoder protocol)."""
