"""Show an answer: 3D boxes drawn on the image (numpy raster, PNG via PIL) and Rerun recordings.

`draw_boxes` is pure numpy and fast (the ROS node's debug image); `draw_boxes_png` adds labels and
the answer with PIL; `export_rerun` writes a .rrd file (never spawns a viewer). rerun and PIL are
imported inside the functions that need them, so the core stays numpy-only at import time.
All geometry is in the camera OPTICAL frame (x right, y down, z forward, metres); boxes in other
frames are converted.
"""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np

from .box import BOX_EDGES, Box3D
from .camera import CameraModel, check_image
from .frames import Frame, rotation_to_quaternion
from .objects import GroundedObject

_EDGES = np.array(BOX_EDGES, dtype=np.intp)  # (12, 2)
# Distinct, readable on photos (tab10-like), one per object in order.
PALETTE = np.array([
    [31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189],
    [140, 86, 75], [227, 119, 194], [188, 189, 34], [23, 190, 207], [255, 215, 0],
], dtype=np.uint8)
_DISTORTED_EDGE_STEPS = 12  # sub-segments per edge when the lens bends straight edges


def object_color(index: int) -> np.ndarray:
    """(3,) uint8 RGB colour of the index-th object."""
    return PALETTE[index % len(PALETTE)]


def _optical_boxes(objects: Sequence[GroundedObject]) -> list[Box3D]:
    boxes = []
    for i, o in enumerate(objects):
        if not isinstance(o, GroundedObject):
            raise TypeError(f"objects[{i}] must be a GroundedObject, got {type(o).__name__}")
        boxes.append(o.box.to_frame(Frame.OPTICAL))
    return boxes


# ---------------------------------------------------------------------- projection of edges
def _edge_segments(boxes: Sequence[Box3D], camera: CameraModel,
                   near: float) -> tuple[np.ndarray, np.ndarray]:
    """Projected box edges as 2D segments: ((S, 2, 2) pixels, (S,) object index).

    Edges are clipped at z = near in 3D first (a point behind the camera has no image); with lens
    distortion each edge is split so the drawn line follows the curved image of the edge.
    """
    if not boxes:
        return np.zeros((0, 2, 2)), np.zeros(0, dtype=np.intp)
    corners = np.stack([b.corners() for b in boxes])            # (B, 8, 3) metres, optical
    p0 = corners[:, _EDGES[:, 0]].reshape(-1, 3)                 # (B*12, 3)
    p1 = corners[:, _EDGES[:, 1]].reshape(-1, 3)
    owner = np.repeat(np.arange(len(boxes)), len(_EDGES))
    z0, z1 = p0[:, 2], p1[:, 2]
    keep = (z0 >= near) | (z1 >= near)
    p0, p1, z0, z1, owner = p0[keep], p1[keep], z0[keep], z1[keep], owner[keep]
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.clip((near - z0) / (z1 - z0), 0.0, 1.0)[:, None]
    clipped = p0 + s * (p1 - p0)                                 # the point on z = near
    p0 = np.where((z0 < near)[:, None], clipped, p0)
    p1 = np.where((z1 < near)[:, None], clipped, p1)
    steps = _DISTORTED_EDGE_STEPS if camera.has_distortion else 1
    t = np.linspace(0.0, 1.0, steps + 1)[None, :, None]
    pts = p0[:, None, :] + t * (p1 - p0)[:, None, :]             # (E, steps+1, 3)
    uv = camera.project(pts)                                     # (E, steps+1, 2)
    seg = np.stack([uv[:, :-1], uv[:, 1:]], axis=2).reshape(-1, 2, 2)
    owner = np.repeat(owner, steps)
    ok = np.all(np.isfinite(seg), axis=(1, 2))
    return seg[ok], owner[ok]


def _clip_segments(seg: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Liang-Barsky clip of (S, 2, 2) segments to the image rectangle; returns (kept segments, mask)."""
    lo = np.array([-0.5, -0.5])
    hi = np.array([width - 0.5, height - 0.5])
    a, d = seg[:, 0], seg[:, 1] - seg[:, 0]
    t0 = np.zeros(len(seg))
    t1 = np.ones(len(seg))
    ok = np.ones(len(seg), dtype=bool)
    for axis in range(2):
        for p, q in ((-d[:, axis], a[:, axis] - lo[axis]), (d[:, axis], hi[axis] - a[:, axis])):
            parallel = p == 0
            ok &= ~(parallel & (q < 0))
            with np.errstate(divide="ignore", invalid="ignore"):
                r = np.where(parallel, 0.0, q / np.where(parallel, 1.0, p))
            t0 = np.where(~parallel & (p < 0), np.maximum(t0, r), t0)
            t1 = np.where(~parallel & (p > 0), np.minimum(t1, r), t1)
    ok &= t0 <= t1
    out = np.stack([a + t0[:, None] * d, a + t1[:, None] * d], axis=1)
    return out[ok], ok


def _rasterize(canvas: np.ndarray, seg: np.ndarray, colors: np.ndarray, thickness: int) -> None:
    """Draw (S, 2, 2) pixel segments into canvas (H, W, 3) in place, colours (S, 3) uint8."""
    if len(seg) == 0:
        return
    H, W = canvas.shape[:2]
    d = seg[:, 1] - seg[:, 0]
    n = np.ceil(np.max(np.abs(d), axis=1)).astype(np.intp) + 1   # samples: about one per pixel
    starts = np.cumsum(n) - n
    idx = np.repeat(np.arange(len(seg)), n)
    t = (np.arange(int(n.sum())) - np.repeat(starts, n)) / np.maximum(np.repeat(n, n) - 1, 1)
    uv = seg[idx, 0] + t[:, None] * d[idx]
    u = np.rint(uv[:, 0]).astype(np.intp)
    v = np.rint(uv[:, 1]).astype(np.intp)
    c = colors[idx]
    r0 = -((thickness - 1) // 2)
    for du in range(r0, r0 + thickness):
        for dv in range(r0, r0 + thickness):
            uu, vv = u + du, v + dv
            inside = (uu >= 0) & (uu < W) & (vv >= 0) & (vv < H)
            canvas[vv[inside], uu[inside]] = c[inside]


def draw_boxes(image: np.ndarray, camera: CameraModel, objects: Sequence[GroundedObject], *,
               thickness: int = 2, near: float = 1e-2) -> np.ndarray:
    """(H, W, 3) uint8 copy of `image` with the 12 edges of every object's box, one colour per object.

    `camera` describes `image`; boxes in any frame (converted to optical). No text (see
    `draw_boxes_png`), so it stays cheap enough for a per-frame debug image.
    """
    img = check_image(image, camera)
    if int(thickness) < 1:
        raise ValueError(f"thickness must be >= 1 pixel, got {thickness}")
    canvas = img.copy()
    seg, owner = _edge_segments(_optical_boxes(objects), camera, near)
    seg, keep = _clip_segments(seg, camera.width, camera.height)
    colors = PALETTE[owner[keep] % len(PALETTE)]
    _rasterize(canvas, seg, colors, int(thickness))
    return canvas


# ---------------------------------------------------------------------- PNG with labels
def _font(size: int):  # -> PIL font; lazily imported PIL
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()


def _label_text(obj: GroundedObject, index: int) -> str:
    ident = obj.id or f"#{index}"
    score = f" {obj.score:.2f}" if obj.score >= 0 else ""
    return f"{ident}: {obj.label}{score}"


def draw_boxes_png(path: str | Path | None, image: np.ndarray, camera: CameraModel,
                   objects: Sequence[GroundedObject], *, answer: str = "",
                   thickness: int = 2) -> np.ndarray:
    """`draw_boxes` plus each object's label at its projected 2D box and `answer` along the bottom.

    Returns the drawn (H, W, 3) uint8 RGB array; also writes it as PNG to `path` when given.
    Needs Pillow (ImportError with a hint otherwise).
    """
    try:
        from PIL import Image, ImageDraw
    except ImportError as exc:  # pragma: no cover - Pillow is a declared dependency
        raise ImportError("draw_boxes_png needs Pillow: pip install pillow") from exc
    drawn = draw_boxes(image, camera, objects, thickness=thickness)
    pil = Image.fromarray(drawn)
    draw = ImageDraw.Draw(pil)
    size = max(10, camera.height // 40)
    font = _font(size)
    for i, (obj, box) in enumerate(zip(objects, _optical_boxes(objects))):
        rect = box.project_2d(camera)
        if rect is None:
            continue
        text = _label_text(obj, i)
        x, y = float(rect[0]), max(float(rect[1]) - size - 4, 0.0)
        l, t, r, b = draw.textbbox((x, y), text, font=font)
        draw.rectangle((l - 2, t - 2, r + 2, b + 2), fill=tuple(int(v) for v in object_color(i)))
        draw.text((x, y), text, fill=(255, 255, 255), font=font)
    if answer:
        chars = max(20, int(camera.width / (0.6 * size)))
        lines = textwrap.wrap(answer, width=chars)[:6]
        box_h = (size + 4) * len(lines) + 6
        draw.rectangle((0, camera.height - box_h, camera.width, camera.height), fill=(0, 0, 0))
        for k, line in enumerate(lines):
            draw.text((4, camera.height - box_h + 3 + k * (size + 4)), line, fill=(255, 255, 255), font=font)
    out = np.asarray(pil, dtype=np.uint8).copy()
    if path is not None:
        pil.save(str(path), format="PNG")
    return out


# ---------------------------------------------------------------------- Rerun
def _point_colors(image: np.ndarray, rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Colours for point-map pixels (rows, cols) of a map of `shape`, sampled nearest from `image`."""
    H, W = image.shape[:2]
    r = np.clip(((rows + 0.5) * H / shape[0]).astype(np.intp), 0, H - 1)
    c = np.clip(((cols + 0.5) * W / shape[1]).astype(np.intp), 0, W - 1)
    return image[r, c]


def export_rerun(path: str | Path, image: np.ndarray, camera: CameraModel,
                 objects: Sequence[GroundedObject], *, points: np.ndarray | None = None,
                 mask: np.ndarray | None = None, answer: str = "", question: str = "",
                 max_points: int = 200_000, application_id: str = "n3d_ros") -> None:
    """Write a Rerun recording (.rrd) of one answer; nothing is spawned or served.

    Entities: `world` (RDF view coordinates = optical frame), `world/camera` (Pinhole from K, the
    image; lens distortion is not modelled by Rerun's pinhole), `world/points` (valid points of the
    (h, w, 3) optical-frame point map, any resolution, coloured from the image, at most
    `max_points` by a regular stride), `world/boxes` (centres, half sizes, quaternions, labels,
    the same colours as `draw_boxes`), `answer` (markdown with the question and the answer).
    """
    try:
        import rerun as rr
    except ImportError as exc:
        raise ImportError("export_rerun needs the Rerun SDK: pip install rerun-sdk") from exc
    img = check_image(image, camera)
    boxes = _optical_boxes(objects)
    pts_xyz = pts_rgb = None
    if points is not None:
        pts = np.asarray(points, dtype=np.float64)
        if pts.ndim != 3 or pts.shape[2] < 3:
            raise ValueError(f"points must be an (H, W, 3) optical-frame point map, got {pts.shape}")
        valid = np.all(np.isfinite(pts[..., :3]), axis=-1)
        if mask is not None:
            m = np.asarray(mask, dtype=bool)
            if m.shape != pts.shape[:2]:
                raise ValueError(f"mask must be {pts.shape[:2]} like the point map, got {m.shape}")
            valid &= m
        rows, cols = np.nonzero(valid)
        stride = max(1, int(np.ceil(len(rows) / max(int(max_points), 1))))
        rows, cols = rows[::stride], cols[::stride]
        pts_xyz = pts[rows, cols, :3].astype(np.float32)
        pts_rgb = _point_colors(img, rows, cols, pts.shape[:2])

    rec = rr.RecordingStream(application_id)
    rec.save(str(path))
    rec.log("world", rr.ViewCoordinates.RDF, static=True)
    rec.log("world/camera", rr.Pinhole(image_from_camera=camera.K, width=camera.width, height=camera.height,
                                       camera_xyz=rr.ViewCoordinates.RDF), static=True)
    rec.log("world/camera", rr.Image(img))
    if pts_xyz is not None:
        rec.log("world/points", rr.Points3D(pts_xyz, colors=pts_rgb, radii=0.005))
    if boxes:
        rec.log("world/boxes", rr.Boxes3D(
            centers=np.stack([b.center for b in boxes]),
            half_sizes=np.stack([b.size / 2.0 for b in boxes]),
            quaternions=[rr.Quaternion(xyzw=rotation_to_quaternion(b.rotation)) for b in boxes],
            labels=[_label_text(o, i) for i, o in enumerate(objects)],
            colors=np.stack([object_color(i) for i in range(len(boxes))]),
        ))
    text = "\n\n".join(part for part in (f"**Q:** {question}" if question else "",
                                         f"**A:** {answer}" if answer else "") if part)
    rec.log("answer", rr.TextDocument(text or "(no answer)", media_type=rr.MediaType.MARKDOWN))
    rec.flush()
    rec.disconnect()  # closes the file sink so the footer is written
