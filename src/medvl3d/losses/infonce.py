"""Contrastive losses: symmetric InfoNCE (CLIP) with cross-rank gathering, multi-positive InfoNCE, and the
modality-gap measure.

Distributed training: embeddings are all-gathered *with gradients* for the local shard
(`torch.distributed.nn.functional.all_gather`, whose backward sums the gradients of every rank into the
owning rank). Each rank scores its local rows against the global batch (labels offset by
`rank * local_batch`); DDP's gradient averaging then yields exactly the gradient of the loss on the
combined batch, while the per-rank loss *values* are local means (average them across ranks to log the
global loss). All ranks must hold the same local batch size (use `drop_last=True`).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` `[n, ...]` from all ranks in rank order, differentiable; `x` itself when not
    distributed."""
    _, world = _world()
    if world == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


def local_label_offset(n_local: int) -> int:
    """Index of this rank's first row in a gathered batch (`rank * n_local`)."""
    rank, _ = _world()
    return rank * n_local


def check_pairs(image_emb: torch.Tensor, text_emb: torch.Tensor, name: str) -> None:
    if image_emb.ndim != 2 or image_emb.shape != text_emb.shape:
        raise ValueError(
            f"{name} expects paired [B, E] embeddings, got {tuple(image_emb.shape)} and "
            f"{tuple(text_emb.shape)}"
        )


def clip_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    logit_scale: torch.Tensor | float,
    gather: bool = True,
    *,
    all_image: torch.Tensor | None = None,
    all_text: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE: mean of image->text and text->image cross-entropy over the (gathered) batch.

    Args:
        image_emb: L2-normalised image embeddings `[B, E]` (row i pairs with text row i).
        text_emb: L2-normalised text embeddings `[B, E]`.
        logit_scale: the multiplier of the cosine logits (already exponentiated and clamped).
        gather: score local rows against the embeddings of all ranks.
        all_image, all_text: `gather_with_grad` of the embeddings when the caller already has them (a loss
            that pairs the same embeddings several ways gathers each once).
    """
    check_pairs(image_emb, text_emb, "clip_loss")
    if gather:
        all_img = gather_with_grad(image_emb) if all_image is None else all_image
        all_txt = gather_with_grad(text_emb) if all_text is None else all_text
    else:
        all_img, all_txt = image_emb, text_emb
    offset = local_label_offset(image_emb.shape[0]) if gather else 0
    labels = torch.arange(image_emb.shape[0], device=image_emb.device) + offset
    logits_img = logit_scale * image_emb @ all_txt.t()
    logits_txt = logit_scale * text_emb @ all_img.t()
    return 0.5 * (F.cross_entropy(logits_img.float(), labels) + F.cross_entropy(logits_txt.float(), labels))


def multi_positive_nce(logits: torch.Tensor, positive_mask: torch.Tensor) -> torch.Tensor:
    """InfoNCE with several positives per row (SupCon "outside" form).

    For each row with at least one positive: minus the mean, over its positives, of the log-softmax of
    the row's logits. Rows without positives are ignored; the result is the mean over rows (0 with a
    gradient path when no row has a positive).

    Args:
        logits: `[N, M]` scaled similarities.
        positive_mask: `[N, M]` bool (or 0/1) marking the positives of each row.
    """
    if logits.shape != positive_mask.shape or logits.ndim != 2:
        raise ValueError(
            f"multi_positive_nce expects [N, M] logits and mask, got {tuple(logits.shape)} and "
            f"{tuple(positive_mask.shape)}"
        )
    mask = positive_mask.to(torch.bool)
    log_prob = torch.log_softmax(logits.float(), dim=1)
    n_pos = mask.sum(dim=1)
    valid = n_pos > 0
    if not bool(valid.any()):
        return logits.sum() * 0.0
    per_row = -(log_prob * mask).sum(dim=1)[valid] / n_pos[valid]
    return per_row.mean()


def centroid_gap(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """:func:`modality_gap` as a 0-dim tensor on the embeddings' device, without gradient: training tasks
    log it without waiting for the device."""
    if image_emb.ndim != 2 or text_emb.ndim != 2 or image_emb.shape[1] != text_emb.shape[1]:
        raise ValueError(
            f"the modality gap expects [N, E] and [M, E], got {tuple(image_emb.shape)} and "
            f"{tuple(text_emb.shape)}"
        )
    if image_emb.numel() == 0 or text_emb.numel() == 0:
        raise ValueError("the modality gap needs at least one image and one text embedding")
    with torch.no_grad():
        ci = F.normalize(image_emb.float(), dim=-1).mean(dim=0)
        ct = F.normalize(text_emb.float(), dim=-1).mean(dim=0)
        return (ci - ct).norm()


def alignment_stats(image_emb: torch.Tensor, text_emb: torch.Tensor) -> dict[str, torch.Tensor]:
    """How far apart the two modalities are, as 0-dim tensors without gradient.

    ``gap``: the centroid distance (:func:`centroid_gap`); ``centroid_cos``: the cosine between the two
    centroids (1 when the clouds point the same way, whatever their spread); ``paired_cos``: the mean
    cosine of each image with its own text (rows are pairs; only when both hold the same number of rows).
    """
    out = {"gap": centroid_gap(image_emb, text_emb)}
    with torch.no_grad():
        img = F.normalize(image_emb.float(), dim=-1)
        txt = F.normalize(text_emb.float(), dim=-1)
        out["centroid_cos"] = F.cosine_similarity(img.mean(0), txt.mean(0), dim=0)
        if img.shape == txt.shape:
            out["paired_cos"] = (img * txt).sum(-1).mean()
    return out


def modality_gap(image_emb: torch.Tensor, text_emb: torch.Tensor) -> float:
    """Euclidean distance between the centroids of the L2-normalised image and text embeddings
    (Liang et al. 2022, "Mind the Gap"); 0 when the two clouds share a centre, at most 2."""
    return float(centroid_gap(image_emb, text_emb))
