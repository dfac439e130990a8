"""medvl3d.losses: contrastive (CLIP InfoNCE, SigLIP, multi-positive), view-view (Barlow Twins) and
segmentation (Dice + CE over the classes present) losses."""

from medvl3d.losses.barlow import barlow_twins_loss
from medvl3d.losses.dice import PresentClassDiceCELoss
from medvl3d.losses.infonce import (
    alignment_stats,
    centroid_gap,
    clip_loss,
    gather_with_grad,
    local_label_offset,
    modality_gap,
    multi_positive_nce,
)
from medvl3d.losses.siglip import siglip_loss

__all__ = [
    "PresentClassDiceCELoss",
    "alignment_stats",
    "barlow_twins_loss",
    "centroid_gap",
    "clip_loss",
    "gather_with_grad",
    "local_label_offset",
    "modality_gap",
    "multi_positive_nce",
    "siglip_loss",
]
