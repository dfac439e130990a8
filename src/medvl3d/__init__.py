"""medvl3d: 3D medical vision-language learning."""

from __future__ import annotations

__version__ = "0.1.0"


def load(path):
    """Rebuild a trained model exactly as it was saved: `(model, info)` from a checkpoint folder."""
    from medvl3d.models.checkpoint import load_model

    return load_model(path)
