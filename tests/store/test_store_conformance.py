"""The Store conformance suite: every test runs against every backend in STORE_FACTORIES."""

from __future__ import annotations

import re
from pathlib import Path

import anyio
import anyio.abc
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedpeer.errors import InvalidRequest, Malformed, StoreClosed, StoreError
from fedpeer.identity.keys import SigningKey
from fedpeer.store import ChangeFilter, NewRecord, StateTx, Store, StoredRecord
from fedpeer.store.base import record_bytes
from fedpeer.sync.records import build_record
from tests.conftest import BOTH_BACKENDS

from .store_backends import STORE_FACTORIES, StoreFactory, rec


async def all_changes(
    store: Store, filt: ChangeFilter | None = None, page: int = 1000
) -> list[StoredRecord]:
    """Page through the whole feed (bounded), checking the page invariants on the way."""
    out: list[StoredRecord] = []
    since = 0
    head = await store.head_seq()
    for _ in range(head + 2):
        p = await store.changes(since, page, filt)
        assert p.last_seq >= since
        assert len(p.records) <= page
        for r in p.records:
            assert since < r.seq <= p.last_seq
        # the page names the record at last_seq (the feed's cursor fingerprint)
        assert p.last_cid == await store.cid_at(p.last_seq)
        assert (p.last_cid is None) == (p.last_seq == 0)
        out.extend(p.records)
        if p.last_seq >= p.head_seq:
            return out
        assert p.last_seq > since, "a page below head must make progress"
        since = p.last_seq
    raise AssertionError("paging did not reach head")


# --- record log ------------------------------------------------------------------


async def test_put_same_batch_twice_is_idempotent(store: Store) -> None:
    batch = [rec(i) for i in range(10)]
    first = await store.put(batch)
    assert first.duplicates == 0
    assert first.new == tuple((r.cid, i + 1) for i, r in enumerate(batch))
    again = await store.put(batch)
    assert again.new == ()
    assert again.duplicates == 10
    assert await store.count() == 10
    assert await store.head_seq() == 10


async def test_overlapping_batches_store_only_new_ones(store: Store) -> None:
    await store.put([rec(i) for i in range(10)])
    res = await store.put([rec(i) for i in range(5, 15)])
    assert res.new == tuple((rec(i).cid, i + 1) for i in range(10, 15))
    assert res.duplicates == 5
    assert await store.count() == 15
    assert [r.seq for r in await all_changes(store)] == list(range(1, 16))


async def test_duplicate_inside_one_batch_is_one_row(store: Store) -> None:
    res = await store.put([rec(1), rec(2), rec(1), rec(3), rec(2)])
    assert res.new == ((rec(1).cid, 1), (rec(2).cid, 2), (rec(3).cid, 3))
    assert res.duplicates == 2
    assert await store.count() == 3


async def test_empty_put(store: Store) -> None:
    res = await store.put([])
    assert res.new == ()
    assert res.duplicates == 0
    assert await store.head_seq() == 0


async def test_sequence_is_monotonic_and_contiguous_across_puts(store: Store) -> None:
    seqs: list[int] = []
    for b in range(5):
        res = await store.put([rec(f"{b}-{i}") for i in range(7)] + [rec("0-0")])
        seqs.extend(seq for _, seq in res.new)
    assert seqs == list(range(1, 36))
    assert await store.head_seq() == 35


async def test_get_returns_exact_fields(store: Store) -> None:
    r = NewRecord(
        cid=b"\x01q\x12 " + bytes(range(32)),
        data=b"\x00\xff" * 200,
        sig=bytes(range(64)),
        author="did:key:z6MkAuthor",
        namespace="näme/späce",
        thread="thread:1",
        kind="k.v",
        ts=1_234_567_890_123,
    )
    await store.put([rec("before"), r])
    got = await store.get(r.cid)
    assert got == StoredRecord(
        2, r.cid, r.data, r.sig, r.author, r.namespace, r.thread, r.kind, r.ts
    )
    assert await store.get(b"missing") is None


async def test_get_many_order_missing_and_repeats(store: Store) -> None:
    await store.put([rec(i) for i in range(5)])
    got = await store.get_many([rec(3).cid, b"nope", rec(1).cid, rec(3).cid, rec(0).cid])
    assert [g.cid for g in got] == [rec(3).cid, rec(1).cid, rec(0).cid]
    assert [g.seq for g in got] == [4, 2, 1]
    assert await store.get_many([]) == []
    many = await store.get_many([rec(i).cid for i in range(1200)])  # more than one SQL chunk
    assert len(many) == 5


async def test_get_takes_a_cid_its_text_or_its_bytes_alike(store: Store) -> None:
    """Every store answers the same for each form of a record id (a CID object
    once gave None on one store and STORE_ERROR on another)."""
    key = SigningKey.from_seed(b"\x09" * 32)
    signed = build_record(key, namespace="app", thread="t", kind="note", body=1, ts=1)
    await store.put([signed.to_new()])
    by_bytes = await store.get(signed.cid.raw)
    assert by_bytes is not None
    assert await store.get(signed.cid) == by_bytes
    assert await store.get(str(signed.cid)) == by_bytes
    assert await store.get_many([signed.cid, str(signed.cid), signed.cid.raw]) == [by_bytes]
    other = build_record(key, namespace="app", thread="t", kind="note", body=2, ts=1)
    assert await store.get(other.cid) is None
    assert await store.get(str(other.cid)) is None
    assert await store.get(b"not a cid at all") is None
    with pytest.raises(Malformed):
        await store.get("bafy-not-a-cid")
    with pytest.raises(Malformed):
        await store.get_many(["zzz"])
    with pytest.raises(InvalidRequest):
        await store.get(42)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest):
        await store.get(None)  # type: ignore[arg-type]


async def test_changes_pages_in_order(store: Store) -> None:
    await store.put([rec(i) for i in range(25)])
    p1 = await store.changes(0, 10)
    assert [r.seq for r in p1.records] == list(range(1, 11))
    assert (p1.last_seq, p1.head_seq) == (10, 25)
    p3 = await store.changes(20, 10)
    assert [r.seq for r in p3.records] == list(range(21, 26))
    assert (p3.last_seq, p3.head_seq) == (25, 25)
    beyond = await store.changes(40, 10)
    assert beyond.records == ()
    assert beyond.last_seq == 40


async def test_cid_at_names_the_record_at_each_seq(store: Store) -> None:
    assert await store.cid_at(0) is None
    assert await store.cid_at(1) is None
    batch = [rec(i) for i in range(5)]
    await store.put(batch)
    await store.put([rec(2), rec(9)])  # one duplicate, one new (seq 6)
    assert [await store.cid_at(s) for s in range(1, 7)] == [r.cid for r in batch] + [rec(9).cid]
    for seq in (0, -1, 7, 2**62):
        assert await store.cid_at(seq) is None
    # a scan that ends on a record it did not return (filtered out) still names it
    page = await store.changes(0, 10, ChangeFilter(thread="nope"))
    assert page.records == ()
    assert (page.last_seq, page.last_cid) == (6, rec(9).cid)
    page = await store.changes(2, 2)
    assert (page.last_seq, page.last_cid) == (4, batch[3].cid)


async def test_changes_rejects_bad_arguments(store: Store) -> None:
    with pytest.raises(InvalidRequest):
        await store.changes(0, 0)
    with pytest.raises(InvalidRequest):
        await store.changes(-1, 10)
    for bad in (0, -5):
        with pytest.raises(InvalidRequest):
            await store.changes(0, 10, max_bytes=bad)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    sizes=st.lists(st.integers(0, 3000), min_size=1, max_size=40),
    budget=st.integers(1, 8000),
    limit=st.integers(1, 50),
    thread=st.sampled_from([None, "t0"]),
)
async def test_changes_end_at_a_byte_budget(
    store_factory: StoreFactory,
    tmp_path_factory: pytest.TempPathFactory,
    sizes: list[int],
    budget: int,
    limit: int,
    thread: str | None,
) -> None:
    """``max_bytes``: a page ends with the record whose record_bytes reach the
    budget (the first always comes), ``last_seq`` is that record, and paging on
    from it yields every record once, in order, exactly as without a budget."""
    store = await store_factory(tmp_path_factory.mktemp("s"))
    try:
        await store.put(
            [rec(i, thread=f"t{i % 2}", data=b"\xa1" + b"x" * n) for i, n in enumerate(sizes)]
        )
        flt = ChangeFilter(thread=thread) if thread else None
        whole = await all_changes(store, flt)
        got: list[StoredRecord] = []
        since = 0
        for _ in range(len(sizes) + 2):
            page = await store.changes(since, limit, flt, max_bytes=budget)
            weights = [record_bytes(r) for r in page.records]
            assert len(page.records) <= limit
            if len(page.records) > 1:
                assert sum(weights[:-1]) < budget  # nothing past the record that reaches it
            if sum(weights) >= budget:  # cut there, or nothing matched after it anyway
                last = page.records[-1].seq
                assert page.last_seq == last or not [
                    r for r in whole if last < r.seq <= page.last_seq
                ]
            assert page.last_cid == await store.cid_at(page.last_seq)
            got.extend(page.records)
            if page.last_seq >= page.head_seq:
                break
            assert page.last_seq > since
            since = page.last_seq
        assert [r.seq for r in got] == [r.seq for r in whole]
    finally:
        await store.aclose()


TRICKY_NAMESPACES = [
    "a",
    "a_",
    "a_b",
    "axb",
    "a%b",
    "a%%",
    "aXb",
    "ab",
    "a\\b",
    "a\\_",
    "a[b]",
    "a*b",
    "A_b",
    "b",
    "ä_b",
    "a\U0010ffff",
    "a\U0010ffffz",
    "\ud7ff",
    "\ue000",
]


async def test_namespace_prefix_is_raw_and_wildcard_free(store: Store) -> None:
    await store.put([rec(f"n{i}", namespace=ns) for i, ns in enumerate(TRICKY_NAMESPACES)])
    prefixes = [*TRICKY_NAMESPACES, "a_%", "%", "_", "a\\", "a\U0010ffff", "\ud7ff", ""]
    for prefix in prefixes:
        got = await all_changes(store, ChangeFilter(namespace_prefix=prefix), page=3)
        expected = [ns for ns in TRICKY_NAMESPACES if ns.startswith(prefix)]
        assert [r.namespace for r in got] == expected, prefix
        threads = await store.threads(prefix)
        assert sorted(t.namespace for t in threads) == sorted(expected), prefix


async def test_thread_filter_and_both_filters(store: Store) -> None:
    rows = [rec(i, namespace=f"ns{i % 3}", thread=f"t{i % 4}") for i in range(60)]
    await store.put(rows)
    got = await all_changes(store, ChangeFilter(thread="t1"), page=4)
    assert [r.cid for r in got] == [r.cid for r in rows if r.thread == "t1"]
    got = await all_changes(store, ChangeFilter(namespace_prefix="ns2", thread="t3"), page=2)
    assert [r.cid for r in got] == [
        r.cid for r in rows if r.thread == "t3" and r.namespace == "ns2"
    ]
    got = await all_changes(store, ChangeFilter(thread="nobody"))
    assert got == []


async def test_count_follows_every_write_and_duplicates(store: Store) -> None:
    """count() is kept between writes (SQLite counts only the rows past the last
    count): it must match the rows after each put, duplicates included, also
    when writes race the count."""
    total = 0
    for batch in range(5):
        rows = [rec(f"c{batch}-{i}") for i in range(batch * 7 + 1)]
        await store.put(rows + rows[:2])  # two duplicates, not counted
        total += len(rows)
        assert await store.count() == total
        assert await store.count() == total  # again, from what was kept
    async with anyio.create_task_group() as tg:
        for batch in range(10):
            tg.start_soon(store.put, [rec(f"r{batch}-{i}") for i in range(3)])
            tg.start_soon(store.count)
    assert await store.count() == total + 30 == len(await all_changes(store))


async def test_exact_namespace_filter(store: Store) -> None:
    """``namespace_exact``: the namespace equals the prefix (a grant on one thread of
    one namespace); "ns1x" and "ns10" start with "ns1" but are other namespaces."""
    names = ["ns1", "ns1x", "ns10", "ns", ""]
    rows = [rec(i, namespace=names[i % 5], thread=f"t{i % 2}") for i in range(40)]
    await store.put(rows)
    for namespace in names:
        flt = ChangeFilter(namespace_prefix=namespace, thread="t1", namespace_exact=True)
        assert not flt.is_empty
        got = await all_changes(store, flt, page=3)
        want = [r.cid for r in rows if r.namespace == namespace and r.thread == "t1"]
        assert [r.cid for r in got] == want, namespace
        assert all(flt.matches(r.namespace, r.thread) for r in got)
    only = ChangeFilter(namespace_prefix="ns1", namespace_exact=True)
    got = await all_changes(store, only, page=4)
    assert [r.cid for r in got] == [r.cid for r in rows if r.namespace == "ns1"]


async def test_threads_by_thread_and_exact_namespace(store: Store) -> None:
    names = ["ns1", "ns1x", "ns10", "ns"]
    await store.put([rec(i, namespace=names[i % 4], thread=f"t{i % 3}") for i in range(48)])
    pairs = [(t.namespace, t.thread) for t in await store.threads()]
    got = await store.threads(thread="t1")
    assert [(t.namespace, t.thread) for t in got] == [p for p in pairs if p[1] == "t1"]
    got = await store.threads("ns1", thread="t2", namespace_exact=True)
    assert [(t.namespace, t.thread) for t in got] == [("ns1", "t2")]
    assert got[0].count == 4
    got = await store.threads("ns1", namespace_exact=True, after=("ns1", "t0"), limit=1)
    assert [(t.namespace, t.thread) for t in got] == [("ns1", "t1")]
    got = await store.threads("ns1", thread="t0")
    assert [t.namespace for t in got] == ["ns1", "ns10", "ns1x"]


async def test_cursor_advances_when_window_matches_nothing(
    store_factory: StoreFactory, tmp_path: Path
) -> None:
    store = await store_factory(tmp_path, scan_window=10)
    try:
        await store.put([rec(i, namespace="noise") for i in range(35)])
        await store.put([rec("hit", namespace="wanted")])
        since, calls = 0, 0
        seen: list[StoredRecord] = []
        while True:
            calls += 1
            assert calls < 20
            p = await store.changes(since, 5, ChangeFilter(namespace_prefix="want"))
            assert p.last_seq > since
            seen.extend(p.records)
            since = p.last_seq
            if since >= p.head_seq:
                break
        assert calls > 1, "the scan window should bound a filtered call"
        assert [r.cid for r in seen] == [rec("hit").cid]
        assert since == 36
    finally:
        await store.aclose()


_names = st.sampled_from(["a", "a_", "a_b", "a%", "ab", "b", "b/c", "%"])
_threads = st.sampled_from(["t1", "t2", "t_", "t%"])


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    backend=st.sampled_from(sorted(STORE_FACTORIES)),
    batches=st.lists(
        st.lists(st.tuples(st.integers(0, 40), _names, _threads), max_size=15), max_size=5
    ),
    page=st.integers(1, 7),
    window=st.integers(1, 9),
    prefix=st.none() | st.sampled_from(["", "a", "a_", "a%", "%", "b/", "z"]),
    thread=st.none() | _threads,
)
@pytest.mark.parametrize("loop", BOTH_BACKENDS)
def test_paging_yields_each_matching_record_once_in_order(
    tmp_path: Path,
    loop: str,
    backend: str,
    batches: list[list[tuple[int, str, str]]],
    page: int,
    window: int,
    prefix: str | None,
    thread: str | None,
) -> None:
    async def body() -> None:
        store = await STORE_FACTORIES[backend](tmp_path, scan_window=window)
        try:
            stored: dict[bytes, NewRecord] = {}
            order: list[bytes] = []
            for batch in batches:
                records = [rec(n, namespace=ns, thread=th) for n, ns, th in batch]
                await store.put(records)
                for r in records:
                    if r.cid not in stored:
                        stored[r.cid] = r
                        order.append(r.cid)
            everything = await all_changes(store, None, page)
            assert [r.cid for r in everything] == order
            assert [r.seq for r in everything] == list(range(1, len(order) + 1))
            filt = ChangeFilter(namespace_prefix=prefix, thread=thread)
            got = await all_changes(store, filt, page)
            assert [r.cid for r in got] == [
                c
                for c in order
                if stored[c].namespace.startswith(prefix or "")
                and (thread is None or stored[c].thread == thread)
            ]
        finally:
            await store.aclose()

    anyio.run(body, backend=loop)


async def test_threads_lists_counts_and_last_seq(store: Store) -> None:
    await store.put(
        [
            rec(1, namespace="chat", thread="x"),
            rec(2, namespace="chat", thread="y"),
            rec(3, namespace="chat", thread="x"),
            rec(4, namespace="docs", thread="x"),
            rec(5, namespace="chat", thread="x"),
        ]
    )
    infos = await store.threads()
    assert [(t.namespace, t.thread, t.count, t.last_seq) for t in infos] == [
        ("chat", "x", 3, 5),
        ("chat", "y", 1, 2),
        ("docs", "x", 1, 4),
    ]
    assert [t.namespace for t in await store.threads("do")] == ["docs"]
    assert await store.threads("zzz") == []


async def test_threads_pages_with_after_and_limit(store: Store) -> None:
    """``after`` and ``limit`` page the listing: the pages, in order, are the
    whole listing, each at most ``limit`` long, with or without a prefix."""
    pairs = [(ns, f"t{i}") for ns in ("a", "a_b", "ab", "b") for i in range(7)]
    await store.put([rec(n, namespace=ns, thread=th) for n, (ns, th) in enumerate(pairs)])
    for prefix in (None, "a"):
        whole = await store.threads(prefix)
        for limit in (1, 3, 7, 100):
            got: list[object] = []
            after = None
            for _ in range(len(whole) + 1):
                page = await store.threads(prefix, after=after, limit=limit)
                assert len(page) <= limit
                got += page
                if len(page) < limit:
                    break
                after = (page[-1].namespace, page[-1].thread)
            assert got == whole, (prefix, limit)
    with pytest.raises(InvalidRequest):
        await store.threads(limit=0)


# --- epoch -----------------------------------------------------------------------


async def test_cursor_key_is_16_secret_bytes_per_store(
    store_factory: StoreFactory, tmp_path: Path
) -> None:
    a = await store_factory(tmp_path)
    b = await store_factory(tmp_path)
    try:
        assert type(a.cursor_key) is bytes
        assert len(a.cursor_key) == 16
        assert a.cursor_key != b.cursor_key
    finally:
        await a.aclose()
        await b.aclose()


async def test_epoch_is_random_hex_per_store(store_factory: StoreFactory, tmp_path: Path) -> None:
    a = await store_factory(tmp_path)
    b = await store_factory(tmp_path)
    try:
        assert re.fullmatch(r"[0-9a-f]{32}", a.epoch)
        assert re.fullmatch(r"[0-9a-f]{32}", b.epoch)
        assert a.epoch != b.epoch
    finally:
        await a.aclose()
        await b.aclose()


# --- state area and transactions ------------------------------------------------


async def test_state_put_get_delete_list(store: Store) -> None:
    def write(tx: StateTx) -> str:
        tx.put("pairs", "p1", {"url": "http://x", "n": 1})
        tx.put("pairs", "p2", {"url": "http://y", "nested": {"a": [1, 2.5, None, True]}})
        tx.put("pairs", "q_1", {"v": "ü"})
        tx.put("grants", "p1", {"other": "table"})
        assert tx.get("pairs", "p1") == {"url": "http://x", "n": 1}
        tx.put("pairs", "p1", {"url": "http://z"})
        return "done"

    assert await store.transact(write) == "done"
    assert await store.get_state("pairs", "p1") == {"url": "http://z"}
    assert await store.get_state("pairs", "nope") is None
    assert await store.get_state("nope", "p1") is None
    assert [k for k, _ in await store.list_state("pairs")] == ["p1", "p2", "q_1"]
    assert [k for k, _ in await store.list_state("pairs", "p")] == ["p1", "p2"]
    assert [k for k, _ in await store.list_state("pairs", "_")] == []
    assert await store.list_state("grants") == [("p1", {"other": "table"})]

    def remove(tx: StateTx) -> tuple[bool, bool, list[str]]:
        return tx.delete("pairs", "p2"), tx.delete("pairs", "p2"), [k for k, _ in tx.list("pairs")]

    assert await store.transact(remove) == (True, False, ["p1", "q_1"])
    assert await store.get_state("pairs", "p2") is None


async def test_state_values_are_copied_in_and_out(store: Store) -> None:
    value: dict[str, object] = {"list": [1, 2], "tuple": (3, 4)}
    await store.transact(lambda tx: tx.put("t", "k", value))
    value["list"] = "changed"
    got = await store.get_state("t", "k")
    assert got == {"list": [1, 2], "tuple": [3, 4]}
    assert got is not None
    got["list"] = "mutated"
    assert await store.get_state("t", "k") == {"list": [1, 2], "tuple": [3, 4]}


async def test_non_json_value_is_refused_and_rolls_back(store: Store) -> None:
    def bad(tx: StateTx) -> None:
        tx.put("t", "ok", {"a": 1})
        tx.put("t", "bad", {"b": b"bytes"})

    with pytest.raises(StoreError):
        await store.transact(bad)
    with pytest.raises(StoreError):
        await store.transact(lambda tx: tx.put("t", "nan", {"x": float("nan")}))
    with pytest.raises(StoreError):
        await store.transact(lambda tx: tx.audit({"x": {1, 2}}))
    assert await store.list_state("t") == []
    assert await store.audit_log() == []


class Boom(Exception):
    pass


async def test_failed_transaction_rolls_back_state_records_and_audit(store: Store) -> None:
    await store.put([rec("keep")])
    await store.transact(lambda tx: tx.put("pairs", "p", {"cursor": 1}))

    def failing(tx: StateTx) -> None:
        tx.put("pairs", "p", {"cursor": 99})
        tx.put("pairs", "new", {"x": 1})
        tx.delete("pairs", "p")
        tx.put("pairs", "p", {"cursor": 100})
        res = tx.put_records([rec(i) for i in range(20)] + [rec("keep")])
        assert len(res.new) == 20
        assert res.duplicates == 1
        tx.audit({"event": "should vanish"})
        raise Boom("no")

    with pytest.raises(Boom):
        await store.transact(failing)
    assert await store.get_state("pairs", "p") == {"cursor": 1}
    assert await store.get_state("pairs", "new") is None
    assert await store.count() == 1
    assert await store.head_seq() == 1
    assert await store.get(rec(0).cid) is None
    assert await store.audit_log() == []
    assert [r.cid for r in await all_changes(store)] == [rec("keep").cid]
    assert [(t.namespace, t.thread, t.count, t.last_seq) for t in await store.threads()] == [
        ("app", "t", 1, 1)
    ]
    # the log goes on without a hole
    res = await store.put([rec("after")])
    assert res.new == ((rec("after").cid, 2),)


async def test_records_and_cursor_commit_together(store: Store) -> None:
    def pull(tx: StateTx) -> int:
        res = tx.put_records([rec(i) for i in range(5)])
        pair = tx.get("pairs", "peer") or {"cursor": 0}
        tx.put("pairs", "peer", {"cursor": int(str(pair["cursor"])) + len(res.new)})
        return len(res.new)

    assert await store.transact(pull) == 5
    assert await store.transact(pull) == 0
    assert await store.get_state("pairs", "peer") == {"cursor": 5}
    assert await store.count() == 5


async def test_tx_is_dead_after_transact(store: Store) -> None:
    kept: list[StateTx] = []
    await store.transact(kept.append)
    with pytest.raises(StoreError):
        kept[0].put("t", "k", {})
    with pytest.raises(StoreError):
        kept[0].put_records([rec(1)])
    assert await store.list_state("t") == []


async def test_async_function_is_refused(store: Store) -> None:
    async def wrong(tx: StateTx) -> None:
        tx.put("t", "k", {})  # pragma: no cover - never awaited

    with pytest.raises(StoreError):
        await store.transact(wrong)  # type: ignore[unused-coroutine]
    assert await store.get_state("t", "k") is None


async def test_audit_log_is_ordered_and_append_only(store: Store) -> None:
    def write(tx: StateTx) -> list[int]:
        return [tx.audit({"n": i}, ts_ms=1000 + i) for i in range(5)]

    ids = await store.transact(write)
    assert ids == sorted(ids)
    assert len(set(ids)) == 5
    more = await store.transact(lambda tx: tx.audit({"n": 5}))
    assert more > ids[-1]
    log = await store.audit_log()
    assert [e.event for e in log] == [{"n": i} for i in range(6)]
    assert [e.ts_ms for e in log[:5]] == [1000, 1001, 1002, 1003, 1004]
    assert log[5].ts_ms > 1_600_000_000_000
    page = await store.audit_log(since_id=ids[1], limit=2)
    assert [e.id for e in page] == ids[2:4]
    # reading gives copies; there is no API to change or remove entries
    log[0].event["n"] = "edited"
    assert (await store.audit_log(limit=1))[0].event == {"n": 0}
    for name in ("delete_audit", "update_audit", "clear_audit", "truncate"):
        assert not hasattr(store, name)


# --- concurrency and wake-ups ---------------------------------------------------


async def test_concurrent_writers(store: Store) -> None:
    tasks, batches, size = 20, 4, 10

    def bump(tx: StateTx) -> None:
        cur = tx.get("counters", "c") or {"n": 0}
        tx.put("counters", "c", {"n": int(str(cur["n"])) + 1})
        tx.audit({"bump": True})

    async def writer(t: int) -> None:
        for b in range(batches):
            # every batch shares two records with other tasks' batches
            mine = [rec(f"{t}-{b}-{i}") for i in range(size)]
            await store.put([*mine, rec(f"shared-{b}"), rec(f"shared-{(b + 1) % batches}")])
            await store.transact(bump)

    async with anyio.create_task_group() as nursery:
        for t in range(tasks):
            nursery.start_soon(writer, t)

    expected = tasks * batches * size + batches
    assert await store.count() == expected
    everything = await all_changes(store, page=97)
    assert [r.seq for r in everything] == list(range(1, expected + 1))
    assert len({r.cid for r in everything}) == expected
    assert await store.get_state("counters", "c") == {"n": tasks * batches}
    assert len(await store.audit_log(limit=1000)) == tasks * batches


async def test_wait_for_seq_returns_at_once_when_ahead(store: Store) -> None:
    await store.put([rec(1), rec(2)])
    with anyio.fail_after(5):
        assert await store.wait_for_seq(0) == 2
        assert await store.wait_for_seq(1) == 2


async def test_wait_for_seq_wakes_on_put_and_transact(store: Store) -> None:
    results: list[int] = []

    async def waiter(after: int) -> None:
        results.append(await store.wait_for_seq(after))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as nursery:
            for _ in range(3):
                nursery.start_soon(waiter, 0)
            await anyio.wait_all_tasks_blocked()
            assert results == []
            # a transaction without records does not wake anybody
            await store.transact(lambda tx: tx.put("t", "k", {}))
            await anyio.wait_all_tasks_blocked()
            assert results == []
            await store.put([rec(1)])
        assert results == [1, 1, 1]

        async with anyio.create_task_group() as nursery:
            nursery.start_soon(waiter, 1)
            await anyio.wait_all_tasks_blocked()
            await store.put([rec(1)])  # duplicate: nothing new
            await anyio.wait_all_tasks_blocked()
            assert results == [1, 1, 1]
            await store.transact(lambda tx: tx.put_records([rec(2), rec(3)]))
        assert results == [1, 1, 1, 3]


async def test_wait_for_seq_with_interest_wakes_only_on_matching_commits(store: Store) -> None:
    woken: dict[str, int] = {}

    async def waiter(name: str, interest: tuple[ChangeFilter, ...]) -> None:
        woken[name] = await store.wait_for_seq(0, interest)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as nursery:
            nursery.start_soon(waiter, "ns", (ChangeFilter(namespace_prefix="mine/"),))
            nursery.start_soon(waiter, "thread", (ChangeFilter(thread="t-mine"),))
            nursery.start_soon(waiter, "both", (ChangeFilter("other/", "t-x"),))
            nursery.start_soon(waiter, "either", (ChangeFilter("a/"), ChangeFilter("b/")))
            nursery.start_soon(waiter, "none", ())
            await anyio.wait_all_tasks_blocked()
            # commits none of them may see: nobody wakes
            await store.put([rec(1, namespace="app", thread="t-mine-not")])
            await store.put([rec(2, namespace="mine", thread="t")])  # "mine" lacks the "/"
            await store.put([rec(3, namespace="other/x", thread="t-y")])  # thread differs
            await store.put([rec(4, namespace="c/", thread="t-x")])
            await anyio.wait_all_tasks_blocked()
            assert woken == {}
            await store.put([rec(5, namespace="app", thread="t-mine")])
            await anyio.wait_all_tasks_blocked()
            assert woken == {"thread": 5}
            # one commit that touches two interests wakes both
            await store.put([rec(6, namespace="mine/x"), rec(7, namespace="other/q", thread="t-x")])
            await anyio.wait_all_tasks_blocked()
            assert woken == {"thread": 5, "ns": 7, "both": 7}
            await store.put([rec(8, namespace="b/deep/er")])
            await anyio.wait_all_tasks_blocked()
            assert woken == {"thread": 5, "ns": 7, "both": 7, "either": 8}
            assert "none" not in woken
            nursery.cancel_scope.cancel()


async def test_wait_for_seq_with_interest_returns_at_once_when_ahead(store: Store) -> None:
    await store.put([rec(1, namespace="app")])
    with anyio.fail_after(5):  # the caller rescans: a commit cannot slip in unseen
        assert await store.wait_for_seq(0, (ChangeFilter(namespace_prefix="zzz"),)) == 1
        assert await store.wait_for_seq(0, ()) == 1


async def test_wake_waiters_in_a_transaction_wakes_interested_waiters(store: Store) -> None:
    await store.put([rec(1)])
    woken: list[str] = []

    async def waiter(name: str, interest: tuple[ChangeFilter, ...] | None) -> None:
        await store.wait_for_seq(1, interest)
        woken.append(name)

    def grant_changed(tx: StateTx) -> None:
        tx.put("meta", "revision", {"value": 1})
        tx.wake_waiters()

    def rolled_back(tx: StateTx) -> None:
        tx.wake_waiters()
        raise ValueError("no")

    with anyio.fail_after(10):
        async with anyio.create_task_group() as nursery:
            nursery.start_soon(waiter, "narrow", (ChangeFilter(namespace_prefix="x/"),))
            nursery.start_soon(waiter, "nothing", ())
            nursery.start_soon(waiter, "any", None)
            await anyio.wait_all_tasks_blocked()
            with pytest.raises(ValueError, match="no"):
                await store.transact(rolled_back)  # rolled back: wakes nobody
            await anyio.wait_all_tasks_blocked()
            assert woken == []
            await store.transact(grant_changed)
            await anyio.wait_all_tasks_blocked()
            # waiters with an interest re-evaluate it; "any" waits for a record still
            assert sorted(woken) == ["narrow", "nothing"]
            await store.put([rec(2)])
        assert sorted(woken) == ["any", "narrow", "nothing"]


async def test_wait_for_seq_is_cancellable(store: Store) -> None:
    with anyio.fail_after(5):
        with anyio.move_on_after(0) as scope:
            await store.wait_for_seq(0)
        assert scope.cancelled_caught
        async with anyio.create_task_group() as nursery:
            nursery.start_soon(store.wait_for_seq, 10)
            await anyio.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    # the store still works and wakes later waiters
    await store.put([rec(1)])
    with anyio.fail_after(5):
        assert await store.wait_for_seq(0) == 1


async def test_aclose_wakes_waiters_and_closes_everything(
    store_factory: StoreFactory, tmp_path: Path
) -> None:
    store = await store_factory(tmp_path)
    await store.put([rec(1)])
    errors: list[BaseException] = []

    async def waiter() -> None:
        try:
            await store.wait_for_seq(5)
        except StoreClosed as exc:
            errors.append(exc)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as nursery:
            nursery.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            await store.aclose()
    assert len(errors) == 1
    await store.aclose()  # idempotent
    calls = [
        store.put([rec(2)]),
        store.get(rec(1).cid),
        store.get_many([rec(1).cid]),
        store.changes(0, 10),
        store.head_seq(),
        store.wait_for_seq(0),
        store.transact(lambda tx: None),
        store.get_state("t", "k"),
        store.list_state("t"),
        store.audit_log(),
        store.threads(),
        store.count(),
    ]
    for call in calls:
        with pytest.raises(StoreClosed):
            await call
