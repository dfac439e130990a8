"""CT-RATE layout: fixed vs raw roots (intercept applied exactly once), CSVs, exclusions."""

from __future__ import annotations

import csv
import warnings

import numpy as np
import pytest

from medvl3d.data.datasets import CTRateDataset, open_dataset
from medvl3d.data.datasets.ctrate import plausible_hu
from medvl3d.schema import CTRATE_LABELS


def _write_csv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
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
    assert s1["report"] == "Small left effusion.\nEffusion."
    assert s1["labels"]["Pleural effusion"] == 1 and sum(s1["labels"].values()) == 1
    assert list(s1["labels"]) == list(CTRATE_LABELS)
    assert s1["meta"]["clinical_information"] == "Cough." and s1["meta"]["modality"] == "CT"
    assert s3["report"] == "" and s3["labels"] == {}


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
