"""Strict DAG-CBOR: the canonical binary form of records and pages.

Theory of operation
-------------------
The IPLD data model has null, booleans, integers, floats, text, bytes, lists,
maps with text keys, and links (CIDs). DAG-CBOR gives each value exactly one
encoding:

* integers and lengths use the shortest head (RFC 8949 §4.2.1 "preferred");
  integers must fit the 64-bit CBOR argument, so the range is
  ``-2**64 .. 2**64 - 1`` and bignum tags are not allowed;
* floats are always 64-bit (``0xfb``) and never NaN or ±Infinity;
* lengths are always definite (no ``0x5f``/``0x7f``/``0x9f``/``0xbf``);
* map keys are text strings, unique, sorted length-first then bytewise
  (RFC 7049 §3.9 canonical order, which for text keys is the same as bytewise
  order of the encoded keys);
* the only tag is 42, a link: a byte string holding ``0x00`` + the CID bytes;
* the only simple values are false, true and null (no ``undefined``).

**Encoding** is a small recursive writer (:func:`_enc`) that produces exactly
that form; it is both faster than ``cbor2.dumps(canonical=True)`` and leaves
no option to get wrong.

**Decoding** parses with cbor2's C decoder (tag 42 becomes a :class:`CID` in a
tag hook; every other tag, including the ones cbor2 would interpret itself, is
refused) and then re-encodes the value with :func:`_enc` and compares bytes.
Because :func:`_enc` is deterministic, the comparison accepts exactly the
canonical encoding of each value: anything else that decodes to the same value
(a long integer head, a 16-bit float, unsorted or duplicate keys, an
indefinite-length string) differs and is rejected with ``NON_CANONICAL``.
Only then, on the slow path, :func:`_explain` walks the bytes to name the
first offending item for the error message. Bytes that are not CBOR, that
decode to something outside the data model, or that have trailing bytes are
``MALFORMED``.

Nesting is limited to :data:`MAX_DEPTH` levels of lists/maps on both sides,
so a hostile peer cannot exhaust the interpreter stack.

Pure; no I/O.
"""

from __future__ import annotations

import io
import math
import struct
from collections.abc import Mapping
from operator import itemgetter
from typing import Any

import cbor2

from fedpeer.errors import FedpeerError, Malformed, NonCanonical, RecordInvalid
from fedpeer.identity._cid import CID, _check_raw, _trusted

__all__ = ["MAX_DEPTH", "dagcbor_decode", "dagcbor_encode"]

MAX_DEPTH = 256
"""Most levels of nested lists/maps a DAG-CBOR value may have (the top level counts as 1)."""

_UINT64_LIMIT = 1 << 64


class _Unencodable(Exception):
    """A value outside the DAG-CBOR data model (mapped to the public error by callers)."""


# --- heads ---------------------------------------------------------------------------

_SMALL: tuple[tuple[bytes, ...], ...] = tuple(
    tuple(bytes([(major << 5) | n]) for n in range(24)) for major in range(8)
)
_UINT, _NINT, _BYTES, _TEXT, _ARRAY, _MAP = _SMALL[:6]
_PACK_B = struct.Struct(">BB").pack
_PACK_H = struct.Struct(">BH").pack
_PACK_I = struct.Struct(">BI").pack
_PACK_Q = struct.Struct(">BQ").pack
_PACK_D = struct.Struct(">Bd").pack
_TAG42 = b"\xd8\x2a"


def _head(major: int, n: int) -> bytes:
    """The shortest head for major type ``major`` with argument ``n``."""
    if n < 24:
        return _SMALL[major][n]
    mt = major << 5
    if n < 0x100:
        return _PACK_B(mt | 24, n)
    if n < 0x10000:
        return _PACK_H(mt | 25, n)
    if n < 0x100000000:
        return _PACK_I(mt | 26, n)
    if n < _UINT64_LIMIT:
        return _PACK_Q(mt | 27, n)
    raise _Unencodable(f"integer {'-' if major == 1 else ''}{n} does not fit in 64 bits")


# Encoded map keys, cached: records reuse the same dozen field names forever.
# Bounded in entries and in key length, since decoding feeds it peer-chosen keys.
_KEY_CACHE: dict[str, bytes] = {}
_KEY_CACHE_MAX = 4096
_KEY_CACHE_MAX_LEN = 64
_first = itemgetter(0)


def _key(k: Any) -> bytes:
    kb = _KEY_CACHE.get(k)
    if kb is not None:
        return kb
    if not isinstance(k, str):
        raise _Unencodable(f"map keys must be strings, not {type(k).__name__}")
    b = str.encode(k)
    n = len(b)
    kb = (_TEXT[n] if n < 24 else _head(3, n)) + b
    if type(k) is str and n <= _KEY_CACHE_MAX_LEN and len(_KEY_CACHE) < _KEY_CACHE_MAX:
        _KEY_CACHE[k] = kb
    return kb


# --- encoder -------------------------------------------------------------------------


def _enc(v: Any, out: bytearray, depth: int) -> None:
    """Append the DAG-CBOR encoding of ``v`` to ``out``; ``depth`` = enclosing containers."""
    t = type(v)
    if t is str:
        b = v.encode()
        n = len(b)
        out += _TEXT[n] if n < 24 else _head(3, n)
        out += b
    elif t is int:
        if v >= 0:
            out += _UINT[v] if v < 24 else _head(0, v)
        else:
            n = -1 - v
            out += _NINT[n] if n < 24 else _head(1, n)
    elif t is dict:
        if depth >= MAX_DEPTH:
            raise _Unencodable(f"value is nested deeper than {MAX_DEPTH} levels")
        n = len(v)
        out += _MAP[n] if n < 24 else _head(5, n)
        if n:
            cached = _KEY_CACHE.get
            items = [(cached(k) or _key(k), x) for k, x in v.items()]
            items.sort(key=_first)
            depth += 1
            for kb, x in items:
                out += kb
                # Inline the two commonest leaves; a call per leaf is most of the cost.
                tx = type(x)
                if tx is str:
                    b = x.encode()
                    n = len(b)
                    out += _TEXT[n] if n < 24 else _head(3, n)
                    out += b
                elif tx is int and 0 <= x < 24:
                    out += _UINT[x]
                else:
                    _enc(x, out, depth)
    elif t is list or t is tuple:
        if depth >= MAX_DEPTH:
            raise _Unencodable(f"value is nested deeper than {MAX_DEPTH} levels")
        n = len(v)
        out += _ARRAY[n] if n < 24 else _head(4, n)
        depth += 1
        for x in v:
            tx = type(x)
            if tx is str:
                b = x.encode()
                n = len(b)
                out += _TEXT[n] if n < 24 else _head(3, n)
                out += b
            else:
                _enc(x, out, depth)
    elif t is bytes:
        n = len(v)
        out += _BYTES[n] if n < 24 else _head(2, n)
        out += v
    elif t is CID:
        raw = v.raw
        out += _TAG42
        out += _head(2, len(raw) + 1)
        out += b"\x00"
        out += raw
    elif v is None:
        out += b"\xf6"
    elif t is bool:
        out += b"\xf5" if v else b"\xf4"
    elif t is float:
        if not math.isfinite(v):
            raise _Unencodable(f"{v} is not allowed: DAG-CBOR has no NaN or Infinity")
        out += _PACK_D(0xFB, v)
    else:
        _enc(_normalise(v), out, depth)


def _normalise(v: object, model: str = "DAG-CBOR") -> object:
    """Map subclasses and other bytes-like/mapping types onto the exact builtin types.

    Shared with the DAG-JSON encoder (``model`` names the codec in the error).
    """
    if isinstance(v, bool):  # pragma: no cover - bool cannot be subclassed
        return bool(v)
    if isinstance(v, int):
        return int(v)
    if isinstance(v, str):
        return str.__str__(v)
    if isinstance(v, float):
        return float(v)
    if isinstance(v, bytes | bytearray | memoryview):
        return bytes(v)
    if isinstance(v, list | tuple):
        return list(v)
    if isinstance(v, Mapping):
        out: dict[str, object] = {}
        for k, x in v.items():
            if not isinstance(k, str):
                raise _Unencodable(f"map keys must be strings, not {type(k).__name__}")
            out[str.__str__(k)] = x
        if len(out) != len(v):  # pragma: no cover - only for broken Mapping types
            raise _Unencodable("map has duplicate keys")
        return out
    raise _Unencodable(f"a {type(v).__name__} is not in the {model} data model")


def _encode(value: object) -> bytes:
    out = bytearray()
    _enc(value, out, 0)
    return bytes(out)


def dagcbor_encode(value: object) -> bytes:
    """Encode ``value`` as canonical DAG-CBOR.

    ``value`` is built from ``dict`` (string keys; any order - they are sorted
    here), ``list``/``tuple``, ``str``, ``bytes`` (also ``bytearray`` and
    ``memoryview``), ``int`` in ``-2**64 .. 2**64-1``, finite ``float`` (always
    written as 64-bit), ``bool``, ``None`` and :class:`CID` (tag 42). Subclasses
    of these and other ``Mapping`` types are accepted and written as the base
    type. Raises :class:`~fedpeer.errors.RecordInvalid` (``RECORD_INVALID``) for
    anything else: other types, non-string keys, NaN/Infinity, integers outside
    64 bits, strings with lone surrogates, nesting deeper than
    :data:`MAX_DEPTH`. Pure and deterministic: equal values give equal bytes.
    """
    try:
        return _encode(value)
    except _Unencodable as exc:
        raise RecordInvalid(f"cannot encode as DAG-CBOR: {exc}") from None
    except UnicodeEncodeError:
        raise RecordInvalid(
            "cannot encode as DAG-CBOR: a string is not valid Unicode (lone surrogate)"
        ) from None
    except RecursionError:
        raise RecordInvalid("cannot encode as DAG-CBOR: value is nested too deeply") from None


# --- decoder -------------------------------------------------------------------------


def _tag_hook(tag: Any, _immutable: bool) -> CID:
    if tag.tag != 42:
        raise Malformed(f"CBOR tag {tag.tag} is not allowed in DAG-CBOR (only tag 42, links)")
    content = tag.value
    if type(content) is not bytes or len(content) < 2 or content[0] != 0:
        raise Malformed("tag 42 must hold a byte string of 0x00 followed by the CID bytes")
    raw = content[1:]
    _check_raw(raw)
    return _trusted(raw)


def _refuse_tag(tag: int) -> Any:
    def refuse(*_args: object) -> Any:
        raise Malformed(f"CBOR tag {tag} is not allowed in DAG-CBOR (only tag 42, links)")

    return refuse


# Tags cbor2 interprets itself (datetimes, bignums, decimals, shared references,
# string references, sets, ...). None is allowed; overriding them makes sure no
# bignum or cyclic structure ever reaches the re-encoder.
_BUILTIN_TAGS: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54, 100)
_BUILTIN_TAGS += (256, 258, 260, 261, 1004, 55799)
_SEMANTIC: dict[int, Any] = {tag: _refuse_tag(tag) for tag in _BUILTIN_TAGS}
# cbor2 counts depth slightly differently from _enc; let cbor2 allow one level
# more and have the re-encode enforce MAX_DEPTH exactly.
_CBOR2_DEPTH = MAX_DEPTH + 1


def _parse(data: bytes, *, whole: bool) -> object:
    """cbor2 parse with DAG-CBOR tag rules; ``whole`` = also reject trailing bytes."""
    try:
        if not whole:
            return cbor2.loads(
                data,
                tag_hook=_tag_hook,
                semantic_decoders=_SEMANTIC,
                max_depth=_CBOR2_DEPTH,
                strict_hashable_types=True,
            )
        fp = io.BytesIO(data)
        value = cbor2.CBORDecoder(
            fp,
            tag_hook=_tag_hook,
            semantic_decoders=_SEMANTIC,
            max_depth=_CBOR2_DEPTH,
            strict_hashable_types=True,
        ).decode()
    except FedpeerError:
        raise
    except Exception as exc:  # cbor2 wraps hook errors; everything else is bad input
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, FedpeerError):
            raise cause from None
        raise Malformed(f"not valid DAG-CBOR: {exc}") from None
    extra = len(data) - fp.tell()
    if extra:
        raise Malformed(f"{extra} trailing byte(s) after the DAG-CBOR value")
    return value


def dagcbor_decode(data: bytes | bytearray | memoryview) -> object:
    """Decode strict DAG-CBOR ``data`` into plain values.

    Returns ``dict`` (string keys, in canonical order), ``list``, ``str``,
    ``bytes``, ``int``, ``float``, ``bool``, ``None`` and :class:`CID`.

    Raises :class:`~fedpeer.errors.Malformed` (``MALFORMED``) when ``data`` is not
    a single CBOR item (garbage, truncation, invalid UTF-8, trailing bytes) or
    holds something outside the DAG-CBOR data model (a tag other than 42, a
    malformed CID, non-string map keys, ``undefined`` or other simple values,
    NaN/Infinity, bignums, nesting deeper than :data:`MAX_DEPTH`), and
    :class:`~fedpeer.errors.NonCanonical` (``NON_CANONICAL``) when it is valid
    DAG-CBOR data but not in the one canonical encoding (non-minimal integer or
    length, indefinite length, 16/32-bit float, unsorted or duplicate map keys).
    Pure; CPU-bound (a few microseconds for a small record).
    """
    if type(data) is bytes:
        raw = data
    elif isinstance(data, bytes | bytearray | memoryview):
        raw = bytes(data)
    else:
        raise Malformed(f"DAG-CBOR input must be bytes, not {type(data).__name__}")
    if not raw:
        raise Malformed("DAG-CBOR input is empty")
    value = _parse(raw, whole=False)
    try:
        again = _encode(value)
    except _Unencodable as exc:
        raise Malformed(f"not in the DAG-CBOR data model: {exc}") from None
    except RecursionError:  # pragma: no cover - cbor2's max_depth stops this first
        raise Malformed("DAG-CBOR value is nested too deeply") from None
    if again == raw:
        return value
    # Slow path: find out what is wrong, for the error and its message.
    _parse(raw, whole=True)  # raises Malformed for trailing bytes
    raise NonCanonical(f"DAG-CBOR is not canonical: {_explain(raw)}")


# --- building blocks for shape-specific fast paths ------------------------------------
#
# Callers that know the exact shape of a value (a record, a feed page) can check
# canonicity faster than the general re-encode: parse with :func:`parse_unchecked`,
# check the shape, write the canonical bytes of that shape directly (with
# :func:`head` and :func:`encode_into`) and compare. On any mismatch, error or
# unexpected shape they must fall back to :func:`dagcbor_decode`, which then gives
# the verdict and the error message; so the fast path can only *accept* what the
# general path accepts. Each such fast path is pinned to the general one by a
# differential test.


def parse_unchecked(data: bytes) -> object:
    """The first step of :func:`dagcbor_decode`: parse ``data`` (non-empty ``bytes``)
    with the DAG-CBOR tag rules, WITHOUT the canonical check or the trailing-bytes
    check. Raises ``Malformed``. Never use the result unless its canonical encoding
    was then compared with ``data``."""
    return _parse(data, whole=False)


head = _head
"""``head(major, n)``: the shortest CBOR head (``bytes``) for major type ``major``
and argument ``n`` (raises an internal error past 64 bits)."""

encode_into = _enc
"""``encode_into(v, out, depth)``: append the canonical encoding of ``v`` to the
bytearray ``out``, ``depth`` = containers around ``v`` (0 at the top). Raises an
internal error (not a FedpeerError) for values outside the data model."""


# --- diagnostics (slow path only) ------------------------------------------------------


class _Found(Exception):
    pass


def _explain(data: bytes) -> str:
    """Name the first non-canonical item in ``data`` (already known to decode)."""
    try:
        _walk(data, 0)
    except _Found as found:
        return str(found)
    except (IndexError, ValueError):  # pragma: no cover - data decoded fine before
        pass
    return "the bytes are not the canonical encoding of the value they decode to"


def _walk(data: bytes, i: int) -> int:
    """Check the item at ``data[i]``; return the offset after it."""
    start = i
    initial = data[i]
    major, info = initial >> 5, initial & 0x1F
    i += 1
    if info == 31:
        raise _Found(f"indefinite-length item at byte {start}; DAG-CBOR lengths are definite")
    if major == 7:
        if info in (25, 26):
            bits = 16 if info == 25 else 32
            raise _Found(f"{bits}-bit float at byte {start}; DAG-CBOR floats are always 64-bit")
        return i + (8 if info == 27 else 1 if info == 24 else 0)
    if info < 24:
        arg = info
    else:
        size = 1 << (info - 24)
        arg = int.from_bytes(data[i : i + size], "big")
        i += size
        if arg < (24 if size == 1 else 1 << (4 * size)):
            raise _Found(f"integer or length at byte {start} is not in its shortest form")
    if major in (0, 1):
        return i
    if major in (2, 3):
        return i + arg
    if major == 4:
        for _ in range(arg):
            i = _walk(data, i)
        return i
    if major == 5:
        prev = b""
        for n in range(arg):
            key_start = i
            i = _walk(data, i)
            key = data[key_start:i]
            if n and key == prev:
                raise _Found(f"duplicate map key at byte {key_start}")
            if n and key < prev:
                raise _Found(
                    f"map key at byte {key_start} is out of order; "
                    "keys sort by length, then bytewise"
                )
            prev = key
            i = _walk(data, i)
        return i
    return _walk(data, i)  # major 6: a tag (only 42 gets this far)
