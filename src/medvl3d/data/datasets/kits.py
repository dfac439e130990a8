"""KiTS23 layout: ``case_XXXXX/imaging.nii.gz`` with ``segmentation.nii.gz`` (1 kidney, 2 tumour, 3 cyst)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from medvl3d.data.datasets.base import CaseRecord, VolumeDataset

#: KiTS23 label ids.
KITS_LABELS = {"0": "background", "1": "kidney", "2": "tumor", "3": "cyst"}


class KiTSDataset(VolumeDataset):
    """KiTS23 cases; a case without ``segmentation.nii.gz`` yields no ``label``."""

    def __init__(self, root: str | Path, *, transform: Callable[[dict], dict] | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: KiTS23 root not found")
        records = []
        for case in sorted(self.root.glob("case_*")):
            image = case / "imaging.nii.gz"
            if case.name.startswith("._") or not image.is_file():
                continue
            seg = case / "segmentation.nii.gz"
            records.append(
                CaseRecord(
                    case_id=case.name,
                    image=image,
                    label=seg if seg.is_file() else None,
                    modality="CT",
                    split="train" if seg.is_file() else "test",
                    extra={"label_names": dict(KITS_LABELS)},
                )
            )
        if not records:
            raise ValueError(f"{self.root}: no case_*/imaging.nii.gz found (KiTS23 layout)")
        super().__init__(records, transform, source=self.root)
