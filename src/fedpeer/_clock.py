"""The one wall-clock helper: milliseconds since the Unix epoch.

Pure code takes the time as an argument (``now_ms: int | None``, None meaning
"read the clock here") and calls :func:`now_ms` with it, so there is exactly one
place that reads the wall clock in milliseconds.
"""

from __future__ import annotations

import time

__all__ = ["now_ms"]


def now_ms(given: int | None = None) -> int:
    """``given`` when it is not None, else the wall clock in ms since the epoch."""
    return time.time_ns() // 1_000_000 if given is None else given
