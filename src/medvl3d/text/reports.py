"""Radiology report understanding: sentences, sections, finding mentions with negation and uncertainty.

The pipeline is NegEx-style and deterministic, so it runs anywhere, on reports of any length:

1. ``split_sections`` finds headed sections (FINDINGS, IMPRESSION, ...);
2. ``split_sentences`` cuts real report punctuation into sentences (decimals, abbreviations,
   parenthetical question marks, quotes and bullets as separators);
3. every sentence is cut into *clauses* at scope terminators ("but", "however", ";", a comma after a
   complete statement, parentheses), since a negation cue governs only its own clause;
4. ``find_mentions`` matches the alias table (``data/aliases.yaml``: synonyms and abbreviations of
   canonical findings, the 18 CT-RATE labels and beyond) and marks each mention negated or uncertain
   from the cue lists in ``data/cues.yaml`` (pre-cues govern what follows, post-cues what precedes;
   pseudo-negations such as "no change" are masked first).

Matching is done on lower-cased text in which hyphens read as spaces, with the same length as the
input, so every span refers to the original string.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

DATA_DIR = Path(__file__).resolve().parent / "data"

#: Section names that carry findings; mentions elsewhere (history, indication) are context only.
FINDING_SECTIONS: tuple[str, ...] = ("findings", "impression")

_SECTION_HEADERS: dict[str, str] = {
    "findings": "findings",
    "finding": "findings",
    "impression": "impression",
    "impressions": "impression",
    "conclusion": "impression",
    "conclusions": "impression",
    "opinion": "impression",
    "summary": "impression",
    "clinical information": "clinical_information",
    "clinical history": "clinical_information",
    "history": "clinical_information",
    "indication": "clinical_information",
    "indications": "clinical_information",
    "technique": "technique",
    "comparison": "comparison",
    "recommendation": "recommendation",
    "recommendations": "recommendation",
}
_HEADER_RE = re.compile(
    r"(?:^|(?<=[\n.;\"?!]))[ \t]*("
    + "|".join(sorted(map(re.escape, _SECTION_HEADERS), key=len, reverse=True))
    + r")[ \t]*(?:_en)?[ \t]*:",
    re.IGNORECASE,
)

# Words after which a period does not end a sentence.
_ABBREVIATIONS = {"e.g", "i.e", "vs", "dr", "approx", "fig", "no", "nr", "cf", "ca", "mr", "mrs", "st", "max"}
# Sentence ends: [.!] (or ? outside parentheses) followed by space/quote/end; newlines; quotes; bullets.
_SENT_END_RE = re.compile(
    r"[.!?]+(?=[\s\"'\u201c\u201d]|$)|\n\s*\n|\n(?=\s*(?:[-*\u2022]|\d+[.)]\s))|[\"\u201c\u201d\u2022]"
)
_WORD_RE = re.compile(r"[a-z]+(?:'[a-z]+)?")
# A comma or "and" right after a complete statement ("... are normal, and no X") starts a new clause.
_PREDICATE_END = (
    r"(?:observed|detected|seen|noted|present|visuali[sz]ed|identified|normal|natural|preserved|open|"
    r"patent|unremarkable|evaluated|recommended|demonstrated|found|appearance|limits)"
)
_CLAUSE_SPLIT_EXTRA = [
    r"[;:()\[\]]",
    r"\b" + _PREDICATE_END + r"(?P<sep>\s*,?\s+and\b|\s*,)",
    # ", and a few nodules are seen": a determiner after ", and" starts a new statement, not a list item.
    r",\s+and\s+(?=(?:a|an|the|there|some|multiple|several|many|few|two|three)\b)",
]


@dataclass(frozen=True)
class Mention:
    """One mention of a canonical finding in a report.

    Attributes:
        finding: canonical finding name (a key of the alias table).
        text: the matched words as written in the report.
        start: character offset of the match in the analysed string.
        end: end offset (exclusive).
        negated: the finding is said to be absent ("no X", "X was not observed").
        uncertain: the finding is hedged ("possible X", "X?", "X cannot be excluded").
        section: the report section the mention is in ("findings", "impression", ...).
        clause: the clause around the mention (used for locations and context).
        historical: the clause is about an earlier examination and does not say the finding is there now
            ("the consolidation seen in the previous examination has regressed"), or the finding is said
            to be gone ("loss of consolidation").
    """

    finding: str
    text: str
    start: int
    end: int
    negated: bool
    uncertain: bool
    section: str
    clause: str
    historical: bool = False

    @property
    def affirmed(self) -> bool:
        """True when the finding is stated as present now, without hedging."""
        return not self.negated and not self.uncertain and not self.historical


@dataclass(frozen=True)
class _Alias:
    pattern: re.Pattern
    context: re.Pattern | None
    exclude: re.Pattern | None


def _word_alternation(patterns: Iterable[str]) -> str:
    # Longer patterns first, so the regex prefers "calcific plaques" over "calcific" at one position.
    ordered = sorted(patterns, key=len, reverse=True)
    return r"\b(?:" + "|".join(f"(?:{p})" for p in ordered) + r")(?![a-z])"


def _compile_list(patterns: Iterable[str], where: str) -> re.Pattern | None:
    patterns = list(patterns or [])
    if not patterns:
        return None
    try:
        return re.compile(_word_alternation(patterns))
    except re.error as exc:
        raise ValueError(f"{where}: invalid regular expression in {patterns!r}: {exc}") from exc


def _read_yaml(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    with path.open(encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


AliasTable = dict[str, list[dict[str, list[str]]]]


def load_aliases(path: str | Path | None = None) -> AliasTable:
    """Read an alias table: canonical finding -> list of alias groups (``patterns``/``context``/``exclude``).

    In YAML a finding maps to one group (a mapping), several groups (a list of mappings, when one
    finding is written in ways that need different context rules) or a bare list of patterns.

    Args:
        path: YAML file in the format of ``medvl3d/text/data/aliases.yaml``; the built-in table if None.
    """
    path = DATA_DIR / "aliases.yaml" if path is None else Path(path)
    raw = _read_yaml(path)
    table: AliasTable = {}
    for name, entry in raw.items():
        if isinstance(entry, list) and all(isinstance(p, str) for p in entry):
            entry = {"patterns": entry}  # short form: a bare list of patterns
        groups = entry if isinstance(entry, list) else [entry]
        table[str(name)] = []
        for group in groups:
            if not isinstance(group, dict) or not group.get("patterns"):
                raise ValueError(f"{path}: finding {name!r} needs a non-empty 'patterns' list")
            unknown = set(group) - {"patterns", "context", "exclude"}
            if unknown:
                raise ValueError(f"{path}: finding {name!r} has unknown keys {sorted(unknown)}")
            clean = {k: [str(p) for p in group.get(k) or []] for k in ("patterns", "context", "exclude")}
            for key, pats in clean.items():
                _compile_list(pats, f"{path}: {name}.{key}")
            table[str(name)].append(clean)
    return table


def load_cues(path: str | Path | None = None) -> dict[str, list[str]]:
    """Read the NegEx cue lists (negation, pseudo-negation, uncertainty, terminators, temporality)."""
    path = DATA_DIR / "cues.yaml" if path is None else Path(path)
    raw = _read_yaml(path)
    keys = (
        "pre_negation",
        "post_negation",
        "pseudo_negation",
        "pre_uncertainty",
        "post_uncertainty",
        "terminators",
    )
    missing = [k for k in keys if k not in raw]
    if missing:
        raise ValueError(f"{path}: missing cue lists {missing}")
    # Temporality cues are optional (older cue files lack them).
    names = (*keys, "historical", "pseudo_historical", "pre_historical", "current")
    bad = [k for k in names if raw.get(k) is not None and not isinstance(raw[k], list)]
    if bad:
        raise ValueError(f"{path}: cue entries {bad} must be lists of patterns")
    return {k: [str(p) for p in raw.get(k) or []] for k in names}


#: The built-in alias table (canonical finding -> pattern lists).
ALIASES: AliasTable = load_aliases()


_DASHES = str.maketrans({"-": " ", "\u2013": " ", "\u2014": " ", "/": " ", "_": " "})


def _normalise(text: str) -> str:
    """Lower-case and read hyphens/dashes/slashes as spaces, keeping the string length (spans stay valid)."""
    low = text.lower()
    if len(low) != len(text):
        # A few characters lower-case to two (Turkish dotted 'İ' -> 'i̇'): keep those as they are, or
        # every span after them would shift.
        low = "".join(c.lower() if len(c.lower()) == 1 else c for c in text)
    return low.translate(_DASHES)


class ReportParser:
    """Finds canonical finding mentions with negation/uncertainty in report text.

    Args:
        aliases: alias table as returned by ``load_aliases``; the built-in one if None.
        cues: cue lists as returned by ``load_cues``; the built-in ones if None.
    """

    def __init__(
        self,
        aliases: Mapping[str, list[dict[str, list[str]]]] | None = None,
        cues: Mapping[str, list[str]] | None = None,
    ) -> None:
        self.aliases = dict(ALIASES if aliases is None else aliases)
        cues = load_cues() if cues is None else cues
        self._alias: list[tuple[str, _Alias]] = [
            (
                name,
                _Alias(
                    pattern=_compile_list(group["patterns"], name),
                    context=_compile_list(group.get("context", []), name),
                    exclude=_compile_list(group.get("exclude", []), name),
                ),
            )
            for name, groups in self.aliases.items()
            for group in groups
        ]
        self._pre_neg = _compile_list(cues["pre_negation"], "pre_negation")
        self._post_neg = _compile_list(cues["post_negation"], "post_negation")
        self._pseudo = _compile_list(cues["pseudo_negation"], "pseudo_negation")
        self._pre_unc = _compile_list(cues["pre_uncertainty"], "pre_uncertainty")
        # "?" is not a word, so it gets its own pattern beside the word cues.
        post_unc_words = [c for c in cues["post_uncertainty"] if c != r"\?"]
        self._post_unc = _compile_list(post_unc_words, "post_uncertainty")
        self._question = r"\?" in cues["post_uncertainty"]
        splits = [_word_alternation(cues["terminators"])] + _CLAUSE_SPLIT_EXTRA
        self._clause_split = re.compile("|".join(f"(?:{s})" for s in splits))
        self._historical = _compile_list(cues.get("historical", []), "historical")
        self._pseudo_historical = _compile_list(cues.get("pseudo_historical", []), "pseudo_historical")
        self._pre_historical = _compile_list(cues.get("pre_historical", []), "pre_historical")
        self._current = _compile_list(cues.get("current", []), "current")

    # ----------------------------------------------------------------------------------------------
    def clause_spans(self, norm: str, start: int, end: int) -> list[tuple[int, int]]:
        """Cut ``norm[start:end]`` (a normalised sentence) into clause spans at scope terminators."""
        spans, pos = [], start
        for m in self._clause_split.finditer(norm, start, end):
            # After a complete statement only the separator is cut; the predicate stays in its clause.
            cut = m.start("sep") if m.group("sep") is not None else m.start()
            if cut > pos:
                spans.append((pos, cut))
            pos = max(pos, m.end())
        if end > pos:
            spans.append((pos, end))
        return [(s, e) for s, e in spans if norm[s:e].strip()]

    def _cue_spans(
        self, pattern: re.Pattern | None, norm: str, s: int, e: int, masked: list[tuple[int, int]]
    ) -> list[tuple[int, int]]:
        if pattern is None:
            return []
        out = []
        for m in pattern.finditer(norm, s, e):
            if any(a < m.end() and m.start() < b for a, b in masked):
                continue
            out.append((m.start(), m.end()))
        return out

    def mentions_in_clause(
        self, text: str, norm: str, s: int, e: int, section: str, sent: tuple[int, int] | None = None
    ) -> list[Mention]:
        """Mentions in one clause ``[s, e)`` of ``text`` (``norm`` is its normalised form).

        ``sent`` is the span of the sentence around the clause, where alias context is looked for.
        """
        sent = (s, e) if sent is None else sent
        hits = []
        for name, alias in self._alias:
            for m in alias.pattern.finditer(norm, s, e):
                hits.append((m.start(), m.end(), name, alias))
        if not hits:
            return []
        clause = norm[s:e]
        pseudo = self._cue_spans(self._pseudo, norm, s, e, [])
        pre_neg = self._cue_spans(self._pre_neg, norm, s, e, pseudo)
        post_neg = self._cue_spans(self._post_neg, norm, s, e, pseudo)
        pre_unc = self._cue_spans(self._pre_unc, norm, s, e, [])
        post_unc = self._cue_spans(self._post_unc, norm, s, e, [])
        pseudo_unc = [p for p in pseudo if re.search(r"exclude|ruled out", norm[p[0] : p[1]])]
        post_unc += pseudo_unc
        if self._question:
            post_unc += [(s + m.start(), s + m.end()) for m in re.finditer(r"\?", clause)]
        # A comparison baseline ("compared with the CT dated ...") does not make the clause historical.
        baseline = self._cue_spans(self._pseudo_historical, norm, s, e, [])
        historical = bool(self._cue_spans(self._historical, norm, s, e, baseline)) and (
            self._current is None or self._current.search(clause) is None
        )
        gone = self._cue_spans(self._pre_historical, norm, s, e, [])
        out = []
        for ms, me, name, alias in hits:
            # Context may sit anywhere in the sentence ("plaques are seen, which involve the aorta").
            if alias.context is not None and not alias.context.search(norm, sent[0], sent[1]):
                continue
            if alias.exclude is not None and alias.exclude.search(clause):
                continue
            # A cue cannot sit inside the mention itself ("not" in a pattern is rare but possible).
            negated = any(ce <= ms for cs, ce in pre_neg) or any(cs >= me for cs, ce in post_neg)
            uncertain = any(ce <= ms and _words_between(norm, ce, ms) <= 6 for cs, ce in pre_unc) or any(
                cs >= me and _words_between(norm, me, cs) <= 6 for cs, ce in post_unc
            )
            # "loss of X": only the mention right after the cue is gone.
            past = historical or any(ce <= ms and _words_between(norm, ce, ms) == 0 for cs, ce in gone)
            out.append(
                Mention(
                    name,
                    text[ms:me],
                    ms,
                    me,
                    negated,
                    uncertain and not negated,
                    section,
                    text[s:e].strip(),
                    past and not negated,
                )
            )
        return _drop_nested(out)

    def find_mentions(self, text: str) -> list[Mention]:
        """All finding mentions in a sentence or a whole report, in text order."""
        if not isinstance(text, str):
            raise ValueError(f"report text must be a string, got {type(text).__name__}")
        norm = _normalise(text)
        out: list[Mention] = []
        for section, (ss, se) in _section_spans(text):
            for s, e in _sentence_spans(text, ss, se):
                for cs, ce in self.clause_spans(norm, s, e):
                    out.extend(self.mentions_in_clause(text, norm, cs, ce, section, (s, e)))
        return out


def _words_between(norm: str, a: int, b: int) -> int:
    return len(_WORD_RE.findall(norm[a:b])) if b > a else 0


def _drop_nested(mentions: list[Mention]) -> list[Mention]:
    """Keep, per finding, the longest of overlapping matches (one phrase is one mention)."""
    mentions.sort(key=lambda m: (m.start, -(m.end - m.start)))
    kept: list[Mention] = []
    for m in mentions:
        if any(k.finding == m.finding and k.start < m.end and m.start < k.end for k in kept):
            continue
        kept.append(m)
    return kept


# --------------------------------------------------------------------------------------------------
# Sections and sentences


def _section_spans(text: str) -> list[tuple[str, tuple[int, int]]]:
    """(section name, span of its body); text before any header counts as findings."""
    heads = list(_HEADER_RE.finditer(text))
    if not heads:
        return [("findings", (0, len(text)))]
    spans = []
    if text[: heads[0].start()].strip():
        spans.append(("findings", (0, heads[0].start())))
    for i, h in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
        spans.append((_SECTION_HEADERS[h.group(1).lower()], (h.end(), end)))
    return spans


def split_sections(text: str) -> dict[str, str]:
    """Split a report at headers such as ``FINDINGS:``/``IMPRESSION:``/``CLINICAL INFORMATION:``.

    Returns:
        section name (``findings``, ``impression``, ``clinical_information``, ``technique``,
        ``comparison``, ``recommendation``) -> stripped text. A report without headers is all findings;
        repeated sections are joined. An empty report gives ``{}``.
    """
    out: dict[str, str] = {}
    for name, (s, e) in _section_spans(text):
        body = text[s:e].strip()
        if body:
            out[name] = f"{out[name]} {body}" if name in out else body
    return out


def join_report(findings: str | None = "", impression: str | None = "") -> str:
    """One report string from CT-RATE's ``Findings_EN``/``Impressions_EN`` columns, with headers.

    The headers let ``split_sections`` (and the labeller's section weighting) see which part is which;
    missing (None/NaN-like empty) columns are left out.
    """
    parts = []
    for header, body in (("FINDINGS", findings), ("IMPRESSION", impression)):
        body = "" if body is None else str(body).strip()
        if body and body.lower() != "nan":
            parts.append(f"{header}: {body}")
    return "\n".join(parts)


def _sentence_spans(text: str, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    end = len(text) if end is None else end
    spans, pos = [], start
    for m in _SENT_END_RE.finditer(text, start, end):
        cut = m.end()
        if m.group(0)[0] in ".!":
            word = re.search(r"([A-Za-z.]+)$", text[pos : m.start()])
            if word and word.group(1).lower().rstrip(".") in _ABBREVIATIONS:
                continue
        if m.group(0)[0] == "?" and not re.match(r"\s+[\"A-Z\u2022]|\s*$", text[m.end() : m.end() + 2]):
            continue  # "(cyst?) in the liver": a hedge inside a sentence, not an end
        if text[pos:cut].strip(" \t\n\"'\u201c\u201d\u2022.;,"):
            spans.append((pos, cut))
        pos = cut
    if text[pos:end].strip(" \t\n\"'\u201c\u201d\u2022.;,"):
        spans.append((pos, end))
    # Trim surrounding whitespace and separator characters.
    out = []
    for s, e in spans:
        while s < e and text[s] in " \t\n\"'\u201c\u201d\u2022-*":
            s += 1
        while e > s and text[e - 1] in ' \t\n"\u201c\u201d\u2022':
            e -= 1
        out.append((s, e))
    return out


def split_sentences(text: str) -> list[str]:
    """Split report text into sentences, coping with real report punctuation.

    Periods in decimals ("2.3 mm") and after common abbreviations do not end a sentence; a question
    mark ends one only before a capital or the end (``(cyst?)`` stays inside); blank lines, bullets,
    numbered items and quote characters (CT-RATE joins findings and impressions with quotes) do.
    Empty or punctuation-only text gives ``[]``.
    """
    if not isinstance(text, str):
        raise ValueError(f"report text must be a string, got {type(text).__name__}")
    return [text[s:e] for s, e in _sentence_spans(text) if re.search(r"\w", text[s:e])]


# --------------------------------------------------------------------------------------------------
# Module-level API on the built-in tables

_STOPWORDS = frozenset(
    "the a an of in on and or no not is are was were be been with without there this that to for as at by "
    "from both right left lung lungs normal observed detected seen which it its".split()
)
# Common English radiology words: short phrases ("Bilateral pleural effusion.") have no stopwords.
_RADIOLOGY_WORDS = frozenset(
    "bilateral pleural effusion effusions pericardial nodule nodules lobe upper lower middle mass lesion "
    "heart cardiomegaly emphysema atelectasis consolidation opacity opacities ground glass hernia hiatal "
    "lymph node nodes lymphadenopathy calcification calcified plaque plaques aorta aortic coronary artery "
    "arteries bronchiectasis thickening septal interlobular peribronchial fibrosis fibrotic sequelae mosaic "
    "attenuation pattern catheter stent pacemaker small large mild minimal moderate severe enlarged "
    "chest possible apical basal subpleural paratracheal subcarinal hilar axillary mediastinal lingula "
    "pulmonary".split()
)
_VOCABULARY = (
    _STOPWORDS | _RADIOLOGY_WORDS | frozenset(w for name in ALIASES for w in _WORD_RE.findall(name.lower()))
)


def english_ratio(text: str) -> float:
    """Fraction of words that are common English (report) words; 0.0 for text without words.

    Used to flag reports that are not English (a rule labeller would silently find nothing in them).
    """
    words = _WORD_RE.findall(text.lower())
    if not words:
        return 0.0
    return sum(w in _STOPWORDS for w in words) / len(words)


def _vocabulary_ratio(text: str) -> float:
    """Fraction of words that are English function words, radiology words or canonical finding words."""
    words = _WORD_RE.findall(text.lower())
    return sum(w in _VOCABULARY for w in words) / len(words) if words else 0.0


def is_english(text: str) -> bool:
    """Whether ``text`` reads as English.

    The language identifier (:mod:`medvl3d.text.language`, py3langid) decides; where it is unsure (short,
    term-only text such as "pleural effusion (bilateral). cardiomegaly.") the text is English when at
    least half its words are English function, radiology or canonical finding words. A confident other
    language is never English: a French list shares some Latin terms ("nodule") but is identified as
    French.
    """
    from medvl3d.text.language import CONFIDENT, identify_language

    code, prob = identify_language(text)
    if code == "en":
        return True
    if prob >= CONFIDENT or not code:
        return False
    return _vocabulary_ratio(text) >= 0.5


@lru_cache(maxsize=1)
def default_parser() -> ReportParser:
    """The parser on the built-in alias table and cue lists (built once)."""
    return ReportParser()


def find_mentions(sentence_or_report: str) -> list[Mention]:
    """Finding mentions (canonical name, span, negated, uncertain) with the built-in tables."""
    return default_parser().find_mentions(sentence_or_report)


def normalise_finding(phrase: str) -> str | None:
    """Canonical finding name for a phrase ("LAP" -> "Lymphadenopathy"), or None if none matches.

    Context-dependent aliases count when their context is in the phrase ("coronary calcific plaque");
    the longest match wins when several findings match.
    """
    parser = default_parser()
    norm = _normalise(phrase.strip())
    best: tuple[int, str] | None = None
    for name, alias in parser._alias:
        if alias.context is not None and not alias.context.search(norm):
            continue
        if alias.exclude is not None and alias.exclude.search(norm):
            continue
        for m in alias.pattern.finditer(norm):
            length = m.end() - m.start()
            if best is None or length > best[0]:
                best = (length, name)
    return None if best is None else best[1]
