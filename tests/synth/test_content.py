"""Ground truth consistency: lesion masks vs the attribute table, reports vs labels, splits."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from medvl3d.data.synth import plan_cases, underrepresented_quota
from medvl3d.data.synth.abnormalities import DRAWN
from medvl3d.data.synth.lesion_types import load_lesion_types
from medvl3d.data.synth.lesions import Lesion
from medvl3d.data.synth.phantom import LESION_ORGAN_IDS, ORGAN_IDS
from medvl3d.data.synth.reports import write_report
from medvl3d.schema import CTRATE_LABELS, attribute_values

SIDE_IDS = {"left kidney": ORGAN_IDS["kidney_left"], "right kidney": ORGAN_IDS["kidney_right"]}


def _manifest(out, split):
    return [
        json.loads(line)
        for line in (out / f"manifest_{split}.jsonl").read_text(encoding="utf-8").splitlines()
    ]


def test_every_lesion_has_a_mask_inside_its_organ(tiny_set):
    out, _ = tiny_set
    n = 0
    for split in ("train", "valid"):
        for row in _manifest(out, split):
            les = np.asarray(nib.load(out / row["label"]).dataobj)
            organs = np.asarray(nib.load(out / row["organs"]).dataobj)
            ids = {int(k) for k in row["lesions"]}
            assert set(np.unique(les)) - {0} == ids  # no unlisted instance, no empty listed one
            for lid, att in row["lesions"].items():
                m = les == int(lid)
                assert m.sum() > 0
                inside = np.isin(organs[m], LESION_ORGAN_IDS[att["organ"]]).mean()
                assert inside >= 0.5, (row["case_id"], lid, att, inside)
                if att["location"] in SIDE_IDS:  # the side of a kidney lesion is the labelled kidney
                    assert (organs[m] == SIDE_IDS[att["location"]]).mean() >= 0.5
                for attr in ("location", "shape", "density", "homogeneity", "margin", "neighbor_relation"):
                    assert att[attr] in attribute_values(att["organ"], attr)
                assert att["contrast"] == row["phase"]
                n += 1
    assert n >= 4


def test_reports_mention_every_positive_and_assert_no_negative(tiny_set, report_checker):
    out, _ = tiny_set
    for split in ("train", "valid"):
        for row in _manifest(out, split):
            asserted = report_checker(row["report"])
            pos = {k for k, v in row["labels"].items() if v}
            assert pos <= asserted, (row["case_id"], pos - asserted)
            assert asserted <= pos, (row["case_id"], asserted - pos)
            for att in row["lesions"].values():
                assert f"{int(att['size_mm'])} mm" in row["report"]


def _fake_lesions(rng, types):
    out = []
    names = sorted(types)
    for i in range(int(rng.integers(0, 4))):
        t = types[names[int(rng.integers(len(names)))]]
        attrs = {"contrast": "contrast-enhanced"}
        for a in ("location", "shape", "density", "homogeneity", "margin", "neighbor_relation"):
            attrs[a] = t.sample(rng, a)
        out.append(Lesion(i + 1, t.name, t.organ, attrs, float(rng.integers(5, 40)), (0, 0, 0), 1.0))
    return out


def test_report_writer_consistency_over_random_label_sets(report_checker):
    """Many random label combinations: positives are mentioned, negatives never asserted."""
    types = load_lesion_types()
    details = {
        "Pleural effusion": {"side": "left", "size_mm": 20},
        "Atelectasis": {"lobe": "right lower lobe"},
        "Lymphadenopathy": {"stations": ["subcarinal"], "size_mm": 14},
    }
    phrasings = set()
    for seed in range(300):
        rng = np.random.default_rng(seed)
        lesions = _fake_lesions(rng, types)
        labels = {n: int(n in DRAWN and rng.uniform() < 0.3) for n in CTRATE_LABELS}
        labels["Lung nodule"] = int(any(les.organ == "lung" for les in lesions))
        rep = write_report(labels, details, lesions, types, "contrast-enhanced", rng)
        text = rep["Findings_EN"] + " " + rep["Impressions_EN"]
        pos = {k for k, v in labels.items() if v}
        assert report_checker(text) == pos, (seed, text)
        if labels["Cardiomegaly"]:
            phrasings.add(next(s for s in text.split(". ") if "eart" in s or "ardiomegaly" in s))
    assert len(phrasings) >= 3  # several phrasings per finding
    normal = write_report(
        {n: 0 for n in CTRATE_LABELS}, {}, [], types, "non-contrast", np.random.default_rng(0)
    )
    assert normal["Impressions_EN"] == "Thoracic CT examination within normal limits."


def test_lesion_sentences_vary_attribute_wording():
    types = load_lesion_types()
    t = types["hepatocellular_carcinoma"]
    attrs = {
        "contrast": "contrast-enhanced",
        "location": "right lobe",
        "shape": "irregular",
        "density": "hypodense",
        "homogeneity": "heterogeneous",
        "margin": "ill-defined",
        "neighbor_relation": "separate from neighbouring organs",
    }
    les = Lesion(1, t.name, t.organ, attrs, 31.0, (0, 0, 0), 1.0)
    words = set()
    for seed in range(60):
        rep = write_report(
            {n: 0 for n in CTRATE_LABELS}, {}, [les], types, "contrast-enhanced", np.random.default_rng(seed)
        )["Findings_EN"]
        assert "31 mm" in rep and ("hepatic lobe" in rep or "lobe of the liver" in rep)
        words |= {w for w in ("hypodense", "low-attenuation", "hypoattenuating") if w in rep}
        words |= {w for w in ("ill-defined", "indistinct", "poorly defined") if w in rep}
    assert len(words) == 6


def test_plan_enforces_unseen_and_underrepresented():
    types = load_lesion_types()
    unseen = tuple(n for n, t in types.items() if t.unseen)
    seen = tuple(n for n in types if n not in unseen)
    under = ("Pericardial effusion", "Hiatal hernia")
    plans = plan_cases(
        1000,
        50,
        7,
        seen_types=seen,
        unseen_types=unseen,
        underrepresented=under,
        unseen_abnormalities=("Bronchiectasis",),
    )
    train = [p for p in plans if p.split == "train"]
    valid = [p for p in plans if p.split == "valid"]
    assert underrepresented_quota(1000) == 20 and underrepresented_quota(49) == 0
    for name in under:
        forced = sum(name in p.forced for p in train)
        assert forced == 20 and forced / len(train) <= 0.02
        # Every other training case forbids it, so Bernoulli draws cannot add more.
        assert all((name in p.forced) != (name in p.forbidden) for p in train)
    assert all("Bronchiectasis" in p.forbidden for p in train)
    assert all(not set(p.lesion_pool) & set(unseen) for p in train)
    assert all(set(unseen) <= set(p.lesion_pool) for p in valid)
    assert not any(p.forbidden or p.forced for p in valid)


def test_generated_splits_respect_the_plan(tiny_set):
    out, _ = tiny_set
    splits = json.loads((out / "splits.json").read_text(encoding="utf-8"))
    unseen_t = set(splits["lesion_types"]["unseen"])
    unseen_a = splits["abnormalities"]["unseen"]
    under = splits["abnormalities"]["underrepresented"]
    assert unseen_t and unseen_a and under
    for row in _manifest(out, "train"):
        assert not {a["type"] for a in row["lesions"].values()} & unseen_t
        assert all(row["labels"][n] == 0 for n in unseen_a + under)  # 4 cases: quota 0
        assert row["labels"]["Interlobular septal thickening"] == 0


def test_bad_split_arguments(tmp_path):
    from medvl3d.data.synth import generate

    with pytest.raises(ValueError, match="unknown lesion types"):
        generate(tmp_path, n_train=1, n_test=0, unseen_lesion_types=["dragon"], progress=False)
    with pytest.raises(ValueError, match="unknown abnormalities"):
        generate(tmp_path, n_train=1, n_test=0, underrepresented=["Flu"], progress=False)
    with pytest.raises(ValueError, match="both underrepresented and unseen"):
        generate(
            tmp_path,
            n_train=1,
            n_test=0,
            underrepresented=["Emphysema"],
            unseen_abnormalities=["Emphysema"],
            progress=False,
        )
    with pytest.raises(ValueError, match="size"):
        generate(tmp_path, n_train=1, n_test=0, size=(4, 4, 4), progress=False)


def test_make_case_honours_forced_and_forbidden(tmp_path, report_checker):
    """A forced abnormality is drawn and reported; a forbidden one never is, whatever the draws."""
    from medvl3d.data.synth.case import CaseConfig, CasePlan, make_case

    types = load_lesion_types()
    seen = tuple(n for n, t in types.items() if not t.unseen)
    cfg = CaseConfig((48, 48, 32), (7.5, 7.5, 10.0), 4, types)
    drawable = frozenset(n for n in DRAWN if n != "Lung nodule")
    row = make_case(CasePlan("train", 0, seen, (), forced=drawable), cfg, str(tmp_path))
    on = {n for n, v in row["labels"].items() if v}
    assert len(on & drawable) >= 14  # a drawer may skip when its region is out of view at this size
    assert on <= report_checker(row["report"]["Findings_EN"] + " " + row["report"]["Impressions_EN"])
    row = make_case(CasePlan("train", 1, (), (), forbidden=frozenset(CTRATE_LABELS)), cfg, str(tmp_path))
    assert not any(row["labels"].values()) and row["lesions"] == {}
    assert row["report"]["Impressions_EN"] == "Thoracic CT examination within normal limits."


def test_rerun_with_fewer_cases_warns_about_stale_folders(tmp_path):
    from medvl3d.data.synth import generate

    kw = dict(size=(16, 24, 24), spacing=(20.0, 15.0, 15.0), workers=1, progress=False)
    generate(tmp_path, n_train=2, n_test=0, **kw)
    with pytest.warns(UserWarning, match="earlier run"):
        generate(tmp_path, n_train=1, n_test=0, **kw)


@pytest.mark.slow
def test_underrepresented_prevalence_end_to_end(tmp_path):
    """100 small training cases: each underrepresented abnormality in exactly 2, unseen ones in none."""
    import csv

    from medvl3d.data.synth import generate

    generate(
        tmp_path,
        n_train=100,
        n_test=0,
        size=(16, 32, 32),
        spacing=(20.0, 11.0, 11.0),
        seed=5,
        workers=2,
        progress=False,
    )
    splits = json.loads((tmp_path / "splits.json").read_text(encoding="utf-8"))
    with open(tmp_path / "multi_abnormality_labels" / "train_predicted_labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 100
    for name in splits["abnormalities"]["underrepresented"]:
        assert sum(int(r[name]) for r in rows) <= 2
    for name in splits["abnormalities"]["unseen"]:
        assert sum(int(r[name]) for r in rows) == 0
    assert sum(int(r["Lung nodule"]) for r in rows) > 10  # seen findings keep their usual prevalence
