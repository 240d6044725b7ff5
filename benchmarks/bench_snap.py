"""Host cost of snapping boxes to measured depth (`core.box_refine.snap_to_depth`), per box.

    python benchmarks/bench_snap.py
    python benchmarks/bench_snap.py --scenes 30 --repeats 3

Runs the built-in model's "detect all" on validation scenes (seeds from 2,000,000) with a depth
camera, records every box the backend snaps with the model-grid points it snaps them to, then times
`snap_to_depth` on those same boxes with several settings side by side and prints a markdown table
(median over repeats of the mean time a box). It runs on the host CPU whatever the GPU, once per
reported box of every question about a depth frame.
"""
from __future__ import annotations

import argparse
import statistics
import time

VALIDATION_FIRST_SEED = 2_000_000
SETTINGS = (("shipped (stride to <= 2048 px, <= 3 passes)", {}),
            ("one pass", {"iterations": 1}),
            ("<= 512 px", {"max_pixels": 512}),
            ("every footprint pixel", {"max_pixels": 10 ** 9}))


def collect_cases(scenes: int) -> list[tuple]:
    """(box, points, mask, camera) of every box the backend snapped on `scenes` validation frames."""
    import n3d_ros.vlm.compact_backend as backend
    from n3d_ros.pipeline.spatial_pipeline import PipelineConfig, SpatialPipeline
    from n3d_ros.tools.eval_spatial import DETECT_QUESTION, sim_samples

    cases: list[tuple] = []
    finish = backend._Grounder._finish

    def recording_finish(self, box, label, score, index):
        if self.snap is not None:
            cases.append((box, *self.snap, self.enc.camera))
        return finish(self, box, label, score, index)

    pipe = SpatialPipeline(PipelineConfig(backend="compact", device="cpu"))
    backend._Grounder._finish = recording_finish
    try:
        for s in sim_samples(range(VALIDATION_FIRST_SEED, VALIDATION_FIRST_SEED + scenes), questions_per_scene=0,
                             max_width=640):
            pipe.query(s.frame, DETECT_QUESTION, (), detect_only=True)
    finally:
        backend._Grounder._finish = finish
        pipe.close()
    return cases


def main(argv: list[str] | None = None) -> None:
    from n3d_ros.core.box_refine import snap_to_depth

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenes", type=int, default=30)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)
    cases = collect_cases(a.scenes)
    if not cases:
        raise SystemExit("no boxes were snapped: nothing to time")
    print(f"{len(cases)} boxes from {a.scenes} validation scenes (depth camera)\n")
    print("| snap_to_depth setting | ms a box (median of repeats) | vs shipped |")
    print("|---|---|---|")
    base = None
    for name, kwargs in SETTINGS:
        runs = []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            for box, points, mask, camera in cases:
                snap_to_depth(box, points, mask, camera, **kwargs)
            runs.append((time.perf_counter() - t0) * 1e3 / len(cases))
        ms = statistics.median(runs)
        base = base or ms
        print(f"| {name} | {ms:.2f} | {ms / base:.2f}x |")


if __name__ == "__main__":
    main()
