"""Signed JSON documents (manifests, invites, proofs).

A signed document is a JSON object with one extra member::

    "signature": {"alg": "Ed25519", "key_id": "did:key:z6Mk...#z6Mk...",
                  "signed_at": "2026-11-23T15:06:30Z", "expires_at": "2026-11-30T15:06:30Z",
                  "signature": "<base64url, no padding, of 64 bytes>"}

Theory of operation: the signed bytes are the RFC 8785 (JCS) form of the whole
document with only the inner ``signature.signature`` value removed, so the
``signature`` member with ``alg``, ``key_id``, ``signed_at`` and
``expires_at`` *is* covered: nobody relaying a document can swap the key id or
stretch its time window. Numbers follow RFC 8785 on both sides: a signer
refuses integers outside ``-(2**53-1) .. 2**53-1`` (I-JSON), and a verifier
canonicalises such an integer, when it receives one, as the IEEE double it
denotes, as every RFC 8785 implementation does (see ``docs/protocol.md``).
Verification runs in a fixed order so that the error code tells the truth:

1. shape of the ``signature`` member (missing, wrong types, unknown members,
   ``alg`` not ``Ed25519``, bad times, bad base64url) -> ``BAD_SIGNATURE``;
2. ``expected_did`` differs from the DID part of ``key_id`` -> ``DID_MISMATCH``
   (checked before any resolution, so an unexpected did:web is never fetched);
3. the key cannot be found or is not a valid, non-small-order point -> ``KEY_UNKNOWN``;
4. the signature does not verify -> ``BAD_SIGNATURE``;
5. only then the time window, with ``max_skew_s`` of slack on both ends ->
   ``SIGNATURE_NOT_YET_VALID`` / ``SIGNATURE_EXPIRED``. A tampered time window is
   therefore reported as ``BAD_SIGNATURE``, not as expired.

Other modules sign and verify JSON documents only through this module. Pure (no
I/O) except :func:`verify_document_resolved`, which awaits a resolver.
"""

from __future__ import annotations

import copy
import datetime
import re
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import attrs

from fedpeer.errors import (
    BadSignature,
    DidInvalid,
    DidMismatch,
    FedpeerError,
    KeyUnknown,
    Malformed,
    SignatureError,
    SignatureExpired,
    SignatureNotYetValid,
)

from ._syntax import DID_PATTERN
from .canonical import b64url_decode, b64url_encode, jcs, jcs_received
from .didkey import DID_KEY_PREFIX, public_key_from_did
from .keys import SigningKey, verify_signature

if TYPE_CHECKING:
    from .resolver import Resolver

__all__ = [
    "DEFAULT_MAX_SKEW_S",
    "SIGNATURE_ALG",
    "VerifiedDocument",
    "did_key_public_key_for",
    "format_rfc3339",
    "parse_rfc3339",
    "sign_document",
    "verify_document",
    "verify_document_resolved",
]

SIGNATURE_ALG = "Ed25519"
"""The only ``signature.alg`` fedpeer signs with and accepts."""
DEFAULT_MAX_SKEW_S = 300.0
"""Default clock skew allowed on both ends of the validity window (seconds)."""

_SIG_MEMBERS = frozenset({"alg", "key_id", "signed_at", "expires_at", "signature"})
_MAX_KEY_ID_LEN = 2048
# did:<method>:<method-specific-id>#<fragment>: the one DID syntax (DID Core), then a
# fragment of any visible ASCII except '#'.
_KEY_ID_RE = re.compile(rf"({DID_PATTERN})#([!-\"$-~]+)")
_TIME_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})Z")


# --- times ---------------------------------------------------------------------------


def format_rfc3339(ts: float) -> str:
    """Format unix seconds as RFC 3339 UTC with second precision: ``2026-11-23T15:06:30Z``.

    Fractions are truncated toward the past (floor). Raises
    :class:`~fedpeer.errors.Malformed` outside years 1..9999.
    """
    try:
        dt = datetime.datetime.fromtimestamp(int(ts // 1), tz=datetime.UTC)
    except (OverflowError, OSError, ValueError):
        raise Malformed("timestamp out of range") from None
    return (
        f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}Z"
    )


def parse_rfc3339(text: str) -> int:
    """Parse the strict form written by :func:`format_rfc3339` to unix seconds.

    Accepts exactly ``YYYY-MM-DDTHH:MM:SSZ`` (upper-case ``T`` and ``Z``, no
    fraction, no offset) naming a real calendar time. Raises
    :class:`~fedpeer.errors.Malformed` otherwise.
    """
    m = _TIME_RE.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        raise Malformed("a time is RFC 3339 UTC with second precision, like 2026-11-23T15:06:30Z")
    try:
        y, mo, d, h, mi, sec = (int(g) for g in m.groups())
        dt = datetime.datetime(y, mo, d, h, mi, sec, tzinfo=datetime.UTC)
    except ValueError:
        raise Malformed("the time names no real calendar second") from None
    return int(dt.timestamp())


# --- signing -------------------------------------------------------------------------


def sign_document(
    doc: Mapping[str, object], key: SigningKey, *, ttl_s: int, now: float | None = None
) -> dict[str, object]:
    """Return a signed copy of the JSON object ``doc``.

    The copy (deep) gets ``signature = {alg: "Ed25519", key_id: key.key_id, signed_at,
    expires_at, signature}`` with ``signed_at`` = ``now`` (default: the wall clock)
    truncated to the second and ``expires_at`` = ``signed_at + ttl_s``. An existing
    ``signature`` member is replaced (re-signing). ``doc`` itself is not modified.

    Raises :class:`~fedpeer.errors.Malformed` if ``ttl_s`` is not a positive integer,
    and the canonical codec's error (``MALFORMED``) if ``doc`` is not JSON-able under
    RFC 8785 (non-string keys, NaN, bytes...). An integer outside
    ``-(2**53-1) .. 2**53-1`` is refused (I-JSON, RFC 7493), the message naming
    where it is: other JSON readers keep numbers as IEEE doubles, so send such a
    value as a string. Pure CPU.
    """
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int) or ttl_s <= 0:
        raise Malformed("ttl_s must be a positive whole number of seconds")
    if not isinstance(doc, Mapping):
        raise Malformed("only a JSON object can be signed")
    signed_at = int((time.time() if now is None else now) // 1)
    out: dict[str, object] = copy.deepcopy(dict(doc))
    sig_member: dict[str, object] = {
        "alg": SIGNATURE_ALG,
        "key_id": key.key_id,
        "signed_at": format_rfc3339(signed_at),
        "expires_at": format_rfc3339(signed_at + ttl_s),
    }
    out["signature"] = sig_member
    signature = key.sign(jcs(out))
    sig_member["signature"] = b64url_encode(signature)
    return out


# --- verification ----------------------------------------------------------------------


@attrs.frozen
class VerifiedDocument:
    """A document whose signature checked out.

    ``document`` is the whole document as received (including its ``signature``
    member); ``did`` the signer's DID (the part of ``key_id`` before ``#``);
    ``signed_at`` and ``expires_at`` unix seconds.
    """

    document: dict[str, object]
    did: str
    key_id: str
    signed_at: float
    expires_at: float


@attrs.frozen
class _Parsed:
    document: dict[str, object]
    message: bytes
    key_id: str
    did: str
    signed_at: int
    expires_at: int
    signature: bytes


def _short(value: str) -> str:
    return value if len(value) <= 80 else value[:77] + "..."


def _parse(doc: object) -> _Parsed:
    """Step 1: check the shape, build the signed bytes. Raises BadSignature only."""
    if not isinstance(doc, Mapping):
        raise BadSignature("a signed document is a JSON object")
    member = doc.get("signature")
    if not isinstance(member, Mapping):
        raise BadSignature("the document has no signature object; it must be signed")
    if set(member) != _SIG_MEMBERS:
        missing = sorted(_SIG_MEMBERS - set(member))
        extra = sorted(str(k) for k in set(member) - _SIG_MEMBERS)
        raise BadSignature(
            f"the signature object must have exactly {sorted(_SIG_MEMBERS)}"
            f" (missing {missing}, unknown {[_short(k) for k in extra]})"
        )
    alg = member["alg"]
    if alg != SIGNATURE_ALG:
        raise BadSignature("unsupported signature alg; only Ed25519 is accepted")
    key_id = member["key_id"]
    if not isinstance(key_id, str) or len(key_id) > _MAX_KEY_ID_LEN:
        raise BadSignature("signature.key_id must be a DID URL like did:key:z6Mk...#z6Mk...")
    m = _KEY_ID_RE.fullmatch(key_id)
    if m is None:
        raise BadSignature(f"signature.key_id {_short(key_id)!r} is not a DID URL with a fragment")
    try:
        signed_at = parse_rfc3339(member["signed_at"])
        expires_at = parse_rfc3339(member["expires_at"])
    except Malformed as err:
        raise BadSignature(f"signature.signed_at/expires_at: {err.message}") from None
    if expires_at < signed_at:
        raise BadSignature("signature.expires_at is before signature.signed_at")
    value = member["signature"]
    if not isinstance(value, str):
        raise BadSignature("signature.signature must be a base64url string")
    try:
        signature = b64url_decode(value)
    except FedpeerError:
        raise BadSignature("signature.signature is not valid base64url (no padding)") from None
    if len(signature) != 64 or b64url_encode(signature) != value:
        # The re-encode check refuses non-canonical spellings (stray low bits).
        raise BadSignature("signature.signature must encode exactly 64 bytes, canonically")
    unsigned = dict(doc)
    unsigned["signature"] = {k: v for k, v in member.items() if k != "signature"}
    try:
        # As every RFC 8785 implementation would: an integer beyond 2**53 is the
        # IEEE double it denotes (a JavaScript relay writes 1e16 as 10000000000000000).
        message = jcs_received(unsigned)
    except (FedpeerError, ValueError, TypeError, OverflowError, RecursionError):
        raise BadSignature("the document is not canonicalizable JSON (RFC 8785)") from None
    return _Parsed(
        document=dict(doc),
        message=message,
        key_id=key_id,
        did=m.group(1),
        signed_at=signed_at,
        expires_at=expires_at,
        signature=signature,
    )


def _check_did(parsed: _Parsed, expected_did: str | None) -> None:
    if expected_did is not None and parsed.did != expected_did:
        raise DidMismatch(
            f"the document is signed by {_short(parsed.did)}, expected {_short(expected_did)}"
        )


def _finish(
    parsed: _Parsed, public_key: bytes, now: float | None, max_skew_s: float
) -> VerifiedDocument:
    verify_signature(public_key, parsed.message, parsed.signature)  # KeyUnknown / BadSignature
    t = time.time() if now is None else now
    if t < parsed.signed_at - max_skew_s:
        raise SignatureNotYetValid(
            f"the document is signed for {format_rfc3339(parsed.signed_at)}, later than now "
            f"({format_rfc3339(t)}) by more than {max_skew_s:g} s; check both clocks"
        )
    if t > parsed.expires_at + max_skew_s:
        raise SignatureExpired(
            f"the document expired at {format_rfc3339(parsed.expires_at)}; fetch a fresh one"
        )
    return VerifiedDocument(
        document=parsed.document,
        did=parsed.did,
        key_id=parsed.key_id,
        signed_at=float(parsed.signed_at),
        expires_at=float(parsed.expires_at),
    )


def _key_unknown(err: FedpeerError, key_id: str) -> KeyUnknown:
    return KeyUnknown(f"cannot find the key {_short(key_id)}: {err}")


def did_key_public_key_for(key_id: str) -> bytes:
    """Offline key lookup for did:key: ``did:key:z6Mk..#z6Mk..`` -> 32 raw key bytes.

    The default key lookup of :func:`verify_document`. The fragment must be the
    did:key's own multibase value (its one signing method). Raises
    :class:`~fedpeer.errors.KeyUnknown` for any other DID method (use
    :func:`verify_document_resolved` with a resolver), another fragment, or an
    invalid did:key.
    """
    did, _, fragment = key_id.partition("#")
    if not did.startswith(DID_KEY_PREFIX):
        raise KeyUnknown(
            f"{_short(did)} is not a did:key; verify it with a resolver that knows its method"
        )
    if fragment != did[len(DID_KEY_PREFIX) :]:
        raise KeyUnknown("a did:key signs only with the key named by its own id (did#z6Mk...)")
    try:
        return public_key_from_did(did)
    except DidInvalid as err:
        raise KeyUnknown(f"{_short(did)} is not a valid Ed25519 did:key: {err.message}") from None


def verify_document(
    doc: Mapping[str, object],
    *,
    public_key_for: Callable[[str], bytes] | None = None,
    expected_did: str | None = None,
    now: float | None = None,
    max_skew_s: float = DEFAULT_MAX_SKEW_S,
) -> VerifiedDocument:
    """Verify a document signed by :func:`sign_document`.

    ``public_key_for`` maps the ``key_id`` to raw Ed25519 key bytes (default:
    :func:`did_key_public_key_for`, offline did:key); a :class:`~fedpeer.errors.FedpeerError`
    it raises that is not already a signature error becomes ``KEY_UNKNOWN`` (with the
    original as ``__cause__``); other exceptions propagate. ``expected_did``, if given,
    must equal the DID part of ``key_id``. ``now`` defaults to the wall clock;
    the window is ``[signed_at - max_skew_s, expires_at + max_skew_s]``.

    Returns a :class:`VerifiedDocument`. Raises (see the module docstring for the
    order) :class:`~fedpeer.errors.BadSignature` (also for a missing or malformed
    signature member or a wrong ``alg``), :class:`~fedpeer.errors.DidMismatch`,
    :class:`~fedpeer.errors.KeyUnknown`, :class:`~fedpeer.errors.SignatureExpired`,
    :class:`~fedpeer.errors.SignatureNotYetValid`. Pure CPU unless ``public_key_for``
    does I/O.
    """
    parsed = _parse(doc)
    _check_did(parsed, expected_did)
    lookup = did_key_public_key_for if public_key_for is None else public_key_for
    try:
        public_key = lookup(parsed.key_id)
    except SignatureError:
        raise
    except FedpeerError as err:
        raise _key_unknown(err, parsed.key_id) from err
    return _finish(parsed, public_key, now, max_skew_s)


async def verify_document_resolved(
    doc: Mapping[str, object],
    resolver: Resolver,
    *,
    expected_did: str | None = None,
    now: float | None = None,
    max_skew_s: float = DEFAULT_MAX_SKEW_S,
) -> VerifiedDocument:
    """Like :func:`verify_document`, finding the key with ``resolver.public_key_for``.

    Resolution failures (``DID_NOT_FOUND``, ``DID_METHOD_UNSUPPORTED``,
    ``DID_INVALID``) are reported as :class:`~fedpeer.errors.KeyUnknown` with the
    original error as ``__cause__``. May do network I/O (did:web) through the
    resolver; cancellation is safe (nothing is left half done).
    """
    parsed = _parse(doc)
    _check_did(parsed, expected_did)
    try:
        public_key = await resolver.public_key_for(parsed.key_id)
    except SignatureError:
        raise
    except FedpeerError as err:
        raise _key_unknown(err, parsed.key_id) from err
    return _finish(parsed, public_key, now, max_skew_s)
