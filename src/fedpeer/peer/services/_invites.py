"""Invites this node issues (``node.invites``): create, list, preview, revoke,
audit, and the issuer's side of a redemption.

A redemption (:meth:`InviteService.redeem`) checks what can be checked without
writing (the invite, its secret, the holder type, the federated holder's proof),
then does the authoritative checks, the use count and everything it creates in
ONE transaction, so N concurrent redeems of a single-use invite give exactly one
success. A rejected redemption is audited (``invite.redeem_rejected`` with the
reason code) in its own transaction. A federated holder that hands over a
reciprocal credential gets the pair back (two-way pairing), created by the
:class:`~fedpeer.peer.services.PairService` after it verified that the URL it was
given belongs to the holder DID the proof established.
"""

from __future__ import annotations

import builtins
import logging
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal

import anyio

from ...consent import invites as inv
from ...consent.grants import Target
from ...errors import (
    FedpeerError,
    InvalidRequest,
    InviteNotFound,
    KeyUnknown,
    PairSelf,
    RateLimited,
)
from ...identity.didkey import DID_KEY_PREFIX
from ...store.base import StateTx
from ._core import NodeCore
from ._views import AuditEvent, AuditPage, InviteCreated, InviteInfo, RedeemAnswer

if TYPE_CHECKING:
    from ._pairs import PairService

__all__ = ["InviteService", "invite_request"]

log = logging.getLogger("fedpeer.consent")

_AUDIT_SCAN_PAGE = 1000
MAX_REJECTIONS_AUDITED = 100
"""Rejected redeems of one invite written to the audit log, in all (the count is
kept in the store, so a restart does not start it again); the rest are counted
in the node log. A redeem needs no credential, so whoever holds an invite's URL
(an expired or used-up one included) could otherwise grow the audit table by one
row per request, as fast as the rate limit lets them."""
_REJECTIONS_TABLE = "invite_rejections"  # invite id -> {"audited": n}
_REJECTION_COUNTS_MAX = 4096  # invites whose rejections are counted (oldest forgotten)
_AUDIT_SCAN_PAGES = 20


def _check_base_url(base: object) -> str:
    if not isinstance(base, str) or len(base) > 2048:
        raise InvalidRequest("base_url must be the node's http(s) URL")
    parts = urllib.parse.urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
        raise InvalidRequest("base_url must be an http(s) URL like http://192.168.1.5:8765")
    return base.rstrip("/")


def invite_request(
    *,
    ttl_s: int | None = None,
    max_uses: int | None = None,
    scopes: Sequence[str] | None = None,
    target: Target | None = None,
    accept_holder_types: Sequence[str] | None = None,
    token_ttl_s: int | None = None,
    device_label: str | None = None,
    notes: str | None = None,
    base_url: str | None = None,
) -> dict[str, object]:
    """The JSON body of ``POST /v1/invites`` for these arguments (None: the default)."""
    params: dict[str, object] = {}
    for name, value in (
        ("ttl_s", ttl_s),
        ("max_uses", max_uses),
        ("token_ttl_s", token_ttl_s),
        ("device_label", device_label),
        ("notes", notes),
        ("base_url", base_url),
    ):
        if value is not None:
            params[name] = value
    if scopes is not None:
        params["scopes"] = list(scopes)
    if target is not None:
        params["scope_target"] = target.to_dict()
    if accept_holder_types is not None:
        params["accept_holder_types"] = list(accept_holder_types)
    return params


class InviteService:
    """Invites of this node. ``pairs`` (when sync runs) creates the pair back for a
    two-way redemption."""

    def __init__(self, core: NodeCore, pairs: PairService | None = None) -> None:
        self._core = core
        self._pairs = pairs
        self._rejections: dict[str, int] = {}  # invite id -> rejected redeems seen
        self._resolving: set[str] = set()  # invites with a holder DID being fetched

    def attach_pairs(self, pairs: PairService) -> None:
        """Use ``pairs`` for two-way redemptions (the node does this at start)."""
        self._pairs = pairs

    def default_base_url(self) -> str | None:
        """The URL written into invites when none is given: the node's first bound
        URL that is not a wildcard address (None when it listens on 0.0.0.0 only)."""
        for url in self._core.urls:
            if "://0.0.0.0" not in url and "://[::]" not in url:
                return url.rstrip("/")
        return None

    async def create(
        self,
        *,
        ttl_s: int | None = None,
        max_uses: int | None = None,
        scopes: Sequence[str] | None = None,
        target: Target | None = None,
        accept_holder_types: Sequence[str] | None = None,
        token_ttl_s: int | None = None,
        device_label: str | None = None,
        notes: str | None = None,
        base_url: str | None = None,
    ) -> InviteCreated:
        """Issue a signed invite; the answer's ``url`` carries the secret (shown once).

        Defaults: valid 1 day (``ttl_s`` 60 s .. 90 days), 1 use (up to 1000),
        ``["reader"]``, the whole instance, guest and federated holders, tokens
        valid 30 days. ``base_url`` is where redeemers reach this node (default:
        :meth:`default_base_url`). Raises INVALID_REQUEST.
        """
        params = invite_request(
            ttl_s=ttl_s,
            max_uses=max_uses,
            scopes=scopes,
            target=target,
            accept_holder_types=accept_holder_types,
            token_ttl_s=token_ttl_s,
            device_label=device_label,
            notes=notes,
        )
        return await self.create_from(params, base_url=base_url)

    async def create_from(
        self, params: Mapping[str, object], *, base_url: str | None = None
    ) -> InviteCreated:
        """:meth:`create` from the JSON form of ``POST /v1/invites`` (see
        :func:`fedpeer.consent.invites.parse_invite_params`)."""
        parsed = inv.parse_invite_params(params)
        raw_base = params.get("base_url", base_url)
        node_url = _check_base_url(raw_base) if raw_base is not None else self.default_base_url()
        if node_url is None:
            raise InvalidRequest(
                "this node listens on a wildcard address only: pass base_url, the URL other "
                "devices reach it at"
            )
        core = self._core
        now = core.now_ms()
        key = core.key
        pin = core.tls.current.pin if core.tls is not None else None
        issued = await core.store.transact(
            lambda tx: inv.create_invite(tx, key, parsed, node_url=node_url, now_ms=now, pin=pin)
        )
        log.info("issued invite %s (max_uses %d)", issued.invite.invite_id, parsed.max_uses)
        return InviteCreated.of(issued, now)

    async def list(self, *, state: str | None = None) -> builtins.list[InviteInfo]:
        """Invites with their folded state (only those in ``state`` when given).
        INVALID_REQUEST for an unknown state."""
        if state is not None and state not in inv.INVITE_STATES:
            raise InvalidRequest(f"state must be one of {', '.join(inv.INVITE_STATES)}")
        now = self._core.now_ms()
        found = await self._core.store.transact(
            lambda tx: inv.list_invites(tx, state=state, now_ms=now)
        )
        return [InviteInfo.of(i, now) for i in found]

    async def preview(self, invite_id: str) -> dict[str, object]:
        """The public preview: issuer, scopes, target, expiry, state and the signed
        invite document; no secret. INVITE_NOT_FOUND."""
        row = (
            await self._core.store.get_state(inv.INVITE_TABLE, invite_id)
            if inv.valid_invite_id(invite_id)
            else None
        )
        if row is None:
            raise InviteNotFound("no such invite on this node; check the invite URL")
        return inv.invite_from_row(row).to_preview(self._core.now_ms())

    async def revoke(self, invite_id: str) -> tuple[InviteInfo, bool]:
        """Revoke an invite and every token it produced; ``(invite, changed)``
        (idempotent: ``changed`` False the second time). INVITE_NOT_FOUND."""
        core = self._core
        now = core.now_ms()
        invite, changed = await core.store.transact(
            lambda tx: inv.revoke_invite(tx, invite_id, now_ms=now)
        )
        await core.signed_manifest()  # its grants went: a new consent revision
        return InviteInfo.of(invite, now), changed

    async def bulk_revoke(self, filter: str) -> builtins.list[str]:
        """Revoke every ``"expired"`` or every ``"exhausted"`` invite; their ids."""
        if filter not in ("expired", "exhausted"):
            raise InvalidRequest("filter must be 'expired' or 'exhausted'")
        core = self._core
        now = core.now_ms()
        kind: Literal["expired", "exhausted"] = "expired" if filter == "expired" else "exhausted"
        revoked = await core.store.transact(lambda tx: inv.bulk_revoke(tx, kind, now_ms=now))
        await core.signed_manifest()
        return [i.invite_id for i in revoked]

    async def audit(
        self, *, since: int = 0, limit: int = 100, invite_id: str | None = None
    ) -> AuditPage:
        """Invite audit events after ``since``: issued, redeemed, redeem_rejected
        (with the reason code), revoked; of ``invite_id`` only when given.

        Scans at most 20 000 log entries per call; resume from ``next_since``.
        """
        if not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise InvalidRequest("limit must be from 1 to 1000")
        events: builtins.list[AuditEvent] = []
        scanned = since
        store = self._core.store
        for _ in range(_AUDIT_SCAN_PAGES):
            entries = await store.audit_log(since_id=scanned, limit=_AUDIT_SCAN_PAGE)
            for entry in entries:
                scanned = entry.id
                kind = entry.event.get("type")
                if not isinstance(kind, str) or not kind.startswith("invite."):
                    continue
                if invite_id is not None and entry.event.get("invite_id") != invite_id:
                    continue
                events.append(AuditEvent(entry.id, entry.ts_ms, entry.event))
                if len(events) >= limit:
                    break
            if len(events) >= limit or len(entries) < _AUDIT_SCAN_PAGE:
                break
        return AuditPage(tuple(events), scanned)

    async def redeem(self, invite_id: str, request: Mapping[str, object]) -> RedeemAnswer:
        """The issuer's side of a redemption: ``request`` is the JSON body of
        ``POST /v1/invites/{id}/redeem`` (see
        :func:`fedpeer.consent.invites.parse_redeem_request`).

        Raises INVITE_NOT_FOUND, INVITE_EXPIRED, INVITE_REVOKED, INVITE_EXHAUSTED,
        INVITE_SECRET_INVALID, HOLDER_TYPE_MISMATCH, BAD_PROOF, KEY_UNKNOWN,
        FRESHNESS_VIOLATION, PROOF_REPLAYED, PAIR_SELF, DID_INVALID, MALFORMED;
        each rejection is audited with its code.
        """
        core = self._core
        store = core.store
        now = core.now_ms()
        holder_type: object = request.get("holder_type")
        holder_did: object = request.get("holder_did")
        try:
            parsed = inv.parse_redeem_request(request)
            holder_did = parsed.holder_did
            # Checks that only read: fail early, and before any DID resolution.
            row = (
                await store.get_state(inv.INVITE_TABLE, invite_id)
                if inv.valid_invite_id(invite_id)
                else None
            )
            if row is None:
                raise InviteNotFound("no such invite on this node; check the invite URL")
            invite = inv.invite_from_row(row)
            inv.check_redeemable(
                invite, secret=parsed.secret, holder_type=parsed.holder_type, now_ms=now
            )
            if parsed.holder_did == invite.issuer_did:
                raise PairSelf(
                    "a node cannot redeem its own invite; redeem it from the other device"
                )
            used: str | None = None
            if parsed.holder_type == "federated":
                assert parsed.proof is not None
                assert parsed.issued_at_ms is not None
                inv.proof_signature(parsed.proof)  # BAD_PROOF before any fetch (§10.4 order)
                keys = await self._holder_keys(invite_id, parsed.holder_did)
                signature = inv.verify_redeem_proof(
                    keys,
                    parsed.proof,
                    invite_id=invite_id,
                    audience=invite.issuer_did,
                    holder_did=parsed.holder_did,
                    issued_at_ms=parsed.issued_at_ms,
                    now_ms=now,
                )
                used = inv.proof_hash(parsed.holder_did, parsed.issued_at_ms, signature)
            # The authoritative checks, the use count and everything created: one transaction.
            redeemed = await store.transact(
                lambda tx: inv.redeem_in_tx(tx, invite_id, parsed, used_proof_hash=used, now_ms=now)
            )
        except FedpeerError as err:
            if not isinstance(err, RateLimited):  # "try again": not an attempt refused
                await self.audit_rejection(invite_id, err.code, holder_type, holder_did)
            raise
        await core.signed_manifest()  # a grant was created: a new consent revision
        log.info(
            "invite %s redeemed by %s holder %s",
            invite_id,
            redeemed.holder_type,
            redeemed.holder_did,
        )
        reverse: dict[str, object] | None = None
        if (
            parsed.reciprocal is not None
            and parsed.holder_type == "federated"
            and self._pairs is not None
        ):
            # Two-way pairing: pull back from the redeemer with the credential it gave
            # us. Only for a federated holder, whose DID the proof established; the
            # redeemer's URL must serve a manifest signed by that DID.
            reverse = await self._pairs.reverse_after_redeem(
                holder_did=redeemed.holder_did,
                url=parsed.reciprocal.url,
                token=parsed.reciprocal.token,
                target=redeemed.grant.target,
            )
        return RedeemAnswer.of(redeemed, reverse)

    async def _holder_keys(self, invite_id: str, holder_did: str) -> builtins.list[bytes]:
        """The holder DID's keys; a DID that needs fetching (did:web) one at a time
        per invite, so whoever holds one invite URL holds at most one of the
        resolver's few fetch slots, not all of them (RATE_LIMITED meanwhile).
        KEY_UNKNOWN names no cause (it is logged)."""
        remote = not holder_did.startswith(DID_KEY_PREFIX)
        if remote:
            if invite_id in self._resolving:
                raise RateLimited(
                    "a redemption of this invite is being checked; try again in a moment",
                    retry_after=1.0,
                )
            self._resolving.add(invite_id)
        try:
            return await inv.holder_public_keys(self._core.resolver, holder_did)
        except KeyUnknown as err:
            if err.__cause__ is not None:
                log.info("invite %s: holder DID unresolved: %s", invite_id, err.__cause__)
            raise
        finally:
            if remote:
                self._resolving.discard(invite_id)

    def _count_rejection(self, invite_id: str, code: str) -> bool:
        """Count a rejected redeem of ``invite_id``; whether it may be audited
        (not once :data:`MAX_REJECTIONS_AUDITED` are known to be; the store has
        the last word)."""
        seen = self._rejections.pop(invite_id, 0) + 1
        if len(self._rejections) >= _REJECTION_COUNTS_MAX:
            del self._rejections[next(iter(self._rejections))]  # the least recently rejected
        self._rejections[invite_id] = seen
        if seen <= MAX_REJECTIONS_AUDITED:
            return True
        if seen == MAX_REJECTIONS_AUDITED + 1 or seen % 1000 == 0:
            log.warning(
                "invite %s: %d rejected redeems (last: %s); only the first %d are in the "
                "audit log. Someone holding its URL keeps trying: revoke the invite "
                "(`fedpeer invite revoke`) if it should be dead",
                invite_id,
                seen,
                code,
                MAX_REJECTIONS_AUDITED,
            )
        return False

    async def audit_rejection(
        self, invite_id: str, code: str, holder_type: object, holder_did: object
    ) -> None:
        """Audit a rejected redeem in its own transaction (the failed one rolled back).

        Only for an invite this node issued: redeem requests are unauthenticated,
        and one for an id that names no invite would otherwise cost a write and
        an audit row each, without end (nothing for an admin to look at either).
        """
        if not inv.valid_invite_id(invite_id):
            return  # not an invite id at all: nothing worth an audit entry
        now = self._core.now_ms()

        def write(tx: StateTx) -> int:
            """The rejections of this invite audited so far, this one included."""
            if tx.get(inv.INVITE_TABLE, invite_id) is None:
                return 0
            row = tx.get(_REJECTIONS_TABLE, invite_id)
            audited = row.get("audited") if row is not None else 0
            if not isinstance(audited, int) or audited >= MAX_REJECTIONS_AUDITED:
                return MAX_REJECTIONS_AUDITED  # audited in full (by an earlier process)
            tx.put(_REJECTIONS_TABLE, invite_id, {"audited": audited + 1})
            inv.audit_rejected(
                tx, invite_id, code, holder_type=holder_type, holder_did=holder_did, now_ms=now
            )
            return audited + 1

        try:
            with anyio.CancelScope(shield=True):
                if await self._core.store.get_state(inv.INVITE_TABLE, invite_id) is None:
                    return  # no such invite (checked without a write first)
                if not self._count_rejection(invite_id, code):
                    return
                audited = await self._core.store.transact(write)
                if audited >= MAX_REJECTIONS_AUDITED:  # later ones skip the transaction
                    seen = self._rejections.get(invite_id, 0)
                    self._rejections[invite_id] = max(seen, MAX_REJECTIONS_AUDITED)
        except FedpeerError:
            log.exception("could not audit a rejected redeem of invite %s", invite_id)
