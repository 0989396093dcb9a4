"""A holder rotating its own token gains neither requests nor lifetime.

Found by a read-only audit (the third hostile sweep):

* the rate limit was kept per token, and every rotation mints a new token, so
  spending the burst and rotating gave a full bucket again (60 reads in a row
  under a burst of 5, none refused);
* ``ttl_s`` on a self-rotation had no upper bound, so the holder of a one-hour
  invite token rotated it into one valid for 31 years.

Now the bucket is kept per service account (every token of the account shares
it) and a rotation never gives a longer lifetime than the old token had (one
that never expired: at most MAX_ROTATE_TTL_MS). Real node, plain httpx.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from fedpeer.consent.grants import Target
from fedpeer.identity.keys import SigningKey
from fedpeer.peer import NodeConfig, PeerClient, open_node
from fedpeer.peer.node import Node


async def _guest(node: Node, token_ttl_s: int | None = None) -> tuple[str, str]:
    """A guest's (bearer, token id), from a reader invite."""
    invite = await node.invites.create(
        scopes=["reader"], target=Target("namespace", "a"), token_ttl_s=token_ttl_s
    )
    async with PeerClient(node.url) as p:
        cred = await p.redeem(invite.url, holder_key=SigningKey.generate(), holder_type="guest")
    return cred.token, cred.token_id


async def test_rotating_a_token_does_not_refill_the_rate_limit(tmp_path: Path) -> None:
    cfg = NodeConfig(rate_per_s=0.01, rate_burst=5, rotate_min_age_s=0)
    async with open_node(tmp_path / "n", config=cfg) as node:
        token, token_id = await _guest(node)
        statuses: list[int] = []
        async with httpx.AsyncClient(timeout=10) as client:
            for _ in range(6):
                headers = {"Authorization": f"Bearer {token}"}
                r = await client.get(node.url + "/v1/records", headers=headers)
                statuses.append(r.status_code)
                rotated = await client.post(
                    f"{node.url}/v1/tokens/{token_id}/rotate", json={}, headers=headers
                )
                statuses.append(rotated.status_code)
                if rotated.status_code == 200:
                    token, token_id = rotated.json()["token"], rotated.json()["token_id"]
        assert 429 in statuses, statuses
        assert statuses.index(429) <= 5, statuses  # the burst of 5, shared by all its tokens


async def test_a_rotation_cannot_lengthen_an_invite_tokens_lifetime(tmp_path: Path) -> None:
    cfg = NodeConfig(rate_per_s=1e6, rate_burst=10**6, rotate_min_age_s=0)
    async with open_node(tmp_path / "n", config=cfg) as node:
        token, token_id = await _guest(node, token_ttl_s=3600)
        async with httpx.AsyncClient(timeout=10) as client:
            r = await client.post(
                f"{node.url}/v1/tokens/{token_id}/rotate",
                json={"ttl_s": 10**9},
                headers={"Authorization": f"Bearer {token}"},
            )
        assert r.status_code == 200, r.text
        expires_ms = r.json()["expires_ms"]
        assert expires_ms <= time.time() * 1000 + 3600_000 + 60_000  # not 31 years


async def _age(node: Node, token_id: str, seconds: int) -> None:
    """Make a token ``seconds`` older than it is (its row's ``created_ms``, and its
    ``expires_ms`` when it has one: ``seconds`` of its life went by)."""
    row = await node.store.get_state("tokens", token_id)
    assert row is not None
    older = {**row, "created_ms": int(row["created_ms"]) - seconds * 1000}  # type: ignore[call-overload]
    if row.get("expires_ms") is not None:
        older["expires_ms"] = int(row["expires_ms"]) - seconds * 1000  # type: ignore[call-overload]
    await node.store.transact(lambda tx: tx.put("tokens", token_id, older))


async def test_a_holder_cannot_rotate_at_its_request_rate(tmp_path: Path) -> None:
    """Every rotation is a durable write (a token row, an audit entry, an fsync):
    before, a guest could rotate 50 times a second, its request rate, and grow the
    node's state by gigabytes a day. Now a token rotates itself once it is an
    hour old, or a quarter of its lifetime if less (429 RATE_LIMITED with
    Retry-After before; the token keeps working), and a chain of rotations keeps
    two token rows, not one per rotation."""
    cfg = NodeConfig(rate_per_s=1e6, rate_burst=10**6)  # the default rotate_min_age_s
    async with open_node(tmp_path / "n", config=cfg) as node:
        token, token_id = await _guest(node)
        sa_id = (await node.tokens.authenticate(token)).sa_id
        audit_before = len(await node.store.audit_log(limit=10_000))
        async with httpx.AsyncClient(base_url=node.url, timeout=10) as client:
            r = await client.post(
                f"/v1/tokens/{token_id}/rotate",
                json={},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert r.status_code == 429, r.text
            assert r.json()["error"]["code"] == "RATE_LIMITED"
            assert 3590 <= int(r.headers["Retry-After"]) <= 3600  # an hour, for a token that
            # never expires
            ok = await client.get("/v1/records", headers={"Authorization": f"Bearer {token}"})
            assert ok.status_code == 200  # still the live token
            assert len(await node.store.audit_log(limit=10_000)) == audit_before

            for _ in range(5):
                await _age(node, token_id, 3601)
                r = await client.post(
                    f"/v1/tokens/{token_id}/rotate",
                    json={},
                    headers={"Authorization": f"Bearer {token}"},
                )
                assert r.status_code == 200, r.text
                token, token_id = r.json()["token"], r.json()["token_id"]
                again = await client.post(
                    f"/v1/tokens/{token_id}/rotate",
                    json={},
                    headers={"Authorization": f"Bearer {token}"},
                )
                assert again.status_code == 429  # the new token is a minute from rotating
        rows = [v for _, v in await node.store.list_state("tokens") if v["sa_id"] == sa_id]
        assert len(rows) == 2  # the live token and the one it replaced
        assert sorted(r["revoked_ms"] is None for r in rows) == [False, True]


async def test_a_short_lived_token_can_still_slide_its_expiry(tmp_path: Path) -> None:
    """A token that lives 10 minutes could not rotate in time if it had to be an
    hour old: it may rotate once a quarter of its life (150 s) has passed."""
    cfg = NodeConfig(rate_per_s=1e6, rate_burst=10**6)
    async with open_node(tmp_path / "n", config=cfg) as node:
        token, token_id = await _guest(node, token_ttl_s=600)
        async with httpx.AsyncClient(base_url=node.url, timeout=10) as client:
            headers = {"Authorization": f"Bearer {token}"}
            r = await client.post(f"/v1/tokens/{token_id}/rotate", json={}, headers=headers)
            assert r.status_code == 429
            assert 140 <= int(r.headers["Retry-After"]) <= 150
            await _age(node, token_id, 151)
            r = await client.post(f"/v1/tokens/{token_id}/rotate", json={}, headers=headers)
            assert r.status_code == 200, r.text
