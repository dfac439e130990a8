"""BrgSA knowledge bank: K learnable embeddings shared by both modalities (arXiv 2501.03565, CMKI).

Each image or text embedding is reconstructed as an attention-weighted mixture of bank entries. Because
both modalities are rebuilt from the *same* entries, their reconstructions live on one shared set of
anchors, which is meant to bridge the modality gap between the two embedding clusters.

Two ways to read the bank (`read`):

- ``"softmax_dot"`` (the authors' code, the default): ``softmax(e @ B^T) @ B`` with the entries ``B``
  initialised orthogonally and used as they are. At initialisation the weights are soft (logits within
  +-1 for unit embeddings), so both modalities draw on the same entries, every reconstruction starts
  near the mean entry, and the bank has to grow its entries to sharpen (watch `bank_entropy_*`).
- ``"cosine_tau"`` (this project's first version): ``softmax(cos(e, B) / tau) @ B`` with ``tau = 0.05``:
  an almost hard choice of the nearest entries, which lets images and texts settle on different ones.

`usage` measures whether the bank bridges: how many entries both modalities use, and how spread the
attention is.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from medvl3d.models.config import BANK_INITS, BANK_READS


class KnowledgeBank(nn.Module):
    """`size` learnable entries of width `dim`.

    Args:
        size: number of entries K.
        dim: entry width (the joint embedding size).
        temperature: softmax temperature of the ``cosine_tau`` read (unused by ``softmax_dot``).
        read: ``"softmax_dot"`` or ``"cosine_tau"``.
        init: ``"orthogonal"`` or ``"normal"``.
    """

    def __init__(
        self,
        size: int,
        dim: int,
        temperature: float = 0.05,
        read: str = "softmax_dot",
        init: str = "orthogonal",
    ) -> None:
        super().__init__()
        if size < 1 or temperature <= 0:
            raise ValueError(f"KnowledgeBank needs size >= 1 and temperature > 0, got {size}, {temperature}")
        if read not in BANK_READS or init not in BANK_INITS:
            raise ValueError(f"KnowledgeBank: read must be one of {BANK_READS} and init one of {BANK_INITS}")
        self.temperature = temperature
        self.read = read
        self.init = init
        if init == "orthogonal":
            entries = nn.init.orthogonal_(torch.empty(size, dim))
        else:
            entries = F.normalize(torch.randn(size, dim), dim=-1)
        self.entries = nn.Parameter(entries)

    @property
    def size(self) -> int:
        return self.entries.shape[0]

    def attention(self, emb: torch.Tensor) -> torch.Tensor:
        """Weights `[N, K]` of each (L2-normalised) embedding over the entries; rows sum to 1."""
        if emb.shape[-1] != self.entries.shape[1]:
            raise ValueError(
                f"KnowledgeBank: embedding width {emb.shape[-1]} != bank width {self.entries.shape[1]}"
            )
        e = F.normalize(emb, dim=-1)
        if self.read == "softmax_dot":
            logits = e.float() @ self.entries.float().t()
        else:
            logits = (e @ F.normalize(self.entries, dim=-1).t()).float() / self.temperature
        return torch.softmax(logits, dim=-1).to(emb.dtype)

    def mixture(self, emb: torch.Tensor) -> torch.Tensor:
        """The unnormalised reconstruction `attention(emb) @ entries`, `[N, dim]` (what the MSE of the
        authors' loss pulls towards the embedding)."""
        return self.attention(emb) @ self.entries.to(emb.dtype)

    def reconstruct(self, emb: torch.Tensor) -> torch.Tensor:
        """The L2-normalised reconstruction, `[N, dim]` (what contrastive terms and scores compare)."""
        return F.normalize(self.mixture(emb), dim=-1)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return self.reconstruct(emb)

    @torch.no_grad()
    def usage(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> dict[str, torch.Tensor]:
        """Whether the two modalities read the same entries, as 0-dim tensors (no device sync).

        Returns:
            ``bank_shared``: of the entries that are the top choice of at least one image or one text,
            the fraction that both modalities pick (1: the same entries, 0: disjoint sets);
            ``bank_overlap``: the overlap of the two modalities' mean attention distributions
            (sum over entries of the smaller mass; 1: identical use);
            ``bank_entropy_image`` / ``bank_entropy_text``: mean attention entropy over log K
            (0: one entry per embedding, 1: uniform over the bank).
        """
        a_img, a_txt = self.attention(image_emb).float(), self.attention(text_emb).float()
        top_img = torch.bincount(a_img.argmax(dim=-1), minlength=self.size) > 0
        top_txt = torch.bincount(a_txt.argmax(dim=-1), minlength=self.size) > 0
        log_k = math.log(self.size) if self.size > 1 else 1.0

        def entropy(a: torch.Tensor) -> torch.Tensor:
            return -(a * a.clamp_min(1e-12).log()).sum(-1).mean() / log_k

        return {
            "bank_shared": (top_img & top_txt).sum() / (top_img | top_txt).sum(),
            "bank_overlap": torch.minimum(a_img.mean(0), a_txt.mean(0)).sum(),
            "bank_entropy_image": entropy(a_img),
            "bank_entropy_text": entropy(a_txt),
        }

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.entries.shape[1]}, read={self.read!r}, init={self.init!r}" + (
            f", temperature={self.temperature}" if self.read == "cosine_tau" else ""
        )
