"""Raw Ed25519 signature checks, and the worker process that runs them in bulk.

This is the bottom of :func:`fedpeer.identity.keys.verify_signature` and
:func:`~fedpeer.identity.keys.verify_batch` (re-exported there; use those). It
lives at the top of the package, importing nothing but pynacl and cffi, so a
verification worker process (:func:`worker_main`) starts in a few tens of
milliseconds and ~15 MB without loading the rest of fedpeer.

Theory of operation
-------------------
The check is libsodium's ``crypto_sign_verify_detached`` (strict RFC 8032: ``S <
L``, canonical encodings, small-order ``R`` refused), reached through cffi in
ABI mode on the shared object pynacl ships (pynacl's own bindings only expose
``crypto_sign_open``, which wants ``sig || message`` and copies the message
out). It must pass a self-test before it is used; otherwise pynacl's
``crypto_sign_open`` is the fallback: the same libsodium check. Every cffi call
releases the GIL. A public key must also pass
``crypto_core_ed25519_is_valid_point`` (canonical, on the curve, prime order,
not small order); that verdict is cached per key.

Bulk checks in a pool of threads do not scale well in CPython: after each
libsodium call a thread needs the GIL back, and while another thread runs
Python it waits for the switch interval (5 ms) before it may take it, so the
signature threads idle exactly when the event loop is busiest. A worker
*process* has its own GIL. :func:`worker_main` serves batches over its stdin and
stdout:

* on start it writes :data:`READY` (after a self-test), then loops;
* a request is ``u32 count, u32 payload length`` (big-endian) and the payload:
  ``count`` jobs of ``public key (32) || signature (64) || u16 message length ||
  message``; it answers ``count`` bytes, ``1`` for a valid signature, ``0``
  otherwise, computed by :func:`verify_batch` (so the verdicts are the ones an
  in-process check gives);
* it exits on end of input (its parent closed the pipe or died) and ignores
  SIGINT (the parent decides when it ends).

Pure CPU, except :func:`worker_main` (blocking pipe I/O, for the worker only).
"""

from __future__ import annotations

import contextlib
import functools
import signal
import struct
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import BinaryIO

import nacl.bindings
import nacl.exceptions
import nacl.signing

__all__ = [
    "MAX_MESSAGE",
    "PUBLIC_KEY_BYTES",
    "READY",
    "SIGNATURE_BYTES",
    "decode_request",
    "encode_request",
    "is_usable_key",
    "shippable",
    "verify_batch",
    "verify_detached",
    "worker_main",
]

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
MAX_MESSAGE = 0xFFFF
"""Longest message a worker request can carry (record ids are 36 bytes)."""
READY = b"R"
"""What a worker writes once it can verify."""

_HEADER = struct.Struct(">II")
_MLEN = struct.Struct(">H")
_KEY_CACHE_SIZE = 8192

VerifyFn = Callable[[bytes, bytes, int, bytes], int]


def _load_detached() -> VerifyFn | None:
    """libsodium's ``crypto_sign_verify_detached`` through cffi, or None."""
    try:
        import cffi  # type: ignore[import-untyped]
        import nacl._sodium

        ffi = cffi.FFI()
        ffi.cdef(
            "int crypto_sign_verify_detached(const unsigned char *sig, "
            "const unsigned char *m, unsigned long long mlen, const unsigned char *pk);"
        )
        fn: VerifyFn = ffi.dlopen(nacl._sodium.__file__).crypto_sign_verify_detached
        key = nacl.signing.SigningKey(b"\x07" * 32)
        msg = b"fedpeer self-test"
        sig = key.sign(msg).signature
        pk = bytes(key.verify_key)
        bad = bytes([sig[0] ^ 1]) + sig[1:]
        if fn(sig, msg, len(msg), pk) != 0 or fn(bad, msg, len(msg), pk) == 0:
            return None  # pragma: no cover - a libsodium that disagrees with itself
    except Exception:  # pragma: no cover - no such symbol here: use pynacl's API
        return None
    return fn


def _verify_with_pynacl(sig: bytes, message: bytes, mlen: int, public_key: bytes) -> int:
    """The fallback: the same libsodium check through pynacl's ``crypto_sign_open``."""
    try:
        nacl.bindings.crypto_sign_open(sig + message, public_key)
    except nacl.exceptions.BadSignatureError:
        return -1
    return 0


verify_detached: VerifyFn = _load_detached() or _verify_with_pynacl
"""``verify_detached(sig, message, len(message), public_key)``: 0 when valid.

All four arguments must be ``bytes`` (``sig`` 64, ``public_key`` 32 bytes);
releases the GIL during the check."""


@functools.lru_cache(maxsize=_KEY_CACHE_SIZE)
def is_usable_key(public_key: bytes) -> bool:
    """Whether ``public_key`` (bytes) is a usable Ed25519 key; cached per key."""
    return len(public_key) == PUBLIC_KEY_BYTES and bool(
        nacl.bindings.crypto_core_ed25519_is_valid_point(public_key)
    )


def verify_batch(jobs: Iterable[tuple[bytes, bytes, bytes]]) -> list[bool]:
    """One verdict per ``(public_key, message, signature)``: see
    :func:`fedpeer.identity.keys.verify_batch` (the documented entry point)."""
    verify = verify_detached
    usable = is_usable_key
    out: list[bool] = []
    append = out.append
    for public_key, message, signature in jobs:
        if (
            type(public_key) is not bytes
            or type(message) is not bytes
            or type(signature) is not bytes
            or len(signature) != SIGNATURE_BYTES
            or not usable(public_key)
        ):
            append(False)
        else:
            append(verify(signature, message, len(message), public_key) == 0)
    return out


# --- the worker protocol ------------------------------------------------------------


def shippable(job: tuple[bytes, bytes, bytes]) -> bool:
    """Whether a job can go to a worker (else its verdict is False without asking).

    True for ``bytes`` of the right sizes (key 32, signature 64, message at most
    :data:`MAX_MESSAGE`); every other job fails :func:`verify_batch` anyway.
    """
    public_key, message, signature = job
    return (
        type(public_key) is bytes
        and type(message) is bytes
        and type(signature) is bytes
        and len(public_key) == PUBLIC_KEY_BYTES
        and len(signature) == SIGNATURE_BYTES
        and len(message) <= MAX_MESSAGE
    )


def encode_request(jobs: Sequence[tuple[bytes, bytes, bytes]]) -> bytes:
    """The request frame for ``jobs``, all :func:`shippable`."""
    mlen = _MLEN.pack
    parts: list[bytes] = [b""]
    for public_key, message, signature in jobs:
        parts += (public_key, signature, mlen(len(message)), message)
    payload_len = sum(map(len, parts))
    parts[0] = _HEADER.pack(len(jobs), payload_len)
    return b"".join(parts)


def decode_request(count: int, payload: bytes) -> list[tuple[bytes, bytes, bytes]]:
    """The jobs of a request payload (``ValueError`` when it does not hold ``count``)."""
    jobs: list[tuple[bytes, bytes, bytes]] = []
    i = 0
    end = len(payload)
    for _ in range(count):
        if i + 98 > end:
            raise ValueError("truncated verification request")
        public_key = payload[i : i + 32]
        signature = payload[i + 32 : i + 96]
        (n,) = _MLEN.unpack_from(payload, i + 96)
        i += 98
        if i + n > end:
            raise ValueError("truncated verification request")
        jobs.append((public_key, payload[i : i + n], signature))
        i += n
    if i != end:
        raise ValueError("trailing bytes in a verification request")
    return jobs


def _read_exact(stream: BinaryIO, n: int) -> bytes | None:
    chunks: list[bytes] = []
    while n:
        chunk = stream.read(n)
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def serve(stdin: BinaryIO, stdout: BinaryIO) -> None:
    """Answer verification requests from ``stdin`` on ``stdout`` until end of input."""
    stdout.write(READY)
    stdout.flush()
    while True:
        header = _read_exact(stdin, _HEADER.size)
        if header is None:
            return
        count, length = _HEADER.unpack(header)
        payload = _read_exact(stdin, length)
        if payload is None:
            return
        verdicts = verify_batch(decode_request(count, payload))
        stdout.write(bytes(verdicts))
        stdout.flush()


def worker_main() -> None:  # pragma: no cover - runs in the worker process
    """The entry point of a verification worker process (see the module docstring)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(BrokenPipeError, KeyboardInterrupt):
        serve(sys.stdin.buffer, sys.stdout.buffer)
