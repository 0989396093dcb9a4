"""DAG-JSON: the JSON view of DAG-CBOR values (IPLD DAG-JSON spec).

The same data model as DAG-CBOR, written as JSON:

* bytes are ``{"/": {"bytes": "<standard base64, no padding>"}}``;
* links are ``{"/": "<CID>"}`` with a CIDv1 in base32 (``b...``) or a CIDv0 as ``Qm...``;
* map keys are sorted bytewise by their UTF-8 bytes (not length-first as in
  DAG-CBOR), no whitespace;
* integers are plain JSON integers (the full 64-bit CBOR range); floats are
  written in the shortest round-trip form of ECMAScript ``Number::toString``
  and always carry a decimal point or an exponent (``1.0``, ``1e+21``), so they
  come back as floats; NaN and Infinity are not allowed;
* strings are UTF-8, escaped as ``JSON.stringify`` does.

The reserved namespace: a map whose first key is ``"/"`` with a string value,
or with a map value whose own first key is ``"bytes"`` with a string value, can
only be a link or bytes. The encoder refuses such data-model maps (they would
read back as a link or bytes). The decoder turns the exact single-key forms
into a :class:`CID` or ``bytes`` and refuses every other map in the namespace.
"First key" is taken both in document order (what the spec's tokenizing
decoders see) and in sorted key order (what a canonical re-encoding writes),
and either one puts a map in the namespace. The spec's example of a valid map,
``{"0bar":"baz","/":"foo"}``, is refused for that reason: ``"/"`` (0x2f) sorts
before ``"0"``, so its canonical encoding starts with ``"/"``.

Decoding is strict about content (valid UTF-8 JSON, no duplicate keys, no
NaN/Infinity, integers within 64 bits, canonical base64 and CID strings) but,
as the spec recommends, not about key order or whitespace: the bytes of a JSON
view are never hashed or signed in fedpeer.

Pure; no I/O.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from json.encoder import encode_basestring
from typing import Any

from fedpeer.errors import FedpeerError, Malformed, RecordInvalid
from fedpeer.identity._b64 import b64std_decode, b64std_encode
from fedpeer.identity._cid import CID
from fedpeer.identity._dagcbor import MAX_DEPTH, _normalise, _Unencodable

__all__ = ["dagjson_decode", "dagjson_encode", "es6_number"]

_INT_MIN = -(1 << 64)
_INT_MAX = (1 << 64) - 1


class _Bad(Exception):
    pass


# --- numbers ---------------------------------------------------------------------------


def es6_number(f: float) -> str:
    """Format a finite float as ECMAScript ``Number::toString`` does (ECMA-262 7.1.12.1).

    The digits are Python's shortest round-trip repr; only the layout differs
    (``1e+21``, ``1e-7``, ``0.000001``, ``100``). ``-0.0`` gives ``"0"``.
    """
    if f == 0:
        return "0"
    if f < 0:
        return "-" + es6_number(-f)
    text = repr(f)
    mantissa, _, exp_text = text.partition("e")
    int_part, _, frac_part = mantissa.partition(".")
    digits = int_part + frac_part
    exponent = (int(exp_text) if exp_text else 0) - len(frac_part)
    stripped = digits.lstrip("0")
    trailing = len(stripped) - len(stripped.rstrip("0"))
    digits = stripped.rstrip("0")
    exponent += trailing
    k = len(digits)
    n = exponent + k  # value = 0.digits * 10**n
    if k <= n <= 21:
        return digits + "0" * (n - k)
    if 0 < n <= 21:
        return digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return "0." + "0" * (-n) + digits
    e = n - 1
    head = digits[0] + ("." + digits[1:] if k > 1 else "")
    return f"{head}e{'+' if e > 0 else '-'}{abs(e)}"


def _float_text(f: float) -> str:
    if not math.isfinite(f):
        raise _Bad(f"{f} is not allowed: the data model has no NaN or Infinity")
    if f == 0:
        return "-0.0" if math.copysign(1.0, f) < 0 else "0.0"
    text = es6_number(f)
    if "." in text or "e" in text:
        return text
    return text + ".0"


# --- the reserved "/" namespace ---------------------------------------------------------------


def _first_keys(m: Mapping[str, object]) -> tuple[str, str]:
    """(first key in document/insertion order, first key in sorted order)."""
    return next(iter(m)), min(m)


def _is_bytes_form(inner: object) -> bool:
    """A map whose first key (either order) is "bytes" with a string value."""
    return (
        isinstance(inner, Mapping)
        and "bytes" in inner
        and "bytes" in _first_keys(inner)
        and isinstance(inner["bytes"], str)
    )


def _sorted_first(m: Mapping[Any, object]) -> object:
    return min((k for k in m if isinstance(k, str)), default=None)


def _reserved_when_sorted(m: Mapping[Any, object]) -> bool:
    """The encoder's check: only sorted order matters, as that is the order written."""
    if "/" not in m or _sorted_first(m) != "/":
        return False
    inner = m["/"]
    if isinstance(inner, str):
        return True
    return (
        isinstance(inner, Mapping)
        and _sorted_first(inner) == "bytes"
        and isinstance(inner["bytes"], str)
    )


def _reserved(m: Mapping[str, object]) -> bool:
    """The decoder's check: is ``m`` in the reserved namespace in either key order?"""
    if "/" not in m or "/" not in _first_keys(m):
        return False
    inner = m["/"]
    return isinstance(inner, str) or _is_bytes_form(inner)


# --- encoder -----------------------------------------------------------------------------


def _jenc(v: Any, out: list[str], depth: int) -> None:
    t = type(v)
    if t is str:
        out.append(encode_basestring(v))
    elif t is int:
        if not _INT_MIN <= v <= _INT_MAX:
            raise _Bad(f"integer {v} does not fit in 64 bits")
        out.append(str(v))
    elif t is dict:
        if depth >= MAX_DEPTH:
            raise _Bad(f"value is nested deeper than {MAX_DEPTH} levels")
        for k in v:
            if type(k) is not str:
                raise _Bad(f"map keys must be strings, not {type(k).__name__}")
        if _reserved_when_sorted(v):
            raise _Bad(
                'a map whose first key is "/" with a string or bytes-like value cannot be '
                "written in DAG-JSON (it would read back as a link or bytes)"
            )
        out.append("{")
        first = True
        for k in sorted(v):
            if not first:
                out.append(",")
            first = False
            out.append(encode_basestring(k))
            out.append(":")
            _jenc(v[k], out, depth + 1)
        out.append("}")
    elif t is list or t is tuple:
        if depth >= MAX_DEPTH:
            raise _Bad(f"value is nested deeper than {MAX_DEPTH} levels")
        out.append("[")
        for i, x in enumerate(v):
            if i:
                out.append(",")
            _jenc(x, out, depth + 1)
        out.append("]")
    elif t is bytes:
        out.append('{"/":{"bytes":"')
        out.append(b64std_encode(v))
        out.append('"}}')
    elif t is CID:
        out.append('{"/":"')
        out.append(str(v))
        out.append('"}')
    elif v is None:
        out.append("null")
    elif t is bool:
        out.append("true" if v else "false")
    elif t is float:
        out.append(_float_text(v))
    else:
        _jenc(_normalise(v, "DAG-JSON"), out, depth)


def dagjson_encode(value: object) -> bytes:
    """Encode ``value`` as DAG-JSON (UTF-8 bytes, sorted keys, no whitespace).

    Takes the same values as :func:`dagcbor_encode`. Raises
    :class:`~fedpeer.errors.RecordInvalid` (``RECORD_INVALID``) for values outside
    the data model, NaN/Infinity, integers outside 64 bits, lone surrogates,
    nesting deeper than ``MAX_DEPTH``, and maps in the reserved ``"/"``
    namespace. Pure and deterministic.
    """
    out: list[str] = []
    try:
        _jenc(value, out, 0)
        return "".join(out).encode("utf-8")
    except (_Bad, _Unencodable) as exc:
        raise RecordInvalid(f"cannot encode as DAG-JSON: {exc}") from None
    except UnicodeEncodeError:
        raise RecordInvalid(
            "cannot encode as DAG-JSON: a string is not valid Unicode (lone surrogate)"
        ) from None
    except RecursionError:
        raise RecordInvalid("cannot encode as DAG-JSON: value is nested too deeply") from None


# --- decoder -----------------------------------------------------------------------------


def _pairs(pairs: list[tuple[str, Any]]) -> object:
    m = dict(pairs)
    if len(m) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise _Bad(f"duplicate map key {k!r}")
            seen.add(k)
    if not _reserved(m):
        return m
    inner = m["/"]
    if len(m) != 1:
        raise _Bad('a map whose first key is "/" must be a link or bytes form alone')
    if isinstance(inner, str):
        return _link(inner)
    if len(inner) != 1:  # inner is a {"bytes": str, ...} dict: see _reserved
        raise _Bad('a bytes map {"/": {"bytes": "..."}} cannot have other keys')
    return b64std_decode(inner["bytes"])


def _link(text: str) -> CID:
    cid = CID.parse(text)
    if str(cid) != text:
        raise _Bad(
            f"link {text[:80]!r} is not in DAG-JSON form (CIDv1 base32 'b...' or CIDv0 'Qm...')"
        )
    return cid


def _int(text: str) -> int:
    v = int(text)
    if not _INT_MIN <= v <= _INT_MAX:
        raise _Bad(f"integer {text[:40]} does not fit in 64 bits")
    return v


def _float(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise _Bad(f"number {text[:40]} is too large for a 64-bit float")
    return v


def _constant(name: str) -> object:
    raise _Bad(f"{name} is not allowed: the data model has no NaN or Infinity")


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _check_strings(v: object) -> None:
    """Reject strings holding lone surrogates (written as \\udXXX escapes in the JSON)."""
    stack = [v]
    while stack:
        x = stack.pop()
        if isinstance(x, str):
            x.encode("utf-8")
        elif isinstance(x, list):
            stack.extend(x)
        elif isinstance(x, dict):
            stack.extend(x)
            stack.extend(x.values())


def dagjson_decode(data: bytes | bytearray | memoryview | str) -> object:
    """Decode DAG-JSON ``data`` (UTF-8 bytes or ``str``) into plain values.

    Returns the same value types as :func:`dagcbor_decode`: JSON integers become
    ``int``, numbers with a fraction or exponent ``float``, link maps
    :class:`CID`, bytes maps ``bytes``. Raises :class:`~fedpeer.errors.Malformed`
    (``MALFORMED``) for invalid UTF-8 or JSON, duplicate keys, NaN/Infinity,
    integers outside 64 bits, floats that overflow, lone surrogates, bad
    base64 or CID strings, and malformed maps in the reserved ``"/"`` namespace.
    Key order and whitespace are not checked. Nesting is bounded only by the
    interpreter (deeper than about 900 levels is ``MALFORMED``); values nested
    deeper than ``MAX_DEPTH`` decode but cannot be re-encoded. Pure.
    """
    if isinstance(data, bytes | bytearray | memoryview):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise Malformed(f"DAG-JSON is not valid UTF-8: {exc}") from None
    elif isinstance(data, str):
        text = data
    else:
        raise Malformed(f"DAG-JSON input must be bytes or str, not {type(data).__name__}")
    try:
        value = json.loads(
            text,
            object_pairs_hook=_pairs,
            parse_int=_int,
            parse_float=_float,
            parse_constant=_constant,
        )
        if _SURROGATE_ESCAPE.search(text):
            _check_strings(value)
    except _Bad as exc:
        raise Malformed(f"not valid DAG-JSON: {exc}") from None
    except FedpeerError as exc:
        raise Malformed(f"not valid DAG-JSON: {exc.message}") from None
    except UnicodeEncodeError:
        raise Malformed("not valid DAG-JSON: a string holds a lone surrogate") from None
    except RecursionError:
        raise Malformed("not valid DAG-JSON: nested too deeply") from None
    except ValueError as exc:  # json.JSONDecodeError and int-size limits
        raise Malformed(f"not valid DAG-JSON: {exc}") from None
    return value
