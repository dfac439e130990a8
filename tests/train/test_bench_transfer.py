"""The transfer benchmark reuses an earlier pretraining run only when its settings agree with the row's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _fake_run(out: Path, method: str, train: dict, step: int) -> Path:
    """A finished pretraining run as the training loop leaves it (pointer, config.json, weights)."""
    ckpt = out / f"pretrain_{method}" / "checkpoints" / f"step-{step:08d}"
    ckpt.mkdir(parents=True)
    (ckpt / "config.json").write_text(json.dumps({"step": step, "train": train}))
    (ckpt / "model.safetensors").write_bytes(b"")
    (ckpt.parent / "last").write_text(ckpt.name)
    return ckpt.parents[1]


def _settings(bench, method: str, out: Path, steps: int) -> dict:
    from medvl3d.config import config_to_dict, load_config

    config, extra = bench.PRETRAIN[method]
    sets = [*extra, f"data.root={out / 'pretrain_data'}", f"train.steps={steps}"]
    return config_to_dict(load_config(REPO / "configs" / config, sets))


def test_a_matching_run_is_reused_and_one_with_other_settings_is_refused(tmp_path, bench_script):
    bench = bench_script("transfer_segmentation")
    same = _settings(bench, "brgsa_v1", tmp_path / "a", 400)
    run = _fake_run(tmp_path / "a", "brgsa_v1", same, 400)
    assert bench.pretrain("brgsa_v1", tmp_path / "a", 400) == run  # reused: nothing trains
    # a first-version run saved before its settings were spelled out (they were the defaults then)
    then = {**same, "model": {**same["model"], "overrides": {"bank_size": 64}}}
    then["task"] = {"name": "brgsa", "params": {}}
    run = _fake_run(tmp_path / "b", "brgsa_v1", then, 400)
    assert bench.pretrain("brgsa_v1", tmp_path / "b", 400) == run
    other = {**same, "task": {**same["task"], "params": {**same["task"]["params"], "mse_weight": 0.3}}}
    _fake_run(tmp_path / "c", "brgsa_v1", other, 400)
    with pytest.raises(
        SystemExit, match=r"pretrain_brgsa_v1: an earlier pretraining run whose task\.mse_weight"
    ):
        bench.pretrain("brgsa_v1", tmp_path / "c", 400)
    clip = {**_settings(bench, "clip", tmp_path / "d", 400), "task": {"name": "gtgm", "params": {}}}
    _fake_run(tmp_path / "d", "clip", clip, 400)
    with pytest.raises(SystemExit, match=r"whose task\.name differ"):
        bench.pretrain("clip", tmp_path / "d", 400)
