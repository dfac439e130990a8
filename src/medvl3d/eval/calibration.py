"""Measure, fit and store the calibration of zero-shot probabilities.

How well a probability means what it says is measured by the expected calibration error (ECE: the
case-weighted mean gap between the mean predicted probability and the observed frequency in 10 equal-width
bins), the Brier score and the log loss, per label and as macro means. Calibrators
(:mod:`medvl3d.infer.calibration`) are fitted per label on held-out cases; the "after" numbers of a fresh
fit are cross-fitted (each case scored by a calibrator fitted on the other folds), so they are not
flattered by scoring the cases the calibrator saw. :func:`store_calibration` adds the fit to a
checkpoint's ``config.json`` atomically, without touching its weights.
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medvl3d.atomic import atomic_write_text
from medvl3d.infer.calibration import Calibration, fit_calibrator
from medvl3d.infer.ood import InputProfile, fit_reference

__all__ = [
    "CalibrationSummary",
    "calibration_metrics",
    "cross_fitted_probabilities",
    "expected_calibration_error",
    "fit_calibration",
    "reliability_bins",
    "store_calibration",
    "summarise_calibration",
]

N_BINS = 10


def reliability_bins(truth: np.ndarray, probs: np.ndarray, n_bins: int = N_BINS) -> list[dict[str, float]]:
    """Per equal-width probability bin with cases: mean predicted probability, observed frequency, count."""
    truth, probs = np.asarray(truth, dtype=np.float64).ravel(), np.asarray(probs, dtype=np.float64).ravel()
    index = np.minimum((probs * n_bins).astype(int), n_bins - 1)
    out = []
    for b in range(n_bins):
        members = index == b
        if members.any():
            out.append(
                {
                    "lo": b / n_bins,
                    "hi": (b + 1) / n_bins,
                    "mean_probability": float(probs[members].mean()),
                    "frequency": float(truth[members].mean()),
                    "n": int(members.sum()),
                }
            )
    return out


def expected_calibration_error(truth: np.ndarray, probs: np.ndarray, n_bins: int = N_BINS) -> float:
    """ECE: sum over bins of (cases in bin / cases) x |mean probability - observed frequency|."""
    bins = reliability_bins(truth, probs, n_bins)
    total = sum(b["n"] for b in bins)
    return float(sum(b["n"] * abs(b["mean_probability"] - b["frequency"]) for b in bins) / max(total, 1))


def calibration_metrics(truth: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """``ece``, ``brier``, ``log_loss`` and ``max_probability`` of one label's probabilities."""
    y = np.asarray(truth, dtype=np.float64).ravel()
    p = np.asarray(probs, dtype=np.float64).ravel()
    q = np.clip(p, 1e-12, 1 - 1e-12)
    return {
        "ece": expected_calibration_error(y, p),
        "brier": float(np.mean((p - y) ** 2)),
        "log_loss": float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q))),
        "max_probability": float(p.max()) if p.size else 0.0,
    }


def _folds(n: int, folds: int, seed: int) -> list[np.ndarray]:
    """Test-index arrays of a shuffled k-fold split. Not stratified: folds that depend on the labels would
    let a case's own label choose which calibrator scores it."""
    from sklearn.model_selection import KFold

    return [test for _, test in KFold(min(folds, n), shuffle=True, random_state=seed).split(np.arange(n))]


def cross_fitted_probabilities(
    logits: np.ndarray, truth: np.ndarray, method: str, folds: int = 5, seed: int = 0
) -> np.ndarray:
    """Calibrated probabilities ``[N, L]`` where each case is scored by calibrators fitted without it."""
    logits, truth = np.asarray(logits, dtype=np.float64), np.asarray(truth)
    out = np.empty_like(logits)
    for j in range(logits.shape[1]):
        for test in _folds(len(truth), folds, seed):
            train = np.setdiff1d(np.arange(len(truth)), test)
            out[test, j] = fit_calibrator(logits[train, j], truth[train, j], method)(logits[test, j])
    return out


def fit_calibration(
    logits: np.ndarray,
    truth: np.ndarray,
    labels: Sequence[str],
    method: str,
    *,
    prompts: dict[str, Any],
    fitted_on: dict[str, Any],
    profiles: Sequence[InputProfile] = (),
    embeddings: np.ndarray | None = None,
) -> Calibration:
    """Per-label calibrators, a pooled one for other labels and the out-of-distribution reference.

    Args:
        logits: prompt logits ``[N, L]`` of held-out cases.
        truth: their 0/1 labels ``[N, L]``.
        labels: the ``L`` label names.
        method: "temperature", "platt" or "isotonic".
        prompts: the prompt set the logits were computed with (``PromptSet.to_dict()``).
        fitted_on: provenance (data, split, ...); the date and medvl3d version are added.
        profiles: the cases' input profiles (for the out-of-distribution reference).
        embeddings: the cases' image embeddings ``[N, E]`` (for the reference).
    """
    from medvl3d import __version__

    logits, truth = np.asarray(logits, dtype=np.float64), np.asarray(truth)
    per_label = {name: fit_calibrator(logits[:, j], truth[:, j], method) for j, name in enumerate(labels)}
    pooled = fit_calibrator(logits.ravel(), truth.ravel(), method)
    reference = None
    if profiles or embeddings is not None:
        reference = fit_reference(list(profiles), embeddings).to_dict()
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return Calibration(
        method=method,
        labels=per_label,
        pooled=pooled,
        prompts=dict(prompts),
        fitted_on={**fitted_on, "n_cases": int(len(truth)), "date": stamp, "medvl3d": __version__},
        reference=reference,
    )


@dataclass
class CalibrationSummary:
    """Calibration of one evaluation: per label and macro ECE / Brier / log loss of each kind of probability.

    Attributes:
        kinds: which probabilities were measured: "raw" always, "stored" (the checkpoint's calibration)
            and "cross_fitted" (a fresh fit of ``method``, each case scored without it) when present.
        per_label: label -> kind -> metrics.
        macro: kind -> metric -> mean over labels.
        method: the method of the fresh fit (or None).
        stored_in_sample: the stored calibration was fitted on these very cases (its numbers flatter it).
        reliability: kind -> bins over all labels' cases (for reliability diagrams).
    """

    kinds: list[str]
    per_label: dict[str, dict[str, dict[str, float]]]
    macro: dict[str, dict[str, float]]
    method: str | None = None
    stored_in_sample: bool = False
    reliability: dict[str, list[dict[str, float]]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "kinds": self.kinds,
            "method": self.method,
            "stored_in_sample": self.stored_in_sample,
            "macro": self.macro,
            "per_label": self.per_label,
            "reliability": self.reliability,
        }

    def to_markdown(self) -> str:
        names = {"raw": "raw zero-shot", "stored": "stored calibration", "cross_fitted": "fresh fit"}
        lines = [
            "| probabilities | ECE | Brier | log loss | highest |",
            "|---|---|---|---|---|",
        ]
        for kind in self.kinds:
            m = self.macro[kind]
            title = names[kind] + (f" ({self.method}, cross-fitted)" if kind == "cross_fitted" else "")
            if kind == "stored" and self.stored_in_sample:
                title += " (fitted on these cases)"
            lines.append(
                f"| {title} | {m['ece']:.3f} | {m['brier']:.3f} | {m['log_loss']:.3f} | "
                f"{m['max_probability']:.3f} |"
            )
        return "Calibration (macro over labels; ECE over 10 bins)\n\n" + "\n".join(lines)


def summarise_calibration(
    truth: np.ndarray, probs_by_kind: dict[str, np.ndarray], labels: Sequence[str], **kw: Any
) -> CalibrationSummary:
    """A :class:`CalibrationSummary` of ``kind -> probabilities [N, L]`` against ``truth [N, L]``."""
    per_label = {
        name: {kind: calibration_metrics(truth[:, j], p[:, j]) for kind, p in probs_by_kind.items()}
        for j, name in enumerate(labels)
    }
    macro = {
        kind: {m: float(np.mean([per_label[n][kind][m] for n in labels])) for m in per_label[labels[0]][kind]}
        for kind in probs_by_kind
    }
    # max_probability: the highest over labels, not a mean
    for kind, p in probs_by_kind.items():
        macro[kind]["max_probability"] = float(np.max(p)) if p.size else 0.0
    reliability = {kind: reliability_bins(truth, p) for kind, p in probs_by_kind.items()}
    return CalibrationSummary(list(probs_by_kind), per_label, macro, reliability=reliability, **kw)


def store_calibration(checkpoint: str | os.PathLike, calibration: Calibration) -> Path:
    """Add (or replace) the ``calibration`` entry of a checkpoint's ``config.json``, atomically.

    Only ``config.json`` is rewritten (temporary file, fsync, rename): the weights are not touched, every
    other entry keeps its value, and a crash leaves the old file. Returns the file written.
    """
    from medvl3d.models.checkpoint import CONFIG_NAME, resolve_checkpoint

    path = resolve_checkpoint(checkpoint) / CONFIG_NAME
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from exc
    info["calibration"] = calibration.to_dict()
    atomic_write_text(path, json.dumps(info, indent=2, allow_nan=False), fsync=True)
    return path
