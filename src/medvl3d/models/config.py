"""Typed model configs, one per model family and one per architecture, with checked (de)serialisation.

Configs are plain data: they are written beside checkpoints as JSON (`to_dict()`) and read back with
`model_config_from_dict`, which rejects unknown keys and wrongly typed values so a checkpoint can never
be loaded into a silently different architecture. Each vision architecture has its own config (`ViTConfig`,
`ResEncConfig`), so a field the architecture does not use is an error, not silently ignored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from medvl3d.typed import build_dataclass, replace_config, to_plain

VISION_ARCHS = ("vit", "resenc")
#: Knowledge-bank options of `VLConfig` (see `medvl3d.models.knowledge_bank` and `VLModel.score`).
BANK_READS = ("softmax_dot", "cosine_tau")
BANK_INITS = ("orthogonal", "normal")
BANK_SCORES = ("image_recon", "both_recon", "plain")
#: What a vision-language config written before these options existed used (`models.checkpoint`).
LEGACY_BANK_OPTIONS = {"bank_read": "cosine_tau", "bank_init": "normal", "bank_score": "both_recon"}


def _check_size(img_size: tuple[int, ...], where: str) -> None:
    if len(img_size) != 3 or min(img_size) < 1:
        raise ValueError(f"{where}.img_size needs 3 positive values (X, Y, Z), got {img_size}")


@dataclass
class ViTConfig:
    """A 3D Vision Transformer image tower (`VisionTransformer3D`).

    Attributes:
        arch: always "vit" (the tag that tells the two vision configs apart in YAML and JSON).
        img_size: configured input size (X, Y, Z); the position embedding interpolates to other sizes.
        in_chans: input channels.
        width: embedding width.
        depth: number of transformer blocks.
        patch_size: patch size (X, Y, Z).
        heads: attention heads.
        mlp_ratio: MLP hidden width / width.
        pool: "cls" (class token) or "mean" (mean of patch tokens).
        grad_checkpointing: recompute blocks in backward to save activation memory.
    """

    arch: Literal["vit"] = "vit"
    img_size: tuple[int, int, int] = (32, 32, 32)
    in_chans: int = 1
    width: int = 32
    depth: int = 2
    patch_size: tuple[int, int, int] = (8, 8, 8)
    heads: int = 2
    mlp_ratio: float = 4.0
    pool: str = "cls"
    grad_checkpointing: bool = False

    def __post_init__(self) -> None:
        _check_size(self.img_size, "ViTConfig")
        if len(self.patch_size) != 3:
            raise ValueError(f"ViTConfig.patch_size needs 3 values (X, Y, Z), got {self.patch_size}")
        if any(p <= 0 or s % p for s, p in zip(self.img_size, self.patch_size)):
            raise ValueError(
                f"ViTConfig.img_size {self.img_size} is not divisible by patch_size {self.patch_size}"
            )
        if self.width % self.heads:
            raise ValueError(f"ViTConfig.width {self.width} is not divisible by heads {self.heads}")
        if self.pool not in ("cls", "mean"):
            raise ValueError(f"ViTConfig.pool must be 'cls' or 'mean', got {self.pool!r}")


@dataclass
class ResEncConfig:
    """A residual 3D CNN image tower (`ResidualEncoder3D`, nnU-Net ResEnc style).

    Attributes:
        arch: always "resenc".
        img_size: the input size it was designed for (X, Y, Z); the network itself takes any size.
        in_chans: input channels.
        width: width of the first stage (doubled per stage up to `max_width`).
        stage_blocks: residual blocks per stage; its length is the number of stages.
        max_width: width cap.
        norm: "batch", "instance" or "group". Per-sample norms (instance, group) remove each volume's
            overall intensity level, which is what many findings are made of (a larger heart, more
            fluid, darker lungs); "batch" keeps it. Supervised on SynthCT-VL at 32^3
            (`benchmarks/supervised_ceiling.py`, 600/150 cases): held-out macro AUROC 0.586 with
            "batch", 0.567 with "instance"; emphysema (darker lungs) 0.76 vs 0.52.
        stem_stride: stride of the stem convolution (2 cuts the first stage's cost 8-fold).
        grad_checkpointing: recompute stages in backward to save activation memory.
    """

    arch: Literal["resenc"] = "resenc"
    img_size: tuple[int, int, int] = (32, 32, 32)
    in_chans: int = 1
    width: int = 32
    stage_blocks: tuple[int, ...] = (1, 1, 1)
    max_width: int = 320
    norm: str = "instance"
    stem_stride: int = 1
    grad_checkpointing: bool = False

    def __post_init__(self) -> None:
        _check_size(self.img_size, "ResEncConfig")
        if self.norm not in ("batch", "instance", "group"):
            raise ValueError(f"ResEncConfig.norm must be 'batch', 'instance' or 'group', got {self.norm!r}")
        _check_batch_norm_checkpointing(self.norm, self.grad_checkpointing)
        if self.stem_stride not in (1, 2):
            raise ValueError(f"ResEncConfig.stem_stride must be 1 or 2, got {self.stem_stride}")
        if not self.stage_blocks or min(self.stage_blocks) < 1:
            raise ValueError(f"ResEncConfig.stage_blocks needs >= 1 block per stage, got {self.stage_blocks}")


#: An image tower config; the `arch` field tells which (a tagged union in YAML and JSON).
VisionConfig = ViTConfig | ResEncConfig

_VISION_CLASSES: dict[str, type] = {"vit": ViTConfig, "resenc": ResEncConfig}


def vision_config(arch: str = "vit", **fields: Any) -> ViTConfig | ResEncConfig:
    """The vision config of `arch` with `fields`; a field of the other architecture is a `TypeError`."""
    if arch not in _VISION_CLASSES:
        raise ValueError(f"vision arch must be one of {VISION_ARCHS}, got {arch!r}")
    return replace_config(_VISION_CLASSES[arch](), fields, f"vision config (arch={arch!r})", TypeError)


def _check_batch_norm_checkpointing(norm: str, grad_checkpointing: bool) -> None:
    """Batch norm under gradient checkpointing updates its running statistics twice per step (the
    recomputation runs the forward again), silently changing the statistics used at evaluation."""
    if norm == "batch" and grad_checkpointing:
        raise ValueError(
            "ResEncConfig: grad_checkpointing with norm='batch' updates the batch-norm running "
            "statistics twice per step; use norm='instance' or 'group', or turn checkpointing off"
        )


@dataclass
class TextTowerConfig:
    """Text tower: an encoder from `medvl3d.text.encoders.build_text_encoder` plus a projection.

    Attributes:
        name: encoder name or local path ("test-tiny" for unit tests, "all-MiniLM-L6-v2" by default).
        pooling: token pooling of the encoder ("mean" or "cls").
        trainable_layers: how many top encoder layers are trained (0 = frozen encoder).
        max_length: token limit per text.
        proj: projection to the joint space, "linear" or "mlp".
    """

    name: str = "test-tiny"
    pooling: str = "mean"
    trainable_layers: int = 0
    max_length: int = 128
    proj: str = "linear"

    def __post_init__(self) -> None:
        if self.proj not in ("linear", "mlp"):
            raise ValueError(f"TextTowerConfig.proj must be 'linear' or 'mlp', got {self.proj!r}")


@dataclass
class VLConfig:
    """A vision-language model (family "vl").

    Attributes:
        vision: image tower config (`ViTConfig` or `ResEncConfig`).
        text: text tower config.
        embed_dim: joint embedding size.
        vision_proj: image projection, "linear" or "mlp".
        bank_size: entries of the BrgSA knowledge bank (0 = no bank).
        bank_read: how the bank is read (`medvl3d.models.knowledge_bank`): "softmax_dot" (the BrgSA
            authors' code) or "cosine_tau" (softmax of the cosine / `bank_temperature`, our first version).
        bank_init: initialisation of the entries: "orthogonal" (the authors') or "normal" (unit-norm
            gaussian, our first version).
        bank_temperature: softmax temperature of the "cosine_tau" read.
        bank_score: zero-shot similarity of a model with a bank (`VLModel.score`): "image_recon" averages
            cos(v, t) with cos(v_rec, t) (the authors'), "both_recon" with cos(v_rec, t_rec) (our first
            version), "plain" is cos(v, t) alone.
        init_logit_scale: initial log of the contrastive logit scale (log(1/0.07) as in CLIP).
        init_logit_bias: initial SigLIP logit bias; None = the model has no bias (CLIP-style losses).
    """

    family: ClassVar[str] = "vl"

    vision: VisionConfig = field(default_factory=ViTConfig)
    text: TextTowerConfig = field(default_factory=TextTowerConfig)
    embed_dim: int = 32
    vision_proj: str = "linear"
    bank_size: int = 0
    bank_read: str = "softmax_dot"
    bank_init: str = "orthogonal"
    bank_temperature: float = 0.05
    bank_score: str = "image_recon"
    init_logit_scale: float = math.log(1 / 0.07)
    init_logit_bias: float | None = None

    def __post_init__(self) -> None:
        if self.vision_proj not in ("linear", "mlp"):
            raise ValueError(f"VLConfig.vision_proj must be 'linear' or 'mlp', got {self.vision_proj!r}")
        if self.bank_size < 0 or self.bank_temperature <= 0:
            raise ValueError(
                f"VLConfig.bank_size must be >= 0 and bank_temperature > 0, got {self.bank_size}, "
                f"{self.bank_temperature}"
            )
        for name, allowed in (
            ("bank_read", BANK_READS),
            ("bank_init", BANK_INITS),
            ("bank_score", BANK_SCORES),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"VLConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists); `model_config_from_dict` inverts it."""
        return to_plain(self)


@dataclass
class SegConfig:
    """A segmentation network (family "seg"): any registered image encoder and a U-Net decoder over its
    multi-scale features (`forward_intermediates`; a UNETR-style neck for the ViT).

    Attributes:
        encoder: image encoder config (`ViTConfig` or `ResEncConfig`); the same towers VL models use, so
            a pretrained VL checkpoint's encoder loads into it (`create_model(..., encoder_from=PATH)`).
        n_classes: output classes including background (set from the training data's label names).
        decoder_widths: decoder width per level, finest first (None: the skip connections' widths).
        deep_supervision: also return coarser logits in training (`monai.losses.DeepSupervisionLoss`).
        freeze_encoder: keep the encoder's weights and normalisation statistics fixed.
        vit_levels: ViT only: how many token grids (evenly spaced blocks) the UNETR neck takes.
    """

    family: ClassVar[str] = "seg"

    encoder: VisionConfig = field(default_factory=ResEncConfig)
    n_classes: int = 2
    decoder_widths: tuple[int, ...] | None = None
    deep_supervision: bool = False
    freeze_encoder: bool = False
    vit_levels: int = 4

    def __post_init__(self) -> None:
        if self.n_classes < 2:
            raise ValueError(f"SegConfig.n_classes must be >= 2 (background + a class), got {self.n_classes}")
        if self.vit_levels < 1:
            raise ValueError(f"SegConfig.vit_levels must be >= 1, got {self.vit_levels}")

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)


@dataclass
class MonaiUNetConfig:
    """MONAI's residual `UNet` (Kerfoot et al.), the usual from-scratch baseline."""

    net: Literal["unet"] = "unet"
    channels: tuple[int, ...] = (16, 32, 64, 128)
    strides: tuple[int, ...] = (2, 2, 2)
    num_res_units: int = 2
    norm: str = "instance"

    def __post_init__(self) -> None:
        if len(self.strides) != len(self.channels) - 1:
            raise ValueError(
                f"MonaiUNetConfig: needs len(strides) == len(channels) - 1, got {self.strides}, "
                f"{self.channels}"
            )


@dataclass
class SwinUNETRConfig:
    """MONAI's `SwinUNETR` (Hatamizadeh et al.); `feature_size` must be divisible by 12; inputs are multiples
    of 32 per axis."""

    net: Literal["swinunetr"] = "swinunetr"
    feature_size: int = 12
    depths: tuple[int, ...] = (2, 2, 2, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    norm: str = "instance"  # "batch" lets 32^3 inputs through (their deepest map is a single voxel)

    def __post_init__(self) -> None:
        if self.feature_size % 12:
            raise ValueError(f"SwinUNETRConfig.feature_size must be divisible by 12, got {self.feature_size}")


@dataclass
class MonaiSegConfig:
    """A reference segmentation network from MONAI (family "monai"), trained and used like "seg" models.

    Attributes:
        net: `MonaiUNetConfig` or `SwinUNETRConfig` (tagged by `net`).
        n_classes: output classes including background.
        in_chans: input channels.
    """

    family: ClassVar[str] = "monai"

    net: MonaiUNetConfig | SwinUNETRConfig = field(default_factory=MonaiUNetConfig)
    n_classes: int = 2
    in_chans: int = 1

    def __post_init__(self) -> None:
        if self.n_classes < 2:
            raise ValueError(f"MonaiSegConfig.n_classes must be >= 2, got {self.n_classes}")

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)


def model_config_from_dict(d: dict[str, Any], cls: type = VLConfig) -> Any:
    """Rebuild a config of class `cls` from its `to_dict()` output; unknown keys or wrong types raise
    `ValueError` naming them."""
    if not isinstance(d, dict):
        raise ValueError(f"model config must be a dict, got {type(d).__name__}")
    return build_dataclass(cls, d, "model config", ValueError)
