"""Fixtures: real nodes served by hypercorn on loopback, with real SQLite stores."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from fedpeer.peer import Node, NodeConfig, open_node


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    async with open_node(tmp_path / "node", config=NodeConfig(handle="test-node")) as n:
        yield n


@pytest.fixture
def admin_token(node: Node) -> str:
    assert node.admin_token_path is not None
    return node.admin_token_path.read_text().strip()


@pytest.fixture
async def http(node: Node) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=node.url, timeout=30) as client:
        yield client


async def serve_asgi(nursery: object, app: object) -> tuple[str, object]:
    """Serve ``app`` on 127.0.0.1 (random port) with hypercorn's trio worker.

    Returns (url, shutdown_event); set the event to stop the server.
    """
    import trio
    from hypercorn.config import Config
    from hypercorn.trio import serve

    assert isinstance(nursery, trio.Nursery)
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.graceful_timeout = 1
    shutdown = trio.Event()
    urls = await nursery.start(
        lambda task_status: serve(
            app, config, shutdown_trigger=shutdown.wait, task_status=task_status
        )  # type: ignore[arg-type]
    )
    return urls[0], shutdown


@pytest.fixture
async def two(tmp_path: Path) -> AsyncIterator[tuple[Node, Node]]:
    """Two nodes (SQLite, loopback, ports picked by the OS) with room in their rate
    limits for a test's burst of requests."""
    cfg = NodeConfig(rate_per_s=10_000, rate_burst=10_000)
    async with (
        open_node(tmp_path / "a", config=cfg) as a,
        open_node(tmp_path / "b", config=cfg) as b,
    ):
        yield a, b
