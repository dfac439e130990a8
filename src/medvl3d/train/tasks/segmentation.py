"""Supervised segmentation as a task: Dice + cross-entropy on class-balanced patches, for any model of
family "seg" or "monai" (from scratch or from a pretrained encoder).

Training samples are the preprocessed volumes (resampled, windowed) with their label maps; in the loader
workers each one is checked (labels inside `n_classes`, not empty, not smaller than a patch) and turned
into one patch: a crop around a voxel of a randomly chosen class (background with `1 - fg_fraction`,
otherwise one of the foreground classes the case holds, each equally often, the small ones included; the
voxel lands anywhere in the patch's central `2 * centre_jitter`, `ClassCropd`), then MONAI dictionary
transforms: a random affine applied to image and label together, and intensity changes to the image only.
The loss is MONAI's `DiceCELoss`, or with `dice_classes="present"` a Dice over the classes a batch holds
(`medvl3d.losses.dice`), for maps with many small classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from medvl3d.data.datasets.base import semantic_label
from medvl3d.infer.sliding_window import SlidingWindowConfig, sliding_window_probabilities
from medvl3d.train.tasks.base import DataFacts, Task, TaskContext, log_parts, register_task
from medvl3d.typed import build_dataclass, coerce, to_plain

__all__ = ["ClassCropd", "SegAugmentConfig", "SegmentationTask", "PatchSampler"]


@dataclass
class SegAugmentConfig:
    """Patch augmentation (probabilities per sample; intensities are on the windowed [0, 1] scale).

    Attributes:
        affine_prob: probability of a random rotation / scaling (image trilinear, label nearest).
        rotate_deg: maximum rotation about each axis, degrees.
        scale: maximum relative zoom (0.15 = 0.85x to 1.15x).
        flip_axes: array axes mirrored with probability 0.5 each. Empty by default: mirroring x swaps
            left and right, which lateralised labels (kidney_left / kidney_right) cannot survive.
        intensity_prob: probability of each intensity change.
        intensity_scale: multiply by `1 + U(-s, s)`.
        intensity_shift: add `U(-s, s)`.
        gamma: contrast (gamma) range.
        noise_std: gaussian noise std.
        blur_sigma: gaussian smoothing sigma range in voxels (other scanners' kernels).
    """

    affine_prob: float = 0.3
    rotate_deg: float = 15.0
    scale: float = 0.15
    flip_axes: tuple[int, ...] = ()
    intensity_prob: float = 0.3
    intensity_scale: float = 0.1
    intensity_shift: float = 0.05
    gamma: tuple[float, float] = (0.75, 1.4)
    noise_std: float = 0.02
    blur_sigma: tuple[float, float] = (0.5, 1.0)


class ClassCropd:
    """A patch of ``image`` and ``label`` holding a voxel of a class drawn with ``ratios`` (classes absent
    from the label map are skipped), placed so that the voxel lands up to ``jitter * patch`` from the patch
    centre, uniformly per axis; at a volume border the patch moves inward and still holds the voxel.
    MONAI's ``RandCropByLabelClassesd`` always centres the patch on the voxel (the border aside). The voxel
    is the one MONAI's ``map_classes_to_indices`` would give for the same random numbers, but only the
    drawn class's voxels are listed (a count per class, then one pass): MONAI lists every class's voxels at
    every draw, 0.65 s for 16 classes on a 160 x 176 x 176 volume, 3.5x a training step of the lesion
    UNet; this takes about 0.1 s. Seeded by ``set_random_state`` (`PatchSampler` seeds it per draw).

    With ``pool_foreground`` the ratios of foreground classes (ids >= 1) absent from the map go to the
    present ones, in proportion to their ratios: the foreground share stays ``sum(ratios[1:])`` whenever the
    map holds any foreground (nnU-Net's oversampling draws among the classes a case holds). Without it, as
    in MONAI, an absent class's ratio goes to every present class, background included: with a class per
    lesion type (14) and one type in a case, a foreground share of 0.7 fell to 0.14."""

    def __init__(
        self, patch_size: Sequence[int], ratios: Sequence[float], jitter: float, pool_foreground: bool = False
    ) -> None:
        self.patch_size, self.ratios, self.jitter = tuple(patch_size), list(ratios), float(jitter)
        self.pool_foreground = bool(pool_foreground)
        self.R = np.random.RandomState()

    def set_random_state(self, seed: int) -> None:
        self.R = np.random.RandomState(seed % 2**32)

    def __call__(self, data: dict) -> dict:
        label = data["label"]
        shape = tuple(label.shape[1:])
        flat_label = torch.as_tensor(label).reshape(-1).long()
        counts = torch.bincount(flat_label, minlength=len(self.ratios))[: len(self.ratios)].tolist()
        weights = np.asarray([r if n else 0.0 for r, n in zip(self.ratios, counts)], np.float64)
        if self.pool_foreground and weights[1:].sum() > 0:
            weights[1:] *= sum(self.ratios[1:]) / weights[1:].sum()
        if weights.sum() == 0:  # no class of positive ratio here: any voxel
            voxel = [int(self.R.randint(n)) for n in shape]
        else:
            cls = int(self.R.choice(len(weights), p=weights / weights.sum()))
            k = int(self.R.randint(counts[cls]))
            flat = int(torch.nonzero(flat_label == cls)[k])  # ascending, as MONAI lists them
            voxel = [int(v) for v in np.unravel_index(flat, shape)]
        starts = []
        for v, p, n in zip(voxel, self.patch_size, shape):
            reach = int(self.jitter * p)
            centre = v + int(self.R.randint(-reach, reach + 1))
            starts.append(min(max(centre - p // 2, 0), max(n - p, 0)))
        window = (slice(None), *(slice(s, s + p) for s, p in zip(starts, self.patch_size)))
        return {**data, "image": data["image"][window], "label": label[window]}


class PatchSampler:
    """The per-sample training transform of `SegmentationTask` (picklable, for loader workers).

    Call with `(sample, seed)`: the same seed draws the same patch, so a resumed run repeats its draws.

    `fg_fraction` of the patches hold a foreground voxel, of a class drawn equally among those the case
    holds (`ClassCropd` with `pool_foreground`). `centre_jitter` (a fraction of the patch, below 0.5) moves
    the drawn voxel off the patch centre. With 0 every foreground patch is centred on a foreground voxel by
    MONAI's `RandCropByLabelClassesd` (kept so that the tables measured that way reproduce; it gives an
    absent class's ratio to background too), and a network trained on small objects learns "the object
    sits at the centre": measured on SynthCT-VL lesions (MONAI UNet, 2000 steps) it scored 0.82 on a lesion
    at the patch centre, 0.03 at 8 voxels off and found almost no lesion in whole volumes.
    """

    def __init__(
        self,
        n_classes: int,
        patch_size: tuple[int, int, int],
        fg_fraction: float,
        augment: SegAugmentConfig,
        pad_to_patch: bool = False,
        centre_jitter: float = 0.375,
    ) -> None:
        self.n_classes, self.patch_size = n_classes, tuple(patch_size)
        self.fg_fraction, self.augment = fg_fraction, augment
        self.pad_to_patch = pad_to_patch
        self.centre_jitter = centre_jitter
        self._compose = self._crop = None

    def _build(self) -> Any:
        from monai import transforms as mt

        a = self.augment
        keys = ["image", "label"]
        ratios = [1.0 - self.fg_fraction] + [self.fg_fraction / (self.n_classes - 1)] * (self.n_classes - 1)
        rot = np.deg2rad(a.rotate_deg)
        # Pad with 0 (the bottom of the window: air) and background, as sliding-window inference pads.
        pad = [mt.SpatialPadd(keys, self.patch_size, value=0)] if self.pad_to_patch else []
        # The foreground share is fg_fraction in every case that holds foreground, whichever classes it holds.
        self._crop = ClassCropd(self.patch_size, ratios, self.centre_jitter, pool_foreground=True)
        # centre_jitter 0: MONAI's crop, so that the tables measured with centred patches reproduce draw for
        # draw (its foreground share falls in cases that lack some classes).
        crop = (
            self._crop
            if self.centre_jitter > 0
            else mt.RandCropByLabelClassesd(
                keys, "label", self.patch_size, ratios=ratios, num_classes=self.n_classes, warn=False
            )
        )
        steps = [
            *pad,
            crop,
            mt.RandAffined(
                keys,
                prob=a.affine_prob,
                rotate_range=(rot, rot, rot),
                scale_range=(a.scale, a.scale, a.scale),
                mode=("bilinear", "nearest"),
                padding_mode="border",
            ),
            *[mt.RandFlipd(keys, prob=0.5, spatial_axis=ax) for ax in a.flip_axes],
            mt.RandScaleIntensityd("image", factors=a.intensity_scale, prob=a.intensity_prob),
            mt.RandShiftIntensityd("image", offsets=a.intensity_shift, prob=a.intensity_prob),
            mt.RandAdjustContrastd("image", gamma=a.gamma, prob=a.intensity_prob),
            mt.RandGaussianSmoothd(
                "image",
                sigma_x=a.blur_sigma,
                sigma_y=a.blur_sigma,
                sigma_z=a.blur_sigma,
                prob=a.intensity_prob,
            ),
            mt.RandGaussianNoised("image", std=a.noise_std, prob=a.intensity_prob),
        ]
        return mt.Compose(steps)

    def check(self, sample: dict) -> None:
        """One-line errors naming the case for label maps a segmentation network cannot learn from."""
        meta = sample.get("meta") or {}
        where = meta.get("label_path") or meta.get("path") or meta.get("case_id", "a training case")
        if sample.get("label") is None:
            raise ValueError(f"{meta.get('path', where)}: the case has no label map (segmentation needs one)")
        label = torch.as_tensor(sample["label"])
        lo, hi = int(label.min()), int(label.max())
        if lo < 0 or hi >= self.n_classes:
            raise ValueError(
                f"{where}: label values {lo}..{hi} fall outside the model's {self.n_classes} classes "
                f"(0..{self.n_classes - 1}); check the label map or the data's label names"
            )
        if hi == 0 and meta.get("label_type") != "instance":
            # A lesion data set (instance maps) has lesion-free cases; an organ map without organs is a
            # wrong file.
            raise ValueError(f"{where}: the label map is empty (background only)")
        size = tuple(label.shape[1:])
        if not self.pad_to_patch and any(s < p for s, p in zip(size, self.patch_size)):
            raise ValueError(
                f"{meta.get('path', where)}: the preprocessed volume {'x'.join(map(str, size))} is smaller "
                f"than the training patch {'x'.join(map(str, self.patch_size))}; lower "
                "task.params.patch_size or data.preprocess.spacing, or set task.params.pad_to_patch=true"
            )

    def __call__(self, sample: dict, seed: int) -> dict:
        if sample.get("label") is not None:
            sample = {**sample, "label": semantic_label(sample)}  # instance maps: one foreground class
        self.check(sample)
        if self._compose is None:
            self._compose = self._build()
        self._compose.set_random_state(seed=seed % 2**32)
        self._crop.set_random_state(seed)
        data = {"image": torch.as_tensor(sample["image"]).float(), "label": torch.as_tensor(sample["label"])}
        out = self._compose(data)
        out = out[0] if isinstance(out, list) else out
        plain = {
            k: (v.as_tensor() if hasattr(v, "as_tensor") else torch.as_tensor(v)) for k, v in out.items()
        }
        return {**sample, "image": plain["image"].float(), "label": plain["label"].round().long()}


def configure_patches(
    task: Task,
    kind: str,
    patch_size: Sequence[int],
    fg_fraction: float,
    augment: dict | SegAugmentConfig | None,
    overlap: float,
    flip_axes: Sequence[int],
    pad_to_patch: bool,
    centre_jitter: float,
) -> None:
    """Check and set a label-map task's patch settings (``patch_size``, ``fg_fraction``,
    ``pad_to_patch``, ``centre_jitter``, ``augment``, ``window``); errors name the task ``kind``."""
    task.patch_size = coerce(list(patch_size), tuple[int, int, int], f"{kind} task patch_size", TypeError)
    if not 0 <= fg_fraction <= 1:
        raise ValueError(f"{kind} task fg_fraction must be in [0, 1], got {fg_fraction}")
    if not 0 <= centre_jitter < 0.5:
        raise ValueError(f"{kind} task centre_jitter must be in [0, 0.5), got {centre_jitter}")
    task.fg_fraction = float(fg_fraction)
    task.centre_jitter = float(centre_jitter)
    task.pad_to_patch = bool(pad_to_patch)
    task.augment = (
        augment
        if isinstance(augment, SegAugmentConfig)
        else build_dataclass(SegAugmentConfig, augment, f"{kind} task augment", TypeError)
    )
    task.window = SlidingWindowConfig(
        patch_size=task.patch_size, overlap=overlap, flip_axes=tuple(int(a) for a in flip_axes)
    )


@register_task("segmentation")
class SegmentationTask(Task):
    """Supervised segmentation with Dice + cross-entropy on class-balanced patches.

    Args:
        model: a "seg" or "monai" family model.
        patch_size: training patch (X, Y, Z) in preprocessed voxels; also the inference window.
        fg_fraction: share of patches centred on a foreground class, in every case holding one (nnU-Net
            forces a third).
        augment: `SegAugmentConfig` fields as a dict.
        overlap: sliding-window overlap for validation and inference.
        flip_axes: test-time mirroring axes for validation and inference (see `medvl3d.infer.sliding_window`).
        lambda_dice, lambda_ce: weights of the two loss terms.
        dice_classes: "all" (MONAI's `DiceCELoss`: the Dice term the mean over every class, background
            included) or "present" (`PresentClassDiceCELoss`: the mean over the foreground classes present in
            the batch, batch Dice), for label maps with many small classes, of which a patch holds one or two.
        pad_to_patch: pad volumes smaller than a patch (thin slabs) instead of refusing them.
        centre_jitter: how far (a fraction of the patch) a drawn voxel may sit from the patch centre
            (`PatchSampler`); 0 centres every patch on it.
    """

    families: ClassVar[tuple[str, ...]] = ("seg", "monai")
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
        dice_classes: str = "all",
    ) -> None:
        super().__init__()
        from monai.losses import DeepSupervisionLoss, DiceCELoss

        from medvl3d.losses.dice import PresentClassDiceCELoss

        self.model = model
        self.n_classes = int(model.config.n_classes)
        configure_patches(
            self,
            "segmentation",
            patch_size,
            fg_fraction,
            augment,
            overlap,
            flip_axes,
            pad_to_patch,
            centre_jitter,
        )
        if dice_classes == "all":
            loss = DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=lambda_dice, lambda_ce=lambda_ce)
        elif dice_classes == "present":
            loss = PresentClassDiceCELoss(lambda_dice=lambda_dice, lambda_ce=lambda_ce)
        else:
            raise ValueError(
                f"segmentation task dice_classes must be 'all' or 'present', got {dice_classes!r}"
            )
        self.loss = DeepSupervisionLoss(loss) if getattr(model.config, "deep_supervision", False) else loss

    @classmethod
    def model_overrides(cls, facts: DataFacts) -> dict[str, Any]:
        """`n_classes` from the data's label names (ids 0..max)."""
        if not facts.label_names:
            raise ValueError(
                "the training data names no label classes (MSD dataset.json 'labels', KiTS23, or "
                "'label_names' in a manifest line); set model.overrides.n_classes"
            )
        return {"n_classes": max(facts.label_names) + 1}

    def sample_transform(self, data: Any) -> PatchSampler:
        return PatchSampler(
            self.n_classes,
            self.patch_size,
            self.fg_fraction,
            self.augment,
            self.pad_to_patch,
            self.centre_jitter,
        )

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        if "image" not in batch or "label" not in batch:
            raise ValueError(f"task 'segmentation' needs batch keys 'image' and 'label', got {sorted(batch)}")
        out = self.model(batch["image"])
        loss = self.loss(out, batch["label"])
        return {"loss": loss, **log_parts(dice_ce=loss)}

    def checkpoint_info(self, ctx: TaskContext) -> dict[str, Any]:
        names = ctx.facts.label_names or {i: f"class_{i}" for i in range(self.n_classes)}
        return {
            "label_names": {str(k): v for k, v in sorted(names.items())},
            "inference": to_plain(self.window),
        }

    def validate(self, model: nn.Module, valid: Sequence[dict], ctx: TaskContext) -> dict[str, float]:
        """Mean Dice per class over the validation cases (sliding window on the preprocessed grid)."""
        from monai.metrics import compute_dice
        from monai.networks.utils import one_hot

        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        scores = []
        for sample in valid:
            probs = sliding_window_probabilities(model, torch.as_tensor(sample["image"]), self.window, device)
            pred = one_hot(probs.argmax(0)[None, None], self.n_classes)
            truth = one_hot(semantic_label(sample).long()[None], self.n_classes)
            scores.append(compute_dice(pred, truth, include_background=False, ignore_empty=True)[0])
        model.train(was_training)
        dice = torch.stack(scores).nanmean(0)  # per class; NaN where a class is absent everywhere
        names = ctx.facts.label_names or {}
        out = {"val_dice": float(dice.nanmean())}
        for c, value in enumerate(dice.tolist(), start=1):
            if value == value:
                out[f"val_dice_{names.get(c, c)}"] = value
        return out
