"""fedpeer.store: the Store protocol, MemoryStore and SQLiteStore.

``await open_store(path)`` gives a :class:`SQLiteStore` for a path and a
:class:`MemoryStore` for ``None``. See :mod:`fedpeer.store.base` for the
contract every store implements.
"""

from __future__ import annotations

import os

from .base import AuditEntry as AuditEntry
from .base import ChangeFilter as ChangeFilter
from .base import ChangesPage as ChangesPage
from .base import CidLike as CidLike
from .base import JsonDict as JsonDict
from .base import NewRecord as NewRecord
from .base import PutResult as PutResult
from .base import StateTx as StateTx
from .base import Store as Store
from .base import StoredRecord as StoredRecord
from .base import ThreadInfo as ThreadInfo
from .base import cid_key as cid_key
from .base import prefix_upper_bound as prefix_upper_bound
from .memory import DEFAULT_SCAN_WINDOW as DEFAULT_SCAN_WINDOW
from .memory import MemoryStore as MemoryStore
from .sqlite import SCHEMA_VERSION as SCHEMA_VERSION
from .sqlite import SQLiteStore as SQLiteStore
from .sqlite import backup_sqlite as backup_sqlite

__all__ = [
    "DEFAULT_SCAN_WINDOW",
    "SCHEMA_VERSION",
    "AuditEntry",
    "ChangeFilter",
    "ChangesPage",
    "CidLike",
    "JsonDict",
    "MemoryStore",
    "NewRecord",
    "PutResult",
    "SQLiteStore",
    "StateTx",
    "Store",
    "StoredRecord",
    "ThreadInfo",
    "backup_sqlite",
    "cid_key",
    "open_store",
    "prefix_upper_bound",
]


async def open_store(path: str | os.PathLike[str] | None) -> Store:
    """Open the store at ``path`` (a :class:`SQLiteStore`), or a fresh
    :class:`MemoryStore` when ``path`` is None.

    Errors as :meth:`SQLiteStore.open`: ``SchemaTooNew``, ``StoreCorrupt``,
    ``StoreError``. Close the result with ``await store.aclose()``.
    """
    if path is None:
        return MemoryStore()
    return await SQLiteStore.open(path)
