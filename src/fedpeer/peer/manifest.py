"""The well-known manifest: what a node is and how to talk to it.

``GET /.well-known/fedpeer`` returns ``{capabilities_manifest,
federation_manifest}``. The federation manifest is a signed JSON document (see
:mod:`fedpeer.identity.envelope`) valid for 7 days and re-signed well before;
clients verify it against the DID they expect and reject expired, tampered or
DID-mismatched manifests.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence

import attrs

from .._version import __version__
from ..errors import DidMismatch, PeerInvalid
from ..identity.envelope import VerifiedDocument, sign_document, verify_document
from ..identity.keys import SigningKey

PROTOCOL = "fedpeer/1"
MANIFEST_TYPE = "fedpeer-federation-manifest"
FEEDS = ("normal", "longpoll", "continuous")
ENCODINGS = ("application/cbor", "application/json")

ENDPOINTS = {
    "well_known": "/.well-known/fedpeer",
    "changes": "/v1/sync/changes",
    "records": "/v1/sync/records",
    "append": "/v1/records",
    "invites": "/v1/invites",
    "openapi": "/v1/openapi.json",
}


def capabilities(*, did: str, max_record_bytes: int, page_limit_max: int) -> dict[str, object]:
    """The unsigned capabilities manifest (also served at ``/v1/capabilities``)."""
    return {
        "protocol": PROTOCOL,
        "software": {"name": "fedpeer", "version": __version__},
        "did": did,
        "feeds": list(FEEDS),
        "encodings": list(ENCODINGS),
        "limits": {"max_record_bytes": max_record_bytes, "page_limit_max": page_limit_max},
        "scopes": ["records:read", "records:write", "sync:read", "admin"],
        "holder_types": ["guest", "federated"],
    }


def federation_body(
    *,
    did: str,
    handle: str,
    urls: list[str],
    namespaces: list[str],
    consent: Mapping[str, object],
    tls_pins: Sequence[str] = (),
) -> dict[str, object]:
    """The content of the federation manifest before signing.

    Endpoints are paths relative to any of ``urls`` so the document does not
    depend on scheme or on which address a client used. ``tls_pins`` (the SPKI
    hashes of the certificate served now and of an announced next one, §6.6)
    become ``tls_spki_sha256``; a node serving plain HTTP has none.
    """
    body: dict[str, object] = {
        "type": MANIFEST_TYPE,
        "v": 1,
        "did": did,
        "handle": handle,
        "urls": list(urls),
        "endpoints": dict(ENDPOINTS),
        "namespaces": list(namespaces),
        "consent": dict(consent),
    }
    if tls_pins:
        body["tls_spki_sha256"] = list(tls_pins)
    return body


_PIN_RE = re.compile(r"[A-Za-z0-9_-]{43}")
MAX_PINS = 4


def manifest_pins(doc: Mapping[str, object]) -> frozenset[str]:
    """The TLS pins a verified federation manifest lists (``tls_spki_sha256``: a
    list of 1..4 base64url SHA-256 values, §6.6); empty when absent. PeerInvalid
    for a malformed member."""
    raw = doc.get("tls_spki_sha256")
    if raw is None:
        return frozenset()
    if (
        not isinstance(raw, list)
        or not 1 <= len(raw) <= MAX_PINS
        or not all(isinstance(p, str) and _PIN_RE.fullmatch(p) for p in raw)
    ):
        raise PeerInvalid(
            "the manifest's tls_spki_sha256 is not a list of 1..4 base64url SHA-256 values"
        )
    return frozenset(raw)


@attrs.define
class ManifestSigner:
    """Keeps one signed manifest and re-signs it when content changes or it ages.

    ``current(body)`` is cheap when nothing changed: the signed copy is reused
    until ``resign_after_s`` has passed (well before the 7-day expiry).
    """

    key: SigningKey
    ttl_s: int
    resign_after_s: int
    _body: dict[str, object] | None = None
    _signed: dict[str, object] | None = None
    _signed_at: float = 0.0

    def current(self, body: dict[str, object], now: float | None = None) -> dict[str, object]:
        now = time.time() if now is None else now
        if (
            self._signed is None
            or body != self._body
            or now - self._signed_at >= self.resign_after_s
        ):
            self._signed = sign_document(body, self.key, ttl_s=self.ttl_s, now=now)
            self._body = body
            self._signed_at = now
        return self._signed


def verify_manifest(
    well_known: object, *, expected_did: str | None = None, now: float | None = None
) -> VerifiedDocument:
    """Verify a ``/.well-known/fedpeer`` body; return the verified federation manifest.

    Raises BadSignature, SignatureExpired, SignatureNotYetValid, KeyUnknown,
    DidMismatch (signed by another DID than expected, or the ``did`` member
    differs from the signer), PeerInvalid (not a fedpeer manifest at all).
    """
    if not isinstance(well_known, dict) or not isinstance(
        well_known.get("federation_manifest"), dict
    ):
        raise PeerInvalid("the peer's /.well-known/fedpeer has no federation_manifest")
    doc = well_known["federation_manifest"]
    verified = verify_document(doc, expected_did=expected_did, now=now)
    if doc.get("type") != MANIFEST_TYPE:
        raise PeerInvalid("the peer's federation manifest has the wrong type")
    if doc.get("did") != verified.did:
        raise DidMismatch(
            f"manifest names {doc.get('did')!r} but is signed by {verified.did}; "
            "the peer is misconfigured or an impostor"
        )
    return verified
