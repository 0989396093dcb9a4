"""The wire rules of docs/protocol.md that need no network: one test (at least) per section.

Each test names the section whose rules it checks (``protocol.md §N.M``);
``test_spec_coverage.py`` fails when a section has none. The conformance vectors
(``interop/conformance``) cover the same rules case by case; these tests pin the
rules through the package's public functions.
"""

from __future__ import annotations

import hashlib
import hmac
import random

import attrs
import cbor2
import pytest

from fedpeer.consent import invites as inv
from fedpeer.errors import (
    BadProof,
    BadSignature,
    CursorFromFuture,
    CursorInvalid,
    CursorReset,
    DidInvalid,
    DidMismatch,
    FedpeerError,
    FreshnessViolation,
    KeyUnknown,
    Malformed,
    PageInvalid,
    RecordFromFuture,
    RecordInvalid,
    RecordTooLarge,
    SignatureExpired,
    SignatureNotYetValid,
)
from fedpeer.identity import (
    CID,
    Resolver,
    SigningKey,
    b64url_decode,
    b64url_encode,
    cid_for_dagcbor,
    dagcbor_decode,
    dagcbor_encode,
    dagjson_decode,
    dagjson_encode,
    did_document,
    did_web_url,
    format_rfc3339,
    jcs,
    parse_rfc3339,
    public_key_from_did,
    sign_document,
    verify_document,
    verify_signature,
)
from fedpeer.peer import _mdns_roster, _mdns_txt
from fedpeer.peer.discovery import SERVICE_TYPE, instance_label
from fedpeer.peer.manifest import MANIFEST_TYPE, PROTOCOL
from fedpeer.store.base import ChangesPage, StoredRecord
from fedpeer.sync._machine import PageAccepted, PageRejected, PullMachine
from fedpeer.sync.feed import (
    CURSOR_VERSION,
    Cursor,
    build_page,
    cursor_at,
    page_from_wire,
    page_to_wire,
    resolve_since,
)
from fedpeer.sync.pairs import PairFilter, make_pair
from fedpeer.sync.records import (
    RECORD_VERSION,
    Limits,
    SignedRecord,
    build_record,
    record_from_wire,
    record_to_json_view,
    record_to_wire,
    verify_record,
)

KEY = SigningKey.from_seed(hashlib.sha256(b"protocol tests: key").digest())
OTHER = SigningKey.from_seed(hashlib.sha256(b"protocol tests: other").digest())
NOW = 1_800_000_000
NOW_MS = NOW * 1000
EPOCH = "ab" * 16
CURSOR_KEY = bytes(range(16))


def _record(**kw: object) -> SignedRecord:
    args: dict[str, object] = {
        "namespace": "notes",
        "thread": "t1",
        "kind": "note",
        "body": {"text": "hi"},
        "ts": NOW_MS - 1000,
        "now_ms": NOW_MS,
    }
    args.update(kw)
    return build_record(KEY, **args)  # type: ignore[arg-type]


def _map(**changes: object) -> dict[str, object]:
    """The DAG-CBOR map of the record ``_record()`` builds, with ``changes``."""
    return {**_record().record.to_map(), **changes}


def _signed(m: dict[str, object], key: SigningKey = KEY) -> tuple[bytes, bytes]:
    data = dagcbor_encode(m)
    return data, key.sign(cid_for_dagcbor(data).raw)


def _code(fn: object, *args: object, **kw: object) -> str:
    try:
        fn(*args, **kw)  # type: ignore[operator]
    except FedpeerError as err:
        return err.code
    return "ok"


# --- §1 conventions ---


def test_every_versioned_structure_is_version_1() -> None:
    """protocol.md §1.2: the protocol string and every versioned structure say 1."""
    assert PROTOCOL == "fedpeer/1"
    assert RECORD_VERSION == 1
    assert CURSOR_VERSION == 2  # §8.3: cursors carry a fingerprint since format 2
    assert _mdns_txt.TXT_VERSION == "1"
    assert inv.PROOF_PURPOSE == "fedpeer-invite-redeem-v1"
    assert _mdns_txt.DOMAIN_PREFIX == b"fedpeer-mdns-v1\x00"
    assert MANIFEST_TYPE == "fedpeer-federation-manifest"
    # versions a receiver does not know are refused where §1.2 says so
    data, sig = _signed(_map(v=2))
    assert _code(verify_record, data, sig, now_ms=NOW_MS) == "RECORD_INVALID"
    raw = b"\x03" + bytes.fromhex(EPOCH) + (1).to_bytes(8, "big") + bytes(8)
    with pytest.raises(CursorInvalid):
        Cursor.decode(b64url_encode(raw))


@pytest.mark.parametrize("text", ["AA==", "AA A", "A", "AB", "+/8", "QQ="])
def test_base64url_is_strict(text: str) -> None:
    """protocol.md §1.3: no padding, no whitespace, URL alphabet, canonical trailing bits."""
    with pytest.raises(Malformed):
        b64url_decode(text)


def test_base64url_round_trip() -> None:
    """protocol.md §1.3: one spelling per byte string, unpadded."""
    for n in range(0, 70):
        data = bytes(range(n))
        text = b64url_encode(data)
        assert "=" not in text
        assert b64url_decode(text) == data


@pytest.mark.parametrize(
    "text",
    [
        "2027-01-15T08:00:00.5Z",
        "2027-01-15T08:00:00+00:00",
        "2027-01-15t08:00:00z",
        "2027-02-30T08:00:00Z",
        "2027-01-15 08:00:00Z",
    ],
)
def test_times_are_strict_rfc3339_seconds(text: str) -> None:
    """protocol.md §1.4: YYYY-MM-DDTHH:MM:SSZ naming a real second, nothing else."""
    with pytest.raises(Malformed):
        parse_rfc3339(text)
    assert format_rfc3339(NOW + 0.9) == "2027-01-15T08:00:00Z"
    assert parse_rfc3339("2027-01-15T08:00:00Z") == NOW


# --- §2 identities ---


def test_did_key_form_and_document() -> None:
    """protocol.md §2.1: did:key:z6Mk..., its Multikey document with X25519 key agreement."""
    assert KEY.did.startswith("did:key:z6Mk")
    assert public_key_from_did(KEY.did) == KEY.public_key
    doc = did_document(KEY.did)
    assert doc["@context"] == [
        "https://www.w3.org/ns/did/v1",
        "https://w3id.org/security/multikey/v1",
    ]
    ed_id = f"{KEY.did}#{KEY.did[8:]}"
    for rel in (
        "authentication",
        "assertionMethod",
        "capabilityInvocation",
        "capabilityDelegation",
    ):
        assert doc[rel] == [ed_id]
    (x_id,) = doc["keyAgreement"]  # type: ignore[misc]
    assert x_id.startswith(f"{KEY.did}#z6LS")
    for bad in (KEY.key_id, "did:key:" + "f" + KEY.public_key.hex(), KEY.did + "x"):
        with pytest.raises(DidInvalid):
            public_key_from_did(bad)


def test_key_ids() -> None:
    """protocol.md §2.2: a did:key's one key id is did#multibase; other fragments are
    KEY_UNKNOWN, a key id without a fragment BAD_SIGNATURE."""
    assert KEY.key_id == f"{KEY.did}#{KEY.did[8:]}"
    doc = sign_document({"a": 1}, KEY, ttl_s=60, now=NOW)
    member = doc["signature"]
    assert isinstance(member, dict)
    assert member["key_id"] == KEY.key_id
    other = {**doc, "signature": {**member, "key_id": KEY.did + "#key-1"}}
    assert _code(verify_document, other, now=NOW) == "KEY_UNKNOWN"
    bare = {**doc, "signature": {**member, "key_id": KEY.did}}
    assert _code(verify_document, bare, now=NOW) == "BAD_SIGNATURE"
    long_id = {**doc, "signature": {**member, "key_id": "did:key:" + "z" * 2100 + "#x"}}
    assert _code(verify_document, long_id, now=NOW) == "BAD_SIGNATURE"


def test_ed25519_is_strict() -> None:
    """protocol.md §2.3: small-order keys are KEY_UNKNOWN, a non-canonical S and a
    signature that is not 64 bytes are BAD_SIGNATURE."""
    msg = b"protocol"
    sig = KEY.sign(msg)
    verify_signature(KEY.public_key, msg, sig)
    with pytest.raises(KeyUnknown):
        verify_signature(bytes(32), msg, sig)
    ell = 2**252 + 27742317777372353535851937790883648493
    s = int.from_bytes(sig[32:], "little") + ell
    with pytest.raises(BadSignature):
        verify_signature(KEY.public_key, msg, sig[:32] + s.to_bytes(32, "little"))
    with pytest.raises(BadSignature):
        verify_signature(KEY.public_key, msg, sig[:63])


class _StaticWeb:
    """A did:web driver serving one fixed document (a real driver of the registry)."""

    def __init__(self, doc: dict[str, object]) -> None:
        self.doc = doc

    async def resolve(self, did: str) -> dict[str, object]:
        return dict(self.doc)


async def test_other_did_methods_for_federated_holders() -> None:
    """protocol.md §2.4: did:web URLs; holder keys from `authentication` Ed25519 methods."""
    assert did_web_url("did:web:example.com") == "https://example.com/.well-known/did.json"
    assert did_web_url("did:web:example.com:u:alice") == "https://example.com/u/alice/did.json"
    assert (
        did_web_url("did:web:example.com%3A8443") == "https://example.com:8443/.well-known/did.json"
    )
    did = "did:web:example.com"
    doc: dict[str, object] = {
        "id": did,
        "verificationMethod": [
            {
                "id": f"{did}#k1",
                "type": "Multikey",
                "controller": did,
                "publicKeyMultibase": KEY.did[8:],
            }
        ],
        "authentication": ["#k1"],
    }
    resolver = Resolver()
    resolver.register("web", _StaticWeb(doc))
    assert await inv.holder_public_keys(resolver, did) == [KEY.public_key]
    resolver.register("web", _StaticWeb({**doc, "authentication": []}))
    with pytest.raises(KeyUnknown):
        await inv.holder_public_keys(resolver, did)


# --- §3 canonical encodings ---


def test_jcs_form() -> None:
    """protocol.md §3.1: sorted members, no whitespace, ECMAScript numbers, NaN refused."""
    assert jcs({"b": [1, 2.5, 1e21, -0.0], "a": "é\u000f"}) == (
        '{"a":"é\\u000f","b":[1,2.5,1e+21,0]}'.encode()
    )
    with pytest.raises(Malformed):
        jcs({"x": float("nan")})


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (bytes.fromhex("a2616201616100"), "NON_CANONICAL"),  # keys out of order
        (bytes.fromhex("1817"), "NON_CANONICAL"),  # 23 in two bytes
        (bytes.fromhex("f93e00"), "NON_CANONICAL"),  # 16-bit float
        (bytes.fromhex("9f01ff"), "NON_CANONICAL"),  # indefinite list
        (bytes.fromhex("a2616101616102"), "NON_CANONICAL"),  # duplicate key
        (bytes.fromhex("0100"), "MALFORMED"),  # trailing byte
        (bytes.fromhex("c11a00000000"), "MALFORMED"),  # tag 1
        (bytes.fromhex("f7"), "MALFORMED"),  # undefined
        (bytes.fromhex("fb7ff8000000000000"), "MALFORMED"),  # NaN
        (bytes.fromhex("a1010203"), "MALFORMED"),  # integer key
        (bytes.fromhex("c2410a"), "MALFORMED"),  # bignum
    ],
)
def test_dag_cbor_is_strict(data: bytes, code: str) -> None:
    """protocol.md §3.2: MALFORMED outside the data model, NON_CANONICAL for another encoding."""
    assert _code(dagcbor_decode, data) == code


def test_dag_cbor_canonical_form() -> None:
    """protocol.md §3.2: shortest ints, 64-bit floats, length-first key order, tag 42."""
    link = cid_for_dagcbor(b"x")
    data = dagcbor_encode({"bb": 1, "a": [1.5, link], "ccc": None})
    assert data == (
        bytes.fromhex("a3")
        + b"\x61a"
        + bytes.fromhex("82fb3ff8000000000000d82a5825")
        + b"\x00"
        + link.raw
        + b"\x62bb\x01"
        + b"\x63ccc\xf6"
    )
    assert dagcbor_decode(data) == {"a": [1.5, link], "bb": 1, "ccc": None}


def test_dag_json_forms() -> None:
    """protocol.md §3.3: bytes and links, floats keep a .0, the reserved "/" maps."""
    link = cid_for_dagcbor(b"x")
    text = dagjson_encode({"b": b"\x00\x01", "l": link, "f": 1.0, "i": 1})
    assert (
        text == ('{"b":{"/":{"bytes":"AAE"}},"f":1.0,"i":1,"l":{"/":"' + str(link) + '"}}').encode()
    )
    assert dagjson_decode(text) == {"b": b"\x00\x01", "l": link, "f": 1.0, "i": 1}
    assert type(dagjson_decode(b"1.0")) is float
    assert type(dagjson_decode(b"1")) is int
    for bad in (b'{"/": "x", "a": 1}', b'{"a": 1, "a": 2}', b"NaN", b'{"/":{"bytes":"AA=="}}'):
        with pytest.raises(Malformed):
            dagjson_decode(bad)
    with pytest.raises(RecordInvalid):
        dagjson_encode({"/": "not a link"})


def test_cids() -> None:
    """protocol.md §3.4: a record id is 01 71 12 20 + sha-256, written base32 b...; any
    multibase is read."""
    data = dagcbor_encode({"x": 1})
    cid = cid_for_dagcbor(data)
    assert cid.raw == b"\x01\x71\x12\x20" + hashlib.sha256(data).digest()
    text = str(cid)
    assert text.startswith("bafyrei")
    assert len(text) == 59
    assert CID.parse(text) == cid
    assert CID.parse("z" + _b58(cid.raw)) == cid
    with pytest.raises(Malformed):
        CID.parse("not-a-cid")


def _b58(raw: bytes) -> str:
    from fedpeer.identity import base58btc_encode

    return base58btc_encode(raw)


# --- §4 signed documents ---


def test_signature_member_is_closed() -> None:
    """protocol.md §4.1: exactly alg, key_id, signed_at, expires_at, signature; alg Ed25519."""
    doc = sign_document({"a": 1}, KEY, ttl_s=3600, now=NOW)
    member = doc["signature"]
    assert isinstance(member, dict)
    assert sorted(member) == ["alg", "expires_at", "key_id", "signature", "signed_at"]
    assert member["alg"] == "Ed25519"
    assert len(str(member["signature"])) == 86
    for change in ({"alg": "ed25519"}, {"extra": 1}):
        assert _code(verify_document, {**doc, "signature": {**member, **change}}, now=NOW) == (
            "BAD_SIGNATURE"
        )


def test_signed_bytes_are_jcs_without_the_inner_signature() -> None:
    """protocol.md §4.2: JCS of the document minus signature.signature, the rest signed."""
    doc = sign_document({"z": [1, "x"], "a": True}, KEY, ttl_s=3600, now=NOW)
    member = dict(doc["signature"])  # type: ignore[call-overload]
    value = b64url_decode(member.pop("signature"))
    message = jcs({**doc, "signature": member})
    verify_signature(KEY.public_key, message, value)


def test_signing_sets_the_window() -> None:
    """protocol.md §4.3: signed_at truncated to the second, expires_at = signed_at + ttl."""
    doc = sign_document({"a": 1, "signature": "replaced"}, KEY, ttl_s=7, now=NOW + 0.99)
    member = doc["signature"]
    assert isinstance(member, dict)
    assert member["signed_at"] == format_rfc3339(NOW)
    assert member["expires_at"] == format_rfc3339(NOW + 7)


def test_verification_order() -> None:
    """protocol.md §4.4: shape, expected DID (before any key lookup), key, signature, time."""
    doc = sign_document({"a": 1}, KEY, ttl_s=60, now=NOW)
    with pytest.raises(DidMismatch):
        verify_document(doc, expected_did=OTHER.did, now=NOW + 10**6)  # DID before time

    def no_lookup(key_id: str) -> bytes:
        raise AssertionError("the key was looked up before the DID check")

    with pytest.raises(DidMismatch):
        verify_document(doc, expected_did=OTHER.did, public_key_for=no_lookup, now=NOW)
    tampered = {**doc, "a": 2}
    with pytest.raises(BadSignature):
        verify_document(tampered, now=NOW + 10**6)  # signature before time


def test_clock_skew() -> None:
    """protocol.md §4.5: 300 s of skew on both ends, inclusive."""
    doc = sign_document({"a": 1}, KEY, ttl_s=60, now=NOW)
    verify_document(doc, now=NOW - 300)
    verify_document(doc, now=NOW + 60 + 300)
    with pytest.raises(SignatureNotYetValid):
        verify_document(doc, now=NOW - 301)
    with pytest.raises(SignatureExpired):
        verify_document(doc, now=NOW + 60 + 301)


# --- §5 records ---


def test_record_map_is_closed_and_typed() -> None:
    """protocol.md §5.1: exactly nine keys, v 1, exact types."""
    rec = _record()
    assert sorted(dagcbor_decode(rec.data)) == sorted(  # type: ignore[arg-type]
        ["v", "author", "namespace", "thread", "kind", "body", "parents", "clock", "ts"]
    )
    assert rec.data.startswith(b"\xa9\x61v\x01\x62ts")  # canonical order: v, ts, body, ...
    for m in (
        {**_map(), "x": 1},
        {k: v for k, v in _map().items() if k != "kind"},
        _map(v=1.5),
        _map(clock=False),
        _map(parents=[str(rec.cid)]),
        _map(author=5),
    ):
        data, sig = _signed(m)
        assert _code(verify_record, data, sig, now_ms=NOW_MS) == "RECORD_INVALID"


def test_record_id_and_signature() -> None:
    """protocol.md §5.2: the id is the CID of the bytes; sig signs the 36 CID bytes."""
    rec = _record()
    assert rec.cid == cid_for_dagcbor(rec.data)
    assert len(rec.cid.raw) == 36
    verify_signature(KEY.public_key, rec.cid.raw, rec.sig)
    wrong = KEY.sign(rec.data)
    assert _code(verify_record, rec.data, wrong, now_ms=NOW_MS) == "BAD_SIGNATURE"


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"namespace": "a b"}, "RECORD_INVALID"),
        ({"thread": "/t"}, "RECORD_INVALID"),
        ({"kind": "k" * 257}, "RECORD_INVALID"),
        ({"clock": 2**53}, "RECORD_INVALID"),
        ({"ts": -1}, "RECORD_INVALID"),
        ({"body": {"/": "x"}}, "RECORD_INVALID"),
        ({"ts": NOW_MS + 600_001}, "RECORD_FROM_FUTURE"),
        ({"ts": NOW_MS + 600_000}, "ok"),
        ({"namespace": "a:b@c/d+e-f.g_h"}, "ok"),
    ],
)
def test_record_limits(changes: dict[str, object], code: str) -> None:
    """protocol.md §5.3: names, clock/ts range, reserved maps, future ts (last)."""
    data, sig = _signed(_map(**changes))
    assert _code(verify_record, data, sig, now_ms=NOW_MS) == code


def test_record_size_parents_and_depth_limits() -> None:
    """protocol.md §5.3: size (before decoding), parents, body depth."""
    rec = _record(body="x" * 300)
    assert _code(verify_record, rec.data, rec.sig, limits=Limits(max_record_bytes=300)) == (
        "RECORD_TOO_LARGE"
    )
    with pytest.raises(RecordTooLarge):
        verify_record(b"\xff" * 301, b"", limits=Limits(max_record_bytes=300))
    parent = _record().cid
    for parents in ([parent, parent], [CID(b"\x01\x55\x12\x20" + bytes(32))]):
        data, sig = _signed(_map(parents=parents))
        assert _code(verify_record, data, sig, now_ms=NOW_MS) == "RECORD_INVALID"
    deep: object = 0
    for _ in range(32):
        deep = [deep]
    data, sig = _signed(_map(body=deep))
    assert _code(verify_record, data, sig, now_ms=NOW_MS) == "ok"
    data, sig = _signed(_map(body=[deep]))
    assert _code(verify_record, data, sig, now_ms=NOW_MS) == "RECORD_INVALID"


def test_whole_number_floats_are_refused_everywhere() -> None:
    """protocol.md §5.4: on verify and on build, with the path; fractions pass."""
    data, sig = _signed(_map(body={"n": [2.0]}))
    with pytest.raises(RecordInvalid, match=r"body\.n\[0\]"):
        verify_record(data, sig, now_ms=NOW_MS)
    with pytest.raises(RecordInvalid, match="write it as the integer 2"):
        _record(body={"n": [2.0]})
    assert _record(body={"n": [2.5]}).record.body == {"n": [2.5]}


def test_verification_stage_order() -> None:
    """protocol.md §5.5: decode before shape, id before author and signature, signature
    before limits, future ts last."""
    good = _record()
    other = _record(body={"text": "other"})
    # id before signature: a wrong item cid wins over a bad signature
    item = {"cid": other.cid, "data": good.data, "sig": bytes(64)}
    with pytest.raises(RecordInvalid, match="cid does not match"):
        record_from_wire(item, now_ms=NOW_MS)
    # signature before limits: a record breaking a limit AND tampered is BAD_SIGNATURE
    data, _sig = _signed(_map(namespace="bad name"))
    with pytest.raises(BadSignature):
        verify_record(data, bytes(64), now_ms=NOW_MS)
    # limits before the future ts
    data, sig = _signed(_map(namespace="bad name", ts=NOW_MS + 10**9))
    with pytest.raises(RecordInvalid):
        verify_record(data, sig, now_ms=NOW_MS)
    data, sig = _signed(_map(ts=NOW_MS + 10**9))
    with pytest.raises(RecordFromFuture):
        verify_record(data, sig, now_ms=NOW_MS)
    # author before signature
    data, sig = _signed(_map(author="did:web:example.com"))
    assert _code(verify_record, data, sig, now_ms=NOW_MS) == "DID_INVALID"


def test_wire_items_are_exactly_cid_data_sig() -> None:
    """protocol.md §5.6: {cid: link, data: bytes, sig: bytes}, nothing else."""
    rec = _record()
    item = record_to_wire(rec)
    assert item == {"cid": rec.cid, "data": rec.data, "sig": rec.sig}
    assert record_from_wire(dagcbor_decode(dagcbor_encode(item)), now_ms=NOW_MS).cid == rec.cid
    for bad in ({**item, "seq": 1}, {**item, "cid": str(rec.cid)}, {"data": rec.data}):
        with pytest.raises(Malformed):
            record_from_wire(bad, now_ms=NOW_MS)


def test_json_view_is_for_reading() -> None:
    """protocol.md §5.7: the JSON view shows the record; verification uses the bytes."""
    rec = _record(body={"b": b"\x01", "f": 2.5})
    view = record_to_json_view(rec)
    assert view["cid"] == str(rec.cid)
    assert view["body"] == {"b": {"/": {"bytes": "AQ"}}, "f": 2.5}
    assert b64url_decode(str(view["sig"])) == rec.sig


# --- §8 feed pages, cursors, puller ---


def _stored(seq: int, rec: SignedRecord) -> StoredRecord:
    return StoredRecord(seq=seq, **attrs.asdict(rec.to_new()))


def test_page_shape() -> None:
    """protocol.md §8.2: exactly {records, next_cursor, has_more}; the cursor moves past
    records the reader may not see."""
    recs = [_record(body={"i": i}) for i in range(3)]
    page = build_page(
        ChangesPage(tuple(_stored(i + 1, r) for i, r in enumerate(recs)), 3, 5),
        epoch=EPOCH,
        key=CURSOR_KEY,
        visible=lambda r: r.seq != 2,
    )
    wire = page_to_wire(page)
    assert sorted(wire) == ["has_more", "next_cursor", "records"]
    assert [i["cid"] for i in wire["records"]] == [recs[0].cid, recs[2].cid]  # type: ignore[index, union-attr]
    assert Cursor.decode(page.next_cursor).seq == 3
    assert page.has_more
    for bad in (
        {**wire, "x": 1},
        {**wire, "has_more": 1},
        {**wire, "next_cursor": ""},
        {**wire, "next_cursor": "a\tb"},
        {**wire, "records": ()},
    ):
        with pytest.raises(PageInvalid):
            page_from_wire(bad)


def test_cursor_format_1() -> None:
    """protocol.md §8.3: base64url(0x01 || epoch || seq int64 BE), 34 characters; the
    three ways a cursor is wrong for a store."""
    cursor = Cursor(EPOCH, 258).encode()
    assert len(cursor) == 34
    assert b64url_decode(cursor) == b"\x01" + bytes.fromhex(EPOCH) + (258).to_bytes(8, "big")
    assert resolve_since(None, epoch=EPOCH, head_seq=0) == 0
    assert resolve_since(cursor, epoch=EPOCH, head_seq=300) == 258
    with pytest.raises(CursorReset):
        resolve_since(cursor, epoch="cd" * 16, head_seq=300)
    with pytest.raises(CursorFromFuture):
        resolve_since(cursor, epoch=EPOCH, head_seq=257)
    for bad in ("", cursor + "A", cursor[:-1] + "=", cursor.upper()):
        with pytest.raises(CursorInvalid):
            resolve_since(bad, epoch=EPOCH, head_seq=300)


def test_cursor_format_2() -> None:
    """protocol.md §8.3: base64url(0x02 || epoch || seq || fp), 44 characters, fp the first
    8 bytes of HMAC-SHA-256(store secret, binary CID at seq), zero at seq 0; a format 2
    cursor past the head or with another fingerprint is CURSOR_RESET."""
    cid = bytes(_record().cid)
    cursor = cursor_at(EPOCH, 258, cid, key=CURSOR_KEY).encode()
    assert len(cursor) == 44
    fp = hmac.new(CURSOR_KEY, cid, hashlib.sha256).digest()[:8]
    raw = b"\x02" + bytes.fromhex(EPOCH) + (258).to_bytes(8, "big") + fp
    assert b64url_decode(cursor) == raw
    assert b64url_decode(cursor_at(EPOCH, 0, None, key=CURSOR_KEY).encode())[-8:] == bytes(8)
    assert resolve_since(cursor, epoch=EPOCH, head_seq=300, fingerprint_at_seq=fp) == 258
    for head, at_seq, epoch in ((257, fp, EPOCH), (300, bytes(8), EPOCH), (300, fp, "cd" * 16)):
        with pytest.raises(CursorReset):
            resolve_since(cursor, epoch=epoch, head_seq=head, fingerprint_at_seq=at_seq)
    zero_seq_bad_fp = b64url_encode(raw[:17] + bytes(8) + fp)
    for bad in (zero_seq_bad_fp, cursor[:-1], cursor + "AA"):
        with pytest.raises(CursorInvalid):
            resolve_since(bad, epoch=EPOCH, head_seq=300)


def test_puller_checks_pages_before_storing() -> None:
    """protocol.md §8.7: cursor same epoch and never backwards, at most limit records,
    inside the filter, no repeats; one bad record rejects the page."""
    pair = make_pair(
        local_did=OTHER.did,
        peer_did=KEY.did,
        peer_url="http://127.0.0.1:9",
        credential="token",
        filter=PairFilter(namespace="notes"),
        now_ms=NOW_MS,
    )
    machine = PullMachine(pair, rng=random.Random(1), page_limit=2)
    recs = [_record(body={"i": i}) for i in range(3)]

    def page(items: list[SignedRecord], seq: int, epoch: str = EPOCH) -> dict[str, object]:
        return {
            "records": [record_to_wire(r) for r in items],
            "next_cursor": Cursor(epoch, seq).encode(),
            "has_more": True,
        }

    request = machine.next_request()
    assert request is not None
    assert request.params()["limit"] == "2"
    assert request.feed == "normal"
    ok = machine.receive_page(page(recs[:2], 2), now_ms=NOW_MS)
    assert isinstance(ok, PageAccepted)
    machine.commit_done(now_ms=NOW_MS)
    for bad in (
        page(recs[2:], 1),  # backwards
        page(recs[2:], 9, epoch="cd" * 16),  # another epoch
        page(recs, 9),  # more than the limit
        page([recs[2], recs[2]], 9),  # a record twice
        page([_record(namespace="elsewhere")], 9),  # outside the filter
    ):
        if machine.retry_delay_s is not None:
            machine.backoff_elapsed()
        assert machine.next_request() is not None
        rejected = machine.receive_page(bad, now_ms=NOW_MS)
        assert isinstance(rejected, PageRejected)
        assert rejected.code == "PAGE_INVALID"
        assert machine.cursor == Cursor(EPOCH, 2).encode()  # nothing advanced
    machine.backoff_elapsed()
    assert machine.next_request() is not None
    tampered = page(recs[2:], 3)
    item = tampered["records"][0]  # type: ignore[index]
    item["sig"] = bytes(64)
    rejected = machine.receive_page(tampered, now_ms=NOW_MS)
    assert isinstance(rejected, PageRejected)
    assert rejected.code == "BAD_SIGNATURE"


# --- §10 invites ---


def test_invite_url() -> None:
    """protocol.md §10.1: <base>/v1/invites/<32 hex>?issuer=<did>#secret=<43 chars>."""
    secret = b64url_encode(bytes(range(32)))
    url = inv.invite_url("http://10.0.0.5:8765/", "ab" * 16, KEY.did, secret)
    assert url == f"http://10.0.0.5:8765/v1/invites/{'ab' * 16}?issuer={KEY.did}#secret={secret}"
    parsed = inv.parse_invite_url(url)
    assert (parsed.node_url, parsed.invite_id, parsed.issuer_did, parsed.secret) == (
        "http://10.0.0.5:8765",
        "ab" * 16,
        KEY.did,
        secret,
    )
    for bad in (url.split("#")[0], url.replace("http", "ftp", 1), url.replace("ab" * 16, "ab")):
        with pytest.raises(Malformed):
            inv.parse_invite_url(bad)


def test_federated_proof() -> None:
    """protocol.md §10.4: the JCS payload with purpose, audience and invite id; ±60 s."""
    invite_id = "cd" * 16
    proof, at = inv.sign_redeem_proof(
        OTHER, invite_id=invite_id, audience=KEY.did, issued_at_ms=NOW_MS
    )
    payload = jcs(
        {
            "audience": KEY.did,
            "holder_did": OTHER.did,
            "invite_id": invite_id,
            "issued_at_ms": NOW_MS,
            "purpose": "fedpeer-invite-redeem-v1",
        }
    )
    verify_signature(OTHER.public_key, payload, b64url_decode(proof))
    args = {
        "invite_id": invite_id,
        "audience": KEY.did,
        "holder_did": OTHER.did,
        "issued_at_ms": at,
    }
    inv.verify_redeem_proof([OTHER.public_key], proof, now_ms=NOW_MS + 60_000, **args)  # type: ignore[arg-type]
    with pytest.raises(FreshnessViolation):
        inv.verify_redeem_proof([OTHER.public_key], proof, now_ms=NOW_MS + 60_001, **args)  # type: ignore[arg-type]
    with pytest.raises(BadProof):
        inv.verify_redeem_proof(
            [OTHER.public_key],
            proof,
            now_ms=NOW_MS,
            **{**args, "audience": OTHER.did},  # type: ignore[arg-type]
        )
    with pytest.raises(KeyUnknown):
        inv.verify_redeem_proof([bytes(32)], proof, now_ms=NOW_MS, **args)  # type: ignore[arg-type]


def test_confirmation_code() -> None:
    """protocol.md §10.6: SHA-256 of JCS [issuer, holder, invite id], 8 bytes BE mod 10^6."""
    digest = hashlib.sha256(jcs([KEY.did, OTHER.did, "ef" * 16])).digest()
    want = f"{int.from_bytes(digest[:8], 'big') % 1_000_000:06d}"
    assert inv.confirmation_code(KEY.did, OTHER.did, "ef" * 16) == want
    assert len(want) == 6


# --- §12 mDNS ---


def test_service_and_instance_label() -> None:
    """protocol.md §12.1: _fedpeer._tcp.local., <handle>-<did[-8:]>, at most 63 bytes."""
    assert SERVICE_TYPE == "_fedpeer._tcp.local."
    assert instance_label("alice.laptop", KEY.did) == f"alice-laptop-{KEY.did[-8:]}"
    assert instance_label("a" * 100, KEY.did, 2).endswith(f"-{KEY.did[-8:]} (2)")
    assert len(instance_label("é" * 100, KEY.did).encode()) <= 63


def test_txt_keys() -> None:
    """protocol.md §12.2: the nine keys, strings, canonical decimals."""
    txt = _mdns_txt.sign_txt(
        KEY,
        handle="alice",
        port=8765,
        namespaces=["a", "b/c"],
        capabilities=["sync"],
        seq=5,
        now=NOW,
    )
    assert sorted(txt) == sorted(["v", "did", "handle", "ns", "caps", "port", "seq", "exp", "sig"])
    assert (txt["ns"], txt["caps"], txt["port"], txt["exp"]) == (
        "a,b/c",
        "sync",
        "8765",
        str(NOW + 3600),
    )
    assert len(txt["sig"]) == 86
    with pytest.raises(Malformed):
        _mdns_txt.decode_txt({b"did": b"x", b"DID": b"y"})
    with pytest.raises(Malformed):
        _mdns_txt.decode_txt({b"did": None})


def test_txt_signed_bytes() -> None:
    """protocol.md §12.3: "fedpeer-mdns-v1" 0x00 + JCS of every key but sig."""
    txt = _mdns_txt.sign_txt(KEY, handle="alice", port=1, seq=0, now=NOW)
    unsigned = {k: v for k, v in txt.items() if k != "sig"}
    message = b"fedpeer-mdns-v1\x00" + jcs(unsigned)
    verify_signature(KEY.public_key, message, b64url_decode(txt["sig"]))


def test_txt_check_order_and_limits() -> None:
    """protocol.md §12.4: signature before formats, expiry with 300 s skew, at most 24 h."""
    txt = _mdns_txt.sign_txt(KEY, handle="alice", port=1, seq=0, expires_at=NOW + 100, now=NOW)
    assert _mdns_txt.verify_txt(txt, now=NOW).expires_at == NOW + 100
    assert _code(_mdns_txt.verify_txt, {**txt, "seq": "01"}, now=NOW) == "BAD_SIGNATURE"
    assert _code(_mdns_txt.verify_txt, txt, now=NOW + 100 + 301) == "SIGNATURE_EXPIRED"
    assert _code(_mdns_txt.verify_txt, txt, now=NOW + 100 + 300) == "ok"
    far = _mdns_txt.sign_txt(KEY, handle="a", port=1, seq=0, expires_at=NOW + 86_701, now=NOW)
    assert _code(_mdns_txt.verify_txt, far, now=NOW) == "MALFORMED"
    assert _code(_mdns_txt.verify_txt, txt, expected_did=OTHER.did, now=NOW) == "DID_MISMATCH"


def test_seq_and_port_rules() -> None:
    """protocol.md §12.5: an older seq for a name is ignored; a replay under a new name
    is invalid (STALE_ANNOUNCEMENT); a TXT port other than the SRV port is invalid."""
    roster = _mdns_roster.Roster()

    def txt(seq: int, port: int = 8765) -> dict[str, str]:
        return _mdns_txt.sign_txt(KEY, handle="alice", port=port, seq=seq, now=NOW)

    name = f"alice-x.{SERVICE_TYPE}"
    entry, _ = roster.observe(name, txt(10), ["10.0.0.5"], 8765, now=NOW)
    assert entry is not None
    assert entry.seq == 10
    stale, _ = roster.observe(name, txt(9), ["10.0.0.5"], 8765, now=NOW)
    assert stale is not None
    assert stale.seq == 10  # ignored
    replay, _ = roster.observe(f"other.{SERVICE_TYPE}", txt(9), ["10.0.0.9"], 8765, now=NOW)
    assert replay is not None
    assert replay.status == "invalid"
    assert replay.reason.startswith("STALE_ANNOUNCEMENT")
    moved, _ = roster.observe(f"third.{SERVICE_TYPE}", txt(11, port=1), ["10.0.0.7"], 8765, now=NOW)
    assert moved is not None
    assert moved.reason.startswith("PORT_MISMATCH")


def test_cbor2_cannot_smuggle_a_non_canonical_record() -> None:
    """protocol.md §3, §3.2 and §5.5: receivers re-derive the one encoding instead of
    trusting the sender: cbor2's default (non-canonical) output of a record is refused
    before any signature check."""
    m = dict(reversed(list(_map().items())))
    data = cbor2.dumps(m)
    assert _code(verify_record, data, KEY.sign(cid_for_dagcbor(data).raw), now_ms=NOW_MS) == (
        "NON_CANONICAL"
    )
