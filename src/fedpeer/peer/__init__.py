"""fedpeer.peer: the embeddable node, its services, its HTTP app, and the clients.

:func:`open_node` runs a :class:`Node`; its application layer is
:mod:`fedpeer.peer.services` (``node.records``, ``node.invites``,
``node.grants``, ``node.tokens``, ``node.pairs``). :class:`AdminClient` offers
the same methods over HTTP (what the ``fedpeer`` CLI uses); :class:`PeerClient`
talks to other nodes (manifest, feed, invite redemption).
"""

from .._datadir import LOCK_FILE as LOCK_FILE
from .._datadir import LockHolder as LockHolder
from .._datadir import lock_holder as lock_holder
from ._config import NodeConfig as NodeConfig
from ._pinning import check_peer as check_peer
from ._pinning import judge_pins as judge_pins
from ._serve import ConnectionSlot as ConnectionSlot
from ._serve import OpenConnections as OpenConnections
from ._serve import raise_open_files_limit as raise_open_files_limit
from ._transport import Pin as Pin
from ._transport import PinStore as PinStore
from ._transport import new_http_client as new_http_client
from ._transport import peer_pin as peer_pin
from ._transport import pinned_context as pinned_context
from .admin import AdminClient as AdminClient
from .client import ChangesResult as ChangesResult
from .client import PeerClient as PeerClient
from .client import StreamEvent as StreamEvent
from .discovery import Discovery as Discovery
from .discovery import Roster as Roster
from .discovery import RosterEntry as RosterEntry
from .discovery import verify_peer as verify_peer
from .manifest import manifest_pins as manifest_pins
from .manifest import verify_manifest as verify_manifest
from .node import ADMIN_TOKEN_FILE as ADMIN_TOKEN_FILE
from .node import KEY_FILE as KEY_FILE
from .node import STORE_FILE as STORE_FILE
from .node import Node as Node
from .node import open_node as open_node
from .services import GrantService as GrantService
from .services import InviteCreated as InviteCreated
from .services import InviteInfo as InviteInfo
from .services import InviteService as InviteService
from .services import IssuedAccount as IssuedAccount
from .services import PairService as PairService
from .services import PairStatus as PairStatus
from .services import RecordEntry as RecordEntry
from .services import RecordService as RecordService
from .services import RecordsPage as RecordsPage
from .services import RotatedToken as RotatedToken
from .services import TokenService as TokenService
from .services import UnpairResult as UnpairResult
from .tls import TLS_CERT_FILE as TLS_CERT_FILE
from .tls import TLS_KEY_FILE as TLS_KEY_FILE
from .tls import TLS_NEXT_CERT_FILE as TLS_NEXT_CERT_FILE
from .tls import TLS_NEXT_KEY_FILE as TLS_NEXT_KEY_FILE
from .tls import TlsCert as TlsCert
from .tls import TlsIdentity as TlsIdentity
from .tls import local_client_context as local_client_context
from .tls import spki_sha256 as spki_sha256
from .tls import spki_sha256_of_der as spki_sha256_of_der

__all__ = [
    "ADMIN_TOKEN_FILE",
    "KEY_FILE",
    "LOCK_FILE",
    "STORE_FILE",
    "TLS_CERT_FILE",
    "TLS_KEY_FILE",
    "TLS_NEXT_CERT_FILE",
    "TLS_NEXT_KEY_FILE",
    "AdminClient",
    "ChangesResult",
    "ConnectionSlot",
    "Discovery",
    "GrantService",
    "InviteCreated",
    "InviteInfo",
    "InviteService",
    "IssuedAccount",
    "LockHolder",
    "Node",
    "NodeConfig",
    "OpenConnections",
    "PairService",
    "PairStatus",
    "PeerClient",
    "Pin",
    "PinStore",
    "RecordEntry",
    "RecordService",
    "RecordsPage",
    "Roster",
    "RosterEntry",
    "RotatedToken",
    "StreamEvent",
    "TlsCert",
    "TlsIdentity",
    "TokenService",
    "UnpairResult",
    "check_peer",
    "judge_pins",
    "local_client_context",
    "lock_holder",
    "manifest_pins",
    "new_http_client",
    "open_node",
    "peer_pin",
    "pinned_context",
    "raise_open_files_limit",
    "spki_sha256",
    "spki_sha256_of_der",
    "verify_manifest",
    "verify_peer",
]
