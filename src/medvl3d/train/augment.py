"""Batched 3D view augmentation on the batch's device (GTGM's two views per volume).

Crop-and-resize and flips are one affine resampling (`F.affine_grid` + `F.grid_sample`) for the whole
batch, followed by intensity scale/shift and gaussian noise. Per-volume random parameters are drawn from
a `torch.Generator` (or the global RNG), so DDP runs that seed per rank are reproducible. This replaces
per-sample MONAI dictionary transforms here because it stays on the GPU and costs one kernel per batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from medvl3d.models.config import build_dataclass


@dataclass
class AugmentConfig:
    """View augmentation parameters.

    Attributes:
        crop_scale: range of the crop size as a fraction of each axis (1 = no crop); the crop is resized
            back to the input size.
        flip_prob: probability of flipping each axis.
        intensity_scale: intensities are multiplied by `1 + U(-s, s)`.
        intensity_shift: then shifted by `U(-s, s)` (units of the input, e.g. [0, 1] after windowing).
        noise_std: gaussian noise std drawn per volume from `U(0, noise_std)`.
    """

    crop_scale: tuple[float, float] = (0.7, 1.0)
    flip_prob: float = 0.5
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1
    noise_std: float = 0.02

    def __post_init__(self) -> None:
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(
                f"AugmentConfig.crop_scale must satisfy 0 < lo <= hi <= 1, got {self.crop_scale}"
            )
        if not 0 <= self.flip_prob <= 1:
            raise ValueError(f"AugmentConfig.flip_prob must be in [0, 1], got {self.flip_prob}")


def augment_config(params: dict | AugmentConfig | None) -> AugmentConfig:
    """An `AugmentConfig` from a dict of fields (unknown field -> `TypeError` naming it)."""
    if params is None:
        return AugmentConfig()
    if isinstance(params, AugmentConfig):
        return params
    return build_dataclass(AugmentConfig, params, "augment", TypeError)


def _uniform(
    n: int, lo: float, hi: float, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    gen_device = generator.device if generator is not None else device
    return (torch.rand(n, generator=generator, device=gen_device) * (hi - lo) + lo).to(device)


def random_view(
    x: torch.Tensor, cfg: AugmentConfig | None = None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """One random view of each volume of `x` `[B, C, X, Y, Z]`, same shape and dtype.

    Args:
        x: the batch (float).
        cfg: augmentation parameters (defaults: `AugmentConfig()`).
        generator: source of randomness (on any device); the global RNG when None.
    """
    cfg = cfg or AugmentConfig()
    if x.ndim != 5 or not torch.is_floating_point(x):
        raise ValueError(f"random_view expects a float [B, C, X, Y, Z] batch, got {tuple(x.shape)} {x.dtype}")
    b, dev = x.shape[0], x.device
    # Affine in normalised coordinates, output -> input: scale s (crop fraction, negative = flip) and a
    # translation keeping the crop inside the volume. affine_grid's coordinate order is (z, y, x) for a
    # [B, C, X, Y, Z] tensor (last axis first); each axis is drawn independently so the order is moot.
    scale = _uniform(3 * b, *cfg.crop_scale, generator, dev).reshape(b, 3)
    shift = _uniform(3 * b, -1.0, 1.0, generator, dev).reshape(b, 3) * (1 - scale)
    flips = _uniform(3 * b, 0.0, 1.0, generator, dev).reshape(b, 3) < cfg.flip_prob
    theta = torch.zeros(b, 3, 4, device=dev, dtype=torch.float32)
    idx = torch.arange(3, device=dev)
    theta[:, idx, idx] = torch.where(flips, -scale, scale)
    theta[:, :, 3] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    view = (b,) + (1,) * (x.ndim - 1)
    gain = 1 + _uniform(b, -cfg.intensity_scale, cfg.intensity_scale, generator, dev).reshape(view)
    offset = _uniform(b, -cfg.intensity_shift, cfg.intensity_shift, generator, dev).reshape(view)
    out = out * gain + offset
    if cfg.noise_std > 0:
        sigma = _uniform(b, 0.0, cfg.noise_std, generator, dev).reshape(view)
        gen_device = generator.device if generator is not None else dev
        noise = torch.randn(out.shape, generator=generator, device=gen_device).to(dev)
        out = out + sigma * noise
    return out.to(x.dtype)
