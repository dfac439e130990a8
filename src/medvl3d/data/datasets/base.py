"""Shared machinery of the dataset layouts: case records, label checks and dict samples.

Each layout module only finds its cases (paths, report, labels, lesions); reading volumes, checking
label maps against their image and building the samples of docs/contracts.md happen here, once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from medvl3d.data.io import Volume, read_volume

#: Largest affine difference (mm) tolerated between an image and its label map.
AFFINE_ATOL_MM = 1e-2

_SAFE_ID = re.compile(r"^[A-Za-z0-9._+-]+$")


@dataclass
class CaseRecord:
    """Everything known about one case before its files are read."""

    case_id: str
    image: Path
    label: Path | None = None
    report: str = ""
    labels: dict[str, int] = field(default_factory=dict)
    lesions: dict[int, dict[str, str]] = field(default_factory=dict)
    modality: str | None = None
    split: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def file_signature(path: Path) -> list | None:
    """``[size, mtime_ns]`` of a file; for a folder (a DICOM series) the number of files in it and a
    sha256 of their names, sizes and times; None when the path is missing. Rewriting or replacing a
    file changes its signature without reading it."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    if not path.is_dir():
        return [st.st_size, st.st_mtime_ns]
    entries = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in path.iterdir() if p.is_file())
    return ["folder", len(entries), hashlib.sha256(json.dumps(entries).encode()).hexdigest()]


def digest(value: Any) -> str:
    """sha256 of a JSON-able value (other objects by their ``str``)."""
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def semantic_label(sample: dict) -> torch.Tensor | None:
    """A sample's label map as classes: an instance map (``meta["label_type"] == "instance"``, as an MSD
    json marks SynthCT-VL's lesion maps) as one foreground class, any other as it is (None without one).
    The dataset keeps the instance ids; segmentation training, validation and evaluation read this."""
    label = sample.get("label")
    if label is None:
        return None
    label = torch.as_tensor(label)
    return (
        (label > 0).to(label.dtype) if (sample.get("meta") or {}).get("label_type") == "instance" else label
    )


def strip_nifti_suffix(name: str) -> str:
    """'train_1_a_1.nii.gz' -> 'train_1_a_1' (also .nii, .nrrd, .mha)."""
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def parse_lesions(value: Any, where: str) -> dict[int, dict[str, str]]:
    """Lesion dicts from JSON (string ids) -> {int id: {attribute: value}}."""
    if value in (None, ""):
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{where}: 'lesions' must be an object of lesion id -> attributes")
    out: dict[int, dict[str, str]] = {}
    for key, attrs in value.items():
        try:
            lesion_id = int(key)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: lesion id {key!r} is not an integer label id") from None
        if not isinstance(attrs, dict):
            raise ValueError(f"{where}: lesion {key}: attributes must be an object")
        out[lesion_id] = {str(k): str(v) for k, v in attrs.items()}
    return out


def parse_labels(value: Any, where: str) -> dict[str, int]:
    """Abnormality labels -> {name: 0/1}."""
    if value in (None, ""):
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{where}: 'labels' must be an object of abnormality name -> 0/1")
    try:
        return {str(k): int(float(v)) for k, v in value.items()}
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: 'labels' values must be 0/1: {exc}") from None


#: Keys of a manifest/MSD entry that map onto sample fields; other keys go into ``meta``.
ENTRY_KEYS = frozenset({"image", "label", "report", "labels", "lesions", "modality", "case_id", "split"})


def record_from_entry(
    entry: Any, base: Path, where: str, *, modality: str | None = None, split: str | None = None
) -> CaseRecord | None:
    """A :class:`CaseRecord` from a JSON entry (MSD ``training`` item or JSONL line).

    Relative paths resolve against ``base``; entries pointing at macOS ``._*`` files give None.
    """
    if not isinstance(entry, dict) or not entry.get("image"):
        raise ValueError(f"{where}: each entry needs an 'image' path")

    def resolve(rel: Any) -> Path:
        p = Path(str(rel))
        return p if p.is_absolute() else base / p

    image = resolve(entry["image"])
    if image.name.startswith("._"):
        return None
    label = resolve(entry["label"]) if entry.get("label") else None
    return CaseRecord(
        case_id=str(entry.get("case_id") or strip_nifti_suffix(image.name)),
        image=image,
        label=None if label is not None and label.name.startswith("._") else label,
        report=str(entry.get("report") or ""),
        labels=parse_labels(entry.get("labels"), where),
        lesions=parse_lesions(entry.get("lesions"), where),
        modality=entry.get("modality") or modality,
        split=entry.get("split", split),
        extra={k: v for k, v in entry.items() if k not in ENTRY_KEYS},
    )


def read_label(path: Path, image: Volume) -> np.ndarray:
    """Read a label map, check it lies on ``image``'s grid, and cast it to integers.

    Float label maps (some MSD tasks) are accepted when every value is integral.
    """
    lab = read_volume(path, modality="unknown")
    if lab.shape != image.shape:
        raise ValueError(
            f"{path}: label shape {lab.shape} differs from image shape {image.shape} ({image.path})"
        )
    diff = float(np.abs(lab.affine - image.affine).max())
    if diff > AFFINE_ATOL_MM:
        raise ValueError(
            f"{path}: label affine differs from the image affine of {image.path} by up to {diff:.4g} mm"
        )
    data = lab.array
    if np.issubdtype(data.dtype, np.floating):
        rounded = np.rint(data)
        if not np.array_equal(rounded, data):
            bad = data[rounded != data][:3].tolist()
            raise ValueError(f"{path}: float label map holds non-integer values (e.g. {bad})")
        data = rounded
    return data.astype(np.int64, copy=False)


class VolumeDataset(Dataset):
    """A torch Dataset of dict samples over a list of :class:`CaseRecord`.

    Args:
        records: the cases, in a stable order (sharding relies on it).
        transform: optional callable applied to each sample (e.g. a PreprocessSpec).
        source: the dataset's file or folder, named in error messages.
    """

    def __init__(
        self,
        records: Sequence[CaseRecord],
        transform: Callable[[dict], dict] | None = None,
        *,
        source: str | Path = "dataset",
    ) -> None:
        ids = [r.case_id for r in records]
        dup = sorted(i for i, n in Counter(ids).items() if n > 1)
        if dup:
            raise ValueError(f"{source}: duplicate case ids: {dup[:5]}")
        bad = [i for i in ids if not _SAFE_ID.match(i)]
        if bad:
            raise ValueError(f"{source}: case ids must be file-name safe ([A-Za-z0-9._+-]), got {bad[:5]}")
        self.records = list(records)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    @property
    def case_ids(self) -> list[str]:
        return [r.case_id for r in self.records]

    def reports(self) -> list[str]:
        """The report of every case, in order, without reading any volume."""
        return [r.report for r in self.records]

    def source_fingerprint(self, index: int) -> dict:
        """What case ``index`` is made from: the signature of its image and label files
        (:func:`file_signature`) and a digest of its record (report, labels, lesions, ...). A
        preprocessing cache stores it beside each case and redoes cases whose fingerprint changed."""
        rec = self.records[index]
        files = [p for p in (rec.image, rec.label) if p is not None]
        return {
            "files": {str(p): file_signature(Path(p)) for p in files},
            "record": digest(dataclasses.asdict(rec)),
        }

    def load_image(self, record: CaseRecord) -> Volume:
        """Read the image of a case (layouts override this for special encodings, e.g. raw CT-RATE)."""
        return read_volume(record.image, modality=record.modality)

    def load_sample(self, index: int) -> dict:
        """The raw sample (RAS, HU for CT) of case ``index``, before ``transform``."""
        rec = self.records[index]
        vol = self.load_image(rec)
        sample: dict[str, Any] = {
            "image": torch.from_numpy(np.asarray(vol.array, dtype=np.float32))[None],
            "report": rec.report,
            "labels": dict(rec.labels),
            "lesions": {k: dict(v) for k, v in rec.lesions.items()},
            "meta": {
                "case_id": rec.case_id,
                "path": str(rec.image),
                "affine": vol.affine.tolist(),
                "spacing": list(vol.spacing),
                "shape": list(vol.shape),
                "orientation": vol.orientation,
                "modality": vol.modality,
                "split": rec.split,
                **rec.extra,
            },
        }
        if rec.label is not None:
            sample["label"] = torch.from_numpy(read_label(rec.label, vol))[None]
            sample["meta"]["label_path"] = str(rec.label)
        return sample

    def __getitem__(self, index: int) -> dict:
        sample = self.load_sample(index)
        return self.transform(sample) if self.transform is not None else sample
