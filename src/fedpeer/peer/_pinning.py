"""Checking who is at a peer URL before a credential goes there (docs/protocol.md §6.6).

:func:`check_peer` fetches the peer's signed manifest (a public document: no
bearer, no secret is sent) and requires it to be signed by the expected DID;
over https it also requires the certificate of that very connection to be one
the manifest (and the invite or TXT pin, when there is one) lists, then pins
the origin in the client's :class:`~fedpeer.peer._transport.PinStore`, so every
later connection is checked right after its handshake, before any byte of a
request.

:class:`PeerVerifier` is what a pair uses: a check cached until the manifest
expires, dropped on any error of the pair (the next attempt checks again).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

import anyio
import attrs
import httpx

from ..errors import (
    FedpeerError,
    PeerInvalid,
    PeerTooSlow,
    PeerUnreachable,
    TlsPinMismatch,
)
from ..identity.envelope import VerifiedDocument
from ._transport import (
    CBOR,
    HttpTransport,
    Pin,
    buffered,
    new_http_client,
    origin_of,
    peer_pin,
    pinned_context,
    pins_of,
    raise_for_error,
    read_bounded,
    unreachable_message,
)
from .manifest import manifest_pins, verify_manifest

__all__ = ["PeerVerifier", "check_peer", "judge_pins"]

_T = TypeVar("_T")
WELL_KNOWN = "/.well-known/fedpeer"
MAX_MANIFEST_BYTES = 256 * 1024
"""The largest well-known manifest answer a client reads (a manifest is a few KiB)."""


async def _fetch(
    client: httpx.AsyncClient, base_url: str, timeout: float, https: bool, oob: frozenset[str]
) -> tuple[httpx.Response, str | None]:
    """GET the manifest: the served pin read before any body byte (an
    out-of-band mismatch reads no body), the body read by the transport's
    bounded reader under :data:`MAX_MANIFEST_BYTES` (no redirect, no
    compression); an error answer raised as the peer's error."""
    headers = {"Accept": CBOR, "Accept-Encoding": "identity"}
    url = base_url.rstrip("/") + WELL_KNOWN
    request = client.build_request("GET", url, headers=headers, timeout=timeout)
    response = await client.send(request, stream=True, follow_redirects=False)
    try:
        seen = peer_pin(response.extensions.get("network_stream")) if https else None
        if https and oob and seen not in oob:  # before reading a byte of the body
            return buffered(response, b""), seen
        body = await read_bounded(response, MAX_MANIFEST_BYTES, base_url)
    finally:
        await response.aclose()
    answer = buffered(response, body)
    raise_for_error(answer)
    return answer, seen


def judge_pins(
    served: str | None,
    manifest: frozenset[str],
    oob: frozenset[str] = frozenset(),
    *,
    where: str = "the peer",
    did: str | None = None,
    oob_source: str = "invite",
) -> None:
    """The pin rule of docs/protocol.md §6.6 (pure): the pin of the certificate
    ``served`` on the connection must be listed by the DID-signed manifest
    (``manifest``: PEER_INVALID when empty, TLS_PIN_MISMATCH when not listed);
    with out-of-band pins (invite ``pin``, TXT ``tls``) it must also be one of
    them, and each must be listed by the manifest (TLS_PIN_MISMATCH)."""
    if not manifest:
        raise PeerInvalid(
            f"{where} serves https but its manifest (signed by {did}) lists no "
            "tls_spki_sha256: the certificate is not bound to the DID"
        )
    if oob and served not in oob:
        raise TlsPinMismatch(
            f"{where} presented a TLS certificate (SPKI {served}) other than the "
            f"{oob_source} pin for {did}; nothing was sent. Another machine may hold "
            f"that address, or the {oob_source} is stale: ask for a new one"
        )
    if served not in manifest:
        raise TlsPinMismatch(
            f"the TLS certificate at {where} (SPKI {served}) is not one that {did} "
            f"signed in its manifest ({', '.join(sorted(manifest))}); nothing was sent. An "
            "impostor may be replaying that node's manifest: check the peer and its address"
        )
    if oob - manifest:
        raise TlsPinMismatch(
            f"the {oob_source} pin for {did} is not in its signed manifest: the "
            f"{oob_source} is stale or forged; ask for a new one"
        )


def advertised_page_limit(well_known: object) -> int | None:
    """``capabilities_manifest.limits.page_limit_max`` of a ``/.well-known/fedpeer``
    body when it is a positive integer, else None (pure; never raises).

    The capabilities are not signed; the value only ever makes our page requests
    *smaller* (a puller asks ``min(page_limit, this)``), so a forged one can cost
    speed, never data."""
    caps = well_known.get("capabilities_manifest") if isinstance(well_known, dict) else None
    limits = caps.get("limits") if isinstance(caps, dict) else None
    cap = limits.get("page_limit_max") if isinstance(limits, dict) else None
    if type(cap) is not int or cap < 1:
        return None
    return cap


async def check_peer(
    client: httpx.AsyncClient,
    base_url: str,
    did: str | None,
    *,
    oob_pins: Iterable[str] = (),
    oob_source: str = "invite",
    timeout: float = 10.0,
    now: float | None = None,
    on_well_known: Callable[[object], None] | None = None,
) -> VerifiedDocument:
    """Prove that ``base_url`` is served by ``did`` (any DID when None); return
    the verified manifest. ``on_well_known`` gets the whole decoded
    ``/.well-known/fedpeer`` body once the manifest verified (the unsigned
    capabilities ride along: :class:`PeerVerifier` reads the page size there).

    Over https, the manifest is read over a new connection that accepts any
    certificate but carries nothing secret; the certificate's SPKI hash must be
    in the manifest's ``tls_spki_sha256`` and, when ``oob_pins`` is given (the
    invite's ``pin`` or the TXT's ``tls``), in ``oob_pins`` too; every
    out-of-band pin must be listed by the manifest. The manifest's pins then
    pin the origin in ``client`` (for a client from ``new_http_client``) until
    the manifest expires. Over http only the signature and the DID are checked;
    for a did:web ``did`` the client's certificate-authority validation applies
    instead of pins.

    Raises DID_MISMATCH (signed by another DID), TLS_PIN_MISMATCH, BAD_SIGNATURE
    / SIGNATURE_EXPIRED, PEER_INVALID (no manifest, or an https node whose
    manifest lists no pin), PEER_UNREACHABLE, PAGE_TOO_LARGE (a manifest over
    256 KiB), PEER_TOO_SLOW (not read within ``timeout`` seconds in all),
    REDIRECT_REFUSED; the peer's error for an error answer. Cancellable.
    """
    # did:web peers are verified by certificate authorities (the client's own TLS
    # validation), not pinned: their manifest is fetched like any https page.
    https = base_url.lower().startswith("https://") and not (did or "").startswith("did:web:")
    oob = frozenset(oob_pins)
    try:
        # Over https a fresh client with no pin and no CA: it accepts any
        # certificate and carries nothing secret; the served pin is judged below.
        probe = new_http_client(timeout=timeout, ca_context=pinned_context()) if https else client
        try:
            with anyio.fail_after(timeout):  # one deadline for the whole read, not per chunk
                response, seen = await _fetch(probe, base_url, timeout, https, oob)
        except TimeoutError:
            raise PeerTooSlow(
                f"{base_url} did not send its manifest within {timeout:g} s; check that "
                "the address is the node's and try again when the link is better"
            ) from None
        finally:
            if probe is not client:
                await probe.aclose()
    except httpx.TransportError as exc:
        raise PeerUnreachable(unreachable_message(base_url, exc)) from exc
    if https and oob and seen not in oob:
        judge_pins(seen, oob, oob, where=base_url, did=did, oob_source=oob_source)
    well_known = HttpTransport.decode(response)
    verified = verify_manifest(well_known, expected_did=did, now=now)
    if on_well_known is not None:
        on_well_known(well_known)
    if not https:
        return verified
    pins = manifest_pins(verified.document)
    judge_pins(seen, pins, oob, where=base_url, did=verified.did, oob_source=oob_source)
    store = pins_of(client)
    if store is not None:
        store.set(base_url, Pin(verified.did, pins, verified.expires_at, "manifest"))
    return verified


@attrs.define
class PeerVerifier:
    """Per (URL, DID) proof that a pair talks to its peer, cached until the
    manifest's expiry; :meth:`forget` on any error so the next attempt re-checks
    (a TLS change, an impostor taking the address, a rotated certificate).

    A cached check holds only while the origin keeps the pin that check set
    (an equal one: same DID, certificates, expiry): the pin store is keyed by
    origin, so after a check of that origin for another DID (a pairing with
    whoever now holds the address) or a forgotten pin, this DID is checked
    again before its credential is sent there."""

    client: httpx.AsyncClient
    timeout: float = 10.0
    _checked: dict[tuple[str, str], tuple[float, Pin | None]] = attrs.field(factory=dict)
    _page_caps: dict[tuple[str, str], int] = attrs.field(factory=dict)

    def _pin(self, url: str) -> Pin | None:
        store = pins_of(self.client)
        return store.get(origin_of(url)) if store is not None else None

    async def ensure(self, url: str, did: str) -> None:
        """Check ``url`` against ``did`` unless a check is still valid.
        Raises what :func:`check_peer` raises."""
        key = (url.rstrip("/"), did)
        until, pin = self._checked.get(key, (0.0, None))
        if time.time() < until and self._pin(url) == pin:
            return
        seen: list[object] = []
        verified = await check_peer(
            self.client, url, did, timeout=self.timeout, on_well_known=seen.append
        )
        self._checked[key] = (verified.expires_at, self._pin(url))
        cap = advertised_page_limit(seen[0]) if seen else None
        if cap is None:
            self._page_caps.pop(key, None)
        else:
            self._page_caps[key] = cap

    def page_limit_max(self, url: str, did: str) -> int | None:
        """The most records per page the peer at ``url`` said it serves (its
        capabilities' ``limits.page_limit_max``, read with the last check), or None."""
        return self._page_caps.get((url.rstrip("/"), did))

    def forget(self, url: str, did: str) -> None:
        """Drop the cached check of ``(url, did)``; the origin keeps its pin until a
        new check replaces it (a connection meanwhile still needs the old pin)."""
        self._checked.pop((url.rstrip("/"), did), None)

    async def run(self, url: str, did: str, call: Callable[[], Awaitable[_T]]) -> _T:
        """``call()`` after :meth:`ensure`; on TLS_PIN_MISMATCH (e.g. the peer
        rotated its certificate) check again once and retry; on any error drop
        the cached check."""
        await self.ensure(url, did)
        try:
            return await call()
        except TlsPinMismatch:
            self.forget(url, did)
            await self.ensure(url, did)  # a rotated certificate passes, an impostor fails
        except (FedpeerError, OSError):
            self.forget(url, did)
            raise
        try:
            return await call()
        except (FedpeerError, OSError):
            self.forget(url, did)
            raise
