"""Grants: targets, views, and the grant table against every real store."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedpeer.consent import grants as g
from fedpeer.consent.grants import (
    EVERYTHING,
    NOTHING,
    ConsentView,
    Grant,
    Target,
    create_grant,
    delete_grant,
    delete_grants_by_origin,
    get_revision,
    list_grants,
    load_revision,
    load_view,
    parse_target,
    view_for,
)
from fedpeer.errors import ConsentDenied, DidInvalid, GrantNotFound, InvalidRequest
from fedpeer.store.base import StateTx, Store

ALICE = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"
BOB = "did:key:z6MkjchhfUsD6mmvni8mCdXHw216Xrm9bQe2mBH1P5RDjVJG"
T0 = 1_700_000_000_000
SA = "0123456789abcdef0123"


def grant(
    target: Target,
    scopes: frozenset[str] = frozenset({"records:read", "sync:read"}),
    *,
    expires_ms: int | None = None,
    sa_id: str | None = None,
) -> Grant:
    return Grant(
        id="a" * 20,
        grantee_did=ALICE,
        target=target,
        scopes=scopes,
        created_ms=T0,
        expires_ms=expires_ms,
        sa_id=sa_id,
    )


# --- targets ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        {"type": "everything"},
        {"type": "instance", "value": "x"},
        {"type": "namespace", "value": ""},
        {"type": "namespace", "value": "/abs"},
        {"type": "namespace", "value": "a b"},
        {"type": "namespace", "value": "a", "namespace": "a"},
        {"type": "thread", "value": "t", "namespace": ""},
        {"type": "thread", "value": "t", "extra": 1},
        {"type": "thread", "value": 5},
        "instance",
        None,
    ],
)
def test_bad_targets_are_refused(raw: object) -> None:
    with pytest.raises(InvalidRequest):
        parse_target(raw)


def test_target_matching() -> None:
    inst = Target("instance")
    ns = Target("namespace", "app/")
    th = Target("thread", "t1")
    th_ns = Target("thread", "t1", namespace="app/a")
    assert inst.matches("x", "y")
    assert ns.matches("app/a", "t")
    assert ns.matches("app/", "t")
    assert not ns.matches("app", "t")
    assert not ns.matches("apple", "t")
    assert th.matches("anything", "t1")
    assert not th.matches("anything", "t2")
    assert th_ns.matches("app/a", "t1")
    assert not th_ns.matches("app/ab", "t1")
    assert not th_ns.matches("app/a", "t2")


@pytest.mark.parametrize(
    ("target", "ns", "thread", "expected"),
    [
        (Target("instance"), "zzz", "q", True),
        (Target("namespace", "app/a"), "app", None, True),  # the request is wider
        (Target("namespace", "app/a"), "app/a/x", None, True),  # the request is narrower
        (Target("namespace", "app/a"), "app/b", None, False),
        (Target("namespace", "app/a"), None, "anything", True),  # any thread may live there
        (Target("thread", "t1"), None, "t1", True),
        (Target("thread", "t1"), None, "t2", False),
        (Target("thread", "t1"), "app", None, True),  # t1 may exist under app
        (Target("thread", "t1", namespace="app/a"), "app", "t1", True),
        (Target("thread", "t1", namespace="app/a"), "other", "t1", False),
        (Target("thread", "t1", namespace="app/a"), "app/a/deeper", "t1", False),
    ],
)
def test_target_overlap(target: Target, ns: str | None, thread: str | None, expected: bool) -> None:
    assert target.overlaps(ns, thread) is expected


names = st.text(alphabet="abc/._-", min_size=1, max_size=6).filter(lambda s: not s.startswith("/"))
targets = st.one_of(
    st.just(Target("instance")),
    st.builds(Target, st.just("namespace"), names),
    st.builds(Target, st.just("thread"), names, st.one_of(st.none(), names)),
)


@settings(max_examples=80)
@given(targets)
def test_target_json_round_trip(target: Target) -> None:
    assert parse_target(json.loads(json.dumps(target.to_dict()))) == target


@settings(max_examples=80)
@given(targets, names, names)
def test_overlap_is_implied_by_a_match(target: Target, ns: str, thread: str) -> None:
    # If a record in (ns, thread) is visible, a request naming exactly that record's
    # namespace (as a prefix) and thread must not be denied.
    if target.matches(ns, thread):
        assert target.overlaps(ns, thread)
        assert target.overlaps(ns, None)
        assert target.overlaps(None, thread)


# --- views -----------------------------------------------------------------------------


def test_view_applies_scope_expiry_and_binding() -> None:
    ns_a = Target("namespace", "a")
    grants = [
        grant(ns_a, frozenset({"records:read"})),
        grant(Target("namespace", "b"), expires_ms=T0 + 10),
        grant(Target("namespace", "c"), sa_id=SA),
        grant(Target("namespace", "d"), frozenset({"admin"})),
    ]
    rr = view_for(grants, scope="records:read", now_ms=T0)
    assert rr.visible("a", "t")
    assert rr.visible("b", "t")
    assert rr.visible("d", "t")
    assert not rr.visible("c", "t")  # bound to an account we are not
    sync = view_for(grants, scope="sync:read", now_ms=T0)
    assert not sync.visible("a", "t")  # records:read only
    assert sync.visible("d", "t")  # admin implies every scope
    later = view_for(grants, scope="records:read", now_ms=T0 + 10)
    assert not later.visible("b", "t")  # expired (exclusive end)
    as_sa = view_for(grants, scope="records:read", now_ms=T0, sa_id=SA)
    assert as_sa.visible("c", "t")
    guest = view_for(grants, scope="records:read", now_ms=T0, sa_id=SA, bound_only=True)
    assert guest.visible("c", "t")
    assert not guest.visible("a", "t")
    assert not guest.visible("d", "t")
    with pytest.raises(ValueError, match="unknown scope"):
        view_for(grants, scope="write", now_ms=T0)


def test_default_posture_is_nothing() -> None:
    assert view_for([], scope="sync:read", now_ms=T0) == NOTHING
    assert not NOTHING.visible("a", "b")
    with pytest.raises(ConsentDenied):
        NOTHING.check_filter("a", None)
    with pytest.raises(ConsentDenied):
        NOTHING.check_filter(None, "t")
    NOTHING.check_filter(None, None)  # naming nothing: filtered, never denied


def test_check_filter() -> None:
    view = ConsentView(False, (Target("namespace", "app/a"), Target("thread", "t9")))
    view.check_filter("app", None)
    view.check_filter("app/a/x", "anything")
    view.check_filter(None, "t9")
    with pytest.raises(ConsentDenied) as info:
        view.check_filter("other", "t1")
    assert info.value.code == "CONSENT_DENIED"
    assert info.value.http_status == 403
    assert "other" in info.value.message
    EVERYTHING.check_filter("whatever", "t")
    instance = view_for([grant(Target("instance"))], scope="sync:read", now_ms=T0)
    instance.check_filter("whatever", "t")
    assert instance.visible("x", "y")


# --- the grant table -------------------------------------------------------------------


async def test_create_list_delete_and_revision(store: Store) -> None:
    assert await load_revision(store) == 0

    def make(tx: StateTx) -> list[Grant]:
        return [
            create_grant(tx, grantee_did=ALICE, target=Target("namespace", "a/"), now_ms=T0),
            create_grant(
                tx,
                grantee_did=BOB,
                target=Target("thread", "t"),
                scopes=["sync:read"],
                expires_ms=T0 + 1000,
                now_ms=T0 + 1,
            ),
        ]

    a, b = await store.transact(make)
    assert a.scopes == frozenset({"records:read", "sync:read"})  # the reader preset
    assert await load_revision(store) == 2
    listed = await store.transact(lambda tx: list_grants(tx))
    assert [x.id for x in listed] == [a.id, b.id]
    assert await store.transact(lambda tx: list_grants(tx, grantee_did=BOB)) == [b]
    view = await load_view(store, ALICE, scope="sync:read", now_ms=T0)
    assert view.visible("a/x", "t")
    assert not view.visible("b", "t")
    assert not (await load_view(store, BOB, scope="records:read", now_ms=T0)).visible("x", "t")
    assert (await load_view(store, BOB, scope="sync:read", now_ms=T0)).visible("x", "t")
    assert not (await load_view(store, BOB, scope="sync:read", now_ms=T0 + 1000)).visible("x", "t")

    removed = await store.transact(lambda tx: delete_grant(tx, a.id, now_ms=T0))
    assert removed == a
    assert await load_revision(store) == 3
    assert not (await load_view(store, ALICE, scope="sync:read", now_ms=T0)).visible("a/x", "t")
    with pytest.raises(GrantNotFound):
        await store.transact(lambda tx: delete_grant(tx, a.id))
    with pytest.raises(GrantNotFound):
        await store.transact(lambda tx: delete_grant(tx, "not-an-id"))
    assert await load_revision(store) == 3  # failures roll back, revision included
    events = [e.event["type"] for e in await store.audit_log(0, 100)]
    assert events == ["grant.created", "grant.created", "grant.deleted"]


async def test_a_did_prefix_does_not_leak_grants(store: Store) -> None:
    # "did:web:a" is a string prefix of "did:web:ab": the '#' in the row key keeps
    # one DID's prefix scan from finding the other's grants.
    await store.transact(
        lambda tx: create_grant(tx, grantee_did="did:web:ab", target=Target("instance"))
    )
    assert await g.grants_for(store, "did:web:a") == []
    assert len(await g.grants_for(store, "did:web:ab")) == 1


async def test_delete_by_origin(store: Store) -> None:
    def make(tx: StateTx) -> None:
        for origin in ("invite:aaa", "invite:aaa", "invite:bbb", "api"):
            create_grant(tx, grantee_did=ALICE, target=Target("instance"), origin=origin)

    await store.transact(make)
    removed = await store.transact(lambda tx: delete_grants_by_origin(tx, "invite:aaa"))
    assert len(removed) == 2
    left = await store.transact(lambda tx: list_grants(tx))
    assert sorted(x.origin for x in left) == ["api", "invite:bbb"]
    assert await store.transact(get_revision) == 5  # four creates, one bulk delete
    assert await store.transact(lambda tx: delete_grants_by_origin(tx, "invite:zzz")) == []
    assert await store.transact(get_revision) == 5


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"grantee_did": "alice"}, DidInvalid),
        ({"scopes": []}, InvalidRequest),
        ({"scopes": ["root"]}, InvalidRequest),
        ({"expires_ms": T0}, InvalidRequest),  # not in the future
        ({"origin": "bootstrap"}, InvalidRequest),
        ({"sa_id": "short"}, InvalidRequest),
    ],
)
async def test_create_grant_validates(
    store: Store, kwargs: dict[str, object], error: type[Exception]
) -> None:
    args: dict[str, object] = {"grantee_did": ALICE, "target": Target("instance"), "now_ms": T0}
    args.update(kwargs)
    with pytest.raises(error):
        await store.transact(lambda tx: create_grant(tx, **args))  # type: ignore[arg-type]
    assert await store.list_state("grants") == []
    assert await load_revision(store) == 0


# --- wake filters (what a waiting reader may see, for the store's waiter index) --------

_names = st.sampled_from(["a", "a/", "a/b", "ab", "b", "b/c"])
_threads = st.sampled_from(["t", "t1", "u"])
_targets = st.one_of(
    st.just(Target("instance")),
    st.builds(lambda v: Target("namespace", v), _names),
    st.builds(lambda v, ns: Target("thread", v, ns), _threads, st.none() | _names),
)


@settings(max_examples=300)
@given(
    targets=st.lists(_targets, max_size=3),
    everything=st.booleans(),
    prefix=st.none() | _names,
    thread=st.none() | _threads,
    records=st.lists(st.tuples(_names, _threads), min_size=1, max_size=6),
)
def test_wake_filters_cover_everything_the_reader_may_be_shown(
    targets: list[Target],
    everything: bool,
    prefix: str | None,
    thread: str | None,
    records: list[tuple[str, str]],
) -> None:
    from fedpeer.store.base import ChangeFilter

    view = ConsentView(everything=everything, targets=tuple(targets))
    flt = ChangeFilter(namespace_prefix=prefix, thread=thread)
    wake = view.wake_filters(flt)
    for ns, th in records:
        shown = view.visible(ns, th) and flt.matches(ns, th)
        woken = wake is None or any(f.matches(ns, th) for f in wake)
        if shown:
            assert woken, (ns, th, wake)  # never miss what the reader may be shown
        if woken:
            # and nothing more: consent scans use these filters, so a page never
            # counts (or ends on) a record the reader may not see
            assert shown, (ns, th, wake)


def test_wake_filters_examples() -> None:
    from fedpeer.store.base import ChangeFilter

    assert EVERYTHING.wake_filters(ChangeFilter()) is None
    assert EVERYTHING.wake_filters(ChangeFilter("app/")) == (ChangeFilter("app/"),)
    assert NOTHING.wake_filters(ChangeFilter()) == ()
    view = ConsentView(
        everything=False,
        targets=(Target("namespace", "public/"), Target("thread", "t1", "chat")),
    )
    assert view.wake_filters(ChangeFilter()) == (
        ChangeFilter("public/"),
        ChangeFilter("chat", "t1", namespace_exact=True),
    )
    # a filter outside the grants: nothing can wake this reader
    assert view.wake_filters(ChangeFilter("secret/")) == ()
    assert view.wake_filters(ChangeFilter("public/x")) == (ChangeFilter("public/x"),)
    assert ConsentView(False, (Target("instance"),)).wake_filters(ChangeFilter()) is None
