"""Records of this node (``node.records``): append, ingest, get, list, threads.

Reads take a :class:`~fedpeer.consent.grants.ConsentView` (default: everything,
which is what the node itself and its admins see); the HTTP routes pass the
caller's view from :meth:`GrantService.view_for`, so an invisible record looks
exactly like a missing one (RECORD_NOT_FOUND, no existence leak).
"""

from __future__ import annotations

import builtins
import hashlib
from collections import deque
from collections.abc import Sequence
from functools import partial

import anyio
from nacl.exceptions import CryptoError
from nacl.secret import SecretBox

from ...consent.grants import EVERYTHING, ConsentView
from ...consent.tokens import Principal, WriteQuota, charge_write
from ...errors import FedpeerError, InvalidRequest, Malformed, RecordNotFound
from ...identity.canonical import CID, b64url_decode, b64url_encode, dagcbor_decode, dagcbor_encode
from ...store.base import (
    ChangeFilter,
    NewRecord,
    PutResult,
    StateTx,
    StoredRecord,
    ThreadInfo,
    record_bytes,
)
from ...sync.feed import build_page, changes_in, cursor_at, resolve_cursor
from ...sync.records import SignedRecord, build_record, check_parents, verify_record
from .._offloop import INLINE_MAX, off_loop, values_exceed
from ._core import NodeCore
from ._views import RecordEntry, RecordsPage

__all__ = ["RecordService", "parse_cid"]

_MAX_LIST = 10_000
_NEWEST_WINDOW = 256  # first window scanned backwards for newest-first listings
_NEWEST_ROUNDS = 64  # bound on windows per newest-first page
_NEWEST_SCAN = 10_000  # rows a newest-first page reads before it answers what it found
_NEWEST_SPAN = 200_000  # seqs its store scans step over (all scans) before it does
_FETCH_STEP = 4  # fewest records a budgeted batch fetch reads at a time
_INLINE_ID_TEXT = 16 * 1024  # batch ids' text above which they parse off the event loop
_INLINE_VALUES = 10_000  # a record body with more values is built off the event loop
_NO_QUOTA = WriteQuota()  # the owner's writes are counted, not bounded
_THREADS_CURSOR_MAX = 4096  # longest threads-listing cursor text taken (2 names of 256)


def parse_cid(value: CID | str) -> CID:
    """A CID from a :class:`CID` or its text (MALFORMED otherwise)."""
    if isinstance(value, CID):
        return value
    if not isinstance(value, str):
        raise Malformed(f"a CID is a CID object or its text, not {type(value).__name__}")
    try:
        return CID.parse(value)
    except Exception:
        raise Malformed(
            f"{value[:80]!r} is not a record id (CID); list ids with "
            "`fedpeer records list` (GET /v1/records)"
        ) from None


def _check_limit(limit: int, high: int) -> int:
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= high:
        raise InvalidRequest(f"limit must be from 1 to {high}, got {limit!r}")
    return limit


class RecordService:
    """The node's record log as an application service."""

    def __init__(self, core: NodeCore) -> None:
        self._core = core
        self._append_lock = anyio.Lock()

    # --- writes ---

    async def append(
        self,
        *,
        namespace: str,
        thread: str,
        kind: str,
        body: object,
        parents: Sequence[CID | str] = (),
        view: ConsentView = EVERYTHING,
        read_view: ConsentView = EVERYTHING,
        writer: Principal | None = None,
    ) -> RecordEntry:
        """Build, sign and store a record authored by this node; return it with its seq.

        ``view`` is what the caller may write (:meth:`GrantService.view_for` with
        ``records:write``; default: anything, the node itself): a namespace/thread
        it does not cover is CONSENT_DENIED before anything is built.
        ``read_view`` is what the caller may read (``records:read``): a parent
        it may not see counts for nothing below, so the new record's clock tells
        nothing about records hidden from the caller.
        ``writer`` is the token holder the write counts for (None: the node
        itself, not counted; see :meth:`_put_counted`).

        ``clock`` is a Lamport clock: one more than the largest of this node's
        last clock and the parents' clocks. Raises RECORD_INVALID (checked
        before any parent is read: at most ``max_parents``, none twice),
        RECORD_TOO_LARGE (limits), MALFORMED (a parent that is not a CID); never
        stores a partial record.
        """
        core = self._core
        if not isinstance(namespace, str) or not isinstance(thread, str):
            raise InvalidRequest("namespace and thread must be strings")
        view.check_write(namespace, thread)
        parent_cids = tuple(parse_cid(p) for p in parents)
        check_parents(parent_cids, core.limits)
        async with self._append_lock:
            meta = await core.store.get_state("meta", "clock")
            clock = int(str(meta["value"])) if meta else 0
            if parent_cids:
                rows = [
                    p
                    for p in await core.store.get_many([p.raw for p in parent_cids])
                    if read_view.record_visible(p)
                ]
                if sum(len(p.data) for p in rows) <= INLINE_MAX:
                    clock = max(clock, _max_clock(rows))
                else:  # parents of many tiny values decode off the event loop
                    clock = max(clock, await off_loop(_max_clock, rows))
            build = partial(
                build_record,
                core.key,
                namespace=namespace,
                thread=thread,
                kind=kind,
                body=body,
                parents=parent_cids,
                clock=clock + 1,
                ts=core.now_ms(),
                limits=core.limits,
            )
            # a body of many values takes its time to encode: off the event loop
            signed = await off_loop(build) if values_exceed(body, _INLINE_VALUES) else build()
            new = signed.to_new()
            next_clock = clock + 1

            def commit(tx: StateTx) -> int:
                result = self._put_counted(tx, [new], writer)
                tx.put("meta", "clock", {"value": next_clock})
                return result.new[0][1]

            seq = await core.store.transact(commit)
            return RecordEntry(seq, signed)

    async def ingest(
        self,
        data: bytes,
        sig: bytes,
        *,
        view: ConsentView = EVERYTHING,
        writer: Principal | None = None,
    ) -> tuple[RecordEntry, bool]:
        """Verify a record signed elsewhere and store it as is.

        ``view`` is what the caller may write (as for :meth:`append`): a record
        whose namespace/thread it does not cover is CONSENT_DENIED and not stored.
        ``writer``: as for :meth:`append`.

        Returns ``(entry, created)``; storing a record twice is a no-op
        (``created`` False, the existing seq). Raises what
        :func:`~fedpeer.sync.records.verify_record` raises (BAD_SIGNATURE,
        NON_CANONICAL, RECORD_INVALID, RECORD_TOO_LARGE, RECORD_FROM_FUTURE, ...).
        """
        if not isinstance(data, bytes) or not isinstance(sig, bytes):
            raise Malformed("a signed record is a map {data: bytes, sig: bytes}")
        core = self._core
        check = partial(verify_record, data, sig, limits=core.limits, now_ms=core.now_ms())
        signed = await off_loop(check) if len(data) > INLINE_MAX else check()
        view.check_write(signed.record.namespace, signed.record.thread)
        return await self.put_verified(signed, writer=writer)

    async def ingest_many(
        self,
        items: Sequence[tuple[bytes, bytes]],
        *,
        view: ConsentView = EVERYTHING,
        read_view: ConsentView = EVERYTHING,
        writer: Principal | None = None,
    ) -> tuple[int, int]:
        """Verify a batch of records signed elsewhere (``(data, sig)`` pairs) and store
        them in one transaction: ``(stored, already here)``. When ``read_view``
        (what the caller may read) does not cover every record of the batch, the
        answer is ``(all of them, 0)``: a holder that may write but not read is
        not told which records the node already had.

        ``view`` is what the caller may write (as for :meth:`append`; the import
        route passes the caller's ``records:write`` view): one record whose
        namespace/thread it does not cover is CONSENT_DENIED for the whole batch.
        ``writer``: as for :meth:`append` (the whole batch counts).

        Every record is verified and checked before any is stored: one that fails
        raises its error (BAD_SIGNATURE, RECORD_INVALID, NON_CANONICAL,
        CONSENT_DENIED, ...) with its index in the message, and nothing of the
        batch is stored. At most
        ``config.batch_fetch_max`` records (INVALID_REQUEST). CPU work runs on a
        worker thread.
        """
        core = self._core
        limit = core.config.batch_fetch_max
        if len(items) > limit:
            raise InvalidRequest(f"at most {limit} records per batch, got {len(items)}")
        now = core.now_ms()

        def verify_all() -> builtins.list[SignedRecord]:
            out = []
            for i, item in enumerate(items):
                if (
                    not isinstance(item, tuple)
                    or len(item) != 2
                    or not isinstance(item[0], bytes)
                    or not isinstance(item[1], bytes)
                ):
                    raise Malformed(f"record {i}: a signed record is {{data: bytes, sig: bytes}}")
                try:
                    rec = verify_record(item[0], item[1], limits=core.limits, now_ms=now)
                    view.check_write(rec.record.namespace, rec.record.thread)
                except FedpeerError as err:
                    raise type(err)(f"record {i} of the batch: {err.message}") from None
                out.append(rec)
            return out

        signed = await anyio.to_thread.run_sync(verify_all)
        if not signed:
            return 0, 0
        new = [s.to_new() for s in signed]
        result = await core.store.transact(lambda tx: self._put_counted(tx, new, writer))
        if not all(read_view.visible(s.record.namespace, s.record.thread) for s in signed):
            return len(signed), 0
        return len(result.new), result.duplicates

    async def put_verified(
        self, signed: SignedRecord, *, writer: Principal | None = None
    ) -> tuple[RecordEntry, bool]:
        """Store a record that went through the pipeline; ``(entry, created)``.
        ``writer``: as for :meth:`append`."""
        store = self._core.store
        new = [signed.to_new()]
        result = await store.transact(lambda tx: self._put_counted(tx, new, writer))
        if result.new:
            return RecordEntry(result.new[0][1], signed), True
        existing = await store.get(signed.cid.raw)
        if existing is None:  # pragma: no cover - a store that loses what it just kept
            raise RecordNotFound(f"record {signed.cid} vanished while it was stored")
        return RecordEntry(existing.seq, signed), False

    def _put_counted(
        self, tx: StateTx, new: Sequence[NewRecord], writer: Principal | None
    ) -> PutResult:
        """Store ``new`` in ``tx``, counted for ``writer`` (when there is one):
        its token is checked again, and a writer that is neither an admin nor
        bound to this node's own DID is held to the write quota; QUOTA_EXCEEDED,
        TOKEN_REVOKED or TOKEN_EXPIRED roll the whole transaction back
        (:func:`~fedpeer.consent.tokens.charge_write`)."""
        if writer is not None:
            cfg = self._core.config
            # admins, and accounts bound to this node's own DID (the owner's own
            # tools: `fedpeer token create` without --holder), are counted, not bounded
            owners = writer.allows("admin") or writer.holder_did == self._core.did
            quota = (
                _NO_QUOTA if owners else WriteQuota(cfg.write_quota_records, cfg.write_quota_bytes)
            )
            charge_write(
                tx,
                writer,
                records=len(new),
                nbytes=sum(len(r.data) + len(r.sig) for r in new),
                quota=quota,
                now_ms=self._core.now_ms(),
            )
        return tx.put_records(new)

    # --- reads ---

    async def get(self, cid: CID | str, *, view: ConsentView = EVERYTHING) -> RecordEntry:
        """The record ``cid`` (a :class:`CID` or its text).

        Raises RECORD_NOT_FOUND when this node does not hold it or ``view`` may
        not see it (the same answer, so nothing leaks), MALFORMED for text that
        is not a CID.
        """
        rec = await self.get_stored(cid, view=view)
        return (await _entries([rec]))[0]

    async def get_stored(self, cid: CID | str, *, view: ConsentView = EVERYTHING) -> StoredRecord:
        """:meth:`get` as the stored row (for serving its exact bytes)."""
        parsed = parse_cid(cid)
        rec = await self._core.store.get(parsed.raw)
        if rec is None or not view.record_visible(rec):
            raise RecordNotFound(f"no record {parsed} here (or you may not see it)")
        return rec

    async def fetch(
        self, cids: Sequence[CID | str], *, view: ConsentView = EVERYTHING
    ) -> tuple[list[StoredRecord], list[str]]:
        """Batch read: ``(records found and visible, in request order without
        repeats; ids of the others)``. At most ``config.batch_fetch_max`` ids
        (INVALID_REQUEST), MALFORMED for text that is not a CID."""
        found, missing, _later = await self.fetch_within(cids, view=view, max_bytes=None)
        return found, missing

    async def fetch_within(
        self,
        cids: Sequence[CID | str],
        *,
        view: ConsentView = EVERYTHING,
        max_bytes: int | None,
    ) -> tuple[list[StoredRecord], list[str], list[str]]:
        """:meth:`fetch` with an answer budget (protocol.md §9.1): ``(found,
        missing, later)``, where ``found`` ends with the record whose
        :func:`~fedpeer.store.base.record_bytes` reach ``max_bytes`` (None: no
        budget; at least one record) and ``later`` lists the ids not looked at
        after it, in request order. Reads as many records at a time as the
        budget left could hold at ``max_record_bytes`` each (at least
        ``_FETCH_STEP``), so the answer costs its budget (and at most that many
        records more) in memory, not ``batch_fetch_max`` records."""
        limit = self._core.config.batch_fetch_max
        if len(cids) > limit:
            raise InvalidRequest(f"at most {limit} ids per request")

        def parse_all() -> builtins.list[CID]:
            wanted: builtins.list[CID] = []
            seen: set[bytes] = set()
            for item in cids:
                cid = parse_cid(item)
                if cid.raw not in seen:
                    seen.add(cid.raw)
                    wanted.append(cid)
            return wanted

        # ids in rare long spellings (base10, base2: 1 KiB each) parse slowly: a
        # request of many off the event loop
        text = sum(len(c) for c in cids if isinstance(c, str))
        wanted = await off_loop(parse_all) if text > _INLINE_ID_TEXT else parse_all()
        out: builtins.list[StoredRecord] = []
        missing: builtins.list[str] = []
        used = 0
        largest = self._core.limits.max_record_bytes
        start = 0
        while start < len(wanted):
            # As many as the budget left could hold at the largest record size (at
            # least _FETCH_STEP): one read for small budgets' worth, never far past it.
            step = (
                len(wanted)
                if max_bytes is None
                else max(_FETCH_STEP, (max_bytes - used) // largest)
            )
            chunk = wanted[start : start + step]
            start += len(chunk)
            found = {r.cid: r for r in await self._core.store.get_many([c.raw for c in chunk])}
            for i, cid in enumerate(chunk):
                rec = found.get(cid.raw)
                if rec is None or not view.record_visible(rec):
                    missing.append(str(cid))
                    continue
                out.append(rec)
                used += record_bytes(rec)
                if max_bytes is not None and used >= max_bytes:
                    later = [str(c) for c in chunk[i + 1 :] + wanted[start:]]
                    return out, missing, later
        return out, missing, []

    async def list(
        self,
        *,
        namespace: str | None = None,
        thread: str | None = None,
        limit: int = 50,
        since: str | None = None,
        newest_first: bool = False,
        view: ConsentView = EVERYTHING,
    ) -> RecordsPage:
        """A page of records, oldest first (the order this node stored them) or
        ``newest_first``.

        ``namespace`` is a prefix, ``thread`` exact. ``since`` is the
        ``next_cursor`` of the previous page of the same listing (oldest first:
        records after it; newest first: records before it). ``limit`` is 1..10000.
        Raises INVALID_REQUEST, CURSOR_INVALID, CURSOR_RESET (another store's
        cursor), CURSOR_FROM_FUTURE, CONSENT_DENIED (``view`` does not cover the
        namespace or thread named).
        """
        _check_limit(limit, _MAX_LIST)
        flt = ChangeFilter(namespace_prefix=namespace or None, thread=thread or None)
        view.check_change_filter(flt)
        store = self._core.store
        budget = self._core.config.page_max_bytes
        since_seq = await resolve_cursor(store, since)
        if not newest_first:
            page = build_page(
                await changes_in(store, since_seq, limit, view.wake_filters(flt), max_bytes=budget),
                epoch=store.epoch,
                key=store.cursor_key,
                visible=view.record_visible,
            )
            return RecordsPage(
                await _entries(page.records),
                page.next_cursor,
                page.has_more,
            )
        # newest first: seq <= upper; the cursor names the oldest seq returned
        # (fingerprinted, so a rolled-back store answers CURSOR_RESET)
        upper = await store.head_seq() if since is None else since_seq - 1
        rows, next_upper = await self._scan_back(upper, limit, flt, view, budget)
        more = next_upper > 0
        at = next_upper + 1 if more else 0
        cursor = cursor_at(store.epoch, at, await store.cid_at(at), key=store.cursor_key)
        return RecordsPage(await _entries(rows), cursor.encode(), more)

    async def _scan_back(
        self, upper: int, limit: int, flt: ChangeFilter, view: ConsentView, budget: int
    ) -> tuple[builtins.list[StoredRecord], int]:
        """Up to ``limit`` visible records with seq <= ``upper``, newest first,
        ending with the one whose record bytes reach ``budget``; once about
        ``_NEWEST_SCAN`` rows were read, or the store scans stepped over
        ``_NEWEST_SPAN`` seqs in all (one scan per grant of the caller: records
        it may not see are stepped over, never read), what was found so far,
        with more to come.

        Scans windows backwards (each window forwards through ``Store.changes``,
        so any Store works), doubling the window while it finds too little; of a
        window it keeps only the newest records the page can still take, so a
        window of large records costs the budget in memory, not the window.
        Returns the records and the highest seq not looked at yet (0: none left);
        the next page's cursor is that seq + 1.
        """
        store = self._core.store
        filters = view.wake_filters(flt)  # the grants in the scan, as oldest first
        if filters == ():
            return [], 0  # no grant covers anything here: nothing to look for
        scans = len(filters) if filters else 1  # store scans per window
        out: builtins.list[StoredRecord] = []
        used = 0
        scanned = 0
        covered = 0  # seqs stepped over, once per store scan (the store's own work)
        hi = upper
        # Several grants: several store scans, each stepping over a window of its
        # own whatever is asked for; start with the largest window, so a page
        # does not spend its span on scans running past a small one.
        window = max(_NEWEST_WINDOW, limit) if scans == 1 else _MAX_LIST
        for _ in range(_NEWEST_ROUNDS):
            if hi <= 0:
                return out, 0
            if scanned >= max(limit, _NEWEST_SCAN) or covered >= _NEWEST_SPAN:
                # The windows read so far held too little: answer what was found
                # (perhaps nothing) with has_more, and go on next page, so one
                # request cannot make the node read the whole log.
                return out, hi
            lo = max(0, hi - window)
            chunk: deque[StoredRecord] = deque()
            chunk_bytes = 0
            room, left = limit - len(out), budget - used
            pos = lo
            for _ in range(window + 1):  # each pass moves pos forward by at least one seq
                page = await changes_in(
                    store, pos, min(window, _MAX_LIST), filters, max_bytes=budget
                )
                scanned += len(page.records)
                # the span this window took (a scan may run past hi, by at most a
                # store window: the first window is that large with several scans)
                covered += (min(page.last_seq, hi) - pos) * scans
                for rec in page.records:
                    if rec.seq > hi or not view.record_visible(rec):
                        continue
                    chunk.append(rec)
                    chunk_bytes += record_bytes(rec)
                    # drop the oldest while the newer ones fill the page without it
                    while len(chunk) > room or (
                        len(chunk) > 1 and chunk_bytes - record_bytes(chunk[0]) >= left
                    ):
                        chunk_bytes -= record_bytes(chunk.popleft())
                if page.last_seq <= pos or page.last_seq >= hi:
                    break
                pos = page.last_seq
            out.extend(reversed(chunk))  # what the page can take: never past it
            used += chunk_bytes
            if len(out) >= limit or used >= budget:
                # the next page starts below the oldest record returned (records of
                # this window the page could not take are looked at again)
                return out, out[-1].seq - 1
            hi = lo
            window = min(window * 2, _MAX_LIST)
        return out, max(hi, 0)

    async def threads(
        self, namespace: str | None = None, *, view: ConsentView = EVERYTHING
    ) -> builtins.list[ThreadInfo]:
        """Threads (of namespaces starting with ``namespace``) with record counts,
        those ``view`` may see. CONSENT_DENIED for a namespace outside every grant."""
        view.check_filter(namespace, None)
        infos = await self._core.store.threads(namespace)
        return [i for i in infos if view.visible(i.namespace, i.thread)]

    async def threads_page(
        self,
        namespace: str | None = None,
        *,
        limit: int,
        since: str | None = None,
        view: ConsentView = EVERYTHING,
    ) -> tuple[builtins.list[ThreadInfo], str | None]:
        """One page of :meth:`threads` (``GET /v1/threads``): the threads ``view``
        may see, at most ``limit`` of them after ``since``, and the cursor of
        the next page (None: this was the last). The caller's grants go into the
        scan (one store scan per grant, merged), so pairs it may not see never
        count toward ``limit`` nor end a page; a page may still hold fewer than
        ``limit`` while more follow (where one grant's scan stopped). INVALID_REQUEST
        for a ``since`` that is not such a cursor, CONSENT_DENIED as
        :meth:`threads`."""
        view.check_filter(namespace, None)
        store = self._core.store
        key = store.cursor_key
        after = None if since is None else _threads_cursor_decode(key, since)
        filters = view.wake_filters(ChangeFilter(namespace_prefix=namespace or None))
        if filters is None:
            scans = [await store.threads(namespace, after=after, limit=limit)]
        else:
            # the caller's grants in the scan (as changes_in does for records): a
            # page never counts, nor ends on, a pair it may not see
            scans = [
                await store.threads(
                    f.namespace_prefix,
                    after=after,
                    limit=limit,
                    thread=f.thread,
                    namespace_exact=f.namespace_exact,
                )
                for f in filters
            ]
        # each scan is complete up to its last pair when it is full, to the end if not
        full = [(i[-1].namespace, i[-1].thread) for i in scans if len(i) == limit]
        bound = min(full) if full else None
        merged = sorted(
            {
                (i.namespace, i.thread): i
                for infos in scans
                for i in infos
                if bound is None or (i.namespace, i.thread) <= bound
            }.items()
        )
        page = [i for _, i in merged[:limit] if view.visible(i.namespace, i.thread)]
        if len(merged) <= limit and bound is None:
            return page, None
        last = merged[min(limit, len(merged)) - 1][0]
        return page, _threads_cursor(key, *last)

    async def count(self) -> int:
        """How many records this node holds."""
        return await self._core.store.count()


def _max_clock(rows: Sequence[StoredRecord]) -> int:
    """The largest ``clock`` of the records ``rows`` (0 if none has one)."""
    clock = 0
    for row in rows:
        pmap = dagcbor_decode(row.data)
        if isinstance(pmap, dict) and isinstance(pmap.get("clock"), int):
            clock = max(clock, int(pmap["clock"]))
    return clock


async def _entries(records: Sequence[StoredRecord]) -> tuple[RecordEntry, ...]:
    """The decoded entries of ``records``: off the event loop when they weigh
    over ``INLINE_MAX`` (a stored record of a million empty lists takes a second)."""

    def decode() -> tuple[RecordEntry, ...]:
        return tuple(RecordEntry.from_stored(r) for r in records)

    if sum(len(r.data) for r in records) <= INLINE_MAX:
        return decode()
    return await off_loop(decode)


def _threads_box(cursor_key: bytes) -> SecretBox:
    """The key that seals threads-listing cursors, derived from the store's
    secret cursor key (so it survives restarts and stays with the store)."""
    key = hashlib.blake2b(cursor_key, digest_size=32, person=b"fedpeer/threads").digest()
    return SecretBox(key)


def _threads_cursor(cursor_key: bytes, namespace: str, thread: str) -> str:
    """The opaque cursor of a threads listing: past this (namespace, thread).

    Sealed (XSalsa20-Poly1305 under a node secret): the last pair a page passed
    over may be one the reader may not see, and its names must not reach it."""
    return b64url_encode(
        bytes(_threads_box(cursor_key).encrypt(dagcbor_encode([namespace, thread])))
    )


def _threads_cursor_decode(cursor_key: bytes, text: str) -> tuple[str, str]:
    value: object = None
    if isinstance(text, str) and len(text) <= _THREADS_CURSOR_MAX:
        try:
            value = dagcbor_decode(_threads_box(cursor_key).decrypt(b64url_decode(text)))
        except (FedpeerError, CryptoError, ValueError, TypeError):
            value = None
    if not isinstance(value, list) or len(value) != 2 or not all(isinstance(v, str) for v in value):
        raise InvalidRequest("since is not a cursor of this threads listing")
    return value[0], value[1]
