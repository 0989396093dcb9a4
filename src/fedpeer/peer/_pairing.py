"""The peer layer's side of sync: pages over HTTP, and telling our own URLs apart.

:class:`PeerPageSource` is the :class:`~fedpeer.sync.PageSource` the node's
pullers use: ``GET {peer_url}/v1/sync/changes`` through one shared httpx client
(connection reuse across pages and pairs), with the pair's credential.
:func:`is_own_url` lets pair creation refuse a URL that reaches this node.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from collections.abc import Iterable

import anyio
import httpx

from ..errors import PageTooLarge
from ..sync._machine import PageRequest
from ..sync.pairs import Pair
from ..sync.records import DEFAULT_LIMITS, Limits
from ._config import NodeConfig
from ._pinning import PeerVerifier
from .client import PeerClient

__all__ = [
    "DEFAULT_MAX_PAGE_BYTES",
    "DEFAULT_PAGE_DEADLINE_S",
    "PeerPageSource",
    "host_port",
    "is_own_url",
]

DEFAULT_MAX_PAGE_BYTES = NodeConfig().pull_max_page_bytes
"""A pulled page's byte cap: a node's page byte budget plus 4 MiB of slack."""
DEFAULT_PAGE_DEADLINE_S = NodeConfig().pull_page_deadline_s
"""Seconds one page request may take in all (a longpoll adds its hold time)."""


class PeerPageSource:
    """Fetch feed pages from peers over HTTP (implements ``PageSource``).

    ``client`` is shared by every pair of the node (the node owns and closes
    it). ``verifier`` (default: one on ``client``) proves before a page request
    that the pair's URL is served by the pair's DID (signed manifest, and over
    https the pinned certificate, docs/protocol.md §6.6), cached until the
    manifest expires and re-checked after any error: the credential is never
    sent to another DID (DID_MISMATCH / TLS_PIN_MISMATCH stop the pair).
    ``longpoll_s`` is how long a longpoll asks the source to hold (the
    source caps it at its own maximum); the HTTP timeout is that plus a margin.
    Errors come back as the source's FedpeerError (``RateLimited`` with
    ``retry_after``), ``PeerUnreachable`` for transport failures, ``Malformed``
    / ``NonCanonical`` for an undecodable body.

    Never holds more than one bounded page (issue 10): the answer is streamed
    and dropped past ``max_page_bytes`` (``PAGE_TOO_LARGE``); the whole request
    must finish within ``page_deadline_s`` (plus the longpoll hold;
    ``PEER_TOO_SLOW``); a page with more records than asked is refused from its
    header before decoding (``PAGE_TOO_LARGE``); an answer that is not DAG-CBOR
    is ``PAGE_INVALID``; a redirect is ``REDIRECT_REFUSED``. A retry downloads
    at most the same bounded amount again, after the puller's backoff.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        longpoll_s: float = 30.0,
        limits: Limits = DEFAULT_LIMITS,
        verifier: PeerVerifier | None = None,
        max_page_bytes: int = DEFAULT_MAX_PAGE_BYTES,
        page_deadline_s: float = DEFAULT_PAGE_DEADLINE_S,
    ) -> None:
        self._client = client
        self.longpoll_s = longpoll_s
        self._limits = limits
        self.verifier = verifier if verifier is not None else PeerVerifier(client)
        self.max_page_bytes = max_page_bytes
        self.page_deadline_s = page_deadline_s

    async def fetch(self, pair: Pair, request: PageRequest) -> object:
        """One page for ``pair`` as the machine asked (decoded, not verified)."""
        peer = PeerClient(
            pair.peer_url, token=pair.credential, client=self._client, limits=self._limits
        )

        async def page() -> object:
            # Never ask for more than the source serves (its advertised
            # page_limit_max, read by the verifier's check just before this call):
            # a larger ``limit`` would be INVALID_REQUEST (docs/protocol.md §8.1).
            limit = request.limit
            cap = self.verifier.page_limit_max(pair.peer_url, pair.peer_did)
            if cap is not None:
                limit = min(limit, cap)
            try:
                return await peer.changes_raw(
                    request.since,
                    limit=limit,
                    feed=request.feed,
                    namespace=request.namespace,
                    thread=request.thread,
                    timeout=self.longpoll_s if request.feed == "longpoll" else None,
                    max_bytes=self.max_page_bytes,
                    deadline=self.page_deadline_s,
                    strict_cbor=True,
                )
            except PageTooLarge as err:
                err.asked = limit  # what was asked, after the source's own cap
                raise

        started = anyio.current_time()
        body = await self.verifier.run(pair.peer_url, pair.peer_did, page)
        if request.feed == "longpoll" and _is_empty_page(body):
            held = anyio.current_time() - started
            if held < self.longpoll_s / 2:
                # A longpoll answered early with nothing: the source shutting
                # down, or one that does not hold longpolls (then at most once a
                # second: the puller paces those). Whoever holds its address next proves it is the
                # peer before the credential goes out again, as after an error.
                self.verifier.forget(pair.peer_url, pair.peer_did)
        return body


def _is_empty_page(body: object) -> bool:
    items = body.get("records") if type(body) is dict else getattr(body, "records", None)
    return isinstance(items, (list, tuple)) and not items


_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def host_port(url: str) -> tuple[str, int] | None:
    """``(host, port)`` of an http(s) URL (default ports filled in), None if it has none."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    host = (parts.hostname or "").lower()
    if not host:
        return None
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    return host, port


def _is_local_host(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    return addr.is_loopback or addr.is_unspecified


def is_own_url(url: str, own_urls: Iterable[str]) -> bool:
    """True when ``url`` names this node: same host and port as one of
    ``own_urls``, or any loopback/unspecified address with one of our ports when
    we listen on loopback or on every interface. Pure; never raises."""
    target = host_port(url)
    if target is None:
        return False
    for own in own_urls:
        mine = host_port(own)
        if mine is None:
            continue
        if target == mine:
            return True
        if target[1] == mine[1] and _is_local_host(target[0]) and _is_local_host(mine[0]):
            return True
    return False
