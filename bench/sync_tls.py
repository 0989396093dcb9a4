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
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import attrs
import nacl.signing
import trio

from fedpeer.identity.keys import SigningKey
from fedpeer.peer import Node, NodeConfig, open_node
from fedpeer.store.base import StateTx
from fedpeer.sync.feed import Cursor
from fedpeer.sync.options import SyncEvent, SyncOptions
from fedpeer.sync.pairs import PairState
from fedpeer.sync.records import build_record

RATIO_TARGET = 0.8
RSS_TARGET_MB = 200.0
P50_TARGET_MS = 50.0
TLS_RATIO_TARGET = 0.85
FAST_A = NodeConfig(rate_per_s=1_000_000, rate_burst=1_000_000)


# --- the child: node B --------------------------------------------------------------------


def _vmhwm_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def _cpu_s() -> float:
    """CPU seconds (user + system, all threads) this process has used."""
    t = os.times()
    return t.user + t.system


def _emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


async def child_main(data_dir: str, url: str, token: str, n: int, page_limit: int) -> None:
    opts = SyncOptions(page_limit=page_limit)
    async with open_node(data_dir, sync=opts) as node:
        live = False

        def on_event(ev: SyncEvent) -> None:
            if live and ev.kind == "page" and ev.records:
                seq = Cursor.decode(ev.pair.cursor or "").seq
                _emit(event="page", seq=seq, t=time.monotonic())

        node.pairs.add_listener(on_event)
        t0 = time.monotonic()
        cpu0 = _cpu_s()
        pair = await node.pair_with(url, token=token)
        await node.pairs.wait_for(
            pair.id, lambda p: p.state is PairState.CAUGHT_UP and p.stats.records >= n
        )
        seconds = time.monotonic() - t0
        cpu = _cpu_s() - cpu0
        count = await node.store.count()
        live = True
        _emit(event="synced", records=count, seconds=seconds, hwm_kb=_vmhwm_kb(), cpu_s=cpu)
        await trio.sleep_forever()


# --- the parent: node A, measurements ----------------------------------------------------


def raw_verify_rate(count: int = 20_000) -> float:
    """Single-core pynacl verifies per second on 36-byte messages."""
    sk = nacl.signing.SigningKey.generate()
    vk = sk.verify_key
    msgs = [b"\x01\x71\x12\x20" + os.urandom(32) for _ in range(256)]
    signed = [(m, sk.sign(m).signature) for m in msgs]
    t0 = time.perf_counter()
    for i in range(count):
        m, s = signed[i & 255]
        vk.verify(m, s)
    return count / (time.perf_counter() - t0)


def _children_hwm_kb(pid: int) -> int:
    """The largest VmHWM of ``pid``'s live child processes (0 if none)."""
    best = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields.get("PPid", "").strip() == str(pid) and "VmHWM" in fields:
            best = max(best, int(fields["VmHWM"].split()[0]))
    return best


async def watch_workers(pid: int, out: list[float]) -> None:
    """Sample the peak RSS of B's worker processes (they exit once B is caught up)."""
    while True:
        out.append(_children_hwm_kb(pid) / 1024)
        await trio.sleep(0.5)  # a measurement interval, not synchronisation


class Child:
    def __init__(self, proc: trio.Process) -> None:
        assert proc.stdout is not None
        self.proc = proc
        self._stream = proc.stdout
        self._buffer = b""
        self._pending: list[dict[str, object]] = []

    async def next_event(self) -> dict[str, object]:
        while not self._pending:
            chunk = await self._stream.receive_some(65536)
            if not chunk:
                raise RuntimeError("node B exited; see its stderr above")
            self._buffer += chunk
            *lines, self._buffer = self._buffer.split(b"\n")
            self._pending.extend(json.loads(line) for line in lines if line.strip())
        return self._pending.pop(0)

    async def stop(self) -> None:
        self.proc.terminate()
        with trio.move_on_after(10):
            await self.proc.wait()
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


def fmt(values: list[float], unit: str, digits: int = 0) -> str:
    return ", ".join(f"{v:,.{digits}f}{unit}" for v in values)


@attrs.define
class Stats:
    """Where one run's figures go."""

    mode_rates: list[float]
    rates: list[float]
    hwms: list[float]
    worker_hwms: list[float]
    latencies: list[float]
    label: str


async def _one_run(
    args: argparse.Namespace, a: Node, token: str, b_dir: Path, n: int, appends: bool, st: Stats
) -> None:
    """A fresh node B (a child process) pulls the n records from ``a``; with
    ``appends``, then the append-to-stored latency of live records."""
    proc = await trio.lowlevel.open_process(
        [sys.executable, __file__, "--child", str(b_dir), a.url, token, str(n),
         str(args.page_limit)],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    child = Child(proc)
    try:
        async with trio.open_nursery() as watch:
            watch.start_soon(watch_workers, proc.pid, st.worker_hwms)
            with trio.fail_after(600):
                ev = await child.next_event()
            watch.cancel_scope.cancel()
        if ev["event"] != "synced" or ev["records"] != n:
            raise RuntimeError(f"node B did not sync everything: {ev}")
        seconds = float(str(ev["seconds"]))
        st.mode_rates.append(n / seconds)
        st.rates.append(n / seconds)
        st.hwms.append(int(str(ev["hwm_kb"])) / 1024)
        print(
            f"  {st.label}: {n / seconds:,.0f} records/s ({seconds:.2f} s), "
            f"B peak RSS {st.hwms[-1]:.0f} MB"
        )
        if not appends:
            return
        seq = n
        for i in range(args.appends):
            t_append = time.monotonic()
            await a.append(namespace="app/live", thread="t", kind="k", body=i)
            seq += 1
            with trio.fail_after(30):
                while True:
                    ev = await child.next_event()
                    if ev["event"] == "page" and int(str(ev["seq"])) >= seq:
                        break
            st.latencies.append((float(str(ev["t"])) - t_append) * 1000)
    finally:
        await child.stop()


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
    rates: list[float] = []
    hwms: list[float] = []
    worker_hwms: list[float] = []
    latencies: list[float] = []
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
                    for i in range(0, 0 if filled else n, 5000):
                        chunk = recs[i : i + 5000]

                        def commit(tx: StateTx, chunk: list = chunk) -> None:  # type: ignore[type-arg]
                            tx.put_records(chunk)

                        await a.store.transact(commit)
                    filled = True
                    assert a.admin_token_path is not None
                    token = a.admin_token_path.read_text().strip()
                    if tls:
                        raw.append(raw_verify_rate())
                    last = run == args.runs - 1 and tls
                    await _one_run(
                        args,
                        a,
                        token,
                        Path(tmp) / f"b{mode}{run}",
                        n,
                        last,
                        Stats(
                            by_mode[mode],
                            rates,
                            hwms,
                            worker_hwms,
                            latencies,
                            f"{mode} run {run + 1}",
                        ),
                    )
    raw_med = statistics.median(raw)
    rate_med = statistics.median(by_mode["https"])
    ratio = rate_med / raw_med
    print()
    print(
        f"  end-to-end (https)   median {rate_med:>10,.0f} records/s   "
        f"({fmt(by_mode['https'], '')})"
    )
    print(f"  raw pynacl verify    median {raw_med:>10,.0f} /s (1 core)  ({fmt(raw, '')})")
    print(
        f"  ratio                       {ratio:>10.2f}   (target >= {RATIO_TARGET}, "
        f"aim > 1.0) {'OK' if ratio >= RATIO_TARGET else 'BELOW TARGET'}"
    )
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
    if latencies:
        lat = sorted(latencies)
        p50 = statistics.median(lat)
        p95 = lat[min(len(lat) - 1, int(0.95 * len(lat)))]
        print(
            f"  append->stored       p50 {p50:>7.1f} ms  p95 {p95:>7.1f} ms  "
            f"over {len(lat)} appends (target p50 < {P50_TARGET_MS:.0f} ms) "
            f"{'OK' if p50 < P50_TARGET_MS else 'OVER'}"
        )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _, _, data_dir, url, token, n, page_limit = sys.argv
        trio.run(child_main, data_dir, url, token, int(n), int(page_limit))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--appends", type=int, default=100)
    parser.add_argument("--page-limit", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="10k records, 1 run, 50 appends")
    args = parser.parse_args()
    if args.quick:
        args.records, args.runs, args.appends = 10_000, 1, 50
    trio.run(parent_main, args)


if __name__ == "__main__":
    main()
