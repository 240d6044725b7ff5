"""Where a training step of the compact model spends its time (the step rate bounds the training budget).

    python benchmarks/profile_train_step.py --device cuda --scenes 2000 --steps 60
    python benchmarks/profile_train_step.py --device cuda --dense-head true --questions-per-image 2
    python benchmarks/profile_train_step.py --device cuda --dense-head true --compile encoder --kernels
    python benchmarks/profile_train_step.py --device cuda --dense-head true --fine-features true
    python benchmarks/profile_train_step.py --device cuda --dense-head true --fine-features true --mirror true \
        --compile graphs --grid-width 384 --grid-height 288 --f0 288 --channels-last true   # the recipe's step

Times, per step, with the GPU synchronized around each phase (so phases do not overlap as they do
in training): batch assembly on the CPU, forward, backward, optimizer. Then the step rate with nothing
synchronized, as the training loop runs: the CPU may prepare the next step while the GPU runs this
one. Then one background refresh of `refresh_fraction` of the scenes (its wall time in the workers,
and the part the loop waits for).
Prints a markdown table (median ms and share of the step).
--compile encoder runs the encoder through `torch.compile`, --compile all the decoder's pass too
(train_compact.compile_for_training);
--kernels adds the GPU's busy time per step (torch.profiler): far below the step time means the
step is bound by launching kernels, not by running them.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch


def main(argv: list[str] | None = None) -> None:
    from n3d_ros.geometry.compact_encoder import CompactEncoderConfig, CompactGeometryEncoder
    from n3d_ros.tools.train_compact import (COMPILE_CHOICES, GpuDataset, TrainConfig, build_tokenizer, collate,
                                             compile_for_training, new_decoder_config, step_losses, train_step)
    from n3d_ros.vlm.compact_model import CompactSpatialDecoder

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--scenes", type=int, default=2000)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--images-per-step", type=int, default=48)
    p.add_argument("--questions-per-image", type=int, default=4)
    p.add_argument("--dense-head", type=lambda s: s.lower() in ("1", "true", "yes"), default=False)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--compile", choices=COMPILE_CHOICES, default="none")
    p.add_argument("--fine-features", type=lambda s: s.lower() in ("1", "true", "yes"), default=False)
    p.add_argument("--depth-cells", type=int, default=0, help="sub-patch depth detail of the decoder (0 = off)")
    p.add_argument("--source-embedding", type=lambda s: s.lower() in ("1", "true", "yes"), default=False,
                   help="decoder's measured/estimated geometry embedding")
    p.add_argument("--encoder-context", type=int, default=0, help="encoder self-attention blocks at stride 16")
    p.add_argument("--mirror", type=lambda s: s.lower() in ("1", "true", "yes"), default=False,
                   help="mirror half of the images and their targets (train_compact --mirror)")
    p.add_argument("--channels-last", type=lambda s: s.lower() in ("1", "true", "yes"), default=False,
                   help="encoder weights and inputs NHWC (train_compact --channels-last)")
    p.add_argument("--grid-width", type=int, default=CompactEncoderConfig.in_width, help="model grid, px")
    p.add_argument("--grid-height", type=int, default=CompactEncoderConfig.in_height)
    p.add_argument("--f0", type=float, default=CompactEncoderConfig.f0, help="the grid's focal length, px")
    p.add_argument("--refresh-every-steps", type=int, default=80,
                   help="start a refresh this often in the unsynchronized loop, as training does (0 = never)")
    p.add_argument("--refresh-fraction", type=float, default=0.05)
    p.add_argument("--kernels", action="store_true", help="also report GPU busy time per step (torch.profiler)")
    a = p.parse_args(argv)
    cfg = TrainConfig(device=a.device, scenes=a.scenes, refresh_fraction=a.refresh_fraction,
                      images_per_step=a.images_per_step,
                      questions_per_image=a.questions_per_image, workers=a.workers, scene_seed_offset=0,
                      dense_head=a.dense_head)
    tok = build_tokenizer(n_scenes=100)
    tok_path = "/tmp/n3d_profile_tokenizer.json"
    tok.save(tok_path)
    enc_cfg = CompactEncoderConfig(in_width=a.grid_width, in_height=a.grid_height, f0=a.f0,
                                   fine_features=a.fine_features, context_layers=a.encoder_context)
    dec_cfg = new_decoder_config(tok, enc_cfg, dense_head=a.dense_head, depth_cells=a.depth_cells,
                                 source_embedding=a.source_embedding)
    enc = CompactGeometryEncoder(enc_cfg).to(a.device)
    dec = CompactSpatialDecoder(dec_cfg).to(a.device)
    ds = GpuDataset(cfg, enc_cfg, dec_cfg, tok_path, print)
    params = list(enc.parameters()) + list(dec.parameters())
    t_compile = time.perf_counter()
    # The flag passed only when set, so this script also profiles code from before it ("before" rows of
    # benchmarks/results/train_h100_fast_loop.md).
    passes = compile_for_training(enc, dec, a.compile, **({"channels_last": True} if a.channels_last else {}))
    opt = torch.optim.AdamW(params, lr=1e-4, fused=a.device.startswith("cuda"))
    rng = np.random.default_rng(0)
    trng = torch.Generator(device=a.device)
    cuda = a.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    phases: dict[str, list[float]] = {"batch (CPU)": [], "forward": [], "backward": [], "optimizer": [], "step": []}
    warm = 5 if a.compile == "none" else 15   # compiled: the first steps compile (and may recompile)
    for i in range(a.steps + warm):
        if i == warm:
            t_compile = time.perf_counter() - t_compile
        sync()
        t0 = time.perf_counter()
        batch = collate(ds, rng, cfg, dec_cfg, tok)
        sync()
        t1 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            loss, _ = step_losses(passes, ds, batch, trng, dec_cfg, mirror=a.mirror)
        sync()
        t2 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sync()
        t3 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sync()
        t4 = time.perf_counter()
        if i >= warm:  # warm-up steps excluded
            for k, v in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0)):
                phases[k].append(v * 1e3)
    # The loop as training runs it: nothing synchronized between steps, so the CPU prepares and launches
    # step n+1 while the GPU runs step n (unless something in the step waits for the GPU).
    # The workers refresh scenes all along, as in training (--refresh-every-steps).
    sync()
    t0 = time.perf_counter()
    for i in range(a.steps):
        if (a.refresh_every_steps and i % a.refresh_every_steps == 0) or ds.refreshing:
            ds.refresh(rng)
        train_step(passes, ds, collate(ds, rng, cfg, dec_cfg, tok), trng, dec_cfg, opt, params, amp=cuda,
                   mirror=a.mirror)
    sync()
    loop_ms = (time.perf_counter() - t0) * 1e3 / a.steps
    while ds.refreshing:
        ds.refresh(rng)
        time.sleep(0.02)
    busy_ms = float("nan")
    if a.kernels and cuda:
        busy_ms = _gpu_busy_ms(lambda: train_step(passes, ds, collate(ds, rng, cfg, dec_cfg, tok), trng, dec_cfg, opt,
                                                  params, amp=True, mirror=a.mirror), 10)
    refresh_wall, swap_ms = _time_refresh(ds, rng, sync)
    ds.close()
    step = statistics.median(phases["step"])
    name = torch.cuda.get_device_name(0) if cuda else "CPU"
    print(f"\nTraining step profile on {name}: {a.images_per_step} images x {a.questions_per_image} questions, "
          f"{a.grid_width}x{a.grid_height} grid, dense head {a.dense_head}, compile {a.compile}, channels last "
          f"{a.channels_last}, {a.steps} steps\n")
    print("| phase | median ms | share of step |\n|---|---|---|")
    for k, v in phases.items():
        m = statistics.median(v)
        print(f"| {k} | {m:.1f} | {m / step:.0%} |")
    print(f"\nsteps/s as in training (nothing synchronized): {1e3 / loop_ms:.1f} ({loop_ms:.1f} ms a step)")
    print(f"steps/s (phases serialized): {1e3 / step:.1f}; refresh of "
          f"{max(1, int(cfg.refresh_fraction * cfg.scenes))} scenes: {refresh_wall:.1f} s in {cfg.workers} workers, "
          f"{swap_ms:.0f} ms in the training loop")
    if a.compile != "none":
        print(f"compile + warm-up: {t_compile:.0f} s")
    if a.kernels and cuda:
        print(f"GPU busy per step (sum of kernel times): {busy_ms:.1f} ms")


def _time_refresh(ds, rng, sync) -> tuple[float, float]:
    """Wall time of one background refresh (worker processes) and the time the training loop
    itself spends in it (submitting, then swapping the finished scenes into their slots)."""
    in_loop = 0.0
    t0 = time.perf_counter()
    while True:
        sync()
        t1 = time.perf_counter()
        ds.refresh(rng)
        sync()
        in_loop += time.perf_counter() - t1
        if not ds.refreshing:
            return time.perf_counter() - t0, in_loop * 1e3
        time.sleep(0.02)


def _gpu_busy_ms(step, n: int) -> float:
    """Device time of all kernels over n steps, per step (kernels only: the ops that launched
    them report the same time again)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            step()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=12))
    total_us = sum(e.self_device_time_total for e in prof.events() if e.device_type == DeviceType.CUDA)
    return total_us / 1e3 / n


if __name__ == "__main__":
    main()
