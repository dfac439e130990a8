"""Calibrated zero-shot probabilities: map each label's prompt logit to a probability fitted on held-out data.

A zero-shot score is ``sigmoid(z)`` with ``z = scale * (cos(image, positive) - cos(image, negative))``: a
large learned logit scale saturates it (a real CT far from the training data gets 1.000 for everything).
A calibrator is fitted per label on cases with known labels (``medvl3d evaluate diagnosis --calibrate``)
and stored in the checkpoint's ``config.json``; the Predictor then reports its output beside the raw score.

Methods:
    temperature: ``sigmoid(z / T)``, one parameter (Guo et al., 2017): softens, keeps 0.5 at z = 0.
    platt: ``sigmoid(a * z + b)`` with ``a >= 0`` (Platt, 1999): also moves the 0.5 point, which a
        zero-shot logit rarely has in the right place.
    isotonic: a non-decreasing step function of ``z`` (pool-adjacent-violators), each step's value
        Laplace's rule of succession ``(k + 1) / (n + 2)`` of its ``k`` positives among ``n`` cases, so
        a step of 12 cases that were all positive says 0.93, not 1.0.

Temperature and Platt scaling fit Platt's smoothed targets (``(n_pos + 1) / (n_pos + 2)`` for
positives, ``1 / (n_neg + 2)`` for negatives) for the same reason: a finite calibration set never
supports a probability of exactly 0 or 1.

Every calibrator clips its input to the range of logits it was fitted on: it never extrapolates, so no
output exceeds what the calibration data support (:attr:`LabelCalibrator.max_probability`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

__all__ = ["METHODS", "Calibration", "LabelCalibrator", "fit_calibrator", "sigmoid"]

Method = Literal["temperature", "platt", "isotonic"]
METHODS: tuple[str, ...] = ("temperature", "platt", "isotonic")


def sigmoid(z: np.ndarray) -> np.ndarray:
    """The logistic function, without overflow warnings for large |z|."""
    z = np.asarray(z, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -z))


def _nll(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


@dataclass
class LabelCalibrator:
    """One label's map from prompt logit to probability.

    Attributes:
        method: "temperature", "platt" or "isotonic".
        params: ``{"t": T}``, ``{"a": a, "b": b}`` or ``{"x": [...], "y": [...]}`` (isotonic knots,
            linearly interpolated).
        logit_range: (lowest, highest) logit of the calibration cases; inputs are clipped to it.
        n: calibration cases.
        n_pos: positive calibration cases.
    """

    method: str
    params: dict[str, Any]
    logit_range: tuple[float, float]
    n: int
    n_pos: int

    def __call__(self, logits: np.ndarray | float) -> np.ndarray:
        """Calibrated probabilities of ``logits`` (any shape)."""
        z = np.clip(np.asarray(logits, dtype=np.float64), *self.logit_range)
        if self.method == "temperature":
            return sigmoid(z / self.params["t"])
        if self.method == "platt":
            return sigmoid(self.params["a"] * z + self.params["b"])
        return np.interp(z, self.params["x"], self.params["y"])

    @property
    def max_probability(self) -> float:
        """The highest probability this calibrator can give (its value at the top of its logit range)."""
        return float(self(np.asarray(self.logit_range)).max())

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "params": self.params,
            "logit_range": list(self.logit_range),
            "n": self.n,
            "n_pos": self.n_pos,
        }

    @classmethod
    def from_dict(cls, data: dict) -> LabelCalibrator:
        """Inverse of :meth:`to_dict`; a wrong method or missing field is a ValueError naming it."""
        try:
            method = str(data["method"])
            if method not in METHODS:
                raise ValueError(f"unknown calibration method {method!r} (expected one of {METHODS})")
            lo, hi = (float(v) for v in data["logit_range"])
            return cls(method, dict(data["params"]), (lo, hi), int(data["n"]), int(data["n_pos"]))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed calibrator {data!r}: {exc}") from None


def _smoothed_targets(y: np.ndarray) -> np.ndarray:
    """Platt's targets: positives (n_pos + 1) / (n_pos + 2), negatives 1 / (n_neg + 2)."""
    n_pos = float(y.sum())
    n_neg = float(y.size - n_pos)
    return np.where(y > 0.5, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))


def _fit_temperature(z: np.ndarray, y: np.ndarray) -> dict[str, float]:
    from scipy.optimize import minimize_scalar

    res = minimize_scalar(lambda lt: _nll(sigmoid(z / np.exp(lt)), y), bounds=(-6.0, 8.0), method="bounded")
    return {"t": float(np.exp(res.x))}


def _fit_platt(z: np.ndarray, y: np.ndarray) -> dict[str, float]:
    from scipy.optimize import minimize

    # A small ridge keeps the slope finite when the classes are separable; a >= 0 keeps the ranking.
    scale = max(float(np.std(z)), 1e-6)

    def loss(w: np.ndarray) -> float:
        return _nll(sigmoid(w[0] * z / scale + w[1]), y) + 1e-3 * w[0] ** 2

    prior = float(np.clip(y.mean(), 1e-3, 1 - 1e-3))
    res = minimize(loss, x0=[1.0, float(np.log(prior / (1 - prior)))], bounds=[(0.0, None), (None, None)])
    return {"a": float(res.x[0] / scale), "b": float(res.x[1])}


def _fit_isotonic(z: np.ndarray, y: np.ndarray) -> dict[str, list[float]]:
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(z, y)
    fitted = iso.predict(z)
    # Each step (cases sharing one fitted value) becomes (k + 1) / (n + 2); a running maximum keeps the
    # map non-decreasing where steps of different sizes shrink by different amounts.
    steps = np.unique(fitted)
    shrunk = np.array([(y[fitted == v].sum() + 1.0) / ((fitted == v).sum() + 2.0) for v in steps])
    nearest = np.abs(steps[None, :] - np.asarray(iso.y_thresholds_)[:, None]).argmin(axis=1)
    knots_y = np.maximum.accumulate(shrunk[nearest])
    return {"x": [float(v) for v in iso.X_thresholds_], "y": [float(v) for v in knots_y]}


def fit_calibrator(logits: np.ndarray, truth: np.ndarray, method: str = "isotonic") -> LabelCalibrator:
    """Fit one label's calibrator on held-out ``logits`` ``[N]`` and 0/1 ``truth`` ``[N]``.

    Raises:
        ValueError: an unknown method, mismatched or empty inputs, or non-finite logits.
    """
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r} (expected one of {', '.join(METHODS)})")
    z = np.asarray(logits, dtype=np.float64).ravel()
    y = np.asarray(truth, dtype=np.float64).ravel()
    if z.size == 0 or z.size != y.size:
        raise ValueError(f"calibration needs as many logits as labels, got {z.size} and {y.size}")
    if not np.isfinite(z).all():
        raise ValueError("calibration logits hold NaN or inf")
    if method == "temperature":
        params: dict[str, Any] = _fit_temperature(z, _smoothed_targets(y))
    elif method == "platt":
        params = _fit_platt(z, _smoothed_targets(y))
    elif np.ptp(z) == 0:  # one distinct logit: isotonic has a single knot; np.interp needs it twice
        p = float((y.sum() + 1.0) / (y.size + 2.0))
        params = {"x": [float(z[0]), float(z[0])], "y": [p, p]}
    else:
        params = _fit_isotonic(z, y)
    return LabelCalibrator(method, params, (float(z.min()), float(z.max())), int(z.size), int(y.sum()))


@dataclass
class Calibration:
    """Per-label calibrators of one checkpoint, what they were fitted on, and the reference that tells
    when a volume is out of the training distribution.

    Attributes:
        method: the method of every calibrator.
        labels: label (as evaluated) -> its calibrator; looked up case-insensitively.
        pooled: one calibrator fitted on every label's cases together, for labels without their own
            (its answers are marked ``"pooled"``), or None.
        prompts: the prompt set the logits were computed with; other prompts make other logits.
        fitted_on: where and when (``data``, ``split``, ``n_cases``, ``date``, ``medvl3d``).
        reference: :class:`~medvl3d.infer.ood.DistributionReference` as a dict, or None.
    """

    method: str
    labels: dict[str, LabelCalibrator]
    pooled: LabelCalibrator | None = None
    prompts: dict[str, Any] = field(default_factory=dict)
    fitted_on: dict[str, Any] = field(default_factory=dict)
    reference: dict[str, Any] | None = None

    def find(self, label: str) -> tuple[LabelCalibrator | None, str]:
        """``(calibrator, how)`` for ``label``: how is "label", "pooled" or "none"."""
        low = label.strip().lower()
        for name, cal in self.labels.items():
            if name.lower() == low:
                return cal, "label"
        if self.pooled is not None:
            return self.pooled, "pooled"
        return None, "none"

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "labels": {k: v.to_dict() for k, v in self.labels.items()},
            "pooled": None if self.pooled is None else self.pooled.to_dict(),
            "prompts": self.prompts,
            "fitted_on": self.fitted_on,
            "reference": self.reference,
        }

    @classmethod
    def from_dict(cls, data: dict, source: str = "calibration") -> Calibration:
        """Inverse of :meth:`to_dict`; a malformed entry is a ValueError naming ``source``."""
        try:
            labels = {str(k): LabelCalibrator.from_dict(v) for k, v in dict(data["labels"]).items()}
            pooled = data.get("pooled")
            return cls(
                method=str(data["method"]),
                labels=labels,
                pooled=None if pooled is None else LabelCalibrator.from_dict(pooled),
                prompts=dict(data.get("prompts") or {}),
                fitted_on=dict(data.get("fitted_on") or {}),
                reference=data.get("reference"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{source}: malformed calibration entry: {exc}") from None
