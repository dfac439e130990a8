"""Batched 3D view augmentation on the batch's device (GTGM's two views per volume).

Crop-and-resize, rotation and flips are one affine resampling (`F.affine_grid` + `F.grid_sample`) for the
whole batch, followed by gaussian blur, intensity scale/shift and gaussian noise (GTGM's augmentations include
rotation and blur). Per-volume random parameters are drawn from
a `torch.Generator` (or the global RNG), so DDP runs that seed per rank are reproducible. This replaces
per-sample MONAI dictionary transforms here because it stays on the GPU and costs one kernel per batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

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
        rotate_deg: rotation about each axis by `U(-r, r)` degrees (in the volume's normalised
            coordinates: an anisotropic grid shears a little).
        blur_prob: probability of a gaussian blur per volume.
        blur_sigma: range of the blur's standard deviation in voxels.
        intensity_scale: intensities are multiplied by `1 + U(-s, s)`.
        intensity_shift: then shifted by `U(-s, s)` (units of the input, e.g. [0, 1] after windowing).
        noise_std: gaussian noise std drawn per volume from `U(0, noise_std)`.

    CT intensities are calibrated (HU), and SynthCT-VL's findings (like many real ones) *are* intensity
    levels, so the default views change no gain or offset: with the CT window [-1000, 600] HU a shift of
    0.1 moves every voxel by 160 HU. Measured by `benchmarks/augment_findings.py` (150 valid cases at
    32^3, `benchmarks/results/augment_findings.md`): cardiomegaly's best global intensity feature has AUROC
    0.743 on clean inputs, 0.735 under the default intensity changes (noise only), 0.619 with gain and
    offset 0.02 and 0.533 with our first setting (`LEGACY_AUGMENT`: gain and offset 0.1, noise 0.02).
    """

    crop_scale: tuple[float, float] = (0.7, 1.0)
    flip_prob: float = 0.5
    rotate_deg: float = 10.0
    blur_prob: float = 0.5
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    intensity_scale: float = 0.0
    intensity_shift: float = 0.0
    noise_std: float = 0.01

    def __post_init__(self) -> None:
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(
                f"AugmentConfig.crop_scale must satisfy 0 < lo <= hi <= 1, got {self.crop_scale}"
            )
        if not 0 <= self.flip_prob <= 1:
            raise ValueError(f"AugmentConfig.flip_prob must be in [0, 1], got {self.flip_prob}")
        if not 0 <= self.blur_prob <= 1:
            raise ValueError(f"AugmentConfig.blur_prob must be in [0, 1], got {self.blur_prob}")
        if not 0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ValueError(f"AugmentConfig.blur_sigma must satisfy 0 < lo <= hi, got {self.blur_sigma}")
        if not 0 <= self.rotate_deg <= 180:
            raise ValueError(f"AugmentConfig.rotate_deg must be in [0, 180], got {self.rotate_deg}")


#: Our first GTGM views: no rotation or blur, and intensity changes large enough to move findings
#: (`augment={**LEGACY_AUGMENT}` on the gtgm task restores them).
LEGACY_AUGMENT: dict[str, Any] = {
    "rotate_deg": 0.0,
    "blur_prob": 0.0,
    "intensity_scale": 0.1,
    "intensity_shift": 0.1,
    "noise_std": 0.02,
}


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
    linear = torch.diag_embed(torch.where(flips, -scale, scale))
    if cfg.rotate_deg > 0:
        angles = _uniform(3 * b, -cfg.rotate_deg, cfg.rotate_deg, generator, dev).reshape(b, 3)
        linear = _rotation(angles * (math.pi / 180)) @ linear
    theta[:, :, :3] = linear
    theta[:, :, 3] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    view = (b,) + (1,) * (x.ndim - 1)
    if cfg.blur_prob > 0:
        sigma = _uniform(b, *cfg.blur_sigma, generator, dev)
        sigma = sigma * (_uniform(b, 0.0, 1.0, generator, dev) < cfg.blur_prob)
        out = gaussian_blur(out, sigma, cfg.blur_sigma[1])
    gain = 1 + _uniform(b, -cfg.intensity_scale, cfg.intensity_scale, generator, dev).reshape(view)
    offset = _uniform(b, -cfg.intensity_shift, cfg.intensity_shift, generator, dev).reshape(view)
    out = out * gain + offset
    if cfg.noise_std > 0:
        sigma = _uniform(b, 0.0, cfg.noise_std, generator, dev).reshape(view)
        gen_device = generator.device if generator is not None else dev
        noise = torch.randn(out.shape, generator=generator, device=gen_device).to(dev)
        out = out + sigma * noise
    return out.to(x.dtype)


def _rotation(angles: torch.Tensor) -> torch.Tensor:
    """Rotation matrices `[B, 3, 3]` from angles `[B, 3]` (radians) about the three axes, composed."""
    c, s = angles.cos(), angles.sin()
    one, zero = torch.ones_like(c[:, 0]), torch.zeros_like(c[:, 0])

    def mat(rows: list[list[torch.Tensor]]) -> torch.Tensor:
        return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)

    rx = mat([[one, zero, zero], [zero, c[:, 0], -s[:, 0]], [zero, s[:, 0], c[:, 0]]])
    ry = mat([[c[:, 1], zero, s[:, 1]], [zero, one, zero], [-s[:, 1], zero, c[:, 1]]])
    rz = mat([[c[:, 2], -s[:, 2], zero], [s[:, 2], c[:, 2], zero], [zero, zero, one]])
    return rz @ ry @ rx


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, max_sigma: float) -> torch.Tensor:
    """Separable gaussian blur of each volume of `x` `[B, C, X, Y, Z]` with its own std `sigma` `[B]` in
    voxels (0 = unchanged); edges are replicated. The kernel radius is fixed by `max_sigma` (no device
    sync)."""
    r = max(1, math.ceil(3 * max_sigma))
    b, c = x.shape[:2]
    t = torch.arange(-r, r + 1, device=x.device, dtype=torch.float32)
    s = sigma.to(x.device, torch.float32).clamp_min(1e-3)[:, None]
    k = torch.exp(-0.5 * (t[None] / s) ** 2)
    k = k / k.sum(dim=1, keepdim=True)  # sigma 1e-3: a delta (exp underflows to 0 off-centre)
    k = k.repeat_interleave(c, dim=0)  # one kernel per (volume, channel)
    y = x.reshape(1, b * c, *x.shape[2:]).float()
    for axis in range(3):
        pad = [0] * 6
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = r  # F.pad lists the last axis first
        shape = [b * c, 1, 1, 1, 1]
        shape[2 + axis] = 2 * r + 1
        y = F.conv3d(F.pad(y, pad, mode="replicate"), k.reshape(shape), groups=b * c)
    return y.reshape(x.shape).to(x.dtype)
