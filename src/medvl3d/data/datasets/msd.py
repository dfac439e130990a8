"""Medical Segmentation Decathlon layout: ``dataset.json`` + ``imagesTr/``, ``labelsTr/``, ``imagesTs/``.

Also reads MSD-style jsons written by SynthCT-VL (several per folder, e.g. ``dataset_lesions.json``),
whose ``training`` entries carry extra keys (``report``, ``labels``, ``lesions``, ``split``, ...) that
pass into the samples. A json with ``"label_type": "instance"`` (``dataset_lesions.json``: ids 1..n are
lesion instances) keeps its ids and says so in ``meta["label_type"]``: segmentation reads it as one
foreground class (``semantic_label``) and keeps its lesion-free cases. macOS resource-fork
files (``._*``) shipped in the MSD archives are skipped.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medvl3d.data.datasets.base import CaseRecord, VolumeDataset, record_from_entry


def _modality(info: dict, where: Path) -> str | None:
    mod = info.get("modality")
    if isinstance(mod, dict):
        values = [str(v) for v in mod.values()]
        if len(values) > 1:
            raise ValueError(
                f"{where}: {len(values)}-channel tasks ({values}) are not supported; 3D single-channel only"
            )
        mod = values[0] if values else None
    if mod is None:
        return None
    mod = str(mod).upper()
    return (
        "MR"
        if mod.startswith("MR") or mod in ("T1", "T2", "FLAIR", "ADC")
        else ("CT" if mod == "CT" else None)
    )


class MSDDataset(VolumeDataset):
    """An MSD task folder (or one MSD-style json file).

    Args:
        path: the task folder holding ``dataset.json``, or a ``*.json`` file.
        split: the entries whose own ``split`` key equals it (entries without one count as "train" in the
            ``training`` list and "test" in the ``test`` list); "all" is every ``training`` entry.
        transform: optional callable applied to each sample.
    """

    def __init__(
        self, path: str | Path, split: str = "train", *, transform: Callable[[dict], dict] | None = None
    ) -> None:
        path = Path(path)
        json_path = path / "dataset.json" if path.is_dir() else path
        if not json_path.is_file():
            raise FileNotFoundError(f"{json_path}: MSD dataset.json not found")
        try:
            info = json.loads(json_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{json_path}: invalid JSON: {exc}") from None
        if not isinstance(info, dict):
            raise ValueError(f"{json_path}: expected a JSON object with 'training'/'test' lists")
        self.json_path = json_path
        self.base = json_path.parent
        self.info = info
        self.label_names = {str(k): str(v) for k, v in (info.get("labels") or {}).items()}
        modality = _modality(info, json_path)
        training = info.get("training")
        if training is None:
            training = self._scan_folders()
        if split == "all":
            entries = list(training)
        else:
            # Entries carry their own split (default: "train" in `training`, "test" in `test`).
            test = [e if isinstance(e, dict) else {"image": e} for e in info.get("test", [])]
            entries = [e for e in training if str(e.get("split", "train")) == split]
            entries += [e for e in test if str(e.get("split", "test")) == split]
        records = []
        for n, entry in enumerate(entries):
            rec = self._record(entry, n, split, modality)
            if rec is not None:
                records.append(rec)
        if not records:
            raise ValueError(f"{json_path}: no cases for split {split!r}")
        super().__init__(records, transform, source=json_path)

    def _scan_folders(self) -> list[dict[str, Any]]:
        """Entries from ``imagesTr/`` + ``labelsTr/`` when the json lists none."""
        entries = []
        for img in sorted((self.base / "imagesTr").glob("*.nii*")):
            if img.name.startswith("._"):
                continue
            lab = self.base / "labelsTr" / img.name
            entries.append({"image": str(img), **({"label": str(lab)} if lab.is_file() else {})})
        return entries

    def _record(self, entry: Any, n: int, split: str, modality: str | None) -> CaseRecord | None:
        rec = record_from_entry(
            entry, self.base, f"{self.json_path} entry {n}", modality=modality, split=split
        )
        if rec is not None:
            rec.extra["label_names"] = dict(self.label_names)
            if self.info.get("label_type") == "instance":  # ids are instances (SynthCT-VL's lesion maps)
                rec.extra["label_type"] = "instance"
        return rec
