"""Evaluate a segmentation checkpoint on a labelled dataset: Dice, NSD and HD95 per class and case.

Each case is segmented as a user would segment it (read, preprocess with the checkpoint's spec, sliding
window, mask mapped back onto the input grid) and compared with its reference label map on that grid, at
its own voxel spacing. Classes are the checkpoint's label names; a reference label map holding ids the
checkpoint does not know is an error naming the case, not a silently ignored class.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from medvl3d.atomic import atomic_write_text
from medvl3d.data.datasets.base import semantic_label
from medvl3d.eval.seg_metrics import (
    ClassMetrics,
    format_segmentation_table,
    segmentation_metrics,
    summarise_cases,
)

__all__ = ["SegmentationReport", "evaluate_segmentation"]


@dataclass
class SegmentationReport:
    """Per-case and summarised segmentation metrics of one checkpoint on one split."""

    classes: dict[int, str]
    per_case: dict[str, dict[str, ClassMetrics]]
    summary: dict[str, dict]
    nsd_tolerance_mm: float
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "meta": self.meta,
            "classes": {str(k): v for k, v in self.classes.items()},
            "nsd_tolerance_mm": self.nsd_tolerance_mm,
            "summary": self.summary,
            "per_case": {c: {k: m.to_dict() for k, m in ms.items()} for c, ms in self.per_case.items()},
        }

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """The report as JSON; also written (atomically) to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        if path is not None:
            atomic_write_text(path, text)
        return text

    def to_markdown(self) -> str:
        head = (
            f"Segmentation of {len(self.per_case)} cases ({self.meta.get('split')} split of "
            f"{self.meta.get('data')}), checkpoint {self.meta.get('checkpoint')}\n\n"
        )
        return head + format_segmentation_table(self.summary, self.nsd_tolerance_mm)


def _reference(sample: dict, classes: dict[int, str], where: str) -> np.ndarray:
    if sample.get("label") is None:
        raise ValueError(f"{where}: the case has no reference label map to evaluate against")
    truth = semantic_label(sample).numpy()[0]  # an instance map as one foreground class
    unknown = sorted(set(np.unique(truth).tolist()) - set(classes) - {0})
    if unknown:
        raise ValueError(
            f"{where}: reference label ids {unknown} are not classes of the checkpoint "
            f"({', '.join(f'{k}={v}' for k, v in sorted(classes.items()))})"
        )
    return truth


def evaluate_segmentation(
    checkpoint: str | os.PathLike | Any,
    data: str | os.PathLike | Dataset | Sequence[dict],
    split: str = "valid",
    *,
    format: str | None = None,
    nsd_tolerance_mm: float = 2.0,
    device: str | None = None,
    window: dict | None = None,
    progress: bool = True,
) -> SegmentationReport:
    """Segment every case of one split and score it against its reference label map.

    Args:
        checkpoint: checkpoint/run folder of a segmentation model, or a ready Predictor.
        data: dataset root (any layout), or a Dataset / list of raw samples with ``label``.
        split: which split of ``data``.
        format: the dataset layout (default: the one the checkpoint was trained on, else detected).
        nsd_tolerance_mm: tolerance of the normalised surface Dice.
        device: where to run the model.
        window: sliding-window settings replacing the checkpoint's (``overlap``, ``flip_axes`` ...).
        progress: show a progress bar.

    Raises:
        ValueError: a checkpoint that does not segment, an empty split, a case without a label map or
            with label ids the checkpoint does not know.
    """
    from tqdm.auto import tqdm

    from medvl3d.infer.predictor import Predictor

    predictor = (
        checkpoint
        if isinstance(checkpoint, Predictor)
        else Predictor.from_checkpoint(checkpoint, device, window=window)
    )
    predictor.require("logits", "evaluate segmentation")
    if isinstance(data, (str, os.PathLike)):
        from medvl3d.data.datasets import open_split

        trained_on = ((predictor.info.get("train") or {}).get("data") or {}).get("format", "auto")
        dataset, root = open_split(data, split, format or trained_on), str(data)
    else:
        dataset, root = data, None
    if len(dataset) == 0:
        raise ValueError(f"{root or 'the dataset'}: split {split!r} has no cases")
    classes = {k: v for k, v in predictor.label_names.items() if k != 0}
    per_case: dict[str, dict[str, ClassMetrics]] = {}
    for i in tqdm(range(len(dataset)), desc="segment", unit="case", disable=not progress):
        sample = dataset[i]
        meta = sample.get("meta") or {}
        case = str(meta.get("case_id", i))
        truth = _reference(sample, classes, str(meta.get("label_path", case)))
        affine = np.asarray(meta["affine"], dtype=np.float64)
        predictor.set_volume(sample["image"], affine=affine, modality=meta.get("modality"))
        pred = predictor.segment().mask
        per_case[case] = segmentation_metrics(
            pred, truth, predictor.volume.spacing, classes, nsd_tolerance_mm=nsd_tolerance_mm
        )
    return SegmentationReport(
        classes=classes,
        per_case=per_case,
        summary=summarise_cases(list(per_case.values())),
        nsd_tolerance_mm=nsd_tolerance_mm,
        meta={
            "checkpoint": predictor.info.get("path"),
            "data": root,
            "split": split,
            "model": (predictor.info.get("model") or {}).get("name"),
            "window": {
                "patch_size": list(predictor.window.patch_size),
                "overlap": predictor.window.overlap,
                "flip_axes": list(predictor.window.flip_axes),
            },
        },
    )
