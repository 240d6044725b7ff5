"""Host cost of getting a camera image onto the model grid (focal normalization + resampling).

    python benchmarks/bench_preprocess.py
    python benchmarks/bench_preprocess.py --repeats 50

Times `geometry.preprocess.prepare_input` (what every encoder call does first) and the frame
content key that lets follow-up questions reuse an encoding (`SceneInput.content_key`), for
common camera sizes, and prints a markdown table of medians. Both run on the host CPU whatever the
GPU, so on a GPU machine they are a fixed part of each first query on a frame.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

CAMERAS = ((320, 240, 300.0), (640, 480, 525.0), (1280, 720, 900.0), (1920, 1080, 1400.0))


def _median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    from n3d_ros.core.camera import CameraModel
    from n3d_ros.geometry.compact_encoder import CompactEncoderConfig
    from n3d_ros.geometry.preprocess import prepare_input
    from n3d_ros.vlm.contract import SceneInput

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=20)
    a = p.parse_args(argv)
    cfg = CompactEncoderConfig()
    rng = np.random.default_rng(0)
    print(f"| camera | prepare_input ms (to {cfg.in_width}x{cfg.in_height}) | content key ms (RGB + depth) |")
    print("|---|---|---|")
    for w, h, f in CAMERAS:
        cam = CameraModel.from_intrinsics(f, f, (w - 1) / 2, (h - 1) / 2, w, h)
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        depth = rng.uniform(0.5, 5.0, (h, w)).astype(np.float32)
        prep = _median_ms(lambda: prepare_input(img, cam, cfg), a.repeats)
        key = _median_ms(lambda: SceneInput(img, cam, depth=depth).content_key(), a.repeats)
        print(f"| {w}x{h}, fx {f:g} | {prep:.1f} | {key:.2f} |")


if __name__ == "__main__":
    main()
