"""evaluate_diagnosis: per-label/macro/group metrics, undefined labels, modality gap, report output, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import medvl3d.text.prompts  # noqa: F401  (a broken import must fail)
from medvl3d import models
from medvl3d.eval.diagnosis import evaluate_diagnosis, load_label_groups, modality_gap
from medvl3d.models.checkpoint import save_checkpoint

LABELS = ("Pleural effusion", "Emphysema", "Cardiomegaly")


def test_modality_gap_hand_computed():
    e1, e2 = torch.eye(3)[0], torch.eye(3)[1]
    assert modality_gap(e1.repeat(4, 1), e2.repeat(5, 1)) == pytest.approx(math.sqrt(2))
    assert modality_gap(3 * e1.repeat(2, 1), e1.repeat(2, 1)) == pytest.approx(0.0)  # normalised first
    # centroids of {e1, e2} and {e1}: |(0.5, 0.5) - (1, 0)| = sqrt(0.5)
    assert modality_gap(torch.stack([e1, e2]), e1[None]) == pytest.approx(math.sqrt(0.5))
    with pytest.raises(ValueError, match="at least one"):
        modality_gap(torch.empty(0, 3), e1[None])


class _Cases(torch.utils.data.Dataset):
    """Raw samples: CT-like volumes with labels; Cardiomegaly is negative everywhere (undefined)."""

    def __init__(self, n=12):
        g = torch.Generator().manual_seed(0)
        self.items = []
        for i in range(n):
            labels = {"Pleural effusion": i % 2, "Emphysema": int(i % 3 == 0), "Cardiomegaly": 0}
            report = ("Pleural effusion is present. " if i % 2 else "No pleural effusion. ") + f"Case {i}."
            self.items.append(
                {
                    "image": torch.randn(1, 32, 32, 32, generator=g) * 200 - 500,
                    "report": report,
                    "labels": labels,
                    "meta": {"case_id": f"c{i}", "affine": np.eye(4).tolist(), "modality": "CT"},
                }
            )

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = models.create_model("test_vit_clip", bank_size=8)
    info = {
        "model": {"name": "test_vit_clip", "family": "vl", "config": model.config.to_dict()},
        "preprocess": {"spacing": None, "spatial_size": [32, 32, 32]},
        "text": {},
        "prompts": {},
        "task": "brgsa",
        "modality": "CT",
        "labels": [],
    }
    return save_checkpoint(tmp_path_factory.mktemp("ckpt"), 3, model, info)


def test_report_numbers_groups_and_gap(ckpt, monkeypatch):
    from medvl3d.infer import Predictor

    pred = Predictor.from_checkpoint(ckpt, device="cpu")
    ds = _Cases()
    truth = np.array([[ds[i]["labels"][k] for k in LABELS] for i in range(len(ds))])
    # scores with known AUROCs: perfect for effusion, inverted for emphysema (as prompt logits)
    scores = np.stack([truth[:, 0] * 0.5 + 0.25, 1 - truth[:, 1] * 0.6 - 0.1, np.linspace(0.01, 0.99, 12)], 1)
    logits = np.log(scores / (1 - scores))
    monkeypatch.setattr(pred, "logits", lambda emb, labels: logits[:, [LABELS.index(n) for n in labels]])
    groups = {"seen": ["pleural effusion", "Cardiomegaly"], "unseen": ["Emphysema"]}
    rep = evaluate_diagnosis(pred, ds, labels=None, bootstrap=200, groups=groups, progress=False)
    assert rep.labels == list(LABELS) and rep.n_cases == 12
    assert rep.per_label["Pleural effusion"].auroc == 1.0
    assert rep.per_label["Emphysema"].auroc == 0.0
    assert not rep.per_label["Cardiomegaly"].defined and rep.per_label["Cardiomegaly"].auroc is None
    assert rep.macro["auroc"] == pytest.approx(0.5) and rep.macro["n_defined"] == 2  # undefined not averaged
    assert rep.groups["seen"]["auroc"] == 1.0 and rep.groups["seen"]["n_defined"] == 1
    assert rep.groups["unseen"]["auroc"] == 0.0
    lo, hi = rep.per_label["Pleural effusion"].ci["auroc"]
    assert lo == hi == 1.0  # a perfect separation stays perfect in every resample
    # modality gap computed from the real model embeddings, before and after the bank
    with torch.no_grad():
        imgs = pred.encode_images([pred.preprocess(ds[i]) for i in range(12)])
        txt = pred.model.encode_text([ds[i]["report"] for i in range(12)])
        before = modality_gap(imgs, txt)
        after = modality_gap(pred.model.reconstruct(imgs), pred.model.reconstruct(txt))
    assert rep.modality_gap["before_bank"] == pytest.approx(before, rel=1e-5)
    assert rep.modality_gap["after_bank"] == pytest.approx(after, rel=1e-5)
    md = rep.to_markdown()
    assert "| Pleural effusion | seen | 6/12 | 1.000 [1.000, 1.000]" in md
    assert "Undefined (one class only in this set, not averaged): Cardiomegaly" in md
    data = json.loads(rep.to_json())
    assert data["per_label"]["Cardiomegaly"]["auroc"] is None and data["macro"]["n_defined"] == 2


def test_label_selection_and_errors(ckpt):
    from medvl3d.infer import Predictor

    pred = Predictor.from_checkpoint(ckpt, device="cpu")
    rep = evaluate_diagnosis(pred, _Cases(6), labels=["emphysema"], bootstrap=0, progress=False)
    assert rep.labels == ["Emphysema"] and rep.per_label["Emphysema"].ci == {}
    with pytest.raises(ValueError, match="'Hiatal hernia' is not annotated"):
        evaluate_diagnosis(pred, _Cases(4), labels=["Hiatal hernia"], bootstrap=0, progress=False)
    with pytest.raises(ValueError, match="empty"):
        evaluate_diagnosis(pred, _Cases(0), bootstrap=0, progress=False)
    assert rep.meta["prompts"] == pred.prompts.to_dict()  # the report says which prompts scored it
    # already preprocessed cases (the training loop's validation data) score exactly like raw ones
    cases = _Cases(6)
    ready = [{**c, "image": pred.preprocess(c)} for c in cases.items]
    same = evaluate_diagnosis(
        pred, ready, labels=["emphysema"], bootstrap=0, progress=False, preprocessed=True
    )
    assert same.probabilities == rep.probabilities
    with pytest.raises(ValueError, match=r"case c0: a preprocessed image must be .* got \(1, 16, 32, 32\)"):
        bad = [{**c, "image": c["image"][:, :16]} for c in cases.items]
        evaluate_diagnosis(pred, bad, bootstrap=0, progress=False, preprocessed=True)
    with pytest.raises(ValueError, match="pass prompts to the Predictor"):
        evaluate_diagnosis(pred, _Cases(4), bootstrap=0, progress=False, prompts=pred.prompts)


def test_label_groups_from_splits_json(tmp_path):
    assert load_label_groups(tmp_path) == {}
    (tmp_path / "splits.json").write_text(
        json.dumps(
            {"abnormalities": {"seen": ["A"], "underrepresented": ["B"], "unseen": ["C"], "not_drawn": ["D"]}}
        )
    )
    assert load_label_groups(tmp_path) == {"seen": ["A"], "underrepresented": ["B"], "unseen": ["C"]}
