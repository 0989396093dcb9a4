"""Pull sync benchmark: node B pulls N records from node A over loopback.

Run: ``.venv/bin/python bench/sync.py`` (defaults: 100k records, 3 runs, 200
appends, 1, 2 and 4 concurrent pairs, a 1M-record sync; about 5 minutes on 2
cores). ``--quick`` for a smoke run (10k records, no 1M run); ``--big-records
0`` skips the 1M run.

Layout: the A nodes are real nodes (SQLite store, hypercorn) in this process,
filled with signed records through the store directly. B is a real node in a
child process (its own interpreter, so its memory and CPU are its own), pairing
with A and pulling everything, verifying every record (canonical bytes, CID,
signature, limits); each run uses a fresh B data dir. Printed, as medians over
the runs (and the per-run values):

* end-to-end records/s, from B's ``pair_with`` to B caught up with all N records
  stored; the raw single-core pynacl verify rate measured here on 36-byte
  messages (the CID bytes a record signature covers) and the ratio end-to-end /
  raw (target >= 1.2, aim 1.5: past 1.0 B verifies on more than one core);
* the CPU each record cost in the real run, per process (B's node process, B's
  signature worker processes, node A serving), and the per-record CPU split
  (fetch, decode, hash, verify, insert, other checks) replayed in one process
  on the same pages, so the next bottleneck is visible;
* the scaling with 1, 2 and 4 concurrent pairs (N records in all, split over
  that many source nodes);
* peak RSS of B (VmHWM) for the 100k runs and for a 1M-record sync (target
  < 150 MB for the 1M puller), and apart the signature worker processes;
* append-on-A to stored-on-B latency while caught up, p50/p95 (target p50 <
  10 ms), idle and with 100 idle longpollers on A (clients longpolling a thread
  that gets no records): A appends one record at a time; the time runs from just
  before ``node.append`` on A to B's commit of the page holding it (both ends
  read ``time.monotonic``, one clock for every process on the machine);
* the load: the machine is shared, so each run also prints how busy the CPUs
  were with other processes' work (from ``/proc/stat``, minus ours).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import nacl.signing
import trio

from fedpeer.identity.canonical import cid_for_dagcbor, dagcbor_encode
from fedpeer.identity.keys import SigningKey, verify_batch
from fedpeer.peer import NodeConfig, open_node
from fedpeer.peer.client import PeerClient
from fedpeer.store.base import NewRecord, StateTx
from fedpeer.store.sqlite import SQLiteStore
from fedpeer.sync.feed import Cursor, decode_page_cbor
from fedpeer.sync.options import SyncEvent, SyncOptions
from fedpeer.sync.pairs import PairState
from fedpeer.sync.records import _decode_record, prepare_wire_items

RATIO_TARGET = 1.2
RATIO_AIM = 1.5
RSS_BIG_TARGET_MB = 150.0
P50_TARGET_MS = 10.0
FAST_A = NodeConfig(
    rate_per_s=1_000_000,
    rate_burst=1_000_000,
    max_conns_per_ip=10_000,
    max_open_conns_per_ip=10_000,
)
SEED = b"\x5b" * 32  # the author of every record (workers rebuild the key from it)
CHUNK = 5000


# --- helpers -------------------------------------------------------------------------------


def _vmhwm_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def _cpu_s() -> float:
    """CPU seconds (user + system, all threads) this process has used."""
    t = os.times()
    return t.user + t.system


def _children_cpu_s() -> float:
    """CPU seconds of this process's reaped children."""
    t = os.times()
    return t.children_user + t.children_system


def _machine_busy_s() -> float:
    """CPU seconds every process on the machine has used (from /proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def _build_chunk(args: tuple[int, int, int]) -> list[tuple[Any, ...]]:
    """Records ``start .. start + n`` as NewRecord field tuples (runs in a pool).

    Encodes and signs directly (what ``build_record`` does minus its own checks,
    which would double the time of the 1M fill); the records are the same shape
    as ``build_record``'s, and B verifies every one of them anyway.
    """
    start, n, now = args
    key = SigningKey.from_seed(SEED)
    did = key.did
    out = []
    for i in range(start, start + n):
        ns, thread = f"app/ns{i % 7}", f"thread-{i % 101}"
        data = dagcbor_encode(
            {
                "v": 1,
                "author": did,
                "namespace": ns,
                "thread": thread,
                "kind": "note",
                "body": {"i": i, "text": "benchmark record body, a sentence of ordinary size."},
                "parents": [],
                "clock": 0,
                "ts": now,
            }
        )
        cid = cid_for_dagcbor(data).raw
        out.append((cid, data, key.sign(cid), did, ns, thread, "note", now))
    return out


def record_chunks(pool: Any, start: int, n: int, now: int) -> Iterator[list[NewRecord]]:
    """Signed records ``start .. start + n`` in chunks, built on every core."""
    jobs = [(i, min(CHUNK, start + n - i), now) for i in range(start, start + n, CHUNK)]
    for rows in pool.imap(_build_chunk, jobs):
        yield [NewRecord(*row) for row in rows]


async def fill(node: Any, chunks: Iterator[list[NewRecord]]) -> int:
    count = 0
    while True:
        chunk = await trio.to_thread.run_sync(next, chunks, None)
        if chunk is None:
            return count

        def commit(tx: StateTx, chunk: list[NewRecord] = chunk) -> None:
            tx.put_records(chunk)

        await node.store.transact(commit)
        count += len(chunk)


# --- the children: node B, the split replay, idle longpollers ---------------------------


async def child_sync(data_dir: str, sources: list[list[str]], n: int, page_limit: int) -> None:
    opts = SyncOptions(page_limit=page_limit)
    async with open_node(data_dir, sync=opts) as node:
        live = False
        first: list[float] = []  # when the first records were stored

        def on_event(ev: SyncEvent) -> None:
            if not first and ev.kind == "page" and ev.records:
                first.append(time.monotonic())
            if live and ev.kind == "page" and ev.records:
                seq = Cursor.decode(ev.pair.cursor or "").seq
                _emit(event="page", seq=seq, t=time.monotonic())

        node.pairs.add_listener(on_event)
        t0 = time.monotonic()
        cpu0, kids0 = _cpu_s(), _children_cpu_s()
        pairs = [await node.pair_with(url, token=token) for url, token in sources]

        def total() -> int:
            return sum(node.pairs.get(p.id).stats.records for p in pairs)

        for p in pairs:
            await node.pairs.wait_for(p.id, lambda q: q.state is PairState.CAUGHT_UP)
        while total() < n:  # a pair can be caught up before the others are done
            await node.pairs.wait_for(pairs[0].id, lambda q: total() >= n)
        seconds = time.monotonic() - t0
        cpu = _cpu_s() - cpu0
        await trio.sleep(0.2)  # let the idle signature workers be reaped (CPU accounting)
        workers_cpu = _children_cpu_s() - kids0
        count = await node.store.count()
        live = True
        _emit(
            event="synced",
            records=count,
            seconds=seconds,
            first_s=first[0] - t0 if first else seconds,
            hwm_kb=_vmhwm_kb(),
            cpu_s=cpu,
            workers_cpu_s=workers_cpu,
            cpu_total_s=_cpu_s(),
        )
        await trio.sleep_forever()


async def child_split(url: str, token: str, n: int, page_limit: int) -> None:
    """Replay the pipeline's stages one after the other, on one core, on A's pages."""
    cpu = time.process_time
    t_fetch = t_page = t_rec = t_hash = t_verify = t_insert = t_prepare = 0.0
    bodies: list[bytes] = []
    async with httpx.AsyncClient(timeout=60) as http:
        peer = PeerClient(url, token=token, client=http)
        since: str | None = None
        while True:
            params: dict[str, str | int] = {"limit": page_limit, "feed": "normal"}
            if since:
                params["since"] = since
            c0 = cpu()
            response = await peer.request("GET", "/v1/sync/changes", params=params)
            body = response.content
            t_fetch += cpu() - c0
            bodies.append(body)
            c0 = cpu()
            page = decode_page_cbor(body)
            t_page += cpu() - c0
            assert isinstance(page, dict)
            since = page["next_cursor"]
            if not page["has_more"]:
                break
    now = int(time.time() * 1000)
    with tempfile.TemporaryDirectory(prefix="fedpeer-split-") as tmp:
        store = await SQLiteStore.open(Path(tmp) / "split.db")
        pending: list[NewRecord] = []
        count = 0
        for body in bodies:
            items = decode_page_cbor(body)["records"]  # type: ignore[index]
            datas = [item["data"] for item in items]
            c0 = cpu()
            for data in datas:
                _decode_record(data)
            t_rec += cpu() - c0
            c0 = cpu()
            for data in datas:
                cid_for_dagcbor(data)
            t_hash += cpu() - c0
            c0 = cpu()
            prepared = prepare_wire_items(items, now_ms=now)
            t_prepare += cpu() - c0
            jobs = prepared.signature_jobs
            c0 = cpu()
            verdicts = verify_batch(jobs)
            t_verify += cpu() - c0
            records = prepared.finish(verdicts)
            pending += [r.to_new() for r in records]  # type: ignore[union-attr]
            count += len(records)
            if len(pending) >= CHUNK or body is bodies[-1]:
                chunk, pending = pending, []

                def commit(tx: StateTx, chunk: list[NewRecord] = chunk) -> None:
                    tx.put_records(chunk)
                    tx.put("pairs", "split", {"cursor": "x" * 60})

                c0 = cpu()
                await store.transact(commit)
                t_insert += cpu() - c0
        await store.aclose()
    per = 1e6 / max(1, count)
    _emit(
        event="split",
        records=count,
        fetch=t_fetch * per,
        decode=(t_page + t_rec) * per,
        hash=t_hash * per,
        verify=t_verify * per,
        insert=t_insert * per,
        other=max(0.0, t_prepare - t_rec - t_hash) * per,
    )


async def child_longpollers(url: str, token: str, n: int) -> None:
    """``n`` clients longpolling A on a thread that gets no records, until killed."""
    limits = httpx.Limits(max_connections=n + 10, max_keepalive_connections=n + 10)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        peer = PeerClient(url, token=token, client=http)
        since = None
        response = await peer.request("GET", "/v1/sync/changes", params={"limit": 1})
        since = decode_page_cbor(response.content)["next_cursor"]  # type: ignore[index]

        async def poll(i: int) -> None:
            params: dict[str, str | int] = {
                "limit": 10,
                "feed": "longpoll",
                "timeout": "30",
                "since": str(since),
                "thread": f"idle-{i}",
            }
            while True:
                await peer.request("GET", "/v1/sync/changes", params=params, timeout=60)

        async with trio.open_nursery() as nursery:
            for i in range(n):
                nursery.start_soon(poll, i)
            _emit(event="started")


# --- the parent: the A nodes, measurements ------------------------------------------------


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
        self._pending: list[dict[str, Any]] = []

    @classmethod
    async def start(cls, *args: str) -> Child:
        proc = await trio.lowlevel.open_process(
            [sys.executable, __file__, *args], stdout=subprocess.PIPE
        )
        return cls(proc)

    async def next_event(self) -> dict[str, Any]:
        while not self._pending:
            chunk = await self._stream.receive_some(65536)
            if not chunk:
                raise RuntimeError("a child process exited; see its stderr above")
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


class Sync:
    """One B run: its rate, CPU per record, peak RSS and the machine's other load."""

    def __init__(self, n: int, ev: dict[str, Any], a_cpu: float, busy: float, wall: float) -> None:
        self.n = n
        self.seconds = float(ev["seconds"])
        self.rate = n / self.seconds
        self.hwm_mb = int(ev["hwm_kb"]) / 1024
        self.first_ms = float(ev["first_s"]) * 1000
        self.b_us = float(ev["cpu_s"]) / n * 1e6
        self.w_us = float(ev["workers_cpu_s"]) / n * 1e6
        self.a_us = a_cpu / n * 1e6
        ours = float(ev["cpu_total_s"]) + float(ev["workers_cpu_s"]) + a_cpu
        self.other_load = max(0.0, (busy - ours) / wall / (os.cpu_count() or 1))

    def line(self) -> str:
        return (
            f"{self.rate:>8,.0f} records/s ({self.seconds:.2f} s), B peak RSS "
            f"{self.hwm_mb:.0f} MB; CPU/record: B {self.b_us:.0f} + workers {self.w_us:.0f} "
            f"+ A {self.a_us:.0f} us; other load {self.other_load:.0%} of the machine"
        )


async def run_sync(
    tmp: Path, name: str, sources: list[tuple[str, str]], n: int, page_limit: int
) -> tuple[Sync, Child, list[float]]:
    """Start B on ``sources`` and wait until it has all ``n`` records; B keeps running."""
    arg = json.dumps([list(s) for s in sources])
    busy0, cpu0, wall0 = _machine_busy_s(), _cpu_s(), time.monotonic()
    child = await Child.start("--child-sync", str(tmp / name), arg, str(n), str(page_limit))
    worker_hwms: list[float] = []
    try:
        async with trio.open_nursery() as watch:
            watch.start_soon(watch_workers, child.proc.pid, worker_hwms)
            with trio.fail_after(1800):
                ev = await child.next_event()
            watch.cancel_scope.cancel()
    except BaseException:
        await child.stop()
        raise
    busy = _machine_busy_s() - busy0
    wall = time.monotonic() - wall0
    if ev["event"] != "synced" or ev["records"] != n:
        await child.stop()
        raise RuntimeError(f"node B did not sync everything: {ev}")
    return Sync(n, ev, _cpu_s() - cpu0, busy, wall), child, worker_hwms


async def latencies(a: Any, child: Child, appends: int, seq: int) -> tuple[list[float], int]:
    out = []
    for i in range(appends):
        t_append = time.monotonic()
        await a.append(namespace="app/live", thread="t", kind="k", body=i)
        seq += 1
        with trio.fail_after(30):
            while True:
                ev = await child.next_event()
                if ev["event"] == "page" and int(ev["seq"]) >= seq:
                    break
        out.append((float(ev["t"]) - t_append) * 1000)
    return out, seq


def pct(values: list[float]) -> tuple[float, float]:
    lat = sorted(values)
    return statistics.median(lat), lat[min(len(lat) - 1, int(0.95 * len(lat)))]


def fmt(values: list[float], unit: str = "", digits: int = 0) -> str:
    return ", ".join(f"{v:,.{digits}f}{unit}" for v in values)


def print_verify_ratio(
    label: str, rates: list[float], raw: list[float], target: float, aim: str
) -> float:
    """Print the end-to-end median (``label``), the raw verify median and their ratio
    to ``target``; return the end-to-end median."""
    rate_med, raw_med = statistics.median(rates), statistics.median(raw)
    ratio = rate_med / raw_med
    verdict = "OK" if ratio >= target else "BELOW TARGET"
    print(f"  {label:<21}median {rate_med:>10,.0f} records/s   ({fmt(rates)})")
    print(f"  raw pynacl verify    median {raw_med:>10,.0f} /s (1 core)  ({fmt(raw)})")
    print(
        f"  ratio                       {ratio:>10.2f}   (target >= {target}, aim {aim}) {verdict}"
    )
    return rate_med


async def open_source(stack: Any, tmp: Path, name: str, key: SigningKey | None = None) -> Any:
    d = tmp / name
    d.mkdir()
    node = await stack.enter_async_context(open_node(d, key=key, config=FAST_A))
    assert node.admin_token_path is not None
    return node, node.admin_token_path.read_text().strip()


async def parent_main(args: argparse.Namespace) -> None:
    from contextlib import AsyncExitStack

    n = args.records
    print(
        f"pull sync benchmark: {n:,} records, {args.runs} runs, {args.appends} appends, "
        f"pairs {args.scaling}, 1M run: {args.big_records:,} records"
    )
    print(f"  cpus: {os.cpu_count()}, python {sys.version.split()[0]}, load {os.getloadavg()}")
    raw = [raw_verify_rate() for _ in range(3)]
    now = int(time.time() * 1000)
    ctx = multiprocessing.get_context("spawn")
    with (
        ctx.Pool(os.cpu_count() or 1) as pool,
        tempfile.TemporaryDirectory(prefix="fedpeer-bench-") as tmp_s,
    ):
        tmp = Path(tmp_s)
        async with AsyncExitStack() as stack:
            t0 = time.perf_counter()
            a, token = await open_source(stack, tmp, "a", SigningKey.generate())
            await fill(a, record_chunks(pool, 0, n, now))
            print(
                f"  built, signed and stored {n:,} records on A in {time.perf_counter() - t0:.1f} s"
            )
            sample = (await a.store.changes(0, 1)).records[0]
            print(f"  record size: {len(sample.data)} bytes (+ 36-byte CID, 64-byte signature)")
            raw.append(raw_verify_rate())

            # --- the headline: medians of runs, one pair --------------------------------
            runs: list[Sync] = []
            worker_hwms: list[float] = []
            lat_idle: list[float] = []
            lat_busy: list[float] = []
            beside: list[float] = []  # each run against the raw rate just before and after it
            for run in range(args.runs):
                before = raw_verify_rate()
                s, child, hwms = await run_sync(
                    tmp, f"b{run}", [(a.url, token)], n, args.page_limit
                )
                beside.append(s.rate / ((before + raw_verify_rate()) / 2))
                runs.append(s)
                worker_hwms += hwms
                print(f"  run {run + 1}: {s.line()}")
                try:
                    if run == args.runs - 1 and args.appends:
                        lat_idle, seq = await latencies(a, child, args.appends, n)
                        lp = await Child.start(
                            "--child-longpollers", a.url, token, str(args.longpollers)
                        )
                        try:
                            with trio.fail_after(60):
                                assert (await lp.next_event())["event"] == "started"
                                while a.store._watch.waiting() < args.longpollers:
                                    await trio.sleep(0.05)  # a bench waiting for load, not a test
                            lat_busy, seq = await latencies(a, child, args.appends, seq)
                            waiting = a.store._watch.waiting()
                        finally:
                            await lp.stop()
                finally:
                    await child.stop()

            # --- the per-record CPU split, replayed on the same pages -----------------------
            split_child = await Child.start(
                "--child-split", a.url, token, str(n), str(args.page_limit)
            )
            try:
                with trio.fail_after(600):
                    split = await split_child.next_event()
            finally:
                await split_child.stop()

            # --- scaling with concurrent pairs -----------------------------------------------
            scaling: dict[int, Sync] = {}
            for k in args.scaling:
                if k == 1:
                    continue
                srcs = []
                for j in range(k):
                    node, tok = await open_source(stack, tmp, f"s{k}-{j}")
                    per = n // k
                    await fill(node, record_chunks(pool, n + j * per, per, now))
                    srcs.append((node.url, tok))
                s, child, _ = await run_sync(tmp, f"bs{k}", srcs, per * k, args.page_limit)
                await child.stop()
                scaling[k] = s
                print(f"  {k} pairs: {s.line()}")

            # --- 1M records: the puller's memory ------------------------------------------
            big: Sync | None = None
            if args.big_records:
                t0 = time.perf_counter()
                node, tok = await open_source(stack, tmp, "big")
                await fill(node, record_chunks(pool, 10 * n, args.big_records, now))
                print(
                    f"  built, signed and stored {args.big_records:,} records on A' in "
                    f"{time.perf_counter() - t0:.0f} s"
                )
                big, child, _ = await run_sync(
                    tmp, "bbig", [(node.url, tok)], args.big_records, args.page_limit
                )
                await child.stop()
                print(f"  {args.big_records:,} records: {big.line()}")

    # --- the summary ----------------------------------------------------------------------
    print()
    rate_med = print_verify_ratio(
        "end-to-end", [s.rate for s in runs], raw, RATIO_TARGET, str(RATIO_AIM)
    )
    print(
        f"  ratio, each run against the raw rate measured just before and after it "
        f"(this machine's speed drifts): median {statistics.median(beside):.2f} "
        f"({fmt(beside, digits=2)})"
    )
    b_us = statistics.median(s.b_us for s in runs)
    w_us = statistics.median(s.w_us for s in runs)
    a_us = statistics.median(s.a_us for s in runs)
    total = b_us + w_us + a_us
    cores = os.cpu_count() or 1
    print(
        f"  CPU per record (real run, medians): B node {b_us:.0f} us + B signature workers "
        f"{w_us:.0f} us + A serving {a_us:.0f} us = {total:.0f} us; {cores} cores bound "
        f"{cores * 1e6 / total:,.0f} records/s"
    )
    print(
        f"  other processes' load during the runs: {fmt([s.other_load * 100 for s in runs], '%')} "
        f"of the machine (shared with other work: ratios move with it)"
    )
    parts = ("fetch", "decode", "hash", "verify", "insert", "other")
    names = {
        "fetch": "fetch (B: HTTP GET, receive)",
        "decode": "decode (page + record, strict)",
        "hash": "hash (sha-256 CID)",
        "verify": "verify (Ed25519)",
        "insert": f"insert (SQLite, {CHUNK}-record tx)",
        "other": "other checks (shape, limits, key, objects)",
    }
    print("  per-record CPU split, replayed stage by stage on one core:")
    for p in parts:
        print(f"    {names[p]:<44} {float(split[p]):>6.1f} us")
    print(f"    {'sum':<44} {sum(float(split[p]) for p in parts):>6.1f} us")
    if scaling:
        base = rate_med
        cells = [f"1 pair {base:,.0f}/s (1.00)"]
        cells += [f"{k} pairs {s.rate:,.0f}/s ({s.rate / base:.2f})" for k, s in scaling.items()]
        print("  scaling (records/s, relative to 1 pair): " + ", ".join(cells))
    print(
        f"  pair -> first records stored  median "
        f"{statistics.median(s.first_ms for s in runs):>6.0f} ms "
        f"({fmt([s.first_ms for s in runs], ' ms')}; no target: the catch-up starts small)"
    )
    hwm_med = statistics.median(s.hwm_mb for s in runs)
    print(
        f"  B peak RSS ({n:,})    median {hwm_med:>6.0f} MB "
        f"({fmt([s.hwm_mb for s in runs], ' MB')})"
    )
    print(
        f"  B's signature worker processes: peak RSS {max(worker_hwms, default=0):.0f} MB each "
        f"(one pool per node, at most one per core, while catching up)"
    )
    if big is not None:
        ok = "OK" if big.hwm_mb < RSS_BIG_TARGET_MB else "OVER"
        print(
            f"  1M sync: B peak RSS {big.hwm_mb:.0f} MB (target < {RSS_BIG_TARGET_MB:.0f}) {ok}, "
            f"{big.rate:,.0f} records/s in {big.seconds:.0f} s"
        )
    for label, lat in (("idle", lat_idle), (f"{args.longpollers} idle longpollers", lat_busy)):
        if lat:
            p50, p95 = pct(lat)
            ok = "OK" if p50 < P50_TARGET_MS else "OVER"
            print(
                f"  append->stored ({label}): p50 {p50:.1f} ms  p95 {p95:.1f} ms over {len(lat)} "
                f"appends (target p50 < {P50_TARGET_MS:.0f} ms) {ok}"
            )
    if lat_busy:
        print(f"    (waiters on A during the second set: {waiting})")


def _pair_counts(text: str) -> list[int]:
    counts = [int(x) for x in text.split(",") if x]
    if any(k < 1 for k in counts):
        raise argparse.ArgumentTypeError("pair counts are 1 or more, like 1,2,4")
    return counts


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1].startswith("--child-"):
        mode, rest = sys.argv[1], sys.argv[2:]
        if mode == "--child-sync":
            data_dir, sources, n, page_limit = rest
            trio.run(child_sync, data_dir, json.loads(sources), int(n), int(page_limit))
        elif mode == "--child-split":
            url, token, n, page_limit = rest
            trio.run(child_split, url, token, int(n), int(page_limit))
        else:
            url, token, n = rest
            trio.run(child_longpollers, url, token, int(n))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--appends", type=int, default=200)
    parser.add_argument("--longpollers", type=int, default=100)
    parser.add_argument("--page-limit", type=int, default=SyncOptions().page_limit)
    parser.add_argument(
        "--scaling",
        type=_pair_counts,
        default=[1, 2, 4],
        help="concurrent pair counts, comma-separated (1 is the main run); '' for none",
    )
    parser.add_argument("--big-records", type=int, default=1_000_000)
    parser.add_argument(
        "--quick", action="store_true", help="10k records, 1 run, 50 appends, no 1M run"
    )
    args = parser.parse_args()
    if args.quick:
        args.records, args.runs, args.appends, args.big_records = 10_000, 1, 50, 0
    trio.run(parent_main, args)


if __name__ == "__main__":
    main()
