"""Two laptops on one LAN find each other, pair with one invite and stay in sync,
through a dead link and a SIGKILL; three hosts see each other; an impostor is refused.
Every node serves HTTPS (the ``fedpeer run`` default) and every pair pins its
peer's certificate through the DID-signed manifest (protocol.md §6.6).

Everything runs as real processes (``fedpeer run``, the ``fedpeer`` CLI,
``ns_tool.py``) inside throw-away network namespaces (see ``conftest.py``), so
no multicast reaches the machine's real network. Waiting:

* for records: the node's own longpoll, from inside the namespace (``ns_tool.py
  wait``): the helper returns as soon as the last record lands;
* for another process's roster or pair state: ``fedpeer peers|pairs --json``
  asked again, a bounded number of times under a deadline (there is no event a
  test process could subscribe to across processes); each ask is a whole CLI
  process, which paces the loop: no sleeps anywhere.

What is checked is exact: both sides end with exactly the union of every CID
added on either side, each once, and each pair has counted every record of its
source exactly once (so a pair resumed from its stored cursor after SIGKILL and
did not pull twice).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.lan_nodes import (
    TOOL,
    ThreeHosts,
    TwoLaptops,
    add_records,
    pair_to,
    snapshot,
    wait_pair,
    wait_records,
)
from tests.netns import Host
from tests.nodeproc import PORT, WAIT_S, RunningNode, clean_env, poll_until, wait_for_verified

pytestmark = pytest.mark.e2e

IMPOSTOR = str(Path(__file__).parents[1] / "peer" / "discovery_node.py")
Json = dict[str, Any]


def cids_of(*results: Json) -> set[str]:
    out: set[str] = set()
    for r in results:
        out.update(r["cids"])
    return out


def caught_up_with(total: int) -> Callable[[Json], bool]:
    """A pair row that is caught up and has counted ``total`` records (or more: the
    caller then sees the difference in its assertion)."""
    return lambda r: r["state"] == "caught_up" and r["stats"]["records"] >= total


class Phases:
    """Prints how long each step took (shown by pytest when a test fails, or with -s)."""

    def __init__(self) -> None:
        self.t0 = self.last = time.monotonic()

    def __call__(self, name: str) -> None:
        now = time.monotonic()
        print(f"[{now - self.t0:6.2f} s] {name} ({now - self.last:.2f} s)", flush=True)
        self.last = now


def test_two_laptops_pair_sync_and_recover(two_laptops: TwoLaptops) -> None:
    net, a, b = two_laptops.net, two_laptops.a, two_laptops.b
    phase = Phases()

    # --- B sees A on the LAN, verified against A's signed manifest
    assert a.lines["mdns"] == "on (eth0)"
    seen = wait_for_verified(b, a.did)
    assert (seen["handle"], seen["url"]) == ("alice", a.lan_url)
    assert seen["addresses"] == [a.host.address]

    phase("B sees A verified")

    # --- one invite, pair both ways
    invite = a.cli_json("invite", "create", "--no-qr")
    url = invite["url"]
    assert url.startswith(f"{a.lan_url}/v1/invites/")
    assert f"issuer={a.did}" in url
    paired = b.cli_json("pair", url, "--timeout", "30")
    assert paired["issuer_did"] == a.did
    assert paired["two_way"] is True
    assert paired["reciprocal_url"] == b.lan_url
    assert paired["pair"]["state"] == "caught_up"
    assert paired["reverse_pair"]["created"] is True
    b_pair = pair_to(b, a.did)
    a_pair = pair_to(a, b.did)
    assert b_pair is not None
    assert a_pair is not None
    assert b_pair["peer_url"] == a.lan_url
    assert a_pair["peer_url"] == b.lan_url
    # both ways over HTTPS pinned to the peer's DID (protocol.md §6.6)
    assert a.lan_url.startswith("https://")
    assert b.lan_url.startswith("https://")
    assert a_pair["id"] == paired["reverse_pair"]["id"]

    phase("invited and paired both ways")

    # --- 1,000 records added on each side appear on the other
    on_a, on_b = add_records(a, 1000, "a1"), add_records(b, 1000, "b1")
    expected = cids_of(on_a.result(), on_b.result())
    assert len(expected) == 2000
    wait_records(expected, a, b)

    phase("1,000 records each way synced")

    # --- the link goes down: both pairs go failing (each notices when its request in
    # flight times out, ~16 s with the 1 s longpoll of TUNING); records keep being
    # added on both sides meanwhile
    net.link_down(b.host)
    on_a, on_b = add_records(a, 100, "a2"), add_records(b, 100, "b2")
    a2, b2 = cids_of(on_a.result()), cids_of(on_b.result())
    for node, peer in ((b, a), (a, b)):
        row = wait_pair(node, peer.did, lambda r: r["state"] == "failing", "failing", timeout=60)
        assert row["last_error"]["code"] == "PEER_UNREACHABLE", row
    # the partition is real: what each side added since stayed on that side
    assert snapshot(a) == expected | a2
    assert snapshot(b) == expected | b2
    expected |= a2 | b2
    phase("both pairs failing")

    # --- the link comes back: both recover and converge by themselves (no kick)
    net.link_up(b.host)
    wait_records(expected, a, b, timeout=60)
    for node, peer in ((a, b), (b, a)):
        row = wait_pair(node, peer.did, caught_up_with(len(expected)), "caught up again")
        # back to normal by itself: the retry counter reset by a successful page, the
        # failures still counted in the stats
        assert row["retries"] == 0, row
        assert row["stats"]["errors_total"] >= 1, row

    phase("recovered and converged")

    # --- B is killed (SIGKILL) while A keeps adding, then restarted: it resumes
    before_kill = add_records(b, 100, "b3").result()  # committed on B before the kill
    bulk = add_records(a, 300, "a3")
    assert b.kill() == -signal.SIGKILL
    expected |= cids_of(before_kill, bulk.result())
    assert (b.data_dir / "node.url").exists()  # no clean shutdown ran
    b.restart()
    wait_records(expected, a, b)
    assert len(expected) == 2000 + 200 + 400
    for node, peer in ((b, a), (a, b)):
        row = wait_pair(node, peer.did, caught_up_with(len(expected)), "caught up after restart")
        # Every record of the source counted once: the pair resumed from its stored
        # cursor (a full re-pull would count past the total); records dedupe by CID.
        assert row["stats"]["records"] == len(expected), row
    resumed = pair_to(b, a.did)
    assert resumed is not None
    assert resumed["id"] == b_pair["id"]  # the same pair, loaded from B's store
    phase("B resumed after SIGKILL, converged")
    listed = b.cli_json("records", "list", "--limit", "10000")
    assert listed["has_more"] is False
    assert sorted(r["cid"] for r in listed["records"]) == sorted(expected)


# --- three hosts and an impostor ---------------------------------------------------------


def verified_others(node: RunningNode, others: list[RunningNode]) -> Json | None:
    """``node``'s roster once every one of ``others`` is in it verified at its LAN URL."""
    roster = node.cli_json("peers")
    verified = {(p["did"], p["url"]) for p in roster["peers"] if p["status"] == "verified"}
    want = {(o.did, o.lan_url) for o in others}
    return dict(roster) if want <= verified else None


class Impostor:
    """``tests/peer/discovery_node.py --impostor-of DID`` in a namespace: a node with
    another key serving on PORT that announces two services claiming DID (one TXT
    signed with its own key, one replaying the real node's signed TXT)."""

    def __init__(self, host: Host, did: str, txt: dict[str, str], log: Path) -> None:
        self._log = log.open("ab")
        argv = [
            sys.executable, IMPOSTOR, "--handle", "mallory", "--impostor-of", did,
            "--replay-txt", json.dumps(txt), "--port", str(PORT), "--address", host.address,
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            host.exec_args(*argv),
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=clean_env({"PYTHONUNBUFFERED": "1"}),
        )
        self.events: list[Json] = []
        self.announced = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        try:
            for line in self.proc.stdout:
                if line.strip():
                    self.events.append(json.loads(line))
                    if self.events[-1]["event"] == "impostor":
                        self.announced.set()
        finally:
            self.announced.set()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        code = self.proc.wait(timeout=10)
        self._log.close()
        return code


def test_three_hosts_see_each_other_and_an_impostor_is_refused(
    three_hosts: ThreeHosts, tmp_path: Path
) -> None:
    nodes = list(three_hosts.nodes)
    a, b, c = nodes
    for node in nodes:
        others = [o for o in nodes if o is not node]
        roster = poll_until(
            lambda node=node, others=others: verified_others(node, others),  # type: ignore[misc]
            timeout=WAIT_S,
            what=f"{node.handle} to see the other two verified",
        )
        assert node.did not in {p["did"] for p in roster["peers"]}

    # --- an impostor on the fourth host claims A's DID
    roster_b = b.cli_json("peers")
    (real,) = [p for p in roster_b["peers"] if p["did"] == a.did]
    found = subprocess.run(
        three_hosts.spare.exec_args(sys.executable, TOOL, "txt", real["name"]),
        capture_output=True, text=True, timeout=30, env=clean_env(),
    )  # fmt: skip
    assert found.returncode == 0, found.stderr
    txt = json.loads(found.stdout)
    assert txt["did"] == a.did
    mallory = Impostor(three_hosts.spare, a.did, txt, tmp_path / "mallory.log")
    try:
        mallory.announced.wait(WAIT_S)
        assert any(e["event"] == "impostor" for e in mallory.events), (
            f"the impostor did not announce: {mallory.events}\n"
            + (tmp_path / "mallory.log").read_text()[-2000:]
        )

        def judged(node: RunningNode) -> Json | None:
            roster = node.cli_json("peers")
            mine = {str(p["name"]).split(".")[0]: p for p in roster["peers"] if p["did"] == a.did}
            forged, replay = mine.get("impostor-forged"), mine.get("impostor-replay")
            if forged and replay and forged["status"] == replay["status"] == "invalid":
                return mine
            return None

        for node in (b, c):
            mine = poll_until(
                lambda node=node: judged(node),  # type: ignore[misc]
                timeout=WAIT_S,
                what=f"{node.handle} to judge both impostor announcements invalid",
            )
            assert str(mine["impostor-forged"]["reason"]).startswith("BAD_SIGNATURE")
            assert str(mine["impostor-replay"]["reason"]).startswith("TLS_PIN_MISMATCH")
            assert mine["impostor-replay"]["addresses"] == [three_hosts.spare.address]
            (genuine,) = [p for n, p in mine.items() if not n.startswith("impostor-")]
            assert (genuine["status"], genuine["url"]) == ("verified", a.lan_url)
        table = b.cli("peers").stdout
        assert "✗" in table
        assert "never offered for pairing" in table

        # --- pair refuses it: A's real invite, pointed at the impostor's address
        url = a.cli_json("invite", "create", "--no-qr")["url"]
        lured = url.replace(a.lan_url, f"https://{three_hosts.spare.address}:{PORT}")
        assert lured != url
        refused = b.cli("pair", lured, "--timeout", "10")
        assert refused.returncode == 1, (refused.stdout, refused.stderr)
        assert refused.stderr.startswith("TLS_PIN_MISMATCH: "), refused.stderr
        assert b.cli_json("pairs")["pairs"] == []
        # ... while the genuine URL of the same invite (nothing was redeemed) pairs
        paired = b.cli_json("pair", url, "--timeout", "30")
        assert (paired["issuer_did"], paired["issuer_url"]) == (a.did, a.lan_url)
        assert paired["pair"]["state"] == "caught_up"
        assert mallory.proc.poll() is None
    finally:
        code = mallory.stop()
    assert code == 0, "the impostor did not stop cleanly"
