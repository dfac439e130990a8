"""SynthCT-VL writes the real CT-RATE, MSD and JSONL layouts, with correct geometry, reproducibly."""

from __future__ import annotations

import csv
import gzip
import json

import nibabel as nib
import numpy as np

from medvl3d.data.synth import generate
from medvl3d.data.synth.phantom import ORGAN_LABELS
from medvl3d.schema import CTRATE_LABELS


def _rows(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def test_ctrate_tables_and_volumes(tiny_set):
    out, summary = tiny_set
    assert summary["n_train"] == 4 and summary["n_test"] == 4
    for split in ("train", "valid"):
        rep = _rows(out / "radiology_text_reports" / f"{split}_reports.csv")
        assert rep[0] == [
            "VolumeName",
            "ClinicalInformation_EN",
            "Technique_EN",
            "Findings_EN",
            "Impressions_EN",
        ]
        names = [r[0] for r in rep[1:]]
        assert names == [f"{split}_{p}_a_1.nii.gz" for p in range(1, 5)]
        assert all(r[3] and r[4] for r in rep[1:])
        lab = _rows(out / "multi_abnormality_labels" / f"{split}_predicted_labels.csv")
        assert lab[0] == ["VolumeName", *CTRATE_LABELS]
        assert all(v in ("0", "1") for r in lab[1:] for v in r[1:])
        meta = _rows(out / "metadata" / f"{split}_metadata.csv")
        assert meta[0][:5] == ["VolumeName", "XYSpacing", "ZSpacing", "RescaleSlope", "RescaleIntercept"]
        assert meta[1][1:5] == ["[7.5, 7.5]", "10", "1", "0"]
        for p in range(1, 5):
            folder = out / split / f"{split}_{p}" / f"{split}_{p}_a"
            for suffix in ("", "_organs", "_lesions", "_vessels"):
                assert (folder / f"{split}_{p}_a_1{suffix}.nii.gz").is_file()


def test_nifti_geometry_and_dtype(tiny_set):
    out, _ = tiny_set
    base = out / "train" / "train_1" / "train_1_a" / "train_1_a_1"
    img = nib.load(f"{base}.nii.gz")
    # --size DxHxW = 32x48x48 -> array (W, H, D); RAS with diag(+sx, +sy, +sz).
    assert img.shape == (48, 48, 32)
    assert img.get_data_dtype() == np.int16
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    np.testing.assert_allclose(np.diag(img.affine)[:3], [7.5, 7.5, 10.0])
    slope, inter = img.header.get_slope_inter()
    assert slope in (None, 1.0) and inter in (None, 0.0)
    ct = np.asarray(img.dataobj)
    assert ct.min() >= -1024 and ct.max() <= 3071
    for suffix in ("_organs", "_lesions", "_vessels"):
        lab = nib.load(f"{base}{suffix}.nii.gz")
        assert lab.shape == img.shape
        np.testing.assert_allclose(lab.affine, img.affine)
    organs = np.asarray(nib.load(f"{base}_organs.nii.gz").dataobj)
    # Every organ of the torso is present in a whole-torso field of view.
    assert set(np.unique(organs)) - {0} == set(ORGAN_LABELS)
    # Patient right is +x in RAS: the liver lies right of the spleen.
    liver_x = np.argwhere(organs == 1)[:, 0].mean()
    spleen_x = np.argwhere(organs == 2)[:, 0].mean()
    assert liver_x > spleen_x


def test_msd_manifest_and_split_files(tiny_set):
    out, _ = tiny_set
    ds = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    assert (
        ds["modality"] == {"0": "CT"} and ds["labels"]["1"] == "liver" and ds["labels"]["0"] == "background"
    )
    assert ds["numTraining"] == 4 and ds["numTest"] == 4
    for name, suffix in (
        ("dataset.json", "_organs"),
        ("dataset_lesions.json", "_lesions"),
        ("dataset_vessels.json", "_vessels"),
    ):
        doc = json.loads((out / name).read_text(encoding="utf-8"))
        for entry in doc["training"] + doc["test"]:
            assert entry["image"].startswith("./") and entry["label"].endswith(f"{suffix}.nii.gz")
            assert (out / entry["image"]).is_file() and (out / entry["label"]).is_file()
    vessels = json.loads((out / "dataset_vessels.json").read_text(encoding="utf-8"))["labels"]
    assert vessels == {"0": "background", "1": "pulmonary_artery", "2": "pulmonary_vein", "3": "airway"}
    keys = {
        "case_id",
        "image",
        "label",
        "organs",
        "vessels",
        "report",
        "labels",
        "lesions",
        "modality",
        "split",
        "phase",
    }
    for split in ("train", "valid"):
        lines = (out / f"manifest_{split}.jsonl").read_text(encoding="utf-8").splitlines()
        assert len(lines) == 4
        for line in lines:
            row = json.loads(line)
            assert set(row) == keys and row["split"] == split and row["modality"] == "CT"
            assert set(row["labels"]) == set(CTRATE_LABELS)
    splits = json.loads((out / "splits.json").read_text(encoding="utf-8"))
    assert set(splits) >= {"lesion_types", "abnormalities", "seed", "args"}
    assert splits["seed"] == 3 and splits["args"]["size"] == [32, 48, 48]
    labels = json.loads((out / "labels.json").read_text(encoding="utf-8"))
    assert labels["organs"]["1"] == "liver" and labels["vessels"]["3"] == "airway"


def _all_files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_bytes_serial_vs_parallel_and_seed_changes(tmp_path):
    kw = dict(n_train=2, n_test=1, size=(24, 40, 40), spacing=(12.0, 9.0, 9.0), progress=False)
    a = generate(tmp_path / "a", seed=11, workers=1, **kw)
    generate(tmp_path / "b", seed=11, workers=2, **kw)
    fa, fb = _all_files(tmp_path / "a"), _all_files(tmp_path / "b")
    assert fa.keys() == fb.keys() and len(fa) > 20
    assert [k for k in fa if fa[k] != fb[k]] == []
    # gzip headers carry no timestamp (bytes 4-8 are the mtime).
    ct = next(k for k in fa if str(k).endswith("_a_1.nii.gz"))
    assert fa[ct][4:8] == b"\x00\x00\x00\x00"
    assert gzip.decompress(fa[ct])[:4] == (348).to_bytes(4, "little")
    generate(tmp_path / "c", seed=12, workers=1, **kw)
    fc = _all_files(tmp_path / "c")
    assert fa[ct] != fc[ct]
    assert a["n_train"] == 2
