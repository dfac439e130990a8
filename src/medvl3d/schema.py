"""Vocabularies shared by data, text and models: CT-RATE abnormality labels and the Malenia
lesion-attribute schema.

The attribute codes follow the legend of the Malenia annotation sheet
(`annotations_of_lesion_descriptions.xlsx`); everything in medvl3d speaks the canonical *value names*
below, and the integer codes are only used to read and write that sheet's format.
"""

from __future__ import annotations

#: The 18 CT-RATE abnormality labels, in the column order of the CT-RATE label CSVs.
CTRATE_LABELS: tuple[str, ...] = (
    "Medical material",
    "Arterial wall calcification",
    "Cardiomegaly",
    "Pericardial effusion",
    "Coronary artery wall calcification",
    "Hiatal hernia",
    "Lymphadenopathy",
    "Emphysema",
    "Atelectasis",
    "Lung nodule",
    "Lung opacity",
    "Pulmonary fibrotic sequela",
    "Pleural effusion",
    "Mosaic attenuation pattern",
    "Peribronchial thickening",
    "Consolidation",
    "Bronchiectasis",
    "Interlobular septal thickening",
)

#: The seven coded Malenia attributes, in the sheet's column order.
ATTRIBUTES: tuple[str, ...] = (
    "contrast",
    "location",
    "shape",
    "density",
    "homogeneity",
    "margin",
    "neighbor_relation",
)

#: Organs that carry lesions in the schema.
LESION_ORGANS: tuple[str, ...] = ("liver", "kidney", "pancreas", "lung", "spleen", "colon")

# code -> canonical value name; attributes whose codes do not depend on the organ.
_COMMON_CODES: dict[str, dict[int, str]] = {
    "contrast": {1: "non-contrast", 2: "contrast-enhanced"},
    "shape": {1: "round-like", 2: "irregular"},
    "density": {1: "hypodense", 2: "isodense", 3: "hyperdense"},
    "homogeneity": {1: "homogeneous", 2: "heterogeneous"},
    "margin": {1: "well-defined", 2: "ill-defined"},
    "neighbor_relation": {1: "separate from neighbouring organs", 2: "invading neighbouring organs"},
}

# Organ-specific codes (the sheet's legend): location for every organ, density and margin for lung.
_ORGAN_CODES: dict[str, dict[str, dict[int, str]]] = {
    "kidney": {"location": {1: "left kidney", 2: "right kidney"}},
    "liver": {"location": {1: "left lobe", 2: "right lobe"}},
    "pancreas": {"location": {1: "pancreatic head", 2: "pancreatic body", 3: "pancreatic tail"}},
    "lung": {
        "location": {
            1: "left upper lobe",
            2: "left lower lobe",
            3: "right upper lobe",
            4: "right middle lobe",
            5: "right lower lobe",
        },
        "density": {1: "ground-glass", 2: "solid", 3: "calcified", 4: "part-solid"},
        "margin": {1: "well-defined", 2: "spiculated"},
    },
    "spleen": {"location": {1: "upper pole", 2: "lower pole"}},
    "colon": {
        "location": {
            1: "ascending colon",
            2: "transverse colon",
            3: "descending colon",
            4: "sigmoid colon",
        }
    },
}


def attribute_codes(organ: str, attribute: str) -> dict[int, str]:
    """Return the code -> value-name table of one attribute for one organ.

    Raises:
        KeyError: for an unknown organ or attribute, naming it.
    """
    if organ not in _ORGAN_CODES:
        raise KeyError(f"unknown lesion organ {organ!r}; known: {', '.join(LESION_ORGANS)}")
    if attribute not in ATTRIBUTES:
        raise KeyError(f"unknown lesion attribute {attribute!r}; known: {', '.join(ATTRIBUTES)}")
    return _ORGAN_CODES[organ].get(attribute) or _COMMON_CODES[attribute]


def attribute_values(organ: str, attribute: str) -> tuple[str, ...]:
    """Canonical value names an attribute can take for an organ, in code order."""
    return tuple(attribute_codes(organ, attribute).values())


def decode_attribute(organ: str, attribute: str, code: int | float | str) -> str:
    """Map a sheet code (``2``, ``2.0`` or ``"2"``) to its canonical value name."""
    table = attribute_codes(organ, attribute)
    try:
        key = int(float(code))
    except (TypeError, ValueError):
        raise ValueError(f"attribute {attribute!r} code {code!r} is not a number") from None
    if key not in table:
        raise ValueError(f"attribute {attribute!r} for {organ} has no code {key}; codes: {sorted(table)}")
    return table[key]


def encode_attribute(organ: str, attribute: str, value: str) -> int:
    """Map a canonical value name back to its sheet code."""
    for code, name in attribute_codes(organ, attribute).items():
        if name == value:
            return code
    raise ValueError(
        f"{value!r} is not a value of {attribute!r} for {organ}; values: {attribute_values(organ, attribute)}"
    )
