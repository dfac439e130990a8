"""Malenia fixtures: hand-made lesion batches (malenia_helpers.py, importable by name), a tiny checkpoint."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from malenia_helpers import CYST, TUMOUR, lesion_batch  # noqa: E402


@pytest.fixture
def batch() -> dict:
    return lesion_batch(0)


@pytest.fixture(scope="session")
def malenia_checkpoint(tmp_path_factory):
    """An untrained `test_malenia` checkpoint at 3 mm with a knowledge table of two types."""
    from medvl3d.data.lesion_knowledge import lesion_table
    from medvl3d.models import create_model
    from medvl3d.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = create_model("test_malenia")
    info = {
        "model": {"name": "test_malenia", "family": "malenia", "config": model.config.to_dict()},
        "preprocess": {"spacing": [3.0, 3.0, 3.0], "intensity": {"ct_window": [-200.0, 300.0]}},
        "modality": "CT",
        "label_names": {"0": "background", "1": "lesion"},
        "inference": {"patch_size": [32, 32, 32], "overlap": 0.0},
        "lesion_types": lesion_table([CYST, TUMOUR]),
    }
    return save_checkpoint(tmp_path_factory.mktemp("malenia") / "checkpoints", 1, model, info)
