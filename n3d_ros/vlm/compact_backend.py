"""The built-in compact spatial VLM as a `SpatialVLM` backend.

Model folder layout (models/n3d_compact):
  config.json          {"format": "n3d_compact", "encoder": {...}, "decoder": {...}, "inference": {...}}
                       (inference: DEFAULT_INFERENCE's keys; missing ones take its values, unknown ones
                       are a load error)
  encoder.onnx         geometry encoder graph (TensorRT / ONNX Runtime)
  encoder.safetensors  the same weights for the PyTorch backend
  decoder.safetensors  decoder with grounding heads
  tokenizer.json       word-level tokenizer

`inference.ensemble` may name other compact model folders (relative to this one) trained for the same grid,
kinds and colours: their dense maps are averaged with this model's (`_average_dense`), the way the mirrored
image's are. This model's decoder still writes the question's kind and phrases.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..core.box import Box3D
from ..core.box_overlap import suppress_overlaps
from ..core.box_refine import snap_boxes_to_depth
from ..core.camera import CameraModel
from ..core.objects import GroundedObject
from ..core.question_parser import parse_question
from ..core.questions import SET_KINDS, QuestionKind
from ..core.reasoning import ReasoningError, answer_query
from ..geometry.preprocess import grid_depth_to_points, mirror_vector_maps
from .compact_model import CompactSpatialDecoder, CompactVLMConfig
from .compact_targets import (ParsedOutput, colour_contradiction, mirror_box_params, mirror_patch_maps, phrase_class,
                              target_to_box)
from .compact_tokenizer import CompactTokenizer
from .contract import Grounding, ModelLoadError, SceneInput, SpatialAnswer

LOG = logging.getLogger("n3d_ros.vlm")
REQUIRED_FILES = ("config.json", "decoder.safetensors", "tokenizer.json")
FORMAT = "n3d_compact"
# Inference settings of a model folder whose config.json names none (a fresh training run writes them):
# chosen on validation seeds for the built-in models v3 and v4 and re-checked for v5, which all kept them.
DEFAULT_INFERENCE = {
    "detection_threshold": 0.3,   # heat-map score above which the dense head reports an object
    "phrase_grounding": "dense",  # where a named phrase is grounded: "dense" (its heat map) or "pointer"
    "snap_to_depth": True,        # with measured depth, move each box along its ray onto its surface
    "overlap_nms": 0.3,           # detections sharing more of the smaller one's volume are one object (1 = off)
    # Dense head: average the maps with those of the mirrored image (a second encoder and prefill pass):
    # "off", "depth" (frames with measured depth) or "always". Chosen for v5 on validation seeds:
    # QA 0.769 / 0.825 -> 0.783 / 0.849, AP3D@0.25 0.368 / 0.701 -> 0.388 / 0.712 (monocular / depth).
    "mirror_average": "always",
    # Other model folders (relative to this one, or absolute) whose dense maps are averaged with this model's:
    # independently trained models misjudge an object's range differently, so their mean is closer.
    "ensemble": [],
}
MIRROR_AVERAGE = ("off", "depth", "always")


def default_model_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "models" / "n3d_compact"


def read_model_config(model_dir: str | Path) -> dict:
    """Validate the folder and return its config.json (ModelLoadError names what is missing)."""
    d = Path(model_dir)
    if not d.is_dir():
        raise ModelLoadError(f"model folder {d} does not exist; pass model_dir pointing at a compact "
                             f"model (default: {default_model_dir()})")
    missing = [f for f in REQUIRED_FILES if not (d / f).is_file()]
    if not (d / "encoder.safetensors").is_file() and not (d / "encoder.onnx").is_file():
        missing.append("encoder.safetensors or encoder.onnx")
    if missing:
        raise ModelLoadError(f"model folder {d} is incomplete: missing {', '.join(missing)}")
    try:
        cfg = json.loads((d / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{d / 'config.json'} is not valid JSON: {exc}") from exc
    if cfg.get("format") != FORMAT:
        raise ModelLoadError(f"{d} holds format {cfg.get('format')!r}, expected {FORMAT!r}; for N3D-VLM or "
                             f"Qwen3-VL folders choose backend n3d_vlm / qwen3_vl")
    return cfg


def encoder_config(cfg: dict):
    """CompactEncoderConfig from its JSON form (lists back to tuples)."""
    from ..geometry.compact_encoder import CompactEncoderConfig
    return CompactEncoderConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()})


@dataclass
class _Encoded:
    features: torch.Tensor     # (1,C,h,w)
    points: torch.Tensor       # (1,3,H,W) model grid, metres optical
    valid: torch.Tensor        # (1,1,H,W) bool
    camera: CameraModel        # model-grid camera
    source: str
    measured: tuple[np.ndarray, np.ndarray] | None = None  # depth camera's (h,w,3) points, (h,w) mask
    mirror: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # the mirrored image's features,
                                                                          # points, valid (mirror_average)


@dataclass(frozen=True)
class _DenseMaps:
    """One pass's dense head as probabilities: heat (N,K), colour (N,K,C), box parameters (N,K,8), with
    the box depths read against `z_ref` (N,) metres, and the pass's up vector (3,)."""
    heat: torch.Tensor
    colour: torch.Tensor
    box: torch.Tensor
    z_ref: np.ndarray
    up: np.ndarray


def _dense_maps(dec: CompactSpatialDecoder, state, z_ref: np.ndarray) -> _DenseMaps:
    heat, colour, box = dec.dense(state.image_out, state.geo)
    return _DenseMaps(torch.sigmoid(heat[0].float()), colour[0].float().softmax(-1), box[0].float(), z_ref,
                      state.up[0].double().cpu().numpy())


def _average_dense(maps: Sequence[_DenseMaps]) -> _DenseMaps:
    """The mean of passes over one frame (the mirrored image's maps turned back first; other models'),
    read against the first one's reference depths: a box depth is log(depth / the patch's reference
    depth), so each other pass's is re-expressed by log(its z_ref / the first's) before averaging. The
    yaw's (sin, cos) is renormalized and the up vectors' mean made unit length."""
    first = maps[0]
    boxes = [first.box]
    for m in maps[1:]:
        shift = np.log(np.maximum(m.z_ref, 0.05) / np.maximum(first.z_ref, 0.05))
        b = m.box.clone()
        b[..., 2] += torch.from_numpy(shift).to(b.device, b.dtype)[:, None]
        boxes.append(b)
    n = len(maps)
    box = sum(boxes[1:], boxes[0]) / n
    box = torch.cat([box[..., :6], torch.nn.functional.normalize(box[..., 6:], dim=-1, eps=1e-6)], -1)
    up = sum((m.up for m in maps[1:]), first.up)
    return _DenseMaps(sum((m.heat for m in maps[1:]), first.heat) / n,
                      sum((m.colour for m in maps[1:]), first.colour) / n, box, first.z_ref,
                      up / max(float(np.linalg.norm(up)), 1e-12))


def _reference_depths(patch_pts: torch.Tensor, valid: torch.Tensor, patch: int) -> np.ndarray:
    """(N,) depth a patch's box depth is read against (`target_to_box`): the patch's mean depth where
    it has geometry, else the median of those that have (2 m in a frame without any)."""
    patch_z = patch_pts[0, :, 2].cpu().numpy()
    has = torch.nn.functional.avg_pool2d(valid.float(), patch).flatten().cpu().numpy() > 0.05
    return np.where(has, patch_z, float(np.median(patch_z[has])) if has.any() else 2.0)


def _frame_dense(dec: CompactSpatialDecoder, cfg: CompactVLMConfig, state, z_ref: np.ndarray,
                 mirror=None) -> _DenseMaps:
    """A model's dense maps of a frame; with `mirror` (its mirrored image's prefill state, patch points and
    validity), averaged with the mirrored image's maps turned back (patch columns reversed, du and yaw
    negated), whose box depths are read against its own reference depths."""
    maps = _dense_maps(dec, state, z_ref)
    if mirror is None:
        return maps
    m_state, m_pts, m_valid = mirror
    m = _dense_maps(dec, m_state, mirror_patch_maps(
        torch.from_numpy(_reference_depths(m_pts, m_valid, cfg.patch)), cfg.grid_h, cfg.grid_w).numpy())
    back = lambda t: mirror_patch_maps(t, cfg.grid_h, cfg.grid_w)  # noqa: E731
    m = replace(m, heat=back(m.heat), colour=back(m.colour), box=mirror_box_params(back(m.box)))
    return replace(_average_dense([maps, m]), up=maps.up)   # the up vector stays this image's


class _Grounder:
    """Turns the decoder's outputs into boxes, for one decoded answer: the pointer + box head at a
    grounding token's hidden state, or (models with a dense head) the heat map of a phrase's kind
    and colour.

    (Masking patches already grounded in the answer was tried with the pointer: no measurable
    change on the 50-scene benchmark, so the pointer's own choice stands.)
    """

    def __init__(self, vlm: "CompactSpatialVLM", state, patch_pts: torch.Tensor, enc: _Encoded,
                 scene: SceneInput, mirror=None, members: Sequence[_DenseMaps] = ()) -> None:
        cfg = vlm.dec_cfg
        self.dec, self.cfg, self.state, self.enc, self.scene = vlm.decoder, cfg, state, enc, scene
        self.threshold = vlm.detection_threshold
        self.overlap_nms = vlm.overlap_nms
        self.phrase_grounding = vlm.phrase_grounding
        self.up = state.up[0].double().cpu().numpy()                       # (3,) optical frame
        self.z_ref = _reference_depths(patch_pts, enc.valid, cfg.patch)    # (N,) metres
        self.snap = enc.measured if vlm.snap_to_depth else None
        self.dense = None
        if cfg.has_dense_head:
            maps = _frame_dense(self.dec, cfg, state, self.z_ref, mirror)
            if members:   # other models' maps of this frame (inference.ensemble)
                maps = _average_dense([maps, *members])
                self.up = maps.up
            self.dense = (maps.heat, maps.colour.clamp_min(1e-12).log(), maps.box)

    def _object(self, patch: int, params: np.ndarray, label: str, score: float, index: int) -> GroundedObject:
        return self._finish(self._snapped([self._raw_box(patch, params)])[0], label, score, index)

    def _raw_box(self, patch: int, params: np.ndarray) -> Box3D:
        """The head's box at `patch` (model-grid optical frame), before depth snapping."""
        return target_to_box(patch, params, float(self.z_ref[patch]), self.enc.camera, self.up, self.cfg.grid_w,
                             self.cfg.patch)

    def _snapped(self, boxes: list[Box3D]) -> list[Box3D]:
        """The boxes moved onto the measured depth, when there is some (all in one call: see
        core.box_refine.snap_boxes_to_depth)."""
        return boxes if self.snap is None else snap_boxes_to_depth(boxes, *self.snap, self.enc.camera)

    def _finish(self, box: Box3D, label: str, score: float, index: int) -> GroundedObject:
        """The grounded object of a final (snapped) box, with its source-image 2D box."""
        b2d = box.project_2d(self.scene.camera)
        return GroundedObject(box=box, label=label, score=score, id=f"bbox_{index}",
                              box_2d=None if b2d is None else tuple(float(x) for x in b2d))

    def _phrase_scores(self, phrase: str) -> tuple[torch.Tensor, int] | None:
        """log P(a `phrase` object is centred here) per patch, and its kind; None when the phrase
        names no kind the dense head knows."""
        if self.dense is None or self.phrase_grounding != "dense":
            return None
        kind, colour = phrase_class(phrase, self.cfg.kinds, self.cfg.colours)
        if kind is None:
            return None
        heat, colours, _ = self.dense
        scores = heat[:, kind].clamp_min(1e-6).log()
        if colour is not None:
            scores = scores + colours[:, kind, colour]
        return scores, kind

    def ground(self, h: torch.Tensor, label: str, index: int) -> tuple[GroundedObject, torch.Tensor]:
        """h (1,d) -> the grounded object and the region embedding (1,1,d) fed back with <obj>."""
        dec, state = self.dec, self.state
        dense = self._phrase_scores(label)
        if dense is not None:
            scores, kind = dense
            n = int(torch.argmax(scores))
            params = self.dense[2][n, kind].double().cpu().numpy()
            score = float(scores[n].exp())
        else:
            ptr = dec.pointer_logits(h, state.image_out)[0].float().softmax(-1)
            n = int(torch.argmax(ptr))
            params = dec.box_params(h, state.image_out[:, n], state.geo[:, n])[0].double().cpu().numpy()
            score = float(ptr[n])
        return self._object(n, params, label, score, index), state.image_in[:, n:n + 1]

    def detections(self, phrase: str = "") -> list[GroundedObject]:
        """Every object the dense head sees (heat-map peaks above the threshold), left to right,
        restricted to the kind/colour `phrase` names ("" = all).

        Peaks of different kinds on one object (a ball and a mug heat map both firing on a mug)
        are one object: a box sharing more than `overlap_nms` of its volume with a stronger box of
        comparable size is dropped (core.box_overlap.suppress_overlaps) before the phrase filter, so
        "how many balls?" does not count the mug.
        """
        heat, colours, box = self.dense
        cfg = self.cfg
        kind, colour = phrase_class(phrase, cfg.kinds, cfg.colours) if phrase else (None, None)
        grid = heat.T.reshape(1, len(cfg.kinds), cfg.grid_h, cfg.grid_w)
        peak = grid == torch.nn.functional.max_pool2d(grid, 3, stride=1, padding=1)
        keep = (peak & (grid >= self.threshold))[0].flatten(1)            # (K, N)
        ks, ns = keep.nonzero().unbind(-1)
        # One device-to-host copy per output, not one per peak (each would wait for the GPU).
        scores = heat[ns, ks].cpu().tolist()
        params = box[ns, ks].double().cpu().numpy()
        found = sorted(zip(ns.tolist(), ks.tolist(), colours[ns, ks].argmax(-1).cpu().tolist(), scores, params),
                       key=lambda f: -f[3])
        # Suppress and filter on the head's boxes: only the survivors pay for snapping.
        boxes = [self._raw_box(n, prm) for n, _, _, _, prm in found]
        kept = [i for i in suppress_overlaps(boxes, self.overlap_nms)
                if (kind is None or found[i][1] == kind) and (colour is None or found[i][2] == colour)]
        snapped = self._snapped([boxes[i] for i in kept])
        objects = [self._finish(box, f"{cfg.colours[found[i][2]]} {cfg.kinds[found[i][1]]}", found[i][3], j)
                   for j, (i, box) in enumerate(zip(kept, snapped))]
        objects.sort(key=lambda o: float(self.enc.camera.project(o.box.center[None])[0, 0]))
        return [replace(o, id=f"bbox_{i}") for i, o in enumerate(objects)]


class CompactSpatialVLM:
    """Ground with the compact decoder, reason with the exact core arithmetic."""

    name = "compact"

    def __init__(self, model_dir: str | Path | None = None, *, device: str = "cpu",
                 geometry_backend: str = "auto", precision: str = "fp32", engine_cache_dir: str = "",
                 encode_cache: bool = True, ensemble: Sequence[str] | None = None) -> None:
        """ensemble: model folders (relative to this one) to average with, in place of the folder's own
        `inference.ensemble` (None: the folder's; [] none)."""
        from ..geometry.factory import make_encoder
        from ..geometry.checkpoint_io import load_safetensors

        self.model_dir = Path(model_dir) if model_dir else default_model_dir()
        cfg = read_model_config(self.model_dir)
        self.device = device
        self.enc_cfg = encoder_config(cfg["encoder"])
        self.dec_cfg = CompactVLMConfig.from_dict(cfg["decoder"])
        unknown = sorted(set(cfg.get("inference", {})) - set(DEFAULT_INFERENCE))
        if unknown:  # a misspelt setting would otherwise be ignored without a word
            raise ModelLoadError(f"{self.model_dir / 'config.json'}: unknown inference settings {unknown}; "
                                 f"known: {sorted(DEFAULT_INFERENCE)}")
        inference = DEFAULT_INFERENCE | cfg.get("inference", {})
        if ensemble is not None:
            inference["ensemble"] = list(ensemble)
        self.detection_threshold = inference["detection_threshold"]
        self.phrase_grounding = inference["phrase_grounding"]
        self.snap_to_depth = bool(inference["snap_to_depth"])   # core.box_refine.snap_to_depth
        self.overlap_nms = inference["overlap_nms"]             # core.box_overlap.suppress_overlaps
        self.mirror_average = inference["mirror_average"]
        if not isinstance(self.detection_threshold, (int, float)) or not 0.0 < self.detection_threshold < 1.0:
            raise ModelLoadError(f"{self.model_dir / 'config.json'}: inference.detection_threshold must be in "
                                 f"(0, 1), got {self.detection_threshold!r}")
        if not isinstance(self.overlap_nms, (int, float)) or not 0.0 < self.overlap_nms <= 1.0:
            raise ModelLoadError(f"{self.model_dir / 'config.json'}: inference.overlap_nms must be in (0, 1], "
                                 f"got {self.overlap_nms!r}")
        if self.mirror_average not in MIRROR_AVERAGE:
            raise ModelLoadError(f"{self.model_dir / 'config.json'}: inference.mirror_average must be one of "
                                 f"{MIRROR_AVERAGE}, got {self.mirror_average!r}")
        if not isinstance(inference["ensemble"], list) or not all(isinstance(m, str) for m in inference["ensemble"]):
            raise ModelLoadError(f"{self.model_dir / 'config.json'}: inference.ensemble must be a list of model "
                                 f"folders, got {inference['ensemble']!r}")
        if self.phrase_grounding not in ("dense", "pointer"):
            raise ModelLoadError(f"{self.model_dir / 'config.json'}: inference.phrase_grounding must be 'dense' or "
                                 f"'pointer', got {self.phrase_grounding!r}")
        self.tokenizer = CompactTokenizer.load(self.model_dir / "tokenizer.json")
        if self.tokenizer.vocab_size != self.dec_cfg.vocab_size:
            raise ModelLoadError(f"tokenizer has {self.tokenizer.vocab_size} tokens, decoder expects "
                                 f"{self.dec_cfg.vocab_size}")
        self.decoder = CompactSpatialDecoder(self.dec_cfg)
        load_safetensors(self.decoder, self.model_dir / "decoder.safetensors")
        self.decoder.to(device).eval()
        onnx = self.model_dir / "encoder.onnx"
        weights = self.model_dir / "encoder.safetensors"
        self.encoder = make_encoder(
            "compact", weights=str(weights) if weights.is_file() else None,
            onnx_path=str(onnx) if onnx.is_file() else None, config=self.enc_cfg,
            backend=geometry_backend, device=device, precision=precision,
            cache_dir=engine_cache_dir or None)
        self.geometry_backend = self.encoder.backend
        # The last frame's encoding, keyed by its content: several questions about one frame (a
        # planner asking "where", then "how far") pay for focal normalization and the encoder once.
        self.encode_cache = bool(encode_cache)
        self._cached: tuple[tuple, _Encoded] | None = None
        self.members: list[CompactSpatialVLM] = []
        try:
            for m in inference["ensemble"]:
                self.members.append(self._member(self.model_dir / m, geometry_backend=geometry_backend,
                                                 precision=precision, engine_cache_dir=engine_cache_dir))
        except BaseException:
            # No caller will get this object to close: release the members loaded so far and the encoder
            # (a TensorRT engine or a CUDA graph holds GPU memory) before the error goes up.
            self.close()
            raise

    def _member(self, model_dir: Path, **options) -> "CompactSpatialVLM":
        """An `inference.ensemble` model: its dense maps must line up with this model's, patch for patch
        and kind for kind."""
        if not self.dec_cfg.has_dense_head:
            raise ModelLoadError(f"{self.model_dir}: inference.ensemble needs a model with a dense head")
        member = CompactSpatialVLM(model_dir, device=self.device, encode_cache=self.encode_cache, ensemble=None,
                                   **options)
        mine, theirs = self.dec_cfg, member.dec_cfg
        keys = ("grid_h", "grid_w", "patch", "kinds", "colours")
        problem = None
        if any(getattr(mine, k) != getattr(theirs, k) for k in keys):
            problem = (f"does not match {self.model_dir}: "
                       f"{', '.join(f'{k} {getattr(theirs, k)} vs {getattr(mine, k)}' for k in keys)}")
        elif member.members:
            problem = "names an ensemble of its own"
        if problem:
            member.close()
            raise ModelLoadError(f"ensemble member {model_dir} {problem}")
        return member

    def _dense_of(self, scene: SceneInput, question: str) -> _DenseMaps:
        """This model's (mirror-averaged) dense maps of `scene` for `question`: what an ensemble averages."""
        enc = self._encode(scene)
        state, patch_pts, mirror = self._prefill(enc, question)
        return _frame_dense(self.decoder, self.dec_cfg, state,
                            _reference_depths(patch_pts, enc.valid, self.dec_cfg.patch), mirror)

    @property
    def inference_settings(self) -> dict:
        """The model folder's inference settings in force (recorded with benchmark results)."""
        return {"model_dir": str(self.model_dir), "detection_threshold": self.detection_threshold,
                "phrase_grounding": self.phrase_grounding, "snap_to_depth": self.snap_to_depth,
                "overlap_nms": self.overlap_nms, "mirror_average": self.mirror_average,
                "ensemble": [str(m.model_dir) for m in self.members]}

    # ------------------------------------------------------------------ geometry
    def _encode(self, scene: SceneInput) -> _Encoded:
        if not self.encode_cache:
            return self._encode_frame(scene)
        key = scene.content_key()
        if self._cached is None or self._cached[0] != key:
            self._cached = None                 # a failed encode must not leave a stale entry
            self._cached = (key, self._encode_frame(scene))
        return self._cached[1]

    def _encode_frame(self, scene: SceneInput) -> _Encoded:
        has_depth = scene.depth is not None or scene.points is not None
        mirror = self.dec_cfg.has_dense_head and (self.mirror_average == "always"
                                                  or (self.mirror_average == "depth" and has_depth))
        # On the decoder's device: a GPU pipeline's point maps never make a round trip through the host.
        out = self.encoder.encode_tensors([scene.image], [scene.camera], mirrored=mirror, device=self.device)
        transform = out.transforms[0]
        cam = transform.apply_camera(scene.camera)
        features = out.features[:1]
        m_features = out.features[1:2] if mirror else None
        if not has_depth:
            mirrored = (m_features, out.points[1:2], out.valid[1:2]) if mirror else None
            return _Encoded(features=features, points=out.points[:1], valid=out.valid[:1], camera=cam,
                            source=f"encoder:{out.backend}", mirror=mirrored)
        if scene.points is None:
            # Measured depth (RGB-D) replaces the estimate; resampled first, unprojected on the grid.
            depth = np.where(np.isfinite(scene.depth), scene.depth, 0).astype(np.float32)
            points, mask = grid_depth_to_points(transform.apply_image(depth, interpolation="nearest", fill=0.0),
                                                cam)
        else:
            points = transform.apply_image(np.where(scene.mask[..., None], scene.points, np.nan)
                                           .astype(np.float32), interpolation="nearest", fill=np.nan)
            mask = np.all(np.isfinite(points), axis=-1)
        dev = self.device

        def tensors(points, mask):
            return (torch.from_numpy(np.nan_to_num(points).transpose(2, 0, 1)[None].astype(np.float32)).to(dev),
                    torch.from_numpy(np.ascontiguousarray(mask)[None, None]).to(dev))

        points_t, mask_t = tensors(points, mask)
        # Measured geometry is mirrored like the image: columns reversed, x negated (where it already is).
        mirrored = (m_features, mirror_vector_maps(points_t), mask_t.flip(-1)) if mirror else None
        return _Encoded(features, points_t, mask_t, camera=cam, source="depth", measured=(points, mask),
                        mirror=mirrored)

    # ------------------------------------------------------------------ decoding
    @torch.no_grad()
    def _decode(self, enc: _Encoded, question: str, forced_labels: Sequence[str],
                scene: SceneInput) -> Grounding:
        tok, dec, cfg = self.tokenizer, self.decoder, self.dec_cfg
        state, patch_pts, mirror = self._prefill(enc, question)
        members = [m._dense_of(scene, question) for m in self.members]
        ctx = _Grounder(self, state, patch_pts, enc, scene, mirror, members)

        parsed = ParsedOutput()
        objects: list[GroundedObject] = []
        words: list[str] = []
        text: list[str] = []
        forced: list[int] = []
        forced_names: list[str] = []   # caller's phrases, used verbatim as labels of forced objects
        set_reached = False
        banned = {tok.pad_id, tok.bos_id, tok.sep_id, tok.unk_id}
        kind_ids = set(tok.kind_ids.values())
        # A set's class phrase ("how many chairs" -> "chair <set>") is the question's own: a word the
        # question lacks is the model's invention ("<k:detect> ball <set>" for "detect all objects"
        # filtered the set down to balls). Object phrases may add what the model sees ("the mug" ->
        # "purple mug"), as trained.
        set_words = sorted(tok.named_word_ids(question) | {tok.set_id, tok.eos_id})
        h = dec.step(state, torch.tensor([[tok.sep_id]], device=self.device), 0, None)
        for pos in range(1, cfg.max_output_len):
            logits = dec.lm_head(h)[0].float()
            if forced:
                nxt = forced.pop(0)
            else:
                allow = torch.zeros_like(logits, dtype=torch.bool)
                if parsed.kind is None:
                    allow[list(kind_ids)] = True
                elif parsed.kind in SET_KINDS and not set_reached:
                    allow[set_words] = True
                else:
                    allow[:] = True
                    allow[list(kind_ids | banned)] = False
                    if not words:  # a grounding token needs a label before it
                        allow[tok.obj_id] = False
                logits = logits.masked_fill(~allow, float("-inf"))
                nxt = int(torch.argmax(logits))
            text.append(tok.token(nxt))
            region = None
            if nxt == tok.eos_id:
                break
            if parsed.kind is None:
                parsed.kind = tok.id_to_kind.get(nxt)
                forced = self._forced_tokens(parsed.kind, forced_labels)
                if parsed.kind not in SET_KINDS:
                    forced_names = [str(t) for t in forced_labels]
                unknown = sorted({w for t in forced_labels for w in t.lower().split()
                                  if tok.unknown_fraction(w) > 0})
                if unknown:
                    parsed.problems.append(f"words the built-in model does not know: {', '.join(unknown)}")
            elif nxt == tok.set_id:
                set_reached = True
                parsed.class_phrase = " ".join(words)
                words = []
                if ctx.dense is not None:  # the dense head lists the set; nothing left to decode
                    objects = ctx.detections(parsed.class_phrase)
                    parsed.labels = [o.label for o in objects]
                    text.append(tok.token(tok.eos_id))
                    break
            elif nxt == tok.obj_id:
                name = forced_names.pop(0) if forced_names else " ".join(words)
                obj, region = ctx.ground(h, name, len(objects))
                objects.append(obj)
                parsed.labels.append(obj.label)
                words = []
            else:
                words.append(tok.token(nxt))
            h = dec.step(state, torch.tensor([[nxt]], device=self.device), pos, region)
        if words:
            parsed.problems.append(f"output ended with ungrounded words {' '.join(words)!r}")
        spec = parsed.spec()
        return Grounding(objects=objects, spec=spec, raw_text=" ".join(text), problems=parsed.problems, up=ctx.up)

    def _prefill(self, enc: _Encoded, question: str):
        """The prefix pass of `question` over the frame: (state, patch points, mirror), mirror being the
        mirrored image's (state, patch points, validity) under mirror averaging, else None."""
        q = self.tokenizer.encode_words(question)[: self.dec_cfg.max_question_len]
        q_ids = torch.tensor([q or [self.tokenizer.unk_id]], device=self.device)
        measured = enc.measured is not None
        state, patch_pts = self.decoder.prefill(enc.features, enc.points, enc.valid, q_ids, measured=measured)
        if enc.mirror is None:
            return state, patch_pts, None
        m_state, m_pts = self.decoder.prefill(*enc.mirror, q_ids, measured=measured)
        return state, patch_pts, (m_state, m_pts, enc.mirror[2])

    def _forced_tokens(self, kind: QuestionKind | None, labels: Sequence[str]) -> list[int]:
        """When the caller names the phrases to ground, feed them instead of letting the model pick."""
        tok = self.tokenizer
        if not labels or kind is None:
            return []
        if kind in SET_KINDS:
            return tok.encode_words(labels[0]) + [tok.set_id]
        ids: list[int] = []
        for label in labels:
            ids += tok.encode_words(label) + [tok.obj_id]
        return ids + [tok.eos_id]   # the caller named every phrase: nothing of the model's own follows

    # ------------------------------------------------------------------ SpatialVLM
    def ground(self, scene: SceneInput, question: str, targets: Sequence[str] = ()) -> Grounding:
        enc = self._encode(scene)
        grounding = self._decode(enc, question, targets, scene)
        if targets:
            return grounding
        cfg = self.dec_cfg
        wrong = None if grounding.spec is None else colour_contradiction(
            question, grounding.spec.targets, cfg.kinds, cfg.colours)
        if grounding.spec is not None and wrong is None:
            return grounding
        # The decoder's own phrases made no question (it dropped or half-wrote one: "red table <obj> pink
        # <eos>" for "is the table higher than the book?"), or one the question contradicts (it copied a
        # colour onto the wrong object when reordering "at what o'clock is the brown chair from the orange
        # plant?" into "brown plant <obj> brown chair <obj>"). Ground the phrases the rule-based parser reads
        # in the question instead, as a caller naming `targets` would; say so in the problems.
        parsed = parse_question(question)
        if parsed is None or not parsed.targets:
            return grounding
        retry = self._decode(enc, question, parsed.targets, scene)
        if retry.spec is None:
            return grounding
        phrases = ", ".join(repr(t) for t in parsed.targets)
        why = (f"named {wrong!r}, a colour the question does not give it" if wrong is not None else
               f"did not make a question ({'; '.join(grounding.problems) or 'no details'})")
        note = f"grounded the question's own phrases {phrases}: the model's output ({grounding.raw_text!r}) {why}"
        return replace(retry, problems=[note] + retry.problems)

    def detect(self, scene: SceneInput, phrases: Sequence[str] = ()) -> Grounding:
        if phrases:
            return self.ground(scene, f"find all {phrases[0]}", (phrases[0],))
        return self.ground(scene, "detect all objects", ())

    def reason(self, scene: SceneInput, question: str, grounding: Grounding) -> SpatialAnswer:
        if grounding.spec is None:
            return SpatialAnswer(grounding, answer="", problems=grounding.problems + [
                "the model did not produce a question kind with matching objects"])
        try:
            ans = answer_query(grounding.spec, grounding.objects, up=grounding.up)
        except ReasoningError as exc:
            return SpatialAnswer(grounding, answer="", problems=grounding.problems + [str(exc)])
        return SpatialAnswer(grounding, answer=ans.text, reasoning=ans.reasoning, value=ans.value,
                             problems=list(grounding.problems))

    def close(self) -> None:
        for m in self.members:
            m.close()
        self._cached = None
        self.encoder.close()
        self.decoder = None  # type: ignore[assignment]
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
