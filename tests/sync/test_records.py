"""Records: build, sign, verify; every tampering is refused with the right code."""

from __future__ import annotations

import json
from typing import Any

import attrs
import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedpeer.errors import (
    BadSignature,
    DidInvalid,
    FedpeerError,
    Malformed,
    NonCanonical,
    RecordFromFuture,
    RecordInvalid,
    RecordTooLarge,
)
from fedpeer.identity.canonical import (
    CID,
    b64url_decode,
    cid_for_dagcbor,
    dagcbor_decode,
    dagcbor_encode,
    dagjson_decode,
    dagjson_encode,
)
from fedpeer.identity.didkey import did_from_public_key
from fedpeer.identity.keys import SigningKey
from fedpeer.store.base import NewRecord, StoredRecord
from fedpeer.sync.records import (
    DEFAULT_LIMITS,
    MAX_SAFE_INT,
    Limits,
    Record,
    SignedRecord,
    build_record,
    record_from_wire,
    record_to_json_view,
    record_to_wire,
    verify_record,
    verify_wire_items,
)

NOW = 1_700_000_000_000
KEY = SigningKey.from_seed(b"\x01" * 32)
OTHER = SigningKey.from_seed(b"\x02" * 32)
NAME_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:@/+-"


def rid(n: int) -> CID:
    """A record id (CIDv1 dag-cbor sha2-256) for parents."""
    return cid_for_dagcbor(dagcbor_encode({"n": n}))


def base_map(**changes: object) -> dict[str, object]:
    m: dict[str, object] = {
        "v": 1,
        "author": KEY.did,
        "namespace": "app/notes",
        "thread": "t1",
        "kind": "note",
        "body": {"text": "hello", "tags": ["a", "b"], "blob": b"\x00\x01"},
        "parents": [rid(1), rid(2)],
        "clock": 7,
        "ts": NOW - 1000,
    }
    m.update(changes)
    return m


def sign_map(m: object, key: SigningKey = KEY) -> tuple[bytes, bytes]:
    """Encode any value canonically and sign its CID, skipping every record check."""
    data = dagcbor_encode(m)
    return data, key.sign(cid_for_dagcbor(data).raw)


def good() -> SignedRecord:
    m = base_map()
    return build_record(
        KEY,
        namespace=str(m["namespace"]),
        thread=str(m["thread"]),
        kind=str(m["kind"]),
        body=m["body"],
        parents=[rid(1), rid(2)],
        clock=7,
        ts=NOW - 1000,
        now_ms=NOW,
    )


def verify(data: bytes, sig: bytes, **kw: Any) -> SignedRecord:
    kw.setdefault("now_ms", NOW)
    return verify_record(data, sig, **kw)


# --- round trip ------------------------------------------------------------------------


def test_build_then_verify_round_trip() -> None:
    signed = good()
    back = verify(signed.data, signed.sig)
    assert back == signed
    assert back.record == Record(
        v=1,
        author=KEY.did,
        namespace="app/notes",
        thread="t1",
        kind="note",
        body={"text": "hello", "tags": ["a", "b"], "blob": b"\x00\x01"},
        parents=(rid(1), rid(2)),
        clock=7,
        ts=NOW - 1000,
    )
    assert signed.cid == cid_for_dagcbor(signed.data)
    assert signed.data == dagcbor_encode(base_map())
    assert dagcbor_encode(signed.record.to_map()) == signed.data
    assert len(signed.sig) == 64
    # the signature is over the CID's raw bytes, by the author's key
    assert signed.sig == KEY.sign(signed.cid.raw)


def test_to_new_gives_the_store_fields() -> None:
    signed = good()
    assert signed.to_new() == NewRecord(
        cid=signed.cid.raw,
        data=signed.data,
        sig=signed.sig,
        author=KEY.did,
        namespace="app/notes",
        thread="t1",
        kind="note",
        ts=NOW - 1000,
    )


def test_build_defaults_and_normalises() -> None:
    signed = build_record(KEY, namespace="n", thread="t", kind="k", body=("x", 1), now_ms=NOW)
    assert signed.record.ts == NOW
    assert signed.record.clock == 0
    assert signed.record.parents == ()
    assert signed.record.body == ["x", 1]  # what a verifier decodes
    assert verify(signed.data, signed.sig).record == signed.record
    # ts defaults to the wall clock when now_ms is not given
    fresh = build_record(KEY, namespace="n", thread="t", kind="k", body=None)
    assert verify_record(fresh.data, fresh.sig).record.ts == fresh.record.ts


# --- tampering -------------------------------------------------------------------------

TAMPERS: list[tuple[str, object]] = [
    ("namespace", "app/other"),
    ("thread", "t2"),
    ("kind", "comment"),
    ("body", {"text": "HELLO", "tags": ["a", "b"], "blob": b"\x00\x01"}),
    ("body", None),
    ("parents", [rid(2), rid(1)]),  # same parents, other order: other record
    ("parents", []),
    ("clock", 8),
    ("ts", NOW - 999),
    ("author", OTHER.did),
]


@pytest.mark.parametrize(("field", "value"), TAMPERS)
def test_changed_field_without_resigning_is_bad_signature(field: str, value: object) -> None:
    signed = good()
    data = dagcbor_encode(base_map(**{field: value}))
    assert data != signed.data
    with pytest.raises(BadSignature):
        verify(data, signed.sig)


@pytest.mark.parametrize("bit", [0, 7, 100, 255, 256, 511])
def test_flipped_signature_bit_is_bad_signature(bit: int) -> None:
    signed = good()
    sig = bytearray(signed.sig)
    sig[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(BadSignature):
        verify(signed.data, bytes(sig))


@pytest.mark.parametrize(
    "sig",
    [b"", good().sig[:63], good().sig + b"\x00", good().sig * 2, good().sig.hex(), None],
)
def test_signature_of_wrong_length_or_type_is_bad_signature(sig: Any) -> None:
    # Documented choice: a signature that is not 64 bytes is BAD_SIGNATURE.
    signed = good()
    with pytest.raises(BadSignature):
        verify(signed.data, sig)


def test_signature_by_another_key_is_bad_signature() -> None:
    signed = good()
    with pytest.raises(BadSignature):
        verify(signed.data, OTHER.sign(signed.cid.raw))


def test_signature_over_the_data_instead_of_the_cid_is_bad_signature() -> None:
    signed = good()
    with pytest.raises(BadSignature):
        verify(signed.data, KEY.sign(signed.data))


def test_resigned_by_the_claimed_author_is_a_new_valid_record() -> None:
    # Control for the tamper tests: the same change, re-signed, verifies.
    data, sig = sign_map(base_map(thread="t2"))
    assert verify(data, sig).record.thread == "t2"


# --- non-canonical ---------------------------------------------------------------------


def _cbor2_map(m: dict[str, object]) -> dict[str, object]:
    """The map with CIDs as raw tag-42 values, for cbor2 to encode as it likes."""

    def conv(v: object) -> object:
        if isinstance(v, CID):
            return cbor2.CBORTag(42, b"\x00" + v.raw)
        if isinstance(v, list):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return {k: conv(v) for k, v in m.items()}


def test_unsorted_keys_are_non_canonical() -> None:
    data, sig = sign_map(base_map(parents=[]))
    verify(data, sig)
    unsorted = cbor2.dumps(dict(reversed(list(base_map(parents=[]).items()))))
    assert unsorted != data
    assert cbor2.loads(unsorted) == cbor2.loads(data)  # the same map, other key order
    with pytest.raises(NonCanonical):
        verify(unsorted, sig)


def test_non_minimal_integer_is_non_canonical() -> None:
    signed = good()
    canonical = b"\x65clock\x07"
    assert signed.data.count(canonical) == 1
    data = signed.data.replace(canonical, b"\x65clock\x18\x07")
    with pytest.raises(NonCanonical):
        verify(data, signed.sig)


def test_short_float_is_non_canonical() -> None:
    data64, sig = sign_map(base_map(body=1.5))
    assert b"\xfb" in data64
    verify(data64, sig)
    data16 = cbor2.dumps(_cbor2_map(base_map(body=1.5)), canonical=True)  # 1.5 as half float
    assert len(data16) < len(data64)
    with pytest.raises(NonCanonical):
        verify(data16, sig)


def test_indefinite_length_string_is_non_canonical() -> None:
    signed = good()
    canonical = b"\x64kind\x64note"
    assert signed.data.count(canonical) == 1
    data = signed.data.replace(canonical, b"\x64kind\x7f\x62no\x62te\xff")
    with pytest.raises(NonCanonical):
        verify(data, signed.sig)


# --- size and decoding -----------------------------------------------------------------


def test_oversize_is_refused_before_decoding() -> None:
    limit = DEFAULT_LIMITS.max_record_bytes
    with pytest.raises(RecordTooLarge):
        verify(b"\xff" * (limit + 1), b"")  # garbage, but size is checked first
    signed = good()
    with pytest.raises(RecordTooLarge):
        verify(signed.data, signed.sig, limits=Limits(max_record_bytes=len(signed.data) - 1))
    assert verify(signed.data, signed.sig, limits=Limits(max_record_bytes=len(signed.data)))


def test_build_refuses_an_oversize_record() -> None:
    with pytest.raises(RecordTooLarge):
        build_record(KEY, namespace="n", thread="t", kind="k", body=b"x" * 1_048_576)


@pytest.mark.parametrize(
    "data",
    [b"", b"\xff", b"\x1c", b"\xa1", b"\xa9\x61v", b"\x01\x02", "text", None, 42],
)
def test_undecodable_input_is_malformed(data: Any) -> None:
    with pytest.raises(Malformed):
        verify(data, good().sig)


def test_very_deep_nesting_is_refused_without_crashing() -> None:
    signed = build_record(KEY, namespace="n", thread="t", kind="k", body=0, now_ms=NOW)
    canonical = b"\x64body\x00"
    assert signed.data.count(canonical) == 1
    for depth in (300, 100_000):
        data = signed.data.replace(canonical, b"\x64body" + b"\x81" * depth + b"\x00")
        with pytest.raises(Malformed):
            verify(data, signed.sig)
    with pytest.raises(Malformed):
        verify(b"\x81" * 500_000 + b"\x00", signed.sig)


def test_bytearray_and_memoryview_data_are_accepted() -> None:
    signed = good()
    assert verify(bytearray(signed.data), signed.sig) == signed  # type: ignore[arg-type]
    assert verify(memoryview(signed.data), signed.sig) == signed  # type: ignore[arg-type]


# --- shape -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        [1, 2],
        "a record",
        {k: v for k, v in base_map().items() if k != "clock"},  # missing key
        {**base_map(), "extra": 1},  # extra key
        {**base_map(), "sig": b"\x00" * 64},  # the sig does not go inside
        base_map(v=2),
        base_map(v=0),
        base_map(v=True),
        base_map(v="1"),
        base_map(author=None),
        base_map(namespace=b"app"),
        base_map(thread=1),
        base_map(kind=["note"]),
        base_map(parents=None),
        base_map(parents=rid(1)),
        base_map(parents=[rid(1).raw]),  # bytes, not a link
        base_map(parents=[str(rid(1))]),
        base_map(clock=True),
        base_map(clock=1.0),
        base_map(ts=None),
        base_map(ts=float(NOW)),
    ],
)
def test_wrong_shape_is_record_invalid_even_when_signed(value: object) -> None:
    data, sig = sign_map(value)
    with pytest.raises(RecordInvalid):
        verify(data, sig)


def test_shape_is_checked_before_the_signature() -> None:
    signed = good()
    with pytest.raises(RecordInvalid, match="version"):
        verify(dagcbor_encode(base_map(v=2)), signed.sig)


# --- the id ----------------------------------------------------------------------------


def test_expected_cid_must_match() -> None:
    signed = good()
    assert verify(signed.data, signed.sig, expected_cid=signed.cid) == signed
    with pytest.raises(RecordInvalid, match="cid does not match content"):
        verify(signed.data, signed.sig, expected_cid=rid(99))
    # checked before the signature: a bad signature does not hide the mismatch
    with pytest.raises(RecordInvalid, match="cid does not match content"):
        verify(signed.data, b"\x00" * 64, expected_cid=rid(99))


# --- author ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "author",
    [
        "did:web:example.com",
        "did:key:zNotBase58!",
        "did:key:z6LSbysY2xFMRpGMhb7tFTLMpeuPRaqaWM1yECx2AtzE3KCc",  # X25519 key
        KEY.did + "#frag",
        "",
        "not a did",
    ],
)
def test_author_that_is_not_an_ed25519_did_key_is_did_invalid(author: str) -> None:
    data, sig = sign_map(base_map(author=author))
    with pytest.raises(DidInvalid):
        verify(data, sig)


def test_author_with_an_unusable_key_is_bad_signature() -> None:
    small_order = b"\x01" + b"\x00" * 31  # the identity point
    data, sig = sign_map(base_map(author=did_from_public_key(small_order)))
    with pytest.raises(BadSignature):
        verify(data, sig)


def test_record_signed_by_someone_else_than_its_author_is_bad_signature() -> None:
    data, sig = sign_map(base_map(author=KEY.did), key=OTHER)
    with pytest.raises(BadSignature):
        verify(data, sig)


# --- limits ----------------------------------------------------------------------------


def nested(depth: int) -> object:
    body: object = 0
    for i in range(depth):
        body = [body] if i % 2 else {"k": body}
    return body


def test_body_depth_limit() -> None:
    data, sig = sign_map(base_map(body=nested(32)))
    verify(data, sig)
    data, sig = sign_map(base_map(body=nested(33)))
    with pytest.raises(RecordInvalid, match="deeper"):
        verify(data, sig)
    with pytest.raises(RecordInvalid, match="deeper"):
        verify(*sign_map(base_map(body=nested(3))), limits=Limits(max_body_depth=2))
    # a wide but shallow body is fine; the depth of the deepest branch counts
    wide = {"a": [[[1]]], "b": nested(31), "c": list(range(1000))}
    verify(*sign_map(base_map(body=wide)))
    with pytest.raises(RecordInvalid):
        build_record(KEY, namespace="n", thread="t", kind="k", body=nested(33))


@pytest.mark.parametrize(
    "body",
    [
        {"/": "bafy"},
        {"/": {"bytes": "AAAA"}},
        {"x": [{"/": "anything", "z": 1}]},
        {"": 1, "/": "x"},  # "" sorts first: not reserved
        {"/": 1},  # not a string: not reserved
        {"/": {"bytes": 1}},
    ],
)
def test_bodies_dag_json_cannot_write_are_refused(body: dict[str, object]) -> None:
    data, sig = sign_map(base_map(body=body))
    try:
        dagjson_encode(body)
    except RecordInvalid:
        with pytest.raises(RecordInvalid, match="DAG-JSON"):
            verify(data, sig)
    else:
        assert verify(data, sig).record.body == body


def test_parents_limits() -> None:
    many = [rid(i) for i in range(65)]
    verify(*sign_map(base_map(parents=many[:64])))
    with pytest.raises(RecordInvalid, match="parents"):
        verify(*sign_map(base_map(parents=many)))
    with pytest.raises(RecordInvalid, match="repeat"):
        verify(*sign_map(base_map(parents=[rid(1), rid(2), rid(1)])))
    with pytest.raises(RecordInvalid, match="parents"):
        build_record(KEY, namespace="n", thread="t", kind="k", body=0, parents=many)
    with pytest.raises(RecordInvalid, match="repeat"):
        build_record(KEY, namespace="n", thread="t", kind="k", body=0, parents=[rid(1)] * 2)


@pytest.mark.parametrize(
    "parent",
    [
        CID.parse("QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG"),  # CIDv0 (dag-pb)
        CID(b"\x01\x55\x12\x20" + b"\x11" * 32),  # raw codec
        CID(b"\x01\x71\x00\x03abc"),  # identity hash
    ],
)
def test_a_parent_must_be_a_record_id(parent: CID) -> None:
    with pytest.raises(RecordInvalid, match="record id"):
        verify(*sign_map(base_map(parents=[parent])))


@pytest.mark.parametrize(
    "name",
    ["", "/abs", "a b", "tab\t", "ü", "a*", "semi;colon", "x" * 257, "new\nline", "a\\b"],
)
@pytest.mark.parametrize("field", ["namespace", "thread", "kind"])
def test_bad_names_are_record_invalid(field: str, name: str) -> None:
    with pytest.raises(RecordInvalid, match=field):
        verify(*sign_map(base_map(**{field: name})))
    names = {"namespace": "n", "thread": "t", "kind": "k", field: name}
    with pytest.raises(RecordInvalid, match=field):
        build_record(KEY, **names, body=0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "name", ["a", "x" * 256, "app/notes/2024", "did:key:z6Mk@x", "a+b-c.d_e", "-", "a/"]
)
def test_good_names_are_accepted(name: str) -> None:
    signed = verify(*sign_map(base_map(namespace=name, thread=name, kind=name)))
    assert signed.record.namespace == signed.record.thread == signed.record.kind == name


def test_name_length_limit_is_configurable() -> None:
    data, sig = sign_map(base_map(namespace="ns", thread="abcd", kind="k"))
    verify(data, sig, limits=Limits(max_name_len=4))
    with pytest.raises(RecordInvalid, match="thread"):
        verify(data, sig, limits=Limits(max_name_len=3))


@pytest.mark.parametrize(
    ("field", "value"),
    [("clock", -1), ("clock", MAX_SAFE_INT + 1), ("ts", -1), ("ts", 2**64 - 1)],
)
def test_clock_and_ts_ranges(field: str, value: int) -> None:
    with pytest.raises(RecordInvalid, match=field):
        verify(*sign_map(base_map(**{field: value})), now_ms=2**64)


def test_clock_at_max_safe_int_is_fine() -> None:
    assert verify(*sign_map(base_map(clock=MAX_SAFE_INT))).record.clock == MAX_SAFE_INT


def test_ts_from_the_future() -> None:
    limit = DEFAULT_LIMITS.max_future_ms
    verify(*sign_map(base_map(ts=NOW + limit)))
    data, sig = sign_map(base_map(ts=NOW + limit + 1))
    with pytest.raises(RecordFromFuture):
        verify(data, sig)
    # fine once the verifier's clock catches up: the only verdict that can change
    assert verify(data, sig, now_ms=NOW + 1).record.ts == NOW + limit + 1
    with pytest.raises(RecordFromFuture):
        build_record(
            KEY, namespace="n", thread="t", kind="k", body=0, ts=NOW + limit + 1, now_ms=NOW
        )
    # the past is fine, however far
    verify(*sign_map(base_map(ts=0)))


def test_future_ts_is_checked_after_signature_and_other_limits() -> None:
    signed = good()
    future = NOW + DEFAULT_LIMITS.max_future_ms + 1
    with pytest.raises(BadSignature):
        verify(dagcbor_encode(base_map(ts=future)), signed.sig)
    with pytest.raises(RecordInvalid):
        verify(*sign_map(base_map(ts=future, thread="")))


def test_limits_must_be_positive_ints() -> None:
    with pytest.raises(ValueError, match="max_parents"):
        Limits(max_parents=0)
    with pytest.raises(ValueError, match="max_record_bytes"):
        Limits(max_record_bytes=1.5)  # type: ignore[arg-type]


def test_build_refuses_values_dag_cbor_cannot_encode() -> None:
    for body in ({1, 2}, float("nan"), {1: "int key"}, object()):
        with pytest.raises(RecordInvalid):
            build_record(KEY, namespace="n", thread="t", kind="k", body=body)
    with pytest.raises(RecordInvalid):
        build_record(KEY, namespace="n", thread="t", kind="k", body=0, clock=True)
    with pytest.raises(RecordInvalid):
        build_record(KEY, namespace="n", thread="t", kind="k", body=0, parents=[b"x" * 36])  # type: ignore[list-item]


# --- wire ------------------------------------------------------------------------------


def stored(signed: SignedRecord, seq: int = 1) -> StoredRecord:
    return StoredRecord(seq=seq, **attrs.asdict(signed.to_new()))


def test_wire_round_trip_through_dag_cbor_and_dag_json() -> None:
    signed = good()
    item = record_to_wire(signed)
    assert item == {"cid": signed.cid, "data": signed.data, "sig": signed.sig}
    assert record_to_wire(stored(signed)) == item
    for codec in ((dagcbor_encode, dagcbor_decode), (dagjson_encode, dagjson_decode)):
        encode, decode = codec
        assert record_from_wire(decode(encode(item)), now_ms=NOW) == signed


def _item(**changes: object) -> dict[str, object]:
    item = record_to_wire(good())
    item.update(changes)
    return item


@pytest.mark.parametrize(
    "obj",
    [
        None,
        [1, 2, 3],
        "item",
        {"cid": good().cid, "data": good().data},
        {**record_to_wire(good()), "seq": 1},
        _item(cid=str(good().cid)),
        _item(cid=good().cid.raw),
        _item(data=good().data.hex()),
        _item(data=None),
        _item(sig=list(good().sig)),
        _item(sig=None),
    ],
)
def test_wire_item_of_wrong_shape_is_malformed(obj: object) -> None:
    with pytest.raises(Malformed):
        record_from_wire(obj, now_ms=NOW)


def test_wire_item_whose_cid_is_not_its_data_is_record_invalid() -> None:
    with pytest.raises(RecordInvalid, match="cid does not match"):
        record_from_wire(_item(cid=rid(5)), now_ms=NOW)


def test_wire_item_is_fully_verified() -> None:
    with pytest.raises(BadSignature):
        record_from_wire(_item(sig=OTHER.sign(good().cid.raw)), now_ms=NOW)
    data, sig = sign_map(base_map(ts=NOW + 10**9))
    with pytest.raises(RecordFromFuture):
        record_from_wire({"cid": cid_for_dagcbor(data), "data": data, "sig": sig}, now_ms=NOW)
    with pytest.raises(RecordInvalid):
        record_from_wire(_item(), now_ms=NOW, limits=Limits(max_parents=1))


# --- JSON view -------------------------------------------------------------------------


def test_json_view() -> None:
    signed = good()
    view = record_to_json_view(signed)
    assert json.loads(json.dumps(view)) == view  # plain JSON
    assert view == {
        "cid": str(signed.cid),
        "v": 1,
        "author": KEY.did,
        "namespace": "app/notes",
        "thread": "t1",
        "kind": "note",
        "body": {"text": "hello", "tags": ["a", "b"], "blob": {"/": {"bytes": "AAE"}}},
        "parents": [str(rid(1)), str(rid(2))],
        "clock": 7,
        "ts": NOW - 1000,
        "sig": view["sig"],
    }
    assert b64url_decode(str(view["sig"])) == signed.sig
    assert record_to_json_view(stored(signed)) == view
    # the body view is DAG-JSON: it decodes back to the body
    assert dagjson_decode(json.dumps(view["body"]).encode()) == signed.record.body


def test_json_view_of_links_and_floats_in_the_body() -> None:
    body = {"link": rid(3), "f": 1.5, "big": 2.0**53, "n": -(2**64)}
    data, sig = sign_map(base_map(body=body))
    view = record_to_json_view(verify(data, sig))
    assert view["body"] == {"link": {"/": str(rid(3))}, "f": 1.5, "big": 2.0**53, "n": -(2**64)}
    assert type(view["body"]["big"]) is float  # type: ignore[index]


# --- properties ------------------------------------------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64 - 1)
    # Whole-number floats within ±(2**53-1) are refused in records (protocol.md §5.4).
    | st.floats(allow_nan=False, allow_infinity=False).filter(
        lambda f: not (abs(f) <= MAX_SAFE_INT and f.is_integer())
    )
    | st.text(max_size=20)
    | st.binary(max_size=20)
    | st.binary(min_size=32, max_size=32).map(lambda d: CID(b"\x01\x71\x12\x20" + d))
)
bodies = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8).filter(lambda k: k != "/"), inner, max_size=4)
    ),
    max_leaves=12,
)
names = st.text(alphabet=NAME_CHARS, min_size=1, max_size=40).filter(lambda s: s[0] != "/")
parent_lists = st.lists(
    st.binary(min_size=32, max_size=32).map(lambda d: CID(b"\x01\x71\x12\x20" + d)),
    max_size=6,
    unique=True,
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    namespace=names,
    thread=names,
    kind=names,
    body=bodies,
    parents=parent_lists,
    clock=st.integers(min_value=0, max_value=MAX_SAFE_INT),
    ts=st.integers(min_value=0, max_value=NOW + DEFAULT_LIMITS.max_future_ms),
)
def test_property_build_verify_round_trip(
    namespace: str,
    thread: str,
    kind: str,
    body: object,
    parents: list[CID],
    clock: int,
    ts: int,
) -> None:
    signed = build_record(
        KEY,
        namespace=namespace,
        thread=thread,
        kind=kind,
        body=body,
        parents=parents,
        clock=clock,
        ts=ts,
        now_ms=NOW,
    )
    back = verify(signed.data, signed.sig, expected_cid=signed.cid)
    assert back.record == signed.record
    assert back == signed
    assert back.record.body == body
    assert back.record.parents == tuple(parents)
    assert (
        record_from_wire(dagcbor_decode(dagcbor_encode(record_to_wire(back))), now_ms=NOW) == back
    )
    json.dumps(record_to_json_view(back))


_FIXED = [
    good(),
    build_record(KEY, namespace="n", thread="t", kind="k", body=None, now_ms=NOW),
    build_record(
        OTHER,
        namespace="a:b@c",
        thread="x" * 30,
        kind="k",
        body={"nested": [[{"deep": [1.5, -3, b"\xff" * 30, rid(9)]}]], "": ""},
        parents=[rid(i) for i in range(5)],
        clock=2**40,
        now_ms=NOW,
    ),
]


@settings(max_examples=300, deadline=None)
@given(which=st.sampled_from(range(len(_FIXED))), data=st.data())
def test_property_any_single_byte_flip_is_rejected(which: int, data: st.DataObject) -> None:
    signed = _FIXED[which]
    index = data.draw(st.integers(min_value=0, max_value=len(signed.data) - 1))
    mask = data.draw(st.integers(min_value=1, max_value=255))
    flipped = bytearray(signed.data)
    flipped[index] ^= mask
    with pytest.raises(FedpeerError):
        verify(bytes(flipped), signed.sig)
    with pytest.raises(FedpeerError):
        record_from_wire({"cid": signed.cid, "data": bytes(flipped), "sig": signed.sig})


@settings(max_examples=150, deadline=None)
@given(blob=st.binary(max_size=300))
def test_property_random_bytes_never_crash(blob: bytes) -> None:
    with pytest.raises(FedpeerError):
        verify(blob, _FIXED[0].sig)


# --- floats (protocol.md §5.4) -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "float_hex", "integer"),
    [(1.0, "fb3ff0000000000000", 1), (-0.0, "fb8000000000000000", 0)],
    ids=["1.0", "-0.0"],
)
def test_whole_number_floats_are_refused_naming_the_path(
    value: float, float_hex: str, integer: int
) -> None:
    """protocol.md §5.4: the exact float bytes fb3ff0000000000000 (1.0) and
    fb8000000000000000 (-0.0) in a signed record: RECORD_INVALID naming the path."""
    data, sig = sign_map(base_map(body={"a": [1, 2, value]}))
    assert bytes.fromhex(float_hex) in data  # the float is really on the wire
    with pytest.raises(RecordInvalid) as info:
        verify(data, sig)
    message = info.value.message
    assert message.startswith("body.a[2] is the float")
    assert f"write it as the integer {integer}" in message
    # the batch pipeline gives the very same verdict
    (verdict,) = verify_wire_items([record_to_wire_raw(data, sig)], now_ms=NOW)
    assert isinstance(verdict, RecordInvalid)
    assert verdict.message == message
    # and a signature check still comes first: a tampered record is BAD_SIGNATURE
    with pytest.raises(BadSignature):
        verify(data, bytes(64))


def record_to_wire_raw(data: bytes, sig: bytes) -> dict[str, object]:
    return {"cid": cid_for_dagcbor(data), "data": data, "sig": sig}


@pytest.mark.parametrize(
    ("body", "path"),
    [
        (1.0, "body"),
        (0.0, "body"),
        ({"x": -0.0}, "body.x"),
        ({"x y": {"z": [[5.0]]}}, 'body["x y"].z[0][0]'),
        ([1.5, {"_a$": 9007199254740991.0}], "body[1]._a$"),
        ({"b": 2.0, "a": 3.0}, "body.a"),  # the first in canonical (stored) key order
    ],
)
def test_build_record_refuses_whole_number_floats(body: object, path: str) -> None:
    """protocol.md §5.4: build_record refuses them too, with the same path rule."""
    with pytest.raises(RecordInvalid) as info:
        build_record(KEY, namespace="n", thread="t", kind="k", body=body, now_ms=NOW)
    assert info.value.message.startswith(f"{path} is the float")


@pytest.mark.parametrize(
    "value", [1.5, -0.5, 2.0**53, -(2.0**53), 1e300, 5e-324, 9007199254740993.0]
)
def test_fractions_and_floats_beyond_safe_integers_are_allowed(value: float) -> None:
    """protocol.md §5.4: only whole numbers within ±(2**53-1) are refused; JavaScript
    keeps every other double a float, so it round-trips."""
    signed = build_record(KEY, namespace="n", thread="t", kind="k", body=[value], now_ms=NOW)
    again = verify(signed.data, signed.sig)
    assert again.record.body == [value]
    assert type(again.record.body[0]) is float  # type: ignore[index]
