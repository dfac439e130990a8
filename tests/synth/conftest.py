"""Fixtures for the SynthCT-VL tests: one tiny generated data set shared by the module tests."""

from __future__ import annotations

import re

import pytest

from medvl3d.data.synth import generate

# Tiny but whole-torso: 32 slices x 48 x 48 at 10 x 7.5 x 7.5 mm.
TINY = {"size": (32, 48, 48), "spacing": (10.0, 7.5, 7.5)}

# Our own phrase table: a sentence that matches the pattern and has no negation cue asserts the label.
PHRASES = {
    "Medical material": r"catheter|sternotomy|metallic suture",
    "Arterial wall calcification": r"atherosclero|atheromatous",
    "Cardiomegaly": r"cardiomegaly|heart size increased|heart is enlarged",
    "Pericardial effusion": r"pericardial (effusion|fluid)",
    "Coronary artery wall calcification": r"coronary (artery )?calcification|coronary arteries",
    "Hiatal hernia": r"hiatal hernia",
    "Lymphadenopathy": r"lymphadenopathy|enlarged lymph node",
    "Emphysema": r"emphysema",
    "Atelectasis": r"atelecta",
    "Lung nodule": r"nodule|nodular lesion",
    "Lung opacity": r"opacit|ground-glass (area|density increase)",
    "Pulmonary fibrotic sequela": r"fibrotic",
    "Pleural effusion": r"pleural (effusion|fluid)",
    "Mosaic attenuation pattern": r"mosaic",
    "Peribronchial thickening": r"peribronchial|bronchial wall thickening",
    "Consolidation": r"consolidation",
    "Bronchiectasis": r"bronchiecta",
    "Interlobular septal thickening": r"interlobular septal",
}
NEGATION = re.compile(r"\b(no|not|without|neither|nor)\b", re.I)


def asserted_labels(report: str) -> set[str]:
    """Labels that some non-negated sentence of `report` asserts (per the phrase table)."""
    out = set()
    for sentence in re.split(r"(?<=\.)\s+", report):
        if NEGATION.search(sentence):
            continue
        for name, pat in PHRASES.items():
            if re.search(pat, sentence, re.I):
                out.add(name)
    return out


@pytest.fixture(scope="session")
def tiny_set(tmp_path_factory):
    """A generated set (4 train + 4 valid cases) and its summary."""
    out = tmp_path_factory.mktemp("synth") / "tiny"
    summary = generate(out, n_train=4, n_test=4, seed=3, workers=1, progress=False, **TINY)
    return out, summary


@pytest.fixture(scope="session")
def report_checker():
    return asserted_labels
