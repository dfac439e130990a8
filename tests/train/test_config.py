"""Experiment configs: YAML loading, dotted overrides, type and key errors, and every shipped config."""

from __future__ import annotations

from pathlib import Path

import pytest

from medvl3d.config import ExperimentConfig, load_config, save_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "exp.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def test_yaml_and_overrides_are_typed(tmp_path):
    p = _write(tmp_path, "optim:\n  lr: 0.01\ntrain:\n  steps: 5\nmodel:\n  name: test_vit_clip\n")
    cfg = load_config(
        p, ["optim.lr=3e-4", "train.amp=bf16", "model.overrides.embed_dim=64", "train.compile=true"]
    )
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.optim.lr == pytest.approx(3e-4) and isinstance(cfg.optim.lr, float)
    assert cfg.train.steps == 5 and cfg.train.amp == "bf16" and cfg.train.compile is True
    assert cfg.model.overrides == {"embed_dim": 64}
    assert cfg.train.dist_timeout_min == 60.0  # generous default: NCCL's own is 10 minutes
    assert load_config(p, ["train.dist_timeout_min=90"]).train.dist_timeout_min == 90.0
    # an int where a float is expected is accepted and converted
    assert load_config(p, ["optim.lr=1"]).optim.lr == 1.0


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("train.lr=3e-4", "unknown key 'lr' in train"),
        ("optim.lr=fast", "optim.lr.*float"),
        ("train.steps=2.5", "train.steps.*int"),
        ("train.amp=fp8", "train.amp.*not one of"),
        ("train.compile=1", "train.compile.*bool"),
        ("nosuch.x=1", "unknown key 'nosuch'"),
        ("train.steps", "section.key=value"),
        ("train.dist_timeout_min=0", "train: dist_timeout_min.*positive number of minutes, got 0"),
        ("train.dist_timeout_min=-5", "train: dist_timeout_min.*positive number of minutes, got -5"),
        ("train.dist_timeout_min=.inf", "train: dist_timeout_min.*positive number of minutes, got inf"),
        ("data.batch_size=0", "data: batch_size must be >= 1, got 0"),
        ("train.steps=0", "train: steps must be >= 1, got 0"),
        ("data.label_fraction=0", r"data: label_fraction must be in \(0, 1\]"),
        ("model.name=test_clip", "unknown model 'test_clip'"),
        ("model.overrides.embed_dimm=3", r"model.*unknown key\(s\) \['embed_dimm'\]"),
        ("model.overrides.vision.patch_size=[4, 4, 4]", r"\['patch_size'\] for ResEncConfig"),
        ("task.name=clipp", "unknown task 'clipp'"),
        ("task.params.gather_all=true", r"task 'clip' got unknown parameter\(s\) \['gather_all'\]"),
        ("data.summariser.backend=gpt", "backend must be one of"),
        ("data.summariser.temprature=0", r"unknown key\(s\) \['temprature'\]"),
        ("data.preprocess.spacing=[1, 1]", "spacing expects 3 values"),
        ("train.dist_timeout_min=soon", "train.dist_timeout_min.*float"),
        ("prompts.positive=[no placeholder]", "prompts: positive template.*placeholder"),
        ("prompts.negtive=[x]", "unknown key 'negtive' in prompts"),
    ],
)
def test_bad_overrides_name_the_key(tmp_path, override, match):
    p = _write(tmp_path, "train:\n  steps: 5\n")
    with pytest.raises(ValueError, match=match):
        load_config(p, [override])


def test_bad_yaml_keys_and_files(tmp_path):
    with pytest.raises(ValueError, match=r"config.train: unknown key\(s\) \['stpes'\] for TrainConfig"):
        load_config(_write(tmp_path, "train:\n  stpes: 5\n"))
    with pytest.raises(ValueError, match="config.train expects a mapping"):
        load_config(_write(tmp_path, "train: 5\n"))
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    # configs are data: a python tag is refused by safe_load, never executed
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(_write(tmp_path, "output: !!python/object/apply:os.system ['echo hi']\n"))


def test_save_config_round_trip(tmp_path):
    cfg = load_config(_write(tmp_path, "train:\n  steps: 7\n"), ["optim.betas=[0.8, 0.9]"])
    save_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config(tmp_path / "run" / "config.yaml") == cfg
    assert not list((tmp_path / "run").glob(".*tmp"))


def test_every_shipped_config_validates():
    paths = sorted(CONFIGS.glob("*.yaml"))
    names = {p.name for p in paths}
    for method in ("clip", "brgsa", "gtgm"):
        assert f"{method}_synth_tiny.yaml" in names and f"{method}_synth_gpu.yaml" in names
    from medvl3d.models import model_config
    from medvl3d.train.tasks import TASKS

    for p in paths:
        cfg = load_config(p)  # validates names, overrides, task parameters, preprocessing
        assert cfg.train.steps > 0 and cfg.data.batch_size > 0, p
        model = model_config(cfg.model.name, **cfg.model.overrides)
        assert cfg.task.name in TASKS, p
        if TASKS[cfg.task.name].needs_label:  # segmentation tasks: trained on label maps, in patches
            assert type(model).family in TASKS[cfg.task.name].families, p
            assert cfg.data.format == "msd" or cfg.task.name != "segmentation", p
            continue
        assert tuple(cfg.data.preprocess.spatial_size) == tuple(model.vision.img_size), p
        assert (model.bank_size > 0) == (cfg.task.name == "brgsa"), p
    # The package ships the default segmentation config of `medvl3d finetune`: it must not drift.
    shipped = Path(__file__).resolve().parents[2] / "src" / "medvl3d" / "configs" / "seg_synth_tiny.yaml"
    assert shipped.read_text() == (CONFIGS / "seg_synth_tiny.yaml").read_text()
