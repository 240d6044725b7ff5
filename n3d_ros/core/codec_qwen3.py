"""Qwen3-VL native 3D grounding: the `bbox_3d` JSON it writes, read defensively, and its prompt.

Output shape (model_formats.md section 2):
`[{"bbox_3d":[x_center, y_center, z_center, x_size, y_size, z_size, a6, a7, a8], "label":"..."}]`
centre and size in metres in the OPTICAL frame (x right, y down, z forward); angles as fractions
of pi. Real outputs come fenced in ```json, bare, as a single object, truncated mid-array, with
repeated objects or trailing chatter; `decode_qwen3_json` recovers every complete object.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .box import Box3D
from .camera import CameraModel
from .frames import Frame, euler_xyz_from_rotation, rotation_from_euler_xyz
from .objects import GroundedObject

QWEN3_FORMAT = ('`[{"bbox_3d":[x_center, y_center, z_center, x_size, y_size, z_size, '
                'roll, pitch, yaw],"label":"category"}]`')
_MAX_TEXT = 200_000          # longer outputs are cut: no real answer is that long
_MAX_RECOVERY_STARTS = 500   # '{' positions tried when the JSON as a whole does not parse
_MAX_ABS_VALUE = 1e6


@dataclass
class Qwen3DecodeResult:
    """Boxes that parsed (OPTICAL frame) and why the rest did not."""

    objects: list[GroundedObject] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def qwen3_angles_to_rotation(a6: float, a7: float, a8: float) -> np.ndarray:
    """(3,3) box-to-optical rotation from the three angle slots of `bbox_3d` (fractions of pi).

    The ONE place this interpretation lives. The prompt names the slots (roll, pitch, yaw), but
    the reference drawing code (Qwen3-VL cookbook / VLMEvalKit) multiplies them by 180, unpacks
    them as (pitch, yaw, roll) and turns the box's local corners first about x by slot 6, then
    about y by slot 7, then about z by slot 8. We follow the drawing code, which is what the
    model's outputs were checked against:
        R = Rz(pi * a8) @ Ry(pi * a7) @ Rx(pi * a6)      (optical axes, right-handed)
    so slot 7 is the heading about the optical y axis (vertical for a level camera) and slots
    6 and 8 tilt the box about the camera's x and z axes.
    """
    return rotation_from_euler_xyz(math.pi * a6, math.pi * a7, math.pi * a8)


def rotation_to_qwen3_angles(R: np.ndarray) -> tuple[float, float, float]:
    """Inverse of `qwen3_angles_to_rotation` (slot 7 in [-1/2, 1/2])."""
    r, p, y = euler_xyz_from_rotation(R)
    return r / math.pi, p / math.pi, y / math.pi


def virtual_camera(width: int, height: int, fov_deg: float = 60.0) -> CameraModel:
    """The camera Qwen3-VL's reference code assumes when K is unknown.

    As in the cookbook, the same field of view is applied to both axes (fx = W / (2 tan(fov/2)),
    fy = H / (2 tan(fov/2)), so pixels are not square unless W == H) and the principal point is
    (W/2, H/2).
    """
    if not 0.0 < fov_deg < 180.0:
        raise ValueError(f"fov_deg must be in (0, 180), got {fov_deg}")
    t = 2.0 * math.tan(math.radians(fov_deg) / 2.0)
    return CameraModel.from_intrinsics(width / t, height / t, width / 2.0, height / 2.0,
                                       width, height)


def qwen3_grounding_prompt(target: str | Sequence[str]) -> str:
    """Prompt for Qwen3-VL 3D grounding.

    A sequence of phrases -> the cookbook's "Locate the <phrases> ..." prompt; a single string is
    taken as a free question whose objects should be grounded.
    """
    if isinstance(target, str):
        return (f"{target.strip()} Locate the objects mentioned above in the provided image and "
                "output their positions and dimensions using 3D bounding boxes. The results must "
                f"be in the JSON format: {QWEN3_FORMAT}")
    phrases = [" ".join(str(p).split()) for p in target]
    if not phrases:
        raise ValueError("expected at least one phrase to ground, got none")
    joined = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return (f"Locate the {joined} in the provided image and output their positions and "
            "dimensions using 3D bounding boxes. The results must be in the JSON format: "
            f"{QWEN3_FORMAT}")


# ---------------------------------------------------------------------------------- decoding
def _json_region(text: str) -> str:
    """The part of the text that should hold the JSON: inside the first ``` fence if any."""
    fence = text.find("```")
    if fence < 0:
        return text
    body = text[fence + 3:]
    if body[:4].lower() == "json":
        body = body[4:]
    end = body.find("```")
    return body if end < 0 else body[:end]


def _load_items(region: str, problems: list[str]) -> list[Any]:
    """Top-level JSON values: the whole array/object if it parses, else every complete object."""
    starts = [i for i in (region.find("["), region.find("{")) if i >= 0]
    if not starts:
        problems.append("no JSON array or object in the output")
        return []
    start = min(starts)
    decoder = json.JSONDecoder()
    try:
        value, end = decoder.raw_decode(region, start)
        if region[end:].strip():
            problems.append(f"ignored text after the JSON: {region[end:end + 40]!r}")
        return value if isinstance(value, list) else [value]
    except (ValueError, RecursionError):
        pass
    # Truncated or broken: recover each complete {...} (skipping over the ones inside it).
    items: list[Any] = []
    pos, tries = start, 0
    while tries < _MAX_RECOVERY_STARTS:
        i = region.find("{", pos)
        if i < 0:
            break
        tries += 1
        try:
            value, end = decoder.raw_decode(region, i)
        except (ValueError, RecursionError):
            pos = i + 1
            continue
        items.append(value)
        pos = end
    problems.append(f"JSON did not parse as a whole (truncated or malformed); "
                    f"recovered {len(items)} complete object(s)")
    return items


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _decode_item(item: Any, index: int, camera: CameraModel | None) -> GroundedObject | str:
    if not isinstance(item, dict):
        return f"item {index}: expected an object with bbox_3d, got {type(item).__name__}"
    raw = item.get("bbox_3d")
    if not isinstance(raw, list):
        return f"item {index}: missing bbox_3d list"
    if len(raw) not in (6, 9):
        return f"item {index}: bbox_3d needs 9 numbers (or 6 without angles), got {len(raw)}"
    if not all(_is_number(x) for x in raw):
        return f"item {index}: bbox_3d holds non-numeric values"
    if not all(abs(x) <= _MAX_ABS_VALUE for x in raw):  # before float(): huge ints overflow
        return f"item {index}: bbox_3d numbers out of range"
    vals = [float(x) for x in raw]
    if not all(math.isfinite(x) and abs(x) <= _MAX_ABS_VALUE for x in vals):
        return f"item {index}: bbox_3d numbers out of range"
    label = item.get("label", "")
    if not isinstance(label, str):
        label = str(label) if _is_number(label) else ""
    angles = vals[6:9] if len(vals) == 9 else [0.0, 0.0, 0.0]
    try:
        box = Box3D(np.array(vals[0:3]), np.abs(np.array(vals[3:6])),
                    qwen3_angles_to_rotation(*angles), Frame.OPTICAL)
    except ValueError as exc:
        return f"item {index}: {exc}"
    score = item.get("score", item.get("confidence", -1.0))
    score = float(score) if _is_number(score) and abs(score) <= 1.0 else -1.0
    obj = GroundedObject(box=box, label=" ".join(label.split()), score=score, id=f"bbox_{index}")
    if camera is not None:
        obj = obj.with_box_2d(box.project_2d(camera))
    return obj


def decode_qwen3_json(text: str, camera: CameraModel | None = None) -> Qwen3DecodeResult:
    """Parse Qwen3-VL `bbox_3d` output into OPTICAL-frame objects; never raises on the text.

    Exact duplicates (same numbers and label) are dropped and reported; a 6-number bbox_3d is
    taken as axis aligned. box_2d is filled from projection when `camera` is given. ids are
    "bbox_<n>" in output order (duplicates and rejected items keep their number).
    """
    result = Qwen3DecodeResult()
    if not isinstance(text, str):
        result.problems.append(f"expected text, got {type(text).__name__}")
        return result
    if len(text) > _MAX_TEXT:
        result.problems.append(f"output cut to {_MAX_TEXT} characters (got {len(text)})")
        text = text[:_MAX_TEXT]
    items = _load_items(_json_region(text), result.problems)
    seen: set[str] = set()
    with np.errstate(all="ignore"):
        for i, item in enumerate(items):
            decoded = _decode_item(item, i, camera)
            if isinstance(decoded, str):
                result.problems.append(decoded)
                continue
            key = json.dumps([item.get("bbox_3d"), decoded.label])
            if key in seen:
                result.problems.append(f"item {i}: exact duplicate of an earlier object, dropped")
                continue
            seen.add(key)
            result.objects.append(decoded)
    return result


def encode_qwen3_json(objects: Sequence[GroundedObject], *, decimals: int = 4) -> str:
    """The JSON array Qwen3-VL would write for `objects` (any frame; written in OPTICAL)."""
    out = []
    for obj in objects:
        box = obj.box.to_frame(Frame.OPTICAL)
        angles = rotation_to_qwen3_angles(box.rotation)
        nums = [*box.center, *box.size, *angles]
        out.append({"bbox_3d": [round(float(x), decimals) + 0.0 for x in nums],
                    "label": obj.label})
    return json.dumps(out, ensure_ascii=False)
