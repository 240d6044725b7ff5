"""Values that cross from the pipeline to its callers (the ROS node, the CLI, benchmarks)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..core.camera import CameraModel
from ..core.objects import GroundedObject
from ..core.questions import QuerySpec


@dataclass(frozen=True)
class CameraFrame:
    """One synchronized camera frame.

    image:    (H, W, 3) uint8 RGB.
    camera:   intrinsics of `image` (binning/ROI applied).
    stamp_ns: acquisition time, nanoseconds.
    frame_id: the image's optical frame.
    depth:    optional (H, W) float32 metres registered to `image` (NaN/0 = no measurement).
    """

    image: np.ndarray
    camera: CameraModel
    stamp_ns: int = 0
    frame_id: str = ""
    depth: np.ndarray | None = None


@dataclass(frozen=True)
class QueryResult:
    """Outcome of one question. On failure `message` says what went wrong and what to do.

    objects are in the optical frame of the frame's image (frame_id), 2D boxes in its pixels.
    """

    success: bool
    message: str = ""
    answer: str = ""
    reasoning: str = ""
    objects: list[GroundedObject] = field(default_factory=list)
    spec: QuerySpec | None = None
    latency_s: float = 0.0
    value: float | int | str | bool | None = None  # structured answer (metres, count, category, yes/no)
    geometry_source: str = ""  # "depth" | "encoder:<backend>"
