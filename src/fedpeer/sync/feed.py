"""The changes feed, sans-I/O: cursors, page building, the page wire form.

Theory of operation
-------------------
A reader pages through a store's record log with ``since=CURSOR``. A cursor is
``(epoch, seq, fingerprint)``: the store's epoch (32 lowercase hex chars,
random at creation), the highest local sequence number the reader has been
*shown past*, and a fingerprint of the record this store holds at that seq
(the first 8 bytes of HMAC-SHA-256 over its binary CID, keyed with the store's
secret ``cursor_key``; 8 zero bytes at seq 0). It is opaque to readers.
:meth:`Cursor.encode` gives, for the current format (version 2)::

    base64url(0x02 || epoch (16 bytes) || seq (int64, big-endian) || fingerprint (8 bytes))

44 characters, no padding. Version 1 (``0x01 || epoch || seq``, 34 characters)
is what nodes before the fingerprint issued; it still decodes (see below).
Decoding is strict (exact length for the version, alphabet, version, canonical
spelling, seq >= 0, a zero fingerprint at seq 0) and every failure is
``CURSOR_INVALID``.

Why the fingerprint: seqs are local and contiguous, so a store that goes back
in time (an older copy of ``store.sqlite3`` restored, or the WAL tail lost in
a power cut) hands out the same seqs again to *new* records. A reader's cursor
past the restore point would then silently skip them. The fingerprint pins the
cursor to the record it was issued after: resolving a cursor looks up the
record at its seq (one primary-key lookup, :meth:`Store.cid_at`) and compares.
The cursor moves past records the reader may not see, so its fingerprint is
often of such a record: keyed with a secret only the store knows, it cannot be
checked against a guessed CID, so it tells the reader nothing about them
(the seq itself says how many records were scanned, as before).

:func:`resolve_since` turns the reader's cursor into the ``since_seq`` to scan
from; :func:`resolve_cursor` is the same against a live store. A well-formed
cursor is refused when:

* its epoch is another one (another store, or this one before a wipe):
  ``CURSOR_RESET``;
* (version 2) its seq is past the head, or the record at its seq has another
  fingerprint: the store was rolled back or restored, ``CURSOR_RESET``. (Not
  ``CURSOR_FROM_FUTURE``: a version 2 cursor *proves* it was issued by this
  store, so a seq past the head can only mean the store lost records; both
  codes tell the reader to start again without a cursor, and clients handle
  them alike);
* (version 1, no fingerprint) its seq is past the head: ``CURSOR_FROM_FUTURE``,
  as before. A version 1 cursor at or below the head is accepted without a
  fingerprint check, so pairs persisted by an older fedpeer carry on without a
  full re-pull; the next page's cursor is version 2 and protected.

The reader then starts again without a cursor; records dedupe by CID, so a
resync costs a re-download, never a duplicate.

:func:`build_page` turns one store :class:`~fedpeer.store.base.ChangesPage` into
what the reader gets: the records it may see, and a next cursor at the page's
``last_seq``, the highest seq the store *scanned* (fingerprinted with the
page's ``last_cid``). So the cursor moves past
records the reader may not see (consent) or that the filter skipped, and a
reader with no visible records never stalls. ``has_more`` is ``last_seq <
head_seq``. Following ``next_cursor`` from no cursor until ``has_more`` is false
yields every visible record once, in seq order.

The CBOR page has fast paths on both ends (:func:`encode_page_cbor`,
:func:`decode_page_cbor`): a page is a fixed shape around byte strings the
store already holds, so its canonical bytes are written by concatenation
(precomputed key and item heads around each record's ``cid``, ``sig`` and
``data``) instead of by the general encoder, byte for byte the same.

Pure functions and frozen values; no I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import struct
from collections.abc import Callable, Sequence

import attrs

from fedpeer.errors import CursorFromFuture, CursorInvalid, CursorReset, PageInvalid
from fedpeer.identity._cid import _trusted as _trusted_cid
from fedpeer.identity._dagcbor import head, parse_unchecked
from fedpeer.identity.canonical import CID, dagcbor_decode
from fedpeer.store.base import ChangeFilter, ChangesPage, Store, StoredRecord, take_within

from .records import SignedRecord, record_to_wire

__all__ = [
    "CURSOR_VERSION",
    "FINGERPRINT_LEN",
    "MAX_CURSOR_LEN",
    "MAX_SEQ",
    "Cursor",
    "FeedPage",
    "WirePage",
    "build_page",
    "cbor_items_exceed",
    "changes_in",
    "cursor_at",
    "decode_page_cbor",
    "decode_page_cbor_fast",
    "encode_page_cbor",
    "everything",
    "fingerprint",
    "page_cursor",
    "page_from_wire",
    "page_to_wire",
    "resolve_cursor",
    "resolve_since",
]

CURSOR_VERSION = 2
"""The cursor format version this code issues (first byte of the encoded form).

Version 1 cursors (no fingerprint) still decode; see the module docstring."""

FINGERPRINT_LEN = 8
"""Bytes of a cursor's record fingerprint (the first bytes of HMAC-SHA-256(key, CID))."""

_ZERO_FP = bytes(FINGERPRINT_LEN)

MAX_SEQ = 2**63 - 1
"""Largest sequence number a cursor can carry."""

MAX_CURSOR_LEN = 256
"""Longest ``next_cursor`` text :func:`page_from_wire` accepts from a peer."""

_EPOCH_RE = re.compile(r"[0-9a-f]{32}")
# version, epoch, seq (signed: a negative is garbage) [, fingerprint]
_CURSOR_V1 = struct.Struct(">B16sq")
_CURSOR_V2 = struct.Struct(">B16sq8s")
_CURSOR_TEXT_LENS = {34: 1, 44: 2}  # base64url of 25 / 33 bytes, no padding -> version
_CURSOR_TEXT_RE = re.compile(r"[A-Za-z0-9_-]+")
_PAGE_KEYS = frozenset(("records", "next_cursor", "has_more"))


def _check_epoch(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if type(value) is not str or _EPOCH_RE.fullmatch(value) is None:
        raise CursorInvalid("a cursor's epoch is 32 lowercase hex characters")


def _check_seq(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if type(value) is not int or not 0 <= value <= MAX_SEQ:
        raise CursorInvalid("a cursor's seq is an integer in 0..2**63-1")


def _check_fingerprint(
    instance: object, attribute: attrs.Attribute[bytes | None], value: object
) -> None:
    if value is None:
        return
    if type(value) is not bytes or len(value) != FINGERPRINT_LEN:
        raise CursorInvalid(f"a cursor's fingerprint is {FINGERPRINT_LEN} bytes")
    seq = getattr(instance, "seq", None)
    if seq == 0 and value != _ZERO_FP:
        raise CursorInvalid("a cursor at seq 0 has a zero fingerprint")


def fingerprint(cid: bytes, *, key: bytes) -> bytes:
    """The cursor fingerprint of the record with binary CID ``cid`` in the store
    whose secret ``cursor_key`` is ``key``: ``HMAC-SHA-256(key, cid)[:8]``. Pure."""
    return hmac.new(key, cid, hashlib.sha256).digest()[:FINGERPRINT_LEN]


@attrs.frozen
class Cursor:
    """A position in one store's feed: the store ``epoch``, a ``seq`` and the
    ``fingerprint`` of the record at that seq.

    ``fingerprint`` None is a version 1 cursor (what older nodes issued; no
    rollback check); 8 bytes is version 2 (8 zero bytes at seq 0). Build
    version 2 cursors with :func:`cursor_at`. Construction checks every field
    (``epoch`` 32 lowercase hex chars, ``seq`` an int in ``0..2**63-1``, the
    fingerprint's length, zero at seq 0) and raises ``CursorInvalid`` otherwise.
    """

    epoch: str = attrs.field(validator=_check_epoch)
    seq: int = attrs.field(validator=_check_seq)
    fingerprint: bytes | None = attrs.field(default=None, validator=_check_fingerprint)

    @property
    def version(self) -> int:
        """2 with a fingerprint, 1 without."""
        return 1 if self.fingerprint is None else 2

    def encode(self) -> str:
        """The opaque, versioned text form (44 base64url characters for version 2,
        34 for version 1). Never raises."""
        epoch = bytes.fromhex(self.epoch)
        if self.fingerprint is None:
            raw = _CURSOR_V1.pack(1, epoch, self.seq)
        else:
            raw = _CURSOR_V2.pack(2, epoch, self.seq, self.fingerprint)
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        """Parse a cursor made by :meth:`encode` (version 2, or version 1).

        Raises ``CursorInvalid`` for anything else: not a string, wrong length or
        alphabet, padding, a format version that does not match the length, a
        negative seq, a non-zero fingerprint at seq 0, or a non-canonical
        spelling of valid bytes. Never raises anything but ``CursorInvalid``.
        """
        if type(text) is not str or len(text) not in _CURSOR_TEXT_LENS:
            raise CursorInvalid(
                "this is not a cursor issued by a fedpeer node; pass a `next_cursor` "
                "exactly as a page gave it, or none to start from the beginning"
            )
        if _CURSOR_TEXT_RE.fullmatch(text) is None:
            raise CursorInvalid("a cursor is base64url text without padding")
        try:
            raw = base64.urlsafe_b64decode(text + "==")
        except (binascii.Error, ValueError):  # pragma: no cover - the regex rules it out
            raise CursorInvalid("a cursor is base64url text without padding") from None
        expected = _CURSOR_TEXT_LENS[len(text)]
        if raw[0] != expected:
            raise CursorInvalid(
                f"cursor format version {raw[0]} is not supported; start again without it"
            )
        fp: bytes | None = None
        if expected == 1:
            _version, epoch, seq = _CURSOR_V1.unpack(raw)
        else:
            _version, epoch, seq, fp = _CURSOR_V2.unpack(raw)
        cursor = cls(epoch.hex(), seq, fp)  # CursorInvalid for a negative seq, bad fp
        if cursor.encode() != text:  # unused trailing bits set: a second spelling
            raise CursorInvalid("the cursor is not in canonical form")
        return cursor


def cursor_at(epoch: str, seq: int, cid: bytes | None, *, key: bytes) -> Cursor:
    """The version 2 cursor after the record ``cid`` at ``seq`` of the store with
    ``epoch`` and cursor key ``key`` (``cid`` is ignored at seq 0: zero
    fingerprint).

    With ``cid`` None at a seq above 0 the fingerprint is unknown and the result
    is a version 1 cursor (accepted without a rollback check). Raises
    ``CursorInvalid`` for a bad epoch or seq. Pure.
    """
    if seq == 0:
        return Cursor(epoch, 0, _ZERO_FP)
    return Cursor(epoch, seq, None if cid is None else fingerprint(cid, key=key))


def resolve_since(
    cursor: str | None, *, epoch: str, head_seq: int, fingerprint_at_seq: bytes | None = None
) -> int:
    """The ``since_seq`` to scan from for a reader's ``cursor``.

    ``None`` (no cursor: from the beginning) gives 0. Otherwise the cursor must be
    one this store issued and still agrees with: ``fingerprint_at_seq`` is the
    :func:`fingerprint` of the record the store holds at the cursor's seq (None
    when it holds none; :func:`resolve_cursor` works it out). Raises
    ``CursorInvalid`` (not a cursor; an empty string too), ``CursorReset``
    (another ``epoch``; or, for a version 2 cursor, a seq past ``head_seq`` or a
    record with another fingerprint at its seq: the store was rolled back or
    restored) or ``CursorFromFuture`` (a version 1 cursor past ``head_seq``).
    The reader then restarts without a cursor. Pure.
    """
    if cursor is None:
        return 0
    parsed = Cursor.decode(cursor)
    if parsed.epoch != epoch:
        raise CursorReset(
            "the cursor was issued by another store (or this one before a wipe); "
            "start again without a cursor"
        )
    if parsed.fingerprint is None:
        if parsed.seq > head_seq:
            raise CursorFromFuture(
                f"the cursor is at seq {parsed.seq} but this store's head is {head_seq}; "
                "the store was restored from an older copy, start again without a cursor"
            )
        return parsed.seq
    if parsed.seq == 0:
        return 0
    if parsed.seq > head_seq:
        raise CursorReset(
            f"the cursor is at seq {parsed.seq} but this store's head is {head_seq}: the "
            "store was rolled back or restored from an older copy; start again without a "
            "cursor (records dedupe by CID)"
        )
    if fingerprint_at_seq is None or not hmac.compare_digest(
        fingerprint_at_seq, parsed.fingerprint
    ):
        raise CursorReset(
            f"the record at seq {parsed.seq} is not the one this cursor was issued after: "
            "the store was rolled back or restored from an older copy; start again "
            "without a cursor (records dedupe by CID)"
        )
    return parsed.seq


async def changes_in(
    store: Store,
    since_seq: int,
    limit: int,
    filters: Sequence[ChangeFilter] | None,
    *,
    max_bytes: int | None = None,
) -> ChangesPage:
    """:meth:`Store.changes` over the union of ``filters`` (None: every record;
    ``()``: none), as one page: the records in seq order, at most ``limit`` and
    within ``max_bytes`` as one scan would give.

    This is how a reader's consent is pushed into the scan (the filters of
    :meth:`~fedpeer.consent.grants.ConsentView.wake_filters`): a page then only
    counts the records the reader may see, so where it ends, ``has_more`` and the
    cursor never depend on records it may not see (a scan with the request's own
    filter, filtered afterwards, ends on them). Each filter's scan is complete up
    to its ``last_seq``; the page ends at the lowest of them, a position that is
    a record the reader may see, a scan-window end or the head. One store scan
    per filter.
    """
    if filters is None:
        return await store.changes(since_seq, limit, None, max_bytes=max_bytes)
    if len(filters) == 1:
        return await store.changes(since_seq, limit, filters[0], max_bytes=max_bytes)
    if not filters:
        head = await store.head_seq()
        last = max(since_seq, head)
        return ChangesPage((), last, head, await store.cid_at(last))
    pages = [await store.changes(since_seq, limit, f, max_bytes=max_bytes) for f in filters]
    end = min(p.last_seq for p in pages)
    head = max(p.head_seq for p in pages)
    merged = sorted(
        {r.seq: r for p in pages for r in p.records if r.seq <= end}.values(),
        key=lambda r: r.seq,
    )
    taken: tuple[StoredRecord, ...] = tuple(merged[:limit])
    if max_bytes is not None and taken:
        taken = take_within(taken, max_bytes)[0]
    if len(taken) < len(merged):
        end = taken[-1].seq  # cut by the limit or the budget: at a record it may see
    if taken and taken[-1].seq == end:
        return ChangesPage(taken, end, head, taken[-1].cid)
    return ChangesPage(taken, end, head, await store.cid_at(end))


async def resolve_cursor(store: Store, cursor: str | None) -> int:
    """:func:`resolve_since` against ``store``: reads its head and, for a version 2
    cursor, the CID at the cursor's seq (one indexed lookup), fingerprinted with
    the store's ``cursor_key``. Same errors, plus the store's own
    (``StoreError``...). The one awaiting function here; it does no I/O of its own.
    """
    if cursor is None:
        return 0
    parsed = Cursor.decode(cursor)
    head = await store.head_seq()
    fp: bytes | None = None
    if parsed.fingerprint is not None and parsed.epoch == store.epoch and 0 < parsed.seq <= head:
        cid = await store.cid_at(parsed.seq)
        fp = None if cid is None else fingerprint(cid, key=store.cursor_key)
    return resolve_since(cursor, epoch=store.epoch, head_seq=head, fingerprint_at_seq=fp)


def everything(record: StoredRecord) -> bool:
    """The visibility predicate that shows every record (the default)."""
    return True


@attrs.frozen
class FeedPage:
    """One page of the feed as served: visible records, next cursor, more to come."""

    records: tuple[StoredRecord, ...]
    next_cursor: str
    has_more: bool


def build_page(
    page: ChangesPage,
    *,
    epoch: str,
    key: bytes,
    visible: Callable[[StoredRecord], bool] = everything,
) -> FeedPage:
    """The feed page for a store scan ``page`` of the store with ``epoch`` and
    cursor key ``key``.

    Keeps the records for which ``visible`` is true (in order); ``next_cursor``
    is :func:`page_cursor`, so it moves past the records the reader may not
    see; ``has_more`` is ``page.last_seq < page.head_seq``. Raises
    ``CursorInvalid`` only if ``epoch`` is not 32 lowercase hex characters;
    exceptions from ``visible`` propagate. Pure.
    """
    records = tuple(r for r in page.records if visible(r))
    return FeedPage(
        records=records,
        next_cursor=page_cursor(page, epoch=epoch, key=key).encode(),
        has_more=page.last_seq < page.head_seq,
    )


def page_cursor(page: ChangesPage, *, epoch: str, key: bytes) -> Cursor:
    """The cursor after a store scan: ``(epoch, page.last_seq)`` fingerprinted
    with the record at ``last_seq`` (the last scanned record when it is that one,
    else ``page.last_cid``); version 1 only if neither is known. Pure."""
    cid = page.last_cid
    if page.records and page.records[-1].seq == page.last_seq:
        cid = page.records[-1].cid
    return cursor_at(epoch, page.last_seq, cid, key=key)


def page_to_wire(page: FeedPage) -> dict[str, object]:
    """The wire form of a page, for DAG-CBOR or DAG-JSON encoding.

    ``{"records": [{"cid": CID, "data": bytes, "sig": bytes}, ...], "next_cursor":
    str, "has_more": bool}``. Never raises.
    """
    return {
        "records": [record_to_wire(r) for r in page.records],
        "next_cursor": page.next_cursor,
        "has_more": page.has_more,
    }


@attrs.frozen
class WirePage:
    """A page as a client received it: shape checked, records NOT verified.

    ``records`` are the raw wire items (pass each to
    :func:`~fedpeer.sync.records.record_from_wire`); ``next_cursor`` is opaque.
    """

    records: tuple[object, ...]
    next_cursor: str
    has_more: bool


def page_from_wire(obj: object) -> WirePage:
    """Check the shape of a decoded page from a peer; do not verify its records.

    ``obj`` must be a map with exactly the keys ``records`` (a list), ``next_cursor``
    (a non-empty string of at most :data:`MAX_CURSOR_LEN` printable ASCII characters;
    otherwise opaque) and ``has_more`` (a bool). Raises ``PageInvalid`` otherwise
    (the peer broke the feed protocol). Pure.
    """
    if type(obj) is not dict:
        raise PageInvalid("a feed page is a map {records, next_cursor, has_more}")
    if obj.keys() != _PAGE_KEYS:
        raise PageInvalid(
            "a feed page has exactly the keys records, next_cursor and has_more; "
            f"got {sorted(map(str, obj))[:10]}"
        )
    records = obj["records"]
    next_cursor = obj["next_cursor"]
    has_more = obj["has_more"]
    if type(records) is not list:
        raise PageInvalid("a feed page's records is a list")
    if (
        type(next_cursor) is not str
        or not 1 <= len(next_cursor) <= MAX_CURSOR_LEN
        or not next_cursor.isascii()
        or not next_cursor.isprintable()
    ):
        raise PageInvalid(
            f"a feed page's next_cursor is 1 to {MAX_CURSOR_LEN} printable ASCII characters"
        )
    if type(has_more) is not bool:
        raise PageInvalid("a feed page's has_more is a boolean")
    return WirePage(records=tuple(records), next_cursor=next_cursor, has_more=has_more)


# --- the CBOR page, fast ------------------------------------------------------------
#
# The canonical key order (length first, then bytewise) of a page is records,
# has_more, next_cursor; of an item cid, sig, data. A page is therefore:
#   a3 67"records" <array head> items... 68"has_more" f4|f5 6b"next_cursor" <text>
# and an item:
#   a3 63"cid" d8 2a <bytes head> 00 <cid> 63"sig" <bytes head> <sig> 64"data" <bytes head> <data>

_PAGE_START = b"\xa3\x67records"
_HAS_MORE = (b"\x68has_more\xf4\x6bnext_cursor", b"\x68has_more\xf5\x6bnext_cursor")
_ITEM_CID = b"\xa3\x63cid\xd8\x2a"
_ITEM_SIG = b"\x63sig"
_ITEM_DATA = b"\x64data"
_CID_HEADS = {n: head(2, n + 1) + b"\x00" for n in range(34, 40)}  # record ids are 36 bytes
_SIG_HEAD = head(2, 64)


def _page_cbor(
    triples: list[tuple[bytes, bytes, bytes]], next_cursor: str, has_more: bool
) -> bytes:
    """The canonical DAG-CBOR page for ``(cid_raw, data, sig)`` triples."""
    parts: list[bytes] = [_PAGE_START, head(4, len(triples))]
    add = parts.extend
    cid_heads = _CID_HEADS
    for cid, data, sig in triples:
        n = len(sig)
        add(
            (
                _ITEM_CID,
                cid_heads.get(len(cid)) or head(2, len(cid) + 1) + b"\x00",
                cid,
                _ITEM_SIG,
                _SIG_HEAD if n == 64 else head(2, n),
                sig,
                _ITEM_DATA,
                head(2, len(data)),
                data,
            )
        )
    cursor = next_cursor.encode()
    parts += (_HAS_MORE[bool(has_more)], head(3, len(cursor)), cursor)
    return b"".join(parts)


def encode_page_cbor(
    records: Sequence[StoredRecord | SignedRecord], next_cursor: str, has_more: bool
) -> bytes:
    """The DAG-CBOR bytes of a page: exactly ``dagcbor_encode(page_to_wire(page))``.

    ``records`` are stored or signed records (their ``cid`` a valid record id, as
    the store guarantees), ``next_cursor`` the page's cursor text, ``has_more``
    its flag. Written by concatenating fixed heads and each record's exact
    bytes, with no general encoder pass; byte-identical to the general path
    (pinned by a differential test). Never raises for valid records. Pure CPU.
    """
    triples = [(r.cid.raw if isinstance(r.cid, CID) else r.cid, r.data, r.sig) for r in records]
    return _page_cbor(triples, next_cursor, has_more)


_ITEM_KEYS = frozenset(("cid", "data", "sig"))


def _wire_page_cbor(obj: object) -> bytes | None:
    """The canonical bytes of a decoded page of the exact wire shape, else None."""
    if type(obj) is not dict or obj.keys() != _PAGE_KEYS:
        return None
    records = obj["records"]
    next_cursor = obj["next_cursor"]
    has_more = obj["has_more"]
    if type(records) is not list or type(next_cursor) is not str or type(has_more) is not bool:
        return None
    triples: list[tuple[bytes, bytes, bytes]] = []
    keys = _ITEM_KEYS
    for item in records:
        if type(item) is not dict or item.keys() != keys:
            return None
        cid = item["cid"]
        data = item["data"]
        sig = item["sig"]
        if type(cid) is not CID or type(data) is not bytes or type(sig) is not bytes:
            return None
        triples.append((cid.raw, data, sig))
    return _page_cbor(triples, next_cursor, has_more)


_ITEM_START = b"\xa3\x63cid\xd8\x2a\x58\x25\x00\x01\x71\x12\x20"  # ... 0x00 + record-id prefix
_ITEM_SIG_64 = b"\x63sig\x58\x40"  # "sig": bytes(64)
_ITEM_MIN = len(_ITEM_START) + 32 + len(_ITEM_SIG_64) + 64 + len(_ITEM_DATA) + 1
_HEAD_MIN = {24: 24, 25: 0x100, 26: 0x10000, 27: 0x100000000}  # argument sizes' minimums


def _head_at(data: bytes, i: int, major: int) -> tuple[int, int] | None:
    """``(argument, next offset)`` of the shortest-form head of ``major`` at ``i``, else None."""
    if i >= len(data):
        return None
    b = data[i]
    if b >> 5 != major:
        return None
    info = b & 0x1F
    if info < 24:
        return info, i + 1
    if info > 27:
        return None
    size = 1 << (info - 24)
    arg = int.from_bytes(data[i + 1 : i + 1 + size], "big")
    if i + 1 + size > len(data) or arg < _HEAD_MIN[info]:
        return None
    return arg, i + 1 + size


def _strict_page(data: bytes) -> dict[str, object] | None:
    """The value of a canonical page of the usual shape, parsed in one pass; else None.

    The usual shape: every item's cid a record id (CIDv1, dag-cbor, sha2-256) and
    its sig 64 bytes. Reads the bytes in the one canonical layout (fixed keys in
    canonical order, shortest heads, definite lengths, nothing after), so what it
    accepts is exactly the canonical encoding of the value it returns; anything
    else returns None and the general strict decoder decides.
    """
    if not data.startswith(_PAGE_START):
        return None
    head = _head_at(data, len(_PAGE_START), 4)
    if head is None:
        return None
    count, i = head
    end = len(data)
    if count * _ITEM_MIN > end - i:
        return None
    records: list[object] = []
    append = records.append
    trusted = _trusted_cid
    for _ in range(count):
        if data[i : i + 14] != _ITEM_START or data[i + 46 : i + 52] != _ITEM_SIG_64:
            return None
        cid = data[i + 10 : i + 46]
        sig = data[i + 52 : i + 116]
        if data[i + 116 : i + 121] != _ITEM_DATA:
            return None
        head = _head_at(data, i + 121, 2)
        if head is None:
            return None
        n, i = head
        if i + n > end:
            return None
        append({"cid": trusted(cid), "sig": sig, "data": data[i : i + n]})
        i += n
    flag = data[i : i + 22]
    if flag == _HAS_MORE[1]:
        has_more = True
    elif flag == _HAS_MORE[0]:
        has_more = False
    else:
        return None
    head = _head_at(data, i + 22, 3)
    if head is None:
        return None
    n, i = head
    if i + n != end:
        return None
    try:
        cursor = data[i:end].decode()
    except UnicodeDecodeError:
        return None
    return {"records": records, "has_more": has_more, "next_cursor": cursor}


def cbor_items_exceed(data: bytes, budget: int) -> bool:
    """Whether the CBOR in ``data`` holds more than ``budget`` data items (every
    head counts: a map, each key and value, a tag and its content...), counted
    on the heads alone, without building a value, stopping at ``budget``: a
    page of ``n`` records holds about ``8 n + 7``, and a "page" of a million
    empty lists is refused before it costs a second and 100 MB to decode. An
    encoding it cannot walk (indefinite lengths, reserved values, truncation)
    counts as within: the strict decoder names the problem. Pure."""
    i, seen, pending, size = 0, 0, 1, len(data)
    while pending and i < size:
        pending -= 1
        seen += 1
        if seen > budget:
            return True
        initial = data[i]
        major, info = initial >> 5, initial & 31
        i += 1
        if info < 24:
            arg = info
        elif info <= 27:
            width = 1 << (info - 24)
            arg = int.from_bytes(data[i : i + width], "big")
            i += width
        else:
            return False
        if major in (2, 3):
            i += arg
        elif major == 4:
            pending += arg
        elif major == 5:
            pending += 2 * arg
        elif major == 6:
            pending += 1
    return False


def decode_page_cbor_fast(data: bytes) -> object | None:
    """The fast path of :func:`decode_page_cbor` alone: the decoded page when
    ``data`` is a canonical page of the wire shape, else None (then
    :func:`decode_page_cbor` gives the verdict, at the general decoder's cost).
    Pure CPU."""
    return _strict_page(data) if type(data) is bytes and data else None


def decode_page_cbor(data: bytes) -> object:
    """Strict DAG-CBOR decode of a feed page: exactly :func:`dagcbor_decode`.

    Same value and same errors (``Malformed``, ``NonCanonical``) as
    ``dagcbor_decode(data)`` for any input. A body of the page's wire shape is
    checked for canonical form by writing the page's canonical bytes with the
    fast page encoder and comparing, instead of re-encoding the whole value;
    anything else (another shape, different bytes, an error) is decoded by the
    general strict decoder, which gives the verdict. Records inside are NOT
    verified (that is :func:`~fedpeer.sync.records.record_from_wire`'s job).
    Pure CPU.
    """
    if type(data) is bytes and data:
        fast = _strict_page(data)
        if fast is not None:
            return fast
        try:
            value = parse_unchecked(data)
            if _wire_page_cbor(value) == data:
                return value
        except Exception:  # noqa: S110 - the general decoder below names any problem
            pass
    return dagcbor_decode(data)
