"""The signed well-known manifest, verified by PeerClient against real servers."""

from __future__ import annotations

import copy
import time

import pytest
import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from fedpeer.errors import BadSignature, DidMismatch, PeerInvalid, SignatureExpired
from fedpeer.identity.envelope import sign_document, verify_document
from fedpeer.identity.keys import SigningKey
from fedpeer.peer import Node, PeerClient
from fedpeer.peer._pinning import advertised_page_limit

from .conftest import serve_asgi


async def test_manifest_verifies(node: Node) -> None:
    async with PeerClient(node.url) as peer:
        verified = await peer.manifest(expected_did=node.did)
    doc = verified.document
    assert verified.did == node.did
    assert doc["did"] == node.did
    assert doc["handle"] == "test-node"
    assert node.url in doc["urls"]
    assert doc["endpoints"]["changes"] == "/v1/sync/changes"
    # Valid for 7 days.
    assert 7 * 86400 - 5 <= verified.expires_at - verified.signed_at <= 7 * 86400


async def test_manifest_is_resigned_when_old(node: Node) -> None:
    signer = node.state.signer
    body = {"type": "fedpeer-federation-manifest", "did": node.did}
    first = signer.current(body, now=1_000_000.0)
    assert signer.current(body, now=1_000_000.0 + 3600) is first
    later = signer.current(body, now=1_000_000.0 + 2 * 86400)
    assert later is not first
    verify_document(later, expected_did=node.did, now=1_000_000.0 + 2 * 86400)


async def _serve_manifest(nursery: trio.Nursery, well_known: dict[str, object]) -> str:
    async def handler(_request: Request) -> JSONResponse:
        return JSONResponse(well_known)

    url, _ = await serve_asgi(nursery, Starlette(routes=[Route("/.well-known/fedpeer", handler)]))
    return url


async def test_manifest_fetch_sends_no_bearer(node: Node) -> None:
    """PeerClient.manifest() is how a client checks who serves a URL: the
    token it holds for that peer must not go out before the check."""
    wk = await _real_well_known(node)
    seen: list[str | None] = []

    async def handler(request: Request) -> JSONResponse:
        seen.append(request.headers.get("authorization"))
        return JSONResponse(wk)

    async with trio.open_nursery() as nursery:
        url, _ = await serve_asgi(
            nursery, Starlette(routes=[Route("/.well-known/fedpeer", handler)])
        )
        async with PeerClient(url, token="fp_not_for_an_unproven_peer") as peer:
            verified = await peer.manifest(expected_did=node.did)
        nursery.cancel_scope.cancel()
    assert verified.did == node.did
    assert seen == [None]


async def _real_well_known(node: Node) -> dict[str, object]:
    async with PeerClient(node.url) as peer:
        value = await peer.get_value("/.well-known/fedpeer")
    assert isinstance(value, dict)
    return value


@pytest.mark.parametrize(
    "member", ["handle", "did", "urls", "signature.expires_at", "signature.key_id"]
)
async def test_tampered_manifest_is_rejected(node: Node, member: str) -> None:
    wk = await _real_well_known(node)
    bad = copy.deepcopy(wk)
    fm = bad["federation_manifest"]
    assert isinstance(fm, dict)
    if member.startswith("signature."):
        sig = fm["signature"]
        assert isinstance(sig, dict)
        field = member.split(".")[1]
        if field == "expires_at":
            sig[field] = "2099-01-01T00:00:00Z"
        else:
            other = SigningKey.generate()
            sig[field] = other.key_id
    elif member == "urls":
        fm["urls"] = ["http://evil.example"]
    else:
        fm[member] = "tampered"
    async with trio.open_nursery() as nursery:
        url = await _serve_manifest(nursery, bad)
        async with PeerClient(url) as peer:
            with pytest.raises((BadSignature, DidMismatch)):
                await peer.manifest()
            with pytest.raises((BadSignature, DidMismatch)):
                await peer.manifest(expected_did=node.did)
        nursery.cancel_scope.cancel()


async def test_expired_manifest_is_rejected(node: Node) -> None:
    wk = await _real_well_known(node)
    fm = dict(wk["federation_manifest"])  # type: ignore[arg-type]
    del fm["signature"]
    old = sign_document(fm, node.key, ttl_s=7 * 86400, now=time.time() - 8 * 86400)
    async with trio.open_nursery() as nursery:
        url = await _serve_manifest(nursery, {**wk, "federation_manifest": old})
        async with PeerClient(url) as peer:
            with pytest.raises(SignatureExpired):
                await peer.manifest(expected_did=node.did)
        nursery.cancel_scope.cancel()


async def test_manifest_signed_by_another_did_is_rejected(node: Node) -> None:
    impostor = SigningKey.generate()
    wk = await _real_well_known(node)
    fm = dict(wk["federation_manifest"])  # type: ignore[arg-type]
    del fm["signature"]
    # Claims to be the node but is signed by another key.
    forged = sign_document(fm, impostor, ttl_s=3600)
    async with trio.open_nursery() as nursery:
        url = await _serve_manifest(nursery, {**wk, "federation_manifest": forged})
        async with PeerClient(url) as peer:
            with pytest.raises(DidMismatch):
                await peer.manifest(expected_did=node.did)
            # Without an expected DID the did member still has to match the signer.
            with pytest.raises(DidMismatch):
                await peer.manifest()
        nursery.cancel_scope.cancel()


async def test_not_a_manifest_is_rejected() -> None:
    async with trio.open_nursery() as nursery:
        url = await _serve_manifest(nursery, {"hello": "world"})
        async with PeerClient(url) as peer:
            with pytest.raises(PeerInvalid):
                await peer.manifest()
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("well_known", "cap"),
    [
        ({"capabilities_manifest": {"limits": {"page_limit_max": 40}}}, 40),
        ({"capabilities_manifest": {"limits": {"page_limit_max": 0}}}, None),
        ({"capabilities_manifest": {"limits": {"page_limit_max": -5}}}, None),
        ({"capabilities_manifest": {"limits": {"page_limit_max": True}}}, None),
        ({"capabilities_manifest": {"limits": {"page_limit_max": "40"}}}, None),
        ({"capabilities_manifest": {"limits": {"page_limit_max": 40.0}}}, None),
        ({"capabilities_manifest": {"limits": []}}, None),
        ({"capabilities_manifest": "x"}, None),
        ({}, None),
        ([], None),
    ],
)
def test_the_advertised_page_limit_is_read_only_when_it_is_a_positive_integer(
    well_known: object, cap: int | None
) -> None:
    # unsigned, so a forged value may only make requests smaller: anything odd is ignored
    assert advertised_page_limit(well_known) == cap
