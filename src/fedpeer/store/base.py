"""The Store protocol and the values it trades in (no I/O here).

A store has two parts:

* the **record log**: immutable records keyed by CID, each given a local
  sequence number (``seq``) when first stored. ``seq`` starts at 1, grows by one
  per new record in commit order and is never reused for a record anyone could
  have seen. Storing a CID that is already there is a no-op (idempotent put);
* the **state area**: small generic tables of JSON-able dicts keyed by string
  (pairs, cursors, service accounts, token hashes, invites, grants, ...), and
  an append-only **audit log** (entries can be added, never changed or removed).

Both parts share one transaction scope: :meth:`Store.transact` runs a
synchronous function with a :class:`StateTx` and commits records, state rows
and audit entries together, or none of them. A pull sync uses this to commit
"these records + this pair's new cursor" atomically.

Theory of the change feed
-------------------------
:meth:`Store.changes` returns records with ``seq > since_seq`` in ``seq`` order.
Filtered scans are *bounded*: a store may look at a limited window of sequence
numbers per call (``scan_window``) and report how far it got in
``ChangesPage.last_seq``. The caller resumes from ``last_seq``, so a filter that
matches nothing in a window still advances the cursor and a filtered feed never
stalls; paging from 0 until ``last_seq >= head_seq`` yields every matching
record exactly once, in order.

Every store has an ``epoch`` (32 lowercase hex chars, random at creation,
persisted) so a cursor issued by another store, or by this one before a wipe,
can be told apart, and a secret ``cursor_key`` that keys the cursor's
fingerprint of the record at its seq (:mod:`fedpeer.sync.feed`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol, TypeVar

import attrs

from ..errors import FedpeerError, InvalidRequest, Malformed, StoreCorrupt, StoreError
from ..identity.canonical import CID

__all__ = [
    "AuditEntry",
    "ChangeFilter",
    "ChangesPage",
    "CidLike",
    "JsonDict",
    "NewRecord",
    "PutResult",
    "StateTx",
    "Store",
    "StoredRecord",
    "ThreadInfo",
    "cid_key",
    "prefix_upper_bound",
    "record_bytes",
    "take_until",
    "take_within",
]

T = TypeVar("T")

JsonDict = dict[str, object]
"""A JSON-able mapping (str keys; values str, int, float, bool, None, list, dict)."""

_StateRows = list[tuple[str, JsonDict]]


@attrs.frozen
class NewRecord:
    """A record as :meth:`Store.put` takes it.

    The caller (the sync layer) has verified the record and extracted the
    index fields; the store never parses ``data``. ``cid`` is the raw CIDv1
    bytes, ``sig`` the author's signature, ``ts`` milliseconds since the epoch.
    """

    cid: bytes
    data: bytes
    sig: bytes
    author: str
    namespace: str
    thread: str
    kind: str
    ts: int


CidLike = bytes | CID | str
"""What :meth:`Store.get` takes: a binary CID, a :class:`CID` or its text."""


def cid_key(cid: object) -> bytes:
    """The binary CID a store looks records up by, from any :data:`CidLike`.

    Bytes are taken as they are (an unknown id simply is not found); a
    :class:`CID` gives its bytes; text is parsed (MALFORMED when it is not a
    CID). Anything else is INVALID_REQUEST. Pure.
    """
    if isinstance(cid, bytes):
        return cid
    if isinstance(cid, CID):
        return cid.raw
    if isinstance(cid, str):
        try:
            return CID.parse(cid).raw
        except FedpeerError:
            raise
        except Exception:
            raise Malformed(f"{cid[:80]!r} is not a CID") from None
    raise InvalidRequest(f"a record id is a CID, its text or its bytes, not {type(cid).__name__}")


@attrs.frozen
class StoredRecord:
    """A record as reads give it: :class:`NewRecord` plus its local ``seq``."""

    seq: int
    cid: bytes
    data: bytes
    sig: bytes
    author: str
    namespace: str
    thread: str
    kind: str
    ts: int


@attrs.frozen
class PutResult:
    """What a put stored.

    ``new`` holds ``(cid, seq)`` for each newly stored record, in ``seq`` order;
    ``duplicates`` counts the input records that were not stored because the
    CID was already there (or came earlier in the same batch), so
    ``len(new) + duplicates == len(records)``.
    """

    new: tuple[tuple[bytes, int], ...]
    duplicates: int


@attrs.frozen
class ChangeFilter:
    """Which records a change scan returns.

    ``namespace_prefix`` is a raw string prefix (``"app"`` matches ``"app"``,
    ``"app/x"`` and ``"apple"``; no wildcard characters exist). ``thread`` is an
    exact match. ``None`` (or an empty prefix) means "no constraint"; both
    given means both must hold.

    ``namespace_exact``: the namespace must *equal* ``namespace_prefix`` (``None``
    counts as ``""``). Consent scans use it for a grant on one thread of one
    namespace, so that a page never counts records the reader may not see. A
    store written before it existed and ignoring it answers a superset, which
    the feed still filters out record by record.
    """

    namespace_prefix: str | None = None
    thread: str | None = None
    namespace_exact: bool = False

    @property
    def is_empty(self) -> bool:
        """True when the filter lets every record through."""
        return not self.namespace_prefix and self.thread is None and not self.namespace_exact

    def matches(self, namespace: str, thread: str) -> bool:
        """Whether a record with this namespace and thread passes the filter."""
        if self.namespace_exact and namespace != (self.namespace_prefix or ""):
            return False
        return filter_matches(self.namespace_prefix, self.thread, namespace, thread)


def filter_matches(
    prefix: str | None, want_thread: str | None, namespace: str, thread: str
) -> bool:
    """The one filter rule (:meth:`ChangeFilter.matches`, and the sync layer's pair
    filter on its hot path, without building a filter per record): ``namespace``
    starts with ``prefix`` (None or empty: any), ``thread`` equals ``want_thread``
    (None: any)."""
    if prefix and not namespace.startswith(prefix):
        return False
    return want_thread is None or thread == want_thread


@attrs.frozen
class ChangesPage:
    """One page of :meth:`Store.changes`.

    ``records`` are the matching records in ``seq`` order. ``last_seq`` is the
    highest seq *scanned* (``>= since_seq``): resume from it, even when
    ``records`` is empty. ``head_seq`` is the store's highest seq at the time
    of the scan; the feed is exhausted (for now) when ``last_seq >= head_seq``.
    ``last_cid`` is the CID of the record at ``last_seq`` in the same snapshot
    (None when ``last_seq`` is 0 or holds no record): the feed fingerprints its
    cursor with it, so a store rolled back under a reader is noticed.
    """

    records: tuple[StoredRecord, ...]
    last_seq: int
    head_seq: int
    last_cid: bytes | None = None


@attrs.frozen
class ThreadInfo:
    """A (namespace, thread) pair seen in the log, its record count and latest seq."""

    namespace: str
    thread: str
    count: int
    last_seq: int


@attrs.frozen
class AuditEntry:
    """One audit log entry: increasing ``id``, time in ms, and the event dict."""

    id: int
    ts_ms: int
    event: JsonDict


class StateTx(Protocol):
    """The handle :meth:`Store.transact` passes to its function.

    Synchronous and only valid while that function runs (afterwards every
    method raises ``StoreError``). Everything done through it commits together
    when the function returns, and is rolled back when it raises. Values are
    copied in and out (JSON round trip), so mutating a dict after ``put`` or
    after ``get`` does not change what is stored. A value that is not JSON-able
    raises ``StoreError`` (code ``STORE_ERROR``).
    """

    def get(self, table: str, key: str) -> JsonDict | None:
        """The value stored under ``(table, key)``, or None."""
        ...

    def put(self, table: str, key: str, value: JsonDict) -> None:
        """Insert or replace the value under ``(table, key)``."""
        ...

    def delete(self, table: str, key: str) -> bool:
        """Remove ``(table, key)``; True if it was there."""
        ...

    def list(self, table: str, prefix: str = "") -> _StateRows:
        """Every ``(key, value)`` of ``table`` whose key starts with ``prefix``, by key."""
        ...

    def audit(self, event: JsonDict, *, ts_ms: int | None = None) -> int:
        """Append an audit entry (``ts_ms`` None: wall clock now); returns its id."""
        ...

    def put_records(self, records: Sequence[NewRecord]) -> PutResult:
        """Store records as :meth:`Store.put` does, inside this transaction."""
        ...

    def wake_waiters(self) -> None:
        """When this transaction commits, wake every :meth:`Store.wait_for_seq`
        waiter that gave an ``interest``, whatever it is: what readers may see
        changed (a grant), so they work out their interest again. Nothing
        happens if the transaction rolls back."""
        ...


class Store(Protocol):
    """A record log plus a transactional state area (see the module docstring).

    All methods raise ``StoreClosed`` after :meth:`aclose`, ``StoreError`` when
    the backend fails (disk full, I/O error) and ``StoreCorrupt`` when the
    backend finds damaged data. Every method is a checkpoint (anyio: trio or asyncio). Writes that
    have started when the caller is cancelled still complete (commit or roll
    back as a whole); the cancellation is delivered afterwards.
    """

    epoch: str
    """32 lowercase hex chars, random at creation, stable for the store's life."""

    cursor_key: bytes
    """16 secret random bytes, made with the store and kept for its life: keys the
    fingerprints in feed cursors (:func:`fedpeer.sync.feed.fingerprint`), so a
    cursor says nothing a reader could check about records it may not see.
    Never sent anywhere."""

    async def put(self, records: Sequence[NewRecord]) -> PutResult:
        """Store the records whose CID is not stored yet, in input order, atomically.

        Idempotent: a CID already stored, or repeated within ``records``, is
        counted in ``duplicates`` and not stored again. Wakes
        :meth:`wait_for_seq` waiters when anything new was stored.
        """
        ...

    async def get(self, cid: CidLike) -> StoredRecord | None:
        """The record with this CID, or None.

        ``cid`` is the binary CID, a :class:`~fedpeer.identity.CID` or its text
        (:func:`cid_key`): the same answer on every store; MALFORMED for text
        that is not a CID, INVALID_REQUEST for anything else.
        """
        ...

    async def get_many(self, cids: Sequence[CidLike]) -> list[StoredRecord]:
        """The stored records among ``cids``, in the order first asked for.

        Missing CIDs are left out; a CID asked for twice is returned once. Each
        CID may take any form :meth:`get` takes.
        """
        ...

    async def changes(
        self,
        since_seq: int,
        limit: int,
        filter: ChangeFilter | None = None,
        *,
        max_bytes: int | None = None,
    ) -> ChangesPage:
        """Up to ``limit`` matching records with ``seq > since_seq``, in seq order.

        ``since_seq >= 0`` and ``limit >= 1`` (else ``InvalidRequest``). See
        :class:`ChangesPage` for ``last_seq``: a filtered scan may stop early at
        the end of its scan window with fewer than ``limit`` records; the
        caller continues from ``last_seq``. The page is one consistent snapshot.

        ``max_bytes`` (None: no budget; else >= 1) bounds the page by its records'
        :func:`record_bytes`: the page ends with the record that reaches it (the
        first matching record always comes, however large); when that cuts the
        page short, ``last_seq`` is that record's seq. A store should stop
        loading rows there, so a page of large records costs its budget in
        memory, not ``limit`` records.
        """
        ...

    async def head_seq(self) -> int:
        """The highest seq stored (0 when empty)."""
        ...

    async def cid_at(self, seq: int) -> bytes | None:
        """The CID of the record stored at ``seq``, or None (no such record, or
        ``seq < 1``). One indexed lookup; the feed uses it to check that a
        reader's cursor still points at the record it was issued after."""
        ...

    async def wait_for_seq(
        self, after_seq: int, interest: Sequence[ChangeFilter] | None = None
    ) -> int:
        """Block until ``head_seq > after_seq``; return the new head_seq.

        Returns at once if that already holds. Wakes when a put or transact
        through this store object commits new records (no polling). Cancellable
        at any point. Raises ``StoreClosed`` if the store is (or gets) closed.

        ``interest`` (None: any record) narrows the wake-up to commits that
        store a record matching one of these filters (an empty sequence: none
        does), so idle readers of other namespaces and threads cost a commit
        nothing (:mod:`fedpeer.store._watch`). A waiter with an interest also
        returns when a transaction called :meth:`StateTx.wake_waiters`, then
        possibly with ``head_seq == after_seq``; it re-checks and waits again.
        """
        ...

    async def transact(self, fn: Callable[[StateTx], T]) -> T:
        """Run ``fn(tx)`` atomically and return its result.

        ``fn`` must be synchronous and must not call back into the event loop (on SQLite
        it runs on the writer thread). If it raises, everything it did through
        ``tx`` (state, audit entries *and* records) is rolled back and the
        exception propagates unchanged. Transactions are serialised.
        """
        ...

    async def get_state(self, table: str, key: str) -> JsonDict | None:
        """Read one state value outside a transaction (a committed snapshot)."""
        ...

    async def list_state(self, table: str, prefix: str = "") -> _StateRows:
        """Every ``(key, value)`` in ``table`` with the key prefix, ordered by key."""
        ...

    async def audit_log(self, since_id: int = 0, limit: int = 100) -> list[AuditEntry]:
        """Audit entries with ``id > since_id``, oldest first, at most ``limit``."""
        ...

    async def threads(
        self,
        namespace_prefix: str | None = None,
        *,
        after: tuple[str, str] | None = None,
        limit: int | None = None,
        thread: str | None = None,
        namespace_exact: bool = False,
    ) -> list[ThreadInfo]:
        """Every (namespace, thread) in the log with its count and latest seq.

        Ordered by (namespace, thread); ``namespace_prefix`` is a raw prefix.
        ``after`` starts past that (namespace, thread) pair; ``limit`` (None: no
        limit; else >= 1, ``InvalidRequest`` otherwise) returns at most that
        many, so a listing can be paged: a store should stop grouping there.
        ``thread`` (None: any) keeps that thread only, and ``namespace_exact``
        the namespace equal to ``namespace_prefix`` only, as in
        :class:`ChangeFilter` (a reader's grants go into a threads listing this
        way, so a page never counts a pair it may not see).
        """
        ...

    async def count(self) -> int:
        """The number of records stored."""
        ...

    async def aclose(self) -> None:
        """Close the store (idempotent). Waits for an in-flight write to finish;
        wakes :meth:`wait_for_seq` waiters with ``StoreClosed``."""
        ...


# --- helpers shared by the implementations (pure) ---------------------------


def prefix_upper_bound(prefix: str) -> str | None:
    """The smallest string above every string that starts with ``prefix``.

    ``s.startswith(prefix)`` iff ``prefix <= s`` and (the bound is None or
    ``s < bound``), in code point order, which is also how SQLite's BINARY
    collation orders UTF-8 text. None means "no upper bound" (the prefix is
    empty or made only of U+10FFFF). Used for range queries, so no LIKE
    wildcard (``%``, ``_``) can leak into a prefix match. Surrogate code
    points are skipped (they cannot be stored as UTF-8).
    """
    chars = list(prefix)
    while chars:
        last = ord(chars.pop())
        if last < 0x10FFFF:
            nxt = last + 1
            if 0xD800 <= nxt <= 0xDFFF:
                nxt = 0xE000
            return "".join(chars) + chr(nxt)
    return None


def check_changes_args(since_seq: int, limit: int, max_bytes: int | None = None) -> None:
    """Validate :meth:`Store.changes` arguments; raises ``InvalidRequest``."""
    if since_seq < 0:
        raise InvalidRequest(f"since_seq must be >= 0, got {since_seq}")
    if limit < 1:
        raise InvalidRequest(f"limit must be >= 1, got {limit}")
    if max_bytes is not None and max_bytes < 1:
        raise InvalidRequest(f"max_bytes must be >= 1, got {max_bytes}")


def check_threads_args(limit: int | None) -> None:
    """Validate :meth:`Store.threads`' ``limit``; raises ``InvalidRequest``."""
    if limit is not None and limit < 1:
        raise InvalidRequest(f"limit must be >= 1, got {limit}")


RECORD_OVERHEAD = 16
"""What :func:`record_bytes` adds per record for its framing (wire keys, heads)."""


def record_bytes(rec: StoredRecord) -> int:
    """What a record weighs against a page budget (``Store.changes(max_bytes=)``,
    the feed's ``page_max_bytes``): its cid, data and sig, plus a small framing
    allowance. Pure."""
    return len(rec.cid) + len(rec.data) + len(rec.sig) + RECORD_OVERHEAD


def take_within(
    records: Iterable[StoredRecord], max_bytes: int
) -> tuple[tuple[StoredRecord, ...], bool]:
    """The records of a page with budget ``max_bytes`` (``Store.changes``): up to
    and including the one whose :func:`record_bytes` reach it (at least one),
    and whether the budget cut the page there. Takes no record more from
    ``records`` than it keeps, so a lazy source (rows read one by one) loads no
    more than the page. Pure."""
    out, cut = take_until(records, max_bytes, record_bytes)
    return tuple(out), cut


def take_until(items: Iterable[T], budget: int, size: Callable[[T], int]) -> tuple[list[T], bool]:
    """The items up to and including the one whose ``size`` sum reaches ``budget``
    (at least one), and whether the budget cut them there; takes no item more
    from ``items`` than it keeps. Pure."""
    out: list[T] = []
    used = 0
    for item in items:
        out.append(item)
        used += size(item)
        if used >= budget:
            return out, True
    return out, False


def dump_json(value: object, what: str = "state value") -> str:
    """Serialise a JSON-able dict compactly; ``StoreError`` if it is not one."""
    if not isinstance(value, dict):
        raise StoreError(f"{what} must be a dict, got {type(value).__name__}")
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{what} is not JSON-able: {exc}") from exc


def load_json(text: str) -> JsonDict:
    """Parse a stored JSON dict (``StoreCorrupt`` when it is not one)."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise StoreCorrupt(f"stored JSON value does not parse: {exc}") from exc
    if not isinstance(value, dict):
        raise StoreCorrupt("stored JSON value is not an object")
    return value


def check_name(kind: str, value: str) -> None:
    """State table names and keys must be str (``StoreError`` otherwise)."""
    if not isinstance(value, str):
        raise StoreError(f"{kind} must be a str, got {type(value).__name__}")
    if kind == "table" and not value:
        raise StoreError("table name must not be empty")
