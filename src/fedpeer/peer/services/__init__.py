"""fedpeer.peer.services: the application layer of a node.

A node's use cases, each one method, in-process (``node.records``,
``node.invites``, ``node.grants``, ``node.tokens``, ``node.pairs``) and, with
the same names, over HTTP (:class:`~fedpeer.peer.admin.AdminClient`). The HTTP
routes only parse a request, call one of these methods and render its answer.
The values they return (:class:`RecordEntry`, :class:`InviteCreated`, ...) are
the same on both sides.
"""

from __future__ import annotations

from ._core import NodeCore as NodeCore
from ._grants import GrantService as GrantService
from ._invites import InviteService as InviteService
from ._invites import invite_request as invite_request
from ._pairs import InvitePairing as InvitePairing
from ._pairs import PairService as PairService
from ._pairs import filter_for_target as filter_for_target
from ._records import RecordService as RecordService
from ._records import parse_cid as parse_cid
from ._tokens import TokenService as TokenService
from ._views import AuditEvent as AuditEvent
from ._views import AuditPage as AuditPage
from ._views import InviteCreated as InviteCreated
from ._views import InviteInfo as InviteInfo
from ._views import IssuedAccount as IssuedAccount
from ._views import PairingResult as PairingResult
from ._views import PairStatus as PairStatus
from ._views import RecordEntry as RecordEntry
from ._views import RecordsPage as RecordsPage
from ._views import RedeemAnswer as RedeemAnswer
from ._views import RotatedToken as RotatedToken
from ._views import UnpairResult as UnpairResult
from ._views import grant_from_dict as grant_from_dict
from ._views import service_account_from_dict as service_account_from_dict

__all__ = [
    "AuditEvent",
    "AuditPage",
    "GrantService",
    "InviteCreated",
    "InviteInfo",
    "InvitePairing",
    "InviteService",
    "IssuedAccount",
    "NodeCore",
    "PairService",
    "PairStatus",
    "PairingResult",
    "RecordEntry",
    "RecordService",
    "RecordsPage",
    "RedeemAnswer",
    "RotatedToken",
    "TokenService",
    "UnpairResult",
    "filter_for_target",
    "grant_from_dict",
    "invite_request",
    "parse_cid",
    "service_account_from_dict",
]
