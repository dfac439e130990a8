"""Placing and rendering lesions whose appearance follows their Malenia attributes.

Each attribute changes the image: density sets the HU relative to the organ (or the lung's own
scale: ground-glass, solid, calcified, part-solid), shape switches between an ellipsoid and a
lobulated/irregular surface (noise on the signed distance), homogeneity adds internal texture and a
necrotic core, margin turns a sharp edge into a blurred one (and adds spicules in the lung),
neighbour relation places the lesion deep inside the organ or across its boundary, and location
picks the lobe/pole/segment. The contrast attribute is the volume's phase.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .geometry import Segment, point_segment_distance, smooth_field, tubes
from .lesion_types import LesionType
from .phantom import LESION_ORGAN_IDS, ORGAN_IDS, Anatomy

_ORGAN_TISSUE = {
    "liver": "liver",
    "spleen": "spleen",
    "kidney": "kidney",
    "pancreas": "pancreas",
    "colon": "bowel_wall",
    "lung": "lung",
}
_LUNG_HU = {"ground-glass": -620.0, "solid": 35.0, "calcified": 380.0, "part-solid": -600.0}
SEPARATE, INVADING = "separate from neighbouring organs", "invading neighbouring organs"


@dataclass
class Lesion:
    """A rendered lesion: its instance id in the lesion map and its ground-truth description."""

    id: int
    type: str
    organ: str
    attributes: dict[str, str]
    size_mm: float
    centre_mm: tuple[float, float, float]
    organ_fraction: float  # share of the lesion mask inside its organ


def location_masks(anat: Anatomy, organ: str) -> dict[str, tuple[tuple[slice, ...], np.ndarray]]:
    """Masks (in the organ's bounding box) of every location value of a lesion organ."""
    ids = LESION_ORGAN_IDS[organ]
    full = np.isin(anat.organs, ids)
    if not full.any():
        return {}
    sl = ndimage.find_objects(full.astype(np.uint8))[0]
    m = full[sl]
    x, y, z = anat.grid.box_coords(sl)
    lm = anat.landmarks
    lab = anat.organs[sl]
    out: dict[str, np.ndarray] = {}
    if organ == "kidney":
        out = {
            "left kidney": lab == ORGAN_IDS["kidney_left"],
            "right kidney": lab == ORGAN_IDS["kidney_right"],
        }
    elif organ == "liver":
        left = np.broadcast_to(x < lm["liver_split_x"], m.shape)
        out = {"left lobe": m & left, "right lobe": m & ~left}
    elif organ == "pancreas":
        xb = np.broadcast_to(x, m.shape)
        out = {
            "pancreatic head": m & (xb > 12),
            "pancreatic body": m & (xb <= 12) & (xb > -38),
            "pancreatic tail": m & (xb <= -38),
        }
    elif organ == "spleen":
        upper = np.broadcast_to(z >= lm["spleen"]["centre"][2], m.shape)
        out = {"upper pole": m & upper, "lower pole": m & ~upper}
    elif organ == "lung":
        c = lm["carina"]
        lower = np.broadcast_to(z < (c[2] - 35) - 1.0 * (y - c[1]), m.shape)
        middle = np.broadcast_to((z < c[2] - 45) & (y > c[1] - 15), m.shape) & ~lower
        right, left = lab == ORGAN_IDS["lung_right"], lab == ORGAN_IDS["lung_left"]
        out = {
            "left upper lobe": left & ~lower,
            "left lower lobe": left & lower,
            "right upper lobe": right & ~lower & ~middle,
            "right middle lobe": right & middle,
            "right lower lobe": right & lower,
        }
    elif organ == "colon":
        idx = np.argwhere(m)
        pts = np.asarray(anat.grid.origin) + (idx + [s.start for s in sl]) * np.asarray(anat.grid.spacing)
        parts = [k for k in anat.tubes if k.startswith("colon:")]
        d = np.stack([point_segment_distance(pts, anat.tubes[k]) for k in parts], 1)
        nearest = d.argmin(1)
        for j, k in enumerate(parts):
            mm = np.zeros(m.shape, bool)
            sel = idx[nearest == j]
            mm[tuple(sel.T)] = True
            out[k.split(":", 1)[1]] = mm
    return {k: (sl, v) for k, v in out.items()}


def _target_hu(anat: Anatomy, ltype: LesionType, density: str, rng: np.random.Generator) -> float:
    if ltype.hu is not None:
        return float(rng.uniform(*ltype.hu))
    if ltype.organ == "lung":
        return (
            _LUNG_HU[density] + float(rng.uniform(-20, 20)) + (15.0 if anat.phase != "non-contrast" else 0.0)
        )
    base = anat.hu(_ORGAN_TISSUE[ltype.organ])
    contrast = anat.phase == "contrast-enhanced"
    if density == "hypodense":
        return base - float(rng.uniform(45, 75) if contrast else rng.uniform(30, 50))
    if density == "hyperdense":
        return base + float(rng.uniform(35, 60))
    return base + float(rng.uniform(-6, 6))


def render_lesion(
    anat: Anatomy,
    lesion_map: np.ndarray,
    rng: np.random.Generator,
    ltype: LesionType,
    lesion_id: int,
    locations: dict,
    attrs: dict[str, str] | None = None,
) -> Lesion | None:
    """Sample attributes (unless given), place one lesion of `ltype` and render it.

    Returns None when the organ (or every allowed location) is outside the field of view or too
    small to hold the lesion; the caller then simply has one lesion fewer.
    """
    grid = anat.grid
    usable = {k for k, (sl, m) in locations.items() if m.sum() >= 4}
    if not usable:
        return None
    a = dict(attrs or {})
    a["contrast"] = anat.phase
    for attr in ("location", "shape", "density", "homogeneity", "margin", "neighbor_relation"):
        if attr not in a:
            a[attr] = ltype.sample(rng, attr, allowed=usable if attr == "location" else None)
    if a["location"] not in usable:
        return None
    sl, region = locations[a["location"]]
    organ_mask = np.isin(anat.organs[sl], LESION_ORGAN_IDS[ltype.organ])
    size = float(rng.uniform(*ltype.size_mm))
    r = size / 2
    # Depth of every organ voxel below the organ surface (mm), on the organ's box only.
    depth = ndimage.distance_transform_edt(np.pad(organ_mask, 1), sampling=grid.spacing)[1:-1, 1:-1, 1:-1]
    free = region & (lesion_map[sl] == 0)
    if ltype.organ == "colon":
        cand = free & (depth <= 5.0) & (depth >= (0.5 if a["neighbor_relation"] == INVADING else 2.0))
    elif a["neighbor_relation"] == INVADING:
        cand = free & (depth >= 0.3 * r) & (depth <= max(0.8 * r, 0.3 * r + min(grid.spacing)))
    else:
        need = min(r * 0.95, float(depth[free].max()) if free.any() else 0.0)
        cand = free & (depth >= need)
        if need < r * 0.5:  # organ too thin for a deep lesion: shrink it to fit
            r = max(need, min(grid.spacing))
            size = 2 * r
    idx = np.argwhere(cand)
    if len(idx) == 0:
        return None
    ci = idx[int(rng.integers(len(idx)))]
    centre = np.asarray(grid.origin) + (ci + [s.start for s in sl]) * np.asarray(grid.spacing)

    radii = np.array([r, r * rng.uniform(0.75, 1.0), r * rng.uniform(0.75, 1.0)])[rng.permutation(3)]
    pad = 6.0 + r * 0.6
    box = grid.box(centre - radii - pad, centre + radii + pad)
    if box is None:
        return None
    x, y, z = grid.box_coords(box)
    lev = np.sqrt(
        ((x - centre[0]) / radii[0]) ** 2
        + ((y - centre[1]) / radii[1]) ** 2
        + ((z - centre[2]) / radii[2]) ** 2
    )
    sdf = (lev - 1.0) * r  # approximate signed distance to the surface, mm
    bshape = lev.shape
    if a["shape"] == "irregular":
        sdf = sdf + smooth_field(rng, bshape, n_freq=4, amplitude=r * rng.uniform(0.22, 0.32))
    vox = min(grid.spacing)
    if a["margin"] == "well-defined":
        alpha = np.clip(0.5 - sdf / vox, 0, 1)
    else:  # ill-defined / spiculated: the lesion fades into the parenchyma over a few mm
        alpha = 1.0 / (1.0 + np.exp(np.clip(sdf / rng.uniform(1.8, 3.0), -30, 30)))
    inside = sdf < 0
    hu = _target_hu(anat, ltype, a["density"], rng)
    target = np.full(bshape, hu, np.float32)
    if a["homogeneity"] == "heterogeneous":
        target += smooth_field(rng, bshape, n_freq=5, amplitude=rng.uniform(15, 28))
        core = lev < rng.uniform(0.35, 0.55)
        target[core] -= rng.uniform(15, 35)  # necrotic / cystic centre
    if ltype.organ == "lung" and a["density"] == "part-solid":
        target[lev < 0.5] = 35.0
    ct = anat.ct[box]
    organ_box = np.isin(anat.organs[box], LESION_ORGAN_IDS[ltype.organ])
    if a["neighbor_relation"] == INVADING:
        # Crossing the organ boundary by up to half a radius into adjacent tissue (never into air).
        d_out = ndimage.distance_transform_edt(~organ_box, sampling=grid.spacing)
        allowed = (d_out <= max(0.5 * r, min(grid.spacing))) & ((anat.organs[box] != 0) | (ct > -500))
    else:
        d_out = None
        allowed = ndimage.binary_dilation(organ_box)  # a blurred margin may fade one voxel beyond
    ct[:] = ct + (alpha * allowed) * (target - ct)
    if ltype.organ == "lung" and a["margin"] == "spiculated":
        _spicules(anat, rng, centre, r, hu)

    label = inside & allowed & (lesion_map[box] == 0)
    if a["neighbor_relation"] != INVADING:
        label &= organ_box
    elif label.any() and (label & organ_box).sum() < 0.55 * label.sum():
        # On coarse grids the outside part can dominate: keep only the outside voxels nearest the organ.
        n_in = int((label & organ_box).sum())
        out_idx = np.flatnonzero(label & ~organ_box)
        keep = out_idx[np.argsort(d_out.ravel()[out_idx], kind="stable")[: int(n_in * 0.8)]]
        trimmed = label & organ_box
        trimmed.ravel()[keep] = True
        label = trimmed
    n = int(label.sum())
    if n == 0:
        return None
    lesion_map[box][label] = lesion_id
    frac = float((label & organ_box).sum()) / n
    return Lesion(
        id=lesion_id,
        type=ltype.name,
        organ=ltype.organ,
        attributes=a,
        size_mm=round(size, 0),
        centre_mm=tuple(round(float(c), 1) for c in centre),
        organ_fraction=frac,
    )


def _spicules(anat: Anatomy, rng: np.random.Generator, centre: np.ndarray, r: float, hu: float) -> None:
    """Thin radiating strands around a spiculated lung lesion (CT only; not part of the mask)."""
    segs = []
    for _ in range(int(rng.integers(6, 12))):
        d = rng.standard_normal(3)
        d /= np.linalg.norm(d)
        segs.append(
            Segment(
                (centre + d * r * 0.7).astype(np.float32),
                (centre + d * r * rng.uniform(1.5, 2.1)).astype(np.float32),
                1.0,
                0.4,
            )
        )
    box, cov, _, _ = tubes(anat.grid, segs)
    if box is None:
        return
    sub = anat.ct[box]
    lung = np.isin(anat.organs[box], LESION_ORGAN_IDS["lung"])
    sub += (0.6 * cov * lung) * (hu - sub)
