"""The feed core: cursors, since resolution, page building, the page wire form."""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
from collections.abc import Callable

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedpeer.errors import (
    CursorFromFuture,
    CursorInvalid,
    CursorReset,
    PageInvalid,
)
from fedpeer.identity.canonical import (
    dagcbor_decode,
    dagcbor_encode,
    dagjson_decode,
    dagjson_encode,
)
from fedpeer.identity.keys import SigningKey
from fedpeer.store.base import ChangeFilter, ChangesPage, StoredRecord
from fedpeer.store.memory import MemoryStore
from fedpeer.sync.feed import (
    MAX_SEQ,
    Cursor,
    FeedPage,
    WirePage,
    build_page,
    cursor_at,
    fingerprint,
    page_cursor,
    page_from_wire,
    page_to_wire,
    resolve_cursor,
    resolve_since,
)
from fedpeer.sync.records import SignedRecord, build_record, record_from_wire, record_to_wire

EPOCH = "0123456789abcdef0123456789abcdef"
KEY16 = b"k" * 16  # a store's cursor key
OTHER_EPOCH = "f" * 32
KEY = SigningKey.from_seed(b"\x03" * 32)

epochs = st.binary(min_size=16, max_size=16).map(bytes.hex)
seqs = st.integers(min_value=0, max_value=MAX_SEQ)


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


# --- cursors ---------------------------------------------------------------------------


@settings(max_examples=200)
@given(epoch=epochs, seq=seqs)
def test_cursor_round_trip(epoch: str, seq: int) -> None:
    cursor = Cursor(epoch, seq)
    text = cursor.encode()
    assert len(text) == 34
    assert set(text) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert Cursor.decode(text) == cursor


def test_cursor_encoding_is_versioned_binary() -> None:
    text = Cursor(EPOCH, 258).encode()
    raw = base64.urlsafe_b64decode(text + "==")
    assert raw == b"\x01" + bytes.fromhex(EPOCH) + (258).to_bytes(8, "big")
    # distinct positions give distinct cursors
    assert Cursor(EPOCH, 1).encode() != Cursor(EPOCH, 2).encode()
    assert Cursor(EPOCH, 1).encode() != Cursor(OTHER_EPOCH, 1).encode()


def _packed(version: int, epoch: bytes, seq: int) -> str:
    return b64(struct.pack(">B16sq", version, epoch, seq))


def _packed2(version: int, epoch: bytes, seq: int, fp: bytes) -> str:
    return b64(struct.pack(">B16sq8s", version, epoch, seq, fp))


fingerprints = st.binary(min_size=8, max_size=8)


@settings(max_examples=200)
@given(epoch=epochs, seq=st.integers(min_value=1, max_value=MAX_SEQ), fp=fingerprints)
def test_cursor_v2_round_trip(epoch: str, seq: int, fp: bytes) -> None:
    cursor = Cursor(epoch, seq, fp)
    assert cursor.version == 2
    text = cursor.encode()
    assert len(text) == 44
    assert set(text) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert Cursor.decode(text) == cursor


def test_cursor_v2_wire_layout() -> None:
    cid = b"\x01\x71\x12\x20" + bytes(range(32))
    cursor = cursor_at(EPOCH, 258, cid, key=KEY16)
    raw = base64.urlsafe_b64decode(cursor.encode() + "==")
    fp = hmac.new(KEY16, cid, hashlib.sha256).digest()[:8]
    assert raw == b"\x02" + bytes.fromhex(EPOCH) + (258).to_bytes(8, "big") + fp
    assert cursor.fingerprint == fingerprint(cid, key=KEY16) == fp
    # keyed: without the store's secret key a reader cannot test a guessed CID
    assert fingerprint(cid, key=b"j" * 16) != fp
    assert hashlib.sha256(cid).digest()[:8] != fp
    # seq 0 (before the first record) has a zero fingerprint, whatever cid is given
    zero = cursor_at(EPOCH, 0, cid, key=KEY16)
    assert zero == Cursor(EPOCH, 0, bytes(8))
    assert base64.urlsafe_b64decode(zero.encode() + "==")[-8:] == bytes(8)
    # unknown cid above 0: a version 1 cursor (no rollback check possible)
    assert cursor_at(EPOCH, 5, None, key=KEY16) == Cursor(EPOCH, 5)
    assert len(cursor_at(EPOCH, 5, None, key=KEY16).encode()) == 34


@pytest.mark.parametrize(
    "text",
    [
        _packed2(1, bytes.fromhex(EPOCH), 5, b"12345678"),  # v1 byte in a v2-sized cursor
        _packed2(3, bytes.fromhex(EPOCH), 5, b"12345678"),
        _packed2(2, bytes.fromhex(EPOCH), -1, b"12345678"),  # negative seq
        _packed2(2, bytes.fromhex(EPOCH), 0, b"12345678"),  # seq 0 needs a zero fingerprint
        b64(b"\x02" + bytes.fromhex(EPOCH) + bytes(8) + bytes(7)),  # short fingerprint
        b64(b"\x02" + bytes.fromhex(EPOCH) + bytes(8) + bytes(9)),  # long fingerprint
        _packed2(2, bytes.fromhex(EPOCH), 5, b"12345678")[:-1],
        _packed2(2, bytes.fromhex(EPOCH), 5, b"12345678") + "A",
    ],
)
def test_garbage_v2_cursors_are_invalid(text: str) -> None:
    with pytest.raises(CursorInvalid):
        Cursor.decode(text)
    with pytest.raises(CursorInvalid):
        resolve_since(text, epoch=EPOCH, head_seq=10)


@pytest.mark.parametrize("fp", [b"", b"1234567", b"123456789", "12345678"])
def test_cursor_fingerprint_shape_is_checked(fp: object) -> None:
    with pytest.raises(CursorInvalid):
        Cursor(EPOCH, 3, fp)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "v1",
        "not a cursor at all, clearly......",  # 34 chars, bad alphabet
        Cursor(EPOCH, 5).encode() + "=",  # padding
        Cursor(EPOCH, 5).encode() + "==",
        Cursor(EPOCH, 5).encode()[:-1],  # truncated
        Cursor(EPOCH, 5).encode() + "A",  # too long
        " " + Cursor(EPOCH, 5).encode()[1:],
        Cursor(EPOCH, 5).encode().replace("A", "+").replace("B", "/"),  # std alphabet
        _packed(2, bytes.fromhex(EPOCH), 5),  # another version
        _packed(0, bytes.fromhex(EPOCH), 5),
        _packed(1, bytes.fromhex(EPOCH), -1),  # negative seq
        _packed(1, bytes.fromhex(EPOCH), -(2**63)),
        b64(b"\x01" + bytes.fromhex(EPOCH)),  # no seq
        b64(b"\x01" + bytes.fromhex(EPOCH) + b"\x00" * 9),  # seq too long
        "x" * 10_000,
    ],
)
def test_garbage_cursors_are_invalid(text: str) -> None:
    with pytest.raises(CursorInvalid):
        Cursor.decode(text)
    with pytest.raises(CursorInvalid):
        resolve_since(text, epoch=EPOCH, head_seq=10)


def test_non_canonical_spelling_is_invalid() -> None:
    text = Cursor(EPOCH, 5).encode()
    # 25 bytes in 34 characters leave 4 unused bits in the last one; set them
    last = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".index(text[-1])
    other = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[last | 0b0001]
    assert other != text[-1]
    assert base64.urlsafe_b64decode(text[:-1] + other + "==") == base64.urlsafe_b64decode(
        text + "=="
    )
    with pytest.raises(CursorInvalid, match="canonical"):
        Cursor.decode(text[:-1] + other)


@pytest.mark.parametrize("value", [None, 5, b"cursor", ["x"], 1.5])
def test_non_string_cursor_is_invalid(value: object) -> None:
    with pytest.raises(CursorInvalid):
        Cursor.decode(value)  # type: ignore[arg-type]


@settings(max_examples=300)
@given(text=st.text(max_size=60) | st.text(alphabet="AQgw-_09azAZ", min_size=30, max_size=38))
def test_random_text_is_a_cursor_or_cursor_invalid(text: str) -> None:
    try:
        cursor = Cursor.decode(text)
    except CursorInvalid:
        return
    assert cursor.encode() == text  # only canonical spellings decode


@settings(max_examples=300)
@given(epoch=epochs, seq=seqs, index=st.integers(0, 33), char=st.sampled_from("AQgw-_09az"))
def test_mutated_cursor_is_another_cursor_or_invalid(
    epoch: str, seq: int, index: int, char: str
) -> None:
    text = Cursor(epoch, seq).encode()
    mutated = text[:index] + char + text[index + 1 :]
    try:
        cursor = Cursor.decode(mutated)
    except CursorInvalid:
        return
    assert cursor.encode() == mutated
    assert (cursor == Cursor(epoch, seq)) == (mutated == text)


@pytest.mark.parametrize(
    ("epoch", "seq"),
    [
        (EPOCH.upper(), 1),
        (EPOCH[:-1], 1),
        (EPOCH + "0", 1),
        ("g" * 32, 1),
        (EPOCH, -1),
        (EPOCH, MAX_SEQ + 1),
        (EPOCH, True),
        (EPOCH, 1.0),
    ],
)
def test_cursor_construction_checks_fields(epoch: str, seq: int) -> None:
    with pytest.raises(CursorInvalid):
        Cursor(epoch, seq)


# --- resolve_since ---------------------------------------------------------------------


def test_resolve_since() -> None:
    assert resolve_since(None, epoch=EPOCH, head_seq=0) == 0
    assert resolve_since(None, epoch=EPOCH, head_seq=50) == 0
    assert resolve_since(Cursor(EPOCH, 0).encode(), epoch=EPOCH, head_seq=0) == 0
    assert resolve_since(Cursor(EPOCH, 7).encode(), epoch=EPOCH, head_seq=50) == 7
    assert resolve_since(Cursor(EPOCH, 50).encode(), epoch=EPOCH, head_seq=50) == 50


def test_cursor_from_another_store_is_reset() -> None:
    with pytest.raises(CursorReset):
        resolve_since(Cursor(OTHER_EPOCH, 3).encode(), epoch=EPOCH, head_seq=50)
    # even when it is also "ahead": another epoch says nothing about this store's seqs
    with pytest.raises(CursorReset):
        resolve_since(Cursor(OTHER_EPOCH, 999).encode(), epoch=EPOCH, head_seq=50)


def test_cursor_past_the_head_is_from_the_future() -> None:
    with pytest.raises(CursorFromFuture):
        resolve_since(Cursor(EPOCH, 51).encode(), epoch=EPOCH, head_seq=50)
    with pytest.raises(CursorFromFuture):
        resolve_since(Cursor(EPOCH, 1).encode(), epoch=EPOCH, head_seq=0)


CID_A = b"\x01\x71\x12\x20" + b"a" * 32
CID_B = b"\x01\x71\x12\x20" + b"b" * 32


def test_v2_cursor_checks_the_record_at_its_seq() -> None:
    text = cursor_at(EPOCH, 7, CID_A, key=KEY16).encode()
    assert (
        resolve_since(
            text, epoch=EPOCH, head_seq=7, fingerprint_at_seq=fingerprint(CID_A, key=KEY16)
        )
        == 7
    )
    assert (
        resolve_since(
            text, epoch=EPOCH, head_seq=50, fingerprint_at_seq=fingerprint(CID_A, key=KEY16)
        )
        == 7
    )
    # another record at seq 7: the store was rolled back and refilled
    with pytest.raises(CursorReset, match="rolled back or restored"):
        resolve_since(
            text, epoch=EPOCH, head_seq=50, fingerprint_at_seq=fingerprint(CID_B, key=KEY16)
        )
    # no record at seq 7 (not looked up, or missing): not trusted
    with pytest.raises(CursorReset):
        resolve_since(text, epoch=EPOCH, head_seq=50)
    # another epoch is a reset before anything else
    with pytest.raises(CursorReset, match="another store"):
        resolve_since(
            text, epoch=OTHER_EPOCH, head_seq=50, fingerprint_at_seq=fingerprint(CID_A, key=KEY16)
        )


def test_v2_cursor_past_the_head_is_a_reset_not_from_the_future() -> None:
    text = cursor_at(EPOCH, 51, CID_A, key=KEY16).encode()
    with pytest.raises(CursorReset, match="head is 50"):
        resolve_since(
            text, epoch=EPOCH, head_seq=50, fingerprint_at_seq=fingerprint(CID_A, key=KEY16)
        )
    # seq 0 is before everything: valid for any head
    zero = cursor_at(EPOCH, 0, None, key=KEY16).encode()
    assert resolve_since(zero, epoch=EPOCH, head_seq=0) == 0
    assert resolve_since(zero, epoch=EPOCH, head_seq=9) == 0


async def test_resolve_cursor_against_a_store() -> None:
    store = MemoryStore(epoch=EPOCH)
    key = KEY
    recs = [
        build_record(key, namespace="app", thread="t", kind="k", body=i, ts=i, now_ms=i)
        for i in range(3)
    ]
    await store.put([r.to_new() for r in recs])
    page = await store.changes(0, 2)
    assert page.last_cid == recs[1].cid.raw
    key = store.cursor_key
    text = page_cursor(page, epoch=EPOCH, key=key).encode()
    assert await resolve_cursor(store, text) == 2
    assert await resolve_cursor(store, None) == 0
    assert await resolve_cursor(store, Cursor(EPOCH, 2).encode()) == 2  # v1: unchecked
    # the right record, fingerprinted with another key: not this store's cursor
    with pytest.raises(CursorReset):
        await resolve_cursor(store, cursor_at(EPOCH, 2, recs[1].cid.raw, key=KEY16).encode())
    with pytest.raises(CursorReset):
        await resolve_cursor(store, cursor_at(EPOCH, 2, recs[0].cid.raw, key=key).encode())
    with pytest.raises(CursorReset):
        await resolve_cursor(store, cursor_at(EPOCH, 4, recs[0].cid.raw, key=key).encode())
    with pytest.raises(CursorFromFuture):
        await resolve_cursor(store, Cursor(EPOCH, 4).encode())


def test_empty_cursor_is_invalid_not_from_the_start() -> None:
    with pytest.raises(CursorInvalid):
        resolve_since("", epoch=EPOCH, head_seq=5)


# --- page building ---------------------------------------------------------------------


def srec(seq: int, namespace: str = "app", thread: str = "t") -> StoredRecord:
    cid = b"\x01\x71\x12\x20" + seq.to_bytes(32, "big")
    return StoredRecord(
        seq=seq,
        cid=cid,
        data=b"\xa0",
        sig=b"\x00" * 64,
        author="did:key:z6Mk",
        namespace=namespace,
        thread=thread,
        kind="k",
        ts=seq,
    )


def test_build_page_keeps_visible_records_and_advances_past_the_rest() -> None:
    recs = (srec(3), srec(4, "secret"), srec(6), srec(7, "secret"))
    page = build_page(
        ChangesPage(recs, last_seq=7, head_seq=20),
        epoch=EPOCH,
        key=KEY16,
        visible=lambda r: r.namespace != "secret",
    )
    assert page == FeedPage(records=(recs[0], recs[2]), next_cursor=page.next_cursor, has_more=True)
    # the cursor sits after the last scanned record (seq 7, invisible) and names it
    assert Cursor.decode(page.next_cursor) == cursor_at(EPOCH, 7, recs[3].cid, key=KEY16)


def test_build_page_with_nothing_visible_still_advances() -> None:
    recs = (srec(1, "secret"), srec(2, "secret"))
    page = build_page(ChangesPage(recs, 2, 2), epoch=EPOCH, key=KEY16, visible=lambda r: False)
    assert page.records == ()
    assert Cursor.decode(page.next_cursor) == cursor_at(EPOCH, 2, recs[1].cid, key=KEY16)
    assert page.has_more is False


def test_build_page_default_shows_everything() -> None:
    recs = (srec(1), srec(2))
    page = build_page(ChangesPage(recs, 2, 2), epoch=EPOCH, key=KEY16)
    assert page.records == recs
    assert not page.has_more


def test_build_page_empty_scan_window() -> None:
    # a filtered scan that matched nothing in its window: resume after the window
    page = build_page(
        ChangesPage((), last_seq=1000, head_seq=5000, last_cid=CID_A), epoch=EPOCH, key=KEY16
    )
    assert page.records == ()
    assert page.has_more
    assert Cursor.decode(page.next_cursor) == cursor_at(EPOCH, 1000, CID_A, key=KEY16)
    assert (
        resolve_since(
            page.next_cursor,
            epoch=EPOCH,
            head_seq=5000,
            fingerprint_at_seq=fingerprint(CID_A, key=KEY16),
        )
        == 1000
    )
    # a scan page whose store did not say which record is at last_seq: version 1
    legacy = build_page(ChangesPage((), last_seq=1000, head_seq=5000), epoch=EPOCH, key=KEY16)
    assert Cursor.decode(legacy.next_cursor) == Cursor(EPOCH, 1000)


def test_build_page_at_head_of_empty_store() -> None:
    page = build_page(ChangesPage((), 0, 0), epoch=EPOCH, key=KEY16)
    assert page.records == ()
    assert not page.has_more
    assert resolve_since(page.next_cursor, epoch=EPOCH, head_seq=0) == 0


def test_build_page_refuses_a_bad_epoch() -> None:
    with pytest.raises(CursorInvalid):
        build_page(ChangesPage((), 0, 0), epoch="not-an-epoch", key=KEY16)


class FakeSource:
    """An in-memory change source with the Store.changes paging rules.

    Records have increasing, possibly gappy, seqs. A scan looks at no more than
    ``window`` seqs past ``since`` and at most ``limit`` records, and reports
    the highest seq it scanned (as a filtered SQL scan would).
    """

    def __init__(self, records: list[StoredRecord], window: int) -> None:
        self.records = records
        self.window = window
        self.head = records[-1].seq if records else 0
        self.calls = 0

    def changes(self, since: int, limit: int) -> ChangesPage:
        self.calls += 1
        upper = min(self.head, since + self.window)
        out = [r for r in self.records if since < r.seq <= upper][:limit]
        last = out[-1].seq if len(out) == limit else max(since, upper)
        return ChangesPage(tuple(out), last, self.head, self.cid_at(last))

    def cid_at(self, seq: int) -> bytes | None:
        return next((r.cid for r in self.records if r.seq == seq), None)

    def resolve(self, cursor: str | None) -> int:
        seq = 0 if cursor is None else Cursor.decode(cursor).seq
        cid = self.cid_at(seq)
        fp = None if cid is None else fingerprint(cid, key=KEY16)
        return resolve_since(cursor, epoch=EPOCH, head_seq=self.head, fingerprint_at_seq=fp)


def follow(
    source: FakeSource, limit: int, visible: Callable[[StoredRecord], bool]
) -> list[StoredRecord]:
    """Page through the feed the way a client does; bounded."""
    got: list[StoredRecord] = []
    cursor: str | None = None
    for _ in range(4 * len(source.records) + 4):
        since = source.resolve(cursor)
        page = build_page(source.changes(since, limit), epoch=EPOCH, key=KEY16, visible=visible)
        wire = page_from_wire(dagcbor_decode(dagcbor_encode(page_to_wire(page))))
        assert len(wire.records) == len(page.records)
        got.extend(page.records)
        cursor = page.next_cursor
        if not page.has_more:
            return got
    raise AssertionError("the feed did not finish: the cursor stalled")


@settings(max_examples=150, deadline=None)
@given(
    gaps=st.lists(st.integers(min_value=1, max_value=4), max_size=60),
    hidden=st.sets(st.integers(min_value=0, max_value=59)),
    limit=st.integers(min_value=1, max_value=10),
    window=st.integers(min_value=1, max_value=25),
)
def test_property_following_cursors_yields_every_visible_record_once_in_order(
    gaps: list[int], hidden: set[int], limit: int, window: int
) -> None:
    seq = 0
    records = []
    for i, gap in enumerate(gaps):
        seq += gap
        records.append(srec(seq, namespace="hidden" if i in hidden else "app"))
    source = FakeSource(records, window)

    got = follow(source, limit, lambda r: r.namespace != "hidden")

    assert got == [r for r in records if r.namespace != "hidden"]
    assert len({r.seq for r in got}) == len(got)
    # and a reader that sees nothing still gets to the end
    assert follow(source, limit, lambda r: False) == []


async def test_feed_over_a_real_memory_store_with_filter_and_consent() -> None:
    key = SigningKey.from_seed(b"\x04" * 32)
    store = MemoryStore(epoch=EPOCH, scan_window=3)
    signed = [
        build_record(key, namespace=ns, thread=f"t{i % 3}", kind="k", body=i)
        for i, ns in enumerate(["app", "app/x", "other", "app", "private", "app/y", "apple"] * 3)
    ]
    await store.put([s.to_new() for s in signed])
    head = await store.head_seq()
    assert head == len(signed)
    flt = ChangeFilter(namespace_prefix="app")

    def visible(r: StoredRecord) -> bool:
        return r.thread != "t1"  # the reader has no grant for t1

    got: list[SignedRecord] = []
    cursor: str | None = None
    for _ in range(100):
        since = await resolve_cursor(store, cursor)
        page = build_page(
            await store.changes(since, 2, flt),
            epoch=store.epoch,
            key=store.cursor_key,
            visible=visible,
        )
        wire = page_from_wire(dagjson_decode(dagjson_encode(page_to_wire(page))))
        got.extend(record_from_wire(item) for item in wire.records)
        cursor = wire.next_cursor
        if not wire.has_more:
            break
    else:
        raise AssertionError("feed did not finish")
    expected = [
        s for s in signed if s.record.namespace.startswith("app") and s.record.thread != "t1"
    ]
    assert got == expected
    # a cursor from this store is refused by another one
    with pytest.raises(CursorReset):
        resolve_since(cursor, epoch=MemoryStore().epoch, head_seq=head)


# --- wire ------------------------------------------------------------------------------


def _signed(i: int) -> SignedRecord:
    return build_record(KEY, namespace="app", thread="t", kind="k", body={"i": i})


def test_page_to_wire_and_back() -> None:
    signed = [_signed(i) for i in range(3)]
    recs = tuple(StoredRecord(seq=i + 1, **attrs.asdict(s.to_new())) for i, s in enumerate(signed))
    page = build_page(ChangesPage(recs, 3, 10), epoch=EPOCH, key=KEY16)
    wire = page_to_wire(page)
    assert wire == {
        "records": [record_to_wire(r) for r in recs],
        "next_cursor": cursor_at(EPOCH, 3, recs[2].cid, key=KEY16).encode(),
        "has_more": True,
    }
    for encode, decode in ((dagcbor_encode, dagcbor_decode), (dagjson_encode, dagjson_decode)):
        parsed = page_from_wire(decode(encode(wire)))
        assert parsed == WirePage(
            records=parsed.records, next_cursor=wire["next_cursor"], has_more=True
        )
        assert [record_from_wire(item) for item in parsed.records] == signed


def _wire(**changes: object) -> dict[str, object]:
    obj: dict[str, object] = {
        "records": [],
        "next_cursor": Cursor(EPOCH, 0).encode(),
        "has_more": False,
    }
    obj.update(changes)
    return obj


@pytest.mark.parametrize(
    "obj",
    [
        None,
        [],
        "page",
        {"records": [], "next_cursor": "c"},
        {**_wire(), "extra": 1},
        _wire(records=None),
        _wire(records={"a": 1}),
        _wire(records=b"x"),
        _wire(next_cursor=None),
        _wire(next_cursor=5),
        _wire(next_cursor=""),
        _wire(next_cursor="x" * 257),
        _wire(next_cursor="new\nline"),
        _wire(next_cursor="ü"),
        _wire(next_cursor=b"bytes"),
        _wire(has_more=1),
        _wire(has_more="true"),
        _wire(has_more=None),
    ],
)
def test_page_of_wrong_shape_is_page_invalid(obj: object) -> None:
    with pytest.raises(PageInvalid):
        page_from_wire(obj)


def test_page_from_wire_does_not_verify_records() -> None:
    parsed = page_from_wire(_wire(records=[{"anything": 1}, 2]))
    assert parsed.records == ({"anything": 1}, 2)
    assert parsed.next_cursor == Cursor(EPOCH, 0).encode()
    # the cursor is opaque to clients: any sane text is kept as is
    assert page_from_wire(_wire(next_cursor="opaque-v9")).next_cursor == "opaque-v9"


@settings(max_examples=200)
@given(
    obj=st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=10) | st.binary(max_size=10),
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(
                st.sampled_from(["records", "next_cursor", "has_more", "x"]), inner, max_size=4
            )
        ),
        max_leaves=8,
    )
)
def test_property_page_from_wire_never_crashes(obj: object) -> None:
    try:
        page = page_from_wire(obj)
    except PageInvalid:
        return
    assert isinstance(page.records, tuple)
    assert isinstance(page.next_cursor, str)
