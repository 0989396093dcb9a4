"""Ed25519 keys: RFC 8032 / Wycheproof vectors, strict verification, key files, no leaks."""

from __future__ import annotations

import json
import logging
import os
import stat
import traceback
from pathlib import Path

import nacl.bindings
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedpeer.errors import (
    BadSignature,
    FedpeerError,
    KeyFileError,
    KeyFileInsecure,
    KeyFileMissing,
    KeyUnknown,
    Malformed,
)
from fedpeer.identity import (
    SigningKey,
    b64url_encode,
    did_from_public_key,
    is_valid_public_key,
    verify_signature,
)
from fedpeer.identity import keys as keys_module

VECTORS = Path(os.environ.get("FEDPEER_VECTORS", Path(__file__).parents[2] / "interop" / "vectors"))
RFC8032 = VECTORS / "ed25519" / "rfc8032-7.1-ed25519.json"
WYCHEPROOF = VECTORS / "ed25519" / "wycheproof-ed25519_test.json"

L = 2**252 + 27742317777372353535851937790883648493  # order of the prime subgroup
P = 2**255 - 19

# RFC 8032 section 7.1, TEST 1 and TEST 2 (inline so they never depend on the file).
RFC_TESTS = [
    (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
]


def _rfc_vectors() -> list[tuple[str, str, str, str]]:
    if not RFC8032.exists():
        return RFC_TESTS
    data = json.loads(RFC8032.read_text())
    return [
        (v["secret_key"], v["public_key"], v["message"], v["signature"]) for v in data["vectors"]
    ]


@pytest.mark.parametrize(("sk", "pk", "msg", "sig"), _rfc_vectors())
def test_rfc8032_vectors(sk: str, pk: str, msg: str, sig: str) -> None:
    key = SigningKey.from_seed(bytes.fromhex(sk))
    assert key.public_key == bytes.fromhex(pk)
    assert key.sign(bytes.fromhex(msg)) == bytes.fromhex(sig)
    verify_signature(key.public_key, bytes.fromhex(msg), bytes.fromhex(sig))
    assert key.did == did_from_public_key(key.public_key)
    assert key.key_id == f"{key.did}#{key.did[8:]}"


@pytest.mark.skipif(not WYCHEPROOF.exists(), reason="Wycheproof vectors not found")
def test_wycheproof_ed25519() -> None:
    data = json.loads(WYCHEPROOF.read_text())
    checked = 0
    for group in data["testGroups"]:
        pk = bytes.fromhex(group["publicKey"]["pk"])
        for t in group["tests"]:
            msg, sig = bytes.fromhex(t["msg"]), bytes.fromhex(t["sig"])
            if t["result"] == "valid":
                verify_signature(pk, msg, sig)
            else:
                with pytest.raises((BadSignature, KeyUnknown)):
                    verify_signature(pk, msg, sig)
            checked += 1
    assert checked == data["numberOfTests"] == 151


def test_sign_verify_and_tamper() -> None:
    key = SigningKey.generate()
    sig = key.sign(b"hello")
    assert len(sig) == 64
    verify_signature(key.public_key, b"hello", sig)
    with pytest.raises(BadSignature):
        verify_signature(key.public_key, b"hellO", sig)
    with pytest.raises(BadSignature):
        verify_signature(SigningKey.generate().public_key, b"hello", sig)
    with pytest.raises(BadSignature):
        verify_signature(key.public_key, b"hello", sig[:63])
    with pytest.raises(BadSignature):
        verify_signature(key.public_key, b"hello", sig + b"\0")
    with pytest.raises(BadSignature):
        verify_signature(key.public_key, "hello", sig)  # type: ignore[arg-type]
    # bytearray / memoryview public keys are accepted as bytes
    verify_signature(bytearray(key.public_key), b"hello", sig)  # type: ignore[arg-type]


@settings(max_examples=50)
@given(
    seed=st.binary(min_size=32, max_size=32), msg=st.binary(max_size=256), bit=st.integers(0, 511)
)
def test_any_flipped_signature_bit_fails(seed: bytes, msg: bytes, bit: int) -> None:
    key = SigningKey.from_seed(seed)
    sig = bytearray(key.sign(msg))
    verify_signature(key.public_key, msg, bytes(sig))
    sig[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(BadSignature):
        verify_signature(key.public_key, msg, bytes(sig))


def test_malleated_s_is_rejected() -> None:
    """S + L verifies in lax implementations; RFC 8032 requires S < L."""
    key = SigningKey.from_seed(bytes(range(32)))
    sig = key.sign(b"m")
    s = int.from_bytes(sig[32:], "little")
    assert s + L < 2**256
    malleated = sig[:32] + (s + L).to_bytes(32, "little")
    with pytest.raises(BadSignature):
        verify_signature(key.public_key, b"m", malleated)


# The eight small-order points of edwards25519 (canonical encodings) plus
# non-canonical encodings (y >= p) of some of them.
SMALL_ORDER = [
    bytes(32),  # y = 0 (order 4)
    (1).to_bytes(32, "little"),  # identity
    (P - 1).to_bytes(32, "little"),  # y = -1 (order 2)
    bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),
    bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa"),
    bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),
    bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85"),
    bytes(31) + b"\x80",  # y = 0, sign bit set
]
NON_CANONICAL = [
    (P + 1).to_bytes(32, "little"),  # y = p + 1 == 1 (identity, non-canonical)
    (2**255 - 1).to_bytes(32, "little"),  # y = p + 18
]


@pytest.mark.parametrize("pk", SMALL_ORDER + NON_CANONICAL)
def test_small_order_and_non_canonical_keys_are_unknown(pk: bytes) -> None:
    assert not is_valid_public_key(pk)
    with pytest.raises(KeyUnknown):
        verify_signature(pk, b"m", bytes(64))


def test_mixed_order_key_is_unknown() -> None:
    """A prime-order point plus a torsion point: libsodium's verify alone accepts it."""
    key = SigningKey.from_seed(bytes(range(32)))
    torsion = SMALL_ORDER[3]
    mixed = nacl.bindings.crypto_core_ed25519_add(key.public_key, torsion)
    assert mixed != key.public_key
    assert is_valid_public_key(key.public_key)
    assert not is_valid_public_key(mixed)
    with pytest.raises(KeyUnknown):
        verify_signature(mixed, b"m", key.sign(b"m"))


@pytest.mark.parametrize("pk", [b"", bytes(31), bytes(33), "x" * 32, 32, None])
def test_wrong_shape_keys(pk: object) -> None:
    assert not is_valid_public_key(pk)  # type: ignore[arg-type]
    with pytest.raises(KeyUnknown):
        verify_signature(pk, b"m", bytes(64))  # type: ignore[arg-type]


def test_verify_key_cache_is_bounded_and_used() -> None:
    key = SigningKey.generate()
    sig = key.sign(b"x")
    verify_signature(key.public_key, b"x", sig)
    before = keys_module._verify_key.cache_info()
    for _ in range(5):
        verify_signature(key.public_key, b"x", sig)
    after = keys_module._verify_key.cache_info()
    assert after.hits - before.hits == 5
    assert after.misses == before.misses
    assert after.maxsize is not None
    assert after.maxsize <= 65536


def test_equality_and_repr() -> None:
    seed = bytes(range(32))
    a, b = SigningKey.from_seed(seed), SigningKey.from_seed(seed)
    assert a == b
    assert hash(a) == hash(b)
    assert a != SigningKey.generate()
    assert repr(a) == f"SigningKey(did={a.did!r})"


def test_from_seed_wrong_length() -> None:
    secret = b"S" * 31
    with pytest.raises(Malformed) as info:
        SigningKey.from_seed(secret)
    assert "SSSS" not in str(info.value)


# --- key files ----------------------------------------------------------------------


def test_save_load_round_trip(tmp_path: Path) -> None:
    key = SigningKey.generate()
    path = tmp_path / "data" / "node.key"  # parent created
    key.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) & 0o077 == 0
    jwk = json.loads(path.read_text())
    assert set(jwk) == {"kty", "crv", "x", "d"}
    assert jwk["kty"] == "OKP"
    assert jwk["crv"] == "Ed25519"
    assert jwk["x"] == b64url_encode(key.public_key)
    loaded = SigningKey.load(path)
    assert loaded == key
    assert loaded.sign(b"m") == key.sign(b"m")
    assert os.listdir(path.parent) == ["node.key"]  # no temp file left behind


def test_save_replaces_existing_file_atomically(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    first, second = SigningKey.generate(), SigningKey.generate()
    first.save(path)
    inode = path.stat().st_ino
    second.save(path)
    assert SigningKey.load(path) == second
    assert path.stat().st_ino != inode  # a new file was renamed over the old one
    assert sorted(os.listdir(tmp_path)) == ["node.key"]


def test_exclusive_save_never_replaces_a_key(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    first, second = SigningKey.generate(), SigningKey.generate()
    first.save(path, exclusive=True)  # absent: created as usual
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):
        second.save(path, exclusive=True)
    assert SigningKey.load(path) == first
    assert sorted(os.listdir(tmp_path)) == ["node.key"]  # the loser's temp file is gone
    # another path component in the way is not "the key exists": KeyFileError as usual
    with pytest.raises(KeyFileError):
        second.save(path / "node.key", exclusive=True)


def test_two_first_starts_end_with_one_identity(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another process writes node.key between our "missing" and our save (two
    # `fedpeer run` at the same instant): we must use its key, not replace it.
    from fedpeer.peer import node as node_module

    theirs = SigningKey.generate()
    real_generate = SigningKey.generate

    def generate_while_another_process_saves() -> SigningKey:
        theirs.save(tmp_path / "node.key")
        return real_generate()

    monkeypatch.setattr(SigningKey, "generate", generate_while_another_process_saves)
    got = node_module.load_or_create_key(tmp_path)
    assert got == theirs
    assert SigningKey.load(tmp_path / "node.key") == theirs
    assert sorted(os.listdir(tmp_path)) == ["node.key"]


def test_save_failure_is_key_file_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(KeyFileError):
        SigningKey.generate().save(blocker / "node.key")


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o620, 0o700 | 0o044])
def test_load_refuses_insecure_file(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "node.key"
    SigningKey.generate().save(path)
    path.chmod(mode)
    with pytest.raises(KeyFileInsecure) as info:
        SigningKey.load(path)
    assert f"chmod 600 {path}" in str(info.value)
    assert info.value.code == "KEY_FILE_INSECURE"
    path.chmod(0o600)
    SigningKey.load(path)  # the fix works
    path.chmod(0o400)
    SigningKey.load(path)  # read-only by owner is fine too


def test_load_missing(tmp_path: Path) -> None:
    with pytest.raises(KeyFileMissing) as info:
        SigningKey.load(tmp_path / "nope.key")
    assert "fedpeer init" in str(info.value)


def test_load_directory(tmp_path: Path) -> None:
    d = tmp_path / "dir.key"
    d.mkdir(mode=0o700)
    with pytest.raises(KeyFileError) as info:
        SigningKey.load(d)
    assert type(info.value) is KeyFileError


SECRET = bytes(range(100, 132))
SECRET_B64 = b64url_encode(SECRET)
SECRET_KEY = SigningKey.from_seed(SECRET)


def _garbage_files() -> list[bytes]:
    x_ok = b64url_encode(SECRET_KEY.public_key)
    other_x = b64url_encode(SigningKey.generate().public_key)
    return [
        b"",
        b"\xff\xfe" + SECRET,
        b"not json " + SECRET_B64.encode(),
        b'{"d": "' + SECRET_B64.encode() + b'"',  # truncated JSON
        json.dumps([SECRET_B64]).encode(),
        json.dumps({"kty": "RSA", "crv": "Ed25519", "x": x_ok, "d": SECRET_B64}).encode(),
        json.dumps({"kty": "OKP", "crv": "X25519", "x": x_ok, "d": SECRET_B64}).encode(),
        json.dumps({"kty": "OKP", "crv": "Ed25519", "x": x_ok}).encode(),
        json.dumps({"kty": "OKP", "crv": "Ed25519", "d": SECRET_B64}).encode(),
        json.dumps({"kty": "OKP", "crv": "Ed25519", "x": x_ok, "d": SECRET_B64 + "A"}).encode(),
        json.dumps({"kty": "OKP", "crv": "Ed25519", "x": x_ok, "d": SECRET_B64[:-2]}).encode(),
        json.dumps({"kty": "OKP", "crv": "Ed25519", "x": x_ok, "d": SECRET_B64 + "="}).encode(),
        json.dumps({"kty": "OKP", "crv": "Ed25519", "x": x_ok, "d": "!" + SECRET_B64}).encode(),
        json.dumps({"kty": "OKP", "crv": "Ed25519", "x": other_x, "d": SECRET_B64}).encode(),
        json.dumps({"kty": "OKP", "crv": "Ed25519", "x": x_ok, "d": 5}).encode(),
        b" " * (70 * 1024),
    ]


def _all_text_of(err: BaseException) -> str:
    return "".join(traceback.format_exception(err)) + repr(err) + str(err)


def _secret_forms() -> list[str]:
    return [SECRET_B64, SECRET.hex(), repr(SECRET), SECRET_B64[:20], SECRET.hex()[:20]]


@pytest.mark.parametrize("content", _garbage_files())
def test_load_garbage_is_key_file_error_without_secret(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "node.key"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(KeyFileError) as info:
        SigningKey.load(path)
    assert type(info.value) is KeyFileError
    assert str(path) in str(info.value)
    text = _all_text_of(info.value)
    for form in _secret_forms():
        assert form not in text


def test_secret_never_in_repr_str_or_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    key = SECRET_KEY
    path = tmp_path / "node.key"
    key.save(path)
    loaded = SigningKey.load(path)
    shown = repr(key) + str(key) + repr(loaded) + f"{key}" + repr([key]) + repr({"k": key})
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert key.did in logged  # the log does say what happened
    for form in _secret_forms():
        assert form not in shown
        assert form not in logged
    assert SECRET_B64 in path.read_text()  # ...but the file does hold it


def test_secret_not_in_errors_of_verification() -> None:
    key = SECRET_KEY
    sig = key.sign(b"m")
    errors: list[FedpeerError] = []
    for args in [(key.public_key, b"n", sig), (bytes(32), b"m", sig), (key.public_key, b"m", b"")]:
        try:
            verify_signature(*args)
        except FedpeerError as err:
            errors.append(err)
    assert len(errors) == 3
    for caught in errors:
        for form in _secret_forms():
            assert form not in _all_text_of(caught)
