"""The spec is enough: a client written from docs/protocol.md alone talks to a node.

interop/specclient/client.py was written by an implementer who read only the
spec and the public vectors (see its README). This runs it, as a separate
process that imports no fedpeer code, against a real node on loopback: over
HTTPS (pin checked, federated invite redemption, negative probes) and over plain
HTTP with a bearer token. Any failed step, or a probe answered with another code
than the spec's, fails the test.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import anyio
import pytest

from fedpeer.consent.grants import Target
from fedpeer.peer import NodeConfig, open_node

CLIENT = Path(__file__).with_name("specclient") / "client.py"
_PROBE = re.compile(r"-> (\S+?),? .*?\(want ([A-Z_]+)")


async def _run_client(*args: str) -> str:
    with anyio.fail_after(120):
        done = await anyio.run_process([sys.executable, str(CLIENT), *args], check=False)
    out = (done.stdout + done.stderr).decode(errors="replace")
    assert done.returncode == 0, out[-4000:]
    return out


@pytest.mark.parametrize("tls", [True, False], ids=["https-invite-probes", "http-token"])
async def test_a_client_written_from_the_spec_alone_interoperates(
    tmp_path: Path, tls: bool
) -> None:
    cfg = NodeConfig(tls=tls, rate_per_s=1e6, rate_burst=10**6)
    async with open_node(tmp_path / "node", config=cfg) as node:
        assert node.admin_token is not None
        await node.records.append(namespace="notes/shared", thread="t1", kind="item", body="milk")
        await node.records.append(
            namespace="notes/shared",
            thread="t1",
            kind="item",
            body={"qty": 2, "price": 1.5, "tags": ["a", "b"]},
        )
        await node.records.append(namespace="notes/shared", thread="t1", kind="item", body=b"\0\1")
        await node.records.append(namespace="other", thread="x", kind="k", body=None)
        common = ["--did", node.did, "--append-token", node.admin_token]
        if tls:
            invite = await node.invites.create(
                target=Target("namespace", "notes/"),
                max_uses=1,
                accept_holder_types=["guest", "federated"],
            )
            assert "pin=" in invite.url  # so the client checks the pin it was given
            out = await _run_client("--invite", invite.url, "--probe", *common)
            probes = _PROBE.findall(out)
            assert len(probes) >= 10, out[-4000:]
            wrong = [(got, want) for got, want in probes if got != want]
            assert not wrong, wrong
        else:
            token = await node.tokens.create("spec", scopes=["reader"], ttl_s=600)
            out = await _run_client("--base", node.url, "--token", token.token, *common)
        assert "WARNING" not in out, out[-4000:]
