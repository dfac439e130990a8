"""Lesion-type YAML: real-data frequencies, validation errors, unseen types, custom types."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import yaml

from medvl3d.data.synth import generate, load_lesion_types
from medvl3d.data.synth.lesion_types import attribute_frequencies
from medvl3d.schema import ATTRIBUTES, LESION_ORGANS

REAL_TYPES = (
    "renal_cell_carcinoma",
    "renal_cyst",
    "hepatocellular_carcinoma",
    "pancreatic_cancer",
    "lung_cancer",
)


def test_shipped_types_cover_organs():
    types = load_lesion_types()
    assert len(types) >= 12
    assert {t.organ for t in types.values()} == set(LESION_ORGANS)
    for t in types.values():
        assert t.report_name and t.synonyms and t.size_mm[0] <= t.size_mm[1]
        for a in ATTRIBUTES:
            assert sum(t.attributes[a].values()) == pytest.approx(1.0)


@pytest.mark.parametrize("name", REAL_TYPES)
def test_real_frequencies_match_yaml(real_dir, name):
    freq = attribute_frequencies(real_dir / "malenia" / f"{name}.csv")
    t = load_lesion_types()[name]
    for attr in ATTRIBUTES:
        values = set(freq[attr]) | set(t.attributes[attr])
        for v in values:
            assert t.attributes[attr].get(v, 0.0) == pytest.approx(freq[attr].get(v, 0.0), abs=0.0015), (
                attr,
                v,
            )


def test_multi_value_codes_are_split(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text(
        "case,lesion,organ,contrast,location,shape,density,homogeneity,margin,neighbor_relation\n"
        "a,renal_cyst,kidney,2.0,1、2,1,1,1,1,1\nb,renal_cyst,kidney,,1,2,1,1,1,1\n",
        encoding="utf-8",
    )
    f = attribute_frequencies(p)
    assert f["location"] == {"left kidney": 0.75, "right kidney": 0.25}
    assert f["contrast"] == {"contrast-enhanced": 1.0}  # the empty cell is skipped
    assert f["shape"] == {"round-like": 0.5, "irregular": 0.5}


def test_unseen_types_are_new_combinations_of_seen_values():
    types = load_lesion_types()
    seen = [t for t in types.values() if not t.unseen]
    unseen = [t for t in types.values() if t.unseen]
    assert len(unseen) >= 3
    keys = ("shape", "density", "homogeneity", "margin", "neighbor_relation")
    seen_modes = {tuple(t.mode()[k] for k in keys) for t in seen}
    for u in unseen:
        same_organ = [t for t in seen if t.organ == u.organ]
        assert same_organ, u.name
        for attr in ATTRIBUTES:
            for v in u.support(attr):
                assert any(v in t.support(attr) for t in same_organ), (u.name, attr, v)
        assert tuple(u.mode()[k] for k in keys) not in seen_modes, u.name


def _spec(**over):
    spec = {
        "organ": "liver",
        "report_name": "test lesion",
        "synonyms": ["tl"],
        "size_mm": [40, 50],
        "count": [1, 1],
        "attributes": {
            "contrast": {"contrast-enhanced": 1.0},
            "location": {"right lobe": 1.0},
            "shape": {"round-like": 1.0},
            "density": {"hypodense": 1.0},
            "homogeneity": {"homogeneous": 1.0},
            "margin": {"well-defined": 1.0},
            "neighbor_relation": {"separate from neighbouring organs": 1.0},
        },
    }
    spec.update(over)
    return spec


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda s: s.update(organ="brain"), "unknown organ 'brain'"),
        (lambda s: s["attributes"].update(colour={"red": 1.0}), "unknown attributes ['colour']"),
        (
            lambda s: s["attributes"].update(density={"ground-glass": 1.0}),
            "'ground-glass' is not a value of 'density'",
        ),
        (lambda s: s["attributes"].update(shape={"round-like": 0.5, "irregular": 0.2}), "sum to 0.700"),
        (lambda s: s["attributes"].pop("margin"), "missing attributes ['margin']"),
        (lambda s: s.update(size_mm=[10]), "size_mm must be a [low, high] pair"),
        (lambda s: s.update(flavour=1), "unknown keys ['flavour']"),
    ],
)
def test_yaml_validation_errors(tmp_path, mutate, message):
    spec = _spec()
    mutate(spec)
    path = tmp_path / "types.yaml"
    path.write_text(yaml.safe_dump({"types": {"bad_type": spec}}), encoding="utf-8")
    with pytest.raises(ValueError) as exc:
        load_lesion_types(path)
    assert str(path) in str(exc.value) and "bad_type" in str(exc.value) and message in str(exc.value)


def test_yaml_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_lesion_types(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("types: [unclosed", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_lesion_types(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("version: 1\n", encoding="utf-8")
    with pytest.raises(ValueError, match="non-empty 'types'"):
        load_lesion_types(empty)


def test_custom_types_render_with_their_density(tmp_path):
    """User-defined types are generated, and density decides lesion HU relative to the liver."""
    spec_hyper = _spec()
    spec_hyper["attributes"] = dict(spec_hyper["attributes"], density={"hyperdense": 1.0})
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"types": {"big_hypo": _spec(), "big_hyper": spec_hyper}}))
    out = tmp_path / "gen"
    generate(
        out,
        n_train=6,
        n_test=0,
        size=(32, 64, 64),
        spacing=(10.0, 5.5, 5.5),
        seed=1,
        workers=1,
        progress=False,
        lesion_types=path,
        unseen_lesion_types=[],
    )
    seen_types = set()
    for line in (out / "manifest_train.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        ct = np.asarray(nib.load(out / row["image"]).dataobj).astype(float)
        les = np.asarray(nib.load(out / row["label"]).dataobj)
        organs = np.asarray(nib.load(out / row["organs"]).dataobj)
        liver = (organs == 1) & (les == 0)
        for lid, att in row["lesions"].items():
            assert att["type"] in ("big_hypo", "big_hyper") and att["location"] == "right lobe"
            seen_types.add(att["type"])
            m = les == int(lid)
            diff = np.median(ct[m]) - np.median(ct[liver])
            assert (diff < -20) if att["type"] == "big_hypo" else (diff > 20), (att["type"], diff)
    assert seen_types == {"big_hypo", "big_hyper"}
