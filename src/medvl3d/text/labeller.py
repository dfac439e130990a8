"""Report labeller: radiology report text -> probability per CT-RATE abnormality label.

Two layers, both deterministic:

* **Rules** (always on): ``ReportParser`` finds every mention of every finding with negation,
  uncertainty and section; a label's probability is a noisy-OR over its mentions, where an affirmed
  mention counts ``p_affirmed`` (more in the impression), a hedged one ``p_uncertain``, and a negated
  one nothing. No training data is needed and there is no length limit.
* **Calibration** (optional, ``fit``): per label, a logistic regression over the rule features
  (mention counts by status and section, and the rule probability) fitted on labelled reports. Use it
  to adapt to a site's reporting style; evaluate it with ``cross_validate`` (k-fold), never on the
  reports it was fitted on.

Use it to mine training labels from reports (``predict_many``) and to score a labeller against manual
labels (``evaluate_labeller``: per-label and macro AUROC and F1 with scikit-learn).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, roc_auc_score
from sklearn.model_selection import KFold
from tqdm import tqdm

from medvl3d.atomic import atomic_write_json
from medvl3d.schema import CTRATE_LABELS
from medvl3d.text.reports import FINDING_SECTIONS, ReportParser, default_parser, is_english

FEATURE_NAMES: tuple[str, ...] = (
    "affirmed_findings",
    "affirmed_impression",
    "uncertain",
    "negated",
    "any_affirmed",
    "any_uncertain",
    "any_negated",
    "rule_probability",
)


@dataclass
class RuleWeights:
    """Per-mention probabilities of the rule layer (noisy-OR over a label's mentions).

    Attributes:
        p_affirmed: an affirmed mention in the findings.
        p_affirmed_impression: an affirmed mention in the impression (the radiologist's conclusion).
        p_uncertain: a hedged mention ("possible X", "X?").
        p_base: the probability of a label that is never mentioned or only negated.
        p_implied: added (noisy-OR) by an affirmed finding that implies the label (``IMPLIES``).
    """

    p_affirmed: float = 0.85
    p_affirmed_impression: float = 0.9
    p_uncertain: float = 0.4
    p_base: float = 0.02
    p_implied: float = 0.3


#: Radiological implications: an affirmed finding (key) raises, below the decision threshold, the
#: probability of findings it is a kind of or usually comes with (consolidation is an opacity).
IMPLIES: dict[str, tuple[str, ...]] = {
    "Consolidation": ("Lung opacity",),
    "Coronary artery wall calcification": ("Arterial wall calcification",),
}


def report_problem(report: object) -> str | None:
    """Why a report cannot be labelled meaningfully, or None when it can.

    Returns ``"not a string"``, ``"empty"``, ``"no words"`` (punctuation/digits only) or ``"not English"``.
    The labeller returns all-zero probabilities for such reports (nothing can be read from them) and
    warns for non-English text, where zeros could otherwise be mistaken for a normal study.
    """
    if not isinstance(report, str):
        return "not a string"
    if not report.strip():
        return "empty"
    if not any(ch.isalpha() for ch in report):
        return "no words"
    if not is_english(report):
        return "not English"
    return None


class ReportLabeller:
    """Labels reports with the CT-RATE abnormalities (or any findings of the alias table).

    Args:
        labels: finding names to score, each a key of the parser's alias table (default: the 18
            CT-RATE labels).
        parser: the mention finder; the built-in alias table and cues if None.
        weights: rule-layer probabilities.
    """

    def __init__(
        self,
        labels: Sequence[str] = CTRATE_LABELS,
        parser: ReportParser | None = None,
        weights: RuleWeights | None = None,
    ) -> None:
        self.labels = tuple(labels)
        self.parser = parser or default_parser()
        missing = [lab for lab in self.labels if lab not in self.parser.aliases]
        if missing:
            raise ValueError(f"labels without an entry in the alias table: {missing}")
        self.weights = weights or RuleWeights()
        self._index = {lab: i for i, lab in enumerate(self.labels)}
        self._coef: np.ndarray | None = None  # [L, F] logistic weights when fitted
        self._intercept: np.ndarray | None = None  # [L]
        self._mean: np.ndarray | None = None
        self._scale: np.ndarray | None = None

    # -- features ------------------------------------------------------------------------------------
    def features(self, report: str) -> np.ndarray:
        """Rule features ``[len(labels), len(FEATURE_NAMES)]`` of one report (zeros if unreadable)."""
        return self._features(report, readable=report_problem(report) is None)

    def _features(self, report: str, readable: bool) -> np.ndarray:
        """``features`` for a report whose ``report_problem`` the caller has already checked."""
        feats = np.zeros((len(self.labels), len(FEATURE_NAMES)), dtype=np.float64)
        w = self.weights
        miss = np.ones(len(self.labels))  # noisy-OR: product of (1 - p) over mentions
        if readable:
            for m in self.parser.find_mentions(report):
                i = self._index.get(m.finding)
                if i is None or m.section not in FINDING_SECTIONS:
                    continue
                if m.negated:
                    feats[i, 3] += 1
                elif m.uncertain or m.historical:  # hedged, or only about an earlier examination
                    feats[i, 2] += 1
                    miss[i] *= 1 - w.p_uncertain
                elif m.section == "impression":
                    feats[i, 1] += 1
                    miss[i] *= 1 - w.p_affirmed_impression
                else:
                    feats[i, 0] += 1
                    miss[i] *= 1 - w.p_affirmed
        for src, targets in IMPLIES.items():
            i = self._index.get(src)
            if i is not None and feats[i, 0] + feats[i, 1] > 0:
                for t in targets:
                    if t in self._index:
                        miss[self._index[t]] *= 1 - w.p_implied
        feats[:, 4] = (feats[:, 0] + feats[:, 1]) > 0
        feats[:, 5] = feats[:, 2] > 0
        feats[:, 6] = feats[:, 3] > 0
        feats[:, 7] = 1 - (1 - w.p_base) * miss
        return feats

    def features_many(self, reports: Sequence[str], progress: bool = True) -> np.ndarray:
        """Rule features ``[N, len(labels), len(FEATURE_NAMES)]`` of many reports (see ``features``)."""
        return self._features_many(reports, [report_problem(r) for r in reports], progress)

    def _features_many(
        self, reports: Sequence[str], problems: Sequence[str | None], progress: bool
    ) -> np.ndarray:
        """``features_many`` given each report's ``report_problem`` (checked once by the caller)."""
        it = tqdm(
            zip(reports, problems),
            total=len(reports),
            desc="labelling reports",
            unit="report",
            disable=not progress,
        )
        return (
            np.stack([self._features(r, readable=p is None) for r, p in it])
            if len(reports)
            else np.zeros((0, len(self.labels), len(FEATURE_NAMES)))
        )

    def proba_from_features(self, feats: np.ndarray) -> np.ndarray:
        """``[N, L, F]`` features -> ``[N, L]`` probabilities (rules, or the fitted calibration)."""
        if self._coef is None:
            return feats[..., 7]
        z = (feats - self._mean) / self._scale
        logits = np.einsum("nlf,lf->nl", z, self._coef) + self._intercept
        return 1.0 / (1.0 + np.exp(-logits))

    # -- prediction ----------------------------------------------------------------------------------
    def predict_proba(self, report: str) -> dict[str, float]:
        """Probability per label for one report; unreadable reports give zeros (see ``report_problem``)."""
        problem = report_problem(report)
        if problem == "not a string":
            raise ValueError(f"report must be a string, got {type(report).__name__}")
        if problem is not None:
            if problem == "not English":
                warnings.warn(
                    f"report does not look like English ({report[:40]!r}...); returning zero probabilities",
                    UserWarning,
                    stacklevel=2,
                )
            return dict.fromkeys(self.labels, 0.0)
        probs = self.proba_from_features(self._features(report, readable=True)[None])[0]
        return {lab: float(p) for lab, p in zip(self.labels, probs)}

    def predict(self, report: str, threshold: float = 0.5) -> dict[str, int]:
        """0/1 per label: probability >= ``threshold``."""
        return {lab: int(p >= threshold) for lab, p in self.predict_proba(report).items()}

    def predict_many(
        self,
        reports: Sequence[str],
        progress: bool = True,
        problems: Sequence[str | None] | None = None,
    ) -> np.ndarray:
        """Probabilities ``[N, len(labels)]`` for many reports (unreadable ones give zero rows).

        ``problems``: the callers' ``report_problem`` of each report, when they have it already.
        """
        reports = list(reports)
        for i, r in enumerate(reports):
            if not isinstance(r, str):
                raise ValueError(f"report {i} must be a string, got {type(r).__name__}")
        if problems is None:  # once per report: is_english is the costly part
            problems = [report_problem(r) for r in reports]
        elif len(problems) != len(reports):
            raise ValueError(f"got {len(problems)} problems for {len(reports)} reports")
        problems = list(problems)
        probs = self.proba_from_features(self._features_many(reports, problems, progress))
        probs[[i for i, p in enumerate(problems) if p is not None]] = 0.0
        n_foreign = problems.count("not English")
        if n_foreign:
            warnings.warn(
                f"{n_foreign} of {len(reports)} reports do not look like English; "
                "their probabilities are zero",
                UserWarning,
                stacklevel=2,
            )
        return probs

    # -- calibration ---------------------------------------------------------------------------------
    @property
    def fitted(self) -> bool:
        """Whether a logistic calibration is in use (otherwise the rule probabilities are returned)."""
        return self._coef is not None

    def fit(
        self, reports: Sequence[str], y: np.ndarray, c: float = 1.0, progress: bool = False
    ) -> ReportLabeller:
        """Fit the per-label logistic calibration on labelled reports.

        Args:
            reports: report texts.
            y: ``[N, len(labels)]`` 0/1 labels.
            c: inverse L2 regularisation strength of each logistic regression.
        """
        y = np.asarray(y)
        if y.shape != (len(reports), len(self.labels)):
            raise ValueError(f"y must have shape {(len(reports), len(self.labels))}, got {y.shape}")
        feats = self.features_many(list(reports), progress)
        return self._fit_features(feats, y, c)

    def _fit_features(self, feats: np.ndarray, y: np.ndarray, c: float) -> ReportLabeller:
        flat = feats.reshape(-1, feats.shape[-1])
        self._mean = flat.mean(0)
        self._scale = flat.std(0) + 1e-6
        z = (feats - self._mean) / self._scale
        coef = np.zeros((len(self.labels), feats.shape[-1]))
        intercept = np.zeros(len(self.labels))
        for i in range(len(self.labels)):
            yi = y[:, i]
            if yi.min() == yi.max():  # one class only: keep the rule probability's log-odds scale
                coef[i, 7] = 1.0 / self._scale[7]
                intercept[i] = -5.0 if yi.max() == 0 else 5.0
                continue
            model = LogisticRegression(C=c, solver="liblinear").fit(z[:, i], yi)
            coef[i], intercept[i] = model.coef_[0], model.intercept_[0]
        self._coef, self._intercept = coef, intercept
        return self

    def to_dict(self) -> dict:
        """JSON-able state: labels, rule weights and the fitted calibration (if any)."""
        out = {"labels": list(self.labels), "weights": asdict(self.weights), "calibration": None}
        if self._coef is not None:
            out["calibration"] = {
                "features": list(FEATURE_NAMES),
                "coef": self._coef.tolist(),
                "intercept": self._intercept.tolist(),
                "mean": self._mean.tolist(),
                "scale": self._scale.tolist(),
            }
        return out

    @classmethod
    def from_dict(cls, state: dict, parser: ReportParser | None = None) -> ReportLabeller:
        """Rebuild a labeller saved with ``to_dict``."""
        unknown = set(state) - {"labels", "weights", "calibration"}
        if unknown:
            raise ValueError(f"unknown keys in labeller state: {sorted(unknown)}")
        lab = cls(state.get("labels", CTRATE_LABELS), parser, RuleWeights(**state.get("weights", {})))
        cal = state.get("calibration")
        if cal:
            if list(cal["features"]) != list(FEATURE_NAMES):
                raise ValueError(
                    f"calibration was fitted on features {cal['features']}, expected {FEATURE_NAMES}"
                )
            lab._coef, lab._intercept = np.asarray(cal["coef"]), np.asarray(cal["intercept"])
            lab._mean, lab._scale = np.asarray(cal["mean"]), np.asarray(cal["scale"])
        return lab

    def save(self, path: str | Path) -> None:
        """Write ``to_dict()`` as JSON, atomically."""
        atomic_write_json(path, self.to_dict(), indent=1)

    @classmethod
    def load(cls, path: str | Path) -> ReportLabeller:
        """Read a labeller written by ``save``."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: labeller file not found")
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from exc
        return cls.from_dict(state)


def cross_validate(
    reports: Sequence[str],
    y: np.ndarray,
    k: int = 5,
    seed: int = 0,
    c: float = 1.0,
    labels: Sequence[str] = CTRATE_LABELS,
    progress: bool = False,
    features: np.ndarray | None = None,
) -> np.ndarray:
    """Out-of-fold probabilities ``[N, L]`` of the fitted labeller: fit on k-1 folds, score the held-out one.

    This is the honest estimate of how the calibration does on unseen reports. ``features`` may pass
    precomputed ``ReportLabeller.features_many(reports)`` to skip parsing again.
    """
    y = np.asarray(y)
    feats = ReportLabeller(labels).features_many(list(reports), progress) if features is None else features
    if feats.shape[:2] != y.shape:
        raise ValueError(f"features {feats.shape[:2]} and labels {y.shape} disagree")
    out = np.zeros(y.shape, dtype=np.float64)
    for train, test in KFold(n_splits=k, shuffle=True, random_state=seed).split(feats):
        model = ReportLabeller(labels)._fit_features(feats[train], y[train], c)
        out[test] = model.proba_from_features(feats[test])
    return out


def evaluate_labeller(
    reports: Sequence[str] | None,
    y_true: np.ndarray,
    labeller: ReportLabeller | None = None,
    probs: np.ndarray | None = None,
    labels: Sequence[str] = CTRATE_LABELS,
    threshold: float = 0.5,
) -> dict[str, dict[str, float]]:
    """Per-label and macro AUROC and F1 (at ``threshold``) of a labeller against manual labels.

    Args:
        reports: report texts (ignored when ``probs`` is given).
        y_true: ``[N, L]`` 0/1 ground truth, columns in ``labels`` order.
        labeller: the labeller to score (a rule ``ReportLabeller`` if None).
        probs: precomputed ``[N, L]`` probabilities (e.g. from ``cross_validate`` or a baseline).

    Returns:
        ``{label: {"auroc", "f1", "n_pos"}, ..., "macro": {"auroc", "f1"}}``; AUROC is NaN for a label
        with one class only and is left out of the macro mean.
    """
    y_true = np.asarray(y_true).astype(int)
    if probs is None:
        if reports is None:
            raise ValueError("evaluate_labeller needs reports or probs")
        probs = (labeller or ReportLabeller(labels)).predict_many(list(reports), progress=False)
    probs = np.asarray(probs)
    if probs.shape != y_true.shape or y_true.shape[1] != len(labels):
        raise ValueError(
            f"probabilities {probs.shape} and labels {y_true.shape} must both be [N, {len(labels)}]"
        )
    table: dict[str, dict[str, float]] = {}
    for i, lab in enumerate(labels):
        yt, p = y_true[:, i], probs[:, i]
        auroc = float(roc_auc_score(yt, p)) if 0 < yt.sum() < len(yt) else float("nan")
        f1 = float(f1_score(yt, (p >= threshold).astype(int), zero_division=0))
        table[lab] = {"auroc": auroc, "f1": f1, "n_pos": int(yt.sum())}
    table["macro"] = {
        "auroc": float(np.nanmean([table[lab]["auroc"] for lab in labels])),
        "f1": float(np.mean([table[lab]["f1"] for lab in labels])),
    }
    return table


def format_table(tables: dict[str, dict[str, dict[str, float]]]) -> str:
    """Side-by-side text table of several ``evaluate_labeller`` results (name -> table)."""
    names = list(tables)
    labels = [k for k in next(iter(tables.values())) if k != "macro"] + ["macro"]
    widths = [max(len(n), 12) for n in names]
    head = f"{'label':34s} {'n_pos':>5s} " + " | ".join(f"{n:>{w}s}" for n, w in zip(names, widths))
    sub = f"{'':34s} {'':5s} " + " | ".join(f"{'AUROC    F1':>{w}s}" for w in widths)
    lines = [head, sub, "-" * len(head)]
    for lab in labels:
        first = tables[names[0]][lab]
        n_pos = str(first.get("n_pos", "")) if lab != "macro" else ""
        cells = " | ".join(
            f"{tables[n][lab]['auroc']:>{w - 7}.3f} {tables[n][lab]['f1']:6.3f}"
            for n, w in zip(names, widths)
        )
        lines.append(f"{lab:34s} {n_pos:>5s} {cells}")
    return "\n".join(lines)
