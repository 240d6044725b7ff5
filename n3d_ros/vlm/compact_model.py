"""The built-in compact spatial decoder: a small prefix-LM over image/geometry tokens and the
question, with grounding heads instead of spelled-out numbers.

Sequence: [image tokens (N)] [question tokens (Lq)] [output tokens (Lo)].
The prefix (image + question) attends bidirectionally; output tokens are causal.
Outputs are `<k:kind>` then, per grounded object, its label words and `<obj>`.
At the position whose next token is `<obj>`, the hidden state drives
  - a pointer over the image tokens (which 16x16 patch holds the box centre), and
  - a regression head: centre offset in the patch, log(centre depth / patch depth), log sizes,
    yaw (as sin 2t, cos 2t: boxes are symmetric under a half turn), in the gravity-levelled frame;
and the `<obj>` token fed back carries the chosen patch's embedding (a region token), so later
groundings know what was already grounded. A global head predicts the up vector (camera tilt).

Models with a class vocabulary (`kinds`, `colours`) also carry a dense grounding head on the image
tokens: per patch and object kind, a centre heat-map logit, colour logits and the same 8 box
parameters. Set questions ("how many chairs", "which object is smallest") read every object from
it instead of listing them token by token, and a named phrase ("the red mug") is grounded where the
heat map of its kind and colour peaks: listing objects autoregressively missed a third of them.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

BOX_PARAMS = 8  # du, dv, dlogz, log w, log h, log l, sin 2yaw, cos 2yaw


@dataclass(frozen=True)
class CompactVLMConfig:
    vocab_size: int = 512
    d_model: int = 256           # hidden width
    n_layers: int = 4
    n_heads: int = 8
    ffn_mult: int = 4
    feature_dim: int = 192       # channels of the encoder's stride-16 features
    grid_h: int = 15             # patch grid of the model input (240 / 16)
    grid_w: int = 20             # (320 / 16)
    patch: int = 16              # model-input pixels per patch side
    max_question_len: int = 48   # tokens
    max_output_len: int = 48     # tokens, including <eos>
    geo_freqs: int = 6           # Fourier frequencies of the 3D position encoding
    dropout: float = 0.0
    kinds: tuple[str, ...] = ()      # object kinds of the dense head ("" = no dense head)
    colours: tuple[str, ...] = ()    # colour words of the dense head
    # > 0: each patch's geometry also carries its depth on a cells x cells sub-grid and its nearest and
    # farthest surface (`depth_detail`); 0 = the patch mean point only (the shipped model).
    depth_cells: int = 0
    # A learned embedding on every image token says whether the geometry was measured (a depth camera) or
    # estimated by the encoder, so the box head may trust a measured point map and correct an estimated
    # one (whose scale can be off by several percent). False: no such embedding (the shipped model).
    source_embedding: bool = False

    def __post_init__(self) -> None:
        if self.depth_cells < 0 or (self.depth_cells and self.patch % self.depth_cells):
            raise ValueError(f"depth_cells must be 0 or divide the patch size {self.patch}, got {self.depth_cells}")

    @property
    def has_dense_head(self) -> bool:
        return bool(self.kinds)

    @property
    def n_image_tokens(self) -> int:
        return self.grid_h * self.grid_w

    @property
    def geo_dim(self) -> int:
        """Width of a patch's geometry vector (`geometry_encoding`, then `depth_detail` if on)."""
        return 6 * self.geo_freqs + 1 + (2 * self.depth_cells ** 2 + 2 if self.depth_cells else 0)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "CompactVLMConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown decoder config keys {sorted(unknown)}")
        d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**d)


def pool_points(points: torch.Tensor, valid: torch.Tensor, patch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,3,H,W) points, (B,1,H,W) validity -> per-patch mean point (B,N,3) and valid fraction (B,N)."""
    w = valid.float()
    p = torch.nan_to_num(points) * w
    num = F.avg_pool2d(p, patch)                      # (B,3,h,w)
    den = F.avg_pool2d(w, patch).clamp_min(1e-6)      # (B,1,h,w)
    mean = num / den
    frac = F.avg_pool2d(w, patch)
    B = points.shape[0]
    return mean.flatten(2).transpose(1, 2), frac.reshape(B, -1)


def geometry_encoding(patch_points: torch.Tensor, valid_frac: torch.Tensor, n_freqs: int) -> torch.Tensor:
    """Aligned 3D position encoding of each patch: Fourier features of (x/z, y/z, log z).

    Using the ray direction and log depth (not raw xyz) keeps the code scale-aware yet bounded.
    (B,N,3), (B,N) -> (B,N,6*n_freqs+1)
    """
    z = patch_points[..., 2].clamp_min(1e-3)
    has = (valid_frac > 1e-3).float()
    coords = torch.stack([patch_points[..., 0] / z, patch_points[..., 1] / z, torch.log(z)], dim=-1) * has[..., None]
    freqs = (2.0 ** torch.arange(n_freqs, device=z.device, dtype=z.dtype)) * math.pi / 4
    ang = coords[..., None] * freqs                    # (B,N,3,F)
    enc = torch.cat([torch.sin(ang), torch.cos(ang)], dim=-1).flatten(2) * has[..., None]
    return torch.cat([enc, valid_frac[..., None]], dim=-1)


def depth_detail(points: torch.Tensor, valid: torch.Tensor, patch: int, cells: int) -> torch.Tensor:
    """Where the surfaces lie inside each patch, relative to the patch's mean depth.

    The mean point of a 16x16 patch blends a small object with the wall behind it; the box head
    cannot tell how far the object's own surface is from that blend. Per patch:
    log(cell depth / patch depth) on a cells x cells sub-grid, each cell's valid fraction, and
    log(nearest / patch depth), log(farthest / patch depth); 0 where nothing is valid.
    (B,3,H,W), (B,1,H,W) -> (B,N,2*cells^2+2)
    """
    B = points.shape[0]
    valid = valid.bool()
    w = valid.float()
    z = torch.nan_to_num(points[:, 2:3].float()).clamp_min(1e-3)
    h, wd = points.shape[-2] // patch, points.shape[-1] // patch
    patch_z = (F.avg_pool2d(z * w, patch) / F.avg_pool2d(w, patch).clamp_min(1e-6)).clamp_min(1e-3)
    has = F.avg_pool2d(w, patch) > 0
    cell = patch // cells
    cell_frac = F.avg_pool2d(w, cell)
    cell_z = F.avg_pool2d(z * w, cell) / cell_frac.clamp_min(1e-6)
    ref = patch_z.repeat_interleave(cells, dim=2).repeat_interleave(cells, dim=3)
    rel = torch.where(cell_frac > 0, torch.log(cell_z.clamp_min(1e-3) / ref), torch.zeros_like(ref)).clamp(-2, 2)

    def per_patch(x: torch.Tensor) -> torch.Tensor:   # (B,1,h*c,w*c) -> (B,N,c*c)
        return x.reshape(B, h, cells, wd, cells).permute(0, 1, 3, 2, 4).reshape(B, h * wd, cells * cells)

    big = torch.finfo(z.dtype).max
    near = -F.max_pool2d(torch.where(valid, -z, torch.full_like(z, -big)), patch)
    far = F.max_pool2d(torch.where(valid, z, torch.zeros_like(z)), patch)
    extremes = torch.cat([torch.log(near.clamp(1e-3, 1e4) / patch_z), torch.log(far.clamp_min(1e-3) / patch_z)], 1)
    extremes = torch.where(has, extremes, torch.zeros_like(extremes)).clamp(-2, 2)
    return torch.cat([per_patch(rel), per_patch(cell_frac), extremes.flatten(2).transpose(1, 2)], dim=-1)


class Block(nn.Module):
    def __init__(self, cfg: CompactVLMConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.n_heads = cfg.n_heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, cfg.ffn_mult * d), nn.GELU(), nn.Linear(cfg.ffn_mult * d, d))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None,
                cache: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x (B,L,d); mask (B,1,L,Lk) bool (True = attend) or None (attend to all);
        cache: keys/values of earlier positions (B,H,Lc,dh). Returns output and the full k/v."""
        B, L, d = x.shape
        h = self.n_heads
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q = q.view(B, L, h, d // h).transpose(1, 2)
        k = k.view(B, L, h, d // h).transpose(1, 2)
        v = v.view(B, L, h, d // h).transpose(1, 2)
        if cache is not None:
            k = torch.cat([cache[0], k], dim=2)
            v = torch.cat([cache[1], v], dim=2)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(B, L, d)))
        x = x + self.drop(self.mlp(self.ln2(x)))
        return x, (k, v)


@dataclass
class PrefixState:
    """What decoding needs after the prefix pass (batch 1 at inference)."""
    caches: list[tuple[torch.Tensor, torch.Tensor]]
    image_in: torch.Tensor       # (B,N,d) image tokens as embedded (input to layer 0)
    image_out: torch.Tensor      # (B,N,d) image tokens after the last layer
    geo: torch.Tensor            # (B,N,G) geometry encoding
    up: torch.Tensor             # (B,3) unit up vector, optical frame
    length: int                  # prefix length


class CompactSpatialDecoder(nn.Module):
    def __init__(self, cfg: CompactVLMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        geo_dim = cfg.geo_dim
        self.img_proj = nn.Linear(cfg.feature_dim, d)
        self.geo_proj = nn.Sequential(nn.Linear(geo_dim, d), nn.GELU(), nn.Linear(d, d))
        self.img_pos = nn.Parameter(torch.randn(cfg.n_image_tokens, d) * 0.02)
        self.tok_emb = nn.Embedding(cfg.vocab_size, d)
        self.q_pos = nn.Parameter(torch.randn(cfg.max_question_len, d) * 0.02)
        self.o_pos = nn.Parameter(torch.randn(cfg.max_output_len, d) * 0.02)
        self.segment = nn.Parameter(torch.randn(3, d) * 0.02)   # image / question / output
        self.source = nn.Parameter(torch.randn(2, d) * 0.02) if cfg.source_embedding else None  # estimated / measured
        self.region_proj = nn.Linear(d, d)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, cfg.vocab_size, bias=False)
        self.ptr_q = nn.Linear(d, d)
        self.ptr_k = nn.Linear(d, d)
        self.box_head = nn.Sequential(nn.Linear(2 * d + geo_dim, 2 * d), nn.GELU(),
                                      nn.Linear(2 * d, d), nn.GELU(), nn.Linear(d, BOX_PARAMS))
        self.up_head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, 3))
        if cfg.has_dense_head:
            k, c = len(cfg.kinds), len(cfg.colours)
            self.dense_head = nn.Sequential(nn.Linear(d + geo_dim, 2 * d), nn.GELU(),
                                            nn.Linear(2 * d, k * (1 + c + BOX_PARAMS)))
        self.apply(self._init)
        if cfg.has_dense_head:  # heat maps start at a ~1 % prior: centres are rare among patch x kind
            nn.init.constant_(self.dense_head[-1].bias.view(k, 1 + c + BOX_PARAMS)[:, 0], -4.6)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    # ------------------------------------------------------------------ pieces
    def embed_image(self, features: torch.Tensor, points: torch.Tensor, valid: torch.Tensor,
                    measured: torch.Tensor | bool | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """features (B,C,h,w), points (B,3,H,W) metres optical, valid (B,1,H,W), measured: whether each
        image's points come from a depth camera ((B,) bool or one bool; required with `source_embedding`)
        -> tokens (B,N,d), geometry encoding (B,N,G), patch mean points (B,N,3)."""
        cfg = self.cfg
        if features.shape[-2:] != (cfg.grid_h, cfg.grid_w):
            raise ValueError(f"features grid {tuple(features.shape[-2:])} != ({cfg.grid_h}, {cfg.grid_w})")
        patch_pts, frac = pool_points(points, valid, cfg.patch)
        geo = geometry_encoding(patch_pts, frac, cfg.geo_freqs)
        if cfg.depth_cells:
            geo = torch.cat([geo, depth_detail(points, valid, cfg.patch, cfg.depth_cells).to(geo.dtype)], dim=-1)
        tok = self.img_proj(features.flatten(2).transpose(1, 2)) + self.geo_proj(geo) + self.img_pos + self.segment[0]
        if self.source is not None:
            if measured is None:
                raise ValueError("this decoder was trained with a geometry-source embedding: pass measured=")
            m = torch.as_tensor(measured, device=tok.device).reshape(-1).long()
            tok = tok + self.source[m][:, None, :]
        return tok, geo, patch_pts

    def embed_question(self, q_ids: torch.Tensor) -> torch.Tensor:
        L = q_ids.shape[1]
        return self.tok_emb(q_ids) + self.q_pos[:L] + self.segment[1]

    def embed_output(self, ids: torch.Tensor, start: int, region: torch.Tensor | None) -> torch.Tensor:
        """ids (B,L) at output positions start..start+L-1; region (B,L,d) added on <obj> inputs."""
        L = ids.shape[1]
        x = self.tok_emb(ids) + self.o_pos[start:start + L] + self.segment[2]
        if region is not None:
            x = x + self.region_proj(region)
        return x

    def pointer_logits(self, h: torch.Tensor, image_out: torch.Tensor) -> torch.Tensor:
        """h (G,d), image_out (G,N,d) -> (G,N)."""
        q = self.ptr_q(h)
        k = self.ptr_k(image_out)
        return torch.einsum("gd,gnd->gn", q, k) / math.sqrt(q.shape[-1])

    def box_params(self, h: torch.Tensor, image_out_at: torch.Tensor, geo_at: torch.Tensor) -> torch.Tensor:
        """(G,d), (G,d), (G,G_geo) -> (G,8) raw box parameters (see module docstring)."""
        out = self.box_head(torch.cat([h, image_out_at, geo_at], dim=-1))
        du_dv = torch.tanh(out[:, :2])                 # patch units, reaches the neighbours' centres
        rest = out[:, 2:6]
        yaw = F.normalize(out[:, 6:8], dim=-1, eps=1e-6)
        return torch.cat([du_dv, rest, yaw], dim=-1)

    def dense(self, image_out: torch.Tensor, geo: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Dense grounding head. image_out (B,N,d), geo (B,N,G) ->
        heat logits (B,N,K), colour logits (B,N,K,C), box parameters (B,N,K,8)."""
        cfg = self.cfg
        B, N, _ = image_out.shape
        k, c = len(cfg.kinds), len(cfg.colours)
        out = self.dense_head(torch.cat([image_out, geo], dim=-1)).view(B, N, k, 1 + c + BOX_PARAMS)
        box = out[..., 1 + c:]
        box = torch.cat([torch.tanh(box[..., :2]), box[..., 2:6], F.normalize(box[..., 6:8], dim=-1, eps=1e-6)],
                        dim=-1)
        return out[..., 0], out[..., 1:1 + c], box

    def up_vector(self, image_out: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.up_head(image_out.mean(dim=1)), dim=-1, eps=1e-6)

    # ------------------------------------------------------------------ training pass
    def forward_train(self, features: torch.Tensor, points: torch.Tensor, valid: torch.Tensor,
                      image_index: torch.Tensor, q_ids: torch.Tensor, q_pad: torch.Tensor,
                      out_in: torch.Tensor, out_region_patch: torch.Tensor,
                      measured: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Teacher-forced pass over a batch of questions that share images.

        features/points/valid: per IMAGE (Bi, ...); image_index (B,) which image each question uses.
        q_ids (B,Lq) with q_pad (B,Lq) True at padding; out_in (B,Lo) output inputs (<sep> first);
        out_region_patch (B,Lo) patch index fed back at <obj> inputs, -1 elsewhere.
        measured: per IMAGE (Bi,) bool, see `embed_image`.
        Returns hidden states of output positions (B,Lo,d), logits, image tokens, geo, up.
        """
        img_tok_i, geo_i, pts_i = self.embed_image(features, points, valid, measured)
        img_tok, geo, pts = img_tok_i[image_index], geo_i[image_index], pts_i[image_index]
        B, N, d = img_tok.shape
        Lq, Lo = q_ids.shape[1], out_in.shape[1]
        has_region = out_region_patch >= 0
        region = torch.gather(img_tok, 1, out_region_patch.clamp_min(0)[..., None].expand(-1, -1, d))
        region = region * has_region[..., None]
        x = torch.cat([img_tok, self.embed_question(q_ids), self.embed_output(out_in, 0, region)], dim=1)
        L = N + Lq + Lo
        key_ok = torch.cat([torch.zeros(B, N, dtype=torch.bool, device=x.device), q_pad,
                            torch.zeros(B, Lo, dtype=torch.bool, device=x.device)], dim=1).logical_not()
        idx = torch.arange(L, device=x.device)
        prefix = N + Lq
        allowed = (idx[None, :] < prefix) | (idx[None, :] <= idx[:, None])       # (L,L)
        mask = (allowed[None] & key_ok[:, None, :])[:, None]                      # (B,1,L,L)
        image_out = None
        for i, blk in enumerate(self.blocks):
            x, _ = blk(x, mask)
        x = self.ln_f(x)
        image_out = x[:, :N]
        out_h = x[:, prefix:]
        return {"hidden": out_h, "logits": self.lm_head(out_h), "image_out": image_out,
                "image_in": img_tok, "geo": geo, "patch_points": pts, "up": self.up_vector(image_out)}

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def prefill(self, features: torch.Tensor, points: torch.Tensor, valid: torch.Tensor,
                q_ids: torch.Tensor, measured: bool | None = None) -> tuple[PrefixState, torch.Tensor]:
        """Batch-1 prefix pass. Returns the state and patch mean points (1,N,3)."""
        img_tok, geo, pts = self.embed_image(features, points, valid, measured)
        x = torch.cat([img_tok, self.embed_question(q_ids)], dim=1)
        caches = []
        for blk in self.blocks:
            x, kv = blk(x, None)
            caches.append(kv)
        x = self.ln_f(x)
        N = img_tok.shape[1]
        state = PrefixState(caches=caches, image_in=img_tok, image_out=x[:, :N], geo=geo,
                            up=self.up_vector(x[:, :N]), length=x.shape[1])
        return state, pts

    @torch.no_grad()
    def step(self, state: PrefixState, token: torch.Tensor, position: int,
             region: torch.Tensor | None) -> torch.Tensor:
        """Feed one output token (1,1) at output position `position`; returns its hidden (1,d)
        and extends the caches in place."""
        x = self.embed_output(token, position, region)
        for i, blk in enumerate(self.blocks):
            x, kv = blk(x, None, state.caches[i])
            state.caches[i] = kv
        return self.ln_f(x)[:, -1]
