"""A revoked or expired token stops reading within 1 s, even mid-stream (issue 10).

Before: an open ``feed=continuous`` stream kept delivering records after
``DELETE /v1/service-accounts/{id}``, and a longpoll held for up to 30 s. Now a
long-lived read checks its bearer again on every page and heartbeat; a
revocation wakes the waiting readers, a wait ends at the token's expiry. The SSE
stream ends with ``event: error`` (TOKEN_REVOKED / TOKEN_EXPIRED); a longpoll
answers the error (protocol.md §8.4, §8.5). Real node (SQLite, hypercorn),
plain httpx clients.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import httpx
import pytest
import trio

from fedpeer.consent.tokens import TOKEN_TABLE
from fedpeer.errors import TokenRevoked
from fedpeer.identity.keys import SigningKey
from fedpeer.peer import NodeConfig, PeerClient, open_node
from fedpeer.peer._unpair import build_unpair_request
from fedpeer.peer.node import Node
from fedpeer.store import SQLiteStore, StateTx
from tests.hostile.test_longpoll_waiters import CountingStore

CFG = NodeConfig(rate_per_s=1e6, rate_burst=10**6)
BOUND_S = 1.0


async def _reader(node: Node, ttl_s: int | None = None) -> tuple[str, str, str]:
    issued = await node.tokens.create("reader", scopes=["reader"], ttl_s=ttl_s)
    return issued.service_account.id, issued.token, issued.token_id


async def _revoke_http(node: Node, sa_id: str) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.delete(
            f"{node.url}/v1/service-accounts/{sa_id}",
            headers={"Authorization": f"Bearer {node.admin_token}"},
        )
        assert r.status_code == 200, r.text


async def _sse_until_end(
    url: str,
    token: str,
    got_record: trio.Event,
    lines: list[str],
    ended_at: list[float],
    ended: trio.Event | None = None,
) -> None:
    headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
    async with (
        httpx.AsyncClient(timeout=httpx.Timeout(10, read=None)) as client,
        client.stream("GET", url + "/v1/sync/changes?feed=continuous", headers=headers) as r,
    ):
        assert r.status_code == 200
        async for line in r.aiter_lines():
            lines.append(line)
            if line == "event: record":
                got_record.set()
    ended_at.append(trio.current_time())
    if ended is not None:
        ended.set()


def _error_event(lines: list[str]) -> dict[str, object]:
    i = lines.index("event: error")
    data = lines[i + 1]
    assert data.startswith("data: ")
    body = json.loads(data[len("data: ") :])
    assert isinstance(body, dict)
    return body["error"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("how", ["delete", "silent-heartbeat"])
async def test_sse_stream_ends_within_a_second_of_revocation(tmp_path: Path, how: str) -> None:
    """``delete``: the DELETE route (wakes the stream). ``silent-heartbeat``: the token
    row revoked behind the node's back (no wake-up), so only the per-heartbeat
    re-check (heartbeat 0.3 s here) can end the stream."""
    cfg = NodeConfig(rate_per_s=1e6, rate_burst=10**6, heartbeat_s=0.3)
    async with open_node(tmp_path / "n", config=cfg if how != "delete" else CFG) as node:
        sa_id, token, token_id = await _reader(node)
        await node.append(namespace="a", thread="t", kind="k", body=1)
        got, lines, ended = trio.Event(), [], []  # type: ignore[var-annotated]
        end = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_sse_until_end, node.url, token, got, lines, ended, end)
            with trio.fail_after(10):
                await got.wait()  # the reader was reading
            t0 = trio.current_time()
            if how == "delete":
                await _revoke_http(node, sa_id)
            else:

                def revoke_row(tx: StateTx) -> None:
                    row = tx.get(TOKEN_TABLE, token_id)
                    assert row is not None
                    tx.put(TOKEN_TABLE, token_id, {**row, "revoked_ms": 1})

                await node.store.transact(revoke_row)
            # a record written after the revocation must not reach the revoked reader
            await node.append(namespace="a", thread="t", kind="k", body=2)
            with trio.fail_after(5):
                await end.wait()
        assert ended[0] - t0 < BOUND_S, f"stream ended {ended[0] - t0:.2f} s after revocation"
        assert _error_event(lines)["code"] == "TOKEN_REVOKED"
        # Nothing appended after the revocation reached the revoked reader.
        after = lines[lines.index("event: error") :]
        assert "event: record" not in after
        records = [ln for ln in lines if ln == "event: record"]
        assert len(records) == 1


async def test_sse_stream_ends_at_token_expiry(tmp_path: Path) -> None:
    async with open_node(tmp_path / "n", config=CFG) as node:
        _sa_id, token, _tid = await _reader(node, ttl_s=1)
        await node.append(namespace="a", thread="t", kind="k", body=1)
        got, lines, ended = trio.Event(), [], []  # type: ignore[var-annotated]
        issued_at = trio.current_time()
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_sse_until_end, node.url, token, got, lines, ended)
        # The token lived 1 s; the stream ended within 1 s after that.
        assert ended[0] - issued_at < 1.0 + BOUND_S
        assert _error_event(lines)["code"] == "TOKEN_EXPIRED"


async def _longpoll(url: str, token: str, since: str) -> tuple[httpx.Response, float]:
    async with httpx.AsyncClient(timeout=40) as client:
        r = await client.get(
            url + "/v1/sync/changes",
            params={"feed": "longpoll", "since": since, "timeout": "30"},
            headers={"Authorization": f"Bearer {token}"},
        )
    return r, trio.current_time()


async def _head_cursor(url: str, token: str) -> str:
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.get(url + "/v1/sync/changes", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200, r.text
        return str(r.json()["next_cursor"])


async def test_longpoll_ends_within_a_second_of_revocation(tmp_path: Path) -> None:
    store = CountingStore(await SQLiteStore.open(tmp_path / "store.sqlite3"))
    try:
        async with open_node(None, store=store, config=CFG) as node:  # type: ignore[arg-type]
            sa_id, token, _tid = await _reader(node)
            await node.append(namespace="a", thread="t", kind="k", body=1)
            since = await _head_cursor(node.url, token)
            out: list[tuple[httpx.Response, float]] = []

            async def poll() -> None:
                out.append(await _longpoll(node.url, token, since))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(poll)
                with trio.fail_after(10):
                    await store.until(lambda: store.parked == 1)  # the longpoll waits
                t0 = trio.current_time()
                await _revoke_http(node, sa_id)
            response, ended = out[0]
            assert ended - t0 < BOUND_S, f"longpoll answered {ended - t0:.2f} s after revocation"
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "TOKEN_REVOKED"
    finally:
        await store.aclose()


async def test_longpoll_ends_at_token_expiry(tmp_path: Path) -> None:
    async with open_node(tmp_path / "n", config=CFG) as node:
        _sa, token, _tid = await _reader(node, ttl_s=2)
        t_issued = trio.current_time()
        since = await _head_cursor(node.url, token)
        response, ended = await _longpoll(node.url, token, since)
        assert ended - t_issued < 2.0 + BOUND_S
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "TOKEN_EXPIRED"


async def test_peer_client_stream_raises_token_revoked(tmp_path: Path) -> None:
    async with open_node(tmp_path / "n", config=CFG) as node:
        sa_id, token, _tid = await _reader(node)
        await node.append(namespace="a", thread="t", kind="k", body=1)
        async with PeerClient(node.url, token=token) as peer:

            async def follow() -> None:
                async for ev in peer.stream_changes():
                    if ev.record is not None:
                        await _revoke_http(node, sa_id)

            with trio.fail_after(10), pytest.raises(TokenRevoked):
                await follow()


async def test_an_idle_sse_stream_checks_its_bearer_once_per_heartbeat(tmp_path: Path) -> None:
    """Every wait of a long read goes through ``Ctx.wait_new``, which checks the bearer
    after it: an idle stream costs one token lookup per heartbeat, not one per
    heartbeat plus one per (empty) page."""
    cfg = NodeConfig(rate_per_s=1e6, rate_burst=10**6, heartbeat_s=0.1)
    async with open_node(tmp_path / "n", config=cfg) as node:
        _sa, token, _tid = await _reader(node)
        tokens = node.state.tokens
        real = tokens.authenticate
        calls: list[str] = []

        async def counting(bearer: str):  # type: ignore[no-untyped-def]
            calls.append(bearer)
            return await real(bearer)

        tokens.authenticate = counting  # type: ignore[method-assign]
        heartbeats = 0
        headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
        with trio.fail_after(10):
            async with (
                httpx.AsyncClient(timeout=httpx.Timeout(10, read=None)) as client,
                client.stream(
                    "GET", node.url + "/v1/sync/changes?feed=continuous", headers=headers
                ) as r,
            ):
                assert r.status_code == 200
                async for line in r.aiter_lines():
                    if line == ": heartbeat":
                        heartbeats += 1
                        if heartbeats == 6:
                            seen = len(calls)
                            break
        # One for the request itself, then one per heartbeat (the next may be in flight).
        assert 1 + heartbeats <= seen <= 2 + heartbeats, (seen, heartbeats)
        assert set(calls) == {token}


async def test_wake_ups_without_records_do_not_starve_the_heartbeat(tmp_path: Path) -> None:
    """Anyone holding a token can make the node wake every waiting reader without a
    new record (rotate its own token, have grants change) as often as the rate limit
    allows. Each wake-up used to restart the stream's heartbeat wait, so a stream
    woken more often than every ``heartbeat_s`` never sent one, and a client that
    drops a mute stream (ours: 60 s, protocol.md §8.7) dropped a healthy one. The
    attacker here wakes the node each time the stream has parked in its wait."""
    store = CountingStore(await SQLiteStore.open(tmp_path / "store.sqlite3"))
    cfg = NodeConfig(rate_per_s=1e6, rate_burst=10**6, heartbeat_s=1.0)
    try:
        async with open_node(None, store=store, config=cfg) as node:  # type: ignore[arg-type]
            _sa, token, _tid = await _reader(node)
            wakes = 0

            async def wake_every_wait() -> None:
                nonlocal wakes
                while True:  # ends with the test's cancel scope
                    await store.until(lambda: store.parked > 0)
                    await store.transact(lambda tx: tx.wake_waiters())
                    wakes += 1
                    await store.until(lambda: store.parked == 0)

            headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
            with trio.fail_after(10):
                async with (
                    trio.open_nursery() as attack,
                    httpx.AsyncClient(timeout=httpx.Timeout(10, read=None)) as client,
                    client.stream(
                        "GET", node.url + "/v1/sync/changes?feed=continuous", headers=headers
                    ) as r,
                ):
                    assert r.status_code == 200
                    attack.start_soon(wake_every_wait)
                    async for line in r.aiter_lines():
                        if line == ": heartbeat":
                            break
                    attack.cancel_scope.cancel()
            # every wait was cut short, and the heartbeat came anyway
            assert wakes >= 3, wakes
    finally:
        await store.aclose()


async def test_unpair_request_ends_the_senders_open_longpoll(tmp_path: Path) -> None:
    """A peer's signed unpair request (protocol.md §11.3) revokes what it holds here
    through the same revocation as ``DELETE /v1/service-accounts``: its longpoll
    parked on this node ends within a second with TOKEN_REVOKED."""
    store = CountingStore(await SQLiteStore.open(tmp_path / "store.sqlite3"))
    try:
        async with open_node(None, store=store, config=CFG) as node:  # type: ignore[arg-type]
            peer = SigningKey.generate()
            issued = await node.tokens.create("peer", scopes=["reader"], holder_did=peer.did)
            await node.grants.create(peer.did)
            await node.append(namespace="a", thread="t", kind="k", body=1)
            since = await _head_cursor(node.url, issued.token)
            out: list[tuple[httpx.Response, float]] = []

            async def poll() -> None:
                out.append(await _longpoll(node.url, issued.token, since))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(poll)
                with trio.fail_after(10):
                    await store.until(lambda: store.parked == 1)  # the longpoll waits
                t0 = trio.current_time()
                async with httpx.AsyncClient(timeout=10) as client:
                    r = await client.post(
                        node.url + "/v1/sync/unpair",
                        json=build_unpair_request(peer, node.did),
                    )
                assert r.status_code == 200, r.text
                assert r.json()["credentials_revoked"] == [issued.service_account.id]
            response, ended = out[0]
            assert ended - t0 < BOUND_S, f"longpoll answered {ended - t0:.2f} s after unpairing"
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "TOKEN_REVOKED"
    finally:
        await store.aclose()


async def _slow_sse_reader(
    url: str,
    token: str,
    got_record: trio.Event,
    revoked: trio.Event,
    counts: dict[str, int],
    checkpoint_after: trio.Event | None = None,
) -> None:
    """A reader taking one record every 5 ms through a small receive buffer (so
    the node's writes wait on it), counting the records after ``revoked``
    (and setting ``checkpoint_after`` at the first checkpoint after it)."""
    headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
    transport = httpx.AsyncHTTPTransport(
        socket_options=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)]
    )
    async with (
        httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(10, read=None)) as client,
        client.stream(
            "GET", url + "/v1/sync/changes?feed=continuous&limit=10000", headers=headers
        ) as r,
    ):
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line == "event: record":
                got_record.set()
                counts["after" if revoked.is_set() else "before"] += 1
                await trio.sleep(0.005)  # the slow reader (its pace, not a synchronisation)
            elif line == "event: error":
                counts["error"] += 1
            elif line == "event: checkpoint" and revoked.is_set() and checkpoint_after is not None:
                checkpoint_after.set()


async def test_a_revocation_stops_a_slow_reader_in_the_middle_of_a_page(tmp_path: Path) -> None:
    """Before: the bearer was checked between pages only, and one page holds up to
    ``limit`` records: a reader taking a 30 MB page slowly kept receiving it for
    seconds after its token was revoked (the whole page). Now a stream checks
    again every 0.5 s within a page too. What still arrives after the revocation
    is what the socket buffers already held and half a second's worth."""
    cfg = NodeConfig(rate_per_s=1e6, rate_burst=10**6, page_max_bytes=64 * 1024 * 1024)
    async with open_node(tmp_path / "n", config=cfg) as node:
        sa_id, token, _token_id = await _reader(node)
        for i in range(600):
            await node.append(namespace="a", thread="t", kind="k", body="x" * 50_000 + str(i))
        got, revoked = trio.Event(), trio.Event()
        counts = {"before": 0, "after": 0, "error": 0}
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_slow_sse_reader, node.url, token, got, revoked, counts)
            with trio.fail_after(10):
                await got.wait()
            await _revoke_http(node, sa_id)
            revoked.set()
        assert counts["error"] == 1  # TOKEN_REVOKED, at the end
        assert counts["before"] + counts["after"] < 600, counts  # not the whole page
        assert counts["after"] < 350, counts


async def test_a_deleted_grant_stops_a_slow_reader_in_the_middle_of_a_page(
    tmp_path: Path,
) -> None:
    """The same for consent: a grant deleted while a slow reader takes a big page
    hides the rest of the page within half a second (the stream re-reads the
    grants with the bearer), and the stream moves on with a checkpoint."""
    from fedpeer.consent.grants import Target

    cfg = NodeConfig(rate_per_s=1e6, rate_burst=10**6, page_max_bytes=64 * 1024 * 1024)
    async with open_node(tmp_path / "n", config=cfg) as node:
        for i in range(600):
            await node.append(namespace="a", thread="t", kind="k", body="x" * 50_000 + str(i))
        invite = await node.invites.create(scopes=["reader"], target=Target("namespace", "a"))
        guest = SigningKey.generate()
        async with PeerClient(node.url) as p:
            cred = await p.redeem(invite.url, holder_key=guest, holder_type="guest")
        (grant,) = await node.grants.list(grantee_did=guest.did)
        got, deleted, moved_on = trio.Event(), trio.Event(), trio.Event()
        counts = {"before": 0, "after": 0, "error": 0}
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                _slow_sse_reader, node.url, cred.token, got, deleted, counts, moved_on
            )
            with trio.fail_after(10):
                await got.wait()
            await node.grants.delete(grant.id)
            deleted.set()
            with trio.fail_after(30):
                await moved_on.wait()
            nursery.cancel_scope.cancel()
        assert counts["error"] == 0  # the token still works; it may see nothing more
        assert counts["before"] + counts["after"] < 600, counts  # not the whole page
        assert counts["after"] < 350, counts
