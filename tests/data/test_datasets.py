"""Dataset layouts: MSD, KiTS23, JSONL manifests, layout detection and their bad-input errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medvl3d.data.datasets import JsonlDataset, KiTSDataset, MSDDataset, detect_layout, open_dataset
from medvl3d.data.preprocess import PreprocessSpec


def test_msd_samples(msd_task):
    ds = MSDDataset(msd_task)
    assert ds.case_ids == ["tiny_000", "tiny_001", "tiny_002"]  # the '._' entry is skipped
    s = ds[0]
    assert s["image"].shape == (1, 24, 20, 16) and s["image"].dtype == torch.float32
    assert s["label"].dtype == torch.int64 and s["label"].shape == s["image"].shape
    assert torch.equal(s["label"][0], (s["image"][0] > 0).long())
    assert s["report"] == "A 2 cm lesion." and s["labels"] == {"Lung nodule": 1}
    assert s["lesions"] == {1: {"type": "cyst"}}
    assert s["meta"]["modality"] == "CT" and s["meta"]["case_id"] == "tiny_000"
    assert s["meta"]["label_names"] == {"0": "background", "1": "body"}
    assert s["meta"]["spacing"] == [1.0, 1.0, 2.0]
    # HU kept: the phantom's air is about -1000
    assert float(s["image"].min()) < -980


def test_msd_float_label_map_is_cast(msd_task):
    s = MSDDataset(msd_task)[1]
    assert s["label"].dtype == torch.int64 and set(s["label"].unique().tolist()) == {0, 1}


def test_msd_instance_maps_read_as_one_class_and_allow_lesion_free_cases(msd_task, nifti):
    """SynthCT-VL's dataset_lesions.json ("label_type": "instance", ids 1..n) keeps its ids in the dataset
    and trains a binary lesion network out of the box; its lesion-free cases are normal, where an empty
    organ map is a wrong file."""
    from medvl3d.data.datasets.base import semantic_label
    from medvl3d.train.tasks.segmentation import PatchSampler, SegAugmentConfig

    info = json.loads((msd_task / "dataset.json").read_text())
    lab = np.zeros((24, 20, 16), np.uint8)
    lab[2:5, 2:5, 2:5], lab[10:12, 10:12, 10:12] = 1, 3  # two lesion instances
    nifti(msd_task / "labelsTr" / "tiny_000.nii.gz", lab)
    nifti(msd_task / "labelsTr" / "tiny_002.nii.gz", np.zeros_like(lab))  # a lesion-free case
    info["training"] = info["training"][:3]
    (msd_task / "organs.json").write_text(json.dumps(info))
    (msd_task / "lesions.json").write_text(json.dumps({**info, "label_type": "instance"}))
    as_instances = MSDDataset(msd_task / "lesions.json")
    assert set(as_instances[0]["label"].unique().tolist()) == {0, 1, 3}  # the ids are kept
    assert as_instances[0]["meta"]["label_type"] == "instance"
    binary = semantic_label(as_instances[0])
    assert set(binary.unique().tolist()) == {0, 1} and int(binary.sum()) == 27 + 8
    organs = MSDDataset(msd_task / "organs.json")
    assert set(semantic_label(organs[0]).unique().tolist()) == {0, 1, 3}  # a class map as it is
    sampler = PatchSampler(2, (16, 16, 16), 0.5, SegAugmentConfig())
    patch = sampler(as_instances[0], seed=0)  # ids 1 and 3 train as class 1
    assert set(patch["label"].unique().tolist()) <= {0, 1}
    sampler(as_instances[2], seed=0)  # no error: no lesion in this case
    with pytest.raises(ValueError, match=r"the label map is empty \(background only\)"):
        sampler(organs[2], seed=0)


def test_msd_test_split_and_json_path(msd_task):
    ds = MSDDataset(msd_task / "dataset.json", split="test")
    assert ds.case_ids == ["tiny_100"] and "label" not in ds[0]


def test_msd_non_integer_float_labels(msd_task, nifti):
    nifti(msd_task / "labelsTr" / "tiny_001.nii.gz", np.full((24, 20, 16), 0.5, np.float32))
    with pytest.raises(ValueError, match=r"tiny_001\.nii\.gz: float label map holds non-integer values"):
        MSDDataset(msd_task)[1]


def test_label_shape_mismatch(msd_task, nifti):
    nifti(msd_task / "labelsTr" / "tiny_002.nii.gz", np.zeros((24, 20, 15), np.uint8))
    with pytest.raises(ValueError, match=r"tiny_002\.nii\.gz: label shape \(24, 20, 15\) differs from image"):
        MSDDataset(msd_task)[2]


def test_label_affine_mismatch(msd_task, nifti):
    shifted = np.diag([1.0, 1.0, 2.0, 1.0])
    shifted[0, 3] = 3.0
    nifti(msd_task / "labelsTr" / "tiny_002.nii.gz", np.zeros((24, 20, 16), np.uint8), shifted)
    with pytest.raises(ValueError, match=r"tiny_002\.nii\.gz: label affine differs .* by up to 3 mm"):
        MSDDataset(msd_task)[2]


def test_msd_split_key_and_transform(msd_task):
    info = json.loads((msd_task / "dataset.json").read_text(encoding="utf-8"))
    info["training"][2]["split"] = "val"
    (msd_task / "dataset_split.json").write_text(json.dumps(info), encoding="utf-8")
    val = MSDDataset(
        msd_task / "dataset_split.json", split="val", transform=PreprocessSpec(spacing=(2, 2, 2))
    )
    assert val.case_ids == ["tiny_002"]
    s = val[0]
    assert (
        s["image"].shape == (1, 12, 10, 16) and 0.0 <= float(s["image"].min()) <= float(s["image"].max()) <= 1
    )
    assert s["label"].shape == s["image"].shape and s["meta"]["split"] == "val"


def test_kits(tmp_path, phantom, nifti):
    for i, with_seg in enumerate([True, False]):
        case = tmp_path / f"case_{i:05d}"
        nifti(case / "imaging.nii.gz", phantom(seed=i))
        if with_seg:
            nifti(case / "segmentation.nii.gz", (phantom(seed=i) > 300).astype(np.uint8) * 2)
    ds = open_dataset(tmp_path)
    assert isinstance(ds, KiTSDataset) and ds.case_ids == ["case_00000", "case_00001"]
    assert set(ds[0]["label"].unique().tolist()) == {0, 2} and "label" not in ds[1]
    assert ds[0]["meta"]["modality"] == "CT"


def test_jsonl_manifest(tmp_path, phantom, nifti):
    nifti(tmp_path / "vols" / "a.nii.gz", phantom())
    nifti(tmp_path / "vols" / "a_seg.nii.gz", (phantom() > 0).astype(np.uint8))
    lines = [
        {
            "image": "vols/a.nii.gz",
            "label": "vols/a_seg.nii.gz",
            "report": "No effusion.",
            "case_id": "A",
            "labels": {"Pleural effusion": 0},
            "lesions": {"1": {"organ": "lung"}},
            "split": "train",
            "site": 3,
        },
        {"image": str(tmp_path / "vols" / "a.nii.gz"), "case_id": "B", "split": "test", "modality": "CT"},
    ]
    manifest = tmp_path / "cases.jsonl"
    manifest.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    ds = open_dataset(manifest)
    assert isinstance(ds, JsonlDataset) and ds.case_ids == ["A", "B"]
    s = ds[0]
    assert s["report"] == "No effusion." and s["labels"] == {"Pleural effusion": 0}
    assert s["lesions"] == {1: {"organ": "lung"}} and s["meta"]["site"] == 3
    assert s["label"].shape == s["image"].shape
    assert JsonlDataset(manifest, split="test").case_ids == ["B"]


def test_jsonl_errors_name_the_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image": "a.nii.gz"}\n{"image": oops}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: invalid JSON"):
        JsonlDataset(bad)
    bad.write_text('{"image": "a.nii.gz"}\n{"report": "x"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: each entry needs an 'image' path"):
        JsonlDataset(bad)


def test_unknown_layout(tmp_path):
    (tmp_path / "something").mkdir()
    with pytest.raises(ValueError, match=r"unknown dataset layout"):
        open_dataset(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing"):
        detect_layout(tmp_path / "missing")


def test_missing_image_file_names_it(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"image": "gone.nii.gz"}) + "\n", encoding="utf-8")
    with pytest.raises(FileNotFoundError, match=r"gone\.nii\.gz"):
        JsonlDataset(manifest)[0]


def test_duplicate_case_ids(tmp_path, phantom, nifti):
    nifti(tmp_path / "a.nii.gz", phantom())
    manifest = tmp_path / "dup.jsonl"
    manifest.write_text(
        '{"image": "a.nii.gz", "case_id": "x"}\n{"image": "a.nii.gz", "case_id": "x"}\n', encoding="utf-8"
    )
    with pytest.raises(ValueError, match=r"dup\.jsonl: duplicate case ids: \['x'\]"):
        JsonlDataset(manifest)
