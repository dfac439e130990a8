"""Lesion types as the data records them: per type, the organ and each attribute's value frequencies.

Nothing here knows a lesion type by name: the table is read from the ``lesions`` of a dataset's cases
(SynthCT-VL writes every lesion's type and attribute values into its manifests), so a folder generated
with another ``--lesion-types`` YAML brings its own types, seen or unseen. Malenia checkpoints store the
table of their training data to name what they find (:func:`nearest_type`); evaluation builds the queries
of the types it scores from the table of the evaluated data (:func:`type_queries`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from medvl3d.schema import ATTRIBUTES, LESION_ORGANS

__all__ = [
    "TYPE_QUERY_ATTRIBUTES",
    "lesion_table",
    "type_queries",
    "nearest_type",
    "organ_of_location",
    "records_lesions",
]

#: lesion type -> {"organ": str, "count": int, attribute: {value: frequency}}
LesionTable = dict[str, dict[str, Any]]


def records_lesions(dataset: Any) -> list[dict[str, Any]]:
    """Every lesion record (type, organ, attribute values) of a dataset's cases, without reading volumes
    (a layout's ``records``; a wrapped dataset's ``base``)."""
    while not hasattr(dataset, "records") and hasattr(dataset, "base"):
        dataset = dataset.base
    records = getattr(dataset, "records", None)
    if records is None:
        raise ValueError(
            f"{type(dataset).__name__}: cannot list the lesions of this dataset (no case records)"
        )
    return [dict(les) for rec in records for les in rec.lesions.values()]


def lesion_table(lesions: Iterable[Mapping[str, Any]], where: str = "the data") -> LesionTable:
    """Per lesion type: organ, number of lesions, and the frequency of every attribute value.

    Raises:
        ValueError: a lesion without a ``type`` or ``organ``, or a type found in two organs, naming ``where``.
    """
    counts: dict[str, dict[str, Counter]] = {}
    organs: dict[str, str] = {}
    n: Counter = Counter()
    for les in lesions:
        name, organ = les.get("type"), les.get("organ")
        if not name or not organ:
            raise ValueError(f"{where}: a lesion record lacks 'type' or 'organ': {dict(les)}")
        if organs.setdefault(name, organ) != organ:
            raise ValueError(f"{where}: lesion type {name!r} is recorded in {organs[name]} and in {organ}")
        n[name] += 1
        per = counts.setdefault(name, {a: Counter() for a in ATTRIBUTES})
        for attr in ATTRIBUTES:
            if les.get(attr):
                per[attr][str(les[attr])] += 1
    return {
        name: {
            "organ": organs[name],
            "count": n[name],
            **{
                a: {v: c / max(1, sum(cnt.values())) for v, c in sorted(cnt.items())}
                for a, cnt in per.items()
            },
        }
        for name, per in sorted(counts.items())
    }


#: The attributes of a lesion type's query: its organ, not a location within it (which lobe or side is a
#: property of each lesion, as the contrast phase is of the scan: a query naming the type's most frequent
#: lobe asks for a part of the type's lesions), and its most frequent value of each other attribute.
TYPE_QUERY_ATTRIBUTES = ("organ", "shape", "density", "homogeneity", "margin", "neighbor_relation")


def type_queries(table: LesionTable, attributes: Iterable[str] = ATTRIBUTES) -> dict[str, dict[str, str]]:
    """Each type's typical description: its most frequent value of every attribute (ties: first in order).

    ``attributes`` restricts the description (e.g. leave out the contrast phase, a property of the scan);
    ``"organ"`` among them stands for the type's organ (see :data:`TYPE_QUERY_ATTRIBUTES`).
    """
    keep = list(attributes)
    return {
        name: {
            a: row["organ"] if a == "organ" else max(row[a].items(), key=lambda kv: kv[1])[0]
            for a in keep
            if row.get(a)
        }
        for name, row in table.items()
    }


def nearest_type(attributes: Mapping[str, str | None], table: LesionTable) -> tuple[str | None, float]:
    """The known type whose recorded value frequencies best explain ``attributes`` (mean frequency of the
    given values, organ must agree when known); ``(None, 0.0)`` for an empty table."""
    organ = attributes.get("organ") or organ_of_location(attributes.get("location"))
    best: tuple[str | None, float] = (None, 0.0)
    for name, row in table.items():
        if organ is not None and row["organ"] != organ:
            continue
        given = [(a, v) for a, v in attributes.items() if a in ATTRIBUTES and v]
        score = sum(row[a].get(v, 0.0) for a, v in given) / max(1, len(given))
        if best[0] is None or score > best[1]:
            best = (name, score)
    return best


def organ_of_location(location: str | None) -> str | None:
    """The organ a location value belongs to ("left lobe" -> liver), None when unknown or ambiguous."""
    if not location:
        return None
    from medvl3d.schema import attribute_values

    owners = [o for o in LESION_ORGANS if location in attribute_values(o, "location")]
    return owners[0] if len(owners) == 1 else None
