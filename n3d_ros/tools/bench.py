"""`n3d-bench`: the spatial benchmark on held-out sim scenes, monocular vs with depth.

    n3d-bench --scenes 30 --questions-per-scene 6 --device cpu --out results.json
    n3d-bench --quick            # 2 small scenes, 3 questions each: a smoke test in seconds

Prints one markdown table (metric x {monocular, depth}), QA accuracy per question kind, and the
hardware/date line; writes everything (with per-kind counts and the seeds) to --out as JSON.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .eval_spatial import (HELD_OUT_FIRST_SEED, MODES, BenchmarkReport, EvalConfig, QueryPipeline, evaluate,
                           held_out_seeds, sim_samples, to_markdown)

QUICK = {"scenes": 2, "questions_per_scene": 3, "max_width": 320}


@dataclass(frozen=True)
class BenchOptions:
    scenes: int = 30
    questions_per_scene: int = 6
    first_seed: int = HELD_OUT_FIRST_SEED
    max_width: int = 640             # px; wider scene cameras are downscaled (same field of view)
    modes: tuple[str, ...] = MODES
    prompt_labels: bool = False      # detection prompted with the GT label set instead of "everything"
    prompt_targets: bool = False     # questions carry the GT target phrases in `targets`
    device: str = "auto"             # pipeline device: auto | cpu | cuda
    backend: str = "compact"
    model_dir: str = ""
    geometry: str = "auto"
    precision: str = "fp32"
    encode_cache: bool = True        # compact: follow-up questions reuse the frame's encoding
    ensemble: str = ""               # compact: PipelineConfig.ensemble ("" = the model folder's setting)
    out: str = ""                    # JSON path; "" = do not write

    def __post_init__(self) -> None:
        if self.scenes < 1 or self.questions_per_scene < 0:
            raise ValueError(f"need scenes >= 1 and questions_per_scene >= 0, got {self.scenes}, "
                             f"{self.questions_per_scene}")
        if self.max_width < 0:
            raise ValueError(f"max_width must be >= 0 (0 = no limit), got {self.max_width}")


def hardware_line(device: str) -> str:
    """'<cpu model> (<n> cores)[, <gpu>], <os>, Python x, torch y, <date>' for the report."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass  # not Linux: platform.processor() is the best we have
    parts = [f"{cpu} ({os.cpu_count()} cores)"]
    try:
        import torch
        if device.startswith("cuda") and torch.cuda.is_available():
            parts.append(f"GPU {torch.cuda.get_device_name(0)}")
        torch_version = torch.__version__
    except ImportError:
        torch_version = "absent"
    parts += [f"{platform.system()} {platform.release()}", f"Python {platform.python_version()}",
              f"torch {torch_version}", _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")]
    return ", ".join(parts)


def run_benchmark(opts: BenchOptions, pipeline: QueryPipeline, *, render_device: str = "cpu"
                  ) -> BenchmarkReport:
    """Render the held-out scenes once, evaluate every mode, attach the environment."""
    t0 = time.perf_counter()
    seeds = held_out_seeds(opts.scenes, opts.first_seed)
    samples = list(sim_samples(seeds, questions_per_scene=opts.questions_per_scene,
                               max_width=opts.max_width, render_device=render_device))
    t_render = time.perf_counter() - t0
    report = evaluate(pipeline, samples, EvalConfig(modes=opts.modes, prompt_labels=opts.prompt_labels,
                                                    prompt_targets=opts.prompt_targets))
    device = str(getattr(pipeline, "device", opts.device))
    report.environment = {
        "hardware": hardware_line(device),
        "backend": str(getattr(pipeline, "backend_name", opts.backend)),
        "device": device,
        "geometry_backend": str(getattr(pipeline, "geometry_backend", "")),
        "render_s": round(t_render, 2),
        "total_s": round(time.perf_counter() - t0, 2),
        "questions": sum(len(s.questions) for s in samples),
    }
    settings = getattr(getattr(pipeline, "vlm", None), "inference_settings", None)
    if isinstance(settings, dict):
        report.environment["model_settings"] = settings
    report.config.update({"scenes": opts.scenes, "questions_per_scene": opts.questions_per_scene,
                          "first_seed": opts.first_seed, "max_width": opts.max_width,
                          "encode_cache": opts.encode_cache})
    return report


def format_report(report: BenchmarkReport) -> str:
    env = report.environment
    seeds = report.seeds
    head = (f"Spatial benchmark: {len(seeds)} held-out scenes (seeds {seeds[0]}..{seeds[-1]}), "
            f"{env.get('questions', '?')} questions; backend {env.get('backend', '?')} on "
            f"{env.get('device', '?')} (geometry encoder: {env.get('geometry_backend', '?')})")
    return "\n".join([head, "", to_markdown(report), "",
                      f"Hardware/date: {env.get('hardware', '?')}; wall time {env.get('total_s', '?')} s "
                      f"(rendering {env.get('render_s', '?')} s)"])


def parse_args(argv: Sequence[str] | None = None) -> BenchOptions:
    p = argparse.ArgumentParser(prog="n3d-bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenes", type=int, default=30)
    p.add_argument("--questions-per-scene", type=int, default=6)
    p.add_argument("--first-seed", type=int, default=HELD_OUT_FIRST_SEED,
                   help=f"first held-out seed (>= {HELD_OUT_FIRST_SEED}; training uses the ones below)")
    p.add_argument("--max-width", type=int, default=640, help="downscale wider scene cameras (0 = never)")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--prompt-labels", action="store_true",
                   help="prompt detection with the ground-truth label set (default: detect everything)")
    p.add_argument("--prompt-targets", action="store_true",
                   help="pass the ground-truth target phrases as `targets` (default: the model decides)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--backend", choices=("compact", "n3d_vlm", "qwen3_vl"), default="compact")
    p.add_argument("--model-dir", default="", help="checkpoint folder ('' = built-in compact model)")
    p.add_argument("--geometry", default="auto", help="geometry encoder runtime (auto|tensorrt|onnxruntime|torch)")
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32")
    p.add_argument("--no-encode-cache", action="store_true",
                   help="encode the frame again for every question (default: once per frame)")
    p.add_argument("--ensemble", default="",
                   help="compact: model folders to average with, comma-separated, relative to the model folder "
                        "('member_b' for the built-in model's second model; 'none': alone; '' = the folder's setting)")
    p.add_argument("--out", default="", help="write the full report as JSON here")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke test: {QUICK['scenes']} scenes, {QUICK['questions_per_scene']} questions "
                        f"each, at most {QUICK['max_width']} px wide")
    a = p.parse_args(argv)
    scenes, qps, max_width = a.scenes, a.questions_per_scene, a.max_width
    if a.quick:
        scenes, qps, max_width = QUICK["scenes"], QUICK["questions_per_scene"], QUICK["max_width"]
    return BenchOptions(scenes=scenes, questions_per_scene=qps, first_seed=a.first_seed, max_width=max_width,
                        modes=tuple(a.modes), prompt_labels=a.prompt_labels,
                        prompt_targets=a.prompt_targets, device=a.device,
                        backend=a.backend, model_dir=a.model_dir, geometry=a.geometry, precision=a.precision,
                        encode_cache=not a.no_encode_cache, ensemble=a.ensemble, out=a.out)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        opts = parse_args(argv)
    except ValueError as exc:
        print(f"n3d-bench: {exc}", file=sys.stderr)
        return 2
    from ..pipeline.spatial_pipeline import PipelineConfig, SpatialPipeline
    from ..vlm.contract import ModelLoadError
    try:
        pipe = SpatialPipeline(PipelineConfig(backend=opts.backend, model_dir=opts.model_dir,
                                              geometry=opts.geometry, device=opts.device,
                                              precision=opts.precision, encode_cache=opts.encode_cache,
                                              ensemble=opts.ensemble))
    except (ModelLoadError, ValueError) as exc:
        print(f"n3d-bench: cannot load the pipeline: {exc}", file=sys.stderr)
        return 2
    try:
        pipe.warmup()
        render_device = "cuda" if str(pipe.device).startswith("cuda") else "cpu"
        report = run_benchmark(opts, pipe, render_device=render_device)
    finally:
        pipe.close()
    print(format_report(report))
    if opts.out:
        Path(opts.out).write_text(json.dumps(report.to_dict(), indent=2, default=str))
        print(f"\nwrote {opts.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
