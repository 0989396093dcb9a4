"""Unpairing, both sides (issue 14; protocol.md §11.3): two real nodes on loopback.

`unpair` on one node deletes its pair, revokes what the peer holds there, and asks
the peer (a signed request) to drop its reverse pair and revoke what we hold;
re-pairing never leaves two active credentials; the signed request is checked
(forged, replayed, addressed to another node) before anything changes.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from fedpeer.consent import tokens as _tokens
from fedpeer.errors import (
    BadSignature,
    InvalidRequest,
    PairNotFound,
    PairSelf,
    ProofReplayed,
    TokenInvalid,
)
from fedpeer.identity.keys import SigningKey
from fedpeer.peer import AdminClient, Node, NodeConfig, PeerClient, open_node
from fedpeer.peer._unpair import NONCE_TABLE, build_unpair_request, check_unpair_request
from fedpeer.sync.pairs import PairState


async def active_accounts_of(node: Node, did: str) -> list[str]:
    return await node.store.transact(
        lambda tx: [
            sa.id
            for sa in _tokens.list_service_accounts(tx, include_revoked=False)
            if sa.holder_did == did
        ]
    )


async def paired(a: Node, b: Node) -> None:
    invite = await a.invites.create(max_uses=1)
    await b.pairs.from_invite(invite.url)
    with trio.fail_after(20):
        for node in (a, b):
            [p] = node.pairs.list()
            await node.pairs.wait_for(p.id, lambda p: p.state is PairState.CAUGHT_UP)


async def test_unpair_by_pair_id_drops_both_sides(two: tuple[Node, Node]) -> None:
    a, b = two
    await paired(a, b)
    [forward] = b.pairs.list()
    [back] = a.pairs.list()
    b_token = forward.credential  # what b shows a
    a_token = back.credential  # what a shows b
    assert b_token
    assert a_token
    assert await active_accounts_of(a, b.did)
    assert await active_accounts_of(b, a.did)

    async with AdminClient(b.url, b.admin_token) as admin:
        result = await admin.pairs.unpair(forward.id)

    assert result.peer_did == a.did
    assert result.pairs_deleted == (forward.id,)
    assert len(result.credentials_revoked) == 1
    assert result.peer.get("pairs_deleted") == [back.id]
    # both sides: no pairs, no active credentials for the other
    assert b.pairs.list() == []
    assert a.pairs.list() == []
    assert await active_accounts_of(b, a.did) == []
    assert await active_accounts_of(a, b.did) == []
    # the old bearers no longer work on either side
    for node, bearer in ((a, b_token), (b, a_token)):
        async with PeerClient(node.url, token=bearer) as peer:
            with pytest.raises(TokenInvalid):
                await peer.get_value("/v1/sync/changes")


async def test_unpair_by_did_when_the_peer_is_gone_unpairs_this_side(
    tmp_path: Path,
) -> None:
    cfg = NodeConfig(rate_per_s=10_000, rate_burst=10_000)
    async with open_node(tmp_path / "a", config=cfg) as a:
        async with open_node(tmp_path / "b", config=cfg) as b:
            await paired(a, b)
            b_did = b.did
        # b is gone: a unpairs by DID; its side is done and the answer says why b was not
        result = await a.pairs.unpair(b_did)
        assert a.pairs.list() == []
        assert await active_accounts_of(a, b_did) == []
        error = result.peer.get("error")
        assert isinstance(error, dict)
        assert error["code"] == "PEER_UNREACHABLE"
        assert "fedpeer unpair" in str(error["message"])
        with pytest.raises(PairNotFound, match="fedpeer pairs"):
            await a.pairs.unpair(b_did)  # nothing left to unpair
        with pytest.raises(PairSelf):
            await a.pairs.unpair(a.did)


async def test_pairing_again_leaves_one_active_credential_each_side(
    two: tuple[Node, Node],
) -> None:
    a, b = two
    await paired(a, b)
    first_a = await active_accounts_of(a, b.did)
    first_b = await active_accounts_of(b, a.did)
    invite = await a.invites.create(max_uses=1)
    again = await b.pairs.from_invite(invite.url)
    assert again.created is False  # the same pair, new credential
    second_a = await active_accounts_of(a, b.did)
    second_b = await active_accounts_of(b, a.did)
    assert len(second_a) == 1
    assert second_a != first_a
    assert len(second_b) == 1
    assert second_b != first_b
    # the grants of the replaced accounts went with them: one grant each side,
    # bound to the one active account
    for node, peer, active in ((a, b, second_a), (b, a, second_b)):
        bound = [g.sa_id for g in await node.grants.list(grantee_did=peer.did)]
        assert bound == active
    # and both pairs still sync with the new credentials
    await a.records.append(namespace="n", thread="t", kind="k", body="after")
    await b.records.append(namespace="n", thread="t", kind="k", body="after-b")
    with trio.fail_after(20):
        for node in (a, b):
            while await node.store.count() < 2:
                await node.store.wait_for_seq(await node.store.head_seq())


async def test_the_unpair_request_is_checked_before_anything_changes(
    two: tuple[Node, Node],
) -> None:
    a, b = two
    await paired(a, b)
    stranger = SigningKey.generate()
    # addressed to another node
    with pytest.raises(InvalidRequest, match="addressed to"):
        check_unpair_request(build_unpair_request(b.key, stranger.did), local_did=a.did)
    # forged: b's DID in "from", signed by a stranger
    forged = build_unpair_request(stranger, a.did)
    forged["from"] = b.did
    async with httpx.AsyncClient(base_url=a.url) as http:
        r = await http.post("/v1/sync/unpair", json=forged)
        assert r.status_code in (400, 401), r.text
        assert r.json()["error"]["code"] in ("BAD_SIGNATURE", "DID_MISMATCH")
        # tampered after signing
        good = build_unpair_request(b.key, a.did)
        bad = dict(good, nonce="A" * 22)
        r = await http.post("/v1/sync/unpair", json=bad)
        assert r.json()["error"]["code"] == "BAD_SIGNATURE"
        assert len(a.pairs.list()) == 1
        assert await active_accounts_of(a, b.did)
        # the genuine request works once; replayed it is refused
        r = await http.post("/v1/sync/unpair", json=good)
        assert r.status_code == 200, r.text
        assert a.pairs.list() == []
        assert await active_accounts_of(a, b.did) == []
        r = await http.post("/v1/sync/unpair", json=good)
        assert r.json()["error"]["code"] == ProofReplayed.code
    tampered = build_unpair_request(b.key, a.did)
    tampered["to"] = a.did + "x"
    with pytest.raises(BadSignature):
        check_unpair_request(tampered, local_did=a.did + "x")
    # the check order of protocol.md §11.3, over HTTP
    async with httpx.AsyncClient(base_url=a.url) as http:
        good = build_unpair_request(b.key, a.did)
        for body, want in (
            ([good], "MALFORMED"),  # not an object
            ({**good, "extra": 1}, "INVALID_REQUEST"),
            ({**good, "from": "did:web:example.com"}, "DID_INVALID"),
            ({**good, "from": "did:web:example.com", "to": 5}, "DID_INVALID"),  # from first
            ({**good, "from": 5}, "DID_INVALID"),
            ({**good, "to": 5}, "INVALID_REQUEST"),
            ({**good, "nonce": "short"}, "INVALID_REQUEST"),
        ):
            r = await http.post("/v1/sync/unpair", json=body)
            assert r.json()["error"]["code"] == want, (body, r.text)


async def _nonce_rows(node: Node) -> list[str]:
    return await node.store.transact(lambda tx: [k for k, _ in tx.list(NONCE_TABLE)])


async def test_unpair_requests_from_strangers_store_nothing(two: tuple[Node, Node]) -> None:
    """Anyone can sign an unpair request with a fresh DID. Those change nothing,
    so they store nothing: a flood of them leaves the nonce table empty (no
    growth, no per-request scan of a growing table), and the paired peer's own
    request is still acted on once and refused when replayed."""
    a, b = two
    await paired(a, b)
    async with httpx.AsyncClient(base_url=a.url, timeout=10) as http:
        for _ in range(200):
            r = await http.post(
                "/v1/sync/unpair", json=build_unpair_request(SigningKey.generate(), a.did)
            )
            assert r.status_code == 200, r.text
            assert r.json() == {"pairs_deleted": [], "credentials_revoked": []}
        assert await _nonce_rows(a) == []
        assert len(a.pairs.list()) == 1  # the real pairing is untouched
        assert await active_accounts_of(a, b.did)
        good = build_unpair_request(b.key, a.did)
        r = await http.post("/v1/sync/unpair", json=good)
        assert r.status_code == 200, r.text
        assert len(r.json()["credentials_revoked"]) == 1
        assert len(await _nonce_rows(a)) == 1
        r = await http.post("/v1/sync/unpair", json=good)
        assert r.json()["error"]["code"] == ProofReplayed.code
        # b is a stranger now: its next (new) request changes and stores nothing
        r = await http.post("/v1/sync/unpair", json=build_unpair_request(b.key, a.did))
        assert r.json() == {"pairs_deleted": [], "credentials_revoked": []}
        assert len(await _nonce_rows(a)) == 1


async def test_unpair_finishes_this_side_before_asking_a_silent_peer(tmp_path: Path) -> None:
    """The peer's address accepts and answers nothing (a silent listener on a
    port of its own). While ``unpair`` waits on it, this side is already
    unpaired: pairs deleted, credentials revoked, so cancelling the call (the
    admin's HTTP client gave up) leaves nothing half-done."""
    accepted = trio.Event()

    async def silent(stream: trio.SocketStream) -> None:
        # the pair's puller connects here too: only the unpair request counts
        head = b""
        while b"\r\n" not in head and len(head) < 4096:
            chunk = await stream.receive_some(4096)
            if not chunk:
                return
            head += chunk
        if head.startswith(b"POST /v1/sync/unpair "):
            accepted.set()
        await trio.sleep_forever()

    cfg = NodeConfig(rate_per_s=10_000, rate_burst=10_000)
    peer = SigningKey.generate()
    async with open_node(tmp_path / "a", config=cfg) as a, trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, silent, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        # a pulls from the peer and the peer holds a credential here (the manager
        # takes the pair as given: no manifest to verify at a silent address)
        pair, _ = await a.pairs.manager.create(
            peer_did=peer.did, peer_url=f"http://127.0.0.1:{port}", credential=None
        )
        await a.tokens.create("peer", scopes=["reader"], holder_did=peer.did)
        cancels: list[trio.CancelScope] = []
        done = trio.Event()

        async def run_unpair() -> None:
            with trio.CancelScope() as scope:
                cancels.append(scope)
                await a.pairs.unpair(pair.id)
            done.set()

        nursery.start_soon(run_unpair)
        with trio.fail_after(20):
            await accepted.wait()
        assert a.pairs.list() == []
        assert await active_accounts_of(a, peer.did) == []
        cancels[0].cancel()
        with trio.fail_after(20):
            await done.wait()
        assert a.pairs.list() == []
        nursery.cancel_scope.cancel()
