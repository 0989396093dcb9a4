"""Identity-layer benchmark: Ed25519 through fedpeer vs raw pynacl, did:key, DAG-CBOR.

Run with ``python bench/identity.py`` (about 20-40 s). Every figure is the median
of several timed rounds; fedpeer and raw pynacl rounds are interleaved so that
machine noise hits both alike. The headline check is the verify ratio: fedpeer's
``verify_signature`` (point-validity check and VerifyKey cached per key, strict
RFC 8032) should keep at least 0.9 of raw ``nacl.signing.VerifyKey.verify``.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import nacl.signing

from fedpeer.identity import (
    SigningKey,
    did_from_public_key,
    public_key_from_did,
    sign_document,
    verify_document,
    verify_signature,
)

ROUNDS = 7
MESSAGE = b"x" * 100  # a CID-sized to record-sized message
VERIFY_TARGET = 0.9
T = TypeVar("T")


def rate(fn: Callable[[], object], n: int) -> float:
    """Operations per second of ``n`` calls of ``fn`` (one timed round)."""
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - start)


def rate_over(fn: Callable[[T], object], items: Sequence[T]) -> float:
    """Operations per second of one call of ``fn`` per item (one timed round)."""
    start = time.perf_counter()
    for item in items:
        fn(item)
    return len(items) / (time.perf_counter() - start)


def median_pair(
    a: Callable[[], float], b: Callable[[], float], rounds: int = ROUNDS
) -> tuple[float, float]:
    """Medians of interleaved rounds of two measurements."""
    ra: list[float] = []
    rb: list[float] = []
    for _ in range(rounds):
        ra.append(a())
        rb.append(b())
    return statistics.median(ra), statistics.median(rb)


def median(fn: Callable[[], float], rounds: int = ROUNDS) -> float:
    return statistics.median(fn() for _ in range(rounds))


def show(label: str, value: float, unit: str = "/s") -> None:
    print(f"{label:<44} {value:>12,.0f}{unit}")


def bench_ed25519() -> float:
    key = SigningKey.from_seed(bytes(range(32)))
    raw_sk = nacl.signing.SigningKey(bytes(range(32)))
    raw_vk = raw_sk.verify_key
    sig = key.sign(MESSAGE)
    pk = key.public_key
    n = 3000

    # warm caches and code paths
    verify_signature(pk, MESSAGE, sig)
    raw_vk.verify(MESSAGE, sig)

    fp_sign, raw_sign = median_pair(
        lambda: rate(lambda: key.sign(MESSAGE), n),
        lambda: rate(lambda: raw_sk.sign(MESSAGE).signature, n),
    )
    show("Ed25519 sign   fedpeer", fp_sign)
    show("Ed25519 sign   raw pynacl", raw_sign)
    print(f"sign fedpeer/raw ratio: {fp_sign / raw_sign:.2f}")

    fp_verify, raw_verify = median_pair(
        lambda: rate(lambda: verify_signature(pk, MESSAGE, sig), n),
        lambda: rate(lambda: raw_vk.verify(MESSAGE, sig), n),
    )
    show("Ed25519 verify fedpeer (strict, cached key)", fp_verify)
    show("Ed25519 verify raw pynacl (VerifyKey kept)", raw_verify)
    ratio = fp_verify / raw_verify
    print(f"verify fedpeer/raw ratio: {ratio:.2f} (target >= {VERIFY_TARGET})")

    # Many distinct signers: the first verify of each key pays the point check.
    keys = [SigningKey.from_seed(i.to_bytes(32, "big")) for i in range(1, 1001)]
    pairs = [(k.public_key, k.sign(MESSAGE)) for k in keys]
    from fedpeer.identity import keys as keys_module

    def cold() -> float:
        keys_module._verify_key.cache_clear()
        return rate_over(lambda p: verify_signature(p[0], MESSAGE, p[1]), pairs)

    show("Ed25519 verify fedpeer, 1000 new keys", median(cold, 3))
    return ratio


def bench_didkey() -> None:
    dids = [did_from_public_key(i.to_bytes(32, "big")) for i in range(1, 5001)]
    uncached = public_key_from_did.__wrapped__
    show("did:key parse uncached", median(lambda: rate_over(uncached, dids), 5))
    did = dids[0]
    public_key_from_did(did)
    show(
        "did:key parse cached",
        median(lambda: rate(lambda: public_key_from_did(did), 50_000), 5),
    )
    pks = [i.to_bytes(32, "big") for i in range(1, 5001)]
    show("did:key encode", median(lambda: rate_over(did_from_public_key, pks), 5))


def bench_envelope() -> None:
    key = SigningKey.from_seed(bytes(range(32)))
    doc = {
        "did": key.did,
        "handle": "alice-laptop",
        "endpoints": {"sync": "http://192.168.1.20:7420/v1/sync"},
        "capabilities": ["sync:pull", "invites", "records:v1"],
        "version": "0.1.0",
    }
    now = time.time()
    signed = sign_document(doc, key, ttl_s=7 * 86400, now=now)
    verify_document(signed, now=now)
    n = 2000
    show(
        "signed document sign (JCS + Ed25519)",
        median(lambda: rate(lambda: sign_document(doc, key, ttl_s=60, now=now), n), 5),
    )
    show(
        "signed document verify (did:key offline)",
        median(lambda: rate(lambda: verify_document(signed, now=now), n), 5),
    )


def bench_dagcbor() -> None:
    try:
        from fedpeer.identity import cid_for_dagcbor, dagcbor_decode, dagcbor_encode
    except ImportError:
        print("DAG-CBOR: fedpeer.identity.canonical not available, skipped")
        return
    key = SigningKey.from_seed(bytes(range(32)))
    parent = cid_for_dagcbor(dagcbor_encode({"seed": 1}))
    record = {
        "v": 1,
        "author": key.did,
        "namespace": "notes",
        "thread": "2026/11/groceries",
        "kind": "note.text",
        "body": {
            "text": "oat milk, bread, 6 eggs, coffee beans (the good ones), apples",
            "tags": ["shopping", "weekly"],
            "done": False,
        },
        "parents": [parent],
        "clock": 42,
        "ts": 1_795_000_000_123,
    }
    data = dagcbor_encode(record)
    assert dagcbor_decode(data) == record
    n = 5000

    def encode_cid() -> object:
        return cid_for_dagcbor(dagcbor_encode(record))

    def decode_check() -> object:
        value = dagcbor_decode(data)  # strict: refuses non-canonical input
        if dagcbor_encode(value) != data:  # the re-encode check verify_record does
            raise AssertionError("not canonical")
        return value

    print(f"DAG-CBOR record size: {len(data)} bytes")
    show("DAG-CBOR encode + CID", median(lambda: rate(encode_cid, n), 5))
    show("DAG-CBOR decode (strict)", median(lambda: rate(lambda: dagcbor_decode(data), n), 5))
    show("DAG-CBOR decode + verify canonical", median(lambda: rate(decode_check, n), 5))


def main() -> int:
    started = time.perf_counter()
    print(f"fedpeer identity benchmark (medians of {ROUNDS} rounds unless noted)")
    ratio = bench_ed25519()
    bench_didkey()
    bench_envelope()
    bench_dagcbor()
    print(f"total time: {time.perf_counter() - started:.1f} s")
    return 0 if ratio >= VERIFY_TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
