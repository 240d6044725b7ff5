"""The compact built-in geometry encoder: RGB + per-pixel rays -> metric point map, mask, features.

A small fully-convolutional network (~2.8M parameters, ~30 ms at 320x240 on 2 CPU cores) built only from ops that export to ONNX
opset 17 and TensorRT cleanly: conv, GroupNorm, GELU, average pooling, bilinear interpolation
(align_corners=False), and (with `context_layers`) LayerNorm, matmul and softmax over the stride-16
tokens, with no data-dependent shapes. Depth is predicted as a sigmoid-bounded
log-depth at stride 4 and upsampled; the points are depth * (x/z, y/z, 1) of the known rays, so
the metric geometry is always consistent with the camera's true intrinsics.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class CompactEncoderConfig:
    in_width: int = 320                            # model grid width, px (multiple of 16)
    in_height: int = 240                           # model grid height, px (multiple of 16)
    f0: float = 240.0                              # canonical focal length of the grid, px
    widths: tuple[int, int, int, int] = (32, 64, 128, 224)  # channels at strides 2, 4, 8, 16
    depths: tuple[int, int, int, int] = (1, 2, 4, 6)       # residual blocks per stage
    decoder_dim: int = 64                          # FPN channels
    feature_dim: int = 192                         # feature tokens, stride 16
    min_depth: float = 0.1                         # m
    max_depth: float = 30.0                        # m
    fine_features: bool = False                    # tokens also read the stride-8 FPN map (small objects)
    context_layers: int = 0                        # self-attention blocks over the stride-16 map (0 = none)
    context_heads: int = 4

    def __post_init__(self) -> None:
        if self.in_width % 16 or self.in_height % 16:
            raise ValueError(f"grid must be multiples of 16, got {self.in_width}x{self.in_height}")
        if not 0 < self.min_depth < self.max_depth:
            raise ValueError(f"need 0 < min_depth < max_depth, got {self.min_depth}, {self.max_depth}")
        if self.context_layers < 0 or (self.context_layers and self.widths[3] % self.context_heads):
            raise ValueError(f"context_layers must be >= 0 and context_heads ({self.context_heads}) must divide "
                             f"the stride-16 width {self.widths[3]}")


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class _ConvNormAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, *, stride: int = 1, kernel: int = 3) -> None:
        super().__init__(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), _norm(cout), nn.GELU())


class _Block(nn.Module):
    """Depthwise 3x3 -> norm -> pointwise expand/GELU/project, residual (ConvNeXt-like, cheap on CPU)."""

    def __init__(self, channels: int, expand: int = 3) -> None:
        super().__init__()
        self.dw = nn.Conv2d(channels, channels, 3, 1, 1, groups=channels)
        self.norm = _norm(channels)
        self.pw1 = nn.Conv2d(channels, channels * expand, 1)
        self.pw2 = nn.Conv2d(channels * expand, channels, 1)
        nn.init.zeros_(self.pw2.weight)  # residual starts as identity: stable early training
        nn.init.zeros_(self.pw2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pw2(F.gelu(self.pw1(self.norm(self.dw(x)))))


class _ContextBlock(nn.Module):
    """Pre-norm self-attention + MLP over the stride-16 tokens, residual, starting as identity.

    Written with matmul/softmax (not scaled_dot_product_attention) so that the ONNX graph holds only
    ops TensorRT and ONNX Runtime run everywhere; at 300 tokens the attention matrix is small.
    """

    def __init__(self, channels: int, heads: int, mlp_ratio: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        self.ln2 = nn.LayerNorm(channels)
        self.mlp1 = nn.Linear(channels, mlp_ratio * channels)
        self.mlp2 = nn.Linear(mlp_ratio * channels, channels)
        for m in (self.proj, self.mlp2):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, N, C)."""
        B, N, C = x.shape
        h = self.heads
        q, k, v = self.qkv(self.ln1(x)).reshape(B, N, 3, h, C // h).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-2, -1) * (C // h) ** -0.5, dim=-1) @ v   # (B,h,N,C/h)
        x = x + self.proj(a.transpose(1, 2).reshape(B, N, C))
        return x + self.mlp2(F.gelu(self.mlp1(self.ln2(x))))


class CompactGeometryEncoder(nn.Module):
    def __init__(self, config: CompactEncoderConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or CompactEncoderConfig()
        w = cfg.widths
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        stages: list[nn.Module] = []
        cin = 5  # RGB + 2 ray channels
        for c, n in zip(w, cfg.depths):
            stages.append(nn.Sequential(_ConvNormAct(cin, c, stride=2), *[_Block(c) for _ in range(n)]))
            cin = c
        self.stages = nn.ModuleList(stages)
        d = cfg.decoder_dim
        self.lateral = nn.ModuleList([nn.Conv2d(c, d, 1) for c in w[1:]])  # strides 4, 8, 16
        self.smooth8 = _ConvNormAct(d, d)
        self.smooth4 = _ConvNormAct(d + 2, d)  # + rays at stride 4: the head sees the field of view
        self.head = nn.Conv2d(d, 2, 3, 1, 1)   # (log-depth logit, mask logit)
        nn.init.normal_(self.head.weight, std=1e-3)
        nn.init.zeros_(self.head.bias)
        with torch.no_grad():
            self.head.bias[1] = 2.0  # start with "valid" everywhere; training learns the holes
        self.features = nn.Conv2d(w[3], cfg.feature_dim, 1)
        # A 2x2 stride-2 conv over the stride-8 map puts each token's four sub-cells into it: a mug
        # 8 px wide fills a quarter of a 16 px patch, and its colour and outline live at stride 8.
        self.fine = nn.Conv2d(d, cfg.feature_dim, 2, 2) if cfg.fine_features else None
        # Global context: how far the scene is (its scale) shows in cues spread over the whole image (the
        # floor's perspective, the sizes of several objects), beyond the convolutions' reach. Each token
        # knows where it looks through its ray direction.
        self.context = nn.ModuleList(_ContextBlock(w[3], cfg.context_heads) for _ in range(cfg.context_layers))
        self.context_pos = nn.Sequential(nn.Linear(2, w[3]), nn.GELU(), nn.Linear(w[3], w[3])) \
            if cfg.context_layers else None
        if self.context_pos is not None:  # with the blocks' zeroed projections: the context starts as identity
            nn.init.zeros_(self.context_pos[-1].weight)
            nn.init.zeros_(self.context_pos[-1].bias)
        self.log_min = math.log(cfg.min_depth)
        self.log_max = math.log(cfg.max_depth)

    def forward(self, image: torch.Tensor, rays: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """image (B, 3, H, W) RGB in [0, 1]; rays (B, 2, H, W) (x/z, y/z); H, W multiples of 16.

        Returns points (B, 3, H, W) metres optical frame, mask_logits (B, 1, H, W),
        features (B, feature_dim, H/16, W/16).
        """
        x = torch.cat([(image - self.mean) / self.std, rays], dim=1)
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        s4, s8, s16 = skips[1], skips[2], skips[3]
        if self.context_pos is not None:
            B, C, h, w = s16.shape
            t = s16.flatten(2).transpose(1, 2) + self.context_pos(F.avg_pool2d(rays, 16).flatten(2).transpose(1, 2))
            for blk in self.context:
                t = blk(t)
            s16 = t.transpose(1, 2).reshape(B, C, h, w)
        p16 = self.lateral[2](s16)
        p8 = self.smooth8(self.lateral[1](s8) + _up(p16, s8))
        p4 = self.lateral[0](s4) + _up(p8, s4)
        rays4 = F.avg_pool2d(rays, 4)
        out4 = self.head(self.smooth4(torch.cat([p4, rays4], dim=1)))
        out = F.interpolate(out4, size=image.shape[-2:], mode="bilinear", align_corners=False)
        log_depth = self.log_min + torch.sigmoid(out[:, :1]) * (self.log_max - self.log_min)
        depth = torch.exp(log_depth)
        ones = torch.ones_like(depth)
        points = depth * torch.cat([rays, ones], dim=1)
        features = self.features(s16)
        if self.fine is not None:
            features = features + self.fine(p8)
        return points, out[:, 1:], features


def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
