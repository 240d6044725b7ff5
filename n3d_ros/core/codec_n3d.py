"""N3D-VLM box text: `bbox_<id>=Bbox(<label>,<u>,<v>,<z>,<angle>,<sx>,<sy>,<sz>)`, and its prompts.

Two forms of the same grammar (model_formats.md section 1):
- bins (the model's own tokens): 7 integers in [0, 999]; u, v = centre projection * 1000,
  z and sizes in the normalized point-cloud space (PointCloudNorm), angle over [-2pi, 2pi);
- metric (what the reference tooling writes back): u, v in [0, 1], z and sizes in metres,
  angle in radians.
u, v use the camera's normalized pinhole intrinsics (K / image size; distortion ignored, as the
model sees a pinhole point map); z is the optical-axis depth; the angle is a yaw about the N3D
y axis (up). Decoded boxes come back in the OPTICAL frame of the camera.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np

from .box import Box3D
from .camera import CameraModel
from .frames import Frame, convert_points
from .objects import GroundedObject
from .pointcloud_norm import PointCloudNorm

NUM_BINS = 1000
WORLD_MAX = 2.0        # normalized depth range covered by the z bins
SCALE_MAX = 0.625      # normalized size range covered by the size bins
ANGLE_MIN, ANGLE_MAX = -2.0 * math.pi, 2.0 * math.pi
_MAX_ABS_VALUE = 1e6   # metric numbers beyond this are garbage, not geometry

# The dataclass the reference prompts paste after "The reference code is as followed: ".
CODE_TEMPLATE = (
    "@dataclass\n"
    "class Bbox:\n"
    "    class: str\n"
    "    position_u: int\n"
    "    position_v: int\n"
    "    position_z: int\n"
    "    angle_y: int\n"
    "    scale_x: int\n"
    "    scale_y: int\n"
    "    scale_z: int"
)
IMAGE_TOKEN = "<image>"
_GROUNDING_SUFFIX = (" First locate the bbox of the aforementioned object(s). "
                     "The reference code is as followed: ")
_DETECTION_TEXT = "Detect boxes. The reference code is as followed: "

_BOX_START = re.compile(r"bbox\s*_\s*(\d+)\s*=\s*Bbox\s*\(")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_INTEGER = re.compile(r"[+-]?\d+")
_MAX_CLOSE_CANDIDATES = 8  # ')' positions tried per box before giving up (keeps parsing linear)

Form = Literal["auto", "bins", "metric"]


@dataclass
class N3DDecodeResult:
    """Boxes that parsed (OPTICAL frame of the source camera) and why other text did not."""

    objects: list[GroundedObject] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------- encoding
def _fmt(x: float) -> str:
    return repr(round(float(x), 6) + 0.0)  # + 0.0 turns -0.0 into 0.0


def _clean_label(label: str) -> str:
    # Newlines or a closing paren + "bbox_" would split the line for the parser; commas are fine.
    return " ".join(str(label).split())


def _uvz(center_n3d: np.ndarray, camera: CameraModel) -> tuple[float, float, float]:
    """N3D-frame centre -> (u, v) normalized pinhole projection and optical z (metres)."""
    x, y, z = convert_points(center_n3d, Frame.N3D, Frame.OPTICAL)
    if z <= 0:
        raise ValueError(f"box centre must be in front of the camera, got optical z={z:.3f} m")
    Kn = camera.normalized_intrinsics()
    xn, yn = x / z, y / z
    u = Kn[0, 0] * xn + Kn[0, 1] * yn + Kn[0, 2]
    v = Kn[1, 1] * yn + Kn[1, 2]
    return float(u), float(v), float(z)


def _n3d_box(box: Box3D) -> Box3D:
    b = box.to_frame(Frame.N3D)
    # The grammar holds a yaw only; a tilted box is replaced by its level counterpart so the
    # size stays attached to the right axis (height along y).
    return b if b.is_yaw_only else b.gravity_aligned()


def _bin(value: float, lo: float, hi: float) -> int:
    return int(np.clip(int((value - lo) / (hi - lo) * NUM_BINS), 0, NUM_BINS - 1))


def encode_boxes(objects: Sequence[GroundedObject], camera: CameraModel,
                 norm: PointCloudNorm | None = None, *, bins: bool = True) -> str:
    """One `bbox_<i>=Bbox(...)` line per object (objects in any frame), newline terminated.

    bins=True writes the model's integer tokens and needs `norm` (values outside the bins'
    range are clipped, as in the reference); bins=False writes the metric form.
    ids: the number of an id "bbox_<n>" is kept, otherwise the object's index is used.
    Raises ValueError for a box behind the camera (it has no image position).
    """
    if bins and norm is None:
        raise ValueError("bins=True needs the PointCloudNorm of the scene, got norm=None")
    lines = []
    for i, obj in enumerate(objects):
        box = _n3d_box(obj.box)
        u, v, z = _uvz(box.center, camera)
        theta = box.yaw
        m = re.fullmatch(r"bbox_(\d+)", obj.id or "")
        ident = m.group(1) if m else str(i)
        if bins:
            assert norm is not None
            z_norm = (z - norm.shift[2]) * norm.scale
            s_norm = box.size * norm.scale
            vals = [int(np.clip(round(u * NUM_BINS), 0, NUM_BINS - 1)),
                    int(np.clip(round(v * NUM_BINS), 0, NUM_BINS - 1)),
                    _bin(z_norm, 0.0, WORLD_MAX), _bin(theta, ANGLE_MIN, ANGLE_MAX),
                    *(_bin(s, 0.0, SCALE_MAX) for s in s_norm)]
            nums = ",".join(str(n) for n in vals)
        else:
            nums = ",".join(_fmt(n) for n in (u, v, z, theta, *box.size))
        lines.append(f"bbox_{ident}=Bbox({_clean_label(obj.label)},{nums})")
    return "".join(line + "\n" for line in lines)


# ---------------------------------------------------------------------------------- decoding
def _parse_numbers(fields: list[str]) -> list[str] | None:
    """The 7 number fields stripped, or None if any is not a plain decimal number."""
    out = [f.strip() for f in fields]
    return out if all(_NUMBER.fullmatch(f) for f in out) else None


def _split_box(body: str) -> tuple[str, list[str], int] | None:
    """Find the closing paren whose preceding text ends in 7 numbers.

    Returns (label, 7 number strings, index just past ')') or None. Labels may hold commas
    and parentheses: the numbers are always the LAST 7 fields.
    """
    start = 0
    for _ in range(_MAX_CLOSE_CANDIDATES):
        close = body.find(")", start)
        if close < 0:
            return None
        parts = body[:close].split(",")
        if len(parts) >= 8:
            nums = _parse_numbers(parts[-7:])
            if nums is not None:
                return ",".join(parts[:-7]), nums, close + 1
        start = close + 1
    return None


def _is_bins(nums: list[str]) -> bool:
    if not all(_INTEGER.fullmatch(n) for n in nums):
        return False
    vals = [int(n) for n in nums]
    return all(0 <= x < NUM_BINS for x in vals) and (vals[0] > 1 or vals[1] > 1)


def _short(text: str, n: int = 60) -> str:
    short = " ".join(text[: 4 * n].split())
    return short if len(short) <= n else short[:n] + "..."


def _decode_one(ident: str, label: str, nums: list[str], camera: CameraModel,
                norm: PointCloudNorm | None, form: Form) -> GroundedObject | str:
    """A decoded object, or the reason (str) it could not be decoded."""
    use_bins = _is_bins(nums) if form == "auto" else form == "bins"
    vals = [float(n) for n in nums]
    if not all(math.isfinite(x) and abs(x) <= _MAX_ABS_VALUE for x in vals):
        return f"bbox_{ident}: numbers out of range {nums}"
    u, v, zf, af, *sf = vals
    if use_bins:
        if norm is None:
            return f"bbox_{ident}: integer-bin box needs the scene's PointCloudNorm"
        u, v = u / NUM_BINS, v / NUM_BINS
        z = zf / NUM_BINS * WORLD_MAX / norm.scale + norm.shift[2]
        theta = af / NUM_BINS * (ANGLE_MAX - ANGLE_MIN) + ANGLE_MIN
        size = np.abs(np.array(sf)) / NUM_BINS * SCALE_MAX / norm.scale
    else:
        z, theta, size = zf, af, np.abs(np.array(sf))
    if z <= 0:
        return f"bbox_{ident}: depth must be positive, got {z:.4g} m"
    Kn = camera.normalized_intrinsics()
    yn = (v - Kn[1, 2]) / Kn[1, 1]
    xn = (u - Kn[0, 2] - Kn[0, 1] * yn) / Kn[0, 0]
    center_n3d = np.array([-xn * z, -yn * z, z])  # N3D: optical with x, y negated
    try:
        box = Box3D.from_yaw(center_n3d, size, theta, frame=Frame.N3D).to_frame(Frame.OPTICAL)
    except ValueError as exc:
        return f"bbox_{ident}: {exc}"
    obj = GroundedObject(box=box, label=label.strip(), score=-1.0, id=f"bbox_{ident}")
    return obj.with_box_2d(box.project_2d(camera))


def decode_boxes(text: str, camera: CameraModel, norm: PointCloudNorm | None = None, *,
                 form: Form = "auto") -> N3DDecodeResult:
    """Parse every `bbox_<id>=Bbox(...)` in `text`; never raises on the text.

    form: "bins" (integer tokens, needs `norm`), "metric", or "auto" (bins when all 7 numbers
    are integers in [0, 999] and u or v > 1). Unparsable boxes and stray text are reported in
    `problems`; objects are OPTICAL-frame boxes with score -1 and box_2d from projection.
    """
    result = N3DDecodeResult()
    if form not in ("auto", "bins", "metric"):
        result.problems.append(f"unknown form {form!r}; expected 'auto', 'bins' or 'metric'")
        return result
    if not isinstance(text, str):
        result.problems.append(f"expected text, got {type(text).__name__}")
        return result
    starts = list(_BOX_START.finditer(text))
    lead = text[:starts[0].start()] if starts else text
    if lead.strip():
        result.problems.append(f"text outside any box: {_short(lead)!r}")
    seen: set[str] = set()
    with np.errstate(all="ignore"):
        for k, m in enumerate(starts):
            end = starts[k + 1].start() if k + 1 < len(starts) else len(text)
            body = text[m.end():end]
            ident = m.group(1)
            split = _split_box(body)
            if split is None:
                result.problems.append(f"bbox_{ident}: expected '<label>,' + 7 numbers + ')', "
                                       f"got {_short(body)!r}")
                continue
            label, nums, stop = split
            if body[stop:].strip():
                result.problems.append(f"text after bbox_{ident}: {_short(body[stop:])!r}")
            decoded = _decode_one(ident, label, nums, camera, norm, form)
            if isinstance(decoded, str):
                result.problems.append(decoded)
                continue
            if decoded.id in seen:
                result.problems.append(f"{decoded.id}: id repeated; both boxes kept")
            seen.add(decoded.id)
            result.objects.append(decoded)
    return result


# ---------------------------------------------------------------------------------- prompts
def grounding_prompt(question: str) -> str:
    """Stage-1 prompt: the question, then the instruction to ground its objects first."""
    q = question if IMAGE_TOKEN in question else IMAGE_TOKEN + question
    return q + _GROUNDING_SUFFIX + CODE_TEMPLATE


def detection_prompt() -> str:
    """Detect every object in the image (no question)."""
    return IMAGE_TOKEN + _DETECTION_TEXT + CODE_TEMPLATE


def _box_2d_normalized(box_n3d: Box3D, camera: CameraModel) -> list[float]:
    """[cu, cv, w, h] as the reference builds it: centre = projection of the 3D centre, w/h =
    extent of the projected corners of the UNROTATED box (the reference drops the yaw), all
    normalized by image size."""
    Kn = camera.normalized_intrinsics()
    corners = box_n3d.center + np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1)
                                         for sz in (-1, 1)]) * box_n3d.size / 2
    opt = convert_points(np.vstack([box_n3d.center, corners]), Frame.N3D, Frame.OPTICAL)
    front = opt[:, 2] > 0
    if not front[0] or front[1:].sum() == 0:
        return [0.0, 0.0, 0.0, 0.0]
    uv = (opt[front] @ Kn.T)[:, :2] / opt[front][:, 2:3]
    cu, cv = uv[0]
    rest = uv[1:]
    return [float(cu), float(cv), float(np.ptp(rest[:, 0])), float(np.ptp(rest[:, 1]))]


def _r2(values: Sequence[float]) -> list[float]:
    return [round(float(x), 2) + 0.0 for x in values]  # + 0.0 turns -0.0 into 0.0


def reasoning_suffix(objects: Sequence[GroundedObject], camera: CameraModel) -> str:
    """Stage-2 context appended to the question, in the reference demo's exact wording:
    " The 3D bbox of <label> is [x, y, z, sx, sy, sz]. The 2D bbox of <label> is [cu, cv, w, h]. "
    (N3D frame, metres, 2 decimals; 2D box normalized). Two objects list both 3D boxes then both
    2D boxes; three use "a, b and c"; more use Python lists of "<n>_<label>" captions.
    """
    if not objects:
        return ""
    names, b3, b2 = [], [], []
    for i, obj in enumerate(objects):
        box = _n3d_box(obj.box)
        m = re.fullmatch(r"bbox_(\d+)", obj.id or "")
        names.append((m.group(1) if m else str(i), _clean_label(obj.label)))
        b3.append(_r2([*box.center, *box.size]))
        b2.append(_r2(_box_2d_normalized(box, camera)))
    n = len(objects)
    if n == 1:
        lab = names[0][1]
        return f" The 3D bbox of {lab} is {b3[0]}. The 2D bbox of {lab} is {b2[0]}. "
    if n == 2:
        (_, a), (_, b) = names
        return (f" The 3D bbox of {a} is {b3[0]}. The 3D bbox of {b} is {b3[1]}. "
                f"The 2D bbox of {a} is {b2[0]}. The 2D bbox of {b} is {b2[1]}. ")
    if n == 3:
        labels = f"{names[0][1]}, {names[1][1]} and {names[2][1]}"
        return (f" The 3D bbox of {labels} is {b3[0]}, {b3[1]} and {b3[2]}. "
                f"The 2D bbox of {labels} is {b2[0]}, {b2[1]} and {b2[2]}. ")
    captions = [f"{ident}_{lab}" for ident, lab in names]
    return f" The 3D bbox of {captions} is {b3}. The 2D bbox of {captions} is {b2}. "


def reasoning_prompt(question: str, objects: Sequence[GroundedObject], camera: CameraModel) -> str:
    """Stage-2 prompt: <image> + the question's first sentence + reasoning_suffix."""
    q = question.replace(IMAGE_TOKEN, "")
    m = re.match(r"(.+?[.?])", q, flags=re.DOTALL)
    first = m.group(1) if m else q
    return IMAGE_TOKEN + first + reasoning_suffix(objects, camera)
