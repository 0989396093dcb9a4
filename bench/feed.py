"""Feed benchmark: pull a node's whole feed over loopback, and longpoll wake-up latency.

Run: ``.venv/bin/python bench/feed.py [--records N] [--rounds R]``.

Prints medians over the rounds, measured in one run:

* a node (SQLiteStore) serving N signed records (default 100k); PeerClient pulls
  the whole feed in CBOR pages of 1000, (a) decoded only and (b) decoded and
  every record verified: records/s and MB/s, and the ratio to scanning the same
  store directly (``Store.changes`` pages of 1000) in the same run;
* longpoll wake-up latency: a client caught up and longpolling; the node appends
  a record; time until the client has it. p50/p95 over 200 appends.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

from fedpeer.identity import SigningKey
from fedpeer.peer import NodeConfig, PeerClient, open_node
from fedpeer.store import SQLiteStore
from fedpeer.sync import build_record, page_from_wire


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def fill(path: Path, n: int) -> None:
    store = await SQLiteStore.open(path)
    key = SigningKey.generate()
    batch = []
    for i in range(n):
        rec = build_record(
            key,
            namespace=f"app/ns{i % 7}",
            thread=f"thread-{i % 101}",
            kind="note",
            body={"i": i, "text": "x" * 120},
            clock=i,
        )
        batch.append(rec.to_new())
        if len(batch) == 1000:
            await store.put(batch)
            batch = []
    if batch:
        await store.put(batch)
    await store.aclose()


async def scan_direct(path: Path) -> tuple[int, float]:
    store = await SQLiteStore.open(path)
    t0 = time.perf_counter()
    since, seen = 0, 0
    while True:
        page = await store.changes(since, 1000)
        seen += len(page.records)
        since = page.last_seq
        if since >= page.head_seq:
            break
    dt = time.perf_counter() - t0
    await store.aclose()
    return seen, dt


async def pull(url: str, token: str, verify: bool) -> tuple[int, int, float]:
    async with PeerClient(url, token=token) as peer:
        t0 = time.perf_counter()
        cursor: str | None = None
        seen, nbytes = 0, 0
        while True:
            if verify:
                page = await peer.changes(cursor, limit=1000)
                seen += len(page.records)
                nbytes += sum(len(r.data) + len(r.sig) for r in page.records)
                cursor, more = page.next_cursor, page.has_more
            else:
                raw = await peer.changes_raw(cursor, limit=1000)
                wire = page_from_wire(raw)
                seen += len(wire.records)
                nbytes += sum(len(r["data"]) + len(r["sig"]) for r in wire.records)  # type: ignore[index, arg-type]
                cursor, more = wire.next_cursor, wire.has_more
            if not more:
                break
        return seen, nbytes, time.perf_counter() - t0


async def longpoll_latency(appends: int) -> list[float]:
    cfg = NodeConfig(auth_enabled=False, rate_per_s=1e6, rate_burst=10**6)
    out: list[float] = []
    async with open_node(None, config=cfg) as node, PeerClient(node.url) as peer:
        head = await peer.changes()
        cursor = head.next_cursor
        for i in range(appends):
            got = trio.Event()
            stamp: list[float] = []

            async def poll(
                cur: str = cursor, stamp: list[float] = stamp, got: trio.Event = got
            ) -> None:
                page = await peer.changes(cur, feed="longpoll", timeout=30)
                stamp.append(time.perf_counter())
                stamp.append(float(len(page.records)))
                nonlocal cursor
                cursor = page.next_cursor
                got.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(poll)
                # Let the longpoll reach the server and park before appending.
                await trio.sleep(0.005)
                t0 = time.perf_counter()
                await node.append(namespace="n", thread="t", kind="k", body=i)
                with trio.fail_after(30):
                    await got.wait()
            out.append((stamp[0] - t0) * 1000)
    return out


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--appends", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "node"
        data.mkdir()
        t0 = time.perf_counter()
        await fill(data / "store.sqlite3", args.records)
        print(f"filled {args.records:,} signed records in {time.perf_counter() - t0:.1f} s")
        direct, raw_rates, verified_rates, mbs = [], [], [], []
        cfg = NodeConfig(rate_per_s=1e6, rate_burst=10**6)
        for _ in range(args.rounds):
            n, dt = await scan_direct(data / "store.sqlite3")
            assert n == args.records
            direct.append(n / dt)
            async with open_node(data, config=cfg) as node:
                assert node.admin_token_path is not None
                token = node.admin_token_path.read_text().strip()
                n, nbytes, dt = await pull(node.url, token, verify=False)
                assert n == args.records
                raw_rates.append(n / dt)
                mbs.append(nbytes / dt / 1e6)
                n, _, dt = await pull(node.url, token, verify=True)
                assert n == args.records
                verified_rates.append(n / dt)
        d, r, v, m = (statistics.median(x) for x in (direct, raw_rates, verified_rates, mbs))
        print(f"direct store scan            median {d:>10,.0f} records/s")
        print(f"PeerClient pull (decode)     median {r:>10,.0f} records/s  {m:.1f} MB/s")
        print(f"PeerClient pull (verified)   median {v:>10,.0f} records/s")
        print(f"ratio pull/direct scan: {r / d:.2f} (decode only), {v / d:.2f} (verified)")
    lat = await longpoll_latency(args.appends)
    print(
        f"longpoll wake-up latency over {len(lat)} appends: "
        f"p50 {pct(lat, 0.5):.1f} ms, p95 {pct(lat, 0.95):.1f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(trio.run(main))
