"""What every benchmark record names: the commit of the code it ran (scripts import it with their own folder
on `sys.path`; the benchmarks are scripts, not a package)."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def git_commit() -> str:
    """HEAD of this checkout, or "unknown" outside a git checkout. Ask before training: a commit made while a
    benchmark runs is not the code it ran."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
