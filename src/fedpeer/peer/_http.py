"""HTTP edge helpers: content negotiation, bounded body reading, error bodies.

Bodies are DAG-CBOR (``application/cbor``) or DAG-JSON (``application/json``);
the same value goes out in either, chosen by ``Accept``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Literal

import anyio
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from ..errors import (
    BodyTimeout,
    BodyTooLarge,
    FedpeerError,
    Malformed,
    NotAcceptable,
    RateLimited,
    UnsupportedMediaType,
)
from ..identity._dagcbor import parse_unchecked
from ..identity.canonical import dagcbor_decode, dagcbor_encode, dagjson_decode, dagjson_encode
from ._offloop import INLINE_MAX, off_loop, values_exceed

CBOR = "application/cbor"
JSON = "application/json"

PUBLIC_BODY_MAX = 16 * 1024
"""Largest body a route open to anyone reads (an invite redeem, an unpair notice:
a few KiB at most). 4 MiB of nested CBOR decodes to ~300 MB in ~3 s."""
PUBLIC_BODY_ITEMS = 1024
"""Most values (map keys and values, list items, nested) such a body may hold: it
is counted on a fast parse before the full decode (16 KiB of empty CBOR arrays
costs ~11 ms to decode, ~3 ms to refuse this way)."""
Encoding = Literal["cbor", "json"]


def negotiate(request: Request) -> Encoding:
    """Pick the response encoding from ``Accept`` (JSON unless CBOR is preferred).

    Raises NotAcceptable when the client accepts neither.
    """
    accept = request.headers.get("accept", "")
    if not accept.strip():
        return "json"
    best: tuple[float, Encoding] | None = None
    for part in accept.split(","):
        fields = [f.strip() for f in part.split(";")]
        media = fields[0].lower()
        q = 1.0
        for f in fields[1:]:
            if f[:2].lower() == "q=":  # parameter names are case-insensitive (RFC 9110)
                try:
                    q = float(f[2:])
                except ValueError:
                    q = 0.0
        enc: Encoding | None
        if media == CBOR:
            enc = "cbor"
        elif media in (JSON, "application/*", "*/*", "text/event-stream"):
            enc = "json"
        else:
            enc = None
        if enc is not None and q > 0 and (best is None or q > best[0]):
            best = (q, enc)
    if best is None:
        raise NotAcceptable(f"cannot answer with {accept!r}; accept {JSON} or {CBOR}")
    return best[1]


def encode_body(value: object, encoding: Encoding) -> tuple[bytes, str]:
    """Encode ``value`` as DAG-CBOR or DAG-JSON; returns (bytes, media type)."""
    if encoding == "cbor":
        return dagcbor_encode(value), CBOR
    return dagjson_encode(value), JSON


def respond(
    value: object, request: Request, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A response carrying ``value`` in the negotiated encoding."""
    body, media = encode_body(value, negotiate(request))
    return Response(body, status_code=status, media_type=media, headers=headers)


def error_response(err: FedpeerError, headers: dict[str, str] | None = None) -> Response:
    """``{"error": {"code", "message"}}`` as JSON with the error's status (and
    ``Retry-After`` for a ``RateLimited`` that says when)."""
    if (
        isinstance(err, RateLimited)
        and err.retry_after is not None
        and not any(k.lower() == "retry-after" for k in headers or {})
    ):
        headers = {**(headers or {}), "Retry-After": str(max(1, math.ceil(err.retry_after)))}
    body = json.dumps(err.to_dict(), ensure_ascii=False).encode()
    return Response(body, status_code=err.http_status, media_type=JSON, headers=headers)


# How much of an oversized body is read and thrown away before answering 413, so
# the client gets to read the answer instead of blocking on a full socket buffer.
DRAIN_LIMIT = 64 * 1024 * 1024


async def _drain(request: Request) -> None:
    drained = 0
    try:
        async for chunk in request.stream():
            drained += len(chunk)
            if drained > DRAIN_LIMIT:
                return
    except (RuntimeError, ClientDisconnect):
        return  # already fully read, or the client went away: nothing to drain


BODY_TIMEOUT_S = 30.0
"""How long a body may take to arrive when the app has no node config."""


def _body_timeout(request: Request) -> float:
    state = getattr(request.app.state, "fedpeer", None) if "app" in request.scope else None
    config = getattr(state, "config", None)
    return float(getattr(config, "body_timeout_s", BODY_TIMEOUT_S))


async def read_body(request: Request, limit: int) -> bytes:
    """Read the request body, refusing more than ``limit`` bytes (BodyTooLarge).

    An oversized body is drained (up to 64 MiB) before the error is raised so
    the client reads the 413 answer rather than a reset connection. The whole
    body, drain included, must arrive within the node's ``body_timeout_s``
    (BODY_TIMEOUT, 408): a client trickling its body cannot hold a connection.
    """
    timeout = _body_timeout(request)
    try:
        with anyio.fail_after(timeout):
            return await _read_body(request, limit)
    except TimeoutError:
        raise BodyTimeout(
            f"the request body did not arrive within {timeout:g} s; send it at once"
        ) from None


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise Malformed("Content-Length is not a number") from None
        if size > limit:
            await _drain(request)
            raise BodyTooLarge(f"body of {declared} bytes is over the {limit}-byte limit")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                await _drain(request)
                raise BodyTooLarge(f"body is over the {limit}-byte limit")
            chunks.append(chunk)
    except ClientDisconnect:
        raise Malformed("the client disconnected before sending the whole body") from None
    return b"".join(chunks)


def request_encoding(request: Request) -> Encoding:
    """The body encoding from ``Content-Type`` (JSON when absent)."""
    ctype = request.headers.get("content-type", JSON).split(";")[0].strip().lower()
    if ctype == CBOR:
        return "cbor"
    if ctype in (JSON, ""):
        return "json"
    raise UnsupportedMediaType(f"cannot read {ctype!r}; send {JSON} or {CBOR}")


async def read_value(request: Request, limit: int, *, max_items: int | None = None) -> object:
    """Read and decode a DAG-JSON or DAG-CBOR body (Malformed, NonCanonical).

    ``max_items``: refuse (``MALFORMED``) a body holding more values than that,
    before the full decode (for the routes anyone may call)."""
    enc = request_encoding(request)
    body = await read_body(request, limit)
    if not body:
        raise Malformed("the request needs a body")
    if max_items is not None and _holds_more_than(body, enc, max_items):
        raise Malformed(f"the body holds more than {max_items} values; this route takes a few")
    decode = dagcbor_decode if enc == "cbor" else dagjson_decode
    if len(body) <= INLINE_MAX:
        return decode(body)
    # a large body may take seconds (millions of tiny items): off the event loop
    return await off_loop(decode, body)


async def respond_heavy(
    build: Callable[[], object], request: Request, weight: int, status: int = 200
) -> Response:
    """:func:`respond` for a value ``build()`` makes, whose making and encoding
    cost grows with ``weight`` (the bytes of the records in it): above ``INLINE_MAX``
    both happen off the event loop (:func:`off_loop`); a record of a million
    empty lists takes a second to render as JSON."""
    encoding = negotiate(request)
    if weight <= INLINE_MAX:
        body, media = encode_body(build(), encoding)
    else:
        body, media = await off_loop(lambda: encode_body(build(), encoding))
    return Response(body, status_code=status, media_type=media)


def _holds_more_than(body: bytes, enc: Encoding, budget: int) -> bool:
    """Whether a fast parse of ``body`` (C parsers, no canonical check) finds more
    than ``budget`` values. A body they cannot parse is left to the full decoder,
    which names what is wrong with it."""
    try:
        value = parse_unchecked(body) if enc == "cbor" else json.loads(body)
    except (FedpeerError, ValueError, RecursionError):
        return False
    return values_exceed(value, budget)


def read_json_object(value: object) -> dict[str, object]:
    """Check that a decoded body is a map (Malformed otherwise)."""
    if not isinstance(value, dict):
        raise Malformed("the body must be an object")
    return value
