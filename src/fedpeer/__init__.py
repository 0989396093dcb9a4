"""fedpeer: federated peers for Python.

A node has a did:key identity, publishes an Ed25519-signed well-known
manifest, finds other nodes on the LAN by mDNS, issues invites, and keeps
record stores in sync by verified, cursor-paginated pull over HTTP.

The names here are the public API; everything else is reachable from the
subpackages (``fedpeer.identity``, ``fedpeer.store``, ``fedpeer.sync``,
``fedpeer.consent``, ``fedpeer.peer``). Embedding a node::

    import fedpeer, trio

    async def main():
        async with fedpeer.open_node("./data") as node:
            rec = await node.append(namespace="notes", thread="t1", kind="note", body={"hi": 1})
            print(node.did, node.url, rec.cid)

    trio.run(main)
"""

from __future__ import annotations

from .errors import FedpeerError as FedpeerError
from .identity import CID as CID
from .identity import Resolver as Resolver
from .identity import SigningKey as SigningKey
from .identity import sign_document as sign_document
from .identity import verify_document as verify_document
from .peer import Node as Node
from .peer import NodeConfig as NodeConfig
from .peer import PeerClient as PeerClient
from .peer import open_node as open_node
from .store import MemoryStore as MemoryStore
from .store import SQLiteStore as SQLiteStore
from .store import Store as Store
from .store import open_store as open_store
from .sync import Limits as Limits
from .sync import Record as Record
from .sync import SignedRecord as SignedRecord
from .sync import build_record as build_record
from .sync import verify_record as verify_record

from ._version import __version__ as __version__

__all__ = [
    "CID",
    "FedpeerError",
    "Limits",
    "MemoryStore",
    "Node",
    "NodeConfig",
    "PeerClient",
    "Record",
    "Resolver",
    "SQLiteStore",
    "SignedRecord",
    "SigningKey",
    "Store",
    "__version__",
    "build_record",
    "open_node",
    "open_store",
    "sign_document",
    "verify_document",
    "verify_record",
]
