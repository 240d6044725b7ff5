"""N3D-VLM backend: Qwen2.5-VL + the point-cloud position encoding, from a local checkpoint folder.

What the model sees (as in the reference demo): the image resized so its LONG side is exactly
640 px (LANCZOS, the short side floored), and the point map of that image in the N3D frame,
normalized per image (PointCloudNorm) and turned into the 3D PE inside the vision tower.
Prompts and box text are those of `core.codec_n3d`; boxes come back in the optical frame of the
SOURCE camera with 2D boxes in source pixels.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from ..core.camera import CameraModel
from ..core.codec_n3d import decode_boxes, detection_prompt, grounding_prompt, reasoning_prompt
from ..core.focal import PixelTransform
from ..core.frames import Frame, convert_points
from ..core.objects import GroundedObject
from ..core.pointcloud_norm import PointCloudNorm
from ..core.question_parser import parse_question
from .contract import Grounding, SceneInput, SpatialAnswer
from .fast_decode import DecodeConfig, FastDecoder
from .hf_loading import QwenVLCheckpoint, load_qwen_vl
from .n3d_position_encoding import N3DPositionEncoder


class MissingGeometryError(ValueError):
    """N3D-VLM got a scene without a point map and has no geometry encoder to make one."""


@dataclass(frozen=True)
class N3DVLMConfig:
    device: str = "cuda"
    dtype: str = "bf16"                 # bf16 | fp16 | fp32 (the reference demo ran fp32/fp16)
    image_long_side: int = 640          # px; the reference MoGe/VLM input size
    align_pe: bool = False              # False = the published checkpoint's (misaligned) PE
    max_new_tokens_ground: int = 1024
    max_new_tokens_reason: int = 1024
    fast_decode: bool = True            # static cache + CUDA graph decoder (else model.generate)
    compile_step: bool = False          # torch.compile the decode step (CUDA; ~1 min at start)
    max_seq_len: int = 4096             # tokens of the fast decoder's cache
    trust_remote_code: bool = False


@dataclass(frozen=True)
class PreparedScene:
    """The scene as the model sees it (all on the resized grid)."""

    image: np.ndarray              # (h, w, 3) uint8 RGB, long side = image_long_side
    camera: CameraModel            # intrinsics of `image`
    transform: PixelTransform      # source pixels -> `image` pixels
    points_norm: np.ndarray        # (h, w, 3) float32 normalized N3D cloud
    valid: np.ndarray              # (h, w) bool
    norm: PointCloudNorm
    key: str                       # identity of image + cloud (for KV-cache prefix reuse)


def resize_long_side(width: int, height: int, long_side: int) -> tuple[int, int]:
    """(w, h) with the long side exactly `long_side` and the short side floored (reference demo)."""
    if width >= height:
        return long_side, max(1, int(height * long_side / width))
    return max(1, int(width * long_side / height)), long_side


def split_think(text: str) -> tuple[str, str, list[str]]:
    """'<think>R</think> A' -> (A, R, problems); never raises."""
    m = re.search(r"</think>", text)
    if m is None:
        return text.strip(), "", ["no </think> in the reasoning output; the whole text is the answer"]
    think = text[: m.start()]
    start = think.find("<think>")
    think = think[start + len("<think>"):] if start >= 0 else think
    return text[m.end():].strip(), think.strip(), []


class N3DVLM:
    """SpatialVLM backend for N3D-VLM checkpoints (Qwen2.5-VL architecture)."""

    name = "n3d_vlm"

    def __init__(self, model_dir: str | Path, *, config: N3DVLMConfig = N3DVLMConfig(),
                 geometry_encoder: Any | None = None,
                 checkpoint: QwenVLCheckpoint | None = None) -> None:
        """model_dir: local N3D-VLM folder. geometry_encoder: a `geometry.contract.GeometryEncoder`
        used when a scene carries no point map. `checkpoint` lets tests pass a loaded one."""
        self.config = config
        self.ckpt = checkpoint or load_qwen_vl(model_dir, device=config.device, dtype=config.dtype,
                                               expect_model_type="qwen2_5_vl",
                                               trust_remote_code=config.trust_remote_code)
        self.device = self.ckpt.device
        self.geometry_encoder = geometry_encoder
        self.pe = N3DPositionEncoder(self.ckpt.model, align=config.align_pe)
        self.decoder = (FastDecoder(self.ckpt.model, eos_token_ids=self.ckpt.eos_token_ids(),
                                    config=DecodeConfig(max_seq_len=config.max_seq_len,
                                                      compile_step=config.compile_step))
                        if config.fast_decode else None)
        self._last: tuple[SceneInput, PreparedScene] | None = None

    # ------------------------------------------------------------------ scene preparation
    def prepare(self, scene: SceneInput) -> PreparedScene:
        if self._last is not None and self._last[0] is scene:
            return self._last[1]
        cam = scene.camera
        w, h = resize_long_side(cam.width, cam.height, self.config.image_long_side)
        tf = PixelTransform.resize_to(cam.width, cam.height, w, h)
        image = np.asarray(Image.fromarray(scene.image).resize((w, h), Image.LANCZOS))
        camera = tf.apply_camera(cam)
        if scene.has_measured_geometry:
            points, mask = scene.measured_points()
            # Nearest: a point between two surfaces would be a point on neither.
            pts = tf.apply_image(np.asarray(points, dtype=np.float32), interpolation="nearest", fill=np.nan)
            m = tf.apply_image(np.asarray(mask).astype(np.uint8), interpolation="nearest")
            valid = m.astype(bool) & np.all(np.isfinite(pts), axis=-1)
        elif self.geometry_encoder is not None:
            out = self.geometry_encoder.encode([image], [camera])
            pts, valid = out.points_on_source(0)
        else:
            raise MissingGeometryError(
                "N3D-VLM needs a point map: the scene has no points (no registered depth) and no "
                "geometry encoder was given. Pass depth with the frame, or construct N3DVLM with "
                "geometry_encoder=... (e.g. the MoGe-2 ONNX or compact encoder).")
        if not valid.any():
            raise MissingGeometryError("N3D-VLM needs a point map, but no point of it is valid")
        pts_n3d = convert_points(np.where(valid[..., None], pts, 0.0), Frame.OPTICAL, Frame.N3D)
        norm = PointCloudNorm.from_points(pts_n3d, valid)
        points_norm = norm.apply(pts_n3d).astype(np.float32)
        digest = hashlib.blake2b(digest_size=16)
        for arr in (image, points_norm, valid):
            digest.update(np.ascontiguousarray(arr).tobytes())
        prep = PreparedScene(image=image, camera=camera, transform=tf, points_norm=points_norm,
                             valid=valid, norm=norm, key=digest.hexdigest())
        self._last = (scene, prep)
        return prep

    # ------------------------------------------------------------------ generation
    def generate_text(self, user_text: str, prep: PreparedScene, max_new_tokens: int) -> str:
        """Greedy answer to one user turn ('<image>' marks the image) about the prepared scene."""
        inputs = self.ckpt.encode(user_text, [prep.image])
        self.pe.set_point_maps([(prep.points_norm, prep.valid)])
        return self.ckpt.generate_greedy(inputs, max_new_tokens, decoder=self.decoder, prefix_key=prep.key)

    def _grounding(self, text: str, prep: PreparedScene, scene: SceneInput, spec: Any) -> Grounding:
        raw = self.generate_text(text, prep, self.config.max_new_tokens_ground)
        decoded = decode_boxes(raw, prep.camera, prep.norm, form="bins")
        objects = [_to_source(o, scene.camera) for o in decoded.objects]
        return Grounding(objects=objects, spec=spec, raw_text=raw, problems=list(decoded.problems))

    # ------------------------------------------------------------------ SpatialVLM
    def ground(self, scene: SceneInput, question: str, targets: Sequence[str] = ()) -> Grounding:
        if not question.strip() and targets:
            return self.detect(scene, targets)
        prep = self.prepare(scene)
        return self._grounding(grounding_prompt(question), prep, scene, parse_question(question))

    def detect(self, scene: SceneInput, phrases: Sequence[str] = ()) -> Grounding:
        """All objects ("Detect boxes." prompt); with phrases, a grounding prompt naming them
        (the published model was trained on questions, so phrases go through that path)."""
        prep = self.prepare(scene)
        names = [" ".join(str(p).split()) for p in phrases if str(p).strip()]
        if not names:
            return self._grounding(detection_prompt(), prep, scene, None)
        joined = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        return self._grounding(grounding_prompt(f"Where is the {joined}?"), prep, scene, None)

    def reason(self, scene: SceneInput, question: str, grounding: Grounding) -> SpatialAnswer:
        """Second pass: the question's first sentence + the grounded boxes -> '<think>..</think> a'."""
        prep = self.prepare(scene)
        prompt = reasoning_prompt(question, grounding.objects, prep.camera)
        raw = self.generate_text(prompt, prep, self.config.max_new_tokens_reason)
        answer, think, problems = split_think(raw)
        return SpatialAnswer(grounding=grounding, answer=answer, reasoning=think,
                             problems=problems)

    def close(self) -> None:
        self.pe.remove()
        self.decoder = None
        self._last = None
        self.ckpt.release()


def _to_source(obj: GroundedObject, camera: CameraModel) -> GroundedObject:
    """Optical frame of the source camera (same rays as the resized image) + source-pixel 2D box."""
    o = obj.to_frame(Frame.OPTICAL)
    return o.with_box_2d(o.box.project_2d(camera))
