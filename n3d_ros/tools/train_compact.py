"""Train the built-in compact spatial VLM on the synthetic world and write models/n3d_compact.

    python -m n3d_ros.tools.train_compact --device cuda --minutes 8 --lr-span-end 0.5 --save-optimizer true \
        --out models/n3d_compact
    python -m n3d_ros.tools.train_compact --device cuda --minutes 8 --lr-span-start 0.5 --warmup-steps 0 \
        --resume models/n3d_compact --out models/n3d_compact
(two stages making one learning-rate schedule; the shipped model's full recipe: scripts/train_builtin_model.sh)

Data: scenes from `n3d_ros.sim` rendered straight onto the model grid (focal-normalized,
letterboxed camera) by the scene factory (`scene_factory`: the first fill on the training device,
fresh scenes on its workers' CPUs), with
templated questions; an object is "visible" by the benchmark's rule (40 px at <= 640 px wide). Encoder (depth + validity) and decoder
(tokens, dense heat map / colour / box head, pointer, box, up vector) train jointly; the decoder sees measured geometry
(ground-truth depth with holes and noise) for half of the images and the encoder's own estimate
for the rest, so one model serves RGB and RGB-D robots.
A run stops at its time budget and saves a resumable checkpoint (safetensors + JSON), because one
command on the lent GPU may run at most 10 minutes. `--refresh-ahead N` keeps the scene factory
making fresh scenes that replace random ones while training: a fixed set of 16,000 scenes
was memorized within minutes by an earlier model. A resumed run continues the scene seeds where
the previous one stopped; seeds never reach the benchmark's held-out range. `--mirror true` shows
half of each step's images reflected left-right with their targets turned to match (`mirror_batch`):
a valid new scene each.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..geometry.checkpoint_io import load_safetensors, save_safetensors
from ..geometry.compact_encoder import CompactEncoderConfig, CompactGeometryEncoder
from ..vlm.compact_backend import DEFAULT_INFERENCE, encoder_config
from ..vlm.compact_model import BOX_PARAMS, CompactSpatialDecoder, CompactVLMConfig
from ..vlm.compact_targets import MIRROR_SIGNS
from ..vlm.compact_tokenizer import CompactTokenizer
from .eval_spatial import HELD_OUT_FIRST_SEED
from .scene_factory import JOB_SCENES, SceneBatch, SceneFactory
from .train_data import NEIGHBOUR_WEIGHT

STATE_FILE = "training_state.json"
BOX_WEIGHTS = torch.tensor([1.0, 1.0, 2.0, 1.0, 1.0, 1.0, 0.3, 0.3])


@dataclass
class TrainConfig:
    out: str = "models/n3d_compact"
    resume: str = ""                 # model folder of an earlier run (continues its training)
    device: str = "cuda"
    minutes: float = 8.0             # training time budget of this run (data generation excluded)
    wall_minutes: float = 0.0        # if > 0: the whole run, set-up and export included, ends by then
    scenes: int = 12000              # scenes rendered for this run
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
    refresh_ahead: int = 0           # fresh scenes kept asked for from the scene factory while training;
                                     # each render_batch of them replaces random slots (0 = a fixed set)
    workers: int = max(1, (os.cpu_count() or 2) - 3)   # the factory's; it and the loop take a core each
    render_batch: int = 64
    seed: int = 0
    export_onnx: bool = True
    dense_head: bool = True          # per-patch heat map / colour / box head (the shipped model has it)
    neighbour_weight: float = NEIGHBOUR_WEIGHT  # dense head: weight of the 8 patches around a centre
    compile: str = "none"            # torch.compile: none | encoder (see compile_for_training)
    fine_features: bool = False      # new encoders also read stride-8 features into their tokens
                                     # (the shipped model's recipe turns it on; see CompactEncoderConfig)
    depth_cells: int = 0             # new decoders: sub-patch depth detail (CompactVLMConfig.depth_cells)
    source_embedding: bool = False   # new decoders: measured/estimated geometry embedding (CompactVLMConfig)
    encoder_context: int = 0         # new encoders: global self-attention blocks at stride 16 (CompactEncoderConfig)
    mirror: bool = False             # mirror half of the images (and targets) each step: twice the scenes

    def __post_init__(self) -> None:
        if self.compile not in ("none", "encoder"):
            raise ValueError(f"compile must be none or encoder, got {self.compile!r}")
        if self.wall_minutes < 0:
            raise ValueError(f"wall_minutes must be >= 0 (0 = no limit), got {self.wall_minutes}")
        if not 0.0 <= self.neighbour_weight <= 1.0:
            raise ValueError(f"neighbour_weight must be in [0, 1], got {self.neighbour_weight}")
        if self.mirror and not self.dense_head:
            # Without the dense head, set answers list objects left to right: a mirror would reverse them.
            raise ValueError("mirror needs the dense head (--dense-head true)")
        if not 0.0 <= self.lr_span_start < self.lr_span_end <= 1.0:
            raise ValueError(f"need 0 <= lr_span_start < lr_span_end <= 1, got {self.lr_span_start}, "
                             f"{self.lr_span_end}")


# ----------------------------------------------------------------------------- data

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
    """Rendered images on the device plus per-scene question records, made by the scene factory.

    The first fill (rendered on the device) puts scene seed `first + i` in slot i. With
    `refresh_ahead` > 0 the factory's workers keep making fresh scenes (new seeds, rendered on their
    CPUs) while training, and each `render_batch` of finished ones replaces random slots: a slot's
    image and questions are swapped together, so they never mismatch, and the loop never waits for
    them.
    """

    def __init__(self, cfg: TrainConfig, enc_cfg: CompactEncoderConfig, dec_cfg: CompactVLMConfig,
                 tok_path: str, log) -> None:
        self.cfg, self.log = cfg, log
        dev = cfg.device
        n, H, W = cfg.scenes, enc_cfg.in_height, enc_cfg.in_width
        self.rgb = torch.empty((n, H, W, 3), dtype=torch.uint8, device=dev)
        self.depth = torch.empty((n, H, W), dtype=torch.float16, device=dev)
        self.K = torch.empty((n, 4), dtype=torch.float32, device=dev)
        self.up = torch.empty((n, 3), dtype=torch.float32, device=dev)
        self.seed_of = np.full(n, -1, np.int64)                 # the scene seed in each slot
        self.questions: list[list] = [[] for _ in range(n)]
        self.heat: list[np.ndarray | None] = [None] * n        # dense head: (N, kinds) heat targets
        self.positives: list[np.ndarray | None] = [None] * n   # dense head: one row per visible object
        v, u = torch.meshgrid(torch.arange(H, device=dev, dtype=torch.float32),
                              torch.arange(W, device=dev, dtype=torch.float32), indexing="ij")
        self.u, self.v = u, v
        self.next_seed = max(0, cfg.scene_seed_offset)
        self.fresh = 0                                          # scenes swapped in since the first fill
        self._arrived: list[SceneBatch] = []
        first = self.next_seed
        seeds = self._take_seeds(n)
        self.factory = SceneFactory(cfg, enc_cfg, dec_cfg, tok_path)
        t0 = time.time()
        self.factory.request(seeds, on_device=True)
        while self.factory.pending:
            batch = self.factory.get()
            self._swap_in(np.asarray(batch.seeds) - first, [batch])
        log(f"made {n} scenes and {sum(len(q) for q in self.questions)} questions in {time.time() - t0:.1f} s")
        self.usable = np.array([i for i, q in enumerate(self.questions) if q], dtype=np.int64)

    def _swap_in(self, slots: np.ndarray, batches: list[SceneBatch]) -> None:
        dev = self.cfg.device
        idx = torch.as_tensor(slots, device=dev)
        # One host-to-device copy per tensor: each waits for the training kernels queued before it.
        self.rgb[idx] = torch.cat([b.rgb for b in batches]).to(dev)
        self.depth[idx] = torch.cat([b.depth for b in batches]).to(dev)
        self.K[idx] = torch.cat([b.K for b in batches]).to(dev)
        self.up[idx] = torch.cat([b.up for b in batches]).to(dev)
        records = [r for b in batches for r in b.records]
        for slot, seed, (q, heat, pos) in zip(slots, (s for b in batches for s in b.seeds), records):
            self.seed_of[slot] = seed
            self.questions[slot], self.heat[slot], self.positives[slot] = q, heat, pos

    def _take_seeds(self, n: int) -> list[int]:
        if self.next_seed + n > HELD_OUT_FIRST_SEED:
            raise RuntimeError(f"training would reach scene seed {HELD_OUT_FIRST_SEED}, where the benchmark's "
                               f"held-out seeds start; use fewer or earlier scenes")
        seeds = list(range(self.next_seed, self.next_seed + n))
        self.next_seed += n
        return seeds

    def refresh(self, rng: np.random.Generator) -> None:
        """Swap in the fresh scenes finished so far (once a `render_batch` of them is here) and keep
        `refresh_ahead` scenes asked for. Cheap when there is nothing to do: call it every step."""
        cfg = self.cfg
        self._arrived += self.factory.poll()
        arrived = sum(len(b) for b in self._arrived)
        if arrived and arrived >= min(cfg.render_batch, cfg.refresh_ahead):
            slots = rng.choice(cfg.scenes, size=arrived, replace=False)
            self._swap_in(slots, self._arrived)
            self._arrived = []
            self.fresh += arrived
            self.usable = np.union1d(np.setdiff1d(self.usable, slots),
                                      np.array([s for s in slots if self.questions[s]], dtype=np.int64))
        short = cfg.refresh_ahead - self.factory.pending
        if short >= min(JOB_SCENES, cfg.refresh_ahead):       # whole worker jobs
            self.factory.request(self._take_seeds(short))

    def close(self) -> None:
        self.factory.close()

    def rays(self, idx: torch.Tensor) -> torch.Tensor:
        K = self.K[idx]
        x = (self.u[None] - K[:, 2, None, None]) / K[:, 0, None, None]
        y = (self.v[None] - K[:, 3, None, None]) / K[:, 1, None, None]
        return torch.stack([x, y], dim=1)


def collate(ds: GpuDataset, rng: np.random.Generator, cfg: TrainConfig, dec_cfg: CompactVLMConfig,
            tok: CompactTokenizer):
    img_idx = rng.choice(ds.usable, size=cfg.images_per_step, replace=False)
    rows = []
    for b, i in enumerate(img_idx):
        qs = ds.questions[i]
        for j in rng.choice(len(qs), size=min(cfg.questions_per_image, len(qs)), replace=False):
            rows.append((b, qs[j]))
    B = len(rows)
    Lq = max(len(r[1][0]) for r in rows)
    Lo = max(len(r[1][1]) for r in rows)
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
    t = lambda a: torch.from_numpy(np.asarray(a)).to(cfg.device)  # noqa: E731
    dense = None
    if dec_cfg.has_dense_head:
        heat = np.stack([ds.heat[i] for i in img_idx]).astype(np.float32)          # (Bi,N,K)
        pos = [np.concatenate([np.full((len(ds.positives[img_idx[b]]), 1), r, np.float32), ds.positives[img_idx[b]]],
                              axis=1) for r, (b, _) in enumerate(rows)]
        pos = np.concatenate(pos) if pos else np.zeros((0, 5 + BOX_PARAMS), np.float32)  # row + dense_positives
        dense = (t(heat), t(pos[:, :4].astype(np.int64)), t(pos[:, 4]), t(pos[:, 5:].astype(np.float32)))
    return (torch.from_numpy(img_idx).to(cfg.device), t(image_index), t(q_ids), t(q_pad), t(out_in), t(out_tgt),
            t(region), t(np.array(g_row, np.int64)), t(np.array(g_pos, np.int64)), t(np.array(g_patch, np.int64)),
            t(np.array(g_params, np.float32).reshape(-1, 8)), dense)


# ----------------------------------------------------------------------------- losses
def _box_loss(pred: torch.Tensor, params: torch.Tensor, patch_z: torch.Tensor,
              weight: torch.Tensor | None = None) -> torch.Tensor:
    """Smooth-L1 on the 8 box parameters (a weighted mean over rows when `weight` is given); the
    depth target is taken relative to the patch's depth."""
    tgt = params.clone()
    tgt[:, 2] = tgt[:, 2] - torch.log(patch_z.clamp_min(0.05))
    per_row = (F.smooth_l1_loss(pred, tgt, reduction="none", beta=0.05) * BOX_WEIGHTS.to(pred.device)).sum(-1)
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


# Box parameter columns that change sign in a mirrored scene (MIRROR_SIGNS). Sign flips below are
# written with slices and negation, not with constant tensors, so a step copies nothing to the GPU.
_MIRRORED_PARAMS = tuple(i for i, sign in enumerate(MIRROR_SIGNS) if sign < 0)


def _mirror_params(params: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    out = params.clone()
    sign = 1.0 - 2.0 * flip.to(params.dtype)
    for c in _MIRRORED_PARAMS:
        out[:, c] = out[:, c] * sign
    return out


def _negate_x(x: torch.Tensor) -> torch.Tensor:
    """x (B, C, ...) with its first channel (an optical-frame x) negated."""
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
        Bi, N, K = heat.shape
        heat = torch.where(flip[:, None, None], heat.view(Bi, grid_h, grid_w, K).flip(2).reshape(Bi, N, K), heat)
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
    return (torch.where(f4, image.flip(-1), image), torch.where(f4, _negate_x(rays.flip(-1)), rays),
            torch.where(f4, depth.flip(-1), depth), torch.where(flip[:, None], _negate_x(up), up))


def step_losses(enc, dec, ds: GpuDataset, batch, rng: torch.Generator, dec_cfg: CompactVLMConfig, *,
                mirror: bool = False):
    """Total loss and detached statistics of one batch. `mirror`: each image is mirrored with
    probability 1/2 (with its targets), so a scene in the pool is seen as two scenes."""
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
    points, mask_logits, features = enc(image, rays)
    z = points[:, 2:3].clamp_min(1e-3)
    depth_loss = _weighted_mean((torch.log(z) - torch.log(depth_gt.clamp_min(1e-3))).abs(), valid_gt)
    mask_loss = F.binary_cross_entropy_with_logits(mask_logits, valid_gt.float())

    # Decoder geometry: measured depth (with holes and 1% noise) for half the images, else the estimate.
    Bi = image.shape[0]
    use_gt = (torch.rand(Bi, 1, 1, 1, device=image.device, generator=rng) < 0.5)
    holes = torch.rand_like(depth_gt) < 0.05
    noisy = depth_gt * (1 + 0.01 * torch.randn_like(depth_gt))
    gt_points = torch.cat([rays, torch.ones_like(depth_gt)], dim=1) * noisy
    gt_valid = valid_gt & ~holes
    geo_points = torch.where(use_gt, gt_points, points.detach())
    geo_valid = torch.where(use_gt, gt_valid, mask_logits.detach() > 0)
    out = dec.forward_train(features, geo_points, geo_valid, image_index, q_ids, q_pad, out_in, region,
                            measured=use_gt.reshape(-1))
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
        box_loss = _box_loss(pred, g_params, out["patch_points"][g_row, g_patch, 2])
        total = total + ptr_loss + box_loss
        stats.update(ptr=ptr_loss, ptr_acc=(ptr.argmax(-1) == g_patch).float().mean(), box=box_loss)
    if dense is not None:
        heat_tgt, pos_idx, pos_weight, pos_params = dense
        heat_logit, colour_logit, dense_box = dec.dense(out["image_out"], out["geo"])
        heat_loss = _heat_focal_loss(heat_logit.float(), heat_tgt[image_index])
        total = total + heat_loss
        stats["heat"] = heat_loss
        if len(pos_idx):
            r, patch, kind, colour = pos_idx.unbind(-1)
            colour_ce = F.cross_entropy(colour_logit[r, patch, kind].float(), colour, reduction="none")
            colour_loss = _weighted_mean(colour_ce, pos_weight)
            dbox_loss = _box_loss(dense_box[r, patch, kind].float(), pos_params, out["patch_points"][r, patch, 2],
                                  pos_weight)
            total = total + 0.5 * colour_loss + dbox_loss
            stats.update(colour=colour_loss, dbox=dbox_loss)
    # Detached device tensors: reading them (.item()) every step would stall the GPU queue.
    return total, {k: v.detach().float() for k, v in stats.items()}


def train_step(enc, dec, ds: GpuDataset, batch, rng: torch.Generator, dec_cfg: CompactVLMConfig,
               opt: torch.optim.Optimizer, params: list, *, amp: bool, mirror: bool = False
               ) -> dict[str, torch.Tensor]:
    """One optimization step (bf16 autocast on CUDA when `amp`, gradients clipped to norm 1);
    returns the detached loss statistics."""
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        loss, stats = step_losses(enc, dec, ds, batch, rng, dec_cfg, mirror=mirror)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    return stats


def compile_for_training(enc: CompactGeometryEncoder, what: str):
    """The encoder as step_losses should call it: itself ("none") or through `torch.compile`
    ("encoder": its input shape never changes, so one graph; -13 % step time on an H100, -19 % on an H200).

    The decoder stays eager: its shapes change every step, and compiling it with dynamic shapes
    failed inside inductor on torch 2.11 (benchmarks/results/profile_train_step.md).
    """
    if what not in ("none", "encoder"):
        raise ValueError(f"compile must be none or encoder, got {what!r}")
    return enc if what == "none" else torch.compile(enc)


# ----------------------------------------------------------------------------- run
# Saving the weights and exporting ONNX after training, with margin (about 20 s on the lent hosts).
EXPORT_RESERVE_S = 45.0


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

    enc_cfg = CompactEncoderConfig(fine_features=cfg.fine_features, context_layers=cfg.encoder_context)
    state = {"step": 0, "history": []}
    if cfg.resume:
        r = Path(cfg.resume)
        meta = json.loads((r / STATE_FILE).read_text())
        state = meta["state"]
        enc_cfg = encoder_config(meta["encoder"])
        tok = CompactTokenizer.load(r / "tokenizer.json")
        dec_cfg = CompactVLMConfig.from_dict(meta["decoder"])
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
    ds = GpuDataset(cfg, enc_cfg, dec_cfg, tok_path, log)   # closed after the loop
    params = list(enc.parameters()) + list(dec.parameters())
    run_enc = compile_for_training(enc, cfg.compile)   # same parameters, compiled kernels
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95),
                            fused=cfg.device.startswith("cuda"))
    if cfg.resume and (Path(cfg.resume) / "optimizer.safetensors").is_file():
        _load_optimizer(opt, Path(cfg.resume) / "optimizer.safetensors")
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
    fresh_logged = 0
    try:
        while time.time() - t_start < budget:
            # Time, not steps, sets the schedule: the step rate differs between hosts.
            lr = learning_rate(cfg, step - first_step, (time.time() - t_start) / budget)
            for g in opt.param_groups:
                g["lr"] = lr
            if cfg.refresh_ahead > 0:
                ds.refresh(rng)
            stats = train_step(run_enc, dec, ds, collate(ds, rng, cfg, dec_cfg, tok), trng, dec_cfg, opt, params,
                               amp=use_amp, mirror=cfg.mirror)
            step += 1
            for k, v in stats.items():
                agg[k] = agg.get(k, 0.0) + v
                n_agg[k] = n_agg.get(k, 0) + 1
            if step % 100 == 0:
                avg = {k: round(float(v) / n_agg[k], 4) for k, v in agg.items()}
                state["history"].append({"step": step, "lr": lr, **avg})
                log(f"step {step} lr {lr:.2e} " + " ".join(f"{k} {v:.3f}" for k, v in avg.items())
                    + f" fresh {ds.fresh - fresh_logged}")
                agg, n_agg, fresh_logged = {}, {}, ds.fresh
    finally:
        ds.close()
    state["step"] = step
    state["next_scene_seed"] = ds.next_seed  # a resumed run should start its fresh scenes here
    log(f"stopped at step {step} after {(time.time() - t_start) / 60:.1f} min; {ds.fresh} fresh scenes swapped in")
    if cfg.save_optimizer:
        _save_optimizer(opt, out / "optimizer.safetensors")
    else:  # an earlier stage's optimizer state no longer matches these weights
        (out / "optimizer.safetensors").unlink(missing_ok=True)
    state["runs"] = state.get("runs", []) + [{"config": asdict(cfg), "log": log_lines}]
    meta = {"state": state, "encoder": asdict(enc_cfg), "decoder": dec_cfg.to_dict()}
    # The model folder doubles as the checkpoint: weights, tokenizer and this training record.
    (out / STATE_FILE).write_text(json.dumps(meta, indent=1))
    write_model_folder(out, enc, dec, tok, enc_cfg, dec_cfg, meta, export_onnx=cfg.export_onnx, log=log)
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
              "training": {"steps": meta["state"]["step"], "last": meta["state"]["history"][-1:]}}
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
            st = {k.split(".", 2)[2]: v.to(p.device) for k, v in tensors.items() if k.startswith(f"{gi}.{pi}.")}
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
