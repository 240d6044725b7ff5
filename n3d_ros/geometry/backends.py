"""Inference runtimes behind one interface, and the `auto` choice between them.

A runner maps named numpy inputs to named numpy outputs (float32 out, whatever ran inside):
- TorchRunner: a torch module, eager or torch.compile'd, fp32 or fp16/bf16 autocast.
- OrtRunner: an ONNX file in ONNX Runtime, TensorRT/CUDA execution providers when present.
- TensorRTRunner (backend_trt.py): an engine built from the ONNX file through the engine cache.
`auto` order: tensorrt (importable, CUDA, ONNX file) -> onnxruntime (ONNX file) -> torch.
"""
from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Protocol, Sequence

if TYPE_CHECKING:  # torch is imported only where a torch backend is built
    import torch

import numpy as np

from .contract import BACKENDS, PRECISIONS

LOG = logging.getLogger("n3d_ros.geometry")

_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_}


class Runner(Protocol):
    label: str            # e.g. "onnxruntime(CPUExecutionProvider)"
    device: str           # "cpu" | "cuda"
    input_names: list[str]
    max_batch: int | None  # None: any batch; else the fixed batch of the graph/engine

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class BackendChoice:
    name: str    # one of BACKENDS
    reason: str  # why, for the log line


def default_cache_dir() -> Path:
    """$N3D_ROS_CACHE_DIR, else $XDG_CACHE_HOME/n3d_ros, else ~/.cache/n3d_ros (engines, exported ONNX)."""
    env = os.environ.get("N3D_ROS_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "n3d_ros"


def module_available(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def cuda_available() -> bool:
    if not module_available("torch"):
        return False
    import torch

    return bool(torch.cuda.is_available())


def resolve_device(device: str) -> str:
    """"auto" | "cpu" | "cuda" (| "cuda:N") -> a concrete device; ValueError if CUDA is asked but absent."""
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    if device == "cpu":
        return "cpu"
    if device.startswith("cuda"):
        if not cuda_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available; use 'cpu' or 'auto'")
        return device
    raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")


def backend_availability(*, device: str, has_onnx: bool, can_export_onnx: bool,
                         has_torch_module: bool) -> dict[str, str]:
    """backend -> "" when usable, else why not. `device` is already resolved."""
    onnx_ok = has_onnx or can_export_onnx
    why: dict[str, str] = {}
    if not module_available("tensorrt"):
        why["tensorrt"] = "tensorrt not importable"
    elif not device.startswith("cuda"):
        why["tensorrt"] = "no CUDA device"
    elif not onnx_ok:
        why["tensorrt"] = "no ONNX file"
    else:
        why["tensorrt"] = ""
    if not module_available("onnxruntime"):
        why["onnxruntime"] = "onnxruntime not importable"
    elif not onnx_ok:
        why["onnxruntime"] = "no ONNX file"
    else:
        why["onnxruntime"] = ""
    why["torch"] = "" if has_torch_module else "no PyTorch module for this encoder (ONNX only)"
    why["torch_compiled"] = why["torch"]
    return why


def select_backend(requested: str, *, device: str, has_onnx: bool, can_export_onnx: bool = False,
                   has_torch_module: bool = True) -> BackendChoice:
    """Pick the backend. In `auto`, TensorRT and ONNX Runtime need an existing ONNX file (exporting
    on the fly is only done when asked for explicitly)."""
    if requested != "auto" and requested not in BACKENDS:
        raise ValueError(f"unknown backend {requested!r}; expected 'auto' or one of {BACKENDS}")
    why = backend_availability(device=device, has_onnx=has_onnx, can_export_onnx=can_export_onnx,
                               has_torch_module=has_torch_module)
    if requested != "auto":
        if why[requested]:
            usable = [b for b in BACKENDS if not why[b]]
            raise ValueError(f"backend {requested!r} is not available: {why[requested]}; available: {usable}")
        return BackendChoice(requested, "requested explicitly")
    auto_why = backend_availability(device=device, has_onnx=has_onnx, can_export_onnx=False,
                                    has_torch_module=has_torch_module)
    if device.startswith("cuda") and has_torch_module and not auto_why["onnxruntime"] and not ort_has_gpu():
        # An ORT build without GPU providers would run a CUDA-device encoder on the CPU.
        auto_why["onnxruntime"] = "onnxruntime has no CUDA/TensorRT provider; torch runs on the GPU"
    skipped: list[str] = []
    for name in ("tensorrt", "onnxruntime", "torch"):
        if not auto_why[name]:
            reason = "auto: " + (" -> ".join(skipped + [name]) if skipped else f"{name} first choice")
            return BackendChoice(name, reason)
        skipped.append(f"{name} skipped ({auto_why[name]})")
    raise ValueError(f"no backend available: {'; '.join(skipped)}")


# --------------------------------------------------------------------------- PyTorch
class TorchRunner:
    """Run a torch module; fp16/bf16 via autocast (weights stay fp32), optional torch.compile.

    On CUDA (not compiled) each input shape's forward is captured once as a CUDA graph and replayed
    (`cuda_graphs`): the compact encoder is ~150 small kernels, and launching them one by one from
    Python cost more host time than the GPU spent running them. The grid is fixed, so a node keeps
    one or two graphs (with and without the mirrored image).
    """

    MAX_GRAPHS = 4

    def __init__(self, module: "torch.nn.Module", *, input_names: Sequence[str], output_names: Sequence[str],
                 device: str = "cpu", precision: str = "fp32", compiled: bool = False,
                 compile_mode: str | None = None, cuda_graphs: bool = False) -> None:
        import torch

        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self._torch = torch
        self.device = device
        self.precision = precision
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        self.max_batch = None
        self.module = module.eval().to(device)
        self._fn = torch.compile(self.module, mode=compile_mode) if compiled else self.module
        self.cuda_graphs = bool(cuda_graphs) and device.startswith("cuda") and not compiled
        self._graphs: dict[tuple, tuple] = {}
        kind = "torch_compiled" if compiled else "torch_cuda_graphs" if self.cuda_graphs else "torch"
        self.label = f"{kind}({device}, {precision})"

    def _forward(self, args: list) -> list:
        torch = self._torch
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision)
        dev_type = "cuda" if self.device.startswith("cuda") else "cpu"
        # Autocast's cache of cast weights would hold tensors of the graph's capture pool: off with graphs.
        with torch.autocast(dev_type, dtype=dtype or torch.float32, enabled=dtype is not None,
                            cache_enabled=not self.cuda_graphs):
            out = self._fn(*args)
        return [out] if isinstance(out, torch.Tensor) else list(out)

    def _replay(self, args: list) -> list:
        """The forward through the CUDA graph of these input shapes (captured on first use)."""
        torch = self._torch
        key = tuple((tuple(a.shape), a.dtype) for a in args)
        entry = self._graphs.get(key)
        if entry is None:
            if len(self._graphs) >= self.MAX_GRAPHS:       # shapes keep changing: drop the oldest
                self._graphs.pop(next(iter(self._graphs)))
            static_in = [a.clone() for a in args]
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):                  # warm-up off the capture (cuDNN plans, allocator)
                for _ in range(2):
                    self._forward(static_in)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self._forward(static_in)
            entry = self._graphs[key] = (graph, static_in, static_out)
        graph, static_in, static_out = entry
        for buf, a in zip(static_in, args):
            buf.copy_(a)
        graph.replay()
        return [o.clone() for o in static_out]            # the next replay overwrites the graph's buffers

    def run_tensors(self, feeds: Mapping[str, "np.ndarray | torch.Tensor"]) -> dict[str, "torch.Tensor"]:
        """Outputs as float32 tensors on the runner's device (no copy to the host)."""
        torch = self._torch
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise ValueError(f"missing inputs {missing}; expected {self.input_names}")
        args = [torch.as_tensor(np.ascontiguousarray(feeds[n]) if isinstance(feeds[n], np.ndarray) else feeds[n])
                .to(self.device) for n in self.input_names]
        with torch.inference_mode():
            outs = self._replay(args) if self.cuda_graphs else self._forward(args)
            return {n: o.float() for n, o in zip(self.output_names, outs)}

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {n: o.cpu().numpy() for n, o in self.run_tensors(feeds).items()}

    def close(self) -> None:
        self._graphs.clear()
        self.module = None  # type: ignore[assignment]
        self._fn = None  # type: ignore[assignment]
        if self.device.startswith("cuda"):
            self._torch.cuda.empty_cache()


# --------------------------------------------------------------------------- ONNX Runtime
def ort_has_gpu() -> bool:
    import onnxruntime as ort
    return bool({"CUDAExecutionProvider", "TensorrtExecutionProvider"} & set(ort.get_available_providers()))


def ort_providers(device: str, *, cache_dir: str | os.PathLike[str] | None = None,
                  precision: str = "fp32") -> list:
    """Execution providers in preference order for `device`, only those this onnxruntime has."""
    import onnxruntime as ort

    have = set(ort.get_available_providers())
    providers: list = []
    if device.startswith("cuda"):
        dev_id = int(device.split(":")[1]) if ":" in device else 0
        if "TensorrtExecutionProvider" in have:
            opts: dict[str, object] = {"device_id": dev_id, "trt_fp16_enable": precision == "fp16"}
            if cache_dir is not None:
                opts.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(cache_dir))
            providers.append(("TensorrtExecutionProvider", opts))
        if "CUDAExecutionProvider" in have:
            providers.append(("CUDAExecutionProvider", {"device_id": dev_id}))
    providers.append("CPUExecutionProvider")
    return providers


class OrtRunner:
    def __init__(self, onnx_path: str | os.PathLike[str], *, device: str = "cpu",
                 precision: str = "fp32", cache_dir: str | os.PathLike[str] | None = None,
                 intra_op_threads: int | None = None) -> None:
        import onnxruntime as ort

        path = Path(onnx_path)
        if not path.is_file():
            raise ValueError(f"expected an ONNX file, got {path} (not found)")
        opts = ort.SessionOptions()
        if intra_op_threads:
            opts.intra_op_num_threads = int(intra_op_threads)
        # ORT's idle worker threads spin after each run by default; the PyTorch decoder runs right
        # after the encoder on the same cores and would wait for them.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), sess_options=opts,
                                            providers=ort_providers(device, cache_dir=cache_dir,
                                                                    precision=precision))
        active = self.session.get_providers()[0]
        self.device = "cpu" if active == "CPUExecutionProvider" else device
        self.label = f"onnxruntime({active})"
        self._inputs = {i.name: i for i in self.session.get_inputs()}
        self.input_names = list(self._inputs)
        self.output_names = [o.name for o in self.session.get_outputs()]
        dims = [i.shape[0] for i in self.session.get_inputs() if len(i.shape) > 0]
        fixed = [d for d in dims if isinstance(d, int)]
        self.max_batch = min(fixed) if fixed else None
        if precision != "fp32" and active == "CPUExecutionProvider":
            LOG.info("onnxruntime on CPU runs the graph in its exported precision; %s ignored", precision)

    def input_shape(self, name: str) -> list[int | str | None]:
        return list(self._inputs[name].shape)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise ValueError(f"missing inputs {missing}; the graph expects {self.input_names}")
        cast = {n: np.asarray(feeds[n], dtype=_ORT_TYPES.get(self._inputs[n].type, None))
                for n in self.input_names}
        outs = self.session.run(None, cast)
        return {n: (o.astype(np.float32) if np.issubdtype(o.dtype, np.floating) else o)
                for n, o in zip(self.output_names, outs)}

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]
