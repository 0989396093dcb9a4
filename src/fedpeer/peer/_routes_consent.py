"""Consent routes: grants, invites, scope presets, token rotation; and the consent view.

:func:`consent_view` is the one place that decides what a caller may read; the
read handlers in :mod:`._routes` call it (through ``visible_for``) on every
request, so a grant change takes effect on the next page. Who sees what:

- a caller with the ``admin`` scope, or whose account is bound to this node's
  own DID (and was not made by an invite): everything;
- anonymous callers when auth is switched off (``NodeConfig.auth_enabled =
  False``, local development only): everything. A caller that *does* send a
  bearer is judged by its grants even then, so turning auth off never widens
  what a token holder sees;
- every other caller: what its live grants allow for the scope of the read
  (``records:read`` for record and thread routes, ``sync:read`` for the feed
  and batch fetch). Accounts made by a *guest* invite redemption see only the
  grants bound to their own account (a guest never proved it holds its key).

The handlers here parse input at the edge and call the sans-I/O logic in
:mod:`fedpeer.consent.grants` and :mod:`fedpeer.consent.invites`; all state
changes go through one ``Store.transact`` each.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import trio
from starlette.responses import Response

from ..consent import grants as grants_mod
from ..consent import invites as inv
from ..consent import tokens
from ..consent.scopes import ADMIN, ALL_SCOPES, scopes_to_list
from ..errors import (
    AuthRequired,
    FedpeerError,
    InvalidRequest,
    InviteNotFound,
    PairSelf,
)
from ..identity.canonical import dagcbor_decode, dagjson_decode
from ..identity.resolver import Resolver
from ..store.base import StateTx
from ._http import read_body, read_json_object, read_value, request_encoding, respond
from ._routing import Ctx, Param, RouteSpec

if TYPE_CHECKING:
    from .app import AppState

log = logging.getLogger("fedpeer.consent")

RESOLVER_KEY = "resolver"
"""``AppState.extra`` key of the DID resolver used for federated holders (created
on first use: did:key offline, did:web over https)."""


def _now_ms() -> int:
    return int(time.time() * 1000)


# --- the consent view ----------------------------------------------------------------


async def consent_view(ctx: Ctx, scope: str) -> grants_mod.ConsentView:
    """What the caller of ``ctx`` may read through ``scope``, right now (see module doc).

    Reads the caller's grants from the store on every call (no caching), so the
    answer follows grant changes at once. Store errors propagate.
    """
    p = ctx.principal
    if p is None:
        return grants_mod.NOTHING if ctx.app.config.auth_enabled else grants_mod.EVERYTHING
    if ADMIN in p.scopes:
        return grants_mod.EVERYTHING
    account = await ctx.app.store.get_state(inv.ACCOUNT_TABLE, p.sa_id)
    if account is None and p.holder_did == ctx.app.did:
        return grants_mod.EVERYTHING
    guest = account is not None and account.get("holder_type") == "guest"
    return await grants_mod.load_view(
        ctx.app.store, p.holder_did, scope=scope, sa_id=p.sa_id, bound_only=guest
    )


async def publish_consent_revision(app: AppState) -> int:
    """Copy the committed consent revision (store meta) to ``app.extra``, which the
    manifest's consent posture shows; return it. One ``get_state`` read."""
    revision = await grants_mod.load_revision(app.store)
    app.extra["consent_revision"] = revision
    return revision


async def _publish_revision(ctx: Ctx) -> int:
    return await publish_consent_revision(ctx.app)


def _resolver(ctx: Ctx) -> Resolver:
    resolver = ctx.app.extra.get(RESOLVER_KEY)
    if not isinstance(resolver, Resolver):
        resolver = Resolver()
        ctx.app.extra[RESOLVER_KEY] = resolver
    return resolver


# --- body helpers --------------------------------------------------------------------


async def _body(ctx: Ctx) -> dict[str, object]:
    return read_json_object(await read_value(ctx.request, ctx.app.config.max_body_bytes))


async def _optional_body(ctx: Ctx) -> dict[str, object]:
    """The body as an object, or ``{}`` when the request has none."""
    encoding = request_encoding(ctx.request)
    raw = await read_body(ctx.request, ctx.app.config.max_body_bytes)
    if not raw.strip():
        return {}
    value = dagcbor_decode(raw) if encoding == "cbor" else dagjson_decode(raw)
    return read_json_object(value)


def _q(ctx: Ctx, name: str) -> str | None:
    value = ctx.request.query_params.get(name)
    return None if value in (None, "") else value


def _int_q(ctx: Ctx, name: str, default: int, low: int, high: int) -> int:
    raw = _q(ctx, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(f"{name} must be a whole number from {low} to {high}") from None
    if not low <= value <= high:
        raise InvalidRequest(f"{name} must be from {low} to {high}, got {value}")
    return value


# --- grants --------------------------------------------------------------------------


async def list_grants(ctx: Ctx) -> Response:
    grantee = _q(ctx, "grantee_did")
    found = await ctx.app.store.transact(lambda tx: grants_mod.list_grants(tx, grantee_did=grantee))
    revision = await _publish_revision(ctx)
    now = _now_ms()
    return respond(
        {
            "grants": [{**g.to_dict(), "live": g.live(now)} for g in found],
            "consent_revision": revision,
        },
        ctx.request,
    )


async def create_grant(ctx: Ctx) -> Response:
    obj = await _body(ctx)
    allowed = {"grantee_did", "target", "scopes", "expires_ms", "ttl_s"}
    extra = set(obj) - allowed
    if extra:
        raise InvalidRequest(f"unknown fields {sorted(extra)[:5]}; allowed: {sorted(allowed)}")
    grantee = obj.get("grantee_did")
    if not isinstance(grantee, str):
        raise InvalidRequest("grantee_did is required: the DID the grant is for")
    target = grants_mod.parse_target(obj.get("target", {"type": "instance"}))
    raw_scopes = obj.get("scopes", ["reader"])
    if not isinstance(raw_scopes, list):
        raise InvalidRequest("scopes must be a list of scope or preset names")
    now = _now_ms()
    expires_ms = obj.get("expires_ms")
    ttl_s = obj.get("ttl_s")
    if expires_ms is not None and ttl_s is not None:
        raise InvalidRequest("give expires_ms or ttl_s, not both")
    if ttl_s is not None:
        if not isinstance(ttl_s, int) or isinstance(ttl_s, bool) or ttl_s <= 0:
            raise InvalidRequest("ttl_s must be a positive whole number of seconds")
        expires_ms = now + ttl_s * 1000
    if expires_ms is not None and (not isinstance(expires_ms, int) or isinstance(expires_ms, bool)):
        raise InvalidRequest("expires_ms must be a time in ms since the epoch")
    grant = await ctx.app.store.transact(
        lambda tx: grants_mod.create_grant(
            tx,
            grantee_did=grantee,
            target=target,
            scopes=[str(s) for s in raw_scopes],
            expires_ms=expires_ms,
            now_ms=now,
        )
    )
    revision = await _publish_revision(ctx)
    return respond(
        {"grant": grant.to_dict(), "consent_revision": revision}, ctx.request, status=201
    )


async def delete_grant(ctx: Ctx) -> Response:
    grant_id = ctx.request.path_params["grant_id"]
    grant = await ctx.app.store.transact(lambda tx: grants_mod.delete_grant(tx, grant_id))
    revision = await _publish_revision(ctx)
    return respond({"deleted": grant.to_dict(), "consent_revision": revision}, ctx.request)


async def scope_presets(ctx: Ctx) -> Response:
    return respond(
        {
            "scopes": scopes_to_list(ALL_SCOPES),
            "presets": grants_mod.presets_json(),
            "target_types": list(grants_mod.TARGET_TYPES),
            "holder_types": list(inv.HOLDER_TYPES),
        },
        ctx.request,
    )


# --- invites -------------------------------------------------------------------------


def _node_url(ctx: Ctx, obj: dict[str, object]) -> str:
    """The base URL written into the invite: ``base_url`` from the body, else the
    node's first bound URL unless it is a wildcard bind, else the URL the admin used."""
    base = obj.get("base_url")
    if base is not None:
        if not isinstance(base, str) or len(base) > 2048:
            raise InvalidRequest("base_url must be the node's http(s) URL")
        import urllib.parse

        parts = urllib.parse.urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
            raise InvalidRequest("base_url must be an http(s) URL like http://192.168.1.5:8765")
        return base.rstrip("/")
    for url in ctx.app.urls:
        if "://0.0.0.0" not in url and "://[::]" not in url:
            return url.rstrip("/")
    return str(ctx.request.base_url).rstrip("/")


async def create_invite(ctx: Ctx) -> Response:
    obj = await _optional_body(ctx)
    params = inv.parse_invite_params(obj)
    node_url = _node_url(ctx, obj)
    now = _now_ms()
    key = ctx.app.key
    issued = await ctx.app.store.transact(
        lambda tx: inv.create_invite(tx, key, params, node_url=node_url, now_ms=now)
    )
    log.info("issued invite %s (max_uses %d)", issued.invite.invite_id, params.max_uses)
    return respond(issued.to_dict(now), ctx.request, status=201)


async def list_invites(ctx: Ctx) -> Response:
    state = _q(ctx, "state")
    if state is not None and state not in inv.INVITE_STATES:
        raise InvalidRequest(f"state must be one of {', '.join(inv.INVITE_STATES)}")
    now = _now_ms()
    found = await ctx.app.store.transact(lambda tx: inv.list_invites(tx, state=state, now_ms=now))
    return respond({"invites": [i.to_admin_dict(now) for i in found]}, ctx.request)


async def preview_invite(ctx: Ctx) -> Response:
    invite_id = ctx.request.path_params["invite_id"]
    if not inv.valid_invite_id(invite_id):
        raise InviteNotFound("no such invite on this node; check the invite URL")
    row = await ctx.app.store.get_state(inv.INVITE_TABLE, invite_id)
    if row is None:
        raise InviteNotFound("no such invite on this node; check the invite URL")
    return respond(inv.invite_from_row(row).to_preview(_now_ms()), ctx.request)


async def revoke_invite(ctx: Ctx) -> Response:
    invite_id = ctx.request.path_params["invite_id"]
    now = _now_ms()
    invite, changed = await ctx.app.store.transact(
        lambda tx: inv.revoke_invite(tx, invite_id, now_ms=now)
    )
    await _publish_revision(ctx)
    return respond({"invite": invite.to_admin_dict(now), "changed": changed}, ctx.request)


async def bulk_revoke(ctx: Ctx) -> Response:
    obj = await _body(ctx)
    flt = obj.get("filter")
    if flt not in ("expired", "exhausted") or set(obj) - {"filter"}:
        raise InvalidRequest("body must be {filter: 'expired' | 'exhausted'}")
    now = _now_ms()
    revoked = await ctx.app.store.transact(lambda tx: inv.bulk_revoke(tx, flt, now_ms=now))
    await _publish_revision(ctx)
    return respond({"revoked": [i.invite_id for i in revoked], "count": len(revoked)}, ctx.request)


_AUDIT_SCAN_PAGE = 1000
_AUDIT_SCAN_PAGES = 20


async def invite_audit(ctx: Ctx) -> Response:
    since = _int_q(ctx, "since", 0, 0, 2**62)
    limit = _int_q(ctx, "limit", 100, 1, 1000)
    only = _q(ctx, "invite_id")
    events: list[dict[str, object]] = []
    scanned = since
    # Bounded scan: at most 20 000 audit entries per request; the caller resumes
    # from next_since when the log holds many non-invite events.
    for _ in range(_AUDIT_SCAN_PAGES):
        entries = await ctx.app.store.audit_log(since_id=scanned, limit=_AUDIT_SCAN_PAGE)
        for entry in entries:
            scanned = entry.id
            kind = entry.event.get("type")
            if not isinstance(kind, str) or not kind.startswith("invite."):
                continue
            if only is not None and entry.event.get("invite_id") != only:
                continue
            events.append({"id": entry.id, "ts_ms": entry.ts_ms, "event": entry.event})
            if len(events) >= limit:
                break
        if len(events) >= limit or len(entries) < _AUDIT_SCAN_PAGE:
            break
    return respond({"events": events, "next_since": scanned}, ctx.request)


async def redeem_invite(ctx: Ctx) -> Response:
    invite_id = ctx.request.path_params["invite_id"]
    store = ctx.app.store
    now = _now_ms()
    holder_type: object = None
    holder_did: object = None
    try:
        obj = await _body(ctx)
        holder_type, holder_did = obj.get("holder_type"), obj.get("holder_did")
        request = inv.parse_redeem_request(obj)
        holder_did = request.holder_did
        # Checks that only read: fail early, and before any DID resolution.
        row = (
            await store.get_state(inv.INVITE_TABLE, invite_id)
            if (inv.valid_invite_id(invite_id))
            else None
        )
        if row is None:
            raise InviteNotFound("no such invite on this node; check the invite URL")
        invite = inv.invite_from_row(row)
        inv.check_redeemable(
            invite, secret=request.secret, holder_type=request.holder_type, now_ms=now
        )
        if request.holder_did == invite.issuer_did:
            raise PairSelf("a node cannot redeem its own invite; redeem it from the other device")
        used: str | None = None
        if request.holder_type == "federated":
            assert request.proof is not None
            assert request.issued_at_ms is not None
            keys = await inv.holder_public_keys(_resolver(ctx), request.holder_did)
            signature = inv.verify_redeem_proof(
                keys,
                request.proof,
                invite_id=invite_id,
                audience=invite.issuer_did,
                holder_did=request.holder_did,
                issued_at_ms=request.issued_at_ms,
                now_ms=now,
            )
            used = inv.proof_hash(request.holder_did, request.issued_at_ms, signature)
        # The authoritative checks, the use count and everything created: one transaction.
        redeemed = await store.transact(
            lambda tx: inv.redeem_in_tx(tx, invite_id, request, used_proof_hash=used, now_ms=now)
        )
    except FedpeerError as err:
        await _audit_rejection(ctx, invite_id, err.code, holder_type, holder_did)
        raise
    await _publish_revision(ctx)
    log.info(
        "invite %s redeemed by %s holder %s", invite_id, redeemed.holder_type, redeemed.holder_did
    )
    answer = redeemed.to_dict()
    reverse = ctx.app.extra.get("reverse_pair")
    if request.reciprocal is not None and request.holder_type == "federated" and callable(reverse):
        # Two-way pairing: pull back from the redeemer with the credential it gave
        # us. Only for a federated holder, whose DID the proof established; the
        # redeemer's URL must serve a manifest signed by that DID.
        answer["reverse_pair"] = await reverse(
            holder_did=redeemed.holder_did,
            url=request.reciprocal.url,
            token=request.reciprocal.token,
            target=redeemed.grant.target,
        )
    return respond(answer, ctx.request, status=201)


async def _audit_rejection(
    ctx: Ctx, invite_id: str, code: str, holder_type: object, holder_did: object
) -> None:
    """Audit a rejected redeem in its own transaction (the failed one rolled back)."""
    if not inv.valid_invite_id(invite_id):
        return  # not an invite id at all: nothing worth an audit entry
    now = _now_ms()

    def write(tx: StateTx) -> int:
        return inv.audit_rejected(
            tx, invite_id, code, holder_type=holder_type, holder_did=holder_did, now_ms=now
        )

    try:
        with trio.CancelScope(shield=True):
            await ctx.app.store.transact(write)
    except FedpeerError:
        log.exception("could not audit a rejected redeem of invite %s", invite_id)


# --- tokens --------------------------------------------------------------------------


async def rotate_token(ctx: Ctx) -> Response:
    token_id = ctx.request.path_params["token_id"]
    principal = ctx.principal
    if principal is None:
        raise AuthRequired("rotate a token by calling this route with that token as the bearer")
    obj = await _optional_body(ctx)
    if set(obj) - {"ttl_s"}:
        raise InvalidRequest("body may only hold {ttl_s}")
    ttl_s = obj.get("ttl_s")
    if ttl_s is not None and (not isinstance(ttl_s, int) or isinstance(ttl_s, bool) or ttl_s <= 0):
        raise InvalidRequest("ttl_s must be a positive whole number of seconds")
    ttl_ms = None if ttl_s is None else ttl_s * 1000
    now = _now_ms()
    issued = await ctx.app.store.transact(
        lambda tx: tokens.rotate_token(tx, token_id, principal, ttl_ms=ttl_ms, now_ms=now)
    )
    return respond(
        {
            "token": issued.bearer,
            "token_id": issued.token_id,
            "old_token_id": token_id,
            "expires_ms": issued.expires_ms,
        },
        ctx.request,
    )


# --- the table -----------------------------------------------------------------------

_GRANT = {"type": "object", "required": ["id", "grantee_did", "target", "scopes"]}
_TARGET_SCHEMA = {
    "type": "object",
    "required": ["type"],
    "properties": {
        "type": {"type": "string", "enum": ["instance", "namespace", "thread"]},
        "value": {"type": "string"},
        "namespace": {"type": ["string", "null"]},
    },
}
_SCOPES = {"type": "array", "items": {"type": "string"}}
_INVITE_ID = Param("invite_id", "path", required=True)

CONSENT_ROUTES: list[RouteSpec] = [
    RouteSpec(
        "GET",
        "/v1/grants",
        "admin",
        list_grants,
        "List grants (optionally of one grantee)",
        "list_grants",
        params=(Param("grantee_did"),),
        response_schema={"type": "object", "required": ["grants", "consent_revision"]},
    ),
    RouteSpec(
        "POST",
        "/v1/grants",
        "admin",
        create_grant,
        "Grant a DID read access to the instance, a namespace prefix or a thread",
        "create_grant",
        request_schema={
            "type": "object",
            "required": ["grantee_did"],
            "properties": {
                "grantee_did": {"type": "string"},
                "target": _TARGET_SCHEMA,
                "scopes": _SCOPES,
                "expires_ms": {"type": "integer"},
                "ttl_s": {"type": "integer", "minimum": 1},
            },
        },
        response_schema={"type": "object", "required": ["grant", "consent_revision"]},
        success_status=201,
        errors=("INVALID_REQUEST", "DID_INVALID"),
    ),
    RouteSpec(
        "DELETE",
        "/v1/grants/{grant_id}",
        "admin",
        delete_grant,
        "Remove a grant (takes effect on the caller's next page)",
        "delete_grant",
        params=(Param("grant_id", "path", required=True),),
        response_schema={"type": "object", "required": ["deleted", "consent_revision"]},
        errors=("GRANT_NOT_FOUND",),
    ),
    RouteSpec(
        "GET",
        "/v1/scope_presets",
        "public",
        scope_presets,
        "Scopes, presets (reader, contributor, admin), target and holder types",
        "scope_presets",
        response_schema={"type": "object", "required": ["scopes", "presets"]},
    ),
    RouteSpec(
        "POST",
        "/v1/invites",
        "admin",
        create_invite,
        "Issue a signed invite; the answer's url carries the secret (shown once)",
        "create_invite",
        request_schema={
            "type": "object",
            "properties": {
                "ttl_s": {"type": "integer", "minimum": 60},
                "max_uses": {"type": "integer", "minimum": 1, "maximum": inv.MAX_USES},
                "scopes": _SCOPES,
                "scope_target": _TARGET_SCHEMA,
                "accept_holder_types": {
                    "type": "array",
                    "items": {"type": "string", "enum": list(inv.HOLDER_TYPES)},
                },
                "token_ttl_s": {"type": "integer", "minimum": 60},
                "device_label": {"type": "string", "maxLength": 128},
                "notes": {"type": "string", "maxLength": 2000},
                "base_url": {"type": "string"},
            },
        },
        response_schema={
            "type": "object",
            "required": ["invite_id", "expires_at", "uses_remaining", "url"],
        },
        success_status=201,
        errors=("INVALID_REQUEST",),
    ),
    RouteSpec(
        "GET",
        "/v1/invites",
        "admin",
        list_invites,
        "List invites with their folded state",
        "list_invites",
        params=(Param("state", schema={"type": "string", "enum": list(inv.INVITE_STATES)}),),
        response_schema={"type": "object", "required": ["invites"]},
        errors=("INVALID_REQUEST",),
    ),
    RouteSpec(
        "GET",
        "/v1/invites/audit",
        "admin",
        invite_audit,
        "Invite audit feed: issued, redeemed, redeem_rejected (with reason), revoked",
        "invite_audit",
        params=(
            Param("since", schema={"type": "integer", "minimum": 0}),
            Param("limit", schema={"type": "integer", "minimum": 1, "maximum": 1000}),
            Param("invite_id"),
        ),
        response_schema={"type": "object", "required": ["events", "next_since"]},
        errors=("INVALID_REQUEST",),
    ),
    RouteSpec(
        "POST",
        "/v1/invites/bulk-revoke",
        "admin",
        bulk_revoke,
        "Revoke every expired or every exhausted invite (and the tokens they produced)",
        "bulk_revoke_invites",
        request_schema={
            "type": "object",
            "required": ["filter"],
            "properties": {"filter": {"type": "string", "enum": ["expired", "exhausted"]}},
        },
        response_schema={"type": "object", "required": ["revoked", "count"]},
    ),
    RouteSpec(
        "GET",
        "/v1/invites/{invite_id}",
        "public",
        preview_invite,
        "Public preview of an invite: issuer, scopes, expiry, state, signed document",
        "preview_invite",
        params=(_INVITE_ID,),
        response_schema={
            "type": "object",
            "required": ["invite_id", "issuer_did", "state", "scopes", "invite"],
        },
        errors=("INVITE_NOT_FOUND",),
    ),
    RouteSpec(
        "POST",
        "/v1/invites/{invite_id}/revoke",
        "admin",
        revoke_invite,
        "Revoke an invite and every token it produced (idempotent)",
        "revoke_invite",
        params=(_INVITE_ID,),
        response_schema={"type": "object", "required": ["invite", "changed"]},
        errors=("INVITE_NOT_FOUND",),
    ),
    RouteSpec(
        "POST",
        "/v1/invites/{invite_id}/redeem",
        "public",
        redeem_invite,
        "Redeem an invite as a guest (public key) or a federated holder (DID + proof)",
        "redeem_invite",
        params=(_INVITE_ID,),
        request_schema={
            "type": "object",
            "required": ["holder_type", "secret"],
            "properties": {
                "holder_type": {"type": "string", "enum": list(inv.HOLDER_TYPES)},
                "secret": {"type": "string"},
                "holder_pubkey": {"type": "string"},
                "holder_label": {"type": "string", "maxLength": 128},
                "holder_did": {"type": "string"},
                "holder_proof": {"type": "string"},
                "holder_proof_issued_at_ms": {"type": "integer", "minimum": 0},
                "reciprocal": {
                    "type": "object",
                    "properties": {
                        "token": {"type": "string"},
                        "scopes": _SCOPES,
                        "url": {"type": "string"},
                    },
                },
            },
        },
        response_schema={
            "type": "object",
            "required": [
                "token",
                "token_id",
                "expires_ms",
                "actor_did",
                "issuer_did",
                "scopes",
                "scope_target",
                "confirmation_code",
            ],
        },
        success_status=201,
        errors=(
            "INVITE_NOT_FOUND",
            "INVITE_EXPIRED",
            "INVITE_REVOKED",
            "INVITE_EXHAUSTED",
            "INVITE_SECRET_INVALID",
            "HOLDER_TYPE_MISMATCH",
            "BAD_PROOF",
            "KEY_UNKNOWN",
            "FRESHNESS_VIOLATION",
            "PROOF_REPLAYED",
            "PAIR_SELF",
            "DID_INVALID",
        ),
    ),
    RouteSpec(
        "POST",
        "/v1/tokens/{token_id}/rotate",
        "public",
        rotate_token,
        "Rotate the calling token: a new bearer with a slid expiry; the old one stops working."
        " Needs that token as the bearer (any scope).",
        "rotate_token",
        params=(Param("token_id", "path", required=True),),
        response_schema={"type": "object", "required": ["token", "token_id", "expires_ms"]},
        errors=("ROTATE_NOT_SELF", "AUTH_REQUIRED", "TOKEN_INVALID", "TOKEN_EXPIRED"),
    ),
]

__all__ = ["CONSENT_ROUTES", "RESOLVER_KEY", "consent_view", "publish_consent_revision"]
