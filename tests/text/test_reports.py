"""Report processing: sentence splitting, sections, alias table, negation/uncertainty scope."""

from __future__ import annotations

import pytest

from medvl3d.schema import CTRATE_LABELS
from medvl3d.text.reports import (
    ALIASES,
    ReportParser,
    find_mentions,
    is_english,
    load_aliases,
    load_cues,
    normalise_finding,
    split_sections,
    split_sentences,
)


def status(text: str) -> dict[str, set[str]]:
    """finding -> set of statuses ("affirmed"/"negated"/"uncertain") of its mentions in ``text``."""
    out: dict[str, set[str]] = {}
    for m in find_mentions(text):
        out.setdefault(m.finding, set()).add(
            "negated" if m.negated else "uncertain" if m.uncertain else "affirmed"
        )
    return out


def test_split_sentences_real_punctuation():
    text = (
        "Nodules of 2.3 and 3 mm in diameter were observed (intrapulmonary lymph node?). "
        "A lesion, i.e. a cyst, "
        'vs. a hemangioma is seen. Is this a hernia? Yes.\n\n- bullet one\n- bullet two " Impression text'
    )
    assert split_sentences(text) == [
        "Nodules of 2.3 and 3 mm in diameter were observed (intrapulmonary lymph node?).",
        "A lesion, i.e. a cyst, vs. a hemangioma is seen.",
        "Is this a hernia?",
        "Yes.",
        "bullet one",
        "bullet two",
        "Impression text",
    ]


@pytest.mark.parametrize("text", ["", "   ", "...;;,", '" . " \u2022 -- ?!'])
def test_split_sentences_empty_and_punctuation(text):
    assert split_sentences(text) == []


def test_split_sections_headers_and_plain():
    text = "CLINICAL INFORMATION: cough. FINDINGS: Small effusion.\nIMPRESSION: Effusion. Impressions: more."
    assert split_sections(text) == {
        "clinical_information": "cough.",
        "findings": "Small effusion.",
        "impression": "Effusion. more.",
    }
    assert split_sections("No headers here.") == {"findings": "No headers here."}
    assert split_sections("") == {}


def test_history_section_is_not_a_finding():
    ms = find_mentions("Clinical information: pleural effusion? Findings: No pleural effusion.")
    assert [(m.section, m.negated) for m in ms] == [("clinical_information", False), ("findings", True)]


def test_alias_table_covers_ctrate_labels_and_more():
    assert set(CTRATE_LABELS) <= set(ALIASES)
    assert len(ALIASES) > len(CTRATE_LABELS)


@pytest.mark.parametrize(
    "phrase, finding",
    [
        ("LAP", "Lymphadenopathy"),
        ("enlarged lymph nodes", "Lymphadenopathy"),
        ("ground-glass opacity", "Lung opacity"),
        ("hiatus hernia", "Hiatal hernia"),
        ("bullous changes", "Emphysema"),
        ("port catheter", "Medical material"),
        ("sternotomy wires", "Medical material"),
        ("atheromatous plaques in the aortic arch", "Arterial wall calcification"),
        ("calcific plaques in the coronary arteries", "Coronary artery wall calcification"),
        ("interlobular septal thickness increases", "Interlobular septal thickening"),
        ("mosaic perfusion", "Mosaic attenuation pattern"),
        ("pneumothorax", "Pneumothorax"),
        ("the weather is nice", None),
    ],
)
def test_normalise_finding(phrase, finding):
    assert normalise_finding(phrase) == finding


@pytest.mark.parametrize(
    "text, expected",
    [
        # Scope ends at "but": the effusion is negated, the consolidation is not.
        (
            "No pleural effusion, but bilateral consolidations are present.",
            {"Pleural effusion": {"negated"}, "Consolidation": {"affirmed"}},
        ),
        ("Pericardial effusion-thickening was not observed.", {"Pericardial effusion": {"negated"}}),
        (
            "No enlarged lymph nodes were detected in prevascular or hilar areas.",
            {"Lymphadenopathy": {"negated"}},
        ),
        # A list under one negation.
        (
            "No emphysema, bronchiectasis or atelectasis was detected.",
            {"Emphysema": {"negated"}, "Bronchiectasis": {"negated"}, "Atelectasis": {"negated"}},
        ),
        # A complete statement then a new one after ", and": the second is not negated by the first.
        (
            "No mass was detected in both lungs, and a few nonspecific nodules are observed.",
            {"Lung nodule": {"affirmed"}},
        ),
        (
            "Aeration of both lungs is normal and no nodular lesion is detected.",
            {"Lung nodule": {"negated"}},
        ),
        # Semicolon ends the scope.
        (
            "No effusion; atelectasis in the left lower lobe.",
            {"Pleural effusion": {"negated"}, "Atelectasis": {"affirmed"}},
        ),
        # Pseudo-negations.
        ("No change in the right upper lobe nodule.", {"Lung nodule": {"affirmed"}}),
        ("A 13 mm lymph node that did not reach pathological size.", {"Lymphadenopathy": {"affirmed"}}),
        (
            "Pleural effusion is observed on the right and was not detected in the previous examination.",
            {"Pleural effusion": {"affirmed"}},
        ),
        # Uncertainty, pre and post.
        ("Possible atelectasis in the left lower lobe.", {"Atelectasis": {"uncertain"}}),
        ("Early consolidation cannot be excluded.", {"Consolidation": {"uncertain"}}),
        (
            "A 3 mm nodule (lymph node?) in the fissure.",
            {"Lung nodule": {"affirmed"}, "Lymphadenopathy": {"uncertain"}},
        ),
        # Context rules: coronary plaques are not arterial wall calcification,
        # thyroid nodules are not lung nodules.
        ("Calcific plaques in the coronary arteries.", {"Coronary artery wall calcification": {"affirmed"}}),
        (
            "Atheromatous plaques in the aorta and coronary arteries.",
            {"Arterial wall calcification": {"affirmed"}, "Coronary artery wall calcification": {"affirmed"}},
        ),
        ("A nodule in the right thyroid lobe.", {"Thyroid nodule": {"affirmed"}}),
        ("Effusion is observed in the pericardial space.", {"Pericardial effusion": {"affirmed"}}),
        ("Subcutaneous emphysema in the chest wall.", {}),
    ],
)
def test_negation_scope_and_context(text, expected):
    assert status(text) == expected


def test_historical_mentions():
    (old,) = find_mentions("The consolidation seen in the previous examination has regressed.")
    assert old.historical and not old.affirmed and not old.negated
    (now,) = find_mentions("The nodule seen in the previous examination is stable.")
    assert now.affirmed and not now.historical


COMPARED_WITH_DATED_CT = "Compared with the CT examination dated 05.02.2018, consolidation is seen."


def _temporality(text: str) -> dict[str, str]:
    """finding -> "historical" / "affirmed" / "other" of its mentions in ``text`` (one mention each)."""
    out = {}
    for m in find_mentions(text):
        assert m.finding not in out, f"{m.finding} mentioned twice in {text!r}"
        out[m.finding] = "historical" if m.historical else "affirmed" if m.affirmed else "other"
    return out


@pytest.mark.parametrize(
    "text, expected",
    [
        # "compared" is no current cue: what changed decides, not the comparison itself.
        ("Compared to the previous examination, the consolidation has regressed.", "historical"),
        ("Pleural effusion has regressed when compared with the previous examination.", "historical"),
        # The baseline of a comparison does not put the finding in the past ...
        (COMPARED_WITH_DATED_CT, "affirmed"),
        ("Compared to the patient's examination dated March 26, 2018, a nodule is observed.", "affirmed"),
        # ... and current cues still win over an earlier examination.
        ("Nodules of stable size were observed when compared with the previous examination.", "affirmed"),
        ("Consolidation increased compared to the previous examination.", "affirmed"),
    ],
)
def test_comparison_with_an_earlier_examination(text, expected):
    assert set(_temporality(text).values()) == {expected}


def test_comparison_baseline_is_masked_by_the_cue_file():
    """Without the pseudo_historical cues, "CT ... dated" would make the clause historical."""
    cues = load_cues()
    assert not ReportParser(cues=cues).find_mentions(COMPARED_WITH_DATED_CT)[0].historical
    (m,) = ReportParser(cues={**cues, "pseudo_historical": []}).find_mentions(COMPARED_WITH_DATED_CT)
    assert m.historical


@pytest.mark.parametrize(
    "text, expected",
    [
        # "loss of" governs only the finding right after it.
        ("Loss of volume with consolidation in the right lower lobe.", {"Consolidation": "affirmed"}),
        (
            "Slight loss of aeration in the posterobasal left lung, position-dependent atelectasis.",
            {"Atelectasis": "affirmed"},
        ),
        ("Loss of consolidation is observed in this examination.", {"Consolidation": "historical"}),
        ("Loss of the consolidation in the left lower lobe.", {"Consolidation": "historical"}),
        (
            "Loss of consolidation is observed and there is linear atelectasis in this localization.",
            {"Consolidation": "historical", "Atelectasis": "affirmed"},
        ),
    ],
)
def test_loss_of_a_finding_is_not_loss_of_volume(text, expected):
    assert _temporality(text) == expected


def test_mention_spans_index_the_input():
    text = "Trachea is open.  Bilateral pleural effusion-thickening is seen; no ground-glass opacity."
    for m in find_mentions(text):
        assert text[m.start : m.end] == m.text
        assert m.text.lower().replace("-", " ") in m.clause.lower().replace("-", " ")


def test_custom_alias_table(tmp_path):
    path = tmp_path / "aliases.yaml"
    path.write_text(
        "Widget:\n  - 'widgets?'\n  - 'gizmo'\nPleural effusion:\n  patterns: ['effusion']\n",
        encoding="utf-8",
    )
    table = load_aliases(path)
    parser = ReportParser(aliases=table)
    ms = parser.find_mentions("A gizmo is present. No effusion.")
    assert [(m.finding, m.negated) for m in ms] == [("Widget", False), ("Pleural effusion", True)]


def test_bad_tables_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_aliases(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("Widget:\n  patterns: ['(unclosed']\n")
    with pytest.raises(ValueError, match="bad.yaml.*Widget"):
        load_aliases(bad)
    bad.write_text("Widget:\n  pattern: ['x']\n", encoding="utf-8")
    with pytest.raises(ValueError, match="patterns"):
        load_aliases(bad)
    cues = tmp_path / "cues.yaml"
    cues.write_text("pre_negation: ['no']\n", encoding="utf-8")
    with pytest.raises(ValueError, match="missing cue lists"):
        load_cues(cues)
    lists = "".join(f"{k}: ['x']\n" for k in ("pre_negation", "post_negation", "pseudo_negation"))
    lists += "pre_uncertainty: ['x']\npost_uncertainty: ['x']\n"
    cues.write_text(lists + "terminators: end a scope\n", encoding="utf-8")  # a comment that lost its '#'
    with pytest.raises(ValueError, match=r"\['terminators'\] must be lists"):
        load_cues(cues)
    cues.write_text(lists + "terminators: ['x']\npre_historical: loss of\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"\['pre_historical'\] must be lists"):
        load_cues(cues)
    with pytest.raises(ValueError, match="string"):
        find_mentions(None)


def test_language_check():
    assert is_english("No pleural effusion was observed in both lungs. The heart size is normal.")
    assert not is_english(
        "Kein Pleuraerguss. Herzgröße normal, keine Lymphknotenvergrößerung im Mediastinum."
    )
    assert not is_english("Plevral efüzyon izlenmedi. Kalp boyutları normaldir.")
    assert not is_english("Épanchement pleural bilatéral. Pas de nodule pulmonaire.")
    assert not is_english("...")
    # Terse finding lists (summaries) are English too.
    assert is_english(
        "pleural effusion (bilateral). lung nodule (right upper lobe). degenerative spine changes."
    )


def test_real_report_sentences(real_dir):
    import csv
    import re

    with open(real_dir / "ctrate_reports" / "train.csv", newline="", encoding="utf-8") as fh:
        reports = [row["report_text"] for row in csv.DictReader(fh)]
    # The language flag never fires on real English reports.
    assert all(is_english(text) for text in reports)
    for text in reports[:50]:
        sentences = split_sentences(text)
        assert sentences, "every real report has sentences"
        # Nothing is lost: every word of the report is in some sentence.
        words = re.compile(r"\w+")
        assert sum(len(words.findall(s)) for s in sentences) == len(words.findall(text))


def test_characters_that_lengthen_when_lower_cased_do_not_shift_spans():
    # 'İ'.lower() is two characters; spans must still line up so later findings are not lost.
    from medvl3d.text.reports import find_mentions

    found = [m.finding for m in find_mentions("İİ hospital. There is pleural effusion.")]
    assert found == ["Pleural effusion"]
