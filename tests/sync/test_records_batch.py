"""The fast paths of the record pipeline give exactly the verdicts of the plain one.

* :func:`verify_wire_items` (prepare, batch signature check, finish) against
  :func:`record_from_wire` item by item: same record, or same error class AND
  message, over valid records and every kind of damage (bytes flipped,
  non-canonical encodings, forged or short signatures, CID mismatch, bad wire
  shape, broken limits with and without a valid signature, future ts);
* the record decoder's fast canonical check against the strict general decoder
  (it must be taken for canonical records, and only ever accept what the general
  path accepts).
"""

from __future__ import annotations

from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedpeer.errors import BadSignature, FedpeerError, RecordFromFuture, RecordInvalid
from fedpeer.identity.canonical import CID, cid_for_dagcbor, dagcbor_decode, dagcbor_encode
from fedpeer.identity.didkey import did_from_public_key
from fedpeer.identity.keys import SigningKey
from fedpeer.sync import records as records_module
from fedpeer.sync.records import (
    DEFAULT_LIMITS,
    Limits,
    SignedRecord,
    build_record,
    prepare_wire_items,
    record_from_wire,
    record_to_wire,
    verify_wire_items,
)

NOW = 1_700_000_000_000
KEY = SigningKey.from_seed(b"\x11" * 32)
OTHER = SigningKey.from_seed(b"\x12" * 32)
NAME_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:@/+-"


def link(n: int) -> CID:
    return cid_for_dagcbor(dagcbor_encode({"n": n}))


_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64 - 1)
    # Whole-number floats within ±(2**53-1) are refused in records (protocol.md §5.4).
    | st.floats(allow_nan=False, allow_infinity=False).filter(
        lambda f: not (abs(f) <= 2**53 - 1 and f.is_integer())
    )
    | st.text(max_size=12)
    | st.binary(max_size=12)
    | st.integers(0, 50).map(link)
)
bodies = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=6).filter(lambda k: k != "/"), inner, max_size=3)
    ),
    max_leaves=8,
)
names = st.text(alphabet=NAME_CHARS, min_size=1, max_size=20).filter(lambda s: s[0] != "/")


def outcome(fn: Any) -> tuple[str, object]:
    """("ok", record) or (error class name, message)."""
    try:
        return ("ok", fn())
    except FedpeerError as exc:
        return (type(exc).__name__, exc.message)


def as_outcome(result: SignedRecord | FedpeerError) -> tuple[str, object]:
    if isinstance(result, SignedRecord):
        return ("ok", result)
    return (type(result).__name__, result.message)


def sign_map(m: dict[str, object], key: SigningKey = KEY, *, canonical: bool = True) -> dict:  # type: ignore[type-arg]
    data = dagcbor_encode(m) if canonical else cbor2.dumps(m, default=_cid_default)
    cid = cid_for_dagcbor(data)
    return {"cid": cid, "data": data, "sig": key.sign(cid.raw)}


def _cid_default(encoder: cbor2.CBOREncoder, value: object) -> None:
    assert isinstance(value, CID)
    encoder.encode(cbor2.CBORTag(42, b"\x00" + value.raw))


def damaged(item: dict, how: str, data: st.DataObject) -> object:  # type: ignore[type-arg]
    """One damaged variant of a valid wire item."""
    rec = records_module._record_from_value(dagcbor_decode(item["data"]))
    m = rec.to_map()
    if how == "flip":
        raw = bytearray(item["data"])
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] ^= data.draw(st.integers(1, 255))
        return {**item, "data": bytes(raw)}
    if how == "flip_resigned":  # damage that the author signs: decode/shape/limit verdicts
        raw = bytearray(item["data"])
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] ^= data.draw(st.integers(1, 255))
        cid = cid_for_dagcbor(bytes(raw))
        return {"cid": cid, "data": bytes(raw), "sig": KEY.sign(cid.raw)}
    if how == "truncate":
        return {**item, "data": item["data"][: data.draw(st.integers(0, len(item["data"]) - 1))]}
    if how == "noncanonical":
        return sign_map(m, canonical=False)
    if how == "forged":
        return {**item, "sig": OTHER.sign(item["cid"].raw)}
    if how == "short_sig":
        return {**item, "sig": item["sig"][:63]}
    if how == "cid_mismatch":
        return {**item, "cid": link(7)}
    if how == "wire_shape":
        return data.draw(
            st.sampled_from(
                [
                    {"cid": item["cid"], "data": item["data"]},
                    {**item, "extra": 1},
                    {**item, "cid": item["cid"].raw},
                    {**item, "data": bytearray(item["data"])},
                    [item["cid"], item["data"], item["sig"]],
                    None,
                ]
            )
        )
    if how == "bad_name":
        return sign_map({**m, "thread": "/nope"})
    if how == "bad_name_forged":  # limits AND signature broken: BAD_SIGNATURE wins
        return {**sign_map({**m, "thread": "/nope"}), "sig": OTHER.sign(link(1).raw)}
    if how == "future":
        return sign_map({**m, "ts": NOW + 3_600_000})
    if how == "future_forged":
        return {**sign_map({**m, "ts": NOW + 3_600_000}), "sig": item["sig"]}
    if how == "author_not_key":
        return sign_map({**m, "author": "did:web:example.com"})
    if how == "author_unusable":
        return sign_map({**m, "author": did_from_public_key(b"\x01" + b"\x00" * 31)})
    if how == "wrong_version":
        return sign_map({**m, "v": 2})
    if how == "extra_key":
        return sign_map({**m, "x": 1})
    raise AssertionError(how)


HOWS = [
    "flip",
    "flip_resigned",
    "truncate",
    "noncanonical",
    "forged",
    "short_sig",
    "cid_mismatch",
    "wire_shape",
    "bad_name",
    "bad_name_forged",
    "future",
    "future_forged",
    "author_not_key",
    "author_unusable",
    "wrong_version",
    "extra_key",
]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=bodies,
    thread=names,
    parents=st.lists(st.integers(0, 30).map(link), max_size=3, unique=True),
    hows=st.lists(st.sampled_from([None, *HOWS]), min_size=1, max_size=6),
    data=st.data(),
)
def test_batch_verdicts_equal_record_from_wire(
    body: object, thread: str, parents: list[CID], hows: list[str | None], data: st.DataObject
) -> None:
    good = build_record(
        KEY, namespace="app", thread=thread, kind="k", body=body, parents=parents, now_ms=NOW
    )
    item = record_to_wire(good)
    items = [item if how is None else damaged(item, how, data) for how in hows]
    limits = Limits(max_body_depth=3)
    expected = [outcome(lambda i=i: record_from_wire(i, limits=limits, now_ms=NOW)) for i in items]
    got = [as_outcome(r) for r in verify_wire_items(items, limits=limits, now_ms=NOW)]
    assert got == expected
    if outcome(lambda: record_from_wire(item, limits=limits, now_ms=NOW))[0] != "ok":
        # the undamaged record already breaks a limit (a body deeper than 3): that
        # error comes first for every variant; only the equality above applies
        return
    for how, (kind, _) in zip(hows, got, strict=True):
        if how in ("forged", "bad_name_forged", "future_forged"):
            assert kind == BadSignature.__name__
        if how == "future":
            assert kind == RecordFromFuture.__name__
        if how == "bad_name":
            assert kind == RecordInvalid.__name__
        if how == "author_unusable":
            assert kind == BadSignature.__name__


def test_prepared_records_hold_one_job_per_item_that_reached_the_signature() -> None:
    good = build_record(KEY, namespace="a", thread="t", kind="k", body=1, now_ms=NOW)
    item = record_to_wire(good)
    prepared = prepare_wire_items([item, None, item], now_ms=NOW)
    assert prepared.signature_jobs == [(KEY.public_key, good.cid.raw, good.sig)] * 2
    with pytest.raises(ValueError, match="verdicts"):
        prepared.finish([True])
    results = prepared.finish([True, False])
    assert results[0] == good
    assert type(results[1]).__name__ == "Malformed"
    assert isinstance(results[2], BadSignature)
    assert verify_wire_items([]) == []


# --- the decoder's fast canonical check ------------------------------------------------


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=bodies,
    kind=names,
    parents=st.lists(st.integers(0, 30).map(link), max_size=3, unique=True),
)
def test_fast_record_encoding_is_the_canonical_encoding(
    body: object, kind: str, parents: list[CID]
) -> None:
    good = build_record(
        KEY, namespace="n", thread="t", kind=kind, body=body, parents=parents, now_ms=NOW
    )
    assert bytes(records_module._record_bytes(good.record)) == good.data
    assert records_module._record_bytes(good.record) == dagcbor_encode(good.record.to_map())


def test_fast_path_is_taken_for_canonical_records(monkeypatch: pytest.MonkeyPatch) -> None:
    good = build_record(
        KEY, namespace="n", thread="t", kind="k", body={"a": [1, 2.5, None]}, now_ms=NOW
    )

    def general_path_used(data: object) -> object:
        raise AssertionError("the general decoder ran for a canonical record")

    monkeypatch.setattr(records_module, "dagcbor_decode", general_path_used)
    assert records_module._decode_record(good.data) == good.record


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_fast_decode_gives_the_general_verdict_for_damaged_bytes(data: st.DataObject) -> None:
    good = build_record(
        KEY,
        namespace="n",
        thread="t",
        kind="k",
        body={"x": [1, -7, 1.5, b"\x01", link(2)], "y": "z"},
        parents=[link(1)],
        now_ms=NOW,
    )
    raw = bytearray(good.data)
    for _ in range(data.draw(st.integers(1, 3))):
        raw[data.draw(st.integers(0, len(raw) - 1))] ^= data.draw(st.integers(1, 255))
    blob = bytes(raw)

    def general() -> object:
        return records_module._record_from_value(dagcbor_decode(blob))

    assert outcome(lambda: records_module._decode_record(blob)) == outcome(general)


def test_limits_are_checked_with_the_batch_clock() -> None:
    rec = build_record(KEY, namespace="a", thread="t", kind="k", body=1, ts=NOW, now_ms=NOW)
    item = record_to_wire(rec)
    early = NOW - DEFAULT_LIMITS.max_future_ms - 1
    (result,) = verify_wire_items([item], now_ms=early)
    assert isinstance(result, RecordFromFuture)
    assert verify_wire_items([item], now_ms=NOW) == [rec]
