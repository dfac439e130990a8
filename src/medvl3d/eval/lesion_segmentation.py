"""Zero-shot lesion segmentation scored per lesion type: Dice, NSD and lesion-level detection recall.

The types and their queries come from the evaluated folder's own lesion records
(:func:`medvl3d.data.lesion_knowledge.lesion_table`): a SynthCT-VL folder generated with another
``--lesion-types`` YAML is scored on its types. A type is *seen* when the checkpoint's training data held
it (the checkpoint's ``lesion_types`` table), else *unseen*. Each case is queried once per type present
in it (its organ and most frequent recorded values, without the scan's contrast phase:
:data:`~medvl3d.data.lesion_knowledge.TYPE_QUERY_ATTRIBUTES`; the name for name-only models) on the
preprocessed grid, and compared with the union of that type's lesions.

A supervised segmentation checkpoint whose classes are lesion type names (the zero-shot table's
supervised bounds; ``benchmarks/malenia_zero_shot.py`` trains them) is scored the same way: a type's
mask is its class, and a type it has no class for (unseen) scores 0 by construction.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medvl3d.data.lesion_knowledge import TYPE_QUERY_ATTRIBUTES, lesion_table, records_lesions, type_queries

__all__ = ["LesionTypeScores", "evaluate_lesion_types", "format_lesion_table"]


@dataclass
class LesionTypeScores:
    """Per lesion type: seen or not, per-case Dice and NSD, and lesions detected / present."""

    seen: bool
    dice: list[float] = field(default_factory=list)
    nsd: list[float] = field(default_factory=list)
    detected: int = 0
    lesions: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "seen": self.seen,
            "cases": len(self.dice),
            "dice": float(np.mean(self.dice)) if self.dice else None,
            "nsd": float(np.mean(self.nsd)) if self.nsd else None,
            "recall": self.detected / self.lesions if self.lesions else None,
            "lesions": self.lesions,
            "case_dice": list(self.dice),
        }


def evaluate_lesion_types(
    checkpoint: str | os.PathLike,
    data: str | os.PathLike,
    split: str = "valid",
    max_cases: int | None = None,
    nsd_tolerance_mm: float = 2.0,
    device: str = "cpu",
    seen: set[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Scores per lesion type of a Malenia checkpoint, or of a supervised one with a class per lesion type,
    on one split of a data folder (see the module doc).

    Args:
        seen: the types that count as seen (default: those of the checkpoint's training data, or its
            classes); a model trained on every type (an upper bound) is grouped as the others are with the
            same set.

    Returns:
        type -> {"seen", "cases", "dice", "nsd", "recall", "lesions", "case_dice"} (means over the cases
        holding the type, and its per-case Dice), plus "seen" and "unseen" means.

    Raises:
        ValueError: a checkpoint that segments nothing (vision-language), or a split without lesions.

    Warns:
        UserWarning: a supervised checkpoint whose classes name none of the split's types.
    """
    from medvl3d.data.datasets import open_split
    from medvl3d.data.preprocess import preprocess_sample
    from medvl3d.eval.seg_metrics import segmentation_metrics
    from medvl3d.models.checkpoint import read_info

    dataset = open_split(Path(data), split)
    table = lesion_table(records_lesions(dataset), f"{data} ({split})")
    if not table:
        raise ValueError(f"{data}: the {split!r} split records no lesions to score")
    family = (read_info(checkpoint).get("model") or {}).get("family")
    supervised = family not in ("malenia", None)
    if supervised:
        spec, known, case_masks = _supervised_types(checkpoint, device)
    else:
        spec, known, case_masks = _zero_shot_types(
            checkpoint, device, type_queries(table, TYPE_QUERY_ATTRIBUTES)
        )
    if supervised and not known & set(table):
        # Legitimate for a seen-only bound on a folder of unseen types (0 by construction), a mistake for an
        # organ model: say it, do not refuse.
        warnings.warn(
            f"{checkpoint}: its classes ({', '.join(sorted(known)) or 'none'}) name none of the lesion types "
            f"of {data} ({', '.join(sorted(table))}): every type scores 0",
            stacklevel=2,
        )
    seen = known if seen is None else set(seen)
    scores = {name: LesionTypeScores(seen=name in seen) for name in table}
    n = len(dataset) if max_cases is None else min(max_cases, len(dataset))
    for i in range(n):
        sample = dataset[i]
        if not sample.get("lesions"):
            continue
        prepared = preprocess_sample(sample, spec)
        label = torch.as_tensor(prepared["label"])[0].numpy()
        spacing = prepared["meta"]["spacing"]
        names = sorted({les["type"] for les in sample["lesions"].values()})
        for name, pred in case_masks(prepared["image"], names).items():
            ids = [int(k) for k, les in sample["lesions"].items() if les["type"] == name]
            truth = np.isin(label, ids)
            if not truth.any():  # resampled away (a lesion smaller than a voxel)
                continue
            m = segmentation_metrics(pred.astype(np.uint8), truth.astype(np.uint8), spacing, {1: name},
                                     nsd_tolerance_mm)[name]  # fmt: skip
            s = scores[name]
            s.dice.append(m.dice or 0.0)
            s.nsd.append(m.nsd or 0.0)
            for lid in ids:
                own = label == lid
                if own.any():
                    s.lesions += 1
                    s.detected += int((pred & own).sum() >= 0.1 * own.sum())
    out = {name: s.summary() for name, s in scores.items() if s.dice}
    for group, seen in (("seen", True), ("unseen", False)):
        rows = [r for r in out.values() if r.get("seen") is seen]
        if rows:
            out[group] = {
                k: float(np.mean([r[k] for r in rows if r[k] is not None]))
                for k in ("dice", "nsd", "recall")
                if any(r[k] is not None for r in rows)
            }
    return out


def _zero_shot_types(checkpoint: str | os.PathLike, device: str, queries: dict[str, dict[str, str]]) -> tuple:
    """A Malenia checkpoint: its preprocessing, the types it was trained on, and a function (preprocessed
    image, type names) -> mask per type of that type's query (its recorded values, or its name for
    name-only models), all of a case's types from one sliding window.

    A name-only model chooses among names: its vocabulary takes every type of the scored folder, in sorted
    order, before the first case, so each type is scored against the same candidates whatever the order
    of the cases (SAT's fixed prompt list)."""
    from medvl3d.infer.lesions import LesionQuery, LesionSegmenter

    segmenter = LesionSegmenter.from_checkpoint(checkpoint, device)
    by_name = segmenter.model.config.query == "name"
    if by_name:
        for name in sorted(queries):
            segmenter.prepare_query(LesionQuery(name=name))

    def case_masks(image: torch.Tensor, names: list[str]) -> dict[str, np.ndarray]:
        asked = [LesionQuery(name=n) if by_name else LesionQuery(dict(queries[n])) for n in names]
        probs = segmenter.query_maps(image, asked)
        return {name: (p >= 0.5).numpy() for name, p in zip(names, probs)}

    return segmenter.spec, set(segmenter.knowledge), case_masks


def _supervised_types(checkpoint: str | os.PathLike, device: str) -> tuple:
    """A supervised segmentation checkpoint whose classes are lesion types (the supervised bounds of the
    zero-shot table): its preprocessing, its classes as the known types, and a function (preprocessed
    image, type names) -> voxels of each type's class (empty for a type it has no class for: unseen)."""
    from medvl3d.infer import Predictor
    from medvl3d.infer.sliding_window import sliding_window_probabilities

    predictor = Predictor.from_checkpoint(checkpoint, device=device)
    predictor.require("logits", "scoring lesion types")  # a segmentation model, not a vision-language one
    ids = {name: i for i, name in predictor.label_names.items() if i > 0}

    def case_masks(image: torch.Tensor, names: list[str]) -> dict[str, np.ndarray]:
        probs = sliding_window_probabilities(predictor.model, image, predictor.window, predictor.device)
        classes = probs.argmax(0).numpy()
        return {n: classes == ids[n] if n in ids else np.zeros(classes.shape, bool) for n in names}

    return predictor.spec, set(ids), case_masks


def format_lesion_table(scores: dict[str, dict[str, Any]]) -> str:
    """Text table: one row per type (seen/unseen), Dice, NSD, detection recall, cases."""
    head = f"{'lesion type':32s} {'split':>7s} {'Dice':>7s} {'NSD':>7s} {'recall':>7s} {'cases':>6s}"
    lines = [head, "-" * len(head)]

    def cell(v: Any) -> str:
        return f"{v:7.3f}" if isinstance(v, float) else f"{'-':>7s}"

    for name, row in scores.items():
        if name in ("seen", "unseen"):
            continue
        kind = "seen" if row["seen"] else "unseen"
        lines.append(
            f"{name:32s} {kind:>7s} {cell(row['dice'])} {cell(row['nsd'])} {cell(row['recall'])} "
            f"{row['cases']:6d}"
        )
    for group in ("seen", "unseen"):
        if group in scores:
            r = scores[group]
            lines.append(
                f"{'mean ' + group:32s} {'':>7s} {cell(r.get('dice'))} {cell(r.get('nsd'))} "
                f"{cell(r.get('recall'))}"
            )
    return "\n".join(lines)
