"""Signed JSON documents: what is signed, every tamper caught with the right code."""

from __future__ import annotations

import ast
import copy
import json
from collections.abc import Callable
from pathlib import Path

import nacl.signing
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedpeer.errors import (
    BadSignature,
    DidMismatch,
    DidNotFound,
    FedpeerError,
    KeyUnknown,
    Malformed,
    SignatureExpired,
    SignatureNotYetValid,
)
from fedpeer.identity import (
    Resolver,
    SigningKey,
    VerifiedDocument,
    b64url_decode,
    b64url_encode,
    did_from_public_key,
    did_key_public_key_for,
    format_rfc3339,
    jcs,
    parse_rfc3339,
    sign_document,
    verify_document,
    verify_document_resolved,
)

KEY = SigningKey.from_seed(bytes(32))
OTHER = SigningKey.from_seed(bytes(31) + b"\x01")
NOW = 1_794_990_400.0  # 2026-11-18T08:26:40Z
TTL = 7 * 24 * 3600
SMALL_ORDER_DID = did_from_public_key(bytes(32))


def _signed(doc: dict[str, object] | None = None) -> dict[str, object]:
    base: dict[str, object] = {"hello": "world", "n": 1} if doc is None else doc
    return sign_document(base, KEY, ttl_s=TTL, now=NOW)


def _sig(doc: dict[str, object]) -> dict[str, object]:
    member = doc["signature"]
    assert isinstance(member, dict)
    return member


def _code(doc: object, **kw: object) -> str:
    try:
        verify_document(doc, now=NOW, **kw)  # type: ignore[arg-type]
    except FedpeerError as err:
        return err.code
    return "OK"


# --- the wire form -----------------------------------------------------------------


def test_sign_shape_and_verify() -> None:
    doc = _signed()
    assert set(doc) == {"hello", "n", "signature"}
    member = _sig(doc)
    assert member["alg"] == "Ed25519"
    assert member["key_id"] == KEY.key_id
    assert member["signed_at"] == "2026-11-18T08:26:40Z"
    assert member["expires_at"] == "2026-11-25T08:26:40Z"
    value = member["signature"]
    assert isinstance(value, str)
    assert "=" not in value
    assert len(value) == 86
    res = verify_document(doc, now=NOW)
    assert isinstance(res, VerifiedDocument)
    assert res.did == KEY.did
    assert res.key_id == KEY.key_id
    assert res.signed_at == NOW
    assert res.expires_at == NOW + TTL
    assert res.document == doc


def test_signed_bytes_are_jcs_without_inner_signature_value() -> None:
    """Pin the contract independently of our verifier: raw pynacl over literal bytes."""
    doc = sign_document({"z": [1, "ä"], "a": True}, KEY, ttl_s=60, now=NOW + 0.9)
    member = _sig(doc)
    expected = (
        '{"a":true,"signature":{"alg":"Ed25519","expires_at":"2026-11-18T08:27:40Z",'
        f'"key_id":"{KEY.key_id}","signed_at":"2026-11-18T08:26:40Z"}},"z":[1,"ä"]}}'
    ).encode()
    unsigned = dict(doc)
    unsigned["signature"] = {k: v for k, v in member.items() if k != "signature"}
    assert jcs(unsigned) == expected
    sig = b64url_decode(str(member["signature"]))
    nacl.signing.VerifyKey(KEY.public_key).verify(expected, sig)


def test_survives_json_round_trip_and_key_order() -> None:
    doc = _signed({"b": {"y": [1, 2, {"q": None}], "x": "s"}, "a": False})
    wire = json.dumps(doc, ensure_ascii=False, indent=3, sort_keys=False)
    back = json.loads(wire)
    reordered = dict(reversed(list(back.items())))
    assert verify_document(reordered, now=NOW).did == KEY.did


def test_sign_does_not_mutate_input_and_replaces_old_signature() -> None:
    original: dict[str, object] = {"a": {"b": [1]}}
    snapshot = copy.deepcopy(original)
    first = sign_document(original, KEY, ttl_s=60, now=NOW)
    assert original == snapshot
    first_a = first["a"]
    assert isinstance(first_a, dict)
    first_a["b"].append(2)  # the result is a deep copy
    assert original == snapshot
    resigned = sign_document(_signed(), OTHER, ttl_s=60, now=NOW + 100)
    assert _sig(resigned)["key_id"] == OTHER.key_id
    assert verify_document(resigned, now=NOW + 100).did == OTHER.did


@pytest.mark.parametrize("ttl", [0, -1, 1.5, True, "60"])
def test_bad_ttl(ttl: object) -> None:
    with pytest.raises(Malformed):
        sign_document({}, KEY, ttl_s=ttl, now=NOW)  # type: ignore[arg-type]


def test_unsignable_document() -> None:
    with pytest.raises(FedpeerError):
        sign_document({"x": float("nan")}, KEY, ttl_s=60, now=NOW)
    with pytest.raises(Malformed):
        sign_document([1, 2], KEY, ttl_s=60, now=NOW)  # type: ignore[arg-type]


# --- time window ---------------------------------------------------------------------


def test_time_window_with_skew() -> None:
    doc = _signed()
    skew = 300
    assert _code_at(doc, NOW - skew) == "OK"
    assert _code_at(doc, NOW - skew - 1) == "SIGNATURE_NOT_YET_VALID"
    assert _code_at(doc, NOW + TTL + skew) == "OK"
    assert _code_at(doc, NOW + TTL + skew + 1) == "SIGNATURE_EXPIRED"
    with pytest.raises(SignatureExpired):
        verify_document(doc, now=NOW + TTL + 1, max_skew_s=0)
    with pytest.raises(SignatureNotYetValid):
        verify_document(doc, now=NOW - 1, max_skew_s=0)
    verify_document(doc, now=NOW + TTL + 1000, max_skew_s=1000)


def _code_at(doc: dict[str, object], now: float) -> str:
    try:
        verify_document(doc, now=now)
    except FedpeerError as err:
        return err.code
    return "OK"


def test_default_now_is_wall_clock() -> None:
    doc = sign_document({"a": 1}, KEY, ttl_s=60)
    assert verify_document(doc).did == KEY.did
    old = sign_document({"a": 1}, KEY, ttl_s=60, now=1_000_000_000)
    with pytest.raises(SignatureExpired):
        verify_document(old)


@settings(max_examples=100)
@given(st.integers(min_value=0, max_value=253402300799))
def test_rfc3339_round_trip(ts: int) -> None:
    text = format_rfc3339(ts)
    assert len(text) == 20
    assert text.endswith("Z")
    assert parse_rfc3339(text) == ts
    assert format_rfc3339(ts + 0.999) == text


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-18T08:26:40z",
        "2026-11-18t08:26:40Z",
        "2026-11-18T08:26:40.5Z",
        "2026-11-18T08:26:40+00:00",
        "2026-11-18 08:26:40Z",
        "2026-02-30T00:00:00Z",
        "2026-11-18T24:00:00Z",
        "2026-11-18T23:59:60Z",
        "26-11-18T08:26:40Z",
        "",
    ],
)
def test_rfc3339_strict(text: str) -> None:
    with pytest.raises(Malformed):
        parse_rfc3339(text)


# --- expected signer and key lookup ---------------------------------------------------


def test_expected_did() -> None:
    doc = _signed()
    assert verify_document(doc, now=NOW, expected_did=KEY.did).did == KEY.did
    with pytest.raises(DidMismatch):
        verify_document(doc, now=NOW, expected_did=OTHER.did)


def test_did_mismatch_is_checked_before_key_lookup() -> None:
    calls: list[str] = []

    def lookup(key_id: str) -> bytes:
        calls.append(key_id)
        return KEY.public_key

    with pytest.raises(DidMismatch):
        verify_document(_signed(), now=NOW, expected_did=OTHER.did, public_key_for=lookup)
    assert calls == []


def test_custom_key_lookup() -> None:
    doc = _signed()
    seen: list[str] = []

    def good(key_id: str) -> bytes:
        seen.append(key_id)
        return KEY.public_key

    assert verify_document(doc, now=NOW, public_key_for=good).key_id == KEY.key_id
    assert seen == [KEY.key_id]
    with pytest.raises(BadSignature):
        verify_document(doc, now=NOW, public_key_for=lambda _k: OTHER.public_key)
    with pytest.raises(KeyUnknown):
        verify_document(doc, now=NOW, public_key_for=lambda _k: bytes(32))

    def missing(key_id: str) -> bytes:
        raise DidNotFound("gone")

    with pytest.raises(KeyUnknown) as info:
        verify_document(doc, now=NOW, public_key_for=missing)
    assert isinstance(info.value.__cause__, DidNotFound)

    def unknown(key_id: str) -> bytes:
        raise KeyUnknown("no such key")

    with pytest.raises(KeyUnknown, match="no such key"):
        verify_document(doc, now=NOW, public_key_for=unknown)


def test_default_lookup_is_offline_did_key_only() -> None:
    assert did_key_public_key_for(KEY.key_id) == KEY.public_key
    for key_id in [
        "did:web:example.com#key-1",
        f"{KEY.did}#key-1",
        f"{KEY.did}#{OTHER.did[8:]}",
        "did:key:z6Mk#z6Mk",
        f"{KEY.did}#",
    ]:
        with pytest.raises(KeyUnknown):
            did_key_public_key_for(key_id)


def _with_sig_field(doc: dict[str, object], field: str, value: object) -> dict[str, object]:
    out = copy.deepcopy(doc)
    _sig(out)[field] = value
    return out


def test_did_web_key_needs_a_resolver() -> None:
    doc = _with_sig_field(_signed(), "key_id", "did:web:example.com#key-1")
    assert _code(doc) == "KEY_UNKNOWN"


class _StaticDriver:
    def __init__(self, docs: dict[str, dict[str, object]]) -> None:
        self.docs = docs
        self.calls = 0

    async def resolve(self, did: str) -> dict[str, object]:
        self.calls += 1
        if did not in self.docs:
            raise DidNotFound(f"{did} not here")
        return self.docs[did]


async def test_verify_resolved_did_key_and_custom_method() -> None:
    resolver = Resolver(drivers={})
    res = await verify_document_resolved(_signed(), resolver, now=NOW, expected_did=KEY.did)
    assert res.did == KEY.did

    did = "did:example:alice"
    ex_doc: dict[str, object] = {
        "id": did,
        "verificationMethod": [
            {
                "id": "#k1",
                "type": "JsonWebKey2020",
                "controller": did,
                "publicKeyJwk": {
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "x": b64url_encode(OTHER.public_key),
                },
            }
        ],
    }
    driver = _StaticDriver({did: ex_doc})
    resolver.register("example", driver)
    unsigned = {"a": 1}
    signed = sign_document(unsigned, OTHER, ttl_s=60, now=NOW)
    # Re-sign with a did:example key id: build the signature by hand through the API.
    member = _sig(signed)
    member["key_id"] = f"{did}#k1"
    del member["signature"]
    member["signature"] = b64url_encode(OTHER.sign(jcs(signed)))
    res = await verify_document_resolved(signed, resolver, now=NOW, expected_did=did)
    assert res.did == did
    assert res.key_id == f"{did}#k1"
    assert driver.calls == 1

    # The offline default refuses it; resolution failures are KEY_UNKNOWN.
    assert _code(signed) == "KEY_UNKNOWN"
    member["key_id"] = "did:example:bob#k1"
    with pytest.raises(KeyUnknown) as info:
        await verify_document_resolved(signed, resolver, now=NOW)
    assert isinstance(info.value.__cause__, DidNotFound)
    member["key_id"] = "did:nomethod:bob#k1"
    with pytest.raises(KeyUnknown) as info:
        await verify_document_resolved(signed, resolver, now=NOW)
    assert info.value.__cause__ is not None
    assert getattr(info.value.__cause__, "code", "") == "DID_METHOD_UNSUPPORTED"


async def test_verify_resolved_reports_tamper_and_time() -> None:
    resolver = Resolver(drivers={})
    doc = _signed()
    doc["n"] = 2
    with pytest.raises(BadSignature):
        await verify_document_resolved(doc, resolver, now=NOW)
    with pytest.raises(SignatureExpired):
        await verify_document_resolved(_signed(), resolver, now=NOW + TTL + 301)
    with pytest.raises(DidMismatch):
        await verify_document_resolved(_signed(), resolver, now=NOW, expected_did=OTHER.did)


# --- malformed signature members -----------------------------------------------------------


def _without_sig() -> dict[str, object]:
    doc = _signed()
    del doc["signature"]
    return doc


def _flip_last_char(value: str) -> str:
    """Another spelling of the same 64 bytes: the last char's 2 unused low bits set."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    i = alphabet.index(value[-1])
    return value[:-1] + alphabet[i | 1]


MALFORMED_CASES: list[tuple[str, Callable[[dict[str, object]], object]]] = [
    ("not an object", lambda d: [d]),
    ("no signature member", lambda d: _without_sig()),
    ("signature is a string", lambda d: {**d, "signature": "abc"}),
    ("signature is null", lambda d: {**d, "signature": None}),
    ("missing alg", lambda d: {**d, "signature": {k: v for k, v in _sig(d).items() if k != "alg"}}),
    (
        "missing value",
        lambda d: {**d, "signature": {k: v for k, v in _sig(d).items() if k != "signature"}},
    ),
    ("extra member", lambda d: _with_sig_field(d, "nonce", "1")),
    ("alg EdDSA", lambda d: _with_sig_field(d, "alg", "EdDSA")),
    ("alg lower", lambda d: _with_sig_field(d, "alg", "ed25519")),
    ("alg none", lambda d: _with_sig_field(d, "alg", "none")),
    ("alg null", lambda d: _with_sig_field(d, "alg", None)),
    ("key_id int", lambda d: _with_sig_field(d, "key_id", 5)),
    ("key_id no fragment", lambda d: _with_sig_field(d, "key_id", KEY.did)),
    ("key_id not a DID", lambda d: _with_sig_field(d, "key_id", "https://x#y")),
    ("key_id huge", lambda d: _with_sig_field(d, "key_id", KEY.key_id + "a" * 3000)),
    ("signed_at fraction", lambda d: _with_sig_field(d, "signed_at", "2026-11-18T08:26:40.0Z")),
    ("signed_at number", lambda d: _with_sig_field(d, "signed_at", NOW)),
    ("expires_at offset", lambda d: _with_sig_field(d, "expires_at", "2026-11-25T08:26:40+00:00")),
    ("expires before signed", lambda d: _with_sig_field(d, "expires_at", "2026-11-18T08:26:39Z")),
    ("value padded", lambda d: _with_sig_field(d, "signature", str(_sig(d)["signature"]) + "==")),
    (
        "value bad chars",
        lambda d: _with_sig_field(d, "signature", "+/" + str(_sig(d)["signature"])[2:]),
    ),
    ("value short", lambda d: _with_sig_field(d, "signature", str(_sig(d)["signature"])[:-4])),
    ("value bytes", lambda d: _with_sig_field(d, "signature", 5)),
    (
        "value non-canonical",
        lambda d: _with_sig_field(d, "signature", _flip_last_char(str(_sig(d)["signature"]))),
    ),
    ("value empty", lambda d: _with_sig_field(d, "signature", "")),
]


@pytest.mark.parametrize(("name", "mutate"), MALFORMED_CASES, ids=[c[0] for c in MALFORMED_CASES])
def test_malformed_signature_member_is_bad_signature(
    name: str, mutate: Callable[[dict[str, object]], object]
) -> None:
    assert _code(mutate(_signed())) == "BAD_SIGNATURE"


def test_non_canonical_spelling_decodes_to_same_bytes() -> None:
    """Guard for the case above: the flipped spelling really is the same signature."""
    value = str(_sig(_signed())["signature"])
    other = _flip_last_char(value)
    assert other != value
    try:
        same = b64url_decode(other)
    except FedpeerError:
        return  # a strict decoder already refuses it
    assert same == b64url_decode(value)


def test_invalid_point_key_is_key_unknown() -> None:
    doc = _with_sig_field(_signed(), "key_id", f"{SMALL_ORDER_DID}#{SMALL_ORDER_DID[8:]}")
    assert _code(doc) == "KEY_UNKNOWN"


# --- property: any change is caught with the right code --------------------------------------

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1),
    st.text(max_size=20),
)
json_value = st.recursive(
    json_leaf,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=8), children, max_size=4),
    ),
    max_leaves=12,
)
json_doc = st.dictionaries(
    st.text(max_size=8).filter(lambda k: k != "signature"), json_value, min_size=1, max_size=5
)


def _containers(value: object, path: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Paths (from the document root) of every non-empty dict/list in ``value``."""
    out: list[tuple[object, ...]] = []
    if isinstance(value, dict) and value:
        out.append(path)
        for k, v in value.items():
            out.extend(_containers(v, (*path, k)))
    elif isinstance(value, list) and value:
        out.append(path)
        for i, v in enumerate(value):
            out.extend(_containers(v, (*path, i)))
    return out


def _get(doc: object, path: tuple[object, ...]) -> object:
    for p in path:
        doc = doc[p]  # type: ignore[index]
    return doc


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(doc=json_doc, data=st.data())
def test_any_change_to_the_document_fails(doc: dict[str, object], data: st.DataObject) -> None:
    signed = sign_document(doc, KEY, ttl_s=TTL, now=NOW)
    assert _code(signed) == "OK"
    tampered = copy.deepcopy(signed)
    body_paths = [p for p in _containers(tampered) if p == () or p[0] != "signature"]
    path = data.draw(st.sampled_from(body_paths), label="container")
    target = _get(tampered, path)
    action = data.draw(st.sampled_from(["change", "add", "remove"]), label="action")
    if isinstance(target, dict):
        keys = [k for k in target if path or k != "signature"]
        if action == "add" or not keys:
            new_key = data.draw(st.text(max_size=8).filter(lambda k: k not in target))
            target[new_key] = data.draw(json_value)
        else:
            k = data.draw(st.sampled_from(keys))
            if action == "remove":
                del target[k]
            else:
                target[k] = {"changed": target[k]}
    else:
        assert isinstance(target, list)
        i = data.draw(st.integers(0, len(target) - 1))
        if action == "add":
            target.insert(i, data.draw(json_value))
        elif action == "remove":
            del target[i]
        else:
            target[i] = [target[i]]
    assert _code(tampered) == "BAD_SIGNATURE"
    # ...and the untouched original still verifies.
    assert _code(signed) == "OK"


TIME_FIELDS = st.sampled_from(["signed_at", "expires_at"])


@settings(max_examples=60)
@given(doc=json_doc, data=st.data())
def test_any_change_to_the_signature_member_fails(
    doc: dict[str, object], data: st.DataObject
) -> None:
    signed = sign_document(doc, KEY, ttl_s=TTL, now=NOW)
    member = _sig(signed)
    what = data.draw(
        st.sampled_from(
            ["alg", "key_id_other", "key_id_bad_point", "key_id_garbage", "time", "bit"]
        )
    )
    tampered = copy.deepcopy(signed)
    t_member = _sig(tampered)
    expected = "BAD_SIGNATURE"
    if what == "alg":
        t_member["alg"] = data.draw(st.text(max_size=10).filter(lambda a: a != "Ed25519"))
    elif what == "key_id_other":
        other = SigningKey.from_seed(data.draw(st.binary(min_size=32, max_size=32)))
        t_member["key_id"] = other.key_id  # a real key that did not sign this
    elif what == "key_id_bad_point":
        t_member["key_id"] = f"{SMALL_ORDER_DID}#{SMALL_ORDER_DID[8:]}"
        expected = "KEY_UNKNOWN"
    elif what == "key_id_garbage":
        t_member["key_id"] = data.draw(st.text(max_size=30))
        if t_member["key_id"] == member["key_id"]:
            return
        expected = _code_for_garbage_key_id(str(t_member["key_id"]))
    elif what == "time":
        # Moving either end of the window, even into the past, is tampering: the
        # signature covers both, so the code is BAD_SIGNATURE, never EXPIRED.
        field = data.draw(TIME_FIELDS)
        delta = data.draw(st.integers(-(10**6), 10**6).filter(lambda x: x != 0))
        t_member[field] = format_rfc3339(parse_rfc3339(str(member[field])) + delta)
    else:
        raw = bytearray(b64url_decode(str(member["signature"])))
        bit = data.draw(st.integers(0, 511))
        raw[bit // 8] ^= 1 << (bit % 8)
        t_member["signature"] = b64url_encode(bytes(raw))
    assert _code(tampered) == expected, (what, t_member)
    assert _code(signed) == "OK"


def _code_for_garbage_key_id(key_id: str) -> str:
    """Garbage key ids are malformed (BAD_SIGNATURE) unless they parse as a DID URL."""
    import re

    if re.fullmatch(r"did:[a-z0-9]+:[A-Za-z0-9._%:-]*[A-Za-z0-9._%-]#[!-\"$-~]+", key_id):
        return "KEY_UNKNOWN"
    return "BAD_SIGNATURE"


def test_time_tamper_is_bad_signature_not_expired() -> None:
    doc = _signed()
    later = _with_sig_field(doc, "expires_at", format_rfc3339(NOW + 10 * TTL))
    assert _code_at(later, NOW + 2 * TTL) == "BAD_SIGNATURE"
    earlier = _with_sig_field(doc, "signed_at", format_rfc3339(NOW - 10))
    assert _code(earlier) == "BAD_SIGNATURE"


# --- layering ---------------------------------------------------------------------------------


@pytest.mark.parametrize("module", ["envelope.py", "keys.py", "didkey.py"])
def test_pure_modules_import_no_io_libraries(module: str) -> None:
    import fedpeer.identity

    source = (Path(fedpeer.identity.__file__).parent / module).read_text()
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert not imported & {"trio", "httpx", "zeroconf", "anyio", "socket"}


# --- numbers: RFC 8785 on both sides (protocol.md §3.1, §4.3, §4.4) ----------------------


def _signed_as_javascript(doc: dict[str, object], key: SigningKey = KEY) -> dict[str, object]:
    """Sign ``doc`` the way a JavaScript signer would: every number is an IEEE double,
    so an integer beyond 2**53 is canonicalised as the double it denotes."""

    def as_double(v: object) -> object:
        if isinstance(v, dict):
            return {k: as_double(x) for k, x in v.items()}
        if isinstance(v, list):
            return [as_double(x) for x in v]
        if isinstance(v, int) and not isinstance(v, bool) and abs(v) > 2**53 - 1:
            return float(v)
        return v

    signed = sign_document(as_double(doc), key, ttl_s=TTL, now=NOW)  # type: ignore[arg-type]
    out = json.loads(json.dumps(signed))
    out.update({k: v for k, v in doc.items()})  # the integers, as a JSON reader sees them
    return out  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("number", "text"),
    [
        (10_000_000_000_000_000, b"10000000000000000"),
        (-(10**16), b"-10000000000000000"),
        (2**53, b"9007199254740992"),
        (2**53 + 1, b"9007199254740992"),  # the same double as 2**53
        (10**21, b"1e+21"),
        (2**64 - 1, b"18446744073709552000"),
    ],
)
def test_verification_canonicalises_large_integers_as_doubles(number: int, text: bytes) -> None:
    """protocol.md §4.4: an integer beyond 2**53 is the IEEE double it denotes, as in
    every RFC 8785 implementation; a document signed with that number verifies."""
    doc = _signed_as_javascript({"n": number, "nested": [{"m": number}]})
    assert isinstance(doc["n"], int)  # what a JSON reader gives for 10000000000000000
    verified = verify_document(doc, now=NOW)
    assert verified.document["n"] == number
    unsigned = copy.deepcopy(doc)
    del _sig(unsigned)["signature"]
    from fedpeer.identity import jcs_received

    assert b'"n":' + text + b"," in jcs_received(unsigned)


def test_a_document_signed_with_1e16_verifies_after_a_javascript_relay() -> None:
    """protocol.md §3.1: fedpeer signs the float 1e16 (JCS text 10000000000000000); a
    JavaScript relay re-serialises it as 10000000000000000, which JSON readers give
    back as an integer; the signature still verifies."""
    signed = sign_document({"amount": 1e16}, KEY, ttl_s=TTL, now=NOW)
    wire = json.dumps(signed).replace("1e+16", "10000000000000000")
    relayed = json.loads(wire)
    assert relayed["amount"] == 10**16
    assert type(relayed["amount"]) is int
    assert verify_document(relayed, now=NOW).did == KEY.did


def test_another_double_still_fails() -> None:
    """A large integer that denotes another double is a tamper (BAD_SIGNATURE)."""
    doc = _signed_as_javascript({"n": 10**16})
    doc["n"] = 10**16 + 2  # 1.0000000000000002e16, another double
    assert _code(doc) == "BAD_SIGNATURE"


def test_an_integer_beyond_the_double_range_is_bad_signature() -> None:
    doc = _signed_as_javascript({"n": 1})
    doc["n"] = 10**400
    assert _code(doc) == "BAD_SIGNATURE"


@pytest.mark.parametrize("number", [2**53, -(2**53), 10**16, 2**64])
def test_signing_refuses_integers_beyond_i_json(number: int) -> None:
    """protocol.md §4.3: a signer refuses integers outside ±(2**53-1) (I-JSON), naming
    where the integer is and what to do."""
    with pytest.raises(Malformed) as info:
        sign_document({"a": {"list": [0, number]}}, KEY, ttl_s=60, now=NOW)
    assert "$.a.list[1]" in info.value.message
    assert str(number) in info.value.message
    assert "string" in info.value.message
    with pytest.raises(Malformed, match=r"\$\[\"odd key\"\]"):
        jcs({"odd key": number})


@pytest.mark.parametrize("number", [2**53 - 1, -(2**53) + 1, 0])
def test_signing_accepts_the_i_json_range(number: int) -> None:
    doc = sign_document({"n": number}, KEY, ttl_s=60, now=NOW)
    assert verify_document(doc, now=NOW).document["n"] == number
