"""Fixtures for the store tests: ``store`` runs a test once per backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fedpeer.store import Store
from tests.conftest import BOTH_BACKENDS, backend_for

from .store_backends import STORE_FACTORIES, StoreFactory


@pytest.fixture(params=sorted(STORE_FACTORIES))
def store_factory(request: pytest.FixtureRequest) -> StoreFactory:
    """The factory of one backend (tests that need several stores of that kind)."""
    factory: StoreFactory = STORE_FACTORIES[request.param]
    return factory


@pytest.fixture
async def store(store_factory: StoreFactory, tmp_path: Path) -> AsyncIterator[Store]:
    """A fresh, empty store of each backend; closed afterwards."""
    s = await store_factory(tmp_path)
    try:
        yield s
    finally:
        await s.aclose()


@pytest.fixture(params=BOTH_BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> object:
    """Every test of this suite runs on trio and on asyncio."""
    return backend_for(request, request.param)
