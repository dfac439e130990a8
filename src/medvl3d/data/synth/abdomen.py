"""The abdomen of the wide variation: organ shapes and surroundings that real scans vary.

Compared with the standard phantom (`phantom._abdomen`), every organ gets a random size, position and
orientation and a lobulated surface (smooth noise on its level set), and the organs get the structure
that tells them apart from other soft tissue of the same HU in real CT:
- liver: right, left and caudate lobes, hepatic and portal vein branches inside (labelled liver), the
  intrahepatic IVC and the gallbladder cut out of it (background), fatty liver in some cases;
- spleen: crescent with a concave hilar surface, lobulated, from small to splenomegaly;
- kidneys (drawn first: liver, spleen and stomach wrap around them): tilted bean shapes with a hilum
  opening antero-medially, renal sinus and pelvis (background), cortex and medullary pyramids that
  separate in the arterial phase, renal vessels, excreted contrast in the delayed phase, perirenal fat;
- posterior wall: a deeper back with erector spinae and quadratus lumborum beside the spine;
- pancreas: lobulated tube with fatty infiltration;
- unlabelled look-alikes: IVC, portal / splenic / superior mesenteric veins, duodenum, small-bowel
  loops (fluid, gas, oral contrast or collapsed), a stomach that is distended, food-filled or collapsed;
- outside the body: arms beside the torso and the CT table, in some cases.
All coordinates are template millimetres (the case's patient size scales the grid, not these numbers).
"""

from __future__ import annotations

import numpy as np

from .geometry import Segment, ellipsoid_level, rasterise_segments, smooth_field, tubes
from .phantom import ORGAN_IDS, Anatomy, _polyline, _stomach
from .variation import WideParams

_WALLS = ("vertebrae", "ribs", "skeletal_muscle", "subcutaneous_fat", "lung_right", "lung_left", "heart")


def rotation(yaw: float, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """Rotation matrix: roll about x, then pitch about y, then yaw about z (radians)."""
    cz, sz, cy, sy, cx, sx = (
        np.cos(yaw),
        np.sin(yaw),
        np.cos(pitch),
        np.sin(pitch),
        np.cos(roll),
        np.sin(roll),
    )
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    return (rz @ ry @ rx).astype(np.float32)


def local_coords(x, y, z, centre, rot: np.ndarray):
    """Coordinates of (broadcastable) world points in a frame centred at `centre` with axes `rot` columns."""
    dx, dy, dz = x - centre[0], y - centre[1], z - centre[2]
    return tuple(rot[0, k] * dx + rot[1, k] * dy + rot[2, k] * dz for k in range(3))


def lobulated(level: np.ndarray, rng: np.random.Generator, amp: float, n_freq: int = 5) -> np.ndarray:
    """A level set (< 1 inside) with a bumpy surface: multiplied by 1 + amp * smooth noise."""
    if amp <= 0 or level.size == 0 or min(level.shape) < 2:
        return level
    return level * (1.0 + amp * smooth_field(rng, level.shape, n_freq=n_freq))


class _Wide:
    """Shared state while one wide abdomen is painted (painter, masks, per-case HU)."""

    def __init__(self, anat: Anatomy, p, rng, zdia, r: np.ndarray, wide: WideParams):
        self.a, self.p, self.rng, self.w = anat, p, rng, wide
        self.lm = anat.landmarks
        self.below = p.z < zdia - 3
        self.r = r
        self.body_in = r < self.lm["r_inner"] - 0.02
        self.wall_mask = np.isin(anat.organs, [ORGAN_IDS[n] for n in _WALLS])
        self.reserved = np.zeros(anat.organs.shape, bool)  # unlabelled structures bowel must not cover
        self.fine = smooth_field(rng, anat.organs.shape, n_freq=9, amplitude=1.0)

    def hu(self, tissue: str) -> float:
        return self.a.hu(tissue)

    def texture(self, sl, amp: float) -> np.ndarray:
        return amp * (0.6 * self.p.tex[sl] + 0.8 * self.fine[sl])

    def solid(self, centre, radii, rot, lob: float, margin: float = 12.0):
        """(box, local coords, lobulated level) of a rotated ellipsoid; box None outside the grid."""
        centre = np.asarray(centre, np.float32)
        reach = float(np.max(radii)) * (1 + 2 * lob) + margin
        sl, (ox, oy, oz) = self.p.sub(centre - reach, centre + reach)
        if sl is None:
            return None, (None, None, None), None
        lx, ly, lz = local_coords(ox, oy, oz, centre, rot)
        lev = (lx / radii[0]) ** 2 + (ly / radii[1]) ** 2 + (lz / radii[2]) ** 2
        lev = np.broadcast_to(lev, self.a.organs[sl].shape)
        return sl, (lx, ly, lz), lobulated(lev, self.rng, lob)

    def paint_tubes(self, segs, hu: float, label: int | None, allowed=None, reserve=True) -> None:
        """Partial-volume tubes of one HU; `allowed(box)` limits where they may paint."""
        box, cov, mask, _ = tubes(self.a.grid, segs)
        if box is None:
            return
        ok = ~self.wall_mask[box] if allowed is None else allowed(box)
        cov = cov * ok
        ct = self.a.ct[box]
        ct += cov * (hu - ct)
        sel = mask & (cov >= 0.5)
        if label is not None:
            self.a.organs[box][sel] = label
        if reserve:
            self.reserved[box] |= sel


def draw_wide_abdomen(
    anat: Anatomy, p, rng, zdia, hiatal_hernia: bool, r: np.ndarray, wide: WideParams
) -> None:
    """Paint the abdomen of a wide-variation case (see the module docstring)."""
    s = _Wide(anat, p, rng, zdia, r, wide)
    _ivc_path(s)
    _back_muscles(s)
    # Kidneys first: liver, spleen and stomach then wrap around them (renal impressions), as organs
    # do not interpenetrate.
    for side in ("right", "left"):
        _kidney(s, side)
    _liver(s)
    _spleen(s)
    _stomach_wide(s, hiatal_hernia)
    _pancreas_and_veins(s)
    _colon_wide(s)
    _small_bowel(s)


def _liver(s: _Wide) -> None:
    u, lm = s.rng.uniform, s.lm
    zr = lm["dome_right"]
    size = u(0.85, 1.2)
    rc = np.array([u(50, 70), u(0, 18), zr - u(55, 72) * size], np.float32)
    rr = np.array([u(68, 88), u(60, 78), u(62, 85)], np.float32) * size
    lc = np.array([u(-28, -5), u(28, 46), zr - u(30, 45)], np.float32)
    lr = np.array([u(38, 66), u(26, 40), u(22, 36)], np.float32) * u(0.75, 1.15) * size
    top = lm["ivc_top"]
    cc = np.array([top[0] - u(2, 8), top[1] + u(0, 8), zr - u(45, 60)], np.float32)
    cr = np.array([u(14, 22), u(14, 20), u(22, 32)], np.float32)
    lob = u(0.04, 0.14)
    liver_hu = s.hu("liver")
    # Medial edge of the right lobe: near the midline under the dome, moving right lower down, so
    # the inferior liver is the right lobe's tip beside the kidney and colon, not a whole-width block.
    x_med0, slope = u(-25, 5), u(0.35, 0.8)
    for k, (centre, radii, yaw) in enumerate(
        ((rc, rr, u(-0.25, 0.25)), (lc, lr, u(-0.3, 0.3)), (cc, cr, 0.0))
    ):
        sl, _, lev = s.solid(centre, radii, rotation(yaw), lob)
        if sl is None:
            continue
        m = (lev < 1) & s.below[sl] & s.body_in[sl] & ~s.wall_mask[sl] & ~s.reserved[sl]
        if k == 0:
            m &= s.p.x[sl] > x_med0 + slope * np.clip(zr - 40 - s.p.z[sl], 0, None) + 8 * s.fine[sl]
        p_hu = liver_hu + s.texture(sl, u(3, 8))
        s.p.paint(sl, m, p_hu, ORGAN_IDS["liver"])
    lm["liver"] = {"centre": rc, "radii": rr}
    lm["liver_split_x"] = float(lc[0] + lr[0] * 0.55)
    _liver_vessels(s, rc, rr, lc, cc)
    # Gallbladder under the right lobe (absent after cholecystectomy): bile, thin enhancing wall.
    if u() < 0.85:
        gc = np.array([rc[0] - u(15, 35), rc[1] + u(15, 40), rc[2] - rr[2] * u(0.35, 0.6)], np.float32)
        gr = np.array([u(10, 20), u(10, 20), u(22, 42)], np.float32)
        sl, _, lev = s.solid(gc, gr, rotation(u(-0.5, 0.5), u(-0.5, 0.2)), 0.03)
        if sl is not None:
            m = (lev < 1) & s.below[sl] & s.body_in[sl] & ~s.wall_mask[sl]
            s.p.paint(sl, m, s.hu("bowel_wall"), 0)
            s.p.paint(sl, m & (lev < 0.7), s.hu("bile"), 0)
            s.reserved[sl] |= m


def _branches(rng, start, direction, length, radius, depth: int, spread: float = 0.7) -> list[Segment]:
    """A random vessel tree: a tapering segment that splits in two, `depth` times."""
    d = np.asarray(direction, np.float32)
    d = d / (np.linalg.norm(d) + 1e-9)
    end = np.asarray(start, np.float32) + d * length
    segs = [Segment(np.asarray(start, np.float32), end, radius, radius * 0.8, depth)]
    if depth > 0:
        for _ in range(2):
            nd = d + spread * rng.normal(size=3).astype(np.float32)
            segs += _branches(rng, end, nd, length * rng.uniform(0.55, 0.8), radius * 0.7, depth - 1, spread)
    return segs


def _ivc_path(s: _Wide) -> None:
    """The inferior vena cava's course (painted with the liver): right of the aorta, into the liver."""
    u, lm = s.rng.uniform, s.lm
    zr, spine_y = lm["dome_right"], lm["spine_y"]
    top = np.array([u(12, 26), spine_y + u(38, 52), zr - u(5, 15)], np.float32)
    ivc = [
        top,
        [top[0] + 2, top[1] - 5, zr - 70],
        [u(18, 26), spine_y + u(26, 34), -150],
        [u(15, 24), spine_y + u(24, 30), -260],
    ]
    lm["ivc_top"] = top
    lm["ivc"] = _polyline(ivc, [u(9, 13)] * 4)


def _liver_vessels(s: _Wide, rc, rr, lc, cc) -> None:
    """Hepatic veins to the IVC, portal branches from the hilum, the IVC along the caudate lobe."""
    u, lm, a = s.rng.uniform, s.lm, s.a
    ivc_top = lm["ivc_top"]
    liver = ORGAN_IDS["liver"]

    def in_liver(box):
        return a.organs[box] == liver

    hv = []
    for target in (rc + [rr[0] * 0.4, -rr[1] * 0.1, 0], rc + [-rr[0] * 0.1, rr[1] * 0.5, 0], lc):
        hv += _branches(s.rng, ivc_top, np.asarray(target) - ivc_top + [0, 0, -25], u(35, 55), u(4, 6), 2)
    s.paint_tubes(hv, s.hu("hepatic_vein"), None, allowed=in_liver, reserve=False)
    hilum = np.array([rc[0] - rr[0] * u(0.45, 0.6), rc[1] + u(0, 15), rc[2] - u(0, 15)], np.float32)
    pv = []
    for target in (rc + [rr[0] * 0.5, -rr[1] * 0.3, u(0, 20)], lc + [0, 0, u(-10, 10)]):
        pv += _branches(s.rng, hilum, np.asarray(target) - hilum, u(30, 45), u(5, 7), 2)
    s.paint_tubes(pv, s.hu("portal_vein"), None, allowed=in_liver, reserve=False)
    lm["porta_hepatis"] = hilum
    # The IVC is not liver: it cuts into the caudate lobe behind it.
    # (unenhanced in the arterial phase, like the hepatic veins that drain into it).
    s.paint_tubes(
        lm["ivc"], s.hu("hepatic_vein"), 0, allowed=lambda box: ~s.wall_mask[box] & ~s.reserved[box]
    )


def _spleen(s: _Wide) -> None:
    u, lm = s.rng.uniform, s.lm
    zl, spine_y = lm["dome_left"], lm["spine_y"]
    size = float(np.exp(u(np.log(0.8), np.log(1.6))))
    c = np.array([-u(72, 95), spine_y + u(15, 38), zl - u(35, 55) * size], np.float32)
    rad = np.array([u(24, 36), u(45, 65), u(40, 60)], np.float32) * np.array([1.0, size, size], np.float32)
    rad[0] *= min(size, 1.25)
    yaw = u(0.35, 0.9)  # long axis along the postero-lateral wall, hilum antero-medial
    rot = rotation(yaw, u(-0.3, 0.3), u(-0.2, 0.2))
    sl, (lx, ly, lz), lev = s.solid(c, rad, rot, u(0.06, 0.2), margin=20)
    lm["spleen"] = {"centre": c, "radii": rad}
    if sl is None:
        return
    # Concave hilar (medial) surface: a second ellipsoid bites into the inner side.
    bite = (
        ((lx - rad[0] * u(1.35, 1.8)) / (rad[0] * u(0.7, 0.95))) ** 2
        + (ly / (rad[1] * 0.7)) ** 2
        + (lz / (rad[2] * 0.75)) ** 2
    )
    m = (lev < 1) & ~(bite < 1) & s.below[sl] & s.body_in[sl] & ~s.wall_mask[sl] & ~s.reserved[sl]
    s.p.paint(sl, m, s.hu("spleen") + s.texture(sl, u(2, 6)), ORGAN_IDS["spleen"])


def _stomach_wide(s: _Wide, hiatal_hernia: bool) -> None:
    """Stomach distended (gas and fluid), food-filled or collapsed (thick soft-tissue wall)."""
    u, lm, a, p = s.rng.uniform, s.lm, s.a, s.p
    zl, spine_y = lm["dome_left"], lm["spine_y"]
    sc = np.array([-u(30, 55), u(20, 45), zl - u(30, 50)], np.float32)
    state = u()
    sr = np.array([u(30, 50), u(22, 38), u(28, 42)], np.float32) * (0.7 if state < 0.3 else 1.0)
    lm["stomach"] = {"centre": sc, "radii": sr}
    region = s.below & ~s.wall_mask & ~(a.organs == ORGAN_IDS["spleen"]) & s.body_in & ~s.reserved
    if state >= 0.3:
        _stomach(a, p, sc, sr, region, s.rng)
        if state > 0.75:  # food: mottled content instead of fluid
            sl, (ox, oy, oz) = p.sub(sc - sr, sc + sr)
            if sl is not None:
                lev = ellipsoid_level(ox, oy, oz, sc, sr)
                m = (lev < (1 - 6 / sr.mean()) ** 2) & (a.ct[sl] > -500) & region[sl]
                a.ct[sl][m] = (s.hu("stool") + 40 + 35 * smooth_field(s.rng, m.shape, n_freq=6))[m]
    else:
        sl, (ox, oy, oz) = p.sub(sc - sr - 5, sc + sr + 5)
        if sl is not None:
            lev = lobulated(ellipsoid_level(ox, oy, oz, sc, sr), s.rng, 0.08)
            m = (lev < 1) & region[sl]
            s.p.paint(sl, m, s.hu("bowel_wall") + 3 * s.fine[sl], ORGAN_IDS["stomach"])
            s.p.paint(sl, m & (lev < 0.15), s.hu("fluid"), None)
    if hiatal_hernia:
        hc = np.array([-8, spine_y + u(38, 45), zl + u(18, 28)], np.float32)
        hr = np.array([u(20, 26), u(16, 20), u(18, 24)], np.float32)
        walls4 = [ORGAN_IDS[n] for n in _WALLS[:4]]
        hernia_ok = ~np.isin(a.organs, [*walls4, ORGAN_IDS["aorta"], ORGAN_IDS["heart"]])
        _stomach(a, p, hc, hr, hernia_ok, s.rng)
        lm["hernia"] = {"centre": hc, "radii": hr}


def _back_muscles(s: _Wide) -> None:
    """Erector spinae behind the spine and quadratus lumborum behind the kidneys (skeletal muscle)."""
    u, lm, a = s.rng.uniform, s.lm, s.a
    spine_y, ztop = lm["spine_y"], min(lm["dome_right"], lm["dome_left"]) - u(50, 80)
    label = ORGAN_IDS["skeletal_muscle"]
    inside = s.r < lm["r_inner"] + 0.01
    for sgn in (1, -1):
        c = np.array([sgn * u(28, 40), spine_y - u(50, 65), 0.0], np.float32)
        rx, ry = u(28, 38), u(30, 42)
        sl, (x, y, z) = s.p.sub((c[0] - rx, c[1] - ry, -1e4), (c[0] + rx, c[1] + ry, 1e4))
        if sl is None:
            continue
        m = (((x - c[0]) / rx) ** 2 + ((y - c[1]) / ry) ** 2 < 1) & inside[sl]
        m &= (a.organs[sl] == 0) & (a.ct[sl] < -50)  # fills fat only: not bone, canal or lung
        s.p.paint(sl, m, s.hu("muscle") + s.texture(sl, 3.0), label)
        s.wall_mask[sl] |= m
    for sgn in (1, -1):
        c = np.array([sgn * u(52, 68), spine_y - u(0, 14), 0.0], np.float32)
        rx, ry = u(13, 22), u(9, 15)
        sl, (x, y, z) = s.p.sub((c[0] - rx - 5, c[1] - ry - 5, -1e4), (c[0] + rx + 5, c[1] + ry + 5, ztop))
        if sl is None:
            continue
        taper = np.clip((ztop - z) / 40.0, 0, 1)  # thin at the top (12th rib), full below
        m = ((x - c[0]) / (rx * taper + 1e-3)) ** 2 + ((y - c[1]) / (ry * taper + 1e-3)) ** 2 < 1
        m &= s.body_in[sl] & ~s.wall_mask[sl] & (z < ztop)
        s.p.paint(sl, m, s.hu("muscle") + s.texture(sl, 3.0), label)
        s.wall_mask[sl] |= m


def _kidney(s: _Wide, side: str) -> None:
    """Bean-shaped kidney: parenchyma (cortex + pyramids) around a sinus with fat, pelvis and vessels."""
    u, lm, a = s.rng.uniform, s.lm, s.a
    sgn = 1 if side == "right" else -1
    spine_y = lm["spine_y"]
    ztop = lm["dome_right"] - u(0, 25) if side == "right" else lm["dome_left"]
    size = u(0.88, 1.15)
    kc = np.array([sgn * u(62, 80), spine_y + u(12, 28), ztop - u(95, 120)], np.float32)
    kr = np.array([u(27, 35), u(24, 31), u(50, 64)], np.float32) * size
    # Local x points medially (towards the hilum); the hilum faces antero-medially; upper pole medial.
    yaw = (0.0 if sgn < 0 else np.pi) - sgn * u(0.3, 0.75)
    rot = rotation(yaw, sgn * u(0.1, 0.4), u(-0.45, 0.0))
    # Perirenal fat of uneven thickness: in places the kidney touches liver, spleen or muscle.
    fat_r = kr + u(2, 9)
    sl, (lx, ly, lz), lev_f = s.solid(kc, fat_r, rot, u(0.05, 0.14), margin=6)
    lm[f"kidney_{side}"] = {"centre": kc, "radii": kr}
    if sl is None:
        return
    ok = s.below[sl] & ~s.wall_mask[sl]
    capsule = (lev_f < 1) & ok
    s.p.paint(sl, capsule, s.hu("fat") + s.texture(sl, 4.0), 0)
    s.reserved[sl] |= capsule
    lev = ((lx / kr[0]) ** 2 + (ly / kr[1]) ** 2 + (lz / kr[2]) ** 2) * (1 + 0.04 * s.fine[sl])
    kidney = (lev < 1) & ok
    # Sinus: an inner ellipsoid shifted medially; where it reaches the medial surface is the hilum.
    sin_c = u(0.35, 0.55) * kr[0]
    sinus_lev = (
        ((lx - sin_c) / (kr[0] * u(0.5, 0.65))) ** 2
        + (ly / (kr[1] * u(0.4, 0.55))) ** 2
        + (lz / (kr[2] * u(0.5, 0.7))) ** 2
    )
    sinus = kidney & (sinus_lev < 1) | (capsule & (sinus_lev < 1) & (lx > 0))
    paren = kidney & ~sinus
    pyr = (lev < u(0.45, 0.6)) & (np.cos(np.arctan2(lz, ly) * u(5, 8) + u(0, 6.3)) > 0.0)
    label = ORGAN_IDS[f"kidney_{side}"]
    s.p.paint(sl, paren, s.hu("kidney") + s.texture(sl, 4.0), label)
    s.reserved[sl] |= kidney
    s.p.paint(sl, paren & pyr, s.hu("kidney_medulla") + s.texture(sl, 4.0), None)
    # Sinus content from pure fat to mostly soft tissue and water (vessels, calyces, little fat).
    f = u(0.25, 1.0)
    s.p.paint(sl, sinus, f * s.hu("fat") + (1 - f) * u(0, 25) + s.texture(sl, 6.0), 0)
    pr = u(0.25, 0.5)
    pelvis = sinus & (
        ((lx - sin_c * 1.2) / (kr[0] * pr)) ** 2
        + (ly / (kr[1] * pr * 0.85)) ** 2
        + (lz / (kr[2] * pr * 0.85)) ** 2
        < 1
    )
    if u() < 0.7:
        s.p.paint(sl, pelvis, s.hu("urine"), 0)
    # Renal vein to the IVC (right) or across to it in front of the aorta (left); artery from the aorta.
    hilum = kc + rot[:, 0] * kr[0] * 1.05
    ivc_x = float(s.lm["ivc"][2].p0[0]) if "ivc" in s.lm else 20.0
    vein_end = np.array([ivc_x, spine_y + 30, hilum[2] + u(0, 10)], np.float32)
    art_end = np.array([-8, spine_y + 26, hilum[2] + u(5, 20)], np.float32)
    s.paint_tubes(
        _polyline([hilum, vein_end], [u(4, 6), u(5, 7)]),
        s.hu("blood"),
        0,
        allowed=lambda box: ~s.wall_mask[box] & (a.organs[box] != label),
    )
    s.paint_tubes(
        _polyline([hilum - [0, 4, 0], art_end], [u(2.5, 3.5)] * 2),
        s.hu("aorta"),
        0,
        allowed=lambda box: (
            ~s.wall_mask[box] & (a.organs[box] != label) & (a.organs[box] != ORGAN_IDS["aorta"])
        ),
    )


def _pancreas_and_veins(s: _Wide) -> None:
    """Lobulated, partly fatty pancreas; splenic-portal venous axis and SMV behind it; duodenum."""
    u, lm, a = s.rng.uniform, s.lm, s.a
    zr, spine_y = lm["dome_right"], lm["spine_y"]
    zp = zr - u(85, 110)
    dy = u(-8, 10)
    pts = [
        [u(20, 35), spine_y + 55 + dy, zp - u(8, 20)],
        [u(0, 10), spine_y + u(65, 80) + dy, zp],
        [-u(25, 35), spine_y + u(55, 70) + dy, zp + u(4, 14)],
        [-u(55, 72), spine_y + u(28, 42) + dy, zp + u(12, 28)],
    ]
    rad = [u(11, 17), u(8, 12), u(7, 11), u(6, 10)]
    panc = _polyline(pts, rad)
    lm["pancreas"] = {"centre": np.mean(np.asarray(pts, np.float32), 0), "radii": np.array(rad, np.float32)}
    a.tubes["pancreas"] = panc
    box, cov, mask, _ = tubes(a.grid, panc)
    if box is not None:
        lob = smooth_field(s.rng, cov.shape, n_freq=7)
        cov = np.clip(cov - 0.35 * np.clip(lob, 0, None), 0, 1) * ~s.wall_mask[box]
        fat_frac = np.clip(u(0, 0.45) + 0.25 * smooth_field(s.rng, cov.shape, n_freq=8), 0, 0.9)
        val = (1 - fat_frac) * s.hu("pancreas") + fat_frac * s.hu("fat") + s.texture(box, 4.0)
        ct = a.ct[box]
        ct += cov * (val - ct)
        a.organs[box][mask & (cov > 0.5)] = ORGAN_IDS["pancreas"]
    # Splenic vein along the back of the pancreas to the portal confluence, portal vein to the hilum.
    sp = lm["spleen"]["centre"]
    conf = np.array([u(5, 15), spine_y + u(50, 60) + dy, zp + u(0, 8)], np.float32)
    splenic = [
        sp + [u(15, 25), u(0, 10), 0],
        [pts[3][0], pts[3][1] - 8, pts[3][2]],
        [pts[2][0], pts[2][1] - 10, pts[2][2]],
        conf,
    ]
    portal = [conf, lm.get("porta_hepatis", conf + [25, 5, 40])]
    smv = [
        conf,
        [conf[0] + u(0, 8), conf[1] + u(15, 25), zp - 50],
        [conf[0] + u(-5, 10), conf[1] + 25, zp - 130],
    ]
    keep_liver = lambda box: ~s.wall_mask[box] & (a.organs[box] != ORGAN_IDS["liver"])  # noqa: E731
    vein = s.hu("portal_vein")
    s.paint_tubes(_polyline(splenic, [u(4, 6)] * 4), vein, 0, allowed=keep_liver)
    s.paint_tubes(_polyline(portal, [u(6, 8)] * 2), vein, 0, allowed=keep_liver)
    s.paint_tubes(_polyline(smv, [u(4, 6)] * 3), vein, 0, allowed=keep_liver)
    sma = [
        [-6, spine_y + 30, zp + 10],
        [conf[0] - 12, conf[1] + 12, zp - 30],
        [conf[0] - 12, conf[1] + 20, zp - 120],
    ]
    s.paint_tubes(_polyline(sma, [u(3, 4.5)] * 3), s.hu("aorta"), 0, allowed=keep_liver)
    # Duodenum: C-loop around the pancreatic head.
    h = pts[0]
    duo = [
        [h[0] - 10, h[1] + 28, zp + 15],
        [h[0] + u(18, 25), h[1] + 8, zp + 5],
        [h[0] + u(18, 25), h[1], zp - u(35, 45)],
        [h[0] - 15, h[1] - 5, zp - u(45, 55)],
        [-u(15, 30), h[1], zp - u(35, 45)],
    ]
    _hollow(s, _polyline(duo, [u(9, 13)] * 5), content=_content(s))


def _content(s: _Wide) -> str:
    v = s.rng.uniform()
    return (
        "fluid"
        if v < 0.45
        else "gas"
        if v < 0.6
        else "collapsed"
        if v < 0.8
        else ("contrast" if s.w.extra.get("oral_contrast") else "fluid")
    )


def _hollow(s: _Wide, segs: list[Segment], content: str, label: int = 0) -> None:
    """A bowel loop in free visceral fat only (it never covers an organ): enhancing wall, then content.

    `content` is fluid, gas, contrast (positive oral contrast), collapsed, or colon (gas with stool).
    """
    a = s.a

    def free(box):
        return (a.organs[box] == 0) & ~s.reserved[box] & s.body_in[box] & s.below[box] & (a.ct[box] < -40)

    box, cov, mask, _ = tubes(a.grid, segs)
    if box is None:
        return
    ok = free(box)
    ct = a.ct[box]
    wall_hu = s.hu("bowel_wall") + s.texture(box, 4.0)
    ct += (cov * ok) * (wall_hu - ct)
    if content != "collapsed":
        inner = [
            Segment(g.p0, g.p1, max(g.r0 - s.rng.uniform(2, 4), 1.0), max(g.r1 - 3.0, 1.0)) for g in segs
        ]
        lumen = np.zeros(cov.shape, np.float32)
        rasterise_segments(a.grid.sub(box), inner, lumen, np.zeros(cov.shape, bool))
        if content == "colon":
            gas = smooth_field(s.rng, cov.shape, n_freq=5) > s.rng.uniform(-0.9, 0.3)
            val = np.where(gas, np.float32(-1000.0), np.float32(s.hu("stool")))
        else:
            val = {
                "fluid": s.hu("fluid"),
                "gas": -1000.0,
                "contrast": s.w.extra.get("oral_contrast_hu", 250.0),
            }[content]
        if content == "fluid" and s.rng.uniform() < 0.3:  # gas-fluid level: gas on top (anterior)
            yy = a.grid.box_coords(box)[1]
            val = np.where(yy > np.median(yy), -1000.0, val).astype(np.float32)
        ct += (lumen * ok) * (val - ct)
    sel = mask & ok & (cov > 0.5)
    if label:
        a.organs[box][sel] = label
    s.reserved[box] |= sel


def _colon_wide(s: _Wide) -> None:
    u, lm = s.rng.uniform, s.lm
    zr, spine_y = lm["dome_right"], lm["spine_y"]
    zc = zr - u(105, 140)
    frame = {
        "ascending colon": [[u(70, 90), spine_y + u(40, 60), -250], [u(70, 88), spine_y + u(45, 65), zc]],
        "transverse colon": [
            [u(65, 80), spine_y + u(70, 90), zc + 5],
            [u(-10, 10), spine_y + u(95, 130), zc - u(0, 40)],
            [-u(70, 85), spine_y + u(75, 95), zc + 20],
        ],
        "descending colon": [
            [-u(78, 92), spine_y + u(50, 70), zc + 15],
            [-u(78, 92), spine_y + u(40, 60), -215],
        ],
        "sigmoid colon": [[-u(78, 92), spine_y + 50, -215], [-u(10, 40), spine_y + u(70, 90), -250]],
    }
    segs = {}
    for part, pts in frame.items():
        rad = u(15, 25) if part == "ascending colon" else u(11, 19)
        segs[part] = _polyline(pts, [rad] * len(pts))
    _hollow(s, [g for v in segs.values() for g in v], "colon", ORGAN_IDS["colon"])
    s.a.tubes.update({f"colon:{k}": v for k, v in segs.items()})


def _small_bowel(s: _Wide) -> None:
    """Random-walk small-bowel loops filling the free visceral fat of the mid and lower abdomen."""
    u, lm = s.rng.uniform, s.lm
    zr, spine_y = lm["dome_right"], lm["spine_y"]
    b = lm["body_ab"][1] * lm["r_inner"]
    lo = np.array([-95, spine_y + 40, -260], np.float32)
    hi = np.array([95, b - 15, zr - u(65, 95)], np.float32)
    if s.rng.uniform() < 0.25:
        s.w.extra["oral_contrast"] = True
        s.w.extra["oral_contrast_hu"] = float(u(150, 400))
    for _ in range(int(s.rng.integers(10, 22))):
        pt = u(lo, hi).astype(np.float32)
        d = s.rng.normal(size=3).astype(np.float32)
        pts = [pt]
        for _ in range(int(s.rng.integers(5, 12))):
            d = d / (np.linalg.norm(d) + 1e-9) + 0.9 * s.rng.normal(size=3).astype(np.float32)
            d /= np.linalg.norm(d) + 1e-9
            q = pts[-1] + d * u(14, 24)
            out = (q < lo) | (q > hi)
            d[out] *= -1
            pts.append(np.clip(pts[-1] + d * u(14, 24), lo, hi).astype(np.float32))
        _hollow(s, _polyline(pts, [u(8, 14)] * len(pts)), content=_content(s))


def draw_surroundings(anat: Anatomy, r: np.ndarray, wide: WideParams, rng) -> None:
    """Arms beside the torso and the CT table under it (background label), when the case has them."""
    a_, b_ = anat.landmarks["body_ab"]
    xs, ys, zs = anat.grid.axes()
    x, y = xs[:, None], ys[None, :]
    air = (anat.organs == 0) & (anat.ct <= -999) & (r >= 1.0)
    slab = np.zeros(anat.organs.shape[:2], np.float32) - 1000
    if wide.arms:
        for sgn in (-1, 1):
            ra, rb = rng.uniform(35, 50), rng.uniform(40, 55)
            cx, cy = sgn * (a_ + rng.uniform(5, 40) + ra), rng.uniform(-30, 25)
            lev = ((x - cx) / ra) ** 2 + ((y - cy) / rb) ** 2
            bone = ((x - cx - sgn * rng.uniform(-8, 8)) ** 2 + (y - cy) ** 2) < rng.uniform(9, 13) ** 2
            slab = np.where(lev < 1, anat.hu("fat"), slab)
            slab = np.where(lev < (1 - rng.uniform(6, 15) / ra) ** 2, anat.hu("muscle"), slab)
            slab = np.where(bone, anat.hu("bone_cortex"), slab)
    if wide.table:
        top = -b_ - rng.uniform(3, 35)
        curve = top - x**2 / (2 * rng.uniform(500, 1200))
        gap = rng.uniform(12, 30)
        for yy in (curve, curve - gap):
            slab = np.where(np.abs(y - yy) < rng.uniform(1.0, 2.5), rng.uniform(50, 400), slab)
        slab = np.where((y < curve) & (y > curve - gap) & (slab <= -999), -900.0, slab)
    np.copyto(
        anat.ct,
        np.broadcast_to(slab[..., None], anat.ct.shape).astype(np.float32),
        where=air & (slab > -999)[..., None],
    )
