"""resample_to_grid: sampling slab by slab gives the former whole-grid values, in bounded memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medvl3d.data import preprocess
from medvl3d.data.io import read_volume
from medvl3d.data.preprocess import resample_to_grid


def _whole_grid_reference(array, affine, target_shape, target_affine, mode="nearest"):
    """The implementation before slabs: a float64 meshgrid of the whole target (several GB when large)."""
    m = np.linalg.inv(np.asarray(affine, dtype=np.float64)) @ np.asarray(target_affine, dtype=np.float64)
    grids = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in target_shape], indexing="ij")
    vox = np.stack(grids, -1) @ m[:3, :3].T + m[:3, 3]
    size = np.asarray(array.shape[1:], dtype=np.float64)
    norm = 2.0 * vox / np.maximum(size - 1, 1) - 1.0
    grid = torch.from_numpy(norm[..., ::-1].copy()).float()[None]
    out = F.grid_sample(
        array[None].float(), grid, mode="nearest" if mode == "nearest" else "bilinear", align_corners=True
    )[0]
    return out.to(array.dtype) if mode == "nearest" else out


def _random_affine(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Spacing 0.5-3 mm, random flips, a random rotation with a little shear; grid centre within 3 mm of 0."""
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    aff = np.eye(4)
    aff[:3, :3] = (q + rng.normal(0, 0.05, (3, 3))) @ np.diag(
        rng.uniform(0.5, 3.0, 3) * rng.choice([-1, 1], 3)
    )
    aff[:3, 3] = rng.uniform(-3, 3, 3) - aff[:3, :3] @ ((np.asarray(shape) - 1) / 2)
    return aff


@pytest.mark.parametrize("slab_voxels", [37, 1 << 21])  # 37: many slabs of one row, not divisible
@pytest.mark.parametrize("seed", range(4))
def test_matches_whole_grid_version_on_random_affines(monkeypatch, seed, slab_voxels):
    monkeypatch.setattr(preprocess, "_SLAB_VOXELS", slab_voxels)
    rng = np.random.default_rng(seed)
    src_shape = tuple(int(n) for n in rng.integers(5, 19, 3))
    target_shape = tuple(int(n) for n in rng.integers(4, 23, 3))
    affine, target_affine = _random_affine(rng, src_shape), _random_affine(rng, target_shape)
    if seed % 2:  # pure per-axis scale + shift: exercises exact ties of the nearest rule
        affine, target_affine = np.diag([2.0, 1.0, 3.0, 1.0]), np.diag([1.0, 0.5, 1.5, 1.0])
    labels = torch.from_numpy(rng.integers(0, 300, (2, *src_shape)))
    values = torch.from_numpy(rng.normal(0, 100, (2, *src_shape)).astype(np.float32))

    near = resample_to_grid(labels, affine, target_shape, target_affine)
    assert near.dtype == torch.int64 and near.shape == (2, *target_shape)
    assert torch.equal(near, _whole_grid_reference(labels, affine, target_shape, target_affine))
    assert (near != 0).float().mean() > 0.2  # the grids overlap: not a trivially all-zero comparison

    lin = resample_to_grid(values, affine, target_shape, target_affine, mode="trilinear")
    ref = _whole_grid_reference(values, affine, target_shape, target_affine, mode="trilinear")
    assert lin.dtype == torch.float32 and lin.shape == (2, *target_shape)
    torch.testing.assert_close(lin, ref, rtol=1e-5, atol=1e-3)


def test_matches_whole_grid_version_on_real_volumes(real_dir, monkeypatch):
    """Real segmentation (exact) and CT (float32 rounding) onto a rotated, 1.3x coarser grid."""
    monkeypatch.setattr(preprocess, "_SLAB_VOXELS", 5000)
    c, s = np.cos(0.3), np.sin(0.3)
    for name, mode in (("example_seg", "nearest"), ("example_ct_sm", "trilinear")):
        vol = read_volume(real_dir / "totalseg" / f"{name}.nii.gz")
        array = torch.from_numpy(vol.array.astype(np.int64) if mode == "nearest" else vol.array)[None]
        target = vol.affine.copy()
        target[:3, :3] = vol.affine[:3, :3] @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) * 1.3
        shape = (90, 80, 25)
        new = resample_to_grid(array, vol.affine, shape, target, mode=mode)
        ref = _whole_grid_reference(array, vol.affine, shape, target, mode=mode)
        assert len(torch.unique(new)) > 10  # real anatomy (organ labels / HU), not an empty overlap
        if mode == "nearest":
            assert new.dtype == torch.int64 and torch.equal(new, ref)
        else:
            torch.testing.assert_close(new, ref, rtol=1e-5, atol=1e-2)


def test_samples_in_slabs_that_cover_the_target_once(monkeypatch):
    """No sampling grid holds more than one slab (or one X row when a row is larger)."""
    monkeypatch.setattr(preprocess, "_SLAB_VOXELS", 100)
    seen = []
    real = F.grid_sample

    def spy(src, grid, **kwargs):
        seen.append(tuple(grid.shape))
        return real(src, grid, **kwargs)

    monkeypatch.setattr(preprocess.F, "grid_sample", spy)
    out = resample_to_grid(torch.ones((1, 4, 4, 4)), np.eye(4), (23, 5, 6), np.eye(4))
    assert seen == [(1, 3, 5, 6, 3)] * 7 + [(1, 2, 5, 6, 3)]  # 100 // 30 = 3 rows per slab
    assert out[0, :4, :4, :4].eq(1).all() and out[0, 4:].eq(0).all() and out.sum() == 64  # outside: 0
    seen.clear()
    resample_to_grid(torch.ones((1, 4, 4, 4)), np.eye(4), (2, 20, 10), np.eye(4))
    assert seen == [(1, 1, 20, 10, 3)] * 2


def test_bad_input_is_named():
    with pytest.raises(ValueError, match=r"must be \[C, X, Y, Z\], got shape \(4, 4, 4\)"):
        resample_to_grid(torch.zeros((4, 4, 4)), np.eye(4), (2, 2, 2), np.eye(4))
    with pytest.raises(ValueError, match="mode must be 'nearest' or 'trilinear', got 'cubic'"):
        resample_to_grid(torch.zeros((1, 4, 4, 4)), np.eye(4), (2, 2, 2), np.eye(4), mode="cubic")
