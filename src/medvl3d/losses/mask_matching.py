"""Set-prediction losses of mask-token models (Mask2Former, Malenia): Hungarian matching of tokens to
instances on a Dice + BCE cost, the mask loss of matched pairs, and the per-attribute multi-positive InfoNCE
that aligns matched tokens with the text of their instance's attribute values (unmatched ones with
"no lesion")."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from medvl3d.losses.infonce import multi_positive_nce

__all__ = [
    "dice_cost",
    "bce_cost",
    "hungarian_match",
    "hungarian_match_stages",
    "mask_loss",
    "empty_mask_loss",
    "attribute_alignment_loss",
]


def dice_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Pairwise `1 - Dice` `[..., N, G]` between mask logits `[..., N, P]` and binary targets `[G, P]`."""
    p = logits.float().sigmoid()
    t = targets.flatten(1).float()
    inter = p @ t.T
    return 1 - (2 * inter + 1) / (p.sum(-1)[..., None] + t.sum(1) + 1)


def bce_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Pairwise mean binary cross-entropy `[..., N, G]` between mask logits `[..., N, P]` and targets
    `[G, P]`."""
    x = logits.float()
    t = targets.flatten(1).float()
    pos, neg = F.softplus(-x), F.softplus(x)  # BCE with target 1 and with target 0
    return (pos @ t.T + neg.sum(-1)[..., None] - neg @ t.T) / x.shape[-1]


@torch.no_grad()
def hungarian_match(
    logits: torch.Tensor, targets: torch.Tensor, w_dice: float = 1.0, w_bce: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Optimal one-to-one assignment of N tokens to G <= N instances on `w_dice * Dice + w_bce * BCE`.

    Returns `(token_idx, instance_idx)`, each `[min(N, G)]` (long, on the logits' device).
    """
    return hungarian_match_stages(logits[None], targets, w_dice, w_bce)[0]


@torch.no_grad()
def hungarian_match_stages(
    logits: torch.Tensor, targets: torch.Tensor, w_dice: float = 1.0, w_bce: float = 1.0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """:func:`hungarian_match` of S stages' mask logits `[S, N, P]` (deep supervision) to the same targets
    `[G, P]`, the costs of all stages computed at once; one `(token_idx, instance_idx)` per stage."""
    dev = logits.device
    if targets.shape[0] == 0:
        empty = torch.zeros(0, dtype=torch.long, device=dev)
        return [(empty, empty) for _ in range(logits.shape[0])]
    logits = logits.flatten(2)
    cost = (w_dice * dice_cost(logits, targets) + w_bce * bce_cost(logits, targets)).float().cpu().numpy()
    out = []
    for c in cost:
        rows, cols = linear_sum_assignment(c)
        out.append((torch.as_tensor(rows, dtype=torch.long, device=dev), torch.as_tensor(cols, device=dev)))
    return out


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


def empty_mask_loss(logits: torch.Tensor, hard_fraction: float = 0.01, min_hard: int = 16) -> torch.Tensor:
    """Mean over rows of mask logits `[K, P]` whose target is empty: BCE of every voxel plus BCE of the
    `max(min_hard, hard_fraction * P)` highest ones.

    Dice + mean BCE cannot teach "nothing here": Dice's gradient on an empty target falls as 1 / (sum + 1)^2,
    so a lesion-sized false mask of a few hundred voxels feels almost none, and the mean BCE dilutes it among
    every voxel of the patch. The hard voxels' BCE keeps full strength until the last false voxel is gone.
    """
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    x = logits.flatten(1).float()
    k = min(x.shape[1], max(min_hard, int(hard_fraction * x.shape[1])))
    return (F.softplus(x).mean(1) + F.softplus(x.topk(k, dim=1).values).mean(1)).mean()


def attribute_alignment_loss(
    logits: torch.Tensor, positives: torch.Tensor, matched: torch.Tensor, no_lesion_weight: float = 0.2
) -> torch.Tensor:
    """Multi-positive InfoNCE of one attribute, in both directions.

    Token -> values: each token's positives are its instance's value(s) (a cell may code several), an
    unmatched token's is "no lesion" (weighted `no_lesion_weight`). Values -> tokens: each value held by a
    matched token has every matched token holding it as a positive (the multi-positive part across the batch).

    Args:
        logits: `[T, V]` similarities of all tokens of the batch with the attribute's values, or `[S, T, V]`
            for S decoder stages (deep supervision), each aligned on its own: the mean over stages, computed
            at once (rows are pooled over stages, the same as the mean of per-stage losses when every stage
            matches as many tokens, as the matching does while a patch has no more instances than tokens).
        positives: `[T, V]` (or `[S, T, V]`) bool positives (unmatched rows: only the "no lesion" column).
        matched: `[T]` (or `[S, T]`) bool, tokens matched to an instance.
    """
    if logits.ndim == 2:
        logits, positives, matched = logits[None], positives[None], matched[None]
    loss = logits.sum() * 0.0
    if matched.any():
        m_logits, m_pos = logits[matched], positives[matched]  # [S * T_matched, V], stage-major
        loss = loss + multi_positive_nce(m_logits, m_pos)
        counts = matched.sum(1).tolist()
        per_stage = zip(m_logits.split(counts), m_pos.split(counts))
        if len(set(counts)) == 1:  # all stages at once: [S, T_matched, V] -> [S * V, T_matched]
            per_stage = [(m_logits.view(len(counts), counts[0], -1), m_pos.view(len(counts), counts[0], -1))]
        for lg, pos in per_stage:
            # Rows without a positive (values no matched token holds) are ignored; "no lesion" is the
            # unmatched tokens' value, not aligned from the text side.
            pos = pos.clone()
            pos[..., -1] = False
            if pos.any():
                lg_t, pos_t = lg.transpose(-1, -2), pos.transpose(-1, -2)
                loss = loss + multi_positive_nce(
                    lg_t.reshape(-1, lg_t.shape[-1]), pos_t.reshape(-1, pos_t.shape[-1])
                ) / (1 if lg.ndim == 3 else len(counts))
    if (~matched).any():
        loss = loss + no_lesion_weight * multi_positive_nce(logits[~matched], positives[~matched])
    return loss
