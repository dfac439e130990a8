"""Predictor and `medvl3d diagnose`: encode once, score any labels, clear errors on bad input."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

import medvl3d.text.prompts  # noqa: F401  (a broken import must fail)
from medvl3d import models
from medvl3d.cli import main
from medvl3d.infer import Predictor, parse_labels
from medvl3d.models.checkpoint import save_checkpoint

PREPROCESS = {"spacing": None, "spatial_size": [32, 32, 32], "intensity": {"ct_window": [-1000.0, 600.0]}}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = models.create_model("test_vit_clip", bank_size=8)  # exercise scoring through the bank
    info = {
        "model": {"name": "test_vit_clip", "family": "vl", "config": model.config.to_dict()},
        "preprocess": PREPROCESS,
        "text": model.config.to_dict()["text"],
        "prompts": {
            "positive": ["{} is present.", "There is {}."],
            "negative": ["{} is not present.", "No {}."],
        },
        "task": "brgsa",
        "modality": "CT",
        "labels": [],
    }
    return save_checkpoint(tmp_path_factory.mktemp("ckpt"), 1, model, info)


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    rng = np.random.default_rng(0)
    arr = rng.normal(-600, 300, size=(30, 34, 32)).astype(np.int16)  # CT-like HU, not the model size
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    path = tmp_path_factory.mktemp("vol") / "ct.nii.gz"
    nib.save(nib.Nifti1Image(arr, affine), path)
    return path, arr, affine


def test_encode_once_and_probabilities_follow_the_prompt_softmax(ckpt, volume, monkeypatch):
    pred = Predictor.from_checkpoint(ckpt, device="cpu")
    calls = {"image": 0, "text": 0}
    enc_img, enc_txt = pred.model.encode_image, pred.model.encode_text

    def count_img(*a, **k):
        calls["image"] += 1
        return enc_img(*a, **k)

    def count_txt(*a, **k):
        calls["text"] += 1
        return enc_txt(*a, **k)

    monkeypatch.setattr(pred.model, "encode_image", count_img)
    monkeypatch.setattr(pred.model, "encode_text", count_txt)
    pred.set_volume(volume[0])
    probs = pred.diagnose(["Pleural effusion", "emphysema"])
    assert list(probs) == ["Pleural effusion", "emphysema"]
    assert all(0.0 < p < 1.0 for p in probs.values())
    again = pred.diagnose("emphysema, Pleural effusion")
    assert again["emphysema"] == probs["emphysema"]
    assert calls["image"] == 1  # the volume was encoded once
    assert calls["text"] == 4  # one positive + one negative ensemble per label, then cached

    # the documented formula, recomputed by hand
    with torch.no_grad():
        img = pred.image_embedding
        pos = torch.nn.functional.normalize(
            enc_txt(["Pleural effusion is present.", "There is pleural effusion."]).mean(0), dim=-1
        )
        neg = torch.nn.functional.normalize(
            enc_txt(["Pleural effusion is not present.", "No pleural effusion."]).mean(0), dim=-1
        )
        sims = pred.model.score(img, torch.stack([pos, neg]))[0]
        expected = torch.softmax(pred.model.scale() * sims, dim=0)[0]
    assert probs["Pleural effusion"] == pytest.approx(float(expected), rel=1e-5)


def test_array_input_matches_the_file(ckpt, volume):
    path, arr, affine = volume
    pred = Predictor.from_checkpoint(ckpt, device="cpu")
    from_file = pred.set_volume(path).image_embedding.clone()
    from_array = pred.set_volume(arr.astype(np.float32), affine=affine).image_embedding
    torch.testing.assert_close(from_array, from_file)
    assert from_file.shape == (1, pred.model.config.embed_dim)


def test_bad_inputs(ckpt, volume, tmp_path):
    pred = Predictor.from_checkpoint(ckpt, device="cpu")
    with pytest.raises(ValueError, match="no volume set"):
        pred.diagnose(["emphysema"])
    pred.set_volume(volume[0])
    for empty in ([], "", " , ,"):
        with pytest.raises(ValueError, match="no abnormality labels"):
            pred.diagnose(empty)
    with pytest.warns(UserWarning, match="modality MR differs from the checkpoint's training modality CT"):
        pred.set_volume(volume[1].astype(np.float32), modality="MR")
    with pytest.raises(ValueError, match="NaN"):
        pred.set_volume(np.full((8, 8, 8), np.nan))
    with pytest.raises(ValueError, match="3D"):
        pred.set_volume(np.zeros((8, 8)))
    assert parse_labels(" pleural  effusion ,emphysema,emphysema") == ["pleural effusion", "emphysema"]


def test_real_mr_volume_warns(ckpt, real_dir):
    pred = Predictor.from_checkpoint(ckpt, device="cpu")
    with pytest.warns(UserWarning, match="differs from the checkpoint's training modality CT"):
        pred.set_volume(real_dir / "totalseg" / "example_mr_sm.nii.gz")
    assert 0 < pred.diagnose(["liver lesion"])["liver lesion"] < 1


def test_diagnose_cli(ckpt, volume, capsys):
    assert (
        main(
            [
                "diagnose",
                str(volume[0]),
                "--checkpoint",
                str(ckpt),
                "--labels",
                "pleural effusion, emphysema",
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert set(out["probabilities"]) == {"pleural effusion", "emphysema"}
    assert main(["diagnose", str(volume[0]), "--checkpoint", str(ckpt), "--labels", "emphysema"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["label", "probability"] and table[1].startswith("emphysema")


def test_diagnose_cli_errors(ckpt, volume, tmp_path, capsys):
    vol = str(volume[0])
    assert main(["diagnose", vol, "--checkpoint", str(ckpt), "--labels", " , "]) == 2
    assert "no abnormality labels" in capsys.readouterr().err

    flat = tmp_path / "slice.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((16, 16), np.int16), np.eye(4)), flat)
    assert main(["diagnose", str(flat), "--checkpoint", str(ckpt), "--labels", "emphysema"]) == 2
    err = capsys.readouterr().err
    assert "slice.nii.gz" in err and "3D" in err

    broken = tmp_path / "broken"
    shutil.copytree(ckpt, broken)
    (broken / "config.json").unlink()
    assert main(["diagnose", vol, "--checkpoint", str(broken), "--labels", "emphysema"]) == 2
    assert "missing config.json" in capsys.readouterr().err
    (broken / "config.json").write_text((ckpt / "config.json").read_text(encoding="utf-8"))
    (broken / "model.safetensors").unlink()
    assert main(["diagnose", vol, "--checkpoint", str(broken), "--labels", "emphysema"]) == 2
    assert "missing model.safetensors" in capsys.readouterr().err


def test_prompts_override_the_checkpoints(ckpt, volume, tmp_path, capsys):
    """--prompts FILE scores with those templates: equal to a Predictor built with the same PromptSet."""
    from medvl3d.text.prompts import PromptSet

    yaml_path = tmp_path / "prompts.yaml"
    yaml_path.write_text("positive: ['{}.']\nnegative: ['no acute findings.']\n", encoding="utf-8")
    args = ["diagnose", str(volume[0]), "--checkpoint", str(ckpt), "--labels", "emphysema", "--json"]
    assert main(args) == 0
    stored = json.loads(capsys.readouterr().out)["probabilities"]["emphysema"]
    assert main([*args, "--prompts", str(yaml_path)]) == 0
    override = json.loads(capsys.readouterr().out)["probabilities"]["emphysema"]
    custom = PromptSet(positive=("{}.",), negative=("no acute findings.",))
    expected = Predictor.from_checkpoint(ckpt, "cpu", custom).set_volume(volume[0]).diagnose("emphysema")
    assert override == pytest.approx(expected["emphysema"], rel=1e-6)
    assert override != pytest.approx(stored, rel=1e-3)  # the checkpoint's own prompts differ

    yaml_path.write_text("positive: ['no placeholder']\n", encoding="utf-8")
    assert main([*args, "--prompts", str(yaml_path)]) == 2
    err = capsys.readouterr().err
    assert "prompts.yaml" in err and "placeholder" in err


def test_spacing_gives_an_array_its_geometry(ckpt, volume):
    path, arr, affine = volume  # affine = diag(2, 2, 3)
    pred = Predictor.from_checkpoint(ckpt, device="cpu")
    by_affine = pred.set_volume(arr.astype(np.float32), affine=affine).image_embedding.clone()
    by_spacing = pred.set_volume(arr.astype(np.float32), spacing=(2, 2, 3)).image_embedding
    torch.testing.assert_close(by_spacing, by_affine)
    assert pred.volume.spacing == (2.0, 2.0, 3.0) and pred.profile.fov_mm == (60.0, 68.0, 96.0)
    with pytest.raises(ValueError, match="affine= or spacing=, not both"):
        pred.set_volume(arr, affine=affine, spacing=(2, 2, 3))
    with pytest.raises(ValueError, match="carries its own geometry"):
        pred.set_volume(path, spacing=(1, 1, 1))
    with pytest.raises(ValueError, match="3 positive mm values"):
        pred.set_volume(arr, spacing=(1, 0, 1))
