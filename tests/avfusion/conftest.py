"""Artery/vein test fixtures: a tiny lung-crop SynthCT-VL set and a tiny vision-language checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medvl3d.data.synth.generator import LUNG_CENTRE

#: 32^3 lung crops at 6-7 mm: vessel trees are blobs at this scale, but every code path is the real one.
LUNG_GRID = {"size": (32, 32, 32), "spacing": (6.0, 7.0, 7.0), "centre": LUNG_CENTRE}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def lung_data(tmp_path_factory) -> Path:
    """4 train + 2 valid SynthCT-VL lung crops (seconds)."""
    from medvl3d.data.synth import generate

    root = tmp_path_factory.mktemp("synth_lungs")
    generate(root, n_train=4, n_test=2, seed=0, workers=1, progress=False, **LUNG_GRID)
    return root


@pytest.fixture(scope="session")
def vl_checkpoint(tmp_path_factory) -> Path:
    """An untrained `test_resenc_clip` vision-language checkpoint (its image tower is what avfusion takes)."""
    from medvl3d.data.preprocess import PreprocessSpec
    from medvl3d.models import create_model
    from medvl3d.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = create_model("test_resenc_clip")
    info = {
        "model": {"name": "test_resenc_clip", "family": "vl", "config": model.config.to_dict()},
        "preprocess": PreprocessSpec(spacing=None, intensity={"ct_window": [-1000.0, 600.0]}).to_dict(),
    }
    return save_checkpoint(tmp_path_factory.mktemp("vl") / "checkpoints", 1, model, info)
