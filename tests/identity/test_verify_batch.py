"""verify_batch and the verification worker: the same verdicts as verify_signature.

The batch form (and the worker process that runs it) must never disagree with
the single check: every Wycheproof and RFC 8032 case, random junk, wrong
types and sizes, and a real worker process answering over pipes.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedpeer import _ed25519
from fedpeer.errors import BadSignature, KeyUnknown
from fedpeer.identity import SigningKey, verify_batch, verify_signature

VECTORS = Path(os.environ.get("FEDPEER_VECTORS", Path(__file__).parents[2] / "interop" / "vectors"))
WYCHEPROOF = json.loads((VECTORS / "ed25519" / "wycheproof-ed25519_test.json").read_text())
RFC8032 = json.loads((VECTORS / "ed25519" / "rfc8032-7.1-ed25519.json").read_text())
KEY = SigningKey.from_seed(b"\x05" * 32)

Job = tuple[bytes, bytes, bytes]


def single(job: Job) -> bool:
    """The verdict of verify_signature for one job."""
    try:
        verify_signature(*job)
    except (BadSignature, KeyUnknown):
        return False
    return True


def wycheproof_jobs() -> list[tuple[Job, bool]]:
    out = []
    for group in WYCHEPROOF["testGroups"]:
        pk = bytes.fromhex(group["publicKey"]["pk"])
        for case in group["tests"]:
            job = (pk, bytes.fromhex(case["msg"]), bytes.fromhex(case["sig"]))
            out.append((job, case["result"] == "valid"))
    for vec in RFC8032["vectors"]:
        job = (
            bytes.fromhex(vec["public_key"]),
            bytes.fromhex(vec["message"]),
            bytes.fromhex(vec["signature"]),
        )
        out.append((job, True))
    return out


CASES = wycheproof_jobs()


def test_batch_agrees_with_single_and_wycheproof_on_every_vector() -> None:
    jobs = [job for job, _ in CASES]
    verdicts = verify_batch(jobs)
    assert verdicts == [expected for _, expected in CASES]
    assert verdicts == [single(job) for job in jobs]
    assert sum(verdicts) == 88 + len(RFC8032["vectors"])  # the valid ones, not more


def test_batch_is_false_for_wrong_types_and_sizes_never_raises() -> None:
    msg = b"m"
    sig = KEY.sign(msg)
    good = (KEY.public_key, msg, sig)
    bad: list[object] = [
        (KEY.public_key[:31], msg, sig),
        (KEY.public_key, msg, sig[:63]),
        (KEY.public_key, msg, sig + b"\x00"),
        (bytearray(KEY.public_key), msg, sig),
        (KEY.public_key, "m", sig),
        (KEY.public_key, msg, None),
        (bytes(32), msg, sig),  # not a usable point
    ]
    assert verify_batch([good, *bad, good]) == [True] + [False] * len(bad) + [True]  # type: ignore[list-item]
    assert verify_batch([]) == []


@settings(max_examples=60, deadline=None)
@given(
    message=st.binary(max_size=80),
    flip=st.one_of(st.none(), st.integers(0, 64 * 8 - 1)),
    other_key=st.booleans(),
)
def test_batch_equals_single_for_random_signatures(
    message: bytes, flip: int | None, other_key: bool
) -> None:
    sig = bytearray(KEY.sign(message))
    if flip is not None:
        sig[flip // 8] ^= 1 << (flip % 8)
    pk = SigningKey.from_seed(b"\x06" * 32).public_key if other_key else KEY.public_key
    job = (pk, message, bytes(sig))
    assert verify_batch([job]) == [single(job)]
    assert single(job) == (flip is None and not other_key)


# --- the worker protocol ------------------------------------------------------------------


def test_request_frame_round_trips() -> None:
    jobs = [job for job, _ in CASES[:40] if _ed25519.shippable(job)]
    frame = _ed25519.encode_request(jobs)
    count = int.from_bytes(frame[:4], "big")
    length = int.from_bytes(frame[4:8], "big")
    assert count == len(jobs)
    assert length == len(frame) - 8
    assert _ed25519.decode_request(count, frame[8:]) == jobs
    with pytest.raises(ValueError, match="truncated"):
        _ed25519.decode_request(count, frame[8:-1])
    with pytest.raises(ValueError, match="trailing"):
        _ed25519.decode_request(count - 1, frame[8:])


def test_shippable_only_for_well_formed_jobs() -> None:
    sig = KEY.sign(b"x")
    assert _ed25519.shippable((KEY.public_key, b"x", sig))
    assert not _ed25519.shippable((KEY.public_key, b"x" * 70_000, sig))
    assert not _ed25519.shippable((KEY.public_key[:5], b"x", sig))
    assert not _ed25519.shippable((KEY.public_key, b"x", sig[:10]))
    assert not _ed25519.shippable((KEY.public_key, bytearray(b"x"), sig))  # type: ignore[arg-type]


def test_serve_answers_each_request_then_stops_at_end_of_input() -> None:
    jobs = [job for job, _ in CASES if _ed25519.shippable(job)]
    first, second = jobs[:50], jobs[50:]
    stdin = io.BytesIO(_ed25519.encode_request(first) + _ed25519.encode_request(second))
    stdout = io.BytesIO()
    _ed25519.serve(stdin, stdout)
    out = stdout.getvalue()
    assert out[:1] == _ed25519.READY
    assert list(out[1:]) == [int(v) for v in verify_batch(first) + verify_batch(second)]


def test_a_real_worker_process_gives_the_same_verdicts() -> None:
    jobs = [job for job, _ in CASES if _ed25519.shippable(job)]
    src = str(Path(_ed25519.__file__).parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    code = "from fedpeer._ed25519 import worker_main; worker_main()"
    done = subprocess.run(
        [sys.executable, "-c", code],
        input=_ed25519.encode_request(jobs) * 2,
        capture_output=True,
        env=env,
        timeout=60,
        check=True,
    )
    expected = bytes(verify_batch(jobs))
    assert done.stdout == _ed25519.READY + expected + expected
    assert done.stderr == b""
