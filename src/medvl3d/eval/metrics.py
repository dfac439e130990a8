"""Classification metrics for zero-shot diagnosis, following the CT-CLIP protocol.

Per label: AUROC (threshold-free), and F1, accuracy and precision at the operating point chosen on the
ROC curve by **Youden's J** (the threshold maximising sensitivity + specificity - 1), as CT-CLIP does.
Confidence intervals come from a case bootstrap: cases are resampled with replacement ``n_boot`` times
and each metric is recomputed on every resample (at the fixed operating point chosen on the full set);
the interval is the 2.5th-97.5th percentile. A label whose eval set holds a single class has no AUROC and
is reported as undefined (``None``), never averaged in silently.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import accuracy_score, f1_score, precision_score, roc_auc_score, roc_curve

__all__ = [
    "METRICS",
    "LabelMetrics",
    "youden_threshold",
    "binary_metrics",
    "bootstrap_label_metrics",
    "percentile_interval",
    "nanmean_or_none",
]

METRICS: tuple[str, ...] = ("auroc", "f1", "accuracy", "precision")


@dataclass
class LabelMetrics:
    """Metrics of one label; ``auroc`` and the threshold metrics are None when the label is undefined."""

    n: int
    n_pos: int
    auroc: float | None = None
    f1: float | None = None
    accuracy: float | None = None
    precision: float | None = None
    threshold: float | None = None
    ci: dict[str, tuple[float, float] | None] = field(default_factory=dict)

    @property
    def defined(self) -> bool:
        """Both classes are present, so AUROC and an ROC operating point exist."""
        return 0 < self.n_pos < self.n

    def to_dict(self) -> dict:
        return {
            "n": self.n,
            "n_pos": self.n_pos,
            "defined": self.defined,
            **{m: getattr(self, m) for m in METRICS},
            "threshold": self.threshold,
            "ci": {k: (list(v) if v is not None else None) for k, v in self.ci.items()},
        }


def _check(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score, dtype=np.float64)
    if y_true.shape != y_score.shape:
        raise ValueError(f"labels shape {y_true.shape} differs from scores shape {y_score.shape}")
    if not np.isin(y_true, (0, 1)).all():
        raise ValueError("labels must be 0/1")
    if not np.isfinite(y_score).all():
        raise ValueError("scores contain NaN or inf")
    return y_true.astype(np.int64), y_score


def youden_threshold(y_true: Sequence[int], y_score: Sequence[float]) -> float:
    """The ROC-curve threshold maximising Youden's J = TPR - FPR (predict positive when score >= it)."""
    y_true, y_score = _check(np.asarray(y_true), np.asarray(y_score))
    fpr, tpr, thr = roc_curve(y_true, y_score)
    best = int(np.argmax(tpr - fpr))
    t = float(thr[best])
    # sklearn's first threshold is +inf (predict nothing); keep it finite for JSON and plotting.
    return t if math.isfinite(t) else float(np.nextafter(y_score.max(), np.inf))


def binary_metrics(
    y_true: Sequence[int], y_score: Sequence[float], threshold: float | None = None
) -> LabelMetrics:
    """AUROC plus F1, accuracy and precision at ``threshold`` (default: Youden's J on this set)."""
    y_true, y_score = _check(np.asarray(y_true), np.asarray(y_score))
    out = LabelMetrics(n=int(y_true.size), n_pos=int(y_true.sum()))
    if not out.defined:
        return out
    out.auroc = float(roc_auc_score(y_true, y_score))
    out.threshold = youden_threshold(y_true, y_score) if threshold is None else float(threshold)
    pred = (y_score >= out.threshold).astype(np.int64)
    out.f1 = float(f1_score(y_true, pred, zero_division=0))
    out.accuracy = float(accuracy_score(y_true, pred))
    out.precision = float(precision_score(y_true, pred, zero_division=0))
    return out


def _auroc_rows(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUROC of each row of ``[B, N]`` labels/scores (ties count 1/2); NaN for one-class rows.

    Vectorised over bootstrap resamples: ~100x faster than calling ``roc_auc_score`` per resample, and
    equal to it (tested).
    """
    ranks = rankdata(s, axis=1)  # average ranks for ties
    n_pos = y.sum(axis=1)
    n_neg = y.shape[1] - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = ((ranks * y).sum(axis=1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    auc[(n_pos == 0) | (n_neg == 0)] = np.nan
    return auc


def bootstrap_label_metrics(
    y_true: np.ndarray,
    y_score: np.ndarray,
    thresholds: Sequence[float | None],
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Per-resample metrics ``{metric: [n_boot, L]}`` from resampling *cases* with replacement.

    Args:
        y_true: 0/1 labels ``[N, L]``.
        y_score: scores ``[N, L]``.
        thresholds: per-label operating points (from the full set); None for undefined labels.
        n_boot: number of resamples.
        seed: seed of the resampling generator.

    Entries are NaN where a resample holds a single class for that label (AUROC undefined) or the label
    has no threshold.
    """
    y_true, y_score = _check(y_true, y_score)
    if y_true.ndim != 2:
        raise ValueError(f"expected [cases, labels] arrays, got shape {y_true.shape}")
    n, n_labels = y_true.shape
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))  # the same case resample for every label
    out = {m: np.full((n_boot, n_labels), np.nan) for m in METRICS}
    for j in range(n_labels):
        y = y_true[idx, j]
        s = y_score[idx, j]
        auc = _auroc_rows(y, s)
        out["auroc"][:, j] = auc
        if thresholds[j] is None:
            continue
        pred = s >= thresholds[j]
        tp = (pred & (y == 1)).sum(axis=1)
        fp = (pred & (y == 0)).sum(axis=1)
        fn = (~pred & (y == 1)).sum(axis=1)
        valid = ~np.isnan(auc)
        with np.errstate(invalid="ignore", divide="ignore"):
            prec = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
            f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
        acc = (pred == (y == 1)).mean(axis=1)
        out["precision"][:, j] = np.where(valid, prec, np.nan)
        out["f1"][:, j] = np.where(valid, f1, np.nan)
        out["accuracy"][:, j] = np.where(valid, acc, np.nan)
    return out


def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float] | None:
    """The central ``level`` percentile interval of the finite values, or None when there are none."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return None
    a = (1 - level) / 2 * 100
    lo, hi = np.percentile(v, [a, 100 - a])
    return float(lo), float(hi)


def nanmean_or_none(values: Sequence[float | None]) -> float | None:
    """Mean of the defined values (None when none is defined)."""
    v = [x for x in values if x is not None and math.isfinite(x)]
    return float(np.mean(v)) if v else None
