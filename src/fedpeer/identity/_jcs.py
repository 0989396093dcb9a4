"""RFC 8785 JSON Canonicalization Scheme (JCS), the bytes fedpeer signs in JSON documents.

A thin wrapper over the ``rfc8785`` package, which passes the cyberphone test
data and the ES6 number edge cases (see ``interop/``): keys sorted by UTF-16
code units, ECMAScript number formatting, minimal string escaping, UTF-8,
no whitespace. Its errors are mapped to :class:`~fedpeer.errors.Malformed`.

Numbers, two sides of one rule. RFC 8785 serialises every JSON number as the
IEEE double it is (ECMAScript ``Number::toString``), so an integer beyond
``2**53`` has no exact canonical form: ``10000000000000001`` canonicalises as
``10000000000000000``. Hence:

* :func:`jcs` (what fedpeer *signs*) refuses integers outside the I-JSON range
  ``-(2**53-1) .. 2**53-1`` (RFC 7493 §2.2), naming where the integer is, so a
  signer never signs a number other implementations would read differently;
* :func:`jcs_received` (what fedpeer *verifies*) canonicalises a document as
  every RFC 8785 implementation does, an integer outside that range as its
  IEEE double value: a document signed elsewhere (or relayed by a JavaScript
  program, which writes ``1e16`` as ``10000000000000000``) verifies.

Pure; no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping

import rfc8785

from fedpeer.errors import Malformed

__all__ = ["MAX_SAFE_INTEGER", "jcs", "jcs_received"]

MAX_SAFE_INTEGER = 2**53 - 1
"""Largest integer I-JSON (RFC 7493) and ECMAScript hold exactly."""

_IDENT_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_$")


def _unsafe(value: object) -> bool:
    return (
        isinstance(value, int)
        and not isinstance(value, bool)
        and not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER
    )


def _step(path: str, key: object) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    text = str(key)
    if text and not text[0].isdigit() and set(text) <= _IDENT_CHARS:
        return f"{path}.{text}"
    return f"{path}[{json.dumps(text, ensure_ascii=False)}]"


def first_path(
    value: object, match: Callable[[object], bool], *, root: str, max_depth: int
) -> tuple[str, object] | None:
    """The first item of the JSON-like ``value`` (maps, lists, tuples, scalars) for
    which ``match`` is true, in document order (pre-order, map keys in their stored
    order), and its path from ``root`` (``$.a[2]``, ``body["x y"]``); None when there
    is none. Children of items ``max_depth`` containers deep are not looked at.
    Iterative (no recursion limit); for error messages that name where a value is.
    Pure."""
    stack: list[tuple[object, str, int]] = [(value, root, 0)]
    while stack:
        item, path, depth = stack.pop()
        if match(item):
            return path, item
        if depth >= max_depth:
            continue
        children: list[tuple[object, object]]
        if isinstance(item, Mapping):
            children = list(item.items())
        elif isinstance(item, list | tuple):
            children = list(enumerate(item))
        else:
            continue
        for key, child in reversed(children):
            stack.append((child, _step(path, key), depth + 1))
    return None


def _dumps(value: object) -> bytes:
    try:
        return bytes(rfc8785.dumps(value))  # type: ignore[arg-type]
    except rfc8785.CanonicalizationError as exc:
        raise Malformed(f"cannot canonicalise as JSON (RFC 8785): {exc}") from None
    except RecursionError:
        raise Malformed("cannot canonicalise as JSON (RFC 8785): nested too deeply") from None


def jcs(value: object) -> bytes:
    """The RFC 8785 canonical JSON bytes of ``value`` (the form fedpeer signs).

    ``value`` is built from ``dict`` (string keys), ``list``/``tuple``, ``str``,
    ``int`` within the I-JSON range ``-(2**53-1) .. 2**53-1``, finite ``float``,
    ``bool`` and ``None``. Raises :class:`~fedpeer.errors.Malformed`
    (``MALFORMED``) for anything else: an integer outside the I-JSON range (the
    message names where it is, e.g. ``$.amount``, and says to send it as a
    string), other types (bytes included: encode them with
    :func:`b64url_encode` first), non-string keys, NaN/Infinity, strings with
    lone surrogates, nesting too deep for the interpreter. Pure and deterministic.
    """
    try:
        return bytes(rfc8785.dumps(value))  # type: ignore[arg-type]
    except rfc8785.IntegerDomainError:
        found = first_path(value, _unsafe, root="$", max_depth=1001)
        if found is None:  # pragma: no cover - rfc8785 refused an int we do not see
            raise Malformed(
                "cannot canonicalise as JSON (RFC 8785): an integer is too large"
            ) from None
        path, number = found
        assert isinstance(number, int)
        shown = str(number) if len(str(number)) <= 40 else str(number)[:37] + "..."
        raise Malformed(
            f"{path} is the integer {shown}, outside -(2**53-1)..2**53-1: signed JSON holds "
            "only integers every JSON reader keeps exactly (I-JSON, RFC 7493); send it as a "
            "string"
        ) from None
    except rfc8785.CanonicalizationError as exc:
        raise Malformed(f"cannot canonicalise as JSON (RFC 8785): {exc}") from None
    except RecursionError:
        raise Malformed("cannot canonicalise as JSON (RFC 8785): nested too deeply") from None


def _as_doubles(value: object, depth: int = 0) -> object:
    """A copy of ``value`` with every integer outside the I-JSON range as a float."""
    if _unsafe(value):
        assert isinstance(value, int)
        try:
            return float(value)
        except OverflowError:
            raise Malformed(
                "cannot canonicalise as JSON (RFC 8785): an integer is too large for an IEEE double"
            ) from None
    if depth > 1000:
        raise Malformed("cannot canonicalise as JSON (RFC 8785): nested too deeply")
    if isinstance(value, Mapping):
        return {k: _as_doubles(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_as_doubles(v, depth + 1) for v in value]
    return value


def jcs_received(value: object) -> bytes:
    """The RFC 8785 bytes of a JSON value received from elsewhere (what fedpeer verifies).

    Like :func:`jcs`, except that an integer outside ``-(2**53-1) .. 2**53-1`` is
    serialised as its IEEE double value, exactly as RFC 8785 (ECMAScript number
    serialisation) prescribes for every number: ``10000000000000000`` gives
    ``10000000000000000``, ``10**21`` gives ``1e+21``, ``2**53 + 1`` gives
    ``9007199254740992``. Raises :class:`~fedpeer.errors.Malformed` for what
    :func:`jcs` refuses otherwise, and for an integer beyond the double range.
    ``value`` is not modified. Pure.
    """
    try:
        return bytes(rfc8785.dumps(value))  # type: ignore[arg-type]
    except rfc8785.IntegerDomainError:
        pass
    except rfc8785.CanonicalizationError as exc:
        raise Malformed(f"cannot canonicalise as JSON (RFC 8785): {exc}") from None
    except RecursionError:
        raise Malformed("cannot canonicalise as JSON (RFC 8785): nested too deeply") from None
    try:
        doubled = _as_doubles(value)
    except RecursionError:
        raise Malformed("cannot canonicalise as JSON (RFC 8785): nested too deeply") from None
    return _dumps(doubled)
