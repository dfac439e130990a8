"""A generic JSONL manifest: one JSON object per line, one case per line.

Keys: ``image`` (required), ``label``, ``report``, ``labels`` (abnormality -> 0/1), ``lesions``
(lesion id -> attributes), ``modality``, ``case_id``, ``split``; other keys go into ``meta``.
Relative paths resolve against the manifest's folder.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from medvl3d.data.datasets.base import (
    CaseRecord,
    VolumeDataset,
    parse_labels,
    parse_lesions,
    strip_nifti_suffix,
)

_KEYS = {"image", "label", "report", "labels", "lesions", "modality", "case_id", "split"}


class JsonlDataset(VolumeDataset):
    """Cases listed in a ``.jsonl`` manifest; ``split`` keeps only lines with that ``split`` value."""

    def __init__(
        self,
        manifest: str | Path,
        split: str | None = None,
        *,
        transform: Callable[[dict], dict] | None = None,
    ) -> None:
        self.manifest = Path(manifest)
        if not self.manifest.is_file():
            raise FileNotFoundError(f"{self.manifest}: manifest not found")
        base = self.manifest.parent
        records = []
        with open(self.manifest, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                where = f"{self.manifest}:{lineno}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{where}: invalid JSON: {exc.msg}") from None
                if not isinstance(row, dict) or not row.get("image"):
                    raise ValueError(f"{where}: each line needs an 'image' path")
                if split is not None and row.get("split") != split:
                    continue
                image = Path(row["image"])
                image = image if image.is_absolute() else base / image
                label = Path(row["label"]) if row.get("label") else None
                if label is not None and not label.is_absolute():
                    label = base / label
                records.append(
                    CaseRecord(
                        case_id=str(row.get("case_id") or strip_nifti_suffix(image.name)),
                        image=image,
                        label=label,
                        report=str(row.get("report") or ""),
                        labels=parse_labels(row.get("labels"), where),
                        lesions=parse_lesions(row.get("lesions"), where),
                        modality=row.get("modality"),
                        split=row.get("split"),
                        extra={k: v for k, v in row.items() if k not in _KEYS},
                    )
                )
        if not records:
            raise ValueError(f"{self.manifest}: no cases" + (f" with split {split!r}" if split else ""))
        super().__init__(records, transform)
