"""Grants and the consent view: who may read what.

:meth:`GrantService.view_for` is the one place that decides what a caller may
read; the record reads (in-process and over HTTP) take its answer. Who sees what:

- a caller with the ``admin`` scope, or whose account is bound to this node's
  own DID (and was not made by an invite): everything;
- anonymous callers when auth is switched off (``NodeConfig.auth_enabled =
  False``, local development only): everything. A caller that *does* send a
  bearer is judged by its grants even then, so turning auth off never widens
  what a token holder sees;
- every other caller: what its live grants allow for the scope of the read
  (``records:read`` for record and thread reads, ``sync:read`` for the feed and
  batch fetch). Accounts made by a *guest* invite redemption see only the
  grants bound to their own account (a guest never proved it holds its key).

Grants are read from the store on every call (no caching), so a change applies
to the next page. Every grant change bumps the consent revision, which the signed
manifest shows (it is re-signed with the new revision).
"""

from __future__ import annotations

from collections.abc import Sequence

from ...consent import grants as grants_mod
from ...consent import invites as inv
from ...consent.scopes import ADMIN
from ...consent.tokens import Principal
from ...errors import InvalidRequest
from ._core import NodeCore, lifetime_ms

__all__ = ["GrantService"]


class GrantService:
    """Grants of this node (``node.grants``): list, create, delete, and the consent view."""

    def __init__(self, core: NodeCore) -> None:
        self._core = core

    async def view_for(self, principal: Principal | None, scope: str) -> grants_mod.ConsentView:
        """What ``principal`` (None: an anonymous HTTP caller) may read through
        ``scope``, right now (see the module doc). Store errors propagate."""
        core = self._core
        if principal is None:
            return grants_mod.NOTHING if core.config.auth_enabled else grants_mod.EVERYTHING
        if ADMIN in principal.scopes:
            return grants_mod.EVERYTHING
        account = await core.store.get_state(inv.ACCOUNT_TABLE, principal.sa_id)
        if account is None and principal.holder_did == core.did:
            return grants_mod.EVERYTHING
        guest = account is not None and account.get("holder_type") == "guest"
        return await grants_mod.load_view(
            core.store, principal.holder_did, scope=scope, sa_id=principal.sa_id, bound_only=guest
        )

    async def revision(self) -> int:
        """The committed consent revision (grows with every grant change)."""
        return await self._core.refresh_consent_revision()

    async def list(self, *, grantee_did: str | None = None) -> list[grants_mod.Grant]:
        """Every grant (of ``grantee_did`` when given), live or expired
        (``grant.live(now_ms)`` tells)."""
        return await self._core.store.transact(
            lambda tx: grants_mod.list_grants(tx, grantee_did=grantee_did)
        )

    async def create(
        self,
        grantee_did: str,
        *,
        target: grants_mod.Target | None = None,
        scopes: Sequence[str] = ("reader",),
        expires_ms: int | None = None,
        ttl_s: int | None = None,
    ) -> grants_mod.Grant:
        """Grant ``grantee_did`` ``scopes`` (scope or preset names) on ``target``
        (default: the whole instance), until ``expires_ms`` or for ``ttl_s``
        seconds (not both; default: no expiry). Takes effect on the grantee's next
        request. Raises DID_INVALID, INVALID_REQUEST."""
        if expires_ms is not None and ttl_s is not None:
            raise InvalidRequest("give expires_ms or ttl_s, not both")
        now = self._core.now_ms()
        lifetime = lifetime_ms(ttl_s)
        if lifetime is not None:
            expires_ms = now + lifetime
        tgt = target or grants_mod.Target("instance")
        names = [str(s) for s in scopes]
        grant = await self._core.store.transact(
            lambda tx: grants_mod.create_grant(
                tx,
                grantee_did=grantee_did,
                target=tgt,
                scopes=names,
                expires_ms=expires_ms,
                now_ms=now,
            )
        )
        await self._core.signed_manifest()  # re-sign with the new consent revision
        return grant

    async def delete(self, grant_id: str) -> grants_mod.Grant:
        """Remove a grant (applies to the grantee's next request); return it.
        Raises GRANT_NOT_FOUND (also on a second delete)."""
        grant = await self._core.store.transact(lambda tx: grants_mod.delete_grant(tx, grant_id))
        await self._core.signed_manifest()
        return grant
