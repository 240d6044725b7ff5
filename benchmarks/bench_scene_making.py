"""What a training scene costs to make, step by step (train_compact's workers and its first fill).

    python benchmarks/bench_scene_making.py --device cuda        # GPU render rows too
    python benchmarks/bench_scene_making.py --device cpu --scenes 16

Per scene, in ms: generation, the render on one CPU thread (what a refresh worker pays), questions
and targets (a worker), and the render on `--device` for several batch sizes and chunk bounds (the first fill renders 64 a batch with
render's default). Prints a markdown table; all rows come from this one run.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch


def _ms_per_scene(fn, n: int, repeats: int, sync) -> float:
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3 / n)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    from n3d_ros.geometry.compact_encoder import CompactEncoderConfig
    from n3d_ros.sim.render import render
    from n3d_ros.tools.train_compact import (TrainConfig, build_tokenizer, grid_setup, make_scene, new_decoder_config,
                                             question_records, render_scenes)

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--scenes", type=int, default=128, help="scenes per GPU batch row (largest)")
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)
    cuda = a.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    tok = build_tokenizer(n_scenes=50)
    tok_path = "/tmp/n3d_bench_scene_tokenizer.json"
    tok.save(tok_path)
    enc_cfg = CompactEncoderConfig(fine_features=True)
    dec_cfg = new_decoder_config(tok, enc_cfg, dense_head=True)
    cfg = TrainConfig(device=a.device, dense_head=True)
    rows: list[tuple[str, float]] = []
    torch.set_num_threads(1)        # host rows: one worker's core
    seeds = list(range(500_000, 500_000 + a.scenes))
    few = seeds[:8]
    rows.append(("generate (1 thread)",
                 _ms_per_scene(lambda: [make_scene(s) for s in few], len(few), a.repeats, lambda: None)))
    scenes = [make_scene(s) for s in seeds]
    setups = [grid_setup(s, enc_cfg) for s in scenes]

    def draw(batch, device, **kw):
        cams, rects = [c for c, _ in setups[:len(batch)]], [r for _, r in setups[:len(batch)]]
        return render(batch, device=device, cameras=cams, valid_rects=rects, named=True, **kw)

    rows.append(("render on the CPU (1 thread, 8 a batch)",
                 _ms_per_scene(lambda: draw(scenes[:8], "cpu"), 8, a.repeats, lambda: None)))
    r = render_scenes(scenes[:8], enc_cfg, dec_cfg, tok_path, cfg, "cpu")
    rows.append(("questions and targets (1 thread)",
                 _ms_per_scene(lambda: [question_records(j) for j in r.jobs], 8, a.repeats, lambda: None)))
    if cuda:
        torch.set_num_threads(max(1, torch.get_num_threads()))
        draw(scenes[:8], a.device)  # CUDA context and kernels warm
        for n in sorted({16, 64, a.scenes}):
            for chunk, name in ((1 << 23, "render's default 2^23"), (1 << 26, "2^26")):
                ms = _ms_per_scene(lambda: draw(scenes[:n], a.device, chunk_elements=chunk), n, a.repeats, sync)
                rows.append((f"render on {a.device}, {n} a batch, chunk {name}", ms))
        ms = _ms_per_scene(lambda: render_scenes(scenes[:64], enc_cfg, dec_cfg, tok_path, cfg, a.device), 64,
                           a.repeats, sync)
        rows.append((f"render_scenes on {a.device} (render + visibility + jobs), 64 a batch", ms))
    name = torch.cuda.get_device_name(0) if cuda else "CPU"
    print(f"\nScene making on {name} (host rows: one thread)\n")
    print("| step | ms a scene |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v:.2f} |")


if __name__ == "__main__":
    main()
