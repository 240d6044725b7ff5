"""Training data of the compact model: sim scenes rendered onto the model grid, with their
questions and grounding targets (numpy), made in worker processes and the scene factory
(`scene_factory`), never in the training loop."""
from __future__ import annotations

import multiprocessing
import os
import threading
from dataclasses import dataclass

import numpy as np
import torch

from ..core.questions import SET_KINDS
from ..geometry.compact_encoder import CompactEncoderConfig
from ..geometry.preprocess import model_grid_transform
from ..sim.questions import make_questions, marginal_objects, visible_objects
from ..sim.render import render
from ..sim.world import generate_scene
from ..vlm.compact_model import BOX_PARAMS, CompactVLMConfig
from ..vlm.compact_targets import box_to_target, dense_target, heat_target, output_tokens
from ..vlm.compact_tokenizer import CompactTokenizer

# Dense head: weight of the 8 patches around an object's centre in the colour and box losses.
NEIGHBOUR_WEIGHT = 0.5
WORKER_NICENESS = 10
GPU_RENDER_CHUNK = 1 << 26   # render's chunk_elements on a GPU (~2 GB at the peak for 64 scenes)
CPU_RENDER_TILE = 32         # render's tile on a CPU: 10 % faster than 64 px (benchmarks/bench_scene_making.py)


def make_scenes(seeds: list[int]) -> list:
    """Worker: the scenes of `seeds`."""
    return [generate_scene(s) for s in seeds]


def worker_init() -> None:
    # Workers run numpy/torch on the CPU beside the training process: one thread each, or 14
    # workers would each start a thread per core; and below its priority, because the training loop
    # is bound by its one Python thread and each step waits for it.
    torch.set_num_threads(1)
    os.nice(WORKER_NICENESS)
    # A pool worker whose owner died (killed, out of memory) would otherwise wait for jobs forever.
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()


def _exit_with(parent) -> None:
    parent.join()
    os._exit(0)


def grid_setup(scene, enc_cfg: CompactEncoderConfig):
    """Model-grid camera of a scene and the valid rectangle (x0, y0, x1, y1) its image covers."""
    T = model_grid_transform(scene.camera, enc_cfg)
    cam = T.apply_camera(scene.camera)
    (x0, y0), (x1, y1) = T.apply_points(np.array([[-0.5, -0.5],
                                                  [scene.camera.width - 0.5, scene.camera.height - 0.5]]))
    rect = (int(round(x0 + 0.5)), int(round(y0 + 0.5)), int(round(x1 + 0.5)), int(round(y1 + 0.5)))
    return cam, rect


@dataclass
class RenderedScenes:
    """A batch of scenes rendered onto the model grid, ready for the dataset's slots."""
    rgb: torch.Tensor              # (B,H,W,3) uint8
    depth: torch.Tensor            # (B,H,W) float16 metres, 0 where nothing was hit
    K: torch.Tensor                # (B,4) fx, fy, cx, cy of the grid camera
    up: torch.Tensor               # (B,3) gravity up, optical frame
    jobs: list                     # per scene: the arguments of question_records


def render_scenes(scenes: list, enc_cfg: CompactEncoderConfig, dec_cfg: CompactVLMConfig, tok_path: str,
                  cfg, device: str) -> RenderedScenes:
    """Render `scenes` on `device` (the training GPU, in the scene factory) and decide which objects
    count as visible, the benchmark's way."""
    setups = [grid_setup(sc, enc_cfg) for sc in scenes]
    # Tiles only cull (they never change the image): larger ones on a GPU make fewer, bigger kernels;
    # smaller ones on a CPU test fewer primitives per pixel.
    tiling = ({"chunk_elements": GPU_RENDER_CHUNK} if str(device).startswith("cuda") else {"tile": CPU_RENDER_TILE})
    out = render(scenes, device=device, cameras=[c for c, _ in setups], valid_rects=[r for _, r in setups],
                 named=True, **tiling)
    instance, named = out.instance.cpu().numpy(), out.named.cpu().numpy()
    jobs = []
    for j, (sc, (c, _)) in enumerate(zip(scenes, setups)):
        thr = visibility_threshold(sc, c)
        jobs.append((sc, c, visible_objects(sc, instance[j], min_pixels=thr, named_map=named[j]),
                     marginal_objects(sc, instance[j], min_pixels=thr, named_map=named[j]), tok_path, dec_cfg,
                     cfg.questions_per_scene, cfg.seed * 7919 + sc.seed, cfg.neighbour_weight))
    return RenderedScenes(
        rgb=out.rgb, depth=torch.nan_to_num(out.depth, nan=0.0).clamp_max(60000).half(),
        K=torch.tensor([[c.fx, c.fy, c.cx, c.cy] for c, _ in setups], dtype=torch.float32),
        up=torch.tensor(np.stack([sc.up for sc in scenes]), dtype=torch.float32), jobs=jobs)


def fresh_scenes(seeds: list[int], enc_cfg: CompactEncoderConfig, dec_cfg: CompactVLMConfig, tok_path: str,
                 cfg) -> tuple:
    """Worker: the scenes of `seeds` generated, rendered on this CPU and questioned:
    (seeds, rgb, depth, K, up, records) as in scene_factory.SceneBatch, tensors on the CPU."""
    r = render_scenes(make_scenes(seeds), enc_cfg, dec_cfg, tok_path, cfg, "cpu")
    return seeds, r.rgb, r.depth, r.K, r.up, question_batch(r.jobs)


def question_batch(jobs: list) -> list:
    """Worker: question_records of a rendered batch."""
    return [question_records(j) for j in jobs]


def question_records(args):
    """Worker: questions of one scene -> (token and grounding-target records, dense-head heat-map
    target (N, kinds) with -1 where ignored, dense-head positives) (numpy only)."""
    scene, cam, visible, marginal, tok_path, dec_cfg, n, seed, neighbour_weight = args
    tok = CompactTokenizer.load(tok_path)
    rng = np.random.default_rng(seed)
    dense = dec_cfg.has_dense_head
    records = []
    for q in make_questions(scene, visible, rng, n=n, marginal=marginal):
        if q.spec.kind in SET_KINDS:
            idx = [] if dense else sorted(
                q.targets[0] if q.targets else [],
                key=lambda i: float(cam.project(scene.objects[i].box.center[None])[0, 0]))
        else:
            idx = [t[0] for t in q.targets]
        labels = [scene.objects[i].label for i in idx]
        ids = output_tokens(tok, q.spec, labels)
        tgts = [box_to_target(scene.objects[i].box, cam, scene.up, dec_cfg.grid_w, dec_cfg.grid_h, dec_cfg.patch)
                for i in idx]
        if any(t is None for t in tgts) or len(ids) > dec_cfg.max_output_len:
            continue
        q_ids = tok.encode_words(q.text)[: dec_cfg.max_question_len]
        obj_pos = [p for p, t in enumerate(ids) if t == tok.obj_id]
        records.append((np.array(q_ids, np.int32), np.array(ids, np.int32), np.array(obj_pos, np.int32),
                        np.array([t.patch for t in tgts], np.int32), np.stack([t.params for t in tgts])
                        if tgts else np.zeros((0, 8))))
    targets, ignored = [], []
    if dense:
        for i in list(visible) + list(marginal):
            o = scene.objects[i]
            t = dense_target(o.box, dec_cfg.kinds.index(o.kind), dec_cfg.colours.index(o.colour), cam, scene.up,
                             dec_cfg.grid_w, dec_cfg.grid_h, dec_cfg.patch)
            if t is not None:
                (targets if i in visible else ignored).append(t)
    heat = np.zeros((0, 0), np.float16)
    positives = np.zeros((0, 4 + BOX_PARAMS), np.float32)
    if dense:
        heat = heat_target(targets, dec_cfg.grid_h, dec_cfg.grid_w, len(dec_cfg.kinds))
        for t in ignored:                               # a sliver: neither object nor background
            if heat[t.target.patch, t.kind] < 1.0:
                heat[t.target.patch, t.kind] = -1.0
        positives = dense_positives(targets, heat, dec_cfg.grid_h, dec_cfg.grid_w, neighbour_weight)
        heat = heat.astype(np.float16)
    return records, heat, positives


def dense_positives(targets, heat: np.ndarray, grid_h: int, grid_w: int,
                    neighbour_weight: float = NEIGHBOUR_WEIGHT) -> np.ndarray:
    """Rows (patch, kind, colour, weight, 8 box parameters) that supervise the dense colour and
    box outputs: each object's centre patch (weight 1) and its 8 neighbours (`neighbour_weight`),
    so a heat peak one patch off still reads a trained box. A neighbour's offset is re-expressed
    from its own centre (clipped to the head's +-1 patch); neighbours that are another object's
    centre of the same kind are left to that object."""
    rows = []
    for t in targets:
        r0, c0 = divmod(t.target.patch, grid_w)
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                r, c = r0 + dr, c0 + dc
                if not (0 <= r < grid_h and 0 <= c < grid_w):
                    continue
                patch = r * grid_w + c
                centre = dr == 0 and dc == 0
                if not centre and (neighbour_weight <= 0 or heat[patch, t.kind] >= 1.0):
                    continue
                params = t.target.params.copy()
                params[0] = np.clip(params[0] - dc, -1.0, 1.0)
                params[1] = np.clip(params[1] - dr, -1.0, 1.0)
                rows.append([patch, t.kind, t.colour, 1.0 if centre else neighbour_weight, *params])
    return np.array(rows, np.float32).reshape(-1, 4 + BOX_PARAMS)


def visibility_threshold(scene, grid_camera, *, min_pixels: int = 40, max_width: int = 640) -> float:
    """Pixels on the model grid that make an object "visible" the way the benchmark counts it:
    `min_pixels` in the scene's image shrunk to at most `max_width` (n3d-bench's default)."""
    cam = scene.camera
    shrink = min(1.0, max_width / cam.width)
    grid_per_source = (grid_camera.fx / cam.fx) * (grid_camera.fy / cam.fy)
    return max(3.0, min_pixels * grid_per_source / shrink ** 2)
