"""A puller node in its own process, for measuring its memory (run by test_bounded_pulls).

Argument: one JSON object ``{dir, peers: [[url, did], ...], max_bytes, deadline}``.
Prints one JSON line ``{"url": ...}`` once serving, pairs with every peer, waits
(bounded) until each pair failed at least twice, then prints ``{"errors": {url:
last_error}, "codes": {url: [codes]}, "vm_hwm_kb": peak RSS}`` and serves until
its stdin closes.
"""

from __future__ import annotations

import json
import sys

import anyio

from fedpeer.peer import NodeConfig, open_node
from fedpeer.sync import SyncEvent
from fedpeer.sync.backoff import Backoff
from fedpeer.sync.options import SyncOptions


def _peak_rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


async def main(arg: dict[str, object]) -> None:
    cfg = NodeConfig(
        rate_per_s=1e6,
        rate_burst=10**6,
        pull_max_page_bytes=int(arg["max_bytes"]),  # type: ignore[call-overload]
        pull_page_deadline_s=float(arg["deadline"]),  # type: ignore[arg-type]
    )
    sync = SyncOptions(backoff=Backoff(base_s=0.3, cap_s=0.6), seed=1)
    peers = [(str(u), str(d)) for u, d in arg["peers"]]  # type: ignore[attr-defined]
    async with open_node(str(arg["dir"]), config=cfg, sync=sync) as node:
        print(json.dumps({"url": node.url}), flush=True)
        codes: dict[str, list[str | None]] = {u: [] for u, _ in peers}
        done = anyio.Event()

        def listen(ev: SyncEvent) -> None:
            if ev.kind in ("retry", "rejected", "stopped"):
                codes[ev.pair.peer_url].append(ev.code)
                if all(len(c) >= 2 for c in codes.values()):
                    done.set()

        node.pairs.manager.add_listener(listen)
        for url, did in peers:
            await node.pairs.create(url, peer_did=did)
        with anyio.fail_after(90):
            await done.wait()
        errors = {p.peer_url: p.to_dict()["last_error"] for p in node.pairs.statuses()}
        print(
            json.dumps({"errors": errors, "codes": codes, "vm_hwm_kb": _peak_rss_kb()}),
            flush=True,
        )
        await anyio.to_thread.run_sync(sys.stdin.read)


if __name__ == "__main__":
    anyio.run(main, json.loads(sys.argv[1]))
