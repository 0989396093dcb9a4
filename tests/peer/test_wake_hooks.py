"""What counts as "the peer was seen again" on a real node (issue 14).

A node's pair to a peer that cannot be reached backs off for an hour. A request
to the node authenticated with a token the peer holds wakes that pair at once (the
peer is clearly back); a request with another DID's token, or an anonymous one,
does not. Real node, real hypercorn, real HTTP; the pair's peer is a loopback port
nothing listens on.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest

from fedpeer.identity.keys import SigningKey
from fedpeer.peer import Node, NodeConfig, open_node
from fedpeer.sync.backoff import Backoff
from fedpeer.sync.options import SyncEvent, SyncOptions
from fedpeer.sync.pairs import PairState

PEER = SigningKey.from_seed(b"\x31" * 32)
OTHER = SigningKey.from_seed(b"\x32" * 32)


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    opts = SyncOptions(backoff=Backoff(base_s=3600, cap_s=3600), seed=3)
    cfg = NodeConfig(rate_per_s=10_000, rate_burst=10_000)
    async with open_node(tmp_path / "n", config=cfg, sync=opts) as n:
        yield n


async def test_a_request_from_the_peer_wakes_its_failing_pair(node: Node) -> None:
    with socket.socket() as hole:  # bound, never listening: connections are refused
        hole.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{hole.getsockname()[1]}"
        pair, _ = await node.pairs.manager.create(
            peer_did=PEER.did, peer_url=dead_url, credential=None
        )
        with anyio.fail_after(20):
            failed = await node.pairs.wait_for(pair.id, lambda p: p.state is PairState.FAILING)
        assert failed.retries == 1
        kicks: list[SyncEvent] = []
        kicked = anyio.Event()

        def on_event(ev: SyncEvent) -> None:
            if "kick" in ev.actions:
                kicks.append(ev)
                kicked.set()

        node.pairs.add_listener(on_event)
        await anyio.wait_all_tasks_blocked()  # the driver is in its backoff sleep
        status = node.pairs.status(pair.id)
        assert status.next_try_s is not None
        assert status.next_try_s > 1000

        peer_token = (await node.tokens.create("peer", holder_did=PEER.did)).token
        other_token = (await node.tokens.create("other", holder_did=OTHER.did)).token
        async with httpx.AsyncClient(base_url=node.url) as http:
            for bearer in (other_token, None):
                headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
                r = await http.get("/v1/records", headers=headers)
                assert r.status_code in (200, 401)
            await anyio.wait_all_tasks_blocked()  # a kick would have been scheduled by now
            assert kicks == []  # another DID, or nobody: the pair keeps backing off
            r = await http.get("/v1/records", headers={"Authorization": f"Bearer {peer_token}"})
            assert r.status_code == 200
        with anyio.fail_after(20):
            await kicked.wait()
            # retried at once (and, the peer still being down, failing again)
            again = await node.pairs.wait_for(
                pair.id, lambda p: p.state is PairState.FAILING and p.stats.errors_total >= 2
            )
        assert again.retries == 1
