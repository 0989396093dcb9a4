"""A federated redeemer's ``reciprocal.url`` is fetched with the same caps as a pull
(issue 10; protocol.md §11.2).

The issuer of an invite, on a two-way redemption, fetches the manifest at the URL
the redeemer names: a way to make the node connect anywhere and read whatever it
is given. Before, that fetch had no byte or time cap and followed nothing but
trusted the body. Now the answer is read under a small byte cap (a manifest is a
few KiB), one deadline, and a redirect is refused; the redemption itself stands
and reports the failed reverse pair. A real issuer node (SQLite, hypercorn), a
hostile fake redeemer endpoint (tests/hostile/fakepeer.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from fedpeer.peer import NodeConfig, PeerClient, open_node
from tests.hostile.fakepeer import HostilePeer

MIB = 1024 * 1024


@pytest.mark.parametrize(
    ("behaviour", "code"),
    [("endless", "PAGE_TOO_LARGE"), ("huge", "PAGE_TOO_LARGE"), ("redirect", "REDIRECT_REFUSED")],
)
async def test_reciprocal_url_is_fetched_bounded(tmp_path: Path, behaviour: str, code: str) -> None:
    hostile = HostilePeer("redirect", manifest_behaviour=behaviour)
    cfg = NodeConfig(rate_per_s=1e6, rate_burst=10**6)
    async with trio.open_nursery() as nursery:
        await hostile.start(nursery)
        async with open_node(tmp_path / "issuer", config=cfg) as issuer:
            invite = await issuer.invites.create(scopes=["reader"])
            async with PeerClient(issuer.url) as redeemer:
                # the time bound: fail_after, not a timing assert (load must not fail it)
                with trio.fail_after(15):
                    _cred, answer = await redeemer.redeem_with_answer(
                        invite.url,
                        holder_key=hostile.key,  # the redeemer's DID is the hostile endpoint's
                        holder_type="federated",
                        reciprocal={
                            "token": "fp_" + "0" * 20 + "_" + "0" * 64,
                            "scopes": ["sync:read"],
                            "url": hostile.url,
                        },
                    )
            reverse = answer["reverse_pair"]
            assert isinstance(reverse, dict)
            assert reverse["error"]["code"] == code, reverse
            assert not issuer.pairs.list()  # no pair to the hostile endpoint
        nursery.cancel_scope.cancel()
    assert hostile.requests.get("/.well-known/fedpeer") == 1
    # Cut off near the manifest cap (256 KiB; socket buffers aside), not at 1 GiB.
    assert max(hostile.sent) < 16 * MIB, hostile.sent
