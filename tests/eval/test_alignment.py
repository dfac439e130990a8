"""Alignment statistics on the text a model trained on, and their logging in BrgSA training."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from medvl3d import models
from medvl3d.eval.alignment import alignment_report, training_texts
from medvl3d.losses import alignment_stats, modality_gap

REPORTS = [
    "FINDINGS: Moderate bilateral pleural effusion. No emphysema. IMPRESSION: Pleural effusion.",
    "FINDINGS: The heart is enlarged. IMPRESSION: Cardiomegaly.",
    "",
]


def test_training_texts_follow_the_text_source():
    samples = [{"report": r} for r in REPORTS]
    assert training_texts(samples, "report") == [REPORTS[0], REPORTS[1], None]
    summaries = training_texts(samples, "summary")
    assert summaries[2] is None  # an empty report has no summary (training leaves it out)
    assert "pleural effusion" in summaries[0].lower() and "emphysema" not in summaries[0].lower()
    assert training_texts(samples, "generated") == [None, None, None]  # needs raw volumes
    gen = training_texts(samples, "auto", generate=lambda s: "generated")
    assert gen == [REPORTS[0], REPORTS[1], "generated"]
    with pytest.raises(ValueError, match="text_source"):
        training_texts(samples, "caption")


def test_alignment_stats_against_hand_computed_values():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    s = alignment_stats(img, txt)
    # centroids (0.5, 0.5) and (1, 0): distance sqrt(0.5), cosine 1/sqrt(2); pairs: cos 1 and 0
    assert float(s["gap"]) == pytest.approx(0.5**0.5)
    assert float(s["centroid_cos"]) == pytest.approx(0.5**0.5)
    assert float(s["paired_cos"]) == pytest.approx(0.5)
    assert "paired_cos" not in alignment_stats(img, txt[:1])  # no pairs to compare


def test_alignment_report_of_a_bank_model():
    torch.manual_seed(0)
    model = models.create_model("test_vit_clip", bank_size=8).eval()
    img = F.normalize(torch.randn(3, 32), dim=-1)
    texts = ["pleural effusion.", None, "cardiomegaly."]
    out = alignment_report(model, img, texts)
    with torch.no_grad():
        txt = model.encode_text(["pleural effusion.", "cardiomegaly."])
    pair = img[[0, 2]]
    assert out["gap"] == pytest.approx(modality_gap(pair, txt), rel=1e-5)
    assert out["paired_cos"] == pytest.approx(float((pair * txt).sum(-1).mean()), rel=1e-5)
    rec = model.bank.reconstruct
    with torch.no_grad():
        txt = txt.detach()
    assert out["gap_rec"] == pytest.approx(modality_gap(rec(pair), rec(txt)), rel=1e-5)
    with torch.no_grad():
        image_rec = float((rec(pair) * txt).sum(-1).mean())
    assert out["paired_cos_image_rec"] == pytest.approx(image_rec, rel=1e-5)
    for key in ("bank_shared", "bank_overlap", "bank_entropy_image", "bank_entropy_text"):
        assert 0.0 <= out[key] <= 1.0 + 1e-6, key
    assert alignment_report(model, img, [None, None, None]) == {}
    plain = alignment_report(models.create_model("test_vit_clip").eval(), img, texts)
    assert "bank_shared" not in plain and "gap_rec" not in plain


def test_brgsa_training_logs_bank_statistics(tmp_path):
    """Two BrgSA steps with validation: each logged step carries the bank statistics, and validation the
    gap and bank use measured on the summaries the model trained on."""
    from medvl3d.config import config_from_dict
    from medvl3d.data import synth
    from medvl3d.train.loop import train

    root = tmp_path / "synthct"
    synth.generate(
        root,
        n_train=6,
        n_test=6,
        size=(16, 16, 16),
        spacing=(20.0, 22.0, 22.0),
        seed=0,
        workers=1,
        progress=False,
    )
    cfg = config_from_dict(
        {
            "data": {
                "root": str(root),
                "batch_size": 3,
                "text_source": "summary",
                "preprocess": {"spacing": None, "spatial_size": [16, 16, 16]},
            },
            "model": {"name": "test_resenc_clip", "overrides": {"bank_size": 8}},
            "task": {"name": "brgsa"},
            "optim": {"warmup_steps": 1},
            "train": {"steps": 2, "log_every": 1, "ckpt_every": 0, "eval_every": 2, "progress": False},
            "output": str(tmp_path / "run"),
        }
    )
    run = train(cfg)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    steps = [r for r in records if "loss" in r]
    assert all("bank_shared" in r and "bank_entropy_text" in r and "paired_cos" in r for r in steps)
    (val,) = [r for r in records if "val_macro_auroc" in r]
    for key in ("gap", "centroid_cos", "paired_cos", "gap_rec", "bank_shared", "bank_entropy_image"):
        assert f"val_{key}_summary" in val, key
    assert 0 <= val["val_gap_summary"] <= 2 and -1 <= val["val_paired_cos_summary"] <= 1
