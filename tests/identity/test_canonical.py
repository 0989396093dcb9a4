"""Canonical codecs: JCS, DAG-CBOR, DAG-JSON, CIDs, base64url.

Known-answer unit tests plus hypothesis properties: round trips, and refusal of
every non-canonical encoding of a generated value (each produced by a small
reference emitter below that can deviate from the canonical form at one chosen
node). Cross-implementation vectors live in ``interop/``.
"""

from __future__ import annotations

import collections
import datetime
import decimal
import enum
import hashlib
import json
import math
import struct
import types
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fedpeer.errors import Malformed, NonCanonical, RecordInvalid
from fedpeer.identity import _dagcbor
from fedpeer.identity._dagjson import es6_number
from fedpeer.identity.canonical import (
    CID,
    DAG_CBOR,
    MAX_DEPTH,
    SHA2_256,
    b64url_decode,
    b64url_encode,
    cid_for_dagcbor,
    dagcbor_decode,
    dagcbor_encode,
    dagjson_decode,
    dagjson_encode,
    jcs,
)

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

RECORD_CID = cid_for_dagcbor(b"hello")
RECORD_CID_TEXT = "bafyreibm6jg3ux5qumhcn2b3flc3tyu6dmlb4xa7u5bf44yegnrjhc4yeq"
V0_TEXT = "QmQg1v4o9xdT3Q14wh4S7dxZkDjyZ9ssFzFzyep1YrVJBY"  # from the IPLD fixtures
RAW_SHA256_TEXT = "bafkreiebzrnroamgos2adnbpgw5apo3z4iishhbdx77gldnbk57d4zdio4"
IDENTITY_TEXT = "bafkqabiaaebagba"  # raw codec, identity multihash


# --- base64url ---------------------------------------------------------------------------

RFC4648 = [
    (b"", ""),
    (b"f", "Zg"),
    (b"fo", "Zm8"),
    (b"foo", "Zm9v"),
    (b"foob", "Zm9vYg"),
    (b"fooba", "Zm9vYmE"),
    (b"foobar", "Zm9vYmFy"),
    (b"\xfb\xff", "-_8"),  # the two URL-safe characters
]


@pytest.mark.parametrize(("raw", "text"), RFC4648, ids=[t or "empty" for _, t in RFC4648])
def test_b64url_known_answers(raw: bytes, text: str) -> None:
    assert b64url_encode(raw) == text
    assert b64url_decode(text) == raw


@pytest.mark.parametrize(
    "bad",
    [
        "Zg==",  # padding
        "Zg=",
        "Zm9v\n",  # whitespace
        " Zm9v",
        "Zm 9v",
        "+/8",  # standard alphabet
        "Z",  # impossible length
        "Zm9vY",
        "Zh",  # non-zero unused bits ("Zg" is the canonical spelling of b"f")
        "Zm9",  # ditto ("Zm8")
        "Zm9v٣",  # a Unicode digit
        "Zm9vÿ",
    ],
)
def test_b64url_rejects(bad: str) -> None:
    with pytest.raises(Malformed):
        b64url_decode(bad)


def test_b64url_rejects_non_str() -> None:
    with pytest.raises(Malformed):
        b64url_decode(b"Zm9v")  # type: ignore[arg-type]


@SETTINGS
@given(st.binary(max_size=100))
def test_b64url_round_trip(raw: bytes) -> None:
    text = b64url_encode(raw)
    assert "=" not in text
    assert b64url_decode(text) == raw


# --- CID ---------------------------------------------------------------------------------


def test_cid_for_dagcbor_matches_the_spec_layout() -> None:
    cid = cid_for_dagcbor(b"hello")
    assert cid.raw == b"\x01\x71\x12\x20" + hashlib.sha256(b"hello").digest()
    assert (cid.version, cid.codec) == (1, DAG_CBOR)
    assert cid.multihash[:2] == bytes([SHA2_256, 32])
    assert cid.digest == hashlib.sha256(b"hello").digest()
    assert str(cid) == RECORD_CID_TEXT
    assert repr(cid) == f"CID({RECORD_CID_TEXT!r})"
    assert bytes(cid) == cid.raw


def test_cid_matches_multiformats() -> None:
    from multiformats import CID as MfCID
    from multiformats import multihash

    data = b"some block"
    theirs = MfCID("base32", 1, "dag-cbor", multihash.digest(data, "sha2-256"))
    assert str(cid_for_dagcbor(data)) == str(theirs)
    assert cid_for_dagcbor(data).raw == bytes(theirs)


@pytest.mark.parametrize(
    "text",
    [
        RECORD_CID_TEXT,
        RECORD_CID_TEXT.upper(),  # base32upper, via multiformats
        "B" + RECORD_CID_TEXT[1:].upper(),
        "zdpuAtX7ZibcWdSKQwiDCkPjWwRvtcKCPku9H7LhgA4qJW4Wk",  # base58btc v1 (fixtures)
    ],
)
def test_cid_parse_text_forms(text: str) -> None:
    cid = CID.parse(text)
    assert CID.parse(str(cid)) == cid
    assert str(cid).startswith("b")


def test_cid_parse_other_multibases() -> None:
    from multiformats import multibase

    for base in ("base64url", "base58btc", "base32upper", "base16", "base36"):
        assert CID.parse(multibase.encode(RECORD_CID.raw, base)) == RECORD_CID


def test_cid_v0() -> None:
    cid = CID.parse(V0_TEXT)
    assert cid.version == 0
    assert cid.codec == 0x70
    assert len(cid.raw) == 34
    assert str(cid) == V0_TEXT
    assert cid.multihash == cid.raw
    assert CID.parse(cid.raw) == cid


def test_cid_other_codecs_and_hashes() -> None:
    raw_cid = CID.parse(RAW_SHA256_TEXT)
    assert (raw_cid.version, raw_cid.codec) == (1, 0x55)
    identity = CID.parse(IDENTITY_TEXT)
    assert identity.multihash[0] == 0x00
    assert identity.digest == b"\x00\x01\x02\x03\x04"
    assert str(identity) == IDENTITY_TEXT


def test_cid_parse_bytes_and_passthrough() -> None:
    assert CID.parse(RECORD_CID.raw) == RECORD_CID
    assert CID.parse(bytearray(RECORD_CID.raw)) == RECORD_CID
    assert CID.parse(memoryview(RECORD_CID.raw)) == RECORD_CID
    assert CID.parse(RECORD_CID) is RECORD_CID


def test_cid_value_semantics() -> None:
    a, b = cid_for_dagcbor(b"a"), cid_for_dagcbor(b"b")
    assert CID(a.raw) == a
    assert hash(CID(a.raw)) == hash(a)
    assert len({a, CID(a.raw), b}) == 2
    assert sorted([b, a]) == sorted([a, b])
    assert (a < b) == (a.raw < b.raw)
    with pytest.raises(AttributeError):
        a.raw = b.raw  # type: ignore[misc]


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x01",  # truncated after the version
        b"\x01\x71\x12",  # truncated multihash
        b"\x01\x71\x12\x20" + bytes(31),  # digest too short
        b"\x01\x71\x12\x20" + bytes(33),  # digest too long
        b"\x02\x71\x12\x20" + bytes(32),  # version 2
        b"\x00\x71\x12\x20" + bytes(32),  # version 0 in v1 layout
        b"\x81\x00\x71\x12\x20" + bytes(32),  # non-minimal version varint
        b"\x01\xf1\x00\x12\x20" + bytes(32),  # non-minimal codec varint
        b"\x01" + b"\xff" * 9 + b"\x01\x12\x20" + bytes(32),  # varint over 9 bytes
        b"\x12\x20" + bytes(31),  # CIDv0 too short
    ],
)
def test_cid_rejects_bad_bytes(raw: bytes) -> None:
    with pytest.raises(Malformed):
        CID(raw)
    with pytest.raises(Malformed):
        CID.parse(raw)


@pytest.mark.parametrize(
    "text",
    ["", "b", "bafy!", "hello", "Qm" + "0" * 44, "z0OIl", "x" * 2000, RECORD_CID_TEXT[:-2]],
)
def test_cid_rejects_bad_text(text: str) -> None:
    with pytest.raises(Malformed):
        CID.parse(text)


def test_cid_rejects_non_bytes() -> None:
    with pytest.raises(Malformed):
        CID(RECORD_CID_TEXT)  # type: ignore[arg-type]
    with pytest.raises(Malformed):
        CID.parse(42)  # type: ignore[arg-type]


# --- DAG-CBOR: known answers ---------------------------------------------------------------

KNOWN: list[tuple[object, str]] = [
    (0, "00"),
    (23, "17"),
    (24, "1818"),
    (255, "18ff"),
    (256, "190100"),
    (65535, "19ffff"),
    (65536, "1a00010000"),
    (2**32 - 1, "1affffffff"),
    (2**32, "1b0000000100000000"),
    (2**64 - 1, "1bffffffffffffffff"),
    (-1, "20"),
    (-24, "37"),
    (-25, "3818"),
    (-(2**64), "3bffffffffffffffff"),
    (1.5, "fb3ff8000000000000"),
    (1.0, "fb3ff0000000000000"),  # a float stays a float, always 64-bit
    (0.0, "fb0000000000000000"),
    (-0.0, "fb8000000000000000"),
    (True, "f5"),
    (False, "f4"),
    (None, "f6"),
    ("", "60"),
    ("a", "6161"),
    ("ü", "62c3bc"),
    (b"", "40"),
    (b"\x01\x02", "420102"),
    ([], "80"),
    ({}, "a0"),
    ([1, [2, 3]], "8201820203"),
    ({"b": 1, "a": 2, "aa": 3}, "a3616102616201626161 03".replace(" ", "")),
    ({"aa": 1, "b": 2}, "a261620262616101"),  # length first: "b" before "aa"
    ({"z": None, "a": {"y": [], "b": b""}}, "a26161a2616240617980617af6"),
]


@pytest.mark.parametrize(("value", "hex_"), KNOWN, ids=[h for _, h in KNOWN])
def test_dagcbor_known_answers(value: object, hex_: str) -> None:
    data = bytes.fromhex(hex_)
    assert dagcbor_encode(value) == data
    decoded = dagcbor_decode(data)
    assert decoded == value
    assert type(decoded) is type(value)
    if isinstance(value, float):
        assert math.copysign(1, decoded) == math.copysign(1, value)  # type: ignore[arg-type]


def test_dagcbor_cid_is_tag_42() -> None:
    data = dagcbor_encode({"link": RECORD_CID})
    assert data == bytes.fromhex("a1646c696e6bd82a582500") + RECORD_CID.raw
    assert dagcbor_decode(data) == {"link": RECORD_CID}
    v0 = CID.parse(V0_TEXT)
    assert dagcbor_encode(v0) == bytes.fromhex("d82a582300") + v0.raw
    assert dagcbor_decode(dagcbor_encode([v0])) == [v0]


@pytest.mark.parametrize("length", [23, 24, 255, 256, 65535, 65536])
def test_dagcbor_long_strings_and_lists(length: int) -> None:
    for value in ("x" * length, b"x" * length, [0] * length):
        data = dagcbor_encode(value)
        assert dagcbor_decode(data) == value
        info = data[0] & 0x1F
        assert info == (
            length if length < 24 else 24 if length < 256 else 25 if length < 65536 else 26
        )


def test_dagcbor_tuples_and_subclasses_encode_as_base_types() -> None:
    class Colour(enum.IntEnum):
        RED = 3

    class Name(enum.StrEnum):
        ADA = "ada"

    plain = dagcbor_encode({"n": 3, "s": "ada", "l": [1, 2], "b": b"xy", "m": {"k": 1.5}})
    fancy = dagcbor_encode(
        collections.OrderedDict(
            [
                ("s", Name.ADA),
                ("n", Colour.RED),
                ("l", (1, 2)),
                ("b", bytearray(b"xy")),
                ("m", types.MappingProxyType({"k": 1.5})),
            ]
        )
    )
    assert fancy == plain
    assert dagcbor_encode(memoryview(b"xy")) == dagcbor_encode(b"xy")
    assert dagcbor_decode(dagcbor_encode((1, (2,)))) == [1, [2]]


def test_dagcbor_key_order_is_independent_of_insertion_order() -> None:
    keys = ["b", "a", "aa", "ab", "B", "", "ü", "zz", "aaa"]
    forward = dagcbor_encode({k: 1 for k in keys})
    backward = dagcbor_encode({k: 1 for k in reversed(keys)})
    assert forward == backward
    decoded = dagcbor_decode(forward)
    assert isinstance(decoded, dict)
    assert list(decoded) == ["", "B", "a", "b", "aa", "ab", "zz", "ü", "aaa"]


@pytest.mark.parametrize(
    "value",
    [
        math.nan,
        math.inf,
        -math.inf,
        [1.0, math.nan],
        2**64,
        -(2**64) - 1,
        {1: "int key"},
        {b"k": "bytes key"},
        {None: 1},
        {("a",): 1},
        {1, 2},
        frozenset(),
        object(),
        1j,
        decimal.Decimal("1.5"),
        datetime.datetime(2026, 1, 1),
        "\ud800",
        {"\udfff": 1},
        ["ok", "\ud83d"],
    ],
    ids=repr,
)
def test_dagcbor_encode_refuses(value: object) -> None:
    with pytest.raises(RecordInvalid):
        dagcbor_encode(value)
    with pytest.raises(RecordInvalid):
        dagjson_encode(value)


def _nested(levels: int, leaf: object = 0) -> object:
    value = leaf
    for _ in range(levels):
        value = [value]
    return value


def test_depth_limit_is_the_same_both_ways() -> None:
    deepest = _nested(MAX_DEPTH)
    data = dagcbor_encode(deepest)
    assert data == b"\x81" * MAX_DEPTH + b"\x00"
    assert dagcbor_decode(data) == deepest
    assert dagjson_decode(dagjson_encode(deepest)) == deepest
    with pytest.raises(RecordInvalid):
        dagcbor_encode(_nested(MAX_DEPTH + 1))
    with pytest.raises(RecordInvalid):
        dagjson_encode(_nested(MAX_DEPTH + 1))
    with pytest.raises(Malformed):
        dagcbor_decode(b"\x81" * (MAX_DEPTH + 1) + b"\x00")
    with pytest.raises(Malformed):
        dagcbor_decode(b"\x81" * MAX_DEPTH + b"\x80")  # the empty list is level MAX_DEPTH+1
    with pytest.raises(Malformed):
        dagcbor_decode(b"\xa1\x61a" * (MAX_DEPTH + 1) + b"\x00")
    with pytest.raises(Malformed):
        dagcbor_decode(b"\x81" * 100_000 + b"\x00")  # no RecursionError, no crash


def test_cycles_are_refused() -> None:
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(RecordInvalid):
        dagcbor_encode(loop)
    with pytest.raises(RecordInvalid):
        dagjson_encode(loop)


# --- DAG-CBOR: decoder refusals ------------------------------------------------------------

MALFORMED: list[tuple[str, str]] = [
    ("", "empty"),
    ("1c", "reserved additional info 28"),
    ("18", "truncated integer"),
    ("6261", "truncated string"),
    ("82 01", "truncated array"),
    ("0000", "trailing byte"),
    ("a0 ff", "trailing break"),
    ("f7", "undefined"),
    ("f0", "simple value 16"),
    ("f820", "simple value 32"),
    ("fb7ff8000000000000", "NaN"),
    ("fb7ff0000000000000", "Infinity"),
    ("fbfff0000000000000", "-Infinity"),
    ("f97e00", "half-precision NaN"),
    ("fa7f800000", "single-precision Infinity"),
    ("c074323031332d30332d32315432303a30343a30305a", "tag 0 datetime"),
    ("c100", "tag 1 epoch"),
    ("c24101", "tag 2 bignum"),
    ("c349010000000000000000", "tag 3 bignum beyond 64 bits"),
    ("c2490100000000000000 00".replace(" ", ""), "tag 2 bignum, 9 bytes"),
    ("d81c8100", "tag 28 shareable"),
    ("d81c81d81d00", "tag 28/29 cyclic reference"),
    ("d9d9f700", "tag 55799 self-describe"),
    ("d9010063616263", "tag 256 stringref namespace"),
    ("d8258f", "tag 37 uuid, truncated"),
    ("d82b4100", "tag 43"),
    ("d82a6161", "tag 42 with text"),
    ("d82a420171", "tag 42 without the 0x00 prefix"),
    ("d82a4100", "tag 42 with no CID"),
    ("d82a4500017112 20".replace(" ", ""), "tag 42 with a truncated CID"),
    ("d82ad82a4100", "tag 42 inside tag 42"),
    ("a10102", "integer map key"),
    ("a1416102", "bytes map key"),
    ("a18002", "array map key"),
    ("a1f602", "null map key"),
    ("62c328", "invalid UTF-8"),
    ("61ff", "invalid UTF-8 byte"),
    ("7f61c361a9ff", "UTF-8 split across indefinite chunks"),
    ("ff", "lone break"),
    ("9f01", "unterminated indefinite array"),
]


@pytest.mark.parametrize(("hex_", "why"), MALFORMED, ids=[w for _, w in MALFORMED])
def test_dagcbor_decode_malformed(hex_: str, why: str) -> None:
    with pytest.raises(Malformed):
        dagcbor_decode(bytes.fromhex(hex_.replace(" ", "")))


NON_CANONICAL: list[tuple[str, str, str]] = [
    ("1817", "int 23 in 1 byte", "shortest form"),
    ("190017", "int 23 in 2 bytes", "shortest form"),
    ("1900ff", "int 255 in 2 bytes", "shortest form"),
    ("1a0000ffff", "int 65535 in 4 bytes", "shortest form"),
    ("1b00000000ffffffff", "int 2**32-1 in 8 bytes", "shortest form"),
    ("3817", "negative int in 1 byte", "shortest form"),
    ("5800", "empty bytes with 1-byte length", "shortest form"),
    ("780161", "text with 1-byte length", "shortest form"),
    ("980100", "array with 1-byte length", "shortest form"),
    ("b800", "map with 1-byte length", "shortest form"),
    ("d9002a582500" + RECORD_CID.raw.hex(), "tag 42 in 2 bytes", "shortest form"),
    ("d82a59002500" + RECORD_CID.raw.hex(), "CID length in 2 bytes", "shortest form"),
    ("f93c00", "half float", "16-bit float"),
    ("fa3fc00000", "single float", "32-bit float"),
    ("f90000", "half zero", "16-bit float"),
    ("5fff", "indefinite bytes", "indefinite"),
    ("5f4101ff", "indefinite bytes, one chunk", "indefinite"),
    ("7fff", "indefinite text", "indefinite"),
    ("9fff", "indefinite array", "indefinite"),
    ("9f01ff", "indefinite array, one item", "indefinite"),
    ("bfff", "indefinite map", "indefinite"),
    ("a2616201616102", "keys b, a", "out of order"),
    ("a2626161016162 02".replace(" ", ""), "keys aa, b (length first)", "out of order"),
    ("a26161016161 01".replace(" ", ""), "duplicate key, same value", "duplicate map key"),
    ("a3636261720363666f6f0163666f6f02", "duplicate key (IPLD fixture)", "duplicate map key"),
    ("81a2616101616102", "nested duplicate key", "duplicate map key"),
]


@pytest.mark.parametrize(
    ("hex_", "why", "message"), NON_CANONICAL, ids=[w for _, w, _ in NON_CANONICAL]
)
def test_dagcbor_decode_non_canonical(hex_: str, why: str, message: str) -> None:
    with pytest.raises(NonCanonical) as info:
        dagcbor_decode(bytes.fromhex(hex_))
    assert message in info.value.message
    assert "byte" in info.value.message  # says where


def test_dagcbor_decode_input_types() -> None:
    data = dagcbor_encode({"a": 1})
    assert dagcbor_decode(bytearray(data)) == {"a": 1}
    assert dagcbor_decode(memoryview(data)) == {"a": 1}
    with pytest.raises(Malformed):
        dagcbor_decode("a1616101")  # type: ignore[arg-type]


def test_dagcbor_decode_returns_fresh_mutable_values() -> None:
    data = dagcbor_encode({"l": [1], "m": {}})
    first = dagcbor_decode(data)
    assert isinstance(first, dict)
    first["l"].append(2)
    assert dagcbor_decode(data) == {"l": [1], "m": {}}


# --- hypothesis: the data model ------------------------------------------------------------

FIXTURE_CIDS = [
    RECORD_CID,
    CID.parse(V0_TEXT),
    CID.parse(RAW_SHA256_TEXT),
    CID.parse(IDENTITY_TEXT),
]
cids = st.one_of(
    st.binary(min_size=32, max_size=32).map(lambda d: CID(b"\x01\x71\x12\x20" + d)),
    st.sampled_from(FIXTURE_CIDS),
)
ints = st.one_of(
    st.integers(-(2**64), 2**64 - 1),
    st.sampled_from([0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1, -(2**64)]),
)
floats = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.5, -1.5, 2.0, 65504.0, 1e10, 0.1, -0.0]),  # fit in 16/32 bits or not
)


def _values(keys: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        ints,
        floats,
        st.text(max_size=40),
        st.binary(max_size=40),
        cids,
    )
    return st.recursive(
        scalars,
        lambda children: st.one_of(
            st.lists(children, max_size=6),
            st.dictionaries(keys, children, max_size=6),
        ),
        max_leaves=25,
    )


values = _values(st.text(max_size=12))
# DAG-JSON reserves maps whose first key is "/"; keep "/" out of generated keys.
json_safe_values = _values(st.text(max_size=12).filter(lambda k: k != "/"))


@SETTINGS
@given(values)
def test_dagcbor_round_trip(value: Any) -> None:
    data = dagcbor_encode(value)
    decoded = dagcbor_decode(data)
    assert decoded == value
    assert dagcbor_encode(decoded) == data


@SETTINGS
@given(json_safe_values)
def test_dagjson_round_trip(value: Any) -> None:
    text = dagjson_encode(value)
    decoded = dagjson_decode(text)
    assert decoded == value
    # Same value down to float signs and int/float kinds: the DAG-CBOR bytes agree.
    assert dagcbor_encode(decoded) == dagcbor_encode(value)
    assert dagjson_encode(decoded) == text
    json.loads(text)  # plain JSON too


# --- hypothesis: every non-canonical variant is refused ------------------------------------

NON_CANONICAL_KINDS = {"wide", "wide_tag", "indef", "unsorted", "dup", "half", "single"}
MALFORMED_KINDS = {"wrap_self_describe", "wrap_unknown_tag", "wrong_tag"}


def _head(major: int, n: int, wide: bool = False) -> bytes:
    """A CBOR head; ``wide`` uses the next larger argument size (never minimal)."""
    mt = major << 5
    if not wide:
        return _dagcbor._head(major, n)
    if n < 24:
        return bytes([mt | 24, n])
    if n < 0x100:
        return struct.pack(">BH", mt | 25, n)
    if n < 0x10000:
        return struct.pack(">BI", mt | 26, n)
    return struct.pack(">BQ", mt | 27, n)


def _fits(fmt: str, f: float) -> bool:
    try:
        back: float = struct.unpack(fmt, struct.pack(fmt, f))[0]
    except (OverflowError, struct.error):
        return False
    return back == f and math.copysign(1, back) == math.copysign(1, f)


def _arg(v: object) -> int:
    """The head argument a node will have."""
    if isinstance(v, bool) or v is None or isinstance(v, float):
        return -1
    if isinstance(v, int):
        return v if v >= 0 else -1 - v
    if isinstance(v, str):
        return len(v.encode())
    if isinstance(v, CID):
        return len(v.raw) + 1
    assert isinstance(v, bytes | list | dict)
    return len(v)


def _kinds(v: object) -> set[str]:
    kinds = {"wrap_self_describe", "wrap_unknown_tag"}
    if 0 <= _arg(v) < 2**32:
        kinds.add("wide")
    if isinstance(v, float):
        kinds |= {k for k, fmt in (("half", ">e"), ("single", ">f")) if _fits(fmt, v)}
    if isinstance(v, str | bytes | list | dict):
        kinds.add("indef")
    if isinstance(v, dict) and v:
        kinds.add("dup")
        if len(v) > 1:
            kinds.add("unsorted")
    if isinstance(v, CID):
        kinds |= {"wide_tag", "wrong_tag"}
    return kinds


class Emitter:
    """Reference CBOR writer that deviates from DAG-CBOR at node ``target`` (pre-order).

    With ``target=-1`` it writes canonical DAG-CBOR and records each node's
    applicable deviations in ``kinds`` (map keys are nodes too).
    """

    def __init__(self, target: int = -1, kind: str = "") -> None:
        self.target, self.kind, self.index = target, kind, -1
        self.kinds: list[set[str]] = []

    def emit(self, v: object) -> bytes:
        self.index += 1
        self.kinds.append(_kinds(v))
        kind = self.kind if self.index == self.target else ""
        if kind == "wrap_self_describe":
            return b"\xd9\xd9\xf7" + self._body(v, "")
        if kind == "wrap_unknown_tag":
            return b"\xd9\x03\xe8" + self._body(v, "")  # tag 1000
        return self._body(v, kind)

    def _body(self, v: object, kind: str) -> bytes:
        wide = kind == "wide"
        if v is None:
            return b"\xf6"
        if isinstance(v, bool):
            return b"\xf5" if v else b"\xf4"
        if isinstance(v, int):
            return _head(0, v, wide) if v >= 0 else _head(1, -1 - v, wide)
        if isinstance(v, float):
            if kind == "half":
                return b"\xf9" + struct.pack(">e", v)
            if kind == "single":
                return b"\xfa" + struct.pack(">f", v)
            return b"\xfb" + struct.pack(">d", v)
        if isinstance(v, str | bytes):
            major, raw = (3, v.encode()) if isinstance(v, str) else (2, v)
            if kind == "indef":
                return bytes([(major << 5) | 31]) + _head(major, len(raw)) + raw + b"\xff"
            return _head(major, len(raw), wide) + raw
        if isinstance(v, CID):
            tag = {"wrong_tag": b"\xd8\x2b", "wide_tag": b"\xd9\x00\x2a"}.get(kind, b"\xd8\x2a")
            content = b"\x00" + v.raw
            return tag + _head(2, len(content), wide) + content
        if isinstance(v, list):
            items = b"".join([self.emit(x) for x in v])
            return b"\x9f" + items + b"\xff" if kind == "indef" else _head(4, len(v), wide) + items
        assert isinstance(v, dict)
        entries = sorted(v.items(), key=lambda kv: (len(kv[0].encode()), kv[0].encode()))
        if kind == "unsorted":
            entries.reverse()
        if kind == "dup":
            entries.insert(0, entries[0])
        body = b"".join([self.emit(k) + self.emit(x) for k, x in entries])
        return b"\xbf" + body + b"\xff" if kind == "indef" else _head(5, len(entries), wide) + body


@SETTINGS
@given(values, st.data())
def test_every_non_canonical_variant_is_refused(value: Any, data: st.DataObject) -> None:
    reference = Emitter()
    canonical = reference.emit(value)
    assert canonical == dagcbor_encode(value)  # the reference writer agrees with ours

    available = sorted(set().union(*reference.kinds))
    kind = data.draw(st.sampled_from(available), label="kind")
    target = data.draw(
        st.sampled_from([i for i, ks in enumerate(reference.kinds) if kind in ks]), label="node"
    )
    event(kind)
    variant = Emitter(target, kind).emit(value)
    assert variant != canonical

    expected = NonCanonical if kind in NON_CANONICAL_KINDS else Malformed
    assert kind in NON_CANONICAL_KINDS | MALFORMED_KINDS
    with pytest.raises(expected):
        dagcbor_decode(variant)


@SETTINGS
@given(values, st.data())
def test_damaged_bytes_never_crash(value: Any, data: st.DataObject) -> None:
    """A flipped, dropped or added byte gives a clean error or another canonical value."""
    encoded = bytearray(dagcbor_encode(value))
    i = data.draw(st.integers(0, len(encoded) - 1), label="offset")
    how = data.draw(st.sampled_from(["flip", "drop", "insert", "truncate"]), label="how")
    if how == "flip":
        encoded[i] ^= data.draw(st.integers(1, 255), label="mask")
    elif how == "drop":
        del encoded[i]
    elif how == "insert":
        encoded.insert(i, data.draw(st.integers(0, 255), label="byte"))
    else:
        del encoded[i:]
    damaged = bytes(encoded)
    try:
        decoded = dagcbor_decode(damaged)
    except (Malformed, NonCanonical):
        return
    assert dagcbor_encode(decoded) == damaged  # accepted only if it is itself canonical


@SETTINGS
@given(st.binary(max_size=48))
def test_random_bytes_never_crash(blob: bytes) -> None:
    try:
        decoded = dagcbor_decode(blob)
    except (Malformed, NonCanonical):
        return
    assert dagcbor_encode(decoded) == blob


# --- DAG-JSON ------------------------------------------------------------------------------


def test_dagjson_forms() -> None:
    value = {
        "bytes": b"\x00\x01\xfe\xff",
        "link": RECORD_CID,
        "v0": CID.parse(V0_TEXT),
        "int": 9007199254740993,
        "big": 2**64 - 1,
        "neg": -(2**64),
        "float": 1.0,
        "zero": -0.0,
        "exp": 1e21,
        "tiny": 5e-324,
        "str": 'é"\\\n\u2028',
        "list": [None, True, False],
    }
    text = dagjson_encode(value)
    assert (
        text
        == (
            '{"big":18446744073709551615,"bytes":{"/":{"bytes":"AAH+/w"}},"exp":1e+21,'
            '"float":1.0,"int":9007199254740993,'
            f'"link":{{"/":"{RECORD_CID_TEXT}"}},"list":[null,true,false],'
            '"neg":-18446744073709551616,"str":"é\\"\\\\\\n\u2028","tiny":5e-324,'
            f'"v0":{{"/":"{V0_TEXT}"}},"zero":-0.0}}'
        ).encode()
    )
    decoded = dagjson_decode(text)
    assert decoded == value
    assert isinstance(decoded, dict)
    assert type(decoded["float"]) is float
    assert math.copysign(1, decoded["zero"]) == -1


def test_dagjson_keys_sort_bytewise_not_length_first() -> None:
    assert dagjson_encode({"b": 1, "aa": 2, "a": 3}) == b'{"a":3,"aa":2,"b":1}'
    # UTF-8 byte order = code point order (unlike JCS's UTF-16 order).
    assert dagjson_encode({"\ufb01": 1, "\U0001f600": 2}) == '{"\ufb01":1,"\U0001f600":2}'.encode()


@pytest.mark.parametrize(
    "value",
    [
        {"/": "bafy"},  # would read back as a link
        {"/": "x", "bar": "baz"},
        {"0bar": "baz", "/": "foo"},  # "/" (0x2f) sorts before "0": written first
        {"/": {"bytes": "AAAA"}},  # would read back as bytes
        {"/": {"bytes": "x"}, "bar": "baz"},
        {"/": {"bytes": "x", "c": 1}},
    ],
    ids=repr,
)
def test_dagjson_encode_refuses_the_reserved_namespace(value: object) -> None:
    with pytest.raises(RecordInvalid):
        dagjson_encode(value)


@pytest.mark.parametrize(
    "value",
    [
        {"!bar": "baz", "/": "foo"},  # a key sorts before "/"
        {"/": {"bytes": "x", "bar": "baz"}},  # written sorted: "bar" comes first
        {"/": {"bar": "baz", "bytes": "foo"}, "a": 1},
        {"/": True, "bar": "baz"},  # "/" is not a string
        {"/": {"abar": "baz", "bytes": "foo"}},  # a key sorts before "bytes"
        {"/": {"bytes": True}, "bar": "baz"},  # "bytes" is not a string
        {"/": 1},
        {"/": [RECORD_CID]},
        {"/": RECORD_CID},
        {"/": b"raw"},
    ],
    ids=repr,
)
def test_dagjson_allowed_slash_maps_round_trip(value: object) -> None:
    assert dagjson_decode(dagjson_encode(value)) == value


@pytest.mark.parametrize(
    "text",
    [
        b'{"/":"foo","bar":"baz"}',
        b'{"bar":"baz","/":"foo"}',  # unsorted, still "/" first in key order
        b'{"/":{"bytes":"foo","bar":"baz"}}',  # "bytes" first in document order
        b'{"0bar":"baz","/":"foo"}',  # "/" first in key order
        b'{"/":{"bytes":"AAAA"},"bar":"baz"}',
        b'{"/":"not a cid"}',
        b'{"/":"' + RECORD_CID_TEXT.upper().encode() + b'"}',  # not the DAG-JSON form
        b'{"/":"zdpuAtX7ZibcWdSKQwiDCkPjWwRvtcKCPku9H7LhgA4qJW4Wk"}',  # v1 must be base32
        b'{"/":{"bytes":"AAAA="}}',  # padding
        b'{"/":{"bytes":"AB"}}',  # non-zero trailing bits
        b'{"/":{"bytes":"-_8"}}',  # URL-safe alphabet
        b'{"a":1,"a":2}',
        b"[NaN]",
        b"[Infinity]",
        b"[-Infinity]",
        b"[1e400]",
        b"[18446744073709551616]",
        b"[-18446744073709551617]",
        b'["\\ud800"]',
        b'{"\\udc00":1}',
        b"\xff",
        b'"\xc3"',
        b"\xef\xbb\xbf{}",  # BOM
        b"{",
        b"",
        b"[1,]",
        b"01",
    ],
    ids=repr,
)
def test_dagjson_decode_refuses(text: bytes) -> None:
    with pytest.raises(Malformed):
        dagjson_decode(text)


def test_dagjson_decode_accepts_whitespace_and_str() -> None:
    assert dagjson_decode(' { "b" : [ 1 , 2.5 ] , "a" : "\\ud83d\\ude00" } ') == {
        "a": "\U0001f600",
        "b": [1, 2.5],
    }
    with pytest.raises(Malformed):
        dagjson_decode(42)  # type: ignore[arg-type]


@SETTINGS
@given(floats)
def test_es6_number_is_shortest_round_trip_and_matches_jcs(f: float) -> None:
    text = es6_number(f)
    assert float(text) == f
    assert jcs(f) == text.encode("ascii")


# --- JCS -----------------------------------------------------------------------------------


def test_jcs_basics() -> None:
    doc = {"b": 1, "a": [1.0, True, None, "x", 0.5, -0.0], "c": {"z": {}, "y": []}}
    assert jcs(doc) == b'{"a":[1,true,null,"x",0.5,0],"b":1,"c":{"y":[],"z":{}}}'
    assert jcs("\u20ac\n\x01") == b'"\xe2\x82\xac\\n\\u0001"'


def test_jcs_sorts_keys_by_utf16_code_units() -> None:
    # U+1F600 is d83d de00 in UTF-16, so it sorts before U+FB01 (unlike in UTF-8).
    assert jcs({"\ufb01": 1, "\U0001f600": 2}) == '{"\U0001f600":2,"\ufb01":1}'.encode()


@pytest.mark.parametrize(
    "value",
    [
        math.nan,
        math.inf,
        2**53,
        -(2**53),
        b"bytes",
        {1: "x"},
        "\ud800",
        {"k": {1, 2}},
        _nested(100_000),
    ],
    ids=["nan", "inf", "2**53", "-2**53", "bytes", "int key", "surrogate", "set", "too deep"],
)
def test_jcs_refuses(value: object) -> None:
    with pytest.raises(Malformed):
        jcs(value)


def _json_int(text: str) -> int | float:
    n = int(text)
    return n if abs(n) < 2**53 else float(n)  # I-JSON: a number is an IEEE double


json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**53) + 1, 2**53 - 1),
        floats,
        st.text(max_size=30),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=6), st.dictionaries(st.text(max_size=10), children, max_size=6)
    ),
    max_leaves=25,
)


@SETTINGS
@given(json_values)
def test_jcs_is_idempotent(value: Any) -> None:
    once = jcs(value)
    parsed = json.loads(once, parse_int=_json_int)
    assert parsed == value
    assert jcs(parsed) == once
