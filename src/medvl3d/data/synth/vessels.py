"""Airway, pulmonary artery and pulmonary vein trees of a SynthCT-VL case.

Trees are lists of tapering cylinder segments grown by recursive branching inside each lung.
Arteries are built *from* the bronchial tree: every bronchus gets an artery of about the same
calibre running alongside it (the broncho-arterial bundle). Veins grow from the left atrium as an
independent tree whose branches are steered away from the bronchi (they run in the interlobular
septa), so on a contrast CT arteries and veins have the same HU and only their context tells them
apart, as in real CT.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .geometry import Grid, Segment, point_segment_distance, segment_arrays, tubes
from .phantom import ORGAN_IDS, Anatomy

#: Label ids of the `_vessels.nii.gz` maps.
VESSEL_LABELS: dict[int, str] = {1: "pulmonary_artery", 2: "pulmonary_vein", 3: "airway"}


@dataclass
class Trees:
    airway: list[Segment]
    artery: list[Segment]
    vein: list[Segment]
    trachea: list[Segment]


def _unit3(x: float, y: float, z: float) -> tuple[float, float, float]:
    n = math.sqrt(x * x + y * y + z * z) + 1e-9
    return x / n, y / n, z / n


def _unit(v: np.ndarray) -> np.ndarray:
    return np.array(_unit3(*v.tolist()), np.float32)


def _rotate_towards(d: np.ndarray, rng: np.random.Generator, angle: float, bias: np.ndarray) -> np.ndarray:
    """Direction `d` turned by `angle` (rad) in a random plane, then pulled a little towards `bias`.

    Plain float arithmetic: on 3-vectors it is several times faster than numpy calls, and tree
    growth makes thousands of these.
    """
    (dx, dy, dz), (bx, by, bz) = d.tolist(), bias.tolist()
    px, py, pz = rng.standard_normal(3).tolist()
    dot = px * dx + py * dy + pz * dz
    px, py, pz = _unit3(px - dot * dx, py - dot * dy, pz - dot * dz)
    c, s = math.cos(angle), math.sin(angle)
    return np.array(
        _unit3(c * dx + s * px + 0.35 * bx, c * dy + s * py + 0.35 * by, c * dz + s * pz + 0.35 * bz),
        np.float32,
    )


def _inside(anat: Anatomy, p: np.ndarray, lung_id: int) -> bool:
    idx = anat.grid.index_of(p)
    return idx is not None and anat.organs[idx] == lung_id


def _grow(
    anat: Anatomy,
    rng: np.random.Generator,
    start: np.ndarray,
    direction: np.ndarray,
    length: float,
    radius: float,
    lung_id: int,
    depth: int,
    max_depth: int,
    avoid: tuple[np.ndarray, np.ndarray] | None,
    out: list[Segment],
) -> None:
    """Grow one branch and recurse into two children until the radius or the lung runs out."""
    if depth > max_depth or radius < 0.6:
        return
    end = None
    lung_c = anat.landmarks[f"lung_centre_{lung_id}"]
    for _ in range(4):  # a few tries to stay inside the lung (and away from bronchi, for veins)
        cand = start + direction * length
        ok = _inside(anat, cand, lung_id)
        if ok and avoid is not None and depth > 0:
            ok = point_segment_distance(cand[None], avoid)[0] > radius + 8.0
        if ok:
            end = cand
            break
        to_c = lung_c - start
        direction = _rotate_towards(direction, rng, rng.uniform(0.3, 0.7), _unit(to_c))
        length *= 0.8
    if end is None:
        return
    r1 = radius * 0.92
    out.append(Segment(start.astype(np.float32), end.astype(np.float32), radius, r1, depth))
    to_c = lung_c - end
    bias = _unit(to_c) * 0.5
    for k in range(2):
        ang = rng.uniform(0.35, 0.7) * (1 if k == 0 else 1.1)
        child = _rotate_towards(direction, rng, ang, bias)
        frac = rng.uniform(0.8, 0.9) if k == 0 else rng.uniform(0.68, 0.8)
        _grow(
            anat,
            rng,
            end,
            child,
            length * rng.uniform(0.75, 0.9),
            r1 * frac,
            lung_id,
            depth + 1,
            max_depth,
            avoid,
            out,
        )


def _perpendicular(offset_dir: np.ndarray, d: np.ndarray) -> np.ndarray:
    """`offset_dir` made perpendicular to the unit direction `d` (any perpendicular when parallel)."""
    o = offset_dir - (offset_dir @ d) * d
    n = np.linalg.norm(o)
    if n < 1e-3:
        o = np.cross(d, np.array([0, 0, 1.0], np.float32))
        n = np.linalg.norm(o) + 1e-9
    return (o / n).astype(np.float32)


def _companion_tree(
    bronchi: list[Segment],
    radii: list[tuple[float, float]],
    root: np.ndarray,
    base: np.ndarray,
    gap: float,
) -> list[Segment]:
    """The arteries running beside `bronchi` (a parent before its children, as `_grow` appends them).

    Each artery is offset perpendicular to its bronchus by the two radii plus `gap` and starts where its
    parent's artery ends, so the arterial tree is connected from `root` (the hilum) to its periphery, like
    the bronchial tree it follows. `radii` are the arteries' own radii (a dilated bronchus keeps a normal
    artery beside it: the "signet ring" of bronchiectasis).
    """
    ends: dict[tuple[float, ...], tuple[np.ndarray, np.ndarray]] = {}
    out = []
    for seg, (r0, r1) in zip(bronchi, radii):
        start, prev = ends.get(_key(seg.p0), (root, base))
        o = _perpendicular(prev, seg.direction)
        end = (seg.p1 + o * (seg.r1 + r1 + gap)).astype(np.float32)
        out.append(Segment(np.asarray(start, np.float32), end, r0, r1, seg.depth))
        ends[_key(seg.p1)] = (end, o)
    return out


def _key(p: np.ndarray) -> tuple[float, ...]:
    return tuple(np.round(np.asarray(p, np.float64), 3).tolist())


def build_trees(anat: Anatomy, rng: np.random.Generator, *, bronchiectasis: bool = False) -> Trees:
    """Grow airway, artery and vein trees for both lungs of `anat`."""
    lm = anat.landmarks
    c = lm["carina"].astype(np.float32)
    for lung in ("lung_right", "lung_left"):
        lid = ORGAN_IDS[lung]
        pts = np.argwhere(anat.organs[::2, ::2, ::2] == lid) * 2
        centre = np.asarray(anat.grid.origin) + pts.mean(0) * np.asarray(anat.grid.spacing) if len(pts) else c
        lm[f"lung_centre_{lid}"] = centre.astype(np.float32)
        lm[f"lung_points_{lid}"] = (
            np.asarray(anat.grid.origin) + pts * np.asarray(anat.grid.spacing)
        ).astype(np.float32)

    top = np.array([c[0], c[1] + 2, lm["apex"] + 40], np.float32)
    trachea = [Segment(top, c, 9.0, 8.0)]
    airway: list[Segment] = []
    artery: list[Segment] = []
    vein: list[Segment] = []
    hc = lm["heart_centre"]
    # Pulmonary trunk from the right ventricular outflow to the bifurcation below the arch.
    bif = np.array([c[0] - 8, c[1] + 12, c[2] - 8], np.float32)
    trunk0 = np.array(
        [hc[0] + 8, hc[1] + lm["heart_radii"][1] * 0.5, hc[2] + lm["heart_radii"][2] * 0.5], np.float32
    )
    artery.append(Segment(trunk0, bif, 13.0, 12.0))
    la = np.array([hc[0] + 10, hc[1] - lm["heart_radii"][1] * 0.6, hc[2]], np.float32)  # left atrium
    for lung, sgn in (("lung_right", 1.0), ("lung_left", -1.0)):
        lid = ORGAN_IDS[lung]
        lc = lm[f"lung_centre_{lid}"]
        main_mid = np.array([c[0] + sgn * 28, c[1] - 4, c[2] - 20], np.float32)
        # The hilum: the lung point nearest to the main bronchus, so lobar branches start inside the lung.
        main_end = _nearest_lung_point(lm, lid, main_mid, lc)
        main = Segment(c, main_mid, 7.0, 6.5)
        airway += [main, Segment(main_mid, main_end, 6.5, 6.0)]
        # Lobar roots fan out from the end of the main bronchus into the lung.
        sub: list[Segment] = []
        for k, target in enumerate(_lobar_targets(lc, sgn, rng)):
            d = target - main_end
            d = (d / np.linalg.norm(d)).astype(np.float32)
            seg_len = rng.uniform(30, 40)
            start_r = 5.5 if k == 0 else 5.0
            _grow(anat, rng, main_end, d, seg_len, start_r, lid, 0, 5, None, sub)
        radii = [(s.r0, s.r1) for s in sub]  # the arteries' calibre: that of the healthy bronchi
        if bronchiectasis:
            for s in sub:
                if s.depth >= 2 and s.p1[2] < lc[2]:
                    s.r0, s.r1 = s.r0 * 1.9, s.r1 * 2.1  # dilated, non-tapering lower-lobe bronchi
        airway.extend(sub)
        # Arteries: main pulmonary artery to the hilum, then one companion per bronchus, from the hilum on.
        hilum = main_end + np.array([0, 8, 4], np.float32)
        lm[f"artery_hilum_{lid}"] = hilum
        artery += [
            Segment(bif, main_mid + np.array([0, 10, 4], np.float32), 11.0, 10.0),
            Segment(main_mid + np.array([0, 10, 4], np.float32), hilum, 10.0, 9.0),
        ]
        artery += _companion_tree(sub, radii, hilum, np.array([0.0, 1.0, 0.3], np.float32), gap=1.5)
        # Veins: an independent tree from the left atrium, entering the lower hilum.
        vroot = np.array([c[0] + sgn * 30, c[1] - 18, c[2] - 50], np.float32)
        vroot[2] = min(vroot[2], lc[2])
        vroot_in = _nearest_lung_point(lm, lid, vroot, lc)
        vein += [Segment(la, vroot, 8.0, 7.5), Segment(vroot, vroot_in, 7.5, 7.0)]
        vroot = vroot_in
        lm[f"vein_hilum_{lid}"] = vroot_in
        vsub: list[Segment] = []
        avoid = segment_arrays(sub + [main])
        for target in _lobar_targets(lc, sgn, rng, lower=True):
            d = target - vroot
            d = (d / np.linalg.norm(d)).astype(np.float32)
            _grow(anat, rng, vroot, d, rng.uniform(30, 40), 5.0, lid, 0, 5, avoid, vsub)
        vein.extend(vsub)
    return Trees(airway=airway, artery=artery, vein=vein, trachea=trachea)


def _nearest_lung_point(lm: dict, lid: int, p: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """The lung point nearest to `p`, moved 6 mm towards the lung centre (so it is well inside)."""
    pts = lm[f"lung_points_{lid}"]
    if len(pts) == 0:
        return p
    q = pts[int(((pts - p) ** 2).sum(1).argmin())]
    return (q + 6.0 * _unit(centre - q)).astype(np.float32)


def _lobar_targets(lc: np.ndarray, sgn: float, rng, lower: bool = False) -> list[np.ndarray]:
    """Points in the upper, (middle,) and lower parts of a lung that lobar branches head for."""
    spread = [np.array([sgn * 20, 10, 60]), np.array([sgn * 35, 30, -10]), np.array([sgn * 25, -35, -60])]
    if lower:
        spread = [np.array([sgn * 30, 25, 40]), np.array([sgn * 20, -10, -50]), np.array([sgn * 40, 20, -40])]
    return [(lc + s + rng.normal(0, 6, 3)).astype(np.float32) for s in spread]


def paint_trees(anat: Anatomy, trees: Trees, vessels: np.ndarray, *, peribronchial: bool = False) -> None:
    """Render trees into the CT (partial volume) and the vessel label map (artery 1, vein 2, airway 3).

    Arteries and veins get the same HU (`pulmonary_vessel`), so only the context (bronchi beside
    arteries) separates them. Labels are kept within the lungs and the mediastinum near the hilum.
    """
    grid: Grid = anat.grid
    # Trees are drawn in the lungs and the unlabelled mediastinum (plus the heart, for the trunks).
    region = anat.mask("lung_right", "lung_left", "heart") | (anat.organs == 0)
    vessel_hu = anat.hu("pulmonary_vessel")
    for lab, segs in ((1, trees.artery), (2, trees.vein)):
        box, cov, m, _ = tubes(grid, segs)
        if box is None:
            continue
        reg = region[box]
        ct = anat.ct[box]
        ct += (cov * reg) * (vessel_hu - ct)
        v = vessels[box]
        v[m & reg & (v == 0)] = lab
    # Airways: soft-tissue wall then air lumen (thick walls for peribronchial thickening).
    box, cov, m, wall = tubes(grid, trees.airway + trees.trachea, wall_scale=1.9 if peribronchial else 1.35)
    if box is None:
        return
    # Bronchi pass behind the heart, never through it.
    reg = region[box] & (anat.organs[box] != ORGAN_IDS["heart"])
    ct = anat.ct[box]
    ct += (wall * (reg & (ct < -300))) * (anat.hu("airway_wall") - ct)
    ct += (cov * reg) * (anat.hu("air") - ct)
    vessels[box][m & reg] = 3
