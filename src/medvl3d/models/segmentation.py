"""Segmentation networks: `SegmentationModel` (family "seg": a registered image encoder + U-Net decoder)
and `MonaiSegmentationModel` (family "monai": MONAI's UNet / SwinUNETR, the baselines users would pick).

Both map a `[B, C, X, Y, Z]` batch to per-voxel class logits `[B, n_classes, X, Y, Z]` at the input size
(any size the encoder accepts; sliding-window inference feeds fixed patches), so one task, one predictor
and one evaluation serve them all.
"""

from __future__ import annotations

import torch
from torch import nn

from medvl3d.models.clip import build_image_encoder
from medvl3d.models.common import EncoderHost
from medvl3d.models.config import MonaiSegConfig, MonaiUNetConfig, ResEncConfig, SegConfig, ViTConfig
from medvl3d.models.unet_decoder import UNetDecoder, UNETRNeck, unetr_strides
from medvl3d.models.vit3d import evenly_spaced_blocks

__all__ = ["SegmentationModel", "MonaiSegmentationModel", "encoder_pyramid"]


def encoder_pyramid(
    enc: ResEncConfig | ViTConfig, vit_levels: int
) -> tuple[nn.Module | None, list[int] | None, list[int], list[tuple[int, int, int]]]:
    """How a U-Net decoder reads an encoder: `(neck, blocks, channels, strides)`.

    The CNN's stage maps are used directly (no neck, all stages); the ViT's token grids after `vit_levels`
    evenly spaced blocks go through a UNETR neck. `channels` and `strides` describe the resulting feature
    maps, finest first (what `UNetDecoder` takes).
    """
    if isinstance(enc, ResEncConfig):
        widths = [min(enc.width * 2**i, enc.max_width) for i in range(len(enc.stage_blocks))]
        return None, None, widths, [(enc.stem_stride * 2**i,) * 3 for i in range(len(widths))]
    assert isinstance(enc, ViTConfig)
    n = min(vit_levels, enc.depth)
    channels = [max(16, enc.width // 2 ** (n - 1 - i)) for i in range(n)]  # finest first
    neck = UNETRNeck(enc.width, enc.patch_size, n, channels)
    return neck, evenly_spaced_blocks(enc.depth, n), channels, unetr_strides(enc.patch_size, n)


class SegmentationModel(EncoderHost):
    """An image encoder (`ResidualEncoder3D` or `VisionTransformer3D`) and a U-Net decoder over its
    `forward_intermediates`: the CNN's stage maps directly, the ViT's token grids through a UNETR neck.

    The encoder's state-dict keys (`encoder.*`) match a vision-language model's image tower (`visual.*`),
    so `load_encoder_state` transfers any pretrained tower; `freeze_encoder` keeps it fixed (weights and
    batch-norm statistics).
    """

    def __init__(self, config: SegConfig) -> None:
        super().__init__()
        self.config = config
        enc = config.encoder
        self.encoder = build_image_encoder(enc)
        self.neck, self._blocks, channels, strides = encoder_pyramid(enc, config.vit_levels)
        self.decoder = UNetDecoder(
            channels,
            strides,
            config.n_classes,
            in_chans=enc.in_chans,
            widths=config.decoder_widths,
            deep_supervision=config.deep_supervision,
            norm="instance",
        )
        if config.freeze_encoder:
            self.encoder.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Logits `[B, n_classes, X, Y, Z]` (with deep supervision in training: a list, finest first)."""
        feats = self.encoder.forward_intermediates(x, self._blocks)
        if self.neck is not None:
            feats = self.neck(feats)
        return self.decoder(feats, x)


class MonaiSegmentationModel(nn.Module):
    """MONAI's `UNet` or `SwinUNETR` with the interface of `SegmentationModel` (logits at the input size)."""

    def __init__(self, config: MonaiSegConfig) -> None:
        super().__init__()
        self.config = config
        net = config.net
        if isinstance(net, MonaiUNetConfig):
            from monai.networks.nets import UNet

            self.net = UNet(
                spatial_dims=3,
                in_channels=config.in_chans,
                out_channels=config.n_classes,
                channels=net.channels,
                strides=net.strides,
                num_res_units=net.num_res_units,
                norm=net.norm,
            )
        else:
            from monai.networks.nets import SwinUNETR

            self.net = SwinUNETR(
                in_channels=config.in_chans,
                out_channels=config.n_classes,
                feature_size=net.feature_size,
                depths=net.depths,
                num_heads=net.num_heads,
                norm_name=net.norm,
                spatial_dims=3,
            )

    @property
    def divisor(self) -> int:
        """Input sizes must be multiples of this (the networks' total downsampling)."""
        net = self.config.net
        if isinstance(net, MonaiUNetConfig):
            out = 1
            for s in net.strides:
                out *= s
            return out
        return 32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # With instance norm the deepest feature map needs more than one voxel: twice the divisor.
        instance = getattr(self.config.net, "norm", "instance") == "instance"
        least = 2 * self.divisor if instance else self.divisor
        bad = [s for s in x.shape[2:] if s % self.divisor or s < least]
        if bad:
            raise ValueError(
                f"{type(self.net).__name__}: input size {tuple(x.shape[2:])} must be a multiple of "
                f"{self.divisor} and at least {least} per axis; choose a patch size that is"
            )
        return self.net(x)
