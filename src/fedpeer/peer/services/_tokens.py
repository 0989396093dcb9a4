"""Service accounts and their bearer tokens (``node.tokens``)."""

from __future__ import annotations

from collections.abc import Sequence

from ...consent import tokens
from ...consent.scopes import parse_scopes
from ...errors import InvalidRequest
from ._core import NodeCore, lifetime_ms
from ._views import IssuedAccount, RotatedToken

__all__ = ["TokenService"]


class TokenService:
    """Service accounts and tokens. Bearers are shown once (in the returned value)
    and stored as SHA-256 only."""

    def __init__(self, core: NodeCore) -> None:
        self._core = core

    async def list(self) -> list[tokens.ServiceAccount]:
        """Every service account, revoked ones included (tokens are never shown again)."""
        return await self._core.store.transact(lambda tx: tokens.list_service_accounts(tx))

    async def create(
        self,
        name: str = "service account",
        *,
        scopes: Sequence[str] = ("reader",),
        holder_did: str | None = None,
        ttl_s: int | None = None,
    ) -> IssuedAccount:
        """A new service account for ``holder_did`` (default: this node) with
        ``scopes`` (scope or preset names) and its first token, valid for ``ttl_s``
        seconds (default: no expiry). Raises INVALID_REQUEST, DID_INVALID."""
        if not isinstance(name, str):
            raise InvalidRequest("name must be a string")
        holder = self._core.did if holder_did is None else holder_did
        if not isinstance(holder, str):
            raise InvalidRequest("holder_did must be a DID string")
        if isinstance(scopes, str) or not all(isinstance(s, str) for s in scopes):
            raise InvalidRequest("scopes must be a list of scope or preset names")
        parsed = parse_scopes(list(scopes))
        ttl_ms = lifetime_ms(ttl_s, "token_ttl_s")
        sa, issued = await self._core.store.transact(
            lambda tx: tokens.create_service_account(
                tx, name=name, holder_did=holder, scopes=parsed, origin="api", ttl_ms=ttl_ms
            )
        )
        return IssuedAccount.of(sa, issued)

    async def revoke(self, sa_id: str) -> tokens.ServiceAccount:
        """Revoke a service account and all its tokens (idempotent); SERVICE_ACCOUNT_NOT_FOUND."""
        return await self._core.store.transact(lambda tx: tokens.revoke_service_account(tx, sa_id))

    async def rotate(self, sa_id: str) -> RotatedToken:
        """Mint a new token for a service account, then revoke its older ones.
        Raises SERVICE_ACCOUNT_NOT_FOUND, CONFLICT (revoked)."""
        issued = await self._core.store.transact(lambda tx: tokens.rotate_key(tx, sa_id))
        return RotatedToken(issued.bearer, issued.token_id, issued.expires_ms)

    async def rotate_self(
        self, token_id: str, principal: tokens.Principal, *, ttl_s: int | None = None
    ) -> RotatedToken:
        """``principal`` rotates its own token ``token_id``: a new bearer with a slid
        expiry; the old one stops working. ROTATE_NOT_SELF, TOKEN_INVALID,
        TOKEN_EXPIRED, RATE_LIMITED (a token younger than
        ``config.rotate_min_age_s``)."""
        ttl_ms = lifetime_ms(ttl_s)
        now = self._core.now_ms()
        min_age_ms = round(self._core.config.rotate_min_age_s * 1000)
        issued = await self._core.store.transact(
            lambda tx: tokens.rotate_token(
                tx, token_id, principal, ttl_ms=ttl_ms, now_ms=now, min_age_ms=min_age_ms
            )
        )
        return RotatedToken(issued.bearer, issued.token_id, issued.expires_ms, token_id)

    async def bootstrap(self) -> IssuedAccount:
        """One-shot: mint the admin service account bound to this node (when no
        ``admin.token`` file was written). BOOTSTRAP_CLOSED afterwards."""
        holder = self._core.did
        now = self._core.now_ms()
        sa, issued = await self._core.store.transact(
            lambda tx: tokens.bootstrap_admin(tx, holder, now)
        )
        return IssuedAccount.of(sa, issued)

    async def authenticate(self, bearer: str) -> tokens.Principal:
        """Who ``bearer`` speaks for: TOKEN_INVALID, TOKEN_EXPIRED."""
        return await tokens.authenticate_bearer(
            self._core.store, bearer, now_ms=self._core.now_ms()
        )
