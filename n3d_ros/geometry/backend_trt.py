"""TensorRT build and runtime (TensorRT 10 API). tensorrt is imported lazily, only here.

NOT EXERCISED in development: tensorrt is not installable in the CI/dev environment and the GPU
machine used for benchmarks has none either. The cache logic around it (engine_cache.py) is
tested on CPU with a test-double builder; test_geometry_tensorrt.py runs this module for real
only where `tensorrt` imports.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .engine_cache import EngineCache, ShapeProfile, profiles_from_onnx

LOG = logging.getLogger("n3d_ros.geometry")


def _import_trt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise ValueError("backend 'tensorrt' needs the tensorrt Python package (pip install tensorrt, "
                         "matching the CUDA driver); use backend='onnxruntime' or 'torch' instead") from exc
    return trt


class TensorRTBuilder:
    """Builds serialized engines from ONNX and deserializes them (EngineBuilder of engine_cache)."""

    def __init__(self, *, device_index: int = 0, workspace_bytes: int = 4 << 30) -> None:
        import torch

        self.trt = _import_trt()
        self.logger = self.trt.Logger(self.trt.Logger.WARNING)
        self.runtime = self.trt.Runtime(self.logger)
        self.trt_version = str(self.trt.__version__)
        self.gpu_name = torch.cuda.get_device_name(device_index)
        major, minor = torch.cuda.get_device_capability(device_index)
        self.compute_capability = f"{major}.{minor}"
        self.workspace_bytes = int(workspace_bytes)

    def build(self, onnx_path: Path, precision: str, profiles: Sequence[ShapeProfile]) -> bytes:
        trt = self.trt
        builder = trt.Builder(self.logger)
        network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse_from_file(str(onnx_path)):  # parse_from_file resolves external data
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace_bytes)
        if precision == "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
        elif precision == "bf16":
            config.set_flag(trt.BuilderFlag.BF16)
        elif precision != "fp32":
            raise ValueError(f"precision must be fp32, fp16 or bf16, got {precision!r}")
        if hasattr(trt, "IProgressMonitor"):
            config.progress_monitor = _make_progress_monitor(trt)
        profile = builder.create_optimization_profile()
        by_name = {p.name: p for p in profiles}
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            p = by_name.get(tensor.name)
            if p is None:
                raise ValueError(f"no shape profile for input {tensor.name!r}; have {sorted(by_name)}")
            if tensor.is_shape_tensor:
                profile.set_shape_input(tensor.name, p.min, p.opt, p.max)  # values, not shapes
            else:
                profile.set_shape(tensor.name, p.min, p.opt, p.max)
        config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} ({precision})")
        return bytes(serialized)

    def deserialize(self, data: bytes) -> Any:
        return self.runtime.deserialize_cuda_engine(data)


def _make_progress_monitor(trt: Any) -> Any:
    class _Progress(trt.IProgressMonitor):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, parent_phase: str | None, phase_name: str, num_steps: int) -> None:
            LOG.info("TensorRT build: %s (%d steps)", phase_name, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            return True  # never cancel

        def phase_finish(self, phase_name: str) -> None:
            LOG.debug("TensorRT build: %s done", phase_name)

    return _Progress()


class TensorRTRunner:
    """Runs an ONNX graph through a cached TensorRT engine, one engine per input-shape signature.

    Dynamic graphs get an engine whose profile is exactly the shapes first seen (min = opt = max),
    unless `profiles` are given; shapes are part of the cache key, so each is built once per GPU.
    """

    def __init__(self, onnx_path: str | os.PathLike[str], *, cache_dir: str | os.PathLike[str],
                 precision: str = "fp16", device: str = "cuda", profiles: Sequence[ShapeProfile] = ()) -> None:
        import torch

        from .export_onnx import onnx_sha256

        self._torch = torch
        self.onnx_path = Path(onnx_path)
        self.sha256 = onnx_sha256(self.onnx_path)
        self.cache = EngineCache(cache_dir)
        self.precision = precision
        self.device = device
        index = int(device.split(":")[1]) if ":" in device else 0
        self.builder = TensorRTBuilder(device_index=index)
        self.profiles = list(profiles)
        self.label = f"tensorrt({self.builder.trt_version}, {precision})"
        self._engines: dict[tuple, tuple[Any, Any]] = {}
        import onnx

        graph = onnx.load(str(self.onnx_path), load_external_data=False).graph
        init_names = {i.name for i in graph.initializer}
        self.input_names = [i.name for i in graph.input if i.name not in init_names]
        self.output_names = [o.name for o in graph.output]
        self.max_batch = None

    def _engine_for(self, feeds: Mapping[str, np.ndarray]) -> tuple[Any, Any]:
        sig = tuple((n, np.shape(feeds[n])) for n in self.input_names)
        if sig not in self._engines:
            if self.profiles:
                profiles = self.profiles
            else:
                seen = []
                for n in self.input_names:
                    arr = np.asarray(feeds[n])
                    # 0-d integer inputs are shape tensors (MoGe's num_tokens): profile their value.
                    seen.append(ShapeProfile.fixed(n, (int(arr),)) if arr.ndim == 0 else
                                ShapeProfile.fixed(n, arr.shape))
                profiles = seen
            cached = self.cache.get_or_build(self.onnx_path, self.precision, profiles, self.builder,
                                             onnx_sha256=self.sha256)
            self._engines[sig] = (cached.engine, cached.engine.create_execution_context())
        return self._engines[sig]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch, trt = self._torch, self.builder.trt
        engine, context = self._engine_for(feeds)
        pairs = (("float32", torch.float32), ("float16", torch.float16), ("bfloat16", torch.bfloat16),
                 ("int64", torch.int64), ("int32", torch.int32), ("bool", torch.bool))
        dtypes = {getattr(trt, a): b for a, b in pairs if hasattr(trt, a)}
        keep: list[Any] = []
        outputs: dict[str, Any] = {}
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        for name in names:
            if engine.get_tensor_mode(name) != trt.TensorIOMode.INPUT:
                continue
            arr = np.asarray(feeds[name])
            if engine.is_shape_inference_io(name):
                host = np.ascontiguousarray(arr.reshape(-1).astype(np.int64))
                keep.append(host)
                context.set_tensor_address(name, host.ctypes.data)
                continue
            t = torch.from_numpy(np.ascontiguousarray(arr)).to(self.device, dtypes[engine.get_tensor_dtype(name)])
            keep.append(t)
            context.set_input_shape(name, tuple(t.shape))
            context.set_tensor_address(name, t.data_ptr())
        for name in names:
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                continue
            shape = tuple(context.get_tensor_shape(name))
            out = torch.empty(shape, dtype=dtypes[engine.get_tensor_dtype(name)], device=self.device)
            outputs[name] = out
            context.set_tensor_address(name, out.data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"TensorRT execution failed for {self.onnx_path.name}")
        stream.synchronize()
        return {n: (o.float() if o.is_floating_point() else o).cpu().numpy() for n, o in outputs.items()}

    def close(self) -> None:
        self._engines.clear()


def build_engine_file(onnx_path: str | os.PathLike[str], *, cache_dir: str | os.PathLike[str],
                      precision: str, shapes: Sequence[ShapeProfile] = (), device_index: int = 0) -> Path:
    """Build (or find) the cached engine for `onnx_path`; returns its path. Used by n3d-build-engine."""
    profiles = profiles_from_onnx(onnx_path, shapes)
    builder = TensorRTBuilder(device_index=device_index)
    cached = EngineCache(cache_dir).get_or_build(onnx_path, precision, profiles, builder)
    return cached.path
