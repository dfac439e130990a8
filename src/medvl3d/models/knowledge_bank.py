"""BrgSA knowledge bank: K learnable embeddings shared by both modalities (arXiv 2501.03565, CMKI).

Each image or text embedding is reconstructed as an attention-weighted mixture of bank entries. Because
both modalities are rebuilt from the *same* entries, their reconstructions live on one shared set of
anchors, which bridges the modality gap between the two embedding clusters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class KnowledgeBank(nn.Module):
    """`size` learnable entries of width `dim`, read by softmax attention at temperature `temperature`."""

    def __init__(self, size: int, dim: int, temperature: float = 0.05) -> None:
        super().__init__()
        if size < 1 or temperature <= 0:
            raise ValueError(f"KnowledgeBank needs size >= 1 and temperature > 0, got {size}, {temperature}")
        self.temperature = temperature
        self.entries = nn.Parameter(F.normalize(torch.randn(size, dim), dim=-1))

    @property
    def size(self) -> int:
        return self.entries.shape[0]

    def attention(self, emb: torch.Tensor) -> torch.Tensor:
        """Weights `[N, K]`: softmax over the cosine similarity of each embedding to each entry / tau."""
        if emb.shape[-1] != self.entries.shape[1]:
            raise ValueError(
                f"KnowledgeBank: embedding width {emb.shape[-1]} != bank width {self.entries.shape[1]}"
            )
        sim = F.normalize(emb, dim=-1) @ F.normalize(self.entries, dim=-1).t()
        return torch.softmax(sim.float() / self.temperature, dim=-1).to(emb.dtype)

    def reconstruct(self, emb: torch.Tensor) -> torch.Tensor:
        """L2-normalised reconstruction `softmax(norm(emb) @ norm(bank).T / tau) @ bank`, `[N, dim]`."""
        return F.normalize(self.attention(emb) @ self.entries.to(emb.dtype), dim=-1)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return self.reconstruct(emb)

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.entries.shape[1]}, temperature={self.temperature}"
