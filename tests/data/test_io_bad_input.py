"""Volume I/O on bad input: each problem gets one clear error naming the file."""

from __future__ import annotations

import gzip
import os
import stat

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medvl3d.data.io import read_volume, write_like


def _nifti(path, data, affine=None):
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.nii.gz"):
        read_volume(tmp_path / "nope.nii.gz")


def test_truncated_nifti_gz(tmp_path):
    path = _nifti(
        tmp_path / "full.nii.gz", np.random.default_rng(0).normal(size=(32, 32, 32)).astype(np.float32)
    )
    raw = path.read_bytes()
    bad = tmp_path / "truncated.nii.gz"
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=r"truncated\.nii\.gz.*(truncated|corrupt)"):
        read_volume(bad)


def test_2d_image(tmp_path):
    path = _nifti(tmp_path / "slice.nii.gz", np.zeros((16, 16), np.int16))
    with pytest.raises(ValueError, match=r"slice\.nii\.gz: image is 2D"):
        read_volume(path)


def test_4d_image_refused_but_trailing_singleton_squeezed(tmp_path):
    path = _nifti(tmp_path / "series.nii.gz", np.zeros((8, 8, 8, 3), np.int16))
    with pytest.raises(ValueError, match=r"series\.nii\.gz: image is 4D"):
        read_volume(path)
    ok = _nifti(tmp_path / "single.nii.gz", np.zeros((8, 8, 8, 1), np.int16))
    assert read_volume(ok).shape == (8, 8, 8)


def test_nans_in_data(tmp_path):
    data = np.zeros((8, 8, 8), np.float32)
    data[1, 2, 3] = np.nan
    data[4, 4, 4] = np.inf
    path = _nifti(tmp_path / "nan.nii.gz", data)
    with pytest.raises(ValueError, match=r"nan\.nii\.gz: 2 voxels are NaN or infinite"):
        read_volume(path)


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "volume.png"
    path.write_bytes(b"x")
    with pytest.raises(ValueError, match="unsupported file type"):
        read_volume(path)


def _write_series(folder, uid, z0, modality="CT"):
    """A 4-slice DICOM series written with SimpleITK (LPS origin, 1 x 1 x 2 mm)."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(4):
        img = sitk.GetImageFromArray(np.full((6, 5), 100 * k - 1000, np.int16))
        img.SetSpacing((1.0, 1.0))
        tags = {
            "0008|0060": modality,
            "0020|000e": uid,
            "0020|000d": "1.2.3",
            "0020|0032": f"0\\0\\{z0 + 2.0 * k}",
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0020|0013": str(k + 1),
            "0028|0030": "1\\1",
            "0018|0050": "2",
            "0008|0018": f"{uid}.{k + 1}",
        }
        for key, value in tags.items():
            img.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"{uid}_{k}.dcm"))
        writer.Execute(img)


def test_dicom_folder_with_two_series(tmp_path):
    folder = tmp_path / "dicom"
    _write_series(folder, "1.2.826.0.1.1", 0.0)
    _write_series(folder, "1.2.826.0.1.2", 50.0)
    with pytest.raises(
        ValueError, match=r"dicom: folder holds 2 DICOM series.*1\.2\.826\.0\.1\.1.*1\.2\.826\.0\.1\.2"
    ):
        read_volume(folder)
    vol = read_volume(folder, series_uid="1.2.826.0.1.2")
    assert vol.shape == (5, 6, 4)
    assert vol.spacing == pytest.approx((1.0, 1.0, 2.0))
    assert vol.modality == "CT"
    # first stored voxel at LPS (0, 0, 50) = RAS (0, 0, 50); after the x/y flips it is RAS voxel (4, 5, 0)
    np.testing.assert_allclose(vol.affine @ [4, 5, 0, 1], [0, 0, 50, 1], atol=1e-6)
    np.testing.assert_allclose(vol.affine @ [0, 0, 3, 1], [-4, -5, 56, 1], atol=1e-6)
    np.testing.assert_array_equal(vol.array[0, 0, :], [-1000, -900, -800, -700])


def test_write_like_refuses_wrong_shape(tmp_path):
    vol = read_volume(_nifti(tmp_path / "img.nii.gz", np.zeros((8, 9, 10), np.int16)))
    with pytest.raises(ValueError, match=r"does not match the reference grid \(8, 9, 10\)"):
        write_like(np.zeros((8, 9, 11), np.uint8), vol, tmp_path / "mask.nii.gz")


def test_gz_that_is_not_gzip(tmp_path):
    path = tmp_path / "plain.nii.gz"
    path.write_bytes(gzip.compress(b"")[:5])
    with pytest.raises(ValueError, match=r"plain\.nii\.gz"):
        read_volume(path)


def test_int64_mask_is_written_compactly_and_reads_back(tmp_path):
    # Masks from torch argmax are int64: nibabel refuses those without a header, so they are narrowed.
    import numpy as np

    from medvl3d.data.io import Volume, read_volume, write_volume

    mask = np.zeros((4, 5, 6), dtype=np.int64)
    mask[1:3, 2:4, 3:5] = 300
    vol = Volume(
        array=mask,
        affine=np.diag([2.0, 2.0, 3.0, 1.0]),
        spacing=(2.0, 2.0, 3.0),
        orientation="RAS",
        modality="unknown",
        path=None,
    )
    out = write_volume(vol, tmp_path / "mask.nii.gz")
    back = read_volume(out)
    assert back.array.dtype == np.uint16
    for big in (np.array(2**40, dtype=np.int64), np.array(2**63 + 5, dtype=np.uint64)):
        wide = Volume(**{**vol.__dict__, "array": np.full((4, 5, 6), big)})
        with pytest.raises(ValueError, match="big.nii.gz: integer values outside the int32 range"):
            write_volume(wide, tmp_path / "big.nii.gz")
    assert not (tmp_path / "big.nii.gz").exists()
    assert np.array_equal(back.array, mask)


@pytest.mark.parametrize("suffix", [".nhdr", ".mhd", ".MHD"])
def test_two_file_formats_are_refused_for_writing(tmp_path, suffix, monkeypatch):
    # A header + separate data file cannot be written atomically through a temporary name (the data
    # file would be named after the temporary), so writing refuses them and names single-file formats.
    import medvl3d.data.io as io_mod
    from medvl3d.data.io import write_volume

    vol = read_volume(_nifti(tmp_path / "img.nii.gz", np.zeros((4, 5, 6), np.int16)))
    out = tmp_path / "out" / f"mask{suffix}"

    def no_reorientation(*args, **kwargs):
        raise AssertionError("a whole volume was reoriented before the output type was checked")

    monkeypatch.setattr(io_mod, "reorient_array", no_reorientation)
    for write in (lambda: write_volume(vol, out), lambda: write_like(vol.array, vol, out)):
        with pytest.raises(ValueError, match=rf"mask\{suffix}: .*two files.*\.nii\.gz.*\.nrrd.*\.mha") as err:
            write()
        assert "atomically" in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.nii.gz"]  # nothing created, not even out/


def test_unknown_output_type_is_refused(tmp_path):
    from medvl3d.data.io import write_volume

    vol = read_volume(_nifti(tmp_path / "img.nii.gz", np.zeros((4, 5, 6), np.int16)))
    with pytest.raises(ValueError, match=r"mask\.png: unsupported output type; use one of \.nii\.gz"):
        write_volume(vol, tmp_path / "mask.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.nii.gz"]


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_written_volume_follows_the_umask_and_leaves_no_temporary(tmp_path, suffix):
    from medvl3d.data.io import write_volume

    vol = read_volume(_nifti(tmp_path / "img.nii.gz", np.arange(120, dtype=np.int16).reshape(4, 5, 6)))
    old = os.umask(0o027)
    try:
        out = write_volume(vol, tmp_path / f"copy{suffix}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o640  # not mkstemp's owner-only 0600
    np.testing.assert_array_equal(read_volume(out).array, vol.array)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["img.nii.gz", f"copy{suffix}"])
