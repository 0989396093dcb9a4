"""RFC 8785 JSON Canonicalization Scheme (JCS), the bytes fedpeer signs in JSON documents.

A thin wrapper over the ``rfc8785`` package, which passes the cyberphone test
data and the ES6 number edge cases (see ``interop/``): keys sorted by UTF-16
code units, ECMAScript number formatting, minimal string escaping, UTF-8,
no whitespace. Its errors are mapped to :class:`~fedpeer.errors.Malformed`.

Pure; no I/O.
"""

from __future__ import annotations

import rfc8785

from fedpeer.errors import Malformed

__all__ = ["jcs"]


def jcs(value: object) -> bytes:
    """The RFC 8785 canonical JSON bytes of ``value``.

    ``value`` is built from ``dict`` (string keys), ``list``/``tuple``, ``str``,
    ``int`` within the I-JSON range ``-(2**53-1) .. 2**53-1``, finite ``float``,
    ``bool`` and ``None``. Raises :class:`~fedpeer.errors.Malformed`
    (``MALFORMED``) for anything else: other types (bytes included: encode them
    with :func:`b64url_encode` first), non-string keys, larger integers,
    NaN/Infinity, strings with lone surrogates, nesting too deep for the
    interpreter. Pure and deterministic.
    """
    try:
        return bytes(rfc8785.dumps(value))  # type: ignore[arg-type]
    except rfc8785.CanonicalizationError as exc:
        raise Malformed(f"cannot canonicalise as JSON (RFC 8785): {exc}") from None
    except RecursionError:
        raise Malformed("cannot canonicalise as JSON (RFC 8785): nested too deeply") from None
