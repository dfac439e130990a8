"""Residual 3D CNN encoder (nnU-Net ResEnc style): a stem, then stages of residual blocks, each stage
after the first downsampling by a strided convolution."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from medvl3d.models.common import check_volume_batch, resolve_indices
from medvl3d.models.config import ResEncConfig, _check_batch_norm_checkpointing


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    return nn.GroupNorm(min(8, channels), channels)


class ResidualBlock(nn.Module):
    """conv-norm-act-conv-norm + skip (1x1x1 strided projection when shape changes), then act."""

    def __init__(self, cin: int, cout: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.norm1 = _norm(norm, cout)
        self.conv2 = nn.Conv3d(cout, cout, 3, padding=1, bias=False)
        self.norm2 = _norm(norm, cout)
        self.act = nn.LeakyReLU(0.01, inplace=True)
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(nn.Conv3d(cin, cout, 1, stride=stride, bias=False), _norm(norm, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return self.act(y + self.skip(x))


class ResidualEncoder3D(nn.Module):
    """Residual CNN encoder for `[B, C, X, Y, Z]`; stage i has width `min(width * 2**i, max_width)`
    and stride `stem_stride * 2**i` relative to the input."""

    def __init__(self, cfg: ResEncConfig) -> None:
        super().__init__()
        self.cfg = cfg
        widths = [min(cfg.width * 2**i, cfg.max_width) for i in range(len(cfg.stage_blocks))]
        self.widths = widths
        self.stem = nn.Sequential(
            nn.Conv3d(cfg.in_chans, widths[0], 3, stride=cfg.stem_stride, padding=1, bias=False),
            _norm(cfg.norm, widths[0]),
            nn.LeakyReLU(0.01, inplace=True),
        )
        stages = []
        cin = widths[0]
        for i, (w, n) in enumerate(zip(widths, cfg.stage_blocks)):
            blocks = [ResidualBlock(cin, w, 1 if i == 0 else 2, cfg.norm)]
            blocks += [ResidualBlock(w, w, 1, cfg.norm) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = w
        self.stages = nn.ModuleList(stages)
        self.num_features = widths[-1]
        self.grad_checkpointing = cfg.grad_checkpointing

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each stage in backward to save activation memory (not with batch norm)."""
        _check_batch_norm_checkpointing(self.cfg.norm, enable)
        self.grad_checkpointing = enable

    def _stage_outputs(self, x: torch.Tensor, upto: int) -> list[torch.Tensor]:
        check_volume_batch(x, self.cfg.in_chans, type(self).__name__)
        factor = self.cfg.stem_stride * 2 ** (len(self.stages) - 1)
        last = [-(-s // factor) for s in x.shape[2:]]  # each stride-2 conv maps s to ceil(s / 2)
        if min(x.shape[2:]) < factor or last[0] * last[1] * last[2] < 2:
            raise ValueError(
                f"{type(self).__name__}: input size {tuple(x.shape[2:])} is too small for "
                f"{len(self.stages)} stages (needs >= {factor} voxels per axis and a last feature map of "
                "more than one voxel)"
            )
        x = self.stem(x)
        outs = []
        for stage in self.stages[: upto + 1]:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(stage, x, use_reentrant=False)
            else:
                x = stage(x)
            outs.append(x)
        return outs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map `[B, num_features, X / (stem_stride * 2^(S-1)), ...]`."""
        return self._stage_outputs(x, len(self.stages) - 1)[-1]

    def forward_intermediates(
        self, x: torch.Tensor, indices: int | Sequence[int] | None = None
    ) -> list[torch.Tensor]:
        """Feature maps after the chosen stages (default: all), finest first."""
        n = len(self.stages)
        chosen = resolve_indices(indices, n, range(n))
        outs = self._stage_outputs(x, chosen[-1])
        return [outs[i] for i in chosen]

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Global average pooling to `[B, num_features]`."""
        return features.mean(dim=(2, 3, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features `[B, num_features]`."""
        return self.forward_head(self.forward_features(x))
