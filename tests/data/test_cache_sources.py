"""The preprocessing cache notices when a case's source changed: a regenerated or replaced volume, a new
label map or an edited report is preprocessed again, never served from the old cache."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from medvl3d.cli import main
from medvl3d.data.cache import CachedDataset, preprocess_dataset
from medvl3d.data.datasets import MSDDataset
from medvl3d.data.preprocess import PreprocessSpec

SPEC = PreprocessSpec(spacing=None, intensity={"ct_window": (-1000, 1000)})


def _cached_mean(cache, case_id):
    return float(np.load(cache / case_id / "image.npy").astype(np.float32).mean())


def test_a_replaced_volume_is_preprocessed_again(msd_task, tmp_path, nifti, phantom):
    cache = tmp_path / "cache"
    ds = MSDDataset(msd_task)
    assert preprocess_dataset(ds, SPEC, cache, progress=False)["written"] == 3
    first = _cached_mean(cache, ds.case_ids[0])

    # Regenerate case 0 (same name, same shape, brighter), as a new `medvl3d synth` run would.
    image = ds.records[0].image
    nifti(image, (phantom(seed=0) + 500).astype(np.int16))
    summary = preprocess_dataset(MSDDataset(msd_task), SPEC, cache, progress=False)
    assert (summary["written"], summary["stale"], summary["skipped"]) == (1, 1, 2)
    assert _cached_mean(cache, ds.case_ids[0]) > first + 0.2  # +500 HU of a 2000 HU window
    again = preprocess_dataset(MSDDataset(msd_task), SPEC, cache, progress=False)
    assert (again["written"], again["skipped"]) == (0, 3)


def test_a_touched_file_and_an_edited_report_count_as_changes(msd_task, tmp_path):
    cache = tmp_path / "cache"
    preprocess_dataset(MSDDataset(msd_task), SPEC, cache, progress=False)
    label = MSDDataset(msd_task).records[1].label
    st = label.stat()
    os.utime(label, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # same bytes, written again
    manifest = json.loads((msd_task / "dataset.json").read_text(encoding="utf-8"))
    manifest["training"][2]["report"] = "A new finding."
    (msd_task / "dataset.json").write_text(json.dumps(manifest), encoding="utf-8")
    ds = MSDDataset(msd_task)
    summary = preprocess_dataset(ds, SPEC, cache, progress=False)
    assert (summary["written"], summary["stale"]) == (2, 2)
    assert CachedDataset(cache)[ds.case_ids.index(ds.records[2].case_id)]["report"] == "A new finding."


def test_a_case_cached_without_a_source_record_is_redone(msd_task, tmp_path):
    cache = tmp_path / "cache"
    ds = MSDDataset(msd_task)
    preprocess_dataset(ds, SPEC, cache, progress=False)
    sample_json = cache / ds.case_ids[0] / "sample.json"
    record = json.loads(sample_json.read_text(encoding="utf-8"))
    del record["source"]  # as written before sources were recorded
    sample_json.write_text(json.dumps(record), encoding="utf-8")
    assert preprocess_dataset(ds, SPEC, cache, progress=False)["stale"] == 1
    assert "source" in json.loads(sample_json.read_text(encoding="utf-8"))


def test_the_cli_says_which_cases_were_redone(msd_task, tmp_path, capsys, nifti, phantom):
    cache = tmp_path / "cache"
    args = ["preprocess", str(msd_task), "--out", str(cache), "--native-spacing", "--no-progress"]
    assert main(args) == 0
    nifti(MSDDataset(msd_task).records[0].image, phantom(seed=5))
    assert main(args) == 0
    out = capsys.readouterr().out.splitlines()[-1]
    assert "1 written (1 redone: their source changed), 2 already done" in out


@pytest.mark.parametrize("bad", ["missing", "json"])
def test_an_unreadable_case_record_is_redone(msd_task, tmp_path, bad):
    cache = tmp_path / "cache"
    ds = MSDDataset(msd_task)
    preprocess_dataset(ds, SPEC, cache, progress=False)
    sample_json = cache / ds.case_ids[0] / "sample.json"
    if bad == "json":
        sample_json.write_text("{not json", encoding="utf-8")
        assert preprocess_dataset(ds, SPEC, cache, progress=False)["stale"] == 1
    else:
        sample_json.unlink()  # an incomplete case folder is simply not done
        summary = preprocess_dataset(ds, SPEC, cache, progress=False)
        assert (summary["written"], summary["stale"]) == (1, 0)
    assert json.loads(sample_json.read_text(encoding="utf-8"))["source"] is not None
