"""A MoGe-2-ViT-L-shaped geometry encoder, for speed measurements (random weights are fine).

Same cost profile as MoGe-2 ViT-L: 14 px patches, width 1024, 24 pre-norm blocks, 16 heads,
MLP 4096, then a light conv head to a per-pixel point map + mask at the input resolution.
It is NOT a trained model and makes no geometric sense with random weights; it exists so the
benchmark measures the runtime of an encoder of the size users will bring.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ViTEncoderConfig:
    image_width: int = 640   # px; patches cover floor(W/14)*14, the head upsamples back to W
    image_height: int = 448  # px
    patch: int = 14          # px
    width: int = 1024        # token channels
    depth: int = 24          # transformer blocks
    heads: int = 16
    mlp: int = 4096          # hidden channels of the MLP
    head_dim: int = 256      # channels of the conv head

    @property
    def grid(self) -> tuple[int, int]:
        """(rows, cols) of patches."""
        return self.image_height // self.patch, self.image_width // self.patch


VIT_L_640 = ViTEncoderConfig()
VIT_TINY = ViTEncoderConfig(image_width=112, image_height=84, width=64, depth=2, heads=4, mlp=256, head_dim=32)


class _Block(nn.Module):
    def __init__(self, cfg: ViTEncoderConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.norm1 = nn.LayerNorm(cfg.width)
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width)
        self.proj = nn.Linear(cfg.width, cfg.width)
        self.norm2 = nn.LayerNorm(cfg.width)
        self.fc1 = nn.Linear(cfg.width, cfg.mlp)
        self.fc2 = nn.Linear(cfg.mlp, cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, C)
        B, N, C = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, heads, N, C/heads)
        x = x + self.proj(attn.transpose(1, 2).reshape(B, N, C))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class ViTGeometryEncoder(nn.Module):
    def __init__(self, config: ViTEncoderConfig = VIT_L_640) -> None:
        super().__init__()
        self.config = cfg = config
        gh, gw = cfg.grid
        self.patch_embed = nn.Conv2d(3, cfg.width, cfg.patch, cfg.patch)
        self.pos_embed = nn.Parameter(torch.randn(1, gh * gw, cfg.width) * 0.02)
        self.blocks = nn.ModuleList([_Block(cfg) for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(cfg.width)
        self.neck = nn.Conv2d(cfg.width, cfg.head_dim, 1)
        self.up = nn.Sequential(nn.Conv2d(cfg.head_dim, cfg.head_dim // 2, 3, padding=1), nn.GELU(),
                                nn.Conv2d(cfg.head_dim // 2, cfg.head_dim // 4, 3, padding=1), nn.GELU())
        self.out = nn.Conv2d(cfg.head_dim // 4, 4, 3, padding=1)  # (x, y, log z) + mask logit
        # GPT-2-style init: residual branches scaled by depth so 24 random blocks stay well-conditioned
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        for blk in self.blocks:
            for lin in (blk.proj, blk.fc2):
                nn.init.normal_(lin.weight, std=0.02 / (2 * cfg.depth) ** 0.5)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """image (B, 3, H, W) RGB [0, 1] -> points (B, 3, H, W) (affine, not metric), mask_logits (B, 1, H, W)."""
        cfg = self.config
        gh, gw = cfg.grid
        x = self.patch_embed(image[:, :, :gh * cfg.patch, :gw * cfg.patch])  # (B, C, gh, gw)
        x = x.flatten(2).transpose(1, 2) + self.pos_embed                     # (B, N, C)
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x).transpose(1, 2).reshape(x.shape[0], cfg.width, gh, gw)
        y = F.interpolate(self.neck(x), scale_factor=4.0, mode="bilinear", align_corners=False)
        y = self.out(self.up(y))
        y = F.interpolate(y, size=image.shape[-2:], mode="bilinear", align_corners=False)
        z = torch.exp(y[:, 2:3].float().clamp(-10, 10))
        points = torch.cat([y[:, :2].float() * z, z], dim=1)
        return points, y[:, 3:]
