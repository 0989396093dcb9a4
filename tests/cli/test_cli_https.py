"""The operator CLI against nodes serving HTTPS (docs/protocol.md §6.6).

The CLI trusts exactly its own node's certificate (``tls.crt`` in the data dir),
``doctor`` says how the node serves, and a pairing between two HTTPS nodes made
through the CLI pins the peer.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from click.testing import CliRunner

from fedpeer.cli import cli
from fedpeer.peer import NodeConfig
from tests.cli.conftest import fp, running_nodes

TLS = NodeConfig(handle="cli-test", tls=True)


def test_operator_commands_doctor_and_pairing_over_https(tmp_path: Path) -> None:
    with running_nodes(tmp_path, "a", "b", config=TLS) as nodes:
        a, b = nodes.nodes
        assert a.url.startswith("https://")
        assert a.tls is not None
        r = fp(a, "doctor", "--interface", "lo", "--port", "0", "--peer", b.url)
        assert r.exit_code == 0, r.output
        pin = re.escape(a.tls.current.pin)
        assert re.search(rf"^ok +node: running over HTTPS \(TLS pin {pin}\) at ", r.stdout, re.M)
        assert re.search(r"^ok +clock: .*manifest of did:key:.*, TLS pin matches", r.stdout, re.M)
        created = fp(a, "invite", "create", "--no-qr", "--json")
        assert created.exit_code == 0, created.output
        url = json.loads(created.stdout)["url"]
        assert f"&pin={a.tls.current.pin}#secret=" in url
        paired = fp(b, "pair", url, "--json", "--no-wait")
        assert paired.exit_code == 0, paired.output
        pairs = json.loads(fp(b, "pairs", "--json").stdout)["pairs"]
        assert [p["peer_url"] for p in pairs] == [a.url]


def test_the_cli_refuses_a_node_with_another_certificate(tmp_path: Path) -> None:
    """``--url`` pointing at another HTTPS node: the data dir's certificate does
    not match, so the admin token is never sent there."""
    with running_nodes(tmp_path, "a", "b", config=TLS) as nodes:
        a, b = nodes.nodes
        assert a.data_dir is not None
        argv = ["--data-dir", str(a.data_dir), "--url", b.url, "pairs"]
        r = CliRunner().invoke(cli, argv)
        assert r.exit_code != 0
        assert "NODE_NOT_RUNNING" in r.output, r.output
