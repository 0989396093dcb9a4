"""A redeemer cannot use its holder DID to probe the issuer's network.

A federated redemption names its holder DID, and a did:web makes the issuer
fetch ``https://<host>:<port>/.../did.json``. Before, that happened before the
proof was even looked at, the answer's KEY_UNKNOWN message told the redeemer
why the fetch failed (refused, timed out, "answered HTTP 401": what listens
where), and a failed redemption leaves the invite as it was, so one invite URL
gave unlimited probes. Now: the proof's shape is checked first; a DID whose
host is an internal address literal is refused without a connection; the
message names no cause (the node logs it); fetches run a few at a time
(tests/identity/test_resolver.py).

A real issuer node (SQLite, hypercorn on loopback); a loopback listener that
counts the connections the node makes.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import trio

from fedpeer.consent.invites import InviteUrl, parse_invite_url
from fedpeer.identity.resolver import DidWebDriver, Resolver
from fedpeer.peer import NodeConfig, open_node


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def _listen(
    nursery: trio.Nursery, handler: Callable[[trio.SocketStream], Awaitable[None]]
) -> int:
    """The port of a loopback listener serving ``handler`` in ``nursery``."""
    (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    nursery.start_soon(trio.serve_listeners, handler, [listener])
    return int(listener.socket.getsockname()[1])


async def _redeem(
    http: httpx.AsyncClient, invite: InviteUrl, holder_did: str, proof: str = ""
) -> httpx.Response:
    """A federated redeem of ``invite`` as ``holder_did`` (a proof of the right
    shape that verifies under no key, unless ``proof`` is given)."""
    return await http.post(
        f"/v1/invites/{invite.invite_id}/redeem",
        json={
            "holder_type": "federated",
            "holder_did": holder_did,
            "holder_proof": proof or _b64(bytes(64)),
            "holder_proof_issued_at_ms": int(time.time() * 1000),
            "secret": invite.secret,
        },
    )


async def test_a_holder_did_cannot_probe_the_issuers_network(tmp_path: Path) -> None:
    accepted: list[object] = []

    async def count(stream: trio.SocketStream) -> None:
        accepted.append(stream)
        await stream.aclose()

    cfg = NodeConfig(rate_per_s=1e6, rate_burst=10**6)
    async with trio.open_nursery() as nursery:
        port = await _listen(nursery, count)
        async with open_node(tmp_path / "issuer", config=cfg) as issuer:
            created = await issuer.invites.create(
                scopes=["reader"], accept_holder_types=["federated"]
            )
            invite = parse_invite_url(created.url)

            async def redeem(holder_did: str, proof: str) -> httpx.Response:
                async with httpx.AsyncClient(base_url=issuer.url, timeout=30) as http:
                    return await _redeem(http, invite, holder_did, proof)

            sixty_four = _b64(bytes(64))
            generic = {
                "code": "KEY_UNKNOWN",
                "message": "cannot resolve the holder DID to a document",
            }
            # a proof that cannot be a signature: refused before any fetch
            answer = await redeem(f"did:web:example.com%3A{port}", "not-a-signature")
            assert answer.json()["error"]["code"] == "BAD_PROOF"
            # this machine or an internal address, however spelled: no connection
            for host in ("127.0.0.1", "localhost", "127.1", "2130706433", "10.0.0.1"):
                answer = await redeem(f"did:web:{host}%3A{port}", sixty_four)
                assert answer.status_code == 403, answer.text
                assert answer.json()["error"] == generic
            assert accepted == []
            # a DNS name that looks up to this machine (DNS rebinding): no connection

            async def to_this_machine(host: str, port: int) -> list[str]:
                return ["127.0.0.1"]

            issuer.core._resolver = Resolver(drivers={"web": DidWebDriver(lookup=to_this_machine)})
            answer = await redeem(f"did:web:rebind.example%3A{port}", sixty_four)
            assert answer.status_code == 403, answer.text
            assert answer.json()["error"] == generic
            assert accepted == []
            # a host that is fetched (a public name; here loopback, let through as
            # in tests): the answer does not say what happened there, a listener
            # that hangs up
            issuer.core._resolver = Resolver(drivers={"web": DidWebDriver(allow_http=True)})
            answer = await redeem(f"did:web:127.0.0.1%3A{port}", sixty_four)
            assert answer.json()["error"] == generic
            assert len(accepted) == 1
            (info,) = await issuer.invites.list()
            assert (info.invite_id, info.state, info.uses) == (invite.invite_id, "active", 0)
        nursery.cancel_scope.cancel()


async def test_one_invite_holds_at_most_one_did_fetch_at_a_time(tmp_path: Path) -> None:
    """The resolver runs a few did:web fetches at a time for the whole node: one
    invite URL must not be enough to hold them all (with hosts that accept and
    stall) and shut every other federated did:web redeemer out. A second redeem
    of an invite whose holder DID is being fetched is RATE_LIMITED at once; other
    invites still get their turn."""
    held: list[trio.SocketStream] = []
    arrived = trio.Event()
    release = trio.Event()

    async def stall(stream: trio.SocketStream) -> None:
        held.append(stream)
        arrived.set()
        await release.wait()
        await stream.aclose()

    cfg = NodeConfig(rate_per_s=1e6, rate_burst=10**6)
    async with trio.open_nursery() as nursery:
        port = await _listen(nursery, stall)
        async with (
            open_node(tmp_path / "issuer", config=cfg) as issuer,
            httpx.AsyncClient(base_url=issuer.url, timeout=60) as http,
        ):
            issuer.core._resolver = Resolver(
                drivers={"web": DidWebDriver(allow_http=True, timeout_s=30)}
            )
            invites = [
                parse_invite_url(
                    (
                        await issuer.invites.create(
                            scopes=["reader"], accept_holder_types=["federated"]
                        )
                    ).url
                )
                for _ in range(2)
            ]
            stalled = f"did:web:127.0.0.1%3A{port}"

            async def redeem(invite: InviteUrl) -> httpx.Response:
                return await _redeem(http, invite, stalled)

            answers: list[httpx.Response] = []
            done = trio.Event()

            async def first() -> None:
                answers.append(await redeem(invites[0]))
                done.set()

            nursery.start_soon(first)
            with trio.fail_after(10):
                await arrived.wait()  # the first redeem's fetch is in, stalled
                again = await redeem(invites[0])
            assert again.status_code == 429, again.text
            assert again.json()["error"]["code"] == "RATE_LIMITED"
            assert again.headers["retry-after"] == "1"
            audit = await issuer.store.audit_log(0, 1000)
            assert not [e for e in audit if e.event.get("reason") == "RATE_LIMITED"]
            assert len(held) == 1  # refused without a fetch
            arrived = trio.Event()
            async with trio.open_nursery() as other:
                other.start_soon(redeem, invites[1])
                with trio.fail_after(10):
                    await arrived.wait()  # another invite's redeem gets its own fetch
                assert len(held) == 2
                release.set()
            with trio.fail_after(40):
                await done.wait()
            assert answers[0].json()["error"]["code"] == "KEY_UNKNOWN"
        nursery.cancel_scope.cancel()
