"""Unpairing (protocol.md §11.3): the signed request one node sends the other, and
what each side drops. Sans-I/O: building and checking the request, and the state
transaction that revokes a peer's credentials; the service does the HTTP.

The request is a signed JSON document (protocol.md §4)::

    {"type": "fedpeer.unpair", "from": <sender DID>, "to": <receiver DID>,
     "nonce": <22+ base64url characters>, "signature": {...}}

valid for at most :data:`MAX_VALIDITY_S` and used once (the receiver remembers
``from`` + ``nonce`` until it expires). It needs no bearer: the signature of
``from`` is the authentication, and all it can ask is that the receiver forget
the sender.

Only a request that has something to forget (:func:`known_peer`) is remembered:
anyone can sign requests with fresh DIDs, and those change nothing, so they
store nothing (the nonce table holds one row per real unpairing of the last
minutes, not one per request an attacker sends).
"""

from __future__ import annotations

import os

from ..consent import tokens as _tokens
from ..consent.invites import RECIPROCAL_TABLE, revoke_credential
from ..errors import DidInvalid, InvalidRequest, Malformed, ProofReplayed
from ..identity._b64 import b64url_encode
from ..identity.didkey import public_key_from_did
from ..identity.envelope import sign_document, verify_document
from ..identity.keys import SigningKey
from ..store.base import StateTx

__all__ = [
    "MAX_VALIDITY_S",
    "NONCE_TABLE",
    "PAIR_CREDENTIALS_TABLE",
    "UNPAIR_TYPE",
    "build_unpair_request",
    "check_unpair_request",
    "check_unused",
    "forget_peer",
    "known_peer",
    "remember_nonce",
]

UNPAIR_TYPE = "fedpeer.unpair"
REQUEST_TTL_S = 60
MAX_VALIDITY_S = 300
NONCE_TABLE = "unpair_nonces"
PAIR_CREDENTIALS_TABLE = "pair_credentials"
"""Per peer DID, the reciprocal credential this node minted for it when pairing
(``{sa_id, grant_id}``): re-pairing replaces it, unpairing revokes it."""

_FIELDS = {"type", "from", "to", "nonce", "signature"}


def build_unpair_request(
    key: SigningKey, peer_did: str, *, now: float | None = None
) -> dict[str, object]:
    """The signed request asking ``peer_did`` to forget ``key``'s node. Pure CPU
    (plus 16 random bytes)."""
    doc: dict[str, object] = {
        "type": UNPAIR_TYPE,
        "from": key.did,
        "to": peer_did,
        "nonce": b64url_encode(os.urandom(16)),
    }
    return sign_document(doc, key, ttl_s=REQUEST_TTL_S, now=now)


def check_unpair_request(
    doc: object, *, local_did: str, now: float | None = None
) -> tuple[str, str, int]:
    """Check an unpair request addressed to ``local_did``; return ``(sender DID,
    nonce, expiry in unix ms)``.

    Checks, in this order (protocol.md §11.3): a JSON object (MALFORMED); exactly
    the members, and the type (INVALID_REQUEST); ``from`` an Ed25519 did:key
    (DID_INVALID); ``to`` this node and the nonce's length (INVALID_REQUEST); the
    signature (protocol.md §4.4: BAD_SIGNATURE, DID_MISMATCH, SIGNATURE_EXPIRED,
    SIGNATURE_NOT_YET_VALID, KEY_UNKNOWN); a validity of at most
    :data:`MAX_VALIDITY_S` (INVALID_REQUEST). Pure CPU.
    """
    if not isinstance(doc, dict):
        raise Malformed("an unpair request is a JSON object (protocol.md §6.2, §11.3)")
    if set(doc) != _FIELDS:
        raise InvalidRequest(
            f"an unpair request is a signed object with exactly {sorted(_FIELDS)} "
            "(protocol.md §11.3)"
        )
    if doc["type"] != UNPAIR_TYPE:
        raise InvalidRequest(f"type must be {UNPAIR_TYPE!r}")
    sender, to, nonce = doc["from"], doc["to"], doc["nonce"]
    if not isinstance(sender, str):
        raise DidInvalid("from must be the sender's did:key")
    public_key_from_did(sender)  # DID_INVALID
    if not isinstance(to, str) or to != local_did:
        raise InvalidRequest(
            f"this unpair request is addressed to {str(to)[:80]}, not to this node"
        )
    if not isinstance(nonce, str) or not 16 <= len(nonce) <= 64:
        raise InvalidRequest("nonce must be a string of 16 to 64 characters")
    verified = verify_document(doc, expected_did=sender, now=now)
    if verified.expires_at - verified.signed_at > MAX_VALIDITY_S:
        raise InvalidRequest(f"an unpair request may be valid for at most {MAX_VALIDITY_S} s")
    return sender, nonce, int(verified.expires_at * 1000) + MAX_VALIDITY_S * 1000


def _nonce_key(sender: str, nonce: str) -> str:
    return f"{sender}#{nonce}"


def check_unused(tx: StateTx, sender: str, nonce: str) -> None:
    """PROOF_REPLAYED when this request was acted on before (and is remembered)."""
    if tx.get(NONCE_TABLE, _nonce_key(sender, nonce)) is not None:
        raise ProofReplayed("this unpair request was already used; sign a new one")


def remember_nonce(tx: StateTx, sender: str, nonce: str, expires_ms: int, now_ms: int) -> None:
    """Record a used request (PROOF_REPLAYED when it was used before); drop expired ones."""
    check_unused(tx, sender, nonce)
    for key, row in list(tx.list(NONCE_TABLE)):
        exp = row.get("expires_ms")
        if not isinstance(exp, int) or exp < now_ms:
            tx.delete(NONCE_TABLE, key)
    tx.put(NONCE_TABLE, _nonce_key(sender, nonce), {"expires_ms": expires_ms})


def known_peer(tx: StateTx, peer_did: str) -> bool:
    """True when :func:`forget_peer` has something to drop for ``peer_did``: an
    active service account it holds, or a reciprocal/pair credential row."""
    if tx.get(RECIPROCAL_TABLE, peer_did) is not None:
        return True
    if tx.get(PAIR_CREDENTIALS_TABLE, peer_did) is not None:
        return True
    return any(
        sa.holder_did == peer_did for sa in _tokens.list_service_accounts(tx, include_revoked=False)
    )


def forget_peer(tx: StateTx, peer_did: str, *, now_ms: int | None = None) -> list[str]:
    """Revoke every service account ``peer_did`` holds on this node (its tokens stop
    working at once), delete the grants bound to them, and drop the reciprocal
    credential the peer handed over and the one minted for it. Returns the revoked
    account ids. Synchronous; run it in ``Store.transact``."""
    revoked = [
        sa.id
        for sa in _tokens.list_service_accounts(tx, include_revoked=False)
        if sa.holder_did == peer_did and revoke_credential(tx, sa.id, now_ms=now_ms)
    ]
    if tx.get(RECIPROCAL_TABLE, peer_did) is not None:
        tx.delete(RECIPROCAL_TABLE, peer_did)
    if tx.get(PAIR_CREDENTIALS_TABLE, peer_did) is not None:
        tx.delete(PAIR_CREDENTIALS_TABLE, peer_did)
    if revoked:
        tx.audit({"type": "sync.unpaired", "peer_did": peer_did, "revoked_sa_ids": revoked})
    return revoked
