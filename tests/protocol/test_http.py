"""The wire rules of docs/protocol.md over a real node (hypercorn on loopback, SQLite).

One test (at least) per section that a node serves; each names its section
(``protocol.md §N.M``). Requests are made with plain httpx, as a third-party
client would, so what is checked is the bytes and headers on the wire.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio

from fedpeer.consent.invites import confirmation_code, parse_invite_url, sign_redeem_proof
from fedpeer.identity import (
    SigningKey,
    b64url_encode,
    dagcbor_decode,
    dagcbor_encode,
    parse_rfc3339,
)
from fedpeer.peer import Node, NodeConfig, PeerClient, open_node
from fedpeer.peer.manifest import verify_manifest
from fedpeer.sync.feed import Cursor, cursor_at
from fedpeer.sync.records import build_record

CBOR = "application/cbor"
HOLDER = SigningKey.from_seed(b"\x21" * 32)


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    async with open_node(tmp_path / "node", config=NodeConfig(handle="spec-node")) as n:
        yield n


@pytest.fixture
def admin(node: Node) -> dict[str, str]:
    assert node.admin_token_path is not None
    return {"Authorization": f"Bearer {node.admin_token_path.read_text().strip()}"}


@pytest.fixture
async def http(node: Node) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=node.url, timeout=30) as client:
        yield client


async def _fill(node: Node, n: int, namespace: str = "notes") -> list[str]:
    out = []
    for i in range(n):
        rec = await node.append(namespace=namespace, thread="t1", kind="note", body={"i": i})
        out.append(str(rec.cid))
    return out


async def _reader(
    http: httpx.AsyncClient, admin: dict[str, str], did: str, prefix: str
) -> dict[str, str]:
    """A token for ``did`` with the reader scopes and a grant on namespace ``prefix``."""
    r = await http.post(
        "/v1/service-accounts",
        json={"name": "reader", "holder_did": did, "scopes": ["reader"]},
        headers=admin,
    )
    assert r.status_code == 201, r.text
    token = r.json()["token"]
    g = await http.post(
        "/v1/grants",
        json={"grantee_did": did, "target": {"type": "namespace", "value": prefix}},
        headers=admin,
    )
    assert g.status_code == 201, g.text
    return {"Authorization": f"Bearer {token}"}


def _error(r: httpx.Response) -> str:
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    return str(body["error"]["code"])


# --- §6 transport ---


async def test_plain_http_today(node: Node, http: httpx.AsyncClient) -> None:
    """protocol.md §6.1 and §6.6: plain HTTP on the base URL; no TLS pin is announced yet
    (when issue 11 lands, §6.6 and this test change together)."""
    assert node.url.startswith("http://")
    r = await http.get("/.well-known/fedpeer")
    assert r.status_code == 200
    manifest = r.json()["federation_manifest"]
    assert "tls_spki_sha256" not in manifest
    assert _error(await http.get("/v1/nope")) == "NOT_FOUND"
    assert _error(await http.put("/.well-known/fedpeer")) == "METHOD_NOT_ALLOWED"
    for path in ("/health", "/v1/identity", "/v1/scope_presets", "/v1/openapi.json"):
        assert (await http.get(path)).status_code == 200, path
    identity = (await http.get("/v1/identity")).json()
    assert (identity["did"], identity["token"]["authenticated"]) == (node.did, False)


@pytest.mark.parametrize(
    ("accept", "media"),
    [
        (None, "application/json"),
        ("", "application/json"),
        (CBOR, CBOR),
        ("application/json;q=0.5, application/cbor", CBOR),
        ("application/cbor;q=0.2, */*;q=0.9", "application/json"),
        ("application/json, application/cbor", "application/json"),  # tie: first wins
        ("application/cbor;q=oops, application/json;q=0.1", "application/json"),
        ("text/event-stream", "application/json"),
    ],
)
async def test_content_negotiation(http: httpx.AsyncClient, accept: str | None, media: str) -> None:
    """protocol.md §6.2: the highest q among CBOR and the JSON forms; ties: first listed."""
    headers = {} if accept is None else {"Accept": accept}
    r = await http.get("/v1/capabilities", headers=headers)
    assert r.status_code == 200
    assert r.headers["content-type"].split(";")[0] == media
    value = dagcbor_decode(r.content) if media == CBOR else r.json()
    assert value["protocol"] == "fedpeer/1"  # type: ignore[index]


async def test_unacceptable_and_unsupported_media(
    http: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    """protocol.md §6.2: 406 for an Accept naming neither, 415 for another body type;
    errors are JSON whatever Accept says; CBOR request bodies must be canonical."""
    r = await http.get("/v1/capabilities", headers={"Accept": "text/html"})
    assert r.status_code == 406
    assert _error(r) == "NOT_ACCEPTABLE"
    body = {"namespace": "notes", "thread": "t", "kind": "k", "body": 1}
    r = await http.post(
        "/v1/records", content=json.dumps(body), headers={**admin, "Content-Type": "text/plain"}
    )
    assert (r.status_code, _error(r)) == (415, "UNSUPPORTED_MEDIA_TYPE")
    unsorted = bytes.fromhex("a2") + b"\x64kind\x61k" + b"\x64body\x01"  # keys out of order
    r = await http.post(
        "/v1/records", content=unsorted, headers={**admin, "Content-Type": CBOR, "Accept": CBOR}
    )
    assert (r.status_code, _error(r)) == (400, "NON_CANONICAL")


async def test_request_bodies(node: Node, http: httpx.AsyncClient, admin: dict[str, str]) -> None:
    """protocol.md §6.3: 413 over the limit (after draining), empty and non-map bodies
    MALFORMED, a Content-Length that is not a number MALFORMED."""
    big = b"x" * (node.state.config.max_body_bytes + 1)
    r = await http.post("/v1/records", content=big, headers=admin)
    assert (r.status_code, _error(r)) == (413, "BODY_TOO_LARGE")
    r = await http.post("/v1/records", content=b"", headers=admin)
    assert (r.status_code, _error(r)) == (400, "MALFORMED")
    r = await http.post("/v1/records", content=b"[1]", headers=admin)
    assert (r.status_code, _error(r)) == (400, "MALFORMED")
    assert await node.store.count() == 0


async def test_authentication_and_scopes(
    node: Node, http: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    """protocol.md §6.4: Bearer (any case), a bearer token authenticated even on public
    routes; another scheme ignored on a public route but 401 elsewhere; 401 without or
    with a bad token, 403 without the scope."""
    assert (
        await http.get("/v1/capabilities", headers={"Authorization": "Basic eA=="})
    ).status_code == 200
    r = await http.get("/v1/sync/changes", headers={"Authorization": "Basic eA=="})
    assert (r.status_code, _error(r)) == (401, "AUTH_REQUIRED")
    r = await http.get("/v1/capabilities", headers={"Authorization": "Bearer fp_nope"})
    assert (r.status_code, _error(r)) == (401, "TOKEN_INVALID")
    r = await http.get("/v1/sync/changes")
    assert (r.status_code, _error(r)) == (401, "AUTH_REQUIRED")
    lower = {"Authorization": admin["Authorization"].replace("Bearer", "bearer")}
    assert (await http.get("/v1/sync/changes", headers=lower)).status_code == 200
    reader = await _reader(http, admin, HOLDER.did, "notes")
    r = await http.get("/v1/service-accounts", headers=reader)
    assert (r.status_code, _error(r)) == (403, "SCOPE_FORBIDDEN")
    r = await http.post(
        "/v1/records",
        json={"namespace": "n", "thread": "t", "kind": "k", "body": 1},
        headers=reader,
    )
    assert (r.status_code, _error(r)) == (403, "SCOPE_FORBIDDEN")


async def test_rate_limit_headers_and_429(tmp_path: Path) -> None:
    """protocol.md §6.5: every answer carries X-RateLimit-*; failed authentication is
    charged to the address; over the limit 429 RATE_LIMITED with Retry-After."""
    cfg = NodeConfig(rate_per_s=0.01, rate_burst=3)
    async with (
        open_node(tmp_path / "n", config=cfg) as node,
        httpx.AsyncClient(base_url=node.url) as http,
    ):
        ok = await http.get("/v1/capabilities")
        assert ok.headers["X-RateLimit-Limit"] == "3"
        assert ok.headers["X-RateLimit-Remaining"] == "2"
        assert int(ok.headers["X-RateLimit-Reset"]) >= 1
        assert "Retry-After" not in ok.headers
        bad = await http.get("/v1/capabilities", headers={"Authorization": "Bearer fp_x"})
        assert bad.status_code == 401
        assert bad.headers["X-RateLimit-Remaining"] == "1"
        await http.get("/v1/capabilities")
        over = await http.get("/v1/capabilities")
        assert (over.status_code, _error(over)) == (429, "RATE_LIMITED")
        assert int(over.headers["Retry-After"]) >= 1
        assert over.headers["X-RateLimit-Remaining"] == "0"


# --- §7 manifest ---


async def test_well_known_document(node: Node, http: httpx.AsyncClient) -> None:
    """protocol.md §7.1, §7.2 and §7.3: served without auth, the exact members, 7 days."""
    r = await http.get("/.well-known/fedpeer")
    assert r.status_code == 200
    body = r.json()
    assert sorted(body) == ["capabilities_manifest", "federation_manifest"]
    caps = body["capabilities_manifest"]
    assert sorted(caps) == sorted(
        ["protocol", "software", "did", "feeds", "encodings", "limits", "scopes", "holder_types"]
    )
    assert caps == (await http.get("/v1/capabilities")).json()
    assert caps["feeds"] == ["normal", "longpoll", "continuous"]
    assert caps["encodings"] == ["application/cbor", "application/json"]
    assert sorted(caps["limits"]) == ["max_record_bytes", "page_limit_max"]
    fm = body["federation_manifest"]
    assert sorted(fm) == sorted(
        ["type", "v", "did", "handle", "urls", "endpoints", "namespaces", "consent", "signature"]
    )
    assert (fm["type"], fm["v"], fm["did"], fm["handle"]) == (
        "fedpeer-federation-manifest",
        1,
        node.did,
        "spec-node",
    )
    assert fm["endpoints"]["changes"] == "/v1/sync/changes"
    assert sorted(fm["consent"]) == ["posture", "revision"]
    assert fm["consent"]["posture"] == "grants-required"
    sig = fm["signature"]
    assert parse_rfc3339(sig["expires_at"]) - parse_rfc3339(sig["signed_at"]) == 7 * 24 * 3600


async def test_verifying_a_manifest(node: Node, http: httpx.AsyncClient) -> None:
    """protocol.md §4 and §7.4: the manifest is a signed document (§4.4), by the expected
    DID, of the right type, naming its signer; verified the same from CBOR or JSON."""
    as_json = (await http.get("/.well-known/fedpeer")).json()
    as_cbor = dagcbor_decode(
        (await http.get("/.well-known/fedpeer", headers={"Accept": CBOR})).content
    )
    for answer in (as_json, as_cbor):
        assert verify_manifest(answer, expected_did=node.did).did == node.did
    with pytest.raises(Exception, match="DID_MISMATCH"):
        verify_manifest(as_json, expected_did=HOLDER.did)
    async with PeerClient(node.url) as peer:
        assert (await peer.manifest(expected_did=node.did)).did == node.did


# --- §8 feed ---


async def test_feed_request_parameters(http: httpx.AsyncClient, admin: dict[str, str]) -> None:
    """protocol.md §8.1: limit 1..max, feed names, name lengths, empty since = none."""
    for query, code in [
        ("limit=0", "INVALID_REQUEST"),
        ("limit=10001", "INVALID_REQUEST"),
        ("limit=x", "INVALID_REQUEST"),
        ("feed=push", "INVALID_REQUEST"),
        ("namespace=" + "n" * 257, "INVALID_REQUEST"),
        ("thread=" + "t" * 257, "INVALID_REQUEST"),
        ("feed=longpoll&timeout=soon", "INVALID_REQUEST"),
        ("since=garbage", "CURSOR_INVALID"),
    ]:
        r = await http.get(f"/v1/sync/changes?{query}", headers=admin)
        assert (r.status_code, _error(r)) == (400, code), query
    r = await http.get("/v1/sync/changes?since=&limit=10000", headers=admin)
    assert r.status_code == 200


async def test_pages_in_both_encodings(
    node: Node, http: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    """protocol.md §8.2 and §5.7: CBOR items are wire items; JSON items add seq and record;
    following next_cursor until has_more is false gives every record once."""
    cids = await _fill(node, 5)
    seen: list[str] = []
    since = ""
    for _ in range(10):
        r = await http.get(
            f"/v1/sync/changes?limit=2&since={since}", headers={**admin, "Accept": CBOR}
        )
        page = dagcbor_decode(r.content)
        assert isinstance(page, dict)
        assert sorted(page) == ["has_more", "next_cursor", "records"]
        for item in page["records"]:
            assert sorted(item) == ["cid", "data", "sig"]
            seen.append(str(item["cid"]))
        since = page["next_cursor"]
        if not page["has_more"]:
            break
    assert seen == cids
    j = (await http.get("/v1/sync/changes?limit=1", headers=admin)).json()
    (item,) = j["records"]
    assert sorted(item) == ["cid", "data", "record", "seq", "sig"]
    assert item["record"]["body"] == {"i": 0}
    assert item["cid"] == {"/": cids[0]}


async def test_cursor_errors_over_http(
    node: Node, http: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    """protocol.md §8.3: CURSOR_INVALID 400, CURSOR_RESET 409 (another epoch; a format 2
    cursor past the head or with another fingerprint), CURSOR_FROM_FUTURE 409 (format 1)."""
    await _fill(node, 1)
    epoch = node.store.epoch
    for cursor, status, code in [
        (Cursor(epoch, 1).encode() + "A", 400, "CURSOR_INVALID"),
        (Cursor("0" * 32, 1).encode(), 409, "CURSOR_RESET"),
        (Cursor(epoch, 99).encode(), 409, "CURSOR_FROM_FUTURE"),  # format 1
        # format 2: past the head, or another record at its seq: the store went back
        (
            cursor_at(epoch, 99, b"\x01" * 36, key=node.store.cursor_key).encode(),
            409,
            "CURSOR_RESET",
        ),
        (
            cursor_at(epoch, 1, b"\x01" * 36, key=node.store.cursor_key).encode(),
            409,
            "CURSOR_RESET",
        ),
    ]:
        r = await http.get(f"/v1/sync/changes?since={cursor}", headers=admin)
        assert (r.status_code, _error(r)) == (status, code)


async def test_longpoll(node: Node, http: httpx.AsyncClient, admin: dict[str, str]) -> None:
    """protocol.md §8.4: a caught-up longpoll answers when a record lands, or empty with
    the same cursor when the timeout passes."""
    first = (await http.get("/v1/sync/changes", headers=admin)).json()
    cursor = first["next_cursor"]
    r = await http.get(f"/v1/sync/changes?feed=longpoll&timeout=0.05&since={cursor}", headers=admin)
    assert r.json() == {"records": [], "next_cursor": cursor, "has_more": False}
    got: list[str] = []
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:

            async def poll() -> None:
                a = await http.get(
                    f"/v1/sync/changes?feed=longpoll&timeout=30&since={cursor}", headers=admin
                )
                got.extend(i["cid"]["/"] for i in a.json()["records"])

            nursery.start_soon(poll)
            await trio.testing.wait_all_tasks_blocked()
            rec = await node.append(namespace="notes", thread="t", kind="k", body=1)
    assert got == [str(rec.cid)]


async def test_continuous_feed_events(
    node: Node, http: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    """protocol.md §8.5: a comment first, record events with the cursor as id and the JSON
    view as data, checkpoints past invisible records, Last-Event-ID resumes."""
    await _fill(node, 1, namespace="secret")
    cids = await _fill(node, 2, namespace="shared")
    reader = await _reader(http, admin, HOLDER.did, "shared")
    events: list[dict[str, str]] = []
    lines: list[str] = []
    with trio.fail_after(20):
        async with http.stream(
            "GET",
            "/v1/sync/changes?feed=continuous",
            headers={**reader, "Accept": "text/event-stream"},
        ) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            current: dict[str, str] = {}
            async for line in r.aiter_lines():
                lines.append(line)
                if line == "":
                    if current:
                        events.append(current)
                    current = {}
                    if sum(e.get("event") == "record" for e in events) == 2:
                        break
                elif not line.startswith(":"):
                    field, _, value = line.partition(": ")
                    current[field] = value
    assert lines[0] == ": fedpeer continuous feed"
    records = [e for e in events if e["event"] == "record"]
    assert [json.loads(e["data"])["cid"]["/"] for e in records] == cids
    for e in records:
        data = json.loads(e["data"])
        assert sorted(data) == ["cid", "data", "record", "seq", "sig"]
        assert Cursor.decode(e["id"]).seq == data["seq"]
    # records the reader may not see moved the feed: the stream says so, or skips them in
    # its first record's id; either way no invisible record was sent
    assert all(json.loads(e["data"])["record"]["namespace"] == "shared" for e in records)
    # resume after the first record: only the second comes again
    with trio.fail_after(20):
        async with http.stream(
            "GET",
            "/v1/sync/changes?feed=continuous",
            headers={**reader, "Last-Event-ID": records[0]["id"]},
        ) as r:
            async for line in r.aiter_lines():
                if line.startswith("data: ") and line != "data: {}":
                    assert json.loads(line[6:])["cid"]["/"] == cids[1]
                    break


async def test_checkpoint_event_for_invisible_records(
    node: Node, http: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    """protocol.md §8.5: a checkpoint event (data {}) moves the cursor past records the
    caller may not see."""
    await _fill(node, 2, namespace="secret")
    reader = await _reader(http, admin, HOLDER.did, "shared")
    with trio.fail_after(20):
        async with http.stream("GET", "/v1/sync/changes?feed=continuous", headers=reader) as r:
            block: list[str] = []
            async for line in r.aiter_lines():
                if line == "":
                    if block and block[0] == "event: checkpoint":
                        break
                    block = []
                elif not line.startswith(":"):
                    block.append(line)
    assert block[2] == "data: {}"
    assert Cursor.decode(block[1].removeprefix("id: ")).seq == 2


async def test_consent_filters_and_denies(
    node: Node, http: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    """protocol.md §8.6: invisible records are left out (the cursor still moves), naming
    an ungranted namespace is CONSENT_DENIED, an invisible record is RECORD_NOT_FOUND."""
    hidden = await _fill(node, 2, namespace="secret")
    shown = await _fill(node, 1, namespace="shared")
    reader = await _reader(http, admin, HOLDER.did, "shared")
    page = (await http.get("/v1/sync/changes", headers=reader)).json()
    assert [i["cid"]["/"] for i in page["records"]] == shown
    assert Cursor.decode(page["next_cursor"]).seq == 3
    r = await http.get("/v1/sync/changes?namespace=secret", headers=reader)
    assert (r.status_code, _error(r)) == (403, "CONSENT_DENIED")
    r = await http.get(f"/v1/records/{hidden[0]}", headers=reader)
    assert (r.status_code, _error(r)) == (404, "RECORD_NOT_FOUND")


# --- §9 records over HTTP ---


async def test_batch_fetch(node: Node, http: httpx.AsyncClient, admin: dict[str, str]) -> None:
    """protocol.md §9.1: request order, repeats once, missing and invisible alike,
    at most 1000 ids, a bad id MALFORMED, other members ignored."""
    secret = await _fill(node, 1, namespace="secret")
    shared = await _fill(node, 2, namespace="shared")
    absent = "bafyreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"
    reader = await _reader(http, admin, HOLDER.did, "shared")
    ids = [shared[1], shared[0], shared[1], absent, secret[0]]
    r = await http.post("/v1/sync/records", json={"ids": ids, "extra": 1}, headers=reader)
    body = r.json()
    assert [i["cid"]["/"] for i in body["records"]] == [shared[1], shared[0]]
    assert body["missing"] == [absent, secret[0]]
    r = await http.post(
        "/v1/sync/records",
        content=dagcbor_encode({"ids": ids[:1]}),
        headers={**reader, "Content-Type": CBOR, "Accept": CBOR},
    )
    (item,) = dagcbor_decode(r.content)["records"]  # type: ignore[index]
    assert sorted(item) == ["cid", "data", "sig"]
    r = await http.post("/v1/sync/records", json={"ids": [absent] * 1001}, headers=reader)
    assert (r.status_code, _error(r)) == (400, "INVALID_REQUEST")
    r = await http.post("/v1/sync/records", json={"ids": ["nope"]}, headers=reader)
    assert (r.status_code, _error(r)) == (400, "MALFORMED")


async def test_get_one_record(node: Node, http: httpx.AsyncClient, admin: dict[str, str]) -> None:
    """protocol.md §9.2: CBOR {cid, data, sig, seq}; JSON view; 404; MALFORMED path."""
    (cid,) = await _fill(node, 1)
    c = dagcbor_decode(
        (await http.get(f"/v1/records/{cid}", headers={**admin, "Accept": CBOR})).content
    )
    assert sorted(c) == ["cid", "data", "seq", "sig"]  # type: ignore[arg-type]
    j = (await http.get(f"/v1/records/{cid}", headers=admin)).json()
    assert sorted(j) == ["cid", "data", "record", "seq", "sig"]
    r = await http.get(
        "/v1/records/bafyreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy", headers=admin
    )
    assert (r.status_code, _error(r)) == (404, "RECORD_NOT_FOUND")
    r = await http.get("/v1/records/nope", headers=admin)
    assert (r.status_code, _error(r)) == (400, "MALFORMED")


async def test_listing_records_both_orders(
    node: Node, http: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    """protocol.md §9.4: oldest first by default, newest first with order=newest; each
    order's cursor continues it; another order is INVALID_REQUEST."""
    cids = await _fill(node, 5)
    oldest = (await http.get("/v1/records?limit=3", headers=admin)).json()
    assert [r["cid"]["/"] for r in oldest["records"]] == cids[:3]
    assert oldest["has_more"]
    rest = (
        await http.get(f"/v1/records?limit=3&since={oldest['next_cursor']}", headers=admin)
    ).json()
    assert [r["cid"]["/"] for r in rest["records"]] == cids[3:]
    assert not rest["has_more"]
    newest = (await http.get("/v1/records?limit=3&order=newest", headers=admin)).json()
    assert [r["cid"]["/"] for r in newest["records"]] == cids[::-1][:3]
    assert newest["has_more"]
    older = (
        await http.get(
            f"/v1/records?limit=3&order=newest&since={newest['next_cursor']}", headers=admin
        )
    ).json()
    assert [r["cid"]["/"] for r in older["records"]] == cids[1::-1]
    assert not older["has_more"]
    r = await http.get("/v1/records?order=random", headers=admin)
    assert (r.status_code, _error(r)) == (400, "INVALID_REQUEST")
    # the items carry seq besides the wire item, in both encodings
    assert [r["seq"] for r in oldest["records"]] == [1, 2, 3]
    page = dagcbor_decode(
        (await http.get("/v1/records?limit=2", headers={**admin, "Accept": CBOR})).content
    )
    assert isinstance(page, dict)
    assert set(page) == {"records", "next_cursor", "has_more"}
    assert [set(item) for item in page["records"]] == [{"cid", "data", "sig", "seq"}] * 2
    assert [item["seq"] for item in page["records"]] == [1, 2]


async def test_writing_records(node: Node, http: httpx.AsyncClient, admin: dict[str, str]) -> None:
    """protocol.md §9.3 and §5.4: built by the node (201), ingested signed (201, then 200),
    unknown members refused, a JSON 1.0 refused (not converted) and nothing stored."""
    r = await http.post(
        "/v1/records",
        json={"namespace": "n", "thread": "t", "kind": "k", "body": {"x": 1}},
        headers=admin,
    )
    assert r.status_code == 201
    assert sorted(r.json()) == ["cid", "created", "seq"]
    author = SigningKey.from_seed(b"\x33" * 32)
    rec = build_record(author, namespace="n", thread="t", kind="k", body=[2.5])
    wire = dagcbor_encode({"data": rec.data, "sig": rec.sig})
    headers = {**admin, "Content-Type": CBOR}
    first = await http.post("/v1/records", content=wire, headers=headers)
    again = await http.post("/v1/records", content=wire, headers=headers)
    assert (first.status_code, first.json()["created"]) == (201, True)
    assert (again.status_code, again.json()["created"]) == (200, False)
    assert again.json()["cid"] == str(rec.cid)
    r = await http.post(
        "/v1/records",
        json={"namespace": "n", "thread": "t", "kind": "k", "body": 1, "x": 2},
        headers=admin,
    )
    assert (r.status_code, _error(r)) == (400, "INVALID_REQUEST")
    before = await node.store.count()
    raw = b'{"namespace": "n", "thread": "t", "kind": "k", "body": {"price": [3, 1.0]}}'
    r = await http.post(
        "/v1/records", content=raw, headers={**admin, "Content-Type": "application/json"}
    )
    assert (r.status_code, _error(r)) == (400, "RECORD_INVALID")
    message = r.json()["error"]["message"]
    assert message.startswith("body.price[1] is the float 1.0")
    assert "write it as the integer 1" in message
    assert await node.store.count() == before


# --- §10 invites ---


async def _invite(http: httpx.AsyncClient, admin: dict[str, str], **params: object) -> str:
    r = await http.post("/v1/invites", json=params, headers=admin)
    assert r.status_code == 201, r.text
    return str(r.json()["url"])


async def test_invite_url_and_preview(
    node: Node, http: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    """protocol.md §10.1 and §10.2: the URL names the issuer; the preview has no secret
    and carries the signed invite document."""
    url = await _invite(http, admin, device_label="laptop")
    parsed = parse_invite_url(url)
    assert parsed.issuer_did == node.did
    preview = (await http.get(f"/v1/invites/{parsed.invite_id}")).json()
    assert sorted(preview) == sorted(
        [
            "invite_id",
            "issuer_did",
            "state",
            "expires_ms",
            "uses_remaining",
            "scopes",
            "scope_target",
            "accept_holder_types",
            "device_label",
            "invite",
        ]
    )
    assert parsed.secret not in json.dumps(preview)
    doc = preview["invite"]
    assert (doc["type"], doc["v"], doc["issuer"]) == ("fedpeer-invite", 1, node.did)
    r = await http.get(f"/v1/invites/{'0' * 32}")
    assert (r.status_code, _error(r)) == (404, "INVITE_NOT_FOUND")


async def test_redeem_bodies(node: Node, http: httpx.AsyncClient, admin: dict[str, str]) -> None:
    """protocol.md §10.3: guest and federated bodies are closed; field rules."""
    url = parse_invite_url(await _invite(http, admin))
    path = f"/v1/invites/{url.invite_id}/redeem"
    guest = {
        "holder_type": "guest",
        "secret": url.secret,
        "holder_pubkey": b64url_encode(HOLDER.public_key),
    }
    for body, code in [
        ({**guest, "holder_did": HOLDER.did}, "INVALID_REQUEST"),
        ({**guest, "holder_type": "peer"}, "INVALID_REQUEST"),
        ({**guest, "holder_pubkey": b64url_encode(bytes(32))}, "KEY_UNKNOWN"),
        ({**guest, "holder_pubkey": "xyz"}, "MALFORMED"),
        ({**guest, "holder_label": " "}, "INVALID_REQUEST"),
    ]:
        r = await http.post(path, json=body)
        assert _error(r) == code, body
    r = await http.post(path, json=guest)
    assert r.status_code == 201


async def test_federated_redeem_over_http(
    node: Node, http: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    """protocol.md §10.4: the proof binds invite, issuer and time; ±60 s; usable once."""
    import time

    url = parse_invite_url(await _invite(http, admin, max_uses=5))
    path = f"/v1/invites/{url.invite_id}/redeem"

    def body(at: int, audience: str = node.did) -> dict[str, object]:
        proof, _ = sign_redeem_proof(
            HOLDER, invite_id=url.invite_id, audience=audience, issued_at_ms=at
        )
        return {
            "holder_type": "federated",
            "secret": url.secret,
            "holder_did": HOLDER.did,
            "holder_proof": proof,
            "holder_proof_issued_at_ms": at,
        }

    now = int(time.time() * 1000)
    r = await http.post(path, json=body(now - 70_000))
    assert (r.status_code, _error(r)) == (403, "FRESHNESS_VIOLATION")
    r = await http.post(path, json=body(now, audience=HOLDER.did))
    assert (r.status_code, _error(r)) == (403, "BAD_PROOF")
    good = body(now)
    r = await http.post(path, json=good)
    assert r.status_code == 201, r.text
    r = await http.post(path, json=good)
    assert (r.status_code, _error(r)) == (403, "PROOF_REPLAYED")


async def test_redeem_check_order(http: httpx.AsyncClient, admin: dict[str, str]) -> None:
    """protocol.md §10 and §10.5: body, existence, state (revoked > exhausted > expired),
    secret, holder type; a single-use invite redeems exactly once under concurrency."""
    r = await http.post(f"/v1/invites/{'0' * 32}/redeem", json={"holder_type": "x"})
    assert _error(r) == "INVALID_REQUEST"  # the body before the invite
    guest = {"holder_type": "guest", "holder_pubkey": b64url_encode(HOLDER.public_key)}
    r = await http.post(f"/v1/invites/{'0' * 32}/redeem", json={**guest, "secret": "s"})
    assert (r.status_code, _error(r)) == (404, "INVITE_NOT_FOUND")
    url = parse_invite_url(await _invite(http, admin, accept_holder_types=["federated"]))
    path = f"/v1/invites/{url.invite_id}/redeem"
    r = await http.post(path, json={**guest, "secret": "wrong"})
    assert (r.status_code, _error(r)) == (403, "INVITE_SECRET_INVALID")
    r = await http.post(path, json={**guest, "secret": url.secret})
    assert (r.status_code, _error(r)) == (403, "HOLDER_TYPE_MISMATCH")
    await http.post(f"/v1/invites/{url.invite_id}/revoke", headers=admin)
    r = await http.post(path, json={**guest, "secret": "wrong"})
    assert (r.status_code, _error(r)) == (410, "INVITE_REVOKED")  # state before secret
    once = parse_invite_url(await _invite(http, admin))
    results: list[int] = []
    async with trio.open_nursery() as nursery:
        for _ in range(4):

            async def one() -> None:
                rr = await http.post(
                    f"/v1/invites/{once.invite_id}/redeem", json={**guest, "secret": once.secret}
                )
                results.append(rr.status_code)

            nursery.start_soon(one)
    assert sorted(results) == [201, 410, 410, 410]


async def test_redeem_answer_and_code(
    node: Node, http: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    """protocol.md §10.6: the answer's members; both sides compute the same code."""
    url = parse_invite_url(await _invite(http, admin))
    r = await http.post(
        f"/v1/invites/{url.invite_id}/redeem",
        json={
            "holder_type": "guest",
            "secret": url.secret,
            "holder_pubkey": b64url_encode(HOLDER.public_key),
        },
    )
    answer = r.json()
    assert sorted(answer) == sorted(
        [
            "token",
            "token_id",
            "service_account_id",
            "expires_ms",
            "actor_did",
            "holder_type",
            "issuer_did",
            "invite_id",
            "scopes",
            "scope_target",
            "grant_id",
            "confirmation_code",
        ]
    )
    assert answer["actor_did"] == HOLDER.did
    assert answer["confirmation_code"] == confirmation_code(node.did, HOLDER.did, url.invite_id)
    token = {"Authorization": f"Bearer {answer['token']}"}
    assert (await http.get("/v1/sync/changes", headers=token)).status_code == 200


# --- §11 pairing ---


async def test_pull_pair_checks_the_manifest(tmp_path: Path) -> None:
    """protocol.md §11 and §11.1: the target refuses itself and a source whose manifest is
    not signed by the DID it named; the same peer and filter give the same pair."""
    async with open_node(tmp_path / "a") as a, open_node(tmp_path / "b") as b:
        with pytest.raises(Exception, match="DID_MISMATCH"):
            await b.pair_with(a.url, token="fp_x", peer_did=HOLDER.did)
        with pytest.raises(Exception, match="PAIR_SELF"):
            await b.pair_with(b.url, token="fp_x")
        assert b.pairs.list() == []
        assert a.admin_token_path is not None
        token = a.admin_token_path.read_text().strip()
        first = await b.pair_with(a.url, token=token, peer_did=a.did)
        again = await b.pair_with(a.url, token=token)
        assert first.id == again.id
        assert [p.id for p in b.pairs.list()] == [first.id]


async def test_pairing_from_an_invite_both_ways(tmp_path: Path) -> None:
    """protocol.md §11.2: one invite, a pair each way, the same code on both sides; a
    guest's reciprocal is ignored."""
    async with open_node(tmp_path / "a") as a, open_node(tmp_path / "b") as b:
        assert a.admin_token_path is not None
        admin = {"Authorization": f"Bearer {a.admin_token_path.read_text().strip()}"}
        async with httpx.AsyncClient(base_url=a.url) as http:
            url = await _invite(http, admin)
            guest_url = await _invite(http, admin)
        result = await b.pair_from_invite(url)
        invite_id = parse_invite_url(url).invite_id
        assert result.two_way
        assert result.confirmation_code == confirmation_code(a.did, b.did, invite_id)
        assert result.reverse is not None
        assert result.reverse.get("created") is True
        (back,) = a.pairs.list()
        assert (back.peer_did, back.id) == (b.did, result.reverse["id"])
        assert result.pair.peer_did == a.did
        # a guest cannot hand the issuer a credential to pull with
        async with PeerClient(a.url) as client:
            _cred, answer = await client.redeem_with_answer(
                guest_url,
                holder_key=HOLDER,
                holder_type="guest",
                reciprocal={"token": "fp_x", "scopes": ["sync:read"], "url": b.url},
            )
        assert "reverse_pair" not in answer
        assert len(a.pairs.list()) == 1


# --- §13 errors ---


async def test_error_envelope(http: httpx.AsyncClient, admin: dict[str, str]) -> None:
    """protocol.md §13.1: {"error": {code, message}} as JSON with the code's status, even
    when CBOR was asked for; rate limit headers on errors too."""
    r = await http.get("/v1/records/nope", headers={**admin, "Accept": CBOR})
    assert r.status_code == 400
    assert _error(r) == "MALFORMED"
    assert "X-RateLimit-Limit" in r.headers
    assert r.json()["error"]["message"]
    r = await http.get("/v1/sync/pairs/p_nothing", headers=admin)
    assert (r.status_code, _error(r)) == (404, "PAIR_NOT_FOUND")
