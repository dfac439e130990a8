"""Sliding-window segmentation of a whole volume: MONAI's `sliding_window_inference` with Gaussian
weighting and configurable overlap, plus optional flip test-time augmentation.

Flip TTA averages the softmax of the input and of its mirror images (each mirrored back). Mirror only
along axes whose sides the labels do not name: a network that tells the left kidney from the right one by
position calls a mirrored right kidney "left", so flipping the RAS x axis (0) is wrong for such labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

__all__ = ["SlidingWindowConfig", "sliding_window_probabilities"]


@dataclass
class SlidingWindowConfig:
    """How a segmentation model is run over a volume; stored in segmentation checkpoints.

    Attributes:
        patch_size: window size (X, Y, Z) in voxels of the preprocessed grid (the training patch).
        overlap: fraction of a window shared with its neighbour (0.5 = nnU-Net's default).
        mode: "gaussian" (windows weighted towards their centre) or "constant".
        flip_axes: array axes (0 = x, 1 = y, 2 = z) mirrored for test-time augmentation.
        batch_size: windows per forward pass.
    """

    patch_size: tuple[int, int, int] = (64, 64, 64)
    overlap: float = 0.5
    mode: Literal["gaussian", "constant"] = "gaussian"
    flip_axes: tuple[int, ...] = ()
    batch_size: int = 2

    def __post_init__(self) -> None:
        if min(self.patch_size) < 1:
            raise ValueError(f"sliding window patch_size must be positive, got {self.patch_size}")
        if not 0 <= self.overlap < 1:
            raise ValueError(f"sliding window overlap must be in [0, 1), got {self.overlap}")
        bad = [a for a in self.flip_axes if a not in (0, 1, 2)]
        if bad:
            raise ValueError(f"flip_axes must be array axes 0, 1 or 2, got {bad}")
        if self.batch_size < 1:
            raise ValueError(f"sliding window batch_size must be >= 1, got {self.batch_size}")


def _mirrors(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """No flip, then each axis alone (nnU-Net mirrors all combinations; single axes cost linearly)."""
    return [()] + [(a,) for a in sorted(set(axes))]


@torch.no_grad()
def sliding_window_probabilities(
    model: nn.Module,
    image: torch.Tensor,
    cfg: SlidingWindowConfig,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> torch.Tensor:
    """Class probabilities `[n_classes, X, Y, Z]` (float32, CPU) of a preprocessed `[C, X, Y, Z]` image.

    Windows run on `device`; the stitched output stays on the CPU, so a whole CT fits where its windows
    do. Volumes smaller than a window are padded and the padding cropped away (MONAI).
    """
    from monai.inferers import sliding_window_inference

    if image.ndim != 4:
        raise ValueError(
            f"sliding_window_probabilities expects a [C, X, Y, Z] image, got {tuple(image.shape)}"
        )
    device = torch.device(device)
    x = image[None].float()
    total = None
    for axes in _mirrors(cfg.flip_axes):
        dims = [a + 2 for a in axes]
        inp = torch.flip(x, dims) if dims else x
        logits = sliding_window_inference(
            inp,
            roi_size=cfg.patch_size,
            sw_batch_size=cfg.batch_size,
            predictor=model,
            overlap=cfg.overlap,
            mode=cfg.mode,
            sw_device=device,
            device=torch.device("cpu"),
            progress=progress,
        )
        if hasattr(logits, "as_tensor"):  # MONAI MetaTensor -> plain tensor
            logits = logits.as_tensor()
        probs = torch.softmax(logits.float(), dim=1)
        probs = torch.flip(probs, dims) if dims else probs
        total = probs if total is None else total.add_(probs)
    return (total / len(_mirrors(cfg.flip_axes)))[0]
