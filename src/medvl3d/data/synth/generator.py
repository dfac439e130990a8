"""`generate`: write a whole SynthCT-VL data set (CT-RATE + MSD + JSONL layouts) in parallel.

Layout under OUT (see docs/synthct.md):
- `{train,valid}/<split>_<P>/<split>_<P>_a/<split>_<P>_a_1.nii.gz` + `_organs`, `_lesions`, `_vessels`
- `radiology_text_reports/`, `multi_abnormality_labels/`, `metadata/` CSVs per split (CT-RATE)
- `dataset.json`, `dataset_lesions.json`, `dataset_vessels.json` (MSD style)
- `manifest_train.jsonl`, `manifest_valid.jsonl`, `splits.json`, `labels.json`
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from medvl3d.schema import CTRATE_LABELS
from medvl3d.text.reports import join_report

from .abnormalities import DRAWN
from .case import CaseConfig, CasePlan, make_case
from .lesion_types import load_lesion_types
from .phantom import ORGAN_LABELS
from .variation import VARIATIONS
from .vessels import VESSEL_LABELS
from .writer import write_csv, write_json, write_jsonl

DEFAULT_SIZE = (64, 128, 128)  # D x H x W
DEFAULT_SPACING = (5.0, 2.75, 2.75)  # z, y, x mm: 320 x 352 x 352 mm, thorax + upper abdomen
#: (z, y, x) mm: a field of view centred on the lungs and hila (the carina lies 85-100 mm above z = 0).
LUNG_CENTRE = (75.0, 0.0, 0.0)
#: Abnormalities that never occur in the training split by default (zero-shot diagnosis).
DEFAULT_UNSEEN_ABNORMALITIES = ("Bronchiectasis", "Mosaic attenuation pattern")
#: Abnormalities kept at <= 2% prevalence in the training split by default.
DEFAULT_UNDERREPRESENTED = ("Pericardial effusion", "Hiatal hernia", "Consolidation")
UNDERREPRESENTED_MAX = 0.02
REPORT_COLUMNS = ["VolumeName", "ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN"]
METADATA_COLUMNS = [
    "VolumeName",
    "XYSpacing",
    "ZSpacing",
    "RescaleSlope",
    "RescaleIntercept",
    "Manufacturer",
    "PatientSex",
    "PatientAge",
]


def _check_names(kind: str, names, known) -> tuple[str, ...]:
    names = tuple(names)
    bad = [n for n in names if n not in known]
    if bad:
        raise ValueError(f"unknown {kind} {bad}; known: {sorted(known)}")
    return names


def underrepresented_quota(n_train: int, max_fraction: float = UNDERREPRESENTED_MAX) -> int:
    """How many training cases get an underrepresented abnormality: floor(max_fraction * n_train)."""
    return int(np.floor(max_fraction * n_train + 1e-9))


def plan_cases(
    n_train: int,
    n_test: int,
    seed: int,
    *,
    seen_types: tuple[str, ...],
    unseen_types: tuple[str, ...],
    underrepresented: tuple[str, ...],
    unseen_abnormalities: tuple[str, ...],
) -> list[CasePlan]:
    """Per-case constraints that implement the splits.

    Unseen lesion types and unseen abnormalities are excluded from every training case.
    Each underrepresented abnormality is forced into exactly `underrepresented_quota(n_train)`
    training cases (chosen by a seeded permutation) and forbidden in all others, so its training
    prevalence is at most 2% by construction, not by luck. The valid split samples everything at
    the base prevalence and prefers unseen lesion types.
    """
    plans = []
    quota = underrepresented_quota(n_train)
    forced_sets: list[set[str]] = [set() for _ in range(n_train)]
    for k, name in enumerate(underrepresented):
        perm = np.random.default_rng([seed, 2, k]).permutation(n_train)
        for i in perm[:quota]:
            forced_sets[int(i)].add(name)
    for i in range(n_train):
        forbidden = (set(underrepresented) - forced_sets[i]) | set(unseen_abnormalities)
        plans.append(CasePlan("train", i, seen_types, (), frozenset(forced_sets[i]), frozenset(forbidden)))
    for j in range(n_test):
        plans.append(CasePlan("valid", j, seen_types + unseen_types, unseen_types))
    return plans


def _run_case(args):
    plan, cfg, out_dir = args
    return make_case(plan, cfg, out_dir)


def generate(
    out_dir: str | Path,
    *,
    n_train: int,
    n_test: int,
    size: tuple[int, int, int] = DEFAULT_SIZE,
    spacing: tuple[float, float, float] = DEFAULT_SPACING,
    seed: int = 0,
    lesion_types: str | Path | None = None,
    workers: int | None = None,
    progress: bool = True,
    unseen_lesion_types: list[str] | None = None,
    underrepresented: list[str] | None = None,
    unseen_abnormalities: list[str] | None = None,
    variation: str = "standard",
    centre: tuple[float, float, float] | None = None,
) -> dict:
    """Generate SynthCT-VL under `out_dir`.

    Args:
        out_dir: output folder (created; existing files with the same names are replaced).
        n_train: cases in the `train` split; n_test: cases in the `valid` split.
        size: (D, H, W) = slices (z), rows (y), columns (x); NIfTI arrays are (W, H, D).
        spacing: (z, y, x) voxel size in mm.
        seed: the same arguments and seed give byte-identical files.
        lesion_types: YAML with lesion types (default: the shipped `lesion_types.yaml`).
        workers: processes (default: all CPUs; 1 = in this process).
        progress: show a tqdm progress bar.
        unseen_lesion_types: types only in `valid` (default: the YAML's `unseen: true` types).
        underrepresented: abnormalities at <= 2% prevalence in `train` (default
            `DEFAULT_UNDERREPRESENTED`).
        unseen_abnormalities: abnormalities absent from `train` (default `DEFAULT_UNSEEN_ABNORMALITIES`).
        variation: "standard" (the fixed phantom) or "wide" (domain randomisation: per-case field of
            view and grid shape, patient size, contrast phase and tissue HU, scanner noise and blur,
            richer anatomy; see `variation.py`). `size` is then the largest field of view.
        centre: (z, y, x) mm of the field-of-view centre in the body template (standard variation only;
            default `case.FOV_CENTRE`, mid-thorax to upper abdomen). `LUNG_CENTRE` centres a crop on the
            lungs and hila (the artery/vein training data: e.g. size 96x128x192 at 1.5 mm).

    Returns:
        A summary dict: counts, label prevalence per split, lesions per type, per-stage seconds,
        wall seconds and volumes per second.
    """
    if n_train < 0 or n_test < 0 or n_train + n_test == 0:
        raise ValueError(f"need n_train >= 0, n_test >= 0 and at least one case, got {n_train}, {n_test}")
    size = tuple(int(s) for s in size)
    spacing = tuple(float(s) for s in spacing)
    if len(size) != 3 or min(size) < 8:
        raise ValueError(f"size must be three integers >= 8 (D, H, W), got {size}")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be three positive numbers (z, y, x) in mm, got {spacing}")
    if variation not in VARIATIONS:
        raise ValueError(f"unknown variation {variation!r}; known: {list(VARIATIONS)}")
    if centre is not None:
        centre = tuple(float(c) for c in centre)
        if len(centre) != 3:
            raise ValueError(f"centre must be three numbers (z, y, x) in mm, got {centre}")
        if variation != "standard":
            raise ValueError("centre: the wide variation draws its own field of view; use it with 'standard'")
    types = load_lesion_types(lesion_types)
    unseen_t = _check_names(
        "lesion types",
        [n for n, t in types.items() if t.unseen] if unseen_lesion_types is None else unseen_lesion_types,
        types,
    )
    seen_t = tuple(n for n in types if n not in unseen_t)
    under = _check_names(
        "abnormalities",
        DEFAULT_UNDERREPRESENTED if underrepresented is None else underrepresented,
        CTRATE_LABELS,
    )
    unseen_a = _check_names(
        "abnormalities",
        DEFAULT_UNSEEN_ABNORMALITIES if unseen_abnormalities is None else unseen_abnormalities,
        CTRATE_LABELS,
    )
    if set(under) & set(unseen_a):
        raise ValueError(
            f"abnormalities cannot be both underrepresented and unseen: {sorted(set(under) & set(unseen_a))}"
        )
    if "Lung nodule" in set(under) | set(unseen_a):
        raise ValueError("'Lung nodule' follows the lung lesion types; make lung lesion types unseen instead")

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output path {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    plans = plan_cases(
        n_train,
        n_test,
        seed,
        seen_types=seen_t,
        unseen_types=unseen_t,
        underrepresented=under,
        unseen_abnormalities=unseen_a,
    )
    cfg = CaseConfig(
        shape_xyz=(size[2], size[1], size[0]),
        spacing_xyz=(spacing[2], spacing[1], spacing[0]),
        seed=int(seed),
        types=types,
        variation=variation,
        centre_xyz=None if centre is None else (centre[2], centre[1], centre[0]),
    )
    workers = max(1, min(workers or os.cpu_count() or 1, len(plans)))
    t_start = time.perf_counter()
    jobs = [(p, cfg, str(out)) for p in plans]
    bar = tqdm(total=len(jobs), desc="SynthCT-VL", unit="vol", disable=not progress)
    rows: list[dict] = []
    if workers == 1:
        for job in jobs:
            rows.append(_run_case(job))
            bar.update()
    else:
        # spawn: no fork of a possibly multi-threaded parent; results are collected in plan order.
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as ex:
            for row in ex.map(_run_case, jobs, chunksize=1):
                rows.append(row)
                bar.update()
    bar.close()
    wall = time.perf_counter() - t_start

    _warn_stale(out, n_train, n_test)
    _write_tables(out, rows, spacing)
    _write_msd(out, rows)
    args = {
        "n_train": n_train,
        "n_test": n_test,
        "size": list(size),
        "spacing": list(spacing),
        "seed": int(seed),
        "lesion_types": "default" if lesion_types is None else str(lesion_types),
    }
    if variation != "standard":  # the standard set's files stay byte-identical to earlier versions
        args["variation"] = variation
    if centre is not None:
        args["centre"] = list(centre)
    drawn_seen = [n for n in DRAWN if n not in under and n not in unseen_a]
    write_json(
        out / "splits.json",
        {
            "lesion_types": {"seen": list(seen_t), "unseen": list(unseen_t)},
            "abnormalities": {
                "seen": drawn_seen,
                "underrepresented": list(under),
                "unseen": list(unseen_a),
                "not_drawn": [n for n in CTRATE_LABELS if n not in DRAWN],
            },
            "underrepresented_max_train_prevalence": UNDERREPRESENTED_MAX,
            "seed": int(seed),
            "args": args,
        },
    )
    write_json(
        out / "labels.json",
        {
            "organs": {str(k): v for k, v in {0: "background", **ORGAN_LABELS}.items()},
            "vessels": {str(k): v for k, v in {0: "background", **VESSEL_LABELS}.items()},
            "lesions": "instance ids 1..n per volume; attributes in manifest_<split>.jsonl under 'lesions'",
        },
    )
    return _summary(out, rows, wall, workers)


def _warn_stale(out: Path, n_train: int, n_test: int) -> None:
    """Warn about case folders of an earlier, larger run in OUT (they are not in the new tables)."""
    stale = []
    for split, n in (("train", n_train), ("valid", n_test)):
        for folder in sorted((out / split).glob(f"{split}_*")) if (out / split).is_dir() else []:
            suffix = folder.name[len(split) + 1 :]
            if suffix.isdigit() and int(suffix) > n:
                stale.append(folder)
    if stale:
        warnings.warn(
            f"{out}: {len(stale)} case folder(s) from an earlier run are not part of this one "
            f"(e.g. {stale[0]}); generate into an empty folder to avoid mixing runs",
            stacklevel=3,
        )


def _write_tables(out: Path, rows: list[dict], spacing) -> None:
    xy = f"[{spacing[2]:g}, {spacing[1]:g}]"
    for split in ("train", "valid"):
        sel = [r for r in rows if r["split"] == split]
        write_csv(
            out / "radiology_text_reports" / f"{split}_reports.csv",
            REPORT_COLUMNS,
            [[r["volume_name"]] + [r["report"][c] for c in REPORT_COLUMNS[1:]] for r in sel],
        )
        write_csv(
            out / "multi_abnormality_labels" / f"{split}_predicted_labels.csv",
            ["VolumeName", *CTRATE_LABELS],
            [[r["volume_name"]] + [r["labels"][n] for n in CTRATE_LABELS] for r in sel],
        )
        write_csv(
            out / "metadata" / f"{split}_metadata.csv",
            METADATA_COLUMNS,
            [
                [
                    r["volume_name"],
                    xy,
                    f"{spacing[0]:g}",
                    1,
                    0,
                    r["manufacturer"],
                    r["sex"],
                    f"{r['age']:03d}Y",
                ]
                for r in sel
            ],
        )
        write_jsonl(
            out / f"manifest_{split}.jsonl",
            [
                {
                    "case_id": r["volume_name"].removesuffix(".nii.gz"),
                    "image": r["image"],
                    "label": r["lesions_map"],
                    "organs": r["organs"],
                    "vessels": r["vessels"],
                    # the same headed text the CT-RATE loader gives for this case's CSV row
                    "report": join_report(r["report"]["Findings_EN"], r["report"]["Impressions_EN"]),
                    "labels": r["labels"],
                    "lesions": r["lesions"],
                    "modality": "CT",
                    "split": split,
                    "phase": r["phase"],
                    **({"contrast_phase": r["contrast_phase"]} if "contrast_phase" in r else {}),
                }
                for r in sel
            ],
        )


def _write_msd(out: Path, rows: list[dict]) -> None:
    specs = [
        (
            "dataset.json",
            "organs",
            "SynthCT-VL organs",
            {"0": "background", **{str(k): v for k, v in ORGAN_LABELS.items()}},
        ),
        ("dataset_lesions.json", "lesions_map", "SynthCT-VL lesions", {"0": "background", "1": "lesion"}),
        (
            "dataset_vessels.json",
            "vessels",
            "SynthCT-VL pulmonary vessels and airways",
            {"0": "background", **{str(k): v for k, v in VESSEL_LABELS.items()}},
        ),
    ]
    for fname, key, name, labels in specs:
        doc = {
            "name": name,
            "description": "Procedural CT-like volumes from medvl3d SynthCT-VL",
            "tensorImageSize": "3D",
            "modality": {"0": "CT"},
            "labels": labels,
            "numTraining": sum(r["split"] == "train" for r in rows),
            "numTest": sum(r["split"] == "valid" for r in rows),
            "training": [{"image": r["image"], "label": r[key]} for r in rows if r["split"] == "train"],
            # The test list is SynthCT-VL's labelled valid split: MSDDataset(path, "valid") reads it.
            "test": [
                {"image": r["image"], "label": r[key], "split": "valid"}
                for r in rows
                if r["split"] == "valid"
            ],
        }
        if key == "lesions_map":
            doc["label_type"] = "instance"  # ids 1..n are lesion instances, keyed into the manifests
        write_json(out / fname, doc)


def _summary(out: Path, rows: list[dict], wall: float, workers: int) -> dict:
    stages: dict[str, float] = {}
    for r in rows:
        for k, v in r["times"].items():
            stages[k] = stages.get(k, 0.0) + v
    prevalence = {}
    lesion_counts: dict[str, dict[str, int]] = {}
    for split in ("train", "valid"):
        sel = [r for r in rows if r["split"] == split]
        prevalence[split] = {
            n: (sum(r["labels"][n] for r in sel) / len(sel) if sel else 0.0) for n in CTRATE_LABELS
        }
        counts: dict[str, int] = {}
        for r in sel:
            for les in r["lesions"].values():
                counts[les["type"]] = counts.get(les["type"], 0) + 1
        lesion_counts[split] = dict(sorted(counts.items()))
    return {
        "out_dir": str(out),
        "n_train": sum(r["split"] == "train" for r in rows),
        "n_test": sum(r["split"] == "valid" for r in rows),
        "workers": workers,
        "seconds": wall,
        "volumes_per_s": len(rows) / wall if wall > 0 else float("inf"),
        "stage_seconds": stages,
        # CPU time of the case work itself: robust to other load on the machine (wall time is not).
        "cpu_seconds_per_volume": sum(r["cpu_seconds"] for r in rows) / max(len(rows), 1),
        "prevalence": prevalence,
        "lesions": lesion_counts,
    }
