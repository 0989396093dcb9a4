"""Pull sync end to end: real nodes (SQLite stores, hypercorn on 127.0.0.1, httpx).

Also a tiny fake source (Starlette on hypercorn) serving crafted pages: a
tampered record, a non-canonical record or page, a record from the future, a
page with a cursor from another store. No test sleeps to synchronise: waits are
on the pair manager's change notifications and the store's ``wait_for_seq``,
each bounded by ``trio.fail_after``.
"""

from __future__ import annotations

import functools
import time
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cbor2
import httpx
import pytest
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fedpeer.consent import tokens
from fedpeer.errors import DidMismatch, PairSelf, PeerUnreachable
from fedpeer.identity.canonical import CID, cid_for_dagcbor, dagcbor_encode
from fedpeer.identity.envelope import sign_document
from fedpeer.identity.keys import SigningKey
from fedpeer.peer import Node, NodeConfig, open_node
from fedpeer.peer.manifest import federation_body
from fedpeer.store.base import StateTx, Store
from fedpeer.sync.backoff import Backoff
from fedpeer.sync.feed import Cursor
from fedpeer.sync.options import SyncEvent, SyncOptions
from fedpeer.sync.pairs import Pair, PairFilter, PairState
from fedpeer.sync.records import SignedRecord, build_record, record_to_wire

KEY_A = SigningKey.from_seed(b"\xa1" * 32)
NOAUTH = NodeConfig(auth_enabled=False)
FAST_BACKOFF = Backoff(base_s=0.02, cap_s=0.3)


@functools.cache
def records_a(n: int) -> list[SignedRecord]:
    """n records by KEY_A (cached across tests), spread over namespaces and threads."""
    now = int(time.time() * 1000) - 60_000
    return [
        build_record(
            KEY_A,
            namespace=("app/x", "app/y", "other")[i % 3],
            thread=f"t{i % 4}",
            kind="note",
            body={"i": i, "text": "hello"},
            ts=now + i % 1000,
        )
        for i in range(n)
    ]


async def put_all(node: Node, recs: Sequence[SignedRecord]) -> None:
    news = [r.to_new() for r in recs]
    for i in range(0, len(news), 2000):
        chunk = news[i : i + 2000]

        def commit(tx: StateTx, chunk: list = chunk) -> None:  # type: ignore[type-arg]
            tx.put_records(chunk)

        await node.store.transact(commit)


def mkdir(path: Path) -> Path:
    """open_node with an explicit key does not create the data dir itself."""
    path.mkdir(parents=True, exist_ok=True)
    return path


def token_of(node: Node) -> str:
    assert node.admin_token_path is not None
    return node.admin_token_path.read_text().strip()


def port_of(node: Node) -> int:
    port = urllib.parse.urlsplit(node.url).port
    assert port is not None
    return port


async def all_records(store: Store) -> list[tuple[int, bytes, bytes, str]]:
    out: list[tuple[int, bytes, bytes, str]] = []
    since = 0
    for _ in range(10_000):
        page = await store.changes(since, 5000)
        out.extend((r.seq, r.cid, r.sig, r.author) for r in page.records)
        if page.last_seq >= page.head_seq:
            return out
        since = page.last_seq
    raise AssertionError("unbounded feed")


async def wait_pair(node: Node, pair_id: str, pred: Callable[[Pair], bool], t: float = 30) -> Pair:
    with trio.fail_after(t):
        return await node.pairs.wait_for(pair_id, pred)


def caught_up_with(n: int) -> Callable[[Pair], bool]:
    return lambda p: p.state is PairState.CAUGHT_UP and p.stats.records >= n


async def assert_same_records(a: Store, b: Store) -> None:
    ra, rb = await all_records(a), await all_records(b)
    assert len(rb) == len(ra)
    assert {r[1] for r in rb} == {r[1] for r in ra}
    assert [r[0] for r in rb] == list(range(1, len(rb) + 1))  # no gaps, no duplicate rows


# --- convergence ------------------------------------------------------------------------


async def test_a_to_b_10k_records_converge(tmp_path: Path) -> None:
    recs = records_a(10_000)
    async with open_node(mkdir(tmp_path / "a"), key=KEY_A) as a, open_node(tmp_path / "b") as b:
        await put_all(a, recs)
        pair = await b.pair_with(a.url, token=token_of(a), peer_did=a.did)
        assert pair.peer_did == a.did
        assert pair.state is PairState.RUNNING
        done = await wait_pair(b, pair.id, caught_up_with(10_000), 120)
        await assert_same_records(a.store, b.store)
        assert done.stats.records == 10_000
        assert Cursor.decode(done.cursor or "").seq == 10_000
        row = await b.store.get_state("pairs", pair.id)
        assert row is not None
        assert row["cursor"] == done.cursor


async def test_a_source_with_a_small_page_limit_max_is_asked_for_small_pages(
    tmp_path: Path,
) -> None:
    """B asks 5000 records per page by default; a source that serves at most 40
    (its advertised ``limits.page_limit_max``) answers INVALID_REQUEST to more, so
    B must ask ``min(5000, 40)`` and still converge, page by page."""
    recs = records_a(130)
    small = NodeConfig(page_limit_max=40)
    assert SyncOptions().page_limit > small.page_limit_max
    async with (
        open_node(mkdir(tmp_path / "a"), key=KEY_A, config=small) as a,
        open_node(tmp_path / "b") as b,
    ):
        await put_all(a, recs)
        async with httpx.AsyncClient() as http:  # the source really refuses more
            r = await http.get(
                a.url + "/v1/sync/changes",
                params={"limit": 41},
                headers={"Authorization": f"Bearer {token_of(a)}"},
            )
            assert r.status_code == 400
            assert r.json()["error"]["code"] == "INVALID_REQUEST"
            # asked without a limit, it serves its default (1000) cut to its maximum
            r = await http.get(
                a.url + "/v1/sync/changes", headers={"Authorization": f"Bearer {token_of(a)}"}
            )
            assert r.status_code == 200
            assert len(r.json()["records"]) == 40
            assert r.json()["has_more"] is True
        pair = await b.pair_with(a.url, token=token_of(a), peer_did=a.did)
        done = await wait_pair(b, pair.id, caught_up_with(130), 60)
        assert done.last_error is None
        await assert_same_records(a.store, b.store)


async def test_two_way_sync(tmp_path: Path) -> None:
    async with open_node(tmp_path / "a") as a, open_node(tmp_path / "b") as b:
        for i in range(30):
            await a.append(namespace="ns", thread="t", kind="k", body={"a": i})
            await b.append(namespace="ns", thread="t", kind="k", body={"b": i})
        pab = await b.pair_with(a.url, token=token_of(a))
        pba = await a.pair_with(b.url, token=token_of(b))
        await wait_pair(b, pab.id, caught_up_with(30))
        await wait_pair(a, pba.id, caught_up_with(30))
        with trio.fail_after(30):
            await a.store.wait_for_seq(59)
            await b.store.wait_for_seq(59)
        ra, rb = await all_records(a.store), await all_records(b.store)
        assert len(ra) == len(rb) == 60
        assert {r[1] for r in ra} == {r[1] for r in rb}
        assert {r[3] for r in ra} == {a.did, b.did}
        # a new record on either side reaches the other
        rec = await a.append(namespace="ns", thread="t", kind="k", body="late")
        with trio.fail_after(10):
            await b.store.wait_for_seq(60)
        assert await b.store.get(rec.cid.raw) is not None


async def test_chain_a_b_c_keeps_authors_and_signatures(tmp_path: Path) -> None:
    recs = records_a(600)
    async with (
        open_node(mkdir(tmp_path / "a"), key=KEY_A) as a,
        open_node(tmp_path / "b") as b,
        open_node(tmp_path / "c") as c,
    ):
        await put_all(a, recs)
        pab = await b.pair_with(a.url, token=token_of(a))
        pbc = await c.pair_with(b.url, token=token_of(b))
        await wait_pair(b, pab.id, caught_up_with(600))
        await wait_pair(c, pbc.id, caught_up_with(600))
        got = {r[1]: r for r in await all_records(c.store)}
        assert len(got) == 600
        for rec in recs:
            _seq, _cid, sig, author = got[rec.cid.raw]
            assert author == a.did  # not B's
            assert sig == rec.sig  # A's signature, carried as is
        assert c.pairs.get(pbc.id).peer_did == b.did


async def test_filters_by_namespace_and_thread(tmp_path: Path) -> None:
    recs = records_a(300)
    async with (
        open_node(mkdir(tmp_path / "a"), key=KEY_A) as a,
        open_node(tmp_path / "b") as b,
    ):
        await put_all(a, recs)
        by_ns = await b.pair_with(a.url, token=token_of(a), filter=PairFilter(namespace="app/"))
        by_thread = await b.pair_with(a.url, token=token_of(a), filter=PairFilter(thread="t1"))
        assert by_ns.id != by_thread.id
        want_ns = {r.cid.raw for r in recs if r.record.namespace.startswith("app/")}
        want_th = {r.cid.raw for r in recs if r.record.thread == "t1"}
        await wait_pair(b, by_ns.id, caught_up_with(len(want_ns)))
        await wait_pair(b, by_thread.id, caught_up_with(len(want_th)))
        assert b.pairs.get(by_ns.id).stats.records == len(want_ns)
        assert b.pairs.get(by_thread.id).stats.records == len(want_th)
        got = {r[1] for r in await all_records(b.store)}
        assert got == want_ns | want_th
        assert not any(
            r.record.namespace == "other" and r.record.thread != "t1" and r.cid.raw in got
            for r in recs
        )


# --- a caught-up pair, restarts ---------------------------------------------------------


async def test_caught_up_pair_gets_a_new_record_within_one_longpoll(tmp_path: Path) -> None:
    async with open_node(tmp_path / "a") as a, open_node(tmp_path / "b") as b:
        for i in range(5):
            await a.append(namespace="ns", thread="t", kind="k", body=i)
        pair = await b.pair_with(a.url, token=token_of(a))
        before = await wait_pair(b, pair.id, caught_up_with(5))
        assert b.pairs.options.longpoll_s == 30
        head = await b.store.head_seq()
        rec = await a.append(namespace="ns", thread="t", kind="k", body="new")
        with trio.fail_after(5):  # far less than the 30 s longpoll: the open longpoll answered
            await b.store.wait_for_seq(head)
        after = await wait_pair(b, pair.id, caught_up_with(6), 5)
        assert await b.store.get(rec.cid.raw) is not None
        assert after.stats.pages == before.stats.pages + 1


async def test_restart_resumes_from_the_stored_cursor(tmp_path: Path) -> None:
    recs = records_a(500)
    async with open_node(mkdir(tmp_path / "a"), key=KEY_A) as a:
        await put_all(a, recs[:300])
        async with open_node(tmp_path / "b") as b:
            pair = await b.pair_with(a.url, token=token_of(a))
            await wait_pair(b, pair.id, caught_up_with(300))
        await put_all(a, recs[300:])
        async with open_node(tmp_path / "b") as b:
            assert [p.id for p in b.pairs.list()] == [pair.id]
            done = await wait_pair(b, pair.id, caught_up_with(500))
            assert done.stats.records == 500  # the first 300 were not pulled again
            await assert_same_records(a.store, b.store)


# --- credentials -------------------------------------------------------------------------


async def test_a_refused_credential_stops_the_pair_until_fixed(tmp_path: Path) -> None:
    async with open_node(tmp_path / "a") as a, open_node(tmp_path / "b") as b:
        await a.append(namespace="ns", thread="t", kind="k", body=1)
        bad = "fp_" + "0" * 20 + "_" + "0" * 64
        pair = await b.pair_with(a.url, token=bad)
        stopped = await wait_pair(b, pair.id, lambda p: p.state is PairState.STOPPED)
        err = stopped.last_error
        assert err is not None
        assert err.code == "TOKEN_INVALID"
        assert "credential" in err.message
        assert pair.id in err.message
        assert await b.store.count() == 0
        await b.pairs.set_credential(pair.id, token_of(a))
        await b.pairs.resume(pair.id)
        await wait_pair(b, pair.id, caught_up_with(1))


async def test_pair_with_refuses_itself_and_a_wrong_did(tmp_path: Path) -> None:
    async with open_node(tmp_path / "a") as a, open_node(tmp_path / "b") as b:
        with pytest.raises(PairSelf):
            await a.pair_with(a.url, token=None)
        with pytest.raises(PairSelf):
            await a.pair_with(f"http://localhost:{port_of(a)}", token=None)
        with pytest.raises(PairSelf):
            await a.pair_with(b.url, token=None, peer_did=a.did)
        with pytest.raises(DidMismatch):
            await a.pair_with(b.url, token=None, peer_did=KEY_A.did)
        assert a.pairs.list() == []


async def test_pair_with_a_node_that_proxies_to_us_is_refused(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """A URL we cannot tell is ours (another port) still shows our DID in the manifest."""
    async with open_node(tmp_path / "a") as a:

        async def well_known(request: Request) -> Response:
            async with httpx.AsyncClient() as client:
                r = await client.get(a.url + "/.well-known/fedpeer")
            return Response(r.content, media_type=r.headers["content-type"])

        app = Starlette(routes=[Route("/.well-known/fedpeer", well_known)])
        url, shutdown = await serve_app(nursery, app)
        try:
            with pytest.raises(PairSelf):
                await a.pair_with(url, token=None)
        finally:
            shutdown.set()


# --- source down, source wiped ----------------------------------------------------------


async def test_source_down_backoff_grows_and_expiry_resumes(tmp_path: Path) -> None:
    events: list[SyncEvent] = []
    opts = SyncOptions(backoff=FAST_BACKOFF, seed=11)
    async with open_node(tmp_path / "b", sync=opts) as b:
        b.pairs.add_listener(events.append)
        async with open_node(tmp_path / "a", config=NOAUTH) as a:
            port = port_of(a)
            for i in range(10):
                await a.append(namespace="ns", thread="t", kind="k", body=i)
            pair = await b.pair_with(a.url, token=None)
            await wait_pair(b, pair.id, caught_up_with(10))
        # A is gone: retries back off, and the backoff grows (seen in the pair's stats)
        p = await wait_pair(b, pair.id, lambda p: p.retries >= 6)
        retries = [e for e in events if e.kind == "retry" and e.pair.id == pair.id]
        assert all(e.code == "PEER_UNREACHABLE" for e in retries)
        backoffs = [e.pair.stats.backoff_s for e in retries]
        assert [e.pair.retries for e in retries[:6]] == [1, 2, 3, 4, 5, 6]
        for attempt, value in enumerate(backoffs[:6]):
            assert value is not None
            low, high = FAST_BACKOFF.bounds(attempt)
            assert low - 0.001 <= value <= high + 0.001
        assert backoffs[4] is not None
        assert backoffs[0] is not None
        assert backoffs[4] > 3 * backoffs[0]
        assert p.state is PairState.FAILING
        assert p.last_error is not None
        stats: dict[str, Any] = b.pairs.stats(pair.id)
        assert stats["errors_last_hour"] >= 6
        assert stats["backoff_s"] is not None
        health: dict[str, Any] = b.pairs.health()
        assert health["status"] == "degraded"
        assert health["by_state"]["failing"] == 1
        assert [f["id"] for f in health["most_failing"]] == [pair.id]
        # A comes back on the same port: the next retry (backoff expiry, <= 0.3 s) resumes
        async with open_node(tmp_path / "a", port=port, config=NOAUTH) as a2:
            await a2.append(namespace="ns", thread="t", kind="k", body="back")
            done = await wait_pair(b, pair.id, caught_up_with(11))
            assert done.retries == 0
            assert done.last_error is None
            await assert_same_records(a2.store, b.store)


async def test_source_down_then_kick_resumes_at_once(tmp_path: Path) -> None:
    opts = SyncOptions(backoff=Backoff(base_s=600, cap_s=600))
    async with open_node(tmp_path / "b", sync=opts) as b:
        async with open_node(tmp_path / "a", config=NOAUTH) as a:
            port = port_of(a)
            await a.append(namespace="ns", thread="t", kind="k", body=0)
            pair = await b.pair_with(a.url, token=None)
            await wait_pair(b, pair.id, caught_up_with(1))
        failing = await wait_pair(b, pair.id, lambda p: p.state is PairState.FAILING)
        assert failing.stats.backoff_s is not None
        assert failing.stats.backoff_s >= 300
        async with open_node(tmp_path / "a", port=port, config=NOAUTH) as a2:
            await a2.append(namespace="ns", thread="t", kind="k", body=1)
            kicked = await b.pairs.kick(pair.id)
            assert kicked.retries == 0
            await wait_pair(b, pair.id, caught_up_with(2), 10)  # not after the 5-minute backoff


async def test_source_wiped_new_epoch_full_resync_without_duplicates(tmp_path: Path) -> None:
    key = SigningKey.generate()
    events: list[SyncEvent] = []
    async with open_node(tmp_path / "b", sync=SyncOptions(backoff=FAST_BACKOFF)) as b:
        b.pairs.add_listener(events.append)
        async with open_node(mkdir(tmp_path / "a1"), key=key, config=NOAUTH) as a1:
            port = port_of(a1)
            old = [await a1.append(namespace="ns", thread="t", kind="k", body=i) for i in range(40)]
            pair = await b.pair_with(a1.url, token=None, peer_did=key.did)
            first = await wait_pair(b, pair.id, caught_up_with(40))
            old_epoch = Cursor.decode(first.cursor or "").epoch
        # same identity, a fresh store (a new epoch): some old records again, and new ones
        async with open_node(mkdir(tmp_path / "a2"), key=key, port=port, config=NOAUTH) as a2:
            await a2.store.put([r.to_new() for r in old[:25]])
            new = [
                await a2.append(namespace="ns", thread="t", kind="k", body=f"n{i}")
                for i in range(15)
            ]
            # 40 before the wipe + 40 pulled again from the new epoch (25 of them duplicates)
            done = await wait_pair(b, pair.id, caught_up_with(40 + 40))
            assert Cursor.decode(done.cursor or "").epoch == a2.store.epoch != old_epoch
            rows = await all_records(b.store)
            assert len(rows) == 55
            assert len({r[1] for r in rows}) == 55
            assert {r[1] for r in rows} == {r.cid.raw for r in old + new}
            assert [r[0] for r in rows] == list(range(1, 56))
            assert any(e.code == "CURSOR_RESET" for e in events if e.kind == "reset")
            audit = await b.store.audit_log(limit=1000)
            assert any(x.event.get("type") == "sync.cursor_reset" for x in audit)


# --- a source that serves crafted pages --------------------------------------------------


async def serve_app(nursery: trio.Nursery, app: object) -> tuple[str, trio.Event]:
    config = HypercornConfig()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.graceful_timeout = 1
    shutdown = trio.Event()
    urls = await nursery.start(
        functools.partial(serve, app, config, shutdown_trigger=shutdown.wait)  # type: ignore[arg-type]
    )
    return urls[0], shutdown


class FakeSource:
    """Serves ``/v1/sync/changes`` over 10 good records, or crafted bad pages.

    ``mode`` replaces record #7 (seq 7) in the page that holds it: ``tamper``
    (content changed, author's signature kept), ``noncanonical`` (validly signed
    but not canonical DAG-CBOR), ``future`` (validly signed, ts an hour ahead);
    ``bad_cursor`` gives that page a next_cursor from another store;
    ``noncanonical_page`` encodes the whole page non-canonically.
    """

    def __init__(self, key: SigningKey) -> None:
        self.key = key
        self.epoch = "5e" * 16
        now = int(time.time() * 1000)
        self.records = [
            build_record(
                key, namespace="ns", thread="t", kind="k", body={"i": i, "text": "hello"}, ts=now
            )
            for i in range(1, 11)
        ]
        self.mode: str | None = None
        self.requests = 0
        self.app = Starlette(
            routes=[
                Route("/v1/sync/changes", self.changes),
                Route("/.well-known/fedpeer", self.well_known),
            ]
        )

    async def well_known(self, request: Request) -> Response:
        """A manifest signed by the source's key: pullers prove the DID first (§6.6)."""
        body = federation_body(
            did=self.key.did, handle="fake", urls=[], namespaces=[], consent={"revision": 0}
        )
        signed = sign_document(body, self.key, ttl_s=3600)
        return JSONResponse({"capabilities_manifest": {}, "federation_manifest": signed})

    def bad_item(self) -> dict[str, object]:
        good = self.records[6]
        if self.mode == "tamper":
            data = good.data.replace(b"hello", b"jello")
            assert data != good.data
            return {"cid": CID(cid_for_dagcbor(data).raw), "data": data, "sig": good.sig}
        if self.mode == "noncanonical":
            m = good.record.to_map()
            data = cbor2.dumps(m)  # insertion order: not the canonical key order
            assert data != dagcbor_encode(m)
            cid = cid_for_dagcbor(data)
            return {"cid": CID(cid.raw), "data": data, "sig": self.key.sign(cid.raw)}
        if self.mode == "future":
            ahead = int(time.time() * 1000) + 3_600_000
            rec = build_record(
                self.key, namespace="ns", thread="t", kind="k", body=7, ts=ahead, now_ms=ahead
            )
            return record_to_wire(rec)
        return record_to_wire(good)

    async def changes(self, request: Request) -> Response:
        self.requests += 1
        q = request.query_params
        limit = int(q.get("limit", "1000"))
        since = Cursor.decode(q["since"]).seq if q.get("since") else 0
        upto = min(len(self.records), since + limit)
        if since >= len(self.records) and q.get("feed") == "longpoll":
            with trio.move_on_after(min(float(q.get("timeout", "30")), 2.0)):
                await trio.sleep_forever()  # nothing new ever arrives here
        if since < 7 <= upto and self.mode == "http500":
            return Response(b"upstream exploded", status_code=500, media_type="text/plain")
        if since < 7 <= upto and self.mode == "http429":
            err = {"error": {"code": "RATE_LIMITED", "message": "slow down"}}
            return JSONResponse(err, status_code=429, headers={"Retry-After": "2"})
        items: list[object] = []
        for seq in range(since + 1, upto + 1):
            items.append(self.bad_item() if seq == 7 else record_to_wire(self.records[seq - 1]))
        epoch = self.epoch
        if self.mode == "bad_cursor" and since < 7 <= upto:
            epoch = "ee" * 16
        page = {
            "records": items,
            "next_cursor": Cursor(epoch, max(since, upto)).encode(),
            "has_more": upto < len(self.records),
        }
        if self.mode == "noncanonical_page" and since < 7 <= upto:
            body = cbor2.dumps(
                {
                    "records": items,
                    "next_cursor": page["next_cursor"],
                    "has_more": page["has_more"],
                },
                default=_cid_default,
            )
        else:
            body = dagcbor_encode(page)
        return Response(body, media_type="application/cbor")


def _cid_default(encoder: cbor2.CBOREncoder, value: object) -> None:
    assert isinstance(value, CID)
    encoder.encode(cbor2.CBORTag(42, b"\x00" + value.raw))


BAD_PAGES = {
    "tamper": "BAD_SIGNATURE",
    "noncanonical": "NON_CANONICAL",
    "future": "RECORD_FROM_FUTURE",
    "bad_cursor": "PAGE_INVALID",
    "noncanonical_page": "NON_CANONICAL",
}


@pytest.mark.parametrize("mode", sorted(BAD_PAGES))
async def test_bad_page_stores_nothing_then_recovers(
    mode: str, tmp_path: Path, nursery: trio.Nursery
) -> None:
    fake = FakeSource(SigningKey.generate())
    url, shutdown = await serve_app(nursery, fake.app)
    fake.mode = mode
    opts = SyncOptions(page_limit=5, backoff=Backoff(base_s=600, cap_s=600))
    try:
        async with open_node(tmp_path / "b", sync=opts) as b:
            pair, _ = await b.pairs.manager.create(
                peer_did=fake.key.did, peer_url=url, credential=None
            )
            failing = await wait_pair(b, pair.id, lambda p: p.state is PairState.FAILING)
            assert failing.last_error is not None
            assert failing.last_error.code == BAD_PAGES[mode], failing.last_error
            # the first page (seqs 1..5) is stored; nothing of the bad page (6..10)
            assert Cursor.decode(failing.cursor or "").seq == 5
            assert failing.stats.records == 5
            stored = {r[1] for r in await all_records(b.store)}
            assert stored == {r.cid.raw for r in fake.records[:5]}
            row = await b.store.get_state("pairs", pair.id)
            assert row is not None
            assert row["cursor"] == failing.cursor
            assert row["state"] == "failing"
            # with a 10-minute backoff nothing is retried by itself ...
            n = fake.requests
            await trio.testing.wait_all_tasks_blocked()
            assert fake.requests == n
            # ... the source is fixed, a kick retries now, and everything arrives
            fake.mode = None
            await b.pairs.kick(pair.id)
            done = await wait_pair(b, pair.id, caught_up_with(10))
            assert done.last_error is None
            assert {r[1] for r in await all_records(b.store)} == {r.cid.raw for r in fake.records}
    finally:
        shutdown.set()


async def test_bad_page_recovers_by_backoff_expiry(tmp_path: Path, nursery: trio.Nursery) -> None:
    fake = FakeSource(SigningKey.generate())
    url, shutdown = await serve_app(nursery, fake.app)
    fake.mode = "tamper"
    opts = SyncOptions(page_limit=5, backoff=FAST_BACKOFF)
    try:
        async with open_node(tmp_path / "b", sync=opts) as b:
            pair, _ = await b.pairs.manager.create(
                peer_did=fake.key.did, peer_url=url, credential=None
            )
            await wait_pair(b, pair.id, lambda p: p.retries >= 3)
            assert await b.store.count() == 5
            fake.mode = None
            done = await wait_pair(b, pair.id, caught_up_with(10))
            assert done.retries == 0
            assert await b.store.count() == 10
    finally:
        shutdown.set()


@pytest.mark.parametrize(("mode", "code"), [("http500", "PEER_ERROR"), ("http429", "RATE_LIMITED")])
async def test_server_errors_back_off_then_recover(
    mode: str, code: str, tmp_path: Path, nursery: trio.Nursery
) -> None:
    fake = FakeSource(SigningKey.generate())
    url, shutdown = await serve_app(nursery, fake.app)
    fake.mode = mode
    events: list[SyncEvent] = []
    opts = SyncOptions(page_limit=5, backoff=FAST_BACKOFF)
    try:
        async with open_node(tmp_path / "b", sync=opts) as b:
            b.pairs.add_listener(events.append)
            pair, _ = await b.pairs.manager.create(
                peer_did=fake.key.did, peer_url=url, credential=None
            )
            failing = await wait_pair(b, pair.id, lambda p: p.state is PairState.FAILING)
            assert failing.last_error is not None
            assert failing.last_error.code == code
            assert await b.store.count() == 5
            retry = next(e for e in events if e.kind == "retry")
            assert retry.delay_s is not None
            if mode == "http429":
                assert retry.delay_s >= 2.0  # Retry-After honoured over the 0.02 s backoff
            else:
                assert retry.delay_s <= FAST_BACKOFF.base_s
            fake.mode = None
            await wait_pair(b, pair.id, caught_up_with(10))
    finally:
        shutdown.set()


# --- the HTTP API ---------------------------------------------------------------------


async def test_pair_routes(tmp_path: Path) -> None:
    async with open_node(tmp_path / "a") as a, open_node(tmp_path / "b") as b:
        for i in range(3):
            await a.append(namespace="ns", thread="t", kind="k", body=i)
        admin = {"Authorization": f"Bearer {token_of(b)}"}
        async with httpx.AsyncClient(base_url=b.url, headers=admin, timeout=30) as http:
            body = {"peer_url": a.url, "credential": token_of(a), "filter": {"namespace": "ns"}}
            r = await http.post("/v1/sync/pairs", json=body)
            assert r.status_code == 201, r.text
            created = r.json()
            pid = created["id"]
            assert created["peer_did"] == a.did
            assert "credential" not in created
            assert created["has_credential"] is True
            assert created["filter"] == {"namespace": "ns", "thread": None}
            r = await http.post("/v1/sync/pairs", json=body)
            assert r.status_code == 200
            assert r.json()["id"] == pid
            await wait_pair(b, pid, caught_up_with(3))

            r = await http.get("/v1/sync/pairs")
            assert [p["id"] for p in r.json()["pairs"]] == [pid]
            r = await http.get(f"/v1/sync/pairs/{pid}")
            got = r.json()
            assert got["state"] == "caught_up"
            assert got["retries"] == 0
            assert got["last_error"] is None
            assert got["lag"]["caught_up"] is True
            assert got["lag"]["cursor_seq"] == 3
            assert got["cursor"]
            assert got["created_ms"] <= got["updated_ms"]

            r = await http.get(f"/v1/sync/pairs/{pid}/stats")
            stats = r.json()
            assert stats["records"] == 3
            assert stats["pages"] >= 1
            assert stats["bytes"] > 0
            assert sum(stats["latency_counts"]) == 3
            assert stats["latency_p50_ms"] is not None
            assert stats["current_backoff_s"] is None
            assert stats["errors_last_hour"] == 0

            r = await http.post(f"/v1/sync/pairs/{pid}/pause")
            assert r.status_code == 200
            assert r.json()["state"] == "paused"
            r = await http.post(f"/v1/sync/pairs/{pid}/pause")
            assert r.status_code == 409
            assert r.json()["error"]["code"] == "PAIR_STATE_INVALID"
            r = await http.post(f"/v1/sync/pairs/{pid}/kick")
            assert r.status_code == 409
            r = await http.post(f"/v1/sync/pairs/{pid}/resume")
            assert r.json()["state"] == "running"
            await wait_pair(b, pid, caught_up_with(3))
            r = await http.post(f"/v1/sync/pairs/{pid}/kick")
            assert r.status_code == 200
            assert r.json()["state"] == "running"
            r = await http.post(f"/v1/sync/pairs/{pid}/credential", json={"credential": None})
            assert r.status_code == 200
            assert r.json()["has_credential"] is False

            r = await http.get("/v1/sync/health")
            h = r.json()
            assert h["pairs"] == 1
            assert sum(h["by_state"].values()) == 1
            assert h["records_last_hour"] == 3
            r = await http.get("/health")
            assert r.json()["health"]["pairs"] == 1

            # refusals
            r = await http.post("/v1/sync/pairs", json={"peer_url": b.url})
            assert r.status_code == 400
            assert r.json()["error"]["code"] == "PAIR_SELF"
            r = await http.post("/v1/sync/pairs", json={"peer_url": a.url, "peer_did": KEY_A.did})
            assert r.json()["error"]["code"] == "DID_MISMATCH"
            r = await http.post("/v1/sync/pairs", json={"peer_url": "ftp://x"})
            assert r.json()["error"]["code"] == "INVALID_REQUEST"
            r = await http.post("/v1/sync/pairs", json={"peer_url": a.url, "bogus": 1})
            assert r.json()["error"]["code"] == "INVALID_REQUEST"
            r = await http.post("/v1/sync/pairs", json={"peer_url": "http://127.0.0.1:9"})
            assert r.status_code == 503
            assert r.json()["error"]["code"] == "PEER_UNREACHABLE"
            r = await http.get("/v1/sync/pairs/p_nope")
            assert r.status_code == 404
            assert r.json()["error"]["code"] == "PAIR_NOT_FOUND"

            # a non-admin token may not manage pairs
            def mint(tx: StateTx) -> str:
                _sa, issued = tokens.create_service_account(
                    tx, name="reader", holder_did=a.did, scopes=["reader"]
                )
                return issued.bearer

            reader = await b.store.transact(mint)
            r = await http.get("/v1/sync/pairs", headers={"Authorization": f"Bearer {reader}"})
            assert r.status_code == 403
            assert r.json()["error"]["code"] == "SCOPE_FORBIDDEN"

            r = await http.delete(f"/v1/sync/pairs/{pid}")
            assert r.status_code == 200
            assert r.json() == {"deleted": pid}
            r = await http.get(f"/v1/sync/pairs/{pid}")
            assert r.status_code == 404
            assert await b.store.get_state("pairs", pid) is None
            assert await b.store.count() == 3  # deleting a pair keeps its records


async def test_unreachable_peer_at_create_is_reported(tmp_path: Path) -> None:
    async with open_node(tmp_path / "b") as b:
        with pytest.raises(PeerUnreachable):
            await b.pair_with("http://127.0.0.1:9", token=None)
