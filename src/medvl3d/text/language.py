"""Language identification of report and lesion-description text, with py3langid.

py3langid (a maintained fork of langid.py, BSD-3) ships its naive-Bayes model inside the wheel, so it runs
without network and in about a millisecond per description; a word list cannot tell "Ascending colon wall
thickening, irregular shape, heterogeneous enhancement" (few English function words) from German.
"""

from __future__ import annotations

from functools import lru_cache

#: Below this probability the identifier is unsure (short, term-only text such as "Bilateral pleural
#: effusion." scores about 0.2 for French); callers then decide by vocabulary.
CONFIDENT = 0.8


@lru_cache(maxsize=1)
def _identifier():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def identify_language(text: str) -> tuple[str, float]:
    """ISO 639-1 code of the most probable language of ``text`` and its probability (0-1).

    Text without letters gives ``("", 0.0)``.

    Raises:
        ValueError: ``text`` is not a string.
    """
    if not isinstance(text, str):
        raise ValueError(f"text must be a string, got {type(text).__name__}")
    if not any(ch.isalpha() for ch in text):
        return "", 0.0
    code, prob = _identifier().classify(text)
    return str(code), float(prob)
