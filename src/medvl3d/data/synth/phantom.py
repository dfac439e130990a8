"""Torso anatomy of a SynthCT-VL case: organ label map and HU volume before noise and blur.

The body is a deformable template in world millimetres (RAS, origin at the body centre, z = 0 near
the diaphragm): body wall with fat and muscle, spine and ribs, lungs under diaphragm domes, heart,
aorta, liver, spleen, kidneys, pancreas, stomach and colon. Each case draws new proportions and
positions, and a smooth random displacement field bends every organ surface, so no two cases have
the same shapes. Organs are evaluated only inside their bounding boxes (see `geometry`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .geometry import Grid, Segment, ellipsoid_level, rasterise_segments, smooth_field, tubes
from .variation import WideParams

#: Organ label ids of the `_organs.nii.gz` maps (also written to `labels.json` and `dataset.json`).
ORGAN_LABELS: dict[int, str] = {
    1: "liver",
    2: "spleen",
    3: "kidney_right",
    4: "kidney_left",
    5: "pancreas",
    6: "lung_right",
    7: "lung_left",
    8: "heart",
    9: "aorta",
    10: "colon",
    11: "stomach",
    12: "vertebrae",
    13: "ribs",
    14: "skeletal_muscle",
    15: "subcutaneous_fat",
}
ORGAN_IDS: dict[str, int] = {v: k for k, v in ORGAN_LABELS.items()}

#: Which organ label ids a lesion organ of the Malenia schema may occupy.
LESION_ORGAN_IDS: dict[str, tuple[int, ...]] = {
    "liver": (1,),
    "spleen": (2,),
    "kidney": (3, 4),
    "pancreas": (5,),
    "lung": (6, 7),
    "colon": (10,),
}

#: Tissue HU as (non-contrast, portal-venous contrast). Sources: typical adult values in radiology
#: texts; the docs page compares the rendered organ means with a real CT.
TISSUE_HU: dict[str, tuple[float, float]] = {
    "air": (-1000, -1000),
    "lung": (-865, -855),
    "fat": (-100, -100),
    "muscle": (50, 60),
    "liver": (55, 110),
    "spleen": (45, 120),
    "kidney": (35, 160),
    "kidney_medulla": (35, 110),
    "pancreas": (40, 100),
    "blood": (40, 150),
    "aorta": (40, 170),
    "pulmonary_vessel": (40, 210),
    "myocardium": (45, 100),
    "bone_cortex": (450, 450),
    "bone_cancellous": (160, 160),
    "rib": (520, 520),
    "disc": (80, 80),
    "csf": (10, 10),
    "bowel_wall": (40, 85),
    "stool": (-40, -40),
    "fluid": (10, 10),
    "airway_wall": (20, 30),
}


def tissue_hu(name: str, phase: str) -> float:
    """HU of a tissue in the given phase ("non-contrast" or "contrast-enhanced")."""
    return float(TISSUE_HU[name][1 if phase == "contrast-enhanced" else 0])


@dataclass
class Anatomy:
    """One case's torso: label map, HU volume (pre noise/blur) and the landmarks later stages need."""

    grid: Grid
    phase: str
    organs: np.ndarray  # uint8 (W, H, D), ORGAN_LABELS ids
    ct: np.ndarray  # float32 HU, no noise or blur yet
    landmarks: dict = field(default_factory=dict)
    tubes: dict = field(default_factory=dict)  # name -> list[Segment]
    hu_table: dict | None = None  # per-case tissue HU (wide variation); None: TISSUE_HU by phase

    def mask(self, *names: str) -> np.ndarray:
        """Boolean mask of one or more organs by name."""
        return np.isin(self.organs, [ORGAN_IDS[n] for n in names])

    def hu(self, tissue: str) -> float:
        if self.hu_table is not None:
            return self.hu_table[tissue]
        return tissue_hu(tissue, self.phase)


def _polyline(points, radii) -> list[Segment]:
    pts = [np.asarray(p, dtype=np.float32) for p in points]
    return [Segment(pts[i], pts[i + 1], float(radii[i]), float(radii[i + 1])) for i in range(len(pts) - 1)]


class _Painter:
    """Writes tissues into the label map and HU volume within boxes (later paint wins)."""

    def __init__(self, anat: Anatomy, coords):
        self.a = anat
        self.x, self.y, self.z = coords  # deformed world coordinates, full volume

    def sub(self, lo, hi):
        sl = self.a.grid.box(lo, hi)
        if sl is None:
            return None, (None, None, None)
        return sl, (self.x[sl], self.y[sl], self.z[sl])

    def paint(self, sl, mask, hu: float | np.ndarray | None, label: int | None) -> None:
        if hu is not None:
            ct = self.a.ct[sl]
            ct[mask] = hu[mask] if isinstance(hu, np.ndarray) else hu
        if label is not None:
            self.a.organs[sl][mask] = label


def diaphragm_height(x, y, lm: dict):
    """z (mm) of the diaphragm surface under world point (x, y): two domes, lower laterally/posteriorly."""
    w_right = 1.0 / (1.0 + np.exp(-x / 25.0))  # smooth transition between the domes at the midline
    side_top = lm["dome_left"] + (lm["dome_right"] - lm["dome_left"]) * w_right
    # A smaller radius of curvature (wide variation) gives deeper posterior and lateral recesses.
    return side_top - ((np.abs(x) - 65.0) ** 2 + (y - 5.0) ** 2) / (2.0 * lm.get("diaphragm_radius", 105.0))


def build_anatomy(
    grid: Grid,
    rng: np.random.Generator,
    phase: str,
    *,
    heart_scale: float = 1.0,
    hiatal_hernia: bool = False,
    wide: WideParams | None = None,
) -> Anatomy:
    """Draw one torso phantom on `grid`.

    Args:
        grid: the voxel grid (RAS, mm).
        rng: the case's random generator (all randomness comes from it, for determinism).
        phase: "non-contrast" or "contrast-enhanced".
        heart_scale: > 1 enlarges the heart (cardiomegaly).
        hiatal_hernia: pull part of the stomach through the hiatus above the diaphragm.
        wide: the per-case draws of the wide variation (HU table, habitus, surroundings); None draws
            the standard phantom.
    """
    shape = grid.shape
    anat = Anatomy(
        grid=grid,
        phase=phase,
        organs=np.zeros(shape, np.uint8),
        ct=np.full(shape, -1000.0, np.float32),
        hu_table=None if wide is None else wide.hu,
    )
    u = rng.uniform
    sx, sy = u(0.92, 1.08), u(0.9, 1.1)
    if wide is not None:
        sx, sy = sx * wide.habitus[0], sy * wide.habitus[1]
    lm = anat.landmarks
    lm["dome_right"] = u(5, 20)
    lm["dome_left"] = lm["dome_right"] - u(5, 15)
    lm["carina"] = np.array([u(-4, 4), u(-2, 8), u(85, 100)], np.float32)
    if wide is not None:
        lm["diaphragm_radius"] = wide.diaphragm_radius
    lm["spine_y"] = -62.0 * sy
    lm["body_ab"] = (158.0 * sx, 112.0 * sy)
    if wide is not None:  # fat grows the body outwards around a cavity of the usual size
        lm["body_ab"] = (158.0 * sx + wide.fat_mm - 19.0, 112.0 * sy + wide.fat_mm - 19.0)

    # Smooth random deformation of every shape (~4-6 mm rms). Each displacement component varies
    # smoothly over the two other axes (dx = f(y, z), ...): a smooth random warp that costs three 2D
    # fields instead of three 3D ones.
    xs, ys, zs = grid.axes()
    w, h, d = shape
    amp = u(3.5, 6.0)
    dx = smooth_field(rng, (1, h, d), amplitude=amp)
    dy = smooth_field(rng, (w, 1, d), amplitude=amp)
    dz = smooth_field(rng, (w, h, 1), amplitude=amp * 0.7)
    x, y, z = xs[:, None, None] + dx, ys[None, :, None] + dy, zs[None, None, :] + dz
    p = _Painter(anat, (x, y, z))
    # A unit-variance smooth 3D field, reused as tissue texture.
    p.tex = (dx + dy + dz * np.float32(1 / 0.7)) * np.float32(1 / (amp * np.sqrt(3)))
    hu = anat.hu

    # Body wall: elliptic cross-section, subcutaneous fat, muscle ring; visceral fat inside.
    a, b = lm["body_ab"]
    if wide is None:
        r = np.sqrt((x / a) ** 2 + (y / b) ** 2)
    else:  # a deeper back: room for the spine and the paravertebral muscles behind it
        r = np.sqrt((x / a) ** 2 + (np.where(y < 0, y / wide.back_depth, y) / b) ** 2)
        lm["vertebra_radius"] = wide.vertebra_radius
    t_fat = u(8, 30) / b if wide is None else wide.fat_mm / b
    t_mus = u(8, 14) / b
    body = r < 1.0
    np.copyto(anat.ct, np.float32(hu("fat")), where=body)
    np.copyto(anat.organs, np.uint8(ORGAN_IDS["subcutaneous_fat"]), where=body & (r >= 1 - t_fat))
    wall = body & (r < 1 - t_fat) & (r >= 1 - t_fat - t_mus)
    np.copyto(anat.ct, np.float32(hu("muscle")), where=wall)
    np.copyto(anat.organs, np.uint8(ORGAN_IDS["skeletal_muscle"]), where=wall)
    r_in = 1 - t_fat - t_mus
    lm["r_inner"] = r_in

    # The diaphragm surface is a 2D height map; comparing it with the deformed z still bends it.
    zdia = diaphragm_height(xs[:, None, None], ys[None, :, None], lm)
    _thorax(anat, p, rng, r, r_in, zdia, heart_scale)
    _spine_and_ribs(anat, p, rng, r, r_in)
    if wide is None:
        _abdomen(anat, p, rng, zdia, hiatal_hernia, r)
    else:
        from .abdomen import draw_surroundings, draw_wide_abdomen

        draw_wide_abdomen(anat, p, rng, zdia, hiatal_hernia, r, wide)
        draw_surroundings(anat, r, wide, rng)
    return anat


def _thorax(anat: Anatomy, p: _Painter, rng, r, r_in, zdia, heart_scale: float) -> None:
    u, lm, hu = rng.uniform, anat.landmarks, anat.hu
    apex = lm["carina"][2] + u(70, 90)
    spine_y = lm["spine_y"]
    hc = np.array([u(-30, -18), u(15, 30), lm["dome_left"] + u(40, 50)], np.float32)
    hr = np.array([u(48, 56), u(40, 46), u(45, 52)], np.float32) * heart_scale
    hc[2] = lm["dome_left"] + hr[2] * u(0.7, 0.8)  # resting on the left dome, top below the carina
    lm["heart_centre"], lm["heart_radii"] = hc, hr
    # Work on the slab above the lowest point of the diaphragm (and the heart) only.
    g = anat.grid
    sl_h = g.box(hc - hr - 8, hc + hr + 8)
    k0 = int(np.clip(np.floor((float(zdia.min()) - 15 - g.origin[2]) / g.spacing[2]), 0, g.shape[2] - 1))
    if sl_h is not None:
        k0 = min(k0, sl_h[2].start)
    xs, ys, zs = g.axes()
    x, y, z1 = xs[:, None, None], ys[None, :, None], zs[None, None, k0:]  # undeformed, broadcast
    ct, org = anat.ct[..., k0:], anat.organs[..., k0:]
    # Thoracic cavity narrows towards the apex.
    taper = np.where(z1 < apex - 90, 1.0, np.sqrt(np.clip(1 - ((z1 - (apex - 90)) / 90.0) ** 2, 0, 1)))
    cavity = (r[..., k0:] < (r_in - 0.05) * taper) & (p.z[..., k0:] > zdia + 3) & (z1 < apex)
    # Mediastinum: widest at the hila, narrower in front and behind; its deformed edge is wavy.
    half_width = 20 + 16 * np.exp(-(((y - 5) / 50) ** 2))
    mediast = (np.abs(p.x[..., k0:] + 5) < half_width) & (y > spine_y - 25)
    lungs = cavity & ~(mediast | ((np.abs(x) < 38) & (y < spine_y + 22)))
    # Mediastinal fat fills the cavity around the heart and great vessels.
    np.copyto(ct, np.float32(hu("fat") + 10), where=cavity & ~lungs)

    # Heart: myocardial shell, blood pool, thin pericardial fat; enlarged for cardiomegaly.
    if sl_h is not None:
        hx, hy, hz = p.x[sl_h], p.y[sl_h], p.z[sl_h]
        lev = ellipsoid_level(hx, hy, hz, hc, hr)
        above = hz > zdia[sl_h[0], sl_h[1]] - 4
        peri = (lev < (1 + 4 / hr.mean()) ** 2) & above
        p.paint(sl_h, peri, hu("fat"), None)
        p.paint(sl_h, (lev < 1) & above, hu("myocardium"), ORGAN_IDS["heart"])
        p.paint(sl_h, (lev < (1 - 10 / hr.mean()) ** 2) & above, hu("blood"), None)
        lungs[sl_h[0], sl_h[1], sl_h[2].start - k0 : sl_h[2].stop - k0] &= ~peri

    # Dependent (posterior) lung is slightly denser, as in supine patients.
    lung_hu = (hu("lung") + 30 * np.clip((spine_y + 60 - y) / 80, 0, 1)).astype(np.float32) + 25 * p.tex[
        ..., k0:
    ]
    np.copyto(ct, lung_hu, where=lungs)
    side = np.where(x >= -5, ORGAN_IDS["lung_right"], ORGAN_IDS["lung_left"]).astype(np.uint8)
    np.copyto(org, np.broadcast_to(side, org.shape), where=lungs)
    lm["apex"] = apex

    # Aorta: ascending from the heart, arch, descending beside the spine into the abdomen.
    c = lm["carina"]
    asc0 = hc + np.array([u(18, 26), 5, hr[2] * 0.4])
    pts = [
        asc0,
        [asc0[0] + 2, asc0[1] - 3, c[2] + 8],
        [-8, c[1] - 5, c[2] + u(15, 22)],
        [-22, spine_y + 25, c[2] + 5],
        [-20, spine_y + 24, -40],
        [-8, spine_y + 26, -240],
    ]
    rad = [u(14, 17), 15, 13, 12, 11, 10]
    aorta = _polyline(pts, rad)
    anat.tubes["aorta"] = aorta
    box, cov, mask, _ = tubes(anat.grid, aorta)
    if box is not None:
        ct = anat.ct[box]
        ct += cov * (hu("aorta") - ct)
        anat.organs[box][mask & (cov >= 0.5)] = ORGAN_IDS["aorta"]


def _spine_and_ribs(anat: Anatomy, p: _Painter, rng, r, r_in) -> None:
    u, lm, hu = rng.uniform, anat.landmarks, anat.hu
    vy = lm["spine_y"]
    period = u(26, 32)
    phase0 = u(0, period)
    big = 1e4
    # Spine, canal and paraspinal/psoas muscles only need the box around the spine.
    sl, (x, y, z) = p.sub((-80, vy - 75, -big), (80, vy + 40, big))
    if sl is not None:
        ct, org = anat.ct[sl], anat.organs[sl]
        inner = r[sl] < r_in
        disc = np.mod(z + phase0, period) < 0.2 * period
        rv = np.sqrt(x**2 + (y - vy) ** 2)
        rad_v = lm.get("vertebra_radius", 17.0)
        body = rv < rad_v
        cortex = body & (rv >= rad_v - 3.5)
        # Posterior elements: lamina and spinous process; canal with CSF; paraspinal muscles.
        lamina = (((x / 20) ** 2 + ((y - vy + 38) / 7) ** 2) < 1) | (
            ((x / 5) ** 2 + ((y - vy + 55) / 12) ** 2) < 1
        )
        canal = (x**2 + (y - vy + 26) ** 2) < 9**2
        psoas_r = np.clip((-40 - z) / 6, 0, 24)
        for sgn in (-1, 1):
            para = ((((x - sgn * 34) / 25) ** 2 + ((y - vy + 40) / 21) ** 2) < 1) & inner
            psoas = (
                ((x - sgn * 42) / (psoas_r + 1e-3)) ** 2 + ((y - vy - 8) / (psoas_r * 0.8 + 1e-3)) ** 2
            ) < 1
            ct[para | psoas] = hu("muscle")
            org[para | psoas] = ORGAN_IDS["skeletal_muscle"]
        bone = (body | lamina) & ~disc
        ct[body & disc] = hu("disc")
        ct[bone] = hu("bone_cancellous")
        ct[(cortex | lamina) & ~disc] = hu("bone_cortex")
        org[bone] = ORGAN_IDS["vertebrae"]
        ct[canal] = hu("csf")
        org[canal] = 0

    # Ribs: oblique bands just inside the muscle wall (descending anteriorly), costal cartilage
    # gap at the front; evaluated on the thin shell only.
    rib_period = u(24, 30)
    rib_phase = u(0, rib_period)
    idx = np.nonzero((r > r_in - 0.05) & (r < r_in - 0.005))
    x, y, z = p.x[idx], p.y[idx], p.z[idx]
    zr = z + 0.35 * (y - vy)
    ribs = (
        (np.mod(zr + rib_phase, rib_period) < 0.32 * rib_period)
        & (zr > -95)
        & (zr < lm["apex"] + 10)
        & (z < lm["apex"])
        & ~((np.abs(x) < 35) & (y > 0))
    )
    sel = tuple(i[ribs] for i in idx)
    anat.ct[sel] = hu("rib")
    anat.organs[sel] = ORGAN_IDS["ribs"]
    # Sternum in the anterior midline.
    b = lm["body_ab"][1]
    ys = b * (r_in - 0.06)
    sl, (x, y, z) = p.sub((-25, ys - 15, lm["dome_right"] - 30), (25, ys + 15, lm["apex"]))
    if sl is not None:
        stern = ((x / 16) ** 2 + ((y - ys) / 7) ** 2 < 1) & (z > lm["dome_right"] - 30) & (z < lm["apex"])
        anat.ct[sl][stern] = hu("bone_cancellous") + 80
        anat.organs[sl][stern] = ORGAN_IDS["ribs"]


def _abdomen(anat: Anatomy, p: _Painter, rng, zdia, hiatal_hernia: bool, r: np.ndarray) -> None:
    u, lm, hu = rng.uniform, anat.landmarks, anat.hu
    below = p.z < zdia - 3
    spine_y = lm["spine_y"]
    texture = 6.0 * p.tex

    # Abdominal organs never overwrite the body wall, bones, lungs or heart drawn before them.
    walls = [
        ORGAN_IDS[n]
        for n in (
            "vertebrae",
            "ribs",
            "skeletal_muscle",
            "subcutaneous_fat",
            "lung_right",
            "lung_left",
            "heart",
        )
    ]

    wall_mask = np.isin(anat.organs, walls)  # these labels do not change while the abdomen is drawn

    def protected(sl):
        return wall_mask[sl]

    def organ(centre, radii, name: str, tissue: str, extra=None, keep=None):
        centre, radii = np.asarray(centre, np.float32), np.asarray(radii, np.float32)
        sl, (ox, oy, oz) = p.sub(centre - radii - 10, centre + radii + 10)
        if sl is None:
            return None, None
        m = (ellipsoid_level(ox, oy, oz, centre, radii) < 1) & below[sl]
        if extra is not None:
            m |= extra(sl, ox, oy, oz) & below[sl]
        if keep is not None:
            m &= keep(sl)
        m &= ~protected(sl)
        p.paint(sl, m, hu(tissue) + texture[sl], ORGAN_IDS[name])
        lm[name] = {"centre": centre, "radii": radii}
        return sl, m

    # Liver: right lobe under the right dome plus a left lobe across the midline.
    zr = lm["dome_right"]
    lc = [u(55, 68), u(5, 15), zr - u(60, 72)]
    lr = [u(75, 85), u(65, 75), u(68, 80)]
    llc = np.array([u(-20, -5), u(30, 42), zr - u(35, 45)], np.float32)
    llr = np.array([u(45, 60), u(32, 42), u(28, 36)], np.float32)

    def left_lobe(sl, ox, oy, oz):
        return ellipsoid_level(ox, oy, oz, llc, llr) < 1

    body_in = r < lm["r_inner"] - 0.02
    organ(lc, [lr[0], lr[1], lr[2]], "liver", "liver", extra=left_lobe, keep=lambda sl: body_in[sl])
    # Extend the liver box to the left lobe (organ() only looked at the right lobe's box).
    sl, (ox, oy, oz) = p.sub(llc - llr - 5, llc + llr + 5)
    if sl is not None:
        m = left_lobe(sl, ox, oy, oz) & below[sl] & body_in[sl] & ~protected(sl)
        p.paint(sl, m, hu("liver") + texture[sl], ORGAN_IDS["liver"])
    lm["liver_split_x"] = float(llc[0] + llr[0] * 0.55)  # falciform ligament: left vs right lobe

    zl = lm["dome_left"]
    organ(
        [-u(78, 90), spine_y + u(15, 25), zl - u(40, 50)],
        [u(26, 32), u(45, 55), u(40, 50)],
        "spleen",
        "spleen",
    )

    # Stomach: wall, fluid and an air cap anteriorly; a hernia pulls its fundus above the diaphragm.
    sc = np.array([-u(35, 50), u(30, 42), zl - u(35, 45)], np.float32)
    sr = np.array([u(38, 48), u(28, 36), u(32, 40)], np.float32)
    _stomach(anat, p, sc, sr, below & ~wall_mask, rng)
    lm["stomach"] = {"centre": sc, "radii": sr}
    if hiatal_hernia:
        hc = np.array([-8, spine_y + u(38, 45), zl + u(18, 28)], np.float32)
        hr = np.array([u(20, 26), u(16, 20), u(18, 24)], np.float32)
        # Above the diaphragm, beside the aorta: it may displace lung but never bone, aorta or heart.
        hernia_ok = ~np.isin(anat.organs, [*walls[:4], ORGAN_IDS["aorta"], ORGAN_IDS["heart"]])
        _stomach(anat, p, hc, hr, hernia_ok, rng)
        lm["hernia"] = {"centre": hc, "radii": hr}

    # Kidneys: cortex enhances more than medulla in the contrast phase.
    for side, sgn, ztop in (("right", 1, zr), ("left", -1, zl)):
        kc = [sgn * u(62, 72), spine_y + u(12, 20), ztop - u(95, 110)]
        kr = [u(24, 30), u(24, 30), u(48, 58)]
        # Perirenal fat: a fat capsule that separates the kidney from liver, spleen and bowel.
        fat_r = np.asarray(kr, np.float32) + u(5, 9)
        fsl, (fx, fy, fz) = p.sub(np.asarray(kc) - fat_r, np.asarray(kc) + fat_r)
        if fsl is not None:
            capsule = (ellipsoid_level(fx, fy, fz, np.asarray(kc, np.float32), fat_r) < 1) & below[fsl]
            capsule &= ~protected(fsl)
            p.paint(fsl, capsule, hu("fat") + texture[fsl], 0)
        sl, m = organ(kc, kr, f"kidney_{side}", "kidney")
        if sl is not None:
            lev = ellipsoid_level(p.x[sl], p.y[sl], p.z[sl], np.asarray(kc), np.asarray(kr))
            med = m & (lev < 0.4)
            p.paint(sl, med, hu("kidney_medulla") + texture[sl], None)

    # Pancreas: a tapering tube from the head (right, by the duodenum) to the tail (splenic hilum).
    zp = zr - u(90, 105)
    pts = [
        [u(22, 32), spine_y + 55, zp - 12],
        [5, spine_y + 72, zp],
        [-30, spine_y + 62, zp + 8],
        [-65, spine_y + 35, zp + 18],
    ]
    panc = _polyline(pts, [u(13, 17), u(10, 12), u(9, 11), u(7, 9)])
    _tube_organ(anat, panc, "pancreas", hu("pancreas"), texture)
    anat.tubes["pancreas"] = panc

    # Colon frame: ascending, transverse, descending, sigmoid; wall with air/stool inside.
    zc = zr - u(115, 130)
    frame = {
        "ascending colon": [[u(75, 85), spine_y + 50, -250], [u(75, 85), spine_y + 55, zc]],
        "transverse colon": [
            [u(70, 80), spine_y + 80, zc + 5],
            [0, spine_y + u(105, 120), zc - u(0, 15)],
            [-u(75, 85), spine_y + 85, zc + 20],
        ],
        "descending colon": [[-u(80, 90), spine_y + 60, zc + 15], [-u(80, 90), spine_y + 50, -215]],
        "sigmoid colon": [[-u(80, 90), spine_y + 50, -215], [-30, spine_y + 80, -250]],
    }
    segs_by_part = {}
    for part, pts in frame.items():
        rad = u(16, 24) if part == "ascending colon" else u(13, 18)
        segs_by_part[part] = _polyline(pts, [rad] * len(pts))
    _colon(anat, segs_by_part, rng)
    anat.tubes.update({f"colon:{k}": v for k, v in segs_by_part.items()})


def _stomach(anat: Anatomy, p: _Painter, c, rr, region, rng) -> None:
    hu = anat.hu
    sl, (ox, oy, oz) = p.sub(c - rr - 5, c + rr + 5)
    if sl is None:
        return
    lev = ellipsoid_level(ox, oy, oz, c, rr)
    m = (lev < 1) & region[sl]
    lumen = m & (lev < (1 - 5 / rr.mean()) ** 2)
    air = lumen & (oy > c[1] + rr[1] * rng.uniform(0.1, 0.5))
    p.paint(sl, m, hu("bowel_wall") + 5, ORGAN_IDS["stomach"])
    p.paint(sl, lumen, hu("fluid"), None)
    p.paint(sl, air, hu("air"), None)


def _tube_organ(anat: Anatomy, segs, name: str, value: float, texture) -> None:
    box, cov, mask, _ = tubes(anat.grid, segs)
    if box is None:
        return
    ct = anat.ct[box]
    ct += cov * (value + texture[box] - ct)
    anat.organs[box][mask & (cov > 0.5)] = ORGAN_IDS[name]


def _colon(anat: Anatomy, parts: dict, rng) -> None:
    segs = [s for v in parts.values() for s in v]
    box, cov, mask, _ = tubes(anat.grid, segs)
    if box is None:
        return
    inner = [Segment(s.p0, s.p1, max(s.r0 - 3.0, 1.0), max(s.r1 - 3.0, 1.0)) for s in segs]
    # Lumen on the same box as the wall (the inner tubes lie inside it).
    lumen = np.zeros(cov.shape, np.float32)
    rasterise_segments(anat.grid.sub(box), inner, lumen, np.zeros(cov.shape, bool))
    # Content: mostly gas with mottled stool, as on a typical CT.
    gas = smooth_field(rng, cov.shape, n_freq=5) > rng.uniform(-0.9, 0.1)
    content = np.where(gas, np.float32(-1000.0), np.float32(-40.0))
    ct = anat.ct[box]
    ct += cov * (anat.hu("bowel_wall") - ct)
    ct += lumen * (content - ct)
    anat.organs[box][mask & (cov > 0.5)] = ORGAN_IDS["colon"]
