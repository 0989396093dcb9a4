"""Signed mDNS TXT announcements: build and check them without any network.

Theory of operation
-------------------

What mDNS says is unauthenticated: anyone on the link can answer for any name.
A fedpeer announcement therefore carries, in its TXT record, the node's
Ed25519 signature over everything else it claims, so a browser can refuse a
forged or tampered announcement *before* it opens a connection. The manifest
check (:func:`fedpeer.peer.discovery.verify_peer`) still decides ``verified``:
a valid TXT signature only says "the holder of this DID published this TXT at
some point"; anyone can replay it from another address.

TXT keys (all values are strings; RFC 6763 key=value pairs)::

    v       "1"                     announcement format version
    did     did:key:z6Mk...         the node's identity
    handle  display name            (1..128 characters, no control characters)
    ns      "a,b/c"                 advertised namespaces, comma separated
    caps    "sync,invites"          capabilities, comma separated
    port    "8750"                  the HTTP port (must equal the SRV port)
    seq     "1732374390123"         sequence number, grows with every re-announcement
    exp     "1732377990"            expiry, unix seconds
    sig     base64url (no padding)  Ed25519 signature, 86 characters

The signed bytes are ``b"fedpeer-mdns-v1\\0" + JCS({every key except sig})``:
the domain-separation prefix keeps a TXT signature from ever being valid as a
record, manifest or proof signature (those sign CIDs or JCS documents without
it), and JCS makes the bytes independent of TXT order. Unknown keys are
signed too, so a newer node can add keys that older verifiers still check.

``seq`` lets a browser ignore an older announcement that arrives after a newer
one (a stale cache entry or a replay); ``exp`` bounds how long a captured
announcement stays usable. Both are covered by the signature.
"""

from __future__ import annotations

import re
import time
import unicodedata
from collections.abc import Mapping, Sequence
from typing import TypeAlias

import attrs

from ..errors import (
    BadSignature,
    ConfigInvalid,
    DidMismatch,
    FedpeerError,
    Malformed,
    SignatureExpired,
)
from ..identity._syntax import is_name
from ..identity.canonical import b64url_decode, b64url_encode, jcs
from ..identity.didkey import public_key_from_did
from ..identity.keys import SigningKey, verify_signature

__all__ = [
    "DOMAIN_PREFIX",
    "MAX_TXT_BYTES",
    "SERVICE_TYPE",
    "TXT_VERSION",
    "Announcement",
    "TxtProperties",
    "decode_txt",
    "sign_txt",
    "signing_input",
    "txt_size",
    "verify_txt",
]

SERVICE_TYPE = "_fedpeer._tcp.local."
"""The DNS-SD service type every fedpeer node advertises and browses."""
TXT_VERSION = "1"
DOMAIN_PREFIX = b"fedpeer-mdns-v1\x00"
"""Prefix of the signed bytes (domain separation from every other signature)."""
MAX_TXT_STRING = 255
"""RFC 6763 §6.1: one ``key=value`` string is at most 255 bytes."""
MAX_TXT_BYTES = 1300
"""Whole TXT record budget, so the announcement fits one mDNS packet."""
MAX_HANDLE_CHARS = 128
MAX_SEQ = 2**53 - 1
DEFAULT_TXT_TTL_S = 3600
DEFAULT_MAX_TTL_S = 24 * 3600
DEFAULT_MAX_SKEW_S = 300.0

_REQUIRED = ("v", "did", "handle", "ns", "caps", "port", "seq", "exp", "sig")
_KEY_RE = re.compile(r"[\x21-\x3c\x3e-\x7e]{1,64}")  # printable ASCII except '='
_DECIMAL_RE = re.compile(r"0|[1-9][0-9]{0,15}")
_PIN_RE = re.compile(r"[A-Za-z0-9_-]{43}")


@attrs.frozen
class Announcement:
    """A checked announcement: what a TXT record with a valid signature says.

    ``extra`` holds signed keys this version does not know, sorted by key.
    """

    did: str
    handle: str
    port: int
    namespaces: tuple[str, ...]
    capabilities: tuple[str, ...]
    seq: int
    expires_at: int
    version: str = TXT_VERSION
    extra: tuple[tuple[str, str], ...] = ()

    @property
    def tls_pin(self) -> str | None:
        """The signed ``tls`` key: the node's TLS pin (docs/protocol.md §6.6), None
        for a node serving plain HTTP."""
        return dict(self.extra).get("tls")


def signing_input(txt: Mapping[str, str]) -> bytes:
    """The bytes the ``sig`` value signs: prefix + JCS of every key but ``sig``."""
    return DOMAIN_PREFIX + jcs({k: v for k, v in txt.items() if k != "sig"})


def txt_size(txt: Mapping[str, str]) -> int:
    """Wire size of a TXT record holding ``txt`` (one length byte per string)."""
    return sum(1 + len(f"{k}={v}".encode()) for k, v in txt.items())


def _join(items: Sequence[str], what: str) -> str:
    for item in items:
        if not is_name(item):
            raise ConfigInvalid(
                f"{what} item {item[:40]!r} is not a valid name "
                "(1..256 of A-Z a-z 0-9 . _ : @ / + -, not starting with /)"
            )
    return ",".join(items)


def _split(value: str, what: str) -> tuple[str, ...]:
    if value == "":
        return ()
    items = tuple(value.split(","))
    for item in items:
        if not is_name(item):
            raise Malformed(f"TXT {what} has an invalid item {item[:40]!r}")
    return items


def _check_handle(handle: str, err: type[FedpeerError]) -> None:
    if not 1 <= len(handle) <= MAX_HANDLE_CHARS or any(
        unicodedata.category(c).startswith("C") for c in handle
    ):
        raise err(f"a handle is 1..{MAX_HANDLE_CHARS} characters without control characters")


def sign_txt(
    key: SigningKey,
    *,
    handle: str,
    port: int,
    namespaces: Sequence[str] = (),
    capabilities: Sequence[str] = (),
    seq: int,
    expires_at: int | None = None,
    ttl_s: int = DEFAULT_TXT_TTL_S,
    now: float | None = None,
    tls_pin: str | None = None,
) -> dict[str, str]:
    """Build the signed TXT properties for this node's announcement.

    ``tls_pin`` (the SPKI SHA-256 of the served certificate, §6.6) becomes the
    signed ``tls`` key: the node serves HTTPS with that certificate.

    ``expires_at`` (unix seconds) defaults to ``now + ttl_s``. ``seq`` must grow
    with every new announcement of the same key (the node uses a millisecond
    clock, so it also grows across restarts). Returns ``{key: value}`` strings,
    ready for zeroconf's ``ServiceInfo(properties=...)``.

    Raises ConfigInvalid for a bad handle, port, namespace or capability name,
    or when the record would not fit (a string over 255 bytes, the whole over
    1300 bytes). Pure; never blocks.
    """
    _check_handle(handle, ConfigInvalid)
    if not 1 <= port <= 65535:
        raise ConfigInvalid(f"port must be 1..65535, got {port}")
    if not 0 <= seq <= MAX_SEQ:
        raise ConfigInvalid(f"seq must be 0..2**53-1, got {seq}")
    if expires_at is None:
        expires_at = int(time.time() if now is None else now) + ttl_s
    if not 0 <= expires_at <= MAX_SEQ:
        raise ConfigInvalid(f"expires_at out of range: {expires_at}")
    txt = {
        "v": TXT_VERSION,
        "did": key.did,
        "handle": handle,
        "ns": _join(namespaces, "namespace"),
        "caps": _join(capabilities, "capability"),
        "port": str(port),
        "seq": str(seq),
        "exp": str(expires_at),
    }
    if tls_pin is not None:
        if not _PIN_RE.fullmatch(tls_pin):
            raise ConfigInvalid("the TLS pin must be 43 base64url characters")
        txt["tls"] = tls_pin
    txt["sig"] = b64url_encode(key.sign(signing_input(txt)))
    for k, v in txt.items():
        if len(f"{k}={v}".encode()) > MAX_TXT_STRING:
            raise ConfigInvalid(f"TXT entry {k!r} is longer than {MAX_TXT_STRING} bytes")
    if txt_size(txt) > MAX_TXT_BYTES:
        raise ConfigInvalid(
            f"the announcement is {txt_size(txt)} bytes, over {MAX_TXT_BYTES}; "
            "advertise fewer namespaces or shorter names"
        )
    return txt


TxtProperties: TypeAlias = Mapping[bytes, bytes | None] | Mapping[str, str | None]
"""Raw TXT properties: zeroconf's ``{bytes: bytes | None}`` or ``{str: str}``."""


def decode_txt(properties: TxtProperties) -> dict[str, str]:
    """Decode raw TXT properties (as zeroconf gives them) into ``{str: str}``.

    Raises Malformed for a key that is not printable ASCII, a key present twice
    (keys are case-insensitive, RFC 6763 §6.4), a key without a value, or a
    value that is not UTF-8.
    """
    out: dict[str, str] = {}
    seen: set[str] = set()
    for raw_key, raw_value in properties.items():
        try:
            k = raw_key.decode("ascii") if isinstance(raw_key, bytes) else raw_key
        except UnicodeDecodeError:
            raise Malformed("TXT key is not ASCII") from None
        if _KEY_RE.fullmatch(k) is None:
            raise Malformed(f"TXT key {k[:20]!r} is not printable ASCII")
        if k.lower() in seen:
            raise Malformed(f"TXT key {k!r} appears twice")
        seen.add(k.lower())
        if raw_value is None:
            raise Malformed(f"TXT key {k!r} has no value")
        try:
            v = raw_value.decode("utf-8") if isinstance(raw_value, bytes) else raw_value
        except UnicodeDecodeError:
            raise Malformed(f"TXT value of {k!r} is not UTF-8") from None
        out[k] = v
    return out


def _decimal(txt: Mapping[str, str], k: str) -> int:
    value = txt[k]
    if _DECIMAL_RE.fullmatch(value) is None or int(value) > MAX_SEQ:
        raise Malformed(f"TXT {k} is not a canonical decimal: {value[:20]!r}")
    return int(value)


def verify_txt(
    txt: Mapping[str, str],
    *,
    expected_did: str | None = None,
    now: float | None = None,
    max_skew_s: float = DEFAULT_MAX_SKEW_S,
    max_ttl_s: int = DEFAULT_MAX_TTL_S,
) -> Announcement:
    """Check a decoded TXT announcement; return what it says.

    Order of checks: all keys present and ``v`` known (Malformed), ``did`` is a
    did:key (DidInvalid), the signature over every other key (Malformed for a
    bad encoding, KeyUnknown, BadSignature), ``expected_did`` (DidMismatch),
    field formats (Malformed), then time: past ``exp`` by more than
    ``max_skew_s`` gives SignatureExpired; an ``exp`` more than ``max_ttl_s``
    (plus skew) ahead gives Malformed (a captured announcement must not stay
    usable for long). ``now`` is unix seconds (None: the wall clock).

    ``seq`` is returned, not judged: only the caller knows the newest one seen.
    Pure; never blocks.
    """
    missing = [k for k in _REQUIRED if k not in txt]
    if missing:
        raise Malformed(f"announcement lacks TXT keys {missing}")
    if txt["v"] != TXT_VERSION:
        raise Malformed(f"unsupported announcement version {txt['v'][:10]!r}")
    did = txt["did"]
    public_key = public_key_from_did(did)  # DidInvalid
    try:
        sig = b64url_decode(txt["sig"])
    except FedpeerError:
        raise Malformed("TXT sig is not base64url") from None
    if len(sig) != 64:
        raise Malformed("TXT sig is not a 64-byte Ed25519 signature")
    try:
        verify_signature(public_key, signing_input(txt), sig)
    except BadSignature:
        raise BadSignature(
            f"the announcement's signature does not match {did}: forged or tampered"
        ) from None
    if expected_did is not None and did != expected_did:
        raise DidMismatch(f"announcement is for {did}, expected {expected_did}")
    _check_handle(txt["handle"], Malformed)
    port = _decimal(txt, "port")
    if not 1 <= port <= 65535:
        raise Malformed(f"TXT port out of range: {port}")
    seq = _decimal(txt, "seq")
    exp = _decimal(txt, "exp")
    t = time.time() if now is None else now
    if t > exp + max_skew_s:
        raise SignatureExpired(f"the announcement of {did} expired at {exp} (now {int(t)})")
    if exp > t + max_ttl_s + max_skew_s:
        raise Malformed(f"the announcement of {did} claims validity beyond {max_ttl_s} s")
    if "tls" in txt and not _PIN_RE.fullmatch(txt["tls"]):
        raise Malformed("TXT tls is not a 43-character base64url SPKI hash")
    extra = tuple(sorted((k, v) for k, v in txt.items() if k not in _REQUIRED))
    return Announcement(
        did=did,
        handle=txt["handle"],
        port=port,
        namespaces=_split(txt["ns"], "ns"),
        capabilities=_split(txt["caps"], "caps"),
        seq=seq,
        expires_at=exp,
        version=txt["v"],
        extra=extra,
    )
