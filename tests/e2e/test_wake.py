"""A peer seen again is retried at once (issue 14), on two "laptops" (namespaces).

The nodes back off 5 to 10 minutes after a failure (``sync_backoff_base_s = 600``),
so without the wake a failing pair would not retry within this test's 30 s bound:

1. B is killed (SIGKILL): A's pair to B fails and backs off for minutes (``fedpeer
   pairs`` shows the next try). B restarts and adds a record: A has it within
   seconds (B's fresh mDNS announcement, verified, and B's own requests to A wake
   A's pair).
2. B's link goes down long enough for both pairs to fail; it comes back: both sides
   converge within seconds (the network-change watcher wakes every failing pair;
   each side's first request wakes the other).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.lan_nodes import (
    SLOW_BACKOFF,
    TwoLaptops,
    add_records,
    pair_to,
    start_nodes,
    stop_nodes,
    wait_pair,
    wait_records,
)
from tests.netns import lan, skip_reason
from tests.nodeproc import wait_for_verified

CONVERGE_S = 30.0  # far below the 300..600 s a pair would otherwise wait


@pytest.fixture
def slow_laptops(tmp_path: Path) -> Iterator[TwoLaptops]:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    with lan(2) as net:
        a, b = start_nodes(
            net.hosts, [tmp_path / "a", tmp_path / "b"], ["alice", "bob"], tuning=SLOW_BACKOFF
        )
        try:
            yield TwoLaptops(net, a, b)
        finally:
            stop_nodes([b, a])


def _long_backoff(row: dict[str, object]) -> bool:
    wait = row.get("next_try_s")
    return row["state"] == "failing" and isinstance(wait, int | float) and wait > 2 * CONVERGE_S


def test_a_peer_seen_again_wakes_its_failing_pairs(slow_laptops: TwoLaptops) -> None:
    net, a, b = slow_laptops.net, slow_laptops.a, slow_laptops.b
    wait_for_verified(b, a.did)
    paired = b.cli_json("pair", a.cli_json("invite", "create", "--no-qr")["url"])
    assert paired["reverse_pair"]["created"] is True
    expected = {c for c in add_records(a, 5, "a0").result()["cids"]}
    expected |= set(add_records(b, 5, "b0").result()["cids"])
    wait_records(expected, a, b)

    # --- 1. B is killed: A's pair backs off for minutes; `pairs` says when it retries
    b.kill()
    row = wait_pair(a, b.did, _long_backoff, "failing with a long backoff", timeout=60)
    table = a.cli("pairs")
    assert table.returncode == 0
    assert "next try" in table.stdout
    assert any(f"in {m}m" in table.stdout for m in range(4, 11)), table.stdout
    b.restart()
    started = time.monotonic()
    expected |= set(add_records(b, 3, "b1").result()["cids"])
    wait_records(expected, a, timeout=CONVERGE_S)
    took = time.monotonic() - started
    print(f"converged {took:.1f} s after the peer restarted (backoff was {row['next_try_s']} s)")
    woken = pair_to(a, b.did)
    assert woken is not None
    assert woken["next_try_s"] is None  # no longer backing off

    # --- 2. the link goes down until both pairs back off for minutes, then comes back
    net.link_down(b.host)
    for node, peer in ((a, b), (b, a)):
        wait_pair(node, peer.did, _long_backoff, "failing with a long backoff", timeout=90)
    added_a = set(add_records(a, 3, "a2").result()["cids"])
    added_b = set(add_records(b, 3, "b2").result()["cids"])
    expected |= added_a | added_b
    net.link_up(b.host)
    started = time.monotonic()
    wait_records(expected, a, b, timeout=CONVERGE_S)
    print(f"converged {time.monotonic() - started:.1f} s after the link came back")
