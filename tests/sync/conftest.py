"""The sync suite runs every async test on trio and on asyncio."""

from __future__ import annotations

import pytest

from tests.conftest import BOTH_BACKENDS, backend_for


@pytest.fixture(params=BOTH_BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> object:
    """Every test of this suite runs on trio and on asyncio."""
    return backend_for(request, request.param)
