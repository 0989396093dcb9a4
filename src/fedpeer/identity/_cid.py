"""Content identifiers (CIDs).

A record's id is a CIDv1: ``<version 1><codec 0x71 dag-cbor><multihash sha2-256 32 bytes>``,
i.e. the fixed prefix ``01 71 12 20`` followed by the SHA-256 digest of the record's
DAG-CBOR bytes. :func:`cid_for_dagcbor` builds that with :mod:`hashlib` and the prefix:
building a ``multiformats.CID`` costs about as much as an Ed25519 signature check,
and the sync path computes one per record.

:class:`CID` holds the binary form (``raw``) and checks its *structure* on
construction: a CIDv0 (34 bytes, ``12 20`` + digest) or a CIDv1 made of minimal
unsigned varints (version 1, codec, multihash code, digest length) followed by
exactly that many digest bytes. Codec and hash codes are not checked against a
table, so links to any IPLD codec or hash function (dag-pb, raw, git, ...) decode
and round-trip unchanged, as DAG-CBOR requires.

Text forms: a CIDv1 prints as multibase base32 lower case (``b...``), a CIDv0 as
its only form, plain base58btc (``Qm...``). :meth:`CID.parse` takes those, any
other multibase string the ``multiformats`` package decodes, or raw CID bytes.

Pure; no I/O.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
from typing import Any

import attrs

from fedpeer.errors import Malformed

from . import _base58

__all__ = ["CID", "DAG_CBOR", "DAG_JSON", "SHA2_256", "cid_for_dagcbor"]

DAG_CBOR = 0x71
"""Multicodec code of DAG-CBOR."""
DAG_JSON = 0x0129
"""Multicodec code of DAG-JSON."""
SHA2_256 = 0x12
"""Multihash code of SHA2-256."""
_DAG_PB = 0x70

_DAGCBOR_SHA256_PREFIX = b"\x01\x71\x12\x20"
_V0_PREFIX = b"\x12\x20"
_MAX_VARINT_BYTES = 9  # the multiformats unsigned-varint spec caps varints at 63 bits
_MAX_TEXT = 1024  # far above any real CID string; bounds the quadratic base58 decoder

# --- varints -------------------------------------------------------------------


def _read_varint(raw: bytes, i: int) -> tuple[int, int]:
    """Read a minimal unsigned varint at ``raw[i:]``; return (value, next offset)."""
    value = 0
    shift = 0
    start = i
    n = len(raw)
    while True:
        if i >= n:
            raise Malformed("CID is truncated inside a varint")
        byte = raw[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
        if i - start >= _MAX_VARINT_BYTES:
            raise Malformed("CID varint is longer than 9 bytes")
    if byte == 0 and i - start > 1:
        raise Malformed("CID varint is not minimally encoded")
    return value, i


def _check_raw(raw: object) -> None:
    """Raise Malformed unless ``raw`` is the binary form of a CIDv0 or CIDv1."""
    if type(raw) is not bytes:
        raise Malformed(f"CID bytes must be bytes, not {type(raw).__name__}")
    n = len(raw)
    if n == 36 and raw[:4] == _DAGCBOR_SHA256_PREFIX:
        return  # the common case: a record id
    if n == 34 and raw[:2] == _V0_PREFIX:
        return  # CIDv0: a bare sha2-256 multihash
    if n == 0:
        raise Malformed("CID is empty")
    version, i = _read_varint(raw, 0)
    if version != 1:
        raise Malformed(f"CID version {version} is not supported (only 0 and 1)")
    _codec, i = _read_varint(raw, i)
    _hash_code, i = _read_varint(raw, i)
    length, i = _read_varint(raw, i)
    if n - i != length:
        raise Malformed(
            f"CID multihash says {length} digest bytes but {n - i} follow; the CID is damaged"
        )


def _validate(_inst: object, _attr: object, value: bytes) -> None:
    _check_raw(value)


# --- base58btc (CIDv0 text form): the one codec, in _base58 --------------------------


_b58encode = _base58.encode


def _b58decode(text: str) -> bytes:
    out = _base58.decode(text)
    if out is None:
        raise Malformed("not base58btc: the alphabet excludes 0, O, I and l")
    return out


_B32_LOWER_RE = re.compile(r"[a-z2-7]+")


def _b32lower_decode(body: str) -> bytes | None:
    """Strict unpadded lower-case base32; None if ``body`` is not in that exact form."""
    if _B32_LOWER_RE.fullmatch(body) is None or len(body) % 8 in (1, 3, 6):
        return None
    try:
        raw = base64.b32decode(body.upper() + "=" * (-len(body) % 8))
    except binascii.Error:  # pragma: no cover - excluded by the checks above
        return None
    if base64.b32encode(raw).rstrip(b"=").decode("ascii").lower() != body:
        return None  # non-zero unused trailing bits
    return raw


# --- the value ---------------------------------------------------------------------------


@attrs.frozen(order=True, repr=False)
class CID:
    """A content identifier, held in binary form.

    ``raw`` is the CID's bytes (no multibase prefix, no DAG-CBOR ``0x00``
    prefix). Construction checks the structure and raises
    :class:`~fedpeer.errors.Malformed` (``MALFORMED``) for anything that is not
    a CIDv0 or CIDv1. Values are immutable, hashable, ordered by ``raw``, and
    compare equal exactly when their bytes are equal. ``str(cid)`` is the
    canonical text form (base32 ``b...`` for v1, ``Qm...`` for v0).
    """

    raw: bytes = attrs.field(validator=_validate)

    @classmethod
    def parse(cls, value: str | bytes | bytearray | memoryview | CID) -> CID:
        """Parse a CID from text or raw bytes.

        Text: any multibase string ``multiformats`` decodes to CID bytes
        (base32 ``b...`` and base58btc ``z...`` are decoded here without it),
        or a CIDv0 in its bare base58btc form ``Qm...``. Bytes: the binary CID.
        Raises :class:`~fedpeer.errors.Malformed` for anything else. Pure.
        """
        if isinstance(value, CID):
            return value
        if isinstance(value, bytes | bytearray | memoryview):
            return cls(bytes(value))
        if not isinstance(value, str):
            raise Malformed(f"a CID is text or bytes, not {type(value).__name__}")
        return cls(_decode_text(value))

    @property
    def version(self) -> int:
        """0 for a CIDv0, 1 for a CIDv1."""
        return 0 if _is_v0(self.raw) else 1

    @property
    def codec(self) -> int:
        """The multicodec code of the content (0x71 dag-cbor; 0x70 dag-pb for v0)."""
        if _is_v0(self.raw):
            return _DAG_PB
        _, i = _read_varint(self.raw, 0)
        return _read_varint(self.raw, i)[0]

    @property
    def multihash(self) -> bytes:
        """The multihash: hash code varint, digest length varint, digest."""
        if _is_v0(self.raw):
            return self.raw
        _, i = _read_varint(self.raw, 0)
        _, i = _read_varint(self.raw, i)
        return self.raw[i:]

    @property
    def digest(self) -> bytes:
        """The bare hash digest."""
        mh = self.multihash
        _, i = _read_varint(mh, 0)
        _, i = _read_varint(mh, i)
        return mh[i:]

    def __bytes__(self) -> bytes:
        return self.raw

    def __str__(self) -> str:
        return _text(self.raw)

    def __repr__(self) -> str:
        return f"CID({str(self)!r})"


def _is_v0(raw: bytes) -> bool:
    return len(raw) == 34 and raw[:2] == _V0_PREFIX


# The stdlib base32 codec is pure Python (several microseconds per CID) and the
# same few CIDs (parents, recent records) are printed and parsed again and again,
# so both directions are cached. Only short values are cached: an identity-hash
# CID can be as long as a peer likes.
_CACHE_MAX_LEN = 96


def _text(raw: bytes) -> str:
    return _text_cached(raw) if len(raw) <= _CACHE_MAX_LEN else _text_uncached(raw)


def _text_uncached(raw: bytes) -> str:
    if _is_v0(raw):
        return _b58encode(raw)
    return "b" + base64.b32encode(raw).decode("ascii").rstrip("=").lower()


_text_cached = functools.lru_cache(maxsize=4096)(_text_uncached)


def _decode_text(text: str) -> bytes:
    if not text:
        raise Malformed("a CID string cannot be empty")
    if len(text) > _MAX_TEXT:
        raise Malformed(f"a CID string of {len(text)} characters is too long")
    if len(text) <= _CACHE_MAX_LEN * 2:
        return _decode_text_cached(text)
    return _decode_text_uncached(text)


def _decode_text_uncached(text: str) -> bytes:
    if len(text) == 46 and text.startswith("Qm"):
        return _b58decode(text)
    prefix, body = text[0], text[1:]
    if prefix == "b":
        raw = _b32lower_decode(body)
        if raw is not None:
            return raw
    elif prefix == "z" and body:
        return _b58decode(body)
    # Every other multibase (and non-canonical base32 such as mixed case): let
    # multiformats decide. It is slow but these forms are rare.
    from multiformats import multibase

    try:
        decoded: Any = multibase.decode(text)
    except Exception as exc:  # multiformats raises assorted KeyError/ValueError subclasses
        raise Malformed(f"{text[:80]!r} is not a multibase-encoded CID: {exc}") from exc
    return bytes(decoded)


_decode_text_cached = functools.lru_cache(maxsize=4096)(_decode_text_uncached)


def _trusted(raw: bytes) -> CID:
    """Build a CID from bytes known to be well formed, skipping the check."""
    cid = object.__new__(CID)
    object.__setattr__(cid, "raw", raw)
    return cid


def cid_for_dagcbor(data: bytes) -> CID:
    """The CIDv1 (dag-cbor, sha2-256) of ``data``, the DAG-CBOR bytes of a block.

    Does not check that ``data`` is DAG-CBOR; that is :func:`dagcbor_decode`'s job.
    Pure; about a microsecond for a small record.
    """
    return _trusted(_DAGCBOR_SHA256_PREFIX + hashlib.sha256(data).digest())
