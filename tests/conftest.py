"""Shared fixtures: the real third-party data folder and small temporary trees."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "real"


@pytest.fixture(scope="session")
def real_dir() -> Path:
    """`../shared/data/real/` beside the checkout; tests using it skip when it is absent."""
    if not REAL.is_dir():
        pytest.skip(f"real test data not found at {REAL} (see shared/data/real/README.md)")
    return REAL
