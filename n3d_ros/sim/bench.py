"""Measure scene generation and render speed: `python -m n3d_ros.sim.bench --device cuda --batch 64`."""
from __future__ import annotations

import argparse
import time

import torch

from ..core.camera import CameraModel
from .render import render
from .world import generate_scene


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench(*, device: str, batch: int, width: int, height: int, fx: float, repeats: int, tile: int,
          first_seed: int = 0) -> dict[str, float]:
    """Time generate_scene + render of `repeats` batches (after one warm-up); returns ms figures."""
    camera = CameraModel.from_intrinsics(fx, fx, (width - 1) / 2, (height - 1) / 2, width, height)
    seed = first_seed
    gen_s = render_s = 0.0
    for r in range(repeats + 1):
        t0 = time.perf_counter()
        scenes = [generate_scene(seed + i).with_camera(camera) for i in range(batch)]
        t1 = time.perf_counter()
        render(scenes, device=device, tile=tile)
        _sync(device)
        t2 = time.perf_counter()
        seed += batch
        if r > 0:  # the first batch pays for allocator and kernel warm-up
            gen_s += t1 - t0
            render_s += t2 - t1
    n = repeats * batch
    return {"generate_ms_per_scene": 1e3 * gen_s / n, "render_ms_per_frame": 1e3 * render_s / n,
            "render_ms_per_batch": 1e3 * render_s / repeats, "render_frames_per_s": n / render_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--fx", type=float, default=500.0)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tile", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    res = bench(device=args.device, batch=args.batch, width=args.width, height=args.height, fx=args.fx,
                repeats=args.repeats, tile=args.tile)
    print(f"device={args.device} batch={args.batch} {args.width}x{args.height} tile={args.tile} "
          f"threads={torch.get_num_threads()}: " + ", ".join(f"{k}={v:.2f}" for k, v in res.items()))


if __name__ == "__main__":
    main()
