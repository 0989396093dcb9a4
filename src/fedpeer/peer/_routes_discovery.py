"""The mDNS roster route: ``GET /v1/discovery/mdns`` (admin)."""

from __future__ import annotations

from starlette.responses import Response

from ._http import respond
from ._routing import Ctx, RouteSpec

__all__ = ["MDNS_ROUTE"]

# --- HTTP route ------------------------------------------------------------------------

_OFF: dict[str, object] = {
    "enabled": False,
    "status": "off",
    "last_error": None,
    "did": None,
    "instance": None,
    "addresses": [],
    "port": None,
    "peers": [],
}


async def _get_mdns(ctx: Ctx) -> Response:
    disc = ctx.app.discovery
    body = disc.to_json() if disc is not None else dict(_OFF, did=ctx.app.did)
    return respond(body, ctx.request)


_PEER_SCHEMA: dict[str, object] = {
    "type": "object",
    "required": ["name", "did", "handle", "addresses", "port", "status", "reason"],
    "properties": {
        "name": {"type": "string"},
        "did": {"type": "string"},
        "handle": {"type": "string"},
        "addresses": {"type": "array", "items": {"type": "string"}},
        "port": {"type": "integer"},
        "url": {"type": ["string", "null"]},
        "namespaces": {"type": "array", "items": {"type": "string"}},
        "capabilities": {"type": "array", "items": {"type": "string"}},
        "seq": {"type": "integer"},
        "expires_at_ms": {"type": "integer"},
        "first_seen_ms": {"type": "integer"},
        "last_seen_ms": {"type": "integer"},
        "status": {"enum": ["unverified", "verified", "invalid"]},
        "reason": {"type": "string"},
        "checked_at_ms": {"type": ["integer", "null"]},
    },
}

MDNS_ROUTE = RouteSpec(
    "GET",
    "/v1/discovery/mdns",
    "admin",
    _get_mdns,
    "The mDNS roster: fedpeer nodes announced on the local network, with verification status",
    "discovery_mdns",
    response_schema={
        "type": "object",
        "required": ["enabled", "status", "peers"],
        "properties": {
            "enabled": {"type": "boolean"},
            "status": {"enum": ["off", "stopped", "starting", "running", "browse-only", "failed"]},
            "last_error": {"type": ["string", "null"]},
            "did": {"type": ["string", "null"]},
            "instance": {"type": ["string", "null"]},
            "addresses": {"type": "array", "items": {"type": "string"}},
            "port": {"type": ["integer", "null"]},
            "peers": {"type": "array", "items": _PEER_SCHEMA},
        },
    },
)
