"""The pull driver: one task per pair, driving a :class:`PullMachine` (the I/O side).

Theory of operation
-------------------
:class:`Puller` owns one pair's :class:`~fedpeer.sync._machine.PullMachine` and
does what the machine asks: fetch a page from the source (through a
:class:`PageSource`, so this layer never imports ``peer/``), hand the answer to
the machine, and store an accepted page's records *and* the pair's new cursor in
ONE shielded :meth:`Store.transact`. The cursor in the store therefore never
runs ahead of the data (a crash before the commit refetches the page, a crash
after it finds the cursor past the page; records dedupe by CID either way).

One ``anyio.Lock`` per pair serialises everything that talks to the machine: the
driver takes it to ask for a request and to feed an answer in and commit it;
user actions (:meth:`Puller.act`, from API handlers) take it too, so they never
see the machine mid-commit and their persisted row can never be overwritten by
an older snapshot. Network waits and backoff sleeps happen *outside* the lock,
inside a cancel scope that a user action cancels ("poke"): a kick cuts a backoff
short, a pause abandons a longpoll at once, node shutdown cancels everything
(the commit in flight still finishes: it is shielded).

Speed (the hot path while behind):

* **pipelined**: as soon as a page is accepted, the fetch of the next page (the
  request the machine will ask for once the commit is done) starts, so the
  network round trip and the source's work overlap with our commit. If the
  machine then asks for something else (commit failed, user action) the
  speculative fetch is dropped, never fed in.
* **parallel verification**: each fetched page goes through the one pipeline
  in two passes (:func:`~fedpeer.sync.records.prepare_wire_items`): the
  GIL-bound checks (decode, canonical form, shape, CID, author key, limits) for
  the whole page in one worker thread, then the Ed25519 checks, in slices, by
  :func:`~fedpeer.identity.keys.verify_batch` in worker *processes*
  (:class:`_SignatureWorkers`; small slices in a thread). Threads alone do not
  scale here: a thread must take the GIL back after every libsodium call and
  waits for it whenever the event loop or the SQLite thread runs Python, so
  signature threads sat idle more than half the time; a worker process has its
  own GIL. The machine then checks the page (cursor rules, filter, allow-list,
  duplicates) against the pre-verified records instead of verifying each record
  a second time (:class:`_VerifiedMachine`). When pre-verification finds *any*
  problem, the machine's own full check runs instead, so every rejection and
  its error message come from the machine.

Nothing here sleeps to synchronise; all waits are on events, the store, or the
network, and every one of them is cancellable.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from functools import partial

import anyio
import anyio.abc
import attrs

from .. import _ed25519
from .._clock import now_ms as _now_ms
from ..errors import FedpeerError, PageInvalid, PageTooLarge, PeerError, QuotaExceeded
from ..identity.keys import verify_batch
from ..store.base import NewRecord, StateTx, Store
from ._machine import (
    CursorWasReset,
    MachineState,
    PageAccepted,
    PageRejected,
    PageRequest,
    PairStopped,
    PullMachine,
    RetryScheduled,
)
from .backoff import Backoff
from .feed import Cursor, page_from_wire
from .options import Listener, PageSource, SyncEvent, SyncOptions
from .pairs import Pair, PairAction, PairState
from .records import (
    DEFAULT_LIMITS,
    Limits,
    SignedRecord,
    prepare_wire_items,
    verify_wire_items,
)

__all__ = ["Puller", "PullerRetired"]

log = logging.getLogger("fedpeer.sync")

_MIN_PAGE = 100  # records a page at least, whatever the in-flight share (progress first)
# Slow start: a catch-up asks this many records first, then twice as many each page up
# to the page size. The first records land, and the signature workers get work, after
# one small page instead of a full one (0.3-0.6 s at 5000 records).
_FIRST_PAGE = 500
_MIN_CHUNK = 64  # records per verification chunk: below this a thread hop costs more than it saves
_PROCESS_MIN_JOBS = 200  # smaller slices verify in a thread: not worth a worker process
_WORKER_START_TIMEOUT_S = 20.0
_WORKER_BATCH_TIMEOUT_S = 120.0
_WORKER_RETRY_S = 60.0  # after a worker failure: threads for this long (doubling), then processes
_WORKER_RETRY_MAX_S = 3600.0
_WORKER_CODE = "from fedpeer._ed25519 import worker_main; worker_main()"
_LONGPOLL_PACE_S = 1.0  # at most one longpoll a second to a source that does not hold them
QUOTA_TABLE = "pair_quota"
"""State rows ``pair_quota/<pair id>``: ``{records, bytes}`` a pair a redeem set up
has stored (records this node did not have before), for the redeem quota."""
# An empty page with more to come (a scan window that held nothing for us, or a
# source stepping its cursor one by one) moves only the cursor: its commit is
# skipped while the last such commit is younger than this. A restart then pulls
# that second of empty pages again; nothing is lost.
_EMPTY_COMMIT_EVERY_S = 1.0
# The directory holding the fedpeer package, put first on the worker's sys.path so
# it imports this very fedpeer whatever the parent's sys.path tricks were.
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(_ed25519.__file__)))


def _records_that_fit(records: Sequence[SignedRecord], max_bytes: int) -> int:
    """How many records like ``records`` fill 3/4 of a ``max_bytes`` page (at
    least one): their wire bytes (cid, data, sig, and some framing) on average."""
    size = sum(len(r.cid.raw) + len(r.data) + len(r.sig) + 16 for r in records)
    return max(1, max_bytes * 3 // 4 // max(1, size // max(1, len(records))))


# --- signature checks in worker processes ----------------------------------------------


async def _receive_exactly(stream: anyio.abc.ByteReceiveStream, n: int) -> bytes:
    chunks: list[bytes] = []
    while n > 0:
        try:
            chunk = await stream.receive(n)
        except anyio.EndOfStream:
            raise EOFError("the verification worker closed its output") from None
        if not chunk:
            raise EOFError("the verification worker closed its output")
        chunks.append(bytes(chunk))
        n -= len(chunk)
    return b"".join(chunks)


class _SignatureWorkers:
    """Worker processes that run :func:`~fedpeer.identity.keys.verify_batch` for us.

    Why processes: a signature check releases the GIL, but a thread must take
    it back after every check, and while the event loop or another thread runs
    Python it waits up to the interpreter's switch interval for it, so
    signature threads idle exactly when the puller is busiest (measured: the
    threads spent over half their time waiting). A worker process has its own
    GIL. Each is ``python -c`` :func:`fedpeer._ed25519.worker_main` on pipes,
    importing only pynacl and cffi (~15 MB, tens of milliseconds to start); the
    verdicts come from the same :func:`verify_batch` as in-process checks.

    At most ``size`` processes, started on demand, one request at a time each.
    A worker that is cancelled mid-request is killed (its pipe state is
    unknown); one that fails (cannot start, dies, answers garbage or too late)
    is killed, the batch is checked in a worker thread instead, and threads are
    used for a while, 60 s doubling at each failure in a row up to an hour
    (logged; see :attr:`broken`). Correctness never depends on a worker:
    every verdict is a :func:`verify_batch` result. :meth:`aclose` stops them.

    One pool serves every pair of a node (the :class:`~fedpeer.sync.manager.PairManager`
    owns it and closes it when it stops): more processes than cores only add
    switching, and one pool per pair multiplied them by the number of pairs
    catching up. Requests wait for a process in FIFO order (``anyio.Semaphore``),
    so a pair waits at most for the slices queued before its own, never behind
    a busy pair's whole backlog. The processes stop once no pair that used them
    is catching up (:meth:`done_with`) and start again on demand.
    """

    def __init__(
        self, size: int, *, enabled: bool = True, retry_after_s: float = _WORKER_RETRY_S
    ) -> None:
        self._size = size
        self._idle: list[anyio.abc.Process] = []
        self._procs: set[anyio.abc.Process] = set()
        self._slots = anyio.Semaphore(size)
        self._users: set[object] = set()
        self._behind: set[object] = set()  # pullers fetching to catch up (see behind())
        frozen = bool(getattr(sys, "frozen", False))  # sys.executable is not python
        self._off = not enabled or frozen or not sys.executable
        self._retry_after_s = retry_after_s
        self._failures = 0
        self._threads_until = -math.inf  # after a failure: threads until then

    @property
    def broken(self) -> bool:
        """True while processes are off (disabled, or failed recently): threads do
        the checks. After a failure processes are tried again once
        ``retry_after_s`` has passed, doubling at each failure in a row (up to
        :data:`_WORKER_RETRY_MAX_S`), so a passing problem (a worker killed for
        memory, a fork refused) does not cost the node its speed for good."""
        return self._off or anyio.current_time() < self._threads_until

    @property
    def size(self) -> int:
        """The most worker processes this pool runs at once."""
        return self._size

    async def check(
        self,
        jobs: Sequence[tuple[bytes, bytes, bytes]],
        limiter: anyio.CapacityLimiter,
        *,
        user: object = None,
    ) -> list[bool]:
        """``verify_batch(jobs)``, in a worker process (or a thread as the fallback).

        Holds a token of ``limiter`` while the check runs. ``user`` (a puller)
        counts as catching up until :meth:`done_with`. Cancellable (a worker
        caught mid-request is killed).
        """
        if user is not None:
            self._users.add(user)
        if self.broken:
            return await anyio.to_thread.run_sync(verify_batch, jobs, limiter=limiter)
        shipped = [job for job in jobs if _ed25519.shippable(job)]
        async with limiter, self._slots:
            answer = await self._ask(shipped)
        if answer is None:
            return await anyio.to_thread.run_sync(verify_batch, jobs, limiter=limiter)
        if len(shipped) == len(jobs):
            return answer
        verdicts = iter(answer)  # a job that cannot be shipped fails verify_batch anyway
        return [next(verdicts) if _ed25519.shippable(job) else False for job in jobs]

    async def _ask(self, jobs: list[tuple[bytes, bytes, bytes]]) -> list[bool] | None:
        """The worker's verdicts, or None when the workers failed (now broken)."""
        proc: anyio.abc.Process | None = None
        try:
            proc = self._idle.pop() if self._idle else await self._start()
            assert proc.stdin is not None
            assert proc.stdout is not None
            with anyio.fail_after(_WORKER_BATCH_TIMEOUT_S):
                await proc.stdin.send(_ed25519.encode_request(jobs))
                answer = await _receive_exactly(proc.stdout, len(jobs))
            if answer.strip(b"\x00\x01"):
                raise ValueError("the verification worker answered garbage")
        except (
            OSError,
            EOFError,
            ValueError,
            TimeoutError,
            anyio.BrokenResourceError,
            anyio.ClosedResourceError,
        ) as exc:
            if proc is not None:
                await self._kill(proc)
            if not self.broken:  # the first failure in a while: log it, stop the others
                doubling = 2 ** min(self._failures, 16)  # bounded: no overflow after weeks
                pause = min(self._retry_after_s * doubling, _WORKER_RETRY_MAX_S)
                self._failures += 1
                self._threads_until = anyio.current_time() + pause
                log.warning(
                    "signature checks in worker processes failed (%r); using threads for "
                    "the next %g s, then processes again",
                    exc,
                    pause,
                )
                await self.aclose()
            return None
        except BaseException:
            if proc is not None:
                await self._kill(proc)
            raise
        self._idle.append(proc)
        self._failures = 0  # working again: the next failure pauses processes briefly
        return [b == 1 for b in answer]

    async def _start(self) -> anyio.abc.Process:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH", "")) if p
        )
        proc = await anyio.open_process(
            [sys.executable, "-c", _WORKER_CODE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        self._procs.add(proc)
        try:
            assert proc.stdout is not None
            with anyio.fail_after(_WORKER_START_TIMEOUT_S):
                ready = await _receive_exactly(proc.stdout, len(_ed25519.READY))
            if ready != _ed25519.READY:
                raise ValueError("the verification worker did not start properly")
        except BaseException:
            await self._kill(proc)
            raise
        return proc

    async def _kill(self, proc: anyio.abc.Process) -> None:
        self._procs.discard(proc)
        if proc in self._idle:
            self._idle.remove(proc)
        with anyio.CancelScope(shield=True):
            # asyncio raises ProcessLookupError for a process that already exited
            # (trio does not): either way it is gone, and wait() reaps it.
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()  # reaps it
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    await pipe.aclose()

    def behind(self, user: object) -> int:
        """Count ``user`` (a puller) as fetching pages to catch up, until
        :meth:`not_behind` or :meth:`done_with`; the number of such pullers now,
        ``user`` included (they split ``max_records_in_flight``)."""
        self._behind.add(user)
        return len(self._behind)

    def not_behind(self, user: object) -> None:
        """``user`` holds no page now (its fetch failed, or it dropped its pages)."""
        self._behind.discard(user)

    async def done_with(self, user: object) -> None:
        """``user`` caught up (or stopped): stop the idle processes once no user is left."""
        self._behind.discard(user)
        self._users.discard(user)
        if not self._users:
            await self.close_idle()

    async def close_idle(self) -> None:
        """Stop the workers that are not checking anything now (restarted on demand)."""
        while self._idle:
            await self._kill(self._idle[-1])

    async def aclose(self) -> None:
        """Stop every worker (a request in flight fails over to a thread). Shielded."""
        for proc in list(self._procs):
            await self._kill(proc)


# --- the machine with a pre-verified fast path -------------------------------------------


def _all_verified(results: Sequence[SignedRecord | FedpeerError]) -> list[SignedRecord] | None:
    """The records when every result is one, else None (at least one item failed)."""
    out: list[SignedRecord] = []
    for result in results:
        if type(result) is not SignedRecord:
            return None
        out.append(result)
    return out


def _verify_chunk(
    items: Sequence[object], limits: Limits, now_ms: int
) -> list[SignedRecord] | None:
    """What the driver's pre-verification computes, in one synchronous call.

    The same two passes as :meth:`Puller._preverify` (prepare, verify_batch,
    finish); None at the first problem of any kind.
    """
    return _all_verified(verify_wire_items(items, limits=limits, now_ms=now_ms))


def _check_count(body: object, limit: int, url: str) -> None:
    """PAGE_INVALID for a page with more records than were asked for (any source:
    the HTTP one already refuses it from the page's first bytes, PAGE_TOO_LARGE);
    the in-flight share counts on it."""
    items = body.get("records") if type(body) is dict else None
    if type(items) is list and len(items) > limit:
        raise PageInvalid(
            f"{url} sent a page of {len(items)} records; {limit} were asked for. The pair "
            "retries with backoff; if it keeps happening the peer is not a fedpeer node"
        )


class _VerifiedMachine(PullMachine):
    """A :class:`PullMachine` that can take a page whose records were already verified.

    Adapter (the machine has no public hook for this yet): :meth:`receive_verified`
    is :meth:`PullMachine.receive_page` for a page whose every item went through
    the record pipeline (:func:`~fedpeer.sync.records.verify_wire_items`, or its
    two passes, which give :func:`record_from_wire`'s verdicts) with this
    machine's limits and the same ``now_ms`` (done off the event loop by the
    driver). The override of ``_check_page`` can
    only *accept*: it mirrors the machine's page rules (shape, cursor epoch and
    direction, cursor moves with records or has_more, page limit, filter,
    allow-list, no CID twice) and checks that each pre-verified record is the
    very bytes of its item; if anything is off it defers to the machine's own
    full check, which then names the error. A differential test pins the two
    paths to the same verdicts.
    """

    __slots__ = ("_fast_only", "_preverified")

    def __init__(
        self,
        pair: Pair,
        *,
        limits: Limits,
        backoff: Backoff,
        rng: random.Random | None,
        page_limit: int,
    ) -> None:
        super().__init__(pair, limits=limits, backoff=backoff, rng=rng, page_limit=page_limit)
        self._preverified: tuple[object, tuple[SignedRecord, ...]] | None = None
        self._fast_only = False

    def receive_verified(
        self, obj: object, verified: tuple[SignedRecord, ...], *, now_ms: int
    ) -> PageAccepted | PageRejected:
        """:meth:`receive_page` for ``obj`` whose records are ``verified`` (in order)."""
        self._preverified = (obj, verified)
        try:
            return self.receive_page(obj, now_ms=now_ms)
        finally:
            self._preverified = None

    def receive_verified_next(
        self,
        request: PageRequest,
        obj: object,
        verified: tuple[SignedRecord, ...],
        *,
        now_ms: int,
    ) -> PageAccepted | None:
        """:meth:`receive_next_page` for ``obj`` whose records are ``verified``.

        Only the pre-verified fast path may accept here: when it declines, this
        returns None (nothing changes) and the page goes through
        :meth:`receive_verified` after the pending commit, where the machine's
        full check names the problem. Never runs the full check itself.
        """
        self._preverified = (obj, verified)
        self._fast_only = True
        try:
            return self.receive_next_page(request, obj, now_ms=now_ms)
        finally:
            self._preverified = None
            self._fast_only = False

    def _check_page(
        self, obj: object, now: int, old: Cursor | None
    ) -> tuple[tuple[SignedRecord, ...], Cursor, bool]:
        pre = self._preverified
        if pre is not None and pre[0] is obj:
            fast = self._accept_verified(obj, pre[1], old)
            if fast is not None:
                return fast
        if self._fast_only:
            raise PageInvalid("the pre-verified fast path declined this page")
        return super()._check_page(obj, now, old)

    def _accept_verified(
        self, obj: object, verified: tuple[SignedRecord, ...], old: Cursor | None
    ) -> tuple[tuple[SignedRecord, ...], Cursor, bool] | None:
        try:
            page = page_from_wire(obj)
            new = Cursor.decode(page.next_cursor)
        except FedpeerError:
            return None
        if old is not None and (new.epoch != old.epoch or new.seq < old.seq):
            return None
        moved = old is None or new.seq > old.seq
        if not moved and (page.records or page.has_more):
            return None
        if len(page.records) > self._page_limit or len(page.records) != len(verified):
            return None
        flt = self._pair.filter
        allow = self._pair.author_allowlist
        seen: set[bytes] = set()
        for item, rec in zip(page.records, verified, strict=True):
            if (
                type(item) is not dict
                or item.get("data") is not rec.data
                or item.get("sig") is not rec.sig
            ):
                return None
            r = rec.record
            if not flt.matches(r.namespace, r.thread):
                return None
            if allow is not None and r.author not in allow:
                return None
            raw = rec.cid.raw
            if raw in seen:
                return None
            seen.add(raw)
        return verified, new, page.has_more


# --- one fetch (maybe speculative) ---------------------------------------------------------


class _Fetch:
    """A request in flight: its answer (decoded body + pre-verified records) or error."""

    __slots__ = (
        "arrived",
        "body",
        "done",
        "eager",
        "error",
        "now_ms",
        "request",
        "scope",
        "verified",
    )

    def __init__(self, request: PageRequest) -> None:
        self.request = request
        self.done = anyio.Event()
        self.scope = anyio.CancelScope()
        self.body: object = None
        self.arrived = False
        self.verified: tuple[SignedRecord, ...] | None = None
        self.now_ms = 0
        self.error: FedpeerError | None = None
        self.eager = False  # the first page of a catch-up (or a longpoll): commit at once


# --- the driver -----------------------------------------------------------------------------


class PullerRetired(Exception):
    """A user action reached a puller that crashed and was replaced: apply it to
    the manager's current puller of the pair (internal to the sync layer)."""


class Puller:
    """Pulls one pair until it is deleted or the task is cancelled.

    ``pair`` is the stored pair; ``store`` where records and the pair row go;
    ``source`` fetches pages; ``limits`` the record limits; ``options`` the
    :class:`SyncOptions`; ``verify_limiter`` bounds the verification threads
    (shared by a node's pullers); ``listener`` gets a :class:`SyncEvent` after
    each persisted change. Run it with ``await puller.run()`` in a nursery;
    call :meth:`act` / :meth:`set_credential` from other tasks.
    ``start_delay_s``: wait this long before doing anything (a user action cuts
    it short); the manager's restart after a crash uses it.
    """

    def __init__(
        self,
        pair: Pair,
        *,
        store: Store,
        source: PageSource,
        limits: Limits = DEFAULT_LIMITS,
        options: SyncOptions | None = None,
        verify_limiter: anyio.CapacityLimiter | None = None,
        workers: _SignatureWorkers | None = None,
        listener: Listener | None = None,
        start_delay_s: float = 0.0,
    ) -> None:
        opts = options or SyncOptions()
        self._start_delay_s = start_delay_s
        self._retired = False
        self._pokes_at_stop: int | None = None
        self.delaying = False
        """True while the start delay runs (a restart after a crash)."""
        rng = random.Random(f"{opts.seed}:{pair.id}") if opts.seed is not None else None  # noqa: S311
        self._m = _VerifiedMachine(
            pair, limits=limits, backoff=opts.backoff, rng=rng, page_limit=opts.page_limit
        )
        self._store = store
        self._source = source
        self._limits = limits
        self._threads = opts.verify_threads
        self._depth = opts.pipeline_depth
        self._in_flight_max = opts.max_records_in_flight
        self._limiter = verify_limiter or anyio.CapacityLimiter(opts.verify_threads)
        self._own_workers = workers is None
        self._workers = workers or _SignatureWorkers(
            opts.verify_threads, enabled=opts.verify_processes
        )
        self._commit_max = opts.commit_max_records
        self._redeem_quota = (opts.redeem_quota_records, opts.redeem_quota_bytes)
        self._empty_commit_at = -math.inf  # loop time of the last empty page's commit
        self._fold_max = opts.commit_max_records  # cut to the in-flight share by _sized
        self._ramp = _FIRST_PAGE  # the next catch-up fetch's most records (slow start)
        self._fresh = True  # the next catch-up fetch is the first of its catch-up
        # After a page over our byte cap (a source whose pages ignore the byte
        # budget, §8.2): the most records a page may ask for, and that cap. Halved
        # at each such page; after each page that fits, set from its bytes per
        # record to fill 3/4 of the cap (None again once that is a whole page).
        self._page_cap: int | None = None
        self._cap_bytes = 0
        # A longpoll the source answered at once with nothing: wait this long before
        # the next one (doubling up to longpoll_s), so a source that never holds a
        # longpoll (hostile, or one that does not support it) is polled, not spun on.
        self._longpoll_pace = 0.0
        self._longpoll_s = opts.longpoll_s
        self._commit_wait = opts.commit_wait_s
        self._fold_scope: anyio.CancelScope | None = None
        self._acting = 0  # user actions waiting for the lock: commit what is ready now
        self._listener = listener
        self._lock = anyio.Lock()
        self._pokes = 0
        self._wait_scope: anyio.CancelScope | None = None
        self._next_try_ms: int | None = None
        self._chain: list[_Fetch] = []  # fetches in cursor order; [0] is the next to use
        self._nursery: anyio.abc.TaskGroup | None = None
        self.finished = anyio.Event()
        """Set when :meth:`run` has returned or was cancelled."""
        self.caught_up_ms: int | None = (
            pair.updated_ms if pair.state is PairState.CAUGHT_UP else None
        )
        """When the source last said "nothing more" (in this process), or None."""

    # --- views ---

    @property
    def pair(self) -> Pair:
        """The pair as last committed or changed: its cursor is the stored one, or,
        after pages that moved only the cursor, up to a second of them ahead."""
        return self._m.pair

    @property
    def machine_state(self) -> MachineState:
        """The machine's state (``backing_off`` while waiting to retry...)."""
        return self._m.state

    @property
    def retry_delay_s(self) -> float | None:
        """The current backoff while backing off, else None."""
        return self._m.retry_delay_s

    @property
    def next_try_ms(self) -> int | None:
        """When (wall clock, ms) a backing-off pair retries next, else None."""
        return self._next_try_ms if self._m.state is MachineState.BACKING_OFF else None

    def lag(self, now_ms: int | None = None) -> dict[str, object]:
        """How far behind the pair is: ``{"caught_up", "behind_s", "cursor_seq"}``.

        ``behind_s`` is 0 when caught up, else the seconds since the source last
        said "nothing more" (None when that has not happened in this process).
        """
        now = _now_ms() if now_ms is None else now_ms
        pair = self._m.pair
        caught = pair.state is PairState.CAUGHT_UP
        behind: float | None
        if caught:
            behind = 0.0
        elif self.caught_up_ms is None:
            behind = None
        else:
            behind = round(max(0, now - self.caught_up_ms) / 1000, 3)
        seq = Cursor.decode(pair.cursor).seq if pair.cursor else None
        return {"caught_up": caught, "behind_s": behind, "cursor_seq": seq}

    # --- user actions ---

    async def act(self, action: PairAction) -> Pair:
        """Apply a user action (pause, resume, kick, delete); return the new pair.

        Persists the pair (removes the row on delete) before returning, then
        wakes the driver: a kick retries at once, a pause or delete abandons the
        request in flight. Raises ``PairStateInvalid`` (409) when the pair's
        state refuses the action, ``StoreError`` if the row cannot be written.
        """
        async with self._acting_now():
            m = self._m
            calls = {
                PairAction.PAUSE: m.pause,
                PairAction.RESUME: m.resume,
                PairAction.KICK: m.kick,
                PairAction.DELETE: m.delete,
            }
            if action not in calls:
                raise ValueError(f"{action.value} is not a user action")
            ev = calls[action]()
            assert ev is not None  # never deferred: the lock keeps us out of AWAITING_COMMIT
            self._poke()
            await self._persist(ev.pair, strict=True)
        kind = "deleted" if ev.pair.state is PairState.DELETED else "changed"
        self._emit(SyncEvent(kind, ev.pair, actions=ev.actions))
        return ev.pair

    async def set_credential(self, credential: str | None) -> Pair:
        """Replace the bearer token shown to the source (state unchanged; a
        stopped pair still needs a resume). Raises ``InvalidRequest`` for a
        badly shaped token, ``PairStateInvalid`` when deleted."""
        async with self._acting_now():
            ev = self._m.set_credential(credential)
            assert ev is not None
            self._poke()
            await self._persist(ev.pair, strict=True)
        self._emit(SyncEvent("changed", ev.pair, actions=ev.actions))
        return ev.pair

    @contextlib.asynccontextmanager
    async def _acting_now(self) -> AsyncIterator[None]:
        """The lock, for a user action: a commit waiting to fold more pages goes now."""
        self._acting += 1
        try:
            if self._fold_scope is not None:
                self._fold_scope.cancel()
            async with self._lock:
                if self._retired or (
                    # the loop crashed mid-commit: the machine cannot take an
                    # action until a commit that will never come
                    self._pokes_at_stop is not None
                    and self._m.state is MachineState.AWAITING_COMMIT
                ):
                    raise PullerRetired(self.pair.id)
                yield
        finally:
            self._acting -= 1

    def _poke(self) -> None:
        """Wake the driver out of whatever it waits for; drop the speculative fetch."""
        self._pokes += 1
        self._longpoll_pace = 0.0  # "poll now" means now
        if self._wait_scope is not None:
            self._wait_scope.cancel()
        self._drop_chain()
        self._restart()

    # --- the loop ---

    async def run(self) -> None:
        """Pull until the pair is deleted (returns) or the task is cancelled.

        Raises only what a bug would raise (``PullMachineError``); every
        source, page and store failure becomes a pair state with backoff.
        """
        try:
            async with anyio.create_task_group() as nursery:
                self._nursery = nursery
                try:
                    await self._loop()
                finally:
                    self._pokes_at_stop = self._pokes
                    nursery.cancel_scope.cancel()
        finally:
            self._nursery = None
            if self._own_workers:
                await self._workers.aclose()
            else:
                await self._workers.done_with(self)
            self.finished.set()

    @property
    def acted_on_since_stop(self) -> bool:
        """True when a user action reached this puller after its loop ended."""
        return self._pokes_at_stop is not None and self._pokes != self._pokes_at_stop

    async def retire(self) -> None:
        """After a crash: take the lock (so no user action is half done) and
        refuse every later action with :class:`PullerRetired`, so the caller
        applies it to the puller that replaces this one instead."""
        async with self._lock:
            self._retired = True

    async def _loop(self) -> None:
        m = self._m
        if self._start_delay_s > 0:
            self.delaying = True  # PairManager.wake leaves it alone meanwhile
            try:
                with anyio.CancelScope() as scope:
                    self._wait_scope = scope  # a user action (_poke) cuts it short,
                    if self._pokes:  # also one taken before this task ran
                        scope.cancel()
                    await anyio.sleep(self._start_delay_s)
                self._wait_scope = None
            finally:
                self.delaying = False
        while True:
            async with self._lock:
                state = m.state
                seen = self._pokes
                request = m.next_request() if state is MachineState.IDLE else None
                delay = m.retry_delay_s
            if state is MachineState.DELETED:
                return
            if request is not None:
                await self._pull(request, seen)
            elif state is MachineState.BACKING_OFF:
                wait_s = delay if delay is not None else 0.0
                self._next_try_ms = _now_ms() + int(wait_s * 1000)
                try:
                    slept = await self._sleep(wait_s, seen)
                finally:
                    self._next_try_ms = None
                if slept:
                    async with self._lock:
                        if self._pokes == seen and m.state is MachineState.BACKING_OFF:
                            m.backoff_elapsed()
            else:  # paused or stopped: until a user action
                await self._sleep(math.inf, seen)

    async def _sleep(self, seconds: float, seen: int) -> bool:
        """Sleep unless poked; True when the full time passed."""
        with anyio.CancelScope() as scope:
            self._wait_scope = scope
            if self._pokes != seen:
                scope.cancel()
            await anyio.sleep(seconds)
        self._wait_scope = None
        return not scope.cancelled_caught

    async def _pull(self, request: PageRequest, seen: int) -> None:
        fetch = self._take_fetch(request)
        with anyio.CancelScope() as scope:
            self._wait_scope = scope
            if self._pokes != seen:
                scope.cancel()
            await fetch.done.wait()
        self._wait_scope = None
        if scope.cancelled_caught:
            fetch.scope.cancel()
            return
        async with self._lock:
            m = self._m
            if m.request is not request:
                return  # a user action abandoned it; its answer must not be fed in
            if self._chain and self._chain[0] is fetch:
                del self._chain[0]  # consumed; what follows was fetched assuming it is accepted
                self._extend_chain()
            if fetch.error is not None:
                self._drop_chain()
                self._restart()
                await self._on_request_error(fetch.error)
                return
            if fetch.verified is not None:
                ev = m.receive_verified(fetch.body, fetch.verified, now_ms=fetch.now_ms)
            else:
                # a bad page (or one we could not pre-check): the machine's full,
                # sequential check names the error; off the event loop thread.
                ev = await anyio.to_thread.run_sync(
                    partial(m.receive_page, fetch.body, now_ms=fetch.now_ms)
                )
            if isinstance(ev, PageRejected):
                self._drop_chain()
                self._restart()
                await self._persist(ev.pair)
                log.warning(
                    "pair %s: rejected a page from %s: %s (retry in %.1f s)",
                    ev.pair.id,
                    ev.pair.peer_url,
                    ev.error,
                    ev.delay_s,
                )
                self._emit(SyncEvent("rejected", ev.pair, code=ev.code, delay_s=ev.delay_s))
                return
            await self._commit(await self._fold_ready(ev, eager=fetch.eager), request)

    async def _fold_ready(self, ev: PageAccepted, *, eager: bool = False) -> PageAccepted:
        """Fold the pages fetched and verified behind ``ev`` into its commit
        (several pages, one transaction; see :meth:`PullMachine.receive_next_page`).

        While the pair is behind, a page is only committed once
        ``commit_max_records`` records are ready or ``commit_wait_s`` has passed
        since it was accepted: signature checks are the bottleneck then, so the
        wait costs no throughput, and one commit per several pages saves most of
        the store's per-transaction work. A caught-up pair commits at once, and
        so does a pair a user action is waiting for, and the first page of a
        catch-up (its records show without waiting for the next pages). Stops at a page that is not
        clean (that one is fed in the usual way after this commit, which names
        its error: the pages before a bad one are stored and none after it).
        """
        m = self._m
        deadline = anyio.current_time() + self._commit_wait
        with anyio.CancelScope() as scope:
            self._fold_scope = scope
            if self._acting or eager:
                scope.cancel()
            while ev.has_more and len(ev.records) < self._fold_max and self._chain:
                nxt = self._chain[0]
                if not nxt.done.is_set():
                    with anyio.move_on_after(deadline - anyio.current_time()):
                        await nxt.done.wait()
                    if not nxt.done.is_set():
                        break
                if nxt.error is not None or nxt.verified is None:
                    break
                if len(ev.records) + len(nxt.verified) > self._fold_max:
                    break
                more = m.receive_verified_next(
                    nxt.request, nxt.body, nxt.verified, now_ms=nxt.now_ms
                )
                if more is None:
                    break
                del self._chain[0]
                self._extend_chain()
                ev = more
        self._fold_scope = None
        return ev

    async def _commit(self, ev: PageAccepted, request: PageRequest) -> None:
        m = self._m
        # What the machine will ask next once this commits: fetch it meanwhile (if the
        # chain does not hold it already).
        nxt = PageRequest(
            since=ev.pair.cursor,
            limit=request.limit,
            feed="normal" if ev.has_more else "longpoll",
            namespace=request.namespace,
            thread=request.thread,
        )
        if not self._chain or self._chain[0].request != nxt:
            self._drop_chain()
            self._chain.append(self._start_fetch(nxt))
        new = ev.new_records
        if not new and ev.has_more:
            now = anyio.current_time()  # the loop's clock: virtual in tests that mock it
            if now - self._empty_commit_at < _EMPTY_COMMIT_EVERY_S:
                # only the cursor moved: no store transaction (one a second at most)
                changed = m.commit_done()
                self._emit_pages(ev)
                if changed is not None:  # pragma: no cover - the lock keeps user actions out
                    await self._persist(changed.pair)
                return
            self._empty_commit_at = now
        row = ev.pair.to_dict()
        pid = ev.pair.id
        bounded = ev.pair.origin == "redeem" and self._redeem_quota != (None, None)

        def commit(tx: StateTx) -> None:
            if new:
                stored = tx.put_records(new)
                if bounded and stored.new:
                    # QUOTA_EXCEEDED rolls all of it back; the machine stops the pair
                    self._count_stored(tx, ev.pair, new, stored.new)
            tx.put("pairs", pid, row)

        try:
            with anyio.CancelScope(shield=True):
                await self._store.transact(commit)
        except Exception as exc:
            self._drop_chain()
            self._restart()
            after = m.commit_failed(exc)
            await self._persist(after.pair)
            if isinstance(after, PairStopped):
                log.error("pair %s stopped: %s", pid, exc)
                self._emit(SyncEvent("stopped", after.pair, code=after.error.code))
                return
            log.warning("pair %s: could not store a page: %r", pid, exc)
            if isinstance(after, RetryScheduled):
                self._emit(SyncEvent("retry", after.pair, code=after.code, delay_s=after.delay_s))
            else:
                self._emit(SyncEvent("changed", after.pair, actions=after.actions))
            return
        changed = m.commit_done()
        if ev.caught_up:
            self.caught_up_ms = _now_ms()
            await self._workers.done_with(self)  # caught up: small pages from now on
        self._emit_pages(ev)
        if changed is not None:  # pragma: no cover - the lock keeps user actions out
            await self._persist(changed.pair)

    def _emit_pages(self, ev: PageAccepted) -> None:
        """Tell the listeners about the pages of a commit that went through."""
        for size in ev.page_sizes:
            self._emit(SyncEvent("page", ev.pair, records=size))

    def _count_stored(
        self,
        tx: StateTx,
        pair: Pair,
        new: Sequence[NewRecord],
        stored: Sequence[tuple[bytes, int]],
    ) -> None:
        """Count the records of a commit this node did not have yet (``stored``,
        from ``put_records``) against a pair a redeem set up, in the commit's
        transaction: QUOTA_EXCEEDED past ``SyncOptions.redeem_quota_*``. Records
        it already had cost nothing, so a cursor reset pulling everything again
        counts nothing twice."""
        cids = {cid for cid, _seq in stored}
        added = sum(len(r.data) + len(r.sig) for r in new if r.cid in cids)
        used = tx.get(QUOTA_TABLE, pair.id) or {}
        records = int(str(used.get("records", 0))) + len(cids)
        nbytes = int(str(used.get("bytes", 0))) + added
        most_records, most_bytes = self._redeem_quota
        if most_records is not None and records > most_records:
            what, setting = f"{records} records, past the {most_records}", "records"
        elif most_bytes is not None and nbytes > most_bytes:
            what, setting = f"{nbytes} bytes of records, past the {most_bytes}", "bytes"
        else:
            tx.put(QUOTA_TABLE, pair.id, {"records": records, "bytes": nbytes})
            return
        raise QuotaExceeded(
            f"{pair.peer_did} set this pair up by redeeming an invite, and storing what "
            f"it sent would make {what} such a pair may store (redeem_quota_{setting}); "
            "the pair stopped and the last records were not stored. Raise the quota (0: "
            "no bound), restart and resume the pair, or delete it"
        )

    async def _on_request_error(self, err: FedpeerError) -> None:
        m = self._m
        ev = m.receive_error(err)
        if isinstance(ev, CursorWasReset):
            audit: dict[str, object] = {
                "type": "sync.cursor_reset",
                "pair_id": ev.pair.id,
                "peer_did": ev.pair.peer_did,
                "code": err.code,
            }
            await self._persist(ev.pair, audit=audit)
            log.warning(
                "pair %s: %s answered %s for our cursor (its store was wiped, replaced or "
                "restored); pulling everything again, duplicates are skipped by CID",
                ev.pair.id,
                ev.pair.peer_url,
                err.code,
            )
            self._emit(SyncEvent("reset", ev.pair, code=err.code))
        elif isinstance(ev, PairStopped):
            await self._persist(ev.pair)
            le = ev.pair.last_error
            log.error("pair %s stopped: %s", ev.pair.id, le.message if le else err)
            self._emit(SyncEvent("stopped", ev.pair, code=err.code))
        else:
            assert isinstance(ev, RetryScheduled)
            await self._persist(ev.pair)
            log.info(
                "pair %s: %s failed: %s (retry %d in %.2f s)",
                ev.pair.id,
                ev.pair.peer_url,
                err,
                ev.pair.retries,
                ev.delay_s,
            )
            self._emit(SyncEvent("retry", ev.pair, code=ev.code, delay_s=ev.delay_s))

    # --- fetching ---

    def _take_fetch(self, request: PageRequest) -> _Fetch:
        """The fetch for ``request``: the head of the chain if it is that request,
        else a new one (and the chain, fetched on other assumptions, is dropped)."""
        if self._chain and self._chain[0].request == request:
            return self._chain[0]
        self._drop_chain()
        fetch = self._start_fetch(request)
        self._chain.append(fetch)
        return fetch

    def _drop_chain(self) -> None:
        for fetch in self._chain:
            fetch.scope.cancel()
        self._chain.clear()
        self._workers.not_behind(self)  # no page held: the next fetch counts again

    def _restart(self) -> None:
        """After a failure or a user action: the next catch-up starts small again."""
        self._ramp = _FIRST_PAGE
        self._fresh = True

    def _extend_chain(self) -> None:
        """Keep up to ``pipeline_depth`` pages in flight: after the last fetched page,
        fetch the page the machine will ask for if it accepts that one.

        The guess is ``since`` = the page's ``next_cursor``, longpoll when it said
        nothing is left. The page is untrusted: a wrong guess only costs a dropped
        fetch, since nothing is fed to the machine unless it asks for exactly that.
        """
        while 0 < len(self._chain) < self._depth:
            last = self._chain[-1]
            body = last.body
            if not last.arrived or type(body) is not dict:
                return
            cursor, more = body.get("next_cursor"), body.get("has_more")
            if type(cursor) is not str or type(more) is not bool:
                return
            req = last.request
            nxt = PageRequest(
                since=cursor,
                limit=req.limit,
                feed="normal" if more else "longpoll",
                namespace=req.namespace,
                thread=req.thread,
            )
            self._chain.append(self._start_fetch(nxt))

    def _start_fetch(self, request: PageRequest) -> _Fetch:
        assert self._nursery is not None
        fetch = _Fetch(request)
        self._nursery.start_soon(self._fetch_task, fetch, self._m.pair)
        return fetch

    async def _fetch_task(self, fetch: _Fetch, pair: Pair) -> None:
        try:
            if fetch.scope.cancel_called:  # dropped before it started: asks nothing
                return
            with fetch.scope:
                sized = self._sized(fetch)
                longpoll = sized.feed == "longpoll"
                if longpoll and self._longpoll_pace:
                    await anyio.sleep(self._longpoll_pace)  # cancelled by a poke
                started = anyio.current_time()
                try:
                    body = await self._source.fetch(pair, sized)
                    _check_count(body, sized.limit, pair.peer_url)
                    if longpoll:
                        self._pace_longpolls(body, anyio.current_time() - started)
                except FedpeerError as err:
                    if isinstance(err, PageTooLarge) and err.max_bytes:
                        # more bytes than our cap (not more records than asked, nor
                        # an error the peer sent): ask for fewer records from now on,
                        # half of what the source was asked (its page_limit_max may
                        # have cut our limit below ``sized.limit``)
                        half = max(1, (err.asked or sized.limit) // 2)
                        self._page_cap = (
                            half if self._page_cap is None else min(self._page_cap, half)
                        )
                        self._cap_bytes = err.max_bytes
                    fetch.error = err
                    return
                except Exception as exc:
                    # a source must raise FedpeerError; anything else is still the peer's
                    # problem as far as this pair is concerned, never a crash.
                    log.warning("pair %s: fetch failed unexpectedly: %r", pair.id, exc)
                    fetch.error = PeerError(
                        f"fetching from {pair.peer_url} failed ({type(exc).__name__}); the pair "
                        "retries with backoff, the node log has the details"
                    )
                    return
                fetch.body = body
                fetch.arrived = True
                if fetch in self._chain:
                    self._extend_chain()
                fetch.now_ms = _now_ms()
                fetch.verified = await self._preverify(body, fetch.now_ms)
                if self._page_cap is not None and fetch.verified:
                    # sized from records that passed every check, never from raw input
                    self._resize_cap(fetch.verified, sized.limit, fetch.request.limit)
        finally:
            fetch.done.set()

    def _pace_longpolls(self, body: object, held_s: float) -> None:
        """After a longpoll's answer: if it came back with no records before half
        the time asked (a source that does not hold longpolls, or holds them
        briefly, or a hostile one), the next longpoll waits until a second has
        passed since this one was sent, so such a source is asked at most once a
        second whatever the round trip; otherwise (a record, or a long hold) it
        goes at once. A user action (a poke) cancels the wait."""
        items = body.get("records") if type(body) is dict else getattr(body, "records", None)
        empty = isinstance(items, (list, tuple)) and not items
        if empty and held_s < self._longpoll_s / 2:
            self._longpoll_pace = max(0.0, min(_LONGPOLL_PACE_S, self._longpoll_s) - held_s)
        else:
            self._longpoll_pace = 0.0

    def _resize_cap(self, records: Sequence[SignedRecord], asked: int, page_limit: int) -> None:
        """After a verified page that fit under the byte cap while ``_page_cap``
        holds: :func:`_records_that_fit` at this page's bytes per record, or no
        cap once that is a whole page. A page with few records says little: only
        a full one (``asked`` records) may raise the cap."""
        cap = self._page_cap
        if cap is None or not records:
            return
        fit = _records_that_fit(records, self._cap_bytes)
        if fit < cap or len(records) >= asked:
            self._page_cap = None if fit >= page_limit else fit

    def _sized(self, fetch: _Fetch) -> PageRequest:
        """``request`` with its ``limit`` cut to this pair's share of the node's
        ``max_records_in_flight``: the pairs catching up at once split it, each
        holding the page it commits (and the pages folded into it, see
        ``_fold_max``) and up to ``pipeline_depth`` pages ahead, so memory does
        not grow with the number of pairs (never below :data:`_MIN_PAGE` records
        a page). A longpoll
        (caught up: few records) keeps its limit. The machine accepts a page of at
        most its own ``page_limit``, so a smaller page is just a page.

        Slow start: a catch-up's first fetch asks at most :data:`_FIRST_PAGE`
        records, each further one twice as many as the one before; a longpoll
        (caught up), a failure or a user action (:meth:`_restart`) starts the
        ramp again. The first fetch of a catch-up and a longpoll are marked
        ``eager``: their page is committed without waiting to fold the next."""
        request = fetch.request
        if self._page_cap is not None and request.limit > self._page_cap:
            request = attrs.evolve(request, limit=self._page_cap)
        if request.feed != "normal":
            # its answer opens the next catch-up, if any: committed at once, and the
            # normal pages after it start small
            fetch.eager = True
            self._ramp = _FIRST_PAGE
            self._fresh = False
            return request
        fetch.eager, self._fresh = self._fresh, False
        # per pair: the page being committed (with the pages folded into it) and
        # pipeline_depth pages ahead
        allowance = self._in_flight_max // self._workers.behind(self)
        size = min(request.limit, max(allowance // (self._depth + 1), _MIN_PAGE), self._ramp)
        self._ramp = min(2 * self._ramp, request.limit)
        # fold no more than what the pages ahead leave of the allowance (one page at least)
        self._fold_max = min(self._commit_max, max(size, allowance - self._depth * size))
        return request if size == request.limit else attrs.evolve(request, limit=size)

    async def _preverify(self, body: object, now_ms: int) -> tuple[SignedRecord, ...] | None:
        """Every record of ``body`` through the one pipeline, off the event loop.

        Two passes (see :func:`~fedpeer.sync.records.prepare_wire_items`): the
        GIL-bound checks of the whole page in one worker thread, then the Ed25519
        checks, in up to ``verify_threads`` slices at once: large slices in
        worker processes (:class:`_SignatureWorkers`), small ones in a worker
        thread. None when the body is not a page or any record fails: the
        machine's full check then names the error.
        """
        if type(body) is not dict:
            return None
        items = body.get("records")
        if type(items) is not list:
            return None
        if not items:
            return ()
        try:
            prepared = await anyio.to_thread.run_sync(
                partial(prepare_wire_items, items, limits=self._limits, now_ms=now_ms)
            )
        except Exception:  # untrusted input must never crash the puller
            log.debug("pre-verification failed; the machine's full check decides", exc_info=True)
            return None
        jobs = prepared.signature_jobs
        n = min(self._threads, max(1, len(jobs) // _MIN_CHUNK))
        size = max(1, -(-len(jobs) // n))
        slices = [jobs[i : i + size] for i in range(0, len(jobs), size)]
        verdicts: list[list[bool]] = [[] for _ in slices]
        limiter = self._limiter

        async def check(i: int) -> None:
            part = slices[i]
            if len(part) >= _PROCESS_MIN_JOBS:
                verdicts[i] = await self._workers.check(part, limiter, user=self)
            else:
                verdicts[i] = await anyio.to_thread.run_sync(verify_batch, part, limiter=limiter)

        if len(slices) == 1:
            await check(0)
        elif slices:
            async with anyio.create_task_group() as nursery:
                for i in range(len(slices)):
                    nursery.start_soon(check, i)
        out = _all_verified(prepared.finish([v for part in verdicts for v in part]))
        return None if out is None else tuple(out)

    # --- persistence and events ---

    async def _persist(
        self, pair: Pair, *, strict: bool = False, audit: dict[str, object] | None = None
    ) -> None:
        """Write (or, when deleted, remove) the pair row; shielded from cancellation.

        With ``strict`` a store failure propagates (user actions report it);
        otherwise it is logged: the next committed page writes the row anyway.
        """
        row = None if pair.state is PairState.DELETED else pair.to_dict()
        pid = pair.id

        def write(tx: StateTx) -> None:
            if row is None:
                tx.delete("pairs", pid)
                tx.delete(QUOTA_TABLE, pid)  # a pair made again later starts afresh
            else:
                tx.put("pairs", pid, row)
            if audit is not None:
                tx.audit(audit)

        try:
            with anyio.CancelScope(shield=True):
                await self._store.transact(write)
        except Exception:
            if strict:
                raise
            log.exception("pair %s: could not persist its state", pid)

    def _emit(self, event: SyncEvent) -> None:
        if self._listener is not None:
            try:
                self._listener(event)
            except Exception:
                log.exception("sync listener failed on %s", event.kind)
