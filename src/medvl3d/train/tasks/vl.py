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
import torch.nn.functional as F
from torch import nn

from medvl3d.losses import (
    alignment_stats,
    barlow_twins_loss,
    centroid_gap,
    clip_loss,
    gather_with_grad,
    siglip_loss,
)
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
        out.update(self._alignment(predictor, valid, cfg))
        return {k: v for k, v in out.items() if v is not None}

    @staticmethod
    def _alignment(predictor: Any, valid: Sequence[dict], cfg: Any) -> dict[str, float]:
        """`medvl3d.eval.alignment` on the validation cases paired with the text the model trains on
        (`val_<stat>_<text_source>`; none for generated text, which is measured on raw volumes)."""
        from medvl3d.eval.alignment import alignment_report, training_texts

        source = cfg.data.text_source
        texts = training_texts(valid, source, cfg.data.summariser)
        if not any(texts):
            return {}
        images = [torch.as_tensor(s["image"]) for s, t in zip(valid, texts) if t]
        emb = predictor.encode_images(images, cfg.data.batch_size)
        stats = alignment_report(predictor.model, emb, [t for t in texts if t])
        return {f"val_{k}_{source}": v for k, v in stats.items()}


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


#: Our first BrgSA loss, kept as an option: `build_task("brgsa", model, **BRGSA_CROSS_LOSS)` (with
#: `bank_read="cosine_tau"`, `bank_init="normal"`, `bank_score="both_recon"` on the model for the whole
#: first version).
BRGSA_CROSS_LOSS: dict[str, Any] = {
    "cross_weight": 0.5,
    "mse_weight": 0.1,
    "mse": "normalized",
    "learn_scale": True,
}


def first_version_overrides(method: str) -> list[str]:
    """Config overrides (``--set`` strings) that train our first version of a method, from before the
    authors' designs became the defaults: BrgSA with `LEGACY_BANK_OPTIONS` and `BRGSA_CROSS_LOSS`; GTGM on
    the paired reports, Barlow Twins on the joint embedding, `LEGACY_AUGMENT` views.

    >>> first_version_overrides("gtgm")[:2]
    ['data.text_source=report', 'task.params.barlow_on=embedding']
    """
    import json

    from medvl3d.models.config import LEGACY_BANK_OPTIONS
    from medvl3d.train.augment import LEGACY_AUGMENT

    if method == "brgsa":
        return [f"model.overrides.{k}={v}" for k, v in LEGACY_BANK_OPTIONS.items()] + [
            f"task.params.{k}={json.dumps(v)}" for k, v in BRGSA_CROSS_LOSS.items()
        ]
    if method == "gtgm":
        return [
            "data.text_source=report",
            "task.params.barlow_on=embedding",
            f"task.params.augment={json.dumps(LEGACY_AUGMENT)}",
        ]
    raise ValueError(f"no first version of {method!r} differs from its defaults; choose 'brgsa' or 'gtgm'")


@register_task("brgsa")
class BrgSATask(VLTask):
    """BrgSA (arXiv 2501.03565): CLIP alignment bridged by a knowledge bank shared by both modalities.

    loss = InfoNCE(v, t) + rec_weight * InfoNCE(v_rec, t_rec)
           + cross_weight * (InfoNCE(v, t_rec) + InfoNCE(v_rec, t)) / 2
           + mse_weight * MSE

    with v, t the normalised embeddings and v_rec, t_rec their normalised bank reconstructions. The
    defaults are the authors' code: no cross terms, `mse_weight` 0.5 with MSE the element-wise mean
    squared error between each embedding and its *unnormalised* bank mixture (averaged over the two
    modalities), and a fixed logit scale (the model's initial one, 1/0.07; the model's `logit_scale` is
    frozen). `BRGSA_CROSS_LOSS` is our first version: cross terms at 0.5, `mse="normalized"` (squared L2
    distance to the normalised reconstruction, i.e. 2 - 2 cos, per embedding) at 0.1 and a learnt scale.

    Besides the loss parts it logs, per batch, the modality gap of the originals (`gap`) and of the
    reconstructions (`gap_rec`), the centroid cosine, the mean paired cosine, and the bank usage
    (`KnowledgeBank.usage`: entries both modalities pick, attention overlap and entropy).

    Args:
        model: a vision-language model with a knowledge bank (`bank_size` > 0).
        rec_weight: weight of InfoNCE on the reconstructions.
        cross_weight: weight of the cross pairs (original of one modality, reconstruction of the other).
        mse_weight: weight of the MSE term.
        mse: "mixture" (the authors') or "normalized" (ours), see above.
        learn_scale: train the logit scale (CLIP) instead of keeping it fixed.
        gather: gather embeddings across ranks.
    """

    def __init__(
        self,
        model: VLModel,
        rec_weight: float = 1.0,
        cross_weight: float = 0.0,
        mse_weight: float = 0.5,
        mse: str = "mixture",
        learn_scale: bool = False,
        gather: bool = True,
    ) -> None:
        super().__init__()
        if model.bank is None:
            raise ValueError(
                "task 'brgsa' needs a model with a knowledge bank: create it with bank_size=K "
                "(e.g. create_model(name, bank_size=2048)); without a bank, train task 'clip'"
            )
        if mse not in ("mixture", "normalized"):
            raise ValueError(f"task 'brgsa': mse must be 'mixture' or 'normalized', got {mse!r}")
        self.model = model
        self.rec_weight = rec_weight
        self.cross_weight = cross_weight
        self.mse_weight = mse_weight
        self.mse = mse
        self.learn_scale = learn_scale
        self.gather = gather
        if not learn_scale:
            model.logit_scale.requires_grad_(False)  # out of the optimiser and of DDP's reduction

    def _mse(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        v, t = out["image_features"], out["text_features"]
        if self.mse == "mixture":
            return 0.5 * (F.mse_loss(out["image_mixture"], v) + F.mse_loss(out["text_mixture"], t))
        v_rec, t_rec = out["image_recon"], out["text_recon"]
        return 0.5 * ((v - v_rec).pow(2).sum(-1).mean() + (t - t_rec).pow(2).sum(-1).mean())

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        image, text = _check_batch(batch, "brgsa")
        out = self.model(image, text)
        v, t, s = out["image_features"], out["text_features"], out["logit_scale"]
        v_rec, t_rec = out["image_recon"], out["text_recon"]
        # Each embedding is gathered across ranks once and reused by every pairing.
        pairs = (("v", v), ("t", t), ("vr", v_rec), ("tr", t_rec))
        g = {k: gather_with_grad(x) if self.gather else None for k, x in pairs}
        orig = clip_loss(v, t, s, self.gather, all_image=g["v"], all_text=g["t"])
        rec = clip_loss(v_rec, t_rec, s, self.gather, all_image=g["vr"], all_text=g["tr"])
        loss = orig + self.rec_weight * rec
        parts: dict[str, Any] = {"clip": orig, "rec": rec}
        if self.cross_weight:
            cross = 0.5 * (
                clip_loss(v, t_rec, s, self.gather, all_image=g["v"], all_text=g["tr"])
                + clip_loss(v_rec, t, s, self.gather, all_image=g["vr"], all_text=g["t"])
            )
            loss = loss + self.cross_weight * cross
            parts["cross"] = cross
        mse = self._mse(out)
        loss = loss + self.mse_weight * mse
        parts.update(mse=mse, logit_scale=s, gap_rec=centroid_gap(v_rec, t_rec))
        parts.update(alignment_stats(v, t))
        parts.update(self.model.bank.usage(v, t))
        return {"loss": loss, **log_parts(**parts)}


@register_task("gtgm")
class GTGMTask(VLTask):
    """GTGM (arXiv 2306.04811): CLIP loss on two augmented views of each volume + Barlow Twins between views.

    loss = (InfoNCE(view1, text) + InfoNCE(view2, text)) / 2 + barlow_weight * BarlowTwins(z1, z2)

    As in the paper, z are the image encoder's pooled features of the two views (`barlow_on="features"`),
    passed through a projector MLP (Linear-BatchNorm-ReLU-Linear, as in Barlow Twins) when
    `projector_dim > 0`; `barlow_on="embedding"` (our first version) puts the term on the normalised joint
    embedding instead, whose few dimensions the CLIP term also shapes. The views are crops, flips,
    rotations, blur and small intensity changes (`AugmentConfig`; `LEGACY_AUGMENT` for our first views).
    GTGM's point is learning without paired reports: its configs train on `data.text_source: generated`.
    Under DDP the projector's BatchNorm becomes a SyncBatchNorm on GPUs (the training loop converts the
    task) and uses per-rank statistics on CPU; the Barlow Twins loss itself uses the gathered batch. The
    projector lives on the task: it is saved with the training state, not in the model's weights.

    Args:
        model: the vision-language model.
        barlow_weight: weight of the Barlow Twins term (0.01 in the paper).
        barlow_lambda: off-diagonal weight inside Barlow Twins (0.0051, as in Barlow Twins).
        barlow_on: "features" (the image encoder's pooled features) or "embedding" (the joint embedding).
        projector_dim: width of the projector MLP (0 = none).
        augment: `AugmentConfig` fields as a dict (crop_scale, rotate_deg, blur_prob, intensity_scale, ...).
        seed: seed of a private generator for the views (per task instance; offset it per rank in DDP);
            None uses the global RNG.
        gather: gather embeddings across ranks for both losses.
    """

    def __init__(
        self,
        model: VLModel,
        barlow_weight: float = 0.01,
        barlow_lambda: float = 0.0051,
        barlow_on: str = "features",
        projector_dim: int = 0,
        augment: dict | AugmentConfig | None = None,
        seed: int | None = None,
        gather: bool = True,
    ) -> None:
        super().__init__()
        if barlow_on not in ("features", "embedding"):
            raise ValueError(f"task 'gtgm': barlow_on must be 'features' or 'embedding', got {barlow_on!r}")
        self.model = model
        self.barlow_weight = barlow_weight
        self.barlow_lambda = barlow_lambda
        self.barlow_on = barlow_on
        self.augment = augment_config(augment)
        self.seed = seed
        self.gather = gather
        self._generator: torch.Generator | None = None
        self._pending_state: torch.Tensor | None = None
        dim = model.visual.num_features if barlow_on == "features" else model.config.embed_dim
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
        on_features = self.barlow_on == "features"
        out = self.model(views, text, return_pooled=on_features)  # one pass for both views: text once
        b = image.shape[0]
        v1, v2 = out["image_features"][:b], out["image_features"][b:]
        t, s = out["text_features"], out["logit_scale"]
        t_all = gather_with_grad(t) if self.gather else None  # shared by both views' losses
        clip = 0.5 * sum(clip_loss(v, t, s, self.gather, all_text=t_all) for v in (v1, v2))
        z = out["image_pooled"] if on_features else out["image_features"]
        z = z if self.projector is None else self.projector(z)
        barlow = barlow_twins_loss(z[:b], z[b:], self.barlow_lambda, self.gather)
        loss = clip + self.barlow_weight * barlow
        return {
            "loss": loss,
            **log_parts(clip=clip, barlow=barlow, logit_scale=s, **alignment_stats(v1, t)),
        }
