"""Helpers shared by the 3D image encoders: input checks and intermediate-level selection."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def check_volume_batch(x: torch.Tensor, in_chans: int, name: str) -> None:
    """Raise a clear `ValueError` unless `x` is a float `[B, in_chans, X, Y, Z]` batch."""
    if x.ndim != 5 or x.shape[1] != in_chans:
        raise ValueError(f"{name} expects a [B, {in_chans}, X, Y, Z] batch, got shape {tuple(x.shape)}")
    if not torch.is_floating_point(x):
        raise ValueError(f"{name} expects a floating-point batch, got {x.dtype}")


def resolve_indices(indices: int | Sequence[int] | None, n: int, default: Sequence[int]) -> list[int]:
    """Block/stage indices: None -> `default`, int k -> the last k, a sequence -> as given (negatives ok)."""
    if indices is None:
        chosen = list(default)
    elif isinstance(indices, int):
        if not 1 <= indices <= n:
            raise ValueError(f"forward_intermediates: asked for the last {indices} of {n} levels")
        chosen = list(range(n - indices, n))
    else:
        chosen = [i + n if i < 0 else i for i in indices]
    bad = [i for i in chosen if not 0 <= i < n]
    if bad:
        raise ValueError(f"forward_intermediates: indices {bad} out of range for {n} levels")
    return sorted(set(chosen))


class EncoderHost(nn.Module):
    """A model built around a registered image encoder (``self.encoder``) that may be frozen
    (``self.config.freeze_encoder``) or loaded from a pretrained checkpoint: the seg, avfusion and
    malenia families."""

    encoder: nn.Module

    def train(self, mode: bool = True) -> EncoderHost:
        """Training mode, except for a frozen encoder, which keeps its normalisation statistics."""
        super().train(mode)
        if self.config.freeze_encoder:
            self.encoder.eval()
        return self

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Gradient checkpointing in the encoder."""
        self.encoder.set_grad_checkpointing(enable)

    def load_encoder_state(self, state: dict[str, torch.Tensor], source: str) -> None:
        """Load pretrained encoder weights (keys without the `encoder.` prefix); any mismatch is an error."""
        from medvl3d.models.checkpoint import load_state_strict

        load_state_strict(self.encoder, state, f"the image encoder of {source}")
