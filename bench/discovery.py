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

Prints a ``SKIP`` line and exits 0 when not root or ``ip`` is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import netns  # noqa: E402

HELPER = str(ROOT / "tests" / "peer" / "discovery_node.py")
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    reason = netns.skip_reason()
    if reason:
        print(f"SKIP discovery benchmark: {reason}")
        return
    print(f"fedpeer discovery benchmark ({args.runs} runs, two namespaces on a veth pair)")
    with netns.lan(2) as net:
        results = trio.run(bench, net, args.runs)
    med = {k: statistics.median(v) for k, v in results.items()}
    verdict = "ok" if med["ready"] < TARGET_S else "ABOVE TARGET"
    print(f"  node ready -> verified on peer   median {med['ready']:.2f} s   "
          f"target < {TARGET_S:.0f} s: {verdict}")  # fmt: skip
    print(f"  process start -> verified        median {med['spawn']:.2f} s   (includes imports)")
    print(f"  own announcement registered      median {med['registered']:.2f} s   (probing)")
    print(f"  goodbye -> gone from peer        median {med['goodbye']:.2f} s")


if __name__ == "__main__":
    main()
