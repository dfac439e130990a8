"""Malenia as a task: lesion masks from mask tokens matched to instances, mask-attribute alignment, CMKI's
text branch and the auxiliary organ head, on organ-centred patches of SynthCT-VL (or any manifest whose
cases carry a lesion instance map and per-lesion attributes).

Per image, the lesions of the patch (instance ids of the label map, attributes from the sample's
``lesions``: what the data folder records, never a lesion type table in code) are matched to the tokens
by Hungarian matching on Dice + BCE, separately at every decoder layer (deep supervision). Matched tokens
learn their lesion's mask; per attribute, every token is aligned by multi-positive InfoNCE with the text
of its lesion's value, or with "no lesion" when unmatched, at every layer (``align="multiscale"``) or at
the last one only. With CMKI the enhanced text of each lesion's attribute values also predicts its mask.
The organ head learns the organ map (SynthCT-VL's ``organs`` file, resampled onto the patch grid,
at the masks' size).

Patches: centred on a lesion voxel with probability ``fg_fraction``, otherwise on a voxel of a lesion-bearing
organ (organ-centred crops), so that lesions stay visible at the training resolution (about 2 mm).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medvl3d.data.lesion_knowledge import TYPE_QUERY_ATTRIBUTES, lesion_table, records_lesions, type_queries
from medvl3d.infer.sliding_window import SlidingWindowConfig
from medvl3d.losses.mask_matching import (
    attribute_alignment_loss,
    empty_mask_loss,
    hungarian_match_stages,
    mask_loss,
)
from medvl3d.models.malenia import NAME_ATTRIBUTE, Vocabulary
from medvl3d.train.tasks.base import Task, TaskContext, log_parts, register_task
from medvl3d.typed import coerce, to_plain

__all__ = ["MaleniaTask", "LesionPatchSampler"]

#: SynthCT-VL organ label ids that carry lesions (liver, spleen, kidneys, pancreas, lungs, colon).
LESION_ORGAN_LABELS = (1, 2, 3, 4, 5, 6, 7, 10)


class LesionPatchSampler:
    """Per-sample training transform (picklable): adds the organ map, draws an organ-centred or
    lesion-centred patch and jitters intensities. ``label`` becomes `[2, X, Y, Z]`: lesion instance ids and
    organ ids (-1 where the case has no organ map).

    Per case (keyed by its path or id) the organ map and the candidate centres are computed once: a draw
    then only crops (a full-volume pass per draw cost more than the training step)."""

    #: Organ-centred candidates kept per case (a fixed random subset: a uniform draw from it is a uniform
    #: draw from the organs, at 12 bytes a candidate instead of the organs' millions of voxels).
    max_organ_candidates: ClassVar[int] = 32768

    def __init__(
        self, patch_size: tuple[int, int, int], fg_fraction: float, root: str | None, intensity: float
    ) -> None:
        self.patch_size, self.fg_fraction, self.root, self.intensity = (
            patch_size,
            fg_fraction,
            root,
            intensity,
        )
        self._organs: dict[str, torch.Tensor] = {}
        self._candidates: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def organ_map(self, sample: dict) -> torch.Tensor:
        """The case's organ map on the preprocessed grid (int8, cached per case), or -1 everywhere."""
        meta = sample.get("meta") or {}
        shape = tuple(int(s) for s in meta.get("shape") or sample["image"].shape[1:])
        rel = meta.get("organs")
        if not rel:
            return torch.full(shape, -1, dtype=torch.int8)
        path = Path(rel) if Path(rel).is_absolute() or self.root is None else Path(self.root) / rel
        key = str(path)
        if key not in self._organs:
            from medvl3d.data.io import read_volume
            from medvl3d.data.preprocess import resample_to_grid

            if not path.is_file():
                raise FileNotFoundError(f"{path}: organ map of case {meta.get('case_id')} not found")
            vol = read_volume(path, modality="unknown")
            arr = torch.from_numpy(np.asarray(vol.array).astype(np.int64))[None]
            organs = resample_to_grid(arr, vol.affine, shape, np.asarray(meta["affine"]))[0]
            self._organs[key] = organs.to(torch.int8)  # SynthCT-VL ids < 128; 8x less memory than int64
        return self._organs[key]

    def candidates(self, sample: dict, lesions: torch.Tensor, organs: torch.Tensor) -> tuple:
        """`(lesion voxels, lesion-bearing organ voxels)`, each `[K, 3]` int32 (cached per case)."""
        meta = sample.get("meta") or {}
        key = meta.get("path") or meta.get("case_id")
        if key is not None and str(key) in self._candidates:
            return self._candidates[str(key)]
        lesion_pts = (lesions > 0).nonzero().int()
        organ_pts = torch.isin(organs, torch.tensor(LESION_ORGAN_LABELS, dtype=organs.dtype)).nonzero().int()
        if len(organ_pts) > self.max_organ_candidates:
            gen = torch.Generator().manual_seed(0)
            organ_pts = organ_pts[torch.randperm(len(organ_pts), generator=gen)[: self.max_organ_candidates]]
        if key is not None:
            self._candidates[str(key)] = (lesion_pts, organ_pts)
        return lesion_pts, organ_pts

    def __call__(self, sample: dict, seed: int) -> dict:
        meta = sample.get("meta") or {}
        if sample.get("label") is None:
            raise ValueError(f"{meta.get('path', 'a case')}: no lesion instance map (malenia needs one)")
        rng = np.random.default_rng(seed)
        image = torch.as_tensor(sample["image"])
        lesions = torch.as_tensor(sample["label"])[0]
        organs = self.organ_map(sample)
        lesion_pts, organ_pts = self.candidates(sample, lesions, organs)
        on_lesion = rng.random() < self.fg_fraction and len(lesion_pts) > 0
        candidates = lesion_pts if on_lesion else organ_pts
        if len(candidates):
            centre = candidates[int(rng.integers(len(candidates)))].tolist()
        else:  # no lesion-bearing organ: anywhere
            centre = list(np.unravel_index(int(rng.integers(lesions.numel())), tuple(lesions.shape)))
        if on_lesion:
            # The lesion voxel lands anywhere in the patch but its outer `margin` voxels: centred on it, the
            # patch taught "a lesion sits at the centre", and a model that learned that finds one at the
            # centre of every sliding window (measured: no overlap with any lesion on whole volumes).
            centre = [
                c + int(rng.integers(s // 2 - (s - 1 - m), s // 2 - m + 1))  # at [m, s - 1 - m] in the patch
                for c, s, m in zip(centre, self.patch_size, (max(2, s // 8) for s in self.patch_size))
            ]
        img = _crop(image, centre, self.patch_size, 0).float()
        lesion_patch = _crop(lesions[None], centre, self.patch_size, 0).long()
        organ_patch = _crop(organs[None], centre, self.patch_size, -1).long()
        if self.intensity > 0:
            gen = torch.Generator().manual_seed(int(seed) % 2**31)
            scale = 1 + self.intensity * (2 * torch.rand(1, generator=gen) - 1)
            shift = self.intensity * 0.5 * (2 * torch.rand(1, generator=gen) - 1)
            img = img * scale + shift + 0.01 * torch.randn(img.shape, generator=gen)
        return {**sample, "image": img.contiguous(), "label": torch.cat([lesion_patch, organ_patch])}


def _crop(x: torch.Tensor, centre: list[int], size: tuple[int, int, int], fill: float) -> torch.Tensor:
    """A `size` crop of `[C, X, Y, Z]` centred on `centre`, padded with `fill` beyond the borders."""
    out = torch.full((x.shape[0], *size), fill, dtype=x.dtype)
    src, dst = [], []
    for c, s, n in zip(centre, size, x.shape[1:]):
        lo = int(c) - s // 2
        a, b = max(lo, 0), min(lo + s, n)
        src.append(slice(a, b))
        dst.append(slice(a - lo, b - lo))
    out[(slice(None), *dst)] = x[(slice(None), *src)]
    return out


@register_task("malenia")
class MaleniaTask(Task):
    """Malenia training (see the module docstring).

    Args:
        model: a "malenia" model.
        patch_size: training patch (X, Y, Z), also the inference window.
        fg_fraction: share of patches centred on a lesion (the rest on a lesion-bearing organ).
        min_voxels: lesions with fewer voxels in a patch are not targets.
        intensity: intensity jitter (scale and shift on the windowed [0, 1] scale); 0 = none.
        lambda_mask, lambda_align, lambda_text, lambda_organ: loss weights.
        no_lesion_weight: weight of the "no lesion" alignment of unmatched tokens.
        overlap: sliding-window overlap at validation and inference.
        val_cases: validation cases scored (zero-shot Dice per lesion type is slow on a CPU).
        query_keep: the text branch learns from descriptions that keep each attribute with this probability.
        text_negatives: descriptions of types absent from a patch that the text branch learns to answer
            with an empty mask, per image.
    """

    families: ClassVar[tuple[str, ...]] = ("malenia",)
    needs_text: ClassVar[bool] = False
    needs_label: ClassVar[bool] = True
    validation_keys: ClassVar[tuple[str, ...]] = ("image", "label", "lesions", "meta")

    def __init__(
        self,
        model: nn.Module,
        patch_size: Sequence[int] = (48, 48, 48),
        fg_fraction: float = 0.7,
        min_voxels: int = 4,
        intensity: float = 0.05,
        lambda_mask: float = 1.0,
        lambda_align: float = 0.5,
        lambda_text: float = 1.0,
        lambda_organ: float = 0.5,
        no_lesion_weight: float = 0.2,
        overlap: float = 0.25,
        val_cases: int = 4,
        query_keep: float = 0.5,
        text_negatives: int = 1,
    ) -> None:
        super().__init__()
        self.model = model
        self.patch_size = coerce(list(patch_size), tuple[int, int, int], "malenia task patch_size", TypeError)
        if not 0 <= fg_fraction <= 1:
            raise ValueError(f"malenia task fg_fraction must be in [0, 1], got {fg_fraction}")
        self.fg_fraction, self.min_voxels, self.intensity = (
            float(fg_fraction),
            int(min_voxels),
            float(intensity),
        )
        self.weights = dict(mask=lambda_mask, align=lambda_align, text=lambda_text, organ=lambda_organ)
        self.no_lesion_weight = float(no_lesion_weight)
        self.window = SlidingWindowConfig(patch_size=self.patch_size, overlap=overlap)
        self.val_cases = int(val_cases)
        self.query_keep = float(query_keep)
        self.text_negatives = int(text_negatives)
        self.table: dict[str, Any] = {}

    # -- data ------------------------------------------------------------------------------------------
    def sample_transform(self, data: Any) -> LesionPatchSampler:
        """The patch sampler; also reads the training data's lesion types (names for the name-only model,
        the knowledge table for the checkpoint)."""
        from medvl3d.data.datasets import open_split

        root = getattr(data, "root", None)
        if root is not None:
            self._read_types(open_split(root, data.train_split, data.format), str(root))
        return LesionPatchSampler(self.patch_size, self.fg_fraction, root, self.intensity)

    def _read_types(self, dataset: Any, where: str) -> None:
        self.table = lesion_table(records_lesions(dataset), where)
        if self.model.config.query == "name":
            self.model.set_vocabulary(Vocabulary.names(sorted(self.table)))

    def _targets(
        self, label: torch.Tensor, lesions: dict, size: tuple[int, ...]
    ) -> tuple[torch.Tensor, list[dict]]:
        """Instance masks `[G, *size]` of one patch (soft where `size` is coarser) and their records."""
        ids = [i for i in label.clamp_min(0).flatten().bincount().nonzero()[:, 0].tolist() if i > 0]
        keep = [(i, (label == i)) for i in ids]
        keep = [
            (i, m) for i, m in keep if int(m.sum()) >= self.min_voxels and (i in lesions or str(i) in lesions)
        ]
        if not keep:
            return torch.zeros((0, *size), device=label.device), []
        masks = torch.stack([m for _, m in keep]).float()
        if tuple(masks.shape[1:]) != tuple(size):
            masks = F.interpolate(masks[None], size=size, mode="area")[0]
        return masks, [lesions.get(i) or lesions[str(i)] for i, _ in keep]

    def _instance_values(self, records: list[dict]) -> torch.Tensor:
        """`[G + 1, V]` bool over the flattened vocabulary: row g the values of instance g (an attribute whose
        value the vocabulary lacks has no positive: only the mask is learned from it), the last row "no
        lesion" for every attribute (the positives of unmatched tokens)."""
        vocab = self.model.vocabulary
        offsets = vocab.offsets()
        table = torch.zeros(len(records) + 1, sum(e - s for s, e in offsets.values()), dtype=torch.bool)
        for attr, vals in vocab.values:
            start, end = offsets[attr]
            table[-1, end - 1] = True
            for g, rec in enumerate(records):
                value = rec.get("type") if attr == NAME_ATTRIBUTE else rec.get(attr)
                key = str(value).replace("_", " ") if attr == NAME_ATTRIBUTE else value
                if key in vals:
                    table[g, start + vals.index(key)] = True
        return table

    def _description(self, records: list[dict], keep: float = 1.0) -> torch.Tensor:
        """`[G, V]` weights of each lesion's attribute values over the flattened vocabulary; with `keep` < 1
        each attribute is kept with that probability (at least one), as zero-shot queries name only some."""
        vocab = self.model.vocabulary
        offsets = vocab.offsets()
        w = torch.zeros(len(records), sum(e - s for s, e in offsets.values()))
        for g, rec in enumerate(records):
            attrs = list(offsets)
            if keep < 1 and len(attrs) > 1:
                chosen = [a for a in attrs if float(torch.rand(())) < keep]
                attrs = chosen or [attrs[int(torch.randint(len(attrs), ()))]]
            for attr in attrs:
                start = offsets[attr][0]
                value = rec.get("type") if attr == NAME_ATTRIBUTE else rec.get(attr)
                key = str(value).replace("_", " ") if attr == NAME_ATTRIBUTE else value
                if key in vocab.table()[attr]:
                    w[g, start + vocab.table()[attr].index(key)] = 1.0
        return w / w.sum(1, keepdim=True).clamp_min(1.0)

    # -- loss ------------------------------------------------------------------------------------------
    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        if "image" not in batch or "label" not in batch or "lesions" not in batch:
            raise ValueError(f"task 'malenia' needs batch keys image, label, lesions; got {sorted(batch)}")
        image, label = batch["image"], batch["label"]
        if label.ndim != 5 or label.shape[1] != 2:
            raise ValueError(
                "task 'malenia' needs labels [B, 2, X, Y, Z] (lesion ids, organ ids) from its patch sampler, "
                f"got {tuple(label.shape)}"
            )
        out = self.model(image)
        # Masks are scored at the mask-feature size (the input's, or coarser with a strided stem) against
        # area-downsampled targets: matching and losses cost 8x less per halving.
        size = tuple(out["masks"].shape[2:])
        targets = [self._targets(label[b, 0], batch["lesions"][b], size) for b in range(image.shape[0])]
        stages = out["layers"] + (
            [{"masks": out["masks"], "attr": out["attr"]}] if out.get("text") is not None else []
        )
        align_from = 0 if self.model.config.align == "multiscale" else len(stages) - 1
        mask_part, align_part = self._set_losses(stages, targets, size, align_from)
        parts = {"mask": mask_part, "align": align_part}
        if out.get("text") is not None:
            absent = [self._absent_types(label[b, 0], batch["lesions"][b]) for b in range(image.shape[0])]
            parts["text"] = self._text_loss(out, targets, size, absent)
        if "organs" in out:
            # Organ ids at the logits' size (nearest voxel): the auxiliary head learns at the masks' scale.
            organs = F.interpolate(label[:, 1:].float(), size=out["organs"].shape[2:], mode="nearest-exact")
            organs = organs[:, 0].long()
            parts["organ"] = (
                F.cross_entropy(out["organs"], organs.clamp(max=out["organs"].shape[1] - 1), ignore_index=-1)
                if bool((organs >= 0).any())
                else out["organs"].sum() * 0.0
            )
        loss = sum(self.weights[k] * v for k, v in parts.items())
        return {"loss": loss, **log_parts(**parts)}

    def _set_losses(
        self, stages: list[dict], targets: list, size: tuple[int, ...], align_from: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask and alignment losses, each the mean over decoder stages (deep supervision), every stage
        matched to the instances on its own. The stages are scored together (one cost computation per image,
        one mask loss, one alignment loss per attribute): every stage matches as many tokens, so the pooled
        means are the means of the per-stage losses."""
        masks = torch.stack([self.model.upsample(st["masks"], size) for st in stages])  # [S, B, N, *size]
        n_stages, n_tokens = masks.shape[0], masks.shape[2]
        picks, truth, positives, matched = [], [], [], []
        for b, (tmasks, records) in enumerate(targets):
            flat = tmasks.flatten(1)
            values = self._instance_values(records).to(masks.device)
            pos = values[-1].repeat(n_stages, n_tokens, 1)  # [S, N, V]: "no lesion" unless matched
            hit = torch.zeros(n_stages, n_tokens, dtype=torch.bool, device=masks.device)
            for k, (rows, cols) in enumerate(hungarian_match_stages(masks[:, b].flatten(2), flat)):
                picks.append(torch.stack([torch.full_like(rows, k), torch.full_like(rows, b), rows]))
                truth.append(flat[cols])
                pos[k, rows] = values[cols]
                hit[k, rows] = True
            positives.append(pos)
            matched.append(hit)
        # One gather of every matched (stage, image, token) mask: a gather per pair would each write a
        # gradient as large as all stages' masks.
        k_idx, b_idx, n_idx = torch.cat(picks, 1)
        mask_part = mask_loss(masks[k_idx, b_idx, n_idx].flatten(1), torch.cat(truth))
        positives_all = torch.cat(positives, 1)[align_from:]  # [S', B * N, V]
        matched_all = torch.cat(matched, 1)[align_from:]
        align_terms = []
        for attr, (start, end) in self.model.vocabulary.offsets().items():
            logits = torch.stack([st["attr"][attr] for st in stages[align_from:]]).flatten(1, 2)
            align_terms.append(
                attribute_alignment_loss(
                    logits, positives_all[..., start:end], matched_all, self.no_lesion_weight
                )
            )
        return mask_part, torch.stack(align_terms).mean()

    def _text_loss(
        self, out: dict, targets: list, size: tuple[int, ...], absent: list[list[dict]]
    ) -> torch.Tensor:
        """CMKI's text branch: each lesion's enhanced description predicts its mask, and the descriptions of
        types absent from the patch (`absent`, per image) predict nothing. Trained on positives only, the
        branch answered every description with a mask in every sliding window."""
        rows = [(records, negatives) for (_, records), negatives in zip(targets, absent)]
        k_max = max(len(r) + len(n) for r, n in rows)
        if k_max == 0:
            return out["text"].sum() * 0.0
        v = out["text"].shape[1]
        weights = torch.zeros(len(targets), k_max, v, device=out["text"].device)
        for b, (records, negatives) in enumerate(rows):
            if records:
                weights[b, : len(records)] = self._description(records, self.query_keep).to(weights.device)
            if negatives:
                weights[b, len(records) : len(records) + len(negatives)] = self._description(negatives).to(
                    weights.device
                )
        logits = self.model.upsample(self.model.text_masks(out, weights), size)
        pos = [logits[b, : len(r)].flatten(1) for b, (r, _) in enumerate(rows)]
        neg = torch.cat([logits[b, len(r) : len(r) + len(n)].flatten(1) for b, (r, n) in enumerate(rows)])
        pos_part = mask_loss(torch.cat(pos), torch.cat([m.flatten(1) for m, _ in targets]))
        n_pos = sum(len(r) for r, _ in rows)
        # Pairs weigh alike: the mean over positive and negative descriptions.
        return (n_pos * pos_part + len(neg) * empty_mask_loss(neg)) / max(1, n_pos + len(neg))

    def _absent_types(self, label: torch.Tensor, lesions: dict) -> list[dict]:
        """Up to `text_negatives` typical descriptions (`{"type": name, attribute: value}`) of known types
        with no voxel in the patch `label` (instance ids)."""
        if self.text_negatives <= 0 or not self.table:
            return []
        ids = label.clamp_min(0).flatten().bincount().nonzero()[:, 0].tolist()
        present = {(lesions.get(i) or lesions.get(str(i)) or {}).get("type") for i in ids if i > 0}
        names = [n for n in sorted(self.table) if n not in present]
        if not names:
            return []
        queries = type_queries({n: self.table[n] for n in names})
        order = torch.randperm(len(names))[: self.text_negatives].tolist()
        return [{"type": names[i], **queries[names[i]]} for i in order]

    # -- checkpoint and validation ---------------------------------------------------------------------
    def checkpoint_info(self, ctx: TaskContext) -> dict[str, Any]:
        info: dict[str, Any] = {
            "label_names": {"0": "background", "1": "lesion"},
            "inference": to_plain(self.window),
            "lesion_types": self.table,
        }
        if self.model.config.query == "name":
            info["type_names"] = sorted(self.table)
        return info

    def validate(self, model: nn.Module, valid: Sequence[dict], ctx: TaskContext) -> dict[str, float]:
        """Zero-shot Dice per lesion type on the first `val_cases` validation cases: each type's query is
        its organ and most frequent recorded values (`TYPE_QUERY_ATTRIBUTES`)."""
        from medvl3d.infer.lesions import query_maps

        cases = list(valid)[: self.val_cases]
        table = lesion_table([les for s in cases for les in (s.get("lesions") or {}).values()], "validation")
        queries = type_queries(table, TYPE_QUERY_ATTRIBUTES)
        device = next(model.parameters()).device
        scores: dict[str, list[float]] = {}
        vocabulary = model.vocabulary
        try:
            for sample in cases:
                label = torch.as_tensor(sample["label"])[0]
                names = sorted({les["type"] for les in (sample.get("lesions") or {}).values()})
                if not names:
                    continue
                asked = [self._type_query(model, name, queries[name]) for name in names]
                maps = query_maps(model, torch.as_tensor(sample["image"]), self.window, asked, device)
                for name, prob in zip(names, maps):
                    ids = [int(k) for k, les in sample["lesions"].items() if les["type"] == name]
                    truth = torch.isin(label, torch.tensor(ids))
                    pred = prob >= 0.5
                    inter = float((pred & truth).sum())
                    scores.setdefault(name, []).append(2 * inter / max(1.0, float(pred.sum() + truth.sum())))
        finally:
            model.set_vocabulary(vocabulary)  # names asked at validation never join training
        out = {f"val_dice_{k}": float(np.mean(v)) for k, v in sorted(scores.items())}
        if out:
            out["val_dice"] = float(np.mean(list(out.values())))
        return out

    @staticmethod
    def _type_query(model: nn.Module, name: str, values: dict[str, str]) -> Any:
        """The query of one lesion type: its recorded values, or its name for the name-only model."""
        from medvl3d.infer.lesions import LesionQuery

        if model.config.query != "name":
            return LesionQuery(dict(values))
        names = model.vocabulary.table()[NAME_ATTRIBUTE][:-1]
        if name.replace("_", " ") not in names:
            model.set_vocabulary(Vocabulary.names([*names, name]))
        return LesionQuery(name=name)
