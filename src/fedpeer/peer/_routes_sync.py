"""Sync pair routes: ``/v1/sync/pairs`` (create, from-invite, list, get, delete,
unpair, pause, resume, kick, credential, stats), ``/v1/sync/health`` and the
peer-facing ``POST /v1/sync/unpair``.

Every route but ``POST /v1/sync/unpair`` needs the ``admin`` scope: a pair holds
a credential for another node, and the health view names this node's peers. The
unpair request is public: its signature (protocol.md §11.3) authenticates it, and
all it can do is make this node forget the signer. Handlers parse input at the
edge and call the node's :class:`~fedpeer.peer.services.PairService`; a pair is
shown as its :class:`~fedpeer.peer.services.PairStatus` (never the credential).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.responses import Response

from ..errors import InternalError, InvalidRequest
from ..sync.pairs import PairAction, PairFilter
from ._http import PUBLIC_BODY_ITEMS, PUBLIC_BODY_MAX, read_json_object, read_value, respond
from ._routing import Ctx, Param, RouteSpec
from .services import PairService

__all__ = ["SYNC_ROUTES"]


def _pairs(ctx: Ctx) -> PairService:
    if ctx.app.pairs is None:
        raise InternalError("sync pairs are not running on this node")
    return ctx.app.pairs


def _pair_id(ctx: Ctx) -> str:
    return str(ctx.request.path_params["pair_id"])


def _opt_str(obj: dict[str, object], name: str) -> str | None:
    value = obj.get(name)
    if value is not None and not isinstance(value, str):
        raise InvalidRequest(f"{name} must be a string or null")
    return value


async def create_pair(ctx: Ctx) -> Response:
    obj = read_json_object(await read_value(ctx.request, ctx.app.config.max_body_bytes))
    allowed = {"peer_url", "peer_did", "credential", "filter", "author_allowlist"}
    extra = set(obj) - allowed
    if extra:
        raise InvalidRequest(f"unknown fields {sorted(extra)}; allowed: {sorted(allowed)}")
    peer_url = obj.get("peer_url")
    if not isinstance(peer_url, str):
        raise InvalidRequest("peer_url is required: the http(s) URL of the node to pull from")
    peer_did = _opt_str(obj, "peer_did")
    credential = _opt_str(obj, "credential")
    flt = PairFilter.from_dict(obj.get("filter"))
    allow = obj.get("author_allowlist")
    if allow is not None and (
        not isinstance(allow, list) or not all(isinstance(d, str) for d in allow)
    ):
        raise InvalidRequest("author_allowlist must be a list of DIDs or null")
    pairs = _pairs(ctx)
    pair, created = await pairs.create(
        peer_url, token=credential, peer_did=peer_did, filter=flt, author_allowlist=allow
    )
    return respond(pairs.status(pair.id).to_dict(), ctx.request, status=201 if created else 200)


async def pair_from_invite(ctx: Ctx) -> Response:
    obj = read_json_object(await read_value(ctx.request, ctx.app.config.max_body_bytes))
    allowed = {"invite_url", "bidirectional", "label"}
    if set(obj) - allowed:
        raise InvalidRequest(
            f"unknown fields {sorted(set(obj) - allowed)}; allowed: {sorted(allowed)}"
        )
    url = obj.get("invite_url")
    if not isinstance(url, str):
        raise InvalidRequest("invite_url is required: the invite URL from the other node")
    both = obj.get("bidirectional", True)
    if not isinstance(both, bool):
        raise InvalidRequest("bidirectional must be true or false")
    label = _opt_str(obj, "label")
    pairs = _pairs(ctx)
    result = await pairs.from_invite(url, bidirectional=both, label=label)
    body = pairs.pairing_result(result).to_dict()
    return respond(body, ctx.request, status=201 if result.created else 200)


async def list_pairs(ctx: Ctx) -> Response:
    return respond({"pairs": [p.to_dict() for p in _pairs(ctx).statuses()]}, ctx.request)


async def get_pair(ctx: Ctx) -> Response:
    return respond(_pairs(ctx).status(_pair_id(ctx)).to_dict(), ctx.request)


async def delete_pair(ctx: Ctx) -> Response:
    pid = _pair_id(ctx)
    await _pairs(ctx).delete(pid)
    return respond({"deleted": pid}, ctx.request)


def _action(action: PairAction) -> Callable[[Ctx], Awaitable[Response]]:
    async def handler(ctx: Ctx) -> Response:
        pairs = _pairs(ctx)
        pid = _pair_id(ctx)
        await pairs.manager.act(pid, action)
        return respond(pairs.status(pid).to_dict(), ctx.request)

    handler.__name__ = f"{action.value}_pair"
    return handler


async def set_credential(ctx: Ctx) -> Response:
    obj = read_json_object(await read_value(ctx.request, ctx.app.config.max_body_bytes))
    if set(obj) != {"credential"}:
        raise InvalidRequest('the body is {"credential": "<bearer token>" | null}')
    pairs = _pairs(ctx)
    pid = _pair_id(ctx)
    await pairs.set_credential(pid, _opt_str(obj, "credential"))
    return respond(pairs.status(pid).to_dict(), ctx.request)


async def unpair(ctx: Ctx) -> Response:
    obj = read_json_object(await read_value(ctx.request, ctx.app.config.max_body_bytes))
    if not set(obj) <= {"pair", "notify"} or not isinstance(obj.get("pair"), str):
        raise InvalidRequest('the body is {"pair": "<pair id or peer DID>", "notify": true}')
    notify = obj.get("notify", True)
    if not isinstance(notify, bool):
        raise InvalidRequest("notify must be true or false")
    result = await _pairs(ctx).unpair(str(obj["pair"]), notify=notify)
    return respond(result.to_dict(), ctx.request)


async def unpair_request(ctx: Ctx) -> Response:
    # anyone may call this: a small body limit, whatever max_body_bytes is
    value = await read_value(
        ctx.request,
        min(ctx.app.config.max_body_bytes, PUBLIC_BODY_MAX),
        max_items=PUBLIC_BODY_ITEMS,
    )
    return respond(await _pairs(ctx).unpaired_by_peer(value), ctx.request)


async def pair_stats(ctx: Ctx) -> Response:
    return respond(_pairs(ctx).stats(_pair_id(ctx)), ctx.request)


async def sync_health(ctx: Ctx) -> Response:
    return respond(_pairs(ctx).health(), ctx.request)


# --- the table ------------------------------------------------------------------------

_ID = Param("pair_id", "path", required=True, description="pair id (p_ + 24 hex)")
_NAME = {"type": ["string", "null"], "minLength": 1, "maxLength": 256}
_FILTER = {
    "type": ["object", "null"],
    "properties": {"namespace": _NAME, "thread": _NAME},
    "additionalProperties": False,
}
_PAIR = {
    "type": "object",
    "required": ["id", "peer_did", "peer_url", "state", "cursor", "retries", "last_error", "lag"],
    "properties": {
        "id": {"type": "string"},
        "peer_did": {"type": "string"},
        "peer_url": {"type": "string"},
        "state": {
            "type": "string",
            "enum": ["running", "caught_up", "failing", "paused", "stopped"],
        },
        "cursor": {"type": ["string", "null"]},
        "retries": {"type": "integer"},
        "last_error": {"type": ["object", "null"]},
        "lag": {"type": "object"},
        "stats": {"type": "object"},
        "has_credential": {"type": "boolean"},
    },
}
_ACTION_ERRORS = ("PAIR_NOT_FOUND", "PAIR_STATE_INVALID", "STORE_ERROR")


def _action_route(action: PairAction, summary: str) -> RouteSpec:
    return RouteSpec(
        "POST",
        f"/v1/sync/pairs/{{pair_id}}/{action.value}",
        "admin",
        _action(action),
        summary,
        f"{action.value}_pair",
        params=(_ID,),
        response_schema=_PAIR,
        errors=_ACTION_ERRORS,
    )


# What pairing with a peer can be refused with: its address, its manifest check
# (identity, pin, the bounded read) and the request itself.
_PEER_CHECK_ERRORS = (
    "PAIR_SELF",
    "INVALID_REQUEST",
    "DID_MISMATCH",
    "TLS_PIN_MISMATCH",
    "PEER_UNREACHABLE",
    "PEER_INVALID",
    "PAGE_TOO_LARGE",
    "PEER_TOO_SLOW",
    "REDIRECT_REFUSED",
)

SYNC_ROUTES: list[RouteSpec] = [
    RouteSpec(
        "POST",
        "/v1/sync/pairs/from-invite",
        "admin",
        pair_from_invite,
        "Redeem another node's invite and set up the pair; two-way by default (the "
        "issuer then pulls back with a read credential minted here)",
        "pair_from_invite",
        request_schema={
            "type": "object",
            "required": ["invite_url"],
            "properties": {
                "invite_url": {"type": "string", "maxLength": 4096},
                "bidirectional": {"type": "boolean"},
                "label": {"type": ["string", "null"], "maxLength": 128},
            },
            "additionalProperties": False,
        },
        response_schema={
            "type": "object",
            "required": ["pair", "created", "confirmation_code", "two_way"],
        },
        success_status=201,
        errors=(
            *_PEER_CHECK_ERRORS,
            "MALFORMED",
            "INVITE_NOT_FOUND",
            "INVITE_EXPIRED",
            "INVITE_REVOKED",
            "INVITE_EXHAUSTED",
            "INVITE_SECRET_INVALID",
            "HOLDER_TYPE_MISMATCH",
            "BAD_SIGNATURE",
            "SIGNATURE_EXPIRED",
        ),
    ),
    RouteSpec(
        "POST",
        "/v1/sync/pairs",
        "admin",
        create_pair,
        "Pull from another node: verify its manifest, create the pair (or return the "
        "existing one) and start pulling",
        "create_pair",
        request_schema={
            "type": "object",
            "required": ["peer_url"],
            "properties": {
                "peer_url": {"type": "string", "maxLength": 2048},
                "peer_did": {"type": ["string", "null"]},
                "credential": {"type": ["string", "null"], "maxLength": 4096},
                "filter": _FILTER,
                "author_allowlist": {"type": ["array", "null"], "items": {"type": "string"}},
            },
            "additionalProperties": False,
        },
        response_schema=_PAIR,
        success_status=201,
        errors=(
            *_PEER_CHECK_ERRORS,
            "DID_INVALID",
            "PEER_ERROR",
            "STORE_ERROR",
        ),
    ),
    RouteSpec(
        "GET",
        "/v1/sync/pairs",
        "admin",
        list_pairs,
        "List the pairs this node pulls through",
        "list_pairs",
        response_schema={
            "type": "object",
            "required": ["pairs"],
            "properties": {"pairs": {"type": "array", "items": _PAIR}},
        },
    ),
    RouteSpec(
        "GET",
        "/v1/sync/pairs/{pair_id}",
        "admin",
        get_pair,
        "One pair: state, cursor, lag, retries, last error, timestamps, stats",
        "get_pair",
        params=(_ID,),
        response_schema=_PAIR,
        errors=("PAIR_NOT_FOUND",),
    ),
    RouteSpec(
        "DELETE",
        "/v1/sync/pairs/{pair_id}",
        "admin",
        delete_pair,
        "Delete a pair (the records it pulled stay)",
        "delete_pair",
        params=(_ID,),
        response_schema={"type": "object", "required": ["deleted"]},
        errors=_ACTION_ERRORS,
    ),
    RouteSpec(
        "POST",
        "/v1/sync/pairs/unpair",
        "admin",
        unpair,
        "Unpair from a peer (a pair id or the peer's DID): revoke what it holds here, ask "
        "it (signed, POST /v1/sync/unpair) to do the same, delete the pairs pulling from it",
        "unpair",
        request_schema={
            "type": "object",
            "required": ["pair"],
            "properties": {
                "pair": {"type": "string", "maxLength": 512},
                "notify": {"type": "boolean"},
            },
            "additionalProperties": False,
        },
        response_schema={
            "type": "object",
            "required": ["peer_did", "pairs_deleted", "credentials_revoked", "peer"],
        },
        errors=("PAIR_NOT_FOUND", "PAIR_SELF", "INVALID_REQUEST"),
    ),
    RouteSpec(
        "POST",
        "/v1/sync/unpair",
        "public",
        unpair_request,
        "A peer asks this node to forget it (a signed request, protocol.md §11.3): its "
        "credentials here are revoked and the pairs pulling from it deleted",
        "unpair_request",
        request_schema={
            "type": "object",
            "required": ["type", "from", "to", "nonce", "signature"],
        },
        response_schema={
            "type": "object",
            "required": ["pairs_deleted", "credentials_revoked"],
        },
        errors=(
            "INVALID_REQUEST",
            "MALFORMED",
            "DID_INVALID",
            "BAD_SIGNATURE",
            "DID_MISMATCH",
            "SIGNATURE_EXPIRED",
            "SIGNATURE_NOT_YET_VALID",
            "KEY_UNKNOWN",
            "PROOF_REPLAYED",
        ),
    ),
    _action_route(PairAction.PAUSE, "Pause a pair (a request in flight is abandoned)"),
    _action_route(PairAction.RESUME, "Resume a paused or stopped pair"),
    _action_route(PairAction.KICK, "Poll now: end a backoff or longpoll, reset retries"),
    RouteSpec(
        "POST",
        "/v1/sync/pairs/{pair_id}/credential",
        "admin",
        set_credential,
        "Replace the bearer token shown to the peer (a stopped pair then needs resume)",
        "set_pair_credential",
        params=(_ID,),
        request_schema={
            "type": "object",
            "required": ["credential"],
            "properties": {"credential": {"type": ["string", "null"], "maxLength": 4096}},
            "additionalProperties": False,
        },
        response_schema=_PAIR,
        errors=_ACTION_ERRORS,
    ),
    RouteSpec(
        "GET",
        "/v1/sync/pairs/{pair_id}/stats",
        "admin",
        pair_stats,
        "A pair's counters, rolling rate, latency histogram, errors last hour, backoff",
        "pair_stats",
        params=(_ID,),
        response_schema={
            "type": "object",
            "required": [
                "pair_id",
                "state",
                "records",
                "bytes",
                "pages",
                "rate_per_s",
                "latency_p50_ms",
                "latency_p95_ms",
                "latency_counts",
                "errors_last_hour",
                "current_backoff_s",
                "lag",
            ],
        },
        errors=("PAIR_NOT_FOUND",),
    ),
    RouteSpec(
        "GET",
        "/v1/sync/health",
        "admin",
        sync_health,
        "Sync health: pairs by state, records per minute/hour, p50/p95 latency, "
        "slowest and most failing pairs",
        "sync_health",
        response_schema={
            "type": "object",
            "required": [
                "status",
                "pairs",
                "by_state",
                "records_per_minute",
                "records_last_hour",
                "latency_p50_ms",
                "latency_p95_ms",
                "slowest",
                "most_failing",
            ],
        },
    ),
]
