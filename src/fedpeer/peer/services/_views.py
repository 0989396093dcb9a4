"""The values the node's services return, in-process and over HTTP alike.

Each view is what one answer of the admin API carries: the routes render
``view.to_dict()``; :class:`~fedpeer.peer.admin.AdminClient` parses the answer
back with ``View.from_dict(...)`` (``PEER_INVALID`` for a malformed answer), so an
embedding program and an operator talking HTTP get the same typed values, and
``View.from_dict(view.to_dict()) == view``. Records are checked again by the
receiver (the one record pipeline): the server's word is never trusted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import attrs

from ...consent.grants import Grant, Target, parse_target
from ...consent.invites import HOLDER_TYPES, HolderType, Invite, IssuedInvite, Redeemed
from ...consent.tokens import IssuedToken, ServiceAccount
from ...errors import FedpeerError, PeerInvalid
from ...identity.canonical import CID
from ...store.base import StoredRecord
from ...sync.pairs import LastError, Pair, PairFilter, PairState
from ...sync.records import (
    DEFAULT_LIMITS,
    Limits,
    Record,
    SignedRecord,
    record_from_stored,
    record_from_wire,
    record_to_wire,
)

__all__ = [
    "AuditEvent",
    "AuditPage",
    "InviteCreated",
    "InviteInfo",
    "IssuedAccount",
    "PairStatus",
    "PairingResult",
    "RecordEntry",
    "RecordsPage",
    "RedeemAnswer",
    "RotatedToken",
    "UnpairResult",
]


# --- reading answers ---------------------------------------------------------------------


class _Reader:
    """Typed access to a decoded answer; every problem is PEER_INVALID naming ``what``."""

    def __init__(self, obj: object, what: str) -> None:
        if not isinstance(obj, Mapping):
            raise PeerInvalid(f"the {what} answer is not an object")
        self.obj: Mapping[str, object] = obj
        self.what = what

    def _bad(self, key: str, kind: str) -> PeerInvalid:
        return PeerInvalid(f"the {self.what} answer has no valid {key} ({kind})")

    def text(self, key: str) -> str:
        value = self.obj.get(key)
        if not isinstance(value, str):
            raise self._bad(key, "a string")
        return value

    def opt_text(self, key: str) -> str | None:
        value = self.obj.get(key)
        if value is not None and not isinstance(value, str):
            raise self._bad(key, "a string or null")
        return value

    def integer(self, key: str) -> int:
        value = self.obj.get(key)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self._bad(key, "an integer")
        return value

    def opt_integer(self, key: str) -> int | None:
        value = self.obj.get(key)
        if value is None:
            return None
        return self.integer(key)

    def flag(self, key: str) -> bool:
        value = self.obj.get(key)
        if not isinstance(value, bool):
            raise self._bad(key, "true or false")
        return value

    def texts(self, key: str) -> tuple[str, ...]:
        value = self.obj.get(key)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._bad(key, "a list of strings")
        return tuple(str(v) for v in value)

    def mapping(self, key: str) -> dict[str, object]:
        value = self.obj.get(key)
        if not isinstance(value, dict):
            raise self._bad(key, "an object")
        return dict(value)

    def items(self, key: str) -> list[object]:
        value = self.obj.get(key)
        if not isinstance(value, list):
            raise self._bad(key, "a list")
        return list(value)

    def target(self, key: str) -> Target:
        try:
            return parse_target(self.obj.get(key))
        except FedpeerError:
            raise self._bad(key, "a target") from None


# --- records -----------------------------------------------------------------------------


@attrs.frozen
class RecordEntry:
    """A record as this node stores it: the verified record and its local sequence number.

    ``cid``, ``record``, ``data`` and ``sig`` are those of :attr:`signed`; ``seq``
    orders the node's log (it differs between nodes). Over HTTP the record is
    verified again on arrival (canonical bytes, CID, author signature, limits).
    """

    seq: int
    signed: SignedRecord

    @property
    def cid(self) -> CID:
        """The record id (CIDv1, dag-cbor, sha2-256)."""
        return self.signed.cid

    @property
    def record(self) -> Record:
        """The decoded content (author, namespace, thread, kind, body, ...)."""
        return self.signed.record

    @property
    def data(self) -> bytes:
        """The exact DAG-CBOR bytes the CID names."""
        return self.signed.data

    @property
    def sig(self) -> bytes:
        """The author's Ed25519 signature over the CID bytes."""
        return self.signed.sig

    @classmethod
    def from_stored(cls, rec: StoredRecord) -> RecordEntry:
        """A stored row (verified on the way in: decoded, not re-verified)."""
        return cls(rec.seq, record_from_stored(rec))

    def to_wire(self) -> dict[str, object]:
        """``{cid, data, sig, seq}`` (the CBOR form of ``GET /v1/records/{cid}``)."""
        wire = record_to_wire(self.signed)
        wire["seq"] = self.seq
        return wire

    def to_dict(self) -> dict[str, object]:
        """The JSON form: the wire fields plus ``record``, the decoded map."""
        wire = self.to_wire()
        wire["record"] = self.record.to_map()
        return wire

    @classmethod
    def from_dict(
        cls, obj: object, *, limits: Limits = DEFAULT_LIMITS, now_ms: int | None = None
    ) -> RecordEntry:
        """Verify a record answer (either form); BAD_SIGNATURE, RECORD_INVALID, ...
        for a bad record, PEER_INVALID for a bad shape."""
        r = _Reader(obj, "record")
        wire = {k: r.obj.get(k) for k in ("cid", "data", "sig")}
        if isinstance(wire["cid"], str):
            wire["cid"] = CID.parse(wire["cid"])
        return cls(r.integer("seq"), record_from_wire(wire, limits=limits, now_ms=now_ms))


@attrs.frozen
class RecordsPage:
    """One page of a record listing.

    ``next_cursor`` continues the listing in the same order (pass it as
    ``since``); ``has_more`` says whether more records may follow.
    """

    records: tuple[RecordEntry, ...]
    next_cursor: str
    has_more: bool

    def to_dict(self) -> dict[str, object]:
        """``{records: [...], next_cursor, has_more}`` (records in their JSON form)."""
        return {
            "records": [r.to_dict() for r in self.records],
            "next_cursor": self.next_cursor,
            "has_more": self.has_more,
        }

    @classmethod
    def from_dict(
        cls, obj: object, *, limits: Limits = DEFAULT_LIMITS, now_ms: int | None = None
    ) -> RecordsPage:
        """Parse and verify a page answer."""
        r = _Reader(obj, "records page")
        records = tuple(
            RecordEntry.from_dict(item, limits=limits, now_ms=now_ms) for item in r.items("records")
        )
        return cls(records, r.text("next_cursor"), r.flag("has_more"))


# --- tokens ------------------------------------------------------------------------------


def service_account_from_dict(obj: object) -> ServiceAccount:
    """A :class:`ServiceAccount` from its ``to_dict()`` form (PEER_INVALID)."""
    r = _Reader(obj, "service account")
    return ServiceAccount(
        id=r.text("id"),
        name=r.text("name"),
        holder_did=r.text("holder_did"),
        scopes=frozenset(r.texts("scopes")),
        origin=r.text("origin"),
        created_ms=r.integer("created_ms"),
        revoked_ms=r.opt_integer("revoked_ms"),
        token_ids=r.texts("token_ids"),
        # absent from nodes older than write quotas
        written_records=r.opt_integer("written_records") or 0,
        written_bytes=r.opt_integer("written_bytes") or 0,
    )


@attrs.frozen
class IssuedAccount:
    """A new service account and its first bearer token (shown once)."""

    service_account: ServiceAccount
    token: str = attrs.field(repr=False)
    token_id: str
    expires_ms: int | None

    @classmethod
    def of(cls, sa: ServiceAccount, issued: IssuedToken) -> IssuedAccount:
        """From the consent layer's values."""
        return cls(sa, issued.bearer, issued.token_id, issued.expires_ms)

    def to_dict(self) -> dict[str, object]:
        """``{service_account, token, token_id, expires_ms}``."""
        return {
            "service_account": self.service_account.to_dict(),
            "token": self.token,
            "token_id": self.token_id,
            "expires_ms": self.expires_ms,
        }

    @classmethod
    def from_dict(cls, obj: object) -> IssuedAccount:
        """Parse the answer of ``POST /v1/service-accounts`` (PEER_INVALID)."""
        r = _Reader(obj, "service account")
        return cls(
            service_account_from_dict(r.obj.get("service_account")),
            r.text("token"),
            r.text("token_id"),
            r.opt_integer("expires_ms"),
        )


@attrs.frozen
class RotatedToken:
    """A new bearer token replacing older ones (shown once).

    ``old_token_id`` is set when one token rotated itself
    (``POST /v1/tokens/{id}/rotate``); a key rotation of a whole service account
    revokes all its older tokens and leaves it None.
    """

    token: str = attrs.field(repr=False)
    token_id: str
    expires_ms: int | None
    old_token_id: str | None = None

    def to_dict(self) -> dict[str, object]:
        """``{token, token_id, expires_ms}`` (+ ``old_token_id`` when set)."""
        out: dict[str, object] = {
            "token": self.token,
            "token_id": self.token_id,
            "expires_ms": self.expires_ms,
        }
        if self.old_token_id is not None:
            out = {
                "token": self.token,
                "token_id": self.token_id,
                "old_token_id": self.old_token_id,
                "expires_ms": self.expires_ms,
            }
        return out

    @classmethod
    def from_dict(cls, obj: object) -> RotatedToken:
        """Parse a rotation answer (PEER_INVALID)."""
        r = _Reader(obj, "token rotation")
        return cls(
            r.text("token"),
            r.text("token_id"),
            r.opt_integer("expires_ms"),
            r.opt_text("old_token_id"),
        )


# --- grants ------------------------------------------------------------------------------


def grant_from_dict(obj: object) -> Grant:
    """A :class:`Grant` from its ``to_dict()`` form (PEER_INVALID)."""
    r = _Reader(obj, "grant")
    return Grant(
        id=r.text("id"),
        grantee_did=r.text("grantee_did"),
        target=r.target("target"),
        scopes=frozenset(r.texts("scopes")),
        created_ms=r.integer("created_ms"),
        expires_ms=r.opt_integer("expires_ms"),
        origin=r.text("origin"),
        sa_id=r.opt_text("sa_id"),
    )


# --- invites -----------------------------------------------------------------------------

InviteStateName = Literal["active", "expired", "exhausted", "revoked"]


@attrs.frozen
class InviteInfo:
    """An invite as an admin sees it (never the secret or its hash).

    ``state`` is the folded state when this view was made (revoked > exhausted >
    expired > active).
    """

    invite_id: str
    state: str
    issuer_did: str
    created_ms: int
    expires_ms: int
    max_uses: int
    uses: int
    uses_remaining: int
    scopes: tuple[str, ...]
    scope_target: Target
    accept_holder_types: tuple[HolderType, ...]
    token_ttl_s: int
    device_label: str | None
    notes: str | None
    revoked_ms: int | None
    service_account_ids: tuple[str, ...]
    last_redeemed_ms: int | None

    @classmethod
    def of(cls, invite: Invite, now_ms: int | None = None) -> InviteInfo:
        """The view of a stored invite at ``now_ms``."""
        return cls.from_dict(invite.to_admin_dict(now_ms))

    def to_dict(self) -> dict[str, object]:
        """The admin listing form (``GET /v1/invites``)."""
        return {
            "invite_id": self.invite_id,
            "state": self.state,
            "issuer_did": self.issuer_did,
            "created_ms": self.created_ms,
            "expires_ms": self.expires_ms,
            "max_uses": self.max_uses,
            "uses": self.uses,
            "uses_remaining": self.uses_remaining,
            "scopes": list(self.scopes),
            "scope_target": self.scope_target.to_dict(),
            "accept_holder_types": list(self.accept_holder_types),
            "token_ttl_s": self.token_ttl_s,
            "device_label": self.device_label,
            "notes": self.notes,
            "revoked_ms": self.revoked_ms,
            "service_account_ids": list(self.service_account_ids),
            "last_redeemed_ms": self.last_redeemed_ms,
        }

    @classmethod
    def from_dict(cls, obj: object) -> InviteInfo:
        """Parse the admin form (PEER_INVALID)."""
        r = _Reader(obj, "invite")
        types = r.texts("accept_holder_types")
        return cls(
            invite_id=r.text("invite_id"),
            state=r.text("state"),
            issuer_did=r.text("issuer_did"),
            created_ms=r.integer("created_ms"),
            expires_ms=r.integer("expires_ms"),
            max_uses=r.integer("max_uses"),
            uses=r.integer("uses"),
            uses_remaining=r.integer("uses_remaining"),
            scopes=r.texts("scopes"),
            scope_target=r.target("scope_target"),
            accept_holder_types=tuple(t for t in HOLDER_TYPES if t in types),
            token_ttl_s=r.integer("token_ttl_s"),
            device_label=r.opt_text("device_label"),
            notes=r.opt_text("notes"),
            revoked_ms=r.opt_integer("revoked_ms"),
            service_account_ids=r.texts("service_account_ids"),
            last_redeemed_ms=r.opt_integer("last_redeemed_ms"),
        )


@attrs.frozen
class InviteCreated:
    """A freshly issued invite: its URL (holding the secret: shown once), its admin
    view, its expiry as RFC 3339 text and the signed invite document."""

    url: str = attrs.field(repr=False)
    invite: InviteInfo
    expires_at: str
    document: dict[str, object] = attrs.field(eq=False, repr=False)

    @property
    def invite_id(self) -> str:
        """The invite id (32 hex)."""
        return self.invite.invite_id

    @classmethod
    def of(cls, issued: IssuedInvite, now_ms: int | None = None) -> InviteCreated:
        """From the consent layer's value."""
        return cls.from_dict(issued.to_dict(now_ms))

    def to_dict(self) -> dict[str, object]:
        """The ``POST /v1/invites`` answer."""
        inv = self.invite
        return {
            "invite_id": inv.invite_id,
            "expires_at": self.expires_at,
            "expires_ms": inv.expires_ms,
            "uses_remaining": inv.uses_remaining,
            "url": self.url,
            "issuer_did": inv.issuer_did,
            "invite": inv.to_dict(),
            "document": self.document,
        }

    @classmethod
    def from_dict(cls, obj: object) -> InviteCreated:
        """Parse the answer (PEER_INVALID)."""
        r = _Reader(obj, "invite")
        return cls(
            url=r.text("url"),
            invite=InviteInfo.from_dict(r.obj.get("invite")),
            expires_at=r.text("expires_at"),
            document=r.mapping("document"),
        )


@attrs.frozen
class AuditEvent:
    """One audit log entry: ``id`` (increasing), ``ts_ms``, ``event`` (``type``, ...)."""

    id: int
    ts_ms: int
    event: dict[str, object] = attrs.field(eq=False)

    def to_dict(self) -> dict[str, object]:
        """``{id, ts_ms, event}``."""
        return {"id": self.id, "ts_ms": self.ts_ms, "event": dict(self.event)}

    @classmethod
    def from_dict(cls, obj: object) -> AuditEvent:
        """Parse one entry (PEER_INVALID)."""
        r = _Reader(obj, "audit event")
        return cls(r.integer("id"), r.integer("ts_ms"), r.mapping("event"))


@attrs.frozen
class AuditPage:
    """Invite audit events; ``next_since`` resumes the scan after them."""

    events: tuple[AuditEvent, ...]
    next_since: int

    def to_dict(self) -> dict[str, object]:
        """``{events: [...], next_since}``."""
        return {"events": [e.to_dict() for e in self.events], "next_since": self.next_since}

    @classmethod
    def from_dict(cls, obj: object) -> AuditPage:
        """Parse the answer (PEER_INVALID)."""
        r = _Reader(obj, "invite audit")
        return cls(
            tuple(AuditEvent.from_dict(e) for e in r.items("events")), r.integer("next_since")
        )


@attrs.frozen
class RedeemAnswer:
    """What the issuer answers a successful redemption (the bearer is shown once).

    ``reverse_pair`` reports the pair the issuer created back to the redeemer in a
    two-way pairing (``{"id", "created"}`` or ``{"error": {code, message}}``).
    """

    redeemed: dict[str, object] = attrs.field(repr=False)
    reverse_pair: dict[str, object] | None = None

    @classmethod
    def of(cls, redeemed: Redeemed, reverse_pair: dict[str, object] | None) -> RedeemAnswer:
        """From the consent layer's value."""
        return cls(redeemed.to_dict(), reverse_pair)

    def to_dict(self) -> dict[str, object]:
        """The ``POST /v1/invites/{id}/redeem`` answer."""
        out = dict(self.redeemed)
        if self.reverse_pair is not None:
            out["reverse_pair"] = self.reverse_pair
        return out


# --- pairs -------------------------------------------------------------------------------


def _last_error(obj: object) -> LastError | None:
    if obj is None:
        return None
    r = _Reader(obj, "last error")
    return LastError(r.text("code"), r.text("message"), r.integer("at_ms"))


@attrs.frozen
class PairStatus:
    """A pair as the API shows it: everything but the credential, with its stats
    snapshot, its lag (``{caught_up, behind_s, cursor_seq}``) and, while it backs
    off, ``next_try_s``: seconds until its next retry (None otherwise).
    ``origin``: who set it up (``owner``, or ``redeem`` for the pull back from
    someone who redeemed this node's invite, bounded by the redeem quota)."""

    id: str
    local_did: str
    peer_did: str
    peer_url: str
    filter: PairFilter
    state: PairState
    cursor: str | None
    retries: int
    last_error: LastError | None
    created_ms: int
    updated_ms: int
    author_allowlist: tuple[str, ...] | None
    has_credential: bool
    stats: dict[str, object] = attrs.field(eq=False)
    lag: dict[str, object] = attrs.field(eq=False)
    next_try_s: float | None = attrs.field(default=None, eq=False)
    origin: str = "owner"

    @classmethod
    def of(
        cls,
        pair: Pair,
        lag: Mapping[str, object],
        now_ms: int | None = None,
        *,
        next_try_s: float | None = None,
    ) -> PairStatus:
        """The view of ``pair`` with its ``lag`` and ``next_try_s``."""
        out = pair.to_public_dict(now_ms=now_ms)
        out["lag"] = dict(lag)
        out["next_try_s"] = next_try_s
        return cls.from_dict(out)

    def to_dict(self) -> dict[str, object]:
        """The JSON form (``GET /v1/sync/pairs/{id}``)."""
        return {
            "id": self.id,
            "local_did": self.local_did,
            "peer_did": self.peer_did,
            "peer_url": self.peer_url,
            "filter": self.filter.to_dict(),
            "state": self.state.value,
            "cursor": self.cursor,
            "retries": self.retries,
            "last_error": None if self.last_error is None else self.last_error.to_dict(),
            "created_ms": self.created_ms,
            "updated_ms": self.updated_ms,
            "author_allowlist": (
                None if self.author_allowlist is None else list(self.author_allowlist)
            ),
            "stats": dict(self.stats),
            "has_credential": self.has_credential,
            "lag": dict(self.lag),
            "next_try_s": self.next_try_s,
            "origin": self.origin,
        }

    @classmethod
    def from_dict(cls, obj: object) -> PairStatus:
        """Parse the JSON form (PEER_INVALID)."""
        r = _Reader(obj, "pair")
        try:
            flt = PairFilter.from_dict(r.obj.get("filter"))
            state = PairState(r.text("state"))
        except (FedpeerError, ValueError):
            raise PeerInvalid("the pair answer has no valid filter or state") from None
        allow = r.obj.get("author_allowlist")
        return cls(
            id=r.text("id"),
            local_did=r.text("local_did"),
            peer_did=r.text("peer_did"),
            peer_url=r.text("peer_url"),
            filter=flt,
            state=state,
            cursor=r.opt_text("cursor"),
            retries=r.integer("retries"),
            last_error=_last_error(r.obj.get("last_error")),
            created_ms=r.integer("created_ms"),
            updated_ms=r.integer("updated_ms"),
            author_allowlist=None if allow is None else r.texts("author_allowlist"),
            has_credential=r.flag("has_credential"),
            stats=r.mapping("stats"),
            lag=r.mapping("lag"),
            next_try_s=_seconds_or_none(r.obj.get("next_try_s")),
            # absent from nodes older than pair origins
            origin="redeem" if r.obj.get("origin") == "redeem" else "owner",
        )


def _seconds_or_none(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise PeerInvalid("the pair answer's next_try_s is not a number of seconds")
    return float(value)


@attrs.frozen
class PairingResult:
    """What pairing from an invite did (``POST /v1/sync/pairs/from-invite``).

    ``pair`` pulls from the issuer (``created`` False when it existed: it then
    took the new credential and resumed); ``confirmation_code`` is the code both
    sides show; ``two_way`` whether the issuer got a credential to pull back
    (from ``reciprocal_url``), and ``reverse_pair`` its report on that pair.
    """

    pair: PairStatus
    created: bool
    confirmation_code: str
    issuer_did: str
    issuer_url: str
    invite_id: str
    scopes: tuple[str, ...]
    two_way: bool
    reciprocal_url: str | None
    reverse_pair: dict[str, object] | None = attrs.field(eq=False)

    def to_dict(self) -> dict[str, object]:
        """The JSON answer."""
        return {
            "pair": self.pair.to_dict(),
            "created": self.created,
            "confirmation_code": self.confirmation_code,
            "issuer_did": self.issuer_did,
            "issuer_url": self.issuer_url,
            "invite_id": self.invite_id,
            "scopes": list(self.scopes),
            "two_way": self.two_way,
            "reciprocal_url": self.reciprocal_url,
            "reverse_pair": self.reverse_pair,
        }

    @classmethod
    def from_dict(cls, obj: object) -> PairingResult:
        """Parse the answer (PEER_INVALID)."""
        r = _Reader(obj, "pairing")
        reverse = r.obj.get("reverse_pair")
        if reverse is not None and not isinstance(reverse, dict):
            raise PeerInvalid("the pairing answer has a bad reverse_pair")
        return cls(
            pair=PairStatus.from_dict(r.obj.get("pair")),
            created=r.flag("created"),
            confirmation_code=r.text("confirmation_code"),
            issuer_did=r.text("issuer_did"),
            issuer_url=r.text("issuer_url"),
            invite_id=r.text("invite_id"),
            scopes=r.texts("scopes"),
            two_way=r.flag("two_way"),
            reciprocal_url=r.opt_text("reciprocal_url"),
            reverse_pair=None if reverse is None else dict(reverse),
        )


@attrs.frozen
class UnpairResult:
    """What unpairing did (``POST /v1/sync/pairs/unpair``).

    ``peer_did`` is the peer forgotten; ``pairs_deleted`` the local pairs that pulled
    from it; ``credentials_revoked`` the service accounts it held here (its tokens
    stop working at once); ``peer`` the peer's answer to the signed request
    (``{"pairs_deleted": [...], "credentials_revoked": [...]}``), ``{"asked": false}``
    with ``notify=False``, or ``{"error": {code, message}}`` when it could not be
    asked (this side is unpaired anyway: run unpair on the other device too, or it
    keeps failing to pull).
    """

    peer_did: str
    pairs_deleted: tuple[str, ...]
    credentials_revoked: tuple[str, ...]
    peer: dict[str, object]

    def to_dict(self) -> dict[str, object]:
        """The JSON form."""
        return {
            "peer_did": self.peer_did,
            "pairs_deleted": list(self.pairs_deleted),
            "credentials_revoked": list(self.credentials_revoked),
            "peer": dict(self.peer),
        }

    @classmethod
    def from_dict(cls, obj: object) -> UnpairResult:
        """Parse the JSON form (PEER_INVALID)."""
        r = _Reader(obj, "unpair")
        return cls(
            peer_did=r.text("peer_did"),
            pairs_deleted=tuple(r.texts("pairs_deleted")),
            credentials_revoked=tuple(r.texts("credentials_revoked")),
            peer=r.mapping("peer"),
        )
