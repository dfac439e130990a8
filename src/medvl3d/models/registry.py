"""Model registry: `@register_model` builders, `create_model(name, **overrides)` and `list_models()`.

A builder returns the `VLConfig` of a named model; `create_model` applies the overrides to that config
(type-checked; nested sub-configs accept dicts, e.g. `vision={"depth": 4}`) and builds the `VLModel`.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any

from medvl3d.models.clip import VLModel
from medvl3d.models.config import TextTowerConfig, VisionConfig, VLConfig, replace_config

_MODELS: dict[str, Callable[[], VLConfig]] = {}


def register_model(fn: Callable[[], VLConfig]) -> Callable[[], VLConfig]:
    """Register a builder under its function name; it returns the model's default `VLConfig`."""
    if fn.__name__ in _MODELS:
        raise ValueError(f"model {fn.__name__!r} is already registered")
    _MODELS[fn.__name__] = fn
    return fn


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted registered model names, optionally filtered by a shell-style pattern (`"test_*"`)."""
    names = sorted(_MODELS)
    return names if pattern is None else fnmatch.filter(names, pattern)


def model_config(name: str, **overrides: Any) -> VLConfig:
    """The config `create_model(name, **overrides)` would build; unknown override -> `TypeError`."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(list_models())}")
    return replace_config(_MODELS[name](), overrides, f"create_model({name!r})", TypeError)


def create_model(name: str, **overrides: Any) -> VLModel:
    """Build registered model `name` with config overrides (`bank_size=2048`, `vision={"depth": 4}`)."""
    return VLModel(model_config(name, **overrides))


# ---------------------------------------------------------------------------------------------------
# Registered models. Sizes are (X, Y, Z); chest CT crops are wider in-plane than they are deep.


@register_model
def test_vit_clip() -> VLConfig:
    """Tiny ViT for unit tests: 32^3, patch 8 (64 tokens), width 32, depth 2."""
    vision = VisionConfig(arch="vit", img_size=(32, 32, 32), patch_size=(8, 8, 8), width=32, depth=2, heads=2)
    return VLConfig(vision=vision, text=TextTowerConfig(name="test-tiny"), embed_dim=32)


def _tiny_resenc() -> VisionConfig:
    """32^3 residual CNN, stride-2 stem, widths 16/32/64, batch norm: the vision tower of the two below."""
    return VisionConfig(
        arch="resenc", img_size=(32, 32, 32), width=16, stage_blocks=(1, 1, 1), norm="batch", stem_stride=2
    )


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
    vision = VisionConfig(
        arch="vit", img_size=(64, 64, 32), patch_size=(8, 8, 8), width=96, depth=4, heads=3, pool="mean"
    )
    return VLConfig(vision=vision, text=TextTowerConfig(name="all-MiniLM-L6-v2"), embed_dim=128)


def _gpu_vit(img_size: tuple[int, int, int], patch: tuple[int, int, int], width: int, heads: int) -> VLConfig:
    """A depth-12 ViT with MiniLM text (top 2 layers trained) and a 512-d joint space."""
    vision = VisionConfig(arch="vit", img_size=img_size, patch_size=patch, width=width, depth=12, heads=heads)
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


@register_model
def resenc3d_clip() -> VLConfig:
    """GPU size: 160x160x96 input, 6-stage residual encoder (nnU-Net ResEnc-M blocks), widths 32..320."""
    vision = VisionConfig(
        arch="resenc", img_size=(160, 160, 96), width=32, stage_blocks=(1, 3, 4, 6, 6, 6), max_width=320
    )
    text = TextTowerConfig(name="all-MiniLM-L6-v2", trainable_layers=2)
    return VLConfig(vision=vision, text=text, embed_dim=512)


@register_model
def vit3d_small_brgsa() -> VLConfig:
    """`vit3d_small_clip` with the BrgSA knowledge bank of K = 2048 entries (the paper's size)."""
    return replace_config(vit3d_small_clip(), {"bank_size": 2048}, "vit3d_small_brgsa")
