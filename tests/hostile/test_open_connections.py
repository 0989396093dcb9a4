"""Connections that never finish their request head cannot use up the node.

Before: the per-address cap counted requests in flight, which the app sees only
once a head is complete, and a TLS handshake had 60 s of its own. One address
opening silent connections faster than the header timeout closed them held a
file descriptor per connection, until nobody else could connect. Now the node
counts open connections per address (an IPv6 caller by its /64) and in all as it
accepts them, before reading a byte or starting TLS, and closes a connection past
``max_open_conns_per_ip`` or ``max_open_conns`` at once; a TLS handshake must
finish within the header timeout.

Real node (hypercorn on loopback, trio and asyncio), raw anyio sockets as the
hostile clients; 127.0.0.2 and up are loopback addresses too, so they are other
callers.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import anyio.abc
import httpx
import pytest

from fedpeer.peer import NodeConfig, open_node
from fedpeer.peer._serve import OpenConnections
from fedpeer.peer.node import Node
from tests.conftest import BOTH_BACKENDS

QUIET = 60.0  # a header timeout no test waits for: whatever closes early is the cap


def _host_port(url: str) -> tuple[str, int]:
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    return host, int(port)


async def _closed_by_server(sock: anyio.abc.SocketStream, within_s: float) -> bool:
    """True when the node closes ``sock`` within ``within_s`` without a byte sent."""
    with anyio.move_on_after(within_s):
        try:
            data = await sock.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            return True
        raise AssertionError(f"the node answered a silent connection: {data[:100]!r}")
    return False


@contextlib.asynccontextmanager
async def _silent(node: Node, n: int, source: str) -> AsyncIterator[list[anyio.abc.SocketStream]]:
    """``n`` connections from ``source`` that send nothing, closed on exit (and
    waited for: the node has counted them in, and out again)."""
    host, port = _host_port(node.url)
    conns = _conns(node)
    before = conns.by_group.get(source, 0)
    async with contextlib.AsyncExitStack() as stack:
        socks = [
            await stack.enter_async_context(await anyio.connect_tcp(host, port, local_host=source))
            for _ in range(n)
        ]
        with anyio.fail_after(10):
            await conns.wait_until(lambda c: c.by_group.get(source, 0) == before + n)
        yield socks
    with anyio.fail_after(10):
        await conns.wait_until(lambda c: c.by_group.get(source, 0) == before)


def _conns(node: Node) -> OpenConnections:
    assert node.connections is not None
    return node.connections


async def _health_from(url: str, source: str) -> int:
    transport = httpx.AsyncHTTPTransport(local_address=source, verify=False)
    async with httpx.AsyncClient(transport=transport, timeout=10) as client:
        return (await client.get(url + "/health")).status_code


@pytest.mark.parametrize("anyio_backend", BOTH_BACKENDS)
async def test_silent_connections_past_the_per_address_cap_are_closed_at_once(
    tmp_path: Path, anyio_backend: str
) -> None:
    cfg = NodeConfig(max_open_conns_per_ip=8, header_timeout_s=QUIET)
    async with open_node(tmp_path / "n", config=cfg) as node:
        host, port = _host_port(node.url)
        conns = _conns(node)
        async with _silent(node, 8, "127.0.0.1") as held:
            async with await anyio.connect_tcp(host, port, local_host="127.0.0.1") as ninth:
                assert await _closed_by_server(ninth, 10)  # at once, not after 60 s
            assert conns.refused == 1
            assert await _health_from(node.url, "127.0.0.2") == 200  # others are served
            for sock in held:  # the eight are still open: the node has said nothing
                assert not await _closed_by_server(sock, 0.01)
            await held[0].aclose()
            with anyio.fail_after(10):
                await conns.wait_until(lambda c: c.by_group.get("127.0.0.1") == 7)
            assert await _health_from(node.url, "127.0.0.1") == 200  # a slot came back


@pytest.mark.parametrize("anyio_backend", BOTH_BACKENDS)
async def test_silent_connections_past_the_total_cap_are_closed_at_once(
    tmp_path: Path, anyio_backend: str
) -> None:
    """Many addresses (a LAN attacker can use many) are bounded in all."""
    cfg = NodeConfig(max_open_conns=6, header_timeout_s=QUIET)
    async with open_node(tmp_path / "n", config=cfg) as node:
        host, port = _host_port(node.url)
        async with (
            _silent(node, 2, "127.0.0.3"),
            _silent(node, 2, "127.0.0.4"),
            _silent(node, 2, "127.0.0.5"),
            await anyio.connect_tcp(host, port, local_host="127.0.0.6") as seventh,
        ):
            assert await _closed_by_server(seventh, 10)
        assert _conns(node).total == 0
        assert await _health_from(node.url, "127.0.0.6") == 200


@pytest.mark.parametrize("anyio_backend", BOTH_BACKENDS)
async def test_a_silent_tls_handshake_is_counted_and_dropped_after_the_header_timeout(
    tmp_path: Path, anyio_backend: str
) -> None:
    """Over HTTPS a connection is counted before its handshake (asyncio's own TLS
    would handshake first), and one that never sends its ClientHello is dropped
    after the header timeout, not hypercorn's 60 s handshake timeout."""
    cfg = NodeConfig(tls=True, max_open_conns_per_ip=4, header_timeout_s=1.0)
    async with open_node(tmp_path / "n", config=cfg) as node:
        assert node.url.startswith("https://")
        host, port = _host_port(node.url)
        async with _silent(node, 4, "127.0.0.1") as held:
            async with await anyio.connect_tcp(host, port, local_host="127.0.0.1") as fifth:
                assert await _closed_by_server(fifth, 0.5)  # the cap, before the timeout
            t0 = anyio.current_time()
            for sock in held:
                assert await _closed_by_server(sock, 1.0 + 4.0)
            assert anyio.current_time() - t0 >= 0.4  # the timeout, not the cap
        assert await _health_from(node.url, "127.0.0.1") == 200  # TLS still works


def test_open_connections_counts_and_caps() -> None:
    from fedpeer.peer._serve import OpenConnections

    conns = OpenConnections(per_group=2, total_cap=3)
    assert conns.enter("a")
    assert conns.enter("a")
    assert not conns.enter("a")  # the group's cap
    assert conns.enter("b")
    assert not conns.enter("c")  # the total cap
    conns.leave("a")
    assert conns.enter("c")
    assert conns.by_group == {"a": 1, "b": 1, "c": 1}
    assert conns.total == 3
    assert conns.refused == 2
    for group in ("a", "b", "c"):
        conns.leave(group)
    assert conns.by_group == {}
    assert conns.total == 0
