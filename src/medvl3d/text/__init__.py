"""medvl3d.text: text encoders, report parsing and labelling, summaries, prompts and lesion attributes.

Submodules: ``encoders`` (``build_text_encoder``), ``reports`` (sentences, negation, aliases),
``labeller`` (``ReportLabeller``), ``summariser`` (``build_summariser``), ``prompts``, ``attributes``
(``parse_attributes``) and ``batch`` (the jobs behind ``medvl3d text ...``).

The names below are importable from ``medvl3d.text`` directly; they load on first use so that importing
the package stays cheap (the encoders pull in torch and transformers).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "build_text_encoder": "encoders",
    "TextEncoder": "encoders",
    "parse_attributes": "attributes",
    "parse_attribute_codes": "attributes",
    "infer_organ": "attributes",
    "AttributeParser": "attributes",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
