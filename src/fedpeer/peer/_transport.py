"""The HTTP transport every client of a node uses (PeerClient, AdminClient).

One place builds the httpx client that talks to other nodes
(:func:`new_http_client`: timeouts, connection pool; TLS pinning belongs here),
one place sends a request and maps the answer (:class:`HttpTransport`): an
error answer becomes the server's :class:`~fedpeer.errors.FedpeerError`
subclass (:func:`raise_for_error`), a transport failure ``PeerUnreachable``
(its ``__cause__`` is the httpx error), bodies are DAG-CBOR or DAG-JSON.

Every answer is read *bounded* (issue 10, protocol.md §9.6): the body is
streamed and refused past a byte cap (``PAGE_TOO_LARGE``), the whole request
(connect, headers, body) runs under one deadline (``PEER_TOO_SLOW``; httpx's own
timeouts are per read, so a peer dripping a byte now and then would never trip
them), a redirect is refused (``REDIRECT_REFUSED``; never followed) and a
compressed answer is refused (``identity`` is asked for, so a small body cannot
inflate past the cap).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Self

import anyio
import httpx

from ..errors import (
    PageTooLarge,
    PeerError,
    PeerInvalid,
    PeerTooSlow,
    PeerUnreachable,
    RateLimited,
    RedirectRefused,
    error_from_code,
)
from ..identity.canonical import dagcbor_decode, dagcbor_encode, dagjson_decode

__all__ = [
    "CBOR",
    "DEFAULT_MAX_RESPONSE_BYTES",
    "JSON",
    "HttpTransport",
    "new_http_client",
    "raise_for_error",
]

CBOR = "application/cbor"
JSON = "application/json"

DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024
"""The largest answer a transport reads unless a request names a smaller cap."""


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
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers: dict[str, str] = {"Authorization": f"Bearer {token}"} if token else {}
        self.owned = client is None
        self.client = client or new_http_client(timeout=timeout)
        self.timeout = timeout
        self.max_response_bytes = max_response_bytes

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
        max_bytes: int | None = None,
        deadline: float | None = None,
    ) -> httpx.Response:
        """Send one request and read its whole answer, bounded.

        ``timeout`` is httpx's per-read timeout; ``deadline`` the seconds the
        whole exchange may take (default: ``timeout``, else the transport's);
        ``max_bytes`` the largest body read (default: ``max_response_bytes``).
        Raises the server's error for a 4xx/5xx answer, ``PEER_UNREACHABLE``
        when the node cannot be reached, ``PAGE_TOO_LARGE``, ``PEER_TOO_SLOW``,
        ``REDIRECT_REFUSED``, ``PEER_INVALID`` (a compressed answer)."""
        headers = dict(self.headers)
        headers["Accept"] = accept
        headers["Accept-Encoding"] = "identity"
        content: bytes | None = None
        if cbor_body is not None:
            content = dagcbor_encode(cbor_body)
            headers["Content-Type"] = CBOR
        cap = self.max_response_bytes if max_bytes is None else max_bytes
        limit_s = deadline if deadline is not None else (timeout or self.timeout)
        url = self.base_url + path
        try:
            request = self.client.build_request(
                method,
                url,
                params={k: str(v) for k, v in (params or {}).items()},
                headers=headers,
                content=content,
                json=json_body,
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )
            with anyio.fail_after(limit_s):
                response = await self._send_bounded(request, cap)
        except TimeoutError:
            raise PeerTooSlow(
                f"{self.base_url} did not answer {method} {path} within {limit_s:g} s; "
                "the peer is stalled or the link too slow (it is retried later)"
            ) from None
        except httpx.TransportError as exc:
            raise PeerUnreachable(f"{self.base_url} is unreachable: {exc!r}") from exc
        raise_for_error(response)
        return response

    async def _send_bounded(self, request: httpx.Request, cap: int) -> httpx.Response:
        """Send ``request``, stream the answer and keep at most ``cap`` bytes of it."""
        response = await self.client.send(request, stream=True, follow_redirects=False)
        try:
            if 300 <= response.status_code < 400:
                where = response.headers.get("location", "")
                raise RedirectRefused(
                    f"{self.base_url} answered {request.method} {request.url.path} with a "
                    f"redirect (HTTP {response.status_code} to {where[:200]!r}); fedpeer does "
                    "not follow redirects: use the node's own URL"
                )
            encoding = response.headers.get("content-encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                raise PeerInvalid(
                    f"{self.base_url} sent a {encoding!r}-encoded answer though "
                    "identity was asked for; compressed answers are refused"
                )
            declared = response.headers.get("content-length")
            if declared is not None and declared.strip().isdigit() and int(declared) > cap:
                raise PageTooLarge(
                    f"{self.base_url} announced a {declared}-byte answer to "
                    f"{request.method} {request.url.path}; at most {cap} bytes are read"
                )
            body = bytearray()
            async for chunk in response.aiter_raw():
                if len(body) + len(chunk) > cap:
                    raise PageTooLarge(
                        f"{self.base_url} sent more than {cap} bytes for "
                        f"{request.method} {request.url.path}; the answer was dropped"
                    )
                body += chunk
        finally:
            await response.aclose()
        keep = {
            k: v
            for k, v in response.headers.multi_items()
            if k.lower() not in ("content-encoding", "transfer-encoding", "content-length")
        }
        return httpx.Response(
            response.status_code, headers=keep, content=bytes(body), request=request
        )

    @staticmethod
    def decode(response: httpx.Response) -> object:
        """The DAG-CBOR or DAG-JSON body, by its content type."""
        ctype = response.headers.get("content-type", "").split(";")[0].strip()
        if ctype == CBOR:
            return dagcbor_decode(response.content)
        return dagjson_decode(response.content)
