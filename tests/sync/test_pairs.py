"""Pairs: ids, validation, the one state table, persistence, stats."""

from __future__ import annotations

import itertools
import json
import re

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedpeer.errors import (
    DidInvalid,
    InvalidRequest,
    PairSelf,
    PairStateInvalid,
    StoreCorrupt,
)
from fedpeer.identity.keys import SigningKey
from fedpeer.sync.feed import Cursor
from fedpeer.sync.pairs import (
    LATENCY_BUCKETS_MS,
    PAIR_TRANSITIONS,
    LastError,
    Pair,
    PairAction,
    PairFilter,
    PairState,
    PairStats,
    make_pair,
    pair_id,
    transition,
)

LOCAL = SigningKey.from_seed(b"\x01" * 32).did
PEER = SigningKey.from_seed(b"\x02" * 32).did
SECRET = "fpk_secret-token-value_123"
NOW = 1_800_000_000_000
EPOCH = "ab" * 16


def _pair(**kw: object) -> Pair:
    args: dict[str, object] = {
        "local_did": LOCAL,
        "peer_did": PEER,
        "peer_url": "http://127.0.0.1:8470/",
        "credential": SECRET,
        "now_ms": NOW,
    }
    args.update(kw)
    return make_pair(**args)  # type: ignore[arg-type]


# --- ids and creation ---------------------------------------------------------------


def test_pair_id_is_deterministic_and_depends_on_direction_and_filter() -> None:
    f = PairFilter(namespace="notes")
    pid = pair_id(LOCAL, PEER, f)
    assert re.fullmatch(r"p_[0-9a-f]{24}", pid)
    assert pid == pair_id(LOCAL, PEER, PairFilter(namespace="notes"))
    assert pid != pair_id(PEER, LOCAL, f)  # the other direction is another pair
    assert pid != pair_id(LOCAL, PEER, PairFilter())
    assert pid != pair_id(LOCAL, PEER, PairFilter(namespace="notes", thread="t"))
    assert pid != pair_id(LOCAL, PEER, PairFilter(thread="notes"))
    # creating "the same pair twice" gives the same id, whatever the other fields
    a = _pair(filter=f, credential="a", peer_url="http://10.0.0.1:1")
    b = _pair(filter=PairFilter(namespace="notes", thread=""), credential=None, now_ms=NOW + 5)
    assert a.id == b.id == pid


def test_empty_filter_strings_are_the_same_as_none() -> None:
    assert PairFilter(namespace="", thread="") == PairFilter()
    assert PairFilter.from_dict({"namespace": ""}) == PairFilter()
    assert PairFilter.from_dict(None) == PairFilter()


@pytest.mark.parametrize(
    "obj",
    [
        {"namespace": "/abs"},
        {"namespace": "a" * 257},
        {"thread": "has space"},
        {"namespace": 3},
        {"other": "x"},
        "notes",
    ],
)
def test_bad_filter_is_invalid_request(obj: object) -> None:
    with pytest.raises(InvalidRequest):
        PairFilter.from_dict(obj)


def test_filter_matches_namespace_prefix_and_exact_thread() -> None:
    f = PairFilter(namespace="app", thread="t1")
    assert f.matches("app/x", "t1")
    assert f.matches("apple", "t1")
    assert not f.matches("ap", "t1")
    assert not f.matches("app", "t2")
    assert PairFilter().matches("anything", "any")


_names = st.sampled_from(["", "a", "ap", "app", "app/x", "apple", "b", "t1", "t2"])


@settings(max_examples=300)
@given(ns=_names, th=_names, rec_ns=_names, rec_th=_names)
def test_filter_matches_agrees_with_the_store_filter(
    ns: str, th: str, rec_ns: str, rec_th: str
) -> None:
    # the pull path's per-record check and the store's ChangeFilter give one verdict
    f = PairFilter(namespace=ns, thread=th)
    assert f.matches(rec_ns, rec_th) == f.to_change_filter().matches(rec_ns, rec_th)


def test_make_pair_refuses_itself() -> None:
    with pytest.raises(PairSelf) as info:
        _pair(peer_did=LOCAL)
    assert info.value.code == "PAIR_SELF"
    assert LOCAL in info.value.message
    assert "itself" in info.value.message


def test_make_pair_starts_running_from_the_beginning() -> None:
    p = _pair()
    assert p.state is PairState.RUNNING
    assert p.cursor is None
    assert p.retries == 0
    assert p.last_error is None
    assert p.created_ms == p.updated_ms == NOW
    assert p.peer_url == "http://127.0.0.1:8470"  # trailing slash normalised
    assert p.active


@pytest.mark.parametrize(
    ("kw", "exc"),
    [
        ({"peer_did": "not-a-did"}, DidInvalid),
        ({"local_did": "did:key:"}, DidInvalid),
        ({"peer_url": "ftp://host/x"}, InvalidRequest),
        ({"peer_url": "http://"}, InvalidRequest),
        ({"peer_url": "http://user:pw@host"}, InvalidRequest),
        ({"peer_url": "http://host:99999"}, InvalidRequest),
        ({"peer_url": "http://host/?a=1"}, InvalidRequest),
        ({"credential": "has space"}, InvalidRequest),
        ({"credential": "line\r\nInjected: x"}, InvalidRequest),
        ({"credential": ""}, InvalidRequest),
        ({"author_allowlist": []}, InvalidRequest),
        ({"author_allowlist": "did:key:z6Mk"}, InvalidRequest),
        ({"author_allowlist": ["nope"]}, DidInvalid),
    ],
)
def test_make_pair_validates(kw: dict[str, object], exc: type[Exception]) -> None:
    with pytest.raises(exc) as info:
        _pair(**kw)
    assert "Injected" not in str(info.value)  # credentials are never echoed


def test_allowlist_is_sorted_and_unique() -> None:
    p = _pair(author_allowlist=[PEER, LOCAL, PEER])
    assert p.author_allowlist == tuple(sorted({PEER, LOCAL}))


def test_credential_is_never_shown() -> None:
    p = _pair()
    assert SECRET not in repr(p)
    assert SECRET not in str(p)
    public = p.to_public_dict(now_ms=NOW)
    assert "credential" not in public
    assert public["has_credential"] is True
    assert SECRET not in json.dumps(public)
    assert p.to_dict()["credential"] == SECRET  # the store row keeps it


# --- the one state table ----------------------------------------------------------------

S = PairState
A = PairAction
_ACTIVE_ROW = {
    A.PAUSE: S.PAUSED,
    A.KICK: S.RUNNING,
    A.DELETE: S.DELETED,
    A.PROGRESS: S.RUNNING,
    A.CATCH_UP: S.CAUGHT_UP,
    A.FAIL: S.FAILING,
    A.STOP: S.STOPPED,
    A.RESET: S.RUNNING,
}
# written out independently of the implementation's table
EXPECTED: dict[tuple[PairState, PairAction], PairState] = {
    **{(S.RUNNING, a): s for a, s in _ACTIVE_ROW.items()},
    **{(S.CAUGHT_UP, a): s for a, s in _ACTIVE_ROW.items()},
    **{(S.FAILING, a): s for a, s in _ACTIVE_ROW.items()},
    (S.PAUSED, A.RESUME): S.RUNNING,
    (S.PAUSED, A.DELETE): S.DELETED,
    (S.STOPPED, A.RESUME): S.RUNNING,
    (S.STOPPED, A.DELETE): S.DELETED,
}


@pytest.mark.parametrize(
    ("state", "action"), list(itertools.product(PairState, PairAction)), ids=str
)
def test_every_state_action_pair(state: PairState, action: PairAction) -> None:
    err = LastError("PEER_UNREACHABLE", "down", NOW)
    p = attrs.evolve(_pair(), state=state, cursor=Cursor(EPOCH, 5).encode())
    expected = EXPECTED.get((state, action))
    if expected is None:
        with pytest.raises(PairStateInvalid) as info:
            p.apply(action, now_ms=NOW + 1, error=err)
        assert info.value.code == "PAIR_STATE_INVALID"
        assert info.value.http_status == 409
        assert p.id in info.value.message
        assert state.value in info.value.message
        with pytest.raises(PairStateInvalid):
            transition(state, action)
    else:
        q = p.apply(action, now_ms=NOW + 1, error=err)
        assert q.state is expected
        assert q.updated_ms == NOW + 1
        assert transition(state, action) is expected
    assert PAIR_TRANSITIONS[state].get(action) == expected


def test_refusals_say_what_to_do_instead() -> None:
    paused = attrs.evolve(_pair(), state=S.PAUSED)
    with pytest.raises(PairStateInvalid, match="resume it instead"):
        paused.apply(A.KICK)
    stopped = attrs.evolve(_pair(), state=S.STOPPED)
    with pytest.raises(PairStateInvalid, match="credential"):
        stopped.apply(A.KICK)


def test_action_effects() -> None:
    err = LastError("BAD_SIGNATURE", "tampered", NOW)
    p = attrs.evolve(_pair(), cursor=Cursor(EPOCH, 9).encode())
    f1 = p.apply(A.FAIL, now_ms=NOW, error=err)
    f2 = f1.apply(A.FAIL, now_ms=NOW + 1, error=err)
    assert (f1.retries, f2.retries) == (1, 2)
    assert f2.last_error == err
    assert f2.stats.errors_total == 2
    assert f2.cursor == p.cursor  # failing never moves the cursor
    ok = f2.apply(A.PROGRESS, now_ms=NOW + 2)
    assert ok.retries == 0
    assert ok.last_error is None
    assert ok.state is S.RUNNING
    kicked = f2.apply(A.KICK)
    assert kicked.retries == 0
    assert kicked.last_error == err
    reset = f2.apply(A.RESET)
    assert reset.cursor is None
    stopped = p.apply(A.STOP, error=err)
    assert stopped.state is S.STOPPED
    assert stopped.last_error == err
    with pytest.raises(ValueError, match="needs the error"):
        p.apply(A.FAIL)


def test_set_credential_keeps_state() -> None:
    p = attrs.evolve(_pair(), state=S.STOPPED)
    q = p.with_credential("new-token", now_ms=NOW + 9)
    assert q.state is S.STOPPED
    assert q.credential == "new-token"
    assert q.updated_ms == NOW + 9
    with pytest.raises(InvalidRequest):
        p.with_credential("bad token")
    with pytest.raises(PairStateInvalid):
        attrs.evolve(p, state=S.DELETED).with_credential("x")


# --- persistence ----------------------------------------------------------------------


def test_round_trip_through_json() -> None:
    err = LastError("PEER_UNREACHABLE", "down", NOW)
    p = _pair(filter=PairFilter(namespace="notes", thread="t1"), author_allowlist=[PEER])
    p = attrs.evolve(p, cursor=Cursor(EPOCH, 42).encode())
    p = p.apply(A.FAIL, now_ms=NOW + 5, error=err)
    p = attrs.evolve(
        p,
        stats=p.stats.with_page(records=3, nbytes=300, latencies_ms=[5, 50, 5000], now_ms=NOW),
    )
    row = json.loads(json.dumps(p.to_dict()))
    assert Pair.from_dict(row) == p
    bare = _pair(credential=None)
    assert Pair.from_dict(json.loads(json.dumps(bare.to_dict()))) == bare


def test_origin_round_trips_and_old_rows_are_the_owners() -> None:
    mine = _pair()
    assert mine.origin == "owner"
    theirs = attrs.evolve(mine, origin="redeem")
    assert Pair.from_dict(json.loads(json.dumps(theirs.to_dict()))).origin == "redeem"
    old = mine.to_dict()
    del old["origin"]  # a row written before pairs had an origin
    assert Pair.from_dict(old).origin == "owner"
    with pytest.raises(ValueError, match="origin"):
        attrs.evolve(mine, origin="stranger")


def _row() -> dict[str, object]:
    return _pair().to_dict()


@pytest.mark.parametrize(
    "mutate",
    [
        lambda r: r.update(v=2),
        lambda r: r.update(state="sleeping"),
        lambda r: r.update(id="p_" + "0" * 24),
        lambda r: r.update(peer_did=LOCAL.replace("z", "y", 1)),
        lambda r: r.update(cursor="garbage"),
        lambda r: r.update(retries=-1),
        lambda r: r.update(retries=True),
        lambda r: r.update(last_error={"code": "X"}),
        lambda r: r.update(stats={"records": "many"}),
        lambda r: r.update(stats={"latency_counts": [1, 2]}),
        lambda r: r.update(filter={"namespace": "/x"}),
        lambda r: r.update(credential="bad token " + SECRET),
        lambda r: r.pop("created_ms"),
        lambda r: r.update(origin="stranger"),
    ],
)
def test_corrupt_rows_raise_store_corrupt_without_the_credential(mutate: object) -> None:
    row = _row()
    mutate(row)  # type: ignore[operator]
    with pytest.raises(StoreCorrupt) as info:
        Pair.from_dict(row)
    assert info.value.code == "STORE_CORRUPT"
    assert SECRET not in str(info.value)


# --- stats -------------------------------------------------------------------------------


def test_rate_is_over_the_last_minute() -> None:
    s = PairStats()
    s = s.with_page(records=60, nbytes=600, latencies_ms=[], now_ms=NOW)
    s = s.with_page(records=60, nbytes=600, latencies_ms=[], now_ms=NOW + 30_000)
    assert s.rate_per_s(NOW + 30_000) == pytest.approx(2.0)
    assert s.rate_per_s(NOW + 61_000) == pytest.approx(1.0)  # first page aged out
    assert s.rate_per_s(NOW + 200_000) == 0
    assert (s.records, s.bytes, s.pages) == (120, 1200, 2)
    # the window stays bounded however many pages arrive
    for i in range(500):
        s = s.with_page(records=1, nbytes=1, latencies_ms=[], now_ms=NOW + i * 1000)
    assert len(s.rate_window) <= 60


def test_latency_percentiles_use_the_fixed_buckets() -> None:
    s = PairStats()
    assert s.percentile_ms(0.5) is None
    lat = [3] * 90 + [40_000] * 10  # p50 in the 5 ms bucket, p95 in the 50 s bucket
    s = s.with_page(records=100, nbytes=0, latencies_ms=lat, now_ms=NOW)
    assert s.percentile_ms(0.50) == 5
    assert s.percentile_ms(0.95) == 40_000  # bucket bound 50_000, clamped to the max seen
    assert s.percentile_ms(0.90) == 5
    big = s.with_page(records=1, nbytes=0, latencies_ms=[10**12, -50], now_ms=NOW)
    assert big.percentile_ms(1.0) == 10**12  # overflow bucket reports the max
    assert big.latency_counts[0] == 1  # a negative latency (fast author clock) counts as 0
    assert len(s.latency_counts) == len(LATENCY_BUCKETS_MS) + 1
    assert list(LATENCY_BUCKETS_MS) == sorted(LATENCY_BUCKETS_MS)


def _naive_bucket(latency_ms: int) -> int:
    lat = max(0, latency_ms)
    return next((i for i, b in enumerate(LATENCY_BUCKETS_MS) if lat <= b), len(LATENCY_BUCKETS_MS))


_latency = st.one_of(st.integers(-(10**6), 10**13), st.sampled_from([*LATENCY_BUCKETS_MS, 0, -1]))


@settings(max_examples=200)
@given(pages=st.lists(st.lists(_latency, max_size=40), max_size=5))
def test_latency_histogram_counts_each_latency_in_its_bucket(pages: list[list[int]]) -> None:
    # bucket i holds latencies in (bound[i-1], bound[i]]; a bound itself is in its bucket
    s = PairStats()
    expected = [0] * (len(LATENCY_BUCKETS_MS) + 1)
    for lats in pages:
        s = s.with_page(records=len(lats), nbytes=0, latencies_ms=lats, now_ms=NOW)
        for lat in lats:
            expected[_naive_bucket(lat)] += 1
    assert list(s.latency_counts) == expected
    assert s.latency_max_ms == max([0, *(x for lats in pages for x in lats)])


def test_errors_last_hour_is_bounded() -> None:
    s = PairStats()
    for i in range(1500):
        s = s.with_error(now_ms=NOW + i)
    assert len(s.error_times_ms) == 1000
    assert s.errors_total == 1500
    assert s.errors_last_hour(NOW + 1500) == 1000
    assert s.errors_last_hour(NOW + 3_600_000 + 2000) == 0


def test_snapshot_is_json_and_shows_backoff() -> None:
    s = PairStats().with_error(now_ms=NOW, backoff_s=1.5)
    snap = s.snapshot(NOW)
    assert json.loads(json.dumps(snap)) == snap
    assert snap["backoff_s"] == 1.5
    assert snap["errors_last_hour"] == 1
    assert snap["latency_p50_ms"] is None


@settings(max_examples=60, deadline=None)
@given(
    pages=st.lists(
        st.tuples(
            st.integers(0, 50),
            st.integers(0, 10**6),
            st.lists(st.integers(-(10**6), 10**10), max_size=20),
            st.integers(0, 10**7),
        ),
        max_size=15,
    ),
    errors=st.lists(st.integers(0, 10**8), max_size=20),
)
def test_stats_round_trip(pages: list[tuple[int, int, list[int], int]], errors: list[int]) -> None:
    s = PairStats()
    for n, nbytes, lats, dt in pages:
        s = s.with_page(records=n, nbytes=nbytes, latencies_ms=lats, now_ms=NOW + dt)
    for e in errors:
        s = s.with_error(now_ms=NOW + e, backoff_s=2.0)
    back = PairStats.from_dict(json.loads(json.dumps(s.to_dict())))
    assert back == s
    assert sum(back.latency_counts) == sum(len(p[2]) for p in pages)
