"""The node's ASGI application (Starlette).

Routes are declared in :mod:`fedpeer.peer._routes` as one table; this module
turns the table into a Starlette app, renders unknown routes and methods as
fedpeer errors, and serves the OpenAPI document generated from the same table.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import FedpeerError, MethodNotAllowed, NotFound, RateLimited
from ._http import error_response
from ._routes import ROUTES
from ._routing import RouteSpec, endpoint
from ._state import AppState
from .addresses import address_group

__all__ = ["AppState", "ConnectionGuard", "build_app"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ConnectionGuard:
    """ASGI middleware: at most ``max_per_ip`` requests in flight per source address.

    Over HTTP/1.1 a connection carries one request at a time, so this caps the
    busy connections one address holds (a slow body, a longpoll, a stream). One
    more is answered at once with RATE_LIMITED (429, ``Retry-After: 1``) without
    reading its body, and the server then closes that connection, so 450
    dripping connections from one address cost 64 slots, not the node (issue
    10). An IPv6 caller counts by its /64
    (:func:`~fedpeer.peer.addresses.address_group`), since it can send from any
    address in it. Idle connections and half-sent request heads never reach the
    app: the server's header timeout closes those. Loopback callers are not exempt.

    It is part of every app :func:`build_app` makes (the cap is the node's
    ``max_conns_per_ip``), so a node embedded in another ASGI server is bounded
    the same as one :func:`~fedpeer.peer.open_node` serves.
    """

    def __init__(self, app: ASGIApp, max_per_ip: int) -> None:
        self.app = app
        self.max_per_ip = max_per_ip
        self.active: dict[str, int] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        ip = address_group(str(client[0])) if client else "unknown"
        if self.active.get(ip, 0) >= self.max_per_ip:
            await self._refuse(send)
            return
        self.active[ip] = self.active.get(ip, 0) + 1
        try:
            await self.app(scope, receive, send)
        finally:
            left = self.active[ip] - 1
            if left:
                self.active[ip] = left
            else:
                del self.active[ip]

    async def _refuse(self, send: Send) -> None:
        err = RateLimited(
            f"too many requests in flight from your address (at most {self.max_per_ip} "
            "at once); finish or close some and retry"
        )
        body = json.dumps(err.to_dict()).encode()
        await send(
            {
                "type": "http.response.start",
                "status": err.http_status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", b"1"),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def build_app(state: AppState, routes: list[RouteSpec] | None = None) -> Starlette:
    """A Starlette app serving ``routes`` (default: every fedpeer route), each
    source address holding at most ``max_conns_per_ip`` requests in flight
    (:class:`ConnectionGuard`)."""
    if routes is None:
        routes = ROUTES
    starlette_routes = [
        Route(
            spec.path,
            endpoint(spec, state),
            methods=[spec.method],
            name=spec.operation_id,
        )
        for spec in routes
    ]

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        err: FedpeerError
        if exc.status_code == 405:
            err = MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}")
        elif exc.status_code == 404:
            err = NotFound(f"no route {request.url.path}; see /v1/openapi.json")
        else:
            err = FedpeerError(str(exc.detail))
            err.http_status = exc.status_code  # type: ignore[misc]
        return error_response(err)

    app = Starlette(
        routes=starlette_routes,
        middleware=[Middleware(ConnectionGuard, max_per_ip=state.config.max_conns_per_ip)],
        exception_handlers={HTTPException: http_error},
    )
    app.state.fedpeer = state
    app.state.route_table = routes
    return app
