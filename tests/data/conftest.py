"""Small on-disk fixtures for the data tests: CT-like volumes and dataset trees."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest


def ct_phantom(shape=(24, 20, 16), seed=0) -> np.ndarray:
    """A CT-like int16 HU volume: air, a soft-tissue body, two lungs, a bone rod, small noise."""
    rng = np.random.default_rng(seed)
    x, y, _ = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    hu = np.full(shape, -1000.0)
    body = x**2 + y**2 < 0.8
    hu[body] = 40
    hu[body & ((x - 0.4) ** 2 + y**2 < 0.08)] = -850
    hu[body & ((x + 0.4) ** 2 + y**2 < 0.08)] = -850
    hu[body & (x**2 + (y + 0.6) ** 2 < 0.02)] = 700
    hu += rng.normal(0, 5, shape)
    return np.round(hu).astype(np.int16)


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 2.0, 1.0]) if affine is None else affine), str(path))
    return path


@pytest.fixture
def msd_task(tmp_path) -> Path:
    """An MSD-style task: 3 training cases (one float label map), one test image, a '._' resource fork."""
    root = tmp_path / "Task99_Tiny"
    entries = []
    for i in range(3):
        img = ct_phantom(seed=i)
        lab = (img > 0).astype(np.float32 if i == 1 else np.uint8)
        save_nifti(root / "imagesTr" / f"tiny_{i:03d}.nii.gz", img)
        save_nifti(root / "labelsTr" / f"tiny_{i:03d}.nii.gz", lab)
        entries.append(
            {"image": f"./imagesTr/tiny_{i:03d}.nii.gz", "label": f"./labelsTr/tiny_{i:03d}.nii.gz"}
        )
    entries[0].update(report="A 2 cm lesion.", labels={"Lung nodule": 1}, lesions={"1": {"type": "cyst"}})
    entries.append({"image": "./imagesTr/._tiny_000.nii.gz", "label": "./labelsTr/._tiny_000.nii.gz"})
    (root / "imagesTr" / "._tiny_000.nii.gz").write_bytes(b"\x00\x05\x16\x07")
    save_nifti(root / "imagesTs" / "tiny_100.nii.gz", ct_phantom(seed=9))
    import json

    (root / "dataset.json").write_text(
        json.dumps(
            {
                "name": "Tiny",
                "modality": {"0": "CT"},
                "labels": {"0": "background", "1": "body"},
                "training": entries,
                "test": ["./imagesTs/tiny_100.nii.gz"],
            }
        )
    )
    return root


@pytest.fixture
def phantom():
    """The :func:`ct_phantom` builder (test modules cannot import conftest under importlib mode)."""
    return ct_phantom


@pytest.fixture
def nifti():
    """The :func:`save_nifti` writer."""
    return save_nifti
