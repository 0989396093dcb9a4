"""The route table and the one wrapper every route goes through.

Every route is declared once, as a :class:`RouteSpec`, with the scope it needs.
:func:`endpoint` wraps each handler with the same steps, in order: rate limit,
authenticate, check the scope, run, render errors. There is no other way to add
a route, and a test fails if a served route is missing from the table.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Literal

import anyio
import attrs
from starlette.requests import Request
from starlette.responses import Response

from ..consent.grants import ConsentView
from ..consent.scopes import ALL_SCOPES, has_scope
from ..consent.tokens import Principal
from ..errors import (
    AuthRequired,
    FedpeerError,
    InternalError,
    ScopeForbidden,
    TokenExpired,
    TokenRevoked,
)
from ..store.base import ChangeFilter
from ._http import error_response
from ._state import AppState
from .addresses import address_group

log = logging.getLogger("fedpeer.http")

Scope = Literal["public", "records:read", "records:write", "sync:read", "admin"]


@attrs.frozen
class Param:
    """A query or path parameter, for validation messages and the OpenAPI document."""

    name: str
    where: Literal["query", "path", "header"] = "query"
    schema: Mapping[str, object] = attrs.field(factory=lambda: {"type": "string"})
    required: bool = False
    description: str = ""


@attrs.define
class Ctx:
    """What a handler gets: the request, the node's state and the caller."""

    request: Request
    app: AppState
    principal: Principal | None
    bearer: str | None = None

    async def recheck(self) -> None:
        """Authenticate the request's bearer again. Raises TOKEN_REVOKED when the
        token stopped working since the request began (revoked or rotated away),
        TOKEN_EXPIRED when it expired; nothing for an anonymous caller.

        A long read calls it for every page it sends without waiting first; every
        wait goes through :meth:`wait_new`, which calls it after the wait."""
        if self.bearer is None or self.principal is None:
            return
        try:
            await self.app.tokens.authenticate(self.bearer)
        except TokenExpired:
            raise
        except AuthRequired:
            raise TokenRevoked(
                "this token was revoked while the request was open; ask the node's "
                "owner for a new one"
            ) from None

    def until_expiry(self) -> float | None:
        """Seconds until the caller's token expires (None: it never does)."""
        if self.principal is None or self.principal.expires_ms is None:
            return None
        return max(0.0, (self.principal.expires_ms - self.app.core.now_ms()) / 1000)

    async def wait_new(
        self, after_seq: int, timeout: float, interest: tuple[ChangeFilter, ...] | None
    ) -> bool:
        """The one wait of every long read (longpoll, SSE): until the store has a
        record past ``after_seq`` matching ``interest`` (what the caller may see:
        ``ConsentView.wake_filters``), the node closes, ``timeout`` is up or the
        caller's token expires, whichever comes first. Then the bearer is checked
        again (:meth:`recheck`): a token revoked (a revocation wakes every waiter)
        or expired during the wait raises its error here. Returns True when woken
        by the store (new records, or what readers may see changed)."""
        if interest is None:
            # "Any commit", spelled as a filter so that a transaction's wake_waiters()
            # (grants changed, a token was revoked) also ends the wait (a None
            # interest would wait for records only).
            interest = (ChangeFilter(),)
        expiry = self.until_expiry()
        if expiry is not None:
            timeout = min(timeout, expiry + 0.01)  # just past it
        landed = False
        with anyio.move_on_after(timeout):
            async with anyio.create_task_group() as tg:

                async def new_records() -> None:
                    nonlocal landed
                    await self.app.store.wait_for_seq(after_seq, interest)
                    landed = True
                    tg.cancel_scope.cancel()

                async def closing() -> None:
                    await self.app.closing.wait()
                    tg.cancel_scope.cancel()

                tg.start_soon(new_records)
                tg.start_soon(closing)
        await self.recheck()
        return landed

    @property
    def caller_did(self) -> str | None:
        return None if self.principal is None else self.principal.holder_did

    async def view(self, scope: str) -> ConsentView:
        """What the caller may read through ``scope``, read fresh for this request."""
        return await self.app.grants.view_for(self.principal, scope)


Handler = Callable[[Ctx], Awaitable[Response]]


@attrs.frozen
class RouteSpec:
    """One route: method, path, required scope, handler and its documentation."""

    method: str
    path: str
    scope: Scope
    handler: Handler
    summary: str
    operation_id: str
    params: tuple[Param, ...] = ()
    request_schema: Mapping[str, object] | None = None
    response_schema: Mapping[str, object] = attrs.field(factory=lambda: {"type": "object"})
    success_status: int = 200
    errors: tuple[str, ...] = ()
    cbor: bool = True
    stream: bool = False


ANONYMOUS_DEV_SCOPES = frozenset(s for s in ALL_SCOPES if s != "admin")


def _bearer(request: Request, *, public: bool = False) -> str | None:
    """The bearer token of ``request``. An ``Authorization`` header that is not a
    bearer token is AUTH_REQUIRED, except on a public route, where it is ignored
    (a junk header must not make ``/health`` answer 401)."""
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        if public:
            return None
        raise AuthRequired("use `Authorization: Bearer <token>`")
    return value.strip()


def endpoint(spec: RouteSpec, state: AppState) -> Callable[[Request], Awaitable[Response]]:
    """Wrap ``spec.handler``: rate limit, authenticate, enforce ``spec.scope``, render errors."""

    async def run(request: Request) -> Response:
        headers: dict[str, str] = {}
        client = address_group(request.client.host) if request.client else "unknown"
        try:
            principal: Principal | None = None
            bearer: str | None = None
            try:
                bearer = _bearer(request, public=spec.scope == "public")
                if bearer is not None:
                    principal = await state.tokens.authenticate(bearer)
            except AuthRequired:
                # A failed authentication is charged to the caller's address like an
                # anonymous request, so guessing tokens is rate limited too and the
                # answer carries the rate limit headers (protocol.md §6.5).
                decision = state.rate_limiter.check(f"ip:{client}", time.monotonic())
                headers = decision.headers()
                if not decision.allowed:
                    raise decision.error() from None
                raise
            # per account, not per token: rotating a token must not refill its bucket
            key = f"sa:{principal.sa_id}" if principal else f"ip:{client}"
            decision = state.rate_limiter.check(key, time.monotonic())
            headers = decision.headers()
            if not decision.allowed:
                raise decision.error()
            if principal is not None and principal.holder_did is not None:
                # Within its rate only: a flood of refused requests costs no pair scan.
                state.peer_seen(principal.holder_did, "request")
            if spec.scope != "public":
                if principal is None:
                    if spec.scope == "admin" or state.config.auth_enabled:
                        raise AuthRequired(
                            f"{spec.method} {spec.path} needs a bearer token with scope "
                            f"{spec.scope!r}; send `Authorization: Bearer <token>`"
                        )
                elif not has_scope(principal.scopes, spec.scope):
                    raise ScopeForbidden(
                        f"{spec.method} {spec.path} needs scope {spec.scope!r}; "
                        f"this token has {sorted(principal.scopes)}"
                    )
            response = await spec.handler(Ctx(request, state, principal, bearer))
        except FedpeerError as err:
            return error_response(err, headers)
        except Exception:
            log.exception("unhandled error in %s %s", spec.method, spec.path)
            return error_response(InternalError("unexpected error; see the node log"), headers)
        response.headers.update(headers)
        return response

    return run
