"""Vision-language pretraining objectives as task modules: clip, siglip, brgsa, gtgm.

A task wraps a `VLModel` (and any loss-only parameters, e.g. GTGM's projector); its `forward(batch)`
takes `batch["image"]` `[B, 1, X, Y, Z]` and `batch["text"]` (B strings) and returns `{"loss": ...}` plus
detached named parts for logging. Every task calls the model through its `forward`, so wrapping the
*task* in DDP synchronises all gradients; optimise `task.parameters()` (a superset of the model's).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from medvl3d.losses import barlow_twins_loss, centroid_gap, clip_loss, gather_with_grad, siglip_loss
from medvl3d.models.clip import VLModel
from medvl3d.train.augment import AugmentConfig, augment_config, random_view
from medvl3d.train.tasks.base import Task, TaskContext, log_parts, register_task
from medvl3d.typed import to_plain


class VLTask(Task):
    """Base of the vision-language objectives: they train on (volume, text) pairs, validate by zero-shot
    diagnosis and store the prompts and abnormality labels in the checkpoint."""

    families: ClassVar[tuple[str, ...]] = ("vl",)
    needs_text: ClassVar[bool] = True
    validation_keys: ClassVar[tuple[str, ...]] = ("image", "labels", "report", "meta")

    def checkpoint_info(self, ctx: TaskContext) -> dict[str, Any]:
        cfg = ctx.cfg
        return {
            "text": to_plain(self.model.config.text),
            "prompts": cfg.prompts.to_dict(),  # explicit, not "the default then"
        }

    def validate(self, model: nn.Module, valid: Sequence[dict], ctx: TaskContext) -> dict[str, float]:
        """Zero-shot macro AUROC (no bootstrap) and the modality gap on the preprocessed validation split."""
        from medvl3d.eval.diagnosis import evaluate_diagnosis, load_label_groups
        from medvl3d.infer.predictor import Predictor

        cfg = ctx.cfg
        info = {
            "model": {"family": "vl"},
            "preprocess": cfg.data.preprocess.to_dict(),
            "modality": ctx.facts.modality,
            **self.checkpoint_info(ctx),
        }
        predictor = Predictor(model, info, device=next(model.parameters()).device)
        report = evaluate_diagnosis(
            predictor,
            valid,
            split=cfg.data.valid_split,
            bootstrap=0,
            groups=load_label_groups(cfg.data.root),
            progress=False,
            preprocessed=True,  # once, by the loop
        )
        out = {"val_macro_auroc": report.macro["auroc"], "val_gap": report.modality_gap["before_bank"]}
        out.update({f"val_{g}_auroc": info["auroc"] for g, info in report.groups.items()})
        return {k: v for k, v in out.items() if v is not None}


def _check_batch(batch: dict, task: str) -> tuple[torch.Tensor, list[str]]:
    if "image" not in batch or "text" not in batch:
        raise ValueError(f"task {task!r} needs batch keys 'image' and 'text', got {sorted(batch)}")
    image, text = batch["image"], batch["text"]
    if not isinstance(image, torch.Tensor) or image.ndim != 5:
        raise ValueError(f"task {task!r}: batch['image'] must be a [B, C, X, Y, Z] tensor")
    if isinstance(text, str) or len(text) != image.shape[0]:
        raise ValueError(
            f"task {task!r}: batch['text'] must be a list of {image.shape[0]} strings (one per volume), "
            f"got {type(text).__name__} of length {len(text)}"
        )
    return image, list(text)


@register_task("clip")
class ClipTask(VLTask):
    """CLIP: symmetric InfoNCE between each volume and its report, gathered across ranks."""

    def __init__(self, model: VLModel, gather: bool = True) -> None:
        super().__init__()
        self.model = model
        self.gather = gather

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        image, text = _check_batch(batch, "clip")
        out = self.model(image, text)
        loss = clip_loss(out["image_features"], out["text_features"], out["logit_scale"], self.gather)
        gap = centroid_gap(out["image_features"], out["text_features"])
        return {"loss": loss, **log_parts(clip=loss, logit_scale=out["logit_scale"], gap=gap)}


@register_task("siglip")
class SigLIPTask(VLTask):
    """SigLIP: pairwise sigmoid loss; needs a model with a logit bias."""

    def __init__(self, model: VLModel, gather: bool = True) -> None:
        super().__init__()
        if model.logit_bias is None:
            raise ValueError(
                "task 'siglip' needs a model with a logit bias: create it with init_logit_bias=-10.0 "
                "(and init_logit_scale=math.log(10), as in SigLIP)"
            )
        self.model = model
        self.gather = gather

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        image, text = _check_batch(batch, "siglip")
        out = self.model(image, text)
        loss = siglip_loss(
            out["image_features"], out["text_features"], out["logit_scale"], out["logit_bias"], self.gather
        )
        gap = centroid_gap(out["image_features"], out["text_features"])
        return {
            "loss": loss,
            **log_parts(siglip=loss, logit_scale=out["logit_scale"], logit_bias=out["logit_bias"], gap=gap),
        }


@register_task("brgsa")
class BrgSATask(VLTask):
    """BrgSA (arXiv 2501.03565): CLIP alignment bridged by a knowledge bank shared by both modalities.

    loss = InfoNCE(v, t) + rec_weight * InfoNCE(v_rec, t_rec)
           + cross_weight * (InfoNCE(v, t_rec) + InfoNCE(v_rec, t)) / 2
           + mse_weight * (|v - v_rec|^2 + |t - t_rec|^2) / 2

    with v, t the normalised embeddings and v_rec, t_rec their bank reconstructions. The cross pairs
    align each original with the other modality's reconstruction: the paper describes aligning
    "originals, reconstructions and the cross pairs", and these terms are what makes the bank a bridge
    (an image must be near the bank mixture its report selects, and vice versa). The MSE term (mean
    squared L2 distance per embedding, i.e. 2 - 2 cos) keeps the embeddings close to the bank manifold.
    """

    def __init__(
        self,
        model: VLModel,
        rec_weight: float = 1.0,
        cross_weight: float = 0.5,
        mse_weight: float = 0.1,
        gather: bool = True,
    ) -> None:
        super().__init__()
        if model.bank is None:
            raise ValueError(
                "task 'brgsa' needs a model with a knowledge bank: create it with bank_size=K "
                "(e.g. create_model(name, bank_size=2048))"
            )
        self.model = model
        self.rec_weight = rec_weight
        self.cross_weight = cross_weight
        self.mse_weight = mse_weight
        self.gather = gather

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        image, text = _check_batch(batch, "brgsa")
        out = self.model(image, text)
        v, t, s = out["image_features"], out["text_features"], out["logit_scale"]
        v_rec, t_rec = out["image_recon"], out["text_recon"]
        # Each of the four embeddings is gathered across ranks once and reused by the four pairings.
        pairs = (("v", v), ("t", t), ("vr", v_rec), ("tr", t_rec))
        g = {k: gather_with_grad(x) if self.gather else None for k, x in pairs}
        orig = clip_loss(v, t, s, self.gather, all_image=g["v"], all_text=g["t"])
        rec = clip_loss(v_rec, t_rec, s, self.gather, all_image=g["vr"], all_text=g["tr"])
        cross = 0.5 * (
            clip_loss(v, t_rec, s, self.gather, all_image=g["v"], all_text=g["tr"])
            + clip_loss(v_rec, t, s, self.gather, all_image=g["vr"], all_text=g["t"])
        )
        mse = 0.5 * ((v - v_rec).pow(2).sum(-1).mean() + (t - t_rec).pow(2).sum(-1).mean())
        loss = orig + self.rec_weight * rec + self.cross_weight * cross + self.mse_weight * mse
        parts = log_parts(
            clip=orig,
            rec=rec,
            cross=cross,
            mse=mse,
            logit_scale=s,
            gap=centroid_gap(v, t),
            gap_rec=centroid_gap(v_rec, t_rec),
        )
        return {"loss": loss, **parts}


@register_task("gtgm")
class GTGMTask(VLTask):
    """GTGM (arXiv 2306.04811): CLIP loss on two augmented views of each volume + Barlow Twins between views.

    loss = (InfoNCE(view1, text) + InfoNCE(view2, text)) / 2 + barlow_weight * BarlowTwins(z1, z2)

    z are the normalised image embeddings of the two views, passed through a projector MLP
    (Linear-BatchNorm-ReLU-Linear, as in Barlow Twins) when `projector_dim > 0`. The default is no
    projector, so the view-view term acts on the joint embedding itself and the task has no parameters
    outside the model (a checkpoint of the model is then the whole state). Under DDP the projector's
    BatchNorm becomes a SyncBatchNorm on GPUs (the training loop converts the task) and uses per-rank
    statistics on CPU; the Barlow Twins loss itself uses the gathered batch.

    Args:
        model: the vision-language model.
        barlow_weight: weight of the Barlow Twins term (0.01 in the paper).
        barlow_lambda: off-diagonal weight inside Barlow Twins.
        projector_dim: width of the projector MLP (0 = none).
        augment: `AugmentConfig` fields as a dict (crop_scale, flip_prob, intensity_scale, ...).
        seed: seed of a private generator for the views (per task instance; offset it per rank in DDP);
            None uses the global RNG.
        gather: gather embeddings across ranks for both losses.
    """

    def __init__(
        self,
        model: VLModel,
        barlow_weight: float = 0.01,
        barlow_lambda: float = 5e-3,
        projector_dim: int = 0,
        augment: dict | AugmentConfig | None = None,
        seed: int | None = None,
        gather: bool = True,
    ) -> None:
        super().__init__()
        self.model = model
        self.barlow_weight = barlow_weight
        self.barlow_lambda = barlow_lambda
        self.augment = augment_config(augment)
        self.seed = seed
        self.gather = gather
        self._generator: torch.Generator | None = None
        self._pending_state: torch.Tensor | None = None
        dim = model.config.embed_dim
        self.projector: nn.Module | None = None
        if projector_dim > 0:
            self.projector = nn.Sequential(
                nn.Linear(dim, projector_dim, bias=False),
                nn.BatchNorm1d(projector_dim),
                nn.ReLU(inplace=True),
                nn.Linear(projector_dim, projector_dim, bias=False),
            )

    def _gen(self, device: torch.device) -> torch.Generator | None:
        if self.seed is None:
            return None
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device).manual_seed(self.seed)
            if self._pending_state is not None:  # restored from a checkpoint before the device was known
                self._generator.set_state(self._pending_state)
                self._pending_state = None
        return self._generator

    def rng_state(self) -> torch.Tensor | None:
        """State of the private view generator (None before the first batch or without `seed`); the
        training loop stores it per rank in each checkpoint so a resumed run draws the same views."""
        if self._generator is not None:
            return self._generator.get_state()
        return self._pending_state

    def set_rng_state(self, state: torch.Tensor | None) -> None:
        """Restore :meth:`rng_state` (applied when the generator is next created or used)."""
        if state is None:
            return
        if self._generator is not None:
            self._generator.set_state(state)
        else:
            self._pending_state = state

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        image, text = _check_batch(batch, "gtgm")
        gen = self._gen(image.device)
        views = torch.cat([random_view(image, self.augment, gen), random_view(image, self.augment, gen)])
        out = self.model(views, text)  # one pass for both views: text is encoded once
        b = image.shape[0]
        v1, v2 = out["image_features"][:b], out["image_features"][b:]
        t, s = out["text_features"], out["logit_scale"]
        t_all = gather_with_grad(t) if self.gather else None  # shared by both views' losses
        clip = 0.5 * sum(clip_loss(v, t, s, self.gather, all_text=t_all) for v in (v1, v2))
        z = out["image_features"] if self.projector is None else self.projector(out["image_features"])
        barlow = barlow_twins_loss(z[:b], z[b:], self.barlow_lambda, self.gather)
        loss = clip + self.barlow_weight * barlow
        return {
            "loss": loss,
            **log_parts(clip=clip, barlow=barlow, logit_scale=s, gap=centroid_gap(v1, t)),
        }
