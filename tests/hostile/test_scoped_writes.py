"""Writes are filtered by grants exactly as reads are (issue 10; protocol.md §9.3).

Before: a ``contributor`` invite limited to ``public/`` let its guest write into
``secret/`` (signed by the node as author); write paths ignored the grant
target. Now every write path checks the caller's view for ``records:write``:
``POST /v1/records`` (append and a record signed elsewhere) and the batch import
``POST /v1/records/import`` (``node.records.ingest_many``; one record outside the
grants refuses the whole batch). A namespace/thread no grant with
``records:write`` covers is CONSENT_DENIED and nothing is stored. Real node
(SQLite, hypercorn), plain httpx, and a hypothesis property over random grants
and writes on every path: no write lands outside its grant.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedpeer.consent import grants, tokens
from fedpeer.consent.grants import Grant, Target
from fedpeer.errors import ConsentDenied
from fedpeer.identity.canonical import dagcbor_encode
from fedpeer.identity.keys import SigningKey
from fedpeer.peer import NodeConfig, PeerClient, open_node
from fedpeer.peer.node import Node
from fedpeer.store import StateTx
from fedpeer.sync.records import build_record

CFG = NodeConfig(rate_per_s=1e6, rate_burst=10**6)
CBOR = {"Content-Type": "application/cbor", "Accept": "application/json"}


def _append_body(namespace: str, thread: str, body: object) -> bytes:
    return dagcbor_encode(
        {"namespace": namespace, "thread": thread, "kind": "note", "body": body, "parents": []}
    )


def _signed_pair(key: SigningKey, namespace: str, thread: str, body: object) -> tuple[bytes, bytes]:
    rec = build_record(
        key,
        namespace=namespace,
        thread=thread,
        kind="note",
        body=body,
        parents=(),
        clock=1,
        ts=1_700_000_000_000,
    )
    return rec.data, rec.sig


def _signed_body(key: SigningKey, namespace: str, thread: str, body: object) -> bytes:
    data, sig = _signed_pair(key, namespace, thread, body)
    return dagcbor_encode({"data": data, "sig": sig})


def _import_body(pairs: list[tuple[bytes, bytes]]) -> bytes:
    return dagcbor_encode({"records": [{"data": d, "sig": s} for d, s in pairs]})


async def _post(
    client: httpx.AsyncClient, url: str, token: str, body: bytes, path: str = "/v1/records"
) -> httpx.Response:
    return await client.post(
        url + path, content=body, headers={**CBOR, "Authorization": f"Bearer {token}"}
    )


async def test_contributor_invite_for_public_cannot_write_into_secret(tmp_path: Path) -> None:
    async with open_node(tmp_path / "n", config=CFG) as node:
        invite = await node.invites.create(
            scopes=["contributor"], target=Target("namespace", "public/")
        )
        guest = SigningKey.generate()
        async with PeerClient(node.url) as p:
            cred = await p.redeem(invite.url, holder_key=guest, holder_type="guest")
        before = await node.store.count()
        author = SigningKey.generate()
        async with httpx.AsyncClient(timeout=10) as client:
            for body in (
                _append_body("secret/", "t", "leak"),
                _append_body("secret/x", "t", "leak"),
                _append_body("publicity", "t", "leak"),  # "public/" is a prefix, not "public"
                _signed_body(author, "secret/", "t", "leak"),
            ):
                r = await _post(client, node.url, cred.token, body)
                assert r.status_code == 403, r.text
                assert r.json()["error"]["code"] == "CONSENT_DENIED"
            assert await node.store.count() == before  # nothing stored
            ok = await _post(client, node.url, cred.token, _append_body("public/x", "t", "fine"))
            assert ok.status_code == 201, ok.text
            ok2 = await _post(
                client, node.url, cred.token, _signed_body(author, "public/y", "t", "fine")
            )
            assert ok2.status_code == 201, ok2.text
        assert await node.store.count() == before + 2


async def test_import_batch_with_one_record_outside_the_grant_stores_nothing(
    tmp_path: Path,
) -> None:
    """``POST /v1/records/import`` is a write path too: a batch whose last record
    lies outside the caller's grant is CONSENT_DENIED, naming its index, and none
    of the batch (not even the allowed records before it) is stored."""
    async with open_node(tmp_path / "n", config=CFG) as node:
        invite = await node.invites.create(
            scopes=["contributor"], target=Target("namespace", "public/")
        )
        async with PeerClient(node.url) as p:
            cred = await p.redeem(invite.url, holder_key=SigningKey.generate(), holder_type="guest")
        author = SigningKey.generate()
        allowed = [_signed_pair(author, "public/a", "t", i) for i in range(3)]
        denied = _signed_pair(author, "secret/", "t", "leak")
        before = await node.store.count()
        async with httpx.AsyncClient(timeout=10) as client:
            path = "/v1/records/import"
            r = await _post(client, node.url, cred.token, _import_body([*allowed, denied]), path)
            assert r.status_code == 403, r.text
            assert r.json()["error"]["code"] == "CONSENT_DENIED"
            assert "record 3 of the batch" in r.json()["error"]["message"]
            assert await node.store.count() == before  # all or nothing
            ok = await _post(client, node.url, cred.token, _import_body(allowed), path)
            assert ok.status_code == 200, ok.text
            assert ok.json() == {"stored": 3, "existing": 0}
        assert await node.store.count() == before + 3


async def test_ingest_many_checks_the_write_view_in_process(tmp_path: Path) -> None:
    """``node.records.ingest_many(view=...)`` applies the same check as append and
    ingest, before anything is stored."""
    async with open_node(tmp_path / "n", config=CFG) as node:
        did = SigningKey.generate().did

        def mint(tx: StateTx) -> str:
            _sa, issued = tokens.create_service_account(
                tx, name="w", holder_did=did, scopes=["contributor"]
            )
            grants.create_grant(
                tx, grantee_did=did, target=Target("namespace", "public/"), scopes=["contributor"]
            )
            return issued.bearer

        principal = await node.tokens.authenticate(await node.store.transact(mint))
        view = await node.grants.view_for(principal, "records:write")
        author = SigningKey.generate()
        ok = _signed_pair(author, "public/x", "t", 1)
        bad = _signed_pair(author, "secret/x", "t", 2)
        with pytest.raises(ConsentDenied, match="record 1 of the batch"):
            await node.records.ingest_many([ok, bad], view=view)
        assert await node.store.count() == 0
        assert await node.records.ingest_many([ok], view=view) == (1, 0)


# --- the property --------------------------------------------------------------------

NAMESPACES = ("public/", "public/a", "publicity", "secret/", "secret/x", "app")
THREADS = ("t1", "t2", "t3")

targets = st.one_of(
    st.just(Target("instance")),
    st.builds(Target, st.just("namespace"), st.sampled_from(("public/", "secret/", "pub", "app"))),
    st.builds(
        Target,
        st.just("thread"),
        st.sampled_from(THREADS),
        st.one_of(st.none(), st.sampled_from(NAMESPACES)),
    ),
)
grant_specs = st.lists(
    st.tuples(targets, st.sampled_from((["reader"], ["contributor"], ["records:write"]))),
    max_size=3,
)
WRITE_MODES = ("append", "signed", "import")  # POST /v1/records (JSON, {data, sig}), import
writes = st.lists(
    st.tuples(st.sampled_from(NAMESPACES), st.sampled_from(THREADS), st.sampled_from(WRITE_MODES)),
    min_size=1,
    max_size=6,
)


def _may_write(made: list[Grant], namespace: str, thread: str) -> bool:
    return any(g.allows("records:write") and g.target.matches(namespace, thread) for g in made)


async def _check_example(
    node: Node, specs: list[tuple[Target, list[str]]], attempts: list[tuple[str, str, str]]
) -> None:
    did = SigningKey.generate().did

    def mint(tx: StateTx) -> tuple[str, list[Grant]]:
        _sa, issued = tokens.create_service_account(
            tx, name="w", holder_did=did, scopes=["contributor"]
        )
        made = [grants.create_grant(tx, grantee_did=did, target=t, scopes=sc) for t, sc in specs]
        return issued.bearer, made

    token, made = await node.store.transact(mint)
    head = await node.store.head_seq()
    author = SigningKey.generate()
    async with httpx.AsyncClient(timeout=10) as client:
        for i, (namespace, thread, mode) in enumerate(attempts):
            if mode == "import":
                pair = _signed_pair(author, namespace, thread, [did, i])
                r = await _post(client, node.url, token, _import_body([pair]), "/v1/records/import")
            else:
                body = (
                    _signed_body(author, namespace, thread, [did, i])
                    if mode == "signed"
                    else _append_body(namespace, thread, [did, i])
                )
                r = await _post(client, node.url, token, body)
            if _may_write(made, namespace, thread):
                ok_status = 200 if mode == "import" else 201
                assert r.status_code == ok_status, (namespace, thread, specs, r.text)
            else:
                assert r.status_code == 403, (namespace, thread, specs, r.text)
                assert r.json()["error"]["code"] == "CONSENT_DENIED"
    # Whatever the answers said: nothing stored lies outside the writer's grants.
    page = await node.store.changes(head, 1000)
    assert len(page.records) == sum(1 for ns, t, _s in attempts if _may_write(made, ns, t))
    for rec in page.records:
        assert _may_write(made, rec.namespace, rec.thread), (rec.namespace, rec.thread, specs)


async def test_no_write_lands_outside_its_grant(tmp_path: Path) -> None:
    """Hypothesis runs in a worker thread; each example calls back into this trio
    loop, where one real node serves (a fresh DID and token per example)."""
    async with open_node(tmp_path / "n", config=CFG) as node:
        token = trio.lowlevel.current_trio_token()

        @settings(
            max_examples=40,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
            database=None,
        )
        @given(specs=grant_specs, attempts=writes)
        def prop(
            specs: list[tuple[Target, list[str]]], attempts: list[tuple[str, str, str]]
        ) -> None:
            trio.from_thread.run(_check_example, node, specs, attempts, trio_token=token)

        await trio.to_thread.run_sync(prop)


def _append_with_parents(namespace: str, parents: list[str]) -> bytes:
    return dagcbor_encode(
        {"namespace": namespace, "thread": "t", "kind": "note", "body": 1, "parents": parents}
    )


async def test_an_append_naming_too_many_parents_reads_none_of_them(tmp_path: Path) -> None:
    """Found by a read-only audit: ``POST /v1/records`` loaded and decoded every
    parent it named (tens of thousands fit in a body, each up to 1 MiB), holding
    the append lock, before the 64-parent limit refused the record. Now the
    parents rule is checked first: nothing is read for a refused list."""
    async with open_node(tmp_path / "n", config=CFG) as node:
        reads: list[int] = []
        get_many = node.store.get_many

        async def counting_get_many(cids: object) -> object:
            reads.append(len(cids))  # type: ignore[arg-type]
            return await get_many(cids)  # type: ignore[arg-type]

        node.store.get_many = counting_get_many  # type: ignore[method-assign]
        many = [str(build_record(SigningKey.generate(), namespace="a", thread="t", kind="k",
                                 body=i).cid) for i in range(65)]  # fmt: skip
        assert node.admin_token is not None
        async with httpx.AsyncClient(timeout=30) as client:
            for parents in (many * 150, many, [many[0], many[0]]):
                body = _append_with_parents("a", parents)
                r = await _post(client, node.url, node.admin_token, body)
                assert r.json()["error"]["code"] == "RECORD_INVALID", r.text
        assert reads == []
        assert await node.store.count() == 0


async def test_a_parent_the_writer_may_not_read_does_not_leak_its_clock(tmp_path: Path) -> None:
    """The new record's clock is one more than its parents' clocks: a parent the
    writer may not read counts for nothing, so the clock tells nothing about it
    (found by the same audit)."""
    async with open_node(tmp_path / "n", config=CFG) as node:
        hidden = build_record(
            SigningKey.generate(), namespace="secret/", thread="t", kind="note", body=1,
            clock=1000, ts=1_700_000_000_000,
        )  # fmt: skip
        await node.records.ingest(hidden.data, hidden.sig)
        invite = await node.invites.create(
            scopes=["contributor"], target=Target("namespace", "public/")
        )
        async with PeerClient(node.url) as p:
            cred = await p.redeem(invite.url, holder_key=SigningKey.generate(), holder_type="guest")
        async with httpx.AsyncClient(timeout=10) as client:
            body = _append_with_parents("public/x", [str(hidden.cid)])
            r = await _post(client, node.url, cred.token, body)
            assert r.status_code == 201, r.text
            stored = await node.records.get(r.json()["cid"])
            assert stored.record.clock < 1000  # the hidden parent's clock did not count
            assert node.admin_token is not None
            r = await _post(client, node.url, node.admin_token, body)  # the admin sees it
            assert r.status_code == 201, r.text
            assert (await node.records.get(r.json()["cid"])).record.clock == 1001
