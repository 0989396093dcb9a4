"""Strict, unpadded base64 (RFC 4648 §4 standard and §5 URL-safe alphabets).

fedpeer writes binary values in JSON as base64 *without padding*: base64url in
signed documents, tokens and cursors, the standard alphabet inside DAG-JSON
bytes. There is exactly one accepted text for every byte string, so decoders
reject padding, whitespace, characters outside the alphabet, an impossible
length (``len % 4 == 1``) and non-zero unused trailing bits (``"AB"`` and
``"AA"`` would otherwise both decode to ``b"\\x00"``). That keeps signed
values and cache keys unambiguous.

Pure functions; no I/O.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable

from fedpeer.errors import Malformed

__all__ = ["b64std_decode", "b64std_encode", "b64url_decode", "b64url_encode"]

_URL_RE = re.compile(r"[A-Za-z0-9_-]*")
_STD_RE = re.compile(r"[A-Za-z0-9+/]*")


def b64url_encode(data: bytes) -> str:
    """Encode ``data`` as base64url (RFC 4648 §5) without ``=`` padding.

    Accepts any bytes-like object; pure, never raises for bytes.
    """
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Decode unpadded base64url ``text`` strictly.

    Raises :class:`~fedpeer.errors.Malformed` (``MALFORMED``) for anything that
    :func:`b64url_encode` would not have produced: a non-``str`` argument,
    padding, whitespace, characters outside ``A-Z a-z 0-9 - _``, a length that is
    1 modulo 4, or non-zero unused bits in the last character.
    """
    return _decode(text, _URL_RE, base64.urlsafe_b64decode, b64url_encode, "base64url")


def b64std_encode(data: bytes) -> str:
    """Encode ``data`` as standard base64 (RFC 4648 §4) without ``=`` padding."""
    return base64.b64encode(data).rstrip(b"=").decode("ascii")


def b64std_decode(text: str) -> bytes:
    """Decode unpadded standard base64 ``text`` strictly (the DAG-JSON bytes form).

    Same rules as :func:`b64url_decode` with the ``+`` ``/`` alphabet; raises
    :class:`~fedpeer.errors.Malformed`.
    """
    return _decode(text, _STD_RE, base64.b64decode, b64std_encode, "base64")


def _decode(
    text: object,
    pattern: re.Pattern[str],
    decoder: Callable[[str], bytes],
    encoder: Callable[[bytes], str],
    name: str,
) -> bytes:
    if not isinstance(text, str):
        raise Malformed(f"{name} value must be a string, not {type(text).__name__}")
    if pattern.fullmatch(text) is None:
        raise Malformed(
            f"{name} value has characters outside the unpadded {name} alphabet "
            "(no padding or whitespace allowed)"
        )
    if len(text) % 4 == 1:
        raise Malformed(f"{name} value has an impossible length ({len(text)})")
    try:
        raw = decoder(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:  # pragma: no cover - excluded by the checks above
        raise Malformed(f"{name} value does not decode") from exc
    if encoder(raw) != text:
        raise Malformed(f"{name} value has non-zero unused trailing bits (not canonical)")
    return raw
