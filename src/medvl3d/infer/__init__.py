"""medvl3d.infer: encode a volume once, answer many text prompts."""

from __future__ import annotations

from medvl3d.infer.predictor import Predictor, parse_labels

__all__ = ["Predictor", "parse_labels"]
