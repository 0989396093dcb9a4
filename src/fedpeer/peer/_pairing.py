"""The peer layer's side of sync: pages over HTTP, and setting up a pair safely.

:class:`PeerPageSource` is the :class:`~fedpeer.sync._puller.PageSource` the
node's pullers use: ``GET {peer_url}/v1/sync/changes`` through one shared httpx
client (connection reuse across pages and pairs), with the pair's credential.

:func:`create_pair` is what ``node.pair_with`` and ``POST /v1/sync/pairs`` do:
refuse a URL that points at this node, fetch the peer's manifest and verify it
(signature, expiry, and the DID when the caller named one), refuse our own DID
(PAIR_SELF), then create the pair (or return the existing one).
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from collections.abc import Iterable, Sequence

import httpx

from ..errors import (
    DidMismatch,
    FedpeerError,
    InvalidRequest,
    PairSelf,
    PeerInvalid,
    PeerUnreachable,
)
from ..sync._machine import PageRequest
from ..sync._manager import PairManager
from ..sync.pairs import Pair, PairFilter
from ..sync.records import DEFAULT_LIMITS, Limits
from .client import PeerClient

__all__ = ["PeerPageSource", "create_pair", "is_own_url"]

MANIFEST_TIMEOUT_S = 10.0


class PeerPageSource:
    """Fetch feed pages from peers over HTTP (implements ``PageSource``).

    ``client`` is shared by every pair of the node (the node owns and closes
    it). ``longpoll_s`` is how long a longpoll asks the source to hold (the
    source caps it at its own maximum); the HTTP timeout is that plus a margin.
    Errors come back as the source's FedpeerError (``RateLimited`` with
    ``retry_after``), ``PeerUnreachable`` for transport failures, ``Malformed``
    / ``NonCanonical`` for an undecodable body.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        longpoll_s: float = 30.0,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self._client = client
        self.longpoll_s = longpoll_s
        self._limits = limits

    async def fetch(self, pair: Pair, request: PageRequest) -> object:
        """One page for ``pair`` as the machine asked (decoded, not verified)."""
        peer = PeerClient(
            pair.peer_url, token=pair.credential, client=self._client, limits=self._limits
        )
        return await peer.changes_raw(
            request.since,
            limit=request.limit,
            feed=request.feed,
            namespace=request.namespace,
            thread=request.thread,
            timeout=self.longpoll_s if request.feed == "longpoll" else None,
        )


_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def _host_port(url: str) -> tuple[str, int] | None:
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
    target = _host_port(url)
    if target is None:
        return False
    for own in own_urls:
        mine = _host_port(own)
        if mine is None:
            continue
        if target == mine:
            return True
        if target[1] == mine[1] and _is_local_host(target[0]) and _is_local_host(mine[0]):
            return True
    return False


async def create_pair(
    manager: PairManager,
    *,
    own_urls: Sequence[str],
    peer_url: str,
    token: str | None,
    peer_did: str | None = None,
    filter: PairFilter | None = None,
    author_allowlist: Iterable[str] | None = None,
    client: httpx.AsyncClient | None = None,
) -> tuple[Pair, bool]:
    """Verify the peer at ``peer_url`` and create the pair "we pull from it".

    Returns ``(pair, created)`` (an existing pair with the same DIDs and filter
    is returned unchanged, ``created`` False). Raises ``PairSelf`` when the URL
    or the manifest's DID is this node; ``InvalidRequest`` for a URL that is not
    http(s) or cannot be requested; ``PeerUnreachable``; ``DidMismatch`` when
    the manifest is signed by another DID than ``peer_did``; ``PeerInvalid``
    when the peer does not serve a valid fedpeer manifest; and the errors of
    :meth:`PairManager.create`. Blocks on one HTTP request (at most 10 s).
    """
    local = manager.local_did
    if peer_did is not None and peer_did == local:
        raise PairSelf(
            f"peer_did is this node's own DID ({local}): a node cannot pull from itself. "
            "Use the other node's DID and URL."
        )
    parts = _host_port(peer_url) if isinstance(peer_url, str) else None
    if parts is None or not peer_url.lower().startswith(("http://", "https://")):
        raise InvalidRequest(f"peer_url must be an http:// or https:// URL, got {peer_url!r:.120}")
    if is_own_url(peer_url, own_urls):
        raise PairSelf(
            f"{peer_url} is this node's own address: a node cannot pull from itself. "
            "Use the other node's URL (check the invite or the address you typed)."
        )
    try:
        async with PeerClient(
            peer_url, client=client, timeout=MANIFEST_TIMEOUT_S, limits=manager.limits
        ) as peer:
            verified = await peer.manifest(expected_did=peer_did)
    except (PeerUnreachable, DidMismatch):
        raise
    except FedpeerError as err:
        raise PeerInvalid(
            f"{peer_url} did not serve a valid fedpeer manifest ({err.code}: {err.message}); "
            "check the URL"
        ) from None
    except (httpx.InvalidURL, httpx.HTTPError, UnicodeError, ValueError) as exc:
        raise InvalidRequest(f"peer_url {peer_url!r:.120} cannot be requested: {exc}") from None
    if verified.did == local:
        raise PairSelf(
            f"{peer_url} is this node ({local}): a node cannot pull from itself. "
            "Use the other node's URL."
        )
    return await manager.create(
        peer_did=verified.did,
        peer_url=peer_url,
        credential=token,
        filter=filter,
        author_allowlist=author_allowlist,
    )
