"""SQLiteStore: the default Store, on the stdlib ``sqlite3`` module.

Theory of operation
-------------------
* **One writer.** A single read-write connection does every write, on a worker
  thread (``anyio.to_thread.run_sync``) while holding an ``anyio.Lock``, inside
  ``BEGIN IMMEDIATE`` ... ``COMMIT``. :meth:`SQLiteStore.transact` runs the
  caller's function right there, so records, state rows and audit entries of
  one transaction commit together or not at all.
* **Readers apart.** Reads use a small pool of read-only connections (URI
  ``mode=ro``), also on worker threads, so a long scan never waits for a write
  and vice versa (WAL lets readers see the last committed snapshot). A
  multi-statement read runs in one ``BEGIN`` ... ``COMMIT`` snapshot.
* **Durability: WAL + ``synchronous=FULL`` by default.** ``COMMIT`` returns
  once the WAL is fsynced, so a committed transaction survives a process kill
  (even SIGKILL; tested with a real child process killed at random points), an
  OS crash and a power cut; the next open recovers every committed transaction
  and no partial one. Why FULL and not SQLite's usual WAL pairing ``NORMAL``
  (fsync only at checkpoints): with NORMAL a power cut can lose the last
  commits, so the store goes back in time and hands the lost seqs to new
  records. Cursors notice that (their fingerprint, see
  :mod:`fedpeer.sync.feed`) and readers resync, but a record this node
  *authored* and already served could be gone from its own log, and a grant
  revocation could be undone. ``bench/store.py`` measures the price on every
  run and prints the FULL/NORMAL ratio: about one fsync per commit, which costs
  little on node-level writes (an HTTP append, a pulled 1000-record page) and
  halves the rate of bare single-record transactions on the store. Pass
  ``synchronous="NORMAL"`` to :meth:`SQLiteStore.open` to trade power-loss
  durability for that speed (a cache, a replica that can re-pull).
* **Sequence numbers** are the rowid (``seq INTEGER PRIMARY KEY``): a new row
  gets ``max(seq) + 1``, so seqs are contiguous, like MemoryStore's. (Not
  ``AUTOINCREMENT``: with it every duplicate skipped by ``ON CONFLICT DO
  NOTHING`` burns a number and leaves a gap.) Records are never deleted in
  this schema, so a seq is never reused; a future migration that prunes
  records must keep the highest one (or a high-water mark). A rolled-back
  transaction's seqs are reused, but nobody could have seen them. An insert
  batch is a few multi-row ``INSERT ... VALUES (...), (...) ON CONFLICT(cid) DO
  NOTHING`` statements (up to 1000 rows each), not ``executemany``: the sqlite3
  module releases the GIL around every statement step and a thread waits to
  get it back while any other thread runs Python, so one step per row made a
  1000-row batch take seconds next to a busy event loop. The rows that were new
  are known from ``total_changes`` and the max seq before and after (the common
  all-new case needs no extra read), falling back to ``SELECT ... WHERE seq >
  before``.
* **Filters.** ``thread`` uses the ``(thread, seq)`` index and is exact. A
  namespace prefix is a range ``ns >= p AND ns < upper(p)`` (no LIKE, so ``%``
  and ``_`` are ordinary characters) applied to a bounded window of
  ``scan_window`` sequence numbers on the primary key, so one call's cost is
  bounded whatever the filter matches; the page's ``last_seq`` tells the caller
  where to resume.
* **Schema** is versioned by ``PRAGMA user_version`` with forward migrations
  (``MIGRATIONS``); a newer file raises ``SchemaTooNew``, a file that is not a
  SQLite database (or is damaged) raises ``StoreCorrupt``. The database file is
  created with mode 0600 (SQLite gives ``-wal`` and ``-shm`` the same mode).
* **Wake-ups** for :meth:`SQLiteStore.wait_for_seq` come from commits made
  through this object (one process owns a store file; other processes writing
  the same file are not announced), indexed by what each waiter may see
  (:mod:`fedpeer.store._watch`).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import inspect
import logging
import os
import re
import secrets
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal, TypeVar

import anyio
import anyio.lowlevel

from .._clock import now_ms
from .._files import TargetExists, place
from ..errors import SchemaTooNew, StoreClosed, StoreCorrupt, StoreError, StoreFull
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
    prefix_upper_bound,
    take_within,
)
from .memory import DEFAULT_SCAN_WINDOW

__all__ = ["DEFAULT_SYNCHRONOUS", "MIGRATIONS", "SCHEMA_VERSION", "SQLiteStore"]

DEFAULT_SYNCHRONOUS: Literal["NORMAL", "FULL"] = "FULL"
"""SQLite ``synchronous`` level of a store's writer (module docstring: why FULL)."""

T = TypeVar("T")

log = logging.getLogger("fedpeer.store")

_SQLITE_IOERR = 10
_SQLITE_CORRUPT = 11
_SQLITE_FULL = 13
_LOW_SPACE_BYTES = 64 * 1024
_SQLITE_NOTADB = 26
_FULL_LOG_EVERY_S = 60.0  # while the disk stays full, repeat the log line at most this often
_GET_MANY_CHUNK = 500
_BUSY_TIMEOUT_S = 10.0
_EPOCH_RE = re.compile(r"[0-9a-f]{32}")

_SELECT = "SELECT seq, cid, data, sig, author, namespace, thread, kind, ts FROM records"
_BY_SEQ = _SELECT + " WHERE seq > ? ORDER BY seq LIMIT ?"
_BY_THREAD = _SELECT + " WHERE thread = ? AND seq > ? ORDER BY seq LIMIT ?"
_BY_CID = _SELECT + " WHERE cid = ?"
_CID_AT = "SELECT cid FROM records WHERE seq = ?"
# Dynamic SQL below is assembled from these fixed fragments only; every value is bound.
_INSERT_COLUMNS = 8
_INSERT_MAX_ROWS = 1000  # rows per multi-row INSERT statement (8 parameters each)
_INSERT_ROW = "(?, ?, ?, ?, ?, ?, ?, ?)"
_INSERT_HEADS = {
    True: "INSERT OR IGNORE INTO records (cid, data, sig, author, namespace, thread, kind, ts) ",
    False: "INSERT INTO records (cid, data, sig, author, namespace, thread, kind, ts) ",
}
_INSERT_TAILS = {True: "", False: " ON CONFLICT (cid) DO NOTHING"}


@functools.lru_cache(maxsize=32)
def _insert_sql(rows: int, or_ignore: bool) -> str:
    """The INSERT of ``rows`` records in one statement (fixed fragments only).

    A record whose cid is already stored (or came earlier in the statement) is
    skipped: ``INSERT OR IGNORE`` (measured a third cheaper per row than an
    UPSERT clause in a multi-row statement) for rows without NULLs, where the
    only constraint that can fail is ``cid``'s UNIQUE; ``ON CONFLICT (cid) DO
    NOTHING`` otherwise, so a NULL still fails its NOT NULL constraint loudly.
    """
    values = "VALUES " + ", ".join([_INSERT_ROW] * rows)
    return _INSERT_HEADS[or_ignore] + values + _INSERT_TAILS[or_ignore]


def _insert_sizes(n: int, cap: int) -> list[int]:
    """Statement sizes (rows) that add up to ``n``: ``cap`` while it fits, then powers
    of two, so only a dozen statement shapes ever exist (sqlite3 caches each one
    compiled) and a batch takes at most a dozen statements."""
    sizes: list[int] = []
    while n >= cap:
        sizes.append(cap)
        n -= cap
    bit = 1 << max(0, cap.bit_length() - 1)
    while n:
        if n >= bit:
            sizes.append(bit)
            n -= bit
        bit >>= 1
    return sizes


_WAL_AUTOCHECKPOINT_PAGES = 10_000  # pages (4 KiB each by default): ~40 MiB of WAL
_WAL_SIZE_LIMIT_BYTES = 64 * 1024 * 1024

# --- schema ------------------------------------------------------------------


def _migration_1(conn: sqlite3.Connection) -> None:
    """The first schema: records, state, audit, meta."""
    statements = [
        """CREATE TABLE records (
            seq INTEGER PRIMARY KEY,
            cid BLOB NOT NULL UNIQUE,
            data BLOB NOT NULL,
            sig BLOB NOT NULL,
            author TEXT NOT NULL,
            namespace TEXT NOT NULL,
            thread TEXT NOT NULL,
            kind TEXT NOT NULL,
            ts INTEGER NOT NULL
        )""",
        # thread filter in seq order
        "CREATE INDEX records_thread_seq ON records (thread, seq)",
        # threads() listing and namespace ranges (the rowid rides along: covering)
        "CREATE INDEX records_ns_thread ON records (namespace, thread)",
        """CREATE TRIGGER records_immutable BEFORE UPDATE ON records
           BEGIN SELECT RAISE(ABORT, 'records are immutable'); END""",
        """CREATE TABLE state (
            tbl TEXT NOT NULL,
            key TEXT NOT NULL,
            value TEXT NOT NULL,
            PRIMARY KEY (tbl, key)
        ) WITHOUT ROWID""",
        """CREATE TABLE audit (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            ts_ms INTEGER NOT NULL,
            event TEXT NOT NULL
        )""",
        """CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
           BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
        """CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
           BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    ]
    for sql in statements:
        conn.execute(sql)
    conn.executemany(
        "INSERT INTO meta (key, value) VALUES (?, ?)",
        [
            ("epoch", secrets.token_hex(16)),
            ("created_ms", str(now_ms())),
            ("cursor_key", secrets.token_hex(16)),
        ],
    )


MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_migration_1,)
"""Forward migrations; step ``i`` brings ``user_version`` from ``i`` to ``i + 1``."""

SCHEMA_VERSION = len(MIGRATIONS)
"""The ``PRAGMA user_version`` this code writes and understands."""


# --- helpers (worker threads) -------------------------------------------------


def _full(doing: str, detail: object) -> StoreFull:
    return StoreFull(
        f"{doing}: {detail}: the disk holding the store is full; free some space (writes "
        "resume by themselves, nothing stored was lost; reads keep working meanwhile)"
    )


def _out_of_space(path: Path) -> bool:
    """True when the file system holding ``path`` has (almost) no space left."""
    try:
        st = os.statvfs(path.parent)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < _LOW_SPACE_BYTES


def _map_error(exc: sqlite3.Error, doing: str, path: Path | None = None) -> StoreError:
    """The StoreError for a sqlite3 error. SQLITE_FULL is STORE_FULL; so is an I/O
    error on a disk with no space left (``path`` given: SQLite reports a failed
    ``-shm`` or WAL allocation at open as a plain I/O error)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int) and code & 0xFF == _SQLITE_FULL:
        return _full(doing, exc)
    if isinstance(code, int) and code & 0xFF == _SQLITE_IOERR and path and _out_of_space(path):
        return _full(doing, exc)
    if isinstance(code, int) and code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
        return StoreCorrupt(f"{doing}: {exc}; the store file is damaged or not a fedpeer store")
    if isinstance(exc, sqlite3.DatabaseError) and "malformed" in str(exc):
        return StoreCorrupt(f"{doing}: {exc}")
    return StoreError(f"{doing}: {exc}")


def _read_only_uri(path: Path) -> str:
    """The ``file:`` URI that opens ``path`` read-only, any character in it escaped
    (a ``#``, ``?`` or ``%`` in a plain ``file:{path}`` would cut or change the path)."""
    return path.resolve().as_uri() + "?mode=ro"


def _scalar(conn: sqlite3.Connection, sql: str, params: Sequence[object] = ()) -> object:
    row = conn.execute(sql, params).fetchone()
    return None if row is None else row[0]


def _int(value: object) -> int:
    if not isinstance(value, int):
        raise StoreCorrupt(f"expected an integer in the store, got {type(value).__name__}")
    return value


def _cursor_key(conn: sqlite3.Connection, path: Path) -> bytes:
    """The store's secret cursor key (meta ``cursor_key``), created once if missing
    (stores made before it existed; no schema change, older code ignores the row)."""
    key = _scalar(conn, "SELECT value FROM meta WHERE key = 'cursor_key'")
    if key is None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('cursor_key', ?)",
                (secrets.token_hex(16),),
            )
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        key = _scalar(conn, "SELECT value FROM meta WHERE key = 'cursor_key'")
    if not isinstance(key, str) or not _EPOCH_RE.fullmatch(key):
        raise StoreCorrupt(f"{path} has no valid cursor key; it is damaged")
    return bytes.fromhex(key)


def _open_writer(path: Path, synchronous: str) -> tuple[sqlite3.Connection, str, int, bytes]:
    """Create or open the file, migrate it, return (writer, epoch, head, cursor key)."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        pass
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _full(f"cannot create the store file {path}", exc.strerror) from exc
        raise StoreError(f"cannot create the store file {path}: {exc}") from exc
    else:
        os.close(fd)
    if not path.is_file():
        raise StoreError(f"the store path {path} is not a regular file")
    try:
        conn = sqlite3.connect(
            str(path), isolation_level=None, check_same_thread=False, timeout=_BUSY_TIMEOUT_S
        )
    except sqlite3.Error as exc:
        raise _map_error(exc, f"open {path}", path) from exc
    try:
        version = _int(_scalar(conn, "PRAGMA user_version"))
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"{path} has schema version {version}, this fedpeer knows up to "
                f"{SCHEMA_VERSION}; upgrade fedpeer to open it"
            )
        if version == 0 and _int(_scalar(conn, "SELECT count(*) FROM sqlite_master")):
            raise StoreCorrupt(
                f"{path} is a SQLite database of another program, not a fedpeer store; "
                "point fedpeer at a new file"
            )
        mode = _scalar(conn, "PRAGMA journal_mode=WAL")
        if str(mode).lower() != "wal":
            raise StoreError(f"cannot switch {path} to WAL mode (got {mode!r})")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute("PRAGMA cache_size=-16000")
        # Checkpoint every ~40 MiB of WAL instead of SQLite's 4 MiB: a bulk pull
        # rewrites the same index pages commit after commit (record ids are
        # random keys), and a checkpoint copies each page once however often it
        # changed meanwhile (measured: half the commit time for 1000-record
        # pages). journal_size_limit truncates the WAL file back after a
        # checkpoint so it does not stay big.
        conn.execute(f"PRAGMA wal_autocheckpoint={_WAL_AUTOCHECKPOINT_PAGES}")
        conn.execute(f"PRAGMA journal_size_limit={_WAL_SIZE_LIMIT_BYTES}")
        for target in range(version + 1, SCHEMA_VERSION + 1):
            conn.execute("BEGIN IMMEDIATE")
            try:
                # another process may have migrated meanwhile
                if _int(_scalar(conn, "PRAGMA user_version")) < target:
                    MIGRATIONS[target - 1](conn)
                    conn.execute(f"PRAGMA user_version={target}")
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
        epoch = _scalar(conn, "SELECT value FROM meta WHERE key = 'epoch'")
        if not isinstance(epoch, str) or not _EPOCH_RE.fullmatch(epoch):
            raise StoreCorrupt(f"{path} has no valid epoch; it is damaged")
        cursor_key = _cursor_key(conn, path)
        head = _int(_scalar(conn, "SELECT coalesce(max(seq), 0) FROM records"))
    except sqlite3.Error as exc:
        conn.close()
        raise _map_error(exc, f"open {path}", path) from exc
    except BaseException:
        conn.close()
        raise
    return conn, epoch, head, cursor_key


def _space_check(path: Path, min_free_percent: float) -> Callable[[int], None] | None:
    """What a transaction runs before it stores records: STORE_FULL when, with
    ``incoming`` more bytes, the file system holding ``path`` would have less than
    ``min_free_percent`` of its size available (None: no floor). A file system
    that cannot be asked (statvfs fails) is not held back."""
    if min_free_percent <= 0:
        return None
    where = path.parent

    def check(incoming: int) -> None:
        try:
            st = os.statvfs(where)
        except OSError:
            return
        if st.f_blocks == 0 or st.f_frsize == 0:
            return  # a file system that reports no size (some FUSE ones): no floor to keep
        free = st.f_bavail * st.f_frsize
        floor = st.f_blocks * st.f_frsize * min_free_percent / 100
        if free - incoming < floor:
            raise StoreFull(
                f"storing records: {free // 1024} KiB left on the disk holding the store, "
                f"under the {min_free_percent:g} % ({int(floor) // 1024} KiB) this node keeps "
                "free (min_free_disk_percent); free some space (writes resume by themselves, "
                "nothing stored was lost; reads keep working meanwhile)"
            )

    return check


class _SQLiteTx:
    """The StateTx of a SQLiteStore transaction; used on the writer thread only."""

    def __init__(
        self, conn: sqlite3.Connection, space_check: Callable[[int], None] | None = None
    ) -> None:
        self._conn = conn
        self._space_check = space_check
        self.finished = False
        self.max_new_seq = 0
        self.touched: set[tuple[str, str]] = set()  # (namespace, thread) of new records
        self.wake_all = False
        limit = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        self._rows_per_insert = max(1, min(_INSERT_MAX_ROWS, limit // _INSERT_COLUMNS))

    def _check(self) -> None:
        if self.finished:
            raise StoreError("the transaction is finished; use tx only inside transact's fn")

    def get(self, table: str, key: str) -> JsonDict | None:
        self._check()
        check_name("table", table)
        check_name("key", key)
        try:
            text = _scalar(
                self._conn, "SELECT value FROM state WHERE tbl = ? AND key = ?", (table, key)
            )
        except sqlite3.Error as exc:
            raise _map_error(exc, "read state") from exc
        return None if text is None else load_json(str(text))

    def put(self, table: str, key: str, value: JsonDict) -> None:
        self._check()
        check_name("table", table)
        check_name("key", key)
        text = dump_json(value)
        try:
            self._conn.execute(
                "INSERT INTO state (tbl, key, value) VALUES (?, ?, ?) "
                "ON CONFLICT (tbl, key) DO UPDATE SET value = excluded.value",
                (table, key, text),
            )
        except sqlite3.Error as exc:
            raise _map_error(exc, "write state") from exc

    def delete(self, table: str, key: str) -> bool:
        self._check()
        check_name("table", table)
        check_name("key", key)
        try:
            cur = self._conn.execute("DELETE FROM state WHERE tbl = ? AND key = ?", (table, key))
        except sqlite3.Error as exc:
            raise _map_error(exc, "delete state") from exc
        return cur.rowcount > 0

    def list(self, table: str, prefix: str = "") -> list[tuple[str, JsonDict]]:
        self._check()
        try:
            return _list_state(self._conn, table, prefix)
        except sqlite3.Error as exc:
            raise _map_error(exc, "list state") from exc

    def audit(self, event: JsonDict, *, ts_ms: int | None = None) -> int:
        self._check()
        text = dump_json(event, "audit event")
        when = now_ms(None if ts_ms is None else int(ts_ms))
        try:
            cur = self._conn.execute("INSERT INTO audit (ts_ms, event) VALUES (?, ?)", (when, text))
        except sqlite3.Error as exc:
            raise _map_error(exc, "append to the audit log") from exc
        return _int(cur.lastrowid)

    def put_records(self, records: Sequence[NewRecord]) -> PutResult:
        self._check()
        if not records:
            return PutResult((), 0)
        if self._space_check is not None:
            self._space_check(sum(len(r.data) + len(r.sig) for r in records))
        conn = self._conn
        rows = [
            (r.cid, r.data, r.sig, r.author, r.namespace, r.thread, r.kind, r.ts) for r in records
        ]
        try:
            before = _int(_scalar(conn, "SELECT coalesce(max(seq), 0) FROM records"))
            changes_before = conn.total_changes
            # Many rows per statement, not executemany: the sqlite3 module drops the
            # GIL around every step, and taking it back after each row waits for any
            # thread running Python (up to the switch interval): measured 3 ms a row
            # while the event loop is busy. One statement is one step. Rows go in
            # order, so seqs follow the input and a repeated cid is skipped as before.
            i = 0
            for size in _insert_sizes(len(rows), self._rows_per_insert):
                chunk = rows[i : i + size]
                i += size
                params = [v for row in chunk for v in row]
                conn.execute(_insert_sql(size, None not in params), params)
            inserted = conn.total_changes - changes_before
            if inserted == 0:
                return PutResult((), len(rows))
            after = _int(_scalar(conn, "SELECT max(seq) FROM records"))
            new: tuple[tuple[bytes, int], ...]
            if inserted == len(rows) and after == before + inserted:
                # every row was new and got the next seq in input order
                new = tuple(
                    zip((row[0] for row in rows), range(before + 1, after + 1), strict=True)
                )
            else:
                new = tuple(
                    (bytes(cid), int(seq))
                    for cid, seq in conn.execute(
                        "SELECT cid, seq FROM records WHERE seq > ? ORDER BY seq", (before,)
                    )
                )
        except sqlite3.Error as exc:
            raise _map_error(exc, "store records") from exc
        self.max_new_seq = max(self.max_new_seq, after)
        if len(new) == len(rows):
            self.touched.update((row[4], row[5]) for row in rows)
        else:
            stored = {cid for cid, _seq in new}
            self.touched.update((row[4], row[5]) for row in rows if row[0] in stored)
        return PutResult(new, len(rows) - len(new))

    def wake_waiters(self) -> None:
        self._check()
        self.wake_all = True


def _list_state(conn: sqlite3.Connection, table: str, prefix: str) -> list[tuple[str, JsonDict]]:
    check_name("table", table)
    check_name("prefix", prefix)
    sql = "SELECT key, value FROM state WHERE tbl = ? AND key >= ?"
    params: list[object] = [table, prefix]
    upper = prefix_upper_bound(prefix)
    if upper is not None:
        sql += " AND key < ?"
        params.append(upper)
    sql += " ORDER BY key"
    return [(str(k), load_json(str(v))) for k, v in conn.execute(sql, params)]


def _changes(
    conn: sqlite3.Connection,
    since_seq: int,
    limit: int,
    filter: ChangeFilter | None,
    window: int,
    max_bytes: int | None = None,
) -> ChangesPage:
    conn.execute("BEGIN")
    try:
        head = _int(_scalar(conn, "SELECT coalesce(max(seq), 0) FROM records"))
        exact = True
        end = head
        if filter is None or filter.is_empty:
            sql = _BY_SEQ
            params: list[object] = [since_seq, limit]
        elif not filter.namespace_prefix and not filter.namespace_exact:
            sql = _BY_THREAD
            params = [filter.thread, since_seq, limit]
        else:
            exact = False
            end = min(head, since_seq + window)
            # "+namespace" keeps the planner on the seq range (bounded work) instead
            # of walking the whole namespace range of the index.
            clauses = ["seq > ?", "seq <= ?"]
            params = [since_seq, end]
            if filter.namespace_exact:
                clauses.append("+namespace = ?")
                params.append(filter.namespace_prefix or "")
            else:
                clauses.append("+namespace >= ?")
                params.append(filter.namespace_prefix)
                upper = prefix_upper_bound(filter.namespace_prefix or "")
                if upper is not None:
                    clauses.append("+namespace < ?")
                    params.append(upper)
            if filter.thread is not None:
                clauses.append("thread = ?")
                params.append(filter.thread)
            sql = f"{_SELECT} WHERE {' AND '.join(clauses)} ORDER BY seq LIMIT ?"
            params.append(limit)
        cur = conn.execute(sql, params)
        if max_bytes is None:
            records = tuple(StoredRecord(*row) for row in cur.fetchall())
            cut = False
        else:
            records, cut = take_within((StoredRecord(*row) for row in cur), max_bytes)
            cur.close()  # rows past the budget are never read
        if cut or len(records) == limit:
            last = records[-1].seq
        else:
            last = max(since_seq, head if exact else end)
        if records and records[-1].seq == last:
            last_cid: bytes | None = records[-1].cid
        else:  # the cursor's fingerprint, from the same snapshot
            last_cid = _cid_at(conn, last)
    finally:
        conn.execute("COMMIT")
    return ChangesPage(records, last, head, last_cid)


def _cid_at(conn: sqlite3.Connection, seq: int) -> bytes | None:
    if seq < 1:
        return None
    cid = _scalar(conn, _CID_AT, (seq,))
    if cid is not None and not isinstance(cid, bytes):
        raise StoreCorrupt(f"the record id at seq {seq} is not a blob")
    return cid


def _in_thread_read(
    fn: Callable[[sqlite3.Connection], T], conn: sqlite3.Connection, doing: str
) -> T:
    try:
        return fn(conn)
    except sqlite3.Error as exc:
        raise _map_error(exc, doing) from exc
    finally:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")


def _close_all(conns: Sequence[sqlite3.Connection]) -> None:
    for conn in conns:
        with contextlib.suppress(sqlite3.Error):
            conn.close()


# --- the store -------------------------------------------------------------------


class SQLiteStore:
    """A Store in one SQLite file. Open it with ``await SQLiteStore.open(path)``.

    See :class:`fedpeer.store.Store` for the contract of each method and the
    module docstring for the design (threads, durability, schema).
    """

    epoch: str
    cursor_key: bytes

    def __init__(
        self,
        path: Path,
        writer: sqlite3.Connection,
        epoch: str,
        head: int,
        *,
        scan_window: int,
        readers: int,
        cursor_key: bytes,
        min_free_percent: float = 0.0,
    ) -> None:
        """Internal: use :meth:`open`."""
        self.path = path
        self._space_check = _space_check(path, min_free_percent)
        self.epoch = epoch
        self.cursor_key = cursor_key
        self.scan_window = scan_window
        self._writer = writer
        self._write_lock = anyio.Lock()
        self._reader_uri = _read_only_uri(path)
        self._read_limiter = anyio.CapacityLimiter(readers)
        self._idle: list[sqlite3.Connection] = []
        self._watch = HeadWatch(head)
        self._count_at: tuple[int, int] | None = None  # (head, count): count(*) scans
        self._closed = False
        self._full_since: float | None = None  # monotonic time of the first STORE_FULL
        self._full_logged = 0.0

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        synchronous: Literal["NORMAL", "FULL"] = DEFAULT_SYNCHRONOUS,
        scan_window: int = DEFAULT_SCAN_WINDOW,
        readers: int = 4,
        min_free_percent: float = 0.0,
    ) -> SQLiteStore:
        """Open (creating with mode 0600 and migrating if needed) the store at ``path``.

        ``synchronous`` picks durability (module docstring): ``FULL`` (the
        default) survives power loss, ``NORMAL`` only process crashes. ``scan_window`` bounds a
        namespace-filtered ``changes`` call; ``readers`` is the read pool size.
        ``min_free_percent`` (0 to 50; 0: none) is the share of the disk holding
        the store that storing records never eats into: a write of records that
        would leave less free is STORE_FULL and stores nothing, as on a full disk
        (state writes, a pair's cursor say, still go through).
        Raises ``SchemaTooNew`` (file from a newer fedpeer), ``StoreCorrupt``
        (not a SQLite database / damaged) or ``StoreError`` (cannot create or
        open: missing directory, permissions). Runs on a worker thread; a
        cancellation is delivered once the open finished.
        """
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError("synchronous must be 'NORMAL' or 'FULL'")
        if scan_window < 1 or readers < 1:
            raise ValueError("scan_window and readers must be >= 1")
        if not 0 <= min_free_percent <= 50:
            raise ValueError("min_free_percent must be from 0 to 50")
        p = Path(path)
        writer, epoch, head, key = await anyio.to_thread.run_sync(_open_writer, p, synchronous)
        return cls(
            p,
            writer,
            epoch,
            head,
            scan_window=scan_window,
            readers=readers,
            cursor_key=key,
            min_free_percent=min_free_percent,
        )

    # --- plumbing ---------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed("the store is closed")

    def _connect_reader(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self._reader_uri,
                uri=True,
                isolation_level=None,
                check_same_thread=False,
                timeout=_BUSY_TIMEOUT_S,
            )
        except sqlite3.Error as exc:
            raise _map_error(exc, f"open a reader on {self.path}") from exc
        return conn

    async def _read(self, fn: Callable[[sqlite3.Connection], T], doing: str) -> T:
        self._check_open()
        async with self._read_limiter:
            self._check_open()
            if self._idle:
                conn = self._idle.pop()
            else:
                conn = await anyio.to_thread.run_sync(self._connect_reader)
            try:
                return await anyio.to_thread.run_sync(_in_thread_read, fn, conn, doing)
            finally:
                if self._closed:
                    conn.close()
                else:
                    self._idle.append(conn)

    def _write_in_thread(
        self, fn: Callable[[StateTx], T]
    ) -> tuple[T, int, set[tuple[str, str]], bool]:
        conn = self._writer
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise _map_error(exc, "begin a write transaction", self.path) from exc
        tx = _SQLiteTx(conn, self._space_check)
        try:
            result = fn(tx)
            if inspect.isawaitable(result):
                if inspect.iscoroutine(result):
                    result.close()
                raise StoreError("transact needs a synchronous function, got an awaitable")
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise _map_error(exc, "commit", self.path) from exc
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
        finally:
            tx.finished = True
        return result, tx.max_new_seq, tx.touched, tx.wake_all

    # --- record log -------------------------------------------------------

    async def put(self, records: Sequence[NewRecord]) -> PutResult:
        """See :meth:`fedpeer.store.Store.put`."""
        return await self.transact(lambda tx: tx.put_records(records))

    async def get(self, cid: CidLike) -> StoredRecord | None:
        """See :meth:`fedpeer.store.Store.get`."""
        key = cid_key(cid)

        def run(conn: sqlite3.Connection) -> StoredRecord | None:
            row = conn.execute(_BY_CID, (key,)).fetchone()
            return None if row is None else StoredRecord(*row)

        return await self._read(run, "read a record")

    async def get_many(self, cids: Sequence[CidLike]) -> list[StoredRecord]:
        """See :meth:`fedpeer.store.Store.get_many`."""
        wanted = list(dict.fromkeys(cid_key(c) for c in cids))

        def run(conn: sqlite3.Connection) -> list[StoredRecord]:
            found: dict[bytes, StoredRecord] = {}
            for i in range(0, len(wanted), _GET_MANY_CHUNK):
                chunk = wanted[i : i + _GET_MANY_CHUNK]
                marks = ",".join("?" * len(chunk))
                sql = f"{_SELECT} WHERE cid IN ({marks})"
                for row in conn.execute(sql, chunk):
                    rec = StoredRecord(*row)
                    found[rec.cid] = rec
            return [found[c] for c in wanted if c in found]

        if not wanted:
            self._check_open()
            await anyio.lowlevel.checkpoint()
            return []
        return await self._read(run, "read records")

    async def changes(
        self,
        since_seq: int,
        limit: int,
        filter: ChangeFilter | None = None,
        *,
        max_bytes: int | None = None,
    ) -> ChangesPage:
        """See :meth:`fedpeer.store.Store.changes`."""
        check_changes_args(since_seq, limit, max_bytes)
        window = self.scan_window
        page = await self._read(
            lambda conn: _changes(conn, since_seq, limit, filter, window, max_bytes),
            "scan changes",
        )
        # a reader may see a commit before the writer task has announced it; keep
        # head_seq() >= every seq ever handed out (the announcement does the waking)
        self._watch.observe(page.head_seq)
        return page

    async def head_seq(self) -> int:
        """See :meth:`fedpeer.store.Store.head_seq` (no I/O: the last committed seq)."""
        self._check_open()
        await anyio.lowlevel.checkpoint()
        self._check_open()
        return self._watch.head

    async def cid_at(self, seq: int) -> bytes | None:
        """See :meth:`fedpeer.store.Store.cid_at` (a primary-key lookup)."""
        if seq < 1:
            self._check_open()
            await anyio.lowlevel.checkpoint()
            return None
        return await self._read(lambda conn: _cid_at(conn, seq), "read a record id")

    async def wait_for_seq(
        self, after_seq: int, interest: Sequence[ChangeFilter] | None = None
    ) -> int:
        """See :meth:`fedpeer.store.Store.wait_for_seq`."""
        self._check_open()
        return await self._watch.wait_above(after_seq, interest)

    async def count(self) -> int:
        """See :meth:`fedpeer.store.Store.count`. ``count(*)`` scans an index, and
        records are only ever added: the answer is kept until the head moves, then
        only the rows past it are counted (the public ``/health`` asks for it on
        every call)."""
        head = self._watch.head
        if self._count_at is not None and self._count_at[0] == head:
            self._check_open()
            await anyio.lowlevel.checkpoint()
            return self._count_at[1]
        # only the rows past the last count: O(new rows), not O(store) for every
        # anonymous /health on a node that is taking records in; bounded by the
        # head read above (rows up to it are committed), so none counts twice
        since, before = self._count_at or (0, 0)
        count = before + await self._read(
            lambda conn: _int(
                _scalar(
                    conn, "SELECT count(*) FROM records WHERE seq > ? AND seq <= ?", (since, head)
                )
            ),
            "count records",
        )
        self._count_at = (head, count)
        return count

    async def threads(
        self,
        namespace_prefix: str | None = None,
        *,
        after: tuple[str, str] | None = None,
        limit: int | None = None,
        thread: str | None = None,
        namespace_exact: bool = False,
    ) -> list[ThreadInfo]:
        """See :meth:`fedpeer.store.Store.threads` (a walk of the (namespace,
        thread) index, grouped as it goes: a page stops after ``limit`` groups)."""
        check_threads_args(limit)

        def run(conn: sqlite3.Connection) -> list[ThreadInfo]:
            clauses: list[str] = []
            params: list[object] = []
            if thread is not None:
                clauses.append("thread = ?")
                params.append(thread)
            if namespace_exact:
                clauses.append("namespace = ?")
                params.append(namespace_prefix or "")
            elif namespace_prefix:
                clauses.append("namespace >= ?")
                params.append(namespace_prefix)
                upper = prefix_upper_bound(namespace_prefix)
                if upper is not None:
                    clauses.append("namespace < ?")
                    params.append(upper)
            if after is not None:
                clauses.append("(namespace, thread) > (?, ?)")
                params.extend(after)
            sql = "SELECT namespace, thread, count(*), max(seq) FROM records"
            if clauses:
                sql += " WHERE " + " AND ".join(clauses)
            sql += " GROUP BY namespace, thread ORDER BY namespace, thread"
            if limit is not None:
                sql += " LIMIT ?"
                params.append(limit)
            return [ThreadInfo(*row) for row in conn.execute(sql, params)]

        return await self._read(run, "list threads")

    # --- state area -------------------------------------------------------

    async def transact(self, fn: Callable[[StateTx], T]) -> T:
        """See :meth:`fedpeer.store.Store.transact` (``fn`` runs on the writer thread)."""
        self._check_open()
        async with self._write_lock:
            self._check_open()
            try:
                result, new_head, touched, wake_all = await anyio.to_thread.run_sync(
                    self._write_in_thread, fn
                )
            except StoreFull as exc:
                self._note_full(exc)
                raise
            if self._full_since is not None:
                self._note_space_back()
            self._watch.advance(new_head, touched)
            if wake_all:
                self._watch.wake_all()
        return result

    def _note_full(self, exc: StoreFull) -> None:
        """Log a write that failed for lack of space: at once the first time, then
        at most once a minute while the disk stays full (no log flood)."""
        now = time.monotonic()
        if self._full_since is None:
            self._full_since = now
        elif now - self._full_logged < _FULL_LOG_EVERY_S:
            return
        self._full_logged = now
        log.error("STORE_FULL: writes to %s fail: %s", self.path, exc.message)

    def _note_space_back(self) -> None:
        assert self._full_since is not None
        down = time.monotonic() - self._full_since
        self._full_since = None
        log.warning("store %s: writes work again (the disk was full for %.0f s)", self.path, down)

    async def get_state(self, table: str, key: str) -> JsonDict | None:
        """See :meth:`fedpeer.store.Store.get_state`."""
        check_name("table", table)
        check_name("key", key)

        def run(conn: sqlite3.Connection) -> JsonDict | None:
            text = _scalar(conn, "SELECT value FROM state WHERE tbl = ? AND key = ?", (table, key))
            return None if text is None else load_json(str(text))

        return await self._read(run, "read state")

    async def list_state(self, table: str, prefix: str = "") -> list[tuple[str, JsonDict]]:
        """See :meth:`fedpeer.store.Store.list_state`."""
        return await self._read(lambda conn: _list_state(conn, table, prefix), "list state")

    async def audit_log(self, since_id: int = 0, limit: int = 100) -> list[AuditEntry]:
        """See :meth:`fedpeer.store.Store.audit_log`."""

        def run(conn: sqlite3.Connection) -> list[AuditEntry]:
            rows = conn.execute(
                "SELECT id, ts_ms, event FROM audit WHERE id > ? ORDER BY id LIMIT ?",
                (since_id, max(limit, 0)),
            )
            return [AuditEntry(i, ts, load_json(str(ev))) for i, ts, ev in rows]

        return await self._read(run, "read the audit log")

    # --- lifecycle --------------------------------------------------------

    async def aclose(self) -> None:
        """See :meth:`fedpeer.store.Store.aclose`. Waits for an in-flight write."""
        if self._closed:
            await anyio.lowlevel.checkpoint()
            return
        self._closed = True
        self._watch.close()
        with anyio.CancelScope(shield=True):
            async with self._write_lock:
                idle, self._idle = self._idle, []
                await anyio.to_thread.run_sync(_close_all, [*idle, self._writer])

    async def __aenter__(self) -> SQLiteStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def backup(self, dest: str | os.PathLike[str], *, overwrite: bool = False) -> int:
        """Copy the store, consistent, to ``dest`` while it keeps serving; return the
        number of records in the copy. See :func:`backup_sqlite`."""
        self._check_open()
        return await anyio.to_thread.run_sync(
            functools.partial(backup_sqlite, self.path, dest, overwrite=overwrite)
        )

    async def integrity_check(self) -> str:
        """``PRAGMA integrity_check`` of the file: ``"ok"`` or SQLite's list of problems.

        Reads the whole file (slow on big stores); for tests and operators.
        """

        def run(conn: sqlite3.Connection) -> str:
            return "\n".join(str(row[0]) for row in conn.execute("PRAGMA integrity_check"))

        return await self._read(run, "check integrity")


def backup_sqlite(
    source: str | os.PathLike[str], dest: str | os.PathLike[str], *, overwrite: bool = False
) -> int:
    """Copy the SQLite store at ``source`` to ``dest`` with SQLite's online backup
    API; return the number of records in the copy. Blocking (run it on a thread).

    Safe while a node serves the store (in this or another process): the copy is
    one read snapshot, so it holds every transaction committed before it started
    and nothing of one committed during it, WAL content included (copying the
    file alone misses what is still in ``store.sqlite3-wal``). The copy is a
    single self-contained file (rollback journal, no ``-wal``), mode 0600, checked
    with ``PRAGMA integrity_check``, fsynced, and moved into place only when
    complete: ``dest`` is never left half-written. Open it with
    :meth:`SQLiteStore.open`, or put it in place of ``store.sqlite3`` (node
    stopped) to restore.

    Raises StoreError naming the problem: no store at ``source`` (start the node
    once), ``dest`` exists (``overwrite``), the copy cannot be written or does not
    check out; StoreFull when the disk is full.
    """
    src_path = Path(source)
    dst_path = Path(dest)
    if not src_path.is_file():
        raise StoreError(f"no store at {src_path}: start the node once, or check --data-dir")
    exists = StoreError(f"{dst_path} exists; pick another file name or overwrite it (--force)")
    if dst_path.exists() and not overwrite:
        raise exists
    if dst_path.resolve() == src_path.resolve():
        raise StoreError("the backup must go to another file than the store itself")
    tmp = dst_path.with_name(f".{dst_path.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        src = sqlite3.connect(_read_only_uri(src_path), uri=True, timeout=_BUSY_TIMEOUT_S)
        try:
            dst = sqlite3.connect(tmp, isolation_level=None)
            try:
                src.backup(dst)  # all pages in one step: one read snapshot
                dst.execute("PRAGMA journal_mode=DELETE")
                check = "\n".join(str(r[0]) for r in dst.execute("PRAGMA integrity_check"))
                if check != "ok":
                    raise StoreError(f"the backup copy does not check out: {check[:200]}")
                count = _int(_scalar(dst, "SELECT count(*) FROM records"))
            finally:
                dst.close()
        finally:
            src.close()
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        # without overwrite, a dest made while we copied is not replaced either
        place(tmp, dst_path, replace=overwrite)
        return count
    except sqlite3.Error as exc:
        raise _map_error(exc, f"back up {src_path} to {dst_path}", dst_path) from exc
    except TargetExists:  # made while we copied
        raise exists from None
    except FileExistsError as exc:  # our own temp name (a clash)
        raise StoreError(f"cannot write the backup {dst_path}: {exc}; try again") from exc
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise _full(f"write the backup {dst_path}", exc) from exc
        raise StoreError(
            f"cannot write the backup {dst_path}: {exc.strerror or exc}; pick a directory "
            "that exists and that you can write to"
        ) from exc
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
