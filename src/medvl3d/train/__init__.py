"""medvl3d.train: one training loop for every objective, checkpoints, data order and DDP."""

from __future__ import annotations

from medvl3d.models.checkpoint import load_model, save_checkpoint
from medvl3d.train.loop import train

__all__ = ["train", "load_model", "save_checkpoint"]
