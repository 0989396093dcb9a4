"""Paths and loaders for the vendored test vectors in ``interop/vectors/``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

VECTORS = Path(__file__).parent / "vectors"


def load_json(relative: str) -> Any:
    """Parse ``interop/vectors/<relative>`` as JSON."""
    return json.loads((VECTORS / relative).read_text(encoding="utf-8"))
