"""Preprocessed cache: atomic resumable writes, shards, spec guard, memory-mapped reading, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medvl3d.cli import main
from medvl3d.data.cache import CachedDataset, parse_shard, preprocess_dataset
from medvl3d.data.datasets import MSDDataset, open_dataset
from medvl3d.data.preprocess import PreprocessSpec

SPEC = PreprocessSpec(spacing=(2.0, 2.0, 2.0), intensity={"ct_window": (-1000, 1000)})


def test_cache_round_trip_matches_direct_preprocessing(msd_task, tmp_path):
    ds = MSDDataset(msd_task)
    summary = preprocess_dataset(ds, SPEC, tmp_path / "cache", progress=False)
    assert summary["written"] == 3 and summary["skipped"] == 0 and summary["failed"] == {}
    cached = CachedDataset(tmp_path / "cache")
    assert cached.case_ids == ds.case_ids and cached.spec == SPEC
    direct = SPEC(ds[0])
    got = cached[0]
    assert got["image"].dtype == torch.float32 and got["image"].shape == direct["image"].shape == (
        1,
        12,
        10,
        16,
    )
    # float16 storage of [0, 1] values: error below 2**-11
    assert float((got["image"] - direct["image"]).abs().max()) < 5e-4
    assert torch.equal(got["label"], direct["label"].long()) and got["label"].dtype == torch.int64
    assert np.load(tmp_path / "cache" / ds.case_ids[0] / "label.npy").dtype == np.uint8
    assert got["lesions"] == {1: {"type": "cyst"}} and got["labels"] == {"Lung nodule": 1}
    np.testing.assert_allclose(got["meta"]["affine"], direct["meta"]["affine"])
    # re-run: nothing to do
    again = preprocess_dataset(ds, SPEC, tmp_path / "cache", progress=False)
    assert again["written"] == 0 and again["skipped"] == 3


def test_other_spec_is_refused(msd_task, tmp_path):
    ds = MSDDataset(msd_task)
    preprocess_dataset(ds, SPEC, tmp_path / "c", progress=False)
    with pytest.raises(ValueError, match=r"spec\.json: cache was written with another preprocessing spec"):
        preprocess_dataset(ds, PreprocessSpec(spacing=(3, 3, 3)), tmp_path / "c", progress=False)
    with pytest.raises(ValueError, match="another preprocessing spec"):  # a field added later, set
        preprocess_dataset(
            ds, PreprocessSpec(**{**vars(SPEC), "antialias": True}), tmp_path / "c", progress=False
        )
    # A cache written before a field existed (its default is what it did) stays valid.
    spec_json = tmp_path / "c" / "spec.json"
    old = json.loads(spec_json.read_text(encoding="utf-8"))
    del old["spec"]["antialias"]
    spec_json.write_text(json.dumps(old), encoding="utf-8")
    assert preprocess_dataset(ds, SPEC, tmp_path / "c", progress=False)["skipped"] == 3
    # a cache of an older format (version 1 stored CT-RATE reports without section headers)
    spec_json.write_text(
        json.dumps({**json.loads(spec_json.read_text(encoding="utf-8")), "version": 1}), encoding="utf-8"
    )
    with pytest.raises(ValueError, match=r"cache format version 1 .*this one writes version 2"):
        preprocess_dataset(ds, SPEC, tmp_path / "c", progress=False)


def test_shards_partition_the_cases(msd_task, tmp_path):
    ds = MSDDataset(msd_task)
    s0 = preprocess_dataset(ds, SPEC, tmp_path / "c", shard=(0, 2), progress=False)
    assert s0["total"] == 2 and sorted(p.name for p in (tmp_path / "c").iterdir()) == [
        "spec.json",
        "tiny_000",
        "tiny_002",
    ]
    with pytest.raises(ValueError, match=r"1 of 3 cases are not in the cache yet \(e\.g\. \['tiny_001'\]\)"):
        CachedDataset(s0)
    s1 = preprocess_dataset(ds, SPEC, tmp_path / "c", shard=(1, 2), progress=False)
    assert s1["total"] == 1 and CachedDataset(tmp_path / "c").case_ids == ds.case_ids
    # a summary selects and orders its dataset's cases (e.g. one split of a shared cache folder)
    assert CachedDataset(s1).case_ids == ds.case_ids
    assert CachedDataset(tmp_path / "c", case_ids=["tiny_002", "tiny_000"]).case_ids == [
        "tiny_002",
        "tiny_000",
    ]
    assert parse_shard("3/4") == (3, 4)
    with pytest.raises(ValueError, match="need 0 <= i < n"):
        parse_shard("4/4")


class _FailingOnce(MSDDataset):
    """Raises while loading case 1 until ``armed`` is cleared: an interrupted run."""

    armed = True

    def load_sample(self, index):
        if index == 1 and self.armed:
            raise RuntimeError("killed mid-run")
        return super().load_sample(index)


def test_interrupted_run_leaves_no_partial_case_and_resumes(msd_task, tmp_path, monkeypatch):
    ds = _FailingOnce(msd_task)
    out = tmp_path / "cache"
    with pytest.raises(RuntimeError, match="killed mid-run"):
        preprocess_dataset(ds, SPEC, out, progress=False)
    # case 0 complete, case 1 absent (no half-written folder), case 2 never started
    assert sorted(p.name for p in out.iterdir()) == ["spec.json", "tiny_000"]
    assert {p.name for p in (out / "tiny_000").iterdir()} == {"image.npy", "label.npy", "sample.json"}

    # a crash inside the write itself (after image.npy) leaves nothing visible either
    import medvl3d.data.cache as cache

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(cache.json, "dumps", boom)
    ds.armed = False
    with pytest.raises(OSError, match="disk full"):
        preprocess_dataset(ds, SPEC, out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["spec.json", "tiny_000"]
    monkeypatch.undo()

    summary = preprocess_dataset(ds, SPEC, out, progress=False)
    assert summary["written"] == 2 and summary["skipped"] == 1
    assert len(CachedDataset(out)) == 3


def test_skip_errors_records_failures(msd_task, tmp_path):
    summary = preprocess_dataset(
        _FailingOnce(msd_task), SPEC, tmp_path / "c", progress=False, on_error="skip"
    )
    assert summary["written"] == 2 and list(summary["failed"]) == ["tiny_001"]
    with pytest.raises(ValueError, match="failed during preprocessing.*tiny_001"):
        CachedDataset(summary)


@pytest.mark.slow
def test_process_pool_workers(msd_task, tmp_path):
    summary = preprocess_dataset(MSDDataset(msd_task), SPEC, tmp_path / "c", workers=2, progress=False)
    assert summary["written"] == 3 and len(CachedDataset(tmp_path / "c")) == 3


def test_cli_preprocess_and_info(msd_task, tmp_path, capsys):
    out = tmp_path / "cli_cache"
    rc = main(
        [
            "preprocess",
            str(msd_task),
            "--out",
            str(out),
            "--spacing",
            "2",
            "2",
            "2",
            "--size",
            "8",
            "8",
            "8",
            "--window",
            "-500",
            "500",
            "--no-progress",
        ]
    )
    assert rc == 0
    assert "3 written, 0 already done, 0 failed of 3 cases" in capsys.readouterr().out
    ds = open_dataset(out)
    assert isinstance(ds, CachedDataset) and ds[0]["image"].shape == (1, 8, 8, 8)
    assert json.loads((out / "spec.json").read_text(encoding="utf-8"))["spec"]["intensity"]["ct_window"] == [
        -500.0,
        500.0,
    ]

    assert main(["info", str(msd_task / "imagesTr" / "tiny_000.nii.gz"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["shape"] == [24, 20, 16] and info["spacing"] == [1.0, 1.0, 2.0] and info["modality"] == "CT"
    assert info["stats"]["min"] < -980


def test_cli_errors_are_clean(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing.nii.gz")]) == 2
    assert "medvl3d info: error:" in capsys.readouterr().err
    (tmp_path / "odd").mkdir()
    assert main(["preprocess", str(tmp_path / "odd"), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "unknown dataset layout" in capsys.readouterr().err


def test_stale_temp_folder_of_a_killed_run_is_removed(msd_task, tmp_path):
    out = tmp_path / "c"
    ds = MSDDataset(msd_task)
    preprocess_dataset(ds, SPEC, out, shard=(0, 2), progress=False)
    # what a SIGKILL in the middle of writing tiny_001 (shard 1/2) leaves behind
    stale = out / ".tmp-tiny_001-k1ll3d"
    stale.mkdir()
    (stale / "image.npy").write_bytes(b"half")
    assert CachedDataset(out).case_ids == ["tiny_000", "tiny_002"]  # never read as a case
    preprocess_dataset(ds, SPEC, out, shard=(1, 2), progress=False)
    assert not stale.exists() and CachedDataset(out).case_ids == ds.case_ids
