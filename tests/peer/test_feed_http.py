"""Records and feed endpoints over a real server: longpoll, SSE, encodings, bad input."""

from __future__ import annotations

import httpx
import pytest
import trio

from fedpeer.errors import CursorFromFuture, CursorInvalid, CursorReset
from fedpeer.identity.canonical import dagcbor_decode, dagcbor_encode
from fedpeer.identity.keys import SigningKey
from fedpeer.peer import Node, PeerClient
from fedpeer.sync.feed import Cursor
from fedpeer.sync.records import build_record


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _fill(node: Node, n: int, thread: str = "t") -> list[str]:
    out = []
    for i in range(n):
        rec = await node.append(namespace="ns", thread=thread, kind="note", body={"i": i})
        out.append(str(rec.cid))
    return out


async def test_pull_whole_feed_in_pages(node: Node, admin_token: str) -> None:
    cids = await _fill(node, 25)
    async with PeerClient(node.url, token=admin_token) as peer:
        got = [str(r.cid) async for _c, r in peer.iter_changes(limit=7, follow=False)]
    assert got == cids


async def test_cbor_and_json_give_the_same_records(
    node: Node, http: httpx.AsyncClient, admin_token: str
) -> None:
    await _fill(node, 5)
    r_json = await http.get("/v1/sync/changes", headers=_auth(admin_token))
    r_cbor = await http.get(
        "/v1/sync/changes", headers={**_auth(admin_token), "Accept": "application/cbor"}
    )
    assert r_json.headers["content-type"].startswith("application/json")
    assert r_cbor.headers["content-type"].startswith("application/cbor")
    j = r_json.json()
    c = dagcbor_decode(r_cbor.content)
    assert isinstance(c, dict)
    assert [r["cid"]["/"] for r in j["records"]] == [str(r["cid"]) for r in c["records"]]
    assert j["next_cursor"] == c["next_cursor"]
    # The JSON view shows the record readably too.
    assert j["records"][0]["record"]["body"] == {"i": 0}


async def test_accept_quality_parameter_name_is_case_insensitive(
    node: Node, http: httpx.AsyncClient, admin_token: str
) -> None:
    """RFC 9110: parameter names are case-insensitive, so ``Q=0`` refuses JSON."""
    for accept in (
        "application/json;Q=0, application/cbor",
        "application/json; Q=0.5, application/cbor",
    ):
        r = await http.get("/v1/sync/changes", headers={**_auth(admin_token), "Accept": accept})
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/cbor"), accept


async def test_a_thread_name_with_a_slash_is_reached_raw_and_encoded(
    node: Node, http: httpx.AsyncClient, admin_token: str
) -> None:
    """protocol.md §8.1: ``{thread}`` is the rest of the path up to ``/records``;
    a ``/`` in the name works raw and as ``%2F``."""
    (cid,) = await _fill(node, 1, thread="team/notes")
    await _fill(node, 1, thread="team")
    for path in ("/v1/threads/team/notes/records", "/v1/threads/team%2Fnotes/records"):
        r = await http.get(path, headers=_auth(admin_token))
        assert r.status_code == 200, (path, r.text)
        assert [rec["cid"]["/"] for rec in r.json()["records"]] == [cid], path


async def test_longpoll_returns_when_a_record_lands(node: Node, admin_token: str) -> None:
    async with PeerClient(node.url, token=admin_token) as peer:
        head = await peer.changes()
        assert head.records == ()
        got: list[str] = []
        waiting = trio.Event()

        async def poll() -> None:
            waiting.set()
            page = await peer.changes(head.next_cursor, feed="longpoll", timeout=30)
            got.extend(str(r.cid) for r in page.records)

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(poll)
                await waiting.wait()
                # Let the request reach the server and block in its wait.
                for _ in range(50):
                    await trio.testing.wait_all_tasks_blocked()
                rec = await node.append(namespace="ns", thread="t", kind="k", body=1)
        assert got == [str(rec.cid)]


async def test_longpoll_times_out_with_cursor(node: Node, admin_token: str) -> None:
    async with PeerClient(node.url, token=admin_token) as peer:
        head = await peer.changes()
        with trio.fail_after(10):
            page = await peer.changes(head.next_cursor, feed="longpoll", timeout=0.2)
        assert page.records == ()
        assert page.next_cursor == head.next_cursor


async def test_longpoll_timeout_is_plain_decimal_text_and_always_checked(
    node: Node, http: httpx.AsyncClient, admin_token: str
) -> None:
    """protocol.md §8.1: ``timeout`` is a decimal number of seconds ("30", "0.5").
    The client never sends "30.0" (a server parsing integers would refuse every
    longpoll), and the node refuses a bad one even when it has records to answer
    at once (before: only when it came to wait)."""
    sent: list[str | None] = []

    async def hook(request: httpx.Request) -> None:
        sent.append(request.url.params.get("timeout"))

    async with (
        httpx.AsyncClient(event_hooks={"request": [hook]}) as raw,
        PeerClient(node.url, token=admin_token, client=raw) as peer,
    ):
        head = await peer.changes()
        with trio.fail_after(10):
            await peer.changes(head.next_cursor, feed="longpoll", timeout=0.25)
            await _fill(node, 1)
            await peer.changes(head.next_cursor, feed="longpoll")  # the 30 s default
    assert sent == [None, "0.25", "30"]
    async with PeerClient(node.url, token=admin_token) as peer:
        for nonsense in (float("nan"), float("inf"), -1.0):
            with pytest.raises(ValueError, match="0 to 86400"):
                await peer.changes(head.next_cursor, feed="longpoll", timeout=nonsense)
    for bad in ("abc", "30s", "nan", "inf", "1e3", "0x10"):
        r = await http.get(
            "/v1/sync/changes",
            params={"feed": "longpoll", "timeout": bad},
            headers=_auth(admin_token),
        )
        assert r.status_code == 400, (bad, r.text)
        assert r.json()["error"]["code"] == "INVALID_REQUEST"


async def test_sse_resume_delivers_each_record_once(node: Node, admin_token: str) -> None:
    first = await _fill(node, 10)
    seen: list[str] = []
    async with PeerClient(node.url, token=admin_token) as peer:
        last_cursor = None
        with trio.fail_after(15):
            async for ev in peer.stream_changes():
                if ev.record is not None:
                    seen.append(str(ev.record.cid))
                    last_cursor = ev.cursor
                if len(seen) == 6:
                    break
        more = await _fill(node, 5)
        with trio.fail_after(15):
            async for ev in peer.stream_changes(since=last_cursor):
                if ev.record is not None:
                    seen.append(str(ev.record.cid))
                if len(seen) == 15:
                    break
    assert seen == first + more


async def test_sse_sends_heartbeats_when_idle(tmp_path: object) -> None:
    from fedpeer.peer import NodeConfig, open_node

    cfg = NodeConfig(heartbeat_s=0.05, auth_enabled=False)
    async with open_node(None, config=cfg) as node, httpx.AsyncClient() as http:
        beats = 0
        with trio.fail_after(10):
            async with http.stream("GET", node.url + "/v1/sync/changes?feed=continuous") as r:
                async for line in r.aiter_lines():
                    if line == ": heartbeat":
                        beats += 1
                        if beats == 2:
                            break
        assert beats == 2


def test_a_heartbeat_slower_than_the_protocol_allows_is_refused() -> None:
    """Clients drop a stream silent for 60 s (four 15 s heartbeats, protocol.md §8.5):
    a node configured with a longer heartbeat would have its healthy streams dropped."""
    from fedpeer.errors import ConfigInvalid
    from fedpeer.peer import NodeConfig

    assert NodeConfig(heartbeat_s=15).heartbeat_s == 15
    with pytest.raises(ConfigInvalid, match="at most 15 s"):
        NodeConfig(heartbeat_s=16)


async def test_batch_fetch_lists_missing(node: Node, admin_token: str) -> None:
    cids = await _fill(node, 3)
    other = build_record(SigningKey.generate(), namespace="x", thread="y", kind="z", body=None)
    async with PeerClient(node.url, token=admin_token) as peer:
        records, missing = await peer.fetch_records([cids[0], cids[2], str(other.cid), cids[0]])
    assert [str(r.cid) for r in records] == [cids[0], cids[2]]
    assert missing == [str(other.cid)]


async def test_batch_fetch_of_many_long_spelled_ids(node: Node, admin_token: str) -> None:
    """Ids in a rare long spelling (base2: 289 characters) parse slowly; a batch
    of them (over 16 KiB of text) is parsed off the event loop, with the same
    answer: what the node has, the rest under ``missing`` in canonical text."""
    from multiformats import CID as MfCID
    from multiformats import multihash

    cids = await _fill(node, 2)
    others = [
        build_record(SigningKey.generate(), namespace="x", thread="y", kind="z", body=i).cid
        for i in range(100)
    ]

    def base2(cid: str) -> str:
        parsed = MfCID.decode(cid)
        return str(MfCID("base2", 1, parsed.codec, multihash.wrap(parsed.raw_digest, "sha2-256")))

    ids = [base2(cids[1]), *(base2(str(c)) for c in others)]
    assert sum(map(len, ids)) > 16 * 1024
    async with PeerClient(node.url, token=admin_token) as peer:
        records, missing = await peer.fetch_records(ids)
    assert [str(r.cid) for r in records] == [cids[1]]
    assert missing == [str(c) for c in others]


async def test_signed_record_ingest_and_dedupe(node: Node, admin_token: str) -> None:
    author = SigningKey.generate()
    rec = build_record(author, namespace="ns", thread="t", kind="k", body={"a": 1})
    async with PeerClient(node.url, token=admin_token) as peer:
        first = await peer.put_signed(rec)
        again = await peer.put_signed(rec)
        assert first["created"] is True
        assert again["created"] is False
        assert first["seq"] == again["seq"]
        page = await peer.changes()
    assert [r.record.author for r in page.records] == [author.did]
    assert page.records[0].sig == rec.sig


async def test_thread_listing_and_thread_records(node: Node, admin_token: str) -> None:
    a = await _fill(node, 3, thread="alpha")
    await _fill(node, 2, thread="beta")
    async with PeerClient(node.url, token=admin_token) as peer:
        threads = await peer.get_value("/v1/threads")
        assert isinstance(threads, dict)
        counts = {t["thread"]: t["count"] for t in threads["threads"]}
        assert counts == {"alpha": 3, "beta": 2}
        page = await peer.get_value("/v1/threads/alpha/records", limit=2)
        assert isinstance(page, dict)
        assert [str(r["cid"]) for r in page["records"]] == a[:2]
        assert page["has_more"] is True


async def _count(node: Node) -> int:
    return await node.store.count()


BAD_BODIES = [
    (b"\xff\x00garbage", "application/cbor", 400, "MALFORMED"),
    (b"{not json", "application/json", 400, "MALFORMED"),
    # A map with keys out of canonical order: valid CBOR, not DAG-CBOR.
    (bytes.fromhex("a2616202616101"), "application/cbor", 400, "NON_CANONICAL"),
    (b'{"namespace": "n"}', "application/json", 400, "INVALID_REQUEST"),
    (
        b'{"namespace": "", "thread": "t", "kind": "k", "body": 1}',
        "application/json",
        400,
        "RECORD_INVALID",
    ),
    (b"[1,2]", "application/json", 400, "MALFORMED"),
    (b"hello", "text/plain", 415, "UNSUPPORTED_MEDIA_TYPE"),
]


@pytest.mark.parametrize(("body", "ctype", "status", "code"), BAD_BODIES)
async def test_bad_bodies_get_4xx_and_store_unchanged(
    node: Node,
    http: httpx.AsyncClient,
    admin_token: str,
    body: bytes,
    ctype: str,
    status: int,
    code: str,
) -> None:
    await _fill(node, 2)
    before = await _count(node)
    r = await http.post(
        "/v1/records", content=body, headers={**_auth(admin_token), "Content-Type": ctype}
    )
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    assert await _count(node) == before


async def test_oversized_body_is_413(node: Node, http: httpx.AsyncClient, admin_token: str) -> None:
    big = b'{"namespace":"n","thread":"t","kind":"k","body":"' + b"x" * (5 * 1024 * 1024) + b'"}'
    r = await http.post(
        "/v1/records",
        content=big,
        headers={**_auth(admin_token), "Content-Type": "application/json"},
    )
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "BODY_TOO_LARGE"
    assert await _count(node) == 0


async def test_tampered_signed_record_is_refused(
    node: Node, http: httpx.AsyncClient, admin_token: str
) -> None:
    rec = build_record(SigningKey.generate(), namespace="n", thread="t", kind="k", body=1)
    sig = bytes([rec.sig[0] ^ 1]) + rec.sig[1:]
    r = await http.post(
        "/v1/records",
        content=dagcbor_encode({"data": rec.data, "sig": sig}),
        headers={**_auth(admin_token), "Content-Type": "application/cbor"},
    )
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "BAD_SIGNATURE"
    assert await _count(node) == 0


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("since=garbage", "CURSOR_INVALID"),
        ("limit=0", "INVALID_REQUEST"),
        ("limit=10001", "INVALID_REQUEST"),
        ("limit=abc", "INVALID_REQUEST"),
        ("feed=sideways", "INVALID_REQUEST"),
        ("namespace=" + "n" * 300, "INVALID_REQUEST"),
    ],
)
async def test_bad_feed_queries(
    http: httpx.AsyncClient, admin_token: str, query: str, code: str
) -> None:
    r = await http.get(f"/v1/sync/changes?{query}", headers=_auth(admin_token))
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == code


async def test_cursor_from_other_store_resets(node: Node, admin_token: str) -> None:
    await _fill(node, 1)
    foreign = Cursor("0" * 32, 1).encode()
    future = Cursor(node.store.epoch, 10_000).encode()
    async with PeerClient(node.url, token=admin_token) as peer:
        with pytest.raises(CursorReset):
            await peer.changes(foreign)
        with pytest.raises(CursorFromFuture):
            await peer.changes(future)
        with pytest.raises(CursorInvalid):
            await peer.changes("!!!")


@pytest.mark.parametrize("path", ["/v1/records/notacid", "/v1/records/bafy" + "a" * 10])
async def test_bad_cid_is_400(http: httpx.AsyncClient, admin_token: str, path: str) -> None:
    r = await http.get(path, headers=_auth(admin_token))
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "MALFORMED"


async def test_unknown_route_and_method(http: httpx.AsyncClient) -> None:
    r = await http.get("/v1/nope")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "NOT_FOUND"
    r = await http.delete("/health")
    assert r.status_code == 405
    assert r.json()["error"]["code"] == "METHOD_NOT_ALLOWED"


async def test_node_shutdown_ends_longpolls_promptly(tmp_path: object) -> None:
    from fedpeer.peer import NodeConfig, open_node

    result: list[int] = []
    with trio.fail_after(10):
        async with (
            trio.open_nursery() as nursery,
            open_node(None, config=NodeConfig(auth_enabled=False)) as node,
        ):
            started = trio.Event()

            async def poll() -> None:
                async with httpx.AsyncClient() as http:
                    started.set()
                    r = await http.get(node.url + "/v1/sync/changes?feed=longpoll", timeout=60)
                    result.append(r.status_code)

            nursery.start_soon(poll)
            await started.wait()
            for _ in range(50):
                await trio.testing.wait_all_tasks_blocked()
    assert result == [200]


async def test_oversized_body_without_length_is_413(
    node: Node, http: httpx.AsyncClient, admin_token: str
) -> None:
    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(6):
            yield b"x" * (1024 * 1024)

    r = await http.post(
        "/v1/records",
        content=chunks(),
        headers={**_auth(admin_token), "Content-Type": "application/json"},
    )
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "BODY_TOO_LARGE"
