"""Report labeller: real CT-RATE reports with manual labels, hand-written cases, bad input."""

from __future__ import annotations

import csv
import warnings

import numpy as np
import pytest

from medvl3d.schema import CTRATE_LABELS
from medvl3d.text.labeller import (
    ReportLabeller,
    cross_validate,
    evaluate_labeller,
    format_table,
    report_problem,
)
from medvl3d.text.reports import join_report

# Measured (quiet machine not needed; deterministic): rules macro AUROC 0.978, F1 0.944;
# 5-fold cross-validated calibration macro AUROC 0.973, F1 0.944. Thresholds keep a 0.02 margin.
MIN_RULE_AUROC, MIN_RULE_F1 = 0.958, 0.924
MIN_CV_AUROC, MIN_CV_F1 = 0.953, 0.924


@pytest.fixture(scope="module")
def real(real_dir):
    with open(real_dir / "ctrate_reports" / "train.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    texts = [r["report_text"] for r in rows]
    y = np.array([[int(r[k]) for k in CTRATE_LABELS] for r in rows])
    return texts, y


@pytest.fixture(scope="module")
def real_features(real):
    """Rule features of the 800 reports, parsed once for all tests."""
    return ReportLabeller().features_many(real[0], progress=False)


@pytest.fixture(scope="module")
def labeller():
    return ReportLabeller()


def test_real_reports_rules(real, real_features, labeller):
    texts, y = real
    probs = labeller.proba_from_features(real_features)
    np.testing.assert_allclose(probs[:20], labeller.predict_many(texts[:20], progress=False))
    assert probs.shape == (800, 18) and probs.min() >= 0 and probs.max() <= 1
    table = evaluate_labeller(None, y, probs=probs)
    assert table["macro"]["auroc"] >= MIN_RULE_AUROC, format_table({"rules": table})
    assert table["macro"]["f1"] >= MIN_RULE_F1, format_table({"rules": table})
    # No label is left behind: each is far above chance.
    assert min(table[lab]["auroc"] for lab in CTRATE_LABELS) >= 0.88, format_table({"rules": table})


def test_real_reports_cross_validated_calibration(real, real_features):
    texts, y = real
    probs = cross_validate(texts, y, k=5, seed=0, features=real_features)
    table = evaluate_labeller(None, y, probs=probs)
    assert table["macro"]["auroc"] >= MIN_CV_AUROC, format_table({"cv": table})
    assert table["macro"]["f1"] >= MIN_CV_F1, format_table({"cv": table})


@pytest.mark.parametrize(
    "report, positives",
    [
        ("No pleural effusion, but bilateral consolidations are present.", {"Consolidation"}),
        (
            "Pericardial effusion-thickening was not observed. Pleural effusion-thickening was not detected. "
            "No enlarged lymph nodes were detected in prevascular, subcarinal or hilar areas.",
            set(),
        ),
        ("Thoracic CT examination within normal limits.", set()),
        (
            "A port catheter extending to the right atrium is observed. Sternotomy wires are present.",
            {"Medical material"},
        ),
        (
            "Calcific atheroma plaques are observed in the aorta and coronary arteries.",
            {"Arterial wall calcification", "Coronary artery wall calcification"},
        ),
        ("The cardiothoracic index increased in favor of the heart (cardiomegaly).", {"Cardiomegaly"}),
        ("A sliding type hiatal hernia is observed.", {"Hiatal hernia"}),
        (
            "Centriacinar emphysematous changes and bullae in both upper lobes; no bronchiectasis.",
            {"Emphysema"},
        ),
        (
            "Subsegmental atelectasis and pleuroparenchymal sequelae changes in the right middle lobe.",
            {"Atelectasis", "Pulmonary fibrotic sequela"},
        ),
        ("A 5 mm nodule in the right upper lobe. No mass lesion was detected.", {"Lung nodule"}),
        ("Patchy ground-glass opacities in both lower lobes.", {"Lung opacity"}),
        (
            "Mosaic attenuation pattern, peribronchial thickening and interlobular septal thickening "
            "are seen.",
            {"Mosaic attenuation pattern", "Peribronchial thickening", "Interlobular septal thickening"},
        ),
        ("Cylindrical bronchiectasis in the left lower lobe.", {"Bronchiectasis"}),
        ("Mediastinal LAPs, the largest 22x14 mm.", {"Lymphadenopathy"}),
        ("Nodules and effusion are not observed.", set()),
        (
            "No nodule, effusion or consolidation was detected; atelectasis in the left lower lobe.",
            {"Atelectasis"},
        ),
        # Temporality: what changed decides, not the comparison; "loss of volume" is not loss of a finding.
        ("Compared to the previous examination, the consolidation has regressed.", set()),
        ("Loss of volume with consolidation in the right lower lobe.", {"Consolidation"}),
    ],
)
def test_hand_written_reports(labeller, report, positives):
    pred = labeller.predict(report)
    assert {k for k, v in pred.items() if v} == positives


def test_uncertain_is_between_negated_and_affirmed(labeller):
    p_aff = labeller.predict_proba("Atelectasis in the left lower lobe.")["Atelectasis"]
    p_unc = labeller.predict_proba("Possible atelectasis in the left lower lobe.")["Atelectasis"]
    p_neg = labeller.predict_proba("No atelectasis in the left lower lobe.")["Atelectasis"]
    assert p_neg < p_unc < 0.5 < p_aff


@pytest.mark.parametrize(
    "report, problem", [("", "empty"), ("   \n", "empty"), ("... ;;; 12.5 --", "no words")]
)
def test_empty_and_punctuation_reports_give_zeros(labeller, report, problem):
    assert report_problem(report) == problem
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning: an empty report is a clear, normal result
        probs = labeller.predict_proba(report)
    assert set(probs) == set(CTRATE_LABELS) and all(v == 0.0 for v in probs.values())


def test_non_english_report_warns_and_gives_zeros(labeller):
    german = "Kleiner Pleuraerguss rechts. Keine Lymphknotenvergrößerung. Herz normal groß."
    assert report_problem(german) == "not English"
    with pytest.warns(UserWarning, match="English"):
        probs = labeller.predict_proba(german)
    assert all(v == 0.0 for v in probs.values())
    with pytest.warns(UserWarning, match="1 of 2 reports"):
        many = labeller.predict_many([german, "Bilateral pleural effusion."], progress=False)
    assert many[0].sum() == 0 and many[1, CTRATE_LABELS.index("Pleural effusion")] > 0.5


def test_each_report_is_checked_once_per_call(labeller, monkeypatch, tmp_path):
    # report_problem's language check is the costly part of it: one call per report per labelling call.
    import medvl3d.text.labeller as labeller_module

    calls: list[str] = []
    real_is_english = labeller_module.is_english

    def counting_is_english(text: str) -> bool:
        calls.append(text)
        return real_is_english(text)

    monkeypatch.setattr(labeller_module, "is_english", counting_is_english)
    german = "Kleiner Pleuraerguss rechts. Keine Lymphknotenvergrößerung. Herz normal groß."
    reports = ["Bilateral pleural effusion.", german, "", "Cardiomegaly. No nodule."]
    with pytest.warns(UserWarning, match="1 of 4 reports"):
        many = labeller.predict_many(reports, progress=False)
    # "" stops before the language check; the other three are checked exactly once each.
    assert sorted(calls) == sorted([reports[0], german, reports[3]])
    assert many[1].sum() == 0 and many[2].sum() == 0
    assert many[0, CTRATE_LABELS.index("Pleural effusion")] > 0.5
    assert many[3, CTRATE_LABELS.index("Cardiomegaly")] > 0.5
    calls.clear()
    single = labeller.predict_proba(reports[3])
    assert calls == [reports[3]]
    assert list(single.values()) == pytest.approx(list(many[3]))
    calls.clear()
    feats = labeller.features_many(reports, progress=False)
    assert len(calls) == 3
    assert feats[1, :, :7].sum() == feats[2, :, :7].sum() == 0  # no mentions counted
    # the CSV command checks each report once too, and reuses the answer for its 'problem' column
    from medvl3d.text.batch import label_reports

    path = tmp_path / "reports.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([["report_text"], *[[r] for r in reports]])
    calls.clear()
    with pytest.warns(UserWarning, match="1 of 4 reports"):
        result = label_reports(path)
    assert len(calls) == 3
    assert [r["problem"] != "" for r in result.rows] == [False, True, True, False]


def test_long_report_is_read_to_the_end(labeller):
    # ~60k characters, far beyond any encoder's 256/512 tokens: the finding at the end still counts.
    normal = "Trachea and both main bronchi are open. Heart contour and size are normal. "
    report = normal * 800 + "A large hiatal hernia is observed."
    assert len(report) > 50_000
    assert labeller.predict(report)["Hiatal hernia"] == 1
    assert sum(labeller.predict(normal * 800).values()) == 0


def test_fit_save_load_roundtrip(tmp_path, real):
    texts, y = real
    fitted = ReportLabeller().fit(texts[:100], y[:100])
    assert fitted.fitted
    path = tmp_path / "labeller.json"
    fitted.save(path)
    again = ReportLabeller.load(path)
    a = fitted.predict_many(texts[300:340], progress=False)
    b = again.predict_many(texts[300:340], progress=False)
    np.testing.assert_allclose(a, b)
    with pytest.raises(ValueError, match="shape"):
        ReportLabeller().fit(texts[:3], y[:2])
    with pytest.raises(FileNotFoundError, match="nope.json"):
        ReportLabeller.load(tmp_path / "nope.json")


def test_evaluate_labeller_hand_computed():
    labels = ("A", "B")
    y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    probs = np.array([[0.9, 0.2], [0.2, 0.6], [0.4, 0.7], [0.1, 0.8]])
    table = evaluate_labeller(None, y, probs=probs, labels=labels)
    # A: positives {0.9, 0.4} vs negatives {0.2, 0.1}: AUROC 1; at 0.5 predicts [1,0,0,0] -> F1 = 2/3.
    assert table["A"]["auroc"] == pytest.approx(1.0) and table["A"]["f1"] == pytest.approx(2 / 3)
    # B: positives {0.6, 0.7} vs negatives {0.2, 0.8}: 2 of 4 pairs ranked right -> 0.5;
    # F1: tp 2, fp 1 -> 0.8.
    assert table["B"]["auroc"] == pytest.approx(0.5) and table["B"]["f1"] == pytest.approx(0.8)
    assert table["macro"]["auroc"] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="must both be"):
        evaluate_labeller(None, y, probs=probs[:, :1], labels=labels)


def test_non_string_report_is_an_error(labeller):
    with pytest.raises(ValueError, match="string"):
        labeller.predict_proba(None)
    with pytest.raises(ValueError, match="report 1 must be a string"):
        labeller.predict_many(["No effusion.", float("nan")], progress=False)


def test_unknown_label_is_an_error():
    with pytest.raises(ValueError, match="Unicorn"):
        ReportLabeller(labels=("Unicorn",))


def _synth_reports(out, n_train: int, n_test: int) -> tuple[list[str], np.ndarray]:
    """Generate SynthCT-VL (small volumes, so it is quick); read its report texts and ground-truth labels."""
    from medvl3d.data import synth

    synth.generate(out, n_train=n_train, n_test=n_test, size=(48, 64, 64), seed=0, workers=1, progress=False)
    texts, y = [], []
    for split in ("train", "valid"):
        with open(
            out / "radiology_text_reports" / f"{split}_reports.csv", newline="", encoding="utf-8"
        ) as fh:
            reports = {r["VolumeName"]: r for r in csv.DictReader(fh)}
        with open(out / "multi_abnormality_labels" / f"{split}_predicted_labels.csv", newline="") as fh:
            for row in csv.DictReader(fh):
                rep = reports[row["VolumeName"]]
                texts.append(join_report(rep["Findings_EN"], rep["Impressions_EN"]))
                y.append([int(row[k]) for k in CTRATE_LABELS])
    return texts, np.array(y)


def _check_synth(labeller: ReportLabeller, texts: list[str], y: np.ndarray, min_present: int) -> None:
    pred = (labeller.predict_many(texts, progress=False) >= 0.5).astype(int)
    present = [i for i in range(len(CTRATE_LABELS)) if y[:, i].any()]
    assert len(present) >= min_present, "the generated set should show most abnormalities"
    names = [CTRATE_LABELS[i] for i in present]
    table = evaluate_labeller(None, y[:, present], probs=pred[:, present], labels=names)
    assert table["macro"]["f1"] >= 0.98, format_table({"synth": table})
    # Labels absent from the set are never predicted either.
    absent = [i for i in range(len(CTRATE_LABELS)) if i not in present]
    assert pred[:, absent].sum() == 0


def test_synthct_reports_are_labelled_exactly(labeller, tmp_path):
    texts, y = _synth_reports(tmp_path, n_train=6, n_test=2)
    _check_synth(labeller, texts, y, min_present=6)


@pytest.mark.slow
def test_synthct_reports_are_labelled_exactly_many(labeller, tmp_path):
    texts, y = _synth_reports(tmp_path, n_train=48, n_test=12)
    _check_synth(labeller, texts, y, min_present=14)
