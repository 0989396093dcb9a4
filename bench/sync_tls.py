"""Pull sync over HTTPS beside plain HTTP: node B pulls N records from node A over loopback.

The HTTPS/HTTP ratio of issue 11 (target >= 0.85) for pull sync; bench/sync.py
is the throughput benchmark of issue 15 (it runs over plain HTTP), bench/feed.py
prints the HTTPS/HTTP ratio of the feed.

Run: ``.venv/bin/python bench/sync_tls.py`` (defaults: 20k records, 3 runs per
mode, 100 appends). ``--quick`` for a
smoke run (10k records).

Layout: A is a real node (SQLite store, hypercorn) in this process, filled
with N signed records through the store directly. B is a real node in a child
process (its own interpreter, so its memory is its own), pairing with A and
pulling everything; each run uses a fresh B data dir. Printed, as medians over
the runs (and the per-run values):

* end-to-end records/s: from B's ``pair_with`` to B caught up with all N records
  stored (B verifies every record: canonical bytes, CID, signature, limits);
* the raw single-core pynacl verify rate measured here, on 36-byte messages
  (the CID bytes a record signature covers), and the ratio end-to-end / raw
  (target >= 0.8; past 1.0 means B verifies on more than one core);
* peak RSS of B (VmHWM of the child process; target < 200 MB), and apart the
  peak RSS of the signature worker processes B starts while catching up (each
  its own small process: pynacl and cffi only);
* append-on-A to stored-on-B latency while caught up, p50/p95 over the appends
  (target p50 < 50 ms): A appends one record at a time; the time runs from just
  before ``node.append`` on A to B's commit of the page holding it (both ends read
  ``time.monotonic``, one clock for every process on the machine);
* the HTTPS / HTTP ratio (issue 11, target >= 0.85): every run is done twice, A
  serving the same store over plain HTTP and then over HTTPS with its pinned
  certificate (B proves A's DID and pin first, then pulls over keep-alive
  connections), interleaved so that load drifts hit both modes alike. The
  end-to-end and latency figures are the HTTPS ones.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import attrs
import trio

from fedpeer.identity.keys import SigningKey
from fedpeer.peer import NodeConfig, open_node
from fedpeer.sync.options import SyncOptions
from fedpeer.sync.records import build_record

# The machinery (node B as a child process, its JSON lines, the worker RSS watch,
# the latency loop, the raw verify rate, the summary lines) is bench/sync.py's: this
# script is run as ``python bench/sync_tls.py``, so ``bench/`` is on ``sys.path``.
from sync import CHUNK, fill, fmt, latencies, pct, print_verify_ratio, raw_verify_rate, run_sync

RATIO_TARGET = 0.8
RSS_TARGET_MB = 200.0
P50_TARGET_MS = 50.0
TLS_RATIO_TARGET = 0.85
FAST_A = NodeConfig(rate_per_s=1_000_000, rate_burst=1_000_000)


async def parent_main(args: argparse.Namespace) -> None:
    n = args.records
    print(f"pull sync benchmark: {n:,} records, {args.runs} runs, {args.appends} appends")
    print(f"  cpus: {os.cpu_count()}, python {sys.version.split()[0]}")
    raw = [raw_verify_rate() for _ in range(3)]
    key = SigningKey.generate()
    t0 = time.perf_counter()
    now = int(time.time() * 1000)
    recs = [
        build_record(
            key,
            namespace=f"app/ns{i % 7}",
            thread=f"thread-{i % 101}",
            kind="note",
            body={"i": i, "text": "benchmark record body, a sentence of ordinary size."},
            ts=now,
        ).to_new()
        for i in range(n)
    ]
    print(f"  built and signed {n:,} records in {time.perf_counter() - t0:.1f} s")
    print(f"  record size: {len(recs[0].data)} bytes (+ 36-byte CID, 64-byte signature)")
    hwms: list[float] = []
    worker_hwms: list[float] = []
    latencies_ms: list[float] = []
    with tempfile.TemporaryDirectory(prefix="fedpeer-bench-") as tmp:
        a_dir = Path(tmp) / "a"
        a_dir.mkdir()
        # The same store served over plain HTTP and over HTTPS (pinned TLS), runs
        # interleaved (http, https, http, ...) so load drifts on a shared machine hit
        # both alike: the ratio says whether TLS is the bottleneck (issue 11).
        by_mode: dict[str, list[float]] = {"http": [], "https": []}
        filled = False
        for run in range(args.runs):
            for tls in (False, True):
                mode = "https" if tls else "http"
                cfg = attrs.evolve(FAST_A, tls=tls)
                async with open_node(a_dir, key=key, config=cfg) as a:
                    if not filled:
                        await fill(a, iter([recs[i : i + CHUNK] for i in range(0, n, CHUNK)]))
                        filled = True
                    assert a.admin_token_path is not None
                    token = a.admin_token_path.read_text().strip()
                    if tls:
                        raw.append(raw_verify_rate())
                    # A fresh node B (a child process) pulls the n records from A; in the
                    # last https run, then the append-to-stored latency of live records.
                    s, child, hwms_run = await run_sync(
                        Path(tmp), f"b{mode}{run}", [(a.url, token)], n, args.page_limit
                    )
                    try:
                        by_mode[mode].append(s.rate)
                        hwms.append(s.hwm_mb)
                        worker_hwms += hwms_run
                        print(
                            f"  {mode} run {run + 1}: {s.rate:,.0f} records/s "
                            f"({s.seconds:.2f} s), B peak RSS {s.hwm_mb:.0f} MB"
                        )
                        if run == args.runs - 1 and tls:
                            latencies_ms, _ = await latencies(a, child, args.appends, n)
                    finally:
                        await child.stop()
    print()
    print_verify_ratio("end-to-end (https)", by_mode["https"], raw, RATIO_TARGET, "> 1.0")
    tls_ratio = statistics.median(by_mode["https"]) / statistics.median(by_mode["http"])
    print(
        f"  HTTPS / HTTP         ratio {tls_ratio:>9.2f}   (same run; target >= "
        f"{TLS_RATIO_TARGET}) {'OK' if tls_ratio >= TLS_RATIO_TARGET else 'BELOW TARGET'}"
    )
    hwm_med = statistics.median(hwms)
    print(
        f"  B peak RSS           median {hwm_med:>10.0f} MB          ({fmt(hwms, ' MB')}) "
        f"(target < {RSS_TARGET_MB:.0f}) {'OK' if hwm_med < RSS_TARGET_MB else 'OVER'}"
    )
    print(
        f"  B's signature worker processes: peak RSS {max(worker_hwms, default=0):.0f} MB each "
        f"(separate processes, up to verify_threads of them while catching up)"
    )
    if latencies_ms:
        p50, p95 = pct(latencies_ms)
        print(
            f"  append->stored       p50 {p50:>7.1f} ms  p95 {p95:>7.1f} ms  "
            f"over {len(latencies_ms)} appends (target p50 < {P50_TARGET_MS:.0f} ms) "
            f"{'OK' if p50 < P50_TARGET_MS else 'OVER'}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--appends", type=int, default=100)
    parser.add_argument("--page-limit", type=int, default=SyncOptions().page_limit)
    parser.add_argument("--quick", action="store_true", help="10k records, 1 run, 50 appends")
    args = parser.parse_args()
    if args.quick:
        args.records, args.runs, args.appends = 10_000, 1, 50
    trio.run(parent_main, args)


if __name__ == "__main__":
    main()
