"""Benchmark: read a gzip-compressed CT NIfTI and resample it to 1.5 mm isotropic.

Synthesises a 512x512x133 int16 CT-like volume at 0.7x0.7x2.5 mm (the acceptance case), writes it as
.nii.gz into a temp folder, then times (median of --repeats runs) reading with
:func:`medvl3d.data.io.read_volume`, resampling with :func:`medvl3d.data.preprocess.resample`, and the
whole :func:`preprocess_volume` (resample + window). ``--monai`` adds MONAI's ``Spacing`` for comparison.

    .venv/bin/python benchmarks/bench_io_resample.py [--threads 2] [--repeats 3] [--monai]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from medvl3d.data.io import read_volume
from medvl3d.data.preprocess import PreprocessSpec, preprocess_volume, resample


def make_volume(path: Path, shape=(512, 512, 133), spacing=(0.7, 0.7, 2.5), seed: int = 0) -> Path:
    """Write a CT-like int16 volume (air, body, lungs, spine, noise) as NIfTI at ``path``."""
    rng = np.random.default_rng(seed)
    x = np.linspace(-1, 1, shape[0], dtype=np.float32)[:, None, None]
    y = np.linspace(-1, 1, shape[1], dtype=np.float32)[None, :, None]
    hu = np.full(shape, -1000, np.float32)
    body = np.broadcast_to((x / 0.9) ** 2 + (y / 0.7) ** 2 < 1, shape)
    hu[body] = 40
    lungs = np.broadcast_to(((np.abs(x) - 0.4) / 0.3) ** 2 + (y / 0.5) ** 2 < 1, shape)
    hu[lungs] = -850
    hu[np.broadcast_to(x**2 + (y + 0.5) ** 2 < 0.01, shape)] = 600
    hu += rng.normal(0, 15, shape).astype(np.float32)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -np.asarray(shape) * np.asarray(spacing) / 2
    nib.save(nib.Nifti1Image(np.round(hu).astype(np.int16), affine), str(path))
    return path


def _median_time(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def run(
    path: Path, spacing=(1.5, 1.5, 1.5), repeats: int = 3, monai: bool = False
) -> dict[str, tuple[float, object]]:
    """Time each step on ``path``; returns step -> (median seconds, last output)."""
    rows: dict[str, tuple[float, object]] = {}
    rows["read_volume (.nii.gz)"] = _median_time(lambda: read_volume(path), repeats)
    vol = rows["read_volume (.nii.gz)"][1]
    image = torch.from_numpy(vol.array)[None]
    rows["resample trilinear"] = _median_time(lambda: resample(image, vol.affine, spacing), repeats)
    spec = PreprocessSpec(spacing=spacing, intensity={"ct_window": (-1000, 1000)})
    rows["read + preprocess_volume"] = _median_time(
        lambda: preprocess_volume(read_volume(path), spec), repeats
    )
    if monai:
        from monai.data import MetaTensor
        from monai.transforms import Spacing

        def monai_spacing():
            return Spacing(pixdim=spacing, mode="bilinear")(
                MetaTensor(image.float(), affine=torch.tensor(vol.affine))
            )

        rows["MONAI Spacing (reference)"] = _median_time(monai_spacing, repeats)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--monai", action="store_true", help="also time MONAI's Spacing")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        path = make_volume(Path(tmp) / "ct_512x512x133.nii.gz")
        size_mb = path.stat().st_size / 2**20
        rows = run(path, repeats=args.repeats, monai=args.monai)
    print(
        f"512x512x133 int16 CT @ 0.7x0.7x2.5 mm ({size_mb:.0f} MiB .nii.gz) -> 1.5 mm iso, "
        f"{args.threads} threads, median of {args.repeats}"
    )
    print(f"{'step':32s} {'seconds':>8s}")
    for name, (seconds, _) in rows.items():
        print(f"{name:32s} {seconds:8.2f}")


if __name__ == "__main__":
    main()
