"""Source image + camera -> the fixed model grid of an encoder (focal normalization + padding).

The image is rescaled so that its focal length becomes the encoder's canonical `f0` (GR3D),
shrunk further only if it would not fit the grid, then padded (centred, no extra scaling) to
exactly (in_width, in_height). The rays of the resulting model-grid camera are an input of the
network, so it always knows the true field of view.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from ..core.camera import CameraModel, check_image, valid_depth
from ..core.focal import PixelTransform, normalize_focal


class GridConfig(Protocol):
    in_width: int   # model grid width, px
    in_height: int  # model grid height, px
    f0: float       # canonical focal length, px


@dataclass(frozen=True)
class ModelInput:
    """One item ready for the network.

    image:     (3, h, w) float32 RGB in [0, 1] on the model grid (0 in the padding).
    rays:      (2, h, w) float32 (x/z, y/z) of every model-grid pixel, distortion removed.
    transform: source pixels -> model-grid pixels.
    camera:    the model-grid camera (focal f0 unless the image had to shrink).
    """

    image: np.ndarray
    rays: np.ndarray
    transform: PixelTransform
    camera: CameraModel


def model_grid_transform(camera: CameraModel, cfg: GridConfig) -> PixelTransform:
    """The source -> model-grid PixelTransform for `camera` (focal normalization, then padding)."""
    sx, sy = cfg.f0 / camera.fx, cfg.f0 / camera.fy
    w, h = camera.width * sx, camera.height * sy
    shrink = min(1.0, cfg.in_width / w, cfg.in_height / h)
    max_long = None
    if shrink < 1.0:
        # floor keeps the rounded normalized size inside the grid on both axes.
        max_long = max(1, int(math.floor(max(w, h) * shrink + 1e-6)))
    norm = normalize_focal(camera, cfg.f0, max_long_side=max_long)
    t = norm.transform
    if t.out_width > cfg.in_width or t.out_height > cfg.in_height:
        raise AssertionError(f"normalized size {t.out_width}x{t.out_height} exceeds the grid")
    pad_x = (cfg.in_width - t.out_width) // 2
    pad_y = (cfg.in_height - t.out_height) // 2
    pad = PixelTransform(1.0, 1.0, float(pad_x), float(pad_y), cfg.in_width, cfg.in_height,
                         t.out_width, t.out_height)
    return t.then(pad)


def prepare_input(image: np.ndarray, camera: CameraModel, cfg: GridConfig) -> ModelInput:
    """(H, W, 3) uint8 RGB of `camera` -> ModelInput on the (cfg.in_width, cfg.in_height) grid."""
    img = check_image(image, camera)
    transform = model_grid_transform(camera, cfg)
    grid_cam = transform.apply_camera(camera)
    resampled = transform.apply_image(img.astype(np.float32), interpolation="linear", fill=0.0)
    chw = np.ascontiguousarray(resampled.transpose(2, 0, 1) / 255.0, dtype=np.float32)
    return ModelInput(image=chw, rays=grid_rays(grid_cam), transform=transform, camera=grid_cam)


_RAY_CACHE: "OrderedDict[tuple, np.ndarray]" = OrderedDict()
_RAY_CACHE_SIZE = 8


def grid_rays(camera: CameraModel) -> np.ndarray:
    """(2, h, w) float32 (x/z, y/z) per pixel of `camera` (valid everywhere, padding included).

    Read-only and cached per camera: a stream keeps one camera, and undistorting every pixel's ray
    again for each frame cost more than the rest of the preprocessing."""
    key = (camera.width, camera.height, camera.distortion_model, camera.K.tobytes(),
           np.asarray(camera.D, dtype=np.float64).tobytes())
    rays = _RAY_CACHE.get(key)
    if rays is None:
        rays = np.ascontiguousarray(camera.ray_directions()[..., :2].transpose(2, 0, 1), dtype=np.float32)
        rays.flags.writeable = False
        _RAY_CACHE[key] = rays
        if len(_RAY_CACHE) > _RAY_CACHE_SIZE:
            _RAY_CACHE.popitem(last=False)
    else:
        _RAY_CACHE.move_to_end(key)
    return rays


def grid_depth_to_points(depth: np.ndarray, camera: CameraModel, *, min_depth: float = 1e-3
                         ) -> tuple[np.ndarray, np.ndarray]:
    """(h, w) z-depth on the model grid -> ((h, w, 3) float32 points, NaN where invalid; (h, w) mask),
    with the cached rays of `camera`."""
    depth = np.asarray(depth, dtype=np.float32)
    mask = valid_depth(depth, min_depth=min_depth)
    z = np.where(mask, depth, np.nan)
    rays = grid_rays(camera)
    return np.stack([rays[0] * z, rays[1] * z, z], axis=-1), mask


def stack_inputs(items: Sequence[ModelInput]) -> tuple[np.ndarray, np.ndarray]:
    """-> ((B, 3, h, w) float32 images, (B, 2, h, w) float32 rays)."""
    return (np.stack([m.image for m in items]), np.stack([m.rays for m in items]))
