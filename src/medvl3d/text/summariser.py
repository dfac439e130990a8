"""Report summarisation for BrgSA: a report -> a short canonical list of positive findings with locations.

BrgSA aligns images with the high-level findings of a report rather than its full text. Two backends
share one interface (``Summariser.summarise(report) -> str``):

* ``RuleSummariser`` (default): deterministic, from ``find_mentions`` (alias table + negation/uncertainty):
  ``"pleural effusion (bilateral). lung nodule (right upper lobe). cardiomegaly."``, or
  ``"no acute findings."`` when nothing is affirmed. No length limit.
* ``LLMSummariser``: any OpenAI-compatible chat-completions server the user runs (vLLM, llama.cpp,
  Ollama, ...), with answers cached on disk keyed by sha256 of (model, prompt, report), so each report
  costs one request ever. Long reports are cut at sentence boundaries into chunks the server accepts.

``build_summariser(cfg)`` picks one from a config dict.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

from medvl3d.atomic import atomic_write_json
from medvl3d.text.reports import FINDING_SECTIONS, Mention, ReportParser, default_parser, split_sentences
from medvl3d.typed import coerce

NO_FINDINGS = "no acute findings."

DEFAULT_LLM_PROMPT = (
    "You summarise chest CT radiology reports. List only the abnormal findings that are present "
    "(ignore negated, normal and hedged statements), one short canonical name each, with its location "
    "in parentheses when the report gives one, as lower-case sentences, e.g. "
    '"pleural effusion (bilateral). lung nodule (right upper lobe). cardiomegaly." '
    f'If nothing abnormal is present, answer exactly "{NO_FINDINGS}". Answer with the summary only.'
)

# Location phrases, most specific first; each maps a regex (on lower-cased text) to a canonical location.
_LOBE = r"(right|left) (?:lung )?(upper|middle|lower) lobe|(upper|middle|lower) lobe of the (right|left) lung"
_LOCATIONS: tuple[tuple[str, str], ...] = (
    (r"\b(?:both lungs?|bilateral(?:ly)?|both hemithora\w*|both sides)\b", "bilateral"),
    (r"\blingul\w*", "lingula"),
    (r"\b(?:apex|apices|apical)\b", "apical"),
    (r"\b(?:basal|bases)\b", "basal"),
    (r"\bsubpleural\b", "subpleural"),
    (r"\bparatracheal\b", "paratracheal"),
    (r"\bsubcarinal\b", "subcarinal"),
    (r"\bhil(?:ar|um|us)\b", "hilar"),
    (r"\baxill\w*", "axillary"),
    (r"\bmediastin\w*", "mediastinal"),
    (r"\baort\w*", "aorta"),
    (r"\bcoronar\w*", "coronary arteries"),
)
_SIDE_RE = re.compile(r"\b(right|left)(?: (?:lung|hemithorax|side))?\b")
_MAX_LOCATIONS = 3


@runtime_checkable
class Summariser(Protocol):
    """Anything that condenses a report into its canonical positive findings."""

    def summarise(self, report: str) -> str:
        """A short lower-case summary: ``"finding (location). finding."`` or ``"no acute findings."``."""
        ...


def summary_problem(report: object, backend: str = "rule") -> str | None:
    """Why a report has no meaningful summary, or None when it has one.

    The labeller's :func:`~medvl3d.text.labeller.report_problem`: ``"empty"``, ``"no words"``, ``"not a
    string"`` and, for the rule backend (which reads English only), ``"not English"``. A summariser still
    answers ``"no acute findings."`` for such a report, which would pass for a normal study: callers
    flag these reports (the ``problem`` column of ``medvl3d text summarize``) or keep them out of
    training text.
    """
    from medvl3d.text.labeller import report_problem  # the labeller's check (the module loads sklearn)

    problem = report_problem(report)
    return None if problem == "not English" and backend != "rule" else problem


def _check_report(report: object) -> str:
    if not isinstance(report, str):
        raise ValueError(f"report must be a string, got {type(report).__name__}")
    return report


def mention_locations(clause: str) -> list[str]:
    """Canonical locations named in a clause ("right upper lobe", "bilateral", "hilar", ...)."""
    text = clause.lower().replace("-", " ")
    found: list[str] = []
    for m in re.finditer(_LOBE, text):
        side = m.group(1) or m.group(4)
        level = m.group(2) or m.group(3)
        found.append(f"{side} {level} lobe")
    for pattern, name in _LOCATIONS:
        if re.search(pattern, text):
            found.append(name)
    sides = {m.group(1) for m in _SIDE_RE.finditer(text)}
    if "bilateral" not in found and len(sides) == 2:
        found.append("bilateral")
    for side in sorted(sides):
        if len(sides) == 1 and not any(f.startswith(side) for f in found):
            found.append(side)
    return list(dict.fromkeys(found))


def _tidy_locations(locs: list[str]) -> list[str]:
    """Most specific first; a bare side is dropped when a lobe on that side or "bilateral" says more."""
    sides = [s for s in ("right", "left") if s in locs]
    if len(sides) == 2 and "bilateral" not in locs:
        locs = ["bilateral", *locs]
    covered = {s for s in sides if "bilateral" in locs or any(loc.startswith(f"{s} ") for loc in locs)}
    locs = [loc for loc in locs if loc not in covered]
    rank = {"bilateral": 0}
    return sorted(locs, key=lambda loc: rank.get(loc, 1 if "lobe" in loc else 3 if loc in sides else 2))


class RuleSummariser:
    """Deterministic summariser on the alias table and NegEx cues.

    Args:
        parser: the mention finder (built-in tables if None).
        include_uncertain: also list hedged findings, as ``"possible X"``.
        with_locations: add locations in parentheses.
        max_locations: at most this many locations per finding.
    """

    def __init__(
        self,
        parser: ReportParser | None = None,
        include_uncertain: bool = False,
        with_locations: bool = True,
        max_locations: int = _MAX_LOCATIONS,
    ) -> None:
        self.parser = parser or default_parser()
        self.include_uncertain = include_uncertain
        self.with_locations = with_locations
        self.max_locations = max_locations

    def findings(self, report: str) -> dict[str, list[str]]:
        """Positive findings in order of first mention -> their locations."""
        out: dict[str, list[str]] = {}
        for m in self.parser.find_mentions(_check_report(report)):
            if not self._keep(m):
                continue
            name = m.finding.lower() if m.affirmed else f"possible {m.finding.lower()}"
            locs = out.setdefault(name, [])
            if self.with_locations:
                locs.extend(loc for loc in mention_locations(m.clause) if loc not in locs)
        # A finding stated as certain makes its "possible" variant redundant.
        return {k: v for k, v in out.items() if not (k.startswith("possible ") and k[9:] in out)}

    def _keep(self, m: Mention) -> bool:
        if m.section not in FINDING_SECTIONS or m.negated:
            return False
        return m.affirmed or (self.include_uncertain and m.uncertain and not m.historical)

    def summarise(self, report: str) -> str:
        """``"finding (loc, loc). finding."`` in order of first mention, or ``"no acute findings."``."""
        findings = self.findings(report)
        if not findings:
            return NO_FINDINGS
        parts = []
        for name, locs in findings.items():
            # Location words already inside the name ("coronary artery ...") are not repeated.
            locs = _tidy_locations([loc for loc in locs if loc.split()[0] not in name])[: self.max_locations]
            parts.append(f"{name} ({', '.join(locs)})." if locs else f"{name}.")
        return " ".join(parts)


class LLMError(RuntimeError):
    """The LLM server failed or answered something that is not a chat completion."""


class LLMSummariser:
    """Summarises through an OpenAI-compatible ``/v1/chat/completions`` endpoint, with a disk cache.

    Args:
        url: server base URL, e.g. ``http://127.0.0.1:8000`` (``/v1/chat/completions`` is appended).
        model: model name sent in the request.
        api_key_env: name of an environment variable holding a bearer token (None: no auth header).
        cache_dir: folder for cached answers (one JSON file per sha256 key); None disables the cache.
        timeout: seconds per HTTP request.
        prompt: the system prompt.
        max_chars: reports longer than this are split at sentence boundaries and summarised per chunk,
            so findings late in a long report are not cut off by the server's context limit.
    """

    def __init__(
        self,
        url: str,
        model: str,
        api_key_env: str | None = None,
        cache_dir: str | Path | None = None,
        timeout: float = 60.0,
        prompt: str = DEFAULT_LLM_PROMPT,
        max_chars: int = 12000,
    ) -> None:
        if not url or not re.match(r"https?://", url):
            raise ValueError(f"LLM summariser url must start with http:// or https://, got {url!r}")
        if not model:
            raise ValueError("LLM summariser needs a model name")
        self.url = url.rstrip("/")
        self.endpoint = (
            self.url if self.url.endswith("/chat/completions") else f"{self.url}/v1/chat/completions"
        )
        self.model = model
        self.api_key_env = api_key_env
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.timeout = timeout
        self.prompt = prompt
        self.max_chars = max_chars

    def cache_key(self, report: str) -> str:
        """sha256 of (model, prompt, report): changing any of them asks the server again."""
        payload = json.dumps([self.model, self.prompt, report], ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def _cache_path(self, report: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / f"{self.cache_key(report)}.json"

    def summarise(self, report: str) -> str:
        """The server's summary of ``report`` (from the cache when asked before)."""
        report = _check_report(report)
        if not re.search(r"[^\W\d_]", report):  # empty or punctuation/digits only: nothing to ask
            return NO_FINDINGS
        path = self._cache_path(report)
        if path is not None and path.is_file():
            try:
                return json.loads(path.read_text(encoding="utf-8"))["summary"]
            except (json.JSONDecodeError, KeyError, TypeError):
                pass  # a damaged cache entry is simply asked again and overwritten
        chunks = _chunk(report, self.max_chars)
        answers = [self._ask(chunk) for chunk in chunks]
        summary = answers[0] if len(answers) == 1 else _merge(answers)
        if path is not None:
            summary_record = {"model": self.model, "key": path.stem, "summary": summary}
            atomic_write_json(path, summary_record, ensure_ascii=False)
        return summary

    def _ask(self, text: str) -> str:
        body = json.dumps(
            {
                "model": self.model,
                "messages": [{"role": "system", "content": self.prompt}, {"role": "user", "content": text}],
                "temperature": 0,
            }
        ).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise LLMError(f"environment variable {self.api_key_env} (API key) is not set")
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(self.endpoint, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode("utf-8", "replace")
            raise LLMError(f"LLM server {self.endpoint} answered HTTP {exc.code}: {detail}") from exc
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise LLMError(f"cannot reach LLM server {self.endpoint}: {exc}") from exc
        try:
            content = json.loads(raw)["choices"][0]["message"]["content"]
        except (json.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
            raise LLMError(
                f"malformed answer from {self.endpoint} (no choices[0].message.content): {raw[:200]!r}"
            ) from exc
        if not isinstance(content, str) or not content.strip():
            raise LLMError(f"malformed answer from {self.endpoint}: empty message content")
        return content.strip()


def _chunk(report: str, max_chars: int) -> list[str]:
    """Cut a report at sentence boundaries into pieces of at most ``max_chars`` (longer sentences alone)."""
    if len(report) <= max_chars:
        return [report]
    chunks, cur = [], ""
    for sent in split_sentences(report):
        if cur and len(cur) + 1 + len(sent) > max_chars:
            chunks.append(cur)
            cur = sent
        else:
            cur = f"{cur} {sent}".strip()
    if cur:
        chunks.append(cur)
    return chunks or [report[:max_chars]]


def _merge(answers: list[str]) -> str:
    """Join per-chunk summaries, dropping repeated findings and "no acute findings." of normal chunks."""
    parts: list[str] = []
    for answer in answers:
        for part in re.split(r"(?<=\.)\s+", answer.strip()):
            if part and part != NO_FINDINGS and part not in parts:
                parts.append(part)
    return " ".join(parts) if parts else NO_FINDINGS


@dataclass
class RuleSummariserConfig:
    """The built-in deterministic summariser (`RuleSummariser`)."""

    backend: Literal["rule"] = "rule"
    include_uncertain: bool = False
    with_locations: bool = True
    max_locations: int = _MAX_LOCATIONS


@dataclass
class LLMSummariserConfig:
    """An OpenAI-compatible server the user runs (`LLMSummariser`); answers are cached on disk."""

    backend: Literal["llm"] = "llm"
    url: str = ""
    model: str = ""
    api_key_env: str | None = None
    cache_dir: str | None = None
    timeout: float = 60.0
    prompt: str = DEFAULT_LLM_PROMPT
    max_chars: int = 12000

    def __post_init__(self) -> None:
        missing = [k for k in ("url", "model") if not getattr(self, k)]
        if missing:
            raise ValueError(f"the 'llm' summariser needs {missing} in its config")


#: The summariser section of a config: the `backend` field picks the member.
SummariserConfig = RuleSummariserConfig | LLMSummariserConfig


def summariser_config(cfg: dict | SummariserConfig | None = None) -> SummariserConfig:
    """A typed summariser config from a dict (`backend` "rule" by default); an unknown key is a
    `TypeError` naming it, an unknown backend a `ValueError`."""
    if isinstance(cfg, (RuleSummariserConfig, LLMSummariserConfig)):
        return cfg
    return coerce(dict(cfg or {}), SummariserConfig, "summariser", TypeError)


def build_summariser(cfg: dict | SummariserConfig | None = None) -> Summariser:
    """A summariser from its config (a `SummariserConfig` or its dict).

    ``None`` or ``{"backend": "rule", ...}`` gives ``RuleSummariser``; ``{"backend": "llm", "url": ...,
    "model": ..., "cache_dir": ...}`` gives ``LLMSummariser``. Unknown keys raise ``TypeError`` naming them.
    """
    typed = summariser_config(cfg)
    kwargs = {f.name: getattr(typed, f.name) for f in dataclasses.fields(typed) if f.name != "backend"}
    if isinstance(typed, RuleSummariserConfig):
        return RuleSummariser(**kwargs)
    return LLMSummariser(**kwargs)
