"""The Malenia attribute parser: real descriptions (accuracy per lesion type), hand-written descriptions of
lesion types the real data lacks, negation, organ-specific locations and bad input."""

from __future__ import annotations

import pytest

from medvl3d.schema import ATTRIBUTES, encode_attribute
from medvl3d.text.attributes import AttributeParser, infer_organ, parse_attribute_codes, parse_attributes
from medvl3d.text.batch import parse_descriptions

SEPARATE, INVADING = "separate from neighbouring organs", "invading neighbouring organs"

# Measured with `python benchmarks/bench_attributes.py` (defaults on); lung contrast is not in the text
# (measured 0.59). The floors sit 0.04-0.06 below every measured figure so that a regression fails.
MEASURED_FLOOR = {
    "hepatocellular_carcinoma": dict.fromkeys(ATTRIBUTES, 0.93),
    "lung_cancer": {**dict.fromkeys(ATTRIBUTES, 0.90), "contrast": 0.5},
    "pancreatic_cancer": dict.fromkeys(ATTRIBUTES, 0.92),
    "renal_cell_carcinoma": {**dict.fromkeys(ATTRIBUTES, 0.92), "shape": 0.90},
    "renal_cyst": dict.fromkeys(ATTRIBUTES, 0.92),
}


@pytest.fixture(scope="module")
def real_accuracy(real_dir):
    accuracy = {}
    for path in sorted((real_dir / "malenia").glob("*.csv")):
        accuracy.update(parse_descriptions(path).accuracy)
    return accuracy


def test_real_descriptions_per_lesion_type(real_accuracy):
    assert set(MEASURED_FLOOR) <= set(real_accuracy)
    for lesion, floors in MEASURED_FLOOR.items():
        for attr, floor in floors.items():
            acc, n = real_accuracy[lesion][attr]
            assert n >= 20, (lesion, attr, n)
            assert acc >= floor, f"{lesion} {attr}: accuracy {acc:.3f} < {floor}"


def test_real_descriptions_without_defaults_still_read_what_is_written(real_dir):
    parser = AttributeParser(defaults=False)
    result = parse_descriptions(real_dir / "malenia" / "renal_cyst.csv", parser=parser)
    acc = result.accuracy["renal_cyst"]
    # Every renal cyst description states these explicitly.
    for attr in ("contrast", "location", "shape", "density", "homogeneity", "margin", "neighbor_relation"):
        assert acc[attr][0] >= 0.92, (attr, acc[attr])


# Descriptions of lesion types that the real folder lacks (hand-written, radiology phrasing).
UNSEEN = [
    (
        "Non-contrast CT: A well-circumscribed oval lesion of fluid attenuation (about 5 HU) is seen "
        "in segment "
        "VII of the liver. It is homogeneous and does not abut any adjacent structure.",
        "liver",
        {"contrast": "non-contrast", "location": "right lobe", "shape": "round-like", "density": "hypodense",
         "homogeneity": "homogeneous", "margin": "well-defined", "neighbor_relation": SEPARATE},
    ),
    (
        "Contrast-enhanced CT shows a 3 cm hypoattenuating mass in the left lateral segment of the "
        "liver with "
        "peripheral nodular discontinuous enhancement in the arterial phase and progressive centripetal "
        "fill-in on delayed images. Margins are sharp. The lesion is heterogeneous in the arterial phase.",
        "liver",
        {"contrast": "contrast-enhanced", "location": "left lobe", "density": "hypodense",
         "homogeneity": "heterogeneous", "margin": "well-defined", "neighbor_relation": SEPARATE},
    ),
    (
        "Contrast-enhanced CT: irregular circumferential wall thickening of the sigmoid colon with "
        "soft-tissue "
        "attenuation and heterogeneous enhancement, poorly defined outer margin with stranding of the "
        "pericolic fat, invading the adjacent bladder wall.",
        "colon",
        {"contrast": "contrast-enhanced", "location": "sigmoid colon", "shape": "irregular",
         "density": "isodense", "homogeneity": "heterogeneous", "margin": "ill-defined",
         "neighbor_relation": INVADING},
    ),
    (
        "Portal venous phase CT: a lobulated soft tissue mass in the ascending colon near the "
        "hepatic flexure, "
        "heterogeneously enhancing, with indistinct margins. No invasion of the duodenum or the "
        "right kidney.",
        "colon",
        {"contrast": "contrast-enhanced", "location": "ascending colon", "shape": "irregular",
         "homogeneity": "heterogeneous", "margin": "ill-defined", "neighbor_relation": SEPARATE},
    ),
    (
        "Contrast-enhanced CT: A round cystic lesion with water density is seen in the pancreatic "
        "tail, with a "
        "thin wall, homogeneous content and clear margins.",
        "pancreas",
        {"contrast": "contrast-enhanced", "location": "pancreatic tail", "shape": "round-like",
         "density": "hypodense", "homogeneity": "homogeneous", "margin": "well-defined",
         "neighbor_relation": SEPARATE},
    ),
    (
        "Unenhanced CT: an ovoid hypodense cyst in the head of the pancreas, uniform, well defined, separate "
        "from the duodenum.",
        "pancreas",
        {"contrast": "non-contrast", "location": "pancreatic head", "shape": "round-like",
         "density": "hypodense", "homogeneity": "homogeneous", "margin": "well-defined",
         "neighbor_relation": SEPARATE},
    ),
    (
        "Contrast-enhanced CT shows a round, homogeneously hypodense lesion in the lower pole of the spleen "
        "with smooth margins, not closely related to the left kidney.",
        "spleen",
        {"contrast": "contrast-enhanced", "location": "lower pole", "shape": "round-like",
         "density": "hypodense", "homogeneity": "homogeneous", "margin": "well-defined",
         "neighbor_relation": SEPARATE},
    ),
    (
        "Plain CT: an irregular hyperdense area in the upper pole of the spleen with heterogeneous "
        "attenuation "
        "and blurred margins, abutting the diaphragm.",
        "spleen",
        {"contrast": "non-contrast", "location": "upper pole", "shape": "irregular", "density": "hyperdense",
         "homogeneity": "heterogeneous", "margin": "ill-defined", "neighbor_relation": INVADING},
    ),
    (
        "Non-contrast chest CT: multiple round solid nodules, the largest in the left lower lobe, "
        "with smooth "
        "well-defined margins and homogeneous soft-tissue attenuation, without pleural contact.",
        "lung",
        {"contrast": "non-contrast", "location": "left lower lobe", "shape": "round-like", "density": "solid",
         "homogeneity": "homogeneous", "margin": "well-defined", "neighbor_relation": SEPARATE},
    ),
    (
        "A ground-glass nodule in the right upper lobe, round, with clear margins and uniform density.",
        "lung",
        {"location": "right upper lobe", "shape": "round-like", "density": "ground-glass",
         "homogeneity": "homogeneous", "margin": "well-defined"},
    ),
    (
        "Part-solid nodule with a lobulated contour and spiculated margins in the lingula, abutting "
        "the pleura "
        "with pleural indentation.",
        "lung",
        {"location": "left upper lobe", "shape": "irregular", "density": "part-solid", "margin": "spiculated",
         "neighbor_relation": INVADING},
    ),
    (
        "Densely calcified round nodule in the right middle lobe with sharp margins.",
        "lung",
        {"location": "right middle lobe", "shape": "round-like", "density": "calcified",
         "margin": "well-defined"},
    ),
    (
        "Arterial phase CT: a 4 cm hyperattenuating mass in the right lobe of the liver with washout, a "
        "lobulated heterogeneous appearance with necrotic areas, and unclear boundary with the right kidney.",
        "liver",
        {"contrast": "contrast-enhanced", "location": "right lobe", "shape": "irregular",
         "density": "hyperdense", "homogeneity": "heterogeneous", "neighbor_relation": INVADING},
    ),
    (
        "Contrast-enhanced CT: an isodense mass in the body of the pancreas encasing the splenic "
        "artery, with "
        "infiltrative margins.",
        "pancreas",
        {"contrast": "contrast-enhanced", "location": "pancreatic body", "density": "isodense",
         "margin": "ill-defined", "neighbor_relation": INVADING},
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "organ", "expected"), UNSEEN, ids=[f"{o}-{i}" for i, (_, o, _) in enumerate(UNSEEN)]
)
def test_unseen_lesion_types(text, organ, expected):
    assert infer_organ(text) == organ
    got = parse_attributes(text)  # organ inferred
    assert {k: got[k] for k in expected} == expected


# Written after the rules were in place, as a check of generalisation: 62 of 64 values were right at first;
# the two misses ("ill-defined margins and contact with the pleura") led to the margin-clause and
# "contact with" rules.
HELDOUT = [
    (
        "Multiple simple hepatic cysts; the largest, in segment VI, measures 4.1 cm, is round, sharply "
        "marginated, of water attenuation and shows no enhancement on the portal venous phase.",
        "liver",
        dict(
            contrast="contrast-enhanced",
            location="right lobe",
            shape="round-like",
            density="hypodense",
            margin="well-defined",
        ),
    ),
    (
        "Plain CT demonstrates a well-defined, homogeneous, low-attenuation oval lesion in the left "
        "hepatic lobe abutting the stomach.",
        "liver",
        dict(
            contrast="non-contrast",
            location="left lobe",
            shape="round-like",
            density="hypodense",
            homogeneity="homogeneous",
            margin="well-defined",
            neighbor_relation=INVADING,
        ),
    ),
    (
        "Enhanced CT shows a hepatic hemangioma in the right lobe: a lobulated hypodense mass with "
        "peripheral globular enhancement, clearly demarcated from the surrounding liver, with no "
        "involvement of adjacent structures.",
        "liver",
        dict(
            contrast="contrast-enhanced",
            location="right lobe",
            shape="irregular",
            density="hypodense",
            margin="well-defined",
            neighbor_relation=SEPARATE,
        ),
    ),
    (
        "Contrast CT: annular, irregular soft-tissue thickening of the descending colon wall with luminal"
        " narrowing, heterogeneous enhancement and spiculated serosal margin; the lesion infiltrates the "
        "pericolic fat and is inseparable from the left psoas.",
        "colon",
        dict(
            contrast="contrast-enhanced",
            location="descending colon",
            shape="irregular",
            homogeneity="heterogeneous",
            margin="ill-defined",
            neighbor_relation=INVADING,
        ),
    ),
    (
        "Non-enhanced CT: polypoid mass in the transverse colon with a smooth contour, homogeneous soft-"
        "tissue density, and a preserved fat plane with the stomach.",
        "colon",
        dict(
            contrast="non-contrast",
            location="transverse colon",
            density="isodense",
            homogeneity="homogeneous",
            margin="well-defined",
            neighbor_relation=SEPARATE,
        ),
    ),
    (
        "CECT: 2.5 cm unilocular cystic lesion in the uncinate process, fluid density, thin imperceptible"
        " wall, well circumscribed, no solid component, not related to the duodenum.",
        "pancreas",
        dict(
            contrast="contrast-enhanced",
            location="pancreatic head",
            density="hypodense",
            margin="well-defined",
            neighbor_relation=SEPARATE,
        ),
    ),
    (
        "Microcystic lesion in the pancreatic tail with a central scar and calcification, lobulated "
        "contour, heterogeneous attenuation, well-demarcated from the spleen.",
        "pancreas",
        dict(
            location="pancreatic tail",
            shape="irregular",
            homogeneity="heterogeneous",
            neighbor_relation=SEPARATE,
        ),
    ),
    (
        "Splenic infarct: wedge-shaped, peripheral, hypoattenuating area in the inferior pole of the "
        "spleen on contrast-enhanced CT, without mass effect, with indistinct margins.",
        "spleen",
        dict(contrast="contrast-enhanced", location="lower pole", density="hypodense", margin="ill-defined"),
    ),
    (
        "Contrast-enhanced CT: a round hypodense splenic lesion in the upper pole, homogeneous, with "
        "well-defined margins; no relation to the stomach or the left kidney.",
        "spleen",
        dict(
            contrast="contrast-enhanced",
            location="upper pole",
            shape="round-like",
            density="hypodense",
            homogeneity="homogeneous",
            margin="well-defined",
            neighbor_relation=SEPARATE,
        ),
    ),
    (
        "Multiple bilateral pulmonary metastases; the dominant nodule in the right lower lobe is round, "
        "solid, smoothly marginated and homogeneous, without pleural contact.",
        "lung",
        dict(
            location="right lower lobe",
            shape="round-like",
            density="solid",
            homogeneity="homogeneous",
            margin="well-defined",
            neighbor_relation=SEPARATE,
        ),
    ),
    (
        "Subpleural pure ground-glass nodule, 8 mm, in the left lower lobe, with ill-defined margins and "
        "contact with the pleura.",
        "lung",
        dict(
            location="left lower lobe",
            density="ground-glass",
            margin="spiculated",
            neighbor_relation=INVADING,
        ),
    ),
    (
        "Cavitating irregular metastasis in the RUL with thick walls and spiculated margins; contrast-"
        "enhanced chest CT.",
        "lung",
        dict(
            contrast="contrast-enhanced", location="right upper lobe", shape="irregular", margin="spiculated"
        ),
    ),
]


@pytest.mark.parametrize(
    ("text", "organ", "expected"), HELDOUT, ids=[f"{o}-{i}" for i, (_, o, _) in enumerate(HELDOUT)]
)
def test_heldout_descriptions_of_unseen_types(text, organ, expected):
    assert infer_organ(text) == organ
    got = parse_attributes(text)
    assert {k: got[k] for k in expected} == expected


@pytest.mark.parametrize(
    ("text", "organ", "location"),
    [
        ("A cyst in the left kidney.", "kidney", "left kidney"),
        ("Right renal mass.", "kidney", "right kidney"),
        ("A lesion in segment 4a of the liver.", "liver", "left lobe"),
        ("A lesion in the right hepatic lobe.", "liver", "right lobe"),
        ("Mass in the uncinate process of the pancreas.", "pancreas", "pancreatic head"),
        ("Mass in the pancreatic body and tail.", "pancreas", "pancreatic body"),
        ("Cyst in the tail of the pancreas; atrophy of the pancreatic head.", "pancreas", "pancreatic tail"),
        ("Nodule in the RLL.", "lung", "right lower lobe"),
        ("Nodule in the upper lobe of the left lung.", "lung", "left upper lobe"),
        ("Nodule in the left lower lobe.", "lung", "left lower lobe"),
        ("Nodule in the right middle lobe.", "lung", "right middle lobe"),
        ("Lesion at the superior pole of the spleen.", "spleen", "upper pole"),
        ("Wall thickening at the splenic flexure of the colon.", "colon", "descending colon"),
        ("Mass in the caecum.", "colon", "ascending colon"),
        ("Mass in the transverse colon.", "colon", "transverse colon"),
    ],
)
def test_organ_specific_locations_and_organ_inference(text, organ, location):
    assert infer_organ(text) == organ
    assert parse_attributes(text)["location"] == location
    assert parse_attribute_codes(text)["location"] == encode_attribute(organ, "location", location)


def test_negation_and_synonyms():
    p = AttributeParser(defaults=False)
    base = "Contrast-enhanced CT: a roughly round hypodense lesion in the left kidney"
    assert p.parse(f"{base}, closely related to the psoas muscle.")["neighbor_relation"] == INVADING
    assert p.parse(f"{base}, not closely related to adjacent organs.")["neighbor_relation"] == SEPARATE
    assert (
        p.parse(f"{base}, with no close relationship with adjacent organs.")["neighbor_relation"] == SEPARATE
    )
    assert p.parse(f"{base}, with no invasion of the psoas muscle.")["neighbor_relation"] == SEPARATE
    assert p.parse(f"{base}, invading the renal vein.")["neighbor_relation"] == INVADING
    assert p.parse(f"{base}, not homogeneous.")["homogeneity"] == "heterogeneous"
    assert p.parse(f"{base}, margins not well defined.")["margin"] == "ill-defined"
    assert p.parse(base)["shape"] == "round-like"
    assert p.parse("Lobulated hypoattenuating lesion in the liver.")["shape"] == "irregular"
    for word in ("ill-defined", "indistinct", "unclear", "blurred", "poorly defined"):
        assert p.parse(f"{base} with {word} margins.")["margin"] == "ill-defined", word
    for word in ("hypodense", "hypoattenuating", "low-density", "of low attenuation"):
        assert p.parse(f"A lesion {word} in the liver.")["density"] == "hypodense", word


def test_contrast_phase():
    p = AttributeParser(defaults=False)
    lesion = "a round hypodense lesion in the liver"
    assert p.parse(f"Non-contrast CT: {lesion}.")["contrast"] == "non-contrast"
    assert p.parse(f"Plain scan shows {lesion}.")["contrast"] == "non-contrast"
    assert p.parse(f"Unenhanced CT: {lesion}.")["contrast"] == "non-contrast"
    assert p.parse(f"Contrast-enhanced CT: {lesion}.")["contrast"] == "contrast-enhanced"
    assert p.parse(f"On the arterial phase, {lesion}.")["contrast"] == "contrast-enhanced"
    # "no enhancement" still means contrast was given.
    assert p.parse(f"{lesion} with no enhancement.")["contrast"] == "contrast-enhanced"
    assert p.parse(f"{lesion}.")["contrast"] is None
    assert AttributeParser().parse(f"{lesion}.")["contrast"] == "non-contrast"  # documented default


def test_lesion_density_is_not_the_density_of_its_parts():
    p = AttributeParser(defaults=False)
    text = (
        "An irregular isoattenuating lesion in the pancreatic head "
        "with hypodense areas and linear hyperdensity."
    )
    assert p.parse(text)["density"] == "isodense"
    assert p.parse("A lesion in the right kidney with areas of low attenuation.")["density"] is None
    assert p.parse("A patchy area of slightly decreased attenuation in the liver.")["density"] == "hypodense"
    # Lung density is relative to soft tissue, with its own values and codes.
    assert parse_attributes("Mixed ground-glass nodule in the RUL.")["density"] == "part-solid"
    assert parse_attribute_codes("Mixed ground-glass nodule in the RUL.")["density"] == 4
    assert parse_attributes("Isoattenuating nodule in the RUL.")["density"] == "solid"


def test_margin_words_about_a_neighbour_are_the_neighbour_relation():
    text = (
        "Contrast-enhanced CT: An irregular hypodense lesion in the pancreatic head with "
        "well-defined margins. "
        "The lesion is closely related to the duodenum with indistinct borders."
    )
    got = parse_attributes(text)
    assert got["margin"] == "well-defined" and got["neighbor_relation"] == INVADING
    kidney = "A round hypodense lesion in the right kidney with indistinct margin with the renal parenchyma."
    got = parse_attributes(kidney)
    assert got["margin"] == "ill-defined" and got["neighbor_relation"] == SEPARATE
    assert (
        parse_attributes("A lesion in the liver. The borders with the gallbladder and bowel are indistinct.")[
            "neighbor_relation"
        ]
        == INVADING
    )


def test_defaults_follow_the_documented_conventions():
    text = "Contrast-enhanced CT: an irregular hypodense lesion in the pancreatic body."
    silent = AttributeParser(defaults=False).parse(text)
    assert silent["homogeneity"] is None and silent["margin"] is None and silent["neighbor_relation"] is None
    filled = parse_attributes(text)
    assert filled["homogeneity"] == "heterogeneous" and filled["margin"] == "ill-defined"
    assert filled["neighbor_relation"] == SEPARATE
    assert parse_attributes("Solid irregular nodule in the RUL.")["margin"] == "spiculated"


@pytest.mark.parametrize("text", ["", "   ", "...;,!", "右肾见类圆形低密度影，边界清楚。"])
def test_unreadable_descriptions_give_all_none(text):
    assert parse_attributes(text) == dict.fromkeys(ATTRIBUTES)
    assert parse_attributes(text, organ="kidney") == dict.fromkeys(ATTRIBUTES)


def test_bad_input_errors(tmp_path):
    with pytest.raises(ValueError, match="must be a string"):
        parse_attributes(None)
    with pytest.raises(ValueError, match="unknown lesion organ 'brain'"):
        parse_attributes("a lesion", organ="brain")
    with pytest.raises(ValueError, match="cannot tell the organ"):
        parse_attribute_codes("a round lesion")
    # A shape the schema has no value for is not guessed.
    assert (
        AttributeParser(defaults=False).parse("A dumbbell-shaped lesion in the left kidney.")["shape"] is None
    )
    with pytest.raises(ValueError, match="'oval' is not a value of 'shape'"):
        encode_attribute("kidney", "shape", "oval")
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        (AttributeParser().rules_path.read_text(encoding="utf-8")).replace(
            "    round-like:\n", "    oval-ish:\n", 1
        )
    )
    with pytest.raises(ValueError, match=r"rules.yaml: \['oval-ish'\] are not values of 'shape'"):
        AttributeParser(rules)
    with pytest.raises(FileNotFoundError, match="attribute rules file not found"):
        AttributeParser(tmp_path / "missing.yaml")


def test_a_bad_code_cell_flags_its_row_and_the_rest_is_scored(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text(
        "case,organ,shape,density,report\n"
        "c1,kidney,7,1,A round hypodense lesion in the left kidney.\n"
        "c2,kidney,2,x,An irregular hypodense lesion in the right kidney.\n"
        "c3,brain,1,1,A round hypodense lesion.\n"
        "c4,kidney,1,3,A round hyperdense lesion in the right kidney.\n",
        encoding="utf-8",
    )
    with pytest.warns(UserWarning, match=r"3 of 4 rows of .*d.csv are flagged"):
        result = parse_descriptions(path, out=tmp_path / "out.csv")
    first = "d.csv, row 2: unknown shape code 7 for kidney; codes: {1: 'round-like', 2: 'irregular'}"
    assert result.flagged[0].endswith(first)
    assert "row 3: density 'x' is not a code" in result.flagged[1]
    assert "row 4: unknown organ 'brain'" in result.flagged[2]
    # Scored: the good cells of rows 1, 2 and 4 (row 3 has no organ, so none of its cells).
    assert result.accuracy["all"]["shape"] == (1.0, 2)
    assert result.accuracy["all"]["density"] == (1.0, 2)
    assert [r["flag"] != "" for r in result.rows] == [True, True, True, False]
    assert "flag" in (tmp_path / "out.csv").read_text(encoding="utf-8").splitlines()[0].split(",")
    path.write_text("case,organ,report\nc1,kidney,A round lesion in the left kidney.\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"no column 'text'; the columns are: case, organ, report"):
        parse_descriptions(path, text_column="text")
