"""``train.eval_every`` on tiny SynthCT-VL: evaluation steps, the validation split preprocessed once (also
through ``data.cache_dir``), and a missing split refused before the first training step."""

from __future__ import annotations

import json
import warnings
from collections import Counter

import pytest

import medvl3d.models  # noqa: F401  (a broken import must fail)
from medvl3d.config import config_from_dict
from medvl3d.data import synth
from medvl3d.train.loop import train

N_TRAIN, N_VALID = 8, 8


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthct")
    synth.generate(
        root,
        n_train=N_TRAIN,
        n_test=N_VALID,
        size=(16, 16, 16),
        spacing=(20.0, 22.0, 22.0),
        seed=0,
        workers=1,
        progress=False,
    )
    return root


def _cfg(tmp_path, root, **data_kw) -> dict:
    data = {"root": str(root), "batch_size": 4, "preprocess": {"spacing": None, "spatial_size": [16, 16, 16]}}
    data.update(data_kw)
    return {
        "data": data,
        "model": {"name": "test_resenc_clip"},
        "optim": {"warmup_steps": 1},
        "train": {"steps": 5, "log_every": 1, "ckpt_every": 0, "eval_every": 2, "progress": False},
        "output": str(tmp_path / "run"),
    }


@pytest.fixture
def counted(monkeypatch):
    """Counts, per case id, how often a raw case is preprocessed (on the fly or into the cache), and
    how often each split is opened."""
    import medvl3d.data.cache as cache_mod
    import medvl3d.data.preprocess as prep_mod
    import medvl3d.train.data as data_mod

    calls: dict[str, Counter] = {"preprocess": Counter(), "open": Counter()}
    real_prep, real_open = prep_mod.preprocess_sample, data_mod.open_split

    def preprocess_sample(sample, spec):
        calls["preprocess"][sample["meta"]["case_id"]] += 1
        return real_prep(sample, spec)

    def open_split(root, split, format="auto"):
        calls["open"][split] += 1
        return real_open(root, split, format)

    monkeypatch.setattr(prep_mod, "preprocess_sample", preprocess_sample)
    monkeypatch.setattr(cache_mod, "preprocess_sample", preprocess_sample)
    monkeypatch.setattr(data_mod, "open_split", open_split)
    return calls


@pytest.mark.parametrize("cached", [False, True], ids=["on-the-fly", "cache_dir"])
def test_eval_every_logs_validation_metrics_and_preprocesses_the_split_once(
    tmp_path, data_root, counted, cached, monkeypatch
):
    cache = tmp_path / "cache"
    cfg = config_from_dict(_cfg(tmp_path, data_root, cache_dir=str(cache) if cached else None))
    import medvl3d.train.loop as loop_mod

    monkeypatch.setattr(loop_mod, "_VALID_IN_MEMORY_WARN", 0)  # any in-memory split is "large" here
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = train(cfg)
    big = [w for w in caught if "set data.cache_dir" in str(w.message)]
    assert len(big) == (0 if cached else 1)  # the in-memory copy (no cache) is the one that warns

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    evals = [r for r in records if "val_macro_auroc" in r]
    assert [r["step"] for r in evals] == [2, 4, 5]  # every 2 steps and at the last
    for r in evals:
        assert 0.0 <= r["val_macro_auroc"] <= 1.0
        assert "loss" not in r and "val_gap" in r and "val_seen_auroc" in r  # groups from splits.json
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5]
    info = json.loads((run / "checkpoints" / "step-00000005" / "config.json").read_text(encoding="utf-8"))
    assert info["model"]["family"] == "vl" and info["format_version"] == 2
    # the prompts are stored in full, so a later change of the defaults cannot change this checkpoint
    assert info["prompts"] == {"positive": ["{}."], "negative": ["no acute findings."], "synonyms": {}}

    valid_ids = [c for c in counted["preprocess"] if c.startswith("valid_")]
    assert len(valid_ids) == N_VALID
    assert all(counted["preprocess"][c] == 1 for c in valid_ids), counted["preprocess"]  # 3 evaluations
    assert counted["open"]["valid"] == 1
    if cached:  # the validation cases went into data.cache_dir beside the training cases
        assert sorted(p.name for p in cache.glob("valid_*")) == sorted(valid_ids)
        assert len(list(cache.glob("train_*"))) == N_TRAIN


def test_missing_validation_split_fails_before_the_first_step(tmp_path, data_root):
    raw = _cfg(tmp_path, data_root, valid_split="nope")
    steps: list[int] = []
    with pytest.raises(ValueError, match=r"validation split 'nope' of data.root .*synthct") as err:
        train(config_from_dict(raw), callbacks=[lambda step, m: steps.append(step)])
    assert "train.eval_every=2" in str(err.value) and "no cases for split 'nope'" in str(err.value)
    assert steps == []
    assert not (tmp_path / "run" / "metrics.jsonl").exists()

    raw["train"]["eval_every"] = 0  # without evaluation the split is not needed
    train(config_from_dict(raw), callbacks=[lambda step, m: steps.append(step)])
    assert steps == [1, 2, 3, 4, 5]
