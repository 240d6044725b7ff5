"""One camera frame + one question -> a grounded, metric answer. No ROS here.

The pipeline owns the model backend, turns measured depth into the geometry the models use,
and converts every failure into a `QueryResult` with a message that says what to do.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..core.camera import valid_depth
from ..core.questions import PAIRWISE_KINDS, SINGLE_KINDS
from ..vlm.contract import ModelLoadError, SceneInput, SpatialVLM
from .types import CameraFrame, QueryResult

LOG = logging.getLogger("n3d_ros.pipeline")
BACKENDS = ("compact", "n3d_vlm", "qwen3_vl")
GEOMETRY_BACKENDS = ("auto", "tensorrt", "onnxruntime", "torch", "torch_compiled")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class PipelineConfig:
    backend: str = "compact"         # compact (built-in) | n3d_vlm | qwen3_vl
    model_dir: str = ""              # "" = built-in models/n3d_compact (compact only)
    geometry: str = "auto"           # geometry encoder runtime
    device: str = "auto"             # auto = cuda when available
    precision: str = "fp32"          # of the large checkpoints / encoder engine
    engine_cache_dir: str = ""       # TensorRT engine cache ("" = ~/.cache/n3d_ros/engines)
    max_new_tokens: int = 256        # generation limit of the large checkpoints
    moge_onnx: str = ""              # n3d_vlm: MoGe-2 ONNX geometry encoder ("" = built-in encoder)
    encode_cache: bool = True        # compact: reuse the last frame's encoding for the same frame
    # compact: model folders (comma-separated, relative to the model folder) whose dense maps are averaged
    # with the model's; "" = the folder's own inference.ensemble, "none" = the model alone
    ensemble: str = ""

    def __post_init__(self) -> None:
        problems = []
        for name, value, allowed in (("backend", self.backend, BACKENDS),
                                     ("geometry", self.geometry, GEOMETRY_BACKENDS),
                                     ("device", self.device, DEVICES),
                                     ("precision", self.precision, PRECISIONS)):
            if value not in allowed:
                problems.append(f"{name}={value!r} (allowed: {', '.join(allowed)})")
        if self.backend != "compact" and not self.model_dir:
            problems.append(f"backend {self.backend} needs model_dir: a local checkpoint folder")
        if self.backend != "compact" and self.ensemble.strip():
            problems.append(f"ensemble={self.ensemble!r}: only the compact backend averages models")
        if not 1 <= int(self.max_new_tokens) <= 4096:
            problems.append(f"max_new_tokens={self.max_new_tokens} (allowed: 1..4096)")
        if problems:
            raise ValueError("invalid pipeline configuration: " + "; ".join(problems))

    def ensemble_members(self) -> list[str] | None:
        """`ensemble` as CompactSpatialVLM takes it: None = the folder's own setting, [] = none."""
        if not self.ensemble.strip():
            return None
        if self.ensemble.strip() == "none":
            return []
        return [m.strip() for m in self.ensemble.split(",") if m.strip()]

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch
        return "cuda" if torch.cuda.is_available() else "cpu"


def load_backend(cfg: PipelineConfig) -> SpatialVLM:
    device = cfg.resolved_device()
    if cfg.backend == "compact":
        from ..vlm.compact_backend import CompactSpatialVLM
        return CompactSpatialVLM(cfg.model_dir or None, device=device, geometry_backend=cfg.geometry,
                                 precision="fp32" if device == "cpu" else cfg.precision,
                                 engine_cache_dir=cfg.engine_cache_dir, encode_cache=cfg.encode_cache,
                                 ensemble=cfg.ensemble_members())
    dtype = "fp32" if device == "cpu" else cfg.precision
    from ..vlm.hf_loading import validate_checkpoint_dir
    # Check the folder before loading anything else, so a wrong path fails in milliseconds.
    validate_checkpoint_dir(cfg.model_dir, expect_model_type="qwen2_5_vl" if cfg.backend == "n3d_vlm" else "qwen3_vl")
    if cfg.backend == "n3d_vlm":
        from ..vlm.n3d_vlm import N3DVLM, N3DVLMConfig
        return N3DVLM(cfg.model_dir, geometry_encoder=_n3d_geometry(cfg, device),
                      config=N3DVLMConfig(device=device, dtype=dtype, max_new_tokens_ground=cfg.max_new_tokens,
                                          max_new_tokens_reason=cfg.max_new_tokens))
    from ..vlm.qwen3_vl import Qwen3VL, Qwen3VLConfig
    return Qwen3VL(cfg.model_dir, config=Qwen3VLConfig(device=device, dtype=dtype,
                                                       max_new_tokens_ground=cfg.max_new_tokens,
                                                       max_new_tokens_reason=cfg.max_new_tokens))


def _n3d_geometry(cfg: PipelineConfig, device: str):
    """N3D-VLM needs a metric point map: a user's MoGe-2 ONNX when given, else the built-in encoder."""
    from ..geometry.factory import make_encoder
    cache = cfg.engine_cache_dir or None
    if cfg.moge_onnx:
        return make_encoder("moge", onnx_path=cfg.moge_onnx, backend=cfg.geometry, device=device,
                            precision=cfg.precision, cache_dir=cache, long_side=640)
    from ..vlm.compact_backend import default_model_dir, encoder_config, read_model_config
    d = default_model_dir()
    enc_cfg = encoder_config(read_model_config(d)["encoder"])
    onnx = d / "encoder.onnx"
    return make_encoder("compact", weights=str(d / "encoder.safetensors"),
                        onnx_path=str(onnx) if onnx.is_file() else None, config=enc_cfg,
                        backend=cfg.geometry, device=device, precision=cfg.precision, cache_dir=cache)


class SpatialPipeline:
    def __init__(self, config: PipelineConfig | None = None, *, backend: SpatialVLM | None = None) -> None:
        self.config = config or PipelineConfig()
        self.vlm: SpatialVLM | None = backend if backend is not None else load_backend(self.config)
        self.backend_name = self.vlm.name
        self.device = self.vlm.device
        self.geometry_backend = getattr(self.vlm, "geometry_backend", "depth or none")

    def warmup(self) -> None:
        """One inference on a blank frame so first-query latency excludes lazy initialisation."""
        from ..core.camera import CameraModel
        cam = CameraModel.from_intrinsics(300.0, 300.0, 159.5, 119.5, 320, 240)
        frame = CameraFrame(image=np.full((240, 320, 3), 128, np.uint8), camera=cam)
        t0 = time.perf_counter()
        self.query(frame, "where is the chair?")
        LOG.info("warm-up query took %.3f s", time.perf_counter() - t0)

    def query(self, frame: CameraFrame, question: str, targets: Sequence[str] = (), *,
              detect_only: bool = False) -> QueryResult:
        if self.vlm is None:
            return QueryResult(False, "the pipeline is closed (node deactivated); activate it again")
        t0 = time.perf_counter()
        scene, geometry = self._scene(frame)
        try:
            if detect_only:
                grounding = self.vlm.detect(scene, tuple(targets))
                spatial = None
            else:
                grounding = self.vlm.ground(scene, question, tuple(targets))
                spatial = self.vlm.reason(scene, question, grounding)
        except (RuntimeError, ValueError, ModelLoadError) as exc:
            LOG.exception("model failure")
            return QueryResult(False, f"model failure: {exc}. Check the node log; if it persists, "
                                      f"restart the node or switch backend.", latency_s=time.perf_counter() - t0)
        latency = time.perf_counter() - t0
        if detect_only:
            n = len(grounding.objects)
            return QueryResult(True, "; ".join(grounding.problems), answer=f"Found {n} object(s).",
                               objects=grounding.objects, spec=grounding.spec, latency_s=latency,
                               geometry_source=geometry, value=n)
        assert spatial is not None
        if not spatial.answer:
            spec = grounding.spec
            if spec is not None and spec.kind in PAIRWISE_KINDS | SINGLE_KINDS and not grounding.objects:
                hint = "the objects named in the question were not found in this frame"
            else:
                hint = "the model output could not be turned into an answer"
            detail = "; ".join(spatial.problems) or "no details"
            return QueryResult(False, f"{hint} ({detail}). Rephrase the question, name the objects in "
                                      f"`targets`, or check the camera view.", objects=grounding.objects,
                               spec=grounding.spec, latency_s=latency, geometry_source=geometry)
        return QueryResult(True, "; ".join(spatial.problems), answer=spatial.answer, reasoning=spatial.reasoning,
                           objects=grounding.objects, spec=grounding.spec, latency_s=latency,
                           geometry_source=geometry, value=spatial.value)

    def _scene(self, frame: CameraFrame) -> tuple[SceneInput, str]:
        if frame.depth is None:
            return SceneInput(image=frame.image, camera=frame.camera), f"encoder:{self.geometry_backend}"
        depth = np.asarray(frame.depth, dtype=np.float32)
        scene = SceneInput(image=frame.image, camera=frame.camera, depth=depth)  # checks the depth's size
        if np.mean(valid_depth(depth)) < 0.05:
            # almost no measurements: the encoder is the better source
            return SceneInput(image=frame.image, camera=frame.camera), f"encoder:{self.geometry_backend}"
        return scene, "depth"

    def close(self) -> None:
        if self.vlm is not None:
            self.vlm.close()
            self.vlm = None
