"""A generic JSONL manifest: one JSON object per line, one case per line.

Keys: ``image`` (required), ``label``, ``report``, ``labels`` (abnormality -> 0/1), ``lesions``
(lesion id -> attributes), ``modality``, ``case_id``, ``split``; other keys go into ``meta``.
Relative paths resolve against the manifest's folder.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from medvl3d.data.datasets.base import VolumeDataset, record_from_entry


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
                if isinstance(row, dict) and split is not None and row.get("split") != split:
                    continue
                rec = record_from_entry(row, base, where)
                if rec is not None:
                    records.append(rec)
        if not records:
            raise ValueError(f"{self.manifest}: no cases" + (f" with split {split!r}" if split else ""))
        super().__init__(records, transform, source=self.manifest)
