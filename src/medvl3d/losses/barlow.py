"""Barlow Twins: a negative-free redundancy-reduction loss between two views (Zbontar et al. 2021)."""

from __future__ import annotations

import torch

from medvl3d.losses.infonce import gather_with_grad


def barlow_twins_loss(
    z1: torch.Tensor, z2: torch.Tensor, lambd: float = 5e-3, gather: bool = True, eps: float = 1e-5
) -> torch.Tensor:
    """`sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2`, C the cross-correlation of the batch-normalised
    embeddings of the two views.

    The batch statistics are those of the whole gathered batch (every rank computes the same global
    loss), so a DDP run matches one process on the combined batch rather than using per-rank statistics.

    Args:
        z1: `[B, D]` embeddings of view 1.
        z2: `[B, D]` embeddings of view 2 (row i is the same volume as in `z1`).
        lambd: weight of the off-diagonal (redundancy) term.
        gather: gather both views across ranks first.
        eps: variance floor of the batch normalisation.
    """
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(
            f"barlow_twins_loss expects two [B, D] tensors, got {tuple(z1.shape)} and {tuple(z2.shape)}"
        )
    if gather:
        z1, z2 = gather_with_grad(z1), gather_with_grad(z2)
    n = z1.shape[0]
    if n < 2:
        raise ValueError("barlow_twins_loss needs a batch of at least 2 volumes (batch statistics)")
    z1, z2 = z1.float(), z2.float()
    z1 = (z1 - z1.mean(0)) / torch.sqrt(z1.var(0, unbiased=False) + eps)
    z2 = (z2 - z2.mean(0)) / torch.sqrt(z2.var(0, unbiased=False) + eps)
    c = z1.t() @ z2 / n
    diag = torch.diagonal(c)
    on = (diag - 1).pow(2).sum()
    off = c.pow(2).sum() - diag.pow(2).sum()
    return on + lambd * off
