"""Fixtures: LANs of network namespaces with a ``fedpeer run`` process on each host.

``two_laptops``: two namespaces joined by a veth pair, ``alice`` and ``bob``.
``three_hosts``: four namespaces on a bridge (itself in a fifth namespace):
``alice``, ``bob`` and ``carol`` run nodes, the fourth host is left free (for
an impostor).

Every host has ``lo`` up, ``eth0`` with a ``10.203.0.x/24`` address and a
``224.0.0.0/4`` route (``tests/netns.py``); each node listens on 0.0.0.0:8765
with mDNS on ``eth0`` and its own data dir under ``tmp_path``. Teardown always
runs, even when the test or the set-up fails: every node gets SIGTERM (and must
exit 0: a clean shutdown is part of what is tested), then the namespaces are
deleted, killing whatever still runs inside them.

The tests skip, naming the reason, only when they cannot create namespaces
(not root, no ``ip``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.lan_nodes import ThreeHosts, TwoLaptops, start_nodes, stop_nodes
from tests.netns import lan, skip_reason


def _skip_unless_netns() -> None:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)


def _check_clean_exit(codes: dict[str, int]) -> None:
    bad = {h: c for h, c in codes.items() if c != 0}
    assert not bad, f"nodes did not shut down cleanly on SIGTERM (exit codes): {bad}"


@pytest.fixture
def two_laptops(tmp_path: Path) -> Iterator[TwoLaptops]:
    _skip_unless_netns()
    with lan(2) as net:
        a, b = start_nodes(net.hosts, [tmp_path / "a", tmp_path / "b"], ["alice", "bob"])
        try:
            yield TwoLaptops(net, a, b)
        finally:
            codes = stop_nodes([b, a])
        _check_clean_exit(codes)


@pytest.fixture
def three_hosts(tmp_path: Path) -> Iterator[ThreeHosts]:
    _skip_unless_netns()
    with lan(4) as net:
        hosts = net.hosts[:3]
        dirs = [tmp_path / n for n in ("a", "b", "c")]
        a, b, c = start_nodes(hosts, dirs, ["alice", "bob", "carol"])
        try:
            yield ThreeHosts(net, (a, b, c), net.hosts[3])
        finally:
            codes = stop_nodes([c, b, a])
        _check_clean_exit(codes)
