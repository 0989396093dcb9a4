"""A holder writing within its grant, without end: write quotas (protocol.md §9.3).

Before: any holder of a token with ``records:write`` could write records until
the disk was full; nothing counted what one account wrote. Now every write of a
token holder that is not an admin's is counted against its account, in the
transaction that stores it: records (every one it sends, those the node already
had included) and bytes (``data`` plus ``sig``). A write that would pass
``NodeConfig.write_quota_records`` or ``write_quota_bytes`` is QUOTA_EXCEEDED
(403) and stores nothing; the same transaction refuses a write whose token was
revoked, rotated away or expired since the request was authenticated.

Real node (SQLite, hypercorn), plain httpx as the hostile holder.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import httpx
import pytest
import trio

from fedpeer.consent.grants import Target
from fedpeer.consent.tokens import Principal
from fedpeer.errors import ConfigInvalid, QuotaExceeded, TokenExpired, TokenRevoked
from fedpeer.identity.canonical import dagcbor_encode
from fedpeer.identity.keys import SigningKey
from fedpeer.peer import NodeConfig, open_node
from fedpeer.peer.node import Node
from fedpeer.sync.options import SyncOptions
from fedpeer.sync.pairs import PairState
from fedpeer.sync.records import SignedRecord, build_record

CFG = NodeConfig(rate_per_s=1e6, rate_burst=10**6, write_quota_records=4)
AUTHOR = SigningKey.generate()


def _signed(body: object, namespace: str = "inbox/") -> SignedRecord:
    return build_record(AUTHOR, namespace=namespace, thread="t", kind="n", body=body)


def _item(rec: SignedRecord) -> dict[str, bytes]:
    return {"data": rec.data, "sig": rec.sig}


async def _writer(node: Node, scopes: list[str]) -> tuple[str, dict[str, str]]:
    """A fresh holder granted ``scopes`` on ``inbox/``: its account id and headers."""
    did = SigningKey.generate().did
    await node.grants.create(did, target=Target("namespace", "inbox/"), scopes=scopes)
    issued = await node.tokens.create("writer", scopes=scopes, holder_did=did)
    headers = {
        "Authorization": f"Bearer {issued.token}",
        "Content-Type": "application/cbor",
        "Accept": "application/json",
    }
    return issued.service_account.id, headers


async def _written(node: Node, sa_id: str) -> tuple[int, int]:
    sa = next(a for a in await node.tokens.list() if a.id == sa_id)
    return sa.written_records, sa.written_bytes


def _append(body: object) -> bytes:
    return dagcbor_encode({"namespace": "inbox/", "thread": "t", "kind": "n", "body": body})


async def test_every_write_path_stops_at_the_record_quota(tmp_path: Path) -> None:
    """Appends, signed records and imports all count; the write that would pass the
    quota stores nothing (the whole batch of an import), other holders and admins
    are not held back, and the count is the account's whatever token it uses."""
    async with open_node(tmp_path / "n", config=CFG) as node:
        sa_id, headers = await _writer(node, ["contributor"])
        _, other = await _writer(node, ["contributor"])
        async with httpx.AsyncClient(base_url=node.url, headers=headers, timeout=10) as http:
            assert (await http.post("/v1/records", content=_append(1))).status_code == 201
            one = _signed(1)
            assert (await http.post("/v1/records", content=dagcbor_encode(_item(one)))).is_success
            batch = {"records": [_item(_signed(2)), _item(_signed(3))]}
            r = await http.post("/v1/records/import", content=dagcbor_encode(batch))
            assert r.json() == {"stored": 2, "existing": 0}
            assert (await _written(node, sa_id))[0] == 4
            before = await node.store.count()
            for path, body in (
                ("/v1/records", _append(9)),
                ("/v1/records", dagcbor_encode(_item(_signed(9)))),
                ("/v1/records/import", dagcbor_encode({"records": [_item(_signed(10))]})),
            ):
                r = await http.post(path, content=body)
                assert r.status_code == 403, r.text
                assert r.json()["error"]["code"] == "QUOTA_EXCEEDED"
                assert "write_quota_records" in r.json()["error"]["message"]
            assert await node.store.count() == before
            assert (await _written(node, sa_id))[0] == 4  # refused writes are not counted

            # a new token for the same account starts from the same count
            rotated = await node.tokens.rotate(sa_id)
            http.headers["Authorization"] = f"Bearer {rotated.token}"
            r = await http.post("/v1/records", content=_append(11))
            assert r.json()["error"]["code"] == "QUOTA_EXCEEDED"

        async with httpx.AsyncClient(base_url=node.url, headers=other, timeout=10) as http:
            batch = {"records": [_item(_signed(20 + i)) for i in range(5)]}
            r = await http.post("/v1/records/import", content=dagcbor_encode(batch))
            assert r.status_code == 403  # 5 in one batch: none stored
            assert await node.store.count() == before
            batch = {"records": [_item(_signed(20 + i)) for i in range(4)]}
            r = await http.post("/v1/records/import", content=dagcbor_encode(batch))
            assert r.json() == {"stored": 4, "existing": 0}  # another account's own quota

        admin = headers | {"Authorization": f"Bearer {node.admin_token}"}
        async with httpx.AsyncClient(base_url=node.url, headers=admin, timeout=10) as http:
            for i in range(6):
                assert (await http.post("/v1/records", content=_append(100 + i))).is_success
        for i in range(6):  # the node's own appends
            await node.records.append(namespace="inbox/", thread="t", kind="n", body=200 + i)
        assert await node.store.count() == before + 4 + 12


async def test_a_drop_box_cannot_learn_from_its_quota_what_the_node_holds(
    tmp_path: Path,
) -> None:
    """A holder that may write ``inbox/`` but not read it: a record the node already
    had counts like a new one, so at its quota a re-post of a record the node
    holds is refused exactly as a record it never had. Were duplicates free, the
    holder could post a guess one short of its quota, then a fresh record: the
    fresh one landing would say that the guess was there."""
    async with open_node(tmp_path / "n", config=CFG) as node:
        there = await node.records.append(namespace="inbox/", thread="t", kind="n", body="x")
        sa_id, headers = await _writer(node, ["records:write"])
        old = _item(there.signed)
        async with httpx.AsyncClient(base_url=node.url, headers=headers, timeout=10) as http:
            for body in (old, _item(_signed(1)), old):
                r = await http.post("/v1/records", content=dagcbor_encode(body))
                assert r.status_code == 201
            assert await _written(node, sa_id) == (
                3,
                2 * (len(there.data) + 64) + len(_signed(1).data) + 64,
            )
            r = await http.post("/v1/records/import", content=dagcbor_encode({"records": [old]}))
            assert r.json() == {"stored": 1, "existing": 0}
            answers = []
            for body in (old, _item(_signed(2))):  # at the quota now
                r = await http.post("/v1/records", content=dagcbor_encode(body))
                answers.append((r.status_code, r.json()["error"]["code"]))
            assert answers[0] == answers[1] == (403, "QUOTA_EXCEEDED")


async def test_the_byte_quota_counts_data_and_sig(tmp_path: Path) -> None:
    records = [_signed("x" * 1000 + str(i)) for i in range(3)]
    size = len(records[0].data) + 64
    cfg = attrs.evolve(CFG, write_quota_records=None, write_quota_bytes=2 * size + size // 2)
    async with open_node(tmp_path / "n", config=cfg) as node:
        sa_id, headers = await _writer(node, ["contributor"])
        async with httpx.AsyncClient(base_url=node.url, headers=headers, timeout=10) as http:
            for rec in records[:2]:
                r = await http.post("/v1/records", content=dagcbor_encode(_item(rec)))
                assert r.status_code == 201
            r = await http.post("/v1/records", content=dagcbor_encode(_item(records[2])))
            assert r.status_code == 403
            assert r.json()["error"]["code"] == "QUOTA_EXCEEDED"
            assert "write_quota_bytes" in r.json()["error"]["message"]
        assert await _written(node, sa_id) == (2, 2 * size)
        assert await node.store.get(records[2].cid.raw) is None


async def test_the_count_survives_a_restart(tmp_path: Path) -> None:
    async with open_node(tmp_path / "n", config=CFG) as node:
        sa_id, headers = await _writer(node, ["contributor"])
        async with httpx.AsyncClient(base_url=node.url, headers=headers, timeout=10) as http:
            batch = {"records": [_item(_signed(i)) for i in range(4)]}
            assert (await http.post("/v1/records/import", content=dagcbor_encode(batch))).is_success
    async with open_node(tmp_path / "n", config=CFG) as node:
        assert await _written(node, sa_id) == (4, sum(len(_signed(i).data) + 64 for i in range(4)))
        async with httpx.AsyncClient(base_url=node.url, headers=headers, timeout=10) as http:
            r = await http.post("/v1/records", content=_append(5))
            assert r.json()["error"]["code"] == "QUOTA_EXCEEDED"


async def _principal(node: Node, headers: dict[str, str]) -> Principal:
    return await node.tokens.authenticate(headers["Authorization"].removeprefix("Bearer "))


async def test_no_write_lands_after_its_token_was_revoked(tmp_path: Path) -> None:
    """The write transaction itself checks the token: a request authenticated
    before its account was revoked, or its token rotated away, stores nothing
    (TOKEN_REVOKED), on every write path; so does one whose token expired since
    (TOKEN_EXPIRED). The principal is taken before the revocation, as a request
    in flight holds it."""
    async with open_node(tmp_path / "n", config=CFG) as node:
        records = node.records
        sa_id, headers = await _writer(node, ["contributor"])
        principal = await _principal(node, headers)
        await node.tokens.rotate(sa_id)  # the token the request holds stops working
        before = await node.store.count()
        with pytest.raises(TokenRevoked):
            await records.append(namespace="inbox/", thread="t", kind="n", body=1, writer=principal)
        rec = _signed(1)
        with pytest.raises(TokenRevoked):
            await records.ingest(rec.data, rec.sig, writer=principal)
        with pytest.raises(TokenRevoked):
            await records.ingest_many([(rec.data, rec.sig)], writer=principal)

        sa2, headers2 = await _writer(node, ["contributor"])
        principal2 = await _principal(node, headers2)
        await node.tokens.revoke(sa2)
        with pytest.raises(TokenRevoked):
            await records.ingest(rec.data, rec.sig, writer=principal2)

        # an admin's token too: its writes are not bounded, but they are checked
        admin = await node.tokens.create("ops", scopes=["admin"])
        admin_principal = await node.tokens.authenticate(admin.token)
        await node.tokens.revoke(admin.service_account.id)
        with pytest.raises(TokenRevoked):
            await records.append(
                namespace="inbox/", thread="t", kind="n", body=2, writer=admin_principal
            )

        _, headers3 = await _writer(node, ["contributor"])
        principal3 = await _principal(node, headers3)
        token = await node.store.get_state("tokens", principal3.token_id)
        assert token is not None
        await node.store.transact(
            lambda tx: tx.put("tokens", principal3.token_id, {**token, "expires_ms": 1})
        )
        with pytest.raises(TokenExpired):
            await records.ingest(rec.data, rec.sig, writer=principal3)
        assert await node.store.count() == before

        # a live principal writes, and its count moves
        _, headers4 = await _writer(node, ["contributor"])
        _entry, created = await records.ingest(
            rec.data, rec.sig, writer=await _principal(node, headers4)
        )
        assert created
        assert await node.store.count() == before + 1
        with pytest.raises(QuotaExceeded):
            await records.ingest_many(
                [(r.data, r.sig) for r in (_signed(i) for i in range(10, 14))],
                writer=await _principal(node, headers4),
            )


async def test_the_owners_accounts_are_counted_not_bounded(tmp_path: Path) -> None:
    """An admin token, and a token bound to the node's own DID (``fedpeer token
    create`` without ``--holder``: the owner's own tools), write past the quota;
    what they wrote still shows."""
    async with open_node(tmp_path / "n", config=CFG) as node:
        tool = await node.tokens.create("backup job", scopes=["contributor"])
        assert tool.service_account.holder_did == node.did
        headers = {
            "Authorization": f"Bearer {tool.token}",
            "Content-Type": "application/cbor",
            "Accept": "application/json",
        }
        async with httpx.AsyncClient(base_url=node.url, headers=headers, timeout=10) as http:
            batch = {"records": [_item(_signed(i)) for i in range(6)]}
            r = await http.post("/v1/records/import", content=dagcbor_encode(batch))
            assert r.json() == {"stored": 6, "existing": 0}
            http.headers["Authorization"] = f"Bearer {node.admin_token}"
            assert (await http.post("/v1/records", content=_append(1))).status_code == 201
        assert (await _written(node, tool.service_account.id))[0] == 6
        admin_sa = (await node.tokens.authenticate(str(node.admin_token))).sa_id
        assert (await _written(node, admin_sa))[0] == 1


def test_quota_settings_are_checked() -> None:
    for bad_age in (float("inf"), float("nan"), -1, True, "60"):
        with pytest.raises(ConfigInvalid):
            NodeConfig(rotate_min_age_s=bad_age)  # type: ignore[arg-type]
    for bad in (0, -1, 1.5, True, "10"):
        with pytest.raises(ConfigInvalid):
            NodeConfig(write_quota_records=bad)  # type: ignore[arg-type]
        with pytest.raises(ConfigInvalid):
            NodeConfig(write_quota_bytes=bad)  # type: ignore[arg-type]
    assert NodeConfig(write_quota_records=None).write_quota_records is None
    defaults = NodeConfig()
    assert (defaults.write_quota_records, defaults.write_quota_bytes) == (1_000_000, 1 << 30)


async def test_a_pair_set_up_by_a_redeem_stops_at_its_quota(tmp_path: Path) -> None:
    """A redeemer that sends a reciprocal credential makes the issuer pull from it
    (the reverse pair), whatever the invite's scopes: before, that pull stored
    all it was served, uncounted. Now a pair a redeem set up (``origin`` redeem)
    stops with QUOTA_EXCEEDED at the commit that would pass
    ``SyncOptions.redeem_quota_records``, and that commit stores nothing; a pair
    the owner set up is not bounded. Two real nodes; B plays the redeemer with
    more records than A allows."""
    cfg = NodeConfig(rate_per_s=10_000, rate_burst=10_000)
    # pages of 4, one page per commit, so the quota falls between two commits
    small = SyncOptions(page_limit=4, commit_max_records=4, commit_wait_s=0, redeem_quota_records=5)
    async with (
        open_node(tmp_path / "a", config=cfg, sync=small) as a,
        open_node(tmp_path / "b", config=cfg, sync=small) as b,
    ):
        for i in range(12):
            await b.append(namespace="n", thread="t", kind="k", body={"from": "b", "i": i})
        for i in range(6):
            await a.append(namespace="n", thread="t", kind="k", body={"from": "a", "i": i})
        invite = await a.invites.create(scopes=["reader"])
        result = await b.pair_from_invite(invite.url)
        assert result.reverse is not None
        [back] = a.pairs.list()
        [forward] = b.pairs.list()
        assert (back.origin, forward.origin) == ("redeem", "owner")
        assert a.pairs.status(back.id).to_dict()["origin"] == "redeem"  # the API shows it
        with trio.fail_after(30):
            stopped = await a.pairs.wait_for(back.id, lambda p: p.state is PairState.STOPPED)
        assert stopped.last_error is not None
        assert stopped.last_error.code == "QUOTA_EXCEEDED"
        assert "redeem_quota_records" in stopped.last_error.message
        held = (await a.store.changes(0, 1000)).records
        assert len([r for r in held if r.author == b.did]) == 4  # the one page that fitted
        assert stopped.stats.records == 4

        # the owner's pair on B is not bounded: it pulls all of A's records (and the
        # 4 of its own A holds: 10 delivered, past the 5 a redeem pair may take)
        with trio.fail_after(30):
            while True:
                head = await b.store.head_seq()
                mine = (await b.store.changes(0, 1000)).records
                if len([r for r in mine if r.author == a.did]) == 6:
                    break
                await b.store.wait_for_seq(head)
        pulled = await b.pairs.wait_for(forward.id, lambda p: p.stats.records >= 10)
        assert pulled.state is not PairState.STOPPED

        # a resume tries again, and stops again at the same place: nothing more lands
        await a.pairs.resume(back.id)
        with trio.fail_after(30):
            again = await a.pairs.wait_for(
                back.id,
                lambda p: p.state is PairState.STOPPED and p.updated_ms > stopped.updated_ms,
            )
        assert again.last_error is not None
        assert again.last_error.code == "QUOTA_EXCEEDED"
        held = (await a.store.changes(0, 1000)).records
        assert len([r for r in held if r.author == b.did]) == 4


async def test_records_the_node_already_had_cost_a_redeem_pair_nothing(tmp_path: Path) -> None:
    """Review: the redeem quota counted every record the pair delivered, so a
    cursor reset (the other laptop restored from a backup) counted everything
    twice and stopped a pair that had stored half its quota. It counts the
    records the node did not have: here A already holds 8 of B's 12 records, and
    a quota of 5 lets the pair through with the 4 it lacked."""
    cfg = NodeConfig(rate_per_s=10_000, rate_burst=10_000)
    small = SyncOptions(page_limit=4, commit_max_records=4, commit_wait_s=0, redeem_quota_records=5)
    async with (
        open_node(tmp_path / "a", config=cfg, sync=small) as a,
        open_node(tmp_path / "b", config=cfg, sync=small) as b,
    ):
        made = [
            await b.append(namespace="n", thread="t", kind="k", body={"i": i}) for i in range(12)
        ]
        await a.records.ingest_many([(e.data, e.sig) for e in made[:8]])
        invite = await a.invites.create(scopes=["reader"])
        await b.pair_from_invite(invite.url)
        [back] = a.pairs.list()
        with trio.fail_after(30):
            done = await a.pairs.wait_for(
                back.id, lambda p: p.state in (PairState.CAUGHT_UP, PairState.STOPPED)
            )
        assert done.state is PairState.CAUGHT_UP, done.last_error
        held = (await a.store.changes(0, 1000)).records
        assert len([r for r in held if r.author == b.did]) == 12
        used = await a.store.get_state("pair_quota", back.id)
        assert used == {"records": 4, "bytes": sum(len(e.data) + 64 for e in made[8:])}
