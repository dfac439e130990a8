"""YAML files read as data (``yaml.safe_load`` only), with parse errors as one line naming the file.

PyYAML's own messages span several lines (the offending text and a caret under it); a user needs the
file, the problem and where it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

__all__ = ["read_yaml", "yaml_error"]


def yaml_error(exc: yaml.YAMLError) -> str:
    """A PyYAML parse error as one line: the problem and its line and column."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


def read_yaml(path: str | Path, what: str = "YAML file") -> Any:
    """Parse the YAML file ``path`` (``what`` names it in errors: "prompt config", "config file").

    Raises:
        FileNotFoundError: ``path`` is missing or not a file.
        ValueError: the file is not UTF-8 text or not valid YAML, naming it and where it breaks.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: {what} is not UTF-8 text") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: {what} is not valid YAML ({yaml_error(exc)})") from None
