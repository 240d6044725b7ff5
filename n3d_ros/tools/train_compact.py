"""Train the built-in compact spatial VLM on the synthetic world and write models/n3d_compact.

    python -m n3d_ros.tools.train_compact --device cuda --minutes 8 --lr-span-end 0.5 --save-optimizer true \
        --out models/n3d_compact
    python -m n3d_ros.tools.train_compact --device cuda --minutes 8 --lr-span-start 0.5 --warmup-steps 0 \
        --resume models/n3d_compact --out models/n3d_compact
(two stages making one learning-rate schedule; the shipped model's full recipe: scripts/train_builtin_model.sh)

Data: scenes from `n3d_ros.sim` rendered straight onto the model grid (focal-normalized,
letterboxed camera; the first fill on the training device, refreshes on the workers' CPUs), with
templated questions; an object is "visible" by the benchmark's rule (40 px at <= 640 px wide). Encoder (depth + validity) and decoder
(tokens, dense heat map / colour / box head, pointer, box, up vector) train jointly; the decoder sees measured geometry
(ground-truth depth with holes and noise) for half of the images and the encoder's own estimate
for the rest, so one model serves RGB and RGB-D robots.
A run stops at its time budget and saves a resumable checkpoint (safetensors + JSON), because one
command on the lent GPU may run at most 10 minutes. `--refresh-every-steps N` keeps replacing a
`--refresh-fraction` of the scenes with fresh ones while training: a fixed set of 16,000 scenes
was memorized within minutes by an earlier model. A resumed run continues the scene seeds where
the previous one stopped; seeds never reach the benchmark's held-out range. `--mirror true` shows
half of each step's images reflected left-right with their targets turned to match (`mirror_batch`):
a valid new scene each, because the pool is still seen ~10 times per scene and memorized otherwise.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import multiprocessing
import os
import shutil
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..core.questions import SET_KINDS
from ..geometry.checkpoint_io import load_safetensors, save_safetensors
from ..geometry.compact_encoder import CompactEncoderConfig, CompactGeometryEncoder
from ..geometry.preprocess import mirror_vector_maps, model_grid_transform
from ..vlm.compact_backend import DEFAULT_INFERENCE, encoder_config
from ..vlm.compact_model import BOX_PARAMS, CompactSpatialDecoder, CompactVLMConfig
from ..vlm.compact_targets import (box_to_target, dense_target, heat_target, mirror_box_params, mirror_patch_maps,
                                   output_tokens)
from ..vlm.compact_tokenizer import CompactTokenizer
from .eval_spatial import HELD_OUT_FIRST_SEED

STATE_FILE = "training_state.json"
BOX_WEIGHTS = (1.0, 1.0, 2.0, 1.0, 1.0, 1.0, 0.3, 0.3)
# Dense head: weight of the 8 patches around an object's centre in the colour and box losses.
NEIGHBOUR_WEIGHT = 0.5
COMPILE_CHOICES = ("none", "encoder", "all", "graphs")
# Question and output token rows are padded to multiples of these, so a step's decoder shapes stay
# the same and a compiled decoder keeps one graph: the world's questions have at most 21 tokens and
# outputs at most 8; a batch whose longest question had 16 cost a recompile of ~20 s on an H100.
QUESTION_PAD, OUTPUT_PAD = 24, 8


@dataclass
class TrainConfig:
    out: str = "models/n3d_compact"
    resume: str = ""                 # model folder of an earlier run (continues its training)
    device: str = "cuda"
    minutes: float = 8.0             # training time budget of this run (data generation excluded)
    wall_minutes: float = 0.0        # if > 0: the whole run, set-up and export included, ends by then
    scenes: int = 12000              # scenes rendered for this run
    # > 0: only this many of `scenes` are rendered on the device before training starts; the workers fill
    # the other slots while it trains (0 = all of them first). Set-up took 1.5 min of each 9.7-min stage.
    initial_scenes: int = 0
    scene_seed_offset: int = -1      # first scene seed; -1 = 0, or where the resumed run stopped
    questions_per_scene: int = 12
    images_per_step: int = 48
    questions_per_image: int = 4
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 300
    # The part of one cosine learning-rate decay this run covers: 0 -> 1 decays from `lr` to 0 within the
    # run; stages 0 -> 0.5 and 0.5 -> 1 (with the optimizer state carried over) make one schedule of two
    # runs instead of a warm restart.
    lr_span_start: float = 0.0
    lr_span_end: float = 1.0
    save_optimizer: bool = False     # AdamW state (2x the weights) in the checkpoint folder
    refresh_every_steps: int = 0     # replace part of the scenes with fresh ones this often (0 = never)
    refresh_fraction: float = 0.05   # share of the scenes replaced per refresh
    workers: int = max(1, (os.cpu_count() or 2) - 2)
    render_batch: int = 64
    seed: int = 0
    export_onnx: bool = True
    dense_head: bool = True          # per-patch heat map / colour / box head (the shipped model has it)
    neighbour_weight: float = NEIGHBOUR_WEIGHT  # dense head: weight of the 8 patches around a centre
    compile: str = "none"            # torch.compile: none | encoder | all | graphs (compile_for_training)
    fine_features: bool = False      # new encoders also read stride-8 features into their tokens
                                     # (the shipped model's recipe turns it on; see CompactEncoderConfig)
    depth_cells: int = 0             # new decoders: sub-patch depth detail (CompactVLMConfig.depth_cells)
    source_embedding: bool = False   # new decoders: measured/estimated geometry embedding (CompactVLMConfig)
    encoder_context: int = 0         # new encoders: global self-attention blocks at stride 16 (CompactEncoderConfig)
    # New encoders' model grid (px, multiples of 16) and canonical focal length (px): the grid's field of
    # view is 2 atan(grid_width / 2 / f0), so scaling all three alike keeps it and gives objects more pixels.
    grid_width: int = CompactEncoderConfig.in_width
    grid_height: int = CompactEncoderConfig.in_height
    f0: float = CompactEncoderConfig.f0
    mirror: bool = False             # mirror half of the images (and targets) each step: twice the scenes
    channels_last: bool = False      # encoder weights and inputs in NHWC: cuDNN's layout (no transposes)
    # Comma-separated decays ("0.9995"): also keep an exponential moving average of the weights per decay and
    # write each as a model folder out/ema_<decay> (WeightEMA); "" = none. The decay ramps up as (1 + n) /
    # (10 + n) and reaches 0.9995 only after 17,990 updates: over the recipe's 14-18k steps every decay
    # >= 0.9995 gives the same average, of roughly the last n / 9 steps' weights.
    ema_decays: str = ""
    # Weigh each box's range error by how little of it the box can afford (_box_loss): a 10 cm mug 3 m away
    # loses IoU 0.25 at a 2 % miss, a bed there at about 25 %, yet the plain loss treats both misses alike.
    range_by_size: bool = False
    # Share of the images whose decoder sees measured geometry (ground-truth depth with holes and noise)
    # instead of the encoder's estimate. With a depth camera the pipeline snaps every box's range to the
    # measured depth afterwards; without one the decoder's own range is the answer, so a lower share
    # spends more of the decoder's training where nothing corrects it.
    measured_fraction: float = 0.5

    def __post_init__(self) -> None:
        parse_ema_decays(self.ema_decays)  # raises on a malformed list
        if self.compile not in COMPILE_CHOICES:
            raise ValueError(f"compile must be one of {COMPILE_CHOICES}, got {self.compile!r}")
        if self.wall_minutes < 0:
            raise ValueError(f"wall_minutes must be >= 0 (0 = no limit), got {self.wall_minutes}")
        if not 0.0 <= self.neighbour_weight <= 1.0:
            raise ValueError(f"neighbour_weight must be in [0, 1], got {self.neighbour_weight}")
        if self.mirror and not self.dense_head:
            # Without the dense head, set answers list objects left to right: a mirror would reverse them.
            raise ValueError("mirror needs the dense head (--dense-head true)")
        if not 0.0 <= self.measured_fraction <= 1.0:
            raise ValueError(f"measured_fraction must be in [0, 1], got {self.measured_fraction}")
        if not 0 <= self.initial_scenes <= self.scenes:
            raise ValueError(f"initial_scenes must be in [0, scenes={self.scenes}], got {self.initial_scenes}")
        if not 0.0 <= self.lr_span_start < self.lr_span_end <= 1.0:
            raise ValueError(f"need 0 <= lr_span_start < lr_span_end <= 1, got {self.lr_span_start}, "
                             f"{self.lr_span_end}")


def parse_ema_decays(spec: str) -> tuple[float, ...]:
    """"0.9995, 0.9998" -> (0.9995, 0.9998); each in (0, 1), none repeated."""
    try:
        decays = tuple(float(x) for x in spec.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"ema_decays must be comma-separated numbers, got {spec!r}") from None
    if any(not 0.0 < d < 1.0 for d in decays) or len(set(decays)) != len(decays):
        raise ValueError(f"ema_decays must be distinct numbers in (0, 1), got {spec!r}")
    return decays


# ----------------------------------------------------------------------------- data
def make_scene(seed: int):
    from ..sim.world import generate_scene
    return generate_scene(seed)


def _worker_init() -> None:
    # Workers render on the CPU beside the training process: one thread each, or 14 workers would
    # each start a thread per core.
    torch.set_num_threads(1)
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
                  cfg: "TrainConfig", device: str) -> RenderedScenes:
    """Render `scenes` on `device` (the GPU for the first fill, a worker's CPU for refreshes) and
    decide which objects count as visible, the benchmark's way."""
    from ..sim.questions import marginal_objects, visible_objects
    from ..sim.render import render
    setups = [grid_setup(sc, enc_cfg) for sc in scenes]
    out = render(scenes, device=device, cameras=[c for c, _ in setups], valid_rects=[r for _, r in setups],
                 named=True)
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


def _fresh_scenes(args) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[tuple]]:
    """Worker: new scenes generated, rendered on the CPU and given their questions, all off the
    training process, which only copies the result into its slots (rendering them on the GPU inside
    the loop had stalled training for 2-3 s per refresh). Returns numpy arrays: torch would pass
    tensors between processes as shared-memory handles."""
    seeds, enc_cfg, dec_cfg, tok_path, cfg = args
    r = render_scenes([make_scene(s) for s in seeds], enc_cfg, dec_cfg, tok_path, cfg, "cpu")
    return r.rgb.numpy(), r.depth.numpy(), r.K.numpy(), r.up.numpy(), [question_records(j) for j in r.jobs]


def _question_batch(jobs: list) -> list:
    """Worker: question_records of a rendered batch."""
    return [question_records(j) for j in jobs]


def question_records(args):
    """Worker: questions of one scene -> (token and grounding-target records, dense-head heat-map
    target (N, kinds) with -1 where ignored, dense-head positives) (numpy only)."""
    scene, cam, visible, marginal, tok_path, dec_cfg, n, seed, neighbour_weight = args
    from ..sim.questions import make_questions
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


def build_tokenizer(n_scenes: int = 400) -> CompactTokenizer:
    """Vocabulary from the question templates and labels of a sample of scenes (closed world)."""
    from ..sim.questions import make_questions
    from ..sim.world import generate_scene
    texts = []
    for s in range(10_000_000, 10_000_000 + n_scenes):
        scene = generate_scene(s)
        visible = list(range(len(scene.objects)))
        for q in make_questions(scene, visible, np.random.default_rng(s), n=40):
            texts.append(q.text)
            texts.extend(q.spec.targets)
        texts.extend(o.label for o in scene.objects)
    texts += ["detect all objects", "find all", "where is the", "how far is"]
    return CompactTokenizer.build(texts)


def new_decoder_config(tok: CompactTokenizer, enc_cfg: CompactEncoderConfig, *, dense_head: bool,
                       depth_cells: int = 0, source_embedding: bool = False) -> CompactVLMConfig:
    """Decoder configuration of a model trained from scratch on the sim world's kinds and colours."""
    from ..sim.assets import COLOURS, KINDS
    return CompactVLMConfig(vocab_size=tok.vocab_size, feature_dim=enc_cfg.feature_dim,
                            grid_h=enc_cfg.in_height // 16, grid_w=enc_cfg.in_width // 16,
                            kinds=tuple(KINDS) if dense_head else (), colours=tuple(COLOURS) if dense_head else (),
                            depth_cells=depth_cells, source_embedding=source_embedding)


class GpuDataset:
    """Rendered images on the device plus per-scene question records.

    The first fill renders on the training device (fast in bulk): all slots, or the first
    `initial_scenes`, after which `refresh` fills the others from the workers while training (the loop
    learns from the scenes it has instead of waiting for all of them). With `refresh_every_steps`, a
    fraction of the scenes is then replaced by fresh ones (new seeds) while training: worker
    processes generate, render (CPU) and question them, and a slot's image and questions are swapped
    together once its whole batch is back, so they never mismatch and the loop never waits.
    """

    def __init__(self, cfg: TrainConfig, enc_cfg: CompactEncoderConfig, dec_cfg: CompactVLMConfig,
                 tok_path: str, log) -> None:
        self.cfg, self.enc_cfg, self.dec_cfg, self.tok_path, self.log = cfg, enc_cfg, dec_cfg, tok_path, log
        dev = cfg.device
        n, H, W = cfg.scenes, enc_cfg.in_height, enc_cfg.in_width
        self.rgb = torch.empty((n, H, W, 3), dtype=torch.uint8, device=dev)
        self.depth = torch.empty((n, H, W), dtype=torch.float16, device=dev)
        self.K = torch.empty((n, 4), dtype=torch.float32, device=dev)
        self.up = torch.empty((n, 3), dtype=torch.float32, device=dev)
        self.questions: list[list] = [[] for _ in range(n)]
        self.heat: list[np.ndarray | None] = [None] * n        # dense head: (N, kinds) heat targets
        self.positives: list[np.ndarray | None] = [None] * n   # dense head: one row per visible object
        # Spawned, not forked: the workers run torch on the CPU, and this process has CUDA and
        # OpenMP state that a fork would copy.
        self.pool = ProcessPoolExecutor(cfg.workers, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_worker_init)
        v, u = torch.meshgrid(torch.arange(H, device=dev, dtype=torch.float32),
                              torch.arange(W, device=dev, dtype=torch.float32), indexing="ij")
        self.u, self.v = u, v
        self._upload = BatchUpload(dev) if str(dev).startswith("cuda") else None
        self.next_seed = max(0, cfg.scene_seed_offset)
        self._pending: tuple[np.ndarray, list] | None = None       # (slots, futures)
        # The first fill as a pipeline: the workers generate scenes (in seed order), this process
        # renders each batch on the device as soon as it is generated, and the workers question
        # the rendered batches once their generation jobs are done: the three steps overlap
        # instead of running one after the other.
        t0 = time.time()
        first_fill = cfg.initial_scenes or n
        generated = self.pool.map(make_scene, self._take_seeds(first_fill), chunksize=32)
        pending, chunk, start = [], [], 0
        for scene in generated:
            chunk.append(scene)
            if len(chunk) < cfg.render_batch and start + len(chunk) < first_fill:
                continue
            r = render_scenes(chunk, enc_cfg, dec_cfg, tok_path, cfg, dev)
            self._put(np.arange(start, start + len(chunk)), r.rgb, r.depth, r.K, r.up)
            pending.append((start, self.pool.submit(_question_batch, r.jobs)))
            start, chunk = start + len(chunk), []
        log(f"generated and rendered {first_fill} scenes in {time.time() - t0:.1f} s")
        for first, future in pending:
            for slot, result in enumerate(future.result(), start=first):
                self._store(slot, result)
        log(f"made {sum(len(q) for q in self.questions)} questions, set-up done in {time.time() - t0:.1f} s"
            + (f"; the workers fill the other {n - first_fill} slots while training" if first_fill < n else ""))
        self.filled = first_fill    # slots [0, filled) hold a scene or are on their way from the workers
        self.usable = np.array([i for i, q in enumerate(self.questions) if q], dtype=np.int64)

    def upload(self, arrays: list[np.ndarray]) -> list[torch.Tensor]:
        """A step's batch arrays as tensors on the training device (on a GPU: BatchUpload)."""
        if self._upload is None:
            return [torch.from_numpy(np.ascontiguousarray(a)).to(self.cfg.device) for a in arrays]
        return self._upload(arrays)

    def _put(self, slots: np.ndarray, rgb, depth, K, up) -> None:
        dev = self.cfg.device
        idx = torch.as_tensor(slots, device=dev)
        self.rgb[idx] = torch.as_tensor(rgb).to(dev)
        self.depth[idx] = torch.as_tensor(depth).to(dev)
        self.K[idx] = torch.as_tensor(K).to(dev)
        self.up[idx] = torch.as_tensor(up).to(dev)

    def _store(self, slot: int, result: tuple) -> None:
        self.questions[slot], self.heat[slot], self.positives[slot] = result

    def _take_seeds(self, n: int) -> list[int]:
        if self.next_seed + n > HELD_OUT_FIRST_SEED:
            raise RuntimeError(f"training would reach scene seed {HELD_OUT_FIRST_SEED}, where the benchmark's "
                               f"held-out seeds start; use fewer or earlier scenes")
        seeds = list(range(self.next_seed, self.next_seed + n))
        self.next_seed += n
        return seeds

    def refresh(self, rng: np.random.Generator) -> None:
        """Start replacing a fraction of the scenes (while the pool is `filling`: start filling as many
        empty slots), or swap them in once the workers are done."""
        cfg = self.cfg
        if self._pending is None:
            n = max(1, int(cfg.refresh_fraction * cfg.scenes))
            if self.filling:
                slots = np.arange(self.filled, min(self.filled + n, cfg.scenes))
                self.filled += len(slots)
                n = len(slots)
            else:
                slots = rng.choice(cfg.scenes, size=n, replace=False)
            seeds = self._take_seeds(n)
            # Small jobs spread over all workers; each one is a CPU render batch.
            size = max(1, min(8, math.ceil(n / cfg.workers)))
            self._pending = (slots, [self.pool.submit(_fresh_scenes, (seeds[i:i + size], self.enc_cfg,
                                                                      self.dec_cfg, self.tok_path, cfg))
                                     for i in range(0, n, size)])
            return
        slots, futures = self._pending
        if not all(f.done() for f in futures):
            return
        results = [f.result() for f in futures]
        self._put(slots, *(np.concatenate([r[k] for r in results]) for k in range(4)))
        for slot, rec in zip(slots, (rec for r in results for rec in r[4])):
            self._store(slot, rec)
        self.usable = np.union1d(np.setdiff1d(self.usable, slots),
                                  np.array([s for s in slots if self.questions[s]], dtype=np.int64))
        self._pending = None
        self.log(f"refreshed {len(slots)} scenes (next seed {self.next_seed}, {len(self.usable)} usable)")

    @property
    def refreshing(self) -> bool:
        return self._pending is not None

    @property
    def filling(self) -> bool:
        """Slots still empty (`initial_scenes`): `refresh` fills them before it replaces any."""
        return self.filled < self.cfg.scenes

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def rays(self, idx: torch.Tensor) -> torch.Tensor:
        K = self.K[idx]
        x = (self.u[None] - K[:, 2, None, None]) / K[:, 0, None, None]
        y = (self.v[None] - K[:, 3, None, None]) / K[:, 1, None, None]
        return torch.stack([x, y], dim=1)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def collate(ds: GpuDataset, rng: np.random.Generator, cfg: TrainConfig, dec_cfg: CompactVLMConfig,
            tok: CompactTokenizer):
    img_idx = rng.choice(ds.usable, size=cfg.images_per_step, replace=False)
    rows = []
    for b, i in enumerate(img_idx):
        qs = ds.questions[i]
        # A scene with fewer questions repeats some, so every step has the same number of rows.
        short = len(qs) < cfg.questions_per_image
        for j in rng.choice(len(qs), size=cfg.questions_per_image, replace=short):
            rows.append((b, qs[j]))
    B = len(rows)
    Lq = min(_round_up(max(len(r[1][0]) for r in rows), QUESTION_PAD), dec_cfg.max_question_len)
    Lo = min(_round_up(max(len(r[1][1]) for r in rows), OUTPUT_PAD), dec_cfg.max_output_len)
    q_ids = np.full((B, Lq), tok.pad_id, np.int64)
    q_pad = np.ones((B, Lq), bool)
    out_in = np.full((B, Lo), tok.pad_id, np.int64)
    out_tgt = np.full((B, Lo), -100, np.int64)
    region = np.full((B, Lo), -1, np.int64)
    image_index = np.zeros(B, np.int64)
    g_row, g_pos, g_patch, g_params = [], [], [], []
    for r, (b, (q, ids, obj_pos, patches, params)) in enumerate(rows):
        image_index[r] = b
        q_ids[r, :len(q)] = q
        q_pad[r, :len(q)] = False
        out_in[r, 0] = tok.sep_id
        out_in[r, 1:len(ids)] = ids[:-1]
        out_tgt[r, :len(ids)] = ids
        for k, p in enumerate(obj_pos):
            if p + 1 < Lo:
                region[r, p + 1] = patches[k]       # the <obj> input carries its region
            g_row.append(r)
            g_pos.append(p)                         # hidden state at p predicts <obj>
            g_patch.append(patches[k])
            g_params.append(params[k])
    arrays = [img_idx, image_index, q_ids, q_pad, out_in, out_tgt, region, np.array(g_row, np.int64),
              np.array(g_pos, np.int64), np.array(g_patch, np.int64), np.array(g_params, np.float32).reshape(-1, 8)]
    if dec_cfg.has_dense_head:
        heat = np.stack([ds.heat[i] for i in img_idx]).astype(np.float32)          # (Bi,N,K)
        pos = [np.concatenate([np.full((len(ds.positives[img_idx[b]]), 1), r, np.float32), ds.positives[img_idx[b]]],
                              axis=1) for r, (b, _) in enumerate(rows)]
        pos = np.concatenate(pos) if pos else np.zeros((0, 5 + BOX_PARAMS), np.float32)  # row + dense_positives
        arrays += [heat, pos[:, :4].astype(np.int64), pos[:, 4], pos[:, 5:].astype(np.float32)]
    tensors = ds.upload(arrays)
    return (*tensors[:11], tuple(tensors[11:]) if dec_cfg.has_dense_head else None)


class BatchUpload:
    """A step's numpy arrays onto the GPU in one copy that does not wait for the GPU.

    A copy from ordinary (pageable) memory waits until the GPU has run everything queued before it, so
    each step's batch stalled the loop until the previous step was done, and the CPU could not prepare
    step n+1 while the GPU ran step n. Pinning each array anew cost more than the step saved (the host
    pins pages, 8-23 ms a batch on a lent H100 host). So the arrays are packed into one of two pinned
    buffers, allocated once; a buffer is refilled only after its copy of two steps ago has run.
    """

    ALIGN = 16   # bytes: every array's offset, so each can be viewed as its own dtype on the GPU

    def __init__(self, device: str, capacity: int = 1 << 22) -> None:
        self.device = device
        self._buffers = [torch.empty(capacity, dtype=torch.uint8, pin_memory=True) for _ in range(2)]
        self._copied: list[torch.cuda.Event | None] = [None, None]
        self._next = 0

    def __call__(self, arrays: list[np.ndarray]) -> list[torch.Tensor]:
        arrays = [np.ascontiguousarray(a) for a in arrays]
        offsets, total = [], 0
        for a in arrays:
            offsets.append(total)
            total += -(-a.nbytes // self.ALIGN) * self.ALIGN
        k, self._next = self._next, 1 - self._next
        if self._copied[k] is not None:
            self._copied[k].synchronize()          # its copy of two steps ago (long done, as a rule)
        if total > self._buffers[k].numel():       # a larger batch than any before: a larger buffer
            self._buffers[k] = torch.empty(2 * total, dtype=torch.uint8, pin_memory=True)
        host = self._buffers[k].numpy()
        for a, off in zip(arrays, offsets):
            host[off:off + a.nbytes] = a.reshape(-1).view(np.uint8)
        dev = self._buffers[k][:total].to(self.device, non_blocking=True)
        self._copied[k] = torch.cuda.Event()
        self._copied[k].record()
        return [dev[off:off + a.nbytes].view(_TORCH_DTYPES[a.dtype]).view(a.shape) for a, off in zip(arrays, offsets)]


_TORCH_DTYPES = {np.dtype(np.int64): torch.int64, np.dtype(np.int32): torch.int32,
                 np.dtype(np.float32): torch.float32, np.dtype(np.bool_): torch.bool}


@functools.lru_cache(maxsize=4)
def _box_weights(device: str) -> torch.Tensor:
    # Made once per device: a CPU constant copied to the GPU at every loss would wait for the GPU.
    return torch.tensor(BOX_WEIGHTS, device=device)


# ----------------------------------------------------------------------------- losses
# range_by_size: the log-range residual of a box at range z with sizes s (geometric mean) is multiplied by
# sqrt(z / (RANGE_BY_SIZE_REF * s)) within RANGE_BY_SIZE_CLAMP. The IoU a range miss costs grows with z / s;
# the world's median z / s is 8.2 (beds 2.6, chairs 4.9, mugs 35), so a typical box keeps its weight, and the
# square root and the clamp keep the largest and smallest weights within 5x of each other.
RANGE_BY_SIZE_REF = 8.0
RANGE_BY_SIZE_CLAMP = (0.5, 2.5)


def _box_loss(pred: torch.Tensor, params: torch.Tensor, patch_z: torch.Tensor,
              weight: torch.Tensor | None = None, *, range_by_size: bool = False) -> torch.Tensor:
    """Smooth-L1 on the 8 box parameters (a weighted mean over rows when `weight` is given); the
    depth target is taken relative to the patch's depth. `range_by_size` scales each row's depth
    residual by its box's range-to-size factor (RANGE_BY_SIZE_REF), before the smooth-L1."""
    tgt = params.clone()
    tgt[:, 2] = tgt[:, 2] - torch.log(patch_z.clamp_min(0.05))
    if range_by_size:
        log_ratio = params[:, 2] - params[:, 3:6].mean(-1) - math.log(RANGE_BY_SIZE_REF)
        factor = torch.ones_like(params)
        factor[:, 2] = (0.5 * log_ratio).exp().clamp(*RANGE_BY_SIZE_CLAMP)
        pred, tgt = pred * factor, tgt * factor
    per_row = (F.smooth_l1_loss(pred, tgt, reduction="none", beta=0.05) * _box_weights(str(pred.device))).sum(-1)
    return per_row.mean() if weight is None else _weighted_mean(per_row, weight)


def _heat_focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss; target 1 at centres, a Gaussian around them, -1 ignored."""
    pos = (target >= 1.0).float()
    neg = (target >= 0.0).float() - pos
    p = torch.sigmoid(logits)
    pos_loss = -((1 - p) ** 2 * F.logsigmoid(logits) * pos).sum()
    neg_loss = -((1 - target.clamp(0, 1)) ** 4 * p ** 2 * F.logsigmoid(-logits) * neg).sum()
    return (pos_loss + neg_loss) / pos.sum().clamp_min(1)


def _weighted_mean(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean of `x` weighted by `weight` (a boolean mask or non-negative weights; 0 if they are all 0),
    without boolean indexing (which would wait for the GPU)."""
    w = weight.to(x.dtype)
    return (x * w).sum() / w.sum().clamp_min(1e-6)


# ----------------------------------------------------------------------------- mirroring
def _mirror_patch(patch: torch.Tensor, flip: torch.Tensor, grid_w: int) -> torch.Tensor:
    """Patch indices (row-major) with the column reversed where `flip`; negative ones (none) stay."""
    mirrored = patch - patch % grid_w + (grid_w - 1 - patch % grid_w)
    return torch.where(flip & (patch >= 0), mirrored, patch)


def _mirror_params(params: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    return torch.where(flip[:, None], mirror_box_params(params), params)


def _negate_x(x: torch.Tensor) -> torch.Tensor:
    """(B, 3) optical-frame vectors with x negated (whole per-pixel maps: mirror_vector_maps)."""
    return torch.cat([-x[:, :1], x[:, 1:]], dim=1)


def mirror_batch(batch, flip: torch.Tensor, grid_w: int, grid_h: int):
    """The batch's targets for its images mirrored where `flip` (per image, bool): the scene
    reflected in the camera's y-z plane, a new valid view of a new scene (compact_targets:
    patch column reversed, du and yaw negated). The question text and output tokens stay: the
    decoder names and grounds objects; left/right answers come from the boxes, not from it."""
    (img_idx, image_index, q_ids, q_pad, out_in, out_tgt, region, g_row, g_pos, g_patch, g_params, dense) = batch
    row_flip = flip[image_index]                                        # per question row
    region = _mirror_patch(region, row_flip[:, None].expand_as(region), grid_w)
    g_flip = row_flip[g_row]
    g_patch, g_params = _mirror_patch(g_patch, g_flip, grid_w), _mirror_params(g_params, g_flip)
    if dense is not None:
        heat, pos_idx, pos_weight, pos_params = dense
        heat = torch.where(flip[:, None, None], mirror_patch_maps(heat, grid_h, grid_w, dim=1), heat)
        p_flip = row_flip[pos_idx[:, 0]]
        pos_idx = torch.stack([pos_idx[:, 0], _mirror_patch(pos_idx[:, 1], p_flip, grid_w), pos_idx[:, 2],
                               pos_idx[:, 3]], dim=-1)
        dense = (heat, pos_idx, pos_weight, _mirror_params(pos_params, p_flip))
    return (img_idx, image_index, q_ids, q_pad, out_in, out_tgt, region, g_row, g_pos, g_patch, g_params, dense)


def mirror_images(flip: torch.Tensor, image: torch.Tensor, rays: torch.Tensor, depth: torch.Tensor,
                  up: torch.Tensor):
    """Images (B,C,H,W), rays (B,2,H,W), depth (B,1,H,W) and up vectors (B,3) of the mirrored
    scene where `flip`: columns reversed, and the rays' and up vector's x negated (optical frame)."""
    f4 = flip[:, None, None, None]
    return (torch.where(f4, image.flip(-1), image), torch.where(f4, mirror_vector_maps(rays), rays),
            torch.where(f4, depth.flip(-1), depth), torch.where(flip[:, None], _negate_x(up), up))


def decoder_pass(dec: CompactSpatialDecoder, features, points, valid, image_index, q_ids, q_pad, out_in, region,
                 measured) -> dict[str, torch.Tensor]:
    """The decoder's teacher-forced pass and, with a dense head, its maps (`heat`, `colour`,
    `dense_box`): the part of a step whose shapes stay the same from step to step (collate pads
    the token rows), so it can run as one compiled graph."""
    out = dec.forward_train(features, points, valid, image_index, q_ids, q_pad, out_in, region, measured=measured)
    if dec.cfg.has_dense_head:
        out["heat"], out["colour"], out["dense_box"] = dec.dense(out["image_out"], out["geo"])
    return out


@dataclass
class TrainingPasses:
    """How step_losses runs the model: the encoder and `decoder_pass`, each eager or through
    `torch.compile` (same parameters either way); the pointer and box heads, whose row counts change
    every step, always run eager on `dec`."""
    encoder: Callable
    decoder: Callable
    dec: CompactSpatialDecoder
    channels_last: bool = False     # the encoder's weights are NHWC: its inputs are made so too


def compile_for_training(enc: CompactGeometryEncoder, dec: CompactSpatialDecoder, what: str, *,
                         channels_last: bool = False) -> TrainingPasses:
    """"none": both eager. "encoder": the encoder through `torch.compile` (one input shape, one graph;
    -13 % step time on an H100, -19 % on an H200). "all": `decoder_pass` too, with static shapes
    (`dynamic=False`): compiling it with dynamic shapes failed inside inductor on torch 2.11
    (benchmarks/results/profile_train_step.md), and collate keeps its shapes fixed. "graphs": "all"
    replayed as CUDA graphs (mode "reduce-overhead"): the step is bound by launching kernels from
    Python, not by running them (GPU busy 32 of 71 ms), and graphs launch each pass at once.
    `channels_last` turns the encoder's weights NHWC (in place): cuDNN's convolutions run in that
    layout, and NCHW tensors were transposed for each of them, forward and backward."""
    if what not in COMPILE_CHOICES:
        raise ValueError(f"compile must be one of {COMPILE_CHOICES}, got {what!r}")
    if channels_last:
        enc.to(memory_format=torch.channels_last)
    mode = "reduce-overhead" if what == "graphs" else None
    encoder = enc if what == "none" else torch.compile(enc, mode=mode)
    decoder = torch.compile(decoder_pass, dynamic=False, mode=mode) if what in ("all", "graphs") else decoder_pass
    return TrainingPasses(encoder=encoder, decoder=decoder, dec=dec, channels_last=channels_last)


def step_losses(passes: TrainingPasses, ds: GpuDataset, batch, rng: torch.Generator, dec_cfg: CompactVLMConfig, *,
                mirror: bool = False, range_by_size: bool = False, measured_fraction: float = 0.5):
    """Total loss and detached statistics of one batch. `mirror`: each image is mirrored with
    probability 1/2 (with its targets), so a scene in the pool is seen as two scenes.
    `range_by_size`: see TrainConfig and _box_loss. `measured_fraction`: the probability that an
    image's decoder sees measured geometry (TrainConfig)."""
    dec = passes.dec
    img_idx = batch[0]
    image = ds.rgb[img_idx].permute(0, 3, 1, 2).float() / 255.0
    rays = ds.rays(img_idx)
    depth_gt = ds.depth[img_idx].float()[:, None]
    up_img = ds.up[img_idx]
    if mirror:
        flip = torch.rand(len(img_idx), device=image.device, generator=rng) < 0.5
        image, rays, depth_gt, up_img = mirror_images(flip, image, rays, depth_gt, up_img)
        batch = mirror_batch(batch, flip, dec_cfg.grid_w, dec_cfg.grid_h)
    (_, image_index, q_ids, q_pad, out_in, out_tgt, region, g_row, g_pos, g_patch, g_params, dense) = batch
    valid_gt = depth_gt > 0.05
    if passes.channels_last:
        image, rays = (x.contiguous(memory_format=torch.channels_last) for x in (image, rays))
    points, mask_logits, features = passes.encoder(image, rays)
    z = points[:, 2:3].clamp_min(1e-3)
    depth_loss = _weighted_mean((torch.log(z) - torch.log(depth_gt.clamp_min(1e-3))).abs(), valid_gt)
    mask_loss = F.binary_cross_entropy_with_logits(mask_logits, valid_gt.float())

    # Decoder geometry: measured depth (with holes and 1% noise) for `measured_fraction` of the images,
    # else the estimate.
    Bi = image.shape[0]
    use_gt = (torch.rand(Bi, 1, 1, 1, device=image.device, generator=rng) < measured_fraction)
    holes = torch.rand_like(depth_gt) < 0.05
    noisy = depth_gt * (1 + 0.01 * torch.randn_like(depth_gt))
    gt_points = torch.cat([rays, torch.ones_like(depth_gt)], dim=1) * noisy
    gt_valid = valid_gt & ~holes
    geo_points = torch.where(use_gt, gt_points, points.detach())
    geo_valid = torch.where(use_gt, gt_valid, mask_logits.detach() > 0)
    out = passes.decoder(dec, features, geo_points, geo_valid, image_index, q_ids, q_pad, out_in, region,
                         use_gt.reshape(-1))
    tok_loss = F.cross_entropy(out["logits"].flatten(0, 1).float(), out_tgt.flatten(), ignore_index=-100)

    up_gt = up_img[image_index]
    up_loss = (1 - (out["up"].float() * up_gt).sum(-1)).mean()
    total = depth_loss + 0.2 * mask_loss + tok_loss + up_loss
    stats = {"depth": depth_loss, "tok": tok_loss, "up": up_loss}
    if len(g_row):
        h = out["hidden"][g_row, g_pos]                                   # (G,d)
        img_out = out["image_out"][g_row]                                 # (G,N,d)
        ptr = dec.pointer_logits(h, img_out).float()
        ptr_loss = F.cross_entropy(ptr, g_patch)
        at = img_out[torch.arange(len(g_patch), device=h.device), g_patch]
        pred = dec.box_params(h, at, out["geo"][g_row, g_patch]).float()
        box_loss = _box_loss(pred, g_params, out["patch_points"][g_row, g_patch, 2], range_by_size=range_by_size)
        total = total + ptr_loss + box_loss
        stats.update(ptr=ptr_loss, ptr_acc=(ptr.argmax(-1) == g_patch).float().mean(), box=box_loss)
    if dense is not None:
        heat_tgt, pos_idx, pos_weight, pos_params = dense
        heat_logit, colour_logit, dense_box = out["heat"], out["colour"], out["dense_box"]
        heat_loss = _heat_focal_loss(heat_logit.float(), heat_tgt[image_index])
        total = total + heat_loss
        stats["heat"] = heat_loss
        if len(pos_idx):
            r, patch, kind, colour = pos_idx.unbind(-1)
            colour_ce = F.cross_entropy(colour_logit[r, patch, kind].float(), colour, reduction="none")
            colour_loss = _weighted_mean(colour_ce, pos_weight)
            dbox_loss = _box_loss(dense_box[r, patch, kind].float(), pos_params, out["patch_points"][r, patch, 2],
                                  pos_weight, range_by_size=range_by_size)
            total = total + 0.5 * colour_loss + dbox_loss
            stats.update(colour=colour_loss, dbox=dbox_loss)
    # Detached device tensors: reading them (.item()) every step would stall the GPU queue.
    return total, {k: v.detach().float() for k, v in stats.items()}


def train_step(passes: TrainingPasses, ds: GpuDataset, batch, rng: torch.Generator, dec_cfg: CompactVLMConfig,
               opt: torch.optim.Optimizer, params: list, *, amp: bool, mirror: bool = False,
               range_by_size: bool = False, measured_fraction: float = 0.5) -> dict[str, torch.Tensor]:
    """One optimization step (bf16 autocast on CUDA when `amp`, gradients clipped to norm 1);
    returns the detached loss statistics."""
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        loss, stats = step_losses(passes, ds, batch, rng, dec_cfg, mirror=mirror, range_by_size=range_by_size,
                                  measured_fraction=measured_fraction)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    return stats


# ----------------------------------------------------------------------------- run
# Saving the weights and exporting ONNX after training, with margin (about 20 s on the lent hosts).
EXPORT_RESERVE_S = 45.0


def ema_folder(out: Path, decay: float) -> Path:
    return Path(out) / f"ema_{decay:g}"


class WeightEMA:
    """Exponential moving averages of the trained parameters, one per decay, kept on the training
    device and updated after every optimizer step.

    Why: two models trained alike misjudged objects' ranges differently enough that the mean of their
    maps found more objects (benchmarks/results/ensemble.md); an average of one run's weights along
    its last thousands of steps smooths the noise of the last batches at no cost at inference. Each
    decay ramps up as (1 + n) / (10 + n) over its first n updates, so the random initial weights fade
    out instead of lingering in a slow average."""

    def __init__(self, modules: dict[str, torch.nn.Module], decays: tuple[float, ...]) -> None:
        self.decays = tuple(decays)
        self.updates = {d: 0 for d in self.decays}
        self._live = {name: dict(m.named_parameters()) for name, m in modules.items()}
        self._live_flat = [p for params in self._live.values() for p in params.values()]
        self.shadows = {d: {name: {k: p.detach().clone() for k, p in params.items()}
                            for name, params in self._live.items()} for d in self.decays}
        # The same tensors, in the order of _live_flat: resume() and copy_to() change them in place.
        self._shadow_flat = {d: [t for params in self.shadows[d].values() for t in params.values()]
                             for d in self.decays}

    def decay(self, d: float) -> float:
        n = self.updates[d]
        return min(d, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self) -> None:
        for d in self.decays:
            # One multi-tensor kernel per decay: a loop over ~200 tensors would cost more than the step's launches.
            torch._foreach_lerp_(self._shadow_flat[d], self._live_flat, 1.0 - self.decay(d))
            self.updates[d] += 1

    @torch.no_grad()
    def resume(self, d: float, folder: Path, updates: int) -> None:
        """Continue the average of decay `d` from a model folder an earlier stage wrote (ema_folder)."""
        from safetensors.torch import load_file
        for name, shadow in self.shadows[d].items():
            saved = load_file(str(Path(folder) / f"{name}.safetensors"))
            missing = sorted(shadow.keys() - saved.keys())
            if missing:
                raise ValueError(f"{folder}: the saved average of the {name} lacks {missing[:5]}")
            for k, t in shadow.items():
                t.copy_(saved[k])
        self.updates[d] = updates

    @torch.no_grad()
    def copy_to(self, d: float, modules: dict[str, torch.nn.Module]) -> None:
        """Load the average of decay `d` into modules of the same architecture (e.g. fresh CPU ones)."""
        for name, m in modules.items():
            shadow = self.shadows[d][name]
            for k, p in m.named_parameters():
                p.copy_(shadow[k])


def training_budget_s(cfg: TrainConfig, setup_s: float) -> float:
    """Seconds of optimization: `minutes`, cut so that a run with `wall_minutes` still ends in time
    after `setup_s` of scene generation (which varied 2x between lent hosts of one kind)."""
    budget = cfg.minutes * 60
    if cfg.wall_minutes > 0:
        budget = min(budget, cfg.wall_minutes * 60 - setup_s - EXPORT_RESERVE_S)
    if budget <= 0:
        raise RuntimeError(f"set-up took {setup_s:.0f} s: no time left to train within --wall-minutes "
                           f"{cfg.wall_minutes}")
    return budget


def learning_rate(cfg: TrainConfig, steps_done: int, frac: float) -> float:
    """Learning rate after `steps_done` steps of this run, `frac` of its time budget spent: a linear
    warm-up over `warmup_steps`, times the cosine decay at the matching point of the run's `lr_span`."""
    warm = min(1.0, (steps_done + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
    t = cfg.lr_span_start + (cfg.lr_span_end - cfg.lr_span_start) * min(max(frac, 0.0), 1.0)
    return cfg.lr * warm * 0.5 * (1 + math.cos(math.pi * t))


def train(cfg: TrainConfig) -> dict:
    t_run = time.time()
    torch.manual_seed(cfg.seed)
    log_lines: list[str] = []

    def log(msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        log_lines.append(line)

    enc_cfg = CompactEncoderConfig(in_width=cfg.grid_width, in_height=cfg.grid_height, f0=cfg.f0,
                                   fine_features=cfg.fine_features, context_layers=cfg.encoder_context)
    state = {"step": 0, "history": []}
    if cfg.resume:
        r = Path(cfg.resume)
        meta = json.loads((r / STATE_FILE).read_text())
        state = meta["state"]
        enc_cfg = encoder_config(meta["encoder"])
        tok = CompactTokenizer.load(r / "tokenizer.json")
        dec_cfg = CompactVLMConfig.from_dict(meta["decoder"])
        # The saved model fixes the architecture: the run's record says what was trained, not the flags.
        cfg = replace(cfg, grid_width=enc_cfg.in_width, grid_height=enc_cfg.in_height, f0=enc_cfg.f0,
                      fine_features=enc_cfg.fine_features, encoder_context=enc_cfg.context_layers,
                      dense_head=dec_cfg.has_dense_head, depth_cells=dec_cfg.depth_cells,
                      source_embedding=dec_cfg.source_embedding)
    else:
        t0 = time.time()
        tok = build_tokenizer()
        log(f"tokenizer: {tok.vocab_size} tokens ({time.time() - t0:.1f} s)")
        dec_cfg = new_decoder_config(tok, enc_cfg, dense_head=cfg.dense_head, depth_cells=cfg.depth_cells,
                                     source_embedding=cfg.source_embedding)
    if cfg.scene_seed_offset < 0:
        cfg = replace(cfg, scene_seed_offset=int(state.get("next_scene_seed", 0)))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    tok_path = str(out / "tokenizer.json")
    tok.save(tok_path)
    enc = CompactGeometryEncoder(enc_cfg).to(cfg.device)
    dec = CompactSpatialDecoder(dec_cfg).to(cfg.device)
    if cfg.resume:
        load_safetensors(enc, Path(cfg.resume) / "encoder.safetensors")
        load_safetensors(dec, Path(cfg.resume) / "decoder.safetensors")
    log(f"encoder {sum(p.numel() for p in enc.parameters()) / 1e6:.2f} M params, "
        f"decoder {sum(p.numel() for p in dec.parameters()) / 1e6:.2f} M params")
    ds = GpuDataset(cfg, enc_cfg, dec_cfg, tok_path, log)
    passes = compile_for_training(enc, dec, cfg.compile, channels_last=cfg.channels_last)  # same parameters
    params = list(enc.parameters()) + list(dec.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95),
                            fused=cfg.device.startswith("cuda"))
    if cfg.resume and (Path(cfg.resume) / "optimizer.safetensors").is_file():
        _load_optimizer(opt, Path(cfg.resume) / "optimizer.safetensors")
    ema = WeightEMA({"encoder": enc, "decoder": dec}, parse_ema_decays(cfg.ema_decays))
    for d in ema.decays:
        saved = ema_folder(Path(cfg.resume), d) if cfg.resume else None
        if saved is not None and (saved / "encoder.safetensors").is_file():
            ema.resume(d, saved, int(state.get("ema_updates", {}).get(f"{d:g}", 0)))
        else:
            log(f"weight average {d:g} starts from the {'resumed' if cfg.resume else 'initial'} weights")
    rng = np.random.default_rng(cfg.seed + state["step"])
    trng = torch.Generator(device=cfg.device)
    trng.manual_seed(cfg.seed + state["step"])
    use_amp = cfg.device.startswith("cuda")
    t_start = time.time()
    budget = training_budget_s(cfg, t_start - t_run)
    if budget < cfg.minutes * 60:
        log(f"set-up took {(t_start - t_run) / 60:.1f} min: training for {budget / 60:.1f} min to end within "
            f"--wall-minutes {cfg.wall_minutes}")
    step = first_step = state["step"]
    agg: dict[str, torch.Tensor] = {}
    n_agg: dict[str, int] = {}
    while time.time() - t_start < budget:
        # Time, not steps, sets the schedule: the step rate differs between hosts.
        lr = learning_rate(cfg, step - first_step, (time.time() - t_start) / budget)
        for g in opt.param_groups:
            g["lr"] = lr
        due = cfg.refresh_every_steps > 0 and (step - first_step) % cfg.refresh_every_steps == 0
        if due or ds.refreshing or ds.filling:
            ds.refresh(rng)
        stats = train_step(passes, ds, collate(ds, rng, cfg, dec_cfg, tok), trng, dec_cfg, opt, params,
                           amp=use_amp, mirror=cfg.mirror, range_by_size=cfg.range_by_size,
                           measured_fraction=cfg.measured_fraction)
        if ema.decays:
            ema.update()
        step += 1
        for k, v in stats.items():
            agg[k] = agg.get(k, 0.0) + v
            n_agg[k] = n_agg.get(k, 0) + 1
        if step % 100 == 0:
            avg = {k: round(float(v) / n_agg[k], 4) for k, v in agg.items()}
            state["history"].append({"step": step, "lr": lr, **avg})
            log(f"step {step} lr {lr:.2e} " + " ".join(f"{k} {v:.3f}" for k, v in avg.items()))
            agg, n_agg = {}, {}
    ds.close()
    state["step"] = step
    state["next_scene_seed"] = ds.next_seed  # a resumed run should start its fresh scenes here
    if ema.decays:
        state["ema_updates"] = {f"{d:g}": n for d, n in ema.updates.items()}
    log(f"stopped at step {step} after {(time.time() - t_start) / 60:.1f} min")
    if cfg.save_optimizer:
        _save_optimizer(opt, out / "optimizer.safetensors")
    else:  # an earlier stage's optimizer state no longer matches these weights
        (out / "optimizer.safetensors").unlink(missing_ok=True)
    state["runs"] = state.get("runs", []) + [{"config": asdict(cfg), "log": log_lines}]
    meta = {"state": state, "encoder": asdict(enc_cfg), "decoder": dec_cfg.to_dict()}
    # The model folder doubles as the checkpoint: weights, tokenizer and this training record.
    (out / STATE_FILE).write_text(json.dumps(meta, indent=1))
    write_model_folder(out, enc, dec, tok, enc_cfg, dec_cfg, meta, export_onnx=cfg.export_onnx, log=log)
    for stale in sorted(out.glob("ema_*")):
        # An earlier stage's average of a decay this run did not keep would no longer match these weights.
        if (stale / STATE_FILE).is_file() and stale.name not in {ema_folder(out, d).name for d in ema.decays}:
            shutil.rmtree(stale)
            log(f"removed {stale}: a weight average this run did not continue")
    for d in ema.decays:
        # Each average is a model folder of its own (the benchmark and the node load it as is); the
        # training weights stay in `out`, which a resumed stage continues from.
        avg_enc, avg_dec = CompactGeometryEncoder(enc_cfg), CompactSpatialDecoder(dec_cfg)
        ema.copy_to(d, {"encoder": avg_enc, "decoder": avg_dec})
        avg_meta = {**meta, "weights": {"ema_decay": d, "ema_updates": ema.updates[d]}}
        folder = ema_folder(out, d)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / STATE_FILE).write_text(json.dumps(avg_meta, indent=1))
        write_model_folder(folder, avg_enc, avg_dec, tok, enc_cfg, dec_cfg, avg_meta, export_onnx=cfg.export_onnx,
                           log=log)
    return meta


def write_model_folder(out: Path, enc, dec, tok: CompactTokenizer, enc_cfg, dec_cfg, meta: dict, *,
                       export_onnx: bool, log) -> None:
    out.mkdir(parents=True, exist_ok=True)
    enc = enc.float().cpu().eval()
    dec = dec.float().cpu().eval()
    save_safetensors(enc, out / "encoder.safetensors")
    save_safetensors(dec, out / "decoder.safetensors")
    tok.save(out / "tokenizer.json")
    config = {"format": "n3d_compact", "version": 1, "encoder": asdict(enc_cfg), "decoder": dec_cfg.to_dict(),
              "training": {"steps": meta["state"]["step"], "last": meta["state"]["history"][-1:],
                           **({"weights": meta["weights"]} if "weights" in meta else {})}}
    config["inference"] = dict(DEFAULT_INFERENCE)
    if (out / "config.json").is_file():  # keep inference settings tuned after training
        config["inference"] |= json.loads((out / "config.json").read_text()).get("inference", {})
    (out / "config.json").write_text(json.dumps(config, indent=1))
    if export_onnx:
        from ..geometry.compact_runtime import INPUT_NAMES, OUTPUT_NAMES
        from ..geometry.export_onnx import export_onnx as export
        H, W = enc_cfg.in_height, enc_cfg.in_width
        example = (torch.rand(1, 3, H, W), torch.randn(1, 2, H, W) * 0.5)
        report = export(enc, out / "encoder.onnx", example_inputs=example, input_names=list(INPUT_NAMES),
                        output_names=list(OUTPUT_NAMES), dynamic=True, opset=17)
        log(f"ONNX export: {report}")


def _save_optimizer(opt: torch.optim.Optimizer, path: Path) -> None:
    from safetensors.torch import save_file
    tensors = {}
    for gi, group in enumerate(opt.param_groups):
        for pi, p in enumerate(group["params"]):
            for k, v in opt.state.get(p, {}).items():
                if torch.is_tensor(v):
                    tensors[f"{gi}.{pi}.{k}"] = v.detach().cpu().contiguous().reshape(v.shape)
    save_file(tensors, str(path))


def _load_optimizer(opt: torch.optim.Optimizer, path: Path) -> None:
    from safetensors.torch import load_file
    tensors = load_file(str(path))
    for gi, group in enumerate(opt.param_groups):
        for pi, p in enumerate(group["params"]):
            # Moments take the parameter's layout (NHWC with channels_last): the fused step pairs them
            # element by element.
            st = {k.split(".", 2)[2]: torch.empty_like(p, dtype=v.dtype).copy_(v) if v.shape == p.shape
                  else v.to(p.device) for k, v in tensors.items() if k.startswith(f"{gi}.{pi}.")}
            if st:
                # Fused and capturable AdamW keep the step count beside the parameter, plain AdamW on the CPU.
                if "step" in st and not (group.get("fused") or group.get("capturable")):
                    st["step"] = st["step"].cpu()
                opt.state[p] = st


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in TrainConfig.__dataclass_fields__.values():
        default = f.default
        if isinstance(default, bool):
            p.add_argument(f"--{f.name.replace('_', '-')}", type=lambda s: s.lower() in ("1", "true", "yes"),
                           default=default)
        else:
            p.add_argument(f"--{f.name.replace('_', '-')}", type=type(default), default=default)
    cfg = TrainConfig(**vars(p.parse_args(argv)))
    train(cfg)


if __name__ == "__main__":
    main()
