"""Set-prediction losses of mask-token models (Mask2Former, Malenia): Hungarian matching of tokens to
instances on a Dice + BCE cost, the mask loss of matched pairs, and the per-attribute multi-positive InfoNCE
that aligns matched tokens with the text of their instance's attribute values (unmatched ones with
"no lesion")."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from medvl3d.losses.infonce import multi_positive_nce

__all__ = ["dice_cost", "bce_cost", "hungarian_match", "mask_loss", "attribute_alignment_loss"]


def dice_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Pairwise `1 - Dice` `[N, G]` between mask logits `[N, P]` and binary targets `[G, P]`."""
    p = logits.sigmoid().flatten(1)
    t = targets.flatten(1).float()
    inter = p @ t.T
    return 1 - (2 * inter + 1) / (p.sum(1)[:, None] + t.sum(1)[None] + 1)


def bce_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Pairwise mean binary cross-entropy `[N, G]` between mask logits `[N, P]` and targets `[G, P]`."""
    x = logits.flatten(1).float()
    t = targets.flatten(1).float()
    pos = F.binary_cross_entropy_with_logits(x, torch.ones_like(x), reduction="none")
    neg = F.binary_cross_entropy_with_logits(x, torch.zeros_like(x), reduction="none")
    return (pos @ t.T + neg @ (1 - t).T) / x.shape[1]


@torch.no_grad()
def hungarian_match(
    logits: torch.Tensor, targets: torch.Tensor, w_dice: float = 1.0, w_bce: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Optimal one-to-one assignment of N tokens to G <= N instances on `w_dice * Dice + w_bce * BCE`.

    Returns `(token_idx, instance_idx)`, each `[min(N, G)]` (long, on the logits' device).
    """
    if targets.shape[0] == 0:
        empty = torch.zeros(0, dtype=torch.long, device=logits.device)
        return empty, empty
    cost = w_dice * dice_cost(logits, targets) + w_bce * bce_cost(logits, targets)
    rows, cols = linear_sum_assignment(cost.float().cpu().numpy())
    dev = logits.device
    return torch.as_tensor(rows, dtype=torch.long, device=dev), torch.as_tensor(
        cols, dtype=torch.long, device=dev
    )


def mask_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over pairs of soft Dice loss + BCE between matched mask logits `[K, P]` and targets `[K, P]`."""
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    x = logits.flatten(1).float()
    t = targets.flatten(1).float()
    p = x.sigmoid()
    dice = 1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)
    bce = F.binary_cross_entropy_with_logits(x, t, reduction="none").mean(1)
    return (dice + bce).mean()


def attribute_alignment_loss(
    logits: torch.Tensor, positives: torch.Tensor, matched: torch.Tensor, no_lesion_weight: float = 0.2
) -> torch.Tensor:
    """Multi-positive InfoNCE of one attribute, in both directions.

    Token -> values: each token's positives are its instance's value(s) (a cell may code several), an
    unmatched token's is "no lesion" (weighted `no_lesion_weight`). Values -> tokens: each value held by a
    matched token has every matched token holding it as a positive (the multi-positive part across the batch).

    Args:
        logits: `[T, V]` similarities of all tokens of the batch with the attribute's values.
        positives: `[T, V]` bool positives (unmatched rows: only the "no lesion" column).
        matched: `[T]` bool, tokens matched to an instance.
    """
    loss = logits.sum() * 0.0
    if matched.any():
        loss = loss + multi_positive_nce(logits[matched], positives[matched])
        cols = positives[matched].any(0)
        cols[-1] = False  # "no lesion" is the unmatched tokens' value, not aligned from the text side
        if cols.any():
            loss = loss + multi_positive_nce(logits[matched].T[cols], positives[matched].T[cols])
    if (~matched).any():
        loss = loss + no_lesion_weight * multi_positive_nce(logits[~matched], positives[~matched])
    return loss
