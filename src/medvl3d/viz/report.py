"""The visual report of one volume: what each checkpoint says about it, on one self-contained HTML page.

:func:`build_report` reads the volume once and runs every checkpoint on it through a
:class:`~medvl3d.infer.Predictor`: vision-language checkpoints diagnose it (calibrated probabilities and the
out-of-distribution verdict), segmentation checkpoints segment it (organ masks and their volumes in mL).
:meth:`VolumeReport.to_html` draws it: the out-of-distribution warning first, a bar chart of the
probabilities, axial / coronal / sagittal views through each segmented structure with its mask overlaid,
the lesion table, and the preprocessing and model provenance. Lesion rows come from
:attr:`~medvl3d.infer.segmentation.SegmentationResult.lesions`, which lesion models (Malenia) fill; organ
models leave it empty and the page says so.

>>> from medvl3d.viz.report import build_report
>>> report = build_report(ct_path, [vl_checkpoint, seg_checkpoint], labels=["pleural effusion"])
>>> [run.family for run in report.runs]
['vl', 'seg']
>>> html = report.to_html()
>>> html.startswith("<!DOCTYPE html>") and "pleural effusion" in html
True
"""

from __future__ import annotations

import datetime
import json
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medvl3d.atomic import atomic_write_text
from medvl3d.data.io import Volume
from medvl3d.infer.diagnosis import CALIBRATION_KINDS, Diagnosis
from medvl3d.infer.ood import InputProfile, OODResult, input_profile
from medvl3d.infer.segmentation import SegmentationResult
from medvl3d.viz.html import Page, image, table

__all__ = ["ModelRun", "VolumeReport", "build_report"]

#: Structures drawn with their own views, largest first; the rest are listed in the table.
MAX_FINDING_VIEWS = 24
#: Lesion rows on the page, most confident first (an untrained or poor model can report hundreds); every
#: lesion stays in the JSON.
MAX_LESION_ROWS = 50


@dataclass
class ModelRun:
    """One checkpoint's answers about the volume.

    Attributes:
        checkpoint: the checkpoint folder.
        family: its model family ("vl", "seg", "monai", ...).
        provenance: what it is and how it was trained and preprocesses (see :func:`provenance`).
        diagnosis: probabilities (vision-language checkpoints).
        segmentation: the label map and lesions (segmentation checkpoints).
        ood: its out-of-distribution verdict, or None when it holds no reference to judge by.
    """

    checkpoint: str
    family: str
    provenance: dict[str, Any]
    diagnosis: Diagnosis | None = None
    segmentation: SegmentationResult | None = None
    ood: OODResult | None = None
    outputs: str = ""

    def to_dict(self) -> dict:
        return {
            "checkpoint": self.checkpoint,
            "family": self.family,
            "provenance": self.provenance,
            "diagnosis": None if self.diagnosis is None else self.diagnosis.to_dict(),
            "segmentation": None if self.segmentation is None else self.segmentation.to_dict(),
            "out_of_distribution": None if self.ood is None else self.ood.to_dict(),
        }


@dataclass
class VolumeReport:
    """Everything the page shows; :meth:`to_dict` is the same content as JSON."""

    volume: Volume
    source: str
    profile: InputProfile
    runs: list[ModelRun]
    created: str = field(
        default_factory=lambda: datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    )

    @property
    def out_of_distribution(self) -> bool | None:
        """True if any checkpoint flags the volume, False if some judged it and none did, else None."""
        verdicts = [r.ood.out_of_distribution for r in self.runs if r.ood is not None]
        return any(verdicts) if verdicts else None

    @property
    def lesions(self) -> list[tuple[ModelRun, Any]]:
        return [
            (r, lesion) for r in self.runs if r.segmentation is not None for lesion in r.segmentation.lesions
        ]

    def to_dict(self) -> dict:
        from medvl3d import __version__

        return {
            "volume": self.source,
            "created": self.created,
            "medvl3d": __version__,
            "geometry": _geometry(self.volume),
            "input_profile": self.profile.to_dict(),
            "out_of_distribution": self.out_of_distribution,
            "runs": [r.to_dict() for r in self.runs],
        }

    def to_html(self, window: Sequence[float] | None = None) -> str:
        """The self-contained page (``window``: grey levels of the views, default soft tissue for CT).

        Without matplotlib (the ``viz`` extra) the page keeps its text and tables, and says that its
        images need ``pip install 'medvl3d[viz]'``: a plain install still gets a report.
        """
        from medvl3d import __version__

        page = Page(
            f"medvl3d report: {Path(self.source).name}",
            f"{self.source} | {self.created} | medvl3d {__version__}",
        )
        plots = _plots_available()
        if not plots:
            page.box(
                "note", "No images or charts on this page: they need matplotlib: pip install 'medvl3d[viz]'"
            )
        _ood_box(page, self)
        for run in self.runs:
            if run.diagnosis is not None:
                _diagnosis_section(page, run, plots)
        _image_section(page, self, window, plots)
        _lesion_section(page, self)
        _provenance_section(page, self)
        return page.render()

    def write(
        self,
        path: str | os.PathLike,
        json_path: str | os.PathLike | None = None,
        window: Sequence[float] | None = None,
    ) -> Path:
        """Write the HTML page (and the JSON) atomically; returns the page's path."""
        path = Path(path)
        atomic_write_text(path, self.to_html(window))
        if json_path is not None:
            atomic_write_text(json_path, json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")
        return path


def checkpoint_name(path: str) -> str:
    """A short name of a checkpoint: ``run (step-N)`` for a run's checkpoint, else the folder name."""
    p = Path(path)
    return f"{p.parent.parent.name} ({p.name})" if p.parent.name == "checkpoints" else p.name


def _geometry(volume: Volume) -> dict[str, Any]:
    return {
        "shape": list(volume.shape),
        "spacing_mm": [round(float(s), 4) for s in volume.spacing],
        "source_orientation": volume.orientation,
        "modality": volume.modality,
    }


def provenance(predictor: Any) -> dict[str, Any]:
    """What a report says about a checkpoint: the model, its training, preprocessing and calibration."""
    info = predictor.info
    train = info.get("train") or {}
    data = train.get("data") or {}
    out: dict[str, Any] = {
        "checkpoint": info.get("path"),
        "model": (info.get("model") or {}).get("name"),
        "family": predictor.family,
        "task": info.get("task"),
        "step": info.get("step"),
        "trained_with_medvl3d": info.get("medvl3d_version"),
        "training_data": data.get("root"),
        "training_steps": (train.get("train") or {}).get("steps"),
        "modality": predictor.modality,
        "preprocess": predictor.spec.to_dict(),
    }
    if predictor.outputs == "embeddings":
        out["prompts"] = predictor.prompts.to_dict()
        out["text_encoder"] = (info.get("text") or {}).get("name")
        cal = predictor.calibration
        out["calibration"] = None if cal is None else {"method": cal.method, **cal.fitted_on}
        out["calibration_note"] = predictor.calibration_note or None
    else:
        out["label_names"] = {str(k): v for k, v in predictor.label_names.items()}
        out["sliding_window"] = {
            "patch_size": list(predictor.window.patch_size),
            "overlap": predictor.window.overlap,
            "flip_axes": list(predictor.window.flip_axes),
        }
    return out


def build_report(
    volume: str | os.PathLike | Volume,
    checkpoints: Sequence[str | os.PathLike],
    *,
    labels: str | Sequence[str] | None = None,
    describe: str | None = None,
    targets: str | Sequence[str] | None = None,
    device: str | None = None,
    prompts: Any = None,
    progress: bool = False,
) -> VolumeReport:
    """Run every checkpoint on one volume (read once) and collect what the page shows.

    Args:
        volume: a NIfTI/NRRD/MHA file, a DICOM folder, or a :class:`~medvl3d.data.io.Volume`.
        checkpoints: checkpoint or run folders of any family (at least one).
        labels: abnormalities to diagnose (default: the labels each vision-language checkpoint was
            trained with).
        describe: a lesion description for lesion-segmentation (Malenia) checkpoints.
        targets: keep only these labels of segmentation checkpoints.
        device: where to run the models.
        prompts: prompt set / YAML replacing vision-language checkpoints' own prompts.
        progress: show sliding-window progress bars.

    Raises:
        ValueError: no checkpoint, ``describe`` without a lesion checkpoint, or what the Predictor raises.
    """
    from medvl3d.data.io import read_volume
    from medvl3d.infer.predictor import Predictor, parse_labels
    from medvl3d.schema import CTRATE_LABELS

    if not checkpoints:
        raise ValueError("a report needs at least one --checkpoint")
    wanted = parse_labels(labels) if labels is not None else None
    predictors = [Predictor.from_checkpoint(c, device=device, prompts=prompts) for c in checkpoints]
    if describe is not None and not any(p.outputs == "lesions" for p in predictors):
        families = ", ".join(sorted({p.family for p in predictors}))
        raise ValueError(
            f"--describe needs a lesion-segmentation (Malenia) checkpoint; the given ones are of family "
            f"{families}, which cannot segment lesions from a description"
        )
    vol = volume if isinstance(volume, Volume) else read_volume(Path(volume))
    source = str(vol.path) if vol.path is not None else "array"
    runs = []
    for predictor in predictors:
        predictor.set_volume(vol, progress=progress)
        run = ModelRun(
            str(predictor.info.get("path")),
            predictor.family,
            provenance(predictor),
            ood=predictor.ood,
            outputs=predictor.outputs,
        )
        if predictor.outputs == "embeddings":
            run.diagnosis = predictor.diagnose(wanted or predictor.info.get("labels") or list(CTRATE_LABELS))
        elif predictor.outputs == "lesions":  # every lesion it finds, or those matching the description
            run.segmentation = predictor.segment(describe=describe)
        else:
            run.segmentation = predictor.segment(targets=targets)
        runs.append(run)
    return VolumeReport(vol, source, input_profile(vol), runs)


def _ood_box(page: Page, report: VolumeReport) -> None:
    flagged = [r for r in report.runs if r.ood is not None and r.ood.out_of_distribution]
    judged = [r for r in report.runs if r.ood is not None]
    if flagged:
        lines = [f"{checkpoint_name(r.checkpoint)}: {reason}" for r in flagged for reason in r.ood.reasons]
        page.box(
            "warn",
            "Out of the training distribution: this scan is unlike the data these models were trained and "
            "calibrated on, so their answers below may be confidently wrong.",
            lines,
        )
    elif judged:
        checked = sorted({c for r in judged for c in r.ood.checked})
        page.box("ok", f"Within the training distribution ({', '.join(checked)} checked).")
    unjudged = [r for r in report.runs if r.ood is None]
    if unjudged:
        names = ", ".join(checkpoint_name(r.checkpoint) for r in unjudged)
        page.box(
            "note",
            f"Not checked for being out of distribution: {names} (no reference of the training data is "
            "stored; medvl3d evaluate diagnosis --calibrate stores one in vision-language checkpoints).",
        )


def _plots_available() -> bool:
    from medvl3d.extras import MissingExtra, require

    try:
        require("matplotlib", "viz", "report images")
    except MissingExtra:
        return False
    return True


def _diagnosis_section(page: Page, run: ModelRun, plots: bool = True) -> None:
    from medvl3d.viz.plots import probability_bars

    d = run.diagnosis
    assert d is not None
    calibrated = any(v != "none" for v in d.calibration.values())
    page.h2(f"Diagnosis: {run.provenance.get('model')} ({checkpoint_name(run.checkpoint)})", "diagnosis")
    page.text(
        "Zero-shot probabilities of each abnormality for the whole volume (the model scores the scan as a "
        "whole; it does not localise findings). "
        + (
            "Bars are calibrated on held-out cases; black ticks are the raw zero-shot scores."
            if calibrated
            else "These are raw zero-shot scores: the checkpoint carries no calibration, so they are not "
            "probabilities one can take at face value."
        )
    )
    muted = bool(run.ood is not None and run.ood.out_of_distribution)
    title = "out of distribution: read with caution" if muted else ""
    if plots:
        png = probability_bars(d.probabilities, d.raw if calibrated else None, d.max_supported, title, muted)
        page.add(image(png, "bar chart of the probability of each abnormality"))
    rows = [
        (
            name,
            f"{d.probabilities[name]:.3f}",
            f"{d.raw[name]:.3f}",
            CALIBRATION_KINDS[d.calibration[name]],
            "" if d.max_supported[name] is None else f"{d.max_supported[name]:.3f}",
        )
        for name in sorted(d.probabilities, key=lambda k: -d.probabilities[k])
    ]
    page.add(table(["abnormality", "probability", "raw score", "how", "highest supported"], rows, (1, 2, 4)))
    for note in d.notes:
        page.box("note", note)


def _finding_views(
    page: Page, volume: Volume, run: ModelRun, window: Sequence[float] | None, plots: bool = True
) -> None:
    from medvl3d.viz.slices import finding_point, orthogonal_views, to_ras

    seg = run.segmentation
    assert seg is not None
    _, ras_mask, _ = to_ras(volume, seg.mask)
    counts = np.bincount(seg.mask.ravel(), minlength=max(seg.label_names, default=0) + 1)
    present = sorted(
        (i for i in seg.label_names if i != 0 and i < counts.size and counts[i]), key=lambda i: -counts[i]
    )
    volumes = seg.volumes_ml()
    rows = [(seg.label_names[i], f"{volumes[seg.label_names[i]]:.1f}", int(counts[i])) for i in present]
    absent = [n for i, n in sorted(seg.label_names.items()) if i != 0 and n not in {r[0] for r in rows}]
    page.add(table(["structure", "volume (mL)", "voxels"], rows, (1, 2)))
    if absent:
        page.text(f"Not found: {', '.join(absent)}.")
    names = dict(seg.label_names)
    for i in present[:MAX_FINDING_VIEWS] if plots else []:
        point = finding_point(ras_mask, i)
        png = orthogonal_views(volume, point, seg.mask, names, focus=i, window=window)
        caption = f"{names[i]}: {volumes[names[i]]:.1f} mL (yellow outline), views through its centre"
        page.add(image(png, f"axial, coronal and sagittal views through {names[i]}", caption))
    if len(present) > MAX_FINDING_VIEWS:
        page.text(f"{len(present) - MAX_FINDING_VIEWS} smaller structures are listed above but not drawn.")


def _image_section(
    page: Page, report: VolumeReport, window: Sequence[float] | None, plots: bool = True
) -> None:
    from medvl3d.viz.slices import orthogonal_views

    page.h2("Images", "images")
    if plots:
        page.add(
            image(
                orthogonal_views(report.volume, window=window),
                "axial, coronal and sagittal views through the centre of the volume",
                "The scan as read: views through the centre of the volume (radiological convention: "
                "patient's right on the left).",
            )
        )
    for run in report.runs:
        if run.segmentation is None:
            continue
        page.h3(f"Segmentation: {run.provenance.get('model')} ({checkpoint_name(run.checkpoint)})")
        _finding_views(page, report.volume, run, window, plots)


def _lesion_section(page: Page, report: VolumeReport) -> None:
    page.h2("Lesions", "lesions")
    found = report.lesions
    lesion_models = [r for r in report.runs if r.outputs == "lesions"]
    if not found and lesion_models:
        names = ", ".join(checkpoint_name(r.checkpoint) for r in lesion_models)
        page.box("note", f"No lesion found by {names}.")
        return
    if not found:
        page.box(
            "note",
            "No lesion table: none of these checkpoints is a lesion-segmentation model. Lesions with their "
            "predicted attributes (shape, density, margin, ...) and volumes come from a Malenia checkpoint "
            "(`medvl3d finetune configs/malenia_synth_cpu.yaml`; `make demo` trains a small one); organ "
            "models list their structures above.",
        )
        return
    shown = sorted(found, key=lambda item: -(item[1].score if item[1].score is not None else -1.0))
    shown = shown[:MAX_LESION_ROWS]
    attrs = sorted({k for _, lesion in shown for k in lesion.attributes})
    rows = [
        (
            lesion.id,
            lesion.name,
            f"{lesion.volume_ml:.2f}",
            *(lesion.attributes.get(a, "") for a in attrs),
            "" if lesion.score is None else f"{lesion.score:.2f}",
            checkpoint_name(run.checkpoint),
        )
        for run, lesion in shown
    ]
    if len(found) > len(shown):
        page.text(
            f"{len(found)} lesions found; the {len(shown)} with the highest scores are listed, every one "
            "is in the report's JSON."
        )
    page.add(table(["id", "lesion", "volume (mL)", *attrs, "score", "checkpoint"], rows, (0, 2)))


def _provenance_section(page: Page, report: VolumeReport) -> None:
    import torch

    from medvl3d import __version__

    page.h2("Volume and provenance", "provenance")
    geo, prof = _geometry(report.volume), report.profile
    rows = [
        ("file", report.source),
        ("shape (RAS array)", " x ".join(map(str, geo["shape"]))),
        ("voxel spacing (mm)", " x ".join(f"{s:g}" for s in geo["spacing_mm"])),
        ("field of view (mm)", " x ".join(f"{s:.0f}" for s in prof.fov_mm)),
        ("orientation in the file", geo["source_orientation"]),
        ("modality", geo["modality"]),
        *((k.replace("_", " "), f"{v:.3g}") for k, v in prof.intensity.items()),
        ("medvl3d / torch / python", f"{__version__} / {torch.__version__} / {platform.python_version()}"),
    ]
    page.add(table(["", ""], rows))
    for run in report.runs:
        page.h3(f"{run.provenance.get('model')} ({run.family}): {run.checkpoint}")
        page.pre(json.dumps(run.provenance, indent=2), "checkpoint, training, preprocessing, calibration")
