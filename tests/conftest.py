"""Shared fixtures: the real third-party data folder and small temporary trees."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "real"


@pytest.fixture(scope="session")
def real_dir() -> Path:
    """`../shared/data/real/` beside the checkout; tests using it skip when it is absent."""
    if not REAL.is_dir():
        pytest.skip(f"real test data not found at {REAL} (see shared/data/real/README.md)")
    return REAL


# -- SynthCT-VL and tiny models, shared by the calibration, report and docstring tests ----------------------
SYNTH_GRID = {"size": (32, 32, 32), "spacing": (10.0, 11.0, 11.0)}  # the demo's grid: 32^3 at ~1 cm


@pytest.fixture(scope="session")
def synth_small(tmp_path_factory) -> Path:
    """A small SynthCT-VL set (24 train + 24 valid volumes on the demo grid; seconds to generate)."""
    from medvl3d.data.synth import generate

    root = tmp_path_factory.mktemp("synth_small")
    generate(root, n_train=24, n_test=24, seed=0, workers=1, progress=False, **SYNTH_GRID)
    return root


def vl_config(data: Path, out: Path, steps: int = 12) -> dict:
    """CLIP with the tiny `test_resenc_clip` (tiny deterministic text encoder) on a SynthCT-VL root."""
    return {
        "data": {
            "root": str(data),
            "text_source": "report",
            "preprocess": {
                "spacing": None,
                "spatial_size": [32, 32, 32],
                "intensity": {"ct_window": [-1000.0, 600.0]},
            },
            "batch_size": 8,
        },
        "model": {"name": "test_resenc_clip"},
        "task": {"name": "clip"},
        "optim": {"lr": 2e-3, "warmup_steps": 2},
        "train": {"steps": steps, "log_every": 4, "ckpt_every": 0, "progress": False},
        "output": str(out),
    }


@pytest.fixture(scope="session")
def synth_vl(tmp_path_factory, synth_small) -> Path:
    """A vision-language run trained on `synth_small` (uncalibrated; copy it before changing it)."""
    import torch

    from medvl3d.config import config_from_dict
    from medvl3d.train import train

    torch.set_num_threads(1)
    return train(config_from_dict(vl_config(synth_small, tmp_path_factory.mktemp("synth_vl") / "run")))


@pytest.fixture(scope="session")
def synth_vl_calibrated(tmp_path_factory, synth_vl, synth_small) -> Path:
    """`synth_vl` copied and calibrated (isotonic) on the valid split, with an OOD reference."""
    import shutil

    from medvl3d.eval.calibration import store_calibration
    from medvl3d.eval.diagnosis import evaluate_diagnosis

    run = tmp_path_factory.mktemp("synth_vl_cal") / "run"
    shutil.copytree(synth_vl, run)
    report = evaluate_diagnosis(run, synth_small, "valid", bootstrap=0, calibrate="isotonic", progress=False)
    store_calibration(run, report.fitted)
    return run


@pytest.fixture(scope="session")
def synth_seg(tmp_path_factory, synth_small) -> Path:
    """An untrained `test_resenc_seg` checkpoint with SynthCT-VL's organ names (masks for report layout)."""
    import json

    import torch

    from medvl3d.models import create_model
    from medvl3d.models.checkpoint import save_checkpoint

    names = json.loads((synth_small / "dataset.json").read_text(encoding="utf-8"))["labels"]
    torch.manual_seed(0)
    model = create_model("test_resenc_seg", n_classes=len(names))
    info = {
        "model": {"name": "test_resenc_seg", "family": "seg", "config": model.config.to_dict()},
        "preprocess": {"spacing": None, "intensity": {"ct_window": [-1000.0, 600.0]}},
        "modality": "CT",
        "label_names": names,
        "inference": {"patch_size": [32, 32, 32], "overlap": 0.25},
    }
    return save_checkpoint(tmp_path_factory.mktemp("synth_seg") / "checkpoints", 1, model, info)


@pytest.fixture(scope="session")
def bench_script():
    """``bench_script(name)``: the script ``benchmarks/<name>.py`` imported as a module (the benchmarks are
    scripts, not a package)."""
    import importlib.util

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
