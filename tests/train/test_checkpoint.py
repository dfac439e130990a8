"""Checkpoints: round trip with identical embeddings, strict mismatch errors, crash-safe writes."""

from __future__ import annotations

import json

import pytest
import torch

from medvl3d import models
from medvl3d.models import checkpoint as ckpt


def _info(model, name="test_vit_clip"):
    return {
        "model": {"name": name, "family": "vl", "config": model.config.to_dict()},
        "preprocess": {},
        "text": model.config.to_dict()["text"],
        "prompts": {},
        "task": "clip",
        "modality": "CT",
        "labels": [],
    }


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return models.create_model("test_vit_clip").eval()


def test_round_trip_gives_identical_embeddings(tmp_path, model):
    folder = ckpt.save_checkpoint(tmp_path / "checkpoints", 5, model, _info(model))
    assert folder.name == "step-00000005" and (folder / "model.safetensors").is_file()
    loaded, info = ckpt.load_model(tmp_path)  # a run folder resolves through checkpoints/last
    assert info["step"] == 5 and info["model"]["name"] == "test_vit_clip" and not loaded.training
    x = torch.rand(2, 1, 32, 32, 32, generator=torch.Generator().manual_seed(1))
    texts = ["pleural effusion", "no emphysema"]
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(x), model.encode_image(x))
        assert torch.equal(loaded.encode_text(texts), model.encode_text(texts))
    import medvl3d

    again = medvl3d.load(folder, device="cpu")  # a Predictor around the rebuilt model
    assert again.info["step"] == 5 and again.family == "vl" and not again.model.training
    state = again.model.state_dict()
    assert all(torch.equal(a, b) for a, b in zip(state.values(), model.state_dict().values()))


def test_mismatched_config_is_an_error_naming_keys(tmp_path, model):
    folder = ckpt.save_checkpoint(tmp_path, 1, model, _info(model))
    cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    cfg["model"]["config"]["embed_dim"] = 48  # weights were saved for 32
    (folder / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    with pytest.raises(ValueError, match=r"does not match.*shape mismatches.*image_proj"):
        ckpt.load_model(folder)
    cfg["model"]["config"]["embed_dim"] = 32
    cfg["model"]["config"]["bank_size"] = 8  # a bank the weights do not have
    (folder / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    with pytest.raises(ValueError, match=r"missing keys \['bank"):
        ckpt.load_model(folder)
    cfg["model"]["config"]["bank_size"] = 0
    cfg["model"]["config"]["no_such_field"] = 1
    (folder / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    with pytest.raises(ValueError, match="invalid model config.*no_such_field"):
        ckpt.load_model(folder)


def test_missing_files_are_named(tmp_path, model):
    folder = ckpt.save_checkpoint(tmp_path, 1, model, _info(model))
    (folder / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"step-00000001 is missing config.json"):
        ckpt.load_model(folder)
    folder = ckpt.save_checkpoint(tmp_path / "b", 1, model, _info(model))
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        ckpt.load_model(folder)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        ckpt.load_model(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="missing config.json"):
        ckpt.load_model(tmp_path / "empty")


def test_crash_during_write_keeps_previous_checkpoint(tmp_path, model, monkeypatch):
    root = tmp_path / "checkpoints"
    ckpt.save_checkpoint(root, 1, model, _info(model), train_state={"step": 1})
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def boom(info, folder):
        assert (folder / "model.safetensors").is_file()  # the weights are already written
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(ckpt, "_write_config", boom)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    try:
        with pytest.raises(KeyboardInterrupt):
            ckpt.save_checkpoint(root, 2, model, _info(model), train_state={"step": 2})
    finally:
        with torch.no_grad():
            for k, v in model.state_dict().items():
                v.copy_(before[k])
    monkeypatch.undo()
    assert ckpt.latest_checkpoint(root).name == "step-00000001"
    assert not list(root.glob(".tmp-*")) and not (root / "step-00000002").exists()
    loaded, info = ckpt.load_model(root)
    assert info["step"] == 1
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in before.items())
    assert ckpt.load_train_state(root / "step-00000001")["step"] == 1


def test_resave_killed_between_renames_is_recovered(tmp_path, model):
    """A re-save of the same step killed after moving the old folder aside loses nothing."""
    root = tmp_path / "checkpoints"
    ckpt.save_checkpoint(root, 3, model, _info(model), train_state={"step": 3})
    step = root / "step-00000003"
    step.rename(root / ".old-step-00000003-abc123")  # the state right after atomic_dir's first rename
    with pytest.raises(FileNotFoundError, match="killed re-save"):
        ckpt.latest_checkpoint(root)  # a reader (evaluation beside training) changes nothing
    assert (root / ".old-step-00000003-abc123").is_dir()
    found = ckpt.latest_checkpoint(root, repair=True)
    assert found == step and (step / "model.safetensors").is_file()
    assert not list(root.glob(".old-*"))
    loaded, info = ckpt.load_model(root)
    assert info["step"] == 3
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())

    step.rename(root / ".old-step-00000003-def456")
    ckpt.save_checkpoint(root, 3, model, _info(model), train_state={"step": 3})
    assert not list(root.glob(".old-*")) and ckpt.load_train_state(step)["step"] == 3
