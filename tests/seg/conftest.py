"""Segmentation test fixtures: a tiny MSD task with two learnable classes and a model trained on it."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

SHAPE = (24, 24, 20)
AFFINE = np.diag([2.0, 2.0, 3.0, 1.0])
CLASSES = {"0": "background", "1": "ball", "2": "box"}


def blob_case(seed: int, shape=SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like int16 volume with a bright ball (label 1) and a darker box (label 2) at random places."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    c = rng.uniform(6, np.asarray(shape) - 6)
    label[((grid - c) ** 2).sum(-1) < rng.uniform(3.5, 5.0) ** 2] = 1
    lo = rng.integers(1, np.asarray(shape) - 8)
    box = tuple(slice(a, a + int(rng.integers(5, 8))) for a in lo)
    label[box] = np.where(label[box] == 0, 2, label[box])
    hu = np.where(label == 1, 300.0, np.where(label == 2, -300.0, 40.0)) + rng.normal(0, 20, shape)
    return np.round(hu).astype(np.int16), label


def write_task(root: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """An MSD task folder: imagesTr/labelsTr + dataset.json whose test entries are a labelled valid split."""
    training, test = [], []
    for i in range(n_train + n_test):
        img, lab = blob_case(seed * 1000 + i)
        name = f"blob_{i:03d}.nii.gz"
        for folder, arr in (("imagesTr", img), ("labelsTr", lab)):
            (root / folder).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(arr, AFFINE), str(root / folder / name))
        entry = {"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"}
        (training if i < n_train else test).append(entry if i < n_train else {**entry, "split": "valid"})
    doc = {"name": "Blobs", "modality": {"0": "CT"}, "labels": CLASSES, "training": training, "test": test}
    (root / "dataset.json").write_text(json.dumps(doc), encoding="utf-8")
    return root


def seg_config(data: Path, out: Path, steps: int = 40, **train_kw) -> dict:
    """A tiny segmentation experiment (test_resenc_seg, 16^3 patches) as a config dict."""
    return {
        "data": {
            "root": str(data),
            "format": "msd",
            "preprocess": {"spacing": None, "intensity": {"ct_window": [-500.0, 500.0]}},
            "batch_size": 2,
        },
        "model": {"name": "test_resenc_seg"},
        "task": {"name": "segmentation", "params": {"patch_size": [16, 16, 16]}},
        "optim": {"lr": 3e-2, "warmup_steps": 2, "weight_decay": 0.0},
        "train": {"steps": steps, "log_every": 5, "ckpt_every": 0, "progress": False, **train_kw},
        "output": str(out),
    }


@pytest.fixture(scope="session")
def blob_task(tmp_path_factory) -> Path:
    return write_task(tmp_path_factory.mktemp("blobs") / "Task01_Blobs", n_train=8, n_test=3)


@pytest.fixture(scope="session")
def trained_seg(tmp_path_factory, blob_task) -> Path:
    """A `test_resenc_seg` model trained for 40 steps on the blob task (seconds on a CPU)."""
    import torch

    from medvl3d.config import config_from_dict
    from medvl3d.train import train

    torch.set_num_threads(1)
    return train(config_from_dict(seg_config(blob_task, tmp_path_factory.mktemp("seg") / "run")))


@pytest.fixture
def make_task():
    """The :func:`write_task` writer (test modules cannot import conftest under importlib mode)."""
    return write_task


@pytest.fixture
def make_config():
    """The :func:`seg_config` builder."""
    return seg_config
