"""Host cost of snapping boxes to measured depth (`core.box_refine.snap_to_depth`), per box.

    python benchmarks/bench_snap.py
    python benchmarks/bench_snap.py --scenes 30 --repeats 3

Runs the built-in model's "detect all" on validation scenes (seeds from 2,000,000) with a depth
camera, records every set of boxes the backend snaps with the model-grid points it snaps them to,
then times snapping those same boxes with several settings side by side and prints a markdown table
(median over repeats of the mean time a box): all of a frame's boxes in one call
(`snap_boxes_to_depth`, what the backend does) and one call a box (`snap_to_depth`). It runs on the
host CPU whatever the GPU, for the reported boxes of every question about a depth frame.
"""
from __future__ import annotations

import argparse
import statistics
import time

VALIDATION_FIRST_SEED = 2_000_000
SETTINGS = (("shipped (stride to <= 2048 px, <= 3 passes), a frame's boxes in one call", True, {}),
            ("shipped, one call a box", False, {}),
            ("one pass", True, {"iterations": 1}),
            ("<= 512 px", True, {"max_pixels": 512}),
            ("every footprint pixel", True, {"max_pixels": 10 ** 9}))


def collect_cases(scenes: int) -> list[tuple]:
    """(boxes, points, mask, camera) of every call with which the backend snapped boxes on `scenes`
    validation frames."""
    import n3d_ros.vlm.compact_backend as backend
    from n3d_ros.pipeline.spatial_pipeline import PipelineConfig, SpatialPipeline
    from n3d_ros.tools.eval_spatial import DETECT_QUESTION, sim_samples

    cases: list[tuple] = []
    snapped = backend._Grounder._snapped

    def recording_snapped(self, boxes):
        if self.snap is not None and boxes:
            cases.append((list(boxes), *self.snap, self.enc.camera))
        return snapped(self, boxes)

    pipe = SpatialPipeline(PipelineConfig(backend="compact", device="cpu"))
    backend._Grounder._snapped = recording_snapped
    try:
        for s in sim_samples(range(VALIDATION_FIRST_SEED, VALIDATION_FIRST_SEED + scenes), questions_per_scene=0,
                             max_width=640):
            pipe.query(s.frame, DETECT_QUESTION, (), detect_only=True)
    finally:
        backend._Grounder._snapped = snapped
        pipe.close()
    return cases


def main(argv: list[str] | None = None) -> None:
    from n3d_ros.core.box_refine import snap_boxes_to_depth, snap_to_depth

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenes", type=int, default=30)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)
    cases = collect_cases(a.scenes)
    if not cases:
        raise SystemExit("no boxes were snapped: nothing to time")
    n_boxes = sum(len(c[0]) for c in cases)
    print(f"{n_boxes} boxes in {len(cases)} calls from {a.scenes} validation scenes (depth camera)\n")
    print("| snap_to_depth setting | ms a box (median of repeats) | vs shipped |")
    print("|---|---|---|")
    base = None
    for name, together, kwargs in SETTINGS:
        runs = []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            for boxes, points, mask, camera in cases:
                if together:
                    snap_boxes_to_depth(boxes, points, mask, camera, **kwargs)
                else:
                    for box in boxes:
                        snap_to_depth(box, points, mask, camera, **kwargs)
            runs.append((time.perf_counter() - t0) * 1e3 / n_boxes)
        ms = statistics.median(runs)
        base = base or ms
        print(f"| {name} | {ms:.2f} | {ms / base:.2f}x |")


if __name__ == "__main__":
    main()
