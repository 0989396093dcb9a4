"""Grants and invites over HTTP: consent on every read path, redemption, revocation.

The property test drives the ASGI app in-process (fast); everything else runs
against real nodes served by hypercorn on loopback, with SQLite and memory stores.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Literal

import httpx
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedpeer.consent import grants as grants_mod
from fedpeer.consent import invites as inv
from fedpeer.consent.tokens import create_service_account
from fedpeer.errors import DidMismatch, InviteExhausted
from fedpeer.identity import SigningKey, b64url_encode, did_from_public_key, jcs
from fedpeer.identity.canonical import dagcbor_decode
from fedpeer.identity.envelope import verify_document
from fedpeer.peer import Node, NodeConfig, PeerClient, open_node
from fedpeer.peer.app import AppState, build_app
from fedpeer.peer.services import NodeCore
from fedpeer.peer.services._invites import MAX_REJECTIONS_AUDITED
from fedpeer.store.base import StateTx, Store
from fedpeer.store.memory import MemoryStore
from fedpeer.sync.records import DEFAULT_LIMITS, SignedRecord, build_record

# rotate_min_age_s=0: these tests rotate fresh tokens (the minimum age has its own
# test in tests/hostile/test_token_rotation.py)
FAST = NodeConfig(rate_per_s=100_000, rate_burst=100_000, handle="consent-test", rotate_min_age_s=0)
HOLDER = SigningKey.from_seed(b"h" * 32)
OTHER = SigningKey.from_seed(b"o" * 32)
CBOR = {"Accept": "application/cbor"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def now_ms() -> int:
    return int(time.time() * 1000)


# --- the property: every read path returns exactly what the grants allow --------------

NAMESPACES = ["a", "a/x", "ab", "b"]
THREADS = ["t1", "t2", "t3"]
NS_PREFIXES = ["a", "a/", "ab", "b", "c"]

target_st = st.one_of(
    st.just(("instance", "", None)),
    st.tuples(st.just("namespace"), st.sampled_from(NS_PREFIXES), st.none()),
    st.tuples(
        st.just("thread"),
        st.sampled_from(THREADS),
        st.one_of(st.none(), st.sampled_from(NAMESPACES)),
    ),
)
grant_st = st.tuples(
    target_st,
    st.sampled_from([("records:read",), ("sync:read",), ("records:read", "sync:read"), ("admin",)]),
    st.booleans(),  # expired
)
scenario_st = st.fixed_dictionaries(
    {
        "records": st.lists(
            st.tuples(st.sampled_from(NAMESPACES), st.sampled_from(THREADS)),
            min_size=1,
            max_size=14,
        ),
        "grants": st.lists(st.lists(grant_st, max_size=3), min_size=2, max_size=2),
        "limit": st.integers(min_value=1, max_value=5),
        "ns_filter": st.sampled_from([None, *NS_PREFIXES]),
    }
)

Spec = tuple[tuple[str, str, str | None], tuple[str, ...], bool]


def oracle(grants: list[Spec], scope: str, ns: str, thread: str) -> bool:
    """Visibility from first principles (independent of fedpeer.consent.grants)."""
    for (kind, value, tns), scopes, expired in grants:
        if expired or not (scope in scopes or "admin" in scopes):
            continue
        if kind == "instance":
            return True
        if kind == "namespace" and ns[: len(value)] == value:
            return True
        if kind == "thread" and thread == value and (tns is None or tns == ns):
            return True
    return False


def app_state(store: Store) -> AppState:
    """The node's services over ``store``, without a server or sync pairs."""
    core = NodeCore(key=SigningKey.generate(), store=store, config=FAST, limits=DEFAULT_LIMITS)
    return AppState.create(core)


async def _check_scenario(data: dict[str, object]) -> None:
    store = MemoryStore()
    state = app_state(store)
    author = SigningKey.from_seed(b"a" * 32)
    recs = data["records"]
    assert isinstance(recs, list)
    records: list[tuple[str, str, str]] = []  # cid, ns, thread
    for i, (ns, thread) in enumerate(recs):
        signed = build_record(author, namespace=ns, thread=thread, kind="k", body=i, ts=1)
        await store.put([signed.to_new()])
        records.append((str(signed.cid), ns, thread))
    grantees = data["grants"]
    assert isinstance(grantees, list)
    t_past = now_ms() - 3_600_000
    tokens: list[str] = []

    def setup(tx: StateTx) -> None:
        for n, specs in enumerate(grantees):
            did = did_from_public_key(SigningKey.from_seed(bytes([n + 1]) * 32).public_key)
            _sa, issued = create_service_account(
                tx, name=f"g{n}", holder_did=did, scopes=["reader"]
            )
            tokens.append(issued.bearer)
            for (kind, value, tns), scopes, expired in specs:
                grants_mod.create_grant(
                    tx,
                    grantee_did=did,
                    target=grants_mod.Target(kind, value, tns),
                    scopes=list(scopes),
                    expires_ms=t_past + 1000 if expired else None,
                    now_ms=t_past if expired else None,
                )

    await store.transact(setup)
    limit = data["limit"]
    ns_filter = data["ns_filter"]
    assert isinstance(limit, int)
    assert ns_filter is None or isinstance(ns_filter, str)
    transport = httpx.ASGITransport(app=build_app(state))
    async with httpx.AsyncClient(transport=transport, base_url="http://node") as http:
        for token, specs in zip(tokens, grantees, strict=True):
            h = {**bearer(token), **CBOR}
            want_sync = [c for c, ns, th in records if oracle(specs, "sync:read", ns, th)]
            want_read = [c for c, ns, th in records if oracle(specs, "records:read", ns, th)]
            # The feed, page by page: exactly the visible records, in order.
            got: list[str] = []
            cursor: str | None = None
            for _ in range(len(records) + 2):
                params: dict[str, str | int] = {"limit": limit}
                if cursor:
                    params["since"] = cursor
                r = await http.get("/v1/sync/changes", params=params, headers=h)
                assert r.status_code == 200, r.text
                page = dagcbor_decode(r.content)
                assert isinstance(page, dict)
                got += [str(x["cid"]) for x in page["records"]]
                cursor = page["next_cursor"]
                if not page["has_more"]:
                    break
            assert got == want_sync
            # The feed filtered by a namespace: denied iff no grant overlaps it.
            view = grants_mod.view_for(
                [
                    grants_mod.Grant(
                        id="x" * 20,
                        grantee_did="did:x:y",
                        target=grants_mod.Target(k, v, n),
                        scopes=frozenset(s),
                        created_ms=0,
                        expires_ms=1 if e else None,
                    )
                    for (k, v, n), s, e in specs
                ],
                scope="sync:read",
                now_ms=now_ms(),
            )
            if ns_filter is not None:
                r = await http.get(
                    "/v1/sync/changes", params={"namespace": ns_filter, "limit": 1000}, headers=h
                )
                try:
                    view.check_filter(ns_filter, None)
                except Exception:
                    assert r.status_code == 403
                    assert r.json()["error"]["code"] == "CONSENT_DENIED"
                else:
                    assert r.status_code == 200
                    page = dagcbor_decode(r.content)
                    assert isinstance(page, dict)
                    assert [str(x["cid"]) for x in page["records"]] == [
                        c
                        for c in want_sync
                        if next(ns for cc, ns, _ in records if cc == c).startswith(ns_filter)
                    ]
            # Batch fetch: exactly the visible ones, the rest under missing.
            r = await http.post(
                "/v1/sync/records", json={"ids": [c for c, _, _ in records]}, headers=h
            )
            body = dagcbor_decode(r.content)
            assert isinstance(body, dict)
            assert [str(x["cid"]) for x in body["records"]] == list(dict.fromkeys(want_sync))
            assert set(body["missing"]) == {c for c, _, _ in records} - set(want_sync)
            # Thread listing (records:read): exactly the visible threads.
            r = await http.get("/v1/threads", headers=bearer(token))
            listed = {(t["namespace"], t["thread"]) for t in r.json()["threads"]}
            assert listed == {
                (ns, th) for _, ns, th in records if oracle(specs, "records:read", ns, th)
            }
            # Record get (records:read): visible, or 404 as if absent.
            for c, _ns, _th in records[:4]:
                r = await http.get(f"/v1/records/{c}", headers=bearer(token))
                assert r.status_code == (200 if c in want_read else 404), r.text


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(scenario_st)
def test_every_read_path_returns_exactly_the_granted_records(data: dict[str, object]) -> None:
    trio.run(_check_scenario, data)


# --- real nodes ------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def running(
    kind: Literal["memory", "sqlite"], tmp_path: Path, config: NodeConfig = FAST
) -> AsyncIterator[tuple[Node, str]]:
    """A node on loopback and its admin token; memory (open_node(None)) or SQLite."""
    if kind == "memory":
        async with open_node(None, config=config) as node:
            assert node.admin_token is not None  # minted in memory for an ephemeral node
            yield node, node.admin_token
    else:
        async with open_node(tmp_path / "node", config=config) as node:
            assert node.admin_token_path is not None
            yield node, node.admin_token_path.read_text().strip()


async def make_invite(http: httpx.AsyncClient, admin: str, **params: object) -> dict[str, object]:
    r = await http.post("/v1/invites", json=params, headers=bearer(admin))
    assert r.status_code == 201, r.text
    body = r.json()
    assert isinstance(body, dict)
    return body


def guest_body(url: str, key: SigningKey = HOLDER, **extra: object) -> dict[str, object]:
    return {
        "holder_type": "guest",
        "holder_pubkey": b64url_encode(key.public_key),
        "holder_label": "test guest",
        "secret": inv.parse_invite_url(url).secret,
        **extra,
    }


def federated_body(
    url: str, key: SigningKey = HOLDER, *, signer: SigningKey | None = None, **over: object
) -> dict[str, object]:
    parsed = inv.parse_invite_url(url)
    payload = inv.redeem_proof_payload(
        invite_id=parsed.invite_id,
        audience=parsed.issuer_did,
        holder_did=key.did,
        issued_at_ms=now_ms(),
    )
    payload.update(over)
    proof = b64url_encode((signer or key).sign(jcs(payload)))
    return {
        "holder_type": "federated",
        "holder_did": key.did,
        "holder_proof": proof,
        "holder_proof_issued_at_ms": payload["issued_at_ms"],
        "secret": parsed.secret,
    }


async def redeem(
    http: httpx.AsyncClient, invite: dict[str, object], body: dict[str, object]
) -> httpx.Response:
    return await http.post(f"/v1/invites/{invite['invite_id']}/redeem", json=body)


def code(r: httpx.Response) -> str:
    return str(r.json()["error"]["code"])


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
@pytest.mark.parametrize("max_uses", [1, 5])
async def test_concurrent_redeems_over_http(
    kind: Literal["memory", "sqlite"], max_uses: int, tmp_path: Path
) -> None:
    async with (
        running(kind, tmp_path) as (node, admin),
        httpx.AsyncClient(
            base_url=node.url, timeout=30, limits=httpx.Limits(max_connections=60)
        ) as http,
    ):
        invite = await make_invite(http, admin, max_uses=max_uses)
        url = str(invite["url"])
        results: list[tuple[int, str]] = []

        async def one(i: int) -> None:
            key = SigningKey.from_seed(i.to_bytes(32, "big"))
            r = await redeem(http, invite, guest_body(url, key))
            results.append((r.status_code, "OK" if r.status_code == 201 else code(r)))

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for i in range(1, 51):
                    nursery.start_soon(one, i)
        assert results.count((201, "OK")) == max_uses
        assert results.count((410, "INVITE_EXHAUSTED")) == 50 - max_uses
        listed = (await http.get("/v1/invites", headers=bearer(admin))).json()["invites"]
        [row] = [i for i in listed if i["invite_id"] == invite["invite_id"]]
        assert (row["uses"], row["uses_remaining"], row["state"]) == (max_uses, 0, "exhausted")
        assert len(row["service_account_ids"]) == max_uses
        # Every rejection was audited, with its reason, although its transaction failed.
        r = await http.get(
            "/v1/invites/audit",
            params={"invite_id": str(invite["invite_id"]), "limit": 1000},
            headers=bearer(admin),
        )
        events = [e["event"] for e in r.json()["events"]]
        kinds = [e["type"] for e in events]
        assert kinds.count("invite.issued") == 1
        assert kinds.count("invite.redeemed") == max_uses
        rejected = [e for e in events if e["type"] == "invite.redeem_rejected"]
        assert len(rejected) == 50 - max_uses
        assert {e["reason"] for e in rejected} == {"INVITE_EXHAUSTED"}


async def _audit_kinds(http: httpx.AsyncClient, admin: str, invite: dict[str, object]) -> list[str]:
    """The types of the audit events of ``invite``, oldest first."""
    r = await http.get(
        "/v1/invites/audit",
        params={"invite_id": str(invite["invite_id"]), "limit": 1000},
        headers=bearer(admin),
    )
    return [e["event"]["type"] for e in r.json()["events"]]


async def test_rejected_redeems_of_one_invite_stop_growing_the_audit_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A redeem needs no credential: whoever holds an invite's URL may retry a
    refused redeem as fast as the rate limit allows. Each refusal is still
    answered, but only the first MAX_REJECTIONS_AUDITED per invite are audited."""
    n = MAX_REJECTIONS_AUDITED + 30
    async with (
        running("sqlite", tmp_path) as (node, admin),
        httpx.AsyncClient(base_url=node.url, timeout=30) as http,
    ):
        invite = await make_invite(http, admin, max_uses=1)
        url = str(invite["url"])
        wrong = {**guest_body(url), "secret": "A" * 43}
        for _ in range(n):
            r = await redeem(http, invite, wrong)
            assert (r.status_code, code(r)) == (403, "INVITE_SECRET_INVALID")
        kinds = await _audit_kinds(http, admin, invite)
        assert kinds.count("invite.redeem_rejected") == MAX_REJECTIONS_AUDITED
        # the invite still works for its rightful holder, and that is audited
        r = await redeem(http, invite, guest_body(url))
        assert r.status_code == 201, r.text
        kinds = await _audit_kinds(http, admin, invite)
        assert kinds.count("invite.redeemed") == 1
        assert kinds.count("invite.redeem_rejected") == MAX_REJECTIONS_AUDITED
    assert any(
        f"{MAX_REJECTIONS_AUDITED + 1} rejected redeems" in rec.getMessage()
        for rec in caplog.records
    )
    # a restart does not start the count again (before: 100 more rows per restart)
    async with (
        running("sqlite", tmp_path) as (node, admin),
        httpx.AsyncClient(base_url=node.url, timeout=30) as http,
    ):
        for _ in range(5):
            r = await redeem(http, invite, wrong)
            assert code(r) in ("INVITE_SECRET_INVALID", "INVITE_EXHAUSTED")
        kinds = await _audit_kinds(http, admin, invite)
        assert kinds.count("invite.redeem_rejected") == MAX_REJECTIONS_AUDITED


async def test_guest_redeem_sees_its_target_only(
    node: Node, http: httpx.AsyncClient, admin_token: str
) -> None:
    shared = await node.append(namespace="shared/notes", thread="t", kind="k", body=1)
    await node.append(namespace="private", thread="t", kind="k", body=2)
    invite = await make_invite(
        http,
        admin_token,
        scope_target={"type": "namespace", "value": "shared/"},
        notes="for the test",
        device_label="laptop",
    )
    assert set(invite) >= {"invite_id", "expires_at", "uses_remaining", "url"}
    assert invite["uses_remaining"] == 1
    r = await redeem(http, invite, guest_body(str(invite["url"])))
    assert r.status_code == 201, r.text
    got = r.json()
    assert got["actor_did"] == HOLDER.did
    assert got["issuer_did"] == node.did
    assert got["scopes"] == ["records:read", "sync:read"]
    assert got["scope_target"] == {"type": "namespace", "value": "shared/", "namespace": None}
    assert got["confirmation_code"] == inv.confirmation_code(
        node.did, HOLDER.did, str(invite["invite_id"])
    )
    assert got["expires_ms"] > now_ms()
    async with PeerClient(node.url, token=got["token"]) as peer:
        page = await peer.changes()
        assert [r.cid for r in page.records] == [shared.cid]
        assert not page.has_more  # the cursor went past the private record
        records, missing = await peer.fetch_records([shared.cid])
        assert [x.cid for x in records] == [shared.cid]
        assert missing == []
    h = bearer(got["token"])
    r = await http.get("/v1/sync/changes", params={"namespace": "private"}, headers=h)
    assert (r.status_code, code(r)) == (403, "CONSENT_DENIED")
    r = await http.get("/v1/threads", params={"namespace": "private"}, headers=h)
    assert (r.status_code, code(r)) == (403, "CONSENT_DENIED")
    r = await http.get("/v1/threads/t/records", params={"namespace": "priv"}, headers=h)
    assert (r.status_code, code(r)) == (403, "CONSENT_DENIED")
    r = await http.get("/v1/threads/t/records", headers={**h, **CBOR})  # t is also under shared/
    assert r.status_code == 200
    thread_page = dagcbor_decode(r.content)
    assert isinstance(thread_page, dict)
    assert [x["cid"] for x in thread_page["records"]] == [shared.cid]
    r = await http.get("/v1/threads", headers=h)
    assert r.json()["threads"] == [
        {"namespace": "shared/notes", "thread": "t", "count": 1, "last_seq": 1}
    ]
    # A guest can redeem nothing more from this single-use invite.
    r = await redeem(http, invite, guest_body(str(invite["url"]), OTHER))
    assert (r.status_code, code(r)) == (410, "INVITE_EXHAUSTED")


async def test_named_thread_outside_grants_is_denied(
    node: Node, http: httpx.AsyncClient, admin_token: str
) -> None:
    await node.append(namespace="n", thread="open", kind="k", body=1)
    await node.append(namespace="n", thread="closed", kind="k", body=2)
    invite = await make_invite(http, admin_token, scope_target={"type": "thread", "value": "open"})
    got = (await redeem(http, invite, guest_body(str(invite["url"])))).json()
    h = bearer(got["token"])
    for path, params in [
        ("/v1/sync/changes", {"thread": "closed"}),
        ("/v1/sync/changes", {"thread": "closed", "feed": "longpoll", "timeout": "0"}),
        ("/v1/sync/changes", {"thread": "closed", "feed": "continuous"}),
        ("/v1/threads/closed/records", {}),
    ]:
        r = await http.get(path, params=params, headers=h)
        assert (r.status_code, code(r)) == (403, "CONSENT_DENIED"), (path, params)
    r = await http.get("/v1/sync/changes", params={"thread": "open"}, headers={**h, **CBOR})
    page = dagcbor_decode(r.content)
    assert isinstance(page, dict)
    assert len(page["records"]) == 1


async def test_longpoll_and_stream_skip_what_is_not_granted(
    node: Node, http: httpx.AsyncClient, admin_token: str
) -> None:
    invite = await make_invite(http, admin_token, scope_target={"type": "namespace", "value": "ok"})
    token = (await redeem(http, invite, guest_body(str(invite["url"])))).json()["token"]
    async with PeerClient(node.url, token=token) as peer:
        start = (await peer.changes()).next_cursor
        await node.append(namespace="secret", thread="t", kind="k", body=0)
        got: list[SignedRecord] = []

        async def poll() -> None:
            page = await peer.changes(start, feed="longpoll", timeout=20)
            got.extend(page.records)

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(poll)
                await node.append(namespace="secret", thread="t", kind="k", body=1)
                allowed = await node.append(namespace="ok", thread="t", kind="k", body=2)
        assert [r.cid for r in got] == [allowed.cid]
        # The continuous feed: the first record event is the granted one.
        with trio.fail_after(20):
            async for event in peer.stream_changes(start):
                if event.record is not None:
                    assert event.record.cid == allowed.cid
                    break


async def test_federated_proof_failures_are_refused_and_audited(
    node: Node, http: httpx.AsyncClient, admin_token: str
) -> None:
    invite = await make_invite(http, admin_token, max_uses=10, accept_holder_types=["federated"])
    url = str(invite["url"])
    small_order = did_from_public_key(bytes([1]) + bytes(31))
    cases: list[tuple[str, dict[str, object], str]] = [
        ("wrong key", federated_body(url, signer=OTHER), "BAD_PROOF"),
        ("wrong invite", federated_body(url, invite_id="0" * 32), "BAD_PROOF"),
        ("wrong audience", federated_body(url, audience=OTHER.did), "BAD_PROOF"),
        ("other purpose", federated_body(url, purpose="fedpeer-login-v1"), "BAD_PROOF"),
        ("61 s old", federated_body(url, issued_at_ms=now_ms() - 61_000), "FRESHNESS_VIOLATION"),
        ("61 s ahead", federated_body(url, issued_at_ms=now_ms() + 61_000), "FRESHNESS_VIOLATION"),
        ("unusable key", {**federated_body(url), "holder_did": small_order}, "KEY_UNKNOWN"),
        ("guest", guest_body(url), "HOLDER_TYPE_MISMATCH"),
        ("wrong secret", {**federated_body(url), "secret": "A" * 43}, "INVITE_SECRET_INVALID"),
    ]
    for name, body, expected in cases:
        r = await redeem(http, invite, body)
        assert r.status_code == 403, (name, r.text)
        assert code(r) == expected, name
    good = federated_body(url)
    r = await redeem(http, invite, good)
    assert r.status_code == 201, r.text
    r = await redeem(http, invite, good)  # the same proof again
    assert (r.status_code, code(r)) == (403, "PROOF_REPLAYED")
    r = await http.get(
        "/v1/invites/audit",
        params={"invite_id": str(invite["invite_id"])},
        headers=bearer(admin_token),
    )
    events = [e["event"] for e in r.json()["events"]]
    reasons = [e["reason"] for e in events if e["type"] == "invite.redeem_rejected"]
    assert reasons == [expected for _, _, expected in cases] + ["PROOF_REPLAYED"]
    assert [e["type"] for e in events].count("invite.redeemed") == 1
    text = json.dumps(events)
    assert inv.parse_invite_url(url).secret not in text
    assert str(good["holder_proof"]) not in text
    # The admin listing shows one use.
    listed = (await http.get("/v1/invites", headers=bearer(admin_token))).json()["invites"]
    assert [i["uses"] for i in listed if i["invite_id"] == invite["invite_id"]] == [1]


async def test_revoking_an_invite_kills_its_tokens(
    node: Node, http: httpx.AsyncClient, admin_token: str
) -> None:
    invite = await make_invite(http, admin_token, max_uses=2)
    url = str(invite["url"])
    t1 = (await redeem(http, invite, guest_body(url))).json()["token"]
    t2 = (await redeem(http, invite, federated_body(url, OTHER))).json()["token"]
    for t in (t1, t2):
        assert (await http.get("/v1/sync/changes", headers=bearer(t))).status_code == 200
    grants = (await http.get("/v1/grants", headers=bearer(admin_token))).json()["grants"]
    assert len(grants) == 2
    r = await http.post(f"/v1/invites/{invite['invite_id']}/revoke", headers=bearer(admin_token))
    assert r.status_code == 200
    assert r.json()["changed"] is True
    assert r.json()["invite"]["state"] == "revoked"
    for t in (t1, t2):
        r = await http.get("/v1/sync/changes", headers=bearer(t))
        assert (r.status_code, code(r)) == (401, "TOKEN_INVALID")
    assert (await http.get("/v1/grants", headers=bearer(admin_token))).json()["grants"] == []
    r = await http.post(f"/v1/invites/{invite['invite_id']}/revoke", headers=bearer(admin_token))
    assert r.status_code == 200
    assert r.json()["changed"] is False
    r = await redeem(http, invite, guest_body(url, SigningKey.generate()))
    assert (r.status_code, code(r)) == (410, "INVITE_REVOKED")
    r = await http.get(f"/v1/invites/{invite['invite_id']}")
    assert r.json()["state"] == "revoked"
    r = await http.post(f"/v1/invites/{'f' * 32}/revoke", headers=bearer(admin_token))
    assert (r.status_code, code(r)) == (404, "INVITE_NOT_FOUND")


async def test_expired_invites_and_bulk_revoke(
    node: Node, http: httpx.AsyncClient, admin_token: str
) -> None:
    # Issue an invite "two hours ago" with a one-minute ttl, through the real function.
    params = inv.parse_invite_params({"ttl_s": 60})
    old = await node.store.transact(
        lambda tx: inv.create_invite(
            tx, node.key, params, node_url=node.url, now_ms=now_ms() - 7_200_000
        )
    )
    used = await make_invite(http, admin_token)
    assert (await redeem(http, used, guest_body(str(used["url"])))).status_code == 201
    r = await http.post(
        f"/v1/invites/{old.invite.invite_id}/redeem", json=guest_body(old.url, OTHER)
    )
    assert (r.status_code, code(r)) == (410, "INVITE_EXPIRED")
    preview = (await http.get(f"/v1/invites/{old.invite.invite_id}")).json()
    assert preview["state"] == "expired"
    admin = bearer(admin_token)
    r = await http.get("/v1/invites", params={"state": "expired"}, headers=admin)
    assert [i["invite_id"] for i in r.json()["invites"]] == [old.invite.invite_id]
    r = await http.post("/v1/invites/bulk-revoke", json={"filter": "expired"}, headers=admin)
    assert r.json() == {"revoked": [old.invite.invite_id], "count": 1}
    r = await http.post("/v1/invites/bulk-revoke", json={"filter": "exhausted"}, headers=admin)
    assert r.json()["revoked"] == [used["invite_id"]]
    r = await http.post("/v1/invites/bulk-revoke", json={"filter": "active"}, headers=admin)
    assert (r.status_code, code(r)) == (400, "INVALID_REQUEST")
    r = await http.get("/v1/invites", params={"state": "revoked"}, headers=admin)
    assert len(r.json()["invites"]) == 2


async def test_preview_shows_no_secret_and_no_notes(
    node: Node, http: httpx.AsyncClient, admin_token: str
) -> None:
    invite = await make_invite(
        http, admin_token, notes="only for admins", device_label="Ana's phone"
    )
    secret = inv.parse_invite_url(str(invite["url"])).secret
    r = await http.get(f"/v1/invites/{invite['invite_id']}")  # no bearer at all
    assert r.status_code == 200
    assert secret not in r.text
    assert inv.hash_secret(secret) not in r.text
    assert "only for admins" not in r.text
    body = r.json()
    assert body["issuer_did"] == node.did
    assert body["state"] == "active"
    assert body["device_label"] == "Ana's phone"
    verified = verify_document(body["invite"], expected_did=node.did)
    assert verified.document["invite_id"] == invite["invite_id"]
    r = await http.get(f"/v1/invites/{'0' * 32}")
    assert (r.status_code, code(r)) == (404, "INVITE_NOT_FOUND")
    listed = (await http.get("/v1/invites", headers=bearer(admin_token))).text
    assert "only for admins" in listed
    assert secret not in listed
    presets = (await http.get("/v1/scope_presets")).json()
    assert presets["presets"]["reader"] == ["records:read", "sync:read"]
    assert set(presets["presets"]) == {"reader", "contributor", "admin"}


async def test_manifest_consent_revision_follows_grants(
    node: Node, http: httpx.AsyncClient, admin_token: str
) -> None:
    async def revision() -> int:
        body = (await http.get("/.well-known/fedpeer")).json()
        return int(body["federation_manifest"]["consent"]["revision"])

    r0 = await revision()
    r = await http.post(
        "/v1/grants",
        json={"grantee_did": OTHER.did, "target": {"type": "namespace", "value": "n/"}},
        headers=bearer(admin_token),
    )
    assert r.status_code == 201, r.text
    grant = r.json()["grant"]
    assert await revision() == r0 + 1
    # The grant takes effect on the next request of a token bound to that DID.
    await node.append(namespace="n/1", thread="t", kind="k", body=1)
    sa = await http.post(
        "/v1/service-accounts",
        json={"name": "other", "holder_did": OTHER.did, "scopes": ["reader"]},
        headers=bearer(admin_token),
    )
    h = {**bearer(sa.json()["token"]), **CBOR}
    page = dagcbor_decode((await http.get("/v1/sync/changes", headers=h)).content)
    assert isinstance(page, dict)
    assert len(page["records"]) == 1
    r = await http.delete(f"/v1/grants/{grant['id']}", headers=bearer(admin_token))
    assert r.status_code == 200
    assert await revision() == r0 + 2
    page = dagcbor_decode((await http.get("/v1/sync/changes", headers=h)).content)
    assert isinstance(page, dict)
    assert page["records"] == []
    r = await http.delete(f"/v1/grants/{grant['id']}", headers=bearer(admin_token))
    assert (r.status_code, code(r)) == (404, "GRANT_NOT_FOUND")


async def test_guest_cannot_borrow_grants_of_its_claimed_did(
    node: Node, http: httpx.AsyncClient, admin_token: str
) -> None:
    pub = await node.append(namespace="public", thread="t", kind="k", body=1)
    priv = await node.append(namespace="private", thread="t", kind="k", body=2)
    r = await http.post(
        "/v1/grants",
        json={"grantee_did": HOLDER.did, "target": {"type": "namespace", "value": "private"}},
        headers=bearer(admin_token),
    )
    assert r.status_code == 201
    target = {"type": "namespace", "value": "public"}
    g_inv = await make_invite(http, admin_token, scope_target=target)
    f_inv = await make_invite(http, admin_token, scope_target=target)
    # Anyone can claim HOLDER's public key as a guest: it must not see "private".
    guest = (await redeem(http, g_inv, guest_body(str(g_inv["url"])))).json()["token"]
    async with PeerClient(node.url, token=guest) as peer:
        assert [r.cid for r in (await peer.changes()).records] == [pub.cid]
    # The real HOLDER proves its key: its DID's grants all apply.
    fed = (await redeem(http, f_inv, federated_body(str(f_inv["url"])))).json()["token"]
    async with PeerClient(node.url, token=fed) as peer:
        assert [r.cid for r in (await peer.changes()).records] == [pub.cid, priv.cid]
    # Nobody redeems as the node itself.
    i3 = await make_invite(http, admin_token)
    r = await redeem(http, i3, guest_body(str(i3["url"]), node.key))
    assert (r.status_code, code(r)) == (400, "PAIR_SELF")


async def test_token_rotation(node: Node, http: httpx.AsyncClient, admin_token: str) -> None:
    invite = await make_invite(http, admin_token, max_uses=2)
    got = (await redeem(http, invite, guest_body(str(invite["url"])))).json()
    other = (await redeem(http, invite, guest_body(str(invite["url"]), OTHER))).json()
    old = bearer(got["token"])
    r = await http.post(f"/v1/tokens/{other['token_id']}/rotate", headers=old)
    assert (r.status_code, code(r)) == (403, "ROTATE_NOT_SELF")
    r = await http.post(f"/v1/tokens/{got['token_id']}/rotate")
    assert (r.status_code, code(r)) == (401, "AUTH_REQUIRED")
    r = await http.post(f"/v1/tokens/{got['token_id']}/rotate", headers=old)
    assert (r.status_code, code(r)) == (429, "RATE_LIMITED")  # a minute old first

    async def age(token_id: object) -> None:  # as if the token were made 2 hours ago
        row = await node.store.get_state("tokens", str(token_id))
        assert row is not None
        aged = {**row, "created_ms": now_ms() - 7_200_000}
        await node.store.transact(lambda tx: tx.put("tokens", str(token_id), aged))

    await age(got["token_id"])
    r = await http.post(f"/v1/tokens/{got['token_id']}/rotate", headers=old)
    assert r.status_code == 200, r.text
    new = r.json()
    assert new["old_token_id"] == got["token_id"]
    assert new["token_id"] != got["token_id"]
    assert new["expires_ms"] >= got["expires_ms"]  # the same lifetime, from now
    assert (await http.get("/v1/sync/changes", headers=old)).status_code == 401
    assert (await http.get("/v1/sync/changes", headers=bearer(new["token"]))).status_code == 200
    await age(new["token_id"])
    r = await http.post(
        f"/v1/tokens/{new['token_id']}/rotate", json={"ttl_s": 120}, headers=bearer(new["token"])
    )
    assert r.status_code == 200
    assert r.json()["expires_ms"] <= now_ms() + 120_000


async def test_reciprocal_credential_is_stored(
    node: Node, http: httpx.AsyncClient, admin_token: str, refused_url: str
) -> None:
    invite = await make_invite(http, admin_token, max_uses=2)
    recip = {"token": "fp_for_the_issuer", "scopes": ["reader"], "url": refused_url + "/"}
    # a guest's is ignored: its DID is only the key it names (protocol.md §11.2)
    r = await redeem(http, invite, guest_body(str(invite["url"]), reciprocal=recip))
    assert r.status_code == 201, r.text
    assert await node.store.get_state(inv.RECIPROCAL_TABLE, HOLDER.did) is None
    r = await redeem(http, invite, {**federated_body(str(invite["url"])), "reciprocal": recip})
    assert r.status_code == 201, r.text
    row = await node.store.get_state(inv.RECIPROCAL_TABLE, HOLDER.did)
    assert row is not None
    assert row["token"] == "fp_for_the_issuer"
    assert row["url"] == refused_url
    assert row["scopes"] == ["records:read", "sync:read"]
    assert row["invite_id"] == invite["invite_id"]


async def test_peer_client_redeem(tmp_path: Path) -> None:
    async with (
        running("sqlite", tmp_path) as (node, admin),
        httpx.AsyncClient(base_url=node.url) as http,
    ):
        visible = await node.append(namespace="team", thread="t", kind="k", body=1)
        await node.append(namespace="other", thread="t", kind="k", body=2)
        target = {"type": "namespace", "value": "team"}
        fed_inv = await make_invite(http, admin, scope_target=target)
        guest_inv = await make_invite(http, admin, scope_target=target)
        async with PeerClient("http://unused.invalid") as client:
            cred = await client.redeem(str(fed_inv["url"]), holder_key=HOLDER, label="laptop")
            assert cred.peer_did == node.did
            assert cred.peer_url == node.url
            assert cred.actor_did == HOLDER.did
            assert cred.confirmation_code == inv.confirmation_code(
                node.did, HOLDER.did, str(fed_inv["invite_id"])
            )
            assert cred.token not in repr(cred)
            gcred = await client.redeem(
                str(guest_inv["url"]), holder_key=OTHER, holder_type="guest"
            )
            assert gcred.actor_did == OTHER.did
            with pytest.raises(InviteExhausted):
                await client.redeem(str(fed_inv["url"]), holder_key=OTHER)
        async with PeerClient(cred.peer_url, token=cred.token) as peer:
            assert [r.cid for r in (await peer.changes()).records] == [visible.cid]


async def test_peer_client_refuses_an_impostor(tmp_path: Path) -> None:
    async with (
        running("memory", tmp_path) as (node, admin),
        open_node(None, config=FAST) as impostor,
        httpx.AsyncClient(base_url=node.url) as http,
    ):
        invite = await make_invite(http, admin)
        url = str(invite["url"]).replace(node.url, impostor.url)
        async with PeerClient(node.url) as client:
            with pytest.raises(DidMismatch):
                await client.redeem(url, holder_key=HOLDER)
        preview = (await http.get(f"/v1/invites/{invite['invite_id']}")).json()
        assert preview["uses_remaining"] == 1  # nothing was taken


async def test_auth_off_dev_mode(tmp_path: Path) -> None:
    cfg = NodeConfig(auth_enabled=False, rate_per_s=100_000, rate_burst=100_000)
    async with (
        running("memory", tmp_path, cfg) as (node, admin),
        httpx.AsyncClient(base_url=node.url) as http,
    ):
        await node.append(namespace="a", thread="t", kind="k", body=1)
        b = await node.append(namespace="b", thread="t", kind="k", body=2)
        page = dagcbor_decode((await http.get("/v1/sync/changes", headers=CBOR)).content)
        assert isinstance(page, dict)
        assert len(page["records"]) == 2  # anonymous, auth off: everything
        r = await http.post("/v1/invites", json={})
        assert (r.status_code, code(r)) == (401, "AUTH_REQUIRED")  # admin even with auth off
        r = await http.get("/v1/grants")
        assert r.status_code == 401
        invite = await make_invite(http, admin, scope_target={"type": "namespace", "value": "b"})
        token = (await redeem(http, invite, guest_body(str(invite["url"])))).json()["token"]
        # A caller that sends a token is judged by its grants even with auth off.
        async with PeerClient(node.url, token=token) as peer:
            assert [r.cid for r in (await peer.changes()).records] == [b.cid]
        r = await http.get("/.well-known/fedpeer")
        assert r.json()["federation_manifest"]["consent"]["posture"] == "auth-disabled"


async def test_redeem_input_errors(node: Node, http: httpx.AsyncClient, admin_token: str) -> None:
    invite = await make_invite(http, admin_token)
    url = str(invite["url"])
    r = await http.post(f"/v1/invites/{'0' * 32}/redeem", json=guest_body(url))
    assert (r.status_code, code(r)) == (404, "INVITE_NOT_FOUND")
    r = await http.post("/v1/invites/nope/redeem", json=guest_body(url))
    assert (r.status_code, code(r)) == (404, "INVITE_NOT_FOUND")
    r = await redeem(http, invite, {**guest_body(url), "holder_pubkey": "AAAA"})
    assert (r.status_code, code(r)) == (400, "MALFORMED")
    r = await redeem(http, invite, {"holder_type": "guest"})
    assert (r.status_code, code(r)) == (400, "INVALID_REQUEST")
    r = await http.post("/v1/invites", json={"max_uses": 0}, headers=bearer(admin_token))
    assert (r.status_code, code(r)) == (400, "INVALID_REQUEST")
    # None of these used the invite up.
    preview = (await http.get(f"/v1/invites/{invite['invite_id']}")).json()
    assert preview["uses_remaining"] == 1


async def test_redeems_of_invites_that_do_not_exist_write_nothing(
    node: Node, http: httpx.AsyncClient, admin_token: str
) -> None:
    """Redeem requests need no credential. One for an id that names no invite is
    INVITE_NOT_FOUND and writes nothing (no audit row, no transaction that
    writes), so a client sending them without end cannot grow the store; a
    rejection for a real invite is still audited."""
    head = await node.store.audit_log(since_id=0, limit=10_000)
    since = head[-1].id if head else 0
    body = {"holder_type": "guest", "holder_pubkey": b64url_encode(HOLDER.public_key),
            "secret": "A" * 43}  # fmt: skip
    for _ in range(60):  # 120 requests: within the default rate limit's burst (200)
        r = await http.post(f"/v1/invites/{secrets.token_hex(16)}/redeem", json=body)
        assert (r.status_code, code(r)) == (404, "INVITE_NOT_FOUND"), r.text
        r = await http.post(f"/v1/invites/{secrets.token_hex(16)}/redeem", json={"junk": 1})
        assert r.status_code in (400, 404), r.text
    assert await node.store.audit_log(since_id=since, limit=10) == []
    invite = await make_invite(http, admin_token)
    r = await redeem(http, invite, body)
    assert (r.status_code, code(r)) == (403, "INVITE_SECRET_INVALID")
    events = [e.event for e in await node.store.audit_log(since_id=since, limit=10)]
    assert [(e["type"], e.get("reason")) for e in events] == [
        ("invite.issued", None),
        ("invite.redeem_rejected", "INVITE_SECRET_INVALID"),
    ]
