"""Slice geometry of a DICOM series: checked before the slices are stacked into a volume.

A series reader stacks the slice files it is given and derives the slice spacing from two of them, so a
duplicated slice, a missing (or unreadable, hence skipped) one or slices of another orientation give a
volume that looks right and is not: a wrong z spacing, a flipped orientation, anatomy shifted along z.
:func:`check_slice_geometry` reads every slice header with pydicom and measures the slice positions
along the slice normal (the cross product of the two ImageOrientationPatient directions, applied to
ImagePositionPatient), the way dicom2nifti validates a series before converting it. Duplicates, gaps,
uneven increments, mixed orientations or slice sizes and slices not stacked along their normal (gantry
tilt) are errors naming the series. Uneven increments and gaps can instead be interpolated onto an even
grid on request (``uneven_slices="resample"``, like dicom2nifti's resampling option).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

UnevenSlices = Literal["error", "resample"]
UNEVEN_CHOICES: tuple[str, ...] = ("error", "resample")

#: Positions (mm) closer than this along the normal are the same slice.
_SAME_POSITION_MM = 1e-3
#: Increments may differ from the median by this fraction (rounding in the headers) ...
_INCREMENT_RTOL = 0.01
#: ... or by this many mm.
_INCREMENT_ATOL_MM = 1e-3
#: ImageOrientationPatient components (direction cosines) may differ by this much between slices.
_ORIENTATION_ATOL = 1e-4

_TAGS = ["ImagePositionPatient", "ImageOrientationPatient", "Rows", "Columns", "PixelSpacing"]


@dataclass
class SliceStack:
    """The slices of a series sorted along their normal.

    Attributes:
        files: slice files, in ascending position along ``normal``.
        positions: ImagePositionPatient of each file (LPS mm), ``[N, 3]``.
        offsets: position of each slice along ``normal`` (mm), ascending.
        normal: unit slice normal (LPS), row direction x column direction.
        even: the increments are uniform (the series can be stacked as it is).
        spacing: the increment of an even stack, or the smallest one of an uneven stack (the
            spacing it is resampled to).
    """

    files: list[str]
    positions: np.ndarray
    offsets: np.ndarray
    normal: np.ndarray
    even: bool
    spacing: float


def _read_headers(files: list[str], where: str) -> list:
    import pydicom

    headers = []
    for name in files:
        try:
            ds = pydicom.dcmread(name, stop_before_pixels=True, specific_tags=_TAGS)
        except Exception as exc:  # pydicom raises several types for damaged files
            raise ValueError(f"{where}: slice file {Path(name).name} is unreadable: {exc}") from None
        missing = [t for t in _TAGS[:2] if t not in ds]
        if missing:
            raise ValueError(
                f"{where}: slice file {Path(name).name} has no {' or '.join(missing)}; the slices "
                "cannot be placed in space"
            )
        headers.append(ds)
    return headers


def _check_same(headers: list, files: list[str], where: str) -> np.ndarray:
    """The common ImageOrientationPatient (6 cosines); mixed orientations or slice sizes are errors."""
    first = np.asarray(headers[0].ImageOrientationPatient, dtype=np.float64)
    size0 = (headers[0].get("Rows"), headers[0].get("Columns"))
    pix0 = np.asarray(headers[0].get("PixelSpacing") or [0.0, 0.0], dtype=np.float64)
    for name, ds in zip(files[1:], headers[1:]):
        iop = np.asarray(ds.ImageOrientationPatient, dtype=np.float64)
        if iop.shape != first.shape or not np.allclose(iop, first, rtol=0, atol=_ORIENTATION_ATOL):
            raise ValueError(
                f"{where}: mixed slice orientations (ImageOrientationPatient "
                f"{first.round(4).tolist()} in {Path(files[0]).name}, {iop.round(4).tolist()} in "
                f"{Path(name).name}); move the slices of the other orientation (e.g. a localizer) out of "
                "the folder"
            )
        size = (ds.get("Rows"), ds.get("Columns"))
        pix = np.asarray(ds.get("PixelSpacing") or [0.0, 0.0], dtype=np.float64)
        if size != size0 or not np.allclose(pix, pix0, rtol=1e-4, atol=1e-6):
            raise ValueError(
                f"{where}: mixed slice sizes ({size0[0]}x{size0[1]} at {pix0.tolist()} mm in "
                f"{Path(files[0]).name}, {size[0]}x{size[1]} at {pix.tolist()} mm in {Path(name).name})"
            )
    if first.shape != (6,):
        raise ValueError(f"{where}: ImageOrientationPatient must hold 6 values, got {first.tolist()}")
    return first


def check_slice_geometry(
    files: list[str], where: str, uneven_slices: UnevenSlices = "error", folder: Path | None = None
) -> SliceStack:
    """Sort a series' slices along their normal and check that they form an even stack.

    Args:
        files: the slice files of one series.
        where: the series, as named in error messages (folder and SeriesInstanceUID).
        uneven_slices: ``"error"`` refuses gaps and uneven increments; ``"resample"`` accepts them (the
            caller interpolates the stack onto an even grid of ``spacing``).
        folder: the series folder; a gap error names the files in it that could not be read.

    Raises:
        ValueError: an unreadable header, missing position/orientation, mixed orientations or sizes,
            duplicated slice positions, slices not stacked along their normal, or (unless resampling)
            gaps and uneven increments; each naming the series and the slice files concerned.
    """
    if uneven_slices not in UNEVEN_CHOICES:
        raise ValueError(f"uneven_slices must be one of {UNEVEN_CHOICES}, got {uneven_slices!r}")
    headers = _read_headers(files, where)
    iop = _check_same(headers, files, where)
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    norm = float(np.linalg.norm(normal))
    if norm < 1e-6:
        raise ValueError(f"{where}: ImageOrientationPatient {iop.tolist()} has parallel row and column axes")
    normal /= norm
    positions = np.asarray([ds.ImagePositionPatient for ds in headers], dtype=np.float64)
    offsets = positions @ normal
    order = np.argsort(offsets, kind="stable")
    files = [files[i] for i in order]
    positions, offsets = positions[order], offsets[order]
    steps = np.diff(offsets)

    same = np.flatnonzero(steps < _SAME_POSITION_MM)
    if same.size:
        i = int(same[0])
        raise ValueError(
            f"{where}: {same.size} duplicated slice(s): {Path(files[i]).name} and {Path(files[i + 1]).name} "
            f"lie at the same position ({offsets[i]:g} mm along the slice normal); remove the duplicates"
        )
    # Successive slices must move along the normal only; an in-plane shift is a tilted (sheared) stack.
    drift = np.diff(positions, axis=0) - steps[:, None] * normal[None, :]
    shift = np.linalg.norm(drift, axis=1)
    if shift.size and float(shift.max()) > max(_INCREMENT_ATOL_MM, _INCREMENT_RTOL * float(np.median(steps))):
        i = int(np.argmax(shift))
        raise ValueError(
            f"{where}: the slices are not stacked along their normal ({float(shift[i]):.3g} mm in-plane "
            f"shift between {Path(files[i]).name} and {Path(files[i + 1]).name}: gantry tilt?); this series "
            "cannot be read without shearing it"
        )
    median = float(np.median(steps))
    off = np.flatnonzero(np.abs(steps - median) > max(_INCREMENT_ATOL_MM, _INCREMENT_RTOL * median))
    even = off.size == 0
    if not even and uneven_slices == "error":
        i = int(off[0])
        ratio = steps[i] / median
        if ratio > 1.5:
            bad = unreadable_files(folder, files) if folder is not None else []
            why = f"unreadable files in the folder: {', '.join(bad[:3])}" if bad else "a missing slice"
            kind = f"a gap of {steps[i]:g} mm where the other slices are {median:g} mm apart ({why})"
        else:
            kind = f"uneven slice increments ({steps.min():g} to {steps.max():g} mm, mostly {median:g} mm)"
        raise ValueError(
            f"{where}: {kind}, between {Path(files[i]).name} at {offsets[i]:g} mm and "
            f"{Path(files[i + 1]).name} at {offsets[i + 1]:g} mm; stacking it would misplace slices. "
            "Resample it onto an even grid with uneven_slices='resample' (CLI: --uneven-slices resample)"
        )
    return SliceStack(files, positions, offsets, normal, even, median if even else float(steps.min()))


def resample_stack(data: np.ndarray, affine: np.ndarray, stack: SliceStack) -> tuple[np.ndarray, np.ndarray]:
    """Interpolate an uneven stack (array axis 2 = the slices of ``stack``, in order) linearly onto an
    even grid of ``stack.spacing`` mm from the first slice to the last; returns the array and its RAS
    affine (the slice axis follows the normal from the first slice, in-plane axes unchanged)."""
    offsets = stack.offsets - stack.offsets[0]
    n = int(np.floor(offsets[-1] / stack.spacing + 1e-6)) + 1
    targets = np.arange(n) * stack.spacing
    upper = np.clip(np.searchsorted(offsets, targets, side="right"), 1, len(offsets) - 1)
    lower = upper - 1
    weight = ((targets - offsets[lower]) / (offsets[upper] - offsets[lower])).astype(np.float32)
    src = np.asarray(data, dtype=np.float32)
    out = src[:, :, lower] * (1 - weight) + src[:, :, upper] * weight
    direction = stack.positions[-1] - stack.positions[0]
    direction_ras = direction * np.array([-1.0, -1.0, 1.0]) / np.linalg.norm(direction)
    new_affine = np.asarray(affine, dtype=np.float64).copy()
    new_affine[:3, 2] = direction_ras * stack.spacing
    return out, new_affine


def unreadable_files(folder: Path, series_files: list[str]) -> list[str]:
    """Names of the files in ``folder`` outside the series that pydicom cannot read as a placed image
    slice: slices a series reader skips without a word (named in gap errors)."""
    import pydicom

    known = {Path(f).name for f in series_files}
    bad = []
    for path in sorted(folder.iterdir()):
        if path.name in known or path.name.startswith(".") or not path.is_file():
            continue
        try:
            ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=_TAGS[:1])
            placed = "ImagePositionPatient" in ds
        except Exception:  # damaged or not DICOM at all
            placed = False
        if not placed:
            bad.append(path.name)
    return bad
