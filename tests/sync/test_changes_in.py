"""``changes_in``: a reader's grants pushed into the scan, checked against brute force.

Random stores, grants (namespaces, threads, threads pinned to a namespace),
request filters, limits, byte budgets and scan windows; records appended while
a page is being scanned. Paging through with ``changes_in`` must give exactly
the records the reader may see and asked for, each once, in order; every page
must hold only such records, end on one when it is full, and name the record at
its ``last_seq`` (the cursor's fingerprint). Adapted from a review's probe.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from fedpeer.consent.grants import ConsentView, Target
from fedpeer.errors import ConsentDenied
from fedpeer.store.base import ChangeFilter, ChangesPage, NewRecord, Store
from fedpeer.store.memory import MemoryStore
from fedpeer.store.sqlite import SQLiteStore
from fedpeer.sync.feed import changes_in

NAMESPACES = ["a", "ab", "b", "", "a/x"]
THREADS = ["t", "u", "v"]


class _Records:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.n = 0

    def some(self, count: int) -> list[NewRecord]:
        out = []
        for _ in range(count):
            self.n += 1
            out.append(
                NewRecord(
                    cid=b"\x01\x71\x12\x20" + self.n.to_bytes(32, "big"),
                    data=b"\xa0" * self.rng.randint(1, 50),
                    sig=b"\x00" * 64,
                    author="did:key:z",
                    namespace=self.rng.choice(NAMESPACES),
                    thread=self.rng.choice(THREADS),
                    kind="k",
                    ts=1,
                )
            )
        return out


class _Appending:
    """The store, with records landing between the scans of one page."""

    def __init__(self, store: Store, records: _Records) -> None:
        self.store, self.records = store, records
        self.appended = 0  # puts so far

    def __getattr__(self, name: str) -> object:
        return getattr(self.store, name)

    async def changes(self, *args: object, **kwargs: object) -> ChangesPage:
        page = await self.store.changes(*args, **kwargs)  # type: ignore[arg-type]
        if self.records.rng.random() < 0.3:
            await self.store.put(self.records.some(self.records.rng.randint(1, 3)))
            self.appended += 1
        return page


def _view(rng: random.Random) -> ConsentView:
    targets = []
    for _ in range(rng.randint(0, 3)):
        kind = rng.choice(["namespace", "thread", "pinned"])
        if kind == "namespace":
            targets.append(Target("namespace", rng.choice(["a", "b", "a/"])))
        elif kind == "thread":
            targets.append(Target("thread", rng.choice(THREADS)))
        else:
            targets.append(Target("thread", rng.choice(THREADS), rng.choice(NAMESPACES[:3])))
    return ConsentView(everything=False, targets=tuple(targets))


async def _trial(store: Store, rng: random.Random, window: int) -> bool:
    records = _Records(rng)
    records.n = await store.head_seq() + 1000
    await store.put(records.some(rng.randint(0, 60)))
    view = _view(rng)
    flt = ChangeFilter(
        namespace_prefix=rng.choice([None, "a", "b"]), thread=rng.choice([None, "t"])
    )
    try:
        view.check_change_filter(flt)
    except ConsentDenied:
        return False
    appending = _Appending(store, records)
    since, got, limit = 0, [], rng.randint(1, 5)
    budget = rng.choice([None, 60, 200])
    for _ in range(1000):
        appended = appending.appended
        page = await changes_in(
            appending,  # type: ignore[arg-type]
            since,
            limit,
            view.wake_filters(flt),
            max_bytes=budget,
        )
        seqs = [r.seq for r in page.records]
        assert seqs == sorted(set(seqs))
        assert all(since < s <= page.last_seq for s in seqs)
        assert len(seqs) <= limit
        assert all(
            view.record_visible(r) and flt.matches(r.namespace, r.thread) for r in page.records
        )
        # where the page ends: a record it holds, a scan window's end or the head,
        # never a record the reader may not see (checked when nothing landed
        # between its scans: then each scan saw the same head)
        quiet = appending.appended == appended
        at = await store.get_many([page.last_cid]) if page.last_cid and quiet else []
        for rec in at:
            if not view.record_visible(rec) and flt.matches(rec.namespace, rec.thread):
                assert page.last_seq in (since + window, page.head_seq), (rec, page)
        assert page.last_cid == await store.cid_at(page.last_seq)
        got += seqs
        since = page.last_seq
        if page.last_seq >= page.head_seq and rng.random() < 0.5:
            break
    everything = (await store.changes(0, 10**6)).records
    want = [
        r.seq
        for r in everything
        if r.seq <= since and view.record_visible(r) and flt.matches(r.namespace, r.thread)
    ]
    assert got == want, (got, want, view.targets, flt)
    return True


async def test_changes_in_matches_brute_force_in_memory() -> None:
    rng = random.Random(7)
    ran = 0
    for _ in range(300):
        window = rng.choice([3, 7, 100])
        ran += await _trial(MemoryStore(scan_window=window), rng, window)
    assert ran > 150  # most trials are not refused by the filter check


@pytest.mark.parametrize("seed", [1, 2])
async def test_changes_in_matches_brute_force_on_sqlite(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    for i in range(20):
        window = rng.choice([3, 7, 100])
        store = await SQLiteStore.open(tmp_path / f"s{i}.db", scan_window=window)
        try:
            await _trial(store, rng, window)
        finally:
            await store.aclose()
