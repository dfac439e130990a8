"""One Predictor for every model family: read and preprocess a volume once, then answer cheaply.

Like segment-anything's ``SamPredictor``: :meth:`Predictor.set_volume` does the expensive part (read,
preprocess with the checkpoint's own :class:`~medvl3d.data.preprocess.PreprocessSpec`, then encode it for
a vision-language model, or run the sliding window of a segmentation model) once;
:meth:`Predictor.diagnose` and :meth:`Predictor.segment` are cheap afterwards. A checkpoint of the wrong
family for a question is a one-line error naming it.

P(X) for an abnormality X is the two-way softmax over the similarity of the volume to a positive and a
negative prompt ensemble (BrgSA, CT-CLIP): each ensemble is the re-normalised mean of its templates'
text embeddings, similarities come from ``model.score`` (cosine; with a knowledge bank, also through the
bank) and are multiplied by the model's logit scale.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medvl3d.data.io import Volume
from medvl3d.device import resolve_device
from medvl3d.infer.segmentation import SegmentationResult, to_input_grid
from medvl3d.infer.sliding_window import SlidingWindowConfig, sliding_window_probabilities
from medvl3d.models.checkpoint import load_model
from medvl3d.models.registry import get_family
from medvl3d.text.prompts import PromptSet
from medvl3d.typed import build_dataclass

__all__ = ["Predictor", "parse_labels"]


def parse_labels(labels: str | Sequence[str]) -> list[str]:
    """Split a comma-separated label string (or clean a list); an empty result is a ValueError."""
    items = labels.split(",") if isinstance(labels, str) else list(labels)
    out = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"labels must be strings, got {item!r}")
        item = " ".join(item.split())
        if item and item not in out:
            out.append(item)
    if not out:
        raise ValueError("no abnormality labels given (expected e.g. 'pleural effusion, emphysema')")
    return out


def _prompt_templates(cfg: dict) -> PromptSet:
    """The checkpoint's prompt set (templates for positive/negative statements)."""
    return PromptSet.from_dict(cfg) if cfg else PromptSet()


class Predictor:
    """Read and preprocess one volume once, then diagnose (vision-language models) or segment it
    (segmentation models) cheaply.

    Args:
        model: a vision-language model (``encode_image``, ``encode_text``, ``score``, ``scale``) or a
            segmentation model (logits per voxel).
        info: the checkpoint's ``config.json`` (``model.family``, ``preprocess``, ``modality``, and
            ``prompts`` or ``label_names`` + ``inference``).
        prompts: templates to score with instead of the checkpoint's ``prompts``.
        device: where to run (default: CUDA when available, else CPU).
        window: sliding-window settings replacing the checkpoint's ``inference`` ones (segmentation).
    """

    def __init__(
        self,
        model: nn.Module,
        info: dict,
        device: str | torch.device | None = None,
        prompts: PromptSet | None = None,
        window: SlidingWindowConfig | dict | None = None,
    ):
        from medvl3d.data.preprocess import PreprocessSpec

        self.device = resolve_device("auto" if device is None else str(device))
        self.model = model.to(self.device).eval()
        self.info = info
        self.family = str((info.get("model") or {}).get("family") or "vl")
        self.outputs = get_family(self.family).outputs
        self.spec = PreprocessSpec.from_dict(info.get("preprocess") or {})
        self.prompts = prompts if prompts is not None else _prompt_templates(info.get("prompts") or {})
        self.modality = str(info.get("modality", "CT"))
        self.label_names = {int(k): str(v) for k, v in (info.get("label_names") or {}).items()}
        if isinstance(window, SlidingWindowConfig):
            self.window = window
        else:
            stored = dict(info.get("inference") or {})
            self.window = build_dataclass(SlidingWindowConfig, {**stored, **(window or {})}, "window")
        self._prompt_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._image_emb: torch.Tensor | None = None
        self._probs: torch.Tensor | None = None
        self._prep_meta: dict | None = None
        self.volume: Volume | None = None
        self.volume_path: str | None = None

    def require(self, outputs: str, what: str) -> None:
        """A ValueError naming the checkpoint unless its family gives `outputs` ("embeddings" or "logits")."""
        if self.outputs != outputs:
            where = self.info.get("path", "this checkpoint")
            kind = "vision-language" if outputs == "embeddings" else "segmentation"
            raise ValueError(
                f"{where}: {what} needs a {kind} checkpoint, but this one holds a {self.family!r} model "
                f"({(self.info.get('model') or {}).get('name')})"
            )

    def require_finite(self, values: torch.Tensor | np.ndarray, what: str) -> None:
        """A ValueError naming the checkpoint when a model output holds NaN or inf (NaN weights, or an
        overflow): a NaN probability must never pass for an answer."""
        finite = torch.isfinite(values).all() if torch.is_tensor(values) else np.isfinite(values).all()
        if not bool(finite):
            where = self.info.get("path", "this checkpoint")
            raise ValueError(
                f"{where}: the model gives NaN or infinite {what}; its weights or this input are broken"
            )

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        device: str | torch.device | None = None,
        prompts: PromptSet | str | os.PathLike | None = None,
        window: SlidingWindowConfig | dict | None = None,
    ) -> Predictor:
        """Load a checkpoint folder (or a run folder) saved by the training loop, of any family.

        ``prompts`` (a ``PromptSet`` or a YAML file of one) replaces the prompts stored in the checkpoint;
        ``window`` (fields of ``SlidingWindowConfig``) the sliding-window settings of a segmentation one.
        """
        resolve_device("auto" if device is None else str(device))  # before loading: a bad name fails fast
        if prompts is not None and not isinstance(prompts, PromptSet):
            prompts = PromptSet.from_yaml(prompts)  # before loading the model: a bad file fails fast
        model, info = load_model(path)
        return cls(model, info, device, prompts, window)

    # -- image side -------------------------------------------------------------------------------
    def check_modality(self, modality: str, source: str) -> None:
        """Warn when a volume's modality differs from the one the checkpoint was trained on."""
        if modality not in ("unknown", "", None) and modality.upper() != self.modality.upper():
            warnings.warn(
                f"{source}: volume modality {modality} differs from the checkpoint's training modality "
                f"{self.modality}; zero-shot scores may be meaningless",
                UserWarning,
                stacklevel=3,
            )

    def preprocess(self, sample: dict) -> torch.Tensor:
        """A dataset sample (raw ``image`` ``[1, X, Y, Z]`` + ``meta`` with ``affine``) -> model input."""
        from medvl3d.data.preprocess import preprocess_sample

        return preprocess_sample(sample, self.spec)["image"]

    @torch.no_grad()
    def encode_images(
        self, images: Sequence[torch.Tensor] | torch.Tensor, batch_size: int = 4
    ) -> torch.Tensor:
        """Normalised image embeddings ``[N, E]`` of preprocessed ``[1, X, Y, Z]`` volumes."""
        self.require("embeddings", "an image embedding")
        embs = []
        for i in range(0, len(images), batch_size):
            chunk = images[i : i + batch_size]
            x = (
                torch.stack([torch.as_tensor(t).float() for t in chunk])
                if not torch.is_tensor(chunk)
                else chunk
            )
            embs.append(self.model.encode_image(x.to(self.device), normalize=True).float())
        return torch.cat(embs) if embs else torch.empty(0)

    def set_volume(
        self,
        volume: Any,
        *,
        affine: np.ndarray | None = None,
        modality: str | None = None,
        progress: bool = False,
    ) -> Predictor:
        """Read (if a path) and preprocess one volume, then encode it (vision-language) or run the sliding
        window over it (segmentation); the result is cached for :meth:`diagnose` / :meth:`segment`.

        Args:
            volume: a path (NIfTI/NRRD/MHA file or DICOM folder), a ``medvl3d.data.io.Volume``, or a 3D
                array / ``[1, X, Y, Z]`` tensor in RAS order and raw intensities (HU for CT).
            affine: voxel -> RAS mm map for an array input (default: identity, 1 mm voxels).
            modality: modality of an array input (default: the checkpoint's).
            progress: show the sliding window's progress bar.

        Raises:
            FileNotFoundError / ValueError: from ``read_volume`` for a missing or non-3D file.
        """
        from medvl3d.data.io import read_volume, spacing_from_affine
        from medvl3d.data.preprocess import preprocess_sample

        if isinstance(volume, (str, os.PathLike)):
            volume = read_volume(Path(volume))
        if not isinstance(volume, Volume):
            array = volume.detach().cpu().numpy() if torch.is_tensor(volume) else np.asarray(volume)
            if array.ndim == 4 and array.shape[0] == 1:
                array = array[0]
            if array.ndim != 3:
                raise ValueError(
                    f"expected a 3D volume (or [1, X, Y, Z]), got an array of shape {array.shape}"
                )
            aff = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
            volume = Volume(array, aff, spacing_from_affine(aff), "RAS", modality or self.modality)
        source = str(volume.path) if volume.path is not None else "array"
        array = np.asarray(volume.array)
        if not np.isfinite(array).all():
            raise ValueError(f"{source}: the volume contains NaN or inf values")
        self.check_modality(volume.modality, source)
        sample = {
            "image": torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None],
            "meta": {"affine": volume.affine.tolist(), "modality": volume.modality, "path": source},
        }
        prepared = preprocess_sample(sample, self.spec)
        self._image_emb = self._probs = None
        if self.outputs == "embeddings":
            self._image_emb = self.encode_images([prepared["image"]])
            self.require_finite(self._image_emb, f"image embeddings for {source}")
        else:
            self._probs = sliding_window_probabilities(
                self.model, prepared["image"], self.window, self.device, progress=progress
            )
            self.require_finite(self._probs, f"class probabilities for {source}")
        self._prep_meta = prepared["meta"]
        self.volume, self.volume_path = volume, source
        return self

    @property
    def image_embedding(self) -> torch.Tensor:
        """The cached, normalised embedding ``[1, E]`` of the current volume."""
        self.require("embeddings", "an image embedding")
        if self._image_emb is None:
            raise ValueError("no volume set: call set_volume(...) first")
        return self._image_emb

    # -- segmentation -------------------------------------------------------------------------------
    @property
    def probabilities_map(self) -> torch.Tensor:
        """Class probabilities ``[C, x, y, z]`` of the current volume on the preprocessed grid."""
        self.require("logits", "segmentation")
        if self._probs is None:
            raise ValueError("no volume set: call set_volume(...) first")
        return self._probs

    def segment(self) -> SegmentationResult:
        """The label map of the current volume on its own (RAS) grid, with the checkpoint's label names.

        Raises:
            ValueError: a vision-language checkpoint, or no volume set.
        """
        probs = self.probabilities_map
        assert self._prep_meta is not None and self.volume is not None
        names = self.label_names or {i: f"class_{i}" for i in range(probs.shape[0])}
        return SegmentationResult(to_input_grid(probs, self._prep_meta), names, self.volume)

    # -- text side --------------------------------------------------------------------------------
    @torch.no_grad()
    def _ensemble(self, texts: list[str]) -> torch.Tensor:
        self.require("embeddings", "zero-shot diagnosis")
        emb = self.model.encode_text(texts, normalize=True).float()
        return F.normalize(emb.mean(dim=0), dim=-1)

    def prompt_embeddings(self, label: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised (positive, negative) prompt-ensemble embeddings of ``label``, cached."""
        if label not in self._prompt_cache:
            pos = self.prompts.positive_prompts(label)
            neg = self.prompts.negative_prompts(label)
            if not pos or not neg:
                raise ValueError(f"the prompt set gives no positive/negative prompts for {label!r}")
            self._prompt_cache[label] = (self._ensemble(pos), self._ensemble(neg))
        return self._prompt_cache[label]

    @torch.no_grad()
    def probabilities(self, image_emb: torch.Tensor, labels: Sequence[str]) -> np.ndarray:
        """P(label present) ``[N, L]`` for ``N`` image embeddings: softmax over (positive, negative)."""
        labels = parse_labels(labels)
        scale = self.model.scale() if hasattr(self.model, "scale") else self.model.logit_scale.exp()
        out = np.empty((image_emb.shape[0], len(labels)))
        img = image_emb.to(self.device)
        for j, label in enumerate(labels):
            pos, neg = self.prompt_embeddings(label)
            sims = self.model.score(img, torch.stack([pos, neg])).float()  # [N, 2]
            out[:, j] = torch.softmax(float(scale) * sims, dim=-1)[:, 0].cpu().numpy()
        self.require_finite(out, "probabilities")
        return out

    def diagnose(self, labels: str | Sequence[str]) -> dict[str, float]:
        """Probability of each abnormality in the current volume, e.g. ``{"pleural effusion": 0.81}``.

        Raises:
            ValueError: an empty label list, or no volume set.
        """
        self.require("embeddings", "zero-shot diagnosis")
        labels = parse_labels(labels)
        probs = self.probabilities(self.image_embedding, labels)[0]
        return {label: float(p) for label, p in zip(labels, probs)}
