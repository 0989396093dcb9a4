"""A pull never holds more than a bounded page (issue 10; protocol.md §8.7).

Hostile fake peers (tests/hostile/fakepeer.py, raw HTTP on loopback) against a
real puller node (SQLite, hypercorn): an endless chunked body, a 1 GiB body and
10^6 tiny records in 15 MB kept the puller growing to gigabytes before; a peer
dripping one byte every 20 s kept a pair ``running`` forever; a redirect was
reported as "not valid DAG-JSON". Now every page answer is streamed under a byte
cap (PAGE_TOO_LARGE), a record-count cap read from the page header
(PAGE_TOO_LARGE), one deadline per request (PEER_TOO_SLOW) and no redirects
(REDIRECT_REFUSED).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import unicodedata
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio

from fedpeer.consent.grants import Target
from fedpeer.identity.canonical import cid_for_dagcbor
from fedpeer.identity.keys import SigningKey
from fedpeer.peer import NodeConfig, PeerClient, open_node
from fedpeer.peer.node import Node
from fedpeer.store import NewRecord
from fedpeer.sync._puller import _records_that_fit
from fedpeer.sync.backoff import Backoff
from fedpeer.sync.feed import Cursor
from fedpeer.sync.options import SyncOptions
from fedpeer.sync.pairs import Pair
from fedpeer.sync.records import build_record
from tests.hostile.fakepeer import HostilePeer

CHILD = Path(__file__).with_name("puller_child.py")
MIB = 1024 * 1024
HEALTH_SAMPLES = 300  # p99 over 300 samples ignores the 3 worst, not none
FAST_RETRY = SyncOptions(backoff=Backoff(base_s=0.1, cap_s=0.2), seed=1)


async def _read_json_line(stream: trio.abc.ReceiveStream, buf: bytearray) -> dict[str, object]:
    for _ in range(100_000):
        if b"\n" in buf:
            line, _, rest = bytes(buf).partition(b"\n")
            buf[:] = rest
            value = json.loads(line)
            assert isinstance(value, dict)
            return value
        data = await stream.receive_some(65536)
        if not data:
            raise AssertionError(f"the puller process ended early; output so far {bytes(buf)!r}")
        buf += data
    raise AssertionError("no line from the puller process")


async def _run_puller_child(
    tmp_path: Path, peers: list[HostilePeer], max_bytes: int
) -> tuple[dict[str, object], list[float]]:
    """Run a puller node in a child process against ``peers`` (started here) until each
    pair failed twice; return its report and the /health latencies measured meanwhile."""
    latencies: list[float] = []
    report: dict[str, object] = {}
    async with trio.open_nursery() as nursery:
        for peer in peers:
            await peer.start(nursery)
        arg = {
            "dir": str(tmp_path / "puller"),
            "peers": [[p.url, p.did] for p in peers],
            "max_bytes": max_bytes,
            "deadline": 60.0,
        }
        proc = await trio.lowlevel.open_process(
            [sys.executable, str(CHILD), json.dumps(arg)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert proc.stdout is not None
        assert proc.stdin is not None
        buf = bytearray()
        try:
            with trio.fail_after(120):
                url = str((await _read_json_line(proc.stdout, buf))["url"])

                measured = trio.Event()

                async def measure_health() -> None:
                    async with httpx.AsyncClient(timeout=10) as client:
                        for _ in range(100_000):
                            t0 = time.perf_counter()
                            r = await client.get(url + "/health")
                            latencies.append(time.perf_counter() - t0)
                            assert r.status_code == 200
                            if len(latencies) >= HEALTH_SAMPLES:
                                measured.set()

                # Measure while the attack goes on: until the puller reported (every
                # pair failed twice) and enough samples for a real p99 (the pairs
                # keep retrying meanwhile).
                async with trio.open_nursery() as inner:
                    inner.start_soon(measure_health)
                    report = await _read_json_line(proc.stdout, buf)
                    await measured.wait()
                    inner.cancel_scope.cancel()
        finally:
            await proc.stdin.aclose()
            with trio.move_on_after(15):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        nursery.cancel_scope.cancel()
    return report, latencies


def _check_bounded(
    report: dict[str, object], latencies: list[float], peers: list[HostilePeer]
) -> None:
    """The pair shows PAGE_TOO_LARGE, retries re-downloaded nothing without bound,
    the puller's peak RSS stayed under 150 MB and /health answered in under 100 ms
    at p99 meanwhile (the issue's stated bounds)."""
    errors = report["errors"]
    assert isinstance(errors, dict)
    for peer in peers:
        err = errors[peer.url]
        assert err is not None, peer.behaviour
        assert err["code"] == "PAGE_TOO_LARGE", (peer.behaviour, err)
    # Retries happened and none re-downloaded without bound: every hostile answer
    # was cut off near the cap (socket buffers aside), not at 1 GiB or forever.
    for peer in peers:
        assert len(peer.sent) >= 2, peer.behaviour
        assert max(peer.sent) < 64 * MIB, (peer.behaviour, peer.sent)
    peak_mb = int(str(report["vm_hwm_kb"])) / 1024
    print(f"puller peak RSS {peak_mb:.0f} MB; /health samples {len(latencies)}")
    assert peak_mb < 150, f"puller peak RSS {peak_mb:.0f} MB"
    assert len(latencies) >= HEALTH_SAMPLES, f"only {len(latencies)} /health samples"
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    print(f"/health p99 {p99 * 1000:.1f} ms")
    assert p99 < 0.100, f"/health p99 {p99 * 1000:.0f} ms over {len(latencies)} requests"


async def test_three_hostile_peers_keep_the_puller_small_and_health_fast(tmp_path: Path) -> None:
    """The realistic memory test: the puller is a separate process with the default
    caps, so its peak RSS (VmHWM) is its own; the three peers attack at once."""
    peers = [HostilePeer("endless"), HostilePeer("huge"), HostilePeer("many")]
    report, latencies = await _run_puller_child(tmp_path, peers, NodeConfig().pull_max_page_bytes)
    _check_bounded(report, latencies, peers)


async def test_record_count_cap_refuses_a_page_before_decoding_it(tmp_path: Path) -> None:
    """The byte cap raised to 32 MiB so the 15 MB page of 10^6 items is received in
    full: only the record-count cap (read from the page header) stands between it
    and a 2 GB decode."""
    peers = [HostilePeer("many")]
    report, latencies = await _run_puller_child(tmp_path, peers, 32 * MIB)
    _check_bounded(report, latencies, peers)
    errors = report["errors"]
    assert isinstance(errors, dict)
    assert "records" in str(errors[peers[0].url]["message"])  # the count cap, not bytes


async def _pair_error(
    node_pairs: object, pair_id: str, limit_s: float
) -> tuple[dict[str, object], float]:
    from fedpeer.peer.services import PairService

    assert isinstance(node_pairs, PairService)
    t0 = trio.current_time()
    with trio.fail_after(limit_s):
        pair = await node_pairs.wait_for(pair_id, lambda p: p.last_error is not None)
    assert pair.last_error is not None
    return pair.last_error.to_dict(), trio.current_time() - t0


async def test_dripping_peer_fails_with_peer_too_slow_within_the_deadline(tmp_path: Path) -> None:
    """One byte every 20 s: httpx's per-read timeout (30 s) never fires; the page
    deadline (1.5 s here) does."""
    peer = HostilePeer("drip")
    cfg = NodeConfig(pull_page_deadline_s=1.5)
    async with trio.open_nursery() as nursery:
        await peer.start(nursery)
        async with open_node(tmp_path / "n", config=cfg, sync=FAST_RETRY) as node:
            pair, _ = await node.pairs.create(peer.url, peer_did=peer.did)
            # Within 10 s, while the peer's next byte is 20 s away: only the page
            # deadline can end the request, and its message names it (no timing assert).
            err, _took = await _pair_error(node.pairs, pair.id, 10)
            assert err["code"] == "PEER_TOO_SLOW", err
            assert "within 1.5 s" in str(err["message"]), err
            assert node.pairs.get(pair.id).state.value in ("failing", "running")
        nursery.cancel_scope.cancel()


async def test_redirecting_peer_is_refused_not_misread(tmp_path: Path) -> None:
    peer = HostilePeer("redirect")
    async with trio.open_nursery() as nursery:
        await peer.start(nursery)
        async with open_node(tmp_path / "n", sync=FAST_RETRY) as node:
            pair, _ = await node.pairs.create(peer.url, peer_did=peer.did)
            err, _took = await _pair_error(node.pairs, pair.id, 10)
            assert err["code"] == "REDIRECT_REFUSED", err
            assert "DAG-JSON" not in str(err["message"])
        nursery.cancel_scope.cancel()


async def test_small_byte_cap_applies_to_each_page_answer(tmp_path: Path) -> None:
    """The cap is configurable: 1 MiB here; the endless peer is cut off near it."""
    peer = HostilePeer("endless")
    cfg = NodeConfig(pull_max_page_bytes=1 * MIB)
    async with trio.open_nursery() as nursery:
        await peer.start(nursery)
        async with open_node(tmp_path / "n", config=cfg, sync=FAST_RETRY) as node:
            pair, _ = await node.pairs.create(peer.url, peer_did=peer.did)
            err, _took = await _pair_error(node.pairs, pair.id, 10)
            assert err["code"] == "PAGE_TOO_LARGE", err
        nursery.cancel_scope.cancel()
    assert peer.sent
    assert max(peer.sent) < 1 * MIB + 16 * MIB, peer.sent


@contextlib.asynccontextmanager
async def _big_records_pair(
    tmp_path: Path, *, page_max_bytes: int
) -> AsyncIterator[tuple[Node, Node, Pair]]:
    """A source with 12 records of ~300 KiB and a page budget of ``page_max_bytes``,
    and a puller with a 2 MiB page cap, paired."""
    async with (
        open_node(tmp_path / "src", config=NodeConfig(page_max_bytes=page_max_bytes)) as src,
        open_node(
            tmp_path / "dst", config=NodeConfig(pull_max_page_bytes=2 * MIB), sync=FAST_RETRY
        ) as dst,
    ):
        for i in range(12):
            await src.append(namespace="big", thread="t", kind="blob", body="x" * 300_000 + str(i))
        pair, _ = await dst.pairs.create(src.url, token=src.admin_token, peer_did=src.did)
        yield src, dst, pair


async def test_honest_big_records_still_sync_under_the_page_budget(tmp_path: Path) -> None:
    """A node cuts its pages at its byte budget, so an honest peer with large records
    never trips a puller's cap: 12 records of ~300 KiB with a 1 MiB budget and a
    2 MiB cap arrive in several pages."""
    async with _big_records_pair(tmp_path, page_max_bytes=1 * MIB) as (_src, dst, pair):
        with trio.fail_after(20):
            await dst.pairs.wait_for(pair.id, lambda p: p.state.value == "caught_up")
        assert await dst.store.count() == 12
        assert dst.pairs.get(pair.id).last_error is None


async def test_a_source_whose_pages_ignore_the_byte_budget_still_syncs(tmp_path: Path) -> None:
    """A source without a page byte budget (another implementation; here a node
    whose budget is far above the puller's cap) answers the first page with all
    12 records of ~300 KiB, over the puller's 2 MiB cap. Before, the puller asked
    the same page again after every PAGE_TOO_LARGE, for good. Now it halves the
    records it asks for at each one (protocol.md §8.2) until pages fit."""
    async with _big_records_pair(tmp_path, page_max_bytes=64 * MIB) as (src, dst, pair):
        codes: list[str | None] = []
        dst.pairs.add_listener(lambda ev: codes.append(ev.code) if ev.kind == "retry" else None)

        with trio.fail_after(30):
            await dst.pairs.wait_for(pair.id, lambda p: p.state.value == "caught_up")
        assert await dst.store.count() == 12
        assert codes
        assert set(codes) == {"PAGE_TOO_LARGE"}
        assert len(codes) <= 8  # 500 asked first, halved to 3 (7 refusals); then sized
        # small records again: pages grow back to whole pages (no cap left behind)
        sizes: list[int] = []
        dst.pairs.add_listener(lambda ev: sizes.append(ev.records) if ev.kind == "page" else None)
        await dst.pairs.pause(pair.id)
        for i in range(400):
            await src.append(namespace="small", thread="t", kind="note", body=i)
        await dst.pairs.resume(pair.id)
        with trio.fail_after(30):
            await dst.pairs.wait_for(pair.id, lambda p: p.stats.records >= 412)
        assert len(codes) <= 8  # no new refusal
        assert max(sizes) > 100, sizes  # not 3 or 5 records a page any more


def test_the_page_cap_is_sized_from_verified_records_only() -> None:
    """The records-per-page cap after a page over the byte cap comes from
    records that passed every check (a raw page's ``"data": 5`` once crashed the
    fetch task, review): 3/4 of the cap at their average wire size, at least one."""
    key = SigningKey.generate()
    small = [build_record(key, namespace="n", thread="t", kind="k", body=i) for i in range(10)]
    big = build_record(key, namespace="n", thread="t", kind="k", body="x" * 300_000)
    per_small = sum(len(r.cid.raw) + len(r.data) + len(r.sig) + 16 for r in small) // 10
    assert _records_that_fit(small, 2 * MIB) == 2 * MIB * 3 // 4 // per_small
    assert _records_that_fit([big], 2 * MIB) == 5  # 300 KB records under 1.5 MiB
    assert _records_that_fit([big], 100_000) == 1  # never below one


async def test_record_listings_and_batch_fetch_hold_the_page_budget(tmp_path: Path) -> None:
    """Found by a read-only audit: ``GET /v1/records`` (both orders) and the batch
    fetch built their answers from up to ``limit`` (10,000) or 1,000 records,
    whatever their size, so a reader could make the node hold gigabytes for
    one answer (12 records of 300 KB came back in one 3.6 MB answer under a
    1 MiB budget). Now every read answer ends with the record that reaches
    ``page_max_bytes``, the store stops loading rows there, and the rest come on
    the next page (a batch answer lists them under ``later``; PeerClient asks
    again)."""
    cfg = NodeConfig(page_max_bytes=1 * MIB, rate_per_s=1e6, rate_burst=10**6)
    async with open_node(tmp_path / "n", config=cfg) as node:
        written = [
            await node.append(namespace="big", thread="t", kind="blob", body="x" * 300_000 + str(i))
            for i in range(12)
        ]
        ids = [str(r.cid) for r in written]
        headers = {"Authorization": f"Bearer {node.admin_token}"}
        async with httpx.AsyncClient(timeout=30, headers=headers) as client:
            for order, expected in (("oldest", ids), ("newest", ids[::-1])):
                seen: list[str] = []
                params = {"limit": "1000", "order": order}
                for _ in range(12):
                    r = await client.get(node.url + "/v1/records", params=params)
                    assert r.status_code == 200, r.text
                    page = r.json()
                    # 1 MiB of record bytes: the fourth 300 KB record reaches it
                    assert len(page["records"]) <= 4, (order, len(r.content))
                    seen += [rec["cid"]["/"] for rec in page["records"]]
                    if not page["has_more"]:
                        break
                    params["since"] = page["next_cursor"]
                assert seen == expected, order
            r = await client.post(node.url + "/v1/sync/records", json={"ids": ids})
            assert r.status_code == 200, r.text
            answer = r.json()
            got = [rec["cid"]["/"] for rec in answer["records"]]
            # at most the 4 whose record bytes reach 1 MiB; fewer in JSON, whose
            # view of a record weighs more (its data in base64 and its body again)
            assert 1 <= len(got) <= 4, len(r.content)
            assert got == ids[: len(got)]
            assert answer["later"] == ids[len(got) :]
            assert answer["missing"] == []
        absent = str(cid_for_dagcbor(b"\xa0"))  # a record id this node does not hold
        async with PeerClient(node.url, token=node.admin_token) as peer:
            records, missing = await peer.fetch_records([*ids, absent])
            assert [str(r.cid) for r in records] == ids
            assert missing == [absent]
            # ids in another text form (upper-case base32) come back canonical under later
            records, missing = await peer.fetch_records([i.upper() for i in ids])
            assert [str(r.cid) for r in records] == ids
            assert missing == []


def test_a_batch_answers_later_must_name_ids_that_were_asked_for() -> None:
    """A hostile answer cannot make the client ask for other ids (or loop): a
    ``later`` naming an id not asked for, or not an id at all, is MALFORMED."""
    from fedpeer.errors import Malformed
    from fedpeer.peer.client import _later_ids

    asked = [str(cid_for_dagcbor(bytes([0xA1, 0x61, 0x61, i]))) for i in range(3)]
    assert [str(c) for c in _later_ids([asked[2].upper(), asked[1]], asked)] == asked[2:0:-1]
    assert _later_ids(None, asked) == []
    other = str(cid_for_dagcbor(b"\xa0"))
    for bad in ([other], "not-a-list", [42], ["zzz"]):
        with pytest.raises(Malformed):
            _later_ids(bad, asked)


def _filler(node: Node, i: int, namespace: str, thread: str) -> NewRecord:
    """A stored row no reader decodes (listings that skip it or group it only)."""
    return NewRecord(
        cid=b"\x01\x71\x12\x20" + i.to_bytes(32, "big"),
        data=b"\xa0",
        sig=b"\x00" * 64,
        author=node.did,
        namespace=namespace,
        thread=thread,
        kind="k",
        ts=1,
    )


async def _guest_token(node: Node, target: Target) -> str:
    """The bearer of a guest that redeemed a reader invite for ``target``."""
    invite = await node.invites.create(scopes=["reader"], target=target)
    async with PeerClient(node.url) as p:
        cred = await p.redeem(invite.url, holder_key=SigningKey.generate(), holder_type="guest")
    return cred.token


async def _newest_first(node: Node, token: str, per_page: list[int], pages: int) -> list[str]:
    """Page ``GET /v1/records?order=newest&limit=1`` to the end (at most ``pages``),
    appending a 0 to ``per_page`` before each request (the store counter adds to
    it); the ids found."""
    found: list[str] = []
    params = {"order": "newest", "limit": "1"}
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(timeout=30, headers=headers) as client:
        for _ in range(pages):
            per_page.append(0)
            r = await client.get(node.url + "/v1/records", params=params)
            assert r.status_code == 200, r.text
            page = r.json()
            found += [rec["cid"]["/"] for rec in page["records"]]
            if not page["has_more"]:
                break
            params["since"] = page["next_cursor"]
    return found


async def test_a_newest_first_listing_reads_a_bounded_number_of_rows_per_page(
    tmp_path: Path,
) -> None:
    """Found by a second read-only audit: ``GET /v1/records?order=newest`` by a
    caller who may see little read backwards through windows until it found
    ``limit`` records it may see: one request read the whole log (206,128 rows
    for ``limit=1`` in the audit's probe). Then a page answered what it found once
    about 10,000 rows were read, with ``has_more``. Now the scan itself is
    filtered by the grants, so the hidden rows are not read at all."""

    cfg = NodeConfig(rate_per_s=1e6, rate_burst=10**6)
    async with open_node(tmp_path / "n", config=cfg) as node:
        mine = await node.append(namespace="public/x", thread="t", kind="k", body=1)
        await node.store.put([_filler(node, i, "secret/", "t") for i in range(30_000)])
        token = await _guest_token(node, Target("namespace", "public/"))
        rows: list[int] = []
        changes = node.store.changes

        async def counting_changes(*args: object, **kwargs: object) -> object:
            page = await changes(*args, **kwargs)  # type: ignore[arg-type]
            rows[-1] += len(page.records)
            return page

        node.store.changes = counting_changes  # type: ignore[method-assign]
        found = await _newest_first(node, token, rows, pages=10)
        assert found == [str(mine.cid)]
        # the caller's grants are in the scan (protocol.md §8.6): the hidden
        # records are never read at all, only the one it may see
        assert sum(rows) <= 2, rows


async def test_a_newest_first_listing_steps_over_a_bounded_span_per_page(
    tmp_path: Path,
) -> None:
    """Review of the consent push-down: once hidden rows were no longer read, a
    newest-first page of a reader who sees almost nothing ran every window, one
    store scan per grant (21 grants: 2.1 s a page on 1M rows). Now the seqs the
    store scans step over count too: at most ``_NEWEST_SPAN`` (and the window
    in progress) per page, however many grants."""
    from fedpeer.peer.services._records import _MAX_LIST, _NEWEST_SPAN

    cfg = NodeConfig(rate_per_s=1e6, rate_burst=10**6)
    async with open_node(tmp_path / "n", config=cfg) as node:
        mine = await node.append(namespace="public/x", thread="t", kind="k", body=1)
        await node.store.put([_filler(node, i, "secret/", "t") for i in range(30_000)])
        did = SigningKey.generate().did
        for target in [Target("namespace", "public/")] + [
            Target("namespace", f"empty{i}/") for i in range(20)
        ]:
            await node.grants.create(did, target=target, scopes=["reader"])
        token = (await node.tokens.create("wide", scopes=["reader"], holder_did=did)).token
        spans: list[int] = []
        changes = node.store.changes

        async def counting_changes(since: int, *args: object, **kwargs: object) -> object:
            page = await changes(since, *args, **kwargs)  # type: ignore[arg-type]
            spans[-1] += page.last_seq - since
            return page

        node.store.changes = counting_changes  # type: ignore[method-assign]
        found = await _newest_first(node, token, spans, pages=20)
        assert found == [str(mine.cid)]
        assert len(spans) >= 2, spans  # 30,001 seqs x 21 scans: more than one page
        assert max(spans) <= _NEWEST_SPAN + 21 * _MAX_LIST, spans


async def test_the_threads_listing_comes_in_pages(tmp_path: Path) -> None:
    """Found by the second read-only audit: ``GET /v1/threads`` grouped the whole
    log into one answer (100k threads made a 26.7 MB answer), and a caller
    granted one thread paid for all of them on every call. Now it answers a page
    of at most ``page_limit_max`` (namespace, thread) pairs with ``next_cursor``;
    the store stops grouping there; ``AdminClient`` follows the pages."""
    from fedpeer.peer import AdminClient

    cfg = NodeConfig(rate_per_s=1e6, rate_burst=10**6, page_limit_max=1000)
    async with open_node(tmp_path / "n", config=cfg) as node:
        await node.store.put([_filler(node, i, f"ns{i % 3}", f"t{i:05}") for i in range(2500)])
        mine = ("ns1", "t02497")
        token = await _guest_token(node, Target("thread", mine[1]))
        grouped: list[int] = []
        threads = node.store.threads

        async def counting_threads(*args: object, **kwargs: object) -> object:
            out = await threads(*args, **kwargs)  # type: ignore[arg-type]
            grouped.append(len(out))
            return out

        node.store.threads = counting_threads  # type: ignore[method-assign]
        assert node.admin_token is not None
        async with AdminClient(node.url, node.admin_token) as admin:
            listed = await admin.records.threads()
        assert len(listed) == 2500
        assert len({(t.namespace, t.thread) for t in listed}) == 2500
        assert grouped == [1000, 1000, 500]
        grouped.clear()
        found: list[tuple[str, str]] = []
        params: dict[str, str] = {}
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(timeout=30, headers=headers) as client:
            for _ in range(5):
                r = await client.get(node.url + "/v1/threads", params=params)
                assert r.status_code == 200, r.text
                page = r.json()
                found += [(t["namespace"], t["thread"]) for t in page["threads"]]
                if not page["has_more"]:
                    break
                params["since"] = page["next_cursor"]
            bad = await client.get(node.url + "/v1/threads", params={"since": "not-a-cursor"})
            assert bad.status_code == 400, bad.text
        assert found == [mine]
        assert max(grouped) <= 1000


@pytest.mark.parametrize("code", ["PEER_ERROR", "X\x1b[31mRED\nFORGED"])
async def test_a_peers_error_text_is_cut_and_escaped_before_it_is_kept_or_logged(
    tmp_path: Path, code: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by a read-only audit: a source answering every page with a 4 MB
    error message wrote 80 MB to the log in 6 s, kept the whole message in the
    pair's last_error (rewritten to SQLite on every retry), and newlines and
    escape sequences in it forged log lines and drove the terminal of
    ``fedpeer pairs``. Now a peer's message is cut to 2000 characters with every
    control or format character escaped, and a code that is not a fedpeer code
    is PEER_INVALID."""
    evil = "ok\n2030-01-01 ERROR fedpeer.auth: FORGED \x1b]0;PWNED\x07\x1b[2J\u202e" + "x" * MIB
    peer = HostilePeer(
        "error", error_body=json.dumps({"error": {"code": code, "message": evil}}).encode()
    )
    async with trio.open_nursery() as nursery:
        await peer.start(nursery)
        async with open_node(tmp_path / "n", sync=FAST_RETRY) as node:
            pair, _ = await node.pairs.create(peer.url, peer_did=peer.did)
            with trio.fail_after(20):
                failed = await node.pairs.wait_for(
                    pair.id, lambda p: p.last_error is not None and p.retries >= 2
                )
        nursery.cancel_scope.cancel()
    err = failed.last_error
    assert err is not None
    assert err.code == ("PEER_ERROR" if code == "PEER_ERROR" else "PEER_INVALID")
    assert len(err.message) < 2200  # 2000 characters kept (and a prefix), of the 1 MiB sent
    assert not any(unicodedata.category(c)[0] == "C" for c in err.message + err.code)
    assert "\\x1b]0;PWNED" in err.message  # shown, escaped
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "\x1b" not in logged
    assert "\nFORGED" not in logged
    assert "\n2030-01-01" not in logged
    assert len(logged) < 100_000


@pytest.mark.parametrize(("status", "stops"), [(500, False), (403, True)])
async def test_a_peer_cannot_hand_us_our_own_verdict_on_it(
    tmp_path: Path, status: int, stops: bool
) -> None:
    """DID_MISMATCH and TLS_PIN_MISMATCH are what this side concludes about a
    peer; a peer answering them about itself made the pair stop with "the node
    did not prove it is ..., the credential was not sent" (the credential was
    sent) whatever its status (audit). Now such a code is only an error with that
    code and status: a 500 is retried, a 403 stops the pair as a refused
    credential."""
    body = json.dumps({"error": {"code": "TLS_PIN_MISMATCH", "message": "says who"}}).encode()
    peer = HostilePeer("error", error_body=body, error_status=status)
    async with trio.open_nursery() as nursery:
        await peer.start(nursery)
        async with open_node(tmp_path / "n", sync=FAST_RETRY) as node:
            pair, _ = await node.pairs.create(peer.url, peer_did=peer.did, token="t")
            with trio.fail_after(20):
                done = await node.pairs.wait_for(
                    pair.id,
                    lambda p: p.state.value == "stopped" or p.retries >= 2,
                )
        nursery.cancel_scope.cancel()
    err = done.last_error
    assert err is not None
    assert err.code == "TLS_PIN_MISMATCH"
    assert (done.state.value == "stopped") is stops
    assert "did not prove" not in err.message
    assert "credential was not sent" not in err.message


async def test_a_source_that_keeps_resetting_our_cursor_is_backed_off(tmp_path: Path) -> None:
    """Found by a read-only audit: a source serving an empty page, then
    CURSOR_RESET for the cursor it gave, made the node loop without pause (1,032
    requests and as many ``sync.cursor_reset`` audit rows in 5 s; such a source
    can be reached by redeeming an invite with a reciprocal URL). Now the second
    reset within ten minutes backs off like a failure, and longer each time."""
    peer = HostilePeer("reset")
    async with trio.open_nursery() as nursery:
        await peer.start(nursery)
        async with open_node(tmp_path / "n", sync=FAST_RETRY) as node:
            pair, _ = await node.pairs.create(peer.url, peer_did=peer.did)

            def backing_off(p: Pair) -> bool:
                err = p.last_error
                return p.state.value == "failing" and err is not None and err.code == "CURSOR_RESET"

            with trio.fail_after(20):
                await node.pairs.wait_for(pair.id, backing_off)
            audit = await node.store.audit_log(limit=1000)
            resets = [e for e in audit if e.event.get("type") == "sync.cursor_reset"]
            assert len(resets) == 1, resets
            assert peer.requests.get("/v1/sync/changes", 0) <= 6, peer.requests
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("delay_s", [0.0, 0.1])
async def test_a_source_that_never_holds_a_longpoll_is_polled_not_spun_on(
    tmp_path: Path, delay_s: float
) -> None:
    """Found by a read-only audit: a source answering every longpoll at once with
    an empty page (valid protocol) made the puller ask again at once, and commit
    a store transaction each time: 1,169 requests and 1,166 transactions in 5 s,
    a CPU core. Now a longpoll answered empty before half its time is followed
    by the next no sooner than 1 s after it was sent, whatever the round trip
    (``delay_s``: a review found a fixed "answered within 50 ms" rule let a
    source 60 ms away make 77 requests in 5 s)."""
    peer = HostilePeer("instant", delay_s=delay_s)
    async with trio.open_nursery() as nursery:
        await peer.start(nursery)
        async with open_node(tmp_path / "n", sync=FAST_RETRY) as node:
            await node.pairs.create(peer.url, peer_did=peer.did)
            started = trio.current_time()
            with trio.fail_after(20):
                # a catch-up page, a longpoll, then longpolls a second apart
                while peer.requests.get("/v1/sync/changes", 0) < 5:
                    await peer.seen.wait()
            elapsed = trio.current_time() - started
        nursery.cancel_scope.cancel()
    assert elapsed >= 2.5, elapsed  # at once (a few ms, or 5 round trips) before


async def test_a_source_that_holds_longpolls_briefly_is_not_paced(tmp_path: Path) -> None:
    """Review of the pacing: a real source whose longpoll_max_s is short (0.2 s
    here) answers empty longpolls after a short hold; it is asked once a second,
    never less often (the first pacing doubled towards 30 s: a record appended
    after 12 s of quiet took 5.1 s to arrive, and longer the longer the quiet)."""
    source_cfg = NodeConfig(rate_per_s=1e6, rate_burst=10**6, longpoll_max_s=0.2)
    async with (
        open_node(tmp_path / "a", config=source_cfg) as a,
        open_node(tmp_path / "b", sync=FAST_RETRY) as b,
    ):
        created = await a.invites.create()
        result = await b.pair_from_invite(created.url, bidirectional=False)
        await a.append(namespace="n", thread="t", kind="k", body=0)
        with trio.fail_after(20):
            await b.pairs.wait_for(result.pair.id, lambda p: p.stats.records >= 1)
        # the quiet under test (not a synchronisation): about twenty short holds
        # answered empty; a doubling pace would be at 4 s by now
        await trio.sleep(4.0)
        await a.append(namespace="n", thread="t", kind="k", body=1)
        with trio.fail_after(2.0):  # within a second and a hold, not a growing pace
            await b.pairs.wait_for(result.pair.id, lambda p: p.stats.records >= 2)


async def test_a_page_of_many_tiny_values_decodes_off_the_event_loop(tmp_path: Path) -> None:
    """Review: a page whose one record is a million empty lists passes the byte
    cap and the record count, misses the fast page decoder and took the general
    decoder seconds on the event loop, on every retry (6.1 s stalls for a 4 MB
    page). Such a page now decodes off the loop; the node keeps answering."""
    peer = HostilePeer("pagebomb")
    async with trio.open_nursery() as nursery:
        await peer.start(nursery)
        async with (
            open_node(tmp_path / "n", sync=FAST_RETRY) as node,
            httpx.AsyncClient(base_url=node.url, timeout=30) as http,
        ):
            pair, _ = await node.pairs.create(peer.url, peer_did=peer.did)
            longest, probes, last = 0.0, 0, trio.current_time()
            with trio.fail_after(60):
                while peer.requests.get("/v1/sync/changes", 0) < 3:  # and its retries
                    assert (await http.get("/health")).status_code == 200
                    now = trio.current_time()
                    longest, last, probes = max(longest, now - last), now, probes + 1
                    with trio.move_on_after(0.05):
                        await peer.seen.wait()
            failed = node.pairs.get(pair.id)
        nursery.cancel_scope.cancel()
    assert failed.last_error is not None
    # refused from its heads, before any decoding: far more values than a record holds
    assert failed.last_error.code == "PAGE_INVALID"
    assert "far more values" in failed.last_error.message
    assert longest < 1.0, (longest, probes)


async def test_a_source_stepping_its_cursor_one_by_one_costs_no_commit_each(
    tmp_path: Path,
) -> None:
    """Left open by the last audit: a source answering every page at once, empty,
    with ``has_more`` and a cursor one seq further (valid protocol: an honest
    node does it at the end of each scan window a filtered pull finds empty) had
    the puller commit a store transaction, an fsync, per page: about 600 a
    second. A page that moves only the cursor is now committed at most once a
    second; the requests still follow the source's pace (its round trip). (With
    pages fetched ahead, the default, the pages ready behind the one being
    committed are folded into its commit: the cost showed with one page at a
    time.)"""
    peer = HostilePeer("creep")
    # no pages fetched ahead: they would be folded into one commit anyway
    one_by_one = attrs.evolve(FAST_RETRY, pipeline_depth=1)
    async with trio.open_nursery() as nursery:
        await peer.start(nursery)
        async with open_node(tmp_path / "n", sync=one_by_one) as node:
            commits = 0
            real = node.store.transact

            async def counting(fn: Any) -> Any:
                nonlocal commits
                commits += 1
                return await real(fn)

            node.store.transact = counting  # type: ignore[method-assign]
            pair, _ = await node.pairs.create(peer.url, peer_did=peer.did)
            started = trio.current_time()
            before = commits
            with trio.fail_after(30):
                while peer.requests.get("/v1/sync/changes", 0) < 300:
                    await peer.seen.wait()
            elapsed = trio.current_time() - started
            during = commits - before
            cursor_seq = Cursor.decode(node.pairs.get(pair.id).cursor or "").seq
            row = await node.store.get_state("pairs", pair.id)
            assert row is not None
            stored_seq = Cursor.decode(str(row["cursor"])).seq
        nursery.cancel_scope.cancel()
    assert cursor_seq >= 150  # the cursor followed the pages (some are in flight)
    assert 1 <= stored_seq <= cursor_seq  # and was stored, a second behind at most
    assert during <= elapsed / 1.0 + 3, (during, elapsed)  # one a second, not one a page
