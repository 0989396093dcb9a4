"""fedpeer.peer: the embeddable node, its HTTP app, and the client for other nodes."""

from ._config import NodeConfig as NodeConfig
from .client import ChangesResult as ChangesResult
from .client import PeerClient as PeerClient
from .client import StreamEvent as StreamEvent
from .discovery import Discovery as Discovery
from .discovery import Roster as Roster
from .discovery import RosterEntry as RosterEntry
from .discovery import verify_peer as verify_peer
from .manifest import verify_manifest as verify_manifest
from .node import ADMIN_TOKEN_FILE as ADMIN_TOKEN_FILE
from .node import KEY_FILE as KEY_FILE
from .node import STORE_FILE as STORE_FILE
from .node import Node as Node
from .node import open_node as open_node

__all__ = [
    "ADMIN_TOKEN_FILE",
    "KEY_FILE",
    "STORE_FILE",
    "ChangesResult",
    "Discovery",
    "Node",
    "NodeConfig",
    "PeerClient",
    "Roster",
    "RosterEntry",
    "StreamEvent",
    "open_node",
    "verify_manifest",
    "verify_peer",
]
