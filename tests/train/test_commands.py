"""CLI wiring of `medvl3d train` and `medvl3d evaluate diagnosis`: arguments reach the API, clear errors."""

from __future__ import annotations

from pathlib import Path

from medvl3d.cli import main

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "clip_synth_tiny.yaml"


def test_train_cli_reports_bad_overrides_and_missing_data(tmp_path, capsys):
    assert main(["train", str(CONFIG), "--set", "train.lr=3e-4"]) == 2
    assert "unknown key 'lr' in train" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    code = main(
        [
            "train",
            str(CONFIG),
            "--set",
            f"data.root={tmp_path / 'nodata'}",
            "--set",
            f"output={tmp_path / 'r'}",
        ]
    )
    assert code == 2
    assert "nodata" in capsys.readouterr().err


def test_train_cli_passes_config_and_overrides(tmp_path, monkeypatch, capsys):
    seen = {}

    def fake_train(cfg, overrides=()):
        seen["cfg"], seen["overrides"] = cfg, list(overrides)
        return tmp_path / "run"

    monkeypatch.setattr("medvl3d.train.train", fake_train)
    assert main(["train", str(CONFIG), "--set", "optim.lr=3e-4", "--set", "train.steps=5"]) == 0
    assert seen == {"cfg": str(CONFIG), "overrides": ["optim.lr=3e-4", "train.steps=5"]}
    assert f"run folder: {tmp_path / 'run'}" in capsys.readouterr().out


def test_evaluate_cli_errors(tmp_path, capsys):
    code = main(["evaluate", "diagnosis", "--checkpoint", str(tmp_path / "none"), "--data", str(tmp_path)])
    assert code == 2
    assert "checkpoint not found" in capsys.readouterr().err
