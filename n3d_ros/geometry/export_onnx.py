"""Export any encoder module of ours to ONNX and check it numerically against PyTorch.

Two exporters exist in torch 2.x: the TorchScript tracer (`dynamo=False`: one self-contained
file, native opset 17, ~1 s for the compact encoder) and the torch.export-based one (`dynamo=True`:
needs onnxscript, writes opset 18 and converts down, ~5-8 s). `exporter="auto"` tries the tracer
first and falls back to dynamo if tracing fails; both are tested. The file is always written
self-contained (no external .data) so its sha256 identifies the model for the engine cache.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

LOG = logging.getLogger("n3d_ros.geometry")
EXPORTERS = ("auto", "torchscript", "dynamo")


@dataclass(frozen=True)
class ExportReport:
    """max_abs_err / rel_err: ONNX Runtime (CPU) vs PyTorch eager on the example inputs, worst output.

    rel_err is ||ort - torch|| / ||torch|| (Frobenius, per output, the max over outputs).
    """

    path: Path
    sha256: str
    max_abs_err: float
    rel_err: float
    opset: int
    dynamic: bool
    exporter: str


def file_sha256(path: str | os.PathLike[str], *, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def onnx_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of an ONNX model including any external-data files it references (sorted by name)."""
    import onnx

    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    locations = sorted({entry.value for init in model.graph.initializer
                        for entry in init.external_data if entry.key == "location"})
    if not locations:
        return file_sha256(path)
    h = hashlib.sha256(file_sha256(path).encode())
    for loc in locations:
        h.update(loc.encode())
        h.update(file_sha256(path.parent / loc).encode())
    return h.hexdigest()


def export_onnx(module: torch.nn.Module, path: str | os.PathLike[str], *,
                example_inputs: Sequence[torch.Tensor], input_names: Sequence[str],
                output_names: Sequence[str], dynamic: bool = False, opset: int = 17,
                exporter: str = "auto", dynamic_multiple: int = 16, check: bool = True,
                rtol_report: float = 1e-3) -> ExportReport:
    """Export `module` (in eval mode, on CPU, fp32) to `path`; check with ONNX Runtime.

    dynamic=True makes dim 0 (batch) and, for 4-D inputs, dims 2 and 3 (height, width) symbolic;
    `dynamic_multiple` tells the dynamo exporter that H and W are multiples of it.
    A rel_err above `rtol_report` is logged as a warning (the caller decides whether it is fatal).
    """
    if opset < 17:
        raise ValueError(f"opset must be >= 17, got {opset}")
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    if len(example_inputs) != len(input_names):
        raise ValueError(f"{len(example_inputs)} example inputs but {len(input_names)} input names")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval()
    inputs = tuple(t.detach().to("cpu", torch.float32) if t.is_floating_point() else t.detach().cpu()
                   for t in example_inputs)
    order = ["torchscript", "dynamo"] if exporter == "auto" else [exporter]
    errors: list[str] = []
    used = ""
    # Write to a temp name in the same directory and rename: a reader never sees half a file.
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".onnx.tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        for name in order:
            try:
                _export_with(name, module, inputs, tmp, input_names, output_names, dynamic, opset,
                             dynamic_multiple)
                used = name
                break
            except Exception as exc:  # exporters raise many unrelated types; we report and fall back
                errors.append(f"{name}: {type(exc).__name__}: {exc}")
                LOG.warning("ONNX export with %s failed: %s", name, str(exc)[:300])
        if not used:
            raise RuntimeError(f"ONNX export of {type(module).__name__} failed: {' | '.join(errors)}")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    max_abs, rel = (float("nan"), float("nan"))
    if check:
        max_abs, rel = compare_with_torch(module, path, inputs, input_names)
        if not rel <= rtol_report:
            LOG.warning("ONNX export %s: relative error %.3g vs torch exceeds %.1g", path, rel, rtol_report)
    sha = file_sha256(path)
    LOG.info("exported %s to %s (%s, opset %d, %s shapes, sha256 %s, rel err %.2g)",
             type(module).__name__, path, used, opset, "dynamic" if dynamic else "fixed", sha[:12], rel)
    return ExportReport(path=path, sha256=sha, max_abs_err=max_abs, rel_err=rel, opset=opset,
                        dynamic=dynamic, exporter=used)


def _export_with(exporter: str, module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], path: Path,
                 input_names: Sequence[str], output_names: Sequence[str], dynamic: bool, opset: int,
                 multiple: int) -> None:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation chatter of the tracer; errors still raise
        if exporter == "torchscript":
            axes = None
            if dynamic:
                axes = {n: ({0: "batch", 2: "height", 3: "width"} if t.ndim == 4 else {0: "batch"})
                        for n, t in zip(input_names, inputs)}
            torch.onnx.export(module, inputs, str(path), dynamo=False, opset_version=opset,
                              input_names=list(input_names), output_names=list(output_names),
                              dynamic_axes=axes, do_constant_folding=True)
        else:
            shapes = None
            if dynamic:
                batch = torch.export.Dim("batch", min=1, max=1024)
                h = torch.export.Dim("h_blocks", min=1, max=4096 // multiple)
                w = torch.export.Dim("w_blocks", min=1, max=4096 // multiple)
                shapes = {n: ({0: batch, 2: multiple * h, 3: multiple * w} if t.ndim == 4 else {0: batch})
                          for n, t in zip(input_names, inputs)}
            torch.onnx.export(module, inputs, str(path), dynamo=True, opset_version=opset,
                              input_names=list(input_names), output_names=list(output_names),
                              dynamic_shapes=shapes, external_data=False, verbose=False)


def compare_with_torch(module: torch.nn.Module, path: str | os.PathLike[str],
                       inputs: Sequence[torch.Tensor], input_names: Sequence[str]) -> tuple[float, float]:
    """Run both on `inputs` (CPU) -> (max abs error, max relative Frobenius error) over outputs."""
    import onnxruntime as ort

    with torch.no_grad():
        ref = module(*inputs)
    refs = [ref] if isinstance(ref, torch.Tensor) else list(ref)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outs = sess.run(None, {n: t.numpy() for n, t in zip(input_names, inputs)})
    max_abs, rel = 0.0, 0.0
    for r, o in zip(refs, outs):
        r64 = r.detach().cpu().double().numpy()
        diff = o.astype(np.float64) - r64
        max_abs = max(max_abs, float(np.max(np.abs(diff))))
        rel = max(rel, relative_error(o, r64))
    return max_abs, rel


def relative_error(out: np.ndarray, ref: np.ndarray) -> float:
    """||out - ref|| / ||ref|| over finite entries (Frobenius)."""
    out = np.asarray(out, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    ok = np.isfinite(out) & np.isfinite(ref)
    denom = float(np.linalg.norm(ref[ok]))
    return float(np.linalg.norm((out - ref)[ok]) / max(denom, 1e-30))
