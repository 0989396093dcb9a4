"""Consent routes: grants, invites, scope presets, token rotation.

Each handler parses the request at the edge, calls one method of the node's
services (:mod:`fedpeer.peer.services`: grants, invites, tokens) and renders
its answer; the decisions (who sees what, how a redemption is checked) live
there.
"""

from __future__ import annotations

from starlette.responses import Response

from ..consent import grants as grants_mod
from ..consent import invites as inv
from ..consent.scopes import ALL_SCOPES, scopes_to_list
from ..errors import AuthRequired, FedpeerError, InvalidRequest
from ..identity.canonical import dagcbor_decode, dagjson_decode
from ._http import (
    PUBLIC_BODY_ITEMS,
    PUBLIC_BODY_MAX,
    read_body,
    read_json_object,
    read_value,
    request_encoding,
    respond,
)
from ._routing import Ctx, Param, RouteSpec

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
    grants = ctx.app.grants
    found = await grants.list(grantee_did=_q(ctx, "grantee_did"))
    revision = await grants.revision()
    now = ctx.app.core.now_ms()
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
    grant = await ctx.app.grants.create(
        grantee,
        target=target,
        scopes=[str(s) for s in raw_scopes],
        expires_ms=obj.get("expires_ms"),  # type: ignore[arg-type]  # the service checks types
        ttl_s=obj.get("ttl_s"),  # type: ignore[arg-type]
    )
    revision = ctx.app.core.consent_revision
    return respond(
        {"grant": grant.to_dict(), "consent_revision": revision}, ctx.request, status=201
    )


async def delete_grant(ctx: Ctx) -> Response:
    grant = await ctx.app.grants.delete(ctx.request.path_params["grant_id"])
    revision = ctx.app.core.consent_revision
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


async def create_invite(ctx: Ctx) -> Response:
    obj = await _optional_body(ctx)
    invites = ctx.app.invites
    fallback = None
    if obj.get("base_url") is None and invites.default_base_url() is None:
        fallback = str(ctx.request.base_url).rstrip("/")  # the URL the admin used
    created = await invites.create_from(obj, base_url=fallback)
    return respond(created.to_dict(), ctx.request, status=201)


async def list_invites(ctx: Ctx) -> Response:
    found = await ctx.app.invites.list(state=_q(ctx, "state"))
    return respond({"invites": [i.to_dict() for i in found]}, ctx.request)


async def preview_invite(ctx: Ctx) -> Response:
    preview = await ctx.app.invites.preview(ctx.request.path_params["invite_id"])
    return respond(preview, ctx.request)


async def revoke_invite(ctx: Ctx) -> Response:
    invite, changed = await ctx.app.invites.revoke(ctx.request.path_params["invite_id"])
    return respond({"invite": invite.to_dict(), "changed": changed}, ctx.request)


async def bulk_revoke(ctx: Ctx) -> Response:
    obj = await _body(ctx)
    flt = obj.get("filter")
    if flt not in ("expired", "exhausted") or set(obj) - {"filter"}:
        raise InvalidRequest("body must be {filter: 'expired' | 'exhausted'}")
    revoked = await ctx.app.invites.bulk_revoke(str(flt))
    return respond({"revoked": revoked, "count": len(revoked)}, ctx.request)


async def invite_audit(ctx: Ctx) -> Response:
    page = await ctx.app.invites.audit(
        since=_int_q(ctx, "since", 0, 0, 2**62),
        limit=_int_q(ctx, "limit", 100, 1, 1000),
        invite_id=_q(ctx, "invite_id"),
    )
    return respond(page.to_dict(), ctx.request)


async def redeem_invite(ctx: Ctx) -> Response:
    invite_id = ctx.request.path_params["invite_id"]
    invites = ctx.app.invites
    try:
        # anyone may call this: a small body limit, whatever max_body_bytes is
        limit = min(ctx.app.config.max_body_bytes, PUBLIC_BODY_MAX)
        obj = read_json_object(await read_value(ctx.request, limit, max_items=PUBLIC_BODY_ITEMS))
    except FedpeerError as err:
        await invites.audit_rejection(invite_id, err.code, None, None)
        raise
    answer = await invites.redeem(invite_id, obj)
    return respond(answer.to_dict(), ctx.request, status=201)


# --- tokens --------------------------------------------------------------------------


async def rotate_token(ctx: Ctx) -> Response:
    token_id = ctx.request.path_params["token_id"]
    principal = ctx.principal
    if principal is None:
        raise AuthRequired("rotate a token by calling this route with that token as the bearer")
    obj = await _optional_body(ctx)
    if set(obj) - {"ttl_s"}:
        raise InvalidRequest("body may only hold {ttl_s}")
    rotated = await ctx.app.tokens.rotate_self(token_id, principal, ttl_s=obj.get("ttl_s"))  # type: ignore[arg-type]  # the service checks it
    return respond(rotated.to_dict(), ctx.request)


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
        errors=(
            "ROTATE_NOT_SELF",
            "AUTH_REQUIRED",
            "TOKEN_INVALID",
            "TOKEN_EXPIRED",
            "RATE_LIMITED",
        ),
    ),
]

__all__ = ["CONSENT_ROUTES"]
