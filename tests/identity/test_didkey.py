"""did:key: encoding, strict decoding, DID documents against the W3C CCG vectors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multiformats import multibase

from fedpeer.errors import DidInvalid
from fedpeer.identity import (
    MULTIKEY_CONTEXT,
    SigningKey,
    b64url_decode,
    base58btc_decode,
    base58btc_encode,
    did_document,
    did_from_public_key,
    ed25519_from_multibase,
    public_key_from_did,
    x25519_from_ed25519_public,
    x25519_multibase,
)

VECTORS = Path(os.environ.get("FEDPEER_VECTORS", Path(__file__).parents[2] / "interop" / "vectors"))
DID_KEY_VECTORS = VECTORS / "did-key" / "w3c-ccg-ed25519-x25519.json"
X25519_VECTORS = VECTORS / "did-key" / "w3c-ccg-x25519.json"
needs_vectors = pytest.mark.skipif(
    not DID_KEY_VECTORS.exists(), reason=f"did:key vectors not found under {VECTORS}"
)

# The first W3C CCG vector, inlined so the core check never depends on the file.
SEED0_DID = "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp"
SEED0_PUB_B58 = "4zvwRjXUKGfvwnParsHAS3HuSVzV5cA4McphgmoCtajS"
SEED0_X25519_ID = "z6LShs9GGnqk85isEBzzshkuVWrVKsRp24GnDuHk8QWkARMW"
SEED0_X25519_B58 = "7By6kV2t2d188odEM4ExAve1UithKT6dLva4dwsDT3ak"

RELATIONSHIPS = (
    "authentication",
    "assertionMethod",
    "capabilityInvocation",
    "capabilityDelegation",
)


def _load(path: Path) -> dict[str, dict[str, object]]:
    data: dict[str, dict[str, object]] = json.loads(path.read_text())
    return data


def _vector_key_bytes(vm: dict[str, object]) -> bytes:
    """Raw key bytes of a vector verification method in 2018 (base58) or JWK form."""
    if "publicKeyBase58" in vm:
        return base58btc_decode(str(vm["publicKeyBase58"]))
    jwk = vm["publicKeyJwk"]
    assert isinstance(jwk, dict)
    return b64url_decode(jwk["x"])


def _our_key_bytes(vm: dict[str, object]) -> bytes:
    mb = vm["publicKeyMultibase"]
    assert isinstance(mb, str)
    assert mb.startswith("z")
    raw = base58btc_decode(mb[1:])
    assert raw[:2] in (b"\xed\x01", b"\xec\x01")
    return raw[2:]


def test_seed_zero_vector_inline() -> None:
    key = SigningKey.from_seed(bytes(32))
    assert key.did == SEED0_DID
    assert key.public_key == base58btc_decode(SEED0_PUB_B58)
    assert public_key_from_did(SEED0_DID) == key.public_key
    x = x25519_from_ed25519_public(key.public_key)
    assert x == base58btc_decode(SEED0_X25519_B58)
    assert x25519_multibase(x) == SEED0_X25519_ID
    doc = did_document(SEED0_DID)
    assert doc["keyAgreement"] == [f"{SEED0_DID}#{SEED0_X25519_ID}"]


def test_document_shape_is_current_multikey_form() -> None:
    did = SEED0_DID
    doc = did_document(did)
    ed_id = f"{did}#{did[8:]}"
    x_id = f"{did}#{SEED0_X25519_ID}"
    assert doc == {
        "@context": ["https://www.w3.org/ns/did/v1", "https://w3id.org/security/multikey/v1"],
        "id": did,
        "verificationMethod": [
            {
                "id": ed_id,
                "type": "Multikey",
                "controller": did,
                "publicKeyMultibase": did[8:],
            },
            {
                "id": x_id,
                "type": "Multikey",
                "controller": did,
                "publicKeyMultibase": SEED0_X25519_ID,
            },
        ],
        "authentication": [ed_id],
        "assertionMethod": [ed_id],
        "capabilityInvocation": [ed_id],
        "capabilityDelegation": [ed_id],
        "keyAgreement": [x_id],
    }
    assert tuple(doc["@context"]) == MULTIKEY_CONTEXT  # type: ignore[arg-type]


def test_document_is_a_fresh_copy() -> None:
    doc = did_document(SEED0_DID)
    doc["keyAgreement"] = []
    vms = doc["verificationMethod"]
    assert isinstance(vms, list)
    vms.clear()
    again = did_document(SEED0_DID)
    assert len(again["verificationMethod"]) == 2  # type: ignore[arg-type]
    assert again["keyAgreement"] != []


@needs_vectors
@pytest.mark.parametrize("did", sorted(_load(DID_KEY_VECTORS)) if DID_KEY_VECTORS.exists() else [])
def test_w3c_ccg_vectors(did: str) -> None:
    """Compare keys, ids and relationships with the vectors (2018 and JWK forms)."""
    entry = _load(DID_KEY_VECTORS)[did]
    seed = bytes.fromhex(str(entry["seed"]))
    key = SigningKey.from_seed(seed)
    assert key.did == did
    vec_doc = entry["didDocument"]
    assert isinstance(vec_doc, dict)
    ours = did_document(did)
    assert ours["id"] == vec_doc["id"] == did

    vec_vms = {vm["id"]: vm for vm in vec_doc["verificationMethod"]}
    our_vms = {vm["id"]: vm for vm in ours["verificationMethod"]}  # type: ignore[attr-defined]
    assert set(our_vms) == set(vec_vms)
    for vm_id, vm in our_vms.items():
        assert vm["controller"] == did
        assert _our_key_bytes(vm) == _vector_key_bytes(vec_vms[vm_id])
    for rel in (*RELATIONSHIPS, "keyAgreement"):
        assert ours[rel] == vec_doc[rel], rel

    # The separate key-pair entries agree too (their ids may be relative).
    ver = entry["verificationKeyPair"]
    assert isinstance(ver, dict)
    assert key.public_key == _vector_key_bytes(ver)
    ka = entry["keyAgreementKeyPair"]
    assert isinstance(ka, dict)
    x = x25519_from_ed25519_public(key.public_key)
    assert x == _vector_key_bytes(ka)
    assert str(ka["id"]).split("#")[1] == x25519_multibase(x)


@needs_vectors
def test_x25519_did_keys_are_rejected() -> None:
    docs = _load(X25519_VECTORS)["didDocument"]
    assert docs
    for did in docs:
        with pytest.raises(DidInvalid, match="X25519"):
            public_key_from_did(did)
        with pytest.raises(DidInvalid):
            did_document(did)


@settings(max_examples=200)
@given(st.binary(min_size=32, max_size=32))
def test_round_trip_random_keys(public_key: bytes) -> None:
    did = did_from_public_key(public_key)
    assert did.startswith("did:key:z6Mk")
    assert public_key_from_did(did) == public_key
    assert ed25519_from_multibase(did[8:]) == public_key


@settings(max_examples=100)
@given(st.binary(min_size=32, max_size=32))
def test_round_trip_real_keys_and_x25519_conversion(seed: bytes) -> None:
    key = SigningKey.from_seed(seed)
    assert public_key_from_did(key.did) == key.public_key
    doc = did_document(key.did)
    vms = doc["verificationMethod"]
    assert isinstance(vms, list)
    assert _our_key_bytes(vms[1]) == x25519_from_ed25519_public(key.public_key)


@settings(max_examples=200)
@given(st.binary(max_size=64))
def test_base58btc_matches_multiformats(data: bytes) -> None:
    text = base58btc_encode(data)
    assert "z" + text == multibase.encode(data, "base58btc")
    if data:
        assert base58btc_decode(text) == data


def test_base58_leading_zeros() -> None:
    assert base58btc_encode(b"\0\0\x01") == "112"
    assert base58btc_decode("112") == b"\0\0\x01"
    assert base58btc_decode("1") == b"\0"


def _did_with(raw: bytes) -> str:
    return "did:key:z" + base58btc_encode(raw)


GOOD = SEED0_DID


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "did:key:",
        "did:key:z",
        "did:web:example.com",
        "DID:key:" + GOOD[8:],
        "did:key " + GOOD[8:],
        GOOD[8:],  # bare multibase
        GOOD + "#" + GOOD[8:],  # a DID URL, not a DID
        GOOD + "?x=1",
        GOOD + "/path",
        " " + GOOD,
        GOOD + "\n",
        "did:key:" + "f" + GOOD[9:],  # multibase prefix other than z
        "did:key:" + "u" + GOOD[9:],
        "did:key:z6Mk0" + GOOD[13:],  # '0' is not base58
        "did:key:z6MkO" + GOOD[13:],  # 'O'
        "did:key:z6MkI" + GOOD[13:],  # 'I'
        "did:key:z6Mkl" + GOOD[13:],  # 'l'
        GOOD[:-1],  # one char short: wrong length
        GOOD + "a",  # one char long
        _did_with(b"\xed\x01" + bytes(31)),
        _did_with(b"\xed\x01" + bytes(33)),
        _did_with(b"\xec\x01" + bytes(range(32))),  # X25519 multicodec
        _did_with(b"\xe7\x01" + bytes(range(33))),  # secp256k1-pub
        _did_with(b"\xed" + bytes(range(32))),  # truncated varint
        "did:key:z" + "2" * 5000,  # huge
    ],
)
def test_invalid_identifiers(bad: str) -> None:
    with pytest.raises(DidInvalid):
        public_key_from_did(bad)


def test_non_string_did() -> None:
    with pytest.raises(DidInvalid):
        public_key_from_did(b"did:key:z6Mk")


def test_wrong_key_length_for_encoding() -> None:
    with pytest.raises(DidInvalid):
        did_from_public_key(bytes(31))
    with pytest.raises(DidInvalid):
        did_from_public_key("x" * 32)  # type: ignore[arg-type]


def test_decoding_is_cached() -> None:
    key = SigningKey.generate()
    before = public_key_from_did.cache_info()
    assert public_key_from_did(key.did) == key.public_key
    assert public_key_from_did(key.did) == key.public_key
    after = public_key_from_did.cache_info()
    assert after.hits >= before.hits + 1
    assert after.misses >= before.misses + 1


def test_small_order_key_decodes_but_has_no_document() -> None:
    """Decoding is syntactic; the document needs a convertible point."""
    small_order = bytes(32)  # y = 0: a point of order 4
    did = did_from_public_key(small_order)
    assert public_key_from_did(did) == small_order
    with pytest.raises(DidInvalid, match="not a valid curve point"):
        did_document(did)
    with pytest.raises(DidInvalid):
        x25519_from_ed25519_public(small_order)
