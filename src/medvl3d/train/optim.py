"""AdamW with decoupled weight decay on weights only, and a linear warm-up + cosine decay schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from medvl3d.config import OptimConfig

__all__ = ["param_groups", "build_optimizer", "warmup_cosine", "build_scheduler"]

# Parameter names containing these are never decayed (open_clip's exclusion list).
_NO_DECAY_KEYS = ("logit_scale", "logit_bias", "bias", "norm", "embed", "pos_", "cls_token", "bank")
_NO_DECAY_MODULES = (
    nn.Embedding,
    nn.EmbeddingBag,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.batchnorm._NormBase,  # BatchNorm* and InstanceNorm*
)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split trainable parameters into a decayed group (matrices, kernels) and an undecayed one.

    Norm scales, biases, embeddings, positional/class tokens, knowledge-bank entries and the logit scale
    are not decayed: shrinking them towards zero has no regularising meaning and hurts contrastive
    training (CLIP, open_clip). Embeddings and norms are found by module type, the rest by shape/name.
    """
    no_decay_ids = set()
    for module in model.modules():
        if isinstance(module, _NO_DECAY_MODULES):
            no_decay_ids.update(id(p) for p in module.parameters(recurse=False))
    decay, no_decay = [], []
    seen = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        lname = name.lower()
        if p.ndim < 2 or id(p) in no_decay_ids or any(k in lname for k in _NO_DECAY_KEYS):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`."""
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("the model has no trainable parameters")
    return torch.optim.AdamW(
        param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps
    )


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """LR multiplier at optimiser step ``step`` (0-based): linear ramp to 1, then cosine to ``min_ratio``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-optimiser-step LambdaLR following :func:`warmup_cosine`."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, cfg.warmup_steps, total_steps, cfg.min_lr_ratio)
    )
