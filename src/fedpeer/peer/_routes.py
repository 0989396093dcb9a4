"""Route handlers and THE route table (:data:`ROUTES`).

Each entry names its scope; :mod:`._routing` enforces it. Handlers parse and
validate input at the edge, call the layers below, and answer in the
negotiated encoding.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Iterable

import anyio
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ..consent.grants import EVERYTHING, ConsentView
from ..errors import AuthRequired, FedpeerError, InvalidRequest, Malformed
from ..identity.canonical import CID, dagcbor_decode, dagjson_encode
from ..store.base import ChangeFilter, StoredRecord, take_until
from ..sync.feed import (
    Cursor,
    FeedPage,
    build_page,
    changes_in,
    cursor_at,
    encode_page_cbor,
    page_cursor,
    page_to_wire,
    resolve_cursor,
)
from ..sync.records import record_to_wire
from ._http import (
    CBOR,
    JSON,
    read_json_object,
    read_value,
    respond,
    respond_heavy,
)
from ._offloop import INLINE_MAX, off_loop
from ._routes_consent import CONSENT_ROUTES
from ._routes_discovery import MDNS_ROUTE
from ._routes_sync import SYNC_ROUTES
from ._routing import Ctx, Param, RouteSpec
from .services import NodeCore, RecordEntry, parse_cid

Visible = Callable[[StoredRecord], bool]


async def visible_for(ctx: Ctx, scope: str = "sync:read") -> Visible:
    """What the caller may see through ``scope``: its grants, read fresh for each
    request (:meth:`GrantService.view_for`). The node itself and admins see
    everything."""
    return (await ctx.view(scope)).record_visible


# --- query parsing -----------------------------------------------------------------


def _q(ctx: Ctx, name: str) -> str | None:
    value = ctx.request.query_params.get(name)
    if value is None or value == "":
        return None
    return value


def _limit(ctx: Ctx, default: int | None = None) -> int:
    """The ``limit`` parameter: 1..page_limit_max; absent, ``default`` (None: the
    page_limit_default), never above the maximum the node advertises."""
    raw = _q(ctx, "limit")
    cfg = ctx.app.config
    if raw is None:
        return min(cfg.page_limit_default if default is None else default, cfg.page_limit_max)
    try:
        limit = int(raw)
    except ValueError:
        raise InvalidRequest(f"limit must be an integer from 1 to {cfg.page_limit_max}") from None
    if not 1 <= limit <= cfg.page_limit_max:
        raise InvalidRequest(f"limit must be from 1 to {cfg.page_limit_max}, got {limit}")
    return limit


def _name_param(ctx: Ctx, name: str) -> str | None:
    value = _q(ctx, name)
    if value is not None and len(value) > ctx.app.limits.max_name_len:
        raise InvalidRequest(f"{name} is longer than {ctx.app.limits.max_name_len} characters")
    return value


def _rec_json_bytes(rec: StoredRecord) -> bytes:
    return dagjson_encode(_rec_json(rec))


def _rec_json(rec: StoredRecord) -> dict[str, object]:
    """The JSON (DAG-JSON) form of a record: the exact wire fields plus a readable view."""
    wire = record_to_wire(rec)
    wire["seq"] = rec.seq
    wire["record"] = dagcbor_decode(rec.data)
    return wire


# --- meta ---------------------------------------------------------------------------


def transport_info(core: NodeCore) -> dict[str, object]:
    """How the node serves (shown by ``/health`` and ``fedpeer doctor``): ``scheme``,
    the served ``tls_spki_sha256`` (None over plain HTTP) and ``insecure_http``
    (plain HTTP reachable from the network, ``--insecure-http``)."""
    tls = core.tls
    return {
        "scheme": "http" if tls is None else "https",
        "tls_spki_sha256": None if tls is None else tls.current.pin,
        "insecure_http": tls is None and core.config.insecure_http,
    }


async def health(ctx: Ctx) -> Response:
    """Liveness for anyone: ``{status, did, transport}``. The store's size and the
    sync summary (``records``, ``head_seq``, ``health``) only for a caller who may
    read every record (an admin; anyone with authentication off): to others they
    would tell how much the node holds beyond their grants, and whether a record
    a drop box re-posted was new, by the count moving or not."""
    store = ctx.app.store
    body: dict[str, object] = {
        "status": "ok",
        "did": ctx.app.did,
        "transport": transport_info(ctx.app.core),
    }
    principal = ctx.principal
    if not ctx.app.config.auth_enabled or (principal is not None and principal.allows("admin")):
        body["records"] = await store.count()
        body["head_seq"] = await store.head_seq()
        if ctx.app.pairs is not None:
            body["health"] = await ctx.app.pairs.health_summary()
    return respond(body, ctx.request)


async def well_known(ctx: Ctx) -> Response:
    core = ctx.app.core
    signed = await core.signed_manifest()
    return respond(
        {"capabilities_manifest": core.capabilities(), "federation_manifest": signed},
        ctx.request,
    )


async def get_capabilities(ctx: Ctx) -> Response:
    return respond(ctx.app.core.capabilities(), ctx.request)


async def get_identity(ctx: Ctx) -> Response:
    p = ctx.principal
    token: dict[str, object] = {"authenticated": p is not None}
    if p is not None:
        token.update(
            {
                "service_account_id": p.sa_id,
                "token_id": p.token_id,
                "holder_did": p.holder_did,
                "scopes": sorted(p.scopes),
                "expires_ms": p.expires_ms,
            }
        )
    body = {
        "did": ctx.app.did,
        "handle": ctx.app.config.handle,
        "urls": ctx.app.urls,
        "auth_enabled": ctx.app.config.auth_enabled,
        "token": token,
    }
    return respond(body, ctx.request)


async def openapi(ctx: Ctx) -> Response:
    from .openapi import openapi_document

    return respond(openapi_document(ROUTES), ctx.request)


# --- records ---------------------------------------------------------------------


async def post_record(ctx: Ctx) -> Response:
    obj = read_json_object(await read_value(ctx.request, ctx.app.config.max_body_bytes))
    if "data" in obj or "sig" in obj:
        return await _ingest_signed(ctx, obj)
    allowed = {"namespace", "thread", "kind", "body", "parents"}
    extra = set(obj) - allowed
    if extra:
        raise InvalidRequest(f"unknown fields {sorted(extra)}; allowed: {sorted(allowed)}")
    for field in ("namespace", "thread", "kind"):
        if not isinstance(obj.get(field), str):
            raise InvalidRequest(f"{field} is required and must be a string")
    if "body" not in obj:
        raise InvalidRequest("body is required (any JSON value)")
    raw_parents = obj.get("parents", [])
    if not isinstance(raw_parents, list):
        raise InvalidRequest("parents must be a list of CIDs")
    parents = [p if isinstance(p, CID) else parse_cid(str(p)) for p in raw_parents]
    read_view = await ctx.view("records:read")
    entry = await ctx.app.records.append(
        namespace=str(obj["namespace"]),
        thread=str(obj["thread"]),
        kind=str(obj["kind"]),
        body=obj["body"],
        parents=parents,
        view=await ctx.view("records:write"),
        # what the parents' clocks may count (only read when there are parents)
        read_view=read_view if parents else EVERYTHING,
        writer=ctx.principal,
    )
    return _stored_answer(entry, True, read_view, ctx.request)


async def _ingest_signed(ctx: Ctx, obj: dict[str, object]) -> Response:
    """Verify a record signed elsewhere ({data, sig}) and store it as is."""
    data, sig = obj.get("data"), obj.get("sig")
    if not isinstance(data, bytes) or not isinstance(sig, bytes) or set(obj) - {"data", "sig"}:
        raise Malformed("a signed record is a map {data: bytes, sig: bytes}")
    entry, created = await ctx.app.records.ingest(
        data, sig, view=await ctx.view("records:write"), writer=ctx.principal
    )
    return _stored_answer(entry, created, await ctx.view("records:read"), ctx.request)


def _stored_answer(
    entry: RecordEntry, created: bool, read_view: ConsentView, request: Request
) -> Response:
    """The answer to a record write: ``{cid, seq, created}``, 201 or 200. A caller
    that may write here but not read (a drop box) gets 201 ``{cid, created:
    true}`` whatever happened: whether the node already had the record, and
    where it sits, are not its to know (seqs of two writes one apart would say
    that nothing was stored in between)."""
    if not read_view.visible(entry.record.namespace, entry.record.thread):
        return respond({"cid": str(entry.cid), "created": True}, request, status=201)
    return respond(
        {"cid": str(entry.cid), "seq": entry.seq, "created": created},
        request,
        status=201 if created else 200,
    )


async def import_records(ctx: Ctx) -> Response:
    """A batch of records signed elsewhere: all verified, then stored together."""
    obj = read_json_object(await read_value(ctx.request, ctx.app.config.max_body_bytes))
    items = obj.get("records")
    if set(obj) != {"records"} or not isinstance(items, list):
        raise Malformed('the body is {"records": [{"data": bytes, "sig": bytes}, ...]}')
    pairs: list[tuple[bytes, bytes]] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or set(item) != {"data", "sig"}:
            raise Malformed(f"records[{i}] is not a map {{data: bytes, sig: bytes}}")
        data, sig = item["data"], item["sig"]
        if not isinstance(data, bytes) or not isinstance(sig, bytes):
            raise Malformed(f"records[{i}]: data and sig are byte strings")
        pairs.append((data, sig))
    # the caller's write grants apply to every record, as on POST /v1/records
    view = await ctx.view("records:write")
    stored, existing = await ctx.app.records.ingest_many(
        pairs, view=view, read_view=await ctx.view("records:read"), writer=ctx.principal
    )
    return respond({"stored": stored, "existing": existing}, ctx.request)


async def get_record(ctx: Ctx) -> Response:
    cid = parse_cid(ctx.request.path_params["cid"])
    view = await ctx.view("records:read")
    rec = await ctx.app.records.get_stored(cid, view=view)
    if _wants_cbor(ctx):
        wire = record_to_wire(rec)
        wire["seq"] = rec.seq
        return respond(wire, ctx.request)
    return await respond_heavy(lambda: _rec_json(rec), ctx.request, len(rec.data))


def _wants_cbor(ctx: Ctx) -> bool:
    from ._http import negotiate

    return negotiate(ctx.request) == "cbor"


async def list_records(ctx: Ctx) -> Response:
    order = _q(ctx, "order") or "oldest"
    if order not in ("oldest", "newest"):
        raise InvalidRequest("order must be oldest or newest")
    page = await ctx.app.records.list(
        namespace=_name_param(ctx, "namespace"),
        thread=_name_param(ctx, "thread"),
        limit=_limit(ctx),
        since=_q(ctx, "since"),
        newest_first=order == "newest",
        view=await ctx.view("records:read"),
    )
    if _wants_cbor(ctx):
        records = [e.to_wire() for e in page.records]
        body = {"records": records, "next_cursor": page.next_cursor, "has_more": page.has_more}
        return respond(body, ctx.request)
    store = ctx.app.store
    budget = ctx.app.config.page_max_bytes

    def render() -> bytes:
        # cut by the JSON's size, the cursor then at the last record kept (it
        # names that record's seq in either order, as the listing's cursors do)
        items = _within_budget((dagjson_encode(e.to_dict()) for e in page.records), budget)
        cursor, more = page.next_cursor, page.has_more
        if len(items) < len(page.records):
            last = page.records[len(items) - 1]
            cursor = cursor_at(store.epoch, last.seq, last.cid.raw, key=store.cursor_key).encode()
            more = True
        return _with_records({"next_cursor": cursor, "has_more": more}, items)

    weight = sum(len(e.data) for e in page.records)
    return Response(await off_loop(render) if weight > INLINE_MAX else render(), media_type=JSON)


async def list_threads(ctx: Ctx) -> Response:
    prefix = _name_param(ctx, "namespace")
    # a page of (namespace, thread) pairs: the whole page limit unless asked for less
    # absent: a whole page_limit_max page, so a client that does not follow pages
    # (as before paging) still gets every thread of a node with fewer than that
    limit = _limit(ctx, default=ctx.app.config.page_limit_max)
    infos, next_cursor = await ctx.app.records.threads_page(
        prefix, limit=limit, since=_q(ctx, "since"), view=await ctx.view("records:read")
    )
    out = []
    for info in infos:
        out.append(
            {
                "namespace": info.namespace,
                "thread": info.thread,
                "count": info.count,
                "last_seq": info.last_seq,
            }
        )
    answer: dict[str, object] = {"threads": out, "has_more": next_cursor is not None}
    if next_cursor is not None:
        answer["next_cursor"] = next_cursor
    return respond(answer, ctx.request)


async def thread_records(ctx: Ctx) -> Response:
    thread = ctx.request.path_params["thread"]
    if len(thread) > ctx.app.limits.max_name_len:
        raise InvalidRequest("thread name too long")
    flt = ChangeFilter(namespace_prefix=_name_param(ctx, "namespace"), thread=thread)
    page = await _one_page(ctx, flt, _q(ctx, "since"), _limit(ctx), scope="records:read")
    return await _page_response(ctx, page)


# --- sync feed ---------------------------------------------------------------------


def _within_budget(items: Iterable[bytes], budget: int) -> list[bytes]:
    """The JSON records of an answer up to and including the one whose bytes
    reach ``budget`` (at least one), rendering no more. The JSON view of a
    record can weigh several times its wire bytes (a body of empty lists: "[],"
    for one byte), so a JSON answer is cut by its own size, not its records'."""
    return take_until(items, budget, len)[0]


def _with_records(rest: dict[str, object], items: list[bytes]) -> bytes:
    """DAG-JSON of ``rest`` with ``"records"`` set to the already encoded
    ``items``: the same bytes as encoding the whole value ("records" sorts last
    among the keys these answers have)."""
    head = dagjson_encode({**rest, "records": []})
    if not head.endswith(b'"records":[]}'):
        raise AssertionError("records is not the last key of this answer")
    return head[:-2] + b",".join(items) + b"]}"


async def _page_response(ctx: Ctx, page: FeedPage) -> Response:
    if _wants_cbor(ctx):
        # the fast page encoder: the same bytes as dagcbor_encode(page_to_wire(page))
        body = encode_page_cbor(page.records, page.next_cursor, page.has_more)
        return Response(body, media_type=CBOR)

    store = ctx.app.store
    budget = ctx.app.config.page_max_bytes

    def render() -> bytes:
        items = _within_budget((_rec_json_bytes(r) for r in page.records), budget)
        cut = page
        if len(items) < len(page.records):
            last = page.records[len(items) - 1]
            cursor = cursor_at(store.epoch, last.seq, last.cid, key=store.cursor_key)
            cut = FeedPage(page.records[: len(items)], cursor.encode(), True)
        return _with_records(page_to_wire(FeedPage((), cut.next_cursor, cut.has_more)), items)

    weight = sum(len(r.data) for r in page.records)
    body = await off_loop(render) if weight > INLINE_MAX else render()
    return Response(body, media_type=JSON)


async def _one_page(
    ctx: Ctx, flt: ChangeFilter, since_text: str | None, limit: int, scope: str = "sync:read"
) -> FeedPage:
    store = ctx.app.store
    view = await ctx.view(scope)
    view.check_change_filter(flt)  # CONSENT_DENIED for a namespace/thread outside every grant
    since = await resolve_cursor(store, since_text)
    # the caller's grants go into the scan: a page never ends on a hidden record
    changes = await changes_in(
        store, since, limit, view.wake_filters(flt), max_bytes=ctx.app.config.page_max_bytes
    )
    return build_page(changes, epoch=store.epoch, key=store.cursor_key, visible=view.record_visible)


def _feed_filter(ctx: Ctx) -> ChangeFilter:
    return ChangeFilter(
        namespace_prefix=_name_param(ctx, "namespace"), thread=_name_param(ctx, "thread")
    )


_TIMEOUT_RE = re.compile(r"-?[0-9]{1,9}(?:\.[0-9]{1,9})?")  # protocol.md §8.1


async def changes(ctx: Ctx) -> Response:
    feed = _q(ctx, "feed") or "normal"
    if feed not in ("normal", "longpoll", "continuous"):
        raise InvalidRequest("feed must be normal, longpoll or continuous")
    flt = _feed_filter(ctx)
    limit = _limit(ctx)
    since_text = _q(ctx, "since")
    if feed == "continuous":
        since_text = ctx.request.headers.get("last-event-id") or since_text
        return await _stream(ctx, flt, since_text, limit)
    timeout = ctx.app.config.longpoll_max_s
    raw_timeout = _q(ctx, "timeout") if feed == "longpoll" else None
    if raw_timeout is not None:  # checked whenever given, not only when the wait comes
        if _TIMEOUT_RE.fullmatch(raw_timeout) is None:  # float() would take nan, inf, 1e3
            raise InvalidRequest("timeout must be a decimal number of seconds, like 30 or 0.5")
        timeout = min(timeout, max(0.0, float(raw_timeout)))
    page = await _one_page(ctx, flt, since_text, limit)
    if feed == "longpoll" and not page.records and not page.has_more:
        deadline = anyio.current_time() + timeout
        # Loop: records may land that the caller may not see; keep waiting until a
        # visible one lands or time is up, advancing the cursor past the rest. A
        # revoked or expired token ends the longpoll at once with its error
        # (Ctx.wait_new checks the bearer after every wait; issue 10).
        for _ in range(10_000):
            remaining = deadline - anyio.current_time()
            if remaining <= 0 or ctx.app.closing.is_set():
                break
            seq = Cursor.decode(page.next_cursor).seq
            interest = (await ctx.view("sync:read")).wake_filters(flt)
            if await ctx.wait_new(seq, remaining, interest):
                page = await _one_page(ctx, flt, page.next_cursor, limit)
                if page.records or page.has_more:
                    break
    return await _page_response(ctx, page)


_RECHECK_S = 0.5  # how often a stream re-checks its bearer and grants mid-page


def _sse_error(err: FedpeerError) -> bytes:
    return b"event: error\ndata: " + dagjson_encode(err.to_dict()) + b"\n\n"


def _sse_event(event: str, event_id: str, data: bytes) -> bytes:
    return (
        b"event: " + event.encode() + b"\nid: " + event_id.encode() + b"\ndata: " + data + b"\n\n"
    )


async def _stream(ctx: Ctx, flt: ChangeFilter, since_text: str | None, limit: int) -> Response:
    store = ctx.app.store
    # Validate the cursor before the stream starts so errors are plain HTTP errors.
    (await ctx.view("sync:read")).check_change_filter(flt)
    since = await resolve_cursor(store, since_text)
    heartbeat = ctx.app.config.heartbeat_s
    page_max_bytes = ctx.app.config.page_max_bytes

    async def events() -> AsyncIterator[bytes]:
        seq = since
        yield b": fedpeer continuous feed\n\n"
        # When the stream last sent anything: the heartbeat goes out once it has been
        # quiet for `heartbeat` seconds, however often a wake-up without records (a
        # token rotated, grants changed) ends a wait early.
        last_write = anyio.current_time()
        try:
            while not ctx.app.closing.is_set():
                # Grants are read again for every page, so a change applies mid-stream.
                view = await ctx.view("sync:read")
                visible = view.record_visible
                checked = anyio.current_time()
                page = await changes_in(
                    store, seq, limit, view.wake_filters(flt), max_bytes=page_max_bytes
                )
                for rec in page.records:
                    # Within a page too (a slow reader makes each yield wait): the
                    # bearer and the grants again every _RECHECK_S, so a revocation
                    # or a deleted grant stops the records within that time.
                    if anyio.current_time() - checked >= _RECHECK_S:
                        await ctx.recheck()
                        view = await ctx.view("sync:read")
                        visible = view.record_visible
                        checked = anyio.current_time()
                    if visible(rec):
                        cursor = cursor_at(store.epoch, rec.seq, rec.cid, key=store.cursor_key)
                        if len(rec.data) <= INLINE_MAX:
                            data = _rec_json_bytes(rec)
                        else:  # a large record renders off the event loop
                            data = await off_loop(_rec_json_bytes, rec)
                        yield _sse_event("record", cursor.encode(), data)
                        last_write = anyio.current_time()
                if page.last_seq > seq:
                    last_sent = page.records[-1].seq if page.records else seq
                    if page.last_seq != last_sent or not any(visible(r) for r in page.records[-1:]):
                        # Records the caller may not see advanced the feed: checkpoint the
                        # cursor so a resume does not rescan them.
                        cursor = page_cursor(page, epoch=store.epoch, key=store.cursor_key)
                        yield _sse_event("checkpoint", cursor.encode(), b"{}")
                        last_write = anyio.current_time()
                    seq = page.last_seq
                # The bearer is checked again before every further page: right away
                # while catching up, after the wait (Ctx.wait_new) once caught up. A
                # revoked or expired token ends the stream with an error event.
                if page.last_seq < page.head_seq:
                    await ctx.recheck()
                    continue
                quiet = anyio.current_time() - last_write
                if quiet >= heartbeat or not await ctx.wait_new(
                    seq, heartbeat - quiet, view.wake_filters(flt)
                ):
                    yield b": heartbeat\n\n"
                    last_write = anyio.current_time()
        except AuthRequired as err:
            yield _sse_error(err)

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


async def batch_records(ctx: Ctx) -> Response:
    obj = read_json_object(await read_value(ctx.request, ctx.app.config.max_body_bytes))
    ids = obj.get("ids")
    if not isinstance(ids, list) or not all(isinstance(i, str | CID) for i in ids):
        raise InvalidRequest("body must be {ids: [cid, ...]}")
    found, missing, later = await ctx.app.records.fetch_within(
        ids, view=await ctx.view("sync:read"), max_bytes=ctx.app.config.page_max_bytes
    )
    if _wants_cbor(ctx):
        answer: dict[str, object] = {"records": [record_to_wire(r) for r in found]}
        answer["missing"] = missing
        if later:
            answer["later"] = later
        return respond(answer, ctx.request)
    budget = ctx.app.config.page_max_bytes

    def render() -> bytes:
        # cut by the JSON's size: the records left out go first under "later"
        items = _within_budget((_rec_json_bytes(r) for r in found), budget)
        rest: dict[str, object] = {"missing": missing}
        left = [str(CID(r.cid)) for r in found[len(items) :]] + list(later)
        if left:
            rest["later"] = left
        return _with_records(rest, items)

    weight = sum(len(r.data) for r in found)
    return Response(await off_loop(render) if weight > INLINE_MAX else render(), media_type=JSON)


# --- service accounts --------------------------------------------------------------


async def bootstrap(ctx: Ctx) -> Response:
    issued = await ctx.app.tokens.bootstrap()
    return respond(issued.to_dict(), ctx.request, status=201)


async def list_service_accounts(ctx: Ctx) -> Response:
    accounts = await ctx.app.tokens.list()
    return respond({"service_accounts": [a.to_dict() for a in accounts]}, ctx.request)


async def create_service_account(ctx: Ctx) -> Response:
    obj = read_json_object(await read_value(ctx.request, ctx.app.config.max_body_bytes))
    allowed = {"name", "holder_did", "scopes", "token_ttl_s"}
    if set(obj) - allowed:
        raise InvalidRequest(f"unknown fields {sorted(set(obj) - allowed)}")
    name = obj.get("name", "service account")
    holder = obj.get("holder_did")
    raw_scopes = obj.get("scopes", ["reader"])
    ttl_s = obj.get("token_ttl_s")
    if not isinstance(name, str):
        raise InvalidRequest("name must be a string")
    if holder is not None and not isinstance(holder, str):
        raise InvalidRequest("holder_did must be a DID string")
    if not isinstance(raw_scopes, list) or not all(isinstance(s, str) for s in raw_scopes):
        raise InvalidRequest("scopes must be a list of scope or preset names")
    if ttl_s is not None and (not isinstance(ttl_s, int) or isinstance(ttl_s, bool) or ttl_s <= 0):
        raise InvalidRequest("token_ttl_s must be a positive integer")
    issued = await ctx.app.tokens.create(
        name, scopes=[str(s) for s in raw_scopes], holder_did=holder, ttl_s=ttl_s
    )
    return respond(issued.to_dict(), ctx.request, status=201)


async def delete_service_account(ctx: Ctx) -> Response:
    sa = await ctx.app.tokens.revoke(ctx.request.path_params["sa_id"])
    return respond({"service_account": sa.to_dict()}, ctx.request)


async def rotate_service_account(ctx: Ctx) -> Response:
    rotated = await ctx.app.tokens.rotate(ctx.request.path_params["sa_id"])
    return respond(rotated.to_dict(), ctx.request)


# --- the table ---------------------------------------------------------------------

_CURSOR = Param("since", schema={"type": "string"}, description="opaque cursor from next_cursor")
# What a record write (one appended, or a batch imported) can be refused with.
_RECORD_WRITE_ERRORS = (
    "RECORD_INVALID",
    "RECORD_TOO_LARGE",
    "NON_CANONICAL",
    "BAD_SIGNATURE",
    "RECORD_FROM_FUTURE",
    "MALFORMED",
    "INVALID_REQUEST",
    "BODY_TOO_LARGE",
    "DID_INVALID",
    "QUOTA_EXCEEDED",
    "TOKEN_REVOKED",
    "TOKEN_EXPIRED",
)
_LIMIT = Param(
    "limit",
    schema={"type": "integer", "minimum": 1},
    description="records per page: at most this node's limits.page_limit_max "
    "(capabilities manifest; 10000 unless configured), default 1000",
)
_NS = Param("namespace", schema={"type": "string", "maxLength": 256})
_THREAD = Param("thread", schema={"type": "string", "maxLength": 256})
_FEED = Param("feed", schema={"type": "string", "enum": ["normal", "longpoll", "continuous"]})
_TIMEOUT = Param(
    "timeout",
    schema={"type": "number"},
    description="longpoll: seconds to hold; capped at the node's maximum (30 s unless "
    "configured), below 0 counts as 0",
)

_PAGE_ERRORS = (
    "CURSOR_INVALID",
    "CURSOR_RESET",
    "CURSOR_FROM_FUTURE",
    "INVALID_REQUEST",
    "CONSENT_DENIED",
)
_RECORD_VIEW = {"type": "object", "required": ["cid"], "properties": {"cid": {"type": "string"}}}
_PAGE = {
    "type": "object",
    "required": ["records", "next_cursor", "has_more"],
    "properties": {
        "records": {"type": "array", "items": {"type": "object"}},
        "next_cursor": {"type": "string"},
        "has_more": {"type": "boolean"},
    },
}
_SA_CREATED = {
    "type": "object",
    "required": ["service_account", "token", "token_id"],
    "properties": {
        "service_account": {"type": "object"},
        "token": {"type": "string"},
        "token_id": {"type": "string"},
    },
}

ROUTES: list[RouteSpec] = [
    RouteSpec(
        "GET",
        "/health",
        "public",
        health,
        "Liveness; with an admin token also the record count and sync health",
        "health",
    ),
    RouteSpec(
        "GET",
        "/.well-known/fedpeer",
        "public",
        well_known,
        "Capabilities and the signed federation manifest",
        "well_known",
        response_schema={
            "type": "object",
            "required": ["capabilities_manifest", "federation_manifest"],
        },
    ),
    RouteSpec("GET", "/v1/capabilities", "public", get_capabilities, "Capabilities", "caps"),
    RouteSpec("GET", "/v1/identity", "public", get_identity, "Node and token identity", "ident"),
    RouteSpec("GET", "/v1/openapi.json", "public", openapi, "This document", "openapi"),
    RouteSpec(
        "POST",
        "/v1/records",
        "records:write",
        post_record,
        "Append a record (JSON: built and signed by the node) or ingest a signed one (CBOR)",
        "post_record",
        request_schema={
            "type": "object",
            "required": ["namespace", "thread", "kind", "body"],
            "properties": {
                "namespace": {"type": "string", "minLength": 1, "maxLength": 256},
                "thread": {"type": "string", "minLength": 1, "maxLength": 256},
                "kind": {"type": "string", "minLength": 1, "maxLength": 256},
                "body": {},
                "parents": {"type": "array", "items": {"type": "string"}, "maxItems": 64},
            },
            "additionalProperties": False,
        },
        response_schema={"type": "object", "required": ["cid", "created"]},
        success_status=201,
        errors=(*_RECORD_WRITE_ERRORS, "UNSUPPORTED_MEDIA_TYPE", "CONSENT_DENIED"),
    ),
    RouteSpec(
        "POST",
        "/v1/records/import",
        "records:write",
        import_records,
        "Store a batch of records signed elsewhere (DAG-CBOR {records: [{data, sig}]}, at "
        "most 1000): every one is verified first; one bad record and none is stored",
        "import_records",
        request_schema={
            "type": "object",
            "required": ["records"],
            # the default NodeConfig.batch_fetch_max, which the service enforces
            "properties": {"records": {"type": "array", "maxItems": 1000}},
            "additionalProperties": False,
        },
        response_schema={"type": "object", "required": ["stored", "existing"]},
        errors=(*_RECORD_WRITE_ERRORS, "CONSENT_DENIED"),
    ),
    RouteSpec(
        "GET",
        "/v1/records/{cid}",
        "records:read",
        get_record,
        "One record by CID",
        "get_record",
        params=(Param("cid", "path", required=True),),
        response_schema=_RECORD_VIEW,
        errors=("RECORD_NOT_FOUND", "MALFORMED"),
    ),
    RouteSpec(
        "GET",
        "/v1/records",
        "records:read",
        list_records,
        "List records, oldest first (the order this node stored them) or newest first",
        "list_records",
        params=(
            _NS,
            _THREAD,
            _CURSOR,
            _LIMIT,
            Param("order", schema={"type": "string", "enum": ["oldest", "newest"]}),
        ),
        response_schema=_PAGE,
        errors=_PAGE_ERRORS,
    ),
    RouteSpec(
        "GET",
        "/v1/threads",
        "records:read",
        list_threads,
        "Threads with record counts, a page of (namespace, thread) pairs at a time",
        "list_threads",
        params=(_NS, _CURSOR, _LIMIT),
        response_schema={
            "type": "object",
            "required": ["threads", "has_more"],
            "properties": {"next_cursor": {"type": "string"}},
        },
        errors=("INVALID_REQUEST", "CONSENT_DENIED"),
    ),
    RouteSpec(
        "GET",
        "/v1/threads/{thread:path}/records",
        "records:read",
        thread_records,
        "Records of one thread, cursor paginated",
        "thread_records",
        params=(Param("thread", "path", required=True), _NS, _CURSOR, _LIMIT),
        response_schema=_PAGE,
        errors=("NOT_FOUND", *_PAGE_ERRORS),  # NOT_FOUND: a thread path the router cannot match
    ),
    RouteSpec(
        "GET",
        "/v1/sync/changes",
        "sync:read",
        changes,
        "The changes feed: normal, longpoll (up to 30 s) or continuous (SSE)",
        "changes",
        params=(_CURSOR, _LIMIT, _FEED, _THREAD, _NS, _TIMEOUT),
        response_schema=_PAGE,
        errors=(*_PAGE_ERRORS, "TOKEN_REVOKED"),
        stream=True,
    ),
    RouteSpec(
        "POST",
        "/v1/sync/records",
        "sync:read",
        batch_records,
        "Fetch records by id; unknown or invisible ids are listed under missing, ids "
        "past the answer's byte budget under later",
        "batch_records",
        request_schema={
            "type": "object",
            "required": ["ids"],
            "properties": {"ids": {"type": "array", "items": {"type": "string"}}},
        },
        response_schema={
            "type": "object",
            "required": ["records", "missing"],
            "properties": {"later": {"type": "array", "items": {"type": "string"}}},
        },
        errors=("MALFORMED", "INVALID_REQUEST", "BODY_TOO_LARGE"),
    ),
    RouteSpec(
        "POST",
        "/v1/bootstrap/service-account",
        "public",
        bootstrap,
        "One-shot: mint the admin service account (when no admin.token file was written)",
        "bootstrap",
        response_schema=_SA_CREATED,
        success_status=201,
        errors=("BOOTSTRAP_CLOSED",),
    ),
    RouteSpec(
        "GET",
        "/v1/service-accounts",
        "admin",
        list_service_accounts,
        "List service accounts",
        "list_service_accounts",
        response_schema={"type": "object", "required": ["service_accounts"]},
    ),
    RouteSpec(
        "POST",
        "/v1/service-accounts",
        "admin",
        create_service_account,
        "Create a service account and its first token (shown once)",
        "create_service_account",
        request_schema={
            "type": "object",
            "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 200},
                "holder_did": {"type": "string"},
                "scopes": {"type": "array", "items": {"type": "string"}},
                "token_ttl_s": {"type": "integer", "minimum": 1},
            },
        },
        response_schema=_SA_CREATED,
        success_status=201,
        errors=("INVALID_REQUEST", "DID_INVALID", "MALFORMED"),
    ),
    RouteSpec(
        "DELETE",
        "/v1/service-accounts/{sa_id}",
        "admin",
        delete_service_account,
        "Revoke a service account and all its tokens",
        "delete_service_account",
        params=(Param("sa_id", "path", required=True),),
        errors=("SERVICE_ACCOUNT_NOT_FOUND",),
    ),
    RouteSpec(
        "POST",
        "/v1/service-accounts/{sa_id}/rotate-key",
        "admin",
        rotate_service_account,
        "Mint a new token, then revoke the old ones",
        "rotate_service_account",
        params=(Param("sa_id", "path", required=True),),
        response_schema={"type": "object", "required": ["token", "token_id"]},
        errors=("SERVICE_ACCOUNT_NOT_FOUND",),
    ),
]

ROUTES += CONSENT_ROUTES  # grants, invites, scope presets, token rotation
ROUTES += SYNC_ROUTES  # sync pairs and health
ROUTES.append(MDNS_ROUTE)  # the mDNS roster

__all__ = ["ROUTES"]
