"""The HTTP transport every client of a node uses (PeerClient, AdminClient).

One place builds the httpx client that talks to other nodes
(:func:`new_http_client`: timeouts, connection pool; TLS pinning belongs here),
one place sends a request and maps the answer (:class:`HttpTransport`): an
error answer becomes the server's :class:`~fedpeer.errors.FedpeerError`
subclass (:func:`raise_for_error`), a transport failure ``PeerUnreachable``
(its ``__cause__`` is the httpx error), bodies are DAG-CBOR or DAG-JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Self

import httpx

from ..errors import PeerError, PeerUnreachable, RateLimited, error_from_code
from ..identity.canonical import dagcbor_decode, dagcbor_encode, dagjson_decode

__all__ = ["CBOR", "JSON", "HttpTransport", "new_http_client", "raise_for_error"]

CBOR = "application/cbor"
JSON = "application/json"


def new_http_client(*, timeout: float = 30.0, connect_timeout: float = 10.0) -> httpx.AsyncClient:
    """A client for talking to other nodes: ``timeout`` per request (``connect_timeout``
    to connect), a pool of up to 100 connections (20 kept alive). The caller closes it."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout, connect=min(connect_timeout, timeout)),
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
    )


def raise_for_error(response: httpx.Response) -> None:
    """Turn an error response into the server's FedpeerError (PeerError if unreadable)."""
    if response.status_code < 400:
        return
    code, message = "", ""
    try:
        body = response.json()
        code = str(body["error"]["code"])
        message = str(body["error"]["message"])
    except Exception:
        raise PeerError(
            f"peer answered HTTP {response.status_code} without a fedpeer error body"
        ) from None
    err = error_from_code(code, message, response.status_code)
    if isinstance(err, RateLimited):
        try:
            err.retry_after = float(response.headers.get("retry-after", "1"))
        except ValueError:
            err.retry_after = 1.0
    raise err


class HttpTransport:
    """Requests to one node at ``base_url``, with ``token`` as the bearer.

    Shares ``client`` when given (the caller closes it), else owns one from
    :func:`new_http_client` (closed by :meth:`aclose` or ``async with``).
    Cancellable. :class:`~fedpeer.peer.PeerClient` and
    :class:`~fedpeer.peer.AdminClient` are built on it.
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        client: httpx.AsyncClient | None = None,
        timeout: float = 40.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.headers: dict[str, str] = {"Authorization": f"Bearer {token}"} if token else {}
        self.owned = client is None
        self.client = client or new_http_client(timeout=timeout)
        self.timeout = timeout

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections (only when this transport created the client)."""
        if self.owned:
            await self.client.aclose()

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        json_body: object = None,
        cbor_body: object = None,
        accept: str = CBOR,
        timeout: float | None = None,
    ) -> httpx.Response:
        """Send one request; raise the server's error for a 4xx/5xx answer,
        ``PeerUnreachable`` when the node cannot be reached."""
        headers = dict(self.headers)
        headers["Accept"] = accept
        content: bytes | None = None
        if cbor_body is not None:
            content = dagcbor_encode(cbor_body)
            headers["Content-Type"] = CBOR
        kwargs: dict[str, object] = {}
        if timeout is not None:
            kwargs["timeout"] = timeout
        try:
            response = await self.client.request(
                method,
                self.base_url + path,
                params={k: str(v) for k, v in (params or {}).items()},
                headers=headers,
                content=content,
                json=json_body,
                **kwargs,  # type: ignore[arg-type]
            )
        except httpx.TransportError as exc:
            raise PeerUnreachable(unreachable_message(self.base_url, exc)) from exc
        raise_for_error(response)
        return response

    @staticmethod
    def decode(response: httpx.Response) -> object:
        """The DAG-CBOR or DAG-JSON body, by its content type."""
        ctype = response.headers.get("content-type", "").split(";")[0].strip()
        if ctype == CBOR:
            return dagcbor_decode(response.content)
        return dagjson_decode(response.content)


def unreachable_message(url: str, exc: httpx.TransportError) -> str:
    """Why ``url`` could not be reached, in words, with what to check next."""
    if isinstance(exc, httpx.TimeoutException):
        why = "it did not answer in time"
    elif isinstance(exc, httpx.ConnectError):
        why = "the connection failed (nothing listens there, or no route to it)"
    elif isinstance(exc, httpx.RemoteProtocolError):
        why = "it closed the connection without an answer"
    else:
        why = f"the request failed ({type(exc).__name__})"
    return (
        f"{url} is unreachable: {why}. Check the address, that the node runs there "
        "(`fedpeer run --host 0.0.0.0` on a LAN) and that this device is on the same "
        f"network; `fedpeer doctor --peer {url}` tests the way there"
    )
