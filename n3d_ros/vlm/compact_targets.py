"""What the compact model writes, and the box parameterization of its grounding head.

Kept in one place because training (targets) and inference (decoding) must agree exactly.

Output grammar:  <k:kind> [class words <set>] (label words <obj>)* <eos>
  - pairwise / single kinds: one `label <obj>` per target, in the question's order;
  - set kinds (count, closest, ...): `<set>` (preceded by the class phrase if the question names
    one), then every candidate object left to right; models with a dense head stop at `<set>`
    and read the objects from the heat map instead.
Box parameters (model grid, gravity-levelled frame):
  du, dv   centre offset from the patch centre, in patch units
  dlogz    log(centre z / patch mean z)
  log w, log h, log l   sizes along the levelled box axes (x, vertical, z)
  sin 2t, cos 2t        yaw about the vertical axis (a box is the same under a half turn)
Mirrored image (pixel column u -> W-1-u, i.e. the scene reflected in the camera's y-z plane): a
target's patch column c -> grid_w-1-c and its parameters times MIRROR_SIGNS (du and the yaw flip).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from ..core.box import Box3D
from ..core.camera import CameraModel
from ..core.frames import Frame, axis_rotation, gravity_rotation
from ..core.question_parser import singularize
from ..core.questions import SET_KINDS, QuerySpec, QuestionKind
from .compact_tokenizer import CompactTokenizer


# Box parameters of the mirrored scene: du -> -du, yaw -> -yaw (so sin 2t -> -sin 2t); the rest stay.
MIRROR_SIGNS = (-1.0, 1.0, 1.0, 1.0, 1.0, 1.0, -1.0, 1.0)
_MIRRORED_PARAMS = tuple(i for i, sign in enumerate(MIRROR_SIGNS) if sign < 0)


def mirror_box_params(params: torch.Tensor) -> torch.Tensor:
    """(..., 8) box parameters of the mirrored scene (MIRROR_SIGNS). Negated by slices, not times a
    constant tensor, so a call on the GPU copies nothing to it."""
    out = params.clone()
    for c in _MIRRORED_PARAMS:
        out[..., c] = -out[..., c]
    return out


def mirror_patch_maps(values: torch.Tensor, grid_h: int, grid_w: int, dim: int = 0) -> torch.Tensor:
    """Values per patch (row-major patches along `dim`) of an image -> those of its mirror image
    (patch columns reversed); its own inverse."""
    return values.unflatten(dim, (grid_h, grid_w)).flip(dim + 1).flatten(dim, dim + 1)


@dataclass(frozen=True)
class GroundingTarget:
    patch: int                 # index into the (grid_h * grid_w) patch grid, row-major
    params: np.ndarray         # (8,) see module docstring; dlogz holds log(centre z) (absolute)


def output_tokens(tok: CompactTokenizer, spec: QuerySpec, labels: Sequence[str]) -> list[int]:
    """Token ids of the answer sequence (without the leading <sep>), ending with <eos>.
    `labels` are the objects to list (for a dense-head model's set kinds: none)."""
    ids = [tok.kind_ids[spec.kind]]
    if spec.kind in SET_KINDS:
        if spec.targets:
            ids += tok.encode_words(spec.targets[0])
        ids.append(tok.set_id)
    for label in labels:
        ids += tok.encode_words(label)
        ids.append(tok.obj_id)
    ids.append(tok.eos_id)
    return ids


def box_to_target(box: Box3D, camera: CameraModel, up: np.ndarray, grid_w: int, grid_h: int,
                  patch: int) -> GroundingTarget | None:
    """Ground-truth head target of `box` (any frame) seen by the model-grid `camera`.

    None when the centre is behind the camera."""
    b = box.to_frame(Frame.OPTICAL).gravity_aligned(up)
    c = b.center
    if c[2] <= 1e-3:
        return None
    u, v = camera.project(c[None])[0]
    col = int(np.clip(np.floor((u + 0.5) / patch), 0, grid_w - 1))
    row = int(np.clip(np.floor((v + 0.5) / patch), 0, grid_h - 1))
    du = (u - ((col + 0.5) * patch - 0.5)) / patch
    dv = (v - ((row + 0.5) * patch - 0.5)) / patch
    R_level = gravity_rotation(up, Frame.OPTICAL) @ b.rotation
    yaw = Box3D(np.zeros(3), b.size, R_level, Frame.OPTICAL).yaw
    params = np.array([np.clip(du, -1, 1), np.clip(dv, -1, 1), np.log(c[2]),
                       *np.log(np.maximum(b.size, 1e-3)), np.sin(2 * yaw), np.cos(2 * yaw)])
    return GroundingTarget(patch=row * grid_w + col, params=params)


def target_to_box(patch_index: int, params: np.ndarray, patch_z: float, camera: CameraModel,
                  up: np.ndarray, grid_w: int, patch: int) -> Box3D:
    """Inverse of `box_to_target` given the reference depth of the chosen patch: an optical-frame
    box of `camera` (model grid)."""
    row, col = divmod(int(patch_index), grid_w)
    u = (col + 0.5) * patch - 0.5 + float(params[0]) * patch
    v = (row + 0.5) * patch - 0.5 + float(params[1]) * patch
    z = float(patch_z) * float(np.exp(params[2]))
    center = camera.unproject(np.array([u, v]), z)
    size = np.exp(np.clip(params[3:6], -5.0, 3.0))
    yaw = 0.5 * float(np.arctan2(params[6], params[7]))
    R = gravity_rotation(up, Frame.OPTICAL).T @ axis_rotation(1, yaw)
    return Box3D(center, size, R, Frame.OPTICAL)


@dataclass
class ParsedOutput:
    """The model's output sequence read back as a question spec plus object labels."""
    kind: QuestionKind | None = None
    class_phrase: str = ""
    labels: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def spec(self) -> QuerySpec | None:
        if self.kind is None:
            return None
        try:
            if self.kind in SET_KINDS:
                return QuerySpec(self.kind, (self.class_phrase,) if self.class_phrase else ())
            return QuerySpec(self.kind, tuple(self.labels))
        except ValueError as exc:  # e.g. a pairwise kind with one grounded object
            self.problems.append(str(exc))
            return None


# ------------------------------------------------------------------------- dense head
def phrase_class(phrase: str, kinds: Sequence[str], colours: Sequence[str]) -> tuple[int | None, int | None]:
    """(kind index, colour index) a phrase names, e.g. "the red mugs" -> (mug, red); None where it
    names none (or a word the closed world lacks)."""
    kind = colour = None
    for w in phrase.lower().replace("-", " ").split():
        w = w.strip(".,;:!?'\"")
        if w in colours:
            colour = colours.index(w)
        elif w in kinds:
            kind = kinds.index(w)
        elif singularize(w) in kinds:
            kind = kinds.index(singularize(w))
    return kind, colour


def colour_contradiction(question: str, phrases: Sequence[str], kinds: Sequence[str],
                         colours: Sequence[str]) -> str | None:
    """The first phrase whose colour the question contradicts, else None: the phrase names a kind
    that the question names only with other colours ("brown plant" for "...the brown chair from the
    orange plant?"). A phrase may add a colour to a kind the question names bare ("the mug" ->
    "purple mug"): the model reads it off the image, as trained."""
    words = question.replace("-", " ").split()
    named: dict[int, set[int | None]] = {}   # kind -> colours the question gives it (None: bare)
    for i, w in enumerate(words):
        kind = phrase_class(w, kinds, colours)[0]
        if kind is not None:
            named.setdefault(kind, set()).add(phrase_class(words[i - 1], kinds, colours)[1] if i else None)
    for phrase in phrases:
        kind, colour = phrase_class(phrase, kinds, colours)
        said = named.get(kind)
        if kind is not None and colour is not None and said and None not in said and colour not in said:
            return phrase
    return None


@dataclass(frozen=True)
class DenseTarget:
    """One object's supervision of the dense head (model grid)."""
    kind: int
    colour: int
    target: GroundingTarget
    centre: tuple[float, float]    # (col, row) of the projected centre, in patch units
    sigma: float                   # heat-map spread, patches


def dense_target(box: Box3D, kind: int, colour: int, camera: CameraModel, up: np.ndarray, grid_w: int,
                 grid_h: int, patch: int) -> DenseTarget | None:
    t = box_to_target(box, camera, up, grid_w, grid_h, patch)
    if t is None:
        return None
    row, col = divmod(t.patch, grid_w)
    centre = (col + 0.5 + float(t.params[0]), row + 0.5 + float(t.params[1]))
    b2 = box.project_2d(camera)
    extent = 1.0 if b2 is None else min(b2[2] - b2[0], b2[3] - b2[1]) / patch
    # CenterNet's size-adaptive spread: neighbours of a large object's centre are softer negatives.
    return DenseTarget(kind, colour, t, centre, float(np.clip(extent / 6.0, 0.5, 2.0)))


def heat_target(targets: Sequence[DenseTarget], grid_h: int, grid_w: int, n_kinds: int) -> np.ndarray:
    """(grid_h * grid_w, n_kinds) heat map: 1 at each centre patch, a Gaussian around it."""
    rows, cols = np.mgrid[0:grid_h, 0:grid_w]
    heat = np.zeros((grid_h, grid_w, n_kinds), np.float32)
    for t in targets:
        d2 = (cols + 0.5 - t.centre[0]) ** 2 + (rows + 0.5 - t.centre[1]) ** 2
        g = np.exp(-d2 / (2 * t.sigma ** 2))
        heat[..., t.kind] = np.maximum(heat[..., t.kind], g)
    flat = heat.reshape(grid_h * grid_w, n_kinds)
    for t in targets:
        flat[t.target.patch, t.kind] = 1.0
    return flat
