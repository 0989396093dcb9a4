"""fedpeer: federated peers for Python.

A node has a did:key identity, publishes an Ed25519-signed well-known
manifest, finds other nodes on the LAN by mDNS, issues invites, and keeps
record stores in sync by verified, cursor-paginated pull over HTTP.

The names here are the public API; everything else is reachable from the
subpackages (``fedpeer.identity``, ``fedpeer.store``, ``fedpeer.sync``,
``fedpeer.consent``, ``fedpeer.peer``). Embedding a node (trio or asyncio)::

    import fedpeer, trio

    async def main():
        async with fedpeer.open_node("./data") as node:
            entry = await node.records.append(namespace="notes", thread="t1", kind="note",
                                              body={"hi": 1})
            print(node.did, node.url, (await node.records.get(entry.cid)).record.body)

    trio.run(main)        # or asyncio.run(main())

A node's use cases are its services: ``node.records``, ``node.invites``,
``node.grants``, ``node.tokens``, ``node.pairs``; :class:`AdminClient` has the
same methods over HTTP.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._version import __version__ as __version__
from .errors import FedpeerError as FedpeerError

if TYPE_CHECKING:
    from .identity import CID as CID
    from .identity import Resolver as Resolver
    from .identity import SigningKey as SigningKey
    from .identity import sign_document as sign_document
    from .identity import verify_document as verify_document
    from .peer import AdminClient as AdminClient
    from .peer import Node as Node
    from .peer import NodeConfig as NodeConfig
    from .peer import PeerClient as PeerClient
    from .peer import RecordEntry as RecordEntry
    from .peer import RecordsPage as RecordsPage
    from .peer import open_node as open_node
    from .store import MemoryStore as MemoryStore
    from .store import SQLiteStore as SQLiteStore
    from .store import Store as Store
    from .store import open_store as open_store
    from .sync import Limits as Limits
    from .sync import PairManager as PairManager
    from .sync import Record as Record
    from .sync import SignedRecord as SignedRecord
    from .sync import SyncOptions as SyncOptions
    from .sync import build_record as build_record
    from .sync import verify_record as verify_record

# Names are imported on first use, so `import fedpeer.store` (or the CLI) does not
# pay for the HTTP stack. Each name lives in exactly one subpackage.
_LAZY = {
    "CID": "identity",
    "Resolver": "identity",
    "SigningKey": "identity",
    "sign_document": "identity",
    "verify_document": "identity",
    "AdminClient": "peer",
    "Node": "peer",
    "NodeConfig": "peer",
    "PeerClient": "peer",
    "RecordEntry": "peer",
    "RecordsPage": "peer",
    "open_node": "peer",
    "MemoryStore": "store",
    "SQLiteStore": "store",
    "Store": "store",
    "open_store": "store",
    "Limits": "sync",
    "PairManager": "sync",
    "Record": "sync",
    "SignedRecord": "sync",
    "SyncOptions": "sync",
    "build_record": "sync",
    "verify_record": "sync",
}


def __getattr__(name: str) -> object:
    sub = _LAZY.get(name)
    if sub is None:
        raise AttributeError(f"module 'fedpeer' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{sub}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "CID",
    "AdminClient",
    "FedpeerError",
    "Limits",
    "MemoryStore",
    "Node",
    "NodeConfig",
    "PairManager",
    "PeerClient",
    "Record",
    "RecordEntry",
    "RecordsPage",
    "Resolver",
    "SQLiteStore",
    "SignedRecord",
    "SigningKey",
    "Store",
    "SyncOptions",
    "__version__",
    "build_record",
    "open_node",
    "open_store",
    "sign_document",
    "verify_document",
    "verify_record",
]
