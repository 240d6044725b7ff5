"""Batched analytic ray caster (torch): RGB, z-depth, instance ids and normals of sim scenes.

One ray per pixel centre through the pinhole K of each scene's camera (lens distortion, when a
camera has any, comes from CameraModel.ray_directions). Ray directions are scaled so their
optical-frame z is 1: the ray parameter t of a hit IS its z-depth. Intersections run for all
pixels of a chunk against all primitives of one shape at once (boxes by slabs, vertical cylinders
and spheres by quadratics, room planes), batched over scenes with padded primitive arrays; the only
Python loops are over the four shapes and over screen tiles: each tile only tests the primitives
whose projected hull overlaps it (raycast.screen_bounds), which is what makes one CPU frame cheap.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..core.camera import CameraModel
from . import raycast as rc
from . import shading as sh
from .world import TEXTURES, Scene

_SHAPES = ("box", "cylinder", "sphere")  # order = shape id used in the hit buffers; planes are 3


@dataclass(frozen=True)
class RenderedView:
    """One rendered scene as numpy arrays (see RenderOutput for units)."""

    rgb: np.ndarray
    depth: np.ndarray
    instance: np.ndarray
    normals: np.ndarray | None
    named: np.ndarray | None = None


@dataclass(frozen=True)
class RenderOutput:
    """rgb:      (B, H, W, 3) uint8.
    depth:    (B, H, W) float32 metres along the optical axis (z, not ray length); NaN where no
              surface was hit or outside the valid rectangle.
    instance: (B, H, W) int16 object index (SceneObject.index), -1 for room, background, padding.
    normals:  (B, H, W, 3) float32 unit normals facing the camera, optical frame; None unless asked.
    named:    (B, H, W) bool: the pixel shows a part in its object's named colour (Primitive.named); None
              unless asked.
    All on the device the render ran on."""

    rgb: torch.Tensor
    depth: torch.Tensor
    instance: torch.Tensor
    normals: torch.Tensor | None = None
    named: torch.Tensor | None = None

    def numpy(self, i: int) -> RenderedView:
        n = None if self.normals is None else self.normals[i].cpu().numpy()
        named = None if self.named is None else self.named[i].cpu().numpy()
        return RenderedView(self.rgb[i].cpu().numpy(), self.depth[i].cpu().numpy(),
                            self.instance[i].cpu().numpy(), n, named)

    def __len__(self) -> int:
        return int(self.rgb.shape[0])


# ---------------------------------------------------------------------------- packing
def _pad(rows: list[list[np.ndarray]], width: int, fill: float = 0.0) -> np.ndarray:
    """list over scenes of lists of (width,) rows -> (B, Nmax, width) float32, padded with `fill`."""
    n = max((len(r) for r in rows), default=0)
    out = np.full((len(rows), n, width), fill, dtype=np.float32)
    for b, r in enumerate(rows):
        if r:
            out[b, : len(r)] = np.asarray(r, dtype=np.float32).reshape(len(r), width)
    return out


@dataclass
class _Packed:
    """Everything a render needs, as (B, N, ...) float32 tensors (ok = not padding)."""

    origin: torch.Tensor        # (B, 3) camera centre, world
    R_wc: torch.Tensor          # (B, 3, 3) world-from-optical
    box: torch.Tensor           # (B, NB, 3 centre + 3 half size + 9 rotation (row-major))
    cyl: torch.Tensor           # (B, NC, 2 xy + 2 (z0, z1) + 1 radius)
    sph: torch.Tensor           # (B, NS, 3 centre + 1 radius)
    colour: dict[str, torch.Tensor]    # shape -> (B, N, 3)
    inst: dict[str, torch.Tensor]      # shape -> (B, N) long, -2 = padding
    named: dict[str, torch.Tensor]     # shape -> (B, N) bool, Primitive.named
    plane: torch.Tensor         # (B, NP, 3 n + 1 offset + 3 u + 3 v + 1 scale)
    plane_tex: torch.Tensor     # (B, NP) long texture id, -1 = padding
    plane_col: torch.Tensor     # (B, NP, 6) colour_a, colour_b
    floor_blobs: torch.Tensor   # (B, NO, 3) footprint centre xy + radius of floor objects
    light: torch.Tensor         # (B, 3) towards the light, world
    ambient: torch.Tensor       # (B,)
    background: torch.Tensor    # (B, 3)


def _pack(scenes: Sequence[Scene], device: torch.device) -> _Packed:
    rows: dict[str, list[list[np.ndarray]]] = {k: [[] for _ in scenes] for k in ("box", "cylinder", "sphere")}
    cols: dict[str, list[list[np.ndarray]]] = {k: [[] for _ in scenes] for k in rows}
    ids: dict[str, list[list[np.ndarray]]] = {k: [[] for _ in scenes] for k in rows}
    named: dict[str, list[list[np.ndarray]]] = {k: [[] for _ in scenes] for k in rows}
    planes, tex, pcol, blobs = [], [], [], []
    for b, s in enumerate(scenes):
        blob_rows = []
        for o in s.objects:
            for p in o.primitives:
                if p.shape == "box":
                    row = np.concatenate([p.center, p.size / 2, p.rotation.reshape(-1)])
                elif p.shape == "cylinder":
                    hz = p.size[2] / 2
                    row = np.array([p.center[0], p.center[1], p.center[2] - hz, p.center[2] + hz, p.radius])
                else:
                    row = np.array([*p.center, p.radius])
                rows[p.shape][b].append(row)
                cols[p.shape][b].append(p.colour)
                ids[p.shape][b].append(np.array([o.index]))
                named[p.shape][b].append(np.array([float(p.named)]))
            if o.support is None:
                bw = o.box_world
                blob_rows.append(np.array([bw.center[0], bw.center[1],
                                           0.5 * float(np.hypot(bw.size[0], bw.size[2]))]))
        blobs.append(blob_rows)
        planes.append([np.concatenate([pl.normal, [pl.offset], pl.u_axis, pl.v_axis, [pl.scale]])
                       for pl in s.room.planes])
        tex.append([np.array([TEXTURES.index(pl.texture)]) for pl in s.room.planes])
        pcol.append([np.concatenate([pl.colour_a, pl.colour_b]) for pl in s.room.planes])

    def t(a: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.as_tensor(a, device=device).to(dtype)

    width = {"box": 15, "cylinder": 5, "sphere": 4}
    pose = np.stack([s.world_from_camera for s in scenes])
    return _Packed(
        origin=t(pose[:, :3, 3]), R_wc=t(pose[:, :3, :3]),
        box=t(_pad(rows["box"], width["box"])), cyl=t(_pad(rows["cylinder"], width["cylinder"])),
        sph=t(_pad(rows["sphere"], width["sphere"])),
        colour={k: t(_pad(cols[k], 3)) for k in rows},
        inst={k: t(_pad(ids[k], 1, fill=-2)[..., 0], torch.long) for k in rows},
        named={k: t(_pad(named[k], 1)[..., 0], torch.bool) for k in rows},
        plane=t(_pad(planes, 11)), plane_tex=t(_pad(tex, 1, fill=-1)[..., 0], torch.long),
        plane_col=t(_pad(pcol, 6)), floor_blobs=t(_pad(blobs, 3)),
        light=t(np.stack([s.light_dir for s in scenes])),
        ambient=t(np.array([s.ambient for s in scenes])),
        background=t(np.stack([s.background for s in scenes])),
    )


def _ray_directions(cameras: Sequence[CameraModel], device: torch.device) -> torch.Tensor:
    """(B, H*W, 3) optical-frame rays (x/z, y/z, 1) through every pixel centre."""
    H, W = cameras[0].height, cameras[0].width
    if any(c.has_distortion for c in cameras):
        d = np.stack([c.ray_directions().reshape(-1, 3) for c in cameras])
        return torch.as_tensor(d, device=device, dtype=torch.float32)
    K = torch.as_tensor(np.stack([c.K for c in cameras]), device=device, dtype=torch.float64)
    v, u = torch.meshgrid(torch.arange(H, device=device, dtype=torch.float64),
                          torch.arange(W, device=device, dtype=torch.float64), indexing="ij")
    u, v = u.reshape(1, -1), v.reshape(1, -1)
    fx, fy, cx, cy, sk = (K[:, 0, 0:1], K[:, 1, 1:2], K[:, 0, 2:3], K[:, 1, 2:3], K[:, 0, 1:2])
    y = (v - cy) / fy
    x = (u - cx - sk * y) / fx
    return torch.stack([x, y, torch.ones_like(x)], dim=-1).to(torch.float32)


# ---------------------------------------------------------------------------- main
def _check_cameras(scenes: Sequence[Scene], cameras: Sequence[CameraModel] | None) -> list[CameraModel]:
    cams = [s.camera for s in scenes] if cameras is None else list(cameras)
    if len(cams) != len(scenes):
        raise ValueError(f"expected one camera per scene ({len(scenes)}), got {len(cams)}")
    sizes = {(c.width, c.height) for c in cams}
    if len(sizes) != 1:
        raise ValueError(f"all cameras of one render call must share one image size, got {sorted(sizes)}")
    return cams


def _valid_mask(rects, B: int, H: int, W: int, device: torch.device) -> torch.Tensor | None:
    if rects is None:
        return None
    if len(rects) != B:
        raise ValueError(f"expected one valid rectangle (or None) per scene ({B}), got {len(rects)}")
    mask = torch.ones(B, H, W, dtype=torch.bool, device=device)
    for b, r in enumerate(rects):
        if r is None:
            continue
        x0, y0, x1, y1 = (int(round(float(v))) for v in r)
        # A source image larger than the grid (cropped, not padded) gives a rectangle past the edges.
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, W), min(y1, H)
        if not (x0 < x1 and y0 < y1):
            raise ValueError(f"valid rectangle {tuple(r)} does not overlap the {W}x{H} image "
                             f"(expected x0 < x1, y0 < y1, pixels, x1 and y1 exclusive)")
        mask[b] = False
        mask[b, y0:y1, x0:x1] = True
    return mask


def _tiles(H: int, W: int, side: int) -> list[tuple[int, int, int, int]]:
    """(u0, v0, u1, v1) inclusive pixel tiles covering the image, row by row."""
    return [(u, v, min(u + side, W) - 1, min(v + side, H) - 1)
            for v in range(0, H, side) for u in range(0, W, side)]


def _tile_order(tiles: list[tuple[int, int, int, int]], W: int) -> np.ndarray:
    """Pixel indices (v * W + u) listed tile by tile."""
    return np.concatenate([(np.arange(v0, v1 + 1)[:, None] * W + np.arange(u0, u1 + 1)[None, :]).reshape(-1)
                           for u0, v0, u1, v1 in tiles])


@torch.no_grad()
def render(scenes: Sequence[Scene], *, device: str | torch.device = "cpu",
           cameras: Sequence[CameraModel] | None = None,
           valid_rects: Sequence[tuple[int, int, int, int] | None] | None = None,
           normals: bool = False, named: bool = False, tile: int = 64,
           chunk_elements: int = 1 << 23) -> RenderOutput:
    """Render a batch of scenes.

    cameras:        per-scene intrinsics overriding scene.camera (same pose), all one size.
    valid_rects:    per-scene (x0, y0, x1, y1) pixel rectangle (x1, y1 exclusive, clipped to the
                    image) or None; pixels outside are black, depth NaN, instance -1 (letterbox
                    padding).
    normals:        also return camera-facing unit normals (optical frame).
    named:          also return which pixels show a part in its object's named colour.
    tile:           side in pixels of the screen tiles primitives are culled against.
    chunk_elements: bound on B * tile pixels * primitives per intermediate tensor (shrinks tiles).
    """
    if len(scenes) == 0:
        raise ValueError("render needs at least one scene")
    dev = torch.device(device)
    cams = _check_cameras(scenes, cameras)
    B, H, W = len(scenes), cams[0].height, cams[0].width
    HW = H * W
    pk = _pack(scenes, dev)
    dirs_c = _ray_directions(cams, dev)                      # (B, HW, 3) optical frame, z = 1
    dirs = torch.bmm(dirs_c, pk.R_wc.transpose(1, 2))        # (B, HW, 3) world frame
    o = pk.origin
    rows = (pk.box, pk.cyl, pk.sph)
    ok = tuple(pk.inst[k] >= 0 for k in _SHAPES)
    K = torch.as_tensor(np.stack([c.K for c in cams]), device=dev, dtype=torch.float32)
    cull = torch.as_tensor([not c.has_distortion for c in cams], device=dev)
    bounds = tuple(rc.screen_bounds(rc.hull_corners(s, r), v, o, pk.R_wc, K, cull) if r.shape[1] else None
                   for s, (r, v) in enumerate(zip(rows, ok)))
    plane_ok = pk.plane_tex >= 0

    n_max = max(r.shape[1] for r in rows + (pk.plane,))
    side = int(max(8, min(tile, (chunk_elements / (B * max(n_max, 1))) ** 0.5)))
    tiles = _tiles(H, W, side)
    order = torch.as_tensor(_tile_order(tiles, W), device=dev)
    dirs_t = dirs[:, order]                                  # pixels in tile order
    t_buf = torch.empty(B, HW, device=dev)
    shape_buf = torch.empty(B, HW, dtype=torch.long, device=dev)
    idx_buf = torch.empty(B, HW, dtype=torch.long, device=dev)
    start = 0
    for tl in tiles:
        n_pix = (tl[2] - tl[0] + 1) * (tl[3] - tl[1] + 1)
        d = dirs_t[:, start:start + n_pix]
        hits = []
        for s in range(3):
            chosen = rc.select_in_tile(bounds[s], ok[s], tl) if bounds[s] is not None else None
            if chosen is None:
                hits.append((torch.full((B, n_pix), rc.INF, device=dev),
                             torch.zeros(B, n_pix, dtype=torch.long, device=dev)))
                continue
            sel, sel_ok = chosen
            sub = torch.gather(rows[s], 1, sel[..., None].expand(-1, -1, rows[s].shape[2]))
            t, j = rc.HIT_FUNCTIONS[s](o, d, sub, sel_ok)
            hits.append((t, torch.gather(sel, 1, j)))
        hits.append(rc.hit_planes(o, d, pk.plane, plane_ok))
        t, shape = torch.stack([h[0] for h in hits], dim=-1).min(dim=-1)
        t_buf[:, start:start + n_pix] = t
        shape_buf[:, start:start + n_pix] = shape
        idx_buf[:, start:start + n_pix] = torch.gather(torch.stack([h[1] for h in hits], dim=-1), 2,
                                                       shape[..., None])[..., 0]
        start += n_pix
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(HW, device=dev)
    t_img, shape_img, idx_img = t_buf[:, inverse], shape_buf[:, inverse], idx_buf[:, inverse]

    rgb, n_world, inst, named_px = _shade(pk, o, dirs, t_img, shape_img, idx_img)
    hit = torch.isfinite(t_img)
    depth = torch.where(hit, t_img, torch.full_like(t_img, float("nan"))).view(B, H, W)
    out_rgb, out_inst = rgb.view(B, H, W, 3), inst.view(B, H, W)
    out_n = None
    out_named = named_px.view(B, H, W) if named else None
    if normals:
        n_c = torch.bmm(n_world.view(B, HW, 3), pk.R_wc)  # world -> optical (row vectors)
        out_n = torch.where(hit[..., None], n_c, torch.full_like(n_c, float("nan"))).view(B, H, W, 3)
    mask = _valid_mask(valid_rects, B, H, W, dev)
    if mask is not None:
        out_rgb = torch.where(mask[..., None], out_rgb, torch.zeros_like(out_rgb))
        depth = torch.where(mask, depth, torch.full_like(depth, float("nan")))
        out_inst = torch.where(mask, out_inst, torch.full_like(out_inst, -1))
        if out_n is not None:
            out_n = torch.where(mask[..., None], out_n, torch.full_like(out_n, float("nan")))
        if out_named is not None:
            out_named = out_named & mask
    return RenderOutput(out_rgb, depth, out_inst, out_n, out_named)


def _shade(pk: _Packed, o: torch.Tensor, dirs: torch.Tensor, t: torch.Tensor, shape: torch.Tensor,
           idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Colour every pixel from its nearest hit. Inputs (B, HW[, 3]); returns flat
    rgb (B*HW, 3) uint8, world normals (B*HW, 3), instance (B*HW,) int16, named part (B*HW,) bool."""
    B, HW = t.shape
    dev = t.device
    b = torch.arange(B, device=dev).repeat_interleave(HW)
    t, shape, idx, d = t.reshape(-1), shape.reshape(-1), idx.reshape(-1), dirs.reshape(-1, 3)
    hit = torch.isfinite(t)
    p = o[b] + torch.where(hit, t, torch.zeros_like(t))[:, None] * d  # (M, 3) world hit points
    n = torch.zeros_like(p)
    albedo = torch.zeros_like(p)
    inst = torch.full_like(t, -1, dtype=torch.int16)
    named = torch.zeros_like(t, dtype=torch.bool)
    rows = (pk.box, pk.cyl, pk.sph)
    normal_fns = (sh.box_normals, sh.cylinder_normals, sh.sphere_normals)
    for s, key in enumerate(_SHAPES):
        q = torch.nonzero(hit & (shape == s)).squeeze(1)
        if q.numel() == 0:
            continue
        bq, iq = b[q], idx[q]
        n[q] = normal_fns[s](p[q], rows[s][bq, iq])
        albedo[q] = sh.object_albedo(p[q], pk.colour[key][bq, iq])
        inst[q] = pk.inst[key][bq, iq].to(torch.int16)
        named[q] = pk.named[key][bq, iq]
    q = torch.nonzero(hit & (shape == 3)).squeeze(1)
    if q.numel():
        bq, iq = b[q], idx[q]
        prow = pk.plane[bq, iq]
        n[q] = prow[:, :3]
        albedo[q] = sh.plane_albedo(p[q], prow, pk.plane_tex[bq, iq], pk.plane_col[bq, iq])
    n = n / n.norm(dim=-1, keepdim=True).clamp_min(1e-9)
    n = torch.where((n * d).sum(-1, keepdim=True) > 0, -n, n)  # face the camera
    colour = pk.background[b].clone()
    q = torch.nonzero(hit).squeeze(1)
    if q.numel():
        bq = b[q]
        shade = sh.lambert(n[q], d[q], pk.light[bq], pk.ambient[bq][:, None])
        if pk.floor_blobs.shape[1]:
            f = torch.nonzero((shape[q] == 3) & (p[q, 2].abs() < 1e-3)).squeeze(1)
            if f.numel():
                shade[f] = shade[f] * sh.floor_occlusion(p[q[f]], pk.floor_blobs, bq[f])
        colour[q] = (albedo[q] * shade).clamp(0.0, 1.0)
    return (colour * 255.0 + 0.5).to(torch.uint8), n, inst, named
