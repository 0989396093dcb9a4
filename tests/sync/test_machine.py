"""The pull machine, driven with real records, real feed pages and a simulated source.

The source here is the real page builder (``feed.build_page`` + ``page_to_wire``)
over an in-memory list of stored records, so the machine sees exactly what a
fedpeer node serves. No I/O: the machine is sans-I/O.
"""

from __future__ import annotations

import itertools
import random

import attrs
import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedpeer.errors import (
    AuthRequired,
    ConsentDenied,
    CursorFromFuture,
    CursorInvalid,
    CursorReset,
    DidMismatch,
    FedpeerError,
    InternalError,
    InvalidRequest,
    PairStateInvalid,
    PeerUnreachable,
    QuotaExceeded,
    RateLimited,
    ScopeForbidden,
    StoreError,
    TlsPinMismatch,
    TokenExpired,
    TokenInvalid,
    error_from_code,
)
from fedpeer.identity.canonical import cid_for_dagcbor, dagcbor_decode, dagcbor_encode
from fedpeer.identity.keys import SigningKey
from fedpeer.store.base import ChangesPage, StoredRecord
from fedpeer.sync._machine import (
    MACHINE_TRANSITIONS,
    CursorWasReset,
    MachineState,
    PageAccepted,
    PageRejected,
    PageRequest,
    PairChanged,
    PairStopped,
    PullMachine,
    PullMachineError,
    RetryScheduled,
)
from fedpeer.sync.backoff import DEFAULT_BACKOFF
from fedpeer.sync.feed import Cursor, build_page, page_to_wire
from fedpeer.sync.pairs import Pair, PairFilter, PairState, make_pair
from fedpeer.sync.records import SignedRecord, build_record, record_to_wire

NOW = 1_800_000_000_000
AUTHOR = SigningKey.from_seed(b"\x0a" * 32)
OTHER_AUTHOR = SigningKey.from_seed(b"\x0b" * 32)
LOCAL = SigningKey.from_seed(b"\x01" * 32).did
PEER = SigningKey.from_seed(b"\x02" * 32).did
SECRET = "fpk_super-secret-bearer"
EPOCH_A = "a1" * 16
EPOCH_B = "b2" * 16
M = MachineState


def _rec(
    i: int, *, key: SigningKey = AUTHOR, ns: str = "notes", thread: str = "t1"
) -> SignedRecord:
    return build_record(
        key, namespace=ns, thread=thread, kind="note", body={"n": i}, ts=NOW - 1000, now_ms=NOW
    )


RECORDS = [_rec(i) for i in range(40)]


def _stored(seq: int, r: SignedRecord) -> StoredRecord:
    rec = r.record
    return StoredRecord(
        seq=seq,
        cid=r.cid.raw,
        data=r.data,
        sig=r.sig,
        author=rec.author,
        namespace=rec.namespace,
        thread=rec.thread,
        kind=rec.kind,
        ts=rec.ts,
    )


@attrs.define
class Source:
    """A source node's feed: records at seq 1..n, served by the real page builder.

    ``hidden`` seqs are in the log but not visible to us (consent), so pages move
    the cursor past them without records (the filtered-feed-stall case).
    """

    records: list[SignedRecord]
    epoch: str = EPOCH_A
    hidden: frozenset[int] = frozenset()
    sizes: list[int] = attrs.Factory(list)  # page sizes to serve, in seqs scanned

    def page(self, req: PageRequest) -> dict[str, object]:
        since = 0 if req.since is None else Cursor.decode(req.since).seq
        head = len(self.records)
        size = self.sizes.pop(0) if self.sizes else req.limit
        size = max(1, min(size, req.limit))
        stop = min(head, since + size)
        stored = tuple(
            _stored(seq, self.records[seq - 1])
            for seq in range(since + 1, stop + 1)
            if seq not in self.hidden
        )
        last = max(stop, since)
        last_cid = self.records[last - 1].cid.raw if 0 < last <= head else None
        page = build_page(
            ChangesPage(stored, last, head, last_cid), epoch=self.epoch, key=b"k" * 16
        )
        return page_to_wire(page)


def _pair(**kw: object) -> Pair:
    args: dict[str, object] = {
        "local_did": LOCAL,
        "peer_did": PEER,
        "peer_url": "http://127.0.0.1:9",
        "credential": SECRET,
        "filter": PairFilter(namespace="notes"),
        "now_ms": NOW,
    }
    args.update(kw)
    return make_pair(**args)  # type: ignore[arg-type]


def _machine(pair: Pair | None = None, **kw: object) -> PullMachine:
    return PullMachine(pair or _pair(), rng=random.Random(1), **kw)  # type: ignore[arg-type]


def _state(m: PullMachine) -> MachineState:
    """The machine state (a call, so mypy does not narrow it across method calls)."""
    return m.state


def _wire_page(items: list[dict[str, object]], cursor: str, has_more: bool) -> dict[str, object]:
    return {"records": items, "next_cursor": cursor, "has_more": has_more}


def _pull_one(m: PullMachine, src: Source) -> PageAccepted | PageRejected:
    req = m.next_request()
    assert req is not None
    return m.receive_page(src.page(req), now_ms=NOW)


def _commit_one(m: PullMachine, src: Source) -> PageAccepted:
    ev = _pull_one(m, src)
    assert isinstance(ev, PageAccepted), ev
    assert m.commit_done(now_ms=NOW) is None
    return ev


# --- happy path ----------------------------------------------------------------------


def test_pages_until_caught_up_then_longpoll() -> None:
    src = Source(RECORDS[:25])
    m = _machine(page_limit=10)
    stored: list[bytes] = []
    sinces: list[str | None] = []
    for _ in range(10):
        req = m.next_request()
        assert req is not None
        sinces.append(req.since)
        assert req.feed == "normal"
        assert req.limit == 10
        assert req.namespace == "notes"
        # through real DAG-CBOR bytes, as the driver gets them
        body = dagcbor_decode(dagcbor_encode(src.page(req)))
        ev = m.receive_page(body, now_ms=NOW)
        assert isinstance(ev, PageAccepted)
        assert m.cursor == req.since  # not advanced before the commit
        assert ev.pair.cursor == ev.cursor
        stored.extend(r.cid for r in ev.new_records)
        assert m.commit_done(now_ms=NOW) is None
        assert m.cursor == ev.cursor
        if ev.caught_up:
            break
    assert stored == [r.cid.raw for r in RECORDS[:25]]
    assert len(sinces) == 3
    assert sinces[0] is None
    assert m.pair.state is PairState.CAUGHT_UP
    assert Cursor.decode(m.cursor or "").seq == 25
    st_ = m.pair.stats
    assert (st_.records, st_.pages) == (25, 3)
    assert st_.bytes == sum(len(r.data) for r in RECORDS[:25])
    assert st_.percentile_ms(0.5) == 1000  # ts = NOW - 1000
    req = m.next_request()
    assert req is not None
    assert req.feed == "longpoll"
    assert req.since == m.cursor
    assert req.params() == {
        "limit": "10",
        "feed": "longpoll",
        "since": m.cursor,
        "namespace": "notes",
    }
    # new records arrive on the longpoll: stored, still caught up
    src.records = RECORDS[:27]
    ev = m.receive_page(src.page(req), now_ms=NOW)
    assert isinstance(ev, PageAccepted)
    assert len(ev.records) == 2
    assert ev.caught_up
    assert ev.pair.state is PairState.CAUGHT_UP
    m.commit_done()
    # a longpoll that times out empty: same cursor, nothing stored, still caught up
    req = m.next_request()
    assert req is not None
    assert req.feed == "longpoll"
    ev = m.receive_page(src.page(req), now_ms=NOW)
    assert isinstance(ev, PageAccepted)
    assert ev.records == ()
    assert ev.cursor == req.since
    m.commit_done()
    assert m.pair.state is PairState.CAUGHT_UP


def test_empty_pages_that_move_the_cursor_are_progress() -> None:
    # nothing visible in the first 30 seqs (consent / filter): the cursor still moves
    src = Source(RECORDS[:35], hidden=frozenset(range(1, 31)))
    m = _machine(page_limit=10)
    got: list[SignedRecord] = []
    for _ in range(10):
        ev = _commit_one(m, src)
        got.extend(ev.records)
        if ev.caught_up:
            break
    assert [r.cid for r in got] == [r.cid for r in RECORDS[30:35]]
    assert Cursor.decode(m.cursor or "").seq == 35


def test_filter_and_thread_go_into_the_request() -> None:
    m = _machine(_pair(filter=PairFilter(namespace="app", thread="th")))
    req = m.next_request()
    assert req is not None
    assert req.params() == {"limit": "1000", "feed": "normal", "namespace": "app", "thread": "th"}


# --- bad records --------------------------------------------------------------------------


def _tampered_sig(r: SignedRecord) -> dict[str, object]:
    w = record_to_wire(r)
    sig = bytearray(r.sig)
    sig[5] ^= 0x01
    w["sig"] = bytes(sig)
    return w


def _non_canonical(r: SignedRecord) -> dict[str, object]:
    # the same map with its keys in non-canonical order, correctly hashed and signed:
    # only canonicality is wrong
    m = r.record.to_map()
    data = cbor2.dumps(dict(reversed(list(m.items()))))
    assert data != r.data
    cid = cid_for_dagcbor(data)
    return {"cid": cid, "data": data, "sig": AUTHOR.sign(cid.raw)}


def _from_future(r: SignedRecord) -> dict[str, object]:
    later = NOW + 3_600_000
    fut = build_record(
        AUTHOR, namespace="notes", thread="t1", kind="note", body=1, ts=later, now_ms=later
    )
    return record_to_wire(fut)


def _wrong_cid(r: SignedRecord) -> dict[str, object]:
    w = record_to_wire(r)
    w["cid"] = RECORDS[-1].cid
    return w


def _not_a_map(r: SignedRecord) -> object:
    return [r.data, r.sig]


@pytest.mark.parametrize(
    ("make_bad", "code"),
    [
        (_tampered_sig, "BAD_SIGNATURE"),
        (_non_canonical, "NON_CANONICAL"),
        (_from_future, "RECORD_FROM_FUTURE"),
        (_wrong_cid, "RECORD_INVALID"),
        (_not_a_map, "MALFORMED"),
    ],
)
def test_one_bad_record_rejects_the_whole_page(make_bad: object, code: str) -> None:
    src = Source(RECORDS[:20])
    m = _machine(page_limit=5)
    first = _commit_one(m, src)
    before = m.cursor
    assert before == first.cursor
    req = m.next_request()
    assert req is not None
    assert req.since == before
    page = src.page(req)
    items = page["records"]
    assert isinstance(items, list)
    items[3] = make_bad(RECORDS[8])  # type: ignore[operator]
    ev = m.receive_page(page, now_ms=NOW)
    assert isinstance(ev, PageRejected)
    assert ev.code == code
    assert "record 3" in ev.error.message
    assert ev.pair.state is PairState.FAILING
    assert ev.pair.cursor == before == m.cursor  # nothing moved
    assert ev.pair.last_error is not None
    assert ev.pair.last_error.code == code
    assert ev.pair.retries == 1
    assert ev.pair.stats.records == 5  # the rejected page's good records are not counted
    assert _state(m) is M.BACKING_OFF
    assert m.next_request() is None
    low, high = DEFAULT_BACKOFF.bounds(0)
    assert ev.delay_s == m.retry_delay_s
    assert low <= ev.delay_s <= high
    assert ev.pair.stats.backoff_s == pytest.approx(ev.delay_s, abs=1e-3)
    m.backoff_elapsed()
    again = m.next_request()
    assert again is not None
    assert again.since == before
    # the source fixed it: the page goes through, errors clear
    ok = m.receive_page(src.page(again), now_ms=NOW)
    assert isinstance(ok, PageAccepted)
    assert ok.pair.state is PairState.RUNNING
    assert ok.pair.retries == 0
    assert ok.pair.last_error is None


def test_consecutive_rejections_back_off_longer() -> None:
    src = Source(RECORDS[:3])
    m = _machine()
    delays = []
    for n in range(12):
        req = m.next_request()
        assert req is not None
        page = src.page(req)
        page["records"][0] = _tampered_sig(RECORDS[0])  # type: ignore[index]
        ev = m.receive_page(page, now_ms=NOW)
        assert isinstance(ev, PageRejected)
        low, high = DEFAULT_BACKOFF.bounds(n)
        assert low <= ev.delay_s <= high
        assert ev.pair.retries == n + 1
        delays.append(ev.delay_s)
        m.backoff_elapsed()
    assert delays[-1] >= 150
    assert max(delays) <= 300
    assert m.pair.stats.errors_last_hour(NOW) == 12


# --- wrong cursors and broken pages ----------------------------------------------------


def _after_first_page() -> tuple[PullMachine, Source, str]:
    src = Source(RECORDS[:20])
    m = _machine(page_limit=5)
    _commit_one(m, src)
    assert m.cursor is not None
    return m, src, m.cursor


def _assert_page_invalid(m: PullMachine, page: object, before: str | None, match: str) -> None:
    ev = m.receive_page(page, now_ms=NOW)
    assert isinstance(ev, PageRejected), ev
    assert ev.code == "PAGE_INVALID"
    assert match in ev.error.message
    assert ev.pair.cursor == before == m.cursor
    assert ev.pair.state is PairState.FAILING
    assert _state(m) is M.BACKING_OFF


@pytest.mark.parametrize(
    ("cursor", "match"),
    [
        ("garbage", "not a valid cursor"),
        (Cursor(EPOCH_A, 5).encode() + "A", "not a valid cursor"),
        (Cursor(EPOCH_B, 10).encode(), "another store epoch"),
        (Cursor(EPOCH_A, 4).encode(), "backwards"),
    ],
)
def test_wrong_next_cursor_is_page_invalid(cursor: str, match: str) -> None:
    m, src, before = _after_first_page()
    req = m.next_request()
    assert req is not None
    page = src.page(req)
    page["next_cursor"] = cursor
    _assert_page_invalid(m, page, before, match)


def test_cursor_that_does_not_move_with_records_or_has_more_is_page_invalid() -> None:
    m, src, before = _after_first_page()
    req = m.next_request()
    assert req is not None
    page = src.page(req)
    page["next_cursor"] = before
    _assert_page_invalid(m, page, before, "did not move")
    m.backoff_elapsed()
    assert m.next_request() is not None
    _assert_page_invalid(m, _wire_page([], before, True), before, "has_more")


@pytest.mark.parametrize(
    ("page", "match"),
    [
        ("not a page", "map"),
        ({"records": [], "next_cursor": Cursor(EPOCH_A, 9).encode()}, "keys"),
        ({"records": {}, "next_cursor": Cursor(EPOCH_A, 9).encode(), "has_more": False}, "list"),
        ({"records": [], "next_cursor": Cursor(EPOCH_A, 9).encode(), "has_more": 0}, "boolean"),
    ],
)
def test_badly_shaped_page_is_page_invalid(page: object, match: str) -> None:
    m, _src, before = _after_first_page()
    m.next_request()
    _assert_page_invalid(m, page, before, match)


def test_too_many_records_duplicates_and_out_of_filter_are_page_invalid() -> None:
    m, _src, before = _after_first_page()
    nxt = Cursor(EPOCH_A, 11).encode()
    m.next_request()
    six = [record_to_wire(r) for r in RECORDS[5:11]]
    _assert_page_invalid(m, _wire_page(six, nxt, True), before, "at most 5")
    m.backoff_elapsed()
    m.next_request()
    dup = [record_to_wire(RECORDS[5]), record_to_wire(RECORDS[5])]
    _assert_page_invalid(m, _wire_page(dup, nxt, True), before, "twice")
    m.backoff_elapsed()
    m.next_request()
    outside = [record_to_wire(_rec(99, ns="other"))]
    _assert_page_invalid(m, _wire_page(outside, nxt, True), before, "outside the pair's filter")


def test_first_page_may_have_any_epoch() -> None:
    m = _machine()
    req = m.next_request()
    assert req is not None
    assert req.since is None
    ev = m.receive_page(Source(RECORDS[:2], epoch=EPOCH_B).page(req), now_ms=NOW)
    assert isinstance(ev, PageAccepted)


# --- commits -------------------------------------------------------------------------------


def test_commit_failure_leaves_the_cursor_and_refetches() -> None:
    m, src, before = _after_first_page()
    ev = _pull_one(m, src)
    assert isinstance(ev, PageAccepted)
    with pytest.raises(PullMachineError):
        m.next_request()  # must finish the commit first
    out = m.commit_failed(OSError("disk full"), now_ms=NOW)
    assert isinstance(out, RetryScheduled)
    assert out.code == "STORE_ERROR"
    assert "disk full" in out.error.message
    assert m.cursor == before
    assert out.pair.cursor == before
    assert out.pair.state is PairState.FAILING
    assert _state(m) is M.BACKING_OFF
    m.backoff_elapsed()
    req = m.next_request()
    assert req is not None
    assert req.since == before
    again = m.receive_page(src.page(req), now_ms=NOW)
    assert isinstance(again, PageAccepted)
    assert [r.cid for r in again.records] == [r.cid for r in ev.records]
    m.commit_done()
    assert m.cursor == again.cursor != before
    # a store error (a FedpeerError) is kept as it is
    ev = _pull_one(m, src)
    out = m.commit_failed(StoreError("locked"), now_ms=NOW)
    assert isinstance(out, RetryScheduled)
    assert out.code == "STORE_ERROR"


def test_a_quota_refusal_stops_the_pair_where_a_store_error_retries() -> None:
    """QUOTA_EXCEEDED from the commit (the pair may store no more) stops the pair:
    retrying would fail again. The cursor stays; a resume pulls the same page."""
    m, src, before = _after_first_page()
    ev = _pull_one(m, src)
    assert isinstance(ev, PageAccepted)
    out = m.commit_failed(QuotaExceeded("no more"), now_ms=NOW)
    assert isinstance(out, PairStopped)
    assert out.pair.state is PairState.STOPPED
    assert out.pair.last_error is not None
    assert out.pair.last_error.code == "QUOTA_EXCEEDED"
    assert out.pair.cursor == before
    assert _state(m) is M.STOPPED
    assert m.retry_delay_s is None
    m.resume(now_ms=NOW)
    req = m.next_request()
    assert req is not None
    assert req.since == before


# --- errors from the request ----------------------------------------------------------


def _request_error(m: PullMachine, err: FedpeerError, **kw: object) -> object:
    assert m.next_request() is not None
    return m.receive_error(err, now_ms=NOW, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("err_cls", [CursorReset, CursorFromFuture, CursorInvalid])
def test_cursor_reset_restarts_a_full_pull(err_cls: type[FedpeerError]) -> None:
    m, _src, before = _after_first_page()
    ev = _request_error(m, err_cls("wiped"))
    assert isinstance(ev, CursorWasReset)
    assert ev.previous_cursor == before
    assert ev.error.code == err_cls.code
    assert ev.pair.cursor is None
    assert m.cursor is None
    assert ev.pair.state is PairState.RUNNING
    assert _state(m) is M.IDLE
    req = m.next_request()
    assert req is not None
    assert req.since is None
    assert req.feed == "normal"
    # the replaced store has another epoch; everything comes again (the store dedupes)
    new_src = Source(RECORDS[:8], epoch=EPOCH_B)
    ev2 = m.receive_page(new_src.page(req), now_ms=NOW)
    assert isinstance(ev2, PageAccepted)
    assert len(ev2.records) == 5
    m.commit_done()
    assert Cursor.decode(m.cursor or "").epoch == EPOCH_B


def test_a_source_that_keeps_resetting_our_cursor_is_backed_off() -> None:
    """Found by a read-only audit: a source answering one good page, then
    CURSOR_RESET for the cursor it just gave, made the puller loop without
    pause (1,032 requests and as many audit rows in 5 s). A reset within
    _RESET_WINDOW_MS of the last one now drops the cursor *and* backs off,
    longer each time; a reset long after the last is a plain restart again."""
    from fedpeer.sync._machine import _RESET_WINDOW_MS

    src = Source(RECORDS[:20])
    m = _machine(page_limit=5)
    now = NOW
    delays: list[float] = []
    for i in range(8):
        req = m.next_request()
        assert req is not None
        assert req.since is None  # every cycle starts from scratch
        assert isinstance(m.receive_page(src.page(req), now_ms=now), PageAccepted)
        m.commit_done(now_ms=now)
        assert m.next_request() is not None
        ev = m.receive_error(CursorReset("forgot it again"), now_ms=now + 10)
        if i == 0:
            assert isinstance(ev, CursorWasReset)  # the first: a plain restart
        else:
            assert isinstance(ev, RetryScheduled), ev
            assert ev.pair.cursor is None
            assert ev.code == "CURSOR_RESET"
            delays.append(ev.delay_s)
            assert _state(m) is M.BACKING_OFF
            m.backoff_elapsed()
        now += 1_000
    assert delays[-1] >= 30  # 1 s base doubling: the streak backs off for real
    # equal jitter in [ceiling / 2, ceiling] with a doubling ceiling: never shorter
    assert all(b >= a for a, b in itertools.pairwise(delays)), delays
    # long after the last reset, a reset is a plain restart again
    req = m.next_request()
    assert req is not None
    assert isinstance(m.receive_page(src.page(req), now_ms=now), PageAccepted)
    m.commit_done(now_ms=now)
    assert m.next_request() is not None
    later = m.receive_error(CursorReset("restored"), now_ms=now + _RESET_WINDOW_MS + 1)
    assert isinstance(later, CursorWasReset)


def test_cursor_reset_without_a_cursor_is_a_failure() -> None:
    m = _machine()
    ev = _request_error(m, CursorReset("again"))
    assert isinstance(ev, RetryScheduled)
    assert ev.code == "CURSOR_RESET"
    assert _state(m) is M.BACKING_OFF


@pytest.mark.parametrize(
    ("err", "hint"),
    [
        (AuthRequired("send a token"), "Get a new token"),
        (TokenInvalid("revoked"), "Get a new token"),
        (TokenExpired("old"), "expired"),
        (ScopeForbidden("no scope"), "sync:read"),
        (ConsentDenied("no grant"), "grant"),
        (error_from_code("SOME_NEW_AUTH_CODE", "newer server", 401), "Get a new token"),
        (error_from_code("SOME_NEW_DENIAL", "newer server", 403), "Get a new token"),
        # another node at the peer's address (issue 10 #3, protocol.md §6.6, §11.1)
        (DidMismatch("signed by another DID"), "did not prove"),
        (TlsPinMismatch("another certificate"), "credential was not sent"),
    ],
)
def test_401_403_stop_the_pair_naming_the_credential(err: FedpeerError, hint: str) -> None:
    m, _src, before = _after_first_page()
    ev = _request_error(m, err)
    assert isinstance(ev, PairStopped)
    p = ev.pair
    assert p.state is PairState.STOPPED
    assert _state(m) is M.STOPPED
    assert p.cursor == before
    assert p.last_error is not None
    assert p.last_error.code == err.code
    msg = p.last_error.message
    assert p.id in msg or LOCAL in msg
    assert hint in msg
    assert "resume" in msg
    assert PEER in msg
    assert SECRET not in msg
    assert m.next_request() is None
    with pytest.raises(PairStateInvalid, match="credential"):
        m.kick()
    changed = m.set_credential("fpk_new-token")
    assert changed is not None
    assert changed.pair.state is PairState.STOPPED
    resumed = m.resume(now_ms=NOW)
    assert resumed is not None
    assert resumed.pair.state is PairState.RUNNING
    req = m.next_request()
    assert req is not None
    assert req.since == before


def test_401_without_a_credential_says_one_is_needed() -> None:
    m = _machine(_pair(credential=None))
    ev = _request_error(m, AuthRequired())
    assert isinstance(ev, PairStopped)
    assert ev.pair.last_error is not None
    assert "has no credential" in ev.pair.last_error.message


def test_429_honours_retry_after() -> None:
    m = _machine()
    ev = _request_error(m, RateLimited("slow down", retry_after=120))
    assert isinstance(ev, RetryScheduled)
    assert ev.delay_s == 120 == m.retry_delay_s
    assert ev.code == "RATE_LIMITED"
    assert ev.pair.state is PairState.FAILING
    m.backoff_elapsed()
    ev = _request_error(m, RateLimited("slow down"), retry_after=45.5)
    assert isinstance(ev, RetryScheduled)
    assert ev.delay_s == 45.5
    m.backoff_elapsed()
    ev = _request_error(m, RateLimited("no header"))
    assert isinstance(ev, RetryScheduled)
    assert 2 <= ev.delay_s <= 4


@pytest.mark.parametrize(
    "err",
    [
        PeerUnreachable("connection refused"),
        InternalError("boom"),
        error_from_code("BAD_GATEWAY_THING", "proxy", 502),
        InvalidRequest("older server does not know feed=longpoll"),
    ],
)
def test_network_errors_and_other_statuses_back_off(err: FedpeerError) -> None:
    m, _src, before = _after_first_page()
    ev = _request_error(m, err)
    assert isinstance(ev, RetryScheduled)
    assert ev.pair.state is PairState.FAILING
    assert ev.pair.cursor == before
    assert 0.5 <= ev.delay_s <= 1
    m.backoff_elapsed()
    req = m.next_request()
    assert req is not None
    assert req.since == before


# --- author allow-list ----------------------------------------------------------------


def test_allowlist_rejects_other_authors_with_record_invalid() -> None:
    m = _machine(_pair(author_allowlist=[AUTHOR.did]))
    src = Source([*RECORDS[:3], _rec(0, key=OTHER_AUTHOR)])
    ev = _pull_one(m, src)
    assert isinstance(ev, PageRejected)
    assert ev.code == "RECORD_INVALID"
    assert OTHER_AUTHOR.did in ev.error.message
    assert "allow-list" in ev.error.message
    assert m.cursor is None
    ok = _machine(_pair(author_allowlist=[AUTHOR.did, OTHER_AUTHOR.did]))
    assert isinstance(_pull_one(ok, src), PageAccepted)


# --- user actions ---------------------------------------------------------------------


def test_pause_abandons_the_request_and_resume_restarts() -> None:
    m, src, before = _after_first_page()
    req = m.next_request()
    assert req is not None
    ch = m.pause(now_ms=NOW)
    assert isinstance(ch, PairChanged)
    assert ch.pair.state is PairState.PAUSED
    assert _state(m) is M.PAUSED
    assert m.next_request() is None
    with pytest.raises(PullMachineError):
        m.receive_page(src.page(req), now_ms=NOW)  # the abandoned answer is refused
    with pytest.raises(PairStateInvalid):
        m.pause()
    ch = m.resume()
    assert ch is not None
    assert ch.pair.state is PairState.RUNNING
    assert _state(m) is M.IDLE
    nxt = m.next_request()
    assert nxt is not None
    assert nxt.since == before


def test_pause_during_commit_is_deferred_and_keeps_the_new_cursor() -> None:
    m, src, _before = _after_first_page()
    ev = _pull_one(m, src)
    assert isinstance(ev, PageAccepted)
    assert m.pause(now_ms=NOW) is None  # deferred
    with pytest.raises(PairStateInvalid, match="already paused"):
        m.pause()  # checked against the state the deferred actions lead to
    assert _state(m) is M.AWAITING_COMMIT
    assert m.pair.state is PairState.RUNNING
    changed = m.commit_done(now_ms=NOW)
    assert isinstance(changed, PairChanged)
    assert changed.actions == ("pause",)
    assert changed.pair.state is PairState.PAUSED
    assert changed.pair.cursor == ev.cursor  # the committed page's cursor
    assert _state(m) is M.PAUSED


def test_delete_during_a_failed_commit_wins() -> None:
    m, src, before = _after_first_page()
    _pull_one(m, src)
    assert m.delete() is None
    out = m.commit_failed(StoreError("gone"), now_ms=NOW)
    assert isinstance(out, PairChanged)
    assert out.pair.state is PairState.DELETED
    assert out.pair.cursor == before
    assert _state(m) is M.DELETED
    assert m.next_request() is None
    for action in (m.pause, m.resume, m.kick, m.delete):
        with pytest.raises(PairStateInvalid):
            action()
    with pytest.raises(PairStateInvalid):
        m.set_credential("x")


def test_kick_during_a_failed_commit_retries_at_once() -> None:
    m, src, before = _after_first_page()
    _pull_one(m, src)
    assert m.kick() is None
    out = m.commit_failed(StoreError("busy"), now_ms=NOW)
    assert isinstance(out, PairChanged)
    assert out.actions == ("kick",)
    assert out.pair.state is PairState.RUNNING
    assert out.pair.retries == 0
    assert _state(m) is M.IDLE
    req = m.next_request()
    assert req is not None
    assert req.since == before


def test_kick_cuts_the_backoff_and_leaves_longpoll() -> None:
    m = _machine()
    _request_error(m, PeerUnreachable())
    assert _state(m) is M.BACKING_OFF
    assert m.pair.retries == 1
    ch = m.kick()
    assert ch is not None
    assert ch.pair.retries == 0
    assert ch.pair.stats.backoff_s is None
    assert _state(m) is M.IDLE
    assert m.retry_delay_s is None
    src = Source(RECORDS[:3])
    _commit_one(m, src)
    assert m.pair.state is PairState.CAUGHT_UP
    req = m.next_request()
    assert req is not None
    assert req.feed == "longpoll"
    m.kick()  # abandons the longpoll
    req = m.next_request()
    assert req is not None
    assert req.feed == "normal"


def test_set_credential_during_commit_is_deferred() -> None:
    m, src, _ = _after_first_page()
    _pull_one(m, src)
    with pytest.raises(InvalidRequest):
        m.set_credential("bad token")
    assert m.set_credential("fpk_rotated") is None
    changed = m.commit_done()
    assert changed is not None
    assert changed.pair.credential == "fpk_rotated"
    assert _state(m) is M.IDLE


# --- wrong-state calls ------------------------------------------------------------------


def _in_state(state: MachineState) -> PullMachine:
    m, src, _ = _after_first_page()
    if state is M.IDLE:
        return m
    if state is M.DELETED:
        m.delete()
        return m
    if state is M.PAUSED:
        m.pause()
        return m
    req = m.next_request()
    assert req is not None
    if state is M.AWAITING_PAGE:
        return m
    if state is M.AWAITING_COMMIT:
        m.receive_page(src.page(req), now_ms=NOW)
    elif state is M.BACKING_OFF:
        m.receive_error(PeerUnreachable(), now_ms=NOW)
    elif state is M.STOPPED:
        m.receive_error(TokenInvalid(), now_ms=NOW)
    assert m.state is state
    return m


_DRIVER_CALLS = {
    "receive_page": lambda m: m.receive_page({}, now_ms=NOW),
    "receive_error": lambda m: m.receive_error(PeerUnreachable(), now_ms=NOW),
    "commit_done": lambda m: m.commit_done(),
    "commit_failed": lambda m: m.commit_failed(StoreError()),
    "backoff_elapsed": lambda m: m.backoff_elapsed(),
    "next_request": lambda m: m.next_request(),
}
_ALLOWED = {
    M.IDLE: {"next_request"},
    M.AWAITING_PAGE: {"receive_page", "receive_error"},
    M.AWAITING_COMMIT: {"commit_done", "commit_failed"},
    M.BACKING_OFF: {"backoff_elapsed", "next_request"},  # next_request gives None
    M.PAUSED: {"next_request"},
    M.STOPPED: {"next_request"},
    M.DELETED: {"next_request"},
}


@pytest.mark.parametrize(
    ("state", "call"), list(itertools.product(MachineState, _DRIVER_CALLS)), ids=str
)
def test_driver_calls_in_the_wrong_state_raise(state: MachineState, call: str) -> None:
    m = _in_state(state)
    if call in _ALLOWED[state]:
        _DRIVER_CALLS[call](m)
    else:
        with pytest.raises(PullMachineError, match=state.name):
            _DRIVER_CALLS[call](m)
        assert m.state is state  # a refused call changes nothing


def test_every_machine_state_has_a_row() -> None:
    assert set(MACHINE_TRANSITIONS) == set(MachineState)
    assert MACHINE_TRANSITIONS[M.DELETED] == {}


# --- restart -----------------------------------------------------------------------------


def test_machine_resumes_from_the_stored_pair() -> None:
    m, _src, before = _after_first_page()
    row = m.pair.to_dict()
    m2 = PullMachine(Pair.from_dict(row), rng=random.Random(2), page_limit=5)
    req = m2.next_request()
    assert req is not None
    assert req.since == before
    # a failing pair restarts in backoff, with the delay of its retry count
    failing = attrs.evolve(m.pair, state=PairState.FAILING, retries=4)
    m3 = PullMachine(failing, rng=random.Random(3))
    assert _state(m3) is M.BACKING_OFF
    assert m3.next_request() is None
    low, high = DEFAULT_BACKOFF.bounds(3)
    assert m3.retry_delay_s is not None
    assert low <= m3.retry_delay_s <= high
    assert PullMachine(attrs.evolve(m.pair, state=PairState.PAUSED)).state is M.PAUSED
    assert PullMachine(attrs.evolve(m.pair, state=PairState.STOPPED)).state is M.STOPPED
    with pytest.raises(PullMachineError):
        PullMachine(attrs.evolve(m.pair, state=PairState.DELETED))
    with pytest.raises(ValueError, match="page_limit"):
        PullMachine(m.pair, page_limit=0)


# --- property: exactly once, whatever the paging and the failures ---------------------------


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(0, 40),
    sizes=st.lists(st.integers(1, 12), max_size=60),
    hidden=st.frozensets(st.integers(1, 40), max_size=15),
    faults=st.lists(st.sampled_from(["ok", "commit_fail", "net", "crash"]), max_size=80),
    page_limit=st.integers(1, 15),
)
def test_every_record_is_stored_exactly_once(
    n: int,
    sizes: list[int],
    hidden: frozenset[int],
    faults: list[str],
    page_limit: int,
) -> None:
    src = Source(RECORDS[:n], hidden=hidden, sizes=list(sizes))
    pair = _pair()
    stored_row = pair.to_dict()  # what the store holds for the pair
    stored: list[bytes] = []  # what the store holds in the record log (in commit order)
    m = PullMachine(pair, rng=random.Random(0), page_limit=page_limit)
    last_next_cursor = None
    faults = list(faults)
    for _ in range(500):
        if m.state is M.BACKING_OFF:
            m.backoff_elapsed()
        req = m.next_request()
        assert req is not None
        fault = faults.pop(0) if faults else "ok"
        if fault == "net":
            m.receive_error(PeerUnreachable(), now_ms=NOW)
            continue
        ev = m.receive_page(src.page(req), now_ms=NOW)
        assert isinstance(ev, PageAccepted), ev
        if fault == "commit_fail":
            m.commit_failed(StoreError("injected"), now_ms=NOW)
            continue
        # the transaction: records + pair row together (no dedupe here, so a record
        # committed twice would show up twice)
        stored.extend(r.cid for r in ev.new_records)
        stored_row = ev.pair.to_dict()
        last_next_cursor = ev.cursor
        if fault == "crash":
            # the node dies right after the commit: restart from the stored row
            m = PullMachine(Pair.from_dict(stored_row), rng=random.Random(0), page_limit=page_limit)
            continue
        m.commit_done(now_ms=NOW)
        if ev.caught_up and not faults:
            break
    else:
        pytest.fail("did not catch up")
    visible = [r.cid.raw for seq, r in enumerate(RECORDS[:n], 1) if seq not in hidden]
    assert stored == visible
    assert m.cursor == last_next_cursor == stored_row["cursor"]
    assert Cursor.decode(m.cursor or "").seq == n
    assert m.pair.state is PairState.CAUGHT_UP
