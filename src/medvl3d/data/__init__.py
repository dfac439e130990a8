"""medvl3d.data: volume I/O, preprocessing, dataset layouts and the preprocessed cache.

The main names are importable from here; they load lazily so that ``import medvl3d.data.synth`` does not
pay for torch and MONAI.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Volume": "medvl3d.data.io",
    "read_volume": "medvl3d.data.io",
    "write_volume": "medvl3d.data.io",
    "write_like": "medvl3d.data.io",
    "volume_info": "medvl3d.data.io",
    "PreprocessSpec": "medvl3d.data.preprocess",
    "IntensitySpec": "medvl3d.data.preprocess",
    "preprocess_volume": "medvl3d.data.preprocess",
    "preprocess_sample": "medvl3d.data.preprocess",
    "resample_to_grid": "medvl3d.data.preprocess",
    "open_dataset": "medvl3d.data.datasets",
    "CTRateDataset": "medvl3d.data.datasets",
    "MSDDataset": "medvl3d.data.datasets",
    "KiTSDataset": "medvl3d.data.datasets",
    "JsonlDataset": "medvl3d.data.datasets",
    "CachedDataset": "medvl3d.data.cache",
    "preprocess_dataset": "medvl3d.data.cache",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'medvl3d.data' has no attribute {name!r}")
