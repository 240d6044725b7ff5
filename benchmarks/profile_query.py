"""Where one spatial query spends its time (host side): cProfile over benchmark queries.

    python benchmarks/profile_query.py --device cuda --scenes 6
    python benchmarks/profile_query.py --device cpu --mode monocular
    python benchmarks/profile_query.py --device cuda --first-only --scenes 20

Renders a few held-out scenes, warms the pipeline up, then profiles every question (plus one
"detect all" query) per scene and prints the n3d_ros functions by cumulative time, with the
median wall time per query. On a GPU most of a query is Python launching small kernels, so
this shows which stage to fuse or cache next.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import time
from dataclasses import replace


def main(argv: list[str] | None = None) -> None:
    from n3d_ros.pipeline.spatial_pipeline import PipelineConfig, SpatialPipeline
    from n3d_ros.tools.eval_spatial import DETECT_QUESTION, HELD_OUT_FIRST_SEED, sim_samples

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--scenes", type=int, default=6)
    p.add_argument("--questions-per-scene", type=int, default=8)
    p.add_argument("--mode", choices=("monocular", "depth"), default="depth")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--kernels", action="store_true",
                   help="also time the same queries under torch.profiler: GPU kernel time per query against wall time")
    p.add_argument("--first-only", action="store_true",
                   help="profile only each frame's first query (\"detect all\", the frame's encoding included)")
    a = p.parse_args(argv)
    pipe = SpatialPipeline(PipelineConfig(backend="compact", device=a.device,
                                          encode_cache=not a.first_only))  # each first query encodes
    pipe.warmup()
    render_device = "cuda" if str(pipe.device).startswith("cuda") else "cpu"
    samples = list(sim_samples(range(HELD_OUT_FIRST_SEED, HELD_OUT_FIRST_SEED + a.scenes),
                               questions_per_scene=a.questions_per_scene, max_width=640,
                               render_device=render_device))
    queries = []
    for s in samples:
        frame = s.frame if a.mode == "depth" else replace(s.frame, depth=None)
        queries.append((frame, DETECT_QUESTION, True))
        if not a.first_only:
            queries += [(frame, q.text, False) for q in s.questions]
    for frame, text, det in queries[:5]:          # warm-up (allocator, cudnn plans)
        pipe.query(frame, text, (), detect_only=det)
    plain = []                                    # unprofiled wall time: what the profile's overhead hides
    for frame, text, det in queries:
        t0 = time.perf_counter()
        pipe.query(frame, text, (), detect_only=det)
        plain.append(time.perf_counter() - t0)
    kernel_line = ""
    if a.kernels and str(pipe.device).startswith("cuda"):
        import torch
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as kprof:
            for frame, text, det in queries:
                pipe.query(frame, text, (), detect_only=det)
            torch.cuda.synchronize()
        events = kprof.key_averages()
        gpu_us = sum(e.self_device_time_total for e in events)
        launches = sum(e.count for e in events if e.key.startswith(("cudaLaunchKernel", "cuLaunchKernel")))
        copies = sum(e.count for e in events if e.key.startswith("cudaMemcpy"))
        print(events.table(sort_by="self_device_time_total", row_limit=15))
        kernel_line = (f"GPU kernel time {gpu_us / 1e3 / len(queries):.2f} ms a query; {launches / len(queries):.0f} "
                       f"kernel launches and {copies / len(queries):.0f} memcpy calls a query")
    times = []
    prof = cProfile.Profile()
    for frame, text, det in queries:
        t0 = time.perf_counter()
        prof.enable()
        pipe.query(frame, text, (), detect_only=det)
        prof.disable()
        times.append(time.perf_counter() - t0)
    pipe.close()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("cumulative").print_stats(r"n3d_ros|torch/nn/modules/module.py|onnxruntime", a.top)
    print(out.getvalue())
    print(f"{len(queries)} queries on {pipe.device} ({a.mode}): median {statistics.median(plain) * 1e3:.1f} ms "
          f"unprofiled, {statistics.median(times) * 1e3:.1f} ms under cProfile")
    if kernel_line:
        print(kernel_line)


if __name__ == "__main__":
    main()
