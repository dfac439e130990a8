"""Text prompts for zero-shot scoring: positive/negative templates per finding, ensembles, attribute phrases.

Zero-shot diagnosis compares a volume embedding with a positive prompt and a negative one; P(finding) is
the softmax over the pair, and a *prompt ensemble* averages the text embeddings (or the scores) over
several templates and, optionally, over synonyms of the finding. Malenia aligns mask tokens with phrases
for attribute values (``attribute_phrase``). A ``PromptSet`` holds the configurable templates;
``to_dict``/``from_dict`` let a checkpoint store exactly the prompts it was trained with.

The default pair is the finding as a summary sentence ("Pleural effusion.") against one fixed normal
sentence ("No acute findings.", the summariser's normal-case summary), not CT-CLIP's "X is present." /
"X is not present.": a sentence encoder barely separates a statement from its negation (the frozen
MiniLM embeds the two almost identically), so the sign of that small difference is left to chance in
training and zero-shot scores came out inverted for some seeds. Measured on SynthCT-VL (README,
"Zero-shot diagnosis"); the CT-CLIP pair stays available as ``CT_CLIP_PROMPTS``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from medvl3d.schema import ATTRIBUTES, attribute_values
from medvl3d.text.summariser import NO_FINDINGS
from medvl3d.yamlfile import read_yaml

DEFAULT_POSITIVE: tuple[str, ...] = ("{}.",)
DEFAULT_NEGATIVE: tuple[str, ...] = (NO_FINDINGS,)

# Attribute value -> natural phrase around "{organ} lesion". "{a}" is the article the next word needs.
_ATTRIBUTE_TEMPLATES: dict[str, str] = {
    "contrast": "{a} {organ} lesion on {value} CT",
    "location": "{a} {organ} lesion in the {value}",
    "shape": "{a} {value} {organ} lesion",
    "density": "{a} {value} {organ} lesion",
    "homogeneity": "{a} {value} {organ} lesion",
    "margin": "{a} {organ} lesion with {value} margins",
    "neighbor_relation": "{a} {organ} lesion {value}",
}

# Acronyms that keep their case when a finding name is put inside a sentence.
_KEEP_CASE = {"CT", "LAP", "COPD", "ARDS", "TB"}


def _finding_text(finding: str) -> str:
    """ "Pleural effusion" -> "pleural effusion" (acronyms kept), for use inside a sentence."""
    return " ".join(w if w in _KEEP_CASE else w.lower() for w in finding.strip().split())


def _fill(template: str, text: str) -> str:
    out = template.format(text)
    return out[0].upper() + out[1:] if out else out


def _check_templates(templates: Sequence[str], kind: str, fixed_ok: bool) -> tuple[str, ...]:
    """Templates hold one ``{}`` for the finding; with ``fixed_ok`` also none (the same sentence for all)."""
    if isinstance(templates, str) or not isinstance(templates, Sequence) or not templates:
        raise ValueError(f"{kind} templates must be a non-empty list of strings, got {templates!r}")
    allowed = (0, 1) if fixed_ok else (1,)
    for t in templates:
        if not isinstance(t, str) or t.count("{}") not in allowed or t.replace("{}", "").count("{"):
            what = "at most one" if fixed_ok else "exactly one"
            raise ValueError(
                f"{kind} template {t!r} must contain {what} '{{}}' placeholder and no other braces"
            )
        if not t.replace("{}", "").strip() and not t.count("{}"):
            raise ValueError(f"{kind} template {t!r} is empty")
    return tuple(templates)


@dataclass(frozen=True)
class PromptSet:
    """Configurable prompt templates.

    Attributes:
        positive: templates saying a finding is present; ``{}`` is replaced by the finding name.
        negative: templates saying it is absent; a template without ``{}`` is one fixed sentence for
            every finding (e.g. the summariser's ``"no acute findings."``).
        synonyms: optional extra names per finding (e.g. ``{"Cardiomegaly": ["enlarged heart"]}``); every
            template is filled with the finding and each synonym, giving a larger ensemble.
    """

    positive: tuple[str, ...] = DEFAULT_POSITIVE
    negative: tuple[str, ...] = DEFAULT_NEGATIVE
    synonyms: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "positive", _check_templates(self.positive, "positive", fixed_ok=False))
        object.__setattr__(self, "negative", _check_templates(self.negative, "negative", fixed_ok=True))
        syn = {str(k): tuple(str(s) for s in v) for k, v in dict(self.synonyms).items()}
        object.__setattr__(self, "synonyms", syn)

    def names(self, finding: str) -> list[str]:
        """The finding and its synonyms, as they appear inside a sentence."""
        if not isinstance(finding, str) or not finding.strip():
            raise ValueError(f"finding name must be a non-empty string, got {finding!r}")
        return list(
            dict.fromkeys(
                [_finding_text(finding)] + [_finding_text(s) for s in self.synonyms.get(finding, ())]
            )
        )

    def positive_prompts(self, finding: str) -> list[str]:
        """All positive sentences for ``finding`` (templates x names)."""
        return [_fill(t, n) for n in self.names(finding) for t in self.positive]

    def negative_prompts(self, finding: str) -> list[str]:
        """All negative sentences for ``finding``; a template without ``{}`` appears once, unchanged."""
        return list(dict.fromkeys(_fill(t, n) for n in self.names(finding) for t in self.negative))

    def to_dict(self) -> dict:
        """Plain-data form (for checkpoints and YAML)."""
        return {
            "positive": list(self.positive),
            "negative": list(self.negative),
            "synonyms": {k: list(v) for k, v in self.synonyms.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> PromptSet:
        """Inverse of ``to_dict``; unknown keys raise ``ValueError`` naming them."""
        unknown = set(data) - {"positive", "negative", "synonyms"}
        if unknown:
            raise ValueError(
                f"unknown prompt config keys: {sorted(unknown)} (allowed: positive, negative, synonyms)"
            )
        return cls(
            positive=data.get("positive", DEFAULT_POSITIVE),
            negative=data.get("negative", DEFAULT_NEGATIVE),
            synonyms=dict(data.get("synonyms") or {}),
        )

    @classmethod
    def from_yaml(cls, path: str | Path) -> PromptSet:
        """Read a prompt config from a YAML file (keys as in ``to_dict``)."""
        path = Path(path)
        data = read_yaml(path, "prompt config") or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping with 'positive'/'negative' template lists")
        try:
            return cls.from_dict(data)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc


#: The default prompt set: "X." against "No acute findings." (see the module doc).
DEFAULT_PROMPTS = PromptSet()

#: CT-CLIP's and BrgSA's pairs, "X is present." / "X is not present." (ensembled with two more phrasings).
CT_CLIP_PROMPTS = PromptSet(
    positive=("{} is present.", "There is {}."), negative=("{} is not present.", "No {}.")
)


def positive_prompts(finding: str) -> list[str]:
    """Positive templates for ``finding`` with the default prompt set."""
    return DEFAULT_PROMPTS.positive_prompts(finding)


def negative_prompts(finding: str) -> list[str]:
    """Negative templates for ``finding`` with the default prompt set."""
    return DEFAULT_PROMPTS.negative_prompts(finding)


def attribute_phrase(attribute: str, value: str, organ: str) -> str:
    """Natural text for a Malenia attribute value of a lesion in ``organ``.

    ``("margin", "ill-defined", "liver")`` -> ``"a liver lesion with ill-defined margins"``. The value
    must be one of ``medvl3d.schema.attribute_values(organ, attribute)``; anything else raises
    ``ValueError`` listing the allowed values.
    """
    if attribute not in ATTRIBUTES:
        raise ValueError(f"unknown lesion attribute {attribute!r}; known: {', '.join(ATTRIBUTES)}")
    try:
        allowed = attribute_values(organ, attribute)
    except KeyError as exc:
        raise ValueError(str(exc).strip("'\"")) from None
    if value not in allowed:
        raise ValueError(
            f"{value!r} is not a value of {attribute!r} for {organ}; values: {', '.join(allowed)}"
        )
    template = _ATTRIBUTE_TEMPLATES[attribute]
    if attribute == "location" and organ in value:  # "left kidney": "a lesion in the left kidney"
        template = "{a} lesion in the {value}"
    body = template.replace("{a} ", "").format(organ=organ, value=value)
    article = "an" if body[0].lower() in "aeiou" else "a"
    return f"{article} {body}"
