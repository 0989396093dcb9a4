"""fedpeer: federated peers for Python.

A node has a did:key identity, publishes an Ed25519-signed well-known
manifest, finds other nodes on the LAN by mDNS, issues invites, and keeps
record stores in sync by verified, cursor-paginated pull over HTTP.
"""

from __future__ import annotations

from .errors import FedpeerError as FedpeerError

__version__ = "0.1.0"
