"""Typed model configs: `VisionConfig`, `TextTowerConfig` and `VLConfig`, with checked (de)serialisation.

Configs are plain data: they are written beside checkpoints as JSON (`VLConfig.to_dict()`) and read back
with `model_config_from_dict`, which rejects unknown keys and wrongly typed values so a checkpoint can
never be loaded into a silently different architecture.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any

VISION_ARCHS = ("vit", "resenc")


@dataclass
class VisionConfig:
    """Image tower. Fields marked ViT/CNN apply to that `arch` only.

    Attributes:
        arch: "vit" (`VisionTransformer3D`) or "resenc" (`ResidualEncoder3D`).
        img_size: configured input size (X, Y, Z); the ViT interpolates its position embedding to others.
        in_chans: input channels.
        width: ViT embedding width; CNN width of the first stage (doubled per stage up to `max_width`).
        depth: ViT number of transformer blocks.
        patch_size: ViT patch size (X, Y, Z).
        heads: ViT attention heads.
        mlp_ratio: ViT MLP hidden width / width.
        pool: ViT pooling, "cls" (class token) or "mean" (mean of patch tokens).
        stage_blocks: CNN residual blocks per stage; its length is the number of stages.
        max_width: CNN width cap.
        norm: CNN normalisation, "batch", "instance" or "group". Per-sample norms (instance, group)
            remove each volume's overall intensity level, which is what many findings are made of
            (a larger heart, more fluid, darker lungs); "batch" keeps it. Supervised on SynthCT-VL at
            32^3 (`benchmarks/supervised_ceiling.py`, 600/150 cases): held-out macro AUROC 0.586 with
            "batch", 0.567 with "instance"; emphysema (darker lungs) 0.76 vs 0.52.
        stem_stride: CNN stride of the stem convolution (2 cuts the first stage's cost 8-fold).
        grad_checkpointing: recompute blocks in backward to save activation memory.
    """

    arch: str = "vit"
    img_size: tuple[int, int, int] = (32, 32, 32)
    in_chans: int = 1
    width: int = 32
    depth: int = 2
    patch_size: tuple[int, int, int] = (8, 8, 8)
    heads: int = 2
    mlp_ratio: float = 4.0
    pool: str = "cls"
    stage_blocks: tuple[int, ...] = (1, 1, 1)
    max_width: int = 320
    norm: str = "instance"
    stem_stride: int = 1
    grad_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.arch not in VISION_ARCHS:
            raise ValueError(f"VisionConfig.arch must be one of {VISION_ARCHS}, got {self.arch!r}")
        if len(self.img_size) != 3 or len(self.patch_size) != 3:
            raise ValueError(
                f"VisionConfig.img_size and patch_size need 3 values (X, Y, Z), got {self.img_size}, "
                f"{self.patch_size}"
            )
        if self.arch == "vit":
            bad = [(s, p) for s, p in zip(self.img_size, self.patch_size) if p <= 0 or s % p]
            if bad:
                raise ValueError(
                    f"VisionConfig.img_size {self.img_size} is not divisible by patch_size {self.patch_size}"
                )
            if self.width % self.heads:
                raise ValueError(f"VisionConfig.width {self.width} is not divisible by heads {self.heads}")
            if self.pool not in ("cls", "mean"):
                raise ValueError(f"VisionConfig.pool must be 'cls' or 'mean', got {self.pool!r}")
        if self.norm not in ("batch", "instance", "group"):
            raise ValueError(f"VisionConfig.norm must be 'batch', 'instance' or 'group', got {self.norm!r}")
        if self.arch == "resenc":
            _check_batch_norm_checkpointing(self.norm, self.grad_checkpointing)
        if self.stem_stride not in (1, 2):
            raise ValueError(f"VisionConfig.stem_stride must be 1 or 2, got {self.stem_stride}")
        if not self.stage_blocks or min(self.stage_blocks) < 1:
            raise ValueError(f"VisionConfig.stage_blocks needs >= 1 block per stage, got {self.stage_blocks}")


def _check_batch_norm_checkpointing(norm: str, grad_checkpointing: bool) -> None:
    """Batch norm under gradient checkpointing updates its running statistics twice per step (the
    recomputation runs the forward again), silently changing the statistics used at evaluation."""
    if norm == "batch" and grad_checkpointing:
        raise ValueError(
            "VisionConfig: grad_checkpointing with norm='batch' updates the batch-norm running "
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
    """A vision-language model.

    Attributes:
        vision: image tower config.
        text: text tower config.
        embed_dim: joint embedding size.
        vision_proj: image projection, "linear" or "mlp".
        bank_size: entries of the BrgSA knowledge bank (0 = no bank).
        bank_temperature: softmax temperature of the bank attention.
        init_logit_scale: initial log of the contrastive logit scale (log(1/0.07) as in CLIP).
        init_logit_bias: initial SigLIP logit bias; None = the model has no bias (CLIP-style losses).
    """

    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextTowerConfig = field(default_factory=TextTowerConfig)
    embed_dim: int = 32
    vision_proj: str = "linear"
    bank_size: int = 0
    bank_temperature: float = 0.05
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

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists); `model_config_from_dict` inverts it."""
        return _to_plain(dataclasses.asdict(self))


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


def _coerce(value: Any, hint: Any, where: str, exc: type[Exception]) -> Any:
    """Check `value` against a field's type hint, converting lists to tuples and ints to floats."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where, exc)
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise exc(f"{where} expects a dict of {hint.__name__} fields, got {type(value).__name__}")
        return build_dataclass(hint, value, where, exc)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise exc(f"{where} expects a sequence, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], where, exc) for v in value)
        if len(value) != len(args):
            raise exc(f"{where} expects {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, where, exc) for v, a in zip(value, args))
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool) and type(value) is hint:
        return value
    raise exc(f"{where} expects {getattr(hint, '__name__', hint)}, got {value!r}")


def build_dataclass(cls: type, values: dict[str, Any], where: str, exc: type[Exception] = TypeError) -> Any:
    """Config dataclass `cls` from `values`, type-checked; unknown keys raise `exc` naming them."""
    return replace_config(cls(), values, where, exc)


def replace_config(cfg: Any, values: dict[str, Any], where: str, exc: type[Exception] = TypeError) -> Any:
    """A copy of dataclass `cfg` with `values` set; nested dataclass fields accept dicts (merged)."""
    cls = type(cfg)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise exc(f"{where}: unknown field(s) {unknown} for {cls.__name__}; known: {sorted(names)}")
    updates = {}
    for key, value in values.items():
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            updates[key] = replace_config(current, value, f"{where}.{key}", exc)
        else:
            updates[key] = _coerce(value, hints[key], f"{where}.{key}", exc)
    return dataclasses.replace(cfg, **updates)


def model_config_from_dict(d: dict[str, Any]) -> VLConfig:
    """Rebuild a `VLConfig` from `to_dict()` output; unknown keys or wrong types raise `ValueError`."""
    if not isinstance(d, dict):
        raise ValueError(f"model config must be a dict, got {type(d).__name__}")
    return build_dataclass(VLConfig, d, "model config", ValueError)
