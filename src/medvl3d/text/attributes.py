"""Lesion descriptions to Malenia attribute values.

``parse_attributes("Contrast-enhanced CT: a round-like hypodense lesion in the left kidney ...")`` returns
the seven attributes of :data:`medvl3d.schema.ATTRIBUTES` as canonical value names (``"contrast-enhanced"``,
``"left kidney"``, ``"round-like"``, ``"hypodense"`` ...), with organ-specific locations and lung densities.

How it reads a description (phrases live in ``data/attributes.yaml``, not in code):

- Text is lower-cased, hyphens read as spaces, and split into sentences and comma clauses. Phrases are
  matched at word boundaries; overlapping matches resolve to the longest ("non contrast" over "contrast").
- A phrase preceded in its clause by a negation ("no", "not", "without" ... within 4 words) is negated:
  "not closely related" means *separate*, "not homogeneous" means *heterogeneous*; a negated shape,
  density or location phrase is dropped.
- The lesion is described first, so the earliest statement of an attribute wins ("an irregular hypodense
  lesion ... An additional round cyst" is irregular). Density words describing parts of the lesion
  ("hypodense areas", "foci of high attenuation", "linear hyperdensity") are not the lesion's density.
- Margin words in a clause about a neighbouring structure ("closely related to the duodenum with
  indistinct borders") describe the neighbour relation, not the lesion margin.
- Strong phrases state an attribute; weak ones only imply it ("fluid attenuation" -> hypodense,
  "necrosis" -> heterogeneous, "enhancement" -> contrast-enhanced) and count only when nothing states it.

Defaults for silent descriptions (``defaults=True``), read off the annotation sheet's conventions:

- neighbour relation: *separate* (every silent description in the sheet is coded 1);
- homogeneity and margin of an irregular lesion: *heterogeneous* / *ill-defined* (lung: *spiculated*),
  as coded where the lung and pancreas descriptions are silent; the coded values of the other sheets agree
  for 97-100% of irregular carcinomas (not for the 10 irregular renal cysts; see the benchmark);
- shape: *irregular* for an ill-defined lesion, *round-like* for a well-defined one (the HCC sheet codes
  "a heterogeneous hypodense lesion ... ill-defined margins" as irregular; 82-100% agreement elsewhere);
- contrast: *non-contrast* when neither contrast nor enhancement is mentioned (12 of the 21 silent lung
  descriptions; this one is a weak prior, about 0.6 accurate).

Shape, density and location have no default: ``None`` means the text does not say.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from medvl3d.schema import ATTRIBUTES, LESION_ORGANS, attribute_values, encode_attribute
from medvl3d.text.reports import is_english

DEFAULT_RULES = Path(__file__).resolve().parent / "data" / "attributes.yaml"

_FLIP = {
    "homogeneous": "heterogeneous",
    "heterogeneous": "homogeneous",
    "well-defined": "ill-defined",
    "ill-defined": "well-defined",
    "spiculated": "well-defined",
}
# Density words that describe a part of the lesion rather than the lesion itself.
_PART_AFTER = re.compile(
    r"\s*(?:\w+ )?(?:areas|foci|focus|regions|components?|spots?|dots?|septa|septations?|structures?|"
    r"strands?|lines?|rims?|calcifications?|shadows?|patches)\b|\s*(?:within|inside)\b"
)
_PART_BEFORE = re.compile(
    r"(?:\b(?:areas|foci|focus|regions|components|spots) of (?:\w+ )?"
    r"|\b(?:linear|punctate|tubular|strip|streaky|streak|scattered|spotty|internal) (?:\w+ )?)$"
)
_CLAUSE_END = re.compile(r"[.;:!?,\n]|\b(?:but|whereas|while)\b")
_SENTENCE_END = re.compile(r"[.;:!?\n]")


@dataclass(frozen=True)
class _Hit:
    value: str
    start: int
    end: int
    weak: bool
    phrase: str


class _Phrases:
    """Regular expressions per value (strong and weak tiers), matched longest-first without overlaps."""

    def __init__(self, table: dict[str, Any], where: str, rename: dict[str, str] | None = None) -> None:
        self.patterns: list[tuple[str, bool, re.Pattern]] = []
        for value, tiers in table.items():
            tiers = {"strong": tiers} if isinstance(tiers, list) else tiers
            for tier, phrases in tiers.items():
                if tier not in ("strong", "weak"):
                    raise ValueError(f"{where}: unknown tier {tier!r} for {value!r} (use strong/weak)")
                for phrase in phrases:
                    try:
                        regex = re.compile(rf"\b(?:{phrase})\b")
                    except re.error as exc:
                        raise ValueError(f"{where}: bad pattern {phrase!r} for {value!r}: {exc}") from None
                    self.patterns.append(((rename or {}).get(value, value), tier == "weak", regex))

    def __add__(self, other: _Phrases) -> _Phrases:
        out = _Phrases({}, "")
        out.patterns = self.patterns + other.patterns
        return out

    def values(self) -> set[str]:
        return {v for v, _, _ in self.patterns}

    def find(self, text: str) -> list[_Hit]:
        hits = [
            _Hit(value, m.start(), m.end(), weak, m.group(0))
            for value, weak, regex in self.patterns
            for m in regex.finditer(text)
        ]
        kept: list[_Hit] = []
        for hit in sorted(hits, key=lambda h: (h.start - h.end, h.start, h.weak)):
            if all(hit.end <= k.start or hit.start >= k.end for k in kept):
                kept.append(hit)
        return sorted(kept, key=lambda h: (h.start, h.weak))


class _Text:
    """Normalised description with sentence and clause boundaries."""

    def __init__(self, raw: str) -> None:
        text = raw.lower()
        text = re.sub(r"(?<=\d)\.(?=\d)", "", text)  # "2.4 cm": a decimal point is not a sentence end
        text = re.sub(r"[-\u2010\u2011\u2012\u2013\u2014_/]", " ", text)
        self.s = re.sub(r"[^\S\n]+", " ", text)
        self._clauses = [0] + [m.end() for m in _CLAUSE_END.finditer(self.s)] + [len(self.s) + 1]
        self._sentences = [0] + [m.end() for m in _SENTENCE_END.finditer(self.s)] + [len(self.s) + 1]

    @staticmethod
    def _span(bounds: list[int], pos: int) -> tuple[int, int]:
        i = bisect.bisect_right(bounds, pos) - 1
        return bounds[i], bounds[i + 1] - 1

    def clause(self, pos: int) -> tuple[int, int]:
        return self._span(self._clauses, pos)

    def sentence(self, pos: int) -> tuple[int, int]:
        return self._span(self._sentences, pos)


class AttributeParser:
    """Reads Malenia attribute values from lesion descriptions with a phrase table.

    Args:
        rules: YAML phrase table (default: the built-in ``data/attributes.yaml``).
        defaults: fill silent attributes with the annotators' conventions (see the module docstring);
            ``False`` leaves them ``None``.

    Raises:
        FileNotFoundError / ValueError: a missing or malformed rules file, or a value the schema lacks.
    """

    def __init__(self, rules: str | Path | None = None, *, defaults: bool = True) -> None:
        self.rules_path = Path(rules) if rules is not None else DEFAULT_RULES
        self.defaults = defaults
        if not self.rules_path.is_file():
            raise FileNotFoundError(f"attribute rules file not found: {self.rules_path}")
        try:
            cfg = yaml.safe_load(self.rules_path.read_text(encoding="utf-8"))
            where = str(self.rules_path)
            self._negation = re.compile(rf"\b(?:{'|'.join(cfg['negation'])})\b(?:\W+\w+){{0,3}}\W*$")
            self._organs = _Phrases(cfg["organs"], where)
            self._neighbours = _Phrases({"neighbour": cfg["neighbours"]}, where)
            rel = cfg["neighbor_relation"]
            self._related = _Phrases({"related": rel["related"], "separate": rel["separate"]}, where)
            self._boundary = re.compile(rf"\b(?:{'|'.join(rel['boundary'])})\b (?:with|between|from|to)\b")
            self._unclear = re.compile(rf"\b(?:{'|'.join(rel['unclear'])})\b")
            common = {a: _Phrases(t, where) for a, t in cfg["attributes"].items()}
            # Per organ and attribute: organ-specific phrases + common ones renamed to organ values.
            self._tables: dict[tuple[str | None, str], _Phrases] = {}
            for organ in (None, *LESION_ORGANS):
                for attr, table in cfg["attributes"].items():
                    specific = cfg.get("organ_attributes", {}).get(organ, {}).get(attr)
                    rename = cfg.get("organ_equivalents", {}).get(organ, {}).get(attr)
                    merged = _Phrases(table, where, rename) if rename else common[attr]
                    if specific:
                        merged = _Phrases(specific, where) + merged
                    self._tables[(organ, attr)] = merged
                if organ is not None:
                    self._tables[(organ, "location")] = _Phrases(cfg["locations"][organ], where)
        except (KeyError, TypeError, AttributeError, yaml.YAMLError) as exc:
            raise ValueError(f"malformed attribute rules file {self.rules_path}: {exc!r}") from None
        for (organ, attr), table in self._tables.items():
            # The common table speaks the codes shared by every organ but the lung (liver stands in).
            allowed = attribute_values(organ or "liver", attr) if attr != "location" or organ else ()
            unknown = table.values() - set(allowed)
            if unknown:
                raise ValueError(
                    f"{self.rules_path}: {sorted(unknown)} are not values of {attr!r} for "
                    f"{organ or 'the common table'}; values: {allowed}"
                )

    # --- public API -----------------------------------------------------------------------------------
    def infer_organ(self, text: str) -> str | None:
        """The organ the description is about: the earliest organ word ("right kidney", "hepatic lobe",
        "upper lobe" ...), or None when none is named."""
        hits = self._organs.find(_Text(_check_text(text)).s)
        return hits[0].value if hits else None

    def parse(self, text: str, organ: str | None = None) -> dict[str, str | None]:
        """Attribute -> canonical value name (None when the text does not say and no default applies).

        Args:
            text: a lesion description; empty, punctuation-only or non-English text gives all None.
            organ: one of ``medvl3d.schema.LESION_ORGANS``; inferred from the text when None.
        """
        text = _check_text(text)
        organ = _check_organ(organ) if organ is not None else self.infer_organ(text)
        doc = _Text(text)
        neighbours = self._neighbour_spans(doc, organ)
        out: dict[str, str | None] = {
            "contrast": self._contrast(doc),
            "location": self._first(self._hits(doc, organ, "location"), doc) if organ else None,
            "shape": self._first(self._hits(doc, organ, "shape"), doc),
            "density": self._density(doc, organ),
            "homogeneity": self._first(self._hits(doc, organ, "homogeneity"), doc, flip=True),
            "margin": self._margin(doc, organ, neighbours),
            "neighbor_relation": self._neighbour_relation(doc, neighbours),
        }
        # Conventions fill the gaps of a description that states something in English, never of empty,
        # punctuation-only or foreign text (all None there: nothing could be read). Telegraphic English
        # ("Spiculated solid nodule, RUL.") has few stopwords, so two stated attributes suffice too.
        stated = sum(v is not None for v in out.values())
        if self.defaults and (stated >= 2 or (stated == 1 and is_english(text))):
            self._apply_defaults(out, organ)
        return {attr: out[attr] for attr in ATTRIBUTES}

    def parse_codes(self, text: str, organ: str | None = None) -> dict[str, int | None]:
        """Like :meth:`parse`, as the annotation sheet's integer codes (organ-specific).

        Raises:
            ValueError: when ``organ`` is None and the text names no organ (codes depend on it).
        """
        resolved = _check_organ(organ) if organ is not None else self.infer_organ(_check_text(text))
        if resolved is None:
            raise ValueError(
                f"cannot tell the organ of {text[:60]!r}; pass organ= (codes are organ-specific)"
            )
        values = self.parse(text, resolved)
        return {a: None if v is None else encode_attribute(resolved, a, v) for a, v in values.items()}

    # --- attribute readers ----------------------------------------------------------------------------
    def _hits(self, doc: _Text, organ: str | None, attr: str) -> list[_Hit]:
        return self._tables[(organ, attr)].find(doc.s)

    def _negated(self, doc: _Text, hit: _Hit) -> bool:
        start, _ = doc.clause(hit.start)
        return bool(self._negation.search(doc.s[start : hit.start]))

    def _first(self, hits: list[_Hit], doc: _Text, flip: bool = False) -> str | None:
        """The earliest strong statement (else the earliest weak one); negated ones flipped or dropped."""
        stated: list[tuple[bool, int, str]] = []
        for hit in hits:
            value = hit.value
            if self._negated(doc, hit):
                if not flip or value not in _FLIP or re.search(r"spic|specul|burr", hit.phrase):
                    continue
                value = _FLIP[value]
            stated.append((hit.weak, hit.start, value))
        return min(stated)[2] if stated else None

    def _contrast(self, doc: _Text) -> str | None:
        # Negation is not applied: "no enhancement" still means contrast was given.
        hits = self._tables[(None, "contrast")].find(doc.s)
        strong = {h.value for h in hits if not h.weak}
        if "contrast-enhanced" in strong:  # a multi-phase study with a plain phase is contrast-enhanced
            return "contrast-enhanced"
        if strong:
            return "non-contrast"
        return "contrast-enhanced" if hits else None

    def _density(self, doc: _Text, organ: str | None) -> str | None:
        hits = [
            h
            for h in self._hits(doc, organ, "density")
            if not _PART_AFTER.match(doc.s, h.end)
            and not _PART_BEFORE.search(doc.s[max(0, h.start - 40) : h.start])
        ]
        return self._first(hits, doc)

    def _margin(self, doc: _Text, organ: str | None, neighbours: list[tuple[int, int]]) -> str | None:
        hits = []
        for hit in self._hits(doc, organ, "margin"):
            start, end = doc.clause(hit.start)
            # The phrase's part of the clause, up to an "and" ("ill-defined margins and contact with the
            # pleura" is a margin), must not name a neighbour ("indistinct borders with the duodenum").
            before = doc.s.rfind(" and ", start, hit.start)
            after = doc.s.find(" and ", hit.end, end)
            start, end = (start if before < 0 else before), (end if after < 0 else after)
            if not any(start <= a < end for a, _ in neighbours):
                hits.append(hit)
        value = self._first(hits, doc, flip=True)
        if value == "well-defined" or value is None or organ != "lung":
            return value
        return "spiculated"

    def _neighbour_spans(self, doc: _Text, organ: str | None) -> list[tuple[int, int]]:
        """Spans naming structures other than the lesion's own organ."""
        own = [regex for name, _, regex in self._organs.patterns if name == organ]
        return [
            (hit.start, hit.end)
            for hit in self._neighbours.find(doc.s)
            if not any(regex.fullmatch(hit.phrase) for regex in own)
        ]

    def _neighbour_relation(self, doc: _Text, neighbours: list[tuple[int, int]]) -> str | None:
        related = separate = False
        for hit in self._related.find(doc.s):
            _, clause_end = doc.clause(hit.start)
            names_neighbour = any(hit.start <= a < clause_end for a, _ in neighbours)
            if hit.value == "separate" or (hit.value == "related" and self._negated(doc, hit)):
                separate = True
            elif names_neighbour or "pleura" in hit.phrase:
                related = True
        # "indistinct borders with the adjacent liver", "the borders with the gallbladder ... are indistinct"
        for m in self._boundary.finditer(doc.s):
            s_start, s_end = doc.sentence(m.start())
            sentence = doc.s[s_start:s_end]
            # The neighbour must be the object of "with" ("borders with the adjacent liver").
            if self._unclear.search(sentence) and any(m.end() <= a <= m.end() + 20 for a, _ in neighbours):
                related = True
        if related:
            return "invading neighbouring organs"
        return "separate from neighbouring organs" if separate else None

    def _apply_defaults(self, out: dict[str, str | None], organ: str | None) -> None:
        if out["neighbor_relation"] is None:
            out["neighbor_relation"] = "separate from neighbouring organs"
        if out["contrast"] is None:
            out["contrast"] = "non-contrast"
        if out["shape"] is None and out["margin"] is not None:
            out["shape"] = "round-like" if out["margin"] == "well-defined" else "irregular"
        # Only for irregular lesions: round-like ones are homogeneous and well-defined in the cyst sheet
        # but mostly not in the carcinoma sheets, so silence about a round lesion stays None.
        if out["shape"] == "irregular":
            out["homogeneity"] = out["homogeneity"] or "heterogeneous"
            out["margin"] = out["margin"] or ("spiculated" if organ == "lung" else "ill-defined")


@lru_cache(maxsize=1)
def default_parser() -> AttributeParser:
    """The parser on the built-in phrase table, with defaults (built once)."""
    return AttributeParser()


def parse_attributes(text: str, organ: str | None = None) -> dict[str, str | None]:
    """A lesion description -> the 7 Malenia attributes as canonical value names (see the module doc)."""
    return default_parser().parse(text, organ)


def parse_attribute_codes(text: str, organ: str | None = None) -> dict[str, int | None]:
    """A lesion description -> the annotation sheet's integer codes for the 7 attributes."""
    return default_parser().parse_codes(text, organ)


def infer_organ(text: str) -> str | None:
    """The organ a lesion description is about (one of ``LESION_ORGANS``), or None."""
    return default_parser().infer_organ(text)


def _check_text(text: object) -> str:
    if not isinstance(text, str):
        raise ValueError(f"a lesion description must be a string, got {type(text).__name__}")
    return text


def _check_organ(organ: str) -> str:
    name = str(organ).strip().lower()
    if name not in LESION_ORGANS:
        raise ValueError(f"unknown lesion organ {organ!r}; known: {', '.join(LESION_ORGANS)}")
    return name
