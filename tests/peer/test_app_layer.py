"""The application layer: the node's services in-process, the same over HTTP
(AdminClient), and the node on trio and asyncio alike.

Real nodes (hypercorn on loopback, MemoryStore or SQLite files). The async tests
here run on both backends.
"""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path

import anyio
import pytest
import trio

import fedpeer
from fedpeer.consent import invites as inv
from fedpeer.consent.grants import Target
from fedpeer.errors import Malformed, RecordNotFound, SignatureError, TokenInvalid
from fedpeer.identity.canonical import CID
from fedpeer.identity.keys import SigningKey
from fedpeer.peer import AdminClient, Node, NodeConfig, PeerClient, open_node
from fedpeer.peer.admin import AdminGrants, AdminInvites, AdminPairs, AdminRecords, AdminTokens
from fedpeer.peer.services import (
    GrantService,
    InviteInfo,
    InviteService,
    PairService,
    RecordService,
    TokenService,
)
from fedpeer.sync import Cursor, Pair, PairState
from tests.conftest import BOTH_BACKENDS, backend_for


@pytest.fixture(params=BOTH_BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> object:
    """Every async test here runs on trio and on asyncio."""
    return backend_for(request, request.param)


CFG = NodeConfig(handle="app-layer")


async def _fill(node: Node, n: int, *, namespace: str = "notes", thread: str = "t") -> list[CID]:
    out = []
    for i in range(n):
        entry = await node.records.append(namespace=namespace, thread=thread, kind="k", body=i)
        out.append(entry.cid)
    return out


# --- the node under asyncio.run and trio.run --------------------------------------------


def test_open_node_runs_under_asyncio_run_and_trio_run(tmp_path: Path) -> None:
    """A plain asyncio program and a plain trio program embed a node the same way,
    with the memory store and with SQLite."""

    async def main(data_dir: Path | None) -> tuple[str, list[object]]:
        async with open_node(data_dir, config=CFG) as node:
            entry = await node.records.append(namespace="n", thread="t", kind="k", body="x")
            async with PeerClient(node.url) as peer:
                await peer.manifest(expected_did=node.did)
            got = await node.records.get(str(entry.cid))
            return node.did, [got.record.body, got.seq]

    did, found = asyncio.run(main(None))
    assert did.startswith("did:key:z6Mk")
    assert found == ["x", 1]
    assert asyncio.run(main(tmp_path / "a"))[1] == ["x", 1]
    assert trio.run(main, None)[1] == ["x", 1]
    assert trio.run(main, tmp_path / "a")[1] == ["x", 2]  # the same store, a second record


# --- records -------------------------------------------------------------------------------


async def test_records_get_takes_a_cid_or_its_text_and_says_not_found(tmp_path: Path) -> None:
    async with open_node(tmp_path / "n", config=CFG) as node:
        (cid,) = await _fill(node, 1)
        by_obj = await node.records.get(cid)
        by_text = await node.records.get(str(cid))
        assert by_obj == by_text
        assert by_obj.cid == cid
        assert by_obj.record.author == node.did
        other = fedpeer.build_record(
            SigningKey.generate(), namespace="n", thread="t", kind="k", body=0
        )
        with pytest.raises(RecordNotFound):
            await node.records.get(other.cid)
        with pytest.raises(Malformed):
            await node.records.get("not-a-cid")
        # The store underneath answers the same for every form too.
        assert await node.store.get(cid) == await node.store.get(str(cid)) is not None


async def test_records_list_oldest_and_newest_first_page_through_everything(
    tmp_path: Path,
) -> None:
    async with open_node(None, config=CFG) as node:
        cids = await _fill(node, 7)
        other = await _fill(node, 3, namespace="other")
        seen: list[CID] = []
        since = None
        for _ in range(10):
            page = await node.records.list(namespace="notes", limit=3, since=since)
            seen += [e.cid for e in page.records]
            since = page.next_cursor
            if not page.has_more:
                break
        assert seen == cids
        newest: list[CID] = []
        since = None
        for _ in range(10):
            page = await node.records.list(
                namespace="notes", limit=3, since=since, newest_first=True
            )
            newest += [e.cid for e in page.records]
            assert [e.seq for e in page.records] == sorted(
                (e.seq for e in page.records), reverse=True
            )
            since = page.next_cursor
            if not page.has_more:
                break
        assert newest == cids[::-1]
        everything = await node.records.list(limit=100, newest_first=True)
        assert [e.cid for e in everything.records] == (cids + other)[::-1]
        assert not everything.has_more
        one = await node.records.list(thread="t", limit=1, newest_first=True)
        assert [e.cid for e in one.records] == [other[-1]]
        assert one.has_more


async def test_admin_client_gives_the_same_records_as_the_node(tmp_path: Path) -> None:
    async with open_node(tmp_path / "n", config=CFG) as node:
        cids = await _fill(node, 5)
        assert node.admin_token is not None
        async with AdminClient(node.url, node.admin_token) as admin:
            for cid in cids:
                assert await admin.records.get(cid) == await node.records.get(cid)
            for newest in (False, True):
                local = await node.records.list(limit=2, newest_first=newest)
                remote = await admin.records.list(limit=2, newest_first=newest)
                assert remote == local
                after = await admin.records.list(
                    limit=2, newest_first=newest, since=remote.next_cursor
                )
                assert after == await node.records.list(
                    limit=2, newest_first=newest, since=local.next_cursor
                )
            added = await admin.records.append(namespace="x", thread="y", kind="k", body={"a": 1})
            assert added == await node.records.get(added.cid)
            assert added.record.author == node.did
            with pytest.raises(RecordNotFound):
                await admin.records.get(
                    fedpeer.build_record(
                        SigningKey.generate(), namespace="n", thread="t", kind="k", body=0
                    ).cid
                )
            threads = await admin.records.threads()
            assert threads == await node.records.threads()


async def test_admin_client_verifies_records_it_receives(tmp_path: Path) -> None:
    """A record answer that does not verify is refused (the node's word is not trusted)."""
    async with open_node(None, config=CFG) as node:
        (cid,) = await _fill(node, 1)
        entry = await node.records.get(cid)
        answer = entry.to_wire()
        answer["sig"] = bytes(64)
        with pytest.raises(SignatureError):
            fedpeer.peer.RecordEntry.from_dict(answer)


# --- tokens, grants, invites ---------------------------------------------------------------


async def test_ephemeral_node_has_an_admin_token_for_its_http_clients() -> None:
    async with open_node(None, config=CFG) as node:
        assert node.data_dir is None
        assert node.admin_token_path is None
        assert node.admin_token is not None
        async with AdminClient(node.url, node.admin_token) as admin:
            names = [sa.name for sa in await admin.tokens.list()]
            assert names == [sa.name for sa in await node.tokens.list()]
        async with AdminClient(node.url, "fp_" + "0" * 20 + "_" + "1" * 64) as stranger:
            with pytest.raises(TokenInvalid):
                await stranger.tokens.list()


async def test_tokens_over_http_and_in_process_agree(tmp_path: Path) -> None:
    async with open_node(tmp_path / "n", config=CFG) as node:
        assert node.admin_token is not None
        async with AdminClient(node.url, node.admin_token) as admin:
            issued = await admin.tokens.create("backup", scopes=["reader"], ttl_s=600)
            assert issued.service_account in await node.tokens.list()
            rotated = await node.tokens.rotate(issued.service_account.id)
            async with AdminClient(node.url, rotated.token) as reader:
                await reader.records.list()
            revoked = await admin.tokens.revoke(issued.service_account.id)
            assert revoked.revoked
            async with AdminClient(node.url, rotated.token) as reader:
                with pytest.raises(TokenInvalid):
                    await reader.records.list()


async def test_a_grant_change_re_signs_the_manifest(tmp_path: Path) -> None:
    async with open_node(tmp_path / "n", config=CFG) as node, PeerClient(node.url) as peer:
        before = await peer.manifest(expected_did=node.did)
        other = SigningKey.generate().did
        grant = await node.grants.create(other, target=Target("namespace", "notes/"))
        after = await peer.manifest(expected_did=node.did)
        rev = after.document["consent"]["revision"]  # type: ignore[index]
        assert rev == before.document["consent"]["revision"] + 1  # type: ignore[index]
        assert rev == await node.grants.revision()
        assert node.admin_token is not None
        async with AdminClient(node.url, node.admin_token) as admin:
            assert await admin.grants.list(grantee_did=other) == [grant]
            assert await admin.grants.delete(grant.id) == grant
        assert await node.grants.list(grantee_did=other) == []


async def test_invites_in_process_redeem_over_http_and_audit_rejections(tmp_path: Path) -> None:
    async with open_node(tmp_path / "n", config=CFG) as node:
        created = await node.invites.create(max_uses=1)
        holder = SigningKey.generate()
        bad_url = created.url.replace("#secret=", "#secret=A")[: len(created.url)]
        async with PeerClient(node.url) as peer:
            with pytest.raises(fedpeer.FedpeerError) as bad:
                await peer.redeem(bad_url, holder_key=holder)
            cred = await peer.redeem(created.url, holder_key=holder)
        assert cred.peer_did == node.did
        audit = await node.invites.audit(invite_id=created.invite_id)
        kinds = [(e.event["type"], e.event.get("reason")) for e in audit.events]
        assert ("invite.redeem_rejected", bad.value.code) in kinds
        assert kinds[-1] == ("invite.redeemed", None)
        (info,) = await node.invites.list()
        assert info.state == "exhausted"
        assert node.admin_token is not None
        async with AdminClient(node.url, node.admin_token) as admin:
            assert await admin.invites.list() == [info]
            assert await admin.invites.audit(invite_id=created.invite_id) == audit
            again, changed = await admin.invites.revoke(created.invite_id)
            assert changed
            assert again.state == "revoked"


async def test_invite_info_renders_exactly_the_consent_layers_admin_form(tmp_path: Path) -> None:
    """``InviteInfo`` (what GET /v1/invites renders and AdminClient parses) spells
    out the same fields as ``Invite.to_admin_dict``: the two must not drift."""
    async with open_node(tmp_path / "n", config=CFG) as node:
        await node.invites.create(
            max_uses=3, notes="n", device_label="d", target=Target("namespace", "notes/")
        )
        await node.invites.create(scopes=["contributor"])
        now = node.state.core.now_ms()
        stored = await node.store.transact(lambda tx: inv.list_invites(tx, now_ms=now))
        assert len(stored) == 2
        for invite in stored:
            assert InviteInfo.of(invite, now).to_dict() == invite.to_admin_dict(now)


# --- pairing and sync, both ways, on each backend ---------------------------------------------


async def test_two_nodes_pair_from_one_invite_and_sync_both_ways(tmp_path: Path) -> None:
    async with (
        open_node(tmp_path / "a", config=CFG) as a,
        open_node(tmp_path / "b", config=CFG) as b,
    ):
        from_a = await _fill(a, 5)
        invite = await a.invites.create()
        result = await b.pairs.from_invite(invite.url)
        assert result.two_way
        with anyio.fail_after(30):
            await b.pairs.wait_for(result.pair.id, lambda p: p.state is PairState.CAUGHT_UP)
        page = await b.records.list(limit=100)
        assert [e.cid for e in page.records] == from_a
        (back,) = a.pairs.list()
        from_b = await _fill(b, 2, namespace="from-b")
        head = await b.store.head_seq()

        def past_b_head(p: Pair) -> bool:
            return p.cursor is not None and Cursor.decode(p.cursor).seq >= head

        with anyio.fail_after(30):
            await a.pairs.wait_for(back.id, past_b_head)
        assert [e.cid for e in (await a.records.list(namespace="from-b")).records] == from_b
        # a now holds b's records too, and b's pair pulls them back (deduplicated):
        # let it reach a's head before comparing two snapshots of its status.
        a_head = await a.store.head_seq()

        def past_a_head(p: Pair) -> bool:
            return p.cursor is not None and Cursor.decode(p.cursor).seq >= a_head

        with anyio.fail_after(30):
            await b.pairs.wait_for(result.pair.id, past_a_head)
        assert b.admin_token is not None
        async with AdminClient(b.url, b.admin_token) as admin:
            (status,) = await admin.pairs.statuses()
            assert status == b.pairs.status(result.pair.id)
            assert status.peer_did == a.did
            assert not hasattr(status, "credential")


# --- the same methods in-process and over HTTP ------------------------------------------------

PAIRS = [
    # fetch and fetch_within: over HTTP, POST /v1/sync/records (PeerClient.fetch_records)
    # threads_page: over HTTP, the pages of GET /v1/threads (AdminRecords.threads follows them)
    (
        RecordService,
        AdminRecords,
        {"fetch", "fetch_within", "threads_page", "get_stored", "put_verified", "count"},
    ),
    (
        InviteService,
        AdminInvites,
        {"attach_pairs", "default_base_url", "create_from", "audit_rejection"},
    ),
    (GrantService, AdminGrants, {"view_for"}),
    # rotate_self: over HTTP the bearer is the principal
    (TokenService, AdminTokens, {"authenticate", "rotate_self"}),
    (
        PairService,
        AdminPairs,
        {"manager", "options", "pairing_result", "reverse_after_redeem", "wait_for",
         "add_listener", "health_summary",
         # the peer-facing side of unpairing: the HTTP edge calls it (POST /v1/sync/unpair)
         "unpaired_by_peer"},
    ),
]  # fmt: skip


def _methods(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(fn)
        for name, fn in inspect.getmembers(cls, predicate=callable)
        if not name.startswith("_") and not isinstance(inspect.getattr_static(cls, name), property)
    }


@pytest.mark.parametrize(("local", "remote", "local_only"), PAIRS)
def test_admin_client_has_the_services_methods(
    local: type, remote: type, local_only: set[str]
) -> None:
    """Every use case of a service is reachable over HTTP with the same name and
    parameters (the in-process-only ones are listed, each for a reason: live
    objects, the consent view, what the HTTP edge itself calls). The reads'
    ``view`` argument and the writes' ``writer`` (whose quota a write counts
    against) are in-process only: over HTTP the bearer decides."""
    mine, theirs = _methods(local), _methods(remote)
    shared = set(mine) - local_only
    assert shared <= set(theirs), sorted(shared - set(theirs))
    for name in shared:
        lp = [
            (p.name, p.kind, p.default)
            for p in mine[name].parameters.values()
            if not p.name.endswith("view") and p.name != "writer"
        ]
        rp = [(p.name, p.kind, p.default) for p in theirs[name].parameters.values()]
        assert lp == rp, name
