"""One SynthCT-VL case: sample its findings, draw the volume and its maps, write its files.

`make_case` is a pure function of (plan, config): it seeds `numpy.random.default_rng([seed, split,
index])`, so parallel and serial runs, and any number of workers, give byte-identical files.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from medvl3d.schema import CTRATE_LABELS

from .abnormalities import DRAWERS, DRAWN, EARLY, PREVALENCE
from .geometry import Grid
from .lesion_types import LesionType
from .lesions import location_masks, render_lesion
from .phantom import TISSUE_HU, build_anatomy
from .reports import write_report
from .variation import VARIATIONS, WideParams, draw_field_of_view, draw_wide_params, reconstruct_wide
from .vessels import build_trees, paint_trees
from .writer import write_nifti

SPLIT_IDS = {"train": 0, "valid": 1}
MANUFACTURERS = ["SIEMENS", "PHILIPS", "GE MEDICAL SYSTEMS", "TOSHIBA"]
# Field-of-view centre (mm, body template coordinates): mid-thorax to upper abdomen.
FOV_CENTRE = (0.0, 0.0, -10.0)
NOISE_SIGMA_PRE_BLUR = 55.0  # ~12-16 HU after the reconstruction blur below (sigma 0.8 / 0.5 voxel)


@dataclass(frozen=True)
class CasePlan:
    """What the orchestrator decides for a case before it is drawn (the rest comes from its rng)."""

    split: str
    index: int  # 0-based within the split
    lesion_pool: tuple[str, ...]  # lesion types this case may draw
    unseen_pool: tuple[str, ...] = ()  # preferred (unseen) types in the valid split
    forced: frozenset[str] = frozenset()  # abnormalities that must be present
    forbidden: frozenset[str] = frozenset()  # abnormalities that must be absent

    @property
    def patient(self) -> int:
        return self.index + 1

    @property
    def volume_name(self) -> str:
        return f"{self.split}_{self.patient}_a_1"

    @property
    def rel_dir(self) -> str:
        return f"{self.split}/{self.split}_{self.patient}/{self.split}_{self.patient}_a"


@dataclass(frozen=True)
class CaseConfig:
    """Generation settings shared by all cases (sizes in the array's (x, y, z) order)."""

    shape_xyz: tuple[int, int, int]
    spacing_xyz: tuple[float, float, float]
    seed: int
    types: dict[str, LesionType] = field(hash=False, compare=False, default_factory=dict)
    compresslevel: int = 1
    variation: str = "standard"  # one of variation.VARIATIONS
    centre_xyz: tuple[float, float, float] | None = None  # standard variation: field-of-view centre (mm)

    def __post_init__(self) -> None:
        if self.variation not in VARIATIONS:
            raise ValueError(f"unknown variation {self.variation!r}; known: {list(VARIATIONS)}")


def reconstruct(ct: np.ndarray, grid: Grid, rng: np.random.Generator) -> np.ndarray:
    """CT-like reconstruction of an ideal HU volume: correlated noise and blur, then int16 HU.

    White noise blurred together with the image gives the spatially correlated noise of filtered
    back-projection (~14 HU in soft tissue) and the ~0.8-voxel in-plane blur of a standard kernel.
    """
    ct = ct + rng.standard_normal(grid.shape, dtype=np.float32) * np.float32(NOISE_SIGMA_PRE_BLUR)
    sig = tuple(0.8 * min(grid.spacing) / s for s in grid.spacing)
    ct = ndimage.gaussian_filter(ct, sigma=sig, truncate=3.0)
    return np.clip(np.rint(ct), -1024, 3071).astype(np.int16)


def case_grids(cfg: CaseConfig, rng: np.random.Generator, phase: str) -> tuple[Grid, Grid, WideParams | None]:
    """(world grid written to the files, template grid the anatomy is drawn on, wide draws or None).

    The standard variation uses the configured grid for both. The wide one draws the case's field of
    view and patient size: the template grid is the world grid divided by the size factors, so a larger
    patient covers more world millimetres with the same template anatomy.
    """
    if cfg.variation == "standard":
        grid = Grid.centred(cfg.shape_xyz, cfg.spacing_xyz, cfg.centre_xyz or FOV_CENTRE)
        return grid, grid, None
    wide = draw_wide_params(rng, phase, TISSUE_HU)
    shape, centre = draw_field_of_view(rng, cfg.shape_xyz, cfg.spacing_xyz)
    k = np.asarray(wide.scale)
    world = Grid.centred(shape, cfg.spacing_xyz, centre * k)
    template = Grid(shape, tuple(np.asarray(world.spacing) / k), tuple(np.asarray(world.origin) / k))
    return world, template, wide


def _choose_types(plan: CasePlan, cfg: CaseConfig, rng: np.random.Generator, want_lung: bool) -> list[str]:
    """Lesion types of a case: maybe one abdominal type (+ a second), plus a lung type for nodules."""
    types = cfg.types
    pool = [t for t in plan.lesion_pool if types[t].organ != "lung"]
    lung_pool = [t for t in plan.lesion_pool if types[t].organ == "lung"]
    prefer_unseen = [t for t in plan.unseen_pool if t in plan.lesion_pool]
    out: list[str] = []
    u_has, u_second, u_unseen = rng.uniform(size=3)
    if pool and u_has < 0.65:
        up = [t for t in prefer_unseen if types[t].organ != "lung"]
        src = up if (up and u_unseen < 0.5) else pool
        out.append(src[int(rng.integers(len(src)))])
        if u_second < 0.2:
            rest = [t for t in pool if types[t].organ != types[out[0]].organ]
            if rest:
                out.append(rest[int(rng.integers(len(rest)))])
    if want_lung and lung_pool:
        ul = [t for t in prefer_unseen if types[t].organ == "lung"]
        src = ul if (ul and rng.uniform() < 0.5) else lung_pool
        out.append(src[int(rng.integers(len(src)))])
    return out


def make_case(plan: CasePlan, cfg: CaseConfig, out_dir: str) -> dict:
    """Draw one case, write its four NIfTI files under `out_dir`, return its table rows and timings."""
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    times: dict[str, float] = {}

    def tick(stage: str) -> None:
        nonlocal t0
        now = time.perf_counter()
        times[stage] = times.get(stage, 0.0) + now - t0
        t0 = now

    rng = np.random.default_rng([cfg.seed, SPLIT_IDS[plan.split], plan.index])
    # 1. Findings: Bernoulli per CT-RATE label at its real prevalence, then the split's constraints.
    draws = rng.uniform(size=len(CTRATE_LABELS))
    labels = {}
    for name, u in zip(CTRATE_LABELS, draws):
        on = name in DRAWN and u < PREVALENCE[name]
        labels[name] = int((on or name in plan.forced) and name not in plan.forbidden)
    types = cfg.types
    chosen = _choose_types(plan, cfg, rng, want_lung=bool(labels["Lung nodule"]))
    if chosen:
        phase = types[chosen[0]].sample(rng, "contrast")
    else:
        phase = "contrast-enhanced" if rng.uniform() < 0.6 else "non-contrast"
    if cfg.variation == "wide":  # half the cases unenhanced; lesion types only follow the phase
        phase = "contrast-enhanced" if rng.uniform() < 0.5 else "non-contrast"
    chosen = [t for t in chosen if types[t].probability("contrast", phase) > 0]
    sex = "M" if rng.uniform() < 0.55 else "F"
    age = int(rng.integers(25, 86))
    manufacturer = MANUFACTURERS[int(rng.integers(len(MANUFACTURERS)))]

    # 2. Anatomy (cardiomegaly and hiatal hernia change it directly).
    world, grid, wide = case_grids(cfg, rng, phase)
    heart_scale = rng.uniform(1.2, 1.3) if labels["Cardiomegaly"] else rng.uniform(0.93, 1.05)
    anat = build_anatomy(
        grid, rng, phase, heart_scale=heart_scale, hiatal_hernia=bool(labels["Hiatal hernia"]), wide=wide
    )
    tick("anatomy")
    details: dict[str, dict] = {}
    for name in EARLY:
        if labels[name]:
            d = DRAWERS[name](anat, rng)
            if d is None:  # outside this field of view (wide variation)
                labels[name] = 0
            else:
                details[name] = d

    # 3. Airway / artery / vein trees.
    vessels = np.zeros(grid.shape, np.uint8)
    trees = build_trees(anat, rng, bronchiectasis=bool(labels["Bronchiectasis"]))
    paint_trees(anat, trees, vessels, peribronchial=bool(labels["Peribronchial thickening"]))
    tick("vessels")

    # 4. Image-stage abnormalities, in CT-RATE order.
    for name in CTRATE_LABELS:
        if labels[name] and name in DRAWERS and name not in EARLY:
            d = DRAWERS[name](anat, rng, vessels)
            if d is None:  # could not be drawn in this field of view
                labels[name] = 0
            else:
                details[name] = d
    tick("abnormalities")

    # 5. Lesions: instance ids 1..n in the lesion map, attributes in the table.
    lesion_map = np.zeros(grid.shape, np.uint8)
    lesions = []
    loc_cache: dict[str, dict] = {}
    for tname in chosen:
        lt = types[tname]
        if lt.organ not in loc_cache:
            loc_cache[lt.organ] = location_masks(anat, lt.organ)
        for _ in range(int(rng.integers(lt.count[0], lt.count[1] + 1))):
            if len(lesions) >= 255:
                break
            les = render_lesion(anat, lesion_map, rng, lt, len(lesions) + 1, loc_cache[lt.organ])
            if les is not None:
                lesions.append(les)
    labels["Lung nodule"] = int(any(les.organ == "lung" for les in lesions))
    tick("lesions")

    # 6. Reconstruction: correlated noise and blur, then int16 HU.
    if wide is None:
        ct_i16 = reconstruct(anat.ct, grid, rng)
    else:
        ct_i16 = reconstruct_wide(anat.ct, world, rng, wide.scanner)
    tick("noise_blur")

    report = write_report(labels, details, lesions, types, phase, rng)
    if wide is not None and wide.contrast_phase in ("arterial", "delayed"):
        report["Technique_EN"] = report["Technique_EN"].replace("portal venous", wide.contrast_phase)
    tick("report")

    base = f"{out_dir}/{plan.rel_dir}/{plan.volume_name}"
    aff = world.affine()
    write_nifti(base + ".nii.gz", ct_i16, aff, compresslevel=cfg.compresslevel)
    for suffix, arr in (("_organs", anat.organs), ("_lesions", lesion_map), ("_vessels", vessels)):
        write_nifti(f"{base}{suffix}.nii.gz", arr, aff, compresslevel=cfg.compresslevel)
    tick("write")
    rel = f"./{plan.rel_dir}/{plan.volume_name}"
    return {
        "volume_name": plan.volume_name + ".nii.gz",
        "split": plan.split,
        "image": rel + ".nii.gz",
        "organs": rel + "_organs.nii.gz",
        "lesions_map": rel + "_lesions.nii.gz",
        "vessels": rel + "_vessels.nii.gz",
        "report": report,
        "labels": labels,
        "lesions": {
            str(les.id): {"type": les.type, "organ": les.organ, **les.attributes, "size_mm": les.size_mm}
            for les in lesions
        },
        "phase": phase,
        **({} if wide is None else {"contrast_phase": wide.contrast_phase}),
        "sex": sex,
        "age": age,
        "manufacturer": manufacturer,
        "times": times,
        "cpu_seconds": time.process_time() - cpu0,
    }
