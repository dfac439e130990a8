"""One Predictor for every model family: read and preprocess a volume once, then answer cheaply.

Like segment-anything's ``SamPredictor``: :meth:`Predictor.set_volume` does the expensive part (read,
preprocess with the checkpoint's own :class:`~medvl3d.data.preprocess.PreprocessSpec`, then encode it for
a vision-language model, or run the sliding window of a segmentation model) once;
:meth:`Predictor.diagnose` and :meth:`Predictor.segment` are cheap afterwards. A checkpoint of the wrong
family for a question is a one-line error naming it.

P(X) for an abnormality X is the two-way softmax over the similarity of the volume to a positive and a
negative prompt ensemble (BrgSA, CT-CLIP): each ensemble is the re-normalised mean of its templates'
text embeddings, similarities come from ``model.score`` (cosine; with a knowledge bank, also through the
bank) and are multiplied by the model's logit scale. A checkpoint calibrated by ``medvl3d evaluate
diagnosis --calibrate`` maps that score through each label's calibrator
(:mod:`medvl3d.infer.calibration`) and judges whether the volume is out of the training distribution
(:mod:`medvl3d.infer.ood`); older checkpoints score exactly as before.

The examples below run as tests (``tests/infer/test_docstrings.py``) with ``vl_checkpoint`` and
``seg_checkpoint`` tiny checkpoints and ``ct_path`` a real CT:

>>> import medvl3d
>>> predictor = medvl3d.load(vl_checkpoint).set_volume(ct_path)      # read, preprocess, encode: once
>>> result = predictor.diagnose(["pleural effusion", "emphysema"])   # cheap: text prompts only
>>> sorted(result)
['emphysema', 'pleural effusion']
>>> 0.0 < result["emphysema"] < 1.0
True
>>> sorted(result.to_dict())[:3]
['calibration', 'checkpoint', 'max_supported']
>>> organs = medvl3d.load(seg_checkpoint).set_volume(ct_path).segment()
>>> organs.mask.shape == predictor.volume.shape                        # the input's own grid
True
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
from medvl3d.infer.calibration import Calibration, sigmoid
from medvl3d.infer.diagnosis import Diagnosis
from medvl3d.infer.ood import DistributionReference, InputProfile, OODResult, input_profile
from medvl3d.infer.segmentation import SegmentationResult, to_input_grid
from medvl3d.infer.sliding_window import SlidingWindowConfig, sliding_window_probabilities
from medvl3d.models.checkpoint import load_model
from medvl3d.models.registry import get_family
from medvl3d.text.prompts import PromptSet
from medvl3d.typed import build_dataclass

__all__ = ["OutOfDistributionWarning", "Predictor", "parse_labels"]


class OutOfDistributionWarning(UserWarning):
    """A volume unlike the data the checkpoint was calibrated on: its answers may be confidently wrong."""


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


def _name_key(name: str) -> str:
    """A label name as `--targets` matches it: "Pulmonary artery" == "pulmonary_artery"."""
    return " ".join(name.replace("_", " ").lower().split())


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
        self._lesion_segmenter: Any = None
        self._prep_meta: dict | None = None
        self.volume: Volume | None = None
        self.volume_path: str | None = None
        self.profile: InputProfile | None = None
        self.ood: OODResult | None = None
        self.calibration, self.reference, self.calibration_note = self._read_calibration(info)

    def _read_calibration(self, info: dict) -> tuple[Calibration | None, DistributionReference | None, str]:
        """The stored calibration and reference; a calibration fitted with other prompts is not used."""
        entry = info.get("calibration")
        if not entry:
            if self.outputs != "embeddings":
                return None, None, ""
            return None, None, "uncalibrated: fit with `medvl3d evaluate diagnosis --calibrate`"
        where = f"{info.get('path', 'checkpoint')}: calibration"
        calibration = Calibration.from_dict(entry, where)
        reference = None
        if calibration.reference:
            reference = DistributionReference.from_dict(calibration.reference, f"{where}.reference")
        if calibration.prompts and calibration.prompts != self.prompts.to_dict():
            return None, reference, "uncalibrated: the checkpoint was calibrated with other prompts"
        return calibration, reference, ""

    def require(self, outputs: str, what: str) -> None:
        """A ValueError naming the checkpoint unless its family gives `outputs` ("embeddings", "logits" or
        "lesions": masks with attributes, from a lesion model such as Malenia)."""
        if self.outputs != outputs:
            where = self.info.get("path", "this checkpoint")
            kind = {
                "embeddings": "vision-language",
                "logits": "segmentation",
                "lesions": "lesion-segmentation ('malenia' family)",
            }[outputs]
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
        spacing: Sequence[float] | None = None,
        modality: str | None = None,
        progress: bool = False,
    ) -> Predictor:
        """Read (if a path) and preprocess one volume, then encode it (vision-language) or run the sliding
        window over it (segmentation); the result is cached for :meth:`diagnose` / :meth:`segment`.

        Args:
            volume: a path (NIfTI/NRRD/MHA file or DICOM folder), a ``medvl3d.data.io.Volume``, or a 3D
                array / ``[1, X, Y, Z]`` tensor in RAS order and raw intensities (HU for CT).
            affine: voxel -> RAS mm map for an array input (default: identity, 1 mm voxels).
            spacing: voxel size in mm of an array input, instead of ``affine`` (axes along R, A, S).
            modality: modality of an array input (default: the checkpoint's).
            progress: show the sliding window's progress bar.

        Raises:
            FileNotFoundError / ValueError: from ``read_volume`` for a missing or non-3D file; ``affine`` or
                ``spacing`` given with a file, or both at once.

        Warns:
            OutOfDistributionWarning: the checkpoint holds a reference of its training data and the volume
                is unlike it (also in :attr:`ood` and in every :class:`Diagnosis`).
        """
        from medvl3d.data.io import read_volume, spacing_from_affine
        from medvl3d.data.preprocess import preprocess_sample

        if affine is not None and spacing is not None:
            raise ValueError("set_volume: give the geometry of an array as affine= or spacing=, not both")
        if isinstance(volume, (str, os.PathLike, Volume)) and (affine is not None or spacing is not None):
            raise ValueError(
                f"set_volume: {volume}: a file or Volume carries its own geometry; affine= and "
                "spacing= are for arrays"
            )
        if spacing is not None:
            spacing = [float(s) for s in spacing]
            if len(spacing) != 3 or min(spacing) <= 0:
                raise ValueError(f"set_volume: spacing must be 3 positive mm values, got {spacing}")
            affine = np.diag([*spacing, 1.0])
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
        elif self.outputs == "logits":
            self._probs = sliding_window_probabilities(
                self.model, prepared["image"], self.window, self.device, progress=progress
            )
            self.require_finite(self._probs, f"class probabilities for {source}")
        # "lesions": a lesion model's sliding window depends on the query, so segment() runs it
        self._prep_meta = prepared["meta"]
        self.volume, self.volume_path = volume, source
        self.profile = input_profile(volume)
        self.ood = self._judge(source)
        return self

    def _judge(self, source: str) -> OODResult | None:
        """The out-of-distribution verdict on the current volume (None without a stored reference)."""
        if self.reference is None:
            return None
        emb = None if self._image_emb is None else self._image_emb[0].cpu().numpy()
        verdict = self.reference.check(self.profile, emb)
        if verdict.out_of_distribution:
            warnings.warn(OutOfDistributionWarning(verdict.message(source)), stacklevel=3)
        return verdict

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

    def segment(
        self,
        *,
        targets: str | Sequence[str] | None = None,
        describe: str | None = None,
        attributes: dict[str, str] | None = None,
        largest_component: str | Sequence[str] | None = None,
    ) -> SegmentationResult:
        """The label map of the current volume on its own (RAS) grid, with the checkpoint's label names.

        Args:
            targets: keep only these of the checkpoint's labels (names; case and underscores do not
                matter: "pulmonary artery" is the label "pulmonary_artery"); others become background.
            describe: a free-text lesion description (zero-shot lesion segmentation).
            attributes: lesion attribute values, e.g. ``{"organ": "liver", "density": "hypodense"}``.
            largest_component: labels (names, or ``"all"``) of which only the largest connected
                component is kept, the rest becoming background (nnU-Net's post-processing; MONAI's
                ``KeepLargestConnectedComponent``). Use it for single-piece organs (liver, spleen, each
                kidney), not for ribs, vertebrae or bowel, which are several pieces in a scan.

        Organ models (per-voxel class logits) answer ``targets``; lesion models (the ``malenia`` family)
        answer ``describe`` or ``attributes`` (with neither: every lesion they find), and their result's
        :attr:`~medvl3d.infer.segmentation.SegmentationResult.lesions` carry attributes and volumes.

        Raises:
            ValueError: a vision-language checkpoint, no volume set, an unknown target, ``describe`` /
                ``attributes`` with a checkpoint that cannot segment lesions from text (organ models), or
                ``targets`` with a lesion model.
        """
        if self.outputs == "lesions":
            return self._segment_lesions(describe, attributes, targets)
        if describe is not None or attributes is not None:
            self.require("lesions", "segment(describe=... / attributes=...)")  # names the family needed
        probs = self.probabilities_map
        assert self._prep_meta is not None and self.volume is not None
        names = self.label_names or {i: f"class_{i}" for i in range(probs.shape[0])}
        mask = to_input_grid(probs, self._prep_meta)
        if targets is not None:
            keep = self._target_ids(targets, names)
            mask = np.where(np.isin(mask, keep), mask, 0).astype(mask.dtype)
            names = {i: n for i, n in names.items() if i == 0 or i in keep}
        if largest_component is not None:
            mask = _keep_largest_components(mask, self._largest_ids(largest_component, names))
        return SegmentationResult(mask, names, self.volume)

    def _largest_ids(self, labels: str | Sequence[str], names: dict[int, str]) -> list[int]:
        if isinstance(labels, str) and labels.strip().lower() == "all":
            return [i for i in names if i != 0]
        return self._target_ids(labels, names)

    def _segment_lesions(
        self, describe: str | None, attributes: dict[str, str] | str | None, targets: Any
    ) -> SegmentationResult:
        """Zero-shot lesion segmentation of the current volume through the lesion family's segmenter."""
        from medvl3d.infer.lesions import (
            LesionQuery,
            LesionSegmenter,
            parse_attribute_query,
            query_from_description,
        )

        where = self.info.get("path", "this checkpoint")
        if targets is not None:
            raise ValueError(
                f"{where}: targets= picks labels of organ models; a lesion model takes describe= or "
                "attributes="
            )
        if describe is not None and attributes is not None:
            raise ValueError("segment: give describe= or attributes=, not both")
        if self.volume is None:
            raise ValueError("no volume set: call set_volume(...) first")
        query = None
        if attributes is not None:
            query = parse_attribute_query(attributes)
        elif describe is not None:
            by_name = getattr(getattr(self.model, "config", None), "query", None) == "name"
            query = LesionQuery(name=describe, text=describe) if by_name else query_from_description(describe)
        if self._lesion_segmenter is None:
            self._lesion_segmenter = LesionSegmenter(self.model, self.info, self.device)
        return self._lesion_segmenter.segment(self.volume, query)

    def _target_ids(self, targets: str | Sequence[str], names: dict[int, str]) -> list[int]:
        wanted = parse_labels(targets)
        by_name = {_name_key(n): i for i, n in names.items() if i != 0}
        unknown = [t for t in wanted if _name_key(t) not in by_name]
        if unknown:
            raise ValueError(
                f"{self.info.get('path', 'checkpoint')}: unknown segmentation targets {unknown}; this "
                f"checkpoint segments {sorted(n for i, n in names.items() if i != 0)}"
            )
        return [by_name[_name_key(t)] for t in wanted]

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
    def logits(self, image_emb: torch.Tensor, labels: Sequence[str]) -> np.ndarray:
        """Prompt logits ``[N, L]``: scale x (similarity to the positive - to the negative ensemble)."""
        labels = parse_labels(labels)
        scale = self.model.scale() if hasattr(self.model, "scale") else self.model.logit_scale.exp()
        out = np.empty((image_emb.shape[0], len(labels)))
        img = image_emb.to(self.device)
        for j, label in enumerate(labels):
            pos, neg = self.prompt_embeddings(label)
            sims = self.model.score(img, torch.stack([pos, neg])).float()  # [N, 2]
            out[:, j] = (float(scale) * (sims[:, 0] - sims[:, 1])).cpu().numpy()
        self.require_finite(out, "probabilities (prompt logits)")
        return out

    def probabilities(self, image_emb: torch.Tensor, labels: Sequence[str]) -> np.ndarray:
        """Uncalibrated P(label present) ``[N, L]``: the softmax over (positive, negative) prompt logits."""
        out = sigmoid(self.logits(image_emb, labels))
        self.require_finite(out, "probabilities")
        return out

    def calibrate(self, logits: np.ndarray, labels: Sequence[str]) -> tuple[np.ndarray, list[str]]:
        """Calibrated probabilities ``[N, L]`` of prompt logits, and per label how ("label", "pooled" or
        "none": no stored calibration applies, so the raw score)."""
        labels = parse_labels(labels)
        out, how = sigmoid(logits), []
        for j, label in enumerate(labels):
            cal, kind = self.calibration.find(label) if self.calibration is not None else (None, "none")
            if cal is not None:
                out[:, j] = cal(logits[:, j])
            how.append(kind)
        return out, how

    def diagnose(self, labels: str | Sequence[str]) -> Diagnosis:
        """Probability of each abnormality in the current volume: ``result["pleural effusion"]`` is the
        calibrated probability when the checkpoint carries a calibration (else the raw score); the
        :class:`~medvl3d.infer.diagnosis.Diagnosis` also holds the raw scores and the
        out-of-distribution verdict.

        Raises:
            ValueError: an empty label list, or no volume set.
        """
        self.require("embeddings", "zero-shot diagnosis")
        labels = parse_labels(labels)
        logits = self.logits(self.image_embedding, labels)
        calibrated, how = self.calibrate(logits, labels)
        raw = sigmoid(logits)[0]
        cals = [self.calibration.find(x)[0] if self.calibration is not None else None for x in labels]
        notes = [self.calibration_note] if self.calibration_note else []
        return Diagnosis(
            probabilities={x: float(p) for x, p in zip(labels, calibrated[0])},
            raw={x: float(p) for x, p in zip(labels, raw)},
            calibration=dict(zip(labels, how)),
            max_supported={x: None if c is None else c.max_probability for x, c in zip(labels, cals)},
            ood=self.ood,
            volume=self.volume_path,
            checkpoint=self.info.get("path"),
            notes=notes,
        )


def _keep_largest_components(mask: np.ndarray, labels: list[int]) -> np.ndarray:
    """``mask`` with only the largest 26-connected component of each of ``labels`` (others untouched)."""
    from monai.transforms import KeepLargestConnectedComponent

    if not labels:
        return mask
    keep = KeepLargestConnectedComponent(applied_labels=labels, is_onehot=False, independent=True)
    return np.asarray(keep(mask[None]))[0].astype(mask.dtype)
