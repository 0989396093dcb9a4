"""fedpeer.consent: scopes, service accounts and bearer tokens, rate limiting, grants, invites.

Pure logic over the store's state area (``Store.transact``); no network I/O.
See docs/architecture.md, section "consent".
"""

from __future__ import annotations

from .grants import EVERYTHING as EVERYTHING
from .grants import NOTHING as NOTHING
from .grants import ConsentView as ConsentView
from .grants import Grant as Grant
from .grants import Target as Target
from .grants import create_grant as create_grant
from .grants import delete_grant as delete_grant
from .grants import list_grants as list_grants
from .grants import load_view as load_view
from .grants import parse_target as parse_target
from .grants import view_for as view_for
from .invites import Credential as Credential
from .invites import Invite as Invite
from .invites import InviteParams as InviteParams
from .invites import InviteUrl as InviteUrl
from .invites import IssuedInvite as IssuedInvite
from .invites import Redeemed as Redeemed
from .invites import RedeemRequest as RedeemRequest
from .invites import bulk_revoke as bulk_revoke
from .invites import confirmation_code as confirmation_code
from .invites import create_invite as create_invite
from .invites import get_invite as get_invite
from .invites import list_invites as list_invites
from .invites import parse_invite_params as parse_invite_params
from .invites import parse_invite_url as parse_invite_url
from .invites import parse_redeem_request as parse_redeem_request
from .invites import redeem_in_tx as redeem_in_tx
from .invites import redeem_proof_payload as redeem_proof_payload
from .invites import revoke_invite as revoke_invite
from .invites import sign_redeem_proof as sign_redeem_proof
from .invites import verify_redeem_proof as verify_redeem_proof
from .ratelimit import RateDecision as RateDecision
from .ratelimit import RateLimiter as RateLimiter
from .scopes import ADMIN as ADMIN
from .scopes import ALL_SCOPES as ALL_SCOPES
from .scopes import PRESETS as PRESETS
from .scopes import RECORDS_READ as RECORDS_READ
from .scopes import RECORDS_WRITE as RECORDS_WRITE
from .scopes import SYNC_READ as SYNC_READ
from .scopes import has_scope as has_scope
from .scopes import parse_scopes as parse_scopes
from .scopes import require_scope as require_scope
from .scopes import scopes_to_list as scopes_to_list
from .tokens import AsyncStateReader as AsyncStateReader
from .tokens import IssuedToken as IssuedToken
from .tokens import Principal as Principal
from .tokens import ServiceAccount as ServiceAccount
from .tokens import StateReader as StateReader
from .tokens import WriteQuota as WriteQuota
from .tokens import authenticate as authenticate
from .tokens import authenticate_bearer as authenticate_bearer
from .tokens import bootstrap_admin as bootstrap_admin
from .tokens import charge_write as charge_write
from .tokens import create_service_account as create_service_account
from .tokens import get_service_account as get_service_account
from .tokens import hash_bearer as hash_bearer
from .tokens import is_bootstrapped as is_bootstrapped
from .tokens import list_service_accounts as list_service_accounts
from .tokens import revoke_service_account as revoke_service_account
from .tokens import rotate_key as rotate_key
from .tokens import rotate_token as rotate_token

__all__ = [
    "ADMIN",
    "ALL_SCOPES",
    "EVERYTHING",
    "NOTHING",
    "PRESETS",
    "RECORDS_READ",
    "RECORDS_WRITE",
    "SYNC_READ",
    "AsyncStateReader",
    "ConsentView",
    "Credential",
    "Grant",
    "Invite",
    "InviteParams",
    "InviteUrl",
    "IssuedInvite",
    "IssuedToken",
    "Principal",
    "RateDecision",
    "RateLimiter",
    "RedeemRequest",
    "Redeemed",
    "ServiceAccount",
    "StateReader",
    "Target",
    "WriteQuota",
    "authenticate",
    "authenticate_bearer",
    "bootstrap_admin",
    "bulk_revoke",
    "charge_write",
    "confirmation_code",
    "create_grant",
    "create_invite",
    "create_service_account",
    "delete_grant",
    "get_invite",
    "get_service_account",
    "has_scope",
    "hash_bearer",
    "is_bootstrapped",
    "list_grants",
    "list_invites",
    "list_service_accounts",
    "load_view",
    "parse_invite_params",
    "parse_invite_url",
    "parse_redeem_request",
    "parse_scopes",
    "parse_target",
    "redeem_in_tx",
    "redeem_proof_payload",
    "require_scope",
    "revoke_invite",
    "revoke_service_account",
    "rotate_key",
    "rotate_token",
    "scopes_to_list",
    "sign_redeem_proof",
    "verify_redeem_proof",
    "view_for",
]
