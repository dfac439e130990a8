"""Language-guided artery/vein segmentation as a task: Dice + cross-entropy for "avfusion" models.

The model names its classes (`config.classes`, e.g. pulmonary_artery and pulmonary_vein); the training
data's label maps may hold more (SynthCT-VL's vessel maps also label the airways). Each sample's label
map is remapped by name, using the label names its dataset carries (`meta["label_names"]`): class i of
the model becomes label i, everything else background. Patches are then drawn and augmented as in
supervised segmentation (`PatchSampler`: class-balanced crops, affine and intensity changes).

Before training, the task fills the model's class text embeddings from its sentence encoder (once; a
resumed or loaded model keeps the stored ones) and reports the trainable parameter count.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from medvl3d.infer.sliding_window import sliding_window_probabilities
from medvl3d.train.tasks.base import Task, TaskContext, log_parts, register_task
from medvl3d.train.tasks.segmentation import PatchSampler, SegAugmentConfig, configure_patches
from medvl3d.typed import to_plain

__all__ = ["AvFusionTask", "ClassRemapSampler", "normalise_name", "remap_labels"]


def normalise_name(name: str) -> str:
    """Case, underscores and runs of spaces do not matter: "Pulmonary_Artery" == "pulmonary artery"."""
    return " ".join(str(name).replace("_", " ").lower().split())


def remap_labels(
    label: torch.Tensor, label_names: Mapping[Any, str], classes: Sequence[str], where: str
) -> torch.Tensor:
    """Label map with class i of `classes` as label i + 1 and every other label as background 0.

    Args:
        label: integer label map (any shape).
        label_names: the data's label id -> name (ids as ints or strings).
        classes: the model's class names, in label order.
        where: the file or case, for the error message.

    Raises:
        ValueError: a class the data does not name (the message lists the names it has).
    """
    by_name = {normalise_name(n): int(i) for i, n in label_names.items()}
    missing = [c for c in classes if normalise_name(c) not in by_name]
    if missing:
        have = sorted(n for i, n in label_names.items() if int(i) != 0)
        raise ValueError(f"{where}: the label map names no {missing}; its labels are {have}")
    label = torch.as_tensor(label).long()
    top = max(int(label.max()) if label.numel() else 0, max(by_name.values()))
    lut = torch.zeros(top + 1, dtype=torch.long)
    for k, c in enumerate(classes, start=1):
        lut[by_name[normalise_name(c)]] = k
    return lut[label.clamp(min=0)]


def _where(sample: dict) -> str:
    meta = sample.get("meta") or {}
    return str(meta.get("label_path") or meta.get("path") or meta.get("case_id", "a training case"))


def _remapped(sample: dict, classes: Sequence[str]) -> torch.Tensor:
    meta = sample.get("meta") or {}
    names = meta.get("label_names")
    if not names:
        raise ValueError(
            f"{_where(sample)}: the dataset names no labels (MSD dataset.json 'labels'), so the classes "
            f"{list(classes)} cannot be found in its label map"
        )
    return remap_labels(sample["label"], names, classes, _where(sample))


class ClassRemapSampler(PatchSampler):
    """`PatchSampler` after remapping the label map to the model's classes by name (picklable)."""

    def __init__(self, classes: Sequence[str], *args: Any, **kwargs: Any) -> None:
        super().__init__(1 + len(classes), *args, **kwargs)
        self.classes = tuple(classes)

    def __call__(self, sample: dict, seed: int) -> dict:
        if sample.get("label") is None:
            raise ValueError(f"{_where(sample)}: the case has no label map (segmentation needs one)")
        return super().__call__({**sample, "label": _remapped(sample, self.classes)}, seed)


@register_task("avfusion")
class AvFusionTask(Task):
    """Dice + cross-entropy for the language-guided fusion model, on class-balanced patches.

    Args:
        model: an "avfusion" family model.
        patch_size: training patch (X, Y, Z) in preprocessed voxels; also the inference window.
        fg_fraction: share of patches centred on a vessel class.
        augment: `SegAugmentConfig` fields as a dict.
        overlap: sliding-window overlap for validation and inference.
        flip_axes: test-time mirroring axes for validation and inference.
        lambda_dice, lambda_ce: weights of the two loss terms.
        pad_to_patch: pad volumes smaller than a patch instead of refusing them.
        centre_jitter: how far (a fraction of the patch) a drawn voxel may sit from the patch centre
            (`PatchSampler`); 0 centres every patch on it.
    """

    families: ClassVar[tuple[str, ...]] = ("avfusion",)
    needs_text: ClassVar[bool] = False
    needs_label: ClassVar[bool] = True
    validation_keys: ClassVar[tuple[str, ...]] = ("image", "label", "meta")

    def __init__(
        self,
        model: nn.Module,
        patch_size: Sequence[int] = (64, 64, 64),
        fg_fraction: float = 0.67,
        augment: dict | SegAugmentConfig | None = None,
        overlap: float = 0.5,
        flip_axes: Sequence[int] = (),
        lambda_dice: float = 1.0,
        lambda_ce: float = 1.0,
        pad_to_patch: bool = False,
        centre_jitter: float = 0.375,
    ) -> None:
        super().__init__()
        from monai.losses import DiceCELoss

        self.model = model
        self.classes = tuple(model.config.classes)
        configure_patches(
            self,
            "avfusion",
            patch_size,
            fg_fraction,
            augment,
            overlap,
            flip_axes,
            pad_to_patch,
            centre_jitter,
        )
        self.loss = DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=lambda_dice, lambda_ce=lambda_ce)
        if not model.text_ready:
            model.embed_class_texts()
        counts = model.parameter_counts()
        print(
            f"medvl3d avfusion: {counts['trainable']:,} of {counts['total']:,} parameters train "
            f"(adapters {counts['adapters']:,}, fusion {counts['fusion']:,}, decoder {counts['decoder']:,})",
            file=sys.stderr,
        )

    def sample_transform(self, data: Any) -> ClassRemapSampler:
        return ClassRemapSampler(
            self.classes,
            self.patch_size,
            self.fg_fraction,
            self.augment,
            self.pad_to_patch,
            self.centre_jitter,
        )

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        if "image" not in batch or "label" not in batch:
            raise ValueError(f"task 'avfusion' needs batch keys 'image' and 'label', got {sorted(batch)}")
        loss = self.loss(self.model(batch["image"]), batch["label"])
        gates = [a.gate.detach().abs() for a in self.model.adapters]
        parts = {"dice_ce": loss}
        if gates:
            parts["adapter_gate"] = torch.stack(gates).mean()
        return {"loss": loss, **log_parts(**parts)}

    def checkpoint_info(self, ctx: TaskContext) -> dict[str, Any]:
        return {
            "label_names": {"0": "background", **{str(i): c for i, c in enumerate(self.classes, start=1)}},
            "inference": to_plain(self.window),
            "parameters": self.model.parameter_counts(),
            "modality_weights": self.model.modality_weights(),
        }

    def validate(self, model: nn.Module, valid: Sequence[dict], ctx: TaskContext) -> dict[str, float]:
        """Mean vessel Dice, clDice and A/V confusion over the validation cases (preprocessed grid)."""
        from medvl3d.eval.vessel_metrics import summarise_vessels, vessel_metrics

        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        per_case = []
        for sample in valid:
            truth = _remapped(sample, self.classes)[0]
            probs = sliding_window_probabilities(model, torch.as_tensor(sample["image"]), self.window, device)
            per_case.append(vessel_metrics(probs.argmax(0), truth, None, self.classes, hd95=False))
        model.train(was_training)
        summary = summarise_vessels(per_case)
        out = {f"val_{k}": v for k, v in summary.items() if v is not None}
        return out
