"""Answer a `QuerySpec` from grounded 3D boxes with exact arithmetic, and show the working.

Every number in an `Answer` comes from the boxes; `Answer.reasoning` is a trace of the arithmetic
(centres, vectors, norms, angles, the comparison that decided). All boxes are first converted to
the OPTICAL frame (x right, y down, z forward, metres, origin at the camera centre).

Which objects are used (`objects` argument):
    pairwise kinds: objects[0] is A, objects[1] is B (more are ignored);
    single kinds:   objects[0] is A;
    set kinds (DETECT, COUNT, CLOSEST, FARTHEST, LARGEST, SMALLEST): every object is a candidate.
Too few objects raise `ReasoningError` (a ValueError) naming what is missing; COUNT and DETECT
accept zero objects (the answer is then "none").

`up` is the measured up vector in the optical frame (e.g. from an IMU); default (0, -1, 0), the
level camera's up. From it: up component u = c . up; the level forward f = the optical z axis
projected on the plane orthogonal to up (the optical x axis is used if the camera looks straight
up or down), and the level right r = f x up.

Semantics:
    LOCATE             A's centre; value = metres from the camera to A's centre (text gives x, up, z).
    DISTANCE           |c_B - c_A| (centres); the trace adds the closest-surface distance.
    GAP                closest-surface distance of the solid boxes; 0 if they touch, overlap, or are
                       closer than CONTACT_M (a box cannot resolve a finer gap: a mug on a table).
    DISTANCE_TO_CAMERA |c_A|; the trace adds z (along the optical axis) and the nearest surface.
    HEIGHT             extent along `up` of `Box3D.gravity_aligned(up)`.
    WIDTH              the horizontal extent of that box whose axis is most parallel to the camera's
                       x axis (ties: the box's heading axis); LENGTH is the other horizontal extent.
    LEFT_RIGHT         x_A < x_B -> "left", else "right" (as seen in the image).
    ABOVE_BELOW        u_A > u_B -> "above", else "below".
    FRONT_BEHIND       z_A > z_B -> "behind", else "in front of".
    CLOCK              d = c_B - c_A; dx = d . r, dz = d . f; angle = atan2(dx, dz) in degrees;
                       hour = floor(angle / 30 + 0.5) mod 12, 0 -> 12 (halves round clockwise).
                       Standing at A facing the camera's forward direction, B is at `hour` o'clock.
    COUNT              number of objects (int); DETECT: number of objects, the text lists them.
    CLOSEST/FARTHEST   by |c| (centre to camera); LARGEST/SMALLEST by volume; value = winner's label;
                       ties go to the first object.
    IS_LEFT_OF ...     bool from the same comparisons (strict); the trace gives the deciding
                       difference in metres. IS_TALLER/IS_SHORTER compare HEIGHTs.
Numbers in sentences: metres with 2 decimals below 10 m and 1 decimal from 10 m (no centimetres;
the exact float is in `Answer.value`). Deterministic: no randomness, no dict-order dependence.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from .box import Box3D
from .box_distance import closest_points, point_box_distance
from .frames import UP, Frame
from .objects import GroundedObject
from .question_parser import pluralize
from .questions import PAIRWISE_KINDS, SINGLE_KINDS, QuerySpec, QuestionKind

AnswerValue = float | int | str | bool
_SAME_SPOT = 1e-9  # metres: horizontal offsets below this count as none (CLOCK)
CONTACT_M = 0.01   # metres: closer surfaces than this touch (GAP)


class ReasoningError(ValueError):
    """The objects given cannot answer the query (e.g. B was not grounded)."""


@dataclass(frozen=True)
class Answer:
    """kind: what was asked; text: one sentence; reasoning: multi-line arithmetic trace;
    value: float metres | int count or hour | str category or label | bool; unit: "m", "m^3",
    "o'clock" or ""; used_ids: ids of the objects whose boxes were used, in order."""

    kind: QuestionKind
    text: str
    reasoning: str
    value: AnswerValue
    unit: str
    used_ids: tuple[str, ...]


# ---------------------------------------------------------------------- formatting
def format_metres(d: float) -> str:
    """'1.23 m' below 10 m, '12.3 m' from 10 m."""
    return f"{d:.2f} m" if abs(d) < 10.0 else f"{d:.1f} m"


def _vec(v: np.ndarray) -> str:
    return "(" + ", ".join(f"{x + 0.0:+.3f}" for x in v) + ")"  # + 0.0 turns -0.0 into 0.0


def _name(obj: GroundedObject, index: int, *, capital: bool = False) -> str:
    """'the red mug (bbox_0)'; labels already starting with an article keep theirs."""
    label = obj.label.strip() or "object"
    first = label.split()[0].lower()
    phrase = label if first in ("the", "a", "an") else f"the {label}"
    ident = obj.id or f"object {index}"
    phrase = f"{phrase} ({ident})"
    return phrase[0].upper() + phrase[1:] if capital else phrase


# ---------------------------------------------------------------------- geometry helpers
@dataclass(frozen=True)
class _Level:
    """Unit up, level forward f and level right r, all in the optical frame."""

    up: np.ndarray
    forward: np.ndarray
    right: np.ndarray

    @classmethod
    def from_up(cls, up: np.ndarray | None) -> "_Level":
        u = UP[Frame.OPTICAL] if up is None else np.asarray(up, dtype=np.float64).reshape(-1)
        n = float(np.linalg.norm(u)) if u.shape == (3,) else 0.0
        if u.shape != (3,) or not math.isfinite(n) or n < 1e-9:
            raise ValueError(f"up must be a finite non-zero (3,) vector in the optical frame, got {up!r}")
        u = u / n
        z = np.array([0.0, 0.0, 1.0])
        f = z - (z @ u) * u
        if np.linalg.norm(f) < 1e-6:  # looking straight up/down: forward from the image x axis
            x = np.array([1.0, 0.0, 0.0])
            r = x - (x @ u) * u
            r /= np.linalg.norm(r)
            f = np.cross(u, r)
        f = f / np.linalg.norm(f)
        return cls(u, f, np.cross(f, u))


@dataclass(frozen=True)
class _Dims:
    height: float
    width: float
    length: float


def _dims(box: Box3D, level: _Level) -> _Dims:
    g = box.gravity_aligned(level.up)  # optical frame: index 1 vertical, 0 heading, 2 third
    x = level.right  # the camera's x axis levelled: width does not depend on the camera's roll
    if abs(g.rotation[:, 0] @ x) >= abs(g.rotation[:, 2] @ x):
        return _Dims(float(g.size[1]), float(g.size[0]), float(g.size[2]))
    return _Dims(float(g.size[1]), float(g.size[2]), float(g.size[0]))


def _clock(d: np.ndarray, level: _Level) -> tuple[float, float, float, int]:
    dx, dz = float(d @ level.right), float(d @ level.forward)
    if math.hypot(dx, dz) < _SAME_SPOT:  # B straight above/below A: round-off must not pick an hour
        dx = dz = 0.0
    angle = math.degrees(math.atan2(dx, dz))
    hour = int(math.floor(angle / 30.0 + 0.5)) % 12
    return dx, dz, angle, 12 if hour == 0 else hour


# ---------------------------------------------------------------------- the context of one query
@dataclass(frozen=True)
class _Ctx:
    spec: QuerySpec
    objects: tuple[GroundedObject, ...]  # optical frame
    level: _Level

    def name(self, i: int, capital: bool = False) -> str:
        return _name(self.objects[i], i, capital=capital)

    def centre(self, i: int) -> np.ndarray:
        return self.objects[i].box.center

    def ids(self, *idx: int) -> tuple[str, ...]:
        return tuple(self.objects[i].id for i in idx)

    def answer(self, text: str, lines: list[str], value: AnswerValue, unit: str,
               used: Sequence[int]) -> Answer:
        return Answer(self.spec.kind, text, "\n".join(lines), value, unit, self.ids(*used))

    def header(self, *idx: int, tags: str = "AB") -> list[str]:
        """One line per object: its tag (A, B, or its index), centre and size."""
        lines = ["optical frame: x right, y down, z forward, metres"]
        for k, i in enumerate(idx):
            tag = tags[k] if k < len(tags) else f"#{i}"
            lines.append(f"{tag} = {self.name(i)}: centre {_vec(self.centre(i))}, "
                         f"size {_vec(self.objects[i].box.size)}")
        return lines


# ---------------------------------------------------------------------- single-object kinds
def _locate(c: _Ctx) -> Answer:
    p = c.centre(0)
    dist = float(np.linalg.norm(p))
    u = float(p @ c.level.up)
    side = "right" if p[0] >= 0 else "left"
    vert = "above" if u >= 0 else "below"
    lines = c.header(0) + [
        f"|c_A| = sqrt({p[0]:.3f}^2 + {p[1]:.3f}^2 + {p[2]:.3f}^2) = {dist:.3f} m",
        f"x = {p[0]:+.3f} m -> {side} of the optical axis; up component = {u:+.3f} m -> {vert}; "
        f"z = {p[2]:.3f} m ahead"]
    text = (f"{c.name(0, True)} is {format_metres(dist)} from the camera: {format_metres(abs(p[0]))} to the "
            f"{side}, {format_metres(abs(u))} {vert} and {format_metres(p[2])} ahead.")
    return c.answer(text, lines, dist, "m", [0])


def _distance_to_camera(c: _Ctx) -> Answer:
    p = c.centre(0)
    dist = float(np.linalg.norm(p))
    surf = point_box_distance(np.zeros(3), c.objects[0].box)
    lines = c.header(0) + [
        f"distance = |c_A| = sqrt({p[0]:.3f}^2 + {p[1]:.3f}^2 + {p[2]:.3f}^2) = {dist:.3f} m",
        f"along the optical axis: z = {p[2]:.3f} m",
        f"camera to the nearest surface of A: {surf:.3f} m"]
    text = f"{c.name(0, True)} is {format_metres(dist)} from the camera."
    return c.answer(text, lines, dist, "m", [0])


def _size(c: _Ctx) -> Answer:
    d = _dims(c.objects[0].box, c.level)
    what = c.spec.kind.value  # "height" | "width" | "length"
    value = getattr(d, what)
    lines = c.header(0) + [
        f"up = {_vec(c.level.up)}; gravity-aligned box: height {d.height:.3f} m (along up), "
        f"width {d.width:.3f} m (horizontal axis closest to the camera's x), length {d.length:.3f} m",
        f"{what} = {value:.3f} m"]
    adjective = {"height": "tall", "width": "wide", "length": "long"}[what]
    text = f"{c.name(0, True)} is {format_metres(value)} {adjective}."
    return c.answer(text, lines, value, "m", [0])


# ---------------------------------------------------------------------- pairwise kinds
def _distance(c: _Ctx) -> Answer:
    a, b = c.centre(0), c.centre(1)
    d = b - a
    dist = float(np.linalg.norm(d))
    pa, pb = closest_points(c.objects[0].box, c.objects[1].box)
    surf = float(np.linalg.norm(pb - pa))
    lines = c.header(0, 1) + [
        f"d = c_B - c_A = {_vec(d)} m",
        f"|d| = sqrt({d[0]:.3f}^2 + {d[1]:.3f}^2 + {d[2]:.3f}^2) = {dist:.3f} m",
        f"closest surfaces: {_vec(pa)} on A, {_vec(pb)} on B, {surf:.3f} m apart"]
    text = f"{c.name(0, True)} is {format_metres(dist)} from {c.name(1)}."
    return c.answer(text, lines, dist, "m", [0, 1])


def _gap(c: _Ctx) -> Answer:
    pa, pb = closest_points(c.objects[0].box, c.objects[1].box)
    surface = float(np.linalg.norm(pb - pa))
    gap = surface if surface >= CONTACT_M else 0.0
    centre = float(np.linalg.norm(c.centre(1) - c.centre(0)))
    contact = ("" if surface >= CONTACT_M else "  (the boxes touch or overlap)" if surface == 0
               else f"  (under {CONTACT_M * 100:g} cm: they touch)")
    lines = c.header(0, 1) + [
        f"closest points: {_vec(pa)} on A, {_vec(pb)} on B",
        f"gap = |{_vec(pb - pa)}| = {surface:.3f} m" + contact,
        f"for reference, centre to centre: {centre:.3f} m"]
    if gap == 0:
        text = f"{c.name(0, True)} touches or overlaps {c.name(1)} (gap 0.00 m)."
    else:
        text = f"The gap between {c.name(0)} and {c.name(1)} is {format_metres(gap)}."
    return c.answer(text, lines, gap, "m", [0, 1])


# Direction comparisons: component of a centre, the word when A's component is larger, otherwise.
_Axis = tuple[str, Callable[["_Ctx", np.ndarray], float], str, str]


def _axis(kind: QuestionKind) -> _Axis:
    x = ("x (right)", lambda c, p: float(p[0]), "right", "left")
    u = ("up component", lambda c, p: float(p @ c.level.up), "above", "below")
    z = ("z (forward)", lambda c, p: float(p[2]), "behind", "in front of")
    if kind in (QuestionKind.LEFT_RIGHT, QuestionKind.IS_LEFT_OF, QuestionKind.IS_RIGHT_OF):
        return x
    if kind in (QuestionKind.ABOVE_BELOW, QuestionKind.IS_ABOVE, QuestionKind.IS_BELOW):
        return u
    return z


def _relation_phrase(word: str) -> str:
    return {"right": "to the right of", "left": "to the left of", "above": "above", "below": "below",
            "behind": "behind", "in front of": "in front of"}[word]


def _direction(c: _Ctx) -> Answer:
    label, comp, more, less = _axis(c.spec.kind)
    va, vb = comp(c, c.centre(0)), comp(c, c.centre(1))
    diff = va - vb
    word = more if diff > 0 else less
    lines = c.header(0, 1) + [
        f"{label}: A {va:+.3f} m, B {vb:+.3f} m; A - B = {diff:+.3f} m "
        f"{'> 0' if diff > 0 else '<= 0'} -> A is {_relation_phrase(word)} B"
        + ("  (tie: equal components)" if diff == 0 else "")]
    text = f"{c.name(0, True)} is {_relation_phrase(word)} {c.name(1)}."
    return c.answer(text, lines, word, "", [0, 1])


_PREDICATE_WORD = {
    QuestionKind.IS_LEFT_OF: "left", QuestionKind.IS_RIGHT_OF: "right",
    QuestionKind.IS_ABOVE: "above", QuestionKind.IS_BELOW: "below",
    QuestionKind.IS_IN_FRONT_OF: "in front of", QuestionKind.IS_BEHIND: "behind",
}


def _predicate(c: _Ctx) -> Answer:
    label, comp, more, _less = _axis(c.spec.kind)
    asked = _PREDICATE_WORD[c.spec.kind]
    rel = _relation_phrase(asked)
    va, vb = comp(c, c.centre(0)), comp(c, c.centre(1))
    # Signed so that > 0 means "yes": A's component exceeds B's for `more`, falls below for `less`.
    margin = (va - vb) if asked == more else (vb - va)
    yes = margin > 0
    lines = c.header(0, 1) + [
        f"{label}: A {va:+.3f} m, B {vb:+.3f} m",
        f"A {rel} B needs {'A > B' if asked == more else 'A < B'}: margin {margin:+.3f} m -> "
        f"{'yes' if yes else 'no'}"]
    return _yes_no(c, rel, margin, lines)


def _yes_no(c: _Ctx, relation: str, margin: float, lines: list[str]) -> Answer:
    """'Yes, A is <relation> B (by m).' when margin > 0, else 'No, A is not <relation> B.'"""
    yes = margin > 0
    if yes:
        text = f"Yes, {c.name(0)} is {relation} {c.name(1)} (by {format_metres(margin)})."
    else:
        text = f"No, {c.name(0)} is not {relation} {c.name(1)}."
    return c.answer(text, lines, yes, "", [0, 1])


def _taller(c: _Ctx) -> Answer:
    ha = _dims(c.objects[0].box, c.level).height
    hb = _dims(c.objects[1].box, c.level).height
    taller = c.spec.kind == QuestionKind.IS_TALLER
    margin = (ha - hb) if taller else (hb - ha)
    yes = margin > 0
    word = "taller" if taller else "shorter"
    lines = c.header(0, 1) + [
        f"up = {_vec(c.level.up)}; heights of the gravity-aligned boxes: A {ha:.3f} m, B {hb:.3f} m",
        f"A {word} than B needs {'h_A > h_B' if taller else 'h_A < h_B'}: margin {margin:+.3f} m -> "
        f"{'yes' if yes else 'no'}"]
    return _yes_no(c, f"{word} than", margin, lines)


def _clock_answer(c: _Ctx) -> Answer:
    d = c.centre(1) - c.centre(0)
    dx, dz, angle, hour = _clock(d, c.level)
    lines = c.header(0, 1) + [
        f"d = c_B - c_A = {_vec(d)} m",
        f"level right r = {_vec(c.level.right)}, level forward f = {_vec(c.level.forward)}",
        f"dx = d . r = {dx:+.3f} m, dz = d . f = {dz:+.3f} m",
        f"angle = atan2(dx, dz) = {angle:+.1f} deg; {angle:+.1f} / 30 = {angle / 30:+.2f} -> {hour} o'clock"]
    if dx == 0.0 and dz == 0.0:
        lines.append("B is straight above or below A: the direction is undefined, reported as 12")
    text = (f"Standing at {c.name(0)} facing away from the camera, {c.name(1)} is at "
            f"{hour} o'clock.")
    return c.answer(text, lines, hour, "o'clock", [0, 1])


# ---------------------------------------------------------------------- set kinds
def _class_phrase(c: _Ctx) -> str:
    return c.spec.targets[0].strip() if c.spec.targets and c.spec.targets[0].strip() else "object"


def _count(c: _Ctx) -> Answer:
    n = len(c.objects)
    noun = pluralize(_class_phrase(c), n)
    lines = [f"{n} grounded object(s): " + (", ".join(c.name(i) for i in range(n)) or "none"),
             f"count = {n}"]
    if n == 0:
        text = f"There are no {pluralize(_class_phrase(c), 2)}."
    else:
        text = f"There {'is' if n == 1 else 'are'} {n} {noun}."
    return c.answer(text, lines, n, "", range(n))


def _detect(c: _Ctx) -> Answer:
    n = len(c.objects)
    lines = c.header(*range(n), tags="")
    lines.append(f"{n} object(s) found")
    if n == 0:
        text = f"No {pluralize(_class_phrase(c), 2)} were found."
    else:
        text = f"Found {n} {pluralize(_class_phrase(c), n)}: " + ", ".join(c.name(i) for i in range(n)) + "."
    return c.answer(text, lines, n, "", range(n))


def _extreme(c: _Ctx) -> Answer:
    kind = c.spec.kind
    by_volume = kind in (QuestionKind.LARGEST, QuestionKind.SMALLEST)
    pick_max = kind in (QuestionKind.FARTHEST, QuestionKind.LARGEST)
    if by_volume:
        scores = [o.box.volume for o in c.objects]
        lines = [f"{c.name(i)}: volume {s[0]:.3f} x {s[1]:.3f} x {s[2]:.3f} = {v:.4f} m^3"
                 for i, (v, s) in enumerate(zip(scores, (o.box.size for o in c.objects)))]
    else:
        scores = [float(np.linalg.norm(o.box.center)) for o in c.objects]
        lines = [f"{c.name(i)}: |c| = |{_vec(o.box.center)}| = {v:.3f} m"
                 for i, (o, v) in enumerate(zip(c.objects, scores))]
    k = int(np.argmax(scores) if pick_max else np.argmin(scores))  # first on ties
    word = {QuestionKind.CLOSEST: "closest to the camera", QuestionKind.FARTHEST: "farthest from the camera",
            QuestionKind.LARGEST: "largest", QuestionKind.SMALLEST: "smallest"}[kind]
    lines.append(f"{'max' if pick_max else 'min'} -> {c.name(k)}"
                 + ("  (tie: the first candidate wins)" if scores.count(scores[k]) > 1 else ""))
    detail = (f"{scores[k]:.3f} m^3" if by_volume else format_metres(scores[k]))
    text = f"{c.name(k, True)} is the {word} ({detail})."
    return Answer(kind, text, "\n".join(lines), c.objects[k].label, "", c.ids(k))


# ---------------------------------------------------------------------- dispatch
_HANDLERS: dict[QuestionKind, Callable[[_Ctx], Answer]] = {
    QuestionKind.LOCATE: _locate,
    QuestionKind.DISTANCE_TO_CAMERA: _distance_to_camera,
    QuestionKind.HEIGHT: _size, QuestionKind.WIDTH: _size, QuestionKind.LENGTH: _size,
    QuestionKind.DISTANCE: _distance,
    QuestionKind.GAP: _gap,
    QuestionKind.LEFT_RIGHT: _direction, QuestionKind.ABOVE_BELOW: _direction,
    QuestionKind.FRONT_BEHIND: _direction,
    QuestionKind.CLOCK: _clock_answer,
    QuestionKind.IS_LEFT_OF: _predicate, QuestionKind.IS_RIGHT_OF: _predicate,
    QuestionKind.IS_ABOVE: _predicate, QuestionKind.IS_BELOW: _predicate,
    QuestionKind.IS_IN_FRONT_OF: _predicate, QuestionKind.IS_BEHIND: _predicate,
    QuestionKind.IS_TALLER: _taller, QuestionKind.IS_SHORTER: _taller,
    QuestionKind.COUNT: _count,
    QuestionKind.DETECT: _detect,
    QuestionKind.CLOSEST: _extreme, QuestionKind.FARTHEST: _extreme,
    QuestionKind.LARGEST: _extreme, QuestionKind.SMALLEST: _extreme,
}


def _check_count(spec: QuerySpec, objects: Sequence[GroundedObject]) -> None:
    n = len(objects)
    if spec.kind in PAIRWISE_KINDS and n < 2:
        names = " and ".join(repr(t) for t in spec.targets[n:])
        raise ReasoningError(f"{spec.kind.value} needs two grounded objects (A={spec.targets[0]!r}, "
                             f"B={spec.targets[1]!r}), got {n}: missing {names}")
    if spec.kind in SINGLE_KINDS and n < 1:
        raise ReasoningError(f"{spec.kind.value} needs one grounded object ({spec.targets[0]!r}), got none")
    if spec.kind in (QuestionKind.CLOSEST, QuestionKind.FARTHEST, QuestionKind.LARGEST,
                     QuestionKind.SMALLEST) and n < 1:
        what = repr(spec.targets[0]) if spec.targets else "any object"
        raise ReasoningError(f"{spec.kind.value} needs at least one grounded candidate ({what}), got none")


def answer_query(spec: QuerySpec, objects: Sequence[GroundedObject], *,
                 up: np.ndarray | None = None) -> Answer:
    """Answer `spec` from `objects` (boxes in any frame); `up` (3,) in the optical frame.

    Raises ReasoningError when the objects the kind needs are missing, TypeError for non-objects,
    ValueError for a degenerate `up`.
    """
    if not isinstance(spec, QuerySpec):
        raise TypeError(f"spec must be a QuerySpec, got {type(spec).__name__}")
    objs = tuple(objects)
    for i, o in enumerate(objs):
        if not isinstance(o, GroundedObject):
            raise TypeError(f"objects[{i}] must be a GroundedObject, got {type(o).__name__}")
    _check_count(spec, objs)
    if spec.kind in PAIRWISE_KINDS:
        objs = objs[:2]
    elif spec.kind in SINGLE_KINDS:
        objs = objs[:1]
    ctx = _Ctx(spec, tuple(o.to_frame(Frame.OPTICAL) for o in objs), _Level.from_up(up))
    return _HANDLERS[spec.kind](ctx)
