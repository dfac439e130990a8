"""`VLModel`: a 3D image tower and a text tower projected into one embedding space (CLIP-style), with a
learnable temperature, an optional SigLIP bias and an optional BrgSA knowledge bank."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medvl3d.models.config import ResEncConfig, TextTowerConfig, VisionConfig, ViTConfig, VLConfig
from medvl3d.models.heads import projection_head
from medvl3d.models.knowledge_bank import KnowledgeBank
from medvl3d.models.resenc3d import ResidualEncoder3D
from medvl3d.models.vit3d import VisionTransformer3D

#: CLIP's cap on the exponentiated logit scale (keeps training stable).
MAX_LOGIT_SCALE = 100.0


def build_image_encoder(cfg: VisionConfig) -> nn.Module:
    """The image tower its config describes (`ViTConfig` or `ResEncConfig`)."""
    if isinstance(cfg, ViTConfig):
        return VisionTransformer3D(cfg)
    if isinstance(cfg, ResEncConfig):
        return ResidualEncoder3D(cfg)
    raise TypeError(f"not a vision config: {type(cfg).__name__}")


class TextTower(nn.Module):
    """A `medvl3d.text.encoders` text encoder followed by a projection to the joint space."""

    def __init__(self, cfg: TextTowerConfig, embed_dim: int) -> None:
        super().__init__()
        from medvl3d.text.encoders import build_text_encoder

        self.encoder = build_text_encoder(
            cfg.name, pooling=cfg.pooling, trainable_layers=cfg.trainable_layers, max_length=cfg.max_length
        )
        self.proj = projection_head(self.encoder.dim, embed_dim, cfg.proj)

    def forward(self, texts: list[str]) -> torch.Tensor:
        """Unnormalised embeddings `[N, embed_dim]`."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"TextTower expects a list of strings, got {type(texts).__name__}")
        # A frozen encoder needs no graph: its cached `encode` skips repeated texts (reports, prompts).
        if self.encoder.frozen:
            features = self.encoder.encode(list(texts), normalize=False)
        else:
            features = self.encoder(list(texts))
        weight = next(self.proj.parameters())
        return self.proj(features.to(device=weight.device, dtype=weight.dtype))


class VLModel(nn.Module):
    """Vision-language model built from a `VLConfig` (see `medvl3d.models.create_model`)."""

    def __init__(self, config: VLConfig) -> None:
        super().__init__()
        self.config = config
        self.visual = build_image_encoder(config.vision)
        self.image_proj = projection_head(self.visual.num_features, config.embed_dim, config.vision_proj)
        self.text = TextTower(config.text, config.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.init_logit_scale)))
        self.logit_bias = (
            nn.Parameter(torch.tensor(float(config.init_logit_bias)))
            if config.init_logit_bias is not None
            else None
        )
        self.bank = (
            KnowledgeBank(
                config.bank_size,
                config.embed_dim,
                config.bank_temperature,
                read=config.bank_read,
                init=config.bank_init,
            )
            if config.bank_size
            else None
        )

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Gradient checkpointing in the image tower."""
        self.visual.set_grad_checkpointing(enable)

    def scale(self) -> torch.Tensor:
        """exp(logit_scale), clamped at `MAX_LOGIT_SCALE`."""
        return self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def encode_image(self, x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Image embeddings `[B, E]` for a `[B, C, X, Y, Z]` batch."""
        emb = self.image_proj(self.visual(x))
        return F.normalize(emb, dim=-1) if normalize else emb

    def encode_text(self, texts: list[str], normalize: bool = True) -> torch.Tensor:
        """Text embeddings `[N, E]`."""
        emb = self.text(texts)
        return F.normalize(emb, dim=-1) if normalize else emb

    def reconstruct(self, emb: torch.Tensor) -> torch.Tensor:
        """Knowledge-bank reconstruction of embeddings (normalised); `emb` unchanged when there is no bank."""
        return emb if self.bank is None else self.bank.reconstruct(emb)

    def score(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """Zero-shot similarity `[N, M]`: the cosine cos(v, t); with a bank, as `config.bank_score` says
        (BrgSA): the mean of cos(v, t) and cos(v_rec, t) ("image_recon", the authors' score), or of
        cos(v, t) and cos(v_rec, t_rec) ("both_recon"), or cos(v, t) alone ("plain")."""
        img = F.normalize(image_emb, dim=-1)
        txt = F.normalize(text_emb, dim=-1)
        sim = img @ txt.t()
        if self.bank is None or self.config.bank_score == "plain":
            return sim
        img_rec = self.bank.reconstruct(img)
        txt_side = self.bank.reconstruct(txt) if self.config.bank_score == "both_recon" else txt
        return 0.5 * (sim + img_rec @ txt_side.t())

    def forward(
        self, image: torch.Tensor, texts: list[str], return_pooled: bool = False
    ) -> dict[str, torch.Tensor]:
        """Normalised `image_features` `[B, E]`, `text_features` `[N, E]`, the clamped `logit_scale`, plus
        `logit_bias` (SigLIP models), `image_recon` / `text_recon` (normalised bank reconstructions) and
        `image_mixture` / `text_mixture` (unnormalised) for models with a bank, and with `return_pooled`
        the image tower's pooled features `image_pooled` `[B, F]` (before the projection)."""
        pooled = self.visual(image)
        out = {
            "image_features": F.normalize(self.image_proj(pooled), dim=-1),
            "text_features": self.encode_text(texts),
            "logit_scale": self.scale(),
        }
        if return_pooled:
            out["image_pooled"] = pooled
        if self.logit_bias is not None:
            out["logit_bias"] = self.logit_bias
        if self.bank is not None:
            for side in ("image", "text"):
                mixture = self.bank.mixture(out[f"{side}_features"])
                out[f"{side}_mixture"] = mixture
                out[f"{side}_recon"] = F.normalize(mixture, dim=-1)
        return out
