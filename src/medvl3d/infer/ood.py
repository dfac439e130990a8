"""Is this volume like the ones the model was trained on? Out-of-distribution checks for one volume.

A model trained on 32^3 synthetic torsos answers any input, and a real 90 mm abdominal slab scanned at
3 mm gets the same confident scores as a training case. Two independent signals flag such inputs:

* **input profile**: field of view and voxel spacing in mm, and for CT the fractions of voxels that are
  air, lung, fat, soft tissue and bone, each compared with the range over reference cases (widened by a
  tolerance, see :data:`TOLERANCES`);
* **embedding**: the cosine distance from the volume's image embedding to its nearest reference case,
  against the (1 - alpha) conformal quantile of the same leave-one-out distance among the reference
  cases (so about ``alpha`` of new in-distribution volumes are flagged by chance).

The reference is fitted on held-out cases of the training distribution
(``medvl3d evaluate diagnosis --calibrate``) and stored with the calibration in the checkpoint.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medvl3d.data.io import Volume

__all__ = [
    "TOLERANCES",
    "DistributionReference",
    "InputProfile",
    "OODResult",
    "fit_reference",
    "input_profile",
]

#: HU bands (lower bound inclusive) whose voxel fractions describe a CT's content.
HU_BANDS: dict[str, tuple[float, float]] = {
    "air": (-np.inf, -900.0),
    "lung": (-900.0, -300.0),
    "fat": (-200.0, -30.0),
    "soft tissue": (-30.0, 150.0),
    "bone": (300.0, np.inf),
}

#: feature group -> (kind, tolerance): "relative" widens [lo, hi] to [lo / t, hi * t], "absolute" to
#: [lo - t, hi + t]. Loose on purpose: a flag should mean "never seen anything like this".
TOLERANCES: dict[str, tuple[str, float]] = {
    "fov": ("relative", 1.25),
    "spacing": ("relative", 1.5),
    "fraction": ("absolute", 0.10),
}

_MAX_VOXELS = 8_000_000  # intensity statistics of larger volumes use every second voxel along each axis


@dataclass
class InputProfile:
    """What a volume looks like before any model sees it.

    Attributes:
        modality: "CT", "MR" or "unknown".
        fov_mm: extent along the RAS array axes (voxels x spacing).
        spacing_mm: voxel size along the RAS array axes.
        intensity: CT only: ``<band>_fraction`` for each of :data:`HU_BANDS` (a median or mean HU would
            jump with the share of air around the body; the fractions say what the volume holds).
    """

    modality: str
    fov_mm: tuple[float, float, float]
    spacing_mm: tuple[float, float, float]
    intensity: dict[str, float] = field(default_factory=dict)

    def features(self) -> dict[str, float]:
        """Flat ``name -> value`` of everything a reference compares."""
        out = {f"fov_{a}": v for a, v in zip("xyz", self.fov_mm)}
        out.update({f"spacing_{a}": v for a, v in zip("xyz", self.spacing_mm)})
        out.update(self.intensity)
        return out

    def to_dict(self) -> dict:
        return {
            "modality": self.modality,
            "fov_mm": [round(v, 2) for v in self.fov_mm],
            "spacing_mm": [round(v, 4) for v in self.spacing_mm],
            "intensity": {k: round(v, 4) for k, v in self.intensity.items()},
        }


def input_profile(volume: Volume) -> InputProfile:
    """The :class:`InputProfile` of a (RAS) volume."""
    spacing = tuple(float(s) for s in volume.spacing)
    fov = tuple(float(n) * s for n, s in zip(volume.shape, spacing))
    intensity: dict[str, float] = {}
    if str(volume.modality).upper() == "CT":
        a = np.asarray(volume.array)
        if a.size > _MAX_VOXELS:
            a = a[::2, ::2, ::2]
        a = a.astype(np.float32, copy=False).ravel()
        for band, (lo, hi) in HU_BANDS.items():
            intensity[f"{band.replace(' ', '_')}_fraction"] = float(((a >= lo) & (a < hi)).mean())
    return InputProfile(str(volume.modality), fov, spacing, intensity)  # type: ignore[arg-type]


def _group(name: str) -> str:
    if name.startswith("fov_"):
        return "fov"
    return "spacing" if name.startswith("spacing_") else "fraction"


def _span(lo: float, hi: float, fmt: str) -> str:
    return format(lo, fmt) if format(lo, fmt) == format(hi, fmt) else f"{lo:{fmt}}-{hi:{fmt}}"


def _describe_axes(what: str, values: Sequence[float], ranges: Sequence[tuple[float, float]]) -> str:
    """E.g. "field of view 366 x 303 x 90 mm (reference 352 x 352 x 320 mm)" (x, y, z = R-L, A-P, S-I)."""
    fmt = ".3g"
    shown = " x ".join(format(v, fmt) for v in values)
    ref = " x ".join(_span(lo, hi, fmt) for lo, hi in ranges)
    return f"{what} {shown} mm (reference {ref} mm)"


def _describe(name: str, value: float, lo: float, hi: float) -> str:
    band = name[: -len("_fraction")].replace("_", " ")
    return f"{band} {value:.0%} of voxels (reference {_span(lo * 100, hi * 100, '.0f')}%)"


@dataclass
class OODResult:
    """The verdict on one volume.

    Attributes:
        out_of_distribution: any check failed.
        reasons: one phrase per failed check.
        nearest_distance: cosine distance of the embedding to the nearest reference case (or None).
        threshold: the distance above which a volume is flagged (or None).
        checked: which signals were available ("input profile", "embedding").
    """

    out_of_distribution: bool
    reasons: list[str]
    nearest_distance: float | None = None
    threshold: float | None = None
    checked: list[str] = field(default_factory=list)

    def message(self, source: str = "the volume") -> str:
        """One line for a warning: what is unlike the training data."""
        if not self.out_of_distribution:
            return f"{source}: within the training distribution ({', '.join(self.checked)} checked)"
        return (
            f"{source} is out of the training distribution ({'; '.join(self.reasons)}); its probabilities "
            "describe a kind of scan the model never saw"
        )

    def to_dict(self) -> dict:
        return {
            "out_of_distribution": self.out_of_distribution,
            "reasons": list(self.reasons),
            "nearest_distance": self.nearest_distance,
            "threshold": self.threshold,
            "checked": list(self.checked),
        }


def _nearest_distances(query: np.ndarray, bank: np.ndarray, exclude_self: bool = False) -> np.ndarray:
    """Cosine distance of each row of ``query`` to its nearest row of ``bank`` (both L2-normalised)."""
    dist = np.maximum(1.0 - query @ bank.T, 0.0)  # float16 rounding can push a self-distance below 0
    if exclude_self:
        np.fill_diagonal(dist, np.inf)
    return dist.min(axis=1)


def _normalise(emb: np.ndarray) -> np.ndarray:
    emb = np.asarray(emb, dtype=np.float32)
    return emb / np.maximum(np.linalg.norm(emb, axis=-1, keepdims=True), 1e-12)


@dataclass
class DistributionReference:
    """Ranges of the input profile and embeddings of reference cases, and the embedding threshold.

    Attributes:
        n_cases: reference cases it was fitted on.
        modalities: modalities among them.
        ranges: profile feature -> (min, max) over the reference cases.
        embeddings: normalised image embeddings ``[M, E]`` (at most ``max_cases`` of them).
        threshold: nearest-neighbour cosine distance above which a volume is flagged.
        alpha: the chance-flag rate the threshold was set for.
    """

    n_cases: int
    modalities: list[str]
    ranges: dict[str, tuple[float, float]]
    embeddings: np.ndarray | None
    threshold: float | None
    alpha: float = 0.01

    def check(self, profile: InputProfile | None, embedding: np.ndarray | None = None) -> OODResult:
        """Compare one volume's profile and (optional) embedding ``[E]`` with the reference."""
        reasons, checked = [], []
        if profile is not None:
            checked.append("input profile")
            if self.modalities and profile.modality not in self.modalities:
                reasons.append(f"modality {profile.modality} (reference {', '.join(self.modalities)})")
            reasons += self._profile_reasons(profile)
        nearest = None
        if embedding is not None and self.embeddings is not None and self.threshold is not None:
            checked.append("embedding")
            query = _normalise(np.asarray(embedding).reshape(1, -1))
            if query.shape[1] != self.embeddings.shape[1]:
                raise ValueError(
                    f"embedding of size {query.shape[1]} against a reference of size "
                    f"{self.embeddings.shape[1]}"
                )
            nearest = float(_nearest_distances(query, self.embeddings)[0])
            if nearest > self.threshold:
                reasons.append(
                    f"image embedding {nearest:.3g} from the nearest reference case "
                    f"(threshold {self.threshold:.3g})"
                )
        return OODResult(bool(reasons), reasons, nearest, self.threshold, checked)

    def _outside(self, name: str, value: float) -> bool:
        lo, hi = self.ranges[name]
        kind, tol = TOLERANCES[_group(name)]
        low, high = (lo / tol, hi * tol) if kind == "relative" else (lo - tol, hi + tol)
        return not low <= value <= high

    def _profile_reasons(self, profile: InputProfile) -> list[str]:
        """One phrase per failed profile check (the three axes of a field of view or spacing as one)."""
        feats = profile.features()
        reasons = []
        for prefix, what in (("fov_", "field of view"), ("spacing_", "voxel spacing")):
            names = [prefix + a for a in "xyz"]
            if all(n in self.ranges for n in names) and any(self._outside(n, feats[n]) for n in names):
                reasons.append(
                    _describe_axes(what, [feats[n] for n in names], [self.ranges[n] for n in names])
                )
        for name, value in feats.items():
            if name in self.ranges and _group(name) == "fraction" and self._outside(name, value):
                reasons.append(_describe(name, value, *self.ranges[name]))
        return reasons

    def to_dict(self) -> dict:
        emb = None
        if self.embeddings is not None:
            data = np.ascontiguousarray(self.embeddings, dtype="<f2")
            emb = {"shape": list(data.shape), "float16_base64": base64.b64encode(data.tobytes()).decode()}
        return {
            "n_cases": self.n_cases,
            "modalities": list(self.modalities),
            "ranges": {k: [float(lo), float(hi)] for k, (lo, hi) in self.ranges.items()},
            "embeddings": emb,
            "threshold": self.threshold,
            "alpha": self.alpha,
            "tolerances": {k: list(v) for k, v in TOLERANCES.items()},
        }

    @classmethod
    def from_dict(cls, data: dict, source: str = "reference") -> DistributionReference:
        """Inverse of :meth:`to_dict`; a malformed entry is a ValueError naming ``source``."""
        try:
            emb = data.get("embeddings")
            embeddings = None
            if emb is not None:
                raw = base64.b64decode(emb["float16_base64"])
                embeddings = np.frombuffer(raw, dtype="<f2").reshape(emb["shape"]).astype(np.float32)
            threshold = data.get("threshold")
            return cls(
                n_cases=int(data["n_cases"]),
                modalities=[str(m) for m in data.get("modalities", [])],
                ranges={str(k): (float(v[0]), float(v[1])) for k, v in dict(data["ranges"]).items()},
                embeddings=embeddings,
                threshold=None if threshold is None else float(threshold),
                alpha=float(data.get("alpha", 0.01)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{source}: malformed out-of-distribution reference: {exc}") from None


def fit_reference(
    profiles: list[InputProfile],
    embeddings: np.ndarray | None = None,
    alpha: float = 0.01,
    max_cases: int = 1000,
    seed: int = 0,
) -> DistributionReference:
    """A :class:`DistributionReference` from reference cases' profiles and image embeddings ``[N, E]``.

    Raises:
        ValueError: no cases, fewer than 2 embeddings, or embeddings that do not match the profiles.
    """
    if not profiles and embeddings is None:
        raise ValueError("an out-of-distribution reference needs at least one case")
    ranges: dict[str, tuple[float, float]] = {}
    names = {name for p in profiles for name in p.features()}
    for name in sorted(names):
        values = [p.features()[name] for p in profiles if name in p.features()]
        ranges[name] = (float(min(values)), float(max(values)))
    bank, threshold = None, None
    if embeddings is not None:
        emb = _normalise(np.asarray(embeddings))
        if emb.ndim != 2 or emb.shape[0] < 2:
            raise ValueError(f"an embedding reference needs at least 2 cases, got shape {emb.shape}")
        if profiles and len(profiles) != emb.shape[0]:
            raise ValueError(f"{len(profiles)} profiles but {emb.shape[0]} embeddings")
        if emb.shape[0] > max_cases:
            emb = emb[np.sort(np.random.default_rng(seed).choice(emb.shape[0], max_cases, replace=False))]
        # Stored as float16: quantised here, so the threshold is measured on exactly what is stored.
        bank = emb.astype(np.float16).astype(np.float32)
        loo = np.sort(_nearest_distances(bank, bank, exclude_self=True))
        rank = int(np.ceil((len(loo) + 1) * (1 - alpha)))  # split-conformal quantile
        threshold = float(loo[min(rank, len(loo)) - 1])
    n = len(profiles) if profiles else int(np.asarray(embeddings).shape[0])
    return DistributionReference(
        n_cases=n,
        modalities=sorted({p.modality for p in profiles}),
        ranges=ranges,
        embeddings=bank,
        threshold=threshold,
        alpha=alpha,
    )


def reference_from_info(info: dict[str, Any]) -> DistributionReference | None:
    """The reference stored with a checkpoint's calibration, or None for checkpoints without one."""
    ref = (info.get("calibration") or {}).get("reference")
    if not ref:
        return None
    return DistributionReference.from_dict(ref, f"{info.get('path', 'checkpoint')}: calibration.reference")
