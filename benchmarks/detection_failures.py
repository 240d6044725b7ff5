"""Where "detect all" fails on held-out scenes: every visible ground-truth object by what was predicted around it.

    python benchmarks/detection_failures.py --scenes 200 --first-seed 2000000 --device cpu
    python benchmarks/detection_failures.py --scenes 60 --model-dir build/v7p --out failures.json

The classes are `n3d_ros.tools.eval_spatial.FAILURE_CLASSES` (see `classify_objects`), one per object and mode,
judged by the object's best same-label prediction, not one to one as AP matching is. Also printed:
- "range fixed": the share of objects whose best same-label prediction would reach IoU >= 0.25 if its centre were
  moved along its viewing ray to the true range, size and yaw kept. The gap to "found" is what the distance along
  the ray costs.
- The found rate per object kind, with the number of objects of that kind.
Scenes are rendered and queried as `n3d-bench` does (same seeds, same 640 px cap, the model's own settings).
Prints markdown tables.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from dataclasses import asdict, replace
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from n3d_ros.pipeline.spatial_pipeline import PipelineConfig, SpatialPipeline
    from n3d_ros.sim.assets import COLOURS, KINDS
    from n3d_ros.tools.eval_spatial import (DETECT_QUESTION, FAILURE_CLASSES, HELD_OUT_FIRST_SEED, MODES,
                                            classify_objects, held_out_seeds, sim_samples)
    from n3d_ros.vlm.compact_targets import phrase_class

    kinds, colours = tuple(KINDS), tuple(COLOURS)

    def kind_of(label: str) -> str:
        k, _ = phrase_class(label, kinds, colours)
        return label if k is None else kinds[k]

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenes", type=int, default=60)
    p.add_argument("--first-seed", type=int, default=HELD_OUT_FIRST_SEED)
    p.add_argument("--max-width", type=int, default=640)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    p.add_argument("--model-dir", default="", help="compact model folder ('' = the built-in model)")
    p.add_argument("--out", default="", help="also write every object's outcome as JSON here")
    a = p.parse_args(argv)

    pipe = SpatialPipeline(PipelineConfig(backend="compact", model_dir=a.model_dir, device=a.device))
    rows: dict[str, list] = {m: [] for m in MODES}
    try:
        pipe.warmup()
        render_device = "cuda" if str(pipe.device).startswith("cuda") else "cpu"
        for sample in sim_samples(held_out_seeds(a.scenes, a.first_seed), questions_per_scene=0,
                                  max_width=a.max_width, render_device=render_device):
            for mode in MODES:
                frame = sample.frame if mode == "depth" else replace(sample.frame, depth=None)
                res = pipe.query(frame, DETECT_QUESTION, (), detect_only=True)
                preds = list(res.objects) if res.success else []
                rows[mode] += [(sample.seed, o) for o in classify_objects(preds, sample.objects)]
    finally:
        pipe.close()

    n = len(rows[MODES[0]])
    print(f"\n{a.scenes} scenes from seed {a.first_seed}, {n} visible objects, model "
          f"{a.model_dir or 'built-in'}\n")
    print("| outcome | " + " | ".join(MODES) + " |\n|---|" + "---|" * len(MODES))
    counts = {m: Counter(o.outcome for _, o in rows[m]) for m in MODES}
    for c in FAILURE_CLASSES:
        print(f"| {c} | " + " | ".join(f"{counts[m][c] / max(n, 1):.0%}" for m in MODES) + " |")
    fixed = {m: sum(o.range_fixed_iou >= 0.25 for _, o in rows[m]) for m in MODES}
    print("| found with the true range (range fixed) | " + " | ".join(f"{fixed[m] / max(n, 1):.0%}" for m in MODES)
          + " |")

    per_kind: dict[str, dict[str, list[int]]] = defaultdict(lambda: {m: [0, 0] for m in MODES})
    for m in MODES:
        for _, o in rows[m]:
            k = per_kind[kind_of(o.label)][m]
            k[0] += o.outcome == "found"
            k[1] += 1
    print("\n| kind | objects | " + " | ".join(f"found, {m}" for m in MODES) + " |\n|---|---|" + "---|" * len(MODES))
    for kind, v in sorted(per_kind.items(), key=lambda kv: kv[1][MODES[0]][0] / kv[1][MODES[0]][1]):
        print(f"| {kind} | {v[MODES[0]][1]} | " + " | ".join(f"{v[m][0] / v[m][1]:.0%}" for m in MODES) + " |")
    if a.out:
        Path(a.out).write_text(json.dumps({m: [{"seed": s, **asdict(o)} for s, o in rows[m]] for m in MODES}))
        print(f"\nwrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
