"""Every error fedpeer raises, with a stable machine code.

All errors derive from :class:`FedpeerError`. Each subclass sets a class-level
``code`` (UPPER_SNAKE, stable once released: a code keeps its meaning forever)
and an ``http_status`` used when the error crosses HTTP. Over HTTP an error is
rendered as ``{"error": {"code": ..., "message": ...}}`` and
:func:`error_from_code` turns it back into the same class on the client.

Messages say what to do next. They never contain secret key material or
bearer tokens.

The tree::

    FedpeerError
    ├── InvalidRequest            INVALID_REQUEST          400
    │   ├── Malformed             MALFORMED                400
    │   ├── NonCanonical          NON_CANONICAL            400
    │   ├── DidInvalid            DID_INVALID              400
    │   ├── RecordInvalid         RECORD_INVALID           400
    │   ├── RecordFromFuture      RECORD_FROM_FUTURE       400
    │   ├── CursorInvalid         CURSOR_INVALID           400
    │   ├── PageInvalid           PAGE_INVALID             502
    │   ├── PairSelf              PAIR_SELF                400
    │   ├── CarInvalid            CAR_INVALID              400
    │   └── ConfigInvalid         CONFIG_INVALID           400
    ├── BodyTooLarge              BODY_TOO_LARGE           413
    │   └── RecordTooLarge        RECORD_TOO_LARGE         413
    ├── BodyTimeout               BODY_TIMEOUT             408
    ├── UnsupportedMediaType      UNSUPPORTED_MEDIA_TYPE   415
    ├── NotAcceptable             NOT_ACCEPTABLE           406
    ├── SignatureError            (abstract)
    │   ├── BadSignature          BAD_SIGNATURE            400
    │   ├── SignatureExpired      SIGNATURE_EXPIRED        400
    │   ├── SignatureNotYetValid  SIGNATURE_NOT_YET_VALID  400
    │   ├── KeyUnknown            KEY_UNKNOWN              403
    │   └── DidMismatch           DID_MISMATCH             400
    ├── DidMethodUnsupported      DID_METHOD_UNSUPPORTED   400
    ├── DidNotFound               DID_NOT_FOUND            404
    ├── KeyFileError              KEY_FILE_INVALID         500
    │   ├── KeyFileInsecure       KEY_FILE_INSECURE        500
    │   └── KeyFileMissing        KEY_FILE_MISSING         500
    ├── StoreError                STORE_ERROR              500
    │   ├── StoreClosed           STORE_CLOSED             503
    │   ├── StoreCorrupt          STORE_CORRUPT            500
    │   ├── SchemaTooNew          SCHEMA_TOO_NEW           500
    │   └── StoreFull             STORE_FULL               507
    ├── DataDirError              DATA_DIR_ERROR           500
    │   └── DataDirLocked         DATA_DIR_LOCKED          409
    ├── StartFailed               START_FAILED             500
    ├── CursorReset               CURSOR_RESET             409
    ├── CursorFromFuture          CURSOR_FROM_FUTURE       409
    ├── AuthRequired              AUTH_REQUIRED            401
    │   ├── TokenInvalid          TOKEN_INVALID            401
    │   ├── TokenExpired          TOKEN_EXPIRED            401
    │   └── TokenRevoked          TOKEN_REVOKED            401
    ├── ScopeForbidden            SCOPE_FORBIDDEN          403
    ├── ConsentDenied             CONSENT_DENIED           403
    ├── QuotaExceeded             QUOTA_EXCEEDED           403
    ├── NotFound                  NOT_FOUND                404
    │   ├── RecordNotFound        RECORD_NOT_FOUND         404
    │   ├── PairNotFound          PAIR_NOT_FOUND           404
    │   ├── ServiceAccountNotFound SERVICE_ACCOUNT_NOT_FOUND 404
    │   ├── GrantNotFound         GRANT_NOT_FOUND          404
    │   └── InviteNotFound        INVITE_NOT_FOUND         404
    ├── MethodNotAllowed          METHOD_NOT_ALLOWED       405
    ├── Conflict                  CONFLICT                 409
    │   ├── BootstrapClosed       BOOTSTRAP_CLOSED         409
    │   └── PairStateInvalid      PAIR_STATE_INVALID       409
    ├── InviteGone                (abstract)               410
    │   ├── InviteExpired         INVITE_EXPIRED           410
    │   ├── InviteRevoked         INVITE_REVOKED           410
    │   └── InviteExhausted       INVITE_EXHAUSTED         410
    ├── InviteRefused             (abstract)               403
    │   ├── HolderTypeMismatch    HOLDER_TYPE_MISMATCH     403
    │   ├── BadProof              BAD_PROOF                403
    │   ├── FreshnessViolation    FRESHNESS_VIOLATION      403
    │   ├── ProofReplayed         PROOF_REPLAYED           403
    │   └── InviteSecretInvalid   INVITE_SECRET_INVALID    403
    ├── RotateNotSelf             ROTATE_NOT_SELF          403
    ├── RateLimited               RATE_LIMITED             429
    ├── PeerError                 PEER_ERROR               502
    │   ├── PeerUnreachable       PEER_UNREACHABLE         503
    │   │   └── NodeNotRunning    NODE_NOT_RUNNING         503
    │   ├── PeerInvalid           PEER_INVALID             502
    │   │   └── TlsPinMismatch    TLS_PIN_MISMATCH         502
    │   ├── PageTooLarge          PAGE_TOO_LARGE           502
    │   ├── PeerTooSlow           PEER_TOO_SLOW            504
    │   └── RedirectRefused       REDIRECT_REFUSED         502
    ├── DiscoveryUnavailable      DISCOVERY_UNAVAILABLE    503
    ├── TimedOut                  TIMED_OUT                504
    └── InternalError             INTERNAL                 500
"""

from __future__ import annotations

import re
import unicodedata
from typing import ClassVar

__all__ = [
    "AuthRequired",
    "BadProof",
    "BadSignature",
    "BodyTimeout",
    "BodyTooLarge",
    "BootstrapClosed",
    "CarInvalid",
    "ConfigInvalid",
    "Conflict",
    "ConsentDenied",
    "CursorFromFuture",
    "CursorInvalid",
    "CursorReset",
    "DataDirError",
    "DataDirLocked",
    "DidInvalid",
    "DidMethodUnsupported",
    "DidMismatch",
    "DidNotFound",
    "DiscoveryUnavailable",
    "FedpeerError",
    "FreshnessViolation",
    "GrantNotFound",
    "HolderTypeMismatch",
    "InternalError",
    "InvalidRequest",
    "InviteExhausted",
    "InviteExpired",
    "InviteGone",
    "InviteNotFound",
    "InviteRefused",
    "InviteRevoked",
    "InviteSecretInvalid",
    "KeyFileError",
    "KeyFileInsecure",
    "KeyFileMissing",
    "KeyUnknown",
    "Malformed",
    "MethodNotAllowed",
    "NodeNotRunning",
    "NonCanonical",
    "NotAcceptable",
    "NotFound",
    "PageInvalid",
    "PageTooLarge",
    "PairNotFound",
    "PairSelf",
    "PairStateInvalid",
    "PeerError",
    "PeerInvalid",
    "PeerTooSlow",
    "PeerUnreachable",
    "ProofReplayed",
    "QuotaExceeded",
    "RateLimited",
    "RecordFromFuture",
    "RecordInvalid",
    "RecordNotFound",
    "RecordTooLarge",
    "RedirectRefused",
    "RotateNotSelf",
    "SchemaTooNew",
    "ScopeForbidden",
    "ServiceAccountNotFound",
    "SignatureError",
    "SignatureExpired",
    "SignatureNotYetValid",
    "StartFailed",
    "StoreClosed",
    "StoreCorrupt",
    "StoreError",
    "StoreFull",
    "TimedOut",
    "TlsPinMismatch",
    "TokenExpired",
    "TokenInvalid",
    "TokenRevoked",
    "UnsupportedMediaType",
    "all_codes",
    "error_from_code",
]

_REGISTRY: dict[str, type[FedpeerError]] = {}


class FedpeerError(Exception):
    """Base of every fedpeer error.

    ``code`` is a stable UPPER_SNAKE machine code; ``http_status`` the status
    the HTTP layer answers with; ``message`` a human sentence saying what to do.
    Abstract intermediate classes have ``code = ""`` and are never raised.
    """

    code: ClassVar[str] = "FEDPEER_ERROR"
    http_status: ClassVar[int] = 500

    def __init__(self, message: str = "") -> None:
        self.message = message or self.__class__.__doc__ or self.code
        super().__init__(self.message)

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        code = cls.__dict__.get("code")
        if code:
            if code in _REGISTRY:
                raise TypeError(f"duplicate fedpeer error code {code}")
            _REGISTRY[code] = cls

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def to_dict(self) -> dict[str, dict[str, str]]:
        """The HTTP body form: ``{"error": {"code": ..., "message": ...}}``."""
        return {"error": {"code": self.code, "message": self.message}}


_CODE_RE = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
_ABOUT_THE_PEER = frozenset(
    {
        "DID_MISMATCH",
        "TLS_PIN_MISMATCH",
        "PEER_ERROR",
        "PEER_INVALID",
        "PAGE_INVALID",
        "PAGE_TOO_LARGE",
        "REDIRECT_REFUSED",
        "PEER_UNREACHABLE",
        "PEER_TOO_SLOW",
    }
)
MAX_REMOTE_MESSAGE = 2000
"""The most characters of a message received from another node that are kept (a
fedpeer message is a sentence or two; a node's own messages to its CLI fit)."""

_KEPT_FORMAT = frozenset("\u200c\u200d")  # zero-width (non-)joiners: ordinary text
_LINE_BREAKS = frozenset("\u2028\u2029")  # category Z, but splitlines() breaks on them


def clean_remote_text(text: str, limit: int = MAX_REMOTE_MESSAGE) -> str:
    """``text`` from another node made safe to store, log and print: at most
    ``limit`` characters (then "..."), every character of Unicode category C
    (controls such as newline and ESC, format characters such as bidi
    overrides, surrogates, unassigned; the zero-width joiners of ordinary
    scripts and emoji excepted) and the line and paragraph separators written
    as an escape (``\\x1b``, ``\\u202e``), so it can neither forge a log line
    nor drive a terminal. Pure."""
    cut = len(text) > limit
    out = []
    for c in text[:limit]:
        if c in _LINE_BREAKS or (unicodedata.category(c)[0] == "C" and c not in _KEPT_FORMAT):
            n = ord(c)
            out.append(
                f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"
            )
        else:
            out.append(c)
    return "".join(out) + ("..." if cut else "")


def error_from_code(code: str, message: str, status: int | None = None) -> FedpeerError:
    """Rebuild the error class named by ``code`` (as received over HTTP).

    An unknown code gives a plain :class:`FedpeerError` carrying that code and
    status, so newer servers do not crash older clients. What another node sent
    is not trusted: a ``code`` that is not upper-case letters, digits and ``_``
    (at most 64) gives ``PEER_INVALID``, and the message is cut and escaped by
    :func:`clean_remote_text`.
    """
    message = clean_remote_text(str(message))
    if not isinstance(code, str) or _CODE_RE.fullmatch(code) is None:
        return PeerInvalid(
            f"the peer answered an error whose code is not a fedpeer code "
            f"({clean_remote_text(str(code), 64)}): {message}"
        )
    cls = _REGISTRY.get(code)
    if cls is not None and code not in _ABOUT_THE_PEER:
        return cls(message)
    # An unknown code, or one of the codes that describe what this side found
    # wrong with the peer (DID_MISMATCH, TLS_PIN_MISMATCH, PAGE_TOO_LARGE...): a
    # peer saying them about itself is only an error with that code and status,
    # never taken for this side's own verdict (which stops a pair with "the node
    # did not prove it is ..., the credential was not sent": untrue here).
    err = FedpeerError(message)
    err.code = code  # type: ignore[misc]
    if status is not None:
        err.http_status = status  # type: ignore[misc]
    return err


def all_codes() -> dict[str, type[FedpeerError]]:
    """Every registered code and its class (for docs and the OpenAPI document)."""
    return dict(_REGISTRY)


# --- request shape ---------------------------------------------------------


class InvalidRequest(FedpeerError):
    """The request is not valid; fix the input and try again."""

    code = "INVALID_REQUEST"
    http_status = 400


class Malformed(InvalidRequest):
    """The input could not be decoded (bad JSON, CBOR, base64, or shape)."""

    code = "MALFORMED"


class CarInvalid(InvalidRequest):
    """A file is not a readable fedpeer export (CARv1 of signed records); nothing
    was imported from it."""

    code = "CAR_INVALID"


class NonCanonical(InvalidRequest):
    """The bytes decode but are not in canonical form; re-encode canonically."""

    code = "NON_CANONICAL"


class DidInvalid(InvalidRequest):
    """The DID is not a valid identifier for its method."""

    code = "DID_INVALID"


class RecordInvalid(InvalidRequest):
    """The record breaks a rule of the record format."""

    code = "RECORD_INVALID"


class RecordFromFuture(InvalidRequest):
    """The record's timestamp is too far in the future; check the author's clock."""

    code = "RECORD_FROM_FUTURE"


class CursorInvalid(InvalidRequest):
    """The cursor is not one this node issued; start again without a cursor."""

    code = "CURSOR_INVALID"


class PageInvalid(InvalidRequest):
    """A peer sent a page that breaks the feed protocol."""

    code = "PAGE_INVALID"
    http_status = 502


class PairSelf(InvalidRequest):
    """A node cannot pair with itself; use the other node's URL."""

    code = "PAIR_SELF"


class ConfigInvalid(InvalidRequest):
    """The configuration is not valid."""

    code = "CONFIG_INVALID"


class BodyTooLarge(FedpeerError):
    """The request body is larger than this node accepts."""

    code = "BODY_TOO_LARGE"
    http_status = 413


class RecordTooLarge(BodyTooLarge):
    """The record is larger than the configured limit."""

    code = "RECORD_TOO_LARGE"


class BodyTimeout(FedpeerError):
    """The request body did not arrive in time; send it at once (a client that
    trickles its body holds a connection for nothing)."""

    code = "BODY_TIMEOUT"
    http_status = 408


class UnsupportedMediaType(FedpeerError):
    """Send application/json or application/cbor."""

    code = "UNSUPPORTED_MEDIA_TYPE"
    http_status = 415


class NotAcceptable(FedpeerError):
    """Ask for application/json or application/cbor."""

    code = "NOT_ACCEPTABLE"
    http_status = 406


# --- signatures and identity -----------------------------------------------


class SignatureError(FedpeerError):
    """A signature or signed document did not verify."""

    code = ""
    http_status = 400


class BadSignature(SignatureError):
    """The signature does not verify for this content and key."""

    code = "BAD_SIGNATURE"


class SignatureExpired(SignatureError):
    """The signed document has expired; fetch a fresh one."""

    code = "SIGNATURE_EXPIRED"


class SignatureNotYetValid(SignatureError):
    """The signed document is not valid yet; check both clocks."""

    code = "SIGNATURE_NOT_YET_VALID"


class KeyUnknown(SignatureError):
    """The signing key cannot be found or is not a valid Ed25519 key."""

    code = "KEY_UNKNOWN"
    http_status = 403


class DidMismatch(SignatureError):
    """The document is signed by a different DID than expected."""

    code = "DID_MISMATCH"


class DidMethodUnsupported(FedpeerError):
    """No resolver driver is registered for this DID method."""

    code = "DID_METHOD_UNSUPPORTED"
    http_status = 400


class DidNotFound(FedpeerError):
    """The DID could not be resolved to a document."""

    code = "DID_NOT_FOUND"
    http_status = 404


class KeyFileError(FedpeerError):
    """The key file cannot be used."""

    code = "KEY_FILE_INVALID"
    http_status = 500


class KeyFileInsecure(KeyFileError):
    """The key file is readable by other users."""

    code = "KEY_FILE_INSECURE"


class KeyFileMissing(KeyFileError):
    """There is no key file; run `fedpeer init` first."""

    code = "KEY_FILE_MISSING"


# --- storage and cursors -----------------------------------------------------


class StoreError(FedpeerError):
    """The store failed."""

    code = "STORE_ERROR"
    http_status = 500


class StoreClosed(StoreError):
    """The store is closed."""

    code = "STORE_CLOSED"
    http_status = 503


class StoreCorrupt(StoreError):
    """The store file is damaged; restore from a peer or a backup."""

    code = "STORE_CORRUPT"


class SchemaTooNew(StoreError):
    """The store was written by a newer fedpeer; upgrade fedpeer to open it."""

    code = "SCHEMA_TOO_NEW"


class StoreFull(StoreError):
    """The disk holding the store is full: writes fail until space is freed; reads work."""

    code = "STORE_FULL"
    http_status = 507


# --- node start-up -------------------------------------------------------------


class DataDirError(FedpeerError):
    """The data dir cannot be used (not a directory, not writable)."""

    code = "DATA_DIR_ERROR"
    http_status = 500


class DataDirLocked(DataDirError):
    """Another fedpeer node is running on this data dir; stop it or use another one."""

    code = "DATA_DIR_LOCKED"
    http_status = 409


class StartFailed(FedpeerError):
    """The node's HTTP server could not listen on its address (port in use?)."""

    code = "START_FAILED"
    http_status = 500


class CursorReset(FedpeerError):
    """The cursor belongs to another store, or to this one before a wipe, a restore or
    a rollback; restart without it."""

    code = "CURSOR_RESET"
    http_status = 409


class CursorFromFuture(FedpeerError):
    """The cursor is ahead of this store; the store was restored from an older copy."""

    code = "CURSOR_FROM_FUTURE"
    http_status = 409


# --- auth and consent ----------------------------------------------------------


class AuthRequired(FedpeerError):
    """Send `Authorization: Bearer <token>`."""

    code = "AUTH_REQUIRED"
    http_status = 401


class TokenInvalid(AuthRequired):
    """The bearer token is not valid (unknown, revoked or mistyped)."""

    code = "TOKEN_INVALID"


class TokenRevoked(AuthRequired):
    """The token was revoked while a long-lived read (stream, longpoll) was open;
    ask the node's owner for a new one."""

    code = "TOKEN_REVOKED"


class TokenExpired(AuthRequired):
    """The bearer token has expired; rotate it or get a new one."""

    code = "TOKEN_EXPIRED"


class ScopeForbidden(FedpeerError):
    """The token lacks the scope this route needs."""

    code = "SCOPE_FORBIDDEN"
    http_status = 403


class ConsentDenied(FedpeerError):
    """No grant lets the caller see this; ask the node's owner for a grant."""

    code = "CONSENT_DENIED"
    http_status = 403


class QuotaExceeded(FedpeerError):
    """A holder's writes would pass its write quota (``NodeConfig.write_quota_records``
    or ``write_quota_bytes``): nothing of the write is stored; the node's owner can
    raise the quota."""

    code = "QUOTA_EXCEEDED"
    http_status = 403


class NotFound(FedpeerError):
    """Nothing is here."""

    code = "NOT_FOUND"
    http_status = 404


class RecordNotFound(NotFound):
    """No record with this id is stored here."""

    code = "RECORD_NOT_FOUND"


class PairNotFound(NotFound):
    """No pair with this id; list pairs with `fedpeer pairs`."""

    code = "PAIR_NOT_FOUND"


class ServiceAccountNotFound(NotFound):
    """No service account with this id."""

    code = "SERVICE_ACCOUNT_NOT_FOUND"


class GrantNotFound(NotFound):
    """No grant with this id."""

    code = "GRANT_NOT_FOUND"


class InviteNotFound(NotFound):
    """No invite with this id on this node; check the invite URL."""

    code = "INVITE_NOT_FOUND"


class MethodNotAllowed(FedpeerError):
    """This route does not take this method."""

    code = "METHOD_NOT_ALLOWED"
    http_status = 405


class Conflict(FedpeerError):
    """The request conflicts with the current state."""

    code = "CONFLICT"
    http_status = 409


class BootstrapClosed(Conflict):
    """The bootstrap service account was already created; use its token."""

    code = "BOOTSTRAP_CLOSED"


class PairStateInvalid(Conflict):
    """The pair cannot make that transition from its current state."""

    code = "PAIR_STATE_INVALID"


class InviteGone(FedpeerError):
    """The invite can no longer be redeemed; ask for a new one."""

    code = ""
    http_status = 410


class InviteExpired(InviteGone):
    """The invite has expired; ask the issuer for a new one."""

    code = "INVITE_EXPIRED"


class InviteRevoked(InviteGone):
    """The invite was revoked; ask the issuer for a new one."""

    code = "INVITE_REVOKED"


class InviteExhausted(InviteGone):
    """The invite has no uses left; ask the issuer for a new one."""

    code = "INVITE_EXHAUSTED"


class InviteRefused(FedpeerError):
    """The redemption was refused."""

    code = ""
    http_status = 403


class HolderTypeMismatch(InviteRefused):
    """This invite does not accept this holder type."""

    code = "HOLDER_TYPE_MISMATCH"


class BadProof(InviteRefused):
    """The holder proof does not verify."""

    code = "BAD_PROOF"


class FreshnessViolation(InviteRefused):
    """The proof's issued_at is outside the allowed window; check the clock."""

    code = "FRESHNESS_VIOLATION"


class ProofReplayed(InviteRefused):
    """This proof was already used; make a new one."""

    code = "PROOF_REPLAYED"


class InviteSecretInvalid(InviteRefused):
    """The invite secret is wrong; use the full invite URL."""

    code = "INVITE_SECRET_INVALID"


class RotateNotSelf(FedpeerError):
    """A token can only be rotated with itself."""

    code = "ROTATE_NOT_SELF"
    http_status = 403


class RateLimited(FedpeerError):
    """Too many requests; wait for Retry-After seconds."""

    code = "RATE_LIMITED"
    http_status = 429

    def __init__(self, message: str = "", retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


# --- peers ---------------------------------------------------------------------


class PeerError(FedpeerError):
    """The peer answered with something unexpected."""

    code = "PEER_ERROR"
    http_status = 502


class PeerUnreachable(PeerError):
    """The peer cannot be reached; check its URL and the network."""

    code = "PEER_UNREACHABLE"
    http_status = 503


class NodeNotRunning(PeerUnreachable):
    """The local node is not running (or not at the URL the CLI was given); start
    it with `fedpeer run`, or pass --url."""

    code = "NODE_NOT_RUNNING"
    http_status = 503


class PeerInvalid(PeerError):
    """The peer failed verification (manifest, DID or signature)."""

    code = "PEER_INVALID"


class TlsPinMismatch(PeerInvalid):
    """The TLS certificate the peer presented is not the one its DID signed for
    (its SPKI hash is not in the pin set of the invite, TXT or signed manifest):
    an impostor, or a stale pin. Nothing (no bearer, no secret) was sent."""

    code = "TLS_PIN_MISMATCH"


class PageTooLarge(PeerError):
    """A peer's answer is larger than this client accepts (bytes or records per
    page); the peer is broken or hostile, or the cap is set too low.

    ``max_bytes``: the byte cap the answer went over, when bytes were the cause
    (None for too many records, or an error a peer sent); ``asked``: the records
    the request asked for, when the caller knows (a pull's page source sets it)."""

    code = "PAGE_TOO_LARGE"

    def __init__(
        self, message: str = "", max_bytes: int | None = None, asked: int | None = None
    ) -> None:
        super().__init__(message)
        self.max_bytes = max_bytes
        self.asked = asked


class PeerTooSlow(PeerError):
    """A peer did not finish its answer within the deadline for one request; the
    link is too slow or the peer is stalling on purpose."""

    code = "PEER_TOO_SLOW"
    http_status = 504


class RedirectRefused(PeerError):
    """A peer answered with a redirect; fedpeer never follows redirects (use the
    final URL of the node directly)."""

    code = "REDIRECT_REFUSED"


class DiscoveryUnavailable(FedpeerError):
    """mDNS discovery could not start; the node runs without it."""

    code = "DISCOVERY_UNAVAILABLE"
    http_status = 503


class TimedOut(FedpeerError):
    """A bounded wait ended before the awaited state was reached; the work may
    still complete in the background."""

    code = "TIMED_OUT"
    http_status = 504


class InternalError(FedpeerError):
    """An unexpected error; the node log has details."""

    code = "INTERNAL"
    http_status = 500
