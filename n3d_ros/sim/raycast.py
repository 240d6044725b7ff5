"""Ray-primitive intersection kernels and screen-space culling for the sim renderer (torch).

Every kernel takes o (B, 3) ray origins (the camera centre, world frame) and d (B, P, 3) ray
directions scaled so their optical-frame z is 1 (so t is z-depth), plus padded primitive rows
(B, N, C) with a validity mask (B, N), and returns (t (B, P), idx (B, P)): the nearest hit's ray
parameter (inf = none) and which row it was. Work is (B, P, N) tensors; no Python loop over
pixels or primitives.
"""
from __future__ import annotations

import torch

EPS = 1e-4  # metres: hits closer than this to the camera are ignored
INF = float("inf")
_NEAR = 0.01  # metres: primitives reaching closer than this to the image plane are never culled

# Row layouts (C): box = 3 centre + 3 half size + 9 rotation (row-major, box-to-world);
# cylinder = 2 xy + z0 + z1 + radius; sphere = 3 centre + radius; plane = 3 normal + offset +
# 3 u axis + 3 v axis + scale.
BOX_C, CYL_C, SPH_C, PLANE_C = 15, 5, 4, 11


def _nearest(t: torch.Tensor, ok: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.where(ok, t, torch.full_like(t, INF))
    return t.min(dim=-1)


def hit_boxes(o: torch.Tensor, d: torch.Tensor, box: torch.Tensor, valid: torch.Tensor):
    """Oriented boxes by the slab method in each box's own axes."""
    c, h, R = box[..., :3], box[..., 3:6], box[..., 6:].reshape(*box.shape[:2], 3, 3)
    o_local = torch.einsum("bnji,bnj->bni", R, o[:, None, :] - c)  # (B, N, 3) = R^T (o - c)
    t_near = t_far = None
    for k in range(3):
        inv = 1.0 / torch.bmm(d, R[..., k].transpose(1, 2))  # (B, P, N): 1 / (d . box axis k)
        t1 = (-h[..., k] - o_local[..., k])[:, None, :] * inv
        t2 = (h[..., k] - o_local[..., k])[:, None, :] * inv
        lo, hi = torch.minimum(t1, t2), torch.maximum(t1, t2)
        t_near = lo if t_near is None else torch.maximum(t_near, lo)
        t_far = hi if t_far is None else torch.minimum(t_far, hi)
    return _nearest(t_near, (t_near <= t_far) & (t_near > EPS) & valid[:, None, :])


def hit_cylinders(o: torch.Tensor, d: torch.Tensor, cyl: torch.Tensor, valid: torch.Tensor):
    """Vertical (world z) capped cylinders: side by the 2D quadratic, caps by planes."""
    ox = (o[:, 0:1] - cyl[..., 0])[:, None, :]  # (B, 1, N)
    oy = (o[:, 1:2] - cyl[..., 1])[:, None, :]
    z0, z1, r = cyl[..., 2][:, None, :], cyl[..., 3][:, None, :], cyl[..., 4][:, None, :]
    dx, dy, dz = d[..., 0:1], d[..., 1:2], d[..., 2:3]  # (B, P, 1)
    oz = o[:, None, 2:3]
    a = (dx * dx + dy * dy).clamp_min(1e-12)
    bh = dx * ox + dy * oy
    # disc = bh^2 - a (|o_xy|^2 - r^2), written as a (r^2 - |o_xy - (bh/a) d_xy|^2): the
    # squared distance of the axis from the ray, free of float32 cancellation far away.
    s = bh / a
    qx, qy = ox - s * dx, oy - s * dy
    disc = a * (r * r - (qx * qx + qy * qy))
    # Only the entering root: a ray starting inside the infinite cylinder can enter through a cap only.
    t_side = (-bh - disc.clamp_min(0).sqrt()) / a
    z = oz + t_side * dz
    side = (disc >= 0) & (t_side > EPS) & (z >= z0) & (z <= z1)
    t = torch.where(side, t_side, torch.full_like(t_side, INF))
    dz_safe = torch.where(dz.abs() < 1e-12, torch.full_like(dz, 1e-12), dz)
    for zc in (z1, z0):
        tc = (zc - oz) / dz_safe
        px, py = ox + tc * dx, oy + tc * dy
        t = torch.where((tc > EPS) & (px * px + py * py <= r * r) & (tc < t), tc, t)
    return _nearest(t, valid[:, None, :])


def hit_spheres(o: torch.Tensor, d: torch.Tensor, sph: torch.Tensor, valid: torch.Tensor):
    oc = o[:, None, :] - sph[..., :3]  # (B, N, 3)
    r = sph[..., 3]
    a = (d * d).sum(-1, keepdim=True)  # (B, P, 1)
    bh = torch.bmm(d, oc.transpose(1, 2))  # (B, P, N)
    # disc = a (r^2 - |oc - (bh/a) d|^2), as for cylinders: no cancellation between two large terms.
    q = oc[:, None, :, :] - (bh / a)[..., None] * d[:, :, None, :]  # (B, P, N, 3)
    disc = a * (r[:, None, :] ** 2 - (q * q).sum(-1))
    t = (-bh - disc.clamp_min(0).sqrt()) / a
    return _nearest(t, (disc >= 0) & (t > EPS) & valid[:, None, :])


def hit_planes(o: torch.Tensor, d: torch.Tensor, plane: torch.Tensor, valid: torch.Tensor):
    n, off = plane[..., :3], plane[..., 3]
    nd = torch.bmm(d, n.transpose(1, 2))  # (B, P, N)
    no = (n * o[:, None, :]).sum(-1)  # (B, N)
    t = (off - no)[:, None, :] / torch.where(nd.abs() < 1e-12, torch.full_like(nd, 1e-12), nd)
    return _nearest(t, (t > EPS) & valid[:, None, :])


HIT_FUNCTIONS = (hit_boxes, hit_cylinders, hit_spheres)


# ---------------------------------------------------------------------------- culling
_SIGNS = torch.tensor([[sx, sy, sz] for sx in (-1.0, 1.0) for sy in (-1.0, 1.0) for sz in (-1.0, 1.0)])


def hull_corners(shape: int, rows: torch.Tensor) -> torch.Tensor:
    """(B, N, 8, 3) world corners of a box enclosing each primitive (0 box, 1 cylinder, 2 sphere)."""
    signs = _SIGNS.to(rows.device, rows.dtype)
    if shape == 0:
        R = rows[..., 6:].reshape(*rows.shape[:2], 3, 3)
        local = signs * rows[..., None, 3:6]  # (B, N, 8, 3)
        return rows[..., None, :3] + torch.einsum("bnij,bnkj->bnki", R, local)
    if shape == 1:
        centre = torch.stack([rows[..., 0], rows[..., 1], (rows[..., 2] + rows[..., 3]) / 2], dim=-1)
        half = torch.stack([rows[..., 4], rows[..., 4], (rows[..., 3] - rows[..., 2]) / 2], dim=-1)
    else:
        centre, half = rows[..., :3], rows[..., 3:4].expand(*rows.shape[:2], 3)
    return centre[..., None, :] + signs * half[..., None, :]


def screen_bounds(corners: torch.Tensor, valid: torch.Tensor, origin: torch.Tensor, R_wc: torch.Tensor,
                  K: torch.Tensor, cull: torch.Tensor) -> torch.Tensor:
    """(B, N, 4) pixel bounds (u0, v0, u1, v1) of primitives from their hull corners.

    A pinhole projection of a convex hull lies inside the bounds of its projected corners, so
    tiles outside cannot see the primitive. Primitives reaching behind the near plane, and all
    primitives of scenes with cull False (lens distortion), cover the whole image; padding rows
    cover nothing.
    """
    B, N = corners.shape[:2]
    pc = torch.einsum("bnkj,bji->bnki", corners - origin[:, None, None, :], R_wc)  # optical frame
    z = pc[..., 2]
    zs = z.clamp_min(_NEAR)
    xn, yn = pc[..., 0] / zs, pc[..., 1] / zs
    fx, fy, cx, cy, sk = (K[:, None, None, 0, 0], K[:, None, None, 1, 1], K[:, None, None, 0, 2],
                          K[:, None, None, 1, 2], K[:, None, None, 0, 1])
    u = fx * xn + sk * yn + cx
    v = fy * yn + cy
    bounds = torch.stack([u.amin(-1), v.amin(-1), u.amax(-1), v.amax(-1)], dim=-1)
    full = (z.amin(-1) < _NEAR) | ~cull[:, None]
    everything = torch.tensor([-INF, -INF, INF, INF], device=corners.device, dtype=corners.dtype)
    nothing = torch.tensor([INF, INF, -INF, -INF], device=corners.device, dtype=corners.dtype)
    bounds = torch.where(full[..., None], everything, bounds)
    return torch.where(valid[..., None], bounds, nothing)


def select_in_tile(bounds: torch.Tensor, valid: torch.Tensor, tile: tuple[int, int, int, int]
                   ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Rows whose bounds overlap pixel tile (u0, v0, u1, v1) (inclusive pixel centres).

    Returns (sel (B, K) row indices, ok (B, K) bool), K = the most any scene needs; None if none.
    """
    u0, v0, u1, v1 = tile
    m = (valid & (bounds[..., 0] <= u1 + 1) & (bounds[..., 2] >= u0 - 1)
         & (bounds[..., 1] <= v1 + 1) & (bounds[..., 3] >= v0 - 1))
    k = int(m.sum(dim=1).max().item()) if m.numel() else 0
    if k == 0:
        return None
    sel = torch.argsort((~m).to(torch.int8), dim=1, stable=True)[:, :k]
    return sel, torch.gather(m, 1, sel)
