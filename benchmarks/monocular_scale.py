"""How much of the monocular box error is one scale per scene, and could the world's object sizes fix it.

    python benchmarks/monocular_scale.py --scenes 200 --first-seed 2000000
    python benchmarks/monocular_scale.py --scenes 100 --model-dir build/v14

Monocular "detect all" on held-out scenes, rendered and queried as `n3d-bench` does (same seeds, 640 px cap, the
model's own settings). A predicted box is paired with a visible true object of its label when their centres'
directions from the camera are within 5 degrees (range plays no part, so a box that is only too far or too near
still pairs). Four measurements:

1. Scale per scene: each pair's true / predicted range, split into the scene's median (one scale for the whole
   scene) and what is left around it.
2. AP3D with the scene's true scale: every predicted box of a scene (centre and size, about the camera; or the
   centre only) scaled by its scene's median ratio, computed without that box's own pair (leave one out), so a
   box never uses its own truth. This is what a perfect estimate of one number per scene would give: the
   ceiling of any scale fix. For comparison, each paired box's centre at its own true range (size and
   direction kept): the ceiling of any range fix.
3. Do the model's box sizes carry the scale? The correlation, over pairs, of the log range ratio with the log
   size ratio; and of each scene's scale with a size-prior estimate of it (the boxes' sizes against their kinds'
   ranges, weighted by how tight each range is).
4. An ideal observer: one who knows every visible object's box dimensions up to one unknown scale, and each
   kind's range of dimensions (the smallest and largest seen over --prior-scenes training scenes). The scales
   consistent with all of them form an interval; its width and the error of its midpoint are how well the
   world's objects fix a scene's scale when the relative geometry is exact.
5. Resting on predicted surfaces: each small object's box moved along its ray onto the nearest plane among the
   floor (the median bottom of the furniture boxes scored >= 0.5) and the tops of the predicted tables, desks,
   cabinets and shelves, when that moves it by less than --rest-tolerance (log ratio). The scene's true up
   vector is used: the favourable case for this fix.
Prints markdown tables.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from dataclasses import replace

import numpy as np

PAIR_DEGREES = 5.0


def _dims(box) -> np.ndarray:
    """(longer horizontal, height, shorter horizontal) of a yaw-only box whose size is (width, height, depth)."""
    w, h, d = box.size
    return np.array([max(w, d), h, min(w, d)])


def _pairs(pred, truth) -> list[tuple[int, object]]:
    """(prediction index, true object): for each true object, the prediction of its label whose centre's
    direction is nearest to its own, if within PAIR_DEGREES."""
    from n3d_ros.core.metrics import normalize_label
    out = []
    for g in truth:
        gd = g.box.center / np.linalg.norm(g.box.center)
        cands = [(float(p.box.center @ gd / np.linalg.norm(p.box.center)), i) for i, p in enumerate(pred)
                 if normalize_label(p.label) == normalize_label(g.label)]
        if cands:
            cos, i = max(cands)
            if cos > np.cos(np.radians(PAIR_DEGREES)):
                out.append((i, g))
    return out


def _kind(label: str) -> str:
    """The object kind a label names ("red mug" -> "mug")."""
    from n3d_ros.core.metrics import normalize_label
    return normalize_label(label).split()[-1]


def _rest_small_boxes(pred, up: np.ndarray, tolerance: float):
    """`pred` with each small object's box moved along its ray onto the nearest predicted surface (see 5.)."""
    from n3d_ros.sim.assets import KINDS

    def spec(o):
        return KINDS.get(_kind(o.label))

    furniture = [o for o in pred if spec(o) is not None and not spec(o).small and o.score >= 0.5]
    if not furniture:
        return pred
    planes = [float(np.median([up @ o.box.center - o.box.extent_along(up) / 2 for o in furniture]))]
    planes += [float(up @ o.box.center + o.box.extent_along(up) / 2) for o in furniture
               if spec(o).name in ("table", "desk", "cabinet", "shelf")]
    out = []
    for o in pred:
        uc = float(up @ o.box.center)
        if spec(o) is None or not spec(o).small or uc > -1e-3:
            out.append(o)
            continue
        moves = [m for m in ((pl + o.box.extent_along(up) / 2) / uc for pl in planes) if m > 0]
        m = min(moves, key=lambda m: abs(np.log(m)), default=1.0)
        out.append(_scaled(o, m, size=False) if abs(np.log(m)) < tolerance else o)
    return out


def _scaled(obj, k: float, size: bool = True):
    """`obj` with its box's centre (and size) scaled by `k` about the camera."""
    return replace(obj, box=replace(obj.box, center=obj.box.center * k, size=obj.box.size * (k if size else 1.0)))


def main(argv: list[str] | None = None) -> int:
    from n3d_ros.core.metrics import ap3d_per_category
    from n3d_ros.pipeline.spatial_pipeline import PipelineConfig, SpatialPipeline
    from n3d_ros.sim.world import generate_scene
    from n3d_ros.tools.eval_spatial import DETECT_QUESTION, HELD_OUT_FIRST_SEED, held_out_seeds, sim_samples

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenes", type=int, default=100)
    p.add_argument("--first-seed", type=int, default=HELD_OUT_FIRST_SEED + 1_000_000)
    p.add_argument("--model-dir", default="", help="compact model folder ('' = the built-in model)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--rest-tolerance", type=float, default=0.1)
    p.add_argument("--prior-scenes", type=int, default=3000,
                   help="training scenes (seeds from 0) whose objects give each kind's range of dimensions")
    a = p.parse_args(argv)
    seeds = held_out_seeds(a.scenes, a.first_seed)

    t0 = time.time()
    pipe = SpatialPipeline(PipelineConfig(backend="compact", model_dir=a.model_dir, device=a.device))
    preds, truths, ups = [], [], []
    try:
        for s in sim_samples(seeds, questions_per_scene=0, max_width=640, render_device=a.device):
            res = pipe.query(replace(s.frame, depth=None), DETECT_QUESTION, detect_only=True)
            preds.append(list(res.objects) if res.success else [])
            truths.append(list(s.objects))
            ups.append(np.asarray(generate_scene(s.seed).up, dtype=np.float64))
    finally:
        pipe.close()

    # 1-2: the scale of each scene, and AP3D with it (leave one out).
    scene_scale, residual, pair_logs = [], [], []
    fixed, moved, ranged = [], [], []
    for pred, truth in zip(preds, truths):
        pairs = _pairs(pred, truth)
        logr = {i: float(np.log(np.linalg.norm(g.box.center) / np.linalg.norm(pred[i].box.center)))
                for i, g in pairs}
        pair_logs += [(logr[i], float(np.log(np.prod(pred[i].box.size) / np.prod(g.box.size)) / 3.0))
                      for i, g in pairs]
        if logr:
            med = float(np.median(list(logr.values())))
            scene_scale.append(med)
            residual += [v - med for v in logr.values()]
        scale = [float(np.exp(np.median([v for j, v in logr.items() if j != i]))) if len(logr) - (i in logr) else 1.0
                 for i in range(len(pred))]
        fixed.append([_scaled(o, k) for o, k in zip(pred, scale)])
        moved.append([_scaled(o, k, size=False) for o, k in zip(pred, scale)])
        ranged.append([_scaled(o, float(np.exp(logr[i])), size=False) if i in logr else o for i, o in enumerate(pred)])
    scene_scale = np.array(scene_scale)

    print(f"\n{a.scenes} held-out scenes from seed {a.first_seed}, monocular, model {a.model_dir or 'built-in'}; "
          f"{len(pair_logs)} predicted boxes paired with a true object within {PAIR_DEGREES:g} deg\n")
    print("| range error (abs. log ratio) | median | 90th percentile |\n|---|---|---|")
    allr = np.abs([x for x, _ in pair_logs])
    for name, v in (("per box", allr), ("the scene's scale (median over its boxes)", np.abs(scene_scale)),
                    ("per box around its scene's scale", np.abs(residual))):
        print(f"| {name} | {np.median(v):.3f} | {np.percentile(v, 90):.3f} |")

    print("\n| boxes | AP3D@0.25 | AP3D@0.5 |\n|---|---|---|")
    at_025 = {}
    for name, boxes in (("as predicted", preds), ("scaled by the scene's true scale (leave one out)", fixed),
                        ("centres only scaled so", moved), ("each paired centre at its own true range", ranged),
                        ("small boxes resting on predicted surfaces",
                         [_rest_small_boxes(pr, up, a.rest_tolerance) for pr, up in zip(preds, ups)])):
        cats = {t: ap3d_per_category(boxes, truths, t) for t in (0.25, 0.5)}
        at_025[name] = cats[0.25]
        print(f"| {name} | {np.mean(list(cats[0.25].values())):.3f} | {np.mean(list(cats[0.5].values())):.3f} |")
    # Categories are "colour kind" labels: a kind's row is the mean over its colours.
    print("\n| kind | AP3D@0.25 as predicted | scaled | centres only | own true range | resting |\n"
          "|---|---|---|---|---|---|")
    for k in sorted({_kind(c) for c in at_025["as predicted"]}):
        row = [np.mean([v for c, v in cats.items() if _kind(c) == k]) for cats in at_025.values()]
        print("| " + " | ".join([k] + [f"{v:.3f}" for v in row]) + " |")

    # 3: do predicted sizes follow the range error?
    from n3d_ros.sim.assets import KINDS
    lx = np.array(pair_logs)
    print(f"\ncorrelation over paired boxes of log(true/predicted range) with log(predicted/true size): "
          f"{np.corrcoef(-lx[:, 0], lx[:, 1])[0, 1]:.2f} (1: a box too far is too large by as much)")

    ranges: dict[str, list[np.ndarray]] = defaultdict(lambda: [np.full(3, np.inf), np.full(3, -np.inf)])
    for seed in range(a.prior_scenes):
        for o in generate_scene(seed).objects:
            r = ranges[o.kind]
            r[0], r[1] = np.minimum(r[0], _dims(o.box)), np.maximum(r[1], _dims(o.box))
    estimate, truth_scale = [], []
    for pred, truth in zip(preds, truths):
        pairs = _pairs(pred, truth)
        if not pairs:
            continue
        num = den = 0.0
        for o in pred:
            if _kind(o.label) not in KINDS:
                continue
            lo, hi = ranges[_kind(o.label)]
            w = o.score / (np.log(hi / lo) ** 2 / 12 + 0.05 ** 2)   # uniform prior's variance + box noise
            num += float(np.sum(w * np.log(_dims(o.box) / np.sqrt(lo * hi))))
            den += float(np.sum(w))
        if den:
            estimate.append(-num / den)
            truth_scale.append(np.median([np.log(np.linalg.norm(g.box.center) / np.linalg.norm(pred[i].box.center))
                                          for i, g in pairs]))
    print(f"correlation over scenes of the scene's scale with its size-prior estimate: "
          f"{np.corrcoef(estimate, truth_scale)[0, 1]:.2f}")

    # 4: the ideal observer.
    width, err = [], []
    for truth in truths:
        lo_k, hi_k = -np.inf, np.inf
        for g in truth:
            lo, hi = ranges[_kind(g.label)]
            d = _dims(g.box)
            lo_k, hi_k = max(lo_k, float(np.max(np.log(lo / d)))), min(hi_k, float(np.min(np.log(hi / d))))
        if np.isfinite(lo_k) and np.isfinite(hi_k):
            width.append(hi_k - lo_k)
            err.append(abs(lo_k + hi_k) / 2)
    print(f"\nIdeal observer (every visible object's dimensions known up to one scale; kinds' ranges from "
          f"{a.prior_scenes} training scenes), {len(width)} scenes:\n")
    print("| | median | 90th percentile |\n|---|---|---|")
    print(f"| width of the consistent log-scale interval | {np.median(width):.3f} | {np.percentile(width, 90):.3f} |")
    print(f"| its midpoint's abs. log error | {np.median(err):.3f} | {np.percentile(err, 90):.3f} |")
    print(f"| the model's scene scale, abs. log error (above) | {np.median(np.abs(scene_scale)):.3f} | "
          f"{np.percentile(np.abs(scene_scale), 90):.3f} |")
    print(f"\n({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
