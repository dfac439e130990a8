"""Run folders: a resume is checked against the run's own config before anything is written, accepted
changes are recorded (never overwritten), one process trains into a folder at a time, and a failed start
leaves no folder behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
import yaml
from train_standins import RegressTask, ToyDataset, ToyVL

from medvl3d.cli import main
from medvl3d.config import config_from_dict
from medvl3d.models import checkpoint as ckpt
from medvl3d.train.loop import train
from medvl3d.train.run_folder import CHANGES_NAME, LOCK_NAME, RunFolder, RunFolderInUse, config_changes


def _cfg(run, **sections):
    raw = {
        "data": {"batch_size": 4},
        "optim": {"lr": 1e-2, "warmup_steps": 1},
        "train": {"steps": 3, "log_every": 1, "ckpt_every": 3, "progress": False},
        "output": str(run),
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return config_from_dict(raw)


def _train(cfg, **kw):
    torch.manual_seed(0)
    model = ToyVL()
    return train(cfg, model=model, task=RegressTask(model), dataset=ToyDataset(8), **kw)


def _snapshot(run):
    return {p.relative_to(run).as_posix(): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    ("change", "shown"),
    [
        ({"optim": {"lr": 0.05}}, "optim.lr 0.01 -> 0.05"),
        ({"task": {"name": "brgsa"}}, "task.name 'clip' -> 'brgsa' (another objective)"),
        ({"data": {"batch_size": 2}}, "data.batch_size 4 -> 2 (would change the data order)"),
        ({"train": {"steps": 6}}, "train.steps 3 -> 6"),
    ],
)
def test_a_resume_that_changes_what_is_trained_is_refused_before_writing(tmp_path, change, shown):
    run = _train(_cfg(tmp_path / "run"))
    before = _snapshot(run)
    with pytest.raises(ValueError) as err:
        _train(_cfg(tmp_path / "run", **change))
    msg = str(err.value)
    assert msg.startswith(f"{ckpt.latest_checkpoint(run / 'checkpoints') / 'config.json'}: resuming this run")
    assert shown in msg and "--allow-change" in msg
    assert _snapshot(run) == before  # config.yaml, checkpoints and metrics untouched


def test_allowed_changes_are_recorded_not_overwritten(tmp_path):
    run = _train(_cfg(tmp_path / "run"))
    original = (run / "config.yaml").read_text(encoding="utf-8")
    _train(_cfg(tmp_path / "run", train={"steps": 5, "log_every": 2}), allow_changes=["train.steps"])
    assert (run / "config.yaml").read_text(encoding="utf-8") == original
    assert yaml.safe_load(original)["train"]["steps"] == 3
    records = [json.loads(x) for x in (run / CHANGES_NAME).read_text(encoding="utf-8").splitlines()]
    assert len(records) == 1 and records[0]["from_step"] == 3
    assert records[0]["changes"] == {
        "train.log_every": {"from": 1, "to": 2},  # operational: needs no permission, still recorded
        "train.steps": {"from": 3, "to": 5},
    }
    info = json.loads((ckpt.latest_checkpoint(run / "checkpoints") / "config.json").read_text("utf-8"))
    assert info["step"] == 5 and info["train"]["train"]["steps"] == 5
    # the next resume compares with what the run now trains (steps=5): no new record
    _train(_cfg(tmp_path / "run", train={"steps": 5, "log_every": 2}))
    assert len((run / CHANGES_NAME).read_text(encoding="utf-8").splitlines()) == 1


def test_operational_changes_need_no_permission(tmp_path):
    run = _train(_cfg(tmp_path / "run"))
    _train(_cfg(tmp_path / "run", train={"progress": True, "ckpt_every": 1}))
    (record,) = [json.loads(x) for x in (run / CHANGES_NAME).read_text(encoding="utf-8").splitlines()]
    assert record["changes"] == {
        "train.ckpt_every": {"from": 3, "to": 1},
        "train.progress": {"from": False, "to": True},
    }


def test_a_key_added_to_the_schema_since_the_run_started_is_its_default_not_a_change(tmp_path):
    """A run trained before `data.preprocess.antialias` existed resumes (or is reused) without permission;
    setting the new key to another value than its default is still a change."""
    run = _train(_cfg(tmp_path / "run"))
    cfg_path = ckpt.latest_checkpoint(run / "checkpoints") / "config.json"
    info = json.loads(cfg_path.read_text("utf-8"))
    del info["train"]["data"]["preprocess"]["antialias"]  # as an older medvl3d wrote it
    cfg_path.write_text(json.dumps(info), "utf-8")
    _train(_cfg(tmp_path / "run"))
    assert not (run / CHANGES_NAME).exists()
    with pytest.raises(ValueError, match=r"data\.preprocess\.antialias False -> True"):
        _train(_cfg(tmp_path / "run", data={"preprocess": {"antialias": True}}))


def test_config_changes_lists_nested_and_missing_keys():
    old = {"a": {"b": 1, "c": [1, 2]}, "d": {}}
    new = {"a": {"b": 2, "c": [1, 2], "e": 3}, "d": {"x": 1}}
    assert config_changes(old, new) == {
        "a.b": (1, 2),
        "a.e": ("<absent>", 3),
        "d": ({}, "<absent>"),
        "d.x": ("<absent>", 1),
    }


def test_a_second_process_is_refused_while_the_first_trains(tmp_path):
    holder = RunFolder(tmp_path / "run")
    holder.lock()
    try:
        with pytest.raises(
            RunFolderInUse, match=rf"{tmp_path / 'run'}: another medvl3d train \(pid {os.getpid()}"
        ):
            _train(_cfg(tmp_path / "run"))
        assert not (tmp_path / "run" / "config.yaml").exists()
    finally:
        holder.release()
    assert (_train(_cfg(tmp_path / "run")) / "checkpoints").is_dir()
    assert not (tmp_path / "run" / LOCK_NAME).exists()


def test_a_killed_process_does_not_leave_the_lock_stuck(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    code = (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(run / LOCK_NAME)!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('locked', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderInUse):
            RunFolder(run).lock()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    folder = RunFolder(run)
    folder.lock()  # the kernel dropped the dead process's lock
    folder.release()


def test_a_failed_start_leaves_no_folder(tmp_path):
    cfg = _cfg(tmp_path / "new_run", data={"root": str(tmp_path / "nodata")})
    with pytest.raises((FileNotFoundError, ValueError), match="nodata"):
        train(cfg)
    assert not (tmp_path / "new_run").exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises((FileNotFoundError, ValueError), match="nodata"):
        train(_cfg(existing, data={"root": str(tmp_path / "nodata")}))
    assert list(existing.iterdir()) == []  # an existing folder stays, without a config.yaml


def test_unknown_allowed_sections_are_refused(tmp_path):
    with pytest.raises(
        ValueError, match=r"allow_changes \(--allow-change\): \['trian.steps'\] name no config section"
    ):
        _train(_cfg(tmp_path / "run"), allow_changes=["trian.steps"])


def test_the_cli_passes_allowed_changes(tmp_path, monkeypatch, capsys):
    seen = {}

    def fake_train(cfg, overrides=(), allow_changes=()):
        seen.update(cfg=cfg, allow=list(allow_changes))
        return tmp_path

    monkeypatch.setattr("medvl3d.train.train", fake_train)
    argv = ["train", "c.yaml", "--allow-change", "train.steps", "--allow-change", "optim.lr"]
    assert main(argv) == 0
    assert seen["allow"] == ["train.steps", "optim.lr"]
