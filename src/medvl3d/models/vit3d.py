"""3D Vision Transformer: Conv3d patch embedding, interpolated 3D position embedding, SDPA attention."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from medvl3d.models.common import check_volume_batch, resolve_indices
from medvl3d.models.config import ViTConfig


def evenly_spaced_blocks(depth: int, k: int) -> list[int]:
    """Indices of `k` evenly spaced blocks of `depth`, ending at the last (UNETR's 3, 6, 9, 12 of 12)."""
    if not 1 <= k <= depth:
        raise ValueError(f"cannot choose {k} of {depth} blocks")
    return [-(-(i + 1) * depth // k) - 1 for i in range(k)]  # ceil((i+1) depth / k) - 1


class Attention(nn.Module):
    """Multi-head self-attention through `F.scaled_dot_product_attention` (flash/memory-efficient kernels)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer3D(nn.Module):
    """ViT for volumes `[B, C, X, Y, Z]`.

    The position embedding is learned for the configured grid (`img_size / patch_size`) and resampled
    trilinearly for inputs of other sizes, so a model pretrained on one crop size runs on another.
    """

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_size = tuple(cfg.patch_size)
        self.grid = tuple(s // p for s, p in zip(cfg.img_size, cfg.patch_size))
        self.num_features = cfg.width
        self.num_prefix_tokens = 1 if cfg.pool == "cls" else 0
        self.patch_embed = nn.Conv3d(
            cfg.in_chans, cfg.width, kernel_size=self.patch_size, stride=self.patch_size
        )
        n_patches = self.grid[0] * self.grid[1] * self.grid[2]
        self.pos_embed = nn.Parameter(torch.randn(1, n_patches, cfg.width) * 0.02)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width)) if cfg.pool == "cls" else None
        self.blocks = nn.ModuleList(Block(cfg.width, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.width)
        self.grad_checkpointing = cfg.grad_checkpointing
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in backward (less activation memory, ~30% more compute)."""
        self.grad_checkpointing = enable

    def _pos_embed(self, grid: tuple[int, int, int]) -> torch.Tensor:
        if grid == self.grid:
            return self.pos_embed
        pe = self.pos_embed.reshape(1, *self.grid, -1).permute(0, 4, 1, 2, 3)
        pe = F.interpolate(pe, size=grid, mode="trilinear", align_corners=False)
        return pe.flatten(2).transpose(1, 2)

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        check_volume_batch(x, self.cfg.in_chans, type(self).__name__)
        bad = [s for s, p in zip(x.shape[2:], self.patch_size) if s % p]
        if bad:
            raise ValueError(
                f"{type(self).__name__}: input size {tuple(x.shape[2:])} is not divisible by the patch size "
                f"{self.patch_size}; crop or pad the volume"
            )
        x = self.patch_embed(x)
        grid = tuple(x.shape[2:])
        x = x.flatten(2).transpose(1, 2) + self._pos_embed(grid)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return x, grid

    def _run_block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, x, use_reentrant=False)
        return block(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised tokens `[B, N(+1), C]` (class token first when `pool == "cls"`)."""
        x, _ = self._embed(x)
        for block in self.blocks:
            x = self._run_block(block, x)
        return self.norm(x)

    def forward_intermediates(
        self, x: torch.Tensor, indices: int | Sequence[int] | None = None, norm: bool = False
    ) -> list[torch.Tensor]:
        """Token grids `[B, C, x_i, y_i, z_i]` after the chosen blocks (for segmentation decoders).

        Args:
            x: `[B, C, X, Y, Z]` batch.
            indices: block indices; an int k takes the last k; default: up to 4 evenly spaced blocks
                ending at the last (UNETR-style).
            norm: apply the final LayerNorm to each output.
        """
        n = len(self.blocks)
        chosen = resolve_indices(indices, n, evenly_spaced_blocks(n, min(4, n)))
        x, grid = self._embed(x)
        outs = []
        for i, block in enumerate(self.blocks[: chosen[-1] + 1]):
            x = self._run_block(block, x)
            if i in chosen:
                tokens = self.norm(x) if norm else x
                tokens = tokens[:, self.num_prefix_tokens :]
                outs.append(tokens.transpose(1, 2).reshape(x.shape[0], -1, *grid))
        return outs

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Pool tokens to `[B, C]`: the class token or the mean of the patch tokens."""
        if self.cls_token is not None:
            return features[:, 0]
        return features.mean(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features `[B, num_features]`."""
        return self.forward_head(self.forward_features(x))
