"""Parameters of `spatial_query_node`: one frozen dataclass, its allowed ranges, and validation.

Pure Python (no rclpy): the node declares one ROS parameter per field with the field's default,
reads them on configure and calls `validate`, which reports every bad value at once.
config/params.yaml carries the same names with a comment per parameter.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Mapping

BACKENDS = ("compact", "n3d_vlm", "qwen3_vl")
GEOMETRY_BACKENDS = ("auto", "tensorrt", "onnxruntime", "torch", "torch_compiled")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "fp16", "bf16")
RELIABILITIES = ("best_effort", "reliable")


@dataclass(frozen=True)
class NodeParams:
    # lifecycle
    autostart: bool = True                # configure + activate right after start-up
    # model (maps onto pipeline.PipelineConfig)
    backend: str = "compact"              # compact (built-in) | n3d_vlm | qwen3_vl
    model_dir: str = ""                   # checkpoint folder; "" = built-in models/n3d_compact
    geometry_backend: str = "auto"        # auto | tensorrt | onnxruntime | torch | torch_compiled
    device: str = "auto"                  # auto | cpu | cuda
    precision: str = "fp32"               # fp32 | fp16 | bf16
    engine_cache_dir: str = ""            # TensorRT engine cache; "" = the pipeline's default
    ensemble: str = ""                    # compact: "" = the model folder's setting, "none", or "member_b"
    max_new_tokens: int = 256             # decoding budget per answer, tokens
    warmup: bool = True                   # one dummy inference on activation
    # inputs
    image_reliability: str = "best_effort"  # QoS of image/camera_info/depth subscriptions
    image_qos_depth: int = 5              # QoS history depth of those subscriptions, messages
    use_depth: bool = True                # subscribe `depth` and prefer it over the encoder
    sync_slop_sec: float = 0.02           # max |stamp difference| to pair image/camera_info/depth, s
    buffer_size: int = 4                  # recent image+camera_info pairs kept
    max_frame_age_sec: float = 5.0        # frames older than this (node clock) are stale; 0 = no check
    # requests
    default_timeout_sec: float = 30.0     # used when a request's timeout_sec <= 0, s
    max_question_chars: int = 512         # longer questions are refused
    max_targets: int = 16                 # most target phrases per request
    max_target_chars: int = 128           # longest target phrase
    tf_timeout_sec: float = 0.2           # wait for a transform at the image stamp, s
    # outputs
    publish_debug_image: bool = False     # boxes drawn on the image on `debug_image`
    marker_namespace: str = "n3d"         # MarkerArray namespace
    diagnostics_period_sec: float = 1.0   # /diagnostics publish period, s
    log_throttle_sec: float = 5.0         # minimum gap between repeated bad-input warnings, s


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> str | None:
    if value not in choices:
        return f"{name}={value!r}: expected one of {', '.join(choices)}"
    return None


def _int_range(name: str, value: Any, lo: int, hi: int) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        return f"{name}={value!r}: expected an integer in [{lo}, {hi}]"
    return None


def _float_range(name: str, value: Any, lo: float, hi: float, *, lo_open: bool = False) -> str | None:
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
          and (value > lo if lo_open else value >= lo) and value <= hi)
    if not ok:
        left = "(" if lo_open else "["
        return f"{name}={value!r}: expected a number in {left}{lo}, {hi}]"
    return None


def _string(name: str, value: Any, *, non_empty: bool = False) -> str | None:
    if not isinstance(value, str) or (non_empty and not value.strip()):
        return f"{name}={value!r}: expected a {'non-empty ' if non_empty else ''}string"
    return None


def _bool(name: str, value: Any) -> str | None:
    if not isinstance(value, bool):
        return f"{name}={value!r}: expected true or false"
    return None


def problems(p: NodeParams) -> list[str]:
    """Every out-of-range value of `p`, each naming the parameter and its allowed range."""
    checks = [
        _bool("autostart", p.autostart),
        _choice("backend", p.backend, BACKENDS),
        _string("model_dir", p.model_dir),
        _choice("geometry_backend", p.geometry_backend, GEOMETRY_BACKENDS),
        _choice("device", p.device, DEVICES),
        _choice("precision", p.precision, PRECISIONS),
        _string("engine_cache_dir", p.engine_cache_dir),
        _string("ensemble", p.ensemble),
        _int_range("max_new_tokens", p.max_new_tokens, 1, 4096),
        _bool("warmup", p.warmup),
        _choice("image_reliability", p.image_reliability, RELIABILITIES),
        _int_range("image_qos_depth", p.image_qos_depth, 1, 100),
        _bool("use_depth", p.use_depth),
        _float_range("sync_slop_sec", p.sync_slop_sec, 0.0, 1.0),
        _int_range("buffer_size", p.buffer_size, 1, 64),
        _float_range("max_frame_age_sec", p.max_frame_age_sec, 0.0, 3600.0),
        _float_range("default_timeout_sec", p.default_timeout_sec, 0.0, 600.0, lo_open=True),
        _int_range("max_question_chars", p.max_question_chars, 1, 10000),
        _int_range("max_targets", p.max_targets, 0, 256),
        _int_range("max_target_chars", p.max_target_chars, 1, 1000),
        _float_range("tf_timeout_sec", p.tf_timeout_sec, 0.0, 10.0),
        _bool("publish_debug_image", p.publish_debug_image),
        _string("marker_namespace", p.marker_namespace, non_empty=True),
        _float_range("diagnostics_period_sec", p.diagnostics_period_sec, 0.0, 60.0, lo_open=True),
        _float_range("log_throttle_sec", p.log_throttle_sec, 0.0, 3600.0),
    ]
    if p.backend in BACKENDS and p.backend != "compact" and isinstance(p.model_dir, str) and not p.model_dir:
        checks.append(f"model_dir='': backend {p.backend} needs a local checkpoint folder")
    return [c for c in checks if c is not None]


def validate(p: NodeParams) -> NodeParams:
    """Return `p` unchanged, or raise ValueError listing every bad parameter."""
    bad = problems(p)
    if bad:
        raise ValueError("invalid parameters:\n  " + "\n  ".join(bad))
    return p


def param_names() -> tuple[str, ...]:
    return tuple(f.name for f in fields(NodeParams))


def defaults() -> dict[str, Any]:
    return {f.name: f.default for f in fields(NodeParams)}


def from_mapping(values: Mapping[str, Any]) -> NodeParams:
    """Build and validate from a name -> value mapping (missing names take their defaults).

    Integers are accepted for float parameters (YAML `1` for `1.0`); unknown names are an error,
    so a typo in a params file does not silently keep the default.
    """
    names = set(param_names())
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown parameters {unknown}; known: {', '.join(sorted(names))}")
    merged = defaults()
    for f in fields(NodeParams):
        if f.name in values:
            v = values[f.name]
            if isinstance(f.default, float) and isinstance(v, int) and not isinstance(v, bool):
                v = float(v)
            merged[f.name] = v
    return validate(NodeParams(**merged))
