"""Zero-shot diagnosis evaluation: per-label and macro AUROC/F1/accuracy/precision with bootstrap 95%
intervals, grouped into seen / underrepresented / unseen abnormalities, plus the modality gap.

The modality gap (Liang et al., "Mind the Gap", 2022; BrgSA) is the Euclidean distance between the
centroids of the L2-normalised image embeddings and the L2-normalised text embeddings of the same eval
cases' reports. It is measured on the raw embeddings ("before the bank") and, for models with a BrgSA
knowledge bank, on their bank reconstructions ("after the bank").

Calibration (:mod:`medvl3d.eval.calibration`) is measured on the raw zero-shot probabilities, on the
checkpoint's stored calibration when it has one, and, with ``calibrate=METHOD``, on a fresh cross-fitted
fit, which the report then carries (``report.fitted``, for
:func:`~medvl3d.eval.calibration.store_calibration`).
AUROC, F1, accuracy and precision are always those of the raw scores.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from medvl3d.atomic import atomic_write_text
from medvl3d.eval.calibration import (
    CalibrationSummary,
    cross_fitted_probabilities,
    fit_calibration,
    summarise_calibration,
)
from medvl3d.eval.metrics import (
    METRICS,
    LabelMetrics,
    binary_metrics,
    bootstrap_label_metrics,
    nanmean_or_none,
    percentile_interval,
)
from medvl3d.infer.calibration import Calibration, sigmoid
from medvl3d.infer.ood import InputProfile, input_profile
from medvl3d.losses import modality_gap

__all__ = [
    "DiagnosisReport",
    "ScoredCases",
    "evaluate_diagnosis",
    "modality_gap",
    "load_label_groups",
    "score_cases",
    "GROUPS",
]

GROUPS: tuple[str, ...] = ("seen", "underrepresented", "unseen")


def load_label_groups(data: str | os.PathLike) -> dict[str, list[str]]:
    """``{"seen": [...], "underrepresented": [...], "unseen": [...]}`` from ``splits.json`` of a data root.

    Returns an empty dict when the root has no ``splits.json`` (real datasets have no such split).
    """
    root = Path(data)
    path = root / "splits.json" if root.is_dir() else root.parent / "splits.json"
    if not path.is_file():
        return {}
    try:
        groups = json.loads(path.read_text(encoding="utf-8")).get("abnormalities", {})
    except (json.JSONDecodeError, AttributeError) as exc:
        raise ValueError(f"{path}: not a valid splits.json ({exc})") from exc
    return {g: list(groups.get(g, [])) for g in GROUPS if g in groups}


def _fmt(value: float | None, ci: Sequence[float] | None = None) -> str:
    if value is None:
        return "undefined"
    text = f"{value:.3f}"
    if ci is not None:
        text += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
    return text


@dataclass
class DiagnosisReport:
    """Result of :func:`evaluate_diagnosis`; print with :meth:`to_markdown`, save with :meth:`to_json`."""

    labels: list[str]
    per_label: dict[str, LabelMetrics]
    macro: dict[str, Any]
    groups: dict[str, dict[str, Any]]
    modality_gap: dict[str, float | None]
    n_cases: int
    bootstrap: int
    meta: dict[str, Any] = field(default_factory=dict)
    probabilities: list[list[float]] | None = None
    truth: list[list[int]] | None = None
    calibration: CalibrationSummary | None = None
    fitted: Calibration | None = None
    ood: dict[str, Any] | None = None

    def group_of(self, label: str) -> str:
        for g, info in self.groups.items():
            if label in info["labels"]:
                return g
        return ""

    def to_dict(self) -> dict:
        return {
            "n_cases": self.n_cases,
            "bootstrap": self.bootstrap,
            "threshold_rule": "Youden's J on the ROC curve (CT-CLIP protocol)",
            "labels": self.labels,
            "per_label": {k: v.to_dict() for k, v in self.per_label.items()},
            "macro": self.macro,
            "groups": self.groups,
            "modality_gap": self.modality_gap,
            "calibration": None if self.calibration is None else self.calibration.to_dict(),
            "out_of_distribution": self.ood,
            "meta": self.meta,
        }

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """The report as JSON; also written atomically to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2, default=_json_default)
        if path is not None:
            atomic_write_text(path, text)
        return text

    def to_markdown(self) -> str:
        """Per-label table, macro and group rows, and the modality gap, as GitHub markdown."""
        lines = [
            f"Zero-shot diagnosis on {self.n_cases} cases (threshold: Youden's J; 95% CI from "
            f"{self.bootstrap} bootstrap resamples)",
            "",
            "| label | group | positives | AUROC [95% CI] | F1 | accuracy | precision |",
            "|---|---|---|---|---|---|---|",
        ]
        for name in self.labels:
            m = self.per_label[name]
            lines.append(
                f"| {name} | {self.group_of(name)} | {m.n_pos}/{m.n} | {_fmt(m.auroc, m.ci.get('auroc'))} | "
                f"{_fmt(m.f1)} | {_fmt(m.accuracy)} | {_fmt(m.precision)} |"
            )
        rows = [("**macro**", self.macro)] + [(f"**{g}**", info) for g, info in self.groups.items()]
        for title, info in rows:
            lines.append(
                f"| {title} | | {info['n_defined']} labels | "
                f"{_fmt(info['auroc'], info['ci'].get('auroc'))} | "
                f"{_fmt(info['f1'])} | {_fmt(info['accuracy'])} | {_fmt(info['precision'])} |"
            )
        undefined = [n for n in self.labels if not self.per_label[n].defined]
        if undefined:
            lines += ["", f"Undefined (one class only in this set, not averaged): {', '.join(undefined)}"]
        gap = self.modality_gap
        after = "n/a (no knowledge bank)" if gap.get("after_bank") is None else f"{gap['after_bank']:.3f}"
        lines += [
            "",
            f"Modality gap (centroid distance): before bank {_fmt(gap.get('before_bank'))}, after {after}",
        ]
        if self.calibration is not None:
            lines += ["", self.calibration.to_markdown()]
        if self.ood is not None:
            kinds = ", ".join(f"{k} {n}" for k, n in self.ood["by_check"].items() if n) or "none"
            lines += [
                "",
                f"Out of distribution by the checkpoint's stored reference: {self.ood['flagged']} of "
                f"{self.ood['checked']} cases (failed checks: {kinds})",
            ]
        return "\n".join(lines)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _summary(
    per_label: dict[str, LabelMetrics], names: Sequence[str], boot: dict[str, np.ndarray], cols: list[int]
) -> dict[str, Any]:
    """Macro means over the defined labels among ``names`` with bootstrap intervals of the macro mean."""
    defined = [n for n in names if per_label[n].defined]
    out: dict[str, Any] = {"labels": list(names), "n_defined": len(defined), "ci": {}}
    for m in METRICS:
        out[m] = nanmean_or_none([getattr(per_label[n], m) for n in defined])
        if defined and boot:
            with np.errstate(all="ignore"), _quiet():
                per_resample = np.nanmean(boot[m][:, cols], axis=1)
            ci = percentile_interval(per_resample)
            out["ci"][m] = list(ci) if ci is not None else None
    return out


class _quiet:
    """Silence numpy's 'Mean of empty slice' warning (all-NaN resamples are dropped on purpose)."""

    def __enter__(self) -> None:
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc: Any) -> None:
        self._ctx.__exit__(*exc)


def _match_name(name: str, available: Sequence[str]) -> str | None:
    low = name.strip().lower()
    for a in available:
        if a.lower() == low:
            return a
    return None


def _model_input(predictor: Any, sample: dict, index: int) -> torch.Tensor:
    """The image of an already preprocessed case, checked against the checkpoint's input size."""
    image = torch.as_tensor(sample["image"])
    size = predictor.spec.spatial_size
    if image.ndim != 4 or (size is not None and tuple(image.shape[1:]) != tuple(size)):
        case = (sample.get("meta") or {}).get("case_id", index)
        raise ValueError(
            f"case {case}: a preprocessed image must be [C, X, Y, Z] with X, Y, Z = {size} (the "
            f"checkpoint's spatial_size), got {tuple(image.shape)}; was it preprocessed for another model?"
        )
    return image


@dataclass
class ScoredCases:
    """Every case of an evaluation set, encoded once and scored.

    Attributes:
        labels: the evaluated label names.
        truth: 0/1 ``[N, L]``.
        logits: prompt logits ``[N, L]`` (raw probabilities are their sigmoid).
        image_emb: normalised image embeddings ``[N, E]``.
        reports: each case's report ("" when it has none).
        profiles: each case's input profile (empty for preprocessed cases, whose raw grid is gone).
    """

    labels: list[str]
    truth: np.ndarray
    logits: np.ndarray
    image_emb: torch.Tensor
    reports: list[str]
    profiles: list[InputProfile]


def _raw_profile(sample: dict) -> InputProfile:
    from medvl3d.data.io import Volume, spacing_from_affine

    meta = sample.get("meta") or {}
    affine = np.asarray(meta["affine"], dtype=np.float64)
    array = torch.as_tensor(sample["image"]).numpy()[0]
    return input_profile(
        Volume(array, affine, spacing_from_affine(affine), "RAS", meta.get("modality", "CT"))
    )


def score_dataset(
    predictor: Any,
    dataset: Dataset,
    labels: Sequence[str] | None,
    batch_size: int = 4,
    progress: bool = True,
    preprocessed: bool = False,
) -> tuple[list[str], np.ndarray, np.ndarray, torch.Tensor, list[str]]:
    """Encode every case once and score ``labels``; ``preprocessed`` cases are fed to the model as they are.

    Returns:
        ``(labels, truth [N, L], raw probs [N, L], image_emb [N, E], reports)`` (see :func:`score_cases`).
    """
    s = score_cases(predictor, dataset, labels, batch_size, progress, preprocessed)
    return s.labels, s.truth, sigmoid(s.logits), s.image_emb, s.reports


def score_cases(
    predictor: Any,
    dataset: Dataset,
    labels: Sequence[str] | None,
    batch_size: int = 4,
    progress: bool = True,
    preprocessed: bool = False,
    profiles: bool = False,
) -> ScoredCases:
    """Encode every case once and compute the prompt logits of ``labels`` (and, with ``profiles``, each raw
    case's input profile for an out-of-distribution reference).

    Raises:
        ValueError: an empty dataset, a requested label no case is annotated with, or a case lacking one.
    """
    from tqdm.auto import tqdm

    n = len(dataset)
    if n == 0:
        raise ValueError("the evaluation dataset is empty")
    images, truth_dicts, reports, embs, found = [], [], [], [], []
    for i in tqdm(range(n), desc="encode", disable=not progress):
        sample = dataset[i]
        meta = sample.get("meta", {}) or {}
        predictor.check_modality(
            str(meta.get("modality", "unknown")), str(meta.get("path", meta.get("case_id")))
        )
        if profiles and not preprocessed:
            found.append(_raw_profile(sample))
        images.append(_model_input(predictor, sample, i) if preprocessed else predictor.preprocess(sample))
        truth_dicts.append(dict(sample.get("labels") or {}))
        reports.append(sample.get("report") or "")
        if len(images) == batch_size or i == n - 1:
            embs.append(predictor.encode_images(images, batch_size))
            images = []
    image_emb = torch.cat(embs)
    available = list(dict.fromkeys(k for d in truth_dicts for k in d))
    if labels is None:
        names = available
    else:
        names = []
        for name in labels:
            match = _match_name(name, available)
            if match is None:
                raise ValueError(f"label {name!r} is not annotated in this dataset; available: {available}")
            names.append(match)
    if not names:
        raise ValueError("the evaluation cases carry no abnormality labels")
    truth = np.zeros((n, len(names)), dtype=np.int64)
    for i, d in enumerate(truth_dicts):
        for j, name in enumerate(names):
            if name not in d:
                raise ValueError(f"case {i} has no annotation for label {name!r}")
            truth[i, j] = int(d[name])
    return ScoredCases(names, truth, predictor.logits(image_emb, names), image_emb, reports, found)


@torch.no_grad()
def _gaps(model: Any, image_emb: torch.Tensor, reports: list[str]) -> dict[str, float | None]:
    texts = [r for r in reports if r.strip()]
    if not texts:
        return {"before_bank": None, "after_bank": None}
    idx = [i for i, r in enumerate(reports) if r.strip()]
    img = image_emb[idx]
    txt = torch.cat(
        [model.encode_text(texts[i : i + 32], normalize=True).float() for i in range(0, len(texts), 32)]
    )
    txt = txt.to(img.device)
    before = modality_gap(img, txt)
    after = None
    if getattr(model, "bank", None) is not None:
        after = modality_gap(model.reconstruct(img), model.reconstruct(txt))
    return {"before_bank": before, "after_bank": after}


def evaluate_diagnosis(
    checkpoint: str | os.PathLike | Any,
    data: str | os.PathLike | Dataset | Sequence[dict],
    split: str = "valid",
    labels: Sequence[str] | None = None,
    bootstrap: int = 1000,
    *,
    groups: dict[str, list[str]] | None = None,
    device: str | None = None,
    batch_size: int = 4,
    seed: int = 0,
    progress: bool = True,
    prompts: Any = None,
    preprocessed: bool = False,
    calibrate: str | None = None,
    folds: int = 5,
) -> DiagnosisReport:
    """Zero-shot diagnosis of a checkpoint on one split of a labelled dataset.

    Args:
        checkpoint: checkpoint/run folder, or a ready :class:`~medvl3d.infer.Predictor`.
        data: dataset root (any layout ``open_dataset`` reads), or a Dataset / list of raw samples.
        split: which split of ``data``.
        labels: abnormality names to evaluate (default: every label the cases carry).
        bootstrap: number of case resamples for the 95% intervals (0 = none).
        groups: label groups (default: ``splits.json`` of ``data`` when present).
        device: where to run the model.
        batch_size: volumes encoded per forward pass.
        seed: seed of the bootstrap resampling.
        progress: show a progress bar.
        prompts: a ``PromptSet`` or prompt YAML to score with instead of the checkpoint's prompts.
        preprocessed: the cases of ``data`` are preprocessed for the model already (e.g. a training cache).
        calibrate: fit calibrators of this method ("temperature", "platt", "isotonic") and an
            out-of-distribution reference on these cases: ``report.fitted``, to store with
            :func:`~medvl3d.eval.calibration.store_calibration`; the "after" numbers are cross-fitted.
        folds: folds of the cross-fitting.

    Raises:
        ValueError: besides bad data, ``calibrate`` on the checkpoint's own training split.
    """
    from medvl3d.infer.predictor import Predictor

    if isinstance(checkpoint, Predictor):
        predictor = checkpoint
        if prompts is not None:
            raise ValueError("pass prompts to the Predictor itself, not beside a ready Predictor")
    else:
        predictor = Predictor.from_checkpoint(checkpoint, device, prompts)
    if isinstance(data, (str, os.PathLike)):
        from medvl3d.data.datasets import open_split

        dataset, root = open_split(data, split), data
    else:  # a Dataset or any sequence of raw samples
        dataset, root = data, None
    if calibrate is not None and root is not None:
        _check_held_out(predictor.info, root, split)
    if groups is None:
        groups = load_label_groups(root) if root is not None else {}
    profiles = calibrate is not None or predictor.reference is not None
    scored = score_cases(predictor, dataset, labels, batch_size, progress, preprocessed, profiles)
    names, truth, image_emb, reports = scored.labels, scored.truth, scored.image_emb, scored.reports
    probs = sigmoid(scored.logits)

    per_label = {name: binary_metrics(truth[:, j], probs[:, j]) for j, name in enumerate(names)}
    boot: dict[str, np.ndarray] = {}
    if bootstrap > 0:
        boot = bootstrap_label_metrics(truth, probs, [per_label[n].threshold for n in names], bootstrap, seed)
        for j, name in enumerate(names):
            if per_label[name].defined:
                per_label[name].ci = {m: percentile_interval(boot[m][:, j]) for m in METRICS}
    macro = _summary(per_label, names, boot, list(range(len(names))))
    group_out = {}
    for g, members in groups.items():
        in_eval = [n for n in (_match_name(m, names) for m in members) if n is not None]
        group_out[g] = _summary(per_label, in_eval, boot, [names.index(n) for n in in_eval])
    gap = _gaps(predictor.model, image_emb, reports)
    meta = {
        "checkpoint": predictor.info.get("path"),
        "data": None if root is None else str(root),
        "split": split,
        "model": predictor.info.get("model", {}).get("name"),
        "task": predictor.info.get("task"),
        "prompts": predictor.prompts.to_dict(),
    }
    return DiagnosisReport(
        labels=names,
        per_label=per_label,
        macro=macro,
        groups=group_out,
        modality_gap=gap,
        n_cases=len(truth),
        bootstrap=bootstrap,
        meta=meta,
        probabilities=probs.tolist(),
        truth=truth.tolist(),
        **_calibration(predictor, scored, calibrate, folds, seed, meta),
        ood=_ood_counts(predictor, scored),
    )


def _ood_counts(predictor: Any, scored: ScoredCases) -> dict[str, Any] | None:
    """How many cases the checkpoint's stored reference flags, and by which check (None without one)."""
    if predictor.reference is None:
        return None
    emb = scored.image_emb.cpu().numpy()
    profiles = scored.profiles or [None] * len(emb)
    verdicts = [predictor.reference.check(p, e) for p, e in zip(profiles, emb)]
    by_check = {"field of view": 0, "voxel spacing": 0, "intensity": 0, "modality": 0, "embedding": 0}
    for v in verdicts:
        for reason in v.reasons:
            key = next(
                (k for k in by_check if reason.startswith(("image " if k == "embedding" else k))), "intensity"
            )
            by_check[key] += 1
    return {
        "checked": len(verdicts),
        "flagged": sum(v.out_of_distribution for v in verdicts),
        "by_check": by_check,
    }


def _check_held_out(info: dict, root: str | os.PathLike, split: str) -> None:
    """A ValueError when ``root``/``split`` is the data the checkpoint was trained on: calibrating on the
    training cases would fit the model's overconfidence on them, not its behaviour on new cases."""
    data = ((info.get("train") or {}).get("data")) or {}
    trained_root, trained_split = data.get("root"), data.get("train_split", "train")
    if trained_root and split == trained_split and Path(trained_root).resolve() == Path(root).resolve():
        raise ValueError(
            f"{root}: split {split!r} is the data {info.get('path', 'the checkpoint')} was trained on; "
            "calibrate on held-out cases (e.g. --split valid)"
        )


def _resolved(meta: dict) -> str | None:
    return None if meta["data"] is None else str(Path(meta["data"]).resolve())


def _calibration(
    predictor: Any, scored: ScoredCases, method: str | None, folds: int, seed: int, meta: dict
) -> dict[str, Any]:
    """The report's ``calibration`` summary and, when ``method`` is given, the ``fitted`` calibration."""
    kinds = {"raw": sigmoid(scored.logits)}
    stored_in_sample = False
    if predictor.calibration is not None:
        kinds["stored"], _ = predictor.calibrate(scored.logits, scored.labels)
        fitted_on = predictor.calibration.fitted_on
        stored_in_sample = (fitted_on.get("data"), fitted_on.get("split")) == (_resolved(meta), meta["split"])
    fitted = None
    if method is not None:
        kinds["cross_fitted"] = cross_fitted_probabilities(scored.logits, scored.truth, method, folds, seed)
        fitted = fit_calibration(
            scored.logits,
            scored.truth,
            scored.labels,
            method,
            prompts=meta["prompts"],
            fitted_on={"data": _resolved(meta), "split": meta["split"]},
            profiles=scored.profiles,
            embeddings=scored.image_emb.cpu().numpy(),
        )
    summary = summarise_calibration(
        scored.truth, kinds, scored.labels, method=method, stored_in_sample=stored_in_sample
    )
    return {"calibration": summary, "fitted": fitted}
