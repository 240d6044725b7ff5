"""Surface normals, procedural textures and lighting for the sim renderer (torch, flat pixel sets).

Functions here take only the pixels that hit a given kind of surface, as flat (M, ...) tensors,
so each texture is evaluated only where it is visible.
"""
from __future__ import annotations

import torch

from .world import TEXTURES

_CHECKER, _PLANKS, _NOISE = TEXTURES.index("checker"), TEXTURES.index("planks"), TEXTURES.index("noise")
FLOOR_AO_STRENGTH = 0.45  # how dark the soft contact shadow under a floor object gets
_CAP_TOLERANCE = 1e-4     # metres: a cylinder hit this close to z0/z1 is on a cap


def hash2(i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """Pseudo-random 0..1 per integer lattice point (the classic sin-fract hash)."""
    return torch.frac(torch.sin(i * 127.1 + j * 311.7).abs() * 43758.5453)


def value_noise(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Smooth 0..1 noise with features one unit apart."""
    i, j = torch.floor(u), torch.floor(v)
    fu, fv = u - i, v - j
    fu, fv = fu * fu * (3 - 2 * fu), fv * fv * (3 - 2 * fv)
    a, b = hash2(i, j), hash2(i + 1, j)
    c, e = hash2(i, j + 1), hash2(i + 1, j + 1)
    return (a * (1 - fu) + b * fu) * (1 - fv) + (c * (1 - fu) + e * fu) * fv


def ripple(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Cheap smooth -1..1 pattern (two sines) for surface grain where randomness is not needed."""
    return torch.sin(u * 1.7 + v * 0.9) * torch.sin(v * 2.3 - u * 1.1)


# ---------------------------------------------------------------------------- normals (world)
def box_normals(p: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(M, 3) outward normals of box hits p (M, 3); rows (M, 15) as in raycast."""
    R = rows[:, 6:].reshape(-1, 3, 3)
    local = torch.einsum("mji,mj->mi", R, p - rows[:, :3]) / rows[:, 3:6].clamp_min(1e-6)
    k = local.abs().argmax(dim=-1, keepdim=True)  # the face: the axis where |local| reaches 1
    col = torch.gather(R, 2, k[:, None, :].expand(-1, 3, 1))[..., 0]
    return col * torch.sign(torch.gather(local, 1, k))


def cylinder_normals(p: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    radial = torch.cat([p[:, :2] - rows[:, :2], torch.zeros_like(p[:, :1])], dim=-1)
    zhat = torch.zeros_like(p)
    zhat[:, 2] = 1.0
    top = (p[:, 2:3] - rows[:, 3:4]).abs() < _CAP_TOLERANCE
    bottom = (p[:, 2:3] - rows[:, 2:3]).abs() < _CAP_TOLERANCE
    return torch.where(top, zhat, torch.where(bottom, -zhat, radial))


def sphere_normals(p: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    return p - rows[:, :3]


# ---------------------------------------------------------------------------- albedo
def object_albedo(p: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
    """(M, 3): the part's colour with a slight mottle fixed to the world (moves with nothing)."""
    mottle = ripple(p[:, 0:1] * 19.0 + p[:, 2:3] * 7.0, p[:, 1:2] * 19.0 - p[:, 2:3] * 11.0)
    return colour * (1.0 + 0.07 * mottle)


def plane_albedo(p: torch.Tensor, rows: torch.Tensor, tex: torch.Tensor, colours: torch.Tensor) -> torch.Tensor:
    """(M, 3) colour of room-plane hits p (M, 3): rows (M, 11), tex (M,) texture ids,
    colours (M, 6) = colour_a, colour_b."""
    scale = rows[:, 10:11].clamp_min(1e-3)
    u = (p * rows[:, 4:7]).sum(-1, keepdim=True) / scale
    v = (p * rows[:, 7:10]).sum(-1, keepdim=True) / scale
    mix = torch.zeros_like(u)
    tex = tex[:, None]
    m = tex == _CHECKER
    if bool(m.any()):
        mix = torch.where(m, torch.remainder(torch.floor(u) + torch.floor(v), 2.0), mix)
    m = tex == _PLANKS
    if bool(m.any()):
        plank = torch.floor(u)
        board = torch.floor(v / 6.0 + hash2(plank, -plank) * 6.0)  # staggered board ends
        seam = (torch.frac(u) < 0.04) | (torch.frac(v / 6.0 + hash2(plank, -plank) * 6.0) < 0.01)
        mix = torch.where(m, hash2(plank, board) * (~seam).float(), mix)
    m = tex == _NOISE
    if bool(m.any()):
        mix = torch.where(m, 0.8 * value_noise(u, v) + 0.1 * (1 + ripple(u * 3.1, v * 3.1)), mix)
    albedo = colours[:, :3] * (1 - mix) + colours[:, 3:] * mix
    return albedo * (1.0 + 0.06 * ripple(u * 5.0, v * 5.0))


# ---------------------------------------------------------------------------- light
def lambert(n: torch.Tensor, d: torch.Tensor, light: torch.Tensor, ambient: torch.Tensor) -> torch.Tensor:
    """(M, 1) brightness: ambient + Lambert towards `light` + a little view-facing fill.

    n (M, 3) unit normals facing the camera, d (M, 3) ray directions, light (M, 3), ambient (M, 1).
    """
    lam = (n * light).sum(-1, keepdim=True).clamp_min(0.0)
    view = (n * d).sum(-1, keepdim=True).abs() / d.norm(dim=-1, keepdim=True)
    return ambient + (1 - ambient) * (0.75 * lam + 0.25 * view)


def floor_occlusion(p: torch.Tensor, blobs: torch.Tensor, scene: torch.Tensor) -> torch.Tensor:
    """(M, 1) darkening factor of floor hits p (M, 3) near the footprints of floor objects.

    blobs (B, NO, 3) footprint centre xy + radius per scene (radius 0 = padding); scene (M,)
    which scene each hit belongs to. Loops over the (at most a dozen) blob slots so memory
    stays O(M).
    """
    ao = torch.zeros_like(p[:, :1])
    for k in range(blobs.shape[1]):
        blob = blobs[scene, k]  # (M, 3)
        d2 = ((p[:, :2] - blob[:, :2]) ** 2).sum(-1, keepdim=True)
        r2 = blob[:, 2:3] ** 2
        occl = torch.where(r2 > 0, torch.exp(-1.5 * d2 / r2.clamp_min(1e-6)), torch.zeros_like(r2))
        ao = torch.maximum(ao, occl)
    return 1 - FLOOR_AO_STRENGTH * ao
