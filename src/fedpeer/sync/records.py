"""Records: the signed, content-addressed units that fedpeer syncs.

A record is a DAG-CBOR map with exactly these keys::

    {v: 1, author: did:key, namespace: str, thread: str, kind: str,
     body: any DAG-CBOR value, parents: [CID], clock: int, ts: int (ms)}

Its id is the CIDv1 (dag-cbor, sha2-256) of its exact bytes, and ``sig`` is the
author's Ed25519 signature over the CID's raw bytes (``01 71 12 20`` + digest).
A record is immutable: the same bytes always give the same CID.

Theory of operation
-------------------
Every way a record enters a node (a pulled page, a batch fetch, a local write,
``build_record`` itself) goes through ONE pipeline, in this order, so the same
bytes always give the same verdict and the first failing stage names the error:

1. **size** - ``len(data) > limits.max_record_bytes`` -> ``RECORD_TOO_LARGE``,
   checked before any decoding so a huge input costs nothing;
2. **decode** - strict DAG-CBOR (:func:`~fedpeer.identity.canonical.dagcbor_decode`):
   undecodable bytes -> ``MALFORMED``; valid CBOR that is not the canonical
   encoding (unsorted keys, non-minimal ints, indefinite lengths, ...) ->
   ``NON_CANONICAL``, so re-encoding the decoded value gives ``data`` back;
3. **shape** - a map with exactly the nine keys, ``v == 1``, exact types (a bool
   is not an int; parents are CIDs) -> otherwise ``RECORD_INVALID``;
4. **id** - the CID from the bytes (hashlib); if the caller expected a CID (a
   wire item names one) and it differs -> ``RECORD_INVALID``;
5. **author** - ``author`` must be an Ed25519 did:key -> otherwise ``DID_INVALID``;
6. **signature** - Ed25519 over the CID bytes by the author's key. A signature
   that is not 64 bytes, does not verify, or an author key that is not a usable
   curve point -> ``BAD_SIGNATURE``;
7. **limits** (:class:`Limits`) - names, parents, clock, ts range, body depth,
   whole-number floats in the body -> ``RECORD_INVALID``; and last, ``ts`` more
   than ``max_future_ms`` ahead of ``now_ms`` -> ``RECORD_FROM_FUTURE`` (the only
   verdict that may change later, so it is reported only when everything else
   holds).

Limits come after the signature so that a tampered record always reads
``BAD_SIGNATURE`` (whoever changed it cannot re-sign it) and a limit error means
"the author really wrote this, and it breaks a rule".

The hot path is built for pull sync, where verifying thousands of records a
second is the job: size first; one strict decode, whose canonical check writes
the record's canonical bytes field by field in the known key order and compares
(anything unexpected falls back to the general strict decoder, which gives the
verdict); one sha-256; the author's key comes from two caches
(``public_key_from_did`` and the point-check cache in
:mod:`fedpeer.identity.keys`); the body depth walk returns at once for scalars.

The same pipeline runs in two passes for many records
(:func:`prepare_wire_items`): every stage but the Ed25519 check itself, with a
stage-7 error held back, then the signature checks in bulk
(:func:`~fedpeer.identity.keys.verify_batch`, in threads or worker processes),
then :meth:`PreparedRecords.finish` puts the verdicts together in stage order.
:func:`verify_wire_items` does both; its verdict for each item is exactly
:func:`record_from_wire`'s (same class and message, pinned by a differential
test).

Limits on names: ``namespace``, ``thread`` and ``kind`` are 1 to
``max_name_len`` characters from ``[A-Za-z0-9._:@/+-]`` and do not start with
``/``. ``clock`` and ``ts`` are integers in ``0 .. 2**53 - 1`` (safe in JSON and
JavaScript). ``parents`` holds at most ``max_parents`` distinct record ids
(CIDv1, dag-cbor, sha2-256), in the author's order. Body depth counts nested
containers: a scalar body has depth 0, ``{"a": 1}`` depth 1, ``[[1]]`` depth 2.
Every record has a JSON view (DAG-JSON), so a body may not hold a map that
DAG-JSON reserves for links and bytes (first key ``"/"`` with a string value, or
with a ``{"bytes": str}`` map value).

Floats: a body may hold floats, but not a whole-number float within
``-(2**53-1) .. 2**53-1`` (``1.0``, ``0.0``, ``-0.0``): the error names the path
(``body.a[2]``) and says to write the integer. JavaScript has one number type,
so its DAG-CBOR decoders turn such a float into an integer and re-encode other
bytes, giving another CID: a JavaScript peer could neither write such a record
nor re-derive its id. (The AT Protocol forbids floats in records for the same
reason.) NaN and the infinities are not in the data model at all (``MALFORMED``
on decode). See ``docs/protocol.md`` (records, floats).

Pure functions and frozen values; no I/O. The wall clock is read only when
``now_ms`` is None.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

import attrs

from fedpeer._clock import now_ms as _now_ms
from fedpeer.errors import (
    BadSignature,
    FedpeerError,
    Malformed,
    RecordFromFuture,
    RecordInvalid,
    RecordTooLarge,
)
from fedpeer.identity._dagcbor import encode_into, head, parse_unchecked
from fedpeer.identity._jcs import MAX_SAFE_INTEGER, first_path
from fedpeer.identity._syntax import NAME_PATTERN as NAME_PATTERN
from fedpeer.identity._syntax import NAME_RE as NAME_RE
from fedpeer.identity.canonical import (
    CID,
    b64url_encode,
    cid_for_dagcbor,
    dagcbor_decode,
    dagcbor_encode,
    dagjson_encode,
)
from fedpeer.identity.didkey import public_key_from_did
from fedpeer.identity.keys import (
    SigningKey,
    is_valid_public_key,
    verify_batch,
    verify_signature,
)
from fedpeer.store.base import NewRecord, StoredRecord

__all__ = [
    "DEFAULT_LIMITS",
    "MAX_SAFE_INT",
    "NAME_PATTERN",
    "NAME_RE",
    "RECORD_VERSION",
    "SIGNATURE_BYTES",
    "Limits",
    "PreparedRecords",
    "Record",
    "SignedRecord",
    "build_record",
    "prepare_wire_items",
    "record_from_wire",
    "record_to_json_view",
    "record_to_wire",
    "verify_record",
    "verify_wire_items",
]

RECORD_VERSION = 1
"""The only record format version (``v``) this code reads and writes."""

SIGNATURE_BYTES = 64
"""Length of a record signature (detached Ed25519)."""

MAX_SAFE_INT = MAX_SAFE_INTEGER  # the one constant (identity's, for signed JSON too)
"""Largest ``clock`` / ``ts`` value: exact in IEEE doubles (JSON, JavaScript)."""

_RECORD_KEYS = frozenset(
    ("v", "author", "namespace", "thread", "kind", "body", "parents", "clock", "ts")
)
# A record id: CIDv1, multicodec dag-cbor (0x71), multihash sha2-256 (0x12), 32 bytes.
_RECORD_CID_PREFIX = b"\x01\x71\x12\x20"
_RECORD_CID_LEN = len(_RECORD_CID_PREFIX) + 32
_WIRE_KEYS = frozenset(("cid", "data", "sig"))
# Names that matched NAME_PATTERN (length is checked separately, per Limits).
_GOOD_NAMES: set[str] = set()
_GOOD_NAMES_MAX = 4096


def _positive_int(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if type(value) is not int or value < 1:
        raise ValueError(f"Limits.{attribute.name} must be a positive int, got {value!r}")


@attrs.frozen
class Limits:
    """The limits every record must meet (see the module docstring).

    ``max_record_bytes``: encoded size (default 1 MiB). ``max_body_depth``:
    nesting of containers in ``body`` (32). ``max_parents``: entries in
    ``parents`` (64). ``max_name_len``: characters in namespace, thread and kind
    (256). ``max_future_ms``: how far ``ts`` may be ahead of the verifier's clock
    (10 minutes). All must be positive ints (``ValueError`` otherwise).
    """

    max_record_bytes: int = attrs.field(default=1_048_576, validator=_positive_int)
    max_body_depth: int = attrs.field(default=32, validator=_positive_int)
    max_parents: int = attrs.field(default=64, validator=_positive_int)
    max_name_len: int = attrs.field(default=256, validator=_positive_int)
    max_future_ms: int = attrs.field(default=600_000, validator=_positive_int)


DEFAULT_LIMITS = Limits()
"""The limits used when none are given."""


@attrs.frozen
class Record:
    """The content of a record (what its DAG-CBOR map holds).

    Built by :func:`build_record` and :func:`verify_record`, which enforce the
    format and the limits; constructing one directly checks nothing. ``body`` is
    a decoded DAG-CBOR value (dict with str keys, list, str, bytes, int, float,
    bool, None, CID); ``parents`` the parent record ids in the author's order.
    ``body`` is shared, not copied: treat it as read-only (the signed bytes are
    ``SignedRecord.data``, which a change to ``body`` would not follow).
    """

    v: int
    author: str
    namespace: str
    thread: str
    kind: str
    body: object
    parents: tuple[CID, ...]
    clock: int
    ts: int

    def to_map(self) -> dict[str, object]:
        """The record as the DAG-CBOR map that is encoded and hashed."""
        return {
            "v": self.v,
            "author": self.author,
            "namespace": self.namespace,
            "thread": self.thread,
            "kind": self.kind,
            "body": self.body,
            "parents": list(self.parents),
            "clock": self.clock,
            "ts": self.ts,
        }


@attrs.frozen
class SignedRecord:
    """A verified record: its id, exact bytes, signature and decoded content.

    Only :func:`build_record`, :func:`verify_record` and :func:`record_from_wire`
    make these, so holding one means the whole pipeline passed. ``cid`` is the
    CID of ``data``; ``sig`` the author's 64-byte signature over ``cid.raw``.
    """

    cid: CID
    data: bytes
    sig: bytes
    record: Record

    def to_new(self) -> NewRecord:
        """The :class:`~fedpeer.store.base.NewRecord` to hand to ``Store.put``."""
        rec = self.record
        return NewRecord(
            cid=self.cid.raw,
            data=self.data,
            sig=self.sig,
            author=rec.author,
            namespace=rec.namespace,
            thread=rec.thread,
            kind=rec.kind,
            ts=rec.ts,
        )


# --- the pipeline -------------------------------------------------------------------


def _record_from_value(obj: object) -> Record:
    """Stage 3, the exact shape of a decoded record. RecordInvalid."""
    if type(obj) is not dict:
        raise RecordInvalid("a record is a DAG-CBOR map")
    if obj.keys() != _RECORD_KEYS:
        missing = sorted(_RECORD_KEYS - obj.keys())
        extra = sorted(obj.keys() - _RECORD_KEYS)
        raise RecordInvalid(
            f"a record has exactly the keys {sorted(_RECORD_KEYS)}; "
            f"missing {missing}, unexpected {extra}"
        )
    v = obj["v"]
    if type(v) is not int or v != RECORD_VERSION:
        raise RecordInvalid(f"unsupported record version {v!r}; this node reads v=1")
    author = obj["author"]
    namespace = obj["namespace"]
    thread = obj["thread"]
    kind = obj["kind"]
    if (
        type(author) is not str
        or type(namespace) is not str
        or type(thread) is not str
        or type(kind) is not str
    ):
        raise RecordInvalid("author, namespace, thread and kind are text strings")
    parents = obj["parents"]
    if type(parents) is not list:
        raise RecordInvalid("parents is a list of record ids (CIDs)")
    for parent in parents:
        if type(parent) is not CID:
            raise RecordInvalid("parents is a list of record ids (CIDs)")
    clock = obj["clock"]
    ts = obj["ts"]
    if type(clock) is not int or type(ts) is not int:
        raise RecordInvalid("clock and ts are integers")
    return Record(v, author, namespace, thread, kind, obj["body"], tuple(parents), clock, ts)


# The canonical key order of a record map (length first, then bytewise), with each
# key's encoding: v, ts, body, kind, clock, author, thread, parents, namespace.
# ``_record_bytes`` writes a record in exactly that form.
_HEAD_V1_TS = b"\xa9\x61v\x01\x62ts"  # map(9), "v": 1, "ts":
_KEY_BODY = b"\x64body"
_KEY_KIND = b"\x64kind"
_KEY_CLOCK = b"\x65clock"
_KEY_AUTHOR = b"\x66author"
_KEY_THREAD = b"\x66thread"
_KEY_PARENTS = b"\x67parents"
_KEY_NAMESPACE = b"\x69namespace"
_LINK_PREFIX = b"\xd8\x2a"  # tag 42


# Encoded text (head + UTF-8) of the names and authors records repeat, bounded
# in entries and length since peers choose them.
_TEXT_CACHE: dict[str, bytes] = {}
_TEXT_CACHE_MAX = 4096
_TEXT_CACHE_MAX_LEN = 256


def _text(value: str) -> bytes:
    encoded = _TEXT_CACHE.get(value)
    if encoded is None:
        b = value.encode()
        encoded = head(3, len(b)) + b
        if len(value) <= _TEXT_CACHE_MAX_LEN and len(_TEXT_CACHE) < _TEXT_CACHE_MAX:
            _TEXT_CACHE[value] = encoded
    return encoded


def _int(value: int) -> bytes:
    return head(0, value) if value >= 0 else head(1, -1 - value)


def _record_bytes(rec: Record) -> bytearray:
    """The canonical DAG-CBOR of a record that passed :func:`_record_from_value`.

    Equal to ``dagcbor_encode(rec.to_map())`` (pinned by a differential test), but
    written field by field in the known key order instead of sorting a map. Raises
    what the encoder raises for a body or an integer outside the data model.
    """
    out = bytearray(_HEAD_V1_TS)
    out += _int(rec.ts)
    out += _KEY_BODY
    encode_into(rec.body, out, 1)
    out += _KEY_KIND
    out += _text(rec.kind)
    out += _KEY_CLOCK
    out += _int(rec.clock)
    out += _KEY_AUTHOR
    out += _text(rec.author)
    out += _KEY_THREAD
    out += _text(rec.thread)
    out += _KEY_PARENTS
    parents = rec.parents
    out += head(4, len(parents))
    for parent in parents:
        raw = parent.raw
        out += _LINK_PREFIX
        out += head(2, len(raw) + 1)
        out += b"\x00"
        out += raw
    out += _KEY_NAMESPACE
    out += _text(rec.namespace)
    return out


def _decode_record(data: bytes) -> Record:
    """Stages 2 and 3: strict decode and exact shape. Malformed/NonCanonical/RecordInvalid.

    Fast path: parse, check the shape, write the record's canonical bytes directly
    and compare with ``data``. It only ever *accepts* (the same value the strict
    decoder would return, as the bytes are the canonical encoding of exactly that
    value); anything else (an error, another shape, different bytes) goes to the
    general strict decoder, which names the problem exactly as it always has.
    """
    try:
        rec = _record_from_value(parse_unchecked(data))
        if _record_bytes(rec) == data:
            return rec
    except Exception:  # noqa: S110 - any surprise: the general path decides and names it
        pass
    return _record_from_value(dagcbor_decode(data))


def _author_key(author: str, sig: bytes) -> bytes:
    """Stages 5 and the cheap half of 6: the author's usable key and a 64-byte sig.

    Raises ``DidInvalid`` (not an Ed25519 did:key) and ``BadSignature`` (an author
    key that is not a usable curve point, or a signature that is not 64 bytes),
    in that order, with the same messages as :func:`verify_signature` would give.
    """
    public_key = public_key_from_did(author)  # cached; DidInvalid
    if not is_valid_public_key(public_key):  # cached
        raise BadSignature(
            "the author's did:key does not hold a usable Ed25519 key, so no signature "
            "can verify; the record is rejected"
        )
    if type(sig) is not bytes or len(sig) != SIGNATURE_BYTES:
        raise BadSignature("an Ed25519 signature is exactly 64 bytes")
    return public_key


def _reserved_map(m: dict[str, object]) -> bool:
    """A map DAG-JSON cannot write: it would read back as a link or as bytes."""
    if "/" not in m or min(m) != "/":
        return False
    inner = m["/"]
    if type(inner) is str:
        return True
    return (
        type(inner) is dict
        and "bytes" in inner
        and min(inner) == "bytes"
        and (type(inner["bytes"]) is str)
    )


def _whole_float(value: float) -> bool:
    """Whether the float ``value`` is one records refuse: a whole number within
    ``-(2**53-1) .. 2**53-1`` (``0.0`` and ``-0.0`` included).

    JavaScript has one number type: its DAG-CBOR decoders read such a float back
    as an integer and re-encode it as a CBOR integer, so the bytes and the CID of
    the record would change. Whole-number floats beyond that range stay floats in
    JavaScript (they are not safe integers) and are allowed, as are all fractions.
    """
    return -MAX_SAFE_INT <= value <= MAX_SAFE_INT and value.is_integer()


def _is_whole_float(value: object) -> bool:
    return isinstance(value, float) and _whole_float(value)


def _whole_float_message(body: object, max_depth: int) -> str:
    # the slow path: it runs only once _body_problem knows there is one
    found = first_path(body, _is_whole_float, root="body", max_depth=max_depth)
    assert found is not None
    path, value = found
    assert isinstance(value, float)
    shown = path if len(path) <= 200 else path[:197] + "..."
    return (
        f"{shown} is the float {value!r}, a whole number: write it as the integer "
        f"{int(value)}. Records hold no whole-number floats (-0.0 included): JavaScript "
        "peers read them back as integers, which changes the record's bytes and CID"
    )


def _body_problem(body: object, max_depth: int) -> str | None:
    """Why ``body`` breaks the limits (too deep, not DAG-JSON writable, a
    whole-number float), or None."""
    t = type(body)
    if t is not dict and t is not list:
        if type(body) is float and _whole_float(body):
            return _whole_float_message(body, max_depth)
        return None  # the common case: no walk at all
    stack: list[tuple[object, int]] = [(body, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > max_depth:
            return f"body nests deeper than {max_depth} levels"
        if type(value) is dict:
            if _reserved_map(value):
                return (
                    'body holds a map whose first key is "/" with a string value (or '
                    '{"bytes": str}); DAG-JSON would read it back as a link or bytes'
                )
            children: Iterable[object] = value.values()
        else:
            children = value  # type: ignore[assignment]
        for child in children:
            ct = type(child)
            if ct is dict or ct is list:
                stack.append((child, depth + 1))
            elif ct is float and _whole_float(child):  # type: ignore[arg-type]
                return _whole_float_message(body, max_depth)
    return None


def _check_name(what: str, value: str, max_len: int) -> None:
    if not 1 <= len(value) <= max_len:
        raise RecordInvalid(f"{what} must be 1 to {max_len} characters, got {len(value)}")
    if value in _GOOD_NAMES:  # the same few names come back on every record
        return
    if NAME_RE.fullmatch(value) is None:
        raise RecordInvalid(
            f"{what} {value[:64]!r} may only use the characters [A-Za-z0-9._:@/+-] "
            "and must not start with '/'"
        )
    if len(_GOOD_NAMES) < _GOOD_NAMES_MAX:
        _GOOD_NAMES.add(value)


def check_parents(parents: Sequence[CID], limits: Limits) -> None:
    """The parents rule of a record (part of stage 7): at most ``max_parents``,
    no id twice, each a record id. RECORD_INVALID. Pure; cheap enough to run
    before anything is read for them."""
    if len(parents) > limits.max_parents:
        raise RecordInvalid(
            f"a record has at most {limits.max_parents} parents, got {len(parents)}"
        )
    raws = {p.raw for p in parents}
    if len(raws) != len(parents):
        raise RecordInvalid("parents must not repeat a record id")
    for raw in raws:
        if len(raw) != _RECORD_CID_LEN or not raw.startswith(_RECORD_CID_PREFIX):
            raise RecordInvalid("a parent must be a record id (CIDv1, dag-cbor, sha2-256)")


def _check_limits(rec: Record, limits: Limits, now_ms: int | None) -> None:
    """Stage 7: every limit; RECORD_FROM_FUTURE last."""
    max_len = limits.max_name_len
    _check_name("namespace", rec.namespace, max_len)
    _check_name("thread", rec.thread, max_len)
    _check_name("kind", rec.kind, max_len)
    if rec.parents:
        check_parents(rec.parents, limits)
    if not 0 <= rec.clock <= MAX_SAFE_INT:
        raise RecordInvalid(f"clock must be in 0..2**53-1, got {rec.clock}")
    ts = rec.ts
    if not 0 <= ts <= MAX_SAFE_INT:
        raise RecordInvalid(f"ts must be milliseconds in 0..2**53-1, got {ts}")
    problem = _body_problem(rec.body, limits.max_body_depth)
    if problem is not None:
        raise RecordInvalid(problem)
    if now_ms is None:
        now_ms = _now_ms()
    if ts > now_ms + limits.max_future_ms:
        raise RecordFromFuture(
            f"the record's ts is {ts - now_ms} ms ahead of this node's clock "
            f"(at most {limits.max_future_ms} ms allowed); check the author's clock"
        )


def _check_size(data: bytes, limits: Limits) -> None:
    if len(data) > limits.max_record_bytes:
        raise RecordTooLarge(
            f"the record is {len(data)} bytes; this node accepts at most "
            f"{limits.max_record_bytes} bytes"
        )


def _prepass(
    data: bytes,
    sig: bytes,
    limits: Limits,
    now_ms: int | None,
    expected_cid: CID | None,
) -> tuple[SignedRecord, bytes, FedpeerError | None]:
    """Every stage but the Ed25519 check itself (the GIL-bound part of the pipeline).

    Raises the errors of stages 1 to 5 and the cheap part of 6 (as they come
    first); returns ``(record, author_key, limit_error)``, where ``record`` is NOT
    yet verified (never let it out before the signature check) and
    ``limit_error`` is the stage-7 error to raise only if the signature verifies.
    """
    if type(data) is not bytes:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise Malformed("record data must be bytes")
        data = bytes(data)
    _check_size(data, limits)
    rec = _decode_record(data)
    cid = cid_for_dagcbor(data)
    if expected_cid is not None and expected_cid.raw != cid.raw:
        raise RecordInvalid(
            f"cid does not match content: the item names {expected_cid} but its data "
            f"hashes to {cid}"
        )
    public_key = _author_key(rec.author, sig)
    limit_error: FedpeerError | None = None
    try:
        _check_limits(rec, limits, now_ms)
    except FedpeerError as exc:
        limit_error = exc
    return SignedRecord(cid, data, sig, rec), public_key, limit_error


def verify_record(
    data: bytes,
    sig: bytes,
    *,
    limits: Limits = DEFAULT_LIMITS,
    now_ms: int | None = None,
    expected_cid: CID | None = None,
) -> SignedRecord:
    """Verify a record's exact bytes and signature; the one entry check for records.

    ``data`` is the record's DAG-CBOR bytes, ``sig`` the author's signature over the
    CID. ``expected_cid`` (e.g. from a wire item) must then be the CID of ``data``.
    ``now_ms`` is the clock for the future-``ts`` check (None: the wall clock).

    Returns the :class:`SignedRecord`. Raises, by the first failing stage (see the
    module docstring): ``Malformed`` (``data`` not bytes or not CBOR),
    ``RecordTooLarge``, ``NonCanonical``, ``RecordInvalid`` (shape, CID mismatch,
    limits), ``DidInvalid`` (author not an Ed25519 did:key), ``BadSignature`` (sig
    not 64 bytes, not valid for this CID and author, or an unusable author key),
    ``RecordFromFuture``. Pure CPU (one Ed25519 verify plus a small overhead); never
    blocks. :func:`verify_wire_items` is the same check for many wire items.
    """
    signed, public_key, limit_error = _prepass(data, sig, limits, now_ms, expected_cid)
    verify_signature(public_key, signed.cid.raw, signed.sig)  # BadSignature
    if limit_error is not None:
        raise limit_error
    return signed


def build_record(
    key: SigningKey,
    *,
    namespace: str,
    thread: str,
    kind: str,
    body: object,
    parents: Iterable[CID] = (),
    clock: int = 0,
    ts: int | None = None,
    limits: Limits = DEFAULT_LIMITS,
    now_ms: int | None = None,
) -> SignedRecord:
    """Build and sign a record authored by ``key``.

    ``body`` is any value DAG-CBOR can encode (dicts need str keys; tuples become
    lists); ``parents`` are record ids, kept in the given order; ``ts`` defaults to
    ``now_ms`` (itself defaulting to the wall clock). The record passes through the
    same checks as :func:`verify_record` before it is signed, so what this returns
    always verifies elsewhere (given the same limits and a sane clock), and its
    ``record`` equals what a verifier decodes (e.g. tuples in ``body`` come back as
    lists).

    Raises ``RecordInvalid`` or ``Malformed`` (a value DAG-CBOR cannot encode, or a
    broken limit or type; a whole-number float such as ``1.0`` in ``body`` is
    refused, naming its path: convert it with ``int()`` first), ``RecordTooLarge``,
    ``RecordFromFuture`` (``ts`` too far ahead). Pure CPU; never blocks.
    """
    if now_ms is None:
        now_ms = _now_ms()
    if ts is None:
        ts = now_ms
    data = dagcbor_encode(
        {
            "v": RECORD_VERSION,
            "author": key.did,
            "namespace": namespace,
            "thread": thread,
            "kind": kind,
            "body": body,
            "parents": list(parents),
            "clock": clock,
            "ts": ts,
        }
    )
    _check_size(data, limits)
    rec = _decode_record(data)
    _check_limits(rec, limits, now_ms)
    cid = cid_for_dagcbor(data)
    return SignedRecord(cid, data, key.sign(cid.raw), rec)


# --- wire and views ----------------------------------------------------------------


def record_to_wire(rec: StoredRecord | SignedRecord) -> dict[str, object]:
    """The wire item of a record: ``{"cid": CID, "data": bytes, "sig": bytes}``.

    ``data`` is the exact DAG-CBOR bytes (a byte string inside the page, never
    re-encoded), so the receiver hashes and verifies exactly what the author
    signed. Encodes with both DAG-CBOR and DAG-JSON. Never raises.
    """
    cid = rec.cid if isinstance(rec, SignedRecord) else CID(rec.cid)
    return {"cid": cid, "data": rec.data, "sig": rec.sig}


def _wire_fields(obj: object) -> tuple[CID, bytes, bytes]:
    """The ``(cid, data, sig)`` of a decoded wire item; Malformed for another shape."""
    if type(obj) is not dict:
        raise Malformed("a record item is a map {cid, data, sig}")
    if obj.keys() != _WIRE_KEYS:
        raise Malformed(
            f"a record item has exactly the keys cid, data and sig; got {sorted(map(str, obj))}"
        )
    cid = obj["cid"]
    data = obj["data"]
    sig = obj["sig"]
    if type(cid) is not CID:
        raise Malformed("a record item's cid is a CID link")
    if type(data) is not bytes or type(sig) is not bytes:
        raise Malformed("a record item's data and sig are byte strings")
    return cid, data, sig


def record_from_wire(
    obj: object, *, limits: Limits = DEFAULT_LIMITS, now_ms: int | None = None
) -> SignedRecord:
    """Parse and verify one wire item (as :func:`record_to_wire` makes, decoded).

    ``obj`` must be a map with exactly the keys ``cid`` (a CID), ``data`` and ``sig``
    (byte strings); otherwise ``Malformed``. Then :func:`verify_record` runs with
    ``expected_cid`` = the item's ``cid`` (a mismatch is ``RecordInvalid``) and
    raises as documented there. Pure CPU.
    """
    cid, data, sig = _wire_fields(obj)
    return verify_record(data, sig, limits=limits, now_ms=now_ms, expected_cid=cid)


_SIGNATURE_FAILED = "the signature does not verify for this content and key"


class PreparedRecords:
    """Wire items that went through every stage of the pipeline but the Ed25519 check.

    Made by :func:`prepare_wire_items`. ``signature_jobs`` holds one
    ``(public_key, cid_bytes, signature)`` triple per item that passed so far, in
    item order: check them with :func:`~fedpeer.identity.keys.verify_batch` (in
    threads or worker processes, in slices, in any order) and hand the verdicts,
    in job order, to :meth:`finish`. Nothing in here counts as verified before
    :meth:`finish` says so.
    """

    __slots__ = ("_outcomes", "_pending", "signature_jobs")

    def __init__(self) -> None:
        self._outcomes: list[SignedRecord | FedpeerError] = []
        self._pending: list[tuple[int, FedpeerError | None]] = []
        self.signature_jobs: list[tuple[bytes, bytes, bytes]] = []
        """``(public_key, message, signature)`` per item still pending, in item order."""

    def _add(self, item: object, limits: Limits, now_ms: int) -> None:
        try:
            cid, data, sig = _wire_fields(item)
            signed, public_key, limit_error = _prepass(data, sig, limits, now_ms, cid)
        except FedpeerError as exc:
            self._outcomes.append(exc)
            return
        self._pending.append((len(self._outcomes), limit_error))
        self._outcomes.append(signed)
        self.signature_jobs.append((public_key, signed.cid.raw, sig))

    def finish(self, verdicts: Sequence[bool]) -> list[SignedRecord | FedpeerError]:
        """The verdict per item, in item order: the verified record or its error.

        ``verdicts[i]`` must be the signature verdict of ``signature_jobs[i]``
        (``ValueError`` when the counts differ). An item's error is exactly what
        :func:`record_from_wire` would raise for it (same class, same message):
        the first failing stage, ``BAD_SIGNATURE`` before any limit error. Pure.
        """
        if len(verdicts) != len(self.signature_jobs):
            raise ValueError(
                f"{len(verdicts)} verdicts for {len(self.signature_jobs)} signature jobs"
            )
        out = list(self._outcomes)
        for (i, limit_error), ok in zip(self._pending, verdicts, strict=True):
            if not ok:
                out[i] = BadSignature(_SIGNATURE_FAILED)
            elif limit_error is not None:
                out[i] = limit_error
        return out


def prepare_wire_items(
    items: Iterable[object], *, limits: Limits = DEFAULT_LIMITS, now_ms: int | None = None
) -> PreparedRecords:
    """The GIL-bound part of :func:`record_from_wire` for many wire items.

    Runs every stage but the Ed25519 check itself (wire shape, size, strict
    decode, shape, CID, author key, signature length, limits) on each item and
    returns the :class:`PreparedRecords` whose ``signature_jobs`` are what is
    left to check. ``now_ms`` (None: the wall clock, read once) is the clock for
    every item. Errors are kept per item, never raised. Pure CPU.
    """
    now = _now_ms() if now_ms is None else now_ms
    prepared = PreparedRecords()
    for item in items:
        prepared._add(item, limits, now)
    return prepared


def verify_wire_items(
    items: Iterable[object], *, limits: Limits = DEFAULT_LIMITS, now_ms: int | None = None
) -> list[SignedRecord | FedpeerError]:
    """:func:`record_from_wire` for many items: a verdict per item, nothing raised.

    Each result is the :class:`SignedRecord` that :func:`record_from_wire` would
    return for the item, or the error (same class and message) it would raise;
    ``now_ms`` as in :func:`prepare_wire_items`. The same pipeline in two passes
    (:func:`prepare_wire_items`, then :func:`~fedpeer.identity.keys.verify_batch`
    and :meth:`PreparedRecords.finish`). Pure CPU.
    """
    prepared = prepare_wire_items(items, limits=limits, now_ms=now_ms)
    return prepared.finish(verify_batch(prepared.signature_jobs))


def record_to_json_view(rec: SignedRecord | StoredRecord) -> dict[str, object]:
    """A JSON-ready view of a record, for the HTTP JSON views and the CLI.

    ``{"cid": str, "v", "author", "namespace", "thread", "kind", "body", "parents":
    [str], "clock", "ts", "sig": base64url}``: CIDs as their base32 text, ``body``
    in the DAG-JSON data model (bytes as ``{"/": {"bytes": ...}}``, links as
    ``{"/": "b..."}``), so the result is plain JSON (``json.dumps`` works).

    A :class:`~fedpeer.store.base.StoredRecord` is trusted (it was verified on the
    way in): it is decoded, not re-verified; bytes that are not a record raise
    ``Malformed``, ``NonCanonical`` or ``RecordInvalid``. Pure CPU.
    """
    if isinstance(rec, SignedRecord):
        cid, sig, content = rec.cid, rec.sig, rec.record
    else:
        cid, sig, content = CID(rec.cid), rec.sig, _decode_record(rec.data)
    body: object = json.loads(dagjson_encode(content.body))
    return {
        "cid": str(cid),
        "v": content.v,
        "author": content.author,
        "namespace": content.namespace,
        "thread": content.thread,
        "kind": content.kind,
        "body": body,
        "parents": [str(p) for p in content.parents],
        "clock": content.clock,
        "ts": content.ts,
        "sig": b64url_encode(sig),
    }


def record_from_stored(rec: StoredRecord) -> SignedRecord:
    """A stored record as a :class:`SignedRecord`, decoded but not re-verified.

    Trusts the store (every entry point verified the record before storing it).
    Bytes that are not a record raise ``Malformed``, ``NonCanonical`` or
    ``RecordInvalid``. Pure CPU.
    """
    return SignedRecord(
        cid=CID(rec.cid), data=rec.data, sig=rec.sig, record=_decode_record(rec.data)
    )
