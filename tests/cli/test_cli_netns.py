"""The CLI on a real (namespaced) LAN: ``run`` with mDNS, ``peers``, an invite URL that
carries the LAN address, two-way ``pair``, and ``doctor``'s multicast self-test.

Every process runs inside throw-away network namespaces (``tests/netns.py``), so
no mDNS or multicast traffic reaches the machine's real network. Skipped, with
the reason, when not root or without ``ip``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.netns import lan, skip_reason
from tests.nodeproc import PORT, RunningNode, fedpeer, wait_for_verified

pytestmark = pytest.mark.e2e

_SKIP = skip_reason()
needs_netns = pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")


@pytest.fixture
def two_hosts(tmp_path: Path) -> Iterator[tuple[RunningNode, RunningNode]]:
    with lan(2) as net:
        a_host, b_host = net.hosts
        a = RunningNode(a_host, tmp_path / "a", "alice").wait_ready()
        try:
            b = RunningNode(b_host, tmp_path / "b", "bob").wait_ready()
            try:
                yield a, b
            finally:
                assert b.stop() == 0
        finally:
            assert a.stop() == 0
            assert not (tmp_path / "a" / "node.url").exists()


@needs_netns
def test_peers_invite_and_two_way_pair_across_a_lan(
    two_hosts: tuple[RunningNode, RunningNode],
) -> None:
    a, b = two_hosts
    assert a.lines["mdns"] == "on (eth0)"
    assert a.lines["lan"] == f"https://{a.host.address}:{PORT}"
    entry = wait_for_verified(b, a.lines["did"])
    assert entry["handle"] == "alice"
    assert entry["url"] == f"https://{a.host.address}:{PORT}"
    table = fedpeer(b.host, b.data_dir, "peers")
    assert "✓" in table.stdout
    assert "alice" in table.stdout

    for i in range(5):
        added = fedpeer(
            a.host, a.data_dir, "records", "add",
            "--namespace", "notes", "--thread", "t", "--kind", "note", json.dumps({"i": i}),
        )  # fmt: skip
        assert added.returncode == 0, added.stderr
    made = fedpeer(a.host, a.data_dir, "invite", "create", "--json", "--no-qr")
    assert made.returncode == 0, made.stderr
    url = json.loads(made.stdout)["url"]
    # the node listens on 0.0.0.0: the invite names its LAN address, not loopback
    assert url.startswith(f"https://{a.host.address}:{PORT}/v1/invites/")

    paired = fedpeer(b.host, b.data_dir, "pair", url, "--timeout", "30", "--json")
    assert paired.returncode == 0, paired.stderr
    result = json.loads(paired.stdout)
    assert result["pair"]["state"] == "caught_up"
    assert result["pair"]["stats"]["records"] == 5
    assert result["reciprocal_url"] == f"https://{b.host.address}:{PORT}"
    listed = json.loads(fedpeer(b.host, b.data_dir, "records", "list", "--json").stdout)
    assert [v["body"]["i"] for v in listed["records"]] == list(range(5))


@needs_netns
def test_doctor_multicast_self_test_in_a_namespace(tmp_path: Path) -> None:
    with lan(1) as net:
        (host,) = net.hosts
        assert fedpeer(host, tmp_path, "init").returncode == 0
        ok = fedpeer(host, tmp_path, "doctor", "--interface", "eth0", "--interface", "lo")
        assert ok.returncode == 0, ok.stdout
        assert f"ok   multicast eth0: eth0 ({host.address}) sends and receives" in ok.stdout
        assert "ok   multicast lo: " in ok.stdout
        net.link_down(host)
        bad = fedpeer(host, tmp_path, "doctor", "--interface", "eth0", "--json")
        assert bad.returncode == 5
        checks = {c["name"]: c for c in json.loads(bad.stdout)["checks"]}
        assert checks["multicast eth0"]["status"] == "FAIL"
        assert "ip link set eth0 up" in checks["multicast eth0"]["fix"]
        missing = fedpeer(host, tmp_path, "doctor", "--interface", "wlan9")
        assert missing.returncode == 5
        assert "FAIL multicast wlan9: wlan9 has no IPv4 address" in missing.stdout
