"""medvl3d.eval: metrics and zero-shot evaluation."""

from __future__ import annotations

from medvl3d.eval.diagnosis import DiagnosisReport, evaluate_diagnosis, modality_gap

__all__ = ["DiagnosisReport", "evaluate_diagnosis", "modality_gap"]
