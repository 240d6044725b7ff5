"""Procedural indoor scenes: a textured room corner, furniture and clutter, and a random camera.

World frame: x and y horizontal, z up, metres, the floor is z = 0 and the room spans
[0, Lx] x [0, Ly]; the back wall is y = Ly, side walls x = 0 and x = Lx (one may be missing); the
front (y = 0) is open and the camera stands near it looking into the room (+y).
Everything is drawn from `numpy.random.Generator(seed)`, so one seed gives one scene.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from ..core.box import Box3D
from ..core.camera import CameraModel
from ..core.frames import Frame
from .assets import COLOURS, KINDS, Primitive, Surface, build_object, tight_bounds

CAMERA_FRAME_ID = "sim_camera_optical_frame"
TEXTURES = ("plain", "checker", "planks", "noise")
_UP_WORLD = np.array([0.0, 0.0, 1.0])


@dataclass(frozen=True)
class WorldConfig:
    """Ranges the scene sampler draws from (metres, pixels, degrees as named)."""

    min_objects: int = 3
    max_objects: int = 12
    kinds: tuple[str, ...] = tuple(KINDS)
    colours: tuple[str, ...] = tuple(COLOURS)
    small_fraction: float = 0.5            # share of objects drawn from the small kinds
    support_probability: float = 0.6      # a small object goes on a table/shelf when one has room
    wall_probability: float = 0.5         # big furniture backs onto the back wall
    room_size: tuple[float, float] = (3.5, 7.0)      # metres, each of Lx, Ly
    three_walls_probability: float = 0.7  # else one side wall is missing (a room corner)
    resolutions: tuple[tuple[int, int], ...] = ((320, 240), (640, 480), (848, 480), (640, 360), (1280, 720))
    fx_range: tuple[float, float] = (250.0, 1000.0)  # pixels
    hfov_range_deg: tuple[float, float] = (45.0, 105.0)  # keeps fx sensible for every resolution
    anisotropy_probability: float = 0.2
    max_anisotropy: float = 0.03          # fy = fx * (1 + U(-a, a))
    principal_offset: float = 0.04        # fraction of width/height the principal point may move
    camera_height: tuple[float, float] = (0.3, 1.8)  # metres above the floor
    pitch_deg: tuple[float, float] = (-35.0, 5.0)    # negative looks down
    roll_deg: tuple[float, float] = (-8.0, 8.0)
    heading_jitter_deg: float = 20.0      # about the room's depth axis
    min_gap: float = 0.05                 # metres between footprints (and to walls)
    camera_clearance: float = 0.4         # metres from the camera to any floor object's footprint
    placement_tries: int = 40

    def __post_init__(self) -> None:
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(f"need 1 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}")
        unknown = [k for k in self.kinds if k not in KINDS]
        if unknown:
            raise ValueError(f"unknown kinds {unknown}; expected names from {sorted(KINDS)}")
        bad = [c for c in self.colours if c not in COLOURS]
        if bad:
            raise ValueError(f"unknown colours {bad}; expected names from {sorted(COLOURS)}")


@dataclass(frozen=True)
class Plane:
    """A textured infinite plane n . p = offset (world frame), n pointing into the room.

    u_axis, v_axis: (3,) in-plane texture axes; scale: metres per texture cell (checker square,
    plank width, noise feature).
    """

    normal: np.ndarray
    offset: float
    u_axis: np.ndarray
    v_axis: np.ndarray
    texture: str
    colour_a: np.ndarray
    colour_b: np.ndarray
    scale: float


@dataclass(frozen=True)
class Room:
    size: tuple[float, float]        # (Lx, Ly) metres
    planes: tuple[Plane, ...]        # floor first, then walls


@dataclass(frozen=True)
class SceneObject:
    """One object of a scene.

    box:        tight box of its primitives in the camera OPTICAL frame. Box axes: 0 = the object's
                width axis, 1 = down (so `size` is (width, height, depth) and the box is yaw-only
                about y for a level camera), 2 = its depth axis.
    box_world:  the same box (same axes and size) in the world frame (z up). Box3D has no world
                frame tag, so it carries Frame.BODY; use its centre/corners/rotation, not to_frame.
    primitives: parts in the world frame.
    support:    index of the object it stands on, None on the floor.
    """

    index: int
    kind: str
    colour: str
    label: str
    box: Box3D
    box_world: Box3D
    primitives: tuple[Primitive, ...]
    support: int | None = None


@dataclass(frozen=True)
class Scene:
    """A sampled world and the camera looking at it.

    world_from_camera: (4,4) pose of the optical frame in the world.
    up:                (3,) unit up vector in the optical frame (what an IMU would report).
    light_dir:         (3,) unit vector towards the light, world frame; ambient in 0..1.
    """

    seed: int
    camera: CameraModel
    world_from_camera: np.ndarray
    up: np.ndarray
    objects: tuple[SceneObject, ...]
    room: Room
    light_dir: np.ndarray
    ambient: float
    background: np.ndarray = field(default_factory=lambda: np.array([0.55, 0.62, 0.70]))

    def with_camera(self, camera: CameraModel) -> "Scene":
        """Same world and camera pose, other intrinsics/resolution (e.g. the model's input grid)."""
        if not isinstance(camera, CameraModel):
            raise TypeError(f"camera must be a CameraModel, got {type(camera).__name__}")
        return replace(self, camera=camera)

    @property
    def camera_position(self) -> np.ndarray:
        return self.world_from_camera[:3, 3]

    @property
    def labels(self) -> list[str]:
        return [o.label for o in self.objects]


# ---------------------------------------------------------------------------- camera
def _sample_camera(rng: np.random.Generator, cfg: WorldConfig) -> CameraModel:
    W, H = cfg.resolutions[int(rng.integers(len(cfg.resolutions)))]
    # fx range intersected with what keeps the horizontal field of view plausible at this width.
    lo_fov, hi_fov = np.deg2rad(cfg.hfov_range_deg)
    f_lo = max(cfg.fx_range[0], (W / 2) / math.tan(hi_fov / 2))
    f_hi = min(cfg.fx_range[1], (W / 2) / math.tan(lo_fov / 2))
    if f_lo > f_hi:
        f_lo, f_hi = (W / 2) / math.tan(hi_fov / 2), (W / 2) / math.tan(lo_fov / 2)
    fx = float(rng.uniform(f_lo, f_hi))
    fy = fx
    if rng.random() < cfg.anisotropy_probability:
        fy = fx * (1.0 + float(rng.uniform(-cfg.max_anisotropy, cfg.max_anisotropy)))
    cx = (W - 1) / 2 + float(rng.uniform(-1, 1)) * cfg.principal_offset * W
    cy = (H - 1) / 2 + float(rng.uniform(-1, 1)) * cfg.principal_offset * H
    return CameraModel.from_intrinsics(fx, fy, cx, cy, W, H, frame_id=CAMERA_FRAME_ID)


def camera_rotation(heading: float, pitch: float, roll: float) -> np.ndarray:
    """(3,3) world-from-optical rotation: looking along `heading` (radians from world +x towards +y),
    tilted up by `pitch` (negative = down) and rolled by `roll` about the optical axis."""
    f = np.array([math.cos(pitch) * math.cos(heading), math.cos(pitch) * math.sin(heading), math.sin(pitch)])
    r = np.array([math.sin(heading), -math.cos(heading), 0.0])
    d = np.cross(f, r)
    c, s = math.cos(roll), math.sin(roll)
    r2, d2 = c * r + s * d, -s * r + c * d  # turn the image plane about f
    return np.stack([r2, d2, f], axis=1)


# ---------------------------------------------------------------------------- room
def _plane_texture(rng: np.random.Generator, floor: bool) -> tuple[str, np.ndarray, np.ndarray, float]:
    texture = str(rng.choice(TEXTURES[1:] if floor else TEXTURES, p=None))
    base = rng.uniform(0.25, 0.9, 3) if not floor else rng.uniform(0.15, 0.75, 3)
    base = 0.5 * base + 0.5 * base.mean()  # desaturate: rooms are mostly muted
    other = np.clip(base * rng.uniform(0.6, 0.85) if texture != "checker" else 1.0 - base * 0.8, 0, 1)
    scale = {"plain": 1.0, "checker": rng.uniform(0.25, 0.6), "planks": rng.uniform(0.12, 0.25),
             "noise": rng.uniform(0.15, 0.6)}[texture]
    return texture, base, other, float(scale)


def _sample_room(rng: np.random.Generator, cfg: WorldConfig) -> Room:
    Lx, Ly = (float(v) for v in rng.uniform(*cfg.room_size, 2))
    planes = []
    tex, a, b, s = _plane_texture(rng, floor=True)
    planes.append(Plane(np.array([0.0, 0, 1]), 0.0, np.array([1.0, 0, 0]), np.array([0.0, 1, 0]), tex, a, b, s))
    # Walls share one look (a painted room); the back wall carries the texture axes along x.
    tex, a, b, s = _plane_texture(rng, floor=False)
    walls = [(np.array([0.0, -1, 0]), -Ly, np.array([1.0, 0, 0])),
             (np.array([1.0, 0, 0]), 0.0, np.array([0.0, 1, 0])),
             (np.array([-1.0, 0, 0]), -Lx, np.array([0.0, 1, 0]))]
    if rng.random() >= cfg.three_walls_probability:
        del walls[1 + int(rng.integers(2))]
    for n, off, u in walls:
        planes.append(Plane(n, off, u, _UP_WORLD.copy(), tex, a, b, s))
    return Room((Lx, Ly), tuple(planes))


# ---------------------------------------------------------------------------- footprints
@dataclass(frozen=True)
class _Footprint:
    """Oriented rectangle on a horizontal surface: centre (2,), half extents (2,), yaw."""

    center: np.ndarray
    half: np.ndarray
    yaw: float
    axes: np.ndarray = field(init=False, repr=False)   # (2,2) rows: the rectangle's x and y axes
    radius: float = field(init=False, repr=False)      # circumscribed circle, for quick rejects

    def __post_init__(self) -> None:
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        object.__setattr__(self, "axes", np.array([[c, s], [-s, c]]))
        object.__setattr__(self, "radius", float(math.hypot(self.half[0], self.half[1])))

    def corners(self) -> np.ndarray:
        signs = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64)
        return self.center + (signs * self.half) @ self.axes


def _overlap(a: _Footprint, b: _Footprint, margin: float) -> bool:
    """Separating-axis test of two oriented rectangles grown by `margin` each side."""
    d = b.center - a.center
    if math.hypot(d[0], d[1]) > a.radius + b.radius + 3 * margin:
        return False
    ha, hb = a.half + margin, b.half + margin
    for axis in (a.axes[0], a.axes[1], b.axes[0], b.axes[1]):
        ra = np.abs(a.axes @ axis) @ ha
        rb = np.abs(b.axes @ axis) @ hb
        if abs(d @ axis) > ra + rb:
            return False
    return True


def _point_rect_distance(p: np.ndarray, fp: _Footprint) -> float:
    local = fp.axes @ (p - fp.center)
    excess = np.maximum(np.abs(local) - fp.half, 0.0)
    return float(np.linalg.norm(excess))


# ---------------------------------------------------------------------------- objects
@dataclass
class _Placed:
    kind: str
    colour: str
    parts_local: list[Primitive]
    lo: np.ndarray                 # (3,) tight bounds in the object frame
    hi: np.ndarray
    R: np.ndarray                  # (3,3) world-from-object (yaw about z)
    t: np.ndarray                  # (3,) object origin in the world
    footprint: _Footprint
    support: int | None
    surfaces: list[Surface]
    on_surface: list[list[_Footprint]] = field(default_factory=list)  # per surface, what stands on it
    surface_of: int | None = None  # which surface of the support it stands on


def _rot_z(yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _footprint(lo: np.ndarray, hi: np.ndarray, R: np.ndarray, t: np.ndarray, yaw: float) -> _Footprint:
    centre_local = (lo + hi) / 2
    centre = R @ centre_local + t
    return _Footprint(centre[:2].copy(), (hi[:2] - lo[:2]) / 2, yaw)


class _Sampler:
    """Places objects one by one, rejecting overlaps and placements the camera cannot see."""

    def __init__(self, rng: np.random.Generator, cfg: WorldConfig, room: Room, camera: CameraModel,
                 R_wc: np.ndarray, cam_pos: np.ndarray) -> None:
        self.rng, self.cfg, self.room, self.camera = rng, cfg, room, camera
        self.R_cw, self.cam_pos = R_wc.T, cam_pos
        self.placed: list[_Placed] = []

    def _in_view(self, centre_world: np.ndarray) -> bool:
        p = self.R_cw @ (centre_world - self.cam_pos)
        if p[2] < 0.3:
            return False
        uv = self.camera.project(p)
        W, H = self.camera.width, self.camera.height
        return bool(0.05 * W <= uv[0] <= 0.95 * W and 0.05 * H <= uv[1] <= 0.95 * H)

    def _inside_room(self, fp: _Footprint) -> bool:
        Lx, Ly = self.room.size
        m = self.cfg.min_gap
        c = fp.corners()
        lo, hi = c.min(axis=0), c.max(axis=0)
        # Side walls bound placement even when one is missing, so objects stay in the room.
        return bool(lo[0] >= m and hi[0] <= Lx - m and lo[1] >= m and hi[1] <= Ly - m)

    def place_on_floor(self, kind: str, colour: str) -> bool:
        rng, cfg = self.rng, self.cfg
        size, built = build_object(kind, colour, rng)
        lo, hi = tight_bounds(built.primitives)
        Lx, Ly = self.room.size
        for _ in range(cfg.placement_tries):
            if kind in ("shelf", "bed", "sofa", "cabinet", "desk") and rng.random() < cfg.wall_probability:
                yaw = math.pi  # the object's back (-y) against the back wall
                R = _rot_z(yaw)
                x = float(rng.uniform(0, Lx))
                # Turned by pi, world y = t_y - local y: the back (local lo_y) reaches t_y - lo_y.
                y = Ly - cfg.min_gap - 1e-6 + lo[1]
                t = np.array([x, y, 0.0])
            else:
                yaw = float(rng.uniform(-math.pi, math.pi))
                R = _rot_z(yaw)
                t = np.array([rng.uniform(0, Lx), rng.uniform(0, Ly), 0.0])
            fp = _footprint(lo, hi, R, t, yaw)
            if not self._inside_room(fp):
                continue
            if _point_rect_distance(self.cam_pos[:2], fp) < cfg.camera_clearance:
                continue
            if any(p.support is None and _overlap(fp, p.footprint, cfg.min_gap / 2) for p in self.placed):
                continue
            if not self._in_view(R @ ((lo + hi) / 2) + t):
                continue
            self.placed.append(_Placed(kind, colour, built.primitives, lo, hi, R, t, fp, None,
                                       built.surfaces, [[] for _ in built.surfaces]))
            return True
        return False

    def place_on_support(self, kind: str, colour: str) -> bool:
        rng, cfg = self.rng, self.cfg
        options = [(i, k) for i, p in enumerate(self.placed) for k in range(len(p.surfaces))]
        if not options:
            return False
        size, built = build_object(kind, colour, rng)
        lo, hi = tight_bounds(built.primitives)
        height = hi[2] - lo[2]
        for _ in range(cfg.placement_tries):
            i, k = options[int(rng.integers(len(options)))]
            parent = self.placed[i]
            surf = parent.surfaces[k]
            if height > surf.clearance - 0.02:
                continue
            yaw_local = float(rng.uniform(-math.pi, math.pi))
            R_local = _rot_z(yaw_local)
            # Footprint in the parent's frame must lie on the surface.
            x = float(rng.uniform(surf.x0, surf.x1))
            y = float(rng.uniform(surf.y0, surf.y1))
            t_local = np.array([x, y, surf.z])
            fp_local = _footprint(lo, hi, R_local, t_local, yaw_local)
            c = fp_local.corners()
            lo_c, hi_c = c.min(axis=0), c.max(axis=0)
            if not (lo_c[0] >= surf.x0 + 0.01 and hi_c[0] <= surf.x1 - 0.01
                    and lo_c[1] >= surf.y0 + 0.01 and hi_c[1] <= surf.y1 - 0.01):
                continue
            if any(_overlap(fp_local, other, 0.01) for other in parent.on_surface[k]):
                continue
            R = parent.R @ R_local
            t = parent.R @ t_local + parent.t
            yaw = math.atan2(R[1, 0], R[0, 0])
            if not self._in_view(R @ ((lo + hi) / 2) + t):
                continue
            parent.on_surface[k].append(fp_local)
            self.placed.append(_Placed(kind, colour, built.primitives, lo, hi, R, t,
                                       _footprint(lo, hi, R, t, yaw), i, built.surfaces,
                                       [[] for _ in built.surfaces], k))
            return True
        return False


def object_from_parts(index: int, kind: str, colour: str, parts: list[Primitive], yaw: float,
                      origin: np.ndarray, world_from_camera: np.ndarray, *,
                      support: int | None = None) -> SceneObject:
    """A SceneObject from parts given in its own frame (x width, y depth, z up), turned by `yaw`
    (radians about world z) and moved to `origin` (3,) in the world. Its box is the tight box of
    the parts in that frame. Also the way to hand-build scenes for tests."""
    R = _rot_z(yaw)
    t = np.asarray(origin, dtype=np.float64)
    lo, hi = tight_bounds(parts)
    ext = hi - lo
    a = R[:, 0]
    down = -_UP_WORLD
    R_box_w = np.stack([a, down, np.cross(a, down)], axis=1)
    size = np.array([ext[0], ext[2], ext[1]])
    centre_w = R @ ((lo + hi) / 2) + t
    R_wc, cam_pos = world_from_camera[:3, :3], world_from_camera[:3, 3]
    box_world = Box3D(centre_w, size, R_box_w, Frame.BODY)
    box = Box3D(R_wc.T @ (centre_w - cam_pos), size, R_wc.T @ R_box_w, Frame.OPTICAL)
    prims = tuple(q.placed(R, t) for q in parts)
    return SceneObject(index, kind, colour, f"{colour} {kind}", box, box_world, prims, support)


def _scene_object(index: int, p: _Placed, world_from_camera: np.ndarray) -> SceneObject:
    yaw = math.atan2(p.R[1, 0], p.R[0, 0])
    return object_from_parts(index, p.kind, p.colour, p.parts_local, yaw, p.t, world_from_camera,
                             support=p.support)


def generate_scene(seed: int, config: WorldConfig = WorldConfig()) -> Scene:
    """Sample the scene of `seed` (same seed and config -> same scene)."""
    rng = np.random.default_rng(seed)
    cfg = config
    room = _sample_room(rng, cfg)
    camera = _sample_camera(rng, cfg)
    Lx, Ly = room.size
    cam_pos = np.array([rng.uniform(0.3, 0.7) * Lx, rng.uniform(0.05, 0.2) * Ly,
                        rng.uniform(*cfg.camera_height)])
    # Aim at a point in the middle of the room (so most of it is in view), then clamp the angles.
    target = np.array([rng.uniform(0.3, 0.7) * Lx, rng.uniform(0.45, 0.85) * Ly, rng.uniform(0.0, 0.6)])
    d = target - cam_pos
    jitter = math.radians(cfg.heading_jitter_deg)
    heading = float(np.clip(math.atan2(d[1], d[0]), math.pi / 2 - jitter, math.pi / 2 + jitter))
    pitch = float(np.clip(math.degrees(math.atan2(d[2], math.hypot(d[0], d[1]))), *cfg.pitch_deg))
    pitch += float(rng.uniform(-3.0, 3.0))
    pitch = float(np.clip(pitch, *cfg.pitch_deg))
    R_wc = camera_rotation(heading, math.radians(pitch), math.radians(rng.uniform(*cfg.roll_deg)))
    T = np.eye(4)
    T[:3, :3] = R_wc
    T[:3, 3] = cam_pos

    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    small = [k for k in cfg.kinds if KINDS[k].small]
    large = [k for k in cfg.kinds if not KINDS[k].small]
    kinds = []
    for _ in range(n):
        pool = small if (small and (not large or rng.random() < cfg.small_fraction)) else large
        kinds.append(str(pool[int(rng.integers(len(pool)))]))
    kinds.sort(key=lambda k: KINDS[k].small)  # furniture first, so supports exist for clutter

    sampler = _Sampler(rng, cfg, room, camera, R_wc, cam_pos)
    for kind in kinds:
        allowed = [c for c in KINDS[kind].colours if c in cfg.colours] or list(cfg.colours)
        colour = str(allowed[int(rng.integers(len(allowed)))])
        if KINDS[kind].small and rng.random() < cfg.support_probability and sampler.place_on_support(kind, colour):
            continue
        sampler.place_on_floor(kind, colour)
    # Crowded rooms can reject whole draws: top up with small objects so min_objects holds.
    for _ in range(4 * cfg.min_objects):
        if len(sampler.placed) >= cfg.min_objects or not small:
            break
        kind = str(small[int(rng.integers(len(small)))])
        sampler.place_on_floor(kind, str(cfg.colours[int(rng.integers(len(cfg.colours)))]))

    objects = tuple(_scene_object(i, p, T) for i, p in enumerate(sampler.placed))
    up = R_wc.T @ _UP_WORLD
    az, el = rng.uniform(-math.pi, math.pi), math.radians(rng.uniform(35, 75))
    light = np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
    return Scene(seed=int(seed), camera=camera, world_from_camera=T, up=up / np.linalg.norm(up),
                 objects=objects, room=room, light_dir=light, ambient=float(rng.uniform(0.3, 0.5)),
                 background=rng.uniform(0.45, 0.75, 3))
