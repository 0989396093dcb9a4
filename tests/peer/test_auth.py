"""The auth matrix, generated from the route table, over a real server on loopback."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import httpx
import pytest

from fedpeer.consent.scopes import ALL_SCOPES
from fedpeer.peer import Node, NodeConfig, open_node
from fedpeer.peer._routes import ROUTES
from fedpeer.peer._routing import RouteSpec
from fedpeer.peer.app import build_app


async def test_every_served_route_declares_a_scope(node: Node) -> None:
    app = build_app(node.state)
    table = {(s.method, s.path): s for s in ROUTES}
    served = 0
    for route in app.routes:
        for method in sorted(getattr(route, "methods", set()) - {"HEAD"}):
            spec = table.get((method, route.path))  # type: ignore[attr-defined]
            assert spec is not None, f"{method} {route.path} is served but not in ROUTES"
            assert spec.scope in ("public", *ALL_SCOPES)
            served += 1
    assert served == len(ROUTES)
    assert len({(s.method, s.path) for s in ROUTES}) == len(ROUTES)


def _fill(spec: RouteSpec, values: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)(:\w+)?\}", lambda m: values.get(m.group(1), "unknown0id"), spec.path)


def _body(spec: RouteSpec) -> dict[str, object] | None:
    if spec.method != "POST":
        return None
    if spec.path == "/v1/records":
        return {"namespace": "ns", "thread": "t", "kind": "note", "body": {"x": 1}}
    if spec.path == "/v1/sync/records":
        return {"ids": []}
    if spec.path == "/v1/service-accounts":
        return {"name": "matrix", "scopes": ["reader"]}
    return {}


async def _mint(http: httpx.AsyncClient, admin: str, scopes: list[str]) -> tuple[str, str]:
    r = await http.post(
        "/v1/service-accounts",
        json={"name": "m", "scopes": scopes},
        headers={"Authorization": f"Bearer {admin}"},
    )
    assert r.status_code == 201, r.text
    body = r.json()
    return body["token"], body["service_account"]["id"]


PROTECTED = [s for s in ROUTES if s.scope != "public"]


@pytest.mark.parametrize("spec", PROTECTED, ids=lambda s: f"{s.method} {s.path}")
async def test_auth_matrix(
    spec: RouteSpec, node: Node, http: httpx.AsyncClient, admin_token: str
) -> None:
    appended = await node.append(namespace="ns", thread="t", kind="note", body={"n": 1})
    _, victim = await _mint(http, admin_token, ["reader"])
    values = {"cid": str(appended.cid), "thread": "t", "sa_id": victim}
    values |= {"grant_id": "0" * 20, "invite_id": "0" * 32, "token_id": "0" * 16}
    url = _fill(spec, values)
    body = _body(spec)

    async def call(token: str | None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return await http.request(spec.method, url, json=body, headers=headers)

    # No token: 401 AUTH_REQUIRED.
    r = await call(None)
    assert r.status_code == 401, r.text
    assert r.json()["error"]["code"] == "AUTH_REQUIRED"
    # A garbage token: 401 TOKEN_INVALID.
    r = await call("fp_nosuchaccount_" + "A" * 32)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "TOKEN_INVALID"
    # Every scope but the one needed (admin implies all, so it is left out too).
    wrong = sorted(ALL_SCOPES - {spec.scope, "admin"})
    token, _ = await _mint(http, admin_token, wrong)
    r = await call(token)
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "SCOPE_FORBIDDEN"
    # The right scope: not refused by auth.
    token, _ = await _mint(http, admin_token, [spec.scope])
    r = await call(token)
    assert r.status_code not in (401, 403), r.text
    assert r.status_code < 500, r.text


async def test_auth_off_opens_non_admin_routes_only(tmp_path: object) -> None:
    cfg = NodeConfig(auth_enabled=False)
    async with open_node(None, config=cfg) as node, httpx.AsyncClient(base_url=node.url) as http:
        r = await http.get("/v1/sync/changes")
        assert r.status_code == 200
        r = await http.post(
            "/v1/records", json={"namespace": "n", "thread": "t", "kind": "k", "body": 1}
        )
        assert r.status_code == 201
        r = await http.get("/v1/service-accounts")
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "AUTH_REQUIRED"


async def test_a_readable_admin_token_file_is_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by a read-only audit: ``node.key`` is refused when others may read
    it, ``admin.token`` (full control over HTTP) was read without a look. Now
    the node says so at start (and the token still works: it is the owner's)."""
    async with open_node(tmp_path / "n") as node:
        path = node.admin_token_path
        assert path is not None
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="fedpeer.node"):
        async with open_node(tmp_path / "n") as node:
            assert node.admin_token == path.read_text().strip()
    warned = [r.getMessage() for r in caplog.records if "admin token file" in r.getMessage()]
    assert len(warned) == 1
    assert "0644" in warned[0]
    assert "chmod 600" in warned[0]
    path.chmod(0o600)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fedpeer.node"):
        async with open_node(tmp_path / "n"):
            pass
    assert not [r for r in caplog.records if "admin token file" in r.getMessage()]


async def test_admin_token_file_is_private_and_works(node: Node, http: httpx.AsyncClient) -> None:
    path = node.admin_token_path
    assert path is not None
    assert path.stat().st_mode & 0o777 == 0o600
    token = path.read_text().strip()
    assert token.startswith("fp_")
    r = await http.get("/v1/identity", headers={"Authorization": f"Bearer {token}"})
    body = r.json()
    assert body["token"]["authenticated"] is True
    assert body["token"]["holder_did"] == node.did
    assert "admin" in body["token"]["scopes"]
    # The file was written, so bootstrap over HTTP is closed.
    r = await http.post("/v1/bootstrap/service-account")
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "BOOTSTRAP_CLOSED"


async def test_bootstrap_is_one_shot_without_token_file() -> None:
    cfg = NodeConfig(write_admin_token_file=False)
    async with open_node(None, config=cfg) as node, httpx.AsyncClient(base_url=node.url) as http:
        r = await http.post("/v1/bootstrap/service-account")
        assert r.status_code == 201, r.text
        token = r.json()["token"]
        r = await http.get("/v1/service-accounts", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200
        r = await http.post("/v1/bootstrap/service-account")
        assert r.status_code == 409
        assert r.json()["error"]["code"] == "BOOTSTRAP_CLOSED"


async def test_service_account_lifecycle(http: httpx.AsyncClient, admin_token: str) -> None:
    admin = {"Authorization": f"Bearer {admin_token}"}
    token, sa_id = await _mint(http, admin_token, ["reader"])
    reader = {"Authorization": f"Bearer {token}"}
    assert (await http.get("/v1/sync/changes", headers=reader)).status_code == 200
    # Rotate: the new token works, the old one no longer does.
    r = await http.post(f"/v1/service-accounts/{sa_id}/rotate-key", headers=admin)
    assert r.status_code == 200
    new = {"Authorization": f"Bearer {r.json()['token']}"}
    assert (await http.get("/v1/sync/changes", headers=new)).status_code == 200
    r = await http.get("/v1/sync/changes", headers=reader)
    assert r.status_code == 401
    # Delete revokes every token of the account.
    r = await http.delete(f"/v1/service-accounts/{sa_id}", headers=admin)
    assert r.status_code == 200
    r = await http.get("/v1/sync/changes", headers=new)
    assert r.status_code == 401
    r = await http.delete("/v1/service-accounts/doesnotexist", headers=admin)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "SERVICE_ACCOUNT_NOT_FOUND"
    listed = (await http.get("/v1/service-accounts", headers=admin)).json()
    assert all("token" not in a and "secret" not in str(a) for a in listed["service_accounts"])


async def test_rate_limit_headers_and_429() -> None:
    cfg = NodeConfig(rate_per_s=0.001, rate_burst=3)
    async with open_node(None, config=cfg) as node, httpx.AsyncClient(base_url=node.url) as http:
        seen = []
        for _ in range(4):
            r = await http.get("/health")
            seen.append(r.status_code)
            assert r.headers["X-RateLimit-Limit"] == "3"
        assert seen == [200, 200, 200, 429]
        assert r.json()["error"]["code"] == "RATE_LIMITED"
        assert int(r.headers["Retry-After"]) >= 1
        assert r.headers["X-RateLimit-Remaining"] == "0"
