"""Pairing from one invite: two real nodes on loopback, both ways, with the checks."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import trio

from fedpeer.consent.invites import confirmation_code, parse_invite_url
from fedpeer.errors import DidMismatch, InviteExhausted, PairSelf
from fedpeer.identity.keys import SigningKey
from fedpeer.peer import Node, PeerClient, open_node
from fedpeer.sync.pairs import PairState


def _auth(node: Node) -> dict[str, str]:
    assert node.admin_token_path is not None
    return {"Authorization": f"Bearer {node.admin_token_path.read_text().strip()}"}


async def _invite(node: Node, **params: object) -> str:
    async with httpx.AsyncClient(base_url=node.url) as http:
        r = await http.post("/v1/invites", json=params, headers=_auth(node))
        assert r.status_code == 201, r.text
        return str(r.json()["url"])


async def _converge(node: Node, count: int) -> None:
    with trio.fail_after(20):
        while True:
            # Read the head before the count: a batch landing in between then wakes
            # the wait at once instead of being waited past.
            head = await node.store.head_seq()
            if await node.store.count() >= count:
                return
            await node.store.wait_for_seq(head)


async def _cids(node: Node) -> set[bytes]:
    page = await node.store.changes(0, 10_000)
    return {r.cid for r in page.records}


async def test_one_invite_gives_sync_both_ways(two: tuple[Node, Node]) -> None:
    a, b = two
    url = await _invite(a)
    result = await b.pair_from_invite(url)
    invite = parse_invite_url(url)
    assert result.two_way is True
    assert result.created is True
    assert result.confirmation_code == confirmation_code(a.did, b.did, invite.invite_id)
    assert result.reverse is not None
    assert result.reverse.get("created") is True
    # The issuer has the reverse pair, pulling from b.
    [back] = a.pairs.list()
    assert back.peer_did == b.did
    [forward] = b.pairs.list()
    assert forward.peer_did == a.did
    for i in range(20):
        await a.append(namespace="n", thread="t", kind="k", body={"from": "a", "i": i})
        await b.append(namespace="n", thread="t", kind="k", body={"from": "b", "i": i})
    await _converge(a, 40)
    await _converge(b, 40)
    assert await _cids(a) == await _cids(b)
    assert await a.store.count() == await b.store.count() == 40


async def test_one_way_pairs_only_the_redeemer(two: tuple[Node, Node]) -> None:
    a, b = two
    url = await _invite(a)
    result = await b.pair_from_invite(url, bidirectional=False)
    assert result.two_way is False
    assert result.reverse is None
    assert a.pairs.list() == []
    await a.append(namespace="n", thread="t", kind="k", body=1)
    await _converge(b, 1)


async def test_invite_scope_target_becomes_the_pair_filter(two: tuple[Node, Node]) -> None:
    a, b = two
    url = await _invite(a, scope_target={"type": "namespace", "value": "shared"})
    result = await b.pair_from_invite(url)
    assert result.pair.filter.namespace == "shared"
    await a.append(namespace="private", thread="t", kind="k", body=0)
    await a.append(namespace="shared", thread="t", kind="k", body=1)
    await b.append(namespace="shared", thread="t", kind="k", body=2)
    await _converge(b, 2)
    await _converge(a, 3)
    assert await b.store.count() == 2


async def test_own_invite_is_refused(two: tuple[Node, Node]) -> None:
    a, _b = two
    url = await _invite(a)
    with pytest.raises(PairSelf):
        await a.pair_from_invite(url)


async def test_impostor_url_is_refused_and_invite_kept(
    two: tuple[Node, Node], tmp_path: Path
) -> None:
    a, b = two
    url = await _invite(a, max_uses=1)
    inv = parse_invite_url(url)
    async with open_node(tmp_path / "evil") as evil:
        # Same issuer DID and secret in the URL, but the host is another node.
        forged = url.replace(inv.node_url, evil.url)
        with pytest.raises(DidMismatch):
            await b.pair_from_invite(forged)
    assert b.pairs.list() == []
    # Nothing was minted on b for the failed attempt, and the invite is unused.
    async with httpx.AsyncClient(base_url=b.url) as http:
        accounts = (await http.get("/v1/service-accounts", headers=_auth(b))).json()
    assert [sa["origin"] for sa in accounts["service_accounts"]] == ["bootstrap"]
    await b.pair_from_invite(url)
    with pytest.raises(InviteExhausted):
        await b.pair_from_invite(url)


async def test_failed_redeem_removes_the_reciprocal_credential(two: tuple[Node, Node]) -> None:
    a, b = two
    url = await _invite(a, max_uses=1)
    await b.pair_from_invite(url)
    async with httpx.AsyncClient(base_url=b.url) as http:
        before = (await http.get("/v1/service-accounts", headers=_auth(b))).json()
        grants_before = await b.grants.list(grantee_did=a.did)
        with pytest.raises(InviteExhausted):
            await b.pair_from_invite(url)
        after = (await http.get("/v1/service-accounts", headers=_auth(b))).json()
    live = lambda body: [s for s in body["service_accounts"] if s["revoked_ms"] is None]  # noqa: E731
    assert len(live(after)) == len(live(before))
    assert await b.grants.list(grantee_did=a.did) == grants_before  # its grant went too


async def test_pairing_again_refreshes_the_existing_pair(two: tuple[Node, Node]) -> None:
    a, b = two
    first = await b.pair_from_invite(await _invite(a))
    await b.pairs.pause(first.pair.id)
    again = await b.pair_from_invite(await _invite(a))
    assert again.created is False
    assert again.pair.id == first.pair.id
    assert again.pair.state != PairState.PAUSED
    assert again.reverse is not None
    assert again.reverse.get("created") is False


async def test_reciprocal_pointing_at_another_node_gets_no_reverse_pair(
    two: tuple[Node, Node], tmp_path: Path
) -> None:
    a, b = two
    url = await _invite(a)
    holder = SigningKey.generate()
    async with open_node(tmp_path / "c") as c, PeerClient(a.url) as client:
        # The holder proves its own DID but hands over c's URL: a must refuse to
        # pull from c on the holder's behalf.
        _cred, answer = await client.redeem_with_answer(
            url,
            holder_key=holder,
            reciprocal={"token": "fp_x_y", "scopes": ["reader"], "url": c.url},
        )
    reverse = answer["reverse_pair"]
    assert isinstance(reverse, dict)
    assert reverse["error"]["code"] == "DID_MISMATCH"  # type: ignore[index]
    assert a.pairs.list() == []
    del b


async def test_guest_redeem_never_creates_a_reverse_pair(two: tuple[Node, Node]) -> None:
    a, b = two
    url = await _invite(a, accept_holder_types=["guest", "federated"])
    async with PeerClient(a.url) as client:
        _cred, answer = await client.redeem_with_answer(
            url,
            holder_key=b.key,
            holder_type="guest",
            reciprocal={"token": "fp_x_y", "scopes": ["reader"], "url": b.url},
        )
    assert "reverse_pair" not in answer
    assert a.pairs.list() == []


async def test_pair_from_invite_route(two: tuple[Node, Node]) -> None:
    a, b = two
    url = await _invite(a)
    async with httpx.AsyncClient(base_url=b.url, timeout=30) as http:
        r = await http.post(
            "/v1/sync/pairs/from-invite", json={"invite_url": url}, headers=_auth(b)
        )
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["two_way"] is True
        assert body["pair"]["peer_did"] == a.did
        assert body["reverse_pair"]["created"] is True
        r = await http.post(
            "/v1/sync/pairs/from-invite", json={"invite_url": "nope"}, headers=_auth(b)
        )
        assert r.status_code == 400
        assert r.json()["error"]["code"] == "MALFORMED"
