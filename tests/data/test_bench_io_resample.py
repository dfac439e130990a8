"""The benchmark's code path (write .nii.gz, read, resample to 1.5 mm) at a small size, checked."""

from __future__ import annotations

import numpy as np
import pytest


def test_bench_path_small(tmp_path, bench_script):
    bench = bench_script("bench_io_resample")
    path = bench.make_volume(tmp_path / "ct.nii.gz", shape=(64, 64, 17), spacing=(0.7, 0.7, 2.5))
    rows = bench.run(path, repeats=1)
    vol = rows["read_volume (.nii.gz)"][1]
    assert (
        vol.shape == (64, 64, 17) and vol.spacing == pytest.approx((0.7, 0.7, 2.5)) and vol.modality == "CT"
    )
    image, _, affine = rows["resample trilinear"][1]
    assert image.shape == (1, 29, 29, 28)  # floor(64 * 0.7 / 1.5), floor(17 * 2.5 / 1.5)
    np.testing.assert_allclose(np.sqrt((affine[:3, :3] ** 2).sum(0)), [1.5, 1.5, 1.5])
    # the resampled grid covers the same physical extent, centred on the same point
    centre_in = vol.affine @ [*(np.array(vol.shape) - 1) / 2, 1]
    centre_out = affine @ [*(np.array(image.shape[1:]) - 1) / 2, 1]
    np.testing.assert_allclose(centre_out[:3], centre_in[:3], atol=1.5)
    windowed = rows["read + preprocess_volume"][1]
    assert windowed.shape == (1, 29, 29, 28) and 0 <= windowed.min() and windowed.max() <= 1
    # air (-1000 HU) -> 0 at the corner, soft tissue (40 HU) -> 0.52 anterior to the spine
    assert windowed[0, 0, 0, 14] < 0.03 and abs(windowed[0, 14, 20, 14] - 0.52) < 0.03
