"""Metrics for vessel trees (pulmonary arteries and veins), per class and between the classes.

- **Dice** per class: `2 |P & T| / (|P| + |T|)`.
- **clDice** (centreline Dice, Shit et al., CVPR 2021) per class: with `S(.)` the skeleton (scikit-image's
  `skeletonize`, Lee's 3D thinning), topology precision `|S(P) & T| / |S(P)|` and sensitivity
  `|S(T) & P| / |S(T)|`, and clDice their harmonic mean. Thin branches weigh as much as thick trunks, so
  it rewards a connected tree where Dice rewards the trunks.
- **HD95** in mm per class, from `medvl3d.eval.seg_metrics` (MONAI's surface distances).
- **A/V confusion**: on the voxels that are vessel (any class) in both prediction and truth, the share
  whose class differs: arteries called veins and veins called arteries, not missed or extra vessel.

A value with no meaning is None, never a made-up number: Dice and clDice are None when the class is absent
from both maps and 0 when absent from one; HD95 is None unless both have the class; A/V confusion is None
when no voxel is vessel in both. `summarise_vessels` averages the defined values only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["VESSEL_METRICS", "cldice", "av_confusion", "vessel_metrics", "summarise_vessels"]

VESSEL_METRICS: tuple[str, ...] = ("dice", "cldice", "hd95")


def _array(x: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.ndim != 3:
        raise ValueError(f"{name} must be a 3D label map [X, Y, Z], got shape {tuple(arr.shape)}")
    if arr.dtype != np.bool_ and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be an integer label map, got dtype {arr.dtype}")
    return arr


def _box(*masks: np.ndarray) -> tuple[slice, ...] | None:
    """The bounding box of the union of masks, grown by 1 voxel (skeletons are local: exact on the crop)."""
    union = np.logical_or.reduce(masks)
    if not union.any():
        return None
    out = []
    for axis in range(union.ndim):
        other = tuple(a for a in range(union.ndim) if a != axis)
        idx = np.flatnonzero(union.any(axis=other))
        out.append(slice(max(int(idx[0]) - 1, 0), min(int(idx[-1]) + 2, union.shape[axis])))
    return tuple(out)


def _skeleton(mask: np.ndarray) -> np.ndarray:
    from skimage.morphology import skeletonize

    return skeletonize(mask).astype(bool)


def cldice(pred: np.ndarray, truth: np.ndarray) -> float | None:
    """Centreline Dice of two binary masks (None when both are empty, 0 when one is)."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    if pred.shape != truth.shape:
        raise ValueError(f"cldice: pred shape {pred.shape} differs from truth shape {truth.shape}")
    box = _box(pred, truth)
    if box is None:
        return None
    p, t = pred[box], truth[box]
    if not p.any() or not t.any():
        return 0.0
    sp, st = _skeleton(p), _skeleton(t)
    # A blob thinner than the thinning can keep (a 1-voxel dot) has an empty skeleton: use the mask itself.
    sp = sp if sp.any() else p
    st = st if st.any() else t
    tprec = float((sp & t).sum()) / float(sp.sum())
    tsens = float((st & p).sum()) / float(st.sum())
    return 0.0 if tprec + tsens == 0 else 2 * tprec * tsens / (tprec + tsens)


def _dice(p: np.ndarray, t: np.ndarray) -> float | None:
    total = int(p.sum()) + int(t.sum())
    return None if total == 0 else 2.0 * float((p & t).sum()) / total


def av_confusion(pred: np.ndarray, truth: np.ndarray, labels: Sequence[int]) -> tuple[float | None, int]:
    """(share of the voxels that are vessel in both maps whose class differs, how many such voxels)."""
    lab = np.asarray(list(labels))
    both = np.isin(pred, lab) & np.isin(truth, lab)
    n = int(both.sum())
    if n == 0:
        return None, 0
    return float((pred[both] != truth[both]).sum()) / n, n


def _classes(classes: Mapping[int, str] | Sequence[str]) -> dict[int, str]:
    if isinstance(classes, Mapping):
        out = {int(i): str(n) for i, n in classes.items() if int(i) != 0}
    else:
        out = {i: str(n) for i, n in enumerate(classes, start=1)}
    if not out:
        raise ValueError("vessel_metrics: no vessel classes to score")
    return out


def vessel_metrics(
    pred: np.ndarray | torch.Tensor,
    truth: np.ndarray | torch.Tensor,
    spacing: Sequence[float] | None,
    classes: Mapping[int, str] | Sequence[str],
    hd95: bool = True,
) -> dict[str, Any]:
    """Dice, clDice and HD95 per vessel class, and the A/V confusion rate, of one case.

    Args:
        pred, truth: integer label maps `[X, Y, Z]` of the same shape.
        spacing: voxel size in mm (X, Y, Z); needed for HD95 only.
        classes: label id -> name, or names in label order (label 1, 2, ...); background 0 is not scored.
        hd95: compute HD95 (surface distances: the slowest part).

    Returns:
        `{"classes": {name: {"dice", "cldice", "hd95", "truth_voxels", "pred_voxels"}}, "av_confusion",
        "both_vessel_voxels"}`.
    """
    p, t = _array(pred, "pred"), _array(truth, "truth")
    if p.shape != t.shape:
        raise ValueError(f"pred shape {tuple(p.shape)} differs from truth shape {tuple(t.shape)}")
    scored = _classes(classes)
    distances: dict[str, Any] = {}
    if hd95:
        if spacing is None:
            raise ValueError("vessel_metrics: HD95 needs the voxel spacing (or pass hd95=False)")
        from medvl3d.eval.seg_metrics import segmentation_metrics

        distances = segmentation_metrics(p.astype(np.int64), t.astype(np.int64), spacing, scored)
    per_class = {}
    for c, name in scored.items():
        pm, tm = p == c, t == c
        per_class[name] = {
            "dice": _dice(pm, tm),
            "cldice": cldice(pm, tm),
            "hd95": distances[name].hd95 if name in distances else None,
            "truth_voxels": int(tm.sum()),
            "pred_voxels": int(pm.sum()),
        }
    confusion, n_both = av_confusion(p, t, list(scored))
    return {"classes": per_class, "av_confusion": confusion, "both_vessel_voxels": n_both}


def _mean(values: Sequence[float | None]) -> float | None:
    v = [x for x in values if x is not None and math.isfinite(x)]
    return float(np.mean(v)) if v else None


def summarise_vessels(per_case: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    """Means over cases of the defined values: `<metric>_<class>` per class, `<metric>` the mean over
    classes of those, and `av_confusion`.

    Raises:
        ValueError: an empty list, or cases that score different classes.
    """
    if not per_case:
        raise ValueError("no cases to summarise")
    names = list(per_case[0]["classes"])
    for i, case in enumerate(per_case):
        if list(case["classes"]) != names:
            raise ValueError(f"case {i} scores classes {list(case['classes'])}, case 0 scores {names}")
    out: dict[str, float | None] = {}
    for metric in VESSEL_METRICS:
        means = [_mean([case["classes"][n][metric] for case in per_case]) for n in names]
        for name, m in zip(names, means):
            out[f"{metric}_{name}"] = m
        out[metric] = _mean(means)
    out["av_confusion"] = _mean([case["av_confusion"] for case in per_case])
    return out
