"""Lesion types as attribute distributions (Malenia schema), loaded and validated from YAML.

A lesion type is a categorical distribution per attribute over the canonical value names of
`medvl3d.schema.attribute_values(organ, attribute)`, plus size and count ranges and the words a
report uses for it. Users add types by writing YAML in the format of the shipped
`lesion_types.yaml`; `load_lesion_types` rejects unknown organs, attributes or values and
probabilities that do not sum to one, naming the file and the type.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import yaml

from medvl3d.schema import ATTRIBUTES, LESION_ORGANS, attribute_values, decode_attribute

DEFAULT_LESION_TYPES = "lesion_types.yaml"
_TOL = 0.011  # rounding slack for probabilities written with three decimals


@dataclass(frozen=True)
class LesionType:
    """One lesion type: organ, attribute distributions, size/count ranges and report wording."""

    name: str
    organ: str
    report_name: str
    synonyms: tuple[str, ...]
    size_mm: tuple[float, float]
    count: tuple[int, int]
    attributes: dict[str, dict[str, float]]
    hu: tuple[float, float] | None = None
    unseen: bool = False
    extra: dict = field(default_factory=dict)

    def probability(self, attribute: str, value: str) -> float:
        return float(self.attributes[attribute].get(value, 0.0))

    def support(self, attribute: str) -> tuple[str, ...]:
        """Values of `attribute` with non-zero probability."""
        return tuple(v for v, p in self.attributes[attribute].items() if p > 0)

    def mode(self) -> dict[str, str]:
        """The most probable value of every attribute (the type's typical appearance)."""
        return {a: max(d.items(), key=lambda kv: kv[1])[0] for a, d in self.attributes.items()}

    def sample(self, rng: np.random.Generator, attribute: str, allowed: set[str] | None = None) -> str:
        """Draw a value of `attribute`, optionally restricted (renormalised) to `allowed` values."""
        items = [(v, p) for v, p in self.attributes[attribute].items() if p > 0]
        if allowed is not None:
            items = [(v, p) for v, p in items if v in allowed] or [(v, 1.0) for v in sorted(allowed)]
        probs = np.array([p for _, p in items], dtype=float)
        return items[int(rng.choice(len(items), p=probs / probs.sum()))][0]


def _fail(path, name: str, msg: str) -> ValueError:
    return ValueError(f"{path}: lesion type {name!r}: {msg}")


def _range(path, name: str, key: str, raw, cast) -> tuple:
    if not (isinstance(raw, (list, tuple)) and len(raw) == 2):
        raise _fail(path, name, f"{key} must be a [low, high] pair, got {raw!r}")
    try:
        lo, hi = cast(raw[0]), cast(raw[1])
    except (TypeError, ValueError):
        raise _fail(path, name, f"{key} must hold numbers, got {raw!r}") from None
    if lo > hi or (key != "hu" and lo <= 0):
        raise _fail(path, name, f"{key} must satisfy 0 < low <= high, got {raw!r}")
    return lo, hi


def parse_lesion_type(name: str, spec: dict, path: str | Path = "<yaml>") -> LesionType:
    """Validate one YAML entry and build its `LesionType`.

    Raises:
        ValueError: naming the file, the type and the problem.
    """
    if not isinstance(spec, dict):
        raise _fail(path, name, "must be a mapping")
    known = {"organ", "report_name", "synonyms", "size_mm", "count", "attributes", "hu", "unseen"}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise _fail(path, name, f"unknown keys {unknown}; allowed: {sorted(known)}")
    organ = spec.get("organ")
    if organ not in LESION_ORGANS:
        raise _fail(path, name, f"unknown organ {organ!r}; known: {', '.join(LESION_ORGANS)}")
    attrs = spec.get("attributes")
    if not isinstance(attrs, dict):
        raise _fail(path, name, "missing 'attributes' mapping")
    bad = sorted(set(attrs) - set(ATTRIBUTES))
    if bad:
        raise _fail(path, name, f"unknown attributes {bad}; known: {', '.join(ATTRIBUTES)}")
    missing = [a for a in ATTRIBUTES if a not in attrs]
    if missing:
        raise _fail(path, name, f"missing attributes {missing}")
    dists: dict[str, dict[str, float]] = {}
    for attr in ATTRIBUTES:
        dist = attrs[attr]
        values = attribute_values(organ, attr)
        if not isinstance(dist, dict) or not dist:
            raise _fail(path, name, f"attribute {attr!r} must map values to probabilities")
        for v, p in dist.items():
            if v not in values:
                raise _fail(
                    path, name, f"{v!r} is not a value of {attr!r} for {organ}; values: {list(values)}"
                )
            if not isinstance(p, (int, float)) or p < 0:
                raise _fail(path, name, f"probability of {attr}={v!r} must be a number >= 0, got {p!r}")
        total = float(sum(dist.values()))
        if abs(total - 1.0) > _TOL:
            raise _fail(path, name, f"probabilities of {attr!r} sum to {total:.3f}, not 1")
        # Canonical order (the schema's code order) keeps sampling independent of YAML key order.
        dists[attr] = {v: float(dist[v]) / total for v in values if v in dist}
    report_name = spec.get("report_name") or name.replace("_", " ")
    synonyms = spec.get("synonyms") or []
    if not isinstance(synonyms, list) or not all(isinstance(s, str) for s in synonyms):
        raise _fail(path, name, "synonyms must be a list of strings")
    hu = _range(path, name, "hu", spec["hu"], float) if "hu" in spec else None
    return LesionType(
        name=name,
        organ=organ,
        report_name=str(report_name),
        synonyms=tuple(synonyms),
        size_mm=_range(path, name, "size_mm", spec.get("size_mm", [10, 30]), float),
        count=_range(path, name, "count", spec.get("count", [1, 1]), int),
        attributes=dists,
        hu=hu,
        unseen=bool(spec.get("unseen", False)),
    )


def load_lesion_types(path: str | Path | None = None) -> dict[str, LesionType]:
    """Load and validate lesion types from YAML (default: the shipped `lesion_types.yaml`).

    Raises:
        FileNotFoundError: if `path` does not exist.
        ValueError: for malformed YAML or an invalid type, naming the file and the problem.
    """
    if path is None:
        text = resources.files(__package__).joinpath(DEFAULT_LESION_TYPES).read_text(encoding="utf-8")
        path = DEFAULT_LESION_TYPES
    else:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"lesion type file not found: {path}")
        text = path.read_text(encoding="utf-8")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("types"), dict) or not doc["types"]:
        raise ValueError(f"{path}: expected a mapping with a non-empty 'types' mapping")
    return {str(n): parse_lesion_type(str(n), spec, path) for n, spec in doc["types"].items()}


def attribute_frequencies(csv_path: str | Path) -> dict[str, dict[str, float]]:
    """Per-attribute value frequencies of a Malenia annotation CSV (one lesion per row).

    Codes may be written "2", "2.0" or as a multi-value "1、2" (counted 1/k for each of k values);
    empty cells are skipped. This is how the shipped real-data-derived types were computed.
    """
    with open(csv_path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise ValueError(f"{csv_path}: no annotation rows")
    organ = rows[0]["organ"]
    out: dict[str, dict[str, float]] = {}
    for attr in ATTRIBUTES:
        counts: Counter[str] = Counter()
        for row in rows:
            parts = [p for p in str(row.get(attr, "")).replace("、", ",").split(",") if p.strip()]
            for p in parts:
                counts[decode_attribute(organ, attr, p.strip())] += 1.0 / len(parts)
        n = sum(counts.values())
        out[attr] = {v: counts[v] / n for v in attribute_values(organ, attr) if counts[v] > 0}
    return out
