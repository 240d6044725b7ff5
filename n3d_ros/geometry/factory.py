"""make_encoder: one entry point for every learned geometry encoder, backend chosen and logged."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from .backends import OrtRunner, Runner, TorchRunner, default_cache_dir, resolve_device, select_backend
from .checkpoint_io import load_safetensors
from .compact_encoder import CompactEncoderConfig, CompactGeometryEncoder
from .compact_runtime import INPUT_NAMES, OUTPUT_NAMES, CompactGeometry
from .contract import GeometryEncoder, PRECISIONS
from .export_onnx import export_onnx, file_sha256
from .moge import MoGeOnnxEncoder

LOG = logging.getLogger("n3d_ros.geometry")
KINDS = ("compact", "moge")

PathLike = str | os.PathLike[str]


def make_encoder(kind: str = "compact", *, weights: PathLike | None = None, onnx_path: PathLike | None = None,
                 backend: str = "auto", device: str = "auto", precision: str = "fp32",
                 cache_dir: PathLike | None = None, config: CompactEncoderConfig | None = None,
                 compile_mode: str | None = None, num_tokens: int = 1800,
                 long_side: int | None = None, cuda_graphs: bool = True) -> GeometryEncoder:
    """Build a geometry encoder.

    kind="compact": weights = .safetensors of CompactGeometryEncoder, onnx_path = an export of it
      (optional: tensorrt/onnxruntime asked explicitly without one export it into cache_dir).
    kind="moge": weights (or onnx_path) = the MoGe-2 .onnx; backends tensorrt | onnxruntime.
    backend: "auto" | "tensorrt" | "onnxruntime" | "torch" | "torch_compiled"; device: "auto" | "cpu" |
    "cuda"; precision: "fp32" | "fp16" | "bf16" (torch autocast, TensorRT builder flags).
    cuda_graphs: the "torch" backend on CUDA replays each input shape's forward as a CUDA graph.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if kind == "moge":
        path = onnx_path or weights
        if path is None:
            raise ValueError("kind='moge' needs the MoGe-2 .onnx file as weights= or onnx_path=")
        return MoGeOnnxEncoder(path, backend=backend, device=device, precision=precision, cache_dir=cache,
                               num_tokens=num_tokens, long_side=long_side)
    if kind != "compact":
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    config = config or CompactEncoderConfig()
    if weights is None and onnx_path is None:
        raise ValueError("kind='compact' needs weights= (.safetensors) or onnx_path= (.onnx export)")
    if weights is not None and not Path(weights).is_file():
        raise ValueError(f"expected compact encoder weights (.safetensors), got {weights} (not found)")
    if onnx_path is not None and not Path(onnx_path).is_file():
        raise ValueError(f"expected an ONNX file, got {onnx_path} (not found)")
    dev = resolve_device(device)
    choice = select_backend(backend, device=dev, has_onnx=onnx_path is not None,
                            can_export_onnx=weights is not None, has_torch_module=weights is not None)
    runner: Runner
    if choice.name in ("torch", "torch_compiled"):
        module = load_safetensors(CompactGeometryEncoder(config), weights)  # type: ignore[arg-type]
        runner = TorchRunner(module, input_names=INPUT_NAMES, output_names=OUTPUT_NAMES, device=dev,
                             precision=precision, compiled=choice.name == "torch_compiled",
                             compile_mode=compile_mode, cuda_graphs=cuda_graphs)
    else:
        if onnx_path is None:
            onnx_path = export_compact_onnx(weights, config, cache)  # type: ignore[arg-type]
        if choice.name == "tensorrt":
            from .backend_trt import TensorRTRunner

            runner = TensorRTRunner(onnx_path, cache_dir=cache / "engines", precision=precision, device=dev)
        else:
            runner = OrtRunner(onnx_path, device=dev, precision=precision, cache_dir=cache / "ort_trt")
    LOG.info("geometry backend: %s (%s)", runner.label, choice.reason)
    return CompactGeometry(runner, config)


def export_compact_onnx(weights: PathLike, config: CompactEncoderConfig, cache_dir: PathLike) -> Path:
    """Export the compact encoder for `weights` into cache_dir/onnx (reused when already there)."""
    import torch

    sha = file_sha256(weights)[:16]
    path = Path(cache_dir) / "onnx" / f"compact_{sha}_{config.in_width}x{config.in_height}.onnx"
    if path.is_file():
        return path
    module = load_safetensors(CompactGeometryEncoder(config), weights)
    example = (torch.rand(1, 3, config.in_height, config.in_width),
               torch.zeros(1, 2, config.in_height, config.in_width))
    report = export_onnx(module, path, example_inputs=example, input_names=INPUT_NAMES,
                         output_names=OUTPUT_NAMES, dynamic=True)
    if not report.rel_err <= 1e-3:
        path.unlink(missing_ok=True)
        raise RuntimeError(f"ONNX export of the compact encoder disagrees with torch: rel err {report.rel_err:.3g}")
    return path
