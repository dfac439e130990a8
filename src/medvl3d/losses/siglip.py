"""SigLIP: pairwise sigmoid loss with a learnable bias (Zhai et al. 2023)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medvl3d.losses.infonce import check_pairs, gather_with_grad, local_label_offset


def siglip_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    logit_scale: torch.Tensor | float,
    logit_bias: torch.Tensor | float,
    gather: bool = True,
) -> torch.Tensor:
    """Sigmoid loss: every image-text pair is a binary problem (matching pair = 1, others = 0).

    `-sum_ij log sigmoid(z_ij * (scale * <x_i, y_j> + bias)) / B` with `z_ij = 1` on matching pairs and
    -1 elsewhere, local images against the texts of all ranks (the gradient of the combined batch after
    DDP averaging, see `medvl3d.losses.infonce`).

    Args:
        image_emb: L2-normalised image embeddings `[B, E]`.
        text_emb: L2-normalised text embeddings `[B, E]`.
        logit_scale: exponentiated scale (SigLIP initialises log-scale at log(10)).
        logit_bias: bias (SigLIP initialises it at -10).
        gather: include the texts of all ranks as negatives.
    """
    check_pairs(image_emb, text_emb, "siglip_loss")
    all_txt = gather_with_grad(text_emb) if gather else text_emb
    offset = local_label_offset(image_emb.shape[0]) if gather else 0
    logits = (logit_scale * image_emb @ all_txt.t() + logit_bias).float()
    signs = -torch.ones_like(logits)
    rows = torch.arange(image_emb.shape[0], device=logits.device)
    signs[rows, rows + offset] = 1.0
    return -F.logsigmoid(signs * logits).sum() / image_emb.shape[0]
