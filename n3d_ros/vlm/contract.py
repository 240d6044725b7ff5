"""The contract every spatial VLM backend fulfils (built-in compact model, N3D-VLM, Qwen3-VL).

Two stages, as in N3D-VLM: `ground` (question -> grounded 3D boxes, and what kind of question it
is), then `reason` (question + boxes -> answer). `detect` is grounding with no question.
All boxes come back in the optical frame of the SOURCE camera, 2D boxes in source pixels.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from ..core.camera import CameraModel, check_image
from ..core.objects import GroundedObject
from ..core.questions import QuerySpec


@dataclass(frozen=True)
class SceneInput:
    """One camera frame as the models see it.

    image:  (H, W, 3) uint8 RGB of the source camera.
    camera: intrinsics of that image.
    points: (H, W, 3) float32 metres, optical frame, on the source grid; None = let the backend's
            own geometry encoder estimate it (or use `depth`).
    mask:   (H, W) bool validity of `points`.
    depth:  (H, W) float32 z-depth in metres on the source grid (0 / NaN = no measurement), the
            measured geometry as a depth camera gives it. Backends that work on a smaller grid
            resample it first and unproject only there; `measured_points()` unprojects it here.
    """

    image: np.ndarray
    camera: CameraModel
    points: np.ndarray | None = None
    mask: np.ndarray | None = None
    depth: np.ndarray | None = None

    def __post_init__(self) -> None:
        img = check_image(self.image, self.camera)
        if self.points is not None:
            if self.points.shape != img.shape[:2] + (3,):
                raise ValueError(f"points must be (H, W, 3) matching the image, got {self.points.shape}")
            if self.mask is None:
                object.__setattr__(self, "mask", np.all(np.isfinite(self.points), axis=-1))
        if self.depth is not None and np.shape(self.depth) != img.shape[:2]:
            raise ValueError(f"depth must be (H, W) matching the image, got {np.shape(self.depth)}")

    @property
    def has_measured_geometry(self) -> bool:
        return self.points is not None or self.depth is not None

    def content_key(self) -> tuple:
        """What identifies this frame's content: shape, dtype and CRC-32 of every array, and the
        camera. Equal keys mean the same pixels and geometry, so an encoding can be reused; the
        CRC reads each array once (about 0.2 ms per MB), far below what re-encoding costs."""
        def of(a: np.ndarray | None) -> tuple | None:
            if a is None:
                return None
            a = np.ascontiguousarray(a)
            return a.shape, a.dtype.str, zlib.crc32(memoryview(a).cast("B"))
        cam = self.camera
        return (of(self.image), of(self.points), of(self.mask), of(self.depth), cam.width, cam.height,
                cam.distortion_model, np.asarray(cam.K, np.float64).tobytes(),
                np.asarray(cam.D, np.float64).tobytes())

    def measured_points(self) -> tuple[np.ndarray, np.ndarray] | tuple[None, None]:
        """Source-grid (points, mask) from `points` or `depth`; (None, None) without either."""
        if self.points is not None:
            return self.points, self.mask
        if self.depth is not None:
            points, mask = self.camera.depth_to_points(self.depth)
            return points.astype(np.float32), mask
        return None, None


@dataclass(frozen=True)
class Grounding:
    """Stage-1 output.

    objects:  grounded boxes (optical frame, source camera), in the order the model emitted them.
    spec:     what the backend understood the question to ask (None for detection or when the
              backend cannot tell).
    raw_text: the model's own output text, for debugging.
    problems: what could not be parsed or was dropped (never raised).
    up:       (3,) unit up vector in the optical frame if the backend estimated the camera's tilt.
    """

    objects: list[GroundedObject]
    spec: QuerySpec | None = None
    raw_text: str = ""
    problems: list[str] = field(default_factory=list)
    up: np.ndarray | None = None


@dataclass(frozen=True)
class SpatialAnswer:
    grounding: Grounding
    answer: str
    reasoning: str = ""
    problems: list[str] = field(default_factory=list)
    value: float | int | str | bool | None = None  # structured answer (metres, count, category, yes/no)


@runtime_checkable
class SpatialVLM(Protocol):
    name: str
    device: str

    def ground(self, scene: SceneInput, question: str, targets: Sequence[str] = ()) -> Grounding: ...

    def detect(self, scene: SceneInput, phrases: Sequence[str] = ()) -> Grounding: ...

    def reason(self, scene: SceneInput, question: str, grounding: Grounding) -> SpatialAnswer: ...

    def close(self) -> None: ...


class ModelLoadError(RuntimeError):
    """A checkpoint folder is missing, incomplete or of the wrong kind (message says which file)."""
