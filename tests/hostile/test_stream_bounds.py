"""The continuous feed's client is bounded too (protocol.md §8.5, §8.7).

``PeerClient.stream_changes`` read lines with httpx's ``aiter_lines``, which keeps
a line until its end: a peer sending a ``data:`` line that never ends grew the
client without bound. Its open had only per-read timeouts (and no read timeout
at all, the stream being long-lived), so a peer that accepts and never answers
held the caller forever. Now every line is capped (PAGE_TOO_LARGE) and the
connect, TLS handshake and answer head share one deadline (PEER_TOO_SLOW).
The errors a caller meets say what to do next. Hostile fake peers
(tests/hostile/fakepeer.py, raw HTTP on loopback).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from fedpeer.errors import PageTooLarge, PeerTooSlow
from fedpeer.peer import PeerClient
from fedpeer.peer.client import sse_line_cap, sse_lines
from fedpeer.sync.records import Limits
from tests.hostile.fakepeer import HostilePeer

MIB = 1024 * 1024


async def _first_event(peer: PeerClient) -> None:
    async for _event in peer.stream_changes():
        raise AssertionError("no event was expected from this peer")


SMALL = Limits(max_record_bytes=64 * 1024)  # a 320 KiB line cap


async def test_an_endless_sse_line_is_cut_at_the_line_cap() -> None:
    hostile = HostilePeer("sse_endless_line")
    async with trio.open_nursery() as nursery:
        await hostile.start(nursery)
        async with PeerClient(hostile.url, token="t", limits=SMALL) as peer:
            with trio.fail_after(30), pytest.raises(PageTooLarge) as caught:
                await _first_event(peer)  # none can end: its line never does
        nursery.cancel_scope.cancel()
    assert caught.value.code == "PAGE_TOO_LARGE"
    assert f"more than {sse_line_cap(SMALL)} bytes" in caught.value.message
    assert "Check that it is a fedpeer node" in caught.value.message  # a next step
    # Cut off near the 320 KiB cap (socket buffers aside), not after gigabytes.
    assert hostile.sent[0] < 16 * MIB, hostile.sent


async def test_a_peer_that_never_answers_the_stream_is_too_slow() -> None:
    hostile = HostilePeer("silent")
    async with trio.open_nursery() as nursery:
        await hostile.start(nursery)
        async with PeerClient(hostile.url, token="t", timeout=1.0) as peer:
            with trio.fail_after(30), pytest.raises(PeerTooSlow) as caught:
                await _first_event(peer)
        nursery.cancel_scope.cancel()
    assert caught.value.code == "PEER_TOO_SLOW"
    assert "within 1 s" in caught.value.message  # the client's own deadline ended it
    assert "try again later" in caught.value.message
    assert hostile.requests.get("/v1/sync/changes") == 1


async def test_bounded_read_errors_say_what_to_do_next() -> None:
    """The errors a PeerClient user meets from a hostile peer end in a next step."""
    silent, huge = HostilePeer("silent"), HostilePeer("huge")
    async with trio.open_nursery() as nursery:
        await silent.start(nursery)
        await huge.start(nursery)
        async with PeerClient(silent.url, token="t", timeout=1.0) as peer:
            with trio.fail_after(30), pytest.raises(PeerTooSlow) as slow:
                await peer.changes()
        async with PeerClient(huge.url, token="t") as peer:
            with trio.fail_after(30), pytest.raises(PageTooLarge) as large:
                await peer.changes()
        nursery.cancel_scope.cancel()
    assert "check the link and try again" in slow.value.message
    assert "Check that it is a fedpeer node" in large.value.message


async def test_the_request_deadline_covers_connect_and_the_tls_handshake() -> None:
    """A peer that takes the TCP connection and never answers the TLS ClientHello:
    httpx's connect timeout is per operation (10 s here); the one deadline of the
    request (1 s) ends it, as PEER_TOO_SLOW, and so does the stream's open."""
    hostile = HostilePeer("silent")  # reads the ClientHello as a request head forever
    async with trio.open_nursery() as nursery:
        await hostile.start(nursery)
        url = hostile.url.replace("http://", "https://")
        async with PeerClient(url, token="t", timeout=40.0) as peer:
            # fail_after(9) < the 10 s connect timeout: only the 1 s deadline can end it
            with trio.fail_after(9), pytest.raises(PeerTooSlow) as caught:
                await peer.request("GET", "/v1/sync/changes", deadline=1.0)
        assert "within 1 s" in caught.value.message
        async with PeerClient(url, token="t", timeout=1.0) as peer:
            with trio.fail_after(30), pytest.raises(PeerTooSlow):
                await _first_event(peer)
        nursery.cancel_scope.cancel()
    assert hostile.requests == {}  # no HTTP request head ever arrived


async def test_a_long_line_in_small_chunks_is_scanned_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A line sent 4 KiB at a time (as a hostile peer may, up to the cap) is
    searched for its end once per byte, not once per chunk over the whole
    buffer (quadratic: seconds of CPU per line). Counted, not timed."""
    from fedpeer.peer import client as client_module

    real = client_module._LINE_END
    scanned: list[int] = []

    class Counting:
        def search(self, buf: bytearray, pos: int = 0) -> object:
            scanned.append(len(buf) - pos)
            return real.search(buf, pos)

    chunk, count = b"x" * 4096, 256  # a 1 MiB line, then its end and a second line
    total = len(chunk) * count + 2 + 4

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(count):
            yield chunk
        yield b"\r"  # a CR last: its LF comes in the next chunk
        yield b"\nab\n"

    monkeypatch.setattr(client_module, "_LINE_END", Counting())
    lines = [ln async for ln in sse_lines(chunks(), 2 * 1024 * 1024, "peer")]
    assert [len(ln) for ln in lines] == [len(chunk) * count, 2]
    assert scanned, "the reader no longer searches through _LINE_END: count it again"
    assert sum(scanned) <= 2 * total, sum(scanned)


async def test_a_stream_that_goes_mute_ends_as_too_slow() -> None:
    """A peer that opens its change stream and then sends nothing, not even the
    heartbeat it owes every 15 s (a half-open connection, a laptop lid): the
    caller gets PEER_TOO_SLOW after the idle limit instead of hanging forever."""
    hostile = HostilePeer("sse_mute")
    async with trio.open_nursery() as nursery:
        await hostile.start(nursery)
        async with PeerClient(hostile.url, token="t", timeout=5.0) as peer:
            # fail_after well under anything but the 1 s idle limit could end it
            with trio.fail_after(20), pytest.raises(PeerTooSlow) as caught:
                async for _event in peer.stream_changes(idle_timeout_s=1.0):
                    pass
        nursery.cancel_scope.cancel()
    assert caught.value.code == "PEER_TOO_SLOW"
    assert "for 1 s, not even a heartbeat" in caught.value.message
    assert hostile.requests.get("/v1/sync/changes") == 1
