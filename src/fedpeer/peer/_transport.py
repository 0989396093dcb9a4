"""The HTTP transport every client of a node uses (PeerClient, AdminClient).

One place builds the httpx client that talks to other nodes
(:func:`new_http_client`: timeouts, connection pool, TLS pinning),
one place sends a request and maps the answer (:class:`HttpTransport`): an
error answer becomes the server's :class:`~fedpeer.errors.FedpeerError`
subclass (:func:`raise_for_error`), a transport failure ``PeerUnreachable``
(its ``__cause__`` is the httpx error), bodies are DAG-CBOR or DAG-JSON.

Every answer is read *bounded* (issue 10, protocol.md §8.7): the body is
streamed and refused past a byte cap (``PAGE_TOO_LARGE``), the whole request
(connect, headers, body) runs under one deadline (``PEER_TOO_SLOW``; httpx's own
timeouts are per read, so a peer dripping a byte now and then would never trip
them), a redirect is refused (``REDIRECT_REFUSED``; never followed) and a
compressed answer is refused (``identity`` is asked for, so a small body cannot
inflate past the cap).
"""

from __future__ import annotations

import functools
import ssl
import typing
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Self

import anyio
import attrs
import httpcore
import httpx

from ..errors import (
    PageTooLarge,
    PeerError,
    PeerInvalid,
    PeerTooSlow,
    PeerUnreachable,
    RateLimited,
    RedirectRefused,
    TlsPinMismatch,
    error_from_code,
)
from ..identity.canonical import dagcbor_decode, dagcbor_encode, dagjson_decode
from .tls import spki_sha256_of_der

__all__ = [
    "CBOR",
    "DEFAULT_MAX_RESPONSE_BYTES",
    "JSON",
    "HttpTransport",
    "Pin",
    "PinStore",
    "new_http_client",
    "origin_of",
    "peer_pin",
    "pinned_context",
    "pins_of",
    "raise_for_error",
    "read_bounded",
    "refuse_unbounded",
]

CBOR = "application/cbor"
JSON = "application/json"

DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024
"""The largest answer a transport reads unless a request names a smaller cap."""


# --- TLS pinning (docs/protocol.md §6.6) ------------------------------------------------


def origin_of(url: str | httpx.URL) -> tuple[str, int]:
    """``(host, port)`` of an https URL as the connection pool sees it (lowercase
    host without IPv6 brackets; port 443 when absent)."""
    u = httpx.URL(url) if isinstance(url, str) else url
    return u.host.lower(), u.port or (443 if u.scheme == "https" else 80)


@attrs.frozen
class Pin:
    """The SPKI hashes a TLS server at one origin may present, for the DID they
    were learnt for. ``expires_at`` (unix seconds) is the expiry of the signed
    manifest that listed them (None: an out-of-band pin, kept until replaced)."""

    did: str
    spkis: frozenset[str]
    expires_at: float | None = None
    source: str = "manifest"


@attrs.define
class PinStore:
    """What a pinned client knows: origin -> :class:`Pin`. An https origin with
    no pin is verified against the system's certificate authorities (did:web
    peers); an origin with a pin accepts exactly its SPKI hashes (did:key peers),
    checked right after the handshake, before a request byte is written."""

    _pins: dict[tuple[str, int], Pin] = attrs.field(factory=dict)

    def get(self, origin: tuple[str, int]) -> Pin | None:
        """The pin of ``origin`` (None: CA validation)."""
        return self._pins.get(origin)

    def set(self, url: str, pin: Pin) -> None:
        """Pin the origin of ``url``."""
        self._pins[origin_of(url)] = pin

    def forget(self, url: str) -> None:
        """Drop the pin of ``url``'s origin (the next check re-reads the manifest)."""
        self._pins.pop(origin_of(url), None)


_PINNED_CONTEXT: ssl.SSLContext | None = None


def pinned_context() -> ssl.SSLContext:
    """TLS 1.2+, no CA chain and no host name: the SPKI pin replaces both."""
    global _PINNED_CONTEXT
    if _PINNED_CONTEXT is None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_alpn_protocols(["http/1.1"])
        _PINNED_CONTEXT = ctx
    return _PINNED_CONTEXT


def peer_pin(stream: object) -> str | None:
    """The SPKI pin of the certificate on a TLS network stream (httpcore's, or a
    response's ``extensions["network_stream"]``); None when not TLS."""
    get = getattr(stream, "get_extra_info", None)
    ssl_object = get("ssl_object") if get is not None else None
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(True)  # positional: the low-level _SSLSocket has no kwargs
    if not der:
        return None
    try:
        return spki_sha256_of_der(der)
    except ValueError:
        return None


class _PinnedStream(httpcore.AsyncNetworkStream):
    """A TCP stream that, on ``start_tls``, applies the origin's pin; the TLS
    stream it gives back checks the pin again before every write.

    A pooled connection outlives the pin it was accepted under: another DID
    checked at that address, or a rotation, replaces the origin's pin. A
    connection whose certificate the current pin does not list is retired
    before a byte is written (``ConnectionNotAvailable``: httpcore closes it and
    takes another connection, whose handshake meets the current pin)."""

    def __init__(
        self,
        inner: httpcore.AsyncNetworkStream,
        origin: tuple[str, int],
        pins: PinStore,
        spki: str | None = None,
    ) -> None:
        self._inner = inner
        self._origin = origin
        self._pins = pins
        self._spki = spki  # the served certificate's pin, once TLS is up

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if self._spki is not None:
            pin = self._pins.get(self._origin)
            if pin is not None and self._spki not in pin.spkis:
                raise httpcore.ConnectionNotAvailable()
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    def get_extra_info(self, info: str) -> typing.Any:
        return self._inner.get_extra_info(info)

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        pin = self._pins.get(self._origin)
        if pin is None:  # no pin: the certificate authorities (did:web, public hosts)
            tls = await self._inner.start_tls(ssl_context, server_hostname, timeout)
            return _PinnedStream(tls, self._origin, self._pins, peer_pin(tls))
        tls = await self._inner.start_tls(pinned_context(), server_hostname, timeout)
        seen = peer_pin(tls)
        if seen is None or seen not in pin.spkis:
            await tls.aclose()
            host, port = self._origin
            raise TlsPinMismatch(
                f"the TLS certificate at {host}:{port} (SPKI {seen}) is not the one "
                f"{pin.did} pinned ({', '.join(sorted(pin.spkis))}, from its {pin.source}); "
                "nothing was sent. Another machine may hold that address: check the peer "
                "(`fedpeer id` on it) and its address"
            )
        return _PinnedStream(tls, self._origin, self._pins, seen)


class _PinningBackend(httpcore.AsyncNetworkBackend):
    """httpcore's default backend, with every TLS handshake checked against ``pins``."""

    def __init__(self, pins: PinStore) -> None:
        self._inner = _auto_backend()
        self.pins = pins

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.connect_tcp(
            host, port, timeout=timeout, local_address=local_address, socket_options=socket_options
        )
        return _PinnedStream(stream, (host.lower(), port), self.pins)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return await self._inner.connect_unix_socket(path, timeout, socket_options)

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def _auto_backend() -> httpcore.AsyncNetworkBackend:
    from httpcore._backends.auto import AutoBackend  # trio or anyio, by the running loop

    return AutoBackend()


@functools.cache
def _system_ca_context() -> ssl.SSLContext:
    """The certificate authorities httpx trusts by default, loaded once per process.

    Loading the bundle costs about 25 ms of CPU; every client used to load it
    twice (httpx's own transport, then ours), so each PeerClient, each manifest
    check's probe client and each CLI command paid 25-50 ms for it. Every client
    here speaks HTTP/1.1 only, so the ALPN list httpcore sets on the shared
    context is the same for all of them."""
    return httpx.create_ssl_context()


class _PinnedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport over a pool whose network backend checks pins."""

    def __init__(
        self, pins: PinStore, limits: httpx.Limits, ca_context: ssl.SSLContext | None
    ) -> None:
        ctx = ca_context if ca_context is not None else _system_ca_context()
        super().__init__(verify=ctx, limits=limits)  # a context given: httpx loads none
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ctx,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_PinningBackend(pins),
        )


class PeerHttpClient(httpx.AsyncClient):
    """An httpx client whose TLS connections obey :attr:`pins` (see :class:`PinStore`)."""

    def __init__(
        self, pins: PinStore, ca_context: ssl.SSLContext | None = None, **kwargs: typing.Any
    ) -> None:
        limits = kwargs.pop("limits")
        # trust_env=False: no proxy from the environment may carry a peer's traffic
        # around the pinning backend (connections to peers are direct).
        super().__init__(
            transport=_PinnedTransport(pins, limits, ca_context),
            limits=limits,
            trust_env=False,
            **kwargs,
        )
        self.pins = pins


def pins_of(client: httpx.AsyncClient) -> PinStore | None:
    """The pin store of a client made by :func:`new_http_client` (None for any
    other client: it can only do CA-validated TLS)."""
    return client.pins if isinstance(client, PeerHttpClient) else None


def new_http_client(
    *,
    timeout: float = 30.0,
    connect_timeout: float = 10.0,
    pins: PinStore | None = None,
    ca_context: ssl.SSLContext | None = None,
) -> httpx.AsyncClient:
    """A client for talking to other nodes: ``timeout`` per request (``connect_timeout``
    to connect), a pool of up to 100 connections (20 kept alive), HTTP/1.1 keep-alive.

    TLS follows docs/protocol.md §6.6: an origin pinned in ``pins`` (a fresh
    store by default, see :func:`pins_of`) accepts exactly the pinned SPKI
    hashes, checked after the handshake and before any request byte
    (TLS_PIN_MISMATCH otherwise); connections are direct (proxy variables of the
    environment are ignored); an unpinned https origin is checked against
    the system's certificate authorities, or ``ca_context`` when given (the CLI
    passes :func:`~fedpeer.peer.tls.local_client_context`: its own node's
    certificate). The caller closes it."""
    return PeerHttpClient(
        pins if pins is not None else PinStore(),
        ca_context,
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
        try:
            where = str(response.request.url.copy_with(query=None))
        except RuntimeError:  # a response built without its request
            where = "the peer"
        raise PeerError(
            f"{where} answered HTTP "
            f"{response.status_code} without a fedpeer error body; check that the URL is a "
            "fedpeer node's (not a proxy or another service)"
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
        self.token = token
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
        bearer: bool = True,
    ) -> httpx.Response:
        """Send one request and read its whole answer, bounded.

        ``timeout`` is httpx's per-read timeout; ``deadline`` the seconds the
        whole exchange may take (default: ``timeout``, else the transport's);
        ``max_bytes`` the largest body read (default: ``max_response_bytes``);
        ``bearer=False`` leaves the token out (a public route of a peer whose
        identity is not proven yet).
        Raises the server's error for a 4xx/5xx answer, ``PEER_UNREACHABLE``
        when the node cannot be reached, ``PAGE_TOO_LARGE``, ``PEER_TOO_SLOW``,
        ``REDIRECT_REFUSED``, ``PEER_INVALID`` (a compressed answer)."""
        headers = dict(self.headers) if bearer else {}
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
                "the peer is stalled or the link too slow: check the link and try again "
                "(a pair retries by itself)"
            ) from None
        except httpx.TransportError as exc:
            raise PeerUnreachable(unreachable_message(self.base_url, exc)) from exc
        raise_for_error(response)
        return response

    async def _send_bounded(self, request: httpx.Request, cap: int) -> httpx.Response:
        """Send ``request``, stream the answer and keep at most ``cap`` bytes of it."""
        response = await self.client.send(request, stream=True, follow_redirects=False)
        try:
            body = await read_bounded(response, cap, self.base_url)
        finally:
            await response.aclose()
        return buffered(response, body)

    @staticmethod
    def decode(response: httpx.Response) -> object:
        """The DAG-CBOR or DAG-JSON body, by its content type."""
        ctype = response.headers.get("content-type", "").split(";")[0].strip()
        if ctype == CBOR:
            return dagcbor_decode(response.content)
        return dagjson_decode(response.content)


def refuse_unbounded(response: httpx.Response, cap: int, where: str) -> None:
    """Refuse, from its head alone, an answer that cannot be read bounded: a
    redirect (``REDIRECT_REFUSED``; never followed), a compressed body
    (``PEER_INVALID``; identity is asked for) or a ``Content-Length`` over
    ``cap`` (``PAGE_TOO_LARGE``)."""
    request = response.request
    what = f"{request.method} {request.url.path}"
    if 300 <= response.status_code < 400:
        to = response.headers.get("location", "")
        raise RedirectRefused(
            f"{where} answered {what} with a redirect (HTTP {response.status_code} to "
            f"{to[:200]!r}); fedpeer does not follow redirects: use the node's own URL"
        )
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise PeerInvalid(
            f"{where} sent a {encoding!r}-encoded answer to {what} though identity was "
            "asked for; compressed answers are refused: check that it is a fedpeer node"
        )
    declared = response.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > cap:
        raise PageTooLarge(
            f"{where} announced a {declared}-byte answer to {what}; at most {cap} bytes "
            "are read. Check that it is a fedpeer node, or raise the cap if it is yours",
            max_bytes=cap,
        )


async def read_bounded(response: httpx.Response, cap: int, where: str) -> bytes:
    """The body of a streamed ``response``, refused past ``cap`` bytes
    (``PAGE_TOO_LARGE``) and by :func:`refuse_unbounded`. The one bounded reader
    of answers from other nodes (pages, manifests, admin answers). The caller
    closes the response; the deadline is the caller's."""
    refuse_unbounded(response, cap, where)
    body = bytearray()
    async for chunk in response.aiter_raw():
        if len(body) + len(chunk) > cap:
            request = response.request
            raise PageTooLarge(
                f"{where} sent more than {cap} bytes for {request.method} {request.url.path}; "
                "the answer was dropped. Check that it is a fedpeer node, or raise the cap "
                "if it is yours",
                max_bytes=cap,
            )
        body += chunk
    return bytes(body)


def buffered(response: httpx.Response, body: bytes) -> httpx.Response:
    """A closed, fully read copy of a streamed ``response`` holding ``body``
    (``.content`` / ``.json()`` work; transfer headers dropped)."""
    keep = {
        k: v
        for k, v in response.headers.multi_items()
        if k.lower() not in ("content-encoding", "transfer-encoding", "content-length")
    }
    return httpx.Response(
        response.status_code, headers=keep, content=body, request=response.request
    )


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
