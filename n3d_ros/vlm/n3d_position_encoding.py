"""N3D-VLM's 3D sinusoidal position encoding of the point cloud, hooked into Qwen2.5-VL's vision tower.

The encoding (model_formats.md section 1, checked against the reference `PositionEmbeddingSine3D`):
  1. invalid points of the NORMALIZED cloud are replaced by the mean of the valid ones;
  2. the (H, W, 3) cloud is adaptive-average-pooled to the patch grid (grid_h, grid_w);
  3. c = mean of the three per-axis means of the pooled grid; q = round((pooled - c) / 0.001);
  4. per axis, F = width // 3 features: dim_t[i] = 10000 ** (2 * floor(i / 2) / F), slot i holds
     sin(q / dim_t[i]) for even i and cos(q / dim_t[i]) for odd i; x, y, z concatenated (3F
     values), zero-padded to the vision width (1280 for the real model -> 1278 + 2 zeros);
  5. rows in ROW-MAJOR patch order are added to the vision hidden states after the last block,
     just before `visual.merger`.
At that point Qwen2.5-VL's hidden states are in window-permuted 2x2-merge order, so with
`align=False` (what the published checkpoint was trained with) PE row k lands on hidden row k,
i.e. on a different patch; `align=True` reorders the PE so each row meets its own patch, for
models trained here. Pooling and the sinusoid run in float32 like the reference.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

QUANT_STEP = 0.001     # normalized-cloud units per quantization step
TEMPERATURE = 10000.0


def fill_invalid(points: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(H, W, 3) normalized cloud with invalid points replaced by the mean of the valid ones."""
    if not bool(valid.any()):
        raise ValueError("the point map has no valid point; the position encoding needs some")
    mean = points[valid].mean(dim=0)
    return torch.where(valid[..., None], points, mean)


def pool_to_grid(points: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
    """(H, W, 3) -> (grid_h, grid_w, 3) adaptive average pool, float32."""
    x = points.permute(2, 0, 1)[None].float()
    return F.adaptive_avg_pool2d(x, (int(grid_h), int(grid_w)))[0].permute(1, 2, 0)


def quantize_grid(pooled: torch.Tensor, step: float = QUANT_STEP) -> torch.Tensor:
    """(gh, gw, 3) pooled cloud -> (gh, gw, 3) integer-valued float32 q about the mean centre."""
    c = pooled.reshape(-1, 3).mean(dim=0).mean()
    return torch.round((pooled - c) / step)


def sinusoid_pe(q: torch.Tensor, width: int, temperature: float = TEMPERATURE) -> torch.Tensor:
    """(N, 3) quantized coordinates -> (N, width) float32 encoding (see module docstring)."""
    feats = int(width) // 3
    if feats < 1:
        raise ValueError(f"width must be at least 3, got {width}")
    i = torch.arange(feats, dtype=torch.float32, device=q.device)
    dim_t = temperature ** (2 * torch.div(i, 2, rounding_mode="floor") / feats)
    ang = q.float()[:, :, None] / dim_t  # (N, 3, F)
    even = (torch.arange(feats, device=q.device) % 2 == 0)
    per_axis = torch.where(even, ang.sin(), ang.cos())
    out = torch.zeros(q.shape[0], int(width), dtype=torch.float32, device=q.device)
    out[:, : 3 * feats] = per_axis.reshape(q.shape[0], 3 * feats)
    return out


def point_cloud_pe(points: torch.Tensor, valid: torch.Tensor, grid_h: int, grid_w: int,
                   width: int) -> torch.Tensor:
    """(H, W, 3) normalized N3D cloud + (H, W) bool -> (grid_h * grid_w, width), row-major."""
    pooled = pool_to_grid(fill_invalid(points.float(), valid.bool()), grid_h, grid_w)
    return sinusoid_pe(quantize_grid(pooled).reshape(-1, 3), width)


def merger_input_order(grid_thw: Sequence[Sequence[int]], *, merge_size: int, window_size: int,
                       patch_size: int) -> np.ndarray:
    """(seq,) int64: for each hidden row at the merger input, its ROW-MAJOR patch index.

    Rows of several images are concatenated (image i's indices offset by the patches before it).
    Derivation: the processor emits patches in 2x2-merge order (merge blocks row-major, the 4
    patches of a block row-major); the vision tower then reorders merge blocks window by window
    (windows of window_size // merge_size // patch_size blocks, row-major, padding dropped).
    """
    out = []
    offset = 0
    per_window = window_size // merge_size // patch_size
    for t, h, w in (tuple(int(v) for v in g) for g in grid_thw):
        if t != 1:
            raise ValueError(f"only still images (t == 1) are supported, got grid {(t, h, w)}")
        bh, bw = h // merge_size, w // merge_size
        # row-major patch index of each merge-order row
        blocks = np.arange(h * w).reshape(bh, merge_size, bw, merge_size).transpose(0, 2, 1, 3)
        merge_rows = blocks.reshape(bh * bw, merge_size * merge_size)
        win_rows = []
        for wy in range(0, bh, per_window):
            for wx in range(0, bw, per_window):
                for by in range(wy, min(wy + per_window, bh)):
                    for bx in range(wx, min(wx + per_window, bw)):
                        win_rows.append(by * bw + bx)
        out.append(merge_rows[np.asarray(win_rows)].reshape(-1) + offset)
        offset += h * w
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


@dataclass
class _PendingCloud:
    points: torch.Tensor  # (H, W, 3) float32 normalized N3D cloud
    valid: torch.Tensor   # (H, W) bool


class N3DPositionEncoder:
    """Adds the point-cloud PE to Qwen2.5-VL vision hidden states through module hooks.

    Usage: `enc = N3DPositionEncoder(model, align=False)`; before each forward that carries
    images, `enc.set_point_maps([(points_norm, valid), ...])` (one per image, in order); the
    hooks use them for every vision forward until replaced. `enc.remove()` detaches.
    A vision forward without point maps raises: an N3D checkpoint must never run without its PE.
    """

    def __init__(self, model: Any, *, align: bool = False) -> None:
        visual = _find_visual(model)
        self.align = bool(align)
        self.width = int(visual.config.hidden_size)
        self._cfg = visual.config
        self._clouds: list[_PendingCloud] | None = None
        self._grid: list[tuple[int, int, int]] | None = None
        self._handles = [
            visual.register_forward_pre_hook(self._capture_grid, with_kwargs=True),
            visual.merger.register_forward_pre_hook(self._add_pe),
        ]
        self.last_pe: torch.Tensor | None = None  # (seq, width) as added, for inspection

    def set_point_maps(self, clouds: Sequence[tuple[np.ndarray | torch.Tensor,
                                                    np.ndarray | torch.Tensor]]) -> None:
        """clouds: per image ((H, W, 3) normalized N3D points, (H, W) bool validity)."""
        pending = []
        for k, (pts, valid) in enumerate(clouds):
            p = torch.as_tensor(np.asarray(pts, dtype=np.float32))
            v = torch.as_tensor(np.asarray(valid, dtype=bool))
            if p.ndim != 3 or p.shape[-1] != 3 or v.shape != p.shape[:2]:
                raise ValueError(f"cloud {k}: expected (H, W, 3) points and (H, W) mask, got "
                                 f"{tuple(p.shape)} and {tuple(v.shape)}")
            pending.append(_PendingCloud(p, v))
        self._clouds = pending

    def clear(self) -> None:
        self._clouds = None

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _capture_grid(self, module: Any, args: tuple, kwargs: dict) -> None:
        grid = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
        if grid is None:
            raise ValueError("vision tower called without grid_thw; cannot place the 3D PE")
        self._grid = [tuple(int(x) for x in g) for g in grid.tolist()]

    def _add_pe(self, module: Any, args: tuple) -> tuple:
        hidden = args[0]
        if self._clouds is None or self._grid is None:
            raise RuntimeError("N3D position encoding: no point map set for this image; call "
                               "set_point_maps() before running the model on images")
        if len(self._clouds) != len(self._grid):
            raise ValueError(f"{len(self._grid)} images in the batch but {len(self._clouds)} "
                             "point maps were set")
        pes = [point_cloud_pe(c.points.to(hidden.device), c.valid.to(hidden.device), h, w,
                              self.width) for c, (_, h, w) in zip(self._clouds, self._grid)]
        pe = torch.cat(pes, dim=0)
        if pe.shape[0] != hidden.shape[0]:
            raise ValueError(f"PE has {pe.shape[0]} rows, vision hidden states {hidden.shape[0]}")
        if self.align:
            order = merger_input_order(self._grid, merge_size=self._cfg.spatial_merge_size,
                                       window_size=self._cfg.window_size,
                                       patch_size=self._cfg.patch_size)
            pe = pe[torch.as_tensor(order, device=pe.device)]
        self.last_pe = pe
        # The reference adds a float32 PE in place into the (b)f16 states: sum in float32, round once.
        return ((hidden.float() + pe).to(hidden.dtype),) + tuple(args[1:])


def _find_visual(model: Any) -> Any:
    for path in ("model.visual", "visual"):
        obj = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if obj is not None and hasattr(obj, "merger"):
            return obj
    raise TypeError(f"{type(model).__name__} has no Qwen2.5-VL vision tower with a merger")
