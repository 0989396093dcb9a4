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
``max_open_conns`` in all, the connection is closed at once.

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
    "OpenConnections",
    "connections_budget",
    "open_files_limit",
    "raise_open_files_limit",
    "serve",
]

log = logging.getLogger("fedpeer.peer")

_CLOSE_S = 2.0  # how long closing a connection may wait for the peer (asyncio TLS)


@attrs.define
class OpenConnections:
    """Open connections per address group and in all, with their caps (sans-I/O).

    :meth:`enter` when a connection is accepted (False: close it at once),
    :meth:`leave` when it closes; ``refused`` counts the connections closed by a
    cap. A group over its cap is logged once until it falls back under half of
    it, so a flood does not flood the log too. :meth:`wait_until` waits for the
    counts to reach a state (tests, monitoring).
    """

    per_group: int
    total_cap: int
    by_group: dict[str, int] = attrs.field(factory=dict)
    total: int = 0
    refused: int = 0
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

    def enter(self, group: str) -> bool:
        """Count a new connection from ``group``; False when a cap refuses it."""
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
            return self._refuse()
        if self.total >= self.total_cap:
            if not self._warned_total:
                self._warned_total = True
                log.warning(
                    "closing new connections at once: %d open in all (at most %d)",
                    self.total,
                    self.total_cap,
                )
            return self._refuse()
        self.by_group[group] = held + 1
        self.total += 1
        self._notify()
        return True

    def leave(self, group: str) -> None:
        """Count a connection from ``group`` closed."""
        left = self.by_group[group] - 1
        if left:
            self.by_group[group] = left
        else:
            del self.by_group[group]
        self.total -= 1
        if left * 2 < self.per_group:
            self._warned.discard(group)
        if self.total * 2 < self.total_cap:
            self._warned_total = False
        self._notify()

    def _refuse(self) -> bool:
        self.refused += 1
        self._notify()
        return False


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
            if not self.conns.enter(group):
                await trio.aclose_forcefully(stream)
                return
            try:
                await TCPServer(self.app, self.hconf, context, {}, stream)
            finally:
                self.conns.leave(group)

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
            if not self.conns.enter(group):
                writer.transport.abort()
                return
            try:
                task = asyncio.current_task()
                assert task is not None
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
                await TCPServer(self.app, loop, self.hconf, context, {}, reader, writer)
            finally:
                self.conns.leave(group)

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
