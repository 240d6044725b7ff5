"""MoGe-2 exported to ONNX as a user-supplied geometry encoder.

The exported graph is MoGe's raw forward pass: `image` (B, 3, H, W) RGB in [0, 1] (+ `num_tokens`
int64 scalar) -> `points` (affine-invariant: true points = s * (x, y, z + shift)), `mask`,
`metric_scale` (s), `normal` (ignored). MoGe's own Python `infer()` also estimates the focal
length; a robot knows it, so only the z-shift is solved here: with known rays (x/z, y/z) = (rx, ry),
x = rx * (z + shift) and y = ry * (z + shift), i.e. each valid pixel votes shift = (x - rx z) / rx
with weight |rx| (and likewise for y). The weighted median of the votes is the exact L1 fit,
robust to outliers and edges.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..core.camera import CameraModel
from ..core.focal import PixelTransform, letterbox
from .backends import OrtRunner, Runner, default_cache_dir, resolve_device, select_backend
from .contract import GeometryOutput, check_batch
from .preprocess import grid_rays

LOG = logging.getLogger("n3d_ros.geometry")
_MAX_FIT_PIXELS = 4096  # votes per image for the shift fit: plenty for a median, cheap


def weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """Minimizer of sum w_i |v_i - m| (lower weighted median). Empty input -> NaN."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    ok = np.isfinite(v) & np.isfinite(w) & (w > 0)
    v, w = v[ok], w[ok]
    if v.size == 0:
        return float("nan")
    order = np.argsort(v)
    v, w = v[order], w[order]
    cum = np.cumsum(w)
    return float(v[np.searchsorted(cum, 0.5 * cum[-1])])


def fit_z_shift(points: np.ndarray, rays: np.ndarray, mask: np.ndarray, *,
                max_pixels: int = _MAX_FIT_PIXELS) -> float:
    """L1 fit of the z-shift that makes affine points (h, w, 3) agree with known rays (h, w, 2).

    Returns NaN when no valid pixel votes. Pixels are subsampled on a regular stride (deterministic).
    """
    valid = mask & np.all(np.isfinite(points), axis=-1)
    idx = np.flatnonzero(valid)
    if idx.size == 0:
        return float("nan")
    if idx.size > max_pixels:
        idx = idx[:: int(np.ceil(idx.size / max_pixels))]
    p = points.reshape(-1, 3)[idx].astype(np.float64)
    r = rays.reshape(-1, 2)[idx].astype(np.float64)
    votes, weights = [], []
    for k in (0, 1):
        b = r[:, k]
        usable = np.abs(b) > 1e-6
        votes.append((p[usable, k] - b[usable] * p[usable, 2]) / b[usable])
        weights.append(np.abs(b[usable]))
    return weighted_median(np.concatenate(votes), np.concatenate(weights))


def recover_metric_points(points: np.ndarray, mask_prob: np.ndarray, metric_scale: float,
                          rays: np.ndarray, *, threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray, float]:
    """Affine-invariant MoGe points (h, w, 3) -> (metric points (h, w, 3) float32 metres optical
    (NaN where invalid), mask (h, w) bool, fitted shift)."""
    mask = (mask_prob > threshold) & np.all(np.isfinite(points), axis=-1)
    shift = fit_z_shift(points, rays, mask)
    if not np.isfinite(shift) or not np.isfinite(metric_scale) or metric_scale <= 0:
        empty = np.full(points.shape, np.nan, dtype=np.float32)
        return empty, np.zeros(mask.shape, dtype=bool), shift
    metric = points.astype(np.float64).copy()
    metric[..., 2] += shift
    metric *= float(metric_scale)
    mask &= metric[..., 2] > 0
    metric[~mask] = np.nan
    return metric.astype(np.float32), mask, shift


class MoGeOnnxEncoder:
    """GeometryEncoder running a MoGe-2 ONNX export (ONNX Runtime or TensorRT).

    num_tokens: fed when the graph has a `num_tokens` input (MoGe's resolution level).
    long_side:  resize the image (aspect kept) so its long side is this many px before the
                graph; None keeps the source size. Static-shape graphs are letterboxed to their size.
    """

    def __init__(self, onnx_path: str | os.PathLike[str], *, num_tokens: int = 1800,
                 long_side: int | None = None, backend: str = "auto", device: str = "auto",
                 precision: str = "fp32", cache_dir: str | os.PathLike[str] | None = None,
                 mask_threshold: float = 0.5) -> None:
        import onnx

        path = Path(onnx_path)
        if not path.is_file() or path.suffix != ".onnx":
            raise ValueError(f"expected a MoGe-2 .onnx file, got {path}")
        graph = onnx.load(str(path), load_external_data=False).graph
        inits = {i.name for i in graph.initializer}
        inputs = {i.name: [d.dim_value if d.HasField("dim_value") else None
                           for d in i.type.tensor_type.shape.dim]
                  for i in graph.input if i.name not in inits}
        outputs = {o.name for o in graph.output}
        if "image" not in inputs or not {"points", "mask", "metric_scale"} <= outputs:
            raise ValueError(f"{path.name}: expected input 'image' and outputs points, mask, metric_scale "
                             f"(a MoGe-2 export); got inputs {sorted(inputs)}, outputs {sorted(outputs)}")
        dims = inputs["image"]
        self.static_hw = (dims[2], dims[3]) if len(dims) == 4 and dims[2] and dims[3] else None
        self.has_num_tokens = "num_tokens" in inputs
        self.num_tokens = int(num_tokens)
        if long_side is not None and long_side <= 0:
            raise ValueError(f"long_side must be a positive number of px or None, got {long_side}")
        self.long_side = long_side
        self.mask_threshold = float(mask_threshold)
        self.device = resolve_device(device)
        choice = select_backend(backend, device=self.device, has_onnx=True, has_torch_module=False)
        self.runner: Runner
        if choice.name == "tensorrt":
            from .backend_trt import TensorRTRunner

            self.runner = TensorRTRunner(path, cache_dir=Path(cache_dir or default_cache_dir()) / "engines",
                                         precision=precision, device=self.device)
        else:
            ort_cache = Path(cache_dir or default_cache_dir()) / "ort_trt"
            self.runner = OrtRunner(path, device=self.device, precision=precision, cache_dir=ort_cache)
        self.backend = self.runner.label
        LOG.info("MoGe geometry backend: %s (%s)", self.backend, choice.reason)

    def grid_transform(self, camera: CameraModel) -> PixelTransform:
        w, h = camera.width, camera.height
        if self.static_hw is not None:
            return letterbox(w, h, self.static_hw[1], self.static_hw[0])
        if self.long_side is not None:
            s = self.long_side / max(w, h)
            return PixelTransform.resize_to(w, h, max(1, round(w * s)), max(1, round(h * s)))
        return PixelTransform.scale(1.0, 1.0, w, h)

    def encode(self, images: Sequence[np.ndarray], cameras: Sequence[CameraModel]) -> GeometryOutput:
        check_batch(images, cameras)
        transforms = [self.grid_transform(c) for c in cameras]
        sizes = {(t.out_width, t.out_height) for t in transforms}
        if len(sizes) != 1:
            raise ValueError(f"one batch must map to one model size, got {sorted(sizes)}; encode separately")
        grid_cams = [t.apply_camera(c) for t, c in zip(transforms, cameras)]
        batch = np.stack([t.apply_image(np.asarray(img, dtype=np.float32), interpolation="linear")
                          .transpose(2, 0, 1) / 255.0 for t, img in zip(transforms, images)]).astype(np.float32)
        feeds: dict[str, np.ndarray] = {"image": batch}
        if self.has_num_tokens:
            feeds["num_tokens"] = np.array(self.num_tokens, dtype=np.int64)
        if self.runner.max_batch == 1 and len(images) > 1:
            runs = [self.runner.run({**feeds, "image": batch[i:i + 1]}) for i in range(len(images))]
            out = {k: np.concatenate([np.atleast_1d(r[k]) for r in runs]) for k in ("points", "mask", "metric_scale")}
        else:
            out = self.runner.run(feeds)
        B, _, h, w = batch.shape
        points = _channels_last(out["points"], B, h, w)
        mask_prob = np.asarray(out["mask"], dtype=np.float32).reshape(B, h, w)
        if mask_prob.size and (mask_prob.min() < 0 or mask_prob.max() > 1):
            mask_prob = 1.0 / (1.0 + np.exp(-mask_prob))  # the graph gave logits
        scales = np.asarray(out["metric_scale"], dtype=np.float64).reshape(B)
        pts_out, masks, shifts = [], [], []
        for i in range(B):
            rays = grid_rays(grid_cams[i]).transpose(1, 2, 0)  # (h, w, 2)
            p, m, s = recover_metric_points(points[i], mask_prob[i], float(scales[i]), rays,
                                            threshold=self.mask_threshold)
            pts_out.append(p)
            masks.append(m)
            shifts.append(s)
        return GeometryOutput(points=np.stack(pts_out), mask=np.stack(masks), features=None,
                              transforms=transforms, backend=self.backend,
                              extras={"shift": np.array(shifts), "metric_scale": scales})

    def close(self) -> None:
        self.runner.close()


def _channels_last(points: np.ndarray, B: int, h: int, w: int) -> np.ndarray:
    p = np.asarray(points, dtype=np.float32)
    if p.shape == (B, h, w, 3):
        return p
    if p.shape == (B, 3, h, w):
        return p.transpose(0, 2, 3, 1)
    raise ValueError(f"MoGe points must be (B, H, W, 3) or (B, 3, H, W) at the input size "
                     f"({B}, {h}, {w}), got {p.shape}")
