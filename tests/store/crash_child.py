"""Child process of test_sqlite_crash: commits batches until it is killed.

Usage: python crash_child.py DB_PATH. Prints ``start`` before opening the
store and ``committed N`` after batch N committed (one transaction: 50
records in namespace ``bN`` plus the state row ``crash/progress = {batch: N}``).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types

import trio


def _import_store_only() -> None:
    """Load ``fedpeer.store`` without running ``fedpeer/__init__.py``.

    The package root re-exports the whole library (HTTP server, mDNS, ...), which
    takes a second or more to import; this child only needs the store, and the
    test starts it over 20 times. A bare package module with the real
    ``__path__`` makes ``import fedpeer.store`` load just store and errors.
    """
    spec = importlib.util.find_spec("fedpeer")
    assert spec is not None
    assert spec.submodule_search_locations is not None
    pkg = types.ModuleType("fedpeer")
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules["fedpeer"] = pkg


_import_store_only()

from fedpeer.store import NewRecord, SQLiteStore, StateTx  # noqa: E402

BATCH = 50


async def main(path: str) -> None:
    print("start", flush=True)
    store = await SQLiteStore.open(path)
    state = await store.get_state("crash", "progress")
    batch = int(str(state["batch"])) if state else 0
    print(f"opened {batch}", flush=True)
    while True:
        batch += 1
        n = batch
        records = [
            NewRecord(
                cid=f"cid:{n}:{i}".encode(),
                data=os.urandom(300),
                sig=os.urandom(64),
                author="did:key:z6MkCrash",
                namespace=f"b{n}",
                thread="crash",
                kind="k",
                ts=n,
            )
            for i in range(BATCH)
        ]

        def commit(tx: StateTx, records: list[NewRecord] = records, n: int = n) -> None:
            res = tx.put_records(records)
            assert len(res.new) == BATCH
            tx.put("crash", "progress", {"batch": n})

        await store.transact(commit)
        print(f"committed {n}", flush=True)


if __name__ == "__main__":
    trio.run(main, sys.argv[1])
