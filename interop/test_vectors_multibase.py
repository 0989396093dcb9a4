"""Multibase spec test vectors for the bases fedpeer writes.

- base58btc (``z``): did:key identifiers (``fedpeer.identity.didkey``) and CIDv0;
- base32 lower case (``b``): CIDv1 text (``fedpeer.identity._cid``);
- base64url (``u``): binary values in signed JSON (``b64url_encode``).

Each is checked through ``multiformats`` (used to parse any other multibase CID)
and through fedpeer's own codec for that base.
"""

from __future__ import annotations

import codecs
import csv

import pytest
from multiformats import multibase

from fedpeer.identity import _cid
from fedpeer.identity.canonical import b64url_decode, b64url_encode
from fedpeer.identity.didkey import base58btc_decode, base58btc_encode
from interop._vectors import VECTORS

FILES = ["basic", "case_insensitivity", "leading_zero", "two_leading_zeros"]
OUR_BASES = ("base58btc", "base32", "base64url")


def _load(name: str) -> tuple[bytes, dict[str, str]]:
    with (VECTORS / "multibase" / f"{name}.csv").open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, skipinitialspace=True))
    (_, raw_text), *encodings = rows
    data = codecs.decode(raw_text, "unicode_escape").encode("latin-1")
    return data, {base: text for base, text in encodings}


CASES = [
    (name, base, *_load(name)[:1], _load(name)[1][base])
    for name in FILES
    if name != "case_insensitivity"
    for base in OUR_BASES
]


def test_files_parse() -> None:
    data, encodings = _load("basic")
    assert data == b"yes mani !"
    assert set(OUR_BASES) <= encodings.keys()
    assert _load("two_leading_zeros")[0] == b"\x00\x00yes mani !"


@pytest.mark.parametrize(
    ("name", "base", "data", "text"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES]
)
def test_multiformats(name: str, base: str, data: bytes, text: str) -> None:
    assert multibase.encode(data, base) == text
    assert bytes(multibase.decode(text)) == data


@pytest.mark.parametrize(
    ("name", "base", "data", "text"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES]
)
def test_fedpeer_codec(name: str, base: str, data: bytes, text: str) -> None:
    prefix, body = text[0], text[1:]
    if base == "base58btc":
        assert prefix == "z"
        assert base58btc_encode(data) == body
        assert base58btc_decode(body) == data
        assert _cid._b58encode(data) == body
        assert _cid._b58decode(body) == data
    elif base == "base32":
        assert prefix == "b"
        assert _cid._b32lower_decode(body) == data
        assert _cid._text(data) == text  # the CIDv1 text encoder (data is not CIDv0-shaped)
    else:
        assert prefix == "u"
        assert b64url_encode(data) == body
        assert b64url_decode(body) == data


def test_case_insensitive_base32() -> None:
    """Mixed-case base32 is valid multibase; multiformats reads it, our strict reader does not.

    ``CID.parse`` hands such strings to multiformats, so they still parse as CIDs
    (see tests/identity/test_canonical.py); DAG-JSON only accepts the canonical form.
    """
    data, encodings = _load("case_insensitivity")
    assert data == b"hello world"
    for base in ("base32", "base32upper"):
        text = encodings[base]
        assert bytes(multibase.decode(text)) == data
        assert _cid._b32lower_decode(text[1:]) is None
    assert _cid._b32lower_decode(encodings["base32"][1:].lower()) == data
