"""Service accounts and bearer tokens, on top of the store's state area.

Theory of operation
-------------------

A *service account* (SA) is a named holder of scopes, bound to one holder DID.
It has one or more *tokens*; a token is what a client sends as
``Authorization: Bearer fp_<sa_id>_<secret>``.

- ``sa_id`` is 20 lowercase hex characters (80 random bits; public, shown in
  listings). ``secret`` is 64 lowercase hex characters (256 random bits).
  Neither contains ``_``, so a bearer splits unambiguously; anything that is
  not exactly ``fp_`` + 20 hex + ``_`` + 64 hex is refused.
- A token also has a public ``token_id`` (16 lowercase hex characters, random
  and separate from the secret) used to name it in routes, listings and audit.
- Only ``sha256(bearer)`` is stored; the bearer itself is returned once, by the
  call that minted it (:class:`IssuedToken`), and never written anywhere.
- Checking a bearer: parse it (malformed -> ``TOKEN_INVALID``), load the SA by
  the ``sa_id`` it names, hash the bearer and compare that hash, with
  :func:`hmac.compare_digest`, against each live token of that SA. Unknown SA,
  no matching hash, revoked token or revoked SA all give the same
  ``TOKEN_INVALID`` message, so a caller cannot tell which. Only a bearer whose
  hash matched can learn that it expired (``TOKEN_EXPIRED``).

State rows (tables named in docs/architecture.md, values JSON-able):

- ``service_accounts/<sa_id>``: ``{id, name, holder_did, scopes: [..], origin,
  created_ms, revoked_ms, token_ids: [live token ids], written_records,
  written_bytes}`` (the last two count the account's record writes,
  :func:`charge_write`; absent in rows written before they existed: 0)
- ``tokens/<token_id>``: ``{token_id, sa_id, holder_did, hash (hex sha256),
  created_ms, expires_ms, revoked_ms, replaced_by, replaces?}``; revoked tokens
  stay as history (``revoked_ms`` set) and leave the SA's ``token_ids``, except
  that a self-rotation deletes the row its token replaced (:func:`rotate_token`).
- ``meta/consent.bootstrap``: ``{sa_id, closed_ms}`` once the bootstrap admin
  SA exists.

Every mutating function takes a :class:`~fedpeer.store.base.StateTx`, so it
runs inside ``Store.transact`` and is atomic with whatever else the caller does
there; each writes one audit event (never a secret or a hash) per change.
Everything here is synchronous and pure over the transaction, except
:func:`authenticate_bearer`, which awaits ``Store.get_state`` reads.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Protocol

import attrs

from .._clock import now_ms as _now_ms
from ..errors import (
    BootstrapClosed,
    Conflict,
    DidInvalid,
    InvalidRequest,
    QuotaExceeded,
    RateLimited,
    RotateNotSelf,
    ServiceAccountNotFound,
    StoreCorrupt,
    TokenExpired,
    TokenInvalid,
    TokenRevoked,
)
from ..identity._syntax import is_did
from .scopes import ALL_SCOPES, has_scope, parse_scopes, scopes_to_list

if TYPE_CHECKING:
    from ..store.base import StateTx

__all__ = [
    "BOOTSTRAP_META_KEY",
    "AsyncStateReader",
    "IssuedToken",
    "Principal",
    "ServiceAccount",
    "StateReader",
    "WriteQuota",
    "authenticate",
    "authenticate_bearer",
    "bootstrap_admin",
    "charge_write",
    "create_service_account",
    "get_service_account",
    "hash_bearer",
    "is_bootstrapped",
    "list_service_accounts",
    "revoke_service_account",
    "rotate_key",
    "rotate_token",
]

SA_TABLE = "service_accounts"
TOKEN_TABLE = "tokens"  # noqa: S105 (a table name)
META_TABLE = "meta"
BOOTSTRAP_META_KEY = "consent.bootstrap"

TOKEN_PREFIX = "fp_"  # noqa: S105 (the public prefix)
_SA_ID_HEX = 20
_TOKEN_ID_HEX = 16
_SECRET_HEX = 64
_BEARER_RE = re.compile(rf"fp_([0-9a-f]{{{_SA_ID_HEX}}})_([0-9a-f]{{{_SECRET_HEX}}})")
_BEARER_LEN = len(TOKEN_PREFIX) + _SA_ID_HEX + 1 + _SECRET_HEX
_SA_ID_RE = re.compile(rf"[0-9a-f]{{{_SA_ID_HEX}}}")
_TOKEN_ID_RE = re.compile(rf"[0-9a-f]{{{_TOKEN_ID_HEX}}}")
_ORIGIN_RE = re.compile(r"bootstrap|api|invite:[A-Za-z0-9._-]{1,128}")
_MAX_NAME_LEN = 128
_ID_ATTEMPTS = 8

# One message for every way a bearer can be wrong, so callers learn nothing
# about which part was wrong.
_INVALID_MESSAGE = (
    "the bearer token is not valid (unknown, revoked or mistyped); "
    "check it or ask the node's owner for a new one"
)


class StateReader(Protocol):
    """What read-only functions need: ``StateTx`` satisfies it."""

    def get(self, table: str, key: str) -> dict[str, object] | None: ...


class AsyncStateReader(Protocol):
    """What :func:`authenticate_bearer` needs: ``Store`` satisfies it."""

    async def get_state(self, table: str, key: str) -> dict[str, object] | None: ...


# --- values ------------------------------------------------------------------


@attrs.frozen
class ServiceAccount:
    """A service account as stored (``revoked_ms`` is None while it is live).

    ``origin`` is ``"bootstrap"``, ``"api"`` or ``"invite:<invite_id>"``;
    ``token_ids`` are the ids of its live (unrevoked) tokens.
    ``written_records`` and ``written_bytes`` count what its holder wrote
    (:func:`charge_write`): every record a write of it carried, records the
    node already had included, and their ``data`` plus ``sig`` bytes.
    """

    id: str
    name: str
    holder_did: str
    scopes: frozenset[str]
    origin: str
    created_ms: int
    revoked_ms: int | None
    token_ids: tuple[str, ...] = ()
    written_records: int = 0
    written_bytes: int = 0

    @property
    def revoked(self) -> bool:
        return self.revoked_ms is not None

    def to_dict(self) -> dict[str, object]:
        """JSON form for the HTTP layer (scopes as a sorted list)."""
        return {
            "id": self.id,
            "name": self.name,
            "holder_did": self.holder_did,
            "scopes": scopes_to_list(self.scopes),
            "origin": self.origin,
            "created_ms": self.created_ms,
            "revoked_ms": self.revoked_ms,
            "token_ids": list(self.token_ids),
            "written_records": self.written_records,
            "written_bytes": self.written_bytes,
        }


@attrs.frozen
class IssuedToken:
    """A freshly minted token. ``bearer`` is the plaintext, available only here.

    Show ``bearer`` to the user once; it is kept out of ``repr`` so it does not
    end up in logs by accident.
    """

    sa_id: str
    token_id: str
    bearer: str = attrs.field(repr=False)
    holder_did: str
    created_ms: int
    expires_ms: int | None

    def to_dict(self) -> dict[str, object]:
        """JSON form, including the plaintext bearer (for the one response)."""
        return {
            "sa_id": self.sa_id,
            "token_id": self.token_id,
            "token": self.bearer,
            "holder_did": self.holder_did,
            "created_ms": self.created_ms,
            "expires_ms": self.expires_ms,
        }


@attrs.frozen
class Principal:
    """Who a verified bearer speaks for."""

    sa_id: str
    token_id: str
    holder_did: str
    scopes: frozenset[str]
    expires_ms: int | None

    def allows(self, scope: str) -> bool:
        """True if this principal has ``scope`` (``admin`` implies all)."""
        return has_scope(self.scopes, scope)


# --- helpers -----------------------------------------------------------------


def hash_bearer(bearer: str) -> str:
    """Lowercase hex SHA-256 of the bearer's ASCII bytes (what is stored)."""
    return hashlib.sha256(bearer.encode("ascii")).hexdigest()


def _parse_bearer(bearer: object) -> str | None:
    """The ``sa_id`` of a well-formed bearer, else None."""
    if not isinstance(bearer, str) or len(bearer) != _BEARER_LEN:
        return None
    m = _BEARER_RE.fullmatch(bearer)
    return m.group(1) if m else None


def _new_id(tx: StateReader, table: str, nbytes: int) -> str:
    for _ in range(_ID_ATTEMPTS):
        candidate = secrets.token_hex(nbytes)
        if tx.get(table, candidate) is None:
            return candidate
    raise StoreCorrupt(f"could not find a free id in {table!r}; the random source is broken")


MAX_ROTATE_TTL_MS = 366 * 24 * 3600 * 1000
"""The longest lifetime a rotation gives a token that never expired (as invites)."""


def _check_ttl(ttl_ms: int | None) -> None:
    if ttl_ms is None:
        return
    if isinstance(ttl_ms, bool) or not isinstance(ttl_ms, int) or ttl_ms <= 0:
        raise InvalidRequest("ttl_ms must be a positive whole number of milliseconds, or null")


def _check_did(did: object) -> str:
    if not is_did(did):
        raise DidInvalid("holder_did (the CLI's --holder) must be a DID such as did:key:z6Mk...")
    return did


def _check_name(name: object) -> str:
    if (
        not isinstance(name, str)
        or not name.strip()
        or len(name) > _MAX_NAME_LEN
        or not name.isprintable()
    ):
        raise InvalidRequest(f"name must be 1 to {_MAX_NAME_LEN} printable characters")
    return name


def _check_origin(origin: object) -> str:
    if not isinstance(origin, str) or not _ORIGIN_RE.fullmatch(origin):
        raise InvalidRequest("origin must be 'bootstrap', 'api' or 'invite:<invite_id>'")
    return origin


def _field_str(row: Mapping[str, object], key: str) -> str:
    value = row.get(key)
    if not isinstance(value, str):
        raise StoreCorrupt(f"state row field {key!r} is not a string")
    return value


def _field_int(row: Mapping[str, object], key: str) -> int:
    value = row.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise StoreCorrupt(f"state row field {key!r} is not an integer")
    return value


def _field_opt_int(row: Mapping[str, object], key: str) -> int | None:
    value = row.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise StoreCorrupt(f"state row field {key!r} is not an integer or null")
    return value


def _field_str_list(row: Mapping[str, object], key: str) -> list[str]:
    value = row.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise StoreCorrupt(f"state row field {key!r} is not a list of strings")
    return [str(v) for v in value]


def _sa_from_row(row: Mapping[str, object]) -> ServiceAccount:
    return ServiceAccount(
        id=_field_str(row, "id"),
        name=_field_str(row, "name"),
        holder_did=_field_str(row, "holder_did"),
        scopes=frozenset(_field_str_list(row, "scopes")) & ALL_SCOPES,
        origin=_field_str(row, "origin"),
        created_ms=_field_int(row, "created_ms"),
        revoked_ms=_field_opt_int(row, "revoked_ms"),
        token_ids=tuple(_field_str_list(row, "token_ids")),
        written_records=_field_opt_int(row, "written_records") or 0,
        written_bytes=_field_opt_int(row, "written_bytes") or 0,
    )


def _sa_to_row(sa: ServiceAccount) -> dict[str, object]:
    return sa.to_dict()


def _load_sa(tx: StateReader, sa_id: str) -> ServiceAccount:
    row = tx.get(SA_TABLE, sa_id) if _SA_ID_RE.fullmatch(sa_id) else None
    if row is None:
        raise ServiceAccountNotFound(f"no service account {sa_id!r}; list them to find the id")
    return _sa_from_row(row)


def _mint(
    tx: StateTx,
    sa: ServiceAccount,
    *,
    now_ms: int,
    expires_ms: int | None,
    replaces: str | None = None,
) -> tuple[IssuedToken, dict[str, object]]:
    """Create and store a token row for ``sa`` (caller updates the SA row);
    ``replaces``: the token a self-rotation replaces (:func:`rotate_token`)."""
    token_id = _new_id(tx, TOKEN_TABLE, _TOKEN_ID_HEX // 2)
    bearer = f"{TOKEN_PREFIX}{sa.id}_{secrets.token_hex(_SECRET_HEX // 2)}"
    row: dict[str, object] = {
        "token_id": token_id,
        "sa_id": sa.id,
        "holder_did": sa.holder_did,
        "hash": hash_bearer(bearer),
        "created_ms": now_ms,
        "expires_ms": expires_ms,
        "revoked_ms": None,
        "replaced_by": None,
    }
    if replaces is not None:
        row["replaces"] = replaces
    tx.put(TOKEN_TABLE, token_id, row)
    issued = IssuedToken(
        sa_id=sa.id,
        token_id=token_id,
        bearer=bearer,
        holder_did=sa.holder_did,
        created_ms=now_ms,
        expires_ms=expires_ms,
    )
    return issued, row


def _revoke_tokens(
    tx: StateTx, token_ids: Iterable[str], *, now_ms: int, replaced_by: str | None = None
) -> list[str]:
    revoked: list[str] = []
    for tid in token_ids:
        row = tx.get(TOKEN_TABLE, tid)
        if row is None or row.get("revoked_ms") is not None:
            continue
        tx.put(TOKEN_TABLE, tid, {**row, "revoked_ms": now_ms, "replaced_by": replaced_by})
        revoked.append(tid)
    if revoked:
        # Long-lived reads (longpoll, continuous feed) re-check their bearer when
        # woken: wake them at commit so a revoked holder stops reading at once.
        tx.wake_waiters()
    return revoked


# --- service accounts --------------------------------------------------------


def create_service_account(
    tx: StateTx,
    *,
    name: str,
    holder_did: str,
    scopes: Iterable[str],
    origin: str = "api",
    ttl_ms: int | None = None,
    now_ms: int | None = None,
) -> tuple[ServiceAccount, IssuedToken]:
    """Create a service account and its first token, inside ``tx``.

    ``scopes`` are scope or preset names (see :func:`parse_scopes`);
    ``holder_did`` is the DID the account (and every token of it) is bound to;
    ``origin`` is ``"api"``, ``"bootstrap"`` or ``"invite:<invite_id>"``;
    ``ttl_ms`` (None: never expires) sets the first token's expiry to
    ``now_ms + ttl_ms``. Returns the account and the one-time
    :class:`IssuedToken` (the only place its plaintext exists). Writes audit
    event ``service_account.created``.

    Raises ``INVALID_REQUEST`` (bad name, scopes, origin or ttl_ms) or
    ``DID_INVALID``. Synchronous; run it in ``Store.transact``.
    """
    now = _now_ms(now_ms)
    scope_set = parse_scopes(scopes)
    _check_name(name)
    _check_did(holder_did)
    _check_origin(origin)
    _check_ttl(ttl_ms)
    sa = ServiceAccount(
        id=_new_id(tx, SA_TABLE, _SA_ID_HEX // 2),
        name=name,
        holder_did=holder_did,
        scopes=scope_set,
        origin=origin,
        created_ms=now,
        revoked_ms=None,
    )
    issued, _ = _mint(tx, sa, now_ms=now, expires_ms=None if ttl_ms is None else now + ttl_ms)
    sa = attrs.evolve(sa, token_ids=(issued.token_id,))
    tx.put(SA_TABLE, sa.id, _sa_to_row(sa))
    tx.audit(
        {
            "type": "service_account.created",
            "sa_id": sa.id,
            "token_id": issued.token_id,
            "name": sa.name,
            "holder_did": sa.holder_did,
            "scopes": scopes_to_list(sa.scopes),
            "origin": sa.origin,
            "expires_ms": issued.expires_ms,
        },
        ts_ms=now,
    )
    return sa, issued


def get_service_account(tx: StateReader, sa_id: str) -> ServiceAccount:
    """The service account ``sa_id`` (live or revoked).

    Raises ``SERVICE_ACCOUNT_NOT_FOUND`` if there is none. Synchronous.
    """
    return _load_sa(tx, sa_id)


def list_service_accounts(tx: StateTx, *, include_revoked: bool = True) -> list[ServiceAccount]:
    """Every service account, oldest first (ties by id). Synchronous."""
    out = [_sa_from_row(row) for _, row in tx.list(SA_TABLE)]
    if not include_revoked:
        out = [sa for sa in out if sa.revoked_ms is None]
    out.sort(key=lambda sa: (sa.created_ms, sa.id))
    return out


@attrs.frozen
class WriteQuota:
    """How much one service account may write, in records and in bytes (``data``
    plus ``sig`` of each record); None: no bound."""

    records: int | None = None
    bytes: int | None = None


def charge_write(
    tx: StateTx,
    principal: Principal,
    *,
    records: int,
    nbytes: int,
    quota: WriteQuota,
    now_ms: int | None = None,
) -> ServiceAccount:
    """Count a write of ``records`` records (``nbytes`` bytes) against the account
    ``principal`` speaks for, in the transaction that stores them.

    Every record the write carries counts, records the node already had
    included: what a holder may write is bounded by what it sends, and a holder
    that may not read a record cannot learn from its quota whether the node had
    it. Raises, so that the transaction stores nothing:

    - ``TOKEN_REVOKED`` when the account or the token was revoked (or rotated
      away) since the request was authenticated, ``TOKEN_EXPIRED`` when the token
      expired since: no write commits after a revocation has;
    - ``QUOTA_EXCEEDED`` when the account's counts would pass ``quota``.

    Returns the account with its new counts. Synchronous; run it in
    ``Store.transact``.
    """
    now = _now_ms(now_ms)
    row = tx.get(SA_TABLE, principal.sa_id) if _SA_ID_RE.fullmatch(principal.sa_id) else None
    token = tx.get(TOKEN_TABLE, principal.token_id)
    sa = _sa_from_row(row) if row is not None else None
    if (
        sa is None
        or sa.revoked_ms is not None
        or principal.token_id not in sa.token_ids
        or token is None
        or token.get("revoked_ms") is not None
    ):
        raise TokenRevoked(
            "this token was revoked while the request was open; nothing was stored. "
            "Ask the node's owner for a new one"
        )
    expires_ms = _field_opt_int(token, "expires_ms")
    if expires_ms is not None and now >= expires_ms:
        raise TokenExpired(
            "the bearer token expired while the request was open; nothing was stored"
        )
    written = sa.written_records + records
    written_bytes = sa.written_bytes + nbytes
    if quota.records is not None and written > quota.records:
        raise QuotaExceeded(
            f"this holder has written {sa.written_records} records of the "
            f"{quota.records} it may write (this write has {records}); nothing was "
            "stored. Ask the node's owner to raise write_quota_records"
        )
    if quota.bytes is not None and written_bytes > quota.bytes:
        raise QuotaExceeded(
            f"this holder has written {sa.written_bytes} bytes of records of the "
            f"{quota.bytes} it may write (this write has {nbytes}); nothing was "
            "stored. Ask the node's owner to raise write_quota_bytes"
        )
    sa = attrs.evolve(sa, written_records=written, written_bytes=written_bytes)
    tx.put(SA_TABLE, sa.id, _sa_to_row(sa))
    return sa


def revoke_service_account(tx: StateTx, sa_id: str, *, now_ms: int | None = None) -> ServiceAccount:
    """Revoke ``sa_id`` and every token it has; its bearers stop working at once.

    Returns the revoked account. Revoking an already revoked account changes
    nothing and writes no audit event (DELETE is idempotent); otherwise writes
    ``service_account.revoked`` with the revoked token ids. Raises
    ``SERVICE_ACCOUNT_NOT_FOUND`` if there is no such account. Revoking the
    bootstrap admin is allowed: the operator then needs another admin token.
    Synchronous; run it in ``Store.transact``.
    """
    now = _now_ms(now_ms)
    sa = _load_sa(tx, sa_id)
    if sa.revoked_ms is not None:
        return sa
    revoked = _revoke_tokens(tx, sa.token_ids, now_ms=now)
    sa = attrs.evolve(sa, revoked_ms=now, token_ids=())
    tx.put(SA_TABLE, sa.id, _sa_to_row(sa))
    tx.audit(
        {
            "type": "service_account.revoked",
            "sa_id": sa.id,
            "revoked_token_ids": revoked,
        },
        ts_ms=now,
    )
    return sa


def rotate_key(
    tx: StateTx, sa_id: str, *, ttl_ms: int | None = None, now_ms: int | None = None
) -> IssuedToken:
    """Mint a new token for ``sa_id``, then revoke all its older tokens.

    Both happen in ``tx``, so either the new token exists and the old ones are
    dead, or nothing changed. ``ttl_ms`` (None: never expires) sets the new
    token's expiry. Returns the one-time :class:`IssuedToken`. Writes
    ``service_account.key_rotated``. Raises ``SERVICE_ACCOUNT_NOT_FOUND``,
    ``CONFLICT`` (the account is revoked) or ``INVALID_REQUEST`` (ttl_ms).
    Synchronous; run it in ``Store.transact``.
    """
    now = _now_ms(now_ms)
    _check_ttl(ttl_ms)
    sa = _load_sa(tx, sa_id)
    if sa.revoked_ms is not None:
        raise Conflict(f"service account {sa_id!r} is revoked; create a new one")
    issued, _ = _mint(tx, sa, now_ms=now, expires_ms=None if ttl_ms is None else now + ttl_ms)
    revoked = _revoke_tokens(tx, sa.token_ids, now_ms=now, replaced_by=issued.token_id)
    tx.put(SA_TABLE, sa.id, _sa_to_row(attrs.evolve(sa, token_ids=(issued.token_id,))))
    tx.audit(
        {
            "type": "service_account.key_rotated",
            "sa_id": sa.id,
            "token_id": issued.token_id,
            "revoked_token_ids": revoked,
            "expires_ms": issued.expires_ms,
        },
        ts_ms=now,
    )
    return issued


# --- tokens ------------------------------------------------------------------


def rotate_token(
    tx: StateTx,
    token_id: str,
    caller: Principal,
    *,
    ttl_ms: int | None = None,
    now_ms: int | None = None,
    min_age_ms: int = 0,
) -> IssuedToken:
    """Replace the caller's own token ``token_id`` with a new one.

    Only the token itself may ask (``caller.token_id == token_id``), else
    ``ROTATE_NOT_SELF``. The new token belongs to the same account and holder;
    its expiry slides: ``now_ms + ttl_ms`` if ``ttl_ms`` is given (but never
    more than the old token's original lifetime, or MAX_ROTATE_TTL_MS for one
    that never expired: a holder cannot outlive the issuer's policy), else
    ``now_ms`` plus the old token's original lifetime, else (the old one never
    expired) none. The old token is revoked in the same ``tx``, so the old
    bearer stops working. Returns the one-time :class:`IssuedToken`; writes
    ``token.rotated``.

    A token younger than ``min_age_ms``, or than a quarter of its lifetime if
    that is less, may not rotate yet (``RATE_LIMITED``, ``retry_after`` the
    seconds left): every rotation is a durable write (a token row, an audit
    entry that is never deleted), which a holder must not be able to repeat
    at its request rate. The row of the token the old one replaced, if any, is
    deleted: a chain of self-rotations keeps two rows, the live token and the
    one it replaced.

    Raises ``ROTATE_NOT_SELF``, ``TOKEN_INVALID`` (the token or account was
    revoked meanwhile), ``TOKEN_EXPIRED``, ``RATE_LIMITED`` or
    ``INVALID_REQUEST`` (ttl_ms). Synchronous; run it in ``Store.transact``.
    """
    now = _now_ms(now_ms)
    if token_id != caller.token_id:
        raise RotateNotSelf("a token can only rotate itself; call this with that token")
    _check_ttl(ttl_ms)
    row = tx.get(TOKEN_TABLE, token_id) if _TOKEN_ID_RE.fullmatch(token_id) else None
    if row is None or row.get("revoked_ms") is not None or row.get("sa_id") != caller.sa_id:
        raise TokenInvalid(_INVALID_MESSAGE)
    sa_row = tx.get(SA_TABLE, caller.sa_id)
    if sa_row is None:
        raise TokenInvalid(_INVALID_MESSAGE)
    sa = _sa_from_row(sa_row)
    if sa.revoked_ms is not None or token_id not in sa.token_ids:
        raise TokenInvalid(_INVALID_MESSAGE)
    old_expires = _field_opt_int(row, "expires_ms")
    if old_expires is not None and now >= old_expires:
        raise TokenExpired("the bearer token has expired; ask the node's owner for a new one")
    created = _field_int(row, "created_ms")
    age = now - created
    # a token that expires may rotate once a quarter of its life has passed, if
    # that comes sooner: it must be able to slide its expiry in time
    needed = min_age_ms if old_expires is None else min(min_age_ms, (old_expires - created) // 4)
    if age < needed:
        wait_s = (needed - age) / 1000
        raise RateLimited(
            f"this token was made {max(0, age) // 1000} s ago; it may rotate itself "
            f"once it is {needed // 1000} s old: retry in {wait_s:.0f} s",
            retry_after=wait_s,
        )
    # A rotation slides the expiry; it never lengthens the token's lifetime (the
    # issuer's policy): a longer ttl is cut to the old token's own lifetime, and
    # to MAX_ROTATE_TTL_MS for one that never expired.
    lifetime = None if old_expires is None else max(1, old_expires - _field_int(row, "created_ms"))
    if ttl_ms is not None:
        expires: int | None = now + min(ttl_ms, lifetime or MAX_ROTATE_TTL_MS)
    elif lifetime is not None:
        expires = now + lifetime
    else:
        expires = None
    issued, _ = _mint(tx, sa, now_ms=now, expires_ms=expires, replaces=token_id)
    _revoke_tokens(tx, [token_id], now_ms=now, replaced_by=issued.token_id)
    before = row.get("replaces")
    if isinstance(before, str) and before != token_id:
        gone = tx.get(TOKEN_TABLE, before)
        if gone is not None and gone.get("revoked_ms") is not None:
            tx.delete(TOKEN_TABLE, before)
    token_ids = (*(t for t in sa.token_ids if t != token_id), issued.token_id)
    tx.put(SA_TABLE, sa.id, _sa_to_row(attrs.evolve(sa, token_ids=token_ids)))
    tx.audit(
        {
            "type": "token.rotated",
            "sa_id": sa.id,
            "token_id": issued.token_id,
            "old_token_id": token_id,
            "expires_ms": expires,
        },
        ts_ms=now,
    )
    return issued


def _verify(
    presented_hash: str,
    sa_row: Mapping[str, object] | None,
    token_rows: Iterable[Mapping[str, object] | None],
    now_ms: int,
) -> Principal:
    """Shared core of :func:`authenticate` and :func:`authenticate_bearer`."""
    if sa_row is None:
        raise TokenInvalid(_INVALID_MESSAGE)
    sa = _sa_from_row(sa_row)
    presented = presented_hash.encode("ascii")
    match: Mapping[str, object] | None = None
    for row in token_rows:
        if row is None:
            continue
        stored = row.get("hash")
        if not isinstance(stored, str):
            continue
        # Compare every candidate (no early exit) in constant time.
        if hmac.compare_digest(stored.encode("utf-8", "replace"), presented):
            match = row
    if (
        match is None
        or sa.revoked_ms is not None
        or match.get("revoked_ms") is not None
        or match.get("sa_id") != sa.id
    ):
        raise TokenInvalid(_INVALID_MESSAGE)
    expires_ms = _field_opt_int(match, "expires_ms")
    if expires_ms is not None and now_ms >= expires_ms:
        raise TokenExpired("the bearer token has expired; rotate it or ask for a new one")
    return Principal(
        sa_id=sa.id,
        token_id=_field_str(match, "token_id"),
        holder_did=_field_str(match, "holder_did"),
        scopes=sa.scopes,
        expires_ms=expires_ms,
    )


def authenticate(tx: StateReader, bearer: str, now_ms: int | None = None) -> Principal:
    """Check a bearer token (the part after ``Bearer ``) and say whom it is for.

    ``tx`` is a ``StateTx`` (or anything with its ``get``). A token is good if
    it is well-formed, its hash matches a live token of a live account, and
    ``now_ms < expires_ms`` (when it has an expiry). Raises ``TOKEN_INVALID``
    (malformed, unknown, wrong secret, revoked: one message for all) or
    ``TOKEN_EXPIRED``. Synchronous, read-only.
    """
    now = _now_ms(now_ms)
    sa_id = _parse_bearer(bearer)
    if sa_id is None:
        raise TokenInvalid(_INVALID_MESSAGE)
    presented = hash_bearer(bearer)
    sa_row = tx.get(SA_TABLE, sa_id)
    token_ids = _field_str_list(sa_row, "token_ids") if sa_row is not None else []
    rows = [tx.get(TOKEN_TABLE, tid) for tid in token_ids]
    return _verify(presented, sa_row, rows, now)


async def authenticate_bearer(
    store: AsyncStateReader, bearer: str, now_ms: int | None = None
) -> Principal:
    """:func:`authenticate` over ``Store.get_state`` reads, for each request.

    No write transaction is opened: it does one ``get_state`` for the account
    and one per live token of it (usually one). Same results and errors as
    :func:`authenticate`. Cancellation: safe at any await (it only reads).
    """
    now = _now_ms(now_ms)
    sa_id = _parse_bearer(bearer)
    if sa_id is None:
        raise TokenInvalid(_INVALID_MESSAGE)
    presented = hash_bearer(bearer)
    sa_row = await store.get_state(SA_TABLE, sa_id)
    token_ids = _field_str_list(sa_row, "token_ids") if sa_row is not None else []
    rows = [await store.get_state(TOKEN_TABLE, tid) for tid in token_ids]
    return _verify(presented, sa_row, rows, now)


# --- bootstrap ---------------------------------------------------------------


def is_bootstrapped(tx: StateReader) -> bool:
    """True once :func:`bootstrap_admin` has run on this store. Synchronous."""
    return tx.get(META_TABLE, BOOTSTRAP_META_KEY) is not None


def bootstrap_admin(
    tx: StateTx, holder_did: str, now_ms: int | None = None, *, name: str = "admin"
) -> tuple[ServiceAccount, IssuedToken]:
    """Create the node's first admin account, bound to the node's own DID, once.

    Creates an ``admin``-scoped account with origin ``"bootstrap"`` and a token
    that never expires, and marks bootstrap closed in the ``meta`` table (audit
    events ``service_account.created`` and ``bootstrap.closed``). Raises
    ``BOOTSTRAP_CLOSED`` if it already ran on this store (even if that account
    was revoked since), ``DID_INVALID`` for a bad DID. Synchronous; run it in
    ``Store.transact``.
    """
    now = _now_ms(now_ms)
    if is_bootstrapped(tx):
        raise BootstrapClosed("the bootstrap admin account already exists; use its token")
    sa, issued = create_service_account(
        tx, name=name, holder_did=holder_did, scopes=["admin"], origin="bootstrap", now_ms=now
    )
    tx.put(META_TABLE, BOOTSTRAP_META_KEY, {"sa_id": sa.id, "closed_ms": now})
    tx.audit({"type": "bootstrap.closed", "sa_id": sa.id, "token_id": issued.token_id}, ts_ms=now)
    return sa, issued
