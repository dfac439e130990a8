"""Domain randomisation of SynthCT-VL (`variation="wide"`): what real scans vary and the label does not fix.

The "standard" variation draws every case on the configured grid, centred on the torso, with textbook
organ HU in two phases and one reconstruction kernel. The "wide" variation (the SynthSeg idea) draws,
per case:
- a field of view: from 80 mm slabs to the whole configured extent, its axial level anywhere from the
  lower chest to the lower abdomen, off-centre and cropped in-plane (the grid shape changes per case,
  the spacing stays the configured one);
- a patient size (the anatomy is drawn on a scaled copy of the grid) and habitus (fat);
- a contrast phase among non-contrast, arterial, portal-venous and delayed, and per-tissue HU drawn
  from that phase's ranges (`PHASE_HU`), so organ contrasts overlap across cases as they do in real CT;
- a scanner: noise level, in-plane blur, slice thickness and a smooth intensity non-uniformity.
The anatomy itself gets more detail in this variation (see `abdomen.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .geometry import Grid, smooth_field

VARIATIONS = ("standard", "wide")
CONTRAST_PHASES = ("non-contrast", "arterial", "portal-venous", "delayed")
#: Probability of each fine phase among contrast-enhanced cases (portal-venous is the routine phase).
ENHANCED_PHASE_P = {"arterial": 0.25, "portal-venous": 0.55, "delayed": 0.2}

#: HU ranges (lo, hi) per tissue and contrast phase; a case draws each tissue uniformly in its range.
#: Typical adult values from CT texts (triphasic liver and renal protocols); ranges are wide on purpose.
PHASE_HU: dict[str, dict[str, tuple[float, float]]] = {
    "non-contrast": {
        "liver": (38, 70),
        "spleen": (30, 55),
        "kidney": (8, 40),  # unenhanced parenchyma: 30-35 HU in texts, 12-20 in the real test case
        "kidney_medulla": (8, 38),
        "pancreas": (-10, 50),  # fatty lobulation lowers it (the real test case: -7)
        "blood": (30, 55),
        "aorta": (30, 55),
        "portal_vein": (30, 50),
        "hepatic_vein": (30, 50),
        "muscle": (20, 60),
        "myocardium": (35, 55),
        "bowel_wall": (25, 50),
        "urine": (0, 15),
    },
    "arterial": {
        "liver": (55, 85),
        "spleen": (80, 150),
        "kidney": (150, 230),
        "kidney_medulla": (55, 100),
        "pancreas": (90, 150),
        "blood": (150, 260),
        "aorta": (230, 420),
        "portal_vein": (90, 160),
        "hepatic_vein": (45, 75),
        "muscle": (45, 70),
        "myocardium": (80, 130),
        "bowel_wall": (70, 120),
        "urine": (0, 15),
    },
    "portal-venous": {
        "liver": (80, 135),
        "spleen": (80, 140),
        "kidney": (140, 210),
        "kidney_medulla": (120, 190),
        "pancreas": (75, 120),
        "blood": (120, 190),
        "aorta": (120, 200),
        "portal_vein": (140, 210),
        "hepatic_vein": (130, 200),
        "muscle": (50, 75),
        "myocardium": (80, 120),
        "bowel_wall": (65, 110),
        "urine": (0, 20),
    },
    "delayed": {
        "liver": (70, 105),
        "spleen": (70, 105),
        "kidney": (100, 150),
        "kidney_medulla": (110, 170),
        "pancreas": (55, 90),
        "blood": (90, 140),
        "aorta": (90, 140),
        "portal_vein": (95, 140),
        "hepatic_vein": (95, 140),
        "muscle": (45, 70),
        "myocardium": (65, 100),
        "bowel_wall": (55, 90),
        "urine": (250, 900),  # excreted contrast in the collecting system
    },
}
#: Tissues whose HU does not depend on the phase in the wide variation: (lo, hi).
FIXED_HU: dict[str, tuple[float, float]] = {
    "fat": (-120, -80),
    "lung": (-880, -820),
    "fluid": (0, 20),
    "bile": (0, 25),
    "stool": (-60, 20),
}


@dataclass(frozen=True)
class Scanner:
    """Reconstruction of one case: final noise sd (HU), Gaussian blur sd (mm) in-plane and along z."""

    noise_hu: float
    blur_xy_mm: float
    blur_z_mm: float
    shading_hu: float  # amplitude of a smooth intensity non-uniformity (cupping, scatter)


@dataclass
class WideParams:
    """Per-case draws of the wide variation that the anatomy and the reconstruction use."""

    contrast_phase: str
    hu: dict[str, float]
    scale: tuple[float, float, float]  # patient size: world mm = template mm * scale
    habitus: tuple[float, float]  # body semi-axes factors (x, y)
    fat_mm: float  # subcutaneous fat thickness
    fatty_liver: bool
    scanner: Scanner
    arms: bool
    table: bool
    diaphragm_radius: float = 105.0  # mm; smaller: deeper costophrenic recesses behind liver and spleen
    back_depth: float = 1.0  # posterior body semi-axis / anterior one
    vertebra_radius: float = 17.0  # mm, vertebral body
    extra: dict = field(default_factory=dict)


def draw_contrast_phase(rng: np.random.Generator, enhanced: bool) -> str:
    """The fine phase of a case whose lesion-level phase is contrast-enhanced or not."""
    if not enhanced:
        return "non-contrast"
    names = list(ENHANCED_PHASE_P)
    return names[int(rng.choice(len(names), p=list(ENHANCED_PHASE_P.values())))]


def draw_tissue_hu(
    rng: np.random.Generator, contrast_phase: str, base: dict[str, tuple[float, float]]
) -> dict:
    """Per-case HU of every tissue: `base` (the standard table) overridden by the wide ranges."""
    enhanced = contrast_phase != "non-contrast"
    hu = {k: float(v[1 if enhanced else 0]) for k, v in base.items()}
    for table in (FIXED_HU, PHASE_HU[contrast_phase]):
        for k in sorted(table):
            lo, hi = table[k]
            hu[k] = float(rng.uniform(lo, hi))
    # Physiological couplings: medulla never brighter than cortex before the delayed phase; the
    # aorta and heart blood pool follow the same bolus.
    if contrast_phase in ("non-contrast", "arterial"):
        hu["kidney_medulla"] = min(hu["kidney_medulla"], hu["kidney"] - 3)
    hu["blood"] = 0.5 * (hu["blood"] + hu["aorta"]) if contrast_phase == "arterial" else hu["blood"]
    hu["pulmonary_vessel"] = hu["blood"] + (40.0 if contrast_phase == "arterial" else 0.0)
    return hu


def draw_wide_params(
    rng: np.random.Generator, phase: str, base_hu: dict, contrast_phase: str | None = None
) -> WideParams:
    """Everything the wide variation randomises about a case except its field of view.

    Args:
        rng: the case's generator.
        phase: the case's lesion-level phase ("non-contrast" or "contrast-enhanced").
        base_hu: the standard tissue table (`phantom.TISSUE_HU`) for tissues without a wide range.
        contrast_phase: force the fine phase (one of `CONTRAST_PHASES`) instead of drawing it.
    """
    u = rng.uniform
    cphase = draw_contrast_phase(rng, phase == "contrast-enhanced")
    if contrast_phase is not None:
        if contrast_phase not in CONTRAST_PHASES:
            raise ValueError(f"unknown contrast phase {contrast_phase!r}; known: {list(CONTRAST_PHASES)}")
        cphase = contrast_phase
    hu = draw_tissue_hu(rng, cphase, base_hu)
    fatty = bool(u() < 0.15)
    if fatty:  # steatosis: the liver drops below the spleen, in every phase
        hu["liver"] -= float(u(20, 45))
    s = float(u(0.88, 1.12))
    scale = (s * float(u(0.95, 1.05)), s * float(u(0.95, 1.05)), s * float(u(0.92, 1.08)))
    noise = float(np.exp(u(np.log(5.0), np.log(28.0))))
    scanner = Scanner(
        noise_hu=noise,
        blur_xy_mm=float(u(0.5, 2.0)),
        blur_z_mm=float(u(0.4, 2.2)),
        shading_hu=float(u(0, 12)),
    )
    return WideParams(
        contrast_phase=cphase,
        hu=hu,
        scale=scale,
        habitus=(float(u(0.85, 1.18)), float(u(0.85, 1.15))),
        fat_mm=float(np.exp(u(np.log(5.0), np.log(40.0)))),
        fatty_liver=fatty,
        scanner=scanner,
        arms=bool(u() < 0.35),
        table=bool(u() < 0.6),
        diaphragm_radius=float(u(55, 105)),
        back_depth=float(u(1.15, 1.45)),
        vertebra_radius=float(u(18, 24)),
    )


def draw_field_of_view(
    rng: np.random.Generator,
    max_shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
) -> tuple[tuple[int, int, int], np.ndarray]:
    """Grid shape and centre (template mm) of a case: slab or torso, any level, off-centre.

    The axial extent is a slab (40-150 mm), an abdomen (150-300 mm) or the whole configured extent;
    the in-plane extent is 55-100% of the configured one. The centre stays between the lower chest
    and the lower abdomen of the template (z = 0 near the diaphragm) and within 35 mm of the body axis.
    """
    u = rng.uniform
    max_mm = np.asarray(max_shape, float) * np.asarray(spacing, float)
    kind = u()
    if kind < 0.3:
        ext_z = u(40, 150)
    elif kind < 0.7:
        ext_z = u(150, 300)
    else:
        ext_z = max_mm[2]
    ext = np.array([max_mm[0] * u(0.55, 1.0), max_mm[1] * u(0.55, 1.0), min(ext_z, max_mm[2])])
    shape = tuple(int(np.clip(round(e / s), 8, n)) for e, s, n in zip(ext, spacing, max_shape))
    ext_z = shape[2] * spacing[2]
    lo, hi = max(-255 + ext_z / 2, -200.0), min(175 - ext_z / 2, 60.0)
    cz = u(lo, hi) if lo < hi else 0.5 * (lo + hi)
    centre = np.array([u(-35, 35), u(-30, 30), cz])
    return shape, centre


def reconstruct_wide(ct: np.ndarray, grid: Grid, rng: np.random.Generator, scanner: Scanner) -> np.ndarray:
    """Scanner-specific reconstruction: blur (kernel, slice thickness), correlated noise, shading."""
    sig = tuple(
        max(b / s, 0.0)
        for b, s in zip((scanner.blur_xy_mm, scanner.blur_xy_mm, scanner.blur_z_mm), grid.spacing)
    )
    out = ndimage.gaussian_filter(ct, sigma=sig, truncate=3.0)
    noise = rng.standard_normal(grid.shape, dtype=np.float32)
    nsig = tuple(max(0.6, 0.7 * s) for s in sig)  # FBP noise is correlated over about the kernel width
    noise = ndimage.gaussian_filter(noise, sigma=nsig, truncate=3.0)
    noise *= np.float32(scanner.noise_hu / (float(noise.std()) or 1.0))
    out += noise
    if scanner.shading_hu > 0:
        body = ct > -500
        out += body * smooth_field(rng, grid.shape, n_freq=3, amplitude=scanner.shading_hu)
    return np.clip(np.rint(out), -1024, 3071).astype(np.int16)
