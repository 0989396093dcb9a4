"""did:key for Ed25519 keys (W3C CCG did:key method).

An Ed25519 did:key is ``did:key:`` + multibase base58btc (``z``) of the
multicodec varint ``0xed 0x01`` followed by the 32-byte public key, so every
one starts ``did:key:z6Mk``. The derived X25519 key-agreement key uses the
multicodec ``0xec 0x01`` (``z6LS...``).

Theory of operation: decoding is strict and syntactic. Anything that is not
exactly ``did:key:z<base58btc>`` decoding to ``ed 01`` + 32 bytes raises
:class:`~fedpeer.errors.DidInvalid` (an X25519 did:key, a DID URL with a
fragment, padding, non-base58 characters, another multibase). Whether the
32 bytes are a *usable* key (a valid, non-small-order point) is checked where
keys are used, by :func:`fedpeer.identity.keys.verify_signature`, which
raises ``KEY_UNKNOWN``; :func:`did_document` also refuses a DID whose key
cannot be converted to X25519. Decoding is cached: the same few DIDs are
parsed again and again on the sync hot path.

Pure functions; no I/O.
"""

from __future__ import annotations

import functools

import nacl.bindings
import nacl.exceptions

from fedpeer.errors import DidInvalid

from . import _base58

__all__ = [
    "DID_KEY_PREFIX",
    "MULTIKEY_CONTEXT",
    "base58btc_decode",
    "base58btc_encode",
    "did_document",
    "did_from_public_key",
    "ed25519_from_multibase",
    "ed25519_multibase",
    "public_key_from_did",
    "x25519_from_ed25519_public",
    "x25519_multibase",
]

DID_KEY_PREFIX = "did:key:"
"""Every did:key starts with this."""

MULTIKEY_CONTEXT: tuple[str, str] = (
    "https://www.w3.org/ns/did/v1",
    "https://w3id.org/security/multikey/v1",
)
"""The JSON-LD ``@context`` of a did:key document in the current Multikey form."""

_ED25519_PUB = b"\xed\x01"
_X25519_PUB = b"\xec\x01"
_KEY_LEN = 32
_MAX_MULTIBASE_LEN = 64  # 'z' + 47..48 base58 chars for 34 bytes; anything longer is wrong

# --- base58btc (Bitcoin alphabet) -----------------------------------------------


def base58btc_encode(data: bytes) -> str:
    """Encode ``data`` in base58btc (Bitcoin alphabet, no multibase prefix).

    Leading zero bytes become leading ``1`` characters. Pure; never raises for bytes.
    """
    return _base58.encode(data)


def base58btc_decode(text: str) -> bytes:
    """Decode base58btc ``text`` (no multibase prefix) strictly.

    Raises :class:`~fedpeer.errors.DidInvalid` on an empty string or any character
    outside the Bitcoin alphabet (``0``, ``O``, ``I``, ``l``, ``+``, ``/``, ``=``,
    whitespace, non-ASCII). base58btc has exactly one spelling per byte string, so
    a successful decode re-encodes to ``text``.
    """
    if not text:
        raise DidInvalid("empty base58btc value")
    out = _base58.decode(text)
    if out is None:
        raise DidInvalid("invalid base58btc character; the alphabet excludes 0, O, I and l")
    return out


# --- multikey values ---------------------------------------------------------------


def _check_key_len(public_key: bytes, what: str) -> None:
    if not isinstance(public_key, bytes) or len(public_key) != _KEY_LEN:
        size = len(public_key) if isinstance(public_key, (bytes, bytearray)) else "non-bytes"
        raise DidInvalid(f"an {what} public key is 32 bytes, got {size}")


def ed25519_multibase(public_key: bytes) -> str:
    """The ``publicKeyMultibase`` of an Ed25519 public key: ``z6Mk...``.

    Raises :class:`~fedpeer.errors.DidInvalid` unless ``public_key`` is 32 bytes.
    """
    _check_key_len(public_key, "Ed25519")
    return "z" + base58btc_encode(_ED25519_PUB + public_key)


def x25519_multibase(public_key: bytes) -> str:
    """The ``publicKeyMultibase`` of an X25519 public key: ``z6LS...``.

    Raises :class:`~fedpeer.errors.DidInvalid` unless ``public_key`` is 32 bytes.
    """
    _check_key_len(public_key, "X25519")
    return "z" + base58btc_encode(_X25519_PUB + public_key)


def ed25519_from_multibase(value: str) -> bytes:
    """Decode an Ed25519 ``publicKeyMultibase`` (``z6Mk...``) to 32 raw key bytes.

    Raises :class:`~fedpeer.errors.DidInvalid` for a non-string, a multibase other
    than ``z`` (base58btc), bad base58 characters, another multicodec (an X25519
    ``z6LS...`` key included) or a key that is not 32 bytes. Syntactic only: point
    validity is checked by the verifier (``KEY_UNKNOWN``).
    """
    if not isinstance(value, str):
        raise DidInvalid("a multibase key is a string")
    if not value.startswith("z"):
        raise DidInvalid("only base58btc multibase ('z...') is supported for did:key")
    if len(value) > _MAX_MULTIBASE_LEN:  # bound the work before decoding
        raise DidInvalid(f"an Ed25519 multibase key is 48 characters, got {len(value)}")
    raw = base58btc_decode(value[1:])
    codec = raw[:2]
    if codec == _X25519_PUB:
        raise DidInvalid("this is an X25519 key-agreement key; a signing key must be Ed25519")
    if codec != _ED25519_PUB:
        raise DidInvalid("the multicodec is not ed25519-pub (0xed 0x01)")
    if len(raw) != 2 + _KEY_LEN:
        raise DidInvalid(f"an Ed25519 public key is 32 bytes, got {len(raw) - 2}")
    return raw[2:]


# --- did:key -------------------------------------------------------------------------


def did_from_public_key(public_key: bytes) -> str:
    """The did:key (``did:key:z6Mk...``) of a 32-byte Ed25519 public key.

    Raises :class:`~fedpeer.errors.DidInvalid` unless ``public_key`` is 32 bytes.
    Pure; does not check that the key is a valid curve point.
    """
    return DID_KEY_PREFIX + ed25519_multibase(public_key)


@functools.lru_cache(maxsize=4096)
def public_key_from_did(did: str) -> bytes:
    """The raw 32-byte Ed25519 public key of an Ed25519 did:key.

    Raises :class:`~fedpeer.errors.DidInvalid` for anything but exactly
    ``did:key:z<base58btc of ed 01 + 32 bytes>``: another method or prefix, a DID
    URL (path, query or fragment), a non-``z`` multibase, bad base58 characters, an
    X25519 (``z6LS``) or other multicodec, a wrong key length. Results are cached
    (LRU, 4096 entries); errors are not. Pure and cheap; see ``keys.verify_signature``
    for the point-validity check (``KEY_UNKNOWN``).
    """
    if not isinstance(did, str):
        raise DidInvalid("a DID is a string")
    if not did.startswith(DID_KEY_PREFIX):
        raise DidInvalid("not a did:key (it must start with 'did:key:z6Mk')")
    return ed25519_from_multibase(did[len(DID_KEY_PREFIX) :])


def x25519_from_ed25519_public(public_key: bytes) -> bytes:
    """Convert an Ed25519 public key to its X25519 (Montgomery) public key.

    Uses libsodium's ``crypto_sign_ed25519_pk_to_curve25519``. Raises
    :class:`~fedpeer.errors.DidInvalid` if ``public_key`` is not 32 bytes or is not
    a point libsodium will convert (non-canonical or small-order encodings).
    """
    _check_key_len(public_key, "Ed25519")
    try:
        out: bytes = nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(public_key)
    except (nacl.exceptions.CryptoError, RuntimeError, ValueError):
        raise DidInvalid(
            "the Ed25519 key is not a valid curve point; it has no X25519 equivalent"
        ) from None
    return out


@functools.lru_cache(maxsize=1024)
def _x25519_multibase_for_did(did: str) -> str:
    return x25519_multibase(x25519_from_ed25519_public(public_key_from_did(did)))


def did_document(did: str) -> dict[str, object]:
    """Resolve an Ed25519 did:key to its DID document (W3C CCG did:key, Multikey form).

    The document has ``@context`` :data:`MULTIKEY_CONTEXT`, the Ed25519 verification
    method ``{did}#{z6Mk...}`` (type ``Multikey``, ``publicKeyMultibase``) listed under
    ``authentication``, ``assertionMethod``, ``capabilityInvocation`` and
    ``capabilityDelegation``, and the derived X25519 method ``{did}#{z6LS...}`` (type
    ``Multikey``) listed under ``keyAgreement``; both sit in ``verificationMethod``,
    as in the spec's document creation algorithm with encryption key derivation on.

    Raises :class:`~fedpeer.errors.DidInvalid` for an invalid did:key or one whose key
    is not a convertible curve point. Returns a fresh dict each call (safe to mutate).
    """
    ed_mb = did[len(DID_KEY_PREFIX) :] if did.startswith(DID_KEY_PREFIX) else ""
    x_mb = _x25519_multibase_for_did(did)  # validates the DID first
    ed_id = f"{did}#{ed_mb}"
    x_id = f"{did}#{x_mb}"
    return {
        "@context": list(MULTIKEY_CONTEXT),
        "id": did,
        "verificationMethod": [
            {"id": ed_id, "type": "Multikey", "controller": did, "publicKeyMultibase": ed_mb},
            {"id": x_id, "type": "Multikey", "controller": did, "publicKeyMultibase": x_mb},
        ],
        "authentication": [ed_id],
        "assertionMethod": [ed_id],
        "capabilityInvocation": [ed_id],
        "capabilityDelegation": [ed_id],
        "keyAgreement": [x_id],
    }
