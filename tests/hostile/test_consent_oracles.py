"""A reader learns nothing from where its pages end (audit, round 6).

Before: a scan ran with the request's own filter and dropped the records the
reader may not see afterwards, so a page counted them. A reader granted
``public/`` who asked ``?thread=payroll-2024&limit=1`` got empty pages whose
cursors stopped on each hidden payroll record in turn (seq 2, 3, 4, then the
head): whether a thread exists anywhere, how many records it holds and when
each was written. ``GET /v1/threads`` handed out cursors that *were* the
(namespace, thread) names of hidden threads, base64 of DAG-CBOR.

Now the reader's grants go into the scan (``changes_in`` over
``ConsentView.wake_filters``), so a page only counts records the reader may
see, and the threads cursor is sealed. Real node (SQLite, hypercorn), plain
httpx clients holding tokens of a DID with narrow grants.
"""

from __future__ import annotations

import base64
from pathlib import Path

import httpx

from fedpeer.consent.grants import Target
from fedpeer.identity.canonical import dagcbor_encode
from fedpeer.identity.keys import SigningKey
from fedpeer.peer import NodeConfig, open_node
from fedpeer.peer.node import Node
from fedpeer.sync.feed import Cursor
from fedpeer.sync.records import build_record

CFG = NodeConfig(rate_per_s=1e6, rate_burst=10**6)
HIDDEN_NAMES = ("secret/hr", "payroll-2024", "zzz-private", "merger-talks")


async def _holder(node: Node, *targets: Target) -> dict[str, str]:
    """Headers of a token for a fresh DID granted ``reader`` on ``targets``."""
    did = SigningKey.generate().did
    for target in targets:
        await node.grants.create(did, target=target, scopes=["reader"])
    issued = await node.tokens.create("narrow", scopes=["reader"], holder_did=did)
    return {"Authorization": f"Bearer {issued.token}", "Accept": "application/json"}


async def _fill(node: Node) -> dict[int, tuple[str, str]]:
    """Records visible and hidden, interleaved; seq -> (namespace, thread)."""
    layout = [
        ("public/", "t"),
        ("secret/hr", "payroll-2024"),
        ("secret/hr", "payroll-2024"),
        ("public/x", "t"),  # under a "public/" prefix, but not the pinned namespace
        ("public/", "chat"),
        ("secret/hr", "payroll-2024"),
        ("public/x", "t"),
        ("public/", "t"),
        ("zzz-private", "merger-talks"),
        ("public/x", "t"),
    ]
    placed: dict[int, tuple[str, str]] = {}
    for i, (namespace, thread) in enumerate(layout):
        entry = await node.records.append(namespace=namespace, thread=thread, kind="n", body=i)
        placed[entry.seq] = (namespace, thread)
    return placed


async def _walk(
    http: httpx.AsyncClient, path: str, params: dict[str, str]
) -> list[tuple[list[int], int, bool]]:
    """Every page of a listing: (seqs of its records, its cursor's seq, has_more)."""
    pages: list[tuple[list[int], int, bool]] = []
    since: str | None = None
    for _ in range(40):
        answer = await http.get(path, params=params | ({"since": since} if since else {}))
        assert answer.status_code == 200, answer.text
        body = answer.json()
        seqs = [int(r["seq"]) for r in body["records"]]
        since = body["next_cursor"]
        assert isinstance(since, str)
        pages.append((seqs, Cursor.decode(since).seq, body["has_more"]))
        if not body["has_more"]:
            return pages
    raise AssertionError(f"{path} {params} did not end in 40 pages")


async def test_a_page_never_ends_on_a_record_the_reader_may_not_see(tmp_path: Path) -> None:
    async with open_node(tmp_path / "n", config=CFG) as node:
        placed = await _fill(node)
        head = max(placed)
        cases = [
            # one namespace, a probe for a thread that exists only where it may not look
            ((Target("namespace", "public/"),), {"thread": "payroll-2024"}),
            ((Target("namespace", "public/"),), {"thread": "merger-talks"}),
            ((Target("namespace", "public/"),), {}),
            # a thread pinned to one namespace: "public/x" also starts with "public/"
            ((Target("thread", "t", "public/"),), {}),
            ((Target("thread", "t", "public/"),), {"thread": "t"}),
            # two grants: the scan is a merge of two
            ((Target("thread", "t", "public/"), Target("namespace", "public/")), {}),
            ((Target("thread", "chat", "public/"), Target("thread", "t", "public/")), {}),
        ]
        for targets, flt in cases:
            headers = await _holder(node, *targets)

            def visible(seq: int, targets: tuple[Target, ...] = targets) -> bool:
                return any(t.matches(*placed[seq]) for t in targets)

            async with httpx.AsyncClient(base_url=node.url, headers=headers, timeout=10) as http:
                for path in ("/v1/sync/changes", "/v1/records"):
                    pages = await _walk(http, path, flt | {"limit": "1"})
                    shown = [s for seqs, _, _ in pages for s in seqs]
                    wanted = sorted(
                        s
                        for s in placed
                        if visible(s) and ("thread" not in flt or placed[s][1] == flt["thread"])
                    )
                    assert shown == wanted, (targets, flt, path, pages)
                    for seqs, at, more in pages:
                        # a cursor stops on a record it returned, or at the head
                        assert at == (seqs[-1] if more else head), (targets, flt, path, pages)
                        assert visible(at) or at == head
                if "thread" in flt and not any(visible(s) for s in placed):
                    continue
                thread = flt.get("thread", "t")
                pages = await _walk(http, f"/v1/threads/{thread}/records", {"limit": "1"})
                for seqs, at, more in pages:
                    assert at == (seqs[-1] if more else head), (targets, thread, pages)


async def test_a_probe_for_a_hidden_thread_looks_like_one_that_does_not_exist(
    tmp_path: Path,
) -> None:
    async with open_node(tmp_path / "n", config=CFG) as node:
        placed = await _fill(node)
        headers = await _holder(node, Target("namespace", "public/"))
        async with httpx.AsyncClient(base_url=node.url, headers=headers, timeout=10) as http:
            answers = []
            for thread in ("payroll-2024", "merger-talks", "no-such-thread"):
                pages = await _walk(http, "/v1/sync/changes", {"thread": thread, "limit": "1"})
                answers.append(pages)
                newest = await http.get(
                    "/v1/records", params={"thread": thread, "limit": "1", "order": "newest"}
                )
                assert newest.status_code == 200
                assert newest.json()["records"] == []
                assert newest.json()["has_more"] is False
            assert answers[0] == answers[1] == answers[2] == [([], max(placed), False)]


def _unseal_attempts(cursor: str) -> bytes:
    return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))


async def test_threads_cursor_names_no_hidden_thread(tmp_path: Path) -> None:
    """``GET /v1/threads?limit=1`` pages through every (namespace, thread) pair:
    no answer, cursor included, holds a name the reader may not see, and a
    cursor made up by the reader (the old, readable form) is refused."""
    async with open_node(tmp_path / "n", config=CFG) as node:
        await _fill(node)
        headers = await _holder(node, Target("namespace", "public/"))
        async with httpx.AsyncClient(base_url=node.url, headers=headers, timeout=10) as http:
            listed: list[tuple[str, str]] = []
            pages: list[list[str]] = []
            since: str | None = None
            for _ in range(20):
                params = {"limit": "1"} | ({"since": since} if since else {})
                answer = await http.get("/v1/threads", params=params)
                assert answer.status_code == 200, answer.text
                raw = answer.content
                body = answer.json()
                listed += [(t["namespace"], t["thread"]) for t in body["threads"]]
                pages.append([t["namespace"] + t["thread"] for t in body["threads"]])
                since = body.get("next_cursor")
                if since is not None:
                    raw += _unseal_attempts(since)
                for name in HIDDEN_NAMES:
                    assert name.encode() not in raw, (name, body)
                if not body["has_more"]:
                    break
            else:
                raise AssertionError("the threads listing did not end in 20 pages")
            assert listed == [("public/", "chat"), ("public/", "t"), ("public/x", "t")]
            # the hidden pairs add no page either (before: one empty page each,
            # where they sort): only the last page is empty, as with none hidden
            assert pages == [["public/chat"], ["public/t"], ["public/xt"], []]
            # a cursor the reader made, naming where to start: refused
            forged = base64.urlsafe_b64encode(b"\x82\x69secret/hr\x60").rstrip(b"=").decode()
            answer = await http.get("/v1/threads", params={"since": forged})
            assert answer.status_code == 400
            assert answer.json()["error"]["code"] == "INVALID_REQUEST"


async def test_a_drop_box_writer_is_not_told_what_the_node_already_had(tmp_path: Path) -> None:
    """A holder that may write ``inbox/`` but not read it re-posts the bytes of a
    record it has a copy of: the answer must be the same as for a record the
    node never had (before: 200 ``created: false`` with the record's seq, and
    ``existing: 1`` from the import)."""
    async with open_node(tmp_path / "n", config=CFG) as node:
        there = await node.records.append(namespace="inbox/", thread="t", kind="n", body="x")
        did = SigningKey.generate().did
        await node.grants.create(
            did, target=Target("namespace", "inbox/"), scopes=["records:write"]
        )
        issued = await node.tokens.create("drop box", scopes=["records:write"], holder_did=did)
        headers = {
            "Authorization": f"Bearer {issued.token}",
            "Content-Type": "application/cbor",
            "Accept": "application/json",
        }
        author = SigningKey.generate()

        def fresh(body: object) -> dict[str, bytes]:
            signed = build_record(author, namespace="inbox/", thread="t", kind="n", body=body)
            return {"data": signed.data, "sig": signed.sig}

        old = {"data": there.data, "sig": there.sig}
        async with httpx.AsyncClient(base_url=node.url, headers=headers, timeout=10) as http:
            answers = []
            for item in (old, fresh(1)):
                answer = await http.post("/v1/records", content=dagcbor_encode(item))
                answers.append((answer.status_code, sorted(answer.json())))
                assert answer.json()["created"] is True
            assert answers[0] == answers[1] == (201, ["cid", "created"])
            # its own appends do not say where they sit either (two seqs one apart
            # would say that nothing was stored in between)
            append = {"namespace": "inbox/", "thread": "t", "kind": "n", "body": 1}
            answer = await http.post("/v1/records", content=dagcbor_encode(append))
            assert answer.status_code == 201
            assert sorted(answer.json()) == ["cid", "created"]
            for batch in ([old], [fresh(2)], [old, fresh(3)]):
                answer = await http.post(
                    "/v1/records/import", content=dagcbor_encode({"records": batch})
                )
                assert answer.status_code == 200, answer.text
                assert answer.json() == {"stored": len(batch), "existing": 0}
        # a caller that may read the record is still told
        admin = headers | {"Authorization": f"Bearer {node.admin_token}"}
        async with httpx.AsyncClient(base_url=node.url, headers=admin, timeout=10) as http:
            answer = await http.post("/v1/records", content=dagcbor_encode(old))
            assert answer.status_code == 200
            assert answer.json() == {"cid": str(there.cid), "seq": there.seq, "created": False}
            answer = await http.post(
                "/v1/records/import", content=dagcbor_encode({"records": [old]})
            )
            assert answer.json() == {"stored": 0, "existing": 1}


async def test_threads_pages_count_only_what_the_reader_may_see(tmp_path: Path) -> None:
    """Several grants (a namespace, a thread pinned to a namespace, a thread in
    any namespace), pages of 2: the listing is the same pairs, in the same
    pages, whether or not hidden pairs sit between them."""

    async def pages_of(node: Node) -> list[list[tuple[str, str]]]:
        headers = await _holder(
            node,
            Target("namespace", "b/"),
            Target("thread", "t", "d"),
            Target("thread", "u"),
        )
        out: list[list[tuple[str, str]]] = []
        since: str | None = None
        async with httpx.AsyncClient(base_url=node.url, headers=headers, timeout=10) as http:
            for _ in range(20):
                params = {"limit": "2"} | ({"since": since} if since else {})
                body = (await http.get("/v1/threads", params=params)).json()
                out.append([(t["namespace"], t["thread"]) for t in body["threads"]])
                since = body.get("next_cursor")
                if not body["has_more"]:
                    return out
        raise AssertionError("the threads listing did not end in 20 pages")

    seen = [("a", "u"), ("b/", "x"), ("b/", "y"), ("c", "u"), ("d", "t"), ("e", "u")]
    hidden = [("a", "t"), ("b", "x"), ("b0", "y"), ("d", "x"), ("dd", "t"), ("e", "v")]
    answers = []
    for name, pairs in (("clean", seen), ("crowded", seen + hidden)):
        async with open_node(tmp_path / name, config=CFG) as node:
            for namespace, thread in pairs:
                await node.records.append(namespace=namespace, thread=thread, kind="n", body=1)
            answers.append(await pages_of(node))
    assert answers[0] == answers[1]
    assert [p for page in answers[0] for p in page] == seen


async def test_a_reader_without_grants_gets_one_empty_page(tmp_path: Path) -> None:
    """Review: a caller with no grant at all paged newest-first through the whole
    log a window at a time (73 empty pages on 20k rows in the review's probe).
    Nothing can be visible: one empty page, whichever order."""
    async with open_node(tmp_path / "n", config=CFG) as node:
        await _fill(node)
        headers = await _holder(node)
        async with httpx.AsyncClient(base_url=node.url, headers=headers, timeout=10) as http:
            for order in ("newest", "oldest"):
                answer = await http.get("/v1/records", params={"order": order, "limit": "1"})
                assert answer.status_code == 200, answer.text
                assert answer.json()["records"] == []
                assert answer.json()["has_more"] is False


async def test_health_tells_only_an_admin_how_much_the_node_holds(tmp_path: Path) -> None:
    """``/health`` showed anyone the record count, the head seq and the sync
    activity: a reader learnt how much the node holds beyond its grants, and a
    drop box re-posting a record learnt whether the node had it (the count
    moving or not). Now the counts show to an admin only."""
    async with open_node(tmp_path / "n", config=CFG) as node:
        there = await node.records.append(namespace="inbox/", thread="t", kind="n", body="x")
        await node.records.append(namespace="secret/", thread="t", kind="n", body="y")
        reader = await _holder(node, Target("namespace", "inbox/"))
        async with httpx.AsyncClient(base_url=node.url, timeout=10) as http:
            for headers in ({}, reader):
                body = (await http.get("/health", headers=headers)).json()
                assert set(body) == {"status", "did", "transport"}, body
            # a drop box re-posts a record the node holds: nothing on /health moves
            did = SigningKey.generate().did
            await node.grants.create(
                did, target=Target("namespace", "inbox/"), scopes=["records:write"]
            )
            drop = await node.tokens.create("drop", scopes=["records:write"], holder_did=did)
            before = (await http.get("/health")).json()
            posted = await http.post(
                "/v1/records",
                content=dagcbor_encode({"data": there.data, "sig": there.sig}),
                headers={
                    "Authorization": f"Bearer {drop.token}",
                    "Content-Type": "application/cbor",
                },
            )
            assert posted.status_code == 201
            assert (await http.get("/health")).json() == before
            admin = {"Authorization": f"Bearer {node.admin_token}"}
            full = (await http.get("/health", headers=admin)).json()
            assert (full["records"], full["head_seq"]) == (2, 2)
            assert "health" in full
