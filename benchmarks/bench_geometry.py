"""Geometry encoder speed: a MoGe-2-ViT-L-sized encoder at 640 px long side, and the compact encoder on CPU.

    python benchmarks/bench_geometry.py --device cuda --out out/bench_geometry.json
    python benchmarks/bench_geometry.py --quick          # tiny sizes on CPU, < 2 min, for testing

Rows (ViT on --device): eager fp32 with TF32 off (the baseline, speedup 1.0), eager fp32 TF32 on,
eager bf16/fp16 (weights cast), torch.compile bf16/fp16 with mode "max-autotune-no-cudagraphs" and
"reduce-overhead" (CUDA graphs), ONNX Runtime (its best provider; on CPU only at a reduced size,
flagged in the row). Then the compact encoder on CPU: torch eager and ONNX Runtime.
Timing: warm-up, then the median of --iters runs (CUDA events on the GPU, perf_counter on CPU).
Error: ||out - ref|| / ||ref|| of the point map vs eager fp32 (TF32 off) on a fresh random input.
The markdown table is printed last; --out writes the same rows as JSON.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from n3d_ros.geometry.compact_encoder import CompactEncoderConfig, CompactGeometryEncoder  # noqa: E402
from n3d_ros.geometry.export_onnx import export_onnx, relative_error  # noqa: E402
from n3d_ros.geometry.vit_encoder import VIT_L_640, VIT_TINY, ViTEncoderConfig, ViTGeometryEncoder  # noqa: E402


@dataclass
class Row:
    case: str
    model: str
    input: str
    device: str
    precision: str
    median_ms: float
    fps: float
    speedup: float      # vs the baseline of its group
    rel_err: float      # vs eager fp32 of the same model
    note: str = ""


@contextlib.contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def time_fn(fn: Callable[[], object], device: str, warmup: int, iters: int) -> float:
    """Median milliseconds per call."""
    for _ in range(warmup):
        fn()
    times = []
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _points(out: object) -> torch.Tensor:
    return (out[0] if isinstance(out, (tuple, list)) else out).float()


def bench_vit(cfg: ViTEncoderConfig, device: str, args: argparse.Namespace, rows: list[Row]) -> None:
    torch.manual_seed(0)
    ref_model = ViTGeometryEncoder(cfg).eval().to(device)
    shape = (1, 3, cfg.image_height, cfg.image_width)
    x_time = torch.rand(shape, device=device)
    x_err = torch.rand(shape, device=device)  # fresh input, never seen during warm-up/compile
    label = f"ViT {cfg.width}w x{cfg.depth}"
    size = f"{cfg.image_width}x{cfg.image_height}"
    with torch.inference_mode(), tf32(False):
        ref = _points(ref_model(x_err))
        base_ms = time_fn(lambda: ref_model(x_time), device, args.warmup, args.iters)
    rows.append(Row("eager", label, size, device, "fp32 (tf32 off)", base_ms, 1e3 / base_ms, 1.0, 0.0))
    cases: list[tuple[str, str, torch.dtype, str | None, bool]] = []  # name, precision, dtype, mode, tf32
    if device.startswith("cuda"):
        cases.append(("eager", "fp32 (tf32 on)", torch.float32, None, True))
    cases += [("eager", "bf16", torch.bfloat16, None, False)]
    if device.startswith("cuda"):
        cases += [("eager", "fp16", torch.float16, None, False)]
        if not args.skip_compile:
            if not args.skip_autotune:
                cases.append(("compiled max-autotune-no-cudagraphs", "bf16", torch.bfloat16,
                              "max-autotune-no-cudagraphs", False))
            cases += [("compiled reduce-overhead (CUDA graphs)", "bf16", torch.bfloat16, "reduce-overhead", False),
                      ("compiled reduce-overhead (CUDA graphs)", "fp16", torch.float16, "reduce-overhead", False)]
    for name, prec, dtype, mode, use_tf32 in cases:
        model = ViTGeometryEncoder(cfg).eval().to(device)
        model.load_state_dict(ref_model.state_dict())
        model = model.to(dtype)
        fn = torch.compile(model, mode=mode) if mode else model
        t0 = time.perf_counter()
        note = ""
        try:
            with torch.inference_mode(), tf32(use_tf32):
                fn(x_time.to(dtype))  # compile / first call outside the timing
                setup_s = time.perf_counter() - t0
                ms = time_fn(lambda: fn(x_time.to(dtype)), device, args.warmup, args.iters)
                err = relative_error(_points(fn(x_err.to(dtype))).cpu().numpy(), ref.cpu().numpy())
            if mode:
                note = f"compile {setup_s:.0f} s"
        except Exception as exc:  # a failing case (compiler, kernel) is reported as a row, not a crash
            rows.append(Row(name, label, size, device, prec, float("nan"), float("nan"), float("nan"),
                            float("nan"), f"failed: {type(exc).__name__}: {str(exc)[:120]}"))
            continue
        finally:
            del model, fn
            if device.startswith("cuda"):
                torch._dynamo.reset()
                torch.cuda.empty_cache()
        rows.append(Row(name, label, size, device, prec, ms, 1e3 / ms, base_ms / ms, err, note))
    del ref_model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def bench_vit_ort(cfg: ViTEncoderConfig, args: argparse.Namespace, rows: list[Row], note: str) -> None:
    """ONNX Runtime on the best available provider vs torch eager fp32 on CPU for the same model."""
    import onnxruntime as ort

    from n3d_ros.geometry.backends import ort_providers

    torch.manual_seed(0)
    model = ViTGeometryEncoder(cfg).eval()
    shape = (1, 3, cfg.image_height, cfg.image_width)
    x_time, x_err = torch.rand(shape), torch.rand(shape)
    label, size = f"ViT {cfg.width}w x{cfg.depth}", f"{cfg.image_width}x{cfg.image_height}"
    with tempfile.TemporaryDirectory() as d:
        rep = export_onnx(model, Path(d) / "vit.onnx", example_inputs=(x_time,), input_names=["image"],
                          output_names=["points", "mask_logits"], check=False)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        sess = ort.InferenceSession(str(rep.path), providers=ort_providers(device))
        provider = sess.get_providers()[0]
        with torch.inference_mode():
            ref = _points(model(x_err)).numpy()
            base_ms = time_fn(lambda: model(x_time), "cpu", args.warmup, args.iters)
        rows.append(Row("eager (ORT reference)", label, size, "cpu", "fp32", base_ms, 1e3 / base_ms, 1.0, 0.0, note))
        ms = time_fn(lambda: sess.run(None, {"image": x_time.numpy()}), "cpu", args.warmup, args.iters)
        err = relative_error(sess.run(None, {"image": x_err.numpy()})[0], ref)
        rows.append(Row(f"onnxruntime {provider}", label, size, "cpu" if provider == "CPUExecutionProvider"
                        else device, "fp32", ms, 1e3 / ms, base_ms / ms, err, note))


def bench_compact_cpu(args: argparse.Namespace, rows: list[Row]) -> None:
    import onnxruntime as ort

    cfg = CompactEncoderConfig()
    torch.manual_seed(0)
    model = CompactGeometryEncoder(cfg).eval()
    h, w = cfg.in_height, cfg.in_width
    gen = torch.Generator().manual_seed(1)
    inputs_t = (torch.rand(1, 3, h, w), torch.randn(1, 2, h, w) * 0.5)
    inputs_e = (torch.rand(1, 3, h, w, generator=gen), torch.randn(1, 2, h, w, generator=gen) * 0.5)
    size, label = f"{w}x{h}", "compact"
    with torch.inference_mode():
        ref = _points(model(*inputs_e)).numpy()
        base_ms = time_fn(lambda: model(*inputs_t), "cpu", args.warmup, args.iters)
    rows.append(Row("eager", label, size, "cpu", "fp32", base_ms, 1e3 / base_ms, 1.0, 0.0,
                    f"{torch.get_num_threads()} threads"))
    with tempfile.TemporaryDirectory() as d:
        rep = export_onnx(model, Path(d) / "compact.onnx", example_inputs=inputs_t,
                          input_names=["image", "rays"], output_names=["points", "mask_logits", "features"],
                          check=False)
        sess = ort.InferenceSession(str(rep.path), providers=["CPUExecutionProvider"])
        feeds = {"image": inputs_t[0].numpy(), "rays": inputs_t[1].numpy()}
        ms = time_fn(lambda: sess.run(None, feeds), "cpu", args.warmup, args.iters)
        err = relative_error(sess.run(None, {"image": inputs_e[0].numpy(), "rays": inputs_e[1].numpy()})[0], ref)
    rows.append(Row("onnxruntime CPUExecutionProvider", label, size, "cpu", "fp32", ms, 1e3 / ms, base_ms / ms, err))


def markdown(rows: list[Row], header: str) -> str:
    lines = [header, "",
             "| case | model | input | device | precision | median ms | frames/s | speedup | rel err vs fp32 | note |",
             "|---|---|---|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r.case} | {r.model} | {r.input} | {r.device} | {r.precision} | {r.median_ms:.2f} | "
                     f"{r.fps:.1f} | {r.speedup:.2f}x | {r.rel_err:.1e} | {r.note} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--quick", action="store_true", help="tiny sizes on CPU for testing")
    p.add_argument("--iters", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--skip-compile", action="store_true")
    p.add_argument("--skip-autotune", action="store_true", help="drop the max-autotune case (slow to compile)")
    p.add_argument("--ort-size", default="224x168", help="WxH for the ONNX Runtime ViT row when ORT is CPU-only")
    p.add_argument("--out", type=Path, default=None, help="write rows as JSON here")
    args = p.parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if args.quick:
        device = "cpu"
    args.iters = args.iters or (5 if args.quick else 50)
    args.warmup = args.warmup or (2 if args.quick else 10)
    vit = VIT_TINY if args.quick else VIT_L_640
    rows: list[Row] = []
    t0 = time.perf_counter()
    bench_vit(vit, device, args, rows)
    # ORT on the GPU machine has only the CPU provider: a full ViT-L frame would take seconds, so the
    # ORT row runs ViT-L width and depth at a reduced input size (flagged in the note).
    import onnxruntime as ort

    gpu_ort = device.startswith("cuda") and ({"CUDAExecutionProvider", "TensorrtExecutionProvider"}
                                             & set(ort.get_available_providers()))
    if args.quick or gpu_ort:
        bench_vit_ort(vit, args, rows, "")
    else:
        w, h = (int(v) for v in args.ort_size.split("x"))
        bench_vit_ort(replace(vit, image_width=w, image_height=h), args, rows,
                      "reduced size: ORT has only the CPU provider here")
    bench_compact_cpu(args, rows)
    gpu = torch.cuda.get_device_name(0) if device.startswith("cuda") else platform.processor() or "cpu"
    header = (f"Geometry encoder benchmark, {dt.date.today().isoformat()}, {gpu}, torch {torch.__version__}, "
              f"onnxruntime {ort.__version__}, batch 1, median of {args.iters} after {args.warmup} warm-up "
              f"({time.perf_counter() - t0:.0f} s total)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"header": header, "rows": [asdict(r) for r in rows]}, indent=1))
    print(markdown(rows, header))
    return 0


if __name__ == "__main__":
    sys.exit(main())
