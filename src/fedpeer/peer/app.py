"""The node's ASGI application (Starlette).

Routes are declared in :mod:`fedpeer.peer._routes` as one table; this module
turns the table into a Starlette app, renders unknown routes and methods as
fedpeer errors, and serves the OpenAPI document generated from the same table.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import FedpeerError, MethodNotAllowed, NotFound
from ._http import error_response
from ._routes import ROUTES
from ._routing import RouteSpec, endpoint
from ._state import AppState

__all__ = ["AppState", "build_app"]


def build_app(state: AppState, routes: list[RouteSpec] | None = None) -> Starlette:
    """A Starlette app serving ``routes`` (default: every fedpeer route)."""
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

    app = Starlette(routes=starlette_routes, exception_handlers={HTTPException: http_error})
    app.state.fedpeer = state
    app.state.route_table = routes
    return app
