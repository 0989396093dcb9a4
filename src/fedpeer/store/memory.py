"""MemoryStore: the Store protocol held in Python objects (tests, embedding).

Nothing is persisted. Every operation runs synchronously on the event loop thread
between two checkpoints, so operations are atomic with respect to other
tasks without any lock. :meth:`MemoryStore.transact` keeps an undo journal: if
the function raises, the journal is replayed backwards, which removes the
records, state changes and audit entries it made.

State values are stored as JSON text, so they are copied in and out exactly as
on SQLite (a tuple comes back as a list, int dict keys come back as str).
"""

from __future__ import annotations

import inspect
import secrets
from bisect import bisect_right
from collections.abc import Callable, Sequence
from typing import TypeVar

import anyio.lowlevel

from .._clock import now_ms
from ..errors import StoreClosed, StoreError
from ._watch import HeadWatch
from .base import (
    AuditEntry,
    ChangeFilter,
    ChangesPage,
    CidLike,
    JsonDict,
    NewRecord,
    PutResult,
    StateTx,
    StoredRecord,
    ThreadInfo,
    check_changes_args,
    check_name,
    check_threads_args,
    cid_key,
    dump_json,
    load_json,
    take_within,
)

__all__ = ["DEFAULT_SCAN_WINDOW", "MemoryStore"]

T = TypeVar("T")

DEFAULT_SCAN_WINDOW = 10_000
"""How many sequence numbers a namespace-filtered ``changes`` call looks at, at most."""

_Undo = Callable[[], None]


class _MemoryTx:
    """The StateTx of a MemoryStore transaction (see ``StateTx``)."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self._undo: list[_Undo] = []
        self._records_at_start = len(store._records)
        self._audit_at_start = len(store._audit)
        self.finished = False
        self.wake_all = False

    def _check(self) -> None:
        if self.finished:
            raise StoreError("the transaction is finished; use tx only inside transact's fn")

    def get(self, table: str, key: str) -> JsonDict | None:
        self._check()
        check_name("table", table)
        check_name("key", key)
        text = self._store._state.get(table, {}).get(key)
        return None if text is None else load_json(text)

    def put(self, table: str, key: str, value: JsonDict) -> None:
        self._check()
        check_name("table", table)
        check_name("key", key)
        text = dump_json(value)
        rows = self._store._state.setdefault(table, {})
        self._remember(table, key, rows.get(key))
        rows[key] = text

    def delete(self, table: str, key: str) -> bool:
        self._check()
        check_name("table", table)
        check_name("key", key)
        rows = self._store._state.get(table)
        if rows is None or key not in rows:
            return False
        self._remember(table, key, rows.pop(key))
        return True

    def list(self, table: str, prefix: str = "") -> list[tuple[str, JsonDict]]:
        self._check()
        check_name("table", table)
        check_name("prefix", prefix)
        rows = self._store._state.get(table, {})
        return [(k, load_json(rows[k])) for k in sorted(rows) if k.startswith(prefix)]

    def audit(self, event: JsonDict, *, ts_ms: int | None = None) -> int:
        self._check()
        text = dump_json(event, "audit event")
        store = self._store
        entry_id = len(store._audit) + 1
        when = now_ms(None if ts_ms is None else int(ts_ms))
        store._audit.append((entry_id, when, text))
        return entry_id

    def put_records(self, records: Sequence[NewRecord]) -> PutResult:
        self._check()
        store = self._store
        new: list[tuple[bytes, int]] = []
        for r in records:
            if r.cid in store._by_cid:
                continue
            seq = len(store._records) + 1
            rec = StoredRecord(
                seq, r.cid, r.data, r.sig, r.author, r.namespace, r.thread, r.kind, r.ts
            )
            store._add_record(rec)
            new.append((r.cid, seq))
        return PutResult(tuple(new), len(records) - len(new))

    def wake_waiters(self) -> None:
        self._check()
        self.wake_all = True

    def touched(self) -> set[tuple[str, str]]:
        """(namespace, thread) of the records this transaction stored."""
        return {(r.namespace, r.thread) for r in self._store._records[self._records_at_start :]}

    def _remember(self, table: str, key: str, old: str | None) -> None:
        state = self._store._state

        def undo() -> None:
            rows = state.setdefault(table, {})
            if old is None:
                rows.pop(key, None)
            else:
                rows[key] = old

        self._undo.append(undo)

    def rollback(self) -> None:
        """Undo everything this transaction did, newest first."""
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()
        store = self._store
        while len(store._records) > self._records_at_start:
            store._pop_record()
        del store._audit[self._audit_at_start :]


class MemoryStore:
    """A Store kept in memory. See :class:`fedpeer.store.Store` for the contract.

    ``epoch`` may be given (tests); by default it is 128 random bits in hex.
    ``cursor_key`` (secret) is 16 random bytes.
    ``scan_window`` bounds how many sequence numbers a namespace-filtered
    :meth:`changes` call examines. Constructing one does no I/O.
    """

    epoch: str
    cursor_key: bytes

    def __init__(self, *, epoch: str | None = None, scan_window: int = DEFAULT_SCAN_WINDOW) -> None:
        if scan_window < 1:
            raise ValueError("scan_window must be >= 1")
        self.epoch = epoch if epoch is not None else secrets.token_hex(16)
        self.cursor_key = secrets.token_bytes(16)
        self.scan_window = scan_window
        self._records: list[StoredRecord] = []  # index = seq - 1
        self._by_cid: dict[bytes, StoredRecord] = {}
        self._by_thread: dict[str, list[int]] = {}
        self._by_pair: dict[tuple[str, str], list[int]] = {}
        self._state: dict[str, dict[str, str]] = {}
        self._audit: list[tuple[int, int, str]] = []
        self._watch = HeadWatch(0)
        self._closed = False

    # --- internals ---------------------------------------------------------

    def _add_record(self, rec: StoredRecord) -> None:
        self._records.append(rec)
        self._by_cid[rec.cid] = rec
        self._by_thread.setdefault(rec.thread, []).append(rec.seq)
        self._by_pair.setdefault((rec.namespace, rec.thread), []).append(rec.seq)

    def _pop_record(self) -> None:
        rec = self._records.pop()
        del self._by_cid[rec.cid]
        seqs = self._by_thread[rec.thread]
        seqs.pop()
        if not seqs:
            del self._by_thread[rec.thread]
        pair = (rec.namespace, rec.thread)
        seqs = self._by_pair[pair]
        seqs.pop()
        if not seqs:
            del self._by_pair[pair]

    async def _enter(self) -> None:
        await anyio.lowlevel.checkpoint()
        if self._closed:
            raise StoreClosed("the store is closed")

    # --- record log -------------------------------------------------------

    async def put(self, records: Sequence[NewRecord]) -> PutResult:
        """See :meth:`fedpeer.store.Store.put`."""
        return await self.transact(lambda tx: tx.put_records(records))

    async def get(self, cid: CidLike) -> StoredRecord | None:
        """See :meth:`fedpeer.store.Store.get`."""
        key = cid_key(cid)
        await self._enter()
        return self._by_cid.get(key)

    async def get_many(self, cids: Sequence[CidLike]) -> list[StoredRecord]:
        """See :meth:`fedpeer.store.Store.get_many`."""
        keys = [cid_key(c) for c in cids]
        await self._enter()
        out: dict[bytes, StoredRecord] = {}
        for cid in keys:
            rec = self._by_cid.get(cid)
            if rec is not None and cid not in out:
                out[cid] = rec
        return list(out.values())

    async def changes(
        self,
        since_seq: int,
        limit: int,
        filter: ChangeFilter | None = None,
        *,
        max_bytes: int | None = None,
    ) -> ChangesPage:
        """See :meth:`fedpeer.store.Store.changes`."""
        await self._enter()
        check_changes_args(since_seq, limit, max_bytes)
        page = self._changes(since_seq, limit, filter)
        if max_bytes is None:
            return page
        records, cut = take_within(page.records, max_bytes)
        if not cut or records[-1].seq == page.last_seq:
            return page
        return self._page(records, records[-1].seq, page.head_seq)

    def _changes(self, since_seq: int, limit: int, filter: ChangeFilter | None) -> ChangesPage:
        head = len(self._records)
        if filter is None or filter.is_empty:
            page = self._records[since_seq : since_seq + limit]
            last = page[-1].seq if len(page) == limit else max(since_seq, head)
            return self._page(tuple(page), last, head)
        if not filter.namespace_prefix and not filter.namespace_exact:
            # thread only: the per-thread seq list gives exact answers without a window
            seqs = self._by_thread.get(filter.thread or "", [])
            start = bisect_right(seqs, since_seq)
            picked = seqs[start : start + limit]
            recs = tuple(self._records[s - 1] for s in picked)
            last = picked[-1] if len(picked) == limit else max(since_seq, head)
            return self._page(recs, last, head)
        upper = min(head, since_seq + self.scan_window)
        found: list[StoredRecord] = []
        for rec in self._records[since_seq:upper]:
            if filter.matches(rec.namespace, rec.thread):
                found.append(rec)
                if len(found) == limit:
                    return self._page(tuple(found), rec.seq, head)
        return self._page(tuple(found), max(since_seq, upper), head)

    def _page(self, records: tuple[StoredRecord, ...], last: int, head: int) -> ChangesPage:
        return ChangesPage(records, last, head, self._cid_at(last))

    def _cid_at(self, seq: int) -> bytes | None:
        return self._records[seq - 1].cid if 1 <= seq <= len(self._records) else None

    async def head_seq(self) -> int:
        """See :meth:`fedpeer.store.Store.head_seq`."""
        await self._enter()
        return len(self._records)

    async def cid_at(self, seq: int) -> bytes | None:
        """See :meth:`fedpeer.store.Store.cid_at`."""
        await self._enter()
        return self._cid_at(seq)

    async def wait_for_seq(
        self, after_seq: int, interest: Sequence[ChangeFilter] | None = None
    ) -> int:
        """See :meth:`fedpeer.store.Store.wait_for_seq`."""
        await self._enter()
        return await self._watch.wait_above(after_seq, interest)

    async def count(self) -> int:
        """See :meth:`fedpeer.store.Store.count`."""
        await self._enter()
        return len(self._records)

    async def threads(
        self,
        namespace_prefix: str | None = None,
        *,
        after: tuple[str, str] | None = None,
        limit: int | None = None,
        thread: str | None = None,
        namespace_exact: bool = False,
    ) -> list[ThreadInfo]:
        """See :meth:`fedpeer.store.Store.threads`."""
        await self._enter()
        check_threads_args(limit)
        flt = ChangeFilter(namespace_prefix, thread, namespace_exact)
        out = [
            ThreadInfo(ns, th, len(seqs), seqs[-1])
            for (ns, th), seqs in sorted(self._by_pair.items())
            if flt.matches(ns, th) and (after is None or (ns, th) > after)
        ]
        return out if limit is None else out[:limit]

    # --- state area -------------------------------------------------------

    async def transact(self, fn: Callable[[StateTx], T]) -> T:
        """See :meth:`fedpeer.store.Store.transact`."""
        await self._enter()
        tx = _MemoryTx(self)
        try:
            result = fn(tx)
            if inspect.isawaitable(result):
                if inspect.iscoroutine(result):
                    result.close()
                raise StoreError("transact needs a synchronous function, got an awaitable")
        except BaseException:
            tx.rollback()
            raise
        finally:
            tx.finished = True
        self._watch.advance(len(self._records), tx.touched())
        if tx.wake_all:
            self._watch.wake_all()
        return result

    async def get_state(self, table: str, key: str) -> JsonDict | None:
        """See :meth:`fedpeer.store.Store.get_state`."""
        await self._enter()
        check_name("table", table)
        check_name("key", key)
        text = self._state.get(table, {}).get(key)
        return None if text is None else load_json(text)

    async def list_state(self, table: str, prefix: str = "") -> list[tuple[str, JsonDict]]:
        """See :meth:`fedpeer.store.Store.list_state`."""
        await self._enter()
        check_name("table", table)
        rows = self._state.get(table, {})
        return [(k, load_json(rows[k])) for k in sorted(rows) if k.startswith(prefix)]

    async def audit_log(self, since_id: int = 0, limit: int = 100) -> list[AuditEntry]:
        """See :meth:`fedpeer.store.Store.audit_log`."""
        await self._enter()
        start = max(since_id, 0)
        rows = self._audit[start : start + max(limit, 0)]
        return [AuditEntry(i, ts, load_json(text)) for i, ts, text in rows]

    # --- lifecycle --------------------------------------------------------

    async def aclose(self) -> None:
        """See :meth:`fedpeer.store.Store.aclose`."""
        self._closed = True
        self._watch.close()
        await anyio.lowlevel.checkpoint()

    async def __aenter__(self) -> MemoryStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
