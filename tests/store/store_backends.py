"""Every Store implementation the conformance suite runs against.

A new backend plugs in by adding one entry to :data:`STORE_FACTORIES`: an async
function that creates a fresh, empty store in ``tmp_dir`` (which it may use for
files) honouring ``scan_window`` (the bound of a namespace-filtered scan).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from fedpeer.store import MemoryStore, NewRecord, SQLiteStore, Store

StoreFactory = Callable[..., Awaitable[Store]]


async def _memory(tmp_dir: Path, *, scan_window: int = 10_000) -> Store:
    return MemoryStore(scan_window=scan_window)


async def _sqlite(tmp_dir: Path, *, scan_window: int = 10_000) -> Store:
    return await SQLiteStore.open(tmp_dir / f"store-{uuid.uuid4().hex}.db", scan_window=scan_window)


STORE_FACTORIES: dict[str, StoreFactory] = {
    "memory": _memory,
    "sqlite": _sqlite,
}


def rec(
    n: int | str,
    *,
    namespace: str = "app",
    thread: str = "t",
    kind: str = "note",
    data: bytes | None = None,
) -> NewRecord:
    """A synthetic record; the same ``n`` always gives the same CID."""
    tag = str(n).encode()
    return NewRecord(
        cid=b"\x01\x71\x12\x20" + tag.rjust(32, b"\x00"),
        data=data if data is not None else b"\xa1body" + tag,
        sig=b"\x00" * 32 + tag.rjust(32, b"\x00"),
        author="did:key:z6MkTest",
        namespace=namespace,
        thread=thread,
        kind=kind,
        ts=1_700_000_000_000 + len(tag),
    )
