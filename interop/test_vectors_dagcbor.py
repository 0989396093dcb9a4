"""DAG-CBOR and DAG-JSON against the IPLD codec fixtures (ipld/codec-fixtures)."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from fedpeer.errors import Malformed, NonCanonical
from fedpeer.identity.canonical import (
    CID,
    cid_for_dagcbor,
    dagcbor_decode,
    dagcbor_encode,
    dagjson_decode,
    dagjson_encode,
)
from interop._vectors import load_json

DATA = load_json("dag-cbor/ipld-codec-fixtures-dagcbor.json")
FIXTURES: list[dict[str, Any]] = DATA["fixtures"]
NEGATIVE: list[tuple[str, dict[str, Any]]] = [
    (source, case) for source, cases in DATA["negative"].items() for case in cases
]
LINK_FIXTURES = [f for f in FIXTURES if f["name"].startswith("cid-") and f["name"] != "cid-arrayof"]

by_name = pytest.mark.parametrize("fx", FIXTURES, ids=[f["name"] for f in FIXTURES])


def test_every_fixture_is_here() -> None:
    assert len(FIXTURES) == DATA["count"] == 102
    assert len({f["name"] for f in FIXTURES}) == 102
    assert NEGATIVE, "the negative fixtures are missing"


@by_name
def test_decode_then_encode_gives_the_same_bytes(fx: dict[str, Any]) -> None:
    data = bytes.fromhex(fx["dag_cbor_hex"])
    value = dagcbor_decode(data)
    assert dagcbor_encode(value) == data


@by_name
def test_cid(fx: dict[str, Any]) -> None:
    data = bytes.fromhex(fx["dag_cbor_hex"])
    cid = cid_for_dagcbor(data)
    assert str(cid) == fx["cid"]
    assert CID.parse(fx["cid"]) == cid
    assert cid.version == 1
    assert cid.codec == 0x71
    assert cid.digest == hashlib.sha256(data).digest()


@by_name
def test_dagjson_text_is_byte_identical(fx: dict[str, Any]) -> None:
    value = dagcbor_decode(bytes.fromhex(fx["dag_cbor_hex"]))
    assert dagjson_encode(value) == fx["dag_json"].encode("utf-8")


@by_name
def test_dagjson_reads_back_to_the_same_dagcbor(fx: dict[str, Any]) -> None:
    value = dagjson_decode(fx["dag_json"].encode("utf-8"))
    assert dagcbor_encode(value) == bytes.fromhex(fx["dag_cbor_hex"])


@by_name
def test_dagjson_cid(fx: dict[str, Any]) -> None:
    # CIDv1, codec dag-json (0x0129 = varint a9 02), sha2-256.
    digest = hashlib.sha256(fx["dag_json"].encode("utf-8")).digest()
    assert str(CID(b"\x01\xa9\x02\x12\x20" + digest)) == fx["dag_json_cid"]


@pytest.mark.parametrize("fx", LINK_FIXTURES, ids=[f["name"] for f in LINK_FIXTURES])
def test_link_text_forms(fx: dict[str, Any]) -> None:
    """The fixture is named by the link's text in some base (Qm, z, b); all parse the same."""
    link = dagcbor_decode(bytes.fromhex(fx["dag_cbor_hex"]))
    assert isinstance(link, CID)
    assert CID.parse(fx["name"].removeprefix("cid-")) == link
    assert fx["dag_json"] == '{"/":"' + str(link) + '"}'
    assert CID.parse(link.raw) == link
    assert CID.parse(str(link)) == link


@pytest.mark.parametrize(
    ("source", "case"), NEGATIVE, ids=[f"{s}:{c['name']}" for s, c in NEGATIVE]
)
def test_negative_fixture_is_refused(source: str, case: dict[str, Any]) -> None:
    data = bytes.fromhex(case["hex"])
    with pytest.raises((NonCanonical, Malformed)) as info:
        dagcbor_decode(data)
    if "duplicate" in case["name"]:
        assert isinstance(info.value, NonCanonical)
        assert "duplicate map key" in info.value.message
