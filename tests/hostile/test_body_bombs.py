"""Small bodies that decode into huge values (audit, round 6).

Before: every body was decoded on the event loop, and the two routes open to
anyone (an invite redeem, even of an unknown invite, and an unpair notice) read
up to ``max_body_bytes`` (4 MiB). One CBOR array of 4 million empty arrays takes
~3.5 s and ~300 MB to decode: 8 at once stalled ``/health`` for 33 s and took the
node to 2.4 GB. Now the public routes read at most ``PUBLIC_BODY_MAX`` (16 KiB)
holding at most ``PUBLIC_BODY_ITEMS`` values (counted on a fast parse first),
and a body over 64 KiB is decoded in a worker thread, one at a time, with the
cyclic collector paused (its full collections over millions of fresh
containers held the GIL for a second or more). Real node (SQLite,
hypercorn), plain httpx clients.
"""

from __future__ import annotations

import struct
from pathlib import Path

import anyio
import httpx
import trio

from fedpeer.peer import NodeConfig, open_node
from fedpeer.peer._http import PUBLIC_BODY_ITEMS, PUBLIC_BODY_MAX

CFG = NodeConfig(rate_per_s=1e6, rate_burst=10**6)


def _cbor_bomb(size: int) -> bytes:
    """One CBOR array of ``size - 5`` empty arrays: ``size`` bytes."""
    n = size - 5
    return b"\x9a" + struct.pack(">I", n) + b"\x80" * n


async def test_public_routes_refuse_a_large_body_before_decoding_it(tmp_path: Path) -> None:
    async with (
        open_node(tmp_path / "n", config=CFG) as node,
        httpx.AsyncClient(base_url=node.url, timeout=30) as http,
    ):
        bomb = _cbor_bomb(PUBLIC_BODY_MAX + 1)
        headers = {"Content-Type": "application/cbor"}
        for path in (f"/v1/invites/{'0' * 32}/redeem", "/v1/sync/unpair"):
            answer = await http.post(path, content=bomb, headers=headers)
            assert answer.status_code == 413, (path, answer.text)
            assert answer.json()["error"]["code"] == "BODY_TOO_LARGE"
        # a body under the limit holding thousands of values: refused from a fast
        # parse, before the full decode
        json_bomb = b"[" + b"{}," * (PUBLIC_BODY_MAX // 3 - 1) + b"{}]"
        for path in (f"/v1/invites/{'0' * 32}/redeem", "/v1/sync/unpair"):
            for body, ctype in ((_cbor_bomb(PUBLIC_BODY_MAX), "cbor"), (json_bomb, "json")):
                answer = await http.post(
                    path, content=body, headers={"Content-Type": f"application/{ctype}"}
                )
                assert answer.status_code == 400, answer.text
                assert answer.json()["error"]["code"] == "MALFORMED"
                assert f"more than {PUBLIC_BODY_ITEMS} values" in answer.json()["error"]["message"]


async def test_large_bodies_decode_off_the_event_loop(tmp_path: Path) -> None:
    """Four 3 MiB bombs at once from an admin (each ~2.5 s of decoding): the node
    keeps answering ``/health`` meanwhile (before: a stall of the whole decode,
    one bomb after the other)."""
    async with (
        open_node(tmp_path / "n", config=CFG) as node,
        httpx.AsyncClient(base_url=node.url, timeout=60) as http,
    ):
        headers = {
            "Content-Type": "application/cbor",
            "Authorization": f"Bearer {node.admin_token}",
        }
        bomb = _cbor_bomb(3 * 1024 * 1024)
        answers: list[httpx.Response] = []
        slowest = 0.0
        health_checks = 0

        async def send() -> None:
            answers.append(await http.post("/v1/records", content=bomb, headers=headers))

        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(send)
            while len(answers) < 4 and health_checks < 400:
                started = trio.current_time()
                assert (await http.get("/health")).status_code == 200
                slowest = max(slowest, trio.current_time() - started)
                health_checks += 1
                with trio.move_on_after(0.05):
                    await trio.sleep_forever()  # pace the probe, not a synchronisation
        assert [a.status_code for a in answers] == [400] * 4
        assert {a.json()["error"]["code"] for a in answers} == {"MALFORMED"}
        assert health_checks >= 5, health_checks  # the bombs took a while: probes ran
        assert slowest < 1.5, slowest


def test_a_large_body_decodes_off_the_loop_under_asyncio_too(tmp_path: Path) -> None:
    """The off-loop decode's limiter belongs to each event loop (an embedder may
    run asyncio, or nodes in two threads): two asyncio runs one after the other,
    each posting a body over the inline limit, both get their answer."""

    async def main(name: str) -> int:
        async with (
            open_node(tmp_path / name, config=CFG) as node,
            httpx.AsyncClient(base_url=node.url, timeout=30) as http,
        ):
            headers = {
                "Content-Type": "application/cbor",
                "Authorization": f"Bearer {node.admin_token}",
            }
            answer = await http.post("/v1/records", content=_cbor_bomb(256 * 1024), headers=headers)
            return answer.status_code

    assert [anyio.run(main, name, backend="asyncio") for name in ("a", "b")] == [400, 400]
