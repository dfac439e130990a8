"""Evaluation pages (``medvl3d evaluate ... --html``): the numbers of a report, drawn.

Diagnosis: ROC curves per label, macro AUROC of the seen / underrepresented / unseen labels with their
95% intervals, and the reliability diagram of the raw and calibrated probabilities. Segmentation: a Dice
box plot per class and the summary table. Lesion segmentation (Malenia): a Dice box plot per lesion type,
the seen and unseen types side by side, and the per-type table.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from medvl3d.viz.html import Page, image, table

__all__ = ["write_diagnosis_page", "write_lesion_page", "write_segmentation_page"]

_KIND_TITLES = {
    "raw": "raw zero-shot",
    "stored": "stored calibration",
    "cross_fitted": "fresh fit (cross-fitted)",
}


def _fmt(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.3f}"


def _ci(info: Any, metric: str = "auroc") -> str:
    ci = (info.get("ci") or {}).get(metric) if isinstance(info, dict) else (info.ci or {}).get(metric)
    return "" if not ci else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def write_diagnosis_page(report: Any, path: str | os.PathLike) -> Path:
    """Write the page of a :class:`~medvl3d.eval.diagnosis.DiagnosisReport` (atomically)."""
    from medvl3d.viz.plots import group_auroc, reliability_diagram, roc_curves

    meta = report.meta
    page = Page(
        f"Zero-shot diagnosis: {meta.get('model')}",
        f"{report.n_cases} cases of the {meta.get('split')} split of {meta.get('data')} | "
        f"checkpoint {meta.get('checkpoint')}",
    )
    page.h2("Seen, underrepresented and unseen abnormalities")
    page.add(
        image(group_auroc(report.groups, report.macro), "macro AUROC per label group with 95% intervals")
    )
    rows = [("all", report.macro)] + list(report.groups.items())
    page.add(
        table(
            ["group", "labels", "AUROC", "95% CI", "F1", "accuracy"],
            [
                (g, i["n_defined"], _fmt(i["auroc"]), _ci(i), _fmt(i["f1"]), _fmt(i["accuracy"]))
                for g, i in rows
            ],
            (1, 2, 4, 5),
        )
    )
    if report.truth is not None and report.probabilities is not None:
        page.h2("ROC curves")
        truth, probs = np.asarray(report.truth), np.asarray(report.probabilities)
        page.add(image(roc_curves(truth, probs, report.labels), "ROC curve of each label"))
    per_label = [
        (n, report.group_of(n), f"{m.n_pos}/{m.n}", _fmt(m.auroc), _ci({"ci": m.ci}), _fmt(m.f1))
        for n, m in report.per_label.items()
    ]
    page.add(table(["label", "group", "positives", "AUROC", "95% CI", "F1"], per_label, (3, 5)))
    if report.calibration is not None:
        cal = report.calibration
        page.h2("Calibration")
        page.text(
            "Observed frequency of the finding against the mean predicted probability, 10 bins over every "
            "label's cases (dot size: cases per bin). A calibrated model lies on the diagonal."
        )
        titles = {k: _KIND_TITLES[k] for k in cal.kinds}
        page.add(image(reliability_diagram(cal.reliability, titles), "reliability diagram"))
        rows = [
            (titles[k], *(f"{cal.macro[k][m]:.3f}" for m in ("ece", "brier", "log_loss", "max_probability")))
            for k in cal.kinds
        ]
        page.add(table(["probabilities", "ECE", "Brier", "log loss", "highest"], rows, (1, 2, 3, 4)))
    gap = report.modality_gap
    page.text(
        f"Modality gap (centroid distance): before the bank {_fmt(gap.get('before_bank'))}, after "
        f"{_fmt(gap.get('after_bank'))}."
    )
    return page.write(path)


def write_segmentation_page(report: Any, path: str | os.PathLike) -> Path:
    """Write the page of a :class:`~medvl3d.eval.segmentation.SegmentationReport` (atomically)."""
    from medvl3d.viz.plots import dice_boxplots

    meta = report.meta
    page = Page(
        f"Segmentation: {meta.get('model')}",
        f"{len(report.per_case)} cases of the {meta.get('split')} split of {meta.get('data')} | "
        f"checkpoint {meta.get('checkpoint')}",
    )
    dice = {
        name: [
            m.dice for m in (case.get(name) for case in report.per_case.values()) if m and m.dice is not None
        ]
        for name in report.classes.values()
    }
    page.h2("Dice per case and class")
    page.add(image(dice_boxplots(dice), "box plot of per-case Dice for each class"))
    page.text(
        "Undefined cases (class absent from both reference and prediction) are left out, not counted as 1."
    )
    page.h2("Summary")
    page.pre(report.to_markdown())
    return page.write(path)


def write_lesion_page(
    scores: dict[str, dict[str, Any]],
    path: str | os.PathLike,
    *,
    checkpoint: str | os.PathLike,
    data: str | os.PathLike,
    split: str,
) -> Path:
    """Write the page of :func:`~medvl3d.eval.lesion_segmentation.evaluate_lesion_types` scores
    (atomically): per-case Dice per lesion type, then all seen against all unseen types' cases."""
    from medvl3d.eval.lesion_segmentation import format_lesion_table
    from medvl3d.viz.plots import dice_boxplots

    types = {name: row for name, row in scores.items() if name not in ("seen", "unseen")}
    page = Page(
        "Lesion segmentation per lesion type",
        f"{len(types)} lesion types of the {split} split of {data} | checkpoint {checkpoint}",
    )
    page.h2("Dice per case and lesion type")
    labelled = {
        f"{name} ({'seen' if row['seen'] else 'unseen'})": row["case_dice"] for name, row in types.items()
    }
    page.add(image(dice_boxplots(labelled), "box plot of per-case Dice for each lesion type"))
    page.h2("Seen and unseen types")
    groups = {
        f"{group} types": [
            d for row in types.values() if row["seen"] is (group == "seen") for d in row["case_dice"]
        ]
        for group in ("seen", "unseen")
    }
    page.add(
        image(dice_boxplots({k: v for k, v in groups.items() if v}), "per-case Dice, seen vs unseen types")
    )
    page.text(
        "A type is seen when the checkpoint's training data held it; unseen types are queried zero-shot from "
        "the attribute values this data folder records for them."
    )
    page.h2("Summary")
    page.pre(format_lesion_table(scores))
    return page.write(path)
