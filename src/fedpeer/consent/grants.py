"""Grants: which peer may see which records. The one consent rule for every read.

Theory of operation
-------------------
A *grant* says "the holder of DID ``grantee_did`` may read records under
``target`` with ``scopes``, until ``expires_ms``". A target is one of:

- ``instance``: every record of this node;
- ``namespace``: every record whose namespace starts with ``value`` (a raw
  string prefix, the same rule as :class:`~fedpeer.store.base.ChangeFilter`:
  ``"app"`` covers ``"app"``, ``"app/x"`` and ``"apple"``; end the prefix with
  ``/`` to mean one subtree);
- ``thread``: every record whose thread is exactly ``value``, in any namespace,
  or only in the namespace exactly ``namespace`` when that is given.

**Default posture: nothing.** A caller with no live grant sees no record. A
read path asks for a :class:`ConsentView` for one scope (``records:read`` for
the record and thread routes, ``sync:read`` for the changes feed and batch
fetch); only grants whose scopes allow that scope (``admin`` implies all) and
that have not expired count. The view answers two questions, both pure:

- :meth:`ConsentView.visible` (namespace, thread) -> bool, used to filter every
  record of a feed page, a batch fetch, a thread listing and a record get;
  feeds and listings leave out what is not visible and the cursor still
  advances past it (see :func:`fedpeer.sync.feed.build_page`);
- :meth:`ConsentView.check_write` raises ``CONSENT_DENIED`` for a write (append,
  a record signed elsewhere) into a namespace/thread the view (for the
  ``records:write`` scope) does not cover: writes are filtered exactly as reads;
- :meth:`ConsentView.check_filter` raises ``CONSENT_DENIED`` when a request
  *names* a namespace prefix or thread that no grant overlaps, so a caller
  asking for something outside its grants is told so instead of being shown an
  empty page forever. Overlap, not containment: a grant for ``app/a`` lets the
  caller ask for ``namespace=app`` and see the ``app/a`` part of it.

Grants may also be bound to one service account (``sa_id``): such a grant only
applies to requests made with that account's tokens. Invite redemption binds the
grants it creates this way, so a *guest* holder (who never proved it controls
its key) cannot borrow grants made for the same DID by someone else (see
:mod:`fedpeer.consent.invites`).

State rows (table ``grants``), keyed ``<grantee_did>#<grant_id>`` so one
prefix scan finds a caller's grants (``#`` cannot occur in a DID)::

    {id, grantee_did, target: {type, value, namespace}, scopes: [..],
     created_ms, expires_ms, origin, sa_id}

Every change to the grants table bumps the *consent revision* (``meta`` row
``consent.revision``, an integer), in the same transaction; the node's manifest
shows it so peers can tell their view changed. Views are never cached across
requests, so a change takes effect on the next page.

Everything here is synchronous and pure over a ``StateTx`` except
:func:`load_view`, which awaits ``Store.list_state`` (no write transaction).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Literal, Protocol

import attrs

from .._clock import now_ms as _now_ms
from ..errors import (
    ConsentDenied,
    DidInvalid,
    GrantNotFound,
    InvalidRequest,
    StoreCorrupt,
)
from ..identity._syntax import is_did, is_name
from ..store.base import ChangeFilter
from .scopes import ALL_SCOPES, PRESETS, has_scope, parse_scopes, scopes_to_list

if TYPE_CHECKING:
    from ..store.base import StateTx, StoredRecord

__all__ = [
    "EVERYTHING",
    "EVERYTHING_GRANTED",
    "GRANT_TABLE",
    "NOTHING",
    "REVISION_META_KEY",
    "ConsentView",
    "Grant",
    "Target",
    "bump_revision",
    "create_grant",
    "delete_grant",
    "delete_grants_by_origin",
    "get_revision",
    "grants_for",
    "list_grants",
    "load_revision",
    "load_view",
    "parse_target",
    "presets_json",
    "view_for",
]

GRANT_TABLE = "grants"
META_TABLE = "meta"
REVISION_META_KEY = "consent.revision"

TargetType = Literal["instance", "namespace", "thread"]
TARGET_TYPES: tuple[TargetType, ...] = ("instance", "namespace", "thread")

_GRANT_ID_RE = re.compile(r"[0-9a-f]{20}")
_ORIGIN_RE = re.compile(r"api|invite:[A-Za-z0-9._-]{1,128}")
_SA_ID_RE = re.compile(r"[0-9a-f]{20}")
_ID_ATTEMPTS = 8


# --- targets -----------------------------------------------------------------------


def _check_name(what: str, value: object) -> str:
    if not is_name(value):
        raise InvalidRequest(
            f"{what} must be 1 to 256 characters of [A-Za-z0-9._:@/+-], not starting with '/'"
        )
    return value


def _target_validator(inst: Target, _attr: object, _value: object) -> None:
    if inst.type not in TARGET_TYPES:
        raise InvalidRequest("target type must be 'instance', 'namespace' or 'thread'")
    if inst.type == "instance":
        if inst.value or inst.namespace is not None:
            raise InvalidRequest("an instance target takes no value and no namespace")
        return
    _check_name("namespace prefix" if inst.type == "namespace" else "thread", inst.value)
    if inst.namespace is not None:
        if inst.type != "thread":
            raise InvalidRequest("only a thread target takes a namespace")
        _check_name("namespace", inst.namespace)


@attrs.frozen
class Target:
    """What a grant (or an invite) covers; see the module docstring.

    ``type`` is ``instance`` (``value`` empty), ``namespace`` (``value`` is a raw
    namespace prefix) or ``thread`` (``value`` is the exact thread name; optional
    ``namespace`` pins the exact namespace). Construction validates and raises
    ``INVALID_REQUEST``.
    """

    type: TargetType = attrs.field(validator=_target_validator)
    value: str = ""
    namespace: str | None = None

    def matches(self, namespace: str, thread: str) -> bool:
        """Whether a record in ``namespace``/``thread`` falls under this target."""
        if self.type == "instance":
            return True
        if self.type == "namespace":
            return namespace.startswith(self.value)
        return thread == self.value and (self.namespace is None or namespace == self.namespace)

    def overlaps(self, namespace_prefix: str | None, thread: str | None) -> bool:
        """Whether some record named by the request filter could fall under this target.

        ``namespace_prefix`` and ``thread`` are what a request asked for (None or
        empty: no constraint). Two raw prefixes overlap iff one starts with the
        other.
        """
        if self.type == "instance":
            return True
        if self.type == "namespace":
            return not namespace_prefix or (
                namespace_prefix.startswith(self.value) or self.value.startswith(namespace_prefix)
            )
        if thread is not None and thread != self.value:
            return False
        if self.namespace is None or not namespace_prefix:
            return True
        return self.namespace.startswith(namespace_prefix)

    def to_dict(self) -> dict[str, object]:
        """JSON form: ``{"type", "value", "namespace"}``."""
        return {"type": self.type, "value": self.value, "namespace": self.namespace}


def parse_target(obj: object) -> Target:
    """Read a target from its JSON form.

    Accepts ``{"type": "instance"}``, ``{"type": "namespace", "value": prefix}``,
    ``{"type": "thread", "value": thread, "namespace": ns | null}`` (unknown keys
    refused). Raises ``INVALID_REQUEST`` for anything else. Pure.
    """
    if not isinstance(obj, Mapping):
        raise InvalidRequest(
            "target must be an object like {type: 'namespace', value: 'app/'}; "
            "type is instance, namespace or thread"
        )
    extra = set(obj) - {"type", "value", "namespace"}
    if extra:
        raise InvalidRequest(f"unknown target fields {sorted(str(k) for k in extra)[:5]}")
    kind = obj.get("type")
    value = obj.get("value", "")
    namespace = obj.get("namespace")
    if kind not in TARGET_TYPES:
        raise InvalidRequest("target type must be 'instance', 'namespace' or 'thread'")
    if value is None:
        value = ""
    if not isinstance(value, str) or (namespace is not None and not isinstance(namespace, str)):
        raise InvalidRequest("target value and namespace must be strings")
    return Target(type=kind, value=value, namespace=namespace)


# --- grants ------------------------------------------------------------------------


@attrs.frozen
class Grant:
    """One grant as stored. ``expires_ms`` None: no expiry. ``sa_id`` None: any
    account of the grantee DID. ``origin`` is ``"api"`` or ``"invite:<id>"``."""

    id: str
    grantee_did: str
    target: Target
    scopes: frozenset[str]
    created_ms: int
    expires_ms: int | None
    origin: str = "api"
    sa_id: str | None = None

    def live(self, now_ms: int) -> bool:
        """True until ``expires_ms`` (exclusive)."""
        return self.expires_ms is None or now_ms < self.expires_ms

    def allows(self, scope: str) -> bool:
        """True if this grant's scopes allow ``scope`` (``admin`` implies all)."""
        return has_scope(self.scopes, scope)

    def to_dict(self) -> dict[str, object]:
        """JSON form (also the stored row)."""
        return {
            "id": self.id,
            "grantee_did": self.grantee_did,
            "target": self.target.to_dict(),
            "scopes": scopes_to_list(self.scopes),
            "created_ms": self.created_ms,
            "expires_ms": self.expires_ms,
            "origin": self.origin,
            "sa_id": self.sa_id,
        }


def _grant_key(grantee_did: str, grant_id: str) -> str:
    return f"{grantee_did}#{grant_id}"


def _grant_from_row(row: Mapping[str, object]) -> Grant:
    def bad(what: str) -> StoreCorrupt:
        return StoreCorrupt(f"a stored grant row is damaged ({what})")

    gid, did, origin = row.get("id"), row.get("grantee_did"), row.get("origin", "api")
    if not (isinstance(gid, str) and isinstance(did, str) and isinstance(origin, str)):
        raise bad("id, grantee_did or origin")
    scopes = row.get("scopes")
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        raise bad("scopes")
    created, expires, sa_id = row.get("created_ms"), row.get("expires_ms"), row.get("sa_id")
    if not isinstance(created, int) or isinstance(created, bool):
        raise bad("created_ms")
    if expires is not None and (not isinstance(expires, int) or isinstance(expires, bool)):
        raise bad("expires_ms")
    if sa_id is not None and not isinstance(sa_id, str):
        raise bad("sa_id")
    try:
        target = parse_target(row.get("target"))
    except InvalidRequest:
        raise bad("target") from None
    return Grant(
        id=gid,
        grantee_did=did,
        target=target,
        scopes=frozenset(str(s) for s in scopes) & ALL_SCOPES,
        created_ms=created,
        expires_ms=expires,
        origin=origin,
        sa_id=sa_id,
    )


def _check_did(did: object) -> str:
    if not is_did(did):
        raise DidInvalid("grantee_did must be a DID such as did:key:z6Mk...")
    return did


class _Reader(Protocol):
    def get(self, table: str, key: str) -> dict[str, object] | None: ...


def get_revision(tx: _Reader) -> int:
    """The current consent revision (0 before any grant change). Synchronous."""
    row = tx.get(META_TABLE, REVISION_META_KEY)
    value = None if row is None else row.get("value")
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def bump_revision(tx: StateTx) -> int:
    """Add one to the consent revision inside ``tx``; return the new value.

    Also wakes the store's waiting readers when ``tx`` commits
    (:meth:`StateTx.wake_waiters`): what they may see changed, so a longpoll or
    a stream works out what to wait for again."""
    new = get_revision(tx) + 1
    tx.put(META_TABLE, REVISION_META_KEY, {"value": new})
    tx.wake_waiters()
    return new


def create_grant(
    tx: StateTx,
    *,
    grantee_did: str,
    target: Target,
    scopes: Iterable[str] = ("reader",),
    expires_ms: int | None = None,
    origin: str = "api",
    sa_id: str | None = None,
    now_ms: int | None = None,
) -> Grant:
    """Store a new grant inside ``tx``; bump the consent revision; audit ``grant.created``.

    ``scopes`` are scope or preset names (default: the ``reader`` preset);
    ``expires_ms`` an absolute time in ms (must be in the future) or None;
    ``origin`` ``"api"`` or ``"invite:<invite_id>"``; ``sa_id`` binds the grant
    to one service account. Returns the grant. Raises ``INVALID_REQUEST`` (scopes,
    expiry, origin, sa_id) or ``DID_INVALID``. Synchronous; run it in
    ``Store.transact``.
    """
    now = _now_ms(now_ms)
    _check_did(grantee_did)
    scope_set = parse_scopes(scopes)
    if expires_ms is not None and (
        isinstance(expires_ms, bool) or not isinstance(expires_ms, int) or expires_ms <= now
    ):
        raise InvalidRequest("expires_ms must be a time in the future (ms since the epoch)")
    if not isinstance(origin, str) or not _ORIGIN_RE.fullmatch(origin):
        raise InvalidRequest("origin must be 'api' or 'invite:<invite_id>'")
    if sa_id is not None and (not isinstance(sa_id, str) or not _SA_ID_RE.fullmatch(sa_id)):
        raise InvalidRequest("sa_id must be a service account id (20 hex characters)")
    if not isinstance(target, Target):
        raise InvalidRequest("target must be a Target")
    grant_id = ""
    for _ in range(_ID_ATTEMPTS):
        candidate = secrets.token_hex(10)
        if not any(k.endswith("#" + candidate) for k, _ in tx.list(GRANT_TABLE)):
            grant_id = candidate
            break
    if not grant_id:
        raise StoreCorrupt("could not find a free grant id; the random source is broken")
    grant = Grant(
        id=grant_id,
        grantee_did=grantee_did,
        target=target,
        scopes=scope_set,
        created_ms=now,
        expires_ms=expires_ms,
        origin=origin,
        sa_id=sa_id,
    )
    tx.put(GRANT_TABLE, _grant_key(grantee_did, grant_id), grant.to_dict())
    revision = bump_revision(tx)
    tx.audit(
        {
            "type": "grant.created",
            "grant_id": grant.id,
            "grantee_did": grantee_did,
            "target": target.to_dict(),
            "scopes": scopes_to_list(scope_set),
            "expires_ms": expires_ms,
            "origin": origin,
            "sa_id": sa_id,
            "consent_revision": revision,
        },
        ts_ms=now,
    )
    return grant


def _find(tx: StateTx, grant_id: str) -> tuple[str, Grant] | None:
    if not isinstance(grant_id, str) or not _GRANT_ID_RE.fullmatch(grant_id):
        return None
    suffix = "#" + grant_id
    for key, row in tx.list(GRANT_TABLE):
        if key.endswith(suffix):
            return key, _grant_from_row(row)
    return None


def delete_grant(tx: StateTx, grant_id: str, *, now_ms: int | None = None) -> Grant:
    """Remove grant ``grant_id``; bump the consent revision; audit ``grant.deleted``.

    Returns the removed grant. Raises ``GRANT_NOT_FOUND`` if there is none (a
    second delete of the same id included). Synchronous; run it in
    ``Store.transact``. Scans the grants table (grants are few).
    """
    now = _now_ms(now_ms)
    found = _find(tx, grant_id)
    if found is None:
        raise GrantNotFound(f"no grant {grant_id[:40]!r}; list grants to find the id")
    key, grant = found
    tx.delete(GRANT_TABLE, key)
    revision = bump_revision(tx)
    tx.audit(
        {
            "type": "grant.deleted",
            "grant_id": grant.id,
            "grantee_did": grant.grantee_did,
            "consent_revision": revision,
        },
        ts_ms=now,
    )
    return grant


def delete_grants_by_origin(tx: StateTx, origin: str, *, now_ms: int | None = None) -> list[Grant]:
    """Remove every grant whose ``origin`` is ``origin`` (e.g. ``"invite:<id>"``).

    Bumps the consent revision once if anything was removed and audits one
    ``grant.deleted`` per grant. Returns the removed grants. Synchronous.
    """
    now = _now_ms(now_ms)
    removed: list[Grant] = []
    for key, row in tx.list(GRANT_TABLE):
        if row.get("origin") == origin:
            grant = _grant_from_row(row)
            tx.delete(GRANT_TABLE, key)
            removed.append(grant)
    if removed:
        revision = bump_revision(tx)
        for grant in removed:
            tx.audit(
                {
                    "type": "grant.deleted",
                    "grant_id": grant.id,
                    "grantee_did": grant.grantee_did,
                    "origin": origin,
                    "consent_revision": revision,
                },
                ts_ms=now,
            )
    return removed


def list_grants(tx: StateTx, *, grantee_did: str | None = None) -> list[Grant]:
    """Every grant (or those of ``grantee_did``), oldest first (ties by id). Synchronous."""
    prefix = "" if grantee_did is None else grantee_did + "#"
    out = [_grant_from_row(row) for _, row in tx.list(GRANT_TABLE, prefix)]
    out.sort(key=lambda g: (g.created_ms, g.id))
    return out


# --- views -------------------------------------------------------------------------


@attrs.frozen
class ConsentView:
    """What one caller may see through one scope, right now.

    ``everything`` True: no restriction (the node itself, admins, anonymous
    callers when auth is off). Otherwise ``targets`` is the union of what the
    caller's live, scope-matching grants cover (empty: nothing).
    """

    everything: bool
    targets: tuple[Target, ...] = ()

    def visible(self, namespace: str, thread: str) -> bool:
        """Whether a record in ``namespace``/``thread`` may be shown."""
        return self.everything or any(t.matches(namespace, thread) for t in self.targets)

    def record_visible(self, rec: StoredRecord) -> bool:
        """:meth:`visible` for a stored record (the feed's ``visible`` predicate)."""
        return self.visible(rec.namespace, rec.thread)

    def check_filter(self, namespace_prefix: str | None, thread: str | None) -> None:
        """Raise ``CONSENT_DENIED`` if the request names a namespace or thread that no
        grant overlaps. A request that names neither is never denied (it is filtered).
        """
        if self.everything or (not namespace_prefix and thread is None):
            return
        if not any(t.overlaps(namespace_prefix, thread) for t in self.targets):
            named = []
            if namespace_prefix:
                named.append(f"namespace {namespace_prefix[:80]!r}")
            if thread is not None:
                named.append(f"thread {thread[:80]!r}")
            raise ConsentDenied(
                f"no grant lets you read {' and '.join(named)}; "
                "ask the node's owner for a grant (or an invite) that covers it"
            )

    def check_write(self, namespace: str, thread: str) -> None:
        """Raise ``CONSENT_DENIED`` unless a record in ``namespace``/``thread`` may be
        written: the same rule as :meth:`visible`, over the view for the
        ``records:write`` scope (writes are filtered by grants exactly as reads)."""
        if not self.visible(namespace, thread):
            raise ConsentDenied(
                f"no grant lets you write into namespace {namespace[:80]!r}, thread "
                f"{thread[:80]!r}; ask the node's owner for a grant with records:write "
                "that covers it"
            )

    def check_change_filter(self, flt: ChangeFilter) -> None:
        """:meth:`check_filter` for a store :class:`~fedpeer.store.base.ChangeFilter`."""
        self.check_filter(flt.namespace_prefix, flt.thread)

    def wake_filters(self, flt: ChangeFilter) -> tuple[ChangeFilter, ...] | None:
        """What a waiting reader asking for ``flt`` may see, as change filters for
        :meth:`Store.wait_for_seq`'s ``interest``: a commit matching none of them
        stores nothing this reader could be shown. None: any commit (sees
        everything, no filter); ``()``: no commit at all (nothing granted).

        Exactly the records the view may see among those ``flt`` names (a thread
        target pinned to one namespace gives ``namespace_exact``), so the same
        filters drive consent scans (:func:`fedpeer.sync.feed.changes_in`):
        a page then never ends on, or counts, a record the reader may not see.
        Pure.
        """
        if self.everything:
            return None if flt.is_empty else (flt,)
        out: list[ChangeFilter] = []
        for target in self.targets:
            joined = _join(target, flt)
            if joined is not None:
                if joined.is_empty:
                    return None
                out.append(joined)
        return tuple(dict.fromkeys(out))


def _longer_prefix(a: str | None, b: str | None) -> tuple[bool, str | None]:
    """(overlap, prefix): the prefix both raw prefixes imply (None: no constraint);
    overlap False when they exclude each other (neither starts with the other)."""
    if not a or not b:
        return True, (a or b or None)
    if a.startswith(b):
        return True, a
    if b.startswith(a):
        return True, b
    return False, None


def _join(target: Target, flt: ChangeFilter) -> ChangeFilter | None:
    """The filter of exactly the records under ``target`` that ``flt`` also lets
    through, or None when there are none."""
    if target.type == "instance":
        return flt
    if target.type == "namespace":
        overlap, prefix = _longer_prefix(target.value, flt.namespace_prefix)
        return ChangeFilter(namespace_prefix=prefix, thread=flt.thread) if overlap else None
    if flt.thread is not None and flt.thread != target.value:
        return None
    if target.namespace is None:
        return ChangeFilter(namespace_prefix=flt.namespace_prefix, thread=target.value)
    if flt.namespace_prefix and not target.namespace.startswith(flt.namespace_prefix):
        return None
    return ChangeFilter(
        namespace_prefix=target.namespace, thread=target.value, namespace_exact=True
    )


EVERYTHING = ConsentView(everything=True)
"""No restriction at all: the node itself, admins, anonymous callers with auth off."""
NOTHING = ConsentView(everything=False)
"""The default posture: no grant, no record."""
EVERYTHING_GRANTED = ConsentView(everything=False, targets=(Target("instance"),))
"""What an ``instance`` grant gives: every record (but still "a grant", not the owner)."""


def view_for(
    grants: Iterable[Grant],
    *,
    scope: str,
    now_ms: int,
    sa_id: str | None = None,
    bound_only: bool = False,
) -> ConsentView:
    """The view given by ``grants`` for reads that need ``scope``.

    Keeps grants that are live at ``now_ms`` and allow ``scope``; a grant bound to
    a service account counts only when ``sa_id`` is that account. With
    ``bound_only`` (guest holders), only grants bound to ``sa_id`` count.
    ``scope`` must be one of the known scopes (``ValueError`` otherwise). Pure.
    """
    if scope not in ALL_SCOPES:
        raise ValueError(f"unknown scope {scope!r}")
    targets: list[Target] = []
    for g in grants:
        if not g.live(now_ms) or not g.allows(scope):
            continue
        if g.sa_id is not None and g.sa_id != sa_id:
            continue
        if bound_only and (g.sa_id is None or g.sa_id != sa_id):
            continue
        if g.target.type == "instance":
            return EVERYTHING_GRANTED
        if g.target not in targets:
            targets.append(g.target)
    return ConsentView(everything=False, targets=tuple(targets))


class _AsyncLister(Protocol):
    async def list_state(
        self, table: str, prefix: str = ""
    ) -> list[tuple[str, dict[str, object]]]: ...


class _AsyncGetter(Protocol):
    async def get_state(self, table: str, key: str) -> dict[str, object] | None: ...


async def grants_for(store: _AsyncLister, grantee_did: str) -> list[Grant]:
    """Every stored grant of ``grantee_did`` (one ``list_state`` prefix scan)."""
    rows = await store.list_state(GRANT_TABLE, grantee_did + "#")
    return [_grant_from_row(row) for _, row in rows]


async def load_view(
    store: _AsyncLister,
    grantee_did: str,
    *,
    scope: str,
    sa_id: str | None = None,
    bound_only: bool = False,
    now_ms: int | None = None,
) -> ConsentView:
    """Read ``grantee_did``'s grants from ``store`` and build its view for ``scope``.

    See :func:`view_for`. Reads committed state only (no write transaction);
    cancellation is safe. Store errors propagate.
    """
    grants = await grants_for(store, grantee_did)
    return view_for(grants, scope=scope, now_ms=_now_ms(now_ms), sa_id=sa_id, bound_only=bound_only)


async def load_revision(store: _AsyncGetter) -> int:
    """The consent revision as committed (0 before any grant change)."""
    row = await store.get_state(META_TABLE, REVISION_META_KEY)
    value = None if row is None else row.get("value")
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def presets_json() -> dict[str, list[str]]:
    """The scope presets as JSON lists (for ``GET /v1/scope_presets``)."""
    return {name: scopes_to_list(scopes) for name, scopes in PRESETS.items()}
