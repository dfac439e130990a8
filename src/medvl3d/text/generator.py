"""Text generators for volumes without reports (GTGM, arXiv 2306.04811).

GTGM pretrains on volumes that have no report by generating one. This module defines the interface
(`TextGenerator.generate(sample) -> str`), a built-in `MeasuredTextGenerator` that writes a
medical-style description from what can be *measured* in the volume (region covered, aerated lungs and
their volumes and densities, fat / soft tissue / bone / contrast-enhanced blood from HU thresholds,
left-right lung asymmetries) and its metadata, and wrappers for user generators: any callable, or a
local `transformers` causal LM that rewrites the measured description.

The measured generator never invents findings: each sentence states a measurement, and tissues that are
not found are not mentioned. Phrasing varies deterministically with the sample (seeded by its case id),
so the same volume always gets the same text.
"""

from __future__ import annotations

import dataclasses
import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import numpy as np
from scipy import ndimage

from medvl3d.typed import coerce

# HU ranges of the coarse tissue classes (CT). Bone is cortical bone (>= 400 HU) with the cancellous
# interior it encloses; contrast-enhanced blood is 150-400 HU away from bone.
AIR_MAX_HU = -400.0
BODY_MIN_HU = -500.0
FAT_HU = (-190.0, -30.0)
SOFT_HU = (-30.0, 150.0)
ENHANCED_HU = (150.0, 400.0)
BONE_MIN_HU = 400.0
#: Median HU range of an aerated-lung air region (pure gas is ~-1000, partial-volume rims ~-500).
LUNG_MEDIAN_HU = (-950.0, -650.0)
#: Voxel size the measurements work at (mm); finer volumes are subsampled by integer strides.
MEASURE_SPACING_MM = 2.5


@runtime_checkable
class TextGenerator(Protocol):
    """Anything with `generate(sample) -> str`; `sample` is a dataset dict (`image`, `meta`, ...)."""

    def generate(self, sample: dict) -> str: ...


@dataclass
class LungMeasurement:
    """One side's aerated lung: volume (mL), mean attenuation (HU), fraction below -950 HU."""

    volume_ml: float
    mean_hu: float
    low_attenuation: float


@dataclass
class VolumeMeasurements:
    """What `measure_ct` found in a CT volume."""

    extent_mm: tuple[float, float, float]
    spacing: tuple[float, float, float]
    body_volume_ml: float
    lungs: dict[str, LungMeasurement] = field(default_factory=dict)
    tissue_ml: dict[str, float] = field(default_factory=dict)
    soft_tissue_mean_hu: float = float("nan")
    abdomen_below_lungs_mm: float = 0.0
    lung_slice_fraction: float = 0.0

    @property
    def has_lungs(self) -> bool:
        return bool(self.lungs)


def _as_volume(sample: dict) -> tuple[np.ndarray, tuple[float, float, float], str]:
    """(array [X, Y, Z] float32, spacing, case id) from a sample, with clear errors."""
    meta = sample.get("meta") or {}
    case = str(meta.get("case_id") or meta.get("path") or "<sample>")
    if "image" not in sample:
        raise ValueError(f"text generator: sample {case} has no 'image'")
    image = sample["image"]
    arr = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3:
        raise ValueError(
            f"text generator: image of {case} must be [1, X, Y, Z] or [X, Y, Z], got {arr.shape}"
        )
    spacing = meta.get("spacing")
    if spacing is None or len(spacing) != 3 or min(float(s) for s in spacing) <= 0:
        raise ValueError(
            f"text generator: meta['spacing'] of {case} must be 3 positive values, got {spacing}"
        )
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise ValueError(f"text generator: image of {case} contains NaN or infinite values")
    return arr, tuple(float(s) for s in spacing), case


def _fill_slices(mask: np.ndarray) -> np.ndarray:
    """Fill holes in each axial (z) slice: the body outline encloses the lungs in-plane."""
    out = np.empty_like(mask)
    for z in range(mask.shape[2]):
        out[:, :, z] = ndimage.binary_fill_holes(mask[:, :, z])
    return out


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    return labels == (np.argmax(sizes) + 1)


def measure_ct(arr: np.ndarray, spacing: tuple[float, float, float]) -> VolumeMeasurements:
    """Coarse threshold-based measurements of a CT volume in HU, array axes (x, y, z) in RAS.

    Args:
        arr: `[X, Y, Z]` HU values.
        spacing: voxel size (mm) along x, y, z.
    """
    extent = tuple(float(n * s) for n, s in zip(arr.shape, spacing))
    # Work at ~2.5 mm: measurements are coarse and this keeps a 512^2 x 300 CT under a second.
    strides = tuple(max(1, int(MEASURE_SPACING_MM // s)) for s in spacing)
    arr = arr[:: strides[0], :: strides[1], :: strides[2]]
    sp = tuple(s * k for s, k in zip(spacing, strides))
    voxel_ml = sp[0] * sp[1] * sp[2] / 1000.0

    body = _fill_slices(_largest_component(arr > BODY_MIN_HU))
    m = VolumeMeasurements(
        extent_mm=extent, spacing=tuple(spacing), body_volume_ml=float(body.sum() * voxel_ml)
    )
    if not body.any():
        return m

    # Aerated lung: sizeable air regions enclosed by the body with a parenchyma-like median (vessels and
    # partial volume lift it above pure gas); bowel or stomach gas is nearly pure air (~-1000 HU).
    internal_air = body & (arr < AIR_MAX_HU)
    labels, n = ndimage.label(internal_air)
    lung = np.zeros_like(body)
    if n:
        index = np.arange(1, n + 1)
        sizes = ndimage.sum_labels(internal_air, labels, index) * voxel_ml
        medians = ndimage.median(arr, labels, index)
        min_ml = max(20.0, 0.005 * m.body_volume_ml)
        medians = np.asarray(medians)
        lungish = (medians > LUNG_MEDIAN_HU[0]) & (medians < LUNG_MEDIAN_HU[1])
        keep = index[(sizes >= min_ml) & lungish]
        lung = np.isin(labels, keep)
    # RAS: x grows toward the patient's right, so the left lung has the smaller x indices.
    mid_x = ndimage.center_of_mass(body)[0]
    xs = np.arange(arr.shape[0])[:, None, None]
    for side, half in (("left", xs < mid_x), ("right", xs >= mid_x)):
        part = lung & half
        vol = float(part.sum() * voxel_ml)
        if vol >= 10.0:
            vals = arr[part]
            m.lungs[side] = LungMeasurement(vol, float(vals.mean()), float((vals < -950).mean()))

    rest = body & ~lung
    dense = rest & (arr >= BONE_MIN_HU)
    bone_zone = ndimage.binary_dilation(_fill_slices(dense), iterations=1) if dense.any() else dense
    classes = {
        "fat": rest & (arr >= FAT_HU[0]) & (arr < FAT_HU[1]),
        "soft tissue": rest & (arr >= SOFT_HU[0]) & (arr < SOFT_HU[1]) & ~bone_zone,
        "bone": bone_zone & rest & (arr >= ENHANCED_HU[0]),
        "enhanced blood": rest & (arr >= ENHANCED_HU[0]) & (arr < ENHANCED_HU[1]) & ~bone_zone,
    }
    # Opening removes partial-volume rims (e.g. the 150-400 HU edge of bone) before counting.
    for name, mask in classes.items():
        if name != "soft tissue":
            mask = ndimage.binary_opening(mask)
        m.tissue_ml[name] = float(mask.sum() * voxel_ml)
    if classes["soft tissue"].any():
        m.soft_tissue_mean_hu = float(arr[classes["soft tissue"]].mean())
    if lung.any():
        lung_z = np.flatnonzero(lung.any(axis=(0, 1)))
        body_z = np.flatnonzero(body.any(axis=(0, 1)))
        m.abdomen_below_lungs_mm = float(max(0, lung_z.min() - body_z.min()) * sp[2])
        m.lung_slice_fraction = len(lung_z) / max(1, len(body_z))
    return m


# --- phrasing ------------------------------------------------------------------------------------------
_REGION = {
    "chest": ["Chest CT", "CT of the thorax", "Thoracic CT"],
    "chest_abdomen": [
        "CT of the chest and upper abdomen",
        "Thoracoabdominal CT",
        "CT covering chest and abdomen",
    ],
    "abdomen": ["CT of the abdomen or pelvis", "Abdominopelvic CT", "CT below the diaphragm"],
    "upper_abdomen": [
        "CT of the upper abdomen",
        "Upper abdominal CT",
        "CT of the upper abdomen and lung bases",
    ],
}
_BOTH_LUNGS = [
    "Both lungs are aerated",
    "Aerated lung parenchyma is present bilaterally",
    "Both lungs are visible and aerated",
]
_TISSUE_PHRASES = {
    "fat": ["fat", "adipose tissue"],
    "soft tissue": ["soft tissue", "soft-tissue structures"],
    "bone": ["bone", "osseous structures"],
    "enhanced blood": ["contrast-enhanced blood", "contrast-enhanced vessels"],
}
#: Minimum volume (mL) of a tissue class before it is mentioned.
MIN_TISSUE_ML = 5.0


def describe_ct(m: VolumeMeasurements, rng: random.Random, meta: dict) -> str:
    """Medical-style sentences from CT measurements; only what was found is mentioned."""
    sentences = []
    # Lungs in under half of the body slices: an abdominal scan that catches the lung bases.
    bases_only = m.has_lungs and m.lung_slice_fraction < 0.5
    abdomen = (not m.has_lungs) or bases_only or m.abdomen_below_lungs_mm >= 80.0
    if bases_only:
        region = "upper_abdomen"
    else:
        region = "chest_abdomen" if m.has_lungs and abdomen else ("chest" if m.has_lungs else "abdomen")
    ex = m.extent_mm
    head = rng.choice(_REGION[region])
    phase = meta.get("contrast") or meta.get("phase")
    if isinstance(phase, str) and phase:
        head += f" ({phase} phase)"
    sentences.append(f"{head}, field of view {ex[0]:.0f} x {ex[1]:.0f} x {ex[2]:.0f} mm.")
    if m.body_volume_ml <= 0:
        sentences.append("No body is visible in the field of view.")
        return " ".join(sentences)
    if not m.has_lungs:
        sentences.append("No aerated lung is included.")
    elif bases_only:
        parts = ", ".join(f"{s} {lm.volume_ml:.0f} mL, mean {lm.mean_hu:.0f} HU" for s, lm in m.lungs.items())
        sentences.append(f"Only the lung bases are included ({parts}).")
    elif len(m.lungs) == 1:
        side, lm = next(iter(m.lungs.items()))
        other = "right" if side == "left" else "left"
        sentences.append(
            f"Aerated lung is seen only on the {side} side ({lm.volume_ml:.0f} mL, "
            f"mean {lm.mean_hu:.0f} HU); "
            f"the {other} hemithorax contains no aerated lung, which may indicate collapse, effusion or "
            "consolidation."
        )
    else:
        left, right = m.lungs["left"], m.lungs["right"]
        sentences.append(
            f"{rng.choice(_BOTH_LUNGS)} (left {left.volume_ml:.0f} mL, right {right.volume_ml:.0f} mL; "
            f"mean attenuation {left.mean_hu:.0f} and {right.mean_hu:.0f} HU)."
        )
        small, big = ("left", "right") if left.volume_ml < right.volume_ml else ("right", "left")
        ratio = m.lungs[small].volume_ml / m.lungs[big].volume_ml
        if ratio < 0.8:
            sentences.append(
                f"The {small} lung is smaller than the {big} lung ({ratio:.0%} of its volume), which may "
                "reflect volume loss, pleural effusion or consolidation."
            )
        dense, light = ("left", "right") if left.mean_hu > right.mean_hu else ("right", "left")
        diff = m.lungs[dense].mean_hu - m.lungs[light].mean_hu
        if diff >= 60.0:
            sentences.append(
                f"The {dense} lung is denser than the {light} lung by {diff:.0f} HU, suggesting "
                "ground-glass opacity or partial consolidation."
            )
    low = [s for s, lm in m.lungs.items() if lm.low_attenuation >= 0.15]
    if low:
        frac = max(m.lungs[s].low_attenuation for s in low)
        sides = " and ".join(low)
        sentences.append(
            f"Low-attenuation areas below -950 HU make up up to {frac:.0%} of the {sides} lung, "
            "compatible with emphysema."
        )
    present = [
        k for k in ("soft tissue", "fat", "bone", "enhanced blood") if m.tissue_ml.get(k, 0) >= MIN_TISSUE_ML
    ]
    if present:
        names = [rng.choice(_TISSUE_PHRASES[k]) for k in present]
        listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        sentences.append(f"Visible tissues: {listed}.")
    if "soft tissue" in present:
        sentences.append(f"Mean soft-tissue attenuation is {m.soft_tissue_mean_hu:.0f} HU.")
    if "fat" in present:
        sentences.append(f"Fat makes up {m.tissue_ml['fat'] / m.body_volume_ml:.0%} of the body volume.")
    if abdomen and "soft tissue" in present:
        sentences.append("Solid soft-tissue organs of the abdomen are included.")
    return " ".join(sentences)


def describe_other(arr: np.ndarray, spacing: tuple[float, float, float], modality: str) -> str:
    """Geometry and intensity statistics for non-CT volumes, where intensities carry no absolute meaning."""
    ex = [n * s for n, s in zip(arr.shape, spacing)]
    p1, p50, p99 = np.percentile(arr, [1, 50, 99])
    fg = arr > p1 + 0.1 * (p99 - p1)
    return (
        f"{modality} volume, field of view {ex[0]:.0f} x {ex[1]:.0f} x {ex[2]:.0f} mm. "
        f"Signal occupies {fg.mean():.0%} of the field of view; intensity median {p50:.3g}, "
        f"1st-99th percentile {p1:.3g} to {p99:.3g}."
    )


class MeasuredTextGenerator:
    """Built-in generator: a description from measurements of the raw volume (HU for CT) and metadata.

    Args:
        seed: mixed with each sample's case id to choose among phrasings.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def generate(self, sample: dict) -> str:
        """Describe `sample` (`image` `[1, X, Y, Z]` raw intensities, `meta` with `spacing`, `modality`)."""
        arr, spacing, case = _as_volume(sample)
        meta = sample.get("meta") or {}
        modality = str(meta.get("modality") or ("CT" if arr.min() < -500 else "unknown")).upper()
        rng = random.Random(zlib.crc32(case.encode()) ^ self.seed)
        if modality == "CT":
            return describe_ct(measure_ct(arr, spacing), rng, meta)
        return describe_other(arr, spacing, "MR" if modality in ("MR", "MRI") else modality)


class CallableTextGenerator:
    """Wraps any `fn(sample) -> str` (a captioner, an API client, a lookup) as a `TextGenerator`."""

    def __init__(self, fn: Callable[[dict], str]) -> None:
        if not callable(fn):
            raise ValueError(f"CallableTextGenerator needs a callable, got {type(fn).__name__}")
        self.fn = fn

    def generate(self, sample: dict) -> str:
        text = self.fn(sample)
        if not isinstance(text, str) or not text.strip():
            case = (sample.get("meta") or {}).get("case_id", "<sample>")
            raise ValueError(f"text generator {self.fn!r} returned no text for {case}")
        return text.strip()


class TransformersTextGenerator:
    """A local `transformers` causal LM that rewrites the measured description as report prose.

    The LM only rephrases: its prompt holds the measured description, so it cannot see the image.
    Nothing is downloaded (`local_files_only=True`).

    Args:
        path: local model folder.
        prompt: template with a `{description}` field.
        max_new_tokens: generation length.
        device: torch device for the LM (default CPU).
    """

    DEFAULT_PROMPT = (
        "Rewrite the following CT measurements as the findings section of a radiology report. "
        "Do not add findings.\nMeasurements: {description}\nFindings:"
    )

    def __init__(
        self, path: str, prompt: str = DEFAULT_PROMPT, max_new_tokens: int = 96, device: str | None = None
    ) -> None:
        from pathlib import Path

        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not Path(path).is_dir():
            raise FileNotFoundError(f"text generator model folder not found: {path}")
        if "{description}" not in prompt:
            raise ValueError("TransformersTextGenerator prompt must contain '{description}'")
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True).eval()
        if device:
            self.model.to(device)
        self.prompt = prompt
        self.max_new_tokens = max_new_tokens
        self.measured = MeasuredTextGenerator()

    def generate(self, sample: dict) -> str:
        import torch

        prompt = self.prompt.format(description=self.measured.generate(sample))
        inputs = self.tokenizer(prompt, return_tensors="pt").to(self.model.device)
        with torch.no_grad():
            ids = self.model.generate(
                **inputs,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
            )
        text = self.tokenizer.decode(ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()
        if not text:
            case = (sample.get("meta") or {}).get("case_id", "<sample>")
            raise ValueError(f"text generator LM at {self.model.name_or_path} produced no text for {case}")
        return text


def report_or_generated(sample: dict, generator: TextGenerator) -> str:
    """The sample's report when it has one, else text from `generator` (GTGM: every volume gets text)."""
    report = sample.get("report") or ""
    return report.strip() if report.strip() else generator.generate(sample)


_GENERATORS: dict[str, type] = {"measured": MeasuredTextGenerator, "transformers": TransformersTextGenerator}


@dataclass
class MeasuredGeneratorConfig:
    """The built-in generator (`MeasuredTextGenerator`)."""

    type: Literal["measured"] = "measured"
    seed: int = 0


@dataclass
class TransformersGeneratorConfig:
    """A local causal LM that rephrases the measured description (`TransformersTextGenerator`)."""

    type: Literal["transformers"] = "transformers"
    path: str = ""
    prompt: str = TransformersTextGenerator.DEFAULT_PROMPT
    max_new_tokens: int = 96
    device: str | None = None

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("the 'transformers' text generator needs a 'path' to a local model folder")


#: The generator section of a config: the `type` field picks the member.
GeneratorConfig = MeasuredGeneratorConfig | TransformersGeneratorConfig


def generator_config(cfg: str | dict | GeneratorConfig | None = None) -> GeneratorConfig:
    """A typed generator config from a name or dict (`type` "measured" by default); an unknown key is a
    `TypeError` naming it, an unknown type a `ValueError`."""
    if isinstance(cfg, (MeasuredGeneratorConfig, TransformersGeneratorConfig)):
        return cfg
    if isinstance(cfg, str):
        cfg = {"type": cfg}
    if cfg is not None and not isinstance(cfg, dict):
        raise ValueError(f"text generator config must be a name, dict or callable, got {type(cfg).__name__}")
    params = dict(cfg or {})
    if params.get("type", "measured") not in _GENERATORS:
        raise ValueError(f"unknown text generator {params['type']!r}; available: {sorted(_GENERATORS)}")
    return coerce(params, GeneratorConfig, "text generator", TypeError)


def build_text_generator(
    cfg: str | dict | GeneratorConfig | Callable[[dict], str] | None = None,
) -> TextGenerator:
    """A text generator from a config.

    Args:
        cfg: None or "measured" (built-in); a `GeneratorConfig` or its dict `{"type": "measured" |
            "transformers", ...}` (e.g. `{"type": "transformers", "path": "/models/llm"}`); an object with
            `generate`; or any callable `fn(sample) -> str`.

    Raises:
        ValueError: an unknown generator type.
        TypeError: a keyword the generator does not take (named in the message).
    """
    if isinstance(cfg, TextGenerator) and not isinstance(cfg, (str, dict)):
        return cfg
    if callable(cfg) and not isinstance(cfg, (str, dict)):
        return CallableTextGenerator(cfg)
    typed = generator_config(cfg)
    kwargs = {f.name: getattr(typed, f.name) for f in dataclasses.fields(typed) if f.name != "type"}
    return _GENERATORS[typed.type](**kwargs)
