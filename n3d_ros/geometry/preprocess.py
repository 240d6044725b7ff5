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
from typing import TYPE_CHECKING, Protocol, Sequence

import numpy as np

from ..core.camera import CameraModel, check_image, valid_depth
from ..core.frames import mirror_image_vectors
from ..core.focal import PixelTransform, ResampleTaps, normalize_focal, resample_taps

if TYPE_CHECKING:
    import torch


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


def stacked_inputs(images: Sequence[np.ndarray], cameras: Sequence[CameraModel], cfg: GridConfig, *,
                   mirrored: bool = False) -> tuple[np.ndarray, np.ndarray, list[PixelTransform]]:
    """The host path of an encoder batch: ((B, 3, h, w) float32 images, (B, 2, h, w) float32 rays,
    transforms); with `mirrored`, B more after them: the mirror images (columns reversed, the rays'
    x negated). `DevicePreprocess` is the same on a torch device."""
    items = [prepare_input(img, cam, cfg) for img, cam in zip(images, cameras)]
    image, rays = stack_inputs(items)
    transforms = [m.transform for m in items]
    if mirrored:
        image = np.ascontiguousarray(np.concatenate([image, image[..., ::-1]]))
        rays = np.ascontiguousarray(np.concatenate([rays, mirror_image_vectors(rays, channel_axis=1)]))
        transforms = transforms + transforms
    return image, rays, transforms


def _lru(cache: OrderedDict, key, make, size: int):
    """cache[key], made by `make()` on a miss; the least recently used entry goes beyond `size`."""
    value = cache.get(key)
    if value is None:
        value = cache[key] = make()
        if len(cache) > size:
            cache.popitem(last=False)
    else:
        cache.move_to_end(key)
    return value


_RAY_CACHE: "OrderedDict[tuple, np.ndarray]" = OrderedDict()
_RAY_CACHE_SIZE = 8


def _camera_key(camera: CameraModel) -> tuple:
    return (camera.width, camera.height, camera.distortion_model, camera.K.tobytes(),
            np.asarray(camera.D, dtype=np.float64).tobytes())


def _read_only_rays(camera: CameraModel) -> np.ndarray:
    rays = np.ascontiguousarray(camera.ray_directions()[..., :2].transpose(2, 0, 1), dtype=np.float32)
    rays.flags.writeable = False
    return rays


def grid_rays(camera: CameraModel) -> np.ndarray:
    """(2, h, w) float32 (x/z, y/z) per pixel of `camera` (valid everywhere, padding included).

    Read-only and cached per camera: a stream keeps one camera, and undistorting every pixel's ray
    again for each frame cost more than the rest of the preprocessing."""
    return _lru(_RAY_CACHE, _camera_key(camera), lambda: _read_only_rays(camera), _RAY_CACHE_SIZE)


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


# --------------------------------------------------------------------------- on a torch device
def mirror_vector_maps(x: "torch.Tensor") -> "torch.Tensor":
    """(B, C, h, w) per-pixel optical-frame vectors (points, or rays as (x/z, y/z)) of the mirror image:
    columns reversed and x negated (`core.frames.mirror_image_vectors`, on a torch device)."""
    import torch
    return torch.cat([-x[:, :1], x[:, 1:]], dim=1).flip(-1)


@dataclass(frozen=True)
class DeviceTaps:
    """A `ResampleTaps` on a torch device (index tables int64, weights float32)."""
    rows: "torch.Tensor"
    row_weights: "torch.Tensor"
    cols: "torch.Tensor"
    col_weights: "torch.Tensor"
    valid: "torch.Tensor"

    @classmethod
    def of(cls, taps: ResampleTaps, device) -> "DeviceTaps":
        import torch
        return cls(*(torch.as_tensor(a, dtype=dt).to(device) for a, dt in (
            (taps.rows, torch.int64), (taps.row_weights, torch.float32), (taps.cols, torch.int64),
            (taps.col_weights, torch.float32), (taps.valid, torch.bool))))


def resample_tensor(image: "torch.Tensor", taps: DeviceTaps, *, fill: float = 0.0) -> "torch.Tensor":
    """(H, W, C) float tensor -> (h, w, C) float32 on the taps' grid: `core.focal.resample` of a float32
    image, computed where the tensor lives (rows first, as there)."""
    import torch
    rows = torch.einsum("htwc,ht->hwc", image.float()[taps.rows], taps.row_weights)
    out = torch.einsum("hwtc,wt->hwc", rows[:, taps.cols], taps.col_weights)
    return torch.where(taps.valid[..., None], out, torch.full((), fill, dtype=out.dtype, device=out.device))


class DevicePreprocess:
    """`stacked_inputs` on a torch device: each uint8 image goes up as it is (a
    quarter of the float32 model-grid image and rays it replaces) and is resampled there, with the
    taps of its transform and the rays of its grid camera cached on the device (a stream keeps one
    camera). Same arithmetic as the host path (`core.focal.resample_taps`), float32."""

    def __init__(self, cfg: GridConfig, device, *, cache_size: int = 8) -> None:
        self.cfg, self.device, self.cache_size = cfg, device, cache_size
        self._taps: "OrderedDict[PixelTransform, DeviceTaps]" = OrderedDict()
        self._rays: "OrderedDict[tuple, torch.Tensor]" = OrderedDict()

    def __call__(self, images: Sequence[np.ndarray], cameras: Sequence[CameraModel], *, mirrored: bool = False
                 ) -> tuple["torch.Tensor", "torch.Tensor", list[PixelTransform]]:
        """-> ((B, 3, h, w) float32 images in [0, 1], (B, 2, h, w) float32 rays, transforms); with
        `mirrored`, B more after them: the mirror images (columns reversed, the rays' x negated)."""
        import torch
        cfg = self.cfg
        grids, rays, transforms = [], [], []
        for img, cam in zip(images, cameras):
            img = check_image(img, cam)
            t = model_grid_transform(cam, cfg)
            grid_cam = t.apply_camera(cam)
            taps = _lru(self._taps, t, lambda: DeviceTaps.of(
                resample_taps(t.inverse(), cfg.in_width, cfg.in_height, interpolation="linear"), self.device),
                self.cache_size)
            # torch warns on read-only arrays (a ROS message's buffer, a cached frame): those are copied.
            src = torch.from_numpy(img if img.flags.writeable and img.flags.c_contiguous else img.copy())
            src = src.to(self.device)
            grids.append(resample_tensor(src, taps).permute(2, 0, 1) / 255.0)
            rays.append(_lru(self._rays, _camera_key(grid_cam),
                             lambda: torch.from_numpy(np.array(grid_rays(grid_cam))).to(self.device), self.cache_size))
            transforms.append(t)
        image, ray = torch.stack(grids), torch.stack(rays)
        if mirrored:
            image, ray = torch.cat([image, image.flip(-1)]), torch.cat([ray, mirror_vector_maps(ray)])
            transforms = transforms + transforms
        return image.contiguous(), ray.contiguous(), transforms
