"""VolumeDataset.load_sample: the image tensor holds the volume's values bit for bit, with no copy beyond
the one float32 conversion the sample contract needs (none at all for a float32 volume)."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from medvl3d.data.datasets.base import CaseRecord, VolumeDataset
from medvl3d.data.io import Volume

SHAPE = (96, 80, 64)  # 0.49 M voxels: 1.97 MB as float32, large enough to tell copies apart


class _GivenVolume(VolumeDataset):
    """A dataset whose single case 'reads' as a given array (F-ordered, as NIfTI volumes load)."""

    def __init__(self, array: np.ndarray) -> None:
        super().__init__([CaseRecord(case_id="case", image=Path("case.nii.gz"))])
        self.array = array

    def load_image(self, record: CaseRecord) -> Volume:
        return Volume(
            array=self.array, affine=np.diag([1.0, 1.0, 2.0, 1.0]), spacing=(1, 1, 2), orientation="RAS"
        )


def _volume(dtype: str) -> np.ndarray:
    rng = np.random.default_rng(0)
    values = rng.integers(-1024, 3072, SHAPE).astype(np.float64) + rng.random(SHAPE).round(3)
    if np.dtype(dtype).kind in "iu":
        values = np.floor(values)
    return np.asfortranarray(values.astype(dtype))


def test_float32_volume_becomes_the_image_tensor_without_a_copy():
    array = _volume("float32")
    image = _GivenVolume(array).load_sample(0)["image"]
    assert image.dtype == torch.float32 and tuple(image.shape) == (1, *SHAPE)
    assert np.shares_memory(image.numpy(), array)  # torch.tensor(...) or a second asarray copy would fail
    assert image[0].numpy().tobytes(order="A") == array.tobytes(order="A")


@pytest.mark.parametrize("dtype", ["int16", ">i2", "uint8", ">f4", "float64"])
def test_other_dtypes_are_converted_once_with_identical_values(dtype):
    array = _volume(dtype)
    image = _GivenVolume(array).load_sample(0)["image"]
    expected = array.astype(np.float32)
    assert image.dtype == torch.float32 and tuple(image.shape) == (1, *SHAPE)
    assert np.array_equal(image[0].numpy(), expected) and image[0].numpy().tobytes() == expected.tobytes()
    assert not np.shares_memory(image.numpy(), array)  # the dataset never writes into the reader's array


@pytest.mark.parametrize("dtype", ["float32", "int16"])
def test_load_sample_allocates_at_most_the_one_float32_conversion(dtype):
    array = _volume(dtype)
    ds = _GivenVolume(array)
    float32_bytes = array.size * 4
    tracemalloc.start()
    try:
        sample = ds.load_sample(0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # numpy allocations are traced: float32 -> nothing of volume size, int16 -> exactly one float32 array.
    allowed = 0.05 * float32_bytes if dtype == "float32" else 1.05 * float32_bytes
    assert peak < allowed, f"{dtype}: peak {peak / float32_bytes:.2f}x a float32 volume"
    assert sample["image"].dtype == torch.float32
