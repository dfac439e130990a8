"""Dataset layouts returning the dict samples of docs/contracts.md, and :func:`open_dataset`.

Samples are raw (RAS, HU for CT) unless a ``transform`` such as a
:class:`medvl3d.data.preprocess.PreprocessSpec` is given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medvl3d.data.datasets.base import CaseRecord, VolumeDataset, read_label
from medvl3d.data.datasets.ctrate import CTRateDataset, volume_roots
from medvl3d.data.datasets.jsonl import JsonlDataset
from medvl3d.data.datasets.kits import KiTSDataset
from medvl3d.data.datasets.msd import MSDDataset

__all__ = [
    "CTRateDataset",
    "CaseRecord",
    "JsonlDataset",
    "KiTSDataset",
    "MSDDataset",
    "VolumeDataset",
    "detect_layout",
    "open_dataset",
    "open_split",
    "read_label",
]

_CTRATE_SPLITS = ("train", "valid", "validation", "test")


def _ctrate_split(path: Path) -> str | None:
    for split in _CTRATE_SPLITS:
        for folder, _ in volume_roots(path, split):
            if any(p.is_dir() and p.name.startswith(f"{split}_") for p in folder.iterdir()):
                return split
    return None


def detect_layout(path: str | Path) -> str:
    """Name the layout of ``path``: "msd", "jsonl", "kits", "ctrate" or "cache".

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: no known layout matches.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if path.is_file():
        if path.name.endswith(".jsonl"):
            return "jsonl"
        if path.suffix == ".json":
            return "msd"
    else:
        if (path / "spec.json").is_file():
            return "cache"
        if (path / "dataset.json").is_file():
            return "msd"
        if any((case / "imaging.nii.gz").is_file() for case in path.glob("case_*")):
            return "kits"
        if _ctrate_split(path) is not None:
            return "ctrate"
    raise ValueError(
        f"{path}: unknown dataset layout; expected an MSD folder (dataset.json) or *.json, "
        "a *.jsonl manifest, a KiTS23 folder (case_*/imaging.nii.gz), a CT-RATE root "
        "({split}/ or {split}_fixed/ folders of {split}_<P>/...) or a preprocessed cache (spec.json)"
    )


def open_dataset(path: str | Path, **kwargs: Any) -> VolumeDataset:
    """Open any supported layout (see :func:`detect_layout`); ``kwargs`` go to the dataset class.

    ``split`` defaults to "train" (CT-RATE: the first split found; JSONL: every line).
    """
    path = Path(path)
    layout = detect_layout(path)
    if layout == "msd":
        return MSDDataset(path, **kwargs)
    if layout == "jsonl":
        return JsonlDataset(path, **kwargs)
    if layout == "kits":
        kwargs.pop("split", None)
        return KiTSDataset(path, **kwargs)
    if layout == "cache":
        from medvl3d.data.cache import CachedDataset

        kwargs.pop("split", None)
        return CachedDataset(path, **kwargs)
    split = kwargs.pop("split", None) or _ctrate_split(path)
    return CTRateDataset(path, split, **kwargs)


def open_split(root: str | Path, split: str, format: str = "auto") -> VolumeDataset:
    """The raw dataset of one split.

    ``format="auto"``: a folder holding ``manifest_<split>.jsonl`` (SynthCT-VL writes them beside its
    CT-RATE and MSD layouts) is read through that manifest; anything else goes to
    ``medvl3d.data.datasets.open_dataset``, whose detected layout must equal ``format`` when one is given.
    """
    root = Path(root)
    manifest = root / f"manifest_{split}.jsonl"
    if format in ("auto", "jsonl") and root.is_dir() and manifest.is_file():
        return JsonlDataset(manifest)
    if format != "auto":
        found = detect_layout(root)
        if found != format:
            raise ValueError(f"{root}: data.format is {format!r} but the folder holds a {found!r} layout")
    return open_dataset(root, split=split)
