"""fedpeer.consent: scopes, service accounts and bearer tokens, rate limiting.

Pure logic over the store's state area (``Store.transact``); no network I/O.
See docs/architecture.md, section "consent".
"""

from __future__ import annotations

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
from .tokens import authenticate as authenticate
from .tokens import authenticate_bearer as authenticate_bearer
from .tokens import bootstrap_admin as bootstrap_admin
from .tokens import create_service_account as create_service_account
from .tokens import get_service_account as get_service_account
from .tokens import hash_bearer as hash_bearer
from .tokens import is_bootstrapped as is_bootstrapped
from .tokens import list_service_accounts as list_service_accounts
from .tokens import revoke_service_account as revoke_service_account
from .tokens import rotate_key as rotate_key
from .tokens import rotate_token as rotate_token
