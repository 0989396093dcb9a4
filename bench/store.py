"""Store benchmarks: SQLiteStore put and scan speed, record sign/verify, scan memory.

Run: ``.venv/bin/python bench/store.py`` (a few minutes at most). Prints the
median of several rounds for each measurement, and ratios against the raw
reference measured in the same run, with the target next to them:

* put: 100k records in batches of 1000 through ``SQLiteStore.put`` vs raw
  ``sqlite3.executemany`` of the same rows into the same schema and pragmas
  (target: store >= 0.5 of raw);
* scan: the whole feed through ``changes()`` pages of 1000 (and raw SELECT);
* records: ``build_record`` (encode + sign) and ``verify_record`` per second vs
  raw pynacl verify (skipped when ``fedpeer.sync.records`` is missing);
* memory: peak RSS of a fresh process scanning a 1M-record store page by page
  (target: < 150 MB), measured in a subprocess so earlier phases do not count;
* durability: ``synchronous=FULL`` (the default: the WAL is fsynced on every
  commit) vs ``NORMAL``, interleaved rounds, the FULL/NORMAL throughput ratio of
  (a) HTTP appends to a running node (``POST /v1/records``, one record per
  commit), (b) pulled pages (1000-record commits) and, for information, (c)
  bare single-record transactions on the store. The decision rule for the
  default: FULL stays the default while its cost on the node-level writes
  (a, b) is at most 20 % (ratio >= 0.80). The fsync cost depends on the disk:
  run it where the data dir lives (``--dir``); on tmpfs fsync is free and the
  ratio says nothing.

Options: ``--quick`` (smaller sizes, for a smoke run), ``--rounds N``, ``--dir
PATH`` (where the temporary stores go; default the system temp dir),
``--only durability`` (just that section).
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import trio

from fedpeer.store import NewRecord, SQLiteStore
from fedpeer.store.sqlite import DEFAULT_SYNCHRONOUS

PUT_TARGET = 0.5
DURABILITY_MAX_COST = 0.20  # FULL stays the default while node-level writes keep >= 80 %
RSS_TARGET_MB = 150.0
INSERT_RAW = (
    "INSERT INTO records (cid, data, sig, author, namespace, thread, kind, ts) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
AUTHOR = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"


def synthetic_records(n: int, seed: int) -> list[NewRecord]:
    """Records of realistic size: 36-byte CID, ~300 B data, 64-byte signature."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        out.append(
            NewRecord(
                cid=b"\x01\x71\x12\x20" + rng.randbytes(32),
                data=rng.randbytes(300),
                sig=rng.randbytes(64),
                author=AUTHOR,
                namespace=f"app/ns{i % 7}",
                thread=f"thread-{i % 101}",
                kind="note",
                ts=1_700_000_000_000 + i,
            )
        )
    return out


def as_row(r: NewRecord) -> tuple[object, ...]:
    return (r.cid, r.data, r.sig, r.author, r.namespace, r.thread, r.kind, r.ts)


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}/s"


def report(name: str, values: list[float], unit: Callable[[float], str]) -> float:
    med = statistics.median(values)
    rounds = ", ".join(unit(v) for v in values)
    print(f"  {name:<34} median {unit(med):>14}   (rounds: {rounds})")
    return med


def verdict(ok: bool) -> str:
    return "ok" if ok else "BELOW TARGET"


async def make_schema(path: Path) -> None:
    store = await SQLiteStore.open(path)
    await store.aclose()


def raw_connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={DEFAULT_SYNCHRONOUS}")
    conn.execute("PRAGMA cache_size=-16000")  # what SQLiteStore's writer uses
    return conn


# --- put and scan ------------------------------------------------------------


def bench_put_and_scan(tmp: Path, n: int, batch: int, rounds: int) -> None:
    print(f"put: {n:,} records in batches of {batch} ({rounds} rounds)")
    records = synthetic_records(n, seed=1)
    rows = [as_row(r) for r in records]
    batches = [records[i : i + batch] for i in range(0, n, batch)]
    row_batches = [rows[i : i + batch] for i in range(0, n, batch)]
    store_rates: list[float] = []
    raw_rates: list[float] = []
    scan_rates: list[float] = []
    raw_scan_rates: list[float] = []

    for rnd in range(rounds):
        # raw reference: same schema, same pragmas, one transaction per batch
        raw_path = tmp / f"raw-{rnd}.db"
        trio.run(make_schema, raw_path)
        conn = raw_connect(raw_path)
        t0 = time.perf_counter()
        for chunk in row_batches:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(INSERT_RAW, chunk)
            conn.execute("COMMIT")
        raw_rates.append(n / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        seen = 0
        since = 0
        while True:
            got = conn.execute(
                "SELECT seq, cid, data, sig, author, namespace, thread, kind, ts FROM records "
                "WHERE seq > ? ORDER BY seq LIMIT 1000",
                (since,),
            ).fetchall()
            if not got:
                break
            seen += len(got)
            since = got[-1][0]
        raw_scan_rates.append(seen / (time.perf_counter() - t0))
        conn.close()

        async def through_store(rnd: int = rnd) -> tuple[float, float]:
            store = await SQLiteStore.open(tmp / f"store-{rnd}.db")
            try:
                t0 = time.perf_counter()
                for chunk in batches:
                    await store.put(chunk)
                put_rate = n / (time.perf_counter() - t0)
                assert await store.count() == n
                t0 = time.perf_counter()
                since, seen = 0, 0
                while True:
                    page = await store.changes(since, 1000)
                    seen += len(page.records)
                    since = page.last_seq
                    if since >= page.head_seq:
                        break
                assert seen == n
                return put_rate, n / (time.perf_counter() - t0)
            finally:
                await store.aclose()

        put_rate, scan_rate = trio.run(through_store)
        store_rates.append(put_rate)
        scan_rates.append(scan_rate)

    s = report("SQLiteStore.put", store_rates, fmt_rate)
    r = report("raw sqlite3.executemany", raw_rates, fmt_rate)
    ratio = statistics.median(a / b for a, b in zip(store_rates, raw_rates, strict=True))
    print(
        f"  ratio store/raw (median per round)  {ratio:.2f}   target >= {PUT_TARGET}: "
        f"{verdict(ratio >= PUT_TARGET)}   (medians {s:,.0f} vs {r:,.0f})"
    )
    print(f"scan: whole feed via changes() pages of 1000 ({n:,} records)")
    s = report("SQLiteStore.changes", scan_rates, fmt_rate)
    r = report("raw SELECT pages of 1000", raw_scan_rates, fmt_rate)
    print(f"  ratio store/raw                     {s / r:.2f}   (no target: rows become objects)")


# --- records -------------------------------------------------------------------


def bench_records(n: int, rounds: int) -> None:
    print(f"records: build+sign and verify of {n:,} records ({rounds} rounds)")
    try:
        from fedpeer.identity.keys import SigningKey
        from fedpeer.sync.records import build_record, verify_record
    except ImportError as exc:
        print(f"  skipped: records module missing ({exc})")
        return
    from nacl.signing import SigningKey as NaclKey

    key = SigningKey.from_seed(b"\x07" * 32)
    now_ms = 1_700_000_000_000
    build_rates: list[float] = []
    verify_rates: list[float] = []
    raw_rates: list[float] = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        built = [
            build_record(
                key,
                namespace="app/notes",
                thread="t1",
                kind="note",
                body={"text": "x" * 200, "n": i},
                clock=i,
                ts=now_ms,
                now_ms=now_ms,
            )
            for i in range(n)
        ]
        build_rates.append(n / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        for sr in built:
            verify_record(sr.data, sr.sig, now_ms=now_ms)
        verify_rates.append(n / (time.perf_counter() - t0))
        nk = NaclKey(b"\x07" * 32)
        vk = nk.verify_key
        signed = [(sr.cid.raw, nk.sign(sr.cid.raw).signature) for sr in built]
        t0 = time.perf_counter()
        for msg, sig in signed:
            vk.verify(msg, sig)
        raw_rates.append(n / (time.perf_counter() - t0))
    size = statistics.median(len(sr.data) for sr in built)
    report("build_record (encode+sign)", build_rates, fmt_rate)
    v = report("verify_record", verify_rates, fmt_rate)
    r = report("raw pynacl verify", raw_rates, fmt_rate)
    print(f"  ratio verify_record/raw pynacl      {v / r:.2f}   (record size {size:.0f} B)")


# --- memory ---------------------------------------------------------------------


def build_big_db(path: Path, n: int) -> None:
    """A store file with ``n`` synthetic rows, inserted raw in bulk (fast).

    The store creates the schema; then, without a journal, the secondary
    indexes are dropped, the rows inserted, and the indexes rebuilt from their
    own SQL, which is much faster than inserting into them row by row.
    """
    trio.run(make_schema, path)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.execute("PRAGMA journal_mode=OFF")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-400000")
    indexes = [
        (name, sql)
        for name, sql in conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
        )
    ]
    for name, _ in indexes:
        conn.execute(f'DROP INDEX "{name}"')
    rng = random.Random(2)
    chunk = 100_000
    conn.execute("BEGIN")
    for start in range(0, n, chunk):
        conn.executemany(
            INSERT_RAW,
            (
                (
                    b"\x01\x71\x12\x20" + rng.randbytes(32),
                    rng.randbytes(300),
                    rng.randbytes(64),
                    AUTHOR,
                    f"app/ns{i % 7}",
                    f"thread-{i % 101}",
                    "note",
                    1_700_000_000_000 + i,
                )
                for i in range(start, min(n, start + chunk))
            ),
        )
    for _, sql in indexes:
        conn.execute(sql)
    conn.execute("COMMIT")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.close()


def peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def rss_child(path: str) -> None:
    """Subprocess body: scan the whole store page by page, print peak RSS and rate."""
    start_mb = peak_rss_mb()

    async def scan() -> tuple[int, float]:
        store = await SQLiteStore.open(path)
        try:
            t0 = time.perf_counter()
            since, seen = 0, 0
            while True:
                page = await store.changes(since, 1000)
                seen += len(page.records)
                since = page.last_seq
                if since >= page.head_seq:
                    break
            return seen, seen / (time.perf_counter() - t0)
        finally:
            await store.aclose()

    seen, rate = trio.run(scan)
    print(f"{seen} {rate:.0f} {start_mb:.1f} {peak_rss_mb():.1f}")


def bench_memory(tmp: Path, n: int) -> None:
    print(f"memory: peak RSS of a fresh process scanning {n:,} records in pages of 1000")
    path = tmp / "big.db"
    t0 = time.perf_counter()
    build_big_db(path, n)
    size_mb = path.stat().st_size / 1e6
    print(f"  built the file in {time.perf_counter() - t0:.1f} s ({size_mb:,.0f} MB)")
    out = subprocess.run(
        [sys.executable, __file__, "--rss-child", str(path)],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    ).stdout.split()
    seen, rate, start_mb, peak_mb = int(out[0]), float(out[1]), float(out[2]), float(out[3])
    assert seen == n, (seen, n)
    print(f"  scan rate                          {fmt_rate(rate):>14}")
    print(
        f"  peak RSS {peak_mb:.1f} MB (at start, after imports: {start_mb:.1f} MB)   "
        f"target < {RSS_TARGET_MB:.0f} MB: {verdict(peak_mb < RSS_TARGET_MB)}"
    )


# --- durability ------------------------------------------------------------------


def fs_type(path: Path) -> str:
    """The file system type of the mount holding ``path`` (from /proc/mounts)."""
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return "unknown"
    best, kind = "", "unknown"
    target = str(path.resolve())
    for line in lines:
        parts = line.split()
        if len(parts) < 3 or len(parts[1]) <= len(best):
            continue
        if target == parts[1] or target.startswith(parts[1].rstrip("/") + "/"):
            best, kind = parts[1], parts[2]
    return kind


async def _store_writes(path: Path, mode: str, singles: int, batched: int) -> tuple[float, float]:
    """(single-record transactions/s, records/s in 1000-record commits) on one store."""
    recs = synthetic_records(singles + batched, seed=len(mode) + singles)
    store = await SQLiteStore.open(path, synchronous=mode)  # type: ignore[arg-type]
    try:
        t0 = time.perf_counter()
        for i, r in enumerate(recs[:singles]):

            def commit(tx: object, r: NewRecord = r, i: int = i) -> None:
                tx.put_records([r])  # type: ignore[attr-defined]
                tx.put("meta", "clock", {"value": i})  # type: ignore[attr-defined]

            await store.transact(commit)  # what Node.append commits: a record + its clock
        single = singles / (time.perf_counter() - t0)
        rest = recs[singles:]
        t0 = time.perf_counter()
        for i in range(0, len(rest), 1000):
            await store.put(rest[i : i + 1000])
        return single, batched / (time.perf_counter() - t0)
    finally:
        await store.aclose()


async def _http_appends(path: Path, mode: str, n: int) -> float:
    """Appends/s through ``POST /v1/records`` of a node on a store in ``mode``."""
    import attrs
    import httpx

    from fedpeer.peer import open_node
    from sync import FAST_A  # bench/sync.py's node without per-client limits

    store = await SQLiteStore.open(path, synchronous=mode)  # type: ignore[arg-type]
    cfg = attrs.evolve(FAST_A, auth_enabled=False)
    try:
        async with (
            open_node(None, store=store, config=cfg) as node,
            httpx.AsyncClient(base_url=node.url, timeout=30) as client,
        ):
            body = {"namespace": "app", "thread": "t", "kind": "note", "body": {"x": "y" * 200}}
            for _ in range(10):  # warm up the connection and the code paths
                (await client.post("/v1/records", json=body)).raise_for_status()
            t0 = time.perf_counter()
            for _ in range(n):
                (await client.post("/v1/records", json=body)).raise_for_status()
            return n / (time.perf_counter() - t0)
    finally:
        await store.aclose()


def bench_durability(tmp: Path, rounds: int, quick: bool) -> None:
    appends, singles, batched = (100, 300, 10_000) if quick else (400, 1000, 50_000)
    print(
        f"durability: synchronous=FULL vs NORMAL on {fs_type(tmp)} ({tmp}), {rounds} "
        f"interleaved rounds; default {DEFAULT_SYNCHRONOUS}"
    )
    rates: dict[str, dict[str, list[float]]] = {
        m: {"http": [], "single": [], "batch": []} for m in ("NORMAL", "FULL")
    }
    for rnd in range(rounds):
        order = ("NORMAL", "FULL") if rnd % 2 == 0 else ("FULL", "NORMAL")
        for mode in order:
            http = trio.run(_http_appends, tmp / f"http-{mode}-{rnd}.db", mode, appends)
            single, batch = trio.run(
                _store_writes, tmp / f"w-{mode}-{rnd}.db", mode, singles, batched
            )
            rates[mode]["http"].append(http)
            rates[mode]["single"].append(single)
            rates[mode]["batch"].append(batch)
    print(
        f"  ({appends} HTTP appends, one record per commit; {batched:,} records in "
        f"1000-record commits; {singles} bare single-record store transactions)"
    )
    labels = {"http": "HTTP append", "batch": "pulled pages", "single": "bare store txs"}
    ratios: dict[str, float] = {}
    for what, label in labels.items():
        full = report(f"{label} FULL", rates["FULL"][what], fmt_rate)
        normal = report(f"{label} NORMAL", rates["NORMAL"][what], fmt_rate)
        ratios[what] = full / normal
        print(f"  ratio FULL/NORMAL {what:<6}            {ratios[what]:.2f}")
    worst = min(ratios["http"], ratios["batch"])
    ok = worst >= 1 - DURABILITY_MAX_COST
    print(
        f"  node-level cost of FULL: {1 - worst:.0%} (HTTP append {ratios['http']:.2f}, "
        f"pulled pages {ratios['batch']:.2f}; bare store txs {ratios['single']:.2f}, for "
        f"information)   limit {DURABILITY_MAX_COST:.0%}: "
        + ("ok, FULL stays the default" if ok else "OVER: reconsider the FULL default")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where temporary stores go")
    parser.add_argument("--only", choices=["durability"], default=None)
    parser.add_argument("--rss-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(args.rss_child)
        return
    rounds = max(args.rounds, 1 if args.quick else 3)
    print(
        f"fedpeer store benchmark (SQLite {sqlite3.sqlite_version}, Python "
        f"{sys.version.split()[0]}, {os.cpu_count()} CPUs)"
    )
    with tempfile.TemporaryDirectory(prefix="fedpeer-bench-", dir=args.dir) as d:
        tmp = Path(d)
        if args.only != "durability":
            bench_put_and_scan(tmp, 10_000 if args.quick else 100_000, 1000, rounds)
            bench_records(500 if args.quick else 3000, rounds)
            bench_memory(tmp, 50_000 if args.quick else 1_000_000)
        bench_durability(tmp, max(rounds, 5) if not args.quick else rounds, args.quick)


if __name__ == "__main__":
    main()
