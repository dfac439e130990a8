"""PreprocessSpec: exact geometry through resampling/cropping, intensity rules, round trip of the spec."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medvl3d.data.io import Volume, read_volume
from medvl3d.data.preprocess import (
    PreprocessSpec,
    preprocess_sample,
    preprocess_volume,
    resample,
    resample_to_grid,
)


def _ramp_volume(shape=(32, 28, 12), spacing=(0.7, 0.8, 2.5), origin=(-10.0, 5.0, 30.0)):
    """A volume whose value is a linear function of RAS world position (trilinear reproduces it exactly)."""
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(np.float64)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    values = world @ np.array([3.0, -2.0, 1.5]) + 7.0
    return values.astype(np.float32), affine


def _world_ramp(affine, shape):
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(np.float64)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    return world @ np.array([3.0, -2.0, 1.5]) + 7.0


@pytest.mark.parametrize("order", ["C", "F"])  # F: NIfTI's memory layout, resampled without transposing
def test_resample_affine_maps_voxel_centres_exactly(order):
    values, affine = _ramp_volume()
    values = np.asarray(values, order=order)
    out, _, new_affine = resample(torch.from_numpy(values)[None], affine, (1.5, 1.5, 1.5))
    assert out.shape[1:] == (14, 14, 20)  # floor(n * old / new)
    np.testing.assert_allclose(np.sqrt((new_affine[:3, :3] ** 2).sum(0)), [1.5, 1.5, 1.5])
    # interior voxels (no edge clamping): the value equals the ramp at the voxel's world position
    expected = _world_ramp(new_affine, out.shape[1:])
    np.testing.assert_allclose(out[0, 1:-1, 1:-1, 1:-1].numpy(), expected[1:-1, 1:-1, 1:-1], atol=1e-3)


def test_label_nearest_stays_on_same_grid_and_keeps_ids():
    label = np.zeros((20, 20, 8), np.int64)
    label[5:15, 4:12, 2:6] = 7
    label[0:3, 0:3, 0:2] = 300
    image = torch.zeros((1, 20, 20, 8))
    out, lab, aff = resample(
        image, np.diag([1.0, 1.0, 3.0, 1.0]), (2.0, 2.0, 1.5), label=torch.from_numpy(label)[None]
    )
    assert lab.shape == out.shape and lab.dtype == torch.int64
    assert set(np.unique(lab.numpy())) == {0, 7, 300}
    # the labelled box keeps its world extent: x in [5, 15) mm, z in [6, 18) mm
    ijk = np.argwhere(lab[0].numpy() == 7)
    world = ijk @ aff[:3, :3].T + aff[:3, 3]
    assert world[:, 0].min() >= 4.5 and world[:, 0].max() <= 14.5
    assert world[:, 2].min() >= 5.0 and world[:, 2].max() <= 17.0


def test_ct_window_and_mr_percentiles():
    ct = Volume(
        np.array([-2000, -1000, 0, 1000, 3000], np.int16).reshape(5, 1, 1), np.eye(4), (1, 1, 1), "RAS", "CT"
    )
    spec = PreprocessSpec(spacing=None)
    np.testing.assert_allclose(preprocess_volume(ct, spec).ravel(), [0, 0, 0.5, 1, 1])
    mr = Volume(np.arange(1001, dtype=np.float32).reshape(1001, 1, 1), np.eye(4), (1, 1, 1), "RAS", "MR")
    out = preprocess_volume(mr, PreprocessSpec(spacing=None, intensity={"mr_percentiles": (10, 90)})).ravel()
    assert (
        out[100] == pytest.approx(0.0) and out[900] == pytest.approx(1.0) and out[500] == pytest.approx(0.5)
    )
    assert out.min() == 0.0 and out.max() == 1.0


def test_foreground_crop_and_spatial_size_track_the_affine():
    data = np.full((40, 30, 20), -1000, np.int16)
    data[10:20, 5:25, 4:9] = 40
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = (100, 200, 300)
    label = (data > 0).astype(np.uint8)
    sample = {
        "image": torch.from_numpy(data)[None],
        "label": torch.from_numpy(label)[None],
        "meta": {"affine": affine.tolist(), "modality": "CT"},
    }
    spec = PreprocessSpec(
        spacing=None, foreground_crop=True, foreground_threshold=0.1, spatial_size=(16, 16, 8)
    )
    out = preprocess_sample(sample, spec)
    assert out["image"].shape == (1, 16, 16, 8) and out["label"].shape == (1, 16, 16, 8)
    new_aff = np.asarray(out["meta"]["affine"])
    # every foreground voxel of the output lies on a foreground voxel of the input at the same world point
    ijk = np.argwhere(out["label"][0].numpy() == 1)
    src = (ijk @ new_aff[:3, :3].T + new_aff[:3, 3]) - affine[:3, 3]
    assert (data[tuple(src.astype(int).T)] == 40).all()
    assert out["image"].dtype == torch.float32 and float(out["image"].max()) == pytest.approx(0.52)
    assert out["meta"]["raw_shape"] == [40, 30, 20]


def test_spec_round_trip_and_unknown_keys():
    spec = PreprocessSpec(
        spacing=(1.0, 1.0, 2.0), intensity={"ct_window": (-200, 300)}, spatial_size=(32, 32, 16)
    )
    data = json.loads(json.dumps(spec.to_dict()))
    assert PreprocessSpec.from_dict(data) == spec
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['spaceing'\]"):
        PreprocessSpec.from_dict({**data, "spaceing": [1, 1, 1]})
    with pytest.raises(ValueError, match=r"intensity: unknown key\(s\) \['window'\]"):
        PreprocessSpec.from_dict({**data, "intensity": {"window": [0, 1]}})
    with pytest.raises(ValueError, match="ct_window"):
        PreprocessSpec(intensity={"ct_window": (100, -100)})
    with pytest.raises(ValueError, match="orientation"):
        PreprocessSpec(orientation="RAR")


def test_orientation_to_lps_flips_exactly():
    values, affine = _ramp_volume(shape=(8, 6, 4), spacing=(1, 1, 1))
    vol = Volume(values, affine, (1, 1, 1), "RAS", "MR")
    sample = {"image": torch.from_numpy(values)[None], "meta": {"affine": affine.tolist(), "modality": "MR"}}
    out = preprocess_sample(sample, PreprocessSpec(orientation="LPS", spacing=None))
    new_aff = np.asarray(out["meta"]["affine"])
    assert "".join(__import__("nibabel").aff2axcodes(new_aff)) == "LPS"
    np.testing.assert_allclose(new_aff @ [0, 0, 0, 1], affine @ [7, 5, 0, 1])
    assert vol.shape == out["image"].shape[1:]


def test_resample_to_grid_inverts_preprocessing_for_labels(real_dir):
    """A label preprocessed to 4.5 mm and mapped back lands on the original voxels (up to grid rounding)."""
    seg = read_volume(real_dir / "totalseg" / "example_seg.nii.gz")
    label = torch.from_numpy(seg.array.astype(np.int64))[None]
    sample = {
        "image": label.float(),
        "label": label,
        "meta": {"affine": seg.affine.tolist(), "modality": "MR"},
    }
    out = preprocess_sample(sample, PreprocessSpec(spacing=(4.5, 4.5, 4.5)))
    back = resample_to_grid(out["label"], np.asarray(out["meta"]["affine"]), seg.shape, seg.affine)
    liver = seg.array == 5
    agreement = (back[0].numpy()[liver] == 5).mean()
    assert back.shape[1:] == seg.shape and agreement > 0.85


def test_preprocess_real_ct_to_1p5mm(real_dir):
    vol = read_volume(real_dir / "totalseg" / "example_ct_sm.nii.gz")
    out = preprocess_volume(
        vol, PreprocessSpec(spacing=(1.5, 1.5, 1.5), intensity={"ct_window": (-1000, 1000)})
    )
    assert out.shape == (1, 244, 202, 60) and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    # windowing is affine in HU: the mean inside the body stays consistent with the raw HU mean
    raw_mean = (np.clip(vol.array.astype(np.float64), -1000, 1000) + 1000).mean() / 2000
    assert abs(out.mean() - raw_mean) < 0.01


def test_antialias_removes_the_noise_a_coarser_scan_would_not_have():
    rng = np.random.default_rng(0)
    noise = rng.normal(40.0, 30.0, (64, 64, 32)).astype(np.float32)
    meta = {"affine": np.eye(4).tolist(), "modality": "CT"}
    sample = {"image": torch.from_numpy(noise)[None], "meta": meta}
    window = {"ct_window": (-1000.0, 1000.0)}
    plain = preprocess_sample(sample, PreprocessSpec(spacing=(4.0, 4.0, 4.0), intensity=window))["image"]
    smooth = preprocess_sample(
        sample, PreprocessSpec(spacing=(4.0, 4.0, 4.0), intensity=window, antialias=True)
    )["image"]
    assert plain.shape == smooth.shape == (1, 16, 16, 8)
    # Averaging ~4^3 fine voxels divides the noise by ~8; trilinear sampling alone keeps most of it.
    assert float(smooth.std()) < 0.5 * float(plain.std())
    assert abs(float(smooth.mean()) - float(plain.mean())) < 2e-3  # the level is kept
    # Nothing to do when the grid is not coarsened.
    same = PreprocessSpec(spacing=(1.0, 1.0, 1.0), intensity=window, antialias=True)
    torch.testing.assert_close(preprocess_sample(sample, same)["image"], sample["image"].add(1000).div(2000))
