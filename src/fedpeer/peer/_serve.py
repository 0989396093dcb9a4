"""Serving the node's app with hypercorn, with a cap on open connections per address.

Hypercorn's own ``worker_serve`` accepts every connection, and the app only sees a
request once its head is complete (``ConnectionGuard`` counts requests in flight
from there). Until then a connection costs a file descriptor for up to the header
timeout, and one address opening them faster than the timeout closes them could
use up the node's descriptors, so nobody else could connect. This module is the
same serve loop as hypercorn's (its ``TCPServer`` per connection, on the running
backend, trio or asyncio), with :class:`OpenConnections` checked as each connection
is accepted, before a byte is read and before any TLS handshake: past
``max_open_conns_per_ip`` from one address (an IPv6 caller counts by its /64), or
``max_open_conns`` in all, the connection is closed at once; at the total cap,
an idle connection of the address holding the most, or else one silent for a
second, is closed first (see :class:`OpenConnections`), so a flood from many
addresses cannot shut out callers with few connections.

One change to hypercorn's connection server: once the peer has closed (or reading
fails), it stops its keep-alive timer. Hypercorn's waits the timer out before the
connection ends and its socket is closed, so a client that connected and hung up
at once held a file descriptor, and a slot under the caps, for the whole header
timeout. A request still being answered keeps its connection open as before.

It uses hypercorn's per-connection server and worker context (``hypercorn.trio``
and ``hypercorn.asyncio``), which are not documented API: pyproject.toml pins the
hypercorn versions it was written against. The app needs no ASGI lifespan, so none
is run.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any

import anyio
import attrs
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets
from hypercorn.events import Updated
from hypercorn.typing import AppWrapper

from .._aio import backend_name
from .addresses import address_group, address_share

__all__ = [
    "ConnectionSlot",
    "OpenConnections",
    "connections_budget",
    "open_files_limit",
    "raise_open_files_limit",
    "serve",
]

log = logging.getLogger("fedpeer.peer")

_CLOSE_S = 2.0  # how long closing a connection may wait for the peer (asyncio TLS)
_EVICT_LOOK = 64  # groups an eviction looks at, at most (each accept at the cap)


@attrs.define(eq=False)
class ConnectionSlot:
    """One accepted connection as :class:`OpenConnections` counts it.

    ``group`` is what its per-address cap counts (an IPv6 caller's /64), ``share``
    what eviction weighs (an IPv6 caller's /48), ``close`` closes the connection
    (called when it is evicted), ``opened`` its accept time on the counter's
    clock. ``busy``: a request is in progress (from its head to the end of its
    response); ``spoke``: it has had one.
    """

    group: str
    share: str
    close: Callable[[], None]
    opened: float
    busy: bool = False
    spoke: bool = False
    evicted: bool = False


def _never_closed() -> None:
    """The ``close`` of a slot whose owner cannot be closed from outside."""


@attrs.define
class OpenConnections:
    """Open connections per address group and in all, with their caps (sans-I/O).

    :meth:`enter` when a connection is accepted (None: close it at once),
    :meth:`leave` when it closes, and :meth:`set_busy` as a request starts (its
    head is in) and as the connection is idle again (the response is out).

    Past a group's cap, a new connection from that group is refused. At the total
    cap a newcomer is not simply refused; the node first closes, in this order:

    1. the oldest *idle* connection (no request in progress: it never finished a
       head, or waits between keep-alive requests) of the share holding the most
       connections, when that share holds at least two more than the newcomer's
       (a share is an address, or an IPv6 /48: a flood from one site's many /64s
       is one share), so shares even out (max-min fair);
    2. else the oldest connection that has been open ``stale_after_s`` without
       ever sending a complete request (an honest client sends its request at
       once; a flood of silent connections from many addresses does not).

    Only when neither exists is the newcomer refused. A connection with a request
    in progress (a longpoll, an upload) is never closed for a newcomer.
    ``refused`` counts connections closed by a cap, ``evicted`` those closed for
    a newcomer.

    A group over its cap (or the total cap) is logged once until it falls back
    under half of it, so a flood does not flood the log too. :meth:`wait_until`
    waits for the counts to reach a state (tests, monitoring).
    """

    per_group: int
    total_cap: int
    stale_after_s: float = 1.0
    clock: Callable[[], float] = time.monotonic
    by_group: dict[str, int] = attrs.field(factory=dict)
    total: int = 0
    refused: int = 0
    evicted: int = 0
    _by_share: dict[str, int] = attrs.field(factory=dict)
    # shares by how many connections they hold (insertion order: who got there first)
    _levels: dict[int, dict[str, None]] = attrs.field(factory=dict)
    _top: int = 0  # the largest count held by a share (0: none)
    # the idle connections of each share, oldest idle first
    _idle: dict[str, dict[ConnectionSlot, None]] = attrs.field(factory=dict)
    # connections that never had a request, oldest first
    _silent: dict[ConnectionSlot, None] = attrs.field(factory=dict)
    _warned: set[str] = attrs.field(factory=set)  # groups at their cap, logged
    _warned_total: bool = False
    _changed: anyio.Event | None = None

    async def wait_until(self, predicate: Callable[[OpenConnections], bool]) -> None:
        """Return once ``predicate(self)`` holds, checked after every change
        (no polling). Cancellable; bound it with ``anyio.fail_after``."""
        while not predicate(self):
            if self._changed is None:
                self._changed = anyio.Event()
            await self._changed.wait()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def enter(
        self, group: str, close: Callable[[], None] = _never_closed, share: str | None = None
    ) -> ConnectionSlot | None:
        """Count a new connection from ``group`` (weighed for eviction as ``share``,
        default ``group``): its slot, or None when a cap refuses it. ``close``
        must close the connection at once (eviction)."""
        share = group if share is None else share
        held = self.by_group.get(group, 0)
        if held >= self.per_group:
            if group not in self._warned:  # a group in by_group: the set stays bounded
                self._warned.add(group)
                log.warning(
                    "closing new connections from %s at once: %d open (at most %d)",
                    group,
                    held,
                    self.per_group,
                )
            self._refuse()
            return None
        if self.total >= self.total_cap and not self._evict_for(self._by_share.get(share, 0)):
            self._refuse()
            return None
        slot = ConnectionSlot(group, share, close, self.clock())
        # read again: the connection evicted for this one may be of the same group
        self.by_group[group] = self.by_group.get(group, 0) + 1
        self._count(share, +1)
        self.total += 1
        self._idle.setdefault(share, {})[slot] = None
        self._silent[slot] = None
        self._notify()
        return slot

    def leave(self, slot: ConnectionSlot) -> None:
        """Count ``slot``'s connection closed (a no-op once it was evicted)."""
        if slot.evicted:
            return
        self._remove(slot)
        self._notify()

    def set_busy(self, slot: ConnectionSlot, busy: bool) -> None:
        """``slot``'s connection has a request in progress (``busy``), or is idle
        again: then it is the most recently idle of its share."""
        if slot.evicted or busy == slot.busy:
            return
        slot.busy = busy
        if busy:
            slot.spoke = True
            self._silent.pop(slot, None)
            idle = self._idle[slot.share]
            del idle[slot]
            if not idle:
                del self._idle[slot.share]
        else:
            self._idle.setdefault(slot.share, {})[slot] = None
        self._notify()

    def _refuse(self) -> None:
        self.refused += 1
        self._notify()

    def _count(self, share: str, step: int) -> None:
        """Move ``share`` one level up (``step`` 1) or down (-1)."""
        levels = self._levels
        old = self._by_share.get(share, 0)
        new = old + step
        if old:
            at_old = levels[old]
            del at_old[share]
            if not at_old:
                del levels[old]
        if new:
            self._by_share[share] = new
            levels.setdefault(new, {})[share] = None
            self._top = max(self._top, new)
        else:
            del self._by_share[share]
        while self._top and self._top not in levels:
            self._top -= 1

    def _remove(self, slot: ConnectionSlot) -> None:
        group = slot.group
        if not slot.busy:
            idle = self._idle[slot.share]
            del idle[slot]
            if not idle:
                del self._idle[slot.share]
        self._silent.pop(slot, None)
        left = self.by_group[group] - 1
        if left:
            self.by_group[group] = left
        else:
            del self.by_group[group]
        self._count(slot.share, -1)
        self.total -= 1
        if left * 2 < self.per_group:
            self._warned.discard(group)
        if self.total * 2 < self.total_cap:
            self._warned_total = False

    def _victim(self, held: int) -> ConnectionSlot | None:
        """The connection to close for a newcomer whose share holds ``held`` (see
        the class doc), or None. Looks at a bounded number of shares, so a flood
        cannot make each accept slow."""
        looked = 0
        level = self._top
        while level >= held + 2 and looked < _EVICT_LOOK:
            for share in self._levels.get(level, ()):
                looked += 1
                idle = self._idle.get(share)
                if idle:
                    return next(iter(idle))
                if looked >= _EVICT_LOOK:
                    break
            level -= 1
        for oldest in self._silent:  # the first only: the oldest silent connection
            if self.clock() - oldest.opened >= self.stale_after_s:
                return oldest
            break
        return None

    def _evict_for(self, held: int) -> bool:
        """At the total cap: close a connection for a newcomer whose share holds
        ``held``; False when there is none to close."""
        victim = self._victim(held)
        if not self._warned_total:
            self._warned_total = True
            log.warning(
                "%d connections open in all (at most %d): %s",
                self.total,
                self.total_cap,
                "closing idle connections of the addresses holding the most, or silent ones"
                if victim is not None
                else "closing new connections at once",
            )
        if victim is None:
            return False
        self._remove(victim)
        victim.evicted = True
        self.evicted += 1
        with contextlib.suppress(OSError):
            victim.close()
        return True


class _Tracked:
    """Mixed into hypercorn's connection server (trio's or asyncio's).

    Once reading ends (the peer closed, or reading failed), it stops the
    keep-alive timer, so the connection ends with the work in flight (module
    docstring). And it tells :class:`OpenConnections` (after :meth:`track`) when
    the connection is busy, from hypercorn's own ``Updated`` events: over HTTP/1.1
    ``idle=False`` as a request head is in (before the app is even started) and
    ``idle=True`` once its response is done and the connection ready for the
    next; over HTTP/2 as its first stream opens and its last one closes.
    """

    idle_task: Any
    _slot: ConnectionSlot | None = None
    _conns: OpenConnections | None = None

    def track(self, conns: OpenConnections, slot: ConnectionSlot) -> None:
        self._conns = conns
        self._slot = slot

    async def protocol_send(self, event: Any) -> None:
        if isinstance(event, Updated) and self._conns is not None and self._slot is not None:
            self._conns.set_busy(self._slot, not event.idle)
        await super().protocol_send(event)  # type: ignore[misc]

    async def _read_data(self) -> None:
        await super()._read_data()  # type: ignore[misc]
        await self.idle_task.stop()


def _abort(transport: asyncio.WriteTransport) -> None:
    """``transport.abort()``, which must be a no-op once the connection is gone.

    It is not, in asyncio (3.11): a transport closed with data still buffered
    calls connection_lost once that data is out without counting the loss and
    drops its loop (an SSL transport, its protocol), so a later ``abort()``
    raised AttributeError (found by the eviction test of a slow reader)."""
    with contextlib.suppress(AttributeError):
        transport.abort()


def _abort_when_sent(transport: asyncio.WriteTransport) -> None:
    """Close an asyncio ``transport`` now when nothing waits to go out, else once
    it has (the end of a response), aborting it ``_CLOSE_S`` later at most."""
    if transport.get_write_buffer_size() == 0:
        transport.abort()
    else:
        transport.close()
        asyncio.get_running_loop().call_later(_CLOSE_S, _abort, transport)


def open_files_limit() -> int | None:
    """This process's soft limit on open file descriptors (None: unknown or none)."""
    try:
        import resource
    except ImportError:  # not a Unix
        return None
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def connections_budget(requested: int, files_limit: int | None) -> int:
    """The total connection cap the server uses: ``requested``, but at most three
    quarters of the process's file descriptor limit (at least 16), so connections
    can never use up the descriptors the node needs for its store, its own
    requests and its listening sockets. (A soft limit of 1024, common on Linux
    desktops, gives 768; macOS's 256 gives 192.)"""
    if files_limit is None:
        return requested
    return min(requested, max(16, files_limit * 3 // 4))


def raise_open_files_limit(target: int = 65_536) -> tuple[int, int] | None:
    """Raise this process's soft limit on open file descriptors to ``target`` (or
    the hard limit, if lower), as ``fedpeer run`` does at start; never lowers it.
    Returns ``(before, after)``, or None where there is no such limit. For a
    process of its own: a library embedding a node leaves this to its program."""
    try:
        import resource
    except ImportError:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return (soft, soft)
    want = target if hard == resource.RLIM_INFINITY else min(target, hard)
    # macOS refuses more than its per-process maximum (kern.maxfilesperproc,
    # often 10240) even when the hard limit says "unlimited": step down.
    steps = {want, min(want, 10_240), *(want >> k for k in range(1, 8))}
    for attempt in sorted(steps, reverse=True):
        if attempt <= soft:
            break
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (attempt, hard))
        except (ValueError, OSError):
            continue
        return (soft, attempt)
    return (soft, soft)


def _groups_of(peername: object) -> tuple[str, str]:
    """The address group and the share (:class:`OpenConnections`) of a peer."""
    if isinstance(peername, tuple) and peername and isinstance(peername[0], str):
        return address_group(peername[0]), address_share(peername[0])
    return "unknown", "unknown"


async def serve(
    app: AppWrapper,
    hconf: HypercornConfig,
    sockets: Sockets,
    shutdown: anyio.Event,
    conns: OpenConnections,
) -> None:
    """Serve ``app`` (a hypercorn-wrapped ASGI app) on ``sockets`` (listening) until
    ``shutdown`` is set, then drain for up to ``hconf.graceful_timeout``. Trio or
    asyncio, whichever is running. No QUIC (the node binds none)."""
    serving = _Serving(app, hconf, sockets, shutdown, conns)
    if backend_name() == "trio":
        await serving.on_trio()
    else:
        await serving.on_asyncio()


@attrs.frozen
class _Serving:
    """What :func:`serve` runs, on each backend."""

    app: AppWrapper
    hconf: HypercornConfig
    sockets: Sockets
    shutdown: anyio.Event
    conns: OpenConnections

    async def on_trio(self) -> None:
        import trio
        from hypercorn.trio.tcp_server import TCPServer as HypercornTCPServer
        from hypercorn.trio.worker_context import WorkerContext

        class TCPServer(_Tracked, HypercornTCPServer):
            pass

        context = WorkerContext(None)
        listeners: list[Any] = []
        if self.sockets.secure_sockets:
            ssl_context = self.hconf.create_ssl_context()
            assert ssl_context is not None  # secure sockets come from a config with TLS
            listeners += [
                trio.SSLListener(
                    trio.SocketListener(trio.socket.from_stdlib_socket(sock)),
                    ssl_context,
                    https_compatible=True,
                )
                for sock in self.sockets.secure_sockets
            ]
        listeners += [
            trio.SocketListener(trio.socket.from_stdlib_socket(sock))
            for sock in self.sockets.insecure_sockets
        ]

        async def connection(stream: Any) -> None:
            raw = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
            try:
                group, share = _groups_of(raw.socket.getpeername())
            except OSError:  # gone already
                await trio.aclose_forcefully(stream)
                return
            # Evicted: the socket closes at once (what was sent still goes out),
            # and its reads end with ClosedResourceError, which hypercorn's server
            # takes as the end.
            slot = self.conns.enter(group, raw.socket.close, share)
            if slot is None:
                await trio.aclose_forcefully(stream)
                return
            try:
                server = TCPServer(self.app, self.hconf, context, {}, stream)
                server.track(self.conns, slot)
                await server
            except trio.ClosedResourceError:
                # evicted during its TLS handshake, which hypercorn lets through
                if not slot.evicted:
                    raise
            finally:
                self.conns.leave(slot)

        async with trio.open_nursery() as connections:
            try:
                async with trio.open_nursery() as accepting:
                    accepting.start_soon(
                        functools.partial(
                            trio.serve_listeners, connection, listeners, handler_nursery=connections
                        )
                    )
                    try:
                        await self.shutdown.wait()
                    finally:
                        accepting.cancel_scope.cancel()
            finally:
                # The accept loop has ended: close the listening sockets now (no more
                # handshakes completed into the backlog), then drain the connections.
                for listener in listeners:
                    await trio.aclose_forcefully(listener)
                await context.terminated.set()  # idle keep-alive connections close
                connections.cancel_scope.deadline = (
                    trio.current_time() + self.hconf.graceful_timeout
                )

    async def on_asyncio(self) -> None:
        from hypercorn.asyncio.tcp_server import TCPServer as HypercornTCPServer
        from hypercorn.asyncio.worker_context import WorkerContext
        from hypercorn.events import Closed

        class TCPServer(_Tracked, HypercornTCPServer):
            # Closing a TLS stream waits for the peer's close_notify (30 s by default)
            # and then raises TimeoutError, which hypercorn does not catch: a client
            # silent after its handshake held its slot 30 s past the header timeout
            # and logged a traceback. So the idle close aborts (nothing is in flight
            # on an idle connection), and the final close waits _CLOSE_S at most.

            async def _initiate_server_close(self) -> None:
                await self.protocol.handle(Closed())
                _abort_when_sent(self.writer.transport)  # a response's end may be on its way

            async def _close(self) -> None:
                try:
                    await asyncio.wait_for(super()._close(), _CLOSE_S)
                except (TimeoutError, OSError):
                    pass
                finally:
                    _abort(self.writer.transport)

        loop = asyncio.get_running_loop()
        context = WorkerContext(None)
        tasks: set[asyncio.Task[None]] = set()

        async def connection(
            reader: asyncio.StreamReader,
            writer: asyncio.StreamWriter,
            *,
            tls: ssl.SSLContext | None,
        ) -> None:
            if self.shutdown.is_set():  # accepted just before the close: not served
                writer.transport.abort()
                return
            group, share = _groups_of(writer.get_extra_info("peername"))
            task = asyncio.current_task()
            assert task is not None
            handshaking = tls is not None

            def close() -> None:  # evicted
                if handshaking:  # start_tls ends (CancelledError) and closes its transport
                    task.cancel()
                else:
                    _abort_when_sent(writer.transport)

            slot = self.conns.enter(group, close, share)
            if slot is None:
                writer.transport.abort()
                return
            try:
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                if tls is not None:
                    # TLS after the count (asyncio's own ssl= would handshake first,
                    # leaving connections that trickle their handshake uncounted)
                    try:
                        await writer.start_tls(
                            tls, ssl_handshake_timeout=self.hconf.ssl_handshake_timeout
                        )
                    except OSError:  # a failed, aborted or timed-out handshake
                        writer.transport.abort()
                        return
                    except asyncio.CancelledError:
                        if not slot.evicted:
                            raise
                        task.uncancel()  # ours: the connection just ends
                        writer.transport.abort()
                        return
                    finally:
                        handshaking = False
                server = TCPServer(self.app, loop, self.hconf, context, {}, reader, writer)
                server.track(self.conns, slot)
                await server
            finally:
                self.conns.leave(slot)

        servers: list[asyncio.Server] = []
        listening = [
            (sock, self.hconf.create_ssl_context()) for sock in self.sockets.secure_sockets
        ]
        listening += [(sock, None) for sock in self.sockets.insecure_sockets]
        try:
            for sock, tls in listening:
                handler = functools.partial(connection, tls=tls)
                servers.append(
                    await asyncio.start_server(handler, sock=sock, backlog=self.hconf.backlog)
                )
            await self.shutdown.wait()
        finally:
            await context.terminated.set()  # idle keep-alive connections close
            for server in servers:
                server.close()
            if tasks:
                _done, pending = await asyncio.wait(set(tasks), timeout=self.hconf.graceful_timeout)
                for task in pending:
                    task.cancel()
                if pending:
                    await asyncio.wait(pending)
