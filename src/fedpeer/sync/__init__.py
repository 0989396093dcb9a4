"""fedpeer.sync: records, the changes feed and cursors (sans-I/O core), and the pullers.

Records (:mod:`fedpeer.sync.records`): build, sign and verify the DAG-CBOR
records nodes exchange, through one verification pipeline. The feed
(:mod:`fedpeer.sync.feed`): opaque cursors, page building and the page wire form.
Pairs (:mod:`fedpeer.sync.pairs`): the pair values and their state table.
:class:`SyncOptions`, :class:`Backoff` (:mod:`fedpeer.sync.options`,
:mod:`fedpeer.sync.backoff`): how pullers behave. :class:`PairManager`
(:mod:`fedpeer.sync.manager`): a node's pairs and their pullers (the I/O side,
on anyio; imported on first use).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .backoff import DEFAULT_BACKOFF as DEFAULT_BACKOFF
from .backoff import Backoff as Backoff
from .feed import CURSOR_VERSION as CURSOR_VERSION
from .feed import FINGERPRINT_LEN as FINGERPRINT_LEN
from .feed import MAX_CURSOR_LEN as MAX_CURSOR_LEN
from .feed import MAX_SEQ as MAX_SEQ
from .feed import Cursor as Cursor
from .feed import FeedPage as FeedPage
from .feed import WirePage as WirePage
from .feed import build_page as build_page
from .feed import cbor_items_exceed as cbor_items_exceed
from .feed import changes_in as changes_in
from .feed import cursor_at as cursor_at
from .feed import decode_page_cbor as decode_page_cbor
from .feed import decode_page_cbor_fast as decode_page_cbor_fast
from .feed import encode_page_cbor as encode_page_cbor
from .feed import everything as everything
from .feed import fingerprint as fingerprint
from .feed import page_cursor as page_cursor
from .feed import page_from_wire as page_from_wire
from .feed import page_to_wire as page_to_wire
from .feed import resolve_cursor as resolve_cursor
from .feed import resolve_since as resolve_since
from .options import PageSource as PageSource
from .options import SyncEvent as SyncEvent
from .options import SyncOptions as SyncOptions
from .pairs import Pair as Pair
from .pairs import PairFilter as PairFilter
from .pairs import PairState as PairState
from .records import DEFAULT_LIMITS as DEFAULT_LIMITS
from .records import MAX_SAFE_INT as MAX_SAFE_INT
from .records import NAME_PATTERN as NAME_PATTERN
from .records import NAME_RE as NAME_RE
from .records import RECORD_VERSION as RECORD_VERSION
from .records import SIGNATURE_BYTES as SIGNATURE_BYTES
from .records import Limits as Limits
from .records import PreparedRecords as PreparedRecords
from .records import Record as Record
from .records import SignedRecord as SignedRecord
from .records import build_record as build_record
from .records import prepare_wire_items as prepare_wire_items
from .records import record_from_stored as record_from_stored
from .records import record_from_wire as record_from_wire
from .records import record_to_json_view as record_to_json_view
from .records import record_to_wire as record_to_wire
from .records import verify_record as verify_record
from .records import verify_wire_items as verify_wire_items

if TYPE_CHECKING:
    from .manager import PairManager as PairManager


def __getattr__(name: str) -> object:
    # PairManager runs the pullers (anyio, worker processes): loaded on first use, so
    # the sans-I/O core above stays cheap to import.
    if name == "PairManager":
        from .manager import PairManager

        return PairManager
    raise AttributeError(f"module 'fedpeer.sync' has no attribute {name!r}")


__all__ = [
    "CURSOR_VERSION",
    "DEFAULT_BACKOFF",
    "DEFAULT_LIMITS",
    "FINGERPRINT_LEN",
    "MAX_CURSOR_LEN",
    "MAX_SAFE_INT",
    "MAX_SEQ",
    "NAME_PATTERN",
    "NAME_RE",
    "RECORD_VERSION",
    "SIGNATURE_BYTES",
    "Backoff",
    "Cursor",
    "FeedPage",
    "Limits",
    "PageSource",
    "Pair",
    "PairFilter",
    "PairManager",
    "PairState",
    "PreparedRecords",
    "Record",
    "SignedRecord",
    "SyncEvent",
    "SyncOptions",
    "WirePage",
    "build_page",
    "build_record",
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
    "prepare_wire_items",
    "record_from_stored",
    "record_from_wire",
    "record_to_json_view",
    "record_to_wire",
    "resolve_cursor",
    "resolve_since",
    "verify_record",
    "verify_wire_items",
]
