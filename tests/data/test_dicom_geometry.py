"""DICOM slice geometry: a series whose slices do not form an even stack is refused with one line naming
the series and the slice files, never read into a volume with a wrong spacing or orientation; on request
an uneven stack is resampled onto an even grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from medvl3d.cli import main
from medvl3d.data.io import read_volume

UID = "1.2.826.0.1.7"
AXIAL = "1\\0\\0\\0\\1\\0"


def _write_slice(path: Path, value: int, z: float, *, k: int, orient=AXIAL, shape=(6, 5), x0=0.0):
    img = sitk.GetImageFromArray(np.full(shape, value, np.int16))
    img.SetSpacing((1.0, 1.0))
    tags = {
        "0008|0060": "CT",
        "0020|000e": UID,
        "0020|000d": "1.2.3",
        "0020|0037": orient,
        "0020|0013": str(k + 1),
        "0028|0030": "1\\1",
        "0018|0050": "2",
        "0008|0018": f"{UID}.{k + 1}",  # a new SOPInstanceUID per file, duplicates included
        "0020|0032": f"{x0}\\0\\{z}",
    }
    for key, val in tags.items():
        img.SetMetaData(key, val)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetFileName(str(path))
    writer.Execute(img)


def write_series(folder: Path, zs=(0, 2, 4, 6, 8, 10), **per_slice) -> Path:
    """One file per position in ``zs`` (slice k holds 100 k - 1000 HU); ``per_slice`` maps a keyword of
    ``_write_slice`` to a function of the slice number k."""
    folder.mkdir(parents=True, exist_ok=True)
    for k, z in enumerate(zs):
        extra = {name: fn(k) for name, fn in per_slice.items()}
        _write_slice(folder / f"s_{k:03d}.dcm", 100 * k - 1000, float(z), k=k, **extra)
    return folder


def test_an_even_series_reads_as_before(tmp_path):
    vol = read_volume(write_series(tmp_path / "ok"))
    assert vol.shape == (5, 6, 6) and vol.spacing == pytest.approx((1.0, 1.0, 2.0))
    assert vol.orientation == "LPS"
    np.testing.assert_array_equal(vol.array[0, 0], [-1000, -900, -800, -700, -600, -500])


def test_a_duplicated_slice_is_refused(tmp_path):
    folder = write_series(tmp_path / "dup")
    _write_slice(folder / "s_100.dcm", -700, 6.0, k=99)  # slice 3 again, under a new SOPInstanceUID
    with pytest.raises(ValueError) as err:
        read_volume(folder)
    msg = str(err.value)
    assert msg.startswith(f"{folder}: series '{UID}': 1 duplicated slice(s)")
    assert "s_003.dcm" in msg and "s_100.dcm" in msg and "6 mm along the slice normal" in msg


def test_a_missing_middle_slice_is_a_gap(tmp_path):
    folder = write_series(tmp_path / "gap")
    (folder / "s_003.dcm").unlink()
    with pytest.raises(
        ValueError, match=r"gap of 4 mm where the other slices are 2 mm apart \(a missing slice\)"
    ):
        read_volume(folder)


def test_an_unreadable_middle_slice_is_named(tmp_path):
    folder = write_series(tmp_path / "broken")
    broken = folder / "s_003.dcm"
    broken.write_bytes(broken.read_bytes()[:200])  # truncated: the series reader skips it silently
    with pytest.raises(ValueError, match=r"gap of 4 mm .*unreadable files in the folder: s_003\.dcm"):
        read_volume(folder)


def test_uneven_increments_are_refused(tmp_path):
    folder = write_series(tmp_path / "uneven", zs=(0, 2, 4, 5, 7, 9))
    with pytest.raises(
        ValueError, match=r"uneven slice increments \(1 to 2 mm, mostly 2 mm\), between s_002"
    ):
        read_volume(folder)


def test_mixed_orientations_are_refused(tmp_path):
    folder = write_series(tmp_path / "mixed", orient=lambda k: AXIAL if k < 3 else "0\\1\\0\\1\\0\\0")
    with pytest.raises(ValueError, match=r"mixed slice orientations \(ImageOrientationPatient"):
        read_volume(folder)


def test_a_tilted_stack_is_refused(tmp_path):
    folder = write_series(tmp_path / "tilt", x0=lambda k: 0.5 * k)  # gantry tilt: each slice shifted in x
    with pytest.raises(
        ValueError, match=r"not stacked along their normal \(0\.5 mm in-plane shift .*gantry tilt"
    ):
        read_volume(folder)


def test_slices_without_a_position_are_refused(tmp_path):
    import pydicom

    folder = write_series(tmp_path / "nopos")
    ds = pydicom.dcmread(folder / "s_002.dcm")
    del ds.ImagePositionPatient
    ds.save_as(folder / "s_002.dcm")
    with pytest.raises(ValueError, match=r"s_002\.dcm has no ImagePositionPatient"):
        read_volume(folder)


def test_a_gap_is_resampled_on_request(tmp_path):
    full = read_volume(write_series(tmp_path / "full"))
    folder = write_series(tmp_path / "gap")
    (folder / "s_003.dcm").unlink()
    vol = read_volume(folder, uneven_slices="resample")
    assert vol.shape == full.shape and vol.spacing == pytest.approx(full.spacing)
    np.testing.assert_allclose(vol.affine, full.affine, atol=1e-6)
    np.testing.assert_allclose(vol.array, full.array)  # the missing slice lay halfway between its neighbours


def test_uneven_increments_resample_onto_the_smallest(tmp_path):
    vol = read_volume(write_series(tmp_path / "uneven", zs=(0, 2, 4, 5, 7, 9)), uneven_slices="resample")
    assert vol.shape[2] == 10 and vol.spacing[2] == pytest.approx(1.0)
    # slices at z = 0, 2, 4, 5 hold -1000, -900, -800, -700: z = 1 lies halfway, z = 5 is a slice
    np.testing.assert_allclose(vol.array[0, 0, [0, 1, 2, 4, 5]], [-1000, -950, -900, -800, -700])
    np.testing.assert_allclose(vol.affine @ [0, 0, 9, 1], [-4, -5, 9, 1], atol=1e-6)


def test_the_cli_refuses_in_one_line_and_resamples_on_request(tmp_path, capsys):
    folder = write_series(tmp_path / "gap")
    (folder / "s_003.dcm").unlink()
    assert main(["info", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"medvl3d info: error: {folder}: series")
    assert "--uneven-slices resample" in err
    assert main(["info", str(folder), "--uneven-slices", "resample", "--json"]) == 0
    assert '"spacing": [\n  1.0,\n  1.0,\n  2.0\n ]' in capsys.readouterr().out
