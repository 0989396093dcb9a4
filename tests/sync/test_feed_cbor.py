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
from fedpeer.sync.feed import FeedPage, decode_page_cbor, encode_page_cbor, page_to_wire
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
