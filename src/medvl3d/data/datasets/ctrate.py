"""CT-RATE layout: chest CT volumes with radiology reports, 18 abnormality labels and DICOM metadata.

Volumes live under ``{split}/`` (raw release) or ``{split}_fixed/`` (re-exported release) as
``{split}_<P>/{split}_<P>_<S>/{split}_<P>_<S>_<R>.nii.gz``. The raw files store the scanner's values
without NIfTI scaling or spacing, so they need ``RescaleSlope``/``RescaleIntercept`` and the spacing of
``metadata/{split}_metadata.csv``; the fixed files are already in HU with correct headers. Which rule
applies is decided from the root a file came from, and guarded by a check on the HU value range so that
the intercept is never applied twice.
"""

from __future__ import annotations

import ast
import csv
import re
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import nibabel as nib
import numpy as np

from medvl3d.csvfile import unlimited_fields
from medvl3d.data.datasets.base import CaseRecord, VolumeDataset, digest, strip_nifti_suffix
from medvl3d.data.io import Volume, read_volume, reorient_array, spacing_from_affine
from medvl3d.text.reports import join_report

# File-name spellings of each split in the published CSVs.
_SPLIT_ALIASES = {"valid": ("valid", "validation"), "validation": ("validation", "valid")}
_CSV_DIRS = ("radiology_text_reports", "multi_abnormality_labels", "metadata", "")


def _aliases(split: str) -> tuple[str, ...]:
    return _SPLIT_ALIASES.get(split, (split,))


def _search_roots(root: Path) -> list[Path]:
    return [root, root / "dataset"]


def find_csv(root: Path, split: str, kind: str) -> Path | None:
    """Locate ``{split}_{kind}.csv`` under the usual sub-folders of a CT-RATE root (or in the root)."""
    for base in _search_roots(root):
        for sub in _CSV_DIRS:
            for alias in _aliases(split):
                path = base / sub / f"{alias}_{kind}.csv"
                if path.is_file():
                    return path
    return None


def _read_csv(path: Path) -> dict[str, dict[str, str]]:
    # utf-8-sig tolerates a byte-order mark; reports have no length limit.
    with open(path, newline="", encoding="utf-8-sig") as fh, unlimited_fields():
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or "VolumeName" not in reader.fieldnames:
            raise ValueError(f"{path}: CSV has no 'VolumeName' column (columns: {reader.fieldnames})")
        return {strip_nifti_suffix(row["VolumeName"].strip()): row for row in reader}


def volume_roots(root: Path, split: str) -> list[tuple[Path, bool]]:
    """(folder, is_fixed) for the volume roots of ``split`` that exist, fixed ones first."""
    out = []
    for base in _search_roots(root):
        for alias in _aliases(split):
            for name, fixed in ((f"{alias}_fixed", True), (alias, False)):
                if (base / name).is_dir():
                    out.append((base / name, fixed))
    return out


def load_exclude(exclude: str | Path | Iterable[str] | None) -> set[str]:
    """VolumeNames to drop: a list, or a file with one name per line or a 'VolumeName' CSV column."""
    if exclude is None:
        return set()
    if isinstance(exclude, (str, Path)):
        path = Path(exclude)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: exclude list not found")
        text = path.read_text(encoding="utf-8").splitlines()
        if text and "VolumeName" in text[0].split(","):
            return set(_read_csv(path))
        names = [line.split(",")[0].strip() for line in text]
    else:
        names = [str(n).strip() for n in exclude]
    return {strip_nifti_suffix(n) for n in names if n}


def plausible_hu(array: np.ndarray) -> bool:
    """Does a chest CT look like HU? Air near -1000 present, and no spread of values far below it.

    The padding value outside the scan circle (a single constant, usually the minimum) is ignored.
    Applying the intercept twice pushes air to about -2000 (spread below -1100); not applying it leaves
    air near 0 (nothing between -1100 and -500).
    """
    sub = np.asarray(array[::4, ::4, ::2], dtype=np.float32).ravel()
    body = sub[sub != sub.min()]
    if body.size == 0:
        return False
    below = float(np.mean(body < -1100))
    air = float(np.mean((body >= -1100) & (body <= -500)))
    return below < 0.02 and air > 0.01


def _parse_xy(value: str, where: str) -> tuple[float, float]:
    try:
        parsed = ast.literal_eval(value.strip()) if isinstance(value, str) else value
        if isinstance(parsed, (int, float)):
            return float(parsed), float(parsed)
        return float(parsed[0]), float(parsed[1])
    except (ValueError, SyntaxError, TypeError, IndexError):
        raise ValueError(
            f"{where}: cannot parse XYSpacing {value!r} (expected like '[0.68, 0.68]')"
        ) from None


def _rescaled(array: np.ndarray, slope: float, inter: float, dtype: np.dtype | type) -> np.ndarray:
    """``array * slope + inter`` in ``dtype``, computed in place on one new array (a CT is ~70-280 MB)."""
    out = array.astype(dtype)  # always a copy, so the in-place steps never touch the caller's array
    if slope != 1.0:  # x * 1.0 == x exactly
        out *= slope
    out += inter
    return out


class CTRateDataset(VolumeDataset):
    """CT-RATE volumes with reports, labels and metadata.

    Args:
        root: folder holding ``{split}/`` and/or ``{split}_fixed/`` and the CSVs (or ``dataset/`` with them).
        split: "train" or "valid".
        exclude: VolumeNames to drop (list or file), e.g. CT-RATE's list of non-chest volumes.
        prefer_fixed: when a volume exists in both roots, read the fixed one.
        label_suffix: read ``<name><label_suffix>.nii.gz`` beside each volume as its ``label``
            (e.g. "_lesions" for SynthCT-VL's maps); None: no label.
        transform: optional callable applied to each sample.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        exclude: str | Path | Iterable[str] | None = None,
        prefer_fixed: bool = True,
        label_suffix: str | None = None,
        transform: Callable[[dict], dict] | None = None,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: CT-RATE root not found")
        self.split = split
        roots = volume_roots(self.root, split)
        if not roots:
            raise ValueError(f"{self.root}: no '{split}/' or '{split}_fixed/' volume folder (CT-RATE layout)")
        # Volume names are {split}_<P>_<S>_<R>; other files beside them (e.g. label maps
        # "<name>_lesions.nii.gz" that SynthCT-VL writes) are not volumes.
        pattern = re.compile(rf"^(?:{'|'.join(map(re.escape, _aliases(split)))})_[^_]+_[^_]+_[^_]+$")
        found: dict[str, tuple[Path, bool]] = {}
        for folder, fixed in roots if prefer_fixed else roots[::-1]:
            for path in sorted(folder.rglob("*.nii.gz")):
                name = strip_nifti_suffix(path.name)
                if pattern.match(name):
                    found.setdefault(name, (path, fixed))
        excluded = load_exclude(exclude)
        names = sorted(n for n in found if n not in excluded)

        tables = {
            kind: find_csv(self.root, split, kind) for kind in ("reports", "predicted_labels", "metadata")
        }
        reports = _read_csv(tables["reports"]) if tables["reports"] else {}
        labels = _read_csv(tables["predicted_labels"]) if tables["predicted_labels"] else {}
        self.metadata = _read_csv(tables["metadata"]) if tables["metadata"] else {}
        self.is_fixed = {n: found[n][1] for n in names}

        records, missing_report, missing_labels = [], 0, 0
        for name in names:
            rep = reports.get(name)
            if rep is None:
                missing_report += 1
            lab = labels.get(name)
            if lab is None:
                missing_labels += 1
            # With FINDINGS:/IMPRESSION: headers, as the labeller and summariser are tested on.
            text = join_report((rep or {}).get("Findings_EN"), (rep or {}).get("Impressions_EN"))
            records.append(
                CaseRecord(
                    case_id=name,
                    image=found[name][0],
                    label=self._label_path(found[name][0], name, label_suffix),
                    report=text,
                    labels={
                        k: int(float(v)) for k, v in (lab or {}).items() if k != "VolumeName" and v != ""
                    },
                    modality="CT",
                    split=split,
                    extra={
                        "clinical_information": (rep or {}).get("ClinicalInformation_EN", ""),
                        "technique": (rep or {}).get("Technique_EN", ""),
                        "fixed": found[name][1],
                    },
                )
            )
        if missing_report or missing_labels:
            warnings.warn(
                f"{self.root} ({split}): {missing_report} volume(s) without report and "
                f"{missing_labels} without labels; they get an empty report / empty labels",
                stacklevel=2,
            )
        self.n_excluded = len(found) - len(names)
        super().__init__(records, transform, source=self.root)

    @staticmethod
    def _label_path(image: Path, name: str, suffix: str | None) -> Path | None:
        if suffix is None:
            return None
        path = image.with_name(f"{name}{suffix}.nii.gz")
        if not path.is_file():
            raise FileNotFoundError(f"{path}: label map for {image.name} (label_suffix={suffix!r}) not found")
        return path

    def source_fingerprint(self, index: int) -> dict:
        """As :meth:`VolumeDataset.source_fingerprint`, plus the case's metadata row (rescale, spacing)."""
        out = super().source_fingerprint(index)
        out["metadata"] = digest(self.metadata.get(self.records[index].case_id))
        return out

    def load_image(self, record: CaseRecord) -> Volume:
        """Fixed volumes are read as they are; raw ones get slope/intercept and the metadata spacing."""
        fixed = bool(record.extra.get("fixed"))
        meta = self.metadata.get(record.case_id)
        if fixed:
            vol = read_volume(record.image, modality="CT")
            if meta is not None and not plausible_hu(vol.array):
                slope, inter = float(meta.get("RescaleSlope") or 1), float(meta.get("RescaleIntercept") or 0)
                # The dtype ``vol.array * slope + inter`` has: float64 for stored integers.
                converted = _rescaled(vol.array, slope, inter, np.result_type(vol.array.dtype, slope))
                if plausible_hu(converted):
                    warnings.warn(
                        f"{record.image}: in a *_fixed root but not in HU; applying the metadata rescale",
                        stacklevel=2,
                    )
                    vol.array = converted.astype(np.float32, copy=False)
            return vol
        if meta is None:
            raise ValueError(
                f"{record.image}: raw CT-RATE volume without a row in {self.split}_metadata.csv "
                "(its slope/intercept and spacing are needed)"
            )
        return self._load_raw(record.image, meta)

    def _load_raw(self, path: Path, meta: dict[str, str]) -> Volume:
        src = read_volume(path, modality="CT", reorient=False)
        stored, src_affine = src.array, src.affine
        del src  # `stored` is then the only reference to the file's values, dropped once they are used
        slope = float(meta.get("RescaleSlope") or 1.0)
        inter = float(meta.get("RescaleIntercept") or 0.0)
        data = _rescaled(stored, slope, inter, np.float32)
        if not plausible_hu(data) and plausible_hu(stored):
            # Guard: the stored values already look like HU; applying the intercept again would be wrong.
            warnings.warn(
                f"{path}: raw volume already in HU; rescale intercept not applied again", stacklevel=2
            )
            data[...] = stored  # the stored values as float32, in the buffer we already have
        del stored
        if slope == 1.0 and float(inter).is_integer() and data.min() >= -32768 and data.max() <= 32767:
            data = data.astype(np.int16)
        xy = _parse_xy(meta.get("XYSpacing", ""), f"{path} metadata")
        try:
            z = float(meta["ZSpacing"])
        except (KeyError, ValueError):
            raise ValueError(f"{path}: metadata has no valid ZSpacing") from None
        # Keep the file's axis directions and origin; replace the (unreliable) voxel sizes.
        direction = src_affine[:3, :3] / np.asarray(spacing_from_affine(src_affine))[None, :]
        affine = src_affine.copy()
        affine[:3, :3] = direction * np.array([xy[0], xy[1], z])[None, :]
        array, ras = reorient_array(data, affine, "RAS")
        return Volume(
            # As read_volume: keep the file's (Fortran) layout; only flipped axes are copied, in order.
            array=array.copy(order="K") if min(array.strides) < 0 else array,
            affine=ras,
            spacing=spacing_from_affine(ras),
            orientation="".join(nib.aff2axcodes(affine)),
            modality="CT",
            path=path,
            source_shape=tuple(data.shape),
            source_affine=affine,
        )
