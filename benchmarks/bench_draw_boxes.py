"""Host cost of drawing 3D boxes into an image (`core.export.draw_boxes`, what the node's annotated image and
`draw_boxes_png` use), per frame.

    python benchmarks/bench_draw_boxes.py
    python benchmarks/bench_draw_boxes.py --repeats 50

Draws 1, 10 and 30 boxes (spread in front of the camera, turned) into blank 640x480 and 1280x720 frames and
prints a markdown table of the median time a frame over the repeats. It replaced a unit test that asserted a
time bound, which failed whenever the test machine was busy.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

CAMERAS = ((640, 480, 500.0), (1280, 720, 900.0))
BOX_COUNTS = (1, 10, 30)


def boxes(n: int):
    from n3d_ros.core.box import Box3D
    from n3d_ros.core.objects import GroundedObject
    return [GroundedObject(Box3D.from_yaw((0.4 * (i % 10) - 2, 0.1, 2 + 0.5 * (i % 10) + i // 10),
                                          (0.5, 0.8, 0.4), 0.3 * i), f"o{i}") for i in range(n)]


def main(argv: list[str] | None = None) -> None:
    from n3d_ros.core.camera import CameraModel
    from n3d_ros.core.export import draw_boxes

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=20)
    a = p.parse_args(argv)
    print("| frame | boxes | ms a frame (median) |")
    print("|---|---|---|")
    for w, h, f in CAMERAS:
        cam = CameraModel.from_intrinsics(f, f, (w - 1) / 2, (h - 1) / 2, w, h)
        img = np.zeros((h, w, 3), np.uint8)
        for n in BOX_COUNTS:
            objs = boxes(n)
            draw_boxes(img, cam, objs)     # first call: imports, caches
            runs = []
            for _ in range(a.repeats):
                t0 = time.perf_counter()
                draw_boxes(img, cam, objs)
                runs.append((time.perf_counter() - t0) * 1e3)
            print(f"| {w}x{h} | {n} | {statistics.median(runs):.2f} |")


if __name__ == "__main__":
    main()
