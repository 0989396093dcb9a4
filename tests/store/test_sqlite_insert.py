"""SQLiteStore's multi-row insert behaves exactly like one INSERT per record.

Batches span several statement sizes (1000 rows, then powers of two), carry
duplicates of stored records and of earlier rows in the same batch, and must
give the same PutResult and seq order as MemoryStore; a NULL field still fails
loudly and the transaction stores nothing.
"""

from __future__ import annotations

import random
from pathlib import Path

import attrs
import pytest

from fedpeer.errors import StoreError
from fedpeer.store import MemoryStore, SQLiteStore
from fedpeer.store.base import NewRecord
from fedpeer.store.sqlite import _insert_sizes

from .store_backends import rec


@pytest.mark.parametrize(("n", "cap"), [(0, 1000), (1, 1000), (999, 1000), (2437, 1000), (7, 3)])
def test_insert_sizes_cover_the_batch_with_few_shapes(n: int, cap: int) -> None:
    sizes = _insert_sizes(n, cap)
    assert sum(sizes) == n
    assert all(1 <= s <= cap for s in sizes)
    assert all(s == cap or s & (s - 1) == 0 for s in sizes)  # cap, else a power of two
    assert len(sizes) <= n // cap + cap.bit_length()


async def test_batches_match_memory_store_with_duplicates_in_and_across_batches(
    tmp_path: Path,
) -> None:
    rng = random.Random(5)
    sqlite = await SQLiteStore.open(tmp_path / "s.db")
    memory = MemoryStore()
    try:
        for size in (2437, 1, 1000, 300, 64):
            ids = [rng.randrange(4000) for _ in range(size)]  # repeats inside the batch too
            batch = [rec(i) for i in ids]
            got = await sqlite.put(batch)
            expected = await memory.put(batch)
            assert got == expected
        assert await sqlite.head_seq() == await memory.head_seq()
        a = await sqlite.changes(0, 100_000)
        b = await memory.changes(0, 100_000)
        assert [(r.seq, r.cid, r.data) for r in a.records] == [
            (r.seq, r.cid, r.data) for r in b.records
        ]
    finally:
        await sqlite.aclose()


async def test_a_null_field_fails_the_whole_transaction(tmp_path: Path) -> None:
    store = await SQLiteStore.open(tmp_path / "s.db")
    try:
        await store.put([rec(1)])
        bad = attrs.evolve(rec(3), author=None)  # type: ignore[arg-type]
        batch: list[NewRecord] = [rec(2), bad, rec(4)]
        with pytest.raises(StoreError):
            await store.put(batch)
        assert await store.count() == 1  # rolled back: rec(2) is not there either
        assert (await store.put([rec(2)])).new == ((rec(2).cid, 2),)
    finally:
        await store.aclose()
