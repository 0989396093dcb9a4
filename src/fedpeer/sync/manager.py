"""PairManager: a node's sync pairs, their pullers, stats and health.

The manager runs in the node's nursery (``await nursery.start(manager.run)``).
At start it loads every row of the store's ``pairs`` table and starts one
:class:`~fedpeer.sync._puller.Puller` task per pair, so pairs and their cursors
survive restarts: a restarted node resumes each pair from its stored cursor
(and a failing pair keeps backing off where it left off). Creating, pausing,
resuming, kicking and deleting go through the pair's puller, which persists the
change before answering. A puller that crashes on a bug is replaced by a fresh one
that shows the pair failing (``INTERNAL``) and retries after the pair's backoff.

Health: per pair, the stats the pull machine keeps (records, bytes, pages,
rolling rate, delivery-latency histogram, errors in the last hour, current
backoff) plus the lag; for the node, :meth:`PairManager.health` aggregates them
(pairs by state, records per minute and hour, p50/p95 latency over all pairs,
the slowest and the most failing pairs).
"""

from __future__ import annotations

import builtins
import collections
import logging
import math
import os
from collections.abc import Awaitable, Callable, Iterable

import anyio
import anyio.abc

from .._clock import now_ms as _now_ms
from ..errors import FedpeerError, InternalError, PairNotFound, StoreCorrupt
from ..store.base import StateTx, Store
from ._machine import MachineState
from ._puller import Puller, PullerRetired, _SignatureWorkers
from .options import Listener, PageSource, SyncEvent, SyncOptions
from .pairs import LastError, Pair, PairAction, PairFilter, PairState, PairStats, make_pair
from .records import DEFAULT_LIMITS, Limits

__all__ = ["WAKE_MIN_INTERVAL_S", "PairManager"]

log = logging.getLogger("fedpeer.sync")

_TOP = 5  # pairs listed as slowest / most failing
_HOUR_MINUTES = 60
_CRASH_RESET_S = 600.0  # a puller that ran this long before crashing starts a new count
_CRASH_DELAY_CAP_S = 300.0  # the longest wait before a crashed puller's replacement starts
_RETIRED_RETRIES = 8  # user action retries on a pair whose puller crashes under them
WAKE_MIN_INTERVAL_S = 1.0
"""A failing pair is woken (:meth:`PairManager.wake`) at most once per this many seconds."""


def next_try_s(next_try_ms: int | None, now_ms: int) -> float | None:
    """Seconds from ``now_ms`` until a backing-off pair retries (None: not backing off)."""
    if next_try_ms is None:
        return None
    return round(max(0, next_try_ms - now_ms) / 1000, 1)


def _crash_delay_s(crashes: int) -> float:
    """The wait before restart number ``crashes`` (1, 2, 4 ... s, capped)."""
    return min(_CRASH_DELAY_CAP_S, 2.0 ** min(max(crashes - 1, 0), 32))


def _after_crash(pair: Pair) -> Pair | None:
    """The pair a crashed puller restarts with (None: not restarted, it was deleted).

    A pulling pair comes back failing, with ``INTERNAL`` as its last error and one
    retry more, so it waits out the pair backoff before its next request: a bug
    that crashes the puller on every page costs one attempt per backoff step (up
    to the cap), not a tight loop, and users see the pair failing rather than
    gone. A paused or stopped pair comes back as it was. It goes on from the
    cursor the puller last knew committed: at worst a page is fetched again, and
    the store skips the records it already holds.
    """
    if pair.state is PairState.DELETED:
        return None
    if not pair.active:
        return pair
    now = _now_ms()
    error = LastError(
        code=InternalError.code,
        message="the pull task crashed on a bug (the node log has the traceback); "
        "it restarts after the backoff",
        at_ms=now,
    )
    return pair.apply(PairAction.FAIL, now_ms=now, error=error)


class PairManager:
    """The sync pairs of one node (see the module docstring).

    ``store`` holds the ``pairs`` table and receives the pulled records;
    ``local_did`` is this node's DID (the target of every pair); ``source``
    fetches pages (the peer layer's HTTP implementation); ``limits`` the record
    limits; ``options`` the :class:`SyncOptions`. Methods other than :meth:`run`
    and :meth:`stop` need the manager to be running (``InternalError``
    otherwise).
    """

    def __init__(
        self,
        store: Store,
        *,
        local_did: str,
        source: PageSource,
        limits: Limits = DEFAULT_LIMITS,
        options: SyncOptions | None = None,
    ) -> None:
        self.store = store
        self.local_did = local_did
        self.options = options or SyncOptions()
        self.limits = limits
        self._source = source
        self._verify_limiter = anyio.CapacityLimiter(self.options.verify_threads)
        # one pool of signature worker processes for every pair, at most one per core
        self._workers = _SignatureWorkers(
            max(1, min(self.options.verify_threads, os.cpu_count() or 1)),
            enabled=self.options.verify_processes,
        )
        self._pullers: dict[str, Puller] = {}
        self._by_did: dict[str, set[str]] = {}  # peer DID -> its pairs' ids (for wake)
        self._lock = anyio.Lock()
        self._nursery: anyio.abc.TaskGroup | None = None
        self._scope: anyio.CancelScope | None = None
        self._changed = anyio.Event()
        self._listeners: list[Listener] = []
        self._minutes: collections.deque[list[int]] = collections.deque(maxlen=_HOUR_MINUTES)
        self._started_ms = _now_ms()
        self._woken: dict[str, float] = {}  # pair id -> anyio.current_time() of its last wake

    # --- lifecycle ---

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Load the stored pairs, start their pullers, and run until cancelled.

        Signals readiness once every stored pair has a puller. A row that does
        not parse (``StoreCorrupt``) or belongs to another local DID (the data
        dir's key was replaced) is logged and skipped, never deleted.
        """
        try:
            with anyio.CancelScope() as scope:
                self._scope = scope
                async with anyio.create_task_group() as nursery:
                    self._nursery = nursery
                    if self.options.autostart:
                        for key, row in await self.store.list_state("pairs"):
                            try:
                                pair = Pair.from_dict(row)
                            except StoreCorrupt as err:
                                log.error("skipping pairs row %r: %s", key, err.message)
                                continue
                            if pair.local_did != self.local_did:
                                log.error(
                                    "skipping pair %s: it belongs to %s, this node is %s",
                                    pair.id,
                                    pair.local_did,
                                    self.local_did,
                                )
                                continue
                            self._start(pair)
                    task_status.started()
                    try:
                        await anyio.sleep_forever()
                    finally:
                        self._nursery = None
        finally:
            # every puller has returned (the task group waited for them): stop the
            # shared signature workers, also when the node is cancelled (shielded)
            await self._workers.aclose()

    def stop(self) -> None:
        """Stop every puller (a commit in flight still completes). Idempotent."""
        if self._scope is not None:
            self._scope.cancel()

    def _start(self, pair: Pair, crashes: int = 0, *, start_delay_s: float = 0.0) -> Puller:
        assert self._nursery is not None
        puller = Puller(
            pair,
            store=self.store,
            source=self._source,
            limits=self.limits,
            options=self.options,
            verify_limiter=self._verify_limiter,
            workers=self._workers,
            listener=self._on_event,
            start_delay_s=start_delay_s,
        )
        self._pullers[pair.id] = puller
        self._by_did.setdefault(pair.peer_did, set()).add(pair.id)
        self._nursery.start_soon(self._supervise, puller, crashes)
        return puller

    async def _supervise(self, puller: Puller, crashes: int = 0) -> None:
        pid = puller.pair.id
        started = anyio.current_time()
        restarted = False
        try:
            await puller.run()
        except Exception:
            # A bug (peer and store problems become pair states, never exceptions):
            # keep the node up and let it crash, then start the pair afresh.
            log.exception("pair %s: the puller crashed; it restarts", pid)
            crashes = 1 if anyio.current_time() - started > _CRASH_RESET_S else crashes + 1
            try:
                restarted = await self._restart(puller, crashes)
            except Exception:  # a bug in the restart itself: the pair stays down
                log.exception("pair %s: could not restart its puller", pid)
        finally:
            if not restarted:
                self._forget(puller)
            self._bump()

    async def _restart(self, dead: Puller, crashes: int) -> bool:
        """Replace the crashed puller ``dead`` (see :func:`_after_crash`); False
        when there is nothing to restart (deleted, replaced, manager stopping)."""
        await dead.retire()  # an action already waiting for its lock lands on the new one
        if self._pullers.get(dead.pair.id) is not dead or self._nursery is None:
            return False
        if dead.acted_on_since_stop:
            # A user acted on the pair after the crash (through the dead puller):
            # their state stands, and starts at once.
            if dead.pair.state is PairState.DELETED:
                return False
            self._start(dead.pair, crashes)
            return True
        again = _after_crash(dead.pair)
        if again is None:
            return False
        # A pulling pair waits its backoff anyway; a halted one, or a crash again
        # soon after a restart (a bug in the backoff path, a peer's requests waking
        # the pair), waits 1, 2, 4 ... s first. A user action cuts the wait short;
        # wake() leaves a pair alone meanwhile.
        first = crashes == 1 and again.active
        delay = 0.0 if first else _crash_delay_s(crashes)
        self._start(again, crashes, start_delay_s=delay)
        return True

    async def _on_current(
        self, pair_id: str, call: Callable[[Puller], Awaitable[Pair]]
    ) -> tuple[Puller, Pair]:
        """``call`` on the pair's puller; on one that crashed meanwhile
        (``PullerRetired``), again on its replacement once it is there."""
        for _attempt in range(_RETIRED_RETRIES):
            puller = self.puller(pair_id)
            try:
                return puller, await call(puller)
            except PullerRetired:
                with anyio.move_on_after(10):  # until the replacement is in place
                    while self._pullers.get(pair_id) is puller:
                        await self._changed.wait()
        raise InternalError(  # pragma: no cover - a puller crashing under every call
            f"pair {pair_id}: its puller keeps crashing; see the node log"
        )

    def _forget(self, puller: Puller) -> None:
        pid = puller.pair.id
        if self._pullers.get(pid) is puller:
            del self._pullers[pid]
            self._woken.pop(pid, None)
            ids = self._by_did.get(puller.pair.peer_did)
            if ids is not None:
                ids.discard(pid)
                if not ids:
                    del self._by_did[puller.pair.peer_did]

    # --- CRUD and actions ---

    def _running(self) -> anyio.abc.TaskGroup:
        if self._nursery is None:
            raise InternalError("the pair manager is not running")
        return self._nursery

    async def create(
        self,
        *,
        peer_did: str,
        peer_url: str,
        credential: str | None,
        filter: PairFilter | None = None,
        author_allowlist: Iterable[str] | None = None,
        origin: str = "owner",
    ) -> tuple[Pair, bool]:
        """Create the pair "this node pulls ``filter`` from ``peer_did``" and start it.
        ``origin``: who set it up (:attr:`~fedpeer.sync.pairs.Pair.origin`; a
        repeat create keeps the existing pair's).

        Returns ``(pair, created)``: the same DIDs and filter give the same id,
        so a repeat create returns the existing pair unchanged with ``created``
        False. Raises ``PairSelf`` (``peer_did`` is this node), ``DidInvalid``,
        ``InvalidRequest`` (URL, credential, filter, allow-list shape),
        ``StoreError``. The caller (the peer layer) also refuses a ``peer_url``
        that reaches this node.
        """
        self._running()
        pair = make_pair(
            local_did=self.local_did,
            peer_did=peer_did,
            peer_url=peer_url,
            credential=credential,
            filter=filter,
            author_allowlist=author_allowlist,
            origin=origin,
        )
        async with self._lock:
            existing = self._pullers.get(pair.id)
            if existing is not None and existing.pair.state is PairState.DELETED:
                await existing.finished.wait()  # being deleted: create it afresh
                existing = None
            if existing is not None:
                return existing.pair, False
            row = pair.to_dict()
            audit: dict[str, object] = {
                "type": "sync.pair_created",
                "pair_id": pair.id,
                "peer_did": pair.peer_did,
                "peer_url": pair.peer_url,
                "filter": pair.filter.to_dict(),
            }

            def write(tx: StateTx) -> bool:
                if tx.get("pairs", pair.id) is not None:
                    return False
                tx.put("pairs", pair.id, row)
                tx.audit(audit)
                return True

            if not await self.store.transact(write):  # pragma: no cover - row without puller
                stored = await self.store.get_state("pairs", pair.id)
                assert stored is not None
                pair = Pair.from_dict(stored)
                self._start(pair)
                return pair, False
            self._start(pair)
        log.info("pair %s created: pull %s from %s", pair.id, pair.filter.to_dict(), peer_url)
        self._bump()
        return pair, True

    def list(self) -> list[Pair]:
        """Every pair, by creation time then id."""
        return sorted((p.pair for p in self._pullers.values()), key=lambda p: (p.created_ms, p.id))

    def puller(self, pair_id: str) -> Puller:
        """The puller of ``pair_id``; ``PairNotFound`` if there is none."""
        puller = self._pullers.get(pair_id)
        if puller is None or puller.pair.state is PairState.DELETED:
            raise PairNotFound(
                f"no pair {pair_id!r:.80} on this node; list them with `fedpeer pairs` "
                "(GET /v1/sync/pairs)"
            )
        return puller

    def get(self, pair_id: str) -> Pair:
        """The pair ``pair_id`` (``PairNotFound``)."""
        return self.puller(pair_id).pair

    async def act(self, pair_id: str, action: PairAction) -> Pair:
        """Apply a user action; see :meth:`Puller.act`. ``PairNotFound``,
        ``PairStateInvalid``. ``delete`` waits until the puller has stopped."""
        self._running()
        puller, pair = await self._on_current(pair_id, lambda p: p.act(action))
        if action is PairAction.DELETE:
            with anyio.move_on_after(10):
                await puller.finished.wait()
            log.info("pair %s deleted", pair_id)
        return pair

    async def pause(self, pair_id: str) -> Pair:
        """Pause a pair (``PAIR_STATE_INVALID`` if paused or stopped)."""
        return await self.act(pair_id, PairAction.PAUSE)

    async def resume(self, pair_id: str) -> Pair:
        """Resume a paused or stopped pair (retries reset)."""
        return await self.act(pair_id, PairAction.RESUME)

    async def kick(self, pair_id: str) -> Pair:
        """Poll now: cut a backoff short, restart a longpoll (retries reset)."""
        return await self.act(pair_id, PairAction.KICK)

    async def delete(self, pair_id: str) -> Pair:
        """Delete a pair: its row goes, the records it pulled stay."""
        return await self.act(pair_id, PairAction.DELETE)

    async def set_credential(self, pair_id: str, credential: str | None) -> Pair:
        """Replace a pair's bearer token (a stopped pair then needs a resume)."""
        self._running()
        _puller, pair = await self._on_current(pair_id, lambda p: p.set_credential(credential))
        return pair

    # --- waking failing pairs ---

    def wake(self, peer_did: str | None, *, reason: str) -> builtins.list[str]:
        """The peer ``peer_did`` (every peer when None) was seen again: retry its
        failing pairs now instead of at the end of their backoff.

        "Seen again" is the peer layer's call: a verified mDNS announcement, a
        successful manifest fetch, an authenticated request from that DID, or a
        change of this machine's network (``peer_did=None``). Only pairs that are
        backing off are woken (a kick: retries reset, the next failure waits the
        first backoff step again); running, caught-up, paused and stopped pairs are
        left alone. A pair is woken at most once per :data:`WAKE_MIN_INTERVAL_S`,
        so a peer that sends many requests cannot make this node retry it in a
        tight loop. Never blocks and never raises: the kicks run in the manager's
        task group. Returns the ids of the pairs woken; a no-op when the manager
        is not running.
        """
        if self._nursery is None:
            return []
        now = anyio.current_time()
        woken: builtins.list[str] = []
        # a request from a peer costs a lookup of its pairs, not a scan of every pair
        ids = list(self._pullers) if peer_did is None else list(self._by_did.get(peer_did, ()))
        for pid in ids:
            puller = self._pullers.get(pid)
            if puller is None:
                continue
            if puller.machine_state is not MachineState.BACKING_OFF or puller.delaying:
                continue  # delaying: restarted after a crash, its wait is not cut short
            if now - self._woken.get(pid, -math.inf) < WAKE_MIN_INTERVAL_S:
                continue
            self._woken[pid] = now
            woken.append(pid)
            self._nursery.start_soon(self._wake_one, puller, reason)
        return woken

    async def _wake_one(self, puller: Puller, reason: str) -> None:
        if puller.machine_state is not MachineState.BACKING_OFF or puller.delaying:
            return
        try:
            await puller.act(PairAction.KICK)
        except PullerRetired:
            return  # crashed meanwhile: its replacement starts with a pull of its own
        except FedpeerError as err:  # deleted or paused meanwhile, or the row write failed
            log.debug("pair %s: wake (%s) not applied: %s", puller.pair.id, reason, err)
            return
        log.info("pair %s: %s seen again (%s); retrying now", puller.pair.id,
                 puller.pair.peer_did, reason)  # fmt: skip

    # --- events ---

    def add_listener(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(event)`` after each persisted pair change; returns an
        unsubscribe function. Listeners run on the event loop thread and must not block."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _on_event(self, event: SyncEvent) -> None:
        if event.kind == "page" and event.records:
            minute = _now_ms() // 60_000
            if self._minutes and self._minutes[-1][0] == minute:
                self._minutes[-1][1] += event.records
            else:
                self._minutes.append([minute, event.records])
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("sync listener failed")
        self._bump()

    def _bump(self) -> None:
        event, self._changed = self._changed, anyio.Event()
        event.set()

    async def wait_for(self, pair_id: str, predicate: Callable[[Pair], bool]) -> Pair:
        """Block until ``predicate(pair)`` holds; return that pair.

        Wakes on every change of any pair (no polling). Raises ``PairNotFound``
        if the pair is or becomes absent. Cancellable; bound it with
        ``anyio.fail_after``.
        """
        while True:
            changed = self._changed
            pair = self.get(pair_id)
            if predicate(pair):
                return pair
            await changed.wait()

    # --- stats and health ---

    def public(self, pair_id: str, now_ms: int | None = None) -> dict[str, object]:
        """What the API shows for a pair: no credential; stats snapshot; lag."""
        puller = self.puller(pair_id)
        now = _now_ms() if now_ms is None else now_ms
        out = puller.pair.to_public_dict(now_ms=now)
        out["lag"] = puller.lag(now)
        return out

    def stats(self, pair_id: str, now_ms: int | None = None) -> dict[str, object]:
        """``GET /v1/sync/pairs/{id}/stats``: the pair's counters, rates, latency
        percentiles and histogram, errors in the last hour, current backoff, lag."""
        puller = self.puller(pair_id)
        now = _now_ms() if now_ms is None else now_ms
        pair = puller.pair
        out: dict[str, object] = {"pair_id": pair.id, "state": pair.state.value}
        out.update(pair.stats.snapshot(now))
        out["retries"] = pair.retries
        out["current_backoff_s"] = puller.retry_delay_s
        out["next_try_s"] = next_try_s(puller.next_try_ms, now)
        out["lag"] = puller.lag(now)
        out["last_error"] = None if pair.last_error is None else pair.last_error.to_dict()
        return out

    def health(self, now_ms: int | None = None) -> dict[str, object]:
        """``GET /v1/sync/health``: every pair's numbers, aggregated.

        ``pairs`` (total), ``by_state`` (count per state, all states listed),
        ``status`` (``ok``, ``idle`` without pairs, ``degraded`` when a pair is
        failing or stopped), ``records_per_minute`` (last 60 s over all pairs),
        ``records_last_hour`` (since this process started, at most an hour),
        ``latency_p50_ms`` / ``latency_p95_ms`` (record ts -> verified here, over
        every record every pair pulled), ``slowest`` and ``most_failing`` (up to
        5 pairs each).
        """
        now = _now_ms() if now_ms is None else now_ms
        pullers = list(self._pullers.values())
        pairs = [p.pair for p in pullers]
        by_state = {s.value: 0 for s in PairState if s is not PairState.DELETED}
        for pair in pairs:
            by_state[pair.state.value] = by_state.get(pair.state.value, 0) + 1
        merged = [0] * len(PairStats().latency_counts)
        lat_max = 0
        per_minute = 0.0
        for pair in pairs:
            for i, n in enumerate(pair.stats.latency_counts):
                merged[i] += n
            lat_max = max(lat_max, pair.stats.latency_max_ms)
            per_minute += pair.stats.rate_per_s(now) * 60
        total = PairStats(latency_counts=merged, latency_max_ms=lat_max)
        minute = now // 60_000
        last_hour = sum(n for m, n in self._minutes if minute - m < _HOUR_MINUTES)
        slowest = sorted(
            (p for p in pullers if p.pair.stats.records),
            key=lambda p: (-(p.pair.stats.percentile_ms(0.95) or 0), p.pair.id),
        )[:_TOP]
        failing = sorted(
            (p for p in pullers if p.pair.stats.errors_last_hour(now)),
            key=lambda p: (-p.pair.stats.errors_last_hour(now), p.pair.id),
        )[:_TOP]
        if not pairs:
            status = "idle"
        elif by_state["failing"] or by_state["stopped"]:
            status = "degraded"
        else:
            status = "ok"
        return {
            "status": status,
            "pairs": len(pairs),
            "by_state": by_state,
            "records_per_minute": round(per_minute, 1),
            "records_last_hour": last_hour,
            "since_ms": max(self._started_ms, now - 3_600_000),
            "latency_p50_ms": total.percentile_ms(0.50),
            "latency_p95_ms": total.percentile_ms(0.95),
            "slowest": [self._brief(p, now) for p in slowest],
            "most_failing": [self._brief(p, now) for p in failing],
        }

    @staticmethod
    def _brief(puller: Puller, now: int) -> dict[str, object]:
        pair = puller.pair
        return {
            "id": pair.id,
            "peer_did": pair.peer_did,
            "state": pair.state.value,
            "latency_p95_ms": pair.stats.percentile_ms(0.95),
            "errors_last_hour": pair.stats.errors_last_hour(now),
            "lag": puller.lag(now),
            "last_error": None if pair.last_error is None else pair.last_error.to_dict(),
        }

    async def health_summary(self) -> dict[str, object]:
        """The short form for ``/health``: status, pair count, counts by state,
        records per minute."""
        full = self.health()
        return {
            "status": full["status"],
            "pairs": full["pairs"],
            "by_state": full["by_state"],
            "records_per_minute": full["records_per_minute"],
        }
