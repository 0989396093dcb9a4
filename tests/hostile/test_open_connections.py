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

import asyncio
import contextlib
import json
import logging
import os
import socket
import ssl
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import anyio.abc
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedpeer.peer import NodeConfig, _serve, open_node
from fedpeer.peer._serve import ConnectionSlot, OpenConnections, connections_budget
from fedpeer.peer.node import Node
from fedpeer.store import NewRecord
from tests.conftest import BOTH_BACKENDS

QUIET = 60.0  # a header timeout no test waits for: whatever closes early is the cap
REPO = Path(__file__).resolve().parents[2]

# Other callers are other loopback addresses (127.0.0.2 and up), which only Linux
# routes to lo without set-up; the descriptor test also reads /proc.
pytestmark = pytest.mark.skipif(
    sys.platform != "linux", reason="needs 127.0.0.0/8 on lo and /proc (Linux)"
)


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


def _no_stale(node: Node) -> OpenConnections:
    """The node's counter, with silent connections never old enough to evict
    (tests of the caps and of fair shares, whatever the machine's speed)."""
    conns = _conns(node)
    conns.stale_after_s = QUIET
    return conns


async def _refused_at_once(node: Node, source: str) -> bool:
    """Whether one more connection from ``source`` is closed by a cap (not a timeout)."""
    host, port = _host_port(node.url)
    refused = _conns(node).refused
    async with await anyio.connect_tcp(host, port, local_host=source) as sock:
        return await _closed_by_server(sock, 10) and _conns(node).refused == refused + 1


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
        conns = _conns(node)
        async with _silent(node, 8, "127.0.0.1") as held:
            assert await _refused_at_once(node, "127.0.0.1")  # the ninth: not after 60 s
            assert await _health_from(node.url, "127.0.0.2") == 200  # others are served
            assert conns.by_group["127.0.0.1"] == 8  # the node still holds the eight
            await held[0].aclose()
            with anyio.fail_after(10):
                await conns.wait_until(lambda c: c.by_group.get("127.0.0.1") == 7)
            assert await _health_from(node.url, "127.0.0.1") == 200  # a slot came back


@pytest.mark.parametrize("anyio_backend", BOTH_BACKENDS)
async def test_silent_connections_past_the_total_cap_are_closed_at_once(
    tmp_path: Path, anyio_backend: str
) -> None:
    """Many addresses (a LAN attacker can use many) are bounded in all: once
    every address holds as many as a newcomer's would, the newcomer is refused."""
    cfg = NodeConfig(max_open_conns=3, header_timeout_s=QUIET)
    async with open_node(tmp_path / "n", config=cfg) as node:
        _no_stale(node)
        async with (
            _silent(node, 1, "127.0.0.3"),
            _silent(node, 1, "127.0.0.4"),
            _silent(node, 1, "127.0.0.5"),
        ):
            assert await _refused_at_once(node, "127.0.0.6")  # the fourth
            assert _conns(node).evicted == 0
        assert _conns(node).total == 0
        assert await _health_from(node.url, "127.0.0.6") == 200


@pytest.mark.parametrize("anyio_backend", BOTH_BACKENDS)
async def test_at_the_total_cap_a_connection_silent_for_a_second_gives_way(
    tmp_path: Path, anyio_backend: str
) -> None:
    """Even shares (one silent connection per address, as a flood from many
    addresses holds them): the newcomer is served once the oldest silent
    connection has been open a second (the counter's clock, moved by the test)."""
    cfg = NodeConfig(max_open_conns=3, header_timeout_s=QUIET)
    async with open_node(tmp_path / "n", config=cfg) as node:
        conns = _conns(node)
        clock = _Clock()
        conns.clock = clock
        async with (
            _silent(node, 1, "127.0.0.3") as first,
            _silent(node, 1, "127.0.0.4"),
            _silent(node, 1, "127.0.0.5"),
        ):
            assert await _refused_at_once(node, "127.0.0.6")  # all of them are new
            clock.now = 1.0
            assert await _health_from(node.url, "127.0.0.6") == 200
            assert conns.evicted == 1
            assert await _closed_by_server(first[0], 10)  # the oldest
            assert conns.by_group.get("127.0.0.3") is None
            assert conns.by_group["127.0.0.4"] == 1


@pytest.mark.parametrize("anyio_backend", BOTH_BACKENDS)
@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
async def test_at_the_total_cap_a_newcomer_takes_an_idle_slot_of_the_address_holding_most(
    tmp_path: Path, anyio_backend: str, tls: bool
) -> None:
    """Before: a flood that filled the total cap shut every newcomer out until its
    connections timed out. Now the node closes the oldest idle connection of the
    address holding the most (over HTTPS, one still before its handshake), and the
    newcomer is served."""
    cfg = NodeConfig(tls=tls, max_open_conns=6, header_timeout_s=QUIET)
    async with open_node(tmp_path / "n", config=cfg) as node:
        conns = _no_stale(node)
        async with _silent(node, 4, "127.0.0.3") as flood, _silent(node, 2, "127.0.0.4") as few:
            assert await _health_from(node.url, "127.0.0.6") == 200
            assert conns.evicted == 1
            assert await _closed_by_server(flood[0], 10)  # the oldest of the largest
            with anyio.fail_after(10):
                await conns.wait_until(lambda c: c.total == 5)
            assert conns.by_group == {"127.0.0.3": 3, "127.0.0.4": 2}
            for sock in [*flood[1:], *few]:
                assert not await _closed_by_server(sock, 0.05)  # the others stay
            async with _silent(node, 1, "127.0.0.5"):  # full again
                assert await _health_from(node.url, "127.0.0.7") == 200
                assert conns.evicted == 2
                assert await _closed_by_server(flood[1], 10)  # "127.0.0.3" still holds most


@pytest.mark.parametrize("anyio_backend", BOTH_BACKENDS)
async def test_a_keep_alive_connection_is_busy_for_its_request_and_idle_after(
    tmp_path: Path, anyio_backend: str
) -> None:
    """Busy from the request head (hypercorn's own signal, before the app runs)
    to the end of the response; idle again, the most recently idle, after."""
    cfg = NodeConfig(header_timeout_s=QUIET, body_timeout_s=QUIET)
    async with open_node(tmp_path / "n", config=cfg) as node:
        conns = _conns(node)
        async with _silent(node, 1, "127.0.0.3") as (sock,):
            (slot,) = conns._idle["127.0.0.3"]
            assert not slot.spoke
            await sock.send(b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            answer = b""
            with anyio.fail_after(10):
                while b"\r\n\r\n" not in answer:
                    answer += await sock.receive()
                await conns.wait_until(lambda c: "127.0.0.3" in c._idle)
            assert answer.startswith(b"HTTP/1.1 200")
            assert slot.spoke
            assert not slot.busy
            assert slot not in conns._silent
            # a head that is complete but whose body has not come: busy
            await sock.send(
                b"POST /v1/records HTTP/1.1\r\nHost: x\r\n"
                + f"Authorization: Bearer {node.admin_token}\r\n".encode()
                + b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
            )
            with anyio.fail_after(10):
                await conns.wait_until(lambda c: slot.busy)
            assert "127.0.0.3" not in conns._idle


@pytest.mark.parametrize("anyio_backend", BOTH_BACKENDS)
async def test_a_connection_with_a_request_in_the_app_is_not_evicted(
    tmp_path: Path, anyio_backend: str
) -> None:
    """Requests whose bodies are still coming are in the app: their connections
    are not idle, so a newcomer at the total cap is refused rather than cutting
    them off."""
    cfg = NodeConfig(max_open_conns=4, header_timeout_s=QUIET, body_timeout_s=QUIET)
    async with open_node(tmp_path / "n", config=cfg) as node:
        conns = _no_stale(node)
        head = (
            b"POST /v1/records HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Bearer {node.admin_token}\r\n".encode()
            + b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
        )
        async with _silent(node, 3, "127.0.0.3") as uploads, _silent(node, 1, "127.0.0.4"):
            for sock in uploads:
                await sock.send(head)
            with anyio.fail_after(10):
                await conns.wait_until(lambda c: "127.0.0.3" not in c._idle)
            assert await _refused_at_once(node, "127.0.0.5")
            assert conns.evicted == 0
            for sock in uploads:
                assert not await _closed_by_server(sock, 0.05)


def _shrink_send_buffers(port: int) -> None:
    """Give the node's listening socket on ``port`` (and so every connection it
    accepts: Linux copies the size) a small kernel send buffer, so the end of a
    large answer to a slow reader waits in the server's own buffers."""
    found = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if not stat.S_ISSOCK(os.fstat(int(fd)).st_mode):
                continue
            sock = socket.socket(fileno=os.dup(int(fd)))
        except OSError:
            continue  # closed meanwhile
        with sock:
            if (
                sock.family == socket.AF_INET
                and sock.type == socket.SOCK_STREAM
                and sock.getsockname()[1] == port
                and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
            ):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
                found += 1
    assert found == 1


@pytest.mark.parametrize("anyio_backend", BOTH_BACKENDS)
async def test_an_evicted_connection_still_gets_the_end_of_its_last_response(
    tmp_path: Path, anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A keep-alive connection is idle once the server has *written* its response,
    while the end of it may still wait in the server's buffers for a slow reader.
    Evicting it then must not cut that response short: asyncio closes the
    transport once its buffer is out (before: an abort dropped it), trio closes
    a socket whose data the kernel already holds."""
    buffered: list[int] = []  # asyncio: what the transport still held at the eviction
    abort_when_sent = _serve._abort_when_sent

    def spy(transport: asyncio.WriteTransport) -> None:
        buffered.append(transport.get_write_buffer_size())
        abort_when_sent(transport)

    monkeypatch.setattr(_serve, "_abort_when_sent", spy)
    cfg = NodeConfig(max_open_conns=2, header_timeout_s=QUIET, body_timeout_s=QUIET)
    async with open_node(tmp_path / "n", config=cfg) as node:
        conns = _no_stale(node)
        await node.store.put(
            [
                NewRecord(
                    cid=b"\x01\x71\x12\x20" + i.to_bytes(32, "big"),
                    data=b"\x5a" + (400_000).to_bytes(4, "big") + bytes([i]) * 400_000,
                    sig=b"\x00" * 64,
                    author=node.did,
                    namespace="big",
                    thread="t",
                    kind="k",
                    ts=1,
                )
                for i in range(3)
            ]
        )
        host, port = _host_port(node.url)
        _shrink_send_buffers(port)
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a slow reader's window
        raw.bind(("127.0.0.3", 0))
        raw.connect((host, port))  # loopback: at once
        async with await anyio.abc.SocketStream.from_socket(raw) as slow:
            await slow.send(
                b"GET /v1/sync/changes?limit=3 HTTP/1.1\r\nHost: x\r\n"
                + f"Authorization: Bearer {node.admin_token}\r\n\r\n".encode()
            )
            got = bytearray()
            with anyio.fail_after(30):  # read slowly until the node has written it all
                while not got or "127.0.0.3" not in conns._idle:
                    got += await slow.receive(1024)
            head = bytes(got).partition(b"\r\n\r\n")[0]
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            total = len(head) + 4 + length
            assert len(got) < total  # the tail is still on its way
            async with _silent(node, 1, "127.0.0.3"):  # a younger idle one: at the cap
                assert await _health_from(node.url, "127.0.0.4") == 200
                assert conns.evicted == 1
                with anyio.fail_after(10), contextlib.suppress(anyio.EndOfStream):
                    while True:
                        got += await slow.receive()
        assert len(got) == total  # all of it, then the close
        page = json.loads(bytes(got[len(head) + 4 :]))
        assert len(page["records"]) == 3
        if anyio_backend == "asyncio":  # the path under test was taken: a tail in memory
            assert buffered
            assert buffered[0] > 0


@pytest.mark.parametrize("anyio_backend", BOTH_BACKENDS)
async def test_a_silent_tls_handshake_is_counted_and_dropped_after_the_header_timeout(
    tmp_path: Path, anyio_backend: str
) -> None:
    """Over HTTPS a connection is counted before its handshake (asyncio's own TLS
    would handshake first), and one that never sends its ClientHello is dropped
    after the header timeout, not hypercorn's 60 s handshake timeout."""
    cfg = NodeConfig(tls=True, max_open_conns_per_ip=4, header_timeout_s=3.0)
    async with open_node(tmp_path / "n", config=cfg) as node:
        assert node.url.startswith("https://")
        t0 = anyio.current_time()
        async with _silent(node, 4, "127.0.0.1") as held:
            assert await _refused_at_once(node, "127.0.0.1")  # by the cap, not the timeout
            for sock in held:
                assert await _closed_by_server(sock, 3.0 + 5.0)
            assert anyio.current_time() - t0 >= 2.9  # the header timeout, not at once
        assert await _health_from(node.url, "127.0.0.1") == 200  # TLS still works


@pytest.mark.parametrize("anyio_backend", BOTH_BACKENDS)
async def test_a_client_silent_after_its_tls_handshake_frees_its_slot_in_time(
    tmp_path: Path, anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that completes its handshake and then says nothing is dropped after
    the header timeout, and its slot comes back within a few seconds: closing it
    does not wait 30 s for a TLS close_notify that never comes (asyncio), nor log
    an error."""
    cfg = NodeConfig(tls=True, header_timeout_s=3.0)
    async with open_node(tmp_path / "n", config=cfg) as node:
        host, port = _host_port(node.url)
        conns = _conns(node)
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # the pin is not what this test is about
        async with await anyio.connect_tcp(
            host, port, tls=True, ssl_context=ctx, tls_standard_compatible=False
        ) as client:
            with anyio.fail_after(10):
                await conns.wait_until(lambda c: c.total == 1)
            with anyio.fail_after(3.0 + 2.0 + 10.0):  # timeout + close + slack, not 33 s
                await conns.wait_until(lambda c: c.total == 0)
            del client
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_the_address_of_an_accepted_connection_is_grouped() -> None:
    from fedpeer.peer._serve import _groups_of

    assert _groups_of(("127.0.0.1", 5000)) == ("127.0.0.1", "127.0.0.1")
    assert _groups_of(("2001:db8:1:2::7", 5000, 0, 0)) == ("2001:db8:1:2::/64", "2001:db8:1::/48")
    assert _groups_of(("fe80::7%eth0", 5000, 0, 2)) == ("fe80::7", "fe80::7")
    assert _groups_of(("::ffff:192.0.2.7", 5000, 0, 0)) == ("192.0.2.7", "192.0.2.7")
    assert _groups_of(None) == ("unknown", "unknown")  # a transport without a peer name


def test_a_flood_logs_once_per_group_and_remembers_no_stranger(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Refusals are logged once per group at its cap (again after it has drained)
    and once for the total cap; groups refused by the total cap hold no entry."""
    conns = _counter(2, 4)
    with caplog.at_level(logging.WARNING, logger="fedpeer.peer"):
        held = [conns.enter("a"), conns.enter("a")]
        for _ in range(5):
            assert conns.enter("a") is None
        held += [conns.enter("b"), conns.enter("c")]
        held.append(conns.enter("s"))  # takes an idle slot of "a", which holds two
        for i in range(100):  # strangers while everything is full (and evenly shared)
            assert conns.enter(f"s{i}") is None
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2, warnings  # "a" at its cap, then the total cap
    assert conns.refused == 105
    assert conns.evicted == 1
    assert conns._warned == {"a"}
    for slot in held:
        assert slot is not None
        conns.leave(slot)  # the evicted one: a no-op
    assert conns._warned == set()
    assert not conns._warned_total
    assert conns.total == 0
    assert conns.by_group == {}
    assert conns._levels == {}
    assert conns._idle == {}
    assert conns._top == 0


class _Clock:
    """A clock the test moves (sans-I/O tests: no real time passes)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _counter(per_group: int, total_cap: int, clock: _Clock | None = None) -> OpenConnections:
    return OpenConnections(per_group=per_group, total_cap=total_cap, clock=clock or _Clock())


class _Closed:
    """What an evicted connection's ``close`` records (sans-I/O tests)."""

    def __init__(self) -> None:
        self.closed: list[str] = []

    def enter(self, conns: OpenConnections, group: str, name: str = "") -> ConnectionSlot | None:
        return conns.enter(group, lambda: self.closed.append(name or group))

    def admit(self, conns: OpenConnections, group: str, name: str = "") -> ConnectionSlot:
        slot = self.enter(conns, group, name)
        assert slot is not None
        return slot


def test_open_connections_counts_and_caps() -> None:
    seen = _Closed()
    conns = _counter(2, 3)
    a1 = seen.admit(conns, "a", "a1")
    a2 = seen.admit(conns, "a", "a2")
    assert seen.enter(conns, "a") is None  # the group's cap
    b1 = seen.admit(conns, "b", "b1")
    # At the total cap, "a" holds two more than "c": its oldest idle connection goes.
    c1 = seen.admit(conns, "c", "c1")
    assert seen.closed == ["a1"]
    assert a1.evicted
    assert conns.evicted == 1
    conns.leave(a1)  # its task ends later: already counted out
    assert conns.by_group == {"a": 1, "b": 1, "c": 1}
    # Everyone holds one now: a newcomer takes no one's slot.
    assert seen.enter(conns, "d") is None
    assert seen.closed == ["a1"]
    assert conns.total == 3
    assert conns.refused == 2
    for slot in (a2, b1, c1):
        conns.leave(slot)
    assert conns.by_group == {}
    assert conns.total == 0


def test_a_connection_with_a_request_in_flight_is_never_evicted() -> None:
    """Only idle connections are evicted, oldest idle first: a connection that
    finished a request is the most recently idle of its group."""
    seen = _Closed()
    conns = _counter(10, 4)
    x = [seen.admit(conns, "x", f"x{i}") for i in range(3)]
    seen.admit(conns, "y", "y0")
    conns.set_busy(x[0], True)  # busy: never a victim
    conns.set_busy(x[1], True)
    conns.set_busy(x[1], False)  # idle again, after x2
    assert seen.enter(conns, "z", "z0") is not None
    assert seen.closed == ["x2"]  # the oldest idle, not the oldest
    # "x" holds 2, "z" 1 and "y" 1: a newcomer holds 0, so "x" gives one more.
    assert seen.enter(conns, "w", "w0") is not None
    assert seen.closed == ["x2", "x1"]
    # x0 is busy and alone in its group; nobody holds two more than a newcomer.
    assert seen.enter(conns, "v") is None
    conns.set_busy(x[0], False)
    assert conns.by_group == {"x": 1, "y": 1, "z": 1, "w": 1}


def test_when_the_largest_group_is_all_busy_a_smaller_one_gives_way() -> None:
    seen = _Closed()
    conns = _counter(10, 6)
    for i in range(4):
        conns.set_busy(seen.admit(conns, "big", f"big{i}"), True)
    for i in range(2):
        seen.admit(conns, "mid", f"mid{i}")
    assert seen.enter(conns, "new", "new0") is not None
    assert seen.closed == ["mid0"]  # "big" has no idle connection; "mid" holds 2 >= 0 + 2
    assert seen.enter(conns, "new") is None  # now "new" holds 1: "mid" (1) is not ahead


def test_an_eviction_looks_at_a_bounded_number_of_groups() -> None:
    """Groups whose connections are all busy are skipped, but only so many: the
    cost of an accept at the cap stays bounded however many groups there are."""
    from fedpeer.peer._serve import _EVICT_LOOK

    seen = _Closed()
    groups = _EVICT_LOOK + 5
    conns = _counter(10, groups * 2)
    for g in range(groups):
        for _ in range(2):
            slot = seen.admit(conns, f"g{g}")
            if g < groups - 1:  # the last group's two stay idle
                conns.set_busy(slot, True)
    assert seen.enter(conns, "new") is None  # the idle pair lies past the bound
    assert seen.closed == []


def test_a_site_flooding_from_many_64s_is_one_share() -> None:
    """One /48 spread over many /64s (one connection each, under every group cap)
    is one share: a newcomer from elsewhere takes its oldest idle slot."""
    seen = _Closed()
    conns = _counter(2, 4)
    site = "2001:db8:1::/48"
    for i in range(4):
        assert conns.enter(f"2001:db8:1:{i}::/64", lambda i=i: seen.closed.append(f"s{i}"), site)
    assert conns.enter("192.0.2.7", share="192.0.2.7") is not None
    assert seen.closed == ["s0"]
    assert conns._by_share == {site: 3, "192.0.2.7": 1}


def test_when_shares_are_even_a_connection_silent_for_a_second_gives_way() -> None:
    """Many addresses holding one silent connection each: fair shares cannot tell
    them apart, but an honest client sends its request at once, so at the cap the
    oldest connection that has been open a second without a complete request goes.
    One that had a request (idle between keep-alive requests) is not taken so."""
    clock = _Clock()
    seen = _Closed()
    conns = _counter(4, 3, clock)
    spoke = seen.admit(conns, "a", "a0")
    conns.set_busy(spoke, True)
    conns.set_busy(spoke, False)  # idle, but it spoke
    seen.admit(conns, "b", "b0")
    clock.now = 0.5
    seen.admit(conns, "c", "c0")
    assert seen.enter(conns, "d") is None  # b0 is only half a second old
    clock.now = 1.2
    assert seen.enter(conns, "d", "d0") is not None
    assert seen.closed == ["b0"]  # the oldest silent one, not a0 (older, but it spoke)
    assert seen.enter(conns, "e") is None  # c0 is 0.7 s old
    clock.now = 1.5
    assert seen.enter(conns, "e", "e0") is not None
    assert seen.closed == ["b0", "c0"]


def test_a_silent_connection_of_the_newcomers_own_group_can_give_way() -> None:
    """The stale rule may take the newcomer's own group's old silent connection;
    the group's count then stays right (it was read before the eviction: found
    by the property below)."""
    clock = _Clock()
    seen = _Closed()
    conns = _counter(3, 2, clock)
    seen.admit(conns, "a", "a0")
    seen.admit(conns, "b", "b0")
    clock.now = 2.0
    assert seen.enter(conns, "a", "a1") is not None
    assert seen.closed == ["a0"]
    assert conns.by_group == {"a": 1, "b": 1}
    assert conns.total == 2


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["enter", "leave", "start", "done", "tick"]), st.integers(0, 5)),
        max_size=120,
    )
)
def test_open_connections_keeps_its_books(ops: list[tuple[str, int]]) -> None:
    """Any sequence of accepts, closes, requests and passing time: the counts,
    levels, idle and silent lists agree with the live slots; caps hold; an
    eviction takes an idle slot of a share holding at least two more than the
    newcomer's, or a silent one open at least ``stale_after_s``."""
    clock = _Clock()
    seen = _Closed()
    conns = _counter(3, 5, clock)
    live: list[ConnectionSlot] = []
    for op, n in ops:
        if op == "enter":
            group = f"g{n}"
            share = "s01" if n < 2 else "s23" if n < 4 else group
            held = conns._by_share.get(share, 0)
            before = dict(conns._by_share)
            slot = conns.enter(group, lambda: seen.closed.append("x"), share)
            gone = [s for s in live if s.evicted]
            if slot is not None:
                live.append(slot)
                for victim in gone:
                    assert not victim.busy
                    fair = before[victim.share] >= held + 2
                    stale = not victim.spoke and clock.now - victim.opened >= 1.0
                    assert fair or stale
                    live.remove(victim)
            assert len(gone) <= (slot is not None)
        elif op == "tick":
            clock.now += 0.4 * n
        elif live:
            slot = live[n % len(live)]
            if op == "leave":
                conns.leave(slot)
                live.remove(slot)
            else:
                conns.set_busy(slot, op == "start")
        groups: dict[str, int] = {}
        shares: dict[str, int] = {}
        for slot in live:
            groups[slot.group] = groups.get(slot.group, 0) + 1
            shares[slot.share] = shares.get(slot.share, 0) + 1
        assert conns.by_group == groups
        assert conns._by_share == shares
        assert conns.total == len(live) <= 5
        assert all(c <= 3 for c in groups.values())
        levels = {c: {g for g, k in shares.items() if k == c} for c in set(shares.values())}
        assert {c: set(gs) for c, gs in conns._levels.items()} == levels
        assert conns._top == max(shares.values(), default=0)
        idle = {id(s) for s in live if not s.busy}
        assert {id(s) for gs in conns._idle.values() for s in gs} == idle
        assert all(gs for gs in conns._idle.values())
        assert {id(s) for s in conns._silent} == {id(s) for s in live if not s.spoke}
        assert len(seen.closed) == conns.evicted  # every evicted connection was closed


# --- few file descriptors -------------------------------------------------------------


def test_the_connection_budget_keeps_a_quarter_of_the_descriptors() -> None:
    assert connections_budget(4096, 1024) == 768  # a common Linux desktop soft limit
    assert connections_budget(4096, 256) == 192  # macOS
    assert connections_budget(4096, 20_000) == 4096  # the configured cap wins
    assert connections_budget(4096, None) == 4096  # no limit known
    assert connections_budget(4096, 8) == 16  # never below 16


def test_raise_open_files_limit_lifts_a_low_soft_limit() -> None:
    """``raise_open_files_limit`` (what ``fedpeer run`` calls) lifts a low soft limit
    up to the hard one; run in a child process, whose limits are its own."""
    code = (
        "import resource, json; from fedpeer.peer import raise_open_files_limit; "
        "s, h = resource.getrlimit(resource.RLIMIT_NOFILE); "
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, h)); "
        "print(json.dumps([raise_open_files_limit(), h, "
        "resource.getrlimit(resource.RLIMIT_NOFILE)[0]]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    (before, after), hard, now = json.loads(out.stdout)
    assert before == 256
    assert after == now == min(65_536, hard)


async def test_a_flood_leaves_a_node_with_few_descriptors_some_to_spare(
    tmp_path: Path,
) -> None:
    """A node in a process allowed 256 descriptors caps its connections at 192 in
    all; 250 silent connections from four addresses leave it descriptors for its
    own work (store, requests, files) instead of hitting EMFILE."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.hostile.fd_limit_child", str(tmp_path / "n"), "256"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    stdout = proc.stdout
    try:
        with anyio.fail_after(60):
            hello = json.loads(await anyio.to_thread.run_sync(stdout.readline))
        assert hello["total_cap"] == 192
        host, port = _host_port(hello["url"])
        async with contextlib.AsyncExitStack() as stack:
            with anyio.fail_after(60):
                for i in range(250):
                    sock = await anyio.connect_tcp(host, port, local_host=f"127.0.0.{3 + i % 4}")
                    await stack.enter_async_context(sock)
            proc.stdin.write("250\n")
            proc.stdin.flush()
            with anyio.fail_after(60):
                report = json.loads(await anyio.to_thread.run_sync(stdout.readline))
        assert report["total"] == 192
        assert report["refused"] == 250 - 192
        assert report["open_fds"] <= 256 - 16, report  # room left for the node itself
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


def test_raise_open_files_limit_steps_down_to_what_the_system_allows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """macOS reports an unlimited hard limit but refuses more than its per-process
    maximum (often 10240): the raise takes the largest value it accepts."""
    import resource

    from fedpeer.peer import raise_open_files_limit

    tried: list[int] = []

    def setrlimit(which: int, limits: tuple[int, int]) -> None:
        tried.append(limits[0])
        if limits[0] > 12_000:
            raise ValueError("not allowed")

    monkeypatch.setattr(resource, "getrlimit", lambda which: (256, resource.RLIM_INFINITY))
    monkeypatch.setattr(resource, "setrlimit", setrlimit)
    assert raise_open_files_limit() == (256, 10_240)
    assert tried == [65_536, 32_768, 16_384, 10_240]  # largest first
