"""Qwen3-VL backend: native 3D grounding (bbox_3d JSON) from a local checkpoint folder.

Camera model. Qwen3-VL is given no intrinsics: it predicts metric boxes for a VIRTUAL camera
(the reference code assumes a 60 degree field of view on both axes, principal point at the
image centre; `core.codec_qwen3.virtual_camera`). Its (x/z, y/z) therefore say where the object
is IN THE IMAGE through that virtual camera, and z says how far. With `reray=True` (default) each
centre is projected with the virtual camera and lifted again through the TRUE camera at the same
depth, and the box is turned by the rotation between the two rays, so the box lies where the
object is seen; sizes stay metric. With `reray=False` the boxes are used as emitted.
Resizing: a uniform resize keeps the field of view, so the metric boxes need NO rescaling when
the image is shrunk for the model (only pixel quantities would, and the JSON has none); the
virtual camera is built for the source size, which gives the same normalized rays.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ..core.box import Box3D
from ..core.camera import CameraModel
from ..core.codec_qwen3 import decode_qwen3_json, encode_qwen3_json, qwen3_grounding_prompt, virtual_camera
from ..core.frames import Frame
from ..core.objects import GroundedObject
from ..core.question_parser import parse_question
from ..core.questions import QuerySpec
from ..core.reasoning import ReasoningError, answer_query
from .contract import Grounding, SceneInput, SpatialAnswer
from .fast_decode import DecodeConfig, FastDecoder
from .hf_loading import QwenVLCheckpoint, load_qwen_vl
from .n3d_vlm import split_think


@dataclass(frozen=True)
class Qwen3VLConfig:
    device: str = "cuda"
    dtype: str = "bf16"
    max_long_side: int = 1280           # px; larger images are shrunk (never enlarged)
    virtual_fov_deg: float = 60.0       # field of view the model's boxes are read with
    reray: bool = True                  # move boxes onto the true camera's rays (module docstring)
    max_new_tokens_ground: int = 1024
    max_new_tokens_reason: int = 512
    fast_decode: bool = True
    compile_step: bool = False          # torch.compile the decode step (CUDA; ~1 min at start)
    max_seq_len: int = 8192
    trust_remote_code: bool = False


def rotation_between_rays(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(3,3) smallest rotation taking direction a to direction b (Rodrigues)."""
    a = np.asarray(a, dtype=np.float64) / np.linalg.norm(a)
    b = np.asarray(b, dtype=np.float64) / np.linalg.norm(b)
    v = np.cross(a, b)
    c = float(np.dot(a, b))
    if np.linalg.norm(v) < 1e-12:
        return np.eye(3)  # parallel (opposite rays cannot occur: both have z > 0)
    vx = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + vx + vx @ vx * (1.0 / (1.0 + c))


def reray_box(box: Box3D, virtual: CameraModel, true: CameraModel) -> Box3D:
    """Keep the box's image position (through `virtual`) and depth; re-lift through `true`."""
    b = box.to_frame(Frame.OPTICAL)
    c = b.center
    if c[2] <= 0:
        return b
    uv = virtual.project(c)
    new_c = true.unproject(uv, c[2])
    R = rotation_between_rays(c, new_c)
    return Box3D(new_c, b.size, R @ b.rotation, Frame.OPTICAL)


def order_by_targets(objects: Sequence[GroundedObject], targets: Sequence[str]) -> list[GroundedObject]:
    """Objects reordered so objects[i] matches targets[i] (exact label, then containment, then
    the next unused object); the rest follow in their original order."""
    # Work on indices: GroundedObject/Box3D dataclass equality compares numpy arrays and raises.
    left = list(range(len(objects)))
    chosen: list[int] = []
    norm = lambda s: " ".join(str(s).lower().split())  # noqa: E731
    labels = [norm(o.label) for o in objects]
    for t in targets:
        tn = norm(t)
        pick = next((i for i in left if labels[i] == tn), None)
        if pick is None:
            pick = next((i for i in left if tn and labels[i] and (tn in labels[i] or labels[i] in tn)),
                        None)
        if pick is None and left:
            pick = left[0]
        if pick is not None:
            chosen.append(pick)
            left.remove(pick)
    return [objects[i] for i in chosen + left]


class Qwen3VL:
    """SpatialVLM backend for Qwen3-VL checkpoints (3D grounding as JSON)."""

    name = "qwen3_vl"

    def __init__(self, model_dir: str | Path, *, config: Qwen3VLConfig = Qwen3VLConfig(),
                 checkpoint: QwenVLCheckpoint | None = None) -> None:
        self.config = config
        self.ckpt = checkpoint or load_qwen_vl(model_dir, device=config.device, dtype=config.dtype,
                                               expect_model_type="qwen3_vl", system_prompt=None,
                                               trust_remote_code=config.trust_remote_code)
        self.device = self.ckpt.device
        self.decoder = (FastDecoder(self.ckpt.model, eos_token_ids=self.ckpt.eos_token_ids(),
                                    config=DecodeConfig(max_seq_len=config.max_seq_len,
                                                      compile_step=config.compile_step))
                        if config.fast_decode else None)

    def model_image(self, scene: SceneInput) -> np.ndarray:
        h, w = scene.image.shape[:2]
        s = min(1.0, self.config.max_long_side / max(h, w))
        if s >= 1.0:
            return scene.image
        size = (max(1, round(w * s)), max(1, round(h * s)))
        return np.asarray(Image.fromarray(scene.image).resize(size, Image.LANCZOS))

    def generate_text(self, user_text: str, image: np.ndarray, max_new_tokens: int) -> str:
        inputs = self.ckpt.encode(user_text, [image])
        key = hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=16).hexdigest()
        return self.ckpt.generate_greedy(inputs, max_new_tokens, decoder=self.decoder, prefix_key=key)

    def decode(self, raw: str, camera: CameraModel) -> tuple[list[GroundedObject], list[str]]:
        """JSON text -> optical-frame objects of `camera` (source) with source-pixel 2D boxes."""
        virtual = virtual_camera(camera.width, camera.height, self.config.virtual_fov_deg)
        result = decode_qwen3_json(raw, camera=None)
        objects = []
        for o in result.objects:
            box = reray_box(o.box, virtual, camera) if self.config.reray else o.box
            objects.append(replace(o, box=box).with_box_2d(box.project_2d(camera)))
        return objects, list(result.problems)

    # ------------------------------------------------------------------ SpatialVLM
    def ground(self, scene: SceneInput, question: str, targets: Sequence[str] = ()) -> Grounding:
        spec = parse_question(question) if question.strip() else None
        phrases = [t for t in targets if str(t).strip()] or (list(spec.targets) if spec else [])
        return self._ground(scene, phrases or ["all objects"], spec)

    def detect(self, scene: SceneInput, phrases: Sequence[str] = ()) -> Grounding:
        return self._ground(scene, [p for p in phrases if str(p).strip()] or ["all objects"], None)

    def _ground(self, scene: SceneInput, phrases: list[str], spec: QuerySpec | None) -> Grounding:
        prompt = "<image>" + qwen3_grounding_prompt(phrases)
        raw = self.generate_text(prompt, self.model_image(scene), self.config.max_new_tokens_ground)
        objects, problems = self.decode(raw, scene.camera)
        return Grounding(objects=objects, spec=spec, raw_text=raw, problems=problems)

    def reason(self, scene: SceneInput, question: str, grounding: Grounding) -> SpatialAnswer:
        """Exact box arithmetic (core.reasoning) when the question parses; otherwise a second
        generate call with the grounded boxes as JSON context."""
        spec = grounding.spec or (parse_question(question) if question.strip() else None)
        problems: list[str] = []
        if spec is not None:
            objs = order_by_targets(grounding.objects, spec.targets)
            try:
                ans = answer_query(spec, objs, up=grounding.up)
                return SpatialAnswer(grounding=grounding, answer=ans.text, reasoning=ans.reasoning,
                                     value=ans.value)
            except ReasoningError as exc:
                problems.append(f"box arithmetic could not answer ({exc}); asked the model")
        context = encode_qwen3_json(grounding.objects)
        prompt = (f"<image>{question.strip()}\nThe objects' 3D boxes in the camera frame (metres, "
                  f"x right, y down, z forward) are: {context}\nAnswer the question.")
        raw = self.generate_text(prompt, self.model_image(scene), self.config.max_new_tokens_reason)
        answer, think, _ = split_think(raw) if "</think>" in raw else (raw.strip(), "", [])
        return SpatialAnswer(grounding=grounding, answer=re.sub(r"\s+", " ", answer).strip(),
                             reasoning=think, problems=problems)

    def close(self) -> None:
        self.decoder = None
        self.ckpt.release()
