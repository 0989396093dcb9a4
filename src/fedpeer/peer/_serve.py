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
an idle connection of the address group holding the most is closed first, when
that group holds at least two more than the newcomer's (max-min fair shares, see
:class:`OpenConnections`), so a flood from many addresses cannot shut out callers
with few connections.

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
from collections.abc import Callable
from typing import Any

import anyio
import attrs
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets
from hypercorn.typing import AppWrapper

from .._aio import backend_name
from .addresses import address_group

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

    ``close`` closes the connection's socket at once (called when the connection
    is evicted); ``busy`` is the number of requests it has in the app.
    """

    group: str
    close: Callable[[], None]
    busy: int = 0
    evicted: bool = False


def _never_closed() -> None:
    """The ``close`` of a slot whose owner cannot be closed from outside."""


@attrs.define
class OpenConnections:
    """Open connections per address group and in all, with their caps (sans-I/O).

    :meth:`enter` when a connection is accepted (None: close it at once),
    :meth:`leave` when it closes, and :meth:`request_started` /
    :meth:`request_done` around each request the connection carries.

    Past a group's cap, a new connection from that group is refused. At the total
    cap, a newcomer is not simply refused: the node closes the oldest *idle*
    connection (no request in the app: never finished a head, or waiting between
    keep-alive requests) of the group holding the most connections, as long as
    that group holds at least two more than the newcomer's; only when there is
    none is the newcomer refused. So a flood from many addresses that fills the
    node takes slots from itself, not from callers with few connections, and the
    shares tend to even (max-min fair). A connection with a request in flight is
    never evicted. ``refused`` counts connections closed by a cap, ``evicted``
    those closed for a newcomer.

    A group over its cap (or the total cap, or the first eviction) is logged once
    until it falls back under half of it, so a flood does not flood the log too.
    :meth:`wait_until` waits for the counts to reach a state (tests, monitoring).
    """

    per_group: int
    total_cap: int
    by_group: dict[str, int] = attrs.field(factory=dict)
    total: int = 0
    refused: int = 0
    evicted: int = 0
    # groups by how many connections they hold (insertion order: who got there first)
    _levels: dict[int, dict[str, None]] = attrs.field(factory=dict)
    _top: int = 0  # the largest count held by a group (0: none)
    # the idle connections of each group, oldest idle first
    _idle: dict[str, dict[ConnectionSlot, None]] = attrs.field(factory=dict)
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

    def enter(self, group: str, close: Callable[[], None] = _never_closed) -> ConnectionSlot | None:
        """Count a new connection from ``group``: its slot, or None when a cap
        refuses it. ``close`` must close the connection at once (eviction)."""
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
        if self.total >= self.total_cap and not self._evict_for(held):
            self._refuse()
            return None
        slot = ConnectionSlot(group, close)
        self._count(group, held, held + 1)
        self.total += 1
        self._idle.setdefault(group, {})[slot] = None
        self._notify()
        return slot

    def leave(self, slot: ConnectionSlot) -> None:
        """Count ``slot``'s connection closed (a no-op once it was evicted)."""
        if slot.evicted:
            return
        self._remove(slot)
        self._notify()

    def request_started(self, slot: ConnectionSlot) -> None:
        """``slot``'s connection has a request in the app: it is not idle."""
        if slot.busy == 0 and not slot.evicted:
            self._idle_remove(slot)
        slot.busy += 1
        self._notify()

    def request_done(self, slot: ConnectionSlot) -> None:
        """A request of ``slot``'s connection left the app: idle again (the most
        recently idle of its group) once it has none."""
        slot.busy -= 1
        if slot.busy == 0 and not slot.evicted:
            self._idle.setdefault(slot.group, {})[slot] = None
        self._notify()

    def _refuse(self) -> None:
        self.refused += 1
        self._notify()

    def _count(self, group: str, old: int, new: int) -> None:
        """Move ``group`` from holding ``old`` connections to ``new`` (one apart)."""
        levels = self._levels
        if old:
            at_old = levels[old]
            del at_old[group]
            if not at_old:
                del levels[old]
        if new:
            self.by_group[group] = new
            levels.setdefault(new, {})[group] = None
            self._top = max(self._top, new)
        else:
            del self.by_group[group]
        while self._top and self._top not in levels:
            self._top -= 1

    def _idle_remove(self, slot: ConnectionSlot) -> None:
        idle = self._idle.get(slot.group)
        if idle is not None and slot in idle:
            del idle[slot]
            if not idle:
                del self._idle[slot.group]

    def _remove(self, slot: ConnectionSlot) -> None:
        group = slot.group
        self._idle_remove(slot)
        left = self.by_group[group] - 1
        self._count(group, left + 1, left)
        self.total -= 1
        if left * 2 < self.per_group:
            self._warned.discard(group)
        if self.total * 2 < self.total_cap:
            self._warned_total = False

    def _evict_for(self, held: int) -> bool:
        """At the total cap: close the oldest idle connection of the largest group
        holding at least ``held + 2`` (the newcomer's group holds ``held``).
        False when there is none. Looks at no more than a bounded number of
        groups, so a flood cannot make each accept slow."""
        looked = 0
        level = self._top
        victim: ConnectionSlot | None = None
        while victim is None and level >= held + 2 and looked < _EVICT_LOOK:
            for group in self._levels.get(level, ()):
                looked += 1
                idle = self._idle.get(group)
                if idle:
                    victim = next(iter(idle))
                    break
                if looked >= _EVICT_LOOK:
                    break
            level -= 1
        if not self._warned_total:
            self._warned_total = True
            log.warning(
                "%d connections open in all (at most %d): %s",
                self.total,
                self.total_cap,
                "closing idle connections of the addresses holding the most"
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


class _EndsWhenPeerGone:
    """Mixed into hypercorn's connection server (trio's or asyncio's): once reading
    ends (the peer closed, or reading failed), stop the keep-alive timer, so the
    connection ends with the work in flight (module docstring)."""

    idle_task: Any

    async def _read_data(self) -> None:
        await super()._read_data()  # type: ignore[misc]
        await self.idle_task.stop()


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


@attrs.frozen
class _Counted:
    """The app as one connection's requests reach it: each request marks the
    connection busy while in the app (a busy connection is never evicted)."""

    app: AppWrapper
    conns: OpenConnections
    slot: ConnectionSlot

    async def __call__(
        self,
        scope: Any,
        receive: Any,
        send: Any,
        sync_spawn: Callable[..., Any],
        call_soon: Callable[..., Any],
    ) -> None:
        self.conns.request_started(self.slot)
        try:
            await self.app(scope, receive, send, sync_spawn, call_soon)
        finally:
            self.conns.request_done(self.slot)


def _group_of(peername: object) -> str:
    if isinstance(peername, tuple) and peername and isinstance(peername[0], str):
        return address_group(peername[0])
    return "unknown"


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

        class TCPServer(_EndsWhenPeerGone, HypercornTCPServer):
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
                group = _group_of(raw.socket.getpeername())
            except OSError:  # gone already
                await trio.aclose_forcefully(stream)
                return
            # Evicted: the socket closes at once, and its reads end with
            # ClosedResourceError, which hypercorn's server takes as the end.
            slot = self.conns.enter(group, raw.socket.close)
            if slot is None:
                await trio.aclose_forcefully(stream)
                return
            try:
                app = _Counted(self.app, self.conns, slot)
                await TCPServer(app, self.hconf, context, {}, stream)
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

        class TCPServer(_EndsWhenPeerGone, HypercornTCPServer):
            # Closing a TLS stream waits for the peer's close_notify (30 s by default)
            # and then raises TimeoutError, which hypercorn does not catch: a client
            # silent after its handshake held its slot 30 s past the header timeout
            # and logged a traceback. So the idle close aborts (nothing is in flight
            # on an idle connection), and the final close waits _CLOSE_S at most.

            async def _initiate_server_close(self) -> None:
                await self.protocol.handle(Closed())
                transport = self.writer.transport
                if transport.get_write_buffer_size() == 0:
                    transport.abort()
                else:  # the end of a response may still be on its way out
                    self.writer.close()
                    loop.call_later(_CLOSE_S, transport.abort)

            async def _close(self) -> None:
                try:
                    await asyncio.wait_for(super()._close(), _CLOSE_S)
                except (TimeoutError, OSError):
                    pass
                finally:
                    self.writer.transport.abort()  # a no-op once the transport is closed

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
            group = _group_of(writer.get_extra_info("peername"))
            task = asyncio.current_task()
            assert task is not None
            handshaking = tls is not None

            def close() -> None:  # evicted
                if handshaking:  # start_tls ends (CancelledError) and closes its transport
                    task.cancel()
                else:
                    writer.transport.abort()

            slot = self.conns.enter(group, close)
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
                app = _Counted(self.app, self.conns, slot)
                await TCPServer(app, loop, self.hconf, context, {}, reader, writer)
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
