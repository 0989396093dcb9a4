"""Generate fedpeer's conformance vectors (docs/protocol.md, Appendix A).

Run ``python interop/conformance/generate.py`` (or ``-m interop.conformance.generate``)
to rewrite the JSON files next to this script; ``--check`` compares instead of
writing. Everything is deterministic: keys come from fixed seeds, times are
fixed, Ed25519 signatures are deterministic, so the same code always writes the
same bytes. ``interop/test_conformance.py`` regenerates the files in memory and
compares them with the committed ones, so a change on the wire shows up as a diff
of these vectors (regenerate them and review the diff).

Valid cases are produced by fedpeer's own functions (``sign_document``,
``build_record``, ``sign_txt``, ``sign_redeem_proof``, ``encode_page_cbor``,
``Cursor.encode``...). Invalid variants start from a valid case and break one
thing; where the break would otherwise be hidden by a signature failure, the
variant is signed again over its broken content so that the verifier reaches the
rule being tested.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cbor2

from fedpeer.consent.grants import Target
from fedpeer.consent.invites import (
    DEFAULT_TOKEN_TTL_S,
    INVITE_DOC_TYPE,
    PROOF_PURPOSE,
    Invite,
    confirmation_code,
    hash_secret,
    invite_url,
    redeem_proof_payload,
    sign_redeem_proof,
)
from fedpeer.consent.scopes import parse_scopes, scopes_to_list
from fedpeer.identity._jcs import _as_doubles as as_doubles
from fedpeer.identity.canonical import (
    CID,
    b64url_encode,
    cid_for_dagcbor,
    dagcbor_encode,
    jcs,
    jcs_received,
)
from fedpeer.identity.didkey import (
    did_from_public_key,
    ed25519_multibase,
    x25519_from_ed25519_public,
    x25519_multibase,
)
from fedpeer.identity.envelope import sign_document
from fedpeer.identity.keys import SigningKey
from fedpeer.peer._mdns_txt import sign_txt, signing_input
from fedpeer.peer.manifest import capabilities, federation_body
from fedpeer.sync.feed import Cursor, cursor_at, encode_page_cbor, fingerprint
from fedpeer.sync.records import DEFAULT_LIMITS, SignedRecord, build_record

Json = dict[str, Any]

FORMAT = "fedpeer-conformance-1"
PROTOCOL = "fedpeer protocol 1 (docs/protocol.md)"
HERE = Path(__file__).resolve().parent
FILES = (
    "identities.json",
    "signed-json.json",
    "records.json",
    "feed-pages.json",
    "cursors.json",
    "invites.json",
    "mdns-txt.json",
    "tls-pins.json",
)

NOW = 1_800_000_000  # 2027-01-15T08:00:00Z, the verifiers' clock (unix seconds)
NOW_MS = NOW * 1000
SOFTWARE_VERSION = "0.0.0-conformance"  # fixed, so the vectors do not change per release
EPOCH = "0123456789abcdef0123456789abcdef"  # a store epoch (32 lowercase hex)
CURSOR_KEY = hashlib.sha256(b"fedpeer conformance 1: cursor key").digest()[:16]
HOLDER_URL = "http://192.0.2.7:8765"
ISSUER_URL = "http://192.0.2.1:8765"


def _seed(name: str) -> bytes:
    return hashlib.sha256(f"fedpeer conformance 1: {name}".encode()).digest()


SEED_NAMES = ("node", "holder", "author", "other")
KEYS = {name: SigningKey.from_seed(_seed(name)) for name in SEED_NAMES}
NODE, HOLDER, AUTHOR, OTHER = (KEYS[n] for n in SEED_NAMES)
SMALL_ORDER_DID = did_from_public_key(bytes(32))  # the identity point: never a usable key


def _case(name: str, section: str, expect: str, **fields: Any) -> Json:
    return {"name": name, "section": section, **fields, "expect": expect}


def _file(
    name: str, sections: list[str], description: str, cases: list[Json], **extra: Any
) -> Json:
    return {
        "format": FORMAT,
        "protocol": PROTOCOL,
        "file": name,
        "sections": sections,
        "description": description,
        **extra,
        "cases": cases,
    }


# --- identities (§2) ---


def identities() -> Json:
    cases: list[Json] = []
    for name in SEED_NAMES:
        key = KEYS[name]
        cases.append(
            _case(
                f"key-{name}",
                "2.1",
                "ok",
                seed_hex=_seed(name).hex(),
                public_key_hex=key.public_key.hex(),
                did=key.did,
                key_id=key.key_id,
                multibase=ed25519_multibase(key.public_key),
                x25519_multibase=x25519_multibase(x25519_from_ed25519_public(key.public_key)),
            )
        )
    mb = NODE.did[len("did:key:") :]
    x_mb = x25519_multibase(x25519_from_ed25519_public(NODE.public_key))
    bad = [
        ("x25519-key", "did:key:" + x_mb, "an X25519 key-agreement key is not a signing key"),
        ("did-url-with-fragment", NODE.key_id, "a DID URL is not a DID"),
        ("multibase-not-z", "did:key:f" + "ed01" + NODE.public_key.hex(), "only base58btc"),
        ("not-base58", "did:key:z6Mk0OIl" + mb[8:], "0, O, I and l are not base58btc"),
        ("key-31-bytes", did_from_public_key(NODE.public_key)[:-2], "a key is 32 bytes"),
        ("other-method", "did:web:example.com", "a node identity is a did:key"),
    ]
    for name, did, why in bad:
        cases.append(_case(name, "2.1", "DID_INVALID", did=did, why=why))
    cases.append(
        _case(
            "small-order-key",
            "2.3",
            "KEY_UNKNOWN",
            did=SMALL_ORDER_DID,
            why="a well-formed did:key whose key is a small-order point",
        )
    )
    return _file(
        "identities",
        ["2.1", "2.2", "2.3"],
        "did:key identities from fixed seeds (the seeds of every other file), and DIDs a "
        "receiver refuses. A case with expect ok gives the public key, the did:key, the key "
        "id and the derived X25519 multibase; DID_INVALID: the DID does not parse; "
        "KEY_UNKNOWN: it parses but its key is not a usable Ed25519 point.",
        cases,
    )


# --- signed JSON (§3.1, §4, §7) ---

MANIFEST_TTL_S = 7 * 24 * 3600


def _signed_bytes(doc: Json) -> str:
    unsigned = copy.deepcopy(doc)
    del unsigned["signature"]["signature"]
    return jcs_received(unsigned).decode("utf-8")


def _resign(doc: Json, key: SigningKey) -> Json:
    """Sign ``doc`` again over its (broken) content, keeping its signature member."""
    out = copy.deepcopy(doc)
    member = out["signature"]
    member.pop("signature", None)
    member["signature"] = b64url_encode(key.sign(_signed_bytes_raw(out)))
    return out


def _signed_bytes_raw(doc: Json) -> bytes:
    unsigned = copy.deepcopy(doc)
    unsigned["signature"].pop("signature", None)
    return jcs_received(unsigned)


def well_known(key: SigningKey = NODE, now: int = NOW - 3600) -> Json:
    caps = capabilities(did=key.did, max_record_bytes=1_048_576, page_limit_max=10_000)
    caps["software"] = {"name": "fedpeer", "version": SOFTWARE_VERSION}
    body = federation_body(
        did=key.did,
        handle="alice-laptop",
        urls=[ISSUER_URL],
        namespaces=["notes"],
        consent={"posture": "grants-required", "revision": 3},
    )
    signed = sign_document(body, key, ttl_s=MANIFEST_TTL_S, now=now)
    return {"capabilities_manifest": caps, "federation_manifest": signed}


def signed_json() -> Json:
    cases: list[Json] = []
    wk = well_known()
    fm = wk["federation_manifest"]
    signed_at = NOW - 3600
    expires_at = signed_at + MANIFEST_TTL_S

    def manifest(name: str, section: str, expect: str, answer: Json, **kw: Any) -> None:
        kw.setdefault("expected_did", NODE.did)
        kw.setdefault("now", NOW)
        if expect == "ok":
            kw["signer_did"] = answer["federation_manifest"]["signature"]["key_id"].split("#")[0]
            kw["signed_bytes"] = _signed_bytes(answer["federation_manifest"])
        cases.append(_case(name, section, expect, kind="well-known", input=answer, **kw))

    def with_fm(change: Callable[[Json], None], *, resign: SigningKey | None = None) -> Json:
        out = copy.deepcopy(wk)
        change(out["federation_manifest"])
        if resign is not None:
            out["federation_manifest"] = _resign(out["federation_manifest"], resign)
        return out

    def set_sig(member: str, value: Any) -> Callable[[Json], None]:
        def change(doc: Json) -> None:
            doc["signature"][member] = value

        return change

    manifest("manifest/valid", "7.4", "ok", wk)
    manifest("manifest/valid-no-expected-did", "7.4", "ok", wk, expected_did=None)
    manifest("manifest/expires-within-skew", "4.5", "ok", wk, now=expires_at + 300)
    manifest("manifest/valid-from-skew", "4.5", "ok", wk, now=signed_at - 300)
    manifest("manifest/expired", "4.5", "SIGNATURE_EXPIRED", wk, now=expires_at + 301)
    manifest("manifest/not-yet-valid", "4.5", "SIGNATURE_NOT_YET_VALID", wk, now=signed_at - 301)
    manifest("manifest/other-expected-did", "4.4", "DID_MISMATCH", wk, expected_did=HOLDER.did)
    manifest(
        "manifest/tampered-handle",
        "4.2",
        "BAD_SIGNATURE",
        with_fm(lambda d: d.__setitem__("handle", "mallory")),
    )
    manifest(
        "manifest/tampered-expiry",
        "4.2",
        "BAD_SIGNATURE",
        with_fm(set_sig("expires_at", "2099-01-01T00:00:00Z")),
        why="the validity window is signed: stretching it breaks the signature",
    )
    manifest(
        "manifest/swapped-key-id",
        "4.4",
        "BAD_SIGNATURE",
        with_fm(set_sig("key_id", OTHER.key_id)),
        expected_did=None,
        why="the key id is signed; OTHER's key does not verify NODE's signature",
    )
    manifest(
        "manifest/alg-EdDSA",
        "4.1",
        "BAD_SIGNATURE",
        with_fm(set_sig("alg", "EdDSA"), resign=NODE),
    )
    manifest(
        "manifest/signature-padded",
        "1.3",
        "BAD_SIGNATURE",
        with_fm(set_sig("signature", fm["signature"]["signature"] + "==")),
    )
    std = fm["signature"]["signature"].replace("-", "+").replace("_", "/")
    assert std != fm["signature"]["signature"]  # the fixed seed gives a signature with - or _
    manifest(
        "manifest/signature-standard-base64",
        "1.3",
        "BAD_SIGNATURE",
        with_fm(set_sig("signature", std)),
        why="base64url, not standard base64",
    )
    manifest(
        "manifest/extra-signature-member",
        "4.1",
        "BAD_SIGNATURE",
        with_fm(set_sig("nonce", "1"), resign=NODE),
    )
    manifest(
        "manifest/missing-signature",
        "4.1",
        "BAD_SIGNATURE",
        with_fm(lambda d: d.pop("signature")),
    )
    manifest(
        "manifest/key-id-without-fragment",
        "2.2",
        "BAD_SIGNATURE",
        with_fm(set_sig("key_id", NODE.did), resign=NODE),
    )
    manifest(
        "manifest/key-id-other-fragment",
        "2.2",
        "KEY_UNKNOWN",
        with_fm(set_sig("key_id", NODE.did + "#key-1"), resign=NODE),
    )
    manifest(
        "manifest/time-with-fraction",
        "1.4",
        "BAD_SIGNATURE",
        with_fm(set_sig("signed_at", "2027-01-15T07:00:00.000Z"), resign=NODE),
    )
    manifest(
        "manifest/time-with-offset",
        "1.4",
        "BAD_SIGNATURE",
        with_fm(set_sig("signed_at", "2027-01-15T07:00:00+00:00"), resign=NODE),
    )
    manifest(
        "manifest/expires-before-signed",
        "4.4",
        "BAD_SIGNATURE",
        with_fm(set_sig("expires_at", "2027-01-15T06:59:59Z"), resign=NODE),
    )
    other_wk = well_known(OTHER)
    manifest(
        "manifest/signed-by-another-node",
        "7.4",
        "DID_MISMATCH",
        other_wk,
        why="a LAN impostor's valid manifest, for the DID the client expected",
    )
    manifest(
        "manifest/did-member-differs",
        "7.4",
        "DID_MISMATCH",
        with_fm(lambda d: d.__setitem__("did", OTHER.did), resign=NODE),
        why="signed by NODE, but names OTHER as the node",
    )
    manifest(
        "manifest/wrong-type",
        "7.4",
        "PEER_INVALID",
        with_fm(lambda d: d.__setitem__("type", "fedpeer-invite"), resign=NODE),
    )
    manifest(
        "manifest/no-federation-manifest",
        "7.4",
        "PEER_INVALID",
        {"capabilities_manifest": wk["capabilities_manifest"]},
    )
    small = copy.deepcopy(wk)
    small["federation_manifest"]["signature"]["key_id"] = f"{SMALL_ORDER_DID}#{SMALL_ORDER_DID[8:]}"
    manifest(
        "manifest/small-order-key",
        "2.3",
        "KEY_UNKNOWN",
        small,
        expected_did=None,
    )

    # Numbers (§3.1): documents a JavaScript signer made, or that a JavaScript relay
    # re-serialised. The document's integers are written in the file as a JSON reader
    # would see them after the relay.
    def js_signed(doc: Json, then: Callable[[Json], None] | None = None) -> Json:
        # A JavaScript signer holds every number as a double: the integers beyond
        # I-JSON become the doubles they denote (what jcs_received reads them as).
        doubled = as_doubles(doc)
        assert isinstance(doubled, dict)
        signed = sign_document(doubled, NODE, ttl_s=3600, now=NOW - 60)
        out = {**signed, **copy.deepcopy(doc)}
        if then is not None:
            then(out)
        return out

    def number(name: str, expect: str, doc: Json, **kw: Any) -> None:
        if expect == "ok":
            kw["signer_did"] = NODE.did
            kw["signed_bytes"] = _signed_bytes(doc)
        cases.append(
            _case(name, "3.1", expect, kind="document", input=doc, expected_did=None, now=NOW, **kw)
        )

    relayed = sign_document({"type": "example", "amount": 1e16}, NODE, ttl_s=3600, now=NOW - 60)
    relayed["amount"] = 10**16  # what JSON.stringify(1e16) reads back as
    number(
        "numbers/1e16-relayed-as-integer",
        "ok",
        relayed,
        why="signed by fedpeer with the double 1e16; a JavaScript relay wrote it as "
        "10000000000000000",
    )
    number(
        "numbers/integer-2^53+1",
        "ok",
        js_signed({"type": "example", "n": 2**53 + 1}),
        why="9007199254740993 is the double 9007199254740992",
    )
    number("numbers/integer-10^21", "ok", js_signed({"type": "example", "n": 10**21}))
    number(
        "numbers/float-1.5-and-negative-zero",
        "ok",
        sign_document({"type": "example", "f": [1.5, -0.0, 1e-7]}, NODE, ttl_s=3600, now=NOW - 60),
    )
    number(
        "numbers/another-double",
        "BAD_SIGNATURE",
        js_signed({"type": "example", "n": 10**16}, lambda d: d.__setitem__("n", 10**16 + 2)),
        why="10000000000000002 is another double than the signed 1e16",
    )
    cases.append(
        _case(
            "numbers/sign-integer-beyond-i-json",
            "4.3",
            "MALFORMED",
            kind="sign",
            input={"type": "example", "amounts": [1, 2**53]},
            message_contains="$.amounts[1]",
            why="a signer refuses integers outside -(2^53-1)..2^53-1 (I-JSON)",
        )
    )
    return _file(
        "signed-json",
        ["1.3", "1.4", "2.2", "2.3", "3.1", "4.1", "4.2", "4.3", "4.4", "4.5", "7.4"],
        "Signed JSON documents. kind well-known: a GET /.well-known/fedpeer answer, "
        "verified as §7.4 against expected_did (null: none) at now (unix seconds); "
        "kind document: a signed document verified as §4.4; kind sign: an unsigned "
        "document a signer must refuse. signed_bytes is the UTF-8 text of the signed "
        "bytes (§4.2) of a valid case.",
        cases,
    )


# --- records (§5) ---


def _link(n: int) -> CID:
    return cid_for_dagcbor(dagcbor_encode({"n": n}))


def _record_map(**changes: Any) -> Json:
    """The DAG-CBOR map of the record ``_build({"text": "hello"})``, with ``changes``."""
    return {**_build({"text": "hello"}).record.to_map(), **changes}


def _build(body: Any, **kw: Any) -> SignedRecord:
    kw.setdefault("namespace", "notes")
    kw.setdefault("thread", "t1")
    kw.setdefault("kind", "note")
    kw.setdefault("clock", 1)
    kw.setdefault("ts", NOW_MS - 60_000)
    return build_record(AUTHOR, body=body, now_ms=NOW_MS, **kw)


def _raw(data: bytes, key: SigningKey = AUTHOR) -> tuple[bytes, bytes]:
    """Raw record bytes and the author's signature over their CID (no record checks)."""
    return data, key.sign(cid_for_dagcbor(data).raw)


def _signed_map(m: Json, key: SigningKey = AUTHOR) -> tuple[bytes, bytes]:
    return _raw(dagcbor_encode(m), key)


def _cbor2_map(m: Json) -> Any:
    def conv(v: Any) -> Any:
        if isinstance(v, CID):
            return cbor2.CBORTag(42, b"\x00" + v.raw)
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, list):
            return [conv(x) for x in v]
        return v

    return conv(m)


def _record_case(name: str, section: str, expect: str, data: bytes, sig: bytes, **kw: Any) -> Json:
    cid = cid_for_dagcbor(data)
    item_cid = kw.pop("item_cid", cid)
    fields: Json = {"data_hex": data.hex(), "sig_hex": sig.hex(), "cid": str(item_cid)}
    if expect == "ok":
        fields["author"] = AUTHOR.did
    fields["now_ms"] = NOW_MS
    fields.update(kw)
    return _case(name, section, expect, **fields)


GOOD_RECORDS: list[tuple[str, SignedRecord]] = []


def _good_records() -> list[tuple[str, SignedRecord]]:
    if GOOD_RECORDS:
        return GOOD_RECORDS
    first = _build({"text": "hello"})
    GOOD_RECORDS.extend(
        [
            ("note", first),
            (
                "with-parent",
                _build({"text": "reply", "n": -7}, parents=[first.cid], clock=2, thread="t1"),
            ),
            (
                "bytes-and-link-in-body",
                _build({"blob": b"\x00\x01\xfe\xff", "see": _link(1), "big": 2**64 - 1}),
            ),
            ("unicode-names-and-text", _build({"t": "é€😀"}, namespace="app/notes:v1@x+y-z")),
            ("float-1.5", _build({"x": 1.5, "y": -0.25})),
            (
                "float-2^53-and-beyond",
                _build({"a": 9007199254740992.0, "b": -1e300, "c": 5e-324}),
            ),
            ("null-body", _build(None)),
            ("depth-32", _build(_nest(32))),
            ("ts-at-future-limit", _build(1, ts=NOW_MS + DEFAULT_LIMITS.max_future_ms)),
        ]
    )
    return GOOD_RECORDS


def _nest(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


def _patch(data: bytes, old: bytes, new: bytes) -> bytes:
    assert data.count(old) == 1, old
    return data.replace(old, new)


def records() -> Json:
    cases: list[Json] = []
    for name, rec in _good_records():
        cases.append(_record_case(name, "5.1", "ok", rec.data, rec.sig))
    note = _good_records()[0][1]

    def bad(name: str, section: str, expect: str, m: Json, **kw: Any) -> None:
        data, sig = _signed_map(m, kw.pop("key", AUTHOR))
        cases.append(_record_case(name, section, expect, data, sig, **kw))

    def bad_bytes(name: str, section: str, expect: str, data: bytes, **kw: Any) -> None:
        data, sig = _raw(data)
        cases.append(_record_case(name, section, expect, data, sig, **kw))

    # §5.4 floats: valid signatures, the exact float bytes in the record.
    bad(
        "float-1.0",
        "5.4",
        "RECORD_INVALID",
        _record_map(body={"a": [1, 2, 1.0]}),
        float_hex="fb3ff0000000000000",
        message_contains="body.a[2]",
    )
    bad(
        "float-negative-zero",
        "5.4",
        "RECORD_INVALID",
        _record_map(body={"a": [1, 2, -0.0]}),
        float_hex="fb8000000000000000",
        message_contains="body.a[2]",
    )
    bad(
        "float-0.0-body",
        "5.4",
        "RECORD_INVALID",
        _record_map(body=0.0),
        float_hex="fb0000000000000000",
        message_contains="body",
    )
    bad(
        "float-2^53-1",
        "5.4",
        "RECORD_INVALID",
        _record_map(body={"max safe": 9007199254740991.0}),
        float_hex="fb433fffffffffffff",
        message_contains='body["max safe"]',
    )
    # §3.2 strict DAG-CBOR
    good = dagcbor_encode(_record_map())
    bad_bytes(
        "non-canonical-key-order",
        "3.2",
        "NON_CANONICAL",
        cbor2.dumps(_cbor2_map(dict(reversed(list(_record_map().items()))))),
    )
    bad_bytes(
        "non-canonical-half-float",
        "3.2",
        "NON_CANONICAL",
        cbor2.dumps(_cbor2_map(_record_map(body=1.5)), canonical=True),
        why="1.5 as a 16-bit float (f93e00); DAG-CBOR floats are 64-bit",
    )
    bad_bytes(
        "non-canonical-long-int",
        "3.2",
        "NON_CANONICAL",
        _patch(good, b"\x65clock\x01", b"\x65clock\x18\x01"),
        why="clock 1 as 18 01",
    )
    bad_bytes(
        "non-canonical-indefinite-list",
        "3.2",
        "NON_CANONICAL",
        _patch(good, b"\x67parents\x80", b"\x67parents\x9f\xff"),
    )
    bad_bytes("trailing-byte", "3.2", "MALFORMED", good + b"\x00")
    bad_bytes("truncated", "3.2", "MALFORMED", good[:-1])
    bad_bytes(
        "tag-1-in-body",
        "3.2",
        "MALFORMED",
        cbor2.dumps(_cbor2_map(_record_map(body=cbor2.CBORTag(1, 0))), canonical=True),
    )
    bad_bytes(
        "undefined-in-body",
        "3.2",
        "MALFORMED",
        _patch(good, b"\x64body\xa1\x64text\x65hello", b"\x64body\xf7"),
    )
    bad_bytes("not-cbor", "3.2", "MALFORMED", b"\xff\x00garbage")
    # §5.5 signature and id
    tampered = _patch(note.data, b"hello", b"jello")
    cases.append(
        _record_case(
            "tampered-body",
            "5.5",
            "BAD_SIGNATURE",
            tampered,
            note.sig,
            why="the author's signature over the original CID",
        )
    )
    cases.append(
        _record_case(
            "signature-by-another-key",
            "5.2",
            "BAD_SIGNATURE",
            note.data,
            OTHER.sign(note.cid.raw),
        )
    )
    cases.append(
        _record_case(
            "signature-over-record-bytes",
            "5.2",
            "BAD_SIGNATURE",
            note.data,
            AUTHOR.sign(note.data),
            why="the signature covers the 36 CID bytes, not the record bytes",
        )
    )
    cases.append(
        _record_case("signature-63-bytes", "5.5", "BAD_SIGNATURE", note.data, note.sig[:63])
    )
    cases.append(
        _record_case(
            "cid-mismatch",
            "5.6",
            "RECORD_INVALID",
            note.data,
            note.sig,
            item_cid=_good_records()[1][1].cid,
            why="the wire item names another record's id",
        )
    )
    # §5.1 shape
    bad("extra-key", "5.1", "RECORD_INVALID", {**_record_map(), "extra": 1})
    missing = _record_map()
    del missing["clock"]
    bad("missing-key", "5.1", "RECORD_INVALID", missing)
    bad("version-2", "5.1", "RECORD_INVALID", _record_map(v=2))
    bad("clock-is-bool", "5.1", "RECORD_INVALID", _record_map(clock=True))
    bad("parent-as-text", "5.1", "RECORD_INVALID", _record_map(parents=[str(note.cid)]))
    bad("author-not-did-key", "5.5", "DID_INVALID", _record_map(author="did:web:example.com"))
    data = dagcbor_encode(_record_map(author=SMALL_ORDER_DID))
    cases.append(
        _record_case(
            "author-small-order-key",
            "2.3",
            "BAD_SIGNATURE",
            data,
            bytes(64),
            why="no signature can verify under an unusable key",
        )
    )
    # §5.3 limits
    bad("name-with-space", "5.3", "RECORD_INVALID", _record_map(namespace="my notes"))
    bad("name-leading-slash", "5.3", "RECORD_INVALID", _record_map(thread="/t1"))
    bad("name-empty", "5.3", "RECORD_INVALID", _record_map(kind=""))
    bad("name-257-chars", "5.3", "RECORD_INVALID", _record_map(kind="k" * 257))
    bad(
        "parents-repeated",
        "5.3",
        "RECORD_INVALID",
        _record_map(parents=[note.cid, note.cid]),
    )
    raw_codec = CID(b"\x01\x55\x12\x20" + bytes(32))
    bad("parent-not-a-record-id", "5.3", "RECORD_INVALID", _record_map(parents=[raw_codec]))
    bad(
        "parents-65",
        "5.3",
        "RECORD_INVALID",
        _record_map(parents=[_link(i) for i in range(65)]),
    )
    bad("clock-2^53", "5.3", "RECORD_INVALID", _record_map(clock=2**53))
    bad("ts-negative", "5.3", "RECORD_INVALID", _record_map(ts=-1))
    bad("body-depth-33", "5.3", "RECORD_INVALID", _record_map(body=_nest(33)))
    bad(
        "body-reserved-link-map",
        "5.3",
        "RECORD_INVALID",
        _record_map(body={"/": "bafy-not-a-link"}),
        why="DAG-JSON would read it back as a link",
    )
    bad(
        "ts-future",
        "5.3",
        "RECORD_FROM_FUTURE",
        _record_map(ts=NOW_MS + DEFAULT_LIMITS.max_future_ms + 1),
    )
    big = _record_map(body={"text": "x" * 200})
    bad(
        "too-large-for-limit",
        "5.3",
        "RECORD_TOO_LARGE",
        big,
        limits={"max_record_bytes": 200},
        why="a node configured with max_record_bytes 200",
    )
    return _file(
        "records",
        ["2.3", "3.2", "5.1", "5.2", "5.3", "5.4", "5.5", "5.6"],
        "Records as wire items (§5.6): data_hex is the record's DAG-CBOR bytes, sig_hex "
        "the signature, cid the id the item names. Verify as §5.5 at now_ms with the "
        "default limits (or those of limits). A valid case gives author and cid; "
        "float cases show the exact float bytes (float_hex) inside data; "
        "message_contains is what fedpeer's message names (the path).",
        cases,
        defaults={
            "max_record_bytes": DEFAULT_LIMITS.max_record_bytes,
            "max_body_depth": DEFAULT_LIMITS.max_body_depth,
            "max_parents": DEFAULT_LIMITS.max_parents,
            "max_name_len": DEFAULT_LIMITS.max_name_len,
            "max_future_ms": DEFAULT_LIMITS.max_future_ms,
        },
    )


# --- feed pages (§8.2) and cursors (§8.3) ---


def feed_pages() -> Json:
    recs = [r for _, r in _good_records()[:3]]
    cursor = cursor_at(EPOCH, 7, bytes(recs[2].cid), key=CURSOR_KEY).encode()
    cases: list[Json] = []

    def page(name: str, section: str, expect: str, data: bytes, **kw: Any) -> None:
        cases.append(_case(name, section, expect, cbor_hex=data.hex(), now_ms=NOW_MS, **kw))

    valid = encode_page_cbor(recs, cursor, True)
    assert valid == dagcbor_encode(
        {
            "records": [{"cid": r.cid, "data": r.data, "sig": r.sig} for r in recs],
            "next_cursor": cursor,
            "has_more": True,
        }
    )
    page(
        "page/three-records",
        "8.2",
        "ok",
        valid,
        record_cids=[str(r.cid) for r in recs],
        next_cursor=cursor,
        has_more=True,
    )
    empty_cursor = cursor_at(EPOCH, 9, bytes(recs[0].cid), key=CURSOR_KEY).encode()
    page(
        "page/empty-caught-up",
        "8.2",
        "ok",
        encode_page_cbor([], empty_cursor, False),
        record_cids=[],
        next_cursor=empty_cursor,
        has_more=False,
    )

    def wire(**changes: Any) -> Json:
        w: Json = {
            "records": [{"cid": r.cid, "data": r.data, "sig": r.sig} for r in recs[:1]],
            "next_cursor": cursor,
            "has_more": False,
        }
        w.update(changes)
        return w

    page("page/extra-key", "8.2", "PAGE_INVALID", dagcbor_encode({**wire(), "seq": 1}))
    page("page/has-more-not-bool", "8.2", "PAGE_INVALID", dagcbor_encode(wire(has_more=1)))
    page("page/records-not-list", "8.2", "PAGE_INVALID", dagcbor_encode(wire(records={})))
    page(
        "page/cursor-not-printable",
        "8.2",
        "PAGE_INVALID",
        dagcbor_encode(wire(next_cursor="abc\ndef")),
    )
    page("page/cursor-empty", "8.2", "PAGE_INVALID", dagcbor_encode(wire(next_cursor="")))
    page(
        "page/cursor-257-chars",
        "8.2",
        "PAGE_INVALID",
        dagcbor_encode(wire(next_cursor="c" * 257)),
    )
    page(
        "page/non-canonical",
        "3.2",
        "NON_CANONICAL",
        cbor2.dumps(_cbor2_map(dict(reversed(list(wire().items()))))),
    )
    jello = _patch(recs[0].data, b"hello", b"jello")
    tampered = [{"cid": cid_for_dagcbor(jello), "data": jello, "sig": recs[0].sig}]
    page("page/tampered-record", "5.5", "BAD_SIGNATURE", dagcbor_encode(wire(records=tampered)))
    stale_cid = [{"cid": recs[0].cid, "data": jello, "sig": recs[0].sig}]
    page(
        "page/item-cid-mismatch",
        "5.5",
        "RECORD_INVALID",
        dagcbor_encode(wire(records=stale_cid)),
        why="the id is checked before the signature (§5.5 step 4)",
    )
    extra_item = [{"cid": recs[0].cid, "data": recs[0].data, "sig": recs[0].sig, "seq": 1}]
    page("page/item-extra-key", "5.6", "MALFORMED", dagcbor_encode(wire(records=extra_item)))
    cid_text = [{"cid": str(recs[0].cid), "data": recs[0].data, "sig": recs[0].sig}]
    page("page/item-cid-as-text", "5.6", "MALFORMED", dagcbor_encode(wire(records=cid_text)))
    return _file(
        "feed-pages",
        ["3.2", "5.5", "5.6", "8.2"],
        "Feed pages as served in application/cbor: cbor_hex is the whole page. Decode "
        "strictly (§3.2), check the page shape (§8.2), then verify every item (§5.6) at "
        "now_ms. A valid case gives the record ids in order, next_cursor and has_more. "
        "(The puller's cursor checks of §8.7 need the previous cursor and are not part "
        "of these cases.)",
        cases,
    )


def cursors() -> Json:
    cases: list[Json] = []
    good_records = [r for _, r in _good_records()]
    cid = good_records[0].cid
    cid_bytes = bytes(cid)
    fp = fingerprint(cid_bytes, key=CURSOR_KEY)
    for seq in (0, 1, 7, 2**63 - 1):
        c = cursor_at(EPOCH, seq, cid_bytes, key=CURSOR_KEY)
        seq_fp = bytes(8) if seq == 0 else fp
        cases.append(
            _case(
                f"cursor/format-2/seq-{seq}",
                "8.3",
                "ok",
                cursor=c.encode(),
                format=2,
                epoch=EPOCH,
                seq=str(seq),
                cursor_key_hex=CURSOR_KEY.hex(),
                cid_at_seq=None if seq == 0 else str(cid),
                fingerprint_hex=seq_fp.hex(),
                raw_hex=(b"\x02" + bytes.fromhex(EPOCH) + seq.to_bytes(8, "big") + seq_fp).hex(),
            )
        )
    for seq in (0, 1, 7, 2**63 - 1):
        c = Cursor(EPOCH, seq)
        cases.append(
            _case(
                f"cursor/format-1/seq-{seq}",
                "8.3",
                "ok",
                cursor=c.encode(),
                format=1,
                epoch=EPOCH,
                seq=str(seq),
                raw_hex=(b"\x01" + bytes.fromhex(EPOCH) + seq.to_bytes(8, "big")).hex(),
            )
        )
    good = cursor_at(EPOCH, 7, cid_bytes, key=CURSOR_KEY).encode()
    good1 = Cursor(EPOCH, 7).encode()

    def raw_text(raw: bytes) -> str:
        return b64url_encode(raw)

    body = bytes.fromhex(EPOCH) + (7).to_bytes(8, "big")
    byte2_short = raw_text(b"\x02" + body)
    version3 = raw_text(b"\x03" + body + fp)
    zero_seq_fp = raw_text(b"\x02" + bytes.fromhex(EPOCH) + bytes(8) + fp)
    negative = raw_text(b"\x02" + bytes.fromhex(EPOCH) + (-1).to_bytes(8, "big", signed=True) + fp)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    # 33 bytes fill 44 characters exactly; 25 bytes leave 4 unused bits in the last
    # character of a format 1 cursor: set the lowest one.
    stray_bits = good1[:-1] + alphabet[alphabet.index(good1[-1]) ^ 1]
    bad = [
        ("cursor/empty", ""),
        ("cursor/43-chars", good[:-1]),
        ("cursor/45-chars", good + "A"),
        ("cursor/33-chars", good1[:-1]),
        ("cursor/padded", good1 + "=="),
        ("cursor/plus-character", good[:-1] + "+"),
        ("cursor/format-byte-2-in-25-bytes", byte2_short),
        ("cursor/format-byte-3", version3),
        ("cursor/negative-seq", negative),
        ("cursor/fingerprint-at-seq-0", zero_seq_fp),
        ("cursor/non-zero-trailing-bits", stray_bits),
    ]
    for name, text in bad:
        cases.append(_case(name, "8.3", "CURSOR_INVALID", cursor=text))
    other_epoch = "f" * 32
    other_cid = str(good_records[1].cid)
    store = {"cursor_key_hex": CURSOR_KEY.hex()}
    for name, cursor, epoch, head, at_seq, expect in [
        ("resolve/format-2/same-record", good, EPOCH, 7, str(cid), "ok"),
        ("resolve/format-2/behind", good, EPOCH, 100, str(cid), "ok"),
        ("resolve/format-2/other-record-at-seq", good, EPOCH, 100, other_cid, "CURSOR_RESET"),
        ("resolve/format-2/past-the-head", good, EPOCH, 6, None, "CURSOR_RESET"),
        ("resolve/format-2/other-epoch", good, other_epoch, 100, str(cid), "CURSOR_RESET"),
        ("resolve/format-1/same-store", good1, EPOCH, 7, str(cid), "ok"),
        ("resolve/format-1/behind", good1, EPOCH, 100, other_cid, "ok"),
        ("resolve/format-1/other-epoch", good1, other_epoch, 100, str(cid), "CURSOR_RESET"),
        ("resolve/format-1/ahead-of-head", good1, EPOCH, 6, None, "CURSOR_FROM_FUTURE"),
    ]:
        cases.append(
            _case(
                name,
                "8.3",
                expect,
                cursor=cursor,
                store_epoch=epoch,
                head_seq=head,
                cid_at_seq=at_seq,
                **store,
            )
        )
    return _file(
        "cursors",
        ["8.3"],
        "Cursors (§8.3): cursor is the text, format its format byte, raw_hex its bytes "
        "(format byte, epoch, seq and, for format 2, the fingerprint), seq the sequence "
        "number in decimal (a string: it may exceed 2^53). Format 2 fingerprint: the "
        "first 8 bytes of HMAC-SHA-256 keyed with cursor_key_hex over the binary CID "
        "cid_at_seq (8 zero bytes at seq 0). Cases with store_epoch and head_seq resolve "
        "the cursor against a store with that epoch, head, cursor key, and the record "
        "cid_at_seq at the cursor's seq (null: none).",
        cases,
    )


# --- invites (§10, §11.2) ---

INVITE_ID = hashlib.sha256(b"fedpeer conformance 1: invite id").hexdigest()[:32]
SECRET = b64url_encode(hashlib.sha256(b"fedpeer conformance 1: invite secret").digest())
INVITE_TTL_S = 24 * 3600
INVITE_CREATED_MS = NOW_MS - 600_000


def _invite(key: SigningKey = NODE, **doc_changes: Any) -> Invite:
    scopes = parse_scopes(["reader"])
    target = Target("instance")
    expires_ms = INVITE_CREATED_MS + INVITE_TTL_S * 1000
    doc: Json = {
        "type": INVITE_DOC_TYPE,
        "v": 1,
        "invite_id": INVITE_ID,
        "issuer": key.did,
        "scopes": scopes_to_list(scopes),
        "scope_target": target.to_dict(),
        "accept_holder_types": ["guest", "federated"],
        "max_uses": 1,
        "expires_ms": expires_ms,
        "token_ttl_s": DEFAULT_TOKEN_TTL_S,
        "device_label": "alice-laptop",
    }
    doc.update(doc_changes)
    signed = sign_document(doc, key, ttl_s=INVITE_TTL_S, now=INVITE_CREATED_MS / 1000)
    return Invite(
        invite_id=INVITE_ID,
        issuer_did=NODE.did,
        created_ms=INVITE_CREATED_MS,
        expires_ms=expires_ms,
        max_uses=1,
        uses=0,
        scopes=scopes,
        target=target,
        accept_holder_types=("guest", "federated"),
        token_ttl_s=DEFAULT_TOKEN_TTL_S,
        device_label="alice-laptop",
        notes=None,
        secret_hash=hash_secret(SECRET),
        document=signed,
    )


def invite_document_fields() -> list[str]:
    """The members of the signed invite document these vectors use (pinned by a test
    against a real ``create_invite``)."""
    return sorted(_invite().document)


def invites() -> Json:
    cases: list[Json] = []
    url = invite_url(ISSUER_URL, INVITE_ID, NODE.did, SECRET)

    # §10.1 URLs
    cases.append(
        _case(
            "url/valid",
            "10.1",
            "ok",
            kind="url",
            url=url,
            node_url=ISSUER_URL,
            invite_id=INVITE_ID,
            issuer_did=NODE.did,
            secret=SECRET,
        )
    )
    cases.append(
        _case(
            "url/with-path-prefix",
            "10.1",
            "ok",
            kind="url",
            url=invite_url(ISSUER_URL + "/fedpeer", INVITE_ID, NODE.did, SECRET),
            node_url=ISSUER_URL + "/fedpeer",
            invite_id=INVITE_ID,
            issuer_did=NODE.did,
            secret=SECRET,
        )
    )
    pin = b64url_encode(hashlib.sha256(b"a certificate's SubjectPublicKeyInfo").digest())
    https_url = ISSUER_URL.replace("http://", "https://")
    pinned = invite_url(https_url, INVITE_ID, NODE.did, SECRET, pin)
    cases.append(
        _case(
            "url/https-with-pin",
            "10.1",
            "ok",
            kind="url",
            url=pinned,
            node_url=https_url,
            invite_id=INVITE_ID,
            issuer_did=NODE.did,
            secret=SECRET,
            pin=pin,
        )
    )
    pbase, _, pfragment = pinned.partition("#")
    cases.append(
        _case("url/pin-short", "10.1", "MALFORMED", kind="url", url=pinned.replace(pin, pin[:-1]))
    )
    cases.append(
        _case(
            "url/two-pins",
            "10.1",
            "MALFORMED",
            kind="url",
            url=f"{pbase}&pin={pin}#{pfragment}",
        )
    )
    base, _, fragment = url.partition("#")
    for name, text, expect in [
        ("url/no-secret", base, "MALFORMED"),
        ("url/secret-in-query", base + "&" + fragment, "MALFORMED"),
        ("url/short-secret", url[:-1], "MALFORMED"),
        (
            "url/two-issuers",
            base.replace("?", f"?issuer={OTHER.did}&") + "#" + fragment,
            "MALFORMED",
        ),
        ("url/no-issuer", base.split("?")[0] + "#" + fragment, "MALFORMED"),
        ("url/bad-invite-id", url.replace(INVITE_ID, INVITE_ID.upper()), "MALFORMED"),
        ("url/ftp", "ftp" + url[4:], "MALFORMED"),
        ("url/issuer-not-a-did", url.replace(NODE.did, "alice"), "DID_INVALID"),
    ]:
        cases.append(_case(name, "10.1", expect, kind="url", url=text))

    # §10.2 previews
    invite = _invite()
    preview = invite.to_preview(NOW_MS)

    def pv(name: str, expect: str, value: Json, **kw: Any) -> None:
        kw.setdefault("now", NOW)
        if expect == "ok":
            kw["signed_bytes"] = _signed_bytes(value["invite"])
        cases.append(_case(name, "10.2", expect, kind="preview", url=url, preview=value, **kw))

    pv("preview/valid", "ok", preview)

    def changed(change: Callable[[Json], None]) -> Json:
        out = copy.deepcopy(preview)
        change(out)
        return out

    pv(
        "preview/tampered-scopes",
        "BAD_SIGNATURE",
        changed(lambda p: p["invite"].__setitem__("scopes", ["admin"])),
    )
    pv(
        "preview/state-revoked",
        "INVITE_REVOKED",
        changed(lambda p: p.__setitem__("state", "revoked")),
    )
    pv(
        "preview/state-exhausted",
        "INVITE_EXHAUSTED",
        changed(lambda p: p.__setitem__("state", "exhausted")),
    )
    pv(
        "preview/state-expired",
        "INVITE_EXPIRED",
        changed(lambda p: p.__setitem__("state", "expired")),
    )
    pv("preview/no-document", "PEER_INVALID", changed(lambda p: p.pop("invite")))
    pv(
        "preview/signed-by-another-node",
        "DID_MISMATCH",
        {**preview, "invite": _invite(OTHER).document},
    )
    pv(
        "preview/other-invite-id",
        "PEER_INVALID",
        {**preview, "invite": _invite(invite_id="f" * 32).document},
    )
    pv(
        "preview/wrong-type",
        "PEER_INVALID",
        {**preview, "invite": _invite(type="fedpeer-federation-manifest").document},
    )
    pv(
        "preview/issuer-member-differs",
        "PEER_INVALID",
        {**preview, "invite": _invite(issuer=OTHER.did).document},
    )
    pv(
        "preview/document-expired",
        "SIGNATURE_EXPIRED",
        preview,
        now=INVITE_CREATED_MS // 1000 + INVITE_TTL_S + 301,
    )

    # §10.3-§10.6 redeem bodies
    def redeem(name: str, section: str, expect: str, body: Json, **kw: Any) -> None:
        kw.setdefault("now_ms", NOW_MS)
        cases.append(
            _case(
                name,
                section,
                expect,
                kind="redeem",
                invite_id=INVITE_ID,
                issuer_did=NODE.did,
                body=body,
                **kw,
            )
        )

    def ok_redeem(name: str, section: str, body: Json, holder: str, **kw: Any) -> None:
        redeem(
            name,
            section,
            "ok",
            body,
            holder_did=holder,
            confirmation_code=confirmation_code(NODE.did, holder, INVITE_ID),
            **kw,
        )

    guest = {
        "holder_type": "guest",
        "secret": SECRET,
        "holder_pubkey": b64url_encode(HOLDER.public_key),
    }
    ok_redeem("redeem/guest", "10.3", guest, HOLDER.did)
    ok_redeem(
        "redeem/guest-multibase-key",
        "10.3",
        {**guest, "holder_pubkey": ed25519_multibase(HOLDER.public_key), "holder_label": "phone"},
        HOLDER.did,
    )
    issued = NOW_MS - 1500
    proof, _ = sign_redeem_proof(
        HOLDER, invite_id=INVITE_ID, audience=NODE.did, issued_at_ms=issued
    )
    federated = {
        "holder_type": "federated",
        "secret": SECRET,
        "holder_did": HOLDER.did,
        "holder_proof": proof,
        "holder_proof_issued_at_ms": issued,
    }
    payload = redeem_proof_payload(
        invite_id=INVITE_ID, audience=NODE.did, holder_did=HOLDER.did, issued_at_ms=issued
    )
    ok_redeem(
        "redeem/federated",
        "10.4",
        federated,
        HOLDER.did,
        proof_payload=jcs(payload).decode(),
    )
    reciprocal = {
        "token": "fp_" + "0123456789abcdef0123" + "_" + "ab" * 32,
        "scopes": ["records:read", "sync:read"],
        "url": HOLDER_URL,
    }
    ok_redeem(
        "redeem/federated-with-reciprocal",
        "11.2",
        {**federated, "reciprocal": reciprocal, "holder_label": "bob-laptop"},
        HOLDER.did,
    )

    def proof_at(at_ms: int, *, key: SigningKey = HOLDER, **payload_changes: Any) -> Json:
        p = redeem_proof_payload(
            invite_id=INVITE_ID, audience=NODE.did, holder_did=HOLDER.did, issued_at_ms=at_ms
        )
        p.update(payload_changes)
        sig = key.sign(jcs(p))
        return {**federated, "holder_proof": b64url_encode(sig), "holder_proof_issued_at_ms": at_ms}

    ok_redeem("redeem/proof-60s-old", "10.4", proof_at(NOW_MS - 60_000), HOLDER.did)
    ok_redeem("redeem/proof-60s-ahead", "10.4", proof_at(NOW_MS + 60_000), HOLDER.did)
    redeem("redeem/proof-stale-61s", "10.4", "FRESHNESS_VIOLATION", proof_at(NOW_MS - 60_001))
    redeem("redeem/proof-future-61s", "10.4", "FRESHNESS_VIOLATION", proof_at(NOW_MS + 60_001))
    redeem(
        "redeem/proof-other-audience",
        "10.4",
        "BAD_PROOF",
        proof_at(issued, audience=OTHER.did),
        why="a proof for another issuer",
    )
    redeem(
        "redeem/proof-other-invite",
        "10.4",
        "BAD_PROOF",
        proof_at(issued, invite_id="f" * 32),
    )
    redeem(
        "redeem/proof-other-purpose",
        "10.4",
        "BAD_PROOF",
        proof_at(issued, purpose="fedpeer-invite-redeem-v2"),
    )
    redeem("redeem/proof-by-another-key", "10.4", "BAD_PROOF", proof_at(issued, key=OTHER))
    redeem(
        "redeem/proof-issued-at-differs",
        "10.4",
        "BAD_PROOF",
        {**federated, "holder_proof_issued_at_ms": issued + 1},
    )
    redeem(
        "redeem/proof-padded",
        "10.4",
        "BAD_PROOF",
        {**federated, "holder_proof": proof + "=="},
    )
    redeem(
        "redeem/guest-small-order-key",
        "10.3",
        "KEY_UNKNOWN",
        {**guest, "holder_pubkey": b64url_encode(bytes(32))},
    )
    redeem(
        "redeem/guest-key-31-bytes",
        "10.3",
        "MALFORMED",
        {**guest, "holder_pubkey": b64url_encode(HOLDER.public_key[:31])},
    )
    redeem(
        "redeem/guest-with-proof-fields",
        "10.3",
        "INVALID_REQUEST",
        {**guest, "holder_did": HOLDER.did},
    )
    redeem(
        "redeem/unknown-holder-type", "10.3", "INVALID_REQUEST", {**guest, "holder_type": "peer"}
    )
    redeem(
        "redeem/no-secret",
        "10.3",
        "INVALID_REQUEST",
        {k: v for k, v in guest.items() if k != "secret"},
    )
    redeem(
        "redeem/issued-at-2^53",
        "10.3",
        "INVALID_REQUEST",
        {**federated, "holder_proof_issued_at_ms": 2**53},
    )
    redeem(
        "redeem/holder-did-invalid",
        "10.3",
        "DID_INVALID",
        {**federated, "holder_did": "alice"},
    )
    redeem(
        "redeem/reciprocal-url-not-http",
        "10.3",
        "INVALID_REQUEST",
        {**federated, "reciprocal": {**reciprocal, "url": "ftp://192.0.2.7"}},
    )
    redeem(
        "redeem/blank-label",
        "10.3",
        "INVALID_REQUEST",
        {**guest, "holder_label": "   "},
    )
    cases.append(
        _case(
            "confirmation-code/order-matters",
            "10.6",
            "ok",
            kind="confirmation-code",
            issuer_did=HOLDER.did,
            holder_did=NODE.did,
            invite_id=INVITE_ID,
            confirmation_code=confirmation_code(HOLDER.did, NODE.did, INVITE_ID),
            hashed=jcs([HOLDER.did, NODE.did, INVITE_ID]).decode(),
        )
    )
    return _file(
        "invites",
        ["10.1", "10.2", "10.3", "10.4", "10.6", "11.2"],
        "Invites. kind url: parse an invite URL (§10.1). kind preview: check the issuer's "
        "preview before redeeming (§10.2) for the URL at now (unix seconds). kind redeem: "
        "an issuer checks a redeem body (§10.3, §10.4) for invite_id issued by issuer_did "
        "at now_ms, up to the proof; ok cases give the holder DID and the confirmation "
        "code (§10.6); proof_payload is the JCS text the holder signed. The invite's "
        f"secret is {SECRET!r}. kind confirmation-code: the code of issuer, holder, "
        "invite id (hashed is the JCS text that is hashed).",
        cases,
        invite_purpose=PROOF_PURPOSE,
    )


# --- mDNS TXT (§12) ---


def mdns_txt() -> Json:
    cases: list[Json] = []
    exp = NOW + 3600

    def txt_case(name: str, section: str, expect: str, txt: dict[str, str], **kw: Any) -> None:
        kw.setdefault("now", NOW)
        if expect == "ok":
            kw["signed_bytes_hex"] = signing_input(txt).hex()
        cases.append(_case(name, section, expect, txt=txt, **kw))

    def base(**kw: Any) -> dict[str, str]:
        args: Json = {
            "handle": "alice-laptop",
            "port": 8765,
            "namespaces": ["notes", "app/photos"],
            "capabilities": ["sync", "invites"],
            "seq": NOW_MS - 5000,
            "expires_at": exp,
        }
        args.update(kw)
        return sign_txt(NODE, **args)

    def resigned(txt: dict[str, str], key: SigningKey = NODE) -> dict[str, str]:
        out = {k: v for k, v in txt.items() if k != "sig"}
        out["sig"] = b64url_encode(key.sign(signing_input(out)))
        return out

    good = base()
    announcement = {
        "did": NODE.did,
        "handle": "alice-laptop",
        "port": 8765,
        "namespaces": ["notes", "app/photos"],
        "capabilities": ["sync", "invites"],
        "seq": NOW_MS - 5000,
        "expires_at": exp,
        "extra": {},
    }
    txt_case("txt/valid", "12.2", "ok", good, announcement=announcement)
    txt_case(
        "txt/valid-expected-did",
        "12.4",
        "ok",
        good,
        expected_did=NODE.did,
        announcement=announcement,
    )
    txt_case(
        "txt/empty-lists",
        "12.2",
        "ok",
        base(namespaces=[], capabilities=[]),
        announcement={**announcement, "namespaces": [], "capabilities": []},
    )
    extra = resigned({**good, "x-tls": "sha256:abcd"})
    txt_case(
        "txt/unknown-key-signed",
        "12.3",
        "ok",
        extra,
        announcement={**announcement, "extra": {"x-tls": "sha256:abcd"}},
        why="unknown keys are signed too and reported, not refused",
    )
    txt_case(
        "txt/expired-within-skew",
        "12.4",
        "ok",
        good,
        now=exp + 300,
        announcement=announcement,
    )
    txt_case("txt/expired", "12.4", "SIGNATURE_EXPIRED", good, now=exp + 301)
    txt_case(
        "txt/exp-beyond-24h",
        "12.4",
        "MALFORMED",
        base(expires_at=NOW + 86_400 + 301),
    )
    txt_case("txt/tampered-handle", "12.3", "BAD_SIGNATURE", {**good, "handle": "mallory"})
    txt_case(
        "txt/tampered-extra-key",
        "12.3",
        "BAD_SIGNATURE",
        {**extra, "x-tls": "sha256:ffff"},
    )
    txt_case("txt/signed-by-another-key", "12.3", "BAD_SIGNATURE", resigned(good, OTHER))
    txt_case(
        "txt/other-expected-did",
        "12.4",
        "DID_MISMATCH",
        good,
        expected_did=HOLDER.did,
    )
    txt_case(
        "txt/missing-seq",
        "12.2",
        "MALFORMED",
        resigned({k: v for k, v in good.items() if k != "seq"}),
    )
    txt_case("txt/version-2", "12.2", "MALFORMED", resigned({**good, "v": "2"}))
    upper = {("DID" if k == "did" else k): v for k, v in good.items()}
    txt_case(
        "txt/upper-case-did-key",
        "12.2",
        "MALFORMED",
        resigned(upper),
        why="a known key in another case counts as missing",
    )
    txt_case(
        "txt/keys-differing-in-case",
        "12.2",
        "MALFORMED",
        {**good, "Did": good["did"]},
    )
    txt_case("txt/did-not-did-key", "12.4", "DID_INVALID", {**good, "did": "did:web:example.com"})
    txt_case("txt/sig-padded", "12.4", "MALFORMED", {**good, "sig": good["sig"] + "=="})
    txt_case("txt/sig-63-bytes", "12.4", "MALFORMED", {**good, "sig": good["sig"][:84]})
    txt_case(
        "txt/seq-leading-zero", "12.2", "MALFORMED", resigned({**good, "seq": "0" + good["seq"]})
    )
    txt_case("txt/seq-beyond-2^53", "12.2", "MALFORMED", resigned({**good, "seq": str(2**53)}))
    txt_case("txt/port-0", "12.2", "MALFORMED", resigned({**good, "port": "0"}))
    txt_case(
        "txt/handle-control-char",
        "12.2",
        "MALFORMED",
        resigned({**good, "handle": "alice\nlaptop"}),
    )
    txt_case(
        "txt/ns-bad-item",
        "12.2",
        "MALFORMED",
        resigned({**good, "ns": "notes,,photos"}),
    )
    txt_case(
        "txt/key-with-equals",
        "12.2",
        "MALFORMED",
        {**good, "a=b": "c"},
    )
    return _file(
        "mdns-txt",
        ["12.2", "12.3", "12.4"],
        "mDNS TXT announcements as {key: value} strings. Check as §12.4 at now (unix "
        "seconds), against expected_did when given. A valid case gives what the "
        "announcement says and signed_bytes_hex, the bytes the signature covers (§12.3). "
        "(The SRV port check and the seq replay rules of §12.5 need the SRV record and "
        "the receiver's history and are not part of these cases.)",
        cases,
    )


# --- TLS pins (§6.6) ---


def _cert(name: str, key: Any, sign_key: Any, algorithm: Any) -> Any:
    """A self-signed certificate, byte-for-byte reproducible (fixed serial and dates;
    Ed25519 and RFC 6979 ECDSA signatures are deterministic)."""
    import datetime

    from cryptography import x509
    from cryptography.x509.oid import NameOID

    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    start = datetime.datetime(2027, 1, 1, tzinfo=datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key)
        .serial_number(int.from_bytes(_seed(name)[:8], "big"))
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=3650))
    )
    if algorithm is None:
        return builder.sign(sign_key, None)
    return builder.sign(sign_key, algorithm, ecdsa_deterministic=True)


def tls_pins() -> Json:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    from fedpeer.peer.tls import spki_sha256

    p256 = ec.derive_private_key(
        int.from_bytes(_seed("tls p-256"), "big") % (2**255), ec.SECP256R1()
    )
    edkey = ed25519.Ed25519PrivateKey.from_private_bytes(_seed("tls ed25519"))
    cert_a = _cert("fedpeer node", p256.public_key(), p256, hashes.SHA256())
    cert_b = _cert("renamed, same key", p256.public_key(), p256, hashes.SHA256())
    cert_c = _cert("fedpeer node", edkey.public_key(), edkey, None)

    def pem(cert: Any) -> str:
        return str(cert.public_bytes(serialization.Encoding.PEM).decode("ascii"))

    pin_a, pin_c = spki_sha256(cert_a), spki_sha256(cert_c)
    assert spki_sha256(cert_b) == pin_a
    cases: list[Json] = [
        _case("spki/p-256", "6.6", "ok", kind="spki", cert_pem=pem(cert_a), pin=pin_a),
        _case(
            "spki/same-key-other-certificate",
            "6.6",
            "ok",
            kind="spki",
            cert_pem=pem(cert_b),
            pin=pin_a,
        ),
        _case("spki/ed25519", "6.6", "ok", kind="spki", cert_pem=pem(cert_c), pin=pin_c),
    ]

    def member(name: str, expect: str, value: Any) -> None:
        cases.append(_case(name, "6.6", expect, kind="manifest-pins", tls_spki_sha256=value))

    member("manifest-pins/one", "ok", [pin_a])
    member("manifest-pins/announced-next", "ok", [pin_a, pin_c])
    member("manifest-pins/not-a-list", "PEER_INVALID", pin_a)
    member("manifest-pins/empty", "PEER_INVALID", [])
    member("manifest-pins/five", "PEER_INVALID", [pin_a] * 5)
    member("manifest-pins/padded", "PEER_INVALID", [pin_a + "="])
    member(
        "manifest-pins/standard-base64",
        "PEER_INVALID",
        [
            pin_a.replace("-", "+").replace("_", "/")
            if ("-" in pin_a or "_" in pin_a)
            else "+" + pin_a[1:]
        ],
    )
    member("manifest-pins/hex", "PEER_INVALID", [hashlib.sha256(b"x").hexdigest()])

    def decide(name: str, expect: str, served: str, manifest: list[str], oob: list[str]) -> None:
        cases.append(
            _case(
                name,
                "6.6",
                expect,
                kind="decide",
                served_pin=served,
                manifest_pins=manifest,
                oob_pins=oob,
            )
        )

    decide("decide/served-listed", "ok", pin_a, [pin_a], [])
    decide("decide/served-is-announced-next", "ok", pin_c, [pin_a, pin_c], [])
    decide("decide/impostor-replays-manifest", "TLS_PIN_MISMATCH", pin_c, [pin_a], [])
    decide("decide/no-pins-over-https", "PEER_INVALID", pin_a, [], [])
    decide("decide/invite-pin-matches", "ok", pin_a, [pin_a], [pin_a])
    decide("decide/invite-pin-differs", "TLS_PIN_MISMATCH", pin_a, [pin_a, pin_c], [pin_c])
    decide("decide/invite-pin-not-in-manifest", "TLS_PIN_MISMATCH", pin_a, [pin_c], [pin_a])
    decide("decide/invite-before-rotation", "TLS_PIN_MISMATCH", pin_c, [pin_c], [pin_a])
    return _file(
        "tls-pins",
        ["6.6"],
        "TLS pins (§6.6). kind spki: cert_pem's pin is base64url(SHA-256(DER "
        "SubjectPublicKeyInfo)), no padding (two certificates of one key share it). kind "
        "manifest-pins: the federation manifest's tls_spki_sha256 member, ok or PEER_INVALID. "
        "kind decide: served_pin (the certificate on the connection), manifest_pins (of a "
        "manifest verified for the expected DID) and oob_pins (from the invite URL or the "
        "TXT): may a credential be sent on that connection?",
        cases,
    )


# --- writing ---


BUILDERS: dict[str, Callable[[], Json]] = {
    "identities.json": identities,
    "signed-json.json": signed_json,
    "records.json": records,
    "feed-pages.json": feed_pages,
    "cursors.json": cursors,
    "invites.json": invites,
    "mdns-txt.json": mdns_txt,
    "tls-pins.json": tls_pins,
}


def render(value: Json) -> str:
    """The exact text of a vector file."""
    return json.dumps(value, indent=1, ensure_ascii=False) + "\n"


def build_all() -> dict[str, str]:
    """Every vector file's name and text, generated afresh (deterministic)."""
    GOOD_RECORDS.clear()
    return {name: render(BUILDERS[name]()) for name in FILES}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE, help="directory to write to")
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    stale = []
    for name, text in build_all().items():
        path = args.out / name
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
    if stale:
        print(f"out of date: {', '.join(stale)}; run {Path(__file__).name}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
