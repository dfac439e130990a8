"""Radiology reports written from a case's ground truth, in the style of CT-RATE.

The phrasing copies the (Turkish-English translated) CT-RATE reports: "Trachea, both main bronchi are
open.", "Pericardial effusion-thickening was not observed.", "When examined in the lung parenchyma
window; ...". Every positive finding gets one of several phrasings with synonyms, its size in mm and
its side/lobe; absent findings are negated explicitly, but not every one every time. Each sentence
carries one finding, so a sentence-level labeller can read it back. Lesion sentences spell out the
lesion's attribute values in varied wording ("hypodense" / "low-attenuation"; "ill-defined" /
"indistinct margins").
"""

from __future__ import annotations

import numpy as np

from .lesion_types import LesionType
from .lesions import INVADING, Lesion

_DENSITY = {
    "hypodense": ["hypodense", "low-attenuation", "hypoattenuating"],
    "isodense": ["isodense", "isoattenuating", "iso-attenuating"],
    "hyperdense": ["hyperdense", "high-attenuation", "hyperattenuating"],
    "ground-glass": ["ground-glass density", "pure ground-glass", "non-solid ground-glass"],
    "solid": ["solid", "soft-tissue density", "solid-appearing"],
    "calcified": ["calcified", "calcific density", "densely calcified"],
    "part-solid": ["part-solid", "mixed ground-glass and solid", "subsolid with a solid component"],
}
_SHAPE = {
    "round-like": ["round", "round-like", "oval"],
    "irregular": ["irregular", "irregularly shaped", "lobulated"],
}
_HOMOG = {
    "homogeneous": [
        "with homogeneous internal density",
        "homogeneous in attenuation",
        "with uniform attenuation",
    ],
    "heterogeneous": [
        "with heterogeneous attenuation",
        "with heterogeneous internal density",
        "heterogeneous in appearance",
    ],
}
_MARGIN = {
    "well-defined": ["well-defined margins", "sharp margins", "well-circumscribed borders"],
    "ill-defined": ["ill-defined margins", "indistinct margins", "poorly defined borders"],
    "spiculated": ["spiculated margins", "spiculated contours", "spiculated, irregular margins"],
}
_NEIGHBOUR = {
    "separate from neighbouring organs": [
        "well separated from the adjacent organs",
        "with preserved fat planes to the neighbouring structures",
        "separate from the surrounding organs",
    ],
    INVADING: [
        "closely related to the adjacent structures with an unclear boundary",
        "invading the neighbouring tissues",
        "with loss of the fat plane to the adjacent organ",
    ],
}
_LOCATION = {
    "left lobe": ["left hepatic lobe", "left lobe of the liver"],
    "right lobe": ["right hepatic lobe", "right lobe of the liver"],
    "left kidney": ["left kidney", "left renal parenchyma"],
    "right kidney": ["right kidney", "right renal parenchyma"],
    "pancreatic head": ["pancreatic head", "head of the pancreas"],
    "pancreatic body": ["pancreatic body", "body of the pancreas"],
    "pancreatic tail": ["pancreatic tail", "tail of the pancreas"],
    "upper pole": ["upper pole of the spleen", "superior splenic pole"],
    "lower pole": ["lower pole of the spleen", "inferior splenic pole"],
    "left upper lobe": ["left upper lobe", "upper lobe of the left lung"],
    "left lower lobe": ["left lower lobe", "lower lobe of the left lung"],
    "right upper lobe": ["right upper lobe", "upper lobe of the right lung"],
    "right middle lobe": ["right middle lobe", "middle lobe of the right lung"],
    "right lower lobe": ["right lower lobe", "lower lobe of the right lung"],
    "ascending colon": ["ascending colon"],
    "transverse colon": ["transverse colon"],
    "descending colon": ["descending colon"],
    "sigmoid colon": ["sigmoid colon"],
}

TECHNIQUE = {
    "non-contrast": [
        "Non-contrast thin-section axial images were obtained from the thorax to the upper abdomen.",
        "Unenhanced axial CT images of the chest and upper abdomen were acquired; multiplanar reformats "
        "were evaluated.",
    ],
    "contrast-enhanced": [
        "Axial images were obtained in the portal venous phase after intravenous contrast administration.",
        "Contrast-enhanced thoracoabdominal CT was performed with multiplanar reformats.",
    ],
}
CLINICAL = [
    "Cough.",
    "Shortness of breath.",
    "Follow-up.",
    "Chest pain.",
    "Fever and cough.",
    "Dyspnea.",
    "Screening.",
    "Weight loss.",
    "Not given.",
]


class _Pick:
    """Random choice helper bound to the case's generator."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def __call__(self, options):
        return options[int(self.rng.integers(len(options)))]

    def maybe(self, p: float) -> bool:
        return bool(self.rng.uniform() < p)


def _side_words(side: str) -> str:
    return {"right": "right", "left": "left", "bilateral": "bilateral"}.get(side, side)


def _article(next_word: str) -> str:
    """ "a" or "an" before a word or a number as it is read ("an 11 mm", "an 8 mm", "a 12 mm")."""
    w = next_word.lower()
    if w[:1].isdigit():
        return "an" if w.startswith(("8", "11", "18")) and not w.startswith(("110", "111", "180")) else "a"
    return "an" if w[:1] in "aeio" else "a"


def lesion_sentence(les: Lesion, ltype: LesionType, pick: _Pick) -> str:
    """One sentence describing a lesion with all of its attribute values."""
    a = les.attributes
    noun = (
        pick(["nodule", "nodular lesion"])
        if les.organ == "lung"
        else pick(["lesion", "mass", "focal lesion"])
    )
    size = int(les.size_mm)
    loc = pick(_LOCATION.get(a["location"], [a["location"]]))
    dens, shape = pick(_DENSITY[a["density"]]), pick(_SHAPE[a["shape"]])
    homog, margin, nb = (
        pick(_HOMOG[a["homogeneity"]]),
        pick(_MARGIN[a["margin"]]),
        pick(_NEIGHBOUR[a["neighbor_relation"]]),
    )
    phase = "contrast-enhanced" if a["contrast"] == "contrast-enhanced" else "non-contrast"
    name = pick([ltype.report_name, *ltype.synonyms]) if ltype.synonyms else ltype.report_name
    a_size, a_shape, a_dens = _article(str(size)).capitalize(), _article(shape), _article(dens)
    templates = [
        f"{a_size} {size} mm {shape} {dens} {noun} {homog} and {margin} is seen in the {loc}, {nb}.",
        f"In the {loc}, there is {a_shape} {shape} {dens} {noun} measuring approximately {size} mm, "
        f"{homog}, with {margin}, {nb}.",
        f"On {phase} images, {a_dens} {dens} {noun} of {size} mm with {shape} contour, {homog} and "
        f"{margin} is observed in the {loc}; it is {nb}.",
    ]
    s = pick(templates)
    if pick.maybe(0.75):
        s = s[:-1] + pick([f", consistent with {name}.", f", suggestive of {name}.", f" (likely {name})."])
    return s


def write_report(
    labels: dict[str, int],
    details: dict[str, dict],
    lesions: list[Lesion],
    types: dict[str, LesionType],
    phase: str,
    rng: np.random.Generator,
) -> dict[str, str]:
    """Write the CT-RATE report columns for one case.

    Args:
        labels: CT-RATE name -> 0/1 (the ground truth of the volume).
        details: CT-RATE name -> drawing details (side, lobe, size_mm, ...) of the positive findings.
        lesions: the rendered lesions (with attributes) in lesion-map id order.
        types: lesion type table (for report names and synonyms).
        phase: the volume's contrast phase.
        rng: the case's generator (phrasing choices).

    Returns:
        {"ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN"}.
    """
    pick = _Pick(rng)
    pos = {k for k, v in labels.items() if v}
    d = details
    out: list[str] = []
    imp: list[str] = []

    def neg(p: float, options) -> None:
        if pick.maybe(p):
            out.append(pick(options))

    # Airways and mediastinum.
    out.append(
        pick(
            [
                "Trachea, both main bronchi are open.",
                "Trachea and both main bronchi are open.",
                "The trachea and main bronchi are patent.",
            ]
        )
    )
    if "Cardiomegaly" in pos:
        out.append(
            pick(
                [
                    "Heart size increased.",
                    "The heart is enlarged (cardiomegaly).",
                    "Cardiomegaly is observed.",
                ]
            )
        )
        imp.append("Cardiomegaly.")
    else:
        out.append(
            pick(
                [
                    "Mediastinal main vascular structures, heart contour, size are normal.",
                    "Heart contour and size are normal.",
                    "Heart size is within normal limits.",
                ]
            )
        )
    if "Pericardial effusion" in pos:
        t = d.get("Pericardial effusion", {}).get("size_mm", 8)
        out.append(
            pick(
                [
                    f"Pericardial effusion reaching {t} mm in thickness is observed.",
                    f"There is pericardial fluid measuring up to {t} mm between the pericardial leaves.",
                    f"A pericardial effusion with a maximum thickness of {t} mm is seen.",
                ]
            )
        )
        imp.append("Pericardial effusion.")
    else:
        neg(
            0.8,
            [
                "Pericardial effusion-thickening was not observed.",
                "No pericardial effusion was detected.",
                "There is no pericardial effusion.",
            ],
        )
    if "Arterial wall calcification" in pos:
        site = d.get("Arterial wall calcification", {}).get("site", "thoracic aorta")
        out.append(
            pick(
                [
                    f"Calcific atherosclerotic plaques are observed in the {site}.",
                    f"Atheromatous calcifications are seen in the wall of the {site}.",
                    f"Atherosclerotic calcification of the {site} is noted.",
                ]
            )
        )
        imp.append("Atherosclerotic changes in the aorta.")
    else:
        neg(
            0.5,
            [
                "No calcific atherosclerotic plaque was observed in the aortic wall.",
                "Thoracic aorta diameter is normal and no atherosclerotic calcification was detected.",
            ],
        )
    if "Coronary artery wall calcification" in pos:
        ves = ", ".join(d.get("Coronary artery wall calcification", {}).get("vessels", ["LAD"]))
        out.append(
            pick(
                [
                    f"Calcified plaques are observed in the coronary arteries ({ves}).",
                    f"Coronary artery calcifications are noted along the {ves}.",
                    f"Coronary calcification is present in the {ves}.",
                ]
            )
        )
        imp.append("Coronary artery calcification.")
    else:
        neg(
            0.5,
            ["No coronary artery calcification was detected.", "Coronary arteries show no calcification."],
        )
    if "Hiatal hernia" in pos:
        out.append(
            pick(
                [
                    "A sliding type hiatal hernia is observed in the distal esophagus.",
                    "Hiatal hernia is present.",
                    "Herniation of the gastric fundus through the hiatus (hiatal hernia) is observed.",
                ]
            )
        )
        imp.append("Hiatal hernia.")
    else:
        neg(
            0.6,
            [
                "Thoracic esophageal calibration was normal and no hiatal hernia was detected.",
                "No hiatal hernia was observed.",
            ],
        )
    if "Lymphadenopathy" in pos:
        ln = d.get("Lymphadenopathy", {})
        st = " and ".join(ln.get("stations", ["mediastinal"]))
        s = ln.get("size_mm", 15)
        out.append(
            pick(
                [
                    f"Pathologically enlarged lymph nodes with short axis up to {s} mm are observed "
                    f"in the {st} "
                    "area.",
                    f"Lymphadenopathy is present in the {st} station, the largest node measuring {s} mm in "
                    "short axis.",
                    f"Enlarged lymph nodes reaching {s} mm are seen in the {st} region.",
                ]
            )
        )
        imp.append("Mediastinal lymphadenopathy.")
    else:
        neg(
            0.8,
            [
                "No enlarged lymph nodes were detected in prevascular, pre-paratracheal, subcarinal "
                "or bilateral "
                "hilar-axillary pathological dimensions.",
                "No mediastinal or hilar lymphadenopathy was detected.",
            ],
        )
    if "Medical material" in pos:
        dev = d.get("Medical material", {}).get("device", "port catheter")
        if dev == "port catheter":
            out.append(
                pick(
                    [
                        "A port catheter is observed, extending from the right anterior chest wall to the "
                        "superior vena cava-right atrium junction.",
                        "A port catheter with its tip at the cavoatrial junction is observed.",
                    ]
                )
            )
            imp.append("Port catheter.")
        else:
            out.append(
                pick(
                    [
                        "Metallic sutures secondary to sternotomy are observed in the sternum.",
                        "Sternotomy wires are observed.",
                    ]
                )
            )
            imp.append("Postoperative sternotomy wires.")

    # Lung parenchyma.
    lung: list[str] = []
    if "Emphysema" in pos:
        e = d.get("Emphysema", {})
        lung.append(
            pick(
                [
                    f"{e.get('kind', 'Centrilobular').capitalize()} emphysematous changes are observed in "
                    "the upper lobes of both lungs.",
                    "Emphysema is present, predominantly in the upper lobes.",
                    f"{e.get('kind', 'centrilobular').capitalize()} emphysema is seen in both lungs.",
                ]
            )
        )
        imp.append("Emphysema.")
    else:
        if pick.maybe(0.5):
            lung.append(pick(["No emphysema was detected.", "There is no emphysematous change."]))
    lung_lesions = [les for les in lesions if les.organ == "lung"]
    for les in lung_lesions:
        lung.append(lesion_sentence(les, types[les.type], pick))
    if lung_lesions:
        imp.append(
            pick(["Pulmonary nodule.", "Lung nodule."]) if len(lung_lesions) == 1 else "Pulmonary nodules."
        )
    elif "Lung nodule" not in pos and pick.maybe(0.7):
        lung.append(
            pick(
                [
                    "No nodular lesion was detected in the lung parenchyma.",
                    "No pulmonary nodule was observed.",
                ]
            )
        )
    for name, pos_opts, neg_opts, imp_txt in _LUNG_FINDINGS:
        if name in pos:
            info = d.get(name, {})
            loc = pick(_LOCATION.get(info.get("lobe", ""), [info.get("lobe", "lung")]))
            size = info.get("size_mm", 20)
            kind = info.get("kind", "subsegmental")
            lung.append(pick(pos_opts).format(loc=loc, size=size, kind=kind, Kind=kind.capitalize()))
            imp.append(imp_txt.format(loc=loc))
        elif pick.maybe(0.45):
            lung.append(pick(neg_opts))
    if not lung:
        lung.append("Aeration of both lung parenchyma is normal.")
    lung[0] = "When examined in the lung parenchyma window; " + lung[0]
    out.extend(lung)
    if "Pleural effusion" in pos:
        pe = d.get("Pleural effusion", {})
        side, t = _side_words(pe.get("side", "right")), pe.get("size_mm", 20)
        where = "in both hemithoraces" if side == "bilateral" else f"on the {side}"
        out.append(
            pick(
                [
                    f"{side.capitalize()} pleural effusion measuring {t} mm "
                    "in its thickest part is observed.",
                    f"Pleural effusion is present {where}, with a maximum thickness of {t} mm.",
                    f"Pleural fluid reaching {t} mm is observed {where}.",
                ]
            )
        )
        imp.append(f"{side.capitalize()} pleural effusion.")
    else:
        neg(
            0.85,
            [
                "Pleural effusion-thickening was not detected.",
                "No pleural effusion was observed.",
                "There is no pleural effusion.",
            ],
        )
    if pick.maybe(0.25):
        out.append("No interlobular septal thickening was observed.")

    # Upper abdomen, with lesion sentences.
    abd = [les for les in lesions if les.organ != "lung"]
    organs_with = {les.organ for les in abd}
    for les in abd:
        out.append(lesion_sentence(les, types[les.type], pick))
        imp.append(f"{types[les.type].report_name.capitalize()} in the {les.attributes['location']}.")
    if not abd:
        out.append(
            pick(
                [
                    "Upper abdominal organs included in the sections are normal.",
                    "Liver, gallbladder, spleen, both kidneys and pancreas appear normal "
                    "as far as can be seen.",
                    "No space-occupying lesion was detected in the upper abdominal organs.",
                ]
            )
        )
    else:
        for organ, txt in (
            ("liver", "No space-occupying lesion was detected in the liver."),
            ("spleen", "The spleen is of normal size and no focal lesion was detected."),
            ("kidney", "No space-occupying lesion was detected in either kidney."),
            ("pancreas", "The pancreas has a normal appearance."),
        ):
            if organ not in organs_with and pick.maybe(0.5):
                out.append(txt)
    out.append(
        pick(
            [
                "Bone structures in the study area are natural. Vertebral corpus heights are preserved.",
                "No lytic-destructive lesion was detected in the bone structures in the study area.",
            ]
        )
    )
    impressions = " ".join(imp) if imp else "Thoracic CT examination within normal limits."
    return {
        "ClinicalInformation_EN": pick(CLINICAL),
        "Technique_EN": pick(TECHNIQUE[phase]),
        "Findings_EN": " ".join(out),
        "Impressions_EN": impressions,
    }


# (label, positive templates, negative templates, impression) for the lung-window findings.
_LUNG_FINDINGS = [
    (
        "Lung opacity",
        [
            "A ground-glass opacity measuring {size} mm is observed in the {loc}.",
            "Ground-glass density increase is seen in the {loc}, measuring approximately {size} mm.",
            "Patchy ground-glass areas are observed in the {loc}.",
        ],
        ["No ground-glass opacity was observed.", "No parenchymal opacity was detected."],
        "Ground-glass opacity in the {loc}.",
    ),
    (
        "Consolidation",
        [
            "Consolidation measuring approximately {size} mm is observed in the {loc}, "
            "with air bronchograms.",
            "An area of consolidation containing air bronchograms is seen in the {loc}.",
            "Pneumonic consolidation of about {size} mm is noted in the {loc}.",
        ],
        ["No consolidation was detected.", "No pneumonic infiltration or consolidation was observed."],
        "Consolidation in the {loc}.",
    ),
    (
        "Atelectasis",
        [
            "{Kind} atelectasis is observed in the {loc}.",
            "Atelectatic changes are noted in the {loc}.",
            "An area of {kind} atelectasis measuring {size} mm is seen in the {loc}.",
        ],
        ["No atelectasis was observed.", "There is no atelectasis."],
        "Atelectasis in the {loc}.",
    ),
    (
        "Pulmonary fibrotic sequela",
        [
            "Fibrotic sequelae changes are observed in the {loc}.",
            "Linear fibrotic bands (sequelae) are noted in the {loc}.",
            "Parenchymal fibrotic scarring is seen in the {loc}.",
        ],
        ["No fibrotic sequela was detected."],
        "Fibrotic sequelae in the {loc}.",
    ),
    (
        "Mosaic attenuation pattern",
        [
            "A mosaic attenuation pattern is observed in both lungs.",
            "Mosaic perfusion pattern with areas of differing attenuation is seen in both lungs.",
        ],
        ["No mosaic attenuation pattern was observed."],
        "Mosaic attenuation pattern.",
    ),
    (
        "Bronchiectasis",
        [
            "Cylindrical bronchiectasis is observed in the lower lobes of both lungs.",
            "Bronchiectatic changes are noted in both lower lobes.",
            "Dilated bronchi (bronchiectasis) are seen in the lower lobes.",
        ],
        ["No bronchiectasis was observed."],
        "Bronchiectasis.",
    ),
    (
        "Peribronchial thickening",
        [
            "Peribronchial thickening is observed in both lungs.",
            "Bronchial wall thickening (peribronchial thickening) is noted bilaterally.",
        ],
        ["No peribronchial thickening was detected."],
        "Peribronchial thickening.",
    ),
]
