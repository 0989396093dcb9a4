"""Invites: signed, single- or multi-use offers of a grant, redeemed by a guest or a peer.

Theory of operation
-------------------
An admin *issues* an invite (:func:`create_invite`): a random ``invite_id``
(32 hex chars, public), a random *secret* (43 base64url chars, 256 bits, shown
once, stored only as its SHA-256) and a document signed by the node (JCS +
Ed25519, :func:`fedpeer.identity.envelope.sign_document`) that states what the
invite offers: scopes, scope target, accepted holder types, uses, expiry. The
invite URL carries everything a redeemer needs::

    https://host:port/v1/invites/<invite_id>?issuer=<issuer did>&pin=<tls pin>#secret=<secret>

It is an ordinary HTTP URL: opening it does a GET of the public preview, and the
secret sits in the *fragment*, which HTTP clients never send to a server (so it
is never in a request line or an access log). :func:`parse_invite_url` reads it
back. The issuer DID lets the redeemer check, through the signed manifest, that
it is talking to the node that issued the invite and not to an impostor on the
LAN.

*Redeeming* (:func:`redeem_in_tx`) trades the secret plus a holder identity for
a service account bound to the holder's DID (origin ``invite:<id>``), a grant
for the invite's scope target bound to that account, and a bearer token with an
expiry. Two holder types:

- ``guest``: the holder sends its Ed25519 public key; its DID is the did:key of
  that key. A guest proves nothing about the key, so its account only ever sees
  the grants bound to that account (never other grants of the same DID);
- ``federated``: the holder sends its DID and a proof: its Ed25519 signature
  (base64url) over the JCS form of :func:`redeem_proof_payload`
  ``{invite_id, audience: issuer DID, holder_did, issued_at_ms, purpose:
  "fedpeer-invite-redeem-v1"}``. The purpose string separates this signature
  from anything else the key signs; the invite id and audience bind it to one
  invite on one node. The key is found through the DID resolver (did:key
  offline). The proof must be fresh (``issued_at_ms`` within ±60 s of the
  issuer's clock) and is usable once: a hash of each used proof is stored in
  the ``proofs`` table in the redeeming transaction.

**Atomicity.** Every check that decides the outcome (state, secret, holder type,
proof replay, remaining uses) is re-done inside the one ``Store.transact`` that
also decrements the uses and creates the account, grant and token; transactions
are serialised, so N concurrent redeems of a single-use invite give exactly one
success and N-1 ``INVITE_EXHAUSTED``. Checks that need I/O (resolving a DID)
run before the transaction; they cannot be invalidated by a concurrent redeem.

**Folded state** (:meth:`Invite.state`), in this precedence: ``revoked`` (an
admin revoked it), ``exhausted`` (no uses left), ``expired`` (past
``expires_ms``), else ``active``. Redeem errors follow the same order:
``INVITE_NOT_FOUND``, ``INVITE_REVOKED``, ``INVITE_EXHAUSTED``,
``INVITE_EXPIRED``, ``INVITE_SECRET_INVALID``, ``HOLDER_TYPE_MISMATCH``, then
the holder checks (``KEY_UNKNOWN``, ``BAD_PROOF``, ``FRESHNESS_VIOLATION``,
``PROOF_REPLAYED``).

**Revoking** an invite (:func:`revoke_invite`) marks it revoked and revokes
every service account (so every token) it produced, removes the grants it
created and the reciprocal credentials it received. It is idempotent.

**Reciprocal credential** (the hook for bidirectional pairing): a redeem body
may carry ``reciprocal: {token, scopes, url}``, a bearer the redeemer minted for
the issuer. It is stored in state table ``reciprocal`` under the holder's DID
(``{holder_did, invite_id, sa_id, token, scopes, url, received_ms}``) for the
pair engine to pick up; nothing else reads it yet.

State rows: ``invites/<invite_id>`` (see :class:`Invite`), ``proofs/<sha256
hex>``, ``invite_accounts/<sa_id>`` (``{sa_id, invite_id, holder_type,
holder_did, created_ms}``: how the consent view knows a guest account),
``reciprocal/<holder_did>``. Audit events: ``invite.issued``,
``invite.redeemed``, ``invite.redeem_rejected`` (with ``reason``, the error
code), ``invite.revoked``; none ever holds a secret, a hash of one, or a proof.

Pure logic and synchronous transaction functions; the one async function,
:func:`holder_public_keys`, awaits a DID resolver.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal

import attrs

from .._clock import now_ms as _now_ms
from ..errors import (
    BadProof,
    BadSignature,
    DidInvalid,
    FedpeerError,
    FreshnessViolation,
    HolderTypeMismatch,
    InvalidRequest,
    InviteExhausted,
    InviteExpired,
    InviteNotFound,
    InviteRevoked,
    InviteSecretInvalid,
    KeyUnknown,
    Malformed,
    PairSelf,
    ProofReplayed,
    ServiceAccountNotFound,
    StoreCorrupt,
)
from ..identity._syntax import is_did
from ..identity.canonical import b64url_decode, b64url_encode, jcs
from ..identity.didkey import (
    DID_KEY_PREFIX,
    did_from_public_key,
    ed25519_from_multibase,
    public_key_from_did,
)
from ..identity.envelope import sign_document
from ..identity.keys import SigningKey, is_valid_public_key, verify_signature
from . import grants as _grants
from . import tokens as _tokens
from .grants import Target, parse_target
from .scopes import ALL_SCOPES, parse_scopes, scopes_to_list

if TYPE_CHECKING:
    from ..identity.resolver import Resolver
    from ..store.base import StateTx

__all__ = [
    "ACCOUNT_TABLE",
    "FRESHNESS_MS",
    "HOLDER_TYPES",
    "INVITE_DOC_TYPE",
    "INVITE_TABLE",
    "PROOF_PURPOSE",
    "PROOF_TABLE",
    "RECIPROCAL_TABLE",
    "Credential",
    "Invite",
    "InviteParams",
    "InviteState",
    "InviteUrl",
    "IssuedInvite",
    "Reciprocal",
    "RedeemRequest",
    "Redeemed",
    "audit_rejected",
    "bulk_revoke",
    "check_invite_preview",
    "check_redeemable",
    "confirmation_code",
    "create_invite",
    "credential_from_answer",
    "get_invite",
    "hash_secret",
    "holder_public_keys",
    "invite_url",
    "list_invites",
    "parse_invite_params",
    "parse_invite_url",
    "parse_redeem_request",
    "proof_hash",
    "proof_signature",
    "redeem_in_tx",
    "redeem_proof_payload",
    "revoke_credential",
    "revoke_invite",
    "sign_redeem_proof",
    "verify_redeem_proof",
]

INVITE_TABLE = "invites"
PROOF_TABLE = "proofs"
ACCOUNT_TABLE = "invite_accounts"
RECIPROCAL_TABLE = "reciprocal"

INVITE_DOC_TYPE = "fedpeer-invite"
PROOF_PURPOSE = "fedpeer-invite-redeem-v1"
FRESHNESS_MS = 60_000
"""A federated proof's ``issued_at_ms`` must be within this many ms of the issuer's clock."""

HolderType = Literal["guest", "federated"]
HOLDER_TYPES: tuple[HolderType, ...] = ("guest", "federated")
InviteState = Literal["active", "expired", "exhausted", "revoked"]
INVITE_STATES: tuple[InviteState, ...] = ("active", "expired", "exhausted", "revoked")

DEFAULT_TTL_S = 24 * 3600
MIN_TTL_S = 60
MAX_TTL_S = 90 * 24 * 3600
MAX_USES = 1000
DEFAULT_TOKEN_TTL_S = 30 * 24 * 3600
MAX_TOKEN_TTL_S = 366 * 24 * 3600
_MAX_LABEL = 128
_MAX_NOTES = 2000
_MAX_URL = 2048
_MAX_TOKEN = 512

_INVITE_ID_RE = re.compile(r"[0-9a-f]{32}")
_SECRET_RE = re.compile(r"[A-Za-z0-9_-]{43}")
_SA_ID_RE = re.compile(r"[0-9a-f]{20}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def valid_invite_id(invite_id: object) -> bool:
    """Whether ``invite_id`` has the shape of an invite id (32 lowercase hex)."""
    return isinstance(invite_id, str) and _INVITE_ID_RE.fullmatch(invite_id) is not None


def _check_did(did: object, what: str = "holder_did") -> str:
    if not is_did(did):
        raise DidInvalid(f"{what} must be a DID such as did:key:z6Mk...")
    return did


def _check_text(value: object, what: str, max_len: int, *, multiline: bool = False) -> str:
    if not isinstance(value, str) or len(value) > max_len:
        raise InvalidRequest(f"{what} must be a string of at most {max_len} characters")
    text = value.replace("\n", "").replace("\t", "") if multiline else value
    if not text.isprintable():
        raise InvalidRequest(f"{what} must be printable text")
    return value


# --- secrets, URLs, codes ----------------------------------------------------------


def new_invite_secret() -> str:
    """A fresh invite secret: 32 random bytes as 43 base64url characters."""
    return b64url_encode(secrets.token_bytes(32))


def hash_secret(secret: str) -> str:
    """Lowercase hex SHA-256 of the secret's ASCII bytes (what is stored)."""
    return hashlib.sha256(secret.encode("utf-8", "replace")).hexdigest()


@attrs.frozen
class InviteUrl:
    """The parts of an invite URL. ``secret`` is kept out of ``repr``."""

    node_url: str
    invite_id: str
    issuer_did: str
    secret: str = attrs.field(repr=False)
    pin: str | None = None


def invite_url(
    node_url: str, invite_id: str, issuer_did: str, secret: str, pin: str | None = None
) -> str:
    """The invite URL: ``<node_url>/v1/invites/<id>?issuer=<did>[&pin=<pin>]#secret=<secret>``.

    ``node_url`` is ``http(s)://host:port`` with an optional path prefix (no
    trailing slash needed). ``pin`` is the issuer's TLS pin (SPKI SHA-256,
    base64url, docs/protocol.md §6.6) for an https URL. Pure.
    """
    base = node_url.rstrip("/")
    issuer = urllib.parse.quote(issuer_did, safe=":")
    tail = f"&pin={pin}" if pin else ""
    return f"{base}/v1/invites/{invite_id}?issuer={issuer}{tail}#secret={secret}"


def parse_invite_url(url: str) -> InviteUrl:
    """Read an invite URL made by :func:`invite_url`.

    Requires an ``http``/``https`` URL with a host, a path ending in
    ``/v1/invites/<32 hex>``, exactly one ``issuer`` query parameter holding a
    DID, at most one ``pin`` (43 base64url chars: the issuer's TLS pin, §6.6)
    and a fragment ``secret=<43 base64url chars>``. Raises ``MALFORMED``
    (with what is missing) for anything else; ``DID_INVALID`` for a bad issuer.
    Pure.
    """
    if not isinstance(url, str) or len(url) > 4096:
        raise Malformed("an invite URL is a string like http://host:port/v1/invites/<id>?...")
    try:
        parts = urllib.parse.urlsplit(url.strip())
        _ = parts.port  # raises ValueError for a bad port
    except ValueError:
        raise Malformed("the invite URL does not parse") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Malformed("an invite URL starts with http:// or https:// and names a host")
    prefix, sep, invite_id = parts.path.rpartition("/v1/invites/")
    if not sep or not valid_invite_id(invite_id):
        raise Malformed("the invite URL's path must end in /v1/invites/<invite id>")
    query = urllib.parse.parse_qs(parts.query, keep_blank_values=True, strict_parsing=False)
    issuers = query.get("issuer", [])
    if len(issuers) != 1:
        raise Malformed("the invite URL must carry the issuer DID (?issuer=did:...)")
    issuer = _check_did(issuers[0], "the invite URL's issuer")
    pins = query.get("pin", [])
    if len(pins) > 1 or (pins and not _SECRET_RE.fullmatch(pins[0])):
        raise Malformed("the invite URL's pin must be one 43-character base64url value")
    fragment = urllib.parse.parse_qs(parts.fragment, keep_blank_values=True)
    secret_values = fragment.get("secret", [])
    if len(secret_values) != 1 or not _SECRET_RE.fullmatch(secret_values[0]):
        raise Malformed(
            "the invite URL has no valid secret after '#'; copy the whole URL, fragment included"
        )
    node_url = urllib.parse.urlunsplit((parts.scheme, parts.netloc, prefix, "", ""))
    return InviteUrl(
        node_url=node_url,
        invite_id=invite_id,
        issuer_did=issuer,
        secret=secret_values[0],
        pin=pins[0] if pins else None,
    )


def confirmation_code(issuer_did: str, holder_did: str, invite_id: str) -> str:
    """A 6-digit code both sides compute and people compare when pairing in person.

    ``SHA-256(JCS([issuer_did, holder_did, invite_id]))``, first 8 bytes as a
    big-endian integer, modulo 10**6, zero-padded. Order matters (issuer first).
    Pure.
    """
    digest = hashlib.sha256(jcs([issuer_did, holder_did, invite_id])).digest()
    return f"{int.from_bytes(digest[:8], 'big') % 1_000_000:06d}"


# --- federated proofs ----------------------------------------------------------------


def redeem_proof_payload(
    *, invite_id: str, audience: str, holder_did: str, issued_at_ms: int
) -> dict[str, object]:
    """The object a federated holder signs (its JCS form) to redeem ``invite_id``.

    ``{invite_id, audience (the issuer DID), holder_did, issued_at_ms, purpose:
    "fedpeer-invite-redeem-v1"}``. Pure.
    """
    return {
        "invite_id": invite_id,
        "audience": audience,
        "holder_did": holder_did,
        "issued_at_ms": issued_at_ms,
        "purpose": PROOF_PURPOSE,
    }


def sign_redeem_proof(
    key: SigningKey, *, invite_id: str, audience: str, issued_at_ms: int | None = None
) -> tuple[str, int]:
    """Sign a redeem proof as ``key``'s did:key; returns ``(proof base64url, issued_at_ms)``.

    ``issued_at_ms`` defaults to the wall clock. Pure CPU.
    """
    issued = _now_ms(issued_at_ms)
    payload = redeem_proof_payload(
        invite_id=invite_id, audience=audience, holder_did=key.did, issued_at_ms=issued
    )
    return b64url_encode(key.sign(jcs(payload))), issued


def proof_signature(proof: object) -> bytes:
    """The 64 signature bytes of a ``holder_proof``: the shape check of
    :func:`verify_redeem_proof`, cheap enough to run before the holder DID is
    resolved. Raises ``BAD_PROOF``. Pure."""
    if not isinstance(proof, str):
        raise BadProof("holder_proof must be a base64url string")
    try:
        signature = b64url_decode(proof)
    except FedpeerError:
        raise BadProof("holder_proof is not base64url without padding") from None
    if len(signature) != 64:
        raise BadProof("holder_proof must be a 64-byte Ed25519 signature")
    return signature


def verify_redeem_proof(
    public_keys: Sequence[bytes],
    proof: str,
    *,
    invite_id: str,
    audience: str,
    holder_did: str,
    issued_at_ms: int,
    now_ms: int | None = None,
    window_ms: int = FRESHNESS_MS,
) -> bytes:
    """Check a federated holder's proof; return the 64 signature bytes.

    The proof must verify, under one of ``public_keys`` (the holder DID's
    authentication keys), over the JCS form of :func:`redeem_proof_payload` with
    *this* ``invite_id`` and ``audience`` (so a proof for another invite, another
    node or another purpose fails); then ``issued_at_ms`` must be within
    ``window_ms`` of ``now_ms`` (both directions, inclusive).

    Raises ``BAD_PROOF`` (not base64url, not 64 bytes, verifies under no key),
    ``KEY_UNKNOWN`` (no usable key at all) or ``FRESHNESS_VIOLATION``. Pure CPU.
    """
    signature = proof_signature(proof)
    message = jcs(
        redeem_proof_payload(
            invite_id=invite_id,
            audience=audience,
            holder_did=holder_did,
            issued_at_ms=issued_at_ms,
        )
    )
    usable = [k for k in public_keys if is_valid_public_key(k)]
    if not usable:
        raise KeyUnknown("the holder DID has no usable Ed25519 key")
    for key in usable:
        try:
            verify_signature(key, message, signature)
        except BadSignature:
            continue
        break
    else:
        raise BadProof(
            "holder_proof does not verify: sign the JCS form of {invite_id, audience: the "
            f"issuer DID, holder_did, issued_at_ms, purpose: {PROOF_PURPOSE!r}}} with the "
            "holder DID's key"
        )
    now = _now_ms(now_ms)
    if abs(now - issued_at_ms) > window_ms:
        raise FreshnessViolation(
            f"holder_proof was issued {(now - issued_at_ms) / 1000:+.0f} s from the issuer's "
            f"clock; it must be within ±{window_ms // 1000} s: check the clock and sign anew"
        )
    return signature


def proof_hash(holder_did: str, issued_at_ms: int, signature: bytes) -> str:
    """The replay-table key of a used proof: hex SHA-256 of JCS [did, issued_at, sig]."""
    return hashlib.sha256(jcs([holder_did, issued_at_ms, b64url_encode(signature)])).hexdigest()


async def holder_public_keys(resolver: Resolver, holder_did: str) -> list[bytes]:
    """The Ed25519 keys that may sign for ``holder_did`` (its authentication methods).

    A did:key gives its own key without I/O. Other DIDs are resolved through
    ``resolver``; every ``authentication`` method (embedded or referenced) with a
    readable Ed25519 key counts. Raises ``KEY_UNKNOWN`` when resolution fails or
    no usable key is found (the cause is chained), ``DID_INVALID`` for a DID that
    does not parse. May do network I/O (did:web); cancellable.
    """
    from ..identity.resolver import find_verification_method, public_key_from_method

    _check_did(holder_did)
    if holder_did.startswith(DID_KEY_PREFIX):
        try:
            return [public_key_from_did(holder_did)]
        except DidInvalid as err:
            raise KeyUnknown(f"holder_did is not a valid Ed25519 did:key: {err.message}") from err
    try:
        doc = await resolver.resolve(holder_did)
    except FedpeerError as err:
        # The cause stays chained (the node logs it), not in the message: a redeemer
        # names the DID, and the reason a fetch failed (refused, timed out, answered
        # some status) would tell it what listens where on the issuer's network.
        raise KeyUnknown("cannot resolve the holder DID to a document") from err
    keys: list[bytes] = []
    entries = doc.get("authentication")
    for entry in entries if isinstance(entries, list) else []:
        try:
            if isinstance(entry, str):
                key_id = holder_did + entry if entry.startswith("#") else entry
                method = find_verification_method(doc, key_id)
            elif isinstance(entry, dict):
                method = entry
            else:
                continue
            keys.append(public_key_from_method(method))
        except FedpeerError:
            continue
    if not keys:
        raise KeyUnknown("the holder DID document has no usable Ed25519 authentication key")
    return keys


# --- invite values -----------------------------------------------------------------


@attrs.frozen
class InviteParams:
    """What an admin asks for when issuing an invite (validated; see
    :func:`parse_invite_params` for the JSON form and defaults)."""

    ttl_s: int = DEFAULT_TTL_S
    max_uses: int = 1
    scopes: frozenset[str] = frozenset(parse_scopes(["reader"]))
    target: Target = attrs.field(factory=lambda: Target("instance"))
    accept_holder_types: tuple[HolderType, ...] = HOLDER_TYPES
    token_ttl_s: int = DEFAULT_TOKEN_TTL_S
    device_label: str | None = None
    notes: str | None = None


def _positive_int(value: object, what: str, low: int, high: int) -> int:
    if not _is_int(value) or not low <= value <= high:  # type: ignore[operator]
        raise InvalidRequest(f"{what} must be a whole number from {low} to {high}")
    assert isinstance(value, int)
    return value


def parse_invite_params(obj: Mapping[str, object]) -> InviteParams:
    """Validate the JSON body of ``POST /v1/invites``.

    Fields (all optional): ``ttl_s`` (60 .. 90 days, default 1 day), ``max_uses``
    (1 .. 1000, default 1), ``scopes`` (scope or preset names, default
    ``["reader"]``), ``scope_target`` (a target object, see
    :func:`fedpeer.consent.grants.parse_target`, or the string ``"instance"``;
    default instance), ``accept_holder_types`` (non-empty subset of ``guest``,
    ``federated``; default both), ``token_ttl_s`` (lifetime of each bearer the
    invite mints, 60 s .. 366 days, default 30 days), ``device_label`` (<= 128
    printable chars, shown in the preview), ``notes`` (<= 2000 chars, admin
    only). Unknown fields other than ``base_url`` are refused. Raises
    ``INVALID_REQUEST``. Pure.
    """
    allowed = {
        "ttl_s",
        "max_uses",
        "scopes",
        "scope_target",
        "accept_holder_types",
        "token_ttl_s",
        "device_label",
        "notes",
        "base_url",
    }
    extra = set(obj) - allowed
    if extra:
        raise InvalidRequest(
            f"unknown invite fields {sorted(str(k) for k in extra)[:5]}; allowed: {sorted(allowed)}"
        )
    ttl_s = _positive_int(obj.get("ttl_s", DEFAULT_TTL_S), "ttl_s", MIN_TTL_S, MAX_TTL_S)
    max_uses = _positive_int(obj.get("max_uses", 1), "max_uses", 1, MAX_USES)
    token_ttl_s = _positive_int(
        obj.get("token_ttl_s", DEFAULT_TOKEN_TTL_S), "token_ttl_s", 60, MAX_TOKEN_TTL_S
    )
    raw_scopes = obj.get("scopes", ["reader"])
    if not isinstance(raw_scopes, list):
        raise InvalidRequest("scopes must be a list of scope or preset names")
    scopes = parse_scopes(raw_scopes)
    raw_target = obj.get("scope_target", {"type": "instance"})
    target = parse_target({"type": "instance"} if raw_target == "instance" else raw_target)
    raw_types = obj.get("accept_holder_types", list(HOLDER_TYPES))
    if (
        not isinstance(raw_types, list)
        or not raw_types
        or not all(t in HOLDER_TYPES for t in raw_types)
    ):
        raise InvalidRequest("accept_holder_types must be a non-empty list of guest, federated")
    types = tuple(t for t in HOLDER_TYPES if t in raw_types)
    label = obj.get("device_label")
    if label is not None:
        label = _check_text(label, "device_label", _MAX_LABEL)
    notes = obj.get("notes")
    if notes is not None:
        notes = _check_text(notes, "notes", _MAX_NOTES, multiline=True)
    return InviteParams(
        ttl_s=ttl_s,
        max_uses=max_uses,
        scopes=scopes,
        target=target,
        accept_holder_types=types,
        token_ttl_s=token_ttl_s,
        device_label=label,
        notes=notes,
    )


@attrs.frozen
class Invite:
    """An invite as stored (``secret_hash`` never leaves the node).

    ``uses`` counts successful redemptions; ``sa_ids`` are the service accounts
    they created; ``document`` is the signed invite document (public).
    """

    invite_id: str
    issuer_did: str
    created_ms: int
    expires_ms: int
    max_uses: int
    uses: int
    scopes: frozenset[str]
    target: Target
    accept_holder_types: tuple[HolderType, ...]
    token_ttl_s: int
    device_label: str | None
    notes: str | None
    secret_hash: str = attrs.field(repr=False)
    document: dict[str, object] = attrs.field(eq=False, repr=False)
    revoked_ms: int | None = None
    sa_ids: tuple[str, ...] = ()
    last_redeemed_ms: int | None = None

    @property
    def uses_remaining(self) -> int:
        return max(0, self.max_uses - self.uses)

    def state(self, now_ms: int | None = None) -> InviteState:
        """The folded state: revoked > exhausted > expired > active."""
        if self.revoked_ms is not None:
            return "revoked"
        if self.uses >= self.max_uses:
            return "exhausted"
        if _now_ms(now_ms) >= self.expires_ms:
            return "expired"
        return "active"

    def to_row(self) -> dict[str, object]:
        """The stored row."""
        return {
            "invite_id": self.invite_id,
            "issuer_did": self.issuer_did,
            "created_ms": self.created_ms,
            "expires_ms": self.expires_ms,
            "max_uses": self.max_uses,
            "uses": self.uses,
            "scopes": scopes_to_list(self.scopes),
            "scope_target": self.target.to_dict(),
            "accept_holder_types": list(self.accept_holder_types),
            "token_ttl_s": self.token_ttl_s,
            "device_label": self.device_label,
            "notes": self.notes,
            "secret_hash": self.secret_hash,
            "document": self.document,
            "revoked_ms": self.revoked_ms,
            "sa_ids": list(self.sa_ids),
            "last_redeemed_ms": self.last_redeemed_ms,
        }

    def to_admin_dict(self, now_ms: int | None = None) -> dict[str, object]:
        """The admin listing form: everything but the secret hash and the document."""
        return {
            "invite_id": self.invite_id,
            "state": self.state(now_ms),
            "issuer_did": self.issuer_did,
            "created_ms": self.created_ms,
            "expires_ms": self.expires_ms,
            "max_uses": self.max_uses,
            "uses": self.uses,
            "uses_remaining": self.uses_remaining,
            "scopes": scopes_to_list(self.scopes),
            "scope_target": self.target.to_dict(),
            "accept_holder_types": list(self.accept_holder_types),
            "token_ttl_s": self.token_ttl_s,
            "device_label": self.device_label,
            "notes": self.notes,
            "revoked_ms": self.revoked_ms,
            "service_account_ids": list(self.sa_ids),
            "last_redeemed_ms": self.last_redeemed_ms,
        }

    def to_preview(self, now_ms: int | None = None) -> dict[str, object]:
        """The public preview: issuer, scopes, target, expiry, state, the signed
        document. No secret, no hash, no notes, no account ids."""
        return {
            "invite_id": self.invite_id,
            "issuer_did": self.issuer_did,
            "state": self.state(now_ms),
            "expires_ms": self.expires_ms,
            "uses_remaining": self.uses_remaining,
            "scopes": scopes_to_list(self.scopes),
            "scope_target": self.target.to_dict(),
            "accept_holder_types": list(self.accept_holder_types),
            "device_label": self.device_label,
            "invite": self.document,
        }


def _corrupt(what: str) -> StoreCorrupt:
    return StoreCorrupt(f"a stored invite row is damaged ({what})")


def _row_int(row: Mapping[str, object], key: str) -> int:
    value = row.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise _corrupt(f"{key} is not an integer")
    return value


def _row_opt_int(row: Mapping[str, object], key: str) -> int | None:
    value = row.get(key)
    if value is None:
        return None
    return _row_int(row, key)


def _row_opt_str(row: Mapping[str, object], key: str) -> str | None:
    value = row.get(key)
    if value is not None and not isinstance(value, str):
        raise _corrupt(f"{key} is not a string")
    return value


def _row_list(row: Mapping[str, object], key: str) -> list[str]:
    value = row.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _corrupt(f"{key} is not a list of strings")
    return [str(v) for v in value]


def _invite_from_row(row: Mapping[str, object]) -> Invite:
    document = row.get("document")
    if not isinstance(document, dict):
        raise _corrupt("document is not an object")
    invite_id, issuer, secret_hash = (
        row.get("invite_id"),
        row.get("issuer_did"),
        row.get("secret_hash"),
    )
    if not (
        isinstance(invite_id, str) and isinstance(issuer, str) and isinstance(secret_hash, str)
    ):
        raise _corrupt("invite_id, issuer_did or secret_hash missing")
    try:
        target = parse_target(row.get("scope_target"))
    except InvalidRequest:
        raise _corrupt("scope_target") from None
    types = _row_list(row, "accept_holder_types")
    return Invite(
        invite_id=invite_id,
        issuer_did=issuer,
        created_ms=_row_int(row, "created_ms"),
        expires_ms=_row_int(row, "expires_ms"),
        max_uses=_row_int(row, "max_uses"),
        uses=_row_int(row, "uses"),
        scopes=frozenset(_row_list(row, "scopes")) & ALL_SCOPES,
        target=target,
        accept_holder_types=tuple(t for t in HOLDER_TYPES if t in types),
        token_ttl_s=_row_int(row, "token_ttl_s"),
        device_label=_row_opt_str(row, "device_label"),
        notes=_row_opt_str(row, "notes"),
        secret_hash=secret_hash,
        document=document,
        revoked_ms=_row_opt_int(row, "revoked_ms"),
        sa_ids=tuple(_row_list(row, "sa_ids")),
        last_redeemed_ms=_row_opt_int(row, "last_redeemed_ms"),
    )


@attrs.frozen
class IssuedInvite:
    """A freshly issued invite: the stored invite, its secret and its URL (shown once)."""

    invite: Invite
    secret: str = attrs.field(repr=False)
    url: str = attrs.field(repr=False)

    def to_dict(self, now_ms: int | None = None) -> dict[str, object]:
        """The ``POST /v1/invites`` answer: ``invite_id``, ``expires_at`` (RFC 3339),
        ``expires_ms``, ``uses_remaining``, ``url`` (with the secret), the admin view."""
        from ..identity.envelope import format_rfc3339

        inv = self.invite
        return {
            "invite_id": inv.invite_id,
            "expires_at": format_rfc3339(inv.expires_ms / 1000),
            "expires_ms": inv.expires_ms,
            "uses_remaining": inv.uses_remaining,
            "url": self.url,
            "issuer_did": inv.issuer_did,
            "invite": inv.to_admin_dict(now_ms),
            "document": inv.document,
        }


# --- transaction functions ---------------------------------------------------------


def get_invite(tx: _tokens.StateReader, invite_id: str) -> Invite:
    """The invite ``invite_id``; raises ``INVITE_NOT_FOUND``. Synchronous."""
    row = tx.get(INVITE_TABLE, invite_id) if valid_invite_id(invite_id) else None
    if row is None:
        raise InviteNotFound(
            f"no invite {invite_id[:40]!r} on this node; check the id "
            "(`fedpeer invite list` shows this node's invites)"
        )
    return _invite_from_row(row)


def invite_from_row(row: Mapping[str, object]) -> Invite:
    """Parse a stored invite row (``STORE_CORRUPT`` if damaged). Pure."""
    return _invite_from_row(row)


def create_invite(
    tx: StateTx,
    key: SigningKey,
    params: InviteParams,
    *,
    node_url: str,
    now_ms: int | None = None,
    pin: str | None = None,
) -> IssuedInvite:
    """Issue an invite signed by ``key`` (the node key), inside ``tx``.

    ``pin`` (the node's TLS pin) goes into the URL of an https ``node_url``.

    Stores the invite (secret as SHA-256 only), writes ``invite.issued`` and
    returns the :class:`IssuedInvite` with the one-time secret and the URL built
    on ``node_url``. The signed document is ``{type: "fedpeer-invite", v: 1,
    invite_id, issuer, scopes, scope_target, accept_holder_types, max_uses,
    expires_ms, token_ttl_s, device_label}`` with a signature valid for
    ``params.ttl_s``. Synchronous; run it in ``Store.transact``.
    """
    now = _now_ms(now_ms)
    invite_id = ""
    for _ in range(8):
        candidate = secrets.token_hex(16)
        if tx.get(INVITE_TABLE, candidate) is None:
            invite_id = candidate
            break
    if not invite_id:
        raise StoreCorrupt("could not find a free invite id; the random source is broken")
    secret = new_invite_secret()
    expires_ms = now + params.ttl_s * 1000
    doc: dict[str, object] = {
        "type": INVITE_DOC_TYPE,
        "v": 1,
        "invite_id": invite_id,
        "issuer": key.did,
        "scopes": scopes_to_list(params.scopes),
        "scope_target": params.target.to_dict(),
        "accept_holder_types": list(params.accept_holder_types),
        "max_uses": params.max_uses,
        "expires_ms": expires_ms,
        "token_ttl_s": params.token_ttl_s,
        "device_label": params.device_label,
    }
    signed = sign_document(doc, key, ttl_s=params.ttl_s, now=now / 1000)
    invite = Invite(
        invite_id=invite_id,
        issuer_did=key.did,
        created_ms=now,
        expires_ms=expires_ms,
        max_uses=params.max_uses,
        uses=0,
        scopes=params.scopes,
        target=params.target,
        accept_holder_types=params.accept_holder_types,
        token_ttl_s=params.token_ttl_s,
        device_label=params.device_label,
        notes=params.notes,
        secret_hash=hash_secret(secret),
        document=signed,
    )
    tx.put(INVITE_TABLE, invite_id, invite.to_row())
    tx.audit(
        {
            "type": "invite.issued",
            "invite_id": invite_id,
            "scopes": scopes_to_list(params.scopes),
            "scope_target": params.target.to_dict(),
            "max_uses": params.max_uses,
            "expires_ms": expires_ms,
            "accept_holder_types": list(params.accept_holder_types),
        },
        ts_ms=now,
    )
    return IssuedInvite(
        invite=invite,
        secret=secret,
        url=invite_url(
            node_url,
            invite_id,
            key.did,
            secret,
            pin if node_url.lower().startswith("https://") else None,
        ),
    )


def list_invites(
    tx: StateTx, *, state: InviteState | None = None, now_ms: int | None = None
) -> list[Invite]:
    """Every invite (or those in folded ``state`` at ``now_ms``), oldest first."""
    now = _now_ms(now_ms)
    out = [_invite_from_row(row) for _, row in tx.list(INVITE_TABLE)]
    if state is not None:
        out = [i for i in out if i.state(now) == state]
    out.sort(key=lambda i: (i.created_ms, i.invite_id))
    return out


def revoke_credential(tx: StateTx, sa_id: str, *, now_ms: int | None = None) -> bool:
    """Revoke service account ``sa_id`` with all its tokens (readers parked on them
    are woken) and delete the grants bound to it (``grant.sa_id``): what a peer
    held through one pairing. Used when pairing again replaces a credential and
    when unpairing. True when an active account was revoked; an unknown id
    changes nothing. Synchronous; run it in ``Store.transact``.
    """
    now = _now_ms(now_ms)
    try:
        sa = _tokens.get_service_account(tx, sa_id)
    except ServiceAccountNotFound:
        return False
    if sa.revoked_ms is None:
        _tokens.revoke_service_account(tx, sa_id, now_ms=now)
    for grant in _grants.list_grants(tx, grantee_did=sa.holder_did):
        if grant.sa_id == sa_id:
            _grants.delete_grant(tx, grant.id, now_ms=now)
    return sa.revoked_ms is None


def revoke_invite(tx: StateTx, invite_id: str, *, now_ms: int | None = None) -> tuple[Invite, bool]:
    """Revoke ``invite_id`` and everything it produced; returns ``(invite, changed)``.

    Marks the invite revoked (if not yet), revokes every service account it
    created (so every token), removes the grants it created (bumping the consent
    revision) and the reciprocal credentials it received. Idempotent: a second
    call changes nothing and writes no audit event (``changed`` False).
    Otherwise writes ``invite.revoked``. Raises ``INVITE_NOT_FOUND``.
    Synchronous; run it in ``Store.transact``.
    """
    now = _now_ms(now_ms)
    invite = get_invite(tx, invite_id)
    changed = invite.revoked_ms is None
    revoked_sas: list[str] = []
    for sa_id in invite.sa_ids:
        try:
            sa = _tokens.get_service_account(tx, sa_id)
        except ServiceAccountNotFound:
            continue
        if sa.revoked_ms is None:
            _tokens.revoke_service_account(tx, sa_id, now_ms=now)
            revoked_sas.append(sa_id)
    removed = _grants.delete_grants_by_origin(tx, f"invite:{invite_id}", now_ms=now)
    for key, row in tx.list(RECIPROCAL_TABLE):
        if row.get("invite_id") == invite_id:
            tx.delete(RECIPROCAL_TABLE, key)
    changed = changed or bool(revoked_sas) or bool(removed)
    if invite.revoked_ms is None:
        invite = attrs.evolve(invite, revoked_ms=now)
        tx.put(INVITE_TABLE, invite_id, invite.to_row())
    if changed:
        tx.audit(
            {
                "type": "invite.revoked",
                "invite_id": invite_id,
                "revoked_service_account_ids": revoked_sas,
                "removed_grant_ids": [g.id for g in removed],
            },
            ts_ms=now,
        )
    return invite, changed


def bulk_revoke(
    tx: StateTx, state: Literal["expired", "exhausted"], *, now_ms: int | None = None
) -> list[Invite]:
    """Revoke (as :func:`revoke_invite`, tokens included) every invite whose folded
    state is ``state``; return them. Raises ``INVALID_REQUEST`` for another state.
    Synchronous; run it in ``Store.transact``."""
    if state not in ("expired", "exhausted"):
        raise InvalidRequest("filter must be 'expired' or 'exhausted'")
    now = _now_ms(now_ms)
    out: list[Invite] = []
    for invite in list_invites(tx, state=state, now_ms=now):
        revoked, _ = revoke_invite(tx, invite.invite_id, now_ms=now)
        out.append(revoked)
    return out


def check_redeemable(
    invite: Invite, *, secret: str, holder_type: str, now_ms: int | None = None
) -> None:
    """The redeem checks that need only the invite, in the documented order.

    Raises ``INVITE_REVOKED``, ``INVITE_EXHAUSTED``, ``INVITE_EXPIRED``,
    ``INVITE_SECRET_INVALID`` (compared as SHA-256 in constant time) or
    ``HOLDER_TYPE_MISMATCH``. Pure.
    """
    state = invite.state(now_ms)
    if state == "revoked":
        raise InviteRevoked("the invite was revoked; ask the issuer for a new one")
    if state == "exhausted":
        raise InviteExhausted("the invite has no uses left; ask the issuer for a new one")
    if state == "expired":
        raise InviteExpired("the invite has expired; ask the issuer for a new one")
    presented = hash_secret(secret) if isinstance(secret, str) else ""
    if not hmac.compare_digest(presented.encode(), invite.secret_hash.encode()):
        raise InviteSecretInvalid(
            "the invite secret is wrong; use the whole invite URL, including the part after '#'"
        )
    if holder_type not in invite.accept_holder_types:
        raise HolderTypeMismatch(
            f"this invite accepts {', '.join(invite.accept_holder_types)} holders, "
            f"not {str(holder_type)[:20]!r}"
        )


@attrs.frozen
class Reciprocal:
    """A credential the redeemer minted for the issuer (bidirectional pairing hook)."""

    token: str = attrs.field(repr=False)
    scopes: frozenset[str]
    url: str


@attrs.frozen
class RedeemRequest:
    """A parsed redeem body. For a guest, ``holder_did`` is the did:key of
    ``holder_pubkey``; for a federated holder, ``proof`` and ``issued_at_ms`` are set."""

    holder_type: HolderType
    holder_did: str
    secret: str = attrs.field(repr=False)
    label: str | None = None
    holder_pubkey: bytes | None = None
    proof: str | None = attrs.field(default=None, repr=False)
    issued_at_ms: int | None = None
    reciprocal: Reciprocal | None = None


def _parse_pubkey(value: object) -> bytes:
    """32 raw key bytes from base64url (43 chars) or an Ed25519 multibase (z6Mk..., 48)."""
    if not isinstance(value, str) or len(value) > 128:
        raise Malformed("holder_pubkey must be a base64url or multibase (z6Mk...) string")
    try:
        raw = ed25519_from_multibase(value) if len(value) != 43 else b64url_decode(value)
    except FedpeerError:
        raise Malformed(
            "holder_pubkey must be 32 bytes as base64url (no padding) or an Ed25519 "
            "multibase (z6Mk...)"
        ) from None
    if len(raw) != 32:
        raise Malformed("holder_pubkey must encode exactly 32 bytes")
    return raw


def _parse_reciprocal(value: object) -> Reciprocal:
    if not isinstance(value, Mapping) or set(value) - {"token", "scopes", "url"}:
        raise InvalidRequest("reciprocal must be {token, scopes, url}")
    token, scopes, url = value.get("token"), value.get("scopes"), value.get("url")
    if not isinstance(token, str) or not 1 <= len(token) <= _MAX_TOKEN or not token.isprintable():
        raise InvalidRequest("reciprocal.token must be a bearer token string")
    if not isinstance(scopes, list):
        raise InvalidRequest("reciprocal.scopes must be a list of scope names")
    if not isinstance(url, str) or len(url) > _MAX_URL:
        raise InvalidRequest("reciprocal.url must be the redeemer's http(s) URL")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest("reciprocal.url must be the redeemer's http(s) URL")
    return Reciprocal(token=token, scopes=parse_scopes(scopes), url=url.rstrip("/"))


def parse_redeem_request(obj: Mapping[str, object]) -> RedeemRequest:
    """Validate a ``POST /v1/invites/{id}/redeem`` body.

    Guest: ``{holder_type: "guest", holder_pubkey (base64url of 32 bytes, or
    multibase z6Mk...), holder_label?, secret, reciprocal?}``. Federated:
    ``{holder_type: "federated", holder_did, holder_proof (base64url),
    holder_proof_issued_at_ms, holder_label?, secret, reciprocal?}``.
    Raises ``MALFORMED`` / ``INVALID_REQUEST`` (shape), ``DID_INVALID``,
    ``KEY_UNKNOWN`` (a guest key that is not a usable Ed25519 point). Pure.
    """
    holder_type = obj.get("holder_type")
    common = {"holder_type", "holder_label", "secret", "reciprocal"}
    if holder_type == "guest":
        allowed = common | {"holder_pubkey"}
    elif holder_type == "federated":
        allowed = common | {"holder_did", "holder_proof", "holder_proof_issued_at_ms"}
    else:
        raise InvalidRequest("holder_type must be 'guest' or 'federated'")
    extra = set(obj) - allowed
    if extra:
        raise InvalidRequest(f"unknown redeem fields {sorted(str(k) for k in extra)[:5]}")
    secret = obj.get("secret")
    if not isinstance(secret, str) or len(secret) > 128:
        raise InvalidRequest("secret is required: the part after '#secret=' in the invite URL")
    label = obj.get("holder_label")
    if label is not None:
        label = _check_text(label, "holder_label", _MAX_LABEL)
        if not label.strip():
            raise InvalidRequest("holder_label must not be blank")
    reciprocal = None if obj.get("reciprocal") is None else _parse_reciprocal(obj["reciprocal"])
    if holder_type == "guest":
        pubkey = _parse_pubkey(obj.get("holder_pubkey"))
        if not is_valid_public_key(pubkey):
            raise KeyUnknown("holder_pubkey is not a valid Ed25519 public key")
        return RedeemRequest(
            holder_type="guest",
            holder_did=did_from_public_key(pubkey),
            secret=secret,
            label=label,
            holder_pubkey=pubkey,
            reciprocal=reciprocal,
        )
    holder_did = _check_did(obj.get("holder_did"))
    if holder_did.startswith(DID_KEY_PREFIX):
        public_key_from_did(holder_did)  # DID_INVALID: a did:key that is not Ed25519 (§2.1)
    proof = obj.get("holder_proof")
    issued = obj.get("holder_proof_issued_at_ms")
    if not isinstance(proof, str) or len(proof) > 256:
        raise InvalidRequest("holder_proof must be a base64url Ed25519 signature")
    if not _is_int(issued) or not 0 <= issued < 2**53:  # type: ignore[operator]
        raise InvalidRequest("holder_proof_issued_at_ms must be a time in ms since the epoch")
    assert isinstance(issued, int)
    return RedeemRequest(
        holder_type="federated",
        holder_did=holder_did,
        secret=secret,
        label=label,
        proof=proof,
        issued_at_ms=issued,
        reciprocal=reciprocal,
    )


@attrs.frozen
class Redeemed:
    """A successful redemption: the new account, its one-time token, its grant."""

    invite: Invite
    holder_did: str
    holder_type: HolderType
    service_account: _tokens.ServiceAccount
    token: _tokens.IssuedToken
    grant: _grants.Grant
    confirmation_code: str

    def to_dict(self) -> dict[str, object]:
        """The redeem answer (holds the plaintext bearer, shown once)."""
        return {
            "token": self.token.bearer,
            "token_id": self.token.token_id,
            "service_account_id": self.service_account.id,
            "expires_ms": self.token.expires_ms,
            "actor_did": self.holder_did,
            "holder_type": self.holder_type,
            "issuer_did": self.invite.issuer_did,
            "invite_id": self.invite.invite_id,
            "scopes": scopes_to_list(self.service_account.scopes),
            "scope_target": self.grant.target.to_dict(),
            "grant_id": self.grant.id,
            "confirmation_code": self.confirmation_code,
        }


def _prune_proofs(tx: StateTx, now: int) -> None:
    for key, row in tx.list(PROOF_TABLE):
        expires = row.get("expires_ms")
        if _is_int(expires) and expires < now:  # type: ignore[operator]
            tx.delete(PROOF_TABLE, key)


def redeem_in_tx(
    tx: StateTx,
    invite_id: str,
    request: RedeemRequest,
    *,
    used_proof_hash: str | None = None,
    now_ms: int | None = None,
) -> Redeemed:
    """Redeem ``invite_id`` for ``request``, all or nothing, inside ``tx``.

    The caller has already verified a federated proof (:func:`verify_redeem_proof`)
    and passes its :func:`proof_hash` as ``used_proof_hash``. Re-checks
    everything that can change under concurrency (:func:`check_redeemable`, proof
    replay), then: records the proof hash, creates the service account
    (``origin="invite:<id>"``, the invite's scopes, a token valid
    ``token_ttl_s``), a grant for the invite's target bound to that account,
    the ``invite_accounts`` row, the reciprocal credential if any (a federated
    holder's only: a guest's is ignored, as its DID is unproven), and counts the
    use. Writes ``invite.redeemed``.

    Raises ``INVITE_NOT_FOUND``, ``INVITE_REVOKED``, ``INVITE_EXHAUSTED``,
    ``INVITE_EXPIRED``, ``INVITE_SECRET_INVALID``, ``HOLDER_TYPE_MISMATCH``,
    ``PAIR_SELF`` (the holder is the issuer itself), ``PROOF_REPLAYED``; on any
    error nothing is stored (the caller audits the rejection separately, see
    :func:`audit_rejected`). Synchronous; run it in ``Store.transact``.
    """
    now = _now_ms(now_ms)
    invite = get_invite(tx, invite_id)
    check_redeemable(invite, secret=request.secret, holder_type=request.holder_type, now_ms=now)
    if request.holder_did == invite.issuer_did:
        raise PairSelf("a node cannot redeem its own invite; redeem it from the other device")
    if request.holder_type == "federated":
        if used_proof_hash is None:
            raise BadProof("a federated redemption needs a verified holder proof")
        _prune_proofs(tx, now)
        if tx.get(PROOF_TABLE, used_proof_hash) is not None:
            raise ProofReplayed("this holder proof was already used; sign a new one")
        tx.put(
            PROOF_TABLE,
            used_proof_hash,
            {
                "invite_id": invite_id,
                "holder_did": request.holder_did,
                "used_ms": now,
                "expires_ms": (request.issued_at_ms or now) + 2 * FRESHNESS_MS,
            },
        )
    origin = f"invite:{invite_id}"
    name = request.label or f"{request.holder_type} via invite {invite_id[:8]}"
    sa, token = _tokens.create_service_account(
        tx,
        name=name,
        holder_did=request.holder_did,
        scopes=invite.scopes,
        origin=origin,
        ttl_ms=invite.token_ttl_s * 1000,
        now_ms=now,
    )
    grant = _grants.create_grant(
        tx,
        grantee_did=request.holder_did,
        target=invite.target,
        scopes=invite.scopes,
        origin=origin,
        sa_id=sa.id,
        now_ms=now,
    )
    tx.put(
        ACCOUNT_TABLE,
        sa.id,
        {
            "sa_id": sa.id,
            "invite_id": invite_id,
            "holder_type": request.holder_type,
            "holder_did": request.holder_did,
            "created_ms": now,
        },
    )
    # A reciprocal credential is a federated holder's: its proof established the DID
    # the row is keyed by. A guest's DID is only the key it names (anyone can name a
    # paired peer's public key), so a guest's reciprocal is ignored (protocol.md
    # §11.2): storing it would let any invite holder replace, and revoke, the
    # credential of the peer it impersonates.
    reciprocal = request.reciprocal if request.holder_type == "federated" else None
    if reciprocal is not None:
        # Pairing again (a new invite, the same holder): the account the earlier
        # pairing gave that holder is revoked, so it never holds two active ones.
        previous = tx.get(RECIPROCAL_TABLE, request.holder_did)
        old_sa = None if previous is None else previous.get("sa_id")
        if isinstance(old_sa, str) and old_sa != sa.id:
            revoke_credential(tx, old_sa, now_ms=now)
        tx.put(
            RECIPROCAL_TABLE,
            request.holder_did,
            {
                "holder_did": request.holder_did,
                "invite_id": invite_id,
                "sa_id": sa.id,
                "token": reciprocal.token,
                "scopes": scopes_to_list(reciprocal.scopes),
                "url": reciprocal.url,
                "received_ms": now,
            },
        )
    invite = attrs.evolve(
        invite, uses=invite.uses + 1, sa_ids=(*invite.sa_ids, sa.id), last_redeemed_ms=now
    )
    tx.put(INVITE_TABLE, invite_id, invite.to_row())
    tx.audit(
        {
            "type": "invite.redeemed",
            "invite_id": invite_id,
            "holder_type": request.holder_type,
            "holder_did": request.holder_did,
            "sa_id": sa.id,
            "token_id": token.token_id,
            "grant_id": grant.id,
            "uses": invite.uses,
            "uses_remaining": invite.uses_remaining,
            "reciprocal": reciprocal is not None,
        },
        ts_ms=now,
    )
    return Redeemed(
        invite=invite,
        holder_did=request.holder_did,
        holder_type=request.holder_type,
        service_account=sa,
        token=token,
        grant=grant,
        confirmation_code=confirmation_code(invite.issuer_did, request.holder_did, invite_id),
    )


def audit_rejected(
    tx: StateTx,
    invite_id: str,
    reason: str,
    *,
    holder_type: object = None,
    holder_did: object = None,
    now_ms: int | None = None,
) -> int:
    """Write ``invite.redeem_rejected`` with ``reason`` (an error code); return its id.

    Run it in its own transaction *after* the failed one rolled back. Only the
    shapes are kept of caller-supplied values (a holder type among the known
    ones, a DID-shaped string up to 2048 chars); never a secret or a proof.
    """
    event: dict[str, object] = {
        "type": "invite.redeem_rejected",
        "invite_id": invite_id if valid_invite_id(invite_id) else None,
        "reason": reason,
        "holder_type": holder_type if holder_type in HOLDER_TYPES else None,
        "holder_did": (holder_did if isinstance(holder_did, str) and is_did(holder_did) else None),
    }
    return tx.audit(event, ts_ms=_now_ms(now_ms))


def invite_account(tx: _tokens.StateReader, sa_id: str) -> dict[str, object] | None:
    """The ``invite_accounts`` row of ``sa_id`` (None for accounts not made by an invite)."""
    if not _SA_ID_RE.fullmatch(sa_id):
        return None
    return tx.get(ACCOUNT_TABLE, sa_id)


# --- the redeemer's side -------------------------------------------------------------


@attrs.frozen
class Credential:
    """What a redeemer gets: how to talk to the issuer as the new account.

    ``token`` is the bearer (kept out of ``repr``); ``confirmation_code`` is the
    code the issuer shows too, for people to compare.
    """

    peer_url: str
    peer_did: str
    token: str = attrs.field(repr=False)
    token_id: str
    expires_ms: int | None
    scopes: frozenset[str]
    scope_target: Target
    confirmation_code: str
    actor_did: str
    invite_id: str

    def to_dict(self) -> dict[str, object]:
        """JSON form (includes the token: store it like a password)."""
        return {
            "peer_url": self.peer_url,
            "peer_did": self.peer_did,
            "token": self.token,
            "token_id": self.token_id,
            "expires_ms": self.expires_ms,
            "scopes": scopes_to_list(self.scopes),
            "scope_target": self.scope_target.to_dict(),
            "confirmation_code": self.confirmation_code,
            "actor_did": self.actor_did,
            "invite_id": self.invite_id,
        }


def check_invite_preview(
    preview: object, invite: InviteUrl, *, now: float | None = None
) -> dict[str, object]:
    """Check the issuer's public preview of ``invite`` before redeeming; return the
    verified invite document.

    Fails early, with the server's own codes, when the preview says the invite is
    ``revoked``/``exhausted``/``expired`` (``INVITE_REVOKED``, ...). Otherwise the
    signed document must verify as signed by the URL's issuer DID (``BAD_SIGNATURE``,
    ``DID_MISMATCH``, ``SIGNATURE_EXPIRED``, ...), be a ``fedpeer-invite`` and name
    this invite id (``PEER_INVALID``). Pure CPU.
    """
    from ..errors import PeerInvalid
    from ..identity.envelope import verify_document

    if not isinstance(preview, Mapping) or not isinstance(preview.get("invite"), Mapping):
        raise PeerInvalid("the issuer's invite preview has no signed invite document")
    state = preview.get("state")
    if state == "revoked":
        raise InviteRevoked("the invite was revoked; ask the issuer for a new one")
    if state == "exhausted":
        raise InviteExhausted("the invite has no uses left; ask the issuer for a new one")
    if state == "expired":
        raise InviteExpired("the invite has expired; ask the issuer for a new one")
    doc = dict(preview["invite"])
    verify_document(doc, expected_did=invite.issuer_did, now=now)
    if doc.get("type") != INVITE_DOC_TYPE or doc.get("invite_id") != invite.invite_id:
        raise PeerInvalid("the issuer's signed invite document is for another invite")
    if doc.get("issuer") != invite.issuer_did:
        raise PeerInvalid("the signed invite document names another issuer")
    return doc


def credential_from_answer(answer: object, invite: InviteUrl, *, holder_did: str) -> Credential:
    """Turn the issuer's redeem answer into a :class:`Credential`, checking it.

    The answer must name the URL's issuer DID and ``holder_did`` as the actor, and
    its confirmation code must equal :func:`confirmation_code` computed locally
    (``PEER_INVALID`` otherwise, or for a malformed answer). Pure.
    """
    from ..errors import PeerInvalid

    if not isinstance(answer, Mapping):
        raise PeerInvalid("the redeem answer is not an object")
    token, token_id = answer.get("token"), answer.get("token_id")
    expires, scopes = answer.get("expires_ms"), answer.get("scopes")
    if not isinstance(token, str) or not isinstance(token_id, str):
        raise PeerInvalid("the redeem answer has no token")
    if expires is not None and not _is_int(expires):
        raise PeerInvalid("the redeem answer's expires_ms is not a time")
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        raise PeerInvalid("the redeem answer's scopes are not a list")
    if answer.get("issuer_did") != invite.issuer_did or answer.get("actor_did") != holder_did:
        raise PeerInvalid("the redeem answer names another issuer or holder")
    code = confirmation_code(invite.issuer_did, holder_did, invite.invite_id)
    if answer.get("confirmation_code") != code:
        raise PeerInvalid("the issuer's confirmation code does not match; do not trust this pair")
    try:
        target = parse_target(answer.get("scope_target"))
    except InvalidRequest:
        raise PeerInvalid("the redeem answer's scope_target is not a target") from None
    return Credential(
        peer_url=invite.node_url,
        peer_did=invite.issuer_did,
        token=token,
        token_id=token_id,
        expires_ms=expires,
        scopes=frozenset(scopes) & ALL_SCOPES,
        scope_target=target,
        confirmation_code=code,
        actor_did=holder_did,
        invite_id=invite.invite_id,
    )
