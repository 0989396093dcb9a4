"""The CBOR page fast paths are byte-for-byte / verdict-for-verdict the general codec.

``encode_page_cbor`` must equal ``dagcbor_encode(page_to_wire(page))``;
``decode_page_cbor`` must equal ``dagcbor_decode`` (value, error class and
message) on pages, on damaged and non-canonical pages, and on anything else.
"""

from __future__ import annotations

from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedpeer.errors import FedpeerError, NonCanonical
from fedpeer.identity.canonical import CID, dagcbor_decode, dagcbor_encode
from fedpeer.identity.keys import SigningKey
from fedpeer.store.base import StoredRecord
from fedpeer.sync import feed as feed_module
from fedpeer.sync.feed import (
    FeedPage,
    cbor_items_exceed,
    decode_page_cbor,
    encode_page_cbor,
    page_to_wire,
)
from fedpeer.sync.records import build_record

NOW = 1_700_000_000_000
KEY = SigningKey.from_seed(b"\x21" * 32)
RECORDS = [
    build_record(
        KEY, namespace=f"ns{i % 3}", thread="t", kind="k", body={"i": i, "s": "x" * i}, now_ms=NOW
    )
    for i in range(40)
]


def stored(i: int) -> StoredRecord:
    r = RECORDS[i]
    m = r.record
    return StoredRecord(
        i + 1, r.cid.raw, r.data, r.sig, m.author, m.namespace, m.thread, m.kind, m.ts
    )


def outcome(fn: Any) -> tuple[str, object]:
    try:
        return ("ok", fn())
    except FedpeerError as exc:
        return (type(exc).__name__, exc.message)


pages = st.builds(
    lambda idx, cursor, more: FeedPage(tuple(stored(i) for i in idx), cursor, more),
    st.lists(st.integers(0, len(RECORDS) - 1), max_size=30),
    st.text(min_size=1, max_size=60),
    st.booleans(),
)


@settings(max_examples=100, deadline=None)
@given(page=pages)
def test_encode_page_cbor_is_the_general_encoding(page: FeedPage) -> None:
    expected = dagcbor_encode(page_to_wire(page))
    assert encode_page_cbor(page.records, page.next_cursor, page.has_more) == expected
    signed = [RECORDS[r.seq - 1] for r in page.records]  # SignedRecords encode the same
    assert encode_page_cbor(signed, page.next_cursor, page.has_more) == expected
    assert decode_page_cbor(expected) == dagcbor_decode(expected)


def test_large_page_and_long_fields() -> None:
    big = build_record(KEY, namespace="n", thread="t", kind="k", body="y" * 70_000, now_ms=NOW)
    m = big.record
    rec = StoredRecord(
        1, big.cid.raw, big.data, big.sig, m.author, m.namespace, m.thread, m.kind, 1
    )
    page = FeedPage((rec,) * 30, "c" * 300, False)
    body = encode_page_cbor(page.records, page.next_cursor, page.has_more)
    assert body == dagcbor_encode(page_to_wire(page))
    assert decode_page_cbor(body) == dagcbor_decode(body)


@settings(max_examples=200, deadline=None)
@given(page=pages, data=st.data())
def test_decode_page_cbor_matches_the_strict_decoder_on_damaged_pages(
    page: FeedPage, data: st.DataObject
) -> None:
    body = bytearray(encode_page_cbor(page.records, page.next_cursor, page.has_more))
    how = data.draw(st.sampled_from(["flip", "truncate", "append", "insert"]))
    i = data.draw(st.integers(0, len(body) - 1))
    if how == "flip":
        body[i] ^= data.draw(st.integers(1, 255))
    elif how == "truncate":
        del body[i:]
    elif how == "append":
        body += data.draw(st.binary(min_size=1, max_size=3))
    else:
        body[i:i] = data.draw(st.binary(min_size=1, max_size=3))
    blob = bytes(body)
    assert outcome(lambda: decode_page_cbor(blob)) == outcome(lambda: dagcbor_decode(blob))


def _cid_default(encoder: cbor2.CBOREncoder, value: object) -> None:
    assert isinstance(value, CID)
    encoder.encode(cbor2.CBORTag(42, b"\x00" + value.raw))


@pytest.mark.parametrize(
    "value",
    [
        # insertion order: not the canonical key order, for the page and for items
        {"records": [], "next_cursor": "c", "has_more": True},
        {"next_cursor": "c", "has_more": False, "records": []},
        {
            "records": [{"data": RECORDS[0].data, "cid": RECORDS[0].cid, "sig": RECORDS[0].sig}],
            "has_more": False,
            "next_cursor": "c",
        },
    ],
)
def test_non_canonical_pages_are_refused_like_the_strict_decoder(value: object) -> None:
    blob = cbor2.dumps(value, default=_cid_default)
    expected = outcome(lambda: dagcbor_decode(blob))
    assert outcome(lambda: decode_page_cbor(blob)) == expected
    if blob != dagcbor_encode(value):
        assert expected[0] == NonCanonical.__name__


@pytest.mark.parametrize(
    "value",
    [
        {"records": [], "next_cursor": "c", "has_more": True, "extra": 1},
        {"records": [{"cid": RECORDS[0].cid, "data": b"d", "sig": b"s", "x": 1}]},
        {"records": [{"cid": b"not a link", "data": b"d", "sig": b"s"}]},
        {"records": "nope", "next_cursor": 1, "has_more": None},
        [1, 2, 3],
        "text",
    ],
)
def test_other_shapes_decode_through_the_general_path(value: object) -> None:
    blob = dagcbor_encode(value)
    assert decode_page_cbor(blob) == value
    assert feed_module._wire_page_cbor(dagcbor_decode(blob)) is None


@pytest.mark.parametrize("blob", [b"", b"\xff", b"\xa3", bytearray(b"\x80"), memoryview(b"\x80")])
def test_odd_inputs_behave_like_the_strict_decoder(blob: Any) -> None:
    assert outcome(lambda: decode_page_cbor(blob)) == outcome(lambda: dagcbor_decode(blob))


# --- the one-pass strict page parser (the hot path of every pulled page) ---------------


def _same_value(a: object, b: object) -> bool:
    """Equal values with the same types and the same map key order, recursively."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        assert isinstance(b, dict)
        return list(a) == list(b) and all(_same_value(a[k], b[k]) for k in a)
    if isinstance(a, list):
        assert isinstance(b, list)
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@settings(max_examples=150, deadline=None)
@given(page=pages)
def test_strict_page_parser_takes_every_usual_page_and_gives_the_decoder_value(
    page: FeedPage,
) -> None:
    body = encode_page_cbor(page.records, page.next_cursor, page.has_more)
    fast = feed_module._strict_page(body)
    assert fast is not None  # record ids and 64-byte signatures: the one-pass path
    assert _same_value(fast, dagcbor_decode(body))
    assert _same_value(decode_page_cbor(body), dagcbor_decode(body))


@settings(max_examples=300, deadline=None)
@given(page=pages, data=st.data())
def test_strict_page_parser_never_accepts_what_the_decoder_refuses(
    page: FeedPage, data: st.DataObject
) -> None:
    body = bytearray(encode_page_cbor(page.records, page.next_cursor, page.has_more))
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, max(0, len(body) - 1)))
        how = data.draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete"]))
        if how == "flip" and body:
            body[i] ^= 1 << data.draw(st.integers(0, 7))
        elif how == "set" and body:
            body[i] = data.draw(st.sampled_from([0x00, 0x18, 0x19, 0x58, 0x59, 0x98, 0xF4, 0xF5]))
        elif how == "truncate":
            del body[i:]
        elif how == "insert":
            body[i:i] = data.draw(st.binary(min_size=1, max_size=2))
        elif body:
            del body[i]
    blob = bytes(body)
    fast = feed_module._strict_page(blob)
    general = outcome(lambda: dagcbor_decode(blob))
    if fast is not None:
        assert general[0] == "ok"
        assert _same_value(fast, general[1])
    assert outcome(lambda: decode_page_cbor(blob)) == general


def _longer_head(body: bytes, at: int) -> bytes:
    """``body`` with the head at ``at`` (a 1-byte argument < 24 or a 0x?8 head) one size up."""
    b = body[at]
    major, info = b >> 5, b & 0x1F
    if info < 24:
        return body[:at] + bytes([(major << 5) | 24, info]) + body[at + 1 :]
    assert info == 24
    return body[:at] + bytes([(major << 5) | 25, 0, body[at + 1]]) + body[at + 2 :]


@pytest.mark.parametrize("where", ["array", "data", "cursor"])
def test_strict_page_parser_refuses_longer_heads_like_the_decoder(where: str) -> None:
    page = FeedPage((stored(3), stored(4)), "cursor-text", True)
    body = encode_page_cbor(page.records, page.next_cursor, page.has_more)
    at = {
        "array": len(b"\xa3\x67records"),
        "data": body.index(b"\x64data") + 5,
        "cursor": len(body) - len("cursor-text") - 1,
    }[where]
    blob = _longer_head(body, at)
    assert feed_module._strict_page(blob) is None
    with pytest.raises(NonCanonical):
        dagcbor_decode(blob)
    assert outcome(lambda: decode_page_cbor(blob)) == outcome(lambda: dagcbor_decode(blob))


def test_strict_page_parser_leaves_unusual_items_to_the_general_decoder() -> None:
    cidv0 = CID(b"\x12\x20" + b"\x07" * 32)  # not a record id: the general path decides
    value = {"records": [{"cid": cidv0, "sig": b"s" * 64, "data": b"d"}], "has_more": False}
    value["next_cursor"] = "c"
    blob = dagcbor_encode(value)
    assert feed_module._strict_page(blob) is None
    assert decode_page_cbor(blob) == dagcbor_decode(blob) == value
    short_sig = dict(value, records=[{"cid": RECORDS[0].cid, "sig": b"s" * 63, "data": b"d"}])
    blob = dagcbor_encode(short_sig)
    assert feed_module._strict_page(blob) is None
    assert decode_page_cbor(blob) == short_sig


def _items(value: object) -> int:
    """Data items in the DAG-CBOR encoding of ``value`` (a CID link is a tag and
    its byte string: two)."""
    if isinstance(value, dict):
        return 1 + sum(1 + _items(v) for v in value.values())
    if isinstance(value, list):
        return 1 + sum(_items(v) for v in value)
    if isinstance(value, CID):
        return 2
    return 1


_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.text(max_size=5)
    | st.binary(max_size=5)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=4)
    ),
    max_leaves=30,
)


@given(_values)
def test_cbor_items_exceed_counts_every_head(value: object) -> None:
    data = dagcbor_encode(value)
    n = _items(value)
    assert not cbor_items_exceed(data, n)
    assert cbor_items_exceed(data, n - 1)


def test_cbor_items_exceed_stops_early_and_leaves_odd_encodings_to_the_decoder() -> None:
    bomb = dagcbor_encode({"records": [[[]] * 1_000_000], "next_cursor": "x", "has_more": False})
    assert cbor_items_exceed(bomb, 100)
    page = dagcbor_encode({"records": [], "next_cursor": "x", "has_more": False})
    assert not cbor_items_exceed(page, 7)
    assert not cbor_items_exceed(b"\x9f\x80\xff", 1)  # indefinite length: the decoder's call
    assert not cbor_items_exceed(b"\x9b" + b"\xff" * 8, 10**9)  # truncated
