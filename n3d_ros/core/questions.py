"""What a spatial question asks, as a value: the kinds of question and a structured query.

The model (or a parser) maps free text to a `QuerySpec`; `core.reasoning` answers a spec from
grounded boxes, so every number in an answer comes from exact arithmetic on boxes.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class QuestionKind(str, Enum):
    # grounding
    LOCATE = "locate"                          # where is A
    DETECT = "detect"                          # find all A (or everything)
    # metric
    DISTANCE = "distance"                      # A to B, centre to centre (trace adds closest surfaces)
    GAP = "gap"                                # A to B, closest surfaces
    DISTANCE_TO_CAMERA = "distance_to_camera"  # A to the camera
    HEIGHT = "height"
    WIDTH = "width"
    LENGTH = "length"
    # direction (as seen from the camera)
    LEFT_RIGHT = "left_right"                  # is A left or right of B -> "left" | "right"
    ABOVE_BELOW = "above_below"                # -> "above" | "below"
    FRONT_BEHIND = "front_behind"              # -> "in front of" | "behind"
    CLOCK = "clock"                            # standing at A facing away from the camera, B is at N o'clock
    # sets
    COUNT = "count"                            # how many A
    CLOSEST = "closest"                        # which object is closest to the camera
    FARTHEST = "farthest"
    LARGEST = "largest"                        # by volume
    SMALLEST = "smallest"
    # yes/no predicates about A relative to B
    IS_LEFT_OF = "is_left_of"
    IS_RIGHT_OF = "is_right_of"
    IS_ABOVE = "is_above"
    IS_BELOW = "is_below"
    IS_IN_FRONT_OF = "is_in_front_of"
    IS_BEHIND = "is_behind"
    IS_TALLER = "is_taller"
    IS_SHORTER = "is_shorter"


PAIRWISE_KINDS = frozenset({
    QuestionKind.DISTANCE, QuestionKind.GAP, QuestionKind.LEFT_RIGHT, QuestionKind.ABOVE_BELOW,
    QuestionKind.FRONT_BEHIND, QuestionKind.CLOCK, QuestionKind.IS_LEFT_OF, QuestionKind.IS_RIGHT_OF,
    QuestionKind.IS_ABOVE, QuestionKind.IS_BELOW, QuestionKind.IS_IN_FRONT_OF, QuestionKind.IS_BEHIND,
    QuestionKind.IS_TALLER, QuestionKind.IS_SHORTER,
})
SINGLE_KINDS = frozenset({
    QuestionKind.LOCATE, QuestionKind.DISTANCE_TO_CAMERA, QuestionKind.HEIGHT, QuestionKind.WIDTH,
    QuestionKind.LENGTH,
})
# Kinds answered over every grounded object (targets may be empty or one class phrase).
SET_KINDS = frozenset({
    QuestionKind.DETECT, QuestionKind.COUNT, QuestionKind.CLOSEST, QuestionKind.FARTHEST,
    QuestionKind.LARGEST, QuestionKind.SMALLEST,
})


@dataclass(frozen=True)
class QuerySpec:
    """A question reduced to its kind and the phrases it is about.

    targets: for pairwise kinds (A, B); for single kinds (A,); for set kinds () = all objects or
    (class phrase,) e.g. ("chair",) for "how many chairs".
    """

    kind: QuestionKind
    targets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", QuestionKind(self.kind))
        object.__setattr__(self, "targets", tuple(self.targets))
        n = len(self.targets)
        if self.kind in PAIRWISE_KINDS and n != 2:
            raise ValueError(f"{self.kind.value} needs two targets, got {n}")
        if self.kind in SINGLE_KINDS and n != 1:
            raise ValueError(f"{self.kind.value} needs one target, got {n}")
        if self.kind in SET_KINDS and n > 1:
            raise ValueError(f"{self.kind.value} takes at most one class phrase, got {n}")
