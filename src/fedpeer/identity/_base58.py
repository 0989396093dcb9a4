"""base58btc (the Bitcoin alphabet, no multibase prefix): the one codec used by
did:key (``z6Mk...``) and CIDv0 text (``Qm...``). Pure."""

from __future__ import annotations

__all__ = ["ALPHABET", "decode", "encode"]

ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_INDEX: dict[str, int] = {c: i for i, c in enumerate(ALPHABET)}


def encode(data: bytes) -> str:
    """``data`` in base58btc; leading zero bytes become leading ``1`` characters."""
    zeros = len(data) - len(data.lstrip(b"\0"))
    n = int.from_bytes(data, "big")
    out: list[str] = []
    while n:
        n, rem = divmod(n, 58)
        out.append(ALPHABET[rem])
    return "1" * zeros + "".join(reversed(out))


def decode(text: str) -> bytes | None:
    """The bytes of base58btc ``text``, or None when a character is outside the
    alphabet (``0``, ``O``, ``I``, ``l``, ``+``, ``/``, whitespace, non-ASCII).
    Each byte string has one spelling, so a decoded value re-encodes to ``text``.
    Callers bound the length (the decoder is quadratic)."""
    n = 0
    index = _INDEX
    for c in text:
        digit = index.get(c)
        if digit is None:
            return None
        n = n * 58 + digit
    zeros = len(text) - len(text.lstrip("1"))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\0" * zeros + body
