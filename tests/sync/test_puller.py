"""The pull driver and the pair manager, against an in-memory source (no sockets).

The source here is a MemoryStore served through the real page builder, so the
driver, the machine and the stores are real; only HTTP is left out (the e2e
tests in tests/peer/test_sync_e2e.py cover it). Timing tests run on a virtual
clock (trio's autojump clock, or tests/virtual_time.py on asyncio); nothing
sleeps to synchronise.
"""

from __future__ import annotations

import itertools
import math
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import attrs
import pytest

from fedpeer.errors import (
    BadSignature,
    FedpeerError,
    PairNotFound,
    PairSelf,
    PairStateInvalid,
    PeerUnreachable,
    RateLimited,
    StoreError,
    TokenInvalid,
)
from fedpeer.identity.canonical import CID, cid_for_dagcbor
from fedpeer.identity.keys import SigningKey
from fedpeer.store import MemoryStore
from fedpeer.store.base import StateTx, Store
from fedpeer.sync._machine import PageRequest, PullMachine
from fedpeer.sync._puller import _VerifiedMachine, _verify_chunk
from fedpeer.sync.backoff import Backoff
from fedpeer.sync.feed import Cursor, build_page, page_to_wire, resolve_cursor
from fedpeer.sync.manager import PairManager
from fedpeer.sync.options import SyncEvent, SyncOptions
from fedpeer.sync.pairs import Pair, PairAction, PairFilter, PairState, make_pair
from fedpeer.sync.records import DEFAULT_LIMITS, SignedRecord, build_record, record_to_wire

SRC_KEY = SigningKey.from_seed(b"\x01" * 32)
OTHER_KEY = SigningKey.from_seed(b"\x02" * 32)
LOCAL_DID = SigningKey.from_seed(b"\x03" * 32).did
NOW_MS = int(time.time() * 1000) - 3_600_000


VIRTUAL = 100_000.0  # fail_after bound for autojump-clock tests (virtual seconds)


def make_records(
    n: int, *, key: SigningKey = SRC_KEY, ns: str = "app", start: int = 0
) -> list[SignedRecord]:
    return [
        build_record(
            key,
            namespace=ns,
            thread=f"t{i % 3}",
            kind="note",
            body={"i": i},
            ts=NOW_MS + i,
            now_ms=NOW_MS + i,
        )
        for i in range(start, start + n)
    ]


class FakeSource:
    """A PageSource over a MemoryStore: real page building, no HTTP."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.fail: FedpeerError | None = None
        self.requests: list[PageRequest] = []
        self.fetched = anyio.Event()

    async def fetch(self, pair: Pair, request: PageRequest) -> object:
        self.requests.append(request)
        self.fetched.set()
        self.fetched = anyio.Event()
        await anyio.lowlevel.checkpoint()
        if self.fail is not None:
            raise self.fail
        store = self.store
        head = await store.head_seq()
        since = await resolve_cursor(store, request.since)
        if request.feed == "longpoll" and since >= head:
            await store.wait_for_seq(since)
        flt = PairFilter(request.namespace, request.thread).to_change_filter()
        page = await store.changes(since, request.limit, flt)
        return page_to_wire(build_page(page, epoch=store.epoch, key=store.cursor_key))


@attrs.define
class Env:
    source_store: MemoryStore
    target: MemoryStore
    source: FakeSource
    manager: PairManager
    events: list[SyncEvent]
    timeout: float = 30.0

    async def create(self, **kw: Any) -> Pair:
        args: dict[str, Any] = {
            "peer_did": SRC_KEY.did,
            "peer_url": "http://127.0.0.1:9",
            "credential": None,
        }
        args.update(kw)
        pair, created = await self.manager.create(**args)
        assert created
        return pair

    async def wait(self, pair_id: str, pred: Callable[[Pair], bool]) -> Pair:
        with anyio.fail_after(self.timeout):
            return await self.manager.wait_for(pair_id, pred)


async def start_env(
    nursery: anyio.abc.TaskGroup,
    options: SyncOptions,
    target: MemoryStore | None = None,
    *,
    timeout: float = 30.0,
    source_type: Callable[[MemoryStore], FakeSource] | None = None,
) -> Env:
    source_store = MemoryStore()
    target = target or MemoryStore()
    source = (source_type or FakeSource)(source_store)
    manager = PairManager(target, local_did=LOCAL_DID, source=source, options=options)
    events: list[SyncEvent] = []
    manager.add_listener(events.append)
    await nursery.start(manager.run)
    return Env(source_store, target, source, manager, events, timeout)


@pytest.fixture
async def env(nursery: anyio.abc.TaskGroup) -> AsyncIterator[Env]:
    e = await start_env(nursery, SyncOptions(page_limit=100, seed=7))
    yield e
    e.manager.stop()


def caught_up(p: Pair) -> bool:
    return p.state is PairState.CAUGHT_UP


async def cids(store: Store) -> list[bytes]:
    page = await store.changes(0, 100_000)
    return [r.cid for r in page.records]


# --- convergence, persistence ------------------------------------------------------------


async def test_pulls_everything_in_pages_and_stores_cursor_with_records(env: Env) -> None:
    recs = make_records(450)
    await env.source_store.put([r.to_new() for r in recs])
    pair = await env.create()
    done = await env.wait(pair.id, caught_up)
    assert await cids(env.target) == [r.cid.raw for r in recs]
    assert done.stats.records == 450
    assert done.stats.pages >= 5
    row = await env.target.get_state("pairs", pair.id)
    assert row is not None
    stored = Pair.from_dict(row)
    assert stored.cursor == done.cursor
    assert Cursor.decode(stored.cursor or "").seq == 450
    # normal while behind, longpoll once caught up
    feeds = [r.feed for r in env.source.requests]
    assert feeds[:5] == ["normal"] * 5
    assert feeds[-1] == "longpoll"
    assert [e.records for e in env.events if e.kind == "page"][:5] == [100] * 4 + [50]


async def test_new_record_reaches_a_caught_up_pair_through_the_longpoll(env: Env) -> None:
    pair = await env.create()
    await env.wait(pair.id, caught_up)
    rec = make_records(1, start=1000)[0]
    await env.source_store.put([rec.to_new()])
    with anyio.fail_after(10):
        await env.target.wait_for_seq(0)
    assert await cids(env.target) == [rec.cid.raw]


async def test_records_and_cursor_commit_together_or_not_at_all(
    nursery: anyio.abc.TaskGroup,
) -> None:
    class FlakyStore(MemoryStore):
        fail_next = 0

        async def transact(self, fn: Callable[[StateTx], Any]) -> Any:
            if self.fail_next:
                self.fail_next -= 1

                def boom(tx: StateTx) -> None:
                    fn(tx)  # records and row written, then the commit fails: rolled back
                    raise StoreError("disk full")

                return await super().transact(boom)
            return await super().transact(fn)

    target = FlakyStore()
    env = await start_env(
        nursery, SyncOptions(page_limit=10, backoff=Backoff(base_s=0.01, cap_s=0.02)), target
    )
    await env.source_store.put([r.to_new() for r in make_records(25)])
    target.fail_next = 0
    pair = await env.create()
    await env.wait(pair.id, caught_up)
    # now fail the next page's commit
    await env.source_store.put([r.to_new() for r in make_records(5, start=100)])
    target.fail_next = 1
    failing = await env.wait(pair.id, lambda p: p.state is PairState.FAILING)
    assert failing.last_error is not None
    assert failing.last_error.code == "STORE_ERROR"
    assert Cursor.decode(failing.cursor or "").seq == 25
    assert await env.target.count() == 25
    done = await env.wait(pair.id, lambda p: caught_up(p) and p.stats.records == 30)
    assert Cursor.decode(done.cursor or "").seq == 30
    assert await env.target.count() == 30


async def test_manager_resumes_stored_pairs_from_their_cursor(nursery: anyio.abc.TaskGroup) -> None:
    target = MemoryStore()
    env1 = await start_env(nursery, SyncOptions(page_limit=50), target)
    recs = make_records(120)
    await env1.source_store.put([r.to_new() for r in recs[:100]])
    pair = await env1.create()
    await env1.wait(pair.id, caught_up)
    env1.manager.stop()
    # a new manager on the same store (a node restart) picks the pair up
    source = FakeSource(env1.source_store)
    manager = PairManager(target, local_did=LOCAL_DID, source=source)
    await nursery.start(manager.run)
    assert [p.id for p in manager.list()] == [pair.id]
    await env1.source_store.put([r.to_new() for r in recs[100:]])
    with anyio.fail_after(30):
        done = await manager.wait_for(pair.id, lambda p: caught_up(p) and p.stats.records == 120)
    assert source.requests[0].since == pair.cursor or source.requests[0].since is not None
    assert Cursor.decode(source.requests[0].since or "").seq == 100
    assert await cids(target) == [r.cid.raw for r in recs]
    assert done.stats.records == 120  # nothing pulled twice
    manager.stop()


# --- bad pages -----------------------------------------------------------------------


async def test_a_bad_record_rejects_the_whole_page(nursery: anyio.abc.TaskGroup) -> None:
    env = await start_env(nursery, SyncOptions(page_limit=10, backoff=Backoff(base_s=30)))
    recs = make_records(20)
    await env.source_store.put([r.to_new() for r in recs[:10]])
    pair = await env.create()
    await env.wait(pair.id, caught_up)
    cursor_before = env.manager.get(pair.id).cursor
    # the next page holds 9 good records and one with a signature by someone else
    bad = recs[14]
    forged = attrs.evolve(bad.to_new(), sig=OTHER_KEY.sign(bad.cid.raw))
    await env.source_store.put([r.to_new() for r in recs[10:14]] + [forged])
    await env.source_store.put([r.to_new() for r in recs[15:]])
    failing = await env.wait(pair.id, lambda p: p.state is PairState.FAILING)
    assert failing.last_error is not None
    assert failing.last_error.code == "BAD_SIGNATURE"
    assert failing.cursor == cursor_before
    assert await env.target.count() == 10
    row = await env.target.get_state("pairs", pair.id)
    assert row is not None
    assert row["cursor"] == cursor_before
    assert row["state"] == "failing"
    assert [e.code for e in env.events if e.kind == "rejected"] == ["BAD_SIGNATURE"]


# --- backoff, kick, errors (autojump clock: no sockets here) ---------------------------


async def test_backoff_grows_to_the_cap_and_kick_cuts_it_short(
    nursery: anyio.abc.TaskGroup, virtual_clock: None
) -> None:
    backoff = Backoff()  # the real policy: 1 s base, 5 min cap
    env = await start_env(nursery, SyncOptions(backoff=backoff, seed=3), timeout=VIRTUAL)
    env.source.fail = PeerUnreachable("down")
    pair = await env.create()
    p = await env.wait(pair.id, lambda p: p.retries >= 12)
    retries = [e for e in env.events if e.kind == "retry"]
    delays = [e.delay_s for e in retries]
    assert [e.pair.retries for e in retries] == list(range(1, len(retries) + 1))
    for attempt, d in enumerate(delays):
        assert d is not None
        low, high = backoff.bounds(attempt)
        assert low <= d <= high
    assert max(d for d in delays if d is not None) <= 300
    assert delays[9] is not None
    assert delays[9] >= 150
    # stats show the current backoff; the node waits it out (virtual time)
    assert p.stats.backoff_s == pytest.approx(retries[-1].delay_s, abs=0.001)
    assert p.stats.errors_last_hour(int(p.updated_ms)) >= 12
    assert env.manager.stats(pair.id)["current_backoff_s"] is not None
    # kick: the retry happens now, not in ~5 minutes
    t0 = anyio.current_time()
    n = len(env.source.requests)
    env.source.fail = None
    kicked = await env.manager.kick(pair.id)
    assert kicked.retries == 0
    assert kicked.state is PairState.RUNNING
    await env.wait(pair.id, caught_up)
    assert len(env.source.requests) > n
    assert anyio.current_time() - t0 < 1.0


async def test_backoff_expiry_resumes_without_a_kick(
    nursery: anyio.abc.TaskGroup, virtual_clock: None
) -> None:
    env = await start_env(nursery, SyncOptions(seed=5), timeout=VIRTUAL)
    env.source.fail = PeerUnreachable("down")
    pair = await env.create()
    await env.wait(pair.id, lambda p: p.retries >= 3)
    env.source.fail = None
    t0 = anyio.current_time()
    done = await env.wait(pair.id, caught_up)
    assert done.retries == 0
    assert done.last_error is None
    assert anyio.current_time() - t0 >= 1.99  # waited out the third backoff (>= 2 s)


async def test_rate_limited_waits_at_least_retry_after(
    nursery: anyio.abc.TaskGroup, virtual_clock: None
) -> None:
    env = await start_env(nursery, SyncOptions(seed=1), timeout=VIRTUAL)
    env.source.fail = RateLimited("slow down", retry_after=42.0)
    pair = await env.create()
    await env.wait(pair.id, lambda p: p.retries >= 1)
    assert env.events[-1].kind == "retry"
    assert env.events[-1].code == "RATE_LIMITED"
    assert env.events[-1].delay_s is not None
    assert env.events[-1].delay_s >= 42.0
    t0 = anyio.current_time()
    env.source.fail = None
    await env.wait(pair.id, caught_up)
    assert anyio.current_time() - t0 >= 41.9


async def test_401_stops_the_pair_until_a_new_credential_and_resume(
    nursery: anyio.abc.TaskGroup, virtual_clock: None
) -> None:
    env = await start_env(nursery, SyncOptions(), timeout=VIRTUAL)
    env.source.fail = TokenInvalid("unknown token")
    pair = await env.create(credential="fp_old")
    stopped = await env.wait(pair.id, lambda p: p.state is PairState.STOPPED)
    assert stopped.last_error is not None
    assert stopped.last_error.code == "TOKEN_INVALID"
    assert "credential" in stopped.last_error.message
    assert "resume" in stopped.last_error.message
    # it stays stopped: no request for a long (virtual) time
    n = len(env.source.requests)
    await anyio.sleep(3600)
    assert len(env.source.requests) == n
    with pytest.raises(PairStateInvalid):
        await env.manager.kick(pair.id)
    env.source.fail = None
    await env.manager.set_credential(pair.id, "fp_new")
    assert env.manager.get(pair.id).state is PairState.STOPPED
    await env.manager.resume(pair.id)
    done = await env.wait(pair.id, caught_up)
    assert done.credential == "fp_new"


async def test_cursor_reset_pulls_everything_again_without_duplicates(env: Env) -> None:
    recs = make_records(30)
    await env.source_store.put([r.to_new() for r in recs[:20]])
    pair = await env.create()
    await env.wait(pair.id, caught_up)
    # the source is wiped: a new store (new epoch) with the old and some new records
    fresh = MemoryStore()
    await fresh.put([r.to_new() for r in recs])
    env.source.store = fresh
    env.source.fail = None
    old_store = env.source_store
    await old_store.put([make_records(1, start=500)[0].to_new()])  # wake the longpoll
    done = await env.wait(pair.id, lambda p: caught_up(p) and p.stats.records >= 50)
    assert any(e.kind == "reset" and e.code == "CURSOR_RESET" for e in env.events)
    assert Cursor.decode(done.cursor or "").epoch == fresh.epoch
    got = await cids(env.target)
    assert sorted(got) == sorted(
        {r.cid.raw for r in recs} | {make_records(1, start=500)[0].cid.raw}
    )
    assert len(got) == len(set(got))
    audit = await env.target.audit_log()
    assert any(a.event.get("type") == "sync.cursor_reset" for a in audit)


# --- user actions ------------------------------------------------------------------------


async def test_pause_abandons_the_longpoll_and_resume_continues(env: Env) -> None:
    pair = await env.create()
    await env.wait(pair.id, caught_up)
    with anyio.fail_after(10):
        while env.source.requests[-1].feed != "longpoll":
            await env.source.fetched.wait()
    paused = await env.manager.pause(pair.id)
    assert paused.state is PairState.PAUSED
    row = await env.target.get_state("pairs", pair.id)
    assert row is not None
    assert row["state"] == "paused"
    rec = make_records(1, start=77)[0]
    await env.source_store.put([rec.to_new()])
    await anyio.wait_all_tasks_blocked()
    assert await env.target.count() == 0  # the abandoned longpoll's answer was not used
    with pytest.raises(PairStateInvalid):
        await env.manager.pause(pair.id)
    await env.manager.resume(pair.id)
    await env.wait(pair.id, lambda p: caught_up(p) and p.stats.records == 1)
    assert await cids(env.target) == [rec.cid.raw]


async def test_create_is_idempotent_and_delete_removes_the_row(env: Env) -> None:
    pair = await env.create()
    again, created = await env.manager.create(
        peer_did=SRC_KEY.did, peer_url="http://127.0.0.1:9", credential=None
    )
    assert not created
    assert again.id == pair.id
    other, created = await env.manager.create(
        peer_did=SRC_KEY.did,
        peer_url="http://127.0.0.1:9",
        credential=None,
        filter=PairFilter(namespace="app"),
    )
    assert created
    assert other.id != pair.id
    with pytest.raises(PairSelf):
        await env.manager.create(peer_did=LOCAL_DID, peer_url="http://127.0.0.1:9", credential=None)
    await env.manager.delete(pair.id)
    with pytest.raises(PairNotFound):
        env.manager.get(pair.id)
    assert await env.target.get_state("pairs", pair.id) is None
    assert [p.id for p in env.manager.list()] == [other.id]
    recreated, created = await env.manager.create(
        peer_did=SRC_KEY.did, peer_url="http://127.0.0.1:9", credential=None
    )
    assert created
    assert recreated.id == pair.id
    assert recreated.cursor is None


async def test_health_aggregates_pairs(env: Env) -> None:
    await env.source_store.put([r.to_new() for r in make_records(40)])
    a = await env.create()
    b = await env.create(filter=PairFilter(thread="t1"))
    await env.wait(a.id, caught_up)
    await env.wait(b.id, caught_up)
    await env.manager.pause(b.id)
    h = env.manager.health()
    assert h["pairs"] == 2
    assert h["by_state"] == {"running": 0, "caught_up": 1, "failing": 0, "paused": 1, "stopped": 0}
    assert h["records_last_hour"] == 40 + 13
    assert h["latency_p50_ms"] is not None
    assert h["latency_p95_ms"] is not None
    slowest = h["slowest"]
    assert isinstance(slowest, list)
    assert {s["id"] for s in slowest} == {a.id, b.id}
    assert h["most_failing"] == []
    assert h["status"] == "ok"
    stats = env.manager.stats(b.id)
    assert stats["records"] == 13
    assert stats["state"] == "paused"
    summary = await env.manager.health_summary()
    assert summary["pairs"] == 2
    assert summary["status"] == "ok"


# --- a puller that crashes on a bug ----------------------------------------------------


def _crash_pulls(monkeypatch: pytest.MonkeyPatch, *, crash: Callable[[int], bool]) -> list[float]:
    """Make ``Puller._pull`` raise RuntimeError (a bug) on the calls ``crash(n)`` picks
    (n counts from 1); returns the clock time of every call."""
    from fedpeer.sync._puller import Puller

    real_pull = Puller._pull
    calls: list[float] = []

    async def buggy_pull(self: Puller, request: PageRequest, seen: int) -> None:
        calls.append(anyio.current_time())
        if crash(len(calls)):
            raise RuntimeError("a bug in the pull path")
        await real_pull(self, request, seen)

    monkeypatch.setattr(Puller, "_pull", buggy_pull)
    return calls


async def test_a_crashed_puller_comes_back_failing_and_resumes_from_its_cursor(
    nursery: anyio.abc.TaskGroup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug that crashes a puller mid-catch-up no longer makes its pair vanish
    (PAIR_NOT_FOUND until the node restarts): the pair shows failing with INTERNAL,
    the node's health degraded, it waits its backoff (an hour here: nothing is
    pulled until the kick), and it resumes from its cursor, storing every record
    once. (Real clock: records are verified in worker threads, which a virtual
    clock would jump past.)"""
    calls = _crash_pulls(monkeypatch, crash=lambda n: n == 2)
    backoff = Backoff(base_s=3600, cap_s=3600)
    env = await start_env(nursery, SyncOptions(page_limit=100, seed=2, backoff=backoff))
    recs = make_records(1000)  # 10 pages: more than one pull can fold (pipeline_depth 2)
    await env.source_store.put([r.to_new() for r in recs])
    pair = await env.create()
    failing = await env.wait(pair.id, lambda p: p.state is PairState.FAILING)
    assert failing.last_error is not None
    assert failing.last_error.code == "INTERNAL"
    assert failing.retries == 1
    assert failing.cursor is not None  # the pages before the crash stayed committed
    assert 0 < len(await cids(env.target)) < len(recs)  # it crashed mid-catch-up
    assert env.manager.health()["status"] == "degraded"
    assert env.manager.stats(pair.id)["current_backoff_s"] is not None
    assert len(calls) == 2  # backing off: no pull since the crash
    await env.manager.kick(pair.id)
    done = await env.wait(pair.id, caught_up)
    assert await cids(env.target) == [r.cid.raw for r in recs]  # each once, in order
    assert done.retries == 0
    assert done.last_error is None
    row = await env.target.get_state("pairs", pair.id)
    assert row is not None
    assert Pair.from_dict(row).state is PairState.CAUGHT_UP


async def test_an_action_reaching_a_replaced_puller_lands_on_its_replacement(
    nursery: anyio.abc.TaskGroup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user action that looked up the pair's puller before it crashed, and reached
    its lock after the replacement took over, would change only the dead puller (a
    delete undone by the replacement's next save). The dead puller refuses it
    (PullerRetired) and the manager applies it to the replacement."""
    from fedpeer.sync._puller import PullerRetired

    _crash_pulls(monkeypatch, crash=lambda n: n == 2)
    env = await start_env(nursery, SyncOptions(seed=8, backoff=Backoff(base_s=3600, cap_s=3600)))
    await env.source_store.put([r.to_new() for r in make_records(5)])
    pair = await env.create()
    dead = env.manager.puller(pair.id)
    await env.wait(pair.id, lambda p: p.state is PairState.FAILING)
    assert env.manager.puller(pair.id) is not dead  # replaced
    with pytest.raises(PullerRetired):
        await dead.act(PairAction.PAUSE)
    real_lookup = env.manager.puller
    stale = [dead]

    def lookup(pair_id: str) -> Any:  # the first lookup is from before the crash
        return stale.pop() if stale else real_lookup(pair_id)

    monkeypatch.setattr(env.manager, "puller", lookup)
    deleted = await env.manager.delete(pair.id)
    assert deleted.state is PairState.DELETED
    monkeypatch.setattr(env.manager, "puller", real_lookup)
    with pytest.raises(PairNotFound):
        env.manager.get(pair.id)
    assert await env.target.get_state("pairs", pair.id) is None


async def test_a_puller_crashing_on_every_pull_backs_off_and_can_be_deleted(
    nursery: anyio.abc.TaskGroup, virtual_clock: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug hit on every request costs one attempt per backoff step (growing to the
    cap), not a tight restart loop; the pair still answers pause, resume and delete."""
    calls = _crash_pulls(monkeypatch, crash=lambda n: True)
    backoff = Backoff()
    env = await start_env(nursery, SyncOptions(seed=4, backoff=backoff), timeout=VIRTUAL)
    pair = await env.create()
    p = await env.wait(pair.id, lambda p: p.retries >= 6)
    assert len(calls) == p.retries  # one attempt per restart
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    for attempt, gap in enumerate(gaps[:5]):
        assert gap >= backoff.bounds(attempt)[0]
    paused = await env.manager.pause(pair.id)
    assert paused.state is PairState.PAUSED
    n = len(calls)
    resumed = await env.manager.resume(pair.id)
    assert resumed.retries == 0
    await env.wait(pair.id, lambda p: p.retries >= 1 and len(calls) > n)
    await env.manager.delete(pair.id)
    with pytest.raises(PairNotFound):
        env.manager.get(pair.id)
    assert await env.target.get_state("pairs", pair.id) is None
    assert env.manager.list() == []


async def test_a_paused_pair_whose_puller_keeps_crashing_restarts_spaced_out(
    nursery: anyio.abc.TaskGroup, virtual_clock: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A paused pair has no backoff of its own, so its crashed puller's replacement
    waits 1, 2, 4 ... s before it starts (no tight loop); the pair stays listed as
    paused meanwhile, and a resume given during that wait is taken at once."""
    from fedpeer.sync._puller import Puller

    real_sleep = Puller._sleep
    crashed_at: list[float] = []
    crashed = anyio.Event()

    async def buggy_sleep(self: Puller, seconds: float, seen: int) -> bool:
        if seconds == math.inf and self.pair.state is PairState.PAUSED:
            crashed_at.append(anyio.current_time())
            crashed.set()
            raise RuntimeError("a bug in the paused wait")
        return await real_sleep(self, seconds, seen)

    monkeypatch.setattr(Puller, "_sleep", buggy_sleep)
    env = await start_env(nursery, SyncOptions(seed=6), timeout=VIRTUAL)
    pair = await env.create()
    await env.wait(pair.id, caught_up)
    await env.manager.pause(pair.id)
    with anyio.fail_after(VIRTUAL):
        while len(crashed_at) < 5:
            await crashed.wait()
            crashed = anyio.Event()
            assert env.manager.get(pair.id).state is PairState.PAUSED  # still listed
    gaps = [b - a for a, b in itertools.pairwise(crashed_at)]
    for k, gap in enumerate(gaps):
        assert gap >= 2.0**k  # 1, 2, 4, 8 s between restarts
    with anyio.fail_after(VIRTUAL):  # the fifth replacement is in its 16 s wait
        replacement = await _replacement_delaying(env, pair.id)
    t0 = anyio.current_time()
    resumed = await env.manager.resume(pair.id)
    assert env.manager.puller(pair.id) is replacement  # it took the resume itself
    assert resumed.state is PairState.RUNNING
    done = await env.wait(pair.id, caught_up)
    assert anyio.current_time() - t0 < 16  # the wait was cut short
    assert done.state is PairState.CAUGHT_UP
    assert done.last_error is None
    assert len(crashed_at) == 5


async def _replacement_delaying(env: Env, pair_id: str) -> Any:
    """The pair's puller once it is a replacement waiting out its crash delay."""
    while True:
        changed = env.manager._changed
        puller = env.manager.puller(pair_id)
        if puller.delaying:
            return puller
        with anyio.move_on_after(0.5):  # the delay starts in the puller's own task
            await changed.wait()


async def test_a_user_action_on_the_crashed_puller_stands_after_the_restart(
    nursery: anyio.abc.TaskGroup, virtual_clock: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resume that reached the crashed puller before its replacement started is the
    pair's new state: the replacement runs it at once, without a crash delay and
    without turning it into a failure."""
    from fedpeer.sync._puller import Puller

    real_sleep, real_retire = Puller._sleep, Puller.retire
    crashes: list[float] = []

    async def buggy_sleep(self: Puller, seconds: float, seen: int) -> bool:
        if seconds == math.inf and self.pair.state is PairState.PAUSED and not crashes:
            crashes.append(anyio.current_time())
            raise RuntimeError("a bug in the paused wait")
        return await real_sleep(self, seconds, seen)

    async def resume_first(self: Puller) -> None:  # a user's resume arrives just then
        await self.act(PairAction.RESUME)
        await real_retire(self)

    monkeypatch.setattr(Puller, "_sleep", buggy_sleep)
    monkeypatch.setattr(Puller, "retire", resume_first)
    env = await start_env(nursery, SyncOptions(seed=9), timeout=VIRTUAL)
    pair = await env.create()
    await env.wait(pair.id, caught_up)
    await env.manager.pause(pair.id)
    done = await env.wait(pair.id, caught_up)
    assert crashes  # it did crash while paused
    assert done.last_error is None  # not "failing, INTERNAL"
    assert done.retries == 0
    assert anyio.current_time() - crashes[0] < 1.0  # no crash delay


async def test_peer_traffic_does_not_cut_a_crash_delay_short(
    nursery: anyio.abc.TaskGroup, virtual_clock: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replacement waiting out its crash delay is not woken by the peer being seen
    (PairManager.wake), which would restart a crashing pair once a second."""
    calls = _crash_pulls(monkeypatch, crash=lambda n: True)
    env = await start_env(nursery, SyncOptions(seed=12), timeout=VIRTUAL)
    pair = await env.create()
    with anyio.fail_after(VIRTUAL):
        await _replacement_delaying(env, pair.id)  # the second crash's 2 s wait
    n = len(calls)
    assert env.manager.wake(SRC_KEY.did, reason="a request from the peer") == []
    assert env.manager.wake(None, reason="network") == []
    await anyio.wait_all_tasks_blocked()
    assert len(calls) == n  # no pull started by the wake


# --- the pre-verified fast path gives the machine's verdicts ------------------------------


def _page(records: Sequence[object], cursor: str, has_more: bool = False) -> dict[str, object]:
    return {"records": list(records), "next_cursor": cursor, "has_more": has_more}


EPOCH = "ab" * 16
RECS = make_records(6) + make_records(2, key=OTHER_KEY, ns="zzz", start=50)


def _cases() -> list[tuple[str, Pair, str | None, dict[str, object]]]:
    base = make_pair(
        local_did=LOCAL_DID, peer_did=SRC_KEY.did, peer_url="http://x", credential=None
    )
    at3 = attrs.evolve(base, cursor=Cursor(EPOCH, 3).encode())
    wires = [record_to_wire(r) for r in RECS]

    def c(seq: int, epoch: str = EPOCH) -> str:
        return Cursor(epoch, seq).encode()

    ns_app = attrs.evolve(base, filter=PairFilter(namespace="app"), id="x")
    allow = attrs.evolve(base, author_allowlist=(SRC_KEY.did,))
    tampered = dict(wires[1])
    tampered["sig"] = OTHER_KEY.sign(RECS[1].cid.raw)
    wrong_cid = dict(wires[2])
    wrong_cid["cid"] = CID(cid_for_dagcbor(b"\xa0").raw)
    return [
        ("ok", base, None, _page(wires[:6], c(6))),
        ("ok more", at3, None, _page(wires[:3], c(9), True)),
        ("empty", at3, None, _page([], c(3))),
        ("other authors", base, None, _page(wires, c(8))),
        ("filter", ns_app, None, _page(wires, c(8))),
        ("allowlist", allow, None, _page(wires, c(8))),
        ("dup", base, None, _page([wires[0], wires[0]], c(2))),
        ("backwards", at3, None, _page(wires[:1], c(2))),
        ("epoch", at3, None, _page(wires[:1], c(9, "cd" * 16))),
        ("no move", at3, None, _page(wires[:1], c(3))),
        ("no move more", at3, None, _page([], c(3), True)),
        ("too many", base, "limit", _page(wires[:6], c(6))),
        ("bad cursor", base, None, _page(wires[:1], "nope")),
        ("tampered", base, None, _page([wires[0], tampered], c(2))),
        ("wrong cid", base, None, _page([wrong_cid], c(2))),
        ("shape", base, None, {"records": wires[:1], "next_cursor": c(1)}),
    ]


@pytest.mark.parametrize("case", _cases(), ids=lambda c: c[0])
def test_fast_path_and_machine_agree(case: tuple[str, Pair, str | None, dict[str, object]]) -> None:
    _name, pair, opt, page = case
    limit = 5 if opt == "limit" else 100
    slow = PullMachine(pair, page_limit=limit, rng=random.Random(1))
    fast = _VerifiedMachine(
        pair, limits=DEFAULT_LIMITS, backoff=Backoff(), rng=random.Random(1), page_limit=limit
    )
    now = NOW_MS + 10_000
    verified = _verify_chunk(page.get("records", []), DEFAULT_LIMITS, now)  # type: ignore[arg-type]
    slow.next_request()
    fast.next_request()
    ev_slow = slow.receive_page(page, now_ms=now)
    if verified is None:
        ev_fast = fast.receive_page(page, now_ms=now)
    else:
        ev_fast = fast.receive_verified(page, tuple(verified), now_ms=now)
    assert type(ev_fast) is type(ev_slow)
    assert ev_fast.pair == ev_slow.pair
    if hasattr(ev_slow, "error"):
        assert ev_fast.error.code == ev_slow.error.code  # type: ignore[union-attr]
        assert ev_fast.error.message == ev_slow.error.message  # type: ignore[union-attr]
    else:
        assert ev_fast.records == ev_slow.records  # type: ignore[union-attr]


def test_fast_path_refuses_records_that_are_not_the_items() -> None:
    pair = make_pair(
        local_did=LOCAL_DID, peer_did=SRC_KEY.did, peer_url="http://x", credential=None
    )
    m = _VerifiedMachine(pair, limits=DEFAULT_LIMITS, backoff=Backoff(), rng=None, page_limit=10)
    m.next_request()
    wires = [record_to_wire(r) for r in RECS[:2]]
    tampered = dict(wires[1])
    tampered["sig"] = OTHER_KEY.sign(RECS[1].cid.raw)
    page = _page([wires[0], tampered], Cursor(EPOCH, 2).encode())
    # claims both records were verified (they were not: the second is forged)
    ev = m.receive_verified(page, (RECS[0], RECS[1]), now_ms=NOW_MS + 10_000)
    assert ev.__class__.__name__ == "PageRejected"
    assert ev.error.code == BadSignature.code  # type: ignore[union-attr]


def test_sync_options_validate() -> None:
    with pytest.raises(ValueError, match="page_limit"):
        SyncOptions(page_limit=0)
    with pytest.raises(ValueError, match="verify_threads"):
        SyncOptions(verify_threads=0)
    assert SyncOptions().verify_threads >= 1
