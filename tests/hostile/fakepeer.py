"""Hostile fake peers for the hostile suite: a raw HTTP/1.1 server on loopback (trio).

It serves a real, validly signed well-known manifest (so a node agrees to pair
with it and, for a reciprocal URL, gets as far as reading the answer), and
answers other paths with one hostile behaviour:

- ``endless``: a chunked body that never ends (64 KiB chunks until the client
  hangs up);
- ``huge``: ``Content-Length`` of 1 GiB, then zeros until the client hangs up;
- ``many``: a 15 MB DAG-CBOR page whose ``records`` list claims and holds 10^6
  tiny items;
- ``drip``: a valid-looking answer whose body comes one byte every 20 s;
- ``redirect``: ``302 Found`` to another address;
- ``sse_endless_line``: a continuous feed (``text/event-stream``) whose record
  event's ``data:`` line never ends (64 KiB of ``x`` per chunk);
- ``sse_mute``: opens a continuous feed, then sends nothing, not even heartbeats;
- ``silent``: reads the request and never answers (not even the status line);
- ``error`` (changes only, keep-alive): ``error_status`` (500) with ``error_body``,
  every time;
- ``instant`` (changes only, keep-alive): a valid empty page at once, every
  time, longpolls included (a source that never holds a longpoll);
- ``pagebomb`` (changes only, keep-alive): a 1 MB page whose one record is a
  million empty lists;
- ``creep`` (changes only, keep-alive): a valid empty page at once with
  ``has_more`` and a cursor one seq further each time (a source stepping its
  cursor one by one, which the protocol allows).

``manifest_behaviour`` applies one of those to the manifest path instead
(for the reciprocal-URL test). Every loop is bounded; the server counts the
bytes it managed to send per request (``sent``) and the requests per path.
"""

from __future__ import annotations

import functools
import json
import urllib.parse

import attrs
import trio

from fedpeer.identity.canonical import dagcbor_encode
from fedpeer.identity.keys import SigningKey
from fedpeer.peer.services._core import NodeCore
from fedpeer.store import MemoryStore
from fedpeer.sync.feed import cursor_at

GIB = 1024**3
CHUNK = b"\0" * 65536
MANY = 1_000_000


async def manifest_bytes(key: SigningKey, url: str) -> bytes:
    """The DAG-CBOR well-known answer a real node with ``key`` at ``url`` gives."""
    store = MemoryStore()
    try:
        core = NodeCore(key=key, store=store, urls=[url])
        body = {
            "capabilities_manifest": core.capabilities(),
            "federation_manifest": await core.signed_manifest(),
        }
    finally:
        await store.aclose()
    return dagcbor_encode(body)


def many_records_page(count: int = MANY) -> bytes:
    """A canonical-looking page head claiming ``count`` records, then ``count`` 15-byte
    items (text strings of 14 characters): about 15 MB for 10^6."""
    head = b"\xa3\x67records\x9a" + count.to_bytes(4, "big")
    return head + (b"\x6e" + b"x" * 14) * count


async def _open_event_stream(stream: trio.SocketStream, then: bytes) -> int:
    """Answer 200 with a chunked text/event-stream and its greeting comment, then
    ``then`` in the same chunk; the bytes of that chunk's payload."""
    await stream.send_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    start = b": fedpeer continuous feed\n\n" + then
    await stream.send_all(f"{len(start):x}\r\n".encode() + start + b"\r\n")
    return len(start)


@attrs.define(eq=False)
class HostilePeer:
    """One hostile peer; ``start(nursery)`` binds port 0 on 127.0.0.1."""

    behaviour: str
    manifest_behaviour: str | None = None
    key: SigningKey = attrs.field(factory=SigningKey.generate)
    url: str = ""
    sent: list[int] = attrs.field(factory=list)  # bytes of body sent, per hostile answer
    requests: dict[str, int] = attrs.field(factory=dict)
    error_body: bytes = b""  # what ``error`` answers
    error_status: int = 500
    seen: trio.Event = attrs.field(factory=trio.Event)  # set (and replaced) per request
    delay_s: float = 0.0  # ``instant``: wait this long first (a distant source)
    crept: int = 0  # ``creep``: the seq of the last cursor given
    _manifest: bytes = b""
    _many: bytes = b""
    _bomb: bytes = b""

    @property
    def did(self) -> str:
        return self.key.did

    async def start(self, nursery: trio.Nursery) -> None:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, self._handle, 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self._manifest = await manifest_bytes(self.key, self.url)
        if self.behaviour == "many":
            self._many = many_records_page()
        if self.behaviour == "pagebomb":
            # one "record" that is a million empty lists: 1 MB, under every byte
            # cap and the record count, seconds of decoding
            cursor = cursor_at("ab" * 16, 1, None, key=b"k" * 16).encode()
            self._bomb = dagcbor_encode(
                {"records": [[[]] * 1_000_000], "next_cursor": cursor, "has_more": False}
            )

    async def _handle(self, stream: trio.SocketStream) -> None:
        try:
            for _ in range(1000):  # keep-alive: bounded number of requests per connection
                head = await self._read_head(stream)
                if head is None:
                    return
                path = head.split(b" ", 2)[1].decode("latin-1")
                route = path.split("?", 1)[0]
                self.requests[route] = self.requests.get(route, 0) + 1
                self.seen.set()
                self.seen = trio.Event()
                if route == "/.well-known/fedpeer" and self.manifest_behaviour is None:
                    await self._send(stream, 200, self._manifest, "application/cbor")
                    continue
                behaviour = (
                    self.manifest_behaviour if route == "/.well-known/fedpeer" else self.behaviour
                )
                if behaviour == "reset" and route == "/v1/sync/changes":
                    await self._reset(stream, path)
                    continue
                if behaviour == "pagebomb" and route == "/v1/sync/changes":
                    await self._send(stream, 200, self._bomb, "application/cbor")
                    continue
                if behaviour == "instant" and route == "/v1/sync/changes":
                    # a valid empty page at once, every time, longpolls included
                    if self.delay_s:
                        await trio.sleep(self.delay_s)  # the round trip of a far source
                    cursor = cursor_at("ab" * 16, 0, None, key=b"k" * 16).encode()
                    page = {"records": [], "next_cursor": cursor, "has_more": False}
                    await self._send(stream, 200, dagcbor_encode(page), "application/cbor")
                    continue
                if behaviour == "creep" and route == "/v1/sync/changes":
                    self.crept += 1
                    cursor = cursor_at("ab" * 16, self.crept, None, key=b"k" * 16).encode()
                    page = {"records": [], "next_cursor": cursor, "has_more": True}
                    await self._send(stream, 200, dagcbor_encode(page), "application/cbor")
                    continue
                if behaviour == "error" and route == "/v1/sync/changes":
                    await self._send(stream, self.error_status, self.error_body, "application/json")
                    continue
                await self._hostile(stream, behaviour or "")
                return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        finally:
            await stream.aclose()

    async def _read_head(self, stream: trio.SocketStream) -> bytes | None:
        buf = b""
        while b"\r\n\r\n" not in buf:
            if len(buf) > 65536:
                return None
            data = await stream.receive_some(65536)
            if not data:
                return None
            buf += data
        return buf

    async def _send(self, stream: trio.SocketStream, status: int, body: bytes, ctype: str) -> None:
        head = (
            f"HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        await stream.send_all(head + body)

    async def _reset(self, stream: trio.SocketStream, path: str) -> None:
        """``reset``: a valid empty page for a request without a cursor, and
        CURSOR_RESET for the cursor it just gave (a source that keeps
        "forgetting" it, or lies), at once, on the same connection."""
        query = urllib.parse.parse_qs(path.partition("?")[2])
        if not query.get("since", [""])[0]:
            cursor = cursor_at("ab" * 16, 0, None, key=b"k" * 16).encode()
            page = {"records": [], "next_cursor": cursor, "has_more": False}
            await self._send(stream, 200, dagcbor_encode(page), "application/cbor")
            return
        error = {"error": {"code": "CURSOR_RESET", "message": "forgot it again"}}
        await self._send(stream, 409, json.dumps(error).encode(), "application/json")

    async def _hostile(self, stream: trio.SocketStream, behaviour: str) -> None:
        self.sent.append(0)
        slot = len(self.sent) - 1
        cbor = "Content-Type: application/cbor\r\n"
        if behaviour == "redirect":
            await stream.send_all(
                b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:9/elsewhere\r\n"
                b"Content-Length: 0\r\n\r\n"
            )
        elif behaviour == "endless":
            await stream.send_all(
                f"HTTP/1.1 200 OK\r\n{cbor}Transfer-Encoding: chunked\r\n\r\n".encode()
            )
            frame = f"{len(CHUNK):x}\r\n".encode() + CHUNK + b"\r\n"
            for _ in range(200_000):  # 12.5 GiB at most: ends when the client hangs up
                await stream.send_all(frame)
                self.sent[slot] += len(CHUNK)
        elif behaviour == "huge":
            head = f"HTTP/1.1 200 OK\r\n{cbor}Content-Length: {GIB}\r\n\r\n"
            await stream.send_all(head.encode())
            for _ in range(GIB // len(CHUNK)):
                await stream.send_all(CHUNK)
                self.sent[slot] += len(CHUNK)
        elif behaviour == "many":
            body = self._many
            await stream.send_all(
                f"HTTP/1.1 200 OK\r\n{cbor}Content-Length: {len(body)}\r\n\r\n".encode()
            )
            for i in range(0, len(body), 1 << 20):
                await stream.send_all(body[i : i + (1 << 20)])
                self.sent[slot] += min(1 << 20, len(body) - i)
        elif behaviour == "drip":
            await stream.send_all(f"HTTP/1.1 200 OK\r\n{cbor}Content-Length: 100\r\n\r\n".encode())
            for _ in range(100):
                await stream.send_all(b"\xa3")
                self.sent[slot] += 1
                await trio.sleep(20)  # the hostile peer's pace, not a test synchronisation
        elif behaviour == "sse_endless_line":
            await _open_event_stream(stream, b"event: record\nid: c1\ndata: ")
            line = b"x" * len(CHUNK)
            frame = f"{len(line):x}\r\n".encode() + line + b"\r\n"
            for _ in range(200_000):  # 12.5 GiB at most: ends when the client hangs up
                await stream.send_all(frame)
                self.sent[slot] += len(line)
        elif behaviour == "sse_mute":
            self.sent[slot] += await _open_event_stream(stream, b"")
            await trio.sleep(120)  # then nothing, not even a heartbeat; the nursery ends it
        elif behaviour == "silent":
            await trio.sleep(120)  # the hostile peer's pace; the test's nursery ends it
        else:
            raise AssertionError(f"unknown behaviour {behaviour!r}")
