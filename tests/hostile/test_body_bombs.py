"""Small bodies that decode into huge values (audit, round 6).

Before: every body was decoded on the event loop, and the two routes open to
anyone (an invite redeem, even of an unknown invite, and an unpair notice) read
up to ``max_body_bytes`` (4 MiB). One CBOR array of 4 million empty arrays takes
~3.5 s and ~300 MB to decode: 8 at once stalled ``/health`` for 33 s and took the
node to 2.4 GB. Now the public routes read at most ``PUBLIC_BODY_MAX`` (16 KiB)
holding at most ``PUBLIC_BODY_ITEMS`` values (counted on a fast parse first),
and a body over 8 KiB (``INLINE_MAX``; 64 KiB at first) is decoded in a worker
thread, one at a time, with the
cyclic collector paused (its full collections over millions of fresh
containers held the GIL for a second or more). Real node (SQLite,
hypercorn), plain httpx clients.
"""

from __future__ import annotations

import contextlib
import json
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest
import trio

from fedpeer.identity.canonical import dagcbor_decode, dagcbor_encode
from fedpeer.identity.keys import SigningKey
from fedpeer.peer import NodeConfig, open_node
from fedpeer.peer._http import PUBLIC_BODY_ITEMS, PUBLIC_BODY_MAX
from fedpeer.peer.node import Node
from fedpeer.sync.records import build_record

CFG = NodeConfig(rate_per_s=1e6, rate_burst=10**6)


async def _probe_health(http: httpx.AsyncClient, done: trio.Event) -> tuple[float, int]:
    """Ask ``/health`` every 50 ms until ``done``: (the longest time between two
    answers, how many). The node runs in this process and event loop, so a
    stall anywhere in it shows up as a gap, whenever it happens."""
    longest, probes = 0.0, 0
    last = trio.current_time()
    while not done.is_set() and probes < 1000:
        assert (await http.get("/health")).status_code == 200
        now = trio.current_time()
        longest, last, probes = max(longest, now - last), now, probes + 1
        with trio.move_on_after(0.05):
            await done.wait()
    return longest, probes


async def _append_empty_lists(node: Node, each: int, count: int = 4) -> None:
    """``count`` records whose bodies are ``each`` empty lists (and a number)."""
    for i in range(count):
        await node.records.append(namespace="n", thread="t", kind="k", body=[[]] * each + [i])


def _cbor_bomb(size: int) -> bytes:
    """One CBOR array of ``size - 5`` empty arrays: ``size`` bytes."""
    n = size - 5
    return b"\x9a" + struct.pack(">I", n) + b"\x80" * n


async def test_public_routes_refuse_a_large_body_before_decoding_it(tmp_path: Path) -> None:
    async with (
        open_node(tmp_path / "n", config=CFG) as node,
        httpx.AsyncClient(base_url=node.url, timeout=30) as http,
    ):
        bomb = _cbor_bomb(PUBLIC_BODY_MAX + 1)
        headers = {"Content-Type": "application/cbor"}
        for path in (f"/v1/invites/{'0' * 32}/redeem", "/v1/sync/unpair"):
            answer = await http.post(path, content=bomb, headers=headers)
            assert answer.status_code == 413, (path, answer.text)
            assert answer.json()["error"]["code"] == "BODY_TOO_LARGE"
        # a body under the limit holding thousands of values: refused from a fast
        # parse, before the full decode
        json_bomb = b"[" + b"{}," * (PUBLIC_BODY_MAX // 3 - 1) + b"{}]"
        for path in (f"/v1/invites/{'0' * 32}/redeem", "/v1/sync/unpair"):
            for body, ctype in ((_cbor_bomb(PUBLIC_BODY_MAX), "cbor"), (json_bomb, "json")):
                answer = await http.post(
                    path, content=body, headers={"Content-Type": f"application/{ctype}"}
                )
                assert answer.status_code == 400, answer.text
                assert answer.json()["error"]["code"] == "MALFORMED"
                assert f"more than {PUBLIC_BODY_ITEMS} values" in answer.json()["error"]["message"]


async def test_large_bodies_decode_off_the_event_loop(tmp_path: Path) -> None:
    """Four 3 MiB bombs at once from an admin (each ~2.5 s of decoding): the node
    keeps answering ``/health`` meanwhile (before: a stall of the whole decode,
    one bomb after the other)."""
    async with (
        open_node(tmp_path / "n", config=CFG) as node,
        httpx.AsyncClient(base_url=node.url, timeout=60) as http,
    ):
        headers = {
            "Content-Type": "application/cbor",
            "Authorization": f"Bearer {node.admin_token}",
        }
        bomb = _cbor_bomb(3 * 1024 * 1024)
        answers: list[httpx.Response] = []
        done = trio.Event()

        async def send() -> None:
            answers.append(await http.post("/v1/records", content=bomb, headers=headers))
            if len(answers) == 4:
                done.set()

        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(send)
            longest, probes = await _probe_health(http, done)
        assert [a.status_code for a in answers] == [400] * 4
        assert {a.json()["error"]["code"] for a in answers} == {"MALFORMED"}
        assert longest < 1.5, (longest, probes)


def test_a_large_body_decodes_off_the_loop_under_asyncio_too(tmp_path: Path) -> None:
    """The off-loop decode's limiter belongs to each event loop (an embedder may
    run asyncio, or nodes in two threads): two asyncio runs one after the other,
    each posting a body over the inline limit, both get their answer."""

    async def main(name: str) -> int:
        async with (
            open_node(tmp_path / name, config=CFG) as node,
            httpx.AsyncClient(base_url=node.url, timeout=30) as http,
        ):
            headers = {
                "Content-Type": "application/cbor",
                "Authorization": f"Bearer {node.admin_token}",
            }
            answer = await http.post("/v1/records", content=_cbor_bomb(256 * 1024), headers=headers)
            return answer.status_code

    assert [anyio.run(main, name, backend="asyncio") for name in ("a", "b")] == [400, 400]


async def test_records_of_many_tiny_values_render_off_the_event_loop(tmp_path: Path) -> None:
    """Found by a read-only audit: a record whose body is a million empty lists
    (a writer's, or a peer's the node pulled) is cheap to store and to send as
    CBOR, but rendering it as JSON took seconds on the event loop, for every
    JSON reader (the CLI among them): one JSON page of 8 stalled ``/health``
    11.5 s. Now JSON pages, single records, batch fetches, listings and the
    event stream render records over 64 KiB off the loop."""
    async with (
        open_node(tmp_path / "n", config=CFG) as node,
        httpx.AsyncClient(base_url=node.url, timeout=60) as http,
    ):
        await _append_empty_lists(node, 200_000)
        headers = {"Authorization": f"Bearer {node.admin_token}", "Accept": "application/json"}
        done = trio.Event()
        answers: list[httpx.Response] = []

        async def read_all() -> None:
            for path in ("/v1/sync/changes", "/v1/records", "/v1/records?order=newest"):
                answers.append(await http.get(path, headers=headers))
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_all)
            longest, probes = await _probe_health(http, done)
        assert [a.status_code for a in answers] == [200] * 3
        assert all(len(a.json()["records"]) == 4 for a in answers)
        assert longest < 1.0, (longest, probes)


async def test_writing_records_of_many_tiny_values_keeps_the_node_answering(
    tmp_path: Path,
) -> None:
    """Found by a read-only audit: a writer's record of a million empty lists
    blocked the event loop while the node built it (POST /v1/records with a
    body) or verified it (with {data, sig}): 2.3 s a record. Both now happen off
    the loop once the body holds over 10,000 values or the record 8 KiB."""
    async with (
        open_node(tmp_path / "n", config=CFG) as node,
        httpx.AsyncClient(base_url=node.url, timeout=60) as http,
    ):
        headers = {"Authorization": f"Bearer {node.admin_token}"}
        body = [[]] * 1_000_000  # just under the 1 MiB record limit
        signed = await trio.to_thread.run_sync(
            lambda: build_record(
                SigningKey.generate(), namespace="n", thread="t", kind="k", body=body
            )
        )
        done = trio.Event()
        answers: list[httpx.Response] = []

        async def write() -> None:
            for i in range(2):
                content = {"namespace": "n", "thread": "t", "kind": "k", "body": [*body, i]}
                answers.append(await http.post("/v1/records", json=content, headers=headers))
            record = dagcbor_encode({"data": signed.data, "sig": signed.sig})
            cbor = headers | {"Content-Type": "application/cbor"}
            answers.append(await http.post("/v1/records", content=record, headers=cbor))
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(write)
            longest, probes = await _probe_health(http, done)
        assert [a.status_code for a in answers] == [201] * 3, [a.text[:200] for a in answers]
        assert longest < 1.0, (longest, probes)


_BUDGET = 256 * 1024


@contextlib.asynccontextmanager
async def _budget_node(tmp_path: Path) -> AsyncIterator[tuple[Node, httpx.AsyncClient]]:
    """A node whose page byte budget is 256 KiB, holding 4 records of 150k
    empty lists (whose JSON fills a page each), and a client for it."""
    config = NodeConfig(rate_per_s=1e6, rate_burst=10**6, page_max_bytes=_BUDGET)
    async with (
        open_node(tmp_path / "n", config=config) as node,
        httpx.AsyncClient(base_url=node.url, timeout=60) as http,
    ):
        await _append_empty_lists(node, 150_000)
        yield node, http


@pytest.mark.parametrize(
    "path", ["/v1/sync/changes", "/v1/records?order=oldest", "/v1/records?order=newest"]
)
async def test_a_json_page_keeps_to_the_page_byte_budget(tmp_path: Path, path: str) -> None:
    """Found by a read-only audit: the page byte budget counted records' wire
    bytes, and the JSON view of a body of empty lists weighs several times that:
    one JSON page of the audit's records was 36 MB against 8 MiB. A JSON page now
    ends after the record whose JSON reaches the budget, its cursor there (the
    feed, and the listing in either order)."""
    async with _budget_node(tmp_path) as (node, http):
        headers = {"Authorization": f"Bearer {node.admin_token}"}
        seen: dict[str, list[list[str]]] = {"json": [], "cbor": []}
        for accept in seen:
            since: str | None = None
            for _ in range(10):
                answer = await http.get(
                    path,
                    params={"since": since} if since else {},
                    headers=headers | {"Accept": f"application/{accept}"},
                )
                assert answer.status_code == 200
                if accept == "json":
                    body = answer.json()
                    assert len(answer.content) <= _BUDGET + _largest(body["records"])
                    ids = [r["cid"]["/"] for r in body["records"]]
                else:
                    body = dagcbor_decode(answer.content)
                    ids = [str(r["cid"]) for r in body["records"]]
                seen[accept].append(ids)
                since = body["next_cursor"]
                if not body["has_more"]:
                    break
        flat = {k: [c for page in v for c in page] for k, v in seen.items()}
        assert flat["json"] == flat["cbor"]
        assert len(flat["json"]) == 4
        assert max(map(len, seen["json"])) == 1  # each record's JSON fills a page
        assert max(map(len, seen["cbor"])) == 2  # the wire bytes fit two


def _largest(records: list[dict[str, object]]) -> int:
    return max(len(json.dumps(r, separators=(",", ":"))) for r in records)


async def test_a_json_batch_fetch_keeps_to_the_page_byte_budget(tmp_path: Path) -> None:
    """The same for a batch fetch: the records its JSON cannot take come back
    under ``later``, first, in the order asked."""
    async with _budget_node(tmp_path) as (node, http):
        ids = [str(e.cid) for e in (await node.records.list(limit=10)).records]
        headers = {"Authorization": f"Bearer {node.admin_token}", "Accept": "application/json"}
        got: list[str] = []
        asked = ids
        for _ in range(10):
            answer = await http.post("/v1/sync/records", json={"ids": asked}, headers=headers)
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert len(answer.content) <= _BUDGET + _largest(body["records"])
            got += [r["cid"]["/"] for r in body["records"]]
            asked = body.get("later", [])
            if not asked:
                break
        assert got == ids


async def test_a_record_of_tiny_values_is_verified_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bytes are a poor measure when a record is many tiny values: 64 KiB of empty
    lists took 107 ms to verify, on the event loop, for each {data, sig} a holder
    posted (a contributor posting them back to back held the node most of the
    time). Records over ``INLINE_MAX`` (8 KiB, ~5 ms at worst) are verified in a
    worker thread now; small ones stay on the loop. The real verify runs; the
    test only notes the thread it ran in."""
    import threading

    from fedpeer.peer._offloop import INLINE_MAX
    from fedpeer.peer.services import _records

    ran_in: list[str] = []
    real = _records.verify_record

    def noting(*args: object, **kw: object) -> object:
        ran_in.append(threading.current_thread().name)
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(_records, "verify_record", noting)
    key = SigningKey.generate()
    loop_thread = threading.current_thread().name
    async with (
        open_node(tmp_path / "n", config=CFG) as node,
        httpx.AsyncClient(base_url=node.url, timeout=30) as http,
    ):
        headers = {
            "Authorization": f"Bearer {node.admin_token}",
            "Content-Type": "application/cbor",
        }
        for values in (100, 16 * 1024):  # ~200 bytes, ~16 KiB of empty lists
            rec = build_record(key, namespace="n", thread="t", kind="k", body=[[]] * values)
            assert (len(rec.data) > INLINE_MAX) == (values > 1000)
            body = dagcbor_encode({"data": rec.data, "sig": rec.sig})
            answer = await http.post("/v1/records", content=body, headers=headers)
            assert answer.status_code == 201, answer.text
    assert ran_in[0] == loop_thread
    assert ran_in[1] != loop_thread
