"""CSV reading without the csv module's field-size limit.

Python's ``csv`` refuses any field longer than 128 KiB ("field larger than field limit"), a process-wide
setting. Radiology reports have no length limit, so readers of report tables lift it while they read.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["unlimited_fields"]

# The largest limit csv accepts: a C long, which is 32 bits on Windows.
_NO_LIMIT = min(sys.maxsize, 2**31 - 1)


@contextmanager
def unlimited_fields() -> Iterator[None]:
    """Lift ``csv.field_size_limit`` inside the block (the previous limit is restored after it)."""
    old = csv.field_size_limit(_NO_LIMIT)
    try:
        yield
    finally:
        csv.field_size_limit(old)
