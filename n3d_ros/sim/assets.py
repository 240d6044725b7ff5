"""Object kinds of the synthetic world, built from three primitive shapes, and their colours.

Every kind is a recipe: realistic size ranges (metres) and a function that lays out oriented boxes,
vertical cylinders and spheres in the object's own frame: x = width axis, y = depth axis, z = up,
origin at the centre of the footprint on the surface the object stands on. Support surfaces
(table tops, shelf boards) are declared in the same frame so small objects can stand on them.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from ..core.frames import axis_rotation

SHAPES = ("box", "cylinder", "sphere")

# Name -> RGB in 0..1 (display values, no gamma handling). Chosen to stay distinct under shading.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.80, 0.10, 0.10),
    "green": (0.12, 0.60, 0.18),
    "blue": (0.12, 0.25, 0.82),
    "yellow": (0.95, 0.85, 0.10),
    "white": (0.92, 0.92, 0.90),
    "black": (0.08, 0.08, 0.08),
    "orange": (0.95, 0.50, 0.05),
    "purple": (0.50, 0.15, 0.65),
    "brown": (0.45, 0.28, 0.12),
    "gray": (0.50, 0.50, 0.52),
    "pink": (0.95, 0.55, 0.70),
}


@dataclass(frozen=True)
class Primitive:
    """One solid the renderer intersects.

    shape:    "box" (oriented), "cylinder" (axis along the frame's z = up) or "sphere".
    center:   (3,) metres.
    size:     (3,) metres, full extents: box along its own axes; cylinder (2r, 2r, height);
              sphere (2r, 2r, 2r).
    rotation: (3,3) primitive-to-frame rotation (boxes only; cylinders stay vertical, so world
              placement only turns them about z).
    colour:   (3,) RGB 0..1.
    named:    it shows the object's named colour (a lamp's shade, not its gray pole): an object none of whose
              named parts is in view cannot be told by its colour.
    """

    shape: str
    center: np.ndarray
    size: np.ndarray
    rotation: np.ndarray
    colour: np.ndarray
    named: bool = False

    @property
    def radius(self) -> float:
        return float(self.size[0]) / 2.0

    def extreme_points(self) -> np.ndarray:
        """(N, 3) points whose axis-aligned bounds (in this frame, z up) are the primitive's.

        Exact for any horizontal axes because cylinders are vertical and spheres are round.
        """
        c = self.center
        if self.shape == "box":
            signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)],
                             dtype=np.float64)
            return (signs * (self.size / 2.0)) @ self.rotation.T + c
        r = self.radius
        hz = self.size[2] / 2.0
        return c + np.array([[-r, -r, -hz], [r, r, hz]])

    def placed(self, R: np.ndarray, t: np.ndarray) -> "Primitive":
        """This primitive after the rigid motion p -> R p + t (R must keep z vertical for cylinders)."""
        return Primitive(self.shape, R @ self.center + t, self.size, R @ self.rotation, self.colour, self.named)


def box(center, size, colour, rotation=None) -> Primitive:
    return Primitive("box", np.asarray(center, float), np.asarray(size, float),
                     np.eye(3) if rotation is None else np.asarray(rotation, float), np.asarray(colour, float))


def cylinder(x: float, y: float, z0: float, height: float, radius: float, colour) -> Primitive:
    return Primitive("cylinder", np.array([x, y, z0 + height / 2.0]),
                     np.array([2 * radius, 2 * radius, height]), np.eye(3), np.asarray(colour, float))


def sphere(center, radius: float, colour) -> Primitive:
    return Primitive("sphere", np.asarray(center, float), np.full(3, 2.0 * radius), np.eye(3),
                     np.asarray(colour, float))


@dataclass(frozen=True)
class Surface:
    """A horizontal rectangle other objects may stand on, in the object's frame.

    (x0, x1, y0, y1) metres at height z; clearance: the free height above it (inf = open top).
    """

    x0: float
    x1: float
    y0: float
    y1: float
    z: float
    clearance: float = float("inf")


@dataclass(frozen=True)
class Built:
    primitives: list[Primitive]
    surfaces: list[Surface]


def _shade(colour: np.ndarray, factor: float) -> np.ndarray:
    return np.clip(colour * factor, 0.0, 1.0)


# ---------------------------------------------------------------------------- recipes
# Each takes (size (W, D, H) metres, colour (3,), rng) and returns the parts in the object frame.

def _table(s, col, rng) -> Built:
    W, D, H = s
    top_t = rng.uniform(0.03, 0.05)
    leg = rng.uniform(0.04, 0.06)
    legs_col = _shade(col, 0.7)
    parts = [box((0, 0, H - top_t / 2), (W, D, top_t), col)]
    for sx in (-1, 1):
        for sy in (-1, 1):
            parts.append(box((sx * (W / 2 - leg), sy * (D / 2 - leg), (H - top_t) / 2),
                             (leg, leg, H - top_t), legs_col))
    return Built(parts, [Surface(-W / 2, W / 2, -D / 2, D / 2, H)])


def _desk(s, col, rng) -> Built:
    W, D, H = s
    top_t = rng.uniform(0.025, 0.04)
    panel = rng.uniform(0.02, 0.035)
    side_col = _shade(col, 0.8)
    parts = [box((0, 0, H - top_t / 2), (W, D, top_t), col)]
    for sx in (-1, 1):
        parts.append(box((sx * (W / 2 - panel / 2), 0, (H - top_t) / 2), (panel, D, H - top_t), side_col))
    # Modesty panel at the back keeps the desk from looking like a table.
    parts.append(box((0, D / 2 - 0.02, H * 0.55), (W - 2 * panel, 0.015, H * 0.45), side_col))
    return Built(parts, [Surface(-W / 2, W / 2, -D / 2, D / 2, H)])


def _chair(s, col, rng) -> Built:
    W, D, H = s
    seat_h = rng.uniform(0.42, 0.48)
    seat_t = rng.uniform(0.03, 0.06)
    leg = rng.uniform(0.03, 0.045)
    back_t = rng.uniform(0.03, 0.05)
    legs_col = _shade(col, 0.6)
    parts = [box((0, 0, seat_h - seat_t / 2), (W, D, seat_t), col),
             box((0, -D / 2 + back_t / 2, (seat_h + H) / 2), (W, back_t, H - seat_h), col)]
    for sx in (-1, 1):
        for sy in (-1, 1):
            parts.append(box((sx * (W / 2 - leg), sy * (D / 2 - leg), (seat_h - seat_t) / 2),
                             (leg, leg, seat_h - seat_t), legs_col))
    return Built(parts, [])


def _shelf(s, col, rng) -> Built:
    W, D, H = s
    side = rng.uniform(0.02, 0.03)
    board = rng.uniform(0.02, 0.03)
    parts = []
    for sx in (-1, 1):
        parts.append(box((sx * (W / 2 - side / 2), 0, H / 2), (side, D, H), _shade(col, 0.85)))
    inner_w = W - 2 * side
    levels = (rng.uniform(0.05, 0.1), H * rng.uniform(0.45, 0.55), H - board)
    surfaces = []
    for k, z in enumerate(levels):
        parts.append(box((0, 0, z + board / 2), (inner_w, D, board), col))
        top = z + board
        clearance = levels[k + 1] - top if k + 1 < len(levels) else float("inf")
        if k + 1 == len(levels):  # the top surface spans the sides too
            surfaces.append(Surface(-W / 2, W / 2, -D / 2, D / 2, H))
        else:
            surfaces.append(Surface(-inner_w / 2, inner_w / 2, -D / 2, D / 2, top, clearance))
    return Built(parts, surfaces)


def _lamp(s, col, rng) -> Built:
    W, D, H = s
    r_shade = W / 2
    shade_h = rng.uniform(0.22, 0.32)
    base_r = rng.uniform(0.6, 0.85) * r_shade
    base_h = rng.uniform(0.025, 0.04)
    metal = np.array(COLOURS["gray"]) * rng.uniform(0.7, 1.1)
    return Built([cylinder(0, 0, 0, base_h, base_r, metal),
                  cylinder(0, 0, base_h, H - shade_h * 0.5 - base_h, rng.uniform(0.012, 0.02), metal),
                  cylinder(0, 0, H - shade_h, shade_h, r_shade, col)], [])


def _sofa(s, col, rng) -> Built:
    W, D, H = s
    seat_h = rng.uniform(0.38, 0.45)
    back_t = rng.uniform(0.15, 0.25)
    arm_w = rng.uniform(0.12, 0.2)
    arm_h = rng.uniform(0.55, 0.65)
    dark = _shade(col, 0.85)
    return Built([box((0, back_t / 2, seat_h / 2), (W - 2 * arm_w, D - back_t, seat_h), col),
                  box((0, -D / 2 + back_t / 2, H / 2), (W, back_t, H), dark),
                  box((-W / 2 + arm_w / 2, back_t / 2, arm_h / 2), (arm_w, D - back_t, arm_h), dark),
                  box((W / 2 - arm_w / 2, back_t / 2, arm_h / 2), (arm_w, D - back_t, arm_h), dark)], [])


def _bed(s, col, rng) -> Built:
    W, D, H = s
    frame_h = rng.uniform(0.25, 0.35)
    mat_h = rng.uniform(0.15, 0.25)
    head_t = rng.uniform(0.05, 0.08)
    wood = np.array(COLOURS["brown"]) * rng.uniform(0.8, 1.2)
    linen = np.clip(np.array(COLOURS["white"]) * rng.uniform(0.9, 1.05), 0, 1)
    return Built([box((0, head_t / 2, frame_h / 2), (W, D - head_t, frame_h), wood),
                  box((0, head_t / 2 + 0.02, frame_h + mat_h / 2), (W - 0.04, D - head_t - 0.06, mat_h), col),
                  box((0, -D / 2 + head_t / 2, H / 2), (W, head_t, H), wood),
                  box((0, -D / 2 + head_t + 0.25, frame_h + mat_h + 0.05), (W * 0.6, 0.3, 0.1), linen)], [])


def _cabinet(s, col, rng) -> Built:
    W, D, H = s
    knob = _shade(col, 0.5)
    parts = [box((0, 0, H / 2), (W, D, H), col)]
    for sx in (-1, 1):  # two door knobs on the front (+y) face
        parts.append(box((sx * W * 0.1, D / 2 + 0.01, H * 0.7), (0.02, 0.02, 0.06), knob))
    return Built(parts, [Surface(-W / 2, W / 2, -D / 2, D / 2, H)])


def _bin(s, col, rng) -> Built:
    W, D, H = s
    return Built([cylinder(0, 0, 0, H, W / 2, col)], [])


def _mug(s, col, rng) -> Built:
    W, D, H = s
    r = D / 2  # the body is D wide; the handle makes the width W
    handle_w = max(W - D, 0.02)
    return Built([cylinder(0, 0, 0, H, r, col),
                  box((r + handle_w / 2 - 0.002, 0, H * 0.55), (handle_w + 0.004, 0.012, H * 0.6), col)], [])


def _bottle(s, col, rng) -> Built:
    W, D, H = s
    r = W / 2
    body_h = H * rng.uniform(0.6, 0.72)
    neck_r = r * rng.uniform(0.3, 0.45)
    return Built([cylinder(0, 0, 0, body_h, r, col),
                  cylinder(0, 0, body_h, H - body_h, neck_r, col)], [])


def _box(s, col, rng) -> Built:
    W, D, H = s
    return Built([box((0, 0, H / 2), (W, D, H), col)], [Surface(-W / 2, W / 2, -D / 2, D / 2, H)])


def _ball(s, col, rng) -> Built:
    r = s[0] / 2
    return Built([sphere((0, 0, r), r, col)], [])


def _book(s, col, rng) -> Built:
    W, D, H = s
    pages = np.array(COLOURS["white"]) * 0.95
    return Built([box((0, 0, H / 2), (W, D, H), col),
                  box((0.004, 0, H / 2), (W - 0.004, D - 0.008, H * 0.8), pages)], [])


def _laptop(s, col, rng) -> Built:
    # s is (W, D, base thickness); the lid opens about the back edge.
    W, D, t = s
    angle = np.deg2rad(rng.uniform(95.0, 125.0))  # between base and lid
    lid_t = 0.008
    # Closed, the lid lies on the base reaching +y from the hinge; opening turns it about x by the
    # opening angle, so past 90 degrees it leans back. Its local -z face (the screen) faces +y.
    R = axis_rotation(0, angle)
    # Hinge at the back edge (y = -D/2) on top of the base; the lid extends from the hinge.
    hinge = np.array([0.0, -D / 2, t])
    lid_center = hinge + R @ np.array([0.0, D / 2, lid_t / 2])
    screen = np.array([0.05, 0.06, 0.08])
    return Built([box((0, 0, t / 2), (W, D, t), col),
                  box(lid_center, (W, D, lid_t), col, rotation=R),
                  box(hinge + R @ np.array([0.0, D / 2, -0.0005]), (W * 0.9, D * 0.85, 0.001),
                      screen, rotation=R)], [])


def _plant(s, col, rng) -> Built:
    W, D, H = s
    pot_r = W * rng.uniform(0.3, 0.4)
    pot_h = H * rng.uniform(0.3, 0.45)
    leaf_r = min(W / 2, (H - pot_h) / 2 + 0.02)
    foliage = np.array(COLOURS["green"]) * rng.uniform(0.6, 1.0)
    return Built([cylinder(0, 0, 0, pot_h, pot_r, col),
                  sphere((0, 0, H - leaf_r), leaf_r, foliage)], [])


@dataclass(frozen=True)
class KindSpec:
    """A kind of object: its words, size ranges and recipe.

    size_range: ((W lo, hi), (D lo, hi), (H lo, hi)) metres before the recipe (see each recipe).
    small:      may stand on support surfaces (tables, desks, shelf boards, cabinets).
    colours:    names it may take (keys of COLOURS).
    """

    name: str
    plural: str
    size_range: tuple[tuple[float, float], tuple[float, float], tuple[float, float]]
    build: Callable[[np.ndarray, np.ndarray, np.random.Generator], Built]
    small: bool
    colours: tuple[str, ...] = tuple(COLOURS)

    def sample_size(self, rng: np.random.Generator) -> np.ndarray:
        lo = np.array([r[0] for r in self.size_range])
        hi = np.array([r[1] for r in self.size_range])
        s = rng.uniform(lo, hi)
        if self.name in ("ball", "bin", "lamp", "plant"):  # round footprints
            s[1] = s[0]
        if self.name == "ball":
            s[2] = s[0]
        return s


_FURNITURE_COLOURS = ("red", "green", "blue", "yellow", "white", "black", "orange", "purple", "brown",
                      "gray", "pink")

KINDS: dict[str, KindSpec] = {k.name: k for k in (
    KindSpec("table", "tables", ((0.8, 1.6), (0.6, 0.9), (0.70, 0.78)), _table, False, _FURNITURE_COLOURS),
    KindSpec("desk", "desks", ((1.0, 1.6), (0.5, 0.75), (0.72, 0.77)), _desk, False, _FURNITURE_COLOURS),
    KindSpec("chair", "chairs", ((0.4, 0.52), (0.4, 0.52), (0.8, 1.0)), _chair, False, _FURNITURE_COLOURS),
    KindSpec("shelf", "shelves", ((0.6, 1.2), (0.28, 0.4), (1.0, 1.9)), _shelf, False, _FURNITURE_COLOURS),
    KindSpec("lamp", "lamps", ((0.3, 0.45), (0.3, 0.45), (1.3, 1.8)), _lamp, False),
    KindSpec("sofa", "sofas", ((1.5, 2.2), (0.8, 0.95), (0.75, 0.9)), _sofa, False),
    KindSpec("bed", "beds", ((0.9, 1.8), (1.9, 2.1), (0.9, 1.1)), _bed, False),
    KindSpec("cabinet", "cabinets", ((0.4, 1.0), (0.4, 0.6), (0.6, 1.0)), _cabinet, False, _FURNITURE_COLOURS),
    KindSpec("bin", "bins", ((0.24, 0.4), (0.24, 0.4), (0.25, 0.45)), _bin, False),
    KindSpec("mug", "mugs", ((0.09, 0.13), (0.07, 0.1), (0.08, 0.12)), _mug, True),
    KindSpec("bottle", "bottles", ((0.06, 0.09), (0.06, 0.09), (0.18, 0.32)), _bottle, True),
    KindSpec("box", "boxes", ((0.12, 0.45), (0.12, 0.45), (0.08, 0.4)), _box, True),
    KindSpec("ball", "balls", ((0.1, 0.3), (0.1, 0.3), (0.1, 0.3)), _ball, True),
    KindSpec("book", "books", ((0.13, 0.22), (0.18, 0.3), (0.02, 0.06)), _book, True),
    KindSpec("laptop", "laptops", ((0.3, 0.38), (0.21, 0.26), (0.015, 0.022)), _laptop, True,
             ("black", "gray", "white", "blue", "red", "pink")),
    KindSpec("plant", "plants", ((0.2, 0.5), (0.2, 0.5), (0.3, 0.8)), _plant, True),
)}


def build_object(kind: str, colour: str, rng: np.random.Generator) -> tuple[np.ndarray, Built]:
    """Sample a size for `kind` and lay out its parts. Returns (size (W, D, H) sampled, parts)."""
    if kind not in KINDS:
        raise ValueError(f"unknown object kind {kind!r}; expected one of {sorted(KINDS)}")
    if colour not in COLOURS:
        raise ValueError(f"unknown colour {colour!r}; expected one of {sorted(COLOURS)}")
    spec = KINDS[kind]
    size = spec.sample_size(rng)
    jitter = rng.uniform(-0.04, 0.04, 3)
    rgb = np.clip(np.array(COLOURS[colour]) + jitter, 0.0, 1.0)
    built = spec.build(size, rgb, rng)
    return size, Built([replace(p, named=is_shade_of(p.colour, rgb)) for p in built.primitives], built.surfaces)


def is_shade_of(colour: np.ndarray, base: np.ndarray) -> bool:
    """Whether `colour` is `base` or a darker shade of it (`_shade`): the parts that carry an object's colour."""
    f = float(colour @ base) / max(float(base @ base), 1e-12)
    return 0.0 < f <= 1.0 + 1e-9 and bool(np.allclose(_shade(base, f), colour, atol=1e-6))


def tight_bounds(primitives: list[Primitive]) -> tuple[np.ndarray, np.ndarray]:
    """(lo (3,), hi (3,)) axis-aligned bounds of the parts in their common frame."""
    pts = np.concatenate([p.extreme_points() for p in primitives])
    return pts.min(axis=0), pts.max(axis=0)
