"""The pull machine: one pair's pull sync as a sans-I/O state machine (h11-shaped).

Theory of operation
-------------------
A :class:`PullMachine` holds one :class:`~fedpeer.sync.pairs.Pair` and decides,
without doing any I/O, what to ask the source next and what to do with the
answer. A driver (a task per pair, ``sync/_puller.py``) does the I/O::

    m = PullMachine(pair)
    while True:
        req = m.next_request()                  # PageRequest, or None: look at m.state
        if req is None:
            ...  # BACKING_OFF: sleep m.retry_delay_s (a kick may cut it short), then
                 #   m.backoff_elapsed(); PAUSED/STOPPED: wait for resume; DELETED: exit
            continue
        try:
            body = await client.changes(req)     # the decoded page dict
        except FedpeerError as err:              # PeerUnreachable, 5xx, 401, 429, CURSOR_RESET..
            ev = m.receive_error(err)            # RetryScheduled | PairStopped | CursorWasReset
            await persist(ev.pair)
            continue
        ev = m.receive_page(body)                # PageAccepted | PageRejected
        if isinstance(ev, PageRejected):
            await persist(ev.pair)
            continue
        try:                                     # ONE transaction: records + cursor
            await store.transact(lambda tx: (tx.put_records(ev.new_records),
                                             tx.put("pairs", ev.pair.id, ev.pair.to_dict())))
        except Exception as err:
            ev2 = m.commit_failed(err)           # cursor NOT advanced; retry with backoff
            await persist(ev2.pair)
        else:
            if (ev2 := m.commit_done()) is not None:
                await persist(ev2.pair)          # a user action arrived during the commit

Rules for the driver: persist the ``pair`` of every event you get (remove the row
when its state is ``deleted``); persist a :class:`PageAccepted`'s pair only in the
same transaction as its records; run that transaction shielded from cancellation,
and if the node itself is shutting down mid-commit just drop the machine (the
stored row is the truth on restart). Never feed the answer of an abandoned
request back (after ``pause``/``kick``/``delete``/``set_credential`` while
AWAITING_PAGE): cancel the request. All calls come from one event loop thread; the
machine itself is not thread-safe.

Why the cursor is safe (PouchDB once wrote its checkpoint ahead of the data): the
machine advances its cursor only in :meth:`PullMachine.commit_done`, after the
driver's transaction holding both the records and the new cursor committed. A
crash before the commit loses nothing (the old cursor is stored; the page is
fetched again); a crash after it duplicates nothing (the new cursor is stored;
and ``put`` is idempotent by CID anyway). Snapshots the driver persists outside
a page transaction always carry the last *committed* cursor, so they can move the
stored cursor back (harmless: refetch, dedupe) but never ahead of the data.

Every page is checked whole before anything is handed out: its shape
(:func:`~fedpeer.sync.feed.page_from_wire`), its ``next_cursor`` (decodes; same
epoch as the previous cursor unless the machine just reset; never behind it; must
move when the page has records or says ``has_more``, so a broken source cannot
spin us), at most ``limit`` records, each record through the one verification
pipeline (:func:`~fedpeer.sync.records.record_from_wire`: canonical bytes, CID,
signature, limits), inside the pair's filter, no CID twice in a page, and each
author in the pair's allow-list if it has one. Any failure rejects the whole
page: nothing to store, cursor unmoved, pair ``failing`` with the error's code,
retried after a backoff.

Errors from the request (:meth:`PullMachine.receive_error`) are sorted so:

* 401/403 (``AuthRequired``, ``TokenInvalid``, ``TokenExpired``,
  ``ScopeForbidden``, ``ConsentDenied``, or any error with such a status) stop
  the pair: retrying cannot help, the credential must change. ``last_error``
  says which credential and what to do.
* ``CURSOR_RESET``, ``CURSOR_FROM_FUTURE``, ``CURSOR_INVALID`` from the source
  (its store was wiped, replaced or restored) drop the cursor and start a full
  pull (records dedupe by CID in the store). The :class:`CursorWasReset` event
  is the driver's cue to log it. The same error for a request *without* a
  cursor cannot be fixed by resetting again and counts as a failure.
* everything else (``PeerUnreachable``, 5xx, 429 with its ``retry_after``,
  other 4xx) marks the pair failing and backs off (:mod:`._backoff`).

User actions (:meth:`pause`, :meth:`resume`, :meth:`kick`, :meth:`delete`,
:meth:`set_credential`) go through the machine so its state and the pair's stay
one. In AWAITING_PAGE they abandon the request in flight (the driver cancels it;
its answer must not be fed back). In AWAITING_COMMIT they are *deferred*: the
method returns ``None`` and the change comes out of :meth:`commit_done` /
:meth:`commit_failed`, so a pause can neither be overwritten by the page
transaction nor be written with a cursor ahead of the data.

The machine states and their inputs sit in :data:`MACHINE_TRANSITIONS`. A driver
calling a method its state does not accept gets :class:`PullMachineError` (a
``RuntimeError``: a bug in the driver, never rendered over HTTP, like h11's
``LocalProtocolError``). A user action the *pair* table refuses raises
``PairStateInvalid`` (PAIR_STATE_INVALID, 409), which the API shows.

Allow-list choice: a record whose author is not in the pair's allow-list is
``RECORD_INVALID`` (the page is refused and retried like any bad record). Not
``CONSENT_DENIED``: that is a 403, which here means "the source refused our
credential" and stops the pair.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Mapping
from typing import Literal

import attrs

from .._clock import now_ms as _clock_ms
from ..errors import (
    AuthRequired,
    ConsentDenied,
    CursorFromFuture,
    CursorInvalid,
    CursorReset,
    DidMismatch,
    FedpeerError,
    PageInvalid,
    PairStateInvalid,
    QuotaExceeded,
    RateLimited,
    RecordInvalid,
    ScopeForbidden,
    StoreError,
    TlsPinMismatch,
    TokenExpired,
)
from ..store.base import NewRecord
from .backoff import DEFAULT_BACKOFF, Backoff
from .feed import Cursor, page_from_wire
from .pairs import LastError, Pair, PairAction, PairState
from .records import DEFAULT_LIMITS, Limits, SignedRecord, record_from_wire

__all__ = [
    "MACHINE_TRANSITIONS",
    "CursorWasReset",
    "MachineState",
    "PageAccepted",
    "PageRejected",
    "PageRequest",
    "PairChanged",
    "PairStopped",
    "PullMachine",
    "PullMachineError",
    "RetryScheduled",
]

MAX_PAGE_LIMIT = 10_000

FeedMode = Literal["normal", "longpoll"]


class PullMachineError(RuntimeError):
    """The driver called a :class:`PullMachine` method its state does not accept.

    A programming error in the driver (not a peer's fault, not shown over HTTP).
    """


class MachineState(enum.Enum):
    """Where a :class:`PullMachine` is in its request/commit cycle."""

    IDLE = "idle"  # ready: next_request() gives the next PageRequest
    AWAITING_PAGE = "awaiting_page"  # a request is out: receive_page / receive_error
    AWAITING_COMMIT = "awaiting_commit"  # a page was accepted: commit_done / commit_failed
    BACKING_OFF = "backing_off"  # failing: wait retry_delay_s, then backoff_elapsed()
    PAUSED = "paused"  # the user paused the pair: wait for resume()
    STOPPED = "stopped"  # 401/403: wait for a new credential and resume()
    DELETED = "deleted"  # terminal: the driver removes the pair and exits


class _In(enum.Enum):
    REQUEST = "next_request"
    PAGE_OK = "receive_page (accepted)"
    PAGE_BAD = "receive_page (rejected)"
    PAGE_MORE = "receive_next_page"
    ERROR_RETRY = "receive_error (retry)"
    ERROR_STOP = "receive_error (stop)"
    ERROR_RESET = "receive_error (cursor reset)"
    COMMIT_OK = "commit_done"
    COMMIT_FAIL = "commit_failed"
    COMMIT_STOP = "commit_failed (stop)"
    BACKOFF_ELAPSED = "backoff_elapsed"
    PAUSE = "pause"
    RESUME = "resume"
    KICK = "kick"
    DELETE = "delete"
    CREDENTIAL = "set_credential"


_M = MachineState
_USER = {_In.PAUSE: _M.PAUSED, _In.KICK: _M.IDLE, _In.DELETE: _M.DELETED}

MACHINE_TRANSITIONS: Mapping[MachineState, Mapping[_In, MachineState]] = {
    _M.IDLE: {_In.REQUEST: _M.AWAITING_PAGE, _In.CREDENTIAL: _M.IDLE, **_USER},
    _M.AWAITING_PAGE: {
        _In.PAGE_OK: _M.AWAITING_COMMIT,
        _In.PAGE_BAD: _M.BACKING_OFF,
        _In.ERROR_RETRY: _M.BACKING_OFF,
        _In.ERROR_STOP: _M.STOPPED,
        _In.ERROR_RESET: _M.IDLE,
        # a user action abandons the request in flight
        _In.CREDENTIAL: _M.IDLE,
        **_USER,
    },
    # user actions here are deferred until the commit's outcome is known
    _M.AWAITING_COMMIT: {
        _In.COMMIT_OK: _M.IDLE,
        _In.COMMIT_FAIL: _M.BACKING_OFF,
        _In.COMMIT_STOP: _M.STOPPED,
        _In.PAGE_MORE: _M.AWAITING_COMMIT,
    },
    _M.BACKING_OFF: {_In.BACKOFF_ELAPSED: _M.IDLE, _In.CREDENTIAL: _M.BACKING_OFF, **_USER},
    _M.PAUSED: {_In.RESUME: _M.IDLE, _In.DELETE: _M.DELETED, _In.CREDENTIAL: _M.PAUSED},
    _M.STOPPED: {_In.RESUME: _M.IDLE, _In.DELETE: _M.DELETED, _In.CREDENTIAL: _M.STOPPED},
    _M.DELETED: {},
}
"""machine state -> input -> next machine state (inputs are the method calls and,
for receive_page/receive_error, their outcome). Anything missing raises
PullMachineError (or, for user actions, PairStateInvalid)."""

_USER_ACTION_INPUT = {
    PairAction.PAUSE: _In.PAUSE,
    PairAction.RESUME: _In.RESUME,
    PairAction.KICK: _In.KICK,
    PairAction.DELETE: _In.DELETE,
}

# --- events ----------------------------------------------------------------------------


@attrs.frozen
class PageRequest:
    """What to ask the source: ``GET {peer_url}/v1/sync/changes?{params()}``.

    ``since`` is the cursor to send (``None``: from the beginning), ``feed``
    ``"normal"`` while behind and ``"longpoll"`` once caught up (the source then
    holds the request up to 30 s for new records).
    """

    since: str | None
    limit: int
    feed: FeedMode
    namespace: str | None
    thread: str | None

    def params(self) -> dict[str, str]:
        """The query parameters (absent ones left out)."""
        out = {"limit": str(self.limit), "feed": self.feed}
        if self.since is not None:
            out["since"] = self.since
        if self.namespace is not None:
            out["namespace"] = self.namespace
        if self.thread is not None:
            out["thread"] = self.thread
        return out


@attrs.frozen
class PageAccepted:
    """A page passed every check. Store ``new_records`` and ``pair.to_dict()`` in ONE
    transaction, then call ``commit_done()`` (or ``commit_failed(err)``).

    ``records`` are the verified records in feed order; ``cursor`` the page's
    ``next_cursor``; ``pair`` the snapshot to store with them (new cursor, state
    ``running`` or ``caught_up``, updated stats). After
    :meth:`PullMachine.receive_next_page` folded more pages in, ``records`` hold
    every folded page's records, ``cursor`` and ``has_more`` are the last page's,
    and ``page_sizes`` the record count of each page (one entry per page).
    """

    records: tuple[SignedRecord, ...]
    cursor: str
    has_more: bool
    pair: Pair
    pages: tuple[int, ...] = ()

    @property
    def page_sizes(self) -> tuple[int, ...]:
        """Records per page in this commit, in feed order (one entry for one page)."""
        return self.pages or (len(self.records),)

    @property
    def new_records(self) -> tuple[NewRecord, ...]:
        """The records as ``Store.put`` / ``StateTx.put_records`` take them."""
        return tuple(r.to_new() for r in self.records)

    @property
    def caught_up(self) -> bool:
        """True when the source said there is nothing more (next request: longpoll)."""
        return not self.has_more


@attrs.frozen(eq=False)
class PageRejected:
    """The page broke a rule; nothing is to be stored and the cursor did not move.

    ``error`` says why (``code`` e.g. BAD_SIGNATURE, NON_CANONICAL, RECORD_INVALID,
    RECORD_FROM_FUTURE, PAGE_INVALID). Persist ``pair`` (state ``failing``), wait
    ``delay_s``, then call ``backoff_elapsed()``.
    """

    error: FedpeerError
    delay_s: float
    pair: Pair

    @property
    def code(self) -> str:
        """The error's machine code."""
        return self.error.code


@attrs.frozen(eq=False)
class RetryScheduled:
    """A request or a commit failed; persist ``pair`` (``failing``), wait ``delay_s``
    (it honours a 429's Retry-After), then call ``backoff_elapsed()``."""

    error: FedpeerError
    delay_s: float
    pair: Pair

    @property
    def code(self) -> str:
        """The error's machine code."""
        return self.error.code


@attrs.frozen(eq=False)
class PairStopped:
    """The source refused the credential (401/403), or the pair may store no more
    (QUOTA_EXCEEDED, from :meth:`PullMachine.commit_failed`). Persist ``pair``
    (``stopped``, ``last_error`` naming what to fix); nothing happens until a
    resume."""

    error: FedpeerError
    pair: Pair


@attrs.frozen(eq=False)
class CursorWasReset:
    """The source no longer knows our cursor (its store was wiped, replaced or
    restored). The cursor is dropped and the next request pulls everything again
    (the store dedupes by CID). Log it; persist ``pair`` (cursor ``None``)."""

    previous_cursor: str
    error: FedpeerError
    pair: Pair


@attrs.frozen
class PairChanged:
    """A user action (or one deferred during a commit) changed the pair: persist
    ``pair`` (remove the row when its state is ``deleted``)."""

    pair: Pair
    actions: tuple[str, ...]


# --- the machine ----------------------------------------------------------------------


_now = _clock_ms  # the one clock helper


# DID_MISMATCH / TLS_PIN_MISMATCH: another node holds the peer's address (or the
# peer changed identity); retrying would not help and the credential must not go there.
_STOP_CLASSES = (AuthRequired, ScopeForbidden, ConsentDenied, DidMismatch, TlsPinMismatch)
_RESET_CLASSES = (CursorReset, CursorFromFuture, CursorInvalid)
_RESET_WINDOW_MS = 600_000  # a cursor reset within this of the last one backs off


@attrs.frozen
class _Deferred:
    action: PairAction | None  # None: set_credential
    credential: str | None = attrs.field(default=None, repr=False)


class PullMachine:
    """The pull state machine of one pair (see the module docstring).

    ``pair`` is the stored pair; the machine starts in IDLE (running or
    caught_up), BACKING_OFF (failing: the first retry waits per ``pair.retries``),
    PAUSED or STOPPED. ``limits`` are the record limits to verify with;
    ``backoff`` the retry policy; ``rng`` its randomness (inject a seeded
    ``random.Random`` for deterministic tests); ``page_limit`` the ``limit``
    asked for (1..10000). Not thread-safe; one task owns it. Raises
    ``PullMachineError`` for a deleted pair, ``ValueError`` for a bad page_limit.
    """

    __slots__ = (
        "_backoff",
        "_cursor",
        "_deferred",
        "_last_reset_ms",
        "_limits",
        "_page_limit",
        "_pair",
        "_pending",
        "_request",
        "_reset_streak",
        "_retry_delay_s",
        "_rng",
        "_state",
    )

    def __init__(
        self,
        pair: Pair,
        *,
        limits: Limits = DEFAULT_LIMITS,
        backoff: Backoff = DEFAULT_BACKOFF,
        rng: random.Random | None = None,
        page_limit: int = 1000,
    ) -> None:
        if not isinstance(page_limit, int) or not 1 <= page_limit <= MAX_PAGE_LIMIT:
            raise ValueError(f"page_limit must be in 1..{MAX_PAGE_LIMIT}, got {page_limit!r}")
        self._limits = limits
        self._backoff = backoff
        self._rng = rng if rng is not None else random.Random()  # noqa: S311 - jitter only
        self._page_limit = page_limit
        self._pair = pair
        self._cursor: Cursor | None = Cursor.decode(pair.cursor) if pair.cursor else None
        self._pending: PageAccepted | None = None
        self._deferred: list[_Deferred] = []
        self._request: PageRequest | None = None
        self._retry_delay_s: float | None = None
        self._last_reset_ms: int | None = None  # the last cursor reset (see receive_error)
        self._reset_streak = 0  # resets each within _RESET_WINDOW_MS of the one before
        if pair.state is PairState.DELETED:
            raise PullMachineError(f"pair {pair.id} is deleted; there is nothing to run")
        if pair.state is PairState.PAUSED:
            self._state = _M.PAUSED
        elif pair.state is PairState.STOPPED:
            self._state = _M.STOPPED
        elif pair.state is PairState.FAILING:
            self._state = _M.BACKING_OFF
            self._retry_delay_s = self._delay(retry_after=None)
        else:
            self._state = _M.IDLE

    # --- read-only views ---

    @property
    def state(self) -> MachineState:
        """The machine state (what the driver should do next)."""
        return self._state

    @property
    def pair(self) -> Pair:
        """The pair as last committed or changed (its cursor is the committed one)."""
        return self._pair

    @property
    def cursor(self) -> str | None:
        """The committed cursor (what the next request sends as ``since``)."""
        return self._pair.cursor

    @property
    def retry_delay_s(self) -> float | None:
        """In BACKING_OFF: seconds to wait before ``backoff_elapsed()``; else None."""
        return self._retry_delay_s if self._state is _M.BACKING_OFF else None

    @property
    def request(self) -> PageRequest | None:
        """The request in flight (AWAITING_PAGE), else None."""
        return self._request if self._state is _M.AWAITING_PAGE else None

    # --- the request cycle ---

    def next_request(self) -> PageRequest | None:
        """The next page to fetch, moving IDLE -> AWAITING_PAGE.

        ``None`` in BACKING_OFF, PAUSED, STOPPED and DELETED (look at :attr:`state`
        to know what to wait for). Raises ``PullMachineError`` in AWAITING_PAGE or
        AWAITING_COMMIT (finish the current step first).
        """
        if self._state in (_M.BACKING_OFF, _M.PAUSED, _M.STOPPED, _M.DELETED):
            return None
        self._advance(_In.REQUEST)
        flt = self._pair.filter
        self._request = PageRequest(
            since=self._pair.cursor,
            limit=self._page_limit,
            feed="longpoll" if self._pair.state is PairState.CAUGHT_UP else "normal",
            namespace=flt.namespace,
            thread=flt.thread,
        )
        return self._request

    def receive_page(
        self, obj: object, *, now_ms: int | None = None
    ) -> PageAccepted | PageRejected:
        """Check a decoded page (DAG-CBOR or DAG-JSON) from the source.

        Every check in the module docstring runs before anything is returned; the
        records' ``ts`` are checked against ``now_ms`` (None: the wall clock),
        which also stamps the stats. Accepted: AWAITING_COMMIT, returns
        :class:`PageAccepted`. Any failure: BACKING_OFF, returns
        :class:`PageRejected` (the cursor never moves). Raises only
        ``PullMachineError`` (not AWAITING_PAGE). Pure CPU: one Ed25519 verify
        per record.
        """
        self._require(_In.PAGE_OK)
        now = _now(now_ms)
        try:
            records, next_cursor, has_more = self._check_page(obj, now, self._cursor)
        except FedpeerError as err:
            return self._reject(err, now)
        except (ValueError, TypeError, KeyError, IndexError, RecursionError, OverflowError) as exc:
            # untrusted input must never crash the puller; report it as a bad page
            bad = PageInvalid(
                f"the page could not be checked ({type(exc).__name__}): the peer sent something "
                "that is not a fedpeer page; the pair retries with backoff"
            )
            return self._reject(bad, now)
        new_pair = self._after_page(self._pair, records, next_cursor, has_more, now)
        self._advance(_In.PAGE_OK)
        self._pending = PageAccepted(
            records=records, cursor=new_pair.cursor or "", has_more=has_more, pair=new_pair
        )
        self._request = None
        return self._pending

    def receive_next_page(
        self, request: PageRequest, obj: object, *, now_ms: int | None = None
    ) -> PageAccepted | None:
        """Fold the page that follows the pending one into the same commit.

        For a driver that fetched ahead: ``obj`` is the answer to ``request``,
        which must be exactly the request this machine would make once the
        pending page commits (``since`` = its cursor, ``normal`` feed because it
        said ``has_more``, same limit and filter). The page gets every check
        :meth:`receive_page` makes, against the pending cursor. Accepted: returns
        the new :class:`PageAccepted` holding the pending records *and* this
        page's, with this page's cursor and stats: store that one instead (the
        machine stays in AWAITING_COMMIT; the cursor still moves only in
        :meth:`commit_done`, so a crash or a failed commit loses nothing and
        never leaves the cursor past an uncommitted record). Anything else (a
        bad page, another request, a user action waiting for the commit, the
        pending page caught up) returns ``None`` and changes nothing: commit the
        pending page, then feed this answer through :meth:`receive_page` as
        usual, which names the error of a bad page. Raises only
        ``PullMachineError`` (not AWAITING_COMMIT).
        """
        self._require(_In.PAGE_MORE)
        pending = self._pending
        assert pending is not None
        if self._deferred or not pending.has_more:
            return None
        flt = self._pair.filter
        expected = PageRequest(
            since=pending.cursor,
            limit=self._page_limit,
            feed="normal",
            namespace=flt.namespace,
            thread=flt.thread,
        )
        if request != expected:
            return None
        now = _now(now_ms)
        try:
            old = Cursor.decode(pending.cursor)
            records, next_cursor, has_more = self._check_page(obj, now, old)
        except (
            FedpeerError,
            ValueError,
            TypeError,
            KeyError,
            IndexError,
            RecursionError,
            OverflowError,
        ):
            return None  # the page is fed through receive_page after the commit
        new_pair = self._after_page(pending.pair, records, next_cursor, has_more, now)
        self._advance(_In.PAGE_MORE)
        self._pending = PageAccepted(
            records=pending.records + records,
            cursor=new_pair.cursor or "",
            has_more=has_more,
            pair=new_pair,
            pages=(*pending.page_sizes, len(records)),
        )
        return self._pending

    @staticmethod
    def _after_page(
        pair: Pair,
        records: tuple[SignedRecord, ...],
        next_cursor: Cursor,
        has_more: bool,
        now: int,
    ) -> Pair:
        """``pair`` once a checked page is in: state, cursor and stats moved on."""
        action = PairAction.PROGRESS if has_more else PairAction.CATCH_UP
        stats = pair.stats.with_page(
            records=len(records),
            nbytes=sum(len(r.data) for r in records),
            latencies_ms=[now - r.record.ts for r in records],
            now_ms=now,
        )
        return attrs.evolve(
            pair.apply(action, now_ms=now), cursor=next_cursor.encode(), stats=stats
        )

    def receive_error(
        self, err: FedpeerError, *, now_ms: int | None = None, retry_after: float | None = None
    ) -> RetryScheduled | PairStopped | CursorWasReset:
        """The request failed with ``err`` (as the client raised it).

        401/403 -> STOPPED, :class:`PairStopped`; CURSOR_RESET /
        CURSOR_FROM_FUTURE / CURSOR_INVALID for a request with a cursor -> IDLE
        with the cursor dropped, :class:`CursorWasReset` (but a reset within
        ``_RESET_WINDOW_MS`` of the last one drops the cursor and backs off,
        :class:`RetryScheduled`, longer with each: a source cannot make the
        puller loop by answering a page, then a reset); anything else ->
        BACKING_OFF, :class:`RetryScheduled`, whose delay is at least
        ``retry_after`` (default: ``err.retry_after`` of a ``RateLimited``).
        Raises only ``PullMachineError`` (not AWAITING_PAGE).
        """
        self._require(_In.ERROR_RETRY)
        now = _now(now_ms)
        since = self._request.since if self._request is not None else None
        self._request = None
        if isinstance(err, _STOP_CLASSES) or err.http_status in (401, 403):
            message = self._credential_message(err)
            last = LastError.from_error(err, at_ms=now, message=message)
            self._pair = self._pair.apply(PairAction.STOP, now_ms=now, error=last)
            self._advance(_In.ERROR_STOP)
            return PairStopped(error=err, pair=self._pair)
        if isinstance(err, _RESET_CLASSES) and since is not None:
            self._cursor = None
            recent = (
                self._last_reset_ms is not None and now - self._last_reset_ms < _RESET_WINDOW_MS
            )
            self._last_reset_ms = now
            if recent:
                # Another reset soon after the last: a source that keeps forgetting
                # our cursor (or a hostile one serving a page, then a reset) would
                # otherwise loop without pause. Pull from scratch after a backoff
                # that grows with every such reset.
                self._reset_streak += 1
                self._pair = self._pair.apply(PairAction.RESET, now_ms=now)
                delay = self._fail(err, now, retry_after=None, attempt=self._reset_streak - 1)
                self._advance(_In.ERROR_RETRY)
                return RetryScheduled(error=err, delay_s=delay, pair=self._pair)
            self._reset_streak = 0
            self._pair = self._pair.apply(PairAction.RESET, now_ms=now)
            self._advance(_In.ERROR_RESET)
            return CursorWasReset(previous_cursor=since, error=err, pair=self._pair)
        if retry_after is None and isinstance(err, RateLimited):
            retry_after = err.retry_after
        delay = self._fail(err, now, retry_after=retry_after)
        self._advance(_In.ERROR_RETRY)
        return RetryScheduled(error=err, delay_s=delay, pair=self._pair)

    def commit_done(self, *, now_ms: int | None = None) -> PairChanged | None:
        """The driver's transaction with the accepted page committed.

        Only now does the machine adopt the page's cursor (AWAITING_COMMIT ->
        IDLE). Returns :class:`PairChanged` when user actions were deferred during
        the commit (persist its pair), else ``None``. Raises ``PullMachineError``
        outside AWAITING_COMMIT.
        """
        self._require(_In.COMMIT_OK)
        pending = self._pending
        assert pending is not None
        self._pending = None
        self._pair = pending.pair
        self._cursor = Cursor.decode(pending.cursor)
        self._advance(_In.COMMIT_OK)
        return self._apply_deferred(_now(now_ms))

    def commit_failed(
        self, err: Exception, *, now_ms: int | None = None
    ) -> RetryScheduled | PairStopped | PairChanged:
        """The driver's transaction failed (nothing of it was stored).

        The page is dropped and the cursor stays where it was: the same page is
        fetched again after the backoff (AWAITING_COMMIT -> BACKING_OFF,
        :class:`RetryScheduled`). ``err`` is kept as ``last_error`` (a
        non-fedpeer exception becomes ``StoreError``). A ``QUOTA_EXCEEDED``
        (the pair may store no more) stops the pair instead (-> STOPPED,
        :class:`PairStopped`): trying again would fail again. If user actions
        were deferred meanwhile they apply now and :class:`PairChanged` is
        returned instead. Raises ``PullMachineError`` outside AWAITING_COMMIT.
        """
        self._require(_In.COMMIT_FAIL)
        now = _now(now_ms)
        self._pending = None
        ferr = (
            err
            if isinstance(err, FedpeerError)
            else StoreError(f"the store could not commit the page ({type(err).__name__}: {err})")
        )
        if isinstance(ferr, QuotaExceeded):
            last = LastError.from_error(ferr, at_ms=now)
            self._pair = self._pair.apply(PairAction.STOP, now_ms=now, error=last)
            self._retry_delay_s = None
            self._advance(_In.COMMIT_STOP)
            changed = self._apply_deferred(now)
            return changed if changed is not None else PairStopped(error=ferr, pair=self._pair)
        delay = self._fail(ferr, now, retry_after=None)
        self._advance(_In.COMMIT_FAIL)
        changed = self._apply_deferred(now)
        if changed is not None:
            return changed
        return RetryScheduled(error=ferr, delay_s=delay, pair=self._pair)

    def backoff_elapsed(self) -> None:
        """The driver waited ``retry_delay_s``: BACKING_OFF -> IDLE (retry the same
        cursor). Raises ``PullMachineError`` in any other state."""
        self._require(_In.BACKOFF_ELAPSED)
        self._retry_delay_s = None
        self._advance(_In.BACKOFF_ELAPSED)

    # --- user actions ---

    def pause(self, *, now_ms: int | None = None) -> PairChanged | None:
        """Pause the pair (running/caught_up/failing -> paused).

        Returns the :class:`PairChanged` to persist, or ``None`` when deferred
        (a commit is in flight). Raises ``PairStateInvalid`` when the pair table
        refuses it.
        """
        return self._user(PairAction.PAUSE, now_ms)

    def resume(self, *, now_ms: int | None = None) -> PairChanged | None:
        """Resume a paused or stopped pair (-> running, retries reset). As :meth:`pause`."""
        return self._user(PairAction.RESUME, now_ms)

    def kick(self, *, now_ms: int | None = None) -> PairChanged | None:
        """Retry now (running/caught_up/failing -> running; backoff reset; a longpoll
        in flight is abandoned for a normal request). As :meth:`pause`."""
        return self._user(PairAction.KICK, now_ms)

    def delete(self, *, now_ms: int | None = None) -> PairChanged | None:
        """Delete the pair (any state -> deleted; the driver removes it and exits).
        As :meth:`pause`."""
        return self._user(PairAction.DELETE, now_ms)

    def set_credential(
        self, credential: str | None, *, now_ms: int | None = None
    ) -> PairChanged | None:
        """Replace the bearer token (state unchanged: a stopped pair still needs a
        resume). A request in flight is abandoned (it used the old token).
        Returns ``None`` when deferred. Raises ``InvalidRequest`` for a bad token
        shape, ``PairStateInvalid`` when deleted.
        """
        if self._state is _M.AWAITING_COMMIT:
            effective = self._effective_pair()
            effective.with_credential(credential)  # validate now, apply later
            self._deferred.append(_Deferred(None, credential))
            return None
        if self._state is _M.DELETED:
            raise PairStateInvalid(f"pair {self._pair.id} was deleted")
        self._pair = self._pair.with_credential(credential, now_ms=_now(now_ms))
        self._request = None
        self._advance(_In.CREDENTIAL)
        return PairChanged(pair=self._pair, actions=("set_credential",))

    # --- internals ---

    def _require(self, inp: _In) -> None:
        if inp not in MACHINE_TRANSITIONS[self._state]:
            raise PullMachineError(
                f"cannot {inp.value.split(' ')[0]}() in state {self._state.name} "
                f"(pair {self._pair.id})"
            )

    def _advance(self, inp: _In) -> None:
        self._require(inp)
        self._state = MACHINE_TRANSITIONS[self._state][inp]

    def _delay(self, retry_after: float | None, attempt: int | None = None) -> float:
        """The backoff before the next try: for the pair's failure count, or for
        ``attempt`` (0-based) when given (a streak counted apart)."""
        if attempt is None:
            attempt = max(0, self._pair.retries - 1)
        return self._backoff.delay(attempt, rng=self._rng, retry_after=retry_after)

    def _fail(
        self,
        err: FedpeerError,
        now: int,
        *,
        retry_after: float | None,
        attempt: int | None = None,
    ) -> float:
        last = LastError.from_error(err, at_ms=now)
        pair = self._pair.apply(PairAction.FAIL, now_ms=now, error=last)
        self._pair = pair
        delay = self._delay(retry_after, attempt)
        self._pair = attrs.evolve(pair, stats=pair.stats.with_backoff(round(delay, 3)))
        self._retry_delay_s = delay
        return delay

    def _reject(self, err: FedpeerError, now: int) -> PageRejected:
        self._request = None
        delay = self._fail(err, now, retry_after=None)
        self._advance(_In.PAGE_BAD)
        return PageRejected(error=err, delay_s=delay, pair=self._pair)

    def _check_page(
        self, obj: object, now: int, old: Cursor | None
    ) -> tuple[tuple[SignedRecord, ...], Cursor, bool]:
        """Every check of a page that follows ``old`` (the cursor it was asked with)."""
        page = page_from_wire(obj)
        try:
            new = Cursor.decode(page.next_cursor)
        except CursorInvalid as exc:
            raise PageInvalid(
                f"the page's next_cursor is not a valid cursor: {exc.message}"
            ) from None
        if old is not None:
            if new.epoch != old.epoch:
                raise PageInvalid(
                    "the page's next_cursor belongs to another store epoch than our cursor, "
                    "without a CURSOR_RESET; the source's store changed under us"
                )
            if new.seq < old.seq:
                raise PageInvalid(
                    f"the page's next_cursor goes backwards (seq {new.seq} < {old.seq})"
                )
        moved = old is None or new.seq > old.seq
        if not moved and page.records:
            raise PageInvalid("the page has records but its next_cursor did not move")
        if not moved and page.has_more:
            raise PageInvalid("the page says has_more but its next_cursor did not move")
        if len(page.records) > self._page_limit:
            raise PageInvalid(
                f"the page has {len(page.records)} records; at most {self._page_limit} were asked"
            )
        flt = self._pair.filter
        allow = self._pair.author_allowlist
        seen: set[bytes] = set()
        out: list[SignedRecord] = []
        for i, item in enumerate(page.records):
            try:
                rec = record_from_wire(item, limits=self._limits, now_ms=now)
            except FedpeerError as exc:
                exc.message = f"record {i} of the page: {exc.message}"
                exc.args = (exc.message,)
                raise
            r = rec.record
            if not flt.matches(r.namespace, r.thread):
                raise PageInvalid(
                    f"record {i} ({rec.cid}) is in {r.namespace}/{r.thread}, outside the "
                    f"pair's filter {flt.to_dict()}"
                )
            if allow is not None and r.author not in allow:
                raise RecordInvalid(
                    f"record {i} ({rec.cid}) is by {r.author}, who is not in pair "
                    f"{self._pair.id}'s author allow-list"
                )
            if rec.cid.raw in seen:
                raise PageInvalid(f"record {i} ({rec.cid}) appears twice in the page")
            seen.add(rec.cid.raw)
            out.append(rec)
        return tuple(out), new, page.has_more

    def _credential_message(self, err: FedpeerError) -> str:
        p = self._pair
        where = f"{p.peer_url} ({p.peer_did})"
        if isinstance(err, (DidMismatch, TlsPinMismatch)):
            return (
                f"pair {p.id} stopped: the node at {p.peer_url} did not prove it is "
                f"{p.peer_did} ({err.code}: {err.message}); the credential was not sent. If the "
                f"peer moved, pair again from a new invite; if it is the right machine, resume "
                f"the pair"
            )
        if p.credential is None:
            what = (
                f"pair {p.id} has no credential and the peer requires one. Get a token "
                f"with the sync:read scope from the peer's owner (or redeem an invite)"
            )
        elif isinstance(err, ScopeForbidden):
            what = (
                f"the credential of pair {p.id} is valid but lacks the sync:read scope. "
                f"Ask the peer's owner for a token with sync:read"
            )
        elif isinstance(err, ConsentDenied):
            what = (
                f"the peer has no grant for {p.local_did} covering filter {p.filter.to_dict()}. "
                f"Ask the peer's owner for a grant (or redeem an invite)"
            )
        elif isinstance(err, TokenExpired):
            what = f"the credential of pair {p.id} has expired. Get a fresh token from the peer"
        else:
            what = (
                f"the peer refused the credential of pair {p.id} (unknown, revoked or "
                f"mistyped). Get a new token from the peer's owner"
            )
        return (
            f"{where} answered {err.code}: {err.message} — {what}, set it on the pair, "
            f"then resume the pair."
        )

    def _effective_pair(self) -> Pair:
        """The pending pair with the deferred actions applied (validation only)."""
        assert self._pending is not None
        pair = self._pending.pair
        for d in self._deferred:
            pair = pair.apply(d.action) if d.action is not None else pair
        return pair

    def _user(self, action: PairAction, now_ms: int | None) -> PairChanged | None:
        now = _now(now_ms)
        if self._state is _M.AWAITING_COMMIT:
            self._effective_pair().apply(action, now_ms=now)  # PairStateInvalid now, not later
            self._deferred.append(_Deferred(action))
            return None
        new_pair = self._pair.apply(action, now_ms=now)
        self._pair = new_pair
        self._enter_for_user(action)
        return PairChanged(pair=new_pair, actions=(action.value,))

    def _enter_for_user(self, action: PairAction) -> None:
        # any request in flight is abandoned; no user action leads to BACKING_OFF
        self._request = None
        self._retry_delay_s = None
        self._advance(_USER_ACTION_INPUT[action])

    def _apply_deferred(self, now: int) -> PairChanged | None:
        if not self._deferred:
            return None
        deferred, self._deferred = self._deferred, []
        names: list[str] = []
        for d in deferred:
            if d.action is None:
                self._pair = self._pair.with_credential(d.credential, now_ms=now)
                names.append("set_credential")
                continue
            try:
                self._pair = self._pair.apply(d.action, now_ms=now)
            except PairStateInvalid:
                # validated against the pending pair; the commit failing made the pair
                # failing instead, from which every user action is still valid — but
                # stay safe: skip an action that no longer applies.
                continue
            self._enter_for_user(d.action)
            names.append(d.action.value)
        if not names:
            return None
        return PairChanged(pair=self._pair, actions=tuple(names))
