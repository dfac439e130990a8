"""Atomic, byte-reproducible writers for the SynthCT-VL file layouts.

NIfTI files are serialised in memory (nibabel header + raw data) and gzipped here with mtime 0
(nibabel's own gzip writer stamps the current time, which would make two identical runs differ).
Every file is written atomically (`medvl3d.atomic`: a temporary name in the target folder, then
`os.replace`), so an interrupted run never leaves a half-written file under its final name.
"""

from __future__ import annotations

import csv
import io
import json
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from medvl3d.atomic import atomic_write_bytes, atomic_write_text


def write_json(path: str | Path, obj) -> None:
    """Pretty JSON with sorted-free, insertion-ordered keys (deterministic for deterministic input)."""
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def write_csv(path: str | Path, header: list[str], rows: list[list]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def nifti_bytes(array: np.ndarray, affine: np.ndarray, *, compresslevel: int = 1) -> bytes:
    """A gzipped NIfTI-1 file as bytes, reproducible bit for bit.

    Integer CT is stored with scl_slope 1 / scl_inter 0 (values are HU already); qform and sform both
    carry the affine (code 1, scanner) so every reader agrees on the geometry.
    """
    img = nib.Nifti1Image(array, affine)
    hdr = img.header
    hdr.set_data_dtype(array.dtype)
    hdr.set_slope_inter(1.0, 0.0)
    hdr.set_xyzt_units("mm", "sec")
    hdr.set_qform(affine, code=1)
    hdr.set_sform(affine, code=1)
    hdr["vox_offset"] = 352
    # Single-file NIfTI-1: 348-byte header, 4-byte empty extension flag, then the Fortran-ordered data.
    # Serialising directly is several times faster than nibabel's chunked writer.
    raw = hdr.binaryblock + b"\x00" * 4 + np.asarray(array).tobytes(order="F")
    # Noisy int16 CT gains little from LZ matching: Huffman-only deflate is ~40% faster than
    # gzip level 1 for ~12% larger files. Label maps are long runs: run-length deflate is as fast as
    # level 1 and smaller (measured on 64x128x128 volumes). wbits=31 writes a gzip header with mtime 0.
    strategy = zlib.Z_RLE if array.dtype.itemsize == 1 else zlib.Z_HUFFMAN_ONLY
    comp = zlib.compressobj(compresslevel, zlib.DEFLATED, 31, 9, strategy)
    return comp.compress(raw) + comp.flush()


def write_nifti(path: str | Path, array: np.ndarray, affine: np.ndarray, *, compresslevel: int = 1) -> None:
    """Write a `.nii.gz` atomically and reproducibly (see `nifti_bytes`)."""
    atomic_write_bytes(path, nifti_bytes(array, affine, compresslevel=compresslevel))
