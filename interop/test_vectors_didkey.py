"""did:key against the W3C CCG did:key test vectors.

The vectors use the 2018/2019 suite types (``Ed25519VerificationKey2018``,
``X25519KeyAgreementKey2019`` with ``publicKeyBase58``); fedpeer emits the current
``Multikey`` form (``publicKeyMultibase``). So documents are compared by meaning -
DID, verification-method ids, controllers, key bytes and key kinds, and every
verification relationship - not as JSON bytes. The base58 in the vectors is decoded
with ``multiformats`` so the check does not lean on fedpeer's own base58 code.
"""

from __future__ import annotations

from typing import Any

import pytest
from multiformats import multibase

from fedpeer.errors import DidInvalid
from fedpeer.identity.canonical import b64url_decode
from fedpeer.identity.didkey import (
    did_document,
    did_from_public_key,
    public_key_from_did,
    x25519_from_ed25519_public,
    x25519_multibase,
)
from fedpeer.identity.keys import SigningKey
from interop._vectors import load_json

ED = load_json("did-key/w3c-ccg-ed25519-x25519.json")
ED_CASES = sorted(ED.items())
X = load_json("did-key/w3c-ccg-x25519.json")["didDocument"]
X_CASES = sorted(X.items())

RELATIONSHIPS = (
    "authentication",
    "assertionMethod",
    "capabilityInvocation",
    "capabilityDelegation",
    "keyAgreement",
)
ED25519_PUB = b"\xed\x01"
X25519_PUB = b"\xec\x01"

ed = pytest.mark.parametrize(("did", "vec"), ED_CASES, ids=[d for d, _ in ED_CASES])
x_only = pytest.mark.parametrize(("did", "doc"), X_CASES, ids=[d for d, _ in X_CASES])


def _b58(text: str) -> bytes:
    return bytes(multibase.decode("z" + text))


def _their_key(method: dict[str, Any]) -> tuple[str, bytes]:
    """(kind, raw key) of a method in the vectors' 2018/2019 or JsonWebKey2020 forms."""
    if method["type"] == "JsonWebKey2020":
        jwk = method["publicKeyJwk"]
        assert jwk["kty"] == "OKP"
        return {"Ed25519": "ed25519", "X25519": "x25519"}[jwk["crv"]], b64url_decode(jwk["x"])
    kind = {
        "Ed25519VerificationKey2018": "ed25519",
        "X25519KeyAgreementKey2019": "x25519",
    }[method["type"]]
    return kind, _b58(method["publicKeyBase58"])


def _full_id(did: str, method_id: str) -> str:
    """Some vectors give key pair ids as bare fragments ("#z6Mk..."), some as DID URLs."""
    return did + method_id if method_id.startswith("#") else method_id


def _our_key(method: dict[str, Any]) -> tuple[str, bytes]:
    assert method["type"] == "Multikey"
    raw = bytes(multibase.decode(method["publicKeyMultibase"]))
    kind = {ED25519_PUB: "ed25519", X25519_PUB: "x25519"}[raw[:2]]
    return kind, raw[2:]


def test_vector_counts() -> None:
    assert len(ED_CASES) == 5
    assert len(X_CASES) == 4


@ed
def test_did_from_seed(did: str, vec: dict[str, Any]) -> None:
    key = SigningKey.from_seed(bytes.fromhex(vec["seed"]))
    kind, public_key = _their_key(vec["verificationKeyPair"])
    assert kind == "ed25519"
    assert key.public_key == public_key
    assert key.did == did
    assert key.key_id == _full_id(did, vec["verificationKeyPair"]["id"])
    assert did_from_public_key(public_key) == did
    assert public_key_from_did(did) == public_key


@ed
def test_x25519_derivation(did: str, vec: dict[str, Any]) -> None:
    agreement = vec["keyAgreementKeyPair"]
    x_public = x25519_from_ed25519_public(public_key_from_did(did))
    assert _their_key(agreement) == ("x25519", x_public)
    assert f"{did}#{x25519_multibase(x_public)}" == _full_id(did, agreement["id"])


@ed
def test_did_document(did: str, vec: dict[str, Any]) -> None:
    theirs = vec["didDocument"]
    ours = did_document(did)
    assert ours["id"] == theirs["id"] == did
    assert isinstance(ours["@context"], list)
    assert ours["@context"][0] == theirs["@context"][0] == "https://www.w3.org/ns/did/v1"

    assert isinstance(ours["verificationMethod"], list)
    our_methods = {m["id"]: m for m in ours["verificationMethod"]}
    their_methods = {m["id"]: m for m in theirs["verificationMethod"]}
    assert our_methods.keys() == their_methods.keys()
    for method_id, theirs_m in their_methods.items():
        ours_m = our_methods[method_id]
        assert ours_m["controller"] == theirs_m["controller"] == did
        assert _our_key(ours_m) == _their_key(theirs_m)

    for relationship in RELATIONSHIPS:
        assert ours[relationship] == theirs[relationship], relationship


@x_only
def test_x25519_only_did_is_refused(did: str, doc: dict[str, Any]) -> None:
    with pytest.raises(DidInvalid):
        public_key_from_did(did)
    with pytest.raises(DidInvalid):
        did_document(did)


@x_only
def test_x25519_only_did_encodes_its_key(did: str, doc: dict[str, Any]) -> None:
    """The DID is the multibase of the document's X25519 key; ours encodes it identically."""
    (method,) = doc["verificationMethod"]
    kind, raw = _their_key(method)
    assert kind == "x25519"
    assert did == "did:key:" + x25519_multibase(raw)
    assert doc["keyAgreement"] == [method["id"]] == [f"{did}#{did[len('did:key:') :]}"]
