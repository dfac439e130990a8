"""Model registry: model families, `@register_model` builders, `create_model(name, **overrides)`,
`list_models()` and `model_from_config(family, config)`.

A *family* is a kind of model with its own config class and `nn.Module`: "vl" (vision-language:
CLIP/SigLIP/BrgSA/GTGM), "seg" (an image encoder + U-Net decoder) and "monai" (MONAI's reference
segmentation networks); Malenia and the artery/vein fusion model add theirs with `register_family`.
A builder returns the default config of a named model; its class says the family. `create_model`
applies the overrides to that config (type-checked; nested sub-configs accept dicts, e.g.
`vision={"depth": 4}`) and builds the family's module. `config.json` records the family, so a checkpoint
of any family is rebuilt by `model_from_config`.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from medvl3d.models.config import (
    MonaiSegConfig,
    MonaiUNetConfig,
    ResEncConfig,
    SegConfig,
    SwinUNETRConfig,
    TextTowerConfig,
    ViTConfig,
    VLConfig,
    model_config_from_dict,
    replace_config,
)


@dataclass(frozen=True)
class Family:
    """A model family: its config class, how a module is built from a config, and what it outputs.

    Attributes:
        name: the family name recorded in `config.json`.
        config_cls: the config dataclass (its `family` class attribute equals `name`).
        build: `config -> nn.Module` (untrained).
        outputs: "embeddings" (vision-language) or "logits" (per-voxel class scores): what the Predictor
            and the evaluation commands can do with the model.
        takes_encoder: the family's models have an `encoder` that `encoder_from=PATH` can initialise.
    """

    name: str
    config_cls: type
    build: Callable[[Any], nn.Module]
    outputs: str
    takes_encoder: bool = False


_FAMILIES: dict[str, Family] = {}
_MODELS: dict[str, Callable[[], Any]] = {}


def register_family(family: Family) -> Family:
    """Add a model family (e.g. Malenia's); its `config_cls.family` must equal its name."""
    if family.name in _FAMILIES:
        raise ValueError(f"model family {family.name!r} is already registered")
    if getattr(family.config_cls, "family", None) != family.name:
        raise ValueError(f"{family.config_cls.__name__}.family must be {family.name!r}")
    _FAMILIES[family.name] = family
    return family


def get_family(name: str) -> Family:
    """The registered family `name`; an unknown one is a ValueError listing the known ones."""
    if name not in _FAMILIES:
        raise ValueError(f"unknown model family {name!r}; registered: {', '.join(sorted(_FAMILIES))}")
    return _FAMILIES[name]


def family_of(config: Any) -> Family:
    """The family a config object belongs to."""
    return get_family(getattr(type(config), "family", type(config).__name__))


def register_model(fn: Callable[[], Any]) -> Callable[[], Any]:
    """Register a builder under its function name; it returns the model's default config."""
    if fn.__name__ in _MODELS:
        raise ValueError(f"model {fn.__name__!r} is already registered")
    _MODELS[fn.__name__] = fn
    return fn


def list_models(pattern: str | None = None, family: str | None = None) -> list[str]:
    """Sorted registered model names, optionally filtered by a shell-style pattern and a family."""
    names = sorted(_MODELS)
    if pattern is not None:
        names = fnmatch.filter(names, pattern)
    if family is not None:
        get_family(family)
        names = [n for n in names if family_of(_MODELS[n]()).name == family]
    return names


def check_model_name(name: str) -> None:
    """ValueError naming the registered models unless `name` is one of them."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(list_models())}")


def model_config(name: str, **overrides: Any) -> Any:
    """The config `create_model(name, **overrides)` would build; unknown override -> `TypeError`."""
    check_model_name(name)
    return replace_config(_MODELS[name](), overrides, f"create_model({name!r})", TypeError)


def model_from_config(family: str, config: dict | Any) -> nn.Module:
    """An untrained module of `family` from its config (a config object or its `to_dict()` output)."""
    fam = get_family(family)
    cfg = config if isinstance(config, fam.config_cls) else model_config_from_dict(config, fam.config_cls)
    return fam.build(cfg)


def create_model(
    name: str,
    *,
    encoder_from: str | os.PathLike | None = None,
    **overrides: Any,
) -> nn.Module:
    """Build registered model `name` with config overrides (`bank_size=2048`, `vision={"depth": 4}`).

    Args:
        name: a registered model (`list_models()`).
        encoder_from: a vision-language checkpoint whose image encoder (architecture and weights)
            replaces the model's encoder; only for families with an encoder (e.g. "seg").
        overrides: config fields to change; an unknown one is a `TypeError` naming it.
    """
    cfg = model_config(name, **overrides)
    fam = family_of(cfg)
    if encoder_from is None:
        return fam.build(cfg)
    if not fam.takes_encoder:
        raise TypeError(f"create_model({name!r}): family {fam.name!r} models take no encoder_from")
    if "encoder" in overrides:
        raise TypeError(f"create_model({name!r}): pass encoder_from or encoder overrides, not both")
    from medvl3d.models.checkpoint import load_encoder

    encoder_cfg, state, source = load_encoder(encoder_from)
    model = fam.build(replace_config(cfg, {"encoder": encoder_cfg}, f"create_model({name!r})", TypeError))
    model.load_encoder_state(state, source)
    return model


def _build_vl(cfg: VLConfig) -> nn.Module:
    from medvl3d.models.clip import VLModel

    return VLModel(cfg)


def _build_seg(cfg: SegConfig) -> nn.Module:
    from medvl3d.models.segmentation import SegmentationModel

    return SegmentationModel(cfg)


def _build_monai(cfg: MonaiSegConfig) -> nn.Module:
    from medvl3d.models.segmentation import MonaiSegmentationModel

    return MonaiSegmentationModel(cfg)


register_family(Family("vl", VLConfig, _build_vl, outputs="embeddings"))
register_family(Family("seg", SegConfig, _build_seg, outputs="logits", takes_encoder=True))
register_family(Family("monai", MonaiSegConfig, _build_monai, outputs="logits"))


# ---------------------------------------------------------------------------------------------------
# Vision-language models. Sizes are (X, Y, Z); chest CT crops are wider in-plane than they are deep.


@register_model
def test_vit_clip() -> VLConfig:
    """Tiny ViT for unit tests: 32^3, patch 8 (64 tokens), width 32, depth 2."""
    vision = ViTConfig(img_size=(32, 32, 32), patch_size=(8, 8, 8), width=32, depth=2, heads=2)
    return VLConfig(vision=vision, text=TextTowerConfig(name="test-tiny"), embed_dim=32)


def _tiny_resenc() -> ResEncConfig:
    """32^3 residual CNN, stride-2 stem, widths 16/32/64, batch norm: the vision tower of the CPU models."""
    return ResEncConfig(img_size=(32, 32, 32), width=16, stage_blocks=(1, 1, 1), norm="batch", stem_stride=2)


@register_model
def test_resenc_clip() -> VLConfig:
    """Tiny residual CNN for unit tests: 32^3, stride-2 stem, widths 16/32/64, batch norm."""
    return VLConfig(vision=_tiny_resenc(), text=TextTowerConfig(name="test-tiny"), embed_dim=32)


@register_model
def cpu_resenc_clip() -> VLConfig:
    """CPU size for the SynthCT-VL configs: the vision tower of `test_resenc_clip` (batch norm keeps the
    intensity level that findings are made of) with frozen MiniLM text and a 64-d joint space."""
    return VLConfig(vision=_tiny_resenc(), text=TextTowerConfig(name="all-MiniLM-L6-v2"), embed_dim=64)


@register_model
def cpu_vit_clip() -> VLConfig:
    """CPU demo size: 64x64x32 input, patch 8 (256 tokens), width 96, depth 4; frozen MiniLM text."""
    vision = ViTConfig(img_size=(64, 64, 32), patch_size=(8, 8, 8), width=96, depth=4, heads=3, pool="mean")
    return VLConfig(vision=vision, text=TextTowerConfig(name="all-MiniLM-L6-v2"), embed_dim=128)


def _gpu_vit(img_size: tuple[int, int, int], patch: tuple[int, int, int], width: int, heads: int) -> VLConfig:
    """A depth-12 ViT with MiniLM text (top 2 layers trained) and a 512-d joint space."""
    vision = ViTConfig(img_size=img_size, patch_size=patch, width=width, depth=12, heads=heads)
    text = TextTowerConfig(name="all-MiniLM-L6-v2", trainable_layers=2)
    return VLConfig(vision=vision, text=text, embed_dim=512)


@register_model
def vit3d_small_clip() -> VLConfig:
    """GPU size: 160x160x96 input, patch 16 (600 tokens), ViT-S (width 384, depth 12, 6 heads)."""
    return _gpu_vit((160, 160, 96), (16, 16, 16), 384, 6)


@register_model
def vit3d_small_aniso_clip() -> VLConfig:
    """ViT-S for thick-slice volumes: 160x160x48 input with patch (16, 16, 8) (600 tokens)."""
    return _gpu_vit((160, 160, 48), (16, 16, 8), 384, 6)


@register_model
def vit3d_base_clip() -> VLConfig:
    """GPU size: 160x160x96 input, patch 16, ViT-B (width 768, depth 12, 12 heads)."""
    return _gpu_vit((160, 160, 96), (16, 16, 16), 768, 12)


def _resenc_m(img_size: tuple[int, int, int] = (160, 160, 96)) -> ResEncConfig:
    """6-stage residual encoder (nnU-Net ResEnc-M blocks), widths 32..320."""
    return ResEncConfig(img_size=img_size, width=32, stage_blocks=(1, 3, 4, 6, 6, 6), max_width=320)


@register_model
def resenc3d_clip() -> VLConfig:
    """GPU size: 160x160x96 input, 6-stage residual encoder (nnU-Net ResEnc-M blocks), widths 32..320."""
    text = TextTowerConfig(name="all-MiniLM-L6-v2", trainable_layers=2)
    return VLConfig(vision=_resenc_m(), text=text, embed_dim=512)


@register_model
def vit3d_small_brgsa() -> VLConfig:
    """`vit3d_small_clip` with the BrgSA knowledge bank of K = 2048 entries (the paper's size)."""
    return replace_config(vit3d_small_clip(), {"bank_size": 2048}, "vit3d_small_brgsa")


# ---------------------------------------------------------------------------------------------------
# Segmentation models ("seg": our encoders + U-Net decoder; "monai": MONAI's reference networks).
# `n_classes` is set from the training data's label names by the segmentation task.


@register_model
def test_resenc_seg() -> SegConfig:
    """Tiny segmentation model for unit tests: 3-stage instance-norm CNN, widths 16/32/64 + U-Net decoder
    (width 8 learned a small bright class too slowly for a test)."""
    return SegConfig(encoder=ResEncConfig(width=16, stage_blocks=(1, 1, 1)))


@register_model
def test_vit_unetr() -> SegConfig:
    """Tiny ViT (the `test_vit_clip` tower) with a UNETR neck and U-Net decoder, for unit tests."""
    return SegConfig(encoder=test_vit_clip().vision, vit_levels=2)


@register_model
def cpu_resenc_seg() -> SegConfig:
    """CPU size: the `cpu_resenc_clip` image tower (so its pretrained weights transfer) + U-Net decoder."""
    return SegConfig(encoder=_tiny_resenc())


@register_model
def cpu_resenc_seg_wide() -> SegConfig:
    """CPU organ segmentation at ~3 mm: 4-stage instance-norm residual CNN, widths 16..128, stride-1 stem."""
    encoder = ResEncConfig(img_size=(96, 96, 64), width=16, stage_blocks=(1, 2, 2, 2), max_width=128)
    return SegConfig(encoder=encoder)


@register_model
def resenc3d_seg() -> SegConfig:
    """GPU size: the `resenc3d_clip` encoder (nnU-Net ResEnc-M) + U-Net decoder with deep supervision."""
    return SegConfig(encoder=_resenc_m(), deep_supervision=True)


@register_model
def vit3d_small_unetr() -> SegConfig:
    """GPU size: the `vit3d_small_clip` ViT-S with a UNETR neck (4 token grids) + U-Net decoder."""
    return SegConfig(encoder=vit3d_small_clip().vision)


@register_model
def monai_unet() -> MonaiSegConfig:
    """MONAI's residual UNet, channels 16..128, 2 residual units: the baseline users would pick."""
    return MonaiSegConfig(net=MonaiUNetConfig())


@register_model
def monai_swinunetr() -> MonaiSegConfig:
    """MONAI's SwinUNETR, feature size 12 (its smallest): the transformer baseline users would pick."""
    return MonaiSegConfig(net=SwinUNETRConfig())
