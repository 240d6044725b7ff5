"""Cost of getting a camera image onto the model grid (focal normalization + resampling).

    python benchmarks/bench_preprocess.py
    python benchmarks/bench_preprocess.py --repeats 50 --device cuda

Times `geometry.preprocess.prepare_input` (what every host-path encoder call does first) and the frame
content key that lets follow-up questions reuse an encoding (`SceneInput.content_key`), for
common camera sizes on the built-in model's grid, and prints a markdown table of medians. Both run
on the host CPU whatever the GPU. With `--device cuda` it also times, side by side, what the
compact encoder's input costs on a GPU each way, with the mirror image the shipped model adds:
the host path (prepare_input, the mirror image and the float32 grids' upload) and the device path
(`DevicePreprocess`: the uint8 image's upload and the resampling there), each synchronized.
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
    from n3d_ros.geometry.preprocess import DevicePreprocess, prepare_input, stacked_inputs
    from n3d_ros.vlm.compact_backend import default_model_dir, encoder_config, read_model_config
    from n3d_ros.vlm.contract import SceneInput

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--device", default="", help="also time the host and device paths onto this torch device")
    a = p.parse_args(argv)
    cfg = encoder_config(read_model_config(default_model_dir())["encoder"])
    rng = np.random.default_rng(0)
    head = f"| camera | prepare_input ms (to {cfg.in_width}x{cfg.in_height}) | content key ms (RGB + depth) |"
    if a.device:
        import torch
        sync = torch.cuda.synchronize if a.device.startswith("cuda") else (lambda: None)
        device_prep = DevicePreprocess(cfg, a.device)

        def host_path(img, cam):
            image, rays, _ = stacked_inputs([img], [cam], cfg, mirrored=True)
            torch.from_numpy(image).to(a.device), torch.from_numpy(rays).to(a.device)
            sync()

        def device_path(img, cam):
            device_prep([img], [cam], mirrored=True)
            sync()
        head += f" host path ms ({a.device}) | device path ms ({a.device}) | host / device |"
    print(head)
    print("|---" * head.count(" | ") + "|---|")
    for w, h, f in CAMERAS:
        cam = CameraModel.from_intrinsics(f, f, (w - 1) / 2, (h - 1) / 2, w, h)
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        depth = rng.uniform(0.5, 5.0, (h, w)).astype(np.float32)
        prep = _median_ms(lambda: prepare_input(img, cam, cfg), a.repeats)
        key = _median_ms(lambda: SceneInput(img, cam, depth=depth).content_key(), a.repeats)
        row = f"| {w}x{h}, fx {f:g} | {prep:.1f} | {key:.2f} |"
        if a.device:
            host = _median_ms(lambda: host_path(img, cam), a.repeats)
            dev = _median_ms(lambda: device_path(img, cam), a.repeats)
            row += f" {host:.1f} | {dev:.2f} | {host / dev:.1f}x |"
        print(row)


if __name__ == "__main__":
    main()
