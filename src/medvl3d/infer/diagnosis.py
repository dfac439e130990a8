"""The answer of :meth:`medvl3d.infer.Predictor.diagnose`: probabilities a person can act on, and why.

A :class:`Diagnosis` reads like the plain ``{label: probability}`` dict it replaces (``result["emphysema"]``,
``list(result)``), and carries what makes the numbers trustworthy or not: the raw zero-shot score beside
the calibrated one, how each label was calibrated, the highest probability its calibration can give, and
the out-of-distribution verdict on the volume.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from medvl3d.infer.ood import OODResult

__all__ = ["Diagnosis"]

#: How a label's probability was obtained.
CALIBRATION_KINDS = {
    "label": "calibrated for this label",
    "pooled": "calibrated on all labels together (this label had no calibration data)",
    "none": "uncalibrated zero-shot score",
}


@dataclass(eq=False)  # Mapping's __eq__: a Diagnosis equals a dict of the same probabilities
class Diagnosis(Mapping):
    """Probability of each abnormality in one volume.

    Attributes:
        probabilities: label -> calibrated probability where the checkpoint carries a calibration, else
            the raw score (what ``result[label]`` returns).
        raw: label -> the uncalibrated zero-shot score (two-way softmax of the prompt logits).
        calibration: label -> "label", "pooled" or "none" (see :data:`CALIBRATION_KINDS`).
        max_supported: label -> the highest probability its calibration can give (None if uncalibrated).
        ood: the out-of-distribution verdict, or None when the checkpoint holds no reference to judge by.
        volume: the input it was computed for.
        checkpoint: the checkpoint folder.
        notes: one line each, for the reader (uncalibrated, other prompts than calibrated with, ...).
    """

    probabilities: dict[str, float]
    raw: dict[str, float]
    calibration: dict[str, str]
    max_supported: dict[str, float | None]
    ood: OODResult | None = None
    volume: str | None = None
    checkpoint: str | None = None
    notes: list[str] = field(default_factory=list)

    def __getitem__(self, label: str) -> float:
        return self.probabilities[label]

    def __iter__(self) -> Iterator[str]:
        return iter(self.probabilities)

    def __len__(self) -> int:
        return len(self.probabilities)

    @property
    def out_of_distribution(self) -> bool | None:
        """True/False when the checkpoint could judge the volume, None when it could not."""
        return None if self.ood is None else self.ood.out_of_distribution

    def to_dict(self) -> dict:
        return {
            "volume": self.volume,
            "checkpoint": self.checkpoint,
            "probabilities": dict(self.probabilities),
            "raw_probabilities": dict(self.raw),
            "calibration": dict(self.calibration),
            "max_supported": dict(self.max_supported),
            "out_of_distribution": None if self.ood is None else self.ood.to_dict(),
            "notes": list(self.notes),
        }

    def to_json(self) -> str:
        """Strict JSON (no NaN: the Predictor refuses non-finite outputs before this)."""
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    def to_table(self) -> str:
        """A plain-text table: label, probability and, for calibrated checkpoints, the raw score."""
        width = max(len("label"), *(len(k) for k in self.probabilities))
        calibrated = any(v != "none" for v in self.calibration.values())
        head = f"{'label':<{width}}  probability" + ("  raw    calibration" if calibrated else "")
        lines = [head]
        for name, p in self.probabilities.items():
            row = f"{name:<{width}}  {p:.3f}"
            if calibrated:
                row += f"        {self.raw[name]:.3f}  {self.calibration[name]}"
            lines.append(row)
        return "\n".join(lines)
