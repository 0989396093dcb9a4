"""Ed25519 against RFC 8032 §7.1 and Project Wycheproof (EdDSA verify).

Wycheproof sorts its cases into ``valid``, ``invalid`` and ``acceptable``. fedpeer
must verify every ``valid`` case and refuse every ``invalid`` one with
``BAD_SIGNATURE`` or ``KEY_UNKNOWN``. The vendored file has no ``acceptable``
cases (pinned by ``test_wycheproof_file_shape``, so a newer file that brings some
fails loudly and gets a decision). fedpeer's policy for that class is strict
RFC 8032 as libsodium implements it plus a prime-order check on the key: a
non-canonical ``S``, a small-order ``R``, and small-order or mixed-order public
keys are all refused.
"""

from __future__ import annotations

from typing import Any

import pytest

from fedpeer.errors import BadSignature, KeyUnknown
from fedpeer.identity.didkey import did_from_public_key
from fedpeer.identity.keys import SigningKey, verify_signature
from interop._vectors import load_json

RFC = load_json("ed25519/rfc8032-7.1-ed25519.json")["vectors"]
WYCHEPROOF = load_json("ed25519/wycheproof-ed25519_test.json")
CASES: list[tuple[str, dict[str, Any]]] = [
    (group["publicKey"]["pk"], test)
    for group in WYCHEPROOF["testGroups"]
    for test in group["tests"]
]


def _ids(cases: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [f"tc{t['tcId']}-{t['result']}-{'+'.join(t['flags'])}" for _, t in cases]


VALID = [c for c in CASES if c[1]["result"] == "valid"]
INVALID = [c for c in CASES if c[1]["result"] == "invalid"]
ACCEPTABLE = [c for c in CASES if c[1]["result"] == "acceptable"]


def test_wycheproof_file_shape() -> None:
    assert WYCHEPROOF["algorithm"] == "EDDSA"
    assert len(CASES) == WYCHEPROOF["numberOfTests"] == 151
    assert len(VALID) + len(INVALID) + len(ACCEPTABLE) == len(CASES)
    assert (len(VALID), len(INVALID), len(ACCEPTABLE)) == (88, 63, 0)


@pytest.mark.parametrize("vec", RFC, ids=[v["name"] for v in RFC])
def test_rfc8032_sign_and_verify(vec: dict[str, str]) -> None:
    key = SigningKey.from_seed(bytes.fromhex(vec["secret_key"]))
    public_key = bytes.fromhex(vec["public_key"])
    message = bytes.fromhex(vec["message"])
    signature = bytes.fromhex(vec["signature"])
    assert key.public_key == public_key
    assert key.did == did_from_public_key(public_key)
    assert key.sign(message) == signature  # Ed25519 signing is deterministic
    verify_signature(public_key, message, signature)
    with pytest.raises(BadSignature):
        verify_signature(public_key, message + b"\x00", signature)
    tampered = bytearray(signature)
    tampered[0] ^= 1
    with pytest.raises(BadSignature):
        verify_signature(public_key, message, bytes(tampered))


@pytest.mark.parametrize(("pk", "case"), VALID, ids=_ids(VALID))
def test_wycheproof_valid(pk: str, case: dict[str, Any]) -> None:
    verify_signature(bytes.fromhex(pk), bytes.fromhex(case["msg"]), bytes.fromhex(case["sig"]))


@pytest.mark.parametrize(("pk", "case"), INVALID, ids=_ids(INVALID))
def test_wycheproof_invalid(pk: str, case: dict[str, Any]) -> None:
    with pytest.raises((BadSignature, KeyUnknown)):
        verify_signature(bytes.fromhex(pk), bytes.fromhex(case["msg"]), bytes.fromhex(case["sig"]))
