"""Volume-level abnormalities with CT-RATE names, drawn into the image.

17 of the 18 CT-RATE labels are drawn (see `DRAWN`); "Interlobular septal thickening" (a sub-voxel
reticular pattern at the default 2.75 mm in-plane spacing) is never drawn, so its label stays 0.
Each drawer changes the image the way the finding looks on CT and returns the details a report
needs (side, lobe, size in mm, station, device).
"""

from __future__ import annotations

import numpy as np

from medvl3d.schema import CTRATE_LABELS

from .geometry import Segment, ellipsoid_level, smooth_field, tubes
from .lesions import location_masks
from .phantom import ORGAN_IDS, Anatomy

#: Base prevalence of each label, measured on the 800 real CT-RATE reports of
#: `shared/data/real/ctrate_reports/train.csv` (fraction of positive labels).
PREVALENCE: dict[str, float] = {
    "Medical material": 0.15,
    "Arterial wall calcification": 0.276,
    "Cardiomegaly": 0.113,
    "Pericardial effusion": 0.08,
    "Coronary artery wall calcification": 0.223,
    "Hiatal hernia": 0.16,
    "Lymphadenopathy": 0.34,
    "Emphysema": 0.23,
    "Atelectasis": 0.28,
    "Lung nodule": 0.463,
    "Lung opacity": 0.3,
    "Pulmonary fibrotic sequela": 0.266,
    "Pleural effusion": 0.146,
    "Mosaic attenuation pattern": 0.084,
    "Peribronchial thickening": 0.089,
    "Consolidation": 0.156,
    "Bronchiectasis": 0.096,
    "Interlobular septal thickening": 0.084,
}
#: Labels the generator can draw; the others always stay 0.
DRAWN: tuple[str, ...] = tuple(n for n in CTRATE_LABELS if n != "Interlobular septal thickening")
#: Drawn before the airway/vessel trees (they change the lungs the trees grow in).
EARLY = ("Pleural effusion", "Pericardial effusion")

_LOBES = ("right upper lobe", "right middle lobe", "right lower lobe", "left upper lobe", "left lower lobe")


def _parenchyma(anat: Anatomy, vessels: np.ndarray | None) -> np.ndarray:
    m = anat.mask("lung_right", "lung_left") & (anat.ct < -500)
    if vessels is not None:
        m &= vessels == 0
    return m


def _lobe_point(anat: Anatomy, rng, lobes=_LOBES) -> tuple[str, np.ndarray] | None:
    locs = location_masks(anat, "lung")
    ok = [lb for lb in lobes if lb in locs and locs[lb][1].sum() > 20]
    if not ok:
        return None
    lobe = ok[int(rng.integers(len(ok)))]
    sl, m = locs[lobe]
    idx = np.argwhere(m)
    i = idx[int(rng.integers(len(idx)))]
    g = anat.grid
    return lobe, np.asarray(g.origin) + (i + [s.start for s in sl]) * np.asarray(g.spacing)


def _blob(anat: Anatomy, rng, centre, radii, irregular: float = 0.0):
    """Box and mask of an (optionally lobulated) ellipsoid around `centre`."""
    radii = np.asarray(radii, np.float32)
    box = anat.grid.box(centre - radii * 1.4, centre + radii * 1.4)
    if box is None:
        return None, None
    x, y, z = anat.grid.box_coords(box)
    lev = np.sqrt(ellipsoid_level(x, y, z, centre, radii))
    if irregular:
        lev = lev + smooth_field(rng, lev.shape, n_freq=4, amplitude=irregular)
    return box, lev < 1


def _side(lobe: str) -> str:
    return lobe.split()[0]


def draw_pleural_effusion(anat: Anatomy, rng, vessels=None) -> dict:
    """A dependent fluid crescent at the posterior lung base (no longer labelled lung)."""
    side = ["right", "left", "bilateral"][int(rng.choice(3, p=[0.35, 0.25, 0.4]))]
    sides = ("right", "left") if side == "bilateral" else (side,)
    thick = float(rng.uniform(12, 35))
    g = anat.grid
    _, ys, zs = g.axes()
    for s in sides:
        lung = anat.organs == ORGAN_IDS[f"lung_{s}"]
        first = np.argmax(lung, axis=1)  # most posterior lung voxel per (x, z) column
        has = lung.any(1)
        zmid = np.percentile(zs[np.nonzero(lung.any((0, 1)))[0]], 40) if has.any() else 0
        depth = (np.arange(g.shape[1])[None, :, None] - first[:, None, :]) * g.spacing[1]
        # Thickest at the base, thinning upwards (a meniscus).
        t = thick * np.clip((zmid - zs[None, None, :]) / 60.0 + 0.3, 0, 1)
        fluid = lung & has[:, None, :] & (depth < t)
        anat.ct[fluid] = anat.hu("fluid") + rng.normal(0, 3)
        anat.organs[fluid] = 0
    return {"side": side, "size_mm": round(thick)}


def draw_pericardial_effusion(anat: Anatomy, rng, vessels=None) -> dict | None:
    """A fluid rim around the heart; None when the heart is outside the field of view."""
    lm = anat.landmarks
    hc, hr = lm["heart_centre"], lm["heart_radii"]
    t = float(rng.uniform(6, 14))
    box = anat.grid.box(hc - hr - t - 2, hc + hr + t + 2)
    if box is None:
        return None
    x, y, z = anat.grid.box_coords(box)
    lev = ellipsoid_level(x, y, z, hc, hr)
    rim = (lev >= 1) & (lev < (1 + t / hr.mean()) ** 2) & (z > lm["dome_left"] - 25)
    rim &= np.isin(anat.organs[box], [0, ORGAN_IDS["lung_right"], ORGAN_IDS["lung_left"]])
    anat.ct[box][rim] = anat.hu("fluid")
    anat.organs[box][rim] = 0
    return {"size_mm": round(t)}


def draw_emphysema(anat: Anatomy, rng, vessels) -> dict:
    """Patchy very low attenuation (about -960 HU) areas, upper-lobe predominant."""
    par = _parenchyma(anat, vessels)
    field = smooth_field(rng, anat.grid.shape, n_freq=6, amplitude=1.0)
    _, _, zs = anat.grid.axes()
    upper = zs[None, None, :] > anat.landmarks["carina"][2] - 50
    emph = par & upper & (field > rng.uniform(0.1, 0.6))
    anat.ct[emph] = -965 + rng.normal(0, 8, size=int(emph.sum())).astype(np.float32)
    kind = ["centrilobular", "paraseptal", "centriacinar"][int(rng.integers(3))]
    return {"side": "bilateral", "kind": kind, "lobe": "upper lobes"}


def _lung_patch(anat, rng, vessels, hu, size, lobes=_LOBES, irregular=0.25, keep_air=True) -> dict | None:
    pick = _lobe_point(anat, rng, lobes)
    if pick is None:
        return None
    lobe, c = pick
    r = size / 2
    box, m = _blob(anat, rng, c, [r, r * rng.uniform(0.6, 1), r * rng.uniform(0.6, 1)], irregular)
    if box is None:
        return None
    par = _parenchyma(anat, vessels if keep_air else None)[box]
    if keep_air:  # air bronchograms: bronchi stay dark inside the dense area
        par &= vessels[box] != 3
    m &= par
    anat.ct[box][m] = hu + rng.normal(0, 10, size=int(m.sum())).astype(np.float32)
    return {"lobe": lobe, "side": _side(lobe), "size_mm": round(size)}


def draw_consolidation(anat, rng, vessels) -> dict | None:
    return _lung_patch(anat, rng, vessels, 30.0, rng.uniform(30, 60))


def draw_lung_opacity(anat, rng, vessels) -> dict | None:
    return _lung_patch(anat, rng, vessels, float(rng.uniform(-650, -550)), rng.uniform(20, 45))


def draw_atelectasis(anat, rng, vessels) -> dict | None:
    lobes = ("right lower lobe", "left lower lobe", "right middle lobe")
    d = _lung_patch(anat, rng, vessels, float(rng.uniform(-50, 30)), rng.uniform(15, 30), lobes, 0.35, False)
    if d:
        d["kind"] = ["subsegmental", "linear", "passive"][int(rng.integers(3))]
    return d


def draw_mosaic(anat, rng, vessels) -> dict:
    """Geographic areas of lower and higher lung attenuation side by side."""
    par = _parenchyma(anat, vessels)
    f = smooth_field(rng, anat.grid.shape, n_freq=5, amplitude=1.0)
    anat.ct[par & (f > 0.2)] += 80.0
    anat.ct[par & (f < -0.2)] -= 60.0
    return {"side": "bilateral"}


def draw_fibrotic_sequela(anat, rng, vessels) -> dict | None:
    """Linear fibrotic bands near the apices/periphery."""
    lobes = ("right upper lobe", "left upper lobe")
    pick = _lobe_point(anat, rng, lobes)
    if pick is None:
        return None
    lobe, c = pick
    segs = []
    for _ in range(int(rng.integers(2, 5))):
        d = rng.standard_normal(3)
        d /= np.linalg.norm(d)
        ln = rng.uniform(15, 35)
        segs.append(
            Segment((c - d * ln / 2).astype(np.float32), (c + d * ln / 2).astype(np.float32), 1.8, 1.4)
        )
    box, cov, _, _ = tubes(anat.grid, segs)
    if box is not None:
        ct = anat.ct[box]
        ct += (cov * _parenchyma(anat, vessels)[box]) * (-20.0 - ct)
    return {"lobe": lobe, "side": _side(lobe)}


def draw_lymphadenopathy(anat, rng, vessels) -> dict:
    """Enlarged mediastinal/hilar lymph nodes (short axis >= 11 mm)."""
    c = anat.landmarks["carina"]
    stations = {
        "right paratracheal": c + [14, 0, 18],
        "subcarinal": c + [-2, -16, -22],
        "prevascular": c + [-10, 26, 10],
        "aortopulmonary window": c + [-24, 8, 4],
        "right hilar": c + [42, 2, -26],
        "left hilar": c + [-46, 0, -28],
    }
    names = list(stations)
    chosen = [names[i] for i in sorted(rng.choice(len(names), size=int(rng.integers(1, 4)), replace=False))]
    short = float(rng.uniform(12, 24))
    ok = np.isin(anat.organs, [0, ORGAN_IDS["lung_right"], ORGAN_IDS["lung_left"]])
    for st in chosen:
        centre = np.asarray(stations[st], np.float32) + rng.normal(0, 2, 3).astype(np.float32)
        box, m = _blob(anat, rng, centre, [short / 2, short / 2 * 0.9, short / 2 * 1.4])
        if box is None:
            continue
        m &= ok[box] & (vessels[box] == 0)
        anat.ct[box][m] = anat.hu("muscle") - 10
    return {"stations": chosen, "size_mm": round(short)}


def _spots(anat, points, radius, hu) -> None:
    for p in points:
        box, m = _blob(anat, None, np.asarray(p, np.float32), [radius] * 3)
        if box is not None:
            np.maximum(anat.ct[box], np.where(m, hu, -2000), out=anat.ct[box])


def draw_arterial_calcification(anat, rng, vessels) -> dict:
    """Bright plaques on the aortic wall."""
    segs = anat.tubes["aorta"]
    pts = []
    for _ in range(int(rng.integers(4, 11))):
        s = segs[int(rng.integers(len(segs)))]
        t = rng.uniform(0, 1)
        axis_pt = s.p0 + t * (s.p1 - s.p0)
        d = rng.standard_normal(3)
        d -= d @ s.direction * s.direction
        d /= np.linalg.norm(d)
        pts.append(axis_pt + d * (s.r0 + (s.r1 - s.r0) * t))
    _spots(anat, pts, float(rng.uniform(1.5, 2.8)), float(rng.uniform(600, 900)))
    return {"site": ["aortic arch", "thoracic aorta", "aortic wall"][int(rng.integers(3))]}


def draw_coronary_calcification(anat, rng, vessels) -> dict:
    """Calcified plaques along the coronary course (atrioventricular groove / anterior interventricular)."""
    lm = anat.landmarks
    hc, hr = lm["heart_centre"], lm["heart_radii"]
    arteries = ["LAD", "circumflex", "RCA"]
    chosen = [arteries[i] for i in sorted(rng.choice(3, size=int(rng.integers(1, 4)), replace=False))]
    angles = {"LAD": (1.2, 1.9), "circumflex": (2.4, 3.2), "RCA": (-0.4, 0.6)}
    pts = []
    for a in chosen:
        for _ in range(int(rng.integers(1, 4))):
            th = rng.uniform(*angles[a])
            zz = hc[2] + hr[2] * rng.uniform(0.0, 0.45)
            k = np.sqrt(max(1 - ((zz - hc[2]) / hr[2]) ** 2, 0.05))
            pts.append([hc[0] + hr[0] * k * np.cos(th), hc[1] + hr[1] * k * np.sin(th), zz])
    _spots(anat, pts, float(rng.uniform(1.5, 2.5)), float(rng.uniform(500, 900)))
    return {"vessels": chosen}


def draw_medical_material(anat, rng, vessels) -> dict:
    """A port catheter (reservoir + line to the cavo-atrial junction) or sternotomy wires."""
    lm = anat.landmarks
    c, hc, hr = lm["carina"], lm["heart_centre"], lm["heart_radii"]
    b = lm["body_ab"][1]
    if rng.uniform() < 0.6:
        res = np.array(
            [rng.uniform(50, 70), b * (lm["r_inner"] + 0.06), c[2] + rng.uniform(20, 40)], np.float32
        )
        svc = np.array([14, c[1] + 10, c[2] + 5], np.float32)
        ra = np.array([hc[0] + hr[0] * 0.6, hc[1], hc[2] + hr[2] * 0.6], np.float32)
        segs = [Segment(res, svc, 1.3, 1.3), Segment(svc, ra, 1.3, 1.3), Segment(res, res + [6, 0, 0], 7, 7)]
        device = "port catheter"
    else:
        y0 = b * (lm["r_inner"] - 0.06)
        segs = []
        for k in range(int(rng.integers(4, 7))):
            z0 = hc[2] + hr[2] - 18 * k
            segs.append(
                Segment(np.array([-12, y0, z0], np.float32), np.array([12, y0, z0], np.float32), 1.2, 1.2)
            )
        device = "sternotomy wires"
    box, cov, _, _ = tubes(anat.grid, segs)
    if box is not None:
        ct = anat.ct[box]
        np.maximum(ct, ct + cov * (2500.0 - ct), out=ct)
    return {"device": device}


#: name -> drawer for the image-stage abnormalities (anatomy/tree-stage ones are parameters).
DRAWERS = {
    "Pleural effusion": draw_pleural_effusion,
    "Pericardial effusion": draw_pericardial_effusion,
    "Emphysema": draw_emphysema,
    "Consolidation": draw_consolidation,
    "Lung opacity": draw_lung_opacity,
    "Atelectasis": draw_atelectasis,
    "Mosaic attenuation pattern": draw_mosaic,
    "Pulmonary fibrotic sequela": draw_fibrotic_sequela,
    "Lymphadenopathy": draw_lymphadenopathy,
    "Arterial wall calcification": draw_arterial_calcification,
    "Coronary artery wall calcification": draw_coronary_calcification,
    "Medical material": draw_medical_material,
}
