"""Helpers for the e2e tests: ``fedpeer run`` nodes on a namespace LAN, bulk records,
pair states.

Nodes are :class:`tests.nodeproc.RunningNode` processes; every client action
runs inside the node's namespace (the test process, in the root namespace,
cannot reach them): CLI commands via :meth:`RunningNode.cli`, bulk record work
via ``ns_tool.py`` (see its docstring).

Each node's data dir gets a ``fedpeer.toml`` with :data:`TUNING` before it
starts, so the e2e runs exercise the config file too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs

from tests.netns import Host, Lan
from tests.nodeproc import WAIT_S, RunningNode, clean_env, poll_until

__all__ = [
    "SLOW_BACKOFF",
    "TOOL",
    "TUNING",
    "Background",
    "ThreeHosts",
    "TwoLaptops",
    "add_records",
    "pair_to",
    "snapshot",
    "start_nodes",
    "stop_nodes",
    "wait_pair",
    "wait_records",
]

TOOL = str(Path(__file__).with_name("ns_tool.py"))

# Why these values: with the default 30 s longpoll, a pair whose link died in the
# middle of a longpoll notices only after the client's HTTP timeout (longpoll + 15 s
# margin, PeerClient.changes_raw): 45 s. A 1 s longpoll brings that to ~16 s. A 2 s
# backoff cap makes a pair retry at least every ~2 s once the peer is back (the
# default cap is 5 min). The rate limit (50/s, burst 200 by default) would turn the
# bulk appends below into a 16 s trickle.
TUNING = """\
sync_longpoll_s = 1
sync_backoff_cap_s = 2
rate_per_s = 100000
rate_burst = 100000
"""

# The wake-up tests and benchmark (tests/e2e/test_wake.py, bench/discovery.py): a
# failing pair backs off 5 to 10 minutes, so only the wake-ups of a peer seen again
# can make two nodes converge within seconds.
SLOW_BACKOFF = """\
sync_longpoll_s = 1
sync_backoff_base_s = 600
sync_backoff_cap_s = 600
rate_per_s = 100000
rate_burst = 100000
"""

Json = dict[str, Any]


@attrs.frozen
class TwoLaptops:
    """The ``two_laptops`` fixture: a veth LAN with nodes ``a`` (alice) and ``b`` (bob)."""

    net: Lan
    a: RunningNode
    b: RunningNode


@attrs.frozen
class ThreeHosts:
    """The ``three_hosts`` fixture: a bridged LAN, three nodes and a spare host."""

    net: Lan
    nodes: tuple[RunningNode, RunningNode, RunningNode]
    spare: Host


def start_nodes(
    hosts: Sequence[Host],
    data_dirs: Sequence[Path],
    handles: Sequence[str],
    *,
    tuning: str = TUNING,
) -> list[RunningNode]:
    """Write ``tuning`` (:data:`TUNING`) into each data dir, start every node at once,
    wait for all.

    If one does not come up, the ones started are stopped before the error
    propagates.
    """
    nodes: list[RunningNode] = []
    try:
        for host, ddir, handle in zip(hosts, data_dirs, handles, strict=True):
            ddir.mkdir(parents=True, exist_ok=True, mode=0o700)
            (ddir / "fedpeer.toml").write_text(tuning)
            nodes.append(RunningNode(host, ddir, handle))
        for node in nodes:
            node.wait_ready()
    except BaseException:
        stop_nodes(nodes)
        raise
    return nodes


def stop_nodes(nodes: Iterable[RunningNode]) -> dict[str, int]:
    """SIGTERM every node (all of them, whatever happens); their exit codes by handle."""
    codes: dict[str, int] = {}
    for node in nodes:
        try:
            codes[node.handle] = node.stop()
        except Exception as exc:  # keep stopping the others
            codes[node.handle] = -1000
            print(f"stopping {node.handle} failed: {exc!r}", file=sys.stderr)
    return codes


class Background:
    """An ``ns_tool.py`` command running in a namespace while the test goes on."""

    def __init__(self, host: Host, *args: str) -> None:
        self.args = args
        self.proc = subprocess.Popen(
            host.exec_args(sys.executable, TOOL, *args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(),
        )

    def result(self, timeout: float = 60.0) -> Json:
        """Wait (bounded) for the command; its JSON output. AssertionError if it failed."""
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
            raise AssertionError(
                f"ns_tool {' '.join(self.args)} ran over {timeout} s: {err}"
            ) from None
        assert self.proc.returncode == 0, (
            f"ns_tool {' '.join(self.args)}: exit {self.proc.returncode}: {err}\n{out[:500]}"
        )
        value = json.loads(out)
        assert isinstance(value, dict)
        return value


def add_records(node: RunningNode, count: int, label: str) -> Background:
    """Start appending ``count`` records on ``node`` (``.result()["cids"]`` gives their CIDs)."""
    return Background(node.host, "add", str(node.data_dir), "--count", str(count), "--label", label)


def wait_records(
    expected: set[str], *nodes: RunningNode, timeout: float = WAIT_S
) -> dict[str, list[str]]:
    """Wait until each of ``nodes`` holds ``len(expected)`` records; check each holds
    exactly ``expected``, each record once. The feeds' CIDs in order, by handle.

    The wait is each node's own longpoll (ns_tool ``wait``, all nodes at once),
    not polling.
    """
    count = ["--count", str(len(expected)), "--timeout", str(timeout)]
    tools = {n.handle: Background(n.host, "wait", str(n.data_dir), *count) for n in nodes}
    out: dict[str, list[str]] = {}
    for node in nodes:
        proc = tools[node.handle].proc
        try:
            stdout, err = proc.communicate(timeout=timeout + 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise AssertionError(f"ns_tool wait on {node.handle} hung\n{node.log_tail()}") from None
        if proc.returncode != 0:
            have = json.loads(stdout)["count"] if stdout.strip() else "?"
            raise AssertionError(
                f"{node.handle} has {have} of {len(expected)} records after {timeout} s "
                f"(exit {proc.returncode}): {err}\n{node.log_tail()}"
            )
        cids = list(json.loads(stdout)["cids"])
        assert len(cids) == len(set(cids)), f"{node.handle}'s feed lists a record twice"
        assert set(cids) == expected, (
            f"{node.handle}: {len(set(cids) - expected)} unexpected, "
            f"{len(expected - set(cids))} missing records"
        )
        out[node.handle] = cids
    return out


def snapshot(node: RunningNode) -> set[str]:
    """The CIDs ``node`` holds right now (its whole feed, read inside its namespace)."""
    tool = Background(node.host, "wait", str(node.data_dir), "--count", "0")
    cids = tool.result()["cids"]
    assert isinstance(cids, list)
    return set(cids)


def pair_to(node: RunningNode, peer_did: str) -> Json | None:
    """``node``'s pair pulling from ``peer_did`` (``fedpeer pairs --json``), or None."""
    rows = node.cli_json("pairs")["pairs"]
    mine = [r for r in rows if r["peer_did"] == peer_did]
    assert len(mine) <= 1, f"{node.handle} has {len(mine)} pairs with {peer_did}"
    return dict(mine[0]) if mine else None


def wait_pair(
    node: RunningNode,
    peer_did: str,
    accept: Callable[[Json], bool],
    what: str,
    timeout: float = WAIT_S,
) -> Json:
    """Poll ``fedpeer pairs --json`` on ``node`` until its pair with ``peer_did``
    satisfies ``accept``; that row (bounded by ``timeout``)."""
    last: list[Json | None] = [None]

    def probe() -> Json | None:
        row = last[0] = pair_to(node, peer_did)
        return row if row is not None and accept(row) else None

    return poll_until(
        probe,
        timeout=timeout,
        what=f"{node.handle}'s pair to be {what}",
        describe=lambda: f"last row: {last[0]}\n{node.log_tail(1500)}",
    )
