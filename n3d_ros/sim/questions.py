"""Templated spatial questions about sim scenes, with ground truth from `core.reasoning`.

Questions only name objects that are visible, and single/pairwise questions only objects whose
phrase picks out exactly one visible object (its label "red mug", or the bare kind "mug" when only
one mug is visible). Relations whose ground truth hangs on a few centimetres (left/right within
0.1 m, heights within 5 cm, clock directions near a half-hour boundary, near-tied superlatives) are
not asked, so a model is never trained on a coin flip.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..core.objects import GroundedObject
from ..core.question_parser import pluralize
from ..core.questions import SINGLE_KINDS, QuerySpec, QuestionKind
from ..core.reasoning import Answer, answer_query
from .world import Scene

K = QuestionKind

# {a}, {b}: object phrases; {cls}: a kind, {cls_pl}: its plural. Every kind has >= 3 phrasings.
TEMPLATES: dict[QuestionKind, tuple[str, ...]] = {
    K.LOCATE: ("Where is the {a}?", "Locate the {a}.", "Find the {a}.", "Where is the {a} located?",
               "Show me the {a}."),
    K.DETECT: ("Detect all objects.", "Find all objects in the image.", "Locate every object in the scene.",
               "Detect all the objects you can see."),
    K.DISTANCE: ("How far is the {a} from the {b}?", "What is the distance between the {a} and the {b}?",
                 "How far apart are the {a} and the {b}?", "What is the distance from the {a} to the {b}?"),
    K.GAP: ("What is the gap between the {a} and the {b}?", "How much space is there between the {a} and the {b}?",
            "What is the closest distance between the {a} and the {b}?",
            "How much clearance is there between the {a} and the {b}?"),
    K.DISTANCE_TO_CAMERA: ("How far is the {a} from the camera?", "What is the distance from the camera to the {a}?",
                           "How far away is the {a}?", "How far is the {a} from me?"),
    K.HEIGHT: ("How tall is the {a}?", "What is the height of the {a}?", "How high is the {a}?"),
    K.WIDTH: ("How wide is the {a}?", "What is the width of the {a}?", "Tell me the width of the {a}."),
    K.LENGTH: ("How long is the {a}?", "What is the length of the {a}?", "Tell me the length of the {a}."),
    K.LEFT_RIGHT: ("Is the {a} to the left or to the right of the {b}?", "Is the {a} left or right of the {b}?",
                   "Is the {a} on the left or the right side of the {b}?"),
    K.ABOVE_BELOW: ("Is the {a} above or below the {b}?", "Is the {a} higher or lower than the {b}?",
                    "Is the {a} positioned above or below the {b}?"),
    K.FRONT_BEHIND: ("Is the {a} in front of or behind the {b}?", "Is the {a} behind or in front of the {b}?",
                     "Seen from the camera, is the {a} in front of or behind the {b}?"),
    K.CLOCK: ("Standing at the {a} facing away from the camera, at what o'clock is the {b}?",
              "If I stand at the {a} facing forward, in which clock direction is the {b}?",
              "At what o'clock is the {b} from the {a}?"),
    K.COUNT: ("How many {cls_pl} are there?", "How many {cls_pl} are in the image?",
              "Count the {cls_pl}.", "How many {cls_pl} can you see?"),
    K.CLOSEST: ("Which object is closest to the camera?", "What is the nearest object to the camera?",
                "Which object is nearest to me?"),
    K.FARTHEST: ("Which object is farthest from the camera?", "What is the farthest object from the camera?",
                 "What is the most distant object?"),
    K.LARGEST: ("Which object is the largest?", "What is the biggest object in the scene?",
                "Which is the biggest object?"),
    K.SMALLEST: ("Which object is the smallest?", "What is the smallest object in the scene?",
                 "Which is the smallest object?"),
    K.IS_LEFT_OF: ("Is the {a} to the left of the {b}?", "Is the {a} on the left side of the {b}?",
                   "Does the {a} appear to the left of the {b}?"),
    K.IS_RIGHT_OF: ("Is the {a} to the right of the {b}?", "Is the {a} on the right side of the {b}?",
                    "Does the {a} appear to the right of the {b}?"),
    K.IS_ABOVE: ("Is the {a} above the {b}?", "Is the {a} higher than the {b}?", "Is the {a} located above the {b}?"),
    K.IS_BELOW: ("Is the {a} below the {b}?", "Is the {a} lower than the {b}?", "Is the {a} located below the {b}?"),
    K.IS_IN_FRONT_OF: ("Is the {a} in front of the {b}?", "Is the {a} located in front of the {b}?",
                       "Is the {a} positioned in front of the {b}?"),
    K.IS_BEHIND: ("Is the {a} behind the {b}?", "Is the {a} located behind the {b}?",
                  "Is the {a} positioned behind the {b}?"),
    K.IS_TALLER: ("Is the {a} taller than the {b}?", "Does the {a} stand taller than the {b}?",
                  "Is the {a} any taller than the {b}?"),
    K.IS_SHORTER: ("Is the {a} shorter than the {b}?", "Does the {a} stand shorter than the {b}?",
                   "Is the {a} any shorter than the {b}?"),
}
# DETECT of one class ("find all chairs") has its own phrasings.
DETECT_CLASS_TEMPLATES = ("Find all {cls_pl}.", "Detect all the {cls_pl}.", "Locate every {cls}.",
                          "Find all the {cls_pl} in the image.")

# Kinds answered from a signed difference of centre components: (kind -> component name).
_AXIS = {K.LEFT_RIGHT: "x", K.IS_LEFT_OF: "x", K.IS_RIGHT_OF: "x",
         K.ABOVE_BELOW: "up", K.IS_ABOVE: "up", K.IS_BELOW: "up",
         K.FRONT_BEHIND: "z", K.IS_IN_FRONT_OF: "z", K.IS_BEHIND: "z"}
_PREDICATES = (K.IS_LEFT_OF, K.IS_RIGHT_OF, K.IS_ABOVE, K.IS_BELOW, K.IS_IN_FRONT_OF, K.IS_BEHIND,
               K.IS_TALLER, K.IS_SHORTER)
_SUPERLATIVES = (K.CLOSEST, K.FARTHEST, K.LARGEST, K.SMALLEST)


@dataclass(frozen=True)
class QuestionConfig:
    """Margins below which a relation is too close to call (metres unless named)."""

    min_separation: float = 0.10     # left/right, above/below, front/behind centre difference
    min_height_difference: float = 0.05
    min_clock_margin_deg: float = 5.0  # distance of the direction from a half-hour boundary
    min_clock_distance: float = 0.2    # horizontal A-B distance for a clock question
    min_superlative_margin: float = 0.10  # metres between the two nearest/farthest
    min_volume_ratio: float = 1.25     # largest/smallest must beat the runner-up by this factor
    min_axis_contrast: float = 0.2     # |cos| difference that decides width vs length axes
    kind_only_probability: float = 0.3  # call a uniquely-kinded object just "mug"


@dataclass(frozen=True)
class SpatialQuestion:
    """text: the question; spec: what it asks; targets: object indices per spec target (pairwise and
    single kinds: one index per target; set kinds: one tuple of every candidate); answer: ground truth."""

    text: str
    spec: QuerySpec
    targets: tuple[tuple[int, ...], ...]
    answer: Answer


def gt_object(scene: Scene, index: int) -> GroundedObject:
    o = scene.objects[index]
    return GroundedObject(box=o.box, label=o.label, id=f"obj_{index}")


def pixel_counts(scene: Scene, instance_map: np.ndarray) -> np.ndarray:
    """(N,) pixels of each object in an (H, W) instance map (-1 = no object)."""
    inst = np.asarray(instance_map).reshape(-1).astype(np.int64)
    inst = inst[inst >= 0]
    return np.bincount(inst, minlength=len(scene.objects))[: len(scene.objects)]


# With a named-part map: pixels of an object's named colour it must show, as a share of `min_pixels`.
NAMED_SHARE = 0.25


def visible_objects(scene: Scene, instance_map: np.ndarray, *, min_pixels: int = 40,
                    named_map: np.ndarray | None = None) -> list[int]:
    """Indices of objects with at least `min_pixels` pixels whose box centre is in front of the camera and,
    given `named_map` (render(named=True)), at least NAMED_SHARE of `min_pixels` of them in the object's named
    colour: a lamp whose shade is out of view shows only its gray pole, and nobody can tell its colour."""
    counts = pixel_counts(scene, instance_map)
    named = counts if named_map is None else \
        pixel_counts(scene, np.where(np.asarray(named_map, bool), instance_map, -1))
    return [i for i, o in enumerate(scene.objects)
            if counts[i] >= min_pixels and named[i] >= NAMED_SHARE * min_pixels and o.box.center[2] > 0]


def marginal_objects(scene: Scene, instance_map: np.ndarray, *, min_pixels: int = 40,
                     named_map: np.ndarray | None = None) -> list[int]:
    """Objects that show some pixels but do not count as visible: a viewer may or may not count them."""
    counts = pixel_counts(scene, instance_map)
    visible = set(visible_objects(scene, instance_map, min_pixels=min_pixels, named_map=named_map))
    return [i for i in range(len(scene.objects)) if counts[i] > 0 and i not in visible]


class _Asker:
    """Builds one question of a kind for one scene, or None when it would be ambiguous."""

    def __init__(self, scene: Scene, visible: Sequence[int], rng: np.random.Generator,
                 cfg: QuestionConfig, marginal: Sequence[int]) -> None:
        self.scene, self.rng, self.cfg = scene, rng, cfg
        self.visible = list(visible)
        self.marginal = list(marginal)
        labels = [scene.objects[i].label for i in self.visible]
        kinds = [scene.objects[i].kind for i in self.visible]
        self.unique = [i for i in self.visible if labels.count(scene.objects[i].label) == 1]
        self.unique_kind = {scene.objects[i].kind for i in self.visible if kinds.count(scene.objects[i].kind) == 1}
        up = np.asarray(scene.up, dtype=np.float64)
        self.up = up / np.linalg.norm(up)
        z = np.array([0.0, 0.0, 1.0])
        f = z - (z @ self.up) * self.up
        self.forward = f / np.linalg.norm(f)
        self.right = np.cross(self.forward, self.up)

    # ------------------------------------------------------------------ helpers
    def phrase(self, i: int) -> str:
        o = self.scene.objects[i]
        if o.kind in self.unique_kind and self.rng.random() < self.cfg.kind_only_probability:
            return o.kind
        return o.label

    def template(self, kind: QuestionKind) -> str:
        options = TEMPLATES[kind]
        return options[int(self.rng.integers(len(options)))]

    def centre(self, i: int) -> np.ndarray:
        return self.scene.objects[i].box.center

    def component(self, i: int, axis: str) -> float:
        c = self.centre(i)
        return float(c @ self.up) if axis == "up" else float(c[0] if axis == "x" else c[2])

    def height(self, i: int) -> float:
        # Box axis 1 is exactly "down" (world.py), so size[1] is the gravity-aligned height.
        return float(self.scene.objects[i].box.size[1])

    def pick(self, k: int) -> list[int] | None:
        if len(self.unique) < k:
            return None
        return [self.unique[j] for j in self.rng.choice(len(self.unique), size=k, replace=False)]

    def finish(self, kind: QuestionKind, text: str, phrases: tuple[str, ...],
               targets: tuple[tuple[int, ...], ...], objects: list[int]) -> SpatialQuestion:
        spec = QuerySpec(kind, phrases)
        answer = answer_query(spec, [gt_object(self.scene, i) for i in objects], up=self.scene.up)
        return SpatialQuestion(text, spec, targets, answer)

    # ------------------------------------------------------------------ kinds
    def single(self, kind: QuestionKind) -> SpatialQuestion | None:
        chosen = self.pick(1)
        if chosen is None:
            return None
        a = chosen[0]
        if kind in (K.WIDTH, K.LENGTH) and not self._width_axis_clear(a):
            return None
        pa = self.phrase(a)
        return self.finish(kind, self.template(kind).format(a=pa), (pa,), ((a,),), [a])

    def _width_axis_clear(self, i: int) -> bool:
        box = self.scene.objects[i].box
        if abs(box.size[0] - box.size[2]) < 0.02:  # square footprint: width and length agree anyway
            return True
        x = np.array([1.0, 0.0, 0.0])
        return abs(abs(box.rotation[:, 0] @ x) - abs(box.rotation[:, 2] @ x)) >= self.cfg.min_axis_contrast

    def pair(self, kind: QuestionKind) -> SpatialQuestion | None:
        chosen = self.pick(2)
        if chosen is None:
            return None
        a, b = chosen
        cfg = self.cfg
        if kind in _AXIS:
            diff = self.component(a, _AXIS[kind]) - self.component(b, _AXIS[kind])
            if abs(diff) < cfg.min_separation:
                return None
        if kind in (K.IS_TALLER, K.IS_SHORTER):
            diff = self.height(a) - self.height(b)
            if abs(diff) < cfg.min_height_difference:
                return None
        if kind == K.CLOCK and not self._clock_clear(a, b):
            return None
        if kind in _PREDICATES and bool(self.rng.random() < 0.5) != self._holds(kind, a, b):
            a, b = b, a  # balance yes and no answers
        pa, pb = self.phrase(a), self.phrase(b)
        return self.finish(kind, self.template(kind).format(a=pa, b=pb), (pa, pb), ((a,), (b,)), [a, b])

    def _holds(self, kind: QuestionKind, a: int, b: int) -> bool:
        if kind in (K.IS_TALLER, K.IS_SHORTER):
            d = self.height(a) - self.height(b)
            return d > 0 if kind == K.IS_TALLER else d < 0
        d = self.component(a, _AXIS[kind]) - self.component(b, _AXIS[kind])
        # Optical x grows to the right, z grows away from the camera, up grows upwards.
        return d > 0 if kind in (K.IS_RIGHT_OF, K.IS_ABOVE, K.IS_BEHIND) else d < 0

    def _clock_clear(self, a: int, b: int) -> bool:
        d = self.centre(b) - self.centre(a)
        dx, dz = float(d @ self.right), float(d @ self.forward)
        if math.hypot(dx, dz) < self.cfg.min_clock_distance:
            return False
        angle = math.degrees(math.atan2(dx, dz))
        # Hour boundaries sit at 15 + 30k degrees.
        off = (angle - 15.0) % 30.0
        return min(off, 30.0 - off) >= self.cfg.min_clock_margin_deg

    def count(self, kind: QuestionKind) -> SpatialQuestion | None:
        kinds = sorted({self.scene.objects[i].kind for i in self.visible})
        if not kinds:
            return None
        cls = kinds[int(self.rng.integers(len(kinds)))]
        if any(self.scene.objects[i].kind == cls for i in self.marginal):
            return None  # a sliver of another one is in view: the count is debatable
        members = tuple(i for i in self.visible if self.scene.objects[i].kind == cls)
        text = self.template(kind).format(cls=cls, cls_pl=pluralize(cls))
        return self.finish(kind, text, (cls,), (members,), list(members))

    def detect(self, kind: QuestionKind) -> SpatialQuestion | None:
        if self.rng.random() < 0.5:
            if self.marginal or not self.visible:
                return None
            text = self.template(kind)
            return self.finish(kind, text, (), (tuple(self.visible),), list(self.visible))
        kinds = sorted({self.scene.objects[i].kind for i in self.visible})
        cls = kinds[int(self.rng.integers(len(kinds)))] if kinds else None
        if cls is None or any(self.scene.objects[i].kind == cls for i in self.marginal):
            return None
        members = tuple(i for i in self.visible if self.scene.objects[i].kind == cls)
        t = DETECT_CLASS_TEMPLATES[int(self.rng.integers(len(DETECT_CLASS_TEMPLATES)))]
        return self.finish(kind, t.format(cls=cls, cls_pl=pluralize(cls)), (cls,), (members,), list(members))

    def superlative(self, kind: QuestionKind) -> SpatialQuestion | None:
        if len(self.visible) < 2:
            return None
        objs = self.scene.objects
        if kind in (K.CLOSEST, K.FARTHEST):
            score = {i: float(np.linalg.norm(objs[i].box.center)) for i in self.visible + self.marginal}
        else:
            score = {i: objs[i].box.volume for i in self.visible + self.marginal}
        best_first = sorted(self.visible, key=score.get, reverse=kind in (K.FARTHEST, K.LARGEST))
        top, runner = score[best_first[0]], score[best_first[1]]
        if kind in (K.CLOSEST, K.FARTHEST):
            if abs(top - runner) < self.cfg.min_superlative_margin:
                return None
        elif max(top, runner) < self.cfg.min_volume_ratio * min(top, runner):
            return None
        # A barely visible object that would win makes the answer debatable.
        for m in self.marginal:
            if (score[m] < top) if kind in (K.CLOSEST, K.SMALLEST) else (score[m] > top):
                return None
        if objs[best_first[0]].label in [objs[i].label for i in best_first[1:]]:
            return None  # the answer (a label) must name one object
        return self.finish(kind, self.template(kind), (), (tuple(self.visible),), list(self.visible))


def make_questions(scene: Scene, visible: Sequence[int], rng: np.random.Generator, n: int = 8,
                   kinds: Sequence[QuestionKind] | None = None, *, marginal: Sequence[int] = (),
                   config: QuestionConfig = QuestionConfig(), max_attempts: int | None = None
                   ) -> list[SpatialQuestion]:
    """Up to `n` distinct questions about the visible objects of `scene`, kinds drawn uniformly from
    `kinds` (default: every QuestionKind). `marginal` (see marginal_objects) are objects only a
    sliver of which is in view: counts and superlatives they could change are not asked.
    Fewer than `n` come back when the scene cannot support more unambiguous questions."""
    pool = list(QuestionKind) if kinds is None else [QuestionKind(k) for k in kinds]
    if not pool:
        raise ValueError("kinds must name at least one QuestionKind")
    asker = _Asker(scene, visible, rng, config, marginal)
    out: list[SpatialQuestion] = []
    seen: set[str] = set()
    for _ in range(max_attempts if max_attempts is not None else 12 * max(n, 1)):
        if len(out) >= n:
            break
        kind = pool[int(rng.integers(len(pool)))]
        if kind == K.DETECT:
            q = asker.detect(kind)
        elif kind == K.COUNT:
            q = asker.count(kind)
        elif kind in _SUPERLATIVES:
            q = asker.superlative(kind)
        elif kind in SINGLE_KINDS:
            q = asker.single(kind)
        else:
            q = asker.pair(kind)
        if q is not None and q.text not in seen:
            seen.add(q.text)
            out.append(q)
    return out

