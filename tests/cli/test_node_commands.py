"""Operator commands end to end: the CLI (click's runner, in-process) against real
nodes (real SQLite, real hypercorn on 127.0.0.1) running in a background thread.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx

from fedpeer.cli import EXIT_ERROR, EXIT_USAGE
from fedpeer.consent.invites import confirmation_code, parse_invite_url
from fedpeer.errors import FedpeerError, TimedOut
from fedpeer.identity.keys import SigningKey
from fedpeer.peer import Node

from .conftest import NodeThread, fp


def admin_token(node: Node) -> str:
    assert node.admin_token_path is not None
    return node.admin_token_path.read_text().strip()


def as_json(output: str) -> Any:
    return json.loads(output)


def new_invite(node: Node, *args: str) -> dict[str, Any]:
    r = fp(node, "invite", "create", "--json", *args)
    assert r.exit_code == 0, r.output
    return as_json(r.stdout)  # type: ignore[no-any-return]


# --- invites ---------------------------------------------------------------------------


def test_invite_create_list_revoke(one_node: NodeThread) -> None:
    (a,) = one_node.nodes
    r = fp(a, "invite", "create", "--uses", "2", "--ttl", "2h", "--namespace", "notes/")
    assert r.exit_code == 0, r.output
    urls = [line for line in r.stdout.splitlines() if line.startswith("http://")]
    assert len(urls) == 1
    url = urls[0]
    parsed = parse_invite_url(url)
    assert parsed.issuer_did == a.did
    assert parsed.node_url == a.url
    assert "2 uses" in r.stdout
    assert "namespace notes/*" in r.stdout
    assert "▀" in r.stdout or "█" in r.stdout  # the QR code
    # the hint carries the same --data-dir as the command (issue 14)
    assert f"fedpeer --data-dir {a.data_dir} pair '{url}'" in r.stdout

    made = new_invite(a, "--scopes", "records:read,sync:read", "--thread", "t1", "--no-qr")
    inv = made["invite"]
    assert inv["max_uses"] == 1
    assert inv["scopes"] == ["records:read", "sync:read"]
    assert inv["scope_target"] == {"type": "thread", "value": "t1", "namespace": None}
    assert inv["expires_ms"] - inv["created_ms"] == 86_400_000  # the node's default: 1 day

    listed = fp(a, "invite", "list", "--json")
    assert listed.exit_code == 0, listed.output
    states = {i["invite_id"]: i["state"] for i in as_json(listed.stdout)["invites"]}
    assert states == {parsed.invite_id: "active", made["invite_id"]: "active"}
    table = fp(a, "invite", "list")
    assert parsed.invite_id in table.stdout
    assert "1/" not in table.stdout
    assert "0/2" in table.stdout

    revoked = fp(a, "invite", "revoke", parsed.invite_id)
    assert revoked.exit_code == 0, revoked.output
    assert "revoked" in revoked.stdout
    assert "already" not in revoked.stdout
    again = fp(a, "invite", "revoke", parsed.invite_id)
    assert "was already revoked" in again.stdout
    only = as_json(fp(a, "invite", "list", "--state", "revoked", "--json").stdout)["invites"]
    assert [i["invite_id"] for i in only] == [parsed.invite_id]


def test_invite_create_wait_shows_the_redemption(two_nodes: NodeThread) -> None:
    """``invite create --wait`` (a separate process, so the pair can run meanwhile)
    prints the redeemer and the same confirmation code the redeemer sees."""
    a, b = two_nodes.nodes
    argv = [sys.executable, "-m", "fedpeer", "--data-dir", str(a.data_dir), "--url", a.url]
    proc = subprocess.Popen(
        [*argv, "invite", "create", "--no-qr", "--wait", "--timeout", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    watchdog = threading.Timer(60, proc.kill)  # bounds the blocking reads
    watchdog.start()
    try:
        assert proc.stdout is not None
        url = ""
        for _ in range(20):
            line = proc.stdout.readline()
            if line.startswith("http://"):
                url = line.strip()
                break
        assert url, "no invite URL printed"
        paired = fp(b, "pair", url, "--one-way", "--no-wait")
        assert paired.exit_code == 0, paired.output
        out, err = proc.communicate(timeout=60)
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    code = confirmation_code(a.did, b.did, parse_invite_url(url).invite_id)
    assert f"redeemed by {b.did} (federated); confirmation code {code}" in out
    assert f"confirmation code: {code}" in paired.stdout


def test_unknown_invite_id_says_invite_not_found(one_node: NodeThread) -> None:
    (a,) = one_node.nodes
    for bad in ("0123456789abcdef0123456789abcdef", "nope"):
        r = fp(a, "invite", "revoke", bad)
        assert r.exit_code == EXIT_ERROR
        assert r.stderr.startswith("INVITE_NOT_FOUND: ")
        assert "Traceback" not in r.output


def test_invite_argument_errors_are_usage_errors(one_node: NodeThread) -> None:
    (a,) = one_node.nodes
    r = fp(a, "invite", "create", "--scopes", "reader,root")
    assert r.exit_code == EXIT_USAGE
    assert "--scopes" in r.stderr
    assert "records:read" in r.stderr
    r = fp(a, "invite", "create", "--ttl", "soon")
    assert r.exit_code == EXIT_USAGE
    assert "duration" in r.stderr
    r = fp(a, "invite", "create", "--namespace", "/abs")
    assert r.exit_code == EXIT_USAGE
    assert "--namespace" in r.stderr
    r = fp(a, "invite", "create", "--uses", "0")
    assert r.exit_code == EXIT_USAGE
    assert as_json(fp(a, "invite", "list", "--json").stdout)["invites"] == []


# --- records ---------------------------------------------------------------------------


def test_records_add_list_get(one_node: NodeThread) -> None:
    (a,) = one_node.nodes
    add = ["records", "add", "--namespace", "notes", "--kind", "note"]
    r1 = fp(a, *add, "--thread", "t1", '{"text": "hello", "n": 1}')
    assert r1.exit_code == 0, r1.output
    cid1 = r1.stdout.strip()
    assert cid1.startswith("bafy")
    r2 = fp(a, *add, "--thread", "t2", "-", input='{"text": "from stdin", "n": 2}')
    assert r2.exit_code == 0, r2.output
    cid2 = r2.stdout.strip()

    page = as_json(fp(a, "records", "list", "--json").stdout)
    assert [(v["cid"], v["body"]) for v in page["records"]] == [
        (cid1, {"text": "hello", "n": 1}),
        (cid2, {"text": "from stdin", "n": 2}),
    ]
    assert all(v["author"] == a.did and v["namespace"] == "notes" for v in page["records"])
    assert page["has_more"] is False

    only_t2 = as_json(fp(a, "records", "list", "--thread", "t2", "--json").stdout)
    assert [v["cid"] for v in only_t2["records"]] == [cid2]

    first = fp(a, "records", "list", "--limit", "1")
    assert cid1 in first.stdout
    assert cid2 not in first.stdout
    m = re.search(r"more: --since (\S+)", first.stdout)
    assert m, first.stdout
    rest = as_json(fp(a, "records", "list", "--since", m.group(1), "--json").stdout)
    assert [v["cid"] for v in rest["records"]] == [cid2]

    got = fp(a, "records", "get", cid1)
    assert got.exit_code == 0, got.output
    view = as_json(got.stdout)
    assert view["cid"] == cid1
    assert view["body"] == {"text": "hello", "n": 1}
    assert (view["thread"], view["kind"], view["author"]) == ("t1", "note", a.did)


def test_records_errors(one_node: NodeThread) -> None:
    (a,) = one_node.nodes
    add = ["records", "add", "--namespace", "notes", "--thread", "t", "--kind", "note"]
    bad_json = fp(a, *add, "{text: hi}")
    assert bad_json.exit_code == EXIT_USAGE
    assert "not valid JSON" in bad_json.stderr
    bad_stdin = fp(a, *add, "-", input="[1, 2")
    assert bad_stdin.exit_code == EXIT_USAGE
    missing = fp(a, "records", "add", "--namespace", "n", "--kind", "k", "{}")
    assert missing.exit_code == EXIT_USAGE
    assert "--thread" in missing.stderr
    # a well-formed CID the node does not hold
    unknown = "bafyreigilo63msmzkkqnpeykkhv4lfbyijohryt6pyioxku6apyyqz5tte"
    r = fp(a, "records", "get", unknown)
    assert r.exit_code == EXIT_ERROR
    assert r.stderr.startswith("RECORD_NOT_FOUND: ")
    r = fp(a, "records", "get", "not-a-cid")
    assert r.exit_code == EXIT_ERROR
    assert r.stderr.startswith("MALFORMED: ")
    assert as_json(fp(a, "records", "list", "--json").stdout)["records"] == []


# --- tokens ----------------------------------------------------------------------------


def test_token_create_list_rotate_revoke(one_node: NodeThread) -> None:
    (a,) = one_node.nodes
    r = fp(a, "token", "create", "--name", "ci reader", "--scopes", "reader", "--json")
    assert r.exit_code == 0, r.output
    made = as_json(r.stdout)
    sa_id, bearer = made["service_account"]["id"], made["token"]
    assert made["service_account"]["scopes"] == ["records:read", "sync:read"]

    def status(token: str) -> int:
        return httpx.get(
            a.url + "/v1/sync/changes", headers={"Authorization": f"Bearer {token}"}, timeout=10
        ).status_code

    assert status(bearer) == 200
    listed = as_json(fp(a, "token", "list", "--json").stdout)["service_accounts"]
    mine = [s for s in listed if s["id"] == sa_id]
    assert mine
    assert mine[0]["name"] == "ci reader"
    assert mine[0]["revoked_ms"] is None
    assert (mine[0]["written_records"], mine[0]["written_bytes"]) == (0, 0)  # write quota use
    table = fp(a, "token", "list").stdout
    assert "ci reader" in table
    assert "written" in table
    assert "0 records, 0 B" in table

    plain = fp(a, "token", "create", "--name", "plain")
    assert plain.exit_code == 0
    assert plain.stdout.strip().startswith("fp_")  # only the token on stdout
    assert "shown once" in plain.stderr

    rotated = fp(a, "token", "rotate", sa_id)
    assert rotated.exit_code == 0, rotated.output
    new_bearer = rotated.stdout.strip()
    assert new_bearer.startswith("fp_")
    assert new_bearer != bearer
    assert status(bearer) == 401
    assert status(new_bearer) == 200

    revoked = fp(a, "token", "revoke", sa_id)
    assert revoked.exit_code == 0, revoked.output
    assert status(new_bearer) == 401
    listed = as_json(fp(a, "token", "list", "--json").stdout)["service_accounts"]
    assert [s["revoked_ms"] is not None for s in listed if s["id"] == sa_id] == [True]

    unknown = fp(a, "token", "revoke", "0" * 20)
    assert unknown.exit_code == EXIT_ERROR
    assert unknown.stderr.startswith("SERVICE_ACCOUNT_NOT_FOUND: ")
    bad = fp(a, "token", "create", "--scopes", "superuser")
    assert bad.exit_code == EXIT_USAGE
    assert "admin" in bad.stderr


def test_token_rotate_admin_replaces_the_token_file(one_node: NodeThread) -> None:
    (a,) = one_node.nodes
    old = admin_token(a)
    r = fp(a, "token", "rotate-admin")
    assert r.exit_code == 0, r.output
    new = admin_token(a)
    assert new != old
    assert new.startswith("fp_")
    assert a.admin_token_path is not None
    assert a.admin_token_path.stat().st_mode & 0o777 == 0o600
    assert fp(a, "token", "list").exit_code == 0  # the CLI reads the new file
    refused = httpx.get(a.url + "/v1/service-accounts", headers={"Authorization": f"Bearer {old}"})
    assert refused.status_code == 401


def test_refused_token_says_which_token(one_node: NodeThread) -> None:
    (a,) = one_node.nodes
    r = fp(a, "pairs", env={"FEDPEER_TOKEN": "fp_" + "0" * 20 + "_" + "1" * 64})
    assert r.exit_code == EXIT_ERROR
    assert r.stderr.startswith("TOKEN_INVALID: ")
    assert "FEDPEER_TOKEN" in r.stderr
    assert "rotate-admin" in r.stderr


# --- pairing ---------------------------------------------------------------------------


def test_pairs_empty_then_one_way_pair(two_nodes: NodeThread) -> None:
    a, b = two_nodes.nodes
    add = ["records", "add", "--namespace", "notes", "--thread", "t1", "--kind", "note"]
    cids = [fp(a, *add, json.dumps({"n": i})).stdout.strip() for i in range(3)]
    empty = fp(b, "pairs")
    assert empty.exit_code == 0
    assert "no pairs" in empty.stdout
    assert as_json(fp(b, "pairs", "--json").stdout) == {"pairs": []}

    url = new_invite(a, "--no-qr")["url"]
    r = fp(b, "pair", url, "--one-way", "--timeout", "30")
    assert r.exit_code == 0, r.output
    m = re.search(r"confirmation code: (\d{6})", r.stdout)
    assert m, r.stdout
    invite_id = parse_invite_url(url).invite_id
    assert m.group(1) == confirmation_code(a.did, b.did, invite_id)
    assert "caught up: 3 records" in r.stdout
    assert "two-way" not in r.stdout

    on_b = as_json(fp(b, "records", "list", "--json").stdout)["records"]
    assert [v["cid"] for v in on_b] == cids
    rows = as_json(fp(b, "pairs", "--json").stdout)["pairs"]
    assert len(rows) == 1
    assert (rows[0]["peer_did"], rows[0]["peer_url"]) == (a.did, a.url)
    assert rows[0]["state"] == "caught_up"
    assert rows[0]["stats"]["records"] == 3
    assert rows[0]["origin"] == "owner"  # b set it up (a redeem's pull back would be "redeem")
    table = fp(b, "pairs").stdout
    assert rows[0]["id"] in table
    assert "caught_up" in table
    assert "caught up" in table

    # The issuer's side shows who redeemed and the same confirmation code.
    invites = as_json(fp(a, "invite", "list", "--json").stdout)["invites"]
    (red,) = invites[0]["redemptions"]
    assert (red["holder_did"], red["confirmation_code"]) == (b.did, m.group(1))
    assert m.group(1) in fp(a, "invite", "list").stdout
    # one-way: no credential was minted on b for a
    accounts = as_json(fp(b, "token", "list", "--json").stdout)["service_accounts"]
    assert [s["origin"] for s in accounts] == ["bootstrap"]

    kicked = fp(b, "pairs", "kick", rows[0]["id"])
    assert kicked.exit_code == 0
    assert rows[0]["id"] in kicked.stdout
    paused = fp(b, "pairs", "pause", rows[0]["id"])
    assert paused.exit_code == 0
    assert "paused" in paused.stdout
    assert fp(b, "pairs", "pause", "p_" + "0" * 24).stderr.startswith("PAIR_NOT_FOUND: ")


def test_two_way_pair_hands_the_issuer_a_working_credential(two_nodes: NodeThread) -> None:
    a, b = two_nodes.nodes
    b_cid = fp(b, "records", "add", "--namespace", "n", "--thread", "t", "--kind", "k", "1")
    assert b_cid.exit_code == 0
    url = new_invite(a, "--no-qr")["url"]
    r = fp(b, "pair", url, "--timeout", "30", "--json")
    assert r.exit_code == 0, r.output
    result = as_json(r.stdout)
    assert result["two_way"] is True
    assert result["reciprocal_url"] == b.url
    assert result["pair"]["state"] == "caught_up"

    # b minted a read-only account for a's DID, with a grant
    accounts = as_json(fp(b, "token", "list", "--json").stdout)["service_accounts"]
    (back,) = [s for s in accounts if s["holder_did"] == a.did]
    assert back["scopes"] == ["records:read", "sync:read"]
    # a created the reverse pair with it during the redemption
    assert result["reverse_pair"]["created"] is True
    a_pairs = as_json(fp(a, "pairs", "--json").stdout)["pairs"]
    assert [p["peer_did"] for p in a_pairs] == [b.did]
    grants = httpx.get(
        b.url + "/v1/grants",
        params={"grantee_did": a.did},
        headers={"Authorization": f"Bearer {admin_token(b)}"},
    ).json()["grants"]
    assert len(grants) == 1
    assert grants[0]["target"]["type"] == "instance"

    # a received it with the redemption, and it really reads b's feed
    row = two_nodes.call(a.store.get_state, "reciprocal", b.did)
    assert row is not None
    assert row["url"] == b.url
    feed = httpx.get(
        str(row["url"]) + "/v1/sync/changes",
        headers={"Authorization": f"Bearer {row['token']}", "Accept": "application/json"},
    )
    assert feed.status_code == 200
    assert [rec["cid"]["/"] for rec in feed.json()["records"]] == [b_cid.stdout.strip()]


def test_pair_refuses_an_impostor_and_its_own_invite(two_nodes: NodeThread) -> None:
    a, b = two_nodes.nodes
    url = new_invite(a, "--no-qr")["url"]
    stranger = SigningKey.generate().did
    forged = url.replace(a.did, stranger)
    r = fp(b, "pair", forged, "--timeout", "10")
    assert r.exit_code == EXIT_ERROR
    assert r.stderr.startswith("DID_MISMATCH: ")
    self_pair = fp(a, "pair", url, "--timeout", "10")
    assert self_pair.exit_code == EXIT_ERROR
    assert self_pair.stderr.startswith("PAIR_SELF: ")
    # nothing was set up on either side, and the invite is still unused
    assert as_json(fp(b, "pairs", "--json").stdout) == {"pairs": []}
    assert as_json(fp(b, "token", "list", "--json").stdout)["service_accounts"][1:] == []
    (inv,) = as_json(fp(a, "invite", "list", "--json").stdout)["invites"]
    assert inv["uses"] == 0

    bad = fp(b, "pair", "http://example.invalid/v1/invites/xyz")
    assert bad.exit_code == EXIT_USAGE
    assert "invite URL" in bad.stderr


def test_failed_redemption_undoes_the_reciprocal_credential(two_nodes: NodeThread) -> None:
    a, b = two_nodes.nodes
    made = httpx.post(
        a.url + "/v1/invites",
        json={"accept_holder_types": ["guest"]},
        headers={"Authorization": f"Bearer {admin_token(a)}"},
    ).json()
    r = fp(b, "pair", made["url"], "--timeout", "10")
    assert r.exit_code == EXIT_ERROR
    assert r.stderr.startswith("HOLDER_TYPE_MISMATCH: ")
    accounts = as_json(fp(b, "token", "list", "--json").stdout)["service_accounts"]
    minted = [s for s in accounts if s["holder_did"] == a.did]
    assert len(minted) == 1
    assert minted[0]["revoked_ms"] is not None
    grants = httpx.get(
        b.url + "/v1/grants", headers={"Authorization": f"Bearer {admin_token(b)}"}
    ).json()["grants"]
    assert grants == []
    assert as_json(fp(b, "pairs", "--json").stdout) == {"pairs": []}


def test_pairing_again_gives_the_pair_the_new_credential(two_nodes: NodeThread) -> None:
    a, b = two_nodes.nodes
    first = new_invite(a, "--no-qr")
    r = fp(b, "pair", first["url"], "--one-way", "--timeout", "30", "--json")
    assert r.exit_code == 0, r.output
    pair_id = as_json(r.stdout)["pair"]["id"]
    # revoking the invite revokes the token the pair uses
    assert fp(a, "invite", "revoke", first["invite_id"]).exit_code == 0
    fp(a, "records", "add", "--namespace", "n", "--thread", "t", "--kind", "k", '"after"')
    second = new_invite(a, "--no-qr")
    r = fp(b, "pair", second["url"], "--one-way", "--timeout", "30", "--json")
    assert r.exit_code == 0, r.output
    again = as_json(r.stdout)["pair"]
    assert again["id"] == pair_id
    assert again["state"] == "caught_up"
    bodies = [v["body"] for v in as_json(fp(b, "records", "list", "--json").stdout)["records"]]
    assert bodies == ["after"]


def test_pair_no_wait_returns_after_setting_up(two_nodes: NodeThread) -> None:
    a, b = two_nodes.nodes
    url = new_invite(a, "--no-qr", "--scopes", "reader")["url"]
    r = fp(b, "pair", url, "--one-way", "--no-wait")
    assert r.exit_code == 0, r.output
    assert "caught up" not in r.stdout
    assert "confirmation code" in r.stdout
    assert len(as_json(fp(b, "pairs", "--json").stdout)["pairs"]) == 1


def _wait(node: Node, pair_row: dict[str, Any], timeout: int) -> BaseException | None:
    """Run the CLI's bounded wait for ``pair_row`` against ``node``; the error it ends with."""
    import trio

    from fedpeer.cli.pairs import wait_caught_up
    from fedpeer.peer import AdminClient, PairStatus

    async def main() -> None:
        async with AdminClient(node.url, admin_token(node)) as admin:
            await wait_caught_up(admin, PairStatus.from_dict(pair_row), timeout, quiet=True)

    try:
        trio.run(main)
    except FedpeerError as err:
        return err
    return None


def test_waiting_on_a_paused_pair_times_out(two_nodes: NodeThread) -> None:
    a, b = two_nodes.nodes
    url = new_invite(a, "--no-qr")["url"]
    row = as_json(fp(b, "pair", url, "--one-way", "--json", "--timeout", "30").stdout)["pair"]
    assert fp(b, "pairs", "pause", row["id"]).exit_code == 0
    err = _wait(b, row, 1)
    assert isinstance(err, TimedOut)
    assert row["id"] in err.message
    assert "paused" in err.message


def test_waiting_on_a_pair_with_a_bad_credential_reports_why_it_stopped(
    two_nodes: NodeThread,
) -> None:
    a, b = two_nodes.nodes
    created = httpx.post(
        b.url + "/v1/sync/pairs",
        json={"peer_url": a.url, "credential": "fp_" + "0" * 20 + "_" + "1" * 64},
        headers={"Authorization": f"Bearer {admin_token(b)}"},
    )
    assert created.status_code == 201, created.text
    err = _wait(b, created.json(), 30)
    assert isinstance(err, FedpeerError)
    assert not isinstance(err, TimedOut)
    assert err.code == "TOKEN_INVALID"
    assert err.message.startswith("the pair stopped: ")


def test_pair_refuses_an_invite_without_sync_read(two_nodes: NodeThread) -> None:
    a, b = two_nodes.nodes
    url = new_invite(a, "--no-qr", "--scopes", "records:read")["url"]
    r = fp(b, "pair", url)
    assert r.exit_code == EXIT_ERROR
    assert r.stderr.startswith("INVALID_REQUEST: ")
    assert "sync:read" in r.stderr
    (inv,) = as_json(fp(a, "invite", "list", "--json").stdout)["invites"]
    assert inv["uses"] == 0  # refused before redeeming


# --- peers -----------------------------------------------------------------------------


def test_peers_when_discovery_is_off(one_node: NodeThread) -> None:
    (a,) = one_node.nodes
    r = fp(a, "peers")
    assert r.exit_code == 0, r.output
    assert "discovery is off" in r.stdout
    assert as_json(fp(a, "peers", "--json").stdout)["enabled"] is False


# --- doctor ----------------------------------------------------------------------------


def doctor_checks(node: Node, *args: str) -> tuple[int, dict[str, dict[str, Any]]]:
    r = fp(node, "doctor", "--interface", "lo", "--port", "0", "--json", *args)
    report = as_json(r.stdout)
    return r.exit_code, {c["name"]: c for c in report["checks"]}


def test_doctor_on_a_healthy_running_node(two_nodes: NodeThread) -> None:
    a, b = two_nodes.nodes
    r = fp(a, "doctor", "--interface", "lo", "--port", "0", "--peer", b.url)
    assert r.exit_code == 0, r.output
    for name in ("data dir", "config", "key", "admin token", "node", "store", "multicast lo"):
        assert re.search(rf"^ok +{name}: ", r.stdout, re.MULTILINE), (name, r.stdout)
    assert re.search(r"^ok +clock: .*by \d+\.\d s, manifest of did:key:", r.stdout, re.MULTILINE)
    assert "all checks passed" in r.stdout
    code, checks = doctor_checks(a)
    assert code == 0
    assert checks["node"]["detail"].endswith(a.did)
    assert checks["store"]["detail"].endswith("integrity check passed")
    assert checks["clock"]["status"] == "skip"


def test_doctor_fails_on_a_world_readable_key_and_token(one_node: NodeThread) -> None:
    (a,) = one_node.nodes
    assert a.data_dir is not None
    key = a.data_dir / "node.key"
    os.chmod(key, 0o644)
    os.chmod(a.data_dir / "admin.token", 0o640)
    r = fp(a, "doctor", "--interface", "lo", "--port", "0")
    assert r.exit_code == 5, r.output
    assert re.search(r"^FAIL key: .*mode 0644", r.stdout, re.MULTILINE)
    assert f"fix: chmod 600 {key}" in r.stdout
    assert re.search(r"^FAIL admin token: .*mode 0640", r.stdout, re.MULTILINE)
    assert "2 problem(s) found" in r.stdout
    os.chmod(key, 0o600)
    os.chmod(a.data_dir / "admin.token", 0o600)
    assert fp(a, "doctor", "--interface", "lo", "--port", "0").exit_code == 0


def test_doctor_names_a_node_of_another_data_dir(two_nodes: NodeThread, tmp_path: Path) -> None:
    a, b = two_nodes.nodes
    assert a.data_dir is not None
    from click.testing import CliRunner

    from fedpeer.cli import cli

    r = CliRunner().invoke(
        cli, ["--data-dir", str(a.data_dir), "--url", b.url, "doctor", "--interface", "lo"]
    )
    assert r.exit_code == 5
    assert re.search(rf"^FAIL node: the node at {re.escape(b.url)} is {b.did}", r.stdout, re.M)


def test_doctor_bad_peer_url_fails_the_clock_check(one_node: NodeThread) -> None:
    (a,) = one_node.nodes
    code, checks = doctor_checks(a, "--peer", "http://127.0.0.1:1")
    assert code == 5
    assert checks["clock"]["status"] == "FAIL"
    assert "cannot reach" in checks["clock"]["detail"]
