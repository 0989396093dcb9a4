"""PeerClient: talk to another node over HTTP (httpx, on trio or asyncio).

Every record the client hands back has been verified with the one record
pipeline (canonical bytes, CID, author signature, limits); the server's word
is never trusted. HTTP errors come back as the server's :class:`FedpeerError`
subclass; transport failures as :class:`PeerUnreachable`.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from contextlib import aclosing
from typing import Literal

import anyio
import attrs
import httpx

from .._clock import now_ms
from ..consent.invites import (
    Credential,
    check_invite_preview,
    credential_from_answer,
    parse_invite_url,
    sign_redeem_proof,
)
from ..errors import (
    FedpeerError,
    Malformed,
    PageInvalid,
    PageTooLarge,
    PeerInvalid,
    PeerTooSlow,
    PeerUnreachable,
    error_from_code,
)
from ..identity.canonical import CID, b64url_encode, dagjson_decode
from ..identity.envelope import VerifiedDocument
from ..identity.keys import SigningKey
from ..sync.feed import (
    cbor_items_exceed,
    decode_page_cbor,
    decode_page_cbor_fast,
    page_from_wire,
)
from ..sync.records import DEFAULT_LIMITS, Limits, SignedRecord, record_from_wire
from ._offloop import INLINE_MAX, off_loop
from ._pinning import MAX_MANIFEST_BYTES, check_peer
from ._transport import (
    CBOR,
    DEFAULT_MAX_RESPONSE_BYTES,
    HttpTransport,
    buffered,
    raise_for_error,
    read_bounded,
    refuse_unbounded,
    unreachable_message,
)
from .manifest import verify_manifest

Feed = Literal["normal", "longpoll", "continuous"]


_LINE_END = re.compile(rb"\r\n|\r|\n")
_PAGE_PREFIX = b"\xa3\x67records"  # canonical page map: 3 keys, "records" sorts first


def page_record_count(body: bytes) -> int:
    """How many records a DAG-CBOR feed page holds, read from its header alone.

    A canonical page (protocol.md §8.2: exactly the keys ``records``,
    ``has_more``, ``next_cursor``) starts with a 3-entry map whose first key is
    ``records`` followed by the array's length, so the count is known before a
    single record is decoded. Raises ``PAGE_INVALID`` for any other start. Pure.
    """
    n = len(_PAGE_PREFIX)
    if body[:n] != _PAGE_PREFIX or len(body) <= n:
        raise PageInvalid("the page is not a canonical DAG-CBOR map {records, ...}")
    head = body[n]
    if head >> 5 != 4:
        raise PageInvalid("the page's records is not a list")
    info = head & 0x1F
    if info < 24:
        return info
    width = {24: 1, 25: 2, 26: 4, 27: 8}.get(info)
    if width is None or len(body) < n + 1 + width:
        raise PageInvalid("the page's records list has no valid length")
    return int.from_bytes(body[n + 1 : n + 1 + width], "big")


@attrs.frozen
class ChangesResult:
    """One verified page of the changes feed."""

    records: tuple[SignedRecord, ...]
    next_cursor: str
    has_more: bool


@attrs.frozen
class StreamEvent:
    """One Server-Sent Event of the continuous feed: a record, or a checkpoint (record None)."""

    cursor: str
    record: SignedRecord | None


def _stream_error(data: str) -> FedpeerError:
    """The error an ``event: error`` of the continuous feed carries (TOKEN_REVOKED...)."""
    try:
        body = dagjson_decode(data.encode())
        err = body["error"]  # type: ignore[index]
        return error_from_code(str(err["code"]), str(err["message"]))
    except Exception:
        return PeerInvalid(
            f"the stream ended with an unreadable error event {data[:200]!r}; "
            "check that the peer runs fedpeer"
        )


_SSE_FIELDS = frozenset({"event", "id", "data"})
STREAM_IDLE_TIMEOUT_S = 60.0
"""How long a change stream may send nothing (four of the source's 15 s heartbeats)."""
_ERROR_BODY_CAP = 64 * 1024
"""The largest error answer read (a fedpeer error body is a few hundred bytes)."""


def sse_line_cap(limits: Limits) -> int:
    """The longest line of the continuous feed a client reads: a record's event
    line carries its wire form (data and signature in base64) and its readable
    view (the body again), so four times the largest record plus 64 KiB."""
    return 4 * limits.max_record_bytes + 64 * 1024


async def sse_lines(
    chunks: AsyncIterator[bytes], cap: int, where: str
) -> AsyncGenerator[str, None]:
    """The lines of an event stream (ended by CRLF, LF or CR), decoded as UTF-8,
    none longer than ``cap`` bytes: ``PAGE_TOO_LARGE`` as soon as more than
    ``cap`` bytes arrive without a line end, so memory stays bounded."""
    buf = bytearray()
    async for chunk in chunks:
        # what is left in buf was searched already (its last byte again: a CR may
        # meet its LF): a long line sent in small chunks costs linear time, not
        # quadratic (a hostile peer could otherwise burn seconds of CPU per line)
        scan = max(0, len(buf) - 1)
        buf += chunk
        start = 0
        while (m := _LINE_END.search(buf, max(start, scan))) is not None:
            end = m.start()
            if buf[end] == 0x0D and end + 1 == len(buf):
                break  # a CR last: wait for a possible LF
            yield buf[start:end].decode("utf-8", "replace")
            start = m.end()
        del buf[:start]
        if len(buf) > cap:
            raise PageTooLarge(
                f"{where} sent a line of more than {cap} bytes on its change stream; the "
                "stream was dropped. Check that it is a fedpeer node (a record's line is "
                "far shorter), or raise the record limit if it is yours"
            )


class PeerClient(HttpTransport):
    """A client for one peer node.

    ``base_url`` is the peer's URL (``https://host:port``, or ``http://`` on
    loopback). For a did:key peer over https call :meth:`verify_identity` first:
    it pins the peer's certificate (§6.6); until then only certificate-authority
    validated servers are accepted. ``token`` is a bearer token minted by that
    peer. ``limits`` bound what the
    client accepts. Use as ``async with PeerClient(url) as peer:``; all methods
    are cancellable; network failures raise PeerUnreachable.
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        client: httpx.AsyncClient | None = None,
        timeout: float = 40.0,
        limits: Limits = DEFAULT_LIMITS,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        super().__init__(
            base_url,
            token=token,
            client=client,
            timeout=timeout,
            max_response_bytes=max_response_bytes,
        )
        self.limits = limits

    async def get_value(self, path: str, **params: str | int) -> object:
        """GET ``path`` and decode the DAG-CBOR answer."""
        return self.decode(await self.request("GET", path, params=params))

    async def post_value(self, path: str, body: object) -> object:
        """POST ``body`` as JSON to ``path`` and decode the DAG-CBOR answer."""
        return self.decode(await self.request("POST", path, json_body=body))

    # --- identity ----------------------------------------------------------------

    async def manifest(
        self, expected_did: str | None = None, *, now: float | None = None
    ) -> VerifiedDocument:
        """Fetch and verify the peer's well-known manifest.

        The bearer is not sent (the manifest is public and the peer not proven
        yet). Raises BadSignature (tampered), SignatureExpired, DidMismatch
        (signed by another DID than ``expected_did``), PeerInvalid, PeerUnreachable.
        """
        response = await self.request(
            "GET",
            "/.well-known/fedpeer",
            max_bytes=min(MAX_MANIFEST_BYTES, self.max_response_bytes),
            bearer=False,
        )
        body = self.decode(response)
        return verify_manifest(body, expected_did=expected_did, now=now)

    async def verify_identity(
        self, expected_did: str | None, *, pin: str | None = None
    ) -> VerifiedDocument:
        """Prove that ``base_url`` is served by ``expected_did`` before sending the
        token (docs/protocol.md §6.6): the signed manifest, and over https the
        certificate pinned by it (and equal to ``pin`` when given). Afterwards
        this client's connections to the peer accept exactly the pinned
        certificate. Needs a client from ``new_http_client`` (the default) for
        https. Raises DID_MISMATCH, TLS_PIN_MISMATCH, PEER_INVALID,
        PEER_UNREACHABLE, BAD_SIGNATURE, SIGNATURE_EXPIRED."""
        return await check_peer(
            self.client,
            self.base_url,
            expected_did,
            oob_pins=[pin] if pin else (),
            timeout=min(self.timeout, 10.0),
        )

    # --- feed --------------------------------------------------------------------

    async def changes_raw(
        self,
        since: str | None = None,
        *,
        limit: int = 1000,
        feed: Literal["normal", "longpoll"] = "normal",
        namespace: str | None = None,
        thread: str | None = None,
        timeout: float | None = None,
        max_bytes: int | None = None,
        deadline: float | None = None,
        strict_cbor: bool = False,
    ) -> object:
        """One page of the feed, decoded but not verified (the puller verifies).

        Read bounded (see :meth:`request`): ``max_bytes`` per answer,
        ``deadline`` seconds for the whole request (for a longpoll the hold time
        is added). A page with more than ``limit`` records is refused from its
        header, before anything is decoded (``PAGE_TOO_LARGE``); with
        ``strict_cbor`` an answer that is not DAG-CBOR (asked for) is
        ``PAGE_INVALID``, so no unbounded JSON decode happens."""
        params: dict[str, str | int] = {"limit": limit, "feed": feed}
        if since:
            params["since"] = since
        if namespace:
            params["namespace"] = namespace
        if thread:
            params["thread"] = thread
        http_timeout: float | None = None
        if feed == "longpoll":
            wait = 30.0 if timeout is None else timeout
            if not 0 <= wait <= 86_400:  # nan and inf included
                raise ValueError(f"a longpoll timeout is 0 to 86400 seconds, got {wait!r}")
            # "30", "0.5": plain decimal text, never "30.0" or "1e-05" (protocol.md §8.1)
            params["timeout"] = f"{wait:.3f}".rstrip("0").rstrip(".")
            # Slack for the answer to travel; proportional, so a dead link is noticed
            # soon after the longpoll would have ended (not a fixed 15 s later).
            http_timeout = wait + max(5.0, wait * 0.25)
            if deadline is not None:
                deadline += wait
        response = await self.request(
            "GET",
            "/v1/sync/changes",
            params=params,
            timeout=http_timeout,
            max_bytes=max_bytes,
            deadline=deadline,
        )
        ctype = response.headers.get("content-type", "").split(";")[0].strip()
        if ctype == CBOR:
            body = response.content
            count = page_record_count(body)
            if count > limit:
                raise PageTooLarge(
                    f"{self.base_url} sent a page of {count} records; {limit} were asked "
                    "for. The peer is broken or hostile: check that it runs fedpeer"
                )
            fast = decode_page_cbor_fast(body)  # a page of the wire shape: the hot path
            if fast is not None:
                return fast
            if cbor_items_exceed(body, 16 * count + 32):
                raise PageInvalid(
                    f"{self.base_url} sent a page holding far more values than "
                    f"{count} records can; the peer is broken or hostile"
                )
            if len(body) <= INLINE_MAX:
                return decode_page_cbor(body)  # = dagcbor_decode, faster for pages
            # anything else may be millions of tiny values: off the event loop
            return await off_loop(decode_page_cbor, body)
        if strict_cbor:
            raise PageInvalid(
                f"{self.base_url} answered a feed page as {ctype or 'no type'!r}, not "
                f"{CBOR} as asked"
            )
        return self.decode(response)

    async def changes(
        self,
        since: str | None = None,
        *,
        limit: int = 1000,
        feed: Literal["normal", "longpoll"] = "normal",
        namespace: str | None = None,
        thread: str | None = None,
        timeout: float | None = None,
    ) -> ChangesResult:
        """One verified page of the changes feed."""
        raw = await self.changes_raw(
            since, limit=limit, feed=feed, namespace=namespace, thread=thread, timeout=timeout
        )
        page = page_from_wire(raw)
        now = now_ms()
        records = tuple(record_from_wire(r, limits=self.limits, now_ms=now) for r in page.records)
        return ChangesResult(records, page.next_cursor, page.has_more)

    async def iter_changes(
        self,
        since: str | None = None,
        *,
        limit: int = 1000,
        namespace: str | None = None,
        thread: str | None = None,
        follow: bool = True,
        longpoll_s: float = 30.0,
    ) -> AsyncIterator[tuple[str, SignedRecord]]:
        """Yield ``(cursor_after_page, record)`` following cursors.

        With ``follow`` the iterator longpolls once caught up and never ends by
        itself (cancel it); without, it stops when caught up.
        """
        cursor = since
        feed: Literal["normal", "longpoll"] = "normal"
        while True:
            page = await self.changes(
                cursor,
                limit=limit,
                feed=feed,
                namespace=namespace,
                thread=thread,
                timeout=longpoll_s,
            )
            for rec in page.records:
                yield page.next_cursor, rec
            cursor = page.next_cursor
            if not page.has_more:
                if not follow:
                    return
                feed = "longpoll"
            else:
                feed = "normal"

    async def stream_changes(
        self,
        since: str | None = None,
        *,
        namespace: str | None = None,
        thread: str | None = None,
        idle_timeout_s: float = STREAM_IDLE_TIMEOUT_S,
    ) -> AsyncIterator[StreamEvent]:
        """Follow the continuous feed (Server-Sent Events); resumes from ``since``.

        A stream that sends nothing, not even its heartbeat (every 15 s,
        protocol.md §8.5), for ``idle_timeout_s`` ends with ``PEER_TOO_SLOW``: a
        peer gone without closing (a laptop lid, a half-open connection) does not
        hang the caller.

        Yields a StreamEvent per record (verified) and per checkpoint. Runs until
        cancelled or the server closes the stream; an ``event: error`` from the
        server (TOKEN_REVOKED, TOKEN_EXPIRED) is raised as that error.

        Read bounded like every answer: connecting, the TLS handshake and the
        answer's head share one deadline (the transport's ``timeout``;
        ``PEER_TOO_SLOW``), a redirect or a compressed answer is refused, an
        error answer is read under 64 KiB, and one line of the stream may hold
        at most :func:`sse_line_cap` bytes (``PAGE_TOO_LARGE``: a record's
        line is far shorter), so an endless line cannot grow memory.
        """
        params: dict[str, str] = {"feed": "continuous"}
        if namespace:
            params["namespace"] = namespace
        if thread:
            params["thread"] = thread
        headers = dict(self.headers)
        headers["Accept"] = "text/event-stream"
        headers["Accept-Encoding"] = "identity"
        if since:
            headers["Last-Event-ID"] = since
        request = self.client.build_request(
            "GET",
            self.base_url + "/v1/sync/changes",
            params=params,
            headers=headers,
            # The open has its one deadline below; then a read may wait up to
            # idle_timeout_s (heartbeats keep a live stream well under it).
            timeout=httpx.Timeout(None, read=idle_timeout_s),
        )
        cap = sse_line_cap(self.limits)
        try:
            try:
                with anyio.fail_after(self.timeout):
                    response = await self.client.send(request, stream=True, follow_redirects=False)
            except TimeoutError:
                raise PeerTooSlow(
                    f"{self.base_url} did not open its change stream within {self.timeout:g} s; "
                    "the peer is stalled or the link too slow: try again later"
                ) from None
            try:
                if response.status_code >= 300:
                    with anyio.fail_after(self.timeout):
                        body = await read_bounded(response, _ERROR_BODY_CAP, self.base_url)
                    raise_for_error(buffered(response, body))
                refuse_unbounded(response, cap, self.base_url)
                event: dict[str, str] = {}
                async with aclosing(sse_lines(response.aiter_raw(), cap, self.base_url)) as lines:
                    async for line in lines:
                        if line == "":
                            if event.get("event") == "error":
                                raise _stream_error(event.get("data", ""))
                            if "id" in event:
                                yield self._stream_event(event)
                            event = {}
                        elif not line.startswith(":"):
                            field, _, value = line.partition(":")
                            if field in _SSE_FIELDS:  # others are ignored, so never stored
                                event[field] = value[1:] if value.startswith(" ") else value
            finally:
                await response.aclose()
        except httpx.ReadTimeout:
            raise PeerTooSlow(
                f"{self.base_url} sent nothing on its change stream for {idle_timeout_s:g} s, "
                "not even a heartbeat; the peer is gone or the link is down: follow it again "
                "later (from the last cursor)"
            ) from None
        except httpx.TransportError as exc:
            raise PeerUnreachable(unreachable_message(self.base_url, exc)) from exc

    def _stream_event(self, event: dict[str, str]) -> StreamEvent:
        cursor = event["id"]
        if event.get("event") != "record":
            return StreamEvent(cursor, None)
        item = dagjson_decode(event.get("data", "").encode())
        if not isinstance(item, dict):
            raise Malformed("stream event data is not an object")
        wire = {k: item[k] for k in ("cid", "data", "sig") if k in item}
        return StreamEvent(cursor, record_from_wire(wire, limits=self.limits, now_ms=now_ms()))

    async def fetch_records(self, ids: Sequence[CID | str]) -> tuple[list[SignedRecord], list[str]]:
        """Batch fetch by CID: (verified records, ids the peer did not give).

        Asks again for the ids a peer put off to keep its answer within its byte
        budget (``later``, protocol.md §9.1), as long as each answer brings a
        record and puts off fewer ids than were asked; otherwise the rest count
        as not given."""
        todo = [str(i) for i in ids]
        records: list[SignedRecord] = []
        received: set[bytes] = set()
        missing: list[str] = []
        for _ in range(len(todo) + 1):  # every round takes at least one id off
            response = await self.request("POST", "/v1/sync/records", cbor_body={"ids": todo})
            body = self.decode(response)
            if not isinstance(body, dict) or not isinstance(body.get("records"), list):
                raise Malformed("batch answer has no records list")
            now = now_ms()
            got = [record_from_wire(r, limits=self.limits, now_ms=now) for r in body["records"]]
            records += [r for r in got if r.cid.raw not in received]
            received.update(r.cid.raw for r in got)
            missing += [str(m) for m in body.get("missing", [])]
            later = _later_ids(body.get("later"), todo)
            # what a peer puts off and already gave (a hostile answer) is not asked again
            later = [c for c in later if c.raw not in received]
            if not later:
                break
            if not got or len(later) >= len(todo):
                missing += [str(c) for c in later]
                break
            todo = [str(c) for c in later]
        return records, missing

    # --- invites -------------------------------------------------------------------

    async def redeem_with_answer(
        self,
        invite_url: str,
        *,
        holder_key: SigningKey,
        holder_type: Literal["federated", "guest"] = "federated",
        label: str | None = None,
        reciprocal: Mapping[str, object] | None = None,
        now_ms: int | None = None,
    ) -> tuple[Credential, dict[str, object]]:
        """Like :meth:`redeem`, also returning the issuer's whole answer (it reports
        the reverse pair of a two-way pairing under ``reverse_pair``)."""
        invite = parse_invite_url(invite_url)
        await check_peer(
            self.client,
            invite.node_url,
            invite.issuer_did,
            oob_pins=[invite.pin] if invite.pin else (),
            timeout=min(self.timeout, 10.0),
        )
        issuer = PeerClient(invite.node_url, client=self.client, limits=self.limits)
        preview = await issuer.get_value(f"/v1/invites/{invite.invite_id}")
        check_invite_preview(preview, invite)
        body: dict[str, object] = {"holder_type": holder_type, "secret": invite.secret}
        if label is not None:
            body["holder_label"] = label
        if reciprocal is not None:
            body["reciprocal"] = dict(reciprocal)
        if holder_type == "federated":
            proof, issued_at = sign_redeem_proof(
                holder_key,
                invite_id=invite.invite_id,
                audience=invite.issuer_did,
                issued_at_ms=now_ms,
            )
            body |= {
                "holder_did": holder_key.did,
                "holder_proof": proof,
                "holder_proof_issued_at_ms": issued_at,
            }
        else:
            body["holder_pubkey"] = b64url_encode(holder_key.public_key)
        response = await issuer.request(
            "POST",
            f"/v1/invites/{invite.invite_id}/redeem",
            json_body=body,
            accept="application/json",
        )
        try:
            answer = response.json()
        except ValueError:
            raise PeerInvalid("the redeem answer is not JSON") from None
        return credential_from_answer(answer, invite, holder_did=holder_key.did), answer

    async def redeem(
        self,
        invite_url: str,
        *,
        holder_key: SigningKey,
        holder_type: Literal["federated", "guest"] = "federated",
        label: str | None = None,
        reciprocal: Mapping[str, object] | None = None,
        now_ms: int | None = None,
    ) -> Credential:
        """Redeem an invite URL at the node that issued it; return the credential.

        Talks to the node named in the URL (not ``base_url``; the HTTP client is
        shared, no bearer is sent). Steps: parse the URL (``MALFORMED``); fetch the
        node's manifest and require it to be signed by the URL's issuer DID
        (``DID_MISMATCH``: a LAN impostor cannot take the redemption) and, over
        https, the served certificate to match the URL's ``pin`` and the
        manifest's pins (``TLS_PIN_MISMATCH``, before the secret is sent); fetch the
        public preview and verify the signed invite document; redeem as
        ``holder_type``: ``federated`` signs a fresh proof with ``holder_key``
        (holder DID = its did:key), ``guest`` sends its public key. ``label`` names
        the account on the issuer; ``reciprocal`` (``{token, scopes, url}``) hands
        the issuer a credential for the way back (bidirectional pairing). The
        answer's issuer, holder and confirmation code are checked
        (``PEER_INVALID``).

        Raises the issuer's error otherwise (``INVITE_EXPIRED``,
        ``INVITE_EXHAUSTED``, ``INVITE_SECRET_INVALID``, ``HOLDER_TYPE_MISMATCH``,
        ...) and ``PEER_UNREACHABLE``. Cancellable; a redemption cancelled after
        the POST was sent may still have happened on the issuer.
        """
        credential, _answer = await self.redeem_with_answer(
            invite_url,
            holder_key=holder_key,
            holder_type=holder_type,
            label=label,
            reciprocal=reciprocal,
            now_ms=now_ms,
        )
        return credential

    # --- writes --------------------------------------------------------------------

    async def append(
        self,
        *,
        namespace: str,
        thread: str,
        kind: str,
        body: object,
        parents: Sequence[CID | str] = (),
    ) -> dict[str, object]:
        """Ask the peer to build and sign a record as itself (needs records:write)."""
        response = await self.request(
            "POST",
            "/v1/records",
            cbor_body={
                "namespace": namespace,
                "thread": thread,
                "kind": kind,
                "body": body,
                "parents": [str(p) for p in parents],
            },
            accept="application/json",
        )
        value = response.json()
        if not isinstance(value, dict):
            raise Malformed("append answer is not an object")
        return value

    async def put_signed(self, record: SignedRecord) -> dict[str, object]:
        """Send a record signed elsewhere; the peer verifies it before storing."""
        response = await self.request(
            "POST",
            "/v1/records",
            cbor_body={"data": record.data, "sig": record.sig},
            accept="application/json",
        )
        value = response.json()
        if not isinstance(value, dict):
            raise Malformed("answer is not an object")
        return value


__all__ = [
    "MAX_MANIFEST_BYTES",
    "ChangesResult",
    "FedpeerError",
    "PeerClient",
    "StreamEvent",
    "raise_for_error",
]


def _later_ids(later: object, asked: Sequence[str]) -> list[CID]:
    """The ``later`` of a batch answer as CIDs, each one of the ``asked`` ids (in
    whatever text form the peer writes it back); MALFORMED otherwise."""
    if later is None:
        return []
    if not isinstance(later, list):
        raise Malformed("a batch answer's later is a list of record ids")
    wanted = {CID.parse(a).raw for a in asked}
    out: list[CID] = []
    for item in later:
        if not isinstance(item, str | CID):
            raise Malformed("a batch answer's later lists something that is not a record id")
        cid = CID.parse(item)  # Malformed for text that is not one
        if cid.raw not in wanted:
            raise Malformed("a batch answer's later lists ids that were not asked for")
        out.append(cid)
    return out
