"""Projection heads mapping encoder features into the joint image-text embedding space."""

from __future__ import annotations

from torch import nn


def projection_head(in_dim: int, out_dim: int, kind: str = "linear") -> nn.Module:
    """A linear map (CLIP) or a 2-layer MLP with GELU (hidden = max(in, out)), both without output bias.

    Args:
        in_dim: encoder feature size.
        out_dim: joint embedding size.
        kind: "linear" or "mlp".
    """
    if kind == "linear":
        return nn.Linear(in_dim, out_dim, bias=False)
    if kind == "mlp":
        hidden = max(in_dim, out_dim)
        return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim, bias=False))
    raise ValueError(f"unknown projection head {kind!r}; use 'linear' or 'mlp'")
