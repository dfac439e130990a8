"""Volume I/O on the real TotalSegmentator cases in ../shared/data/real/totalseg/."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from medvl3d.data.io import read_volume, write_like, write_volume


@pytest.fixture(scope="module")
def ts(real_dir):
    return real_dir / "totalseg"


@pytest.fixture(scope="module")
def dicom(ts):
    """The JPEG 2000 DICOM series, decoded once for the module (about 1 s)."""
    return read_volume(ts / "dicom_series")


def test_ct_crop_geometry_and_hu(ts):
    vol = read_volume(ts / "example_ct_sm.nii.gz")
    assert vol.shape == (122, 101, 30)
    assert vol.spacing == pytest.approx((3.0, 3.0, 3.0))
    assert vol.orientation == "RAS" and vol.axcodes == "RAS"
    assert vol.modality == "CT"
    assert vol.array.dtype == np.int16  # native HU, no float copy
    # the header's affine, untouched (already RAS)
    np.testing.assert_array_equal(vol.affine, nib.load(ts / "example_ct_sm.nii.gz").affine)


def test_mr_geometry(ts):
    vol = read_volume(ts / "example_mr_sm.nii.gz")
    src = nib.load(ts / "example_mr_sm.nii.gz")
    assert vol.orientation == "LPS" and vol.axcodes == "RAS"
    assert vol.shape == (117, 91, 20) and vol.spacing == pytest.approx((3.0, 3.0, 3.0))
    assert vol.modality == "MR"
    # LPS -> RAS flips x and y: RAS voxel (0, 0, 0) is source voxel (116, 90, 0), same world point.
    src_data = np.asanyarray(src.dataobj)
    assert vol.array[0, 0, 5] == src_data[116, 90, 5]
    np.testing.assert_allclose(vol.affine @ [0, 0, 5, 1], src.affine @ [116, 90, 5, 1])


def test_dicom_series_geometry_matches_its_segmentation(ts, dicom):
    vol = dicom
    seg = read_volume(ts / "example_seg_dicom.nii.gz")
    assert vol.shape == (512, 512, 20)
    assert vol.spacing == pytest.approx((0.9765625, 0.9765625, 2.0))
    assert vol.modality == "CT"  # from the DICOM Modality tag
    assert vol.orientation == "LPS"  # identity direction cosines in DICOM's LPS world
    assert seg.orientation == "LAS"
    assert seg.shape == vol.shape
    np.testing.assert_allclose(seg.affine, vol.affine, atol=1e-4)
    # JPEG 2000 decoded and rescaled to HU once: air outside the body at about -1000 HU, bone > 1000
    assert vol.array.min() >= -1100 and np.median(vol.array[:20, :20]) < -900
    assert vol.array.max() > 1000


def _ids(ts, prefixes: tuple[str, ...]) -> list[int]:
    cmap = json.loads((ts / "ts_class_map.json").read_text(encoding="utf-8"))["total"]
    return [int(k) for k, v in cmap.items() if v.startswith(prefixes)]


@pytest.mark.parametrize(
    "organ, prefixes, lo, hi",
    [
        ("liver", ("liver",), 20, 200),
        ("spleen", ("spleen",), 20, 200),
        # 3 mm voxels: partial volume with perirenal fat pulls the non-contrast kidney mean (~30 HU) down
        ("kidneys", ("kidney_left", "kidney_right"), 0, 200),
        ("lungs", ("lung_",), -1000, -500),
        ("vertebrae", ("vertebrae_",), 150, 700),
    ],
)
def test_mean_hu_inside_organs_is_physiological(ts, organ, prefixes, lo, hi):
    vol = read_volume(ts / "example_ct_sm.nii.gz")
    seg = read_volume(ts / "example_seg.nii.gz")
    mask = np.isin(seg.array, _ids(ts, prefixes))
    if mask.sum() < 20:
        pytest.skip(f"{organ} not present in the CT crop")
    mean = float(vol.array[mask].mean())
    assert lo < mean < hi, f"{organ}: mean HU {mean:.0f} outside [{lo}, {hi}]"


def test_lps_ct_reoriented_and_written_back_is_identical(ts, tmp_path):
    src_path = ts / "pulmonary" / "ct_cropped.nii.gz"
    vol = read_volume(src_path)
    assert vol.orientation == "LPS" and vol.axcodes == "RAS"
    out = write_like(vol.array, vol, tmp_path / "back.nii.gz")
    src, back = nib.load(src_path), nib.load(out)
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), np.asanyarray(src.dataobj))
    np.testing.assert_array_equal(back.affine, src.affine)
    np.testing.assert_array_equal(back.header.get_sform(), src.header.get_sform())
    np.testing.assert_array_equal(back.header.get_qform(), src.header.get_qform())


def test_mask_written_back_overlays_the_label_file(ts, tmp_path):
    """A mask computed on the RAS grid of the pulmonary CT lands on the same voxels as the source label."""
    ct = read_volume(ts / "pulmonary" / "ct_cropped.nii.gz")
    label = read_volume(ts / "pulmonary" / "pulmonary_artery.nii.gz")
    mask = (label.array > 0).astype(np.uint8)
    out = write_like(mask, ct, tmp_path / "mask.nii.gz")
    src = nib.load(ts / "pulmonary" / "pulmonary_artery.nii.gz")
    written = nib.load(out)
    np.testing.assert_array_equal(
        np.asanyarray(written.dataobj), (np.asanyarray(src.dataobj) > 0).astype(np.uint8)
    )
    np.testing.assert_array_equal(written.affine, src.affine)


def test_dicom_mask_written_back_in_source_geometry(ts, dicom, tmp_path):
    vol = dicom
    seg = read_volume(ts / "example_seg_dicom.nii.gz")
    out = write_like(seg.array, vol, tmp_path / "seg.nii.gz")
    back = read_volume(out)
    assert back.orientation == "LPS"  # DICOM's own voxel order
    np.testing.assert_array_equal(back.array, seg.array)
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-4)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_write_read_round_trip_preserves_affine_exactly(ts, tmp_path, suffix):
    vol = read_volume(ts / "example_mr_sm.nii.gz")
    path = write_volume(vol, tmp_path / f"rt{suffix}")
    back = read_volume(path)
    np.testing.assert_array_equal(back.affine, vol.affine)
    np.testing.assert_array_equal(back.array, vol.array)
    assert not list(tmp_path.glob(".*")), "temporary files left behind"
