"""Portable exports of signed records: CARv1 files (protocol.md §9.5). Sans-I/O.

A fedpeer export is a CARv1 file (the IPLD "Content Addressable aRchive": a
varint-length-prefixed DAG-CBOR header ``{version: 1, roots: [CID]}``, then
blocks, each ``varint(len(cid) + len(data)) || cid || data``). Every block is
DAG-CBOR and its CID is CIDv1 (dag-cbor, sha2-256) of its bytes:

1. the **root** (the header's only root, also the first block): ``{type:
   "fedpeer.export", v: 1, exported_by: <DID>, exported_at: <unix ms>, count: N}``;
2. per record, in store order: the **record block**, the record's exact bytes
   (its CID *is* the record id), then its **signature block** ``{record: <link
   to the record block>, sig: <64 bytes>}``: the author's Ed25519 signature over
   the record id, exactly as in a wire item (§5.6) but with ``data`` left in its
   own block so every link resolves inside the file and no byte is stored twice.

Any CAR reader reads the file and checks every block against its CID; a fedpeer
importer pairs each signature block with its record block and runs the one record
verification (§5.5) on every record before storing any. Blocks of other shapes,
CIDs of other codecs or hashes, a record without its signature (or the reverse)
make the whole file ``CAR_INVALID``; a record that fails verification raises its
own code (``BAD_SIGNATURE``, ``RECORD_INVALID``, ...) naming its position.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import BinaryIO

from ..errors import CarInvalid, FedpeerError
from ..identity.canonical import CID, cid_for_dagcbor, dagcbor_decode, dagcbor_encode
from .records import DEFAULT_LIMITS, Limits, SignedRecord, verify_record

__all__ = [
    "EXPORT_TYPE",
    "ExportHeader",
    "car_blocks",
    "encode_export",
    "encode_head",
    "encode_record",
    "read_export",
    "read_export_items",
]

EXPORT_TYPE = "fedpeer.export"
_MAX_HEADER = 4096
# Record blocks waiting for their signature block (a fedpeer export has at most one:
# each record block is followed by its signature block): bounded in count and bytes,
# so a forged file cannot make the reader hold more than this in memory.
_MAX_PENDING = 1024
_MAX_PENDING_BYTES = 16 * 1024 * 1024
_CID_PREFIX = bytes([0x01, 0x71, 0x12, 0x20])  # CIDv1, dag-cbor, sha2-256, 32 bytes
_CID_LEN = len(_CID_PREFIX) + 32


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _section(cid: CID, data: bytes) -> bytes:
    return _varint(len(cid.raw) + len(data)) + cid.raw + data


def root_block(exported_by: str, exported_at_ms: int, count: int) -> tuple[CID, bytes]:
    """The root block of an export and its CID."""
    data = dagcbor_encode(
        {
            "type": EXPORT_TYPE,
            "v": 1,
            "exported_by": exported_by,
            "exported_at": exported_at_ms,
            "count": count,
        }
    )
    return cid_for_dagcbor(data), data


def encode_head(*, exported_by: str, exported_at_ms: int, count: int) -> bytes:
    """The CAR header and the root block: what comes before the records."""
    root_cid, root = root_block(exported_by, exported_at_ms, count)
    header = dagcbor_encode({"version": 1, "roots": [root_cid]})
    return _varint(len(header)) + header + _section(root_cid, root)


def encode_record(rec: SignedRecord) -> bytes:
    """One record's two blocks: the record block, then its signature block."""
    sig_block = dagcbor_encode({"record": rec.cid, "sig": rec.sig})
    return _section(rec.cid, rec.data) + _section(cid_for_dagcbor(sig_block), sig_block)


def encode_export(
    records: Iterable[SignedRecord], *, exported_by: str, exported_at_ms: int, count: int
) -> Iterator[bytes]:
    """The bytes of an export of ``records`` (exactly ``count`` of them), in pieces
    to write one after another. Raises ``ValueError`` when the number of records
    differs from ``count`` (the root, written first, promised it). Pure CPU."""
    yield encode_head(exported_by=exported_by, exported_at_ms=exported_at_ms, count=count)
    written = 0
    for rec in records:
        yield encode_record(rec)
        written += 1
    if written != count:
        raise ValueError(f"the export promised {count} records but got {written}")


def _read_varint(stream: BinaryIO, what: str, *, eof_ok: bool = False) -> int | None:
    value = 0
    for shift in range(0, 63, 7):
        byte = stream.read(1)
        if not byte:
            if eof_ok and shift == 0:
                return None
            raise CarInvalid(f"the file ends inside {what}: it is truncated")
        value |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return value
    raise CarInvalid(f"{what} is not a valid varint")


def _read_exact(stream: BinaryIO, n: int, what: str) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise CarInvalid(f"the file ends inside {what}: it is truncated")
    return data


def car_blocks(
    stream: BinaryIO, *, max_block: int
) -> tuple[list[CID], Iterator[tuple[CID, bytes]]]:
    """Read a CARv1 header and return ``(roots, blocks)``; ``blocks`` yields
    ``(cid, data)`` after checking each block's bytes against its CID.

    Only CIDv1 dag-cbor sha2-256 blocks are accepted (what fedpeer writes);
    blocks larger than ``max_block`` bytes are refused. Raises ``CAR_INVALID``.
    Reads the stream lazily; memory stays within one block, and a length prefix
    past ``max_block`` is refused before anything more is read.
    """
    size = _read_varint(stream, "the header length")
    assert size is not None
    if not 0 < size <= _MAX_HEADER:
        raise CarInvalid("this is not a CARv1 file (bad header length)")
    try:
        header = dagcbor_decode(_read_exact(stream, size, "the header"))
    except FedpeerError as err:
        raise CarInvalid(
            f"this is not a CARv1 file: its header does not decode ({err.message})"
        ) from None
    if not isinstance(header, dict) or header.get("version") != 1:
        raise CarInvalid("this is not a CARv1 file (header version is not 1)")
    roots = header.get("roots")
    if not isinstance(roots, list) or not all(isinstance(r, CID) for r in roots):
        raise CarInvalid("the CAR header's roots are not a list of CIDs")

    def blocks() -> Iterator[tuple[CID, bytes]]:
        index = 0
        while True:
            length = _read_varint(stream, f"block {index}'s length", eof_ok=True)
            if length is None:
                return
            if not _CID_LEN < length <= _CID_LEN + max_block:
                raise CarInvalid(f"block {index} has a bad length ({length} bytes)")
            raw = _read_exact(stream, length, f"block {index}")
            if raw[: len(_CID_PREFIX)] != _CID_PREFIX:
                raise CarInvalid(
                    f"block {index} is not a dag-cbor sha2-256 CIDv1 block: not a fedpeer export"
                )
            cid, data = CID(raw[:_CID_LEN]), raw[_CID_LEN:]
            if cid_for_dagcbor(data) != cid:
                raise CarInvalid(f"block {index}'s bytes do not match its CID {cid}")
            yield cid, data
            index += 1

    return [r for r in roots if isinstance(r, CID)], blocks()


class ExportHeader:
    """The root block of an export: who exported it, when, how many records."""

    def __init__(self, exported_by: str, exported_at_ms: int, count: int) -> None:
        self.exported_by = exported_by
        self.exported_at_ms = exported_at_ms
        self.count = count


def _root(cid: CID, data: bytes) -> ExportHeader:
    try:
        obj = dagcbor_decode(data)
    except FedpeerError as err:
        raise CarInvalid(f"the root block does not decode: {err.message}") from None
    if not isinstance(obj, dict) or obj.get("type") != EXPORT_TYPE or obj.get("v") != 1:
        raise CarInvalid(f"the root block {cid} is not a fedpeer export (type {EXPORT_TYPE!r})")
    by, at, count = obj.get("exported_by"), obj.get("exported_at"), obj.get("count")
    if not isinstance(by, str) or not isinstance(at, int) or not isinstance(count, int):
        raise CarInvalid("the export's root block lacks exported_by, exported_at or count")
    return ExportHeader(by, at, count)


_Blocks = Iterator[tuple[CID, bytes]]


def _open_export(stream: BinaryIO, limits: Limits) -> tuple[ExportHeader, _Blocks]:
    roots, blocks = car_blocks(stream, max_block=limits.max_record_bytes + 1024)
    if len(roots) != 1:
        raise CarInvalid(f"a fedpeer export has exactly one root, this file has {len(roots)}")
    first = next(blocks, None)
    if first is None or first[0] != roots[0]:
        raise CarInvalid("a fedpeer export starts with its root block")
    return _root(*first), blocks


def _record_pairs(header: ExportHeader, blocks: _Blocks) -> Iterator[tuple[CID, bytes, bytes]]:
    """``(record id, record bytes, sig)`` per record, paired and counted, not verified."""
    pending: dict[bytes, bytes] = {}
    pending_bytes = 0
    done = 0
    for cid, data in blocks:
        sig_of = _signature_block(data)
        if sig_of is None:
            pending_bytes += len(data)
            if len(pending) >= _MAX_PENDING or pending_bytes > _MAX_PENDING_BYTES:
                raise CarInvalid(
                    "too many record blocks without their signature block (each record "
                    "block is followed by its signature block): not a fedpeer export"
                )
            pending[cid.raw] = data
            continue
        target, sig = sig_of
        record = pending.pop(target.raw, None)
        if record is None:
            raise CarInvalid(f"signature block {cid} names record {target}, not in the file")
        pending_bytes -= len(record)
        if done >= header.count:  # stop here: the file may never end
            raise CarInvalid(f"the export says {header.count} records but holds more")
        done += 1
        yield target, record, sig
    if pending:
        raise CarInvalid(f"{len(pending)} record block(s) have no signature block")
    if done != header.count:
        raise CarInvalid(f"the export says {header.count} records but holds {done}")


def read_export(
    stream: BinaryIO, *, limits: Limits = DEFAULT_LIMITS, now_ms: int | None = None
) -> tuple[ExportHeader, Iterator[SignedRecord]]:
    """Read an export (see the module docstring): its header and its records, each
    verified (protocol.md §5.5) as it is read.

    Raises ``CAR_INVALID`` for a file that is not a fedpeer export (also for a
    record count different from the root's), and for a record that does not verify
    the verification's own error (``BAD_SIGNATURE``, ``RECORD_INVALID``,
    ``NON_CANONICAL``, ...) with its position and id in the message. Import callers
    read the whole file once to check it before storing anything. Bounded on a
    forged or endless file: one block at a time, at most 16 MiB of record blocks
    waiting for their signature blocks, and it stops at the first record past the
    root's ``count``.
    """
    header, blocks = _open_export(stream, limits)

    def records() -> Iterator[SignedRecord]:
        for done, (target, record, sig) in enumerate(_record_pairs(header, blocks), 1):
            try:
                signed = verify_record(
                    record, sig, limits=limits, now_ms=now_ms, expected_cid=target
                )
            except FedpeerError as err:
                raise type(err)(f"record {done} ({target}): {err.message}") from None
            yield signed

    return header, records()


def read_export_items(
    stream: BinaryIO, *, limits: Limits = DEFAULT_LIMITS
) -> tuple[ExportHeader, Iterator[tuple[bytes, bytes]]]:
    """:func:`read_export` without the record verification: ``(data, sig)`` per
    record, as the file holds them.

    Everything about the file is checked as in :func:`read_export` (CARv1
    framing, every block against its CID, record and signature blocks paired,
    the root's count, the same bounds), but not the records themselves: no
    signature, shape or limit check. For handing a file that :func:`read_export`
    already read through to something that verifies each record anyway (a
    node's ``ingest_many``), so the signatures are not checked a second time on
    the way. Raises ``CAR_INVALID``.
    """
    header, blocks = _open_export(stream, limits)
    return header, ((record, sig) for _cid, record, sig in _record_pairs(header, blocks))


def _signature_block(data: bytes) -> tuple[CID, bytes] | None:
    """``(record cid, sig)`` when ``data`` is a signature block, else None (a record)."""
    # A record map has the keys v, author, ...; a signature block exactly record and sig.
    if not data or data[0] != 0xA2:  # a CBOR map of two entries
        return None
    try:
        obj = dagcbor_decode(data)
    except FedpeerError:
        return None
    if not isinstance(obj, dict) or set(obj) != {"record", "sig"}:
        return None
    target, sig = obj["record"], obj["sig"]
    if not isinstance(target, CID) or not isinstance(sig, bytes):
        raise CarInvalid("a signature block is {record: <CID link>, sig: <bytes>}")
    return target, sig
