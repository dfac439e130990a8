"""Round trip: the foundation loaders read the generated CT-RATE, MSD and JSONL layouts as they are."""

from __future__ import annotations

import json
import warnings

import numpy as np

from medvl3d.data import datasets


def _manifest(out, split):
    return {
        r["case_id"]: r
        for r in map(json.loads, (out / f"manifest_{split}.jsonl").read_text(encoding="utf-8").splitlines())
    }


def test_msd_layouts(tiny_set):
    out, _ = tiny_set
    organs = datasets.open_dataset(out)  # dataset.json at the root: the organ task
    assert isinstance(organs, datasets.MSDDataset) and len(organs) == 4
    s = organs[0]
    assert s["image"].shape == s["label"].shape == (1, 48, 48, 32)
    assert set(np.unique(s["label"].numpy())) - {0} <= set(range(1, 16))
    manifest = _manifest(out, "valid")
    lesions = datasets.MSDDataset(out / "dataset_lesions.json", split="valid")  # the labelled test list
    assert len(lesions) == 4
    for i in range(len(lesions)):
        s = lesions[i]
        ids = set(np.unique(s["label"].numpy())) - {0}
        assert ids == {int(k) for k in manifest[s["meta"]["case_id"]]["lesions"]}
    vessels = datasets.MSDDataset(out / "dataset_vessels.json", split="train")
    lab = vessels[0]["label"].numpy()
    assert {1, 2, 3} <= set(np.unique(lab))


def test_jsonl_manifest(tiny_set):
    out, _ = tiny_set
    ds = datasets.JsonlDataset(out / "manifest_valid.jsonl")
    assert len(ds) == 4
    for i in range(len(ds)):
        s = ds[i]
        ids = set(np.unique(s["label"].numpy())) - {0}
        assert ids == set(s["lesions"])
        for att in s["lesions"].values():
            assert {"type", "organ", "location", "shape", "density", "margin"} <= set(att)
        assert s["report"] and set(s["labels"]) and s["meta"]["split"] == "valid"


def test_ctrate_layout(tiny_set):
    out, _ = tiny_set
    manifest = _manifest(out, "valid")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every volume has its report and labels; label maps are not volumes
        ds = datasets.CTRateDataset(out, "valid", label_suffix="_lesions")
    assert sorted(ds.case_ids) == sorted(manifest)
    for i, cid in enumerate(ds.case_ids):
        s = ds[i]
        row = manifest[cid]
        assert s["labels"] == row["labels"]
        assert s["report"] == row["report"]  # the manifest holds the loader's headed text
        assert s["image"].shape == (1, 48, 48, 32)
        np.testing.assert_allclose(s["meta"]["spacing"], [7.5, 7.5, 10.0])
        img = s["image"].numpy()
        assert img.min() >= -1024 and img.max() > 200  # HU, no second rescale
        assert set(np.unique(s["label"].numpy())) - {0} == {int(k) for k in row["lesions"]}
