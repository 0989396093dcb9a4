"""Discovery benchmark: time from a node starting to being shown verified on a peer.

Run as root: ``.venv/bin/python bench/discovery.py [--runs 10]``. Builds two
network namespaces joined by a veth pair (``tests/netns.py``), starts an
observer node B once, then ``--runs`` times starts a fresh node A (new key) in
the other namespace and measures, from the JSON lines both print
(``tests/peer/discovery_node.py``, same wall clock):

* node ready -> verified on B: from A's HTTP server being up (discovery starts
  right after) to B's roster showing A ``verified`` (target: median < 2 s; most
  of it is RFC 6762 probing, ~1.5 s);
* process start -> verified on B: the same, including Python start-up;
* A registered: when A's own announcement finished probing (for the breakdown);
* goodbye -> gone from B: from A's SIGTERM to B dropping the entry.

Then, ``--pair-runs`` times (fresh data dirs and keys each run), pairing two
``fedpeer run`` processes (``tests/nodeproc.py``) in two namespaces: each
data dir is first filled with ``--records`` records signed by its node (through
the store, in this process, before the node starts), A issues an invite, and the
clock runs from launching ``fedpeer pair URL`` on B (two-way pairing) to:

* all records on both sides: both nodes hold every record of both sides (each
  side's ``tests/e2e/ns_tool.py wait``, started beforehand, follows its node's
  feed by longpoll and stamps the moment the last record landed);
* both pairs caught up: each node's pair is ``caught_up`` with its cursor at the
  source's head (``ns_tool.py caught-up`` asks ``GET /v1/sync/pairs`` every
  50 ms: a pair state has no event to wait on). This is later than the first:
  each side also pulls back its own records through the other's feed and drops
  them as duplicates;
* ``fedpeer pair`` returned: it waits for B's pair to be caught up (it polls
  every 0.25 s).

Two variants: ``each``, N records on A and N on B (each direction moves N);
``one``, N records on A only (B pulls N; A's reverse pair pulls them back).

Then, ``--recover-runs`` times per case, recovery (issue 14): two paired ``fedpeer
run`` nodes that back off 5 to 10 minutes after a failure (``sync_backoff_base_s =
600``, so only the wake-ups of a peer seen again can make them converge in time),
from the moment the peer is back to both sides holding every record:

* link return after a short outage (2 s: the pairs may not even have failed),
* link return after a long outage (until both pairs fail and back off for minutes),
* peer restart (SIGKILL, A's pair backs off for minutes, B restarts and adds a
  record).

Printed: median and p95 per case and the p95's ratio to the 5 s target.

``--only verified`` / ``--only pair`` / ``--only recover`` runs one part. Prints a ``SKIP`` line and
exits 0 when not root or ``ip`` is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import netns  # noqa: E402
from tests.e2e.lan_nodes import SLOW_BACKOFF, start_nodes, stop_nodes, wait_pair  # noqa: E402
from tests.nodeproc import RunningNode, clean_env  # noqa: E402

HELPER = str(ROOT / "tests" / "peer" / "discovery_node.py")
NS_TOOL = str(ROOT / "tests" / "e2e" / "ns_tool.py")
TARGET_S = 2.0
Event = dict[str, object]


class Proc:
    """A discovery_node.py process and the JSON events it printed."""

    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self.events: list[Event] = []
        self._changed = trio.Event()

    async def pump(self) -> None:
        assert self.proc.stdout is not None
        buf = b""
        async for chunk in self.proc.stdout:
            buf += chunk
            *lines, buf = buf.split(b"\n")
            self.events.extend(json.loads(line) for line in lines if line.strip())
            self._changed.set()
            self._changed = trio.Event()

    async def wait_for(
        self, pred: Callable[[Event], bool], timeout: float, since: int = 0
    ) -> Event:
        index = since
        with trio.fail_after(timeout):
            while True:  # bounded by fail_after
                for event in self.events[index:]:
                    if pred(event):
                        return event
                index = len(self.events)
                await self._changed.wait()


def listed(did: str, status: str | None = None) -> Callable[[Event], bool]:
    def pred(e: Event) -> bool:
        if e.get("event") != "discovery":
            return False
        peers = e["peers"]
        assert isinstance(peers, list)
        return any(p["did"] == did and status in (None, p["status"]) for p in peers)

    return pred


def unlisted(did: str) -> Callable[[Event], bool]:
    return lambda e: e.get("event") == "discovery" and not listed(did)(e)


async def start(nursery: trio.Nursery, host: netns.Host, *args: str) -> Proc:
    proc = await trio.lowlevel.open_process(
        host.exec_args(sys.executable, HELPER, *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    p = Proc(proc)
    nursery.start_soon(p.pump)
    return p


def as_float(value: object) -> float:
    assert isinstance(value, int | float)
    return float(value)


async def bench(net: netns.Lan, runs: int) -> dict[str, list[float]]:
    a_host, b_host = net.hosts
    out: dict[str, list[float]] = {"ready": [], "spawn": [], "registered": [], "goodbye": []}
    async with trio.open_nursery() as nursery:
        b = await start(nursery, b_host, "--handle", "observer")
        procs = [b]
        try:
            await b.wait_for(lambda e: e.get("status") == "running", 30)
            for i in range(runs):
                mark = len(b.events)
                t_spawn = time.time()
                a = await start(nursery, a_host, "--handle", f"node{i}")
                procs.append(a)
                ready = await a.wait_for(lambda e: e["event"] == "ready", 30)
                did = str(ready["did"])
                seen = await b.wait_for(listed(did, "verified"), 30, since=mark)
                registered = await a.wait_for(lambda e: e.get("status") == "running", 30)
                t_seen = as_float(seen["t"])
                out["ready"].append(t_seen - as_float(ready["t"]))
                out["spawn"].append(t_seen - t_spawn)
                out["registered"].append(as_float(registered["t"]) - as_float(ready["t"]))
                mark = len(b.events)
                t_stop = time.time()
                a.proc.send_signal(signal.SIGTERM)
                gone = await b.wait_for(unlisted(did), 30, since=mark)
                out["goodbye"].append(as_float(gone["t"]) - t_stop)
                with trio.fail_after(10):
                    await a.proc.wait()
                print(
                    f"  run {i + 1:2}: ready->verified {out['ready'][-1]:.2f} s, "
                    f"spawn->verified {out['spawn'][-1]:.2f} s, "
                    f"registered after {out['registered'][-1]:.2f} s, "
                    f"goodbye->gone {out['goodbye'][-1]:.2f} s",
                    flush=True,
                )
        finally:
            for p in procs:
                if p.proc.returncode is None:
                    p.proc.kill()
            nursery.cancel_scope.cancel()
    return out


# --- pair URL -> both caught up ------------------------------------------------------------


async def _preload(data_dir: Path, n: int, label: str) -> None:
    """Create the node's data dir (identity, store, admin token) and store ``n``
    records signed by its key, in chunks, straight into the store."""
    from fedpeer.peer import open_node
    from fedpeer.store.base import StateTx
    from fedpeer.sync.records import build_record

    async with open_node(data_dir) as node:
        now = int(time.time() * 1000)
        for start in range(0, n, 2000):
            chunk = [
                build_record(
                    node.key,
                    namespace="bench",
                    thread=f"{label}-{i % 50}",
                    kind="note",
                    body={"from": label, "i": i, "text": "a sentence of ordinary size here."},
                    clock=i + 1,
                    ts=now,
                ).to_new()
                for i in range(start, min(n, start + 2000))
            ]

            def commit(tx: StateTx, chunk: list = chunk) -> None:  # type: ignore[type-arg]
                tx.put_records(chunk)

            await node.store.transact(commit)


def _tool(host: netns.Host, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        host.exec_args(sys.executable, NS_TOOL, *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )


def _finish(proc: subprocess.Popen[str], timeout: float) -> dict[str, object]:
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"ns_tool failed ({proc.returncode}): {err.strip()[-500:]}")
    value = json.loads(out)
    assert isinstance(value, dict)
    return value


def pair_once(net: netns.Lan, tmp: Path, n_a: int, n_b: int) -> dict[str, float]:
    """One pairing on fresh data dirs; seconds from launching ``pair`` to each milestone."""
    a_host, b_host = net.hosts
    a_dir, b_dir = tmp / "a", tmp / "b"
    trio.run(_preload, a_dir, n_a, "a")
    trio.run(_preload, b_dir, n_b, "b")
    a = RunningNode(a_host, a_dir, "alice")
    b = RunningNode(b_host, b_dir, "bob")
    try:
        a.wait_ready()
        b.wait_ready()
        url = json.loads(a.cli("invite", "create", "--no-qr", "--json").stdout)["url"]
        total = n_a + n_b
        waits = [_tool(h, "wait", str(d), "--count", str(total), "--timeout", "300")
                 for h, d in ((a_host, a_dir), (b_host, b_dir))]  # fmt: skip
        # ... and every pair caught up with its source's head (which is `total` on
        # both sides: each also pulls back, and drops as duplicates, its own records)
        quiets = [_tool(h, "caught-up", str(d), "--seq", str(total), "--timeout", "300")
                  for h, d in ((a_host, a_dir), (b_host, b_dir))]  # fmt: skip
        # each waiter first reads what its node already holds, then longpolls
        t0 = time.time()
        paired = b.cli("pair", url, "--json", "--timeout", "300", timeout=320)
        t_pair = time.time()
        if paired.returncode != 0:
            raise RuntimeError(f"pair failed: {paired.stderr.strip()}")
        done = [_finish(w, 330) for w in waits]
        if [d["count"] for d in done] != [total, total]:
            raise RuntimeError(f"expected {total} records on each side: {done}")
        quiet = [_finish(q, 330) for q in quiets]
        t_data = max(as_float(d["t"]) for d in done)
        t_quiet = max(as_float(q["t"]) for q in quiet)
        return {"data": t_data - t0, "pairs": t_quiet - t0, "pair_cmd": t_pair - t0}
    finally:
        for node in (b, a):
            node.stop()


def pair_bench(runs: int, n: int) -> None:
    print(f"pair URL -> both caught up ({runs} runs per variant, {n:,} records, "
          "fresh nodes each run)")  # fmt: skip
    for variant, (n_a, n_b) in (("each", (n, n)), ("one", (n, 0))):
        res: dict[str, list[float]] = {"data": [], "pairs": [], "pair_cmd": []}
        for i in range(runs):
            with tempfile.TemporaryDirectory(prefix="fedpeer-bench-") as tmp, netns.lan(2) as net:
                r = pair_once(net, Path(tmp), n_a, n_b)
            for k, v in r.items():
                res[k].append(v)
            print(f"  {variant} run {i + 1}: all records on both sides {r['data']:.2f} s, "
                  f"both pairs caught up {r['pairs']:.2f} s, "
                  f"`pair` returned {r['pair_cmd']:.2f} s", flush=True)  # fmt: skip
        med = {k: statistics.median(v) for k, v in res.items()}
        what = f"{n:,} records on each side" if variant == "each" else f"{n:,} records on A only"
        print(f"  {what}:")
        print(f"    pair URL -> all records on both sides   median {med['data']:6.2f} s   "
              f"({(n_a + n_b) / med['data']:,.0f} new records/s)")  # fmt: skip
        print(
            f"    pair URL -> both pairs caught up        median {med['pairs']:6.2f} s   "
            "(also pulled back: each side's own records, dropped as duplicates)"
        )
        print(
            f"    pair URL -> `fedpeer pair` returned     median {med['pair_cmd']:6.2f} s   "
            "(B's pair caught up; it polls every 0.25 s)"
        )


RECOVER_TARGET_S = 5.0


def _long_backoff(row: dict[str, object]) -> bool:
    """A pair row that is failing and waits at least a minute before its next try."""
    wait = row.get("next_try_s")
    return row["state"] == "failing" and isinstance(wait, int | float) and wait > 60


def _wait_failing(node: RunningNode, peer: RunningNode, timeout: float = 90.0) -> None:
    """Until ``node``'s pair to ``peer`` backs off for at least a minute (bounded)."""
    wait_pair(node, peer.did, _long_backoff, "failing with a long backoff", timeout=timeout)


def _add(node: RunningNode, label: str) -> None:
    out = _finish(_tool(node.host, "add", str(node.data_dir), "--count", "1", "--label", label), 60)
    assert out.get("cids")


def _converged(nodes: list[RunningNode], total: int, t0: float) -> float:
    waits = [_tool(n.host, "wait", str(n.data_dir), "--count", str(total), "--timeout", "120")
             for n in nodes]  # fmt: skip
    done = [_finish(w, 150) for w in waits]
    if any(d["count"] != total for d in done):
        raise RuntimeError(f"did not converge to {total} records: {done}")
    return max(as_float(d["t"]) for d in done) - t0


def recover_bench(runs: int) -> None:
    print(f"recovery -> both sides converged ({runs} runs per case, backoff 5-10 min)")
    cases: dict[str, list[float]] = {"short outage (2 s)": [], "long outage": [], "restart": []}
    with tempfile.TemporaryDirectory(prefix="fedpeer-bench-") as tmp, netns.lan(2) as net:
        dirs = [Path(tmp) / "a", Path(tmp) / "b"]
        a, b = start_nodes(net.hosts, dirs, ["alice", "bob"], tuning=SLOW_BACKOFF)
        try:
            url = json.loads(a.cli("invite", "create", "--no-qr", "--json").stdout)["url"]
            if b.cli("pair", url, "--json", "--timeout", "60").returncode != 0:
                raise RuntimeError("pairing failed")
            total = 0
            for i in range(runs):
                for case in cases:
                    if case == "restart":
                        b.kill()
                        _wait_failing(a, b)
                        b.restart()
                        t0 = time.time()
                        _add(b, f"r{i}")
                        total += 1
                        took = _converged([a, b], total, t0)
                    else:
                        net.link_down(b.host)
                        if case == "long outage":
                            _wait_failing(a, b)
                            _wait_failing(b, a)
                        else:
                            time.sleep(2.0)  # the outage itself (a bench, not a test)
                        _add(a, f"a{case[0]}{i}")
                        _add(b, f"b{case[0]}{i}")
                        total += 2
                        net.link_up(b.host)
                        took = _converged([a, b], total, time.time())
                    cases[case].append(took)
                    print(f"  run {i + 1} {case}: converged in {took:.2f} s", flush=True)
        finally:
            stop_nodes([b, a])
    for case, values in cases.items():
        med = statistics.median(values)
        p95 = sorted(values)[max(0, round(0.95 * len(values)) - 1)]
        verdict = "ok" if p95 <= RECOVER_TARGET_S else "ABOVE TARGET"
        print(f"  {case:<20} median {med:5.2f} s  p95 {p95:5.2f} s  "
              f"p95/target {p95 / RECOVER_TARGET_S:.2f} (target {RECOVER_TARGET_S:.0f} s): "
              f"{verdict}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="runs of the verified latency")
    parser.add_argument("--pair-runs", type=int, default=3, help="runs per pairing variant")
    parser.add_argument("--records", type=int, default=10_000, help="records per side to pair")
    parser.add_argument("--recover-runs", type=int, default=5, help="runs per recovery case")
    parser.add_argument("--only", choices=("verified", "pair", "recover"), default=None)
    args = parser.parse_args()
    reason = netns.skip_reason()
    if reason:
        print(f"SKIP discovery benchmark: {reason}")
        return
    if args.only in (None, "verified"):
        verified_bench(args.runs)
    if args.only in (None, "pair"):
        pair_bench(args.pair_runs, args.records)
    if args.only in (None, "recover"):
        recover_bench(args.recover_runs)


def verified_bench(runs: int) -> None:
    print(f"fedpeer discovery benchmark ({runs} runs, two namespaces on a veth pair)")
    with netns.lan(2) as net:
        results = trio.run(bench, net, runs)
    med = {k: statistics.median(v) for k, v in results.items()}
    verdict = "ok" if med["ready"] < TARGET_S else "ABOVE TARGET"
    print(f"  node ready -> verified on peer   median {med['ready']:.2f} s   "
          f"target < {TARGET_S:.0f} s: {verdict}")  # fmt: skip
    print(f"  process start -> verified        median {med['spawn']:.2f} s   (includes imports)")
    print(f"  own announcement registered      median {med['registered']:.2f} s   (probing)")
    print(f"  goodbye -> gone from peer        median {med['goodbye']:.2f} s")


if __name__ == "__main__":
    main()
