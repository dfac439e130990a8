"""BrgSA's knowledge-bank options in checkpoints: a config written before the options existed loads with the
behaviour it was trained and scored with; a resumed run cannot silently switch to new defaults."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from medvl3d import models
from medvl3d.models import checkpoint as ckpt
from medvl3d.models.config import LEGACY_BANK_OPTIONS

_NEW_KEYS = ("bank_read", "bank_init", "bank_score")


def _info(model) -> dict:
    return {"model": {"name": "test_vit_clip", "family": "vl", "config": model.config.to_dict()}}


def _old_style(folder, version: int = 2) -> dict:
    """Rewrite a checkpoint's config.json as the code before the bank options wrote it."""
    path = folder / ckpt.CONFIG_NAME
    cfg = json.loads(path.read_text(encoding="utf-8"))
    for key in _NEW_KEYS:
        del cfg["model"]["config"][key]
    cfg["format_version"] = version
    if version == 1:
        del cfg["model"]["family"]
    path.write_text(json.dumps(cfg), encoding="utf-8")
    return cfg


@pytest.mark.parametrize("version", [1, 2])
def test_old_config_without_bank_options_scores_as_before(tmp_path, version):
    torch.manual_seed(0)
    old = models.create_model("test_vit_clip", bank_size=8, **LEGACY_BANK_OPTIONS).eval()
    folder = ckpt.save_checkpoint(tmp_path, 3, old, _info(old))
    _old_style(folder, version)
    loaded, info = ckpt.load_model(folder)
    for key, value in LEGACY_BANK_OPTIONS.items():
        assert getattr(loaded.config, key) == value and info["model"]["config"][key] == value
    assert loaded.bank.read == "cosine_tau"
    # scores exactly as the old code did: mean of cos(v, t) and cos(v_rec, t_rec), read by softmax(cos / tau)
    img, txt = torch.randn(3, 32), torch.randn(2, 32)
    e = F.normalize(loaded.bank.entries, dim=-1)

    def rec(x):
        w = torch.softmax(F.normalize(x, dim=-1) @ e.t() / 0.05, dim=-1)
        return F.normalize(w @ loaded.bank.entries, dim=-1)

    cos = F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).t()
    with torch.no_grad():
        torch.testing.assert_close(loaded.score(img, txt), 0.5 * (cos + rec(img) @ rec(txt).t()))
        torch.testing.assert_close(loaded.score(img, txt), old.score(img, txt), rtol=0, atol=0)


def test_new_checkpoints_record_and_keep_their_options(tmp_path):
    torch.manual_seed(0)
    model = models.create_model("test_vit_clip", bank_size=8).eval()
    assert (model.config.bank_read, model.config.bank_init, model.config.bank_score) == (
        "softmax_dot",
        "orthogonal",
        "image_recon",
    )
    folder = ckpt.save_checkpoint(tmp_path, 1, model, _info(model))
    saved = json.loads((folder / ckpt.CONFIG_NAME).read_text(encoding="utf-8"))["model"]["config"]
    assert all(key in saved for key in _NEW_KEYS)  # written explicitly, never left to a default
    loaded, _ = ckpt.load_model(folder)
    assert loaded.config == model.config
    img, txt = torch.randn(3, 32), torch.randn(2, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.score(img, txt), model.score(img, txt), rtol=0, atol=0)
    # Models without a bank carry the (unused) options too; a partial old config keeps what it records.
    info = {"model": {"family": "vl", "config": {"bank_size": 0, "bank_read": "softmax_dot"}}}
    migrated = ckpt.migrate_bank_options(info)
    assert migrated["model"]["config"]["bank_read"] == "softmax_dot"
    assert migrated["model"]["config"]["bank_score"] == "both_recon"
    assert "bank_score" not in info["model"]["config"]  # the input is not changed
    seg = {"model": {"family": "seg", "config": {"n_classes": 2}}}
    assert ckpt.migrate_bank_options(seg) is seg


def test_resume_refuses_a_model_trained_with_other_bank_options(tmp_path):
    from medvl3d.train.loop import _check_same_model_config

    torch.manual_seed(0)
    old = models.create_model("test_vit_clip", bank_size=8, **LEGACY_BANK_OPTIONS)
    folder = ckpt.save_checkpoint(tmp_path, 3, old, _info(old))
    _old_style(folder)
    _check_same_model_config(folder, models.create_model("test_vit_clip", bank_size=8, **LEGACY_BANK_OPTIONS))
    with pytest.raises(ValueError, match=r"bank_read: 'cosine_tau' -> 'softmax_dot'.*--set model.overrides"):
        _check_same_model_config(folder, models.create_model("test_vit_clip", bank_size=8))
    # a model without a bank (CLIP) resumes whatever its old config says: the options change nothing
    clip = models.create_model("test_vit_clip")
    folder = ckpt.save_checkpoint(tmp_path / "clip", 3, clip, _info(clip))
    _old_style(folder)
    _check_same_model_config(folder, models.create_model("test_vit_clip"))
