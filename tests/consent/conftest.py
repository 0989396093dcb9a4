"""Fixtures for the consent tests: every store implementation, for real."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tests.conftest import BOTH_BACKENDS, backend_for

from fedpeer.store.base import Store


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """A fresh, empty store: MemoryStore, then SQLiteStore on a file in tmp_path."""
    if request.param == "memory":
        from fedpeer.store.memory import MemoryStore

        s: Store = MemoryStore()
    else:
        from fedpeer.store.sqlite import SQLiteStore

        s = await SQLiteStore.open(tmp_path / "state.db")
    try:
        yield s
    finally:
        await s.aclose()


@pytest.fixture(params=BOTH_BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> object:
    """Every test of this suite runs on trio and on asyncio."""
    return backend_for(request, request.param)
