"""Several pages per store transaction, pipelined pages, one signature pool per node.

Real machine, puller, manager and stores; the source is the in-memory one of
``test_puller`` (real page building, no HTTP). Nothing here asserts a timing:
waits are on events with generous bounds.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import attrs
import pytest

from fedpeer.errors import PeerUnreachable, StoreError
from fedpeer.identity.keys import SigningKey, verify_batch
from fedpeer.store import MemoryStore
from fedpeer.store.base import StateTx
from fedpeer.sync import _puller
from fedpeer.sync._machine import MachineState, PageAccepted, PageRejected, PullMachine
from fedpeer.sync._puller import _SignatureWorkers
from fedpeer.sync.backoff import Backoff
from fedpeer.sync.feed import Cursor
from fedpeer.sync.manager import PairManager
from fedpeer.sync.options import SyncEvent, SyncOptions
from fedpeer.sync.pairs import Pair, PairAction, PairState, make_pair
from fedpeer.sync.records import build_record

from .test_puller import (
    LOCAL_DID,
    OTHER_KEY,
    SRC_KEY,
    FakeSource,
    caught_up,
    cids,
    make_records,
    start_env,
)
from .test_puller_workers import make_jobs

# --- the machine: receive_next_page ---------------------------------------------------


async def _pages(store: MemoryStore, pair: Pair, limit: int, n: int) -> list[tuple[Any, Any]]:
    """The first ``n`` (request, page) pairs a pulling machine would see, in order."""
    src = FakeSource(store)
    m = PullMachine(pair, page_limit=limit)
    out = []
    for _ in range(n):
        req = m.next_request()
        assert req is not None
        body = await src.fetch(pair, req)
        out.append((req, body))
        ev = m.receive_page(body)
        assert isinstance(ev, PageAccepted)
        m.commit_done()
    return out


def _pair() -> Pair:
    return make_pair(
        local_did=LOCAL_DID, peer_did=SRC_KEY.did, peer_url="http://127.0.0.1:9", credential=None
    )


async def test_machine_folds_following_pages_and_moves_the_cursor_only_on_commit() -> None:
    store = MemoryStore()
    recs = make_records(30)
    await store.put([r.to_new() for r in recs])
    pair = _pair()
    (r1, p1), (r2, p2), (r3, p3) = await _pages(store, pair, 10, 3)
    m = PullMachine(pair, page_limit=10)
    assert m.next_request() == r1
    ev = m.receive_page(p1)
    assert isinstance(ev, PageAccepted)
    ev2 = m.receive_next_page(r2, p2)
    assert ev2 is not None
    ev3 = m.receive_next_page(r3, p3)
    assert ev3 is not None
    assert m.state is MachineState.AWAITING_COMMIT
    assert [r.cid for r in ev3.records] == [r.cid for r in recs]
    assert ev3.page_sizes == (10, 10, 10)
    assert Cursor.decode(ev3.cursor).seq == 30
    assert ev3.pair.stats.records == 30
    assert ev3.pair.stats.pages == 3
    # nothing moved yet: a crash here keeps the old (absent) cursor
    assert m.cursor is None
    assert m.pair.cursor is None
    m.commit_done()
    assert Cursor.decode(m.cursor or "").seq == 30


async def test_a_failed_multi_page_commit_keeps_the_old_cursor() -> None:
    store = MemoryStore()
    await store.put([r.to_new() for r in make_records(20)])
    pair = _pair()
    (r1, p1), (r2, p2) = await _pages(store, pair, 10, 2)
    m = PullMachine(pair, page_limit=10)
    m.next_request()
    m.receive_page(p1)
    assert m.receive_next_page(r2, p2) is not None
    m.commit_failed(StoreError("disk full"))
    assert m.state is MachineState.BACKING_OFF
    assert m.cursor is None
    m.backoff_elapsed()
    assert m.next_request() == r1  # the same pages are asked for again


async def test_machine_refuses_to_fold_what_it_would_not_ask_for_and_bad_pages() -> None:
    store = MemoryStore()
    recs = make_records(30)
    await store.put([r.to_new() for r in recs[:10]])
    forged = attrs.evolve(recs[10].to_new(), sig=OTHER_KEY.sign(recs[10].cid.raw))
    await store.put([forged] + [r.to_new() for r in recs[11:20]])
    pair = _pair()
    src = FakeSource(store)
    m = PullMachine(pair, page_limit=10)
    r1 = m.next_request()
    assert r1 is not None
    ev = m.receive_page(await src.fetch(pair, r1))
    assert isinstance(ev, PageAccepted)
    r2 = attrs.evolve(r1, since=ev.cursor)
    bad = await src.fetch(pair, r2)
    # another request than the one that follows, or a bad page: not folded, nothing changes
    assert m.receive_next_page(r1, bad) is None
    assert m.receive_next_page(attrs.evolve(r2, limit=5), bad) is None
    assert m.receive_next_page(r2, bad) is None  # a forged signature
    assert m.receive_next_page(r2, {"records": []}) is None  # not a page
    assert m.state is MachineState.AWAITING_COMMIT
    assert ev.records == m._pending.records  # type: ignore[union-attr]
    m.commit_done()
    # fed the usual way, the bad page is rejected and named
    assert m.next_request() == r2
    rejected = m.receive_page(bad)
    assert isinstance(rejected, PageRejected)
    assert rejected.code == "BAD_SIGNATURE"
    assert Cursor.decode(m.cursor or "").seq == 10


async def test_machine_does_not_fold_past_a_deferred_action_or_a_caught_up_page() -> None:
    store = MemoryStore()
    await store.put([r.to_new() for r in make_records(15)])
    pair = _pair()
    (_r1, p1), (r2, p2) = await _pages(store, pair, 10, 2)
    m = PullMachine(pair, page_limit=10)
    m.next_request()
    m.receive_page(p1)
    assert m.pause() is None  # deferred until the commit
    assert m.receive_next_page(r2, p2) is None
    m.commit_done()
    assert m.state is MachineState.PAUSED
    # the second page says has_more=False: nothing can follow it in the same commit
    m2 = PullMachine(pair, page_limit=10)
    m2.next_request()
    m2.receive_page(p1)
    ev = m2.receive_next_page(r2, p2)
    assert ev is not None
    assert not ev.has_more
    assert m2.receive_next_page(attrs.evolve(r2, since=ev.cursor), p2) is None


# --- the puller: multi-page transactions ----------------------------------------------


class CountingStore(MemoryStore):
    """A MemoryStore that remembers how many records each transaction stored
    (``sizes``) and can fail page commits (``fail_next``); given the ``source``, it
    also checks after every transaction that the stored cursor never passes a
    record that is not stored (``violations``)."""

    def __init__(self, source: MemoryStore | None = None) -> None:
        super().__init__()
        self.source = source
        self.sizes: list[int] = []
        self.fail_next = 0
        self.violations: list[str] = []

    async def transact(self, fn: Callable[[StateTx], Any]) -> Any:
        puts: list[int] = []

        def counted(tx: StateTx) -> Any:
            real = tx.put_records

            def put_records(records: Any) -> Any:
                puts.append(len(records))
                return real(records)

            tx.put_records = put_records  # type: ignore[method-assign]
            out = fn(tx)
            if self.fail_next and puts:  # a page commit, not a pair row
                self.fail_next -= 1
                raise StoreError("disk full")
            return out

        result = await super().transact(counted)
        if puts:
            self.sizes.append(sum(puts))
        if self.source is not None:
            await self._check_cursor(self.source)
        return result

    async def _check_cursor(self, source: MemoryStore) -> None:
        have = set(await cids(self))
        for _key, row in await self.list_state("pairs"):
            cursor = row.get("cursor")
            if not cursor:
                continue
            seq = Cursor.decode(str(cursor)).seq
            page = await source.changes(0, seq)
            missing = [r.cid for r in page.records if r.cid not in have]
            if missing:
                self.violations.append(f"cursor at {seq} but {len(missing)} records missing")


async def test_pages_ready_behind_a_page_commit_together(nursery: anyio.abc.TaskGroup) -> None:
    source_store = MemoryStore()
    target = CountingStore(source_store)
    opts = SyncOptions(page_limit=10, commit_max_records=40, commit_wait_s=5.0, seed=3)
    env = await start_env(nursery, opts, target)
    env.source_store = source_store
    env.source.store = source_store
    recs = make_records(95)
    await source_store.put([r.to_new() for r in recs])
    pair = await env.create()
    done = await env.wait(pair.id, lambda p: caught_up(p) and p.stats.records == 95)
    assert await cids(target) == [r.cid.raw for r in recs]
    assert Cursor.decode(done.cursor or "").seq == 95
    assert sum(target.sizes) == 95
    assert max(target.sizes) > 10  # several pages in one transaction
    assert max(target.sizes) <= 40  # never more than commit_max_records
    assert len(target.sizes) < 10  # fewer transactions than pages
    assert not target.violations
    # one page event per page, as before
    assert [e.records for e in env.events if e.kind == "page"][:10] == [10] * 9 + [5]
    env.manager.stop()


async def test_a_failed_multi_page_commit_stores_nothing_and_is_retried(
    nursery: anyio.abc.TaskGroup,
) -> None:
    source_store = MemoryStore()
    target = CountingStore(source_store)
    target.fail_next = 1
    opts = SyncOptions(
        page_limit=10,
        commit_max_records=100,
        commit_wait_s=5.0,
        backoff=Backoff(base_s=0.01, cap_s=0.02),
    )
    env = await start_env(nursery, opts, target)
    env.source.store = source_store
    recs = make_records(50)
    await source_store.put([r.to_new() for r in recs])
    pair = await env.create()
    failing = await env.wait(pair.id, lambda p: p.state is PairState.FAILING)
    assert failing.cursor is None
    assert failing.last_error is not None
    assert failing.last_error.code == "STORE_ERROR"
    done = await env.wait(pair.id, lambda p: caught_up(p) and p.stats.records == 50)
    assert await cids(target) == [r.cid.raw for r in recs]
    assert Cursor.decode(done.cursor or "").seq == 50
    assert not target.violations
    env.manager.stop()


def watch_folds(monkeypatch: pytest.MonkeyPatch) -> list[anyio.Event]:
    """Events set when a puller starts folding (an accepted page waits for the next;
    not the first page of a catch-up, which is committed at once)."""
    folding: list[anyio.Event] = [anyio.Event()]
    real = _puller.Puller._fold_ready

    async def fold(self: _puller.Puller, ev: PageAccepted, *, eager: bool = False) -> PageAccepted:
        if not eager:
            folding[0].set()
        return await real(self, ev, eager=eager)

    monkeypatch.setattr(_puller.Puller, "_fold_ready", fold)
    return folding


class GatedSource(FakeSource):
    """Answers requests with ``since`` at or past ``gate_seq`` only once ``gate`` is set."""

    def __init__(self, store: MemoryStore, gate_seq: int) -> None:
        super().__init__(store)
        self.gate = anyio.Event()
        self.gate_seq = gate_seq
        self.held = anyio.Event()

    async def fetch(self, pair: Pair, request: Any) -> object:
        if request.since is not None and Cursor.decode(request.since).seq >= self.gate_seq:
            self.held.set()
            await self.gate.wait()
        return await super().fetch(pair, request)


class AfterFirstCommit(GatedSource):
    """A :class:`GatedSource` that also answers the second page (``since`` = seq 10)
    only once ``first_commit`` is set: the first page of a catch-up is committed at
    once and alone, and the second then waits to fold the third (held at ``gate_seq``)."""

    def __init__(self, store: MemoryStore, gate_seq: int) -> None:
        super().__init__(store, gate_seq)
        self.first_commit = anyio.Event()

    def listener(self, ev: SyncEvent) -> None:
        if ev.kind == "page":
            self.first_commit.set()

    async def fetch(self, pair: Pair, request: Any) -> object:
        if request.since is not None and Cursor.decode(request.since).seq == 10:
            await self.first_commit.wait()
        return await super().fetch(pair, request)


async def test_cancel_between_pages_loses_nothing_and_the_cursor_stays_behind(
    nursery: anyio.abc.TaskGroup, monkeypatch: pytest.MonkeyPatch
) -> None:
    folding = watch_folds(monkeypatch)
    source_store = MemoryStore()
    recs = make_records(60)
    await source_store.put([r.to_new() for r in recs])
    target = CountingStore(source_store)
    source = AfterFirstCommit(source_store, gate_seq=20)
    opts = SyncOptions(page_limit=10, commit_max_records=60, commit_wait_s=10.0)
    events: list[SyncEvent] = []
    manager = PairManager(target, local_did=LOCAL_DID, source=source, options=opts)
    manager.add_listener(events.append)
    manager.add_listener(source.listener)
    async with anyio.create_task_group() as tg:
        await tg.start(manager.run)
        pair, _ = await manager.create(
            peer_did=SRC_KEY.did, peer_url="http://127.0.0.1:9", credential=None
        )
        with anyio.fail_after(30):
            await source.held.wait()  # page 3 held back
            await folding[0].wait()  # page 2 accepted, waiting to fold what follows
        # the first page of a catch-up is committed at once, page 2 waits to fold
        assert [e.records for e in events if e.kind == "page"] == [10]
        manager.stop()  # node shutdown while the fold waits for page 3
    assert await target.count() == 10  # the folded page was never committed...
    row = await target.get_state("pairs", pair.id)
    assert row is not None
    assert Cursor.decode(row["cursor"]).seq == 10  # ...and the cursor stayed before it
    # a restarted node pulls everything, once
    source.gate.set()
    manager2 = PairManager(target, local_did=LOCAL_DID, source=source, options=opts)
    await nursery.start(manager2.run)
    with anyio.fail_after(30):
        done = await manager2.wait_for(pair.id, lambda p: caught_up(p) and p.stats.records == 60)
    assert await cids(target) == [r.cid.raw for r in recs]
    assert Cursor.decode(done.cursor or "").seq == 60
    assert not target.violations
    manager2.stop()


async def test_a_user_action_does_not_wait_for_the_fold(
    nursery: anyio.abc.TaskGroup, monkeypatch: pytest.MonkeyPatch
) -> None:
    folding = watch_folds(monkeypatch)
    source_store = MemoryStore()
    await source_store.put([r.to_new() for r in make_records(40)])
    source = AfterFirstCommit(source_store, gate_seq=20)
    opts = SyncOptions(page_limit=10, commit_wait_s=10.0)
    manager = PairManager(MemoryStore(), local_did=LOCAL_DID, source=source, options=opts)
    manager.add_listener(source.listener)
    await nursery.start(manager.run)
    pair, _ = await manager.create(
        peer_did=SRC_KEY.did, peer_url="http://127.0.0.1:9", credential=None
    )
    with anyio.fail_after(30):
        # page 1 (the first of the catch-up) is committed at once; page 2 accepted,
        # waiting to fold page 3 (held back)
        await folding[0].wait()
    with anyio.fail_after(5):  # well under commit_wait_s: the pause cuts the wait short
        paused = await manager.act(pair.id, PairAction.PAUSE)
    assert paused.state is PairState.PAUSED
    assert Cursor.decode(manager.get(pair.id).cursor or "").seq == 20  # page 2 committed
    assert await manager.store.count() == 20
    manager.stop()


# --- pipelining: a bad page stops the pair, nothing after it is stored -------------------


async def test_a_bad_page_in_the_pipeline_stores_the_pages_before_it_and_none_after(
    nursery: anyio.abc.TaskGroup,
) -> None:
    source_store = MemoryStore()
    target = CountingStore(source_store)
    opts = SyncOptions(
        page_limit=10,
        pipeline_depth=6,
        commit_max_records=100,
        commit_wait_s=5.0,
        backoff=Backoff(base_s=60),
    )
    env = await start_env(nursery, opts, target)
    env.source.store = source_store
    recs = make_records(60)
    forged = attrs.evolve(recs[25].to_new(), sig=OTHER_KEY.sign(recs[25].cid.raw))
    await source_store.put([r.to_new() for r in recs[:25]] + [forged])
    await source_store.put([r.to_new() for r in recs[26:]])
    pair = await env.create()
    failing = await env.wait(pair.id, lambda p: p.state is PairState.FAILING)
    assert failing.last_error is not None
    assert failing.last_error.code == "BAD_SIGNATURE"
    assert Cursor.decode(failing.cursor or "").seq == 20
    # pages 1-2 stored; page 3 (bad) and pages 4-6 (fetched ahead, clean) are not
    assert await cids(target) == [r.cid.raw for r in recs[:20]]
    assert len(env.source.requests) > 3  # later pages had been fetched
    row = await target.get_state("pairs", pair.id)
    assert row is not None
    assert Cursor.decode(str(row["cursor"])).seq == 20
    assert not target.violations
    env.manager.stop()


# --- one signature pool per node --------------------------------------------------------


async def test_pool_serves_requests_in_arrival_order_across_pairs() -> None:
    """Pair B's slice, queued behind two of pair A's, runs before A's later ones."""
    workers = _SignatureWorkers(1)
    limiter = anyio.CapacityLimiter(1)
    jobs = make_jobs(300)
    expected = verify_batch(jobs)
    order: list[str] = []
    try:

        async def one(name: str, user: object) -> None:
            assert await workers.check(jobs, limiter, user=user) == expected
            order.append(name)

        a, b = object(), object()
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for name, user in [("a1", a), ("a2", a), ("b1", b), ("a3", a), ("a4", a)]:
                    tg.start_soon(one, name, user)
                    await anyio.wait_all_tasks_blocked()  # queued before the next one
        assert order == ["a1", "a2", "b1", "a3", "a4"]
        assert len(workers._procs) == 1
        await workers.done_with(a)
        assert workers._procs  # b has not caught up yet: keep the worker
        await workers.done_with(b)
        assert not workers._procs  # nobody is catching up: stopped
    finally:
        await workers.aclose()


@pytest.mark.parametrize("cancel", [False, True])
async def test_pairs_share_one_pool_that_stops_with_the_manager(
    cancel: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[Any] = []
    live: list[int] = []
    one_started = anyio.Event()
    real_start = _SignatureWorkers._start

    async def counting_start(self: _SignatureWorkers) -> Any:
        proc = await real_start(self)
        started.append(proc)
        live.append(len(self._procs))
        one_started.set()
        return proc

    monkeypatch.setattr(_SignatureWorkers, "_start", counting_start)
    keys = [SigningKey.from_seed(bytes([0x40 + i]) * 32) for i in range(3)]
    now = int(time.time() * 1000) - 60_000
    stores = []
    for key in keys:
        s = MemoryStore()
        await s.put(
            [
                build_record(
                    key, namespace="app", thread="t", kind="k", body=i, now_ms=now
                ).to_new()
                for i in range(1200)
            ]
        )
        stores.append(s)

    class MultiSource:
        async def fetch(self, pair: Pair, request: Any) -> object:
            i = [k.did for k in keys].index(pair.peer_did)
            return await FakeSource(stores[i]).fetch(pair, request)

    target = MemoryStore()
    opts = SyncOptions(page_limit=600, verify_threads=2, commit_wait_s=0.0)
    manager = PairManager(target, local_did=LOCAL_DID, source=MultiSource(), options=opts)
    assert manager._workers.size == min(2, os.cpu_count() or 1)
    async with anyio.create_task_group() as tg:
        await tg.start(manager.run)
        pairs = [
            (
                await manager.create(
                    peer_did=k.did, peer_url=f"http://127.0.0.{i + 2}:9", credential=None
                )
            )[0]
            for i, k in enumerate(keys)
        ]
        with anyio.fail_after(120):
            if cancel:
                await one_started.wait()  # workers are running: cancel mid catch-up
                tg.cancel_scope.cancel()
            else:
                for p in pairs:
                    await manager.wait_for(p.id, lambda q: caught_up(q) and q.stats.records == 1200)
                manager.stop()
    # all pairs used the one pool: never more live processes than its size
    assert started
    assert max(live) <= manager._workers.size
    assert not manager._workers._procs
    assert all(p.returncode is not None for p in started)  # stopped and reaped
    if not cancel:
        assert await target.count() == 3600


async def test_pool_size_never_exceeds_its_processes(nursery: anyio.abc.TaskGroup) -> None:
    workers = _SignatureWorkers(2)
    limiter = anyio.CapacityLimiter(8)
    jobs = make_jobs(400)
    peak = 0

    async def one() -> None:
        nonlocal peak
        assert await workers.check(jobs, limiter) == verify_batch(jobs)
        peak = max(peak, len(workers._procs))

    try:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for _ in range(6):
                    tg.start_soon(one)
        assert 1 <= peak <= 2
    finally:
        await workers.aclose()
    await anyio.lowlevel.checkpoint()


class SlowCommitStore(MemoryStore):
    """A MemoryStore whose transactions wait for ``gate`` once ``hold`` is set (a slow disk)."""

    def __init__(self) -> None:
        super().__init__()
        self.hold = False
        self.gate = anyio.Event()
        self.waiting = anyio.Event()

    async def transact(self, fn: Callable[[StateTx], Any]) -> Any:
        if self.hold and not self.gate.is_set():
            self.waiting.set()
            await self.gate.wait()
        return await super().transact(fn)


async def test_a_fast_peer_cannot_make_a_puller_hold_more_than_pipeline_depth_pages(
    nursery: anyio.abc.TaskGroup,
) -> None:
    """While a commit is slow, the puller fetches ahead only ``pipeline_depth`` pages,
    however fast the source answers: the pages (and signature checks) it holds stay
    bounded, whatever the peer has to send."""
    depth = 3
    target = SlowCommitStore()
    opts = SyncOptions(
        page_limit=10,
        pipeline_depth=depth,
        commit_max_records=10,  # one page per commit: no folding
        commit_wait_s=0,
        verify_processes=False,
        seed=5,
    )
    env = await start_env(nursery, opts, target)
    try:
        recs = make_records(200)
        await env.source_store.put([r.to_new() for r in recs])
        pair = await env.create()
        target.hold = True  # before the puller's first step: its first commit waits
        with anyio.fail_after(30):
            await target.waiting.wait()  # the first page's commit is stuck
            while len(env.source.requests) < 1 + depth:
                await env.source.fetched.wait()
        for _ in range(500):  # every task gets many turns: a runaway fetcher would show
            await anyio.lowlevel.checkpoint()
        assert len(env.source.requests) == 1 + depth  # the committing page + depth ahead
        target.gate.set()
        done = await env.wait(pair.id, lambda p: caught_up(p) and p.stats.records == 200)
        assert await cids(target) == [r.cid.raw for r in recs]
        assert Cursor.decode(done.cursor or "").seq == 200
    finally:
        target.gate.set()
        env.manager.stop()


async def test_pairs_catching_up_at_once_split_the_records_in_flight(
    nursery: anyio.abc.TaskGroup,
) -> None:
    """``max_records_in_flight`` is the node's, not each pair's: a pair asks pages
    of ``budget // (pairs catching up * (pipeline_depth + 1))`` records (at least
    100: the page it commits and the pages ahead), so the memory of many pairs
    catching up together stays bounded."""
    opts = SyncOptions(
        page_limit=1000,
        pipeline_depth=2,
        max_records_in_flight=1200,
        commit_max_records=100,  # one page per commit: no folding
        commit_wait_s=0,
        verify_processes=False,
        seed=9,
    )
    target = SlowCommitStore()
    env = await start_env(nursery, opts, target)
    try:
        recs = make_records(1000)
        await env.source_store.put([r.to_new() for r in recs])
        workers = env.manager._workers
        # Three other pairs of this node are catching up (registered as the real ones are).
        others = [object(), object(), object()]
        for other in others:
            workers.behind(other)
        pair = await env.create()
        target.hold = True  # before the puller's first step: its first commit waits
        with anyio.fail_after(30):
            await target.waiting.wait()
            while len(env.source.requests) < 3:
                await env.source.fetched.wait()
        # 1200 // (4 pairs * (depth 2 + 1)) = 100 records a page, not the 1000 asked
        assert [r.limit for r in env.source.requests] == [100, 100, 100]
        for other in others:
            await workers.done_with(other)
        target.gate.set()
        # alone now: 1200 // (1 * 3) = 400
        done = await env.wait(pair.id, lambda p: caught_up(p) and p.stats.records == 1000)
        limits = [r.limit for r in env.source.requests if r.feed == "normal"]
        assert limits[-1] == 400, limits
        assert set(limits) <= {100, 400}, limits
        assert await cids(env.target) == [r.cid.raw for r in recs]
        assert Cursor.decode(done.cursor or "").seq == 1000
        # a longpoll (caught up: few records) keeps the page limit
        assert env.source.requests[-1].feed == "longpoll"
        assert env.source.requests[-1].limit == 1000
    finally:
        target.gate.set()
        env.manager.stop()


async def test_a_failing_pair_does_not_take_a_share_of_the_records_in_flight(
    nursery: anyio.abc.TaskGroup,
) -> None:
    """A pair whose peer is away holds no page while it backs off: a pair that is
    catching up meanwhile gets the whole budget (1200 // (depth 2 + 1) = 400 a page)."""
    opts = SyncOptions(
        page_limit=1000,
        pipeline_depth=2,
        max_records_in_flight=1200,
        backoff=Backoff(base_s=3600, cap_s=3600),
        verify_processes=False,
        seed=10,
    )
    env = await start_env(nursery, opts)
    try:
        await env.source_store.put([r.to_new() for r in make_records(1000)])
        env.source.fail = PeerUnreachable("the peer is away")
        away = await env.create()
        await env.wait(away.id, lambda p: p.state is PairState.FAILING)
        env.source.fail = None
        first = len(env.source.requests)
        pair = await env.create(peer_did=OTHER_KEY.did)
        done = await env.wait(pair.id, lambda p: caught_up(p) and p.stats.records == 1000)
        assert done.id != away.id
        limits = [r.limit for r in env.source.requests[first:] if r.feed == "normal"]
        assert limits, env.source.requests
        assert set(limits) == {400}, limits
        assert env.manager.get(away.id).state is PairState.FAILING
    finally:
        env.manager.stop()


async def test_folding_pages_stays_within_the_in_flight_share(
    nursery: anyio.abc.TaskGroup,
) -> None:
    """Folding pages into one commit (commit_max_records, 5000 by default) holds
    records too: when pairs share the budget, a pair folds no more than what its
    pages ahead leave of its share, so folding cannot undo the node-wide bound."""
    target = CountingStore()
    opts = SyncOptions(
        page_limit=1000,
        pipeline_depth=2,
        max_records_in_flight=1200,  # 4 pairs: 300 each, pages of 100, folds of 100
        verify_processes=False,
        seed=11,
    )
    env = await start_env(nursery, opts, target)
    try:
        recs = make_records(1000)
        await env.source_store.put([r.to_new() for r in recs])
        others = [object(), object(), object()]
        for other in others:
            env.manager._workers.behind(other)
        pair = await env.create()
        await env.wait(pair.id, lambda p: caught_up(p) and p.stats.records == 1000)
        stored = [n for n in target.sizes if n]
        assert sum(stored) == 1000
        assert max(stored) <= 100, stored  # 300 - 2 pages ahead * 100: one page a commit
        for other in others:
            await env.manager._workers.done_with(other)
    finally:
        env.manager.stop()


async def test_folding_works_when_the_budget_allows_it(nursery: anyio.abc.TaskGroup) -> None:
    """Alone, a pair still folds several pages into one commit (the bound leaves room)."""
    target = CountingStore()
    opts = SyncOptions(page_limit=100, pipeline_depth=2, verify_processes=False, seed=12)
    env = await start_env(nursery, opts, target)
    try:
        await env.source_store.put([r.to_new() for r in make_records(1000)])
        pair = await env.create()
        await env.wait(pair.id, lambda p: caught_up(p) and p.stats.records == 1000)
        assert sum(target.sizes) == 1000
        assert max(target.sizes) > 100, target.sizes  # at least one commit folded pages
    finally:
        env.manager.stop()


async def test_a_page_with_more_records_than_asked_is_refused(
    nursery: anyio.abc.TaskGroup,
) -> None:
    """A source that ignores the (shared-down) limit cannot make a pair hold more:
    its page is PAGE_INVALID and nothing of it is stored."""
    opts = SyncOptions(
        page_limit=1000,
        pipeline_depth=2,
        max_records_in_flight=300,  # pages of 100
        backoff=Backoff(base_s=3600, cap_s=3600),
        verify_processes=False,
        seed=13,
    )
    env = await start_env(nursery, opts)
    try:
        await env.source_store.put([r.to_new() for r in make_records(300)])
        real_fetch = env.source.fetch

        async def greedy(pair: Pair, request: Any) -> object:
            return await real_fetch(pair, attrs.evolve(request, limit=1000))

        env.source.fetch = greedy  # type: ignore[method-assign]
        pair = await env.create()
        failed = await env.wait(pair.id, lambda p: p.last_error is not None)
        assert failed.last_error is not None
        assert failed.last_error.code == "PAGE_INVALID"
        assert "100 were asked for" in failed.last_error.message
        assert await env.target.count() == 0
    finally:
        env.manager.stop()


async def test_a_catch_up_starts_with_a_small_page_and_doubles_it(
    nursery: anyio.abc.TaskGroup,
) -> None:
    """Slow start: the first page of a catch-up asks 500 records, each next one
    twice as many up to ``page_limit``, so the first records land (and the
    signature checks start) after a small page, not a full one. Being caught up
    (a longpoll) starts the ramp again for the next catch-up."""
    opts = SyncOptions(
        page_limit=4000,
        pipeline_depth=2,
        max_records_in_flight=100_000,  # the in-flight share never binds here
        commit_wait_s=10.0,  # folding may wait long; the catch-up's first page does not
        verify_processes=False,
        seed=11,
    )
    env = await start_env(nursery, opts)
    try:
        recs = make_records(15_000)
        await env.source_store.put([r.to_new() for r in recs[:9000]])
        pair = await env.create()
        await env.wait(pair.id, lambda p: caught_up(p) and p.stats.records == 9000)
        limits = [r.limit for r in env.source.requests if r.feed == "normal"]
        assert limits == [500, 1000, 2000, 4000, 4000], limits  # 500+1000+2000+4000, then 1500
        with anyio.fail_after(30):
            while env.source.requests[-1].feed != "longpoll":  # parked in its longpoll
                await env.source.fetched.wait()
        first = len(env.source.requests)
        await env.source_store.put([r.to_new() for r in recs[9000:]])
        with anyio.fail_after(5):  # the longpoll's answer is committed without a fold wait
            await env.manager.wait_for(pair.id, lambda p: p.stats.records >= 13_000)
        await env.wait(pair.id, lambda p: caught_up(p) and p.stats.records == 15_000)
        # the longpoll answers 4000 of the 6000 (its limit); the rest: 500, then 1000, ...
        limits = [r.limit for r in env.source.requests[first:] if r.feed == "normal"]
        assert limits == [500, 1000, 2000], limits
        assert await cids(env.target) == [r.cid.raw for r in recs]
    finally:
        env.manager.stop()


async def test_the_first_page_of_a_catch_up_is_committed_at_once(
    nursery: anyio.abc.TaskGroup,
) -> None:
    """Folding waits up to ``commit_wait_s`` for the next pages, but not for the first
    page of a catch-up: its records show as soon as they are verified. Here the
    second page is held and the wait is 10 s; the first page lands anyway."""
    source_store = MemoryStore()
    recs = make_records(30)
    await source_store.put([r.to_new() for r in recs])
    source = GatedSource(source_store, gate_seq=10)
    opts = SyncOptions(page_limit=10, commit_max_records=30, commit_wait_s=10.0)
    events: list[SyncEvent] = []
    manager = PairManager(MemoryStore(), local_did=LOCAL_DID, source=source, options=opts)
    manager.add_listener(events.append)
    await nursery.start(manager.run)
    pair, _ = await manager.create(
        peer_did=SRC_KEY.did, peer_url="http://127.0.0.1:9", credential=None
    )
    with anyio.fail_after(5):  # well under commit_wait_s
        await source.held.wait()
        first = await manager.wait_for(pair.id, lambda p: p.stats.records > 0)
    assert first.stats.records == 10
    assert await cids(manager.store) == [r.cid.raw for r in recs[:10]]
    source.gate.set()
    with anyio.fail_after(30):
        await manager.wait_for(pair.id, lambda p: caught_up(p) and p.stats.records == 30)
    assert await cids(manager.store) == [r.cid.raw for r in recs]
    manager.stop()


@pytest.mark.parametrize("depth", [1, 3])
async def test_the_ramp_reaches_the_page_size_at_any_pipeline_depth(
    nursery: anyio.abc.TaskGroup, depth: int
) -> None:
    """With ``pipeline_depth=1`` nothing is fetched ahead, so every commit starts
    the next fetch itself: that must not count as a new catch-up."""
    opts = SyncOptions(
        page_limit=4000,
        pipeline_depth=depth,
        max_records_in_flight=100_000,
        verify_processes=False,
        seed=12,
    )
    env = await start_env(nursery, opts)
    try:
        await env.source_store.put([r.to_new() for r in make_records(12_000)])
        pair = await env.create()
        await env.wait(pair.id, lambda p: caught_up(p) and p.stats.records == 12_000)
        limits = [r.limit for r in env.source.requests if r.feed == "normal"]
        assert limits[:5] == [500, 1000, 2000, 4000, 4000], limits
    finally:
        env.manager.stop()


class _FailsOnce(FakeSource):
    """Fails its ``fail_at``-th request (1-based) once, as an unreachable peer."""

    def __init__(self, store: MemoryStore, fail_at: int) -> None:
        super().__init__(store)
        self.fail_at = fail_at

    async def fetch(self, pair: Pair, request: Any) -> object:
        if len(self.requests) + 1 == self.fail_at:
            self.requests.append(request)
            raise PeerUnreachable("the peer went away for a moment")
        return await super().fetch(pair, request)


async def test_a_failed_fetch_starts_the_ramp_again(nursery: anyio.abc.TaskGroup) -> None:
    """After an error (and its backoff) the catch-up starts small again, as after
    a lost connection: 500, 1000, 2000, then 500 again."""
    opts = SyncOptions(
        page_limit=4000,
        pipeline_depth=1,
        max_records_in_flight=100_000,
        backoff=Backoff(base_s=0.01, cap_s=0.01),
        verify_processes=False,
        seed=13,
    )
    env = await start_env(nursery, opts, source_type=partial(_FailsOnce, fail_at=4))
    try:
        recs = make_records(8000)
        await env.source_store.put([r.to_new() for r in recs])
        pair = await env.create()
        done = await env.wait(pair.id, lambda p: caught_up(p) and p.stats.records == 8000)
        limits = [r.limit for r in env.source.requests if r.feed == "normal"]
        assert limits[:6] == [500, 1000, 2000, 4000, 500, 1000], limits
        assert done.stats.errors_total == 1
        assert await cids(env.target) == [r.cid.raw for r in recs]
    finally:
        env.manager.stop()
