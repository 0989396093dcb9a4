"""The CLI tells what to do next (issue 14): errors end in a next step, bad values
exit 2 naming the allowed range, progress never shows ``0/None``, every table has
``--json`` and never cuts a cell, the handle is not the host name, and ``unpair``
works from the command line on both sides."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from fedpeer.cli import EXIT_ERROR, EXIT_USAGE, cli
from fedpeer.cli.config import default_handle
from fedpeer.cli.output import table
from fedpeer.cli.pairs import next_try_text, progress_count
from fedpeer.peer import PairStatus
from fedpeer.sync.pairs import PairFilter, PairState

from .conftest import NodeThread, fp


def as_json(output: str) -> Any:
    return json.loads(output)


def test_invite_ttl_below_the_minimum_exits_2_naming_it(one_node: NodeThread) -> None:
    (a,) = one_node.nodes
    r = fp(a, "invite", "create", "--ttl", "1s")
    assert r.exit_code == EXIT_USAGE
    assert "60 s" in r.stderr
    assert "90 days" in r.stderr
    r = fp(a, "invite", "create", "--ttl", "91d")
    assert r.exit_code == EXIT_USAGE
    assert "from 60 s to 90 days" in r.stderr
    assert fp(a, "invite", "create", "--ttl", "60s", "--no-qr").exit_code == 0


def test_a_bad_record_id_says_how_to_find_one(one_node: NodeThread) -> None:
    (a,) = one_node.nodes
    r = fp(a, "records", "get", "bogus")
    assert r.exit_code == EXIT_ERROR
    assert r.stderr.startswith("MALFORMED: 'bogus' is not a record id (CID)")
    assert "`fedpeer records list`" in r.stderr
    assert "Pad bits" not in r.stderr


def test_pair_to_an_unreachable_node_is_a_typed_error_with_a_hint(one_node: NodeThread) -> None:
    (a,) = one_node.nodes
    # a port on loopback that nothing listens on (bound, never listening)
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        port = hole.getsockname()[1]
        other = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"
        url = f"http://127.0.0.1:{port}/v1/invites/{'ab' * 16}?issuer={other}#secret={'x' * 43}"
        r = fp(a, "pair", url)
    assert r.exit_code == EXIT_ERROR
    assert r.stderr.startswith("PEER_UNREACHABLE: ")
    assert "ConnectError" not in r.stderr
    assert "fedpeer doctor --peer" in r.stderr


def test_progress_shows_totals_only_once_known() -> None:
    assert progress_count(0, None) == "0"
    assert progress_count(12, 40) == "12/40"
    assert "None" not in progress_count(5, None)


def _status(next_try_s: float | None) -> PairStatus:
    return PairStatus(
        id="p1",
        local_did="did:key:a",
        peer_did="did:key:b",
        peer_url="http://10.0.0.5:8765",
        filter=PairFilter(),
        state=PairState.FAILING if next_try_s is not None else PairState.CAUGHT_UP,
        cursor=None,
        retries=1,
        last_error=None,
        created_ms=0,
        updated_ms=0,
        author_allowlist=None,
        has_credential=True,
        stats={},
        lag={},
        next_try_s=next_try_s,
    )


def test_pairs_shows_when_a_failing_pair_tries_next() -> None:
    assert next_try_text(_status(None)) == "-"
    assert next_try_text(_status(12.4)) == "in 12s"
    assert next_try_text(_status(300.0)) == "in 5m"
    assert next_try_text(_status(7300.0)) == "in 2h"
    back = PairStatus.from_dict(_status(42.5).to_dict())
    assert back.next_try_s == 42.5


def test_tables_fold_long_cells_instead_of_cutting_them() -> None:
    from rich.console import Console

    url = "http://192.168.100.200:8765/" + "x" * 120
    out = table("id", "url")
    out.add_row("p1", url)
    console = Console(width=60, record=True, soft_wrap=False)
    console.print(out)
    text = console.export_text()
    assert "…" not in text
    assert "".join(line.strip().split()[-1] for line in text.splitlines()[1:]).endswith("x" * 40)
    flat = re.sub(r"\s+", "", text)
    assert url in flat


def test_every_command_that_prints_a_table_takes_json() -> None:
    """The commands whose code builds a table (``output.table``) have ``--json``."""
    import importlib
    import inspect

    tabled = []
    for name in ("invite", "pairs", "records", "token", "doctor", "node", "archive"):
        module = importlib.import_module(f"fedpeer.cli.{name}")
        source = inspect.getsource(module)
        for name, obj in vars(module).items():
            if isinstance(obj, click.Command) and obj.callback is not None:
                body = inspect.getsource(obj.callback)
                if "table(" in body:
                    tabled.append((name, obj))
        assert source
    assert len(tabled) >= 5, tabled
    for name, command in tabled:
        assert any(p.name == "as_json" for p in command.params), f"{name} has no --json"


def test_the_default_handle_comes_from_the_did_not_the_host_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a telling host name (the real one could be "t" or "fedpeer" and be "found")
    monkeypatch.setattr(socket, "gethostname", lambda: "annes-laptop.local")
    did = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"
    assert default_handle(did) == "fedpeer-ta2doK"
    assert socket.gethostname().split(".")[0] not in default_handle(did)


def test_the_node_announces_the_default_handle(tmp_path: Path) -> None:
    # `fedpeer init` shows the DID; a node without a handle setting uses fedpeer-<tail>
    r = CliRunner().invoke(cli, ["--data-dir", str(tmp_path / "d"), "init"])
    assert r.exit_code == 0
    did = r.stdout.strip()
    assert default_handle(did).endswith(did[-6:])


def test_unpair_from_the_command_line_drops_both_sides(two_nodes: NodeThread) -> None:
    a, b = two_nodes.nodes
    url = as_json(fp(a, "invite", "create", "--no-qr", "--json").stdout)["url"]
    assert fp(b, "pair", url, "--timeout", "30").exit_code == 0
    (pair,) = as_json(fp(b, "pairs", "--json").stdout)["pairs"]
    r = fp(b, "unpair", pair["id"])
    assert r.exit_code == 0, r.output
    assert f"unpaired from {a.did}" in r.stdout
    assert "the peer dropped 1 pair(s)" in r.stdout
    assert as_json(fp(b, "pairs", "--json").stdout)["pairs"] == []
    assert as_json(fp(a, "pairs", "--json").stdout)["pairs"] == []
    again = fp(b, "unpair", a.did)
    assert again.exit_code == EXIT_ERROR
    assert again.stderr.startswith("PAIR_NOT_FOUND: ")
    assert "fedpeer pairs" in again.stderr
