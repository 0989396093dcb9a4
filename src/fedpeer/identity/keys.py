"""Ed25519 keys: generate, save, load, sign, verify.

Theory of operation
-------------------

A node's identity is one Ed25519 key pair (pynacl / libsodium). The secret half
lives in :class:`SigningKey` only; its ``repr`` shows the DID, and no message,
log line or exception built here contains secret material. On disk the key is
a JSON JWK ``{"kty":"OKP","crv":"Ed25519","x":..,"d":..}`` (``d`` is the 32-byte
seed, base64url without padding), written atomically with mode 0600 (temp file
in the same directory, fsync, ``os.replace`` or, for a first key that must not
replace one, a hard link; fsync of the directory). Loading
refuses a file that group or others can access.

Verification is strict RFC 8032 and sits on the sync hot path:

- libsodium's ``crypto_sign_open`` already rejects a non-canonical ``S``
  (``S >= L``), a small-order ``R`` and non-canonical or small-order public keys;
- pynacl happily builds a ``VerifyKey`` from any 32 bytes, and libsodium still
  accepts *mixed-order* public keys (a torsion component on top of a
  prime-order point), so we additionally require
  ``crypto_core_ed25519_is_valid_point`` (canonical, on the curve, in the
  prime-order subgroup, not small order) and report ``KEY_UNKNOWN`` otherwise.

The point check is cached per public key in one bounded LRU, and the check
itself calls libsodium's ``crypto_sign_verify_detached`` directly (see
:mod:`fedpeer._ed25519`; pynacl's ``VerifyKey.verify`` would concatenate and
copy), so a verify costs one dict lookup over the libsodium call.
:func:`verify_batch` runs that check over many triples in one call, for worker
threads: the GIL is released inside every libsodium call.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Iterable
from pathlib import Path

import attrs
import nacl.bindings
import nacl.exceptions
import nacl.signing

from fedpeer import _ed25519
from fedpeer._files import TargetExists, write_private
from fedpeer.errors import (
    BadSignature,
    KeyFileError,
    KeyFileInsecure,
    KeyFileMissing,
    KeyUnknown,
    Malformed,
)

from .canonical import b64url_decode, b64url_encode
from .didkey import did_from_public_key

__all__ = [
    "PUBLIC_KEY_BYTES",
    "SIGNATURE_BYTES",
    "SigningKey",
    "is_valid_public_key",
    "verify_batch",
    "verify_signature",
]

log = logging.getLogger(__name__)

PUBLIC_KEY_BYTES = 32
"""Length of a raw Ed25519 public key."""
SIGNATURE_BYTES = 64
"""Length of a detached Ed25519 signature."""
_SEED_BYTES = 32
_MAX_KEY_FILE_BYTES = 64 * 1024  # a JWK is ~150 bytes; never slurp a huge file
_VERIFY_KEY_CACHE_SIZE = 8192


def _check_seed(seed: bytes) -> None:
    if not isinstance(seed, bytes) or len(seed) != _SEED_BYTES:
        # Never echo the value: it is secret.
        raise Malformed("an Ed25519 seed is exactly 32 bytes")


@attrs.frozen(repr=False)
class SigningKey:
    """An Ed25519 key pair (the node identity).

    Build one with :meth:`generate`, :meth:`from_seed` or :meth:`load`. Attributes:
    ``public_key`` (32 raw bytes), ``did`` (``did:key:z6Mk...``) and ``key_id``
    (``f"{did}#{did[8:]}"``, the did:key verification method id). The seed is
    private: ``repr``/``str`` show only the DID, and equality compares public keys.
    """

    _key: nacl.signing.SigningKey = attrs.field(eq=False, hash=False, alias="key")
    public_key: bytes = attrs.field(init=False)
    did: str = attrs.field(init=False)
    key_id: str = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        public_key = bytes(self._key.verify_key)
        did = did_from_public_key(public_key)
        object.__setattr__(self, "public_key", public_key)
        object.__setattr__(self, "did", did)
        object.__setattr__(self, "key_id", f"{did}#{did[8:]}")

    def __repr__(self) -> str:
        return f"SigningKey(did={self.did!r})"

    __str__ = __repr__

    @classmethod
    def generate(cls) -> SigningKey:
        """A new random key pair (libsodium's CSPRNG). Never blocks noticeably."""
        return cls(nacl.signing.SigningKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> SigningKey:
        """The key pair for a 32-byte RFC 8032 seed (the secret key).

        Raises :class:`~fedpeer.errors.Malformed` if ``seed`` is not 32 bytes.
        """
        _check_seed(seed)
        return cls(nacl.signing.SigningKey(seed))

    def sign(self, message: bytes) -> bytes:
        """The 64-byte detached Ed25519 signature of ``message`` (deterministic)."""
        return self._key.sign(message).signature

    def to_jwk(self) -> dict[str, str]:
        """The private JWK ``{"kty":"OKP","crv":"Ed25519","x":..,"d":..}``.

        Contains the secret seed: for writing the key file only, never log it.
        """
        return {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": b64url_encode(self.public_key),
            "d": b64url_encode(bytes(self._key)),
        }

    def save(self, path: Path, *, exclusive: bool = False) -> None:
        """Write the key to ``path`` as a private JWK, atomically, with mode 0600.

        Creates the parent directory (mode 0700) if needed, writes a temp file in
        the same directory, fsyncs it, ``os.replace``-s it over ``path`` and fsyncs
        the directory, so a crash leaves either the old file or the new one. Blocking
        file I/O (call it via ``anyio.to_thread.run_sync`` from async code). Raises
        :class:`~fedpeer.errors.KeyFileError` if the file cannot be written.

        ``exclusive=True`` never replaces an existing file at ``path``: it raises
        ``FileExistsError`` (``filename`` = ``path``) instead; the file is put in
        place with a hard link rather than ``os.replace`` (creating a node's first
        key, where two processes may race: one key wins and both use it). Any
        other failure is still ``KeyFileError``.
        """
        path = Path(path)
        data = json.dumps(self.to_jwk(), separators=(",", ":"), sort_keys=True).encode()
        try:
            write_private(path, data, replace=not exclusive)
        except OSError as err:
            if exclusive and isinstance(err, TargetExists):
                raise
            raise KeyFileError(
                f"cannot write the key file {path}: {err.strerror or err.__class__.__name__}"
            ) from None
        log.info("saved key for %s to %s", self.did, path)

    @classmethod
    def load(cls, path: Path) -> SigningKey:
        """Read a key written by :meth:`save`.

        Raises :class:`~fedpeer.errors.KeyFileMissing` if ``path`` does not exist,
        :class:`~fedpeer.errors.KeyFileInsecure` if group or others have any
        permission on it (the message names the fix, ``chmod 600 <path>``), and
        :class:`~fedpeer.errors.KeyFileError` if it is not a regular file, cannot be
        read, or is not an Ed25519 private JWK whose ``x`` matches ``d``. Error
        messages never contain the file's content. Blocking file I/O.
        """
        path = Path(path)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise KeyFileMissing(
                f"no key file at {path}; run `fedpeer init` to create one"
            ) from None
        except OSError as err:
            raise KeyFileError(
                f"cannot open the key file {path}: {err.strerror or err.__class__.__name__}"
            ) from None
        try:
            st = os.fstat(fd)  # of the opened file: no race with a chmod or rename
            if not stat.S_ISREG(st.st_mode):
                raise KeyFileError(f"the key file {path} is not a regular file")
            if os.name == "posix" and st.st_mode & 0o077:
                raise KeyFileInsecure(
                    f"the key file {path} is accessible by other users "
                    f"(mode {stat.S_IMODE(st.st_mode):04o}); run `chmod 600 {path}` "
                    "and consider the key compromised if others could read it"
                )
            chunks: list[bytes] = []
            size = 0
            while size <= _MAX_KEY_FILE_BYTES:
                chunk = os.read(fd, 4096)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        except OSError as err:
            raise KeyFileError(
                f"cannot read the key file {path}: {err.strerror or err.__class__.__name__}"
            ) from None
        finally:
            os.close(fd)
        if size > _MAX_KEY_FILE_BYTES:
            raise KeyFileError(f"the key file {path} is too large to be a key")
        key = _key_from_jwk_bytes(b"".join(chunks), path)
        log.debug("loaded key for %s from %s", key.did, path)
        return key


def _key_from_jwk_bytes(data: bytes, path: Path) -> SigningKey:
    # Every failure path raises `from None` with a fixed message: decoder errors
    # can carry the input (JSONDecodeError.doc is the whole file, the secret).
    bad = f"the key file {path} is not an Ed25519 private JWK; restore it from a backup"
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise KeyFileError(bad) from None
    if not isinstance(obj, dict) or obj.get("kty") != "OKP" or obj.get("crv") != "Ed25519":
        raise KeyFileError(bad)
    d = obj.get("d")
    x = obj.get("x")
    if not isinstance(d, str) or not isinstance(x, str):
        raise KeyFileError(bad)
    try:
        seed = b64url_decode(d)
        public = b64url_decode(x)
    except Exception:
        raise KeyFileError(bad) from None
    if len(seed) != _SEED_BYTES:
        raise KeyFileError(bad)
    key = SigningKey(nacl.signing.SigningKey(seed))
    if public != key.public_key:
        raise KeyFileError(f"the key file {path} is damaged: its public key does not match")
    return key


# --- verification -----------------------------------------------------------------


# The raw check lives in fedpeer._ed25519, which imports only pynacl and cffi so
# that verification worker processes start light; this module is its API.
_verify_key = _ed25519.is_usable_key  # the cached point check (bounded LRU)
_DETACHED = _ed25519.verify_detached


def is_valid_public_key(public_key: bytes) -> bool:
    """Whether ``public_key`` is a usable Ed25519 public key.

    True iff it is 32 bytes encoding a canonical point of the prime-order subgroup
    that is not of small order (libsodium ``crypto_core_ed25519_is_valid_point``).
    Cached per key (bounded LRU). Never raises: non-bytes give False.
    """
    if type(public_key) is not bytes:
        return False
    return _verify_key(public_key)


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> None:
    """Check a detached Ed25519 ``signature`` of ``message`` by ``public_key``.

    Strict RFC 8032: ``S`` must be canonical (``S < L``), encodings canonical, ``R``
    not of small order. Returns None on success. Raises
    :class:`~fedpeer.errors.KeyUnknown` if ``public_key`` is not a usable key (see
    :func:`is_valid_public_key`) and :class:`~fedpeer.errors.BadSignature` if the
    signature is not 64 bytes or does not verify. Pure CPU, a few tens of
    microseconds, with the GIL released during the libsodium call.
    """
    if type(public_key) is not bytes:
        if not isinstance(public_key, (bytes, bytearray, memoryview)):
            raise KeyUnknown("a public key is 32 bytes")
        public_key = bytes(public_key)
    if not _verify_key(public_key):
        raise KeyUnknown("the public key is not a valid Ed25519 key (not a prime-order point)")
    if type(signature) is not bytes or len(signature) != SIGNATURE_BYTES:
        raise BadSignature("an Ed25519 signature is exactly 64 bytes")
    if type(message) is not bytes:
        if not isinstance(message, (bytearray, memoryview)):
            raise BadSignature("the signed content is not bytes")
        message = bytes(message)
    if _DETACHED(signature, message, len(message), public_key) != 0:
        raise BadSignature("the signature does not verify for this content and key")


def verify_batch(jobs: Iterable[tuple[bytes, bytes, bytes]]) -> list[bool]:
    """The signature check for many ``(public_key, message, signature)`` triples.

    Returns one verdict per triple, in order. For ``bytes`` arguments a verdict
    is True exactly when :func:`verify_signature` would return None, False when
    it would raise (unusable key, signature not 64 bytes, or not valid); an
    argument that is not ``bytes`` gives False. Never raises for bad input.

    The loop body is a few type checks, a cached key lookup and one libsodium
    call that releases the GIL, so batches can run in worker threads; for bulk
    work a worker process (:func:`fedpeer._ed25519.worker_main`, used by the sync
    driver) avoids competing for the GIL at all. Pure CPU: a few tens of
    microseconds per triple; not cancellable mid-batch.
    """
    return _ed25519.verify_batch(jobs)
