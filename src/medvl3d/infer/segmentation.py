"""Segmentation results in the input's own geometry: a label map on the input's grid, per-label volumes
in mL, and writing the mask so it overlays the input file voxel for voxel.

The network runs on the preprocessed grid (reoriented, resampled, windowed); its argmax is mapped back
onto the input's RAS grid by nearest-neighbour sampling through world coordinates
(`medvl3d.data.preprocess.resample_to_grid`), then written in the source file's orientation, affine and
header (`medvl3d.data.io.write_like`). Writes are atomic: a crash leaves no partial mask behind.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from medvl3d.atomic import atomic_write_text
from medvl3d.data.io import Volume, write_like

__all__ = ["Lesion", "SegmentationResult", "to_input_grid"]


def to_input_grid(probs: torch.Tensor, meta: dict) -> np.ndarray:
    """Argmax of class probabilities `[C, x, y, z]` on the preprocessed grid, mapped onto the input's RAS
    grid (`meta` from `preprocess_sample`: `affine`, `raw_affine`, `raw_shape`); voxels outside the
    preprocessed field of view are background."""
    from medvl3d.data.preprocess import resample_to_grid

    pred = probs.argmax(0).to(torch.uint8 if probs.shape[0] <= 256 else torch.int32)
    affine = np.asarray(meta["affine"], dtype=np.float64)
    raw_affine = np.asarray(meta["raw_affine"], dtype=np.float64)
    raw_shape = tuple(int(s) for s in meta["raw_shape"])
    if tuple(pred.shape) == raw_shape and np.allclose(affine, raw_affine, atol=1e-6):
        return pred.numpy()
    return resample_to_grid(pred[None], affine, raw_shape, raw_affine, mode="nearest")[0].numpy()


@dataclass
class Lesion:
    """One lesion found by a lesion-segmentation model: its id in the result's mask, what it is, its size.

    Organ models find none; a lesion model (Malenia: masks whose tokens carry attribute predictions)
    fills :attr:`SegmentationResult.lesions`, and the visual report lists them.

    Attributes:
        id: its value in :attr:`SegmentationResult.mask`.
        name: the lesion type (or the description it was segmented from).
        volume_ml: its volume in mL.
        attributes: predicted attribute -> value (``medvl3d.schema`` names: shape, density, margin, ...).
        score: the model's confidence in it, or None.
    """

    id: int
    name: str
    volume_ml: float
    attributes: dict[str, str] = field(default_factory=dict)
    score: float | None = None

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "name": self.name,
            "volume_ml": self.volume_ml,
            "attributes": dict(self.attributes),
            "score": self.score,
        }


@dataclass
class SegmentationResult:
    """A label map on the input volume's RAS grid and what it means.

    Attributes:
        mask: integer label map, same shape as `volume.array`.
        label_names: label id -> name (background 0 included when the checkpoint names it).
        volume: the input (its geometry is what `save` writes the mask in).
        lesions: lesions with attributes, from lesion models (empty for organ models).
    """

    mask: np.ndarray
    label_names: dict[int, str]
    volume: Volume
    lesions: list[Lesion] = field(default_factory=list)

    @property
    def voxel_ml(self) -> float:
        """Volume of one voxel of the input grid in mL."""
        return float(abs(np.linalg.det(self.volume.affine[:3, :3]))) / 1000.0

    def volumes_ml(self) -> dict[str, float]:
        """Volume of every named foreground label in mL (0.0 for labels not found)."""
        counts = np.bincount(self.mask.ravel(), minlength=max(self.label_names, default=0) + 1)
        return {
            name: float(counts[i]) * self.voxel_ml
            for i, name in sorted(self.label_names.items())
            if i != 0 and i < counts.size
        }

    def to_dict(self) -> dict:
        """JSON-ready summary: the input, its grid and per-label voxel counts and volumes."""
        counts = np.bincount(self.mask.ravel(), minlength=max(self.label_names, default=0) + 1)
        return {
            "volume": None if self.volume.path is None else str(self.volume.path),
            "shape": list(self.mask.shape),
            "spacing_mm": [round(float(s), 6) for s in self.volume.spacing],
            "voxel_ml": self.voxel_ml,
            "labels": {
                name: {"id": i, "voxels": int(counts[i]), "volume_ml": float(counts[i]) * self.voxel_ml}
                for i, name in sorted(self.label_names.items())
                if i != 0
            },
            "lesions": [lesion.to_dict() for lesion in self.lesions],
        }

    def to_json(self) -> str:
        """:meth:`to_dict` as strict JSON (the mask itself is written by :meth:`save`)."""
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    def save(self, path: str | os.PathLike, json_path: str | os.PathLike | None = None) -> Path:
        """Write the mask in the input file's own geometry (atomically), and optionally the volumes JSON.

        Raises:
            ValueError: an unsupported output type, or `path` is the input file itself.
        """
        path = Path(path)
        if self.volume.path is not None and path.resolve() == Path(self.volume.path).resolve():
            raise ValueError(f"{path}: refusing to write the mask over its input volume")
        write_like(self.mask, self.volume, path)
        if json_path is not None:
            atomic_write_text(json_path, json.dumps(self.to_dict(), indent=2) + "\n")
        return path
