"""Signature checks in worker processes: same verdicts, safe fallbacks, nothing left running.

Real worker processes (``python -c ... worker_main``) on pipes; failures are
provoked by replacing the worker's code with one that exits, or that answers
garbage. Whatever happens, every verdict is :func:`verify_batch`'s.
"""

from __future__ import annotations

import random
import time
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import pytest

from fedpeer.identity.keys import SigningKey, verify_batch
from fedpeer.store import MemoryStore
from fedpeer.sync import _puller
from fedpeer.sync._puller import _SignatureWorkers
from fedpeer.sync.manager import PairManager
from fedpeer.sync.options import SyncEvent, SyncOptions
from fedpeer.sync.pairs import PairState
from fedpeer.sync.records import build_record

from .test_puller import LOCAL_DID, SRC_KEY, FakeSource, cids

KEY = SigningKey.from_seed(b"\x31" * 32)
NOW_MS = int(time.time() * 1000) - 3_600_000


def make_jobs(n: int, *, bad_every: int = 7) -> list[tuple[bytes, bytes, bytes]]:
    """n jobs; every ``bad_every``-th has a forged signature, a few are not shippable."""
    rng = random.Random(n)
    jobs = []
    for i in range(n):
        msg = rng.randbytes(36)
        sig = KEY.sign(msg)
        if i % bad_every == 3:
            sig = bytes([sig[0] ^ 1]) + sig[1:]
        jobs.append((KEY.public_key, msg, sig))
    jobs[5] = (KEY.public_key[:31], jobs[5][1], jobs[5][2])  # not shippable: False
    return jobs


async def test_workers_give_verify_batch_verdicts_and_are_reused() -> None:
    workers = _SignatureWorkers(2)
    limiter = anyio.CapacityLimiter(2)
    jobs = make_jobs(600)
    expected = verify_batch(jobs)
    assert expected.count(False) > 80
    try:
        results: list[list[bool]] = [[] for _ in range(4)]

        async def one(i: int) -> None:
            results[i] = await workers.check(jobs, limiter)

        async with anyio.create_task_group() as nursery:
            for i in range(4):
                nursery.start_soon(one, i)
        assert results == [expected] * 4
        assert not workers.broken
        assert 1 <= len(workers._procs) <= 2  # at most `size` processes, reused
        await workers.close_idle()
        assert not workers._procs
        assert await workers.check(jobs, limiter) == expected  # restarted on demand
    finally:
        await workers.aclose()
    assert not workers._procs


@pytest.mark.parametrize(
    "code",
    [
        "import sys; sys.exit(3)",  # cannot start
        "import sys; sys.stdout.buffer.write(b'R'); sys.stdout.flush()",  # dies at once
        # answers garbage
        "import sys; sys.stdout.buffer.write(b'R' + b'\\x07' * 10000); sys.stdout.flush()",
    ],
)
async def test_a_failing_worker_falls_back_to_threads(
    code: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(_puller, "_WORKER_CODE", code)
    workers = _SignatureWorkers(2)
    jobs = make_jobs(300)
    with anyio.fail_after(30):
        assert await workers.check(jobs, anyio.CapacityLimiter(2)) == verify_batch(jobs)
    assert workers.broken
    assert not workers._procs
    assert "using threads for the next 60 s" in caplog.text
    # for a while threads, no more processes
    assert await workers.check(jobs[:10], anyio.CapacityLimiter(1)) == verify_batch(jobs[:10])
    assert not workers._procs


async def test_after_a_failure_worker_processes_come_back(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A passing problem (a worker killed, a fork refused) costs threads for a
    while, not the node's speed for good; failures in a row pause longer."""
    real = _puller._WORKER_CODE
    monkeypatch.setattr(_puller, "_WORKER_CODE", "import sys; sys.exit(3)")
    workers = _SignatureWorkers(1, retry_after_s=0.0)  # retry at once (the pause is tested above)
    jobs = make_jobs(300)
    try:
        with anyio.fail_after(60):
            assert await workers.check(jobs, anyio.CapacityLimiter(1)) == verify_batch(jobs)
            assert workers._failures == 1
            assert await workers.check(jobs, anyio.CapacityLimiter(1)) == verify_batch(jobs)
            assert workers._failures == 2  # a second failure in a row
            monkeypatch.setattr(_puller, "_WORKER_CODE", real)  # the problem passed
            assert not workers.broken
            assert await workers.check(jobs, anyio.CapacityLimiter(1)) == verify_batch(jobs)
        assert workers._procs  # a process did the check
        assert workers._failures == 0
    finally:
        await workers.aclose()
    assert caplog.text.count("signature checks in worker processes failed") == 2


async def test_disabled_workers_use_threads() -> None:
    workers = _SignatureWorkers(2, enabled=False)
    jobs = make_jobs(250)
    assert await workers.check(jobs, anyio.CapacityLimiter(1)) == verify_batch(jobs)
    assert not workers._procs


async def test_cancelled_check_kills_its_worker() -> None:
    workers = _SignatureWorkers(1)
    limiter = anyio.CapacityLimiter(1)
    jobs = make_jobs(2000)
    await workers.check(jobs[:10], limiter)  # a started, idle worker
    (proc,) = workers._procs
    with anyio.move_on_after(0.01):
        await workers.check(jobs, limiter)  # 2000 checks take far longer than 10 ms
    assert proc.returncode is not None  # killed and reaped, not left mid-request
    assert not workers._procs
    assert not workers.broken  # a cancellation is not a failure
    assert await workers.check(jobs[:50], limiter) == verify_batch(jobs[:50])
    await workers.aclose()


async def test_a_puller_checks_large_pages_in_workers_and_stops_them_when_caught_up(
    nursery: anyio.abc.TaskGroup, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[Any] = []
    real_start = _SignatureWorkers._start

    async def counting_start(self: _SignatureWorkers) -> Any:
        proc = await real_start(self)
        started.append(proc)
        return proc

    monkeypatch.setattr(_SignatureWorkers, "_start", counting_start)
    recs = [
        build_record(SRC_KEY, namespace="app", thread="t", kind="k", body=i, now_ms=NOW_MS)
        for i in range(900)
    ]
    source_store = MemoryStore()
    await source_store.put([r.to_new() for r in recs])
    target = MemoryStore()
    opts = SyncOptions(page_limit=450, verify_threads=2, seed=1)
    manager = PairManager(
        target, local_did=LOCAL_DID, source=FakeSource(source_store), options=opts
    )
    caught_up = anyio.Event()

    def on_event(ev: SyncEvent) -> None:
        if ev.kind == "page" and ev.pair.state is PairState.CAUGHT_UP:
            caught_up.set()

    manager.add_listener(on_event)
    await nursery.start(manager.run)
    pair, _ = await manager.create(
        peer_did=SRC_KEY.did, peer_url="http://127.0.0.1:9", credential=None
    )
    with anyio.fail_after(60):
        await caught_up.wait()
    assert await cids(target) == [r.cid.raw for r in recs]
    assert manager.get(pair.id).stats.records == 900
    assert started  # 450-record pages: slices of 225 went to worker processes
    # the caught-up page's event comes after the idle workers were stopped and reaped
    assert all(p.returncode is not None for p in started)
    manager.stop()
