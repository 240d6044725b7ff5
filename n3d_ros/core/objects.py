"""A grounded object: the value that crosses every layer (model -> pipeline -> ROS)."""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .box import Box3D
from .frames import Frame


@dataclass(frozen=True, eq=False)  # numpy fields: identity equality
class GroundedObject:
    """A 3D box with what it is.

    id:     stable within one answer, e.g. "bbox_0" (the N3D-VLM grammar's name).
    label:  the phrase or class it was grounded from.
    score:  confidence in 0..1, -1 when the source gives none.
    box_2d: (u_min, v_min, u_max, v_max) in SOURCE-image pixels, None when unknown.
    """

    box: Box3D
    label: str
    score: float = -1.0
    id: str = ""
    box_2d: tuple[float, float, float, float] | None = None

    def to_frame(self, frame: Frame | str) -> "GroundedObject":
        return replace(self, box=self.box.to_frame(frame))

    def with_box_2d(self, box_2d: np.ndarray | None) -> "GroundedObject":
        return replace(self, box_2d=None if box_2d is None else tuple(float(v) for v in box_2d))
