"""Small stand-in model, task and dataset for testing the training loop without the real models/data.

Kept in tests (not in src/): the loop only relies on the documented contracts, which these follow.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset


@dataclass
class ToyConfig:
    width: int = 8
    embed_dim: int = 16
    dropout: float = 0.1

    def to_dict(self) -> dict:
        return asdict(self)


class ToyVL(nn.Module):
    """A tiny VL model: conv image tower, hashed bag-of-words text tower, CLIP logit scale."""

    def __init__(self, cfg: ToyConfig | None = None):
        super().__init__()
        self.config = cfg or ToyConfig()
        w, d = self.config.width, self.config.embed_dim
        self.conv = nn.Conv3d(1, w, 3, padding=1)
        self.norm = nn.GroupNorm(1, w)
        self.drop = nn.Dropout(self.config.dropout)
        self.proj = nn.Linear(w, d)
        self.tok = nn.EmbeddingBag(257, d, mode="mean")
        self.logit_scale = nn.Parameter(torch.tensor(2.0))

    def encode_image(self, x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        h = F.gelu(self.norm(self.conv(x))).mean(dim=(2, 3, 4))
        z = self.proj(self.drop(h))
        return F.normalize(z, dim=-1) if normalize else z

    def encode_text(self, texts: list[str], normalize: bool = True) -> torch.Tensor:
        ids, offsets = [], []
        for t in texts:
            offsets.append(len(ids))
            ids.extend(zlib.crc32(w.encode()) % 257 for w in (t.lower().split() or ["<empty>"]))
        z = self.tok(
            torch.tensor(ids, device=self.logit_scale.device),
            torch.tensor(offsets, device=self.logit_scale.device),
        )
        return F.normalize(z, dim=-1) if normalize else z


def build_toy(config: dict) -> ToyVL:
    """Stand-in for `medvl3d.models.model_from_config`."""
    return ToyVL(ToyConfig(**config))


class RegressTask(nn.Module):
    """Regress each volume's mean intensity from its embedding (per-sample mean loss: DDP-exact)."""

    def __init__(self, model: ToyVL):
        super().__init__()
        self.model = model
        self.head = nn.Linear(model.config.embed_dim, 1)

    def forward(self, batch: dict) -> dict:
        z = self.model.encode_image(batch["image"], normalize=False)
        target = batch["image"].mean(dim=(1, 2, 3, 4))
        loss = F.mse_loss(self.head(z).squeeze(-1), target)
        return {"loss": loss, "mse": loss.detach()}


class ClipTask(nn.Module):
    """Symmetric InfoNCE between image and text embeddings (single process)."""

    def __init__(self, model: ToyVL):
        super().__init__()
        self.model = model

    def forward(self, batch: dict) -> dict:
        img = self.model.encode_image(batch["image"])
        txt = self.model.encode_text(batch["text"])
        logits = self.model.logit_scale.exp() * img @ txt.t()
        y = torch.arange(len(img), device=img.device)
        loss = (F.cross_entropy(logits, y) + F.cross_entropy(logits.t(), y)) / 2
        return {"loss": loss}


class ToyDataset(Dataset):
    """n deterministic samples: blob volumes [1, 8, 8, 8] whose brightness matches the report."""

    def __init__(self, n: int = 16, size: int = 8, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for i in range(n):
            bright = i % 2
            img = torch.rand(1, size, size, size, generator=g) * 0.2 + 0.6 * bright
            report = "bright dense lesion present" if bright else "dark clear normal"
            self.items.append(
                {
                    "image": img,
                    "report": report,
                    "text": report,
                    "labels": {"Lesion": bright},
                    "meta": {"case_id": f"case{i:03d}", "modality": "CT"},
                }
            )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


class PairDataset(Dataset):
    """n deterministic (volume [1, s, s, s], text) pairs for real-model tests: a brightness code per text."""

    WORDS = ("effusion", "emphysema", "nodule", "normal")

    def __init__(self, n: int = 8, size: int = 32, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for i in range(n):
            k = i % len(self.WORDS)
            img = torch.rand(1, size, size, size, generator=g) * 0.3 + 0.2 * k
            self.items.append(
                {
                    "image": img,
                    "text": f"finding {self.WORDS[k]} case {i}",
                    "labels": {"Finding": int(k == 0)},
                    "meta": {"case_id": f"pair{i:03d}", "modality": "CT"},
                }
            )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]
