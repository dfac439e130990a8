"""Prompt templates, ensembles, attribute phrases and their config round trip."""

from __future__ import annotations

import pytest

from medvl3d.schema import ATTRIBUTES, LESION_ORGANS, attribute_values
from medvl3d.text.prompts import (
    CT_CLIP_PROMPTS,
    DEFAULT_PROMPTS,
    PromptSet,
    attribute_phrase,
    negative_prompts,
    positive_prompts,
)


def test_default_prompts():
    # A summary-style sentence against one fixed normal sentence (module doc: negation is left to chance).
    assert positive_prompts("Pleural effusion") == ["Pleural effusion."]
    assert negative_prompts("Pleural effusion") == ["No acute findings."]
    assert negative_prompts("Emphysema") == negative_prompts("Pleural effusion")
    assert positive_prompts("LAP") == ["LAP."]
    assert CT_CLIP_PROMPTS.positive_prompts("LAP") == ["LAP is present.", "There is LAP."]
    assert CT_CLIP_PROMPTS.negative_prompts("Pleural effusion") == [
        "Pleural effusion is not present.",
        "No pleural effusion.",
    ]


def test_custom_prompt_set_and_synonym_ensemble():
    ps = PromptSet(
        positive=("Findings of {}.", "{} is seen."),
        negative=("No evidence of {}.", "{} is not seen."),
        synonyms={"Cardiomegaly": ["enlarged heart"]},
    )
    assert ps.positive_prompts("Cardiomegaly") == [
        "Findings of cardiomegaly.",
        "Cardiomegaly is seen.",
        "Findings of enlarged heart.",
        "Enlarged heart is seen.",
    ]
    assert len(ps.negative_prompts("Cardiomegaly")) == 4
    assert ps.positive_prompts("Emphysema") == ["Findings of emphysema.", "Emphysema is seen."]


def test_round_trip_dict_and_yaml(tmp_path):
    ps = PromptSet(positive=("There is {}.",), negative=("No {}.",), synonyms={"Emphysema": ["bullae"]})
    assert PromptSet.from_dict(ps.to_dict()) == ps
    assert PromptSet.from_dict({}) == DEFAULT_PROMPTS
    path = tmp_path / "prompts.yaml"
    path.write_text("positive: ['{} is present.']\nnegative: ['{} is absent.']\n", encoding="utf-8")
    loaded = PromptSet.from_yaml(path)
    assert loaded.negative_prompts("Atelectasis") == ["Atelectasis is absent."]


def test_fixed_negative_sentence_appears_once():
    ps = PromptSet(
        positive=("{}.",),
        negative=("no acute findings.", "no {}."),
        synonyms={"Cardiomegaly": ["enlarged heart"]},
    )
    assert ps.negative_prompts("Cardiomegaly") == [
        "No acute findings.",
        "No cardiomegaly.",
        "No enlarged heart.",
    ]
    assert ps.negative_prompts("Emphysema") == ["No acute findings.", "No emphysema."]
    assert PromptSet.from_dict(ps.to_dict()) == ps


@pytest.mark.parametrize(
    "data, match",
    [
        ({"positive": ["no placeholder"]}, "placeholder"),
        ({"negative": ["{} and {}"]}, "at most one"),
        ({"negative": ["   "]}, "empty"),
        ({"positive": []}, "non-empty"),
        ({"positive": "{} is present."}, "non-empty list"),
        ({"postive": ["{}"]}, "postive"),
    ],
)
def test_bad_prompt_config(data, match):
    with pytest.raises(ValueError, match=match):
        PromptSet.from_dict(data)


def test_bad_prompt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        PromptSet.from_yaml(tmp_path / "missing.yaml")
    path = tmp_path / "bad.yaml"
    path.write_text("positive: ['nothing to fill']\n", encoding="utf-8")
    with pytest.raises(ValueError, match="bad.yaml"):
        PromptSet.from_yaml(path)
    with pytest.raises(ValueError, match="finding"):
        positive_prompts("  ")


@pytest.mark.parametrize(
    "attribute, value, organ, phrase",
    [
        ("margin", "ill-defined", "liver", "a liver lesion with ill-defined margins"),
        ("margin", "spiculated", "lung", "a lung lesion with spiculated margins"),
        ("density", "hypodense", "kidney", "a hypodense kidney lesion"),
        ("density", "ground-glass", "lung", "a ground-glass lung lesion"),
        ("shape", "irregular", "pancreas", "an irregular pancreas lesion"),
        ("homogeneity", "heterogeneous", "liver", "a heterogeneous liver lesion"),
        ("contrast", "non-contrast", "liver", "a liver lesion on non-contrast CT"),
        ("location", "left kidney", "kidney", "a lesion in the left kidney"),
        ("location", "right upper lobe", "lung", "a lung lesion in the right upper lobe"),
        ("location", "pancreatic head", "pancreas", "a pancreas lesion in the pancreatic head"),
        (
            "neighbor_relation",
            "invading neighbouring organs",
            "kidney",
            "a kidney lesion invading neighbouring organs",
        ),
    ],
)
def test_attribute_phrase(attribute, value, organ, phrase):
    assert attribute_phrase(attribute, value, organ) == phrase


def test_attribute_phrase_covers_whole_schema():
    phrases = set()
    for organ in LESION_ORGANS:
        for attribute in ATTRIBUTES:
            for value in attribute_values(organ, attribute):
                text = attribute_phrase(attribute, value, organ)
                assert value in text and text.startswith(("a ", "an "))
                phrases.add(text)
    assert len(phrases) == sum(len(attribute_values(o, a)) for o in LESION_ORGANS for a in ATTRIBUTES)


def test_attribute_phrase_errors():
    with pytest.raises(ValueError, match="fuzzy.*well-defined"):
        attribute_phrase("margin", "fuzzy", "liver")
    with pytest.raises(ValueError, match="colour"):
        attribute_phrase("colour", "red", "liver")
    with pytest.raises(ValueError, match="brain"):
        attribute_phrase("margin", "ill-defined", "brain")


def test_shipped_ct_clip_prompt_file_matches_the_constant():
    from pathlib import Path

    from medvl3d.text.prompts import CT_CLIP_PROMPTS

    path = Path(__file__).resolve().parents[2] / "configs" / "prompts" / "ct_clip.yaml"
    assert PromptSet.from_yaml(path) == CT_CLIP_PROMPTS
