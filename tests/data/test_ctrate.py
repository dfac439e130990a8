"""CT-RATE layout: fixed vs raw roots (intercept applied exactly once), CSVs, exclusions."""

from __future__ import annotations

import csv
import warnings

import numpy as np
import pytest

from medvl3d.data.datasets import CTRateDataset, open_dataset
from medvl3d.data.datasets.ctrate import plausible_hu
from medvl3d.schema import CTRATE_LABELS
from medvl3d.text.reports import find_mentions, join_report


def _write_csv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


@pytest.fixture
def ctrate(tmp_path, phantom, nifti):
    """train_1_a_1 fixed (HU, correct header), train_2_a_1 raw (stored = HU + 1024, 1 mm header),
    train_3_a_1 raw but already in HU (the trap), train_4_a_1 a head CT to exclude."""
    root = tmp_path / "ctrate"
    hu = {n: phantom(seed=n) for n in range(1, 5)}
    nifti(root / "train_fixed/train_1/train_1_a/train_1_a_1.nii.gz", hu[1], np.diag([0.7, 0.7, 1.5, 1.0]))
    nifti(root / "train/train_2/train_2_a/train_2_a_1.nii.gz", (hu[2] + 1024).astype(np.int16), np.eye(4))
    nifti(root / "train/train_3/train_3_a/train_3_a_1.nii.gz", hu[3], np.eye(4))
    nifti(root / "train_fixed/train_4/train_4_a/train_4_a_1.nii.gz", hu[4], np.diag([0.7, 0.7, 1.5, 1.0]))
    reports = root / "dataset/radiology_text_reports/train_reports.csv"
    _write_csv(
        reports,
        ["VolumeName", "ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN"],
        [
            ["train_1_a_1.nii.gz", "Cough.", "Non-contrast.", "Small left effusion.", "Effusion."],
            ["train_2_a_1.nii.gz", "", "", "Lungs clear.", ""],
        ],
    )
    _write_csv(
        root / "dataset/multi_abnormality_labels/train_predicted_labels.csv",
        ["VolumeName", *CTRATE_LABELS],
        [["train_1_a_1.nii.gz", *[1 if n == "Pleural effusion" else 0 for n in CTRATE_LABELS]]],
    )
    _write_csv(
        root / "dataset/metadata/train_metadata.csv",
        ["VolumeName", "XYSpacing", "ZSpacing", "RescaleSlope", "RescaleIntercept"],
        [[f"train_{n}_a_1.nii.gz", "[0.75, 0.75]", "2.5", "1", "-1024"] for n in range(1, 5)],
    )
    (root / "exclude.txt").write_text("train_4_a_1.nii.gz\n", encoding="utf-8")
    return root, hu


def test_fixed_and_raw_volumes_end_in_hu_once(ctrate):
    root, hu = ctrate
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = CTRateDataset(root, "train", exclude=root / "exclude.txt")
        samples = {cid: ds[i] for i, cid in enumerate(ds.case_ids)}
    assert ds.case_ids == ["train_1_a_1", "train_2_a_1", "train_3_a_1"]  # head CT excluded
    # fixed: as stored (already HU); raw: stored + intercept; raw-but-HU: guard keeps it
    for n in (1, 2, 3):
        np.testing.assert_array_equal(samples[f"train_{n}_a_1"]["image"][0].numpy(), hu[n])
    assert samples["train_1_a_1"]["meta"]["spacing"] == pytest.approx([0.7, 0.7, 1.5])  # fixed header
    assert samples["train_2_a_1"]["meta"]["spacing"] == pytest.approx([0.75, 0.75, 2.5])  # metadata CSV
    msgs = [str(w.message) for w in caught]
    assert any("train_3_a_1.nii.gz: raw volume already in HU" in m for m in msgs)
    assert any("1 volume(s) without report and 2 without labels" in m for m in msgs)


def test_reports_labels_and_missing_entries(ctrate):
    root, _ = ctrate
    with pytest.warns(UserWarning, match="without report"):
        ds = CTRateDataset(root, "train", exclude=["train_4_a_1"])
    with pytest.warns(UserWarning, match="already in HU"):
        s1, s3 = ds[0], ds[2]
    # Joined with headers, exactly as join_report (the form the labeller is tested on).
    assert s1["report"] == "FINDINGS: Small left effusion.\nIMPRESSION: Effusion."
    assert s1["report"] == join_report("Small left effusion.", "Effusion.")
    assert ds[1]["report"] == "FINDINGS: Lungs clear."  # an empty impression adds no header
    assert s1["labels"]["Pleural effusion"] == 1 and sum(s1["labels"].values()) == 1
    assert list(s1["labels"]) == list(CTRATE_LABELS)
    assert s1["meta"]["clinical_information"] == "Cough." and s1["meta"]["modality"] == "CT"
    assert s3["report"] == "" and s3["labels"] == {}


def test_loader_text_reaches_the_labeller_with_its_sections(ctrate):
    """The impression of a loaded report is read as the impression (the labeller weights it more)."""
    root, _ = ctrate
    with pytest.warns(UserWarning, match="without report"):
        ds = CTRateDataset(root, "train", exclude=["train_4_a_1"])
    report = ds.records[0].report
    found = [(m.finding, m.section, m.affirmed) for m in find_mentions(report)]
    assert found == [("Pleural effusion", "findings", True), ("Pleural effusion", "impression", True)]


def test_open_dataset_detects_ctrate(ctrate):
    root, _ = ctrate
    with pytest.warns(UserWarning):
        ds = open_dataset(root)
    assert isinstance(ds, CTRateDataset) and len(ds) == 4


def test_plausible_hu():
    x, y, _ = np.meshgrid(*[np.linspace(-1, 1, n) for n in (40, 40, 8)], indexing="ij")
    hu = np.where(x**2 + y**2 < 0.7, 40.0, -1000.0)
    hu[x**2 + y**2 > 0.95] = -3024  # padding outside the scan circle
    assert plausible_hu(hu)
    assert not plausible_hu(hu - 1024)  # intercept applied twice
    assert not plausible_hu(hu + 1024)  # stored values, intercept never applied


def test_missing_root_and_split(tmp_path):
    with pytest.raises(FileNotFoundError, match="CT-RATE root not found"):
        CTRateDataset(tmp_path / "nope")
    with pytest.raises(ValueError, match=r"no 'valid/' or 'valid_fixed/'"):
        CTRateDataset(tmp_path, "valid")


def test_label_maps_beside_volumes_are_not_cases_but_can_be_labels(ctrate, nifti):
    root, hu = ctrate
    folder = root / "train_fixed/train_1/train_1_a"
    nifti(
        folder / "train_1_a_1_lesions.nii.gz", (hu[1] > 300).astype(np.uint8), np.diag([0.7, 0.7, 1.5, 1.0])
    )
    ds = CTRateDataset(root, "train", exclude=["train_2_a_1", "train_3_a_1", "train_4_a_1"])
    assert ds.case_ids == ["train_1_a_1"] and "label" not in ds[0]
    labelled = CTRateDataset(
        root, "train", exclude=["train_2_a_1", "train_3_a_1", "train_4_a_1"], label_suffix="_lesions"
    )
    np.testing.assert_array_equal(labelled[0]["label"][0].numpy(), (hu[1] > 300).astype(np.int64))


def test_rescale_slope_and_intercept_values_are_exact(tmp_path, phantom, nifti):
    """Non-trivial slope/intercept: raw volumes give float32 ``stored * slope + inter`` (float32 arithmetic,
    as before the in-place rewrite), reoriented to RAS; a not-HU fixed volume gets the float64 rescale."""
    root = tmp_path / "ctrate"
    slope, inter = 0.3, -1000.25
    hu = phantom(seed=5)
    stored = np.round((hu.astype(np.float64) - inter) / slope).astype(np.int16)  # up to ~5700: int16
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])  # x and y flipped relative to RAS: reorienting copies
    nifti(root / "train/train_5/train_5_a/train_5_a_1.nii.gz", stored, lps)
    nifti(root / "train_fixed/train_6/train_6_a/train_6_a_1.nii.gz", stored, np.eye(4))
    _write_csv(
        root / "metadata/train_metadata.csv",
        ["VolumeName", "XYSpacing", "ZSpacing", "RescaleSlope", "RescaleIntercept"],
        [[f"train_{n}_a_1.nii.gz", "[0.75, 0.8]", "2.5", str(slope), str(inter)] for n in (5, 6)],
    )
    with pytest.warns(UserWarning, match="without report"):
        ds = CTRateDataset(root, "train")
    raw = ds.load_image(ds.records[0])
    expected = (stored.astype(np.float32) * slope + inter)[::-1, ::-1, :]
    assert raw.array.dtype == np.float32 and raw.orientation == "LPS"
    np.testing.assert_array_equal(raw.array, expected)
    assert abs(raw.array - hu[::-1, ::-1, :]).max() <= slope / 2 + 1e-3  # back in HU up to rounding
    assert raw.spacing == pytest.approx((0.75, 0.8, 2.5))
    with pytest.warns(UserWarning, match="in a \\*_fixed root but not in HU"):
        fixed = ds.load_image(ds.records[1])
    assert fixed.array.dtype == np.float32
    np.testing.assert_array_equal(fixed.array, (stored * slope + inter).astype(np.float32))
    assert not np.array_equal(fixed.array, raw.array[::-1, ::-1, :])  # float64 vs float32 arithmetic


def test_raw_volume_with_integer_rescale_stays_int16_and_file_values_are_untouched(ctrate):
    root, hu = ctrate
    with pytest.warns(UserWarning):
        ds = CTRateDataset(root, "train", exclude=["train_1_a_1", "train_3_a_1", "train_4_a_1"])
    vol = ds.load_image(ds.records[0])
    assert vol.array.dtype == np.int16
    np.testing.assert_array_equal(vol.array, hu[2])
    again = ds.load_image(ds.records[0])  # the rescale happened on a copy, not on anything cached
    np.testing.assert_array_equal(again.array, hu[2])


@pytest.mark.parametrize("slope, inter, dtype", [(0.3, -1000.25, np.float32), (1.0, -1024.0, np.int16)])
def test_raw_load_peak_memory(tmp_path, phantom, nifti, slope, inter, dtype):
    """Peak numpy memory of a raw load, in units of the stored int16 volume: 5.0 with the former
    out-of-place rescale and C-order copy; now the gzip read (~3.5), or one float32 array plus its
    flipped copy (4.0)."""
    import tracemalloc

    root = tmp_path / "ctrate"
    stored = np.round((phantom(shape=(128, 128, 32)) - inter) / slope).astype(np.int16)
    nifti(root / "train/train_7/train_7_a/train_7_a_1.nii.gz", stored, np.diag([-1.0, -1.0, 1.0, 1.0]))
    _write_csv(
        root / "metadata/train_metadata.csv",
        ["VolumeName", "XYSpacing", "ZSpacing", "RescaleSlope", "RescaleIntercept"],
        [["train_7_a_1.nii.gz", "[0.75, 0.75]", "2.5", str(slope), str(inter)]],
    )
    with pytest.warns(UserWarning, match="without report"):
        ds = CTRateDataset(root, "train")
    tracemalloc.start()
    try:
        vol = ds.load_image(ds.records[0])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert vol.array.dtype == dtype
    np.testing.assert_array_equal(vol.array, (stored.astype(np.float32) * slope + inter)[::-1, ::-1])
    assert peak / stored.nbytes < 4.5
